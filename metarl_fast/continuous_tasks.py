"""Task families with continuous observations, stepped in compiled code (issue 16).

- :class:`PointNavigation`: the 2-D navigation of Finn et al. 2017 (MAML) with a discrete action
  set: ``n_directions`` moves of ``step_size`` plus "stay"; a goal per task; reward minus the
  distance to the goal.
- :class:`CartPoles`: Gymnasium's CartPole-v1 dynamics with per-task physical parameters.

``family.sample(n, rng)`` returns a batch (:class:`PointNavigationBatch`, :class:`CartPolesBatch`)
holding the per-task parameters as read-only float64 arrays, with ``n_tasks``, ``obs_dim``,
``n_actions`` and ``horizon``, and the two calls an environment needs:
``batch.reset_states(rng)`` -> float64 (n, obs_dim) start states and
``batch.step(states, actions)`` -> ``(next_states, rewards, terminated)``, every task one step
through the active backend's kernels (:mod:`metarl_fast._core.continuous`, twin
:mod:`metarl_fast.reference.continuous`, which documents the dynamics, the bounds on states and
parameters and the random draws).  Observation = state.  Episodes are truncated after ``horizon``
steps by the caller (the step kernels keep no time).

Example::

    import numpy as np
    from metarl_fast.continuous_tasks import CartPoles

    batch = CartPoles().sample(64, rng=0)
    rng = np.random.default_rng(1)
    states = batch.reset_states(rng)
    states, rewards, terminated = batch.step(states, rng.integers(0, 2, 64))
"""
import numbers

import numpy as np

from metarl_fast import _backend, _validate
from metarl_fast.reference import continuous as _spec
from metarl_fast.tasks import TaskDistribution, _read_only, as_generator

__all__ = ["PointNavigation", "PointNavigationBatch", "CartPoles", "CartPolesBatch"]


def _kernels():
    return _backend.active.continuous


def _task_indices(index, n_tasks):
    """int64 indices selected by ``index`` (int, slice or int array), at least one."""
    if isinstance(index, numbers.Integral) and not isinstance(index, (bool, np.bool_)):
        i = int(index)
        if not -n_tasks <= i < n_tasks:
            raise IndexError(f"task index {i} out of range for {n_tasks} tasks")
        return np.array([i % n_tasks])
    if isinstance(index, slice):
        idx = np.arange(n_tasks)[index]
    else:
        idx = _validate.int_array(index, "index", ndim=1, low=-n_tasks, high=n_tasks) % n_tasks
    if idx.size == 0:
        raise ValueError("a task batch needs at least one task: index selects none")
    return idx


class _ContinuousBatch:
    """What both batches share: sizes, indexing, and the Gymnasium-like reset/step pair."""

    obs_dim = None
    n_actions = None

    def __len__(self):
        return self.n_tasks

    def make_env(self, index=0):
        """Task ``index`` as an environment with Gymnasium's API, no Gymnasium needed
        (:class:`metarl_fast.continuous_env.ContinuousTaskEnv`)."""
        from metarl_fast.continuous_env import ContinuousTaskEnv

        return ContinuousTaskEnv(self, index)

    def as_gymnasium(self, index=0):
        """Task ``index`` as a ``gymnasium.Env`` (:func:`metarl_fast.continuous_env.as_gymnasium`)."""
        from metarl_fast.continuous_env import as_gymnasium

        return as_gymnasium(self, index)

    def _step_outputs(self, out):
        if out is None:
            n = self.n_tasks
            return np.empty((n, self.obs_dim)), np.empty(n), np.empty(n, dtype=bool)
        if not isinstance(out, tuple) or len(out) != 3:
            raise TypeError("out must be None or a tuple (out_states, out_rewards, out_terminated), "
                            f"got {type(out).__name__}")
        return out

    def step(self, states, actions, out=None):
        """Every task one step.

        Parameters
        ----------
        states : float64 (n_tasks, obs_dim)    the current states (finite, ``|s| <= 1e100``)
        actions : int (n_tasks,)               in ``[0, n_actions)``
        out : tuple, optional                  ``(out_states, out_rewards, out_terminated)``:
                                               float64 (n, obs_dim), float64 (n,), bool (n,)
                                               arrays to write (``out_states`` may be ``states``)

        Returns
        -------
        ``(next_states, rewards, terminated)``: float64 (n, obs_dim), float64 (n,), bool (n,).
        """
        out = self._step_outputs(out)
        self._step(states, actions, out)
        return out


