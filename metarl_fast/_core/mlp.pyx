"""MLP softmax policy kernels (Cython twin of :mod:`metarl_fast.reference.mlp`).

The layout, initialisation, arithmetic and errors are the reference's (see its docstring):
``mlp_layout`` and ``mlp_init`` are the reference's own functions; the other ``def`` functions
take a cheap C-level fast path when every argument already has the exact dtype and layout (finite
checks are C loops) and otherwise go through the reference's checks, which convert or raise.
``mlp_logits`` and ``mlp_act`` do not even scan params for NaN/inf on the fast path (at B = 1 the
scan cost more than the network): the kernel checks row 0's pre-activations instead, which a
non-finite parameter always reaches, and on a hit the call is validated in full and run again.

Kernels run ``nogil`` over blocks of ``MLP_BLOCK_ROWS`` rows carried through all layers, with
``mf_mlp_gemm`` (mlp_kernels.h: register tiles, sums in the reference's order, no BLAS) for every
product, float64 scratch allocated once per call (on the stack for small calls) and vectorised
activations (mf_mlp_tanh: an expm1-based tanh, bit for bit the reference's).  The forward pass
and the sampled actions are bit-identical to the reference; gradients, JVPs and HVPs agree to
rounding (other sum order).
"""
cimport numpy as cnp
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from numpy.random cimport bitgen_t

from metarl_fast._core.mf_exp cimport mf_exp_nonpos
from metarl_fast._core.policy cimport sample_rows
from metarl_fast._core.rng cimport bitgen_of

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import mlp as _ref
from metarl_fast.reference import pg as _pg
from metarl_fast.reference.mlp import ACTIVATIONS, MAX_DEPTH, MAX_WIDTH, mlp_init, mlp_layout  # noqa: F401

cnp.import_array()

cdef extern from "mlp_kernels.h" nogil:
    int MF_MLP_INIT_ZERO
    int MF_MLP_INIT_BIAS
    int MF_MLP_INIT_ACC
    void mf_mlp_gemm(const double* A, intp_t sam, intp_t sak, const double* B, intp_t ldb,
                     const double* bias, double* C, intp_t ldc, intp_t M, intp_t K, intp_t N,
                     int mode)
    void mf_mlp_activate(double* x, intp_t n, int use_tanh)
    void mf_mlp_dact(const double* a, intp_t n, int use_tanh, double* x)
    void mf_mlp_dact_r(const double* a, const double* r_z, intp_t n, int use_tanh, double* d,
                       double* rd)
    int mf_mlp_all_finite_f64(const double* x, intp_t n)
    int mf_mlp_all_finite_f32(const float* x, intp_t n)

# Below this many multiply-adds a call keeps the GIL: releasing it costs more than the work.
cdef intp_t NOGIL_MIN_WORK = 20000

cdef enum:
    # (the fast path's lazy check) a pre-activation or logit of row 0 is not finite: either params
    # holds NaN/inf or the sums overflowed; the caller validates everything and runs again
    MLP_UNVERIFIED = -4
    # float64 scratch on the stack: small calls (B = 1 from an agent loop) never call malloc
    SMALL_SCRATCH = 2048

cdef enum Kind:
    KIND_VJP            # dlogits given
    KIND_PG             # dlogits = coef (onehot(a) - softmax)


# ---------------------------------------------------------------------------------------------
# Kernels (nogil)
# ---------------------------------------------------------------------------------------------

cdef intp_t mlp_net_init(MLPNet* net, intp_t obs_dim, const intp_t* hidden, intp_t n_hidden,
                         intp_t n_actions, bint use_tanh) noexcept nogil:
    cdef intp_t l, off = 0
    net.n_layers = n_hidden + 1
    net.width[0] = obs_dim
    for l in range(n_hidden):
        net.width[l + 1] = hidden[l]
    net.width[n_hidden + 1] = n_actions
    net.max_width = 0
    for l in range(net.n_layers + 1):
        if net.width[l] > net.max_width:
            net.max_width = net.width[l]
    for l in range(net.n_layers):
        net.w_off[l] = off
        net.b_off[l] = off + net.width[l] * net.width[l + 1]
        off += (net.width[l] + 1) * net.width[l + 1]
    net.n_params = off
    net.use_tanh = use_tanh
    return off


cdef inline bint _all_finite(const floating* x, intp_t n) noexcept nogil:
    if floating is double:
        return mf_mlp_all_finite_f64(x, n) != 0
    else:
        return mf_mlp_all_finite_f32(x, n) != 0


cdef inline const double* _widen(const floating* x, intp_t n, double* buf) noexcept nogil:
    """``x`` itself (float64) or its float64 copy in ``buf`` (float32)."""
    cdef intp_t i
    if floating is double:
        return x
    else:
        for i in range(n):
            buf[i] = x[i]
        return buf


cdef void _transpose_weights(const MLPNet* net, const double* p, double* out) noexcept nogil:
    """out[w_off[l]:b_off[l]] = W_l^T, (width[l+1], width[l]) row-major, for l >= 1."""
    cdef intp_t l, j, k, n_in, n_out
    cdef const double* w
    cdef double* t
    for l in range(1, net.n_layers):
        n_in, n_out = net.width[l], net.width[l + 1]
        w = p + net.w_off[l]
        t = out + net.w_off[l]
        for j in range(n_in):
            for k in range(n_out):
                t[k * n_in + j] = w[j * n_out + k]


