"""Task distributions for meta-RL, all represented as batches of finite tabular MDPs.

Every family samples a :class:`TaskBatch`: the parameters of ``n`` tasks as arrays, so one compiled
stepping kernel (:mod:`metarl_fast._core.envs`, twin :mod:`metarl_fast.reference.envs`) serves all
of them.  A batch of ``n`` tasks with ``S`` states and ``A`` actions holds

- ``P``        float64 (n, S, A, S)  transition probabilities (rows sum to 1 within 1e-8);
- ``R``        float64 (n, S, A)     mean reward of taking ``a`` in ``s``;
- ``start``    float64 (n, S)        initial state distribution;
- ``terminal`` bool    (n, S)        entering one of these states ends the episode;
- ``horizon``  int                   maximum steps per episode (shared by the batch);
- ``reward_noise``: how the observed reward is drawn around ``R``:
  ``"none"`` (reward = R), ``"gaussian"`` (R + reward_std * N(0, 1)), ``"bernoulli"``
  (1.0 with probability R, else 0.0) or ``"transition"`` (reward = ``reward_next[s, a, s']``,
  float64 (n, S, A, S), deterministic given the transition; then ``R`` is its mean under ``P``).

Families (each ``dist.sample(n, rng)`` is reproducible from a ``numpy.random.Generator`` or int):

- :class:`BernoulliBandits` (Duan et al. 2016, RL^2): one state, arm means ``p ~ U[0, 1]``;
- :class:`TabularMDPs` (Duan et al. 2016): ``R ~ N(1, 1)``, reward noise N(0, 1),
  ``P(.|s, a) ~ Dirichlet(1, ..., 1)``, start in state 0;
- :class:`GridNavigation`: a discrete analogue of the 2-D navigation of Finn et al. 2017 (MAML);
- :class:`Chain`: a chain whose rewarded action in each state varies between tasks;
- :class:`FromGymnasium`: toy-text Gymnasium environments (e.g. FrozenLake with random maps);
- :class:`TabularFamily`: a custom family from fixed arrays or a sampler function, e.g.::

      import numpy as np
      from metarl_fast.tasks import TabularFamily

      P = np.zeros((2, 3, 2, 3)); P[..., 0] = 1.0          # two tasks, always back to state 0
      R = np.random.default_rng(0).normal(size=(2, 3, 2))
      family = TabularFamily(P=P, R=R, horizon=5)         # sample() picks among the given tasks
      batch = family.sample(16, rng=0)

      def sampler(n, rng):                                 # or: any function returning arrays
          P = rng.dirichlet(np.ones(3), size=(n, 3, 2))
          return dict(P=P, R=rng.normal(size=(n, 3, 2)), horizon=5, reward_noise="gaussian")
      batch = TabularFamily(sampler=sampler).sample(16, rng=0)

``batch[i]`` is a :class:`Task`: ``task.model()`` returns its exact :class:`metarl_fast.mdp.MDPModel`
and ``task.make_env()`` an environment with Gymnasium's protocol (``task.as_gymnasium()`` a real
``gymnasium.Env`` when Gymnasium is installed).

Random draws of a single environment (fixed order, shared with :class:`metarl_fast.rollout.VecEnv`):
``reset`` draws one ``rng.random()`` for the start state unless every task of the batch starts in a
fixed state; ``step`` draws the reward noise (``standard_normal()`` for gaussian, ``random()`` for
bernoulli, nothing otherwise) and then one ``random()`` for the next state unless every transition
of the batch is deterministic.  Sampling from a distribution ``p`` with a uniform ``u`` is inverse
CDF: the first ``j`` with ``u * c[-1] < c[j]``, ``c`` the left-to-right running sum of ``p``.
"""
import collections
import functools
import numbers

import numpy as np

from metarl_fast import _validate
from metarl_fast.mdp import MDPModel

REWARD_NOISES = ("none", "gaussian", "bernoulli", "transition")
# Integer codes of reward_noise passed to the kernels (index into REWARD_NOISES).
REWARD_NONE, REWARD_GAUSSIAN, REWARD_BERNOULLI, REWARD_TRANSITION = range(4)

_ROW_TOL = 1e-8


as_generator = _validate.as_generator


def _float_table(x, name, shape):
    if isinstance(x, np.ndarray) and x.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got {_validate.got(x)}")
    try:
        arr = np.array(x, dtype=np.float64)  # always a private copy
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array ({err})") from None
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return arr


def _check_distributions(p, name, what):
    """Every row along the last axis of ``p`` is >= 0 and sums to 1 within 1e-8."""
    if p.size == 0:
        return
    sums = p.sum(axis=-1)
    bad = (np.abs(sums - 1.0) > _ROW_TOL) | (p.min(axis=-1) < 0)
    if bad.any():
        idx = tuple(int(v) for v in np.argwhere(bad)[0])
        labels = ", ".join(f"{k}={v}" for k, v in zip(what, idx))
        row = p[idx]
        reason = "has a negative entry" if row.min() < 0 else "does not sum to 1"
        raise ValueError(
            f"{name} row ({labels}) {reason}: sum {float(sums[idx])!r}, min {float(row.min())!r} "
            f"(tolerance {_ROW_TOL})"
        )


def _certain_outcomes(probs):
    """(True if every row of ``probs`` has exactly one non-zero entry, that entry's index per row)."""
    nonzero = probs > 0
    deterministic = bool(np.all(nonzero.sum(axis=-1) == 1))
    return deterministic, nonzero.argmax(axis=-1).astype(np.int64)


def _start_at_zero(n, S):
    start = np.zeros((n, S))
    start[:, 0] = 1.0
    return start


@functools.lru_cache(maxsize=32)
def _shared_full(n, value):
    """A read-only float64 (n,) array of ``value``, shared between batches."""
    return _read_only(np.full(n, value))


@functools.lru_cache(maxsize=32)
def _shared_defaults(n, S):
    """Read-only tables every generated batch of ``n`` tasks x ``S`` states starting in state 0
    without terminal states has in common, shared between batches (nothing writes to them):
    (start (n, S), its running sums, start_state (n,), terminal (n, S) all False)."""
    start = _read_only(_start_at_zero(n, S))
    return (start, _read_only(np.cumsum(start, axis=-1)), _read_only(np.zeros(n, dtype=np.int64)),
            _read_only(np.zeros((n, S), dtype=bool)))


