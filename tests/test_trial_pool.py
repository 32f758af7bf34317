"""Replay for the in-context learners (metarl_fast.pool.TrialPool): the trial kernels' step records,
the importance-sampled trial gradient against exact gradients, the pool's bookkeeping, and
``train --algo in-context --replay`` with resume."""
import dataclasses
import itertools
import json

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import incontext, incontext_mdp
from metarl_fast.incontext import (N_FEATURES, baselined_gradient, fresh_trial_terms,
                                   replayed_trial_terms, trial_log_probs)
from metarl_fast.pool import ReplayConfig, TrialPool

from conftest import HAVE_CYTHON, needs_cython
from test_incontext_mdp import exact_expected_total


def _bandit_record(weights, arm_means, n_pulls, seed):
    T, A = arm_means.shape
    features = np.empty((T, n_pulls, A, N_FEATURES))
    actions = np.empty((T, n_pulls), dtype=np.int64)
    rewards = np.empty((T, n_pulls))
    totals = incontext.run_trials(weights, arm_means, n_pulls, np.random.default_rng(seed), actions,
                                  features, rewards)
    return totals, features, actions, rewards


def _mdp_record(weights, tasks, N, seed):
    T, H, A = tasks.n_tasks, tasks.horizon, tasks.n_actions
    features = np.full((T, N, H, A, N_FEATURES), 7.0)  # (every entry written by the kernel)
    actions = np.empty((T, N, H), dtype=np.int64)
    rewards = np.full((T, N, H), 7.0)
    returns = incontext_mdp.run_trials(weights, tasks, N, np.random.default_rng(seed), actions,
                                       features, rewards)
    return (returns.sum(axis=1), features.reshape(T, N * H, A, N_FEATURES), actions.reshape(T, -1),
            rewards.reshape(T, -1))


# -- the kernels' records --------------------------------------------------------------------------

def test_recorded_bandit_trials_reproduce_the_kernels_sums(backend):
    """What the records say the policy saw gives back the kernel's totals and REINFORCE gradient
    (same seed), and records change nothing the kernel draws."""
    rng = np.random.default_rng(0)
    w, arm_means = rng.normal(size=N_FEATURES), rng.random((400, 4))
    totals, features, actions, rewards = _bandit_record(w, arm_means, 7, seed=3)
    np.testing.assert_array_equal(totals, incontext.run_trials(w, arm_means, 7, np.random.default_rng(3)))
    np.testing.assert_array_equal(rewards.sum(axis=1), totals)
    _, weighted, score_sums, reward_sums = incontext.reinforce_trials(w, arm_means, 7, np.random.default_rng(3))
    _, score = trial_log_probs(w, features, actions)
    terms, _ = fresh_trial_terms(score, rewards)
    np.testing.assert_allclose(terms / 400, baselined_gradient(weighted, score_sums, reward_sums, 400),
                               rtol=1e-10, atol=1e-13)
    # the recorded features are the kernel's own: bandit_features of the counts before each pull
    s = np.zeros((400, 4), dtype=np.int64)
    f = np.zeros((400, 4), dtype=np.int64)
    rows = np.arange(400)
    for t in range(7):
        np.testing.assert_array_equal(features[:, t], incontext.bandit_features(s, f, 7 - t, 7))
        s[rows, actions[:, t]] += rewards[:, t].astype(np.int64)
        f[rows, actions[:, t]] += 1 - rewards[:, t].astype(np.int64)


@pytest.mark.parametrize("family", ["gridnav", "tabular-mdp"])
def test_recorded_mdp_trials_reproduce_the_kernels_sums(backend, family):
    tasks = (mf.GridNavigation(size=3) if family == "gridnav"
             else mf.TabularMDPs(n_states=4, n_actions=3, horizon=5)).sample(150, 0)
    w = np.random.default_rng(1).normal(size=N_FEATURES)
    totals, features, actions, rewards = _mdp_record(w, tasks, 3, seed=4)
    returns = incontext_mdp.run_trials(w, tasks, 3, np.random.default_rng(4))
    np.testing.assert_array_equal(totals, returns.sum(axis=1))
    np.testing.assert_allclose(rewards.sum(axis=1), totals, rtol=1e-12, atol=1e-12)
    ended = actions < 0  # steps after an episode ended: zero features and reward
    assert not np.any(features[ended]) and not np.any(rewards[ended])
    if family == "gridnav":
        assert ended.any()
    _, weighted, score_sums, reward_sums = incontext_mdp.reinforce_trials(w, tasks, 3, np.random.default_rng(4))
    _, score = trial_log_probs(w, features, actions)
    terms, _ = fresh_trial_terms(score, rewards)
    np.testing.assert_allclose(terms / 150, baselined_gradient(weighted, score_sums, reward_sums, 150),
                               rtol=1e-9, atol=1e-12)