cdef inline void _gemm(const double* A, intp_t lda, const double* B, intp_t ldb,
                       const double* bias, double* C, intp_t ldc, intp_t M, intp_t K, intp_t N,
                       int mode) noexcept nogil:
    """C (M, N) = init + A B, A (M, K) row-major with row stride lda (see mf_mlp_gemm)."""
    mf_mlp_gemm(A, lda, 1, B, ldb, bias, C, ldc, M, K, N, mode)


cdef inline void _gemm_at(const double* A, intp_t lda, const double* B, intp_t ldb, double* C,
                          intp_t ldc, intp_t M, intp_t K, intp_t N) noexcept nogil:
    """C (M, N) += A^T B, A (K, M) row-major with row stride lda (no transposed copy)."""
    mf_mlp_gemm(A, 1, lda, B, ldb, NULL, C, ldc, M, K, N, MF_MLP_INIT_ACC)


cdef bint _forward_block(const MLPNet* net, const double* p, double** acts, intp_t n,
                         double* logits, bint check_row0) noexcept nogil:
    """acts[0] (n, width[0]) given; fills acts[1..L-1] (after the activation) and logits (n, A).

    ``check_row0``: False (and stop) as soon as a pre-activation or logit of row 0 is not finite.
    With finite obs that certifies params: a NaN/inf weight or bias makes every sum it enters
    NaN/inf (never absorbed), so row 0 alone sees any non-finite parameter."""
    cdef intp_t l, n_in, n_out
    cdef double* dst
    for l in range(net.n_layers):
        n_in, n_out = net.width[l], net.width[l + 1]
        dst = logits if l == net.n_layers - 1 else acts[l + 1]
        _gemm(acts[l], n_in, p + net.w_off[l], n_out, p + net.b_off[l], dst, n_out,
                    n, n_in, n_out, MF_MLP_INIT_BIAS)
        if check_row0 and not mf_mlp_all_finite_f64(dst, n_out):
            return False
        if l < net.n_layers - 1:
            mf_mlp_activate(dst, n * n_out, net.use_tanh)
    return True


cdef inline void _dact(const double* a, intp_t n, bint use_tanh, double* x) noexcept nogil:
    """x *= act'(z) where a = act(z): (1 - a^2) for tanh, [a > 0] for relu."""
    mf_mlp_dact(a, n, use_tanh, x)


cdef void _softmax_row(const double* logits, intp_t n_actions, double* p) noexcept nogil:
    cdef intp_t a
    cdef double m = logits[0], s = 0.0
    for a in range(1, n_actions):
        if logits[a] > m:
            m = logits[a]
    for a in range(n_actions):
        p[a] = mf_exp_nonpos(logits[a] - m)
        s += p[a]
    for a in range(n_actions):
        p[a] = p[a] / s


cdef void _pg_dlogits(const double* logits, intp_t n, intp_t n_actions, const int64_t* actions,
                      const double* coef, double* g) noexcept nogil:
    """g[i] = coef[i] (onehot(actions[i]) - softmax(logits[i]))."""
    cdef intp_t i, a
    cdef double* gi
    for i in range(n):
        gi = g + i * n_actions
        _softmax_row(logits + i * n_actions, n_actions, gi)
        for a in range(n_actions):
            gi[a] = -gi[a]
        gi[actions[i]] = gi[actions[i]] + 1.0
        for a in range(n_actions):
            gi[a] = gi[a] * coef[i]


cdef void _accumulate_layer(const MLPNet* net, intp_t l, const double* a, const double* d,
                            intp_t n, double* grad) noexcept nogil:
    """grad[W_l] += a^T d, grad[b_l] += sum_i d[i] (a (n, width[l]), d (n, width[l+1]))."""
    cdef intp_t i, k, n_in = net.width[l], n_out = net.width[l + 1]
    cdef double* gb = grad + net.b_off[l]
    _gemm_at(a, n_in, d, n_out, grad + net.w_off[l], n_out, n_in, n, n_out)
    for i in range(n):
        for k in range(n_out):
            gb[k] += d[i * n_out + k]


cdef inline intp_t _store(const double* x, intp_t n, floating* out) noexcept nogil:
    """out = x rounded; MLP_OVERFLOW (out untouched) if a rounded value is not finite."""
    cdef intp_t i
    cdef float f
    if not mf_mlp_all_finite_f64(x, n):
        return MLP_OVERFLOW
    if floating is float:
        for i in range(n):
            f = <float> x[i]
            if f - f != 0.0:  # inf after rounding
                return MLP_OVERFLOW
    for i in range(n):
        out[i] = <floating> x[i]
    return MLP_OK


