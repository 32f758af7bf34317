"""Exact dynamic programming against brute-force enumeration of every trajectory of tiny MDPs
(terminal states and discounting included), hand cases, and the task model's validation."""
import itertools

import numpy as np
import pytest

from metarl_fast import exact
from metarl_fast.mdp import MDPModel


def two_state_mdp(horizon=3, gamma=0.8, terminal=(False, True), start=(1.0, 0.0)):
    """State 0: action 0 stays (p .7) or moves to 1; action 1 moves to 1 (p .6) or stays.
    State 1: both actions return to 0 with p .5 (used when 1 is not terminal)."""
    P = np.array([[[0.7, 0.3], [0.4, 0.6]], [[0.5, 0.5], [0.5, 0.5]]])
    R = np.array([[1.0, 2.0], [-1.0, 3.0]])
    return MDPModel(P=P, R=R, start=np.array(start), horizon=horizon, gamma=gamma,
                    terminal=np.array(terminal))


def enumerate_trajectories(mdp, pi):
    """Yield (probability, discounted return, [(t, s, a), ...]) of every trajectory."""
    S, A = mdp.n_states, mdp.n_actions

    def walk(t, s, prob, ret, steps):
        if t == mdp.horizon:
            yield prob, ret, steps
            return
        for a in range(A):
            pa = prob * pi[s, a]
            if pa == 0.0:
                continue
            r = ret + mdp.gamma ** t * mdp.R[s, a]
            for s2 in range(S):
                p2 = pa * mdp.P[s, a, s2]
                if p2 == 0.0:
                    continue
                if mdp.terminal[s2]:
                    yield p2, r, steps + [(t, s, a)]
                else:
                    yield from walk(t + 1, s2, p2, r, steps + [(t, s, a)])

    for s0 in range(S):
        if mdp.start[s0] > 0:
            yield from walk(0, s0, mdp.start[s0], 0.0, [])


def brute_force(mdp, theta):
    """J, dJ/dtheta (sum of prob * return * score) and d_t(s), by enumeration."""
    pi = exact.softmax_policy(theta)
    J, grad = 0.0, np.zeros_like(pi)
    d = np.zeros((mdp.horizon, mdp.n_states))
    for prob, ret, steps in enumerate_trajectories(mdp, pi):
        J += prob * ret
        for t, s, a in steps:
            grad[s] += prob * ret * (np.eye(mdp.n_actions)[a] - pi[s])
            d[t, s] += prob
    return J, grad, d


