"""Fused linear + softmax cross-entropy: ``softmax_xent(h @ W.T + bias, y)`` and its gradients
without ever holding the N x V logits.

Rows go through in chunks. For rows ``s:e``: one GEMM writes the chunk's logits
``L = h[s:e] @ W.T + bias`` into one reused buffer, fastloss's fused kernel turns them into
d(loss)/dL in place, and the gradients follow from two more GEMMs::

    grad_h[s:e] = L @ W        grad_W += L.T @ h[s:e]        grad_bias += L.sum(0)

Peak extra memory: one chunk of logits (``CHUNK_BYTES`` by default) plus the gradients. The
loop (``chunked``) is written once, for NumPy here and for torch tensors in ``_torch_linear``.
"""

from typing import Callable, NamedTuple

import numpy as np

from . import _validation as v
from ._dispatch import run
from ._specs import SPECS

__all__ = ["linear_softmax_xent", "linear_softmax_xent_and_grad"]

CHUNK_BYTES = 64 << 20  # one chunk's logits, in the compute dtype (API.md)
_XENT = SPECS["softmax_xent"]
_REDUCTIONS = ("mean", "sum", "none")


class Ops(NamedTuple):
    """What ``chunked`` needs from an array library."""
    empty: Callable  # (shape, dtype) -> a buffer
    zeros: Callable  # (shape, dtype) -> zeros
    matmul: Callable  # matmul(a, b, out=c): c = a @ b, no temporary
    add_matmul: Callable  # (c, a, b): c += a @ b in c's dtype, without a temporary of c's size


def chunked(h, W, bias, step, rows, grads, acc, ops):
    """The loop: for each chunk ``s:e`` of ``rows`` rows, ``L = h[s:e] @ W.T + bias`` (one
    buffer, reused), then ``step(L, s, e)``, which (with ``grads``) leaves d(loss)/dL in ``L``;
    then ``grad_h[s:e] = L @ W``, ``grad_W += L.T @ h[s:e]``, ``grad_bias += L.sum(0)``, all in
    dtype ``acc``. Returns (grad_h, grad_W, grad_bias): None without ``grads`` (grad_bias None
    without a bias)."""
    n, n_classes = h.shape[0], W.shape[0]
    buf = ops.empty((min(rows, n), n_classes), h.dtype)
    gh = gw = gb = None
    if grads:
        gh, gw = ops.zeros(h.shape, acc), ops.zeros(W.shape, acc)
        gb = None if bias is None else ops.zeros(bias.shape, acc)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        L = buf[:e - s]
        ops.matmul(h[s:e], W.T, out=L)
        if bias is not None:
            L += bias
        step(L, s, e)
        if grads:
            gh[s:e] = L @ W
            ops.add_matmul(gw, L.T, h[s:e])
            if gb is not None:
                gb += L.sum(0, dtype=acc)
    return gh, gw, gb


