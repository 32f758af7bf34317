"""Replay buffer: Cython vs NumPy reference (plus a plain NumPy ring, and cpprb when installed).

    pytest benches/bench_replay.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=replay.json && python benches/ratios.py replay.json

Buffers hold 10**6 transitions (full, wrapped, episodes of 100 steps from 4 tasks), with tabular
(int64 scalar) or 8-dim float32 observations.  ``extra_info['rows']`` is the number of
transitions per call, so "per item" is the cost of one transition.  Under --benchmark-disable (or
METARL_FAST_BENCH_QUICK=1) the capacity shrinks to 10**4 so the file only checks that it runs.
"""
import numpy as np
import pytest

from conftest import QUICK
from metarl_fast.replay import PrioritizedReplayBuffer, ReplayBuffer

CAPACITY = 10 ** 6
EPISODE = 100
N_TASKS = 4
OBS = ["tabular", "vec8"]


# Single adds are timed in a Python loop of this many calls (per item = one add), so the figure
# is what an agent loop pays per transition, not the benchmark harness's own call overhead.
ADD_LOOP = 1000
ADD_GROUP = f"add (one transition from Python, loop of {ADD_LOOP})"


def capacity_for(benchmark):
    return 10 ** 4 if (QUICK or benchmark.disabled) else CAPACITY


def rows(kind, n, start=0):
    """n transitions (obs, action, reward, next_obs, done), episodes of EPISODE steps."""
    t = np.arange(start, start + n)
    if kind == "tabular":
        obs = t % 1000
        next_obs = (t + 1) % 1000
    else:
        obs = np.repeat((t % 1000).astype(np.float32)[:, None], 8, axis=1) * np.float32(0.01)
        next_obs = obs + np.float32(0.01)
    action = t % 4
    reward = (t % 7).astype(np.float32 if kind == "vec8" else np.float64)
    done = t % EPISODE == EPISODE - 1
    return obs, action, reward, next_obs, done


def make_buffer(kind, capacity, prioritized=False):
    kwargs = dict(obs_shape=(8,), obs_dtype=np.float32, reward_dtype=np.float32) if kind == "vec8" else {}
    buf = PrioritizedReplayBuffer(capacity, 0.6, **kwargs) if prioritized else ReplayBuffer(capacity, **kwargs)
    chunk = 10 * EPISODE
    for start in range(0, capacity + chunk, chunk):  # fill and wrap
        obs, action, reward, next_obs, done = rows(kind, chunk, start)
        buf.add_batch(obs, action, reward, next_obs, done, task_id=(start // chunk) % N_TASKS,
                      logp=np.full(chunk, -1.386, dtype=reward.dtype))
    return buf


def _group(benchmark, backend, name, kind, n_rows):
    benchmark.group = f"replay.{name} obs={kind} capacity=1e6"
    benchmark.extra_info.update(rows=n_rows, backend=backend)


@pytest.mark.parametrize("kind", OBS)
def test_add(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark))
    obs, action, reward, next_obs, done = rows(kind, 1)
    o, a, r, no = (int(obs[0]), 1, 0.5, int(next_obs[0])) if kind == "tabular" else (obs[0], 1, 0.5, next_obs[0])
    _group(benchmark, backend, ADD_GROUP, kind, ADD_LOOP)
    add, loop = buf.add, range(ADD_LOOP)

    def adds():  # a plain Python loop, as an agent calls add: no harness call per transition
        for _ in loop:
            add(o, a, r, no, False, task_id=1, logp=-1.0)

    benchmark(adds)
    assert len(buf) == buf.capacity


class _EmptyAdd:
    def add(self, obs, action, reward, next_obs, done, *, truncated=False, task_id=0, logp=0.0):
        pass


