"""Batched stepping of the continuous-observation task families in pure NumPy: the executable
specification of ``_core/continuous.pyx``.

Two families (public classes in :mod:`metarl_fast.continuous_tasks`), one row per task:

- **PointNavigation** (Finn et al. 2017, 2-D navigation with a discrete action set).  State =
  observation = position, float64 (n, 2).  Action ``a`` adds ``moves[a]`` (float64 (A, 2), see
  :func:`point_navigation_moves`); the reward is minus the Euclidean distance from the new
  position to the task's goal, ``-sqrt(dx * dx + dy * dy)``; nothing terminates.
- **CartPoles** (Gymnasium's CartPole-v1 with per-task physics).  State = observation =
  ``(x, x_dot, theta, theta_dot)``, float64 (n, 4); params float64 (n, 5), columns
  :data:`CARTPOLE_PARAMS`.  Euler integration with ``tau = 0.02`` in Gymnasium's arithmetic (same
  operations in the same order), reward 1.0 per step including the terminating one; terminated
  when ``|x| > 2.4`` or ``|theta| > 12 degrees`` after the step.  A state already beyond those
  thresholds is *absorbing*: stepping it leaves it unchanged, pays 0.0 and reports terminated
  (Gymnasium calls such a step undefined; it pays 0.0 too but keeps integrating).

Random draws: :func:`cartpoles_reset` draws ``rng.uniform(-0.05, 0.05, (n, 4))`` (4 uniforms per
task in task order); :func:`point_navigation_reset` draws nothing (every task starts at the
origin); the steps are deterministic.

Every function validates its arguments (shared by both backends: the compiled twin calls the same
checks when its own C-level checks fail).  Input arrays are float64 / integer array-likes, copied
once to C order if needed; outputs are caller-provided float64 / bool arrays of the exact shape,
C-contiguous and writeable, overlapping no input and no other output, except that ``out_states``
may be the ``states`` array itself (stepping in place).  A rejected call writes nothing.
"""
import math

import numpy as np

from metarl_fast import _validate

# -- PointNavigation ------------------------------------------------------------------------------
POINT_OBS_DIM = 2
# |goal coordinate| and step_size bounds, and the bound on every state entry of both families:
# within them no arithmetic of a step overflows.
POINT_MAX_ABS_GOAL = 1e6
POINT_MAX_STEP = 1e6
MAX_ABS_STATE = 1e100

# -- CartPoles (gymnasium.envs.classic_control.cartpole.CartPoleEnv) -------------------------------
CARTPOLE_OBS_DIM = 4
CARTPOLE_N_ACTIONS = 2
CARTPOLE_PARAMS = ("gravity", "masscart", "masspole", "length", "force_mag")
CARTPOLE_DEFAULTS = (9.8, 1.0, 0.1, 0.5, 10.0)  # Gymnasium's values ("length" is half the pole)
# Accepted values of each parameter (inclusive): masses and length bounded away from 0, gravity and
# force may be 0; the upper bound keeps every step finite for states within MAX_ABS_STATE.
CARTPOLE_PARAM_LOW = (0.0, 1e-3, 1e-3, 1e-3, 0.0)
CARTPOLE_PARAM_HIGH = (1e3, 1e3, 1e3, 1e3, 1e3)
CARTPOLE_TAU = 0.02
CARTPOLE_X_THRESHOLD = 2.4
CARTPOLE_THETA_THRESHOLD = 12 * 2 * math.pi / 360
CARTPOLE_RESET_LOW = -0.05
CARTPOLE_RESET_HIGH = 0.05

# the public kernels, the same names and signatures in both backends
KERNELS = ("point_navigation_moves", "point_navigation_reset", "point_navigation_step",
           "cartpoles_reset", "cartpoles_step")

_PARAM_LOW = np.array(CARTPOLE_PARAM_LOW)
_PARAM_HIGH = np.array(CARTPOLE_PARAM_HIGH)


# ---------------------------------------------------------------------------------------------
# Boundary checks shared by both backends
# ---------------------------------------------------------------------------------------------

