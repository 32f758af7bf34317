"""In-context bandit learner kernels (Cython twin of :mod:`metarl_fast.reference.incontext`).

A whole batch of trials runs in one ``nogil`` call: per pull, per task, the per-arm features,
the logits, one uniform for the arm, one for the reward, and (for training) the score function.
Draw order, features and the sampling rule are those of the reference, so both backends pull the
same arms and collect the same rewards for the same Generator state.
"""
cimport numpy as cnp
from libc.math cimport INFINITY, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from numpy.random cimport bitgen_t

from metarl_fast._core.mf_exp cimport mf_exp_nonpos_block
from metarl_fast._core.mf_signals cimport mf_pending_t, mf_raise_pending, mf_signal_raised
from metarl_fast._core.policy cimport MF_NO_MEMORY, MF_OK
from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference.incontext import (FEATURE_NAMES, MAX_ABS_WEIGHT, N_FEATURES,
                                             check_counts, check_record, check_trial_inputs)

cnp.import_array()

assert N_FEATURES == IC_N_FEATURES


# Per-arm statistics that change only when the arm is pulled (cached by play_trials), stored with
# this stride: posterior mean, posterior std, mean after a success, mean after a failure, count.
cdef enum:
    MF_INTERRUPTED = -4  # a signal handler raised (Ctrl-C) during the call
    N_STATS = 5
    CHUNK_FEATURES = 4096  # doubles of features per chunk of tasks (32 KiB: stays in L1/L2)


cdef inline void arm_stats(double s, double f, double* st) noexcept nogil:
    cdef double c = s + f
    cdef double m = (s + 1.0) / (c + 2.0)
    st[0] = m
    st[1] = sqrt(m * (1.0 - m) / (c + 3.0))
    st[2] = (s + 2.0) / (c + 3.0)
    st[3] = (s + 1.0) / (c + 3.0)
    st[4] = c


cdef inline void features_from_stats(const double* stats, intp_t stride, intp_t n_arms,
                                     double n_remaining, double n_pulls,
                                     double* phi) noexcept nogil:
    """phi (n_arms, IC_N_FEATURES) from per-arm stats; phi may alias stats when stride is 8."""
    cdef intp_t a, best = 0
    cdef double m, sd, up, down, c, top = -INFINITY, second = -INFINITY, others, kg
    cdef double frac = n_remaining / n_pulls
    cdef double* row
    for a in range(n_arms):
        m = stats[a * stride]
        if m > top:  # strict: the first maximiser, like numpy's argmax
            top = m
            best = a
    for a in range(n_arms):
        if a != best and stats[a * stride] > second:
            second = stats[a * stride]
    for a in range(n_arms):
        m = stats[a * stride]
        sd = stats[a * stride + 1]
        up = stats[a * stride + 2]
        down = stats[a * stride + 3]
        c = stats[a * stride + 4]
        others = second if a == best else top
        kg = m * (others if others > up else up) + (1.0 - m) * (others if others > down else down) - top
        row = phi + a * IC_N_FEATURES
        row[0] = m
        row[1] = sd
        row[2] = sd * frac
        row[3] = kg
        row[4] = kg * (n_remaining - 1.0)
        row[5] = 1.0 if m == top else 0.0
        row[6] = c / n_pulls
        row[7] = m * frac


cdef void arm_features(const double* successes, const double* failures, intp_t n_arms,
                       double n_remaining, double n_pulls, double* phi) noexcept nogil:
    cdef intp_t a
    for a in range(n_arms):
        arm_stats(successes[a], failures[a], phi + a * IC_N_FEATURES)
    features_from_stats(phi, IC_N_FEATURES, n_arms, n_remaining, n_pulls, phi)


cdef intp_t play_trials(const double* weights, const double* arm_means, intp_t n_tasks,
                        intp_t n_arms, intp_t n_pulls, bitgen_t* bitgen, double* totals,
                        int64_t* actions_out, double* weighted_score, double* score_sums,
                        double* reward_sums) noexcept nogil:
    return play_trials_checked(weights, arm_means, n_tasks, n_arms, n_pulls, bitgen, totals,
                               actions_out, weighted_score, score_sums, reward_sums, NULL, NULL,
                               NULL)


# Task-pulls between two looks at pending signals (Ctrl-C) in a long call: a few ms of work.
cdef intp_t signal_check_work = 1 << 18


def _set_signal_check_work(n):
    """For tests: the task-pulls between two looks at pending signals (returns the old value)."""
    global signal_check_work
    old = signal_check_work
    signal_check_work = max(1, int(n))
    return old


