/* fastloss: row primitives of the softmax kernels. They work on fixed "lanes" (16 floats / 8
 * doubles) so that the lane loop is vectorised while the order of every floating-point operation
 * is fixed by the source: a row's result depends only on the row's data, never on threads or
 * pointer alignment.
 * FL_ROW_FUNCS(T, SUF, EXP, NL) stamps out, for element type T with NL lanes:
 *   fl_row_max_SUF(x, n)                 max of a row (NaNs are skipped; -inf for an empty row)
 *   fl_row_expsum_SUF(x, g, n, shift, pf)
 *                                        sum_j exp(x_j - shift) in double; stores the exps to g
 *                                        if g != NULL (g may be x itself: same-index only);
 *                                        meanwhile prefetches pf[0:n] into L2 if pf != NULL (the
 *                                        next row: its DRAM read overlaps this row's exps)
 *   fl_row_scale_SUF(g, n, k)            g_j *= k
 *   fl_row_scale_sub_SUF(g, n, k, w, k2) g_j = g_j*k - w_j*k2   (w == NULL: g_j*k - k2)
 *   fl_row_sum_SUF(x, n) / fl_row_dot_SUF(w, x, n)
 *                                        sum_j x_j / sum_{j: w_j != 0} w_j x_j, in double
 *   fl_lanes_total_SUF(acc, tail)        the NL lane sums acc added pairwise, in a fixed order
 */
#ifndef FASTLOSS_ROWS_H
#define FASTLOSS_ROWS_H

#include "fastloss/include/fl_vecmath.h"
#include "fl_stream.h"