def _float64_table(x, name, n_cols, n_rows=None):
    """``x`` as a C-contiguous float64 (n_rows, n_cols) array (copied once if needed), finite."""
    arr = _validate.float_array(x, name, ndim=2, dtype=np.float64)
    if arr.shape[1] != n_cols or (n_rows is not None and arr.shape[0] != n_rows):
        want = f"({'n' if n_rows is None else n_rows}, {n_cols})"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        row = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ValueError(f"{name} must be finite (row {row} holds NaN or inf)")
    return arr


def check_cartpoles_params(params, name="params"):
    """float64 (n, 5) C-contiguous, every column within CARTPOLE_PARAM_LOW/HIGH; returns it."""
    params = _float64_table(params, name, len(CARTPOLE_PARAMS))
    bad = (params < _PARAM_LOW) | (params > _PARAM_HIGH)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{name}[{i}, {j}] ({CARTPOLE_PARAMS[j]}) = {float(params[i, j])!r} is "
                         f"outside [{CARTPOLE_PARAM_LOW[j]}, {CARTPOLE_PARAM_HIGH[j]}]")
    return params


def check_point_goals(goals, name="goals"):
    """float64 (n, 2) C-contiguous, ``|goal| <= POINT_MAX_ABS_GOAL``; returns it."""
    goals = _float64_table(goals, name, POINT_OBS_DIM)
    if goals.size and np.abs(goals).max() > POINT_MAX_ABS_GOAL:
        raise ValueError(f"{name} must satisfy |goal| <= {POINT_MAX_ABS_GOAL:g}, "
                         f"got {float(np.abs(goals).max())!r}")
    return goals


def check_point_moves(moves, name="moves"):
    """float64 (A, 2) C-contiguous with A >= 1, ``|move| <= POINT_MAX_STEP``; returns it."""
    moves = _float64_table(moves, name, POINT_OBS_DIM)
    if moves.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one action, got shape {moves.shape}")
    if np.abs(moves).max() > POINT_MAX_STEP:
        raise ValueError(f"{name} must satisfy |move| <= {POINT_MAX_STEP:g}, "
                         f"got {float(np.abs(moves).max())!r}")
    return moves


def check_states(states, n_tasks, obs_dim, name="states"):
    """float64 (n_tasks, obs_dim) C-contiguous, every entry finite with ``|s| <= MAX_ABS_STATE``."""
    states = _validate.float_array(states, name, ndim=2, dtype=np.float64)
    if states.shape != (n_tasks, obs_dim):
        raise ValueError(f"{name} must have shape ({n_tasks}, {obs_dim}), got {states.shape}")
    ok = np.abs(states) <= MAX_ABS_STATE  # False for NaN
    if not ok.all():
        i, j = (int(v) for v in np.argwhere(~ok)[0])
        raise ValueError(f"{name}[{i}, {j}] = {float(states[i, j])!r}: states must be finite with "
                         f"|value| <= {MAX_ABS_STATE:g}")
    return states


def _check_no_overlap(outputs, inputs, states, out_states):
    """No output shares memory with an input or another output, except out_states is states."""
    for k, (out_name, out) in enumerate(outputs):
        for in_name, arr in inputs:
            if out_name == "out_states" and in_name == "states" and _same_buffer(out_states, states):
                continue
            if np.may_share_memory(out, arr):
                raise ValueError(f"{out_name} overlaps {in_name}: outputs must be separate arrays "
                                 f"(out_states may be states itself, to step in place)")
        for other_name, other in outputs[:k]:
            if np.may_share_memory(out, other):
                raise ValueError(f"{out_name} overlaps {other_name}: outputs must be separate arrays")


def _same_buffer(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.dtype == b.dtype)


def _check_out(out, shape, dtype, name):
    """A writeable, C-contiguous, aligned output array of this exact shape and dtype."""
    _validate.check_out(out, shape, dtype, name)
    if not out.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype (np.empty makes such arrays)")
    return out


