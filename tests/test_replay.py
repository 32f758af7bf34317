"""ReplayBuffer / PrioritizedReplayBuffer behaviour, on each backend (see conftest.backend)."""
import inspect
import sys
import threading

import numpy as np
import pytest

from metarl_fast.io import CheckpointError
from metarl_fast.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer


def chi2_limit(dof, z=3.29):
    """Wilson-Hilferty upper quantile of chi-square(dof) (z = 3.29: p ~ 0.0005)."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def chi2(counts, expected):
    return float(((counts - expected) ** 2 / expected).sum())


def stored_in_time_order(buf):
    """A Batch of the stored transitions, oldest first."""
    size = len(buf)
    oldest = (buf.write_position - size) % buf.capacity
    return buf.gather((oldest + np.arange(size)) % buf.capacity)


def tabular_batch(n, start=0, task=0, done_every=0):
    obs = np.arange(start, start + n, dtype=np.int64)
    done = np.zeros(n, dtype=bool) if not done_every else (obs % done_every == done_every - 1)
    return dict(obs=obs, action=obs % 4, reward=obs.astype(np.float64) * 0.5, next_obs=obs + 1,
                terminated=done, task_id=task)


# ---------------------------------------------------------------------------------------------
# FIFO ring semantics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [1, 2, 7])
def test_fifo_overwrite_against_model(backend, capacity):
    rng = np.random.default_rng(capacity)
    buf = ReplayBuffer(capacity)
    model = []
    step = 0
    for _ in range(1500):
        if rng.random() < 0.5:
            buf.add(step, step % 3, float(step), step + 1, bool(step % 5 == 0),
                    task_id=int(step % 2), logp=-float(step % 7))
            model.append(step)
            step += 1
        else:
            n = int(rng.integers(0, 12))
            obs = np.arange(step, step + n)
            buf.add_batch(obs, obs % 3, obs.astype(float), obs + 1, obs % 5 == 0,
                          task_id=(obs % 2).astype(np.int32), logp=-(obs % 7).astype(float))
            model.extend(obs.tolist())
            step += n
        expect = np.array(model[-capacity:], dtype=np.int64)
        assert len(buf) == min(capacity, len(model))
        assert buf.is_full == (len(model) >= capacity)
        assert buf.n_added == len(model)
        assert buf.write_position == len(model) % capacity
        got = stored_in_time_order(buf)
        np.testing.assert_array_equal(got.obs, expect)
        np.testing.assert_array_equal(got.next_obs, expect + 1)
        np.testing.assert_array_equal(got.action, expect % 3)
        np.testing.assert_array_equal(got.reward, expect.astype(float))
        np.testing.assert_array_equal(got.terminated, expect % 5 == 0)
        np.testing.assert_array_equal(got.task_id, expect % 2)
        np.testing.assert_array_equal(got.logp, -(expect % 7).astype(float))
        for task in (0, 1):
            assert buf.task_count(task) == int(np.sum(expect % 2 == task))


def test_add_batch_equals_sequential_adds(backend):
    a = ReplayBuffer(50, obs_shape=(3,), obs_dtype=np.float32, reward_dtype=np.float32)
    b = ReplayBuffer(50, obs_shape=(3,), obs_dtype=np.float32, reward_dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(6):
        n = int(rng.integers(1, 40))
        obs = rng.standard_normal((n, 3)).astype(np.float32)
        nxt = rng.standard_normal((n, 3)).astype(np.float32)
        act = rng.integers(0, 5, n)
        rew = rng.standard_normal(n).astype(np.float32)
        done = rng.random(n) < 0.2
        trunc = rng.random(n) < 0.1
        task = rng.integers(0, 3, n)
        logp = -rng.random(n).astype(np.float32)
        a.add_batch(obs, act, rew, nxt, done, truncated=trunc, task_id=task, logp=logp)
        for i in range(n):
            b.add(obs[i], int(act[i]), float(rew[i]), nxt[i], bool(done[i]), truncated=bool(trunc[i]),
                  task_id=int(task[i]), logp=float(logp[i]))
        for x, y in zip(a._store, b._store):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a._state, b._state)


def test_add_batch_longer_than_capacity_keeps_last_rows(backend):
    buf = ReplayBuffer(5)
    buf.add_batch(**tabular_batch(3))
    buf.add_batch(**tabular_batch(13, start=3, done_every=4))
    got = stored_in_time_order(buf)
    np.testing.assert_array_equal(got.obs, np.arange(11, 16))
    assert buf.n_added == 16 and buf.write_position == 16 % 5
    # episode ids count the skipped rows' boundaries too: episodes end at obs 3, 7, 11, 15
    np.testing.assert_array_equal(got.episode_id, [2, 3, 3, 3, 3])
    assert buf.next_episode_id == 4


def test_episode_ids(backend):
    buf = ReplayBuffer(100)
    done = np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=bool)
    trunc = np.array([0, 0, 0, 0, 1, 0, 0, 0], dtype=bool)
    task = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    buf.add_batch(np.arange(8), np.zeros(8, dtype=np.int64), np.zeros(8), np.arange(8), done,
                  truncated=trunc, task_id=task)
    np.testing.assert_array_equal(buf.episode_id[:8], [0, 0, 0, 1, 1, 2, 2, 2])
    buf.add(0, 0, 0.0, 0, False, task_id=1)
    buf.add(0, 0, 0.0, 0, False, task_id=1)
    buf.end_episode()
    buf.add(0, 0, 0.0, 0, False, task_id=1)
    buf.add(0, 0, 0.0, 0, False, task_id=2)  # a new task starts a new episode
    np.testing.assert_array_equal(buf.episode_id[8:12], [3, 3, 4, 5])


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def test_uniform_sampling_chi_square(backend):
    buf = ReplayBuffer(64)
    buf.add_batch(**tabular_batch(100))  # wrapped: all 64 slots stored
    rng = np.random.default_rng(7)
    idx = buf.sample_indices(64 * 400, rng)
    counts = np.bincount(idx, minlength=64)
    assert chi2(counts, np.full(64, 400.0)) < chi2_limit(63)

    part = ReplayBuffer(64)
    part.add_batch(**tabular_batch(20))
    idx = part.sample_indices(20 * 500, rng)
    assert idx.min() >= 0 and idx.max() < 20
    assert chi2(np.bincount(idx, minlength=20), np.full(20, 500.0)) < chi2_limit(19)


def test_sample_batch_contents_and_copies(backend):
    buf = ReplayBuffer(10, obs_shape=(2,), obs_dtype=np.float32)
    obs = np.arange(20, dtype=np.float32).reshape(10, 2)
    buf.add_batch(obs, np.arange(10), np.arange(10, dtype=float), obs + 1, np.zeros(10, bool),
                  task_id=3, logp=-1.0)
    batch = buf.sample(32, np.random.default_rng(1))
    assert isinstance(batch, Batch) and batch.weights is None
    assert batch.obs.shape == (32, 2) and batch.obs.dtype == np.float32
    np.testing.assert_array_equal(batch.obs, obs[batch.indices])
    np.testing.assert_array_equal(batch.action, batch.indices)
    np.testing.assert_array_equal(batch.task_id, np.full(32, 3, dtype=np.int32))
    before = batch.obs.copy()
    buf.add_batch(obs * 0, np.zeros(10, dtype=np.int64), np.zeros(10), obs * 0, np.zeros(10, bool))
    np.testing.assert_array_equal(batch.obs, before)  # later writes never alias a Batch


def test_per_task_sampling(backend):
    buf = ReplayBuffer(300)
    rng = np.random.default_rng(3)
    tasks = rng.integers(0, 4, 1000)
    obs = np.arange(1000)
    buf.add_batch(obs, obs, np.zeros(1000), obs, np.zeros(1000, bool), task_id=tasks)
    stored_tasks = tasks[-300:]
    for k in range(4):
        batch = buf.sample(4000, rng, task_id=k)
        assert np.all(batch.task_id == k)
        expect_obs = obs[-300:][stored_tasks == k]
        assert set(batch.obs.tolist()) <= set(expect_obs.tolist())
        counts = np.array([np.sum(batch.obs == o) for o in expect_obs])
        assert chi2(counts, np.full(expect_obs.size, 4000 / expect_obs.size)) < chi2_limit(expect_obs.size - 1)
    with pytest.raises(ValueError, match="no transitions of task 9"):
        buf.sample(3, rng, task_id=9)


def test_sequences_stay_inside_episodes(backend):
    buf = ReplayBuffer(50)
    rng = np.random.default_rng(11)
    step = 0
    for _ in range(30):  # episodes of random lengths, some truncated, several tasks, wrapped
        length = int(rng.integers(1, 9))
        obs = np.arange(step, step + length)
        done = np.zeros(length, bool)
        done[-1] = rng.random() < 0.7
        trunc = np.zeros(length, bool)
        trunc[-1] = not done[-1]
        buf.add_batch(obs, obs, np.zeros(length), obs + 1, done, truncated=trunc,
                      task_id=int(rng.integers(0, 3)))
        step += length
    for length in (1, 2, 4):
        batch = buf.sample_sequences(500, length, rng)
        assert batch.obs.shape == (500, length)
        # consecutive in time, one episode, not ending before the last step
        assert np.all(np.diff(batch.obs, axis=1) == 1)
        assert np.all(batch.episode_id == batch.episode_id[:, :1])
        assert not np.any((batch.terminated | batch.truncated)[:, :-1])
        # every valid window appears, uniformly
        got = stored_in_time_order(buf)
        valid = [s for s in range(len(buf) - length + 1)
                 if got.episode_id[s] == got.episode_id[s + length - 1]]
        firsts = got.obs[valid]
        assert set(batch.obs[:, 0].tolist()) <= set(firsts.tolist())
    batch = buf.sample_sequences(20000, 3, rng)
    valid = [s for s in range(len(buf) - 2) if got.episode_id[s] == got.episode_id[s + 2]]
    counts = np.array([np.sum(batch.obs[:, 0] == got.obs[s]) for s in valid])
    assert chi2(counts, np.full(len(valid), 20000 / len(valid))) < chi2_limit(len(valid) - 1)
    with pytest.raises(ValueError, match="longer than any episode"):
        buf.sample_sequences(4, 9, rng)


def test_sequences_never_straddle_write_head(backend):
    buf = ReplayBuffer(10)
    buf.add_batch(**tabular_batch(25))  # one long open episode, wrapped 2.5 times
    batch = buf.sample_sequences(300, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(batch.obs, np.tile(np.arange(15, 25), (300, 1)))
    batch = buf.sample_sequences(300, 4, np.random.default_rng(0))
    assert np.all(np.diff(batch.obs, axis=1) == 1) and batch.obs.min() >= 15


def test_sequences_exact_fallback(backend):
    # windows are rare (one valid start among many), so the rejection rounds fall back to a scan
    buf = ReplayBuffer(400)
    done = np.ones(400, dtype=bool)
    done[[100, 101, 102]] = False
    buf.add_batch(np.arange(400), np.zeros(400, np.int64), np.zeros(400), np.arange(400), done)
    batch = buf.sample_sequences(50, 4, np.random.default_rng(2))
    np.testing.assert_array_equal(batch.obs, np.tile(np.arange(100, 104), (50, 1)))


# ---------------------------------------------------------------------------------------------
# Prioritized replay
# ---------------------------------------------------------------------------------------------

def test_prioritized_frequencies(backend):
    alpha = 0.7
    buf = PrioritizedReplayBuffer(12, alpha=alpha, eps=0.0)
    buf.add_batch(**tabular_batch(10))
    prio = np.arange(1, 11, dtype=float)
    buf.update_priorities(np.arange(10), prio)
    rng = np.random.default_rng(5)
    n = 40000
    batch = buf.sample(n, rng, beta=0.5)
    p = prio ** alpha / np.sum(prio ** alpha)
    counts = np.bincount(batch.indices, minlength=12)
    assert counts[10:].sum() == 0
    assert chi2(counts[:10], n * p) < chi2_limit(9)
    w = (10 * p[batch.indices]) ** -0.5
    np.testing.assert_allclose(batch.weights, w / ((10 * p.min()) ** -0.5), rtol=1e-12)
    assert batch.weights.max() <= 1.0
    np.testing.assert_array_equal(batch.obs, batch.indices)


def test_prioritized_new_transitions_get_max_priority(backend):
    buf = PrioritizedReplayBuffer(4, alpha=1.0, eps=0.0)
    buf.add_batch(**tabular_batch(3))
    np.testing.assert_array_equal(buf.priorities(), [1, 1, 1, 0])
    buf.update_priorities(np.array([0, 1, 1]), np.array([5.0, 7.0, 2.0]))  # last wins
    np.testing.assert_array_equal(buf.priorities(), [5, 2, 1, 0])
    buf.add(9, 1, 0.0, 9, False)
    buf.add(10, 1, 0.0, 10, False)  # overwrites slot 0 with the max priority seen (5)
    np.testing.assert_array_equal(buf.priorities(), [5, 2, 1, 5])
    buf.add_batch(**tabular_batch(6, start=20))
    np.testing.assert_array_equal(buf.priorities(), [5, 5, 5, 5])
    assert buf.total_priority == 20.0
    buf.clear()
    assert len(buf) == 0 and buf.total_priority == 0.0


def test_prioritized_large_tree_consistency(backend):
    buf = PrioritizedReplayBuffer(1000, alpha=0.5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        buf.add_batch(**tabular_batch(333))
        idx = buf.sample_indices(64, rng)
        buf.update_priorities(idx, rng.random(64) * 10)
    leaves = buf.priorities()
    np.testing.assert_allclose(buf.total_priority, leaves.sum(), rtol=1e-12)
    assert buf._tree_min[1] == leaves[:len(buf)].min()


# ---------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_save_load_round_trip(backend, tmp_path, cls):
    buf = cls(23, obs_shape=(2,), obs_dtype=np.float32, reward_dtype=np.float32)
    rng = np.random.default_rng(4)
    for _ in range(4):
        n = 11
        buf.add_batch(rng.standard_normal((n, 2)).astype(np.float32), rng.integers(0, 3, n),
                      rng.standard_normal(n).astype(np.float32),
                      rng.standard_normal((n, 2)).astype(np.float32), rng.random(n) < 0.3,
                      task_id=rng.integers(0, 3, n), logp=-rng.random(n).astype(np.float32))
    if cls is PrioritizedReplayBuffer:
        buf.update_priorities(np.arange(10), rng.random(10))
    path = buf.save(tmp_path / "replay.npz")
    new = cls.load(path)
    for x, y in zip(buf._store, new._store):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(buf._state, new._state)
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    if cls is PrioritizedReplayBuffer:
        np.testing.assert_array_equal(buf._tree_sum, new._tree_sum)
        a, b = buf.sample(50, r1, beta=0.3), new.sample(50, r2, beta=0.3)
    else:
        for k in range(3):
            np.testing.assert_array_equal(buf.sample_indices(40, r1, task_id=k),
                                          new.sample_indices(40, r2, task_id=k))
        np.testing.assert_array_equal(buf.sample_sequences(9, 2, r1).indices,
                                      new.sample_sequences(9, 2, r2).indices)
        a, b = buf.sample(50, r1), new.sample(50, r2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # the loaded buffer keeps working identically
    for x in (buf, new):
        x.add(np.zeros(2, np.float32), 1, 0.5, np.ones(2, np.float32), False, task_id=1)
    np.testing.assert_array_equal(buf._state, new._state)


def test_load_rejects_bad_files(backend, tmp_path):
    from metarl_fast import io

    buf = ReplayBuffer(8)
    buf.add_batch(**tabular_batch(5))
    path = buf.save(tmp_path / "r.npz")
    raw = path.read_bytes() if hasattr(path, "read_bytes") else open(path, "rb").read()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable metarl_fast .npz file"):
        ReplayBuffer.load(tmp_path / "trunc.npz")
    corrupted = bytearray(raw)
    corrupted[len(raw) // 3] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(corrupted))
    with pytest.raises(CheckpointError, match="not a readable metarl_fast .npz file"):
        ReplayBuffer.load(tmp_path / "bad.npz")
    with pytest.raises(CheckpointError, match="no such file"):
        ReplayBuffer.load(tmp_path / "missing.npz")
    arrays = buf._arrays()
    io.save_npz(tmp_path / "v9.npz", arrays, kind="ReplayBuffer", version=9)
    with pytest.raises(CheckpointError, match="version"):
        ReplayBuffer.load(tmp_path / "v9.npz")
    with pytest.raises(CheckpointError, match="holds a ReplayBuffer"):
        PrioritizedReplayBuffer.load(path)
    for name, value in [("obs", np.zeros(7, np.int64)), ("next_obs", np.zeros((8, 2), np.int64)),
                        ("task_id", np.zeros(8, np.int64)), ("state", np.array([9, 5, 0, -1, 5])),
                        ("state", np.array([3, 5, 0, -1, 5])), ("reward", np.full(8, np.nan))]:
        bad = dict(arrays, **{name: value})
        io.save_npz(tmp_path / "shape.npz", bad, kind="ReplayBuffer", version=1)
        with pytest.raises(CheckpointError, match="inconsistent|holds NaN or infinity"):
            ReplayBuffer.load(tmp_path / "shape.npz")
    bad = dict(arrays)
    del bad["episode_id"]
    io.save_npz(tmp_path / "missing_arr.npz", bad, kind="ReplayBuffer", version=1)
    with pytest.raises(CheckpointError, match="missing"):
        ReplayBuffer.load(tmp_path / "missing_arr.npz")


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing stored lost
# ---------------------------------------------------------------------------------------------

def test_bad_construction():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    with pytest.raises(TypeError, match="capacity"):
        ReplayBuffer(2.5)
    with pytest.raises(MemoryError, match="bytes"):
        ReplayBuffer(10 ** 15, obs_shape=(8,), obs_dtype=np.float32)
    with pytest.raises(MemoryError, match="bytes"):
        ReplayBuffer(2 ** 62)
    with pytest.raises(TypeError, match="obs_dtype"):
        ReplayBuffer(4, obs_dtype=object)
    with pytest.raises(TypeError, match="obs_dtype"):
        ReplayBuffer(4, obs_dtype=np.float16)
    with pytest.raises(TypeError, match="action_dtype"):
        ReplayBuffer(4, action_dtype=bool)
    with pytest.raises(TypeError, match="reward_dtype"):
        ReplayBuffer(4, reward_dtype=np.int32)
    with pytest.raises(ValueError, match="obs_shape"):
        ReplayBuffer(4, obs_shape=(0,))
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedReplayBuffer(4, alpha=-1)


def snapshot(buf):
    return [a.copy() for a in buf._store] + [buf._state.copy(), buf._tasks.meta[:, :3].copy()] + (
        [buf._tree_sum.copy()] if isinstance(buf, PrioritizedReplayBuffer) else [])


def assert_unchanged(buf, snap):
    for x, y in zip(snapshot(buf), snap):
        np.testing.assert_array_equal(x, y)


GOOD_ONE = dict(obs=np.zeros(2, np.float32), action=1, reward=0.5, next_obs=np.ones(2, np.float32),
                terminated=False)


def good_batch(n=4):
    return dict(obs=np.zeros((n, 2), np.float32), action=np.ones(n, np.int64), reward=np.zeros(n),
                next_obs=np.ones((n, 2), np.float32), terminated=np.zeros(n, bool))


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("change, exc, match", [
    (dict(obs=np.zeros(3, np.float32)), ValueError, "obs"),
    (dict(next_obs=np.zeros((2, 1), np.float32)), ValueError, "next_obs"),
    (dict(obs=np.array(["a", "b"])), TypeError, "obs"),
    (dict(obs=np.array([np.nan, 0], np.float32)), ValueError, "obs"),
    (dict(reward=float("nan")), ValueError, "reward"),
    (dict(reward=float("inf")), ValueError, "reward"),
    (dict(reward="1"), TypeError, "reward"),
    (dict(reward=np.ones(2)), ValueError, "reward"),
    (dict(action=1.5), TypeError, "action"),
    (dict(action=2 ** 70), (ValueError, TypeError, OverflowError), "action"),
    (dict(terminated="yes"), TypeError, "terminated"),
    (dict(terminated=2), ValueError, "terminated"),
    (dict(truncated=3), ValueError, "truncated"),
    (dict(task_id=-1), ValueError, "task_id"),
    (dict(task_id=1.0), TypeError, "task_id"),
    (dict(task_id=2 ** 40), ValueError, "task_id"),
    (dict(logp=float("nan")), ValueError, "logp"),
])
def test_bad_add_leaves_buffer_unchanged(backend, cls, change, exc, match):
    buf = cls(5, obs_shape=(2,), obs_dtype=np.float32)
    for _ in range(7):
        buf.add(**GOOD_ONE, task_id=1)
    snap = snapshot(buf)
    kwargs = dict(GOOD_ONE, **change)
    extra = {k: kwargs.pop(k) for k in ("task_id", "truncated", "logp") if k in kwargs}
    with pytest.raises(exc, match=match):
        buf.add(**kwargs, **extra)
    assert_unchanged(buf, snap)


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
@pytest.mark.parametrize("change, exc, match", [
    (dict(obs=np.zeros((4, 3), np.float32)), ValueError, "obs"),
    (dict(obs=np.zeros((5, 2), np.float32)), ValueError, "obs"),
    (dict(next_obs=np.zeros((3, 2), np.float32)), ValueError, "next_obs"),
    (dict(action=np.ones(3, np.int64)), ValueError, "action"),
    (dict(action=np.ones(4, np.float64)), TypeError, "action"),
    (dict(terminated=np.zeros(5, bool)), ValueError, "terminated"),
    (dict(terminated=np.array([0, 1, 2, 0])), ValueError, "terminated"),
    (dict(terminated=np.zeros(4, np.float32)), TypeError, "terminated"),
    (dict(reward=np.array([0, np.nan, 0, 0])), ValueError, "reward"),
    (dict(reward=np.array([0, np.inf, 0, 0])), ValueError, "reward"),
    (dict(reward=np.zeros((4, 1))), ValueError, "reward"),
    (dict(reward=np.array([True] * 4)), TypeError, "reward"),
    (dict(obs=np.array([[0, 0], [0, 0], [0, np.inf], [0, 0]], np.float32)), ValueError, "obs"),
    (dict(obs=np.zeros((4, 2), np.complex64)), TypeError, "obs"),
    (dict(task_id=np.array([0, 1, -1, 0])), ValueError, "task_id"),
    (dict(task_id=np.array([0, 1, 2])), ValueError, "task_id"),
    (dict(task_id=np.zeros(4)), TypeError, "task_id"),
    (dict(truncated=np.zeros(3, bool)), ValueError, "truncated"),
    (dict(logp=np.array([0, 0, np.nan, 0])), ValueError, "logp"),
    (dict(logp=np.zeros(2)), ValueError, "logp"),
])
def test_bad_add_batch_leaves_buffer_unchanged(backend, cls, change, exc, match):
    buf = cls(5, obs_shape=(2,), obs_dtype=np.float32)
    buf.add_batch(**good_batch(7), task_id=np.arange(7) % 2)
    snap = snapshot(buf)
    kwargs = dict(good_batch(), **change)
    extra = {k: kwargs.pop(k) for k in ("task_id", "truncated", "logp") if k in kwargs}
    with pytest.raises(exc, match=match):
        buf.add_batch(**kwargs, **extra)
    assert_unchanged(buf, snap)


def test_bad_sampling_arguments(backend):
    buf = ReplayBuffer(5)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2, rng)
    with pytest.raises(ValueError, match="empty"):
        buf.sample_sequences(2, 1, rng)
    buf.add_batch(**tabular_batch(4, done_every=2))
    snap = snapshot(buf)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0, rng)
    with pytest.raises(TypeError, match="batch_size"):
        buf.sample(2.0, rng)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(10 ** 30, rng)
    with pytest.raises(TypeError, match="task_id"):
        buf.sample(2, rng, task_id=True)
    with pytest.raises(TypeError, match="rng"):
        buf.sample(2, 4.2)
    with pytest.raises(ValueError, match="task_id"):
        buf.sample(2, rng, task_id=-1)
    with pytest.raises(ValueError, match="task 3"):
        buf.sample(2, rng, task_id=3)
    with pytest.raises(ValueError, match="length"):
        buf.sample_sequences(2, 0, rng)
    with pytest.raises(ValueError, match="longer than any episode"):
        buf.sample_sequences(2, 3, rng)
    with pytest.raises(ValueError, match="longer than any episode"):
        buf.sample_sequences(2, 50, rng)
    with pytest.raises(ValueError, match="indices"):
        buf.gather(np.array([4]))
    assert_unchanged(buf, snap)

    pbuf = PrioritizedReplayBuffer(5)
    with pytest.raises(ValueError, match="empty"):
        pbuf.sample(2, rng)
    pbuf.add_batch(**tabular_batch(3))
    snap = snapshot(pbuf)
    with pytest.raises(ValueError, match="indices"):
        pbuf.update_priorities(np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError, match="priorities"):
        pbuf.update_priorities(np.array([0, 1]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="priorities"):
        pbuf.update_priorities(np.array([0, 1]), np.array([1.0, -2.0]))
    with pytest.raises(ValueError, match="priorities"):
        pbuf.update_priorities(np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ValueError, match="beta"):
        pbuf.sample(2, rng, beta=float("nan"))
    big = PrioritizedReplayBuffer(5, alpha=2.0)
    big.add_batch(**tabular_batch(3))
    with pytest.raises(ValueError, match="priorities too large"):
        big.update_priorities(np.array([0]), np.array([1e200]))
    assert_unchanged(pbuf, snap)


def test_clear(backend):
    buf = ReplayBuffer(6)
    buf.add_batch(**tabular_batch(9, task=2))
    buf.clear()
    assert len(buf) == 0 and not buf.is_full and buf.task_count(2) == 0 and buf.write_position == 0
    buf.add(1, 1, 1.0, 2, True, task_id=1)
    assert len(buf) == 1 and buf.episode_id[0] == 0
    np.testing.assert_array_equal(buf.sample(3, np.random.default_rng(0), task_id=1).obs, [1, 1, 1])


def test_accepts_convertible_inputs(backend):
    buf = ReplayBuffer(8, obs_shape=(2,), obs_dtype=np.float32, reward_dtype=np.float32)
    buf.add([1, 2], np.int32(1), np.float64(0.5), (3.0, 4.0), np.bool_(True), task_id=np.int64(2),
            logp=np.float32(-0.1))
    buf.add_batch([[1, 2]], [1], [1], np.ones((1, 2)), [1], truncated=[True], task_id=[1], logp=[0])
    buf.add_batch(np.ones((3, 2), np.float64)[:, ::1], np.arange(3, dtype=np.int16), np.ones(6)[::2],
                  np.ones((3, 2)), np.zeros(3, np.int8), task_id=np.arange(3, dtype=np.uint8))
    assert len(buf) == 5
    np.testing.assert_array_equal(buf.obs[:2], [[1, 2], [1, 2]])
    np.testing.assert_array_equal(buf.terminated[:2], [True, True])
    np.testing.assert_array_equal(buf.truncated[:2], [False, True])
    np.testing.assert_array_equal(buf.task_id[:5], [2, 1, 0, 1, 2])
    with pytest.raises(ValueError, match="read-only"):
        buf.obs[0, 0] = 5  # the storage views are read-only
    # byte-swapped and unaligned inputs are converted, never reinterpreted
    swapped = ReplayBuffer(4)
    raw = np.zeros(8 * 3 + 1, dtype=np.uint8)[1:].view(np.float64)  # unaligned
    raw[:] = [1.5, 2.5, 3.5]
    swapped.add_batch(np.arange(3, dtype=">i8"), np.arange(3, dtype=">i8"), raw, np.arange(3),
                      np.zeros(3, bool), logp=np.array([-1.0, -2.0, -3.0], dtype=">f8"))
    np.testing.assert_array_equal(swapped.obs[:3], [0, 1, 2])
    np.testing.assert_array_equal(swapped.reward[:3], [1.5, 2.5, 3.5])
    np.testing.assert_array_equal(swapped.logp[:3], [-1.0, -2.0, -3.0])
    swapped.add(np.array(7, dtype=">i8"), 1, 0.5, 8, False)
    assert swapped.obs[3] == 7


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------

def _thread(errors, body, *args, then=None):
    """A thread running body(*args): whatever it raises goes to `errors` (each test asserts
    that it stays empty), and the event `then` is set when it ends, however it ends."""
    def run():
        try:
            body(*args)
        except Exception as err:  # pragma: no cover - reported by the test
            errors.append(err)
        finally:
            if then is not None:
                then.set()
    return threading.Thread(target=run)


def test_concurrent_writer_and_samplers(backend):
    """One thread writes while two sample: every sampled transition is a whole one."""
    buf = ReplayBuffer(257, obs_shape=(4,), obs_dtype=np.int64)
    buf.add_batch(np.zeros((1, 4), np.int64), np.zeros(1, np.int64), np.zeros(1),
                  np.ones((1, 4), np.int64), np.zeros(1, bool))
    stop = threading.Event()
    errors = []

    def writer():
        for i in range(1, 3000):
            n = 1 + i % 37
            base = np.arange(i * 100, i * 100 + n)
            obs = np.repeat(base[:, None], 4, axis=1)
            buf.add_batch(obs, base, base.astype(float), obs + 1, base % 7 == 0, task_id=i % 3)
            if i % 5 == 0:
                buf.add(obs[0], int(base[0]), float(base[0]), obs[0] + 1, False, task_id=0)

    def sampler(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            b = buf.sample(64, rng)
            if not (np.all(b.obs == b.obs[:, :1]) and np.all(b.next_obs == b.obs + 1)
                    and np.all(b.action == b.obs[:, 0]) and np.all(b.reward == b.obs[:, 0])):
                raise AssertionError("torn transition in a sampled batch")
            if len(buf) > 50:
                s = buf.sample_sequences(8, 2, rng)
                if not np.all(s.episode_id[:, 0] == s.episode_id[:, 1]):
                    raise AssertionError("sequence crossed an episode")

    threads = [_thread(errors, writer, then=stop)] + [_thread(errors, sampler, s) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert buf.n_added > 3000


def test_single_adds_racing_batches_and_samples(backend):
    """Single adds (the compiled add skips the lock while nobody holds it) race add_batch calls
    large enough to copy without the GIL, and task-restricted sampling: no row is torn, every
    task ring lists exactly its task's slots, and no transition is lost from the counts."""
    buf = ReplayBuffer(50_003)
    stop = threading.Event()
    errors = []
    # batches of 20k rows copy for ~0.2 ms without the GIL; single adds go on until they end
    n_batches, batch = 40, 20_011
    n_single = [0]
    batches_done = threading.Event()

    def singles():
        i = n_single[0]
        while not batches_done.is_set():
            buf.add(i, i % 4, float(i), i + 1, i % 50 == 49, task_id=0, logp=-1.0)
            i = n_single[0] = i + 1

    def batches():
        for j in range(n_batches):
            obs = np.arange(10 ** 6 + j * batch, 10 ** 6 + (j + 1) * batch)
            buf.add_batch(obs, obs % 4, obs.astype(float), obs + 1, obs % 100 == 0,
                          task_id=1 + j % 2, logp=np.full(batch, -2.0))

    def sampler():
        rng = np.random.default_rng(5)
        while not stop.is_set():
            if len(buf) == 0:
                continue
            for k in (0, 1):
                try:
                    b = buf.sample(64, rng, task_id=k)
                except ValueError as err:  # all of task k overwritten meanwhile: fine
                    if "no transitions of task" not in str(err):
                        raise
                    continue
                if not (np.all(b.task_id == k) and np.all(b.next_obs == b.obs + 1)
                        and np.all(b.reward == b.obs) and np.all(b.action == b.obs % 4)):
                    raise AssertionError(f"torn or misfiled row for task {k}")

    workers = [_thread(errors, singles), _thread(errors, batches, then=batches_done)]
    watcher = _thread(errors, sampler)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many more thread switches
    try:
        for t in workers + [watcher]:
            t.start()
        for t in workers:
            t.join(timeout=120)
        stop.set()
        watcher.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert buf.n_added == n_single[0] + n_batches * batch and len(buf) == buf.capacity
    np.testing.assert_array_equal(buf.next_obs, buf.obs + 1)
    np.testing.assert_array_equal(buf.reward, buf.obs)
    counts = 0
    for k in range(3):
        slots = np.sort(buf._tasks.slots(k))
        np.testing.assert_array_equal(slots, np.flatnonzero(buf.task_id == k))
        counts += len(slots)
    assert counts == len(buf)


