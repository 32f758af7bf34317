# The fused RL^2 trial rollout with a GRU policy (see rl2.pyx and metarl_fast/reference/rl2.py for
# the GRU input, the draw order and the outputs), for other Cython code to cimport:
#
#     from metarl_fast._core.rl2 cimport RL2Out, rl2_trials, rl2_draw_trials
#
# noexcept nogil, trusting their input (validated tables and parameters, C-contiguous outputs).
# Return codes: >= 0 success (the number of steps written), RL2_NO_MEMORY (-2), RL2_OVERFLOW (-3):
# a GRU result was not finite (the outputs are then incomplete).
from libc.stdint cimport int64_t, uint8_t
from numpy.random cimport bitgen_t

from metarl_fast._core.envs cimport EnvTablesC
from metarl_fast._core.gru cimport GRUNet

ctypedef Py_ssize_t intp_t

cdef enum:
    RL2_NO_MEMORY = -2
    RL2_OVERFLOW = -3

# Outputs of T trials of N episodes of horizon H (cap = N * H slots per trial, D = S + A + 2).
cdef struct RL2Out:
    int64_t* obs             # (T * cap,): the steps, packed trial after trial on return
    int64_t* action          # (T * cap,)
    double* reward           # (T * cap,)
    uint8_t* terminated      # (T * cap,)
    uint8_t* truncated       # (T * cap,)
    double* logp             # (T * cap,)
    double* value            # (T * cap,)
    int64_t* trial_id        # (T * cap,)
    int64_t* episode_id      # (T * cap,)
    int64_t* trial_length    # (T,)
    double* trial_return     # (T,)
    double* inputs           # (cap, T, D), zeroed by the caller: the GRU inputs, time-major
    uint8_t* mask            # (cap, T), zeroed by the caller: 1 where trial i has a step k

# The trials from pre-drawn random blocks laid out as in the reference (u_start (T, N) or NULL,
# u_act (T, N, H), noise (T, N, H) or NULL, u_next (T, N, H) or NULL, u_reward (T, N, H) or NULL);
# ``net`` must have input_dim S + A + 2 and n_actions A of ``t``.  All trials step in lockstep:
# one GRU step over the live trials' rows per step; scratch is allocated once.
cdef intp_t rl2_trials(const EnvTablesC* t, const GRUNet* net, const double* params,
                       intp_t n_episodes, const double* u_start, const double* u_act,
                       const double* noise, const double* u_next, const double* u_reward,
                       RL2Out* out) noexcept nogil

# rl2_trials drawing its random blocks itself from ``bitgen``, in the documented order (the caller
# holds the BitGenerator's lock).
cdef intp_t rl2_draw_trials(const EnvTablesC* t, const GRUNet* net, const double* params,
                            intp_t n_episodes, bitgen_t* bitgen, RL2Out* out) noexcept nogil
