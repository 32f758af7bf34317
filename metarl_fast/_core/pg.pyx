# distutils: extra_compile_args = -fno-math-errno
"""Policy-gradient kernels (Cython twin of :mod:`metarl_fast.reference.pg`).

The ``def`` functions take a cheap C-level fast path when every argument already has the exact
dtype/layout (range and NaN checks are C loops); anything else goes through the reference's
``check_*`` helpers, which convert or raise the same errors as the NumPy backend.  Nothing is
written before validation has passed.
"""
cimport numpy as cnp
from libc.float cimport FLT_MAX
from libc.math cimport INFINITY, exp, fabs, floor, log, pow, sqrt
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from metarl_fast._core.mf_exp cimport mf_exp_nonpos_block

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import pg as _ref

cnp.import_array()

# Optimizer codes and hyper-parameter layout of the fused step, as in the reference.
OPT_SGD = PG_OPT_SGD
OPT_ADAM = PG_OPT_ADAM
N_HYPER = {OPT_SGD: 3, OPT_ADAM: 5}

# Dense loops of the linear policy, compiled twice (AVX2 and baseline) and picked at load time
# like mf_exp.h: plain IEEE operations in a fixed order either way (no FMA: -ffp-contract=off).
cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define MF_PG_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define MF_PG_CLONES
    #endif
    /* Unaligned 4-double vectors (GCC/clang vector extensions; SSE2 pairs on the baseline). */
    #if defined(__GNUC__)
    typedef double mf_v4 __attribute__((vector_size(32), aligned(8)));
    #define MF_PG_VEC 1
    #else
    #define MF_PG_VEC 0
    #endif
    /* out[i, a] = sum_f x[i, f] W[f, a], summed over f in increasing order, for n rows;
     * W (F, A) row-major, x (n, F), out (n, A).  Accumulators stay in registers. */
    MF_PG_CLONES static void mf_pg_rows_matmul(const double *x, const double *W, double *out,
                                               ptrdiff_t n, ptrdiff_t F, ptrdiff_t A)
    {
        ptrdiff_t i = 0;
    #if MF_PG_VEC
        /* two rows at a time: 8 independent accumulator chains hide the add latency */
        for (; i + 2 <= n; i += 2) {
            const double *xi = x + i * F, *xj = xi + F;
            double *o = out + i * A, *q = o + A;
            ptrdiff_t a = 0;
            for (; a + 16 <= A; a += 16) {
                mf_v4 c0 = {0, 0, 0, 0}, c1 = c0, c2 = c0, c3 = c0;
                mf_v4 d0 = c0, d1 = c0, d2 = c0, d3 = c0;
                for (ptrdiff_t f = 0; f < F; f++) {
                    const double xv = xi[f], yv = xj[f];
                    const mf_v4 xf = {xv, xv, xv, xv}, yf = {yv, yv, yv, yv};
                    const mf_v4 *w = (const mf_v4 *)(W + f * A + a);
                    const mf_v4 w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
                    c0 += xf * w0; c1 += xf * w1; c2 += xf * w2; c3 += xf * w3;
                    d0 += yf * w0; d1 += yf * w1; d2 += yf * w2; d3 += yf * w3;
                }
                mf_v4 *dst = (mf_v4 *)(o + a), *dst2 = (mf_v4 *)(q + a);
                dst[0] = c0; dst[1] = c1; dst[2] = c2; dst[3] = c3;
                dst2[0] = d0; dst2[1] = d1; dst2[2] = d2; dst2[3] = d3;
            }
            for (; a + 4 <= A; a += 4) {
                mf_v4 c0 = {0, 0, 0, 0}, d0 = c0;
                for (ptrdiff_t f = 0; f < F; f++) {
                    const double xv = xi[f], yv = xj[f];
                    const mf_v4 xf = {xv, xv, xv, xv}, yf = {yv, yv, yv, yv};
                    const mf_v4 w0 = *(const mf_v4 *)(W + f * A + a);
                    c0 += xf * w0;
                    d0 += yf * w0;
                }
                *(mf_v4 *)(o + a) = c0;
                *(mf_v4 *)(q + a) = d0;
            }
            for (; a < A; a++) {
                double c = 0.0, d = 0.0;
                for (ptrdiff_t f = 0; f < F; f++) {
                    c += xi[f] * W[f * A + a];
                    d += xj[f] * W[f * A + a];
                }
                o[a] = c;
                q[a] = d;
            }
        }
    #endif
        for (; i < n; i++) {
            const double *xi = x + i * F;
            double *o = out + i * A;
            for (ptrdiff_t a = 0; a < A; a++) {
                double c = 0.0;
                for (ptrdiff_t f = 0; f < F; f++) c += xi[f] * W[f * A + a];
                o[a] = c;
            }
        }
    }
    /* Nonzero if any of the n values is NaN or +-inf (x * 0 is NaN exactly for those). */
    MF_PG_CLONES static int mf_pg_nonfinite_d(const double *x, ptrdiff_t n)
    {
        ptrdiff_t i = 0;
        double s = 0.0;
    #if MF_PG_VEC
        mf_v4 acc = {0, 0, 0, 0}, acc1 = acc, acc2 = acc, acc3 = acc;
        const mf_v4 zero = {0, 0, 0, 0};
        for (; i + 16 <= n; i += 16) {
            acc += *(const mf_v4 *)(x + i) * zero;
            acc1 += *(const mf_v4 *)(x + i + 4) * zero;
            acc2 += *(const mf_v4 *)(x + i + 8) * zero;
            acc3 += *(const mf_v4 *)(x + i + 12) * zero;
        }
        for (; i + 4 <= n; i += 4) acc += *(const mf_v4 *)(x + i) * zero;
        acc += (acc1 + acc2) + acc3;
        s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    #endif
        for (; i < n; i++) s += x[i] * 0.0;
        return s != 0.0;
    }
    #if MF_PG_VEC
    typedef float mf_v8f __attribute__((vector_size(32), aligned(4)));
    #endif
    MF_PG_CLONES static int mf_pg_nonfinite_f(const float *x, ptrdiff_t n)
    {
        ptrdiff_t i = 0;
        float s = 0.0f;
    #if MF_PG_VEC
        mf_v8f acc = {0, 0, 0, 0, 0, 0, 0, 0}, acc1 = acc;
        const mf_v8f zero = {0, 0, 0, 0, 0, 0, 0, 0};
        for (; i + 16 <= n; i += 16) {
            acc += *(const mf_v8f *)(x + i) * zero;
            acc1 += *(const mf_v8f *)(x + i + 8) * zero;
        }
        for (; i + 8 <= n; i += 8) acc += *(const mf_v8f *)(x + i) * zero;
        acc += acc1;
        for (int k = 0; k < 8; k++) s += acc[k];
    #endif
        for (; i < n; i++) s += x[i] * 0.0f;
        return s != 0.0f;
    }
    /* Optimizer updates (see sgd_kernel/adam_kernel).  -fno-math-errno (first line of this file)
     * lets sqrt vectorise: IEEE sqrt is correctly rounded either way and v >= 0 never sets errno;
     * results are unchanged (this is not -ffast-math). */
    #include <math.h>
    #define MF_PG_ADAM(NAME, T)                                                                \
    MF_PG_CLONES static void NAME(T *restrict p, const T *restrict grad,           \
            T *restrict m_, T *restrict v_, ptrdiff_t n, double step_size, double bc2,          \
            double b1, double b2, double eps, double scale)                                     \
    {                                                                                           \
        const double omb1 = 1.0 - b1, omb2 = 1.0 - b2;                                          \
        for (ptrdiff_t k = 0; k < n; k++) {                                                     \
            const double g = (double)grad[k] * scale;                                           \
            const double m = b1 * (double)m_[k] + omb1 * g;                                     \
            const double v = b2 * (double)v_[k] + omb2 * (g * g);                              \
            m_[k] = (T)m;                                                                       \
            v_[k] = (T)v;                                                                       \
            p[k] = (T)((double)p[k] - step_size * (m / (sqrt(v) / bc2 + eps)));                \
        }                                                                                       \
    }
    MF_PG_ADAM(mf_pg_adam_d, double)
    MF_PG_ADAM(mf_pg_adam_f, float)
    /* sum of squares with 4 (x2) independent accumulators */
    #define MF_PG_SUMSQ(NAME, T)                                                                \
    MF_PG_CLONES static double NAME(const T *x, ptrdiff_t n)                                    \
    {                                                                                           \
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;                  \
        ptrdiff_t k = 0;                                                                        \
        for (; k + 8 <= n; k += 8) {                                                            \
            a0 += (double)x[k] * (double)x[k];         a1 += (double)x[k+1] * (double)x[k+1];  \
            a2 += (double)x[k+2] * (double)x[k+2];     a3 += (double)x[k+3] * (double)x[k+3];  \
            a4 += (double)x[k+4] * (double)x[k+4];     a5 += (double)x[k+5] * (double)x[k+5];  \
            a6 += (double)x[k+6] * (double)x[k+6];     a7 += (double)x[k+7] * (double)x[k+7];  \
        }                                                                                       \
        for (; k < n; k++) a0 += (double)x[k] * (double)x[k];                                   \
        return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));                              \
    }
    MF_PG_SUMSQ(mf_pg_sumsq_d, double)
    MF_PG_SUMSQ(mf_pg_sumsq_f, float)
    /* Row sum with four interleaved partial sums (vectorisable; order fixed). */
    static inline double mf_pg_row_sum(const double *x, ptrdiff_t A)
    {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        ptrdiff_t a = 0;
        for (; a + 4 <= A; a += 4) {
            s0 += x[a]; s1 += x[a + 1]; s2 += x[a + 2]; s3 += x[a + 3];
        }
        for (; a < A; a++) s0 += x[a];
        return (s0 + s1) + (s2 + s3);
    }
    /* z[i, :] += b (if b), then z[i, :] -= max_a z[i, a], for n rows of A. */
    MF_PG_CLONES static void mf_pg_shift_rows(double *z, const double *b, ptrdiff_t n, ptrdiff_t A)
    {
        for (ptrdiff_t i = 0; i < n; i++) {
            double *zi = z + i * A;
            if (b != NULL)
                for (ptrdiff_t a = 0; a < A; a++) zi[a] = zi[a] + b[a];
            double m = zi[0];
            for (ptrdiff_t a = 1; a < A; a++) m = zi[a] > m ? zi[a] : m;
            for (ptrdiff_t a = 0; a < A; a++) zi[a] = zi[a] - m;
        }
    }
    /* dJ/dlogits for n rows: z = logits - row max, e = exp(z), coef[i] = w_i A_i / B;
     * g = coef (onehot(a) - p) + ent_scale * (-p (log p + H)), p = e / sum(e). */
    MF_PG_CLONES static void mf_pg_logit_grads(const double *z, const double *e, ptrdiff_t n,
                                               ptrdiff_t A, const int64_t *actions,
                                               const double *coef, double ent_scale, double *g)
    {
        for (ptrdiff_t i = 0; i < n; i++) {
            const double *ei = e + i * A, *zi = z + i * A;
            double *gi = g + i * A;
            const double s = mf_pg_row_sum(ei, A);
            const double c = coef[i];
            for (ptrdiff_t a = 0; a < A; a++) gi[a] = (-(ei[a] / s)) * c;
            const int64_t act = actions[i];
            gi[act] = (1.0 - ei[act] / s) * c;
            if (ent_scale != 0.0) {
                const double ls = log(s);
                double h0 = 0.0, h1 = 0.0;
                ptrdiff_t a = 0;
                for (; a + 2 <= A; a += 2) {
                    h0 += (ei[a] / s) * (zi[a] - ls);
                    h1 += (ei[a + 1] / s) * (zi[a + 1] - ls);
                }
                for (; a < A; a++) h0 += (ei[a] / s) * (zi[a] - ls);
                const double h = -(h0 + h1);
                for (a = 0; a < A; a++) {
                    const double p = ei[a] / s;
                    gi[a] = gi[a] + ent_scale * (-p * ((zi[a] - ls) + h));
                }
            }
        }
    }
    /* gW[f, a] += sum_i x[i, f] G[i, a], rows added in increasing order; x (n, F), G (n, A). */
    MF_PG_CLONES static void mf_pg_outer_acc(const double *x, const double *G, double *gW,
                                             ptrdiff_t n, ptrdiff_t F, ptrdiff_t A)
    {
        ptrdiff_t f = 0;
    #if MF_PG_VEC
        /* two features at a time: 8 independent accumulator chains */
        for (; f + 2 <= F; f += 2) {
            double *o = gW + f * A, *q = o + A;
            ptrdiff_t a = 0;
            for (; a + 16 <= A; a += 16) {
                mf_v4 *dst = (mf_v4 *)(o + a), *dst2 = (mf_v4 *)(q + a);
                mf_v4 c0 = dst[0], c1 = dst[1], c2 = dst[2], c3 = dst[3];
                mf_v4 d0 = dst2[0], d1 = dst2[1], d2 = dst2[2], d3 = dst2[3];
                for (ptrdiff_t i = 0; i < n; i++) {
                    const double xv = x[i * F + f], yv = x[i * F + f + 1];
                    const mf_v4 xf = {xv, xv, xv, xv}, yf = {yv, yv, yv, yv};
                    const mf_v4 *g = (const mf_v4 *)(G + i * A + a);
                    const mf_v4 g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3];
                    c0 += xf * g0; c1 += xf * g1; c2 += xf * g2; c3 += xf * g3;
                    d0 += yf * g0; d1 += yf * g1; d2 += yf * g2; d3 += yf * g3;
                }
                dst[0] = c0; dst[1] = c1; dst[2] = c2; dst[3] = c3;
                dst2[0] = d0; dst2[1] = d1; dst2[2] = d2; dst2[3] = d3;
            }
            for (; a + 4 <= A; a += 4) {
                mf_v4 *dst = (mf_v4 *)(o + a), *dst2 = (mf_v4 *)(q + a);
                mf_v4 c0 = dst[0], d0 = dst2[0];
                for (ptrdiff_t i = 0; i < n; i++) {
                    const double xv = x[i * F + f], yv = x[i * F + f + 1];
                    const mf_v4 xf = {xv, xv, xv, xv}, yf = {yv, yv, yv, yv};
                    const mf_v4 g0 = *(const mf_v4 *)(G + i * A + a);
                    c0 += xf * g0;
                    d0 += yf * g0;
                }
                dst[0] = c0;
                dst2[0] = d0;
            }
            for (; a < A; a++) {
                double c = o[a], d = q[a];
                for (ptrdiff_t i = 0; i < n; i++) {
                    c += x[i * F + f] * G[i * A + a];
                    d += x[i * F + f + 1] * G[i * A + a];
                }
                o[a] = c;
                q[a] = d;
            }
        }
    #endif
        for (; f < F; f++) {
            double *o = gW + f * A;
            for (ptrdiff_t a = 0; a < A; a++) {
                double c = o[a];
                for (ptrdiff_t i = 0; i < n; i++) c += x[i * F + f] * G[i * A + a];
                o[a] = c;
            }
        }
    }
    """
    void mf_pg_rows_matmul(const double* x, const double* W, double* out, Py_ssize_t n,
                           Py_ssize_t F, Py_ssize_t A) nogil
    void mf_pg_outer_acc(const double* x, const double* G, double* gW, Py_ssize_t n,
                         Py_ssize_t F, Py_ssize_t A) nogil
    int mf_pg_nonfinite_d(const double* x, Py_ssize_t n) nogil
    int mf_pg_nonfinite_f(const float* x, Py_ssize_t n) nogil
    void mf_pg_adam_d(double* p, const double* grad, double* m, double* v, Py_ssize_t n,
                      double step_size, double bc2, double b1, double b2, double eps,
                      double scale) nogil
    void mf_pg_adam_f(float* p, const float* grad, float* m, float* v, Py_ssize_t n,
                      double step_size, double bc2, double b1, double b2, double eps,
                      double scale) nogil
    double mf_pg_sumsq_d(const double* x, Py_ssize_t n) nogil
    void mf_pg_shift_rows(double* z, const double* b, Py_ssize_t n, Py_ssize_t A) nogil
    void mf_pg_logit_grads(const double* z, const double* e, Py_ssize_t n, Py_ssize_t A,
                           const int64_t* actions, const double* coef, double ent_scale,
                           double* g) nogil
    double mf_pg_sumsq_f(const float* x, Py_ssize_t n) nogil

# Scratch on the stack for small policies (no malloc on the latency path of small batches).
DEF SMALL_GRAD = 512
DEF SMALL_STATES = 64

# Checks over more elements than this release the GIL.
cdef intp_t NOGIL_MIN = 16384
# Gradient kernels over more steps (x features) than this release the GIL.
cdef intp_t NOGIL_GRAD_MIN = 2048

# Rows per chunk so a chunk's logits, exponentials and features stay in L1/L2.
cdef intp_t CHUNK_ELEMS = 2048


# ---------------------------------------------------------------------------------------------
# nogil kernels
# ---------------------------------------------------------------------------------------------

cdef void returns_scan(const floating* rewards, const uint8_t* dones, intp_t n, double gamma,
                       double bootstrap, floating* out) noexcept nogil:
    cdef intp_t i
    cdef double g = bootstrap
    for i in range(n - 1, -1, -1):
        if dones[i]:
            g = <double> rewards[i] + 0.0
        else:
            g = <double> rewards[i] + gamma * g
        out[i] = <floating> g


cdef void gae_scan(const floating* rewards, const floating* values, const floating* next_values,
                   const uint8_t* dones, intp_t n, double gamma, double lam,
                   floating* out) noexcept nogil:
    cdef intp_t i
    cdef double acc = 0.0
    cdef double gl = gamma * lam
    for i in range(n - 1, -1, -1):
        if dones[i]:
            acc = <double> rewards[i] - <double> values[i]
        else:
            acc = (<double> rewards[i] + gamma * <double> next_values[i] - <double> values[i]) + gl * acc
        out[i] = <floating> acc


cdef void vtrace_scan(const floating* rewards, const floating* values, const floating* next_values,
                      const floating* log_rhos, const uint8_t* ends, intp_t n, double gamma,
                      double rho_cap, double c_cap, double* vs, double* adv) noexcept nogil:
    """V-trace (see the reference): A_i = delta_i + gamma c_i (1 - end_i) A_{i+1} backwards."""
    cdef intp_t i
    cdef double acc = 0.0, nxt, ratio, rho, c, r, v, nv
    for i in range(n - 1, -1, -1):
        nxt = 0.0 if ends[i] else acc
        ratio = exp(<double> log_rhos[i])
        rho = ratio if ratio < rho_cap else rho_cap
        c = ratio if ratio < c_cap else c_cap
        r, v, nv = <double> rewards[i], <double> values[i], <double> next_values[i]
        acc = rho * (r + gamma * nv - v) + (gamma * c) * nxt
        vs[i] = v + acc
        adv[i] = rho * (r + gamma * (nv + nxt) - v)


cdef inline void logit_grads(double* z, double* e, intp_t n_rows, intp_t n_actions,
                             const int64_t* actions, const floating* advantages,
                             const floating* weights, double entropy_coef, intp_t batch,
                             double* coef, double* g) noexcept nogil:
    """z holds (n_rows, A) logits minus their row max, e = exp(z); writes dJ/dlogits into g.

    ``coef`` is scratch space for n_rows doubles.
    """
    cdef intp_t i
    cdef double c
    for i in range(n_rows):
        c = <double> advantages[i]
        if weights != NULL:
            c = c * <double> weights[i]
        coef[i] = c / batch
    mf_pg_logit_grads(z, e, n_rows, n_actions, actions, coef, entropy_coef / batch, g)


cdef intp_t tabular_grad(const floating* theta, intp_t n_states, intp_t n_actions,
                         const int64_t* states, const int64_t* actions, const floating* advantages,
                         const floating* weights, double entropy_coef, intp_t batch,
                         double* grad) noexcept nogil:
    """Per-state form: sum_i c_i (onehot(a_i) - pi(.|s_i)) is, in the row of state s, the sum of
    its steps' one-hots minus (their total) pi(.|s).  So one pass over the steps scatters the
    coefficients into their (state, action) cells, and each visited state's softmax (and entropy
    term) is computed once, the exponentials of all visited states in one block: O(B + visited
    states x A) work, not O(B x A).  Same order of operations as the reference.  Returns
    PG_BAD_INPUT (grad partly written) if a state or action is out of range or an advantage or
    weight is not finite."""
    cdef intp_t i, a, s, k, A = n_actions, n_visited = 0
    cdef intp_t max_visited = n_states if n_states < batch else batch
    cdef double c, w, total, ls, h, p, m
    cdef double ent_scale = entropy_coef / batch if batch else 0.0
    cdef int64_t* count
    cdef intp_t* visited
    cdef double* z
    cdef double* e
    cdef double* dst
    cdef const floating* row
    cdef bint bad = False
    cdef int64_t count_small[SMALL_STATES]
    cdef intp_t visited_small[SMALL_STATES]
    cdef double z_small[SMALL_GRAD]
    if batch == 0:
        return PG_OK
    if n_states <= SMALL_STATES and max_visited * A <= SMALL_GRAD // 2:  # the stack: no malloc
        memset(count_small, 0, n_states * sizeof(int64_t))
        count, visited, z = count_small, visited_small, z_small
    else:
        count = <int64_t*> calloc(n_states, sizeof(int64_t))
        visited = <intp_t*> malloc(max_visited * sizeof(intp_t))
        z = <double*> malloc(2 * max_visited * A * sizeof(double))
        if count == NULL or visited == NULL or z == NULL:
            free(count)
            free(visited)
            free(z)
            return PG_NO_MEMORY
    e = z + max_visited * A
    # (1) per step: the coefficient into its (state, action) cell, undivided.  The step's indices
    # and numbers are checked here, in the same pass (the callers' checks leave them to it)
    for i in range(batch):
        c = <double> advantages[i]
        w = 1.0 if weights == NULL else <double> weights[i]
        s = states[i]
        a = actions[i]
        if ((<uint64_t> s >= <uint64_t> n_states) | (<uint64_t> a >= <uint64_t> A)
                | ((c - c) + (w - w) != 0.0)):
            bad = True
            break
        if weights != NULL:
            c = c * w
        count[s] += 1
        grad[s * A + a] += c
    if not bad:
        # (2) per visited state, in increasing order: logits minus their max, one exp block
        for s in range(n_states):
            if count[s] != 0:
                visited[n_visited] = s
                row = theta + s * A
                m = <double> row[0]
                for a in range(1, A):
                    if <double> row[a] > m:
                        m = <double> row[a]
                for a in range(A):
                    z[n_visited * A + a] = <double> row[a] - m
                n_visited += 1
        mf_exp_nonpos_block(z, e, n_visited * A)
        for k in range(n_visited):
            s = visited[k]
            dst = grad + s * A
            total = 0.0
            c = 0.0  # the state's coefficients: the sum of its cells, in action order
            for a in range(A):
                total += e[k * A + a]
                c += dst[a]
            c = c / batch
            for a in range(A):
                dst[a] = dst[a] / batch - c * (e[k * A + a] / total)
            if ent_scale != 0.0:
                ls = log(total)
                h = 0.0
                for a in range(A):
                    h += (e[k * A + a] / total) * (z[k * A + a] - ls)
                h = -h
                c = count[s] * ent_scale
                for a in range(A):
                    p = e[k * A + a] / total
                    dst[a] += c * (-p * ((z[k * A + a] - ls) + h))
    if count != count_small:
        free(count)
        free(visited)
        free(z)
    return PG_BAD_INPUT if bad else PG_OK


cdef intp_t linear_grad(const floating* params, intp_t n_features, intp_t n_actions,
                        const floating* features, const int64_t* actions,
                        const floating* advantages, const floating* weights,
                        double entropy_coef, intp_t batch, double* grad) noexcept nogil:
    cdef intp_t i, a, start, n, chunk_rows, k
    cdef intp_t n_w = n_features * n_actions
    cdef double* Wd
    cdef const double* Wsrc
    cdef double* x
    cdef double* xbuf
    cdef double* z
    cdef double* e
    cdef double* g
    cdef double* coef
    cdef double* gb = grad + n_w
    cdef const floating* xin
    cdef const floating* wchunk
    if batch == 0:
        return PG_OK
    chunk_rows = CHUNK_ELEMS // (n_actions if n_actions > n_features else n_features)
    if chunk_rows < 1:
        chunk_rows = 1
    if chunk_rows > batch:
        chunk_rows = batch
    Wd = <double*> malloc((n_w + n_actions + chunk_rows * (n_features + 3 * n_actions + 1))
                          * sizeof(double))
    if Wd == NULL:
        return PG_NO_MEMORY
    if floating is double:
        Wsrc = <const double*> params
    else:
        for k in range(n_w + n_actions):
            Wd[k] = <double> params[k]
        Wsrc = Wd
    xbuf = Wd + n_w + n_actions
    z = xbuf + chunk_rows * n_features
    e = z + chunk_rows * n_actions
    g = e + chunk_rows * n_actions
    coef = g + chunk_rows * n_actions
    start = 0
    while start < batch:
        n = chunk_rows if batch - start > chunk_rows else batch - start
        xin = features + start * n_features
        if floating is double:
            x = <double*> xin  # only read
        else:
            x = xbuf
            for k in range(n * n_features):
                x[k] = <double> xin[k]
        mf_pg_rows_matmul(x, Wsrc, z, n, n_features, n_actions)
        mf_pg_shift_rows(z, Wsrc + n_w, n, n_actions)
        mf_exp_nonpos_block(z, e, n * n_actions)
        wchunk = NULL
        if weights != NULL:
            wchunk = weights + start
        logit_grads(z, e, n, n_actions, actions + start, advantages + start, wchunk,
                    entropy_coef, batch, coef, g)
        mf_pg_outer_acc(x, g, grad, n, n_features, n_actions)
        for i in range(n):
            k = i * n_actions
            for a in range(n_actions):
                gb[a] += g[k + a]
        start += n
    free(Wd)
    return PG_OK



cdef intp_t linear_states_grad(const floating* params, intp_t n_features, intp_t n_actions,
                               const floating* features, intp_t n_states, const int64_t* states,
                               const int64_t* actions, const floating* advantages,
                               const floating* weights, double entropy_coef, intp_t batch,
                               double* grad) noexcept nogil:
    """linear_grad on the rows ``features[states]``, per state: when the table has no more rows
    than the batch, each state's logits ``phi_s W + b`` are computed once, tabular_grad gives the
    per-state logit gradient G (each visited state's softmax once), and ``dW = phi^T G``,
    ``db = sum_s G[s]``: O(B + S x F x A) work instead of O(B x F x A).  A larger table gathers the
    batch's rows and runs linear_grad.  PG_BAD_INPUT if a state is out of range (and, per state,
    as tabular_grad: an action out of range or an advantage or weight not finite); the entry
    points check every argument before."""
    cdef intp_t F = n_features, A = n_actions, n_w = n_features * n_actions, S = n_states
    cdef intp_t i, k, s, a, status, n_scratch
    cdef floating* rows
    cdef double* buf
    cdef double* phi
    cdef double* W
    cdef double* logits
    cdef double* G
    cdef double* adv
    cdef double* wts = NULL
    if batch == 0:
        return PG_OK
    if S > batch:
        rows = <floating*> malloc(batch * F * sizeof(floating))
        if rows == NULL:
            return PG_NO_MEMORY
        for i in range(batch):
            s = states[i]
            if <uint64_t> s >= <uint64_t> S:
                free(rows)
                return PG_BAD_INPUT
            memcpy(rows + i * F, features + s * F, F * sizeof(floating))
        status = linear_grad(params, F, A, rows, actions, advantages, weights, entropy_coef,
                             batch, grad)
        free(rows)
        return status
    n_scratch = 2 * S * A
    if floating is float:
        n_scratch += S * F + n_w + A + 2 * batch
    buf = <double*> malloc(n_scratch * sizeof(double))
    if buf == NULL:
        return PG_NO_MEMORY
    logits = buf
    G = logits + S * A
    memset(G, 0, S * A * sizeof(double))
    if floating is double:
        phi = <double*> features  # only read
        W = <double*> params
        adv = <double*> advantages
        wts = <double*> weights
    else:
        phi = G + S * A
        W = phi + S * F
        adv = W + n_w + A
        for k in range(S * F):
            phi[k] = <double> features[k]
        for k in range(n_w + A):
            W[k] = <double> params[k]
        for i in range(batch):
            adv[i] = <double> advantages[i]
        if weights != NULL:
            wts = adv + batch
            for i in range(batch):
                wts[i] = <double> weights[i]
    mf_pg_rows_matmul(phi, W, logits, S, F, A)
    for s in range(S):
        for a in range(A):
            logits[s * A + a] += W[n_w + a]
    status = tabular_grad(<const double*> logits, S, A, states, actions, <const double*> adv,
                          <const double*> wts, entropy_coef, batch, G)
    if status == PG_OK:
        mf_pg_outer_acc(phi, G, grad, S, F, A)
        for s in range(S):
            for a in range(A):
                grad[n_w + a] += G[s * A + a]
    free(buf)
    return status

cdef void sgd_kernel(floating* params, const floating* grad, floating* velocity, intp_t n,
                     double lr, double momentum, bint nesterov, double scale) noexcept nogil:
    cdef intp_t k
    cdef double g, buf, step
    for k in range(n):
        g = <double> grad[k] * scale
        if momentum != 0.0:
            buf = momentum * <double> velocity[k] + g
            velocity[k] = <floating> buf
            step = g + momentum * buf if nesterov else buf
        else:
            step = g
        params[k] = <floating> (<double> params[k] - lr * step)


cdef void adam_kernel(floating* params, const floating* grad, floating* exp_avg,
                      floating* exp_avg_sq, intp_t n, double step_size, double bc2_sqrt,
                      double beta1, double beta2, double eps, double scale) noexcept nogil:
    # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= step_size * m / (sqrt(v) / bc2 + eps)
    # (in the C block above, so that sqrt and the division vectorise)
    if floating is double:
        mf_pg_adam_d(params, grad, exp_avg, exp_avg_sq, n, step_size, bc2_sqrt, beta1, beta2,
                     eps, scale)
    else:
        mf_pg_adam_f(params, grad, exp_avg, exp_avg_sq, n, step_size, bc2_sqrt, beta1, beta2,
                     eps, scale)


cdef inline double clip_coef(const floating* grad, intp_t n, double max_norm,
                             double* norm_out) noexcept nogil:
    cdef double s, c, m, x, scaled
    cdef intp_t k
    if floating is double:
        s = mf_pg_sumsq_d(grad, n)
    else:
        s = mf_pg_sumsq_f(grad, n)
    if not (s - s == 0.0):
        # finite entries whose squares overflow: scaled by the largest magnitude (the reference's
        # rule); a norm beyond the float64 range comes back as inf and the caller raises
        m = 0.0
        for k in range(n):
            x = fabs(<double> grad[k])
            if x > m:
                m = x
        s = 0.0
        for k in range(n):
            x = <double> grad[k] / m
            s += x * x
        scaled = sqrt(s)
        norm_out[0] = m * scaled
        if norm_out[0] == INFINITY:
            return 1.0
        if max_norm > 0.0:
            c = (max_norm / m) / scaled
            if c < 1.0:
                return c
        return 1.0
    norm_out[0] = sqrt(s)
    if max_norm > 0.0:
        c = max_norm / (norm_out[0] + 1e-6)
        if c < 1.0:
            return c
    return 1.0


cdef double clip_and_step(floating* params, const double* grad, floating* grad_out, intp_t n,
                          double max_norm, int opt_kind, floating* state0, floating* state1,
                          const double* hyper) noexcept nogil:
    cdef intp_t k
    cdef double norm, coef
    if floating is double:
        memcpy(grad_out, grad, n * sizeof(double))
    else:
        for k in range(n):
            grad_out[k] = <floating> grad[k]
    coef = clip_coef(grad_out, n, max_norm, &norm)
    if norm == INFINITY:  # the caller raises FloatingPointError: nothing stepped
        return norm
    if opt_kind == PG_OPT_SGD:
        sgd_kernel(params, grad_out, state0, n, hyper[0], hyper[1], hyper[2] != 0.0, -coef)
    else:  # hyper = [lr, beta1, beta2, eps, t]; PyTorch's bias corrections
        adam_kernel(params, grad_out, state0, state1, n, hyper[0] / (1.0 - pow(hyper[1], hyper[4])),
                    sqrt(1.0 - pow(hyper[2], hyper[4])), hyper[1], hyper[2], hyper[3], -coef)
    return norm


# ---------------------------------------------------------------------------------------------
# Fast-path checks (fall back to the reference's check_* helpers, which convert or raise)
# ---------------------------------------------------------------------------------------------

cdef inline bint _vec(object x, int typenum, intp_t length):
    """x is a C-contiguous, aligned, native-byte-order 1-D ndarray of typenum (and the given
    length if >= 0).  Anything else takes the reference's checks, which convert or reject it."""
    cdef cnp.ndarray arr
    if type(x) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray> x
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISBEHAVED_RO(arr)
            and (length < 0 or cnp.PyArray_DIM(arr, 0) == length))


