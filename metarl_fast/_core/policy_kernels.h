/* policy_kernels.h -- row loops of _core/policy.pyx, specialised for small action counts.
 *
 * Why C: gcc fully unrolls a row whose length is a compile-time constant and keeps it in
 * registers (one load per logit, a chain of maxsd, no loop control), which the generic
 * runtime-length loops of the Cython driver cannot do.  Every function switches on the action
 * count: 2..16 get their own instantiation (MF_PK_FIXED_WIDTHS), larger counts a generic loop.
 *
 * Arithmetic is the NumPy reference's, in its order (the build passes -ffp-contract=off):
 * z = (double)x - rowmax, and for sampling the running sum c[a] = c[a-1] + e[a] left to right,
 * target = u * c[A-1], action = #{a < A-1 : c[a] <= target} (= first a with target < c[a]).
 */
#ifndef METARL_FAST_POLICY_KERNELS_H
#define METARL_FAST_POLICY_KERNELS_H
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MF_PK_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MF_PK_CLONES
#endif

/* The action counts with their own unrolled loops: M(arg, A) for each. */
#define MF_PK_FIXED_WIDTHS(M, arg) M(arg, 2) M(arg, 3) M(arg, 4) M(arg, 5) M(arg, 6) M(arg, 7)    \
    M(arg, 8) M(arg, 9) M(arg, 10) M(arg, 11) M(arg, 12) M(arg, 13) M(arg, 14) M(arg, 15)     \
    M(arg, 16)

/* Full unrolling of the fixed-width row loops (gcc stops peeling on its own beyond ~8-12). */
#if defined(__GNUC__) && !defined(__clang__)
#define MF_PK_UNROLL _Pragma("GCC unroll 16")
#else
#define MF_PK_UNROLL
#endif

/* gcc vectorises the fixed-width row loops across rows, with shuffles that cost more than the
 * scalar code (measured: 207 vs 50 instructions per 16-wide row); rows are short, keep them scalar. */
#if defined(__GNUC__) && !defined(__clang__)
#define MF_PK_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define MF_PK_NO_VECTORIZE
#endif

#define MF_PK_BAD 1     /* some logit is NaN or +inf */
#define MF_PK_NEGINF 2  /* some logit is -inf (a row may be all -inf) */

/* ---------------------------------------------------------------- exponential
 * mf_pk_exp_block(x, y, n): y[i] = mf_exp_nonpos(x[i]) bit for bit (the same IEEE operations in
 * the same order, see mf_exp.h), for x[i] <= 0 or -inf, never NaN; x and y may alias.
 *
 * Why not mf_exp_nonpos_block: gcc vectorises it one 4-double vector per iteration, and each
 * vector's ~30-deep chain of dependent multiplies and adds (~100 cycles) fills the out-of-order
 * window before the next iteration's chain can start: it ran at ~2.4 ns per value here.  Below,
 * MF_PK_LANES vectors advance side by side through every step (~1.3 ns per value).
 * One change of form, not of value: the x < -708 mask is applied to the 2^k scale instead of the
 * product; p lies in [0.7, 1.5] there, so p * 0.0 is the same +0.0 as the masked product. */
#include "mf_exp.h"
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* unaligned (aligned(8)) and may_alias: they load and store the caller's double arrays */
typedef double mf_pk_v4d __attribute__((vector_size(32), aligned(8), may_alias));
typedef uint64_t mf_pk_v4u __attribute__((vector_size(32), aligned(8), may_alias));

/* One group of 4 values, lane k: load and range reduction; Horner step with coefficient c;
 * scale and store.  Variables of lane k carry the suffix k. */
#define MF_PK_EXP_LOAD(k)                                                                    \
    mf_pk_v4u xb##k = *(const mf_pk_v4u *)(x + i + 4 * k);                                   \
    mf_pk_v4u under##k = (mf_pk_v4u)(xb##k > lowest);         /* all ones where x < -708 */   \
    mf_pk_v4d xc##k = (mf_pk_v4d)((xb##k & ~under##k) | (lowest & under##k));                 \
    mf_pk_v4d t##k = xc##k * log2e + shifter;                                                 \
    mf_pk_v4d n##k = t##k - shifter;                                                          \
    mf_pk_v4u sb##k = (((mf_pk_v4u)t##k + bias) << 52) & ~under##k;                           \
    mf_pk_v4d r##k = (xc##k - n##k * ln2_hi) - n##k * ln2_lo;                                 \
    mf_pk_v4d p##k = r##k * c13 + c12;
