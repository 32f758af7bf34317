"""In-context bandit learner: features, trials, the REINFORCE estimator, twin parity, bad input,
persistence, and the issue's bar against the Bayes-optimal value and the baselines."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from metarl_fast import baselines as bl
from metarl_fast import io
from metarl_fast.incontext import (FEATURE_NAMES, N_FEATURES, PRETRAINED_CALL, PRETRAINED_WEIGHTS,
                                   InContextBanditLearner, bandit_features, baselined_gradient,
                                   reinforce_trials, run_trials)
from metarl_fast.reference import incontext as ref
from metarl_fast.reference._math import exp_nonpos

from conftest import HAVE_CYTHON, needs_cython

if HAVE_CYTHON:
    from metarl_fast._core import incontext as core


# ------------------------------------------------------------------ features: mathematics
def naive_features(s, f, remaining, n):
    """Direct, loop-by-loop transcription of the feature table for one task (lists of counts)."""
    k = len(s)
    m = [(s[a] + 1) / (s[a] + f[a] + 2) for a in range(k)]
    top = max(m)
    rows = []
    for a in range(k):
        c = s[a] + f[a]
        others = max([m[b] for b in range(k) if b != a], default=-np.inf)
        # knowledge gradient: expected max posterior mean after one more pull of a, minus now
        after_win = max(others, (s[a] + 2) / (c + 3))
        after_loss = max(others, (s[a] + 1) / (c + 3))
        kg = m[a] * after_win + (1 - m[a]) * after_loss - top
        sd = np.sqrt(m[a] * (1 - m[a]) / (c + 3))  # std of Beta(s + 1, f + 1)
        rows.append([m[a], sd, sd * remaining / n, kg, kg * (remaining - 1), float(m[a] == top),
                     c / n, m[a] * remaining / n])
    return np.array(rows)


def test_features_match_the_table(backend):
    s = np.array([[0, 3, 1, 0], [2, 2, 0, 1]])
    f = np.array([[0, 1, 1, 2], [0, 0, 4, 1]])
    phi = bandit_features(s, f, 5, 16)
    assert phi.shape == (2, 4, N_FEATURES) and phi.dtype == np.float64
    assert len(FEATURE_NAMES) == N_FEATURES
    for i in range(2):
        np.testing.assert_allclose(phi[i], naive_features(s[i], f[i], 5, 16), rtol=1e-14, atol=1e-15)


def test_posterior_std_and_knowledge_gradient_from_first_principles(backend):
    s, f = np.array([[2, 0]]), np.array([[1, 0]])
    phi = bandit_features(s, f, 3, 6)[0]
    # Beta(3, 2): mean 3/5, variance ab / ((a+b)^2 (a+b+1)) = 6 / (25 * 6)
    assert phi[0, 0] == pytest.approx(0.6) and phi[0, 1] == pytest.approx(np.sqrt(6 / 150))
    # arm 1 (Beta(1, 1), mean 1/2): after a win its mean is 2/3 > 3/5, after a loss 1/3 < 3/5
    assert phi[1, 3] == pytest.approx(0.5 * (2 / 3) + 0.5 * 0.6 - 0.6)
    # arm 0 is best: a loss (prob 2/5) drops it to 3/6 = 1/2 which ties arm 1, a win keeps it best
    assert phi[0, 3] == pytest.approx(0.6 * (4 / 6) + 0.4 * 0.5 - 0.6)
    assert phi[:, 4] == pytest.approx(phi[:, 3] * 2)
    assert phi[:, 5].tolist() == [1.0, 0.0]


def test_single_arm_has_zero_knowledge_gradient(backend):
    phi = bandit_features(np.array([[3], [0]]), np.array([[1], [0]]), 2, 6)
    np.testing.assert_allclose(phi[:, 0, 3], 0.0, atol=1e-16)
    assert phi[:, 0, 5].tolist() == [1.0, 1.0]


def test_features_are_permutation_equivariant(backend, rng):
    s = rng.integers(0, 4, size=(50, 6))
    f = rng.integers(0, 4, size=(50, 6))
    perm = rng.permutation(6)
    np.testing.assert_array_equal(bandit_features(s, f, 3, 60)[:, perm],
                                  bandit_features(s[:, perm], f[:, perm], 3, 60))


# ------------------------------------------------------------------ trials
def test_zero_weights_pull_uniformly_and_rewards_follow_the_means(backend):
    rng = np.random.default_rng(7)
    n_tasks, n_arms, n = 20_000, 4, 5
    means = np.tile([0.0, 0.25, 0.5, 1.0], (n_tasks, 1))
    actions = np.empty((n_tasks, n), dtype=np.int64)
    totals = run_trials(np.zeros(N_FEATURES), means, n, rng, actions_out=actions)
    freq = np.bincount(actions.ravel(), minlength=n_arms) / actions.size
    np.testing.assert_allclose(freq, 0.25, atol=0.005)  # 100k pulls: sd of a frequency ~0.0014
    assert totals.dtype == np.float64 and np.all(totals == np.round(totals))
    assert 0 <= totals.min() and totals.max() <= n
    # E[total] = n * mean(p) = 5 * 0.4375 under uniform pulls
    assert totals.mean() == pytest.approx(n * 0.4375, abs=0.03)
    # pulls of the p = 0 arm never pay, pulls of the p = 1 arm always do: totals are at least
    # the number of p = 1 pulls and at most that plus the number of 0.25 / 0.5 pulls
    ones = (actions == 3).sum(axis=1)
    middle = ((actions == 1) | (actions == 2)).sum(axis=1)
    assert np.all(totals >= ones) and np.all(totals <= ones + middle)


def test_a_sharp_greedy_policy_exploits_a_known_winner(backend):
    # a huge weight on the posterior mean: after the first success the arm is kept forever
    w = np.zeros(N_FEATURES)
    w[0] = 1e4
    means = np.zeros((300, 3))
    means[:, 1] = 1.0
    actions = np.empty((300, 6), dtype=np.int64)
    totals = run_trials(w, means, 6, np.random.default_rng(1), actions_out=actions)
    first_win = np.argmax(actions == 1, axis=1)
    after_first_win = np.arange(6)[None, :] >= first_win[:, None]
    assert np.all(actions[after_first_win] == 1) and first_win.max() <= 2
    assert np.all(totals == 6 - first_win)


def test_trial_consumes_two_uniforms_per_pull(backend):
    rng, probe = np.random.default_rng(3), np.random.default_rng(3)
    run_trials(np.ones(N_FEATURES), np.full((7, 3), 0.5), 4, rng)
    probe.random(2 * 7 * 4)
    assert rng.random() == probe.random()


# ------------------------------------------------------------------ the REINFORCE estimator
def exact_expected_total(w, means, n):
    """E[total reward] of the in-context policy with weights ``w`` on one task, by enumerating
    every sequence of (arm, reward) pairs with the reference features and softmax."""
    k = len(means)
    value = 0.0
    for history in itertools.product(range(k), (0, 1), repeat=n):
        s, f, prob, total = np.zeros((1, k), int), np.zeros((1, k), int), 1.0, 0
        for t in range(n):
            a, r = history[2 * t], history[2 * t + 1]
            phi = ref.bandit_features(s, f, n - t, n)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            prob *= pi[a] / pi.sum() * (means[a] if r else 1 - means[a])
            s[0, a] += r
            f[0, a] += 1 - r
            total += r
        value += prob * total
    return value


def test_reinforce_gradient_is_unbiased_against_the_exact_gradient(backend):
    w = np.array([1.0, -0.5, 0.3, 2.0, 1.0, 0.5, -1.0, 0.2])
    means = np.array([0.2, 0.7])
    n = 3
    h = 1e-5
    exact = np.array([(exact_expected_total(w + h * e, means, n)
                       - exact_expected_total(w - h * e, means, n)) / (2 * h) for e in np.eye(N_FEATURES)])
    rng = np.random.default_rng(11)
    n_batches, batch = (30, 20_000) if backend == "cython" else (16, 10_000)  # the reference is slower
    batches = []
    for _ in range(n_batches):
        totals, weighted, score_sums, reward_sums = reinforce_trials(w, np.tile(means, (batch, 1)), n, rng)
        batches.append(baselined_gradient(weighted, score_sums, reward_sums, batch))
    batches = np.array(batches)
    mean, stderr = batches.mean(axis=0), batches.std(axis=0, ddof=1) / np.sqrt(len(batches))
    assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-4), (mean, exact, stderr)
    # and the estimate is informative: the exact gradient is far from zero relative to the noise
    assert np.abs(exact).max() > 10 * stderr.max()


def test_trials_match_the_exact_value_of_the_policy_under_the_prior(backend):
    # E[total] of the softmax policy over tasks p ~ U[0, 1]^k, by dynamic programming over the
    # ordered counts (the reward probability of an arm is its posterior mean)
    w, k, n = PRETRAINED_WEIGHTS / 4, 3, 5
    memo = {}

    def value(state):
        left = n - sum(s + f for s, f in state)
        if left == 0:
            return 0.0
        if state not in memo:
            counts = np.array(state)
            phi = ref.bandit_features(counts[None, :, 0], counts[None, :, 1], left, n)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            total = 0.0
            for a, (s, f) in enumerate(state):
                p = (s + 1) / (s + f + 2)
                win = value(state[:a] + ((s + 1, f),) + state[a + 1:])
                loss = value(state[:a] + ((s, f + 1),) + state[a + 1:])
                total += pi[a] * (p * (1 + win) + (1 - p) * loss)
            memo[state] = total
        return memo[state]

    exact = value(((0, 0),) * k)
    learner = InContextBanditLearner(w)
    n_trials = 200_000 if backend == "cython" else 60_000  # the reference is slower
    mean, half = bl.mean_confidence_interval(learner.evaluate(k, n, n_trials, np.random.default_rng(3)))
    assert abs(mean - exact) < 2 * half, (mean, half, exact)
    assert exact <= bl.bayes_optimal_value(k, n)


def test_reinforce_sums_match_a_step_by_step_recomputation(backend):
    # replay the documented draw order (per pull: every task's arm uniform, then every task's
    # reward uniform) and recompute every score vector with the reference features and softmax
    w = np.array([2.0, -1.0, 0.5, 3.0, 1.0, 0.7, -0.4, 0.9])
    n_tasks, n_arms, n = 6, 3, 5
    means = np.random.default_rng(1).random((n_tasks, n_arms))
    actions = np.empty((n_tasks, n), dtype=np.int64)
    run_trials(w, means, n, np.random.default_rng(2), actions_out=actions)
    uniforms = np.random.default_rng(2).random(2 * n_tasks * n).reshape(n, 2, n_tasks)
    totals, weighted, score_sums, reward_sums = reinforce_trials(w, means, n, np.random.default_rng(2))
    expect_weighted = np.zeros(N_FEATURES)
    expect_scores = np.zeros((n, N_FEATURES))
    expect_rewards = np.zeros(n)
    for i in range(n_tasks):
        s, f, cumulative = np.zeros((1, n_arms), int), np.zeros((1, n_arms), int), np.zeros(N_FEATURES)
        for t in range(n):
            phi = ref.bandit_features(s, f, n - t, n)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            a = actions[i, t]
            assert a == np.searchsorted(np.cumsum(pi), uniforms[t, 0, i], side="right")
            reward = float(uniforms[t, 1, i] < means[i, a])
            score = phi[a] - pi @ phi
            cumulative += score
            expect_weighted += reward * cumulative
            expect_scores[t] += score
            expect_rewards[t] += reward
            s[0, a] += reward
            f[0, a] += 1 - reward
    np.testing.assert_allclose(weighted, expect_weighted, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(score_sums, expect_scores, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(reward_sums, expect_rewards)
    assert totals.sum() == expect_rewards.sum()


def test_reinforce_sums_are_consistent_with_the_totals(backend, rng):
    w = rng.standard_normal(N_FEATURES)
    means = rng.random((500, 4))
    totals, weighted, score_sums, reward_sums = reinforce_trials(w, means, 7, rng)
    assert totals.shape == (500,) and weighted.shape == (N_FEATURES,)
    assert score_sums.shape == (7, N_FEATURES) and reward_sums.shape == (7,)
    assert reward_sums.sum() == totals.sum()
    # the score function has mean zero; its sum over 500 tasks stays within a few sd of zero
    assert np.all(np.abs(score_sums) < 5 * np.sqrt(500) * 2)


# ------------------------------------------------------------------ twin parity
@needs_cython
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_tasks=st.integers(0, 40), n_arms=st.integers(1, 7),
       n_pulls=st.integers(1, 12), scale=st.sampled_from([0.0, 0.5, 3.0, 50.0, 1e6]))
def test_backends_pull_the_same_arms(seed, n_tasks, n_arms, n_pulls, scale):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(N_FEATURES) * scale
    means = rng.random((n_tasks, n_arms))
    means[means < 0.1] = 0.0
    acts_ref = np.empty((n_tasks, n_pulls), dtype=np.int64)
    acts_core = np.empty((n_tasks, n_pulls), dtype=np.int64)
    r_ref, r_core = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
    t_ref = ref.run_trials(w, means, n_pulls, r_ref, acts_ref)
    t_core = core.run_trials(w, means, n_pulls, r_core, acts_core)
    np.testing.assert_array_equal(acts_ref, acts_core)
    np.testing.assert_array_equal(t_ref, t_core)
    assert r_ref.random() == r_core.random()
    g_ref = ref.reinforce_trials(w, means, n_pulls, np.random.default_rng(seed))
    g_core = core.reinforce_trials(w, means, n_pulls, np.random.default_rng(seed))
    np.testing.assert_array_equal(g_ref[0], g_core[0])
    np.testing.assert_array_equal(g_ref[3], g_core[3])
    for a, b in zip(g_ref[1:3], g_core[1:3]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-9 * max(1, n_tasks))


@needs_cython
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_arms=st.integers(1, 8), n_pulls=st.integers(1, 30))
def test_backends_compute_identical_features(seed, n_arms, n_pulls):
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_pulls - 1, np.ones(n_arms) / n_arms, size=9)
    s = rng.binomial(counts, 0.5)
    args = (s, counts - s, 1, n_pulls)
    np.testing.assert_array_equal(ref.bandit_features(*args), core.bandit_features(*args))
    args = (np.zeros_like(s), np.zeros_like(s), n_pulls, n_pulls)
    np.testing.assert_array_equal(ref.bandit_features(*args), core.bandit_features(*args))


def test_reference_exponential_is_the_shared_one():
    # the kernels sample through mf_exp / exp_nonpos; guard that the twin is what the spec uses
    x = -np.linspace(0, 30, 7)
    np.testing.assert_allclose(exp_nonpos(x), np.exp(x), rtol=1e-15)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("weights, exc", [
    (np.zeros(N_FEATURES - 1), ValueError),
    (np.zeros((1, N_FEATURES)), ValueError),
    (np.full(N_FEATURES, np.nan), ValueError),
    (np.full(N_FEATURES, np.inf), ValueError),
    (np.full(N_FEATURES, 1e101), ValueError),
    (np.zeros(N_FEATURES, dtype=np.int64), TypeError),
    ("weights", TypeError),
])
def test_bad_weights(backend, weights, exc):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(exc, match="weights"):
        run_trials(weights, np.full((2, 3), 0.5), 4, rng)
    with pytest.raises(exc, match="weights"):
        reinforce_trials(weights, np.full((2, 3), 0.5), 4, rng)
    assert rng.bit_generator.state == state  # nothing was drawn


@pytest.mark.parametrize("means, exc", [
    (np.full(3, 0.5), ValueError),
    (np.full((2, 0), 0.5), ValueError),
    (np.full((2, 3), 1.5), ValueError),
    (np.full((2, 3), -0.1), ValueError),
    (np.array([[0.5, np.nan]]), ValueError),
    (np.ones((2, 3), dtype=np.int64), TypeError),
])
def test_bad_arm_means(backend, means, exc):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(exc, match="arm_means"):
        run_trials(np.zeros(N_FEATURES), means, 4, rng)
    assert rng.bit_generator.state == state


def test_bad_pulls_rng_and_out(backend):
    w, p, rng = np.zeros(N_FEATURES), np.full((2, 3), 0.5), np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_pulls"):
        run_trials(w, p, 0, rng)
    with pytest.raises(TypeError, match="n_pulls"):
        run_trials(w, p, 2.0, rng)
    with pytest.raises(TypeError, match="rng"):
        run_trials(w, p, 2, np.random.RandomState(0))
    with pytest.raises(ValueError, match="actions_out"):
        run_trials(w, p, 2, rng, actions_out=np.empty((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="actions_out"):
        run_trials(w, p, 2, rng, actions_out=np.empty((2, 2)))


def test_bad_counts(backend):
    z = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="successes"):
        bandit_features(z - 1, z, 1, 5)
    with pytest.raises(ValueError, match="failures"):
        bandit_features(z, np.zeros((2, 2), dtype=np.int64), 1, 5)
    with pytest.raises(ValueError, match="n_remaining"):
        bandit_features(z, z, 6, 5)
    with pytest.raises(ValueError, match="exceed"):
        bandit_features(z + 1, z + 1, 1, 5)  # 6 pulls made but only 4 happened
    with pytest.raises(TypeError, match="successes"):
        bandit_features(z + 0.5, z, 1, 5)


# ------------------------------------------------------------------ the learner class
def test_learner_fit_improves_and_validates(backend):
    learner = InContextBanditLearner()
    history = learner.fit(3, 5, np.random.default_rng(0), n_iterations=25, batch_size=2000)
    assert history.shape == (25,) and learner.trained_on == (3, 5)
    random_value = 5 * 0.5
    assert history[-5:].mean() > random_value + 0.5
    again = InContextBanditLearner()
    again.fit(3, 5, np.random.default_rng(0), n_iterations=25, batch_size=2000)
    np.testing.assert_array_equal(again.weights, learner.weights)  # reproducible from the seed
    for kwargs, name in [({"learning_rate": 0.0}, "learning_rate"),
                         ({"learning_rate": np.nan}, "learning_rate"),
                         ({"final_learning_rate": -1.0}, "final_learning_rate"),
                         ({"n_iterations": 0}, "n_iterations"), ({"batch_size": 0}, "batch_size"),
                         ({"betas": (0.9, 1.0)}, "beta2"), ({"eps": 0.0}, "eps")]:
        with pytest.raises(ValueError, match=name):
            learner.fit(3, 5, np.random.default_rng(0), **kwargs)
    np.testing.assert_array_equal(again.weights, learner.weights)  # rejected calls change nothing
    with pytest.raises(ValueError, match="n_arms"):
        learner.fit(0, 5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        learner.fit(3, 5, "0")


def test_divergence_names_the_iteration_and_keeps_the_weights(backend, tmp_path):
    learner = InContextBanditLearner()
    seen = []
    with pytest.raises(FloatingPointError, match=r"iteration \d+") as info:
        learner.fit(3, 4, np.random.default_rng(0), n_iterations=50, batch_size=200,
                    learning_rate=4e99, final_learning_rate=4e99,
                    callback=lambda it, lrn, totals: seen.append(lrn.weights.copy()))
    failed_at = int(str(info.value).split("iteration ")[1].split(":")[0])
    assert failed_at >= 1 and len(seen) == failed_at
    np.testing.assert_array_equal(learner.weights, seen[-1])
    assert np.all(np.isfinite(learner.weights))
    path = learner.save(tmp_path / "after_divergence.npz")
    assert InContextBanditLearner.load(path) == learner


def test_fit_checkpoints_and_never_saves_a_diverged_step(backend, tmp_path):
    path = tmp_path / "ckpt.npz"
    learner = InContextBanditLearner()
    snapshots = {}
    learner.fit(3, 4, np.random.default_rng(0), n_iterations=5, batch_size=100, checkpoint_path=path,
                checkpoint_every=2,
                callback=lambda it, lrn, tot: snapshots.__setitem__(it, lrn.weights.copy()))
    assert InContextBanditLearner.load(path) == learner  # saved after the last iteration
    np.testing.assert_array_equal(learner.weights, snapshots[4])
    diverging = InContextBanditLearner()
    with pytest.raises(FloatingPointError, match="iteration"):
        diverging.fit(3, 4, np.random.default_rng(0), n_iterations=50, batch_size=200,
                      learning_rate=4e99, final_learning_rate=4e99, checkpoint_path=path,
                      checkpoint_every=1)
    saved = InContextBanditLearner.load(path)  # intact, the last valid weights
    assert saved == diverging and np.all(np.abs(saved.weights) <= 1e100)
    with pytest.raises(ValueError, match="checkpoint_every"):
        learner.fit(3, 4, np.random.default_rng(0), checkpoint_every=0)


def test_save_load_round_trip_and_bad_files(backend, tmp_path):
    learner = InContextBanditLearner(np.arange(N_FEATURES, dtype=np.float64))
    learner.trained_on = (5, 10)
    path = learner.save(tmp_path / "learner.npz")
    loaded = InContextBanditLearner.load(path)
    assert loaded == learner and loaded.trained_on == (5, 10)
    fresh = InContextBanditLearner()
    assert InContextBanditLearner.load(fresh.save(tmp_path / "fresh.npz")).trained_on is None
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(raw))
    with pytest.raises(io.CheckpointError, match="not a readable metarl_fast .npz file"):
        InContextBanditLearner.load(tmp_path / "corrupt.npz")
    io.save_npz(tmp_path / "other.npz", {"weights": np.zeros(3)}, kind="LinearSoftmaxPolicy", version=1)
    with pytest.raises(io.CheckpointError, match="LinearSoftmaxPolicy"):
        InContextBanditLearner.load(tmp_path / "other.npz")
    io.save_npz(tmp_path / "short.npz", {"weights": np.zeros(3), "trained_on": np.zeros(0, np.int64),
                                         "n_features": np.array(N_FEATURES)},
                kind="InContextBanditLearner", version=1)
    with pytest.raises(io.CheckpointError, match="inconsistent"):
        InContextBanditLearner.load(tmp_path / "short.npz")
    with pytest.raises(io.CheckpointError, match="no such file"):
        InContextBanditLearner.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="weights"):
        InContextBanditLearner(np.zeros(3))


# ------------------------------------------------------------------ the bar (Cython: seconds)
N_EVAL = 100_000


@pytest.fixture(scope="module")
def meta_trained():
    """Meta-trained on 5 arms, 10 pulls by the documented call that produced PRETRAINED_WEIGHTS."""
    if not HAVE_CYTHON:
        pytest.skip("compiled extension not used in this run")
    call = PRETRAINED_CALL
    with mf.use_backend("cython"):
        learner = InContextBanditLearner()
        learner.fit(call["n_arms"], call["n_pulls"], np.random.default_rng(call["seed"]),
                    n_iterations=call["n_iterations"], batch_size=call["batch_size"])
    return learner


def test_pretrained_weights_are_reproducible(meta_trained):
    np.testing.assert_allclose(meta_trained.weights, PRETRAINED_WEIGHTS, rtol=1e-9)
    assert InContextBanditLearner.pretrained() == meta_trained


def test_learner_reaches_99_percent_of_bayes_optimal_with_10_pulls(meta_trained):
    with mf.use_backend("cython"):
        mean, half = bl.mean_confidence_interval(
            meta_trained.evaluate(5, 10, N_EVAL, np.random.default_rng(1)))
    optimum = bl.bayes_optimal_value(5, 10)
    assert mean - half >= 0.99 * optimum, (mean, half, optimum)
    assert mean - half <= optimum  # the ceiling: a sanity check of both numbers


@pytest.mark.parametrize("n_pulls", [25, 50])
def test_learner_beats_thompson_and_greedy_on_longer_trials(meta_trained, n_pulls):
    # the weights were trained on 10-pull trials: the features carry the horizon
    n_eval = N_EVAL // 2 if n_pulls == 25 else N_EVAL // 5
    with mf.use_backend("cython"):
        ours = bl.mean_confidence_interval(
            meta_trained.evaluate(5, n_pulls, n_eval, np.random.default_rng(1)))
    for agent in (bl.ThompsonSamplingAgent(), bl.PosteriorGreedyAgent()):
        theirs = bl.mean_confidence_interval(agent.evaluate(5, n_pulls, n_eval, np.random.default_rng(1)))
        assert ours[0] - ours[1] > theirs[0] + theirs[1], (agent, ours, theirs)


def test_learning_works_on_the_numpy_backend_too():
    # smaller than the bar tests (the reference is ~10x slower) but the same algorithm
    with mf.use_backend("numpy"):
        learner = InContextBanditLearner()
        learner.fit(3, 6, np.random.default_rng(0), n_iterations=40, batch_size=2000)
        ours = bl.mean_confidence_interval(learner.evaluate(3, 6, 20_000, np.random.default_rng(1)))
    thompson = bl.mean_confidence_interval(
        bl.ThompsonSamplingAgent().evaluate(3, 6, 20_000, np.random.default_rng(1)))
    assert ours[0] - ours[1] > thompson[0] + thompson[1]
    assert ours[0] - ours[1] <= bl.bayes_optimal_value(3, 6)  # the ceiling