def padded_cdf_rows(cdf):
    """Running-sum rows (..., m) laid out for the compiled kernels' blocked search: (..., L + 1)
    holding the first m - 1 sums, +inf up to L = m - 1 rounded up to a multiple of 4 (never <= a
    target), then the total at index L.  Read-only float64."""
    m = cdf.shape[-1]
    L = (m - 1 + 3) // 4 * 4
    out = np.full(cdf.shape[:-1] + (L + 1,), np.inf)
    out[..., :m - 1] = cdf[..., :m - 1]
    out[..., L] = cdf[..., m - 1]
    out.setflags(write=False)
    return out


def _read_only(arr):
    """``arr`` as a zero-copy view whose WRITEABLE flag cannot be set again (its buffer is a
    read-only memoryview): tables the compiled kernels trust stay as they were validated.  An
    array already viewed that way is returned as it is."""
    base = arr.base
    if type(base) is memoryview and base.readonly:
        return arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview) and base.readonly:
        return arr
    return np.asarray(memoryview(np.ascontiguousarray(arr)).toreadonly())


# placeholders of the tables a batch does not need (the kernels never read them)
_NO_CDF = _read_only(np.ones((1, 1, 1, 1)))
_NO_CDF_PADDED = _read_only(padded_cdf_rows(_NO_CDF))
_NO_REWARD_NEXT = _read_only(np.zeros((1, 1, 1, 1)))


_ENV_FIELDS = ("n_tasks", "n_states", "n_actions", "horizon", "trans_cdf", "trans_cdf_padded",
               "has_terminal", "next_state", "stochastic_transitions", "reward_mean", "reward_kind",
               "reward_std", "reward_next", "start_cdf", "start_state", "stochastic_start", "terminal")


class EnvTables(collections.namedtuple("EnvTables", _ENV_FIELDS)):
    """Kernel-facing, read-only tables of a :class:`TaskBatch` (built once per batch): an
    immutable named tuple of arrays that cannot be made writeable (the kernels trust them).

    Attributes
    ----------
    n_tasks, n_states, n_actions, horizon : int
    trans_cdf : float64 (n, S, A, S)   running sums of ``P`` along the last axis (a (1, 1, 1, 1)
        placeholder when ``stochastic_transitions`` is False)
    trans_cdf_padded : float64 (n, S, A, L + 1)  ``padded_cdf_rows(trans_cdf)`` for the compiled
        kernels
    has_terminal : bool                False if no task has a terminal state (fixed-length episodes)
    next_state : int64 (n, S, A)       the certain next state (used when ``stochastic_transitions`` is False)
    stochastic_transitions : bool      False if every row of ``P`` has exactly one non-zero entry
    reward_mean : float64 (n, S, A)    ``R`` (the success probability for bernoulli rewards)
    reward_kind : int                  index into ``REWARD_NOISES``
    reward_std : float64 (n,)          gaussian noise scale per task
    reward_next : float64 (n, S, A, S) rewards of transitions (shape (1, 1, 1, 1) unless kind is "transition")
    start_cdf : float64 (n, S)         running sums of ``start``
    start_state : int64 (n,)           the certain start state (used when ``stochastic_start`` is False)
    stochastic_start : bool
    terminal : uint8 (n, S)
    """

    __slots__ = ()

    def __new__(cls, batch):
        n, S, A = batch.n_tasks, batch.n_states, batch.n_actions
        if batch._next_state is not None:  # a next-state table: deterministic, no dense P is built
            det_trans, next_state = True, batch._next_state
        elif batch._stochastic:  # a family whose rows are stochastic by construction: no scan of P
            det_trans, next_state = False, np.zeros((n, S, A), dtype=np.int64)
        else:
            det_trans, next_state = _certain_outcomes(batch.P)
        # deterministic batches (e.g. GridNavigation) never search a CDF: keep no copy of P's size
        if not det_trans and batch._trans_cdfs is not None:
            trans_cdf, trans_cdf_padded = batch._trans_cdfs
        elif not det_trans:
            from metarl_fast._backend import active  # here: the kernel modules import this one
            trans_cdf, trans_cdf_padded = active.envs.transition_cdfs(batch.P)
        else:
            trans_cdf, trans_cdf_padded = _NO_CDF, _NO_CDF_PADDED
        reward_next = batch._reward_next if batch._reward_next is not None else _NO_REWARD_NEXT
        start_cdf = (batch._start_cdf if batch._start_cdf is not None
                     else np.cumsum(batch._start, axis=-1))
        if batch._start_state is not None:  # a family's fixed start state, known by construction
            det_start, start_state = True, batch._start_state
        else:
            det_start, start_state = _certain_outcomes(batch._start)
        terminal = batch._terminal
        # a family's all-False table is known to be one (while the batch still holds it)
        has_terminal = terminal is not batch._no_terminal and bool(terminal.any())
        # the kernels read raw pointers: every table C-contiguous, and none can be made writeable
        # (a batch's own arrays already are so; the ones built here are made so)
        return super().__new__(
            cls, n, S, A, batch._horizon, _kernel_table(trans_cdf), _kernel_table(trans_cdf_padded),
            has_terminal, _kernel_table(next_state), not det_trans, _kernel_table(batch._R),
            REWARD_NOISES.index(batch._reward_noise), _kernel_table(batch._reward_std),
            _kernel_table(reward_next), _kernel_table(start_cdf), _kernel_table(start_state),
            not det_start, _kernel_table(terminal.view(np.uint8)))  # bool and uint8: same bytes


def _kernel_table(arr):
    """``arr`` C-contiguous and frozen (see :func:`_read_only`); cheap when it already is."""
    if type(arr.base) is memoryview:  # made by _read_only: frozen, and contiguous
        return arr
    return _read_only(np.ascontiguousarray(arr))


