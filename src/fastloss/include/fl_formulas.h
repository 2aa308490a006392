/* fastloss: the item and row formulas of every loss, written once. The kernels use them (the
 * vectorised loops of kernels/fl_elementwise.h, the row kernels of kernels/softmax_xent.pxi and
 * multiclass_hinge.pxi), and fastloss/formulas.pxd declares them for other Cython extensions.
 *
 * Item formulas return the item's loss and store d(loss)/dx through g. They follow
 * fastloss.reference, including its kinks (PyTorch sub-gradients: slope 0 for max(0, z) at
 * z == 0, sign(0) = 0) and its NaN propagation (NaN in, NaN loss out). They are branch-free (the
 * ternaries become vector selects) so that the loops over them vectorise, and work in double,
 * except the _f variants of the items with exp/log. */
#ifndef FASTLOSS_FORMULAS_H
#define FASTLOSS_FORMULAS_H

#include "fl_vecmath.h"

/* ---- helpers -------------------------------------------------------------------------------- */

/* max(z, 0) that propagates NaN (as np.maximum does) */
FL_INLINE double fl_relu_keep_nan(double z) { return z <= 0 ? 0.0 : z; }

/* ---- elementwise losses --------------------------------------------------------------------- */

/* 0.5 d^2 if |d| <= delta else delta (|d| - delta/2);  g = clip(d, -delta, delta) (NaN kept) */
FL_INLINE double fl_huber_item(double d, double delta, double* g) {
    double ad = fabs(d);
    double gg = d > delta ? delta : d;
    *g = d < -delta ? -delta : gg;
    return ad <= delta ? 0.5 * d * d : delta * (ad - 0.5 * delta);
}

/* y = +1 if t > 0 else -1; h = max(0, margin - y x); h or h^2 */
FL_INLINE double fl_hinge_item(double x, double t, double margin, int squared, double* g) {
    double y = t > 0 ? 1.0 : -1.0;
    double z = margin - y * x;
    double h = fl_relu_keep_nan(z);
    if (squared) { *g = -2.0 * h * y; return h * h; }
    *g = z > 0 ? -y : 0.0;
    return h;
}

/* d^2;  g = 2 d */
FL_INLINE double fl_mse_item(double d, double* g) {
    *g = 2.0 * d;
    return d * d;
}

/* |d|;  g = sign(d), with sign(0) = 0 and sign(NaN) = NaN */
FL_INLINE double fl_mae_item(double d, double* g) {
    double s = d < 0 ? -1.0 : d;
    *g = d > 0 ? 1.0 : s;
    return fabs(d);
}

/* The formulas with exp/log, stamped out per type T (suffix SUF):
 *   fl_sigmoid_log1p_SUF(x, &l1p)  sigmoid(x), and log1p(exp(-|x|)) into l1p, from one
 *                                  e = exp(-|x|): sigmoid = 1/(1+e) or e/(1+e);
 *                                  log1p(e) = log(u) + (e - (u-1))/u with u = 1+e (u-1 exact)
 *   fl_sigmoid_bce_item_SUF        w ((1 - t) x + lw log1pexp(-x)), lw = 1 + (pw - 1) t,
 *                                  log1pexp(-x) = max(-x, 0) + log1p(exp(-|x|));
 *                                  g = w (lw sigmoid(x) - pw t)
 *   fl_kl_div_item_SUF             t (log t - x) (0 where t == 0, NaN there for a NaN x), or
 *                                  exp(t) (t - x) with log_target;  g = -t or -exp(t) */
#define FL_TRANSCENDENTAL_ITEMS(T, SUF, EXP, EXP_NONPOS, LOG, LOG_NORMAL)                        \
FL_INLINE T fl_sigmoid_log1p_##SUF(T x, T* l1p) {                                                \
    T e = EXP_NONPOS(x > 0 ? -x : x);                                                            \
    T u = (T)1 + e;                                                                              \
    T ru = (T)1 / u;                                                                             \
    T sg = x >= 0 ? ru : e * ru;                                                                 \
    *l1p = LOG_NORMAL(u) + (e - (u - (T)1)) * ru;  /* x NaN: LOG_NORMAL garbage, l1p NaN */      \
    return x != x ? x : sg;                                                                      \
}                                                                                                \
FL_INLINE double fl_sigmoid_bce_item_##SUF(double x_, double t_, double w_, double pw_, double* g) { \
    T x = (T)x_, t = (T)t_, w = (T)w_, pw = (T)pw_;                                              \
    T l1p;                                                                                       \
    T sg = fl_sigmoid_log1p_##SUF(x, &l1p);                                                      \
    T mx = -x > 0 ? -x : (T)0;                                                                   \
    T lw = (T)1 + (pw - (T)1) * t;                                                               \
    *g = w * (lw * sg - pw * t);                                                                 \
    return w * (((T)1 - t) * x + lw * (mx + l1p));                                               \
}                                                                                                \
FL_INLINE double fl_kl_div_item_##SUF(double x, double t, int log_target, double* g) {            \
    if (log_target) {                                                                            \
        double et = (double)EXP((T)t);                                                           \
        *g = -et;                                                                                \
        return et * (t - x);                                                                     \
    }                                                                                            \
    *g = -t;                                                                                     \
    double l = t * ((double)LOG((T)t) - x);                                                      \
    return t == 0 ? (x == x ? 0.0 : x) : l;  /* no mass, no loss: 0, or NaN for a NaN x */      \
}

