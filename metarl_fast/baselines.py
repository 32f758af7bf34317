"""Reference agents and exact ceilings that every meta-learning result is reported beside.

Bernoulli bandits (a task is ``k`` arm means ``p``; a trial is ``n_pulls`` pulls; pulling arm ``a``
gives reward 1 if ``u < p[a]`` with ``u = rng.random()``, else 0):

- :class:`RandomAgent`, :class:`PosteriorGreedyAgent`, :class:`EpsilonGreedyAgent`,
  :class:`UCB1Agent`, :class:`ThompsonSamplingAgent`: each plays whole trials on a batch of tasks
  (:meth:`BanditAgent.run_trials`) and returns every trial's total reward;
- :func:`bayes_optimal_value`: the exact expected total reward of the Bayes-optimal agent under
  independent uniform (Beta(1, 1)) priors, the ceiling no agent can beat on tasks drawn from that
  prior (``p ~ U[0, 1]^k``).

Finite MDPs: :func:`oracle_value`, the optimal return of an agent that knows the
:class:`~metarl_fast.mdp.MDPModel` (finite-horizon value iteration).

:func:`mean_confidence_interval` summarises per-trial results the same way for every agent.

Random draws per pull, in this order, each as one vector ``rng.random(n_tasks)`` (task order) or
``rng.beta`` call: the agent's choice (documented per agent), then the rewards.
"""
import math
import statistics
from functools import lru_cache

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference.incontext import check_arm_means

__all__ = ["BanditAgent", "RandomAgent", "PosteriorGreedyAgent", "EpsilonGreedyAgent", "UCB1Agent",
           "ThompsonSamplingAgent", "bayes_optimal_value", "oracle_value", "mean_confidence_interval",
           "sample_arm_means"]


def sample_arm_means(n_tasks, n_arms, rng):
    """Arm means of ``n_tasks`` tasks from the uniform prior: ``rng.random((n_tasks, n_arms))``."""
    n_tasks = _validate.positive_int(n_tasks, "n_tasks")
    n_arms = _validate.positive_int(n_arms, "n_arms")
    _validate.check_rng(rng)
    return rng.random((n_tasks, n_arms))


def argmax_random_ties(scores, rng):
    """Row-wise argmax of (B, K) ``scores``, ties broken uniformly with one ``rng.random()`` per row.

    Among the ``m`` maximal entries of a row, the ``floor(u * m)``-th (left to right) is chosen.
    Returns int64 (B,).
    """
    u = rng.random(scores.shape[0])
    ties = scores == scores.max(axis=1, keepdims=True)
    n_ties = ties.sum(axis=1)
    pick = np.minimum((u * n_ties).astype(np.int64), n_ties - 1)
    return (ties.cumsum(axis=1) > pick[:, None]).argmax(axis=1).astype(np.int64)


class BanditAgent:
    """Base class: an agent that plays Bernoulli bandit trials from per-arm counts.

    Subclasses implement ``_choose(successes, failures, t, n_pulls, rng) -> int64 (B,)`` from the
    float64 (B, K) counts before pull ``t``.
    """

    name = None

    def run_trials(self, arm_means, n_pulls, rng):
        """Play one trial of ``n_pulls`` pulls on every task.

        Parameters
        ----------
        arm_means : float (n_tasks, n_arms), values in [0, 1]
        n_pulls : int >= 1
        rng : numpy.random.Generator

        Returns
        -------
        totals : float64 (n_tasks,)
            Total reward of each trial.
        """
        p = check_arm_means(arm_means)
        n_pulls = _validate.positive_int(n_pulls, "n_pulls")
        _validate.check_rng(rng)
        n_tasks, n_arms = p.shape
        successes = np.zeros((n_tasks, n_arms))
        failures = np.zeros((n_tasks, n_arms))
        totals = np.zeros(n_tasks)
        rows = np.arange(n_tasks)
        for t in range(n_pulls):
            arms = self._choose(successes, failures, t, n_pulls, rng)
            rewards = (rng.random(n_tasks) < p[rows, arms]).astype(np.float64)
            successes[rows, arms] += rewards
            failures[rows, arms] += 1.0 - rewards
            totals += rewards
        return totals

    def evaluate(self, n_arms, n_pulls, n_trials, rng):
        """Total rewards of ``n_trials`` trials on tasks drawn from the uniform prior.

        Arm means come first from ``rng.random((n_trials, n_arms))``; returns float64 (n_trials,).
        """
        n_trials = _validate.positive_int(n_trials, "n_trials")
        n_pulls = _validate.positive_int(n_pulls, "n_pulls")
        return self.run_trials(sample_arm_means(n_trials, n_arms, rng), n_pulls, rng)

    def __repr__(self):
        return f"{type(self).__name__}()"