def check_step_outputs(n_tasks, obs_dim, out_states, out_rewards, out_terminated, inputs):
    """The output arrays of a step: float64 (n, obs_dim), float64 (n,), bool (n,)."""
    _check_out(out_states, (n_tasks, obs_dim), np.float64, "out_states")
    _check_out(out_rewards, (n_tasks,), np.float64, "out_rewards")
    _check_out(out_terminated, (n_tasks,), np.bool_, "out_terminated")
    states = dict(inputs)["states"]
    _check_no_overlap((("out_states", out_states), ("out_rewards", out_rewards),
                       ("out_terminated", out_terminated)), inputs, states, out_states)


def check_point_navigation_step_args(goals, moves, states, actions, out_states, out_rewards,
                                     out_terminated):
    """Validated ``(goals, moves, states, actions)`` of :func:`point_navigation_step`."""
    goals = check_point_goals(goals)
    moves = check_point_moves(moves)
    n = goals.shape[0]
    states = check_states(states, n, POINT_OBS_DIM)
    actions = _validate.int_array(actions, "actions", ndim=1, length=n, low=0, high=moves.shape[0])
    check_step_outputs(n, POINT_OBS_DIM, out_states, out_rewards, out_terminated,
                       (("goals", goals), ("moves", moves), ("states", states), ("actions", actions)))
    return goals, moves, states, actions


def check_cartpoles_step_args(params, states, actions, out_states, out_rewards, out_terminated):
    """Validated ``(params, states, actions)`` of :func:`cartpoles_step`."""
    params = check_cartpoles_params(params)
    n = params.shape[0]
    states = check_states(states, n, CARTPOLE_OBS_DIM)
    actions = _validate.int_array(actions, "actions", ndim=1, length=n, low=0, high=CARTPOLE_N_ACTIONS)
    check_step_outputs(n, CARTPOLE_OBS_DIM, out_states, out_rewards, out_terminated,
                       (("params", params), ("states", states), ("actions", actions)))
    return params, states, actions


def check_reset_out(out, n_tasks, obs_dim):
    """``out`` (None: a new array) as a writeable C-contiguous float64 (n_tasks, obs_dim) array."""
    if out is None:
        return np.empty((n_tasks, obs_dim))
    return _check_out(out, (n_tasks, obs_dim), np.float64, "out")


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

def point_navigation_moves(n_directions, step_size):
    """The move of each action: float64 (n_directions + 1, 2), read-only.  Row ``k <
    n_directions`` is ``step_size * (cos(2 pi k / n_directions), sin(2 pi k / n_directions))``
    (NumPy's cos/sin of ``2 * pi * k / n_directions``), with entries below ``1e-15 * step_size``
    in magnitude set to 0 so that moves along the axes are exact; the last row (``"stay"``) is 0."""
    n_directions = _validate.positive_int(n_directions, "n_directions")
    step_size = _validate.finite_float(step_size, "step_size", low=0.0, high=POINT_MAX_STEP,
                                       low_open=True)
    _validate.check_table_size(n_directions + 1, f"point_navigation_moves(n_directions={n_directions})")
    angles = 2.0 * np.pi * np.arange(n_directions) / n_directions
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    unit[np.abs(unit) < 1e-15] = 0.0
    moves = np.zeros((n_directions + 1, 2))
    moves[:n_directions] = step_size * unit
    moves.setflags(write=False)
    return moves


def point_navigation_reset(goals, rng, out=None):
    """Start states of every task: float64 (n, 2) zeros (the origin) in ``out`` (returned).
    ``goals`` float64 (n, 2); ``rng`` a numpy.random.Generator, validated but not drawn from."""
    goals = check_point_goals(goals)
    _validate.check_rng(rng)
    out = check_reset_out(out, goals.shape[0], POINT_OBS_DIM)
    out[...] = 0.0
    return out


