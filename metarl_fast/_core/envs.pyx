"""Tabular environment stepping and fused rollouts (Cython twin of :mod:`metarl_fast.reference.envs`).

The ``def`` functions validate with the shared checks of the reference module, draw random
numbers in the documented order (bulk fills from the Generator's own BitGenerator, equal to
``rng.random(n)`` / ``rng.standard_normal(n)``) and run the ``nogil`` kernels of ``envs.pxd``.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport (random_standard_normal_fill,
                                           random_standard_uniform_fill)

from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast.reference.envs import (check_rollout_args, check_step_args, check_tables,
                                        check_vec_args)

cnp.import_array()

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define MF_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
    #else
    #define MF_PREFETCH(p) ((void)0)
    #endif
    """
    void MF_PREFETCH(const void* p) noexcept nogil


cdef inline const double* _dptr(cnp.ndarray a):
    return <const double*> cnp.PyArray_DATA(a)


cdef inline const int64_t* _iptr(cnp.ndarray a):
    return <const int64_t*> cnp.PyArray_DATA(a)


cdef int fill_tables(object tables, EnvTablesC* out) except -1:
    out.n_tasks = tables.n_tasks
    out.n_states = tables.n_states
    out.n_actions = tables.n_actions
    out.horizon = tables.horizon
    out.trans_cdf = _dptr(tables.trans_cdf)
    out.trans_cdf_padded = _dptr(tables.trans_cdf_padded)
    out.trans_stride = tables.trans_cdf_padded.shape[3]
    out.has_terminal = 1 if tables.has_terminal else 0
    out.next_state = _iptr(tables.next_state)
    out.stochastic_transitions = 1 if tables.stochastic_transitions else 0
    out.reward_mean = _dptr(tables.reward_mean)
    out.reward_kind = tables.reward_kind
    out.reward_std = _dptr(tables.reward_std)
    out.reward_next = _dptr(tables.reward_next)
    out.start_cdf = _dptr(tables.start_cdf)
    out.start_state = _iptr(tables.start_state)
    out.stochastic_start = 1 if tables.stochastic_start else 0
    out.terminal = <const uint8_t*> cnp.PyArray_DATA(tables.terminal)
    return 0


cdef inline intp_t inverse_cdf(const double* cdf, intp_t m, double u) noexcept nogil:
    """Number of entries of the running sum cdf[0..m) that are <= u * cdf[m-1].

    Equals the first j with u * cdf[m-1] < cdf[j]; cdf[m-1] itself never counts (u < 1, total
    > 0), so only m - 1 entries are compared.  Branch-free: no mispredicted jumps on random u.
    """
    cdef double target = u * cdf[m - 1]
    cdef intp_t j, k = 0
    for j in range(m - 1):
        k += cdf[j] <= target
    return k


cdef inline intp_t count_le(const double* c, intp_t padded_len, double target) noexcept nogil:
    """Number of entries of a +inf-padded row (length a multiple of 4) that are <= target.

    Blocks of four independent compares: short, branch-free and free of a loop-carried chain.
    """
    cdef intp_t j, k = 0
    for j in range(0, padded_len, 4):
        k += ((c[j] <= target) + (c[j + 1] <= target)) + ((c[j + 2] <= target) + (c[j + 3] <= target))
    return k


cdef inline void prefetch_range(const void* p, intp_t n_bytes) noexcept nogil:
    cdef intp_t off
    for off in range(0, n_bytes, 64):
        MF_PREFETCH(<const char*> p + off)


cdef inline void prefetch_task(const EnvTablesC* t, intp_t i) noexcept nogil:
    """Ask for task i's tables before they are needed: each task's rows are read in a random
    order that hardware prefetchers cannot follow, and 1024 tasks' tables do not fit in cache."""
    cdef intp_t SA = t.n_states * t.n_actions
    if i >= t.n_tasks:
        return
    if t.stochastic_transitions:
        prefetch_range(t.trans_cdf_padded + i * SA * t.trans_stride, SA * t.trans_stride * sizeof(double))
    else:
        prefetch_range(t.next_state + i * SA, SA * sizeof(int64_t))
    prefetch_range(t.reward_mean + i * SA, SA * sizeof(double))


cdef inline intp_t first_state(const EnvTablesC* t, intp_t i, const double* u_start, intp_t q) noexcept nogil:
    if t.stochastic_start:
        return inverse_cdf(t.start_cdf + i * t.n_states, t.n_states, u_start[q])
    return t.start_state[i]


