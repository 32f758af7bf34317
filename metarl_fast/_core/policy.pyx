"""Softmax policy kernels (Cython twin of :mod:`metarl_fast.reference.policy`).

The ``def`` functions validate at the boundary (cheap C-level checks on the fast path, the shared
:mod:`metarl_fast._validate` helpers otherwise) and then run a ``nogil`` kernel from ``policy.pxd``.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, log
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from numpy.random cimport bitgen_t

from metarl_fast._core.rng cimport bitgen_of

import numpy as np

from metarl_fast import _validate

cnp.import_array()

cdef enum Op:
    OP_SOFTMAX
    OP_LOG_SOFTMAX
    OP_ENTROPY
    OP_LOG_PROB
    OP_GRAD
    OP_SAMPLE

# Rows are processed in chunks of about this many elements, so the shifted logits and their
# exponentials stay in L1/L2 while one long vectorised exp loop runs over the whole chunk.
cdef intp_t CHUNK_ELEMS = 2048
# Below this many logits the kernel runs with the GIL held: releasing and re-taking it costs more
# than the work (an agent loop calling with B=1), and no other thread could use the gap.
cdef intp_t NOGIL_MIN_ELEMS = 512
DEF SMALL_SCRATCH = 256


cdef intp_t row_max(const floating* logits, intp_t n_rows, intp_t n_actions,
                    double* max_out) noexcept nogil:
    """max_out[i] = max_a logits[i, a]; returns the first row with NaN/+inf or all -inf, else -1."""
    cdef intp_t i, a
    cdef double v, m
    cdef const floating* row
    for i in range(n_rows):
        row = logits + i * n_actions
        m = -INFINITY
        for a in range(n_actions):
            v = row[a]
            if v != v or v == INFINITY:
                return i
            if v > m:
                m = v
        if m == -INFINITY:
            return i
        max_out[i] = m
    return MF_OK


cdef extern from "policy_kernels.h" nogil:
    ctypedef double (*mf_pk_next_double_t)(void* state) noexcept nogil
    intp_t mf_pk_check_f64(const double* x, intp_t n_rows, intp_t n_actions)
    intp_t mf_pk_check_f32(const float* x, intp_t n_rows, intp_t n_actions)
    void mf_pk_shift_rows_f64(const double* x, intp_t n_rows, intp_t n_actions, double* z)
    void mf_pk_shift_rows_f32(const float* x, intp_t n_rows, intp_t n_actions, double* z)
    # bit for bit mf_exp_nonpos_block, with more vectors in flight
    void mf_pk_exp_block(const double* x, double* y, intp_t n)
    void mf_pk_sample_rows(const double* e, const int64_t* rows, intp_t n_rows, intp_t n_actions,
                           mf_pk_next_double_t next_double, void* state, int64_t* actions)


cdef inline intp_t _check(const floating* logits, intp_t n_rows, intp_t n_actions) noexcept nogil:
    """MF_OK, or the first row with NaN/+inf or all -inf."""
    if floating is double:
        return mf_pk_check_f64(logits, n_rows, n_actions)
    else:
        return mf_pk_check_f32(logits, n_rows, n_actions)


cdef inline void _shift(const floating* logits, intp_t n_rows, intp_t n_actions,
                        double* z) noexcept nogil:
    """z = logits - row max, in float64, for valid rows."""
    if floating is double:
        mf_pk_shift_rows_f64(logits, n_rows, n_actions, z)
    else:
        mf_pk_shift_rows_f32(logits, n_rows, n_actions, z)


cdef intp_t _apply(const floating* logits, intp_t n_rows, intp_t n_actions, Op op,
                   const int64_t* actions, bitgen_t* bitgen,
                   floating* fout, int64_t* iout) noexcept nogil:
    """Shared driver: validate every row first, then shift, exponentiate and reduce by chunks."""
    cdef intp_t i, a, start, n, k, chunk_rows, status
    cdef double s, acc, p
    cdef double* z
    cdef double* e
    cdef double small[SMALL_SCRATCH]
    cdef bint on_heap
    cdef intp_t n_buffers = 1 if op == OP_SAMPLE else 2
    if n_rows == 0:
        return MF_OK
    # every row is checked before anything is written or drawn
    status = _check(logits, n_rows, n_actions)
    if status != MF_OK:
        return status
    chunk_rows = CHUNK_ELEMS // n_actions
    if chunk_rows >= 32:
        # a multiple of 32 rows is a multiple of 32 values: the block exp then runs only its
        # 8-vector loop, whose leftovers are latency-bound one vector at a time
        chunk_rows -= chunk_rows % 32
    if chunk_rows < 1:
        chunk_rows = 1
    if chunk_rows > n_rows:
        chunk_rows = n_rows
    # small calls (B=1 from an agent loop) use the stack: no malloc on the latency path
    on_heap = n_buffers * chunk_rows * n_actions > SMALL_SCRATCH
    if on_heap:
        z = <double*> malloc(n_buffers * chunk_rows * n_actions * sizeof(double))
        if z == NULL:
            return MF_NO_MEMORY
    else:
        z = small
    # sampling needs only the exponentials: exponentiate in place
    e = z if op == OP_SAMPLE else z + chunk_rows * n_actions
    start = 0
    while start < n_rows:
        n = chunk_rows if n_rows - start > chunk_rows else n_rows - start
        _shift(logits + start * n_actions, n, n_actions, z)
        mf_pk_exp_block(z, e, n * n_actions)
        if op == OP_SAMPLE:
            mf_pk_sample_rows(e, NULL, n, n_actions, <mf_pk_next_double_t> bitgen.next_double,
                              bitgen.state, iout + start)
            start += n
            continue
        for i in range(n):
            k = i * n_actions
            s = 0.0
            for a in range(n_actions):
                s += e[k + a]
            if op == OP_SOFTMAX:
                for a in range(n_actions):
                    fout[(start + i) * n_actions + a] = <floating> (e[k + a] / s)
            elif op == OP_LOG_SOFTMAX:
                s = log(s)
                for a in range(n_actions):
                    fout[(start + i) * n_actions + a] = <floating> (z[k + a] - s)
            elif op == OP_ENTROPY:
                acc = 0.0
                for a in range(n_actions):
                    if e[k + a] > 0.0:
                        acc += e[k + a] * z[k + a]
                fout[start + i] = <floating> (log(s) - acc / s)
            elif op == OP_LOG_PROB:
                fout[start + i] = <floating> (z[k + actions[start + i]] - log(s))
            else:  # OP_GRAD
                for a in range(n_actions):
                    p = e[k + a] / s
                    fout[(start + i) * n_actions + a] = <floating> (-p)
                a = actions[start + i]
                fout[(start + i) * n_actions + a] = <floating> (1.0 - e[k + a] / s)
        start += n
    if on_heap:
        free(z)
    return MF_OK


cdef intp_t softmax_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                         floating* probs_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_SOFTMAX, NULL, NULL, probs_out, NULL)


cdef intp_t log_softmax_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                             floating* log_probs_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_LOG_SOFTMAX, NULL, NULL, log_probs_out, NULL)


cdef intp_t entropy_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                         floating* entropy_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_ENTROPY, NULL, NULL, entropy_out, NULL)


cdef intp_t log_prob_rows(const floating* logits, const int64_t* actions, intp_t n_rows,
                          intp_t n_actions, floating* log_prob_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_LOG_PROB, actions, NULL, log_prob_out, NULL)


cdef intp_t grad_log_prob_rows(const floating* logits, const int64_t* actions, intp_t n_rows,
                               intp_t n_actions, floating* grad_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_GRAD, actions, NULL, grad_out, NULL)


cdef intp_t sample_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                        bitgen_t* bitgen, int64_t* actions_out) noexcept nogil:
    return _apply(logits, n_rows, n_actions, OP_SAMPLE, NULL, bitgen, <floating*> NULL, actions_out)


cdef intp_t sample_rows_at(const floating* logits, intp_t n_rows, intp_t n_actions,
                           const int64_t* rows, intp_t n_draws, bitgen_t* bitgen,
                           int64_t* actions_out) noexcept nogil:
    """actions_out[i] ~ softmax(logits[rows[i]]) for i < n_draws: the same actions and draws as
    sample_rows on the gathered rows, each table row exponentiated once.  Every table row is
    checked first (MF_OK or the first bad row); ``rows`` must be in range."""
    cdef intp_t status
    cdef double* e
    cdef double small[SMALL_SCRATCH]
    if n_draws == 0:
        return MF_OK
    status = _check(logits, n_rows, n_actions)
    if status != MF_OK:
        return status
    if n_rows * n_actions > SMALL_SCRATCH:
        e = <double*> malloc(n_rows * n_actions * sizeof(double))
        if e == NULL:
            return MF_NO_MEMORY
    else:
        e = small
    _shift(logits, n_rows, n_actions, e)
    mf_pk_exp_block(e, e, n_rows * n_actions)
    mf_pk_sample_rows(e, rows, n_draws, n_actions, <mf_pk_next_double_t> bitgen.next_double,
                      bitgen.state, actions_out)
    if e != small:
        free(e)
    return MF_OK


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

_Generator = np.random.Generator


cdef inline cnp.ndarray _logits(object logits):
    """Fast path for a C-contiguous 2-D float32/float64 ndarray with A >= 1; else the checker."""
    cdef cnp.ndarray arr
    cdef int typenum
    if type(logits) is cnp.ndarray:
        arr = <cnp.ndarray> logits
        typenum = cnp.PyArray_TYPE(arr)
        if (cnp.PyArray_NDIM(arr) == 2 and cnp.PyArray_IS_C_CONTIGUOUS(arr)
                and cnp.PyArray_ISBEHAVED_RO(arr)  # aligned, native byte order
                and (typenum == cnp.NPY_DOUBLE or typenum == cnp.NPY_FLOAT)
                and cnp.PyArray_DIM(arr, 1) >= 1):
            return arr
    return _validate.check_logits(logits)


cdef inline cnp.ndarray _actions(object actions, intp_t n_rows, intp_t n_actions):
    cdef cnp.ndarray arr
    cdef const int64_t* p
    cdef intp_t i
    if (type(actions) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> actions) == cnp.NPY_INT64
            and cnp.PyArray_NDIM(<cnp.ndarray> actions) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> actions)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> actions)
            and cnp.PyArray_DIM(<cnp.ndarray> actions, 0) == n_rows):
        arr = <cnp.ndarray> actions
        p = <const int64_t*> cnp.PyArray_DATA(arr)
        for i in range(n_rows):
            if p[i] < 0 or p[i] >= n_actions:
                break
        else:
            return arr
    return _validate.check_actions(actions, n_rows, n_actions)


cdef inline bint _out_ok(object out, int ndim, cnp.npy_intp d0, cnp.npy_intp d1, int typenum):
    """Fast acceptance of a caller's ``out``: exact type, dtype, shape, C order, writeable, aligned."""
    cdef cnp.ndarray arr
    if type(out) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray> out
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_DIM(arr, 0) == d0 and (ndim == 1 or cnp.PyArray_DIM(arr, 1) == d1)
            and cnp.PyArray_ISCARRAY(arr))  # C-contiguous, aligned, writeable, native byte order


