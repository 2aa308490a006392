/* fastloss: the elementwise losses' block loops, which apply the item formulas of
 * fastloss/include/fl_formulas.h. A block [start, stop) runs in chunks of FL_EW_CHUNK items: one
 * vectorised loop computes each item's loss into a buffer and its scaled gradient (rounded once;
 * the items in float math: scaled in float) into grad, item by item (grad may be x: same index
 * only); then the chunk's losses are summed
 * in 32 fixed double lanes: the order depends only on start/stop, so sums are thread-count
 * independent. The inputs FL_EW_AHEAD items ahead are prefetched into L1 a chunk at a time; with
 * stream (a large grad that is not x) the block's gradient goes out through an fl_streamer.
 * Half inputs (float16, bfloat16 bits) run the float32 code (see the instantiations at the end):
 * converted as they are loaded, the gradient and losses rounded once as they are stored
 * (fl_half.h); their losses with exp/log are bitwise those of float32 inputs of the same values,
 * the simple items (mse, huber, ...) compute in float instead of float32's double. */
#ifndef FASTLOSS_ELEMENTWISE_H
#define FASTLOSS_ELEMENTWISE_H

#include "fastloss/include/fl_formulas.h"
#include "fl_stream.h"
#include "fl_rows.h"  /* fl_lanes_total_d */
#include "fl_half.h"

typedef enum {
    FL_EW_SIGMOID_BCE, FL_EW_HUBER, FL_EW_HINGE, FL_EW_MSE, FL_EW_MAE, FL_EW_KL_DIV,
    FL_EW_SMOOTH_L1, FL_EW_LOG_COSH, FL_EW_MSLE, FL_EW_POISSON_NLL, FL_EW_SIGMOID_FOCAL
} fl_ew_kind;
/* the bits of flag for poisson_nll */
#define FL_EW_LOG_INPUT 1
#define FL_EW_FULL 2
#define FL_EW_CHUNK 64   /* float items per chunk (measured: 64 streams 10-15 % faster than 128 or 512) */
#define FL_EW_AHEAD 1024 /* prefetch distance in items */

/* One chunk's items: the loss into lb, the gradient scaled (gscale, times gscale_arr[i] if given) and
 * rounded to ew_T (the compute type: the element type, float for the half types) into gj, in one
 * vectorised loop (no double gradient buffer). */
#define FL_EW_LOOP(BODY, ST)                                                                      \
    do {                                                                                          \
        if (gj == NULL) {                                                                         \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); (void)gi_; }                                \
        } else if (gscale_arr == NULL) {                                                          \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = ST((ew_T)(gi_ * gscale)); }         \
        } else {                                                                                  \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = ST((ew_T)(gi_ * (gscale * gscale_arr[i]))); } \
        }                                                                                         \
    } while (0)

/* The same for the items that compute in the compute type (their gradient comes as an ew_T; float
 * math rounds it anyway): the gradient scaled in ew_T by (ew_T)gscale, within an ulp of the double
 * product, where that is 0 or a normal ew_T (gs_t); a gscale that is not (subnormal or beyond the
 * range as an ew_T) scales in double. For double ew_T both are the same product. */
#define FL_EW_LOOP_T(BODY, ST)                                                                    \
    do {                                                                                          \
        if (gj == NULL) {                                                                         \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); (void)gi_; }                        \
        } else if (gscale_arr == NULL && gs_t) {                                                  \
            const ew_T gs_ = (ew_T)gscale;                                                        \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); gj[k] = ST(gi_ * gs_); }            \
        } else if (gscale_arr == NULL) {                                                          \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY); gj[k] = ST((ew_T)(gi_ * gscale)); } \
        } else {                                                                                  \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; ew_T gi_; (void)i;               \
                                      lb[k] = (double)(BODY);                                     \
                                      gj[k] = ST((ew_T)(gi_ * (gscale * gscale_arr[i]))); }       \
        }                                                                                         \
    } while (0)

