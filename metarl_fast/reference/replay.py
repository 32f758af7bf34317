"""Replay-buffer kernels in pure NumPy: the executable specification of ``_core/replay.pyx``.

These functions operate on the storage of a :class:`metarl_fast.replay.ReplayBuffer`; they are
called by that class (under its lock) and are not meant to be called directly.  The storage is

``store``
    a tuple of 9 preallocated arrays in :data:`FIELDS` order, each with first dimension
    ``capacity``: ``obs`` (C, *obs_shape), ``action`` (C, *action_shape), ``reward`` (C,) float,
    ``next_obs`` (C, *obs_shape), ``terminated`` (C,) bool, ``truncated`` (C,) bool, ``task_id`` (C,)
    int32, ``episode_id`` (C,) int64, ``logp`` (C,) float (same dtype as ``reward``).  In a
    ReplayBuffer they are strided views of one record array (one aligned record per transition);
    the compiled ``write_rows`` relies on that (every field has the record size as row stride);
``state``
    int64 array ``[pos, size, next_episode, open_task, n_added]``: the next slot to write, the
    number of stored transitions, the episode id the next transition gets, the task of the open
    (not yet terminated/truncated) episode or -1, and the number of transitions ever added;
``tasks``
    a :class:`TaskIndex`: per task, a FIFO ring of the slots holding that task's transitions, in
    time order, so per-task sampling costs O(1) per index.

Episode ids are assigned by the buffer: a transition gets ``next_episode``; after a transition
with ``terminated`` or ``truncated`` the counter advances, and it also advances when a transition's task
differs from the open episode's task (or when :meth:`ReplayBuffer.end_episode` is called).  Ids
are therefore non-decreasing in time order, so a window of consecutive transitions lies inside one
episode iff its first and last transitions have the same id.

Random draws (identical in both backends): ``sample_indices`` draws ``rng.random(n)`` and takes
``floor(u * size)`` (the stored slots are ``0 .. size-1`` before the first wrap, all slots after);
``sample_task_indices`` takes the ``floor(u * count)``-th stored slot of the task in time order;
``sample_sequence_starts`` and ``tree_sample`` are documented below.
"""
import numbers

import numpy as np

from metarl_fast import _validate

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id", "episode_id", "logp")
STATE_FIELDS = ("pos", "size", "next_episode", "open_task", "n_added")
POS, SIZE, NEXT_EPISODE, OPEN_TASK, N_ADDED = range(5)
# Task ids index per-task tables directly, so they must be small non-negative integers.
MAX_TASKS = 1 << 20
# Rejection rounds of sample_sequence_starts before the exact (scanning) fallback.
SEQUENCE_ROUNDS = 32
_MIN_RING = 64


# Largest batch a sampling call accepts: the table limit of every size argument
# (_validate.MAX_TABLE_ENTRIES), checked before the indices are allocated.
MAX_BATCH = _validate.MAX_TABLE_ENTRIES


def check_sample_args(batch_size, rng):
    """batch_size as an int in [1, MAX_BATCH]; rng a numpy.random.Generator (shared by both
    backends' sampling methods)."""
    if type(batch_size) is not int or batch_size < 1:  # (exact int: the cheap common case)
        batch_size = _validate.positive_int(batch_size, "batch_size")
    if batch_size > MAX_BATCH:
        raise ValueError(f"batch_size={batch_size:,}: more than the {MAX_BATCH:,} (2**28) "
                         f"transitions one sample may hold")
    if type(rng) is not np.random.Generator:
        _validate.check_rng(rng)
    return batch_size


def check_sample_task(tasks, task_id):
    """task_id as an int >= 0 with stored transitions in ``tasks`` (a TaskIndex)."""
    if isinstance(task_id, (bool, np.bool_)) or not isinstance(task_id, (int, np.integer)):
        raise TypeError(f"task_id must be an int or None, got {type(task_id).__name__}")
    task_id = int(task_id)
    if task_id < 0:
        raise ValueError(f"task_id must be >= 0, got {task_id}")
    if tasks.count(task_id) == 0:
        raise ValueError(f"the replay buffer holds no transitions of task {task_id}")
    return task_id