class RandomAgent(BanditAgent):
    """Pulls an arm uniformly at random: ``floor(u * K)`` with one uniform per pull."""

    name = "random"

    def _choose(self, successes, failures, t, n_pulls, rng):
        n_arms = successes.shape[1]
        return np.minimum((rng.random(successes.shape[0]) * n_arms).astype(np.int64), n_arms - 1)


def _posterior_mean(successes, failures):
    return (successes + 1.0) / (successes + failures + 2.0)


class PosteriorGreedyAgent(BanditAgent):
    """Pulls the arm of largest posterior mean ``(s + 1) / (c + 2)``; ties uniformly at random.

    One uniform per pull (:func:`argmax_random_ties`).  Never explores on purpose.
    """

    name = "posterior-greedy"

    def _choose(self, successes, failures, t, n_pulls, rng):
        return argmax_random_ties(_posterior_mean(successes, failures), rng)


class EpsilonGreedyAgent(BanditAgent):
    """With probability ``epsilon`` a uniformly random arm, otherwise posterior-greedy.

    Two uniforms per pull: ``rng.random(B)`` decides to explore (``u < epsilon``), then one more
    ``rng.random(B)`` picks the random arm (``floor(u' K)``) or breaks the greedy ties.
    """

    name = "epsilon-greedy"

    def __init__(self, epsilon=0.1):
        self.epsilon = _validate.finite_float(epsilon, "epsilon", low=0.0, high=1.0)

    def _choose(self, successes, failures, t, n_pulls, rng):
        n_tasks, n_arms = successes.shape
        explore = rng.random(n_tasks) < self.epsilon
        scores = _posterior_mean(successes, failures)
        # exploring rows: all arms tie, so the tie-break uniform is exactly floor(u' K)
        scores[explore] = 0.0
        return argmax_random_ties(scores, rng)

    def __repr__(self):
        return f"EpsilonGreedyAgent(epsilon={self.epsilon})"


class UCB1Agent(BanditAgent):
    """UCB1 (Auer et al. 2002): every arm once, then ``mean + c * sqrt(ln t / n_a)``.

    ``mean`` is the empirical mean, ``t`` the number of pulls made so far, ``c = sqrt(2)`` in the
    paper.  Untried arms come first; ties (untried arms included) are broken uniformly at random
    with one uniform per pull.
    """

    name = "ucb1"

    def __init__(self, c=math.sqrt(2.0)):
        self.c = _validate.finite_float(c, "c", low=0.0)

    def _choose(self, successes, failures, t, n_pulls, rng):
        counts = successes + failures
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = successes / counts + self.c * np.sqrt(math.log(max(t, 1)) / counts)
        scores[counts == 0] = np.inf
        return argmax_random_ties(scores, rng)

    def __repr__(self):
        return f"UCB1Agent(c={self.c})"


class ThompsonSamplingAgent(BanditAgent):
    """Thompson sampling: draw ``theta ~ Beta(s + 1, f + 1)`` per arm, pull the largest.

    One ``rng.beta(successes + 1, failures + 1)`` call per pull, (B, K) values in row-major order
    (ties have probability zero; the first maximiser is taken).
    """

    name = "thompson"

    def _choose(self, successes, failures, t, n_pulls, rng):
        return rng.beta(successes + 1.0, failures + 1.0).argmax(axis=1).astype(np.int64)