@needs_cython
def test_twins_record_the_same_steps():
    from metarl_fast._core import incontext as core_bandit
    from metarl_fast._core import incontext_mdp as core_mdp
    from metarl_fast.reference import incontext as ref_bandit
    from metarl_fast.reference import incontext_mdp as ref_mdp

    rng = np.random.default_rng(2)
    w, arm_means = rng.normal(size=N_FEATURES), rng.random((60, 3))
    records = []
    for mod in (ref_bandit, core_bandit):
        f, r, a = np.empty((60, 5, 3, N_FEATURES)), np.empty((60, 5)), np.empty((60, 5), np.int64)
        mod.run_trials(w, arm_means, 5, np.random.default_rng(9), a, f, r)
        records.append((f, r, a))
    for x, y in zip(*records):
        np.testing.assert_array_equal(x, y)
    tasks = mf.GridNavigation(size=3).sample(40, 1)
    H, A = tasks.horizon, tasks.n_actions
    records = []
    for mod in (ref_mdp, core_mdp):
        f, r, a = np.full((40, 2, H, A, N_FEATURES), 7.0), np.full((40, 2, H), 7.0), np.empty((40, 2, H), np.int64)
        mod.run_trials(w, tasks.tables, 2, np.random.default_rng(9), a, f, r)
        records.append((f, r, a))
    for x, y in zip(*records):
        np.testing.assert_array_equal(x, y)


def test_bad_records_are_named(backend):
    w, arm_means = np.zeros(N_FEATURES), np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="features_out"):
        incontext.run_trials(w, arm_means, 4, np.random.default_rng(0), features_out=np.empty((3, 4, 2, 7)))
    with pytest.raises(TypeError, match="rewards_out"):
        incontext.run_trials(w, arm_means, 4, np.random.default_rng(0), rewards_out=np.empty((3, 4), np.float32))
    tasks = mf.GridNavigation(size=3).sample(2, 0)
    with pytest.raises(ValueError, match="features_out"):
        incontext_mdp.run_trials(w, tasks, 2, np.random.default_rng(0),
                                 features_out=np.empty((2, 2, tasks.horizon, 4, N_FEATURES)))
    with pytest.raises(ValueError, match="rewards_out"):
        incontext_mdp.run_trials(w, tasks, 2, np.random.default_rng(0), rewards_out=np.empty((2, 2)))


# -- the replayed trial gradient against exact gradients ----------------------------------------------

def _bandit_exact(w, means, n_pulls):
    """E[total reward] of one trial on arms ``means`` and its gradient in ``w``, by enumerating
    every (arm, reward) sequence (the policy is softmax(bandit_features @ w))."""
    A = means.shape[0]
    value, grad = 0.0, np.zeros(N_FEATURES)
    for history in itertools.product(range(A), (0, 1), repeat=n_pulls):
        s, f = np.zeros((1, A), dtype=np.int64), np.zeros((1, A), dtype=np.int64)
        prob, total, score = 1.0, 0.0, np.zeros(N_FEATURES)
        for t in range(n_pulls):
            a, r = history[2 * t], history[2 * t + 1]
            phi = incontext.bandit_features(s, f, n_pulls - t, n_pulls)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            prob *= pi[a] * (means[a] if r else 1.0 - means[a])
            score += phi[a] - pi @ phi
            s[0, a] += r
            f[0, a] += 1 - r
            total += r
        value += prob * total
        grad += prob * total * score
    return value, grad


def _replayed_estimates(record, w, w_mu, n_trials, rho_bar, seed):
    """Per stored trial of mu: its importance-sampled term at w (a baseline from other trials)."""
    totals, features, actions, rewards = record(w_mu, n_trials, seed)
    logp_mu, _ = trial_log_probs(w_mu, features, actions)
    _, _, _, baseline_rewards = record(w, 2000, seed + 1)
    baseline = np.cumsum(baseline_rewards[:, ::-1], axis=1)[:, ::-1].mean(axis=0)
    terms = np.empty((n_trials, N_FEATURES))
    for i in range(n_trials):  # one trial at a time: each term is one replication
        one = (features[i:i + 1], actions[i:i + 1], rewards[i:i + 1], logp_mu[i:i + 1])
        terms[i], _ = replayed_trial_terms(w, one, baseline, rho_bar)
    return terms


def _z(estimates, exact):
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(estimates.shape[0])
    return (mean - exact) / se


W = np.array([1.0, -0.5, 0.3, 0.7, 0.5, -0.4, 0.6, 0.2])
W_MU = np.array([0.2, 0.4, -0.6, 0.1, -0.3, 0.5, 0.0, -0.7])


@pytest.mark.parametrize("bandits", [True, False], ids=["bandit", "mdp"])
def test_untruncated_replayed_trials_are_unbiased(backend, bandits):
    """Trials of mu's weights scored at w: each term's mean is the exact gradient at w
    (40 000 replicated trials, every component within 4.5 standard errors)."""
    if bandits:
        means = np.array([0.2, 0.7])
        _, exact = _bandit_exact(W, means, 3)

        def record(w, n, seed):
            return _bandit_record(w, np.tile(means, (n, 1)), 3, seed)
    else:
        from test_incontext_mdp import TaskBatch

        P = np.zeros((1, 2, 2, 2))
        P[0, :, 0, 0] = P[0, :, 1, 1] = 1.0
        task = TaskBatch(P, np.array([[[0.2, 0.6], [0.9, 0.1]]]), 2, reward_noise="bernoulli")
        _, exact = exact_expected_total(W, task, 2)

        def record(w, n, seed):
            return _mdp_record(w, task[np.zeros(n, dtype=np.int64)], 2, seed)
    estimates = _replayed_estimates(record, W, W_MU, 40_000, None, seed=5)
    z = _z(estimates, exact)
    assert np.all(np.abs(z) < 4.5), (z, estimates.mean(axis=0), exact)
    # truncating each ratio at 1 is measurably biased here (the documented trade)
    truncated = _replayed_estimates(record, W, W_MU, 40_000, 1.0, seed=5)
    assert np.max(np.abs(_z(truncated, exact))) > 6
    assert np.all(truncated.std(axis=0) < estimates.std(axis=0))