#define MF_PK_EXP_HORNER(k, c) p##k = p##k * r##k + c;
#define MF_PK_EXP_STORE(k) *(mf_pk_v4d *)(y + i + 4 * k) = p##k * (mf_pk_v4d)sb##k;
#define MF_PK_EXP_POLY(H)                                                               \
    H(c11) H(c10) H(c9) H(c8) H(c7) H(c6) H(c5) H(c4) H(c3) H(c2) H(c1) H(c1)
/* MF_PK_LANES = 8 vectors per iteration measured best (4: 1.8 ns, 12: 1.6 ns per value) */
#define MF_PK_LANES 8
#define MF_PK_ALL8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define MF_PK_H8(c) MF_PK_EXP_HORNER(0, c) MF_PK_EXP_HORNER(1, c) MF_PK_EXP_HORNER(2, c)        \
    MF_PK_EXP_HORNER(3, c) MF_PK_EXP_HORNER(4, c) MF_PK_EXP_HORNER(5, c)                      \
    MF_PK_EXP_HORNER(6, c) MF_PK_EXP_HORNER(7, c)
#define MF_PK_H1(c) MF_PK_EXP_HORNER(0, c)

MF_PK_CLONES
static void mf_pk_exp_block(const double *x, double *y, ptrdiff_t n)
{
#define MF_PK_SPLAT(v) {v, v, v, v}
    const mf_pk_v4d log2e = MF_PK_SPLAT(MF_LOG2E), shifter = MF_PK_SPLAT(MF_SHIFTER),
        ln2_hi = MF_PK_SPLAT(MF_LN2_HI), ln2_lo = MF_PK_SPLAT(MF_LN2_LO);
    const mf_pk_v4u lowest = MF_PK_SPLAT(MF_EXP_LOWEST_BITS),
        bias = MF_PK_SPLAT(1023ULL - MF_SHIFTER_BITS);
    /* 1/13!, ..., 1/2!, 1 as in mf_exp_nonpos */
    const mf_pk_v4d c13 = MF_PK_SPLAT(1.6059043836821613e-10),
        c12 = MF_PK_SPLAT(2.08767569878681e-09), c11 = MF_PK_SPLAT(2.505210838544172e-08),
        c10 = MF_PK_SPLAT(2.755731922398589e-07), c9 = MF_PK_SPLAT(2.7557319223985893e-06),
        c8 = MF_PK_SPLAT(2.48015873015873e-05), c7 = MF_PK_SPLAT(0.0001984126984126984),
        c6 = MF_PK_SPLAT(0.001388888888888889), c5 = MF_PK_SPLAT(0.008333333333333333),
        c4 = MF_PK_SPLAT(0.041666666666666664), c3 = MF_PK_SPLAT(0.16666666666666666),
        c2 = MF_PK_SPLAT(0.5), c1 = MF_PK_SPLAT(1.0);
#undef MF_PK_SPLAT
    ptrdiff_t i = 0;
    for (; i + 4 * MF_PK_LANES <= n; i += 4 * MF_PK_LANES) {
        MF_PK_ALL8(MF_PK_EXP_LOAD)
        MF_PK_EXP_POLY(MF_PK_H8)
        MF_PK_ALL8(MF_PK_EXP_STORE)
    }
    for (; i + 4 <= n; i += 4) {
        MF_PK_EXP_LOAD(0)
        MF_PK_EXP_POLY(MF_PK_H1)
        MF_PK_EXP_STORE(0)
    }
    for (; i < n; i++) y[i] = mf_exp_nonpos(x[i]);
}
/* mf_exp_nonpos_block is not needed on this path; the reference keeps -Wunused-function quiet */
static inline void mf_pk_exp_block_fallback_(const double *x, double *y, ptrdiff_t n)
{
    mf_exp_nonpos_block(x, y, n);
}
#else
#define mf_pk_exp_block mf_exp_nonpos_block
#endif

/* ---------------------------------------------------------------- validation
 * One branch-free pass over all n logits that gcc vectorises: which kinds of non-finite values
 * occur.  Only when some do is a second, per-row pass needed to name the offending row. */
