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
  (1.0 with probability R, else 0.0), ``"transition"`` (reward = ``reward_next[s, a, s']``,
  float64 (n, S, A, S), deterministic given the transition; then ``R`` is its mean under ``P``) or
  ``"outcome"`` (one of ``K`` values per transition: ``reward_values[s, a, s', k]`` with
  probability ``reward_probs[s, a, s', k]``, both float64 (n, S, A, S, K); ``reward_next`` and
  ``R`` then hold the expected rewards).

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
and ``task.make_env()`` a ``gymnasium.Env`` when Gymnasium is installed (else
:class:`TabularEnv`, a dependency-free twin with the same protocol and draws).

Random draws of a single environment (fixed order, shared with :class:`metarl_fast.rollout.VecEnv`):
``reset`` draws one ``rng.random()`` for the start state unless every task of the batch starts in a
fixed state; ``step`` draws the reward noise (``standard_normal()`` for gaussian, ``random()`` for
bernoulli, nothing otherwise), then one ``random()`` for the next state unless every transition
of the batch is deterministic, then (``"outcome"`` rewards only) one ``random()`` for the reward
outcome of the transition taken.  Sampling from a distribution ``p`` with a uniform ``u`` is inverse
CDF: the first ``j`` with ``u * c[-1] < c[j]``, ``c`` the left-to-right running sum of ``p``.
"""
import collections
import functools
import numbers

import numpy as np

from metarl_fast import _validate
from metarl_fast.mdp import MDPModel

# Every reward kind a batch can have; the kernels get the index into this tuple.
REWARD_KINDS = ("none", "gaussian", "bernoulli", "transition", "outcome")
# The kinds given by ``R`` (and ``reward_next``) alone, without per-outcome tables.
REWARD_NOISES = REWARD_KINDS[:4]
REWARD_NONE, REWARD_GAUSSIAN, REWARD_BERNOULLI, REWARD_TRANSITION, REWARD_OUTCOME = range(5)

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


def _outcome_tables(values, probs, P, next_state, shape):
    """Validated private copies of ``reward_values`` and ``reward_probs`` (n, S, A, S, K) and the
    expected reward of each transition (n, S, A, S); ``P`` or ``next_state`` says which
    transitions can happen (their outcome probabilities must sum to 1)."""
    n, S, A = shape
    if values is None or probs is None:
        raise ValueError('reward_noise="outcome" needs reward_values and reward_probs of shape '
                         '(n, S, A, S, K)')
    for x, name in ((values, "reward_values"), (probs, "reward_probs")):
        ndim = np.ndim(x)
        if ndim != 5 or np.shape(x)[:4] != (n, S, A, S) or np.shape(x)[4] < 1:
            raise ValueError(f"{name} must have shape ({n}, {S}, {A}, {S}, K) with K >= 1, "
                             f"got {np.shape(x)}")
    values = _float_table(values, "reward_values", np.shape(values))
    probs = _float_table(probs, "reward_probs", values.shape)
    if probs.min() < 0:
        idx = tuple(int(v) for v in np.argwhere(probs < 0)[0])
        raise ValueError(f"reward_probs{list(idx)} = {float(probs[idx])!r} is negative")
    if next_state is not None:
        possible = np.zeros((n, S, A, S), dtype=bool)
        np.put_along_axis(possible, next_state[..., None], True, axis=-1)
    else:
        possible = P > 0
    sums = probs.sum(axis=-1)
    bad = possible & (np.abs(sums - 1.0) > _ROW_TOL)
    if bad.any():
        i, s, a, s2 = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"reward_probs of transition (task={i}, s={s}, a={a}, s'={s2}) sum to "
                         f"{float(sums[i, s, a, s2])!r}, not 1 (tolerance {_ROW_TOL})")
    return values, probs, np.einsum("nsatk,nsatk->nsat", probs, values)


def _expected_rewards(P, next_state, reward_next):
    """float64 (n, S, A): the mean of ``reward_next`` (n, S, A, S) under the transitions."""
    if next_state is not None:
        return np.take_along_axis(reward_next, next_state[..., None], axis=-1)[..., 0]
    return np.einsum("nsat,nsat->nsa", P, reward_next)


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
    target), then the total at index L.  Read-only float64.

    A row's outcome for the uniform ``u`` is the number of its first L entries that are
    ``<= u * row[L]`` (the last outcome's sum is never compared: it is the total)."""
    m = cdf.shape[-1]
    L = (m - 1 + 3) // 4 * 4
    out = np.full(cdf.shape[:-1] + (L + 1,), np.inf)
    out[..., :m - 1] = cdf[..., :m - 1]
    out[..., L] = cdf[..., m - 1]
    out.setflags(write=False)
    return out


# Rows of at least GUIDE_MIN_WIDTH compared entries get a guide table: one bucket per
# GUIDE_BUCKET_WIDTH entries, so a draw reads the bucket's start and about that many sums
# (Chen & Asau's indexed search) instead of the whole row.
GUIDE_MIN_WIDTH = 32
GUIDE_BUCKET_WIDTH = 4
# each bucket's threshold is lowered by this relative margin: the start it gives is never past
# the outcome, whatever the rounding of u * G and u * total
_GUIDE_MARGIN = 1.0 - 2.0 ** -40


def guide_buckets(L):
    """Buckets G of the guide table of padded rows with L compared entries (0: no guide)."""
    return L // GUIDE_BUCKET_WIDTH if L >= GUIDE_MIN_WIDTH else 0


def guide_rows(padded):
    """Guide table of padded running-sum rows (..., L + 1) (:func:`padded_cdf_rows`): int32
    (..., G + 1) with ``G = guide_buckets(L)``, entry ``b`` the number of the row's first L sums
    that are ``< b * (total * ((1 - 2**-40) / G))``.  For ``u`` in bucket ``b = int(u * G)`` the
    outcome (number of sums ``<= u * total``) is at least that many, so a search may start there
    and gives the same outcome as the whole-row count.  A (1, 1, 1, 1) placeholder when G = 0.
    Read-only."""
    L = padded.shape[-1] - 1
    G = guide_buckets(L)
    if G == 0:
        return _NO_GUIDE
    rows = padded.reshape(-1, L + 1)
    scale = rows[:, L] * (_GUIDE_MARGIN / G)
    steps = np.arange(G + 1, dtype=np.float64)
    out = np.empty((rows.shape[0], G + 1), dtype=np.int32)
    for r in range(rows.shape[0]):  # one sorted search per row (the specification, not fast)
        out[r] = np.searchsorted(rows[r, :L], steps * scale[r], side="left")
    out = out.reshape(padded.shape[:-1] + (G + 1,))
    out.setflags(write=False)
    return out


def cdf_rows_probabilities(padded, m):
    """The probabilities (..., m) a padded running-sum table draws: the differences of its sums
    (the first sum, then each sum minus the one before, the last the total minus the last
    compared sum).  float64."""
    L = padded.shape[-1] - 1
    sums = np.empty(padded.shape[:-1] + (m,), dtype=np.float64)
    sums[..., :m - 1] = padded[..., :m - 1]
    sums[..., m - 1] = padded[..., L]
    P = np.empty_like(sums)
    P[..., 0] = sums[..., 0]
    np.subtract(sums[..., 1:], sums[..., :-1], out=P[..., 1:])
    return P


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
_NO_CDF_PADDED = _read_only(padded_cdf_rows(np.ones((1, 1, 1, 1))))
_NO_GUIDE = _read_only(np.zeros((1, 1, 1, 1), dtype=np.int32))
_NO_REWARD_NEXT = _read_only(np.zeros((1, 1, 1, 1)))
_NO_OUTCOMES = _read_only(np.ones((1, 1, 1, 1, 1)))


_ENV_FIELDS = ("n_tasks", "n_states", "n_actions", "horizon", "trans_cdf_padded", "trans_guide",
               "has_terminal", "next_state", "stochastic_transitions", "reward_mean", "reward_kind",
               "reward_std", "reward_next", "start_cdf", "start_state", "stochastic_start", "terminal",
               "reward_outcomes", "reward_values", "reward_cdf")


class EnvTables(collections.namedtuple("EnvTables", _ENV_FIELDS)):
    """Kernel-facing, read-only tables of a :class:`TaskBatch` (built once per batch): an
    immutable named tuple of arrays that cannot be made writeable (the kernels trust them).

    Attributes
    ----------
    n_tasks, n_states, n_actions, horizon : int
    trans_cdf_padded : float64 (n, S, A, L + 1)  running sums of ``P`` along the last axis laid out
        by :func:`padded_cdf_rows` (a placeholder when ``stochastic_transitions`` is False): the
        only copy of a stochastic batch's transitions the kernels read (8 bytes per entry)
    trans_guide : int32 (n, S, A, G + 1)  :func:`guide_rows` of it for rows of
        ``GUIDE_MIN_WIDTH`` or more compared entries (about 1 byte per entry), else a placeholder
    has_terminal : bool                False if no task has a terminal state (fixed-length episodes)
    next_state : int64 (n, S, A)       the certain next state (used when ``stochastic_transitions`` is False)
    stochastic_transitions : bool      False if every row of ``P`` has exactly one non-zero entry
    reward_mean : float64 (n, S, A)    ``R`` (the success probability for bernoulli rewards)
    reward_kind : int                  index into ``REWARD_KINDS``
    reward_std : float64 (n,)          gaussian noise scale per task
    reward_next : float64 (n, S, A, S) rewards of transitions (shape (1, 1, 1, 1) unless kind is "transition")
    start_cdf : float64 (n, S)         running sums of ``start``
    start_state : int64 (n,)           the certain start state (used when ``stochastic_start`` is False)
    stochastic_start : bool
    terminal : uint8 (n, S)
    reward_outcomes : int              ``K``, reward outcomes per transition (1 unless kind is "outcome")
    reward_values : float64 (n, S, A, S, K)  the outcomes' rewards ("outcome" kind; else (1, 1, 1, 1, 1))
    reward_cdf : float64 (n, S, A, S, K)     running sums of ``reward_probs`` along the last axis
        ("outcome" kind; else (1, 1, 1, 1, 1))
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
            trans_cdf_padded, trans_guide = batch._trans_cdfs
        elif not det_trans:
            from metarl_fast._backend import active  # here: the kernel modules import this one
            trans_cdf_padded, trans_guide = active.envs.transition_cdfs(batch.P)
        else:
            trans_cdf_padded, trans_guide = _NO_CDF_PADDED, _NO_GUIDE
        kind = REWARD_KINDS.index(batch._reward_noise)
        reward_next = batch._reward_next if kind == REWARD_TRANSITION else _NO_REWARD_NEXT
        if kind == REWARD_OUTCOME:  # built for this kind only
            reward_values = batch._reward_values
            reward_cdf = np.cumsum(batch._reward_probs, axis=-1)
        else:
            reward_values = reward_cdf = _NO_OUTCOMES
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
            cls, n, S, A, batch._horizon, _kernel_table(trans_cdf_padded), _kernel_table(trans_guide),
            has_terminal, _kernel_table(next_state), not det_trans, _kernel_table(batch._R),
            kind, _kernel_table(batch._reward_std),
            _kernel_table(reward_next), _kernel_table(start_cdf), _kernel_table(start_state),
            not det_start, _kernel_table(terminal.view(np.uint8)),  # bool and uint8: same bytes
            int(reward_values.shape[-1]), _kernel_table(reward_values), _kernel_table(reward_cdf))


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
    R : array (n, S, A)            mean rewards (ignored and recomputed for ``"transition"`` and
                                   ``"outcome"`` rewards)
    horizon : int >= 1
    next_state : int array (n, S, A), optional
                                   deterministic transitions as a next-state table, instead of ``P``
                                   (give exactly one of the two); ``batch.P`` is then built on first
                                   use (a one-hot (n, S, A, S) array) for code that asks for it
    start : array (n, S), optional initial distributions (default: state 0)
    terminal : bool array (n, S), optional (default: none)
    reward_noise : {"none", "gaussian", "bernoulli", "transition", "outcome"} (``REWARD_KINDS``)
    reward_std : float or array (n,), >= 0, used by "gaussian" (default 1.0)
    reward_next : array (n, S, A, S), required for "transition" (for "outcome" it is computed:
                                   the expected reward of each transition)
    reward_values, reward_probs : arrays (n, S, A, S, K) with K >= 1, required for "outcome":
                                   taking ``s -> s'`` pays ``reward_values[..., k]`` with probability
                                   ``reward_probs[..., k]`` (finite; probs >= 0, summing to 1 within
                                   1e-8 over ``k`` for every transition with ``P > 0``)
    name : str, a label for ``repr``

    All arrays are copied to read-only float64/bool/int64 arrays.  ``batch[i]`` is a :class:`Task`;
    ``batch[indices]`` (a slice or an integer array) is a sub-batch.  ``batch.info`` holds
    per-task parameters of the family that drew it (e.g. ``info["goal"]`` of GridNavigation).
    ``batch.next_state`` is the next-state table when every transition is deterministic and the
    batch was built from one (else None).
    """

    def __init__(self, P=None, R=None, horizon=None, *, next_state=None, start=None, terminal=None,
                 reward_noise="none", reward_std=1.0, reward_next=None, reward_values=None,
                 reward_probs=None, name="TaskBatch"):
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
        if not isinstance(reward_noise, str) or reward_noise not in REWARD_KINDS:
            raise ValueError(f"reward_noise must be one of {REWARD_KINDS}, got {reward_noise!r}")
        if reward_noise == "outcome":
            if reward_next is not None:
                raise ValueError('reward_next is computed from reward_values and reward_probs for '
                                 'reward_noise="outcome"; leave it out')
            reward_values, reward_probs, reward_next = _outcome_tables(
                reward_values, reward_probs, P, next_state, (n, S, A))
        elif reward_values is not None or reward_probs is not None:
            raise ValueError('reward_values and reward_probs are only used with reward_noise="outcome"')
        if reward_noise == "outcome":
            R = _expected_rewards(P, next_state, reward_next)
        elif reward_noise == "transition":
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
        if reward_noise == "outcome":
            self._reward_values, self._reward_probs = (_read_only(reward_values),
                                                       _read_only(reward_probs))

    @classmethod
    def _trusted(cls, P=None, R=None, horizon=None, *, next_state=None, start=None, terminal=None,
                 reward_noise="none", reward_std=1.0, reward_next=None, reward_values=None,
                 reward_probs=None, name="TaskBatch"):
        """A batch from arrays that are valid by construction (the built-in families, sub-batches):
        no checks and no copies; the arrays must be fresh float64/int64/bool arrays nothing else
        writes to (they are made read-only)."""
        self = cls.__new__(cls)
        n, S, A = R.shape
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
        if reward_values is not None:
            self._reward_values, self._reward_probs = (_read_only(reward_values),
                                                       _read_only(reward_probs))
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
        self._reward_values = self._reward_probs = None  # set for "outcome" rewards
        self._horizon, self._reward_noise, self.name = horizon, reward_noise, str(name)
        self._shape = tuple(int(d) for d in R.shape)
        # per-task parameters of the family that drew the batch (first axis n_tasks), e.g.
        # GridNavigation's "goal" (n, 2) or Chain's "good_action" (n, S); sub-batches keep them
        self.info = {}
        self._tables = None
        self._stochastic = False  # True: every row of P is known to have >= 2 outcomes (no scan)
        self._start_state = None  # int64 (n,): every task's certain start state, known by construction
        self._trans_cdfs = None   # (trans_cdf_padded, trans_guide) built by the family, if it did
        self._start_cdf = None    # running sums of start, if known
        self._no_terminal = None  # the terminal array, if known by construction to be all False

    next_state = property(lambda self: self._next_state,
                          doc="int64 (n, S, A) next-state table of a deterministic batch, or None")
    R = property(lambda self: self._R, doc="float64 (n, S, A) mean rewards")
    start = property(lambda self: self._start, doc="float64 (n, S) start distributions")
    terminal = property(lambda self: self._terminal, doc="bool (n, S) terminal states")
    reward_std = property(lambda self: self._reward_std, doc="float64 (n,) gaussian noise scales")
    reward_next = property(lambda self: self._reward_next,
                           doc='float64 (n, S, A, S) transition rewards ("transition" noise; the '
                               'expected ones for "outcome"), or None')
    reward_values = property(lambda self: self._reward_values,
                             doc='float64 (n, S, A, S, K) reward outcomes ("outcome" kind), or None')
    reward_probs = property(lambda self: self._reward_probs,
                            doc='float64 (n, S, A, S, K) their probabilities ("outcome" kind), or None')
    horizon = property(lambda self: self._horizon, doc="int, steps per episode")
    reward_noise = property(lambda self: self._reward_noise, doc="str, one of REWARD_KINDS")

    @property
    def P(self):
        """float64 (n, S, A, S) transition probabilities, read-only.  Built on first use (and then
        kept) when the batch holds only a next-state table or, for a family that builds its
        running sums directly (``TabularMDPs``), only those sums: then ``P`` is their differences
        (:func:`cdf_rows_probabilities`), exactly what the kernels draw."""
        if self._P is None:
            n, S, A = self._shape
            if self._next_state is not None:
                P = np.zeros((n, S, A, S))
                np.put_along_axis(P, self.next_state[..., None], 1.0, axis=-1)
            else:
                P = cdf_rows_probabilities(self._trans_cdfs[0], S)
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
            reward_next=None if self.reward_next is None else self.reward_next[idx],
            reward_values=None if self._reward_values is None else self._reward_values[idx],
            reward_probs=None if self._reward_probs is None else self._reward_probs[idx],
            name=self.name)
        sub.info = {key: value[idx] for key, value in self.info.items()}
        sub._stochastic = self._stochastic
        sub._start_state = None if self._start_state is None else _read_only(self._start_state[idx])
        if self._trans_cdfs is not None:
            sub._trans_cdfs = tuple(table if table is _NO_GUIDE else _read_only(table[idx])
                                    for table in self._trans_cdfs)
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
        """A single environment of this task with Gymnasium's API.

        Where Gymnasium is importable this is :meth:`as_gymnasium` (a real ``gymnasium.Env``,
        :class:`metarl_fast.gym_env.GymnasiumTabularEnv`); otherwise the dependency-free
        :class:`TabularEnv`.  Both draw the same random numbers for the same seed.
        """
        try:
            env_class = _gymnasium_env_class()
        except ImportError:
            return TabularEnv(self)
        return env_class(self)

    def as_gymnasium(self):
        """This task as a ``gymnasium.Env`` (requires the ``gym`` extra: ``pip install gymnasium``);
        see :class:`metarl_fast.gym_env.GymnasiumTabularEnv`."""
        return _gymnasium_env_class()(self)

    def __repr__(self):
        return f"Task({self.index} of {self.batch!r})"


class SeededSpace:
    """A space's own random stream, as Gymnasium's spaces keep one: ``seed(seed)``, ``np_random``."""

    _np_random = None

    @staticmethod
    def _seeded_generator(seed):
        """(Generator, int seed) as gymnasium's ``seeding.np_random(seed)`` makes them:
        ``Generator(PCG64(SeedSequence(seed)))``; ``seed`` None (fresh entropy), an int >= 0 or a
        SeedSequence, whose entropy is the int returned."""
        if seed is None or isinstance(seed, np.random.SeedSequence):
            sequence = np.random.SeedSequence() if seed is None else seed
        else:
            if isinstance(seed, np.random.Generator) or not (
                    isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_))):
                raise TypeError(f"seed must be an int >= 0, a SeedSequence or None, got {type(seed).__name__}")
            if seed < 0:
                raise ValueError(f"seed must be a non-negative int, got {seed}")
            sequence = np.random.SeedSequence(int(seed))
        return np.random.default_rng(sequence), sequence.entropy

    def seed(self, seed=None):
        """Restart the space's own stream from ``seed`` (an int >= 0, a SeedSequence, or None for
        fresh entropy); returns the int seed (the SeedSequence's entropy), as Gymnasium does."""
        self._np_random, used = self._seeded_generator(seed)
        return used

    @property
    def np_random(self):
        """The space's own ``numpy.random.Generator`` (made from fresh entropy on first use)."""
        if self._np_random is None:
            self.seed()
        return self._np_random


