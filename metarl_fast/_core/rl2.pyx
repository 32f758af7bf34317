"""The fused RL^2 trial rollout with a GRU policy (Cython twin of :mod:`metarl_fast.reference.rl2`).

The GRU input, the draw order, the environment stepping and the outputs are the reference's (see
its docstring); ``rl2_rollout`` validates with the reference's checks before any draw.

One ``nogil`` call runs every trial: the random blocks are drawn first (under the Generator's
lock), then the trials step in lockstep -- per step one GRU step over the B live trials' rows with
the kernels of ``gru_kernels.h`` (``x W_x``, ``h W_h``, the gates in place, the heads: the
arithmetic of ``gru.pyx``, so logits, values and actions equal the reference bit for bit), the
inverse-CDF action draw from ``mf_exp_nonpos`` running sums, and the tabular step of ``envs``.
Finished trials leave the batch (their rows are compacted away).  Scratch is allocated once.
"""
cimport numpy as cnp
from libc.math cimport log
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport random_standard_uniform_fill

from metarl_fast._core.envs cimport (EnvTablesC, KIND_BERNOULLI, KIND_GAUSSIAN, KIND_OUTCOME,
                                     KIND_TRANSITION, fill_tables)
from metarl_fast._core.gru cimport GRUNet, gru_net_init
from metarl_fast._core.mf_exp cimport mf_exp_nonpos
from metarl_fast._core.normal cimport standard_normal_fill
from metarl_fast._core.rng cimport bitgen_of

import numpy as np

from metarl_fast.reference import rl2 as _ref
from metarl_fast.reference.rl2 import RL2Rollout, rl2_input_dim  # noqa: F401

cnp.import_array()

cdef extern from "gru_kernels.h" nogil:
    int MF_GRU_INIT_BIAS
    void mf_gru_gemm(const double* A, intp_t lda, const double* B, intp_t ldb, const double* bias,
                     double* C, intp_t ldc, intp_t M, intp_t K, intp_t N, int mode)
    int mf_gru_all_finite_f64(const double* x, intp_t n)
    void mf_gru_gates(const double* a, const double* g, const double* hp, intp_t n_rows,
                      intp_t H, double* h_out, double* trace)


cdef inline intp_t _count_le(const double* c, intp_t m, double u) noexcept nogil:
    """Inverse CDF on running sums c[0..m): the number of c[0..m-1) that are <= u * c[m-1]."""
    cdef double target = u * c[m - 1]
    cdef intp_t j, k = 0
    for j in range(m - 1):
        k += c[j] <= target
    return k


cdef inline intp_t _start(const EnvTablesC* t, intp_t i, const double* u_start, intp_t q) noexcept nogil:
    """Start state of trial i's episode with flat (trial, episode) index q."""
    if t.stochastic_start:
        return _count_le(t.start_cdf + i * t.n_states, t.n_states, u_start[q])
    return t.start_state[i]


