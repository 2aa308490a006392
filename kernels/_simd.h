/* fastloss: vectorisable math and row primitives for the Cython kernels.
 *
 * Plain C99 written so that gcc/clang vectorise it at -O3 without -ffast-math:
 *   - fl_expf / fl_exp: branch-free exp (Cephes range reduction + polynomial), exact limits:
 *     exp(-inf) = 0, exp(+inf) = inf, exp(NaN) = NaN, denormal results where they belong.
 *   - row helpers that work on fixed "lanes" (16 floats / 8 doubles) so that the lane loop is
 *     vectorised by SLP while the order of every floating-point operation is fixed by the source:
 *     a row's result depends only on the row's data, never on threads or pointer alignment.
 * The same source is compiled for a baseline x86-64 (SSE2) build, an AVX2+FMA build and an
 * AVX-512 build.
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

/* fused multiply-add where the ISA has it (the build uses -ffp-contract=off, so a*b+c is never
 * fused implicitly); a plain a*b+c otherwise (fma() without hardware FMA is a slow libm call). */
#if defined(__FMA__) || defined(__AVX512F__)
#define FL_FMAF(a, b, c) fmaf((a), (b), (c))
#define FL_FMA(a, b, c) fma((a), (b), (c))
#else
#define FL_FMAF(a, b, c) ((a) * (b) + (c))
#define FL_FMA(a, b, c) ((a) * (b) + (c))
#endif

typedef union { float f; uint32_t u; } fl_f32u;
typedef union { double f; uint64_t u; } fl_f64u;

/* ---- exp ----------------------------------------------------------------------------------
 * x = n*ln2 + r, |r| <= ln2/2 (n by the 1.5*2^k "magic number" rounding, which vectorises on any
 * SSE2), exp(r) by Cephes' polynomial (float: ~1 ulp) or Pade form (double: ~1 ulp), and 2^n
 * built from exponent bits so that the whole range, denormals included, is exact. */

/* The shared core: x = fn ln2 + r (fn integral, |r| <= ln2/2) and p = exp(r). */
FL_INLINE float fl_expf_core(float x, float* fn_out) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float fn = FL_FMAF(x, 1.44269504088896341f, magic) - magic;
    float r = FL_FMAF(fn, -0.693359375f, x);
    r = FL_FMAF(fn, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = FL_FMAF(p, r, 1.3981999507e-3f);
    p = FL_FMAF(p, r, 8.3334519073e-3f);
    p = FL_FMAF(p, r, 4.1665795894e-2f);
    p = FL_FMAF(p, r, 1.6666665459e-1f);
    p = FL_FMAF(p, r, 5.0000001201e-1f);
    *fn_out = fn;
    return FL_FMAF(p, r * r, r) + 1.0f;
}

FL_INLINE double fl_exp_core(double x, double* fn_out) {
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double fn = FL_FMA(x, 1.4426950408889634, magic) - magic;
    double r = FL_FMA(fn, -6.93145751953125e-1, x);
    r = FL_FMA(fn, -1.42860682030941723212e-6, r);
    double rr = r * r;
    double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1);
    double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    *fn_out = fn;
    return 1.0 + 2.0 * (px / (qx - px));
}

/* No clamping: outside [lo, hi] (and for +-inf) the core may give garbage or NaN, which the two
 * selects at the end replace; NaN inputs give NaN through r and p. 2^n is built in two halves. */