MF_PK_CLONES
static int mf_pk_scan_f64(const double *x, ptrdiff_t n)
{
    /* all-ones/zero masks (0 - bool) let gcc keep the vector compare results as they are */
    uint64_t ok = ~(uint64_t)0, neginf = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        ok &= (uint64_t)0 - (uint64_t)(x[i] < INFINITY);          /* not NaN, not +inf */
        neginf |= (uint64_t)0 - (uint64_t)(x[i] == -INFINITY);
    }
    return (ok ? 0 : MF_PK_BAD) | (neginf ? MF_PK_NEGINF : 0);
}

MF_PK_CLONES
static int mf_pk_scan_f32(const float *x, ptrdiff_t n)
{
    uint32_t ok = ~(uint32_t)0, neginf = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        ok &= (uint32_t)0 - (uint32_t)(x[i] < INFINITY);
        neginf |= (uint32_t)0 - (uint32_t)(x[i] == -INFINITY);
    }
    return (ok ? 0 : MF_PK_BAD) | (neginf ? MF_PK_NEGINF : 0);
}

/* First row that contains NaN or +inf or is all -inf; -1 if none. */
#define MF_PK_FIRST_INVALID(NAME, T)                                                        \
static ptrdiff_t NAME(const T *x, ptrdiff_t n_rows, ptrdiff_t n_actions)                     \
{                                                                                            \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                                 \
        const T *row = x + i * n_actions;                                                    \
        int finite_seen = 0;                                                                 \
        for (ptrdiff_t a = 0; a < n_actions; a++) {                                          \
            double v = (double)row[a];                                                       \
            if (!(v < INFINITY)) return i;                                                   \
            finite_seen |= v != -INFINITY;                                                   \
        }                                                                                    \
        if (!finite_seen) return i;                                                          \
    }                                                                                        \
    return -1;                                                                               \
}
MF_PK_FIRST_INVALID(mf_pk_first_invalid_row_f64, double)
MF_PK_FIRST_INVALID(mf_pk_first_invalid_row_f32, float)

/* First row whose entries are all -inf, or -1; for input already known to hold no NaN/+inf. */
#define MF_PK_FIRST_ALL_NEGINF(NAME, T)                                                     \
static ptrdiff_t NAME(const T *x, ptrdiff_t n_rows, ptrdiff_t n_actions)                     \
{                                                                                            \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                                 \
        const T *row = x + i * n_actions;                                                    \
        ptrdiff_t a = 0;                                                                     \
        while (a < n_actions && row[a] == -INFINITY) a++;                                    \
        if (a == n_actions) return i;                                                        \
    }                                                                                        \
    return -1;                                                                               \
}
MF_PK_FIRST_ALL_NEGINF(mf_pk_first_all_neginf_row_f64, double)
MF_PK_FIRST_ALL_NEGINF(mf_pk_first_all_neginf_row_f32, float)

/* Status of n_rows x n_actions logits: -1 if every row is valid, else the first invalid row. */
static inline ptrdiff_t mf_pk_check_f64(const double *x, ptrdiff_t n_rows, ptrdiff_t n_actions)
{
    int flags = mf_pk_scan_f64(x, n_rows * n_actions);
    if (flags & MF_PK_BAD) return mf_pk_first_invalid_row_f64(x, n_rows, n_actions);
    if (flags & MF_PK_NEGINF) return mf_pk_first_all_neginf_row_f64(x, n_rows, n_actions);
    return -1;
}

static inline ptrdiff_t mf_pk_check_f32(const float *x, ptrdiff_t n_rows, ptrdiff_t n_actions)
{
    int flags = mf_pk_scan_f32(x, n_rows * n_actions);
    if (flags & MF_PK_BAD) return mf_pk_first_invalid_row_f32(x, n_rows, n_actions);
    if (flags & MF_PK_NEGINF) return mf_pk_first_all_neginf_row_f32(x, n_rows, n_actions);
    return -1;
}

/* ---------------------------------------------------------------- shift
 * z[i, a] = (double)x[i, a] - max_a x[i, a] for valid rows.  The max keeps the first of equal
 * maxima ("v > m ? v : m" from m = v[0]), as the reference's order-free max does up to the sign
 * of a zero maximum, which no exponential or sampled action can see. */
