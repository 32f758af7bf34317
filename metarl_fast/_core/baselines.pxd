# Bandit baseline agents, for other Cython code to cimport:
#
#     from metarl_fast._core.baselines cimport play_agent, C_THOMPSON
#
# noexcept nogil, trusting their input (see metarl_fast.reference.baselines for the semantics, the
# draw order and the boundary checks).  Return codes as in policy.pxd.
from numpy.random cimport bitgen_t

from metarl_fast._core.policy cimport intp_t

cdef enum:
    C_RANDOM = 0
    C_GREEDY = 1
    C_EPSILON = 2
    C_UCB1 = 3
    C_THOMPSON = 4

# One trial of n_pulls pulls per task (arm_means (n_tasks, n_arms)); totals (n_tasks,) written.
# parameter: epsilon for C_EPSILON, c for C_UCB1.  The caller holds the BitGenerator's lock.
cdef intp_t play_agent(int agent, double parameter, const double* arm_means, intp_t n_tasks,
                       intp_t n_arms, intp_t n_pulls, bitgen_t* bitgen,
                       double* totals) noexcept nogil