cdef intp_t play_trials_checked(const double* weights, const double* arm_means, intp_t n_tasks,
                                intp_t n_arms, intp_t n_pulls, bitgen_t* bitgen, double* totals,
                                int64_t* actions_out, double* weighted_score, double* score_sums,
                                double* reward_sums, mf_pending_t* pending,
                                double* features_out, double* rewards_out) noexcept nogil:
    """play_trials; with ``pending``, pending signals are looked at every signal_check_work
    task-pulls and a raised one ends the call (MF_INTERRUPTED, outputs incomplete, the exception
    held in ``pending``).  ``features_out`` (n_tasks, n_pulls, n_arms, F) and ``rewards_out``
    (n_tasks, n_pulls), when not NULL, receive what each step saw and earned."""
    cdef bint want_grad = weighted_score != NULL
    cdef intp_t work = 0
    cdef intp_t i, t, a, j, arm, count, F = IC_N_FEATURES
    cdef double lmax, total, target, acc, reward, mean_phi
    cdef double n_remaining, n_total = <double> n_pulls
    cdef double* scratch
    cdef double* successes
    cdef double* failures
    cdef double* stats
    cdef double* phi
    cdef double* logits
    cdef double* cum_score
    cdef double* score
    cdef double* task_phi
    cdef double* task_logits
    cdef int64_t* arms
    cdef intp_t start, n_chunk, ii
    # Tasks go by chunks: features and shifted logits of a whole chunk first, then one vectorised
    # exp over all of them (mf_exp_nonpos_block), then sampling in task order.
    cdef intp_t chunk_tasks = CHUNK_FEATURES // (n_arms * F)
    if chunk_tasks < 1:
        chunk_tasks = 1
    if chunk_tasks > n_tasks:
        chunk_tasks = n_tasks if n_tasks > 0 else 1
    cdef intp_t n_scratch = (n_tasks * n_arms * (2 + N_STATS) + chunk_tasks * n_arms * (F + 1)
                             + F)
    if want_grad:
        n_scratch += n_tasks * F
    scratch = <double*> malloc(n_scratch * sizeof(double))
    arms = <int64_t*> malloc((n_tasks if n_tasks > 0 else 1) * sizeof(int64_t))
    if scratch == NULL or arms == NULL:
        free(scratch)
        free(arms)
        return MF_NO_MEMORY
    memset(scratch, 0, n_scratch * sizeof(double))
    successes = scratch
    failures = successes + n_tasks * n_arms
    stats = failures + n_tasks * n_arms
    phi = stats + n_tasks * n_arms * N_STATS
    logits = phi + chunk_tasks * n_arms * F
    score = logits + chunk_tasks * n_arms
    cum_score = score + F  # used only when want_grad
    for i in range(n_tasks * n_arms):
        arm_stats(0.0, 0.0, stats + i * N_STATS)
    for i in range(n_tasks):
        totals[i] = 0.0
    if want_grad:
        memset(weighted_score, 0, F * sizeof(double))
        memset(score_sums, 0, n_pulls * F * sizeof(double))
        memset(reward_sums, 0, n_pulls * sizeof(double))
    for t in range(n_pulls):
        n_remaining = <double> (n_pulls - t)
        # every task draws its arm (one uniform each, in task order) ...
        start = 0
        while start < n_tasks:
            n_chunk = chunk_tasks if n_tasks - start > chunk_tasks else n_tasks - start
            for ii in range(n_chunk):
                task_phi = phi + ii * n_arms * F
                task_logits = logits + ii * n_arms
                features_from_stats(stats + (start + ii) * n_arms * N_STATS, N_STATS, n_arms,
                                    n_remaining, n_total, task_phi)
                if features_out != NULL:
                    memcpy(features_out + ((start + ii) * n_pulls + t) * n_arms * F, task_phi,
                           n_arms * F * sizeof(double))
                lmax = -INFINITY
                for a in range(n_arms):
                    # feature by feature in index order, as the reference sums them
                    acc = task_phi[a * F] * weights[0]
                    for j in range(1, F):
                        acc = acc + task_phi[a * F + j] * weights[j]
                    task_logits[a] = acc
                    if acc > lmax:
                        lmax = acc
                for a in range(n_arms):
                    task_logits[a] = task_logits[a] - lmax
            mf_exp_nonpos_block(logits, logits, n_chunk * n_arms)
            for ii in range(n_chunk):
                i = start + ii
                task_phi = phi + ii * n_arms * F
                task_logits = logits + ii * n_arms  # now exp(logit - max)
                total = 0.0
                for a in range(n_arms):
                    total += task_logits[a]
                # inverse CDF as in policy.sample_rows: the number of a < A-1 with cdf[a] <= target
                target = next_uniform(bitgen) * total
                acc = 0.0
                count = 0
                for a in range(n_arms - 1):
                    acc += task_logits[a]
                    count += acc <= target
                arms[i] = count
                if want_grad:
                    # score = phi[arm] - sum_b pi_b phi[b]  (d log pi(arm) / d weights)
                    for j in range(F):
                        mean_phi = 0.0
                        for a in range(n_arms):
                            mean_phi += task_logits[a] * task_phi[a * F + j]
                        score[j] = task_phi[count * F + j] - mean_phi / total
                        cum_score[i * F + j] += score[j]
                        score_sums[t * F + j] += score[j]
            start += n_chunk
        # ... then every task draws its reward (one uniform each, in task order)
        for i in range(n_tasks):
            arm = i * n_arms + arms[i]
            reward = 1.0 if next_uniform(bitgen) < arm_means[arm] else 0.0
            if reward != 0.0:
                successes[arm] += 1.0
                totals[i] += 1.0
                if want_grad:
                    reward_sums[t] += 1.0
                    for j in range(F):
                        weighted_score[j] += cum_score[i * F + j]
            else:
                failures[arm] += 1.0
            arm_stats(successes[arm], failures[arm], stats + arm * N_STATS)
            if actions_out != NULL:
                actions_out[i * n_pulls + t] = arms[i]
            if rewards_out != NULL:
                rewards_out[i * n_pulls + t] = reward
        work += n_tasks
        if pending != NULL and work >= signal_check_work and t + 1 < n_pulls:
            work = 0
            if mf_signal_raised(pending):
                free(scratch)
                free(arms)
                return MF_INTERRUPTED
    free(scratch)
    free(arms)
    return MF_OK


