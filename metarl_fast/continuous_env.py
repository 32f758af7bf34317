"""Gymnasium-API environments of the continuous-observation task families (issue 16).

- :class:`ContinuousTaskEnv`: one task of a :class:`~metarl_fast.continuous_tasks.PointNavigationBatch`
  or :class:`~metarl_fast.continuous_tasks.CartPolesBatch` with Gymnasium's ``Env`` API, no
  Gymnasium needed; :func:`as_gymnasium` gives the same environment as a real ``gymnasium.Env``.
- :class:`ContinuousVecEnv`: every task (``n_envs_per_task`` environments each) with Gymnasium's
  vector API, all environments stepped in one kernel call per step, same-step auto-reset as
  :class:`metarl_fast.rollout.VecEnv`.

Observation = state, float64 (obs_dim,); actions are ints in ``[0, n_actions)``.  Observation
bounds (:func:`observation_bounds`): PointNavigation is unbounded, ``(-inf, inf)`` per entry;
CartPoles has Gymnasium's CartPole bounds ``+-(4.8, inf, 24 degrees, inf)`` (twice the
termination thresholds on ``x`` and ``theta``).  As in Gymnasium, the observation of the step
that terminates can lie beyond them only for extreme physics (a cart or pole fast enough to
cross the margin in one step of 0.02 s).

Episodes: CartPoles terminates when the pole falls or the cart leaves the track; PointNavigation
never terminates; both are truncated after the batch's ``horizon`` steps (``truncated`` is True
only when the step did not terminate, as in :mod:`metarl_fast.tasks`).

Random draws: the environments draw only at reset, exactly as the batch's ``reset_states``
(CartPoles: ``rng.uniform(-0.05, 0.05, (n, 4))``, 4 uniforms per environment in environment
order; PointNavigation: nothing, every episode starts at the origin).  Gymnasium is never
imported by importing this module; the spaces are Gymnasium's where it can be imported.
"""
import contextlib
import numbers
import threading

import numpy as np

from metarl_fast import _validate
from metarl_fast.continuous_tasks import CartPolesBatch, _ContinuousBatch
from metarl_fast.reference import continuous as _spec
from metarl_fast.rollout import AUTORESET_SAME_STEP, MultiDiscrete
from metarl_fast.tasks import Discrete, SeededSpace, _read_only, as_generator

__all__ = ["Box", "ContinuousTaskEnv", "ContinuousVecEnv", "as_gymnasium", "observation_bounds"]

_GYM_HINT = "needs Gymnasium: pip install gymnasium (the 'gym' extra)"


def _check_batch(batch):
    if not isinstance(batch, _ContinuousBatch):
        raise TypeError("batch must be a metarl_fast.continuous_tasks.PointNavigationBatch or "
                        f"CartPolesBatch, got {type(batch).__name__}")
    return batch


def observation_bounds(batch):
    """``(low, high)``: float64 (obs_dim,) read-only bounds of the observations of ``batch``'s tasks.

    PointNavigation: ``(-inf, inf)`` for both coordinates.  CartPoles: Gymnasium's CartPole bounds
    ``high = (2 * 2.4, inf, 2 * 12 degrees, inf)`` (in float64), ``low = -high``.
    """
    _check_batch(batch)
    if isinstance(batch, CartPolesBatch):
        high = np.array([2 * _spec.CARTPOLE_X_THRESHOLD, np.inf, 2 * _spec.CARTPOLE_THETA_THRESHOLD,
                         np.inf])
    else:
        high = np.full(batch.obs_dim, np.inf)
    return _read_only(-high), _read_only(high)


# ---------------------------------------------------------------------------------------------
# Spaces
# ---------------------------------------------------------------------------------------------