cdef inline int _nonfinite(void* data, bint dbl, intp_t n) noexcept nogil:
    if dbl:
        return mf_pg_nonfinite_d(<const double*> data, n)
    return mf_pg_nonfinite_f(<const float*> data, n)


cdef inline bint _all_finite(cnp.ndarray arr, intp_t n) noexcept:
    cdef int bad
    cdef void* data = cnp.PyArray_DATA(arr)
    cdef bint dbl = cnp.PyArray_TYPE(arr) == cnp.NPY_DOUBLE
    if n > NOGIL_MIN:
        with nogil:
            bad = _nonfinite(data, dbl, n)
    else:
        bad = _nonfinite(data, dbl, n)
    return bad == 0


cdef inline uint64_t _out_of_range(const int64_t* p, intp_t n, int64_t high) noexcept nogil:
    cdef intp_t k
    cdef uint64_t bad = 0
    for k in range(n):
        bad |= <uint64_t> (<uint64_t> p[k] >= <uint64_t> high)
    return bad


cdef inline bint _in_range(cnp.ndarray arr, intp_t n, int64_t high) noexcept:
    cdef const int64_t* p = <const int64_t*> cnp.PyArray_DATA(arr)
    cdef uint64_t bad
    if n > NOGIL_MIN:
        with nogil:
            bad = _out_of_range(p, n, high)
    else:
        bad = _out_of_range(p, n, high)
    return bad == 0