#define MF_PK_SHIFT_FIXED(T, NA)                                                             \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                                 \
        const T *row = x + i * (NA);                                                         \
        double *zr = z + i * (NA);                                                           \
        double m = (double)row[0];                                                           \
        MF_PK_UNROLL for (int a = 1; a < (NA); a++) {                                        \
            double v = (double)row[a];                                                       \
            m = v > m ? v : m;                                                               \
        }                                                                                    \
        MF_PK_UNROLL for (int a = 0; a < (NA); a++) zr[a] = (double)row[a] - m;              \
    }                                                                                        \
    return;

#define MF_PK_SHIFT_CASE(T, NA) case NA: MF_PK_SHIFT_FIXED(T, NA)

#define MF_PK_SHIFT(NAME, T)                                                                 \
MF_PK_NO_VECTORIZE static void NAME(const T *x, ptrdiff_t n_rows, ptrdiff_t n_actions, double *z)               \
{                                                                                            \
    switch (n_actions) {                                                                     \
    case 1: for (ptrdiff_t i = 0; i < n_rows; i++) z[i] = 0.0; return;                       \
    MF_PK_FIXED_WIDTHS(MF_PK_SHIFT_CASE, T)                                                  \
    default: break;                                                                          \
    }                                                                                        \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                                 \
        const T *row = x + i * n_actions;                                                    \
        double *zr = z + i * n_actions;                                                      \
        double m = (double)row[0];                                                           \
        for (ptrdiff_t a = 1; a < n_actions; a++) {                                          \
            double v = (double)row[a];                                                       \
            m = v > m ? v : m;                                                               \
        }                                                                                    \
        for (ptrdiff_t a = 0; a < n_actions; a++) zr[a] = (double)row[a] - m;                \
    }                                                                                        \
}
MF_PK_SHIFT(mf_pk_shift_rows_f64, double)
MF_PK_SHIFT(mf_pk_shift_rows_f32, float)

/* ---------------------------------------------------------------- sample
 * actions[i] from the exponentials e[r, :] of row r = rows[i] (r = i when rows is NULL; all
 * finite, row sums > 0), one next_double(state) per action in order.  Counting "c[a] <= target" instead of searching keeps the row free of
 * data-dependent branches, which would mispredict on every other row. */
typedef double (*mf_pk_next_double_t)(void *state);

#define MF_PK_SAMPLE_FIXED(NA)                                                               \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                                 \
        double u = next_double(state);                                                       \
        const double *er = e + (rows ? rows[i] : i) * (NA);                                  \
        double c[NA];                                                                        \
        c[0] = er[0];                                                                        \
        MF_PK_UNROLL for (int a = 1; a < (NA); a++) c[a] = c[a - 1] + er[a];                 \
        double target = u * c[(NA) - 1];                                                     \
        int64_t k = 0;                                                                       \
        MF_PK_UNROLL for (int a = 0; a < (NA) - 1; a++) k += c[a] <= target;                 \
        actions[i] = k;                                                                      \
    }                                                                                        \
    return;

#define MF_PK_SAMPLE_CASE(unused, NA) case NA: MF_PK_SAMPLE_FIXED(NA)

static void mf_pk_sample_rows(const double *e, const int64_t *rows, ptrdiff_t n_rows,
                              ptrdiff_t n_actions, mf_pk_next_double_t next_double, void *state,
                              int64_t *actions)
{
    switch (n_actions) {
    case 1:
        for (ptrdiff_t i = 0; i < n_rows; i++) {
            (void)next_double(state);
            actions[i] = 0;
        }
        return;
    MF_PK_FIXED_WIDTHS(MF_PK_SAMPLE_CASE, )
    default: break;
    }
    for (ptrdiff_t i = 0; i < n_rows; i++) {
        double u = next_double(state);
        const double *er = e + (rows ? rows[i] : i) * n_actions;
        double s = 0.0;
        for (ptrdiff_t a = 0; a < n_actions; a++) s += er[a];
        double target = u * s;
        double acc = 0.0;
        int64_t k = 0;
        for (ptrdiff_t a = 0; a < n_actions - 1; a++) {
            acc += er[a];
            k += acc <= target;
        }
        actions[i] = k;
    }
}

#endif
