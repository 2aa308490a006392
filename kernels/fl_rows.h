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
 *   fl_row_sq_dot_SUF(x, t, n, &sxx, &stt, &sxt)
 *                                        sum_j x_j^2, sum_j t_j^2, sum_j x_j t_j, in double
 *                                        (16 lanes whatever T, the same order in every build)
 *   fl_row_cosine_grad_SUF(g, st, t, x, n, nn, k, gs)
 *                                        g_j = (-t_j / nn - k x_j) gs in double, rounded once (g
 *                                        may be x: same index only); st != NULL: streamed to
 *                                        st's region instead
 */
#ifndef FASTLOSS_ROWS_H
#define FASTLOSS_ROWS_H

#include "fastloss/include/fl_vecmath.h"
#include "fl_stream.h"
#include "fl_half.h"

/* fl_sq_dot16_SUF(x, t, n, axx, att, axt): for n a multiple of 16, the 16 lane sums
 * a[l] = sum_{j = l mod 16} of x_j^2, t_j^2 and x_j t_j in double (the widened values). With
 * GCC/clang vector types (a plain lane loop over float -> double compiles to one scalar insert per
 * element); the same lanes and order either way. */
#if defined(__GNUC__) || defined(__clang__)
typedef double fl_v8d __attribute__((vector_size(64)));
typedef float fl_v8f __attribute__((vector_size(32)));
/* (statement macros, not functions: a function returning a 64-byte vector draws gcc's ABI note
 * in the builds without AVX-512) */
#define fl_load8_f(V, P)                                                                          \
    do { fl_v8f v8f_; __builtin_memcpy(&v8f_, (P), sizeof v8f_);                                  \
         (V) = __builtin_convertvector(v8f_, fl_v8d); } while (0)
#define fl_load8_d(V, P) __builtin_memcpy(&(V), (P), sizeof(fl_v8d))
#define FL_SQ_DOT16(T, SUF)                                                                       \
static inline void fl_sq_dot16_##SUF(const T* x, const T* t, ptrdiff_t n, double* axx,           \
                                     double* att, double* axt) {                                 \
    fl_v8d xx0 = {0}, xx1 = {0}, tt0 = {0}, tt1 = {0}, xt0 = {0}, xt1 = {0};                      \
    for (ptrdiff_t j = 0; j < n; j += 16) {                                                      \
        fl_v8d x0, x1, t0, t1;                                                                   \
        fl_load8_##SUF(x0, x + j);                                                               \
        fl_load8_##SUF(x1, x + j + 8);                                                           \
        fl_load8_##SUF(t0, t + j);                                                               \
        fl_load8_##SUF(t1, t + j + 8);                                                           \
        xx0 += x0 * x0;                                                                          \
        xx1 += x1 * x1;                                                                          \
        tt0 += t0 * t0;                                                                          \
        tt1 += t1 * t1;                                                                          \
        xt0 += x0 * t0;                                                                          \
        xt1 += x1 * t1;                                                                          \
    }                                                                                            \
    __builtin_memcpy(axx, &xx0, 64);                                                             \
    __builtin_memcpy(axx + 8, &xx1, 64);                                                         \
    __builtin_memcpy(att, &tt0, 64);                                                             \
    __builtin_memcpy(att + 8, &tt1, 64);                                                         \
    __builtin_memcpy(axt, &xt0, 64);                                                             \
    __builtin_memcpy(axt + 8, &xt1, 64);                                                         \
}
#else
#define FL_SQ_DOT16(T, SUF)                                                                       \
static inline void fl_sq_dot16_##SUF(const T* x, const T* t, ptrdiff_t n, double* axx,           \
                                     double* att, double* axt) {                                 \
    ptrdiff_t j, l;                                                                              \
    for (l = 0; l < 16; l++) axx[l] = att[l] = axt[l] = 0.0;                                     \
    for (j = 0; j < n; j += 16)                                                                  \
        for (l = 0; l < 16; l++) {                                                               \
            double xv = (double)x[j + l], tv = (double)t[j + l];                                 \
            axx[l] += xv * xv;                                                                   \
            att[l] += tv * tv;                                                                   \
            axt[l] += xv * tv;                                                                   \
        }                                                                                        \
}
#endif
FL_SQ_DOT16(float, f)
FL_SQ_DOT16(double, d)