cdef inline bint _is_real(object v):
    return type(v) is float or type(v) is int


cdef tuple _batch(object params, object n_rows, object n_actions, object obs, object actions,
                  object advantages, object weights, object entropy_coef, bint linear):
    """Validated (params, n_rows, n_actions, obs, actions, advantages, weights, entropy_coef)."""
    cdef cnp.ndarray p, o
    cdef int tn
    cdef intp_t nr, na, batch
    cdef double ec
    if (type(params) is cnp.ndarray and type(n_rows) is int and type(n_actions) is int
            and _is_real(entropy_coef)):
        p = <cnp.ndarray> params
        tn = cnp.PyArray_TYPE(p)
        nr = n_rows
        na = n_actions
        ec = entropy_coef
        if ((tn == cnp.NPY_DOUBLE or tn == cnp.NPY_FLOAT) and nr >= 1 and na >= 1
                and ec - ec == 0.0
                and _vec(p, tn, nr * na + (na if linear else 0))):
            if linear:
                ok = (type(obs) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> obs) == tn
                      and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> obs)
                      and cnp.PyArray_NDIM(<cnp.ndarray> obs) == 2
                      and cnp.PyArray_DIM(<cnp.ndarray> obs, 1) == nr
                      and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> obs))
            else:
                ok = _vec(obs, cnp.NPY_INT64, -1)
            if ok:
                o = <cnp.ndarray> obs
                batch = cnp.PyArray_DIM(o, 0)
                # tabular: the kernel checks each step's indices and numbers in its own pass
                if (_vec(actions, cnp.NPY_INT64, batch) and _vec(advantages, tn, batch)
                        and (weights is None or _vec(weights, tn, batch))
                        and _all_finite(p, cnp.PyArray_DIM(p, 0))
                        and (not linear or (_all_finite(<cnp.ndarray> advantages, batch)
                                            and (weights is None
                                                 or _all_finite(<cnp.ndarray> weights, batch))
                                            and _in_range(<cnp.ndarray> actions, batch, na)
                                            and _all_finite(o, batch * nr)))):
                    return (params, nr, na, obs, actions, advantages, weights, ec)
    if linear:
        return _ref.check_linear_batch(params, n_rows, n_actions, obs, actions, advantages,
                                       weights, entropy_coef)
    return _ref.check_tabular_batch(params, n_rows, n_actions, obs, actions, advantages, weights,
                                    entropy_coef)