class Box(SeededSpace):
    """Gymnasium's float64 ``Box(low, high)`` without the dependency: the observation space of the
    environments here where Gymnasium cannot be imported.

    ``low``, ``high``: float64 array-likes of one shape, ``low <= high`` (entries may be infinite).
    ``contains(x)``: ``x`` an array (or list) of that shape, float or int dtype, within the bounds.
    ``sample()`` uses Gymnasium's distributions (uniform where bounded on both sides, exponential
    where bounded on one, standard normal where unbounded) from the space's own stream
    (``seed(seed)``), or from ``rng``; it does not promise Gymnasium's exact draws.
    """

    def __init__(self, low, high, seed=None):
        low = np.array(low, dtype=np.float64)
        high = np.array(high, dtype=np.float64)
        if low.shape != high.shape:
            raise ValueError(f"low and high must have the same shape, got {low.shape} and {high.shape}")
        if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
            raise ValueError("low and high must be non-NaN with low <= high everywhere")
        self.low, self.high = _read_only(low), _read_only(high)
        self.shape = low.shape
        self.dtype = np.dtype(np.float64)
        self._np_random = None
        if seed is not None:
            self.seed(seed)

    def contains(self, x):
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        return bool(isinstance(x, np.ndarray) and x.shape == self.shape and x.dtype.kind in "fiu"
                    and np.can_cast(x.dtype, self.dtype)
                    and np.all(x >= self.low) and np.all(x <= self.high))

    __contains__ = contains

    def sample(self, rng=None):
        """float64 array of :attr:`shape`: from ``rng`` if given (Generator, int seed or
        SeedSequence), else from :attr:`np_random`."""
        rng = self.np_random if rng is None else as_generator(rng)
        below, above = np.isfinite(self.low), np.isfinite(self.high)
        out = np.empty(self.shape)
        for mask, draw in ((~below & ~above, lambda m: rng.normal(size=m.sum())),
                           (below & ~above, lambda m: self.low[m] + rng.exponential(size=m.sum())),
                           (~below & above, lambda m: self.high[m] - rng.exponential(size=m.sum())),
                           (below & above, lambda m: rng.uniform(self.low[m], self.high[m]))):
            out[mask] = draw(mask)
        return out

    def __eq__(self, other):
        return (isinstance(other, Box) and np.array_equal(other.low, self.low)
                and np.array_equal(other.high, self.high))

    def __repr__(self):
        return f"Box({self.low.tolist()}, {self.high.tolist()}, {self.shape}, float64)"


def _import_gymnasium(what):
    """The gymnasium module, or None; ``what`` (a caller's name) makes a missing one an ImportError."""
    try:
        import gymnasium
    except ImportError as err:
        if what is None:
            return None
        raise ImportError(f"{what} {_GYM_HINT}") from err
    return gymnasium


def _spaces(batch, n_envs=None):
    """(single observation, single action) spaces, plus the batched pair when ``n_envs`` is given:
    Gymnasium's where it is importable, else :class:`Box`, :class:`~metarl_fast.tasks.Discrete`
    and :class:`~metarl_fast.rollout.MultiDiscrete`."""
    low, high = observation_bounds(batch)
    gymnasium = _import_gymnasium(None)
    if gymnasium is not None:
        single = (gymnasium.spaces.Box(low, high, dtype=np.float64),
                  gymnasium.spaces.Discrete(batch.n_actions))
        if n_envs is None:
            return single
        from gymnasium.vector.utils import batch_space

        return single + tuple(batch_space(space, n_envs) for space in single)
    single = (Box(low, high), Discrete(batch.n_actions))
    if n_envs is None:
        return single
    return single + (Box(np.tile(low, (n_envs, 1)), np.tile(high, (n_envs, 1))),
                     MultiDiscrete(np.full(n_envs, batch.n_actions)))


