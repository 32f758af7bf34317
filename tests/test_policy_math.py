"""Softmax kernels and policy classes against mathematics alone (no twin parity): hand-computed
values, identities, sampling frequencies by a binomial bound, and the edge cases by example
(one row, one action, -inf logits at the first and last index, float32)."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import metarl_fast as mf

from conftest import BACKENDS

# logits log(1), log(2), log(3): probabilities 1/6, 2/6, 3/6 (a shift by any constant changes nothing)
HAND_LOGITS = np.log(np.array([[1.0, 2.0, 3.0]])) + 5.0
HAND_P = np.array([1.0, 2.0, 3.0]) / 6.0
HAND_H = -sum(p * math.log(p) for p in HAND_P)  # 1.0114042647073518


def binomial_ok(count, n, p, z=5.0):
    """|count - n p| within z binomial standard deviations (plus one for the discreteness)."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1.0 - p)) + 1.0


# ------------------------------------------------------------------ hand values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_computed_softmax_family(backend, dtype):
    x = HAND_LOGITS.astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(mf.softmax(x)[0], HAND_P, rtol=tol)
    np.testing.assert_allclose(mf.log_softmax(x)[0], np.log(HAND_P), rtol=tol)
    assert mf.entropy(x)[0] == pytest.approx(HAND_H, rel=tol)
    for a in range(3):
        assert mf.log_prob(x, np.array([a]))[0] == pytest.approx(math.log(HAND_P[a]), rel=tol)
        want = -HAND_P.copy()
        want[a] += 1.0
        np.testing.assert_allclose(mf.grad_log_prob(x, np.array([a]))[0], want, rtol=tol, atol=tol)
    for name in ("softmax", "log_softmax", "entropy"):
        assert getattr(mf, name)(x).dtype == dtype


def test_two_action_softmax_is_the_logistic_function(backend):
    d = np.linspace(-30, 30, 61)
    logits = np.stack([d, np.zeros_like(d)], axis=1)
    p = 1.0 / (1.0 + np.exp(-d))
    np.testing.assert_allclose(mf.softmax(logits)[:, 0], p, rtol=1e-13)
    # binary entropy and the log-probability of the second action, -log(1 + e^d)
    np.testing.assert_allclose(mf.entropy(logits), -(p * np.log(p) + (1 - p) * np.log1p(-p)),
                               rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(mf.log_prob(logits, np.ones(61, np.int64)), -np.logaddexp(0.0, d),
                               rtol=1e-13, atol=1e-15)


def test_log_prob_uses_the_shifted_logits(backend):
    # a row whose max is not 0: log pi(a) = x_a - logsumexp(x), not z_a - log sum exp(z) of a
    # different shift
    x = np.array([[10.0, 11.0, 13.0], [-4.0, -7.0, -5.0]])
    lse = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) + x.max(axis=1)
    for a in range(3):
        np.testing.assert_allclose(mf.log_prob(x, np.full(2, a)), x[:, a] - lse, rtol=1e-14)
        np.testing.assert_allclose(mf.log_softmax(x)[:, a], x[:, a] - lse, rtol=1e-14)


# ------------------------------------------------------------------ identities (property-based)
ROWS = hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 7)),
                  elements=st.floats(-40, 40))


@settings(max_examples=60, deadline=None)
@given(x=ROWS, shift=st.floats(-1e3, 1e3))
@example(x=np.zeros((1, 1)), shift=0.0)                       # one row, one action
@example(x=np.array([[3.0, -2.0, 0.5]]), shift=700.0)         # one row
@example(x=np.array([[-40.0, 40.0]] * 3), shift=-1e3)
def test_softmax_identities(x, shift):
    for name in BACKENDS:
        _check_identities(name, x, shift)


