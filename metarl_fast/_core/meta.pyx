"""Policy-gradient estimator kernels of the meta-learners (twin of :mod:`metarl_fast.reference.meta`).

The ``def`` wrappers check shapes, dtypes and index ranges, then run ``nogil`` loops over the flat
batch; see the reference module for the mathematics.
"""
from libc.stdlib cimport free, malloc
from libc.math cimport pow
from libc.string cimport memset

import numpy as np

ctypedef Py_ssize_t intp_t


def _check(name, arr, dtype, shape):
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or not arr.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {np.dtype(dtype)} array")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")


cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    /* 1 if every a[i] is in [0, high): one unsigned comparison each, vectorised on AVX2. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    __attribute__((target_clones("avx2", "default")))
    #endif
    static int mf_meta_all_below(const int64_t *a, ptrdiff_t n, uint64_t high)
    {
        uint64_t bad = 0;
        for (ptrdiff_t i = 0; i < n; i++) bad |= (uint64_t)((uint64_t)a[i] >= high);
        return bad == 0;
    }
    """
    int mf_meta_all_below(const long long* a, Py_ssize_t n, unsigned long long high) nogil


cdef bint _below(const long long[::1] arr, intp_t high) noexcept nogil:
    """Every entry in [0, high)."""
    if arr.shape[0] == 0:
        return True
    return mf_meta_all_below(&arr[0], arr.shape[0], <unsigned long long> high) != 0


def _check_index(name, const long long[::1] arr, high):
    if high < 0 or not _below(arr, high):
        raise ValueError(f"{name} out of range [0, {high})")


cdef inline object _as_uint8(object dones):
    """A bool or uint8 flag array as uint8 without a copy where the layout allows."""
    if isinstance(dones, np.ndarray) and dones.dtype == np.bool_ and dones.flags.c_contiguous:
        return dones.view(np.uint8)
    return np.ascontiguousarray(dones, dtype=np.uint8)


cdef void _scatter_zero(double* table, intp_t rows, intp_t A) noexcept nogil:
    memset(table, 0, rows * A * sizeof(double))


def pg_prepare(const long long[::1] key, const double[::1] rewards, dones, const long long[::1] steps,
               const long long[::1] task_id, Py_ssize_t n_tasks, double gamma, Py_ssize_t n_episodes,
               int baseline, double[::1] coef_out):
    """Per-step REINFORCE coefficients (see the reference): ``baseline`` 0 none, 1 leave-one-out,
    2 mean over the task's episodes (own episode included)."""
    cdef intp_t n = key.shape[0], i, slot, horizon = 1
    cdef const unsigned char[::1] done = _as_uint8(dones)
    cdef long long most = 0
    if done.shape[0] != n or rewards.shape[0] != n or steps.shape[0] != n \
            or task_id.shape[0] != n or coef_out.shape[0] != n:
        raise ValueError("pg_prepare: every per-step array must have the same length")
    _check_index("task_id", task_id, n_tasks)
    if n:
        for i in range(n):
            if steps[i] > most:
                most = steps[i]
        horizon = most + 1
        _check_index("steps", steps, horizon)
    cdef double[::1] weight = np.empty(horizon)  # gamma^t / N per time step t
    cdef double[::1] sums = np.zeros(n_tasks * horizon)
    cdef double[::1] counts = np.zeros(n_tasks * horizon)
    cdef double[::1] scale = np.empty(n_tasks * horizon)
    cdef double[::1] shift = np.empty(n_tasks * horizon)
    cdef double[::1] returns = np.empty(n)
    cdef double running = 0.0, c
    if baseline not in (0, 1, 2):
        raise ValueError(f"baseline must be 0 (none), 1 (leave-one-out) or 2 (mean), got {baseline}")
    with nogil:
        for i in range(horizon):
            weight[i] = pow(gamma, <double> i) / n_episodes
        # returns-to-go, scanned backwards (gamma = 1: the same sums without the multiply)
        if gamma == 1.0:
            for i in range(n - 1, -1, -1):
                running = rewards[i] + (0.0 if done[i] else running)
                returns[i] = running
        else:
            for i in range(n - 1, -1, -1):
                running = rewards[i] + (0.0 if done[i] else gamma * running)
                returns[i] = running
        for i in range(n):
            slot = task_id[i] * horizon + steps[i]
            sums[slot] += returns[i]
            counts[slot] += 1.0
        # per (task, step) slot: G - b = scale * G - shift for every step in it
        for slot in range(n_tasks * horizon):
            c = counts[slot]
            if baseline == 1 and c > 1.0:    # b = (sum - G) / (c - 1)
                scale[slot] = c / (c - 1.0)
                shift[slot] = sums[slot] / (c - 1.0)
            elif baseline == 2 and c > 0.0:  # b = sum / c
                scale[slot] = 1.0
                shift[slot] = sums[slot] / c
            else:
                scale[slot] = 1.0
                shift[slot] = 0.0
        for i in range(n):
            slot = task_id[i] * horizon + steps[i]
            coef_out[i] = weight[steps[i]] * (scale[slot] * returns[i] - shift[slot])


cdef inline double _row_sum(const double* x, intp_t A) noexcept nogil:
    """Sum in action order (the reference's ``np.cumsum(..., axis=1)[:, -1]``)."""
    cdef double total = x[0]
    cdef intp_t a
    for a in range(1, A):
        total = total + x[a]
    return total


def _check_tables(name, probs_table, table_out, n, others):
    if probs_table.shape[0] != table_out.shape[0] or probs_table.shape[1] != table_out.shape[1]:
        raise ValueError(f"{name}: probs_table and table_out must have the same shape")
    if any(length != n for length in others):
        raise ValueError(f"{name}: every per-step array must have the same length")


def score_table(const long long[::1] key, const long long[::1] actions,
                const double[:, ::1] probs_table, const double[::1] coef, double[:, ::1] table_out):
    """``table_out[k] = sum_{i: key_i = k} coef_i (onehot(a_i) - probs_table[k])``: the one-hots
    scattered step by step, the softmax term once per row (``(sum_i coef_i) probs_table[k]``, the
    sum read off the row's cells)."""
    cdef intp_t n = key.shape[0], A = table_out.shape[1], rows = table_out.shape[0], i, a, k
    cdef double total
    cdef double* t
    _check_tables("score_table", probs_table, table_out, n, (actions.shape[0], coef.shape[0]))
    _check_index("key", key, rows)
    _check_index("actions", actions, A)
    with nogil:
        _scatter_zero(&table_out[0, 0], rows, A)
        for i in range(n):
            table_out[key[i], actions[i]] += coef[i]
        if A:
            for k in range(rows):
                t = &table_out[k, 0]
                total = _row_sum(t, A)
                for a in range(A):
                    t[a] = t[a] - total * probs_table[k, a]


def hvp_table(const long long[::1] key, const long long[::1] actions,
              const double[:, ::1] probs_table, const double[::1] coef,
              const long long[::1] episode, Py_ssize_t n_tasks, Py_ssize_t n_episodes,
              const double[:, ::1] dl_table, double[:, ::1] table_out):
    """Hessian-vector product of the REINFORCE surrogate incl. the score-function term, per row:
    see the reference for the formula."""
    cdef intp_t n = key.shape[0], A = table_out.shape[1], rows = table_out.shape[0], i, a, k, t, e
    cdef intp_t n_eps_total = n_tasks * n_episodes
    cdef double c, pd, dlogp, kap, total, p
    cdef double* out
    _check_tables("hvp_table", probs_table, table_out, n,
                  (actions.shape[0], coef.shape[0], episode.shape[0]))
    if dl_table.shape[0] != rows or dl_table.shape[1] != A:
        raise ValueError("hvp_table: dl_table and table_out must have the same shape")
    _check_index("key", key, rows)
    _check_index("actions", actions, A)
    _check_index("episode", episode, n_eps_total)
    if A == 0:
        return
    cdef double[::1] fv = np.zeros(n_eps_total)
    cdef double[::1] pdot = np.empty(rows)
    cdef double[::1] coef_sum = np.zeros(rows)
    cdef double[::1] scratch = np.empty(A)
    with nogil:
        _scatter_zero(&table_out[0, 0], rows, A)
        # (1) per row: pi . dl
        for k in range(rows):
            for a in range(A):
                scratch[a] = probs_table[k, a] * dl_table[k, a]
            pdot[k] = _row_sum(&scratch[0], A)
        # (2) per step: d log pi(a_i) . dl into its episode's score weight; coefficients per row
        for i in range(n):
            k = key[i]
            dlogp = dl_table[k, actions[i]] - pdot[k]
            c = coef[i]
            fv[episode[i]] += n_episodes * c * dlogp
            coef_sum[k] += c
        # (3) score-function term with a leave-one-out control variate per task
        for t in range(n_tasks):
            total = 0.0
            for e in range(n_episodes):
                total += fv[t * n_episodes + e]
            for e in range(n_episodes):
                if n_episodes > 1:
                    fv[t * n_episodes + e] = fv[t * n_episodes + e] - (total - fv[t * n_episodes + e]) / (n_episodes - 1)
        for i in range(n):
            table_out[key[i], actions[i]] += fv[episode[i]] / n_episodes
        # (4) per row: the score's softmax term and the surrogate's Hessian
        for k in range(rows):
            out = &table_out[k, 0]
            kap = _row_sum(out, A)
            c = coef_sum[k]
            pd = pdot[k]
            for a in range(A):
                p = probs_table[k, a]
                out[a] = (out[a] - kap * p) - c * (p * dl_table[k, a] - p * pd)