cdef intp_t rollout_kernel(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                           const double* action_logp, const int64_t* policy_of_task,
                           intp_t n_episodes, const double* u_start, const double* u_act,
                           const double* noise, const double* u_next, RolloutOut* out) noexcept nogil:
    cdef intp_t q0 = 0
    if not t.has_terminal:
        q0 = rollout_fixed_length(t, action_cdf, action_stride, action_logp, policy_of_task,
                                  n_episodes, u_start, u_act, noise, u_next, out)
    return rollout_general(t, action_cdf, action_stride, action_logp, policy_of_task, n_episodes,
                           q0, u_start, u_act, noise, u_next, out)


cdef intp_t rollout_general(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                            const double* action_logp, const int64_t* policy_of_task,
                            intp_t N, intp_t q0, const double* u_start, const double* u_act,
                            const double* noise, const double* u_next, RolloutOut* out) noexcept nogil:
    """Episodes q0 .. T*N-1 one after the other (any episode lengths); returns the total steps."""
    cdef intp_t T = t.n_tasks, H = t.horizon
    cdef intp_t S = t.n_states, A = t.n_actions, Lp = t.trans_stride
    cdef intp_t SA = S * A
    cdef int kind = t.reward_kind
    cdef bint stoch = t.stochastic_transitions
    cdef intp_t i, e, q, step, k, base, s, s2, a, sa
    cdef const double* acdf
    cdef const double* alogp
    cdef const double* tcdf
    cdef const int64_t* nstate
    cdef const double* rmean
    cdef const double* rnext
    cdef const uint8_t* term
    cdef const double* row
    cdef double std, r, ret
    cdef bint ended
    cdef int64_t* o_obs = out.obs
    cdef int64_t* o_act = out.action
    cdef double* o_rew = out.reward
    cdef int64_t* o_next = out.next_obs
    cdef uint8_t* o_term = out.terminated
    cdef uint8_t* o_trunc = out.truncated
    cdef double* o_logp = out.logp
    cdef int64_t* o_task = out.task_id
    k = q0 * H  # episodes before q0 all had H steps
    for q in range(q0, T * N):
        i = q // N
        e = q - i * N
        if e == 0 or q == q0:
            prefetch_task(t, i + 1)
        acdf = action_cdf + policy_of_task[i] * S * Ap
        alogp = action_logp + policy_of_task[i] * SA
        tcdf = t.trans_cdf_padded + i * SA * Lp
        nstate = t.next_state + i * SA
        rmean = t.reward_mean + i * SA
        rnext = t.reward_next + i * SA * S
        term = t.terminal + i * S
        std = t.reward_std[i]
        base = q * H
        s = first_state(t, i, u_start, q)
        ret = 0.0
        ended = False
        step = 0
        while step < H:
            row = acdf + s * Ap
            a = count_le(row, Ap, u_act[base + step] * row[A - 1])
            sa = s * A + a
            if kind == KIND_GAUSSIAN:
                r = rmean[sa] + std * noise[base + step]
            elif kind == KIND_BERNOULLI:
                r = 1.0 if noise[base + step] < rmean[sa] else 0.0
            else:
                r = rmean[sa]
            if stoch:
                row = tcdf + sa * Lp
                s2 = count_le(row, Lp, u_next[base + step] * row[S - 1])
            else:
                s2 = nstate[sa]
            if kind == KIND_TRANSITION:
                r = rnext[sa * S + s2]
            ended = term[s2] != 0
            o_obs[k] = s
            o_act[k] = a
            o_rew[k] = r
            o_next[k] = s2
            o_term[k] = ended
            o_trunc[k] = 0
            o_logp[k] = alogp[sa]
            o_task[k] = i
            ret += r
            k += 1
            step += 1
            s = s2
            if ended:
                break
        if not ended:
            o_trunc[k - 1] = 1
        out.episode_length[q] = step
        out.episode_return[q] = ret
    return k


cdef enum:
    GROUP = 4


