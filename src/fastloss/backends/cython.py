"""The Cython/OpenMP backend: a thin adapter over the compiled ``fastloss._kernels``.

The same Cython source is compiled up to three times (see setup.py): ``fastloss._kernels`` runs
on any CPU, ``fastloss._kernels_avx2`` needs AVX2, FMA and F16C, ``fastloss._kernels_avx512``
needs AVX-512 F/DQ/BW/VL (and F16C). This module loads the best build the CPU runs (asked through gcc's
``__builtin_cpu_supports``, which also checks that the OS saves the vector state, from the
baseline module) and the baseline otherwise. ``FASTLOSS_CYTHON_ISA=baseline`` (or ``avx2``,
``avx512``) in the environment forces the choice.

Exports exactly the kernel names of ``fastloss.backends`` (the kernels handle ``None`` for every
optional array themselves), ``fast_call`` (the road's checks in C for every loss's common call), plus
``OPENMP``, ``ISA`` and ``BUILD_INFO``. Every kernel takes float16 (``np.float16``) and bfloat16
(its bits as ``np.uint16``) arrays as well, converting them as it reads them (kernels/fl_half.h:
F16C in the AVX2 and AVX-512 builds, portable bit manipulation in the baseline); ``fast_call``
leaves them to the general road.
"""

import importlib
import os

from . import KERNEL_NAMES

try:
    from .. import _kernels as _baseline
except ImportError as exc:  # not built: the dispatch layer turns this into BackendUnavailable
    raise ImportError(
        "the compiled extension fastloss._kernels is not built "
        f"({exc}); build it with `pip install .` or `python setup.py build_ext --inplace`"
    ) from exc


_VARIANTS = ("avx512", "avx2")  # best first; the baseline is always the fallback


def _load():
    choice = os.environ.get("FASTLOSS_CYTHON_ISA", "auto").strip().lower() or "auto"
    if choice not in ("auto", "baseline") + _VARIANTS:
        raise ImportError(f"FASTLOSS_CYTHON_ISA must be 'auto', 'baseline', 'avx2' or 'avx512', got {choice!r}")
    if choice == "baseline":
        return _baseline, "FASTLOSS_CYTHON_ISA=baseline"
    supported = {"avx2": _baseline.cpu_has_avx2_fma(), "avx512": _baseline.cpu_has_avx512()}
    reasons = []
    for variant in _VARIANTS if choice == "auto" else (choice,):
        if not supported[variant]:
            reasons.append(f"CPU lacks {variant}")
            continue
        try:
            module = importlib.import_module(f"fastloss._kernels_{variant}")
        except ImportError as exc:
            reasons.append(f"fastloss._kernels_{variant} not built ({exc})")
            continue
        return module, f"CPU has {variant}"
    if choice != "auto":
        raise ImportError(f"FASTLOSS_CYTHON_ISA={choice}, but " + "; ".join(reasons))
    return _baseline, "; ".join(reasons) or "baseline"


_module, _why = _load()

OPENMP = bool(_module.OPENMP)
"""True when the loaded kernels were compiled with OpenMP (False: every call runs on one thread)."""

ISA = _module.ISA
"""Instruction set of the loaded build: "avx512", "avx2", or the baseline's ("x86-64", "generic")."""

BUILD_INFO = {
    "openmp": OPENMP,
    "isa": ISA,
    "module": _module.__name__,
    "isa_reason": _why,
}

globals().update({name: getattr(_module, name) for name in KERNEL_NAMES})
fast_call = _module.fast_call

stream_copy = _module.stream_copy  # the bench's non-temporal copy probe

__all__ = list(KERNEL_NAMES) + ["fast_call", "OPENMP", "ISA", "BUILD_INFO"]
