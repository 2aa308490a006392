/* fastloss: how the kernels move memory. Software prefetches, and non-temporal ("streaming")
 * stores: the gradient of a large problem is written once and not read again by the kernel, so
 * it bypasses the cache (no read-for-ownership of the destination lines: 2 memory streams per
 * element instead of 3, as memcpy does). Unaligned head and tail elements get plain stores.
 * fl_sfence() orders them before the kernel returns. */
#ifndef FASTLOSS_STREAM_H
#define FASTLOSS_STREAM_H

#include "fastloss/include/fl_platform.h"

/* items per chunk of a row staged in a stack buffer (stays in L1) */
#define FL_BLK 256

/* x86-64: the SSE/AVX intrinsics; elsewhere no-op hints and plain stores */
#if defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
/* a software prefetch into L2 of every 64-byte line of [p, p + bytes) (never faults) */
FL_INLINE void fl_prefetch_l2(const void* p, ptrdiff_t bytes) {
    for (ptrdiff_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T1);
}
/* the same into L1 (a short distance ahead of a stream of items) */
FL_INLINE void fl_prefetch_l1(const void* p, ptrdiff_t bytes) {
    for (ptrdiff_t b = 0; b < bytes; b += 64) _mm_prefetch((const char*)p + b, _MM_HINT_T0);
}
FL_INLINE void fl_sfence(void) { _mm_sfence(); }
/* the widest vectors of the build: FL_SIMD(op, ps) is _mm512_op_ps, _mm256_op_ps or _mm_op_ps */
#if defined(__AVX512F__)
#define FL_SIMD(op, PS) _mm512_##op##_##PS
#define FL_SIMD_BYTES 64
#elif defined(__AVX__)
#define FL_SIMD(op, PS) _mm256_##op##_##PS
#define FL_SIMD_BYTES 32
#else
#define FL_SIMD(op, PS) _mm_##op##_##PS
#define FL_SIMD_BYTES 16
#endif
/* fl_stream_SUF(dst, src, n): dst[0:n] = src[0:n], whole vectors with non-temporal stores; one
 * body for float and double (only the items per vector and the ps/pd intrinsics differ) */
#define FL_STREAM_COPY(T, SUF, PS)                                                                 \
FL_INLINE void fl_stream_##SUF(T* dst, const T* src, ptrdiff_t n) {                                \
    const ptrdiff_t w = (ptrdiff_t)(FL_SIMD_BYTES / sizeof(T));                                    \
    ptrdiff_t k = 0;                                                                               \
    for (; k + w <= n; k += w) FL_SIMD(stream, PS)(dst + k, FL_SIMD(loadu, PS)(src + k));          \
    for (; k < n; k++) dst[k] = src[k];                                                            \
}
FL_STREAM_COPY(float, f, ps)
FL_STREAM_COPY(double, d, pd)
/* the 16-bit (half) elements: whole vectors of integers */
FL_INLINE void fl_stream_h(uint16_t* dst, const uint16_t* src, ptrdiff_t n) {
    const ptrdiff_t w = (ptrdiff_t)(FL_SIMD_BYTES / sizeof(uint16_t));
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    for (; k + w <= n; k += w) _mm512_stream_si512((void*)(dst + k), _mm512_loadu_si512((const void*)(src + k)));
#elif defined(__AVX__)
    for (; k + w <= n; k += w) _mm256_stream_si256((__m256i*)(dst + k), _mm256_loadu_si256((const __m256i*)(src + k)));
#else
    for (; k + w <= n; k += w) _mm_stream_si128((__m128i*)(dst + k), _mm_loadu_si128((const __m128i*)(src + k)));
#endif
    for (; k < n; k++) dst[k] = src[k];
}
#else
FL_INLINE void fl_prefetch_l2(const void* p, ptrdiff_t bytes) { (void)p; (void)bytes; }
FL_INLINE void fl_prefetch_l1(const void* p, ptrdiff_t bytes) { (void)p; (void)bytes; }
FL_INLINE void fl_sfence(void) {}
FL_INLINE void fl_stream_f(float* dst, const float* src, ptrdiff_t n) { for (ptrdiff_t k = 0; k < n; k++) dst[k] = src[k]; }
FL_INLINE void fl_stream_d(double* dst, const double* src, ptrdiff_t n) { for (ptrdiff_t k = 0; k < n; k++) dst[k] = src[k]; }
FL_INLINE void fl_stream_h(uint16_t* dst, const uint16_t* src, ptrdiff_t n) { for (ptrdiff_t k = 0; k < n; k++) dst[k] = src[k]; }
#endif

