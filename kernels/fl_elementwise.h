/* fastloss: the elementwise losses' block loops, which apply the item formulas of
 * fastloss/include/fl_formulas.h. A block [start, stop) runs in chunks of FL_EW_CHUNK items: one
 * vectorised loop computes each item's loss into a buffer and its scaled gradient (rounded once)
 * into grad, item by item (grad may be x: same index only); then the chunk's losses are summed
 * in 32 fixed double lanes: the order depends only on start/stop, so sums are thread-count
 * independent. The inputs FL_EW_AHEAD items ahead are prefetched into L1 a chunk at a time; with
 * stream (a large grad that is not x) the block's gradient goes out through an fl_streamer. */
#ifndef FASTLOSS_ELEMENTWISE_H
#define FASTLOSS_ELEMENTWISE_H

#include "fastloss/include/fl_formulas.h"
#include "fl_stream.h"
#include "fl_rows.h"  /* fl_lanes_total_d */

typedef enum { FL_EW_SIGMOID_BCE, FL_EW_HUBER, FL_EW_HINGE, FL_EW_MSE, FL_EW_MAE, FL_EW_KL_DIV } fl_ew_kind;
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

#define FL_EW_FUNCS(T, SUF)                                                                       \
static double fl_ew_block_##SUF(int kind, const T* x, const T* t, const T* w, const T* pw,        \
                                ptrdiff_t n_pw, double a, int flag, ptrdiff_t start,              \
                                ptrdiff_t stop, T* g, double gscale, const double* gscale_arr, T* lo,    \
                                int stream) {                                                     \
    typedef T ew_T;                                                                               \
    double lb[FL_EW_CHUNK], pwb[FL_EW_CHUNK];                                                     \
    T tb[FL_EW_CHUNK];                                                                            \
    double acc[32]; /* 4 vectors of 8 lanes: 4 independent add chains */                          \
    double tail = 0.0;                                                                            \
    ptrdiff_t j = start, k, l, ip = n_pw > 0 ? start % n_pw : 0;                                  \
    fl_streamer st = {{0}};                                                                       \
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
        default:                                                                                  \
            if (flag) FL_EW_LOOP(fl_kl_div_item_##SUF(x[i], t[i], 1, &gi_));                            \
            else FL_EW_LOOP(fl_kl_div_item_##SUF(x[i], t[i], 0, &gi_));                                 \
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

FL_EW_FUNCS(float, f)
FL_EW_FUNCS(double, d)

#endif /* FASTLOSS_ELEMENTWISE_H */