class TaskBatch:
    """``n`` finite tabular tasks with shared state/action counts and horizon, stored as arrays.

    Parameters
    ----------
    P : array (n, S, A, S)         transition probabilities; each row >= 0 and sums to 1 (tol 1e-8)
    R : array (n, S, A)            mean rewards (ignored and recomputed for ``reward_noise="transition"``)
    horizon : int >= 1
    next_state : int array (n, S, A), optional
                                   deterministic transitions as a next-state table, instead of ``P``
                                   (give exactly one of the two); ``batch.P`` is then built on first
                                   use (a one-hot (n, S, A, S) array) for code that asks for it
    start : array (n, S), optional initial distributions (default: state 0)
    terminal : bool array (n, S), optional (default: none)
    reward_noise : {"none", "gaussian", "bernoulli", "transition"}
    reward_std : float or array (n,), >= 0, used by "gaussian" (default 1.0)
    reward_next : array (n, S, A, S), required for "transition"
    name : str, a label for ``repr``

    All arrays are copied to read-only float64/bool/int64 arrays.  ``batch[i]`` is a :class:`Task`;
    ``batch[indices]`` (a slice or an integer array) is a sub-batch.  ``batch.info`` holds
    per-task parameters of the family that drew it (e.g. ``info["goal"]`` of GridNavigation).
    ``batch.next_state`` is the next-state table when every transition is deterministic and the
    batch was built from one (else None).
    """

    def __init__(self, P=None, R=None, horizon=None, *, next_state=None, start=None, terminal=None,
                 reward_noise="none", reward_std=1.0, reward_next=None, name="TaskBatch"):
        if (P is None) == (next_state is None):
            raise ValueError("give exactly one of P (n, S, A, S) and next_state (n, S, A)")
        if next_state is not None:
            next_state = _validate.int_array(next_state, "next_state", ndim=3)
            n, S, A = next_state.shape
            if n < 1 or S < 1 or A < 1:
                raise ValueError(f"next_state must have shape (n_tasks, S, A) with n_tasks, S, A >= 1, "
                                 f"got {next_state.shape}")
            outside = (next_state < 0) | (next_state >= S)
            if outside.any():
                idx = tuple(int(v) for v in np.argwhere(outside)[0])
                raise ValueError(f"next_state[{idx[0]}, {idx[1]}, {idx[2]}] = {int(next_state[idx])} is "
                                 f"not a state in [0, {S})")
            next_state = np.array(next_state, dtype=np.int64)  # a private copy
        else:
            P = np.asarray(P) if not isinstance(P, np.ndarray) else P
            if P.dtype.kind not in "fiu":
                raise TypeError(f"P must be a float array, got {_validate.got(P)}")
            if P.ndim != 4 or P.shape[0] < 1 or P.shape[1] < 1 or P.shape[2] < 1 or P.shape[3] != P.shape[1]:
                raise ValueError(f"P must have shape (n_tasks, S, A, S) with n_tasks, S, A >= 1, got {P.shape}")
            n, S, A = P.shape[:3]
            P = _float_table(P, "P", (n, S, A, S))
            _check_distributions(P, "P", ("task", "s", "a"))
        if not isinstance(reward_noise, str) or reward_noise not in REWARD_NOISES:
            raise ValueError(f"reward_noise must be one of {REWARD_NOISES}, got {reward_noise!r}")
        if reward_noise == "transition":
            if reward_next is None:
                raise ValueError('reward_noise="transition" needs reward_next of shape (n, S, A, S)')
            reward_next = _float_table(reward_next, "reward_next", (n, S, A, S))
            if next_state is not None:
                R = np.take_along_axis(reward_next, next_state[..., None], axis=-1)[..., 0]
            else:
                R = np.einsum("nsat,nsat->nsa", P, reward_next)
        else:
            if reward_next is not None:
                raise ValueError('reward_next is only used with reward_noise="transition"')
            R = _float_table(R, "R", (n, S, A))
        if reward_noise == "bernoulli" and (R.min() < 0 or R.max() > 1):
            raise ValueError("R must lie in [0, 1] for bernoulli rewards (it is the success probability)")
        horizon = _validate.positive_int(horizon, "horizon")
        if start is None:
            start = _start_at_zero(n, S)
        else:
            start = _float_table(start, "start", (n, S))
            _check_distributions(start, "start", ("task",))
        if terminal is None:
            terminal = np.zeros((n, S), dtype=bool)
        else:
            terminal = np.asarray(terminal)
            if terminal.dtype != bool:
                raise TypeError(f"terminal must be a bool array, got {_validate.got(terminal)}")
            if terminal.shape != (n, S):
                raise ValueError(f"terminal must have shape {(n, S)}, got {terminal.shape}")
            terminal = terminal.copy()
        if np.ndim(reward_std) > 0:
            reward_std = _float_table(reward_std, "reward_std", (n,))
            if reward_std.min() < 0:
                raise ValueError("reward_std must be >= 0")
        else:
            reward_std = np.full(n, _validate.finite_float(
                reward_std.item() if isinstance(reward_std, np.ndarray) else reward_std,
                "reward_std", low=0.0))
        self._assign(P, next_state, R, horizon, start, terminal, reward_noise, reward_std, reward_next, name)

    @classmethod
    def _trusted(cls, P=None, R=None, horizon=None, *, next_state=None, start=None, terminal=None,
                 reward_noise="none", reward_std=1.0, reward_next=None, name="TaskBatch"):
        """A batch from arrays that are valid by construction (the built-in families, sub-batches):
        no checks and no copies; the arrays must be fresh float64/int64/bool arrays nothing else
        writes to (they are made read-only)."""
        self = cls.__new__(cls)
        n, S, A = (next_state if P is None else P).shape[:3]
        start_state = start_cdf = None
        no_terminal_known = terminal is None
        if start is None:
            start, start_cdf, start_state, no_terminal = _shared_defaults(n, S)
            if terminal is None:
                terminal = no_terminal
        if terminal is None:
            terminal = np.zeros((n, S), dtype=bool)
        if isinstance(reward_std, float) or np.ndim(reward_std) == 0:
            reward_std = _shared_full(n, float(reward_std))
        self._assign(P, next_state, R, int(horizon), start, terminal, reward_noise, reward_std,
                     reward_next, name)
        self._start_state, self._start_cdf = start_state, start_cdf
        if no_terminal_known:
            self._no_terminal = self._terminal
        return self

    def _assign(self, P, next_state, R, horizon, start, terminal, reward_noise, reward_std,
                reward_next, name):
        # the arrays as views that cannot be made writeable, behind read-only properties: what
        # was validated is what the kernels read
        if P is not None:
            P = _read_only(P)
        if next_state is not None:
            next_state = _read_only(next_state)
        if reward_next is not None:
            reward_next = _read_only(reward_next)
        R, start, terminal, reward_std = (_read_only(R), _read_only(start), _read_only(terminal),
                                          _read_only(reward_std))
        self._P, self._next_state = P, next_state
        self._R, self._start, self._terminal, self._reward_std = R, start, terminal, reward_std
        self._reward_next = reward_next
        self._horizon, self._reward_noise, self.name = horizon, reward_noise, str(name)
        shape_source = next_state if P is None else P
        self._shape = tuple(int(d) for d in shape_source.shape[:3])
        # per-task parameters of the family that drew the batch (first axis n_tasks), e.g.
        # GridNavigation's "goal" (n, 2) or Chain's "good_action" (n, S); sub-batches keep them
        self.info = {}
        self._tables = None
        self._stochastic = False  # True: every row of P is known to have >= 2 outcomes (no scan)
        self._start_state = None  # int64 (n,): every task's certain start state, known by construction
        self._trans_cdfs = None   # (trans_cdf, trans_cdf_padded) built with P, if the family did
        self._start_cdf = None    # running sums of start, if known
        self._no_terminal = None  # the terminal array, if known by construction to be all False

    next_state = property(lambda self: self._next_state,
                          doc="int64 (n, S, A) next-state table of a deterministic batch, or None")
    R = property(lambda self: self._R, doc="float64 (n, S, A) mean rewards")
    start = property(lambda self: self._start, doc="float64 (n, S) start distributions")
    terminal = property(lambda self: self._terminal, doc="bool (n, S) terminal states")
    reward_std = property(lambda self: self._reward_std, doc="float64 (n,) gaussian noise scales")
    reward_next = property(lambda self: self._reward_next,
                           doc='float64 (n, S, A, S) transition rewards ("transition" noise), or None')
    horizon = property(lambda self: self._horizon, doc="int, steps per episode")
    reward_noise = property(lambda self: self._reward_noise, doc="str, one of REWARD_NOISES")

    @property
    def P(self):
        """float64 (n, S, A, S) transition probabilities, read-only (built on first use from
        ``next_state`` when the batch holds a next-state table)."""
        if self._P is None:
            n, S, A = self._shape
            P = np.zeros((n, S, A, S))
            np.put_along_axis(P, self.next_state[..., None], 1.0, axis=-1)
            self._P = _read_only(P)
        return self._P

    @property
    def n_tasks(self):
        return self._shape[0]

    @property
    def n_states(self):
        return self._shape[1]

    @property
    def n_actions(self):
        return self._shape[2]

    @property
    def tables(self):
        """The :class:`EnvTables` the stepping kernels read (computed on first use)."""
        if self._tables is None:
            self._tables = EnvTables(self)
        return self._tables

    def __len__(self):
        return self.n_tasks

    def __getitem__(self, index):
        if isinstance(index, numbers.Integral) and not isinstance(index, (bool, np.bool_)):
            i = int(index)
            if not -self.n_tasks <= i < self.n_tasks:
                raise IndexError(f"task index {i} out of range for {self.n_tasks} tasks")
            return Task(self, i % self.n_tasks)
        if isinstance(index, slice):
            idx = np.arange(self.n_tasks)[index]
        else:
            idx = _validate.int_array(index, "index", ndim=1, low=-self.n_tasks, high=self.n_tasks)
            idx = idx % self.n_tasks
        if idx.size == 0:
            raise ValueError("a TaskBatch needs at least one task")
        sub = TaskBatch._trusted(
            None if self._P is None else self._P[idx], self.R[idx], self.horizon,
            next_state=None if self.next_state is None else self.next_state[idx],
            start=self.start[idx], terminal=self.terminal[idx], reward_noise=self.reward_noise,
            reward_std=self.reward_std[idx],
            reward_next=None if self.reward_next is None else self.reward_next[idx], name=self.name)
        sub.info = {key: value[idx] for key, value in self.info.items()}
        sub._stochastic = self._stochastic
        sub._start_state = None if self._start_state is None else _read_only(self._start_state[idx])
        if self._trans_cdfs is not None:
            sub._trans_cdfs = tuple(_read_only(table[idx]) for table in self._trans_cdfs)
        return sub

    def __iter__(self):
        return (Task(self, i) for i in range(self.n_tasks))

    def __repr__(self):
        return (f"TaskBatch({self.name}: n_tasks={self.n_tasks}, n_states={self.n_states}, "
                f"n_actions={self.n_actions}, horizon={self.horizon}, reward_noise={self.reward_noise!r})")


