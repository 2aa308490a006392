/* fastloss: float16 and bfloat16 <-> float32, for the kernels' half-precision paths. Half
 * arrays are uint16_t bits; a kernel converts them to float32 as it loads them (a chunk or a row
 * at a time, into a buffer that stays in cache), computes in float32 exactly as for float32
 * inputs, and rounds its results to the half type once:
 *   round to nearest even, beyond the range to +-inf, NaN stays NaN (quiet), subnormals kept.
 * float16 uses F16C (vcvtph2ps / vcvtps2ph) where the build has it (-mf16c: the AVX2 and
 * AVX-512 builds), else branch-free bit manipulation that gcc vectorises with SSE2 (the
 * baseline build); both give the same bits (NaN payloads too). bfloat16 is always integer code:
 * a load is a shift; the store rounds on the bits (vcvtneps2bf16 would flush subnormals to 0).
 *   fl_half_to_float(kind, h) / fl_float_to_half(kind, f)    one value
 *   fl_double_to_half(kind, d)         a double rounded once (a sum's mean)
 *   fl_half_load(kind, src, dst, n)    dst[0:n] = float(src[0:n])
 *   fl_half_store(kind, src, dst, n)   dst[0:n] = half(src[0:n])
 *   fl_half_put(kind, st, dst, src, n) half(src[0:n]) to dst, or appended to st's region (st not NULL)
 *   fl_half_put_scaled(kind, st, dst, e, n, k, w, k2, y, gy)
 *                                      the same for fl_scale_sub_f's e_j k - w_j k2, gy as item y
 *                                      (a float row: softmax's exps)
 * kind: FL_HALF_F16 or FL_HALF_BF16. */
#ifndef FASTLOSS_HALF_H
#define FASTLOSS_HALF_H

#include "fastloss/include/fl_vecmath.h"  /* fl_f32u */
#include "fl_stream.h"
#include <math.h>  /* fabs */
#if defined(__F16C__)
#include <immintrin.h>
#endif

#define FL_HALF_F16 1
#define FL_HALF_BF16 2

/* ---- one value, portable ------------------------------------------------------------------- */
FL_INLINE float fl_f16_to_float_soft(uint16_t h) {
    /* exponent and mantissa moved to float's place and rebiased; a subnormal (exponent 0) as
     * (2^-14 + m 2^-24) - 2^-14, exact; exponent 31 (inf, NaN) to 255, the payload kept and a
     * NaN made quiet (what vcvtph2ps gives) */
    fl_f32u o, sub;
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t e = em & 0x0f800000u;
    o.u = em + ((127u - 15u) << 23);
    sub.u = o.u + (1u << 23);
    sub.f -= 6.103515625e-05f;
    o.u = e == 0x0f800000u ? (o.u + ((128u - 16u) << 23)) | ((em & 0x007fe000u) ? 0x00400000u : 0u) : o.u;
    o.u = e == 0 ? sub.u : o.u;
    o.u |= (uint32_t)(h & 0x8000u) << 16;
    return o.f;
}

FL_INLINE uint16_t fl_float_to_f16_soft(float f) {
    /* normal results: rebias, round the 13 dropped bits to nearest even on the integer (a carry
     * moves into the exponent, 65520 and up to inf); subnormal results (|f| < 2^-14): the float
     * addition of 0.5 rounds to nearest even at 2^-24; NaN: quiet, the payload's top bits kept
     * (what vcvtps2ph gives) */
    fl_f32u v, d;
    v.f = f;
    uint32_t a = v.u & 0x7fffffffu;
    uint32_t r = (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    d.u = a;
    d.f += 0.5f;
    r = a < 0x38800000u ? d.u - 0x3f000000u : r;
    r = a >= 0x47800000u ? 0x7c00u : r;
    r = a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : r;
    return (uint16_t)(r | ((v.u >> 16) & 0x8000u));
}

FL_INLINE float fl_bf16_to_float(uint16_t h) {
    fl_f32u o;
    o.u = (uint32_t)h << 16;
    return o.f;
}

FL_INLINE uint16_t fl_float_to_bf16(float f) {
    /* round the low 16 bits to nearest even on the integer (the carry reaches the exponent: to
     * inf beyond the range; subnormals round alike); NaN: quiet, truncated */
    fl_f32u v;
    v.f = f;
    uint32_t r = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    r = (v.u & 0x7fffffffu) > 0x7f800000u ? (v.u >> 16) | 0x40u : r;
    return (uint16_t)r;
}

#if defined(__F16C__)
#define FL_F16_ROUND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
FL_INLINE float fl_f16_to_float(uint16_t h) { return _cvtsh_ss(h); }
FL_INLINE uint16_t fl_float_to_f16(float f) { return (uint16_t)_cvtss_sh(f, FL_F16_ROUND); }
#else
#define fl_f16_to_float fl_f16_to_float_soft
#define fl_float_to_f16 fl_float_to_f16_soft
#endif

FL_INLINE float fl_half_to_float(int kind, uint16_t h) {
    return kind == FL_HALF_BF16 ? fl_bf16_to_float(h) : fl_f16_to_float(h);
}

FL_INLINE uint16_t fl_float_to_half(int kind, float f) {
    return kind == FL_HALF_BF16 ? fl_float_to_bf16(f) : fl_float_to_f16(f);
}

/* A double rounded once to the half type (as NumPy's float16(d) and ml_dtypes' bfloat16(d)):
 * first to float rounding to odd (toward zero, the last bit set when inexact), which keeps the
 * float's 13+ spare bits from creating a false tie, then to the half type to nearest even. */
FL_INLINE uint16_t fl_double_to_half(int kind, double d) {
    float f = (float)d;
    if ((double)f != d && d == d) {
        fl_f32u u;
        u.f = f;
        if (fabs((double)f) > fabs(d))
            u.u -= 1;  /* rounded away from zero (to inf at most): one step back toward zero */
        u.u |= 1;
        f = u.f;
    }
    return fl_float_to_half(kind, f);
}

/* ---- arrays ---------------------------------------------------------------------------------- */
static inline void fl_f16_load(const uint16_t* src, float* dst, ptrdiff_t n) {
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(dst + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + k))));
#endif
#if defined(__F16C__)
    for (; k + 8 <= n; k += 8)
        _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + k))));
