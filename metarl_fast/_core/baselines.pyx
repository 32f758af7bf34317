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


# ------------------------------------------------------------------ exact Bayes-optimal value
# Level by level (total pulls t = n - 1 .. 0), over every belief state of the level: the sorted
# multiset of K = min(n_arms, n) per-arm pair indices, pair (s, f) of weight w = s + f having index
# w (w + 1) / 2 + s.  The states of a level are enumerated in lexicographic order and ranked by
# counting: cnt(j, tt, m) = the non-decreasing sequences of j indices >= m with weights summing to
# tt; the rank of x is sum_i cnt(K - i, T_i, x_{i-1}) - cnt(K - i, T_i, x_i).  cnt(1, ., .) has a
# closed form; j >= 2 is tabulated.
cdef struct BayesCtx:
    intp_t K
    intp_t n
    intp_t n_types
    const int64_t* table  # cnt(j, tt, m) at ((j - 2) (n + 1) + tt) (n_types + 1) + m, j >= 2
    const intp_t* weight
    const intp_t* succ  # successes of a pair index
    intp_t* x
    intp_t* y
    const double* v_next
    double* v_cur
    intp_t level
    intp_t count


cdef inline int64_t bayes_cnt(const BayesCtx* c, intp_t j, intp_t tt, intp_t m) noexcept nogil:
    cdef intp_t start, lo
    if j == 0:
        return 1 if tt == 0 else 0
    if j == 1:  # indices >= m of weight tt
        start = tt * (tt + 1) // 2
        lo = m if m > start else start
        return start + tt + 1 - lo if start + tt >= lo else 0
    if m >= c.n_types:
        return 0
    return c.table[((j - 2) * (c.n + 1) + tt) * (c.n_types + 1) + m]


cdef inline intp_t bayes_rank(const BayesCtx* c, const intp_t* x, intp_t total) noexcept nogil:
    cdef intp_t i, prev = 0, r = 0
    for i in range(c.K):
        r += bayes_cnt(c, c.K - i, total, prev) - bayes_cnt(c, c.K - i, total, x[i])
        total -= c.weight[x[i]]
        prev = x[i]
    return r


cdef inline double bayes_next(BayesCtx* c, intp_t i, intp_t new) noexcept nogil:
    # value at level + 1 of x with x[i] replaced by new (> x[i]), kept sorted
    cdef intp_t j
    for j in range(i):
        c.y[j] = c.x[j]
    j = i + 1
    while j < c.K and c.x[j] < new:
        c.y[j - 1] = c.x[j]
        j += 1
    c.y[j - 1] = new
    while j < c.K:
        c.y[j] = c.x[j]
        j += 1
    return c.v_next[bayes_rank(c, c.y, c.level + 1)]


cdef void bayes_visit(BayesCtx* c) noexcept nogil:
    cdef intp_t i, a, prev = -1, s, w, w1
    cdef double p, q, best = 0.0
    for i in range(c.K):
        a = c.x[i]
        if a == prev:  # identical arms have identical values
            continue
        prev = a
        s = c.succ[a]
        w = c.weight[a]
        p = <double> (s + 1) / <double> (w + 2)
        if c.level == c.n - 1:  # the last pull is greedy
            q = p
        else:
            w1 = (w + 1) * (w + 2) // 2
            q = p * (1.0 + bayes_next(c, i, w1 + s + 1)) + (1.0 - p) * bayes_next(c, i, w1 + s)
        if q > best:
            best = q
    c.v_cur[c.count] = best
    c.count += 1


cdef void bayes_level(BayesCtx* c, intp_t i, intp_t lo, intp_t rem) noexcept nogil:
    cdef intp_t v, start, end
    if i == c.K - 1:  # the last index has weight rem
        start = rem * (rem + 1) // 2
        end = start + rem
        v = lo if lo > start else start
        while v <= end:
            c.x[i] = v
            bayes_visit(c)
            v += 1
        return
    v = lo
    while v < c.n_types and c.weight[v] * (c.K - i) <= rem:
        c.x[i] = v
        bayes_level(c, i + 1, v, rem - c.weight[v])
        v += 1


def bayes_optimal_value(n_arms, n_pulls):
    """Exact expected total reward of the Bayes-optimal agent (level-by-level dynamic programme).

    Same value as :func:`metarl_fast.reference.baselines.bayes_optimal_value` (same float
    operations per state); no size limit here (the API layer checks the state count first).
    """
    from metarl_fast.reference.baselines import _check_bayes_inputs
    k_arms, n_steps = _check_bayes_inputs(n_arms, n_pulls)
    if n_steps == 0:
        return 0.0
    cdef intp_t n = n_steps, K = min(k_arms, n), n_types = (n + 1) * (n + 2) // 2
    cdef intp_t j, tt, m, t, level_size, biggest = 1
    weight_a = np.empty(n_types, dtype=np.intp)
    succ_a = np.empty(n_types, dtype=np.intp)
    cdef intp_t[::1] weight = weight_a, succ = succ_a
    for tt in range(n + 1):
        for m in range(tt + 1):
            weight[tt * (tt + 1) // 2 + m] = tt
            succ[tt * (tt + 1) // 2 + m] = m
    table_a = np.zeros(max(K - 1, 1) * (n + 1) * (n_types + 1), dtype=np.int64)
    cdef int64_t[::1] table = table_a
    cdef BayesCtx c
    c.K = K
    c.n = n
    c.n_types = n_types
    c.table = &table[0]
    c.weight = &weight[0]
    c.succ = &succ[0]
    with nogil:
        for j in range(2, K + 1):
            for tt in range(n + 1):
                for m in range(n_types - 1, -1, -1):
                    table[((j - 2) * (n + 1) + tt) * (n_types + 1) + m] = (
                        table[((j - 2) * (n + 1) + tt) * (n_types + 1) + m + 1]
                        + (bayes_cnt(&c, j - 1, tt - weight[m], m) if tt >= weight[m] else 0))
        for t in range(n):
            level_size = bayes_cnt(&c, K, t, 0)
            if level_size > biggest:
                biggest = level_size
    xs_a = np.zeros(2 * K, dtype=np.intp)
    buf_a = np.zeros(biggest, dtype=np.float64)
    buf_b = np.zeros(biggest, dtype=np.float64)
    cdef intp_t[::1] xs = xs_a
    cdef double[::1] buf_cur = buf_a, buf_next = buf_b, swap
    c.x = &xs[0]
    c.y = &xs[K]
    for t in range(n - 1, -1, -1):
        c.level = t
        c.count = 0
        c.v_cur = &buf_cur[0]
        c.v_next = &buf_next[0]
        with nogil:
            bayes_level(&c, 0, 0, t)
        swap = buf_cur
        buf_cur = buf_next
        buf_next = swap
    return float(buf_next[0])
