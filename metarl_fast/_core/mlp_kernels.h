/* mlp_kernels.h -- dense kernels of _core/mlp.pyx (no BLAS): a register-tiled matrix product
 * whose sums run in a fixed order, and the tanh both backends share.
 *
 * mf_mlp_gemm: C[m, n] = init[m, n] + A[m, 0] B[0, n] + A[m, 1] B[1, n] + ... in that order
 * (init = bias[n], 0, or C's own value).  With -ffp-contract=off (the build's flag) every
 * partial sum rounds as in the NumPy reference's `z += a[:, j:j+1] * w[j]`, so the forward pass
 * is bit-identical.  Tiles of 4 rows x 8 columns keep 8 four-double accumulators in registers:
 * each B row segment is loaded once per 4 rows, each A value splatted once per 8 columns.
 *
 * mf_mlp_tanh: bit-identical to metarl_fast.reference.mlp.tanh (Taylor polynomial below 0.25,
 * (1 - t) / (1 + t) with t = mf_exp_nonpos(-2|x|) above), branch-free so it vectorises.
 */
#ifndef METARL_FAST_MLP_KERNELS_H
#define METARL_FAST_MLP_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include "mf_exp.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MF_MLP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MF_MLP_CLONES
#endif

/* the 4-double helpers below are always inlined: no vector crosses a call (quiet -Wpsabi) */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef double mf_mlp_v4d __attribute__((vector_size(32), aligned(8), may_alias));

#define MF_MLP_INIT_ZERO 0
#define MF_MLP_INIT_BIAS 1
#define MF_MLP_INIT_ACC 2

static inline mf_mlp_v4d mf_mlp_load(const double *p) { return *(const mf_mlp_v4d *)p; }
static inline void mf_mlp_store(double *p, mf_mlp_v4d v) { *(mf_mlp_v4d *)p = v; }
static inline mf_mlp_v4d mf_mlp_splat(double x) { mf_mlp_v4d v = {x, x, x, x}; return v; }

static inline mf_mlp_v4d mf_mlp_init4(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    if (mode == MF_MLP_INIT_BIAS) return mf_mlp_load(bias + n);
    if (mode == MF_MLP_INIT_ACC) return mf_mlp_load(c + n);
    return mf_mlp_splat(0.0);
}

static inline double mf_mlp_init1(int mode, const double *bias, const double *c, ptrdiff_t n)
{
    if (mode == MF_MLP_INIT_BIAS) return bias[n];
    if (mode == MF_MLP_INIT_ACC) return c[n];
    return 0.0;
}

/* C (M x N, row stride ldc) = init + A (M x K, row stride lda) B (K x N, row stride ldb). */
MF_MLP_CLONES
static void mf_mlp_gemm(const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb,
                        const double *bias, double *C, ptrdiff_t ldc,
                        ptrdiff_t M, ptrdiff_t K, ptrdiff_t N, int mode)
{
    ptrdiff_t m = 0, n, k;
    for (; m + 4 <= M; m += 4) {
        const double *a0 = A + m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        double *c0 = C + m * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        for (n = 0; n + 8 <= N; n += 8) {
            mf_mlp_v4d s00 = mf_mlp_init4(mode, bias, c0, n), s01 = mf_mlp_init4(mode, bias, c0, n + 4);
            mf_mlp_v4d s10 = mf_mlp_init4(mode, bias, c1, n), s11 = mf_mlp_init4(mode, bias, c1, n + 4);
            mf_mlp_v4d s20 = mf_mlp_init4(mode, bias, c2, n), s21 = mf_mlp_init4(mode, bias, c2, n + 4);
            mf_mlp_v4d s30 = mf_mlp_init4(mode, bias, c3, n), s31 = mf_mlp_init4(mode, bias, c3, n + 4);
            for (k = 0; k < K; k++) {
                const double *b = B + k * ldb + n;
                mf_mlp_v4d b0 = mf_mlp_load(b), b1 = mf_mlp_load(b + 4), x;
                x = mf_mlp_splat(a0[k]); s00 += x * b0; s01 += x * b1;
                x = mf_mlp_splat(a1[k]); s10 += x * b0; s11 += x * b1;
                x = mf_mlp_splat(a2[k]); s20 += x * b0; s21 += x * b1;
                x = mf_mlp_splat(a3[k]); s30 += x * b0; s31 += x * b1;
            }
            mf_mlp_store(c0 + n, s00); mf_mlp_store(c0 + n + 4, s01);
            mf_mlp_store(c1 + n, s10); mf_mlp_store(c1 + n + 4, s11);
            mf_mlp_store(c2 + n, s20); mf_mlp_store(c2 + n + 4, s21);
            mf_mlp_store(c3 + n, s30); mf_mlp_store(c3 + n + 4, s31);
        }
        for (; n + 4 <= N; n += 4) {
            mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n), s1 = mf_mlp_init4(mode, bias, c1, n);
            mf_mlp_v4d s2 = mf_mlp_init4(mode, bias, c2, n), s3 = mf_mlp_init4(mode, bias, c3, n);
            for (k = 0; k < K; k++) {
                mf_mlp_v4d b0 = mf_mlp_load(B + k * ldb + n);
                s0 += mf_mlp_splat(a0[k]) * b0; s1 += mf_mlp_splat(a1[k]) * b0;
                s2 += mf_mlp_splat(a2[k]) * b0; s3 += mf_mlp_splat(a3[k]) * b0;
            }
            mf_mlp_store(c0 + n, s0); mf_mlp_store(c1 + n, s1);
            mf_mlp_store(c2 + n, s2); mf_mlp_store(c3 + n, s3);
        }
        for (; n < N; n++) {
            double s0 = mf_mlp_init1(mode, bias, c0, n), s1 = mf_mlp_init1(mode, bias, c1, n);
            double s2 = mf_mlp_init1(mode, bias, c2, n), s3 = mf_mlp_init1(mode, bias, c3, n);
            for (k = 0; k < K; k++) {
                double b0 = B[k * ldb + n];
                s0 += a0[k] * b0; s1 += a1[k] * b0; s2 += a2[k] * b0; s3 += a3[k] * b0;
            }
            c0[n] = s0; c1[n] = s1; c2[n] = s2; c3[n] = s3;
        }
    }
    for (; m < M; m++) {  /* leftover rows (B = 1 from an agent loop lands here) */
        const double *a0 = A + m * lda;
        double *c0 = C + m * ldc;
        for (n = 0; n + 16 <= N; n += 16) {
            mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n), s1 = mf_mlp_init4(mode, bias, c0, n + 4);
            mf_mlp_v4d s2 = mf_mlp_init4(mode, bias, c0, n + 8), s3 = mf_mlp_init4(mode, bias, c0, n + 12);
            for (k = 0; k < K; k++) {
                const double *b = B + k * ldb + n;
                mf_mlp_v4d x = mf_mlp_splat(a0[k]);
                s0 += x * mf_mlp_load(b); s1 += x * mf_mlp_load(b + 4);
                s2 += x * mf_mlp_load(b + 8); s3 += x * mf_mlp_load(b + 12);
            }
            mf_mlp_store(c0 + n, s0); mf_mlp_store(c0 + n + 4, s1);
            mf_mlp_store(c0 + n + 8, s2); mf_mlp_store(c0 + n + 12, s3);
        }
        for (; n + 4 <= N; n += 4) {
            mf_mlp_v4d s0 = mf_mlp_init4(mode, bias, c0, n);
            for (k = 0; k < K; k++) s0 += mf_mlp_splat(a0[k]) * mf_mlp_load(B + k * ldb + n);
            mf_mlp_store(c0 + n, s0);
        }
        for (; n < N; n++) {
            double s0 = mf_mlp_init1(mode, bias, c0, n);
            for (k = 0; k < K; k++) s0 += a0[k] * B[k * ldb + n];
            c0[n] = s0;
        }
    }
}