class Discrete(SeededSpace):
    """The discrete space ``{0, ..., n-1}``: Gymnasium's ``Discrete`` (start 0, int64 samples)
    without the dependency.

    ``sample()`` draws ``np_random.integers(n)`` from the space's own stream, as Gymnasium's
    spaces do: ``np_random`` is a Generator made on first use from fresh entropy, or by
    ``seed(seed)`` / ``Discrete(n, seed=seed)`` (the same draws as
    ``gymnasium.spaces.Discrete(n, seed=seed)``).  ``sample(rng)`` draws from ``rng`` instead
    (a Generator, an int seed or a SeedSequence) and leaves the space's own stream alone.
    """

    def __init__(self, n, seed=None):
        self.n = _validate.positive_int(n, "n")
        self.start = 0
        self.shape = ()
        self.dtype = np.dtype(np.int64)
        self._np_random = None
        if seed is not None:
            self.seed(seed)

    def contains(self, x):
        return (isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))
                and 0 <= int(x) < self.n)

    __contains__ = contains

    def sample(self, rng=None):
        """One element, ``numpy.int64``: from ``rng`` if given, else from :attr:`np_random`."""
        rng = self.np_random if rng is None else as_generator(rng)
        return np.int64(rng.integers(self.n))

    def __repr__(self):
        return f"Discrete({self.n})"

    def __eq__(self, other):
        return isinstance(other, Discrete) and other.n == self.n


