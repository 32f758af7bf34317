"""Vectorised environments and fused rollouts over a :class:`~metarl_fast.tasks.TaskBatch`.

:class:`VecEnv` steps every environment of every task in one kernel call; :func:`rollout` runs
whole episodes -- policy sampling, environment steps, recording -- in one kernel call and returns a
:class:`Trajectories` (written into a reused :class:`RolloutWorkspace` with ``out=``, so large
rollouts do not allocate and page-fault their outputs at every call).  Both dispatch to the active
backend (``active.envs``); with the same Generator state the two backends give identical integers
and identical float64 rewards.  The order of random draws is documented in
:mod:`metarl_fast.reference.envs`.
"""
import contextlib
import numbers
import threading

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference.envs import ROLLOUT_OUT_FIELDS
from metarl_fast.tasks import Discrete, SeededSpace, Task, TaskBatch, _read_only, as_generator


def _as_batch(task_batch, name="task_batch"):
    if isinstance(task_batch, TaskBatch):
        return task_batch
    if isinstance(task_batch, Task):
        return task_batch.batch[[task_batch.index]]
    raise TypeError(f"{name} must be a metarl_fast.tasks.TaskBatch (or Task), got {type(task_batch).__name__}")


# ---------------------------------------------------------------------------------------------
# Policy tables
# ---------------------------------------------------------------------------------------------

def policy_logits_table(policy, n_states, n_actions, features=None):
    """Logits of every state, float64 (n_states, n_actions), for a tabular or linear softmax policy.

    ``features`` float (n_states, F): the feature row of each state for a
    :class:`~metarl_fast.policy.LinearSoftmaxPolicy` (default: one-hot, needing F == n_states).
    The logits are computed in the policy's dtype and then converted to float64, as
    :func:`metarl_fast.sample_actions` does.
    """
    if isinstance(policy, TabularSoftmaxPolicy):
        if (policy.n_states, policy.n_actions) != (n_states, n_actions):
            raise ValueError(
                f"policy has shape ({policy.n_states}, {policy.n_actions}) but the tasks have "
                f"{n_states} states and {n_actions} actions")
        if features is not None:
            raise ValueError("features are only used with a LinearSoftmaxPolicy")
        return np.asarray(policy.theta, dtype=np.float64)
    if isinstance(policy, LinearSoftmaxPolicy):
        if policy.n_actions != n_actions:
            raise ValueError(f"policy has {policy.n_actions} actions but the tasks have {n_actions}")
        if features is None:
            if policy.n_features != n_states:
                raise ValueError(
                    f"a LinearSoftmaxPolicy with {policy.n_features} features needs features= "
                    f"(one row per state, shape ({n_states}, {policy.n_features})); one-hot features "
                    f"need n_features == n_states == {n_states}")
            features = np.eye(n_states, dtype=policy.dtype)
        phi = np.asarray(features)
        if phi.ndim != 2 or phi.shape[0] != n_states:
            raise ValueError(f"features must have shape ({n_states}, {policy.n_features}), got {phi.shape}")
        return np.asarray(policy.logits(phi), dtype=np.float64)
    raise TypeError(
        f"policy must be a TabularSoftmaxPolicy or LinearSoftmaxPolicy (or a list of them, one per "
        f"task), got {type(policy).__name__}")


def action_tables(logits):
    """Per-state sampling tables from float64 logits (n_policies, S, A).

    Returns ``(cdf, logp)``: the running sums (left to right) of ``exp_nonpos(z)``, ``z`` = logits
    minus the row max -- the exact table :func:`metarl_fast.sample_actions` builds for a row --
    and the log-probabilities ``z - log(total)``, ``total`` the last running sum.  Rows with NaN,
    +inf or only -inf are rejected with a ValueError naming the policy and state.
    """
    x = np.ascontiguousarray(logits, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"logits must have shape (n_policies, n_states, n_actions), got {x.shape}")
    cdf, z = active.envs.action_cdf(x)
    # one numpy log for both backends (the compiled one never calls its own log)
    return cdf, np.subtract(z, np.log(cdf[..., -1:]), out=z)


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------