FL_INLINE float fl_expf(float x) {
    const float lo = -103.972084f; /* exp(x) < 2^-150 below: rounds to 0 */
    const float hi = 88.7228394f;  /* exp(x) > FLT_MAX above */
    const float magic = 12582912.0f;
    float fn;
    float p = fl_expf_core(x, &fn);
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
    const double magic = 6755399441055744.0;
    double fn;
    double p = fl_exp_core(x, &fn);
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

/* exp(x) for x <= 0 or NaN (softmax's x - max): the same core and so the same values, but
 * 2^n (n in [-150, 0]) in one step, as (p 2^(n+25)) 2^-25: p 2^(n+25) is a normal float
 * (p >= 1/sqrt(2)) and exact, the multiply by 2^-25 rounds once, exactly as the two-halves
 * product does, and only where the result is subnormal (double: 2^(n+54), 2^-54). No overflow
 * branch: 6 fewer vector operations per exp. */
FL_INLINE float fl_expf_nonpos(float x) {
    float fn;
    float p = fl_expf_core(x, &fn);
    fl_f32u sc;
    sc.f = fn + 8388760.0f; /* 2^23 + 127 + 25 */
    sc.u <<= 23;
    float y = (p * sc.f) * 2.98023223876953125e-8f; /* 2^-25 */
    return x < -103.972084f ? 0.0f : y;
}

FL_INLINE double fl_exp_nonpos(double x) {
    double fn;
    double p = fl_exp_core(x, &fn);
    fl_f64u sc;
    sc.f = fn + 4503599627371573.0; /* 2^52 + 1023 + 54 */
    sc.u <<= 52;
    double y = (p * sc.f) * 5.5511151231257827e-17; /* 2^-54 */
    return x < -745.1332191019412 ? 0.0 : y;
}

/* ---- row primitives -----------------------------------------------------------------------
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

/* Non-temporal ("streaming") stores of a buffer: the gradient of a large problem is written once
 * and not read again by the kernel, so it bypasses the cache (no read-for-ownership of the
 * destination lines: 2 memory streams per element instead of 3, as memcpy does). Unaligned head
 * and tail elements get plain stores. fl_sfence() orders them before the kernel returns. */
#if defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#define FL_HAVE_STREAM 1
/* a software prefetch into L2 of every 64-byte line of [p, p + bytes) (never faults) */
FL_INLINE void fl_prefetch_l2(const void* p, ptrdiff_t bytes) {
    for (ptrdiff_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T1);
}
/* the same into L1 (a short distance ahead of a stream of items) */
FL_INLINE void fl_prefetch_l1(const void* p, ptrdiff_t bytes) {
    for (ptrdiff_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T0);
}
FL_INLINE void fl_sfence(void) { _mm_sfence(); }
FL_INLINE void fl_stream_f(float* dst, const float* src, ptrdiff_t n) {
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    for (; k + 16 <= n; k += 16) _mm512_stream_ps(dst + k, _mm512_loadu_ps(src + k));
#elif defined(__AVX__)
    for (; k + 8 <= n; k += 8) _mm256_stream_ps(dst + k, _mm256_loadu_ps(src + k));
#else
    for (; k + 4 <= n; k += 4) _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));
#endif
    for (; k < n; k++) dst[k] = src[k];
}
FL_INLINE void fl_stream_d(double* dst, const double* src, ptrdiff_t n) {
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    for (; k + 8 <= n; k += 8) _mm512_stream_pd(dst + k, _mm512_loadu_pd(src + k));
#elif defined(__AVX__)
    for (; k + 4 <= n; k += 4) _mm256_stream_pd(dst + k, _mm256_loadu_pd(src + k));
#else
    for (; k + 2 <= n; k += 2) _mm_stream_pd(dst + k, _mm_loadu_pd(src + k));
#endif
    for (; k < n; k++) dst[k] = src[k];
}
#else
#define FL_HAVE_STREAM 0
FL_INLINE void fl_prefetch_l2(const void* p, ptrdiff_t bytes) { (void)p; (void)bytes; }
FL_INLINE void fl_prefetch_l1(const void* p, ptrdiff_t bytes) { (void)p; (void)bytes; }
FL_INLINE void fl_sfence(void) {}
FL_INLINE void fl_stream_f(float* dst, const float* src, ptrdiff_t n) { for (ptrdiff_t k = 0; k < n; k++) dst[k] = src[k]; }
FL_INLINE void fl_stream_d(double* dst, const double* src, ptrdiff_t n) { for (ptrdiff_t k = 0; k < n; k++) dst[k] = src[k]; }
#endif

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

/* ---- streaming a contiguous region ---------------------------------------------------------
 * The gradient rows of a block of rows form one contiguous region, written once and never read
 * back: fl_streamer_put_SUF appends values to it (a row at a time) with non-temporal stores of
 * whole 64-byte lines, carrying a line's first values over to the next call, so rows of any
 * length give aligned, full-line streams (no read for ownership: 2 memory streams per element
 * instead of 3). The region's partial first and last lines get plain stores (they may share a
 * line with another block's region). fl_streamer_end_SUF writes the carried values; the
 * caller then issues fl_sfence() before the data is read by anyone. */
