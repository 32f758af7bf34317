/* mlp_kernels.h -- dense kernels of _core/mlp.pyx (no BLAS): a register-tiled matrix product
 * whose sums run in a fixed order, and the tanh both backends share.
 *
 * mf_mlp_gemm: C[m, n] = init[m, n] + A[m, 0] B[0, n] + A[m, 1] B[1, n] + ... in that order
 * (init = bias[n], 0, or C's own value).  With -ffp-contract=off (the build's flag) every
 * partial sum rounds as in the NumPy reference's `z += a[:, j:j+1] * w[j]`, so the forward pass
 * is bit-identical; the tiling only decides which independent sums run side by side.  Tiles:
 * 4 rows x 8 columns (8 four-double accumulators: each B row segment loaded once per 4 rows, each
 * A value broadcast once per 8 columns), one row x 32 columns for leftover rows (B = 1 from an
 * agent loop: 8 independent accumulators hide the add latency), and 8 rows x 2 columns for the
 * last N % 4 columns (the 2-action logits layer).
 *
 * mf_mlp_tanh: bit-identical to metarl_fast.reference.mlp.tanh: tanh|x| = -em / (2 + em) with
 * em = expm1(-2|x|) (Cody-Waite reduction, degree-13 Taylor polynomial in Estrin's scheme, so the
 * dependency chain is short), sign copied from x; within 2 ulp.  One branch-free path for every x,
 * so the loop vectorises; built for AVX2 and baseline SSE2 (the same IEEE operations either way).
 */
#ifndef METARL_FAST_MLP_KERNELS_H
#define METARL_FAST_MLP_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MF_MLP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MF_MLP_CLONES
#endif

/* the vector helpers below are always inlined: no vector crosses a call (quiet -Wpsabi) */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef double mf_mlp_v4d __attribute__((vector_size(32), aligned(8), may_alias));
typedef double mf_mlp_v2d __attribute__((vector_size(16), aligned(8), may_alias));

#define MF_MLP_INIT_ZERO 0
#define MF_MLP_INIT_BIAS 1
#define MF_MLP_INIT_ACC 2

static inline __attribute__((always_inline)) mf_mlp_v4d mf_mlp_load(const double *p) { return *(const mf_mlp_v4d *)p; }
static inline __attribute__((always_inline)) void mf_mlp_store(double *p, mf_mlp_v4d v) { *(mf_mlp_v4d *)p = v; }
static inline __attribute__((always_inline)) mf_mlp_v2d mf_mlp_load2(const double *p) { return *(const mf_mlp_v2d *)p; }
static inline __attribute__((always_inline)) void mf_mlp_store2(double *p, mf_mlp_v2d v) { *(mf_mlp_v2d *)p = v; }

static inline __attribute__((always_inline)) mf_mlp_v4d mf_mlp_init4(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    mf_mlp_v4d zero = {0.0, 0.0, 0.0, 0.0};
    if (mode == MF_MLP_INIT_BIAS) return mf_mlp_load(bias + n);
    if (mode == MF_MLP_INIT_ACC) return mf_mlp_load(c + n);
    return zero;
}

static inline __attribute__((always_inline)) mf_mlp_v2d mf_mlp_init2(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    mf_mlp_v2d zero = {0.0, 0.0};
    if (mode == MF_MLP_INIT_BIAS) return mf_mlp_load2(bias + n);
    if (mode == MF_MLP_INIT_ACC) return mf_mlp_load2(c + n);
    return zero;
}

static inline __attribute__((always_inline)) double mf_mlp_init1(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    if (mode == MF_MLP_INIT_BIAS) return bias[n];
    if (mode == MF_MLP_INIT_ACC) return c[n];
    return 0.0;
}

/* The products below are written `b * a[k]` (vector times scalar): gcc broadcasts a[k] straight
 * from memory (a load, no shuffle on the arithmetic ports).  The value is the same as
 * splat(a[k]) * b: each lane is the one IEEE product. */