cdef inline cnp.ndarray _out(object out, tuple shape, cnp.ndarray like):
    """``out`` checked, or a new C-contiguous array of ``shape`` with the dtype of ``like``."""
    cdef cnp.npy_intp dims[2]
    cdef int ndim = len(shape)
    dims[0] = shape[0]
    dims[1] = shape[1] if ndim == 2 else 0
    if out is None:
        return cnp.PyArray_EMPTY(ndim, dims, cnp.PyArray_TYPE(like), 0)
    if _out_ok(out, ndim, dims[0], dims[1], cnp.PyArray_TYPE(like)):
        return <cnp.ndarray> out
    return _validate.check_out(out, shape, like.dtype)


cdef inline void _raise(intp_t status, cnp.ndarray logits) except *:
    if status == MF_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in a softmax kernel")
    if status >= 0:
        raise _validate.logits_row_error(logits, status)


cdef intp_t _apply_any(bint dbl, const void* data, intp_t n_rows, intp_t n_actions, Op op,
                       const int64_t* actions, bitgen_t* bitgen, void* fout,
                       int64_t* iout) noexcept nogil:
    if dbl:
        return _apply(<const double*> data, n_rows, n_actions, op, actions, bitgen, <double*> fout, iout)
    return _apply(<const float*> data, n_rows, n_actions, op, actions, bitgen, <float*> fout, iout)


