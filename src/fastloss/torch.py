"""fastloss for PyTorch: every loss as a differentiable function and an ``nn.Module``.

Layout and names follow ``torch.nn.functional``: the class axis is dim 1 (``(N, C)``,
``(N, C, d1, ...)`` or an unbatched ``(C,)``), and the functions are named after the ``F``
functions they mirror::

    fastloss.torch.cross_entropy              F.cross_entropy                 (softmax_xent)
    fastloss.torch.binary_cross_entropy_with_logits                            (sigmoid_bce)
    fastloss.torch.huber_loss                 F.huber_loss                    (huber)
    fastloss.torch.hinge_loss                 no F equivalent                 (hinge)
    fastloss.torch.multi_margin_loss          F.multi_margin_loss             (multiclass_hinge)
    fastloss.torch.mse_loss / l1_loss / kl_div                                (mse, mae, kl_div)
    fastloss.torch.smooth_l1_loss             F.smooth_l1_loss                (smooth_l1)
    fastloss.torch.poisson_nll_loss           F.poisson_nll_loss              (poisson_nll)
    fastloss.torch.sigmoid_focal_loss         torchvision.ops.sigmoid_focal_loss (sigmoid_focal)
    fastloss.torch.log_cosh_loss              no F equivalent                 (log_cosh)
    fastloss.torch.msle_loss                  no F equivalent                 (msle)
    fastloss.torch.cosine_similarity_loss     -F.cosine_similarity            (cosine_similarity)

Each has an ``nn.Module`` (``SmoothL1Loss``, ``PoissonNLLLoss``, ``SigmoidFocalLoss``,
``LogCoshLoss``, ``MSLELoss``, ``CosineSimilarityLoss`` beside ``CrossEntropyLoss`` & co.).
Where F has the loss, the arguments are F's (its deprecated ``size_average``/``reduce`` left
out, so what follows them is keyword-only); ``sigmoid_focal_loss`` takes torchvision's
``(inputs, targets, alpha=0.25, gamma=2, reduction="none")``, default reduction ``"none"``
included (``SigmoidFocalLoss`` too). The losses F lacks are Keras': ``log_cosh_loss`` is
``log(cosh(input - target))``, ``msle_loss`` is
``(log1p(clamp(input, min=1e-7)) - log1p(clamp(target, min=1e-7)))**2``, and
``cosine_similarity_loss(input, target, dim=1)`` is the row loss
``-F.cosine_similarity(input, target, dim)``, each norm clamped at 1e-6 (``F.normalize``'s
``eps=1e-6``; an all-zero row has loss 0), one loss per row over ``dim`` (dim 1, the class
axis of ``cross_entropy``, by default; a 1-D input is one row), ``"mean"`` over rows.

How it works. Each loss is a ``torch.library.custom_op`` (``torch.ops.fastloss.<loss word>``)
whose forward runs the fused ``<loss>_and_grad`` kernel once, returning the loss and saving
d(loss)/d(input) (the per-item gradients for ``reduction="none"``); the registered backward
only scales that gradient by ``grad_output``. ``register_fake`` gives ``torch.compile`` the
output shapes, so ``torch.compile(fullgraph=True)`` traces through without a graph break.
Eager calls on plain tensors skip the op's Python dispatch (most of a small call's time) for a
``torch.autograd.Function`` that does the same, and hands the kernel's gradient buffer to
autograd as its only reference: a fresh leaf's ``.grad`` is that buffer (no copy),
``loss.backward()`` adds no pass over it, and a non-unit ``grad_output`` scales it in place
(with ``retain_graph=True`` the buffer is kept and autograd copies it instead).
CPU tensors reach the kernels as NumPy views (no copy); CUDA tensors go to fastloss's ``cuda``
backend through ``__cuda_array_interface__``, with no host synchronisation. Without a gradient
to compute (``no_grad``, or an input that does not require grad) only the loss is computed.

Half precision: float16 and bfloat16 tensors go to the kernels as they are (CPU bfloat16 as an
``ml_dtypes.bfloat16`` view, which needs ``ml_dtypes``: it comes with ``fastloss[torch]``);
items are computed in float32 and each result rounded once. A backward whose ``grad_output`` is
not 1 recomputes the gradient with it folded in (``fastloss::<loss>_backward``) rather than
scaling the rounded half gradient, which would round twice (except with ``inplace_grad=True``,
whose logits are gone by then: there a non-unit ``grad_output`` scales the half gradient).

Limits: gradients flow to the input only (a target, ``weight`` or ``pos_weight`` that requires
grad is refused, rather than silently getting none); double backward raises.

Importing ``fastloss`` never imports torch; only ``import fastloss.torch`` does.
"""