cdef intp_t rl2_trials(const EnvTablesC* t, const GRUNet* net, const double* params,
                       intp_t n_episodes, const double* u_start, const double* u_act,
                       const double* noise, const double* u_next, const double* u_reward,
                       RL2Out* out) noexcept nogil:
    cdef intp_t T = t.n_tasks, S = t.n_states, A = t.n_actions, H = t.horizon, N = n_episodes
    cdef intp_t D = net.input_dim, Hd = net.hidden, cap = N * H
    cdef intp_t K = t.reward_outcomes, Lp = t.trans_stride
    cdef int kind = t.reward_kind
    cdef intp_t n_live = T, k, r, w, i, e, tt, q, s, s2, a, sa, row, slot, n, length
    cdef double m, total, acc, target, reward, u
    cdef bint ends, cut, done
    cdef int64_t* ibuf
    cdef double* dbuf
    cdef int64_t* state
    cdef int64_t* episode
    cdef int64_t* elapsed
    cdef int64_t* prev_action
    cdef int64_t* live
    cdef double* prev_reward
    cdef double* prev_done
    cdef double* x
    cdef double* h
    cdef double* ga
    cdef double* gh
    cdef double* y
    cdef double* ex
    cdef double* xr
    cdef double* yr
    ibuf = <int64_t*> malloc(5 * T * sizeof(int64_t))
    dbuf = <double*> malloc((2 * T + T * (D + Hd + 6 * Hd + A + 1) + A) * sizeof(double))
    if ibuf == NULL or dbuf == NULL:
        free(ibuf)
        free(dbuf)
        return RL2_NO_MEMORY
    state, episode, elapsed, prev_action, live = ibuf, ibuf + T, ibuf + 2 * T, ibuf + 3 * T, ibuf + 4 * T
    prev_reward = dbuf
    prev_done = prev_reward + T
    x = prev_done + T
    h = x + T * D
    ga = h + T * Hd
    gh = ga + 3 * T * Hd
    y = gh + 3 * T * Hd
    ex = y + T * (A + 1)
    for i in range(T):
        state[i] = _start(t, i, u_start, i * N)
        episode[i] = 0
        elapsed[i] = 0
        prev_action[i] = 0
        live[i] = i
        prev_reward[i] = 0.0
        prev_done[i] = 0.0
        out.trial_length[i] = 0
        out.trial_return[i] = 0.0
    memset(h, 0, T * Hd * sizeof(double))  # zero at each trial's start, carried across episodes
    k = 0
    while n_live > 0:
        # the GRU inputs of the live trials' step k
        for r in range(n_live):
            i = live[r]
            xr = x + r * D
            memset(xr, 0, D * sizeof(double))
            xr[state[i]] = 1.0
            if k > 0:
                xr[S + prev_action[i]] = 1.0
            xr[S + A] = prev_reward[i]
            xr[S + A + 1] = prev_done[i]
            memcpy(out.inputs + (k * T + i) * D, xr, D * sizeof(double))
            out.mask[k * T + i] = 1
        # one GRU step over the live rows: gates, new state in place, heads
        mf_gru_gemm(x, D, params + net.wx_off, 3 * Hd, params + net.bx_off, ga, 3 * Hd, n_live, D,
                    3 * Hd, MF_GRU_INIT_BIAS)
        mf_gru_gemm(h, Hd, params + net.wh_off, 3 * Hd, params + net.bh_off, gh, 3 * Hd, n_live,
                    Hd, 3 * Hd, MF_GRU_INIT_BIAS)
        mf_gru_gates(ga, gh, h, n_live, Hd, h, NULL)
        mf_gru_gemm(h, Hd, params + net.wo_off, A + 1, params + net.bo_off, y, A + 1, n_live, Hd,
                    A + 1, MF_GRU_INIT_BIAS)
        if not (mf_gru_all_finite_f64(y, n_live * (A + 1))
                and mf_gru_all_finite_f64(h, n_live * Hd)):
            free(ibuf)
            free(dbuf)
            return RL2_OVERFLOW
        for r in range(n_live):
            i = live[r]
            e = episode[i]
            tt = elapsed[i]
            q = (i * N + e) * H + tt
            # the action: sample_actions' inverse-CDF rule on exp_nonpos(logits - max)
            yr = y + r * (A + 1)
            m = yr[0]
            for a in range(1, A):
                if yr[a] > m:
                    m = yr[a]
            total = 0.0
            for a in range(A):
                ex[a] = mf_exp_nonpos(yr[a] - m)
                total += ex[a]
            target = u_act[q] * total
            acc = 0.0
            a = 0
            for w in range(A - 1):
                acc += ex[w]
                a += acc <= target
            # the environment step (reference/envs.py's rules)
            s = state[i]
            sa = (i * S + s) * A + a
            if t.stochastic_transitions:
                s2 = _count_le(t.trans_cdf_padded + sa * Lp, Lp, u_next[q])
            else:
                s2 = t.next_state[sa]
            if kind == KIND_GAUSSIAN:
                reward = t.reward_mean[sa] + t.reward_std[i] * noise[q]
            elif kind == KIND_BERNOULLI:
                reward = 1.0 if noise[q] < t.reward_mean[sa] else 0.0
            elif kind == KIND_TRANSITION:
                reward = t.reward_next[sa * S + s2]
            elif kind == KIND_OUTCOME:
                row = sa * S + s2
                reward = t.reward_values[row * K + _count_le(t.reward_cdf + row * K, K, u_reward[q])]
            else:
                reward = t.reward_mean[sa]
            ends = t.terminal[i * S + s2] != 0
            cut = (not ends) and tt == H - 1
            done = ends or cut
            slot = i * cap + k
            out.obs[slot] = s
            out.action[slot] = a
            out.reward[slot] = reward
            out.terminated[slot] = ends
            out.truncated[slot] = cut
            out.logp[slot] = (yr[a] - m) - log(total)
            out.value[slot] = yr[A]
            out.episode_id[slot] = e
            out.trial_return[i] += reward
            out.trial_length[i] += 1
            prev_action[i] = a
            prev_reward[i] = reward
            prev_done[i] = 1.0 if done else 0.0
            state[i] = s2
            if done:
                elapsed[i] = 0
                episode[i] = e + 1
                if e + 1 < N:
                    state[i] = _start(t, i, u_start, i * N + e + 1)
            else:
                elapsed[i] = tt + 1
        # finished trials leave the batch (row order = trial order is kept)
        w = 0
        for r in range(n_live):
            i = live[r]
            if episode[i] < N:
                if w != r:
                    live[w] = i
                    memcpy(h + w * Hd, h + r * Hd, Hd * sizeof(double))
                w += 1
        n_live = w
        k += 1
    free(ibuf)
    free(dbuf)
    # pack the trials' slots one after the other (n <= i * cap: moves only towards the front)
    n = 0
    for i in range(T):
        length = out.trial_length[i]
        slot = i * cap
        if n != slot:
            memmove(out.obs + n, out.obs + slot, length * sizeof(int64_t))
            memmove(out.action + n, out.action + slot, length * sizeof(int64_t))
            memmove(out.reward + n, out.reward + slot, length * sizeof(double))
            memmove(out.terminated + n, out.terminated + slot, length * sizeof(uint8_t))
            memmove(out.truncated + n, out.truncated + slot, length * sizeof(uint8_t))
            memmove(out.logp + n, out.logp + slot, length * sizeof(double))
            memmove(out.value + n, out.value + slot, length * sizeof(double))
            memmove(out.episode_id + n, out.episode_id + slot, length * sizeof(int64_t))
        for r in range(length):
            out.trial_id[n + r] = i
        n += length
    return n


