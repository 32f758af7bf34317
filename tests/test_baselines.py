"""Baselines: the exact Bayes-optimal value, the bandit agents, the MDP oracle, summaries."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast import baselines as bl
from metarl_fast._backend import active
from metarl_fast.baselines import (EpsilonGreedyAgent, PosteriorGreedyAgent, RandomAgent,
                                   ThompsonSamplingAgent, UCB1Agent, bayes_optimal_value,
                                   mean_confidence_interval, oracle_value)
from metarl_fast.reference import baselines as ref

from conftest import HAVE_CYTHON, needs_cython

if HAVE_CYTHON:
    from metarl_fast._core import baselines as core

AGENTS = [RandomAgent(), PosteriorGreedyAgent(), EpsilonGreedyAgent(0.1), UCB1Agent(),
          ThompsonSamplingAgent()]


# ------------------------------------------------------------------ Bayes-optimal value
def brute_force_bayes_value(k, n):
    """Bayes-optimal value without the exchangeability shortcut: the state is the ordered tuple of
    every arm's (successes, failures), and the recursion visits every arm."""
    memo = {}

    def value(state, left):
        if left == 0:
            return 0.0
        if state in memo:
            return memo[state]
        best = -1.0
        for a, (s, f) in enumerate(state):
            p = (s + 1) / (s + f + 2)
            win = state[:a] + ((s + 1, f),) + state[a + 1:]
            loss = state[:a] + ((s, f + 1),) + state[a + 1:]
            best = max(best, p * (1 + value(win, left - 1)) + (1 - p) * value(loss, left - 1))
        memo[state] = best
        return best

    return value(((0, 0),) * k, n)


def test_bayes_value_closed_forms(backend):
    # one arm: every pull pays 1/2 in expectation
    for n in (1, 2, 7):
        assert bayes_optimal_value(1, n) == pytest.approx(n / 2)
    # two arms, two pulls: 1/2, then stay after a win (2/3) or switch after a loss (1/2)
    assert bayes_optimal_value(2, 2) == pytest.approx(0.5 + 0.5 * 2 / 3 + 0.5 * 0.5)
    # one pull: 1/2 whatever k
    assert bayes_optimal_value(6, 1) == pytest.approx(0.5)


@pytest.mark.parametrize("k,n", [(2, 5), (3, 5), (4, 4), (2, 8)])
def test_bayes_value_matches_the_unreduced_dynamic_programme(k, n, backend):
    assert bayes_optimal_value(k, n) == pytest.approx(brute_force_bayes_value(k, n), rel=1e-13)


def test_bayes_value_is_monotone_and_below_the_clairvoyant():
    for k in (1, 2, 3):
        values = [bayes_optimal_value(k, n) for n in range(1, 9)]
        assert all(b > a for a, b in zip(values, values[1:]))
    for n in (3, 6):
        values = [bayes_optimal_value(k, n) for k in range(1, 5)]
        assert all(b >= a for a, b in zip(values, values[1:]))
        # an agent that knew p would earn n E[max of k uniforms] = n k / (k + 1)
        # (with one arm there is nothing to learn and the two coincide)
        assert values[0] == pytest.approx(n / 2)
        assert all(v < n * k / (k + 1) for k, v in zip(range(2, 5), values[1:]))


def test_bayes_value_bounds_every_agent_and_monte_carlo_agrees(backend):
    optimum = bayes_optimal_value(3, 6)
    for agent in AGENTS:
        mean, half = mean_confidence_interval(agent.evaluate(3, 6, 40_000, np.random.default_rng(5)))
        assert mean - half <= optimum, agent


def exact_agent_value(k, n, arm_probabilities):
    """Expected total reward under the uniform prior of an agent that pulls arm ``a`` with
    probability ``arm_probabilities(state)[a]`` (state: tuple of per-arm (s, f)), by DP."""
    memo = {}

    def value(state, left):
        if left == 0:
            return 0.0
        if state not in memo:
            total = 0.0
            for a, prob in enumerate(arm_probabilities(state)):
                if prob == 0.0:
                    continue
                s, f = state[a]
                p = (s + 1) / (s + f + 2)
                win = state[:a] + ((s + 1, f),) + state[a + 1:]
                loss = state[:a] + ((s, f + 1),) + state[a + 1:]
                total += prob * (p * (1 + value(win, left - 1)) + (1 - p) * value(loss, left - 1))
            memo[state] = total
        return memo[state]

    return value(((0, 0),) * k, n)


def uniform_over_ties(scores):
    scores = np.asarray(scores)
    ties = scores == scores.max()
    return ties / ties.sum()


