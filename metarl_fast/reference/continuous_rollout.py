"""Fused rollouts of MLP softmax policies on the continuous-observation task families, in pure
NumPy: the executable specification of ``_core/continuous_rollout.pyx`` (issue 16).

Two kernels, one per family (:mod:`metarl_fast.continuous_tasks`), the same names, signatures,
checks and results in both backends (float64 only)::

    cartpoles_rollout(env_params, params, policy_of_task, hidden, activation, n_episodes, horizon, rng)
    point_navigation_rollout(goals, moves, params, policy_of_task, hidden, activation, n_episodes,
                             horizon, rng)

Every task ``i`` (of ``T``) runs ``N = n_episodes`` episodes of at most ``H = horizon`` steps with
the MLP policy ``params[policy_of_task[i]]`` (:mod:`metarl_fast.reference.mlp` layout, obs_dim
``D`` and ``A`` actions of the family).

Random draws (the specification)
--------------------------------
Per task in task order, per episode in order:

1. the episode's start-state uniforms: CartPoles ``rng.uniform(-0.05, 0.05, 4)`` (exactly what
   :func:`~metarl_fast.reference.continuous.cartpoles_reset` draws for one task);
   PointNavigation none (every episode starts at the origin);
2. then exactly ``H`` action uniforms ``rng.random()``, one per step, all ``H`` drawn even if the
   episode terminates early (the unused ones are skipped).

A call therefore consumes ``T * N * (4 + H)`` (CartPoles) or ``T * N * H`` (PointNavigation)
doubles, whatever happens in the episodes, and both backends leave the Generator in the same
state.  A call that raises draws nothing (a FloatingPointError raised part way restores the
Generator's state).

Steps
-----
At step ``t`` of an episode in state ``s`` (float64 (D,)), with ``u`` its ``t``-th action uniform:
``logits = mlp_logits(params_i, s)`` (bit for bit :func:`metarl_fast.reference.mlp.mlp_logits`),
``z = logits - max(logits)``, ``e = exp_nonpos(z)``, ``c`` = the running sums of ``e`` left to
right, ``action = #{a < A - 1 : c[a] <= u * c[A - 1]}`` -- the inverse-CDF rule of
:func:`metarl_fast.reference.policy.sample_actions`, so the action ``mlp_act`` gives for that row
and uniform -- and ``logp = z[action] - log(c[A - 1])`` (NumPy's ``log`` in both backends; equal
to :func:`metarl_fast.reference.policy.log_prob` to the last bit for ``A <= 8``, whose sum is then
the same left-to-right sum, and to rounding beyond).  Then the family's one-task step
(:mod:`metarl_fast.reference.continuous`) gives ``(next_obs, reward, terminated)``.

CartPoles episodes end at their first terminated step (that step included, reward 1.0) or are
truncated at ``H``; PointNavigation episodes always run ``H`` steps (truncated at the last).
``truncated`` is True only at the last step of an episode that did not terminate, so exactly one of
``terminated`` / ``truncated`` is True at each episode's last step.

Outputs
-------
The kernel returns ``(obs, action, reward, next_obs, terminated, truncated, logp, task_id,
episode_length, episode_return)``: flat step arrays in episode order (task-major, the episodes of a
task consecutive, the steps of an episode consecutive, no padding) -- float64 (n, D), int64 (n,),
float64 (n,), float64 (n, D), bool (n,), bool (n,), float64 (n,), int64 (n,) -- and per episode
int64 (T, N) lengths and float64 (T, N) returns (rewards summed in step order from 0.0).
A logit that overflows (non-finite, finite params too large) raises FloatingPointError.
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import continuous as _env
from metarl_fast.reference import mlp as _mlp
from metarl_fast.reference._math import exp_nonpos

# the public kernels, the same names and signatures in both backends
KERNELS = ("cartpoles_rollout", "point_navigation_rollout")
# the kernels' output arrays, in order: (name, dtype, per step (True) or per episode)
OUT_FIELDS = (("obs", np.float64, True), ("action", np.int64, True), ("reward", np.float64, True),
              ("next_obs", np.float64, True), ("terminated", np.bool_, True),
              ("truncated", np.bool_, True), ("logp", np.float64, True), ("task_id", np.int64, True),
              ("episode_length", np.int64, False), ("episode_return", np.float64, False))
CARTPOLE_START_DRAWS = _env.CARTPOLE_OBS_DIM


# ---------------------------------------------------------------------------------------------
# Boundary checks shared by both backends
# ---------------------------------------------------------------------------------------------

def check_policy_args(params, policy_of_task, hidden, activation, obs_dim, n_actions, n_tasks):
    """Validated ``(params float64 (n_policies, P) C-contiguous finite, policy_of_task int64 (T,),
    hidden tuple, activation, layers)``; ``params`` (P,) is one policy (n_policies = 1)."""
    hidden = _mlp.check_hidden(hidden)
    activation = _mlp.check_activation(activation)
    layers, n_params = _mlp.mlp_layout(obs_dim, hidden, n_actions)
    if isinstance(params, np.ndarray) and params.dtype != np.float64:
        raise TypeError(f"params must have dtype float64 (the fused rollout is float64 only), "
                        f"got {params.dtype}")
    params = _validate.float_array(params, "params", dtype=np.float64)
    if params.ndim == 1:
        params = params.reshape(1, -1)
    if params.ndim != 2:
        raise ValueError(f"params must be 1-D (P,) or 2-D (n_policies, P), got shape {params.shape}")
    if params.shape[1] != n_params or params.shape[0] < 1:
        raise ValueError(f"params must have {n_params} entries per policy (the MLP with "
                         f"obs_dim={obs_dim}, hidden={hidden}, n_actions={n_actions}: mlp_layout), "
                         f"got shape {params.shape}")
    _validate.check_table_size(params.size, "params (n_policies x P)")
    if not np.all(np.isfinite(params)):
        raise ValueError("params contains NaN or inf")
    policy_of_task = _validate.int_array(policy_of_task, "policy_of_task", ndim=1, length=n_tasks,
                                         low=0, high=params.shape[0])
    return params, policy_of_task, hidden, activation, layers


def check_rollout_size(n_tasks, n_episodes, horizon):
    """``(n_episodes, horizon)`` as ints >= 1, with ``T * N * H`` within MAX_TABLE_ENTRIES."""
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    horizon = _validate.positive_int(horizon, "horizon")
    _validate.check_table_size(n_tasks * n_episodes * horizon,
                               f"a rollout of {n_tasks} tasks x {n_episodes} episodes x horizon "
                               f"{horizon} (its step arrays)")
    return n_episodes, horizon


def check_cartpoles_rollout_args(env_params, params, policy_of_task, hidden, activation,
                                 n_episodes, horizon, rng):
    """Validated arguments of :func:`cartpoles_rollout` (``rng`` checked, ``layers`` appended)."""
    env_params = _env.check_cartpoles_params(env_params, "env_params")
    n_tasks = env_params.shape[0]
    if n_tasks < 1:
        raise ValueError("env_params must hold at least one task, got shape (0, 5)")
    params, policy_of_task, hidden, activation, layers = check_policy_args(
        params, policy_of_task, hidden, activation, _env.CARTPOLE_OBS_DIM, _env.CARTPOLE_N_ACTIONS,
        n_tasks)
    n_episodes, horizon = check_rollout_size(n_tasks, n_episodes, horizon)
    _validate.check_rng(rng)
    return env_params, params, policy_of_task, hidden, activation, n_episodes, horizon, layers


def check_point_navigation_rollout_args(goals, moves, params, policy_of_task, hidden, activation,
                                        n_episodes, horizon, rng):
    """Validated arguments of :func:`point_navigation_rollout` (``layers`` appended)."""
    goals = _env.check_point_goals(goals)
    moves = _env.check_point_moves(moves)
    n_tasks = goals.shape[0]
    if n_tasks < 1:
        raise ValueError("goals must hold at least one task, got shape (0, 2)")
    params, policy_of_task, hidden, activation, layers = check_policy_args(
        params, policy_of_task, hidden, activation, _env.POINT_OBS_DIM, moves.shape[0], n_tasks)
    n_episodes, horizon = check_rollout_size(n_tasks, n_episodes, horizon)
    _validate.check_rng(rng)
    return goals, moves, params, policy_of_task, hidden, activation, n_episodes, horizon, layers


# ---------------------------------------------------------------------------------------------
# The episodes, all of them in lockstep
# ---------------------------------------------------------------------------------------------

def _logits(task_params, obs, layers, activation):
    """Logits float64 (T, N, A) of each task's N rows ``obs`` (T, N, D) under its own parameters
    ``task_params`` (T, P): ``b[k] + a[0] W[0, k] + a[1] W[1, k] + ...`` in that order, as
    :func:`metarl_fast.reference.mlp.mlp_logits` (row by row the same bits)."""
    a = obs
    n_tasks = task_params.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported on the live rows
        for index, (w_off, b_off, n_in, n_out) in enumerate(layers):
            w = task_params[:, w_off:b_off].reshape(n_tasks, n_in, n_out)
            z = np.empty(a.shape[:2] + (n_out,))
            z[...] = task_params[:, None, b_off:b_off + n_out]
            for j in range(n_in):
                z += a[:, :, j:j + 1] * w[:, None, j, :]
            if index == len(layers) - 1:
                return z
            a = _mlp._act(z, activation)
    raise AssertionError("an MLP has at least one layer")


def _run(step, obs_dim, start, u_act, task_params, layers, activation, terminates):
    """The episodes of every task in lockstep.

    ``step(states (T*N, D), actions (T*N,)) -> (next_states, rewards, terminated)``; ``start``
    float64 (T, N, D); ``u_act`` float64 (T, N, H); returns the kernel's ten outputs."""
    n_tasks, n_episodes, horizon = u_act.shape
    n_rows = n_tasks * n_episodes
    states = start.reshape(n_rows, obs_dim).copy()
    alive = np.ones(n_rows, dtype=bool)
    length = np.zeros(n_rows, dtype=np.int64)
    ret = np.zeros(n_rows)
    steps = {name: [] for name, _, per_step in OUT_FIELDS if per_step}
    valid = []
    task_of_row = np.repeat(np.arange(n_tasks, dtype=np.int64), n_episodes)
    for t in range(horizon):
        if not alive.any():
            break
        logits = _logits(task_params, states.reshape(n_tasks, n_episodes, obs_dim), layers,
                         activation).reshape(n_rows, -1)
        if not np.all(np.isfinite(logits[alive])):
            raise FloatingPointError("the MLP's logits overflow the float64 range (params or "
                                     "observations too large)")
        logits = np.where(alive[:, None], logits, 0.0)  # (rows that ended: any finite value)
        z = logits - logits.max(axis=1, keepdims=True)
        cdf = np.cumsum(exp_nonpos(z), axis=1)
        total = cdf[:, -1]
        target = u_act[:, :, t].reshape(n_rows) * total
        action = (cdf[:, :-1] <= target[:, None]).sum(axis=1).astype(np.int64)
        logp = z[np.arange(n_rows), action] - np.log(total)
        next_states, reward, terminated = step(states, action)
        terminated = terminated & terminates
        truncated = ~terminated & (t == horizon - 1)
        for name, value in (("obs", states), ("action", action), ("reward", reward),
                            ("next_obs", next_states), ("terminated", terminated),
                            ("truncated", truncated), ("logp", logp), ("task_id", task_of_row)):
            steps[name].append(value.copy())
        valid.append(alive.copy())
        ret[alive] += reward[alive]
        length[alive] += 1
        alive &= ~terminated
        states = next_states
    # (H, T*N, ...) -> episode order (T*N, H, ...), then the steps each episode took
    keep = np.stack(valid, axis=1)
    out = []
    for name, dtype, per_step in OUT_FIELDS:
        if per_step:
            stacked = np.stack(steps[name], axis=1)
            out.append(np.ascontiguousarray(stacked[keep], dtype=dtype))
    out.append(length.reshape(n_tasks, n_episodes))
    out.append(ret.reshape(n_tasks, n_episodes))
    return tuple(out)