def _draw_index(cdf, u):
    """Inverse CDF: number of entries of the running sum ``cdf`` before its last that are
    ``<= u * cdf[-1]`` (rows of :func:`padded_cdf_rows` too: their padding never counts)."""
    return int(np.count_nonzero(cdf[:-1] <= u * cdf[-1]))


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
            s2 = _draw_index(t.trans_cdf_padded[i, s, a], rng.random())
        else:
            s2 = int(t.next_state[i, s, a])
        if kind == REWARD_TRANSITION:
            reward = t.reward_next[i, s, a, s2]
        elif kind == REWARD_OUTCOME:  # one more uniform, after the next state's
            reward = t.reward_values[i, s, a, s2, _draw_index(t.reward_cdf[i, s, a, s2], rng.random())]
        self._elapsed += 1
        terminated = bool(t.terminal[i, s2])
        truncated = (not terminated) and self._elapsed >= t.horizon
        self._state = s2
        self._done = terminated or truncated
        return np.int64(s2), float(reward), terminated, truncated, {}


class TabularEnv(_TabularEnvLogic):
    """One task as an environment with Gymnasium's API and no Gymnasium needed (what
    :meth:`Task.make_env` returns where Gymnasium cannot be imported).

    ``reset(seed=None, options=None) -> (obs, info)``; ``step(action) -> (obs, reward,
    terminated, truncated, info)``.  ``obs`` is the state index (``numpy.int64``).  ``seed`` is an
    int, a SeedSequence or a ``numpy.random.Generator`` (used as is); without it the previous
    stream continues (a fresh unseeded Generator on first use).  ``truncated`` is True when the
    horizon is reached in a non-terminal state.  Stepping after the end of an episode raises
    RuntimeError.  The spaces are :class:`Discrete` (``action_space.sample()`` draws from the
    space's own seedable stream).
    """

    metadata = {"render_modes": []}
    render_mode = None
    spec = None

    @property
    def unwrapped(self):
        return self

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
    """:class:`metarl_fast.gym_env.GymnasiumTabularEnv`, importing Gymnasium on first use;
    ImportError when Gymnasium cannot be imported."""
    global _GYM_CLASS
    if _GYM_CLASS is None:
        try:
            import gymnasium  # noqa: F401 - first: the module below may be imported already
        except ImportError as err:
            raise ImportError(
                "as_gymnasium() needs Gymnasium: pip install gymnasium (the 'gym' extra)") from err
        from metarl_fast.gym_env import GymnasiumTabularEnv

        _GYM_CLASS = GymnasiumTabularEnv
    return _GYM_CLASS


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------

