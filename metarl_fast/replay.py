"""Experience replay shared across tasks: a FIFO ring buffer and a prioritized variant.

:class:`ReplayBuffer` stores, per transition, ``obs``, ``action``, ``reward``, ``next_obs``,
``terminated``, ``truncated``, ``task_id`` (int32), ``episode_id`` (int64, assigned by the
buffer) and the behaviour policy's ``logp``, in preallocated NumPy arrays; when full the oldest
transitions are overwritten.  It samples uniform batches (optionally of one task, in O(1) per index
through per-task FIFO rings), time-ordered windows that stay inside one episode, and (in
:class:`PrioritizedReplayBuffer`) batches proportional to ``priority ** alpha`` through a sum tree.

Storage is one aligned record per transition (a NumPy structured array: array of structs), so a
sampled transition costs one or two cache lines rather than one per field; each field is exposed
as a read-only strided view (``buffer.obs`` ...).  The heavy work runs in the active backend's
kernels (``metarl_fast._core.replay`` or ``metarl_fast.reference.replay``); both sample identical
indices for the same Generator state.

Thread safety
-------------
Every public method holds the buffer's lock for its whole duration (the Cython kernels release
the GIL for large copies, but hold this lock; a thread waiting for the lock waits without the
GIL).  The one exception is the compiled single ``add``: while nobody holds the lock it writes
without taking it, because its whole write is C code that runs under the GIL and calls no Python
code, so no other thread can run meanwhile.  In free-threaded CPython builds it always takes
the lock.  So one thread may add while others sample: each call is
atomic with respect to the others -- a sampled batch is a consistent snapshot (no half-written
transition, no torn write position), and a Batch is a copy that later writes never alias.
The Generator passed to the sampling methods is used under its own ``bit_generator.lock``.
The storage views (``buffer.obs`` ...) and ``len(buffer)`` are read without the lock: read them
from the writing thread, or use :meth:`ReplayBuffer.gather` for a consistent copy.
"""
import os
import threading
from typing import NamedTuple, Optional

import numpy as np

from metarl_fast import _validate, io
from metarl_fast._backend import active
from metarl_fast.reference.replay import (
    FIELDS,
    MAX_TASKS,
    N_ADDED,
    NEXT_EPISODE,
    OPEN_TASK,
    POS,
    SIZE,
    TaskIndex,
    check_sample_args,
    check_sample_task,
)

REPLAY_FORMAT_VERSION = 1
_Generator = np.random.Generator

__all__ = ["Batch", "ReplayBuffer", "PrioritizedReplayBuffer", "MAX_TASKS"]


class Batch(NamedTuple):
    """A sampled batch: copies of the stored fields (later writes to the buffer never alias them).

    For :meth:`ReplayBuffer.sample` every field has first dimension B (``obs``: (B, *obs_shape));
    for :meth:`ReplayBuffer.sample_sequences` the first two dimensions are (B, L) in time order.
    ``task_id`` is int64.  ``indices`` are the storage slots (int64); ``weights`` are the importance weights of a
    :class:`PrioritizedReplayBuffer` sample (else None).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    task_id: np.ndarray
    episode_id: np.ndarray
    logp: np.ndarray
    indices: np.ndarray
    weights: Optional[np.ndarray] = None


def _batch(fields, indices, weights=None):
    """A :class:`Batch` of gathered ``fields`` (FIELDS order; the kernels widen the task ids to
    int64, like every task id of the API, while the storage keeps them as int32)."""
    return Batch(*fields, indices, weights)


def _shape(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        shape = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}") from None
    for d in shape:
        _validate.positive_int(d, f"{name} entries", minimum=1)
    return tuple(int(d) for d in shape)


def _data_dtype(value, name):
    try:
        dtype = np.dtype(value)
    except TypeError as err:
        raise TypeError(f"{name} must be a NumPy integer or float dtype, got {value!r}") from err
    if dtype.kind not in "iuf" or dtype.itemsize > 8 or (dtype.kind == "f" and dtype.itemsize < 4):
        raise TypeError(f"{name} must be a NumPy integer, float32 or float64 dtype, got {dtype}")
    return dtype.newbyteorder("=")


def _available_memory():
    """Bytes a new buffer may take: what the process can still fill (:func:`memory.available_bytes`),
    else the machine's physical memory."""
    from metarl_fast.memory import available_bytes

    available = available_bytes()
    if available is not None:
        return available
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _record_dtype(specs):
    """The aligned structured dtype of one stored transition (fields in FIELDS order)."""
    return np.dtype([(name, dtype, shape) for name, (shape, dtype) in zip(FIELDS, specs)], align=True)


