"""The device road: a ``backend="cuda"`` call takes the steps of every call (validate ->
allocate -> dispatch -> kernel -> reduce), in their device flavour, with the shared checks of
``_validation``; the kernels and their launch are the ``cuda`` backend's
(``backends/numba_cuda.py``).

:func:`run` takes anything with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays,
PyTorch CUDA tensors) without a copy, launches on the caller's current stream (CuPy's /
PyTorch's current stream where that framework is already imported, else the array's own Numba
stream or the default stream), allocates its results with the caller's framework and returns
them in the caller's array type, with no host synchronisation. NumPy inputs are validated on the
host exactly as on the CPU backends, copied to the device, computed there and returned as NumPy.

Device-only rules (a kernel cannot raise without a host synchronisation):

* A class label outside ``[0, C)`` that is not ``ignore_index`` in a *device* label array makes
  that row's loss and its whole gradient row NaN (so a reduced loss is NaN), and the row does
  not count in the mean's denominator. Host (NumPy) labels are checked and raise ``ValueError``
  as on every other backend.
* ``hinge`` labels on the device are not checked: a label ``> 0`` is +1, anything else -1.
* Device ``weight``/``pos_weight`` of ``sigmoid_bce`` must have a trailing shape of the input
  (element ``i`` uses ``w[i % w.size]``); broadcast other shapes on the device first. Host
  (NumPy) weights broadcast as everywhere else.
* Device inputs must be C-contiguous Numba device arrays, or CuPy/PyTorch arrays (those are made
  contiguous by their own framework, on the device, when they are not). PyTorch tensors that
  require grad are read through ``detach()`` (same memory).
* Targets, weights and ``grad_output`` on the device may have any real dtype (labels any integer
  dtype): kernels widen on load, so nothing is converted on the host.
* ``grad_output`` may be a device array: of size 1 for ``mean``/``sum`` (e.g. the 0-d gradient
  of an autograd ``backward``), of the unreduced loss's shape for ``none``; it is read on the
  device.

Half precision on the device: an input of float16 or bfloat16 gives results of that dtype (the
gradient, ``out``, which must have it, the per-item losses and the reduced loss), each rounded
once on the device from the kernels' float32. A dtype is told by its name, so that no half
library is needed here: ``float16`` (NumPy/CuPy/Numba arrays, ``torch.float16``) goes to the
kernels as it is; ``bfloat16`` (a Numba device array of ``ml_dtypes.bfloat16``, e.g.
``numba.cuda.to_device`` of an ml_dtypes array, or a ``torch.bfloat16`` tensor) goes as a uint16
view of its bits (:func:`_view`), and the launch's ``bf`` flags say which arrays those are
(inputs and results, and each of targets, weights and ``grad_output`` that is itself bfloat16
on the device). A plain uint16 array is an integer array, never bfloat16. Host (NumPy) float
targets and weights of a half call are rounded to the input's dtype, as on the host road, where
that dtype is a NumPy one; with a ``torch.bfloat16`` input (no NumPy twin without ml_dtypes) they
go up as float32. Device targets, weights and ``grad_output`` keep their own dtype, half or not.
"""

import sys
from typing import NamedTuple

import numpy as np

from . import _dispatch
from . import _validation as v
from ._dispatch import is_device_array
from ._specs import ELEMENTS
from .backends import numba_cuda as gpu
from .backends.numba_cuda import SIM, cuda

# ---------------------------------------------------------------------------------------------
# Device arrays of the caller's framework: zero-copy views, allocation, streams, memory spans
# ---------------------------------------------------------------------------------------------


def _is_numba_device_array(a):
    if isinstance(a, np.ndarray):
        return False
    if SIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return isinstance(a, FakeCUDAArray)
    try:
        return bool(cuda.devicearray.is_cuda_ndarray(a))
    except Exception:  # pragma: no cover
        return False


def _is_torch_cuda(a):
    return type(a).__module__.split(".")[0] == "torch" and bool(getattr(a, "is_cuda", False))