cdef intp_t _forward(const MLPNet* net, const floating* params, const floating* obs,
                     intp_t n_rows, floating* logits_out, bint check_row0) noexcept nogil:
    """mlp_forward; ``check_row0`` (params not checked for NaN/inf by the caller): returns
    MLP_UNVERIFIED, with ``logits_out`` untouched, if row 0 meets a non-finite value."""
    cdef intp_t P = net.n_params, W = net.max_width, A = net.width[net.n_layers]
    cdef intp_t rb = MLP_BLOCK_ROWS if n_rows > MLP_BLOCK_ROWS else n_rows
    cdef intp_t r0, n, d0 = net.width[0], status = MLP_OK, l
    cdef intp_t size = (P if floating is float else 0) + rb * (2 * W + d0 + A)
    cdef double* acts[MLP_MAX_DEPTH + 1]
    cdef double small[SMALL_SCRATCH]
    cdef double* scratch = small
    cdef double* buf
    cdef double* logits
    cdef const double* p
    if n_rows == 0:
        return MLP_OK
    if size > SMALL_SCRATCH:
        scratch = <double*> malloc(size * sizeof(double))
        if scratch == NULL:
            return MLP_NO_MEMORY
    buf = scratch + (P if floating is float else 0)
    logits = buf + 2 * rb * W + rb * d0
    p = _widen(params, P, scratch)
    for l in range(1, net.n_layers):  # ping-pong: layer l reads acts[l], writes acts[l + 1]
        acts[l] = buf + (l % 2) * rb * W
    r0 = 0
    while r0 < n_rows:
        n = rb if n_rows - r0 > rb else n_rows - r0
        acts[0] = <double*> _widen(obs + r0 * d0, n * d0, buf + 2 * rb * W)
        if not _forward_block(net, p, acts, n, logits, check_row0 and r0 == 0):
            status = MLP_UNVERIFIED
            break
        status = _store(logits, n * A, logits_out + r0 * A)
        if status != MLP_OK:
            break
        r0 += n
    if scratch != small:
        free(scratch)
    return status


cdef intp_t mlp_forward(const MLPNet* net, const floating* params, const floating* obs,
                        intp_t n_rows, floating* logits_out) noexcept nogil:
    return _forward(net, params, obs, n_rows, logits_out, False)


cdef intp_t mlp_sample(const MLPNet* net, const floating* params, const floating* obs,
                       intp_t n_rows, bitgen_t* bitgen, int64_t* actions_out) noexcept nogil:
    return _sample(net, params, obs, n_rows, bitgen, actions_out, False)


cdef intp_t _sample(const MLPNet* net, const floating* params, const floating* obs,
                    intp_t n_rows, bitgen_t* bitgen, int64_t* actions_out,
                    bint check_row0) noexcept nogil:
    """mlp_sample; ``check_row0`` as in _forward (then nothing is drawn)."""
    cdef intp_t A = net.width[net.n_layers], status
    cdef floating small[256]
    cdef floating* logits = small
    if n_rows == 0:
        return MLP_OK
    if n_rows * A > 256:
        logits = <floating*> malloc(n_rows * A * sizeof(floating))
        if logits == NULL:
            return MLP_NO_MEMORY
    # every logit is computed and checked before the first draw
    status = _forward(net, params, obs, n_rows, logits, check_row0)
    if status == MLP_OK:
        status = sample_rows(logits, n_rows, A, bitgen, actions_out)
        if status >= 0:
            status = MLP_OVERFLOW
    if logits != small:
        free(logits)
    return status


cdef intp_t _backprop(const MLPNet* net, const floating* params, const floating* obs,
                      intp_t n_rows, Kind kind, const double* dlogits, const int64_t* actions,
                      const double* coef, const int64_t* episode, intp_t n_episodes,
                      floating* out) noexcept nogil:
    """Gradient (P,) of sum_i g_i . logits_i into ``out`` (``episode`` NULL), or per-episode
    gradients (n_episodes, P) (``episode`` sorted ids: blocks never straddle two episodes)."""
    cdef intp_t P = net.n_params, W = net.max_width, L = net.n_layers, A = net.width[L]
    cdef intp_t rb = MLP_BLOCK_ROWS if n_rows > MLP_BLOCK_ROWS else n_rows
    cdef intp_t d0 = net.width[0], r0, r1, n, l, i, status = MLP_OK, current = -1, e
    cdef intp_t acts_size = 0
    cdef double* acts[MLP_MAX_DEPTH + 1]
    cdef double* scratch
    cdef double* grad
    cdef double* wt
    cdef double* buf
    cdef double* logits
    cdef double* delta
    cdef double* other
    cdef double* swap
    cdef const double* p
    for l in range(L):
        acts_size += net.width[l]
    if episode != NULL:
        for i in range(n_episodes * P):
            out[i] = 0.0
    if n_rows == 0:
        if episode == NULL:
            for i in range(P):
                out[i] = 0.0
        return MLP_OK
    scratch = <double*> malloc((3 * P + rb * (acts_size + A + 2 * W)) * sizeof(double))
    if scratch == NULL:
        return MLP_NO_MEMORY
    grad = scratch
    wt = scratch + P
    buf = scratch + 2 * P
    p = _widen(params, P, scratch + 2 * P + rb * (acts_size + A + 2 * W))
    _transpose_weights(net, p, wt)
    memset(grad, 0, P * sizeof(double))
    acts[0] = buf
    for l in range(1, L):
        acts[l] = acts[l - 1] + rb * net.width[l - 1]
    logits = acts[L - 1] + rb * net.width[L - 1]
    delta = logits + rb * A
    other = delta + rb * W
    r0 = 0
    while r0 < n_rows:
        r1 = r0 + rb if n_rows - r0 > rb else n_rows
        if episode != NULL:
            e = episode[r0]
            for i in range(r0 + 1, r1):
                if episode[i] != e:
                    r1 = i
                    break
            if e != current:
                if current >= 0:
                    status = _store(grad, P, out + current * P)
                    if status != MLP_OK:
                        break
                    memset(grad, 0, P * sizeof(double))
                current = e
        n = r1 - r0
        if floating is double:
            acts[0] = <double*> (obs + r0 * d0)
        else:
            acts[0] = buf
            _widen(obs + r0 * d0, n * d0, buf)
        _forward_block(net, p, acts, n, logits, False)
        if kind == KIND_PG:
            _pg_dlogits(logits, n, A, actions + r0, coef + r0, delta)
        else:
            for i in range(n * A):
                delta[i] = dlogits[r0 * A + i]
        for l in range(L - 1, -1, -1):
            _accumulate_layer(net, l, acts[l], delta, n, grad)
            if l:
                _gemm(delta, net.width[l + 1], wt + net.w_off[l], net.width[l], NULL, other,
                            net.width[l], n, net.width[l + 1], net.width[l], MF_MLP_INIT_ZERO)
                _dact(acts[l], n * net.width[l], net.use_tanh, other)
                swap = delta
                delta = other
                other = swap
        r0 = r1
    if status == MLP_OK:
        status = _store(grad, P, out if episode == NULL else out + current * P)
    free(scratch)
    return status