CIMPORT_EXAMPLE = """
# distutils: language = c
from libc.stdint cimport int64_t
from numpy.random cimport bitgen_t
from metarl_fast._core.rng cimport bitgen_of
from metarl_fast._core.replay cimport uniform_indices, gather_rows
import numpy as np

def draw_and_gather(double[::1] column, int64_t n, rng):
    cdef int64_t size = column.shape[0]
    idx = np.empty(n, dtype=np.int64)
    out = np.empty(n)
    cdef int64_t[::1] i = idx
    cdef double[::1] o = out
    cdef bitgen_t* bitgen = bitgen_of(rng.bit_generator)
    with rng.bit_generator.lock, nogil:
        uniform_indices(bitgen, size, n, &i[0])
        gather_rows(<const char*> &column[0], 8, 8, &i[0], n, <char*> &o[0])
    return idx, out
"""


CIMPORT_CHECK = '''
        import numpy as np, downstream_replay
        from metarl_fast.reference import replay as ref
        column = np.arange(100, dtype=float) * 0.5
        idx, out = downstream_replay.draw_and_gather(column, 50, np.random.default_rng(3))
        assert (idx == ref.sample_indices(100, 50, np.random.default_rng(3))).all()
        assert (out == column[idx]).all()
        print("ok")
'''