class TaskDistribution:
    """Base class: ``sample(n, rng) -> TaskBatch`` with ``n >= 1`` and ``rng`` an int or Generator."""

    def sample(self, n, rng):
        n = _validate.positive_int(n, "n")
        per_bytes = self._bytes_per_task()
        per_task = self._entries_per_task()
        if per_bytes is not None:  # compact tables: bounded by the memory there is, not by entries
            _validate.check_memory(n * per_bytes, f"{self!r}.sample(n={n}) would build tables "
                                   f"of n x {per_bytes:,} bytes")
        elif per_task is not None and n * per_task > _validate.MAX_TABLE_ENTRIES:  # (message only then)
            _validate.check_table_size(n * per_task, f"{self!r}.sample(n={n}) would build a table "
                                       f"of n x {per_task:,}")
        return self._sample(n, as_generator(rng))

    def _entries_per_task(self):
        """Entries per task of the largest table ``sample`` builds (None: not known up front)."""
        return None

    def _bytes_per_task(self):
        """Bytes per task of all the tables ``sample`` builds, for families whose tables are
        compact (None: bounded by ``_entries_per_task`` instead)."""
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

    Compact: a batch keeps only the running sums of those rows (``tables.trans_cdf_padded``, 8
    bytes per (task, state, action, next state)) and their guide table (``tables.trans_guide``,
    about 1 byte per entry from 30 states on), built in one compiled pass without a copy of the
    draws.  ``batch.P`` is built on request (8 more bytes per entry) as the differences of those
    sums: the probabilities the kernels draw, equal to the Dirichlet rows up to rounding (a few
    units of 1e-16).
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

    def _bytes_per_task(self):
        S, A = self.n_states, self.n_actions
        L = (S - 1 + 3) // 4 * 4
        G = guide_buckets(L)
        # rewards, running sums, guide
        return S * A * (8 + 8 * (L + 1) + (4 * (G + 1) if G else 0))

    def _sample(self, n, rng):
        S, A = self.n_states, self.n_actions
        from metarl_fast._backend import active  # here: the kernel modules import this one

        # rng.normal(1, 1, (n, S, A)) then rng.dirichlet(np.ones(S), (n, S, A)) bit for bit (the
        # same exponentials, normalised the same way), with the kernels' transition CDFs built
        # in the same pass
        R, padded, guide = active.envs.tabular_mdp_draws(rng, n, S, A)
        if S == 1:  # one state: every transition is certain
            return TaskBatch._trusted(None, R, self.horizon,
                                      next_state=np.zeros((n, 1, A), dtype=np.int64),
                                      reward_noise="gaussian", reward_std=1.0,
                                      name=f"TabularMDPs(n_states={S}, n_actions={A})")
        batch = TaskBatch._trusted(None, R, self.horizon, reward_noise="gaussian", reward_std=1.0,
                                   name=f"TabularMDPs(n_states={S}, n_actions={A})")
        batch._stochastic = True  # Dirichlet(1, ..., 1) rows: every entry > 0 almost surely
        batch._trans_cdfs = (padded, guide)
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


# TaskBatch arrays beyond the basic ones that a tasks file may hold
_OPTIONAL_TASK_ARRAYS = ("reward_next", "reward_values", "reward_probs")


