"""In-context learners against mathematics alone (each backend on its own): bandit features and
empirical values worked out by hand, the trial policy's outcome distributions on tiny tasks by a
binomial bound, the leave-one-out trial gradient by hand, one and two Adam meta-steps by hand,
and the edge cases (one pull, one arm, one action, one episode, one trial)."""
import math

import numpy as np
import pytest

from metarl_fast import incontext as ic
from metarl_fast import incontext_mdp as icm
from metarl_fast.baselines import oracle_value
from metarl_fast.incontext import N_FEATURES, InContextBanditLearner, baselined_gradient
from metarl_fast.mdp import MDPModel
from metarl_fast.tasks import TaskBatch


def binomial_ok(count, n, p, z=5.0):
    return abs(count - n * p) <= z * math.sqrt(n * p * (1.0 - p)) + 1.0


def assert_distribution(totals, probs):
    counts = np.bincount(np.asarray(totals).astype(np.int64), minlength=len(probs))
    assert len(counts) == len(probs), counts
    for k, p in enumerate(probs):
        assert binomial_ok(counts[k], len(totals), p), (k, counts / len(totals), probs)


# ------------------------------------------------------------------ bandit features by hand
def test_bandit_features_three_arms_by_hand(backend):
    # s = (2, 0, 0), f = (1, 0, 2), 2 pulls left of 8: means 3/5, 1/2, 1/4; best arm 0
    phi = ic.bandit_features(np.array([[2, 0, 0]]), np.array([[1, 0, 2]]), 2, 8)[0]
    # arm 1 (untried): a win lifts it to 2/3 > 3/5, a loss leaves 3/5 on top:
    # kg = 1/2 * 2/3 + 1/2 * 3/5 - 3/5 = 1/30.  Arm 0: a loss drops it to 1/2, a tie: kg = 0
    want = np.array([
        [3 / 5, 1 / 5, 1 / 20, 0.0, 0.0, 1.0, 3 / 8, 3 / 20],
        [1 / 2, math.sqrt(1 / 12), math.sqrt(1 / 12) / 4, 1 / 30, 1 / 30, 0.0, 0.0, 1 / 8],
        [1 / 4, math.sqrt(3 / 80), math.sqrt(3 / 80) / 4, 0.0, 0.0, 0.0, 2 / 8, 1 / 16],
    ])
    np.testing.assert_allclose(phi, want, rtol=1e-14, atol=1e-16)


def test_bandit_features_at_the_first_and_last_pull(backend):
    # first pull: every arm is Beta(1, 1): m = 1/2, sd = sqrt(1/12), all tied best;
    # knowledge gradient of one observation: 1/2 * 2/3 + 1/2 * 1/2 - 1/2 = 1/12 (k > 1)
    phi = ic.bandit_features(np.zeros((1, 3), np.int64), np.zeros((1, 3), np.int64), 4, 4)[0]
    np.testing.assert_allclose(phi, np.tile([0.5, math.sqrt(1 / 12), math.sqrt(1 / 12), 1 / 12,
                                             3 / 12, 1.0, 0.0, 0.5], (3, 1)), rtol=1e-14)
    # last pull (1 left): the KG(*) feature vanishes, the time features are 1/n
    phi = ic.bandit_features(np.array([[1, 0]]), np.array([[0, 2]]), 1, 4)[0]
    np.testing.assert_array_equal(phi[:, 4], 0.0)
    np.testing.assert_allclose(phi[:, 7], phi[:, 0] / 4, rtol=1e-15)
    np.testing.assert_allclose(phi[:, 6], [1 / 4, 2 / 4], rtol=1e-15)


# ------------------------------------------------------------------ bandit trials
def test_one_pull_is_uniform_whatever_the_weights(backend):
    # all arms look alike before the first pull: the softmax is uniform, the score is zero
    w = np.array([5.0, -3.0, 2.0, 7.0, 1.0, 4.0, -2.0, 6.0])
    means = np.tile([1.0, 0.0, 0.0, 0.0], (40_000, 1))
    totals, weighted, score_sums, reward_sums = ic.reinforce_trials(w, means, 1, np.random.default_rng(1))
    assert_distribution(totals, [3 / 4, 1 / 4])
    np.testing.assert_array_equal(weighted, 0.0)
    np.testing.assert_array_equal(score_sums, 0.0)
    assert reward_sums.shape == (1,) and reward_sums[0] == totals.sum()