cdef intp_t _run(Op op, cnp.ndarray x, cnp.ndarray acts, bitgen_t* bitgen, cnp.ndarray res) except? -3:
    """Run kernel ``op`` on validated ``x``; the GIL is released only for enough work to pay for it."""
    cdef intp_t n_rows = x.shape[0], n_actions = x.shape[1], status
    cdef bint dbl = cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE
    cdef const void* data = cnp.PyArray_DATA(x)
    cdef const int64_t* a = NULL if acts is None else <const int64_t*> cnp.PyArray_DATA(acts)
    cdef void* fout = NULL
    cdef int64_t* iout = NULL
    if op == OP_SAMPLE:
        iout = <int64_t*> cnp.PyArray_DATA(res)
    else:
        fout = cnp.PyArray_DATA(res)
    if n_rows * n_actions > NOGIL_MIN_ELEMS:
        with nogil:
            status = _apply_any(dbl, data, n_rows, n_actions, op, a, bitgen, fout, iout)
    else:
        status = _apply_any(dbl, data, n_rows, n_actions, op, a, bitgen, fout, iout)
    _raise(status, x)
    return status


def softmax(logits, out=None):
    """Row-wise softmax.  See :func:`metarl_fast.reference.policy.softmax`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef cnp.ndarray res = _out(out, (x.shape[0], x.shape[1]), x)
    _run(OP_SOFTMAX, x, None, NULL, res)
    return res


def log_softmax(logits, out=None):
    """Row-wise log-softmax.  See :func:`metarl_fast.reference.policy.log_softmax`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef cnp.ndarray res = _out(out, (x.shape[0], x.shape[1]), x)
    _run(OP_LOG_SOFTMAX, x, None, NULL, res)
    return res


