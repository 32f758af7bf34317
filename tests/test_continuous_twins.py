"""The Cython twin of the continuous-task kernels (_core/continuous.pyx) against the NumPy
reference: the same names and signatures, the same constants, the same draws, and the same
results to the last bit (CartPoles: wherever the C library's sin/cos round as NumPy's do)."""
import ctypes
import ctypes.util
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_cython
from metarl_fast import _backend
from metarl_fast.continuous_tasks import CartPoles, PointNavigation
from metarl_fast.reference import continuous as ref

try:
    from metarl_fast._core import continuous as cy
except ImportError:  # numpy-only checkout
    cy = None

pytestmark = needs_cython
SETTINGS = settings(max_examples=60, deadline=None)


def _libm_trig():
    """(sin, cos) of the C library the extension links, or None where it cannot be loaded."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        libm = ctypes.CDLL(name)
    except OSError:
        return None
    fns = []
    for f in (libm.sin, libm.cos):
        f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double]
        fns.append(f)
    return fns


LIBM = _libm_trig()


def _numpy_trig_is_libms(thetas):
    """True if NumPy's sin and cos give the C library's values at every angle in ``thetas``
    (NumPy may use its own SIMD versions, within an ulp; then only a tolerance can hold)."""
    if LIBM is None:
        return False
    sin, cos = LIBM
    return all(np.sin(t) == sin(float(t)) and np.cos(t) == cos(float(t)) for t in thetas)


def _outs(n, d):
    return np.empty((n, d)), np.empty(n), np.empty(n, dtype=bool)


def test_same_kernels_signatures_and_constants():
    for name in ref.KERNELS:
        assert inspect.signature(getattr(cy, name)) == inspect.signature(getattr(ref, name)), name
    for name in ("CARTPOLE_TAU", "CARTPOLE_X_THRESHOLD", "CARTPOLE_THETA_THRESHOLD",
                 "CARTPOLE_RESET_LOW", "CARTPOLE_RESET_HIGH"):
        assert getattr(cy, name) == getattr(ref, name), name
    assert cy.__file__.endswith((".so", ".pyd")), "the compiled twin is not built"
    with _backend.use_backend("cython"):
        assert _backend.active.continuous is cy
    with _backend.use_backend("numpy"):
        assert _backend.active.continuous is ref


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 70), n_directions=st.integers(1, 12),
       step_size=st.sampled_from([1e-3, 0.1, 1.0, 7.5]), scale=st.sampled_from([1e-3, 1.0, 1e6]))
def test_point_navigation_twins_bit_identical(seed, n, n_directions, step_size, scale):
    rng = np.random.default_rng(seed)
    goals = rng.uniform(-1, 1, (n, 2)) * min(scale, 1e6)
    moves = ref.point_navigation_moves(n_directions, step_size)
    states = rng.uniform(-1, 1, (n, 2)) * scale
    for _ in range(3):
        actions = rng.integers(0, n_directions + 1, n)
        got, want = _outs(n, 2), _outs(n, 2)
        cy.point_navigation_step(goals, moves, states, actions, *got)
        ref.point_navigation_step(goals, moves, states, actions, *want)
        for g, w in zip(got, want):
            assert np.array_equal(g, w)
        states = got[0]
    assert np.array_equal(cy.point_navigation_reset(goals, rng), ref.point_navigation_reset(goals, rng))


def _cartpole_case(seed, n, wide):
    rng = np.random.default_rng(seed)
    low, high = np.array(ref.CARTPOLE_PARAM_LOW), np.array(ref.CARTPOLE_PARAM_HIGH)
    if wide:  # anywhere in the accepted box (log-uniform where it spans decades)
        params = np.exp(rng.uniform(np.log(np.maximum(low, 1e-3)), np.log(high), (n, 5)))
        states = rng.normal(size=(n, 4)) * np.array([1.5, 10.0, 0.15, 50.0])
    else:
        params = CartPoles().sample(max(n, 1), rng).params[:n].copy()
        states = rng.uniform(-0.05, 0.05, (n, 4))
    return rng, params, states


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 70), wide=st.booleans())
def test_cartpoles_twins_agree_to_1e15_and_bit_for_bit_where_trig_matches(seed, n, wide):
    """Equal to the last bit when NumPy's sin/cos of every angle stepped equals the C library's
    (the rest of the arithmetic is the same operations in the same order); otherwise within
    1e-15 relative (an ulp of sin or cos moves the result by about as much)."""
    rng, params, states = _cartpole_case(seed, n, wide)
    for _ in range(5):
        actions = rng.integers(0, 2, n)
        got, want = _outs(n, 4), _outs(n, 4)
        cy.cartpoles_step(params, states, actions, *got)
        ref.cartpoles_step(params, states, actions, *want)
        if _numpy_trig_is_libms(states[:, 2]):
            for g, w in zip(got, want):
                assert np.array_equal(g, w)
        else:  # pragma: no cover - platform dependent
            np.testing.assert_allclose(got[0], want[0], rtol=1e-15, atol=1e-300)
            assert np.array_equal(got[1], want[1])
        states = got[0]


def test_cartpoles_trig_of_this_build_is_numpys_so_the_exact_branch_runs():
    """Where the C library's sin/cos equal NumPy's (as on the reference machines), the test above
    checks bit identity; say so loudly if this platform only gets the tolerance."""
    thetas = np.random.default_rng(0).uniform(-0.3, 0.3, 2000)
    if not _numpy_trig_is_libms(thetas):
        pytest.skip("NumPy's sin/cos differ from the C library's here: the twins are compared "
                    "within 1e-15 only")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50), pre=st.integers(0, 5))
def test_cartpoles_reset_twins_draw_the_same_stream(seed, n, pre):
    params = np.tile(ref.CARTPOLE_DEFAULTS, (n, 1))
    r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
    r1.random(pre), r2.random(pre)
    got = cy.cartpoles_reset(params, r1)
    want = ref.cartpoles_reset(params, r2)
    assert np.array_equal(got, want)
    assert r1.random() == r2.random()  # and left the generator at the same place


@pytest.mark.parametrize("fam", [PointNavigation(n_directions=6), CartPoles()], ids=["point", "cartpoles"])
def test_batch_rollouts_equal_under_both_backends(fam):
    batch = fam.sample(300, 5)
    results = []
    for backend in ("cython", "numpy"):
        with _backend.use_backend(backend):
            rng = np.random.default_rng(7)
            states = batch.reset_states(rng)
            trace = [states.copy()]
            for _ in range(60):
                states, rewards, terminated = batch.step(states, rng.integers(0, batch.n_actions, 300))
                trace += [states.copy(), rewards.copy(), terminated.copy()]
            results.append(trace)
    exact = _numpy_trig_is_libms(np.linspace(-0.3, 0.3, 1001)) or isinstance(fam, PointNavigation)
    for a, b in zip(*results):
        if exact:
            assert np.array_equal(a, b)
        else:  # pragma: no cover - platform dependent (see above)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


DOWNSTREAM = '''
# distutils: language = c
from libc.stdint cimport int64_t, uint8_t
from metarl_fast._core.continuous cimport (CARTPOLE_OBS_DIM, cartpole_step_one, cartpoles_step_kernel,
                                           point_navigation_step_kernel)
import numpy as np

def cartpole_loop(const double[:, ::1] params, const double[:, ::1] states, const int64_t[::1] actions):
    """Per-task inline steps in downstream code's own loop, then the batched kernel; both outputs."""
    cdef Py_ssize_t n = states.shape[0], i
    one = np.empty((n, 4)); rew1 = np.empty(n); term1 = np.empty(n, dtype=np.uint8)
    many = np.empty((n, 4)); rew2 = np.empty(n); term2 = np.empty(n, dtype=np.uint8)
    cdef double[:, ::1] o1 = one, o2 = many
    cdef double[::1] r1 = rew1, r2 = rew2
    cdef uint8_t[::1] t1 = term1, t2 = term2
    with nogil:
        for i in range(n):
            cartpole_step_one(&params[i, 0], &states[i, 0], actions[i], &o1[i, 0], &r1[i], &t1[i])
        cartpoles_step_kernel(n, &params[0, 0], &states[0, 0], &actions[0], &o2[0, 0], &r2[0], &t2[0])
    return one, rew1, term1.astype(bool), many, rew2, term2.astype(bool)