import inspect
import sys
from typing import Optional

import numpy as np
import torch

import fastloss as _fastloss
from . import _torch_distributed as distributed
from ._specs import ELEMENTS, SPECS
from ._torch_linear import linear_cross_entropy

# fastloss.torch.distributed (vocab_parallel_cross_entropy): importable by that name too
sys.modules[__name__ + ".distributed"] = distributed

__all__ = [
    "linear_cross_entropy", "cross_entropy", "binary_cross_entropy_with_logits", "huber_loss", "hinge_loss",
    "multi_margin_loss", "mse_loss", "l1_loss", "kl_div", "smooth_l1_loss", "poisson_nll_loss",
    "sigmoid_focal_loss", "log_cosh_loss", "msle_loss", "cosine_similarity_loss",
    "CrossEntropyLoss", "BCEWithLogitsLoss", "HuberLoss", "HingeLoss", "MultiMarginLoss",
    "MSELoss", "L1Loss", "KLDivLoss", "SmoothL1Loss", "PoissonNLLLoss", "SigmoidFocalLoss",
    "LogCoshLoss", "MSLELoss", "CosineSimilarityLoss",
]

# the schema type of every option of the spec table
_OPTION_TYPES = {
    "weight": Optional[torch.Tensor], "pos_weight": Optional[torch.Tensor], "ignore_index": int,
    "label_smoothing": float, "z_loss": float, "delta": float, "margin": float,
    "squared": bool, "mode": str, "log_target": bool, "beta": float, "log_input": bool,
    "full": bool, "eps": float, "alpha": float, "gamma": float,
}
_NATIVE = (torch.float32, torch.float64)  # dtypes the kernels take as they are
_HALF = (torch.float16, torch.bfloat16)  # passed straight through, computed in float32 in registers


# ---- the host/device call ----------------------------------------------------------------------

def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes comes with fastloss[torch]
        raise ImportError("fastloss.torch: bfloat16 CPU tensors reach NumPy as ml_dtypes.bfloat16 "
                          "arrays; install ml_dtypes (pip install ml_dtypes, or fastloss[torch])") from None
    return ml_dtypes.bfloat16


