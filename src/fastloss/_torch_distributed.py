"""Vocabulary-parallel cross-entropy over ``torch.distributed`` (``fastloss.torch.distributed``).

Rank r holds ``logits[:, off_r : off_r + V_r]``, a contiguous slice of the V classes; every rank
gets the loss of ``F.cross_entropy`` on the concatenated logits and the gradient of its slice.
Per row, with ``m`` the row's maximum over all ranks, ``S = sum_c exp(x_c - m)``,
``lse = m + log S``, ``w`` the class weights (ones without ``weight``), ``W = sum_c w_c``::

    loss = (1-eps) w_y (lse - x_y) + eps/V sum_c w_c (lse - x_c) + z w_y lse**2      (0 if ignored)
    dloss/dx_c = p_c [(1-eps) w_y + eps W/V + 2 z w_y lse] - (1-eps) w_y [c = y] - eps/V w_c,
    p_c = exp(x_c - lse)

Label smoothing is over the whole vocabulary (not Megatron's per-shard approximation).
Communication, forward only: one all-reduce MAX of ``[row maxima, V_r at position r]`` (so the
shard sizes, V and the offsets ride along: a change of split needs nothing special) and one
all-reduce SUM of ``[S_r, x_y - m, sum_c w_c (x_c - m)]`` per row, packed in one tensor. The
backward scales the gradient the forward kept: no communication. Labels are the same on every
rank, so each rank checks them alike right after the MAX (which brings V): a bad label raises the
same ValueError everywhere, before the SUM, and no rank is left waiting; on CUDA tensors the
device rule holds instead (that row's loss and gradient are NaN).

fastloss's fused kernels normalise over the classes they are given, so they cannot produce a
shard's part of a global softmax; this module uses torch ops (each a pass over the shard, in
float32 for half logits) and is where correctness, not speed, was the aim.
"""

from typing import NamedTuple

import torch
import torch.distributed as dist

from ._linear import bad_label, check_reduction

__all__ = ["vocab_parallel_cross_entropy"]


def acc_dtype(dtype):
    """What rows and gradients of ``dtype`` logits are computed in: float32, or float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_options(name, label_smoothing, z_loss):
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if not z_loss >= 0.0:
        raise ValueError(f"{name}: z_loss must be >= 0, got {z_loss!r}")


def label_weights(labels, n_classes, weight, ignore_index, acc, name, shape, row0=0):
    """``weight[y]`` per row in ``acc`` (1 without ``weight``, 0 where ``y == ignore_index``).
    A label outside [0, n_classes): ValueError on the CPU, naming its place in the caller's
    ``target`` of ``shape`` (``labels`` are its rows from ``row0``); NaN on a device."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= n_classes))
    if labels.is_cpu and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise bad_label(name, shape, row0 + i, int(labels[i]), n_classes, ignore_index)
    if weight is None:
        w = valid.to(acc)
    else:
        if weight.shape != (n_classes,):
            raise ValueError(f"{name}: weight must have shape ({n_classes},), got {tuple(weight.shape)}")
        w = torch.where(valid, weight[labels.clamp(0, n_classes - 1)], 0)
    return torch.where(bad, torch.nan, w)


class Split(NamedTuple):
    """Where this rank's classes lie: ``[offset, offset + size)`` of ``n_classes``."""
    offset: int
    size: int
    n_classes: int


class _Targets(NamedTuple):
    valid: torch.Tensor  # rows not ignored
    w_y: torch.Tensor  # weight[y] (0 ignored, NaN bad on a device)
    col: torch.Tensor  # y's column in this shard (clamped into it)
    owned: torch.Tensor  # rows whose y is in this shard
    w_local: torch.Tensor  # this shard's class weights
    w_sum: torch.Tensor  # sum of all class weights (W)


def _targets(labels, split, weight, ignore_index, acc, where):
    name, shape, row0 = where
    w_y = label_weights(labels, split.n_classes, weight, ignore_index, acc, name, shape, row0)
    valid = labels != ignore_index
    col = labels - split.offset
    owned = valid & (col >= 0) & (col < split.size)
    if weight is None:
        w_local = torch.ones(split.size, dtype=acc, device=labels.device)
        w_sum = torch.tensor(float(split.n_classes), dtype=acc, device=labels.device)
    else:
        w_local, w_sum = weight[split.offset:split.offset + split.size], weight.sum()
    return _Targets(valid, w_y, col.clamp(0, max(split.size - 1, 0)), owned, w_local, w_sum)


def _gradient(e, s, lse, t, split, opts, scale):
    """``e = exp(x - m)`` (m: the row max, with ``s`` the rows' sum of exp; or m = lse, s = 1)
    becomes ``scale * dloss/dx`` in place (``scale``: a number, or one per row)."""
    _, eps, z = opts
    r = torch.where(t.valid, torch.as_tensor(scale, dtype=e.dtype, device=e.device), 0)
    coef = ((1 - eps) * t.w_y + eps / split.n_classes * t.w_sum + 2 * z * t.w_y * lse) * r / s
    e.mul_(coef[:, None])
    if split.size:
        if eps:
            e.addr_(r, t.w_local, alpha=-eps / split.n_classes)  # rank-1 update: no N x V_r temporary
        e.scatter_add_(1, t.col[:, None], torch.where(t.owned, -(1 - eps) * t.w_y * r, 0)[:, None])
    return e


class Rows(NamedTuple):
    loss: torch.Tensor  # per row, in the acc dtype
    grad: object  # d(scale * loss)/dlogits in the acc dtype (``out`` when given), or None
    lse: torch.Tensor  # per row: what a backward that recomputes needs, with ``split``
    split: Split
    weight_sum: torch.Tensor  # sum of w_y: the mean's divisor


