"""The Cython and NumPy replay kernels are twins: same storage, same state, same sampled indices.

A hypothesis state machine drives one buffer per backend through random interleavings of
add / add_batch / end_episode / sample / sample_sequences / prioritized updates / clear / save+load,
and after every step compares the whole storage, the state, the per-task rings and the sum tree.
It also keeps a plain model (the list of every transition added since the last clear): the last
``capacity`` of them, in time order, are what both buffers hold -- so a bug the twins share is
caught too.  Hostile calls (NaN rewards, wrong shapes or dtypes, task ids out of range, None) are
interleaved: both backends reject them alike and nothing stored changes (issue 13).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import metarl_fast as mf
from conftest import needs_cython
from metarl_fast.replay import PrioritizedReplayBuffer, ReplayBuffer

pytestmark = needs_cython


def _same(x, y):
    if isinstance(x, tuple):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            _same(u, v)
    elif x is None:
        assert y is None
    else:
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


class ReplayTwins(RuleBasedStateMachine):
    """One buffer per backend, fed identical calls."""

    def __init__(self):
        super().__init__()
        self.bufs = None
        self.step = 0
        self.model = []  # (obs, action, reward, task) of every transition since the last clear

    def _both(self, method, *args, **kwargs):
        before = len(self.bufs[0]), self.bufs[0].n_added
        out = []
        for backend, buf in zip(("cython", "numpy"), self.bufs):
            with mf.use_backend(backend):
                try:
                    out.append(getattr(buf, method)(*args, **kwargs))
                except ValueError as err:
                    out.append(type(err))
        if isinstance(out[0], type) or isinstance(out[1], type):
            assert out[0] == out[1], out
            assert (len(self.bufs[0]), self.bufs[0].n_added) == before  # a rejected call stores nothing
            return None
        return out

    def _record(self, obs, action, reward, task):
        for o, a, r, t in zip(obs, action, reward, np.broadcast_to(task, (len(obs),))):
            self.model.append((np.asarray(o).tolist(), int(a), float(r), int(t)))

    def _rng_pair(self, seed):
        return np.random.default_rng(seed), np.random.default_rng(seed)

    def _both_sample(self, method, seed, *args, **kwargs):
        r1, r2 = self._rng_pair(seed)
        out = []
        for backend, buf, rng in zip(("cython", "numpy"), self.bufs, (r1, r2)):
            with mf.use_backend(backend):
                try:
                    out.append(getattr(buf, method)(*args, rng, **kwargs))
                except ValueError as err:
                    out.append(type(err))
        if isinstance(out[0], type) or isinstance(out[1], type):
            assert out[0] == out[1], out
        else:
            _same(tuple(out[0]) if isinstance(out[0], tuple) else out[0],
                  tuple(out[1]) if isinstance(out[1], tuple) else out[1])
        # both consumed the same number of draws
        assert r1.random() == r2.random()

    @precondition(lambda self: self.bufs is None)
    @rule(capacity=st.integers(1, 20), prioritized=st.booleans(), vector=st.booleans(),
          alpha=st.sampled_from([0.0, 0.5, 1.0]))
    def create(self, capacity, prioritized, vector, alpha):
        kwargs = dict(obs_shape=(3,), obs_dtype=np.float32) if vector else {}
        if prioritized:
            self.bufs = [PrioritizedReplayBuffer(capacity, alpha, **kwargs) for _ in range(2)]
        else:
            self.bufs = [ReplayBuffer(capacity, **kwargs) for _ in range(2)]
        self.vector = vector

    def _obs(self, n):
        base = np.arange(self.step, self.step + n)
        if self.vector:
            return np.repeat(base[:, None], 3, axis=1).astype(np.float32)
        return base

    @precondition(lambda self: self.bufs is not None)
    @rule(done=st.booleans(), trunc=st.booleans(), task=st.integers(0, 3), fast=st.booleans())
    def add(self, done, trunc, task, fast):
        obs = self._obs(1)[0]
        if fast:  # Python scalars: the compiled fast path
            out = self._both("add", obs if self.vector else int(obs), self.step % 3, float(self.step),
                             obs + 1 if self.vector else int(obs) + 1, done, truncated=trunc,
                             task_id=task, logp=-0.25)
        else:  # NumPy scalars: the validating slow path
            out = self._both("add", obs, np.int32(self.step % 3), np.float32(self.step), obs + 1,
                             np.bool_(done), truncated=np.bool_(trunc), task_id=np.int64(task),
                             logp=np.float64(-0.5))
        if out is not None:
            self._record([obs], [self.step % 3], [float(self.step)], task)
        self.step += 1

    @precondition(lambda self: self.bufs is not None)
    @rule(n=st.integers(0, 45), data=st.data())
    def add_batch(self, n, data):
        obs = self._obs(n)
        done = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        trunc = data.draw(st.one_of(st.booleans(), st.lists(st.booleans(), min_size=n, max_size=n)))
        task = data.draw(st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        task = np.array(task, dtype=data.draw(st.sampled_from([np.int32, np.int64]))) \
            if isinstance(task, list) else task
        trunc = np.array(trunc, dtype=bool) if isinstance(trunc, list) else trunc
        out = self._both("add_batch", obs, np.arange(n) % 3, np.arange(n, dtype=float), obs + 1, done,
                         truncated=trunc, task_id=task, logp=np.full(n, -1.5))
        if out is not None:
            self._record(obs, np.arange(n) % 3, np.arange(n, dtype=float), task)
        self.step += n

    @precondition(lambda self: self.bufs is not None)
    @rule(which=st.sampled_from(["nan reward", "inf logp", "task id", "obs shape", "obs None",
                                 "done dtype", "lengths", "object action"]), n=st.integers(1, 5))
    def hostile_add_batch(self, which, n):
        """Rejected by both backends alike (the same exception type), nothing stored."""
        obs, action, reward = self._obs(n), np.arange(n) % 3, np.ones(n)
        done, task, logp = np.zeros(n, dtype=bool), 0, np.zeros(n)
        if which == "nan reward":
            reward[-1] = np.nan
        elif which == "inf logp":
            logp[0] = np.inf
        elif which == "task id":
            task = 1 << 40
        elif which == "obs shape":
            obs = obs[..., None]
        elif which == "obs None":
            obs = None
        elif which == "done dtype":
            done = np.full(n, "x")
        elif which == "lengths":
            reward = reward[:-1] if n > 1 else np.ones(2)
        else:
            action = action.astype(object)
        outs = []
        before = [(tuple(np.array(f, copy=True) for f in b._store), b._state.copy()) for b in self.bufs]
        for backend, buf in zip(("cython", "numpy"), self.bufs):
            with mf.use_backend(backend):
                try:
                    buf.add_batch(obs, action, reward, obs, done, task_id=task, logp=logp)
                    outs.append(None)
                except (TypeError, ValueError) as err:
                    outs.append(type(err))
        assert outs[0] is not None and outs[0] == outs[1], (which, outs)
        for (store, state), buf in zip(before, self.bufs):
            _same(store, buf._store)
            _same(state, buf._state)

    @precondition(lambda self: self.bufs is not None)
    @rule()
    def end_episode(self):
        self._both("end_episode")

    @precondition(lambda self: self.bufs is not None and not isinstance(self.bufs[0], PrioritizedReplayBuffer))
    @rule(seed=st.integers(0, 2 ** 32 - 1), batch=st.integers(1, 70),
          task=st.one_of(st.none(), st.integers(0, 4)))
    def sample(self, seed, batch, task):
        self._both_sample("sample", seed, batch, task_id=task)

    @precondition(lambda self: self.bufs is not None)
    @rule(seed=st.integers(0, 2 ** 32 - 1), batch=st.integers(1, 30), length=st.integers(1, 6))
    def sample_sequences(self, seed, batch, length):
        self._both_sample("sample_sequences", seed, batch, length)

    @precondition(lambda self: self.bufs is not None and isinstance(self.bufs[0], PrioritizedReplayBuffer))
    @rule(seed=st.integers(0, 2 ** 32 - 1), batch=st.integers(1, 70), beta=st.sampled_from([0.0, 0.4, 1.0]))
    def prioritized_sample(self, seed, batch, beta):
        r1, r2 = self._rng_pair(seed)
        outs = []
        for backend, buf, rng in zip(("cython", "numpy"), self.bufs, (r1, r2)):
            with mf.use_backend(backend):
                try:
                    outs.append(buf.sample(batch, rng, beta=beta))
                except ValueError as err:
                    outs.append(type(err))
        if isinstance(outs[0], type):
            assert outs[0] == outs[1]
            return
        a, b = outs
        _same(tuple(a), tuple(b))  # weights too: both come from the same leaves by NumPy

    @precondition(lambda self: self.bufs is not None and isinstance(self.bufs[0], PrioritizedReplayBuffer)
                  and len(self.bufs[0]) > 0)
    @rule(data=st.data())
    def update_priorities(self, data):
        size = len(self.bufs[0])
        k = data.draw(st.integers(0, 10))
        idx = np.array(data.draw(st.lists(st.integers(0, size - 1), min_size=k, max_size=k)), dtype=np.int64)
        prio = np.array(data.draw(st.lists(st.floats(0, 100), min_size=k, max_size=k)))
        self._both("update_priorities", idx, prio)

    @precondition(lambda self: self.bufs is not None)
    @rule()
    def clear(self):
        self._both("clear")
        self.model = []

    @precondition(lambda self: self.bufs is not None)
    @rule()
    def save_and_load(self):
        import os
        import tempfile

        cls = type(self.bufs[0])
        new = []
        with tempfile.TemporaryDirectory() as tmp:
            for backend, buf in zip(("cython", "numpy"), self.bufs):
                with mf.use_backend(backend):
                    path = buf.save(os.path.join(tmp, f"{backend}.npz"))
                    new.append(cls.load(path))
        self.bufs = new

    @invariant()
    def holds_the_last_capacity_transitions(self):
        """The model: what the buffer holds is the last ``capacity`` transitions added, in order."""
        if self.bufs is None:
            return
        buf = self.bufs[0]
        held = self.model[-buf.capacity:] if self.model else []
        assert len(buf) == len(held) and buf.n_added == len(self.model)
        oldest = (buf.n_added - len(buf)) % buf.capacity
        slots = (oldest + np.arange(len(buf))) % buf.capacity
        for slot, (o, a, r, t) in zip(slots.tolist(), held):
            assert np.asarray(buf.obs[slot]).tolist() == o
            assert int(buf.action[slot]) == a and float(buf.reward[slot]) == r
            assert int(buf.task_id[slot]) == t

    @invariant()
    def twins_equal(self):
        if self.bufs is None:
            return
        a, b = self.bufs
        _same(a._store, b._store)
        _same(a._state, b._state)
        for task in range(5):
            _same(a._tasks.slots(task), b._tasks.slots(task))
        if isinstance(a, PrioritizedReplayBuffer):
            _same(a._tree_sum, b._tree_sum)
            _same(a._tree_min, b._tree_min)
            assert a._max_leaf == b._max_leaf


TestReplayTwins = ReplayTwins.TestCase
TestReplayTwins.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


@needs_cython
@pytest.mark.parametrize("seed", range(3))
def test_large_random_interleaving_identical(seed):
    """A long random run (capacity 1000, wraps many times) gives identical storage and samples."""
    rng = np.random.default_rng(seed)
    bufs = [PrioritizedReplayBuffer(1000, 0.6, obs_shape=(8,), obs_dtype=np.float32,
                                    reward_dtype=np.float32) for _ in range(2)]
    for _ in range(60):
        n = int(rng.integers(1, 300))
        obs = rng.standard_normal((n, 8)).astype(np.float32)
        cols = (obs, rng.integers(0, 4, n), rng.standard_normal(n).astype(np.float32), obs * 2,
                rng.random(n) < 0.05)
        kw = dict(truncated=rng.random(n) < 0.01, task_id=int(rng.integers(0, 6)),
                  logp=-rng.random(n).astype(np.float32))
        seed_s = int(rng.integers(2 ** 31))
        prio = rng.random(32) * 3
        res = []
        for backend, buf in zip(("cython", "numpy"), bufs):
            with mf.use_backend(backend):
                buf.add_batch(*cols, **kw)
                r = np.random.default_rng(seed_s)
                b = buf.sample(32, r)
                buf.update_priorities(b.indices, prio)
                s = ReplayBuffer.sample_sequences(buf, 16, 5, r)
                t = ReplayBuffer.sample_indices(buf, 16, r, task_id=int(buf.task_id[0]))
                res.append((b.indices, s.indices, t))
        _same(res[0], res[1])
        _same(bufs[0]._store, bufs[1]._store)
        _same(bufs[0]._tree_sum, bufs[1]._tree_sum)


@needs_cython
def test_gather_kernel_on_separate_arrays():
    """The gather kernels also accept storage of separate (struct of arrays) field arrays."""
    from metarl_fast._core import replay as cr
    from metarl_fast.reference import replay as ref

    rng = np.random.default_rng(0)
    cap = 50
    store = (rng.standard_normal((cap, 3)).astype(np.float32), rng.integers(0, 9, cap),
             rng.standard_normal(cap), rng.standard_normal((cap, 3)).astype(np.float32),
             rng.random(cap) < 0.5, rng.random(cap) < 0.5, rng.integers(0, 4, cap).astype(np.int32),
             np.arange(cap, dtype=np.int64), rng.standard_normal(cap))
    idx = rng.integers(0, cap, (7, 4))
    _same(cr.gather(store, idx), ref.gather(store, idx))
    starts = rng.integers(0, cap, 9)
    _same(cr.window_indices(starts, 6, cap), ref.window_indices(starts, 6, cap))


@needs_cython
def test_compiled_write_refuses_separate_arrays():
    """write_rows needs record storage; other layouts are refused, never written out of bounds."""
    from metarl_fast._core import replay as cr
    from metarl_fast.reference.replay import TaskIndex

    store = (np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4), np.zeros(4, np.int64),
             np.zeros(4, bool), np.zeros(4, bool), np.zeros(4, np.int32), np.zeros(4, np.int64),
             np.zeros(4))
    state = np.array([0, 0, 0, -1, 0], dtype=np.int64)
    with pytest.raises(ValueError, match="record"):
        cr.add_batch(store, state, TaskIndex(), np.arange(2), np.arange(2), np.zeros(2), np.arange(2),
                     np.zeros(2, bool), False, 0, 0.0)
    assert state.tolist() == [0, 0, 0, -1, 0]


# Python ints around every width the compiled add reads directly (one 30-bit digit) or converts
# (more digits, overflow), and the float reward/logp cases it takes or hands to the reference.
INT_EDGES = [0, 1, -1, 7, 2 ** 30 - 1, 2 ** 30, -(2 ** 30), 2 ** 31, 2 ** 53 + 1, 2 ** 62,
             -(2 ** 62), 2 ** 63 - 1, -(2 ** 63) + 1, -(2 ** 63), 2 ** 63, 2 ** 64, -(2 ** 70)]


@pytest.mark.parametrize("obs_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("value", INT_EDGES)
def test_single_add_int_edges_match_the_reference(obs_dtype, value):
    """add(obs=v, action=v, task_id=v, reward=v, logp=-|v|) stores or rejects exactly as the
    NumPy backend does, for ints of one digit, several digits and past 64 bits."""
    bufs = []
    with mf.use_backend("cython"):
        bufs.append(ReplayBuffer(4, obs_dtype=obs_dtype))
    with mf.use_backend("numpy"):
        bufs.append(ReplayBuffer(4, obs_dtype=obs_dtype))
    calls = [dict(obs=value), dict(action=value), dict(next_obs=value), dict(reward=value),
             dict(logp=-abs(value)), dict(task_id=value if 0 <= value < 64 else 1)]
    for change in calls:
        args = dict(obs=1, action=0, reward=0.5, next_obs=2, terminated=False, task_id=0, logp=-1.0)
        args.update(change)
        out = []
        for backend, buf in zip(("cython", "numpy"), bufs):
            with mf.use_backend(backend):
                try:
                    buf.add(args["obs"], args["action"],
                            args["reward"], args["next_obs"], args["terminated"],
                            task_id=args["task_id"], logp=args["logp"])
                    out.append(None)
                except (ValueError, TypeError, OverflowError) as err:
                    out.append(type(err))
        assert out[0] == out[1], (change, out)
    for field in ("obs", "action", "reward", "next_obs", "task_id", "logp"):
        np.testing.assert_array_equal(getattr(bufs[0], field), getattr(bufs[1], field),
                                      err_msg=field)
    assert len(bufs[0]) == len(bufs[1])
