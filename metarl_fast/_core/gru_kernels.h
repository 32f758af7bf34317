/* gru_kernels.h -- dense kernels of _core/gru.pyx (no BLAS).
 *
 * mf_gru_gemm, mf_gru_tanh and mf_gru_all_finite_f64 are copies of mf_gru_gemm, mf_gru_tanh and
 * mf_gru_all_finite_f64 (mlp_kernels.h), renamed so the two headers can change independently; see
 * that header for the tiling.  The sums of mf_gru_gemm run in a fixed order,
 * C[m, n] = init[m, n] + A[m, 0] B[0, n] + A[m, 1] B[1, n] + ..., and mf_gru_tanh is bit-identical
 * to metarl_fast.reference.mlp.tanh (tests/test_gru_twins.py checks both against the reference).
 *
 * mf_gru_gemm_fma: the same blocked product for the backward pass only (gradients are not
 * bit-specified): the same code with its multiply-adds contracted to FMA in a clone for CPUs that
 * have it (one rounding per term instead of two; the baseline clone is mf_gru_gemm's arithmetic).
 * The forward pass never calls it, so logits, values, hidden states and actions keep their bits.
 *
 * mf_gru_gates / mf_gru_gates_backward: the GRU's element-wise step and its derivative, in the
 * exact operations of metarl_fast.reference.gru (one branch-free loop over the hidden units, so
 * gcc vectorises it; built for AVX2 and baseline SSE2, the same IEEE operations either way).
 */
#ifndef METARL_FAST_GRU_KERNELS_H
#define METARL_FAST_GRU_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MF_GRU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MF_GRU_CLONES
#endif

/* the vector helpers below are always inlined: no vector crosses a call (quiet -Wpsabi) */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef double mf_gru_v4d __attribute__((vector_size(32), aligned(8), may_alias));
typedef double mf_gru_v2d __attribute__((vector_size(16), aligned(8), may_alias));

#define MF_GRU_INIT_ZERO 0
#define MF_GRU_INIT_BIAS 1
#define MF_GRU_INIT_ACC 2
#ifndef MF_GRU_FMA_KB
#define MF_GRU_FMA_KB 64 /* rows of B per K panel in mf_gru_gemm_fma */
#endif

static inline __attribute__((always_inline)) mf_gru_v4d mf_gru_load(const double *p) { return *(const mf_gru_v4d *)p; }
static inline __attribute__((always_inline)) void mf_gru_store(double *p, mf_gru_v4d v) { *(mf_gru_v4d *)p = v; }
static inline __attribute__((always_inline)) mf_gru_v2d mf_gru_load2(const double *p) { return *(const mf_gru_v2d *)p; }
static inline __attribute__((always_inline)) void mf_gru_store2(double *p, mf_gru_v2d v) { *(mf_gru_v2d *)p = v; }

static inline __attribute__((always_inline)) mf_gru_v4d mf_gru_init4(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    mf_gru_v4d zero = {0.0, 0.0, 0.0, 0.0};
    if (mode == MF_GRU_INIT_BIAS) return mf_gru_load(bias + n);
    if (mode == MF_GRU_INIT_ACC) return mf_gru_load(c + n);
    return zero;
}

static inline __attribute__((always_inline)) mf_gru_v2d mf_gru_init2(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    mf_gru_v2d zero = {0.0, 0.0};
    if (mode == MF_GRU_INIT_BIAS) return mf_gru_load2(bias + n);
    if (mode == MF_GRU_INIT_ACC) return mf_gru_load2(c + n);
    return zero;
}

static inline __attribute__((always_inline)) double mf_gru_init1(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    if (mode == MF_GRU_INIT_BIAS) return bias[n];
    if (mode == MF_GRU_INIT_ACC) return c[n];
    return 0.0;
}

/* The products below are written `b * a[k]` (vector times scalar): gcc broadcasts a[k] straight
 * from memory (a load, no shuffle on the arithmetic ports).  The value is the same as
 * splat(a[k]) * b: each lane is the one IEEE product. */