class _EpisodeCounts:
    """What any flat, task-major trajectory record derives from its ``terminated``,
    ``truncated`` and ``episode_length`` (T, N) arrays."""

    @property
    def done(self):
        """``terminated | truncated``, bool (n,)."""
        return self.terminated | self.truncated

    @property
    def n_tasks(self):
        return self.episode_length.shape[0]

    @property
    def n_episodes(self):
        """Episodes per task."""
        return self.episode_length.shape[1]


class Trajectories(_EpisodeCounts):
    """The steps of ``n_episodes`` episodes on each of ``n_tasks`` tasks, as flat arrays.

    Steps are ordered by task, then episode, then time; ``n`` = total number of steps.

    Attributes
    ----------
    obs : int64 (n,)            state in which the action was taken
    action : int64 (n,)
    reward : float64 (n,)       observed reward
    next_obs : int64 (n,)       state reached
    terminated : bool (n,)      the step entered a terminal state
    truncated : bool (n,)       the step reached the horizon in a non-terminal state
    logp : float64 (n,)         log-probability of ``action`` under the behaviour policy
    task_id : int64 (n,)        index of the task in the batch
    episode_length : int64 (n_tasks, n_episodes)
    episode_return : float64 (n_tasks, n_episodes)   undiscounted, rewards summed in step order
    episode_start : int64 (n_tasks * n_episodes + 1,) offsets: episode ``k = task * n_episodes + e``
        is ``slice(episode_start[k], episode_start[k + 1])``

    From ``rollout(..., out=workspace)`` every array is a view of the :class:`RolloutWorkspace`,
    overwritten by its next use.
    """

    _FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp", "task_id")

    def __init__(self, obs, action, reward, next_obs, terminated, truncated, logp, task_id,
                 episode_length, episode_return):
        self.obs, self.action, self.reward, self.next_obs = obs, action, reward, next_obs
        self.terminated, self.truncated, self.logp, self.task_id = terminated, truncated, logp, task_id
        self.episode_length, self.episode_return = episode_length, episode_return
        self.episode_start = active.envs.episode_offsets(episode_length)

    @classmethod
    def _with_offsets(cls, arrays, episode_start):
        """Trajectories of the kernel's ten output arrays with its episode offsets written into
        the prefix of ``episode_start`` (int64, room for n_tasks * n_episodes + 1 entries)."""
        traj = cls.__new__(cls)
        (traj.obs, traj.action, traj.reward, traj.next_obs, traj.terminated, traj.truncated, traj.logp,
         traj.task_id, traj.episode_length, traj.episode_return) = arrays
        n_eps = traj.episode_length.size
        start = episode_start[:n_eps + 1]
        start[0] = 0
        np.cumsum(traj.episode_length.reshape(-1), out=start[1:])
        traj.episode_start = start
        return traj

    @property
    def n_steps(self):
        return self.obs.shape[0]

    @property
    def step_in_episode(self):
        """Time index of each step within its episode, int64 (n,)."""
        return active.envs.episode_steps(self.episode_length)[1]

    def episode(self, task, e):
        """The slice of the flat arrays holding episode ``e`` of task ``task``."""
        k = int(task) * self.n_episodes + int(e)
        if not (0 <= task < self.n_tasks and 0 <= e < self.n_episodes):
            raise IndexError(f"no episode ({task}, {e}) in {self.n_tasks} tasks x {self.n_episodes} episodes")
        return slice(int(self.episode_start[k]), int(self.episode_start[k + 1]))

    def __len__(self):
        return self.n_steps

    def __repr__(self):
        return f"Trajectories(n_tasks={self.n_tasks}, n_episodes={self.n_episodes}, n_steps={self.n_steps})"


