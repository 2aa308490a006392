"""fastloss for JAX: every loss as a ``jax.custom_vjp`` function, usable under ``jit``/``grad``.

Names, arguments, defaults and layout (class axis last) are those of the NumPy API::

    fastloss.jax.softmax_xent(logits, labels, reduction="mean", weight=None, ignore_index=-100,
                              label_smoothing=0.0, z_loss=0.0)
    fastloss.jax.sigmoid_bce / huber / hinge / multiclass_hinge / mse / mae / kl_div / smooth_l1 /
        log_cosh / msle / poisson_nll / sigmoid_focal / cosine_similarity

(``cosine_similarity`` is a row loss over the last axis, with float targets of the input's
shape; the others after ``multiclass_hinge`` are elementwise.)

The forward runs fastloss's fused ``<loss>_and_grad`` kernel on the host through
``jax.pure_callback`` and keeps the gradient as the residual; the backward only multiplies it by
the cotangent. Without differentiation a loss-only kernel runs. The kernels run on the host:
on a JAX accelerator the callback copies the arrays to the host and back. ``float16`` and
``bfloat16`` arrays go to the kernels as they are (float32 math, results rounded once); for them
the forward runs the loss alone and the backward one gradient kernel with the cotangent folded
in, so that the gradient is rounded once, not once in the kernel and again when scaled.

* ``reduction`` and the scalar options (``ignore_index``, ``label_smoothing``, ``z_loss``,
  ``delta``, ``margin``, ``squared``, ``mode``, ``log_target``, ``beta``, ``log_input``,
  ``full``, ``eps``, ``alpha``, ``gamma``) are static: Python values, not traced arrays (a new
  value retraces). ``weight`` and ``pos_weight`` are traced arrays.
* Gradients flow to the first argument only: the cotangent of the targets, ``weight`` and
  ``pos_weight`` is zero (as in the NumPy API, "gradients are taken with respect to the first
  argument only").
* Shapes, dtypes and option values are checked when tracing; class labels are checked when the
  kernel runs (an out-of-range label raises from inside the callback).
* ``vmap`` works, one kernel call per mapped slice.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import fastloss as _fastloss
from . import _validation as _v
from ._api import options_text, signature
from ._specs import ELEMENTS, SPECS

__all__ = list(SPECS)

_ARRAY_OPTIONS = ("weight", "pos_weight")


def _item_shape(spec, shape, reduction):
    if reduction != "none":
        return ()
    return tuple(shape[:-1]) if spec.layout != ELEMENTS else tuple(shape)


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


def _call(name, entry, reduction, backend, static, x, target, arrays, *cotangent):
    spec = SPECS[name]
    loss_struct = jax.ShapeDtypeStruct(_item_shape(spec, x.shape, reduction), x.dtype)
    grad_struct = jax.ShapeDtypeStruct(x.shape, x.dtype)
    shapes = {"loss": loss_struct, "grad": grad_struct, "loss_and_grad": (loss_struct, grad_struct)}[entry]
    host = _host(name, entry, reduction, backend, dict(static), np.dtype(x.dtype))
    return jax.pure_callback(host, shapes, x, target, arrays, *cotangent, vmap_method="sequential")


def _half(x):
    return x.dtype in (jnp.float16, jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _loss(name, reduction, backend, static, x, target, arrays):
    return _call(name, "loss", reduction, backend, static, x, target, arrays)


def _loss_fwd(name, reduction, backend, static, x, target, arrays):
    if _half(x):  # the backward computes the gradient with the cotangent folded in: see _loss_bwd
        return _call(name, "loss", reduction, backend, static, x, target, arrays), (x, target, arrays)
    loss, grad = _call(name, "loss_and_grad", reduction, backend, static, x, target, arrays)
    return loss, (grad, target, arrays)


def _loss_bwd(name, reduction, backend, static, residual, cotangent):
    """The forward's gradient times the cotangent; for half inputs one grad kernel with the
    cotangent as its grad_output instead (a half gradient times the cotangent would round twice)."""
    first, target, arrays = residual
    zero = jax.tree_util.tree_map(_zero_cotangent, (target, arrays))
    if _half(first):
        return (_call(name, "grad", reduction, backend, static, first, target, arrays, cotangent),) + zero
    if reduction == "none" and SPECS[name].layout != ELEMENTS:
        cotangent = cotangent[..., None]  # one cotangent per row
    return (first * cotangent,) + zero


def _zero_cotangent(a):
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, dtype=jax.dtypes.float0)  # integer labels


_loss.defvjp(_loss_fwd, _loss_bwd)


def _make(spec):
    def func(x, target, *, reduction="mean", backend="auto", **options):
        x, target = jnp.asarray(x), jnp.asarray(target)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        _v.check_reduction(spec, reduction)
        _v.check_input_shape(spec, x.shape, spec.input_name)
        _v.target_kind(spec, x.shape, target, spec.target_name)
        static_in = {k: v for k, v in options.items() if k not in _ARRAY_OPTIONS}
        static = _v.check_options(spec, static_in, x.shape, np.dtype(x.dtype))
        static = tuple((k, v) for k, v in static.items() if k not in _ARRAY_OPTIONS)
        arrays = {k: (None if options.get(k) is None else jnp.asarray(options[k], dtype=x.dtype))
                  for k in spec.options if k in _ARRAY_OPTIONS}
        return _loss(spec.name, reduction, backend, static, x, target, arrays)

    func.__signature__ = signature(spec, [("reduction", "mean"), ("backend", "auto")])
    func.__name__ = func.__qualname__ = spec.name
    func.__module__ = __name__
    options = options_text(spec)
    func.__doc__ = (
        f"{spec.name}: {spec.formula}.\n\n"
        f"A jax.custom_vjp function (jit, grad, vmap): the forward runs fastloss's fused kernel "
        f"through jax.pure_callback and keeps the gradient for the backward.\n\n"
        f"reduction (static): {', '.join(repr(r) for r in spec.reductions)}; options: {options} "
        f"(weight/pos_weight traced arrays, the rest static). Class axis last. See API.md."
    )
    return func


globals().update({name: _make(spec) for name, spec in SPECS.items()})
