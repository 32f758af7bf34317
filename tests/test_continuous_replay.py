"""Continuous trajectories in the replay buffer (issue 16): float observations stored as they are,
sampled per task, saved and loaded."""
import numpy as np

import metarl_fast as mf


def test_a_continuous_rollout_goes_into_the_buffer_and_comes_back(backend, tmp_path):
    batch = mf.CartPoles(horizon=30).sample(3, 0)
    policy = mf.MLPSoftmaxPolicy(4, 2, hidden=(8,), rng=0)
    traj = mf.rollout_mlp(batch, policy.params, 4, 1, hidden=(8,))
    buffer = mf.ReplayBuffer(10_000, obs_shape=(4,), obs_dtype=np.float64)
    buffer.add_batch(traj.obs, traj.action, traj.reward, traj.next_obs, traj.terminated,
                     truncated=traj.truncated, task_id=traj.task_id, logp=traj.logp)
    assert len(buffer) == traj.n_steps and buffer.task_count(2) == int((traj.task_id == 2).sum())
    sample = buffer.sample(64, np.random.default_rng(0), task_id=2)
    assert sample.obs.dtype == np.float64 and sample.obs.shape == (64, 4)
    rows = {tuple(o) + tuple(n) for o, n in zip(traj.obs[traj.task_id == 2], traj.next_obs[traj.task_id == 2])}
    assert all(tuple(o) + tuple(n) in rows for o, n in zip(sample.obs, sample.next_obs))  # bit for bit
    assert np.all(sample.task_id == 2)
    path = buffer.save(tmp_path / "buffer.npz")
    again = mf.ReplayBuffer.load(path)
    np.testing.assert_array_equal(again.sample(64, np.random.default_rng(0), task_id=2).obs, sample.obs)