cdef intp_t rollout_fixed_length(const EnvTablesC* t, const double* action_cdf, intp_t Ap,
                                 const double* action_logp, const int64_t* policy_of_task,
                                 intp_t N, const double* u_start, const double* u_act,
                                 const double* noise, const double* u_next, RolloutOut* out) noexcept nogil:
    """Without terminal states every episode has H steps, so GROUP episodes advance in lockstep:
    their serial chains (state -> action -> next state) interleave and hide each other's
    latencies.  Step k of episode q is written at q * H + k, as in rollout_general.  Returns the
    number of episodes done (a multiple of GROUP); the rest go to rollout_general."""
    cdef intp_t T = t.n_tasks, H = t.horizon, Q = t.n_tasks * N
    cdef intp_t S = t.n_states, A = t.n_actions, Lp = t.trans_stride
    cdef intp_t SA = S * A
    cdef int kind = t.reward_kind
    cdef bint stoch = t.stochastic_transitions
    cdef intp_t q, g, i, step, k, a, sa, s2, last_prefetched = 0
    cdef intp_t s[GROUP]
    cdef intp_t task[GROUP]
    cdef const double* acdf[GROUP]
    cdef const double* alogp[GROUP]
    cdef const double* tcdf[GROUP]
    cdef const int64_t* nstate[GROUP]
    cdef const double* rmean[GROUP]
    cdef const double* rnext[GROUP]
    cdef double std[GROUP]
    cdef double ret[GROUP]
    cdef const double* row
    cdef double r
    cdef int64_t* o_obs = out.obs
    cdef int64_t* o_act = out.action
    cdef double* o_rew = out.reward
    cdef int64_t* o_next = out.next_obs
    cdef uint8_t* o_term = out.terminated
    cdef uint8_t* o_trunc = out.truncated
    cdef double* o_logp = out.logp
    cdef int64_t* o_task = out.task_id
    prefetch_task(t, 0)
    q = 0
    while q + GROUP <= Q:
        for g in range(GROUP):
            i = (q + g) // N
            task[g] = i
            acdf[g] = action_cdf + policy_of_task[i] * S * Ap
            alogp[g] = action_logp + policy_of_task[i] * SA
            tcdf[g] = t.trans_cdf_padded + i * SA * Lp
            nstate[g] = t.next_state + i * SA
            rmean[g] = t.reward_mean + i * SA
            rnext[g] = t.reward_next + i * SA * S
            std[g] = t.reward_std[i]
            s[g] = first_state(t, i, u_start, q + g)
            ret[g] = 0.0
        while last_prefetched <= task[GROUP - 1] + 1 and last_prefetched < T:
            last_prefetched += 1
            prefetch_task(t, last_prefetched)
        for step in range(H):
            for g in range(GROUP):
                k = (q + g) * H + step
                row = acdf[g] + s[g] * Ap
                a = count_le(row, Ap, u_act[k] * row[A - 1])
                sa = s[g] * A + a
                if kind == KIND_GAUSSIAN:
                    r = rmean[g][sa] + std[g] * noise[k]
                elif kind == KIND_BERNOULLI:
                    r = 1.0 if noise[k] < rmean[g][sa] else 0.0
                else:
                    r = rmean[g][sa]
                if stoch:
                    row = tcdf[g] + sa * Lp
                    s2 = count_le(row, Lp, u_next[k] * row[S - 1])
                else:
                    s2 = nstate[g][sa]
                if kind == KIND_TRANSITION:
                    r = rnext[g][sa * S + s2]
                o_obs[k] = s[g]
                o_act[k] = a
                o_rew[k] = r
                o_next[k] = s2
                o_term[k] = 0
                o_trunc[k] = step == H - 1
                o_logp[k] = alogp[g][sa]
                o_task[k] = task[g]
                ret[g] += r
                s[g] = s2
        for g in range(GROUP):
            out.episode_length[q + g] = H
            out.episode_return[q + g] = ret[g]
        q += GROUP
    return q


cdef void vec_reset_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                           int64_t* elapsed, intp_t n, bitgen_t* bitgen) noexcept nogil:
    cdef intp_t j
    for j in range(n):
        if t.stochastic_start:
            state[j] = inverse_cdf(t.start_cdf + task_of_env[j] * t.n_states, t.n_states,
                                   next_uniform(bitgen))
        else:
            state[j] = t.start_state[task_of_env[j]]
        elapsed[j] = 0


