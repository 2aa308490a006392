"""``fastloss.torch.linear_cross_entropy``: ``F.cross_entropy(input @ linear_weight.T + linear_bias,
target)`` (plus ``z_loss``) and its gradients, without the N x V logits.

Rows go through in chunks (``fastloss._linear.chunked``, the loop the NumPy API runs): a chunk's
logits by torch's matmul (BLAS or cuBLAS) into one reused buffer, fastloss's fused kernel turning
them into their gradient in place (CPU tensors as NumPy views, CUDA tensors through
``__cuda_array_interface__``), then ``grad_input = dlogits @ W``, ``grad_W += dlogits.T @ x``
(``addmm_``, accumulated in float32 for half inputs) and the bias gradient. Peak extra memory:
one chunk of logits (64 MiB by default) plus the gradients.

For ``"mean"``/``"sum"`` the gradients are computed in the forward and the backward only scales
them (kept in float32 for half inputs, so the result is rounded once). For ``"none"`` the
backward recomputes each chunk with its rows' ``grad_output`` folded into the kernel (Liger-Kernel
#968 was the bug of ignoring it).

With ``group=g`` the rows of ``linear_weight``/``linear_bias`` are sharded over the ranks of
``g`` (``fastloss._torch_distributed``): each chunk's cross-entropy takes that module's two
all-reduces (MAX, SUM), the backward one all-reduce SUM of the input gradient (as Megatron's LM
head); a ``"none"`` backward recomputes from the rows' saved log-sum-exp, without communication.

Both ops (``torch.ops.fastloss.linear_cross_entropy`` and its ``_backward``) are
``torch.library.custom_op``s with fake kernels: ``torch.compile(fullgraph=True)`` traces through.

Data parallel with ignored rows: the mean over the rows of all ranks is each rank's
``reduction="sum"`` divided by the global weight of the rows that count::

    local = linear_cross_entropy(h, W, y, reduction="sum")
    count = (y != -100).sum()                  # with class weights: weight[y[y != -100]].sum()
    torch.distributed.all_reduce(count)        # the rows that count, over all ranks
    (local / count).backward()                 # then all-reduce SUM the gradients (DDP averages:
                                               # multiply the loss by the world size there)
"""

from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from . import _linear
from ._torch_distributed import (Split, acc_dtype, check_options, label_weights, reduce, shard_grad,
                                 shard_rows)

__all__ = ["linear_cross_entropy"]

_NAME = "linear_cross_entropy"
_GROUPS = {}  # group_name -> process group: the custom ops take a group by its name


