/* fastloss: what the compiler and the CPU offer -- inlining, fused multiply-add, "no aliasing"
 * loops, the build's ISA and OpenMP, and whether this CPU runs the AVX2 / AVX-512 builds.
 * Every other fastloss header includes this one. */
#ifndef FASTLOSS_PLATFORM_H
#define FASTLOSS_PLATFORM_H

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

/* 1 if this CPU (and the OS) can run the AVX2+FMA build (which also converts float16 with F16C).
 * (inline: unused where this header is included for the formulas alone) */
static inline int fl_cpu_has_avx2_fma(void) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* 1 if this CPU (and the OS) can run the AVX-512 build (F, DQ, BW, VL, plus AVX2/FMA). */
static inline int fl_cpu_has_avx512(void) {
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

/* "no loop-carried dependence": the only aliasing the kernels allow is g == x at the same index */
#if defined(__clang__)
#define FL_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FL_IVDEP _Pragma("GCC ivdep")
#else
#define FL_IVDEP
#endif

#endif /* FASTLOSS_PLATFORM_H */