cdef intp_t vec_step_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                            int64_t* elapsed, const int64_t* actions, intp_t n, bitgen_t* bitgen,
                            double* scratch, int64_t* obs_out, double* reward_out,
                            uint8_t* terminated_out, uint8_t* truncated_out,
                            int64_t* final_obs_out) noexcept nogil:
    cdef intp_t S = t.n_states, A = t.n_actions
    cdef intp_t j, i, s, a, sa, s2
    cdef int kind = t.reward_kind
    cdef double r
    cdef bint ended, trunc
    # Draw order: reward noise block, next-state block, then one start draw per ended episode.
    if kind == KIND_GAUSSIAN:
        random_standard_normal_fill(bitgen, n, reward_out)
    elif kind == KIND_BERNOULLI:
        random_standard_uniform_fill(bitgen, n, reward_out)
    if t.stochastic_transitions:
        random_standard_uniform_fill(bitgen, n, scratch)
    for j in range(n):
        i = task_of_env[j]
        s = state[j]
        a = actions[j]
        sa = (i * S + s) * A + a
        if kind == KIND_GAUSSIAN:
            r = t.reward_mean[sa] + t.reward_std[i] * reward_out[j]
        elif kind == KIND_BERNOULLI:
            r = 1.0 if reward_out[j] < t.reward_mean[sa] else 0.0
        else:
            r = t.reward_mean[sa]
        if t.stochastic_transitions:
            s2 = inverse_cdf(t.trans_cdf + sa * S, S, scratch[j])
        else:
            s2 = t.next_state[sa]
        if kind == KIND_TRANSITION:
            r = t.reward_next[sa * S + s2]
        ended = t.terminal[i * S + s2] != 0
        trunc = (not ended) and elapsed[j] + 1 >= t.horizon
        reward_out[j] = r
        terminated_out[j] = ended
        truncated_out[j] = trunc
        final_obs_out[j] = s2
        state[j] = s2
        elapsed[j] += 1
    for j in range(n):
        if terminated_out[j] or truncated_out[j]:
            i = task_of_env[j]
            if t.stochastic_start:
                state[j] = inverse_cdf(t.start_cdf + i * S, S, next_uniform(bitgen))
            else:
                state[j] = t.start_state[i]
            elapsed[j] = 0
        obs_out[j] = state[j]
    return ENVS_OK


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

cdef inline cnp.ndarray _empty(intp_t n, int typenum):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typenum, 0)


