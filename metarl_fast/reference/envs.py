"""Stepping and fused-rollout kernels in pure NumPy: the executable specification of ``_core/envs.pyx``.

The kernels read the tables of a :class:`metarl_fast.tasks.EnvTables` (built once per
:class:`~metarl_fast.tasks.TaskBatch`).  Inverse-CDF sampling everywhere: with a uniform ``u`` and
a running sum ``c`` (left to right) of a distribution, the outcome is the first ``j`` with
``u * c[-1] < c[j]`` -- equivalently the number of ``j`` with ``c[j] <= u * c[-1]``.

Random draws of :func:`rollout` (``T`` tasks, ``N`` episodes per task, horizon ``H``), in this
order, each one bulk call on ``rng`` (entry ``[i, e, t]`` serves step ``t`` of episode ``e`` of
task ``i``; entries after an episode has ended are drawn but unused):

1. ``rng.random((T, N))``            start states, only if some task has a random start;
2. ``rng.random((T, N, H))``         actions (the rule of ``sample_actions`` on the per-state CDF);
3. reward noise ``(T, N, H)``: ``rng.standard_normal`` (gaussian) or ``rng.random`` (bernoulli),
   nothing for "none"/"transition" rewards;
4. ``rng.random((T, N, H))``         next states, only if some transition is random;
5. ``rng.random((T, N, H))``         reward outcomes, only for ``"outcome"`` rewards (the inverse-CDF
   rule on ``reward_cdf[task, s, a, s']`` of the transition taken).

:func:`vec_step` draws, for its ``n`` environments in env order: the reward noise block
(``standard_normal(n)`` or ``random(n)``), then ``random(n)`` for the next states (if random), then
``random(n)`` for the reward outcomes (``"outcome"`` rewards), then one ``random()`` per environment whose episode just ended, in env order, for its new start state
(if starts are random).  :func:`vec_reset` draws ``random(n)`` (if starts are random).
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast.reference._math import exp_nonpos
from metarl_fast.tasks import (REWARD_BERNOULLI, REWARD_GAUSSIAN, REWARD_OUTCOME, REWARD_TRANSITION,
                               EnvTables, guide_rows, padded_cdf_rows)


# ---------------------------------------------------------------------------------------------
# Boundary checks shared by both backends
# ---------------------------------------------------------------------------------------------

def check_tables(tables):
    if not isinstance(tables, EnvTables):
        raise TypeError(f"tables must be metarl_fast.tasks.EnvTables (TaskBatch.tables), got {type(tables).__name__}")
    return tables


def _exact_array(x, name, shape, dtype):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return x


# The output arrays of :func:`rollout`, in the order it returns them: (name, dtype, per step).
ROLLOUT_OUT_FIELDS = (("obs", np.int64, True), ("action", np.int64, True), ("reward", np.float64, True),
                      ("next_obs", np.int64, True), ("terminated", np.bool_, True),
                      ("truncated", np.bool_, True), ("logp", np.float64, True),
                      ("task_id", np.int64, True), ("episode_length", np.int64, False),
                      ("episode_return", np.float64, False))


def check_rollout_out(out, n_steps, n_episodes, inputs=()):
    """Validate the ``out`` argument of :func:`rollout`: a tuple of the ten arrays of
    :data:`ROLLOUT_OUT_FIELDS`, each 1-D, of exactly that dtype, C-contiguous, aligned and
    writeable, the eight step arrays with room for ``n_steps`` (T * N * H) entries, the two
    episode arrays for ``n_episodes`` (T * N), none overlapping another or one of ``inputs``
    (the arrays the kernel reads while it writes).  Returns ``out``."""
    if not isinstance(out, tuple) or len(out) != len(ROLLOUT_OUT_FIELDS):
        raise TypeError(f"out must be None or a tuple of {len(ROLLOUT_OUT_FIELDS)} arrays "
                        f"({', '.join(f[0] for f in ROLLOUT_OUT_FIELDS)}), got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, tuple) else ""))
    for arr, (field, dtype, per_step) in zip(out, ROLLOUT_OUT_FIELDS):
        name = f"out {field}"
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype != np.dtype(dtype):
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if not (arr.flags.c_contiguous and arr.flags.aligned and arr.flags.writeable):
            raise ValueError(f"{name} must be C-contiguous, aligned and writeable")
        need = n_steps if per_step else n_episodes
        if arr.shape[0] < need:
            what = "n_tasks x n_episodes x horizon steps" if per_step else "n_tasks x n_episodes episodes"
            raise ValueError(f"{name} holds {arr.shape[0]:,} entries but this rollout needs "
                             f"{need:,} ({what})")
    arrays = list(out) + [x for x in inputs if isinstance(x, np.ndarray)]
    for j, a in enumerate(out):
        for b in arrays[j + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError("out arrays must not overlap each other or the input tables")
    return out


def check_rollout_args(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng, out=None):
    """Validate the arguments of :func:`rollout` (``out`` with :func:`check_rollout_out`);
    returns ``n_episodes`` as an int."""
    check_tables(tables)
    _validate.check_rng(rng)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    S, A = tables.n_states, tables.n_actions
    if not isinstance(action_cdf, np.ndarray) or action_cdf.ndim != 3:
        raise ValueError(f"action_cdf must be a 3-D array (n_policies, {S}, {A})")
    n_pol = action_cdf.shape[0]
    _exact_array(action_cdf, "action_cdf", (n_pol, S, A), np.float64)
    _exact_array(action_logp, "action_logp", (n_pol, S, A), np.float64)
    if n_pol < 1:
        raise ValueError("action_cdf needs at least one policy")
    if not (np.all(np.isfinite(action_cdf)) and np.all(action_cdf[..., 0] >= 0)
            and np.all(np.diff(action_cdf, axis=-1) >= 0) and np.all(action_cdf[..., -1] > 0)):
        raise ValueError("action_cdf rows must be finite, non-negative, non-decreasing running sums with a positive total")
    if np.isnan(action_logp).any() or np.isposinf(action_logp).any():
        raise ValueError("action_logp must not contain NaN or +inf")
    _exact_array(policy_of_task, "policy_of_task", (tables.n_tasks,), np.int64)
    if policy_of_task.size and (policy_of_task.min() < 0 or policy_of_task.max() >= n_pol):
        raise ValueError(f"policy_of_task out of range: must be in [0, {n_pol})")
    _validate.check_table_size(tables.n_tasks * n_episodes * tables.horizon,
                               f"n_episodes={n_episodes:,}: a rollout of n_tasks x n_episodes x "
                               f"horizon = {tables.n_tasks} x {n_episodes:,} x {tables.horizon} steps")
    if out is not None:
        check_rollout_out(out, tables.n_tasks * n_episodes * tables.horizon, tables.n_tasks * n_episodes,
                          (action_cdf, action_logp, policy_of_task))
    return n_episodes


def check_vec_args(tables, task_of_env, state, elapsed):
    """Validate the environment-state arrays of :func:`vec_reset` / :func:`vec_step`; returns n_envs."""
    check_tables(tables)
    if not isinstance(task_of_env, np.ndarray) or task_of_env.ndim != 1:
        raise ValueError("task_of_env must be a 1-D int64 array")
    n = task_of_env.shape[0]
    _exact_array(task_of_env, "task_of_env", (n,), np.int64)
    if n and (task_of_env.min() < 0 or task_of_env.max() >= tables.n_tasks):
        raise ValueError(f"task_of_env out of range: must be in [0, {tables.n_tasks})")
    _exact_array(state, "state", (n,), np.int64)
    _exact_array(elapsed, "elapsed", (n,), np.int64)
    for arr in (state, elapsed):
        if not arr.flags.writeable:
            raise ValueError("state and elapsed must be writeable")
    return n


def check_step_args(tables, task_of_env, state, elapsed, actions, rng, obs_out, reward_out,
                    terminated_out, truncated_out, final_obs_out):
    n = check_vec_args(tables, task_of_env, state, elapsed)
    _validate.check_rng(rng)
    if n and (state.min() < 0 or state.max() >= tables.n_states):
        raise ValueError("state out of range (corrupted environment state)")
    if n and (elapsed.min() < 0 or elapsed.max() >= tables.horizon):
        raise ValueError("elapsed out of range (corrupted environment state)")
    actions = _validate.int_array(actions, "actions", ndim=1, length=n, low=0, high=tables.n_actions)
    _validate.check_out(obs_out, (n,), np.int64, "obs_out")
    _validate.check_out(reward_out, (n,), np.float64, "reward_out")
    _validate.check_out(terminated_out, (n,), np.bool_, "terminated_out")
    _validate.check_out(truncated_out, (n,), np.bool_, "truncated_out")
    _validate.check_out(final_obs_out, (n,), np.int64, "final_obs_out")
    return n, actions


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

def transition_cdfs(P):
    """``(padded, guide)`` of transition rows ``P`` (..., S): ``padded`` float64 (..., L + 1) their
    left-to-right running sums (``np.cumsum``) laid out by
    :func:`metarl_fast.tasks.padded_cdf_rows`, ``guide`` int32 their
    :func:`metarl_fast.tasks.guide_rows` (a placeholder for rows narrower than
    ``GUIDE_MIN_WIDTH``).  ``P`` float64, C-contiguous, at least 1-D with a non-empty last axis
    (trusted: :class:`~metarl_fast.tasks.EnvTables` passes validated tables).  Both read-only."""
    padded = padded_cdf_rows(np.cumsum(P, axis=-1))
    return padded, guide_rows(padded)


def dirichlet_rows(x):
    """Rows of i.i.d. standard exponentials ``x`` (..., S) (float64, C-contiguous, finite, >= 0,
    each row's sum > 0) made Dirichlet(1, ..., 1) rows the way ``Generator.dirichlet`` does it
    (``p = x * (1 / acc)`` with ``acc`` the left-to-right sum, so ``rng.standard_exponential``
    then this equals ``rng.dirichlet(np.ones(S))`` on the same stream, bit for bit), returned as
    :func:`transition_cdfs` of those rows: ``(padded, guide)``, read-only."""
    acc = np.cumsum(x, axis=-1)[..., -1:]
    return transition_cdfs(x * (1.0 / acc))


def tabular_mdp_draws(rng, n_tasks, n_states, n_actions):
    """The random tables of ``TabularMDPs.sample``: ``R = rng.normal(1.0, 1.0, (n, S, A))`` then
    ``rng.dirichlet(np.ones(S), (n, S, A))`` (its exponentials, :func:`dirichlet_rows`), in that
    order from ``rng`` (a ``numpy.random.Generator``).  Returns ``(R, padded, guide)``: the
    Dirichlet rows are kept only as their running sums and guide table."""
    R = rng.normal(1.0, 1.0, (n_tasks, n_states, n_actions))
    R.setflags(write=False)
    return (R,) + dirichlet_rows(rng.standard_exponential(size=(n_tasks, n_states, n_actions,
                                                                  n_states)))


def check_next_state_args(tables, rows, u):
    """Validated ``(tables, rows, u)`` of :func:`next_states` (shared by both backends)."""
    t = check_tables(tables)
    rows = _validate.int_array(rows, "rows", ndim=1, low=0, high=t.n_tasks * t.n_states * t.n_actions)
    u = _validate.float_array(u, "u", ndim=1, dtype=np.float64)
    if u.shape[0] != rows.shape[0]:
        raise ValueError(f"u must have length {rows.shape[0]} (one uniform per row), got {u.shape[0]}")
    if u.size and not (u.min() >= 0.0 and u.max() < 1.0):  # also refuses NaN
        raise ValueError("u must be in [0, 1)")
    return t, rows, u


def next_states(tables, rows, u):
    """The next states the stepping kernels draw: one per flat row ``rows`` (int64 (k,), the row
    ``(task * S + s) * A + a`` of ``tables``, a :class:`~metarl_fast.tasks.EnvTables`) with the
    uniform ``u`` (float64 (k,), in [0, 1)).  Stochastic rows: the number of the row's compared
    running sums that are ``<= u * total`` (:func:`metarl_fast.tasks.padded_cdf_rows`); deterministic
    batches: the next-state table (``u`` unused).  Returns int64 (k,)."""
    t, rows, u = check_next_state_args(tables, rows, u)
    return np.asarray(_next_states(t, rows, u), dtype=np.int64)


def action_cdf(logits):
    """Action sampling tables of float64 logits (n_policies, S, A), C-contiguous.

    Returns ``(cdf, z)``, both float64 (n_policies, S, A): ``z`` = logits minus the row max and
    ``cdf`` the running sums (left to right) of ``exp_nonpos(z)`` -- the exact table
    :func:`metarl_fast.sample_actions` builds for a row.  A row with NaN, +inf or only -inf is
    rejected with a ValueError naming the policy and state.
    """
    x = logits
    if not np.isfinite(x).all():  # -inf (a forbidden action) is fine unless a whole row is -inf
        flat = x.reshape(-1, x.shape[-1])
        bad = np.isnan(flat).any(axis=1) | np.isposinf(flat).any(axis=1) | np.all(flat == -np.inf, axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            p, s = divmod(row, x.shape[1])
            err = _validate.logits_row_error(flat, row)
            raise ValueError(f"policy {p}, state {s}: {err}")
    with np.errstate(over="ignore"):  # huge logits: x - max may reach -inf, i.e. probability 0
        z = x - x.max(axis=-1, keepdims=True)
    return np.cumsum(exp_nonpos(z), axis=-1), z


def episode_offsets(episode_length):
    """Start offsets of the episodes in the flat step arrays: int64 (n + 1,) for the int64
    episode lengths (T, N) (C-contiguous, non-negative): 0 then the running sums."""
    start = np.zeros(episode_length.size + 1, dtype=np.int64)
    np.cumsum(episode_length.reshape(-1), out=start[1:])
    return start


def episode_steps(episode_length):
    """``(episode, step)``, int64 (n,) each, of the flat steps of episodes with the int64 lengths
    (T, N) (C-contiguous, non-negative): the episode number ``k`` (``task * N + e``) of each step
    and its time index inside that episode."""
    lengths = episode_length.reshape(-1)
    episode = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    start = episode_offsets(episode_length)
    return episode, np.arange(episode.size, dtype=np.int64) - start[episode]


def _inverse_cdf(cdf_rows, u):
    """Row-wise inverse CDF: (k, m) running sums (or padded rows) and (k,) uniforms -> (k,) int64
    outcomes, the number of a row's entries before its last that are <= u * its last."""
    target = u * cdf_rows[:, -1]
    return np.add.reduce(cdf_rows[:, :-1] <= target[:, None], axis=1, dtype=np.int64)


def _flat_sa(t, task, s, a):
    """Row index of (task, s, a) in the tables reshaped to (n * S * A, ...): one cheap gather
    instead of a three-array fancy index."""
    return (task * t.n_states + s) * t.n_actions + a


def _rewards(t, task, sa, noise):
    """Observed rewards of the flat (task, s, a) rows ``sa`` before the transition."""
    mean = t.reward_mean.reshape(-1)[sa]
    if t.reward_kind == REWARD_GAUSSIAN:
        return mean + t.reward_std[task] * noise
    if t.reward_kind == REWARD_BERNOULLI:
        return np.where(noise < mean, 1.0, 0.0)
    return mean


def _next_states(t, sa, u):
    if t.stochastic_transitions:  # padded rows: the +inf padding is never <= a target
        return _inverse_cdf(t.trans_cdf_padded.reshape(-1, t.trans_cdf_padded.shape[-1])[sa], u)
    return t.next_state.reshape(-1)[sa]


def _transition_rewards(t, sa, s2, u_reward):
    """Rewards of the transitions (flat rows ``sa``) -> ``s2`` for "transition" and "outcome"
    rewards (``u_reward``: the outcome uniforms), else None."""
    if t.reward_kind == REWARD_TRANSITION:
        return t.reward_next.reshape(-1)[sa * t.n_states + s2]
    if t.reward_kind == REWARD_OUTCOME:
        K = t.reward_outcomes
        row = sa * t.n_states + s2
        k = _inverse_cdf(t.reward_cdf.reshape(-1, K)[row], u_reward)
        return t.reward_values.reshape(-1)[row * K + k]
    return None


def _draw_reward_outcomes(t, rng, shape):
    return rng.random(shape) if t.reward_kind == REWARD_OUTCOME else None


def _draw_noise(t, rng, shape):
    if t.reward_kind == REWARD_GAUSSIAN:
        return rng.standard_normal(shape)
    if t.reward_kind == REWARD_BERNOULLI:
        return rng.random(shape)
    return None


def rollout(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng, out=None):
    """Run ``n_episodes`` episodes on every task of ``tables`` with tabular action distributions.

    Parameters
    ----------
    tables : metarl_fast.tasks.EnvTables     ``T`` tasks, ``S`` states, ``A`` actions, horizon ``H``
    action_cdf : float64 (n_policies, S, A)  running sums of the (unnormalised) action weights
    action_logp : float64 (n_policies, S, A) behaviour log-probabilities, recorded per step
    policy_of_task : int64 (T,)              which policy acts in each task
    n_episodes : int >= 1
    rng : numpy.random.Generator             draws as described in the module docstring
    out : None, or a tuple of the ten arrays of :data:`ROLLOUT_OUT_FIELDS` (1-D, exact dtypes,
        C-contiguous, writeable, not overlapping; at least T * N * H entries for the eight step
        arrays, T * N for the two episode arrays) to write into instead of allocating: the
        returned arrays are then views of their prefixes (contents past them unspecified).

    Returns
    -------
    obs, action : int64 (n,);  reward : float64 (n,);  next_obs : int64 (n,);
    terminated, truncated : bool (n,);  logp : float64 (n,);  task_id : int64 (n,);
    episode_length : int64 (T, N);  episode_return : float64 (T, N) (rewards summed in step order)

    The ``n`` steps are ordered by task, then episode, then time.  An episode ends when it enters
    a terminal state (``terminated``) or after ``H`` steps (``truncated``, unless terminated).
    Invalid input raises before anything is drawn or written.
    """
    n_episodes = check_rollout_args(tables, action_cdf, action_logp, policy_of_task, n_episodes, rng, out)
    t = tables
    T, N, H = t.n_tasks, n_episodes, t.horizon
    S, A = t.n_states, t.n_actions
    u_start = rng.random((T, N)) if t.stochastic_start else None
    u_act = rng.random((T, N, H))
    noise = _draw_noise(t, rng, (T, N, H))
    u_next = rng.random((T, N, H)) if t.stochastic_transitions else None
    u_reward = _draw_reward_outcomes(t, rng, (T, N, H))

    if out is None:
        obs = np.zeros((T, N, H), dtype=np.int64)
        act = np.zeros((T, N, H), dtype=np.int64)
        rew = np.zeros((T, N, H))
        nxt = np.zeros((T, N, H), dtype=np.int64)
        term = np.zeros((T, N, H), dtype=bool)
        trunc = np.zeros((T, N, H), dtype=bool)
        logp = np.zeros((T, N, H))
        length = np.zeros((T, N), dtype=np.int64)
        ret = np.zeros((T, N))
    else:
        # the (T, N, H) slots live in the out arrays (only the valid ones are read back)
        obs, act, rew, nxt, term, trunc, logp = (a[:T * N * H].reshape(T, N, H) for a in out[:7])
        length, ret = (a[:T * N].reshape(T, N) for a in out[8:])
        length[...] = 0
        ret[...] = 0.0
    valid = np.zeros((T, N, H), dtype=bool)
    tasks = np.arange(T)
    for e in range(N):
        if t.stochastic_start:
            s = _inverse_cdf(t.start_cdf, u_start[:, e])
        else:
            s = t.start_state.copy()
        live = tasks
        for step in range(H):
            # rows of the (T, N, H) arrays: a plain slice while every task is still running
            rows = slice(None) if live.size == T else live
            st = s[rows]
            pol = policy_of_task[rows]
            a = _inverse_cdf(action_cdf[pol, st], u_act[rows, e, step])
            sa = _flat_sa(t, live, st, a)
            r = _rewards(t, live, sa, None if noise is None else noise[rows, e, step])
            s2 = _next_states(t, sa, None if u_next is None else u_next[rows, e, step])
            if t.reward_kind == REWARD_TRANSITION:
                r = t.reward_next.reshape(-1)[sa * S + s2]
            elif t.reward_kind == REWARD_OUTCOME:
                r = _transition_rewards(t, sa, s2, u_reward[rows, e, step])
            ends = t.terminal.reshape(-1)[live * S + s2].astype(bool)
            obs[rows, e, step] = st
            act[rows, e, step] = a
            rew[rows, e, step] = r
            nxt[rows, e, step] = s2
            term[rows, e, step] = ends
            trunc[rows, e, step] = ~ends & (step == H - 1)
            logp[rows, e, step] = action_logp.reshape(-1)[(pol * S + st) * A + a]
            valid[rows, e, step] = True
            ret[rows, e] += r
            length[rows, e] += 1
            s[rows] = s2
            if ends.any():
                live = live[~ends]
                if live.size == 0:
                    break
    task_id = np.broadcast_to(tasks[:, None, None], (T, N, H))
    steps = (obs, act, rew, nxt, term, trunc, logp, task_id)
    if out is None:
        return tuple(a[valid] for a in steps) + (length, ret)
    n = int(length.sum())
    for dst, src in zip(out, steps):
        dst[:n] = src[valid]  # (the gather copies the valid slots before the prefix is written)
    return tuple(dst[:n] for dst in out[:8]) + (length, ret)


def vec_reset(tables, task_of_env, state, elapsed, rng):
    """Start a new episode in every environment: writes ``state`` (n,) and zeroes ``elapsed`` (n,).

    ``task_of_env`` int64 (n,): the task of each environment.  Draws ``rng.random(n)`` if starts
    are random.
    """
    check_vec_args(tables, task_of_env, state, elapsed)
    _validate.check_rng(rng)
    t = tables
    if t.stochastic_start:
        state[:] = _inverse_cdf(t.start_cdf[task_of_env], rng.random(task_of_env.shape[0]))
    else:
        state[:] = t.start_state[task_of_env]
    elapsed[:] = 0


def vec_step(tables, task_of_env, state, elapsed, actions, rng, obs_out, reward_out,
             terminated_out, truncated_out, final_obs_out):
    """Step every environment once, with same-step auto-reset.

    ``state``/``elapsed`` (int64 (n,)) are updated in place.  Writes ``reward_out``,
    ``terminated_out``, ``truncated_out`` and ``final_obs_out`` (the state reached by this step);
    ``obs_out`` is the state after the auto-reset: the new episode's start state for environments
    whose episode just ended, else ``final_obs_out``.  ``actions``: ints (n,) in ``[0, A)``.
    Draws as described in the module docstring.  Invalid input raises before anything is drawn
    or written.
    """
    n, actions = check_step_args(tables, task_of_env, state, elapsed, actions, rng, obs_out,
                                 reward_out, terminated_out, truncated_out, final_obs_out)
    t = tables
    task, s, a = task_of_env, state, actions
    noise = _draw_noise(t, rng, n)
    u_next = rng.random(n) if t.stochastic_transitions else None
    u_reward = _draw_reward_outcomes(t, rng, n)
    sa = _flat_sa(t, task, s, a)
    r = _rewards(t, task, sa, noise)
    s2 = _next_states(t, sa, u_next)
    if t.reward_kind == REWARD_TRANSITION:
        r = t.reward_next.reshape(-1)[sa * t.n_states + s2]
    elif t.reward_kind == REWARD_OUTCOME:
        r = _transition_rewards(t, sa, s2, u_reward)
    el = elapsed + 1
    ends = t.terminal[task, s2].astype(bool)
    trunc = ~ends & (el >= t.horizon)
    done = ends | trunc
    reward_out[:] = r
    terminated_out[:] = ends
    truncated_out[:] = trunc
    final_obs_out[:] = s2
    new_state = s2.copy()
    k = int(np.count_nonzero(done))
    if k:
        idx = np.flatnonzero(done)
        if t.stochastic_start:
            new_state[idx] = _inverse_cdf(t.start_cdf[task[idx]], rng.random(k))
        else:
            new_state[idx] = t.start_state[task[idx]]
        el[idx] = 0
    state[:] = new_state
    elapsed[:] = el
    obs_out[:] = new_state
