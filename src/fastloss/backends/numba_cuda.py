"""Numba CUDA backend: whether it can run here, and the launch of its kernels (``cuda_kernels``).

The device road (``fastloss._device``) validates every argument and allocates every result; the
functions here take its device arrays and plain values, launch on the stream they are given and
never synchronise with the host. Half precision: float16 arrays as they are, bfloat16 ones as
their uint16 bits, with ``bf`` (a sum of ``BF_X``, ``BF_T``, ``BF_W``, ``BF_P``, ``BF_G``) saying
which arrays hold such bits (see ``cuda_kernels``). The kernels compute in float64 for float64
inputs and in float32 for every other input (``compute_dtype``).
"""

import warnings
from contextlib import contextmanager

import numpy as np

from . import cuda_kernels as k
from .cuda_kernels import BF_G, BF_P, BF_T, BF_W, BF_X, IMPORT_ERROR, SIM, cuda

__all__ = ["AVAILABLE", "WHY_UNAVAILABLE", "SIM", "cuda", "compute_dtype", "label_weight_denominator", "launch",
           "BF_X", "BF_T", "BF_W", "BF_P", "BF_G"]

_HOW = ("install fastloss[cuda] (numba-cuda) and run on an NVIDIA GPU, or set NUMBA_ENABLE_CUDASIM=1 "
        "before importing numba to use the simulator")


def _availability():
    if IMPORT_ERROR is not None:
        return False, f"numba.cuda cannot be imported ({type(IMPORT_ERROR).__name__}: {IMPORT_ERROR}); {_HOW}"
    if SIM:
        return True, ""
    try:
        ok = bool(cuda.is_available())
    except Exception as exc:  # pragma: no cover - driver errors
        return False, f"numba.cuda cannot use the CUDA driver ({exc}); {_HOW}"
    if not ok:
        return False, f"numba.cuda cannot find a CUDA driver/GPU; {_HOW}"
    return True, ""


def __getattr__(name):
    """``AVAILABLE``/``WHY_UNAVAILABLE``, computed on first access (not at import: asking the
    driver is not free, and importing fastloss must never touch CUDA)."""
    if name in ("AVAILABLE", "WHY_UNAVAILABLE"):
        ok, why = _availability()
        globals()["AVAILABLE"], globals()["WHY_UNAVAILABLE"] = ok, why
        return ok if name == "AVAILABLE" else why
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compute_dtype(dtype):
    """The precision the kernels compute in for inputs of ``dtype`` (as the kernels see it:
    bfloat16 as uint16 bits): float64 for float64, float32 for everything else. Host arrays the
    kernels read per item (``grad_output``) go up in it."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _f(value):
    """A float64 kernel scalar (a NumPy scalar: in the simulator 1/0 must not raise)."""
    return np.float64(value)


def _two_floats(*args):
    """The elementwise kernels' two float parameters, unused ones 0."""
    return tuple(_f(a) for a in args) + (_f(0.0),) * (2 - len(args))


# kernel name (``LossSpec.kernel``, also ``cuda_kernels.kernel``'s) -> its loss-specific
# arguments made from the backend contract's, in that order (a weight that is None is already an
# empty array)
_ARGS = {
    "softmax_xent": lambda w, ignore_index, eps, z: (w, ignore_index, _f(eps), _f(z)),
    "softmax_xent_probs": lambda w, eps, z: (w, _f(eps), _f(z)),
    "multiclass_hinge": lambda w, margin, squared, crammer_singer: (w, _f(margin), squared, crammer_singer),
    "sigmoid_bce": lambda w, pos_weight: (w, pos_weight),
    "cosine_similarity": lambda: (),
    **{name: _two_floats for name in k.ELEMENTWISE},
    "poisson_nll": lambda log_input, full, eps: _two_floats(eps, int(bool(log_input)) + 2 * int(bool(full))),
}


