"""Replay-buffer kernels (Cython twin of :mod:`metarl_fast.reference.replay`).

Called by :class:`metarl_fast.replay.ReplayBuffer` under its lock.  The ``def`` entry points
check their input with cheap C-level tests on the fast path (exact dtypes, C order, finite
floats, task ids in range); anything else goes through the reference module's validators, which
convert or raise exactly as the NumPy backend does.  Copies and draws run without the GIL.
"""
cimport cython
cimport numpy as cnp
from libc.math cimport isfinite
from libc.stdint cimport INT64_MIN, int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcpy
from numpy.random cimport bitgen_t

from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast import _validate

from metarl_fast.reference import replay as _ref

from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.pythread cimport (NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock)

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MF_PREFETCH(p) __builtin_prefetch((const void*) (p))
    #else
    #define MF_PREFETCH(p) ((void) 0)
    #endif
    """
    void MF_PREFETCH(const void* p) noexcept nogil

cdef extern from *:
    """
    /* The value of an exact Python int if it fits in a long long (1), else 0.  Ints of one
       digit (|x| < 2**30, nearly every state, action and task id) are read straight from the
       object, without PyLong_AsLongLongAndOverflow's call. */
    static inline int mf_int_value(PyObject* x, long long* out) {
    #if PY_VERSION_HEX >= 0x030C0000
        if (PyUnstable_Long_IsCompact((PyLongObject*) x)) {
            *out = (long long) PyUnstable_Long_CompactValue((PyLongObject*) x);
            return 1;
        }
    #else
        Py_ssize_t size = Py_SIZE(x);
        if (size >= -1 && size <= 1) {
            *out = size * (long long) ((PyLongObject*) x)->ob_digit[0];
            return 1;
        }
    #endif
        int overflow = 0;
        *out = PyLong_AsLongLongAndOverflow(x, &overflow);
        return !overflow;
    }
    /* True where the GIL serialises C code (every build but free-threaded CPython). */
    #ifdef Py_GIL_DISABLED
    #define MF_GIL_SERIALISES 0
    #else
    #define MF_GIL_SERIALISES 1
    #endif
    """
    bint mf_int_value(object x, long long* out) noexcept
    bint MF_GIL_SERIALISES

cdef extern from *:
    """
    /* Streaming (non-temporal) 8-byte stores: they write whole cache lines to memory without
       first reading them into the cache, so a large ring is written with half the memory
       traffic.  Plain stores where the instruction set has none. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <emmintrin.h>
    #define MF_HAVE_STREAM 1
    static inline void mf_put64(void* p, int64_t v, int stream) {
        if (stream) _mm_stream_si64((long long*) p, (long long) v);
        else *(int64_t*) p = v;
    }
    static inline void mf_store_fence(void) { _mm_sfence(); }
    #else
    #define MF_HAVE_STREAM 0
    static inline void mf_put64(void* p, int64_t v, int stream) { (void) stream; *(int64_t*) p = v; }
    static inline void mf_store_fence(void) {}
    #endif
    /* Bytes 32..39 of the default record as one word: done, truncated, 2 padding bytes
       (written 0), the int32 task id -- in memory order on any byte order (the compiler
       turns the copies into shifts). */
    static inline int64_t mf_flags_word(uint8_t done, uint8_t truncated, int32_t task) {
        unsigned char bytes[8] = {done, truncated, 0, 0, 0, 0, 0, 0};
        int64_t word;
        memcpy(bytes + 4, &task, 4);
        memcpy(&word, bytes, 8);
        return word;
    }
    """
    bint MF_HAVE_STREAM
    void mf_put64(void* p, int64_t v, bint stream) noexcept nogil
    int64_t mf_flags_word(uint8_t done, uint8_t truncated, int32_t task) noexcept nogil
    void mf_store_fence() noexcept nogil

# Records are written with streaming stores when the record array is at least this large (it
# cannot stay in the cache anyway) and the batch this long: smaller rings stay cache-resident,
# where plain stores are faster and leave the rows in cache for the next sample.
cdef intp_t STREAM_MIN_BYTES = 8 << 20
cdef intp_t STREAM_MIN_ROWS = 256

# Random rows are prefetched this many iterations ahead (their loads are independent, so many
# cache/TLB misses overlap instead of being paid one after another).
cdef intp_t PREFETCH_AHEAD = 32

cdef int64_t MAX_TASKS = _ref.MAX_TASKS
cdef int64_t MAX_BATCH = _ref.MAX_BATCH
cdef int SEQUENCE_ROUNDS = _ref.SEQUENCE_ROUNDS

cdef enum:
    F_OBS = 0
    F_ACTION = 1
    F_REWARD = 2
    F_NEXT_OBS = 3
    F_DONE = 4
    F_TRUNCATED = 5
    F_TASK = 6
    F_EPISODE = 7
    F_LOGP = 8
    S_POS = 0
    S_SIZE = 1
    S_NEXT_EPISODE = 2
    S_OPEN_TASK = 3
    S_N_ADDED = 4


# ---------------------------------------------------------------------------------------------
# nogil kernels
# ---------------------------------------------------------------------------------------------

cdef inline void _put(char* dst, const char* src, intp_t nbytes) noexcept nogil:
    """Copy one field value (nbytes bytes)."""
    if nbytes == 8:
        (<int64_t*> dst)[0] = (<const int64_t*> src)[0]
    elif nbytes == 4:
        (<int32_t*> dst)[0] = (<const int32_t*> src)[0]
    elif nbytes == 1:
        dst[0] = src[0]
    else:
        memcpy(dst, src, nbytes)


cdef inline int64_t _task_at(const Columns* c, intp_t i) noexcept nogil:
    if c.task_is64:
        return (<const int64_t*> (c.task + i * c.task_stride))[0]
    return (<const int32_t*> (c.task + i * c.task_stride))[0]


cdef inline int64_t _ring_run(const int64_t* ring, int64_t front, int64_t mask, int64_t count,
                              int64_t slot, int64_t limit) noexcept nogil:
    """How many of the slots slot, slot + 1, ... (at most limit, no wrap past the capacity) are
    the ring's next entries from front: the largest L with ring[(front + j) & mask] == slot + j
    for every j < L.

    A ring lists its task's slots oldest first, so from the oldest overwritten slot on its
    entries increase until the write position wraps.  Then ring[front + j] == slot + j implies
    the j entries before it are exactly slot .. slot + j - 1 (j distinct increasing values in j
    places): the test is monotone in j, and L is found by galloping and bisection in O(log L)
    reads of the ring, not one per slot."""
    cdef int64_t lo = 1, hi, step = 1, j
    if limit > count:
        limit = count
    if limit <= 0 or ring[front & mask] != slot:
        return 0
    # invariant: entries 0 .. lo - 1 match; entry hi (when hi < limit) does not
    hi = limit
    while True:
        j = lo + step - 1
        if j >= limit:
            j = limit - 1
            if ring[(front + j) & mask] == slot + j:
                return limit
            hi = j
            break
        if ring[(front + j) & mask] != slot + j:
            hi = j
            break
        lo = j + 1
        step *= 2
    while lo < hi:
        j = (lo + hi) // 2
        if ring[(front + j) & mask] == slot + j:
            lo = j + 1
        else:
            hi = j
    return lo


cdef void _pop_range(Storage* st, int64_t slot, int64_t stop) noexcept nogil:
    """Pop the occupied slots [slot, stop) (no wrap) from their tasks' rings, a run of equal
    task at a time: the record is read only for the first slot of each run (its task id)."""
    cdef int64_t t, run, front, mask
    cdef int64_t* row
    cdef const int64_t* ring
    cdef intp_t stride = st.stride[0]
    cdef const char* f_task = st.field[F_TASK]
    while slot < stop:
        t = (<const int32_t*> (f_task + slot * stride))[0]
        row = st.task_meta + 4 * t
        front = row[0]
        mask = row[2] - 1
        ring = <const int64_t*> row[3]
        if stop - slot == 1 or row[1] == 1 or ring[(front + 1) & mask] != slot + 1:
            run = 1  # (rows of interleaved tasks: one slot, the task's oldest)
        else:
            run = _ring_run(ring, front, mask, row[1], slot, stop - slot)
            if run == 0:  # (cannot happen while the rings are consistent; never loop forever)
                run = 1
        row[0] = (front + run) & mask
        row[1] -= run
        slot += run


cdef void _pop_overwritten(Storage* st, int64_t pos, intp_t n) noexcept nogil:
    """Pop the slots [pos, pos + n) (mod capacity, n <= capacity) that hold a transition from
    their tasks' rings (each is its task's oldest entry)."""
    cdef int64_t capacity = st.capacity, size0 = st.state[S_SIZE]
    cdef int64_t stop = pos + n, occupied
    occupied = capacity if size0 == capacity else size0  # slots [0, occupied) hold transitions
    _pop_range(st, pos, stop if stop < occupied else occupied)
    if stop > capacity:
        stop -= capacity
        _pop_range(st, 0, stop if stop < occupied else occupied)


cdef void _push_slots(int64_t* row, int64_t slot, int64_t n, int64_t capacity) noexcept nogil:
    """Append the slots slot, slot + 1, ... (n of them, mod capacity) to the ring of task-table
    row `row` (which has room), in contiguous pieces the compiler vectorises."""
    cdef int64_t* ring = <int64_t*> row[3]
    cdef int64_t mask = row[2] - 1, at = row[0] + row[1], start, piece, j
    row[1] += n
    while n > 0:
        start = at & mask
        piece = mask + 1 - start  # up to the ring's end
        if piece > n:
            piece = n
        if piece > capacity - slot:  # up to the storage's end
            piece = capacity - slot
        for j in range(piece):
            ring[start + j] = slot + j
        at += piece
        slot += piece
        if slot == capacity:
            slot = 0
        n -= piece


cdef void _write_one_task_all8(Storage* st, const Columns* c) noexcept nogil:
    """write_rows for its most common call: the default record (8-byte obs, action and reward;
    see DEFAULT_OFFSETS), one task for every row (task stride 0), n <= capacity.  Separate
    passes with no per-row task logic: pops of the overwritten slots, records (in at most two
    contiguous ranges), then one run of ring pushes."""
    cdef intp_t n = c.n, i, first, stride = st.stride[0]
    cdef int64_t* state = st.state
    cdef int64_t pos = state[S_POS], capacity = st.capacity, size0 = state[S_SIZE]
    cdef int64_t next_ep = state[S_NEXT_EPISODE], open_task = state[S_OPEN_TASK]
    cdef int64_t t = _task_at(c, 0), slot
    cdef const int64_t* obs = <const int64_t*> c.obs
    cdef const int64_t* next_obs = <const int64_t*> c.next_obs
    cdef const int64_t* action = <const int64_t*> c.action
    cdef const int64_t* reward = <const int64_t*> c.reward
    cdef const char* done = c.done
    cdef const char* truncated = c.truncated
    cdef const char* logp = c.logp
    cdef intp_t s_done = c.done_stride, s_trunc = c.truncated_stride, s_logp = c.logp_stride
    cdef char* rec
    cdef char end = 0
    cdef uint8_t d, tr
    cdef int32_t t32 = <int32_t> t
    # Streaming stores for large rings (x86-64; elsewhere MF_HAVE_STREAM is 0).  Loop-invariant:
    # the compiler unswitches the loop on it.
    cdef bint stream = (MF_HAVE_STREAM and n >= STREAM_MIN_ROWS
                        and capacity * stride >= STREAM_MIN_BYTES
                        and (<uintptr_t> st.field[F_OBS]) % 8 == 0)
    _pop_overwritten(st, pos, n)
    if open_task >= 0 and t != open_task:
        next_ep += 1
    first = capacity - pos if n > capacity - pos else n
    rec = st.field[F_OBS] + pos * stride
    for i in range(n):
        if i == first:
            rec = st.field[F_OBS]
        d = <uint8_t> done[i * s_done]
        tr = <uint8_t> truncated[i * s_trunc]
        mf_put64(rec, obs[i], stream)
        mf_put64(rec + 8, action[i], stream)
        mf_put64(rec + 16, reward[i], stream)
        mf_put64(rec + 24, next_obs[i], stream)
        mf_put64(rec + 32, mf_flags_word(d, tr, t32), stream)
        mf_put64(rec + 40, next_ep, stream)
        mf_put64(rec + 48, (<const int64_t*> (logp + i * s_logp))[0], stream)
        end = (d != 0) | (tr != 0)
        next_ep += end
        rec += 56
    if stream:
        mf_store_fence()  # the streamed rows are visible before the lock is released
    open_task = -1 if end else t
    _push_slots(st.task_meta + 4 * t, pos, n, capacity)
    slot = pos + n
    state[S_POS] = slot - capacity if slot >= capacity else slot
    state[S_SIZE] = capacity if size0 + n > capacity else size0 + n
    state[S_NEXT_EPISODE] = next_ep
    state[S_OPEN_TASK] = open_task
    state[S_N_ADDED] += n


cdef void write_rows(Storage* st, const Columns* c) noexcept nogil:
    # Everything is read into locals first: the stores below go through casted pointers that the
    # compiler must assume may alias the structs.
    cdef intp_t n = c.n, capacity = st.capacity, skip, i, slot, off, stride = st.stride[0]
    cdef int64_t* state = st.state
    cdef int64_t* meta = st.task_meta
    cdef int64_t* row
    cdef int64_t* ring
    cdef int64_t pos = state[S_POS], size0 = state[S_SIZE]
    cdef int64_t next_ep = state[S_NEXT_EPISODE], open_task = state[S_OPEN_TASK]
    cdef int64_t t, run_task, front, count, mask
    cdef bint end, task64 = c.task_is64
    cdef char* f_obs = st.field[F_OBS]
    cdef char* f_action = st.field[F_ACTION]
    cdef char* f_reward = st.field[F_REWARD]
    cdef char* f_next = st.field[F_NEXT_OBS]
    cdef char* f_done = st.field[F_DONE]
    cdef char* f_trunc = st.field[F_TRUNCATED]
    cdef char* f_task = st.field[F_TASK]
    cdef char* f_episode = st.field[F_EPISODE]
    cdef char* f_logp = st.field[F_LOGP]
    cdef intp_t b_obs = st.row_bytes[F_OBS], b_action = st.row_bytes[F_ACTION]
    cdef intp_t b_float = st.row_bytes[F_REWARD]
    cdef const char* obs = c.obs
    cdef const char* action = c.action
    cdef const char* reward = c.reward
    cdef const char* next_obs = c.next_obs
    cdef const char* done = c.done
    cdef const char* truncated = c.truncated
    cdef const char* task = c.task
    cdef const char* logp = c.logp
    cdef intp_t s_done = c.done_stride, s_trunc = c.truncated_stride, s_task = c.task_stride
    cdef intp_t s_logp = c.logp_stride
    # tabular int64 observations and actions, float64 rewards: every value is 8 bytes
    cdef bint all8 = b_obs == 8 and b_action == 8 and b_float == 8
    if n == 0:
        return
    if (all8 and c.task_stride == 0 and n <= capacity and stride == 56
            and _is_default_layout(<const char* const*> st.field, st.row_bytes, N_FIELDS)):
        _write_one_task_all8(st, c)
        return
    # Only the last `capacity` rows survive a call; the skipped rows still count for episode ids.
    skip = n - capacity if n > capacity else 0
    for i in range(skip):
        t = (<const int64_t*> (task + i * s_task))[0] if task64 else (<const int32_t*> (task + i * s_task))[0]
        if open_task >= 0 and t != open_task:
            next_ep += 1
        if done[i * s_done] != 0 or truncated[i * s_trunc] != 0:
            next_ep += 1
            open_task = -1
        else:
            open_task = t

    # The overwritten slots leave their old tasks' rings first (each is its task's oldest entry;
    # pops and pushes touch opposite ends of a ring, so popping all before the pushes of the
    # last pass equals interleaving them row by row).  Then one pass over the records.
    slot = (pos + skip) % capacity
    _pop_overwritten(st, slot, n - skip)
    for i in range(skip, n):
        off = slot * stride
        t = (<const int64_t*> (task + i * s_task))[0] if task64 else (<const int32_t*> (task + i * s_task))[0]
        if open_task >= 0 and t != open_task:
            next_ep += 1
        (<int64_t*> (f_episode + off))[0] = next_ep
        (<int32_t*> (f_task + off))[0] = <int32_t> t
        end = done[i * s_done] != 0 or truncated[i * s_trunc] != 0
        if end:
            next_ep += 1
            open_task = -1
        else:
            open_task = t
        if all8:  # loop-invariant: the compiler unswitches this into its own loop
            (<int64_t*> (f_obs + off))[0] = (<const int64_t*> obs)[i]
            (<int64_t*> (f_next + off))[0] = (<const int64_t*> next_obs)[i]
            (<int64_t*> (f_action + off))[0] = (<const int64_t*> action)[i]
            (<int64_t*> (f_reward + off))[0] = (<const int64_t*> reward)[i]
            (<int64_t*> (f_logp + off))[0] = (<const int64_t*> (logp + i * s_logp))[0]
        else:
            _put(f_obs + off, obs + i * b_obs, b_obs)
            _put(f_next + off, next_obs + i * b_obs, b_obs)
            _put(f_action + off, action + i * b_action, b_action)
            _put(f_reward + off, reward + i * b_float, b_float)
            _put(f_logp + off, logp + i * s_logp, b_float)
        f_done[off] = done[i * s_done]
        f_trunc[off] = truncated[i * s_trunc]
        slot += 1
        if slot == capacity:
            slot = 0

    # Push the new slots onto their tasks' rings (in time order), by runs of equal task.
    slot = (pos + skip) % capacity
    run_task = -1
    row = NULL
    ring = NULL
    front = count = mask = 0
    for i in range(skip, n):
        t = (<const int64_t*> (task + i * s_task))[0] if task64 else (<const int32_t*> (task + i * s_task))[0]
        if t != run_task:
            if row != NULL:
                row[1] = count
            run_task = t
            row = meta + 4 * t
            front = row[0]
            count = row[1]
            mask = row[2] - 1
            ring = <int64_t*> row[3]
        ring[(front + count) & mask] = slot
        count += 1
        slot += 1
        if slot == capacity:
            slot = 0
    if row != NULL:
        row[1] = count

    state[S_POS] = (pos + n) % capacity
    state[S_SIZE] = capacity if size0 + n > capacity else size0 + n
    state[S_NEXT_EPISODE] = next_ep
    state[S_OPEN_TASK] = open_task
    state[S_N_ADDED] += n


cdef void gather_rows(const char* src, intp_t row_bytes, intp_t src_stride, const int64_t* idx,
                      intp_t n, char* dst) noexcept nogil:
    cdef intp_t i
    if row_bytes == 8:
        for i in range(n):
            (<int64_t*> dst)[i] = (<const int64_t*> (src + idx[i] * src_stride))[0]
    elif row_bytes == 4:
        for i in range(n):
            (<int32_t*> dst)[i] = (<const int32_t*> (src + idx[i] * src_stride))[0]
    elif row_bytes == 1:
        for i in range(n):
            dst[i] = src[idx[i] * src_stride]
    else:
        for i in range(n):
            memcpy(dst + i * row_bytes, src + idx[i] * src_stride, row_bytes)


cdef void uniform_indices(bitgen_t* bitgen, int64_t size, intp_t n, int64_t* out) noexcept nogil:
    cdef intp_t i
    cdef int64_t k
    cdef double dsize = <double> size
    for i in range(n):
        k = <int64_t> (next_uniform(bitgen) * dsize)
        out[i] = k if k < size else size - 1


cdef inline int64_t _episode_at(const char* episode, intp_t stride, int64_t slot) noexcept nogil:
    return (<const int64_t*> (episode + slot * stride))[0]


cdef int sequence_starts(const char* episode, intp_t episode_stride, intp_t capacity, int64_t pos,
                         int64_t size, int64_t length, bitgen_t* bitgen, intp_t n,
                         int64_t* out) noexcept nogil:
    cdef int64_t oldest = (pos - size) % capacity
    cdef int64_t n_cand = size - length + 1, s, a, b, n_valid, k
    cdef double dcand = <double> n_cand
    cdef intp_t n_pending = n, kept, j
    cdef int64_t* pending
    cdef int64_t* cand
    cdef int64_t* valid
    if oldest < 0:
        oldest += capacity
    if length > size:
        return -1
    pending = <int64_t*> malloc(2 * (n if n > 0 else 1) * sizeof(int64_t))
    if pending == NULL:
        return -2
    cand = pending + (n if n > 0 else 1)
    for j in range(n):
        pending[j] = j
    for r in range(SEQUENCE_ROUNDS):
        if n_pending == 0:
            break
        for j in range(n_pending):  # this round's draws, in order
            s = <int64_t> (next_uniform(bitgen) * dcand)
            if s >= n_cand:
                s = n_cand - 1
            cand[j] = s
        kept = 0
        for j in range(n_pending):  # then the checks, prefetching the episode ids ahead
            if j + PREFETCH_AHEAD < n_pending:
                s = oldest + cand[j + PREFETCH_AHEAD]
                MF_PREFETCH(episode + (s % capacity) * episode_stride)
                MF_PREFETCH(episode + ((s + length - 1) % capacity) * episode_stride)
            a = (oldest + cand[j]) % capacity
            b = (oldest + cand[j] + length - 1) % capacity
            if _episode_at(episode, episode_stride, a) == _episode_at(episode, episode_stride, b):
                out[pending[j]] = a
            else:
                pending[kept] = pending[j]
                kept += 1
        n_pending = kept
    if n_pending == 0:
        free(pending)
        return 0
    valid = <int64_t*> malloc(n_cand * sizeof(int64_t))
    if valid == NULL:
        free(pending)
        return -2
    n_valid = 0
    for s in range(n_cand):
        if (_episode_at(episode, episode_stride, (oldest + s) % capacity)
                == _episode_at(episode, episode_stride, (oldest + s + length - 1) % capacity)):
            valid[n_valid] = s
            n_valid += 1
    if n_valid == 0:
        free(valid)
        free(pending)
        return -1
    for j in range(n_pending):
        k = <int64_t> (next_uniform(bitgen) * <double> n_valid)
        if k >= n_valid:
            k = n_valid - 1
        out[pending[j]] = (oldest + valid[k]) % capacity
    free(valid)
    free(pending)
    return 0


cdef inline void _tree_pull(double* tree_sum, double* tree_min, intp_t node) noexcept nogil:
    cdef double a = tree_min[2 * node], b = tree_min[2 * node + 1]
    tree_sum[node] = tree_sum[2 * node] + tree_sum[2 * node + 1]
    tree_min[node] = a if a <= b else b


cdef void tree_set_leaf(double* tree_sum, double* tree_min, intp_t n_leaves, intp_t leaf,
                        double value) noexcept nogil:
    cdef intp_t node = n_leaves + leaf
    tree_sum[node] = value
    tree_min[node] = value
    node >>= 1
    while node >= 1:
        _tree_pull(tree_sum, tree_min, node)
        node >>= 1


cdef void tree_fill_range(double* tree_sum, double* tree_min, intp_t n_leaves, intp_t first,
                          intp_t last, double value) noexcept nogil:
    """Leaves first .. last (inclusive) = value, then their ancestors level by level."""
    cdef intp_t lo = n_leaves + first, hi = n_leaves + last, j
    for j in range(lo, hi + 1):
        tree_sum[j] = value
        tree_min[j] = value
    while lo > 1:
        lo >>= 1
        hi >>= 1
        for j in range(lo, hi + 1):
            _tree_pull(tree_sum, tree_min, j)


cdef int tree_sample_leaves(const double* tree_sum, intp_t n_leaves, bitgen_t* bitgen, intp_t n,
                            int64_t* out) noexcept nogil:
    """All n descents advance one level at a time, so the misses of different samples overlap."""
    cdef intp_t i, left, ahead, right
    cdef double total = tree_sum[1], left_sum, t
    cdef double* target
    cdef intp_t* node
    if n == 0:
        return 0
    target = <double*> malloc(n * sizeof(double))
    node = <intp_t*> malloc(n * sizeof(intp_t))
    if target == NULL or node == NULL:
        free(target)
        free(node)
        return -2
    for i in range(n):
        target[i] = next_uniform(bitgen) * total
        node[i] = 1
    while node[0] < n_leaves:
        for i in range(n):
            ahead = i + PREFETCH_AHEAD
            if ahead < n:
                MF_PREFETCH(tree_sum + 2 * node[ahead])
            # Branch-free: the direction is a coin flip that a branch would mispredict half the
            # time.  t - left_sum * 0.0 == t exactly (no FMA contraction), so this rounds like the
            # reference's np.where(right, t - left_sum, t).
            left = 2 * node[i]
            left_sum = tree_sum[left]
            t = target[i]
            right = (t >= left_sum) & (tree_sum[left + 1] > 0)
            target[i] = t - left_sum * <double> right
            node[i] = left + right
    for i in range(n):
        out[i] = node[i] - n_leaves
    free(target)
    free(node)
    return 0


cdef int tree_set_leaves(double* tree_sum, double* tree_min, intp_t n_leaves, const int64_t* leaves,
                         const double* values, intp_t n) noexcept nogil:
    """Set the leaves in order (the last of repeated ones wins), then recompute their ancestors
    level by level (independent loads; recomputing a shared ancestor twice is harmless)."""
    cdef intp_t i, node, ahead
    cdef intp_t* nodes
    if n == 0:
        return 0
    nodes = <intp_t*> malloc(n * sizeof(intp_t))
    if nodes == NULL:
        return -2
    for i in range(n):
        node = n_leaves + leaves[i]
        tree_sum[node] = values[i]
        tree_min[node] = values[i]
        nodes[i] = node >> 1
    while nodes[0] >= 1:
        for i in range(n):
            ahead = i + PREFETCH_AHEAD
            if ahead < n:
                MF_PREFETCH(tree_sum + 2 * nodes[ahead])
                MF_PREFETCH(tree_min + 2 * nodes[ahead])
            _tree_pull(tree_sum, tree_min, nodes[i])
            nodes[i] >>= 1
    free(nodes)
    return 0


# The default record (int64 obs/action scalars, float64 reward/logp): field sizes and offsets
# (aligned struct, FIELDS order).
cdef intp_t DEFAULT_SIZES[N_FIELDS]
cdef intp_t DEFAULT_OFFSETS[N_FIELDS]
DEFAULT_SIZES[:] = [8, 8, 8, 8, 1, 1, 4, 8, 8]
DEFAULT_OFFSETS[:] = [0, 8, 16, 24, 32, 33, 36, 40, 48]


cdef inline bint _is_default_layout(const char* const* srcs, const intp_t* row_bytes,
                                    intp_t n_fields) noexcept nogil:
    cdef intp_t f
    if n_fields != N_FIELDS:
        return False
    for f in range(N_FIELDS):
        if row_bytes[f] != DEFAULT_SIZES[f] or srcs[f] - srcs[0] != DEFAULT_OFFSETS[f]:
            return False
    return True


cdef void gather_default_records(const char* base, intp_t stride, const int64_t* idx, intp_t n,
                                 char* const* dsts, bint prefetch, bint widen_task) noexcept nogil:
    """Records -> columns for the default layout in one pass: the field sizes and offsets are
    constants, so each field is one load and one store (the generic path runs a loop per field).
    ``widen_task``: the task ids go to an int64 column (else int32, as stored)."""
    cdef int64_t* obs = <int64_t*> dsts[0]
    cdef int64_t* action = <int64_t*> dsts[1]
    cdef int64_t* reward = <int64_t*> dsts[2]  # (the float64 bits)
    cdef int64_t* next_obs = <int64_t*> dsts[3]
    cdef char* done = dsts[4]
    cdef char* truncated = dsts[5]
    cdef int64_t* task = <int64_t*> dsts[6]
    cdef int32_t* task32 = <int32_t*> dsts[6]
    cdef int64_t* episode = <int64_t*> dsts[7]
    cdef int64_t* logp = <int64_t*> dsts[8]
    cdef const char* r
    cdef intp_t i
    for i in range(n):
        if prefetch and i + PREFETCH_AHEAD < n:
            r = base + idx[i + PREFETCH_AHEAD] * stride
            MF_PREFETCH(r)
            MF_PREFETCH(r + stride - 1)
        r = base + idx[i] * stride
        obs[i] = (<const int64_t*> r)[0]
        action[i] = (<const int64_t*> (r + 8))[0]
        reward[i] = (<const int64_t*> (r + 16))[0]
        next_obs[i] = (<const int64_t*> (r + 24))[0]
        done[i] = r[32]
        truncated[i] = r[33]
        if widen_task:
            task[i] = (<const int32_t*> (r + 36))[0]
        else:
            task32[i] = (<const int32_t*> (r + 36))[0]
        episode[i] = (<const int64_t*> (r + 40))[0]
        logp[i] = (<const int64_t*> (r + 48))[0]


cdef void gather_records(const char* const* srcs, const intp_t* row_bytes, intp_t n_fields,
                         intp_t stride, const int64_t* idx, intp_t n, char* const* dsts,
                         bint prefetch=True) noexcept nogil:
    """The first field's pass prefetches whole records ahead (unless the caller already did);
    the other fields then hit the cache in tight per-field loops."""
    _gather_records(srcs, row_bytes, n_fields, stride, idx, n, dsts, prefetch, False)


cdef void _gather_records(const char* const* srcs, const intp_t* row_bytes, intp_t n_fields,
                          intp_t stride, const int64_t* idx, intp_t n, char* const* dsts,
                          bint prefetch, bint widen_task) noexcept nogil:
    """gather_records; ``widen_task``: field F_TASK (int32) goes to an int64 column."""
    cdef intp_t i, f, ahead
    if _is_default_layout(srcs, row_bytes, n_fields):
        gather_default_records(srcs[0], stride, idx, n, dsts, prefetch, widen_task)
        return
    if prefetch:
        for i in range(n):
            ahead = i + PREFETCH_AHEAD
            if ahead < n:
                MF_PREFETCH(srcs[0] + idx[ahead] * stride)
                MF_PREFETCH(srcs[0] + idx[ahead] * stride + stride - 1)
            _put(dsts[0] + i * row_bytes[0], srcs[0] + idx[i] * stride, row_bytes[0])
        f = 1
    else:
        f = 0
    while f < n_fields:
        if widen_task and f == F_TASK:
            gather_task_ids(srcs[f], stride, idx, n, <int64_t*> dsts[f])
        else:
            gather_rows(srcs[f], row_bytes[f], stride, idx, n, dsts[f])
        f += 1


cdef inline void gather_task_ids(const char* src, intp_t src_stride, const int64_t* idx, intp_t n,
                                 int64_t* dst) noexcept nogil:
    """The stored int32 task ids at ``idx``, widened to int64."""
    cdef intp_t i
    for i in range(n):
        dst[i] = (<const int32_t*> (src + idx[i] * src_stride))[0]


# ---------------------------------------------------------------------------------------------
# Python entry points (same names and signatures as the reference)
# ---------------------------------------------------------------------------------------------

_Generator = np.random.Generator

cdef inline bint _exact(object x, int typenum, int ndim) noexcept:
    """x is a C-contiguous, aligned, native-byte-order ndarray of exactly this type and ndim."""
    return (type(x) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> x) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray> x) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> x)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> x))


cdef inline bint _rows_match(object x, cnp.ndarray field, intp_t n) noexcept:
    """x is an (n, *field.shape[1:]) C-contiguous ndarray of field's exact dtype."""
    cdef int nd = cnp.PyArray_NDIM(field), d
    cdef cnp.ndarray a
    if not _exact(x, cnp.PyArray_TYPE(field), nd):
        return False
    a = <cnp.ndarray> x
    if cnp.PyArray_DIM(a, 0) != n:
        return False
    for d in range(1, nd):
        if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(field, d):
            return False
    return True