def test_downstream_cython_can_cimport_replay_kernels(tmp_path):
    """The nogil replay kernels are reachable from other Cython code through replay.pxd."""
    from conftest import HAVE_CYTHON
    from downstream import build_and_check

    if not HAVE_CYTHON:
        pytest.skip("compiled extension not used in this run")
    build_and_check(tmp_path, "downstream_replay", CIMPORT_EXAMPLE, CIMPORT_CHECK)


def test_rollouts_fill_episodes_and_windows(backend):
    """Trajectories from the fused rollout land as whole episodes: one buffer episode id per
    rollout episode, and sampled windows lie inside one rollout episode."""
    rollout_mod = pytest.importorskip("metarl_fast.rollout")
    tasks = pytest.importorskip("metarl_fast.tasks")
    from metarl_fast.policy import TabularSoftmaxPolicy

    batch = tasks.TabularMDPs().sample(3, 0)
    buf = ReplayBuffer(10_000)
    traj = rollout_mod.rollout(TabularSoftmaxPolicy(10, 5), batch, 6, 2, buffer=buf)
    n = traj.n_steps
    got = stored_in_time_order(buf)
    episode_of_step = np.repeat(np.arange(traj.episode_length.size), traj.episode_length.reshape(-1))
    np.testing.assert_array_equal(got.episode_id, episode_of_step)
    np.testing.assert_array_equal(got.obs, traj.obs)
    np.testing.assert_array_equal(got.logp, traj.logp)
    length = int(traj.episode_length.min())
    win = buf.sample_sequences(200, length, np.random.default_rng(0))
    assert np.all(win.episode_id == win.episode_id[:, :1])
    np.testing.assert_array_equal(win.obs[:, 1:], win.next_obs[:, :-1])  # consecutive steps
    assert len(buf) == n