def _check_identities(name, x, shift):
    with mf.use_backend(name):
        p, lp, h = mf.softmax(x), mf.log_softmax(x), mf.entropy(x)
        assert p.shape == x.shape and lp.shape == x.shape and h.shape == (x.shape[0],)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-13)
        assert np.all(p >= 0) and np.all(lp <= 1e-15)
        np.testing.assert_allclose(np.exp(lp), p, rtol=1e-12, atol=1e-300)
        # shift invariance of every row
        np.testing.assert_allclose(mf.softmax(x + shift), p, rtol=1e-9, atol=1e-15)
        # the entropy is -sum p log p, between 0 and log A
        np.testing.assert_allclose(h, -(p * lp).sum(axis=1), rtol=1e-10, atol=1e-12)
        assert np.all(h >= -1e-12) and np.all(h <= math.log(x.shape[1]) + 1e-12)
        rows = np.arange(x.shape[0])
        for a in range(x.shape[1]):
            acts = np.full(x.shape[0], a)
            np.testing.assert_allclose(mf.log_prob(x, acts), lp[rows, a], rtol=1e-13, atol=1e-13)
            g = mf.grad_log_prob(x, acts)
            np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-13)  # onehot - pi sums to 0
            np.testing.assert_allclose(g, np.eye(x.shape[1])[acts] - p, atol=1e-15)


def test_grad_log_prob_is_the_derivative_of_log_softmax_everywhere(backend, rng):
    # every (row, action, logit): central differences of log_softmax
    x = rng.normal(size=(3, 4)) * 2
    h = 1e-6
    for a in range(4):
        g = mf.grad_log_prob(x, np.full(3, a))
        for k in range(4):
            up, down = x.copy(), x.copy()
            up[:, k] += h
            down[:, k] -= h
            fd = (mf.log_softmax(up)[:, a] - mf.log_softmax(down)[:, a]) / (2 * h)
            np.testing.assert_allclose(g[:, k], fd, atol=1e-8)


def test_entropy_gradient_direction_by_finite_differences(backend):
    # d H / d x_k = -p_k (log p_k + H): check the kernel's entropy against that derivative
    x = np.array([[0.4, -1.0, 2.0, 0.0]])
    p, lp = mf.softmax(x)[0], mf.log_softmax(x)[0]
    H = mf.entropy(x)[0]
    h = 1e-6
    for k in range(4):
        up, down = x.copy(), x.copy()
        up[0, k] += h
        down[0, k] -= h
        fd = (mf.entropy(up)[0] - mf.entropy(down)[0]) / (2 * h)
        assert fd == pytest.approx(-p[k] * (lp[k] + H), abs=1e-8)


# ------------------------------------------------------------------ -inf logits and edge cases
@pytest.mark.parametrize("where", ["first", "last", "both ends"])
def test_masked_actions_at_the_ends(backend, where):
    x = np.array([[0.0, math.log(3.0), 0.0, 1.0]])
    masked = {"first": [0], "last": [3], "both ends": [0, 3]}[where]
    x[0, masked] = -np.inf
    free = [a for a in range(4) if a not in masked]
    e = np.zeros(4)
    e[free] = np.exp(x[0, free])
    p = e / e.sum()
    np.testing.assert_allclose(mf.softmax(x)[0], p, rtol=1e-14)
    assert np.all(mf.softmax(x)[0, masked] == 0.0)
    lp = mf.log_softmax(x)[0]
    assert np.all(lp[masked] == -np.inf)
    np.testing.assert_allclose(lp[free], np.log(p[free]), rtol=1e-14)
    assert mf.entropy(x)[0] == pytest.approx(-(p[free] * np.log(p[free])).sum(), rel=1e-14)
    for a in masked:
        assert mf.log_prob(x, np.array([a]))[0] == -np.inf
    for a in free:
        g = mf.grad_log_prob(x, np.array([a]))[0]
        assert np.all(g[masked] == 0.0)  # a forbidden action's logit has no influence
        np.testing.assert_allclose(g, np.eye(4)[a] - p, atol=1e-15)
    # sampling: the forbidden actions never come, the others by a binomial bound
    n = 60_000
    acts = mf.sample_actions(np.repeat(x, n, axis=0), np.random.default_rng(17))
    counts = np.bincount(acts, minlength=4)
    assert np.all(counts[masked] == 0)
    for a in free:
        assert binomial_ok(counts[a], n, p[a]), (a, counts, n * p)