FL_TRANSCENDENTAL_ITEMS(double, d, fl_exp, fl_exp_nonpos, fl_log, fl_log)
/* float inputs: exp/log in float, 16 float vector lanes instead of 8 double ones (as PyTorch) */
FL_TRANSCENDENTAL_ITEMS(float, f, fl_expf, fl_expf_nonpos, fl_logf, fl_logf_normal)

/* 1 / (1 + exp(-x)): exact limits 0 and 1, NaN -> NaN */
FL_INLINE double fl_sigmoid(double x) {
    double l1p;
    return fl_sigmoid_log1p_d(x, &l1p);
}

/* log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|)); +inf -> inf, -inf -> 0 */
FL_INLINE double fl_log1pexp(double x) {
    double l1p;
    fl_sigmoid_log1p_d(x, &l1p);
    return (x > 0 ? x : 0.0) + l1p;
}

/* ---- row losses: the scalar parts of a row -------------------------------------------------- */

/* softmax cross-entropy with a sparse label y:
 * (1-eps) w_y (lse - x_y) + eps/C (W lse - sum_c w_c x_c) + z w_y lse^2 (W = sum_c w_c); the
 * smoothing and z terms are left out when eps or z is 0, so -inf logits cost nothing unless
 * smoothing puts mass on them */
FL_INLINE double fl_softmax_xent_loss(double lse, double x_y, double w_y, double eps, double inv_c,
                                      double w_sum, double wx_sum, double z) {
    double loss = (1.0 - eps) * w_y * (lse - x_y);
    if (eps != 0) loss += eps * inv_c * (w_sum * lse - wx_sum);
    if (z != 0) loss += z * w_y * lse * lse;
    return loss;
}

/* A in grad_j = p_j A - (1-eps) w_y [j == y] - eps w_j / C */
FL_INLINE double fl_softmax_xent_coef(double lse, double w_y, double eps, double inv_c, double w_sum,
                                      double z) {
    double a = (1.0 - eps) * w_y + eps * w_sum * inv_c;
    if (z != 0) a += 2.0 * z * w_y * lse;
    return a;
}

/* grad_y = p_y A - (1-eps) w_y - eps w_y / C (A as fl_softmax_xent_coef, p_y = e_y / s),
 * arranged so that nothing cancels: (1-eps) w_y (p_y - 1) + eps/C (W p_y - w_y) + 2 z w_y lse p_y,
 * with p_y - 1 = (e_y - s) / s (exactly 0 for a row whose other classes have no mass) */
FL_INLINE double fl_softmax_xent_grad_y(double e_y, double s, double lse, double w_y, double eps,
                                        double inv_c, double w_sum, double z) {
    double inv_s = 1.0 / s;
    double p_y = e_y * inv_s;
    double g = (1.0 - eps) * w_y * ((e_y - s) * inv_s);
    if (eps != 0) g += eps * inv_c * (w_sum * p_y - w_y);
    if (z != 0) g += 2.0 * z * w_y * lse * p_y;
    return g;
}

/* softmax cross-entropy with probability targets: sum_c a_c (lse - x_c) + z r lse^2 with
 * a_c = w_c t'_c, r = sum_c a_c, tx_sum = sum_c a_c x_c (terms with a_c == 0 left out) */
FL_INLINE double fl_softmax_xent_probs_loss(double lse, double r, double tx_sum, double z) {
    double loss = r * lse - tx_sum;
    if (z != 0) loss += z * r * lse * lse;
    return loss;
}

/* multiclass hinge: d/dz of max(0, z)^p (p = 2 if squared, else 1) -- 0 at z <= 0 (and NaN),
 * 1 or 2h above (h = max(0, z)) */
FL_INLINE double fl_hinge_power_grad(double z, double h, int squared) {
    return z > 0 ? (squared ? 2.0 * h : 1.0) : 0.0;
}

#endif /* FASTLOSS_FORMULAS_H */