cdef tuple _states_batch(object params, object n_features, object n_actions, object features,
                         object states, object actions, object advantages, object weights,
                         object entropy_coef, bint features_checked):
    """Validated (params, F, A, features, states, actions, advantages, weights, entropy_coef)
    for a linear policy fed states; ``features_checked``: the table was validated when bound."""
    cdef cnp.ndarray p, phi
    cdef int tn
    cdef intp_t nf, na, batch, n_states
    cdef double ec
    if (type(params) is cnp.ndarray and type(n_features) is int and type(n_actions) is int
            and _is_real(entropy_coef) and type(features) is cnp.ndarray):
        p = <cnp.ndarray> params
        phi = <cnp.ndarray> features
        tn = cnp.PyArray_TYPE(p)
        nf = n_features
        na = n_actions
        ec = entropy_coef
        if ((tn == cnp.NPY_DOUBLE or tn == cnp.NPY_FLOAT) and nf >= 1 and na >= 1
                and ec - ec == 0.0 and _vec(p, tn, nf * na + na)
                and cnp.PyArray_TYPE(phi) == tn and cnp.PyArray_ISBEHAVED_RO(phi)
                and cnp.PyArray_NDIM(phi) == 2
                and cnp.PyArray_DIM(phi, 1) == nf and cnp.PyArray_DIM(phi, 0) >= 1
                and cnp.PyArray_IS_C_CONTIGUOUS(phi) and _vec(states, cnp.NPY_INT64, -1)):
            n_states = cnp.PyArray_DIM(phi, 0)
            batch = cnp.PyArray_DIM(<cnp.ndarray> states, 0)
            if (_vec(actions, cnp.NPY_INT64, batch) and _vec(advantages, tn, batch)
                    and (weights is None or _vec(weights, tn, batch))
                    and _all_finite(p, cnp.PyArray_DIM(p, 0))
                    and (features_checked or _all_finite(phi, n_states * nf))
                    and _all_finite(<cnp.ndarray> advantages, batch)
                    and (weights is None or _all_finite(<cnp.ndarray> weights, batch))
                    and _in_range(<cnp.ndarray> states, batch, n_states)
                    and _in_range(<cnp.ndarray> actions, batch, na)):
                return (params, nf, na, features, states, actions, advantages, weights, ec)
    return _ref.check_linear_states_batch(params, n_features, n_actions, features, states,
                                          actions, advantages, weights, entropy_coef)