def _as_numpy(t):
    """A NumPy view of a CPU tensor (no copy); bfloat16 as an ``ml_dtypes.bfloat16`` view."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.uint16).numpy().view(_bfloat16())
    return (t.detach() if t.requires_grad else t).numpy()


def _from_numpy(a, dtype):
    """A NumPy result of torch dtype ``dtype`` as a tensor (no copy); bfloat16 by its bits."""
    a = np.asarray(a)
    if dtype == torch.bfloat16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


_SUFFIX = {"loss": "", "grad": "_grad", "loss_and_grad": "_and_grad"}


def _compute(spec, entry, x, target, reduction, backend, opts, out=None, grad_output=None):
    """Run ``<loss>`` (entry 'loss'), ``<loss>_and_grad`` or ``<loss>_grad`` (with
    ``grad_output``) on tensors.

    Returns (loss, grad) tensors of ``x``'s dtype and device (loss None for 'grad', grad None
    for 'loss'). ``out`` (``_and_grad`` only) is a tensor that receives the gradient, e.g. ``x``.
    """
    cuda = x.is_cuda
    if cuda:  # the device road takes tensors as they are and never synchronises
        conv, backend = torch.Tensor.detach, "cuda"
    elif x.is_cpu:
        conv = _as_numpy
    else:
        raise ValueError(f"fastloss.torch: {spec.name} runs on CPU and CUDA tensors, got device {x.device}")
    kwargs = {k: (conv(v) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    if out is not None:
        kwargs["out"] = conv(out)
    if grad_output is not None:
        kwargs["grad_output"] = conv(grad_output)
    func = getattr(_fastloss, spec.name + _SUFFIX[entry])
    result = func(conv(x), conv(target), reduction=reduction, backend=backend, **kwargs)
    loss, grad = (result, None) if entry == "loss" else (None, result) if entry == "grad" else result
    if loss is not None:
        loss = torch.as_tensor(loss, device=x.device).to(x.dtype) if cuda else _from_numpy(loss, x.dtype)
    if grad is not None:
        grad = out if out is not None else (
            torch.as_tensor(grad, device=x.device).to(x.dtype) if cuda else _from_numpy(grad, x.dtype))
    return loss, grad


def _item_shape(spec, x, reduction):
    if reduction != "none":
        return ()
    return tuple(x.shape[:-1]) if spec.layout != ELEMENTS else tuple(x.shape)


# ---- one custom op (+ a loss-only op) per loss, generated from the spec table ---------------
# torch.compile traces these; eager calls take _Fused below (the ops' Python dispatch would be
# most of a small call's time), and the ops stay callable as torch.ops.fastloss.<loss>.

def _signature(spec, returns, grad_output=False):
    p = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("grad_output", p, annotation=torch.Tensor)] if grad_output else []
    params += [inspect.Parameter("x", p, annotation=torch.Tensor),
              inspect.Parameter("target", p, annotation=torch.Tensor),
              inspect.Parameter("reduction", p, annotation=str),
              inspect.Parameter("backend", p, annotation=str)]
    params += [inspect.Parameter(k, p, annotation=_OPTION_TYPES[k]) for k in spec.options]
    return inspect.Signature(params, return_annotation=returns)


def _define_ops(spec):
    """``fastloss::<loss>`` -> (loss, grad) with autograd, ``fastloss::<loss>_forward`` -> loss."""
    fused_sig = _signature(spec, tuple[torch.Tensor, torch.Tensor])
    loss_sig = _signature(spec, torch.Tensor)
    grad_sig = _signature(spec, torch.Tensor, grad_output=True)
    opt_names = tuple(spec.options)
    n_inputs = 4 + len(opt_names)

    def positional(sig, args, kwargs):
        # the dispatcher passes every argument positionally: bind (slow) only a call with keywords
        return sig.bind(*args, **kwargs).args if kwargs else args

    def grad_only(*args, **kwargs):
        grad_output, x, target, reduction, backend, *options = positional(grad_sig, args, kwargs)
        opts = dict(zip(opt_names, options))
        return _compute(spec, "grad", x, target, reduction, backend, opts, grad_output=grad_output)[1]

    def grad_fake(*args, **kwargs):
        return torch.empty_like(positional(grad_sig, args, kwargs)[1], memory_format=torch.contiguous_format)

    def fused(*args, **kwargs):
        x, target, reduction, backend, *options = positional(fused_sig, args, kwargs)
        return _compute(spec, "loss_and_grad", x, target, reduction, backend, dict(zip(opt_names, options)))

    def loss_only(*args, **kwargs):
        x, target, reduction, backend, *options = positional(loss_sig, args, kwargs)
        return _compute(spec, "loss", x, target, reduction, backend, dict(zip(opt_names, options)))[0]

    def fused_fake(*args, **kwargs):
        x, _, reduction = positional(fused_sig, args, kwargs)[:3]
        return x.new_empty(_item_shape(spec, x, reduction)), torch.empty_like(x, memory_format=torch.contiguous_format)

    def loss_fake(*args, **kwargs):
        x, _, reduction = positional(loss_sig, args, kwargs)[:3]
        return x.new_empty(_item_shape(spec, x, reduction))

    for f, sig, suffix in ((fused, fused_sig, ""), (loss_only, loss_sig, "_forward"),
                           (grad_only, grad_sig, "_backward"), (fused_fake, fused_sig, "_fake"),
                           (loss_fake, loss_sig, "_forward_fake"), (grad_fake, grad_sig, "_backward_fake")):
        f.__signature__ = sig
        f.__name__ = f.__qualname__ = spec.name + suffix

    fused_op = torch.library.custom_op(f"fastloss::{spec.name}", fused, mutates_args=())
    fused_op.register_fake(fused_fake)
    loss_op = torch.library.custom_op(f"fastloss::{spec.name}_forward", loss_only, mutates_args=())
    loss_op.register_fake(loss_fake)
    grad_op = torch.library.custom_op(f"fastloss::{spec.name}_backward", grad_only, mutates_args=())
    grad_op.register_fake(grad_fake)

    rows = spec.layout != ELEMENTS

    def setup_context(ctx, inputs, output):
        ctx.scale_per_row = rows and inputs[2] == "none"
        ctx.set_materialize_grads(False)  # else autograd builds an N x C zeros for the grad output
        ctx.mark_non_differentiable(output[1])
        # half inputs: a half gradient times grad_output would round twice, so a grad_output
        # other than 1 recomputes the gradient with it folded in (the inputs are kept for that)
        ctx.half = inputs[0].dtype in _HALF
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in inputs]
        ctx.args = [None if t else a for t, a in zip(ctx.is_tensor, inputs)] if ctx.half else None
        ctx.save_for_backward(output[1], *(a for a in inputs if ctx.half and isinstance(a, torch.Tensor)))

    def backward(ctx, grad_loss, _grad_of_grad):
        _no_double_backward()
        if grad_loss is None:
            return (None,) * n_inputs
        grad, *tensors = ctx.saved_tensors
        if ctx.half and not _is_one(grad_loss):
            tensors = iter(tensors)
            args = [next(tensors) if t else a for t, a in zip(ctx.is_tensor, ctx.args)]
            return (grad_op(grad_loss, *args),) + (None,) * (n_inputs - 1)
        return (_scaled(grad, grad_loss, ctx.scale_per_row, inplace=False),) + (None,) * (n_inputs - 1)

    fused_op.register_autograd(backward, setup_context=setup_context)
    return fused_op, loss_op


def _no_double_backward():
    # the saved gradient is a constant to autograd: a graph built on it would silently give a
    # zero second derivative, so refuse create_graph=True outright
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError("fastloss.torch: double backward (create_graph=True) is not supported; the "
                           "gradient comes from a fused kernel and has no graph of its own")


def _is_one(grad_output):
    """grad_output is the scalar 1: known without a device sync, and only for a real CPU tensor
    (never while compiling, nor for a fake tensor, whose value is unknown)."""
    return (grad_output.dim() == 0 and grad_output.is_cpu and type(grad_output) is torch.Tensor
            and not torch.compiler.is_compiling() and grad_output.item() == 1.0)


def _scaled(grad, grad_output, per_row, inplace):
    """grad * grad_output (grad_output per item for reduction='none')."""
    if _is_one(grad_output):
        return grad  # the usual loss.backward(): nothing to scale, no second N x C pass
    if per_row:
        grad_output = grad_output.unsqueeze(-1)
    return grad.mul_(grad_output) if inplace else grad * grad_output


_OPS = {name: _define_ops(spec) for name, spec in SPECS.items()}

# whether the running backward keeps the graph (retain_graph=True); AOTAutograd asks the same.
# Unknown (an older torch without it): assume it does, which is always correct, if slower.
_keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)


class _Fused(torch.autograd.Function):
    """Eager mode: the fused kernel in the forward; in the backward its gradient buffer is handed
    to autograd as the only reference (kept on ctx, not saved), so a leaf's AccumulateGrad takes
    it as ``.grad`` without a copy, a non-unit ``grad_output`` scales it in place, and
    ``loss.backward()`` costs no N x C pass at all. With ``inplace`` that buffer is ``x``'s own
    storage. ``x`` is the only input autograd sees (the rest ride in ``call``: fewer to process)."""

    @staticmethod
    def forward(ctx, x, call):
        spec, target, reduction, backend, opts, inplace = call
        if inplace and (x.dtype not in _NATIVE + _HALF or not x.is_contiguous()):
            raise ValueError(f"fastloss.torch: inplace_grad=True needs a float input whose "
                             f"class axis is last in memory (contiguous once moved), got dtype "
                             f"{x.dtype}, shape {tuple(x.shape)}, strides {x.stride()}")
        loss, grad = _compute(spec, "loss_and_grad", x, target, reduction, backend, opts,
                              out=x if inplace else None)
        ctx.grad, ctx.inplace = (grad.detach() if inplace else grad), inplace  # inplace: grad is x
        ctx.per_row = spec.layout != ELEMENTS and reduction == "none"
        # half inputs: see the module docstring; the inputs are kept to recompute the gradient
        ctx.recompute = x.dtype in _HALF and not inplace
        if ctx.recompute:
            ctx.call = call
            ctx.save_for_backward(x, target)
        if inplace:
            # anything else that saved x for its backward now fails loudly instead of reading a gradient
            torch.autograd.graph.increment_version(x)
            ctx.leaf = (x if x._base is None else x._base).is_leaf  # x.grad must not alias x
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        _no_double_backward()
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("fastloss.torch: backward ran twice through a loss whose gradient buffer "
                               "was already handed out (inplace_grad=True, or a first backward without "
                               "retain_graph=True)")
        # hand the buffer over (autograd then holds its only reference) unless the graph is kept
        # for another backward (or compiled autograd traces this: it cannot tell); inplace_grad
        # always hands it over (a second backward raises)
        owned = ctx.inplace or not (torch.compiler.is_compiling() or _keep_graph())
        if owned:
            ctx.grad = None
        if ctx.recompute and not _is_one(grad_loss):
            x, target = ctx.saved_tensors
            spec, _, reduction, backend, opts, _ = ctx.call
            return _compute(spec, "grad", x, target, reduction, backend, opts, grad_output=grad_loss)[1], None
        grad = _scaled(grad, grad_loss, ctx.per_row, inplace=owned)
        # a copy where the buffer must not escape: kept for the next backward (a later owned
        # backward scales it in place), or a leaf's own storage (x.grad must not alias x)
        if grad is ctx.grad or (ctx.inplace and ctx.leaf):
            grad = grad.clone()
        return grad, None


# Function.apply's Python wrapper only serves functorch transforms, which _eager sends to the
# custom ops: call the C apply beneath it (a few us of a small call)
# (these are torch internals: a torch without them sends every call to the custom ops)
try:
    _fused = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Fused)
    _functorch_active, _dispatch_modes = torch._C._are_functorch_transforms_active, torch._C._len_torch_dispatch_stack
except (AttributeError, KeyError):  # pragma: no cover - another torch
    _fused = None
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _eager(x):
    """The call may skip the custom ops: a plain tensor, and nothing (torch.compile, export, a
    functorch transform, a dispatch mode such as FakeTensorMode) that has to see the op."""
    return (_fused is not None and type(x) in _PLAIN and not torch.compiler.is_compiling()
            and not _functorch_active() and not _dispatch_modes())


# ---- the F-style functions -------------------------------------------------------------------

def _loss(name, input, target, reduction, backend, inplace_grad, class_axis, **opts):
    spec = SPECS[name]
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"fastloss.torch: input and target must be tensors, got "
                        f"{type(input).__name__} and {type(target).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"fastloss.torch: input must be a floating-point tensor, got {input.dtype}")
    for what, t in (("target", target), *opts.items()):
        if isinstance(t, torch.Tensor) and t.requires_grad:  # target, weight, pos_weight
            raise ValueError(f"fastloss.torch: {name} computes gradients with respect to the input "
                             f"only; {what} requires grad (detach it)")
    if class_axis and input.dim() > 2:
        input = input.movedim(1, -1)  # a view: the class axis last, as the kernels take it
        if target.is_floating_point() and target.dim() == input.dim():
            target = target.movedim(1, -1)  # probability targets
    needs_grad = input.requires_grad and torch.is_grad_enabled()
    if _eager(input):
        if not needs_grad:
            return _compute(spec, "loss", input, target, reduction, backend, opts)[0]
        return _fused(input, (spec, target, reduction, backend, opts, inplace_grad))
    fused_op, loss_op = _OPS[name]
    args = tuple(opts[k] for k in spec.options)
    if not needs_grad:
        return loss_op(input, target, reduction, backend, *args)
    return fused_op(input, target, reduction, backend, *args)[0]


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, inplace_grad=False, backend="auto"):
    """``F.cross_entropy`` (class indices or probabilities), plus PaLM's ``z_loss``.

    ``input`` is ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``; ``target`` class indices of the
    input's shape without dim 1, or probabilities of the input's shape. ``inplace_grad=True``
    writes the gradient over ``input``'s storage in the forward (no second N x C buffer): the
    input's values are destroyed, so use it only on logits nothing else needs (e.g. the output of
    a Linear layer); eager mode only (ignored under ``torch.compile``).
    """
    return _loss("softmax_xent", input, target, reduction, backend, inplace_grad, True,
                 weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss)


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction="mean", pos_weight=None,
                                     inplace_grad=False, backend="auto"):
    """``F.binary_cross_entropy_with_logits``: ``weight`` broadcasts to the input, ``pos_weight``
    over its last axes. Target of the input's shape (no broadcasting)."""
    return _loss("sigmoid_bce", input, target, reduction, backend, inplace_grad, False,
                 weight=weight, pos_weight=pos_weight)