cdef intp_t rl2_draw_trials(const EnvTablesC* t, const GRUNet* net, const double* params,
                            intp_t n_episodes, bitgen_t* bitgen, RL2Out* out) noexcept nogil:
    cdef intp_t TN = t.n_tasks * n_episodes, cap = TN * t.horizon, status
    cdef int kind = t.reward_kind
    cdef double* u_start = NULL
    cdef double* u_act = NULL
    cdef double* noise = NULL
    cdef double* u_next = NULL
    cdef double* u_reward = NULL
    cdef bint ok = True
    u_act = <double*> malloc(cap * sizeof(double))
    ok = u_act != NULL
    if t.stochastic_start:
        u_start = <double*> malloc(TN * sizeof(double))
        ok = ok and u_start != NULL
    if kind == KIND_GAUSSIAN or kind == KIND_BERNOULLI:
        noise = <double*> malloc(cap * sizeof(double))
        ok = ok and noise != NULL
    if t.stochastic_transitions:
        u_next = <double*> malloc(cap * sizeof(double))
        ok = ok and u_next != NULL
    if kind == KIND_OUTCOME:
        u_reward = <double*> malloc(cap * sizeof(double))
        ok = ok and u_reward != NULL
    if not ok:
        status = RL2_NO_MEMORY
    else:
        # the reference's order: starts, actions, reward noise, next states, reward outcomes
        if u_start != NULL:
            random_standard_uniform_fill(bitgen, TN, u_start)
        random_standard_uniform_fill(bitgen, cap, u_act)
        if kind == KIND_GAUSSIAN:
            standard_normal_fill(bitgen, cap, noise)
        elif kind == KIND_BERNOULLI:
            random_standard_uniform_fill(bitgen, cap, noise)
        if u_next != NULL:
            random_standard_uniform_fill(bitgen, cap, u_next)
        if u_reward != NULL:
            random_standard_uniform_fill(bitgen, cap, u_reward)
        status = rl2_trials(t, net, params, n_episodes, u_start, u_act, noise, u_next, u_reward,
                            out)
    free(u_start)
    free(u_act)
    free(noise)
    free(u_next)
    free(u_reward)
    return status


