"""V-trace (pg.vtrace): its targets against their definition and against exact values of a small
MDP (unbiased untruncated, the truncated fixed point of Espeholt et al.'s Theorem 1), both twins
on random inputs, and its checks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast.reference import pg as ref_pg

from conftest import HAVE_CYTHON, needs_cython

TWINS = {"numpy": ref_pg}
if HAVE_CYTHON:
    from metarl_fast._core import pg as cython_pg

    TWINS["cython"] = cython_pg


def _pieces(n, seed, ends_prob=0.25, dtype=np.float64):
    rng = np.random.default_rng(seed)
    r, v, nv = (rng.normal(size=n).astype(dtype) for _ in range(3))
    log_rhos = rng.normal(scale=0.7, size=n).astype(dtype)
    ends = rng.random(n) < ends_prob
    if n:
        ends[-1] = True
    return r, v, nv, log_rhos, ends


def _loop(r, v, nv, log_rhos, ends, gamma, rho_bar, c_bar):
    """The definition, one step at a time, forward from each step to its piece's end."""
    n = r.shape[0]
    ratio = np.exp(log_rhos.astype(np.float64))
    rho = np.minimum(ratio, np.inf if rho_bar is None else rho_bar)
    c = np.minimum(ratio, np.inf if c_bar is None else c_bar)
    delta = rho * (r + gamma * nv - v)
    vs, adv = np.empty(n), np.empty(n)
    for i in range(n):
        total, weight, k = 0.0, 1.0, i
        while True:
            total += weight * delta[k]
            if ends[k]:
                break
            weight *= gamma * c[k]
            k += 1
        vs[i] = v[i] + total
    for i in range(n):
        after = 0.0 if ends[i] else vs[i + 1] - v[i + 1]
        adv[i] = rho[i] * (r[i] + gamma * (nv[i] + after) - v[i])
    return vs, adv


@pytest.mark.parametrize("backend", sorted(TWINS))
@pytest.mark.parametrize("caps", [(None, None), (1.0, 1.0), (2.0, 0.5)])
@pytest.mark.parametrize("ends_prob", [0.25, 0.01])  # short pieces, and pieces of ~100 steps
def test_targets_follow_their_definition(backend, caps, ends_prob):
    args = _pieces(300, 1, ends_prob)
    assert 1 < args[4].sum() < 300
    vs, adv = TWINS[backend].vtrace(*args, 0.9, *caps)
    want_vs, want_adv = _loop(*args, 0.9, *caps)
    np.testing.assert_allclose(vs, want_vs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(TWINS))
def test_on_policy_targets_are_n_step_returns(backend):
    """log_rhos = 0 and values consistent inside a piece (nv_i = v_{i+1}):
    vs_i = sum_{k=i}^{end} gamma^(k-i) r_k + gamma^(end-i+1) nv_end."""
    r, v, nv, _, ends = _pieces(120, 2)
    inside = np.flatnonzero(~ends)
    nv[inside] = v[inside + 1]
    gamma = 0.8
    vs, adv = TWINS[backend].vtrace(r, v, nv, np.zeros_like(r), ends, gamma)
    for i in range(r.shape[0]):
        end = i + int(np.argmax(ends[i:]))
        k = np.arange(i, end + 1)
        want = np.sum(gamma ** (k - i) * r[k]) + gamma ** (end - i + 1) * nv[end]
        assert vs[i] == pytest.approx(want, rel=1e-12, abs=1e-12)
        nxt = nv[i] if ends[i] else vs[i + 1] - v[i + 1] + nv[i]
        assert adv[i] == pytest.approx(r[i] + gamma * nxt - v[i], rel=1e-12, abs=1e-12)


@needs_cython
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 80), seed=st.integers(0, 2**32 - 1), gamma=st.floats(0.0, 1.0),
       float32=st.booleans(), rho_bar=st.sampled_from([None, 0.5, 1.0, 3.0]),
       c_bar=st.sampled_from([None, 0.5, 1.0]), never_taken=st.booleans())
def test_twins_agree(n, seed, gamma, float32, rho_bar, c_bar, never_taken):
    dtype = np.float32 if float32 else np.float64
    r, v, nv, log_rhos, ends = _pieces(n, seed, dtype=dtype)
    if never_taken and n:
        log_rhos[seed % n] = -np.inf  # an action pi can no longer take: rho = c = 0
    a = ref_pg.vtrace(r, v, nv, log_rhos, ends, gamma, rho_bar, c_bar)
    b = cython_pg.vtrace(r, v, nv, log_rhos, ends, gamma, rho_bar, c_bar)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == dtype
        np.testing.assert_allclose(x, y, rtol=1e-12 if dtype == np.float64 else 1e-6, atol=1e-12)


# -- against exact values of a small MDP ---------------------------------------------------------