cdef bint _grad_overflows(const double* grad, intp_t n, bint dbl) noexcept nogil:
    """A finite-input gradient that overflowed: an entry is +-inf (or beyond float32's range)."""
    cdef intp_t k
    if dbl:
        return mf_pg_nonfinite_d(grad, n) != 0
    for k in range(n):
        if not (-FLT_MAX <= grad[k] <= FLT_MAX):
            return True
    return False


cdef object _finish_finite(cnp.ndarray res, object out, object what):
    """The reference's _finish_finite for a result computed into ``res`` (fresh when ``out`` is
    given): FloatingPointError if it overflowed (``out`` untouched), else ``out`` filled."""
    cdef intp_t n = cnp.PyArray_SIZE(res)
    if n and _nonfinite(cnp.PyArray_DATA(res), cnp.PyArray_TYPE(res) == cnp.NPY_DOUBLE, n):
        raise FloatingPointError(f"{what} overflow the {res.dtype.name} range")
    if out is None:
        return res
    out[...] = res
    return out


cdef inline cnp.ndarray _out(object out, intp_t n, object dtype):
    if out is None:
        return cnp.PyArray_EMPTY(1, <cnp.npy_intp*> &n, (<cnp.dtype> dtype).type_num, 0)
    return _validate.check_out(out, (n,), dtype)


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

def discounted_returns(rewards, dones, gamma, bootstrap=None, out=None):
    """Discounted return-to-go.  See :func:`metarl_fast.reference.pg.discounted_returns`."""
    cdef cnp.ndarray r = _ref.check_vector(rewards, "rewards")
    cdef intp_t n = r.shape[0]
    cdef cnp.ndarray d = _ref.check_dones(dones, n)
    cdef double g = _ref.check_unit(gamma, "gamma")
    cdef double tail = 0.0 if bootstrap is None else _validate.finite_float(bootstrap, "bootstrap")
    if out is not None:
        _out(out, n, r.dtype)  # checked now, written only if the result is finite
    cdef cnp.ndarray res = _out(None, n, r.dtype)
    cdef const uint8_t* dp = <const uint8_t*> cnp.PyArray_DATA(d)
    if cnp.PyArray_TYPE(r) == cnp.NPY_DOUBLE:
        with nogil:
            returns_scan(<const double*> cnp.PyArray_DATA(r), dp, n, g, tail,
                         <double*> cnp.PyArray_DATA(res))
    else:
        with nogil:
            returns_scan(<const float*> cnp.PyArray_DATA(r), dp, n, g, tail,
                         <float*> cnp.PyArray_DATA(res))
    return _finish_finite(res, out, "discounted_returns: the returns")


def gae(rewards, values, next_values, dones, gamma, lam, out=None):
    """Generalised advantage estimation.  See :func:`metarl_fast.reference.pg.gae`."""
    cdef cnp.ndarray r = _ref.check_vector(rewards, "rewards")
    cdef intp_t n = r.shape[0]
    cdef cnp.ndarray v = _ref.check_vector(values, "values", n, r.dtype)
    cdef cnp.ndarray nv = _ref.check_vector(next_values, "next_values", n, r.dtype)
    cdef cnp.ndarray d = _ref.check_dones(dones, n)
    cdef double g = _ref.check_unit(gamma, "gamma")
    cdef double lm = _ref.check_unit(lam, "lam")
    if out is not None:
        _out(out, n, r.dtype)  # checked now, written only if the result is finite
    cdef cnp.ndarray res = _out(None, n, r.dtype)
    cdef const uint8_t* dp = <const uint8_t*> cnp.PyArray_DATA(d)
    if cnp.PyArray_TYPE(r) == cnp.NPY_DOUBLE:
        with nogil:
            gae_scan(<const double*> cnp.PyArray_DATA(r), <const double*> cnp.PyArray_DATA(v),
                     <const double*> cnp.PyArray_DATA(nv), dp, n, g, lm,
                     <double*> cnp.PyArray_DATA(res))
    else:
        with nogil:
            gae_scan(<const float*> cnp.PyArray_DATA(r), <const float*> cnp.PyArray_DATA(v),
                     <const float*> cnp.PyArray_DATA(nv), dp, n, g, lm,
                     <float*> cnp.PyArray_DATA(res))
    return _finish_finite(res, out, "gae: the advantages")


def vtrace(rewards, values, next_values, log_rhos, ends, gamma, rho_bar=None, c_bar=None):
    """V-trace targets and advantages.  See :func:`metarl_fast.reference.pg.vtrace`."""
    cdef cnp.ndarray r = _ref.check_vector(rewards, "rewards")
    cdef intp_t n = r.shape[0]
    cdef cnp.ndarray v = _ref.check_vector(values, "values", n, r.dtype)
    cdef cnp.ndarray nv = _ref.check_vector(next_values, "next_values", n, r.dtype)
    cdef cnp.ndarray lr = _ref.check_log_ratios(log_rhos, n, r.dtype)
    cdef cnp.ndarray d = _ref.check_dones(ends, n, "ends")
    cdef double g = _ref.check_unit(gamma, "gamma")
    cdef double rho_cap = _ref.check_cap(rho_bar, "rho_bar"), c_cap = _ref.check_cap(c_bar, "c_bar")
    cdef cnp.ndarray vs = _out(None, n, np.dtype(np.float64))
    cdef cnp.ndarray adv = _out(None, n, np.dtype(np.float64))
    cdef const uint8_t* dp = <const uint8_t*> cnp.PyArray_DATA(d)
    cdef double* vsp = <double*> cnp.PyArray_DATA(vs)
    cdef double* ap = <double*> cnp.PyArray_DATA(adv)
    if cnp.PyArray_TYPE(r) == cnp.NPY_DOUBLE:
        with nogil:
            vtrace_scan(<const double*> cnp.PyArray_DATA(r), <const double*> cnp.PyArray_DATA(v),
                        <const double*> cnp.PyArray_DATA(nv), <const double*> cnp.PyArray_DATA(lr),
                        dp, n, g, rho_cap, c_cap, vsp, ap)
    else:
        with nogil:
            vtrace_scan(<const float*> cnp.PyArray_DATA(r), <const float*> cnp.PyArray_DATA(v),
                        <const float*> cnp.PyArray_DATA(nv), <const float*> cnp.PyArray_DATA(lr),
                        dp, n, g, rho_cap, c_cap, vsp, ap)
    # rounded once to the dtype of rewards, as the reference does
    return (_ref._finish_finite(vs, r.dtype, None, "vtrace: the targets"),
            _ref._finish_finite(adv, r.dtype, None, "vtrace: the advantages"))


cdef _raise_bad_steps(tuple checked):
    """The reference's checks name the bad argument (the kernel found one)."""
    if len(checked) == 9:
        _ref.check_linear_states_batch(*checked)
    else:
        _ref.check_tabular_batch(*checked)
    raise ValueError("states, actions, advantages or weights: out of range or not finite")


cdef intp_t _grad_call(bint dbl, bint linear, const void* p, intp_t nr, intp_t na, const void* o,
                       const int64_t* ap, const void* adv, const void* wp, double ec, intp_t batch,
                       double* grad) noexcept nogil:
    if dbl:
        if linear:
            return linear_grad(<const double*> p, nr, na, <const double*> o, ap,
                               <const double*> adv, <const double*> wp, ec, batch, grad)
        return tabular_grad(<const double*> p, nr, na, <const int64_t*> o, ap,
                            <const double*> adv, <const double*> wp, ec, batch, grad)
    if linear:
        return linear_grad(<const float*> p, nr, na, <const float*> o, ap,
                           <const float*> adv, <const float*> wp, ec, batch, grad)
    return tabular_grad(<const float*> p, nr, na, <const int64_t*> o, ap,
                        <const float*> adv, <const float*> wp, ec, batch, grad)