_NO_RING = np.zeros(0, dtype=np.int64)
_NO_RING.setflags(write=False)


class TaskIndex:
    """Per-task FIFO rings of slot indices (shared by both backends; pure Python bookkeeping).

    Attributes
    ----------
    meta : ndarray (T, 4) int64
        Per task id: ``front`` (ring position of its oldest slot), ``count`` (stored transitions
        of the task), ``cap`` (ring length, 0 or a power of two) and the address of
        ``rings[k]``'s data (so compiled kernels reach the rings without Python calls).
    rings : list of T int64 ndarrays
        ``rings[k][(front + j) & (cap - 1)]`` is the slot of task k's j-th oldest transition.
    """

    __slots__ = ("meta", "rings", "version")

    def __init__(self):
        # version[0] counts replacements of ``meta`` (growth, clear): compiled writers keep a
        # pointer to it and re-read ``meta`` only when it moved
        self.version = np.zeros(1, dtype=np.int64)
        self.meta = np.zeros((0, 4), dtype=np.int64)
        self.rings = []

    def reserve_tasks(self, max_task):
        """Make task ids ``0 .. max_task`` addressable (tables grow by doubling)."""
        n = self.meta.shape[0]
        if max_task < n:
            return
        new_n = max(8, n)
        while new_n <= max_task:
            new_n *= 2
        meta = np.zeros((new_n, 4), dtype=np.int64)
        meta[:n] = self.meta
        # one shared empty ring for every id not yet used (replaced by reserve before any write):
        # 40 bytes per task id up to the largest one used, 40 MiB at MAX_TASKS
        self.rings.extend([_NO_RING] * (new_n - n))
        self.meta = meta
        self.version[0] += 1

    def reserve(self, task, needed):
        """Make task ``task``'s ring hold at least ``needed`` entries (linearising it)."""
        front, count, cap = (int(v) for v in self.meta[task, :3])
        if needed <= cap:
            return
        new_cap = _MIN_RING
        while new_cap < needed:
            new_cap *= 2
        ring = np.zeros(new_cap, dtype=np.int64)
        if count:  # the live entries, oldest first: at most two contiguous pieces of the old ring
            old, head = self.rings[task], min(count, cap - front)
            ring[:head] = old[front:front + head]
            ring[head:count] = old[:count - head]
        self.rings[task] = ring
        self.meta[task] = (0, count, new_cap, ring.ctypes.data)

    def slots(self, task):
        """The slots of task ``task`` in time order (oldest first), int64 (count,)."""
        if task >= self.meta.shape[0]:
            return np.zeros(0, dtype=np.int64)
        front, count, cap = (int(v) for v in self.meta[task, :3])
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        return self.rings[task][(front + np.arange(count)) & (cap - 1)]

    def count(self, task):
        if task < 0 or task >= self.meta.shape[0]:
            return 0
        return int(self.meta[task, 1])

    def clear(self):
        self.meta = np.zeros((0, 4), dtype=np.int64)
        self.version[0] += 1
        self.rings = []

    def rebuild(self, task_store, state):
        """Recompute the rings from the stored task ids (in time order); used after load."""
        self.clear()
        capacity = task_store.shape[0]
        size = int(state[SIZE])
        if size == 0:
            return
        oldest = (int(state[POS]) - size) % capacity
        slots = (oldest + np.arange(size)) % capacity
        tasks = task_store[slots].astype(np.int64)
        self.reserve_tasks(int(tasks.max()))
        order = np.argsort(tasks, kind="stable")
        counts = np.bincount(tasks)
        start = 0
        for k in np.flatnonzero(counts):
            c = int(counts[k])
            self.reserve(int(k), c)
            self.rings[k][:c] = slots[order[start:start + c]]
            self.meta[k, 1] = c
            start += c


# ---------------------------------------------------------------------------------------------
# Validation of transitions (shared: the Cython module calls these on its slow path)
# ---------------------------------------------------------------------------------------------

