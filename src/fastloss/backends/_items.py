"""The arithmetic item formulas of the elementwise losses, written once in plain Python and
compiled twice: inlined into Numba's CPU kernels (``_numba_math``/``numba_cpu``) and as CUDA
device functions (``cuda_kernels``).

Each takes an element ``x``, its target ``t`` and the loss's two parameters ``p0``, ``p1`` (unused
ones are ignored) and returns ``(loss, dloss/dx)``, in the precision the backend's ``like``
gives (``arithmetic``, ``with_math``). Sub-gradients are PyTorch's: slope 0 at a hinge's kink and
at ``x == t`` for mae. sigmoid_bce and kl_div are not here: each backend writes them over its own
vectorisable (CPU) or libdevice (CUDA) exp and log.

The newer items are written once too, in the precision of ``x`` (float32 math where the CPU
kernels take float32), over the target's math functions (``with_math``); and so is the row
formula of cosine_similarity once its sums are taken (``cosine_similarity``).
"""

import math

import numpy as np


def arithmetic(like):
    """(huber, hinge, mse, mae) as plain functions, each (x, t, p0, p1) -> (loss, dloss/dx) in
    the precision ``like(v, x)`` converts to (every constant goes through it, so no float64
    literal widens the arithmetic): the Numba CPU backend passes a float64 one, CUDA x's own
    precision (float32 for float32 and half inputs)."""

    def huber(x, t, delta, unused):
        """0.5 d**2 if |d| <= delta else delta (|d| - delta/2), d = x - t; gradient clip(d)."""
        d = like(x, x) - like(t, x)
        ad = abs(d)
        b = like(delta, x)
        half = like(0.5, x)
        loss = half * d * d if ad <= b else b * (ad - half * b)
        return loss, (b if d > b else (-b if d < -b else d))

    def hinge(x, t, margin, squared):
        """max(0, margin - y x), y = +1 if t > 0 else -1, squared if ``squared``; NaN stays NaN."""
        zero = like(0.0, x)
        y = like(1.0, x) if t > zero else like(-1.0, x)
        zz = like(margin, x) - y * like(x, x)
        h = zz if not zz <= zero else zero
        if squared:
            return h * h, like(-2.0, x) * h * y
        return h, (-y if zz > zero else zero)

    def mse(x, t, unused0, unused1):
        """(x - t)**2."""
        d = like(x, x) - like(t, x)
        return d * d, like(2.0, x) * d

    def mae(x, t, unused0, unused1):
        """|x - t|; gradient sign(x - t), 0 at 0, NaN for NaN."""
        d = like(x, x) - like(t, x)
        zero = like(0.0, x)
        one = like(1.0, x)
        return abs(d), (one if d > zero else (-one if d < zero else d * zero))

    return huber, hinge, mse, mae


_COS_CLAMP = 1e-12  # on the squared norm, as Keras' l2_normalize


def cosine_similarity(sx, st, s):
    """A row's (loss, nn, coef) from sx = sum x**2, st = sum t**2, s = sum x t (float64):
    loss = -s / nn, nn = nx nt, nv = sqrt(max(sv, 1e-12)); d loss / d x_c is then
    ``cosine_similarity_grad(x_c, t_c, nn, coef)`` with coef = loss / sx (0 where sx <= 1e-12).
    NaN anywhere gives NaN."""
    nx = math.sqrt(sx if not sx < _COS_CLAMP else _COS_CLAMP)  # NaN stays NaN
    nt = math.sqrt(st if not st < _COS_CLAMP else _COS_CLAMP)
    nn = nx * nt
    loss = -s / nn
    return loss, nn, (loss / sx if sx > _COS_CLAMP else 0.0)


def cosine_similarity_grad(x, t, nn, coef):
    """-t / nn - coef x, in float64 and in the reference's order: with C = 1 the two terms cancel
    exactly (the loss is +-1 whatever x), and another order leaves a rounding of t / nn."""
    return -(np.float64(t) / nn) - coef * np.float64(x)


_LN2 = 0.6931471805599453
_LOG_2PI = 1.8378770664093453
_MSLE_CLAMP = 1e-7  # Keras' epsilon


