"""``episode_steps``: the episode number and time index of every flat step, both backends."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast._backend import active


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_episode_steps_by_definition(n_tasks, n_episodes, seed):
    lengths = np.random.default_rng(seed).integers(0, 5, (n_tasks, n_episodes)).astype(np.int64)
    want_episode, want_step = [], []
    for k, length in enumerate(lengths.reshape(-1)):
        for t in range(length):
            want_episode.append(k)
            want_step.append(t)
    import metarl_fast as mf
    for backend in mf.BACKENDS if mf.is_available("cython") else ["numpy"]:
        with mf.use_backend(backend):
            episode, step = active.envs.episode_steps(lengths)
        np.testing.assert_array_equal(episode, np.array(want_episode, dtype=np.int64))
        np.testing.assert_array_equal(step, np.array(want_step, dtype=np.int64))
        assert episode.dtype == step.dtype == np.int64


def test_trajectories_step_in_episode_uses_it(backend):
    import metarl_fast as mf

    batch = mf.GridNavigation(size=3).sample(2, 0)
    traj = mf.rollout(mf.TabularSoftmaxPolicy(9, 5), batch, 3, np.random.default_rng(1))
    steps = traj.step_in_episode
    for k in range(traj.episode_length.size):
        sl = slice(traj.episode_start[k], traj.episode_start[k + 1])
        np.testing.assert_array_equal(steps[sl], np.arange(sl.stop - sl.start))


def test_negative_lengths_are_refused(backend):
    with pytest.raises(ValueError, match="negative"):
        active.envs.episode_steps(np.array([[2, -1]], dtype=np.int64))