def test_single_allowed_action_is_certain(backend):
    x = np.full((3, 5), -np.inf)
    x[0, 0], x[1, 4], x[2, 2] = -1e300, 7.0, 0.0
    np.testing.assert_array_equal(mf.softmax(x), np.eye(5)[[0, 4, 2]])
    np.testing.assert_array_equal(mf.entropy(x), 0.0)
    np.testing.assert_array_equal(mf.log_prob(x, np.array([0, 4, 2])), 0.0)
    np.testing.assert_array_equal(mf.grad_log_prob(x, np.array([0, 4, 2])), 0.0)
    g = np.random.default_rng(0)
    np.testing.assert_array_equal(mf.sample_actions(np.tile(x, (100, 1)), g), np.tile([0, 4, 2], 100))


def test_one_action(backend, rng):
    x = rng.normal(size=(4, 1)) * 100
    np.testing.assert_array_equal(mf.softmax(x), 1.0)
    np.testing.assert_array_equal(mf.log_softmax(x), 0.0)
    np.testing.assert_array_equal(mf.entropy(x), 0.0)
    zeros = np.zeros(4, np.int64)
    np.testing.assert_array_equal(mf.log_prob(x, zeros), 0.0)
    np.testing.assert_array_equal(mf.grad_log_prob(x, zeros), 0.0)
    g, probe = np.random.default_rng(2), np.random.default_rng(2)
    np.testing.assert_array_equal(mf.sample_actions(x, g), zeros)
    probe.random(4)  # still one uniform per row
    assert g.random() == probe.random()


def test_one_row(backend):
    x = np.array([[2.0, -1.0]])
    p0 = 1.0 / (1.0 + math.exp(-3.0))
    assert mf.softmax(x).shape == (1, 2) and mf.softmax(x)[0, 0] == pytest.approx(p0, rel=1e-15)
    # the single uniform u decides: action 0 iff u * total < e_0 (total = e_0 + e_1), i.e. u < p0
    for seed in range(40):
        u = np.random.default_rng(seed).random()
        assert mf.sample_actions(x, np.random.default_rng(seed))[0] == (0 if u < p0 else 1)