cdef intp_t _states_grad_call(bint dbl, const void* p, intp_t nf, intp_t na, const void* phi,
                              intp_t n_states, const int64_t* sp, const int64_t* ap,
                              const void* adv, const void* wp, double ec, intp_t batch,
                              double* grad) noexcept nogil:
    if dbl:
        return linear_states_grad(<const double*> p, nf, na, <const double*> phi, n_states, sp,
                                  ap, <const double*> adv, <const double*> wp, ec, batch, grad)
    return linear_states_grad(<const float*> p, nf, na, <const float*> phi, n_states, sp, ap,
                              <const float*> adv, <const float*> wp, ec, batch, grad)


cdef intp_t _states_grad_into(tuple checked, double* grad):
    """linear_states_grad on validated arguments (a 9-tuple of _states_batch) into a zeroed buffer."""
    cdef cnp.ndarray p = checked[0], phi = checked[3], o = checked[4], acts = checked[5]
    cdef cnp.ndarray adv = checked[6]
    cdef object w = checked[7]
    cdef intp_t nf = checked[1], na = checked[2], batch = o.shape[0], n_states = phi.shape[0]
    cdef intp_t status
    cdef double ec = checked[8]
    cdef const void* wp = NULL if w is None else cnp.PyArray_DATA(<cnp.ndarray> w)
    cdef const int64_t* ap = <const int64_t*> cnp.PyArray_DATA(acts)
    cdef const int64_t* sp = <const int64_t*> cnp.PyArray_DATA(o)
    cdef bint dbl = cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE
    cdef const void* pp = cnp.PyArray_DATA(p)
    cdef const void* fp = cnp.PyArray_DATA(phi)
    cdef const void* advp = cnp.PyArray_DATA(adv)
    if batch + n_states * nf > NOGIL_GRAD_MIN:
        with nogil:
            status = _states_grad_call(dbl, pp, nf, na, fp, n_states, sp, ap, advp, wp, ec,
                                       batch, grad)
    else:  # small: keep the GIL (releasing it costs more than the work)
        status = _states_grad_call(dbl, pp, nf, na, fp, n_states, sp, ap, advp, wp, ec, batch,
                                   grad)
    return status


cdef intp_t _grad_into(tuple checked, bint linear, double* grad):
    """Run the tabular/linear gradient kernel on validated arguments into a zeroed buffer."""
    if len(checked) == 9:
        return _states_grad_into(checked, grad)
    cdef cnp.ndarray p = checked[0], o = checked[3], acts = checked[4], adv = checked[5]
    cdef object w = checked[6]
    cdef intp_t nr = checked[1], na = checked[2], batch = o.shape[0], status
    cdef double ec = checked[7]
    cdef const void* wp = NULL if w is None else cnp.PyArray_DATA(<cnp.ndarray> w)
    cdef const int64_t* ap = <const int64_t*> cnp.PyArray_DATA(acts)
    cdef bint dbl = cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE
    cdef const void* pp = cnp.PyArray_DATA(p)
    cdef const void* op = cnp.PyArray_DATA(o)
    cdef const void* advp = cnp.PyArray_DATA(adv)
    # small batches keep the GIL: releasing and re-taking it costs more than their work
    if batch * (nr if linear else 1) > NOGIL_GRAD_MIN:
        with nogil:
            status = _grad_call(dbl, linear, pp, nr, na, op, ap, advp, wp, ec, batch, grad)
    else:
        status = _grad_call(dbl, linear, pp, nr, na, op, ap, advp, wp, ec, batch, grad)
    return status


cdef object _policy_gradient(tuple checked, bint linear, object out):
    cdef cnp.ndarray p = checked[0]
    cdef intp_t n = p.shape[0], k, status
    cdef cnp.ndarray res = _out(out, n, p.dtype)
    cdef double* grad = <double*> calloc(n, sizeof(double))
    if grad == NULL:
        raise MemoryError("metarl_fast: out of memory in a policy-gradient kernel")
    status = _grad_into(checked, linear, grad)
    if status == PG_BAD_INPUT:
        free(grad)
        _raise_bad_steps(checked)
    if status == PG_OK and _grad_overflows(grad, n, cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE):
        free(grad)
        raise FloatingPointError(f"{_ref._GRAD_OVERFLOW} overflow the {p.dtype.name} range")
    if status == PG_OK:
        if cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE:
            memcpy(cnp.PyArray_DATA(res), grad, n * sizeof(double))
        else:
            for k in range(n):
                (<float*> cnp.PyArray_DATA(res))[k] = <float> grad[k]
    free(grad)
    if status != PG_OK:
        raise MemoryError("metarl_fast: out of memory in a policy-gradient kernel")
    return res


def tabular_policy_gradient(params, n_states, n_actions, states, actions, advantages,
                            weights=None, entropy_coef=0.0, out=None):
    """Tabular softmax policy gradient.  See :func:`metarl_fast.reference.pg.tabular_policy_gradient`."""
    checked = _batch(params, n_states, n_actions, states, actions, advantages, weights,
                     entropy_coef, False)
    return _policy_gradient(checked, False, out)


def linear_policy_gradient(params, n_features, n_actions, features, actions, advantages,
                           weights=None, entropy_coef=0.0, out=None):
    """Linear softmax policy gradient.  See :func:`metarl_fast.reference.pg.linear_policy_gradient`."""
    checked = _batch(params, n_features, n_actions, features, actions, advantages, weights,
                     entropy_coef, True)
    return _policy_gradient(checked, True, out)


def clip_grad_norm(grad, max_norm):
    """Clip ``grad`` in place to L2 norm <= max_norm.  See the reference."""
    cdef cnp.ndarray g = _ref.check_params(grad, "grad")
    if not g.flags.writeable:
        raise ValueError("grad must be writeable")
    cdef double mx = _ref.check_max_norm(max_norm, "max_norm")
    cdef double norm, coef
    cdef intp_t n = g.shape[0], k
    cdef double* d
    cdef float* f
    if cnp.PyArray_TYPE(g) == cnp.NPY_DOUBLE:
        d = <double*> cnp.PyArray_DATA(g)
        coef = clip_coef(<const double*> d, n, mx, &norm)
        if norm == INFINITY:
            raise FloatingPointError(_ref._NORM_OVERFLOW)
        if coef != 1.0:
            for k in range(n):
                d[k] = d[k] * coef
    else:
        f = <float*> cnp.PyArray_DATA(g)
        coef = clip_coef(<const float*> f, n, mx, &norm)
        if coef != 1.0:
            for k in range(n):
                f[k] = <float> (<double> f[k] * coef)
    return norm


cdef bint _update_ok(object params, object grad, object state0, object state1):
    """Fast path of the optimizer kernels: same-dtype C-contiguous 1-D arrays, finite."""
    cdef cnp.ndarray p
    cdef int tn
    cdef intp_t n
    if type(params) is not cnp.ndarray:
        return False
    p = <cnp.ndarray> params
    tn = cnp.PyArray_TYPE(p)
    if tn != cnp.NPY_DOUBLE and tn != cnp.NPY_FLOAT:
        return False
    n = cnp.PyArray_DIM(p, 0) if cnp.PyArray_NDIM(p) == 1 else -1
    return (n >= 0 and _vec(p, tn, n) and _vec(grad, tn, n) and _vec(state0, tn, n)
            and _vec(state1, tn, n) and cnp.PyArray_ISWRITEABLE(p)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> state0)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> state1)
            and _all_finite(p, n) and _all_finite(<cnp.ndarray> grad, n))


def sgd_update(params, grad, velocity, lr, momentum=0.0, nesterov=False, grad_scale=1.0):
    """One SGD step in place.  See :func:`metarl_fast.reference.pg.sgd_update`."""
    cdef cnp.ndarray p, g
    cdef double lr_, mom, scale
    if (_update_ok(params, grad, velocity, velocity) and _is_real(lr) and _is_real(momentum)
            and _is_real(grad_scale)):
        p, g = <cnp.ndarray> params, <cnp.ndarray> grad
        lr_, mom, scale = lr, momentum, grad_scale
    else:
        lr_, mom, scale = -1.0, -1.0, 0.0
    if not (lr_ >= 0.0 and mom >= 0.0 and lr_ - lr_ == 0.0 and mom - mom == 0.0
            and scale - scale == 0.0):
        p, g = _ref._check_update(params, grad, [("velocity", velocity)])
        lr_ = _validate.finite_float(lr, "lr", low=0.0)
        mom = _validate.finite_float(momentum, "momentum", low=0.0)
        scale = _validate.finite_float(grad_scale, "grad_scale")
    cdef bint nest = bool(nesterov)
    cdef cnp.ndarray vel = <cnp.ndarray> velocity
    cdef intp_t n = p.shape[0]
    if cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE:
        with nogil:
            sgd_kernel(<double*> cnp.PyArray_DATA(p), <const double*> cnp.PyArray_DATA(g),
                       <double*> cnp.PyArray_DATA(vel), n, lr_, mom, nest, scale)
    else:
        with nogil:
            sgd_kernel(<float*> cnp.PyArray_DATA(p), <const float*> cnp.PyArray_DATA(g),
                       <float*> cnp.PyArray_DATA(vel), n, lr_, mom, nest, scale)