def huber_loss(input, target, reduction="mean", delta=1.0, *, inplace_grad=False, backend="auto"):
    """``F.huber_loss``: ``0.5*d**2`` if ``|d| <= delta`` else ``delta*(|d| - 0.5*delta)``."""
    return _loss("huber", input, target, reduction, backend, inplace_grad, False, delta=delta)


def hinge_loss(input, target, margin=1.0, *, squared=False, reduction="mean", inplace_grad=False,
               backend="auto"):
    """``max(0, margin - y*input)`` (squared if asked), labels ``y`` in {-1, +1} or {0, 1}."""
    return _loss("hinge", input, target, reduction, backend, inplace_grad, False,
                 margin=margin, squared=squared)


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, *, reduction="mean",
                      mode="weston_watkins", squared=None, inplace_grad=False, backend="auto"):
    """``F.multi_margin_loss`` (``mode="weston_watkins"``, the default) or Crammer-Singer's
    ``max(0, margin + max_{j != y} x[j] - x[y])`` (``mode="crammer_singer"``). ``p=2`` (or
    ``squared=True``) squares the hinge. Input ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``."""
    if p not in (1, 2) or isinstance(p, bool):
        raise ValueError(f"fastloss.torch: multi_margin_loss supports p == 1 and p == 2 only, got {p!r}")
    if squared is not None and bool(squared) != (p == 2):
        if p == 2:
            raise ValueError("fastloss.torch: multi_margin_loss got p=2 and squared=False; give one of them")
        p = 2 if squared else 1
    return _loss("multiclass_hinge", input, target, reduction, backend, inplace_grad, True,
                 margin=margin, squared=p == 2, weight=weight, mode=mode)