class PointNavigationBatch(_ContinuousBatch):
    """``n`` 2-D navigation tasks: one goal per task, shared moves and horizon.

    Parameters
    ----------
    goals : float64 array-like (n, 2)   the goal of each task (|coordinate| <= 1e6), n >= 1
    horizon : int >= 1                  steps per episode
    step_size : float in (0, 1e6]       length of each move
    n_directions : int >= 1             moves in directions 2 pi k / n_directions (k = 0, 1, ...)

    Attributes: ``goals`` (read-only float64 (n, 2)), ``moves`` (read-only float64
    (n_actions, 2), :func:`metarl_fast.reference.continuous.point_navigation_moves`: action
    ``k < n_directions`` moves ``step_size`` in direction ``2 pi k / n_directions``, the last
    action stays), ``n_tasks``, ``obs_dim`` (2), ``n_actions`` (``n_directions + 1``),
    ``horizon``, ``step_size``, ``n_directions``.  Every episode starts at the origin.
    """

    obs_dim = _spec.POINT_OBS_DIM

    def __init__(self, goals, horizon=100, step_size=0.1, n_directions=8):
        goals = _spec.check_point_goals(goals)
        if goals.shape[0] < 1:
            raise ValueError("goals must hold at least one task, got shape (0, 2)")
        horizon = _validate.positive_int(horizon, "horizon")
        moves = _spec.point_navigation_moves(n_directions, step_size)
        self._init(np.array(goals, dtype=np.float64), horizon, float(step_size), int(n_directions), moves)

    def _init(self, goals, horizon, step_size, n_directions, moves):
        self.goals = _read_only(goals)
        self.moves = moves
        self.horizon = horizon
        self.step_size = step_size
        self.n_directions = n_directions
        self.n_tasks = goals.shape[0]
        self.n_actions = n_directions + 1

    @classmethod
    def _trusted(cls, goals, horizon, step_size, n_directions, moves):
        batch = cls.__new__(cls)
        batch._init(goals, horizon, step_size, n_directions, moves)
        return batch

    def reset_states(self, rng, out=None):
        """Start states: float64 (n_tasks, 2) zeros (``rng``, an int or Generator, is not drawn from)."""
        return _kernels().point_navigation_reset(self.goals, as_generator(rng), out)

    def _step(self, states, actions, out):
        _kernels().point_navigation_step(self.goals, self.moves, states, actions, *out)

    def __getitem__(self, index):
        """A batch of the tasks ``index`` selects (an int gives a batch of that one task)."""
        idx = _task_indices(index, self.n_tasks)
        return PointNavigationBatch._trusted(self.goals[idx], self.horizon, self.step_size,
                                             self.n_directions, self.moves)

    def __repr__(self):
        return (f"PointNavigationBatch(n_tasks={self.n_tasks}, obs_dim=2, n_actions={self.n_actions}, "
                f"horizon={self.horizon}, step_size={self.step_size!r})")