def _numpy(t):
    """A NumPy view of a CPU tensor (no copy); bfloat16 as an ``ml_dtypes.bfloat16`` view."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes  # comes with fastloss[torch]
        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _ops(device):
    return _linear.Ops(lambda shape, dtype: torch.empty(shape, dtype=dtype, device=device),
                       lambda shape, dtype: torch.zeros(shape, dtype=dtype, device=device),
                       torch.matmul,
                       lambda c, a, b: c.addmm_(a.to(c.dtype), b.to(c.dtype)))


def _chunks(input, W, bias, target, weight, args, grads, grad_output=None, saved=None):
    """The chunk loop on tensors. Returns (losses per row in float64, sum of w_y, saved, grads):
    ``saved`` is [lse per row, offset, size, V] with a group (what a recompute needs), and the
    gradients (acc dtype) are those of the rows' sum, or with ``grad_output`` (per row, the
    ``"none"`` backward) of ``sum(grad_output * loss)``, recomputed (no losses then)."""
    _, ignore_index, label_smoothing, z_loss, rows, group_name = args
    h, y = input.detach().reshape(-1, input.shape[-1]), target.reshape(-1).to(torch.int64)
    n, dev, acc = h.shape[0], h.device, acc_dtype(input.dtype)
    group = _GROUPS.get(group_name)  # None: nothing is sharded
    grads = grads or grad_output is not None
    w_acc = None if weight is None else weight.to(dev, input.dtype).to(acc)  # as the kernels round it
    losses = torch.zeros(n, dtype=torch.float64, device=dev)
    weight_sum = torch.zeros((), dtype=torch.float64, device=dev)
    where = (_NAME, tuple(target.shape))

    if group is None:
        conv, backend = (_numpy, "auto") if h.is_cpu else (torch.Tensor.detach, "cuda")
        options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                       weight=None if weight is None else conv(weight))

        def step(L, s, e):
            nonlocal weight_sum
            g = None if grad_output is None else conv(grad_output[s:e])
            if g is None:  # checks the labels first: a bad one is named by its place in target
                weight_sum += label_weights(y[s:e], W.shape[0], w_acc, ignore_index, acc, *where, s).sum(
                    dtype=torch.float64)
            rows_loss = _linear.fused_rows(conv(L), conv(y[s:e]), grads, g, backend, options)
            if rows_loss is not None:
                losses[s:e] = (rows_loss.to(torch.float64) if isinstance(rows_loss, torch.Tensor)
                               else torch.from_numpy(np.asarray(rows_loss, np.float64)))
    else:
        opts = (ignore_index, label_smoothing, z_loss)
        if saved is None:
            saved = torch.empty(n + 3, dtype=acc, device=dev)
        lse = saved[:n]

        def step(L, s, e):
            nonlocal weight_sum
            out = L if L.dtype == acc else None  # half chunks: computed in float32, rounded once into L
            if grad_output is None:
                r = shard_rows(L, y[s:e], w_acc, opts, group, grads=grads, out=out, where=(*where, s))
                losses[s:e], lse[s:e] = r.loss, r.lse
                saved[n:] = torch.tensor(r.split, dtype=acc)
                weight_sum += r.weight_sum
                d = r.grad
            else:
                split = Split(*(int(k) for k in saved[n:].tolist()))
                d = shard_grad(L, y[s:e], w_acc, opts, lse[s:e], split, grad_output[s:e].to(acc), out)
            if d is not None and d is not L:
                L.copy_(d)

    gi, gw, gb = _linear.chunked(h, W.detach(), None if bias is None else bias.detach(), step, rows, grads,
                                 acc, _ops(dev))
    return losses, weight_sum, saved, (gi, gw, gb)


def _empty(like, dtype=None):
    return like.new_empty(0, dtype=dtype)


@torch.library.custom_op("fastloss::linear_cross_entropy", mutates_args=())
def _forward(input: torch.Tensor, linear_weight: torch.Tensor, linear_bias: Optional[torch.Tensor],
             target: torch.Tensor, weight: Optional[torch.Tensor], reduction: str, ignore_index: int,
             label_smoothing: float, z_loss: float, rows: int, group: str, grads: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_input, grad_weight, grad_bias, saved): the gradients (with ``grads``, in
    the acc dtype) are those of the reduced loss; empty tensors stand for what is not there."""
    args = (reduction, ignore_index, label_smoothing, z_loss, rows, group)
    losses, weight_sum, saved, (gi, gw, gb) = _chunks(input, linear_weight, linear_bias, target, weight, args,
                                                      grads)
    loss = reduce(losses, reduction, weight_sum, input.dtype).reshape(target.shape if reduction == "none" else ())
    acc = acc_dtype(input.dtype)
    if not grads:
        gi, gw, gb = _empty(input, acc), _empty(input, acc), None
    elif reduction == "mean":  # nothing to average (weight sum 0): zero gradients, as PyTorch's
        scale = torch.where(weight_sum != 0, 1 / weight_sum, 0).to(acc)
        for g in (gi, gw, gb):
            if g is not None:
                g.mul_(scale)
    if saved is None or reduction != "none":
        saved = _empty(input, acc)
    return loss, gi.reshape(input.shape) if grads else gi, gw, _empty(input, acc) if gb is None else gb, saved


@_forward.register_fake
def _forward_fake(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
                  z_loss, rows, group, grads):
    acc = acc_dtype(input.dtype)
    loss = input.new_empty(target.shape if reduction == "none" else ())
    n_saved = target.numel() + 3 if group and reduction == "none" else 0
    if not grads:
        return loss, _empty(input, acc), _empty(input, acc), _empty(input, acc), input.new_empty(n_saved, dtype=acc)
    gb = _empty(input, acc) if linear_bias is None else linear_bias.new_empty(linear_bias.shape, dtype=acc)
    return (loss, input.new_empty(input.shape, dtype=acc), linear_weight.new_empty(linear_weight.shape, dtype=acc),
            gb, input.new_empty(n_saved, dtype=acc))