/* Rows [m0, m0 + 4) x columns [0, n_end) (n_end a multiple of 4) of mf_mlp_gemm. */
static inline __attribute__((always_inline)) void mf_mlp_tile4(
    const double *A, ptrdiff_t sam, ptrdiff_t sak, const double *B, ptrdiff_t ldb,
    const double *bias, double *C, ptrdiff_t ldc, ptrdiff_t m, ptrdiff_t K, ptrdiff_t n_end, int mode)
{
    const double *a;
    double *c0 = C + m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
    ptrdiff_t n = 0, k;
    for (; n + 8 <= n_end; n += 8) {
        mf_mlp_v4d s00 = mf_mlp_init4(mode, bias, c0, n), s01 = mf_mlp_init4(mode, bias, c0, n + 4);
        mf_mlp_v4d s10 = mf_mlp_init4(mode, bias, c1, n), s11 = mf_mlp_init4(mode, bias, c1, n + 4);
        mf_mlp_v4d s20 = mf_mlp_init4(mode, bias, c2, n), s21 = mf_mlp_init4(mode, bias, c2, n + 4);
        mf_mlp_v4d s30 = mf_mlp_init4(mode, bias, c3, n), s31 = mf_mlp_init4(mode, bias, c3, n + 4);
        const double *b = B + n;
        for (k = 0, a = A + m * sam; k < K; k++, b += ldb, a += sak) {
            mf_mlp_v4d b0 = mf_mlp_load(b), b1 = mf_mlp_load(b + 4);
            s00 += b0 * a[0]; s01 += b1 * a[0];
            s10 += b0 * a[sam]; s11 += b1 * a[sam];
            s20 += b0 * a[2 * sam]; s21 += b1 * a[2 * sam];
            s30 += b0 * a[3 * sam]; s31 += b1 * a[3 * sam];
        }
        mf_mlp_store(c0 + n, s00); mf_mlp_store(c0 + n + 4, s01);
        mf_mlp_store(c1 + n, s10); mf_mlp_store(c1 + n + 4, s11);
        mf_mlp_store(c2 + n, s20); mf_mlp_store(c2 + n + 4, s21);
        mf_mlp_store(c3 + n, s30); mf_mlp_store(c3 + n + 4, s31);
    }
    for (; n + 4 <= n_end; n += 4) {
        mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n), s1 = mf_mlp_init4(mode, bias, c1, n);
        mf_mlp_v4d s2 = mf_mlp_init4(mode, bias, c2, n), s3 = mf_mlp_init4(mode, bias, c3, n);
        const double *b = B + n;
        for (k = 0, a = A + m * sam; k < K; k++, b += ldb, a += sak) {
            mf_mlp_v4d b0 = mf_mlp_load(b);
            s0 += b0 * a[0]; s1 += b0 * a[sam]; s2 += b0 * a[2 * sam]; s3 += b0 * a[3 * sam];
        }
        mf_mlp_store(c0 + n, s0); mf_mlp_store(c1 + n, s1);
        mf_mlp_store(c2 + n, s2); mf_mlp_store(c3 + n, s3);
    }
}

