# Fused rollouts of MLP softmax policies on the continuous-observation task families (see
# continuous_rollout.pyx and metarl_fast/reference/continuous_rollout.py for the draws, the
# sampling rule and the layout), for other Cython code to cimport:
#
#     from metarl_fast._core.continuous_rollout cimport ContinuousEnvC, ContinuousRolloutOut, continuous_rollout_kernel
#
# The kernel is noexcept nogil, float64 only, and trusts its input (validated as the reference
# does).  The caller holds the BitGenerator's lock.
from libc.stdint cimport int64_t, uint8_t
from numpy.random cimport bitgen_t

from metarl_fast._core.mlp cimport MLPNet

ctypedef Py_ssize_t intp_t

cdef enum:
    FAMILY_CARTPOLES = 0
    FAMILY_POINT_NAVIGATION = 1
    ROLLOUT_INTERRUPTED = -4      # a signal handler raised (held for the caller); outputs incomplete
                                  # (-2, -3: MLP_NO_MEMORY, MLP_OVERFLOW of mlp.pxd)

cdef struct ContinuousEnvC:
    int family                    # FAMILY_CARTPOLES or FAMILY_POINT_NAVIGATION
    const double* task_params     # (T, 5) CartPole physics, or (T, 2) goals
    const double* moves           # (A, 2) PointNavigation moves (NULL for CartPoles)
    intp_t n_tasks
    intp_t obs_dim                # 4 or 2
    intp_t n_actions              # 2, or the rows of moves
    intp_t horizon

cdef struct ContinuousRolloutOut:  # room for T * N * H steps (written from the start, packed)
    double* obs                   # (cap, obs_dim)
    int64_t* action
    double* reward
    double* next_obs              # (cap, obs_dim)
    uint8_t* terminated
    uint8_t* truncated
    double* logp                  # z[action]: the caller subtracts log(total) (NumPy's log)
    double* total                 # sum of exp(z) over the actions (the CDF's last entry)
    int64_t* task_id
    int64_t* episode_length       # (T * N,)
    double* episode_return        # (T * N,)

# Draws and runs every episode (policy of task i: params + policy_of_task[i] * net.n_params);
# returns the number of steps written, or MLP_NO_MEMORY / MLP_OVERFLOW / ROLLOUT_INTERRUPTED.
cdef intp_t continuous_rollout_kernel(const ContinuousEnvC* env, const MLPNet* net,
                                      const double* params, const int64_t* policy_of_task,
                                      intp_t n_episodes, bitgen_t* bitgen,
                                      ContinuousRolloutOut* out, bint interruptible) noexcept nogil