class _SeededStream:
    """``np_random`` / ``np_random_seed`` as Gymnasium's ``Env`` keeps them (``_np_random``,
    ``_np_random_seed``), and the ``seed`` argument of ``reset``."""

    _np_random = None
    _np_random_seed = None

    @property
    def np_random(self):
        """The ``numpy.random.Generator`` the resets draw from (fresh entropy on first use)."""
        if self._np_random is None:
            sequence = np.random.SeedSequence()
            self._np_random, self._np_random_seed = np.random.default_rng(sequence), sequence.entropy
        return self._np_random

    @np_random.setter
    def np_random(self, value):
        self._np_random = _validate.check_rng(value, "np_random")
        self._np_random_seed = -1

    @property
    def np_random_seed(self):
        """The int seed of :attr:`np_random` (-1 if it was given as a Generator or SeedSequence)."""
        self.np_random  # noqa: B018 - makes the stream (and its seed) on first use
        return self._np_random_seed

    @property
    def unwrapped(self):
        return self

    @staticmethod
    def _check_reset_args(seed, options):
        """``(Generator or None, int seed)`` for ``reset(seed, options)``; validates both."""
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        if seed is None:
            return None, None
        rng = as_generator(seed, "seed")  # an int: Gymnasium's seeding.np_random(seed) stream
        return rng, (int(seed) if isinstance(seed, numbers.Integral) else -1)


# ---------------------------------------------------------------------------------------------
# One task
# ---------------------------------------------------------------------------------------------

class ContinuousTaskEnv(_SeededStream):
    """Task ``index`` of a continuous task batch as an environment with Gymnasium's API, no
    Gymnasium needed (:func:`as_gymnasium` gives the same environment as a ``gymnasium.Env``).

    - ``reset(seed=None, options=None) -> (obs float64 (obs_dim,), {})``: the start state drawn as
      ``batch[index].reset_states(np_random)`` draws it.  ``seed``: an int >= 0 or a SeedSequence
      seeds a new ``np_random`` (``numpy.random.default_rng(seed)``, Gymnasium's convention), a
      Generator is used as is (shared, not copied); None continues the stream (fresh entropy on
      first use).  ``options``: a dict or None (nothing is read).
    - ``step(action) -> (obs float64 (obs_dim,), reward float, terminated bool, truncated bool, {})``
      with ``action`` an int in ``[0, n_actions)``: one step of the batch's kernel.  ``truncated``
      is True when the step reaches the horizon without terminating.  Stepping before
      :meth:`reset` or after the episode ended raises RuntimeError; a rejected action changes
      nothing.

    Spaces: ``observation_space`` a float64 Box with :func:`observation_bounds`, ``action_space``
    ``Discrete(n_actions)`` (``gymnasium.spaces`` where Gymnasium is importable, else
    :class:`Box` and :class:`metarl_fast.tasks.Discrete`).

    Parameters
    ----------
    batch : PointNavigationBatch or CartPolesBatch
    index : int, default 0     the task, ``-n_tasks <= index < n_tasks``
    """

    metadata = {"render_modes": []}
    render_mode = None
    spec = None

    def __init__(self, batch, index=0):
        _check_batch(batch)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -batch.n_tasks <= index < batch.n_tasks:
            raise ValueError(f"index must be in [-{batch.n_tasks}, {batch.n_tasks}) for a batch of "
                             f"{batch.n_tasks} tasks, got {index}")
        self.batch = batch
        self.index = int(index) % batch.n_tasks
        self.task = batch[self.index]  # a batch of this one task: the kernels step it
        self.horizon = batch.horizon
        self.observation_space, self.action_space = _spaces(batch)
        self._state = np.zeros((1, batch.obs_dim))
        self._reward = np.zeros(1)
        self._terminated = np.zeros(1, dtype=bool)
        self._elapsed = 0
        self._started = False
        self._done = False

    @property
    def elapsed(self):
        """Steps taken in the current episode (int)."""
        return self._elapsed

    def reset(self, seed=None, options=None):
        """Start an episode: ``(obs float64 (obs_dim,), {})``; see the class docstring."""
        rng, seed_value = self._check_reset_args(seed, options)
        if rng is not None:
            self._np_random, self._np_random_seed = rng, seed_value
        self.task.reset_states(self.np_random, out=self._state)
        self._elapsed = 0
        self._started = True
        self._done = False
        return self._state[0].copy(), {}

    def step(self, action):
        """``(obs float64 (obs_dim,), reward float, terminated bool, truncated bool, {})``."""
        if not self._started:
            raise RuntimeError("step() called before reset()")
        if self._done:
            raise RuntimeError("the episode is over (terminated or truncated); call reset() first")
        if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
            action = action.item()
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, numbers.Integral):
            raise TypeError(f"action must be an int, got {type(action).__name__}")
        if not 0 <= action < self.task.n_actions:
            raise ValueError(f"action out of range: {action}, must be in [0, {self.task.n_actions})")
        self.task.step(self._state, np.array([action], dtype=np.int64),
                       out=(self._state, self._reward, self._terminated))
        self._elapsed += 1
        terminated = bool(self._terminated[0])
        truncated = (not terminated) and self._elapsed >= self.horizon
        self._done = terminated or truncated
        return self._state[0].copy(), float(self._reward[0]), terminated, truncated, {}

    def close(self):
        """Nothing to release."""

    def __repr__(self):
        return f"{type(self).__name__}({self.batch!r}, index={self.index})"


