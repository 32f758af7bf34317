"""GRU kernels: the Cython twin against the NumPy reference on random shapes and inputs, and hostile
calls on the compiled backend in a child process.

What holds (float64, the only dtype): logits, values, hidden states and the fused step's outputs
and sampled actions are bit-identical (both backends sum every affine map in the same order, use
the same tanh and evaluate the gates with the same operations), and the rng is left in the same
state; BPTT gradients agree to 1e-12 relative to the largest entry (other summation order).
"""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast.reference import gru as ref
from metarl_fast.reference.mlp import tanh

from conftest import needs_cython

try:
    from metarl_fast._core import gru as core
except ImportError:  # numpy-only checkout: every test here is skipped
    core = None

pytestmark = needs_cython
PUBLIC = ["gru_layout", "gru_init", "gru_to_torch_order", "gru_from_torch", "gru_forward",
          "gru_backward", "gru_step_act"]


def test_twins_have_the_same_signatures():
    for name in PUBLIC:
        assert inspect.signature(getattr(core, name)) == inspect.signature(getattr(ref, name)), name


def test_the_copied_c_tanh_is_the_reference_tanh():
    """gru_kernels.h holds a copy of mlp_kernels.h's tanh: it must stay the reference's, bit for
    bit, over the whole range (tiny, the polynomial's range, the clamp at 20, inf, NaN)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=20000) * np.logspace(-12, 2, 20000),
                        np.linspace(-21, 21, 4001), [0.0, -0.0, 5e-324, np.inf, -np.inf, 1e308]])
    assert np.array_equal(core._tanh(x).view(np.uint64), tanh(x).view(np.uint64))
    assert np.isnan(core._tanh(np.array([np.nan])))[0]


def _close(got, expect):
    assert got.shape == expect.shape and got.dtype == np.float64
    if expect.size:
        scale = np.abs(expect).max()
        assert np.abs(got - expect).max() <= 1e-12 * scale, (np.abs(got - expect).max(), scale)


def _check_pair(d, h, a, t, b, reset_rate, scale, seed):
    rng = np.random.default_rng(seed)
    params = ref.gru_init(d, h, a, rng)
    params += rng.normal(scale=scale, size=params.shape)
    inputs = rng.normal(size=(t, b, d)) * 2
    h0 = rng.uniform(-1, 1, size=(b, h))
    resets = rng.random((t, b)) < reset_rate
    dlogits, dvalues = rng.normal(size=(t, b, a)), rng.normal(size=(t, b))

    for got, expect in zip(core.gru_forward(params, inputs, h0, resets),
                           ref.gru_forward(params, inputs, h0, resets)):
        assert got.shape == expect.shape and np.array_equal(got, expect)
    expect_grad = ref.gru_backward(params, inputs, h0, resets, dlogits, dvalues)
    _close(core.gru_backward(params, inputs, h0, resets, dlogits, dvalues), expect_grad)
    # the forward's activations: the same bits in both backends, and a cache from either works
    # in both (the cached gradient is each backend's own, to the same tolerance)
    core_cache = core.gru_forward(params, inputs, h0, resets, return_cache=True)[3]
    ref_cache = ref.gru_forward(params, inputs, h0, resets, return_cache=True)[3]
    assert np.array_equal(core_cache.trace.view(np.uint64), ref_cache.trace.view(np.uint64))
    for cache in (core_cache, ref_cache):
        _close(core.gru_backward(params, inputs, h0, resets, dlogits, dvalues, cache=cache),
               expect_grad)
    assert np.array_equal(ref.gru_backward(params, inputs, h0, resets, dlogits, dvalues,
                                           cache=core_cache), expect_grad)
    if t:
        r_core, r_ref = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
        for got, expect in zip(core.gru_step_act(params, inputs[0], h0, r_core),
                               ref.gru_step_act(params, inputs[0], h0, r_ref)):
            assert got.dtype == expect.dtype and np.array_equal(got, expect)
        assert r_core.bit_generator.state == r_ref.bit_generator.state


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 7), h=st.integers(1, 40), a=st.integers(1, 7), t=st.integers(0, 8),
       b=st.integers(0, 11), reset_rate=st.sampled_from([0.0, 0.2, 1.0]),
       scale=st.sampled_from([0.0, 0.5, 2.0]), seed=st.integers(0, 2**32 - 2))
def test_cython_matches_the_reference(d, h, a, t, b, reset_rate, scale, seed):
    _check_pair(d, h, a, t, b, reset_rate, scale, seed)


@pytest.mark.parametrize("shape", [(12, 128, 5, 6, 64), (5, 512, 2, 2, 3), (2, 33, 9, 3, 70)])
def test_large_shapes_release_the_gil_and_agree(shape):
    """Sizes past the no-GIL threshold, every gemm tile path (H = 512, odd widths, B > 64)."""
    _check_pair(*shape, reset_rate=0.1, scale=0.3, seed=sum(shape))


def test_rejected_calls_leave_out_and_rng_untouched():
    rng = np.random.default_rng(0)
    params = ref.gru_init(2, 3, 2, rng)
    params[-3:] = 1e308  # b_out
    layout, _ = ref.gru_layout(2, 3, 2)
    params[layout["W_out"][0]:layout["b_out"][0]] = 1e308
    h, out = np.ones((2, 3)), np.full((2, 3), 7.0)
    before = rng.bit_generator.state
    with pytest.raises(FloatingPointError, match="overflow the float64 range"):
        core.gru_step_act(params, np.ones((2, 2)), h, rng, h_out=out)
    assert np.all(out == 7.0) and np.all(h == 1.0) and rng.bit_generator.state == before


HOSTILE = """
import numpy as np
from metarl_fast._core import gru
rng = np.random.default_rng(0)
p = gru.gru_init(4, 64, 3, rng)
x, h0, rs = np.zeros((5, 8, 4)), np.zeros((8, 64)), np.zeros((5, 8), bool)
calls = [
    lambda: gru.gru_forward(p.astype(np.float32), x, h0, rs),
    lambda: gru.gru_forward(p, np.asfortranarray(np.zeros((5, 8, 8)))[:, :, ::2], h0[:, :32], rs),
    lambda: gru.gru_forward(p[::2], x, h0, rs),
    lambda: gru.gru_forward(p, np.zeros((10**5, 8, 3)), h0, np.zeros((10**5, 8), bool)),
    lambda: gru.gru_backward(p, np.zeros((10**5, 8, 4)), h0, np.zeros((5, 8), bool),
                             np.zeros((10**5, 8, 3)), np.zeros((10**5, 8))),
    lambda: gru.gru_forward(p, np.zeros((1, 10**4, 4)), np.zeros((10**4, 64)),
                            np.zeros((1, 10**3), bool)),
    lambda: gru.gru_step_act(p, np.zeros((8, 4)), h0, rng, h_out=np.empty((7, 64))),
    lambda: gru.gru_step_act(p, np.zeros((8, 4)), h0.view(np.int64), rng),
    lambda: gru.gru_forward(p, x, h0, rs.view(np.uint8)),
    lambda: gru.gru_forward(p, np.zeros((1100, 1000, 4)), np.zeros((1000, 64)),
                            np.zeros((1100, 1000), bool)),
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
    """Wrong dtype, non-contiguous, huge T or B with a wrong shape, a mismatched reset table, a
    wrong out, an integer view, a too-large trace: each raises TypeError/ValueError; a crash
    would kill the child, not the run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 10, proc.stdout
    assert "params must be float64" in lines[0]
    assert "not the size of a GRU" in lines[1]
    assert "params must be C-contiguous" in lines[2]
    assert "resets must have shape" in lines[4] and "resets must have shape" in lines[5]
    assert "h must have dtype float64" in lines[7]
    assert "resets must be a bool array" in lines[8]
    assert "per-step tables" in lines[9]
