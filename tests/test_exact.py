"""Exact dynamic programming on small MDPs: values, gradients, optimal values, the sampler."""
import itertools

import numpy as np
import pytest

from metarl_fast import exact
from metarl_fast.mdp import MDPModel

CASES = [  # (seed, S, A, T, gamma, n_terminal)
    (0, 3, 2, 5, 1.0, 0),
    (1, 4, 3, 7, 0.9, 0),
    (2, 6, 4, 10, 0.95, 1),
    (3, 5, 2, 8, 0.8, 2),
    (4, 1, 3, 4, 1.0, 0),
]


def _mdp(seed, S, A, T, gamma, n_terminal):
    return exact.random_mdp(np.random.default_rng(seed), S, A, T, gamma, n_terminal)


@pytest.mark.parametrize("case", CASES)
def test_gradient_matches_central_differences(case):
    mdp = _mdp(*case)
    theta = np.random.default_rng(100 + case[0]).normal(size=(mdp.n_states, mdp.n_actions))
    grad = exact.policy_gradient_exact(mdp, theta)
    assert grad.shape == theta.shape
    h = 1e-5
    fd = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        tp, tm = theta.copy(), theta.copy()
        tp[idx] += h
        tm[idx] -= h
        fd[idx] = (exact.policy_value(mdp, tp) - exact.policy_value(mdp, tm)) / (2 * h)
    rel = np.linalg.norm(fd - grad) / np.linalg.norm(grad)
    assert rel < 1e-6
    # rows of a softmax gradient sum to zero (adding a constant to theta[s] changes nothing)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)


def test_policy_value_by_enumeration():
    # enumerate every trajectory of a tiny MDP and sum probability * discounted return
    mdp = _mdp(7, 2, 2, 3, 0.7, 0)
    theta = np.array([[0.3, -0.2], [1.0, 0.5]])
    pi = exact.softmax_policy(theta)
    total = 0.0
    for traj in itertools.product(range(2), repeat=2 * mdp.horizon + 1):
        s, prob, ret = traj[0], mdp.start[traj[0]], 0.0
        for t in range(mdp.horizon):
            a, ns = traj[1 + 2 * t], traj[2 + 2 * t]
            prob *= pi[s, a] * mdp.P[s, a, ns]
            ret += mdp.gamma ** t * mdp.R[s, a]
            s = ns
        total += prob * ret
    assert exact.policy_value(mdp, theta) == pytest.approx(total, rel=1e-12)


def test_terminal_state_stops_the_episode():
    # from state 0 either action leads to terminal state 1; reward only collected once
    P = np.zeros((2, 2, 2))
    P[:, :, 1] = 1.0
    R = np.array([[1.0, 2.0], [100.0, 100.0]])
    mdp = MDPModel(P=P, R=R, start=np.array([1.0, 0.0]), horizon=5, gamma=1.0,
                   terminal=np.array([False, True]))
    assert exact.policy_value(mdp, np.zeros((2, 2))) == pytest.approx(1.5)
    d = exact.state_distributions(mdp, exact.softmax_policy(np.zeros((2, 2))))
    np.testing.assert_allclose(d[0], [1.0, 0.0])
    np.testing.assert_allclose(d[1:], 0.0)


def test_state_distributions_are_probabilities():
    mdp = _mdp(2, 6, 4, 10, 0.95, 1)
    pi = exact.softmax_policy(np.zeros((6, 4)))
    d = exact.state_distributions(mdp, pi)
    assert d.shape == (10, 6) and np.all(d >= 0)
    mass = d.sum(axis=1)
    assert mass[0] == pytest.approx(1.0) and np.all(np.diff(mass) <= 1e-12)  # terminal leaks mass
    d_no_term = exact.state_distributions(_mdp(1, 4, 3, 7, 0.9, 0), exact.softmax_policy(np.zeros((4, 3))))
    np.testing.assert_allclose(d_no_term.sum(axis=1), 1.0)


@pytest.mark.parametrize("case", CASES)
def test_optimal_value_bounds_every_policy(case):
    mdp = _mdp(*case)
    V, Q, greedy = exact.optimal_value(mdp)
    best = float(mdp.start @ V[0])
    rng = np.random.default_rng(5)
    for _ in range(20):
        assert exact.policy_value(mdp, rng.normal(size=(mdp.n_states, mdp.n_actions)) * 3) <= best + 1e-12
    np.testing.assert_array_equal(V[-1], 0.0)
    np.testing.assert_allclose(V[:-1], Q.max(axis=2))
    assert greedy.shape == (mdp.horizon, mdp.n_states)