def test_one_arm_always_pulls_it(backend):
    w = np.arange(N_FEATURES, dtype=float)
    actions = np.empty((20_000, 3), np.int64)
    totals = ic.run_trials(w, np.full((20_000, 1), 0.5), 3, np.random.default_rng(2), actions_out=actions)
    np.testing.assert_array_equal(actions, 0)
    assert_distribution(totals, [1 / 8, 3 / 8, 3 / 8, 1 / 8])
    _, weighted, score_sums, _ = ic.reinforce_trials(w, np.full((50, 1), 0.5), 3, np.random.default_rng(3))
    np.testing.assert_array_equal(weighted, 0.0)
    np.testing.assert_array_equal(score_sums, 0.0)


def test_two_pull_greedy_policy_distribution(backend):
    # a large weight on the posterior mean: after a win keep the arm (2/3 > 1/2), after a loss
    # switch (1/3 < 1/2).  Means (1, 0): total 2 if the first pull is arm 0, else 1
    w = np.zeros(N_FEATURES)
    w[0] = 200.0
    means = np.tile([1.0, 0.0], (20_000, 1))
    totals = ic.run_trials(w, means, 2, np.random.default_rng(4))
    assert_distribution(totals, [0.0, 0.5, 0.5])
    # a large weight on the fraction of the trial spent on the arm: always repeat the first arm
    w = np.zeros(N_FEATURES)
    w[6] = 500.0
    totals = ic.run_trials(w, means, 3, np.random.default_rng(5))
    assert_distribution(totals, [0.5, 0.0, 0.0, 0.5])


def test_softmax_of_the_features_decides_the_second_pull(backend):
    # after arm 0 failed once: logits phi @ w; the probability of switching is the softmax's
    w = np.array([1.5, -0.5, 0.3, 2.0, 1.0, 0.5, -1.0, 0.7])
    phi = ic.bandit_features(np.array([[0, 0]]), np.array([[1, 0]]), 1, 2)[0]
    logits = phi @ w
    p_switch = 1.0 / (1.0 + math.exp(logits[0] - logits[1]))
    # means (0, 1): total = 1 exactly when the second pull goes to arm 1 (after a first pull
    # on arm 0), or the first pull is arm 1 (then the second pull pays only on arm 1 again)
    phi_win = ic.bandit_features(np.array([[0, 1]]), np.array([[0, 0]]), 1, 2)[0]
    lw = phi_win @ w
    p_stay = 1.0 / (1.0 + math.exp(lw[0] - lw[1]))
    totals = ic.run_trials(w, np.tile([0.0, 1.0], (40_000, 1)), 2, np.random.default_rng(6))
    assert_distribution(totals, [0.5 * (1 - p_switch), 0.5 * p_switch + 0.5 * (1 - p_stay), 0.5 * p_stay])


# ------------------------------------------------------------------ the trial gradient by hand
def test_baselined_gradient_by_hand():
    W = np.arange(N_FEATURES, dtype=float)
    # one trial: no other trial, no baseline: W itself (a copy)
    ss = np.ones((2, N_FEATURES))
    got = baselined_gradient(W, ss, np.array([1.0, 2.0]), 1)
    np.testing.assert_array_equal(got, W)
    assert got is not W
    # three trials, two pulls: reward-to-go RS = (3, 2); M = 3 SS[0] + 2 SS[1];
    # grad = (W - M / 3) / 2
    ss = np.stack([np.full(N_FEATURES, 1.0), np.full(N_FEATURES, -2.0)])
    got = baselined_gradient(W, ss, np.array([1.0, 2.0]), 3)
    np.testing.assert_allclose(got, (W - (3 * 1.0 + 2 * -2.0) / 3) / 2, rtol=1e-15)


def test_empty_batch_gives_a_zero_gradient(backend):
    # no trials: the REINFORCE sums are empty sums, and so is the gradient (not 0 / 0)
    learner = InContextBanditLearner(np.ones(N_FEATURES))
    with np.errstate(all="raise"):
        grad, totals = learner.policy_gradient(np.zeros((0, 3)), 4, np.random.default_rng(0))
    assert totals.shape == (0,)
    np.testing.assert_array_equal(grad, 0.0)


