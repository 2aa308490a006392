# cython: language_level=3
"""fastloss scalar loss formulas, for ``cimport`` by other Cython extensions.

    from fastloss.formulas cimport huber_item, log1pexp, sigmoid

Every function is ``cdef inline ... noexcept nogil`` and works in float64; item formulas return
the item's loss and store d(loss)/dx through ``g``. They follow ``fastloss.reference`` exactly,
including its kinks (PyTorch sub-gradients: slope 0 for max(0, z) at z == 0, sign(0) = 0) and
its NaN propagation (NaN in, NaN loss out). fastloss's own kernels (``kernels/*.pxi``) use these
very functions, so there is one copy of each formula.
"""

from libc.math cimport exp, log, log1p, fabs


# ---- stable helpers ---------------------------------------------------------------------------

cdef inline double log1pexp(double x) noexcept nogil:
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)).
    x = +inf -> inf, x = -inf -> 0, NaN -> NaN."""
    if x > 0:
        return x + log1p(exp(-x))
    return log1p(exp(x))


cdef inline double sigmoid(double x) noexcept nogil:
    """1 / (1 + exp(-x)): exp overflows to inf for x < -709, giving the exact limit 0."""
    return 1.0 / (1.0 + exp(-x))


cdef inline double relu_keep_nan(double z) noexcept nogil:
    """max(z, 0) that propagates NaN (as np.maximum does)."""
    return 0.0 if z <= 0 else z


# ---- elementwise losses -----------------------------------------------------------------------

cdef inline double sigmoid_bce_item(double x, double t, double w, double pw, double* g) noexcept nogil:
    """w * ((1 - t) x + (1 + (pw - 1) t) log(1 + exp(-x)));  g = w ((1 + (pw-1) t) sigmoid(x) - pw t)."""
    cdef double lw = 1.0 + (pw - 1.0) * t
    g[0] = w * (lw * sigmoid(x) - pw * t)
    return w * ((1.0 - t) * x + lw * log1pexp(-x))


cdef inline double huber_item(double d, double delta, double* g) noexcept nogil:
    """0.5 d^2 if |d| <= delta else delta (|d| - delta/2);  g = clip(d, -delta, delta) (NaN kept)."""
    cdef double ad = fabs(d)
    g[0] = -delta if d < -delta else (delta if d > delta else d)
    if ad <= delta:
        return 0.5 * d * d
    return delta * (ad - 0.5 * delta)


cdef inline double hinge_item(double x, double t, double margin, bint squared, double* g) noexcept nogil:
    """y = +1 if t > 0 else -1; h = max(0, margin - y x); h or h^2."""
    cdef double y = 1.0 if t > 0 else -1.0
    cdef double z = margin - y * x
    cdef double h = relu_keep_nan(z)
    if squared:
        g[0] = -2.0 * h * y
        return h * h
    g[0] = -y if z > 0 else 0.0
    return h


cdef inline double mse_item(double d, double* g) noexcept nogil:
    g[0] = 2.0 * d
    return d * d


cdef inline double mae_item(double d, double* g) noexcept nogil:
    """|d|, sign(d) with sign(0) = 0 and sign(NaN) = NaN."""
    g[0] = 1.0 if d > 0 else (-1.0 if d < 0 else d)
    return fabs(d)


cdef inline double kl_div_item(double x, double t, bint log_target, double* g) noexcept nogil:
    """t (log t - x) (0 where t == 0, NaN there for a NaN x), or exp(t) (t - x) with log_target;
    g = -t or -exp(t)."""
    cdef double et
    if log_target:
        et = exp(t)
        g[0] = -et
        return et * (t - x)
    g[0] = -t
    if t == 0:
        return 0.0 if x == x else x
    return t * (log(t) - x)


# ---- row losses: the scalar parts of a row -----------------------------------------------------

cdef inline double softmax_xent_loss(double lse, double x_y, double w_y, double eps, double inv_c,
                                     double w_sum, double wx_sum, double z) noexcept nogil:
    """(1-eps) w_y (lse - x_y) + eps/C (W lse - sum_c w_c x_c) + z w_y lse^2  (sparse label y;
    W = sum_c w_c; the smoothing and z terms are left out when eps or z is 0, so -inf logits
    cost nothing unless smoothing puts mass on them)."""
    cdef double loss = (1.0 - eps) * w_y * (lse - x_y)
    if eps != 0:
        loss += eps * inv_c * (w_sum * lse - wx_sum)
    if z != 0:
        loss += z * w_y * lse * lse
    return loss


cdef inline double softmax_xent_coef(double lse, double w_y, double eps, double inv_c,
                                     double w_sum, double z) noexcept nogil:
    """A in grad_j = p_j A - (1-eps) w_y [j == y] - eps w_j / C."""
    cdef double a = (1.0 - eps) * w_y + eps * w_sum * inv_c
    if z != 0:
        a += 2.0 * z * w_y * lse
    return a


cdef inline double softmax_xent_grad_y(double e_y, double s, double lse, double w_y, double eps,
                                       double inv_c, double w_sum, double z) noexcept nogil:
    """grad_y / scale = p_y A - (1-eps) w_y - eps w_y / C (A as softmax_xent_coef, p_y = e_y / s),
    arranged so that nothing cancels: (1-eps) w_y (p_y - 1) + eps/C (W p_y - w_y) + 2 z w_y lse p_y,
    with p_y - 1 = (e_y - s) / s (exactly 0 for a row whose other classes have no mass)."""
    cdef double inv_s = 1.0 / s
    cdef double p_y = e_y * inv_s
    cdef double g = (1.0 - eps) * w_y * ((e_y - s) * inv_s)
    if eps != 0:
        g += eps * inv_c * (w_sum * p_y - w_y)
    if z != 0:
        g += 2.0 * z * w_y * lse * p_y
    return g


cdef inline double softmax_xent_probs_loss(double lse, double r, double tx_sum, double z) noexcept nogil:
    """sum_c a_c (lse - x_c) + z r lse^2 with a_c = w_c t'_c, r = sum_c a_c, tx_sum = sum a_c x_c
    (terms with a_c == 0 left out)."""
    cdef double loss = r * lse - tx_sum
    if z != 0:
        loss += z * r * lse * lse
    return loss


cdef inline double hinge_power_grad(double z, double h, bint squared) noexcept nogil:
    """d/dz of max(0, z)^p: 0 at z <= 0 (and NaN), 1 or 2h above."""
    if z > 0:
        return 2.0 * h if squared else 1.0
    return 0.0
