"""GRU softmax policy kernels for RL^2 (Cython twin of :mod:`metarl_fast.reference.gru`).

The layout, initialisation, arithmetic and errors are the reference's (see its docstring):
``gru_layout``, ``gru_init``, ``gru_to_torch_order`` and ``gru_from_torch`` are the reference's
own functions, and every ``def`` validates with the reference's checks before any work.

Kernels run ``nogil`` step by step over the whole batch: each step is three products with
``mf_gru_gemm`` (gru_kernels.h: register tiles, sums in the reference's order, no BLAS) --
``x W_x``, ``hp W_h`` and the heads -- and one vectorised element-wise gate loop; float64 scratch
is allocated once per call.  The forward pass, the fused step and the sampled actions are
bit-identical to the reference; gradients agree to rounding (other summation order, and the
backward's products use ``mf_gru_gemm_fma``: fused multiply-adds where the CPU has them).
``gru_forward(..., return_cache=True)`` keeps the gate trace for ``gru_backward(..., cache=)``
(the reference's :class:`~metarl_fast.reference.gru.GRUCache`, checked by the reference's code).
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from numpy.random cimport bitgen_t

from metarl_fast._core.policy cimport sample_rows
from metarl_fast._core.rng cimport bitgen_of

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import gru as _ref
from metarl_fast.reference.gru import (MAX_HIDDEN, TORCH_NAMES, GRUCache,  # noqa: F401
                                       gru_from_torch, gru_init, gru_layout, gru_to_torch_order)

cnp.import_array()

cdef extern from "gru_kernels.h" nogil:
    int MF_GRU_INIT_ZERO
    int MF_GRU_INIT_BIAS
    int MF_GRU_INIT_ACC
    void mf_gru_gemm(const double* A, intp_t lda, const double* B, intp_t ldb, const double* bias,
                     double* C, intp_t ldc, intp_t M, intp_t K, intp_t N, int mode)
    void mf_gru_gemm_fma(const double* A, intp_t lda, const double* B, intp_t ldb,
                         const double* bias, double* C, intp_t ldc, intp_t M, intp_t K, intp_t N,
                         int mode)
    double mf_gru_tanh(double x)
    int mf_gru_all_finite_f64(const double* x, intp_t n)
    void mf_gru_gates(const double* a, const double* g, const double* hp, intp_t n_rows,
                      intp_t H, double* h_out, double* trace)
    void mf_gru_gates_backward(const double* dh, const double* trace, const double* hp,
                               intp_t n_rows, intp_t H, double* dgx, double* dgh, double* dhp)

# Below this many multiply-adds a call keeps the GIL: releasing it costs more than the work.
cdef intp_t NOGIL_MIN_WORK = 20000


# ---------------------------------------------------------------------------------------------
# Kernels (nogil)
# ---------------------------------------------------------------------------------------------

cdef intp_t gru_net_init(GRUNet* net, intp_t input_dim, intp_t hidden,
                         intp_t n_actions) noexcept nogil:
    cdef intp_t h3 = 3 * hidden
    net.input_dim = input_dim
    net.hidden = hidden
    net.n_actions = n_actions
    net.wx_off = 0
    net.wh_off = input_dim * h3
    net.bx_off = net.wh_off + hidden * h3
    net.bh_off = net.bx_off + h3
    net.wo_off = net.bh_off + h3
    net.bo_off = net.wo_off + hidden * (n_actions + 1)
    net.n_params = net.bo_off + n_actions + 1
    return net.n_params


cdef void _transpose(const double* x, intp_t n_rows, intp_t n_cols, double* out) noexcept nogil:
    """out (n_cols, n_rows) = x (n_rows, n_cols)^T."""
    cdef intp_t i, j
    for i in range(n_rows):
        for j in range(n_cols):
            out[j * n_rows + i] = x[i * n_cols + j]


cdef void _add_column_sums(const double* x, intp_t n_rows, intp_t n_cols,
                           double* out) noexcept nogil:
    """out[k] += sum_i x[i, k]."""
    cdef intp_t i, k
    for i in range(n_rows):
        for k in range(n_cols):
            out[k] += x[i * n_cols + k]


cdef const double* _previous(const double* h, const uint8_t* resets, intp_t n_rows, intp_t H,
                             double* buf) noexcept nogil:
    """The state entering a step: ``h`` itself, or its copy in ``buf`` with the reset rows
    zeroed."""
    cdef intp_t i
    cdef bint any_reset = False
    for i in range(n_rows):
        if resets[i]:
            any_reset = True
            break
    if not any_reset:
        return h
    for i in range(n_rows):
        if resets[i]:
            memset(buf + i * H, 0, H * sizeof(double))
        else:
            memcpy(buf + i * H, h + i * H, H * sizeof(double))
    return buf


cdef void _step(const GRUNet* net, const double* p, const double* x, const double* hp,
                intp_t n_rows, double* a, double* g, double* h_out, double* trace) noexcept nogil:
    """One step without the heads: h_out (B, H) from x (B, D) and hp (B, H) (h_out may be hp)."""
    cdef intp_t D = net.input_dim, H = net.hidden
    mf_gru_gemm(x, D, p + net.wx_off, 3 * H, p + net.bx_off, a, 3 * H, n_rows, D, 3 * H,
                MF_GRU_INIT_BIAS)
    mf_gru_gemm(hp, H, p + net.wh_off, 3 * H, p + net.bh_off, g, 3 * H, n_rows, H, 3 * H,
                MF_GRU_INIT_BIAS)
    mf_gru_gates(a, g, hp, n_rows, H, h_out, trace)


cdef void _heads(const GRUNet* net, const double* p, const double* h, intp_t n_rows, double* y,
                 double* logits_out, double* values_out) noexcept nogil:
    """y (B, A + 1) = b_out + h W_out, split into logits_out (B, A) and values_out (B,)."""
    cdef intp_t H = net.hidden, A = net.n_actions, i
    mf_gru_gemm(h, H, p + net.wo_off, A + 1, p + net.bo_off, y, A + 1, n_rows, H, A + 1,
                MF_GRU_INIT_BIAS)
    for i in range(n_rows):
        memcpy(logits_out + i * A, y + i * (A + 1), A * sizeof(double))
        values_out[i] = y[i * (A + 1) + A]


cdef intp_t gru_run(const GRUNet* net, const double* params, const double* inputs,
                    const double* h0, const uint8_t* resets, intp_t n_steps, intp_t n_rows,
                    double* logits_out, double* values_out, double* hidden_out,
                    double* trace_out) noexcept nogil:
    cdef intp_t D = net.input_dim, H = net.hidden, A = net.n_actions, t
    cdef intp_t BH = n_rows * H
    cdef double* scratch
    cdef double* a
    cdef double* g
    cdef double* hp_buf
    cdef double* y
    cdef const double* hp
    memcpy(hidden_out, h0, BH * sizeof(double))
    if n_steps == 0 or n_rows == 0:
        return GRU_OK
    scratch = <double*> malloc(n_rows * (7 * H + A + 1) * sizeof(double))
    if scratch == NULL:
        return GRU_NO_MEMORY
    a = scratch
    g = a + 3 * BH
    hp_buf = g + 3 * BH
    y = hp_buf + BH
    for t in range(n_steps):
        hp = _previous(hidden_out + t * BH, resets + t * n_rows, n_rows, H, hp_buf)
        _step(net, params, inputs + t * n_rows * D, hp, n_rows, a, g, hidden_out + (t + 1) * BH,
              NULL if trace_out == NULL else trace_out + t * 4 * BH)
        _heads(net, params, hidden_out + (t + 1) * BH, n_rows, y, logits_out + t * n_rows * A,
               values_out + t * n_rows)
    free(scratch)
    if not (mf_gru_all_finite_f64(logits_out, n_steps * n_rows * A)
            and mf_gru_all_finite_f64(values_out, n_steps * n_rows)
            and mf_gru_all_finite_f64(hidden_out, (n_steps + 1) * BH)):
        return GRU_OVERFLOW
    return GRU_OK


cdef intp_t gru_bptt(const GRUNet* net, const double* params, const double* inputs,
                     const double* h0, const uint8_t* resets, intp_t n_steps, intp_t n_rows,
                     const double* dlogits, const double* dvalues, const double* hidden_in,
                     const double* trace_in, double* grad_out) noexcept nogil:
    cdef intp_t D = net.input_dim, H = net.hidden, A = net.n_actions, P = net.n_params
    cdef intp_t BH = n_rows * H, t, i, size
    cdef intp_t maxdh = D if D > H else H
    cdef bint rerun = hidden_in == NULL or trace_in == NULL
    cdef intp_t n_kept = (n_steps + 1) * BH + n_steps * 4 * BH if rerun else 0
    cdef double* scratch
    cdef const double* hs
    cdef const double* trace
    cdef double* hs_buf
    cdef double* trace_buf
    cdef double* a
    cdef double* g
    cdef double* hp_buf
    cdef double* dy
    cdef double* dh
    cdef double* dhp
    cdef double* dgx
    cdef double* dgh
    cdef double* tr
    cdef double* wht
    cdef double* wot
    cdef double* swap
    cdef const double* hp
    memset(grad_out, 0, P * sizeof(double))
    if n_steps == 0 or n_rows == 0:
        return GRU_OK
    # (without a cache: hidden states (T + 1, B, H) and gate trace (T, B, 4H)), per-step
    # buffers, W_h^T, W_out^T
    size = (n_kept + n_rows * (3 * H + 3 * H + H + (A + 1) + H + H + 3 * H + 3 * H + maxdh)
            + 3 * H * H + (A + 1) * H)
    scratch = <double*> malloc(size * sizeof(double))
    if scratch == NULL:
        return GRU_NO_MEMORY
    hs_buf = scratch
    trace_buf = hs_buf + (n_steps + 1) * BH
    a = scratch + n_kept
    g = a + 3 * BH
    hp_buf = g + 3 * BH
    dy = hp_buf + BH
    dh = dy + n_rows * (A + 1)
    dhp = dh + BH
    dgx = dhp + BH
    dgh = dgx + 3 * BH
    tr = dgh + 3 * BH
    wht = tr + n_rows * maxdh
    wot = wht + 3 * H * H
    _transpose(params + net.wh_off, H, 3 * H, wht)
    _transpose(params + net.wo_off, H, A + 1, wot)
    if rerun:
        memcpy(hs_buf, h0, BH * sizeof(double))
        for t in range(n_steps):
            hp = _previous(hs_buf + t * BH, resets + t * n_rows, n_rows, H, hp_buf)
            _step(net, params, inputs + t * n_rows * D, hp, n_rows, a, g, hs_buf + (t + 1) * BH,
                  trace_buf + t * 4 * BH)
        hs, trace = hs_buf, trace_buf
    else:
        hs, trace = hidden_in, trace_in
    memset(dh, 0, BH * sizeof(double))  # the carry: dL/d(state after step t) from steps > t
    for t in range(n_steps - 1, -1, -1):
        for i in range(n_rows):
            memcpy(dy + i * (A + 1), dlogits + (t * n_rows + i) * A, A * sizeof(double))
            dy[i * (A + 1) + A] = dvalues[t * n_rows + i]
        # heads: grad W_out += h^T dy, grad b_out += sum dy, dh += dy W_out^T
        _transpose(hs + (t + 1) * BH, n_rows, H, tr)
        mf_gru_gemm_fma(tr, n_rows, dy, A + 1, NULL, grad_out + net.wo_off, A + 1, H, n_rows,
                        A + 1, MF_GRU_INIT_ACC)
        _add_column_sums(dy, n_rows, A + 1, grad_out + net.bo_off)
        mf_gru_gemm_fma(dy, A + 1, wot, H, NULL, dh, H, n_rows, A + 1, H, MF_GRU_INIT_ACC)
        # gates, then grad W_x += x^T dgx, grad W_h += hp^T dgh and the biases
        hp = _previous(hs + t * BH, resets + t * n_rows, n_rows, H, hp_buf)
        mf_gru_gates_backward(dh, trace + t * 4 * BH, hp, n_rows, H, dgx, dgh, dhp)
        _transpose(inputs + t * n_rows * D, n_rows, D, tr)
        mf_gru_gemm_fma(tr, n_rows, dgx, 3 * H, NULL, grad_out + net.wx_off, 3 * H, D, n_rows,
                        3 * H, MF_GRU_INIT_ACC)
        _add_column_sums(dgx, n_rows, 3 * H, grad_out + net.bx_off)
        _transpose(hp, n_rows, H, tr)
        mf_gru_gemm_fma(tr, n_rows, dgh, 3 * H, NULL, grad_out + net.wh_off, 3 * H, H, n_rows,
                        3 * H, MF_GRU_INIT_ACC)
        _add_column_sums(dgh, n_rows, 3 * H, grad_out + net.bh_off)
        # carry to step t - 1: z dh + dgh W_h^T, nothing through a reset
        mf_gru_gemm_fma(dgh, 3 * H, wht, H, NULL, dhp, H, n_rows, 3 * H, H, MF_GRU_INIT_ACC)
        for i in range(n_rows):
            if resets[t * n_rows + i]:
                memset(dhp + i * H, 0, H * sizeof(double))
        swap = dh
        dh = dhp
        dhp = swap
    free(scratch)
    if not mf_gru_all_finite_f64(grad_out, P):
        return GRU_OVERFLOW
    return GRU_OK


cdef intp_t gru_step(const GRUNet* net, const double* params, const double* inputs,
                     const double* h, intp_t n_rows, bitgen_t* bitgen, int64_t* actions_out,
                     double* logits_out, double* values_out, double* h_out) noexcept nogil:
    cdef intp_t H = net.hidden, A = net.n_actions, status
    cdef double* scratch
    if n_rows == 0:
        return GRU_OK
    scratch = <double*> malloc(n_rows * (6 * H + A + 1) * sizeof(double))
    if scratch == NULL:
        return GRU_NO_MEMORY
    _step(net, params, inputs, h, n_rows, scratch, scratch + 3 * n_rows * H, h_out, NULL)
    _heads(net, params, h_out, n_rows, scratch, logits_out, values_out)
    free(scratch)
    # every result is computed and checked before the first draw
    if not (mf_gru_all_finite_f64(logits_out, n_rows * A)
            and mf_gru_all_finite_f64(values_out, n_rows)
            and mf_gru_all_finite_f64(h_out, n_rows * H)):
        return GRU_OVERFLOW
    if bitgen == NULL:
        return GRU_OK
    status = sample_rows(logits_out, n_rows, A, bitgen, actions_out)
    return GRU_OK if status == GRU_OK else (GRU_NO_MEMORY if status == GRU_NO_MEMORY
                                            else GRU_OVERFLOW)


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

def _tanh(x):
    """mf_gru_tanh applied to a float64 array (new array): the twin of reference.mlp.tanh, for
    the tests."""
    cdef cnp.ndarray src = np.ascontiguousarray(x, dtype=np.float64)
    cdef cnp.ndarray res = np.empty_like(src)
    cdef const double* ps = <const double*> cnp.PyArray_DATA(src)
    cdef double* pr = <double*> cnp.PyArray_DATA(res)
    cdef intp_t i, n = src.size
    for i in range(n):
        pr[i] = mf_gru_tanh(ps[i])
    return res


cdef inline void _raise(intp_t status, str what) except *:
    if status == GRU_NO_MEMORY:
        raise MemoryError(f"metarl_fast: out of memory in the GRU kernel ({what})")
    if status == GRU_OVERFLOW:
        raise FloatingPointError(f"{what} overflow the float64 range (params or inputs too large)")


cdef inline double* _data(cnp.ndarray x):
    return <double*> cnp.PyArray_DATA(x)


def gru_forward(params, inputs, h0, resets, return_cache=False):
    """(logits (T, B, A), values (T, B), hidden (T + 1, B, H)), float64, and with
    ``return_cache=True`` a :class:`GRUCache` (gate trace (T, B, 4H)) for :func:`gru_backward`.
    See :func:`metarl_fast.reference.gru.gru_forward`."""
    cdef GRUNet net
    cdef intp_t status, n_steps, n_rows
    cdef cnp.ndarray p, x, h, rs, logits, values, hidden, trace
    cdef double* ptr = NULL
    cdef double* pp
    cdef double* px
    cdef double* ph
    cdef double* pl
    cdef double* pv
    cdef double* phid
    cdef const uint8_t* pr
    return_cache = _ref._check_return_cache(return_cache)
    params, inputs, h0, resets, d, hdim, a = _ref._check_sequence(params, inputs, h0, resets)
    p, x, h, rs = params, inputs, h0, resets
    gru_net_init(&net, d, hdim, a)
    n_steps, n_rows = x.shape[0], x.shape[1]
    logits = np.empty((n_steps, n_rows, a))
    values = np.empty((n_steps, n_rows))
    hidden = np.empty((n_steps + 1, n_rows, hdim))
    if return_cache:
        trace = np.empty((n_steps, n_rows, 4 * hdim))
        ptr = _data(trace)
    pp, px, ph, pl, pv, phid = (_data(p), _data(x), _data(h), _data(logits), _data(values),
                                _data(hidden))
    pr = <const uint8_t*> cnp.PyArray_DATA(rs)
    if n_steps * n_rows * net.n_params > NOGIL_MIN_WORK:
        with nogil:
            status = gru_run(&net, pp, px, ph, pr, n_steps, n_rows, pl, pv, phid, ptr)
    else:
        status = gru_run(&net, pp, px, ph, pr, n_steps, n_rows, pl, pv, phid, ptr)
    _raise(status, "the GRU's logits, values or hidden states")
    if not return_cache:
        return logits, values, hidden
    return logits, values, hidden, GRUCache(trace, hidden.copy(), p, x, h, rs)


def gru_backward(params, inputs, h0, resets, dlogits, dvalues, cache=None):
    """Gradient (P,) float64 by BPTT, from the activations of ``cache`` (a :class:`GRUCache` of
    ``gru_forward(..., return_cache=True)`` with these arguments) or else by rerunning the forward.
    See :func:`metarl_fast.reference.gru.gru_backward`."""
    cdef GRUNet net
    cdef intp_t status, n_steps, n_rows
    cdef cnp.ndarray p, x, h, rs, dl, dv, grad, cached_hidden, cached_trace
    cdef const double* pch = NULL
    cdef const double* pct = NULL
    cdef double* pp
    cdef double* px
    cdef double* ph
    cdef double* pdl
    cdef double* pdv
    cdef double* pg
    cdef const uint8_t* pr
    params, inputs, h0, resets, d, hdim, a = _ref._check_sequence(params, inputs, h0, resets)
    n_steps, n_rows = inputs.shape[0], inputs.shape[1]
    dlogits = _ref._float64(dlogits, "dlogits", 3)
    if dlogits.shape != (n_steps, n_rows, a):
        raise ValueError(f"dlogits must have shape {(n_steps, n_rows, a)}, got {dlogits.shape}")
    dvalues = _ref._float64(dvalues, "dvalues", 2)
    if dvalues.shape != (n_steps, n_rows):
        raise ValueError(f"dvalues must have shape {(n_steps, n_rows)}, got {dvalues.shape}")
    if cache is not None:
        cached_hidden, cached_trace = _ref._check_cache(cache, params, inputs, h0, resets, hdim)
        pch, pct = _data(cached_hidden), _data(cached_trace)
    p, x, h, rs, dl, dv = params, inputs, h0, resets, dlogits, dvalues
    gru_net_init(&net, d, hdim, a)
    grad = np.empty(net.n_params)
    pp, px, ph, pdl, pdv, pg = _data(p), _data(x), _data(h), _data(dl), _data(dv), _data(grad)
    pr = <const uint8_t*> cnp.PyArray_DATA(rs)
    with nogil:
        status = gru_bptt(&net, pp, px, ph, pr, n_steps, n_rows, pdl, pdv, pch, pct, pg)
    _raise(status, "the GRU's gradient")
    return grad


def gru_step_act(params, inputs, h, rng, h_out=None, logits_out=None, values_out=None):
    """(actions int64 (B,), logits (B, A), values (B,), h_new (B, H)): one step fused with
    sampling.  See :func:`metarl_fast.reference.gru.gru_step_act`."""
    cdef GRUNet net
    cdef intp_t status, n_rows
    cdef cnp.ndarray p, x, hh, actions, logits, values, h_new
    cdef bitgen_t* bitgen
    cdef double* pp
    cdef double* px
    cdef double* ph
    cdef double* pl
    cdef double* pv
    cdef double* phn
    cdef int64_t* pa
    params, inputs, h, d, hdim, a = _ref._check_net(params, inputs, "inputs", h, "h", 2)
    _validate.check_rng(rng)
    n_rows = inputs.shape[0]
    _ref._check_out(h_out, "h_out", (n_rows, hdim))
    _ref._check_out(logits_out, "logits_out", (n_rows, a))
    _ref._check_out(values_out, "values_out", (n_rows,))
    p, x, hh = params, inputs, h
    gru_net_init(&net, d, hdim, a)
    # fresh results, copied into the *_out arrays once the call has succeeded
    actions = np.empty(n_rows, dtype=np.int64)
    logits = np.empty((n_rows, a))
    values = np.empty(n_rows)
    h_new = np.empty((n_rows, hdim))
    if n_rows:
        bit_generator = rng.bit_generator
        bitgen = bitgen_of(bit_generator)
        pp, px, ph, pl, pv, phn = (_data(p), _data(x), _data(hh), _data(logits), _data(values),
                                   _data(h_new))
        pa = <int64_t*> cnp.PyArray_DATA(actions)
        with bit_generator.lock:
            if n_rows * net.n_params > NOGIL_MIN_WORK:
                with nogil:
                    status = gru_step(&net, pp, px, ph, n_rows, bitgen, pa, pl, pv, phn)
            else:
                status = gru_step(&net, pp, px, ph, n_rows, bitgen, pa, pl, pv, phn)
        _raise(status, "the GRU's logits, values or hidden states")
    results = []
    for res, out in ((logits, logits_out), (values, values_out), (h_new, h_out)):
        if out is not None:
            out[...] = res
            res = out
        results.append(res)
    return (actions, *results)
