"""Backend registry and the one road every call travels:
validate -> allocate -> dispatch -> kernel -> reduce.

``FASTLOSS_BACKEND=name`` in the environment replaces what ``backend="auto"`` picks for host
arrays (device arrays always go to ``cuda``).
"""

import importlib
import math
import os
from typing import NamedTuple

import numpy as np

from . import _validation as v
from ._specs import ELEMENTS
from ._threads import PARALLEL_MIN, threads_for

BACKENDS = {
    "numpy": "fastloss.backends.numpy",
    "cython": "fastloss.backends.cython",
    "numba": "fastloss.backends.numba_cpu",
    "cuda": "fastloss.backends.numba_cuda",
}
HOST_AUTO_ORDER = ("cython", "numba", "numpy")
HOW_TO_GET = {
    "cython": "build the compiled extension: `pip install .` from a source checkout (needs a C compiler)",
    "numba": "`pip install numba`",
    "cuda": "`pip install \"fastloss[cuda]\"` and run on an NVIDIA GPU (or NUMBA_ENABLE_CUDASIM=1 to simulate)",
    "numpy": "`pip install numpy`",
}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and how to get it."""


_modules = {}
_why_not = {}


def get_backend(name):
    """The backend module ``name``, imported on first use; BackendUnavailable if it cannot be."""
    module = _modules.get(name)
    if module is not None:
        return module
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got {name!r}")
    if name not in _why_not:
        try:
            module = importlib.import_module(BACKENDS[name])
            if getattr(module, "AVAILABLE", True):
                _modules[name] = module
                return module
            _why_not[name] = getattr(module, "WHY_UNAVAILABLE", "not available")
        except ImportError as exc:
            _why_not[name] = f"{type(exc).__name__}: {exc}"
    raise BackendUnavailable(f"backend {name!r} is unavailable: {_why_not[name]}. To get it: {HOW_TO_GET[name]}")


def available(name):
    try:
        get_backend(name)
        return True
    except BackendUnavailable:
        return False


def is_device_array(a):
    """An array that lives on a CUDA device, told apart without importing any GPU library:
    the CUDA array interface, a PyTorch CUDA tensor (one that requires grad hides that
    interface), or a device array of Numba's CUDA simulator."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    module = type(a).__module__
    if module.startswith("torch"):
        return bool(getattr(a, "is_cuda", False))
    return module.startswith("numba") and "cuda" in module


# CPython keeps os.environ in this dict (bytes keys on POSIX); a lookup there costs ~50 ns where
# os.environ.get costs ~600 ns when the variable is unset (it raises and catches a KeyError).
_ENVIRON = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTLOSS_BACKEND") if _ENVIRON is not None else None


def _env_backend():
    """FASTLOSS_BACKEND as it is now (it may change while the program runs), or 'auto'."""
    if _ENVIRON is None:
        return os.environ.get("FASTLOSS_BACKEND", "auto")
    value = _ENVIRON.get(_ENV_KEY)
    return "auto" if value is None else os.environ.decodevalue(value)


def resolve(backend, x):
    if backend == "auto":
        if type(x) is not np.ndarray and is_device_array(x):
            return "cuda"
        backend = _env_backend()
        if backend == "auto":
            for name in HOST_AUTO_ORDER:
                if name in _modules or available(name):
                    return name
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got {backend!r}")
    return backend


class Problem(NamedTuple):
    """A validated host call, normalised to the kernel contract (see backends/__init__.py)."""
    x: np.ndarray  # compute dtype (bfloat16 as its bits), C-contiguous, (N, C) for row losses, flat otherwise
    target: np.ndarray  # int64 labels (N,), or floats of x's shape and dtype
    kind: str  # 'classes', 'probs' or 'values'
    options: dict  # converted option values
    dtype: np.dtype
    shape: tuple  # the input's shape
    item_shape: tuple  # the unreduced loss's shape
    denom: float  # what reduction 'mean'/'batchmean' divides by
    gscale: float
    gscale_arr: object  # float64 per-item grad_output, or None
    out: object  # validated ``out``, or None