def test_prioritized_concurrent_add_sample_update(backend):
    """A writer thread adds while another samples and updates priorities: no errors, and the
    sum tree still equals its leaves afterwards."""
    buf = PrioritizedReplayBuffer(300, alpha=0.7)
    buf.add_batch(**tabular_batch(50))
    stop = threading.Event()
    errors = []

    def writer():
        for i in range(400):
            buf.add_batch(**tabular_batch(1 + i % 9, start=100 + i))

    def learner():
        rng = np.random.default_rng(0)
        while not stop.is_set():
            batch = buf.sample(32, rng, beta=0.5)
            if not (np.all(batch.weights > 0) and np.all(batch.weights <= 1)):
                raise AssertionError("importance weights outside (0, 1]")
            buf.update_priorities(batch.indices, rng.random(32) * 5)

    threads = [_thread(errors, writer, then=stop), _thread(errors, learner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    leaves = buf.priorities()
    np.testing.assert_allclose(buf.total_priority, leaves.sum(), rtol=1e-9)
    assert np.all(leaves[:len(buf)] > 0)


# ---------------------------------------------------------------------------------------------
# The compiled single-transition path (ReplayBuffer.add bound to _core.replay.CompiledBuffer.add)
# ---------------------------------------------------------------------------------------------

def assert_same_contents(a, b, n_tasks):
    """Two buffers hold the same transitions, write position, counters and per-task rings."""
    for field in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id",
                  "episode_id", "logp"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert (a.write_position, len(a), a.next_episode_id, a.n_added) == \
        (b.write_position, len(b), b.next_episode_id, b.n_added)
    for k in range(n_tasks):
        assert a.task_count(k) == b.task_count(k)
        np.testing.assert_array_equal(a._tasks.slots(k), b._tasks.slots(k))


def test_single_adds_equal_one_batch_across_table_growth(backend):
    """Many tasks (the task table grows past its first 8 rows) and long runs (rings grow past 64
    entries), wrapping twice: one add at a time must store exactly what add_batch stores."""
    rng = np.random.default_rng(7)
    n, capacity = 900, 377
    obs = rng.integers(0, 50, n)
    task = np.concatenate([np.full(200, 3), rng.integers(0, 40, n - 200)]).astype(np.int32)
    done = rng.random(n) < 0.05
    truncated = rng.random(n) < 0.02
    reward = rng.normal(size=n)
    logp = -rng.random(n)
    one, batch = ReplayBuffer(capacity), ReplayBuffer(capacity)
    for i in range(n):
        one.add(int(obs[i]), int(obs[i] % 4), float(reward[i]), int(obs[i] + 1), bool(done[i]),
                truncated=bool(truncated[i]), task_id=int(task[i]), logp=float(logp[i]))
    batch.add_batch(obs, obs % 4, reward, obs + 1, done, truncated=truncated, task_id=task, logp=logp)
    assert_same_contents(one, batch, n_tasks=41)
    np.testing.assert_array_equal(one.sample_indices(64, np.random.default_rng(1), task_id=3),
                                  batch.sample_indices(64, np.random.default_rng(1), task_id=3))


def test_add_is_compiled_only_where_it_can_be(backend):
    buf, pbuf = ReplayBuffer(4), PrioritizedReplayBuffer(4)
    compiled = backend == "cython"
    for method in ("add", "add_batch", "sample"):
        bound = type(getattr(getattr(buf, method), "__self__", None)).__name__ == "CompiledBuffer"
        assert bound == compiled, method
        # the prioritized buffer keeps its own methods (they maintain the priorities)
        assert method not in vars(pbuf)
    assert (type(buf._lock).__name__ == "BufferLock") == compiled
    # the compiled add shows the Python method's signature (help(), inspect, IDEs)
    assert inspect.signature(buf.add) == inspect.signature(ReplayBuffer.add).replace(
        parameters=list(inspect.signature(ReplayBuffer.add).parameters.values())[1:])
    buf.add(1, 0, 1.0, 2, False)
    pbuf.add(1, 0, 1.0, 2, False)
    assert len(buf) == len(pbuf) == 1


def test_buffer_lock_semantics():
    pytest.importorskip("metarl_fast._core.replay")
    from metarl_fast._core.replay import BufferLock

    lock = BufferLock()
    assert not lock.locked()
    assert lock.acquire() is True and lock.locked()
    assert lock.acquire(blocking=False) is False  # not reentrant
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(KeyError, match="x"):
        with lock:
            raise KeyError("x")
    assert not lock.locked()

    # a waiter blocks (without the GIL) until the holder releases
    order = []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), order.append("waiter"), lock.release()))
    waiter.start()
    waiter.join(0.2)
    order.append("holder")
    lock.release()
    waiter.join(5)
    assert order == ["holder", "waiter"] and not lock.locked()