def mse_loss(input, target, *, reduction="mean", inplace_grad=False, backend="auto"):
    """``F.mse_loss`` (target of the input's shape, no broadcasting)."""
    return _loss("mse", input, target, reduction, backend, inplace_grad, False)


def l1_loss(input, target, *, reduction="mean", inplace_grad=False, backend="auto"):
    """``F.l1_loss`` (target of the input's shape, no broadcasting)."""
    return _loss("mae", input, target, reduction, backend, inplace_grad, False)


def kl_div(input, target, *, reduction="mean", log_target=False, inplace_grad=False, backend="auto"):
    """``F.kl_div``: ``input`` log-probabilities; ``reduction`` also takes ``"batchmean"``."""
    return _loss("kl_div", input, target, reduction, backend, inplace_grad, False, log_target=log_target)


def smooth_l1_loss(input, target, *, reduction="mean", beta=1.0, inplace_grad=False, backend="auto"):
    """``F.smooth_l1_loss``: ``0.5*d**2/beta`` if ``|d| < beta`` else ``|d| - 0.5*beta``,
    ``d = input - target`` (``beta=0`` is ``l1_loss``). Target of the input's shape."""
    return _loss("smooth_l1", input, target, reduction, backend, inplace_grad, False, beta=beta)


def poisson_nll_loss(input, target, log_input=True, full=False, *, eps=1e-8, reduction="mean",
                     inplace_grad=False, backend="auto"):
    """``F.poisson_nll_loss``: ``exp(input) - target*input`` (``log_input=True``), else
    ``input - target*log(input + eps)``; ``full`` adds the Stirling term
    ``target*log(target) - target + 0.5*log(2*pi*target)`` where ``target > 1``."""
    return _loss("poisson_nll", input, target, reduction, backend, inplace_grad, False,
                 log_input=log_input, full=full, eps=eps)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none", *, inplace_grad=False,
                       backend="auto"):
    """``torchvision.ops.sigmoid_focal_loss`` (Lin et al. 2017), its arguments and its default
    ``reduction="none"``: ``alpha_t * bce_with_logits(inputs, targets) * (1 - p_t)**gamma``,
    ``p = sigmoid(inputs)``, ``p_t = p*targets + (1-p)*(1-targets)``,
    ``alpha_t = alpha*targets + (1-alpha)*(1-targets)`` (no alpha factor when ``alpha < 0``)."""
    return _loss("sigmoid_focal", inputs, targets, reduction, backend, inplace_grad, False,
                 alpha=alpha, gamma=gamma)