#define FL_LINE_ITEMS(T) ((ptrdiff_t)(64 / sizeof(T)))
typedef union {  /* one type for both element types (the Cython side is generic over them) */
    struct { float* d; ptrdiff_t head, pn; float pend[16]; } f;
    struct { double* d; ptrdiff_t head, pn; double pend[8]; } d;
} fl_streamer;

#define FL_STREAMER(T, SUF)                                                                        \
static inline void fl_streamer_begin_##SUF(fl_streamer* s, T* dst) {                              \
    s->SUF.d = dst;                                                                               \
    s->SUF.pn = 0;                                                                                \
    s->SUF.head = (ptrdiff_t)(((64 - ((uintptr_t)dst & 63)) & 63) / sizeof(T));                   \
    if (((uintptr_t)dst & (sizeof(T) - 1)) != 0) s->SUF.head = PTRDIFF_MAX; /* misaligned: plain */ \
}                                                                                                 \
static inline void fl_streamer_put_##SUF(fl_streamer* s, const T* src, ptrdiff_t n) {              \
    /* pend holds the values of [d - pn, d), the start of a line (pn > 0 only after the head) */  \
    const ptrdiff_t L = FL_LINE_ITEMS(T);                                                         \
    ptrdiff_t j = 0, k, q;                                                                        \
    for (; j < n && s->SUF.head > 0; j++, s->SUF.head--) *s->SUF.d++ = src[j];                    \
    if (j < n && s->SUF.pn > 0) {                                                                 \
        k = L - s->SUF.pn < n - j ? L - s->SUF.pn : n - j;                                        \
        for (q = 0; q < k; q++) s->SUF.pend[s->SUF.pn + q] = src[j + q];                          \
        s->SUF.pn += k;                                                                           \
        s->SUF.d += k;                                                                            \
        j += k;                                                                                   \
        if (s->SUF.pn == L) {                                                                     \
            fl_stream_##SUF(s->SUF.d - L, s->SUF.pend, L);                                        \
            s->SUF.pn = 0;                                                                        \
        }                                                                                         \
    }                                                                                             \
    k = (n - j) - (n - j) % L;                                                                    \
    if (k > 0) {                                                                                  \
        fl_stream_##SUF(s->SUF.d, src + j, k);                                                    \
        s->SUF.d += k;                                                                            \
        j += k;                                                                                   \
    }                                                                                             \
    for (; j < n; j++) {                                                                          \
        s->SUF.pend[s->SUF.pn++] = src[j];                                                        \
        s->SUF.d++;                                                                               \
    }                                                                                             \
}                                                                                                 \
static inline void fl_streamer_put_scaled_##SUF(fl_streamer* s, const T* e, ptrdiff_t n, T k,      \
                                                const T* w, T k2, ptrdiff_t y, T gy) {            \
    /* appends e_j k - w_j k2 (w NULL: - k2), with gy in place of item y, a chunk at a time */    \
    T buf[FL_BLK];                                                                                \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FL_BLK) {                                                \
        ptrdiff_t m = n - j0 < FL_BLK ? n - j0 : FL_BLK, q;                                       \
        const T* es = e + j0;                                                                     \
        if (k2 == 0) { for (q = 0; q < m; q++) buf[q] = es[q] * k; }                              \
        else if (w == NULL) { for (q = 0; q < m; q++) buf[q] = es[q] * k - k2; }                  \
        else { const T* ws = w + j0; for (q = 0; q < m; q++) buf[q] = es[q] * k - ws[q] * k2; }   \
        if (y >= j0 && y < j0 + m) buf[y - j0] = gy;                                              \
        fl_streamer_put_##SUF(s, buf, m);                                                         \
    }                                                                                             \
}                                                                                                 \
static inline void fl_streamer_end_##SUF(fl_streamer* s) {                                        \
    for (ptrdiff_t q = 0; q < s->SUF.pn; q++) s->SUF.d[q - s->SUF.pn] = s->SUF.pend[q];           \
    s->SUF.pn = 0;                                                                                \
}

FL_STREAMER(float, f)
FL_STREAMER(double, d)