cdef intp_t _jvp_hvp(const MLPNet* net, const floating* params, const floating* obs,
                     intp_t n_rows, const double* v, const int64_t* actions, const double* coef,
                     bint hvp, floating* out) noexcept nogil:
    """JVP (n_rows, A) into ``out`` (``hvp`` false) or the surrogate's HVP (P,) (``hvp`` true)."""
    cdef intp_t P = net.n_params, W = net.max_width, L = net.n_layers, A = net.width[L]
    cdef intp_t rb = MLP_BLOCK_ROWS if n_rows > MLP_BLOCK_ROWS else n_rows
    cdef intp_t d0 = net.width[0], r0, n, l, i, k, m, status = MLP_OK
    cdef intp_t acts_size = 0
    cdef double* acts[MLP_MAX_DEPTH + 1]
    cdef double* r_acts[MLP_MAX_DEPTH + 1]
    cdef double* r_zs[MLP_MAX_DEPTH + 1]
    cdef double* scratch
    cdef double* hv
    cdef double* wt
    cdef double* vwt
    cdef double* buf
    cdef double* logits
    cdef double* prob
    cdef double* d_cur
    cdef double* d_nxt
    cdef double* rd_cur
    cdef double* rd_nxt
    cdef double* swap
    cdef double* x_buf
    cdef const double* p
    cdef double s
    if n_rows == 0:
        if hvp:
            for i in range(P):
                out[i] = 0.0
        return MLP_OK
    for l in range(L):
        acts_size += net.width[l]
    # acts, r_acts, r_zs (each acts_size + A per row), prob, 4 delta buffers
    scratch = <double*> malloc((4 * P + rb * (3 * (acts_size + A) + A + 4 * W)) * sizeof(double))
    if scratch == NULL:
        return MLP_NO_MEMORY
    hv = scratch
    wt = scratch + P
    vwt = scratch + 2 * P
    buf = scratch + 4 * P
    p = _widen(params, P, scratch + 3 * P)
    memset(hv, 0, P * sizeof(double))
    if hvp:
        _transpose_weights(net, p, wt)
        _transpose_weights(net, v, vwt)
    for l in range(L + 1):
        acts[l] = buf
        r_acts[l] = buf + rb * (acts_size + A)
        r_zs[l] = buf + 2 * rb * (acts_size + A)
        buf = buf + rb * net.width[l]
    logits = acts[L]
    buf = scratch + 4 * P + 3 * rb * (acts_size + A)
    prob = buf
    d_cur = prob + rb * A
    d_nxt = d_cur + rb * W
    rd_cur = d_nxt + rb * W
    rd_nxt = rd_cur + rb * W
    x_buf = acts[0]
    r0 = 0
    while r0 < n_rows:
        n = rb if n_rows - r0 > rb else n_rows - r0
        acts[0] = <double*> _widen(obs + r0 * d0, n * d0, x_buf)
        _forward_block(net, p, acts, n, logits, False)
        # forward R-pass: R(z_l) = a_l V_l + Vb_l + R(a_l) W_l;  R(a_{l+1}) = act'(z_l) R(z_l)
        for l in range(L):
            _gemm(acts[l], net.width[l], v + net.w_off[l], net.width[l + 1],
                        v + net.b_off[l], r_zs[l + 1], net.width[l + 1],
                        n, net.width[l], net.width[l + 1], MF_MLP_INIT_BIAS)
            if l:
                _gemm(r_acts[l], net.width[l], p + net.w_off[l], net.width[l + 1], NULL,
                            r_zs[l + 1], net.width[l + 1], n, net.width[l], net.width[l + 1],
                            MF_MLP_INIT_ACC)
            if l < L - 1:
                m = n * net.width[l + 1]
                for i in range(m):
                    r_acts[l + 1][i] = r_zs[l + 1][i]
                _dact(acts[l + 1], m, net.use_tanh, r_acts[l + 1])
        if not hvp:
            status = _store(r_zs[L], n * A, out + r0 * A)
            if status != MLP_OK:
                break
            r0 += n
            continue
        # delta = coef (onehot - p);  R(delta) = -coef p (R(logits) - <p, R(logits)>)
        _pg_dlogits(logits, n, A, actions + r0, coef + r0, d_cur)
        for i in range(n):
            _softmax_row(logits + i * A, A, prob + i * A)
            s = 0.0
            for k in range(A):
                s += prob[i * A + k] * r_zs[L][i * A + k]
            for k in range(A):
                rd_cur[i * A + k] = -coef[r0 + i] * prob[i * A + k] * (r_zs[L][i * A + k] - s)
        for l in range(L - 1, -1, -1):
            _accumulate_layer(net, l, acts[l], rd_cur, n, hv)
            if l:
                # the bias part of R(a_l)^T delta is not there: R(b) enters through rd only
                _gemm_at(r_acts[l], net.width[l], d_cur, net.width[l + 1], hv + net.w_off[l],
                         net.width[l + 1], net.width[l], n, net.width[l + 1])
                # d_a = delta W^T;  R(d_a) = R(delta) W^T + delta V^T
                _gemm(d_cur, net.width[l + 1], wt + net.w_off[l], net.width[l], NULL,
                            d_nxt, net.width[l], n, net.width[l + 1], net.width[l],
                            MF_MLP_INIT_ZERO)
                _gemm(rd_cur, net.width[l + 1], wt + net.w_off[l], net.width[l], NULL,
                            rd_nxt, net.width[l], n, net.width[l + 1], net.width[l],
                            MF_MLP_INIT_ZERO)
                _gemm(d_cur, net.width[l + 1], vwt + net.w_off[l], net.width[l], NULL,
                            rd_nxt, net.width[l], n, net.width[l + 1], net.width[l],
                            MF_MLP_INIT_ACC)
                mf_mlp_dact_r(acts[l], r_zs[l], n * net.width[l], net.use_tanh, d_nxt, rd_nxt)
                swap = d_cur
                d_cur = d_nxt
                d_nxt = swap
                swap = rd_cur
                rd_cur = rd_nxt
                rd_nxt = swap
        r0 += n
    if hvp and status == MLP_OK:
        status = _store(hv, P, out)
    free(scratch)
    return status


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

