"""Issue 14 (one consistent Python API): one name per concept -- ``terminated``/``truncated``
wherever a transition is stored or returned (``done`` is only the derived "episode ended here",
``terminated | truncated``) -- and int64 task ids in every array the API returns."""
import inspect

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import io
from metarl_fast.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer


def _filled(cls, n=40):
    buf = cls(64)
    obs = np.arange(n)
    buf.add_batch(obs, obs % 3, obs * 0.5, obs + 1, obs % 10 == 9, truncated=False, task_id=obs // 10 % 4 + 1000)
    return buf


def test_replay_names_the_flags_terminated_and_truncated():
    assert "terminated" in Batch._fields and "done" not in Batch._fields
    for method in ("add", "add_batch"):
        params = list(inspect.signature(getattr(ReplayBuffer, method)).parameters)
        assert params[5:7] == ["terminated", "truncated"], params
    buf = ReplayBuffer(4)
    buf.add(0, 1, 0.5, 1, terminated=True)
    assert bool(buf.terminated[0])
    with pytest.raises(TypeError, match="terminated"):
        buf.add(0, 1, 0.5, 1, terminated="yes")


@pytest.mark.parametrize("cls", [ReplayBuffer, PrioritizedReplayBuffer])
def test_every_batch_returns_int64_task_ids(backend, cls):
    buf = _filled(cls)
    rng = np.random.default_rng(0)
    batches = [buf.sample(5, rng), buf.sample(3000, rng), buf.sample_sequences(2, 3, rng), buf.gather([0, 5])]
    if cls is ReplayBuffer:
        batches.append(buf.sample(4, rng, task_id=1001))
    for batch in batches:
        assert batch.task_id.dtype == np.int64
        np.testing.assert_array_equal(batch.task_id, batch.obs // 10 % 4 + 1000)
    traj = mf.rollout(mf.TabularSoftmaxPolicy(4, 2), mf.Chain().sample(2, 0), 3, rng)
    assert traj.task_id.dtype == np.int64
    np.testing.assert_array_equal(traj.done, traj.terminated | traj.truncated)


def test_replay_files_that_name_the_flag_done_still_load(tmp_path):
    buf = _filled(ReplayBuffer)
    buf.save(tmp_path / "new.npz")
    arrays, version = io.load_npz(tmp_path / "new.npz", kind="ReplayBuffer", versions={1})
    arrays["done"] = arrays.pop("terminated")
    io.save_npz(tmp_path / "old.npz", arrays, kind="ReplayBuffer", version=version)
    old = ReplayBuffer.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(old.terminated, buf.terminated)
    assert len(old) == len(buf)