/* the body of fl_row_expsum: IN(p, buf, m) gives the m inputs at p as XT (the pointer itself, or
 * for a half row the chunk converted into buf), LD(v) an input as T (v itself, or a float16
 * converted inside the loop); PFS: the bytes of an item of pf */
#define FL_ROW_IN(p, buf, m) (p)
#define FL_ROW_SAME(v) (v)
#define FL_ROW_EXPSUM_BODY(T, XT, SUF, EXP, NL, IN, LD, PFS)                                          \
{                                                                                                \
    /* in chunks of FL_BLK: a plain loop of exps (into g, or a stack buffer for the loss         \
     * alone), then the chunk summed in NL lanes of T (FL_BLK/NL terms of at most 1 each),       \
     * folded into NL double lanes; the order is fixed by n alone. */                            \
    T buf[FL_BLK], xin[FL_BLK]; /* xin: half rows, a chunk converted */                          \
    double acc[NL];                                                                              \
    double tail = 0.0;                                                                           \
    ptrdiff_t j = 0, k, l;                                                                       \
    (void)xin;                                                                                   \
    if (n < 2 * NL) { /* short rows: a vectorised exp loop, then a plain sum, no lane set-up */  \
        T* d = g != NULL ? g : buf;                                                              \
        const XT* xs = IN(x, xin, n);                                                            \
        FL_IVDEP                                                                                 \
        for (j = 0; j < n; j++) d[j] = EXP(LD(xs[j]) - shift);                                   \
        for (j = 0; j < n; j++) tail += (double)d[j];                                            \
        return tail;                                                                             \
    }                                                                                            \
    for (l = 0; l < NL; l++) acc[l] = 0.0;                                                       \
    while (j < n) {                                                                              \
        ptrdiff_t m = n - j < FL_BLK ? n - j : FL_BLK;                                           \
        T* d = g != NULL ? g + j : buf;                                                          \
        const XT* xs = IN(x + j, xin, m);                                                        \
        T part[NL];                                                                              \
        if (pf != NULL) fl_prefetch_l2((const char*)pf + j * PFS, m * PFS);              \
        FL_IVDEP                                                                                 \
        for (k = 0; k < m; k++) d[k] = EXP(LD(xs[k]) - shift);                                   \
        for (l = 0; l < NL; l++) part[l] = 0;                                                    \
        for (k = 0; k + NL <= m; k += NL)                                                        \
            for (l = 0; l < NL; l++) part[l] += d[k + l];                                        \
        for (l = 0; l < NL; l++) acc[l] += (double)part[l];                                      \
        for (; k < m; k++) tail += (double)d[k];                                                 \
        j += m;                                                                                  \
    }                                                                                            \
    return fl_lanes_total_##SUF(acc, tail);                                                      \
}