/* Row m x columns [0, n_end) (n_end a multiple of 4). */
static inline __attribute__((always_inline)) void mf_mlp_tile1(
    const double *A, ptrdiff_t sam, ptrdiff_t sak, const double *B, ptrdiff_t ldb,
    const double *bias, double *C, ptrdiff_t ldc, ptrdiff_t m, ptrdiff_t K, ptrdiff_t n_end, int mode)
{
    const double *a0 = A + m * sam;
    double *c0 = C + m * ldc;
    ptrdiff_t n = 0, k;
    for (; n + 32 <= n_end; n += 32) {
        mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n), s1 = mf_mlp_init4(mode, bias, c0, n + 4);
        mf_mlp_v4d s2 = mf_mlp_init4(mode, bias, c0, n + 8), s3 = mf_mlp_init4(mode, bias, c0, n + 12);
        mf_mlp_v4d s4 = mf_mlp_init4(mode, bias, c0, n + 16), s5 = mf_mlp_init4(mode, bias, c0, n + 20);
        mf_mlp_v4d s6 = mf_mlp_init4(mode, bias, c0, n + 24), s7 = mf_mlp_init4(mode, bias, c0, n + 28);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            double x = a0[k * sak];
            s0 += mf_mlp_load(b) * x; s1 += mf_mlp_load(b + 4) * x;
            s2 += mf_mlp_load(b + 8) * x; s3 += mf_mlp_load(b + 12) * x;
            s4 += mf_mlp_load(b + 16) * x; s5 += mf_mlp_load(b + 20) * x;
            s6 += mf_mlp_load(b + 24) * x; s7 += mf_mlp_load(b + 28) * x;
        }
        mf_mlp_store(c0 + n, s0); mf_mlp_store(c0 + n + 4, s1);
        mf_mlp_store(c0 + n + 8, s2); mf_mlp_store(c0 + n + 12, s3);
        mf_mlp_store(c0 + n + 16, s4); mf_mlp_store(c0 + n + 20, s5);
        mf_mlp_store(c0 + n + 24, s6); mf_mlp_store(c0 + n + 28, s7);
    }
    for (; n + 16 <= n_end; n += 16) {
        mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n), s1 = mf_mlp_init4(mode, bias, c0, n + 4);
        mf_mlp_v4d s2 = mf_mlp_init4(mode, bias, c0, n + 8), s3 = mf_mlp_init4(mode, bias, c0, n + 12);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            double x = a0[k * sak];
            s0 += mf_mlp_load(b) * x; s1 += mf_mlp_load(b + 4) * x;
            s2 += mf_mlp_load(b + 8) * x; s3 += mf_mlp_load(b + 12) * x;
        }
        mf_mlp_store(c0 + n, s0); mf_mlp_store(c0 + n + 4, s1);
        mf_mlp_store(c0 + n + 8, s2); mf_mlp_store(c0 + n + 12, s3);
    }
    for (; n + 4 <= n_end; n += 4) {
        mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) s0 += mf_mlp_load(b) * a0[k * sak];
        mf_mlp_store(c0 + n, s0);
    }
}

/* Rows [m, m + n_rows) (n_rows <= 8) x columns [n0, N) (N - n0 < 4): pairs of columns in
 * two-double vectors, the last odd column in scalars; up to 8 independent sums per step. */
static inline __attribute__((always_inline)) void mf_mlp_narrow(
    const double *A, ptrdiff_t sam, ptrdiff_t sak, const double *B, ptrdiff_t ldb,
    const double *bias, double *C, ptrdiff_t ldc, ptrdiff_t m, ptrdiff_t n_rows, ptrdiff_t K,
    ptrdiff_t n0, ptrdiff_t N, int mode)
{
    ptrdiff_t n = n0, k, i;
    const double *a = A + m * sam, *ak;
    double *c = C + m * ldc;
    if (n_rows == 8) {
        for (; n + 2 <= N; n += 2) {
            mf_mlp_v2d s0 = mf_mlp_init2(mode, bias, c, n), s1 = mf_mlp_init2(mode, bias, c + ldc, n);
            mf_mlp_v2d s2 = mf_mlp_init2(mode, bias, c + 2 * ldc, n);
            mf_mlp_v2d s3 = mf_mlp_init2(mode, bias, c + 3 * ldc, n);
            mf_mlp_v2d s4 = mf_mlp_init2(mode, bias, c + 4 * ldc, n);
            mf_mlp_v2d s5 = mf_mlp_init2(mode, bias, c + 5 * ldc, n);
            mf_mlp_v2d s6 = mf_mlp_init2(mode, bias, c + 6 * ldc, n);
            mf_mlp_v2d s7 = mf_mlp_init2(mode, bias, c + 7 * ldc, n);
            const double *b = B + n;
            for (k = 0, ak = a; k < K; k++, b += ldb, ak += sak) {
                mf_mlp_v2d b0 = mf_mlp_load2(b);
                s0 += b0 * ak[0]; s1 += b0 * ak[sam];
                s2 += b0 * ak[2 * sam]; s3 += b0 * ak[3 * sam];
                s4 += b0 * ak[4 * sam]; s5 += b0 * ak[5 * sam];
                s6 += b0 * ak[6 * sam]; s7 += b0 * ak[7 * sam];
            }
            mf_mlp_store2(c + n, s0); mf_mlp_store2(c + ldc + n, s1);
            mf_mlp_store2(c + 2 * ldc + n, s2); mf_mlp_store2(c + 3 * ldc + n, s3);
            mf_mlp_store2(c + 4 * ldc + n, s4); mf_mlp_store2(c + 5 * ldc + n, s5);
            mf_mlp_store2(c + 6 * ldc + n, s6); mf_mlp_store2(c + 7 * ldc + n, s7);
        }
        if (n < N) {
            double s[8];
            for (i = 0; i < 8; i++) s[i] = mf_mlp_init1(mode, bias, c + i * ldc, n);
            for (k = 0; k < K; k++) {
                double b0 = B[k * ldb + n];
                for (i = 0; i < 8; i++) s[i] += a[i * sam + k * sak] * b0;
            }
            for (i = 0; i < 8; i++) c[i * ldc + n] = s[i];
        }
        return;
    }
    for (i = 0; i < n_rows; i++, a += sam, c += ldc) {
        for (n = n0; n + 2 <= N; n += 2) {
            mf_mlp_v2d s0 = mf_mlp_init2(mode, bias, c, n);
            const double *b = B + n;
            for (k = 0; k < K; k++, b += ldb) s0 += mf_mlp_load2(b) * a[k * sak];
            mf_mlp_store2(c + n, s0);
        }
        if (n < N) {
            double s0 = mf_mlp_init1(mode, bias, c, n);
            for (k = 0; k < K; k++) s0 += a[k * sak] * B[k * ldb + n];
            c[n] = s0;
        }
    }
}