cdef object _Generator = np.random.Generator
cdef long long _MAX_TABLE_ENTRIES = _validate.MAX_TABLE_ENTRIES


cdef inline bint _float_ok(object x, int ndim, int typenum):
    """Exact ndarray of ``typenum``, ``ndim``-D, C-contiguous, aligned, native byte order."""
    cdef cnp.ndarray arr
    if type(x) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray> x
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISBEHAVED_RO(arr))


cdef inline bint _finite_array(cnp.ndarray x):
    cdef intp_t n = cnp.PyArray_SIZE(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE:
        return mf_mlp_all_finite_f64(<const double*> cnp.PyArray_DATA(x), n) != 0
    return mf_mlp_all_finite_f32(<const float*> cnp.PyArray_DATA(x), n) != 0


cdef bint _fast_net(object params, object obs, object hidden, object activation, MLPNet* net,
                    bint lazy_params=False):
    """Fill ``net`` if every argument is already exact and valid (no Python-level checks).

    ``lazy_params``: params may still hold NaN/inf (not scanned: at B = 1 the scan costs more
    than the forward pass); the kernel's row-0 check (``_forward``'s ``check_row0``) catches it."""
    cdef cnp.ndarray p, x
    cdef intp_t widths[MLP_MAX_DEPTH]
    cdef intp_t n_hidden, i, head, rest, last, n_actions, obs_dim
    cdef long long w
    cdef int typenum, overflow
    cdef bint use_tanh
    if type(params) is not cnp.ndarray:
        return False
    p = <cnp.ndarray> params
    typenum = cnp.PyArray_TYPE(p)
    if typenum != cnp.NPY_DOUBLE and typenum != cnp.NPY_FLOAT:
        return False
    if not _float_ok(params, 1, typenum) or not _float_ok(obs, 2, typenum):
        return False
    x = <cnp.ndarray> obs
    obs_dim = cnp.PyArray_DIM(x, 1)
    if obs_dim < 1:
        return False
    if type(activation) is not str or type(hidden) is not tuple:
        return False
    if activation == "tanh":
        use_tanh = True
    elif activation == "relu":
        use_tanh = False
    else:
        return False
    n_hidden = len(<tuple> hidden)
    if n_hidden > MLP_MAX_DEPTH:
        return False
    head = 0
    last = obs_dim
    for i in range(n_hidden):
        item = (<tuple> hidden)[i]
        if type(item) is not int:
            return False
        overflow = 0
        w = PyLong_AsLongLongAndOverflow(item, &overflow)
        if overflow or not 1 <= w <= MLP_MAX_WIDTH:
            return False
        widths[i] = w
        head += (last + 1) * w
        last = w
    rest = cnp.PyArray_DIM(p, 0) - head
    if rest <= 0 or rest % (last + 1) != 0:
        return False
    n_actions = rest // (last + 1)
    if n_actions * (last + 1) + head > _MAX_TABLE_ENTRIES:
        return False
    if not _finite_array(x) or not (lazy_params or _finite_array(p)):
        return False
    mlp_net_init(net, obs_dim, widths, n_hidden, n_actions, use_tanh)
    return True


cdef tuple _net(object params, object obs, object hidden, object activation, MLPNet* net):
    """(params, obs) validated (the reference's checks raise or convert) and ``net`` filled."""
    cdef intp_t widths[MLP_MAX_DEPTH]
    cdef intp_t i
    if _fast_net(params, obs, hidden, activation, net):
        return params, obs
    params, obs, layers, activation = _ref._check_net(params, obs, hidden, activation)
    for i in range(len(layers) - 1):
        widths[i] = layers[i][3]
    mlp_net_init(net, obs.shape[1], widths, len(layers) - 1, layers[len(layers) - 1][3],
                 activation == "tanh")
    return params, obs


cdef inline cnp.ndarray _new(int ndim, intp_t d0, intp_t d1, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = d0
    dims[1] = d1
    return cnp.PyArray_EMPTY(ndim, dims, typenum, 0)


cdef inline bint _out_ok(object out, int ndim, intp_t d0, intp_t d1, int typenum):
    cdef cnp.ndarray arr
    if type(out) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray> out
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_DIM(arr, 0) == d0 and (ndim == 1 or cnp.PyArray_DIM(arr, 1) == d1)
            and cnp.PyArray_ISCARRAY(arr))


cdef inline object _check_out(object out, int ndim, intp_t d0, intp_t d1, int typenum):
    if out is None or _out_ok(out, ndim, d0, d1, typenum):
        return out
    shape = (d0, d1) if ndim == 2 else (d0, d1)[:1]
    _validate.check_out(out, shape, cnp.PyArray_DescrFromType(typenum))
    return out


cdef inline void _raise(intp_t status, str what) except *:
    if status == MLP_NO_MEMORY:
        raise MemoryError(f"metarl_fast: out of memory in the MLP kernel ({what})")
    if status == MLP_OVERFLOW:
        raise FloatingPointError(f"{what} overflow the float range (params or obs too large)")


cdef inline object _finish(cnp.ndarray res, object out):
    """``res`` (computed in a fresh array, so a rejected call never writes ``out``) into ``out``."""
    if out is None:
        return res
    out[...] = res
    return out


cdef inline cnp.ndarray _actions(object actions, intp_t n_rows, intp_t n_actions):
    cdef cnp.ndarray arr
    cdef const int64_t* a
    cdef intp_t i
    if (type(actions) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> actions) == cnp.NPY_INT64
            and _float_ok(actions, 1, cnp.NPY_INT64)
            and cnp.PyArray_DIM(<cnp.ndarray> actions, 0) == n_rows):
        arr = <cnp.ndarray> actions
        a = <const int64_t*> cnp.PyArray_DATA(arr)
        for i in range(n_rows):
            if a[i] < 0 or a[i] >= n_actions:
                break
        else:
            return arr
    return _validate.check_actions(actions, n_rows, n_actions)