#define FL_EW_FUNCS(T, SUF, STSUF, CT, CSUF, XT, IN, LD, GT, GBUF, GST, OUT, SI, DT, SLOOP, LD1, CHUNK) \
static double fl_ew_block_##SUF(int kind, const T* x, const T* t, const T* w, const T* pw,        \
                                ptrdiff_t n_pw, double a, double b, int flag, ptrdiff_t start,    \
                                ptrdiff_t stop, T* g, double gscale, const double* gscale_arr, T* lo, \
                                int stream) {                                                     \
    typedef CT ew_T; /* the compute type (float for the half types) */                            \
    double lb[CHUNK], pwb[CHUNK];                                                                 \
    T tb[CHUNK];                                                                                  \
    XT xc[CHUNK], tc[CHUNK], wc[CHUNK]; /* inputs converted by IN */                              \
    GT gc[CHUNK]; /* the gradient or losses before OUT rounds them */                             \
    double acc[32]; /* 4 vectors of 8 lanes: 4 independent add chains */                          \
    double tail = 0.0;                                                                            \
    ptrdiff_t j = start, k, l, ip = n_pw > 0 ? start % n_pw : 0;                                  \
    fl_streamer st = {{0}};                                                                       \
    const CT gs_rt = (CT)gscale; /* FL_EW_LOOP_T scales in CT where gscale is a normal CT, or 0 */ \
    const int gs_t = gscale == 0 || (gs_rt == gs_rt && fabs((double)gs_rt) >= FL_EW_MIN_##CSUF    \
                                     && fabs((double)gs_rt) <= FL_EW_MAX_##CSUF);                 \
    const double negsign = fl_pow_neg_sign(b); /* sigmoid_focal's general power */                \
    (void)xc; (void)tc; (void)wc; (void)gc; /* unused where IN and GBUF pass the arrays through */ \
    for (l = 0; l < 32; l++) acc[l] = 0.0;                                                        \
    stream = stream && g != NULL;                                                                 \
    if (stream) fl_streamer_begin_##STSUF(&st, g + start);                                        \
    while (j < stop) {                                                                            \
        ptrdiff_t m = stop - j < CHUNK ? stop - j : CHUNK;                                        \
        if (j + m + FL_EW_AHEAD <= stop) { /* inputs FL_EW_AHEAD items ahead into L1, a chunk's   \
                                             * lines at a time: a steady stream of requests */    \
            fl_prefetch_l1(x + j + FL_EW_AHEAD, m * (ptrdiff_t)sizeof(T));                        \
            fl_prefetch_l1(t + j + FL_EW_AHEAD, m * (ptrdiff_t)sizeof(T));                        \
        }                                                                                         \
        T* gd = g == NULL ? NULL : stream ? tb : g + j; /* straight into g, or streamed via tb */ \
        /* the chunk's inputs (half: converted into xc, tc, wc) and where its gradient goes       \
         * (half: gc, rounded out to gd after the loop) */                                        \
        const XT* xs = IN(x + j, xc, m);                                                          \
        const XT* ts = IN(t + j, tc, m);                                                          \
        const XT* ws = w == NULL ? NULL : IN(w + j, wc, m);                                       \
        GT* gj = gd == NULL ? NULL : GBUF(gd, gc);                                                \
        switch (kind) {                                                                           \
        case FL_EW_SIGMOID_BCE:                                                                   \
            if (pw != NULL) {                                                                     \
                for (k = 0; k < m; k++) { pwb[k] = LD1(pw[ip]); if (++ip == n_pw) ip = 0; }       \
                if (w != NULL)                                                                    \
                    FL_EW_LOOP(fl_sigmoid_bce_item_##CSUF(LD(xs[k]), LD(ts[k]), LD(ws[k]), pwb[k], &gi_), GST); \
                else                                                                              \
                    FL_EW_LOOP(fl_sigmoid_bce_item_##CSUF(LD(xs[k]), LD(ts[k]), 1.0, pwb[k], &gi_), GST); \
            } else if (w != NULL)                                                                 \
                FL_EW_LOOP(fl_sigmoid_bce_item_##CSUF(LD(xs[k]), LD(ts[k]), LD(ws[k]), 1.0, &gi_), GST); \
            else                                                                                  \
                FL_EW_LOOP(fl_sigmoid_bce_item_##CSUF(LD(xs[k]), LD(ts[k]), 1.0, 1.0, &gi_), GST); \
            break;                                                                                \
        case FL_EW_HUBER:                                                                         \
            SLOOP(fl_huber_item##SI((DT)LD(xs[k]) - (DT)LD(ts[k]), (DT)a, &gi_), GST);            \
            break;                                                                                \
        case FL_EW_HINGE:                                                                         \
            if (flag) SLOOP(fl_hinge_item##SI(LD(xs[k]), LD(ts[k]), (DT)a, 1, &gi_), GST);        \
            else SLOOP(fl_hinge_item##SI(LD(xs[k]), LD(ts[k]), (DT)a, 0, &gi_), GST);             \
            break;                                                                                \
        case FL_EW_MSE:                                                                           \
            SLOOP(fl_mse_item##SI((DT)LD(xs[k]) - (DT)LD(ts[k]), &gi_), GST);                     \
            break;                                                                                \
        case FL_EW_MAE:                                                                           \
            SLOOP(fl_mae_item##SI((DT)LD(xs[k]) - (DT)LD(ts[k]), &gi_), GST);                     \
            break;                                                                                \
        case FL_EW_KL_DIV:                                                                        \
            if (flag) FL_EW_LOOP(fl_kl_div_item_##CSUF(LD(xs[k]), LD(ts[k]), 1, &gi_), GST);      \
            else FL_EW_LOOP(fl_kl_div_item_##CSUF(LD(xs[k]), LD(ts[k]), 0, &gi_), GST);           \
            break;                                                                                \
        case FL_EW_SMOOTH_L1:                                                                     \
            SLOOP(fl_smooth_l1_item##SI((DT)LD(xs[k]) - (DT)LD(ts[k]), (DT)a, &gi_), GST);        \
            break;                                                                                \
        /* the items below compute in CT (float math for float inputs) */                         \
        case FL_EW_LOG_COSH:                                                                      \
            FL_EW_LOOP_T(fl_log_cosh_item_##CSUF(LD(xs[k]) - LD(ts[k]), &gi_), GST);              \
            break;                                                                                \
        case FL_EW_MSLE:                                                                          \
            FL_EW_LOOP_T(fl_msle_item_##CSUF(LD(xs[k]), LD(ts[k]), &gi_), GST);                   \
            break;                                                                                \
        case FL_EW_POISSON_NLL: /* one loop per flag combination (a: eps) */                      \
            switch (flag & (FL_EW_LOG_INPUT | FL_EW_FULL)) {                                      \
            case FL_EW_LOG_INPUT:                                                                 \
                FL_EW_LOOP_T(fl_poisson_nll_item_##CSUF(LD(xs[k]), LD(ts[k]), 1, 0, a, &gi_), GST); break; \
            case FL_EW_LOG_INPUT | FL_EW_FULL:                                                    \
                FL_EW_LOOP_T(fl_poisson_nll_item_##CSUF(LD(xs[k]), LD(ts[k]), 1, 1, a, &gi_), GST); break; \
            case FL_EW_FULL:                                                                      \
                FL_EW_LOOP_T(fl_poisson_nll_item_##CSUF(LD(xs[k]), LD(ts[k]), 0, 1, a, &gi_), GST); break; \
            default:                                                                              \
                FL_EW_LOOP_T(fl_poisson_nll_item_##CSUF(LD(xs[k]), LD(ts[k]), 0, 0, a, &gi_), GST); break; \
            }                                                                                     \
            break;                                                                                \
        case FL_EW_SIGMOID_FOCAL: /* a: alpha, b: gamma; the common gammas without exp/log */     \
            if (b == 2.0)                                                                         \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##CSUF(LD(xs[k]), LD(ts[k]), a, 2.0, 2, 1.0, &gi_), GST); \
            else if (b == 0.0)                                                                    \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##CSUF(LD(xs[k]), LD(ts[k]), a, 0.0, 0, 1.0, &gi_), GST); \
            else if (b == 1.0)                                                                    \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##CSUF(LD(xs[k]), LD(ts[k]), a, 1.0, 1, -1.0, &gi_), GST); \
            else                                                                                  \
                FL_EW_LOOP_T(fl_sigmoid_focal_core_##CSUF(LD(xs[k]), LD(ts[k]), a, b, 3, negsign, &gi_), GST); \
            break;                                                                                \
        default: /* unknown kind: NaN, no out-of-bounds access */                                 \
            FL_EW_LOOP(((void)i, gi_ = NAN, (double)NAN), GST);                                   \
            break;                                                                                \
        }                                                                                         \
        if (gd != NULL) OUT(gc, gd, m);                                                           \
        if (stream) fl_streamer_put_##STSUF(&st, tb, m);                                          \
        if (lo != NULL) { /* the losses rounded to CT, then (half) to T */                        \
            GT* lj = GBUF(lo + j, gc);                                                            \
            for (k = 0; k < m; k++) lj[k] = GST((CT)lb[k]);                                       \
            OUT(gc, lo + j, m);                                                                   \
        }                                                                                         \
        for (k = 0; k + 32 <= m; k += 32)                                                         \
            for (l = 0; l < 32; l++) acc[l] += lb[k + l];                                         \
        for (; k < m; k++) tail += lb[k];                                                         \
        j += m;                                                                                   \
    }                                                                                             \
    if (stream) {                                                                                 \
        fl_streamer_end_##STSUF(&st);                                                             \
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
/* float, double: the arrays themselves (IN, GBUF: the array's pointer; LD, GST: the value;
 * OUT: nothing) */
#define FL_EW_IN(p, buf, m) (p)
#define FL_EW_GBUF(gd, buf) (gd)
#define FL_EW_SAME(v) (v)
#define FL_EW_OUT(buf, dst, m) ((void)0)
FL_EW_FUNCS(float, f, f, float, f, float, FL_EW_IN, FL_EW_SAME, float, FL_EW_GBUF, FL_EW_SAME, FL_EW_OUT,
            , double, FL_EW_LOOP, FL_EW_SAME, FL_EW_CHUNK)
FL_EW_FUNCS(double, d, d, double, d, double, FL_EW_IN, FL_EW_SAME, double, FL_EW_GBUF, FL_EW_SAME, FL_EW_OUT,
            , double, FL_EW_LOOP, FL_EW_SAME, FL_EW_CHUNK)
/* float16 (h) and bfloat16 (b), as uint16_t bits, run the float code: bfloat16 (and float16
 * without F16C) converted inside the vectorised loops (LD, GST: integer code); float16 with F16C
 * a chunk at a time into float buffers in L1 (IN) and the gradient and losses out of one (OUT).
 * Their simple items (huber, hinge, mse, mae, smooth_l1: SI, DT, SLOOP) compute in float too (the
 * _f formulas, 16 lanes), where float32 inputs widen to double. A chunk is as many bytes as
 * float32's (128 items: measured 1.15x faster than 64 with streamed stores); a multiple of the 32
 * lanes of the sum, so the losses add up in the same order. LD1: pos_weight's values. */
FL_EW_FUNCS(uint16_t, b, h, float, f, uint16_t, FL_EW_IN, fl_bf16_to_float, uint16_t, FL_EW_GBUF,
            fl_float_to_bf16, FL_EW_OUT, _f, float, FL_EW_LOOP_T, fl_bf16_to_float, 2 * FL_EW_CHUNK)
#if defined(__F16C__)
#define FL_EW_IN_H(p, buf, m) (fl_f16_load((p), (buf), (m)), (const float*)(buf))
#define FL_EW_GBUF_HALF(gd, buf) (buf)
FL_EW_FUNCS(uint16_t, h, h, float, f, float, FL_EW_IN_H, FL_EW_SAME, float, FL_EW_GBUF_HALF, FL_EW_SAME,
            fl_f16_store, _f, float, FL_EW_LOOP_T, fl_f16_to_float, 2 * FL_EW_CHUNK)
#else
FL_EW_FUNCS(uint16_t, h, h, float, f, uint16_t, FL_EW_IN, fl_f16_to_float_soft, uint16_t, FL_EW_GBUF,
            fl_float_to_f16_soft, FL_EW_OUT, _f, float, FL_EW_LOOP_T, fl_f16_to_float_soft, 2 * FL_EW_CHUNK)
#endif

#endif /* FASTLOSS_ELEMENTWISE_H */