/* ---- lane tiles ---------------------------------------------------------------------------
 * Rows of at most FL_LANES_C classes, FL_LANES rows side by side: t[c * FL_LANES + l] holds
 * class c of row l, so that per-row work runs across rows in vector lanes (two vectors of 16
 * floats per class: the per-block work is shared by 32 rows).
 *   fl_lanes_load_SUF(xb, C, R, t, m)   rows xb[0:R] (rows l >= R repeat row R - 1) into t, and
 *                                       m[l] = the max of row l (NaN skipped, -inf for none)
 *   fl_lanes_store_SUF(t, C, R, gb)     t back into rows gb[0:R] (nothing else written)
 * With AVX-512 the loads are gathers; the float stores are 16 x 16 transposes in registers
 * (scatters where C <= 4), the double stores scatters. Plain loops otherwise. */
#define FL_LANES 32
#define FL_LANES_C 16

#define FL_LANES_FUNCS(T, SUF)                                                                    \
static inline void fl_lanes_load_generic_##SUF(const T* xb, ptrdiff_t C, ptrdiff_t R, T* t, T* m) { \
    ptrdiff_t c, l;                                                                              \
    for (l = 0; l < FL_LANES; l++) {                                                             \
        const T* xr = xb + (l < R ? l : R - 1) * C;                                              \
        for (c = 0; c < C; c++) t[c * FL_LANES + l] = xr[c];                                     \
    }                                                                                            \
    for (l = 0; l < FL_LANES; l++) m[l] = -(T)INFINITY;                                          \
    for (c = 0; c < C; c++)                                                                      \
        for (l = 0; l < FL_LANES; l++) m[l] = t[c * FL_LANES + l] > m[l] ? t[c * FL_LANES + l] : m[l]; \
}                                                                                                \
static inline void fl_lanes_store_generic_##SUF(const T* t, ptrdiff_t C, ptrdiff_t R, T* gb) {    \
    ptrdiff_t c, l;                                                                              \
    for (l = 0; l < R; l++)                                                                      \
        for (c = 0; c < C; c++) gb[l * C + c] = t[c * FL_LANES + l];                             \
}

FL_LANES_FUNCS(float, f)
FL_LANES_FUNCS(double, d)

#if defined(__AVX512F__)
FL_INLINE __m512i fl_lane_offsets(ptrdiff_t C, ptrdiff_t R, ptrdiff_t l0) {
    /* element offset of the row of each lane l0 + l: min(l0 + l, R - 1) * C (no overflow) */
    __m512i l = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    l = _mm512_add_epi32(l, _mm512_set1_epi32((int)l0));
    return _mm512_mullo_epi32(_mm512_min_epi32(l, _mm512_set1_epi32((int)R - 1)), _mm512_set1_epi32((int)C));
}

static inline void fl_lanes_load_f(const float* xb, ptrdiff_t C, ptrdiff_t R, float* t, float* m) {
    for (ptrdiff_t l0 = 0; l0 < FL_LANES; l0 += 16) {
        __m512i off = fl_lane_offsets(C, R, l0);
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (ptrdiff_t c = 0; c < C; c++) {
            __m512 v = _mm512_i32gather_ps(off, xb + c, 4);
            _mm512_storeu_ps(t + c * FL_LANES + l0, v);
            mx = _mm512_mask_mov_ps(mx, _mm512_cmp_ps_mask(v, mx, _CMP_GT_OQ), v);
        }
        _mm512_storeu_ps(m + l0, mx);
    }
}