def point_navigation_step(goals, moves, states, actions, out_states, out_rewards, out_terminated):
    """One step of every task.

    Parameters
    ----------
    goals : float64 (n, 2)             the goal of each task
    moves : float64 (A, 2)             the move of each action (:func:`point_navigation_moves`)
    states : float64 (n, 2)            positions, finite, ``|s| <= MAX_ABS_STATE``
    actions : int (n,)                 in ``[0, A)``
    out_states : float64 (n, 2)        OUT: ``states + moves[actions]`` (may be ``states``)
    out_rewards : float64 (n,)         OUT: ``-sqrt(dx * dx + dy * dy)``, ``d = new state - goal``
    out_terminated : bool (n,)         OUT: all False
    """
    goals, moves, states, actions = check_point_navigation_step_args(
        goals, moves, states, actions, out_states, out_rewards, out_terminated)
    move = moves[actions]
    x = states[:, 0] + move[:, 0]
    y = states[:, 1] + move[:, 1]
    dx = x - goals[:, 0]
    dy = y - goals[:, 1]
    out_states[:, 0] = x
    out_states[:, 1] = y
    out_rewards[...] = -np.sqrt(dx * dx + dy * dy)
    out_terminated[...] = False


def cartpoles_reset(params, rng, out=None):
    """Start states of every task, float64 (n, 4) in ``out`` (returned): the values of
    ``rng.uniform(-0.05, 0.05, (n, 4))``.  ``params`` float64 (n, 5) (validated, not read)."""
    params = check_cartpoles_params(params)
    _validate.check_rng(rng)
    out = check_reset_out(out, params.shape[0], CARTPOLE_OBS_DIM)
    out[...] = rng.uniform(CARTPOLE_RESET_LOW, CARTPOLE_RESET_HIGH, out.shape)
    return out


def _beyond_thresholds(x, theta):
    """bool array: ``x`` or ``theta`` beyond Gymnasium's thresholds (2.4, 12 degrees)."""
    return ((x < -CARTPOLE_X_THRESHOLD) | (x > CARTPOLE_X_THRESHOLD)
            | (theta < -CARTPOLE_THETA_THRESHOLD) | (theta > CARTPOLE_THETA_THRESHOLD))


def cartpoles_step(params, states, actions, out_states, out_rewards, out_terminated):
    """One step of every task (Gymnasium's CartPoleEnv.step with each task's physics).

    Parameters
    ----------
    params : float64 (n, 5)            columns gravity, masscart, masspole, length, force_mag
    states : float64 (n, 4)            (x, x_dot, theta, theta_dot), ``|s| <= MAX_ABS_STATE``
    actions : int (n,)                 0 pushes left (-force_mag), 1 right (+force_mag)
    out_states : float64 (n, 4)        OUT: the next states (may be ``states``)
    out_rewards : float64 (n,)         OUT: 1.0, or 0.0 for a task already terminal (absorbing)
    out_terminated : bool (n,)         OUT: the next state is beyond the thresholds

    The arithmetic is Gymnasium's, operation for operation (and the compiled twin's):
    ``temp = (force + polemass_length * theta_dot**2 * sin) / total_mass`` and so on, with
    ``total_mass = masspole + masscart`` and ``polemass_length = masspole * length``.
    """
    params, states, actions = check_cartpoles_step_args(params, states, actions, out_states,
                                                        out_rewards, out_terminated)
    x, x_dot, theta, theta_dot = (states[:, j].copy() for j in range(CARTPOLE_OBS_DIM))
    gravity, masscart, masspole, length, force_mag = (params[:, j] for j in range(len(CARTPOLE_PARAMS)))
    absorbed = _beyond_thresholds(x, theta)
    force = np.where(actions == 1, force_mag, -force_mag)
    costheta = np.cos(theta)
    sintheta = np.sin(theta)
    total_mass = masspole + masscart
    polemass_length = masspole * length
    temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass
    thetaacc = (gravity * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * (costheta * costheta) / total_mass))
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    new = np.stack([x + CARTPOLE_TAU * x_dot, x_dot + CARTPOLE_TAU * xacc,
                    theta + CARTPOLE_TAU * theta_dot, theta_dot + CARTPOLE_TAU * thetaacc], axis=1)
    new[absorbed] = states[absorbed]
    out_states[...] = new
    out_rewards[...] = np.where(absorbed, 0.0, 1.0)
    out_terminated[...] = absorbed | _beyond_thresholds(new[:, 0], new[:, 2])