class TabularFamily(TaskDistribution):
    """A custom family: fixed task arrays to sample from, or a sampler function.

    ``TabularFamily(P=..., R=..., horizon=..., **batch_kwargs)`` holds ``m`` tasks (P of shape
    (m, S, A, S) or (S, A, S) for one task, or ``next_state`` (m, S, A) / (S, A) for deterministic
    tasks; R (m, S, A) or (S, A), optional ``start``,
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
        next_state = batch_kwargs.pop("next_state", None)
        if (P is None) == (next_state is None) or R is None or horizon is None:
            raise ValueError("TabularFamily needs P (or next_state), R and horizon (or a sampler)")
        table = np.asarray(P if next_state is None else next_state)
        R = np.asarray(R)
        if table.ndim == (3 if next_state is None else 2):  # one task
            table, R = table[None], R[None]
            for key in ("start", "terminal", *_OPTIONAL_TASK_ARRAYS):
                if batch_kwargs.get(key) is not None:
                    batch_kwargs[key] = np.asarray(batch_kwargs[key])[None]
        self._sampler = None
        if next_state is None:
            self._batch = TaskBatch(table, R, horizon, **batch_kwargs)
        else:
            self._batch = TaskBatch(None, R, horizon, next_state=table, **batch_kwargs)

    # the arrays a tasks file may hold: TaskBatch's arguments (P or next_state, R, horizon, ...)
    FILE_KIND, FILE_VERSION = "TabularFamily", 1

    def save(self, path):
        """Write this family's tasks atomically to ``path`` (an ``.npz`` without pickle), for
        :meth:`load` and ``metarl-fast train --tasks file:PATH``."""
        if self._batch is None:
            raise ValueError("a TabularFamily made from a sampler holds no tasks to save")
        b = self._batch
        arrays = {"R": b.R, "horizon": np.array(b.horizon, dtype=np.int64), "start": b.start,
                  "terminal": b.terminal, "reward_noise": np.array(b.reward_noise), "reward_std": b.reward_std}
        if b.next_state is not None:
            arrays["next_state"] = b.next_state
        else:
            arrays["P"] = b.P
        for key in _OPTIONAL_TASK_ARRAYS:
            value = getattr(b, key, None)
            if value is not None and not (key == "reward_next" and b.reward_noise == "outcome"):
                arrays[key] = value  # (an "outcome" batch's reward_next is computed, not given)
        from metarl_fast import io

        io.save_npz(path, arrays, kind=self.FILE_KIND, version=self.FILE_VERSION)

    @classmethod
    def load(cls, path):
        """The family in the ``.npz`` at ``path``: one written by :meth:`save`, or by
        ``numpy.savez(path, P=..., R=..., horizon=..., [start=..., terminal=..., reward_noise=...,
        reward_std=..., reward_next=...])`` with the shapes of the constructor (``next_state``
        instead of ``P`` for deterministic tasks).  Raises ``io.CheckpointError`` (a ValueError) naming
        the file and what is wrong."""
        from metarl_fast import io

        arrays, _ = io.load_npz(path, kind=cls.FILE_KIND, versions={cls.FILE_VERSION}, plain_ok=True)
        allowed = {"P", "next_state", "R", "horizon", "start", "terminal", "reward_noise", "reward_std",
                   *_OPTIONAL_TASK_ARRAYS}
        unknown = sorted(set(arrays) - allowed)
        if unknown:
            raise io.CheckpointError(f"{path}: unknown arrays {unknown}; a tasks file holds {sorted(allowed)}")
        for key in ("R", "horizon"):
            if key not in arrays:
                raise io.CheckpointError(f"{path}: a tasks file needs the array {key!r} (and P or next_state)")
        try:
            horizon = io.integer(arrays.pop("horizon"), "horizon", low=1)
            if "reward_noise" in arrays:
                noise = arrays["reward_noise"]
                if noise.dtype.kind != "U" or noise.ndim != 0:
                    raise ValueError(f"reward_noise must be a string, got {noise.dtype} of shape {noise.shape}")
                arrays["reward_noise"] = str(noise)
            return cls(arrays.pop("P", None), arrays.pop("R"), horizon, **arrays)
        except (ValueError, TypeError) as err:
            raise io.CheckpointError(f"{path}: {err}") from None

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


# Tables read from Gymnasium envs, by (env id, concrete keyword arguments): reading P in Python is
# slow, so each combination is read once (least recently used first; random maps come and go).
_GYM_MODELS = collections.OrderedDict()
_GYM_MODELS_MAX = 256
_GYM_WORKS = ("FrozenLake-v1 (map_name, desc, is_slippery, ...), FrozenLake8x8-v1, Taxi-v4, "
              "CliffWalking-v1 and CliffWalkingSlippery-v1")


def _import_gymnasium():
    try:
        import gymnasium
    except ImportError as err:
        raise ImportError("FromGymnasium needs Gymnasium: pip install gymnasium (the 'gym' extra)") from err
    return gymnasium


class _GymModel:
    """The exact model of one toy-text env in sparse form (built by :func:`_read_gym_model`).

    ``n_env_states`` S0 (the env's observations), ``n_states`` S0 plus the absorbing terminal
    copies, ``n_actions``; the ``m`` possible transitions ``s``, ``a``, ``t`` (int64 (m,), ``t``
    possibly a copy) with probabilities ``p`` (float64 (m,)) and their reward outcomes
    ``values``/``probs`` (float64 (m, K)); ``start`` float64 (n_states,), ``terminal`` bool
    (n_states,), ``deterministic`` (one transition per (s, a)), ``horizon`` (the spec's
    max_episode_steps or None)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)
        self.n_outcomes = int(self.values.shape[1])


