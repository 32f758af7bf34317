"""Softmax kernels: mathematics, numerics, bad input (each backend) and twin parity."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import metarl_fast as mf
from metarl_fast._core import policy as core  # noqa: F401  (import error => extension not built)
from metarl_fast.reference import policy as ref
from metarl_fast.reference._math import exp_nonpos

from conftest import needs_cython

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def naive_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ exp twin
def test_exp_nonpos_matches_numpy_exp_to_an_ulp():
    x = -np.abs(np.random.default_rng(0).standard_normal(200_000)) * 100
    x[:5] = [0.0, -1e-300, -708.0, -707.999, -0.5]
    y, t = exp_nonpos(x), np.exp(x)
    mask = x >= -700
    assert np.all(np.abs(y[mask] - t[mask]) <= 2 * np.spacing(t[mask]))
    assert exp_nonpos(np.array([-np.inf, -709.0, -1e300]))[[0, 1, 2]].tolist() == [0.0, 0.0, 0.0]
    assert exp_nonpos(np.array([0.0]))[0] == 1.0


# ------------------------------------------------------------------ mathematics, per backend
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_matches_definitions(backend, rng, dtype):
    logits = (rng.standard_normal((257, 6)) * 4).astype(dtype)
    actions = rng.integers(0, 6, size=257)
    p = naive_softmax(logits)
    tol = TOL[dtype]
    probs = mf.softmax(logits)
    assert probs.dtype == dtype and probs.shape == logits.shape
    np.testing.assert_allclose(probs, p, rtol=10 * tol, atol=tol)
    np.testing.assert_allclose(mf.log_softmax(logits), np.log(p), rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(mf.entropy(logits), -(p * np.log(p)).sum(axis=1), rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(mf.log_prob(logits, actions), np.log(p[np.arange(257), actions]),
                               rtol=10 * tol, atol=10 * tol)
    onehot = np.eye(6)[actions]
    np.testing.assert_allclose(mf.grad_log_prob(logits, actions), onehot - p, rtol=10 * tol, atol=tol)


def test_grad_log_prob_is_the_derivative_of_log_prob(backend, rng):
    logits = rng.standard_normal((4, 5))
    actions = np.array([0, 4, 2, 2])
    grad = mf.grad_log_prob(logits, actions)
    h = 1e-6
    for i in range(4):
        for a in range(5):
            up, down = logits.copy(), logits.copy()
            up[i, a] += h
            down[i, a] -= h
            fd = (mf.log_prob(up, actions)[i] - mf.log_prob(down, actions)[i]) / (2 * h)
            assert abs(fd - grad[i, a]) < 1e-8


@pytest.mark.parametrize("dtype", DTYPES)
def test_numerics_extreme_and_masked(backend, dtype):
    big = 1e300 if dtype == np.float64 else 1e38
    logits = np.array([[big, -big, 0.0], [big, big, big], [2.0, -np.inf, 2.0],
                       [-np.inf, 5.0, -np.inf], [7.0, 7.0, 7.0]], dtype=dtype)
    probs = mf.softmax(logits)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs, [[1, 0, 0], [1 / 3] * 3, [0.5, 0, 0.5], [0, 1, 0], [1 / 3] * 3], atol=1e-7)
    lsm = mf.log_softmax(logits)
    assert lsm[2, 1] == -np.inf and lsm[3, 0] == -np.inf and np.isfinite(lsm[2, 0])
    ent = mf.entropy(logits)
    np.testing.assert_allclose(ent, [0, np.log(3), np.log(2), 0, np.log(3)], atol=1e-6)
    assert mf.log_prob(logits, np.array([1, 0, 1, 1, 2]))[2] == -np.inf
    g = np.random.default_rng(3)
    acts = mf.sample_actions(np.repeat(logits[2:4], 5000, axis=0), g)
    assert set(np.unique(acts[:5000])) <= {0, 2} and np.all(acts[5000:] == 1)


def test_empty_batch_and_single_action(backend, rng):
    empty = np.zeros((0, 3))
    assert mf.softmax(empty).shape == (0, 3)
    assert mf.entropy(empty).shape == (0,)
    assert mf.log_prob(empty, np.zeros(0, dtype=np.int64)).shape == (0,)
    state = rng.bit_generator.state
    assert mf.sample_actions(empty, rng).shape == (0,)
    assert rng.bit_generator.state == state  # nothing drawn
    one = rng.standard_normal((9, 1))
    assert np.all(mf.softmax(one) == 1.0)
    assert np.all(mf.sample_actions(one, rng) == 0)
    assert np.all(mf.entropy(one) == 0.0)


def test_out_arguments_are_filled_in_place(backend, rng):
    logits = rng.standard_normal((10, 4))
    out = np.empty_like(logits)
    assert mf.softmax(logits, out=out) is out
    np.testing.assert_allclose(out, naive_softmax(logits), atol=1e-14)
    acts_out = np.full(10, -1, dtype=np.int64)
    assert mf.sample_actions(logits, np.random.default_rng(6), out=acts_out) is acts_out
    np.testing.assert_array_equal(acts_out, mf.sample_actions(logits, np.random.default_rng(6)))
    ent = np.full(10, np.nan)
    assert mf.entropy(logits, out=ent) is ent
    p = naive_softmax(logits)
    np.testing.assert_allclose(ent, -(p * np.log(p)).sum(axis=1), rtol=1e-13)


def test_sample_frequencies_match_probabilities_chi_square(backend):
    # 10^6 draws from one row; chi-square at a fixed seed (critical value df=4, p=0.001: 18.47).
    logits = np.array([[0.3, -1.2, 2.0, 0.0, -np.inf, 1.1]])
    n = 1_000_000
    acts = mf.sample_actions(np.repeat(logits, n, axis=0), np.random.default_rng(2024))
    p = naive_softmax(logits)[0]
    counts = np.bincount(acts, minlength=6)
    assert counts[4] == 0
    keep = p > 0
    chi2 = (((counts[keep] - n * p[keep]) ** 2) / (n * p[keep])).sum()
    assert chi2 < 18.47, chi2


def test_one_uniform_per_row_in_row_order(backend, rng):
    logits = rng.standard_normal((50, 3))
    g1, g2 = np.random.default_rng(77), np.random.default_rng(77)
    mf.sample_actions(logits, g1)
    u = g2.random(50)
    assert g1.bit_generator.state == g2.bit_generator.state
    cdf = np.cumsum(exp_nonpos(logits - logits.max(axis=1, keepdims=True)), axis=1)
    expected = (u[:, None] * cdf[:, -1:] < cdf).argmax(axis=1)
    np.testing.assert_array_equal(mf.sample_actions(logits, np.random.default_rng(77)), expected)


# ------------------------------------------------------------------ bad input, per backend
@pytest.mark.parametrize("call", ["softmax", "log_softmax", "entropy", "sample_actions", "log_prob"])
def test_bad_logits(backend, call):
    def run(logits):
        if call == "sample_actions":
            return mf.sample_actions(logits, np.random.default_rng(0))
        if call == "log_prob":
            return mf.log_prob(logits, np.zeros(len(logits) if np.ndim(logits) else 1, dtype=np.int64))
        return getattr(mf, call)(logits)

    if call in ("sample_actions", "log_prob"):  # rows of logits (softmax and friends take any shape)
        with pytest.raises(ValueError, match="logits must be 2-D"):
            run(np.zeros(3))
    else:
        with pytest.raises(ValueError, match="logits must have at least one axis"):
            run(np.float64(1.0))
    with pytest.raises(TypeError, match="logits must be a float32 or float64"):
        run(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="logits"):
        run(np.zeros((2, 3), dtype=np.float16))
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        run(np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="row 0 contains \\+inf"):
        run(np.array([[np.inf, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="row 2 is all -inf"):
        run(np.array([[0.0, 1.0], [0.0, 0.0], [-np.inf, -np.inf]]))
    with pytest.raises(ValueError, match="at least one action"):
        run(np.zeros((2, 0)))


def test_nothing_drawn_when_a_row_is_bad(backend):
    g = np.random.default_rng(1)
    state = g.bit_generator.state
    bad = np.zeros((3000, 4))
    bad[2999, 2] = np.nan
    with pytest.raises(ValueError, match="row 2999"):
        mf.sample_actions(bad, g)
    assert g.bit_generator.state == state


def test_bad_actions_rng_and_out(backend, rng):
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="actions out of range"):
        mf.log_prob(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="actions out of range"):
        mf.grad_log_prob(logits, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="actions has length 2"):
        mf.log_prob(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="actions must be an integer"):
        mf.log_prob(logits, np.array([0.0, 1.0, 2.0]))
    for bad_rng in (None, 4.2, np.random.RandomState(0), np.random.PCG64(0)):  # (an int seeds one)
        with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
            mf.sample_actions(logits, bad_rng)
    with pytest.raises(ValueError, match="out must have shape"):
        mf.softmax(logits, out=np.empty((3, 5)))
    with pytest.raises(TypeError, match="out must have dtype"):
        mf.softmax(logits, out=np.empty((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="out must have dtype int64"):
        mf.sample_actions(logits, rng, out=np.empty(3, dtype=np.int32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        mf.softmax(logits, out=np.empty((4, 3)).T)


def test_byte_swapped_and_unaligned_input_is_converted_not_misread(backend, rng):
    logits = rng.standard_normal((7, 3))
    expected = naive_softmax(logits)
    swapped = logits.astype(">f8")
    np.testing.assert_allclose(mf.softmax(swapped), expected, atol=1e-14)
    raw = np.zeros(logits.nbytes + 1, dtype=np.uint8)
    unaligned = raw[1:].view(np.float64).reshape(7, 3)
    unaligned[...] = logits
    assert not unaligned.flags.aligned
    np.testing.assert_allclose(mf.softmax(unaligned), expected, atol=1e-14)
    actions = np.array([0, 1, 2, 0, 1, 2, 0], dtype=">i8")
    np.testing.assert_allclose(mf.log_prob(logits, actions), np.log(expected[np.arange(7), actions]), atol=1e-14)
    np.testing.assert_array_equal(mf.sample_actions(swapped, np.random.default_rng(3)),
                                  mf.sample_actions(logits, np.random.default_rng(3)))


def test_non_contiguous_and_list_input_is_copied_once(backend, rng):
    base = rng.standard_normal((6, 8))
    view = base[:, ::2]
    np.testing.assert_allclose(mf.softmax(view), naive_softmax(np.ascontiguousarray(view)), atol=1e-14)
    np.testing.assert_array_equal(mf.sample_actions(view, np.random.default_rng(5)),
                                  mf.sample_actions(np.ascontiguousarray(view), np.random.default_rng(5)))
    np.testing.assert_allclose(mf.softmax([[0.0, 0.0]]), [[0.5, 0.5]])


# ------------------------------------------------------------------ twins


@needs_cython
@settings(max_examples=150, deadline=None)
@given(st.data())
def test_twins_agree_on_random_inputs(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    shape = data.draw(st.tuples(st.integers(0, 40), st.integers(1, 9)))
    big = 1e300 if dtype == np.float64 else 1e37
    elems = st.one_of(
        st.floats(-50, 50, width=32),
        st.sampled_from([-np.inf, big, -big, 0.0]),
    )
    logits = data.draw(hnp.arrays(dtype, shape, elements=elems))
    # make every row valid: at least one finite entry
    if shape[0]:
        logits[:, 0] = np.where(np.isneginf(logits[:, 0]), 0.0, logits[:, 0])
    actions = data.draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, shape[1] - 1)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    for name in ("softmax", "log_softmax", "entropy"):
        a, b = getattr(core, name)(logits), getattr(ref, name)(logits)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-12)
    np.testing.assert_allclose(core.log_prob(logits, actions), ref.log_prob(logits, actions), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(core.grad_log_prob(logits, actions), ref.grad_log_prob(logits, actions),
                               rtol=1e-6, atol=1e-12)
    g1, g2 = np.random.default_rng(seed), np.random.default_rng(seed)
    np.testing.assert_array_equal(core.sample_actions(logits, g1), ref.sample_actions(logits, g2))
    assert g1.bit_generator.state == g2.bit_generator.state


@needs_cython
def test_twins_sample_identically_at_scale():
    rng = np.random.default_rng(9)
    for dtype in DTYPES:
        logits = (rng.standard_normal((100_000, 5)) * 3).astype(dtype)
        np.testing.assert_array_equal(core.sample_actions(logits, np.random.default_rng(1)),
                                      ref.sample_actions(logits, np.random.default_rng(1)))


@needs_cython
def test_thread_safe_sampling_shares_the_generator_lock():
    import threading
    g = np.random.default_rng(0)
    logits = np.zeros((1000, 3))
    results = []

    def work():
        for _ in range(50):
            results.append(core.sample_actions(logits, g))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 calls x 1000 draws consumed exactly once each: the state equals 200k sequential draws
    ref_g = np.random.default_rng(0)
    ref_g.random(200 * 1000)
    assert g.bit_generator.state == ref_g.bit_generator.state


# ------------------------------------------------------------------ specialised row loops (Cython)
@needs_cython
def test_block_exponential_is_bit_identical_to_the_reference():
    rng = np.random.default_rng(11)
    special = np.array([0.0, -0.0, -np.inf, -708.0, np.nextafter(-708.0, 0), np.nextafter(-708.0, -1),
                        -709.0, -1e300, -1e-300, -5e-324, -0.5 * np.log(2), -745.2, -1e-17])
    for n in list(range(0, 70)) + [127, 128, 129, 2045, 2048]:
        x = -np.abs(rng.standard_normal(n)) * rng.choice([1e-3, 1.0, 30.0, 800.0], size=n)
        mask = rng.random(n) < 0.2
        x[mask] = rng.choice(special, size=int(mask.sum()))
        got, want = core._exp_nonpos_block(x), exp_nonpos(x)
        assert got.view(np.uint64).tolist() == want.view(np.uint64).tolist(), n


@needs_cython
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_actions", list(range(1, 11)) + [16, 33])
def test_sampling_agrees_with_the_reference_for_every_specialised_width(dtype, n_actions):
    # widths 2..8 have their own unrolled C loops; 3000 rows cross several scratch chunks
    rng = np.random.default_rng(n_actions)
    logits = (rng.standard_normal((3000, n_actions)) * 3).astype(dtype)
    logits[rng.random(logits.shape) < 0.2] = -np.inf
    rows = np.arange(3000)
    logits[rows, rng.integers(n_actions, size=3000)] = rng.standard_normal(3000)  # one allowed action
    logits[7] = 1e300 if dtype == np.float64 else 1e38   # all-equal huge row
    logits[8] = -np.inf
    logits[8, -1] = -3.0                                 # only the last action allowed
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(core.sample_actions(logits, g1), ref.sample_actions(logits, g2))
    assert g1.bit_generator.state == g2.bit_generator.state
    for name in ("softmax", "log_softmax", "entropy"):
        np.testing.assert_allclose(getattr(core, name)(logits), getattr(ref, name)(logits),
                                   rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-12)


@needs_cython
@pytest.mark.parametrize("n_actions", [1, 2, 5, 8, 9])
@pytest.mark.parametrize("bad", ["nan", "+inf", "all -inf"])
def test_bad_row_in_a_late_chunk_is_named_and_nothing_is_drawn(n_actions, bad):
    logits = np.random.default_rng(0).standard_normal((5000, n_actions))
    if n_actions > 1:
        logits[100:4000:7, 0] = -np.inf  # masked entries in valid rows before the bad one
    row = 4321
    if bad == "nan":
        logits[row, n_actions - 1] = np.nan
    elif bad == "+inf":
        logits[row, 0] = np.inf
    else:
        logits[row] = -np.inf
    g = np.random.default_rng(3)
    state = g.bit_generator.state
    out = np.full(5000, -7, dtype=np.int64)
    for kernel in (core, ref):
        with pytest.raises(ValueError, match=f"row {row} "):
            kernel.sample_actions(logits, g, out=out)
        with pytest.raises(ValueError, match=f"row {row} "):
            kernel.softmax(logits)
    assert g.bit_generator.state == state
    assert np.all(out == -7)