def _gymnasium_env_class(what="as_gymnasium()"):
    """:class:`GymnasiumContinuousTaskEnv` (made on first use); ImportError without Gymnasium."""
    cls = globals().get("GymnasiumContinuousTaskEnv")
    if cls is None:
        gymnasium = _import_gymnasium(what)

        class GymnasiumContinuousTaskEnv(ContinuousTaskEnv, gymnasium.Env):
            """:class:`ContinuousTaskEnv` as a ``gymnasium.Env`` (what :func:`as_gymnasium`
            returns): the same reset, step, spaces and random draws."""

        cls = _publish(GymnasiumContinuousTaskEnv)
    return cls


def _publish(cls):
    """Make a class built on first use a module attribute (so that pickle finds it)."""
    cls.__module__ = __name__
    cls.__qualname__ = cls.__name__
    globals()[cls.__name__] = cls
    return cls


def as_gymnasium(batch, index=0):
    """Task ``index`` of ``batch`` as a ``gymnasium.Env`` (an instance of a subclass of both
    ``gymnasium.Env`` and :class:`ContinuousTaskEnv`); ImportError when Gymnasium is not
    installed (``pip install gymnasium``)."""
    return _gymnasium_env_class()(batch, index)


# ---------------------------------------------------------------------------------------------
# Every task, vectorised
# ---------------------------------------------------------------------------------------------