@pytest.mark.parametrize("kind", OBS)
def test_add_floor_bare_python_method(benchmark, kind):
    """The floor under any single add: a bare Python method with add's signature that does
    nothing, called in the same loop (the issue quotes about 60 ns for it on its machine)."""
    obs, action, reward, next_obs, done = rows(kind, 1)
    o, a, r, no = (int(obs[0]), 1, 0.5, int(next_obs[0])) if kind == "tabular" else (obs[0], 1, 0.5, next_obs[0])
    benchmark.group = f"replay.{ADD_GROUP} obs={kind} capacity=1e6"
    benchmark.extra_info.update(rows=ADD_LOOP, backend="bare-python-call")
    add, loop = _EmptyAdd().add, range(ADD_LOOP)

    def adds():
        for _ in loop:
            add(o, a, r, no, False, task_id=1, logp=-1.0)

    benchmark(adds)


@pytest.mark.parametrize("kind", OBS)
def test_add_batch(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark))
    obs, action, reward, next_obs, done = rows(kind, 1024)
    logp = np.full(1024, -1.0, dtype=reward.dtype)
    _group(benchmark, backend, "add_batch(1024)", kind, 1024)
    n = benchmark(buf.add_batch, obs, action, reward, next_obs, done, task_id=2, logp=logp)
    assert n == 1024


def test_add_batch_interleaved_tasks(benchmark, backend):
    """add_batch(1024) as a vectorised env writes it: one row per task, 64 tasks interleaved
    (every overwritten slot starts a new run of its task; no long runs to pop or push)."""
    capacity = capacity_for(benchmark)
    buf = ReplayBuffer(capacity)
    obs, action, reward, next_obs, done = rows("tabular", 1024)
    task = (np.arange(1024) % 64).astype(np.int32)
    logp = np.full(1024, -1.0)
    for _ in range(capacity // 1024 + 1):  # fill and wrap with the same interleaving
        buf.add_batch(obs, action, reward, next_obs, done, task_id=task, logp=logp)
    _group(benchmark, backend, "add_batch(1024), 64 interleaved tasks", "tabular", 1024)
    n = benchmark(buf.add_batch, obs, action, reward, next_obs, done, task_id=task, logp=logp)
    assert n == 1024 and buf.task_count(63) > 0


@pytest.mark.parametrize("kind", OBS)
def test_sample(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark))
    rng = np.random.default_rng(0)
    _group(benchmark, backend, "sample(256)", kind, 256)
    batch = benchmark(buf.sample, 256, rng)
    assert batch.obs.shape[0] == 256


@pytest.mark.parametrize("kind", OBS)
def test_sample_task(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark))
    rng = np.random.default_rng(0)
    _group(benchmark, backend, "sample(256, task_id=3)", kind, 256)
    batch = benchmark(buf.sample, 256, rng, task_id=3)
    assert np.all(batch.task_id == 3)


@pytest.mark.parametrize("kind", OBS)
def test_sample_sequences(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark))
    rng = np.random.default_rng(0)
    _group(benchmark, backend, "sample_sequences(64, 8)", kind, 64 * 8)
    batch = benchmark(buf.sample_sequences, 64, 8, rng)
    assert batch.obs.shape[:2] == (64, 8)


@pytest.mark.parametrize("kind", OBS)
def test_prioritized_sample_update(benchmark, backend, kind):
    buf = make_buffer(kind, capacity_for(benchmark), prioritized=True)
    rng = np.random.default_rng(0)
    priorities = np.random.default_rng(1).random(256) * 2

    def step():
        batch = buf.sample(256, rng, beta=0.4)
        buf.update_priorities(batch.indices, priorities)
        return batch

    _group(benchmark, backend, "prioritized sample(256) + update_priorities(256)", kind, 256)
    batch = benchmark(step)
    assert batch.weights.shape == (256,)


# ---------------------------------------------------------------------------------------------
# A plain NumPy ring (one array per field, the usual hand-written buffer), for scale
# ---------------------------------------------------------------------------------------------