def adam_update(params, grad, exp_avg, exp_avg_sq, step_size, bias_correction2_sqrt,
                beta1, beta2, eps, grad_scale=1.0):
    """One Adam step in place.  See :func:`metarl_fast.reference.pg.adam_update`."""
    cdef cnp.ndarray p, g
    cdef double ss, bc2, b1, b2, ep, scale = 0.0
    cdef double h[5]
    cdef bint ok
    if (_update_ok(params, grad, exp_avg, exp_avg_sq) and _is_real(step_size)
            and _is_real(bias_correction2_sqrt) and _is_real(beta1) and _is_real(beta2)
            and _is_real(eps) and _is_real(grad_scale)):
        h[0], h[1], h[2], h[3], h[4] = step_size, bias_correction2_sqrt, beta1, beta2, eps
        scale = grad_scale
        ok = (h[0] >= 0.0 and 0.0 < h[1] <= 1.0 and 0.0 <= h[2] < 1.0 and 0.0 <= h[3] < 1.0
              and h[4] > 0.0 and h[0] - h[0] == 0.0 and h[4] - h[4] == 0.0
              and scale - scale == 0.0)
    else:
        ok = False
    if ok:
        p, g = <cnp.ndarray> params, <cnp.ndarray> grad
        ss, bc2, b1, b2, ep = h[0], h[1], h[2], h[3], h[4]
    else:
        p, g = _ref._check_update(params, grad, [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)])
        ss, bc2, b1, b2, ep = _ref._check_adam_hyper(step_size, bias_correction2_sqrt, beta1,
                                                     beta2, eps)
        scale = _validate.finite_float(grad_scale, "grad_scale")
    cdef cnp.ndarray m = <cnp.ndarray> exp_avg, v = <cnp.ndarray> exp_avg_sq
    cdef intp_t n = p.shape[0]
    if cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE:
        with nogil:
            adam_kernel(<double*> cnp.PyArray_DATA(p), <const double*> cnp.PyArray_DATA(g),
                        <double*> cnp.PyArray_DATA(m), <double*> cnp.PyArray_DATA(v), n, ss, bc2,
                        b1, b2, ep, scale)
    else:
        with nogil:
            adam_kernel(<float*> cnp.PyArray_DATA(p), <const float*> cnp.PyArray_DATA(g),
                        <float*> cnp.PyArray_DATA(m), <float*> cnp.PyArray_DATA(v), n, ss, bc2,
                        b1, b2, ep, scale)


cdef double _clip_and_step_any(bint dbl, void* params, const double* grad, void* grad_out,
                               intp_t n, double max_norm, int kind, void* state,
                               const double* hyper) noexcept nogil:
    """clip_and_step on float64 or float32 buffers; ``state`` holds the two (n,) state rows."""
    if dbl:
        return clip_and_step(<double*> params, grad, <double*> grad_out, n, max_norm, kind,
                             <double*> state, <double*> state + n, hyper)
    return clip_and_step(<float*> params, grad, <float*> grad_out, n, max_norm, kind,
                         <float*> state, <float*> state + n, hyper)


cdef inline bint _hyper_ok(int kind, const double* h) noexcept:
    cdef intp_t k, nh = 3 if kind == PG_OPT_SGD else 5
    for k in range(nh):
        if h[k] - h[k] != 0.0:
            return False
    if kind == PG_OPT_SGD:
        return h[0] >= 0.0 and h[1] >= 0.0
    # [lr, beta1, beta2, eps, t]
    return (h[0] >= 0.0 and 0.0 <= h[1] < 1.0 and 0.0 <= h[2] < 1.0 and h[3] > 0.0
            and h[4] >= 1.0 and h[4] == floor(h[4]))


cdef object _step(tuple checked, bint linear, object max_grad_norm, object grad_out,
                  object opt_kind, object opt_state, object opt_hyper):
    cdef cnp.ndarray p = checked[0], go, st, hy
    cdef intp_t n = p.shape[0], status
    cdef int tn = cnp.PyArray_TYPE(p), kind
    cdef double mx, norm
    cdef double* grad
    cdef double small[SMALL_GRAD]
    # fast path: exact types and layouts; otherwise the reference's checks (convert or raise)
    if (type(opt_kind) is int and (opt_kind == PG_OPT_SGD or opt_kind == PG_OPT_ADAM)
            and (max_grad_norm is None or _is_real(max_grad_norm))
            and _vec(grad_out, tn, n) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> grad_out)
            and type(opt_state) is cnp.ndarray and _vec(opt_hyper, cnp.NPY_DOUBLE,
                                                         3 if opt_kind == PG_OPT_SGD else 5)
            and cnp.PyArray_TYPE(<cnp.ndarray> opt_state) == tn
            and cnp.PyArray_ISBEHAVED(<cnp.ndarray> opt_state)
            and cnp.PyArray_NDIM(<cnp.ndarray> opt_state) == 2
            and cnp.PyArray_DIM(<cnp.ndarray> opt_state, 0) == 2
            and cnp.PyArray_DIM(<cnp.ndarray> opt_state, 1) == n
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> opt_state)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> opt_state) and cnp.PyArray_ISWRITEABLE(p)
            and _hyper_ok(opt_kind, <const double*> cnp.PyArray_DATA(<cnp.ndarray> opt_hyper))
            and (max_grad_norm is None or (max_grad_norm - max_grad_norm == 0.0
                                           and max_grad_norm >= 0.0))):
        mx = 0.0 if max_grad_norm is None else max_grad_norm
        hy = <cnp.ndarray> opt_hyper
    else:
        mx, hy = _ref._check_fused(p, grad_out, max_grad_norm, opt_kind, opt_state, opt_hyper)
        hy = np.ascontiguousarray(hy, dtype=np.float64)
    go = <cnp.ndarray> grad_out
    st = <cnp.ndarray> opt_state
    kind = opt_kind
    # small policies use the stack: no allocation on the latency path
    if n <= SMALL_GRAD:
        memset(small, 0, n * sizeof(double))
        grad = small
    else:
        grad = <double*> calloc(n, sizeof(double))
        if grad == NULL:
            raise MemoryError("metarl_fast: out of memory in a policy-gradient kernel")
    status = _grad_into(checked, linear, grad)
    if status == PG_BAD_INPUT:  # nothing was updated
        if grad != small:
            free(grad)
        _raise_bad_steps(checked)
    if status == PG_OK and _grad_overflows(grad, n, tn == cnp.NPY_DOUBLE):  # nothing updated
        if grad != small:
            free(grad)
        raise FloatingPointError(f"{_ref._GRAD_OVERFLOW} overflow the {p.dtype.name} range")
    if status == PG_OK:
        if n > NOGIL_GRAD_MIN:
            with nogil:
                norm = _clip_and_step_any(tn == cnp.NPY_DOUBLE, cnp.PyArray_DATA(p), grad,
                                          cnp.PyArray_DATA(go), n, mx, kind, cnp.PyArray_DATA(st),
                                          <const double*> cnp.PyArray_DATA(hy))
        else:  # small: keep the GIL (releasing it costs more than the update)
            norm = _clip_and_step_any(tn == cnp.NPY_DOUBLE, cnp.PyArray_DATA(p), grad,
                                      cnp.PyArray_DATA(go), n, mx, kind, cnp.PyArray_DATA(st),
                                      <const double*> cnp.PyArray_DATA(hy))
    if grad != small:
        free(grad)
    if status != PG_OK:
        raise MemoryError("metarl_fast: out of memory in a policy-gradient kernel")
    if norm == INFINITY:
        raise FloatingPointError(_ref._NORM_OVERFLOW)
    return norm


def tabular_pg_step(params, n_states, n_actions, states, actions, advantages, weights,
                    entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper):
    """Fused gradient + clip + optimizer step.  See :func:`metarl_fast.reference.pg.tabular_pg_step`."""
    checked = _batch(params, n_states, n_actions, states, actions, advantages, weights,
                     entropy_coef, False)
    return _step(checked, False, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper)


cdef class FusedStep:
    """The compiled twin of :class:`metarl_fast.reference.pg.FusedStep` (see there): the arrays
    are held, the step number written into Adam's hyper-parameters in C."""
    cdef readonly object policy, optimizer
    cdef object n_rows, n_actions
    cdef bint linear
    cdef int opt_kind
    cdef object params, state, hyper, grad_out, features

    def __init__(self, policy, optimizer, linear, n_rows, n_actions, opt_kind, features=None):
        self.policy, self.optimizer = policy, optimizer
        self.linear, self.n_rows, self.n_actions, self.opt_kind = linear, n_rows, n_actions, opt_kind
        self.params, self.state, self.hyper = policy.params, optimizer.state, optimizer._hyper
        self.grad_out = optimizer._grad
        # linear policies fed states: the (S, F) feature table, validated and copied when bound
        self.features = features

    def __call__(self, obs, actions, advantages, weights=None, entropy_coef=0.0, max_grad_norm=None):
        cdef object optimizer = self.optimizer
        cdef cnp.ndarray hy
        if (self.policy.params is not self.params or optimizer.state is not self.state
                or optimizer._hyper is not self.hyper or optimizer.params is not self.params):
            raise ValueError("the policy or the optimizer no longer holds the arrays this step was "
                             "bound to; build a new one with metarl_fast.pg.fused_step")
        t = optimizer.steps + 1
        if self.opt_kind == PG_OPT_ADAM:
            hy = <cnp.ndarray> self.hyper
            if not (cnp.PyArray_TYPE(hy) == cnp.NPY_DOUBLE and cnp.PyArray_ISCARRAY(hy)
                    and cnp.PyArray_SIZE(hy) == 5):
                raise ValueError("the optimizer's hyper-parameters are not a writeable float64 (5,) array")
            (<double*> cnp.PyArray_DATA(hy))[4] = t
        if self.features is not None:
            checked = _states_batch(self.params, self.n_rows, self.n_actions, self.features, obs,
                                    actions, advantages, weights, entropy_coef, True)
        else:
            checked = _batch(self.params, self.n_rows, self.n_actions, obs, actions, advantages,
                             weights, entropy_coef, self.linear)
        norm = _step(checked, self.linear, max_grad_norm, self.grad_out, self.opt_kind, self.state,
                     self.hyper)
        optimizer.steps = t
        return norm


