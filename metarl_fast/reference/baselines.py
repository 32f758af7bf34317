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
from metarl_fast.reference.incontext import MAX_PULLS, check_arm_means

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
    if n_pulls > MAX_PULLS:  # the in-context learners' bound: a trial is pulls x tasks of work
        raise ValueError(f"n_pulls must be <= {MAX_PULLS:,}, got {n_pulls:,}")
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


# ------------------------------------------------------------------ exact Bayes-optimal value
# A belief state of the Bayes-optimal agent (independent Beta(1, 1) priors) is the multiset of the
# per-arm (successes, failures) counts: the arms are exchangeable, so states that differ by a
# permutation of the arms share one value.  Its total count t is the number of pulls made; the
# pulls left are n_pulls - t.  The states with at least two pulls left (t = 0 .. n_pulls - 2) are
# the ones the dynamic programme memoises; those with one pull left are valued greedily.
def _check_bayes_inputs(n_arms, n_pulls):
    n_arms = _validate.positive_int(n_arms, "n_arms")
    if isinstance(n_pulls, (bool, np.bool_)) or not isinstance(n_pulls, (int, np.integer)):
        raise TypeError(f"n_pulls must be an int, got {type(n_pulls).__name__}")
    if n_pulls < 0:
        raise ValueError(f"n_pulls must be >= 0, got {n_pulls}")
    return n_arms, int(n_pulls)


def bayes_state_counts(n_arms, n_levels, stop_above=None):
    """Number of belief states (multisets of ``n_arms`` count pairs) of every total ``t < n_levels``.

    Counting, no enumeration: an arm with ``w >= 1`` pulls has ``w + 1`` possible (s, f) pairs, so
    the multisets of ``j`` pulled arms are counted by the coefficients of ``x^t y^j`` in
    ``prod_{w >= 1} (1 - y x^w)^-(w + 1)``, built one weight ``w`` at a time (after weight ``w``
    the counts of total ``w`` are final); the unpulled arms are all (0, 0), so a total ``t`` has
    ``sum_{j <= n_arms} [x^t y^j]`` states.  Exact Python ints.

    With ``stop_above``, the counting stops once the counts found so far sum to more than it; the
    list is then shorter than ``n_levels``.
    """
    n_arms, n_levels = _check_bayes_inputs(n_arms, n_levels)
    if n_levels == 0:
        return []
    n = n_levels - 1  # largest total
    k = min(n_arms, n)  # at most t arms of a state of total t are pulled
    cnt = np.zeros((k + 1, n + 1), dtype=object)
    cnt[:] = 0
    cnt[0, 0] = 1
    levels = [1]  # total 0: every arm (0, 0)
    found = 1
    for w in range(1, n + 1):
        if not (stop_above is not None and found > stop_above):
            new = cnt.copy()
            for j in range(1, k + 1):
                for m in range(1, min(j, n // w) + 1):  # m arms of weight w: C(w + m, m) ways
                    new[j, w * m:] += math.comb(w + m, m) * cnt[j - m, :n + 1 - w * m]
            cnt = new
            levels.append(int(cnt[:, w].sum()))
            found += levels[-1]
    return levels


def bayes_state_count(n_arms, n_pulls, limit=None):
    """``(count, exact)``: the belief states the dynamic programme memoises (two or more pulls left).

    ``exact`` is False only when, with ``limit`` given, the count was cut short once it was known
    to exceed ``limit`` (``count`` is then a lower bound above ``limit``).
    """
    n_arms, n_pulls = _check_bayes_inputs(n_arms, n_pulls)
    levels = n_pulls - 1  # totals 0 .. n_pulls - 2
    if levels <= 0:
        return 0, True
    if n_arms == 1 or levels * levels * min(n_arms, levels) <= 200_000:
        if n_arms == 1:  # t + 1 states of total t
            return levels * (levels + 1) // 2, True
        return sum(bayes_state_counts(n_arms, levels)), True
    if limit is not None:
        if levels * (levels + 1) // 2 > limit:  # at least t + 1 states of total t
            return levels * (levels + 1) // 2, False
        first = 8
        while first < levels:  # the first totals, more of them each time, until over the limit
            counts = bayes_state_counts(n_arms, first, stop_above=limit)
            if sum(counts) > limit:
                return sum(counts), False
            first *= 4
    return sum(bayes_state_counts(n_arms, levels)), True


def bayes_optimal_value(n_arms, n_pulls):
    """Exact expected total reward of the Bayes-optimal agent (memoised recursion over beliefs).

    ``V(state) = max_a p_a (1 + V(win_a)) + (1 - p_a) V(loss_a)`` with ``p_a = (s_a + 1) /
    (s_a + f_a + 2)``; one pull left: ``max_a p_a``; none: 0.  No size limit here (the API layer
    checks :func:`bayes_state_counts` first).
    """
    n_arms, n_pulls = _check_bayes_inputs(n_arms, n_pulls)
    if n_pulls == 0:
        return 0.0
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
        cache[state] = best
        return best

    return value(((0, 0),) * n_arms, n_pulls)