class Task:
    """One task of a :class:`TaskBatch` (a view: ``task.batch``, ``task.index``)."""

    def __init__(self, batch, index):
        self.batch, self.index = batch, index

    @property
    def n_states(self):
        return self.batch.n_states

    @property
    def n_actions(self):
        return self.batch.n_actions

    @property
    def horizon(self):
        return self.batch.horizon

    def model(self, gamma=1.0):
        """The exact :class:`metarl_fast.mdp.MDPModel` (P, mean R, start, horizon, terminal)."""
        b, i = self.batch, self.index
        return MDPModel(P=b.P[i], R=b.R[i], start=b.start[i], horizon=b.horizon,
                        gamma=gamma, terminal=b.terminal[i])

    def make_env(self):
        """A single environment with Gymnasium's protocol (pure Python; see :class:`TabularEnv`)."""
        return TabularEnv(self)

    def as_gymnasium(self):
        """This task as a ``gymnasium.Env`` (requires the ``gym`` extra: ``pip install gymnasium``)."""
        return _gymnasium_env_class()(self)

    def __repr__(self):
        return f"Task({self.index} of {self.batch!r})"


class Discrete:
    """A description of the discrete space ``{0, ..., n-1}`` (Gymnasium's ``Discrete`` without the dependency)."""

    def __init__(self, n):
        self.n = _validate.positive_int(n, "n")
        self.start = 0
        self.shape = ()
        self.dtype = np.dtype(np.int64)

    def contains(self, x):
        return (isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))
                and 0 <= int(x) < self.n)

    __contains__ = contains

    def sample(self, rng):
        return np.int64(as_generator(rng).integers(self.n))

    def __repr__(self):
        return f"Discrete({self.n})"

    def __eq__(self, other):
        return isinstance(other, Discrete) and other.n == self.n