def _allocate(capacity, specs, extra_bytes=0):
    """Zeroed storage for ``capacity`` transitions: the tuple of per-field views (FIELDS order).

    The transitions are stored as one aligned record each (array of structs), so sampling a
    transition touches one or two cache lines instead of nine; each field is a strided
    (capacity, *shape) view.  Raises MemoryError (with the byte count) before allocating if the
    total is more than the process can still fill (:func:`metarl_fast.memory.available_bytes`:
    the memory available, a container's limit, the address-space limit), since the zeroed pages
    are only taken when written.
    """
    record = _record_dtype(specs)
    nbytes = capacity * record.itemsize + extra_bytes
    limit = _available_memory()
    if nbytes >= 2 ** 62 or (limit is not None and nbytes > limit):
        raise MemoryError(
            f"a replay buffer of capacity {capacity} needs {nbytes} bytes "
            f"({nbytes / 2 ** 30:.1f} GiB), more than this process can still fill"
            + (f" ({limit} bytes available)" if limit is not None else "")
        )
    try:
        records = np.zeros(capacity, dtype=record)
    except MemoryError as err:
        raise MemoryError(f"could not allocate {nbytes} bytes for a replay buffer of capacity {capacity}") from err
    return tuple(records[name] for name in FIELDS)


def _storage_view(i):
    def get(self):
        # zero-copy through a read-only memoryview: its WRITEABLE flag cannot be set again, so
        # nothing the compiled kernels read can be written through it
        return np.asarray(memoryview(self._store[i]).toreadonly())
    get.__doc__ = f"Read-only view of the ``{FIELDS[i]}`` storage (capacity, ...)."
    return property(get)