cdef inline cnp.ndarray _vector(object x, str name, intp_t length):
    """float64 (length,), finite: the array itself if already so, else the reference's check."""
    if (_float_ok(x, 1, cnp.NPY_DOUBLE) and cnp.PyArray_DIM(<cnp.ndarray> x, 0) == length
            and _finite_array(<cnp.ndarray> x)):
        return <cnp.ndarray> x
    return _pg.check_vector(x, name, length=length, dtype=np.float64)


cdef inline bint _big(const MLPNet* net, intp_t n_rows):
    return n_rows * net.n_params > NOGIL_MIN_WORK


cdef intp_t _logits_any(const MLPNet* net, cnp.ndarray p, cnp.ndarray x, cnp.ndarray res,
                       bint check_row0) except? -99:
    cdef intp_t n_rows = cnp.PyArray_DIM(x, 0), status
    cdef void* pp = cnp.PyArray_DATA(p)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pr = cnp.PyArray_DATA(res)
    if cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE:
        if _big(net, n_rows):
            with nogil:
                status = _forward(net, <const double*> pp, <const double*> px, n_rows,
                                  <double*> pr, check_row0)
        else:
            status = _forward(net, <const double*> pp, <const double*> px, n_rows, <double*> pr,
                              check_row0)
    else:
        with nogil:
            status = _forward(net, <const float*> pp, <const float*> px, n_rows, <float*> pr,
                              check_row0)
    return status


def mlp_logits(params, obs, hidden, activation, out=None):
    """Logits (B, A) of params' dtype.  See :func:`metarl_fast.reference.mlp.mlp_logits`."""
    cdef MLPNet net
    cdef intp_t status, n_rows
    cdef cnp.ndarray res
    cdef bint lazy = _fast_net(params, obs, hidden, activation, &net, True)
    if not lazy:
        params, obs = _net(params, obs, hidden, activation, &net)
    n_rows = cnp.PyArray_DIM(<cnp.ndarray> obs, 0)
    _check_out(out, 2, n_rows, net.width[net.n_layers], cnp.PyArray_TYPE(<cnp.ndarray> params))
    res = _new(2, n_rows, net.width[net.n_layers], cnp.PyArray_TYPE(<cnp.ndarray> params))
    status = _logits_any(&net, params, obs, res, lazy)
    if status == MLP_UNVERIFIED:  # params holds NaN/inf (the checks raise) or the sums overflow
        params, obs = _net(params, obs, hidden, activation, &net)
        status = _logits_any(&net, params, obs, res, False)
    _raise(status, "the MLP's logits")
    return _finish(res, out)


