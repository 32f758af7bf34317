"""Batched stepping of the continuous-observation task families (Cython twin of
:mod:`metarl_fast.reference.continuous`, which documents the dynamics, the bounds and the draws).

The ``def`` functions check their arguments at C level (types, shapes, contiguity, bounds and
finiteness in one pass, no Python objects made); when that check fails they call the reference's
checks, which raise the error naming the argument (or convert an input they accept, such as a list
or a strided array).  Then one ``nogil`` loop over tasks runs the inline steps of
``continuous.pxd``.  Same arithmetic in the same order as the reference: equal results to the last
bit wherever the C library's ``sin``/``cos`` round as NumPy's do (NumPy may use its own SIMD
versions, within an ulp).
"""
cimport numpy as cnp
from libc.math cimport fabs
from libc.stdint cimport int64_t, uint8_t
from numpy.random cimport bitgen_t

from metarl_fast._core.rng cimport bitgen_of, next_uniform

import numpy as np

from metarl_fast.reference.continuous import (
    CARTPOLE_DEFAULTS, CARTPOLE_PARAM_HIGH, CARTPOLE_PARAM_LOW, CARTPOLE_PARAMS,
    MAX_ABS_STATE, POINT_MAX_ABS_GOAL, POINT_MAX_STEP,
    check_cartpoles_params, check_cartpoles_step_args, check_point_goals,
    check_point_navigation_step_args, check_reset_out, point_navigation_moves)
from metarl_fast._validate import check_rng

_Generator = np.random.Generator

cnp.import_array()

# Python views of the C constants (a twin test compares them with the reference's)
CARTPOLE_TAU = MF_CARTPOLE_TAU
CARTPOLE_X_THRESHOLD = MF_CARTPOLE_X_THRESHOLD
CARTPOLE_THETA_THRESHOLD = MF_CARTPOLE_THETA_THRESHOLD
CARTPOLE_RESET_LOW = MF_CARTPOLE_RESET_LOW
CARTPOLE_RESET_HIGH = MF_CARTPOLE_RESET_HIGH

cdef double[CARTPOLE_N_PARAMS] _PARAM_LOW = CARTPOLE_PARAM_LOW
cdef double[CARTPOLE_N_PARAMS] _PARAM_HIGH = CARTPOLE_PARAM_HIGH
cdef double _MAX_ABS_STATE = MAX_ABS_STATE
cdef double _MAX_ABS_GOAL = POINT_MAX_ABS_GOAL
cdef double _MAX_STEP = POINT_MAX_STEP


# ---------------------------------------------------------------------------------------------
# nogil kernels (declared in continuous.pxd)
# ---------------------------------------------------------------------------------------------

cdef void cartpoles_step_kernel(intp_t n_tasks, const double* params, const double* states,
                                const int64_t* actions, double* states_out, double* rewards_out,
                                uint8_t* terminated_out) noexcept nogil:
    cdef intp_t i
    for i in range(n_tasks):
        cartpole_step_one(params + i * CARTPOLE_N_PARAMS, states + i * CARTPOLE_OBS_DIM, actions[i],
                          states_out + i * CARTPOLE_OBS_DIM, rewards_out + i, terminated_out + i)


cdef void point_navigation_step_kernel(intp_t n_tasks, const double* goals, const double* moves,
                                       const double* states, const int64_t* actions,
                                       double* states_out, double* rewards_out,
                                       uint8_t* terminated_out) noexcept nogil:
    cdef intp_t i
    for i in range(n_tasks):
        point_navigation_step_one(goals + i * POINT_OBS_DIM, moves + actions[i] * POINT_OBS_DIM,
                                  states + i * POINT_OBS_DIM, states_out + i * POINT_OBS_DIM,
                                  rewards_out + i, terminated_out + i)


cdef void cartpoles_reset_kernel(intp_t n_tasks, bitgen_t* bitgen, double* states_out) noexcept nogil:
    # Generator.uniform(low, high) is low + (high - low) * next_double, element by element
    cdef double scale = MF_CARTPOLE_RESET_HIGH - MF_CARTPOLE_RESET_LOW
    cdef intp_t j
    for j in range(n_tasks * CARTPOLE_OBS_DIM):
        states_out[j] = MF_CARTPOLE_RESET_LOW + scale * next_uniform(bitgen)


# ---------------------------------------------------------------------------------------------
# C-level argument checks (fast path); on failure the reference's checks raise the message
# ---------------------------------------------------------------------------------------------

cdef inline bint _is_array(object x, int typenum, int ndim):
    """x is a C-contiguous, aligned, native-byte-order ndarray of this type and ndim."""
    return (type(x) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> x) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray> x) == ndim and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> x)
            and cnp.PyArray_ISBEHAVED_RO(<cnp.ndarray> x))


