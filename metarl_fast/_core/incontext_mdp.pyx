"""In-context MDP learner kernels (Cython twin of :mod:`metarl_fast.reference.incontext_mdp`).

A whole batch of trials runs in one ``nogil`` call, task after task: per episode a value iteration
on the task's empirical model, per step the per-action features, the logits, the action and the
environment step, and (for training) the score function.  The random blocks are drawn first, in the
reference's order, from the Generator's own BitGenerator; features are computed with the same
operations in the same order as the reference, so both backends take the same actions.  The value
iteration visits only the successors each (s, a) has been seen to reach (in ascending order): the
skipped terms are exact zeros, so its sums equal the reference's dense ones bit for bit.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, sqrt
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport random_standard_uniform_fill

# rng.standard_normal()'s values, without NumPy's mispredicted sign branch (see normal.pyx)
from metarl_fast._core.normal cimport standard_normal_fill

from metarl_fast._core.mf_exp cimport mf_exp_nonpos
from metarl_fast._core.mf_signals cimport mf_pending_t, mf_raise_pending, mf_signal_raised
from metarl_fast._core.policy cimport MF_NO_MEMORY, MF_OK

cdef enum:
    MF_INTERRUPTED = -4  # a signal handler raised (Ctrl-C) during the call
from metarl_fast._core.rng cimport bitgen_of

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference.incontext_mdp import (FEATURE_NAMES, MAX_ABS_WEIGHT, N_FEATURES,
                                                 NONFINITE_MESSAGE, check_statistics,
                                                 check_trial_inputs)
from metarl_fast.reference.incontext import check_record

cnp.import_array()

assert N_FEATURES == ICM_N_FEATURES


cdef void empirical_q_task(const double* count, const double* reward_sum, const double* trans,
                           const uint8_t* seen_terminal, intp_t S, intp_t A, intp_t horizon,
                           double* q_emp, double* q_opt, double* scratch) noexcept nogil:
    cdef intp_t h, sa, s, s2, a, SA = S * A
    cdef double* v = scratch
    cdef double* vo = scratch + S
    cdef double* denom = scratch + 2 * S
    cdef double* bonus = denom + SA
    cdef double vo_max = 0.0, acc, acc_o, best, best_o
    cdef const double* row
    cdef double* qe
    cdef double* qo
    for sa in range(SA):  # once per call, as the reference computes them
        denom[sa] = count[sa] + 1.0
        bonus[sa] = 1.0 / sqrt(denom[sa])
    for s in range(S):
        v[s] = 0.0
        vo[s] = 0.0
    for h in range(horizon):
        qe = q_emp + h * SA
        qo = q_opt + h * SA
        for sa in range(SA):
            acc = reward_sum[sa]
            acc_o = reward_sum[sa]
            row = trans + sa * S
            for s2 in range(S):  # sequential over s', as the reference sums
                acc = acc + row[s2] * v[s2]
                acc_o = acc_o + row[s2] * vo[s2]
            qe[sa] = acc / denom[sa]
            qo[sa] = (acc_o + vo_max) / denom[sa] + bonus[sa]
        for s in range(S):
            if seen_terminal[s]:
                v[s] = 0.0
                vo[s] = 0.0
                continue
            best = qe[s * A]
            best_o = qo[s * A]
            for a in range(1, A):
                if qe[s * A + a] > best:
                    best = qe[s * A + a]
                if qo[s * A + a] > best_o:
                    best_o = qo[s * A + a]
            v[s] = best
            vo[s] = best_o
        vo_max = vo[0]
        for s in range(1, S):
            if vo[s] > vo_max:
                vo_max = vo[s]


cdef void empirical_q_sparse(const double* count, const double* reward_sum, const double* trans,
                             const intp_t* successors, const intp_t* n_successors,
                             const uint8_t* seen_terminal, intp_t S, intp_t A, intp_t horizon,
                             double* q_emp, double* q_opt, double* scratch) noexcept nogil:
    """empirical_q_task, bit for bit, visiting only the observed successors of each (s, a)
    (``successors[sa * S : sa * S + n_successors[sa]]``, ascending).

    The skipped terms are ``0 * v``: adding them changes nothing while every value is finite
    (the running sum is never -0.0), so the sparse sum is the dense one.  If a value overflows, the
    dense loop runs, to give the same NaNs as the reference.
    """
    cdef intp_t h, sa, s, s2, a, k, SA = S * A
    cdef double* v = scratch
    cdef double* vo = scratch + S
    cdef double* denom = scratch + 2 * S
    cdef double* bonus = denom + SA
    cdef double vo_max = 0.0, acc, acc_o, best, best_o
    cdef const double* row
    cdef const intp_t* succ
    cdef double* qe
    cdef double* qo
    cdef bint finite = True
    for sa in range(SA):
        denom[sa] = count[sa] + 1.0
        bonus[sa] = 1.0 / sqrt(denom[sa])
    for s in range(S):
        v[s] = 0.0
        vo[s] = 0.0
    for h in range(horizon):
        qe = q_emp + h * SA
        qo = q_opt + h * SA
        for sa in range(SA):
            acc = reward_sum[sa]
            acc_o = reward_sum[sa]
            row = trans + sa * S
            if finite:
                succ = successors + sa * S
                for k in range(n_successors[sa]):
                    s2 = succ[k]
                    acc = acc + row[s2] * v[s2]
                    acc_o = acc_o + row[s2] * vo[s2]
            else:
                for s2 in range(S):
                    acc = acc + row[s2] * v[s2]
                    acc_o = acc_o + row[s2] * vo[s2]
            if denom[sa] == 1.0:  # unvisited: x / 1.0 is exactly x, skip the slow division
                qe[sa] = acc
                qo[sa] = (acc_o + vo_max) + bonus[sa]
            else:
                qe[sa] = acc / denom[sa]
                qo[sa] = (acc_o + vo_max) / denom[sa] + bonus[sa]
        for s in range(S):
            if seen_terminal[s]:
                v[s] = 0.0
                vo[s] = 0.0
                continue
            best = qe[s * A]
            best_o = qo[s * A]
            for a in range(1, A):
                if qe[s * A + a] > best:
                    best = qe[s * A + a]
                if qo[s * A + a] > best_o:
                    best_o = qo[s * A + a]
            v[s] = best
            vo[s] = best_o
        vo_max = vo[0]
        for s in range(1, S):
            if vo[s] > vo_max:
                vo_max = vo[s]
        for s in range(S):
            if not (v[s] - v[s] == 0.0 and vo[s] - vo[s] == 0.0):
                finite = False


cdef inline intp_t count_le(const double* cdf, intp_t m, double u) noexcept nogil:
    """Inverse CDF: the number of the first m - 1 running sums that are <= u * cdf[m - 1]."""
    cdef double target = u * cdf[m - 1]
    cdef intp_t j, k = 0
    for j in range(m - 1):
        k += cdf[j] <= target
    return k


cdef inline void add_successor(intp_t* succ, intp_t* n, intp_t s2) noexcept nogil:
    """Insert the new successor s2 into the ascending list succ[0 .. n)."""
    cdef intp_t k = n[0]
    while k > 0 and succ[k - 1] > s2:
        succ[k] = succ[k - 1]
        k -= 1
    succ[k] = s2
    n[0] += 1


cdef intp_t play_mdp_trials(const TablesView* t, const double* weights, intp_t n_episodes,
                            const double* u_start, const double* u_act, const double* noise,
                            const double* u_next, double* returns, int64_t* actions_out,
                            double* weighted_score, double* score_sums,
                            double* reward_sums) noexcept nogil:
    return play_mdp_trials_checked(t, weights, n_episodes, u_start, u_act, noise, u_next, returns,
                                   actions_out, weighted_score, score_sums, reward_sums, NULL,
                                   NULL, NULL)


# Work (episodes x states x actions, the cost of the per-episode value iterations) between two
# looks at pending signals (Ctrl-C) in a long call: a few ms.  Tests shrink it.
cdef intp_t signal_check_work = 1 << 18


def _set_signal_check_work(n):
    """For tests: the work between two looks at pending signals (returns the old value)."""
    global signal_check_work
    old = signal_check_work
    signal_check_work = max(1, int(n))
    return old


cdef intp_t play_mdp_trials_checked(const TablesView* t, const double* weights,
                                    intp_t n_episodes, const double* u_start, const double* u_act,
                                    const double* noise, const double* u_next, double* returns,
                                    int64_t* actions_out, double* weighted_score,
                                    double* score_sums, double* reward_sums,
                                    mf_pending_t* pending, double* features_out,
                                    double* rewards_out) noexcept nogil:
    """play_mdp_trials; with ``pending``, pending signals are looked at between tasks, every
    signal_check_work units of work, and a raised one ends the call (MF_INTERRUPTED, outputs
    incomplete, the exception held in ``pending``).  ``features_out`` (T, N * H, A, F) and
    ``rewards_out`` (T, N * H), when not NULL, receive what each step saw and earned (zeros
    after an episode ended)."""
    cdef bint want_grad = weighted_score != NULL
    cdef intp_t work = 0
    cdef intp_t T = t.n_tasks, S = t.n_states, A = t.n_actions, H = t.horizon, N = n_episodes
    cdef intp_t F = ICM_N_FEATURES, SA = S * A, K = N * H
    cdef intp_t i, e, step, k, a, j, s, s2, sa, base, q, act, orow
    cdef double rho, vis, c, d, acc, lmax, total, target, r, qmax, mean_phi, sc
    cdef const double* qe
    cdef const double* qo
    cdef double* phi_a
    cdef bint ends
    cdef intp_t n_scratch = 3 * SA + SA * S + S + 2 * H * SA + 2 * S + 2 * SA + A * F + 2 * A + F
    cdef double* scratch = <double*> malloc(n_scratch * sizeof(double))
    cdef uint8_t* seen = <uint8_t*> malloc(S * sizeof(uint8_t))
    # the observed successors of each (s, a), ascending, and their number
    cdef intp_t* successors = <intp_t*> malloc((SA * S + SA) * sizeof(intp_t))
    cdef intp_t* n_successors
    if scratch == NULL or seen == NULL or successors == NULL:
        free(scratch)
        free(seen)
        free(successors)
        return MF_NO_MEMORY
    n_successors = successors + SA * S
    cdef double* count = scratch
    cdef double* reward_sum = count + SA
    cdef double* trans = reward_sum + SA
    cdef double* visits = trans + SA * S
    cdef double* q_emp = visits + S
    cdef double* q_opt = q_emp + H * SA
    cdef double* vi_scratch = q_opt + H * SA
    cdef double* phi = vi_scratch + 2 * S + 2 * SA
    cdef double* logits = phi + A * F
    cdef double* ex = logits + A
    cdef double* cum_score = ex + A
    if want_grad:
        memset(weighted_score, 0, F * sizeof(double))
        memset(score_sums, 0, K * F * sizeof(double))
        memset(reward_sums, 0, K * sizeof(double))
    for i in range(T):
        memset(count, 0, (2 * SA + SA * S + S) * sizeof(double))
        memset(seen, 0, S * sizeof(uint8_t))
        memset(n_successors, 0, SA * sizeof(intp_t))
        memset(cum_score, 0, F * sizeof(double))
        if actions_out != NULL:
            for j in range(N * H):
                actions_out[i * K + j] = -1
        if features_out != NULL:
            memset(features_out + i * K * A * F, 0, K * A * F * sizeof(double))
        if rewards_out != NULL:
            memset(rewards_out + i * K, 0, K * sizeof(double))
        for e in range(N):
            returns[i * N + e] = 0.0
        for e in range(N):
            empirical_q_sparse(count, reward_sum, trans, successors, n_successors, seen, S, A, H,
                               q_emp, q_opt, vi_scratch)
            if t.stochastic_start:
                s = count_le(t.start_cdf + i * S, S, u_start[i * N + e])
            else:
                s = t.start_state[i]
            for step in range(H):
                k = e * H + step
                q = i * K + k
                rho = <double> (K - k) / <double> K
                base = s * A
                qe = q_emp + ((H - step - 1) * S + s) * A
                qo = q_opt + ((H - step - 1) * S + s) * A
                qmax = qe[0]
                for a in range(1, A):
                    if qe[a] > qmax:
                        qmax = qe[a]
                vis = visits[s] + 1.0
                lmax = -INFINITY
                for a in range(A):
                    phi_a = phi + a * F
                    c = count[base + a]
                    d = c + 1.0
                    phi_a[0] = reward_sum[base + a] / d
                    phi_a[1] = 1.0 / sqrt(d)
                    phi_a[2] = phi_a[1] * rho
                    phi_a[3] = c / vis
                    phi_a[4] = qe[a]
                    phi_a[5] = qo[a]
                    phi_a[6] = 1.0 if qe[a] == qmax else 0.0
                    phi_a[7] = (qo[a] - qe[a]) * rho
                    # feature by feature in index order, as the reference sums them
                    acc = phi_a[0] * weights[0]
                    for j in range(1, F):
                        acc = acc + phi_a[j] * weights[j]
                    if not (acc - acc == 0.0):  # NaN or inf
                        free(scratch)
                        free(seen)
                        free(successors)
                        return ICM_NONFINITE
                    logits[a] = acc
                    if acc > lmax:
                        lmax = acc
                total = 0.0
                for a in range(A):
                    ex[a] = mf_exp_nonpos(logits[a] - lmax)
                    total += ex[a]
                # inverse CDF as in policy.sample_actions: count running sums <= u * total
                target = u_act[q] * total
                acc = 0.0
                act = 0
                for a in range(A - 1):
                    acc += ex[a]
                    act += acc <= target
                sa = (i * S + s) * A + act
                if t.stochastic_transitions:
                    s2 = count_le(t.trans_cdf_padded + sa * t.trans_stride, t.trans_stride, u_next[q])
                else:
                    s2 = t.next_state[sa]
                if t.reward_kind == ICM_REWARD_GAUSSIAN:
                    r = t.reward_mean[sa] + t.reward_std[i] * noise[q]
                elif t.reward_kind == ICM_REWARD_BERNOULLI:
                    r = 1.0 if noise[q] < t.reward_mean[sa] else 0.0
                elif t.reward_kind == ICM_REWARD_TRANSITION:
                    r = t.reward_next[sa * S + s2]
                elif t.reward_kind == ICM_REWARD_OUTCOME:
                    orow = (sa * S + s2) * t.reward_outcomes
                    r = t.reward_values[orow + count_le(t.reward_cdf + orow, t.reward_outcomes,
                                                        noise[q])]
                else:
                    r = t.reward_mean[sa]
                ends = t.terminal[i * S + s2] != 0
                count[base + act] += 1.0
                reward_sum[base + act] += r
                if trans[(base + act) * S + s2] == 0.0:
                    add_successor(successors + (base + act) * S, n_successors + base + act, s2)
                trans[(base + act) * S + s2] += 1.0
                visits[s] += 1.0
                if ends:
                    seen[s2] = 1
                returns[i * N + e] += r
                if actions_out != NULL:
                    actions_out[q] = act
                if features_out != NULL:
                    memcpy(features_out + q * A * F, phi, A * F * sizeof(double))
                if rewards_out != NULL:
                    rewards_out[q] = r
                if want_grad:
                    # score = phi[act] - sum_b pi_b phi[b]  (d log pi(act) / d weights)
                    for j in range(F):
                        mean_phi = 0.0
                        for a in range(A):
                            mean_phi += ex[a] * phi[a * F + j]
                        sc = phi[act * F + j] - mean_phi / total
                        cum_score[j] += sc
                        score_sums[k * F + j] += sc
                        weighted_score[j] += r * cum_score[j]
                    reward_sums[k] += r
                s = s2
                if ends:
                    break
        work += N * (S * A + H)
        if pending != NULL and work >= signal_check_work and i + 1 < T:
            work = 0
            if mf_signal_raised(pending):
                free(scratch)
                free(seen)
                free(successors)
                return MF_INTERRUPTED
    free(scratch)
    free(seen)
    free(successors)
    return MF_OK


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

cdef inline const double* _dptr(cnp.ndarray a):
    return <const double*> cnp.PyArray_DATA(a)


cdef int fill_view(object tables, TablesView* out) except -1:
    out.n_tasks = tables.n_tasks
    out.n_states = tables.n_states
    out.n_actions = tables.n_actions
    out.horizon = tables.horizon
    out.trans_cdf_padded = _dptr(tables.trans_cdf_padded)
    out.trans_stride = tables.trans_cdf_padded.shape[3]
    out.next_state = <const int64_t*> cnp.PyArray_DATA(tables.next_state)
    out.stochastic_transitions = 1 if tables.stochastic_transitions else 0
    out.reward_mean = _dptr(tables.reward_mean)
    out.reward_kind = tables.reward_kind
    out.reward_std = _dptr(tables.reward_std)
    out.reward_next = _dptr(tables.reward_next)
    out.start_cdf = _dptr(tables.start_cdf)
    out.start_state = <const int64_t*> cnp.PyArray_DATA(tables.start_state)
    out.stochastic_start = 1 if tables.stochastic_start else 0
    out.terminal = <const uint8_t*> cnp.PyArray_DATA(tables.terminal)
    out.reward_outcomes = tables.reward_outcomes
    out.reward_values = _dptr(tables.reward_values)
    out.reward_cdf = _dptr(tables.reward_cdf)
    return 0


def empirical_q(count, reward_sum, trans, seen_terminal, horizon):
    """Empirical / optimistic Q.  See :func:`metarl_fast.reference.incontext_mdp.empirical_q`."""
    c, r, p, term, H = check_statistics(count, reward_sum, trans, seen_terminal, horizon)
    cdef cnp.ndarray ca = c, ra = r, pa = p
    cdef cnp.ndarray ta = np.ascontiguousarray(term.view(np.uint8))
    cdef intp_t n = ca.shape[0], S = ca.shape[1], A = ca.shape[2], h = H, i
    cdef cnp.ndarray q_emp = np.empty((n, h, S, A)), q_opt = np.empty((n, h, S, A))
    cdef cnp.ndarray scratch = np.empty(2 * S + 2 * S * A)
    cdef const double* cp = _dptr(ca)
    cdef const double* rp = _dptr(ra)
    cdef const double* pp = _dptr(pa)
    cdef const uint8_t* tp = <const uint8_t*> cnp.PyArray_DATA(ta)
    cdef double* qe = <double*> cnp.PyArray_DATA(q_emp)
    cdef double* qo = <double*> cnp.PyArray_DATA(q_opt)
    cdef double* sp = <double*> cnp.PyArray_DATA(scratch)
    with nogil:
        for i in range(n):
            empirical_q_task(cp + i * S * A, rp + i * S * A, pp + i * S * A * S, tp + i * S, S, A,
                             h, qe + i * h * S * A, qo + i * h * S * A, sp)
    return q_emp, q_opt


cdef inline cnp.ndarray _empty(intp_t n):
    return np.empty(n if n > 0 else 1, dtype=np.float64)


cdef object _play(object weights, object tables, object n_episodes, object rng, bint want_grad,
                  object actions_out, object features_out=None, object rewards_out=None):
    w, n_episodes = check_trial_inputs(weights, tables, n_episodes, rng)
    cdef TablesView t
    fill_view(tables, &t)
    cdef intp_t T = t.n_tasks, N = n_episodes, H = t.horizon, cap = T * N * H, status
    cdef double* feats_p = NULL
    cdef double* rews_p = NULL
    # the noise block, or for outcome rewards the outcome uniforms (drawn after the next states')
    cdef bint has_noise = (t.reward_kind == ICM_REWARD_GAUSSIAN or t.reward_kind == ICM_REWARD_BERNOULLI
                           or t.reward_kind == ICM_REWARD_OUTCOME)
    cdef cnp.ndarray wa = w
    cdef cnp.ndarray u_start = _empty(T * N if t.stochastic_start else 0)
    cdef cnp.ndarray u_act = _empty(cap)
    cdef cnp.ndarray noise = _empty(cap if has_noise else 0)
    cdef cnp.ndarray u_next = _empty(cap if t.stochastic_transitions else 0)
    cdef cnp.ndarray returns = np.empty((T, N))
    cdef cnp.ndarray acts, weighted, score_sums, reward_sums
    cdef int64_t* acts_p = NULL
    cdef double* weighted_p = NULL
    cdef double* score_sums_p = NULL
    cdef double* reward_sums_p = NULL
    if actions_out is not None:
        acts = _validate.check_out(actions_out, (T, N, H), np.int64, "actions_out")
        acts_p = <int64_t*> cnp.PyArray_DATA(acts)
    check_record(features_out, rewards_out, T, None, t.n_actions, (N, H), ICM_N_FEATURES)
    if features_out is not None:
        feats_p = <double*> cnp.PyArray_DATA(features_out)
    if rewards_out is not None:
        rews_p = <double*> cnp.PyArray_DATA(rewards_out)
    if want_grad:
        weighted = np.empty(ICM_N_FEATURES)
        score_sums = np.empty((N * H, ICM_N_FEATURES))
        reward_sums = np.empty(N * H)
        weighted_p = <double*> cnp.PyArray_DATA(weighted)
        score_sums_p = <double*> cnp.PyArray_DATA(score_sums)
        reward_sums_p = <double*> cnp.PyArray_DATA(reward_sums)
    cdef double* us = <double*> cnp.PyArray_DATA(u_start)
    cdef double* ua = <double*> cnp.PyArray_DATA(u_act)
    cdef double* nz = <double*> cnp.PyArray_DATA(noise)
    cdef double* un = <double*> cnp.PyArray_DATA(u_next)
    bit_generator = rng.bit_generator
    cdef bitgen_t* bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            if t.stochastic_start:
                random_standard_uniform_fill(bitgen, T * N, us)
            random_standard_uniform_fill(bitgen, cap, ua)
            if t.reward_kind == ICM_REWARD_GAUSSIAN:
                standard_normal_fill(bitgen, cap, nz)
            elif t.reward_kind == ICM_REWARD_BERNOULLI:
                random_standard_uniform_fill(bitgen, cap, nz)
            if t.stochastic_transitions:
                random_standard_uniform_fill(bitgen, cap, un)
            if t.reward_kind == ICM_REWARD_OUTCOME:
                random_standard_uniform_fill(bitgen, cap, nz)
    cdef const double* wp = _dptr(wa)
    cdef mf_pending_t pending
    memset(&pending, 0, sizeof(pending))
    with nogil:
        status = play_mdp_trials_checked(&t, wp, N, us, ua, nz, un,
                                         <double*> cnp.PyArray_DATA(returns), acts_p, weighted_p,
                                         score_sums_p, reward_sums_p, &pending, feats_p, rews_p)
    if status == MF_INTERRUPTED:
        mf_raise_pending(&pending)
    if status == MF_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in the in-context MDP trial kernel")
    if status == ICM_NONFINITE:
        raise FloatingPointError(NONFINITE_MESSAGE)
    if want_grad:
        return returns, weighted, score_sums, reward_sums
    return returns


def run_trials(weights, tables, n_episodes, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """One trial per task.  See :func:`metarl_fast.reference.incontext_mdp.run_trials`."""
    return _play(weights, tables, n_episodes, rng, False, actions_out, features_out, rewards_out)


def reinforce_trials(weights, tables, n_episodes, rng):
    """Trials plus REINFORCE sums.  See :func:`metarl_fast.reference.incontext_mdp.reinforce_trials`."""
    return _play(weights, tables, n_episodes, rng, True, None)
