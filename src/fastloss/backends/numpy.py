"""NumPy backend: the plain-NumPy baseline of every loss, what a good NumPy user would write.

Vectorised over whole arrays (no Python loop over rows), computed in the input dtype (float32
stays float32), with the usual numerically careful forms: log-sum-exp by max-subtraction, the
stable softplus ``max(-x, 0) + log1p(exp(-|x|))`` (what ``np.logaddexp(0, -x)`` computes), one
N x C working buffer per row loss (the gradient buffer when there is one, so ``grad=x``
overwrites the logits instead of allocating). The total is summed in float64
(``np.sum(..., dtype=np.float64)``: pairwise, deterministic).

The expressions follow ``fastloss.reference`` term by term, so special values land where the
reference puts them: ``-inf`` logits are masks (a term whose target mass is zero contributes 0,
never NaN), a NaN makes its row's (element's) loss NaN, ignored rows give loss 0 and gradient 0,
and sub-gradients at kinks are PyTorch's (slope 0 at ``max(0, 0)`` and ``|0|``).

Two guards keep float32 results equal to the float64 reference rounded to float32:

* float32 row losses (and ``sigmoid_bce`` with ``pos_weight``) whose inputs exceed 2**32 in
  magnitude run in float64 and round the results: ``lse**2``, ``lse - x`` and sums of hinge terms
  would overflow float32 where the reference's result is finite, and at such magnitudes the
  reference's own rounding of ``lse`` shows (see ``_log_norm``); so do ``poisson_nll`` with such
  inputs or targets and ``sigmoid_focal`` with such targets (products that overflow float32),
  and ``cosine_similarity`` runs every float32 batch through float64 blocks of rows (its two
  gradient terms cancel where x is parallel to t);
* a non-finite gradient scale (``grad_output`` over a zero ``"mean"`` denominator) keeps zero
  gradients zero, as the reference does, instead of making them ``0 * inf = NaN``.

``n_threads`` is accepted and ignored.
"""

import functools
import math

import numpy as np

from . import KERNEL_NAMES

__all__ = list(KERNEL_NAMES)

_BIG32 = 2.0**32  # float32 inputs beyond this magnitude are computed in float64 (see above)


# -- helpers -------------------------------------------------------------------------------------


def _too_big(x):
    """True for a float32 array holding a finite value beyond +-2**32 (NaN and +-inf ignored)."""
    if x.dtype != np.float32 or x.size == 0:
        return False
    flat = x.reshape(-1)
    if -_BIG32 <= np.fmin.reduce(flat) and np.fmax.reduce(flat) <= _BIG32:
        return False
    with np.errstate(invalid="ignore"):  # infinities (-inf masks) are no reason to leave float32
        return bool((((flat > _BIG32) | (flat < -_BIG32)) & np.isfinite(flat)).any())


def _rows(kernel):
    """A row loss's kernel that sees a non-empty batch of float32 values within +-2**32 (or
    float64): an empty batch sums to 0, larger float32 values run in float64 (_in_float64)."""

    @functools.wraps(kernel)
    def rows(x, target, *args):
        if x.shape[0] == 0:
            return 0.0
        if _too_big(x):
            *options, grad, gscale, gscale_arr, loss_out, _ = args
            return _in_float64(rows, x, (target, *options), grad, gscale, gscale_arr, loss_out)
        return kernel(x, target, *args)

    return rows


def _in_float64(kernel, x, args, grad, gscale, gscale_arr, loss_out):
    """Run ``kernel`` on float64 copies of ``x`` and the float ``args``; round the results back."""
    x64 = x.astype(np.float64)
    args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    loss64 = None if loss_out is None else np.empty(loss_out.shape, np.float64)
    total = kernel(x64, *args, None if grad is None else x64, gscale, gscale_arr, loss64, 1)
    with np.errstate(over="ignore"):
        if grad is not None:
            grad[...] = x64
        if loss_out is not None:
            loss_out[...] = loss64
    return total


def _scale(gscale, gscale_arr, dt):
    """The gradient's multiplier, split as (folded, post).

    ``folded`` (a scalar or one value per item, in the input dtype) is multiplied into the
    gradient as it is computed. When the multiplier is not finite somewhere, ``folded`` is 1 and
    ``post`` (float64) is applied afterwards by ``_post_scale``, which keeps zeros zero.
    """
    if gscale_arr is None:
        g = float(gscale)
        return (dt(g), None) if math.isfinite(g) else (dt(1.0), np.float64(g))
    r = gscale_arr * float(gscale)
    if np.isfinite(r).all():
        return r.astype(dt), None
    return dt(1.0), r