def shard_rows(logits, labels, weight, opts, group, *, grads, where, mean=False, out=None):
    """The rows' losses (and, with ``grads``, the gradient of this rank's slice) of
    cross-entropy over every rank's classes; the two all-reduces of the module docstring.

    ``logits`` (n, V_r) and ``labels`` (n,) global class indices; ``weight`` the full (V,)
    class weights in the acc dtype, or None; ``opts`` (ignore_index, label_smoothing, z_loss).
    The gradient is that of the rows' sum, or with ``mean`` of their weighted mean (divided by
    the sum of w_y), computed in ``out`` when given (the acc dtype; it may be ``logits``).
    ``where`` (name, target shape, first row) places a bad label in the caller's target.
    """
    n, size = logits.shape
    acc = acc_dtype(logits.dtype)
    ignore_index, eps, z = opts
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    packed = torch.zeros(n + world, dtype=acc, device=logits.device)
    packed[:n] = logits.amax(1) if size else -torch.inf
    packed[n + rank] = size
    dist.all_reduce(packed, dist.ReduceOp.MAX, group=group)
    m, sizes = packed[:n], [int(k) for k in packed[n:].tolist()]
    split = Split(sum(sizes[:rank]), size, sum(sizes))
    t = _targets(labels, split, weight, ignore_index, acc, where)

    # in the frame of m: x_y - m and sum_c w_c (x_c - m) are read before exp overwrites e
    e = torch.sub(logits, m[:, None], out=out)  # half logits: a float32 result
    sums = torch.zeros(3, n, dtype=acc, device=logits.device)
    if size:
        sums[1] = torch.where(t.owned, e.gather(1, t.col[:, None])[:, 0], 0)
        if eps:
            torch.mv(e, t.w_local, out=sums[2])
    e.exp_()
    torch.sum(e, 1, out=sums[0])
    dist.all_reduce(sums, dist.ReduceOp.SUM, group=group)
    s, x_y, smooth = sums
    log_s = s.log()
    lse = m + log_s
    loss = (1 - eps) * t.w_y * (log_s - x_y) + z * t.w_y * lse**2
    if eps:
        loss += eps / split.n_classes * (t.w_sum * log_s - smooth)
    loss = torch.where(t.valid, loss, 0)
    weight_sum = t.w_y.sum(dtype=torch.float64)
    grad = None
    if grads:
        scale = torch.where(weight_sum != 0, 1 / weight_sum, 0) if mean else 1.0  # nothing to average: 0
        grad = _gradient(e, s, lse, t, split, opts, scale)
    return Rows(loss, grad, lse, split, weight_sum)


def shard_grad(logits, labels, weight, opts, lse, split, scale, out=None):
    """The gradient ``shard_rows`` gives, recomputed from the rows' ``lse`` and ``split`` it
    returned (no communication), times ``scale`` per row; in ``out`` when given."""
    e = torch.sub(logits, lse[:, None], out=out)
    t = _targets(labels, split, weight, opts[0], e.dtype, ("", (), 0))
    return _gradient(e.exp_(), 1.0, lse, t, split, opts, scale)


def reduce(loss, reduction, weight_sum, dtype):
    """Per-row losses (acc dtype) reduced as F.cross_entropy: the mean divides by sum w_y."""
    if reduction == "none":
        return loss.to(dtype)
    total = loss.sum(dtype=torch.float64)
    return (total if reduction == "sum" else total / weight_sum).to(dtype)


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, reduction, opts, group):
        rows = shard_rows(logits.detach(), target, weight, opts, group, grads=ctx.needs_input_grad[0],
                          mean=reduction == "mean", where=("vocab_parallel_cross_entropy", tuple(target.shape), 0))
        # half logits: the gradient stays float32 until the backward has scaled it (one rounding)
        ctx.save_for_backward(rows.grad)
        ctx.per_row, ctx.dtype = reduction == "none", logits.dtype
        return reduce(rows.loss, reduction, rows.weight_sum, logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad, = ctx.saved_tensors
        g = grad_loss[:, None] if ctx.per_row else grad_loss
        return (grad * g).to(ctx.dtype), None, None, None, None, None


def vocab_parallel_cross_entropy(logits, target, *, group=None, weight=None, reduction="mean", ignore_index=-100,
                                 label_smoothing=0.0, z_loss=0.0):
    """``F.cross_entropy`` (plus PaLM's ``z_loss``) of the classes of every rank in ``group``.

    ``logits`` (N, V_r): this rank's contiguous slice of the V classes, slices in the group's
    rank order (sizes may differ); ``target`` (N,) global class indices and ``weight`` (V,),
    the same on every rank. Returns the full loss on every rank; backward gives this rank's
    slice of the gradient. ``group=None`` is the default group. See the module docstring.
    """
    name = "vocab_parallel_cross_entropy"
    check_reduction(name, reduction)
    check_options(name, label_smoothing, z_loss)
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be a float (N, V_r) tensor, got {logits.dtype} {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] or target.is_floating_point():
        raise ValueError(f"{name}: target must hold (N,) = {tuple(logits.shape[:1])} class indices, "
                         f"got {target.dtype} {tuple(target.shape)}")
    for what, t in (("target", target), ("weight", weight)):
        if t is not None and t.requires_grad:
            raise ValueError(f"{name}: gradients go to logits only; {what} requires grad (detach it)")
    acc = acc_dtype(logits.dtype)
    if weight is not None:  # as fastloss's kernels take it: rounded to the logits' dtype first
        weight = weight.to(logits.device, logits.dtype).to(acc)
    opts = (int(ignore_index), float(label_smoothing), float(z_loss))
    return _VocabParallel.apply(logits, target.to(logits.device, torch.int64), weight, reduction, opts, group)
