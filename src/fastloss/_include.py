"""Where other extensions find fastloss's Cython declarations and C headers."""

import os


def get_include():
    """The directory that holds the ``fastloss`` package: give it to Cython as
    ``include_path=[fastloss.get_include()]`` (for ``cimport fastloss.formulas`` and
    ``fastloss.rows``) and to the C compiler as ``include_dirs=[fastloss.get_include()]`` (for
    ``fastloss/include/fl_formulas.h``, the C functions those declare)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
