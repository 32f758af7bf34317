"""The meta-learners' estimator kernels: Cython twin == NumPy reference, and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from metarl_fast.reference import meta as ref

from conftest import needs_cython


def random_batch(rng, n_tasks, n_states, n_actions, n_episodes, horizon):
    tasks = mf.TabularMDPs(n_states=n_states, n_actions=n_actions, horizon=horizon).sample(n_tasks, rng)
    logits = rng.standard_normal((n_tasks, n_states, n_actions))
    from metarl_fast.rollout import Trajectories, action_tables
    cdf, logp = action_tables(logits)
    with mf.use_backend("numpy"):
        from metarl_fast._backend import active
        traj = Trajectories(*active.envs.rollout(tasks.tables, cdf, logp, np.arange(n_tasks), n_episodes, rng))
    probs_table = mf.softmax(logits.reshape(-1, n_actions))
    key = traj.task_id * n_states + traj.obs
    episode = np.repeat(np.arange(traj.episode_length.size), traj.episode_length.reshape(-1))
    return traj, probs_table, key, episode


@needs_cython
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6),
       st.floats(0.0, 1.0), st.integers(0, 2**31), st.sampled_from([0, 1, 2]))
def test_twins_agree(n_tasks, n_states, n_actions, n_episodes, horizon, gamma, seed, baseline):
    from metarl_fast._core import meta as core

    rng = np.random.default_rng(seed)
    traj, probs_table, key, episode = random_batch(rng, n_tasks, n_states, n_actions, n_episodes, horizon)
    n = traj.n_steps
    outs = {}
    for name, mod in (("core", core), ("ref", ref)):
        probs, coef = np.empty((n, n_actions)), np.empty(n)
        mod.pg_prepare(probs_table, key, traj.action, traj.reward.astype(np.float64), traj.done,
                       traj.step_in_episode, traj.task_id, n_tasks, gamma, n_episodes, baseline, probs, coef)
        g = np.empty_like(probs_table)
        mod.score_table(key, traj.action, probs, coef, g)
        dl = np.random.default_rng(seed + 1).standard_normal(probs_table.shape)
        h = np.empty_like(probs_table)
        mod.hvp_table(key, traj.action, probs, coef, episode, n_tasks, n_episodes, dl, h)
        outs[name] = (probs, coef, g, h)
    for a, b in zip(outs["core"], outs["ref"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@needs_cython
def test_kernels_reject_inconsistent_input():
    from metarl_fast._core import meta as core

    rng = np.random.default_rng(0)
    traj, probs_table, key, episode = random_batch(rng, 2, 3, 2, 3, 4)
    n = traj.n_steps
    probs, coef = np.empty((n, 2)), np.empty(n)
    with pytest.raises(ValueError, match="key out of range"):
        core.pg_prepare(probs_table, key + 100, traj.action, traj.reward, traj.done, traj.step_in_episode,
                        traj.task_id, 2, 1.0, 3, 1, probs, coef)
    with pytest.raises(ValueError, match="same length"):
        core.pg_prepare(probs_table, key[:-1], traj.action, traj.reward, traj.done, traj.step_in_episode,
                        traj.task_id, 2, 1.0, 3, 1, probs, coef)
    with pytest.raises(ValueError, match="baseline must be"):
        core.pg_prepare(probs_table, key, traj.action, traj.reward, traj.done, traj.step_in_episode,
                        traj.task_id, 2, 1.0, 3, 7, probs, coef)
    g = np.empty_like(probs_table)
    with pytest.raises(ValueError, match="actions out of range"):
        core.score_table(key, traj.action + 5, probs, coef, g)
    with pytest.raises(ValueError, match="episode out of range"):
        core.hvp_table(key, traj.action, probs, coef, episode + 100, 2, 3, probs_table, g)
    with pytest.raises(ValueError, match="dtype mismatch"):
        core.score_table(key, traj.action, probs.astype(np.float32), coef, g)