def test_optimal_value_equals_best_deterministic_policy_when_stationary():
    # horizon 1: optimum = max_a R; and for a small MDP brute force over time-dependent
    # deterministic policies gives the same value as backward induction
    mdp = _mdp(11, 2, 2, 3, 0.9, 0)
    V, _, _ = exact.optimal_value(mdp)
    best = -np.inf
    for choice in itertools.product(range(2), repeat=2 * mdp.horizon):
        pol = np.array(choice).reshape(mdp.horizon, 2)
        v = np.zeros(2)
        for t in range(mdp.horizon - 1, -1, -1):
            a = pol[t]
            v = mdp.R[[0, 1], a] + mdp.gamma * mdp.P[[0, 1], a] @ v
        best = max(best, float(mdp.start @ v))
    assert float(mdp.start @ V[0]) == pytest.approx(best, rel=1e-12)
    one = MDPModel(P=mdp.P, R=mdp.R, start=mdp.start, horizon=1, gamma=0.9)
    np.testing.assert_allclose(exact.optimal_value(one)[0][0], mdp.R.max(axis=1))


def test_sample_episodes_match_exact_quantities():
    mdp = _mdp(2, 6, 4, 10, 0.95, 1)
    theta = np.random.default_rng(0).normal(size=(6, 4))
    n = 20000
    ep = exact.sample_episodes(mdp, theta, n, np.random.default_rng(1))
    # layout: episodes one after the other, done at each end
    assert ep.dones.sum() == n and ep.dones[-1]
    assert np.all(np.diff(ep.episode_ids) >= 0) and ep.episode_ids[-1] == n - 1
    np.testing.assert_array_equal(ep.time_steps[1:][ep.dones[:-1]], 0)
    np.testing.assert_allclose(ep.log_probs, np.log(exact.softmax_policy(theta))[ep.states, ep.actions])
    np.testing.assert_array_equal(ep.rewards, mdp.R[ep.states, ep.actions])
    # mean discounted return vs policy_value, within 4 standard errors
    returns = np.bincount(ep.episode_ids, weights=mdp.gamma ** ep.time_steps * ep.rewards)
    se = returns.std() / np.sqrt(n)
    assert abs(returns.mean() - exact.policy_value(mdp, theta)) < 4 * se
    # visitation frequency at t = 3 vs d_3
    d = exact.state_distributions(mdp, exact.softmax_policy(theta))
    freq = np.bincount(ep.states[ep.time_steps == 3], minlength=6) / n
    np.testing.assert_allclose(freq, d[3], atol=4 * np.sqrt(0.25 / n))


def test_sample_episodes_reproducible():
    mdp = _mdp(1, 4, 3, 7, 0.9, 0)
    a = exact.sample_episodes(mdp, np.zeros((4, 3)), 50, np.random.default_rng(9))
    b = exact.sample_episodes(mdp, np.zeros((4, 3)), 50, np.random.default_rng(9))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_exact_rejects_bad_input():
    mdp = _mdp(0, 3, 2, 5, 1.0, 0)
    with pytest.raises(ValueError, match="theta must have shape"):
        exact.policy_value(mdp, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="theta contains NaN"):
        exact.policy_gradient_exact(mdp, np.full((3, 2), np.nan))
    with pytest.raises(TypeError, match="mdp"):
        exact.policy_value("mdp", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="n_episodes"):
        exact.sample_episodes(mdp, np.zeros((3, 2)), 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        exact.sample_episodes(mdp, np.zeros((3, 2)), 3, 4.2)
    # flat theta is accepted
    assert exact.policy_value(mdp, np.zeros(6)) == exact.policy_value(mdp, np.zeros((3, 2)))


def test_linear_policy_gradient_matches_central_differences():
    mdp = _mdp(2, 6, 4, 10, 0.95, 1)
    rng = np.random.default_rng(8)
    features = rng.normal(size=(6, 3))
    params = rng.normal(size=3 * 4 + 4)
    grad = exact.linear_policy_gradient_exact(mdp, features, params)
    assert grad.shape == params.shape
    h = 1e-5
    fd = np.array([(exact.linear_policy_value(mdp, features, params + h * e)
                    - exact.linear_policy_value(mdp, features, params - h * e)) / (2 * h)
                   for e in np.eye(params.size)])
    assert np.linalg.norm(fd - grad) / np.linalg.norm(grad) < 1e-6
    # one-hot features reproduce the tabular policy (W = theta, b = 0)
    theta = rng.normal(size=(6, 4))
    flat = np.concatenate([theta.reshape(-1), np.zeros(4)])
    assert exact.linear_policy_value(mdp, np.eye(6), flat) == pytest.approx(
        exact.policy_value(mdp, theta), rel=1e-12)
    with pytest.raises(ValueError, match="params must have shape"):
        exact.linear_policy_gradient_exact(mdp, features, params[:-1])
    with pytest.raises(ValueError, match="features must have shape"):
        exact.linear_policy_value(mdp, features[:5], params)