#endif
    for (; k < n; k++) dst[k] = fl_f16_to_float(src[k]);
}

static inline void fl_f16_store(const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t k = 0;
#if defined(__AVX512F__)
    for (; k + 16 <= n; k += 16)
        _mm256_storeu_si256((__m256i*)(dst + k), _mm512_cvtps_ph(_mm512_loadu_ps(src + k), FL_F16_ROUND));
#endif
#if defined(__F16C__)
    for (; k + 8 <= n; k += 8)
        _mm_storeu_si128((__m128i*)(dst + k), _mm256_cvtps_ph(_mm256_loadu_ps(src + k), FL_F16_ROUND));
#endif
    for (; k < n; k++) dst[k] = fl_float_to_f16(src[k]);
}

static inline void fl_bf16_load(const uint16_t* src, float* dst, ptrdiff_t n) {
    for (ptrdiff_t k = 0; k < n; k++) dst[k] = fl_bf16_to_float(src[k]);
}

#if defined(__AVX512BW__)
FL_INLINE __m512i fl_bf16_round16(__m512 v) {
    /* fl_float_to_bf16 on 16 lanes, the result in each lane's high half */
    __m512i u = _mm512_castps_si512(v);
    __m512i t = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
    t = _mm512_add_epi32(t, _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    return _mm512_mask_or_epi32(t, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x00400000));
}
#endif

static inline void fl_bf16_store(const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t k = 0;
#if defined(__AVX512BW__)
    /* the high halves of two vectors in one permute (gcc's own loop: about 1.4x the work) */
    const __m512i hi = _mm512_setr_epi32(0x00030001, 0x00070005, 0x000b0009, 0x000f000d, 0x00130011, 0x00170015,
                                         0x001b0019, 0x001f001d, 0x00230021, 0x00270025, 0x002b0029, 0x002f002d,
                                         0x00330031, 0x00370035, 0x003b0039, 0x003f003d);
    for (; k + 32 <= n; k += 32) {
        __m512i a = fl_bf16_round16(_mm512_loadu_ps(src + k));
        __m512i b = fl_bf16_round16(_mm512_loadu_ps(src + k + 16));
        _mm512_storeu_si512((void*)(dst + k), _mm512_permutex2var_epi16(a, hi, b));
    }
#endif
    for (; k < n; k++) dst[k] = fl_float_to_bf16(src[k]);
}

static inline void fl_half_load(int kind, const uint16_t* src, float* dst, ptrdiff_t n) {
    if (kind == FL_HALF_BF16) fl_bf16_load(src, dst, n);
    else fl_f16_load(src, dst, n);
}

static inline void fl_half_store(int kind, const float* src, uint16_t* dst, ptrdiff_t n) {
    if (kind == FL_HALF_BF16) fl_bf16_store(src, dst, n);
    else fl_f16_store(src, dst, n);
}

static inline void fl_half_put(int kind, fl_streamer* st, uint16_t* dst, const float* src, ptrdiff_t n) {
    uint16_t buf[FL_BLK];
    if (st == NULL) {
        fl_half_store(kind, src, dst, n);
        return;
    }
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FL_BLK) {
        ptrdiff_t m = n - j0 < FL_BLK ? n - j0 : FL_BLK;
        fl_half_store(kind, src + j0, buf, m);
        fl_streamer_put_h(st, buf, m);
    }
}

static inline void fl_half_put_scaled(int kind, fl_streamer* st, uint16_t* dst, const float* e, ptrdiff_t n,
                                      float k, const float* w, float k2, ptrdiff_t y, float gy) {
    /* a chunk at a time: scaled into a float buffer in L1 and converted from there with the
     * conversion's vector instructions (F16C, AVX-512), else rounded straight out of the scaling
     * loop, where gcc vectorises the portable conversion */
    float buf[FL_BLK];
    uint16_t hb[FL_BLK];
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FL_BLK) {
        ptrdiff_t m = n - j0 < FL_BLK ? n - j0 : FL_BLK;
        const float* es = e + j0;
        const float* ws = w == NULL ? NULL : w + j0;
        uint16_t* d = st == NULL ? dst + j0 : hb;
#if defined(__F16C__)
        fl_scale_sub_f(buf, es, m, k, ws, k2);
        fl_half_store(kind, buf, d, m);
#else
        if (kind == FL_HALF_BF16)
            FL_SCALE_SUB_INTO(d, fl_float_to_bf16, es, m, k, ws, k2);
        else
            FL_SCALE_SUB_INTO(d, fl_float_to_f16_soft, es, m, k, ws, k2);
#endif
        if (y >= j0 && y < j0 + m) d[y - j0] = fl_float_to_half(kind, gy);
        if (st != NULL) fl_streamer_put_h(st, hb, m);
    }
    (void)buf;
}

#endif /* FASTLOSS_HALF_H */