def _read_gym_model(env, label):
    """A :class:`_GymModel` of ``env`` (a ``gymnasium.Env``); ``label`` names it in errors."""
    gymnasium = _import_gymnasium()
    for name in ("observation_space", "action_space"):
        space = getattr(env, name, None)
        if not isinstance(space, gymnasium.spaces.Discrete):
            raise TypeError(f"FromGymnasium needs a Discrete {name}, got {space!r} ({label}): only "
                            f"finite tabular envs can be modelled; these work: {_GYM_WORKS}")
        if int(space.start) != 0:
            raise TypeError(f"FromGymnasium needs {name} to start at 0, got start={space.start} ({label})")
    S, A = int(env.observation_space.n), int(env.action_space.n)
    _validate.check_table_size(S * A, f"{label}: its table of {S} states x {A} actions")
    base = env.unwrapped
    model = getattr(base, "P", None)
    isd = getattr(base, "initial_state_distrib", None)
    if not isinstance(model, dict) or isd is None:
        raise TypeError(
            f"{type(base).__name__} does not expose a tabular model (unwrapped.P as a dict "
            f"s -> a -> [(prob, next_state, reward, terminated)] and initial_state_distrib); "
            f"these work: {_GYM_WORKS}")
    if getattr(base, "fickle_passenger", False):
        raise ValueError(f"{label}: fickle_passenger=True changes the destination inside step(), "
                         "beyond unwrapped.P, so the env has no exact tabular model; use "
                         "fickle_passenger=False")
    rows = []  # (s, a, s', prob, reward, terminated), prob > 0
    for s in range(S):
        for a in range(A):
            try:
                entries = model[s][a]
            except (KeyError, IndexError, TypeError):
                raise TypeError(f"{label}: unwrapped.P[{s}][{a}] is missing") from None
            total = 0.0
            for entry in entries:
                try:
                    prob, s2, r, term = entry
                    prob, r = float(prob), float(r)
                    s2_int = int(s2)
                except (TypeError, ValueError):
                    raise TypeError(f"{label}: unwrapped.P[{s}][{a}] holds {entry!r}, not "
                                    "(prob, next_state, reward, terminated)") from None
                if not (np.isfinite(prob) and prob >= 0 and np.isfinite(r)) or s2_int != s2 \
                        or not 0 <= s2_int < S:
                    raise ValueError(f"{label}: unwrapped.P[{s}][{a}] holds {entry!r}: a probability "
                                     f">= 0, a state in [0, {S}) and a finite reward are needed")
                total += prob
                if prob > 0:
                    rows.append((s, a, s2_int, prob, r, bool(term)))
            if abs(total - 1.0) > _ROW_TOL:
                raise ValueError(f"{label}: the probabilities of unwrapped.P[{s}][{a}] sum to "
                                 f"{total!r}, not 1")
    start = np.array(isd, dtype=np.float64).reshape(-1)
    if start.shape != (S,) or not np.all(np.isfinite(start)) or start.min() < 0 \
            or abs(start.sum() - 1.0) > _ROW_TOL:
        raise ValueError(f"{label}: initial_state_distrib must be a distribution over the {S} states")
    s_arr = np.array([row[0] for row in rows], dtype=np.int64)
    a_arr = np.array([row[1] for row in rows], dtype=np.int64)
    t_arr = np.array([row[2] for row in rows], dtype=np.int64)
    term = np.array([row[5] for row in rows], dtype=bool)

    # States an episode can be in: the start states and whatever they reach without ending.
    reach = start > 0
    while True:
        grown = reach.copy()
        grown[t_arr[~term & reach[s_arr]]] = True
        if np.array_equal(grown, reach):
            break
        reach = grown
    inside = reach[s_arr]
    entered_ending = np.bincount(t_arr[term & inside], minlength=S) > 0
    entered_going_on = np.bincount(t_arr[~term & inside], minlength=S) > 0
    entered_ending_outside = np.bincount(t_arr[term & ~inside], minlength=S) > 0
    # entered both ways from where episodes go: terminating transitions go to an absorbing copy
    both = entered_ending & entered_going_on
    copy_of = np.full(S, -1, dtype=np.int64)
    copy_of[both] = S + np.arange(int(both.sum()))
    n_states = S + int(both.sum())
    terminal = np.ones(n_states, dtype=bool)
    # never entered from where episodes go: the flags of the transitions into it decide
    terminal[:S] = ((entered_ending & ~entered_going_on)
                    | (~entered_ending & ~entered_going_on & entered_ending_outside))
    target = np.where(term & both[t_arr], copy_of[t_arr], t_arr)

    # group by (s, a, target): the transition's probability and its distinct rewards
    groups = {}
    for (s, a, _, prob, r, _), t in zip(rows, target.tolist()):
        outcomes = groups.setdefault((s, a, t), {})
        outcomes[r] = outcomes.get(r, 0.0) + prob
    for c in range(S, n_states):  # the copies: absorbing, reward 0
        for a in range(A):
            groups[(c, a, c)] = {0.0: 1.0}
    keys = sorted(groups)
    K = max(len(outcomes) for outcomes in groups.values())
    values = np.zeros((len(keys), K))
    probs = np.zeros((len(keys), K))
    p = np.empty(len(keys))
    for j, key in enumerate(keys):
        outcomes = groups[key]
        total = sum(outcomes.values())
        p[j] = total
        for k, (r, q) in enumerate(outcomes.items()):
            values[j, k] = r
            probs[j, k] = q / total
    sat = np.array(keys, dtype=np.int64).reshape(-1, 3)
    per_sa = np.bincount(sat[:, 0] * A + sat[:, 1], minlength=n_states * A)
    spec = getattr(env, "spec", None)
    horizon = getattr(spec, "max_episode_steps", None)
    return _GymModel(n_env_states=S, n_states=n_states, n_actions=A, s=sat[:, 0], a=sat[:, 1],
                     t=sat[:, 2], p=p, values=values, probs=probs,
                     start=np.concatenate([start, np.zeros(n_states - S)]), terminal=terminal,
                     deterministic=bool(np.all(per_sa == 1)),
                     horizon=None if horizon is None else int(horizon))