def log_cosh_loss(input, target, *, reduction="mean", inplace_grad=False, backend="auto"):
    """Keras' ``LogCosh``: ``log(cosh(input - target))``, computed without overflow for any
    difference. Target of the input's shape."""
    return _loss("log_cosh", input, target, reduction, backend, inplace_grad, False)


def msle_loss(input, target, *, reduction="mean", inplace_grad=False, backend="auto"):
    """Keras' ``MeanSquaredLogarithmicError``:
    ``(log1p(clamp(input, min=1e-7)) - log1p(clamp(target, min=1e-7)))**2``; no gradient
    where ``input < 1e-7`` (as ``clamp``'s)."""
    return _loss("msle", input, target, reduction, backend, inplace_grad, False)


def cosine_similarity_loss(input, target, dim=1, *, reduction="mean", inplace_grad=False, backend="auto"):
    """Keras' ``CosineSimilarity`` loss: ``-F.cosine_similarity(input, target, dim)`` per row,
    each norm clamped at 1e-6 (``-sum(F.normalize(input, dim=dim, eps=1e-6) *
    F.normalize(target, dim=dim, eps=1e-6), dim)``). ``input`` and ``target`` have the same
    shape (no broadcasting); ``dim`` (default 1, the class axis of ``cross_entropy``) is the
    row axis, and a 1-D input is one row. ``reduction="none"`` returns the shape without
    ``dim``; ``"mean"`` averages over rows."""
    if isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor):
        if input.dim() > 1:
            axis = dim + input.dim() if dim < 0 else dim
            if not 0 <= axis < input.dim():
                raise ValueError(f"fastloss.torch: cosine_similarity_loss: dim={dim} is out of range for "
                                 f"an input of {input.dim()} dimensions")
            if axis != input.dim() - 1:
                input = input.movedim(axis, -1)  # a view: the row axis last, as the kernel takes it
                if target.dim() == input.dim():
                    target = target.movedim(axis, -1)
        elif dim not in (0, 1, -1):
            raise ValueError(f"fastloss.torch: cosine_similarity_loss: a 1-D input is one row; "
                             f"dim={dim} is out of range")
    return _loss("cosine_similarity", input, target, reduction, backend, inplace_grad, False)