# ------------------------------------------------------------------ sampling by a binomial bound
def test_sampled_frequencies_per_row_by_a_binomial_bound(backend):
    # two different rows interleaved: each row's actions follow its own probabilities
    rows = np.array([[0.0, 1.0, -0.5, 2.0], [3.0, -np.inf, 0.0, 0.0]])
    n = 50_000
    x = np.tile(rows, (n, 1))
    acts = mf.sample_actions(x, np.random.default_rng(123)).reshape(n, 2)
    p = np.exp(rows - rows.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for r in range(2):
        counts = np.bincount(acts[:, r], minlength=4)
        for a in range(4):
            assert binomial_ok(counts[a], n, p[r, a]), (r, a, counts, n * p[r])


@pytest.mark.parametrize("n_actions", [1, 2, 3, 5, 8, 9, 16, 17, 33])
def test_sampled_frequencies_at_every_kernel_width(backend, n_actions):
    # the compiled kernel has its own unrolled loop for each width 2..16 and a generic one above;
    # each must draw from the softmax.  One masked action when A > 2 (never drawn).
    rng = np.random.default_rng(n_actions)
    row = rng.normal(size=n_actions)
    if n_actions > 2:
        row[n_actions // 2] = -np.inf
    p = np.exp(row - row.max())
    p /= p.sum()
    n = 20_000
    acts = mf.sample_actions(np.tile(row, (n, 1)), np.random.default_rng(100 + n_actions))
    counts = np.bincount(acts, minlength=n_actions)
    assert len(counts) == n_actions
    for a in range(n_actions):
        assert binomial_ok(counts[a], n, p[a]), (a, counts, n * p)
    np.testing.assert_allclose(mf.softmax(row[None])[0], p, rtol=1e-13, atol=1e-300)


def test_sampling_inverts_the_cdf_at_the_boundaries(backend):
    # u * total against the running sums: with logits log(1), log(2), log(1) the cut points of
    # u are 1/4 and 3/4, so u in [0, 1/4) -> 0, [1/4, 3/4) -> 1, [3/4, 1) -> 2
    x = np.log(np.array([[1.0, 2.0, 1.0]]))
    for seed in range(60):
        u = np.random.default_rng(seed).random()
        want = 0 if u < 0.25 else (1 if u < 0.75 else 2)
        assert mf.sample_actions(x, np.random.default_rng(seed))[0] == want


# ------------------------------------------------------------------ out= writes the values
def test_out_arguments_hold_the_results(backend, rng):
    x = rng.normal(size=(6, 3))
    a = rng.integers(0, 3, 6)
    for name, shape, args in [("softmax", (6, 3), ()), ("log_softmax", (6, 3), ()),
                              ("entropy", (6,), ()), ("log_prob", (6,), (a,)),
                              ("grad_log_prob", (6, 3), (a,))]:
        out = np.full(shape, np.nan)
        res = getattr(mf, name)(x, *args, out=out)
        assert res is out
        np.testing.assert_array_equal(out, getattr(mf, name)(x, *args))
    out = np.full(6, -1, dtype=np.int64)
    assert mf.sample_actions(x, np.random.default_rng(4), out=out) is out
    np.testing.assert_array_equal(out, mf.sample_actions(x, np.random.default_rng(4)))


# ------------------------------------------------------------------ the policy classes
def test_policy_classes_compute_from_their_logits(backend, rng):
    theta = rng.normal(size=(3, 4))
    pol = mf.TabularSoftmaxPolicy(3, 4, theta=theta)
    obs = np.array([2, 0, 2, 1])
    lp = theta[obs] - np.log(np.exp(theta[obs]).sum(axis=1, keepdims=True))
    p = np.exp(lp)
    np.testing.assert_allclose(pol.probs(obs), p, rtol=1e-13)
    np.testing.assert_allclose(pol.entropy(obs), -(p * lp).sum(axis=1), rtol=1e-12)
    acts = np.array([3, 0, 1, 2])
    np.testing.assert_allclose(pol.log_prob(obs, acts), lp[np.arange(4), acts], rtol=1e-13)
    W, b = rng.normal(size=(2, 4)), rng.normal(size=4)
    lin = mf.LinearSoftmaxPolicy(2, 4, W=W, b=b)
    phi = rng.normal(size=(5, 2))
    logits = phi @ W + b
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(lin.probs(phi), np.exp(lp), rtol=1e-12)
    np.testing.assert_allclose(lin.entropy(phi), -(np.exp(lp) * lp).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(lin.log_prob(phi, acts[[0, 1, 2, 3, 0]]),
                               lp[np.arange(5), acts[[0, 1, 2, 3, 0]]], rtol=1e-12)
    # params layout: W row-major, then b
    np.testing.assert_array_equal(lin.params, np.concatenate([W.ravel(), b]))


def test_policy_act_frequencies(backend):
    pol = mf.TabularSoftmaxPolicy(2, 3, theta=[[0.0, math.log(2.0), math.log(3.0)], [0.0, 0.0, -50.0]])
    n = 30_000
    acts = pol.act(np.zeros(n, np.int64), np.random.default_rng(8))
    counts = np.bincount(acts, minlength=3)
    for a, p in enumerate(HAND_P):
        assert binomial_ok(counts[a], n, p)


def test_float32_logits_are_computed_in_float64_and_rounded_once(backend):
    x = np.array([[1.0, 1.0 + 2.0 ** -20, -3.0]], dtype=np.float32)
    x64 = x.astype(np.float64)
    want = np.exp(x64 - x64.max()) / np.exp(x64 - x64.max()).sum()
    np.testing.assert_array_equal(mf.softmax(x), want.astype(np.float32))