def prepare(spec, entry, x, target, reduction, grad_output, out, options, checks):
    """Validate a call on host arrays and normalise it to the kernel contract; raises before
    anything is written. ``checks`` is the backend whose label pre-passes run
    (``label_weight_sum``, ``binary_label_check``)."""
    v.check_reduction(spec, reduction)
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    target = target if isinstance(target, np.ndarray) else np.asarray(target)
    dtype = v.compute_dtype(x, spec.input_name)
    v.check_input_shape(spec, x.shape, spec.input_name)
    kind = v.target_kind(spec, x.shape, target, spec.target_name)
    opts = v.check_options(spec, options, x.shape, dtype)
    rows = spec.layout != ELEMENTS
    item_shape = x.shape[:-1] if rows else x.shape
    n_items = v.size_of(item_shape)
    gscale, gscale_arr = 1.0, None
    if entry == "grad":
        gscale, gscale_arr = v.check_grad_output(spec, grad_output, reduction, item_shape)
    if out is not None:
        what = v.out_role(spec, entry, reduction)
        readonly = [(spec.target_name, target)] + [(k, opts[k]) for k in ("weight", "pos_weight") if k in opts]
        if what == "gradient":
            out = v.check_out(spec, out, x.shape, dtype, what, readonly, alias=(spec.input_name, x))
        else:
            out = v.check_out(spec, out, item_shape, dtype, what, readonly + [(spec.input_name, x)])

    x_flat = v.bits(np.ascontiguousarray(x, dtype=dtype))
    x_flat = x_flat.reshape(n_items, x.shape[-1]) if rows else x_flat.reshape(-1)
    for k in ("weight", "pos_weight"):
        if opts.get(k) is not None:
            opts[k] = v.bits(opts[k])
    t_flat, label_denom = checked_target(spec, kind, target, x.shape[-1] if x.ndim else 1, dtype, opts, checks)
    if kind != "classes":
        t_flat = t_flat.reshape(x_flat.shape)
    denom = label_denom if spec.label_weighted_mean and kind == "classes" else float(n_items)
    if reduction == "batchmean":
        denom = float(x.shape[0]) if x.ndim else 1.0
    if reduction in ("mean", "batchmean"):
        gscale = _divide(gscale, denom)
    return Problem(x_flat, t_flat, kind, opts, dtype, x.shape, item_shape, denom, gscale, gscale_arr, out)


def checked_target(spec, kind, target, n_classes, dtype, opts, checks):
    """A host target as the kernels take it, flat (int64 labels or floats of ``dtype``), after
    its pre-pass in backend ``checks`` (raising on a bad label), and the labels' weight sum
    (the mean's denominator of a label-weighted loss; None for float targets)."""
    if kind == "classes":
        labels = v.int64_labels(spec, target, spec.target_name)
        has_ignore = "ignore_index" in opts
        ignore_index = opts.get("ignore_index", 0)
        weight_sum, bad = checks.label_weight_sum(labels, n_classes, ignore_index, has_ignore, opts["weight"])
        if bad >= 0:
            v.raise_bad_label(spec, target, bad, spec.target_name, n_classes, ignore_index if has_ignore else None)
        return labels, weight_sum
    values = v.bits(np.ascontiguousarray(target, dtype=dtype)).reshape(-1)
    if spec.binary_labels:
        bad = checks.binary_label_check(values, threads_for(values.size))
        if bad >= 0:
            v.raise_bad_binary_label(spec, values.reshape(np.shape(target)), bad, spec.target_name)
    return values, None


def run(spec, entry, x, target, reduction, grad_output, backend, out, options):
    """Compute ``entry`` ('loss', 'grad' or 'loss_and_grad') of loss ``spec``."""
    name = resolve(backend, x)
    if name == "cuda":
        from . import _device  # the device road imports Numba: only once a call goes to the GPU
        return _device.run(spec, entry, x, target, reduction, grad_output, out, options)
    kernels = get_backend(name)
    fast = getattr(kernels, "fast_call", None)
    if fast is not None:  # the common call, checked in compiled code
        result = fast(spec.name, entry, x, target, out, reduction, grad_output, options, spec.options,
                      PARALLEL_MIN)
        if result is not NotImplemented:
            return result
    p = prepare(spec, entry, x, target, reduction, grad_output, out, options, kernels)

    # allocate
    grad = loss_out = None
    if entry != "loss":
        grad = p.out if p.out is not None else np.empty(p.shape, p.dtype)
    if reduction == "none" and entry != "grad":
        loss_out = p.out if (p.out is not None and entry == "loss") else np.empty(p.item_shape, p.dtype)

    # dispatch -> kernel
    kernel_name, args = spec.kernel(p.kind)
    total = getattr(kernels, kernel_name)(
        p.x, p.target, *args(p.options),
        None if grad is None else v.bits(grad).reshape(p.x.shape), p.gscale, p.gscale_arr,
        None if loss_out is None else v.bits(loss_out).reshape(-1),
        threads_for(p.x.size))

    # reduce
    if entry == "grad":
        return grad
    if reduction == "none":
        value = loss_out
    elif reduction == "sum":
        value = _rounded(p.dtype, total)
    else:
        value = _rounded(p.dtype, _divide(total, p.denom))
    return value if entry == "loss" else (value, grad)


def _rounded(dtype, value):
    """``value`` rounded once to ``dtype``; beyond its range that is +-inf (the answer, not a
    warning)."""
    if -65504.0 <= value <= 65504.0:  # within every dtype's range (float16's max): the common case
        return dtype.type(value)
    with np.errstate(over="ignore"):
        return dtype.type(value)


def _divide(a, b):
    """a / b as IEEE floats divide (x/0 = +-inf, 0/0 = NaN), without NumPy's errstate cost."""
    if b:
        return a / b
    return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)