class RolloutWorkspace:
    """Output arrays that :func:`rollout` reuses from call to call (``rollout(..., out=workspace)``).

    A rollout allocates about 50 bytes of outputs per step.  With glibc's default allocator,
    arrays that large are returned to the OS when freed (and always mapped afresh above its
    32 MiB mmap ceiling), so every call page-faults them in again.  A workspace owns them once,
    at their largest size, and every call with it writes into the same memory.

    Parameters
    ----------
    n_tasks, n_episodes, horizon : int >= 1
        The largest rollout the workspace holds: any call with ``n_tasks x n_episodes x horizon``
        steps at most ``max_steps`` and ``n_tasks x n_episodes`` at most ``max_episodes`` fits
        (other batches, fewer episodes or shorter horizons included).

    Attributes
    ----------
    max_steps : int                    n_tasks * n_episodes * horizon
    max_episodes : int                 n_tasks * n_episodes
    obs, action, next_obs, task_id : int64 (max_steps,)
    reward, logp : float64 (max_steps,)
    terminated, truncated : bool (max_steps,)
    episode_length : int64 (max_episodes,)
    episode_return : float64 (max_episodes,)
    episode_start : int64 (max_episodes + 1,)

    The :class:`Trajectories` a call returns holds views of the prefixes of these arrays: the
    next call with the same workspace overwrites them (copy what must outlive it), and so does a
    call that fails part way (Ctrl-C).  The arrays must stay the ones the workspace made
    (replaced, reshaped or made read-only, the next call raises ValueError).  A workspace serves
    one call at a time: a second thread's call while one runs raises RuntimeError.
    """

    def __init__(self, n_tasks, n_episodes, horizon):
        n_tasks = _validate.positive_int(n_tasks, "n_tasks")
        n_episodes = _validate.positive_int(n_episodes, "n_episodes")
        horizon = _validate.positive_int(horizon, "horizon")
        self.max_episodes = n_tasks * n_episodes
        self.max_steps = self.max_episodes * horizon
        _validate.check_table_size(self.max_steps,
                                   f"RolloutWorkspace({n_tasks}, {n_episodes}, {horizon}): "
                                   f"n_tasks x n_episodes x horizon steps")
        self._owned = {field: np.empty(self._size(field), dtype=dtype) for field, dtype in _OWNED_DTYPES.items()}
        self.__dict__.update(self._owned)
        self._out = tuple(self._owned[field] for field, _, _ in ROLLOUT_OUT_FIELDS)
        self._busy = threading.Lock()

    def _arrays(self, n_steps, n_episodes):
        """The ten kernel output arrays (``reference.envs.ROLLOUT_OUT_FIELDS`` order) and
        ``episode_start``, after checking they are still the workspace's own and the rollout of
        ``n_steps`` steps in ``n_episodes`` episodes fits."""
        if n_steps > self.max_steps or n_episodes > self.max_episodes:
            raise ValueError(
                f"out (a RolloutWorkspace of {self.max_steps:,} steps, {self.max_episodes:,} episodes) "
                f"is too small for this rollout of {n_steps:,} steps (n_tasks x n_episodes x horizon) "
                f"in {n_episodes:,} episodes; make a larger RolloutWorkspace(n_tasks, n_episodes, horizon)")
        for field, owned in self._owned.items():
            arr = self.__dict__.get(field)
            if arr is not owned:
                raise ValueError(f"out.{field} is not the array the RolloutWorkspace made (it was "
                                 f"replaced); make a new RolloutWorkspace")
            size = self._size(field)
            if (arr.shape != (size,) or arr.dtype != _OWNED_DTYPES[field] or not arr.flags.c_contiguous
                    or not arr.flags.aligned or not arr.flags.writeable):
                raise ValueError(f"out.{field} was changed (it must stay a writeable, C-contiguous "
                                 f"{_OWNED_DTYPES[field]} array of shape ({size},)); make a new "
                                 f"RolloutWorkspace")
        return self._out, self._owned["episode_start"]

    def _size(self, field):
        if field == "episode_start":
            return self.max_episodes + 1
        return self.max_episodes if field.startswith("episode_") else self.max_steps

    @contextlib.contextmanager
    def _exclusive(self):
        acquired = self._busy.acquire(blocking=False)
        if not acquired:
            raise RuntimeError("rollout(out=workspace) called while another thread's rollout is "
                               "using this RolloutWorkspace; give each thread its own")
        try:
            yield
        finally:
            self._busy.release()

    def __repr__(self):
        return f"RolloutWorkspace(max_steps={self.max_steps}, max_episodes={self.max_episodes})"


