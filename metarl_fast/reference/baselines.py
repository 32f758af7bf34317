"""Bandit baseline agents in pure NumPy: the executable specification of ``_core/baselines.pyx``.

:func:`run_agent_trials` plays one trial of ``n_pulls`` pulls on every task (a row of
``arm_means``) with one of the classic agents, all tasks in lock step.  At each pull the agent
first chooses an arm for every task, then every task draws its reward with one ``rng.random()``
uniform ``u`` (in task order): reward ``1`` if ``u < p[arm]`` else ``0``.  The choice draws, each a
vector ``rng.random(n_tasks)`` in task order unless said otherwise:

=================  =========================================================================
``AGENT_RANDOM``   one uniform ``u``: arm ``floor(u K)``
``AGENT_GREEDY``   largest posterior mean ``(s + 1) / (c + 2)``, ties by one uniform
``AGENT_EPSILON``  one uniform ``e``: explore if ``e < epsilon``; then one more uniform, which
                   picks the arm ``floor(u K)`` when exploring, or breaks the greedy ties
``AGENT_UCB1``     untried arms first, else ``s / c + c_ucb sqrt(ln t / c)`` (``t`` pulls made);
                   ties by one uniform
``AGENT_THOMPSON`` ``rng.beta(s + 1, f + 1)`` over the (n_tasks, K) counts in row-major order;
                   the first largest sample
=================  =========================================================================

Ties among the ``m`` maximal arms of a task go to the ``floor(u m)``-th of them, left to right
(:func:`argmax_random_ties`).  ``parameter`` is ``epsilon`` for ``AGENT_EPSILON``, ``c_ucb`` for
``AGENT_UCB1`` and ignored otherwise.
"""
import math

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference.incontext import check_arm_means

AGENT_RANDOM = 0
AGENT_GREEDY = 1
AGENT_EPSILON = 2
AGENT_UCB1 = 3
AGENT_THOMPSON = 4
N_AGENTS = 5


def check_agent_inputs(agent, parameter, arm_means, n_pulls, rng):
    """The shared validation of :func:`run_agent_trials` (both backends)."""
    if isinstance(agent, (bool, np.bool_)) or not isinstance(agent, (int, np.integer)):
        raise TypeError(f"agent must be an int agent code, got {type(agent).__name__}")
    if not 0 <= agent < N_AGENTS:
        raise ValueError(f"agent must be one of 0 .. {N_AGENTS - 1}, got {agent}")
    if agent == AGENT_EPSILON:
        parameter = _validate.finite_float(parameter, "epsilon", low=0.0, high=1.0)
    elif agent == AGENT_UCB1:
        parameter = _validate.finite_float(parameter, "c", low=0.0)
    else:
        parameter = _validate.finite_float(parameter, "parameter")
    p = check_arm_means(arm_means)
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    _validate.check_rng(rng)
    return int(agent), parameter, p, n_pulls


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


def _choose(agent, parameter, successes, failures, t, rng):
    n_tasks, n_arms = successes.shape
    if agent == AGENT_RANDOM:
        return np.minimum((rng.random(n_tasks) * n_arms).astype(np.int64), n_arms - 1)
    if agent == AGENT_THOMPSON:
        return rng.beta(successes + 1.0, failures + 1.0).argmax(axis=1).astype(np.int64)
    if agent == AGENT_UCB1:
        counts = successes + failures
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = successes / counts + parameter * np.sqrt(math.log(max(t, 1)) / counts)
        scores[counts == 0] = np.inf
        return argmax_random_ties(scores, rng)
    scores = (successes + 1.0) / (successes + failures + 2.0)
    if agent == AGENT_EPSILON:
        explore = rng.random(n_tasks) < parameter
        scores[explore] = 0.0  # every arm ties: the tie-break uniform picks floor(u K)
    return argmax_random_ties(scores, rng)


def run_agent_trials(agent, parameter, arm_means, n_pulls, rng):
    """Total reward of one trial per task with a baseline agent (see the module docstring).

    Parameters
    ----------
    agent : int, one of AGENT_RANDOM, AGENT_GREEDY, AGENT_EPSILON, AGENT_UCB1, AGENT_THOMPSON
    parameter : float
        ``epsilon`` in [0, 1] (AGENT_EPSILON), ``c >= 0`` (AGENT_UCB1), else unused (finite).
    arm_means : float (n_tasks, n_arms), values in [0, 1]
    n_pulls : int >= 1
    rng : numpy.random.Generator

    Returns
    -------
    totals : float64 (n_tasks,)
    """
    agent, parameter, p, n_pulls = check_agent_inputs(agent, parameter, arm_means, n_pulls, rng)
    n_tasks, n_arms = p.shape
    successes = np.zeros((n_tasks, n_arms))
    failures = np.zeros((n_tasks, n_arms))
    totals = np.zeros(n_tasks)
    rows = np.arange(n_tasks)
    for t in range(n_pulls):
        arms = _choose(agent, parameter, successes, failures, t, rng)
        rewards = (rng.random(n_tasks) < p[rows, arms]).astype(np.float64)
        successes[rows, arms] += rewards
        failures[rows, arms] += 1.0 - rewards
        totals += rewards
    return totals