class ReplayBuffer:
    """FIFO ring buffer of transitions from every task.

    Parameters
    ----------
    capacity : int >= 1
        Number of transitions held; when full the oldest are overwritten.
    obs_shape : tuple of int, default ()  (``()``: scalar, e.g. tabular states)
    obs_dtype : integer, float32 or float64 dtype, default int64
    action_dtype : integer, float32 or float64 dtype, default int64
    action_shape : tuple of int, default ()
    reward_dtype : float32 or float64, default float64 (also the dtype of ``logp``)

    Storage (read-only views through the properties of the same names): ``obs``
    (capacity, *obs_shape), ``action``, ``reward``, ``next_obs``, ``terminated``, ``truncated``,
    ``task_id`` (int32), ``episode_id`` (int64), ``logp``.  See the module docstring for the
    thread-safety guarantee.
    """

    _kind = "ReplayBuffer"

    def __init__(self, capacity, obs_shape=(), obs_dtype=np.int64, action_dtype=np.int64, *,
                 action_shape=(), reward_dtype=np.float64):
        capacity = _validate.positive_int(capacity, "capacity")
        obs_shape = _shape(obs_shape, "obs_shape")
        action_shape = _shape(action_shape, "action_shape")
        obs_dtype = _data_dtype(obs_dtype, "obs_dtype")
        action_dtype = _data_dtype(action_dtype, "action_dtype")
        reward_dtype = np.dtype(reward_dtype) if not isinstance(reward_dtype, np.dtype) else reward_dtype
        if reward_dtype not in _validate.FLOAT_DTYPES:
            raise TypeError(f"reward_dtype must be float32 or float64, got {reward_dtype}")
        specs = self._specs(obs_shape, obs_dtype, action_shape, action_dtype, reward_dtype)
        store = _allocate(capacity, specs, self._extra_bytes(capacity))
        self._init_from(store, np.zeros(5, dtype=np.int64))
        self._open_task_reset()

    @staticmethod
    def _specs(obs_shape, obs_dtype, action_shape, action_dtype, reward_dtype):
        return [(obs_shape, obs_dtype), (action_shape, action_dtype), ((), reward_dtype),
                (obs_shape, obs_dtype), ((), np.dtype(bool)), ((), np.dtype(bool)),
                ((), np.dtype(np.int32)), ((), np.dtype(np.int64)), ((), reward_dtype)]

    @staticmethod
    def _extra_bytes(capacity):
        return 0

    def _init_from(self, store, state):
        self._store = store
        self._state = state
        self._tasks = TaskIndex()
        self._tasks.rebuild(store[6], state)
        kernels = active.replay
        if hasattr(kernels, "CompiledBuffer"):
            # Compiled backend: a lock that C code takes without a Python call, and (where this
            # class's own methods are not overridden) C methods bound over `add`, `add_batch`
            # and `sample`.
            self._lock = kernels.BufferLock()
            compiled = kernels.CompiledBuffer(store, state, self._tasks, self._lock, Batch)
            if type(self).add is ReplayBuffer.add:
                self.add = compiled.add
            if (type(self).add_batch is ReplayBuffer.add_batch
                    and type(self)._after_write is ReplayBuffer._after_write):
                self.add_batch = compiled.add_batch
            if type(self).sample is ReplayBuffer.sample:
                self.sample = compiled.sample
        else:
            self._lock = threading.Lock()

    def _open_task_reset(self):
        self._state[OPEN_TASK] = -1

    # -- description ---------------------------------------------------------------------------

    @property
    def capacity(self):
        """Maximum number of stored transitions (int)."""
        return self._store[0].shape[0]

    def __len__(self):
        return int(self._state[SIZE])

    @property
    def is_full(self):
        """True once ``capacity`` transitions are stored (further adds overwrite the oldest)."""
        return int(self._state[SIZE]) == self.capacity

    @property
    def obs_shape(self):
        return self._store[0].shape[1:]

    @property
    def obs_dtype(self):
        return self._store[0].dtype

    @property
    def action_shape(self):
        return self._store[1].shape[1:]

    @property
    def action_dtype(self):
        return self._store[1].dtype

    @property
    def reward_dtype(self):
        return self._store[2].dtype

    @property
    def n_added(self):
        """Number of transitions ever added (including overwritten ones)."""
        return int(self._state[N_ADDED])

    @property
    def write_position(self):
        """The slot the next transition is written to."""
        return int(self._state[POS])

    @property
    def next_episode_id(self):
        """The episode id the next transition of a new episode gets."""
        return int(self._state[NEXT_EPISODE])

    def task_count(self, task_id):
        """Number of stored transitions of task ``task_id``."""
        return self._tasks.count(_validate.positive_int(task_id, "task_id", minimum=-(2**63)))

    def __repr__(self):
        return (f"{type(self).__name__}(capacity={self.capacity}, len={len(self)}, "
                f"obs_shape={self.obs_shape}, obs_dtype={self.obs_dtype}, "
                f"action_dtype={self.action_dtype}, reward_dtype={self.reward_dtype})")

    obs, action, reward, next_obs, terminated, truncated, task_id, episode_id, logp = (
        _storage_view(i) for i in range(len(FIELDS)))

    # -- writing -------------------------------------------------------------------------------

    def add(self, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0):
        """Append one transition (``obs``/``next_obs`` of shape obs_shape, scalars elsewhere).

        Raises TypeError/ValueError (naming the argument) for a wrong shape or dtype, a NaN/inf
        reward or logp, or a negative task_id; the buffer is then unchanged.

        With the Cython backend active when the buffer is made (or loaded), the instance's
        ``add`` is this method compiled (:class:`metarl_fast._core.replay.CompiledBuffer`): same
        checks, same result, one C call.  So are ``add_batch`` and ``sample``.
        """
        with self._lock:
            active.replay.add_one(self._store, self._state, self._tasks, obs, action, reward,
                                  next_obs, terminated, truncated, task_id, logp)

    def add_batch(self, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0):
        """Append n transitions in one call: one pass over at most two contiguous ranges of records
        (the ring wraps at most once), without the GIL for n >= 64.

        Parameters
        ----------
        obs, next_obs : array (n, *obs_shape)
        action : array (n, *action_shape)
        reward : array (n,), finite
        terminated, truncated : bool scalar or array (n,)
        task_id : int scalar or array (n,), ``0 <= task_id < MAX_TASKS``
        logp : float scalar or array (n,), finite

        Rows are stored in the given order (time order).  Returns n.  On any error nothing is
        stored.
        """
        with self._lock:
            n = active.replay.add_batch(self._store, self._state, self._tasks, obs, action, reward,
                                        next_obs, terminated, truncated, task_id, logp)
            self._after_write(n)
        return n

    def _after_write(self, n):
        pass

    def end_episode(self):
        """Mark an episode boundary: the next transition starts a new episode (e.g. after a reset
        that was not signalled by ``terminated``/``truncated``)."""
        with self._lock:
            active.replay.end_episode(self._state)

    def clear(self):
        """Remove every transition (and reset write position and episode counter)."""
        with self._lock:
            for arr in self._store:
                arr[...] = 0
            self._state[:] = 0
            self._state[OPEN_TASK] = -1
            self._tasks.clear()
            self._after_clear()

    def _after_clear(self):
        pass

    # -- sampling ------------------------------------------------------------------------------

    def _check_sample(self, batch_size, rng):
        batch_size = check_sample_args(batch_size, rng)
        if self._state[SIZE] == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return batch_size

    def _indices(self, batch_size, rng, task_id, store=None):
        if task_id is None:
            return active.replay.sample_indices(int(self._state[SIZE]), batch_size, rng, store)
        return active.replay.sample_task_indices(self._tasks, check_sample_task(self._tasks, task_id), batch_size,
                                                 rng, store)

    def sample_indices(self, batch_size, rng, *, task_id=None):
        """Storage slots drawn uniformly with replacement, int64 (batch_size,).

        ``task_id=k`` restricts the draw to task k's stored transitions (O(1) per index).
        """
        rng = _validate.as_generator(rng)
        with self._lock:
            batch_size = self._check_sample(batch_size, rng)
            return self._indices(batch_size, rng, task_id)

    def sample(self, batch_size, rng, *, task_id=None):
        """A :class:`Batch` of ``batch_size`` transitions drawn uniformly with replacement.

        Parameters
        ----------
        batch_size : int >= 1
        rng : numpy.random.Generator (one ``random()`` per transition)
        task_id : int, optional -- only transitions of this task
        """
        rng = _validate.as_generator(rng)
        with self._lock:
            batch_size = self._check_sample(batch_size, rng)
            indices = self._indices(batch_size, rng, task_id, self._store)
            return _batch(active.replay.gather(self._store, indices), indices)

    def sample_sequences(self, batch_size, length, rng):
        """``batch_size`` windows of ``length`` consecutive transitions of one episode.

        Uniform with replacement over all valid windows: in time order, never straddling the
        write head or an episode boundary (so n-step returns are correct).  Returns a
        :class:`Batch` whose fields have shape (batch_size, length, ...); ``indices`` is
        int64 (batch_size, length).  Raises ValueError if no stored episode (piece) has
        ``length`` transitions.
        """
        rng = _validate.as_generator(rng)
        with self._lock:
            batch_size = self._check_sample(batch_size, rng)
            length = _validate.positive_int(length, "length")
            if length > self.capacity:
                raise ValueError(f"length={length} is longer than any episode the buffer can "
                                 f"hold (capacity {self.capacity})")
            starts = active.replay.sample_sequence_starts(self._store[7], self._state, length,
                                                          batch_size, rng)
            if starts is None:
                raise ValueError(
                    f"no stored episode has {length} consecutive transitions: the sequence length "
                    f"is longer than any episode in the buffer (holding {len(self)} transitions)")
            indices = active.replay.window_indices(starts, length, self.capacity)
            return _batch(active.replay.gather(self._store, indices), indices)

    def gather(self, indices):
        """A :class:`Batch` (copies) of the transitions at storage slots ``indices`` (int, any
        shape); each must hold a stored transition."""
        with self._lock:
            idx = np.asarray(indices)
            if idx.dtype.kind not in "iu":
                raise TypeError(f"indices must be integers, got {_validate.got(idx)}")
            idx = _validate.int_array(idx.reshape(-1), "indices", ndim=1, low=0,
                                      high=max(1, int(self._state[SIZE]))).reshape(idx.shape)
            if self._state[SIZE] == 0 and idx.size:
                raise ValueError("the replay buffer is empty")
            return _batch(active.replay.gather(self._store, idx), idx)

    # -- persistence ---------------------------------------------------------------------------

    def _arrays(self):
        arrays = dict(zip(FIELDS, self._store))
        arrays["state"] = self._state
        return arrays

    def save(self, path):
        """Write the buffer atomically to ``path`` (.npz, no pickle, with a format version).

        Contents, write position and episode counters are stored exactly, so sampling after
        :meth:`load` equals sampling before.
        """
        with self._lock:
            return io.save_npz(path, self._arrays(), kind=self._kind, version=REPLAY_FORMAT_VERSION)

    @classmethod
    def load(cls, path):
        """Read a buffer written by :meth:`save`; raises ``CheckpointError`` for a missing,
        truncated, corrupted, wrong-version or inconsistent file."""
        arrays, _ = io.load_npz(path, kind=cls._kind, versions={REPLAY_FORMAT_VERSION})
        try:
            store, state = cls._check_file(arrays)
            new = cls.__new__(cls)
            new._init_from(store, state)
            new._load_extra(arrays)
        except (KeyError, ValueError, TypeError) as err:
            if isinstance(err, io.CheckpointError):
                raise
            raise io.CheckpointError(f"{path}: inconsistent replay buffer file ({err})") from err
        return new

    @staticmethod
    def _check_file(arrays):
        if "done" in arrays and "terminated" not in arrays:  # the field's name in files of metarl_fast 0.1
            arrays = {("terminated" if k == "done" else k): v for k, v in arrays.items()}
        missing = [f for f in FIELDS + ("state",) if f not in arrays]
        if missing:
            raise KeyError(f"missing arrays {missing}")
        store = tuple(np.asarray(arrays[f]) for f in FIELDS)
        capacity = store[0].shape[0] if store[0].ndim else 0
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        for name, arr in zip(FIELDS, store):
            if arr.ndim < 1 or arr.shape[0] != capacity:
                raise ValueError(f"{name} has shape {arr.shape}, expected first dimension {capacity}")
        obs, action, reward, next_obs, terminated, truncated, task, episode, logp = store
        if obs.shape != next_obs.shape or obs.dtype != next_obs.dtype:
            raise ValueError("obs and next_obs differ in shape or dtype")
        _data_dtype(obs.dtype, "obs dtype")
        _data_dtype(action.dtype, "action dtype")
        if reward.dtype not in _validate.FLOAT_DTYPES or logp.dtype != reward.dtype:
            raise ValueError(f"reward/logp dtypes {reward.dtype}/{logp.dtype}")
        for name, arr, dtype in (("terminated", terminated, bool), ("truncated", truncated, bool),
                                 ("task_id", task, np.int32), ("episode_id", episode, np.int64)):
            if arr.dtype != np.dtype(dtype) or arr.ndim != 1:
                raise ValueError(f"{name} has dtype {arr.dtype} and shape {arr.shape}")
        for name, arr in (("reward", reward), ("logp", logp), ("terminated", terminated), ("truncated", truncated),
                          ("task_id", task), ("episode_id", episode)):
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D, has shape {arr.shape}")
        state = np.array(arrays["state"], dtype=np.int64)
        if arrays["state"].dtype != np.int64 or state.shape != (5,):
            raise ValueError("state must be int64 of shape (5,)")
        pos, size, next_ep, open_task, n_added = (int(v) for v in state)
        if not (0 <= size <= capacity and 0 <= pos < capacity and n_added >= size
                and next_ep >= 0 and -1 <= open_task < MAX_TASKS):
            raise ValueError(f"invalid state {state.tolist()} for capacity {capacity}")
        if size < capacity and pos != size:
            raise ValueError(f"invalid state {state.tolist()}: write position of a non-full buffer")
        oldest = (pos - size) % capacity
        slots = (oldest + np.arange(size)) % capacity
        if size and (task[slots].min() < 0 or task[slots].max() >= MAX_TASKS):
            raise ValueError("task ids out of range")
        if size and (np.any(np.diff(episode[slots]) < 0) or episode[slots].max() > next_ep):
            raise ValueError("episode ids are not in time order")
        if size and (not np.isfinite(reward[slots]).all() or not np.isfinite(logp[slots]).all()):
            raise ValueError("non-finite rewards or logp")
        # native byte order in memory whatever the file's (the compiled kernels read raw memory)
        records = _allocate(capacity, [(a.shape[1:], a.dtype.newbyteorder("=")) for a in store])
        for dst, src in zip(records, store):
            dst[...] = src
        return records, state

    def _load_extra(self, arrays):
        pass