cdef bint _all_finite(const char* data, int typenum, intp_t count) noexcept nogil:
    """No NaN or +-inf among count float64/float32 values (other types: True).

    Tests the exponent bits (all ones <=> NaN or inf) and ORs the results: integer operations
    that the compiler vectorises, without a branch per value."""
    cdef intp_t i
    cdef uint64_t bad64 = 0
    cdef uint32_t bad32 = 0
    cdef const uint64_t* d64 = <const uint64_t*> data
    cdef const uint32_t* d32 = <const uint32_t*> data
    if typenum == cnp.NPY_DOUBLE:
        for i in range(count):
            bad64 |= ((d64[i] & 0x7FF0000000000000ULL) + 0x0010000000000000ULL) & 0x8000000000000000ULL
        return bad64 == 0
    if typenum == cnp.NPY_FLOAT:
        for i in range(count):
            bad32 |= ((d32[i] & 0x7F800000U) + 0x00800000U) & 0x80000000U
        return bad32 == 0
    return True


cdef int _storage(Storage* st, tuple store, cnp.ndarray state, cnp.ndarray meta) except -1:
    cdef int f
    cdef cnp.ndarray arr
    for f in range(N_FIELDS):
        arr = <cnp.ndarray> store[f]
        st.field[f] = <char*> cnp.PyArray_DATA(arr)
        st.row_bytes[f] = cnp.PyArray_ITEMSIZE(arr) * (cnp.PyArray_SIZE(arr) // cnp.PyArray_DIM(arr, 0))
        st.stride[f] = cnp.PyArray_STRIDE(arr, 0)
        if st.stride[f] != st.stride[0]:
            raise ValueError("store must be the field views of one record array (equal row strides)")
    st.capacity = cnp.PyArray_DIM(<cnp.ndarray> store[0], 0)
    st.state = <int64_t*> cnp.PyArray_DATA(state)
    st.task_meta = <int64_t*> cnp.PyArray_DATA(meta)
    st.n_tasks = cnp.PyArray_DIM(meta, 0)
    return 0


cdef int _cmp_int64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*> a)[0], y = (<const int64_t*> b)[0]
    return (x > y) - (x < y)


