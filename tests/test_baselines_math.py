"""Bandit baselines against mathematics alone: the Bayes-optimal value against an explicit search
over every deterministic policy tree evaluated with Beta integrals, the agents' first pulls and
outcome distributions worked out by hand and checked by a binomial bound, and the edge cases
(one arm, one pull, no tasks)."""
import itertools
import math

import numpy as np
import pytest

from metarl_fast._backend import active
from metarl_fast.baselines import (EpsilonGreedyAgent, PosteriorGreedyAgent, RandomAgent,
                                   ThompsonSamplingAgent, UCB1Agent, bayes_optimal_value)
from metarl_fast.reference import baselines as ref

AGENTS = [RandomAgent(), PosteriorGreedyAgent(), EpsilonGreedyAgent(0.3), UCB1Agent(),
          ThompsonSamplingAgent()]


def binomial_ok(count, n, p, z=5.0):
    return abs(count - n * p) <= z * math.sqrt(n * p * (1.0 - p)) + 1.0


def assert_distribution(totals, probs):
    counts = np.bincount(totals.astype(np.int64), minlength=len(probs))
    assert len(counts) == len(probs), counts
    for k, p in enumerate(probs):
        assert binomial_ok(counts[k], len(totals), p), (k, counts / len(totals), probs)


# ------------------------------------------------------------------ Bayes-optimal value
def beta_integral(s, f):
    """int_0^1 p^s (1 - p)^f dp = s! f! / (s + f + 1)!"""
    return math.factorial(s) * math.factorial(f) / math.factorial(s + f + 1)


def policy_tree_value(k, n, choices):
    """Expected total reward under p ~ U[0,1]^k of the deterministic policy that pulls
    ``choices[node]`` at each node of its decision tree (nodes numbered breadth first: the
    children of node j are 2 j + 1 (failure) and 2 j + 2 (success))."""
    value = 0.0
    for outcomes in itertools.product((0, 1), repeat=n):
        counts = [[0, 0] for _ in range(k)]  # successes, failures per arm
        node = 0
        for r in outcomes:
            a = choices[node]
            counts[a][0 if r else 1] += 1
            node = 2 * node + 1 + r
        prob = math.prod(beta_integral(s, f) for s, f in counts)  # P(this outcome sequence)
        value += prob * sum(outcomes)
    return value


@pytest.mark.parametrize("k,n", [(1, 3), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)])
def test_bayes_value_is_the_best_of_every_policy_tree(k, n, backend):
    n_nodes = 2 ** n - 1
    best = max(policy_tree_value(k, n, choices)
               for choices in itertools.product(range(k), repeat=n_nodes))
    assert bayes_optimal_value(k, n) == pytest.approx(best, rel=1e-13)


def test_bayes_value_hand_case_two_arms_three_pulls(backend):
    # pull arm 0 (1/2); after a win stay (2/3), after a loss switch (1/2): 7/12.  The third pull
    # takes the largest posterior mean: after W,W 3/4; W,L 1/2 (a tie); L,W 2/3; L,L 1/3, with
    # probabilities 1/2 * (2/3, 1/3) and 1/2 * (1/2, 1/2): 1/3 + 1/4 = 7/12.  Total 5/3.
    assert bayes_optimal_value(2, 3) == pytest.approx(5 / 3, rel=1e-14)


# ------------------------------------------------------------------ agents by hand
def test_first_pull_is_uniform_for_every_agent(backend):
    # arm 0 always pays, the others never: after one pull the total says which arm was pulled
    means = np.tile([1.0, 0.0, 0.0], (30_000, 1))
    for agent in AGENTS:
        totals = agent.run_trials(means, 1, np.random.default_rng(1))
        assert_distribution(totals, [2 / 3, 1 / 3])


def test_ucb1_tries_untried_arms_uniformly(backend):
    # second pull: uniform over the two untried arms whatever the first reward
    means = np.tile([1.0, 0.0, 0.0], (30_000, 1))
    totals = UCB1Agent().run_trials(means, 2, np.random.default_rng(2))
    assert_distribution(totals, [1 / 3, 2 / 3])
    np.testing.assert_array_equal(UCB1Agent().run_trials(means[:500], 3, np.random.default_rng(3)), 1.0)


