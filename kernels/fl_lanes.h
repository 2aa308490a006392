/* fastloss: lane tiles. Rows of at most FL_LANES_C classes, FL_LANES rows side by side:
 * t[c * FL_LANES + l] holds class c of row l, so that per-row work runs across rows in vector
 * lanes (two vectors of 16 floats per class: the per-block work is shared by 32 rows).
 *   fl_lanes_load_SUF(xb, C, R, t, m)   rows xb[0:R] (rows l >= R repeat row R - 1) into t, and
 *                                       m[l] = the max of row l (NaN skipped, -inf for none)
 *   fl_lanes_store_SUF(t, C, R, gb)     t back into rows gb[0:R] (nothing else written)
 * With AVX-512 the loads are gathers; the float stores are 16 x 16 transposes in registers
 * (scatters where C <= 4), the double stores scatters. Plain loops otherwise. */
#ifndef FASTLOSS_LANES_H
#define FASTLOSS_LANES_H

#include "fastloss/include/fl_platform.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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
FL_INLINE __m512i fl_lane_offsets_f(ptrdiff_t C, ptrdiff_t R, ptrdiff_t l0) {
    /* element offset of the row of each lane l0 + l: min(l0 + l, R - 1) * C (no overflow) */
    __m512i l = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    l = _mm512_add_epi32(l, _mm512_set1_epi32((int)l0));
    return _mm512_mullo_epi32(_mm512_min_epi32(l, _mm512_set1_epi32((int)R - 1)), _mm512_set1_epi32((int)C));
}
/* a vector of 8 doubles is gathered / scattered with 8 int32 offsets: the low half */
FL_INLINE __m256i fl_lane_offsets_d(ptrdiff_t C, ptrdiff_t R, ptrdiff_t l0) {
    return _mm512_castsi512_si256(fl_lane_offsets_f(C, R, l0));
}

/* the loads, per type: per vector of lanes (VT: 16 floats or 8 doubles; IT: their offsets),
 * a gather per class, kept in t, and the running max per lane (NaN skipped: a compare is false) */
#define FL_LANES_GATHER(T, SUF, VT, IT, PS)                                                        \
static inline void fl_lanes_load_##SUF(const T* xb, ptrdiff_t C, ptrdiff_t R, T* t, T* m) {        \
    for (ptrdiff_t l0 = 0; l0 < FL_LANES; l0 += (ptrdiff_t)(64 / sizeof(T))) {                     \
        IT off = fl_lane_offsets_##SUF(C, R, l0);                                                  \
        VT mx = _mm512_set1_##PS(-INFINITY);                                                       \
        for (ptrdiff_t c = 0; c < C; c++) {                                                        \
            VT v = _mm512_i32gather_##PS(off, xb + c, (int)sizeof(T));                             \
            _mm512_storeu_##PS(t + c * FL_LANES + l0, v);                                          \
            mx = _mm512_mask_mov_##PS(mx, _mm512_cmp_##PS##_mask(v, mx, _CMP_GT_OQ), v);           \
        }                                                                                          \
        _mm512_storeu_##PS(m + l0, mx);                                                            \
    }                                                                                              \
}

FL_LANES_GATHER(float, f, __m512, __m512i, ps)
FL_LANES_GATHER(double, d, __m512d, __m256i, pd)

static inline void fl_lanes_store_f(const float* t, ptrdiff_t C, ptrdiff_t R, float* gb) {
    /* up to 4 classes: a scatter per class (one store per value); more: per 16 rows, a 16 x 16
     * transpose in registers (4 rounds of 16 shuffles whatever C; classes >= C are zeros), then
     * row l is the masked store of its first C values at gb + l C */
    __m512 a[16], b[16];
    ptrdiff_t c, l, l0;
    for (l0 = 0; l0 < R; l0 += 16) {
        ptrdiff_t n = R - l0 < 16 ? R - l0 : 16;
        if (C <= 4) {
            __m512i off = fl_lane_offsets_f(C, FL_LANES, l0);
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

static inline void fl_lanes_store_d(const double* t, ptrdiff_t C, ptrdiff_t R, double* gb) {
    for (ptrdiff_t l0 = 0; l0 < R; l0 += 8) {
        __m256i off = fl_lane_offsets_d(C, FL_LANES, l0);
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

#endif /* FASTLOSS_LANES_H */