def greedy_probabilities(state):
    return uniform_over_ties([(s + 1) / (s + f + 2) for s, f in state])


def ucb1_probabilities(state, c=math.sqrt(2.0)):
    t = sum(s + f for s, f in state)
    # the agent's own formula and operation order, so float ties are the same ties
    scores = [np.inf if s + f == 0 else s / (s + f) + c * np.sqrt(math.log(max(t, 1)) / (s + f))
              for s, f in state]
    return uniform_over_ties(scores)


NODES, WEIGHTS = np.polynomial.legendre.leggauss(60)
X = (NODES + 1) / 2  # Gauss-Legendre on [0, 1]: exact for polynomials of degree < 120


def beta_pdf_cdf(a, b):
    """Density and CDF of Beta(a, b), integer a, b, at the nodes X (both polynomials in x)."""
    pdf = X ** (a - 1) * (1 - X) ** (b - 1) / (math.factorial(a - 1) * math.factorial(b - 1)
                                                / math.factorial(a + b - 1))
    cdf = sum(math.comb(a + b - 1, j) * X ** j * (1 - X) ** (a + b - 1 - j) for j in range(a, a + b))
    return pdf, cdf


def thompson_probabilities(state):
    """P(arm a draws the largest of independent Beta(s + 1, f + 1)), by exact quadrature."""
    dists = [beta_pdf_cdf(s + 1, f + 1) for s, f in state]
    probs = []
    for a, (pdf, _) in enumerate(dists):
        integrand = pdf * np.prod([cdf for b, (_, cdf) in enumerate(dists) if b != a], axis=0)
        probs.append(float(WEIGHTS @ integrand) / 2)
    return np.array(probs)


EXACT_POLICIES = {
    "random": lambda state: np.full(len(state), 1 / len(state)),
    "posterior-greedy": greedy_probabilities,
    "epsilon-greedy": lambda state: 0.1 / len(state) + 0.9 * greedy_probabilities(state),
    "ucb1": ucb1_probabilities,
    "thompson": thompson_probabilities,
}


def test_thompson_quadrature_is_a_distribution():
    for state in [((0, 0), (3, 1), (1, 4)), ((5, 0), (0, 5))]:
        assert thompson_probabilities(state).sum() == pytest.approx(1.0, abs=1e-12)
    # two arms: P(Beta(2, 1) > U) = 2/3
    assert thompson_probabilities(((1, 0), (0, 0)))[0] == pytest.approx(2 / 3, abs=1e-12)


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.name)
def test_every_agent_matches_its_exact_value(backend, agent):
    exact = exact_agent_value(3, 5, EXACT_POLICIES[agent.name])
    assert exact <= bayes_optimal_value(3, 5) + 1e-12
    mean, half = mean_confidence_interval(agent.evaluate(3, 5, 200_000, np.random.default_rng(8)))
    assert abs(mean - exact) < 2 * half, (mean, half, exact)


def test_bayes_value_bad_input(monkeypatch):
    with pytest.raises(ValueError, match="n_arms"):
        bayes_optimal_value(0, 3)
    with pytest.raises(ValueError, match="n_pulls"):
        bayes_optimal_value(2, 0)
    with pytest.raises(TypeError, match="n_pulls"):
        bayes_optimal_value(2, 3.0)
    monkeypatch.setattr(bl, "MAX_BAYES_STATES", 10)
    with pytest.raises(ValueError, match="belief states"):
        bayes_optimal_value(4, 9)


# ------------------------------------------------------------------ agents
@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.name)
def test_agents_return_integer_totals_and_respect_the_means(agent, backend):
    rng = np.random.default_rng(0)
    totals = agent.evaluate(4, 7, 3000, rng)
    assert totals.shape == (3000,) and totals.dtype == np.float64
    assert np.all(totals == np.round(totals)) and totals.min() >= 0 and totals.max() <= 7
    # all arms pay 0 / all pay 1
    assert np.all(agent.run_trials(np.zeros((50, 3)), 5, rng) == 0)
    assert np.all(agent.run_trials(np.ones((50, 3)), 5, rng) == 5)


@pytest.mark.parametrize("agent", [RandomAgent(), EpsilonGreedyAgent(1.0)], ids=lambda a: a.name)
def test_uniformly_random_agents_earn_the_mean_of_the_means(agent, backend):
    means = np.tile([0.1, 0.2, 0.9], (40_000, 1))
    mean, half = mean_confidence_interval(agent.run_trials(means, 3, np.random.default_rng(2)))
    assert abs(mean - 3 * 0.4) < max(half, 0.01)


