/* fastloss: the item and row formulas of every loss, written once. The kernels use them (the
 * vectorised loops of kernels/fl_elementwise.h, the row kernels of kernels/softmax_xent.pxi,
 * multiclass_hinge.pxi and cosine_similarity.pxi), and fastloss/formulas.pxd declares them for
 * other Cython extensions.
 *
 * Item formulas return the item's loss and store d(loss)/dx through g. They follow
 * fastloss.reference, including its kinks (PyTorch sub-gradients: slope 0 for max(0, z) at
 * z == 0, sign(0) = 0) and its NaN propagation (NaN in, NaN loss out). They are branch-free (the
 * ternaries become vector selects) so that the loops over them vectorise, and work in double,
 * except the _f variants of the items with exp/log (the newer of those, from log_cosh on, take
 * and return the element type T, so that a float loop stays in float lanes; their _d variants
 * are the float64 formulas) and the float (_f) variants of the simple items, which the
 * half-precision kernels run. */
#ifndef FASTLOSS_FORMULAS_H
#define FASTLOSS_FORMULAS_H

#include "fl_vecmath.h"

/* ---- helpers -------------------------------------------------------------------------------- */

/* max(z, 0) that propagates NaN (as np.maximum does) */
FL_INLINE double fl_relu_keep_nan(double z) { return z <= 0 ? 0.0 : z; }

/* the sign of m^g for m < 0 (as pow): 1 for an even integer g, -1 for an odd one, NaN otherwise
 * (every double beyond 2^53 is an even integer); plain arithmetic, no libm call */
FL_INLINE double fl_pow_neg_sign(double g) {
    if (!(fabs(g) < 9007199254740992.0)) return g == g ? 1.0 : NAN;
    if (g != (double)(int64_t)g) return NAN;
    return ((int64_t)g & 1) ? -1.0 : 1.0;
}

/* ---- elementwise losses --------------------------------------------------------------------- */

/* The items below are written once, for T = double (fl_huber_item, ...: the float32 and float64
 * kernels, formulas.pxd) and for T = float (fl_huber_item_f, ...: the half-precision kernels,
 * which compute in float32, 16 float lanes to a vector). */
#define FL_ABS_double fabs
#define FL_ABS_float fabsf
#define FL_SIMPLE_ITEMS(T, SUF)                                                                    \
/* 0.5 d^2 if |d| <= delta else delta (|d| - delta/2);  g = clip(d, -delta, delta) (NaN kept) */   \
FL_INLINE T fl_huber_item##SUF(T d, T delta, T* g) {                                               \
    T ad = FL_ABS_##T(d);                                                                          \
    T gg = d > delta ? delta : d;                                                                  \
    *g = d < -delta ? -delta : gg;                                                                 \
    return ad <= delta ? (T)0.5 * d * d : delta * (ad - (T)0.5 * delta);                           \
}                                                                                                  \
/* y = +1 if t > 0 else -1; h = max(0, margin - y x) (NaN kept); h or h^2 */                      \
FL_INLINE T fl_hinge_item##SUF(T x, T t, T margin, int squared, T* g) {                           \
    T y = t > 0 ? (T)1 : (T)-1;                                                                    \
    T z = margin - y * x;                                                                          \
    T h = z <= 0 ? (T)0 : z;                                                                       \
    if (squared) { *g = (T)-2 * h * y; return h * h; }                                             \
    *g = z > 0 ? -y : (T)0;                                                                        \
    return h;                                                                                      \
}                                                                                                  \
/* d^2;  g = 2 d */                                                                                \
FL_INLINE T fl_mse_item##SUF(T d, T* g) {                                                          \
    *g = (T)2 * d;                                                                                 \
    return d * d;                                                                                  \
}                                                                                                  \
/* |d|;  g = sign(d), with sign(0) = 0 and sign(NaN) = NaN */                                      \
FL_INLINE T fl_mae_item##SUF(T d, T* g) {                                                          \
    T s = d < 0 ? (T)-1 : d;                                                                       \
    *g = d > 0 ? (T)1 : s;                                                                         \
    return FL_ABS_##T(d);                                                                          \
}                                                                                                  \
/* 0.5 d^2 / beta if |d| < beta else |d| - beta/2;  g = d / beta or sign(d) (sign(0) = 0, NaN    \
 * kept). beta == 0 is L1 (the first branch is never taken). 1/beta is loop-invariant: a loop     \
 * hoists it. */                                                                                   \
