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

/* The shared core: x = fn ln2 + r (fn integral, |r| <= ln2/2) and p = exp(r). Written per type:
 * float's is a degree-5 polynomial of FMAs, double's a Pade form with a division. */
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

/* fl_exp<SUF> (every x) and fl_exp<SUF>_nonpos (x <= 0 or NaN): the same steps for both types,
 * stamped out per type T (suffix SUF, U its bits union) with the type's constants: MB mantissa
 * bits; MAGIC = 1.5 * 2^MB (as in the core); ONE = 2^MB + exponent bias (the mantissa of ONE + n
 * holds the biased exponent of 2^n); below LO exp(x) rounds to 0 (< 2^-150, 2^-1075), above HI
 * it overflows; NPONE = ONE + s and NPSC = 2^-s, the nonpos scaling (float s = 25, double 54).
 *   fl_exp: no clamping: outside [LO, HI] (and for +-inf) the core may give garbage or NaN,
 *   which the two selects at the end replace; NaN inputs give NaN through r and p. 2^n is built
 *   in two halves.
 *   fl_exp_nonpos (softmax's x - max): the same core and so the same values, but 2^n (n in
 *   [-150, 0]) in one step, as (p 2^(n+s)) 2^-s: p 2^(n+s) is normal (p >= 1/sqrt(2)) and exact,
 *   the multiply by 2^-s rounds once, exactly as the two-halves product does, and only where the
 *   result is subnormal. No overflow branch: 6 fewer vector operations per exp. */
#define FL_EXP_FUNCS(T, SUF, U, MB, MAGIC, ONE, LO, HI, NPONE, NPSC)                               \
FL_INLINE T fl_exp##SUF(T x) {                                                                     \
    T fn;                                                                                          \
    T p = fl_exp##SUF##_core(x, &fn);                                                              \
    T h = (fn * (T)0.5 + MAGIC) - MAGIC;                                                           \
    U s1, s2;                                                                                      \
    s1.f = h + ONE;                                                                                \
    s1.u <<= MB;                                                                                   \
    s2.f = (fn - h) + ONE;                                                                         \
    s2.u <<= MB;                                                                                   \
    T y = (p * s1.f) * s2.f;                                                                       \
    y = x < LO ? (T)0 : y;                                                                         \
    y = x > HI ? (T)INFINITY : y;                                                                  \
    return y;                                                                                      \
}                                                                                                  \
FL_INLINE T fl_exp##SUF##_nonpos(T x) {                                                            \
    T fn;                                                                                          \
    T p = fl_exp##SUF##_core(x, &fn);                                                              \
    U sc;                                                                                          \
    sc.f = fn + NPONE;                                                                             \
    sc.u <<= MB;                                                                                   \
    T y = (p * sc.f) * NPSC;                                                                       \
    return x < LO ? (T)0 : y;                                                                      \
}

/*           T       SUF U        MB  MAGIC               ONE                 LO                  HI */
FL_EXP_FUNCS(float,  f,  fl_f32u, 23, 12582912.0f,        8388735.0f,         -103.972084f,       88.7228394f,
             8388760.0f /* 2^23 + 127 + 25 */, 2.98023223876953125e-8f /* 2^-25 */)
FL_EXP_FUNCS(double,  ,  fl_f64u, 52, 6755399441055744.0, 4503599627371519.0, -745.1332191019412, 709.782712893384,
             4503599627371573.0 /* 2^52 + 1023 + 54 */, 5.5511151231257827e-17 /* 2^-54 */)

/* ---- log ----------------------------------------------------------------------------------
 * fdlibm's log (< 1 ulp), branch-free so that it vectorises: x = 2^k m, m in [sqrt(2)/2, sqrt(2)),
 * log(m) from s = f/(2+f) and the Lg1..Lg7 minimax polynomial. Subnormals are scaled by 2^54
 * first; specials by selects: log(0) = -inf, log(x<0) = NaN, log(inf) = inf, log(NaN) = NaN.
 * (float's log below has its own reduction and polynomial: no division, see there.) */
#define FL_LOG_SPECIALS(T, x, r)                                                                   \
    do {                                                                                           \
        (r) = (x) == 0 ? -(T)INFINITY : (r);                                                       \
        (r) = (x) < 0 ? (T)NAN : (r);                                                              \
        (r) = (x) == (T)INFINITY ? (x) : (r);                                                      \
        (r) = (x) != (x) ? (x) : (r);                                                              \
    } while (0)

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
    FL_LOG_SPECIALS(double, x, r);
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
    FL_LOG_SPECIALS(float, x, r);
    return r;
}

#endif /* FASTLOSS_VECMATH_H */