def with_math(exp, exp_nonpos, log, log1p_unit, tanh, power, like):
    """The newer items, written once over a target's math: (smooth_l1, log_cosh, msle,
    poisson_nll, sigmoid_focal) as plain functions, each (x, t, p0, p1) -> (loss, dloss/dx) in
    the precision of ``x``, for the caller to compile. The math, each in the precision of its
    argument: ``exp``; ``exp_nonpos`` (arguments <= 0 or NaN); ``log``; ``log1p_unit``
    (arguments in [sqrt(1/2) - 1, 1] or NaN); ``tanh``; ``power(m, g)`` (m >= 0 or NaN, g >= 0
    a finite float64; 0**0 = NaN**0 = 1); ``like(v, x)``: the float v in x's precision. The
    Numba CPU backend passes vectorisable float32 versions (``_numba_math``), CUDA libdevice's
    in x's precision (``cuda_kernels``)."""

    def smooth_l1(x, t, beta, unused):
        """0.5 d**2 / beta if |d| < beta else |d| - beta/2, d = x - t (beta = 0: |d|); gradient
        d / beta, or sign(d) (0 at 0, NaN for NaN)."""
        zero = like(0.0, x)
        one = like(1.0, x)
        half = like(0.5, x)
        b = like(beta, x)
        inv = like(1.0 / beta, x)  # hoisted out of the kernels' loops: a multiply per item
        d = x - t
        ad = abs(d)
        small = ad < b
        loss = half * d * d * inv if small else ad - half * b
        return loss, (d * inv if small else (one if d > zero else (-one if d < zero else d * zero)))

    def log_cosh(x, t, unused0, unused1):
        """log(cosh(d)), d = x - t, stable for any d: |d| + log1p(exp(-2|d|)) - log(2), or
        -log1p(-tanh(d)**2) / 2 below |d| = 0.5 (no cancellation there); gradient tanh(d)."""
        d = x - t
        a = abs(d)
        th = tanh(a)
        small = a < like(0.5, x)  # NaN: the big form's NaN
        # one log1p for both forms, of -th**2 (> -0.22) or of exp(-2|d|)
        lg = log1p_unit(-(th * th) if small else exp_nonpos(-(a + a)))
        loss = like(-0.5, x) * lg if small else a + lg - like(_LN2, x)
        return loss, (-th if d < like(0.0, x) else th)

    def msle(x, t, unused0, unused1):
        """d**2, d = log1p(max(x, 1e-7)) - log1p(max(t, 1e-7)) (NaN stays NaN); gradient
        2 d / (1 + x) where x >= 1e-7 (and NaN), 0 below (clamp's). d in one log, accurate to a
        few ulp even where x ~ t (two log1p's would leave an ulp of each): with u = 1 + xc,
        v = 1 + tc and their exact rounding errors ex, et, d = log1p(r) + ex / u - et / v,
        r = (u - v) / v (u - v exact where u / v is in [1/2, 2]), log1p(r) as log(w), w = 1 + r,
        plus (r - (w - 1)) / w; where u < v / 2, log(u / v)."""
        one = like(1.0, x)
        zero = like(0.0, x)
        c = like(_MSLE_CLAMP, x)
        below = x < c
        xc = c if below else x
        tc = c if t < c else t
        u = one + xc
        v = one + tc
        ru = one / u
        rv = one / v
        ex = xc - (u - one)
        et = tc - (v - one)
        far = u < like(0.5, x) * v
        r = (u - v) * rv
        w = u * rv if far else one + r
        corr = zero if far else (r - (w - one)) * (v * ru)  # 1 / w ~ v / u
        d = log(w) + (corr + (ex * ru - et * rv))
        inf = like(np.inf, x)
        if xc == inf or tc == inf:  # inf - inf: NaN, as the reference's
            d = (xc if xc == inf else zero) - (tc if tc == inf else zero)
        return d * d, (zero if below else (d + d) * ru)

    def poisson_nll(x, t, eps, mode):
        """mode = log_input + 2 full. log_input: exp(x) - t x, gradient exp(x) - t; else
        x - t log(x + eps), gradient 1 - t / (x + eps); full adds t log(t) - t + log(2 pi t) / 2
        where t > 1. The loss is put together in float64 (t x overflows float32 where the loss
        does not), rounded once."""
        if mode == 1 or mode == 3:
            ex = exp(x)
            loss = np.float64(ex) - np.float64(t) * np.float64(x)
            g = ex - t
        else:
            xe = like(np.float64(x) + eps, x)
            loss = np.float64(x) - np.float64(t) * np.float64(log(xe))
            g = like(1.0, x) - t / xe
        if mode >= 2:
            big = t > like(1.0, x)
            tt = np.float64(t if big else like(2.0, x))
            lt = np.float64(log(like(tt, x)))
            loss += tt * lt - tt + 0.5 * (_LOG_2PI + lt) if big else 0.0
        return like(loss, x), g

    def sigmoid_focal(x, t, alpha, gamma):
        """a_t (1 - p_t)**gamma bce(x, t), p = sigmoid(x), 1 - p_t = m = p (1-t) + (1-p) t,
        a_t = alpha t + (1-alpha)(1-t) (1 when alpha < 0); gradient
        a_t [(p - t) m**gamma + bce gamma m**gamma p (1-p) / m (1 - 2t)] (the p (1-p) / m term 0
        where m <= 0, as the reference's). With e = exp(-|x|):
        p, 1 - p = 1 / (1 + e), e / (1 + e) (in the order of x's sign: 1 - p exact where p
        rounds to 1); bce = log1p(e) + (1-t) max(x, 0) - t min(x, 0) (no cancellation), NaN at
        x = -inf as the formula's (1-t) x + inf."""
        one = like(1.0, x)
        zero = like(0.0, x)
        e = exp_nonpos(-abs(x))
        r = one / (one + e)
        pos = x >= zero
        p = r if pos else e * r
        q = e * r if pos else r
        ce = log1p_unit(e) + ((one - t) * x if pos else -(t * x))
        ce = like(np.nan, x) if x == like(-np.inf, x) else ce
        m = p * (one - t) + q * t
        mod = power(m, gamma)
        # m**gamma p q / m (0 where m <= 0): m p q for gamma = 2, without the division
        pq = p * q
        if gamma == 2.0:
            mr = m * pq if m > zero else zero
        else:
            mr = mod * (pq / m if m > zero else zero)
        a_t = like(alpha, x) * t + like(1.0 - alpha, x) * (one - t) if alpha >= 0.0 else one
        # ce last: in float32, ce * gamma may overflow where the product with mr = 0 is 0
        g = a_t * ((p - t) * mod + ce * (like(gamma, x) * mr * (one - (t + t))))
        return a_t * ce * mod, g

    return smooth_l1, log_cosh, msle, poisson_nll, sigmoid_focal