cdef int _reserve_tasks(Storage* st, object tasks, const Columns* c, int64_t max_task) except -1:
    """Grow the task table and rings (Python bookkeeping, only when needed) so that write_rows
    never runs out of room: every ring must hold count + (new rows of its task)."""
    cdef intp_t i, m = c.n - st.capacity if c.n > st.capacity else 0
    cdef int64_t k, t
    cdef intp_t n_touched
    cdef int64_t* pushes
    cdef int64_t* touched
    cdef int64_t* meta = st.task_meta
    m = c.n - m  # rows actually stored (the last `capacity`)
    if c.task_stride == 0:
        t = _task_at(c, 0)
        if t < st.n_tasks and meta[4 * t + 1] + m <= meta[4 * t + 2]:
            return 0  # the common case: nothing to grow
    if max_task >= st.n_tasks:
        tasks.reserve_tasks(max_task)
    meta = <int64_t*> cnp.PyArray_DATA(<cnp.ndarray> tasks.meta)
    if c.task_stride == 0:
        t = _task_at(c, 0)
        if meta[4 * t + 1] + m > meta[4 * t + 2]:
            tasks.reserve(t, meta[4 * t + 1] + m)
    else:
        # rows per task of this call: counted in a dense table when the ids are few, else from
        # the sorted ids (a large id must not cost a table of every id below it)
        if max_task < 4 * m + 1024:
            pushes = <int64_t*> calloc(max_task + 1, sizeof(int64_t))
            if pushes == NULL:
                raise MemoryError("metarl_fast: out of memory in ReplayBuffer.add_batch")
            for i in range(c.n - m, c.n):
                pushes[_task_at(c, i)] += 1
            try:
                for k in range(max_task + 1):
                    if pushes[k] and meta[4 * k + 1] + pushes[k] > meta[4 * k + 2]:
                        tasks.reserve(k, meta[4 * k + 1] + pushes[k])
            finally:
                free(pushes)
        else:
            touched = <int64_t*> malloc((m if m > 0 else 1) * sizeof(int64_t))
            if touched == NULL:
                raise MemoryError("metarl_fast: out of memory in ReplayBuffer.add_batch")
            for i in range(m):
                touched[i] = _task_at(c, c.n - m + i)
            qsort(touched, m, sizeof(int64_t), _cmp_int64)
            try:
                i = 0
                while i < m:
                    k, n_touched = touched[i], 1
                    while i + n_touched < m and touched[i + n_touched] == k:
                        n_touched += 1
                    if meta[4 * k + 1] + n_touched > meta[4 * k + 2]:
                        tasks.reserve(k, meta[4 * k + 1] + n_touched)
                    i += n_touched
            finally:
                free(touched)
    meta_arr = <cnp.ndarray> tasks.meta  # (reserve may have replaced the table)
    st.task_meta = <int64_t*> cnp.PyArray_DATA(meta_arr)
    st.n_tasks = cnp.PyArray_DIM(meta_arr, 0)
    return 0


