"""fastloss for JAX: every loss as a ``jax.custom_vjp`` function, usable under ``jit``, ``grad``,
``value_and_grad`` and ``vmap``.

Names, arguments, defaults and layout (class axis last) are those of the NumPy API::

    fastloss.jax.softmax_xent(logits, labels, reduction="mean", weight=None, ignore_index=-100,
                              label_smoothing=0.0, z_loss=0.0, inplace_grad=False)
    fastloss.jax.sigmoid_bce / huber / hinge / multiclass_hinge / mse / mae / kl_div / smooth_l1 /
        log_cosh / msle / poisson_nll / sigmoid_focal / cosine_similarity

(``cosine_similarity`` is a row loss over the last axis, with float targets of the input's
shape; the others after ``multiclass_hinge`` are elementwise.)

How it runs. On the CPU each loss lowers to one XLA custom call of fastloss's FFI handler (the
compiled cython kernels, registered with ``jax.ffi.register_ffi_target``): XLA hands it its own
input and output buffers, and one kernel pass writes the loss and the gradient, which the
forward keeps as the residual; the backward only multiplies it by the cotangent (nothing to do
when that is 1, as under ``value_and_grad``). Without differentiation a loss-only call runs.
Results are bitwise those of the NumPy API's cython backend. On other platforms (a JAX GPU),
or with ``backend="numba"``/``"numpy"`` or no compiled extension, the kernels run through
``jax.pure_callback`` instead, which copies the arrays to the host and back.

* ``inplace_grad=True`` (static) lets the gradient take the input's buffer (XLA input-output
  aliasing, JAX's ``out=x``): free when the logits are an intermediate value or a donated
  argument (``jax.jit(..., donate_argnums=...)``); XLA copies a logits buffer that is still
  needed first.
* ``vmap`` maps through the kernel's leading dims: one custom call for the whole batch, each
  member with its own reduction.
* ``float16`` and ``bfloat16`` arrays go to the kernels as they are (float32 math, results
  rounded once); for them the forward runs the loss alone and the backward one gradient call
  with the cotangent folded in, so that the gradient is rounded once, not once in the kernel
  and again when scaled.
* ``reduction`` and the scalar options (``ignore_index``, ``label_smoothing``, ``z_loss``,
  ``delta``, ``margin``, ``squared``, ``mode``, ``log_target``, ``beta``, ``log_input``,
  ``full``, ``eps``, ``alpha``, ``gamma``) are static: Python values, not traced arrays (a new
  value retraces). ``weight`` and ``pos_weight`` are traced arrays.
* Gradients flow to the first argument only: the cotangent of the targets, ``weight`` and
  ``pos_weight`` is zero (as in the NumPy API, "gradients are taken with respect to the first
  argument only").
* Shapes, dtypes and option values are checked when tracing; class labels when the kernel
  runs (an out-of-range label raises an error naming it, when the result is read).
* Threads: ``fastloss.set_num_threads`` applies to calls already compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import fastloss as _fastloss
from . import _dispatch, _threads
from . import _validation as _v
from ._api import options_text, signature
from ._specs import ELEMENTS, SPECS

__all__ = list(SPECS)

_ARRAY_OPTIONS = ("weight", "pos_weight")
_ENTRIES = {"loss": 0, "grad": 1, "loss_and_grad": 2}
_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2, "batchmean": 3}
_TARGET = "fastloss_loss"


def _item_shape(spec, shape, reduction):
    if reduction != "none":
        return ()
    return tuple(shape[:-1]) if spec.layout != ELEMENTS else tuple(shape)


def _results(spec, entry, x, reduction):
    loss = jax.ShapeDtypeStruct(_item_shape(spec, x.shape, reduction), x.dtype)
    grad = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return {"loss": loss, "grad": grad, "loss_and_grad": (loss, grad)}[entry]


@functools.cache
def _handler_kernels():
    """The cython kernels module whose XLA handler is registered (once), or None when it is not
    built."""
    try:
        from .backends import cython
    except ImportError:
        return None
    kernels = cython._module
    jax.ffi.register_ffi_target(_TARGET, kernels.xla_handler(), platform="cpu")
    _threads.on_change(lambda n: kernels.set_xla_threads(n, _threads.PARALLEL_MIN))
    return kernels


@functools.cache
def _attributes(name, static):
    return _handler_kernels().xla_attributes(name, dict(static), SPECS[name].options)


def _ffi(name, entry, reduction, static, inplace, x, target, arrays, *cotangent):
    """One custom call of the FFI handler (the CPU lowering)."""
    operands = [x, target] + [arrays[k] for k in _ARRAY_OPTIONS if arrays.get(k) is not None] + list(cotangent)
    has = sum(bit for k, bit in (("weight", 1), ("pos_weight", 2)) if arrays.get(k) is not None)
    attrs = dict(_attributes(name, static), entry=np.int64(_ENTRIES[entry]),
                 reduction=np.int64(_REDUCTIONS[reduction]), has=np.int64(has + 4 * bool(cotangent)),
                 x_rank=np.int64(x.ndim))
    aliases = {0: 1 if entry == "loss_and_grad" else 0} if inplace and entry != "loss" else None
    call = jax.ffi.ffi_call(_TARGET, _results(SPECS[name], entry, x, reduction), vmap_method="broadcast_all",
                            input_output_aliases=aliases)
    return call(*operands, **attrs)


def _host(name, entry, reduction, backend, static, dtype):
    """The host function the callback runs: NumPy in, NumPy out, results of ``dtype``."""
    func = getattr(_fastloss, name + {"loss": "", "grad": "_grad", "loss_and_grad": "_and_grad"}[entry])

    def host(x, target, arrays, *cotangent):
        arrays = {k: (None if a is None else np.asarray(a)) for k, a in arrays.items()}
        if cotangent:
            arrays["grad_output"] = np.asarray(cotangent[0])
        result = func(np.asarray(x), np.asarray(target), reduction=reduction, backend=backend, **static, **arrays)
        if entry != "loss_and_grad":
            return np.asarray(result, dtype=dtype)
        loss, grad = result
        return np.asarray(loss, dtype=dtype), np.asarray(grad, dtype=dtype)

    return host


def _callback(name, entry, reduction, backend, static, x, target, arrays, *cotangent):
    """The kernels through jax.pure_callback (another platform, backend or no compiled kernels)."""
    host = _host(name, entry, reduction, backend, dict(static), np.dtype(x.dtype))
    return jax.pure_callback(host, _results(SPECS[name], entry, x, reduction), x, target, arrays, *cotangent,
                             vmap_method="sequential")


def _call(name, entry, reduction, backend, static, inplace, x, target, arrays, *cotangent):
    callback = functools.partial(_callback, name, entry, reduction, backend, static)
    if _dispatch.resolve(backend, None) != "cython" or _handler_kernels() is None:
        return callback(x, target, arrays, *cotangent)
    ffi = functools.partial(_ffi, name, entry, reduction, static, inplace)
    return jax.lax.platform_dependent(x, target, arrays, *cotangent, cpu=ffi, default=callback)


def _half(x):
    return x.dtype in (jnp.float16, jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _loss(name, reduction, backend, static, inplace, x, target, arrays):
    return _call(name, "loss", reduction, backend, static, False, x, target, arrays)


def _loss_fwd(name, reduction, backend, static, inplace, x, target, arrays):
    if _half(x):  # the backward computes the gradient with the cotangent folded in: see _loss_bwd
        return _call(name, "loss", reduction, backend, static, False, x, target, arrays), (x, target, arrays)
    loss, grad = _call(name, "loss_and_grad", reduction, backend, static, inplace, x, target, arrays)
    return loss, (grad, target, arrays)


def _loss_bwd(name, reduction, backend, static, inplace, residual, cotangent):
    """The forward's gradient times the cotangent; for half inputs one grad kernel with the
    cotangent as its grad_output instead (a half gradient times the cotangent would round twice)."""
    first, target, arrays = residual
    zero = jax.tree_util.tree_map(_zero_cotangent, (target, arrays))
    if _half(first):
        return (_call(name, "grad", reduction, backend, static, inplace, first, target, arrays, cotangent),) + zero
    if reduction == "none" and SPECS[name].layout != ELEMENTS:
        cotangent = cotangent[..., None]  # one cotangent per row
    return (first * cotangent,) + zero


def _zero_cotangent(a):
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, dtype=jax.dtypes.float0)  # integer labels


_loss.defvjp(_loss_fwd, _loss_bwd)


def _array_option(spec, name, value, x):
    """weight/pos_weight as the kernels take them, in x's dtype: a class weight (C,) for a row
    loss; for an elementwise loss broadcast to the input (pos_weight: to its last axes)."""
    w = jnp.asarray(value, dtype=x.dtype)
    if spec.layout != ELEMENTS:
        _v.check_class_weight_shape(spec, name, w.shape, x.shape)
        return w
    shape = x.shape[x.ndim - w.ndim:] if name == "pos_weight" and w.ndim <= x.ndim else x.shape
    try:
        return jnp.broadcast_to(w, shape)
    except ValueError:
        raise ValueError(f"{spec.name}: {name} of shape {w.shape} does not broadcast to the input shape "
                         f"{tuple(x.shape)}") from None


def _make(spec):
    def func(x, target, *, reduction="mean", backend="auto", inplace_grad=False, **options):
        x, target = jnp.asarray(x), jnp.asarray(target)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        _v.check_reduction(spec, reduction)
        _v.check_input_shape(spec, x.shape, spec.input_name)
        kind = _v.target_kind(spec, x.shape, target, spec.target_name)
        if kind != "classes" and target.dtype != x.dtype:
            target = target.astype(x.dtype)
        static_in = {k: v for k, v in options.items() if k not in _ARRAY_OPTIONS}
        static = _v.check_options(spec, static_in, x.shape, np.dtype(x.dtype))
        static = tuple((k, v) for k, v in static.items() if k not in _ARRAY_OPTIONS)
        arrays = {k: (None if options.get(k) is None else _array_option(spec, k, options[k], x))
                  for k in spec.options if k in _ARRAY_OPTIONS}
        return _loss(spec.name, reduction, backend, static, bool(inplace_grad), x, target, arrays)

    func.__signature__ = signature(spec, [("reduction", "mean"), ("backend", "auto"), ("inplace_grad", False)])
    func.__name__ = func.__qualname__ = spec.name
    func.__module__ = __name__
    options = options_text(spec)
    func.__doc__ = (
        f"{spec.name}: {spec.formula}.\n\n"
        f"A jax.custom_vjp function (jit, grad, vmap): on the CPU one XLA custom call of fastloss's "
        f"fused kernel gives the loss and keeps the gradient for the backward.\n\n"
        f"reduction (static): {', '.join(repr(r) for r in spec.reductions)}; options: {options} "
        f"(weight/pos_weight traced arrays, the rest static); inplace_grad (static): the gradient "
        f"may take the input's buffer. Class axis last. See API.md."
    )
    return func


globals().update({name: _make(spec) for name, spec in SPECS.items()})