FL_INLINE T fl_smooth_l1_item##SUF(T d, T beta, T* g) {                                            \
    T ib = (T)1 / beta;                                                                            \
    T ad = FL_ABS_##T(d);                                                                          \
    int small = ad < beta;                                                                         \
    T s = d < 0 ? (T)-1 : d;                                                                       \
    T sg = d > 0 ? (T)1 : s;                                                                       \
    *g = small ? d * ib : sg;                                                                      \
    return small ? (T)0.5 * d * d * ib : ad - (T)0.5 * beta;                                       \
}

FL_SIMPLE_ITEMS(double, )
FL_SIMPLE_ITEMS(float, _f)

/* tanh(a) for 0 <= a < 0.625 (Cephes: a + a^3 P(a^2), float ~1 ulp; double a rational form) */
FL_INLINE float fl_tanh_small_f(float a) {
    float s = a * a;
    float p = -5.70498872745e-3f;
    p = FL_FMAF(p, s, 2.06390887954e-2f);
    p = FL_FMAF(p, s, -5.37397155531e-2f);
    p = FL_FMAF(p, s, 1.33314422036e-1f);
    p = FL_FMAF(p, s, -3.33332819422e-1f);
    return FL_FMAF(p * s, a, a);
}

FL_INLINE double fl_tanh_small_d(double a) {
    double s = a * a;
    double p = (-9.64399179425052238628e-1 * s - 9.92877231001918586564e1) * s - 1.61468768441708447952e3;
    double q = ((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3;
    return a + a * s * (p / q);
}

/* The formulas with exp/log, stamped out per type T (suffix SUF):
 *   fl_sigmoid_log1p_SUF(x, &l1p)  sigmoid(x), and log1p(exp(-|x|)) into l1p, from one
 *                                  e = exp(-|x|): sigmoid = 1/(1+e) or e/(1+e);
 *                                  log1p(e) = log(u) + (e - (u-1))/u with u = 1+e (u-1 exact)
 *   fl_sigmoid_bce_item_SUF        w ((1 - t) x + lw log1pexp(-x)), lw = 1 + (pw - 1) t,
 *                                  log1pexp(-x) = max(-x, 0) + log1p(exp(-|x|));
 *                                  g = w (lw sigmoid(x) - pw t)
 *   fl_kl_div_item_SUF             t (log t - x) (0 where t == 0, NaN there for a NaN x), or
 *                                  exp(t) (t - x) with log_target;  g = -t or -exp(t)
 *   fl_log_cosh_item_SUF           log cosh d, a = |d|: a + log1p(e) - log 2 with e = exp(-2a)
 *                                  (no overflow), and below a = 0.625, where that cancels,
 *                                  -log1p(-tanh(a)^2)/2 from the tanh polynomial;  g = tanh(d)
 *   fl_msle_item_SUF               d^2, d = log1p(xc) - log1p(tc), xc = max(x, 1e-7) (NaN kept):
 *                                  d = log(u) + corrections with u = (1 + xc)/(1 + tc) (as
 *                                  log1p((ux - ut)/ut) where u >= 1/2): accurate to a few ulp
 *                                  even where x ~ t (one log);  g = 2 d / (1 + x), 0 where x < 1e-7
 *   fl_poisson_nll_item_SUF        exp(x) - t x (log_input), else x - t log(x + eps); full adds
 *                                  Stirling's (t + 1/2) log t - t + log(2 pi)/2 where t > 1;
 *                                  g = exp(x) - t, or 1 - t / (x + eps); the loss in double
 *   fl_sigmoid_focal_item_SUF      a_t ce m^gamma, p = sigmoid(x), q = sigmoid(-x) (both from one
 *                                  exp(-|x|)), ce = (1 - t) x + log1pexp(-x), m = p (1 - t) + q t,
 *                                  a_t = alpha t + (1 - alpha)(1 - t) (1 when alpha < 0);
 *                                  g = a_t ((p - t) m^gamma + ce (gamma m^gamma r (1 - 2t))),
 *                                  r = p q / m (0 where m <= 0); m^gamma: 1 for gamma == 0 (also
 *                                  0^0), products for 1 and 2, else exp(gamma log|m|) (the sign
 *                                  of m^gamma kept for an odd integer gamma, NaN for m < 0
 *                                  otherwise). Literal gammas 0, 1, 2 give loops without exp/log
 *                                  for the power. The r term is formed before ce multiplies it,
 *                                  so a huge finite ce is not turned into inf * 0 = NaN. */
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
}                                                                                                \
FL_INLINE T fl_log_cosh_item_##SUF(T d, T* g) {                                                  \
    T a = d < 0 ? -d : d;                                                                        \
    T e = EXP_NONPOS((T)-2 * a);                                                                 \
    int small = a < (T)0.625;                                                                    \
    T ths = fl_tanh_small_##SUF(a);                                                              \
    T v = small ? -(ths * ths) : e;         /* log1p's argument: -tanh^2, or e */                \
    T u = (T)1 + v;                         /* in [0.69, 1.29]: a normal log */                  \
    T ru = (T)1 / u;                                                                             \
    T l1p = LOG_NORMAL(u) + (v - (u - (T)1)) * ru;  /* d NaN: l1p NaN */                         \
    T th = small ? ths : ((T)1 - e) * ru;                                                        \
    T loss = small ? (T)-0.5 * l1p : (a + l1p) - (T)0.693147180559945309417;                     \
    *g = d < 0 ? -th : th;                                                                       \
    return loss;                                                                                 \
}                                                                                                \
FL_INLINE T fl_msle_item_##SUF(T x, T t, T* g) {                                                 \
    const T lo = (T)1e-7;                                                                        \
    T xc = x < lo ? lo : x, tc = t < lo ? lo : t;  /* max(., 1e-7), NaN kept */                  \
    T ux = (T)1 + xc, ut = (T)1 + tc;                                                            \
    T rux = (T)1 / ux, rut = (T)1 / ut;                                                          \
    T ex = xc - (ux - (T)1), et = tc - (ut - (T)1);  /* the exact rounding errors of ux, ut */   \
    int far = ux < (T)0.5 * ut;                                                                  \
    T r = (ux - ut) * rut;                  /* ux - ut exact where ux/ut in [1/2, 2] */          \
    T w = far ? ux * rut : (T)1 + r;                                                             \
    T corr = far ? (T)0 : (r - (w - (T)1)) * (ut * rux);  /* log1p(r) - log(w), 1/w ~ ut/ux */   \
    T d = LOG(w) + (corr + (ex * rux - et * rut));                                               \
    /* an infinite xc or tc: d = log1p(xc) - log1p(tc) as the reference's (inf - inf, NaN: NaN) */ \
    T dinf = (xc == (T)INFINITY ? xc : xc * (T)0) - (tc == (T)INFINITY ? tc : tc * (T)0);         \
    d = (xc == (T)INFINITY) | (tc == (T)INFINITY) ? dinf : d;                                    \
    *g = x < lo ? (T)0 : (T)2 * d * rux;                                                         \
    return d * d;                                                                                \
}                                                                                                \
FL_INLINE double fl_poisson_nll_item_##SUF(T x, T t, int log_input, int full, double eps, T* g) { \
    /* exp/log in T; the products with t, and the sums of the loss, in double (a float t x       \
     * overflows at |x| ~ 3e38, and exp(x) - inf would be NaN, not the reference's inf) */       \
    double loss;                                                                                 \
    if (log_input) {                                                                             \
        T ex = EXP(x);                                                                           \
        loss = (double)ex - (double)t * (double)x;                                               \
        *g = ex - t;                                                                             \
    } else {                                                                                     \
        T xe = x + (T)eps;                                                                       \
        loss = (double)x - (double)t * (double)LOG(xe);                                          \
        *g = (T)1 - t / xe;                                                                      \
    }                                                                                            \
    if (full) {                                                                                  \
        T tt = t > (T)1 ? t : (T)2;                                                              \
        double st = ((double)tt + 0.5) * (double)LOG(tt) - (double)tt                            \
                    + 0.918938533204672741780;  /* + log(2 pi)/2 */                              \
        loss = loss + (t > (T)1 ? st : 0.0);                                                     \
    }                                                                                            \
    return loss;                                                                                 \
}                                                                                                \
/* the focal loss with the power m^gamma chosen by gmode (a constant where the loops call it):   \
 * 0: gamma == 0, 1: gamma == 1, 2: gamma == 2, else the general power |m|^gamma, times negsign  \
 * where m < 0 (fl_pow_neg_sign(gamma): a scalar, so that a vector loop takes it) */            \