def test_overflowing_ratio_products_raise():
    totals, features, actions, rewards = _bandit_record(W, np.full((5, 3), 0.5), 6, 0)
    logp = trial_log_probs(W, features, actions)[0] - 400.0  # mu said e^-400 for every step
    with pytest.raises(FloatingPointError, match="truncate them with rho_bar"):
        replayed_trial_terms(W, (features, actions, rewards, logp), np.zeros(6))
    terms, _ = replayed_trial_terms(W, (features, actions, rewards, logp), np.zeros(6), rho_bar=2.0)
    assert np.all(np.isfinite(terms))


# -- the pool -------------------------------------------------------------------------------------

def test_trial_pool_replays_earlier_iterations_in_order_and_forgets_overwritten_trials():
    K, A = 4, 3
    pool = TrialPool(ReplayConfig(capacity=10 * K, episodes=3, order="sequences"), K, A, N_FEATURES)
    rng = np.random.default_rng(0)

    def trials(first, n):  # trial j's rewards all equal j: identifiable after replay
        ids = first + np.arange(n, dtype=np.float64)
        features = np.broadcast_to(ids[:, None, None, None], (n, K, A, N_FEATURES)).copy()
        return features, np.zeros((n, K), dtype=np.int64), np.repeat(ids[:, None], K, axis=1), np.zeros((n, K))

    pool.store(*trials(0, 4))
    assert pool.replay(rng) is None  # stored in this iteration: not yet
    pool.end_iteration()
    features, actions, rewards, logp = pool.replay(rng)
    assert features.shape == (3, K, A, N_FEATURES) and rewards.shape == (3, K)
    firsts = rewards[:, 0]
    assert np.all(np.diff(firsts) == 1) and np.all(rewards == firsts[:, None])  # consecutive trials
    np.testing.assert_array_equal(features[:, :, 0, 0], rewards)
    pool.store(*trials(4, 8))  # the ring holds 10 trials: trials 0 and 1 are overwritten
    assert pool.n_trials == 10
    pool.end_iteration()
    seen = set()
    for _ in range(20):
        seen.update(pool.replay(rng)[2][:, 0].tolist())
    assert seen == set(range(2, 12))
    with pytest.raises(ValueError, match="cannot hold one trial"):
        TrialPool(ReplayConfig(capacity=3), 4, 2, N_FEATURES)
    with pytest.raises(ValueError, match="whole trials"):
        TrialPool(ReplayConfig(order="windows"), 4, 2, N_FEATURES)


# -- through the trainer ----------------------------------------------------------------------------

@pytest.mark.parametrize("tasks", ["bandits", "tabular-mdp"])
def test_in_context_training_with_replay_resumes_bit_identically(tmp_path, tasks):
    from metarl_fast.cli import main
    from metarl_fast.trainer import MetaTrainer

    base = ["train", "--tasks", tasks, "--algo", "in-context", "--meta-batch", "100",
            "--iterations", "6", "--eval-every", "3", "--eval-tasks", "200", "--checkpoint-every", "3",
            "--replay", "--replay-batch", "50", "--replay-capacity", "20000", "--replay-ratio", "2",
            "--rho-bar", "2"]
    assert main(base + ["--out", str(tmp_path / "full")]) == 0
    assert main(base[:8] + ["3"] + base[9:] + ["--out", str(tmp_path / "part")]) == 0
    config, arrays = MetaTrainer.read_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    assert config.replay and "learner_trialpool_trials" in arrays
    MetaTrainer(dataclasses.replace(config, iterations=6), str(tmp_path / "part")).run(resume=True)
    full = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
    part = [json.loads(x) for x in open(tmp_path / "part" / "metrics.jsonl")]
    assert full == part
    assert full[0]["replayed_episodes"] == 50  # the ratio's second update, from the first trials
    assert full[-1]["replayed_episodes"] == 100 and full[-1]["pool_trials"] > 0
    assert full[-1]["fraction_truncated"] is not None and 0 < full[-1]["mean_importance_weight"] < 10


def test_in_context_replay_options_are_checked():
    from metarl_fast.trainer import TrainConfig

    with pytest.raises(ValueError, match="whole trials"):
        TrainConfig(tasks="bandits", algo="in-context", replay=True, replay_order="windows").validate()
    TrainConfig(tasks="bandits", algo="in-context", replay=True, replay_order="sequences").validate()