def linear_states_policy_gradient(params, n_features, n_actions, features, states, actions,
                                  advantages, weights=None, entropy_coef=0.0, out=None):
    """Linear policy gradient per state.  See :func:`metarl_fast.reference.pg.linear_states_policy_gradient`."""
    checked = _states_batch(params, n_features, n_actions, features, states, actions, advantages,
                            weights, entropy_coef, False)
    return _policy_gradient(checked, True, out)


def linear_states_pg_step(params, n_features, n_actions, features, states, actions, advantages,
                          weights, entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state,
                          opt_hyper):
    """Fused step per state.  See :func:`metarl_fast.reference.pg.linear_states_pg_step`."""
    checked = _states_batch(params, n_features, n_actions, features, states, actions, advantages,
                            weights, entropy_coef, False)
    return _step(checked, True, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper)


def linear_pg_step(params, n_features, n_actions, features, actions, advantages, weights,
                   entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper):
    """Fused gradient + clip + optimizer step.  See :func:`metarl_fast.reference.pg.linear_pg_step`."""
    checked = _batch(params, n_features, n_actions, features, actions, advantages, weights,
                     entropy_coef, True)
    return _step(checked, True, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper)


def tabular_td_update(values, states, rewards, next_states, dones, gamma, lr, out=None):
    """Batch TD(0) step on a value table.  See :func:`metarl_fast.reference.pg.tabular_td_update`."""
    cdef cnp.ndarray v = _ref.check_params(values, "values")
    if not v.flags.writeable:
        raise ValueError("values must be writeable")
    cdef intp_t n = v.shape[0]
    cdef cnp.ndarray s = _validate.int_array(states, "states", ndim=1, low=0, high=n)
    cdef intp_t batch = s.shape[0]
    cdef cnp.ndarray ns = _validate.int_array(next_states, "next_states", ndim=1, length=batch,
                                              low=0, high=n)
    r, d, g, step = _ref._check_td(rewards, dones, batch, v.dtype, gamma, lr)
    cdef double gamma_ = g, lr_ = step
    cdef cnp.ndarray res = _out(out, batch, v.dtype)
    cdef cnp.ndarray rr = r, dd = d
    cdef double* acc = <double*> calloc(n + 1, sizeof(double))
    if acc == NULL:
        raise MemoryError("metarl_fast: out of memory in a TD kernel")
    if cnp.PyArray_TYPE(v) == cnp.NPY_DOUBLE:
        with nogil:
            _td_table(<double*> cnp.PyArray_DATA(v), n, <const int64_t*> cnp.PyArray_DATA(s),
                      <const int64_t*> cnp.PyArray_DATA(ns), <const double*> cnp.PyArray_DATA(rr),
                      <const uint8_t*> cnp.PyArray_DATA(dd), batch, gamma_, lr_, acc,
                      <double*> cnp.PyArray_DATA(res))
    else:
        with nogil:
            _td_table(<float*> cnp.PyArray_DATA(v), n, <const int64_t*> cnp.PyArray_DATA(s),
                      <const int64_t*> cnp.PyArray_DATA(ns), <const float*> cnp.PyArray_DATA(rr),
                      <const uint8_t*> cnp.PyArray_DATA(dd), batch, gamma_, lr_, acc,
                      <float*> cnp.PyArray_DATA(res))
    free(acc)
    return res


cdef void _td_table(floating* values, intp_t n, const int64_t* states, const int64_t* next_states,
                    const floating* rewards, const uint8_t* dones, intp_t batch, double gamma,
                    double lr, double* acc, floating* out) noexcept nogil:
    cdef intp_t i, k
    cdef double delta, nv
    for i in range(batch):
        nv = 0.0 if dones[i] else <double> values[next_states[i]]
        delta = (<double> rewards[i] + gamma * nv) - <double> values[states[i]]
        out[i] = <floating> delta
        acc[states[i]] += delta
    if batch and lr != 0.0:
        for k in range(n):
            values[k] = <floating> (<double> values[k] + (lr / batch) * acc[k])


def linear_td_update(params, n_features, features, rewards, next_features, dones, gamma, lr,
                     out=None):
    """Batch TD(0) step on a linear value.  See :func:`metarl_fast.reference.pg.linear_td_update`."""
    cdef cnp.ndarray p = _ref.check_params(params)
    if not p.flags.writeable:
        raise ValueError("params must be writeable")
    cdef intp_t nf = _validate.positive_int(n_features, "n_features")
    _ref.check_params_size(p, nf + 1)
    cdef cnp.ndarray x = _ref.check_features(features, nf, p.dtype, "features")
    cdef intp_t batch = x.shape[0]
    cdef cnp.ndarray nx = _ref.check_features(next_features, nf, p.dtype, "next_features", batch)
    r, d, g, step = _ref._check_td(rewards, dones, batch, p.dtype, gamma, lr)
    cdef double gamma_ = g, lr_ = step
    cdef cnp.ndarray res = _out(out, batch, p.dtype)
    cdef cnp.ndarray rr = r, dd = d
    cdef double* acc = <double*> calloc(nf + 1, sizeof(double))
    if acc == NULL:
        raise MemoryError("metarl_fast: out of memory in a TD kernel")
    if cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE:
        with nogil:
            _td_linear(<double*> cnp.PyArray_DATA(p), nf, <const double*> cnp.PyArray_DATA(x),
                       <const double*> cnp.PyArray_DATA(nx), <const double*> cnp.PyArray_DATA(rr),
                       <const uint8_t*> cnp.PyArray_DATA(dd), batch, gamma_, lr_, acc,
                       <double*> cnp.PyArray_DATA(res))
    else:
        with nogil:
            _td_linear(<float*> cnp.PyArray_DATA(p), nf, <const float*> cnp.PyArray_DATA(x),
                       <const float*> cnp.PyArray_DATA(nx), <const float*> cnp.PyArray_DATA(rr),
                       <const uint8_t*> cnp.PyArray_DATA(dd), batch, gamma_, lr_, acc,
                       <float*> cnp.PyArray_DATA(res))
    free(acc)
    return res


cdef void _td_linear(floating* params, intp_t nf, const floating* x, const floating* nx,
                     const floating* rewards, const uint8_t* dones, intp_t batch, double gamma,
                     double lr, double* acc, floating* out) noexcept nogil:
    cdef intp_t i, f
    cdef double delta, v, nv, c = <double> params[nf]
    for i in range(batch):
        v = 0.0
        for f in range(nf):
            v += <double> x[i * nf + f] * <double> params[f]
        v = v + c
        nv = 0.0
        if not dones[i]:
            for f in range(nf):
                nv += <double> nx[i * nf + f] * <double> params[f]
            nv = nv + c
        delta = (<double> rewards[i] + gamma * nv) - v
        out[i] = <floating> delta
        for f in range(nf):
            acc[f] += <double> x[i * nf + f] * delta
        acc[nf] += delta
    if batch and lr != 0.0:
        for f in range(nf + 1):
            params[f] = <floating> (<double> params[f] + (lr / batch) * acc[f])


def truncated_importance_weights(log_probs, behaviour_log_probs, rho_bar=1.0, out=None):
    """min(rho_bar, pi/mu).  See :func:`metarl_fast.reference.pg.truncated_importance_weights`."""
    cdef cnp.ndarray lp = _ref.check_vector(log_probs, "log_probs")
    cdef intp_t n = lp.shape[0], k
    cdef cnp.ndarray lb = _ref.check_vector(behaviour_log_probs, "behaviour_log_probs", n, lp.dtype)
    cdef double cap = np.inf if rho_bar is None else _validate.finite_float(
        rho_bar, "rho_bar", low=0.0, low_open=True)
    if out is not None:
        _out(out, n, lp.dtype)  # checked now, written only if the result is finite
    cdef cnp.ndarray res = _out(None, n, lp.dtype)
    cdef double r
    if cnp.PyArray_TYPE(lp) == cnp.NPY_DOUBLE:
        for k in range(n):
            r = exp((<const double*> cnp.PyArray_DATA(lp))[k]
                    - (<const double*> cnp.PyArray_DATA(lb))[k])
            (<double*> cnp.PyArray_DATA(res))[k] = r if r < cap else cap
    else:
        for k in range(n):
            r = exp(<double> (<const float*> cnp.PyArray_DATA(lp))[k]
                    - <double> (<const float*> cnp.PyArray_DATA(lb))[k])
            (<float*> cnp.PyArray_DATA(res))[k] = <float> (r if r < cap else cap)
    return _finish_finite(res, out, "truncated_importance_weights: untruncated ratios pi / mu "
                                    "(truncate with rho_bar)")
