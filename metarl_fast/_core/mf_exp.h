/* mf_exp.h -- exp(x) for x <= 0 that gcc/clang vectorise at -O3 without -ffast-math.
 *
 * Why not libm: scalar exp costs ~5 ns and never vectorises without -ffast-math, which we refuse
 * (it breaks NaN handling and reproducibility).  This is the classic Cody-Waite reduction
 * x = k ln2 + r, |r| <= ln2/2, a degree-13 Taylor polynomial (truncation < 5e-18) and a scale by
 * 2^k built from the bits of the rounded value; accurate to ~1 ulp.  Every step is a plain IEEE
 * operation in a fixed order, so the NumPy twin `metarl_fast.reference._math.exp_nonpos` gives
 * bit-identical results (the build passes -ffp-contract=off so no FMA changes the rounding).
 * x < -708 returns 0 (exact exp < 3.3e-308); -inf returns 0.  NaN must not be passed in.
 */
#ifndef METARL_FAST_MF_EXP_H
#define METARL_FAST_MF_EXP_H
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#define MF_EXP_LOWEST (-708.0)
#define MF_LOG2E 1.44269504088896338700e+00
#define MF_SHIFTER 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */
#define MF_LN2_HI 6.93147180369123816490e-01
#define MF_LN2_LO 1.90821492927058770002e-10
#define MF_SHIFTER_BITS 0x4338000000000000ULL

/* Bits of -708.0.  For x <= 0 (sign bit set, incl. -inf), "x < -708" is "bits(x) > this" as an
 * unsigned integer; selecting with integer masks keeps the loop free of branches, which gcc would
 * not if-convert on doubles without -fno-trapping-math. */
#define MF_EXP_LOWEST_BITS 0xC086200000000000ULL

static inline double mf_exp_nonpos(double x)
{
    uint64_t xb, lb = MF_EXP_LOWEST_BITS;
    memcpy(&xb, &x, sizeof xb);
    uint64_t under = (uint64_t)0 - (uint64_t)(xb > lb);   /* all ones if x < -708 */
    uint64_t cb = (xb & ~under) | (lb & under);
    double xc;
    memcpy(&xc, &cb, sizeof xc);
    double t = xc * MF_LOG2E + MF_SHIFTER;
    double n = t - MF_SHIFTER;
    double r = (xc - n * MF_LN2_HI) - n * MF_LN2_LO;
    double p = 1.6059043836821613e-10;      /* 1/13! */
    p = p * r + 2.08767569878681e-09;        /* 1/12! */
    p = p * r + 2.505210838544172e-08;       /* 1/11! */
    p = p * r + 2.755731922398589e-07;       /* 1/10! */
    p = p * r + 2.7557319223985893e-06;      /* 1/9!  */
    p = p * r + 2.48015873015873e-05;        /* 1/8!  */
    p = p * r + 0.0001984126984126984;       /* 1/7!  */
    p = p * r + 0.001388888888888889;        /* 1/6!  */
    p = p * r + 0.008333333333333333;        /* 1/5!  */
    p = p * r + 0.041666666666666664;        /* 1/4!  */
    p = p * r + 0.16666666666666666;         /* 1/3!  */
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - MF_SHIFTER_BITS + 1023ULL) << 52;
    double scale;
    memcpy(&scale, &sb, sizeof scale);
    double y = p * scale;
    uint64_t yb;
    memcpy(&yb, &y, sizeof yb);
    yb &= ~under;
    memcpy(&y, &yb, sizeof y);
    return y;
}

/* y[i] = exp(x[i]) for n values x[i] <= 0; x and y may alias.  Built twice on x86-64 Linux
 * (AVX2 and baseline SSE2) and picked at load time: the same IEEE operations either way. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
static void mf_exp_nonpos_block(const double *x, double *y, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        y[i] = mf_exp_nonpos(x[i]);
    }
}

#endif