def test_two_trials_leave_one_out_by_hand(backend):
    # two trials: the baseline of each is the other's reward-to-go, so the gradient is
    # (1/2) sum_i sum_t (G_i[t] - G_other[t]) score_i[t]; recompute it from a replay
    w = np.array([1.0, -0.5, 0.3, 2.0, 1.0, 0.5, -1.0, 0.2])
    means = np.array([[0.3, 0.8], [0.6, 0.1]])
    actions = np.empty((2, 3), np.int64)
    ic.run_trials(w, means, 3, np.random.default_rng(7), actions_out=actions)
    u = np.random.default_rng(7).random(12).reshape(3, 2, 2)  # per pull: arm draws, reward draws
    scores, rewards = np.zeros((2, 3, N_FEATURES)), np.zeros((2, 3))
    for i in range(2):
        s, f = np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64)
        for t in range(3):
            phi = ic.bandit_features(s, f, 3 - t, 3)[0]
            logits = phi @ w
            pi = np.exp(logits - logits.max())
            pi /= pi.sum()
            a = actions[i, t]
            scores[i, t] = phi[a] - pi @ phi
            rewards[i, t] = float(u[t, 1, i] < means[i, a])
            s[0, a] += rewards[i, t]
            f[0, a] += 1 - rewards[i, t]
    G = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
    want = 0.5 * sum(((G[i] - G[1 - i])[:, None] * scores[i]).sum(axis=0) for i in range(2))
    learner = InContextBanditLearner(w)
    grad, totals = learner.policy_gradient(means, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(totals, rewards.sum(axis=1))
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-14)


def test_two_adam_meta_steps_by_hand(backend):
    # fit = Adam ascent (PyTorch's bias corrections) with a geometric learning-rate decay
    lr0, lr1, n_it, b1, b2, eps = 0.5, 0.05, 2, 0.9, 0.999, 1e-8
    learner = InContextBanditLearner()
    learner.fit(3, 4, np.random.default_rng(8), n_iterations=n_it, batch_size=300, learning_rate=lr0,
                final_learning_rate=lr1)
    replay = InContextBanditLearner()
    rng = np.random.default_rng(8)
    m = v = np.zeros(N_FEATURES)
    decay = (lr1 / lr0) ** (1 / n_it)
    for it in range(n_it):
        grad, _ = replay.policy_gradient(rng.random((300, 3)), 4, rng)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        step = lr0 * decay ** it / (1 - b1 ** (it + 1))
        replay.weights[...] = replay.weights + step * m / (np.sqrt(v / (1 - b2 ** (it + 1))) + eps)
        if it == 0:  # the first step moves every weight by lr0 along the gradient's sign
            np.testing.assert_allclose(np.abs(replay.weights), lr0, rtol=1e-3)
    np.testing.assert_allclose(learner.weights, replay.weights, rtol=1e-12, atol=1e-15)
    assert learner.trained_on == (3, 4)