def _framework(a):
    """'numba', 'cupy', 'torch' or 'cai' (any other CUDA array interface object)."""
    if _is_numba_device_array(a):
        return "numba"
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy" and "cupy" in sys.modules:
        return "cupy"
    if mod == "torch" and "torch" in sys.modules:
        return "torch"
    return "cai"


def _dtype_name(dtype):
    """'float32', 'float16', 'bfloat16', ... for NumPy (ml_dtypes too) and PyTorch dtypes."""
    return str(dtype).rsplit(".", 1)[-1]  # 'torch.bfloat16' -> 'bfloat16'


def _is_bf16(a):
    return a is not None and _dtype_name(getattr(a, "dtype", None)) == "bfloat16"


def _view(a):
    """The Numba device array the kernels take over ``a``'s memory: no copy, no synchronisation
    (we launch on the stream the caller's framework uses); bfloat16 as its uint16 bits."""
    bf16 = _is_bf16(a)
    if not _is_numba_device_array(a):
        if _is_torch_cuda(a):
            if a.requires_grad:
                a = a.detach()  # same memory; autograd is the caller's business
            if bf16:  # torch's array interface gives bfloat16 as raw bytes ('<V2'): view the bits
                a = a.view(sys.modules["torch"].int16)
        a = cuda.as_cuda_array(a, sync=False)
    return a.view(np.uint16) if bf16 else a


class _Device:
    """Allocation and launch stream of one call, following the framework of ``like``."""

    def __init__(self, like):
        self.kind = _framework(like) if like is not None else "numba"
        self.like = like
        self.stream = 0
        if SIM:
            return
        if self.kind == "cupy":
            ptr = sys.modules["cupy"].cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        elif self.kind == "torch":
            ptr = sys.modules["torch"].cuda.current_stream(like.device).cuda_stream
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        elif self.kind == "numba":
            st = getattr(like, "stream", 0)
            self.stream = st if st else cuda.default_stream()
        else:
            self.stream = cuda.default_stream()

    def empty(self, shape, dtype):
        """(caller-type array, its Numba view), uninitialised: results and scratch come from the
        caller's allocator (PyTorch's/CuPy's pools, stream-ordered), so they are born in the
        caller's array type and no copy or wrapping is needed. ``dtype``: a NumPy dtype, or the
        input's own bfloat16 dtype (ml_dtypes' or torch's); the view then holds its bits."""
        if self.kind == "torch":
            torch = sys.modules["torch"]
            arr = torch.empty(shape, dtype=getattr(torch, _dtype_name(dtype)), device=self.like.device)
            return arr, _view(arr)
        dtype = np.dtype(dtype)
        if self.kind == "cupy":
            arr = sys.modules["cupy"].empty(shape, dtype=dtype)
            return arr, _view(arr)
        arr = cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return arr, _view(arr)

    def scratch(self, shape, dtype):
        """The Numba view of a new ``empty`` array, for what only the kernels see."""
        return self.empty(shape, dtype)[1]

    def upload(self, a):
        """A Numba device array holding host array ``a``."""
        return cuda.to_device(np.ascontiguousarray(a), stream=self.stream)


class _Meta(NamedTuple):
    """Shape and dtype, for the shared checks, of an array whose view shows other bits."""
    shape: tuple
    dtype: np.dtype


def _contiguous(a, name):
    """A C-contiguous device array with the memory of ``a`` where it already is; CuPy/PyTorch
    arrays that are not are copied on the device by their own framework."""
    view = _view(a)
    if view.is_c_contiguous():
        return a, view
    kind = _framework(a)
    if kind == "cupy":
        a = sys.modules["cupy"].ascontiguousarray(a)
    elif kind == "torch":
        a = a.contiguous()
    else:
        raise ValueError(f"{name} must be C-contiguous on the device (got strides {view.strides}); "
                         f"copy it into a contiguous device array first")
    return a, _view(a)