class PrioritizedReplayBuffer(ReplayBuffer):
    """Replay buffer sampling transition i with probability ``p_i ** alpha / sum_j p_j ** alpha``.

    Parameters
    ----------
    capacity : int >= 1
    alpha : float >= 0, default 0.6 (0: uniform)
    obs_shape, obs_dtype, action_dtype, action_shape, reward_dtype : as :class:`ReplayBuffer`
    eps : float >= 0, default 1e-6
        Added to every priority, so a zero TD error still leaves the transition a chance.

    New transitions get the largest ``(p + eps) ** alpha`` seen so far (1 initially).  A float64
    sum tree (and min tree) gives O(log capacity) per sampled index and per priority update.
    Uniform per-task sampling and :meth:`sample_sequences` are inherited unchanged
    (``ReplayBuffer.sample(buffer, n, rng, task_id=k)`` samples task k uniformly); prioritized
    :meth:`sample` draws over all tasks.
    """

    _kind = "PrioritizedReplayBuffer"

    def __init__(self, capacity, alpha=0.6, obs_shape=(), obs_dtype=np.int64, action_dtype=np.int64,
                 *, action_shape=(), reward_dtype=np.float64, eps=1e-6):
        alpha = _validate.finite_float(alpha, "alpha", low=0.0)
        eps = _validate.finite_float(eps, "eps", low=0.0)
        super().__init__(capacity, obs_shape, obs_dtype, action_dtype, action_shape=action_shape,
                         reward_dtype=reward_dtype)
        self._alpha = alpha
        self._eps = eps
        self._reset_tree()

    @staticmethod
    def _tree_leaves(capacity):
        n = 1
        while n < capacity:
            n *= 2
        return n

    @classmethod
    def _extra_bytes(cls, capacity):
        return 32 * cls._tree_leaves(capacity)

    def _reset_tree(self):
        n = self._tree_leaves(self.capacity)
        self._tree_sum = np.zeros(2 * n, dtype=np.float64)
        self._tree_min = np.full(2 * n, np.inf, dtype=np.float64)
        self._max_leaf = 1.0

    @property
    def alpha(self):
        return self._alpha

    @property
    def eps(self):
        return self._eps

    @property
    def total_priority(self):
        """Sum over stored transitions of ``(p + eps) ** alpha``."""
        return float(self._tree_sum[1])

    def priorities(self):
        """``(p + eps) ** alpha`` of every slot, float64 (capacity,) (0 for empty slots)."""
        with self._lock:
            n = self._tree_sum.shape[0] // 2
            return self._tree_sum[n:n + self.capacity].copy()

    def add(self, obs, action, reward, next_obs, terminated, *, truncated=False, task_id=0, logp=0.0):
        """Append one transition with the largest priority seen so far.  See
        :meth:`ReplayBuffer.add`."""
        with self._lock:
            active.replay.add_one(self._store, self._state, self._tasks, obs, action, reward,
                                  next_obs, terminated, truncated, task_id, logp)
            self._after_write(1)

    def _after_write(self, n):
        m = min(n, self.capacity)
        if m:
            start = (int(self._state[POS]) - m) % self.capacity
            active.replay.tree_fill(self._tree_sum, self._tree_min, start, m, self.capacity,
                                    self._max_leaf)

    def _after_clear(self):
        self._reset_tree()

    def sample(self, batch_size, rng, *, beta=0.4):
        """A :class:`Batch` drawn with probability proportional to ``(p + eps) ** alpha``.

        ``weights`` (reward dtype, (batch_size,)) are the importance weights
        ``(N P(i)) ** -beta`` normalised by their maximum over the whole buffer (so <= 1);
        ``indices`` go to :meth:`update_priorities`.
        """
        rng = _validate.as_generator(rng)
        with self._lock:
            batch_size = self._check_sample(batch_size, rng)
            beta = _validate.finite_float(beta, "beta", low=0.0)
            indices, leaves = active.replay.tree_sample(self._tree_sum, batch_size, rng)
            weights = ((leaves / self._tree_min[1]) ** -beta).astype(self.reward_dtype)
            return _batch(active.replay.gather(self._store, indices), indices, weights)

    def sample_indices(self, batch_size, rng):
        """Slots drawn proportionally to priority, int64 (batch_size,)."""
        rng = _validate.as_generator(rng)
        with self._lock:
            batch_size = self._check_sample(batch_size, rng)
            return active.replay.tree_sample(self._tree_sum, batch_size, rng)[0]

    def update_priorities(self, indices, priorities):
        """Set the priorities of stored slots ``indices`` (int (n,)) to ``priorities`` ((n,),
        finite, >= 0; e.g. ``|TD error|``).  With repeated indices the last one wins."""
        with self._lock:
            size = int(self._state[SIZE])
            if size == 0:
                raise ValueError("the replay buffer is empty")
            idx = _validate.int_array(indices, "indices", ndim=1, low=0, high=size)
            p = np.asarray(priorities)
            if p.dtype.kind not in "iuf":
                raise TypeError(f"priorities must be real, got {_validate.got(p)}")
            if p.shape != idx.shape:
                raise ValueError(f"priorities must have shape {idx.shape}, got {p.shape}")
            p = p.astype(np.float64)
            if p.size and (not np.isfinite(p).all() or p.min() < 0):
                raise ValueError("priorities must be finite and >= 0")
            with np.errstate(over="ignore"):  # an overflow is reported below, by name
                leaves = (p + self._eps) ** self._alpha
            if leaves.size and leaves.min() <= 0:
                raise ValueError("priorities + eps must be > 0 (use eps > 0 for zero priorities)")
            if leaves.size and not np.isfinite(leaves).all():
                raise ValueError("priorities too large: (priorities + eps) ** alpha overflows float64")
            active.replay.tree_set(self._tree_sum, self._tree_min, idx, leaves)
            if leaves.size:  # the values that won (with repeated indices the last one does)
                n = self._tree_sum.shape[0] // 2
                self._max_leaf = max(self._max_leaf, float(self._tree_sum[n + idx].max()))

    def _arrays(self):
        arrays = super()._arrays()
        n = self._tree_sum.shape[0] // 2
        arrays["priorities"] = self._tree_sum[n:n + self.capacity]
        arrays["prio_params"] = np.array([self._alpha, self._eps, self._max_leaf])
        return arrays

    def _load_extra(self, arrays):
        leaves = np.asarray(arrays["priorities"])
        params = np.asarray(arrays["prio_params"])
        if leaves.dtype != np.float64 or leaves.shape != (self.capacity,):
            raise ValueError(f"priorities have dtype {leaves.dtype} and shape {leaves.shape}")
        if params.dtype != np.float64 or params.shape != (3,) or not np.isfinite(params).all():
            raise ValueError("bad prioritized-replay parameters")
        alpha, eps, max_leaf = (float(v) for v in params)
        if alpha < 0 or eps < 0 or max_leaf <= 0:
            raise ValueError("bad prioritized-replay parameters")
        size = int(self._state[SIZE])
        stored = np.zeros(self.capacity, dtype=bool)
        stored[(int(self._state[POS]) - size + np.arange(size)) % self.capacity] = True
        if not np.isfinite(leaves).all() or (leaves[stored] <= 0).any() or (leaves[~stored] != 0).any():
            raise ValueError("priorities must be > 0 for stored transitions and 0 elsewhere")
        self._alpha, self._eps = alpha, eps
        self._reset_tree()
        self._max_leaf = max_leaf
        idx = np.flatnonzero(stored)
        active.replay.tree_set(self._tree_sum, self._tree_min, idx, leaves[idx])
