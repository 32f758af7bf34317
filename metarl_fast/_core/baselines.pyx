"""Bandit baseline agents (Cython twin of :mod:`metarl_fast.reference.baselines`).

One ``nogil`` call plays every trial; the draws (choice uniforms, Beta samples through numpy's own
``random_beta``, reward uniforms) come in the reference's order, so both backends pull the same
arms for the same Generator state.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, log, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport random_beta

from metarl_fast._core.policy cimport MF_NO_MEMORY, MF_OK, intp_t
from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast.reference.baselines import (AGENT_EPSILON, AGENT_GREEDY, AGENT_RANDOM,
                                             AGENT_THOMPSON, AGENT_UCB1, N_AGENTS,
                                             check_agent_inputs)

cnp.import_array()

assert (AGENT_RANDOM, AGENT_GREEDY, AGENT_EPSILON, AGENT_UCB1, AGENT_THOMPSON, N_AGENTS) == \
    (C_RANDOM, C_GREEDY, C_EPSILON, C_UCB1, C_THOMPSON, 5)


cdef inline intp_t pick_tie(const double* scores, intp_t n_arms, double u) noexcept nogil:
    """The floor(u m)-th of the m maximal scores, left to right (reference argmax_random_ties)."""
    cdef intp_t a, n_ties = 0, pick
    cdef double top = -INFINITY
    for a in range(n_arms):
        if scores[a] > top:
            top = scores[a]
    for a in range(n_arms):
        n_ties += scores[a] == top
    pick = <intp_t> (u * n_ties)
    if pick > n_ties - 1:
        pick = n_ties - 1
    for a in range(n_arms):
        if scores[a] == top:
            if pick == 0:
                return a
            pick -= 1
    return n_arms - 1  # unreachable: scores hold no NaN


cdef intp_t play_agent(int agent, double parameter, const double* arm_means, intp_t n_tasks,
                       intp_t n_arms, intp_t n_pulls, bitgen_t* bitgen,
                       double* totals) noexcept nogil:
    """One trial per task; the caller holds the BitGenerator's lock.  Returns MF_OK / MF_NO_MEMORY."""
    cdef intp_t i, t, a, arm, best
    cdef double u, s, c, bonus_log, x, top
    cdef double* successes = <double*> malloc((2 * n_tasks * n_arms + n_arms + 1) * sizeof(double))
    cdef int64_t* arms = <int64_t*> malloc((n_tasks + 1) * sizeof(int64_t))
    cdef unsigned char* explore = <unsigned char*> malloc(n_tasks + 1)
    cdef double* failures
    cdef double* scores
    if successes == NULL or arms == NULL or explore == NULL:
        free(successes)
        free(arms)
        free(explore)
        return MF_NO_MEMORY
    memset(successes, 0, (2 * n_tasks * n_arms + n_arms + 1) * sizeof(double))
    failures = successes + n_tasks * n_arms
    scores = failures + n_tasks * n_arms
    for i in range(n_tasks):
        totals[i] = 0.0
    for t in range(n_pulls):
        if agent == C_EPSILON:  # all the explore draws come first, then the arm/tie draws
            for i in range(n_tasks):
                explore[i] = next_uniform(bitgen) < parameter
        bonus_log = log(<double> (t if t > 1 else 1))
        for i in range(n_tasks):
            if agent == C_RANDOM:
                arm = <intp_t> (next_uniform(bitgen) * n_arms)
                arms[i] = arm if arm < n_arms - 1 else n_arms - 1
            elif agent == C_THOMPSON:
                best = 0
                top = -INFINITY
                for a in range(n_arms):
                    x = random_beta(bitgen, successes[i * n_arms + a] + 1.0,
                                    failures[i * n_arms + a] + 1.0)
                    if x > top:
                        top = x
                        best = a
                arms[i] = best
            else:
                for a in range(n_arms):
                    s = successes[i * n_arms + a]
                    c = s + failures[i * n_arms + a]
                    if agent == C_UCB1:
                        scores[a] = INFINITY if c == 0.0 else s / c + parameter * sqrt(bonus_log / c)
                    elif agent == C_EPSILON and explore[i]:
                        scores[a] = 0.0
                    else:
                        scores[a] = (s + 1.0) / (c + 2.0)
                arms[i] = pick_tie(scores, n_arms, next_uniform(bitgen))
        for i in range(n_tasks):
            arm = i * n_arms + arms[i]
            if next_uniform(bitgen) < arm_means[arm]:
                successes[arm] += 1.0
                totals[i] += 1.0
            else:
                failures[arm] += 1.0
    free(successes)
    free(arms)
    free(explore)
    return MF_OK


def run_agent_trials(agent, parameter, arm_means, n_pulls, rng):
    """One trial per task with a baseline agent.

    See :func:`metarl_fast.reference.baselines.run_agent_trials`.
    """
    code, param, p, n = check_agent_inputs(agent, parameter, arm_means, n_pulls, rng)
    cdef cnp.ndarray pa = p
    cdef intp_t n_tasks = pa.shape[0], n_arms = pa.shape[1], n_steps = n, status
    cdef int c_agent = code
    cdef double c_param = param
    cdef cnp.ndarray totals = np.empty(n_tasks)
    bit_generator = rng.bit_generator
    cdef bitgen_t* bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            status = play_agent(c_agent, c_param, <const double*> cnp.PyArray_DATA(pa), n_tasks,
                                n_arms, n_steps, bitgen, <double*> cnp.PyArray_DATA(totals))
    if status == MF_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in the bandit baseline kernel")
    return totals
