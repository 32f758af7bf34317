"""Policy-gradient kernels against hand-computed cases and closed forms (each backend on its own,
no twin parity): returns and GAE on tiny batches with dones at the first and last index and on
long episodes (the reference's sequential scan), the gradients, clipping, critics' TD(0) steps,
importance weights, the fused step and the estimators' advantages and weights."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from metarl_fast import pg
from metarl_fast.optim import SGD, Adam
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy

from conftest import BACKENDS


# ------------------------------------------------------------------ returns by hand
def test_returns_by_hand_with_dones_at_the_first_and_last_index(backend):
    r = np.array([1.0, 2.0, 3.0, 4.0])
    # done at 0 and 3: G0 = 1; G3 = 4; G2 = 3 + .5 * 4 = 5; G1 = 2 + .5 * 5 = 4.5
    d = np.array([1, 0, 0, 1])
    np.testing.assert_array_equal(pg.discounted_returns(r, d, 0.5), [1.0, 4.5, 5.0, 4.0])
    np.testing.assert_array_equal(pg.discounted_returns(r, d, 0.5, bootstrap=100.0), [1.0, 4.5, 5.0, 4.0])
    # the tail cut short: G3 = 4 + .5 * 8 = 8, G2 = 3 + 4 = 7, G1 = 2 + 3.5 = 5.5, G0 = 1 (done)
    d = np.array([1, 0, 0, 0])
    np.testing.assert_array_equal(pg.discounted_returns(r, d, 0.5, bootstrap=8.0), [1.0, 5.5, 7.0, 8.0])
    # every step its own episode: G = r; gamma 0 likewise
    np.testing.assert_array_equal(pg.discounted_returns(r, np.ones(4), 0.9), r)
    np.testing.assert_array_equal(pg.discounted_returns(r, np.zeros(4), 0.0, bootstrap=7.0), r)
    # gamma 1: plain sums to the end of the episode
    np.testing.assert_array_equal(pg.discounted_returns(r, [0, 1, 0, 0], 1.0, bootstrap=1.0),
                                  [3.0, 2.0, 8.0, 5.0])


@pytest.mark.parametrize("done", [False, True])
def test_returns_and_gae_of_a_single_step(backend, done):
    g = pg.discounted_returns(np.array([2.0]), np.array([done]), 0.5, bootstrap=6.0)
    np.testing.assert_array_equal(g, [2.0 if done else 5.0])
    a = pg.gae(np.array([2.0]), np.array([1.5]), np.array([6.0]), np.array([done]), 0.5, 0.9)
    np.testing.assert_array_equal(a, [0.5 if done else 3.5])


@pytest.mark.parametrize("n", [5, 300])
def test_returns_of_a_long_episode_in_closed_form(backend, n):
    # constant reward 1, no done: G_i = (1 - g^k) / (1 - g) + g^k * bootstrap with k = n - i
    # (n = 300 takes the reference's sequential scan, n = 5 its waves)
    gamma, boot = 0.9, 3.0
    k = n - np.arange(n)
    want = (1 - gamma ** k) / (1 - gamma) + gamma ** k * boot
    np.testing.assert_allclose(pg.discounted_returns(np.ones(n), np.zeros(n), gamma, boot), want,
                               rtol=1e-12)
    # a done in the middle of a long batch splits it into two such geometric tails
    d = np.zeros(n)
    d[n // 2 - 1] = 1
    k2 = np.where(np.arange(n) < n // 2, n // 2 - np.arange(n), k)
    want2 = (1 - gamma ** k2) / (1 - gamma) + np.where(np.arange(n) < n // 2, 0.0, gamma ** k2 * boot)
    np.testing.assert_allclose(pg.discounted_returns(np.ones(n), d, gamma, boot), want2, rtol=1e-12)


def test_gae_by_hand_with_dones_at_the_first_and_last_index(backend):
    r = np.array([1.0, 0.0, 2.0, 1.0])
    v = np.array([0.5, 1.0, 0.0, 2.0])
    nv = np.array([9.0, 3.0, 4.0, 9.0])
    d = np.array([1, 0, 0, 1])
    gamma, lam = 0.5, 0.5
    # deltas: [1 - .5, 0 + .5*3 - 1, 2 + .5*4 - 0, 1 - 2] = [.5, .5, 4, -1]
    # A3 = -1; A2 = 4 + .25 * -1 = 3.75; A1 = .5 + .25 * 3.75 = 1.4375; A0 = .5
    np.testing.assert_array_equal(pg.gae(r, v, nv, d, gamma, lam), [0.5, 1.4375, 3.75, -1.0])
    # lam = 0 is the TD error, lam = 1 sums the discounted deltas
    np.testing.assert_array_equal(pg.gae(r, v, nv, d, gamma, 0.0), [0.5, 0.5, 4.0, -1.0])
    np.testing.assert_array_equal(pg.gae(r, v, nv, d, gamma, 1.0), [0.5, 2.25, 3.5, -1.0])
    # the tail cut short bootstraps with next_values: delta3 = 1 + .5 * 9 - 2 = 3.5
    d = np.array([1, 0, 0, 0])
    np.testing.assert_array_equal(pg.gae(r, v, nv, d, gamma, lam), [0.5, 1.71875, 4.875, 3.5])


def test_gae_of_a_long_episode_in_closed_form(backend):
    # constant delta = 1 (r = 1, v = nv = 0), no done: A_i = (1 - (g l)^k) / (1 - g l)
    n, gamma, lam = 300, 0.95, 0.8
    k = n - np.arange(n)
    gl = gamma * lam
    want = (1 - gl ** k) / (1 - gl)
    np.testing.assert_allclose(pg.gae(np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n), gamma, lam),
                               want, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
@example(data=None)
def test_returns_equal_the_definition_on_random_batches(data):
    if data is None:  # by example: one step, done
        rewards, dones, gamma = np.array([3.0]), np.array([True]), 0.7
    else:
        n = data.draw(st.integers(1, 40))
        rewards = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)))
        dones = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        gamma = data.draw(st.floats(0, 1))
    want = np.zeros(len(rewards))
    for t in range(len(rewards)):
        disc, k = 1.0, t
        while True:
            want[t] += disc * rewards[k]
            if dones[k] or k == len(rewards) - 1:
                break
            disc *= gamma
            k += 1
    for name in BACKENDS:
        with mf.use_backend(name):
            np.testing.assert_allclose(pg.discounted_returns(rewards, dones, gamma), want,
                                       rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ gradients by hand
def test_tabular_gradient_by_hand(backend):
    # theta row 0 = log(1, 3) -> pi = (1/4, 3/4); row 1 unused; B = 2 samples both in state 0
    policy = TabularSoftmaxPolicy(2, 2, theta=[[0.0, math.log(3.0)], [5.0, -5.0]])
    g = pg.policy_gradient(policy, np.array([0, 0]), np.array([0, 1]), np.array([2.0, -1.0]))
    # (2 * (e0 - pi) + (-1) * (e1 - pi)) / 2 = ((1.5, -1.5) + (0.25, -0.25)) / 2
    np.testing.assert_allclose(g, [0.875, -0.875, 0.0, 0.0], rtol=1e-14)
    # weights multiply the advantages; one sample (N = 1)
    g = pg.policy_gradient(policy, np.array([0]), np.array([1]), np.array([2.0]), weights=np.array([0.5]))
    np.testing.assert_allclose(g, [-0.25, 0.25, 0.0, 0.0], rtol=1e-14)


def test_entropy_gradient_by_hand(backend):
    # pi = (1/4, 3/4): H = -(1/4 log 1/4 + 3/4 log 3/4); dH/dtheta_k = -pi_k (log pi_k + H)
    policy = TabularSoftmaxPolicy(1, 2, theta=[[0.0, math.log(3.0)]])
    p = np.array([0.25, 0.75])
    H = -(p * np.log(p)).sum()
    g = pg.policy_gradient(policy, np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3),
                           entropy_coef=0.2)
    np.testing.assert_allclose(g, 0.2 * -p * (np.log(p) + H), rtol=1e-13)


def test_linear_gradient_by_hand(backend):
    # W = 0, b = 0: pi uniform over 2 actions; features (1, 2) and (3, -1)
    policy = LinearSoftmaxPolicy(2, 2)
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    g = pg.policy_gradient(policy, x, np.array([0, 1]), np.array([1.0, 2.0]))
    # G = [[.5, -.5], [-1, 1]] / 2; dW = x^T G; db = sum G
    G = np.array([[0.5, -0.5], [-1.0, 1.0]]) / 2
    np.testing.assert_allclose(g, np.concatenate([(x.T @ G).ravel(), G.sum(axis=0)]), rtol=1e-14)
    np.testing.assert_allclose(g, [-1.25, 1.25, 1.0, -1.0, -0.25, 0.25], rtol=1e-14)


@pytest.mark.parametrize("linear", [False, True])
def test_gradient_of_a_batch_larger_than_a_kernel_chunk(backend, linear):
    # 5000 samples (the kernels work through rows in chunks of ~2048 / A): the mean over the
    # whole batch, each sample scattered to its own state, by a direct loop-free formula
    rng = np.random.default_rng(21)
    S, A, B = 7, 3, 5000
    theta = rng.normal(size=(S, A))
    states, actions, adv = rng.integers(0, S, B), rng.integers(0, A, B), rng.normal(size=B)
    p = np.exp(theta - theta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    G = (np.eye(A)[actions] - p[states]) * adv[:, None] / B
    if linear:
        x = np.eye(S)[states]  # one-hot features: W plays theta, b = 0
        policy = LinearSoftmaxPolicy(S, A, W=theta)
        got = pg.policy_gradient(policy, x, actions, adv)
        np.testing.assert_allclose(got[:S * A].reshape(S, A), x.T @ G, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(got[S * A:], G.sum(axis=0), rtol=1e-10, atol=1e-15)
    else:
        want = np.zeros((S, A))
        for s in range(S):
            want[s] = G[states == s].sum(axis=0)
        got = pg.policy_gradient(TabularSoftmaxPolicy(S, A, theta=theta), states, actions, adv)
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-10, atol=1e-15)


def test_gradient_with_one_action_is_zero(backend):
    policy = TabularSoftmaxPolicy(3, 1, theta=[[1.0], [2.0], [3.0]])
    g = pg.policy_gradient(policy, np.array([0, 2]), np.array([0, 0]), np.array([5.0, -1.0]),
                           entropy_coef=0.7)
    np.testing.assert_array_equal(g, 0.0)


def test_gradient_out_holds_the_values(backend, rng):
    policy = TabularSoftmaxPolicy(3, 2, theta=rng.normal(size=(3, 2)))
    s, a, adv = np.array([0, 1, 1]), np.array([1, 1, 0]), np.array([1.0, 2.0, -0.5])
    out = np.full(6, np.nan)
    assert pg.policy_gradient(policy, s, a, adv, out=out) is out
    np.testing.assert_array_equal(out, pg.policy_gradient(policy, s, a, adv))


# ------------------------------------------------------------------ clipping
def test_clip_grad_norm_by_hand(backend):
    g = np.array([0.0, 0.0, 0.0])
    assert pg.clip_grad_norm(g, 1.0) == 0.0
    np.testing.assert_array_equal(g, 0.0)
    g = np.array([6.0, 8.0])
    assert pg.clip_grad_norm(g, 0.0) == 10.0  # 0 disables clipping
    np.testing.assert_array_equal(g, [6.0, 8.0])
    assert pg.clip_grad_norm(g, 20.0) == 10.0  # already short: untouched, never scaled up
    np.testing.assert_array_equal(g, [6.0, 8.0])
    assert pg.clip_grad_norm(g, 2.0) == 10.0
    np.testing.assert_allclose(g, np.array([6.0, 8.0]) * 2.0 / (10.0 + 1e-6), rtol=1e-15)
    g = np.array([1e-7])  # PyTorch's 1e-6 guard: max_norm / (norm + 1e-6) < 1 here
    pg.clip_grad_norm(g, 1e-7)
    np.testing.assert_allclose(g, [1e-7 * 1e-7 / (1e-7 + 1e-6)], rtol=1e-15)


# ------------------------------------------------------------------ critics' TD(0) steps by hand
def test_tabular_td_by_hand_with_duplicate_states_and_terminal_ends(backend):
    values = np.array([1.0, -2.0, 4.0])
    s, ns = np.array([2, 0, 2, 1]), np.array([0, 1, 1, 2])
    r, d = np.array([1.0, 0.0, 3.0, 0.5]), np.array([1, 0, 0, 1])
    # deltas with V before the update, gamma = .5: [1 - 4, 0 + .5 * -2 - 1, 3 + .5 * -2 - 4, .5 + 2]
    td = pg.active.pg.tabular_td_update(values, s, r, ns, d, 0.5, 0.4)
    np.testing.assert_array_equal(td, [-3.0, -2.0, -2.0, 2.5])
    # V[s] += lr / B * sum of the deltas at s (state 2 twice)
    np.testing.assert_allclose(values, [1.0 + 0.1 * -2.0, -2.0 + 0.1 * 2.5, 4.0 + 0.1 * -5.0],
                               rtol=1e-15)
    before = values.copy()
    td = pg.active.pg.tabular_td_update(values, s, r, ns, d, 0.5, 0.0)  # lr 0: evaluate only
    np.testing.assert_array_equal(values, before)
    one = np.array([0.0, 0.0])
    np.testing.assert_array_equal(pg.active.pg.tabular_td_update(one, [1], [2.0], [0], [0], 1.0, 1.0), [2.0])
    np.testing.assert_array_equal(one, [0.0, 2.0])  # N = 1: the full delta


def test_linear_td_by_hand(backend):
    params = np.array([1.0, -1.0, 0.5])  # w = (1, -1), c = .5
    x = np.array([[1.0, 0.0], [2.0, 1.0]])
    nx = np.array([[0.0, 1.0], [5.0, 5.0]])
    r, d = np.array([1.0, 2.0]), np.array([0, 1])
    # V(x) = (1.5, 1.5); V(nx) = (-.5, ignored); gamma .5: delta = (1 - .25 - 1.5, 2 - 1.5)
    td = pg.active.pg.linear_td_update(params, 2, x, r, nx, d, 0.5, 0.2)
    np.testing.assert_allclose(td, [-0.75, 0.5], rtol=1e-15)
    # w += lr / B x^T delta = .1 * (-.75 + 1, .5); c += .1 * (-.25)
    np.testing.assert_allclose(params, [1.025, -0.95, 0.475], rtol=1e-14)


def test_critic_fit_returns_by_hand(backend):
    critic = pg.LinearCritic(1, lr=0.5)
    err = critic.fit_returns(np.array([[2.0], [0.0]]), np.array([4.0, 1.0]))
    np.testing.assert_array_equal(err, [4.0, 1.0])
    # w += .5 / 2 * (2 * 4 + 0), c += .25 * 5
    np.testing.assert_allclose(critic.params, [2.0, 1.25])


# ------------------------------------------------------------------ importance weights
def test_importance_weights_by_hand(backend):
    lp = np.log(np.array([0.2, 0.6, 0.5]))
    lb = np.log(np.array([0.4, 0.2, 0.5]))
    np.testing.assert_allclose(pg.truncated_importance_weights(lp, lb, None), [0.5, 3.0, 1.0], rtol=1e-14)
    np.testing.assert_allclose(pg.truncated_importance_weights(lp, lb, 2.0), [0.5, 2.0, 1.0], rtol=1e-14)
    w32 = pg.truncated_importance_weights(lp.astype(np.float32), lb, 1.0)
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, [0.5, 1.0, 1.0], rtol=1e-6)


# ------------------------------------------------------------------ the fused step by hand
def test_fused_sgd_step_ascends_by_lr_times_the_gradient(backend):
    policy = TabularSoftmaxPolicy(1, 2, theta=[[0.0, math.log(3.0)]])
    opt = SGD(policy, lr=2.0)
    grad = np.empty(2)
    norm = pg.policy_gradient_step(policy, opt, np.array([0]), np.array([0]), np.array([1.0]),
                                   grad_out=grad)
    # gradient (1 - 1/4, -3/4); ascent with lr 2
    np.testing.assert_allclose(grad, [0.75, -0.75], rtol=1e-14)
    assert norm == pytest.approx(0.75 * math.sqrt(2.0), rel=1e-14)
    np.testing.assert_allclose(policy.params, [1.5, math.log(3.0) - 1.5], rtol=1e-14)
    # clipped to norm 0.5: the unclipped gradient is reported, the step is clipped
    policy2 = TabularSoftmaxPolicy(1, 2, theta=[[0.0, math.log(3.0)]])
    opt2 = SGD(policy2, lr=1.0)
    pg.policy_gradient_step(policy2, opt2, np.array([0]), np.array([0]), np.array([1.0]),
                            max_grad_norm=0.5, grad_out=grad)
    np.testing.assert_allclose(grad, [0.75, -0.75], rtol=1e-14)
    coef = 0.5 / (0.75 * math.sqrt(2.0) + 1e-6)
    np.testing.assert_allclose(policy2.params, [0.75 * coef, math.log(3.0) - 0.75 * coef], rtol=1e-13)


def test_fused_adam_steps_by_hand(backend):
    # one sample, state 0, action 0, advantage 1, theta = (x, -x): the gradient is (q, -q) with
    # q = 1 - sigmoid(2 x); Adam (PyTorch's bias corrections) ascends it, written out by hand
    policy = TabularSoftmaxPolicy(1, 2)
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    opt = Adam(policy, lr=lr, betas=(b1, b2), eps=eps)
    x, m, v = 0.0, 0.0, 0.0
    for t in (1, 2, 3):
        pg.policy_gradient_step(policy, opt, np.array([0]), np.array([0]), np.array([1.0]))
        q = 1.0 - 1.0 / (1.0 + math.exp(-2.0 * x))
        m = b1 * m + (1 - b1) * q
        v = b2 * v + (1 - b2) * q * q
        x += lr / (1 - b1 ** t) * m / (math.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        assert opt.steps == t
        np.testing.assert_allclose(policy.params, [x, -x], rtol=1e-13)
    assert 0.29 < x < 0.3  # each step close to lr


# ------------------------------------------------------------------ estimators by hand
def test_episode_helpers_with_dones_at_the_ends():
    d = np.array([1, 0, 1, 0, 0])
    np.testing.assert_array_equal(pg.episode_time_steps(d), [0, 0, 1, 0, 1])
    assert pg.count_episodes(d) == 3
    np.testing.assert_array_equal(pg.episode_time_steps([1]), [0])
    np.testing.assert_array_equal(pg.episode_time_steps([0]), [0])
    assert pg.count_episodes([1]) == 1 and pg.count_episodes([0]) == 1
    np.testing.assert_array_equal(pg.episode_time_steps([0, 0, 0]), [0, 1, 2])
    assert pg.count_episodes([0, 0, 0]) == 1 and pg.count_episodes([1, 1, 1]) == 3


def test_leave_one_out_baseline_by_hand():
    # three episodes: returns (1, 2), (3,), (5, 6, 7)
    g = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    d = np.array([0, 1, 1, 0, 0, 1])
    # t = 0: the others' mean; t = 1: the one other episode that reached it; t = 2: none -> 0
    np.testing.assert_allclose(pg.leave_one_out_baseline(g, d),
                               [(3 + 5) / 2, 6.0, (1 + 5) / 2, (1 + 3) / 2, 2.0, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(pg.leave_one_out_baseline([4.0], [1]), [0.0])  # N = 1


def test_reinforce_weights_and_advantages_by_hand(backend):
    policy = TabularSoftmaxPolicy(2, 2)
    s, a = np.array([0, 1, 0, 1, 0]), np.array([1, 0, 0, 1, 1])
    r = np.array([1.0, 2.0, 0.0, 4.0, 3.0])
    d = np.array([0, 1, 0, 1, 1])  # episodes (0, 1), (2, 3), (4)
    gamma = 0.5
    G = np.array([2.0, 2.0, 2.0, 4.0, 3.0])
    res = pg.reinforce_gradient(policy, s, a, r, d, gamma, baseline=None, discount_states=True,
                                per_episode=True)
    np.testing.assert_array_equal(res.advantages, G)
    # weights gamma^t * B / N = (1, .5, 1, .5, 1) * 5 / 3
    np.testing.assert_allclose(res.weights, np.array([1, 0.5, 1, 0.5, 1]) * 5 / 3, rtol=1e-15)
    # the gradient is (1/N) sum_i gamma^t G (onehot - 1/2): by hand for the uniform policy
    want = np.zeros((2, 2))
    for i, wt in enumerate([1, 0.5, 1, 0.5, 1]):
        want[s[i]] += wt * G[i] * (np.eye(2)[a[i]] - 0.5) / 3
    np.testing.assert_allclose(res.grad, want.ravel(), rtol=1e-14)
    assert res.grad_norm == pytest.approx(np.linalg.norm(want), rel=1e-14)
    # without the options: weights None and the mean over B steps
    res = pg.reinforce_gradient(policy, s, a, r, d, gamma, baseline=1.0)
    assert res.weights is None
    np.testing.assert_array_equal(res.advantages, G - 1.0)


def test_reinforce_per_episode_counts_an_unfinished_tail(backend):
    # episodes (0, 1) finished, (2, 3, 4) cut short: N = 2 episodes, B = 5 steps
    policy = TabularSoftmaxPolicy(1, 2)
    d = np.array([0, 1, 0, 0, 0])
    res = pg.reinforce_gradient(policy, np.zeros(5, np.int64), np.array([0, 1, 0, 0, 1]), np.ones(5),
                                d, 1.0, baseline=None, per_episode=True)
    np.testing.assert_allclose(res.weights, np.full(5, 5 / 2), rtol=1e-15)
    np.testing.assert_array_equal(res.advantages, [2.0, 1.0, 3.0, 2.0, 1.0])
    res = pg.reinforce_gradient(policy, np.zeros(5, np.int64), np.array([0, 1, 0, 0, 1]), np.ones(5),
                                d, 0.5, baseline=None, discount_states=True)
    np.testing.assert_allclose(res.weights, [1.0, 0.5, 1.0, 0.5, 0.25], rtol=1e-15)


def test_reinforce_critic_baseline_is_read_before_the_critic_is_fitted(backend):
    policy = TabularSoftmaxPolicy(2, 2)
    critic = pg.TabularCritic(2, lr=1.0, values=[10.0, -10.0])
    s, a = np.array([0, 1]), np.array([0, 1])
    res = pg.reinforce_gradient(policy, s, a, np.array([1.0, 2.0]), np.array([1, 1]), 0.9,
                                baseline=critic)
    np.testing.assert_array_equal(res.advantages, [1.0 - 10.0, 2.0 + 10.0])
    # then one regression step towards the returns: V[s] += lr / B (G - V[s])
    np.testing.assert_allclose(critic.values, [10.0 + 0.5 * -9.0, -10.0 + 0.5 * 12.0])


def test_actor_critic_advantage_by_hand(backend):
    policy = TabularSoftmaxPolicy(2, 2)
    critic = pg.TabularCritic(2, lr=0.5, values=[1.0, 2.0])
    res = pg.actor_critic_gradient(policy, critic, np.array([0, 1]), np.array([0, 1]),
                                   np.array([1.0, 3.0]), np.array([1, 0]), np.array([0, 1]), 0.5)
    # TD errors before the update: 1 + .5 * 2 - 1 = 1; 3 - 2 = 1 (done)
    np.testing.assert_array_equal(res.advantages, [1.0, 1.0])
    np.testing.assert_allclose(critic.values, [1.25, 2.25])
    critic2 = pg.TabularCritic(2, lr=0.5, values=[1.0, 2.0])
    pg.actor_critic_gradient(policy, critic2, np.array([0]), np.array([0]), np.array([1.0]),
                             np.array([1]), np.array([0]), 0.5, update_critic=False)
    np.testing.assert_array_equal(critic2.values, [1.0, 2.0])


def test_per_decision_advantages_by_hand(backend):
    # pi uniform over 2 actions (log pi = log 1/2); mu(a) = 1/4 -> ratio 2 per step
    policy = TabularSoftmaxPolicy(1, 2)
    log_mu = np.log(np.array([0.25, 0.25, 0.25]))
    r = np.array([1.0, 1.0, 1.0])
    d = np.array([0, 1, 1])  # episodes (0, 1), (2)
    res = pg.per_decision_off_policy_gradient(policy, np.zeros(3, np.int64), np.array([0, 1, 0]),
                                              r, d, log_mu, 0.5)
    # c = (2, 4 | 2): advantages = return-to-go of c r: (2 + .5 * 4, 4 | 2)
    np.testing.assert_allclose(res.advantages, [4.0, 4.0, 2.0], rtol=1e-14)
    np.testing.assert_allclose(res.weights, np.array([1.0, 0.5, 1.0]) * 3 / 2, rtol=1e-15)


def test_off_policy_weights_are_truncated_ratios(backend):
    policy = TabularSoftmaxPolicy(1, 2, theta=[[0.0, math.log(3.0)]])  # pi = (1/4, 3/4)
    res = pg.off_policy_gradient(policy, np.zeros(2, np.int64), np.array([0, 1]),
                                 np.array([1.0, 1.0]), np.log(np.array([0.5, 0.25])), rho_bar=2.0)
    np.testing.assert_allclose(res.weights, [0.5, 2.0], rtol=1e-14)
    res = pg.off_policy_gradient(policy, np.zeros(2, np.int64), np.array([0, 1]),
                                 np.array([1.0, 1.0]), np.log(np.array([0.5, 0.25])), rho_bar=None)
    np.testing.assert_allclose(res.weights, [0.5, 3.0], rtol=1e-14)