class PointNavigation(TaskDistribution):
    """2-D point navigation (Finn et al. 2017) with ``n_directions`` moves plus "stay".

    Each task has a goal drawn uniformly from the square ``[goal_low, goal_high]^2``
    (``rng.uniform(goal_low, goal_high, (n, 2))``); every episode starts at the origin and lasts
    ``horizon`` steps (nothing terminates); action ``k < n_directions`` moves ``step_size`` in
    direction ``2 pi k / n_directions`` (0: +x, then counter-clockwise), action ``n_directions``
    stays; the reward is minus the Euclidean distance from the position reached to the goal.
    Observation = position, float64 (2,).

    Parameters
    ----------
    horizon : int >= 1
    goal_low, goal_high : float, ``-1e6 <= goal_low <= goal_high <= 1e6``
    step_size : float in (0, 1e6]
    n_directions : int >= 1
    """

    obs_dim = _spec.POINT_OBS_DIM

    def __init__(self, horizon=100, goal_low=-0.5, goal_high=0.5, step_size=0.1, n_directions=8):
        self.horizon = _validate.positive_int(horizon, "horizon")
        bound = _spec.POINT_MAX_ABS_GOAL
        self.goal_low = _validate.finite_float(goal_low, "goal_low", low=-bound, high=bound)
        self.goal_high = _validate.finite_float(goal_high, "goal_high", low=-bound, high=bound)
        if self.goal_low > self.goal_high:
            raise ValueError(f"goal_low must be <= goal_high, got goal_low={self.goal_low} > "
                             f"goal_high={self.goal_high}")
        self.moves = _spec.point_navigation_moves(n_directions, step_size)
        self.step_size = float(step_size)
        self.n_directions = int(n_directions)
        self.n_actions = self.n_directions + 1

    def _entries_per_task(self):
        return self.obs_dim

    def _sample(self, n, rng):
        goals = rng.uniform(self.goal_low, self.goal_high, (n, 2))
        return PointNavigationBatch._trusted(goals, self.horizon, self.step_size, self.n_directions,
                                             self.moves)

    def __repr__(self):
        return (f"PointNavigation(horizon={self.horizon}, goal_low={self.goal_low!r}, "
                f"goal_high={self.goal_high!r}, step_size={self.step_size!r}, "
                f"n_directions={self.n_directions})")


class CartPolesBatch(_ContinuousBatch):
    """``n`` CartPole tasks, each with its own physics.

    Parameters
    ----------
    params : float64 array-like (n, 5)   columns ``gravity, masscart, masspole, length, force_mag``
                                         (``length`` is half the pole, as in Gymnasium), each
                                         within ``CARTPOLE_PARAM_LOW/HIGH`` of
                                         :mod:`metarl_fast.reference.continuous`; n >= 1
    horizon : int >= 1                   steps before truncation

    Attributes: ``params`` (read-only float64 (n, 5)), one read-only float64 (n,) array per
    column (``gravity``, ``masscart``, ``masspole``, ``length``, ``force_mag``), ``n_tasks``,
    ``obs_dim`` (4: x, x_dot, theta, theta_dot), ``n_actions`` (2: push left, push right),
    ``horizon``.  A state beyond the thresholds is absorbing: stepping it again pays 0.
    """

    obs_dim = _spec.CARTPOLE_OBS_DIM
    n_actions = _spec.CARTPOLE_N_ACTIONS

    def __init__(self, params, horizon=500):
        params = _spec.check_cartpoles_params(params)
        if params.shape[0] < 1:
            raise ValueError("params must hold at least one task, got shape (0, 5)")
        self._init(np.array(params, dtype=np.float64), _validate.positive_int(horizon, "horizon"))

    def _init(self, params, horizon):
        self.params = _read_only(params)
        self.horizon = horizon
        self.n_tasks = params.shape[0]
        for j, name in enumerate(_spec.CARTPOLE_PARAMS):
            setattr(self, name, _read_only(params[:, j].copy()))

    @classmethod
    def _trusted(cls, params, horizon):
        batch = cls.__new__(cls)
        batch._init(params, horizon)
        return batch

    def reset_states(self, rng, out=None):
        """Start states: float64 (n_tasks, 4), ``rng.uniform(-0.05, 0.05, (n, 4))``'s values
        (``rng`` an int seed or a Generator)."""
        return _kernels().cartpoles_reset(self.params, as_generator(rng), out)

    def _step(self, states, actions, out):
        _kernels().cartpoles_step(self.params, states, actions, *out)

    def __getitem__(self, index):
        """A batch of the tasks ``index`` selects (an int gives a batch of that one task)."""
        return CartPolesBatch._trusted(self.params[_task_indices(index, self.n_tasks)], self.horizon)

    def __repr__(self):
        return f"CartPolesBatch(n_tasks={self.n_tasks}, obs_dim=4, n_actions=2, horizon={self.horizon})"