cdef intp_t _sample_any(const MLPNet* net, cnp.ndarray p, cnp.ndarray x, object rng,
                        int64_t* actions, bint check_row0) except? -99:
    """Fused forward and sampling under ``rng``'s lock (released around big calls' kernel)."""
    cdef intp_t n_rows = cnp.PyArray_DIM(x, 0), status
    cdef void* pp = cnp.PyArray_DATA(p)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef bint dbl = cnp.PyArray_TYPE(p) == cnp.NPY_DOUBLE
    bit_generator = rng.bit_generator
    cdef bitgen_t* bitgen = bitgen_of(bit_generator)
    lock = bit_generator.lock
    lock.acquire()  # (not `with`: the context-manager protocol costs more than B=1's kernel)
    try:
        if _big(net, n_rows):
            with nogil:
                if dbl:
                    status = _sample(net, <const double*> pp, <const double*> px, n_rows, bitgen,
                                     actions, check_row0)
                else:
                    status = _sample(net, <const float*> pp, <const float*> px, n_rows, bitgen,
                                     actions, check_row0)
        elif dbl:
            status = _sample(net, <const double*> pp, <const double*> px, n_rows, bitgen, actions,
                             check_row0)
        else:
            status = _sample(net, <const float*> pp, <const float*> px, n_rows, bitgen, actions,
                             check_row0)
    finally:
        lock.release()
    return status


def mlp_act(params, obs, hidden, activation, rng, out=None):
    """Sampled actions int64 (B,).  See :func:`metarl_fast.reference.mlp.mlp_act`."""
    cdef MLPNet net
    cdef intp_t status, n_rows
    cdef cnp.ndarray res
    cdef int64_t* pr
    cdef bint lazy = _fast_net(params, obs, hidden, activation, &net, True)
    if not lazy:
        params, obs = _net(params, obs, hidden, activation, &net)
    if type(rng) is not _Generator and not isinstance(rng, _Generator):
        _validate.check_rng(rng)
    n_rows = cnp.PyArray_DIM(<cnp.ndarray> obs, 0)
    if out is None:
        res = _new(1, n_rows, 0, cnp.NPY_INT64)
    elif _out_ok(out, 1, n_rows, 0, cnp.NPY_INT64):
        res = <cnp.ndarray> out
    else:
        res = _validate.check_out(out, (n_rows,), np.int64)
    if n_rows == 0:
        return res
    pr = <int64_t*> cnp.PyArray_DATA(res)
    status = _sample_any(&net, params, obs, rng, pr, lazy)
    if status == MLP_UNVERIFIED:  # nothing drawn; params holds NaN/inf (the checks raise) or overflow
        params, obs = _net(params, obs, hidden, activation, &net)
        status = _sample_any(&net, params, obs, rng, pr, False)
    _raise(status, "the MLP's logits")
    return res


cdef object _run_backprop(MLPNet* net, cnp.ndarray p, cnp.ndarray x, Kind kind, cnp.ndarray g,
                          cnp.ndarray acts, cnp.ndarray coef, cnp.ndarray episode,
                          intp_t n_episodes, object out, str what):
    cdef intp_t status, n_rows = x.shape[0]
    cdef int typenum = cnp.PyArray_TYPE(p)
    cdef cnp.ndarray res
    cdef const double* pg = NULL if g is None else <const double*> cnp.PyArray_DATA(g)
    cdef const int64_t* pa = NULL if acts is None else <const int64_t*> cnp.PyArray_DATA(acts)
    cdef const double* pc = NULL if coef is None else <const double*> cnp.PyArray_DATA(coef)
    cdef const int64_t* pe = NULL if episode is None else <const int64_t*> cnp.PyArray_DATA(episode)
    cdef void* pp = cnp.PyArray_DATA(p)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pr
    if episode is None:
        _check_out(out, 1, net.n_params, 0, typenum)
        res = _new(1, net.n_params, 0, typenum)
    else:
        _check_out(out, 2, n_episodes, net.n_params, typenum)
        res = _new(2, n_episodes, net.n_params, typenum)
    pr = cnp.PyArray_DATA(res)
    if typenum == cnp.NPY_DOUBLE:
        with nogil:
            status = _backprop(net, <const double*> pp, <const double*> px, n_rows, kind, pg, pa,
                               pc, pe, n_episodes, <double*> pr)
    else:
        with nogil:
            status = _backprop(net, <const float*> pp, <const float*> px, n_rows, kind, pg, pa,
                               pc, pe, n_episodes, <float*> pr)
    _raise(status, what)
    return _finish(res, out)