#define MF_MLP_TANH_SMALL_BITS 0x3FD0000000000000ULL /* 0.25 */
#define MF_MLP_SIGN 0x8000000000000000ULL

static inline double mf_mlp_tanh(double x)
{
    uint64_t xb, ab, sb, bb, mask;
    double ax, x2, q, small, t, big, y;
    memcpy(&xb, &x, sizeof xb);
    ab = xb & ~MF_MLP_SIGN;
    memcpy(&ax, &ab, sizeof ax);
    x2 = x * x;
    q = -3.927832388331683e-05;
    q = q * x2 + 9.691537956929451e-05;
    q = q * x2 + -0.00023912911424355248;
    q = q * x2 + 0.000590027440945586;
    q = q * x2 + -0.0014558343870513183;
    q = q * x2 + 0.003592128036572481;
    q = q * x2 + -0.008863235529902197;
    q = q * x2 + 0.021869488536155203;
    q = q * x2 + -0.05396825396825397;
    q = q * x2 + 0.13333333333333333;
    q = q * x2 + -0.3333333333333333;
    small = x + x * (x2 * q);
    t = mf_exp_nonpos(-2.0 * ax);
    big = (1.0 - t) / (1.0 + t);
    memcpy(&sb, &small, sizeof sb);
    memcpy(&bb, &big, sizeof bb);
    bb |= xb & MF_MLP_SIGN;                                    /* copysign(big, x), big >= 0 */
    mask = (uint64_t)0 - (uint64_t)(ab < MF_MLP_TANH_SMALL_BITS);  /* all ones if |x| < 0.25 */
    sb = (sb & mask) | (bb & ~mask);
    memcpy(&y, &sb, sizeof y);
    return y;
}

/* x[i] = tanh(x[i]) (mode 1) or max-style relu x[i] > 0 ? x[i] : 0 (mode 0), in place. */
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

/* True if every x[i] is finite: the exponent field is never all ones (integer ops vectorise). */
static inline int mf_mlp_all_finite_f64(const double *x, ptrdiff_t n)
{
    uint64_t bad = 0, b;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        bad |= ((b & 0x7FF0000000000000ULL) + 0x0010000000000000ULL) & MF_MLP_SIGN;
    }
    return bad == 0;
}

static inline int mf_mlp_all_finite_f32(const float *x, ptrdiff_t n)
{
    uint32_t bad = 0, b;
    for (ptrdiff_t i = 0; i < n; i++) {
        memcpy(&b, x + i, sizeof b);
        bad |= ((b & 0x7F800000U) + 0x00800000U) & 0x80000000U;
    }
    return bad == 0;
}

#endif
