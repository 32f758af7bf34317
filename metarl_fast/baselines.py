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

The agents run in the kernels of the active backend (``active.baselines``); the random draws per
pull, identical in both, are specified in :mod:`metarl_fast.reference.baselines`: the agent's
choices for every task, then the rewards.
"""
import math
import statistics
from functools import lru_cache

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.reference import baselines as _ref
from metarl_fast.reference.baselines import argmax_random_ties

__all__ = ["argmax_random_ties", "BanditAgent", "RandomAgent", "PosteriorGreedyAgent",
           "EpsilonGreedyAgent", "UCB1Agent", "ThompsonSamplingAgent", "bayes_optimal_value", "oracle_value", "mean_confidence_interval",
           "sample_arm_means", "default_bandit_agents", "compare_bandit_agents"]


def sample_arm_means(n_tasks, n_arms, rng):
    """Arm means of ``n_tasks`` tasks from the uniform prior: ``rng.random((n_tasks, n_arms))``."""
    rng = _validate.as_generator(rng)
    n_tasks = _validate.positive_int(n_tasks, "n_tasks")
    n_arms = _validate.positive_int(n_arms, "n_arms")
    _validate.check_rng(rng)
    return rng.random((n_tasks, n_arms))


class BanditAgent:
    """Base class: an agent that plays Bernoulli bandit trials from per-arm counts.

    Every trial of a call runs in one kernel of the active backend
    (``active.baselines.run_agent_trials``; draw order in :mod:`metarl_fast.reference.baselines`).
    """

    name = None
    _code = None

    def _parameter(self):
        return 0.0

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
        rng = _validate.as_generator(rng)
        return active.baselines.run_agent_trials(self._code, self._parameter(), arm_means,
                                                 n_pulls, rng)

    def evaluate(self, n_arms, n_pulls, n_trials, rng):
        """Total rewards of ``n_trials`` trials on tasks drawn from the uniform prior.

        Arm means come first from ``rng.random((n_trials, n_arms))``; returns float64 (n_trials,).
        """
        rng = _validate.as_generator(rng)
        n_trials = _validate.positive_int(n_trials, "n_trials")
        n_pulls = _validate.positive_int(n_pulls, "n_pulls")
        return self.run_trials(sample_arm_means(n_trials, n_arms, rng), n_pulls, rng)

    def __repr__(self):
        return f"{type(self).__name__}()"


class RandomAgent(BanditAgent):
    """Pulls an arm uniformly at random: ``floor(u * K)`` with one uniform per pull."""

    name = "random"
    _code = _ref.AGENT_RANDOM


class PosteriorGreedyAgent(BanditAgent):
    """Pulls the arm of largest posterior mean ``(s + 1) / (c + 2)``; ties uniformly at random.

    One uniform per pull (:func:`argmax_random_ties`).  Never explores on purpose.
    """

    name = "posterior-greedy"
    _code = _ref.AGENT_GREEDY


class EpsilonGreedyAgent(BanditAgent):
    """With probability ``epsilon`` a uniformly random arm, otherwise posterior-greedy.

    Two uniforms per pull: one decides to explore (``u < epsilon``), one more picks the random
    arm (``floor(u' K)``) or breaks the greedy ties.
    """

    name = "epsilon-greedy"
    _code = _ref.AGENT_EPSILON

    def __init__(self, epsilon=0.1):
        self.epsilon = _validate.finite_float(epsilon, "epsilon", low=0.0, high=1.0)

    def _parameter(self):
        return self.epsilon

    def __repr__(self):
        return f"EpsilonGreedyAgent(epsilon={self.epsilon})"


class UCB1Agent(BanditAgent):
    """UCB1 (Auer et al. 2002): every arm once, then ``mean + c * sqrt(ln t / n_a)``.

    ``mean`` is the empirical mean, ``t`` the number of pulls made so far, ``c = sqrt(2)`` in the
    paper.  Untried arms come first; ties (untried arms included) are broken uniformly at random
    with one uniform per pull.
    """

    name = "ucb1"
    _code = _ref.AGENT_UCB1

    def __init__(self, c=math.sqrt(2.0)):
        self.c = _validate.finite_float(c, "c", low=0.0)

    def _parameter(self):
        return self.c

    def __repr__(self):
        return f"UCB1Agent(c={self.c})"


class ThompsonSamplingAgent(BanditAgent):
    """Thompson sampling: draw ``theta ~ Beta(s + 1, f + 1)`` per arm, pull the largest.

    ``n_arms`` Beta draws per task and pull, in task-then-arm order, as one
    ``rng.beta(successes + 1, failures + 1)`` call (ties have probability zero; the first
    maximiser is taken).
    """

    name = "thompson"
    _code = _ref.AGENT_THOMPSON


# ------------------------------------------------------------------ exact Bayes-optimal value
MAX_BAYES_STATES = 5_000_000


@lru_cache(maxsize=64)
def _bayes_optimal_value(backend_module, n_arms, n_pulls):
    return backend_module.bayes_optimal_value(n_arms, n_pulls)


def bayes_optimal_value(n_arms, n_pulls):
    """Exact expected total reward of the Bayes-optimal agent on a Bernoulli bandit.

    The arm means are independent ``U[0, 1]`` (Beta(1, 1) priors) and unknown; the agent
    maximises the expected total reward of ``n_pulls`` pulls.  Computed by dynamic programming
    over posterior counts (``V(state) = max_a p_a (1 + V(win_a)) + (1 - p_a) V(loss_a)`` with
    ``p_a = (s_a + 1) / (c_a + 2)``), using the exchangeability of the arms: memoised, exact up
    to float rounding.  The kernel of the active backend (``active.baselines``) sweeps the belief
    states level by level (compiled: ``(5, 25)`` ~0.15 s, ``(2, 100)`` ~0.07 s).  The number of
    belief states with two or more pulls left is counted first (no enumeration,
    :func:`metarl_fast.reference.baselines.bayes_state_count`); ValueError, naming it, when it is
    above ``MAX_BAYES_STATES`` (``(5, 50)`` needs 469,941,901: refused in milliseconds).

    Parameters
    ----------
    n_arms, n_pulls : int >= 1

    Returns
    -------
    float
    """
    n_arms = _validate.positive_int(n_arms, "n_arms")
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    # arms never pulled are exchangeable and n_pulls pulls reach at most n_pulls arms, so a fresh
    # arm is always at hand with n_pulls of them: more arms than pulls change nothing
    n_arms = min(n_arms, n_pulls)
    count, exact = _ref.bayes_state_count(n_arms, n_pulls, limit=MAX_BAYES_STATES)
    if count > MAX_BAYES_STATES:
        needs = f"{count:,}" if exact else f"more than {count:,}"
        raise ValueError(f"bayes_optimal_value({n_arms}, {n_pulls}) needs {needs} belief states, "
                         f"above the limit MAX_BAYES_STATES = {MAX_BAYES_STATES:,}; use fewer arms "
                         f"or pulls")
    return _bayes_optimal_value(active.baselines, n_arms, n_pulls)


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
def default_bandit_agents():
    """One of each baseline agent, keyed by name (epsilon 0.1, UCB1 with c = sqrt(2))."""
    agents = [RandomAgent(), PosteriorGreedyAgent(), EpsilonGreedyAgent(0.1), UCB1Agent(),
              ThompsonSamplingAgent()]
    return {agent.name: agent for agent in agents}


def compare_bandit_agents(agents, n_arms, n_pulls, n_trials, rng, level=0.95):
    """Evaluate agents on the same tasks and put the exact Bayes-optimal value beside them.

    Parameters
    ----------
    agents : dict name -> agent
        Anything with ``run_trials(arm_means, n_pulls, rng)`` (the baselines of this module,
        :class:`metarl_fast.incontext.InContextBanditLearner`, ...).
    n_arms, n_pulls, n_trials : int >= 1
    rng : numpy.random.Generator
        Draws the ``(n_trials, n_arms)`` arm means once (common to every agent), then each agent's
        trials in the order of ``agents``.
    level : float in (0, 1)

    Returns
    -------
    dict name -> (mean, half_width)
        Per agent, the mean total reward and its confidence half-width; plus
        ``"bayes-optimal": (value, 0.0)`` when :func:`bayes_optimal_value` is tractable.
    """
    rng = _validate.as_generator(rng)
    n_arms = _validate.positive_int(n_arms, "n_arms")
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    n_trials = _validate.positive_int(n_trials, "n_trials", minimum=2)
    if not isinstance(agents, dict) or not agents:
        raise TypeError("agents must be a non-empty dict name -> agent")
    for name, agent in agents.items():
        if not callable(getattr(agent, "run_trials", None)):
            raise TypeError(f"agents[{name!r}] has no run_trials method")
    arm_means = sample_arm_means(n_trials, n_arms, rng)
    results = {name: mean_confidence_interval(agent.run_trials(arm_means, n_pulls, rng), level)
               for name, agent in agents.items()}
    try:
        results["bayes-optimal"] = (bayes_optimal_value(n_arms, n_pulls), 0.0)
    except ValueError:
        pass  # too many belief states: no exact ceiling for this size
    return results


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