def _span(view):
    """(start, end) device addresses of a Numba (or simulated) device array."""
    if SIM:
        ptr = view._ary.__array_interface__["data"][0]
    else:
        ptr = view.__cuda_array_interface__["data"][0]
    return ptr, ptr + view.size * view.dtype.itemsize


def _overlaps(a, b):
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1 and a1 > a0 and b1 > b0


# ---------------------------------------------------------------------------------------------
# The road
# ---------------------------------------------------------------------------------------------


def run(spec, entry, x, target, reduction, grad_output, out, options):
    """Compute ``entry`` ('loss', 'grad' or 'loss_and_grad') of loss ``spec`` on the GPU.

    Device inputs give device results in the caller's array type with no host synchronisation;
    NumPy inputs are copied to the device and the results come back as NumPy."""
    _dispatch.get_backend("cuda")  # BackendUnavailable, saying why, where there is no GPU
    v.check_reduction(spec, reduction)
    if is_device_array(x):
        return _run_device(spec, entry, x, target, reduction, grad_output, out, options)
    if is_device_array(target):
        raise TypeError(f"{spec.name}: {spec.target_name} is a device array but {spec.input_name} is not; "
                        f"pass both on the device or both on the host")
    return _run_host(spec, entry, x, target, reduction, grad_output, out, options)


def _run_host(spec, entry, x, target, reduction, grad_output, out, options):
    """NumPy in, NumPy out: the host road's checks (with the NumPy label pre-passes), then the
    device computes and the results are copied back."""
    p = _dispatch.prepare(spec, entry, x, target, reduction, grad_output, out, options,
                          _dispatch.get_backend("numpy"))
    gscale = p.gscale
    if reduction in ("mean", "batchmean"):  # the device divides by the denominator itself
        gscale = 1.0 if entry != "grad" else float(np.asarray(grad_output))
    want_grad = entry != "loss"
    # a bfloat16 problem holds bits in x, the float targets and the weights (the host road's
    # contract: every float array in x's dtype); the results are made as bits too. Only arrays
    # that are there are flagged: each set of flags is a kernel variant of its own
    bf16 = v.is_bfloat16(p.dtype)
    bf = 0
    if bf16:
        bf = (gpu.BF_X | (gpu.BF_T if p.kind != "classes" else 0)
              | (gpu.BF_W if p.options.get("weight") is not None else 0)
              | (gpu.BF_P if p.options.get("pos_weight") is not None else 0))
    kdtype = np.dtype(np.uint16) if bf16 else p.dtype
    dev = _Device(None)
    x_d = dev.upload(p.x)
    t_d = dev.upload(p.target)
    opts = {k: (dev.upload(val) if k in ("weight", "pos_weight") and val is not None else val)
            for k, val in p.options.items()}
    gs_d = None if p.gscale_arr is None else dev.upload(p.gscale_arr.astype(gpu.compute_dtype(kdtype)))
    grad_d = dev.scratch(x_d.shape, kdtype) if want_grad else None
    lo_d = dev.scratch(v.size_of(p.item_shape), kdtype) if (reduction == "none" and entry != "grad") else None
    res_d = dev.scratch(1, kdtype) if (reduction != "none" and entry != "grad") else None
    _launch(spec, p.kind, dev, x_d, t_d, opts, reduction, gscale, gs_d, 1, grad_d, lo_d, res_d, p.shape, bf)

    grad = None
    if want_grad:
        grad = p.out if p.out is not None else np.empty(p.shape, p.dtype)
        if grad.size:
            grad_d.copy_to_host(v.bits(grad).reshape(x_d.shape))
    if entry == "grad":
        return grad
    if reduction == "none":
        value = p.out if (p.out is not None and not want_grad) else np.empty(p.item_shape, p.dtype)
        if value.size:
            lo_d.copy_to_host(v.bits(value).reshape(-1))
    else:
        value = res_d.copy_to_host().view(p.dtype)[0]  # already rounded to p.dtype on the device
    return value if entry == "loss" else (value, grad)