#define FL_ROW_FUNCS(T, SUF, EXP, NL)                                                            \
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
static inline double fl_row_expsum_##SUF(const T* x, T* g, ptrdiff_t n, T shift, const T* pf)  \
    FL_ROW_EXPSUM_BODY(T, T, SUF, EXP, NL, FL_ROW_IN, FL_ROW_SAME, (ptrdiff_t)sizeof(T))                               \
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
}                                                                                                \
static inline void fl_row_sq_dot_##SUF(const T* x, const T* t, ptrdiff_t n, double* sxx,         \
                                       double* stt, double* sxt) {                               \
    /* three sums in 16 double lanes each (lane l: the items j = l mod 16; float: the exact      \
     * squares and products of the widened values, no overflow at |x| ~ 3e38), the lanes folded  \
     * pairwise: the order is fixed by n alone; short rows in one plain pass */                  \
    double axx[16], att[16], axt[16];                                                            \
    double txx = 0.0, ttt = 0.0, txt = 0.0;                                                      \
    ptrdiff_t j = 0, l;                                                                          \
    if (n >= 32) {                                                                               \
        fl_sq_dot16_##SUF(x, t, n - n % 16, axx, att, axt);                                      \
        j = n - n % 16;                                                                          \
    }                                                                                            \
    for (; j < n; j++) {                                                                         \
        double xv = (double)x[j], tv = (double)t[j];                                             \
        txx += xv * xv;                                                                          \
        ttt += tv * tv;                                                                          \
        txt += xv * tv;                                                                          \
    }                                                                                            \
    if (n >= 32) {                                                                               \
        ptrdiff_t w;                                                                             \
        for (w = 8; w >= 1; w /= 2) /* pairwise, in a fixed order */                             \
            for (l = 0; l < w; l++) {                                                            \
                axx[l] += axx[l + w];                                                            \
                att[l] += att[l + w];                                                            \
                axt[l] += axt[l + w];                                                            \
            }                                                                                    \
        txx += axx[0];                                                                           \
        ttt += att[0];                                                                           \
        txt += axt[0];                                                                           \
    }                                                                                            \
    *sxx = txx;                                                                                  \
    *stt = ttt;                                                                                  \
    *sxt = txt;                                                                                  \
}                                                                                                \
static inline void fl_row_cosine_grad_##SUF(T* g, fl_streamer* st, const T* t, const T* x,       \
                                            ptrdiff_t n, double nn, double k, double gs) {       \
    /* -t_j / nn as -t_j (1 / nn) (a division per item is the loop's bottleneck), except for one \
     * class: there the two terms cancel exactly in theory and the sums are the reference's own  \
     * (one product each), so the reference's division rounds the noise as it does */            \
    ptrdiff_t j, j0, m;                                                                          \
    double r = 1.0 / nn;                                                                         \
    T buf[FL_BLK];                                                                               \
    if (n == 1) {                                                                                \
        buf[0] = (T)((-(double)t[0] / nn - k * (double)x[0]) * gs);                              \
        if (st == NULL) g[0] = buf[0];                                                           \
        else fl_streamer_put_##SUF(st, buf, 1);                                                  \
        return;                                                                                  \
    }                                                                                            \
    if (st == NULL) {                                                                            \
        FL_IVDEP                                                                                 \
        for (j = 0; j < n; j++) g[j] = (T)((-(double)t[j] * r - k * (double)x[j]) * gs);         \
        return;                                                                                  \
    }                                                                                            \
    for (j0 = 0; j0 < n; j0 += FL_BLK) { /* a chunk in a stack buffer (L1), then streamed out */ \
        m = n - j0 < FL_BLK ? n - j0 : FL_BLK;                                                   \
        for (j = 0; j < m; j++)                                                                  \
            buf[j] = (T)((-(double)t[j0 + j] * r - k * (double)x[j0 + j]) * gs);                 \
        fl_streamer_put_##SUF(st, buf, m);                                                       \
    }                                                                                            \
}

FL_ROW_FUNCS(float, f, fl_expf_nonpos, 16)
FL_ROW_FUNCS(double, d, fl_exp_nonpos, 8)

/* ---- half rows: x holds float16 / bfloat16 bits (kind, fl_half.h), converted FL_BLK items at a
 * time into a buffer in L1 as it is read (the row is never copied): the softmax passes read 2
 * bytes an item from the row instead of a float copy's 4. The values, and the order of every
 * sum, are the float functions' on the converted row.
 *   fl_row_max_hx(kind, x, n)           fl_row_max_f (a max: any order gives its value)
 *   fl_row_wdot_hx(kind, w, x, n)       fl_row_sum_f (w NULL) / fl_row_dot_f, w float
 *   fl_row_expsum_hx(kind, x, g, n, shift, pf)   fl_row_expsum_f, g float, pf half */