def test_ucb1_scores_by_hand(backend):
    # c = 0: after trying both arms once, the empirical mean decides: arm 0 (mean 1) forever
    means = np.tile([1.0, 0.0], (2000, 1))
    np.testing.assert_array_equal(UCB1Agent(0.0).run_trials(means, 6, np.random.default_rng(4)), 5.0)
    # large c: the bonus sqrt(ln t / n) dominates, pulls alternate between the least-pulled arms:
    # after 2 pulls (one each) t = 2 and the bonuses tie, so the tie-break picks uniformly, ...
    # with 4 pulls each arm is pulled exactly twice (counts 1,1 -> tie -> 2,1 -> the other)
    np.testing.assert_array_equal(UCB1Agent(1e6).run_trials(means, 4, np.random.default_rng(5)), 2.0)
    # a moderate c: mean 0 arm (n = 1) has score c sqrt(ln 2) < 1 + c sqrt(ln 2); the winner is
    # kept while 1 + c sqrt(ln t / n_1) >= c sqrt(ln t / 1); with c = 1 that holds up to t = 20
    np.testing.assert_array_equal(UCB1Agent(1.0).run_trials(means[:200], 5, np.random.default_rng(6)), 4.0)


def test_epsilon_greedy_two_pull_distribution(backend):
    # means (1, 0), epsilon .3: first pull uniform; the second is the greedy arm 0 with
    # probability .7 + .3 / 2 = .85 whatever happened (a win on 0 or a loss on 1 both favour 0)
    means = np.tile([1.0, 0.0], (40_000, 1))
    totals = EpsilonGreedyAgent(0.3).run_trials(means, 2, np.random.default_rng(7))
    assert_distribution(totals, [0.5 * 0.15, 0.5, 0.5 * 0.85])
    # epsilon 0 is posterior-greedy: after the first pull the second is always arm 0
    totals = EpsilonGreedyAgent(0.0).run_trials(means, 2, np.random.default_rng(8))
    assert_distribution(totals, [0.0, 0.5, 0.5])


def test_epsilon_greedy_explore_frequency(backend):
    # three arms, only arm 2 pays; once it has won, greedy keeps it; every later pull leaves it
    # with probability epsilon * 2/3.  Over pulls 2..4 after a first-pull win: total 4 with
    # probability (1 - .2)^3 when epsilon = .3
    means = np.tile([0.0, 0.0, 1.0], (60_000, 1))
    totals = EpsilonGreedyAgent(0.3).run_trials(means, 4, np.random.default_rng(9))
    # P(total = 4) = P(first pull arm 2) * P(never leave) = (1/3) * .8^3
    assert binomial_ok(np.sum(totals == 4), len(totals), (1 / 3) * 0.8 ** 3)


def test_random_agent_totals_are_binomial(backend):
    means = np.tile([0.2, 0.8], (40_000, 1))  # each pull pays with probability .5
    totals = RandomAgent().run_trials(means, 3, np.random.default_rng(10))
    assert_distribution(totals, [1 / 8, 3 / 8, 3 / 8, 1 / 8])


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.name)
def test_one_arm_every_agent_is_binomial(backend, agent):
    totals = agent.run_trials(np.full((30_000, 1), 0.25), 2, np.random.default_rng(11))
    assert_distribution(totals, [0.5625, 0.375, 0.0625])


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.name)
def test_no_tasks_and_reward_draws(backend, agent):
    rng = np.random.default_rng(12)
    assert agent.run_trials(np.zeros((0, 3)), 4, rng).shape == (0,)
    # one pull per task consumes the choice draws then one uniform per task for the reward:
    # reward 1 iff u < p[arm]; with all means equal the arm does not matter
    means = np.full((5, 3), 0.5)
    r1, r2 = np.random.default_rng(13), np.random.default_rng(13)
    totals = active.baselines.run_agent_trials(agent._code, agent._parameter(), means, 1, r1)
    if agent.name == "thompson":
        r2.beta(np.ones((5, 3)), np.ones((5, 3)))
    else:
        r2.random(5 * (2 if agent.name == "epsilon-greedy" else 1))
    np.testing.assert_array_equal(totals, (r2.random(5) < 0.5).astype(float))
    assert r1.random() == r2.random()


def test_argmax_random_ties_by_hand():
    scores = np.array([[0.0, 2.0, 1.0, 2.0]] * 4)
    rng = np.random.default_rng(0)
    u = np.random.default_rng(0).random(4)
    got = ref.argmax_random_ties(scores, rng)
    np.testing.assert_array_equal(got, np.where(u < 0.5, 1, 3))
    single = ref.argmax_random_ties(np.array([[5.0]]), np.random.default_rng(1))
    np.testing.assert_array_equal(single, [0])