def _draw_index(cdf, u):
    """Inverse CDF: number of entries of the running sum ``cdf`` that are <= ``u * cdf[-1]``."""
    return int(np.count_nonzero(cdf <= u * cdf[-1]))


class _TabularEnvLogic:
    """reset/step of one task; the random stream is ``self.np_random``."""

    def _setup(self, task):
        if not isinstance(task, Task):
            raise TypeError(f"task must be a metarl_fast.tasks.Task, got {type(task).__name__}")
        self.task = task
        self._tables = task.batch.tables
        self._i = task.index
        self._state = None
        self._elapsed = 0
        self._done = False

    def _reset_state(self, rng):
        t, i = self._tables, self._i
        if t.stochastic_start:
            self._state = _draw_index(t.start_cdf[i], rng.random())
        else:
            self._state = int(t.start_state[i])
        self._elapsed = 0
        self._done = False
        return np.int64(self._state), {}

    def _step_state(self, action, rng):
        if self._state is None:
            raise RuntimeError("step() called before reset()")
        if self._done:
            raise RuntimeError("the episode is over (terminated or truncated); call reset() first")
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, numbers.Integral):
            if isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu":
                action = action.item()
            else:
                raise TypeError(f"action must be an int, got {type(action).__name__}")
        a = int(action)
        t, i, s = self._tables, self._i, self._state
        if not 0 <= a < t.n_actions:
            raise ValueError(f"action out of range: {a}, must be in [0, {t.n_actions})")
        kind = t.reward_kind
        reward = t.reward_mean[i, s, a]
        if kind == REWARD_GAUSSIAN:
            reward = reward + t.reward_std[i] * rng.standard_normal()
        elif kind == REWARD_BERNOULLI:
            reward = 1.0 if rng.random() < reward else 0.0
        if t.stochastic_transitions:
            s2 = _draw_index(t.trans_cdf[i, s, a], rng.random())
        else:
            s2 = int(t.next_state[i, s, a])
        if kind == REWARD_TRANSITION:
            reward = t.reward_next[i, s, a, s2]
        self._elapsed += 1
        terminated = bool(t.terminal[i, s2])
        truncated = (not terminated) and self._elapsed >= t.horizon
        self._state = s2
        self._done = terminated or truncated
        return np.int64(s2), float(reward), terminated, truncated, {}


class TabularEnv(_TabularEnvLogic):
    """One task as an environment with Gymnasium's protocol (no Gymnasium needed).

    ``reset(seed=None, options=None) -> (obs, info)``; ``step(action) -> (obs, reward,
    terminated, truncated, info)``.  ``obs`` is the state index (``numpy.int64``).  ``seed`` is an
    int or a ``numpy.random.Generator`` (used as is); without it the previous stream continues
    (a fresh unseeded Generator on first use).  ``truncated`` is True when the horizon is reached
    in a non-terminal state.  Stepping after the end of an episode raises RuntimeError.
    """

    def __init__(self, task):
        self._setup(task)
        self.observation_space = Discrete(task.n_states)
        self.action_space = Discrete(task.n_actions)
        self.np_random = None

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.np_random = as_generator(seed, "seed")
        elif self.np_random is None:
            self.np_random = np.random.default_rng()
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        return self._reset_state(self.np_random)

    def step(self, action):
        return self._step_state(action, self.np_random)

    def close(self):
        pass

    def __repr__(self):
        return f"TabularEnv({self.task!r})"


_GYM_CLASS = None


def _gymnasium_env_class():
    global _GYM_CLASS
    if _GYM_CLASS is None:
        try:
            import gymnasium
        except ImportError as err:
            raise ImportError(
                "as_gymnasium() needs Gymnasium: pip install gymnasium (the 'gym' extra)") from err

        class GymnasiumTabularEnv(_TabularEnvLogic, gymnasium.Env):
            """A :class:`Task` as a ``gymnasium.Env`` (Discrete observations and actions)."""

            metadata = {"render_modes": []}

            def __init__(self, task):
                self._setup(task)
                self.observation_space = gymnasium.spaces.Discrete(task.n_states)
                self.action_space = gymnasium.spaces.Discrete(task.n_actions)

            def reset(self, *, seed=None, options=None):
                if isinstance(seed, np.random.Generator):
                    self._np_random, seed = seed, None
                super().reset(seed=seed)
                return self._reset_state(self.np_random)

            def step(self, action):
                return self._step_state(action, self.np_random)

        _GYM_CLASS = GymnasiumTabularEnv
    return _GYM_CLASS


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------

class TaskDistribution:
    """Base class: ``sample(n, rng) -> TaskBatch`` with ``n >= 1`` and ``rng`` an int or Generator."""

    def sample(self, n, rng):
        n = _validate.positive_int(n, "n")
        per_task = self._entries_per_task()
        if per_task is not None and n * per_task > _validate.MAX_TABLE_ENTRIES:  # (message only then)
            _validate.check_table_size(n * per_task, f"{self!r}.sample(n={n}) would build a table "
                                       f"of n x {per_task:,}")
        return self._sample(n, as_generator(rng))

    def _entries_per_task(self):
        """Entries per task of the largest table ``sample`` builds (None: not known up front)."""
        return None

    def _sample(self, n, rng):  # pragma: no cover - abstract
        raise NotImplementedError


