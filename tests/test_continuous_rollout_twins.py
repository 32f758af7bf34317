"""The Cython twin of the fused continuous rollout (_core/continuous_rollout.pyx) against the NumPy
reference: the same names and signatures, the same arrays to the last bit (float64) and the same
Generator state afterwards (CartPoles: wherever NumPy's sin/cos round as the C library's do, as
test_continuous_twins.py checks for the step kernels)."""
import ctypes
import ctypes.util
import inspect
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_cython
from metarl_fast import _backend
from metarl_fast.continuous_tasks import CartPoles, PointNavigation
from metarl_fast.reference import continuous_rollout as ref
from metarl_fast.reference.mlp import mlp_init

try:
    from metarl_fast._core import continuous_rollout as cy
except ImportError:  # numpy-only checkout
    cy = None

pytestmark = needs_cython
HIDDEN = [(), (8,), (16, 16)]


def _numpy_trig_is_libms(thetas):
    """True if NumPy's sin and cos give the C library's values at every angle in ``thetas``."""
    name = ctypes.util.find_library("m")
    if name is None:
        return False
    libm = ctypes.CDLL(name)
    for f in (libm.sin, libm.cos):
        f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double]
    return all(np.sin(t) == libm.sin(float(t)) and np.cos(t) == libm.cos(float(t)) for t in thetas)


EXACT_TRIG = _numpy_trig_is_libms(np.random.default_rng(0).uniform(-0.3, 0.3, 2000))


def _args(batch, params, pot, hidden, activation, n_episodes):
    env = (batch.params,) if hasattr(batch, "masscart") else (batch.goals, batch.moves)
    return env + (params, pot, hidden, activation, n_episodes, batch.horizon)


def _both(kernel, args, seed, pre=0):
    """The outputs and the Generators after the call, reference then Cython, from one seed."""
    results = []
    for module in (ref, cy):
        rng = np.random.default_rng(seed)
        rng.random(pre)
        results.append((getattr(module, kernel)(*args, rng), rng))
    return results


def _assert_twins(results):
    (out_ref, rng_ref), (out_cy, rng_cy) = results
    for field, a, b in zip(ref.OUT_FIELDS, out_ref, out_cy):
        assert a.dtype == b.dtype and a.shape == b.shape, field[0]
        assert np.array_equal(a, b), field[0]
    assert rng_ref.bit_generator.state == rng_cy.bit_generator.state


def test_same_kernels_and_signatures():
    assert cy.KERNELS == ref.KERNELS
    for name in ref.KERNELS:
        assert inspect.signature(getattr(cy, name)) == inspect.signature(getattr(ref, name)), name
    assert cy.__file__.endswith((".so", ".pyd")), "the compiled twin is not built"
    with _backend.use_backend("cython"):
        assert _backend.active.continuous_rollout is cy
    with _backend.use_backend("numpy"):
        assert _backend.active.continuous_rollout is ref


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_tasks=st.integers(1, 9), n_episodes=st.integers(1, 4),
       horizon=st.integers(1, 40), hidden=st.sampled_from(HIDDEN),
       activation=st.sampled_from(["tanh", "relu"]), policies=st.sampled_from(["shared", "per_task", "mapped"]),
       cartpoles=st.booleans(), scale=st.sampled_from([0.5, 3.0, 20.0]), pre=st.integers(0, 3))
def test_twins_bit_identical(seed, n_tasks, n_episodes, horizon, hidden, activation, policies,
                             cartpoles, scale, pre):
    if cartpoles and not EXACT_TRIG:  # pragma: no cover - platform dependent
        pytest.skip("NumPy's sin/cos differ from the C library's here")
    rng = np.random.default_rng(seed)
    if cartpoles:
        batch = CartPoles(horizon=horizon).sample(n_tasks, rng)
    else:
        batch = PointNavigation(horizon=horizon, n_directions=int(rng.integers(1, 12)),
                                step_size=float(rng.uniform(0.01, 1.0))).sample(n_tasks, rng)
    n_policies = {"shared": 1, "per_task": n_tasks, "mapped": 3}[policies]
    params = np.stack([mlp_init(batch.obs_dim, hidden, batch.n_actions, rng) * scale
                       for _ in range(n_policies)])
    pot = (np.arange(n_tasks) if policies == "per_task" else
           rng.integers(0, n_policies, n_tasks))
    if policies == "shared" and seed % 2:
        params = params[0]  # (P,)
    _assert_twins(_both("cartpoles_rollout" if cartpoles else "point_navigation_rollout",
                        _args(batch, params, pot, hidden, activation, n_episodes), seed + 1, pre))


@pytest.mark.skipif(not EXACT_TRIG, reason="NumPy's sin/cos differ from the C library's here")
@pytest.mark.parametrize("n_tasks, n_episodes", [(1, 1), (70, 4), (3, 300), (257, 1)])
@pytest.mark.parametrize("hidden", HIDDEN)
def test_twins_with_early_termination_across_chunks(n_tasks, n_episodes, hidden):
    """Many episodes of varying length (several chunks of the compiled kernel, packed)."""
    batch = CartPoles(horizon=60).sample(n_tasks, 5)
    params = np.stack([mlp_init(4, hidden, 2, np.random.default_rng(i)) * 4.0 for i in range(n_tasks)])
    results = _both("cartpoles_rollout", _args(batch, params, np.arange(n_tasks), hidden, "tanh",
                                               n_episodes), 9)
    _assert_twins(results)
    lengths = results[0][0][8]
    assert (lengths < 60).any() and len(np.unique(lengths)) > 1 or n_tasks * n_episodes == 1


def test_twins_with_signal_checks_between_every_step():
    """The compiled kernel looking at pending signals after every step gives the same result."""
    batch = PointNavigation(horizon=30).sample(20, 1)
    params = mlp_init(2, (8,), 9, np.random.default_rng(0))
    old = cy._set_signal_check_work(1)
    try:
        _assert_twins(_both("point_navigation_rollout",
                            _args(batch, params, np.zeros(20, dtype=np.int64), (8,), "relu", 3), 2))
    finally:
        cy._set_signal_check_work(old)


def test_twins_overflow_alike():
    batch = PointNavigation(horizon=4, step_size=10.0).sample(3, 0)
    params = np.full(27, 1e308)
    for module in (ref, cy):
        rng = np.random.default_rng(0)
        state = rng.bit_generator.state
        with pytest.raises(FloatingPointError, match="logits overflow the float64 range"):
            module.point_navigation_rollout(batch.goals, batch.moves, params, np.zeros(3, dtype=np.int64),
                                            (), "tanh", 2, 4, rng)
        assert rng.bit_generator.state == state


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_a_long_compiled_rollout():
    code = textwrap.dedent("""
        import os, signal, threading
        import numpy as np
        from metarl_fast._core import continuous_rollout as cy
        from metarl_fast.continuous_tasks import PointNavigation
        from metarl_fast.reference.mlp import mlp_init
        batch = PointNavigation(horizon=1000).sample(256, 0)
        params = mlp_init(2, (256, 256), 9, np.random.default_rng(0))
        rng = np.random.default_rng(0)
        state = rng.bit_generator.state
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            cy.point_navigation_rollout(batch.goals, batch.moves, params, np.zeros(256, dtype=np.int64),
                                        (256, 256), "tanh", 1, 1000, rng)
            raise SystemExit("no KeyboardInterrupt")
        except KeyboardInterrupt:
            pass
        # (a kernel that never looked would have finished first and advanced the Generator)
        assert rng.bit_generator.state == state, "the rollout ran to its end"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
