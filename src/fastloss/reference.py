"""Float64, obviously-correct formulas of every loss: the spec the tests hold each backend to.

Written for clarity, not speed. For each loss, ``items(name, x, target, **options)`` returns

* ``loss``  -- each item's loss (one per row for row losses, one per element otherwise),
* ``grad``  -- d(item loss)/dx, same shape as ``x`` (item ``i`` only touches its own row/element),
* ``denom`` -- what ``reduction="mean"`` divides by (PyTorch's rule for that loss).

``loss(name, ...)`` and ``grad(name, ...)`` apply the reduction and ``grad_output``.
Sub-gradients at kinks follow PyTorch: ``max(0, z)`` has slope 0 at ``z == 0``, ``|d|`` has
slope 0 at ``d == 0``; Crammer-Singer's inner max goes to the first maximal class.
"""

import numpy as np

__all__ = ["items", "loss", "grad", "LOSSES"]


def _lse_softmax(x):
    """log(sum(exp(x))) and softmax(x) by max-subtraction, as PyTorch: a +inf logit gives NaN,
    all -inf gives lse = -inf. softmax is e / sum(e), so it stays exact when lse rounds."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, 0.0, m)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = np.exp(x - m)
        s = np.sum(e, axis=-1, keepdims=True)
        return (m + np.log(s))[..., 0], e / s


def _onehot(y, n_classes):
    return (np.arange(n_classes) == np.asarray(y)[..., None]).astype(np.float64)


def _times(a, b):
    """a * b with 0 * inf = 0 (a term whose target mass is zero contributes nothing), but
    0 * NaN = NaN (NaN in, NaN out)."""
    with np.errstate(invalid="ignore"):
        return np.where((a == 0) & ~np.isnan(b), 0.0, a * b)


def _softmax_xent(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0):
    n_rows, n_classes = x[..., 0].size, x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    lse, p = _lse_softmax(x)
    if target.ndim == x.ndim:  # probabilities
        t = (1 - label_smoothing) * target + label_smoothing / n_classes
        row_w = np.sum(w * t, axis=-1)
        loss = np.sum(_times(w * t, lse[..., None] - x), axis=-1) + _times(z_loss, row_w * lse**2)
        g = p * row_w[..., None] - w * t + (2 * z_loss * row_w * lse)[..., None] * p
        return loss, g, float(n_rows)
    y = target
    valid = y != ignore_index
    yc = np.where(valid, y, 0)
    onehot = _onehot(yc, n_classes)
    w_y = np.where(valid, w[yc], 0.0)
    eps = label_smoothing
    nll = lse - np.take_along_axis(x, yc[..., None], axis=-1)[..., 0]
    smooth = np.sum(_times(w, lse[..., None] - x), axis=-1)
    loss = (1 - eps) * w_y * nll + _times(eps / n_classes, np.where(valid, smooth, 0.0)) + _times(z_loss, w_y * lse**2)
    g = ((1 - eps) * w_y)[..., None] * (p - onehot)
    g = g + (eps / n_classes) * np.where(valid, 1.0, 0.0)[..., None] * (p * w.sum() - w)
    g = g + (2 * z_loss * w_y * lse)[..., None] * p
    loss = np.where(valid, loss, 0.0)
    g = np.where(valid[..., None], g, 0.0)
    return loss, g, float(np.sum(w_y))


def _multiclass_hinge(x, y, weight=None, margin=1.0, squared=False, mode="weston_watkins"):
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    w_y = w[y]
    s_y = np.take_along_axis(x, y[..., None], axis=-1)
    onehot = _onehot(y, n_classes).astype(bool)
    power = 2 if squared else 1
    if mode == "weston_watkins":
        z = np.where(onehot, -np.inf, margin - s_y + x)
        h = np.maximum(z, 0.0)
        loss = w_y * np.sum(h**power, axis=-1) / n_classes
        dz = np.where(z > 0, power * h ** (power - 1), 0.0) * (w_y / n_classes)[..., None]
        g = np.where(onehot, -np.sum(dz, axis=-1, keepdims=True), dz)
    else:  # crammer_singer
        others = np.where(onehot, -np.inf, x)
        j = np.argmax(others, axis=-1)
        z = margin + np.max(others, axis=-1) - s_y[..., 0] if n_classes > 1 else np.full(y.shape, -np.inf)
        h = np.maximum(z, 0.0)
        loss = w_y * h**power
        dz = np.where(z > 0, power * h ** (power - 1), 0.0) * w_y
        g = (_onehot(j, n_classes) - onehot) * dz[..., None]
    return loss, g, float(y.size)


def _sigmoid_bce(x, t, weight=None, pos_weight=None):
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    softplus_neg = np.logaddexp(0.0, -x)  # log(1 + exp(-x))
    lw = 1 + (pw - 1) * t
    loss = w * ((1 - t) * x + lw * softplus_neg)
    sig = 1 / (1 + np.exp(-x))
    g = w * (lw * sig - pw * t)
    return loss, g * np.ones_like(x), float(x.size)


def _huber(x, t, delta=1.0):
    d = x - t
    small = np.abs(d) <= delta
    loss = np.where(small, 0.5 * d**2, delta * (np.abs(d) - 0.5 * delta))
    return loss, np.clip(d, -delta, delta), float(x.size)


def _hinge(x, t, margin=1.0, squared=False):
    y = np.where(t > 0, 1.0, -1.0)
    z = margin - y * x
    h = np.maximum(z, 0.0)
    if squared:
        return h**2, -2 * h * y, float(x.size)
    return h, np.where(z > 0, -y, 0.0), float(x.size)


def _mse(x, t):
    return (x - t) ** 2, 2 * (x - t), float(x.size)


def _mae(x, t):
    return np.abs(x - t), np.sign(x - t), float(x.size)


def _kl_div(x, t, log_target=False):
    if log_target:
        return np.exp(t) * (t - x), -np.exp(t), float(x.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        # no target mass, no loss (even where x = -inf), but a NaN x stays NaN
        loss = np.where(t == 0, np.where(np.isnan(x), np.nan, 0.0), t * (np.log(t) - x))
    return loss, -t * np.ones_like(x), float(x.size)


def _smooth_l1(x, t, beta=1.0):
    d = x - t
    small = np.abs(d) < beta
    loss = np.where(small, 0.5 * d**2 / np.where(small, beta, 1.0), np.abs(d) - 0.5 * beta)
    return loss, np.where(small, d / np.where(small, beta, 1.0), np.sign(d)), float(x.size)


def _log_cosh(x, t):
    d = x - t
    a = np.abs(d)
    # cosh(a) = 1 + 2 sinh(a/2)**2: no cancellation near 0; from |d| = 20 on, e^-2|d| is below
    # float64's roundoff and log(cosh) = |d| - log(2) (no overflow; NaN stays NaN)
    small = a < 20
    loss = np.where(small, np.log1p(2 * np.sinh(np.where(small, a, 0) / 2) ** 2), a - np.log(2.0))
    return loss, np.tanh(d), float(x.size)


_MSLE_CLAMP = 1e-7  # Keras' epsilon


def _msle(x, t):
    lx = np.log1p(np.maximum(x, _MSLE_CLAMP))  # NaN stays NaN (np.maximum propagates it)
    d = lx - np.log1p(np.maximum(t, _MSLE_CLAMP))
    flows = ~(x < _MSLE_CLAMP)  # clamp(min=...)'s gradient: 1 where x >= the clamp (and NaN)
    return d**2, np.where(flows, 2 * d / (1 + x), 0.0), float(x.size)


def _poisson_nll(x, t, log_input=True, full=False, eps=1e-8):
    if log_input:
        loss, g = np.exp(x) - t * x, np.exp(x) - t
    else:
        loss, g = x - t * np.log(x + eps), 1 - t / (x + eps)
    if full:
        big = t > 1
        tt = np.where(big, t, 2.0)
        loss = loss + np.where(big, tt * np.log(tt) - tt + 0.5 * np.log(2 * np.pi * tt), 0.0)
    return loss, g, float(x.size)


def _sigmoid_focal(x, t, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    q = 1 / (1 + np.exp(x))  # 1 - p, exact where p rounds to 1
    ce = (1 - t) * x + np.logaddexp(0.0, -x)  # bce with logits
    m = p * (1 - t) + q * t  # 1 - p_t
    mod = m**gamma
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
    # d(m**gamma)/dx = gamma * m**(gamma - 1) * p*q*(1 - 2t), written with p*q/m (at most ~1/min(t, 1-t))
    r = np.where(m > 0, p * q / np.where(m > 0, m, 1.0), 0.0)
    g = a_t * ((p - t) * mod + ce * gamma * mod * r * (1 - 2 * t))
    return a_t * ce * mod, g, float(x.size)


_COS_CLAMP = 1e-12  # on the squared norm, as Keras' l2_normalize


def _cosine_similarity(x, t):
    sx, st = np.sum(x * x, axis=-1), np.sum(t * t, axis=-1)
    nx, nt = np.sqrt(np.maximum(sx, _COS_CLAMP)), np.sqrt(np.maximum(st, _COS_CLAMP))
    loss = -np.sum(x * t, axis=-1) / (nx * nt)
    g = -t / (nx * nt)[..., None] - np.where(sx > _COS_CLAMP, loss / sx, 0.0)[..., None] * x
    return loss, g, float(loss.size)


LOSSES = {
    "softmax_xent": _softmax_xent,
    "multiclass_hinge": _multiclass_hinge,
    "sigmoid_bce": _sigmoid_bce,
    "huber": _huber,
    "hinge": _hinge,
    "mse": _mse,
    "mae": _mae,
    "kl_div": _kl_div,
    "smooth_l1": _smooth_l1,
    "log_cosh": _log_cosh,
    "msle": _msle,
    "poisson_nll": _poisson_nll,
    "sigmoid_focal": _sigmoid_focal,
    "cosine_similarity": _cosine_similarity,
}


def items(name, x, target, **options):
    """Per-item losses, their gradients and the mean's denominator, all in float64."""
    x = np.asarray(x, np.float64)
    target = np.asarray(target)
    if target.dtype.kind not in "iu" or name not in ("softmax_xent", "multiclass_hinge"):
        target = target.astype(np.float64)  # float targets of any dtype (bfloat16 too)
    options = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return LOSSES[name](x, target, **options)


def loss(name, x, target, reduction="mean", **options):
    item_loss, _, denom = items(name, x, target, **options)
    if reduction == "none":
        return item_loss
    total = np.sum(item_loss)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        denom = float(np.shape(x)[0]) if np.ndim(x) else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total) / denom


def grad(name, x, target, reduction="mean", grad_output=1.0, **options):
    item_loss, item_grad, denom = items(name, x, target, **options)
    scale = np.asarray(grad_output, np.float64)
    if reduction == "batchmean":
        denom = float(np.shape(x)[0]) if np.ndim(x) else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction in ("mean", "batchmean"):
            scale = scale / denom
        if item_loss.ndim < item_grad.ndim and scale.ndim:  # row losses: one scale per row
            scale = scale[..., None]
        # a zero gradient stays zero, even over a zero denominator
        return np.where(item_grad == 0, 0.0, item_grad * scale)
