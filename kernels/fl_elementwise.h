/* fastloss: the elementwise losses' block loops, which apply the item formulas of
 * fastloss/include/fl_formulas.h. A block [start, stop) runs in chunks of FL_EW_CHUNK items: one
 * vectorised loop computes each item's loss into a buffer and its scaled gradient (rounded once;
 * the items in float math: scaled in float) into grad, item by item (grad may be x: same index
 * only); then the chunk's losses are summed
 * in 32 fixed double lanes: the order depends only on start/stop, so sums are thread-count
 * independent. The inputs FL_EW_AHEAD items ahead are prefetched into L1 a chunk at a time; with
 * stream (a large grad that is not x) the block's gradient goes out through an fl_streamer. */
#ifndef FASTLOSS_ELEMENTWISE_H
#define FASTLOSS_ELEMENTWISE_H

#include "fastloss/include/fl_formulas.h"
#include "fl_stream.h"
#include "fl_rows.h"  /* fl_lanes_total_d */

typedef enum {
    FL_EW_SIGMOID_BCE, FL_EW_HUBER, FL_EW_HINGE, FL_EW_MSE, FL_EW_MAE, FL_EW_KL_DIV,
    FL_EW_SMOOTH_L1, FL_EW_LOG_COSH, FL_EW_MSLE, FL_EW_POISSON_NLL, FL_EW_SIGMOID_FOCAL
} fl_ew_kind;
/* the bits of flag for poisson_nll */
#define FL_EW_LOG_INPUT 1
#define FL_EW_FULL 2
#define FL_EW_CHUNK 64   /* items per chunk (measured: 64 streams 10-15 % faster than 128 or 512) */
#define FL_EW_AHEAD 1024 /* prefetch distance in items */

/* One chunk's items: the loss into lb, the gradient scaled (gscale, times gscale_arr[i] if given) and
 * rounded to ew_T (the element type) into gj, in one vectorised loop (no double gradient buffer). */
#define FL_EW_LOOP(BODY)                                                                          \
    do {                                                                                          \
        if (gj == NULL) {                                                                         \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); (void)gi_; }                                \
        } else if (gscale_arr == NULL) {                                                                 \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = (ew_T)(gi_ * gscale); }             \
        } else {                                                                                  \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = (ew_T)(gi_ * (gscale * gscale_arr[i])); }  \
        }                                                                                         \
    } while (0)

/* The same for the items that compute in the element type (their gradient comes as an ew_T; float
 * math rounds it anyway): the gradient scaled in ew_T by (ew_T)gscale, within an ulp of the double
 * product, where that is 0 or a normal ew_T (gs_t); a gscale that is not (subnormal or beyond the
 * range as an ew_T) scales in double. For double ew_T both are the same product. */
#define FL_EW_LOOP_T(BODY)                                                                        \
    do {                                                                                          \
        if (gj == NULL) {                                                                         \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); (void)gi_; }                        \
        } else if (gscale_arr == NULL && gs_t) {                                                  \
            const ew_T gs_ = (ew_T)gscale;                                                        \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); gj[k] = gi_ * gs_; }                \
        } else if (gscale_arr == NULL) {                                                          \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); gj[k] = (ew_T)(gi_ * gscale); }     \
        } else {                                                                                  \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY);                                     \
                                      gj[k] = (ew_T)(gi_ * (gscale * gscale_arr[i])); }           \
        }                                                                                         \
    } while (0)