def test_add_waits_for_a_held_buffer_lock(backend):
    buf = ReplayBuffer(8)
    buf._lock.acquire()
    writer = threading.Thread(target=buf.add, args=(1, 0, 1.0, 2, False))
    writer.start()
    writer.join(0.2)
    assert len(buf) == 0  # still waiting
    buf._lock.release()
    writer.join(5)
    assert len(buf) == 1


@pytest.mark.parametrize("capacity", [1, 5, 64, 301])
def test_one_task_batches_equal_single_adds(backend, capacity):
    """add_batch with one scalar task_id per call (its specialised path): chunks of random
    length and task, wrapping the ring many times, store exactly what single adds store."""
    rng = np.random.default_rng(capacity)
    batch, one = ReplayBuffer(capacity), ReplayBuffer(capacity)
    step = 0
    for _ in range(60):
        n = int(rng.integers(0, capacity + 1))
        task = int(rng.integers(0, 11))
        obs = np.arange(step, step + n, dtype=np.int64)
        done = rng.random(n) < 0.1
        truncated = rng.random(n) < 0.05
        logp = -rng.random(n)
        batch.add_batch(obs, obs % 3, obs * 0.25, obs + 1, done, truncated=truncated,
                        task_id=task, logp=logp)
        for i in range(n):
            one.add(int(obs[i]), int(obs[i] % 3), float(obs[i] * 0.25), int(obs[i] + 1),
                    bool(done[i]), truncated=bool(truncated[i]), task_id=task, logp=float(logp[i]))
        if rng.random() < 0.2:
            batch.end_episode()
            one.end_episode()
        step += n
        assert_same_contents(batch, one, n_tasks=11)