cdef inline bint _is_table(object x, int typenum, intp_t n_rows, intp_t n_cols):
    """_is_array with shape (n_rows, n_cols); n_rows < 0: any number of rows."""
    return (_is_array(x, typenum, 2) and cnp.PyArray_DIM(<cnp.ndarray> x, 1) == n_cols
            and (n_rows < 0 or cnp.PyArray_DIM(<cnp.ndarray> x, 0) == n_rows))


cdef inline bint _is_out(object x, int typenum, int ndim, intp_t n_rows, intp_t n_cols):
    """A writeable output of shape (n_rows,) or (n_rows, n_cols)."""
    if not _is_array(x, typenum, ndim) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x):
        return False
    if cnp.PyArray_DIM(<cnp.ndarray> x, 0) != n_rows:
        return False
    return ndim == 1 or cnp.PyArray_DIM(<cnp.ndarray> x, 1) == n_cols


cdef inline bint _all_abs_le(object x, double bound):
    """Every entry finite with |v| <= bound (NaN fails the comparison)."""
    cdef const double* p = <const double*> cnp.PyArray_DATA(<cnp.ndarray> x)
    cdef intp_t j, m = cnp.PyArray_SIZE(<cnp.ndarray> x)
    cdef bint ok = True
    with nogil:
        for j in range(m):
            ok &= fabs(p[j]) <= bound
    return ok


cdef inline bint _actions_in_range(object actions, intp_t n, int64_t high):
    cdef const int64_t* a = <const int64_t*> cnp.PyArray_DATA(<cnp.ndarray> actions)
    cdef intp_t i
    cdef bint ok = True
    with nogil:
        for i in range(n):
            ok &= (a[i] >= 0) & (a[i] < high)
    return ok


cdef bint _params_ok(object params):
    """float64 (n, 5) C-contiguous with every column within CARTPOLE_PARAM_LOW/HIGH."""
    if not _is_table(params, cnp.NPY_DOUBLE, -1, CARTPOLE_N_PARAMS):
        return False
    cdef const double* p = <const double*> cnp.PyArray_DATA(<cnp.ndarray> params)
    cdef intp_t i, j, n = cnp.PyArray_DIM(<cnp.ndarray> params, 0)
    cdef bint ok = True
    with nogil:
        for i in range(n):
            for j in range(CARTPOLE_N_PARAMS):
                # written so that NaN fails
                ok &= (p[i * CARTPOLE_N_PARAMS + j] >= _PARAM_LOW[j]) & (p[i * CARTPOLE_N_PARAMS + j] <= _PARAM_HIGH[j])
    return ok


cdef inline char* _begin(object x):
    return <char*> cnp.PyArray_DATA(<cnp.ndarray> x)


cdef inline bint _disjoint(object a, object b):
    """The byte ranges of two (contiguous, non-empty or empty) arrays do not intersect."""
    cdef char* a0 = _begin(a)
    cdef char* b0 = _begin(b)
    cdef intp_t na = cnp.PyArray_NBYTES(<cnp.ndarray> a), nb = cnp.PyArray_NBYTES(<cnp.ndarray> b)
    return na == 0 or nb == 0 or a0 + na <= b0 or b0 + nb <= a0


cdef bint _outputs_ok(object inputs, object states, object out_states, object out_rewards,
                      object out_terminated):
    """No output overlaps an input or another output, except out_states is states."""
    if not (_disjoint(out_states, out_rewards) and _disjoint(out_states, out_terminated)
            and _disjoint(out_rewards, out_terminated)):
        return False
    for arr in inputs:
        if not (_disjoint(out_rewards, arr) and _disjoint(out_terminated, arr)):
            return False
        if not _disjoint(out_states, arr) and not (arr is states and _begin(arr) == _begin(out_states)):
            return False
    return True


cdef bint _step_arrays_ok(intp_t n, intp_t obs_dim, object states, object actions, int64_t n_actions,
                          object out_states, object out_rewards, object out_terminated):
    return (_is_table(states, cnp.NPY_DOUBLE, n, obs_dim)
            and _is_array(actions, cnp.NPY_INT64, 1) and cnp.PyArray_DIM(<cnp.ndarray> actions, 0) == n
            and _is_out(out_states, cnp.NPY_DOUBLE, 2, n, obs_dim)
            and _is_out(out_rewards, cnp.NPY_DOUBLE, 1, n, 0)
            and _is_out(out_terminated, cnp.NPY_BOOL, 1, n, 0)
            and _all_abs_le(states, _MAX_ABS_STATE) and _actions_in_range(actions, n, n_actions))


# ---------------------------------------------------------------------------------------------
# Python entry points (same names, arguments and errors as the reference)
# ---------------------------------------------------------------------------------------------