def point_loop(const double[:, ::1] goals, const double[:, ::1] moves, const double[:, ::1] states,
               const int64_t[::1] actions):
    cdef Py_ssize_t n = states.shape[0]
    out = np.empty((n, 2)); rew = np.empty(n); term = np.empty(n, dtype=np.uint8)
    cdef double[:, ::1] o = out
    cdef double[::1] r = rew
    cdef uint8_t[::1] t = term
    with nogil:
        point_navigation_step_kernel(n, &goals[0, 0], &moves[0, 0], &states[0, 0], &actions[0], &o[0, 0], &r[0], &t[0])
    return out, rew, term.astype(bool)
'''

DOWNSTREAM_CHECK = """
        import numpy as np, downstream_continuous as d
        from metarl_fast.reference import continuous as ref
        rng = np.random.default_rng(0)
        n = 200
        params = np.tile(ref.CARTPOLE_DEFAULTS, (n, 1)) * rng.uniform(0.5, 1.5, (n, 5))
        states = rng.normal(size=(n, 4)) * [1.5, 2.0, 0.15, 2.0]
        actions = rng.integers(0, 2, n)
        want = [np.empty((n, 4)), np.empty(n), np.empty(n, dtype=bool)]
        ref.cartpoles_step(params, states, actions, *want)
        got = d.cartpole_loop(params, states, actions)
        for g, w in zip(got[:3] + got[3:], want + want):
            np.testing.assert_allclose(g, w, rtol=1e-15, atol=0)
        assert all((g == w).all() for g, w in zip(got[2::3], want[2::3]))
        goals, moves = rng.uniform(-1, 1, (n, 2)), ref.point_navigation_moves(8, 0.1)
        states = rng.uniform(-1, 1, (n, 2))
        actions = rng.integers(0, 9, n)
        want = [np.empty((n, 2)), np.empty(n), np.empty(n, dtype=bool)]
        ref.point_navigation_step(goals, moves, states, actions, *want)
        assert all((g == w).all() for g, w in zip(d.point_loop(goals, moves, states, actions), want))
        print("ok")
"""


def test_downstream_cython_can_cimport_the_step_kernels(tmp_path):
    from downstream import build_and_check
    build_and_check(tmp_path, "downstream_continuous", DOWNSTREAM, DOWNSTREAM_CHECK)