cdef inline void* _ptr(cnp.ndarray x):
    return cnp.PyArray_DATA(x)


def rl2_rollout(tables, params, hidden, n_episodes_per_trial, rng):
    """One RL^2 trial per task of ``tables`` with the GRU policy ``params``: an
    :class:`~metarl_fast.reference.rl2.RL2Rollout`.
    See :func:`metarl_fast.reference.rl2.rl2_rollout`."""
    cdef EnvTablesC tc
    cdef GRUNet net
    cdef RL2Out o
    cdef intp_t status, T, N, H, cap
    cdef bitgen_t* bitgen
    cdef const double* pp
    cdef cnp.ndarray p, obs, action, reward, terminated, truncated, logp, value, trial_id
    cdef cnp.ndarray episode_id, trial_length, trial_return, inputs, mask
    params, n_hidden, N, D = _ref.check_rl2_args(tables, params, hidden, n_episodes_per_trial, rng)
    fill_tables(tables, &tc)
    gru_net_init(&net, D, n_hidden, tc.n_actions)
    T, H = tc.n_tasks, tc.horizon
    cap = N * H
    p = params
    obs, action, trial_id, episode_id = (np.empty(T * cap, dtype=np.int64) for _ in range(4))
    reward, logp, value = (np.empty(T * cap) for _ in range(3))
    terminated, truncated = np.empty(T * cap, dtype=bool), np.empty(T * cap, dtype=bool)
    trial_length = np.empty(T, dtype=np.int64)
    trial_return = np.empty(T)
    inputs = np.zeros((cap, T, D))
    mask = np.zeros((cap, T), dtype=bool)
    o.obs, o.action = <int64_t*> _ptr(obs), <int64_t*> _ptr(action)
    o.reward = <double*> _ptr(reward)
    o.terminated, o.truncated = <uint8_t*> _ptr(terminated), <uint8_t*> _ptr(truncated)
    o.logp, o.value = <double*> _ptr(logp), <double*> _ptr(value)
    o.trial_id, o.episode_id = <int64_t*> _ptr(trial_id), <int64_t*> _ptr(episode_id)
    o.trial_length, o.trial_return = <int64_t*> _ptr(trial_length), <double*> _ptr(trial_return)
    o.inputs, o.mask = <double*> _ptr(inputs), <uint8_t*> _ptr(mask)
    pp = <const double*> _ptr(p)
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock, nogil:
        status = rl2_draw_trials(&tc, &net, pp, N, bitgen, &o)
    if status == RL2_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in the RL^2 rollout kernel")
    if status == RL2_OVERFLOW:
        raise FloatingPointError("the GRU's logits, values or hidden states overflow the float64 "
                                 "range (params or inputs too large)")
    n = status
    L = int(trial_length.max())
    resets = np.zeros((L, T), dtype=bool)
    resets[0] = True
    return RL2Rollout(obs[:n], action[:n], reward[:n], terminated[:n], truncated[:n], logp[:n],
                      value[:n], trial_id[:n], episode_id[:n], trial_length, trial_return,
                      inputs[:L], resets, mask[:L])