/* Rows [m0, m0 + 4) x columns [0, n_end) (n_end a multiple of 4) of mf_gru_gemm. */
static inline __attribute__((always_inline)) void mf_gru_tile4(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                                const double *bias, double *C, ptrdiff_t ldc,
                                ptrdiff_t m, ptrdiff_t K, ptrdiff_t n_end, int mode)
{
    const double *a0 = A + m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
    double *c0 = C + m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
    ptrdiff_t n = 0, k;
    for (; n + 8 <= n_end; n += 8) {
        mf_gru_v4d s00 = mf_gru_init4(mode, bias, c0, n), s01 = mf_gru_init4(mode, bias, c0, n + 4);
        mf_gru_v4d s10 = mf_gru_init4(mode, bias, c1, n), s11 = mf_gru_init4(mode, bias, c1, n + 4);
        mf_gru_v4d s20 = mf_gru_init4(mode, bias, c2, n), s21 = mf_gru_init4(mode, bias, c2, n + 4);
        mf_gru_v4d s30 = mf_gru_init4(mode, bias, c3, n), s31 = mf_gru_init4(mode, bias, c3, n + 4);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            mf_gru_v4d b0 = mf_gru_load(b), b1 = mf_gru_load(b + 4);
            s00 += b0 * a0[k]; s01 += b1 * a0[k];
            s10 += b0 * a1[k]; s11 += b1 * a1[k];
            s20 += b0 * a2[k]; s21 += b1 * a2[k];
            s30 += b0 * a3[k]; s31 += b1 * a3[k];
        }
        mf_gru_store(c0 + n, s00); mf_gru_store(c0 + n + 4, s01);
        mf_gru_store(c1 + n, s10); mf_gru_store(c1 + n + 4, s11);
        mf_gru_store(c2 + n, s20); mf_gru_store(c2 + n + 4, s21);
        mf_gru_store(c3 + n, s30); mf_gru_store(c3 + n + 4, s31);
    }
    for (; n + 4 <= n_end; n += 4) {
        mf_gru_v4d s0 = mf_gru_init4(mode, bias, c0, n), s1 = mf_gru_init4(mode, bias, c1, n);
        mf_gru_v4d s2 = mf_gru_init4(mode, bias, c2, n), s3 = mf_gru_init4(mode, bias, c3, n);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            mf_gru_v4d b0 = mf_gru_load(b);
            s0 += b0 * a0[k]; s1 += b0 * a1[k]; s2 += b0 * a2[k]; s3 += b0 * a3[k];
        }
        mf_gru_store(c0 + n, s0); mf_gru_store(c1 + n, s1);
        mf_gru_store(c2 + n, s2); mf_gru_store(c3 + n, s3);
    }
}