def _freeze(value):
    """A hashable stand-in of a keyword value (lists and dicts as tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    return value


def _gym_model(env_id, kwargs):
    """The cached :class:`_GymModel` of ``gymnasium.make(env_id, **kwargs)``."""
    try:
        key = (env_id, _freeze(kwargs))
        hash(key)
    except TypeError:
        key = None  # an unhashable option: read every time
    model = _GYM_MODELS.get(key) if key is not None else None
    if model is not None:
        _GYM_MODELS.move_to_end(key)
        return model
    gymnasium = _import_gymnasium()
    options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    label = f"gymnasium.make({env_id!r}{', ' if options else ''}{options})"
    try:
        env = gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as err:
        raise ValueError(f"{label} failed: {err}") from None
    except TypeError as err:
        raise TypeError(f"{label} failed: {err}") from None
    except (ValueError, KeyError) as err:
        raise ValueError(f"{label} failed: {err!s}") from None
    try:
        model = _read_gym_model(env, label)
    finally:
        env.close()
    if key is not None:
        _GYM_MODELS[key] = model
        while len(_GYM_MODELS) > _GYM_MODELS_MAX:
            _GYM_MODELS.popitem(last=False)
    return model


class _Layout:
    """How a batch of envs' models is laid out: ``n_states`` (the largest, padded with unused
    states), ``deterministic`` (a next-state table instead of dense P), ``reward_noise``
    ("none": deterministic transitions, rewards in R; "transition": one reward per transition;
    "outcome": up to ``n_outcomes`` rewards per transition) and ``horizon``."""

    def __init__(self, models, horizon, label):
        actions = {m.n_actions for m in models}
        env_states = {m.n_env_states for m in models}
        if len(actions) != 1 or len(env_states) != 1:
            raise ValueError(f"{label}: all tasks must have the same spaces, got "
                             f"{sorted(env_states)} states and {sorted(actions)} actions")
        self.n_states = max(m.n_states for m in models)
        self.n_actions = actions.pop()
        self.deterministic = all(m.deterministic for m in models)
        self.n_outcomes = max(m.n_outcomes for m in models)
        self.reward_noise = ("outcome" if self.n_outcomes > 1 else
                             "none" if self.deterministic else "transition")
        if horizon is None:
            horizons = {m.horizon for m in models}
            if None in horizons:
                raise ValueError(f"{label}: the env has no spec.max_episode_steps; pass horizon= "
                                 "to FromGymnasium (--horizon N on the command line)")
            if len(horizons) != 1:
                raise ValueError(f"{label}: the tasks' max_episode_steps differ ({sorted(horizons)}); "
                                 "pass horizon= to FromGymnasium")
            horizon = horizons.pop()
        self.horizon = horizon

    def entries_per_task(self):
        S, A = self.n_states, self.n_actions
        if self.reward_noise == "outcome":
            return S * A * S * self.n_outcomes
        return S * A if self.deterministic else S * A * S

    def batch(self, models, name):
        """A validated :class:`TaskBatch` of one task per model, in this layout."""
        n, S, A, K = len(models), self.n_states, self.n_actions, self.n_outcomes
        start = np.zeros((n, S))
        terminal = np.zeros((n, S), dtype=bool)
        kwargs = dict(reward_noise=self.reward_noise, name=name)
        if self.deterministic:
            next_state = np.empty((n, S, A), dtype=np.int64)
            next_state[:] = np.arange(S)[:, None]  # padding states stay put
            kwargs["next_state"] = next_state
        else:
            P = np.zeros((n, S, A, S))
            P[:, np.arange(S), :, np.arange(S)] = 1.0
            kwargs["P"] = P
        R = np.zeros((n, S, A))
        if self.reward_noise == "transition":
            kwargs["reward_next"] = np.zeros((n, S, A, S))
        elif self.reward_noise == "outcome":
            kwargs["reward_values"] = np.zeros((n, S, A, S, K))
            kwargs["reward_probs"] = np.zeros((n, S, A, S, K))
            kwargs["reward_probs"][..., 0] = 1.0
        for i, m in enumerate(models):
            S_m = m.n_states
            start[i, :S_m] = m.start
            terminal[i, :S_m] = m.terminal
            if self.deterministic:
                next_state[i, m.s, m.a] = m.t
            else:
                P[i, :S_m, :, :S_m] = 0.0
                P[i, m.s, m.a, m.t] = m.p
            if self.reward_noise == "none":
                R[i, m.s, m.a] = m.values[:, 0]
            elif self.reward_noise == "transition":
                kwargs["reward_next"][i, m.s, m.a, m.t] = m.values[:, 0]
            else:
                kwargs["reward_values"][i, m.s, m.a, m.t, :m.n_outcomes] = m.values
                kwargs["reward_probs"][i, m.s, m.a, m.t, :] = 0.0
                kwargs["reward_probs"][i, m.s, m.a, m.t, :m.n_outcomes] = m.probs
        if self.deterministic:
            return TaskBatch(None, R, self.horizon, start=start, terminal=terminal, **kwargs)
        return TaskBatch(kwargs.pop("P"), R, self.horizon, start=start, terminal=terminal, **kwargs)


class FromGymnasium(TaskDistribution):
    """Toy-text Gymnasium environments as a task family, e.g.::

        FromGymnasium("FrozenLake-v1", desc="random", size=8, is_slippery=[True, False])
        FromGymnasium("Taxi-v4")
        FromGymnasium("CliffWalkingSlippery-v1", horizon=100)

    ``env`` is a Gymnasium env id (each task's env is ``gymnasium.make(env, **options)``) or, as
    before, a callable ``make_env(rng) -> gymnasium.Env`` that draws a task's env from ``rng``.
    ``env_kwargs`` (ids only) are the env's options; a **list** value means one of its items,
    uniformly and independently per task (``is_slippery=[True, False]``; give a tuple for a single
    sequence value, e.g. ``reward_schedule=(1, -1, 0)``; for ``desc`` a list of strings is one map
    and a list of maps a choice).  ``desc="random"`` (FrozenLake) draws a map per task with
    ``generate_random_map(size=size, p=p, seed=...)``, ``size`` (default 8) and ``p`` (default 0.8,
    in [0.5, 1]) being options of ours.  ``sample(n, rng)`` draws ``rng.integers(len(items), size=n)``
    per list option (in name order), then ``rng.integers(2**31, size=n)`` map seeds (random
    maps), so the same ``rng`` gives the same tasks.  The tables of each concrete combination of
    options are read once and cached; a family without list or random options holds one task.

    Observation and action spaces must be ``Discrete`` (start 0) and the unwrapped env must
    expose its exact model the toy-text way: ``P[s][a]`` a list of ``(prob, next_state, reward,
    terminated)`` and ``initial_state_distrib``; anything else (Blackjack's Tuple observations,
    classic control's Box spaces, an env without ``P``) raises a one-line TypeError/ValueError.
    The horizon is ``horizon`` or else the spec's ``max_episode_steps``.

    How the model is read:

    - *Termination* may depend on the transition.  Episodes run in the states reachable from the
      start states through non-terminating transitions.  A state entered from those only by
      terminating transitions is terminal; one entered from them both ways gets an absorbing
      terminal **copy** (state index ``>= env.observation_space.n``, in order of the original
      state) which its terminating transitions enter instead: a task's observation can then be
      such a copy, and its episode ends there.  A state never entered from reachable states is
      terminal if some transition into it terminates.  Transitions out of unreachable states are
      kept with those terminal flags (an episode never takes them).  Taxi-v4, FrozenLake and
      CliffWalking need no copies.
    - *Rewards* may differ between the entries of one transition ``(s, a, s')`` (slippery
      CliffWalking: falling off the cliff back to the start pays -100, walking onto the start
      -1): the batch's rewards are then ``"outcome"`` rewards (each distinct reward with its share
      of the transition's probability; ``R`` and ``reward_next`` are expectations).  Otherwise
      they are ``"transition"`` rewards, or ``"none"`` (rewards in ``R``, a next-state table) when
      every transition is deterministic.
    - Tasks of different option combinations share one layout (the most general one among all
      combinations; a batch's own for random maps and callables), padded with unused states if
      their copies differ.  Gymnasium is imported only here.

    Attributes: ``env_id`` (None for a callable), ``env_kwargs`` (the options given),
    ``horizon`` (None: the spec's).  A sampled batch (env ids) keeps each task's combination of
    list options in ``batch.info["combination"]`` (int64 (n,), mixed radix over the list options
    in name order, the first most significant) and, for random maps, its ``"map_seed"``.
    """

    def __init__(self, env, horizon=None, **env_kwargs):
        self.horizon = None if horizon is None else _validate.positive_int(horizon, "horizon")
        self.env_kwargs = dict(env_kwargs)
        self._pool = None  # TaskBatch of every combination (no random option), built on demand
        if isinstance(env, str):
            self.env_id, self.make_env = env, None
            self._setup_options(_import_gymnasium())
        elif callable(env):
            if env_kwargs:
                raise ValueError("env_kwargs apply to a Gymnasium env id; a make_env callable "
                                 f"takes none, got {sorted(env_kwargs)}")
            self.env_id, self.make_env = None, env
        else:
            raise TypeError("env must be a Gymnasium env id (str, e.g. 'FrozenLake-v1') or a "
                            f"callable make_env(rng) -> gymnasium.Env, got {type(env).__name__}")

    def _setup_options(self, gymnasium):
        try:
            spec = gymnasium.spec(self.env_id)
        except gymnasium.error.Error as err:
            raise ValueError(f"unknown Gymnasium env id {self.env_id!r} ({err}); these work: "
                             f"{_GYM_WORKS}") from None
        kwargs = dict(self.env_kwargs)
        self._random_map = isinstance(kwargs.get("desc"), str) and kwargs["desc"] == "random"
        if self._random_map and "frozen_lake" not in str(spec.entry_point):
            raise ValueError(f"desc='random' draws FrozenLake maps; {self.env_id} is not FrozenLake")
        if isinstance(kwargs.get("desc"), str) and not self._random_map:
            raise ValueError(f"desc must be a map (a list of strings), a list of maps or 'random', "
                             f"got {kwargs['desc']!r}")
        size, p = kwargs.pop("size", None), kwargs.pop("p", None)
        if not self._random_map and (size is not None or p is not None):
            raise ValueError("size and p are options of desc='random' (they size the random maps)")
        if self._random_map:
            kwargs.pop("desc")
            self._map_size = _validate.positive_int(8 if size is None else size, "size", minimum=2)
            self._map_p = _validate.finite_float(0.8 if p is None else p, "p", low=0.5, high=1.0)
            _validate.check_table_size(self._map_size ** 2 * 4,
                                       f"desc='random' with size={self._map_size}: a map's table")
        self._fixed, self._choices = {}, {}
        for name in sorted(kwargs):
            value = kwargs[name]
            is_map = name == "desc" and isinstance(value, list) and all(isinstance(v, str) for v in value)
            if isinstance(value, list) and not is_map:
                if not value:
                    raise ValueError(f"{name}=[] gives nothing to choose from (a list means one of its items)")
                self._choices[name] = list(value)
            else:
                self._fixed[name] = value
        # read what can be read now: every combination, or one random map (errors surface here)
        if self._random_map:
            # (its layout gives sample() a size to check before any map is read)
            self._layout = _Layout([self._model_of(self._combination(0), 0)], self.horizon, repr(self))
        else:
            self._layout = _Layout(self._all_models(), self.horizon, repr(self))
            n = self._n_combinations()
            _validate.check_table_size(n * self._layout.entries_per_task(),
                                       f"{self!r}: the tables of its {n:,} combinations of options")

    def _combination(self, index):
        """The keyword arguments of combination ``index`` (mixed radix over the choices, the
        first choice most significant)."""
        kwargs = dict(self._fixed)
        for name in reversed(list(self._choices)):
            items = self._choices[name]
            index, j = divmod(index, len(items))
            kwargs[name] = items[j]
        return kwargs

    def _n_combinations(self):
        n = 1
        for items in self._choices.values():
            n *= len(items)
        return n

    def _model_of(self, kwargs, map_seed=None):
        if map_seed is not None:
            from gymnasium.envs.toy_text.frozen_lake import generate_random_map

            kwargs = dict(kwargs, desc=generate_random_map(size=self._map_size, p=self._map_p,
                                                           seed=int(map_seed)))
        if isinstance(kwargs.get("desc"), list):
            kwargs["desc"] = tuple(kwargs["desc"])  # a map, not a choice
        return _gym_model(self.env_id, kwargs)

    def _all_models(self):
        n = self._n_combinations()
        _validate.check_table_size(n, f"{self!r}: {n:,} combinations of options")
        return [self._model_of(self._combination(j)) for j in range(n)]

    def _entries_per_task(self):
        if self.env_id is None:
            return None  # known once the batch's envs are read
        # (random maps: one map's, the batch's own layout is checked again once its maps are read)
        return self._layout.entries_per_task()

    def _sample(self, n, rng):
        if self.make_env is not None:
            models = []
            for j in range(n):
                env = self.make_env(rng)
                try:
                    models.append(_read_gym_model(env, f"make_env(rng) #{j}"))
                finally:
                    close = getattr(env, "close", None)
                    if close is not None:
                        close()
            return self._assemble(models, None)
        index = np.zeros(n, dtype=np.int64)
        for items in self._choices.values():  # the first choice most significant
            index = index * len(items) + rng.integers(len(items), size=n)
        if not self._random_map:
            if self._pool is None:
                self._pool = self._layout.batch(self._all_models(), self._name())
            batch = self._pool[index]
            batch.info["combination"] = index
            return batch
        seeds = rng.integers(2**31, size=n)
        keys = list(zip(index.tolist(), seeds.tolist()))
        unique = list(dict.fromkeys(keys))
        position = {key: j for j, key in enumerate(unique)}
        models = [self._model_of(self._combination(c), seed) for c, seed in unique]
        batch = self._assemble(models, np.array([position[key] for key in keys], dtype=np.int64))
        batch.info["combination"], batch.info["map_seed"] = index, seeds
        return batch

    def _assemble(self, models, index):
        """The batch of tasks ``models[index]`` (``index`` None: ``models``) in the layout of
        ``models``."""
        layout = _Layout(models, self.horizon, repr(self))
        n = len(models if index is None else index)
        _validate.check_table_size(n * layout.entries_per_task(),
                                   f"{self!r}.sample(n={n}) would build a table of n x "
                                   f"{layout.entries_per_task():,}")
        batch = layout.batch(models, self._name())
        return batch if index is None else batch[index]

    def _name(self):
        return f"FromGymnasium({self.env_id or getattr(self.make_env, '__name__', 'make_env')})"

    @staticmethod
    def tables_of(env, horizon=None):
        """The tables of one ``gymnasium.Env`` as a dict of :class:`TaskBatch` arguments for one
        task (no task axis), read as the class docstring says: ``P`` float64 (S, A, S),
        ``R`` (S, A), ``start`` (S,), ``terminal`` bool (S,), ``reward_noise``, ``reward_next``
        (S, A, S) expected rewards, ``reward_values``/``reward_probs`` (S, A, S, K), ``horizon``
        and ``n_env_states`` (S minus the terminal copies)."""
        model = _read_gym_model(env, type(getattr(env, "unwrapped", env)).__name__)
        layout = _Layout([model], None if horizon is None else
                         _validate.positive_int(horizon, "horizon"), "tables_of")
        layout.deterministic = False  # dense P
        layout.reward_noise = "outcome"
        one = layout.batch([model], "tables_of")
        return dict(P=one.P[0], R=one.R[0], start=one.start[0], terminal=one.terminal[0],
                    reward_noise="outcome" if model.n_outcomes > 1 else "transition",
                    reward_next=one.reward_next[0], reward_values=one.reward_values[0],
                    reward_probs=one.reward_probs[0], horizon=layout.horizon,
                    n_env_states=model.n_env_states)

    def __repr__(self):
        if self.env_id is None:
            head = getattr(self.make_env, "__name__", repr(self.make_env))
        else:
            head = repr(self.env_id)
        options = "".join(f", {k}={v!r}" for k, v in self.env_kwargs.items())
        horizon = "" if self.horizon is None else f", horizon={self.horizon}"
        return f"FromGymnasium({head}{options}{horizon})"