def mlp_grad(params, obs, hidden, activation, dlogits, out=None):
    """VJP (P,) of params' dtype.  See :func:`metarl_fast.reference.mlp.mlp_grad`."""
    cdef MLPNet net
    cdef intp_t n_rows, A
    params, obs = _net(params, obs, hidden, activation, &net)
    n_rows, A = obs.shape[0], net.width[net.n_layers]
    if (_float_ok(dlogits, 2, cnp.NPY_DOUBLE) and dlogits.shape == (n_rows, A)
            and _finite_array(<cnp.ndarray> dlogits)):
        g = dlogits
    else:
        g = _validate.float_array(dlogits, "dlogits", ndim=2)
        if g.shape != (n_rows, A):
            raise ValueError(f"dlogits must have shape {(n_rows, A)}, got {g.shape}")
        if g.size and not np.all(np.isfinite(g)):
            raise ValueError("dlogits contains NaN or inf")
        g = np.ascontiguousarray(g, dtype=np.float64)
    return _run_backprop(&net, params, obs, KIND_VJP, g, None, None, None, 0, out,
                         "the MLP's gradient")


def mlp_policy_gradient(params, obs, hidden, activation, actions, coef, out=None):
    """Gradient (P,) of sum_i coef[i] log pi(a_i|o_i).  See the reference."""
    cdef MLPNet net
    params, obs = _net(params, obs, hidden, activation, &net)
    acts = _actions(actions, obs.shape[0], net.width[net.n_layers])
    c = _vector(coef, "coef", obs.shape[0])
    return _run_backprop(&net, params, obs, KIND_PG, None, acts, c, None, 0, out,
                         "the MLP's gradient")


def mlp_episode_grads(params, obs, hidden, activation, actions, coef, episode, n_episodes,
                      out=None):
    """Per-episode gradients (n_episodes, P).  See the reference."""
    cdef MLPNet net
    cdef cnp.ndarray ids
    cdef const int64_t* e
    cdef intp_t i, n_rows
    params, obs = _net(params, obs, hidden, activation, &net)
    n_rows = obs.shape[0]
    acts = _actions(actions, n_rows, net.width[net.n_layers])
    c = _vector(coef, "coef", n_rows)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes", minimum=0)
    _validate.check_table_size(n_episodes * net.n_params,
                               "mlp_episode_grads: n_episodes * P (the per-episode gradients)")
    ids = _validate.int_array(episode, "episode", ndim=1, length=n_rows, low=0,
                              high=max(n_episodes, 1))
    if n_rows and n_episodes == 0:
        raise ValueError("episode out of range: n_episodes is 0 but there are rows")
    e = <const int64_t*> cnp.PyArray_DATA(ids)
    for i in range(1, n_rows):
        if e[i] < e[i - 1]:
            raise ValueError("episode must be sorted (nondecreasing episode ids)")
    return _run_backprop(&net, params, obs, KIND_PG, None, acts, c, ids, n_episodes, out,
                         "the MLP's per-episode gradients")


cdef object _run_r(MLPNet* net, cnp.ndarray p, cnp.ndarray x, cnp.ndarray v, cnp.ndarray acts,
                   cnp.ndarray coef, bint hvp, object out, str what):
    cdef intp_t status, n_rows = x.shape[0], A = net.width[net.n_layers]
    cdef int typenum = cnp.PyArray_TYPE(p)
    cdef cnp.ndarray res
    cdef const int64_t* pa = NULL if acts is None else <const int64_t*> cnp.PyArray_DATA(acts)
    cdef const double* pc = NULL if coef is None else <const double*> cnp.PyArray_DATA(coef)
    cdef const double* pv = <const double*> cnp.PyArray_DATA(v)
    cdef void* pp = cnp.PyArray_DATA(p)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pr
    if hvp:
        _check_out(out, 1, net.n_params, 0, typenum)
        res = _new(1, net.n_params, 0, typenum)
    else:
        _check_out(out, 2, n_rows, A, typenum)
        res = _new(2, n_rows, A, typenum)
    pr = cnp.PyArray_DATA(res)
    if typenum == cnp.NPY_DOUBLE:
        with nogil:
            status = _jvp_hvp(net, <const double*> pp, <const double*> px, n_rows, pv, pa, pc,
                              hvp, <double*> pr)
    else:
        with nogil:
            status = _jvp_hvp(net, <const float*> pp, <const float*> px, n_rows, pv, pa, pc,
                              hvp, <float*> pr)
    _raise(status, what)
    return _finish(res, out)


def mlp_jvp(params, obs, hidden, activation, v, out=None):
    """R-op (B, A).  See :func:`metarl_fast.reference.mlp.mlp_jvp`."""
    cdef MLPNet net
    params, obs = _net(params, obs, hidden, activation, &net)
    v64 = _vector(v, "v", net.n_params)
    return _run_r(&net, params, obs, v64, None, None, False, out,
                  "the MLP's Jacobian-vector product")


def mlp_hvp(params, obs, hidden, activation, actions, coef, v, out=None):
    """Exact HVP (P,) of the surrogate.  See :func:`metarl_fast.reference.mlp.mlp_hvp`."""
    cdef MLPNet net
    params, obs = _net(params, obs, hidden, activation, &net)
    acts = _actions(actions, obs.shape[0], net.width[net.n_layers])
    c = _vector(coef, "coef", obs.shape[0])
    v64 = _vector(v, "v", net.n_params)
    return _run_r(&net, params, obs, v64, acts, c, True, out, "the MLP's Hessian-vector product")
