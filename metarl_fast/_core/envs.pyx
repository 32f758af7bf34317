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


cdef intp_t rollout_kernel(const EnvTablesC* t, const double* action_cdf, const double* action_logp,
                           const int64_t* policy_of_task, intp_t n_episodes,
                           const double* u_start, const double* u_act, const double* noise,
                           const double* u_next, RolloutOut* out) noexcept nogil:
    cdef intp_t T = t.n_tasks, N = n_episodes, H = t.horizon
    cdef intp_t S = t.n_states, A = t.n_actions
    cdef intp_t SA = S * A
    cdef int kind = t.reward_kind
    cdef bint stoch = t.stochastic_transitions
    cdef intp_t i, e, step, k = 0, base, s, s2, a, sa, pol
    cdef const double* acdf
    cdef const double* alogp
    cdef const double* tcdf
    cdef const int64_t* nstate
    cdef const double* rmean
    cdef const double* rnext
    cdef const uint8_t* term
    cdef double std, r, ret
    cdef bint ended
    for i in range(T):
        pol = policy_of_task[i]
        acdf = action_cdf + pol * SA
        alogp = action_logp + pol * SA
        tcdf = t.trans_cdf + i * SA * S
        nstate = t.next_state + i * SA
        rmean = t.reward_mean + i * SA
        rnext = t.reward_next + i * SA * S
        term = t.terminal + i * S
        std = t.reward_std[i]
        for e in range(N):
            base = (i * N + e) * H
            if t.stochastic_start:
                s = inverse_cdf(t.start_cdf + i * S, S, u_start[i * N + e])
            else:
                s = t.start_state[i]
            ret = 0.0
            ended = False
            step = 0
            while step < H:
                a = inverse_cdf(acdf + s * A, A, u_act[base + step])
                sa = s * A + a
                if kind == KIND_GAUSSIAN:
                    r = rmean[sa] + std * noise[base + step]
                elif kind == KIND_BERNOULLI:
                    r = 1.0 if noise[base + step] < rmean[sa] else 0.0
                else:
                    r = rmean[sa]
                if stoch:
                    s2 = inverse_cdf(tcdf + sa * S, S, u_next[base + step])
                else:
                    s2 = nstate[sa]
                if kind == KIND_TRANSITION:
                    r = rnext[sa * S + s2]
                ended = term[s2] != 0
                out.obs[k] = s
                out.action[k] = a
                out.reward[k] = r
                out.next_obs[k] = s2
                out.terminated[k] = ended
                out.truncated[k] = 0
                out.logp[k] = alogp[sa]
                out.task_id[k] = i
                ret += r
                k += 1
                step += 1
                s = s2
                if ended:
                    break
            if not ended:
                out.truncated[k - 1] = 1
            out.episode_length[i * N + e] = step
            out.episode_return[i * N + e] = ret
    return k


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
    cdef const double* cdf_p = _dptr(action_cdf)
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
        n_steps = rollout_kernel(&t, cdf_p, logp_p, pol_p, N,
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
