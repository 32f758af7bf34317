"""Fused rollouts of MLP softmax policies on the continuous-observation task families (Cython twin
of :mod:`metarl_fast.reference.continuous_rollout`, which specifies the draws, the sampling rule,
the termination rules and the outputs).  Float64 only.

The ``def`` kernels validate with the reference's own checks, then make one ``nogil`` call, the
BitGenerator's lock held throughout: chunks of about 256 episodes (whole tasks, in task order)
at a time, each chunk first drawing its uniforms in the specified order -- start states into a
scratch block, action uniforms into the ``logp`` slots they are consumed from -- then running its
episodes in lockstep.  At each step the live episodes' observations are gathered into one block
and forwarded through the network (``mlp_forward`` of ``mlp.pxd``, bit-identical to the
reference), one call per run of consecutive tasks sharing a policy (the whole block for a shared
policy, each task's own rows for per-task parameters); each row is sampled by inverse CDF and
stepped with the one-task steps of ``continuous.pxd``.  Each episode is written into its
``horizon``-long slot of the chunk and the chunk's steps are then moved down next to the previous
ones (packed, no padding).  ``logp`` is finished outside the kernel with NumPy's ``log`` (the
reference's), so both backends give the same bits.  Pending signals (Ctrl-C) are looked at about
every 10 ms of work.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove
from numpy.random cimport bitgen_t

from metarl_fast._core.continuous cimport (CARTPOLE_N_PARAMS, POINT_OBS_DIM, cartpole_step_one,
                                           cartpoles_reset_kernel, point_navigation_step_one)
from metarl_fast._core.mf_exp cimport mf_exp_nonpos
from metarl_fast._core.mf_signals cimport mf_pending_t, mf_raise_pending, mf_signal_raised
from metarl_fast._core.mlp cimport (MLP_MAX_DEPTH, MLP_NO_MEMORY, MLP_OK, MLPNet, mlp_forward,
                                    mlp_net_init)
from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast.reference.continuous_rollout import (  # noqa: F401 - KERNELS: the twin's list
    KERNELS, OUT_FIELDS, check_cartpoles_rollout_args, check_point_navigation_rollout_args)

cnp.import_array()

# Episodes run in lockstep per chunk: enough rows for the network's row blocks, few enough that
# the chunk's states, logits and per-task parameters stay in cache.
cdef intp_t CHUNK_ROWS = 256
# Work between two looks at pending signals, in multiply-adds of the network (plus 64 per step
# for the rest): about 10 ms.
cdef intp_t signal_check_work = 1 << 24


def _set_signal_check_work(n):
    """For tests: the work between two looks at pending signals (returns the old value)."""
    global signal_check_work
    old = signal_check_work
    signal_check_work = max(1, int(n))
    return old


# The exception a signal handler raised inside the kernel, held until the lock is released.
cdef mf_pending_t _pending


cdef int _raise_pending() except -1:
    return mf_raise_pending(&_pending)


cdef inline intp_t sample_row(const double* logits, intp_t A, double u, double* cdf,
                              double* zsel_out, double* total_out) noexcept nogil:
    """The action of one row by inverse CDF (the reference's rule), ``z[action]`` and the total."""
    cdef intp_t a, action = 0
    cdef double m = logits[0], c = 0.0, target
    for a in range(1, A):
        if logits[a] > m:
            m = logits[a]
    for a in range(A):
        c = c + mf_exp_nonpos(logits[a] - m)
        cdf[a] = c
    target = u * c
    for a in range(A - 1):
        if cdf[a] <= target:
            action += 1
    zsel_out[0] = logits[action] - m
    total_out[0] = c
    return action


cdef inline void move_steps(ContinuousRolloutOut* out, intp_t D, intp_t dst, intp_t src,
                            intp_t n) noexcept nogil:
    """Steps src .. src + n - 1 to dst .. (dst <= src; the ranges may overlap)."""
    memmove(out.obs + dst * D, out.obs + src * D, n * D * sizeof(double))
    memmove(out.action + dst, out.action + src, n * sizeof(int64_t))
    memmove(out.reward + dst, out.reward + src, n * sizeof(double))
    memmove(out.next_obs + dst * D, out.next_obs + src * D, n * D * sizeof(double))
    memmove(out.terminated + dst, out.terminated + src, n * sizeof(uint8_t))
    memmove(out.truncated + dst, out.truncated + src, n * sizeof(uint8_t))
    memmove(out.logp + dst, out.logp + src, n * sizeof(double))
    memmove(out.total + dst, out.total + src, n * sizeof(double))
    memmove(out.task_id + dst, out.task_id + src, n * sizeof(int64_t))


cdef intp_t continuous_rollout_kernel(const ContinuousEnvC* env, const MLPNet* net,
                                      const double* params, const int64_t* policy_of_task,
                                      intp_t n_episodes, bitgen_t* bitgen,
                                      ContinuousRolloutOut* out, bint interruptible) noexcept nogil:
    cdef intp_t T = env.n_tasks, N = n_episodes, H = env.horizon, D = env.obs_dim
    cdef intp_t A = env.n_actions, P = net.n_params
    cdef bint cartpole = env.family == FAMILY_CARTPOLES
    cdef intp_t per_chunk = CHUNK_ROWS // N if CHUNK_ROWS > N else 1
    cdef intp_t max_rows, i0 = 0, n, rows, q, t, j, r, r0, r1, slot, base, k = 0, i, pol
    cdef intp_t action, work = 0, status = MLP_OK
    cdef double reward, zsel, total
    cdef uint8_t term
    cdef char* mem
    cdef double* states
    cdef double* x
    cdef double* logits
    cdef double* cdf
    cdef double* ret
    cdef intp_t* rowq
    cdef intp_t* length
    cdef uint8_t* alive
    if per_chunk > T:
        per_chunk = T
    max_rows = per_chunk * N
    mem = <char*> malloc(max_rows * ((2 * D + A + 1) * sizeof(double) + 2 * sizeof(intp_t) + 1)
                         + A * sizeof(double))
    if mem == NULL:
        return MLP_NO_MEMORY
    states = <double*> mem
    x = states + max_rows * D
    logits = x + max_rows * D
    ret = logits + max_rows * A
    cdf = ret + max_rows
    rowq = <intp_t*> (cdf + A)
    length = rowq + max_rows
    alive = <uint8_t*> (length + max_rows)
    while i0 < T:
        if i0 > 0 and interruptible and mf_signal_raised(&_pending):
            status = ROLLOUT_INTERRUPTED
            break
        n = per_chunk if T - i0 > per_chunk else T - i0
        rows = n * N
        base = i0 * N * H
        # the chunk's draws, episode by episode: start state, then H action uniforms (kept in the
        # logp slots until their step reads them)
        for q in range(rows):
            if cartpole:
                cartpoles_reset_kernel(1, bitgen, states + q * D)
            else:
                for j in range(D):
                    states[q * D + j] = 0.0
            for t in range(H):
                out.logp[base + q * H + t] = next_uniform(bitgen)
            alive[q] = 1
            length[q] = 0
            ret[q] = 0.0
        for t in range(H):
            r = 0
            for q in range(rows):
                if alive[q]:
                    rowq[r] = q
                    memcpy(x + r * D, states + q * D, D * sizeof(double))
                    r += 1
            if r == 0:
                break
            r0 = 0
            while r0 < r:  # one forward pass per run of tasks sharing a policy
                pol = policy_of_task[i0 + rowq[r0] // N]
                r1 = r0 + 1
                while r1 < r and policy_of_task[i0 + rowq[r1] // N] == pol:
                    r1 += 1
                status = mlp_forward(net, params + pol * P, <const double*> (x + r0 * D), r1 - r0,
                                     logits + r0 * A)
                if status != MLP_OK:
                    break
                r0 = r1
            if status != MLP_OK:
                break
            for j in range(r):
                q = rowq[j]
                i = i0 + q // N
                slot = base + q * H + t
                action = sample_row(logits + j * A, A, out.logp[slot], cdf, &zsel, &total)
                memcpy(out.obs + slot * D, x + j * D, D * sizeof(double))
                if cartpole:
                    cartpole_step_one(env.task_params + i * CARTPOLE_N_PARAMS, states + q * D,
                                      action, states + q * D, &reward, &term)
                else:
                    point_navigation_step_one(env.task_params + i * POINT_OBS_DIM,
                                              env.moves + action * POINT_OBS_DIM, states + q * D,
                                              states + q * D, &reward, &term)
                memcpy(out.next_obs + slot * D, states + q * D, D * sizeof(double))
                out.action[slot] = action
                out.reward[slot] = reward
                out.terminated[slot] = term
                out.truncated[slot] = term == 0 and t == H - 1
                out.logp[slot] = zsel
                out.total[slot] = total
                out.task_id[slot] = i
                ret[q] = ret[q] + reward
                length[q] = t + 1
                if term:
                    alive[q] = 0
            work += r * (P + 64)
            if interruptible and work >= signal_check_work:
                work = 0
                if mf_signal_raised(&_pending):
                    status = ROLLOUT_INTERRUPTED
                    break
        if status != MLP_OK:
            break
        # pack the chunk's episodes next to the previous steps (k <= every slot start)
        for q in range(rows):
            slot = base + q * H
            if slot != k:
                move_steps(out, D, k, slot, length[q])
            k += length[q]
            out.episode_length[i0 * N + q] = length[q]
            out.episode_return[i0 * N + q] = ret[q]
        i0 += n
    free(mem)
    return k if status == MLP_OK else status


# ---------------------------------------------------------------------------------------------
# Python entry points (same names, arguments and errors as the reference)
# ---------------------------------------------------------------------------------------------

cdef tuple _run(ContinuousEnvC* env, cnp.ndarray params, cnp.ndarray policy_of_task, tuple hidden,
                str activation, intp_t N, object rng):
    cdef MLPNet net
    cdef intp_t widths[MLP_MAX_DEPTH]
    cdef intp_t l, n_steps, T = env.n_tasks, D = env.obs_dim
    cdef intp_t cap = T * N * env.horizon
    cdef ContinuousRolloutOut out
    cdef bitgen_t* bitgen
    for l in range(len(hidden)):
        widths[l] = hidden[l]
    mlp_net_init(&net, D, widths, len(hidden), env.n_actions, activation == "tanh")
    cdef object step_2d = (cap, D), step_1d = (cap,), per_episode = (T, N)
    arrays = [np.empty(step_2d if name in ("obs", "next_obs") else
                       step_1d if per_step else per_episode, dtype=dtype)
              for name, dtype, per_step in OUT_FIELDS]
    total = np.empty(cap)
    (obs, action, reward, next_obs, terminated, truncated, logp, task_id, length, ret) = arrays
    out.obs = <double*> cnp.PyArray_DATA(obs)
    out.action = <int64_t*> cnp.PyArray_DATA(action)
    out.reward = <double*> cnp.PyArray_DATA(reward)
    out.next_obs = <double*> cnp.PyArray_DATA(next_obs)
    out.terminated = <uint8_t*> cnp.PyArray_DATA(terminated)
    out.truncated = <uint8_t*> cnp.PyArray_DATA(truncated)
    out.logp = <double*> cnp.PyArray_DATA(logp)
    out.total = <double*> cnp.PyArray_DATA(total)
    out.task_id = <int64_t*> cnp.PyArray_DATA(task_id)
    out.episode_length = <int64_t*> cnp.PyArray_DATA(length)
    out.episode_return = <double*> cnp.PyArray_DATA(ret)
    cdef const double* p = <const double*> cnp.PyArray_DATA(params)
    cdef const int64_t* pol = <const int64_t*> cnp.PyArray_DATA(policy_of_task)
    bit_generator = rng.bit_generator
    bitgen = bitgen_of(bit_generator)
    saved = bit_generator.state
    with bit_generator.lock, nogil:
        n_steps = continuous_rollout_kernel(env, &net, p, pol, N, bitgen, &out, True)
    if n_steps < 0:
        bit_generator.state = saved
        if n_steps == ROLLOUT_INTERRUPTED:
            _raise_pending()
        if n_steps == MLP_NO_MEMORY:
            raise MemoryError("metarl_fast: out of memory in the fused rollout")
        raise FloatingPointError("the MLP's logits overflow the float64 range (params or "
                                 "observations too large)")
    if n_steps < cap:
        # shrink in place (realloc; these fresh arrays have no other reference): no copy
        step_2d, step_1d = (n_steps, D), (n_steps,)
        for field, arr in zip(OUT_FIELDS, arrays):
            if field[2]:
                arr.resize(step_2d if arr.ndim == 2 else step_1d, refcheck=False)
        total.resize((n_steps,), refcheck=False)
    np.subtract(logp, np.log(total), out=logp)
    return tuple(arrays)


def cartpoles_rollout(env_params, params, policy_of_task, hidden, activation, n_episodes, horizon,
                      rng):
    """Fused rollout on CartPoles.  See :func:`metarl_fast.reference.continuous_rollout.cartpoles_rollout`."""
    (env_params, params, policy_of_task, hidden, activation, n_episodes, horizon,
     _) = check_cartpoles_rollout_args(env_params, params, policy_of_task, hidden, activation,
                                       n_episodes, horizon, rng)
    cdef ContinuousEnvC env
    env.family = FAMILY_CARTPOLES
    env.task_params = <const double*> cnp.PyArray_DATA(<cnp.ndarray> env_params)
    env.moves = NULL
    env.n_tasks = env_params.shape[0]
    env.obs_dim = 4
    env.n_actions = 2
    env.horizon = horizon
    return _run(&env, params, policy_of_task, hidden, activation, n_episodes, rng)


def point_navigation_rollout(goals, moves, params, policy_of_task, hidden, activation, n_episodes,
                             horizon, rng):
    """Fused rollout on PointNavigation.  See
    :func:`metarl_fast.reference.continuous_rollout.point_navigation_rollout`."""
    (goals, moves, params, policy_of_task, hidden, activation, n_episodes, horizon,
     _) = check_point_navigation_rollout_args(goals, moves, params, policy_of_task, hidden,
                                              activation, n_episodes, horizon, rng)
    cdef ContinuousEnvC env
    env.family = FAMILY_POINT_NAVIGATION
    env.task_params = <const double*> cnp.PyArray_DATA(<cnp.ndarray> goals)
    env.moves = <const double*> cnp.PyArray_DATA(<cnp.ndarray> moves)
    env.n_tasks = goals.shape[0]
    env.obs_dim = POINT_OBS_DIM
    env.n_actions = moves.shape[0]
    env.horizon = horizon
    return _run(&env, params, policy_of_task, hidden, activation, n_episodes, rng)