cdef int _columns_from(Columns* c, tuple cols) except -1:
    """Point at the 8 converted columns returned by the reference validators."""
    c.obs = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[0])
    c.action = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[1])
    c.reward = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[2])
    c.next_obs = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[3])
    c.done = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[4])
    c.truncated = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[5])
    c.task = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[6])
    c.logp = <const char*> cnp.PyArray_DATA(<cnp.ndarray> cols[7])
    c.done_stride = 1
    c.truncated_stride = 1
    c.task_stride = 4
    c.task_is64 = False
    c.logp_stride = cnp.PyArray_ITEMSIZE(<cnp.ndarray> cols[7])
    c.n = cnp.PyArray_DIM(<cnp.ndarray> cols[2], 0)
    return 0


cdef int64_t _max_task(const Columns* c) noexcept nogil:
    """Largest task id in the rows, or -1 if one is out of [0, MAX_TASKS)."""
    cdef intp_t i, n = c.n if c.task_stride else 1
    cdef int64_t t, hi = 0
    for i in range(n):
        t = _task_at(c, i)
        if t < 0 or t >= MAX_TASKS:
            return -1
        if t > hi:
            hi = t
    return hi


# Below this many rows the write is cheaper than releasing and re-taking the GIL.
cdef intp_t GIL_FREE_ROWS = 64


