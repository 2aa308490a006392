/* fastloss: exp and log as branch-free C99 that gcc/clang vectorise at -O3 without -ffast-math,
 * with the exact limits (exp(-inf) = 0, exp(+inf) = inf, log(0) = -inf, NaN in, NaN out) and
 * denormal results where they belong. The same source is compiled for a baseline x86-64 (SSE2)
 * build, an AVX2+FMA build and an AVX-512 build. */
#ifndef FASTLOSS_VECMATH_H
#define FASTLOSS_VECMATH_H

#include "fl_platform.h"

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

#endif /* FASTLOSS_VECMATH_H */