/* Row m x columns [0, n_end) (n_end a multiple of 4). */
static inline __attribute__((always_inline)) void mf_gru_tile1(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                                const double *bias, double *C, ptrdiff_t ldc,
                                ptrdiff_t m, ptrdiff_t K, ptrdiff_t n_end, int mode)
{
    const double *a0 = A + m * lda;
    double *c0 = C + m * ldc;
    ptrdiff_t n = 0, k;
    for (; n + 32 <= n_end; n += 32) {
        mf_gru_v4d s0 = mf_gru_init4(mode, bias, c0, n), s1 = mf_gru_init4(mode, bias, c0, n + 4);
        mf_gru_v4d s2 = mf_gru_init4(mode, bias, c0, n + 8), s3 = mf_gru_init4(mode, bias, c0, n + 12);
        mf_gru_v4d s4 = mf_gru_init4(mode, bias, c0, n + 16), s5 = mf_gru_init4(mode, bias, c0, n + 20);
        mf_gru_v4d s6 = mf_gru_init4(mode, bias, c0, n + 24), s7 = mf_gru_init4(mode, bias, c0, n + 28);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            double x = a0[k];
            s0 += mf_gru_load(b) * x; s1 += mf_gru_load(b + 4) * x;
            s2 += mf_gru_load(b + 8) * x; s3 += mf_gru_load(b + 12) * x;
            s4 += mf_gru_load(b + 16) * x; s5 += mf_gru_load(b + 20) * x;
            s6 += mf_gru_load(b + 24) * x; s7 += mf_gru_load(b + 28) * x;
        }
        mf_gru_store(c0 + n, s0); mf_gru_store(c0 + n + 4, s1);
        mf_gru_store(c0 + n + 8, s2); mf_gru_store(c0 + n + 12, s3);
        mf_gru_store(c0 + n + 16, s4); mf_gru_store(c0 + n + 20, s5);
        mf_gru_store(c0 + n + 24, s6); mf_gru_store(c0 + n + 28, s7);
    }
    for (; n + 16 <= n_end; n += 16) {
        mf_gru_v4d s0 = mf_gru_init4(mode, bias, c0, n), s1 = mf_gru_init4(mode, bias, c0, n + 4);
        mf_gru_v4d s2 = mf_gru_init4(mode, bias, c0, n + 8), s3 = mf_gru_init4(mode, bias, c0, n + 12);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) {
            double x = a0[k];
            s0 += mf_gru_load(b) * x; s1 += mf_gru_load(b + 4) * x;
            s2 += mf_gru_load(b + 8) * x; s3 += mf_gru_load(b + 12) * x;
        }
        mf_gru_store(c0 + n, s0); mf_gru_store(c0 + n + 4, s1);
        mf_gru_store(c0 + n + 8, s2); mf_gru_store(c0 + n + 12, s3);
    }
    for (; n + 4 <= n_end; n += 4) {
        mf_gru_v4d s0 = mf_gru_init4(mode, bias, c0, n);
        const double *b = B + n;
        for (k = 0; k < K; k++, b += ldb) s0 += mf_gru_load(b) * a0[k];
        mf_gru_store(c0 + n, s0);
    }
}

/* Rows [m, m + n_rows) (n_rows <= 8) x columns [n0, N) (N - n0 < 4): pairs of columns in
 * two-double vectors, the last odd column in scalars; up to 8 independent sums per step. */
static inline __attribute__((always_inline)) void mf_gru_narrow(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                                 const double *bias, double *C, ptrdiff_t ldc,
                                 ptrdiff_t m, ptrdiff_t n_rows, ptrdiff_t K, ptrdiff_t n0,
                                 ptrdiff_t N, int mode)
{
    ptrdiff_t n = n0, k, i;
    const double *a = A + m * lda;
    double *c = C + m * ldc;
    if (n_rows == 8) {
        for (; n + 2 <= N; n += 2) {
            mf_gru_v2d s0 = mf_gru_init2(mode, bias, c, n), s1 = mf_gru_init2(mode, bias, c + ldc, n);
            mf_gru_v2d s2 = mf_gru_init2(mode, bias, c + 2 * ldc, n);
            mf_gru_v2d s3 = mf_gru_init2(mode, bias, c + 3 * ldc, n);
            mf_gru_v2d s4 = mf_gru_init2(mode, bias, c + 4 * ldc, n);
            mf_gru_v2d s5 = mf_gru_init2(mode, bias, c + 5 * ldc, n);
            mf_gru_v2d s6 = mf_gru_init2(mode, bias, c + 6 * ldc, n);
            mf_gru_v2d s7 = mf_gru_init2(mode, bias, c + 7 * ldc, n);
            const double *b = B + n;
            for (k = 0; k < K; k++, b += ldb) {
                mf_gru_v2d b0 = mf_gru_load2(b);
                s0 += b0 * a[k]; s1 += b0 * a[lda + k];
                s2 += b0 * a[2 * lda + k]; s3 += b0 * a[3 * lda + k];
                s4 += b0 * a[4 * lda + k]; s5 += b0 * a[5 * lda + k];
                s6 += b0 * a[6 * lda + k]; s7 += b0 * a[7 * lda + k];
            }
            mf_gru_store2(c + n, s0); mf_gru_store2(c + ldc + n, s1);
            mf_gru_store2(c + 2 * ldc + n, s2); mf_gru_store2(c + 3 * ldc + n, s3);
            mf_gru_store2(c + 4 * ldc + n, s4); mf_gru_store2(c + 5 * ldc + n, s5);
            mf_gru_store2(c + 6 * ldc + n, s6); mf_gru_store2(c + 7 * ldc + n, s7);
        }
        if (n < N) {
            double s[8];
            for (i = 0; i < 8; i++) s[i] = mf_gru_init1(mode, bias, c + i * ldc, n);
            for (k = 0; k < K; k++) {
                double b0 = B[k * ldb + n];
                for (i = 0; i < 8; i++) s[i] += a[i * lda + k] * b0;
            }
            for (i = 0; i < 8; i++) c[i * ldc + n] = s[i];
        }
        return;
    }
    for (i = 0; i < n_rows; i++, a += lda, c += ldc) {
        for (n = n0; n + 2 <= N; n += 2) {
            mf_gru_v2d s0 = mf_gru_init2(mode, bias, c, n);
            const double *b = B + n;
            for (k = 0; k < K; k++, b += ldb) s0 += mf_gru_load2(b) * a[k];
            mf_gru_store2(c + n, s0);
        }
        if (n < N) {
            double s0 = mf_gru_init1(mode, bias, c, n);
            for (k = 0; k < K; k++) s0 += a[k] * B[k * ldb + n];
            c[n] = s0;
        }
    }
}

