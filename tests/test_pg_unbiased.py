"""Unbiasedness of the default REINFORCE baselines with *small* batches.

A baseline computed from the batch (its mean return) includes each episode's own return, which
correlates it with that episode's actions: the estimate is then biased by O(1 / N) with N episodes
per batch, invisible in tests that use hundreds of episodes per batch.  These tests replicate
batches of N in {1, 2, 5} episodes (tabular REINFORCE) or trials (the in-context bandit) thousands
of times and compare the mean estimate with the exact gradient.
"""
import itertools

import numpy as np
import pytest

from metarl_fast import exact, pg
from metarl_fast.incontext import N_FEATURES, baselined_gradient, reinforce_trials
from metarl_fast.policy import TabularSoftmaxPolicy
from metarl_fast.reference import incontext as ref

SMALL_BATCHES = [1, 2, 5]


def _z_scores(estimates, truth):
    """|mean - truth| / standard error per component (0 where spread and error are both 0)."""
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    err = np.abs(mean - np.ravel(truth))
    return np.where(se > 0, err / np.maximum(se, 1e-300), np.where(err > 1e-12, np.inf, 0.0))


# --------------------------------------------------------------------------- tabular REINFORCE

# (mdp seed, S, A, horizon, gamma, terminal states): fixed-length and variable-length episodes
MDP_CASES = [(3, 3, 2, 3, 0.9, 0), (7, 3, 3, 4, 0.9, 1)]
N_REPLICATIONS = 3000


def _replicated_estimates(case, n_per_batch, **kwargs):
    seed, S, A, T, gamma, n_term = case
    mdp = exact.random_mdp(np.random.default_rng(seed), S, A, T, gamma, n_term)
    theta = np.random.default_rng(seed + 1).normal(size=(S, A))
    policy = TabularSoftmaxPolicy(S, A, theta=theta)
    ep = exact.sample_episodes(mdp, theta, n_per_batch * N_REPLICATIONS,
                               np.random.default_rng(seed + 10 * n_per_batch))
    bounds = np.searchsorted(ep.episode_ids, np.arange(0, n_per_batch * N_REPLICATIONS + 1,
                                                       n_per_batch))
    est = np.array([pg.reinforce_gradient(policy, ep.states[lo:hi], ep.actions[lo:hi],
                                          ep.rewards[lo:hi], ep.dones[lo:hi], gamma,
                                          discount_states=True, per_episode=True,
                                          **kwargs).grad.ravel()
                    for lo, hi in zip(bounds[:-1], bounds[1:])])
    return est, exact.policy_gradient_exact(mdp, theta)


@pytest.mark.parametrize("case", MDP_CASES)
@pytest.mark.parametrize("n_per_batch", SMALL_BATCHES)
def test_default_reinforce_baseline_is_unbiased_with_few_episodes_per_batch(backend, case,
                                                                            n_per_batch):
    est, truth = _replicated_estimates(case, n_per_batch)  # the default baseline
    z = _z_scores(est, truth)
    assert z.max() < 4.0, (z.max(), est.mean(axis=0), truth.ravel())
    assert np.abs(truth).max() > 10 * (est.std(axis=0, ddof=1).max() / np.sqrt(len(est)))
    # the same replications detect the bias of the batch-mean baseline (the test has the power)
    biased, _ = _replicated_estimates(case, n_per_batch, baseline="mean")
    assert _z_scores(biased, truth).max() > 4.0


def test_default_reinforce_baseline_with_one_episode_is_no_baseline(backend):
    mdp = exact.random_mdp(np.random.default_rng(1), 3, 2, 4, 0.9)
    theta = np.random.default_rng(2).normal(size=(3, 2))
    policy = TabularSoftmaxPolicy(3, 2, theta=theta)
    ep = exact.sample_episodes(mdp, theta, 1, np.random.default_rng(3))
    args = (policy, ep.states, ep.actions, ep.rewards, ep.dones, 0.9)
    res = pg.reinforce_gradient(*args, discount_states=True, per_episode=True)
    plain = pg.reinforce_gradient(*args, baseline=None, discount_states=True, per_episode=True)
    np.testing.assert_array_equal(res.advantages, pg.discounted_returns(ep.rewards, ep.dones, 0.9))
    np.testing.assert_array_equal(res.grad, plain.grad)
    assert np.abs(res.grad).max() > 1e-3