# the dtype of every array a RolloutWorkspace owns
_OWNED_DTYPES = {field: np.dtype(dtype) for field, dtype, _ in ROLLOUT_OUT_FIELDS}
_OWNED_DTYPES["episode_start"] = np.dtype(np.int64)


def rollout(policy, task_batch, n_episodes, rng, *, buffer=None, features=None, out=None):
    """Run ``n_episodes`` episodes of ``policy`` on every task of ``task_batch``, in one kernel call.

    Parameters
    ----------
    policy : TabularSoftmaxPolicy or LinearSoftmaxPolicy, or a list of them (one per task, e.g.
        task-adapted policies).  The per-state action CDF table is computed once per call.
    task_batch : TaskBatch (or a single Task)
    n_episodes : int >= 1, episodes per task
    rng : numpy.random.Generator (or int seed)
    buffer : optional replay buffer; every transition is written with one
        ``buffer.add_batch(obs, action, reward, next_obs, terminated, truncated=..., task_id=...,
        logp=...)`` call after the episodes are generated.
    features : float (S, F), optional, for a LinearSoftmaxPolicy (default one-hot)
    out : RolloutWorkspace, optional
        Write the steps into the workspace's arrays instead of allocating new ones: the same
        results, bit for bit, as a call without it from the same ``rng`` state.  The returned
        Trajectories then holds views of the workspace, overwritten by its next use.

    Returns
    -------
    Trajectories
    """
    batch = _as_batch(task_batch)
    rng = as_generator(rng)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    S, A, T = batch.n_states, batch.n_actions, batch.n_tasks
    if isinstance(policy, (list, tuple)):
        if len(policy) != T:
            raise ValueError(f"got {len(policy)} policies for {T} tasks")
        logits = np.stack([policy_logits_table(p, S, A, features) for p in policy])
        policy_of_task = np.arange(T, dtype=np.int64)
    else:
        logits = policy_logits_table(policy, S, A, features)[None]
        policy_of_task = np.zeros(T, dtype=np.int64)
    if buffer is not None and not callable(getattr(buffer, "add_batch", None)):
        raise TypeError(f"buffer must have an add_batch method, got {type(buffer).__name__}")
    if out is not None and not isinstance(out, RolloutWorkspace):
        raise TypeError(f"out must be a metarl_fast.rollout.RolloutWorkspace or None, got {type(out).__name__}")
    cdf, logp = action_tables(logits)
    if out is None:
        traj = Trajectories(*active.envs.rollout(batch.tables, cdf, logp, policy_of_task, n_episodes, rng))
    else:
        with out._exclusive():
            arrays, episode_start = out._arrays(T * n_episodes * batch.horizon, T * n_episodes)
            result = active.envs.rollout(batch.tables, cdf, logp, policy_of_task, n_episodes, rng,
                                         out=arrays)
            traj = Trajectories._with_offsets(result, episode_start)
    if buffer is not None:
        buffer.add_batch(traj.obs, traj.action, traj.reward, traj.next_obs, traj.terminated,
                         truncated=traj.truncated, task_id=traj.task_id, logp=traj.logp)
    return traj


# ---------------------------------------------------------------------------------------------
# VecEnv
# ---------------------------------------------------------------------------------------------

AUTORESET_SAME_STEP = "SameStep"  # gymnasium.vector.AutoresetMode.SAME_STEP.value