/* C (M x N, row stride ldc) = init + A (M x K) B (K x N, row stride ldb), with A[m, k] at
 * A[m * sam + k * sak]: (sam, sak) = (lda, 1) for a row-major A, (1, lda) for the transpose of a
 * row-major (K x M) matrix (then a 4-row tile reads 4 neighbouring values per k). */
MF_MLP_CLONES
static void mf_mlp_gemm(const double *A, ptrdiff_t sam, ptrdiff_t sak, const double *B,
                        ptrdiff_t ldb, const double *bias, double *C, ptrdiff_t ldc,
                        ptrdiff_t M, ptrdiff_t K, ptrdiff_t N, int mode)
{
    ptrdiff_t m, n4 = N - N % 4;
    if (n4 > 0) {
        for (m = 0; m + 4 <= M; m += 4)
            mf_mlp_tile4(A, sam, sak, B, ldb, bias, C, ldc, m, K, n4, mode);
        for (; m < M; m++) mf_mlp_tile1(A, sam, sak, B, ldb, bias, C, ldc, m, K, n4, mode);
    }
    if (n4 < N) {
        for (m = 0; m < M; m += 8)
            mf_mlp_narrow(A, sam, sak, B, ldb, bias, C, ldc, m, M - m < 8 ? M - m : 8, K, n4, N,
                          mode);
    }
}

/* tanh (see the top of the file and metarl_fast.reference.mlp.tanh for the same steps) */
#define MF_MLP_CLAMP_BITS 0x4034000000000000ULL /* 20.0: tanh rounds to 1 beyond 19.1 */
#define MF_MLP_INF_BITS 0x7FF0000000000000ULL
#define MF_MLP_LOG2E 1.44269504088896338700e+00
#define MF_MLP_SHIFTER 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */
#define MF_MLP_LN2_HI 6.93147180369123816490e-01
#define MF_MLP_LN2_LO 1.90821492927058770002e-10
#define MF_MLP_SHIFTER_BITS 0x4338000000000000ULL
#define MF_MLP_SIGN 0x8000000000000000ULL