# ---------------------------------------------------------------------------------------------
# Python entry points
# ---------------------------------------------------------------------------------------------

def bandit_features(successes, failures, n_remaining, n_pulls):
    """Per-arm features.  See :func:`metarl_fast.reference.incontext.bandit_features`."""
    s, f, n_remaining, n_pulls = check_counts(successes, failures, n_remaining, n_pulls)
    cdef cnp.ndarray sa = np.ascontiguousarray(s), fa = np.ascontiguousarray(f)
    cdef intp_t n_tasks = sa.shape[0], n_arms = sa.shape[1], i
    cdef cnp.ndarray out = np.empty((n_tasks, n_arms, IC_N_FEATURES))
    cdef const double* sp = <const double*> cnp.PyArray_DATA(sa)
    cdef const double* fp = <const double*> cnp.PyArray_DATA(fa)
    cdef double* op = <double*> cnp.PyArray_DATA(out)
    cdef double rem = n_remaining, total = n_pulls
    with nogil:
        for i in range(n_tasks):
            arm_features(sp + i * n_arms, fp + i * n_arms, n_arms, rem, total,
                         op + i * n_arms * IC_N_FEATURES)
    return out


cdef object _play(object weights, object arm_means, object n_pulls, object rng, bint want_grad,
                  object actions_out, object features_out=None, object rewards_out=None):
    w, p, n_pulls = check_trial_inputs(weights, arm_means, n_pulls, rng)
    cdef cnp.ndarray wa = w, pa = p
    cdef intp_t n_tasks = pa.shape[0], n_arms = pa.shape[1], n = n_pulls, status
    cdef cnp.ndarray totals = np.empty(n_tasks)
    cdef cnp.ndarray acts, weighted, score_sums, reward_sums
    cdef int64_t* acts_p = NULL
    cdef double* feats_p = NULL
    cdef double* rews_p = NULL
    check_record(features_out, rewards_out, n_tasks, n, n_arms)
    if features_out is not None:
        feats_p = <double*> cnp.PyArray_DATA(features_out)
    if rewards_out is not None:
        rews_p = <double*> cnp.PyArray_DATA(rewards_out)
    cdef double* weighted_p = NULL
    cdef double* score_sums_p = NULL
    cdef double* reward_sums_p = NULL
    if actions_out is not None:
        acts = _validate.check_out(actions_out, (n_tasks, n), np.int64, "actions_out")
        acts_p = <int64_t*> cnp.PyArray_DATA(acts)
    if want_grad:
        weighted = np.empty(IC_N_FEATURES)
        score_sums = np.empty((n, IC_N_FEATURES))
        reward_sums = np.empty(n)
        weighted_p = <double*> cnp.PyArray_DATA(weighted)
        score_sums_p = <double*> cnp.PyArray_DATA(score_sums)
        reward_sums_p = <double*> cnp.PyArray_DATA(reward_sums)
    cdef mf_pending_t pending
    memset(&pending, 0, sizeof(pending))
    bit_generator = rng.bit_generator
    cdef bitgen_t* bitgen = bitgen_of(bit_generator)
    with bit_generator.lock:
        with nogil:
            status = play_trials_checked(<const double*> cnp.PyArray_DATA(wa),
                                         <const double*> cnp.PyArray_DATA(pa), n_tasks, n_arms, n,
                                         bitgen, <double*> cnp.PyArray_DATA(totals), acts_p,
                                         weighted_p, score_sums_p, reward_sums_p, &pending,
                                         feats_p, rews_p)
    if status == MF_INTERRUPTED:
        mf_raise_pending(&pending)
    if status == MF_NO_MEMORY:
        raise MemoryError("metarl_fast: out of memory in the in-context trial kernel")
    if want_grad:
        return totals, weighted, score_sums, reward_sums
    return totals


def run_trials(weights, arm_means, n_pulls, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """One trial per task.  See :func:`metarl_fast.reference.incontext.run_trials`."""
    return _play(weights, arm_means, n_pulls, rng, False, actions_out, features_out, rewards_out)


def reinforce_trials(weights, arm_means, n_pulls, rng):
    """Trials plus REINFORCE statistics.  See :func:`metarl_fast.reference.incontext.reinforce_trials`."""
    return _play(weights, arm_means, n_pulls, rng, True, None)