def test_one_step_episode_alone_gives_a_nonzero_gradient_but_the_mean_baseline_zero(backend):
    # N = T = 1: the batch mean of the returns is the return itself, so "mean" cancels everything
    mdp = exact.random_mdp(np.random.default_rng(4), 3, 3, 1, 0.9)
    theta = np.random.default_rng(5).normal(size=(3, 3))
    policy = TabularSoftmaxPolicy(3, 3, theta=theta)
    for seed in range(5):
        ep = exact.sample_episodes(mdp, theta, 1, np.random.default_rng(seed))
        args = (policy, ep.states, ep.actions, ep.rewards, ep.dones, 0.9)
        default = pg.reinforce_gradient(*args, discount_states=True, per_episode=True)
        assert np.abs(default.grad).max() > 1e-3 and default.grad_norm > 1e-3
        np.testing.assert_allclose(default.advantages, ep.rewards)
        mean = pg.reinforce_gradient(*args, baseline="mean", discount_states=True, per_episode=True)
        np.testing.assert_array_equal(mean.grad, 0.0)


def _brute_force_leave_one_out(returns, dones):
    """Loop transcription: episode e, step t -> mean of G at step t over the other episodes."""
    episodes, current = [], []
    for i, d in enumerate(dones):
        current.append(i)
        if d:
            episodes.append(current)
            current = []
    if current:
        episodes.append(current)  # an unfinished tail episode counts too
    b = np.zeros(len(returns))
    for e, steps in enumerate(episodes):
        for t, i in enumerate(steps):
            others = [returns[o[t]] for f, o in enumerate(episodes) if f != e and len(o) > t]
            b[i] = np.mean(others) if others else 0.0
    return b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_leave_one_out_baseline_matches_a_loop(backend, rng, dtype):
    policy = TabularSoftmaxPolicy(4, 3, theta=rng.normal(size=(4, 3)), dtype=dtype)
    for trial in range(20):
        n = int(rng.integers(1, 30))
        d = rng.random(n) < rng.uniform(0.05, 0.6)  # variable lengths, maybe an unfinished tail
        s, a, r = rng.integers(0, 4, n), rng.integers(0, 3, n), rng.normal(size=n)
        g = pg.discounted_returns(r.astype(dtype), d, 0.9)
        expected = _brute_force_leave_one_out(g.astype(np.float64), d)
        np.testing.assert_allclose(pg.leave_one_out_baseline(g, d), expected, rtol=1e-12,
                                   atol=1e-12)
        for baseline in ({}, {"baseline": "leave-one-out"}):
            res = pg.reinforce_gradient(policy, s, a, r, d, 0.9, **baseline)
            np.testing.assert_allclose(res.advantages, (g - expected).astype(dtype),
                                       rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
            assert res.advantages.dtype == dtype and res.grad.dtype == dtype
    assert pg.leave_one_out_baseline(np.zeros(0), np.zeros(0, bool)).shape == (0,)
    with pytest.raises(ValueError, match="baseline.*leave-one-out"):
        pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline="loo")


# --------------------------------------------------------------------------- in-context bandit

W_BANDIT = np.array([1.0, -0.5, 0.3, 2.0, 1.0, 0.5, -1.0, 0.2])
MEANS = np.array([0.2, 0.7])
N_PULLS = 3


def _exact_bandit_gradient(w, means, n):
    """d E[total reward] / d w on one task, enumerating every (arm, reward) history:
    sum_h P(h) total(h) sum_t score_t(h) with ``score = phi[a] - pi @ phi``."""
    k = len(means)
    grad = np.zeros(N_FEATURES)
    for history in itertools.product(range(k), (0, 1), repeat=n):
        s, f = np.zeros((1, k), int), np.zeros((1, k), int)
        prob, total, score = 1.0, 0, np.zeros(N_FEATURES)
        for t in range(n):
            a, r = history[2 * t], history[2 * t + 1]
            phi = ref.bandit_features(s, f, n - t, n)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            prob *= pi[a] * (means[a] if r else 1 - means[a])
            score += phi[a] - pi @ phi
            s[0, a] += r
            f[0, a] += 1 - r
            total += r
        grad += prob * total * score
    return grad