def _draw(rng, n_tasks, n_episodes, horizon, start_draws, low=0.0, high=1.0):
    """Start states ``rng.uniform(low, high, start_draws)`` (T, N, start_draws) and action
    uniforms ``rng.random(H)`` (T, N, H), drawn episode by episode in the documented order."""
    start = np.zeros((n_tasks, n_episodes, start_draws))
    u_act = np.empty((n_tasks, n_episodes, horizon))
    for i in range(n_tasks):
        for e in range(n_episodes):
            if start_draws:
                start[i, e] = rng.uniform(low, high, start_draws)
            u_act[i, e] = rng.random(horizon)
    return start, u_act


def cartpoles_rollout(env_params, params, policy_of_task, hidden, activation, n_episodes, horizon,
                      rng):
    """``n_episodes`` CartPole episodes of at most ``horizon`` steps on every task.

    Parameters
    ----------
    env_params : float64 (T, 5)           each task's physics (CartPolesBatch.params), T >= 1
    params : float64 (P,) or (n_policies, P), finite   MLP parameters (obs_dim 4, 2 actions)
    policy_of_task : int (T,)             in ``[0, n_policies)``: the policy of each task
    hidden : tuple of int;  activation : "tanh" or "relu"
    n_episodes, horizon : int >= 1
    rng : numpy.random.Generator

    Returns
    -------
    The ten output arrays (module docstring), obs_dim 4.
    """
    (env_params, params, policy_of_task, hidden, activation, n_episodes, horizon,
     layers) = check_cartpoles_rollout_args(env_params, params, policy_of_task, hidden, activation,
                                            n_episodes, horizon, rng)
    n_tasks, d = env_params.shape[0], _env.CARTPOLE_OBS_DIM
    state = rng.bit_generator.state
    try:
        start, u_act = _draw(rng, n_tasks, n_episodes, horizon, CARTPOLE_START_DRAWS,
                             _env.CARTPOLE_RESET_LOW, _env.CARTPOLE_RESET_HIGH)
        rows_params = np.repeat(env_params, n_episodes, axis=0)

        def step(states, actions):
            out = (np.empty_like(states), np.empty(states.shape[0]),
                   np.empty(states.shape[0], dtype=bool))
            _env.cartpoles_step(rows_params, states, actions, *out)
            return out

        return _run(step, d, start, u_act, params[policy_of_task], layers, activation, True)
    except FloatingPointError:
        rng.bit_generator.state = state
        raise