GAMMA = 0.9
P = np.array([[[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]],
              [[0.3, 0.6, 0.1], [0.0, 0.2, 0.8]],
              [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])  # state 2 is terminal
R = np.array([[1.0, -0.5], [0.3, 2.0], [0.0, 0.0]])
MU = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
PI = np.array([[0.35, 0.65], [0.75, 0.25], [0.5, 0.5]])


def _values(policy):
    """Exact V and Q of ``policy`` (the terminal state worth 0)."""
    live = [0, 1]
    p_pi = np.einsum("sa,sat->st", policy, P)[np.ix_(live, live)]
    r_pi = (policy * R).sum(axis=1)[live]
    v = np.zeros(3)
    v[live] = np.linalg.solve(np.eye(2) - GAMMA * p_pi, r_pi)
    return v, R + GAMMA * P @ v


def _simulate(n, length, seed):
    """``n`` pieces of at most ``length`` steps of mu from state 0, as flat arrays: states,
    actions, rewards, next states, terminal flags and piece ends (cut or terminal)."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    steps = []
    for t in range(length):
        a = (rng.random(n) >= MU[x, 0]).astype(np.int64)
        cdf = np.cumsum(P[x, a], axis=1)
        x2 = np.minimum((rng.random(n)[:, None] >= cdf).sum(axis=1), 2)
        term = x2 == 2
        steps.append((np.flatnonzero(alive), x.copy(), a, R[x, a], x2, term, alive & (term | (t == length - 1))))
        alive &= ~term
        x = x2
    rows = []
    for t, (idx, x, a, r, x2, term, end) in enumerate(steps):
        rows.append(np.stack([idx, np.full(idx.shape, t), x[idx], a[idx], x2[idx], term[idx], end[idx]], axis=1))
    table = np.concatenate(rows)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]  # piece by piece, in time order
    piece, t, x, a, x2, term, end = table.T
    return piece, t, x, a, R[x, a], x2, term.astype(bool), end.astype(bool)


def _first_steps(backend, values, rho_bar, n=200_000, length=4, seed=0):
    piece, t, x, a, r, x2, term, end = _simulate(n, length, seed)
    log_rhos = np.log(PI[x, a]) - np.log(MU[x, a])
    nv = np.where(term, 0.0, values[x2])
    vs, adv = TWINS[backend].vtrace(r, values[x], nv, log_rhos, end, GAMMA, rho_bar, rho_bar)
    first = t == 0
    return vs[first], adv[first], a[first]


def _z(samples, exact):
    return (samples.mean() - exact) / (samples.std(ddof=1) / np.sqrt(samples.shape[0]))


@pytest.mark.parametrize("backend", sorted(TWINS))
def test_untruncated_targets_are_unbiased_for_the_target_policy(backend):
    """With the exact V^pi as values, E_mu[vs_0] = V^pi(x_0) and E_mu[adv_0 1{a_0 = a}] =
    pi(a|x_0) (Q^pi(x_0, a) - V^pi(x_0)): the advantages give the on-policy gradient."""
    v_pi, q_pi = _values(PI)
    vs, adv, a = _first_steps(backend, v_pi, None)
    assert abs(_z(vs, v_pi[0])) < 4
    for action in (0, 1):
        want = PI[0, action] * (q_pi[0, action] - v_pi[0])
        assert abs(_z(adv * (a == action), want)) < 4
    # and the behaviour's own values are not what it estimates
    assert abs(_z(vs, _values(MU)[0][0])) > 10


@pytest.mark.parametrize("backend", sorted(TWINS))
def test_truncated_targets_have_the_truncated_policys_value_as_fixed_point(backend):
    """rho_bar = c_bar = 1: vs is unbiased for V of pi_rho(a|x) ~ min(mu(a|x), pi(a|x)) when the
    values are that policy's (Theorem 1 of Espeholt et al. 2018), and biased for V^pi."""
    capped = np.minimum(MU, PI)
    pi_rho = capped / capped.sum(axis=1, keepdims=True)
    v_rho, _ = _values(pi_rho)
    vs, _, _ = _first_steps(backend, v_rho, 1.0)
    assert abs(_z(vs, v_rho[0])) < 4
    v_pi, _ = _values(PI)
    vs_pi, _, _ = _first_steps(backend, v_pi, 1.0)
    assert abs(_z(vs_pi, v_pi[0])) > 6


@pytest.mark.parametrize("backend", sorted(TWINS))
def test_bad_arguments_are_named(backend):
    vtrace = TWINS[backend].vtrace
    r, v, nv, log_rhos, ends = _pieces(5, 3)
    with pytest.raises(ValueError, match="log_rhos contains NaN or \\+inf"):
        vtrace(r, v, nv, np.array([0, 0, np.nan, 0, 0.0]), ends, 0.9)
    with pytest.raises(ValueError, match="log_rhos contains NaN or \\+inf"):
        vtrace(r, v, nv, np.array([0, 0, np.inf, 0, 0.0]), ends, 0.9)
    with pytest.raises(ValueError, match="next_values has length 4"):
        vtrace(r, v, nv[:4], log_rhos, ends, 0.9)
    with pytest.raises(ValueError, match="ends must hold only 0/1"):
        vtrace(r, v, nv, log_rhos, np.full(5, 2), 0.9)
    with pytest.raises(ValueError, match="rho_bar"):
        vtrace(r, v, nv, log_rhos, ends, 0.9, rho_bar=0.0)
    with pytest.raises(ValueError, match="c_bar"):
        vtrace(r, v, nv, log_rhos, ends, 0.9, c_bar=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        vtrace(r, v, nv, log_rhos, ends, 1.5)
    with pytest.raises(ValueError, match="values contains NaN"):
        vtrace(r, np.full(5, np.nan), nv, log_rhos, ends, 0.9)
    with pytest.raises(FloatingPointError, match="vtrace: the targets overflow"):
        vtrace(r, v, nv, np.full(5, 800.0), ends, 0.9)  # untruncated ratios of e^800
    vs, adv = vtrace(r, v, nv, np.full(5, 800.0), ends, 0.9, 1.0, 1.0)  # truncated: fine
    assert np.all(np.isfinite(vs)) and np.all(np.isfinite(adv))
    empty = vtrace(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, bool), 0.9)
    assert empty[0].shape == empty[1].shape == (0,)