cdef int _commit(tuple store, cnp.ndarray state, object tasks, Columns* c, int64_t max_task) except -1:
    cdef Storage st
    _storage(&st, store, state, <cnp.ndarray> tasks.meta)
    _reserve_tasks(&st, tasks, c, max_task)
    if c.n < GIL_FREE_ROWS:
        write_rows(&st, c)
    else:
        with nogil:
            write_rows(&st, c)
    return 0


# Scalars of the flag / task / logp columns for broadcast (stride 0) writes.
cdef struct Scalars:
    uint8_t done
    uint8_t truncated
    int64_t task
    double logp_d
    float logp_f


cdef inline int _flag(object x, uint8_t* out) noexcept:
    """1 if x is a Python bool (or None -> False), written to out; 0 otherwise."""
    if x is None or x is False:
        out[0] = 0
        return 1
    if x is True:
        out[0] = 1
        return 1
    return 0


cdef inline bint _task_scalar(object x, int64_t* out) noexcept:
    """x is a Python int in [0, MAX_TASKS), written to out (no Python-level comparisons)."""
    cdef long long v
    if type(x) is not int:
        return False
    if not mf_int_value(x, &v) or v < 0 or v >= MAX_TASKS:
        return False
    out[0] = v
    return True


def add_batch(tuple store, cnp.ndarray state, tasks, obs, action, reward, next_obs, done,
              truncated, task_id, logp):
    """Validate and append n transitions.  See :func:`metarl_fast.reference.replay.add_batch`."""
    return _add_batch(store, state, tasks, obs, action, reward, next_obs, done, truncated, task_id,
                      logp)


cdef intp_t _add_batch(tuple store, cnp.ndarray state, object tasks, object obs, object action,
                       object reward, object next_obs, object done, object truncated,
                       object task_id, object logp) except -1:
    cdef Columns c
    cdef Scalars sc
    cdef cnp.ndarray field_reward = <cnp.ndarray> store[F_REWARD]
    cdef int ftype = cnp.PyArray_TYPE(field_reward)
    cdef intp_t n
    cdef int64_t max_task
    cdef bint fast = _exact(reward, ftype, 1)
    cdef double v
    if fast:
        n = cnp.PyArray_DIM(<cnp.ndarray> reward, 0)
        fast = (_rows_match(obs, <cnp.ndarray> store[F_OBS], n)
                and _rows_match(next_obs, <cnp.ndarray> store[F_NEXT_OBS], n)
                and _rows_match(action, <cnp.ndarray> store[F_ACTION], n))
    if fast:
        c.n = n
        c.obs = <const char*> cnp.PyArray_DATA(<cnp.ndarray> obs)
        c.action = <const char*> cnp.PyArray_DATA(<cnp.ndarray> action)
        c.reward = <const char*> cnp.PyArray_DATA(<cnp.ndarray> reward)
        c.next_obs = <const char*> cnp.PyArray_DATA(<cnp.ndarray> next_obs)
        if _flag(done, &sc.done):
            c.done, c.done_stride = <const char*> &sc.done, 0
        elif _exact(done, cnp.NPY_BOOL, 1) and cnp.PyArray_DIM(<cnp.ndarray> done, 0) == n:
            c.done, c.done_stride = <const char*> cnp.PyArray_DATA(<cnp.ndarray> done), 1
        else:
            fast = False
        if _flag(truncated, &sc.truncated):
            c.truncated, c.truncated_stride = <const char*> &sc.truncated, 0
        elif _exact(truncated, cnp.NPY_BOOL, 1) and cnp.PyArray_DIM(<cnp.ndarray> truncated, 0) == n:
            c.truncated, c.truncated_stride = <const char*> cnp.PyArray_DATA(<cnp.ndarray> truncated), 1
        else:
            fast = False
        if _task_scalar(task_id, &sc.task):
            c.task, c.task_stride, c.task_is64 = <const char*> &sc.task, 0, True
        elif (_exact(task_id, cnp.NPY_INT64, 1) or _exact(task_id, cnp.NPY_INT32, 1)) \
                and cnp.PyArray_DIM(<cnp.ndarray> task_id, 0) == n:
            c.task_is64 = cnp.PyArray_TYPE(<cnp.ndarray> task_id) == cnp.NPY_INT64
            c.task, c.task_stride = <const char*> cnp.PyArray_DATA(<cnp.ndarray> task_id), 8 if c.task_is64 else 4
        else:
            fast = False
        if type(logp) is float or type(logp) is int:
            v = logp
            sc.logp_d = v
            sc.logp_f = <float> v
            if ftype == cnp.NPY_DOUBLE:
                c.logp = <const char*> &sc.logp_d
                fast = fast and isfinite(sc.logp_d)
            else:
                c.logp = <const char*> &sc.logp_f
                fast = fast and isfinite(sc.logp_f)
            c.logp_stride = 0
        elif _exact(logp, ftype, 1) and cnp.PyArray_DIM(<cnp.ndarray> logp, 0) == n:
            c.logp = <const char*> cnp.PyArray_DATA(<cnp.ndarray> logp)
            c.logp_stride = cnp.PyArray_ITEMSIZE(field_reward)
            fast = fast and _all_finite(c.logp, ftype, n)
        else:
            fast = False
    if fast:
        fast = _all_finite(c.reward, ftype, n)
        if fast and cnp.PyArray_TYPE(<cnp.ndarray> store[F_OBS]) in (cnp.NPY_FLOAT, cnp.NPY_DOUBLE):
            fast = (_all_finite(c.obs, cnp.PyArray_TYPE(<cnp.ndarray> store[F_OBS]),
                                cnp.PyArray_SIZE(<cnp.ndarray> obs))
                    and _all_finite(c.next_obs, cnp.PyArray_TYPE(<cnp.ndarray> store[F_OBS]),
                                    cnp.PyArray_SIZE(<cnp.ndarray> next_obs)))
        if fast and cnp.PyArray_TYPE(<cnp.ndarray> store[F_ACTION]) in (cnp.NPY_FLOAT, cnp.NPY_DOUBLE):
            fast = _all_finite(c.action, cnp.PyArray_TYPE(<cnp.ndarray> store[F_ACTION]),
                               cnp.PyArray_SIZE(<cnp.ndarray> action))
    if fast:
        max_task = _max_task(&c)
        fast = max_task >= 0
    if not fast:
        cols = _ref.check_batch(store, obs, action, reward, next_obs, done, truncated, task_id, logp)
        _columns_from(&c, cols)
        max_task = _max_task(&c)
    if c.n == 0:
        return 0
    _commit(store, state, tasks, &c, max_task)
    return c.n


