# In-context MDP learner kernels, for other Cython code to cimport:
#
#     from metarl_fast._core.incontext_mdp cimport (TablesView, fill_view, play_mdp_trials,
#                                                   empirical_q_task)
#
# noexcept nogil, trusting their input (see metarl_fast.reference.incontext_mdp for the semantics,
# the feature table and the boundary checks).  Return codes as in policy.pxd: MF_OK (-1) success,
# MF_NO_MEMORY (-2); ICM_NONFINITE (-3): a logit was not finite (the trial stops there).
from libc.stdint cimport int64_t, uint8_t

from metarl_fast._core.policy cimport intp_t

cdef enum:
    ICM_N_FEATURES = 8
    ICM_NONFINITE = -3
    # reward kinds: the index of the name in metarl_fast.tasks.REWARD_KINDS
    ICM_REWARD_NONE = 0
    ICM_REWARD_GAUSSIAN = 1
    ICM_REWARD_BERNOULLI = 2
    ICM_REWARD_TRANSITION = 3
    ICM_REWARD_OUTCOME = 4

# Raw pointers into the arrays of a metarl_fast.tasks.EnvTables (shapes in its docstring).
cdef struct TablesView:
    intp_t n_tasks
    intp_t n_states
    intp_t n_actions
    intp_t horizon
    const double* trans_cdf_padded     # (n, S, A, trans_stride): tasks.padded_cdf_rows
    intp_t trans_stride
    const int64_t* next_state
    int stochastic_transitions
    const double* reward_mean
    int reward_kind
    const double* reward_std
    const double* reward_next
    const double* start_cdf
    const int64_t* start_state
    int stochastic_start
    const uint8_t* terminal
    intp_t reward_outcomes             # K: reward outcomes per transition (ICM_REWARD_OUTCOME)
    const double* reward_values        # (n, S, A, S, K)
    const double* reward_cdf           # (n, S, A, S, K): running sums of the outcome probabilities

# Fill ``out`` from a validated metarl_fast.tasks.EnvTables (the object must outlive its use).
cdef int fill_view(object tables, TablesView* out) except -1

# Empirical and optimistic Q-values of one task's statistics: count, reward_sum (S, A), trans
# (S, A, S), seen_terminal (S,) -> q_emp, q_opt (horizon, S, A) ([h - 1] for h steps left);
# scratch holds 2 * S + 2 * S * A doubles.
cdef void empirical_q_task(const double* count, const double* reward_sum, const double* trans,
                           const uint8_t* seen_terminal, intp_t S, intp_t A, intp_t horizon,
                           double* q_emp, double* q_opt, double* scratch) noexcept nogil

# One trial of n_episodes episodes per task from pre-drawn random blocks laid out as in the
# reference (u_start (T, N) or NULL, u_act (T, N, H), noise (T, N, H) or NULL, u_next (T, N, H) or
# NULL; for ICM_REWARD_OUTCOME ``noise`` holds the reward-outcome uniforms, drawn after u_next).  returns (T, N) is written; actions_out (T, N, H) may be NULL; weighted_score
# (ICM_N_FEATURES,), score_sums (N * H, ICM_N_FEATURES) and reward_sums (N * H,) are either all
# NULL (no gradient) or all given (zeroed here).
cdef intp_t play_mdp_trials(const TablesView* t, const double* weights, intp_t n_episodes,
                            const double* u_start, const double* u_act, const double* noise,
                            const double* u_next, double* returns, int64_t* actions_out,
                            double* weighted_score, double* score_sums,
                            double* reward_sums) noexcept nogil
