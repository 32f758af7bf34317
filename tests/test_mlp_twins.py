"""MLP kernels: the Cython twin against the NumPy reference on random shapes and inputs, and hostile
calls on the compiled backend in a child process.

What holds: logits and sampled actions are bit-identical (float64 and float32: both backends sum
in the same order in float64 and round once), and the rng is left in the same state; gradients,
JVPs, HVPs and per-episode gradients agree to 1e-12 relative to the largest entry in float64 (other
summation order) and to float32 rounding (4 ulp of the largest entry) in float32.
"""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast.reference import mlp as ref

from conftest import needs_cython

try:
    from metarl_fast._core import mlp as core
except ImportError:  # numpy-only checkout: every test here is skipped
    core = None

pytestmark = needs_cython
PUBLIC = ["mlp_layout", "mlp_init", "mlp_logits", "mlp_act", "mlp_grad", "mlp_policy_gradient",
          "mlp_jvp", "mlp_hvp", "mlp_episode_grads"]


def test_twins_have_the_same_signatures():
    for name in PUBLIC:
        assert inspect.signature(getattr(core, name)) == inspect.signature(getattr(ref, name)), name


def _close(got, expect, dtype):
    got, expect = np.asarray(got, np.float64), np.asarray(expect, np.float64)
    assert got.shape == expect.shape
    if not expect.size:
        return
    scale = np.abs(expect).max()
    tol = 1e-12 * scale if dtype == np.float64 else 4 * np.spacing(np.float32(scale))
    assert np.abs(got - expect).max() <= tol, (np.abs(got - expect).max(), scale)


@settings(max_examples=60, deadline=None)
@given(obs_dim=st.integers(1, 9), hidden=st.lists(st.integers(1, 70), max_size=3),
       n_actions=st.integers(1, 7), n_rows=st.integers(0, 150), act=st.sampled_from(["tanh", "relu"]),
       dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**32 - 1))
def test_cython_matches_the_reference(obs_dim, hidden, n_actions, n_rows, act, dtype, seed):
    hidden = tuple(hidden)
    rng = np.random.default_rng(seed)
    params = ref.mlp_init(obs_dim, hidden, n_actions, rng, dtype=dtype)
    params += rng.normal(scale=0.5, size=params.shape).astype(dtype)
    obs = (rng.normal(size=(n_rows, obs_dim)) * 3).astype(dtype)
    actions = rng.integers(0, n_actions, n_rows)
    coef = rng.normal(size=n_rows)
    v = rng.normal(size=params.shape[0])
    dlogits = rng.normal(size=(n_rows, n_actions))
    n_episodes = int(rng.integers(1, 6))
    episode = np.sort(rng.integers(0, n_episodes, n_rows))
    args = (params, obs, hidden, act)

    logits = core.mlp_logits(*args)
    assert logits.dtype == dtype and np.array_equal(logits, ref.mlp_logits(*args))
    r_core, r_ref = np.random.default_rng(seed), np.random.default_rng(seed)
    acts = core.mlp_act(*args, r_core)
    assert np.array_equal(acts, ref.mlp_act(*args, r_ref))
    assert r_core.bit_generator.state == r_ref.bit_generator.state
    for name, extra in [("mlp_grad", (dlogits,)), ("mlp_policy_gradient", (actions, coef)),
                        ("mlp_jvp", (v,)), ("mlp_hvp", (actions, coef, v)),
                        ("mlp_episode_grads", (actions, coef, episode, n_episodes))]:
        got = getattr(core, name)(*args, *extra)
        assert got.dtype == dtype, name
        _close(got, getattr(ref, name)(*args, *extra), dtype)


def test_large_batch_crosses_row_blocks_identically():
    """B = 1000 runs through many 64-row blocks (and releases the GIL) in the Cython kernels."""
    rng = np.random.default_rng(0)
    hidden = (64, 64)
    params = ref.mlp_init(4, hidden, 2, rng)
    obs = rng.normal(size=(1000, 4))
    actions, coef, v = rng.integers(0, 2, 1000), rng.normal(size=1000), rng.normal(size=params.size)
    episode = np.repeat(np.arange(10), 100)
    args = (params, obs, hidden, "tanh")
    assert np.array_equal(core.mlp_logits(*args), ref.mlp_logits(*args))
    assert np.array_equal(core.mlp_act(*args, np.random.default_rng(1)),
                          ref.mlp_act(*args, np.random.default_rng(1)))
    _close(core.mlp_hvp(*args, actions, coef, v), ref.mlp_hvp(*args, actions, coef, v), np.float64)
    _close(core.mlp_episode_grads(*args, actions, coef, episode, 10),
           ref.mlp_episode_grads(*args, actions, coef, episode, 10), np.float64)


def test_rejected_calls_leave_out_untouched():
    rng = np.random.default_rng(0)
    params = ref.mlp_init(2, (), 2, rng)
    params[:] = 1e300
    out = np.full((1, 2), 7.0)
    with pytest.raises(FloatingPointError, match="logits overflow"):
        core.mlp_logits(params, np.full((1, 2), 1e10), (), "relu", out=out)
    assert np.all(out == 7.0)


HOSTILE = """
import numpy as np
from metarl_fast._core import mlp
rng = np.random.default_rng(0)
p = mlp.mlp_init(4, (64, 64), 2, rng)
calls = [
    lambda: mlp.mlp_act(p.astype(np.float32), rng.normal(size=(3, 4)), (64, 64), "tanh", rng),
    lambda: mlp.mlp_act(p, np.asfortranarray(rng.normal(size=(3, 4)))[:, ::2], (64, 64), "tanh", rng),
    lambda: mlp.mlp_logits(p[::2], rng.normal(size=(3, 4)), (64, 64), "tanh"),
    lambda: mlp.mlp_logits(p, np.zeros((10**6, 3)), (64, 64), "tanh"),
    lambda: mlp.mlp_hvp(p, np.zeros((10**6, 4)), (64, 64), "tanh", np.zeros(5, np.int64), np.ones(10**6), p),
    lambda: mlp.mlp_act(p, np.zeros((5, 4)), (64, 64), "tanh", rng, out=np.empty(4, np.int64)),
    lambda: mlp.mlp_episode_grads(p, np.zeros((5, 4)), (64, 64), "tanh", np.zeros(5, np.int64),
                                  np.ones(5), np.zeros(5, np.int64), 2**40),
    lambda: mlp.mlp_logits(p, np.zeros((2, 4)), (64, 10**30), "tanh"),
]
for call in calls:
    try:
        call()
    except (TypeError, ValueError) as err:
        print(type(err).__name__, str(err).splitlines()[0])
    else:
        raise SystemExit("accepted a hostile call")
"""


def test_hostile_calls_raise_in_a_child_process():
    """Wrong dtype, non-contiguous, huge B with a wrong shape, mismatched lengths, a huge table:
    each raises TypeError/ValueError; a crash would kill the child, not the run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=300,
                          cwd=root)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 8, proc.stdout
    assert "obs must have dtype float32" in lines[0]
