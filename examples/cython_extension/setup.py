"""Build the example extension: ``python setup.py build_ext --inplace``.

Two things make ``cimport fastloss...`` work: Cython must find fastloss's ``.pxd`` files
(``include_path``) and the C compiler its header ``fastloss/include/fl_formulas.h``
(``include_dirs``); ``fastloss.get_include()`` is the directory for both. ``-fopenmp`` makes the
``prange`` loops parallel (without it they run serially, with the same results).
"""

import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

import fastloss

openmp = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
extension = Extension(
    "fused_metrics",
    ["fused_metrics.pyx"],
    include_dirs=[fastloss.get_include()],
    extra_compile_args=["-O3", *openmp] if sys.platform != "win32" else openmp,
    extra_link_args=[] if sys.platform == "win32" else openmp,
)
setup(name="fused-metrics-example", ext_modules=cythonize([extension], include_path=[fastloss.get_include()]))