CASES = {
    "terminal, discounted": dict(horizon=3, gamma=0.8, terminal=(False, True)),
    "no terminal, gamma 1": dict(horizon=4, gamma=1.0, terminal=(False, False), start=(0.3, 0.7)),
    "terminal start mass": dict(horizon=2, gamma=0.5, terminal=(True, False), start=(0.0, 1.0)),
    "horizon 1": dict(horizon=1, gamma=0.9, terminal=(False, False), start=(0.4, 0.6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_value_gradient_and_state_distribution_equal_the_enumeration(case):
    mdp = two_state_mdp(**CASES[case])
    theta = np.array([[0.3, -0.4], [1.2, 0.1]])
    J, grad, d = brute_force(mdp, theta)
    assert exact.policy_value(mdp, theta) == pytest.approx(J, rel=1e-13)
    np.testing.assert_allclose(exact.policy_gradient_exact(mdp, theta), grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(exact.state_distributions(mdp, exact.softmax_policy(theta)), d,
                               rtol=1e-13, atol=1e-15)


def test_horizon_one_by_hand():
    mdp = two_state_mdp(horizon=1, gamma=0.3, terminal=(False, False), start=(0.25, 0.75))
    theta = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])  # pi(.|0) = (1/4, 3/4), pi(.|1) uniform
    # J = .25 (1/4 * 1 + 3/4 * 2) + .75 (1/2 * -1 + 1/2 * 3)
    assert exact.policy_value(mdp, theta) == pytest.approx(0.25 * 1.75 + 0.75 * 1.0, rel=1e-14)
    # dJ/dtheta[s, a] = start[s] pi(a|s) (R[s, a] - V(s))
    want = np.array([[0.25 * 0.25 * (1 - 1.75), 0.25 * 0.75 * (2 - 1.75)],
                     [0.75 * 0.5 * (-1 - 1.0), 0.75 * 0.5 * (3 - 1.0)]])
    np.testing.assert_allclose(exact.policy_gradient_exact(mdp, theta), want, rtol=1e-13)


def test_evaluate_policy_q_and_v_by_hand():
    # two steps, terminal state 1: Q_1 = R; V_1 = pi . R; Q_0(s, a) = R + gamma P[., ., 0] V_1(0)
    mdp = two_state_mdp(horizon=2, gamma=0.5, terminal=(False, True))
    pi = np.array([[0.5, 0.5], [1.0, 0.0]])
    Q, V = exact.evaluate_policy(mdp, pi)
    np.testing.assert_allclose(Q[1], mdp.R)
    np.testing.assert_allclose(V[1], [1.5, -1.0])
    np.testing.assert_allclose(Q[0], mdp.R + 0.5 * mdp.P[:, :, 0] * 1.5)
    np.testing.assert_array_equal(V[2], 0.0)
    np.testing.assert_allclose(V[0], (pi * Q[0]).sum(axis=1))


def test_optimal_value_equals_brute_force_over_time_dependent_policies():
    # every deterministic time-dependent policy of the 2-state MDP with a terminal state
    mdp = two_state_mdp(horizon=3, gamma=0.8, terminal=(False, True), start=(1.0, 0.0))
    V, Q, greedy = exact.optimal_value(mdp)
    best = -np.inf
    for choice in itertools.product(range(2), repeat=2 * mdp.horizon):
        pol = np.array(choice).reshape(mdp.horizon, 2)
        v = np.zeros(2)
        for t in range(mdp.horizon - 1, -1, -1):
            a = pol[t]
            cont = mdp.P[[0, 1], a] * ~mdp.terminal
            v = mdp.R[[0, 1], a] + mdp.gamma * cont @ v
        best = max(best, float(mdp.start @ v))
    assert float(mdp.start @ V[0]) == pytest.approx(best, rel=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_actions_achieve_the_optimal_value(seed):
    mdp = exact.random_mdp(np.random.default_rng(seed), 4, 3, 5, 0.9, n_terminal=1)
    V, Q, greedy = exact.optimal_value(mdp)
    assert greedy.dtype == np.int64 and greedy.shape == (5, 4)
    np.testing.assert_array_equal(greedy, Q.argmax(axis=2))
    # follow the greedy time-dependent policy: its value is V
    Pc = mdp.P * ~mdp.terminal
    v = np.zeros(4)
    for t in range(4, -1, -1):
        a = greedy[t]
        v = mdp.R[np.arange(4), a] + mdp.gamma * Pc[np.arange(4), a] @ v
        np.testing.assert_allclose(v, V[t], rtol=1e-13)


def test_linear_gradient_by_the_chain_rule_on_a_tiny_case():
    mdp = two_state_mdp(horizon=2, gamma=0.9, terminal=(False, True))
    features = np.array([[1.0, 2.0], [0.5, -1.0]])
    params = np.array([0.3, -0.2, 0.1, 0.4, 0.05, -0.05])
    logits = features @ params[:4].reshape(2, 2) + params[4:]
    _, G, _ = brute_force(mdp, logits)
    want = np.concatenate([(features.T @ G).ravel(), G.sum(axis=0)])
    np.testing.assert_allclose(exact.linear_policy_gradient_exact(mdp, features, params), want,
                               rtol=1e-12, atol=1e-14)
    assert exact.linear_policy_value(mdp, features, params) == pytest.approx(
        brute_force(mdp, logits)[0], rel=1e-13)


def test_softmax_policy_by_hand():
    pi = exact.softmax_policy([[0.0, np.log(3.0)], [1000.0, 1000.0]])
    np.testing.assert_allclose(pi, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-15)


# ------------------------------------------------------------------ the sampler, edge cases
def test_sampler_single_episode_single_action_and_horizon_one():
    mdp = MDPModel(P=np.array([[[0.0, 1.0]], [[1.0, 0.0]]]), R=np.array([[1.0], [2.0]]),
                   start=np.array([1.0, 0.0]), horizon=3, gamma=0.5)
    ep = exact.sample_episodes(mdp, np.zeros((2, 1)), 1, np.random.default_rng(0))
    np.testing.assert_array_equal(ep.states, [0, 1, 0])
    np.testing.assert_array_equal(ep.actions, 0)
    np.testing.assert_array_equal(ep.next_states, [1, 0, 1])
    np.testing.assert_array_equal(ep.rewards, [1.0, 2.0, 1.0])
    np.testing.assert_array_equal(ep.dones, [False, False, True])
    np.testing.assert_array_equal(ep.time_steps, [0, 1, 2])
    np.testing.assert_array_equal(ep.log_probs, 0.0)
    one = MDPModel(P=mdp.P, R=mdp.R, start=mdp.start, horizon=1)
    ep = exact.sample_episodes(one, np.zeros((2, 1)), 4, np.random.default_rng(0))
    np.testing.assert_array_equal(ep.dones, True)
    np.testing.assert_array_equal(ep.episode_ids, [0, 1, 2, 3])


def test_sampler_stops_at_terminal_states_and_draws_by_the_documented_order():
    mdp = two_state_mdp(horizon=4, gamma=1.0, terminal=(False, True))
    theta = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])
    ep = exact.sample_episodes(mdp, theta, 3, np.random.default_rng(5))
    # every episode ends on entering state 1 or after 4 steps; state 1 is never acted in
    assert np.all(ep.states == 0)
    ends = ep.next_states[ep.dones] == 1
    lengths = np.bincount(ep.episode_ids)
    assert np.all(ends | (lengths == 4))
    # replay the draws: per step, one uniform per running episode for the actions, then one each
    # for the next states
    u = np.random.default_rng(5)
    u.random(3)  # the start states (start is deterministic, but drawn)
    alive, t = [0, 1, 2], 0
    acts = {e: [] for e in range(3)}
    while alive:
        ua, us = u.random(len(alive)), u.random(len(alive))
        nxt = []
        for e, x, y in zip(alive, ua, us):
            a = int(x >= 0.25)
            acts[e].append(a)
            s2 = int(y >= mdp.P[0, a, 0])
            if s2 == 0 and t < 3:
                nxt.append(e)
        alive, t = nxt, t + 1
    np.testing.assert_array_equal(ep.actions, sum((acts[e] for e in range(3)), []))


def test_random_mdp_terminal_states_are_the_last_and_never_start():
    mdp = exact.random_mdp(np.random.default_rng(3), 5, 2, 4, 0.9, n_terminal=2)
    np.testing.assert_array_equal(mdp.terminal, [False, False, False, True, True])
    assert np.all(mdp.start[3:] == 0.0) and mdp.start.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(mdp.P.sum(axis=2), 1.0)
    assert np.all((mdp.R >= 0) & (mdp.R < 1)) and mdp.gamma == 0.9 and mdp.horizon == 4


# ------------------------------------------------------------------ MDPModel validation
def test_mdp_model_rejects_what_is_not_a_task():
    P = np.full((2, 1, 2), 0.5)
    R = np.zeros((2, 1))
    good = dict(P=P, R=R, start=np.array([1.0, 0.0]), horizon=2)
    MDPModel(**good)
    for change, match in [(dict(P=np.full((2, 1, 2), 0.6)), "P\\[0, 0\\] is not a distribution"),
                          (dict(P=np.array([[[1.5, -0.5]], [[0.5, 0.5]]])), "not a distribution"),
                          (dict(start=np.array([0.5, 0.6])), "start is not a distribution"),
                          (dict(start=np.array([1.5, -0.5])), "start is not a distribution"),
                          (dict(horizon=0), "horizon must be >= 1"),
                          (dict(gamma=1.5), "gamma"), (dict(gamma=-0.1), "gamma"),
                          (dict(R=np.zeros((2, 2))), "R must have shape"),
                          (dict(terminal=np.zeros(3, bool)), "terminal must have shape"),
                          (dict(R=np.array([[np.nan], [0.0]])), "finite")]:
        with pytest.raises(ValueError, match=match):
            MDPModel(**{**good, **change})
    for horizon in (2.5, float("inf"), None):  # not an int: named, never OverflowError
        with pytest.raises(TypeError, match="horizon must be an int"):
            MDPModel(**{**good, "horizon": horizon})
    mdp = MDPModel(**good)
    assert mdp.n_states == 2 and mdp.n_actions == 1 and not mdp.P.flags.writeable
    assert mdp.terminal.dtype == bool and not mdp.terminal.any()
