"""Backend registry and the one road every call travels:
validate -> allocate -> dispatch -> kernel -> reduce.

``FASTLOSS_BACKEND=name`` in the environment replaces what ``backend="auto"`` picks for host
arrays (device arrays always go to ``cuda``).
"""

import importlib
import math
import os

import numpy as np

from . import _validation as v
from ._specs import ELEMENTS
from ._threads import threads_for

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


def resolve(backend, x):
    if backend == "auto":
        if is_device_array(x):
            return "cuda"
        backend = os.environ.get("FASTLOSS_BACKEND", "auto")
        if backend == "auto":
            return next(name for name in HOST_AUTO_ORDER if available(name))
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {tuple(BACKENDS)}, got {backend!r}")
    return backend


def run(spec, entry, x, target, reduction, grad_output, backend, out, options):
    """Compute ``entry`` ('loss', 'grad' or 'loss_and_grad') of loss ``spec``."""
    name = resolve(backend, x)
    if name == "cuda":
        return get_backend("cuda").run(spec, entry, x, target, reduction, grad_output, out, options)
    kernels = get_backend(name)

    # validate
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
    want_grad = entry != "loss"
    gscale, gscale_arr = 1.0, None
    if entry == "grad":
        gscale, gscale_arr = v.check_grad_output(spec, grad_output, reduction, item_shape)
    if out is not None:
        readonly = [(spec.target_name, target)] + [(k, opts[k]) for k in ("weight", "pos_weight") if k in opts]
        if want_grad:
            out = v.check_out(spec, out, x.shape, dtype, "gradient", readonly)
        elif reduction == "none":
            out = v.check_out(spec, out, item_shape, dtype, "unreduced loss", readonly + [(spec.input_name, x)])
        else:
            raise ValueError(f"{spec.name}: out receives the unreduced loss; pass it only with reduction='none'")

    x_flat = np.ascontiguousarray(x, dtype=dtype)
    x_flat = x_flat.reshape(n_items, x.shape[-1]) if rows else x_flat.reshape(-1)
    if kind == "classes":
        labels = v.int64_labels(spec, target, spec.target_name)
        has_ignore = "ignore_index" in opts
        ignore_index = opts.get("ignore_index", 0)
        label_denom, bad = kernels.label_weight_sum(labels, x.shape[-1], ignore_index, has_ignore, opts["weight"])
        if bad >= 0:
            v.raise_bad_label(spec, target, bad, spec.target_name, x.shape[-1],
                              ignore_index if has_ignore else None)
        t_flat = labels
        denom = label_denom if spec.label_weighted_mean else float(n_items)
    else:
        t_flat = np.ascontiguousarray(target, dtype=dtype).reshape(x_flat.shape)
        if spec.name == "hinge":
            bad = kernels.binary_label_check(t_flat)
            if bad >= 0:
                v.raise_bad_binary_label(spec, t_flat.reshape(target.shape), bad, spec.target_name)
        denom = float(n_items)
    if reduction == "batchmean":
        denom = float(x.shape[0]) if x.ndim else 1.0

    # allocate
    grad = None
    if want_grad:
        grad = out if out is not None else np.empty(x.shape, dtype)
        grad_flat = grad.reshape(x_flat.shape)
    loss_out = None
    if reduction == "none" and entry != "grad":
        loss_out = out if (out is not None and not want_grad) else np.empty(item_shape, dtype)
    if reduction in ("mean", "batchmean"):
        gscale = _divide(gscale, denom)

    # dispatch -> kernel
    kernel_name, args = _kernel_args(spec, kind, opts)
    kernel = getattr(kernels, kernel_name)
    total = kernel(x_flat, t_flat, *args,
                   grad_flat if want_grad else None, gscale, gscale_arr,
                   None if loss_out is None else loss_out.reshape(-1),
                   threads_for(x_flat.size))

    # reduce
    if entry == "grad":
        return grad
    if reduction == "none":
        value = loss_out
    elif reduction == "sum":
        value = dtype.type(total)
    else:
        value = dtype.type(_divide(total, denom))
    return value if entry == "loss" else (value, grad)


def _divide(a, b):
    """a / b as IEEE floats divide (x/0 = +-inf, 0/0 = NaN), without NumPy's errstate cost."""
    if b:
        return a / b
    return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _kernel_args(spec, kind, opts):
    """The kernel a call runs and its loss-specific arguments, in the contract's order."""
    if spec.name == "softmax_xent":
        common = (opts["weight"], opts["label_smoothing"], opts["z_loss"])
        if kind == "probs":
            return "softmax_xent_probs", common
        return "softmax_xent", (opts["weight"], opts["ignore_index"], opts["label_smoothing"], opts["z_loss"])
    if spec.name == "multiclass_hinge":
        return "multiclass_hinge", (opts["weight"], opts["margin"], opts["squared"],
                                    opts["mode"] == "crammer_singer")
    return spec.name, tuple(opts.values())