/* C (M x N, row stride ldc) = init + A (M x K, row stride lda) B (K x N, row stride ldb). */
MF_GRU_CLONES
static void mf_gru_gemm(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                        const double *bias, double *C, ptrdiff_t ldc,
                        ptrdiff_t M, ptrdiff_t K, ptrdiff_t N, int mode)
{
    ptrdiff_t m, n4 = N - N % 4;
    if (n4 > 0) {
        for (m = 0; m + 4 <= M; m += 4) mf_gru_tile4(A, lda, B, ldb, bias, C, ldc, m, K, n4, mode);
        for (; m < M; m++) mf_gru_tile1(A, lda, B, ldb, bias, C, ldc, m, K, n4, mode);
    }
    if (n4 < N) {
        for (m = 0; m < M; m += 8)
            mf_gru_narrow(A, lda, B, ldb, bias, C, ldc, m, M - m < 8 ? M - m : 8, K, n4, N, mode);
    }
}
/* mf_gru_gemm with fused multiply-adds where the CPU has them (backward pass only; see the top).
 * The whole build has -ffp-contract=off; this function alone turns contraction on, so gcc emits
 * vfmadd for the `s += b * a` of the inlined tiles in the "fma" clone (fma implies AVX). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MF_GRU_FMA_CLONES __attribute__((target_clones("fma", "default")))
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#else
#define MF_GRU_FMA_CLONES
#endif
MF_GRU_FMA_CLONES
static void mf_gru_gemm_fma(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                            const double *bias, double *C, ptrdiff_t ldc,
                            ptrdiff_t M, ptrdiff_t K, ptrdiff_t N, int mode)
{
    /* K in panels of MF_GRU_FMA_KB rows of B, so that the panel stays in L2 while every row tile
     * of C passes over it (the weight gradients have K = the batch, B up to 768 KB); each panel
     * adds onto the partial sums the previous one stored in C (the same order of terms). */
    ptrdiff_t m, n4 = N - N % 4, k0 = 0, kb;
    do {
        kb = K - k0 < MF_GRU_FMA_KB ? K - k0 : MF_GRU_FMA_KB;
        const double *Ak = A + k0, *Bk = B + k0 * ldb;
        if (n4 > 0) {
            for (m = 0; m + 4 <= M; m += 4) mf_gru_tile4(Ak, lda, Bk, ldb, bias, C, ldc, m, kb, n4, mode);
            for (; m < M; m++) mf_gru_tile1(Ak, lda, Bk, ldb, bias, C, ldc, m, kb, n4, mode);
        }
        if (n4 < N) {
            for (m = 0; m < M; m += 8)
                mf_gru_narrow(Ak, lda, Bk, ldb, bias, C, ldc, m, M - m < 8 ? M - m : 8, kb, n4, N, mode);
        }
        mode = MF_GRU_INIT_ACC;
        k0 += kb;
    } while (k0 < K);
}
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#pragma GCC pop_options
#endif

