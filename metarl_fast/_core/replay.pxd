# Replay-buffer kernels, for other Cython code to cimport:
#
#     from metarl_fast._core.replay cimport Storage, Columns, write_rows, gather_rows
#
# All are noexcept nogil and trust their input (see metarl_fast/reference/replay.py for the
# storage layout and the exact semantics they share with the NumPy reference).  Functions that
# draw random numbers need the caller to hold the BitGenerator's lock; they draw exactly the
# uniforms the reference draws with ``rng.random()``, in the same order.
from libc.stdint cimport int32_t, int64_t
cimport numpy as cnp
from cpython.pythread cimport PyThread_type_lock
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    N_FIELDS = 9

# The buffer: 9 fields (FIELDS order) of `capacity` rows of `row_bytes[f]` bytes each, row i of
# field f at field[f] + i * stride[f].  Rows are records holding all fields (array of structs), so
# every stride[f] equals the record size (write_rows relies on it).  `state` is the int64
# [pos, size, next_episode, open_task, n_added] and `task_meta` the task index table
# (n_tasks rows of int64 [front, count, ring capacity, ring address]).
cdef struct Storage:
    char* field[N_FIELDS]
    intp_t row_bytes[N_FIELDS]
    intp_t stride[N_FIELDS]
    intp_t capacity
    int64_t* state
    int64_t* task_meta
    intp_t n_tasks

# Validated input rows.  obs/action/reward/next_obs are dense (n rows of the storage row size);
# done/truncated (bool), task (int32 or int64, see task_is64) and logp have a byte stride
# (0 broadcasts one value to every row).
cdef struct Columns:
    const char* obs
    const char* action
    const char* reward
    const char* next_obs
    const char* done
    const char* truncated
    const char* task
    const char* logp
    intp_t done_stride
    intp_t truncated_stride
    intp_t task_stride
    intp_t logp_stride
    bint task_is64
    intp_t n

# Append the rows (FIFO ring write: one pass over the records, wrapping once; episode ids; task rings).
# Every task ring must already hold count + (rows of that task) entries.
cdef void write_rows(Storage* st, const Columns* cols) noexcept nogil
# dst row i (dense) = src row idx[i] (rows of row_bytes bytes, src_stride bytes apart).
cdef void gather_rows(const char* src, intp_t row_bytes, intp_t src_stride, const int64_t* idx,
                      intp_t n, char* dst) noexcept nogil
cdef void uniform_indices(bitgen_t* bitgen, int64_t size, intp_t n, int64_t* out) noexcept nogil
# Returns 0, or -1 if no valid window exists; -2 out of memory.
cdef int sequence_starts(const char* episode, intp_t episode_stride, intp_t capacity, int64_t pos, int64_t size,
                         int64_t length, bitgen_t* bitgen, intp_t n, int64_t* out) noexcept nogil
cdef void tree_set_leaf(double* tree_sum, double* tree_min, intp_t n_leaves, intp_t leaf,
                        double value) noexcept nogil
# Leaves `leaves[i]` = values[i] in order (the last repeated one wins); returns 0 or -2 (no memory).
cdef int tree_set_leaves(double* tree_sum, double* tree_min, intp_t n_leaves, const int64_t* leaves,
                         const double* values, intp_t n) noexcept nogil
cdef void tree_fill_range(double* tree_sum, double* tree_min, intp_t n_leaves, intp_t first,
                          intp_t last, double value) noexcept nogil
# n leaves drawn proportionally to their value (n uniforms first, in order); 0 or -2 (no memory).
cdef int tree_sample_leaves(const double* tree_sum, intp_t n_leaves, bitgen_t* bitgen, intp_t n,
                            int64_t* out) noexcept nogil
# Record-by-record gather when every field has the same row stride (the record size).
cdef void gather_records(const char* const* srcs, const intp_t* row_bytes, intp_t n_fields,
                         intp_t stride, const int64_t* idx, intp_t n, char* const* dsts,
                         bint prefetch=*) noexcept nogil


cdef class BufferLock:
    cdef PyThread_type_lock handle
    cdef bint held
    cdef int take(self) except -1
    cdef void give(self) noexcept


cdef class CompiledBuffer:
    cdef tuple store
    cdef cnp.ndarray state
    cdef object tasks
    cdef readonly BufferLock lock
    cdef Storage st
    cdef object meta
    cdef object version_array  # TaskIndex.version: bumped whenever its meta table is replaced
    cdef int64_t* version
    cdef int64_t seen_version
    cdef type batch_type
    cdef bint has_room(self, int64_t t) noexcept nogil
    cdef int commit_one(self, const Columns* c) except -1