def test_single_adds_follow_task_tables_grown_or_cleared_elsewhere(backend):
    """add_batch with new, larger task ids replaces the task table, and clear() empties it,
    between single adds: the adds must follow (the compiled add caches the table)."""
    rng = np.random.default_rng(5)
    mixed, batched = ReplayBuffer(97), ReplayBuffer(97)
    step = 0
    for round_ in range(40):
        if round_ == 25:
            mixed.clear()
            batched.clear()
        n = int(rng.integers(1, 30))
        obs = np.arange(step, step + n, dtype=np.int64)
        task = rng.integers(0, 8 * (round_ + 1), n).astype(np.int32)  # ids keep growing
        if round_ % 2:
            mixed.add_batch(obs, obs % 3, obs * 1.0, obs + 1, obs % 9 == 0, task_id=task)
        else:
            for i in range(n):
                mixed.add(int(obs[i]), int(obs[i] % 3), float(obs[i]), int(obs[i] + 1),
                          bool(obs[i] % 9 == 0), task_id=int(task[i]))
        batched.add_batch(obs, obs % 3, obs * 1.0, obs + 1, obs % 9 == 0, task_id=task)
        step += n
        assert_same_contents(mixed, batched, n_tasks=8 * (round_ + 1))


def test_large_one_task_batches_equal_the_reference():
    """Rings of at least 8 MiB get one-task batches of >= 256 rows written with streaming
    stores, and overwritten slots popped from their task's ring without reading the record:
    the storage, counters and task rings must equal the NumPy reference's, call after call,
    across wraps, task switches, episode ends and truncations."""
    import metarl_fast as mf

    pytest.importorskip("metarl_fast._core.replay")
    capacity = 150_001  # 56-byte records: 8.4 MB
    rng = np.random.default_rng(11)
    bufs = {}
    for backend in ("cython", "numpy"):
        with mf.use_backend(backend):
            bufs[backend] = ReplayBuffer(capacity)
    step = 0
    for call in range(30):
        n = int(rng.integers(256, 40_000)) if call % 7 else int(rng.integers(1, 256))
        obs = np.arange(step, step + n, dtype=np.int64)
        done = rng.random(n) < 0.01
        truncated = rng.random(n) < 0.005
        logp = -rng.random(n) if call % 2 else float(-rng.random())
        task = int(rng.integers(0, 6)) if call % 5 else rng.integers(0, 6, n).astype(np.int32)
        for backend, buf in bufs.items():
            with mf.use_backend(backend):
                buf.add_batch(obs, obs % 5, obs * 0.5, obs + 1, done, truncated=truncated,
                              task_id=task, logp=logp)
        step += n
        if call % 6 == 5:
            assert_same_contents(bufs["cython"], bufs["numpy"], n_tasks=6)
    assert step > 2 * capacity
    assert_same_contents(bufs["cython"], bufs["numpy"], n_tasks=6)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for k in range(6):
        a = bufs["cython"].sample(64, rng_a, task_id=k)
        with mf.use_backend("numpy"):
            b = bufs["numpy"].sample(64, rng_b, task_id=k)
        assert np.all(a.task_id == k)
        for field in Batch._fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