# ------------------------------------------------------------------ MDP: empirical values by hand
def test_empirical_q_by_hand(backend):
    # one state, one action seen once: reward 2, back to itself.  d = 2, bonus 1/sqrt(2)
    count, rs = np.array([[[1.0]]]), np.array([[[2.0]]])
    trans = np.array([[[[1.0]]]])
    b = 1 / math.sqrt(2)
    qe, qo = icm.empirical_q(count, rs, trans, np.array([[False]]), 2)
    # h = 1: Qe = 2/2, Qo = 2/2 + b;  h = 2: Qe = (2 + 1)/2, Qo = (2 + (1 + b) + (1 + b))/2 + b
    np.testing.assert_allclose(qe[0, :, 0, 0], [1.0, 1.5], rtol=1e-15)
    np.testing.assert_allclose(qo[0, :, 0, 0], [1 + b, 2 + 2 * b], rtol=1e-15)
    # the state is known to be terminal: its value is 0 (the phantom visit of Qo still goes to
    # the best state's value, 0 too)
    qe, qo = icm.empirical_q(count, rs, trans, np.array([[True]]), 2)
    np.testing.assert_allclose(qe[0, :, 0, 0], [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(qo[0, :, 0, 0], [1 + b, 1 + b], rtol=1e-15)


def test_empirical_q_two_states_by_hand(backend):
    # state 0 action 0 seen twice: rewards summing to 1, both times to state 1; state 1's single
    # action seen once, reward 4, to state 0.  Unvisited (s, a): Qe = 0, Qo = bonus 1 + best Vo
    count = np.array([[[2.0, 0.0], [1.0, 0.0]]])
    rs = np.array([[[1.0, 0.0], [4.0, 0.0]]])
    trans = np.zeros((1, 2, 2, 2))
    trans[0, 0, 0, 1] = 2.0
    trans[0, 1, 0, 0] = 1.0
    qe, qo = icm.empirical_q(count, rs, trans, np.zeros((1, 2), bool), 2)
    np.testing.assert_allclose(qe[0, 0], [[1 / 3, 0.0], [2.0, 0.0]], rtol=1e-15)
    # h = 2: V_1 = (1/3, 2); Qe(0, 0) = (1 + 2 * 2) / 3, Qe(1, 0) = (4 + 1/3) / 2
    np.testing.assert_allclose(qe[0, 1], [[5 / 3, 0.0], [13 / 6, 0.0]], rtol=1e-15)
    b3, b2 = 1 / math.sqrt(3), 1 / math.sqrt(2)
    np.testing.assert_allclose(qo[0, 0], [[1 / 3 + b3, 1.0], [2 + b2, 1.0]], rtol=1e-15)


# ------------------------------------------------------------------ MDP trials
def bandit_mdp(n_tasks, rewards, horizon=1, noise="none"):
    """One state; action a pays rewards[a] and stays."""
    A = len(rewards)
    P = np.ones((n_tasks, 1, A, 1))
    R = np.tile(np.asarray(rewards, float), (n_tasks, 1, 1))
    return TaskBatch(P, R, horizon, reward_noise=noise)


def test_mdp_one_step_one_episode_is_uniform(backend):
    w = np.array([3.0, 1.0, -2.0, 5.0, 0.5, 1.5, 2.0, -1.0])
    batch = bandit_mdp(30_000, [1.0, 0.0, 0.0])
    returns, weighted, score_sums, reward_sums = icm.reinforce_trials(w, batch, 1, np.random.default_rng(1))
    assert returns.shape == (30_000, 1)
    assert_distribution(returns[:, 0], [2 / 3, 1 / 3])
    np.testing.assert_array_equal(weighted, 0.0)  # all actions look alike: zero score
    np.testing.assert_array_equal(score_sums, 0.0)


def test_mdp_second_episode_exploits_the_first(backend):
    # a large weight on the mean reward: after a paying first action repeat it; after a zero
    # reward the two actions look alike on that feature (0 and 0): uniform
    w = np.zeros(8)
    w[0] = 200.0
    batch = bandit_mdp(30_000, [1.0, 0.0])
    returns = icm.run_trials(w, batch, 2, np.random.default_rng(2))
    assert_distribution(returns.sum(axis=1), [0.25, 0.25, 0.5])
    # a large weight on the visit fraction: repeat the first action whatever it paid
    w = np.zeros(8)
    w[3] = 200.0
    returns = icm.run_trials(w, batch, 3, np.random.default_rng(3))
    assert_distribution(returns.sum(axis=1), [0.5, 0.0, 0.0, 0.5])


def test_mdp_single_action_and_episodes(backend):
    batch = bandit_mdp(3, [2.5], horizon=4)
    actions = np.empty((3, 2, 4), np.int64)
    returns = icm.run_trials(np.ones(8), batch, 2, np.random.default_rng(4), actions_out=actions)
    np.testing.assert_array_equal(returns, 10.0)
    np.testing.assert_array_equal(actions, 0)
    learner = icm.InContextMDPLearner(np.ones(8))
    np.testing.assert_array_equal(learner.evaluate(batch, 2, np.random.default_rng(5)), 20.0)


def test_mdp_terminal_ends_the_episode_and_actions_after_are_minus_one(backend):
    # state 0 -> state 1 (terminal) whatever the action: every episode is one step long
    P = np.zeros((2, 2, 2, 2))
    P[:, :, :, 1] = 1.0
    R = np.array([[[1.0, 3.0], [0.0, 0.0]]] * 2)
    batch = TaskBatch(P, R, 3, terminal=np.array([[False, True]] * 2))
    actions = np.empty((2, 2, 3), np.int64)
    returns = icm.run_trials(np.zeros(8), batch, 2, np.random.default_rng(6), actions_out=actions)
    np.testing.assert_array_equal(actions[:, :, 1:], -1)
    np.testing.assert_array_equal(returns, np.where(actions[:, :, 0] == 1, 3.0, 1.0))


def test_oracle_trial_values_by_hand():
    batch = bandit_mdp(2, [1.0, 3.0], horizon=4)
    np.testing.assert_allclose(icm.oracle_trial_values(batch, 5), [5 * 12.0, 5 * 12.0])
    assert oracle_value(batch[0].model()) == pytest.approx(12.0)
    mdp = batch[0].model()
    assert isinstance(mdp, MDPModel) and mdp.horizon == 4