def test_posterior_greedy_sticks_with_a_winner_and_breaks_ties_uniformly(backend):
    # arm 2 always pays: greedy finds it after failing on the others, and then never leaves
    means = np.zeros((30_000, 3))
    means[:, 2] = 1.0
    totals = PosteriorGreedyAgent().run_trials(means, 4, np.random.default_rng(3))
    # first pull uniform over 3 arms; after one failure uniform over the 2 untried arms
    p_first = {4: 1 / 3, 3: 2 / 3 * 1 / 2, 2: 2 / 3 * 1 / 2}
    for total, p in p_first.items():
        assert np.mean(totals == total) == pytest.approx(p, abs=0.01)


def test_ucb1_tries_every_arm_first(backend):
    means = np.zeros((200, 4))
    means[:, 1] = 1.0
    totals = UCB1Agent().run_trials(means, 4, np.random.default_rng(0))
    assert np.all(totals == 1)  # four pulls = each arm once, whatever the tie-breaks


def test_thompson_and_greedy_two_pull_distributions(backend):
    # arm 0 never pays, arm 1 always does; two pulls.  The first pull is uniform for both agents.
    # Greedy: on arm 1 it stays (2/3 > 1/2), on arm 0 it switches (1/3 < 1/2): totals 2 or 1, 1/2 each.
    # Thompson: after a win on arm 1, P(Beta(2, 1) > U) = 2/3 to stay; after a loss on arm 0,
    # P(U > Beta(1, 2)) = 2/3 to switch: P(total = 0, 1, 2) = (1/6, 1/2, 1/3).
    means = np.tile([0.0, 1.0], (60_000, 1))
    expected = {PosteriorGreedyAgent(): [0.0, 0.5, 0.5], ThompsonSamplingAgent(): [1 / 6, 1 / 2, 1 / 3]}
    for agent, probs in expected.items():
        totals = agent.run_trials(means, 2, np.random.default_rng(4)).astype(np.int64)
        np.testing.assert_allclose(np.bincount(totals, minlength=3) / len(totals), probs, atol=0.006)


def test_agents_ranking_on_the_prior(backend):
    rng = np.random.default_rng(9)
    results = {a.name: mean_confidence_interval(a.evaluate(5, 10, 30_000, rng))[0] for a in AGENTS}
    assert results["random"] == pytest.approx(5.0, abs=0.05)
    assert results["posterior-greedy"] > results["thompson"] > results["random"]
    assert results["posterior-greedy"] > results["epsilon-greedy"] > results["random"]
    assert results["ucb1"] > results["random"]


def test_agent_bad_input(backend):
    rng = np.random.default_rng(0)
    for eps in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="epsilon"):
            EpsilonGreedyAgent(eps)
    with pytest.raises(ValueError, match="c"):
        UCB1Agent(-1.0)
    agent = PosteriorGreedyAgent()
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match="arm_means"):
        agent.run_trials(np.full((2, 3), 2.0), 3, rng)
    with pytest.raises(ValueError, match="arm_means"):
        agent.run_trials(np.full(3, 0.5), 3, rng)
    with pytest.raises(ValueError, match="n_pulls"):
        agent.run_trials(np.full((2, 3), 0.5), 0, rng)
    with pytest.raises(TypeError, match="rng"):
        agent.run_trials(np.full((2, 3), 0.5), 3, 0.5)
    with pytest.raises(ValueError, match="n_trials"):
        agent.evaluate(3, 3, 0, rng)
    assert rng.bit_generator.state == state


def test_argmax_random_ties():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]] * 30_000)
    picks = bl.argmax_random_ties(scores, np.random.default_rng(0))
    freq = np.bincount(picks, minlength=5) / len(picks)
    np.testing.assert_allclose(freq, [0, 1 / 3, 1 / 3, 0, 1 / 3], atol=0.01)


@needs_cython
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), agent=st.integers(0, ref.N_AGENTS - 1),
       parameter=st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.4142135623730951, 3.0]),
       n_tasks=st.integers(0, 30), n_arms=st.integers(1, 6), n_pulls=st.integers(1, 15))
def test_backends_play_identically(seed, agent, parameter, n_tasks, n_arms, n_pulls):
    if agent == ref.AGENT_EPSILON:
        parameter = min(parameter, 1.0)
    rng = np.random.default_rng(seed)
    means = rng.random((n_tasks, n_arms))
    means[means < 0.15] = 0.0  # exact zeros and ties in the counts
    r_ref, r_core = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
    np.testing.assert_array_equal(ref.run_agent_trials(agent, parameter, means, n_pulls, r_ref),
                                  core.run_agent_trials(agent, parameter, means, n_pulls, r_core))
    assert r_ref.random() == r_core.random()