def _run_device(spec, entry, x, target, reduction, grad_output, out, options):
    """Device in, device out: the shared shape/dtype/option checks, device arrays checked by
    their metadata only (never read on the host)."""
    x, x_v = _contiguous(x, spec.input_name)
    # the results' dtype: bfloat16 as the input's own dtype object (x_v holds its bits). Host
    # float targets and weights take it as on the host road; a torch.bfloat16 input has no
    # NumPy twin without ml_dtypes: they go up in float32 then
    bf = gpu.BF_X if _is_bf16(x) else 0
    dtype = x.dtype if bf else v.compute_dtype(x_v, spec.input_name)
    host_dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(np.float32)
    host_bf = (gpu.BF_T | gpu.BF_W | gpu.BF_P) if v.is_bfloat16(host_dtype) else 0  # they go up as bits
    x_shape = tuple(x_v.shape)  # a plain tuple: the simulator's shapes refuse negative indices
    v.check_input_shape(spec, x_shape, spec.input_name)
    dev = _Device(x)
    rows = spec.layout != ELEMENTS
    item_shape = x_shape[:-1] if rows else x_shape
    n_items = v.size_of(item_shape)

    # target: on the device (any real/int dtype; kernels widen on load) or on the host
    t_host = not is_device_array(target)
    t_v = np.asarray(target) if t_host else _contiguous(target, spec.target_name)[1]
    if not t_host and _is_bf16(target):  # a float target, whatever its bits' view says
        bf |= gpu.BF_T
        kind = v.target_kind(spec, x_shape, _Meta(tuple(t_v.shape), np.dtype(np.float32)), spec.target_name)
    else:
        kind = v.target_kind(spec, x_shape, t_v, spec.target_name)

    # options: device arrays are checked here (shape only), the rest by the shared checks
    dev_opts = {k: val for k, val in options.items() if k in ("weight", "pos_weight") and is_device_array(val)}
    opts = v.check_options(spec, {k: (None if k in dev_opts else val) for k, val in options.items()},
                           x_shape, host_dtype)
    if t_host:  # host targets are checked as on the CPU backends (no synchronisation needed)
        t_v = _dispatch.checked_target(spec, kind, t_v, x_shape[-1] if x_shape else 1, host_dtype, opts,
                                       _dispatch.get_backend("numpy"))[0]
        if kind != "classes":
            bf |= host_bf & gpu.BF_T
    for k, val in dev_opts.items():
        if _is_bf16(val):
            bf |= gpu.BF_W if k == "weight" else gpu.BF_P
        w_v = _contiguous(val, k)[1]
        v.check_real(spec, k, w_v)
        shape = tuple(w_v.shape)
        if rows:
            v.check_class_weight_shape(spec, k, shape, x_shape)
        elif len(shape) > len(x_shape) or shape != x_shape[len(x_shape) - len(shape):] or not shape:
            raise ValueError(f"{spec.name}: a device {k} must have a trailing shape of the input shape "
                             f"{x_shape} (element i uses {k}[i % size]), got {shape}; broadcast it on the "
                             f"device first")
        opts[k] = w_v

    # grad_output: a host scalar/array, or a device array read by the kernels
    want_grad = entry != "loss"
    gs_stride = 1
    if entry == "grad" and is_device_array(grad_output):
        gs_v = _contiguous(grad_output, "grad_output")[1]
        v.check_real(spec, "grad_output", gs_v)
        if _is_bf16(grad_output):
            bf |= gpu.BF_G
        if gs_v.size == 1:
            gs_stride = 0
        elif reduction != "none" or tuple(gs_v.shape) != tuple(item_shape):
            raise ValueError(f"{spec.name}: a device grad_output must have size 1 or, for reduction='none', "
                             f"the unreduced loss shape {tuple(item_shape)}; got shape {tuple(gs_v.shape)}")
        gs_v = gs_v.reshape(-1)
        gscale = 1.0
    else:
        gscale, gs_host = v.check_grad_output(spec, 1.0 if entry != "grad" else grad_output, reduction,
                                              item_shape)
        # read per item in the kernels' precision: float32 unless x is float64
        gs_v = None if gs_host is None else dev.upload(gs_host.astype(gpu.compute_dtype(x_v.dtype)))

    # out: a device array of the right dtype/shape, contiguous, not sharing the targets' memory
    out_v = None
    if out is not None:
        if not is_device_array(out):
            raise TypeError(f"{spec.name}: out must be a device array for device inputs, got {type(out).__name__}")
        out_v = _view(out)
        what = v.out_role(spec, entry, reduction)
        if _dtype_name(out.dtype) != _dtype_name(dtype):  # by name: bfloat16 views hold uint16
            raise TypeError(f"{spec.name}: out must have dtype {_dtype_name(dtype)} (the {what}), "
                            f"got {_dtype_name(out.dtype)}")
        v.check_out_form(spec, out_v, out_v.is_c_contiguous(), out_v.dtype, x_shape if want_grad else item_shape,
                         what)
        others = [(spec.target_name, None if t_host else t_v)] + [(k, opts.get(k)) for k in dev_opts]
        if not want_grad or _span(out_v)[0] != _span(x_v)[0]:  # the gradient may overwrite x exactly
            others.append((spec.input_name, x_v))
        for name, arr in others:
            if arr is not None and arr.size and out_v.size and _overlaps(out_v, arr):
                raise ValueError(v.out_overlap_message(spec, name))

    # everything checked: upload host pieces, allocate, launch
    x_d = x_v.reshape((n_items, x_shape[-1]) if rows else (n_items,))
    t_d = dev.upload(t_v) if t_host else t_v
    t_d = t_d.reshape(-1) if kind == "classes" else t_d.reshape(x_d.shape)
    for k in ("weight", "pos_weight"):
        if k in dev_opts:
            opts[k] = opts[k].reshape(-1)
        elif opts.get(k) is not None:
            opts[k] = dev.upload(v.bits(opts[k]))
            bf |= host_bf & (gpu.BF_W if k == "weight" else gpu.BF_P)

    grad = grad_v = None
    if want_grad:
        grad, grad_v = (out, out_v) if out is not None else dev.empty(x_shape, dtype)
    loss_arr = lo_v = None
    if reduction == "none" and entry != "grad":
        loss_arr, lo_v = (out, out_v) if (out is not None and not want_grad) else dev.empty(item_shape, dtype)
    res = res_v = None
    if reduction != "none" and entry != "grad":
        res, res_v = dev.empty((1,), dtype)
    _launch(spec, kind, dev, x_d, t_d, opts, reduction, gscale, gs_v, gs_stride,
            None if grad_v is None else grad_v.reshape(x_d.shape),
            None if lo_v is None else lo_v.reshape(-1), res_v, x_shape, bf)
    if entry == "grad":
        return grad
    value = loss_arr if reduction == "none" else res.reshape(())
    return value if entry == "loss" else (value, grad)


def _launch(spec, kind, dev, x, t, opts, reduction, gscale, gscale_arr, gs_stride, grad, loss_out, result, x_shape,
            bf):
    """dispatch -> kernel: the spec's kernel for targets of ``kind`` on device arrays (``x``
    flattened to (N, C) or (n,)), on ``dev``'s stream; the mean's denominator is applied on the
    device (a label-weighted one is also reduced there). ``bf``: which arrays hold bfloat16 bits."""
    den = 1.0
    if reduction == "batchmean":
        den = float(x_shape[0]) if x_shape else 1.0
    elif reduction == "mean":
        if kind == "classes" and spec.label_weighted_mean:
            den = gpu.label_weight_denominator(t, x.shape[1], opts["ignore_index"], opts["weight"],
                                               dev.stream, dev.scratch, bf)
        else:
            den = float(x.shape[0])
    kernel, args = spec.kernel(kind)
    gpu.launch(kernel, x, t, args(opts), grad, gscale, gscale_arr, gs_stride, den, loss_out, result,
               dev.stream, dev.scratch, bf)