cdef inline bint _scalar_row(object x, cnp.ndarray field, char* buf, const char** out) noexcept:
    """Point out at one row of field's dtype/shape taken from x (fast cases only)."""
    cdef int typenum = cnp.PyArray_TYPE(field)
    cdef int nd = cnp.PyArray_NDIM(field), d
    cdef cnp.ndarray a
    cdef double v
    cdef long long iv
    if nd == 1:
        if type(x) is int:
            if not mf_int_value(x, &iv) or iv == INT64_MIN:  # (INT64_MIN: also the reference's out-of-range)
                return False
            if typenum == cnp.NPY_INT64:
                (<int64_t*> buf)[0] = iv
            elif typenum == cnp.NPY_INT32 and -2147483648 <= iv <= 2147483647:
                (<int32_t*> buf)[0] = <int32_t> iv
            else:
                return False
            out[0] = buf
            return True
        if type(x) is float:
            v = x
            if not isfinite(v):
                return False
            if typenum == cnp.NPY_DOUBLE:
                (<double*> buf)[0] = v
            elif typenum == cnp.NPY_FLOAT:
                (<float*> buf)[0] = <float> v
                if not isfinite((<float*> buf)[0]):
                    return False
            else:
                return False
            out[0] = buf
            return True
    if not _exact(x, typenum, nd - 1):
        return False
    a = <cnp.ndarray> x
    for d in range(1, nd):
        if cnp.PyArray_DIM(a, d - 1) != cnp.PyArray_DIM(field, d):
            return False
    if (typenum == cnp.NPY_FLOAT or typenum == cnp.NPY_DOUBLE) and not _all_finite(
            <const char*> cnp.PyArray_DATA(a), typenum, cnp.PyArray_SIZE(a)):
        return False
    out[0] = <const char*> cnp.PyArray_DATA(a)
    return True


def add_one(tuple store, cnp.ndarray state, tasks, obs, action, reward, next_obs, done,
            truncated, task_id, logp):
    """Validate and append one transition.  See :func:`metarl_fast.reference.replay.add_one`."""
    return _add_one(store, state, tasks, obs, action, reward, next_obs, done, truncated, task_id,
                    logp, None)


cdef inline bint _float_scalar(object x, double* out) noexcept:
    """x is a Python float, or an int of at most 53 bits (exactly a double), written to out."""
    cdef long long iv
    if type(x) is float:
        out[0] = PyFloat_AS_DOUBLE(x)
        return True
    if type(x) is int and mf_int_value(x, &iv) and -(1LL << 53) <= iv <= (1LL << 53):
        out[0] = <double> iv
        return True
    return False


cdef struct OneRow:
    # One transition as Columns, with the scalars it points at.
    Columns c
    Scalars sc
    char obs_buf[8]
    char next_buf[8]
    char act_buf[8]
    double reward_d
    double logp_d
    float reward_f
    float logp_f


cdef bint _parse_one(OneRow* r, tuple store, object obs, object action, object reward,
                     object next_obs, object done, object truncated, object task_id,
                     object logp) noexcept:
    """Fill r from the arguments of add if they are in their fast forms (C-level checks only: no
    Python code runs, so the GIL is never given up here).  False: use the reference checks."""
    cdef int ftype = cnp.PyArray_TYPE(<cnp.ndarray> store[F_REWARD])
    cdef Columns* c = &r.c
    if not (_scalar_row(obs, <cnp.ndarray> store[F_OBS], r.obs_buf, &c.obs)
            and _scalar_row(next_obs, <cnp.ndarray> store[F_NEXT_OBS], r.next_buf, &c.next_obs)
            and _scalar_row(action, <cnp.ndarray> store[F_ACTION], r.act_buf, &c.action)
            and _float_scalar(reward, &r.reward_d) and _float_scalar(logp, &r.logp_d)
            and _task_scalar(task_id, &r.sc.task)
            and _flag(done, &r.sc.done) and _flag(truncated, &r.sc.truncated)):
        return False
    c.task, c.task_stride, c.task_is64 = <const char*> &r.sc.task, 0, True
    c.done, c.done_stride = <const char*> &r.sc.done, 0
    c.truncated, c.truncated_stride = <const char*> &r.sc.truncated, 0
    c.logp_stride = 0
    c.n = 1
    if ftype == cnp.NPY_DOUBLE:
        c.reward = <const char*> &r.reward_d
        c.logp = <const char*> &r.logp_d
        return isfinite(r.reward_d) and isfinite(r.logp_d)
    r.reward_f = <float> r.reward_d
    r.logp_f = <float> r.logp_d
    c.reward = <const char*> &r.reward_f
    c.logp = <const char*> &r.logp_f
    return isfinite(r.reward_f) and isfinite(r.logp_f)


cdef int _add_one(tuple store, cnp.ndarray state, object tasks, object obs, object action,
                  object reward, object next_obs, object done, object truncated, object task_id,
                  object logp, CompiledBuffer writer) except -1:
    cdef OneRow r
    if not _parse_one(&r, store, obs, action, reward, next_obs, done, truncated, task_id, logp):
        cols = _ref.check_one(store, obs, action, reward, next_obs, done, truncated, task_id, logp)
        _columns_from(&r.c, cols)
    if writer is None:
        _commit(store, state, tasks, &r.c, _task_at(&r.c, 0))
    else:
        writer.commit_one(&r.c)
    return 1


cdef void write_one(Storage* st, const Columns* c) noexcept nogil:
    """write_rows for one row (c.n == 1), without its loops and modulo divisions."""
    cdef int64_t* state = st.state
    cdef int64_t* meta = st.task_meta
    cdef int64_t* row
    cdef int64_t pos = state[S_POS], size0 = state[S_SIZE], capacity = st.capacity
    cdef int64_t next_ep = state[S_NEXT_EPISODE], open_task = state[S_OPEN_TASK]
    cdef int64_t t = _task_at(c, 0), old
    cdef intp_t off = pos * st.stride[0], b_float = st.row_bytes[F_REWARD]
    if size0 == capacity or pos < size0:  # the slot's old transition leaves its task's ring
        old = (<int32_t*> (st.field[F_TASK] + off))[0]
        row = meta + 4 * old
        row[0] = (row[0] + 1) & (row[2] - 1)
        row[1] -= 1
    if open_task >= 0 and t != open_task:
        next_ep += 1
    (<int64_t*> (st.field[F_EPISODE] + off))[0] = next_ep
    (<int32_t*> (st.field[F_TASK] + off))[0] = <int32_t> t
    if c.done[0] != 0 or c.truncated[0] != 0:
        next_ep += 1
        open_task = -1
    else:
        open_task = t
    _put(st.field[F_OBS] + off, c.obs, st.row_bytes[F_OBS])
    _put(st.field[F_NEXT_OBS] + off, c.next_obs, st.row_bytes[F_OBS])
    _put(st.field[F_ACTION] + off, c.action, st.row_bytes[F_ACTION])
    _put(st.field[F_REWARD] + off, c.reward, b_float)
    _put(st.field[F_LOGP] + off, c.logp, b_float)
    st.field[F_DONE][off] = c.done[0]
    st.field[F_TRUNCATED][off] = c.truncated[0]
    row = meta + 4 * t
    (<int64_t*> row[3])[(row[0] + row[1]) & (row[2] - 1)] = pos
    row[1] += 1
    state[S_POS] = pos + 1 if pos + 1 < capacity else 0
    state[S_SIZE] = size0 + 1 if size0 < capacity else capacity
    state[S_NEXT_EPISODE] = next_ep
    state[S_OPEN_TASK] = open_task
    state[S_N_ADDED] += 1


# ---------------------------------------------------------------------------------------------
# The buffer's lock and its single-transition fast path
# ---------------------------------------------------------------------------------------------