static inline void fl_lanes_store_f(const float* t, ptrdiff_t C, ptrdiff_t R, float* gb) {
    /* up to 4 classes: a scatter per class (one store per value); more: per 16 rows, a 16 x 16
     * transpose in registers (4 rounds of 16 shuffles whatever C; classes >= C are zeros), then
     * row l is the masked store of its first C values at gb + l C */
    __m512 a[16], b[16];
    ptrdiff_t c, l, l0;
    for (l0 = 0; l0 < R; l0 += 16) {
        ptrdiff_t n = R - l0 < 16 ? R - l0 : 16;
        if (C <= 4) {
            __m512i off = fl_lane_offsets(C, FL_LANES, l0);
            __mmask16 keep = (__mmask16)((1u << n) - 1u);
            for (c = 0; c < C; c++)
                _mm512_mask_i32scatter_ps(gb + c, keep, off, _mm512_loadu_ps(t + c * FL_LANES + l0), 4);
            continue;
        }
        for (c = 0; c < 16; c++) a[c] = c < C ? _mm512_loadu_ps(t + c * FL_LANES + l0) : _mm512_setzero_ps();
        for (c = 0; c < 16; c += 2) {
            b[c] = _mm512_unpacklo_ps(a[c], a[c + 1]);
            b[c + 1] = _mm512_unpackhi_ps(a[c], a[c + 1]);
        }
        for (c = 0; c < 16; c += 4) {
            __m512d b0 = _mm512_castps_pd(b[c]), b1 = _mm512_castps_pd(b[c + 1]);
            __m512d b2 = _mm512_castps_pd(b[c + 2]), b3 = _mm512_castps_pd(b[c + 3]);
            a[c] = _mm512_castpd_ps(_mm512_unpacklo_pd(b0, b2));
            a[c + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(b0, b2));
            a[c + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b1, b3));
            a[c + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b1, b3));
        }
        for (c = 0; c < 4; c++) {
            b[c] = _mm512_shuffle_f32x4(a[c], a[c + 4], 0x88);
            b[c + 4] = _mm512_shuffle_f32x4(a[c], a[c + 4], 0xdd);
            b[c + 8] = _mm512_shuffle_f32x4(a[c + 8], a[c + 12], 0x88);
            b[c + 12] = _mm512_shuffle_f32x4(a[c + 8], a[c + 12], 0xdd);
        }
        for (c = 0; c < 8; c++) {
            a[c] = _mm512_shuffle_f32x4(b[c], b[c + 8], 0x88);
            a[c + 8] = _mm512_shuffle_f32x4(b[c], b[c + 8], 0xdd);
        }
        for (l = 0; l < n; l++) _mm512_mask_storeu_ps(gb + (l0 + l) * C, (__mmask16)((1u << C) - 1u), a[l]);
    }
}

static inline void fl_lanes_load_d(const double* xb, ptrdiff_t C, ptrdiff_t R, double* t, double* m) {
    for (ptrdiff_t l0 = 0; l0 < FL_LANES; l0 += 8) {
        __m256i off = _mm512_castsi512_si256(fl_lane_offsets(C, R, l0));
        __m512d mx = _mm512_set1_pd(-INFINITY);
        for (ptrdiff_t c = 0; c < C; c++) {
            __m512d v = _mm512_i32gather_pd(off, xb + c, 8);
            _mm512_storeu_pd(t + c * FL_LANES + l0, v);
            mx = _mm512_mask_mov_pd(mx, _mm512_cmp_pd_mask(v, mx, _CMP_GT_OQ), v);
        }
        _mm512_storeu_pd(m + l0, mx);
    }
}

static inline void fl_lanes_store_d(const double* t, ptrdiff_t C, ptrdiff_t R, double* gb) {
    for (ptrdiff_t l0 = 0; l0 < R; l0 += 8) {
        __m256i off = _mm512_castsi512_si256(fl_lane_offsets(C, FL_LANES, l0));
        __mmask8 keep = (__mmask8)(R - l0 < 8 ? (1u << (R - l0)) - 1u : 0xffu);
        for (ptrdiff_t c = 0; c < C; c++)
            _mm512_mask_i32scatter_pd(gb + c, keep, off, _mm512_loadu_pd(t + c * FL_LANES + l0), 8);
    }
}
#else
#define fl_lanes_load_f fl_lanes_load_generic_f
#define fl_lanes_store_f fl_lanes_store_generic_f
#define fl_lanes_load_d fl_lanes_load_generic_d
#define fl_lanes_store_d fl_lanes_store_generic_d
#endif


/* ---- log ----------------------------------------------------------------------------------
 * fdlibm's log (< 1 ulp), branch-free so that it vectorises: x = 2^k m, m in [sqrt(2)/2, sqrt(2)),
 * log(m) from s = f/(2+f) and the Lg1..Lg7 minimax polynomial. Subnormals are scaled by 2^54
 * first; specials by selects: log(0) = -inf, log(x<0) = NaN, log(inf) = inf, log(NaN) = NaN. */