def point_navigation_rollout(goals, moves, params, policy_of_task, hidden, activation, n_episodes,
                             horizon, rng):
    """``n_episodes`` episodes of ``horizon`` steps on every PointNavigation task.

    Parameters
    ----------
    goals : float64 (T, 2)                each task's goal, T >= 1
    moves : float64 (A, 2)                the move of each action (PointNavigationBatch.moves)
    params : float64 (P,) or (n_policies, P), finite   MLP parameters (obs_dim 2, A actions)
    policy_of_task, hidden, activation, n_episodes, horizon, rng : as :func:`cartpoles_rollout`

    Returns
    -------
    The ten output arrays (module docstring), obs_dim 2; every episode has ``horizon`` steps.
    """
    (goals, moves, params, policy_of_task, hidden, activation, n_episodes, horizon,
     layers) = check_point_navigation_rollout_args(goals, moves, params, policy_of_task, hidden,
                                                   activation, n_episodes, horizon, rng)
    n_tasks, d = goals.shape[0], _env.POINT_OBS_DIM
    state = rng.bit_generator.state
    try:
        start, u_act = _draw(rng, n_tasks, n_episodes, horizon, 0)
        start = np.zeros((n_tasks, n_episodes, d))
        rows_goals = np.repeat(goals, n_episodes, axis=0)

        def step(states, actions):
            out = (np.empty_like(states), np.empty(states.shape[0]),
                   np.empty(states.shape[0], dtype=bool))
            _env.point_navigation_step(rows_goals, moves, states, actions, *out)
            return out

        return _run(step, d, start, u_act, params[policy_of_task], layers, activation, False)
    except FloatingPointError:
        rng.bit_generator.state = state
        raise