#define FL_ROW_FUNCS(T, SUF, EXP, NL)                                                             \
FL_INLINE T fl_row_max_##SUF(const T* x, ptrdiff_t n) {                                          \
    /* 4*NL independent lanes: a max has a latency of several cycles, one NL-lane chain would    \
     * leave the load ports idle (measured: twice as slow over a row in L2) */                   \
    T m[4 * NL];                                                                                 \
    ptrdiff_t j = 0, l;                                                                          \
    T r = -(T)INFINITY;                                                                          \
    if (n >= 8 * NL) {                                                                           \
        for (l = 0; l < 4 * NL; l++) m[l] = -(T)INFINITY;                                        \
        for (; j + 4 * NL <= n; j += 4 * NL)                                                     \
            for (l = 0; l < 4 * NL; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];               \
        for (l = 0; l < 4 * NL; l++) r = m[l] > r ? m[l] : r;                                    \
    } else if (n >= 2 * NL) {                                                                    \
        for (l = 0; l < NL; l++) m[l] = -(T)INFINITY;                                            \
        for (; j + NL <= n; j += NL)                                                             \
            for (l = 0; l < NL; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];                   \
        for (l = 0; l < NL; l++) r = m[l] > r ? m[l] : r;                                        \
    }                                                                                            \
    for (; j < n; j++) r = x[j] > r ? x[j] : r;                                                  \
    return r;                                                                                    \
}                                                                                                \
static inline double fl_lanes_total_##SUF(double* acc, double tail) {                            \
    /* pairwise, in a fixed order */                                                             \
    ptrdiff_t w, l;                                                                              \
    for (w = NL / 2; w >= 1; w /= 2)                                                             \
        for (l = 0; l < w; l++) acc[l] += acc[l + w];                                            \
    return acc[0] + tail;                                                                        \
}                                                                                                \
static inline double fl_row_expsum_##SUF(const T* x, T* g, ptrdiff_t n, T shift, const T* pf) {  \
    /* in chunks of FL_BLK: a plain loop of exps (into g, or a stack buffer for the loss      \
     * alone), then the chunk summed in NL lanes of T (FL_BLK/NL terms of at most 1 each),      \
     * folded into NL double lanes; the order is fixed by n alone. */                         \
    T buf[FL_BLK];                                                                               \
    double acc[NL];                                                                              \
    double tail = 0.0;                                                                           \
    ptrdiff_t j = 0, k, l;                                                                       \
    if (n < 2 * NL) { /* short rows: a vectorised exp loop, then a plain sum, no lane set-up */   \
        T* d = g != NULL ? g : buf;                                                              \
        FL_IVDEP                                                                                 \
        for (j = 0; j < n; j++) d[j] = EXP(x[j] - shift);                                        \
        for (j = 0; j < n; j++) tail += (double)d[j];                                            \
        return tail;                                                                             \
    }                                                                                            \
    for (l = 0; l < NL; l++) acc[l] = 0.0;                                                       \
    while (j < n) {                                                                              \
        ptrdiff_t m = n - j < FL_BLK ? n - j : FL_BLK;                                           \
        T* d = g != NULL ? g + j : buf;                                                          \
        const T* xs = x + j;                                                                     \
        T part[NL];                                                                              \
        if (pf != NULL) fl_prefetch_l2(pf + j, m * (ptrdiff_t)sizeof(T));                         \
        FL_IVDEP                                                                                 \
        for (k = 0; k < m; k++) d[k] = EXP(xs[k] - shift);                                       \
        for (l = 0; l < NL; l++) part[l] = 0;                                                    \
        for (k = 0; k + NL <= m; k += NL)                                                        \
            for (l = 0; l < NL; l++) part[l] += d[k + l];                                        \
        for (l = 0; l < NL; l++) acc[l] += (double)part[l];                                      \
        for (; k < m; k++) tail += (double)d[k];                                                 \
        j += m;                                                                                  \
    }                                                                                            \
    return fl_lanes_total_##SUF(acc, tail);                                                      \
}                                                                                                \
static inline void fl_row_scale_##SUF(T* g, ptrdiff_t n, T k) {                                  \
    ptrdiff_t j;                                                                                 \
    FL_IVDEP                                                                                     \
    for (j = 0; j < n; j++) g[j] = g[j] * k;                                                     \
}                                                                                                \
static inline void fl_row_scale_sub_##SUF(T* g, ptrdiff_t n, T k, const T* w, T k2) {            \
    ptrdiff_t j;                                                                                 \
    if (w == NULL) {                                                                             \
        for (j = 0; j < n; j++) g[j] = g[j] * k - k2;                                            \
    } else {                                                                                     \
        FL_IVDEP                                                                                 \
        for (j = 0; j < n; j++) g[j] = g[j] * k - w[j] * k2;                                     \
    }                                                                                            \
}                                                                                                \
static inline double fl_row_sum_##SUF(const T* x, ptrdiff_t n) {                                 \
    double acc[NL];                                                                              \
    double tail = 0.0;                                                                           \
    ptrdiff_t j = 0, l;                                                                          \
    for (l = 0; l < NL; l++) acc[l] = 0.0;                                                       \
    for (; j + NL <= n; j += NL)                                                                 \
        for (l = 0; l < NL; l++) acc[l] += (double)x[j + l];                                     \
    for (; j < n; j++) tail += (double)x[j];                                                     \
    return fl_lanes_total_##SUF(acc, tail);                                                      \
}                                                                                                \
static inline double fl_row_dot_##SUF(const T* w, const T* x, ptrdiff_t n) {                     \
    /* terms with w_j == 0 contribute 0 even where x_j is infinite */                            \
    double acc[NL];                                                                              \
    double tail = 0.0;                                                                           \
    ptrdiff_t j = 0, l;                                                                          \
    for (l = 0; l < NL; l++) acc[l] = 0.0;                                                       \
    for (; j + NL <= n; j += NL)                                                                 \
        for (l = 0; l < NL; l++)                                                                 \
            acc[l] += w[j + l] == 0 ? 0.0 : (double)w[j + l] * (double)x[j + l];                 \
    for (; j < n; j++) tail += w[j] == 0 ? 0.0 : (double)w[j] * (double)x[j];                    \
    return fl_lanes_total_##SUF(acc, tail);                                                      \
}

FL_ROW_FUNCS(float, f, fl_expf_nonpos, 16)
FL_ROW_FUNCS(double, d, fl_exp_nonpos, 8)

#endif /* FASTLOSS_ROWS_H */