class BernoulliBandits(TaskDistribution):
    """Multi-armed Bernoulli bandits (Duan et al. 2016): one state, arm means ``p_i ~ U[0, 1]``.

    One pull is one step; an episode (a trial) is ``horizon`` pulls.  ``sample`` draws
    ``rng.random((n, n_arms))``.
    """

    def __init__(self, n_arms=5, horizon=10):
        self.n_arms = _validate.positive_int(n_arms, "n_arms")
        self.horizon = _validate.positive_int(horizon, "horizon")
        _validate.check_table_size(self.n_arms, f"BernoulliBandits(n_arms={self.n_arms}): one task's arms")

    def _entries_per_task(self):
        return self.n_arms

    def _sample(self, n, rng):
        p = rng.random((n, self.n_arms))
        return TaskBatch._trusted(None, p[:, None, :], self.horizon,
                                  next_state=np.zeros((n, 1, self.n_arms), dtype=np.int64),
                                  reward_noise="bernoulli", name=f"BernoulliBandits(n_arms={self.n_arms})")

    def __repr__(self):
        return f"BernoulliBandits(n_arms={self.n_arms}, horizon={self.horizon})"


class TabularMDPs(TaskDistribution):
    """Random tabular MDPs (Duan et al. 2016).

    Mean rewards ``mu(s, a) ~ N(1, 1)``, observed reward ``~ N(mu(s, a), 1)``, transitions
    ``P(.|s, a) ~ Dirichlet(1, ..., 1)``, every episode starts in state 0 and lasts ``horizon``
    steps.  ``sample`` draws ``rng.normal(1, 1, (n, S, A))`` then ``rng.dirichlet(ones(S), (n, S, A))``
    (the same values: exponentials normalised as ``Generator.dirichlet`` does).
    """

    def __init__(self, n_states=10, n_actions=5, horizon=10):
        self.n_states = _validate.positive_int(n_states, "n_states")
        self.n_actions = _validate.positive_int(n_actions, "n_actions")
        self.horizon = _validate.positive_int(horizon, "horizon")
        _validate.check_table_size(self._entries_per_task(),
                                   f"TabularMDPs(n_states={self.n_states}, n_actions={self.n_actions}): "
                                   f"one task's transition table of n_states x n_actions x n_states")

    def _entries_per_task(self):
        return self.n_states * self.n_actions * self.n_states

    def _sample(self, n, rng):
        S, A = self.n_states, self.n_actions
        from metarl_fast._backend import active  # here: the kernel modules import this one

        # rng.normal(1, 1, (n, S, A)) then rng.dirichlet(np.ones(S), (n, S, A)) bit for bit (the
        # same exponentials, normalised the same way), with the kernels' transition CDFs built
        # in the same pass
        R, P, cdf, padded = active.envs.tabular_mdp_draws(rng, n, S, A)
        batch = TaskBatch._trusted(P, R, self.horizon, reward_noise="gaussian", reward_std=1.0,
                                   name=f"TabularMDPs(n_states={S}, n_actions={A})")
        batch._stochastic = S > 1  # Dirichlet(1, ..., 1) rows: every entry > 0 almost surely
        batch._trans_cdfs = (cdf, padded)
        return batch

    def __repr__(self):
        return f"TabularMDPs(n_states={self.n_states}, n_actions={self.n_actions}, horizon={self.horizon})"