FL_INLINE double fl_log(double x) {
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    int sub = x < 2.2250738585072014e-308;
    double xs = sub ? x * 18014398509481984.0 : x;
    fl_f64u u, e;
    u.f = xs;
    uint64_t hx = u.u + (0x3ff0000000000000ULL - 0x3fe6a09e667f3bcdULL);
    e.u = (hx >> 52) | 0x4330000000000000ULL;          /* 2^52 + biased exponent */
    double dk = (e.f - 4503599627370496.0) - (sub ? 1077.0 : 1023.0);
    u.u = (hx & 0x000fffffffffffffULL) + 0x3fe6a09e667f3bcdULL;
    double f = u.f - 1.0;
    double hfsq = 0.5 * f * f;
    double s = f / (2.0 + f);
    double z = s * s, w = z * z;
    double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    double r = s * (hfsq + t1 + t2) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
    r = x == 0 ? -(double)INFINITY : r;
    r = x < 0 ? (double)NAN : r;
    r = x == (double)INFINITY ? x : r;
    r = x != x ? x : r;
    return r;
}

/* float log: the same reduction (x = 2^k m, m in [sqrt(2)/2, sqrt(2)), f = m - 1) with Cephes'
 * logf polynomial, log(1+f) = f - f^2/2 + f^3 P(f): no division (it vectorises at the speed
 * of its FMAs; < 1 ulp, checked over every float). fl_logf_normal: for positive normal x only
 * (no selects); fl_logf: every x, subnormals scaled by 2^25. */
FL_INLINE float fl_logf_scaled(float xs, float bias) {
    fl_f32u u;
    u.f = xs;
    uint32_t ix = u.u + (0x3f800000u - 0x3f3504f3u);
    float dk = (float)(int32_t)(ix >> 23) - bias;
    u.u = (ix & 0x007fffffu) + 0x3f3504f3u;
    float f = u.f - 1.0f;
    float z = f * f;
    float p = 7.0376836292e-2f;
    p = FL_FMAF(p, f, -1.1514610310e-1f);
    p = FL_FMAF(p, f, 1.1676998740e-1f);
    p = FL_FMAF(p, f, -1.2420140846e-1f);
    p = FL_FMAF(p, f, 1.4249322787e-1f);
    p = FL_FMAF(p, f, -1.6668057665e-1f);
    p = FL_FMAF(p, f, 2.0000714765e-1f);
    p = FL_FMAF(p, f, -2.4999993993e-1f);
    p = FL_FMAF(p, f, 3.3333331174e-1f);
    float y = FL_FMAF(p * f, z, dk * -2.12194440e-4f);
    y = FL_FMAF(-0.5f, z, y);
    return FL_FMAF(dk, 0.693359375f, f + y);
}

FL_INLINE float fl_logf_normal(float x) { return fl_logf_scaled(x, 127.0f); }

FL_INLINE float fl_logf(float x) {
    int sub = x < 1.17549435e-38f;
    float r = fl_logf_scaled(sub ? x * 33554432.0f : x, sub ? 152.0f : 127.0f);
    r = x == 0 ? -(float)INFINITY : r;
    r = x < 0 ? (float)NAN : r;
    r = x == (float)INFINITY ? x : r;
    r = x != x ? x : r;
    return r;
}

/* ---- elementwise losses ---------------------------------------------------------------------
 * Branch-free, vectorisable versions of the item formulas of fastloss/formulas.pxd (same
 * expressions, same NaN/inf results; they are checked against it by the test-suite). All work
 * in double, except the exps and logs of float inputs (FL_EW_TRANSCENDENTAL). A block [start,
 * stop) runs in chunks of FL_EW_CHUNK items: one vectorised loop computes each item's loss into
 * a buffer and its scaled gradient (rounded once) into grad, item by item (grad may be x: same
 * index only); then the chunk's losses are summed in 32 fixed double lanes: the order depends
 * only on start/stop, so sums are thread-count independent. The inputs FL_EW_AHEAD items ahead
 * are prefetched into L1 a chunk at a time; with stream (a large grad that is not x) the block's
 * gradient goes out through an fl_streamer. */