def _post_scale(g, post):
    """g *= post (per row of a 2-D g when post is per item), with 0 * anything = 0."""
    if post is None:
        return
    if np.ndim(post) == 1 and g.ndim == 2:
        post = post[:, None]
    with np.errstate(all="ignore"):
        g[...] = np.where(g == 0, 0.0, g * post)


def _col(a):
    """A per-row vector as a column for broadcasting over classes; scalars unchanged."""
    return a[:, None] if np.ndim(a) == 1 else a


def _finish(loss, loss_out):
    if loss_out is not None:
        loss_out[...] = loss
    return float(np.sum(loss, dtype=np.float64))


def _log_norm(m, s):
    """From the row max ``m`` and ``s = sum(exp(x - m))``: (lse, ls, pf) with ``lse = m + log(s)``,
    ``ls`` standing for ``lse - m`` in ``lse - x_j = ls - (x_j - m)``, and ``pf = 1/s`` (the
    softmax is ``exp(x - m) * pf``, exact even where ``lse`` rounds).

    float64 takes ``ls`` from the rounded ``lse``, as the reference's ``lse - x_j`` does (where
    ``log(s)`` is lost against a huge ``m``, both see ``lse == m``); float32 keeps ``log(s)``,
    whose rounding is relative to the row's spread, not to ``|lse|``.
    """
    log_s = np.log(s)
    lse = m + log_s
    return lse, (lse - m if s.dtype == np.float64 else log_s), 1 / s


def _row_max(x):
    """Per-row max with all--inf rows mapped to 0 (their lse is then log(0) = -inf, as PyTorch)."""
    m = x.max(axis=1)
    m[m == -np.inf] = 0
    return m


# -- row losses ----------------------------------------------------------------------------------


def label_weight_sum(labels, n_classes, ignore_index, has_ignore, weight):
    """(denominator of the mean, position of the first bad label or -1)."""
    labels, weight = labels.reshape(-1), _to_float32(weight)
    bad = (labels < 0) | (labels >= n_classes)
    valid = labels != ignore_index if has_ignore else None
    if valid is not None:
        bad &= valid
    if bad.any():
        return float("nan"), int(np.argmax(bad))
    if weight is None:
        return float(labels.size if valid is None else np.count_nonzero(valid)), -1
    if valid is None:
        return float(np.sum(weight[labels], dtype=np.float64)), -1
    w_y = np.where(valid, weight[np.where(valid, labels, 0)], 0)
    return float(np.sum(w_y, dtype=np.float64)), -1


@_rows
def softmax_xent(x, labels, weight, ignore_index, label_smoothing, z_loss,
                 grad, gscale, gscale_arr, loss_out, n_threads=1):
    """Cross-entropy with class-index targets (PyTorch ``cross_entropy``) + PaLM's z-loss."""
    n_rows, n_classes = x.shape
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        valid = labels != ignore_index
        all_valid = bool(valid.all())
        if n_classes == 0:  # every label is ignored (the dispatch layer checked)
            return _finish(np.zeros(n_rows, dt), loss_out)
        rows = np.arange(n_rows)
        y = labels if all_valid else np.where(valid, labels, 0)
        a = dt(1.0 - label_smoothing)  # the true class's share
        b = dt(label_smoothing / n_classes)  # each class's smoothed share
        zl = dt(z_loss)
        w_y = np.ones(n_rows, dt) if weight is None else weight[y]
        if not all_valid:
            w_y[~valid] = 0
        sh_y = x[rows, y]  # before grad (which may be x) is written

        m = _row_max(x)
        sh_y -= m
        e = np.subtract(x, m[:, None], out=grad)  # x - max, soon exp(x - max)
        if label_smoothing:
            if weight is None:
                w_sum, wx = dt(n_classes), e.sum(axis=1)
            else:
                w_sum = weight.sum(dtype=dt)
                we = e * weight
                if (weight == 0).any():
                    we[:, weight == 0] = 0  # zero weight times a -inf mask is 0
                wx = we.sum(axis=1)
                del we
        np.exp(e, out=e)
        lse, ls, pf = _log_norm(m, e.sum(axis=1))

        loss = a * w_y * (ls - sh_y)  # lse - x_y
        if label_smoothing:
            loss += b * (w_sum * ls - wx)  # b * sum_j w_j * (lse - x_j)
        if z_loss:
            loss += zl * (w_y * (lse * lse))
        if not all_valid:
            loss[~valid] = 0
        total = _finish(loss, loss_out)
        if grad is None:
            return total

        # d/dx = a*w_y*(p - onehot) + b*(p*sum(w) - w) + 2*z*w_y*lse*p,  p = e * pf:
        # one multiplier per row for j != y; the true class keeps (p_y - 1) apart, so that a
        # small z-loss or smoothing term is not lost to rounding against a*w_y (C == 1: p_y == 1)
        folded, post = _scale(gscale, gscale_arr, dt)
        extra = np.zeros(n_rows, dt) if not label_smoothing else np.full(n_rows, b * w_sum)
        if z_loss:
            extra += (2 * zl) * w_y * lse
        p_y = e[rows, y] * pf
        e *= _col((a * w_y + extra) * pf * folded)
        e[rows, y] = (a * w_y * (p_y - 1) + extra * p_y) * folded
        if label_smoothing:
            if weight is None:
                e -= _col(b * folded)
            else:
                e -= np.multiply.outer(folded, b * weight) if np.ndim(folded) else (b * weight) * folded
        if not all_valid:
            e[~valid] = 0
        _post_scale(e, post)
        return total


