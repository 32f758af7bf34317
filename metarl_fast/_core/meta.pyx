"""Policy-gradient estimator kernels of the meta-learners (twin of :mod:`metarl_fast.reference.meta`).

The ``def`` wrappers check shapes, dtypes and index ranges, then run ``nogil`` loops over the flat
batch; see the reference module for the mathematics.
"""
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

ctypedef Py_ssize_t intp_t


def _check(name, arr, dtype, shape):
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or not arr.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {np.dtype(dtype)} array")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")


def _check_index(name, arr, high):
    if arr.size and (arr.min() < 0 or arr.max() >= high):
        raise ValueError(f"{name} out of range [0, {high})")


cdef void _scatter_zero(double* table, intp_t rows, intp_t A) noexcept nogil:
    memset(table, 0, rows * A * sizeof(double))


def pg_prepare(const double[:, ::1] probs_table, const long long[::1] key, const long long[::1] actions,
               const double[::1] rewards, dones, const long long[::1] steps, const long long[::1] task_id,
               Py_ssize_t n_tasks, double gamma, Py_ssize_t n_episodes, int baseline,
               double[:, ::1] probs_out, double[::1] coef_out):
    """Per-step probabilities and REINFORCE coefficients (see the reference): ``baseline`` 0 none,
    1 leave-one-out, 2 mean over the task's episodes (own episode included)."""
    cdef intp_t n = key.shape[0], A = probs_table.shape[1], i, a, slot, horizon = 1
    cdef const unsigned char[::1] done = np.ascontiguousarray(dones, dtype=np.uint8)
    if done.shape[0] != n or actions.shape[0] != n or rewards.shape[0] != n or steps.shape[0] != n \
            or task_id.shape[0] != n or coef_out.shape[0] != n or probs_out.shape[0] != n \
            or probs_out.shape[1] != A:
        raise ValueError("pg_prepare: every per-step array must have the same length")
    _check_index("key", np.asarray(key), probs_table.shape[0])
    _check_index("task_id", np.asarray(task_id), n_tasks)
    if n:
        horizon = int(np.asarray(steps).max()) + 1
        _check_index("steps", np.asarray(steps), horizon)
    cdef double[::1] sums = np.zeros(n_tasks * horizon)
    cdef double[::1] counts = np.zeros(n_tasks * horizon)
    cdef double[::1] returns = np.empty(n)
    cdef double running = 0.0, disc, b, others
    if baseline not in (0, 1, 2):
        raise ValueError(f"baseline must be 0 (none), 1 (leave-one-out) or 2 (mean), got {baseline}")
    with nogil:
        for i in range(n - 1, -1, -1):
            running = rewards[i] + (0.0 if done[i] else gamma * running)
            returns[i] = running
            slot = task_id[i] * horizon + steps[i]
            sums[slot] += running
            counts[slot] += 1.0
        for i in range(n):
            for a in range(A):
                probs_out[i, a] = probs_table[key[i], a]
            slot = task_id[i] * horizon + steps[i]
            disc = gamma ** steps[i]
            if baseline == 1:
                others = counts[slot] - 1.0
                b = (sums[slot] - returns[i]) / others if others > 0 else 0.0
            elif baseline == 2:
                b = sums[slot] / counts[slot]
            else:
                b = 0.0
            coef_out[i] = disc * (returns[i] - b) / n_episodes


def score_table(const long long[::1] key, const long long[::1] actions, const double[:, ::1] probs,
                const double[::1] coef, double[:, ::1] table_out):
    """``table_out[key_i] += coef_i (onehot(a_i) - probs_i)`` after zeroing ``table_out``."""
    cdef intp_t n = key.shape[0], A = probs.shape[1], rows = table_out.shape[0], i, a
    cdef double c
    if actions.shape[0] != n or probs.shape[0] != n or coef.shape[0] != n or table_out.shape[1] != A:
        raise ValueError("score_table: inconsistent shapes")
    _check_index("key", np.asarray(key), rows)
    _check_index("actions", np.asarray(actions), A)
    with nogil:
        _scatter_zero(&table_out[0, 0], rows, A)
        for i in range(n):
            c = coef[i]
            for a in range(A):
                table_out[key[i], a] -= c * probs[i, a]
            table_out[key[i], actions[i]] += c


def hvp_table(const long long[::1] key, const long long[::1] actions, const double[:, ::1] probs,
              const double[::1] coef, const long long[::1] episode, Py_ssize_t n_tasks,
              Py_ssize_t n_episodes, const double[:, ::1] dl_table, double[:, ::1] table_out):
    """Hessian-vector product of the REINFORCE surrogate incl. the score-function term."""
    cdef intp_t n = key.shape[0], A = probs.shape[1], rows = table_out.shape[0], i, a, t, e
    cdef intp_t n_eps_total = n_tasks * n_episodes
    cdef double c, pd, dlogp, k, total
    cdef const double* p
    cdef const double* dl
    if actions.shape[0] != n or probs.shape[0] != n or coef.shape[0] != n or episode.shape[0] != n \
            or table_out.shape[1] != A or dl_table.shape[1] != A or dl_table.shape[0] != rows:
        raise ValueError("hvp_table: inconsistent shapes")
    _check_index("key", np.asarray(key), rows)
    _check_index("actions", np.asarray(actions), A)
    _check_index("episode", np.asarray(episode), n_eps_total)
    cdef double[::1] fv = np.zeros(n_eps_total)
    cdef double[::1] step_dlogp = np.empty(n)
    with nogil:
        _scatter_zero(&table_out[0, 0], rows, A)
        # (1) Hessian of the surrogate; remember d log pi(a_i) for the score term
        for i in range(n):
            p = &probs[i, 0]
            dl = &dl_table[key[i], 0]
            pd = 0.0
            for a in range(A):
                pd += p[a] * dl[a]
            dlogp = dl[actions[i]] - pd
            step_dlogp[i] = dlogp
            c = coef[i]
            for a in range(A):
                table_out[key[i], a] -= c * (p[a] * dl[a] - p[a] * pd)
            fv[episode[i]] += n_episodes * c * dlogp
        # (2) score-function term with a leave-one-out control variate per task
        for t in range(n_tasks):
            total = 0.0
            for e in range(n_episodes):
                total += fv[t * n_episodes + e]
            for e in range(n_episodes):
                if n_episodes > 1:
                    fv[t * n_episodes + e] = fv[t * n_episodes + e] - (total - fv[t * n_episodes + e]) / (n_episodes - 1)
        for i in range(n):
            k = fv[episode[i]] / n_episodes
            p = &probs[i, 0]
            for a in range(A):
                table_out[key[i], a] -= k * p[a]
            table_out[key[i], actions[i]] += k