# ---- nn.Module wrappers, constructed like torch.nn's -----------------------------------------

class _Loss(torch.nn.Module):
    def __init__(self, reduction, inplace_grad, backend):
        super().__init__()
        self.reduction = reduction
        self.inplace_grad = inplace_grad
        self.backend = backend

    def _common(self):
        return dict(reduction=self.reduction, inplace_grad=self.inplace_grad, backend=self.backend)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class CrossEntropyLoss(_Loss):
    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 z_loss=0.0, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.register_buffer("weight", weight)
        self.ignore_index, self.label_smoothing, self.z_loss = ignore_index, label_smoothing, z_loss

    def forward(self, input, target):
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                             label_smoothing=self.label_smoothing, z_loss=self.z_loss, **self._common())


class BCEWithLogitsLoss(_Loss):
    def __init__(self, weight=None, *, reduction="mean", pos_weight=None, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                **self._common())


class HuberLoss(_Loss):
    def __init__(self, reduction="mean", delta=1.0, *, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.delta = delta

    def forward(self, input, target):
        return huber_loss(input, target, delta=self.delta, **self._common())


class HingeLoss(_Loss):
    def __init__(self, margin=1.0, *, squared=False, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.margin, self.squared = margin, squared

    def forward(self, input, target):
        return hinge_loss(input, target, self.margin, squared=self.squared, **self._common())


class MultiMarginLoss(_Loss):
    def __init__(self, p=1, margin=1.0, weight=None, *, reduction="mean", mode="weston_watkins",
                 squared=None, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.p, self.margin, self.mode, self.squared = p, margin, mode, squared
        self.register_buffer("weight", weight)

    def forward(self, input, target):
        return multi_margin_loss(input, target, self.p, self.margin, self.weight, mode=self.mode,
                                 squared=self.squared, **self._common())


class MSELoss(_Loss):
    def __init__(self, *, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)

    def forward(self, input, target):
        return mse_loss(input, target, **self._common())


class L1Loss(_Loss):
    def __init__(self, *, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)

    def forward(self, input, target):
        return l1_loss(input, target, **self._common())


class KLDivLoss(_Loss):
    def __init__(self, *, reduction="mean", log_target=False, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.log_target = log_target

    def forward(self, input, target):
        return kl_div(input, target, log_target=self.log_target, **self._common())


class SmoothL1Loss(_Loss):
    def __init__(self, *, reduction="mean", beta=1.0, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.beta = beta

    def forward(self, input, target):
        return smooth_l1_loss(input, target, beta=self.beta, **self._common())


class PoissonNLLLoss(_Loss):
    def __init__(self, log_input=True, full=False, *, eps=1e-8, reduction="mean", inplace_grad=False,
                 backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.log_input, self.full, self.eps = log_input, full, eps

    def forward(self, input, target):
        return poisson_nll_loss(input, target, self.log_input, self.full, eps=self.eps, **self._common())


class SigmoidFocalLoss(_Loss):
    """``sigmoid_focal_loss`` as a module; like the function, ``reduction="none"`` by default."""

    def __init__(self, alpha=0.25, gamma=2, reduction="none", *, inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.alpha, self.gamma = alpha, gamma

    def forward(self, input, target):
        return sigmoid_focal_loss(input, target, self.alpha, self.gamma, **self._common())


class LogCoshLoss(_Loss):
    def __init__(self, *, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)

    def forward(self, input, target):
        return log_cosh_loss(input, target, **self._common())


class MSLELoss(_Loss):
    def __init__(self, *, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)

    def forward(self, input, target):
        return msle_loss(input, target, **self._common())


class CosineSimilarityLoss(_Loss):
    def __init__(self, dim=1, *, reduction="mean", inplace_grad=False, backend="auto"):
        super().__init__(reduction, inplace_grad, backend)
        self.dim = dim

    def forward(self, input, target):
        return cosine_similarity_loss(input, target, self.dim, **self._common())