class NumpyRing:
    """The straightforward NumPy replay ring: 9 separate arrays, slice writes, fancy-index reads."""

    def __init__(self, capacity, kind):
        shape, dtype = ((8,), np.float32) if kind == "vec8" else ((), np.int64)
        fdtype = np.float32 if kind == "vec8" else np.float64
        self.fields = [np.zeros((capacity,) + shape, dtype), np.zeros(capacity, np.int64),
                       np.zeros(capacity, fdtype), np.zeros((capacity,) + shape, dtype),
                       np.zeros(capacity, bool), np.zeros(capacity, bool),
                       np.zeros(capacity, np.int32), np.zeros(capacity, np.int64),
                       np.zeros(capacity, fdtype)]
        self.capacity, self.pos, self.size = capacity, 0, 0

    def add(self, *values):
        for arr, v in zip(self.fields, values):
            arr[self.pos] = v
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_batch(self, *columns):
        n = len(columns[2])
        idx = (self.pos + np.arange(n)) % self.capacity
        for arr, col in zip(self.fields, columns):
            arr[idx] = col
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n, rng):
        idx = rng.integers(0, self.size, n)
        return [arr[idx] for arr in self.fields]


@pytest.mark.parametrize("op", ["add", "add_batch(1024)", "sample(256)"])
@pytest.mark.parametrize("kind", OBS)
def test_numpy_ring(benchmark, kind, op):
    capacity = capacity_for(benchmark)
    ring = NumpyRing(capacity, kind)
    obs, action, reward, next_obs, done = rows(kind, 1024)
    zeros = np.zeros(1024)
    cols = (obs, action, reward, next_obs, done, done, zeros.astype(np.int32), zeros.astype(np.int64), reward)
    for _ in range(capacity // 1024 + 1):
        ring.add_batch(*cols)
    name = {"add": ADD_GROUP}.get(op, op)
    benchmark.group = f"replay.{name} obs={kind} capacity=1e6"
    benchmark.extra_info.update(rows={"add": ADD_LOOP, "add_batch(1024)": 1024, "sample(256)": 256}[op],
                                backend="numpy-ring")
    rng = np.random.default_rng(0)
    if op == "add":
        add, loop, o, no = ring.add, range(ADD_LOOP), obs[0], next_obs[0]

        def adds():
            for _ in loop:
                add(o, 1, 0.5, no, False, False, 1, 7, -1.0)

        benchmark(adds)
    elif op == "add_batch(1024)":
        benchmark(ring.add_batch, *cols)
    else:
        benchmark(ring.sample, 256, rng)


# ---------------------------------------------------------------------------------------------
# cpprb, the peer (optional: pip install cpprb)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "add_batch(1024)", "sample(256)"])
@pytest.mark.parametrize("kind", OBS)
def test_cpprb(benchmark, kind, op):
    cpprb = pytest.importorskip("cpprb")
    capacity = capacity_for(benchmark)
    obs_spec = {"shape": (8,), "dtype": np.float32} if kind == "vec8" else {"dtype": np.int64}
    rb = cpprb.ReplayBuffer(capacity, {"obs": obs_spec, "act": {"dtype": np.int64}, "rew": {},
                                       "next_obs": obs_spec, "done": {}})
    obs, action, reward, next_obs, done = rows(kind, 1024)
    for _ in range(capacity // 1024 + 1):
        rb.add(obs=obs, act=action, rew=reward, next_obs=next_obs, done=done)
    name = {"add": ADD_GROUP}.get(op, op)
    benchmark.group = f"replay.{name} obs={kind} capacity=1e6"
    benchmark.extra_info.update(rows={"add": ADD_LOOP, "add_batch(1024)": 1024, "sample(256)": 256}[op],
                                backend="cpprb")
    if op == "add":
        add, loop, o, no = rb.add, range(ADD_LOOP), obs[0], next_obs[0]

        def adds():
            for _ in loop:
                add(obs=o, act=1, rew=0.5, next_obs=no, done=0.0)

        benchmark(adds)
    elif op == "add_batch(1024)":
        benchmark(rb.add, obs=obs, act=action, rew=reward, next_obs=next_obs, done=done)
    else:
        benchmark(rb.sample, 256)