class ContinuousVecEnv(_SeededStream):
    """Every task of a continuous task batch, ``n_envs_per_task`` environments each, with
    Gymnasium's vector API; all environments step in one kernel call.

    Environment ``k`` runs task ``k // n_envs_per_task`` (``task_of_env``): the environments are
    the tasks of ``env_batch = batch[task_of_env]``, whose ``step`` advances them all at once.
    Where Gymnasium is importable, ``ContinuousVecEnv(...)`` is a ``gymnasium.vector.VectorEnv``
    (an instance of the subclass ``GymnasiumContinuousVecEnv``, made on first use).

    - ``reset(seed=None, options=None) -> (obs float64 (num_envs, obs_dim), {})``;
    - ``step(actions) -> (obs float64 (num_envs, obs_dim), rewards float64 (num_envs,),
      terminated bool (num_envs,), truncated bool (num_envs,), infos)``; ``actions`` ints
      (num_envs,) in ``[0, n_actions)``.  Raises RuntimeError before :meth:`reset`; a rejected
      call changes nothing.

    One random stream, ``np_random``, drives every reset, set by ``reset(seed=...)`` as in
    :class:`metarl_fast.rollout.VecEnv` (int or SeedSequence: ``numpy.random.default_rng(seed)``;
    Generator: used as is; None: the stream continues).  :meth:`reset` draws the start states of
    all environments with ``env_batch.reset_states(np_random)``; an auto-reset draws those of the
    environments whose episode ended, in environment order, with ``env_batch[ended]``'s
    ``reset_states`` -- the draws of single :class:`ContinuousTaskEnv`\\ s sharing that Generator
    and reset in environment order.

    Auto-reset is Gymnasium's SAME_STEP mode (``metadata["autoreset_mode"]``): when an
    environment's episode ends in :meth:`step` (terminated, or truncated at the horizon), its
    returned ``obs`` is already the start state of its next episode, and the state it reached is
    in ``infos["final_obs"]``, float64 (num_envs, obs_dim) holding the state every environment
    reached (equal to ``obs`` where no episode ended), with ``infos["_final_obs"]`` the bool
    (num_envs,) mask of ended episodes; ``infos["final_info"]`` is ``{}`` with the same mask
    ``infos["_final_info"]``.  These keys are present only in steps where some episode ended; the
    ``final_obs`` array is also the attribute :attr:`final_obs` after every step.

    Spaces: ``single_observation_space`` a float64 Box (obs_dim,) with :func:`observation_bounds`,
    ``single_action_space`` ``Discrete(n_actions)``, ``observation_space`` the Box
    (num_envs, obs_dim) of them and ``action_space`` ``MultiDiscrete`` (num_envs,) (Gymnasium's
    spaces where it is importable, else :class:`Box`, :class:`metarl_fast.tasks.Discrete`,
    :class:`metarl_fast.rollout.MultiDiscrete`).

    Parameters
    ----------
    batch : PointNavigationBatch or CartPolesBatch
    n_envs_per_task : int >= 1
    copy : bool, default True
        True returns fresh arrays from :meth:`reset` and :meth:`step`; False returns the same
        arrays every call, overwritten by the next (as ``SyncVectorEnv(copy=False)``), the
        ``infos`` arrays and :attr:`final_obs` included.

    Thread safety: the environment holds its states and is not safe to use from two threads at
    once; such use is detected and raises RuntimeError (give each thread its own).
    """

    metadata = {"autoreset_mode": AUTORESET_SAME_STEP}
    render_mode = None
    spec = None
    closed = False

    def __new__(cls, *args, **kwargs):
        if cls is ContinuousVecEnv and _import_gymnasium(None) is not None:
            cls = _gymnasium_vec_class()
        return super().__new__(cls)

    def __init__(self, batch, n_envs_per_task=1, *, copy=True):
        _check_batch(batch)
        if not isinstance(copy, (bool, np.bool_)):
            raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
        self.copy = bool(copy)
        self.n_envs_per_task = _validate.positive_int(n_envs_per_task, "n_envs_per_task")
        _validate.check_table_size(batch.n_tasks * self.n_envs_per_task * batch.obs_dim,
                                   f"ContinuousVecEnv(n_envs_per_task={self.n_envs_per_task}) of "
                                   f"{batch.n_tasks} tasks would hold n_tasks x n_envs_per_task states")
        self.tasks = batch
        self.n_envs = self.num_envs = batch.n_tasks * self.n_envs_per_task
        self.obs_dim, self.horizon = batch.obs_dim, batch.horizon
        self.task_of_env = _read_only(np.repeat(np.arange(batch.n_tasks, dtype=np.int64),
                                                self.n_envs_per_task))
        self.env_batch = batch[self.task_of_env]
        (self.single_observation_space, self.single_action_space, self.observation_space,
         self.action_space) = _spaces(batch, self.n_envs)
        n, d = self.n_envs, self.obs_dim
        self._busy = threading.Lock()
        self._state = np.zeros((n, d))
        self._elapsed = np.zeros(n, dtype=np.int64)
        self.final_obs = np.zeros((n, d))
        # the arrays step() returns when copy is False (and reset()'s observations)
        self._outputs = (np.empty((n, d)), np.empty(n), np.empty(n, dtype=bool), np.empty(n, dtype=bool),
                         self.final_obs, np.empty(n, dtype=bool), np.empty(n, dtype=bool))
        self._started = False

    @property
    def state(self):
        """Current state of each environment (a copy), float64 (num_envs, obs_dim)."""
        return self._state.copy()

    @property
    def elapsed(self):
        """Steps taken in the current episode of each environment (a copy), int64 (num_envs,)."""
        return self._elapsed.copy()

    @contextlib.contextmanager
    def _exclusive(self, what):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"ContinuousVecEnv.{what}() called while another thread is using it; "
                               f"it is not thread-safe: give each thread its own")
        try:
            yield
        finally:
            self._busy.release()

    def reset(self, seed=None, options=None):
        """Start a new episode everywhere: ``(obs float64 (num_envs, obs_dim), {})``; ``seed`` and
        ``options`` as in :class:`ContinuousTaskEnv`."""
        rng, seed_value = self._check_reset_args(seed, options)
        with self._exclusive("reset"):
            if rng is not None:
                self._np_random, self._np_random_seed = rng, seed_value
            self.env_batch.reset_states(self.np_random, out=self._state)
            self._elapsed[...] = 0
            self._started = True
            if self.copy:
                return self._state.copy(), {}
            obs = self._outputs[0]
            obs[...] = self._state
            return obs, {}

    def step(self, actions):
        """Step every environment with ``actions`` (ints (num_envs,) in ``[0, n_actions)``); see
        the class docstring for the return values, the same-step auto-reset and ``infos``."""
        if not self._started:
            raise RuntimeError("ContinuousVecEnv.step() called before reset()")
        n, d = self.n_envs, self.obs_dim
        if self.copy:
            obs, rewards = np.empty((n, d)), np.empty(n)
            terminated, truncated = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
            final_obs = np.empty((n, d))
        else:
            obs, rewards, terminated, truncated, final_obs, ended, ended_info = self._outputs
        with self._exclusive("step"):
            # validates actions (naming them) before writing anything
            self.env_batch.step(self._state, actions, out=(final_obs, rewards, terminated))
            self._elapsed += 1
            np.greater_equal(self._elapsed, self.horizon, out=truncated)
            truncated &= ~terminated
            self._state[...] = final_obs
            ended_any = bool(np.count_nonzero(terminated) or np.count_nonzero(truncated))
            if ended_any:
                if self.copy:
                    ended = terminated | truncated
                    ended_info = ended.copy()
                else:
                    np.logical_or(terminated, truncated, out=ended)
                    ended_info[...] = ended
                which = np.flatnonzero(ended)
                self._state[which] = self.env_batch[which].reset_states(self.np_random)
                self._elapsed[which] = 0
            obs[...] = self._state
            self.final_obs = final_obs
        infos = {}
        if ended_any:
            infos = {"final_obs": final_obs, "_final_obs": ended, "final_info": {},
                     "_final_info": ended_info}
        return obs, rewards, terminated, truncated, infos

    def close(self, **kwargs):
        """Nothing to release; marks the environment ``closed``."""
        self.closed = True

    def __repr__(self):
        copy = "" if self.copy else ", copy=False"
        return f"ContinuousVecEnv({self.tasks!r}, n_envs_per_task={self.n_envs_per_task}{copy})"


def _gymnasium_vec_class():
    """``GymnasiumContinuousVecEnv`` (made on first use); ImportError without Gymnasium."""
    cls = globals().get("GymnasiumContinuousVecEnv")
    if cls is None:
        gymnasium = _import_gymnasium("ContinuousVecEnv as a gymnasium.vector.VectorEnv")

        class GymnasiumContinuousVecEnv(ContinuousVecEnv, gymnasium.vector.VectorEnv):
            """:class:`ContinuousVecEnv` as a ``gymnasium.vector.VectorEnv`` (what
            ``ContinuousVecEnv(...)`` builds where Gymnasium is importable), with
            ``metadata["autoreset_mode"] = gymnasium.vector.AutoresetMode.SAME_STEP``."""

            metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}

        cls = _publish(GymnasiumContinuousVecEnv)
    return cls