cdef class BufferLock:
    """A non-reentrant lock, usable from Python (``with lock:``, ``acquire``/``release``) and
    taken from C by :class:`CompiledBuffer` without a Python call.  `held` is True from just
    after the lock is taken until just before it is released (set and cleared under the GIL):
    :meth:`CompiledBuffer.add` writes without the lock only while it is False.

    Blocking waits release the GIL, so a thread holding the lock while it copies without the GIL
    is never deadlocked by a waiter.
    """

    def __cinit__(self):
        self.handle = PyThread_allocate_lock()
        if self.handle == NULL:
            raise MemoryError("metarl_fast: could not allocate a lock")
        self.held = False

    def __dealloc__(self):
        if self.handle != NULL:
            PyThread_free_lock(self.handle)

    cdef int take(self) except -1:
        if not PyThread_acquire_lock(self.handle, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.handle, WAIT_LOCK)
        self.held = True
        return 0

    cdef void give(self) noexcept:
        self.held = False
        PyThread_release_lock(self.handle)

    def acquire(self, blocking=True):
        """Take the lock; with ``blocking=False`` return False at once if it is held."""
        if blocking:
            self.take()
            return True
        if PyThread_acquire_lock(self.handle, NOWAIT_LOCK):
            self.held = True
            return True
        return False

    def release(self):
        """Release the lock (RuntimeError if it is not held)."""
        if not self.held:
            raise RuntimeError("release unlocked lock")
        self.give()

    def locked(self):
        """True while some thread holds the lock."""
        return self.held

    def __enter__(self):
        self.take()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.give()
        return False


cdef class CompiledBuffer:
    """``ReplayBuffer.add`` and ``ReplayBuffer.sample`` compiled.

    A buffer made under the Cython backend binds its ``add`` and ``sample`` to these methods, so
    one transition, or one sampled batch, costs one C method call (lock, validation, kernel,
    result) instead of a Python frame, a ``with`` block and several kernel calls.  Same checks,
    errors and results as the Python methods, under the buffer's lock.
    """

    def __init__(self, tuple store, cnp.ndarray state, tasks, BufferLock lock, type batch_type):
        """batch_type: the named tuple class of sampled batches (``metarl_fast.replay.Batch``)."""
        self.batch_type = batch_type
        self.store = store
        self.state = state
        self.tasks = tasks
        self.lock = lock
        self.meta = tasks.meta
        self.version_array = tasks.version
        self.version = <int64_t*> cnp.PyArray_DATA(<cnp.ndarray> self.version_array)
        self.seen_version = self.version[0]
        _storage(&self.st, store, state, <cnp.ndarray> self.meta)

    cdef bint has_room(self, int64_t t) noexcept nogil:
        """Task t is in the cached task table and its ring can take one more slot."""
        return t < self.st.n_tasks and self.st.task_meta[4 * t + 1] < self.st.task_meta[4 * t + 2]

    cdef int commit_one(self, const Columns* c) except -1:
        """Write one validated row through the cached storage pointers."""
        cdef int64_t t = _task_at(c, 0)
        if self.version[0] != self.seen_version:  # the task table was grown or cleared
            meta = self.tasks.meta
            self.meta = meta
            self.seen_version = self.version[0]
            self.st.task_meta = <int64_t*> cnp.PyArray_DATA(<cnp.ndarray> meta)
            self.st.n_tasks = cnp.PyArray_DIM(<cnp.ndarray> meta, 0)
        if not self.has_room(t):
            _reserve_tasks(&self.st, self.tasks, c, t)
            self.meta = self.tasks.meta
            self.seen_version = self.version[0]
        write_one(&self.st, c)
        return 0

    # A plain C method (binding=False): calling it skips the bound-method object of a Cython
    # function.  Its docstring carries the signature in CPython's text-signature form, so
    # inspect.signature and help() still show it
    # (that form needs the "--" line unindented).
    @cython.binding(False)
    @cython.embedsignature(False)
    def add(self, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0):
        """add($self, /, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0)
--

Append one transition.  See :meth:`metarl_fast.replay.ReplayBuffer.add`."""
        cdef OneRow r
        # Without the lock when nobody holds it: everything from the check of `held` to the
        # end of write_one is C code that runs no Python code, so no other thread can run
        # meanwhile -- the GIL excludes them as the lock would.  A holder sets `held` (under the
        # GIL) before it touches the buffer and clears it after, so a writer or sampler that
        # copies without the GIL is never overlapped.  Anything unusual takes the locked path.
        if MF_GIL_SERIALISES and not self.lock.held and self.version[0] == self.seen_version:
            if _parse_one(&r, self.store, obs, action, reward, next_obs, terminated, truncated,
                          task_id, logp) and self.has_room(r.sc.task):
                write_one(&self.st, &r.c)
                return
        self.lock.take()
        try:
            _add_one(self.store, self.state, self.tasks, obs, action, reward, next_obs, terminated,
                     truncated, task_id, logp, self)
        finally:
            self.lock.give()

    def add_batch(self, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0):
        """Append n transitions.  See :meth:`metarl_fast.replay.ReplayBuffer.add_batch`."""
        self.lock.take()
        try:
            return _add_batch(self.store, self.state, self.tasks, obs, action, reward, next_obs,
                              terminated, truncated, task_id, logp)
        finally:
            self.lock.give()

    def sample(self, batch_size, rng, *, task_id=None):
        """A Batch of batch_size transitions.  See :meth:`metarl_fast.replay.ReplayBuffer.sample`."""
        cdef intp_t n
        cdef int64_t size
        cdef int overflow = 0
        n = PyLong_AsLongLongAndOverflow(batch_size, &overflow) if type(batch_size) is int else 0
        if type(rng) is not _Generator:  # an int seed or a SeedSequence seeds a Generator
            rng = _validate.as_generator(rng)
        if overflow or not (1 <= n <= MAX_BATCH) or type(rng) is not _Generator:
            n = _ref.check_sample_args(batch_size, rng)
        self.lock.take()
        try:
            size = self.st.state[S_SIZE]
            if size == 0:
                raise ValueError("cannot sample from an empty replay buffer")
            if task_id is None:
                indices = _sample_indices(size, n, rng, self.store)
            else:
                indices = _sample_task_indices(self.tasks, _ref.check_sample_task(self.tasks, task_id),
                                               n, rng, self.store)
            return tuple.__new__(self.batch_type, _gather(self.store, indices, True) + (indices, None))
        finally:
            self.lock.give()


def end_episode(cnp.ndarray state):
    """Close the open episode.  See :func:`metarl_fast.reference.replay.end_episode`."""
    cdef int64_t* s = <int64_t*> cnp.PyArray_DATA(state)
    if s[S_OPEN_TASK] >= 0:
        s[S_NEXT_EPISODE] += 1
        s[S_OPEN_TASK] = -1


cdef inline bitgen_t* _bitgen(object rng) except NULL:
    if not isinstance(rng, _Generator):
        _validate.check_rng(rng)
    return bitgen_of(rng.bit_generator)


cdef inline int _record_span(object store, const char** base, intp_t* stride) except -1:
    """First field's data and row stride of a record store (for prefetching), or NULL."""
    cdef cnp.ndarray first
    base[0] = NULL
    stride[0] = 0
    if store is not None:
        first = <cnp.ndarray> (<tuple> store)[0]
        base[0] = <const char*> cnp.PyArray_DATA(first)
        stride[0] = cnp.PyArray_STRIDE(first, 0)
    return 0


def sample_indices(int64_t size, intp_t n, rng, store=None):
    """Uniform slots.  See :func:`metarl_fast.reference.replay.sample_indices`.

    With ``store``, each drawn record is prefetched at once, so the memory latency of the later
    gather overlaps the drawing."""
    return _sample_indices(size, n, rng, store)


cdef cnp.ndarray _sample_indices(int64_t size, intp_t n, object rng, object store):
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef bitgen_t* bitgen = _bitgen(rng)
    cdef int64_t* p = <int64_t*> cnp.PyArray_DATA(out)
    cdef const char* base
    cdef intp_t stride, i
    cdef int64_t k
    cdef double dsize = <double> size
    _record_span(store, &base, &stride)
    with rng.bit_generator.lock:
        with nogil:
            if base == NULL:
                uniform_indices(bitgen, size, n, p)
            else:
                for i in range(n):  # uniform_indices, prefetching each record as it is drawn
                    k = <int64_t> (next_uniform(bitgen) * dsize)
                    k = k if k < size else size - 1
                    p[i] = k
                    MF_PREFETCH(base + k * stride)
                    MF_PREFETCH(base + k * stride + stride - 1)
    return out


def sample_task_indices(tasks, int64_t task, intp_t n, rng, store=None):
    """Uniform slots of one task.  See :func:`metarl_fast.reference.replay.sample_task_indices`."""
    return _sample_task_indices(tasks, task, n, rng, store)