# ------------------------------------------------------------------ exact Bayes-optimal value
MAX_BAYES_STATES = 5_000_000


@lru_cache(maxsize=64)
def _bayes_optimal_value(n_arms, n_pulls):
    # Arms are exchangeable under the prior, so a belief state is the sorted multiset of per-arm
    # (successes, failures); the pulls left follow from the total count, so it needs no key.
    cache = {}

    def value(state, remaining):
        if remaining == 1:  # the last pull is greedy
            return max((s + 1) / (s + f + 2) for s, f in state)
        v = cache.get(state)
        if v is not None:
            return v
        best = 0.0
        previous = None
        for i, arm in enumerate(state):
            if arm == previous:  # identical arms have identical values
                continue
            previous = arm
            s, f = arm
            p = (s + 1) / (s + f + 2)
            rest = state[:i] + state[i + 1:]
            win = tuple(sorted(rest + ((s + 1, f),)))
            loss = tuple(sorted(rest + ((s, f + 1),)))
            q = p * (1.0 + value(win, remaining - 1)) + (1.0 - p) * value(loss, remaining - 1)
            if q > best:
                best = q
        if len(cache) >= MAX_BAYES_STATES:
            raise ValueError(f"bayes_optimal_value({n_arms}, {n_pulls}) needs more than "
                             f"{MAX_BAYES_STATES} belief states; use fewer arms or pulls")
        cache[state] = best
        return best

    return value(((0, 0),) * n_arms, n_pulls)


def bayes_optimal_value(n_arms, n_pulls):
    """Exact expected total reward of the Bayes-optimal agent on a Bernoulli bandit.

    The arm means are independent ``U[0, 1]`` (Beta(1, 1) priors) and unknown; the agent
    maximises the expected total reward of ``n_pulls`` pulls.  Computed by dynamic programming
    over posterior counts (``V(state) = max_a p_a (1 + V(win_a)) + (1 - p_a) V(loss_a)`` with
    ``p_a = (s_a + 1) / (c_a + 2)``), using the exchangeability of the arms: memoised, exact up
    to float rounding.  Meant for small problems (``(5, 10)`` takes ~20 ms, ``(5, 15)`` ~0.4 s);
    raises ValueError when more than ``MAX_BAYES_STATES`` belief states would be needed.

    Parameters
    ----------
    n_arms, n_pulls : int >= 1

    Returns
    -------
    float
    """
    n_arms = _validate.positive_int(n_arms, "n_arms")
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    return _bayes_optimal_value(n_arms, n_pulls)


# ------------------------------------------------------------------ MDP oracle
def oracle_value(mdp):
    """Expected return of the optimal policy of a known finite MDP (value iteration over time).

    Parameters
    ----------
    mdp : metarl_fast.mdp.MDPModel

    Returns
    -------
    float
        ``start @ V[0]`` with ``V`` from :func:`metarl_fast.exact.optimal_value`.
    """
    from metarl_fast import exact  # exact imports nothing from here; deferred to keep imports light

    V, _, _ = exact.optimal_value(mdp)
    return float(mdp.start @ V[0])


# ------------------------------------------------------------------ summaries
def mean_confidence_interval(values, level=0.95):
    """Mean of ``values`` and the half-width of its normal-approximation confidence interval.

    Parameters
    ----------
    values : float array (N,), N >= 2, finite
    level : float in (0, 1)

    Returns
    -------
    (mean, half_width) : (float, float)
        The interval is ``mean +- half_width``, ``half_width = z * std(ddof=1) / sqrt(N)``.
    """
    x = _validate.float_array(values, "values", ndim=1)
    if x.shape[0] < 2:
        raise ValueError(f"values needs at least 2 entries, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contains NaN or inf")
    level = _validate.finite_float(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    x = x.astype(np.float64, copy=False)
    return float(x.mean()), float(z * x.std(ddof=1) / math.sqrt(x.shape[0]))
