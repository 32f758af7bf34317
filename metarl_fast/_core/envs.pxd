# Tabular environment stepping and fused rollouts, for other Cython code to cimport:
#
#     from metarl_fast._core.envs cimport EnvTablesC, fill_tables, rollout_kernel, vec_step_kernel
#
# The kernels are noexcept nogil and trust their input (validated tables, in-range states and
# actions).  The random draws follow the order documented in metarl_fast/reference/envs.py, so
# the results equal the NumPy reference bit for bit.
from libc.stdint cimport int32_t, int64_t, uint8_t
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    ENVS_OK = -1
    ENVS_NO_MEMORY = -2
    # reward kinds: the index of the name in metarl_fast.tasks.REWARD_KINDS
    KIND_NONE = 0
    KIND_GAUSSIAN = 1
    KIND_BERNOULLI = 2
    KIND_TRANSITION = 3
    KIND_OUTCOME = 4

# Raw pointers into the arrays of a metarl_fast.tasks.EnvTables (shapes in its docstring).
cdef struct EnvTablesC:
    intp_t n_tasks
    intp_t n_states
    intp_t n_actions
    intp_t horizon
    const double* trans_cdf_padded     # (n, S, A, trans_stride): tasks.padded_cdf_rows of P's running sums
    intp_t trans_stride
    const int32_t* trans_guide         # (n, S, A, guide_buckets + 1): tasks.guide_rows (if guide_buckets > 0)
    intp_t guide_buckets
    int has_terminal
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
    intp_t reward_outcomes             # K: reward outcomes per transition (KIND_OUTCOME)
    const double* reward_values        # (n, S, A, S, K)
    const double* reward_cdf           # (n, S, A, S, K): running sums of the outcome probabilities

# Output arrays of rollout_kernel: steps (capacity T * N * H) and per-episode (T * N) arrays.
cdef struct RolloutOut:
    int64_t* obs
    int64_t* action
    double* reward
    int64_t* next_obs
    uint8_t* terminated
    uint8_t* truncated
    double* logp
    int64_t* task_id
    int64_t* episode_length
    double* episode_return

# Fill ``out`` from a validated metarl_fast.tasks.EnvTables (the object must outlive its use).
cdef int fill_tables(object tables, EnvTablesC* out) except -1

# Runs N episodes on each task from pre-drawn random blocks (u_start (T, N) or NULL, u_act
# (T, N, H), noise (T, N, H) or NULL, u_next (T, N, H) or NULL; for KIND_OUTCOME rewards ``noise``
# holds the reward-outcome uniforms, the block drawn after u_next); returns the number of steps
# written (the step arrays of ``out`` need capacity T * N * H: episodes run in slots of H steps
# and are then packed one after the other).
# ``action_cdf`` (n_policies, S, action_stride) holds the running sums of each policy's action
# weights laid out by metarl_fast.tasks.padded_cdf_rows; ``action_logp`` (n_policies, S, A)
# the log-probabilities.  The blocks may live in the output arrays they are consumed into (every
# entry is read before its slot is written): u_start in out.episode_return, u_act in out.logp,
# noise in out.reward.
cdef intp_t rollout_kernel(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                           const double* action_logp, const int64_t* policy_of_task,
                           intp_t n_episodes,
                           const double* u_start, const double* u_act, const double* noise,
                           const double* u_next, RolloutOut* out) noexcept nogil

# rollout_kernel drawing its random blocks itself, in the documented order, from ``bitgen``
# (the caller holds its lock): the same result as filling the blocks first.  Returns the number
# of steps, or ENVS_NO_MEMORY.
cdef intp_t rollout_draw_kernel(const EnvTablesC* t, const double* action_cdf, intp_t action_stride,
                                const double* action_logp, const int64_t* policy_of_task,
                                intp_t n_episodes, bitgen_t* bitgen, RolloutOut* out) noexcept nogil

# One step of n environments with same-step auto-reset; the caller holds the BitGenerator's lock.
# ``scratch`` holds n doubles.  Returns ENVS_OK.
cdef intp_t vec_step_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                            int64_t* elapsed, const int64_t* actions, intp_t n, bitgen_t* bitgen,
                            double* scratch, int64_t* obs_out, double* reward_out,
                            uint8_t* terminated_out, uint8_t* truncated_out,
                            int64_t* final_obs_out) noexcept nogil

# Start states of n environments (draws n uniforms if starts are random).
cdef void vec_reset_kernel(const EnvTablesC* t, const int64_t* task_of_env, int64_t* state,
                           int64_t* elapsed, intp_t n, bitgen_t* bitgen) noexcept nogil