/* tanh (see the top of the file and metarl_fast.reference.mlp.tanh for the same steps) */
#define MF_GRU_CLAMP_BITS 0x4034000000000000ULL /* 20.0: tanh rounds to 1 beyond 19.1 */
#define MF_GRU_INF_BITS 0x7FF0000000000000ULL
#define MF_GRU_LOG2E 1.44269504088896338700e+00
#define MF_GRU_SHIFTER 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */
#define MF_GRU_LN2_HI 6.93147180369123816490e-01
#define MF_GRU_LN2_LO 1.90821492927058770002e-10
#define MF_GRU_SHIFTER_BITS 0x4338000000000000ULL
#define MF_GRU_SIGN 0x8000000000000000ULL

static inline __attribute__((always_inline)) double mf_gru_tanh(double x)
{
    uint64_t xb, ab, big, tb, sb, db;
    double a, y, t, n, r, r2, r4, p01, p23, p45, p67, p89, pab, q, p, s, em, d;
    memcpy(&xb, &x, sizeof xb);
    ab = xb & ~MF_GRU_SIGN;
    /* a = |x| > 20 ? 20 : |x| on the bits (NaN stays NaN): a mask, so gcc keeps it branch-free */
    big = (uint64_t)0 - (uint64_t)((ab > MF_GRU_CLAMP_BITS) & (ab <= MF_GRU_INF_BITS));
    ab = (ab & ~big) | (MF_GRU_CLAMP_BITS & big);
    memcpy(&a, &ab, sizeof a);
    y = a * -2.0;
    t = y * MF_GRU_LOG2E + MF_GRU_SHIFTER;
    n = t - MF_GRU_SHIFTER;
    r = (y - n * MF_GRU_LN2_HI) - n * MF_GRU_LN2_LO;
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
    sb = (tb - MF_GRU_SHIFTER_BITS + 1023ULL) << 52;    /* 2^n, n in [-58, 0] */
    memcpy(&s, &sb, sizeof s);
    em = s * p + (s - 1.0);                             /* expm1(-2|x|) in (-1, 0] */
    d = em / (2.0 + em);                                /* -tanh|x| */
    memcpy(&db, &d, sizeof db);
    db = (db & ~MF_GRU_SIGN) | (xb & MF_GRU_SIGN);
    memcpy(&d, &db, sizeof d);
    return d;
}

/* True if every x[i] is finite: the exponent field is never all ones (integer ops vectorise). */
MF_GRU_CLONES
static int mf_gru_all_finite_f64(const double *x, ptrdiff_t n)
{
    uint64_t bad = 0, b;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        bad |= ((b & 0x7FF0000000000000ULL) + 0x0010000000000000ULL) & MF_GRU_SIGN;
    }
    return bad == 0;
}

/* One GRU step for n_rows rows, element-wise part (metarl_fast.reference.gru._gates):
 *   a = b_x + x W_x, g = b_h + hp W_h (n_rows x 3H each, gate blocks r | z | n),
 *   r = sig(a_r + g_r), z = sig(a_z + g_z), n = tanh(a_n + r g_n), h = (1 - z) n + z hp,
 * with sig(x) = 0.5 + 0.5 tanh(0.5 x).  trace (n_rows x 4H: r | z | n | g_n, what
 * backpropagation needs) is written unless NULL; h_out (n_rows x H) may be hp itself only when
 * trace is NULL.  (restrict lets gcc vectorise the loops without run-time alias checks.) */
