# In-context bandit learner kernels, for other Cython code to cimport:
#
#     from metarl_fast._core.incontext cimport play_trials
#
# noexcept nogil, trusting their input (see metarl_fast.reference.incontext for the semantics and
# the boundary checks).  Return codes as in policy.pxd: MF_OK (-1) success, MF_NO_MEMORY (-2).
from libc.stdint cimport int64_t
from numpy.random cimport bitgen_t

from metarl_fast._core.policy cimport intp_t

cdef enum:
    IC_N_FEATURES = 8

# phi (n_arms, IC_N_FEATURES) of one task from its float64 counts successes/failures (n_arms,).
cdef void arm_features(const double* successes, const double* failures, intp_t n_arms,
                       double n_remaining, double n_pulls, double* phi) noexcept nogil

# One trial of n_pulls pulls per task (arm_means (n_tasks, n_arms)), all tasks in lock step, with
# the draw order of the reference.  totals (n_tasks,) is written; actions_out (n_tasks, n_pulls)
# may be NULL; weighted_score (IC_N_FEATURES,), score_sums (n_pulls, IC_N_FEATURES) and
# reward_sums (n_pulls,) are either all NULL (no gradient) or all given (zeroed here).
# The caller holds the BitGenerator's lock.
cdef intp_t play_trials(const double* weights, const double* arm_means, intp_t n_tasks,
                        intp_t n_arms, intp_t n_pulls, bitgen_t* bitgen, double* totals,
                        int64_t* actions_out, double* weighted_score, double* score_sums,
                        double* reward_sums) noexcept nogil
