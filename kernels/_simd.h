/* fastloss: vectorisable math and row primitives for the Cython kernels.
 *
 * Plain C99 written so that gcc/clang vectorise it at -O3 without -ffast-math:
 *   - fl_expf / fl_exp: branch-free exp (Cephes range reduction + polynomial), exact limits:
 *     exp(-inf) = 0, exp(+inf) = inf, exp(NaN) = NaN, denormal results where they belong.
 *   - row helpers that work on fixed "lanes" (16 floats / 8 doubles) so that the lane loop is
 *     vectorised by SLP while the order of every floating-point operation is fixed by the source:
 *     a row's result depends only on the row's data, never on threads or pointer alignment.
 * The same source is compiled for a baseline x86-64 (SSE2) build and an AVX2+FMA build.
 */
#ifndef FASTLOSS_SIMD_H
#define FASTLOSS_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>

#if defined(__GNUC__) || defined(__clang__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif

/* ---- build information ------------------------------------------------------------------ */
#ifdef _OPENMP
#define FL_HAVE_OPENMP 1
#else
#define FL_HAVE_OPENMP 0
#endif

#if defined(__AVX512F__)
#define FL_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define FL_ISA_NAME "avx2"
#elif defined(__AVX__)
#define FL_ISA_NAME "avx"
#elif defined(__x86_64__) || defined(_M_X64)
#define FL_ISA_NAME "x86-64"
#else
#define FL_ISA_NAME "generic"
#endif

/* 1 if this CPU (and the OS) can run the AVX2+FMA build. */
static int fl_cpu_has_avx2_fma(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* 1 if this CPU (and the OS) can run the AVX-512 build (F, DQ, BW, VL, plus AVX2/FMA). */
static int fl_cpu_has_avx512(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return fl_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

typedef union { float f; uint32_t u; } fl_f32u;
typedef union { double f; uint64_t u; } fl_f64u;

/* ---- exp ----------------------------------------------------------------------------------
 * x = n*ln2 + r, |r| <= ln2/2 (n by the 1.5*2^k "magic number" rounding, which vectorises on any
 * SSE2), exp(r) by Cephes' polynomial (float: ~1 ulp) or Pade form (double: ~1 ulp), and 2^n
 * built from exponent bits in two halves so that the whole range, denormals included, is exact.
 * Clamps are written "x < lo ? lo : x" so that NaN passes through them unchanged. */
FL_INLINE float fl_expf(float x) {
    const float lo = -103.972084f; /* exp(x) < 2^-150 below: rounds to 0 */
    const float hi = 88.7228394f;  /* exp(x) > FLT_MAX above */
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    /* no clamping: outside [lo, hi] (and for +-inf) the arithmetic below may give garbage or NaN,
     * which the two selects at the end replace; NaN inputs give NaN through r and p. */
    float xc = x;
    float fn = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    float h = (fn * 0.5f + magic) - magic;
    fl_f32u s1, s2;
    s1.f = h + 8388735.0f; /* 2^23 + 127: the mantissa holds h + 127 */
    s1.u <<= 23;
    s2.f = (fn - h) + 8388735.0f;
    s2.u <<= 23;
    float y = (p * s1.f) * s2.f;
    y = x < lo ? 0.0f : y;
    y = x > hi ? (float)INFINITY : y;
    return y;
}

FL_INLINE double fl_exp(double x) {
    const double lo = -745.1332191019412; /* exp(x) < 2^-1075 below */
    const double hi = 709.782712893384;   /* exp(x) > DBL_MAX above */
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double xc = x; /* see fl_expf */
    double fn = (xc * 1.4426950408889634 + magic) - magic;
    double r = xc - fn * 6.93145751953125e-1;
    r = r - fn * 1.42860682030941723212e-6;
    double rr = r * r;
    double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1);
    double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    double p = 1.0 + 2.0 * (px / (qx - px));
    double h = (fn * 0.5 + magic) - magic;
    fl_f64u s1, s2;
    s1.f = h + 4503599627371519.0; /* 2^52 + 1023 */
    s1.u <<= 52;
    s2.f = (fn - h) + 4503599627371519.0;
    s2.u <<= 52;
    double y = (p * s1.f) * s2.f;
    y = x < lo ? 0.0 : y;
    y = x > hi ? (double)INFINITY : y;
    return y;
}

/* ---- row primitives -----------------------------------------------------------------------
 * FL_ROW_FUNCS(T, SUF, EXP, NL) stamps out, for element type T with NL lanes:
 *   fl_row_max_SUF(x, n)                 max of a row (NaNs are skipped; -inf for an empty row)
 *   fl_row_expsum_SUF(x, g, n, shift)    sum_j exp(x_j - shift) in double; stores the exps to g
 *                                        if g != NULL (g may be x itself: same-index only)
 *   fl_row_scale_SUF(g, n, k)            g_j *= k
 *   fl_row_scale_sub_SUF(g, n, k, w, k2) g_j = g_j*k - w_j*k2   (w == NULL: g_j*k - k2)
 *   fl_row_sum_SUF(x, n) / fl_row_dot_SUF(w, x, n)
 *                                        sum_j x_j / sum_{j: w_j != 0} w_j x_j, in double
 */
#define FL_BLK 256

/* "no loop-carried dependence": the only aliasing the kernels allow is g == x at the same index */
#if defined(__clang__)
#define FL_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FL_IVDEP _Pragma("GCC ivdep")
#else
#define FL_IVDEP
#endif

#define FL_ROW_FUNCS(T, SUF, EXP, NL)                                                             \
FL_INLINE T fl_row_max_##SUF(const T* x, ptrdiff_t n) {                                          \
    T m[NL];                                                                                     \
    ptrdiff_t j = 0, l;                                                                          \
    if (n < 2 * NL) {                                                                            \
        T r = -(T)INFINITY;                                                                      \
        for (; j < n; j++) r = x[j] > r ? x[j] : r;                                              \
        return r;                                                                                \
    }                                                                                            \
    for (l = 0; l < NL; l++) m[l] = -(T)INFINITY;                                                \
    for (; j + NL <= n; j += NL)                                                                 \
        for (l = 0; l < NL; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];                       \
    T r = -(T)INFINITY;                                                                          \
    for (; j < n; j++) r = x[j] > r ? x[j] : r;                                                  \
    for (l = 0; l < NL; l++) r = m[l] > r ? m[l] : r;                                            \
    return r;                                                                                    \
}                                                                                                \
static inline double fl_lanes_total_##SUF(double* acc, double tail) {                            \
    /* pairwise, in a fixed order */                                                             \
    ptrdiff_t w, l;                                                                              \
    for (w = NL / 2; w >= 1; w /= 2)                                                             \
        for (l = 0; l < w; l++) acc[l] += acc[l + w];                                            \
    return acc[0] + tail;                                                                        \
}                                                                                                \
static inline double fl_row_expsum_##SUF(const T* x, T* g, ptrdiff_t n, T shift) {               \
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

FL_ROW_FUNCS(float, f, fl_expf, 16)
FL_ROW_FUNCS(double, d, fl_exp, 8)

#endif /* FASTLOSS_SIMD_H */