static inline __attribute__((always_inline)) void
mf_gru_row_trace(const double *restrict a, const double *restrict g, const double *restrict hp,
                 ptrdiff_t H, double *restrict h_out, double *restrict tr)
{
    for (ptrdiff_t k = 0; k < H; k++) {
        double r = 0.5 + 0.5 * mf_gru_tanh(0.5 * (a[k] + g[k]));
        double z = 0.5 + 0.5 * mf_gru_tanh(0.5 * (a[H + k] + g[H + k]));
        double n = mf_gru_tanh(a[2 * H + k] + r * g[2 * H + k]);
        tr[k] = r; tr[H + k] = z; tr[2 * H + k] = n; tr[3 * H + k] = g[2 * H + k];
        h_out[k] = (1.0 - z) * n + z * hp[k];
    }
}

static inline __attribute__((always_inline)) void
mf_gru_row(const double *restrict a, const double *restrict g, const double *hp, ptrdiff_t H,
           double *h_out)
{
    for (ptrdiff_t k = 0; k < H; k++) {
        double r = 0.5 + 0.5 * mf_gru_tanh(0.5 * (a[k] + g[k]));
        double z = 0.5 + 0.5 * mf_gru_tanh(0.5 * (a[H + k] + g[H + k]));
        double n = mf_gru_tanh(a[2 * H + k] + r * g[2 * H + k]);
        h_out[k] = (1.0 - z) * n + z * hp[k];   /* reads hp[k] before writing h_out[k] */
    }
}

MF_GRU_CLONES
static void mf_gru_gates(const double *a, const double *g, const double *hp, ptrdiff_t n_rows,
                         ptrdiff_t H, double *h_out, double *trace)
{
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        if (trace != NULL)
            mf_gru_row_trace(a + i * 3 * H, g + i * 3 * H, hp + i * H, H, h_out + i * H,
                             trace + i * 4 * H);
        else
            mf_gru_row(a + i * 3 * H, g + i * 3 * H, hp + i * H, H, h_out + i * H);
    }
}

/* The derivative of mf_gru_gates for one row: given dh = dL/dh (H), the trace row and hp, writes
 * dgx = dL/da and dgh = dL/dg (3H each) and dhp = the direct part z dh of dL/dhp (H; the caller
 * adds dgh W_h^T); no two arrays overlap:
 *   dn = dh (1 - z), dz = dh (hp - n), dan = dn (1 - n^2),
 *   da_r = (dan g_n) r (1 - r), da_z = dz z (1 - z);  dgx = [da_r, da_z, dan], dgh = [da_r, da_z, dan r]. */
static inline __attribute__((always_inline)) void
mf_gru_row_backward(const double *restrict dh, const double *restrict tr,
                    const double *restrict hp, ptrdiff_t H, double *restrict dgx,
                    double *restrict dgh, double *restrict dhp)
{
    for (ptrdiff_t k = 0; k < H; k++) {
        double r = tr[k], z = tr[H + k], n = tr[2 * H + k], gn = tr[3 * H + k];
        double d = dh[k];
        double dan = (d * (1.0 - z)) * (1.0 - n * n);
        double dar = (dan * gn) * (r * (1.0 - r));
        double daz = (d * (hp[k] - n)) * (z * (1.0 - z));
        dgx[k] = dar; dgx[H + k] = daz; dgx[2 * H + k] = dan;
        dgh[k] = dar; dgh[H + k] = daz; dgh[2 * H + k] = dan * r;
        dhp[k] = d * z;
    }
}

MF_GRU_CLONES
static void mf_gru_gates_backward(const double *dh, const double *trace, const double *hp,
                                  ptrdiff_t n_rows, ptrdiff_t H, double *dgx, double *dgh,
                                  double *dhp)
{
    for (ptrdiff_t i = 0; i < n_rows; i++)
        mf_gru_row_backward(dh + i * H, trace + i * 4 * H, hp + i * H, H, dgx + i * 3 * H,
                            dgh + i * 3 * H, dhp + i * H);
}

#endif