def rollout(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng):
    """Fused rollout.  See :func:`metarl_fast.reference.envs.rollout`."""
    cdef intp_t N = check_rollout_args(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef intp_t T = t.n_tasks, H = t.horizon, cap = T * N * H, n_steps
    cdef cnp.ndarray u_start = _empty(T * N if t.stochastic_start else 0, cnp.NPY_DOUBLE)
    cdef cnp.ndarray u_act = _empty(cap, cnp.NPY_DOUBLE)
    cdef bint has_noise = t.reward_kind == KIND_GAUSSIAN or t.reward_kind == KIND_BERNOULLI
    cdef cnp.ndarray noise = _empty(cap if has_noise else 0, cnp.NPY_DOUBLE)
    cdef cnp.ndarray u_next = _empty(cap if t.stochastic_transitions else 0, cnp.NPY_DOUBLE)
    cdef RolloutOut out
    cdef dict res = {}
    for name, typenum in (("obs", cnp.NPY_INT64), ("action", cnp.NPY_INT64),
                          ("reward", cnp.NPY_DOUBLE), ("next_obs", cnp.NPY_INT64),
                          ("terminated", cnp.NPY_BOOL), ("truncated", cnp.NPY_BOOL),
                          ("logp", cnp.NPY_DOUBLE), ("task_id", cnp.NPY_INT64)):
        res[name] = _empty(cap, typenum)
    cdef cnp.ndarray length = np.empty((T, N), dtype=np.int64)
    cdef cnp.ndarray ret = np.empty((T, N), dtype=np.float64)
    out.obs = <int64_t*> cnp.PyArray_DATA(res["obs"])
    out.action = <int64_t*> cnp.PyArray_DATA(res["action"])
    out.reward = <double*> cnp.PyArray_DATA(res["reward"])
    out.next_obs = <int64_t*> cnp.PyArray_DATA(res["next_obs"])
    out.terminated = <uint8_t*> cnp.PyArray_DATA(res["terminated"])
    out.truncated = <uint8_t*> cnp.PyArray_DATA(res["truncated"])
    out.logp = <double*> cnp.PyArray_DATA(res["logp"])
    out.task_id = <int64_t*> cnp.PyArray_DATA(res["task_id"])
    out.episode_length = <int64_t*> cnp.PyArray_DATA(length)
    out.episode_return = <double*> cnp.PyArray_DATA(ret)
    # +inf-padded copy of the action CDF rows for count_le (tiny: n_policies x S x 4k)
    cdef intp_t A = t.n_actions, Ap = (A + 3) // 4 * 4
    padded = np.full((action_cdf.shape[0], t.n_states, Ap), np.inf)
    padded[:, :, :A] = action_cdf
    cdef const double* cdf_p = _dptr(padded)
    cdef const double* logp_p = _dptr(action_logp)
    cdef const int64_t* pol_p = _iptr(policy_of_task)
    cdef double* us = <double*> cnp.PyArray_DATA(u_start)
    cdef double* ua = <double*> cnp.PyArray_DATA(u_act)
    cdef double* nz = <double*> cnp.PyArray_DATA(noise)
    cdef double* un = <double*> cnp.PyArray_DATA(u_next)
    cdef bitgen_t* bitgen
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            if t.stochastic_start:
                random_standard_uniform_fill(bitgen, T * N, us)
            random_standard_uniform_fill(bitgen, cap, ua)
            if t.reward_kind == KIND_GAUSSIAN:
                random_standard_normal_fill(bitgen, cap, nz)
            elif t.reward_kind == KIND_BERNOULLI:
                random_standard_uniform_fill(bitgen, cap, nz)
            if t.stochastic_transitions:
                random_standard_uniform_fill(bitgen, cap, un)
    with nogil:
        n_steps = rollout_kernel(&t, cdf_p, Ap, logp_p, pol_p, N,
                                 us if t.stochastic_start else NULL, ua,
                                 nz if has_noise else NULL,
                                 un if t.stochastic_transitions else NULL, &out)
    names = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp", "task_id")
    if n_steps < cap:
        arrays = tuple(res[name][:n_steps].copy() for name in names)
    else:
        arrays = tuple(res[name] for name in names)
    return arrays + (length, ret)


def vec_reset(tables, task_of_env, state, elapsed, rng):
    """Start a new episode in every environment.  See :func:`metarl_fast.reference.envs.vec_reset`."""
    cdef intp_t n = check_vec_args(tables, task_of_env, state, elapsed)
    if not isinstance(rng, np.random.Generator):
        from metarl_fast import _validate
        _validate.check_rng(rng)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef bitgen_t* bitgen
    cdef const int64_t* task_p = _iptr(task_of_env)
    cdef int64_t* state_p = <int64_t*> cnp.PyArray_DATA(state)
    cdef int64_t* el_p = <int64_t*> cnp.PyArray_DATA(elapsed)
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            vec_reset_kernel(&t, task_p, state_p, el_p, n, bitgen)


def vec_step(tables, task_of_env, state, elapsed, actions, rng, obs_out, reward_out,
             terminated_out, truncated_out, final_obs_out):
    """One step of every environment.  See :func:`metarl_fast.reference.envs.vec_step`."""
    cdef intp_t n
    n, actions = check_step_args(tables, task_of_env, state, elapsed, actions, rng, obs_out,
                                 reward_out, terminated_out, truncated_out, final_obs_out)
    cdef EnvTablesC t
    fill_tables(tables, &t)
    cdef double* scratch = <double*> malloc((n if n > 0 else 1) * sizeof(double))
    if scratch == NULL:
        raise MemoryError("metarl_fast: out of memory in vec_step")
    cdef bitgen_t* bitgen
    cdef const int64_t* task_p = _iptr(task_of_env)
    cdef int64_t* state_p = <int64_t*> cnp.PyArray_DATA(state)
    cdef int64_t* el_p = <int64_t*> cnp.PyArray_DATA(elapsed)
    cdef const int64_t* act_p = _iptr(actions)
    cdef int64_t* obs_p = <int64_t*> cnp.PyArray_DATA(obs_out)
    cdef double* rew_p = <double*> cnp.PyArray_DATA(reward_out)
    cdef uint8_t* term_p = <uint8_t*> cnp.PyArray_DATA(terminated_out)
    cdef uint8_t* trunc_p = <uint8_t*> cnp.PyArray_DATA(truncated_out)
    cdef int64_t* fin_p = <int64_t*> cnp.PyArray_DATA(final_obs_out)
    try:
        bit_generator = rng.bit_generator
        bitgen = bitgen_of(bit_generator)
        with bit_generator.lock:
            with nogil:
                vec_step_kernel(&t, task_p, state_p, el_p, act_p, n, bitgen, scratch,
                                obs_p, rew_p, term_p, trunc_p, fin_p)
    finally:
        free(scratch)