class GridNavigation(TaskDistribution):
    """Navigation to a goal cell on a ``size x size`` grid (discrete analogue of MAML's 2-D navigation).

    State ``row * size + col``; every episode starts in the centre ``(size // 2, size // 2)``.
    Actions: 0 up (row - 1), 1 down (row + 1), 2 left (col - 1), 3 right (col + 1), 4 stay; a move
    off the grid stays in place.  Each step pays ``-d`` where ``d`` is the Euclidean distance (or
    its square with ``squared=True``) from the cell reached to the goal, so moving onto the goal
    pays 0 and ends the episode (the goal is terminal); otherwise it ends after ``horizon`` steps
    (default ``2 * size``).  The goal of each task is drawn uniformly from ``goals`` (a list of
    ``(row, col)``; default every cell except the centre) with ``rng.integers(len(goals), size=n)``;
    the batch keeps them in ``batch.info["goal"]`` (int64 (n, 2)).
    """

    N_ACTIONS = 5
    _MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (0, 0)])

    def __init__(self, size=7, horizon=None, *, squared=False, goals=None):
        self.size = _validate.positive_int(size, "size", minimum=2)
        _validate.check_table_size(self.size ** 2 * self.N_ACTIONS,
                                   f"GridNavigation(size={self.size}): one task's table of "
                                   f"size**2 states x {self.N_ACTIONS} actions")
        self.horizon = _validate.positive_int(2 * self.size if horizon is None else horizon, "horizon")
        self.squared = bool(squared)
        centre = (self.size // 2, self.size // 2)
        if goals is None:  # every cell but the centre, row by row
            rows, cols = np.divmod(np.arange(self.size ** 2, dtype=np.int64), self.size)
            keep = (rows != centre[0]) | (cols != centre[1])
            goals = np.stack([rows[keep], cols[keep]], axis=1)
        else:
            goals = np.asarray(goals)
            if goals.dtype.kind not in "iu":
                raise TypeError(f"goals must be integer (row, col) pairs, got {_validate.got(goals)}")
            if goals.ndim != 2 or goals.shape[1] != 2 or goals.shape[0] < 1:
                raise ValueError(f"goals must have shape (n_goals, 2), got {goals.shape}")
            outside = (goals < 0) | (goals >= self.size)
            if outside.any():
                r, c = goals[np.argwhere(outside)[0][0]]
                raise ValueError(f"goal ({r}, {c}) is outside the {self.size}x{self.size} grid")
            at_start = np.all(goals == centre, axis=1)
            if at_start.any():
                raise ValueError(f"goal {centre} is the start cell; an episode would begin at its end")
            goals = goals.astype(np.int64)
        self.goals = goals
        self._build_moves()
        self._goal_tables = None
        if len(goals) * self.size ** 2 * self.N_ACTIONS <= 2**22:  # at most 32 MiB of rewards
            self._goal_tables = self._tables_of(goals)

    def _entries_per_task(self):
        return self.size ** 2 * self.N_ACTIONS

    def _tables_of(self, goal):
        """(R float64 (n, S, A), terminal bool (n, S)) of the tasks with goals ``goal`` (n, 2)."""
        size, S = self.size, self.size * self.size
        n = goal.shape[0]
        # the reward depends only on the cell reached: per-cell distances (n, S), then a gather
        d2 = ((self._cell_rc[None, :, 0] - goal[:, None, 0]) ** 2
              + (self._cell_rc[None, :, 1] - goal[:, None, 1]) ** 2).astype(np.float64)
        cell_reward = -(d2 if self.squared else np.sqrt(d2))
        terminal = np.zeros((n, S), dtype=bool)
        terminal[np.arange(n), goal[:, 0] * size + goal[:, 1]] = True
        return cell_reward[:, self._next], terminal

    def _build_moves(self):
        self._per_size = {}  # n_tasks -> the tables batches of that size share (_shared_tables)
        size = self.size
        rows, cols = np.divmod(np.arange(size * size), size)
        nr = np.clip(rows[:, None] + self._MOVES[None, :, 0], 0, size - 1)
        nc = np.clip(cols[:, None] + self._MOVES[None, :, 1], 0, size - 1)
        self._next = nr * size + nc           # (S, 5)
        self._cell_rc = np.stack([rows, cols], axis=-1)   # (S, 2)

    def _sample(self, n, rng):
        size, S, A = self.size, self.size * self.size, self.N_ACTIONS
        index = rng.integers(len(self.goals), size=n)
        goal = self.goals[index]                                        # (n, 2)
        if self._goal_tables is not None:  # each goal's rewards and terminal row, built once
            R, terminal = (table[index] for table in self._goal_tables)
        else:
            R, terminal = self._tables_of(goal)                         # (n, S, A), (n, S)
        next_state, start, start_cdf, start_state = self._shared_tables(n)
        batch = TaskBatch._trusted(None, R, self.horizon, next_state=next_state, start=start,
                                   terminal=terminal, reward_noise="none",
                                   name=f"GridNavigation(size={size})")
        batch._start_state, batch._start_cdf = start_state, start_cdf
        batch.info["goal"] = goal
        return batch

    def _shared_tables(self, n):
        """The tables every batch of n tasks has in common (moves, start in the centre), frozen
        and kept for the next batches of that size (a few sizes at most)."""
        tables = self._per_size.get(n)
        if tables is None:
            S, A = self.size * self.size, self.N_ACTIONS
            centre = (self.size // 2) * self.size + self.size // 2
            next_state = np.empty((n, S, A), dtype=np.int64)
            next_state[:] = self._next
            start = np.zeros((n, S))
            start[:, centre] = 1.0
            tables = tuple(_read_only(t) for t in (next_state, start, np.cumsum(start, axis=-1),
                                                   np.full(n, centre, dtype=np.int64)))
            if len(self._per_size) >= 4:
                self._per_size.clear()
            self._per_size[n] = tables
        return tables

    def __repr__(self):
        return f"GridNavigation(size={self.size}, horizon={self.horizon}, squared={self.squared})"


class Chain(TaskDistribution):
    """A chain of ``n_states`` states whose rewarded action in each state varies between tasks.

    Each task draws ``good = rng.integers(n_actions, size=(n, n_states))`` (kept in
    ``batch.info["good_action"]``).  In state ``s`` the
    rewarded action ``good[s]`` pays 1 and moves one step right (the last state stays put); any
    other action pays 0 and returns to state 0.  With probability ``slip`` the move goes the other
    way (the rewarded action falls back to state 0, another action advances); the reward depends
    only on the action.  Episodes start in state 0 and last ``horizon`` steps.  The default is the
    4-state x 2-action chain.
    """

    def __init__(self, n_states=4, n_actions=2, horizon=10, slip=0.0):
        self.n_states = _validate.positive_int(n_states, "n_states")
        self.n_actions = _validate.positive_int(n_actions, "n_actions")
        self.horizon = _validate.positive_int(horizon, "horizon")
        self.slip = _validate.finite_float(slip, "slip", low=0.0, high=1.0)
        _validate.check_table_size(self._entries_per_task(),
                                   f"Chain(n_states={self.n_states}, n_actions={self.n_actions}, "
                                   f"slip={self.slip}): one task's transition table")
        self._actions = np.arange(self.n_actions)[None, None, :]
        self._name = f"Chain(n_states={self.n_states}, n_actions={self.n_actions})"
        self._advance = np.minimum(np.arange(self.n_states) + 1, self.n_states - 1)

    def _entries_per_task(self):
        # deterministic: a next-state table; slipping: dense transitions
        return self.n_states * self.n_actions * (1 if self.slip == 0.0 else self.n_states)

    def _sample(self, n, rng):
        S, A = self.n_states, self.n_actions
        good = rng.integers(A, size=(n, S))
        is_good = good[:, :, None] == self._actions                         # (n, S, A)
        advance = self._advance                                             # (S,)
        R = is_good.astype(np.float64)
        name = self._name
        if self.slip == 0.0:  # deterministic: a next-state table, no (n, S, A, S) array
            next_state = is_good * advance[None, :, None]  # the rewarded action advances, others go to 0
            batch = TaskBatch._trusted(None, R, self.horizon, next_state=next_state, name=name)
        else:
            fwd = np.zeros((n, S, A, S))
            fwd[:, np.arange(S), :, advance] = 1.0
            back = np.zeros((n, S, A, S))
            back[..., 0] = 1.0
            p_good = 1.0 - self.slip
            w = np.where(is_good, p_good, 1.0 - p_good)[..., None]
            P = w * fwd + (1.0 - w) * back
            batch = TaskBatch._trusted(P, R, self.horizon, name=name)
        batch.info["good_action"] = good
        return batch

    def __repr__(self):
        return (f"Chain(n_states={self.n_states}, n_actions={self.n_actions}, "
                f"horizon={self.horizon}, slip={self.slip})")


class TabularFamily(TaskDistribution):
    """A custom family: fixed task arrays to sample from, or a sampler function.

    ``TabularFamily(P=..., R=..., horizon=..., **batch_kwargs)`` holds ``m`` tasks (P of shape
    (m, S, A, S) or (S, A, S) for one task, R (m, S, A) or (S, A), optional ``start``,
    ``terminal``, ``reward_noise``, ``reward_std``, ``reward_next`` as for :class:`TaskBatch`);
    ``sample(n, rng)`` picks ``rng.integers(m, size=n)`` of them.

    ``TabularFamily(sampler=fn)``: ``fn(n, rng)`` returns a :class:`TaskBatch` of ``n`` tasks or a
    dict of :class:`TaskBatch` arguments (``P``, ``R``, ``horizon``, ...).
    """

    def __init__(self, P=None, R=None, horizon=None, *, sampler=None, **batch_kwargs):
        if sampler is not None:
            if P is not None or R is not None or batch_kwargs:
                raise ValueError("give either sampler or the task arrays (P, R, ...), not both")
            if not callable(sampler):
                raise TypeError(f"sampler must be callable, got {type(sampler).__name__}")
            self._sampler, self._batch = sampler, None
            return
        if P is None or R is None or horizon is None:
            raise ValueError("TabularFamily needs P, R and horizon (or a sampler)")
        P, R = np.asarray(P), np.asarray(R)
        if P.ndim == 3:
            P, R = P[None], R[None]
            for key in ("start", "terminal", "reward_next"):
                if batch_kwargs.get(key) is not None:
                    batch_kwargs[key] = np.asarray(batch_kwargs[key])[None]
        self._sampler = None
        self._batch = TaskBatch(P, R, horizon, **batch_kwargs)

    def _sample(self, n, rng):
        if self._sampler is None:
            return self._batch[rng.integers(self._batch.n_tasks, size=n)]
        out = self._sampler(n, rng)
        if isinstance(out, dict):
            out = TaskBatch(**out)
        if not isinstance(out, TaskBatch):
            raise TypeError(f"sampler must return a TaskBatch or a dict, got {type(out).__name__}")
        if out.n_tasks != n:
            raise ValueError(f"sampler returned {out.n_tasks} tasks, expected {n}")
        return out


class FromGymnasium(TaskDistribution):
    """Toy-text Gymnasium environments as a task family (e.g. FrozenLake with a random map per task).

    ``make_env(rng) -> gymnasium.Env`` builds one task's environment (drawing its randomness from
    ``rng``).  Observation and action spaces must be ``gymnasium.spaces.Discrete`` (start 0) and
    the unwrapped env must expose its exact model the toy-text way: ``P[s][a]`` a list of
    ``(prob, next_state, reward, terminated)`` and ``initial_state_distrib`` (S,).  The horizon is
    ``horizon`` or else ``env.spec.max_episode_steps``.  Rewards depend on the transition
    (``reward_noise="transition"``).  Gymnasium is imported only here.
    """

    def __init__(self, make_env, horizon=None):
        if not callable(make_env):
            raise TypeError(f"make_env must be callable, got {type(make_env).__name__}")
        self.make_env = make_env
        self.horizon = None if horizon is None else _validate.positive_int(horizon, "horizon")

    @staticmethod
    def tables_of(env, horizon=None):
        """(P (S,A,S), reward_next (S,A,S), start (S,), terminal (S,), horizon) of one env."""
        import gymnasium

        for name in ("observation_space", "action_space"):
            space = getattr(env, name, None)
            if not isinstance(space, gymnasium.spaces.Discrete):
                raise TypeError(f"FromGymnasium needs a Discrete {name}, got {space!r}")
            if int(space.start) != 0:
                raise TypeError(f"FromGymnasium needs {name} to start at 0, got start={space.start}")
        S, A = int(env.observation_space.n), int(env.action_space.n)
        base = env.unwrapped
        model = getattr(base, "P", None)
        isd = getattr(base, "initial_state_distrib", None)
        if not isinstance(model, dict) or isd is None:
            raise TypeError(
                f"{type(base).__name__} does not expose a tabular model (unwrapped.P as a dict "
                "s -> a -> [(prob, next_state, reward, terminated)] and initial_state_distrib)")
        P = np.zeros((S, A, S))
        reward_next = np.zeros((S, A, S))
        terminal = np.zeros(S, dtype=bool)
        seen_terminal = np.full(S, -1)
        for s in range(S):
            for a in range(A):
                for prob, s2, r, term in model[s][a]:
                    if prob == 0:
                        continue
                    if P[s, a, s2] > 0 and reward_next[s, a, s2] != r:
                        raise ValueError(f"transition ({s}, {a}) -> {s2} has two different rewards")
                    P[s, a, s2] += prob
                    reward_next[s, a, s2] = r
                    if seen_terminal[s2] >= 0 and bool(seen_terminal[s2]) != bool(term):
                        raise ValueError(f"state {s2} is terminal on some transitions and not on others")
                    seen_terminal[s2] = bool(term)
                    terminal[s2] = bool(term)
        if horizon is None:
            spec = getattr(env, "spec", None)
            horizon = getattr(spec, "max_episode_steps", None)
            if horizon is None:
                raise ValueError("the env has no spec.max_episode_steps; pass horizon= to FromGymnasium")
        return P, reward_next, np.asarray(isd, dtype=np.float64), terminal, int(horizon)

    def _sample(self, n, rng):
        parts = []
        for _ in range(n):
            env = self.make_env(rng)
            try:
                parts.append(self.tables_of(env, self.horizon))
            finally:
                close = getattr(env, "close", None)
                if close is not None:
                    close()
        shapes = {p[0].shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"all sampled envs must have the same spaces, got shapes {sorted(shapes)}")
        horizons = {p[4] for p in parts}
        if len(horizons) != 1:
            raise ValueError(f"all sampled envs must have the same horizon, got {sorted(horizons)}")
        P, Rn, start, terminal = (np.stack([p[k] for p in parts]) for k in range(4))
        return TaskBatch(P, np.zeros(P.shape[:3]), horizons.pop(), start=start, terminal=terminal,
                         reward_noise="transition", reward_next=Rn, name="FromGymnasium")