/* ---- streaming a contiguous region ---------------------------------------------------------
 * The gradient rows of a block of rows form one contiguous region, written once and never read
 * back: fl_streamer_put_SUF appends values to it (a row at a time) with non-temporal stores of
 * whole 64-byte lines, carrying a line's first values over to the next call, so rows of any
 * length give aligned, full-line streams (no read for ownership: 2 memory streams per element
 * instead of 3). The region's partial first and last lines get plain stores (they may share a
 * line with another block's region). fl_streamer_end_SUF writes the carried values; the
 * caller then issues fl_sfence() before the data is read by anyone. */
#define FL_LINE_ITEMS(T) ((ptrdiff_t)(64 / sizeof(T)))
typedef union {  /* one type for every element type (the Cython side is generic over them) */
    struct { float* d; ptrdiff_t head, pn; float pend[16]; } f;
    struct { double* d; ptrdiff_t head, pn; double pend[8]; } d;
    struct { uint16_t* d; ptrdiff_t head, pn; uint16_t pend[32]; } h;  /* float16, bfloat16 bits */
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
static inline void fl_streamer_end_##SUF(fl_streamer* s) {                                        \
    for (ptrdiff_t q = 0; q < s->SUF.pn; q++) s->SUF.d[q - s->SUF.pn] = s->SUF.pend[q];           \
    s->SUF.pn = 0;                                                                                \
}

FL_STREAMER(float, f)
FL_STREAMER(double, d)
FL_STREAMER(uint16_t, h)

/* FL_SCALE_SUB_INTO(DST, CVT, e, m, k, w, k2): DST_j = CVT(e_j k - w_j k2) (w NULL: - k2;
 * k2 == 0: e_j k), j < m: the softmax gradient's scaling of a chunk on its way out
 * (fl_row_scale_sub's values; CVT rounds them to the destination's type). fl_scale_sub_SUF(buf,
 * e, m, k, w, k2) stores them as they are; fl_streamer_put_scaled_SUF appends them, with gy in
 * place of item y, a chunk at a time */
#define FL_SCALE_SUB_INTO(DST, CVT, e, m, k, w, k2)                                                \
    do {                                                                                           \
        ptrdiff_t q_;                                                                              \
        if ((k2) == 0) { for (q_ = 0; q_ < (m); q_++) (DST)[q_] = CVT((e)[q_] * (k)); }            \
        else if ((w) == NULL) { for (q_ = 0; q_ < (m); q_++) (DST)[q_] = CVT((e)[q_] * (k) - (k2)); } \
        else { for (q_ = 0; q_ < (m); q_++) (DST)[q_] = CVT((e)[q_] * (k) - (w)[q_] * (k2)); }     \
    } while (0)
#define FL_SAME(v) (v)
#define FL_SCALE_SUB(T, SUF)                                                                      \
static inline void fl_scale_sub_##SUF(T* buf, const T* e, ptrdiff_t m, T k, const T* w, T k2) {   \
    FL_SCALE_SUB_INTO(buf, FL_SAME, e, m, k, w, k2);                                              \
}                                                                                                 \
static inline void fl_streamer_put_scaled_##SUF(fl_streamer* s, const T* e, ptrdiff_t n, T k,     \
                                                const T* w, T k2, ptrdiff_t y, T gy) {            \
    T buf[FL_BLK];                                                                                \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FL_BLK) {                                                \
        ptrdiff_t m = n - j0 < FL_BLK ? n - j0 : FL_BLK;                                          \
        fl_scale_sub_##SUF(buf, e + j0, m, k, w == NULL ? NULL : w + j0, k2);                     \
        if (y >= j0 && y < j0 + m) buf[y - j0] = gy;                                              \
        fl_streamer_put_##SUF(s, buf, m);                                                         \
    }                                                                                             \
}

FL_SCALE_SUB(float, f)
FL_SCALE_SUB(double, d)

#endif /* FASTLOSS_STREAM_H */