FL_INLINE T fl_sigmoid_focal_core_##SUF(T x, T t, double alpha, double gamma, int gmode,         \
                                        double negsign, T* g) {                                  \
    T gm = (T)gamma;                                                                             \
    T e = EXP_NONPOS(x > 0 ? -x : x);       /* exp(-|x|); NaN for NaN */                         \
    T u = (T)1 + e;                                                                              \
    T ru = (T)1 / u;                                                                             \
    T er = e * ru;                                                                               \
    T p = x >= 0 ? ru : er;                 /* sigmoid(x); NaN for NaN through er */             \
    T q = x >= 0 ? er : ru;                 /* sigmoid(-x) = 1 - p, exact where p rounds to 1 */ \
    T l1p = LOG_NORMAL(u) + (e - (u - (T)1)) * ru;                                               \
    T mx = -x > 0 ? -x : (T)0;                                                                   \
    T ce = ((T)1 - t) * x + (mx + l1p);                                                          \
    T m = p * ((T)1 - t) + q * t;           /* 1 - p_t */                                        \
    T mod;                                                                                       \
    if (gmode == 0) mod = (T)1;                                                                  \
    else if (gmode == 1) mod = m;                                                                \
    else if (gmode == 2) mod = m * m;                                                            \
    else {                                                                                       \
        T am = m < 0 ? -m : m;                                                                   \
        T pw = EXP(gm * LOG(am));                                                                \
        mod = m < 0 ? pw * (T)negsign : pw;                                                      \
    }                                                                                            \
    T at = alpha >= 0 ? (T)alpha * t + (T)(1.0 - alpha) * ((T)1 - t) : (T)1;                     \
    /* mr = m^gamma r, r = p q / m (0 where m <= 0 or NaN): without the division for gamma 1, 2; \
     * for gamma 0 it is only multiplied by 0 (p q: NaN where r would be, or the term is NaN    \
     * through ce anyway) */                                                                   \
    T pq = p * q;                                                                                \
    T mr;                                                                                        \
    if (gmode == 0) mr = pq;                                                                     \
    else if (gmode == 1) mr = m > 0 ? pq : (T)0;                                                 \
    else if (gmode == 2) mr = m > 0 ? m * pq : (T)0;                                             \
    else mr = mod * (m > 0 ? pq / m : (T)0);                                                     \
    *g = at * ((p - t) * mod + ce * (gm * mr * ((T)1 - (T)2 * t)));                              \
    return at * (ce * mod);                                                                      \
}                                                                                                \
FL_INLINE T fl_sigmoid_focal_item_##SUF(T x, T t, double alpha, double gamma, T* g) {            \
    int gmode = gamma == 0 ? 0 : gamma == 1 ? 1 : gamma == 2 ? 2 : 3;                            \
    return fl_sigmoid_focal_core_##SUF(x, t, alpha, gamma, gmode, fl_pow_neg_sign(gamma), g);    \
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

/* cosine similarity from a row's sums sx = sum x^2, st = sum t^2, sxt = sum x t: the loss
 * -sxt / nn with nn = nx nt, n = sqrt(max(s, 1e-12)) (NaN kept), and the gradient's parts,
 * grad_c = -t_c / nn - k x_c with k = loss / sx where sx > 1e-12, else 0 (a norm under the clamp
 * is a constant: no gradient through it). */
FL_INLINE double fl_cosine_similarity_loss(double sx, double st, double sxt, double* nn, double* k) {
    const double clamp = 1e-12;
    double n2 = sqrt(sx < clamp ? clamp : sx) * sqrt(st < clamp ? clamp : st);
    double loss = -sxt / n2;
    *nn = n2;
    *k = sx > clamp ? loss / sx : 0.0;
    return loss;
}

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