class MultiDiscrete(SeededSpace):
    """Gymnasium's ``MultiDiscrete(nvec)`` (start 0, int64) without the dependency: the batched
    space of a :class:`VecEnv` where Gymnasium is not installed.

    ``nvec`` int64 (k,), each >= 1: element ``i`` lies in ``[0, nvec[i])``.  ``sample()`` is
    ``(np_random.random(k) * nvec).astype(int64)``, Gymnasium's formula, from the space's own
    stream (seedable with ``seed(seed)`` as :class:`~metarl_fast.tasks.Discrete`), or from ``rng``.
    """

    def __init__(self, nvec, seed=None):
        nvec = _validate.int_array(nvec, "nvec", ndim=1)
        if nvec.size == 0 or nvec.min() < 1:
            raise ValueError(f"nvec must be a non-empty array of ints >= 1, got {nvec}")
        self.nvec = _read_only(np.array(nvec, dtype=np.int64))
        self.shape = self.nvec.shape
        self.dtype = np.dtype(np.int64)
        self.start = _read_only(np.zeros(self.shape, dtype=np.int64))
        self._np_random = None
        if seed is not None:
            self.seed(seed)

    def contains(self, x):
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        return bool(isinstance(x, np.ndarray) and x.shape == self.shape and x.dtype.kind in "iu"
                    and np.all(x >= 0) and np.all(x < self.nvec))

    __contains__ = contains

    def sample(self, rng=None):
        """int64 (k,): from ``rng`` if given (Generator, int seed or SeedSequence), else from
        :attr:`np_random`."""
        rng = self.np_random if rng is None else as_generator(rng)
        return (rng.random(self.shape) * self.nvec).astype(np.int64)

    def __eq__(self, other):
        return isinstance(other, MultiDiscrete) and np.array_equal(other.nvec, self.nvec)

    def __repr__(self):
        return f"MultiDiscrete({self.nvec.tolist()})"


def _gymnasium_vec_class():
    """:class:`metarl_fast.gym_env.GymnasiumVecEnv` if Gymnasium can be imported, else None."""
    try:
        import gymnasium  # noqa: F401 - first: the module below may be imported already
    except ImportError:
        return None
    from metarl_fast.gym_env import GymnasiumVecEnv

    return GymnasiumVecEnv