static inline __attribute__((always_inline)) double mf_mlp_tanh(double x)
{
    uint64_t xb, ab, big, tb, sb, db;
    double a, y, t, n, r, r2, r4, p01, p23, p45, p67, p89, pab, q, p, s, em, d;
    memcpy(&xb, &x, sizeof xb);
    ab = xb & ~MF_MLP_SIGN;
    /* a = |x| > 20 ? 20 : |x| on the bits (NaN stays NaN): a mask, so gcc keeps it branch-free */
    big = (uint64_t)0 - (uint64_t)((ab > MF_MLP_CLAMP_BITS) & (ab <= MF_MLP_INF_BITS));
    ab = (ab & ~big) | (MF_MLP_CLAMP_BITS & big);
    memcpy(&a, &ab, sizeof a);
    y = a * -2.0;
    t = y * MF_MLP_LOG2E + MF_MLP_SHIFTER;
    n = t - MF_MLP_SHIFTER;
    r = (y - n * MF_MLP_LN2_HI) - n * MF_MLP_LN2_LO;
    /* expm1(r) = r + r^2 q(r), q = sum_{i=0..11} r^i / (i + 2)!, in Estrin's scheme */
    r2 = r * r;
    r4 = r2 * r2;
    p01 = 0.5 + r * 0.16666666666666666;
    p23 = 0.041666666666666664 + r * 0.008333333333333333;
    p45 = 0.001388888888888889 + r * 0.0001984126984126984;
    p67 = 2.48015873015873e-05 + r * 2.7557319223985893e-06;
    p89 = 2.755731922398589e-07 + r * 2.505210838544172e-08;
    pab = 2.08767569878681e-09 + r * 1.6059043836821613e-10;
    q = (p01 + r2 * p23) + r4 * ((p45 + r2 * p67) + r4 * (p89 + r2 * pab));
    p = r + r2 * q;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - MF_MLP_SHIFTER_BITS + 1023ULL) << 52;    /* 2^n, n in [-58, 0] */
    memcpy(&s, &sb, sizeof s);
    em = s * p + (s - 1.0);                             /* expm1(-2|x|) in (-1, 0] */
    d = em / (2.0 + em);                                /* -tanh|x| */
    memcpy(&db, &d, sizeof db);
    db = (db & ~MF_MLP_SIGN) | (xb & MF_MLP_SIGN);
    memcpy(&d, &db, sizeof d);
    return d;
}

/* x[i] = tanh(x[i]) (use_tanh) or relu x[i] > 0 ? x[i] : 0, in place. */
MF_MLP_CLONES
static void mf_mlp_activate(double *x, ptrdiff_t n, int use_tanh)
{
    ptrdiff_t i;
    if (use_tanh) {
        for (i = 0; i < n; i++) x[i] = mf_mlp_tanh(x[i]);
    } else {
        for (i = 0; i < n; i++) x[i] = x[i] > 0.0 ? x[i] : 0.0;
    }
}

/* x[i] *= act'(z[i]) from a[i] = act(z[i]): 1 - a^2 (tanh) or [a > 0] (relu). */
MF_MLP_CLONES
static void mf_mlp_dact(const double *a, ptrdiff_t n, int use_tanh, double *x)
{
    ptrdiff_t i;
    if (use_tanh) {
        for (i = 0; i < n; i++) x[i] = x[i] * (1.0 - a[i] * a[i]);
    } else {
        for (i = 0; i < n; i++) x[i] = a[i] > 0.0 ? x[i] : 0.0;
    }
}

/* The HVP's backward step through an activation, from a = act(z) and r_z = R(z):
 * rd = rd act'(z) + d act''(z) r_z, then d = d act'(z) (relu: act'' = 0, both masked by a > 0). */
MF_MLP_CLONES
static void mf_mlp_dact_r(const double *a, const double *r_z, ptrdiff_t n, int use_tanh,
                          double *d, double *rd)
{
    ptrdiff_t i;
    if (use_tanh) {
        for (i = 0; i < n; i++) {
            double s1 = 1.0 - a[i] * a[i], s2 = -2.0 * a[i] * s1;
            rd[i] = rd[i] * s1 + d[i] * s2 * r_z[i];
            d[i] = d[i] * s1;
        }
    } else {
        for (i = 0; i < n; i++) {
            rd[i] = a[i] <= 0.0 ? 0.0 : rd[i];
            d[i] = a[i] <= 0.0 ? 0.0 : d[i];
        }
    }
}

/* True if every x[i] is finite: the exponent field is never all ones (integer ops vectorise). */
MF_MLP_CLONES
static int mf_mlp_all_finite_f64(const double *x, ptrdiff_t n)
{
    uint64_t bad = 0, b;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        bad |= ((b & 0x7FF0000000000000ULL) + 0x0010000000000000ULL) & MF_MLP_SIGN;
    }
    return bad == 0;
}

MF_MLP_CLONES
static int mf_mlp_all_finite_f32(const float *x, ptrdiff_t n)
{
    uint32_t bad = 0, b;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        bad |= ((b & 0x7F800000U) + 0x00800000U) & 0x80000000U;
    }
    return bad == 0;
}

#endif