def chunk_rows(chunk_size, n_classes, itemsize):
    """Rows per chunk: ``chunk_size``, or (None) as many as fit ``CHUNK_BYTES`` of logits."""
    if chunk_size is None:
        return max(1, CHUNK_BYTES // max(1, n_classes * itemsize))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return int(chunk_size)


def check_reduction(name, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def bad_label(name, shape, flat, value, n_classes, ignore_index):
    """The ValueError for ``target`` (of ``shape``) holding ``value`` at flat position ``flat``:
    fastloss's wording, with the position in the caller's target, not in a chunk."""
    where = f"[{', '.join(str(int(i)) for i in np.unravel_index(flat, shape))}]" if shape else ""
    return ValueError(f"{name}: target{where} = {value} is not a valid class index (must be in "
                      f"[0, {n_classes}) or equal ignore_index={ignore_index})")


def fused_rows(logits, labels, grads, grad_output, backend, options):
    """fastloss's softmax_xent on one chunk of logits (NumPy arrays, or device arrays with
    ``backend="cuda"``): the per-row losses; with ``grads`` d(loss)/dlogits written over
    ``logits`` (one pass, no second buffer), times ``grad_output`` per row when one is given
    (then the losses are not computed: None)."""
    if grad_output is not None:
        run(_XENT, "grad", logits, labels, "none", grad_output, backend, logits, options)
        return None
    if grads:
        return run(_XENT, "loss_and_grad", logits, labels, "none", 1.0, backend, logits, options)[0]
    return run(_XENT, "loss", logits, labels, "none", 1.0, backend, None, options)


def _add_matmul(c, a, b, block=4096):
    """c += a @ b through a (block x b.shape[1]) temporary: np.matmul cannot accumulate."""
    tmp = np.empty((min(block, c.shape[0]), c.shape[1]), c.dtype)
    for i in range(0, c.shape[0], block):
        t = tmp[:min(block, c.shape[0] - i)]
        np.matmul(a[i:i + block].astype(c.dtype, copy=False), b.astype(c.dtype, copy=False), out=t)
        c[i:i + block] += t


NUMPY_OPS = Ops(np.empty, np.zeros, np.matmul, _add_matmul)


def _label_weight_sum(labels, n_classes, options, dtype, shape, row0):
    """Sum of weight[y] over the rows of this chunk that are not ignored (their count without
    ``weight``): the mean's divisor. A bad label raises, naming its place in the whole target."""
    ignore_index = options.get("ignore_index", -100)
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise bad_label("linear_softmax_xent", shape, row0 + i, int(labels[i]), n_classes, ignore_index)
    weight = options.get("weight")
    if weight is None:
        return float(np.count_nonzero(valid))
    # as the kernel sees it: rounded to the logits' dtype first
    weight = np.asarray(weight).astype(dtype).astype(np.float64).reshape(-1)
    if weight.shape != (n_classes,):
        raise ValueError(f"linear_softmax_xent: weight must have shape ({n_classes},), got {weight.shape}")
    return float(weight[labels[valid]].sum())


def _linear(h, W, y, bias, reduction, chunk_size, backend, options, grads):
    check_reduction("linear_softmax_xent", reduction)
    h, W, y = np.asarray(h), np.asarray(W), np.asarray(y)
    dtype = np.result_type(v.compute_dtype(h, "h"), v.compute_dtype(W, "W"))
    if W.ndim != 2 or h.ndim < 1 or h.shape[-1] != W.shape[1]:
        raise ValueError(f"linear_softmax_xent: h must be (..., H) and W (V, H), got {h.shape} and {W.shape}")
    if y.shape != h.shape[:-1]:
        raise ValueError(f"linear_softmax_xent: y must have shape {h.shape[:-1]} (h's without H), got {y.shape}")
    if v.real_kind(y.dtype) not in "iu":
        raise TypeError(f"linear_softmax_xent: y must hold integer class indices, got dtype {y.dtype}")
    n_classes = W.shape[0]
    if bias is not None:
        if np.shape(bias) != (n_classes,):
            raise ValueError(f"linear_softmax_xent: bias must have shape ({n_classes},), got {np.shape(bias)}")
        bias = np.ascontiguousarray(bias, dtype)
    h2 = np.ascontiguousarray(h.reshape(-1, h.shape[-1]), dtype)
    W = np.ascontiguousarray(W, dtype)
    labels = v.int64_labels(_XENT, y, "y")
    acc = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)  # half: float32 sums
    losses = np.empty(labels.size, np.float64)
    denom = 0.0

    def step(L, s, e):
        nonlocal denom
        denom += _label_weight_sum(labels[s:e], n_classes, options, dtype, y.shape, s)
        losses[s:e] = fused_rows(L, labels[s:e], grads, None, backend, options)

    rows = chunk_rows(chunk_size, n_classes, dtype.itemsize)
    gh, gw, gb = chunked(h2, W, bias, step, rows, grads, acc, NUMPY_OPS)
    if reduction == "none":
        loss = losses.astype(dtype).reshape(y.shape)
    else:
        total = losses.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = dtype.type(total if reduction == "sum" else total / np.float64(denom))
    if not grads:
        return loss
    # the mean's gradient: nothing to average (denom 0) gives 0, as PyTorch's
    if reduction == "mean":
        scale = 1.0 / denom if denom else 0.0
        for g in (gh, gw, gb):
            if g is not None:
                g *= scale
    gh, gw, gb = ((g if g is None else g.astype(dtype, copy=False)) for g in (gh, gw, gb))
    return loss, (gh.reshape(h.shape), gw, gb)


def linear_softmax_xent(h, W, y, bias=None, *, reduction="mean", chunk_size=None, backend="auto", **options):
    """``softmax_xent(h @ W.T + bias, y, reduction=..., **options)`` without the N x V logits.

    ``h`` (..., H), ``W`` (V, H), ``y`` int labels of ``h.shape[:-1]``, ``bias`` (V,) or None;
    ``options`` are softmax_xent's (``weight``, ``ignore_index``, ``label_smoothing``,
    ``z_loss``). Rows go through in chunks of ``chunk_size`` rows (default: 64 MiB of logits).
    """
    return _linear(h, W, y, bias, reduction, chunk_size, backend, options, grads=False)


def linear_softmax_xent_and_grad(h, W, y, bias=None, *, reduction="mean", chunk_size=None, backend="auto",
                                 **options):
    """``(loss, (grad_h, grad_W, grad_bias))`` of ``softmax_xent(h @ W.T + bias, y, ...)``, one
    pass over chunks of rows: ``L = h_c @ W.T + bias``, ``dL`` by the fused kernel in place,
    ``grad_h_c = dL @ W``, ``grad_W += dL.T @ h_c``, ``grad_bias += sum(dL)`` (``grad_bias`` is
    None without a bias; ``grad_output=1``, all ones for ``"none"``). Peak extra memory: one
    chunk of logits plus the gradients. Arguments as ``linear_softmax_xent``.
    """
    return _linear(h, W, y, bias, reduction, chunk_size, backend, options, grads=True)