@_rows
def softmax_xent_probs(x, probs, weight, label_smoothing, z_loss,
                       grad, gscale, gscale_arr, loss_out, n_threads=1):
    """Cross-entropy with probability targets (optionally smoothed and class-weighted) + z-loss."""
    n_rows, n_classes = x.shape
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        if n_classes == 0:
            return _finish(np.zeros(n_rows, dt), loss_out)
        zl = dt(z_loss)
        t = probs  # the weighted target w * ((1 - eps) * probs + eps / C)
        if label_smoothing:
            t = dt(1.0 - label_smoothing) * probs + dt(label_smoothing / n_classes)
        if weight is not None:
            t = t * weight if t is probs else np.multiply(t, weight, out=t)
        row_w = t.sum(axis=1)

        m = _row_max(x)
        e = np.subtract(x, m[:, None], out=grad)
        tx = (t * e).sum(axis=1)  # sum_j t_j * (x_j - max)
        bad = ~np.isfinite(tx)
        if bad.any():  # masks (-inf) under zero target mass contribute 0, not 0 * inf = NaN
            tb, eb = t[bad], e[bad]
            tx[bad] = np.where((tb == 0) & (eb == eb), 0, tb * eb).sum(axis=1)
        np.exp(e, out=e)
        lse, ls, pf = _log_norm(m, e.sum(axis=1))

        loss = np.where((row_w == 0) & (ls == ls), 0, row_w * ls) - tx  # sum_j t_j * (lse - x_j)
        if z_loss:
            loss += zl * (row_w * (lse * lse))
        total = _finish(loss, loss_out)
        if grad is None:
            return total

        # d/dx = p * row_w - t + 2*z*row_w*lse*p,  p = e * pf
        folded, post = _scale(gscale, gscale_arr, dt)
        if z_loss:  # (p*row_w - t) + z-term, in that order: p*row_w may cancel t
            e *= _col(pf)
            zp = e * _col((2 * zl) * row_w * lse)
            e *= _col(row_w)
            e -= t
            e += zp
            del zp
            if not (np.ndim(folded) == 0 and folded == 1):
                e *= _col(folded)
        else:
            e *= _col(row_w * pf * folded)
            if np.ndim(folded) == 0 and folded == 1:
                e -= t
            elif t is probs:
                e -= t * _col(folded)
            else:
                t *= _col(folded)
                e -= t
        _post_scale(e, post)
        return total