class VecEnv:
    """All environments of all tasks of a batch, stepped together in one kernel call, with
    Gymnasium's vector API.

    Environment ``k`` runs task ``k // n_envs_per_task`` (``task_of_env``).  Observations are
    state indices (int64).  Where Gymnasium is importable, ``VecEnv(...)`` is a
    ``gymnasium.vector.VectorEnv`` (an instance of the subclass
    :class:`metarl_fast.gym_env.GymnasiumVecEnv`; Gymnasium is imported then, never by
    ``import metarl_fast``).

    - ``reset(seed=None, options=None) -> (obs int64 (num_envs,), infos {})``;
    - ``step(actions) -> (obs int64, rewards float64, terminated bool, truncated bool, infos)``,
      arrays (num_envs,); ``actions`` ints (num_envs,) in ``[0, n_actions)``.

    One random stream drives every environment: ``np_random`` (a ``numpy.random.Generator``),
    set by ``reset(seed=...)`` -- an int or a SeedSequence seeds a new Generator
    (``numpy.random.default_rng(seed)``, which is Gymnasium's ``seeding.np_random(seed)``), a
    Generator is used as is (shared, not copied); without a seed the stream continues (fresh
    entropy on first use).  The kernels draw from it in the order documented in
    :mod:`metarl_fast.reference.envs`, so the same seed gives the same results as the fused
    :func:`rollout` and the single environments' kernels.

    Auto-reset is Gymnasium's SAME_STEP mode (``metadata["autoreset_mode"]``): when an
    environment's episode ends in :meth:`step` (terminated, or truncated at the horizon), the
    returned ``obs`` for it is already the start state of its next episode, and the state it
    reached is in ``infos["final_obs"]``, where ``infos["_final_obs"]`` (bool (num_envs,)) is
    True; ``infos["final_info"]`` is ``{}`` with the same mask ``infos["_final_info"]``.  These
    keys are present only in steps where some episode ended.  Unlike SyncVectorEnv's object array,
    ``infos["final_obs"]`` is an int64 (num_envs,) array holding the state every environment
    reached (``obs`` where the mask is False); the same array is the attribute ``final_obs``
    after every step.

    Spaces: ``single_observation_space`` / ``single_action_space`` are ``Discrete(n_states)`` /
    ``Discrete(n_actions)``, ``observation_space`` / ``action_space`` ``MultiDiscrete`` of
    ``num_envs`` of them (``gymnasium.spaces`` where Gymnasium is importable, else
    :class:`metarl_fast.tasks.Discrete` and :class:`MultiDiscrete`, and ``metadata["autoreset_mode"]``
    is then the string ``"SameStep"``, the value of Gymnasium's enum member).

    Parameters
    ----------
    task_batch : TaskBatch (or Task)
    n_envs_per_task : int >= 1
    copy : bool, default True
        As Gymnasium's ``SyncVectorEnv(copy=...)``: True returns fresh arrays from :meth:`reset`
        and :meth:`step`; False returns the same arrays every call, overwritten by the next
        (no allocation per step: what a loop that reads each step's results before the next
        needs).  ``infos["final_obs"]`` and :attr:`final_obs` follow the same rule.

    A batch of a continuous-observation family (``PointNavigation``, ``CartPoles``) gives a
    :class:`metarl_fast.continuous_env.ContinuousVecEnv` (the same API, float observations).

    Thread safety: a VecEnv holds the states of its environments and is not safe to step from two
    threads at once; such use is detected and raises RuntimeError (give each thread its own).
    """

    metadata = {"autoreset_mode": AUTORESET_SAME_STEP}
    render_mode = None
    spec = None
    closed = False

    def __new__(cls, *args, **kwargs):
        if cls is VecEnv and args:
            from metarl_fast.continuous_meta import is_continuous_batch

            if is_continuous_batch(args[0]):  # float observations: the continuous families' own
                from metarl_fast.continuous_env import ContinuousVecEnv

                return ContinuousVecEnv(*args, **kwargs)
        if cls is VecEnv:
            gymnasium_class = _gymnasium_vec_class()
            if gymnasium_class is not None:
                cls = gymnasium_class
        return super().__new__(cls)

    def __init__(self, task_batch, n_envs_per_task=1, *, copy=True):
        if not isinstance(copy, (bool, np.bool_)):
            raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
        self.copy = bool(copy)
        self.tasks = _as_batch(task_batch)
        self.n_envs_per_task = _validate.positive_int(n_envs_per_task, "n_envs_per_task")
        _validate.check_table_size(self.tasks.n_tasks * self.n_envs_per_task,
                                   f"VecEnv(n_envs_per_task={self.n_envs_per_task}) of "
                                   f"{self.tasks.n_tasks} tasks would hold n_tasks x n_envs_per_task states")
        self.n_envs = self.num_envs = self.tasks.n_tasks * self.n_envs_per_task
        # read by the kernels as task indices: a view that cannot be made writeable again
        self.task_of_env = _read_only(np.repeat(np.arange(self.tasks.n_tasks, dtype=np.int64),
                                                self.n_envs_per_task))
        self._busy = threading.Lock()
        (self.single_observation_space, self.single_action_space, self.observation_space,
         self.action_space) = self._make_spaces(self.tasks.n_states, self.tasks.n_actions, self.n_envs)
        self._state = np.zeros(self.n_envs, dtype=np.int64)
        self._elapsed = np.zeros(self.n_envs, dtype=np.int64)
        self.final_obs = np.zeros(self.n_envs, dtype=np.int64)
        # the arrays step() returns when copy is False (and reset()'s observations)
        self._outputs = (np.empty(self.n_envs, dtype=np.int64), np.empty(self.n_envs),
                         np.empty(self.n_envs, dtype=bool), np.empty(self.n_envs, dtype=bool),
                         self.final_obs, np.empty(self.n_envs, dtype=bool),
                         np.empty(self.n_envs, dtype=bool))
        self._started = False
        self._np_random = None
        self._np_random_seed = None

    @staticmethod
    def _make_spaces(n_states, n_actions, n_envs):
        """(single observation, single action, batched observation, batched action) spaces."""
        return (Discrete(n_states), Discrete(n_actions), MultiDiscrete(np.full(n_envs, n_states)),
                MultiDiscrete(np.full(n_envs, n_actions)))

    @property
    def state(self):
        """Current state of each environment (a copy), int64 (n_envs,)."""
        return self._state.copy()

    @property
    def elapsed(self):
        """Steps taken in the current episode of each environment (a copy), int64 (n_envs,)."""
        return self._elapsed.copy()

    @property
    def np_random(self):
        """The ``numpy.random.Generator`` the environments draw from (fresh entropy on first use)."""
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
        """The int seed of :attr:`np_random` (-1 if it was given as a Generator), as Gymnasium's."""
        self.np_random  # noqa: B018 - makes the stream (and its seed) on first use
        return self._np_random_seed

    @property
    def unwrapped(self):
        return self

    def reset(self, seed=None, options=None):
        """Start a new episode everywhere: ``(obs int64 (num_envs,), infos {})``.

        ``seed``: None (continue the stream), an int >= 0 or a SeedSequence (a new
        ``numpy.random.default_rng(seed)``), or a ``numpy.random.Generator`` (used as is).
        ``options``: a dict or None (no option is read).
        """
        if seed is not None:
            rng = _validate.as_generator(seed, "seed")
            seed_value = int(seed) if isinstance(seed, numbers.Integral) else -1
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        with self._exclusive("reset"):
            if seed is not None:
                self._np_random, self._np_random_seed = rng, seed_value
            active.envs.vec_reset(self.tasks.tables, self.task_of_env, self._state, self._elapsed,
                                  self.np_random)
            self._started = True
            if self.copy:
                return self._state.copy(), {}
            obs = self._outputs[0]
            obs[...] = self._state
            return obs, {}

    @contextlib.contextmanager
    def _exclusive(self, what):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"VecEnv.{what}() called while another thread is using this VecEnv; "
                               f"a VecEnv is not thread-safe: give each thread its own")
        try:
            yield
        finally:
            self._busy.release()

    def step(self, actions):
        """Step every environment with ``actions`` (ints (num_envs,) in ``[0, n_actions)``).

        Returns ``(obs int64, rewards float64, terminated bool, truncated bool, infos dict)``,
        arrays (num_envs,); see the class docstring for the same-step auto-reset and ``infos``.
        Raises RuntimeError before :meth:`reset`; a rejected call changes nothing.
        """
        if not self._started:
            raise RuntimeError("VecEnv.step() called before reset()")
        n = self.n_envs
        if self.copy:
            obs = np.empty(n, dtype=np.int64)
            rewards = np.empty(n)
            terminated = np.empty(n, dtype=bool)
            truncated = np.empty(n, dtype=bool)
            final_obs = np.empty(n, dtype=np.int64)
        else:
            obs, rewards, terminated, truncated, final_obs, ended, ended_info = self._outputs
        with self._exclusive("step"):
            active.envs.vec_step(self.tasks.tables, self.task_of_env, self._state, self._elapsed,
                                 actions, self._np_random, obs, rewards, terminated, truncated, final_obs)
            self.final_obs = final_obs
        infos = {}
        if np.count_nonzero(terminated) or np.count_nonzero(truncated):  # (cheaper than any())
            if self.copy:
                ended = terminated | truncated
                ended_info = ended.copy()
            else:
                np.logical_or(terminated, truncated, out=ended)
                ended_info[...] = ended
            infos = {"final_obs": final_obs, "_final_obs": ended, "final_info": {},
                     "_final_info": ended_info}
        return obs, rewards, terminated, truncated, infos

    def close(self, **kwargs):
        """Nothing to release (no subprocesses, no windows); marks the VecEnv ``closed``."""
        self.closed = True

    def __repr__(self):
        copy = "" if self.copy else ", copy=False"
        return f"VecEnv({self.tasks!r}, n_envs_per_task={self.n_envs_per_task}{copy})"