def _convert(x, name, dtype, shape):
    """``x`` as a C-contiguous array of ``dtype`` and exactly ``shape`` (int -> float allowed;
    integers must fit the integer ``dtype``; floats must be finite after the cast)."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    kind = a.dtype.kind
    if dtype.kind in "iu":
        if kind not in "iu":
            raise TypeError(f"{name} must have an integer dtype (stored as {dtype}), got {a.dtype}")
    elif kind not in "iuf":
        raise TypeError(f"{name} must have a real dtype (stored as {dtype}), got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if dtype.kind in "iu" and a.size and not np.can_cast(a.dtype, dtype, "safe"):
        info = np.iinfo(dtype)
        lo, hi = a.min(), a.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{name} out of range for {dtype}: found values in [{lo}, {hi}]")
    out = np.ascontiguousarray(a, dtype=dtype)
    if dtype.kind == "f" and out.size and not np.isfinite(out).all():
        raise ValueError(f"{name} must be finite (NaN/inf in replay poisons every later update)")
    return out


def _flag_column(x, name, n):
    """Bool (n,) from a bool/0-1 scalar or array of length n (scalars are broadcast)."""
    a = np.asarray(False if x is None else x)
    if a.dtype.kind == "b":
        pass
    elif a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(f"{name} must be boolean (0/1), got values outside {{0, 1}}")
    else:
        raise TypeError(f"{name} must be bool, got {_validate.got(a)}")
    if a.ndim == 0:
        return np.full(n, bool(a), dtype=bool)
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {a.shape}")
    return np.ascontiguousarray(a, dtype=bool)


def _task_column(x, n):
    if isinstance(x, int) and not isinstance(x, bool) and not 0 <= x < MAX_TASKS:
        raise ValueError(f"task_id must be in [0, {MAX_TASKS}), got {x}")
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"task_id must be an integer, got {_validate.got(a)}")
    if a.ndim != 0 and a.shape != (n,):
        raise ValueError(f"task_id must be a scalar or have shape ({n},), got {a.shape}")
    if a.size:
        lo, hi = a.min(), a.max()
        if lo < 0:
            raise ValueError(f"task_id must be >= 0, got {lo}")
        if hi >= MAX_TASKS:
            raise ValueError(f"task_id must be < {MAX_TASKS}, got {hi}")
    return np.broadcast_to(a.astype(np.int32), (n,)).copy() if a.ndim == 0 else a.astype(np.int32)


def _logp_column(x, n, dtype):
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"logp must be real, got {_validate.got(a)}")
    if a.ndim != 0 and a.shape != (n,):
        raise ValueError(f"logp must be a scalar or have shape ({n},), got {a.shape}")
    a = a.astype(dtype)
    if a.size and not np.isfinite(a).all():
        raise ValueError("logp must be finite")
    return np.full(n, a, dtype=dtype) if a.ndim == 0 else np.ascontiguousarray(a)


def check_batch(store, obs, action, reward, next_obs, terminated, truncated, task_id, logp):
    """Validate a batch of transitions against the storage; return the 8 input columns converted.

    ``reward`` must be 1-D of length n; ``obs``/``next_obs`` (n, *obs_shape); ``action``
    (n, *action_shape); ``terminated``/``truncated``/``task_id``/``logp`` scalars (broadcast) or (n,).
    Returns ``(obs, action, reward, next_obs, terminated, truncated, task_id, logp)`` as C-contiguous
    arrays of the storage dtypes, each of first dimension n.  Nothing is modified.
    """
    fdtype = store[2].dtype
    r = reward if isinstance(reward, np.ndarray) else np.asarray(reward)
    if r.ndim != 1:
        raise ValueError(f"reward must be 1-D (one reward per transition), got shape {r.shape}")
    n = r.shape[0]
    reward = _convert(r, "reward", fdtype, (n,))
    obs = _convert(obs, "obs", store[0].dtype, (n,) + store[0].shape[1:])
    next_obs = _convert(next_obs, "next_obs", store[3].dtype, (n,) + store[3].shape[1:])
    action = _convert(action, "action", store[1].dtype, (n,) + store[1].shape[1:])
    terminated = _flag_column(terminated, "terminated", n)
    truncated = _flag_column(truncated, "truncated", n)
    task = _task_column(task_id, n)
    logp = _logp_column(logp, n, fdtype)
    return obs, action, reward, next_obs, terminated, truncated, task, logp


def _scalar_flag(x, name):
    if x is None:
        return False
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, numbers.Integral) and int(x) in (0, 1):
        return bool(x)
    if isinstance(x, np.ndarray) and x.shape == () and x.dtype.kind in "biu" and int(x) in (0, 1):
        return bool(x)
    if isinstance(x, numbers.Integral) or (isinstance(x, np.ndarray) and x.dtype.kind in "iu"):
        raise ValueError(f"{name} must be boolean (0/1), got {x!r}")
    raise TypeError(f"{name} must be a bool, got {type(x).__name__}")


def check_one(store, obs, action, reward, next_obs, terminated, truncated, task_id, logp):
    """Validate one transition; return it as a batch of one (see :func:`check_batch`)."""
    def as_row(x, name, arr):
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        if a.shape != arr.shape[1:]:
            raise ValueError(f"{name} must have shape {arr.shape[1:]}, got {a.shape}")
        return a[None]

    if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, (numbers.Real, np.ndarray)):
        raise TypeError(f"reward must be a real number, got {type(reward).__name__}")
    if np.ndim(reward) != 0:
        raise ValueError(f"reward must be a scalar, got shape {np.shape(reward)}")
    if isinstance(task_id, (bool, np.bool_)) or not isinstance(task_id, (numbers.Integral, np.ndarray)):
        raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
    if np.ndim(task_id) != 0 or np.ndim(logp) != 0:
        raise ValueError("task_id and logp must be scalars in add(); use add_batch for arrays")
    terminated = _scalar_flag(terminated, "terminated")
    truncated = _scalar_flag(truncated, "truncated")
    return check_batch(store, as_row(obs, "obs", store[0]), as_row(action, "action", store[1]),
                       np.asarray(reward)[None], as_row(next_obs, "next_obs", store[3]),
                       terminated, truncated, task_id, logp)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _write(store, state, tasks, cols):
    """Append validated columns (the FIFO ring write, episode ids and task rings)."""
    obs, action, reward, next_obs, terminated, truncated, task, logp = cols
    n = reward.shape[0]
    if n == 0:
        return 0
    capacity = store[0].shape[0]
    pos, size0, next_ep, open_task = (int(v) for v in state[:4])
    end = terminated | truncated
    task64 = task.astype(np.int64)
    inc = np.empty(n, dtype=np.int64)
    inc[0] = open_task >= 0 and task64[0] != open_task
    inc[1:] = end[:-1] | (task64[1:] != task64[:-1])
    episode = next_ep + np.cumsum(inc)
    new_next = int(episode[-1]) + int(end[-1])
    new_open = -1 if end[-1] else int(task64[-1])

    # Rows overwritten within this very call are never stored (only the last `capacity` survive).
    skip = max(0, n - capacity)
    m = n - skip
    slots = (pos + skip + np.arange(m)) % capacity
    occupied = slots < size0 if size0 < capacity else np.ones(m, dtype=bool)
    new_tasks = task64[skip:]

    tasks.reserve_tasks(int(new_tasks.max()))
    # per task touched (not per task id: the cost follows the call, not the largest id)
    touched, pushes = np.unique(new_tasks, return_counts=True)
    popped, pops = np.unique(store[6][slots[occupied]].astype(np.int64), return_counts=True)
    for k, p in zip(touched.tolist(), pushes.tolist()):
        tasks.reserve(k, int(tasks.meta[k, 1]) + p)
    for k, p in zip(touched.tolist(), pushes.tolist()):
        front, count, cap = (int(v) for v in tasks.meta[k, :3])
        where = (front + count + np.arange(p)) & (cap - 1)
        tasks.rings[k][where] = slots[new_tasks == k]
    meta = tasks.meta
    meta[popped, 0] = (meta[popped, 0] + pops) & (meta[popped, 2] - 1)
    meta[touched, 1] += pushes
    meta[popped, 1] -= pops

    for arr, col in zip(store, (obs, action, reward, next_obs, terminated, truncated, task, episode, logp)):
        arr[slots] = col[skip:]
    state[POS] = (pos + n) % capacity
    state[SIZE] = min(capacity, size0 + n)
    state[NEXT_EPISODE] = new_next
    state[OPEN_TASK] = new_open
    state[N_ADDED] += n
    return n


def add_batch(store, state, tasks, obs, action, reward, next_obs, terminated, truncated, task_id, logp):
    """Validate and append n transitions (FIFO: the oldest are overwritten when full).

    Parameters
    ----------
    store, state, tasks : the buffer's storage (see the module docstring); updated in place.
    obs, next_obs : array (n, *obs_shape), integer or real (cast to the storage dtype)
    action : array (n, *action_shape)
    reward : array (n,), real, finite
    terminated, truncated : bool scalar or array (n,)
    task_id : int scalar or array (n,), in ``[0, MAX_TASKS)``
    logp : real scalar or array (n,), finite

    Returns
    -------
    n : int, the number of transitions added.  On any error nothing is modified.
    """
    cols = check_batch(store, obs, action, reward, next_obs, terminated, truncated, task_id, logp)
    return _write(store, state, tasks, cols)


def add_one(store, state, tasks, obs, action, reward, next_obs, terminated, truncated, task_id, logp):
    """Validate and append one transition (``obs`` of shape obs_shape, scalars elsewhere)."""
    cols = check_one(store, obs, action, reward, next_obs, terminated, truncated, task_id, logp)
    return _write(store, state, tasks, cols)


def end_episode(state):
    """Close the open episode: the next transition starts a new episode id."""
    if state[OPEN_TASK] >= 0:
        state[NEXT_EPISODE] += 1
        state[OPEN_TASK] = -1


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def sample_indices(size, n, rng, store=None):
    """``n`` slots drawn uniformly with replacement from a buffer holding ``size`` transitions.

    One ``rng.random()`` per index, in order; slot = ``floor(u * size)``.  int64 (n,).
    ``store`` (optional) lets the compiled twin prefetch the drawn records; unused here.
    """
    u = rng.random(n)
    return np.minimum((u * size).astype(np.int64), size - 1)


def sample_task_indices(tasks, task, n, rng, store=None):
    """``n`` slots drawn uniformly with replacement among task ``task``'s stored transitions.

    The caller guarantees the task has at least one.  One ``rng.random()`` per index: the
    ``floor(u * count)``-th oldest slot of the task.  int64 (n,).  ``store``: as in
    :func:`sample_indices`.
    """
    front, count, cap = (int(v) for v in tasks.meta[task, :3])
    u = rng.random(n)
    j = np.minimum((u * count).astype(np.int64), count - 1)
    return tasks.rings[task][(front + j) & (cap - 1)]


def _valid_starts(episode_store, oldest, size, length):
    capacity = episode_store.shape[0]
    first = episode_store[(oldest + np.arange(size - length + 1)) % capacity]
    last = episode_store[(oldest + length - 1 + np.arange(size - length + 1)) % capacity]
    return np.flatnonzero(first == last)


def sample_sequence_starts(episode_store, state, length, n, rng):
    """Start slots of ``n`` windows of ``length`` consecutive transitions inside one episode.

    Uniform with replacement over all valid windows (in time order, never crossing the write
    head or an episode boundary).  Rejection rounds: in each of up to ``SEQUENCE_ROUNDS`` rounds,
    every still-unassigned sample (in order) draws one ``rng.random()``, proposes logical start
    ``floor(u * (size - length + 1))`` and keeps it if the window's first and last transitions
    share an episode id.  Samples still unassigned after that draw one ``rng.random()`` each and
    take the ``floor(u * V)``-th of the ``V`` valid starts (found by one scan).

    Returns int64 (n,) physical start slots, or ``None`` if no valid window exists (the caller
    raises); random numbers may have been drawn in that case.
    """
    capacity = episode_store.shape[0]
    size = int(state[SIZE])
    if length > size:
        return None
    oldest = (int(state[POS]) - size) % capacity
    n_cand = size - length + 1
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    for _ in range(SEQUENCE_ROUNDS):
        if pending.size == 0:
            return out
        u = rng.random(pending.size)
        s = np.minimum((u * n_cand).astype(np.int64), n_cand - 1)
        first = episode_store[(oldest + s) % capacity]
        last = episode_store[(oldest + s + length - 1) % capacity]
        ok = first == last
        out[pending[ok]] = (oldest + s[ok]) % capacity
        pending = pending[~ok]
    if pending.size == 0:
        return out
    valid = _valid_starts(episode_store, oldest, size, length)
    if valid.size == 0:
        return None
    u = rng.random(pending.size)
    j = np.minimum((u * valid.size).astype(np.int64), valid.size - 1)
    out[pending] = (oldest + valid[j]) % capacity
    return out


def window_indices(starts, length, capacity):
    """int64 (n, length): the slots ``starts[i] + t`` (mod capacity), t = 0 .. length-1."""
    return (starts[:, None] + np.arange(length)) % capacity


def gather(store, indices):
    """Copies of every field at ``indices`` (int64, any shape S): a tuple of arrays (*S, ...);
    the task ids (stored as int32) widened to int64, as every task id of the API."""
    return tuple(arr[indices].astype(np.int64) if f == FIELDS.index("task_id") else arr[indices]
                 for f, arr in enumerate(store))


# ---------------------------------------------------------------------------------------------
# Sum tree (prioritized replay)
# ---------------------------------------------------------------------------------------------
# Layout: ``tree_sum`` and ``tree_min`` are float64 (2 P,) with P a power of two >= capacity;
# leaf i is node P + i, node j's children are 2j and 2j + 1, the root is node 1.  Unused leaves
# hold 0 (sum) and +inf (min).  Every internal node is recomputed as the sum (min) of its two
# children, so the tree depends only on the leaves, not on the order of updates.

def tree_set(tree_sum, tree_min, indices, values):
    """Set leaves ``indices`` (int64 (n,), in [0, P)) to ``values`` (float64 (n,), >= 0).

    With repeated indices the last value wins.  O(n log P).
    """
    n_leaves = tree_sum.shape[0] // 2
    if indices.size == 0:
        return
    _, last = np.unique(indices[::-1], return_index=True)
    keep = indices.size - 1 - last
    nodes = indices[keep] + n_leaves
    tree_sum[nodes] = values[keep]
    tree_min[nodes] = values[keep]
    nodes = np.unique(nodes // 2)
    while nodes.size and nodes[-1] >= 1:
        tree_sum[nodes] = tree_sum[2 * nodes] + tree_sum[2 * nodes + 1]
        tree_min[nodes] = np.minimum(tree_min[2 * nodes], tree_min[2 * nodes + 1])
        if nodes[0] == 1:
            break
        nodes = np.unique(nodes // 2)


def tree_sample(tree_sum, n, rng):
    """``n`` leaves drawn with probability ``leaf / total`` (with replacement).

    Returns ``(indices, values)``: int64 (n,) leaf indices and float64 (n,) their leaf values.

    Per sample one ``rng.random()``: ``u * total`` descends from the root, going right (and
    subtracting the left sum) when it is >= the left child's sum, unless the right subtree is
    empty.  The caller guarantees a positive total.
    """
    n_leaves = tree_sum.shape[0] // 2
    target = rng.random(n) * tree_sum[1]
    node = np.ones(n, dtype=np.int64)
    while n_leaves > 1 and node.size and node[0] < n_leaves:
        left = 2 * node
        left_sum = tree_sum[left]
        right = (target >= left_sum) & (tree_sum[left + 1] > 0)
        target = np.where(right, target - left_sum, target)
        node = left + right
    return node - n_leaves, tree_sum[node]


def tree_fill(tree_sum, tree_min, start, count, capacity, value):
    """Set the ``count`` leaves ``start, start + 1, ...`` (mod ``capacity``) to ``value``."""
    indices = (start + np.arange(count, dtype=np.int64)) % capacity
    tree_set(tree_sum, tree_min, indices, np.full(count, float(value)))