static inline float fl_row_max_hx(int kind, const uint16_t* x, ptrdiff_t n) {
    float buf[FL_BLK], m[64], r = -INFINITY;
    ptrdiff_t j0, k, l;
    for (l = 0; l < 64; l++) m[l] = -INFINITY;
    if (kind == FL_HALF_BF16) { /* the conversion (a shift) vectorises inside the loop */
        for (k = 0; k + 64 <= n; k += 64)
            for (l = 0; l < 64; l++) {
                float v = fl_bf16_to_float(x[k + l]);
                m[l] = v > m[l] ? v : m[l];
            }
        for (; k < n; k++) {
            float v = fl_bf16_to_float(x[k]);
            r = v > r ? v : r;
        }
        n = 0;
    }
    for (j0 = 0; j0 < n; j0 += FL_BLK) {
        ptrdiff_t mm = n - j0 < FL_BLK ? n - j0 : FL_BLK;
        fl_half_load(kind, x + j0, buf, mm);
        for (k = 0; k + 64 <= mm; k += 64)
            for (l = 0; l < 64; l++) m[l] = buf[k + l] > m[l] ? buf[k + l] : m[l];
        for (; k < mm; k++) r = buf[k] > r ? buf[k] : r;
    }
    for (l = 0; l < 64; l++) r = m[l] > r ? m[l] : r;
    return r;
}

static inline double fl_row_wdot_hx(int kind, const float* w, const uint16_t* x, ptrdiff_t n) {
    /* FL_BLK is a multiple of the 16 lanes: item j goes to lane j % 16 as in the float functions */
    float buf[FL_BLK];
    double acc[16], tail = 0.0;
    ptrdiff_t j0, k, l;
    for (l = 0; l < 16; l++) acc[l] = 0.0;
    for (j0 = 0; j0 < n; j0 += FL_BLK) {
        ptrdiff_t mm = n - j0 < FL_BLK ? n - j0 : FL_BLK;
        const float* ws = w == NULL ? NULL : w + j0;
        fl_half_load(kind, x + j0, buf, mm);
        if (ws == NULL) {
            for (k = 0; k + 16 <= mm; k += 16)
                for (l = 0; l < 16; l++) acc[l] += (double)buf[k + l];
            for (; k < mm; k++) tail += (double)buf[k];
        } else {
            for (k = 0; k + 16 <= mm; k += 16)
                for (l = 0; l < 16; l++)
                    acc[l] += ws[k + l] == 0 ? 0.0 : (double)ws[k + l] * (double)buf[k + l];
            for (; k < mm; k++) tail += ws[k] == 0 ? 0.0 : (double)ws[k] * (double)buf[k];
        }
    }
    return fl_lanes_total_f(acc, tail);
}

/* a chunk at a time converted into a buffer in L1 (measured a little faster than converting
 * inside the exp loop), except float16 without F16C, converted inside the loop */
#define FL_ROW_IN_BF16(p, buf, m) (fl_bf16_load((p), (buf), (m)), (const float*)(buf))
static inline double fl_row_expsum_bx(const uint16_t* x, float* g, ptrdiff_t n, float shift,
                                      const uint16_t* pf)
    FL_ROW_EXPSUM_BODY(float, float, f, fl_expf_nonpos, 16, FL_ROW_IN_BF16, FL_ROW_SAME, 2)
#if defined(__F16C__)
#define FL_ROW_IN_F16(p, buf, m) (fl_f16_load((p), (buf), (m)), (const float*)(buf))
static inline double fl_row_expsum_fx(const uint16_t* x, float* g, ptrdiff_t n, float shift,
                                      const uint16_t* pf)
    FL_ROW_EXPSUM_BODY(float, float, f, fl_expf_nonpos, 16, FL_ROW_IN_F16, FL_ROW_SAME, 2)
#else
static inline double fl_row_expsum_fx(const uint16_t* x, float* g, ptrdiff_t n, float shift,
                                      const uint16_t* pf)
    FL_ROW_EXPSUM_BODY(float, uint16_t, f, fl_expf_nonpos, 16, FL_ROW_IN, fl_f16_to_float_soft, 2)
#endif
static inline double fl_row_expsum_hx(int kind, const uint16_t* x, float* g, ptrdiff_t n, float shift,
                                      const uint16_t* pf) {
    return kind == FL_HALF_BF16 ? fl_row_expsum_bx(x, g, n, shift, pf) : fl_row_expsum_fx(x, g, n, shift, pf);
}

#endif /* FASTLOSS_ROWS_H */