cdef cnp.ndarray _sample_task_indices(object tasks, int64_t task, intp_t n, object rng, object store):
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef bitgen_t* bitgen = _bitgen(rng)
    cdef int64_t* p = <int64_t*> cnp.PyArray_DATA(out)
    cdef int64_t* row = <int64_t*> cnp.PyArray_DATA(<cnp.ndarray> tasks.meta) + 4 * task
    cdef int64_t* ring = <int64_t*> row[3]
    cdef int64_t front = row[0], count = row[1], mask = row[2] - 1, k
    cdef double dcount = <double> count
    cdef intp_t i
    with rng.bit_generator.lock:
        with nogil:
            for i in range(n):
                k = <int64_t> (next_uniform(bitgen) * dcount)
                if k >= count:
                    k = count - 1
                p[i] = (front + k) & mask
    cdef const char* base
    cdef intp_t stride
    _record_span(store, &base, &stride)
    with nogil:  # ring positions -> slots, prefetching ahead (a large ring misses the cache)
        for i in range(n):
            if i + PREFETCH_AHEAD < n:
                MF_PREFETCH(ring + p[i + PREFETCH_AHEAD])
            p[i] = ring[p[i]]
            if base != NULL:
                MF_PREFETCH(base + p[i] * stride)
                MF_PREFETCH(base + p[i] * stride + stride - 1)
    return out


def sample_sequence_starts(cnp.ndarray episode_store, cnp.ndarray state, int64_t length, intp_t n, rng):
    """Window starts.  See :func:`metarl_fast.reference.replay.sample_sequence_starts`."""
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef bitgen_t* bitgen = _bitgen(rng)
    cdef int64_t* s = <int64_t*> cnp.PyArray_DATA(state)
    cdef int status
    with rng.bit_generator.lock:
        with nogil:
            status = sequence_starts(<const char*> cnp.PyArray_DATA(episode_store),
                                     cnp.PyArray_STRIDE(episode_store, 0),
                                     cnp.PyArray_DIM(episode_store, 0), s[S_POS], s[S_SIZE],
                                     length, bitgen, n, <int64_t*> cnp.PyArray_DATA(out))
    if status == -2:
        raise MemoryError("metarl_fast: out of memory in sample_sequences")
    if status == -1:
        return None
    return out


def window_indices(cnp.ndarray starts, intp_t length, intp_t capacity):
    """int64 (n, length) window slots.  See :func:`metarl_fast.reference.replay.window_indices`."""
    cdef cnp.npy_intp dims[2]
    cdef intp_t n = cnp.PyArray_DIM(starts, 0), i, t
    cdef int64_t slot
    dims[0] = n
    dims[1] = length
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT64, 0)
    cdef int64_t* o = <int64_t*> cnp.PyArray_DATA(out)
    cdef const int64_t* st = <const int64_t*> cnp.PyArray_DATA(starts)
    with nogil:
        for i in range(n):
            slot = st[i]
            for t in range(length):
                o[i * length + t] = slot
                slot += 1
                if slot == capacity:
                    slot = 0
    return out


def gather(tuple store, cnp.ndarray indices):
    """Copies of every field at ``indices``.  See :func:`metarl_fast.reference.replay.gather`."""
    return _gather(store, indices, True)


cdef tuple _gather(tuple store, cnp.ndarray indices, bint prefetch):
    """prefetch: prefetch records PREFETCH_AHEAD rows ahead while copying.  (Measured: worth it
    even after the draw prefetched every record -- prefetches issued in a burst while drawing
    are partly dropped, and the paced ones refill them.)"""
    cdef cnp.ndarray idx = indices if (cnp.PyArray_TYPE(indices) == cnp.NPY_INT64
                                       and cnp.PyArray_IS_C_CONTIGUOUS(indices)) \
        else np.ascontiguousarray(indices, dtype=np.int64)
    cdef int f, d, nd_idx = cnp.PyArray_NDIM(idx), nd
    cdef cnp.npy_intp dims[32]
    cdef cnp.ndarray field, out
    cdef intp_t n = cnp.PyArray_SIZE(idx)
    cdef const int64_t* ip = <const int64_t*> cnp.PyArray_DATA(idx)
    cdef char* srcs[N_FIELDS]
    cdef char* dsts[N_FIELDS]
    cdef intp_t row_bytes[N_FIELDS]
    cdef intp_t strides[N_FIELDS]
    cdef tuple result = PyTuple_New(N_FIELDS)
    for d in range(nd_idx):
        dims[d] = cnp.PyArray_DIM(idx, d)
    for f in range(N_FIELDS):
        field = <cnp.ndarray> store[f]
        nd = cnp.PyArray_NDIM(field)
        for d in range(1, nd):
            dims[nd_idx + d - 1] = cnp.PyArray_DIM(field, d)
        out = cnp.PyArray_EMPTY(nd_idx + nd - 1, dims,
                                cnp.NPY_INT64 if f == F_TASK else cnp.PyArray_TYPE(field), 0)
        srcs[f] = <char*> cnp.PyArray_DATA(field)
        dsts[f] = <char*> cnp.PyArray_DATA(out)
        row_bytes[f] = cnp.PyArray_ITEMSIZE(field) * (cnp.PyArray_SIZE(field) // cnp.PyArray_DIM(field, 0))
        strides[f] = cnp.PyArray_STRIDE(field, 0)
        Py_INCREF(out)
        PyTuple_SET_ITEM(result, f, out)
    for f in range(1, N_FIELDS):
        if strides[f] != strides[0]:
            break
    else:  # one record per transition: copy record by record
        if n < GIL_FREE_GATHER:
            _gather_records(<const char* const*> srcs, row_bytes, N_FIELDS, strides[0], ip, n, dsts,
                            prefetch, True)
        else:
            with nogil:
                _gather_records(<const char* const*> srcs, row_bytes, N_FIELDS, strides[0], ip, n,
                                dsts, prefetch, True)
        return result
    with nogil:
        for f in range(N_FIELDS):
            if f == F_TASK:
                gather_task_ids(srcs[f], strides[f], ip, n, <int64_t*> dsts[f])
            else:
                gather_rows(srcs[f], row_bytes[f], strides[f], ip, n, dsts[f])
    return result


# Below this many rows a gather keeps the GIL: releasing and re-taking it would cost more.
cdef intp_t GIL_FREE_GATHER = 2048


def tree_set(cnp.ndarray tree_sum, cnp.ndarray tree_min, cnp.ndarray indices, cnp.ndarray values):
    """Set leaves (last wins).  See :func:`metarl_fast.reference.replay.tree_set`."""
    cdef intp_t n_leaves = cnp.PyArray_DIM(tree_sum, 0) // 2, n = cnp.PyArray_DIM(indices, 0)
    cdef double* s = <double*> cnp.PyArray_DATA(tree_sum)
    cdef double* m = <double*> cnp.PyArray_DATA(tree_min)
    cdef cnp.ndarray idx = np.ascontiguousarray(indices, dtype=np.int64)
    cdef cnp.ndarray val = np.ascontiguousarray(values, dtype=np.float64)
    cdef const int64_t* ip = <const int64_t*> cnp.PyArray_DATA(idx)
    cdef const double* vp = <const double*> cnp.PyArray_DATA(val)
    cdef int status
    with nogil:
        status = tree_set_leaves(s, m, n_leaves, ip, vp, n)
    if status == -2:
        raise MemoryError("metarl_fast: out of memory in update_priorities")


def tree_fill(cnp.ndarray tree_sum, cnp.ndarray tree_min, intp_t start, intp_t count,
              intp_t capacity, double value):
    """Leaves start .. start+count-1 (mod capacity) = value.  See the reference."""
    cdef intp_t n_leaves = cnp.PyArray_DIM(tree_sum, 0) // 2, first_n
    cdef double* s = <double*> cnp.PyArray_DATA(tree_sum)
    cdef double* m = <double*> cnp.PyArray_DATA(tree_min)
    if count <= 0:
        return
    first_n = capacity - start if capacity - start < count else count
    with nogil:
        tree_fill_range(s, m, n_leaves, start, start + first_n - 1, value)
        if count > first_n:
            tree_fill_range(s, m, n_leaves, 0, count - first_n - 1, value)


def tree_sample(cnp.ndarray tree_sum, intp_t n, rng):
    """Leaves proportional to their value, and their values.  See
    :func:`metarl_fast.reference.replay.tree_sample`."""
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
    cdef cnp.ndarray values = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
    cdef bitgen_t* bitgen = _bitgen(rng)
    cdef intp_t n_leaves = cnp.PyArray_DIM(tree_sum, 0) // 2, i
    cdef const double* ts = <const double*> cnp.PyArray_DATA(tree_sum)
    cdef const int64_t* op = <const int64_t*> cnp.PyArray_DATA(out)
    cdef double* vp = <double*> cnp.PyArray_DATA(values)
    cdef int status
    with rng.bit_generator.lock:
        with nogil:
            status = tree_sample_leaves(<const double*> cnp.PyArray_DATA(tree_sum),
                                        cnp.PyArray_DIM(tree_sum, 0) // 2, bitgen, n,
                                        <int64_t*> cnp.PyArray_DATA(out))
    if status == -2:
        raise MemoryError("metarl_fast: out of memory in prioritized sampling")
    with nogil:  # the leaves were just read by the descent: cached
        for i in range(n):
            vp[i] = ts[n_leaves + op[i]]
    return out, values