def point_navigation_reset(goals, rng, out=None):
    """Start states of every task: float64 (n, 2) zeros.  See :func:`metarl_fast.reference.continuous.point_navigation_reset`."""
    goals = check_point_goals(goals)
    check_rng(rng)
    out = check_reset_out(out, goals.shape[0], POINT_OBS_DIM)
    out[...] = 0.0
    return out


def point_navigation_step(goals, moves, states, actions, out_states, out_rewards, out_terminated):
    """One step of every task.  See :func:`metarl_fast.reference.continuous.point_navigation_step`."""
    cdef intp_t n = -1
    if (_is_table(goals, cnp.NPY_DOUBLE, -1, POINT_OBS_DIM)
            and _is_table(moves, cnp.NPY_DOUBLE, -1, POINT_OBS_DIM)):
        n = cnp.PyArray_DIM(<cnp.ndarray> goals, 0)
        if not (cnp.PyArray_DIM(<cnp.ndarray> moves, 0) >= 1
                and _all_abs_le(goals, _MAX_ABS_GOAL) and _all_abs_le(moves, _MAX_STEP)
                and _step_arrays_ok(n, POINT_OBS_DIM, states, actions, cnp.PyArray_DIM(<cnp.ndarray> moves, 0),
                                    out_states, out_rewards, out_terminated)
                and _outputs_ok((goals, moves, states, actions), states, out_states, out_rewards,
                                out_terminated)):
            n = -1
    if n < 0:
        goals, moves, states, actions = check_point_navigation_step_args(
            goals, moves, states, actions, out_states, out_rewards, out_terminated)
        n = goals.shape[0]
    cdef const double* g = <const double*> cnp.PyArray_DATA(<cnp.ndarray> goals)
    cdef const double* m = <const double*> cnp.PyArray_DATA(<cnp.ndarray> moves)
    cdef const double* s = <const double*> cnp.PyArray_DATA(<cnp.ndarray> states)
    cdef const int64_t* a = <const int64_t*> cnp.PyArray_DATA(<cnp.ndarray> actions)
    cdef double* s_out = <double*> cnp.PyArray_DATA(<cnp.ndarray> out_states)
    cdef double* r_out = <double*> cnp.PyArray_DATA(<cnp.ndarray> out_rewards)
    cdef uint8_t* t_out = <uint8_t*> cnp.PyArray_DATA(<cnp.ndarray> out_terminated)
    with nogil:
        point_navigation_step_kernel(n, g, m, s, a, s_out, r_out, t_out)


def cartpoles_reset(params, rng, out=None):
    """Start states of every task, float64 (n, 4): ``rng.uniform(-0.05, 0.05, (n, 4))``'s values.
    See :func:`metarl_fast.reference.continuous.cartpoles_reset`."""
    params = check_cartpoles_params(params)
    check_rng(rng)
    out = check_reset_out(out, params.shape[0], CARTPOLE_OBS_DIM)
    cdef intp_t n = params.shape[0]
    cdef double* s_out = <double*> cnp.PyArray_DATA(<cnp.ndarray> out)
    bit_generator = rng.bit_generator
    cdef bitgen_t* bitgen = bitgen_of(bit_generator)
    with bit_generator.lock, nogil:
        cartpoles_reset_kernel(n, bitgen, s_out)
    return out


def cartpoles_step(params, states, actions, out_states, out_rewards, out_terminated):
    """One step of every task.  See :func:`metarl_fast.reference.continuous.cartpoles_step`."""
    cdef intp_t n = -1
    if _params_ok(params):
        n = cnp.PyArray_DIM(<cnp.ndarray> params, 0)
        if not (_step_arrays_ok(n, CARTPOLE_OBS_DIM, states, actions, CARTPOLE_N_ACTIONS,
                                out_states, out_rewards, out_terminated)
                and _outputs_ok((params, states, actions), states, out_states, out_rewards,
                                out_terminated)):
            n = -1
    if n < 0:
        params, states, actions = check_cartpoles_step_args(params, states, actions, out_states,
                                                            out_rewards, out_terminated)
        n = params.shape[0]
    cdef const double* p = <const double*> cnp.PyArray_DATA(<cnp.ndarray> params)
    cdef const double* s = <const double*> cnp.PyArray_DATA(<cnp.ndarray> states)
    cdef const int64_t* a = <const int64_t*> cnp.PyArray_DATA(<cnp.ndarray> actions)
    cdef double* s_out = <double*> cnp.PyArray_DATA(<cnp.ndarray> out_states)
    cdef double* r_out = <double*> cnp.PyArray_DATA(<cnp.ndarray> out_rewards)
    cdef uint8_t* t_out = <uint8_t*> cnp.PyArray_DATA(<cnp.ndarray> out_terminated)
    with nogil:
        cartpoles_step_kernel(n, p, s, a, s_out, r_out, t_out)