def _param_range(value, name, low, high):
    """``value`` (a real x, meaning (x, x), or a pair (lo, hi)) as a checked float pair."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high) of real numbers or one real number, "
                        f"got {value!r}")
    lo = _validate.finite_float(value[0], f"{name}[0]", low=low, high=high)
    hi = _validate.finite_float(value[1], f"{name}[1]", low=low, high=high)
    if lo > hi:
        raise ValueError(f"{name} must be a range (low, high) with low <= high, got ({lo}, {hi})")
    return lo, hi


class CartPoles(TaskDistribution):
    """Gymnasium's CartPole-v1 with per-task physical parameters drawn uniformly from ranges.

    Dynamics, thresholds (12 degrees, 2.4), ``tau`` 0.02 (Euler), reward 1 per step including
    the terminating one and start states uniform in ``[-0.05, 0.05]^4`` are Gymnasium's; at its
    default parameters a step equals ``CartPoleEnv.step`` (its float64 state, to 1e-12: tested).
    The episode terminates when the pole falls or the cart leaves the track and is truncated after
    ``horizon`` steps.

    Each parameter is a range ``(low, high)`` (or one number x, the same as ``(x, x)``, which
    fixes it); the defaults are Gymnasium's values +-50%:

    =========  ==============  =========  ====================
    parameter  default range   Gymnasium  accepted values
    =========  ==============  =========  ====================
    gravity    (4.9, 14.7)     9.8        [0, 1000]
    masscart   (0.5, 1.5)      1.0        [0.001, 1000]
    masspole   (0.05, 0.15)    0.1        [0.001, 1000]
    length     (0.25, 0.75)    0.5        [0.001, 1000] (half the pole's length)
    force_mag  (5.0, 15.0)     10.0       [0, 1000]
    =========  ==============  =========  ====================

    ``sample(n, rng)`` draws ``rng.uniform(lows, highs, (n, 5))`` (row = task, columns in the
    order above).
    """

    obs_dim = _spec.CARTPOLE_OBS_DIM
    n_actions = _spec.CARTPOLE_N_ACTIONS

    def __init__(self, horizon=500, gravity=(4.9, 14.7), masscart=(0.5, 1.5), masspole=(0.05, 0.15),
                 length=(0.25, 0.75), force_mag=(5.0, 15.0)):
        self.horizon = _validate.positive_int(horizon, "horizon")
        given = (gravity, masscart, masspole, length, force_mag)
        ranges = [_param_range(v, name, lo, hi) for v, name, lo, hi in
                  zip(given, _spec.CARTPOLE_PARAMS, _spec.CARTPOLE_PARAM_LOW, _spec.CARTPOLE_PARAM_HIGH)]
        for name, r in zip(_spec.CARTPOLE_PARAMS, ranges):
            setattr(self, name, r)
        self._low = np.array([r[0] for r in ranges])
        self._high = np.array([r[1] for r in ranges])

    @classmethod
    def gymnasium_defaults(cls, horizon=500):
        """The family whose every task has Gymnasium's parameters (9.8, 1.0, 0.1, 0.5, 10.0)."""
        return cls(horizon, *_spec.CARTPOLE_DEFAULTS)

    def _entries_per_task(self):
        return len(_spec.CARTPOLE_PARAMS)

    def _sample(self, n, rng):
        params = rng.uniform(self._low, self._high, (n, len(_spec.CARTPOLE_PARAMS)))
        # low + (high - low) * u can round past high when low < high: keep every task within range
        np.clip(params, self._low, self._high, out=params)
        return CartPolesBatch._trusted(params, self.horizon)

    def __repr__(self):
        ranges = ", ".join(f"{name}={getattr(self, name)!r}" for name in _spec.CARTPOLE_PARAMS)
        return f"CartPoles(horizon={self.horizon}, {ranges})"