@pytest.mark.parametrize("n_tasks", SMALL_BATCHES)
def test_bandit_baselined_gradient_is_unbiased_for_small_batches(backend, n_tasks):
    truth = _exact_bandit_gradient(W_BANDIT, MEANS, N_PULLS)
    n_batches = 4000 if backend == "cython" else 2500  # the reference pays ~0.6 ms a call
    rng = np.random.default_rng(100 + n_tasks)
    arm_means = np.tile(MEANS, (n_tasks, 1))
    est = np.array([baselined_gradient(*reinforce_trials(W_BANDIT, arm_means, N_PULLS, rng)[1:],
                                       n_tasks) for _ in range(n_batches)])
    z = _z_scores(est, truth)
    assert z.max() < 4.0, (z.max(), est.mean(axis=0), truth)
    # the power to tell the batch-mean baseline, whose expectation is (1 - 1/n) truth
    se = est.std(axis=0, ddof=1) / np.sqrt(n_batches)
    assert (np.abs(truth) / n_tasks / np.maximum(se, 1e-300)).max() > 5.0


@pytest.mark.parametrize("n_tasks", SMALL_BATCHES)
def test_bandit_baselined_gradient_is_the_leave_one_out_estimate(backend, n_tasks):
    # one trial per call gives each trial's own sums; the batch's sums are their totals
    rng = np.random.default_rng(7)
    for _ in range(10):
        trials = [reinforce_trials(W_BANDIT, np.array([[0.3, 0.6, 0.5]]), 4, rng)
                  for _ in range(n_tasks)]
        W = [tr[1] for tr in trials]
        score = [tr[2] for tr in trials]                              # (T, F) per trial
        rtg = [np.cumsum(tr[3][::-1])[::-1] for tr in trials]         # G_i[t]
        expected = np.zeros(N_FEATURES)
        for i in range(n_tasks):
            others = [rtg[j] for j in range(n_tasks) if j != i]
            b = np.mean(others, axis=0) if others else np.zeros_like(rtg[i])
            expected += ((rtg[i] - b)[:, None] * score[i]).sum(axis=0)
            np.testing.assert_allclose(((rtg[i])[:, None] * score[i]).sum(axis=0), W[i],
                                       rtol=1e-12, atol=1e-12)  # W = sum_t G_t score_t
        expected /= n_tasks
        got = baselined_gradient(np.sum(W, axis=0), np.sum(score, axis=0),
                                 np.sum([tr[3] for tr in trials], axis=0), n_tasks)
        assert got.dtype == np.float64 and got.shape == (N_FEATURES,)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_tasks", SMALL_BATCHES + [1000])
def test_bandit_leave_one_out_is_n_over_n_minus_1_times_the_mean_baseline(rng, n_tasks):
    W = rng.normal(size=N_FEATURES)
    score_sums = rng.normal(size=(6, N_FEATURES))
    reward_sums = rng.random(6) * n_tasks
    got = baselined_gradient(W, score_sums, reward_sums, n_tasks)
    mean_baseline = np.cumsum(reward_sums[::-1])[::-1] / n_tasks
    with_mean = (W - (mean_baseline[:, None] * score_sums).sum(axis=0)) / n_tasks
    if n_tasks == 1:
        np.testing.assert_array_equal(got, W)
        assert got is not W
    else:
        np.testing.assert_allclose(got, with_mean * n_tasks / (n_tasks - 1), rtol=1e-10, atol=1e-13)
    # bit-reproducible: the same inputs give the same bits (no BLAS reductions)
    np.testing.assert_array_equal(got, baselined_gradient(W.copy(), score_sums.copy(),
                                                          reward_sums.copy(), n_tasks))