enum { FL_EW_SIGMOID_BCE = 0, FL_EW_HUBER, FL_EW_HINGE, FL_EW_MSE, FL_EW_MAE, FL_EW_KL_DIV };
#define FL_EW_CHUNK 64   /* items per chunk (measured: 64 streams 10-15 % faster than 128 or 512) */
#define FL_EW_AHEAD 1024 /* prefetch distance in items */

FL_INLINE double fl_huber_item(double d, double delta, double* g) {
    double ad = fabs(d);
    double gg = d > delta ? delta : d;
    *g = d < -delta ? -delta : gg;
    return ad <= delta ? 0.5 * d * d : delta * (ad - 0.5 * delta);
}

FL_INLINE double fl_hinge_item(double x, double t, double margin, int squared, double* g) {
    double y = t > 0 ? 1.0 : -1.0;
    double z = margin - y * x;
    double h = z <= 0 ? 0.0 : z;
    if (squared) { *g = -2.0 * h * y; return h * h; }
    *g = z > 0 ? -y : 0.0;
    return h;
}

FL_INLINE double fl_mae_item(double d, double* g) {
    double s = d < 0 ? -1.0 : d;
    *g = d > 0 ? 1.0 : s;
    return fabs(d);
}

/* The two items with exp/log, stamped out per input type T: computed in T (float inputs: 16
 * float lanes instead of 8 double ones, as PyTorch computes them in float32). */
#define FL_EW_TRANSCENDENTAL(T, SUF, EXP, EXP_NONPOS, LOG, LOG_NORMAL)                           \
FL_INLINE double fl_sigmoid_bce_item_##SUF(double x_, double t_, double w_, double pw_, double* g) { \
    /* e = exp(-|x|); sigmoid(x) = 1/(1+e) or e/(1+e); log1pexp(-x) = max(-x,0) + log1p(e),       \
     * log1p(e) = log(u) + (e - (u-1))/u with u = 1+e (u-1 exact) */                            \
    T x = (T)x_, t = (T)t_, w = (T)w_, pw = (T)pw_;                                              \
    T e = EXP_NONPOS(x > 0 ? -x : x);                                                            \
    T u = (T)1 + e;                                                                              \
    T ru = (T)1 / u;                                                                             \
    T sg = x >= 0 ? ru : e * ru;                                                                 \
    T l1p = LOG_NORMAL(u) + (e - (u - (T)1)) * ru;  /* x NaN: garbage here, NaN in every result */  \
    T mx = -x > 0 ? -x : (T)0;                                                                   \
    T lw = (T)1 + (pw - (T)1) * t;                                                               \
    sg = x != x ? x : sg;                                                                        \
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

FL_EW_TRANSCENDENTAL(float, f, fl_expf, fl_expf_nonpos, fl_logf, fl_logf_normal)
FL_EW_TRANSCENDENTAL(double, d, fl_exp, fl_exp_nonpos, fl_log, fl_log)

/* One chunk's items: the loss into lb, the gradient scaled (gscale, times gsa[i] if given) and
 * rounded to ew_T (the element type) into gj, in one vectorised loop (no double gradient buffer). */
#define FL_EW_LOOP(BODY)                                                                          \
    do {                                                                                          \
        if (gj == NULL) {                                                                         \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); (void)gi_; }                                \
        } else if (gsa == NULL) {                                                                 \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = (ew_T)(gi_ * gscale); }             \
        } else {                                                                                  \
            FL_IVDEP                                                                              \
            for (k = 0; k < m; k++) { const ptrdiff_t i = j + k; double gi_; (void)i;             \
                                      lb[k] = (BODY); gj[k] = (ew_T)(gi_ * (gscale * gsa[i])); }  \
        }                                                                                         \
    } while (0)

#define FL_EW_FUNCS(T, SUF)                                                                       \
static double fl_ew_block_##SUF(int kind, const T* x, const T* t, const T* w, const T* pw,        \
                                ptrdiff_t n_pw, double a, int flag, ptrdiff_t start,              \
                                ptrdiff_t stop, T* g, double gscale, const double* gsa, T* lo,    \
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
            FL_EW_LOOP((gi_ = 2.0 * ((double)x[i] - (double)t[i]),                                \
                        ((double)x[i] - (double)t[i]) * ((double)x[i] - (double)t[i])));          \
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

#endif /* FASTLOSS_SIMD_H */