def entropy(logits, out=None):
    """Entropy of each row's softmax.  See :func:`metarl_fast.reference.policy.entropy`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef cnp.ndarray res = _out(out, (x.shape[0],), x)
    _run(OP_ENTROPY, x, None, NULL, res)
    return res


def log_prob(logits, actions, out=None):
    """log pi(a_i | row i).  See :func:`metarl_fast.reference.policy.log_prob`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef cnp.ndarray acts = _actions(actions, x.shape[0], x.shape[1])
    cdef cnp.ndarray res = _out(out, (x.shape[0],), x)
    _run(OP_LOG_PROB, x, acts, NULL, res)
    return res


def grad_log_prob(logits, actions, out=None):
    """d log pi(a_i) / d logits_i = onehot(a_i) - pi_i.  See the reference."""
    cdef cnp.ndarray x = _logits(logits)
    cdef cnp.ndarray acts = _actions(actions, x.shape[0], x.shape[1])
    cdef cnp.ndarray res = _out(out, (x.shape[0], x.shape[1]), x)
    _run(OP_GRAD, x, acts, NULL, res)
    return res


def sample_actions(logits, rng, out=None):
    """Sample one action per row by inverse CDF.  See :func:`metarl_fast.reference.policy.sample_actions`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef intp_t n_rows = x.shape[0]
    cdef cnp.ndarray res
    cdef bitgen_t* bitgen
    if not isinstance(rng, _Generator):
        _validate.check_rng(rng)
    if out is None:
        res = cnp.PyArray_EMPTY(1, <cnp.npy_intp*> &n_rows, cnp.NPY_INT64, 0)
    elif _out_ok(out, 1, n_rows, 0, cnp.NPY_INT64):
        res = <cnp.ndarray> out
    else:
        res = _validate.check_out(out, (n_rows,), np.int64)
    if n_rows == 0:
        return res
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    lock = bit_generator.lock
    # acquire()/release() rather than `with lock:`: the context-manager protocol costs more than
    # the whole kernel at B=1
    lock.acquire()
    try:
        _run(OP_SAMPLE, x, None, bitgen, res)
    finally:
        lock.release()
    return res


cdef inline bint _indices_in_range(const int64_t* p, intp_t n, intp_t high) noexcept:
    cdef intp_t i
    cdef uint64_t bad = 0
    for i in range(n):
        bad |= <uint64_t> (<uint64_t> p[i] >= <uint64_t> high)
    return bad == 0


cdef intp_t _sample_at_any(bint dbl, const void* data, intp_t n_rows, intp_t n_actions,
                           const int64_t* rows, intp_t n_draws, bitgen_t* bitgen,
                           int64_t* out) noexcept nogil:
    if dbl:
        return sample_rows_at(<const double*> data, n_rows, n_actions, rows, n_draws, bitgen, out)
    return sample_rows_at(<const float*> data, n_rows, n_actions, rows, n_draws, bitgen, out)


def sample_actions_at(logits, rows, rng, out=None):
    """One action per entry of ``rows`` from the table's rows.  See
    :func:`metarl_fast.reference.policy.sample_actions_at`."""
    cdef cnp.ndarray x = _logits(logits)
    cdef intp_t n_rows = x.shape[0], n_actions = x.shape[1], n_draws, status
    cdef cnp.ndarray idx, res
    cdef bitgen_t* bitgen
    cdef bint dbl = cnp.PyArray_TYPE(x) == cnp.NPY_DOUBLE
    if not isinstance(rng, _Generator):
        _validate.check_rng(rng)
    if (type(rows) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> rows) == cnp.NPY_INT64
            and cnp.PyArray_NDIM(<cnp.ndarray> rows) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> rows)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> rows)):
        idx = <cnp.ndarray> rows
        if not _indices_in_range(<const int64_t*> cnp.PyArray_DATA(idx), idx.shape[0], n_rows):
            idx = _validate.int_array(rows, "rows", ndim=1, low=0, high=n_rows)  # raises
    else:
        idx = _validate.int_array(rows, "rows", ndim=1, low=0, high=n_rows)
    n_draws = idx.shape[0]
    if out is None:
        res = cnp.PyArray_EMPTY(1, <cnp.npy_intp*> &n_draws, cnp.NPY_INT64, 0)
    elif _out_ok(out, 1, n_draws, 0, cnp.NPY_INT64):
        res = <cnp.ndarray> out
    else:
        res = _validate.check_out(out, (n_draws,), np.int64)
    if n_draws == 0:
        return res
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    lock = bit_generator.lock
    cdef const void* data = cnp.PyArray_DATA(x)
    cdef const int64_t* rp = <const int64_t*> cnp.PyArray_DATA(idx)
    cdef int64_t* op = <int64_t*> cnp.PyArray_DATA(res)
    lock.acquire()
    try:
        if n_draws + n_rows * n_actions > NOGIL_MIN_ELEMS:
            with nogil:
                status = _sample_at_any(dbl, data, n_rows, n_actions, rp, n_draws, bitgen, op)
        else:
            status = _sample_at_any(dbl, data, n_rows, n_actions, rp, n_draws, bitgen, op)
    finally:
        lock.release()
    _raise(status, x)
    return res


def _exp_nonpos_block(x):
    """exp of a 1-D float64 array of values <= 0 (or -inf, no NaN) by the sampling kernels' own
    block exponential; for tests: it must equal :func:`metarl_fast.reference._math.exp_nonpos`
    bit for bit.  Returns a new float64 array."""
    cdef cnp.ndarray src = np.ascontiguousarray(x, dtype=np.float64)
    if src.ndim != 1:
        raise ValueError("x must be 1-D")
    if np.isnan(src).any() or (src > 0).any():
        raise ValueError("x must hold values <= 0, no NaN")
    cdef cnp.ndarray res = np.empty_like(src)
    mf_pk_exp_block(<const double*> cnp.PyArray_DATA(src), <double*> cnp.PyArray_DATA(res),
                    src.shape[0])
    return res
