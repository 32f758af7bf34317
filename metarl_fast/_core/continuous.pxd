# Stepping of the continuous-observation task families (PointNavigation, CartPoles), for other
# Cython code to cimport:
#
#     from metarl_fast._core.continuous cimport cartpole_step_one, cartpoles_step_kernel
#
# The kernels are noexcept nogil and trust their input (shapes, actions in range, parameters and
# states within the bounds of metarl_fast/reference/continuous.py).  The per-task steps are inline
# here so that a fused rollout compiles them into its own loop.  Their arithmetic is the NumPy
# reference's (and Gymnasium's), operation for operation; the build turns off FMA contraction.
from libc.math cimport cos, sin, sqrt
from libc.stdint cimport int64_t, uint8_t
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    POINT_OBS_DIM = 2
    CARTPOLE_OBS_DIM = 4
    CARTPOLE_N_PARAMS = 5      # gravity, masscart, masspole, length, force_mag
    CARTPOLE_N_ACTIONS = 2

cdef extern from *:
    """
    #ifndef MF_CARTPOLE_TAU
    #define MF_CARTPOLE_TAU 0.02
    #define MF_CARTPOLE_X_THRESHOLD 2.4
    /* Gymnasium's 12 * 2 * math.pi / 360, in the same order (each operation rounded once) */
    #define MF_CARTPOLE_THETA_THRESHOLD (12.0 * 2.0 * 3.141592653589793 / 360.0)
    #define MF_CARTPOLE_RESET_LOW (-0.05)
    #define MF_CARTPOLE_RESET_HIGH 0.05
    #endif
    """
    const double MF_CARTPOLE_TAU
    const double MF_CARTPOLE_X_THRESHOLD
    const double MF_CARTPOLE_THETA_THRESHOLD
    const double MF_CARTPOLE_RESET_LOW
    const double MF_CARTPOLE_RESET_HIGH


cdef inline bint cartpole_beyond_thresholds(double x, double theta) noexcept nogil:
    """True if the cart or the pole is beyond Gymnasium's thresholds (2.4, 12 degrees)."""
    return (x < -MF_CARTPOLE_X_THRESHOLD or x > MF_CARTPOLE_X_THRESHOLD
            or theta < -MF_CARTPOLE_THETA_THRESHOLD or theta > MF_CARTPOLE_THETA_THRESHOLD)


cdef inline void cartpole_step_one(const double* params,    # IN (5,)
                                   const double* state,     # IN (4,)
                                   int64_t action,          # IN 0 or 1
                                   double* state_out,       # OUT (4,), may be state
                                   double* reward_out,      # OUT (1,)
                                   uint8_t* terminated_out  # OUT (1,)
                                   ) noexcept nogil:
    """One CartPole step of one task; a state already terminal is absorbing (reward 0)."""
    cdef double x = state[0], x_dot = state[1], theta = state[2], theta_dot = state[3]
    cdef double masspole = params[2], length = params[3], force_mag = params[4]
    cdef double force, costheta, sintheta, total_mass, polemass_length, temp, thetaacc, xacc
    if cartpole_beyond_thresholds(x, theta):
        state_out[0] = x
        state_out[1] = x_dot
        state_out[2] = theta
        state_out[3] = theta_dot
        reward_out[0] = 0.0
        terminated_out[0] = 1
        return
    force = force_mag if action == 1 else -force_mag
    costheta = cos(theta)
    sintheta = sin(theta)
    total_mass = masspole + params[1]
    polemass_length = masspole * length
    temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass
    thetaacc = (params[0] * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * (costheta * costheta) / total_mass))
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    x = x + MF_CARTPOLE_TAU * x_dot
    x_dot = x_dot + MF_CARTPOLE_TAU * xacc
    theta = theta + MF_CARTPOLE_TAU * theta_dot
    theta_dot = theta_dot + MF_CARTPOLE_TAU * thetaacc
    state_out[0] = x
    state_out[1] = x_dot
    state_out[2] = theta
    state_out[3] = theta_dot
    reward_out[0] = 1.0
    terminated_out[0] = cartpole_beyond_thresholds(x, theta)


cdef inline void point_navigation_step_one(const double* goal,      # IN (2,)
                                           const double* move,      # IN (2,): moves[action]
                                           const double* state,     # IN (2,)
                                           double* state_out,       # OUT (2,), may be state
                                           double* reward_out,      # OUT (1,)
                                           uint8_t* terminated_out  # OUT (1,)
                                           ) noexcept nogil:
    """One PointNavigation step of one task: move, pay minus the distance to the goal."""
    cdef double x = state[0] + move[0]
    cdef double y = state[1] + move[1]
    cdef double dx = x - goal[0]
    cdef double dy = y - goal[1]
    state_out[0] = x
    state_out[1] = y
    reward_out[0] = -sqrt(dx * dx + dy * dy)
    terminated_out[0] = 0


# Every task one step: params (n, 5) / goals (n, 2), moves (A, 2), states (n, obs_dim), actions (n,)
# in range; outputs (n, obs_dim), (n,), (n,); states_out may equal states (same pointer).
cdef void cartpoles_step_kernel(intp_t n_tasks, const double* params, const double* states,
                                const int64_t* actions, double* states_out, double* rewards_out,
                                uint8_t* terminated_out) noexcept nogil
cdef void point_navigation_step_kernel(intp_t n_tasks, const double* goals, const double* moves,
                                       const double* states, const int64_t* actions,
                                       double* states_out, double* rewards_out,
                                       uint8_t* terminated_out) noexcept nogil
# Start states (n, 4): 4 uniforms per task in task order, rng.uniform(-0.05, 0.05, (n, 4))'s values
# (hold the BitGenerator's lock).
cdef void cartpoles_reset_kernel(intp_t n_tasks, bitgen_t* bitgen, double* states_out) noexcept nogil