@torch.library.custom_op("fastloss::linear_cross_entropy_backward", mutates_args=())
def _backward(grad_output: torch.Tensor, input: torch.Tensor, linear_weight: torch.Tensor,
              linear_bias: Optional[torch.Tensor], target: torch.Tensor, weight: Optional[torch.Tensor],
              grad_input: torch.Tensor, grad_weight: torch.Tensor, grad_bias: torch.Tensor, saved: torch.Tensor,
              reduction: str, ignore_index: int, label_smoothing: float, z_loss: float, rows: int, group: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients to input, linear_weight, linear_bias (empty without one) of the loss times
    ``grad_output``: the forward's scaled (``"mean"``/``"sum"``), or recomputed (``"none"``)."""
    if reduction != "none":
        gi, gw, gb = (g * grad_output for g in (grad_input, grad_weight, grad_bias))
    else:
        args = (reduction, ignore_index, label_smoothing, z_loss, rows, group)
        gi, gw, gb = _chunks(input, linear_weight, linear_bias, target, weight, args, True,
                             grad_output.reshape(-1), saved)[3]
        gb = grad_bias.new_empty(0) if gb is None else gb
    if group:  # the input's gradient sums over every rank's classes
        dist.all_reduce(gi, dist.ReduceOp.SUM, group=_GROUPS[group])
    dtype = input.dtype
    return gi.to(dtype).reshape(input.shape), gw.to(dtype), gb.to(dtype)


@_backward.register_fake
def _backward_fake(grad_output, input, linear_weight, linear_bias, target, weight, grad_input, grad_weight,
                   grad_bias, saved, reduction, ignore_index, label_smoothing, z_loss, rows, group):
    gb = input.new_empty(0) if linear_bias is None else torch.empty_like(linear_bias)
    return torch.empty_like(input), torch.empty_like(linear_weight), gb


def _setup_context(ctx, inputs, output):
    input, linear_weight, linear_bias, target, weight, *args = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, *output[1:])
    ctx.args = args[:-1]  # without ``grads``
    ctx.has_bias = linear_bias is not None


def _autograd_backward(ctx, grad_loss, *_):
    if grad_loss is None:
        return (None,) * 12
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # the gradients come from fused kernels and have no graph: a second derivative would be 0
        raise RuntimeError(f"fastloss.torch: {_NAME} has no double backward (create_graph=True)")
    gi, gw, gb = _backward(grad_loss, *ctx.saved_tensors, *ctx.args)
    return (gi, gw, gb if ctx.has_bias else None) + (None,) * 9


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _group_name(group):
    if group is None:
        return ""
    _GROUPS[group.group_name] = group
    return group.group_name


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                         ignore_index=-100, label_smoothing=0.0, z_loss=0.0, chunk_size=None, group=None):
    """``F.cross_entropy(input @ linear_weight.T + linear_bias, target, weight=weight, ...)`` plus
    PaLM's ``z_loss * lse**2`` per row, and its gradients to ``input``, ``linear_weight`` and
    ``linear_bias``, without holding the N x V logits: rows go through in chunks of at most
    ``chunk_size`` (default: 64 MiB of logits in the input's dtype).

    ``input`` (..., H) (rows flattened, class axis last), ``linear_weight`` (V, H), ``target``
    int class indices of ``input.shape[:-1]`` (``"none"`` returns that shape). With ``group``,
    ``linear_weight``/``linear_bias`` hold this rank's rows of the classes, in the group's rank
    order; ``input``, ``target`` and ``weight`` (V,) are the same on every rank, and each gets
    the full loss, its shards' gradients and the full input gradient. See the module docstring.
    """
    if not all(isinstance(t, torch.Tensor) for t in (input, linear_weight, target)):
        raise TypeError(f"{_NAME}: input, linear_weight and target must be tensors")
    if not input.is_floating_point() or input.dim() < 1:
        raise TypeError(f"{_NAME}: input must be a float tensor (..., H), got {input.dtype} {tuple(input.shape)}")
    if linear_weight.dim() != 2 or linear_weight.shape[1] != input.shape[-1]:
        raise ValueError(f"{_NAME}: linear_weight must be (V, H) with H = {input.shape[-1]}, got "
                         f"{tuple(linear_weight.shape)}")
    for what, t, shape in (("linear_weight", linear_weight, linear_weight.shape),
                           ("linear_bias", linear_bias, linear_weight.shape[:1])):
        if t is not None and (t.dtype != input.dtype or t.device != input.device or t.shape != shape):
            raise ValueError(f"{_NAME}: {what} must be {input.dtype} {tuple(shape)} on {input.device}, got "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")
    if target.shape != input.shape[:-1] or target.is_floating_point() or target.device != input.device:
        raise ValueError(f"{_NAME}: target must hold class indices of shape {tuple(input.shape[:-1])} on "
                         f"{input.device}, got {target.dtype} {tuple(target.shape)} on {target.device}")
    for what, t in (("target", target), ("weight", weight)):
        if t is not None and t.requires_grad:
            raise ValueError(f"{_NAME}: gradients go to input, linear_weight and linear_bias only; {what} "
                             f"requires grad (detach it)")
    _linear.check_reduction(_NAME, reduction)
    check_options(_NAME, label_smoothing, z_loss)
    rows = _linear.chunk_rows(chunk_size, linear_weight.shape[0], input.element_size())
    grads = reduction != "none" and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    return _forward(input, linear_weight, linear_bias, target, weight, reduction, int(ignore_index),
                    float(label_smoothing), float(z_loss), rows, _group_name(group), grads)[0]