@_rows
def multiclass_hinge(x, labels, weight, margin, squared, crammer_singer,
                     grad, gscale, gscale_arr, loss_out, n_threads=1):
    """Weston-Watkins (PyTorch ``multi_margin_loss``) or Crammer-Singer multiclass hinge."""
    n_rows, n_classes = x.shape
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        rows = np.arange(n_rows)
        y = labels
        w_y = np.ones(n_rows, dt) if weight is None else weight[y]
        s_y = x[rows, y]
        folded, post = _scale(gscale, gscale_arr, dt) if grad is not None else (None, None)

        if not crammer_singer:
            # z_j = margin - s_y + x_j for j != y; the true class contributes nothing
            h = np.add(x, (dt(margin) - s_y)[:, None], out=grad)
            h[rows, y] = 0
            np.maximum(h, 0, out=h)
            loss = w_y * (h * h if squared else h).sum(axis=1) / dt(n_classes)
            total = _finish(loss, loss_out)
            if grad is None:
                return total
            coef = w_y / dt(n_classes) * folded
            if squared:
                np.fmax(h, 0, out=h)  # NaN -> 0: no slope where z is NaN (z > 0 is False)
                h *= _col(2 * coef)
            else:
                np.multiply(h > 0, _col(coef), out=h)
            h[rows, y] = -h.sum(axis=1)
            _post_scale(h, post)
            return total

        # Crammer-Singer: z = margin + max_{j != y} x_j - s_y, gradient to the first maximal j
        if grad is None:
            others = x.copy()
        else:
            others = grad
            if others is not x:
                others[...] = x
        others[rows, y] = -np.inf
        j = others.argmax(axis=1)
        if n_classes > 1:
            z = dt(margin) + others[rows, j] - s_y
        else:
            z = np.full(n_rows, -np.inf, dt)
        h = np.maximum(z, 0)
        loss = w_y * (h * h if squared else h)
        total = _finish(loss, loss_out)
        if grad is None:
            return total
        dz = np.where(z > 0, 2 * h if squared else dt(1), dt(0)) * w_y * folded
        g = others
        g[...] = _col(dz * 0)  # (onehot_j - onehot_y) * dz: 0 * inf is NaN, as in the reference
        g[rows, y] = -dz
        g[rows, j] = dz  # after y: j == y only when dz == 0
        _post_scale(g, post)
        return total


# -- elementwise losses --------------------------------------------------------------------------
# Written with out= into a few reused buffers (the loss goes straight into loss_out when given):
# at these sizes fresh temporaries cost more than the arithmetic.


def binary_label_check(target, n_threads=1):
    """Position of the first hinge label not in {-1, 0, +1} (NaN passes: NaN in, NaN out), or -1.
    (One thread: NumPy's.)"""
    target = _to_float32(target)
    bad = (target != 1) & (target != -1) & (target != 0) & ~np.isnan(target)
    return int(np.argmax(bad)) if bad.any() else -1


def _loss_buffer(x, loss_out):
    return loss_out if loss_out is not None else np.empty_like(x)


def _scale_into(g, grad, folded, post):
    """grad = g * folded (then the zero-keeping post-scale); g may be grad itself."""
    if not (np.ndim(folded) == 0 and folded == 1) or g is not grad:
        np.multiply(g, folded, out=grad)
    _post_scale(grad, post)


def sigmoid_bce(x, target, weight, pos_weight, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """PyTorch ``binary_cross_entropy_with_logits``: w * ((1-t)*x + (1+(pw-1)*t)*softplus(-x)).

    With ``e = exp(-|x|)`` computed once: ``softplus(-x) = max(-x, 0) + log1p(e)`` (the same
    operations as ``np.logaddexp(0, -x)``) and ``sigmoid(x) = 1/(1+e)`` for ``x >= 0``,
    ``e/(1+e)`` below: no overflow for any logit.
    """
    if pos_weight is not None and _too_big(x):
        return _in_float64(sigmoid_bce, x, (target, weight, pos_weight), grad, gscale, gscale_arr, loss_out)
    t = target
    with np.errstate(all="ignore"):
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)  # exp(-|x|)
        loss = np.log1p(e, out=_loss_buffer(x, loss_out))
        tmp = np.negative(x)
        np.maximum(tmp, 0, out=tmp)
        loss += tmp  # softplus(-x)
        if pos_weight is not None:
            pw = np.resize(pos_weight, x.shape)  # element i uses pos_weight[i % P]
            lw = pw - 1
            lw *= t
            lw += 1  # 1 + (pw - 1) * t
            loss *= lw
        np.subtract(1, t, out=tmp)
        tmp *= x
        loss += tmp  # (1 - t) * x + lw * softplus(-x)
        if weight is not None:
            loss *= weight
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        negative = x < 0  # before grad (which may be x) is written
        sig = np.add(e, 1, out=tmp)
        np.reciprocal(sig, out=sig)  # 1 / (1 + e)
        e *= sig
        sig = np.where(negative, e, sig)
        del e, negative
        if pos_weight is None:
            g = np.subtract(sig, t, out=grad)
        else:
            sig *= lw
            g = np.multiply(pw, t, out=grad)
            np.subtract(sig, g, out=g)  # lw * sig - pw * t
        if weight is not None:
            g *= weight
        _scale_into(g, grad, *_scale(gscale, gscale_arr, x.dtype.type))
        return total


