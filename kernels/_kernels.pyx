"""fastloss._kernels: the Cython/OpenMP kernels of every loss (see ``fastloss.backends`` for
the contract). One source, compiled up to three times by setup.py: ``fastloss._kernels`` for any
x86-64 (or other) CPU, ``fastloss._kernels_avx2`` with AVX2+FMA and ``fastloss._kernels_avx512``
with AVX-512; ``fastloss.backends.cython`` picks the best one the CPU runs at import time.

Every kernel releases the GIL, runs items in ``MAX_BLOCKS`` fixed blocks with
``prange(schedule='static')`` and adds the block sums in order, so results are bitwise identical
for any thread count.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.math cimport exp, log, isfinite, INFINITY, NAN

from fastloss.formulas cimport (
    relu_keep_nan, hinge_power_grad, softmax_xent_loss, softmax_xent_coef, softmax_xent_grad_y,
    softmax_xent_probs_loss, cosine_similarity_loss,
)

include "_common.pxi"
include "softmax_xent.pxi"
include "multiclass_hinge.pxi"
include "cosine_similarity.pxi"
include "_elementwise.pxi"
include "fast_call.pxi"
include "xla_ffi.pxi"

OPENMP = bool(FL_HAVE_OPENMP)
"""True when this module was compiled with OpenMP (otherwise every kernel runs serially)."""

ISA = FL_ISA_NAME.decode()
"""The instruction set this module was compiled for ("x86-64", "avx2", "avx512", "generic")."""


def cpu_has_avx2_fma():
    """Whether this CPU (and OS) can run the AVX2+FMA build."""
    return bool(fl_cpu_has_avx2_fma())


def cpu_has_avx512():
    """Whether this CPU (and OS) can run the AVX-512 (F/DQ/BW/VL) build."""
    return bool(fl_cpu_has_avx512())


def stream_copy(double[::1] dst, const double[::1] src):
    """dst[:] = src with non-temporal stores (no read for ownership of dst): the bench's probe
    of the bandwidth a streaming kernel can reach (np.copyto's memcpy writes through the cache
    below glibc's non-temporal threshold)."""
    cdef fl_streamer st
    if dst.shape[0] != src.shape[0]:
        raise ValueError("stream_copy: dst and src differ in length")
    if src.shape[0] == 0:
        return
    with nogil:
        fl_streamer_begin_d(&st, &dst[0])
        fl_streamer_put_d(&st, &src[0], src.shape[0])
        fl_streamer_end_d(&st)
        fl_sfence()