#define FL_EW_FUNCS(T, SUF)                                                                       \
static double fl_ew_block_##SUF(int kind, const T* x, const T* t, const T* w, const T* pw,        \
                                ptrdiff_t n_pw, double a, double b, int flag, ptrdiff_t start,    \
                                ptrdiff_t stop, T* g, double gscale, const double* gscale_arr, T* lo,    \
                                int stream) {                                                     \
    typedef T ew_T;                                                                               \
    double lb[FL_EW_CHUNK], pwb[FL_EW_CHUNK];                                                     \
    T tb[FL_EW_CHUNK];                                                                            \
    double acc[32]; /* 4 vectors of 8 lanes: 4 independent add chains */                          \
    double tail = 0.0;                                                                            \
    ptrdiff_t j = start, k, l, ip = n_pw > 0 ? start % n_pw : 0;                                  \
    fl_streamer st = {{0}};                                                                       \
    const T gs_rt = (T)gscale; /* FL_EW_LOOP_T scales in T where gscale is a normal T, or 0 */     \
    const int gs_t = gscale == 0 || (gs_rt == gs_rt && fabs((double)gs_rt) >= FL_EW_MIN_##SUF      \
                                     && fabs((double)gs_rt) <= FL_EW_MAX_##SUF);                 \
    const double negsign = fl_pow_neg_sign(b); /* sigmoid_focal's general power */              \
    for (l = 0; l < 32; l++) acc[l] = 0.0;                                                        \
    stream = stream && g != NULL;                                                                 \
    if (stream) fl_streamer_begin_##SUF(&st, g + start);                                          \
    while (j < stop) {                                                                            \
        ptrdiff_t m = stop - j < FL_EW_CHUNK ? stop - j : FL_EW_CHUNK;                            \
        if (j + m + FL_EW_AHEAD <= stop) { /* inputs FL_EW_AHEAD items ahead into L1, a chunk's   \
                                             * lines at a time: a steady stream of requests */ \
            fl_prefetch_l1(x + j + FL_EW_AHEAD, m * (ptrdiff_t)sizeof(T));                        \
            fl_prefetch_l1(t + j + FL_EW_AHEAD, m * (ptrdiff_t)sizeof(T));                        \
        }                                                                                         \
        T* gj = g == NULL ? NULL : stream ? tb : g + j; /* straight into g, or streamed via tb */  \
        switch (kind) {                                                                           \
        case FL_EW_SIGMOID_BCE:                                                                   \
            if (pw != NULL) {                                                                     \
                for (k = 0; k < m; k++) { pwb[k] = pw[ip]; if (++ip == n_pw) ip = 0; }            \
                if (w != NULL)                                                                    \
                    FL_EW_LOOP(fl_sigmoid_bce_item_##SUF(x[i], t[i], w[i], pwb[k], &gi_));              \
                else                                                                              \
                    FL_EW_LOOP(fl_sigmoid_bce_item_##SUF(x[i], t[i], 1.0, pwb[k], &gi_));               \
            } else if (w != NULL)                                                                 \
                FL_EW_LOOP(fl_sigmoid_bce_item_##SUF(x[i], t[i], w[i], 1.0, &gi_));                     \
            else                                                                                  \
                FL_EW_LOOP(fl_sigmoid_bce_item_##SUF(x[i], t[i], 1.0, 1.0, &gi_));                      \
            break;                                                                                \
        case FL_EW_HUBER:                                                                         \
            FL_EW_LOOP(fl_huber_item((double)x[i] - (double)t[i], a, &gi_));                      \
            break;                                                                                \
        case FL_EW_HINGE:                                                                         \
            if (flag) FL_EW_LOOP(fl_hinge_item(x[i], t[i], a, 1, &gi_));                          \
            else FL_EW_LOOP(fl_hinge_item(x[i], t[i], a, 0, &gi_));                               \
            break;                                                                                \
        case FL_EW_MSE:                                                                           \
            FL_EW_LOOP(fl_mse_item((double)x[i] - (double)t[i], &gi_));                           \
            break;                                                                                \
        case FL_EW_MAE:                                                                           \
            FL_EW_LOOP(fl_mae_item((double)x[i] - (double)t[i], &gi_));                           \
            break;                                                                                \
        case FL_EW_KL_DIV:                                                                        \
            if (flag) FL_EW_LOOP(fl_kl_div_item_##SUF(x[i], t[i], 1, &gi_));                            \
            else FL_EW_LOOP(fl_kl_div_item_##SUF(x[i], t[i], 0, &gi_));                                 \
            break;                                                                                \
        case FL_EW_SMOOTH_L1:                                                                     \
            FL_EW_LOOP(fl_smooth_l1_item((double)x[i] - (double)t[i], a, &gi_));                  \
            break;                                                                                \
        /* the items below compute in T (float math for float inputs) */                          \
        case FL_EW_LOG_COSH:                                                                      \
            FL_EW_LOOP_T(fl_log_cosh_item_##SUF(x[i] - t[i], &gi_));                              \
            break;                                                                                \
        case FL_EW_MSLE:                                                                          \
            FL_EW_LOOP_T(fl_msle_item_##SUF(x[i], t[i], &gi_));                                   \
            break;                                                                                \
        case FL_EW_POISSON_NLL: /* one loop per flag combination (a: eps) */                      \
            switch (flag & (FL_EW_LOG_INPUT | FL_EW_FULL)) {                                      \
            case FL_EW_LOG_INPUT:                                                                 \
                FL_EW_LOOP_T(fl_poisson_nll_item_##SUF(x[i], t[i], 1, 0, a, &gi_)); break;        \
            case FL_EW_LOG_INPUT | FL_EW_FULL:                                                    \
                FL_EW_LOOP_T(fl_poisson_nll_item_##SUF(x[i], t[i], 1, 1, a, &gi_)); break;        \
            case FL_EW_FULL:                                                                      \
                FL_EW_LOOP_T(fl_poisson_nll_item_##SUF(x[i], t[i], 0, 1, a, &gi_)); break;        \
            default:                                                                              \
                FL_EW_LOOP_T(fl_poisson_nll_item_##SUF(x[i], t[i], 0, 0, a, &gi_)); break;        \
            }                                                                                     \
            break;                                                                                \
        case FL_EW_SIGMOID_FOCAL: /* a: alpha, b: gamma; the common gammas without exp/log */     \
            if (b == 2.0)                                                                         \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##SUF(x[i], t[i], a, 2.0, 2, 1.0, &gi_));     \
            else if (b == 0.0)                                                                    \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##SUF(x[i], t[i], a, 0.0, 0, 1.0, &gi_));     \
            else if (b == 1.0)                                                                    \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##SUF(x[i], t[i], a, 1.0, 1, -1.0, &gi_));     \
            else                                                                                  \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##SUF(x[i], t[i], a, b, 3, negsign, &gi_)); \
            break;                                                                                \
        default: /* unknown kind: NaN, no out-of-bounds access */                                 \
            FL_EW_LOOP(((void)i, gi_ = NAN, (double)NAN));                                        \
            break;                                                                                \
        }                                                                                         \
        if (stream) fl_streamer_put_##SUF(&st, tb, m);                                            \
        if (lo != NULL) {                                                                         \
            T* lj = lo + j;                                                                       \
            for (k = 0; k < m; k++) lj[k] = (T)lb[k];                                             \
        }                                                                                         \
        for (k = 0; k + 32 <= m; k += 32)                                                         \
            for (l = 0; l < 32; l++) acc[l] += lb[k + l];                                         \
        for (; k < m; k++) tail += lb[k];                                                         \
        j += m;                                                                                   \
    }                                                                                             \
    if (stream) {                                                                                 \
        fl_streamer_end_##SUF(&st);                                                               \
        fl_sfence();                                                                              \
    }                                                                                             \
    for (l = 0; l < 16; l++) acc[l] += acc[l + 16];                                               \
    for (l = 0; l < 8; l++) acc[l] += acc[l + 8];                                                 \
    return fl_lanes_total_d(acc, tail);                                                           \
}

#define FL_EW_MIN_f 1.1754943508222875e-38  /* FLT_MIN, DBL_MIN, FLT_MAX, DBL_MAX */
#define FL_EW_MIN_d 2.2250738585072014e-308
#define FL_EW_MAX_f 3.4028234663852886e+38
#define FL_EW_MAX_d 1.7976931348623157e+308
FL_EW_FUNCS(float, f)
FL_EW_FUNCS(double, d)

#endif /* FASTLOSS_ELEMENTWISE_H */