def huber(x, target, delta, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """0.5*d**2 if |d| <= delta else delta*(|d| - 0.5*delta), d = x - target.

    As ``c * (d - 0.5*c)`` with ``c = clip(d, -delta, delta)``, the gradient: the same roundings
    as the two-branch formula (``0.5*d`` and ``d - 0.5*d`` are exact), without a select.
    """
    dt = x.dtype.type
    delta_ = dt(delta)
    with np.errstate(all="ignore"):
        loss = np.subtract(x, target, out=_loss_buffer(x, loss_out))  # d, before grad is written
        c = np.clip(loss, -delta_, delta_, out=grad)
        half_c = c * dt(0.5)
        loss -= half_c
        loss *= c
        del half_c
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        _scale_into(c, grad, *_scale(gscale, gscale_arr, dt))
        return total


def hinge(x, target, margin, squared, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """max(0, margin - y*x) (squared if asked), y = +1 where target > 0 else -1."""
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        y = np.greater(target, 0).astype(dt)
        y *= 2
        y -= 1  # +1 / -1
        z = np.multiply(y, x)
        np.subtract(dt(margin), z, out=z)  # margin - y*x
        loss = _loss_buffer(x, loss_out)
        if squared:
            h = np.maximum(z, 0)
            np.square(h, out=loss)
        else:
            np.maximum(z, 0, out=loss)
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        if squared:
            g = np.multiply(h, dt(-2), out=h)
            g *= y  # -2 * h * y
        else:
            g = np.greater(z, 0, out=z)  # 1.0 / 0.0 in z's float buffer
            g *= y
            np.negative(g, out=g)  # -y where z > 0, else 0
        _scale_into(g, grad, *_scale(gscale, gscale_arr, dt))
        return total


def _of_difference(x, target, grad, gscale, gscale_arr, loss_out, item, slope, factor):
    """Sum of item(d = x - target); the gradient slope(d) * (factor * scale) over d (in grad).
    The factor joins the scale before d is touched: 2 * d alone could overflow."""
    with np.errstate(all="ignore"):
        d = np.subtract(x, target, out=grad)
        total = float(np.sum(item(d, out=_loss_buffer(x, loss_out)), dtype=np.float64))
        if grad is not None:
            folded, post = _scale(gscale, gscale_arr, x.dtype.type)
            _scale_into(slope(d), grad, factor * folded, post)
        return total


def mse(x, target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """(x - target)**2."""
    return _of_difference(x, target, grad, gscale, gscale_arr, loss_out, np.square,
                          lambda d: d, 2)


def mae(x, target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """|x - target| (slope 0 at 0, as PyTorch)."""
    return _of_difference(x, target, grad, gscale, gscale_arr, loss_out, np.abs,
                          lambda d: np.sign(d, out=d), 1)


def kl_div(x, target, log_target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """target * (log(target) - x) (0 where target == 0), or exp(target) * (target - x)."""
    t = target
    with np.errstate(all="ignore"):
        loss = _loss_buffer(x, loss_out)
        if log_target:
            p = np.exp(t)
            np.subtract(t, x, out=loss)
            loss *= p
        else:
            np.log(t, out=loss)
            loss -= x
            loss *= t
            empty = (t == 0) & (x == x)
            if empty.any():
                loss[empty] = 0  # no target mass, no loss (not 0 * inf = NaN); a NaN x stays NaN
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        folded, post = _scale(gscale, gscale_arr, x.dtype.type)
        np.multiply(p if log_target else t, -folded, out=grad)
        _post_scale(grad, post)
        return total


def smooth_l1(x, target, beta, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """PyTorch ``smooth_l1_loss``: 0.5*d**2/beta if |d| < beta else |d| - 0.5*beta, d = x - target;
    ``beta == 0`` is |d| (slope 0 at 0).

    Without a select, as ``huber``: with ``c = clip(d, -beta, beta)`` the loss is
    ``(|d| - 0.5*|c|) * (|c|/beta)`` (``0.5*d*(d/beta)`` inside, ``(|d| - 0.5*beta) * 1`` exactly
    outside, no overflow for any d) and the gradient ``c/beta`` (exactly +-1 outside).
    """
    dt = x.dtype.type
    beta_ = dt(beta)
    with np.errstate(all="ignore"):
        d = np.subtract(x, target)  # before grad (which may be x) is written
        loss = _loss_buffer(x, loss_out)
        if not beta:
            np.abs(d, out=loss)
            total = float(np.sum(loss, dtype=np.float64))
            if grad is None:
                return total
            g = np.sign(d, out=d)
        else:
            c = np.clip(d, -beta_, beta_)
            np.abs(d, out=d)
            ac = np.abs(c)
            np.multiply(ac, dt(0.5), out=loss)
            np.subtract(d, loss, out=d)  # |d| - 0.5*|c|
            ac /= beta_
            np.multiply(d, ac, out=loss)
            del ac
            total = float(np.sum(loss, dtype=np.float64))
            if grad is None:
                return total
            g = np.divide(c, beta_, out=c)
        _scale_into(g, grad, *_scale(gscale, gscale_arr, dt))
        return total


_LOG2 = math.log(2.0)


def log_cosh(x, target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """log(cosh(d)), d = x - target, computed without overflow for any d and without
    cancellation near 0: log1p(2*sinh(|d|/2)**2) (cosh(a) = 1 + 2*sinh(a/2)**2) below
    |d| = 20, where exp(-2|d|) is below float64's roundoff, and |d| - log(2) from there
    (the reference's |d| + log1p(exp(-2|d|)) - log(2), the same values, with the same NaN and
    infinities). Gradient tanh(d)."""
    dt = x.dtype.type
    with np.errstate(all="ignore"):
        d = np.subtract(x, target)
        a = np.abs(d)
        loss = _loss_buffer(x, loss_out)
        np.multiply(a, dt(0.5), out=loss)
        np.sinh(loss, out=loss)
        np.square(loss, out=loss)
        loss *= dt(2)
        np.log1p(loss, out=loss)  # +inf where sinh overflowed: replaced just below
        big = ~(a < dt(20))  # NaN goes here too: |d| - log(2) keeps it NaN
        if big.any():
            np.subtract(a, dt(_LOG2), out=loss, where=big)
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        g = np.tanh(d, out=d)
        _scale_into(g, grad, *_scale(gscale, gscale_arr, dt))
        return total


_MSLE_CLAMP = 1e-7  # Keras' epsilon


def msle(x, target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """Keras' mean squared logarithmic error: (log1p(max(x, 1e-7)) - log1p(max(target, 1e-7)))**2.
    The gradient 2*d/(1 + x) flows where x >= 1e-7 (and where x is NaN), as
    ``clamp(min=1e-7)``'s; it is 0 below. np.maximum keeps a NaN NaN."""
    dt = x.dtype.type
    clamp = dt(_MSLE_CLAMP)
    with np.errstate(all="ignore"):
        lt = np.maximum(target, clamp)
        np.log1p(lt, out=lt)
        d = np.maximum(x, clamp)
        np.log1p(d, out=d)
        d -= lt  # log1p(max(x, c)) - log1p(max(t, c))
        del lt
        total = float(np.sum(np.square(d, out=_loss_buffer(x, loss_out)), dtype=np.float64))
        if grad is None:
            return total
        below = x < clamp  # before grad (which may be x) is written
        den = np.add(x, dt(1))
        d *= dt(2)
        g = np.divide(d, den, out=d)
        g[below] = 0
        _scale_into(g, grad, *_scale(gscale, gscale_arr, dt))
        return total


def poisson_nll(x, target, log_input, full, eps, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """PyTorch ``poisson_nll_loss``: exp(x) - t*x (log_input), else x - t*log(x + eps); ``full``
    adds Stirling's t*log(t) - t + 0.5*log(2*pi*t) where t > 1.

    float32 inputs or targets beyond 2**32 in magnitude run in float64 (t*x would overflow
    float32 where the reference's loss is finite or +inf, and exp(x) - inf would be NaN)."""
    if _too_big(x) or _too_big(target):
        return _in_float64(poisson_nll, x, (target, log_input, full, eps), grad, gscale, gscale_arr, loss_out)
    dt = x.dtype.type
    t = target
    with np.errstate(all="ignore"):
        loss = _loss_buffer(x, loss_out)
        if log_input:
            e = np.exp(x)
            np.multiply(t, x, out=loss)
            np.subtract(e, loss, out=loss)  # exp(x) - t*x
        else:
            e = np.add(x, dt(eps))  # x + eps, kept for the gradient
            np.log(e, out=loss)
            loss *= t
            np.subtract(x, loss, out=loss)  # x - t*log(x + eps)
        if full:
            big = t > 1
            if big.any():
                tb = t[big]
                loss[big] += tb * np.log(tb) - tb + dt(0.5) * np.log(dt(2 * math.pi) * tb)
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        if log_input:
            g = np.subtract(e, t, out=e)  # exp(x) - t
        else:
            g = np.divide(t, e, out=e)
            np.subtract(dt(1), g, out=g)  # 1 - t/(x + eps)
        _scale_into(g, grad, *_scale(gscale, gscale_arr, dt))
        return total


def sigmoid_focal(x, target, alpha, gamma, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """torchvision's ``sigmoid_focal_loss``: alpha_t * bce(x, t) * (1 - p_t)**gamma,
    p = sigmoid(x), 1 - p_t = p*(1-t) + (1-p)*t, alpha_t = alpha*t + (1-alpha)*(1-t) (1 when
    alpha < 0).

    From ``e = exp(-|x|)`` once: p and q = 1 - p are 1/(1+e) and e/(1+e) (which is which by the
    sign of x: neither is computed as 1 minus the other), bce = (1-t)*x + softplus(-x) with
    softplus(-x) = max(-x, 0) + log1p(e). The gradient
    alpha_t * ((p - t)*m**gamma + gamma*m**gamma*(p*q/m)*(1 - 2t)*bce), m = 1 - p_t, is
    multiplied in that order (small factors first), so that a large bce does not overflow
    float32 where p*q/m is 0. float32 targets beyond 2**32 in magnitude (outside [0, 1] by far)
    run in float64: their products would overflow float32 where the reference's are finite.
    """
    if _too_big(target):
        return _in_float64(sigmoid_focal, x, (target, alpha, gamma), grad, gscale, gscale_arr, loss_out)
    dt = x.dtype.type
    t = target
    gamma_ = dt(gamma)
    with np.errstate(all="ignore"):
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)  # exp(-|x|)
        ce = np.log1p(e)
        one_t = np.negative(x)
        np.maximum(one_t, 0, out=one_t)
        ce += one_t  # softplus(-x)
        np.subtract(dt(1), t, out=one_t)
        ce += one_t * x  # (1 - t)*x + softplus(-x)
        s = np.add(e, dt(1))
        np.reciprocal(s, out=s)  # 1/(1+e)
        e *= s  # e/(1+e)
        positive = x >= 0
        p = np.where(positive, s, e)
        q = np.where(positive, e, s)
        del s, e, positive
        m = p * one_t
        m += q * t  # 1 - p_t
        mod = m ** gamma_ if gamma != 2 else np.square(m)
        loss = _loss_buffer(x, loss_out)
        if alpha >= 0:
            a_t = dt(alpha) * t
            a_t += dt(1 - alpha) * one_t
            np.multiply(a_t, ce, out=loss)
            loss *= mod
        else:
            a_t = None
            np.multiply(ce, mod, out=loss)
        total = float(np.sum(loss, dtype=np.float64))
        if grad is None:
            return total
        # r = p*q/m where m > 0, else 0
        r = np.multiply(p, q, out=q)
        r /= m
        positive_m = m > 0
        if not positive_m.all():
            r[~positive_m] = 0
        del positive_m
        r *= mod
        one_t -= t
        one_t *= gamma_  # gamma*(1 - 2t)
        r *= one_t
        r *= ce  # gamma*m**gamma*(p*q/m)*(1 - 2t)*bce
        p -= t
        p *= mod
        p += r  # (p - t)*m**gamma + ...
        if a_t is not None:
            p *= a_t
        _scale_into(p, grad, *_scale(gscale, gscale_arr, dt))
        return total


_COS_CLAMP = 1e-12  # on the squared norm, as Keras' l2_normalize


_COS_BLOCK = 1 << 18  # elements per float64 block of a float32 batch


@_rows
def cosine_similarity(x, target, grad, gscale, gscale_arr, loss_out, n_threads=1):
    """Keras' ``CosineSimilarity`` loss per row: -sum(x*t) / (|x| |t|), each norm
    sqrt(max(sum(v**2), 1e-12)). Gradient -t/(|x| |t|) - (loss/sum(x**2)) * x, the second term
    0 where sum(x**2) <= 1e-12 (the clamp holds the norm there).

    The two gradient terms cancel where x is nearly parallel to t (exactly, in theory, for one
    class), so float32 batches run through float64 blocks of rows (``_in_float64`` on about
    2**18 elements at a time), each result rounded once: float32 arithmetic would leave the
    terms' roundings (relative to 1/|x|, not to the gradient) in what should cancel.
    """
    if x.dtype == np.float64:
        return _cosine_similarity64(x, target, grad, gscale, gscale_arr, loss_out)
    n_rows, n_classes = x.shape
    step = max(1, _COS_BLOCK // max(1, n_classes))
    total = 0.0
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        total += _in_float64(
            lambda x, t, grad, gscale, gscale_arr, loss_out, _: _cosine_similarity64(
                x, t, grad, gscale, gscale_arr, loss_out),
            x[rows], (target[rows],), None if grad is None else grad[rows], gscale,
            None if gscale_arr is None else gscale_arr[rows], None if loss_out is None else loss_out[rows])
    return total


def _cosine_similarity64(x, t, grad, gscale, gscale_arr, loss_out):
    """cosine_similarity on float64 rows, in the reference's order of operations (for one class,
    the same roundings), the gradient's scale applied last: one N x C scratch buffer (the three
    row sums, then the second gradient term), whether or not the gradient overwrites x."""
    clamp = _COS_CLAMP
    with np.errstate(all="ignore"):
        buf = np.empty_like(x)
        sx = np.multiply(x, x, out=buf).sum(axis=1)
        st = np.multiply(t, t, out=buf).sum(axis=1)
        sxt = np.multiply(x, t, out=buf).sum(axis=1)
        norms = np.sqrt(np.maximum(sx, clamp))
        norms *= np.sqrt(np.maximum(st, clamp))  # |x| |t|
        loss = np.divide(sxt, norms)
        np.negative(loss, out=loss)
        total = _finish(loss, loss_out)
        if grad is None:
            return total
        c2 = np.divide(loss, sx)
        c2[~(sx > clamp)] = 0
        np.multiply(x, _col(c2), out=buf)  # before grad (which may be x) is written
        np.divide(t, _col(-norms), out=grad)
        grad -= buf
        del buf
        # the scale last, as the reference applies it: where the terms cancel, the scaled
        # result is the reference's to the last bit
        folded, post = _scale(gscale, gscale_arr, np.float64)
        _scale_into(grad, grad, _col(folded), post)
        return total


# -- half precision: computed in float32, as a NumPy user would --------------------------------

_HALF = (np.dtype(np.float16), np.dtype(np.uint16))  # float16, and bfloat16 as its bits


def _to_float32(a):
    """A half array (float16, or bfloat16 bits) as float32 (exact); anything else unchanged."""
    if not isinstance(a, np.ndarray) or a.dtype not in _HALF:
        return a
    if a.dtype == np.float16:
        return a.astype(np.float32)
    return (a.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is float32's upper half


def _store_half(dst, f32):
    """dst[...] = f32 rounded to dst's half type: nearest-even, beyond the range +-inf, NaN quiet."""
    if dst.dtype == np.float16:
        with np.errstate(over="ignore"):
            dst[...] = f32
        return
    b = f32.view(np.uint32)
    r = (b + (0x7FFF + ((b >> 16) & 1))) >> 16  # to nearest, ties to even (wraps only for -NaN)
    nan = f32 != f32
    r[nan] = (b[nan] >> 16) | 0x40
    dst[...] = r


def _in_float32(kernel):
    """A loss kernel that takes half arrays: the inputs converted to float32 copies, the float32
    kernel run, grad and loss_out rounded back (x's dtype says whether the call is half)."""

    @functools.wraps(kernel)
    def run(x, *args):
        if x.dtype not in _HALF:
            return kernel(x, *args)
        *inputs, grad, gscale, gscale_arr, loss_out, n_threads = args
        g32 = None if grad is None else np.empty(grad.shape, np.float32)
        l32 = None if loss_out is None else np.empty(loss_out.shape, np.float32)
        total = kernel(_to_float32(x), *map(_to_float32, inputs), g32, gscale, gscale_arr, l32, n_threads)
        for dst, src in ((grad, g32), (loss_out, l32)):
            if dst is not None:
                _store_half(dst, src)
        return total

    return run


for _name in KERNEL_NAMES:
    if _name not in ("label_weight_sum", "binary_label_check"):
        globals()[_name] = _in_float32(globals()[_name])
