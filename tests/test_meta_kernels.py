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
        coef = np.empty(n)
        mod.pg_prepare(key, traj.reward.astype(np.float64), traj.done, traj.step_in_episode,
                       traj.task_id, n_tasks, gamma, n_episodes, baseline, coef)
        g = np.empty_like(probs_table)
        mod.score_table(key, traj.action, probs_table, coef, g)
        dl = np.random.default_rng(seed + 1).standard_normal(probs_table.shape)
        h = np.empty_like(probs_table)
        mod.hvp_table(key, traj.action, probs_table, coef, episode, n_tasks, n_episodes, dl, h)
        outs[name] = (coef, g, h)
    for a, b in zip(outs["core"], outs["ref"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@needs_cython
def test_kernels_reject_inconsistent_input():
    from metarl_fast._core import meta as core

    rng = np.random.default_rng(0)
    traj, probs_table, key, episode = random_batch(rng, 2, 3, 2, 3, 4)
    n = traj.n_steps
    coef = np.empty(n)
    with pytest.raises(ValueError, match="same length"):
        core.pg_prepare(key[:-1], traj.reward, traj.done, traj.step_in_episode, traj.task_id, 2, 1.0,
                        3, 1, coef)
    with pytest.raises(ValueError, match="baseline must be"):
        core.pg_prepare(key, traj.reward, traj.done, traj.step_in_episode, traj.task_id, 2, 1.0, 3, 7,
                        coef)
    core.pg_prepare(key, traj.reward, traj.done, traj.step_in_episode, traj.task_id, 2, 1.0, 3, 1, coef)
    g = np.empty_like(probs_table)
    with pytest.raises(ValueError, match="key out of range"):
        core.score_table(key + 100, traj.action, probs_table, coef, g)
    with pytest.raises(ValueError, match="actions out of range"):
        core.score_table(key, traj.action + 5, probs_table, coef, g)
    with pytest.raises(ValueError, match="same length"):
        core.score_table(key, traj.action[:-1], probs_table, coef, g)
    with pytest.raises(ValueError, match="same shape"):
        core.score_table(key, traj.action, probs_table[:-1], coef, g)
    with pytest.raises(ValueError, match="episode out of range"):
        core.hvp_table(key, traj.action, probs_table, coef, episode + 100, 2, 3, probs_table, g)
    with pytest.raises(ValueError, match="dl_table and table_out"):
        core.hvp_table(key, traj.action, probs_table, coef, episode, 2, 3, probs_table[:, :1].copy(), g)
    with pytest.raises(ValueError, match="dtype mismatch"):
        core.score_table(key, traj.action, probs_table.astype(np.float32), coef, g)


def naive_tables(key, actions, probs_table, coef, episode, n_tasks, n_episodes, dl_table):
    """The per-step formulas transcribed one step at a time (the specification the per-row kernels
    regroup): the score table and the Hessian-vector product table."""
    rows, A = probs_table.shape
    score, hvp = np.zeros((rows, A)), np.zeros((rows, A))
    fv = np.zeros(n_tasks * n_episodes)
    for i in range(key.shape[0]):
        p, dl = probs_table[key[i]], dl_table[key[i]]
        onehot = np.eye(A)[actions[i]]
        score[key[i]] += coef[i] * (onehot - p)
        hvp[key[i]] -= coef[i] * (p * dl - p * (p @ dl))  # -coef (diag p - p p^T) dl
        fv[episode[i]] += n_episodes * coef[i] * (dl[actions[i]] - p @ dl)
    kappa = fv.copy()
    for t in range(n_tasks):
        block = fv[t * n_episodes:(t + 1) * n_episodes]
        if n_episodes > 1:
            kappa[t * n_episodes:(t + 1) * n_episodes] = block - (block.sum() - block) / (n_episodes - 1)
    for i in range(key.shape[0]):
        hvp[key[i]] += kappa[episode[i]] / n_episodes * (np.eye(A)[actions[i]] - probs_table[key[i]])
    return score, hvp


@pytest.mark.parametrize("seed", range(6))
def test_per_row_tables_equal_the_per_step_formulas(backend, seed):
    """score_table and hvp_table group the steps by row; they must equal the per-step sums."""
    from metarl_fast._backend import active

    rng = np.random.default_rng(seed)
    n_tasks, n_states, n_actions, n_episodes = 3, 4, 3, 1 + seed % 4
    traj, probs_table, key, episode = random_batch(rng, n_tasks, n_states, n_actions, n_episodes, 5)
    coef = rng.standard_normal(traj.n_steps)
    dl = rng.standard_normal(probs_table.shape)
    want_score, want_hvp = naive_tables(key, traj.action, probs_table, coef, episode, n_tasks,
                                        n_episodes, dl)
    score, hvp = np.empty_like(probs_table), np.empty_like(probs_table)
    active.meta.score_table(key, traj.action, probs_table, coef, score)
    active.meta.hvp_table(key, traj.action, probs_table, coef, episode, n_tasks, n_episodes, dl, hvp)
    np.testing.assert_allclose(score, want_score, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(hvp, want_hvp, rtol=1e-12, atol=1e-13)