@contextmanager
def _quiet():
    """The simulator runs kernels as NumPy code, which warns where a GPU silently gives inf/NaN."""
    if not SIM:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def label_weight_denominator(labels, n_classes, ignore_index, weight, stream, scratch, bf=0):
    """The label pre-pass: a 1-element float64 device array holding the sum of ``weight[y]`` (1
    each without ``weight``) over the labels in ``[0, n_classes)`` that are not ``ignore_index``,
    reduced on the device in a fixed order. ``scratch(shape, dtype)`` allocates device arrays;
    ``bf & BF_W``: ``weight`` holds bfloat16 bits."""
    empty64 = cuda.device_array(0, np.float64, stream=stream)
    w = weight if weight is not None else empty64
    den = scratch(1, np.float64)
    nb = k.grid(-(-labels.shape[0] // k.TPB))
    parts = scratch(nb, np.float64)
    with _quiet():
        k.kernel("label_weight", bf & BF_W)[nb, k.TPB, stream](labels, n_classes, ignore_index, w, parts)
        k.kernel("finish", 0)[1, k.TPB, stream](parts, empty64, _f(1.0), den)
    return den


def launch(kernel, x, t, args, grad, gscale, gscale_arr, gs_stride, den, loss_out, result, stream, scratch,
           bf=0):
    """Launch loss kernel ``kernel`` (a name of ``LossSpec.kernel``) on ``stream`` and, when
    ``result`` is given, the final reduction into it.

    ``x`` is ``(N, C)`` (row losses) or ``(n,)``; ``t`` labels ``(N,)`` or floats of ``x``'s
    shape; ``args`` the kernel's loss-specific arguments in the backend contract's order (weights
    as device arrays or None). ``grad``, ``loss_out`` (per item) and ``result`` (1 element) are
    device arrays or None. The gradient is d(item loss)/dx times ``gscale``, times
    ``gscale_arr[i * gs_stride]`` when ``gscale_arr`` is given, divided by ``den``: the mean's
    denominator (1 for a sum), a float or ``label_weight_denominator``'s device array, which also
    divides ``result``. ``scratch(shape, dtype)`` allocates device arrays. ``bf``: which arrays
    hold bfloat16 bits (``BF_X`` for ``x``, ``grad``, ``loss_out`` and ``result``); the
    precision follows ``x``'s dtype (``compute_dtype``)."""
    F = compute_dtype(x.dtype).type
    flags = bf | (k.F64 if F is np.float64 else 0)
    cuda_kernel, kernel_args = k.kernel(kernel, flags), _ARGS[kernel]
    empty = cuda.device_array(0, x.dtype, stream=stream)
    empty64 = cuda.device_array(0, np.float64, stream=stream)
    rows = x.ndim == 2
    if grad is None:
        grad = cuda.device_array((0, 0), x.dtype, stream=stream) if rows else empty
    loss_out = loss_out if loss_out is not None else empty
    gscale_arr = gscale_arr if gscale_arr is not None else cuda.device_array(0, F, stream=stream)
    den_host = 1.0
    if isinstance(den, float):  # the kernels then scale by gscale alone
        with np.errstate(divide="ignore", invalid="ignore"):
            gscale = float(np.float64(gscale) / den)
        den, den_host = empty64, den
    args = kernel_args(*(empty if a is None else a for a in args))
    with np.errstate(over="ignore"):  # float scalars in the kernels' precision, rounded once here
        args = tuple(F(a) if isinstance(a, np.floating) else a for a in args)
        gscale = F(gscale)

    width = k.row_width(x.shape[1]) if rows else 1
    nb = k.grid(-(-x.shape[0] // (k.TPB // width)))
    parts = scratch(nb, np.float64)
    tail = (den, loss_out, parts, width) if rows else (loss_out, parts)
    with _quiet():
        cuda_kernel[nb, k.TPB, stream](x, t, *args, grad, gscale, gscale_arr, gs_stride, *tail)
        if result is not None:
            k.kernel("finish", bf & BF_X)[1, k.TPB, stream](parts, den, _f(den_host), result)