def test_kernel_bad_agent_codes(backend):
    means, rng = np.full((2, 3), 0.5), np.random.default_rng(0)
    with pytest.raises(ValueError, match="agent"):
        active.baselines.run_agent_trials(ref.N_AGENTS, 0.0, means, 3, rng)
    with pytest.raises(TypeError, match="agent"):
        active.baselines.run_agent_trials(1.0, 0.0, means, 3, rng)
    with pytest.raises(ValueError, match="epsilon"):
        active.baselines.run_agent_trials(ref.AGENT_EPSILON, 2.0, means, 3, rng)
    with pytest.raises(ValueError, match="c"):
        active.baselines.run_agent_trials(ref.AGENT_UCB1, -1.0, means, 3, rng)
    with pytest.raises(ValueError, match="parameter"):
        active.baselines.run_agent_trials(ref.AGENT_GREEDY, np.nan, means, 3, rng)


# ------------------------------------------------------------------ MDP oracle
def test_oracle_value_of_a_known_mdp():
    from metarl_fast.mdp import MDPModel

    # state 0: action 0 pays 1 and stays, action 1 pays 0 and moves to state 1 where every action
    # pays 3 and stays.  Horizon 3: go to state 1 first (0 + 3 + 3 = 6) beats staying (3).
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, :, 1] = 1.0
    R = np.array([[1.0, 0.0], [3.0, 3.0]])
    mdp = MDPModel(P=P, R=R, start=np.array([1.0, 0.0]), horizon=3)
    assert oracle_value(mdp) == pytest.approx(6.0)
    mdp = MDPModel(P=P, R=R, start=np.array([1.0, 0.0]), horizon=1)
    assert oracle_value(mdp) == pytest.approx(1.0)
    discounted = MDPModel(P=P, R=R, start=np.array([0.5, 0.5]), horizon=2, gamma=0.5)
    # from 0: max(1 + 0.5 * 1, 0 + 0.5 * 3) = 1.5; from 1: 3 + 1.5
    assert oracle_value(discounted) == pytest.approx(0.5 * 1.5 + 0.5 * 4.5)
    with pytest.raises(TypeError, match="MDPModel"):
        oracle_value("not an mdp")


# ------------------------------------------------------------------ summaries
def test_compare_bandit_agents_uses_common_tasks(backend):
    agents = bl.default_bandit_agents()
    assert set(agents) == {"random", "posterior-greedy", "epsilon-greedy", "ucb1", "thompson"}
    table = bl.compare_bandit_agents(agents, 3, 5, 20_000, np.random.default_rng(0))
    assert table["bayes-optimal"] == (bayes_optimal_value(3, 5), 0.0)
    for name in agents:
        mean, half = table[name]
        assert 0 < half < 0.05 and mean - half <= table["bayes-optimal"][0]
    # the tasks are drawn once: the random agent's result is the one on exactly those tasks
    rng = np.random.default_rng(0)
    means = rng.random((20_000, 3))
    assert table["random"][0] == np.mean(agents["random"].run_trials(means, 5, rng))
    with pytest.raises(TypeError, match="agents"):
        bl.compare_bandit_agents({}, 3, 5, 10, rng)
    with pytest.raises(TypeError, match="run_trials"):
        bl.compare_bandit_agents({"x": object()}, 3, 5, 10, rng)
    with pytest.raises(ValueError, match="n_trials"):
        bl.compare_bandit_agents(agents, 3, 5, 1, rng)


def test_compare_bandit_agents_omits_an_intractable_ceiling(monkeypatch):
    monkeypatch.setattr(bl, "MAX_BAYES_STATES", 5)
    table = bl.compare_bandit_agents({"random": RandomAgent()}, 4, 11, 100, np.random.default_rng(0))
    assert set(table) == {"random"}


def test_mean_confidence_interval():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    mean, half = mean_confidence_interval(x)
    assert mean == 2.5
    assert half == pytest.approx(1.959963984540054 * np.std(x, ddof=1) / 2)
    assert mean_confidence_interval(x, level=0.5)[1] < half
    with pytest.raises(ValueError, match="values"):
        mean_confidence_interval([1.0])
    with pytest.raises(ValueError, match="values"):
        mean_confidence_interval([1.0, np.nan])
    with pytest.raises(ValueError, match="level"):
        mean_confidence_interval(x, level=1.0)
    # coverage at a fixed seed: about 95% of intervals contain the true mean
    rng = np.random.default_rng(0)
    samples = rng.random((2000, 100))
    covered = [abs(m - 0.5) <= h for m, h in map(mean_confidence_interval, samples)]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)
