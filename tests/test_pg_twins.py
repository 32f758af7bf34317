"""Cython and NumPy twins of the pg kernels agree; bad input raises clear errors on both."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_cython
from metarl_fast import pg
from metarl_fast.optim import SGD, Adam
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference import pg as ref

try:
    from metarl_fast._core import pg as cy
except ImportError:  # numpy-only checkout
    cy = None

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = st.sampled_from([np.float32, np.float64])


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def _batch(seed, linear, dtype, n_rows, n_actions, batch, with_weights):
    rng = np.random.default_rng(seed)
    size = n_rows * n_actions + (n_actions if linear else 0)
    params = (rng.normal(size=size) * 2).astype(dtype)
    obs = (rng.normal(size=(batch, n_rows)).astype(dtype) if linear
           else rng.integers(0, n_rows, batch))
    actions = rng.integers(0, n_actions, batch)
    adv = rng.normal(size=batch).astype(dtype)
    w = rng.random(batch).astype(dtype) if with_weights else None
    return params, obs, actions, adv, w


@needs_cython
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), linear=st.booleans(), dtype=DTYPES,
       n_rows=st.integers(1, 9), n_actions=st.integers(1, 20), batch=st.integers(0, 300),
       with_weights=st.booleans(), entropy_coef=st.sampled_from([0.0, 0.01, -0.5]))
def test_policy_gradient_twins(seed, linear, dtype, n_rows, n_actions, batch, with_weights,
                               entropy_coef):
    params, obs, actions, adv, w = _batch(seed, linear, dtype, n_rows, n_actions, batch, with_weights)
    name = "linear_policy_gradient" if linear else "tabular_policy_gradient"
    got = getattr(cy, name)(params, n_rows, n_actions, obs, actions, adv, w, entropy_coef)
    want = getattr(ref, name)(params, n_rows, n_actions, obs, actions, adv, w, entropy_coef)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(got, want, **_tol(dtype))


@needs_cython
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), linear=st.booleans(), dtype=DTYPES,
       n_rows=st.integers(1, 6), n_actions=st.integers(1, 17), batch=st.integers(0, 200),
       opt_kind=st.sampled_from([ref.OPT_SGD, ref.OPT_ADAM]),
       max_norm=st.sampled_from([None, 0.0, 0.01, 10.0]), steps=st.integers(1, 3))
def test_fused_step_twins(seed, linear, dtype, n_rows, n_actions, batch, opt_kind, max_norm, steps):
    params, obs, actions, adv, w = _batch(seed, linear, dtype, n_rows, n_actions, batch, True)
    # SGD: [lr, momentum, nesterov]; Adam: [lr, beta1, beta2, eps, t]
    hyper = (np.array([0.1, 0.9, 1.0]) if opt_kind == ref.OPT_SGD
             else np.array([0.01, 0.9, 0.999, 1e-8, 0.0]))
    results = []
    for mod in (cy, ref):
        p, state, grad = params.copy(), np.zeros((2, params.size), dtype), np.empty_like(params)
        name = "linear_pg_step" if linear else "tabular_pg_step"
        norms = []
        for t in range(1, steps + 1):
            if opt_kind == ref.OPT_ADAM:
                hyper[4] = t
            norms.append(getattr(mod, name)(p, n_rows, n_actions, obs, actions, adv, w, 0.05,
                                            max_norm, grad, opt_kind, state, hyper))
        results.append((p, state, grad, norms))
    (p1, s1, g1, n1), (p2, s2, g2, n2) = results
    tol = _tol(dtype)
    np.testing.assert_allclose(n1, n2, **tol)
    np.testing.assert_allclose(g1, g2, **tol)
    np.testing.assert_allclose(s1, s2, **tol)
    np.testing.assert_allclose(p1, p2, **tol)


@needs_cython
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=DTYPES, n=st.integers(0, 300),
       p_done=st.sampled_from([0.0, 0.005, 0.2, 1.0]),
       gamma=st.floats(0, 1), lam=st.floats(0, 1), bootstrap=st.one_of(st.none(), st.floats(-5, 5)))
def test_returns_and_gae_twins_identical(seed, dtype, n, p_done, gamma, lam, bootstrap):
    # long episodes take the reference's sequential scan, short ones its vectorised waves
    rng = np.random.default_rng(seed)
    r, v, nv = (rng.normal(size=n).astype(dtype) for _ in range(3))
    d = rng.random(n) < p_done
    np.testing.assert_array_equal(cy.discounted_returns(r, d, gamma, bootstrap),
                                  ref.discounted_returns(r, d, gamma, bootstrap))
    np.testing.assert_array_equal(cy.gae(r, v, nv, d, gamma, lam), ref.gae(r, v, nv, d, gamma, lam))


@needs_cython
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=DTYPES, n_states=st.integers(1, 8),
       batch=st.integers(0, 100), gamma=st.floats(0, 1), lr=st.floats(0, 1))
def test_td_update_twins(seed, dtype, n_states, batch, gamma, lr):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n_states).astype(dtype)
    s, ns = rng.integers(0, n_states, batch), rng.integers(0, n_states, batch)
    r, d = rng.normal(size=batch).astype(dtype), rng.random(batch) < 0.3
    v1, v2 = values.copy(), values.copy()
    tol = _tol(dtype)
    np.testing.assert_allclose(cy.tabular_td_update(v1, s, r, ns, d, gamma, lr),
                               ref.tabular_td_update(v2, s, r, ns, d, gamma, lr), **tol)
    np.testing.assert_allclose(v1, v2, **tol)
    F = n_states
    params = rng.normal(size=F + 1).astype(dtype)
    x, nx = rng.normal(size=(batch, F)).astype(dtype), rng.normal(size=(batch, F)).astype(dtype)
    p1, p2 = params.copy(), params.copy()
    np.testing.assert_allclose(cy.linear_td_update(p1, F, x, r, nx, d, gamma, lr),
                               ref.linear_td_update(p2, F, x, r, nx, d, gamma, lr), **tol)
    np.testing.assert_allclose(p1, p2, **tol)


@needs_cython
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), dtype=DTYPES, n=st.integers(1, 50),
       steps=st.integers(1, 4), momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans())
def test_optimizer_kernel_twins(seed, dtype, n, steps, momentum, nesterov):
    rng = np.random.default_rng(seed)
    params = rng.normal(size=n).astype(dtype)
    grads = rng.normal(size=(steps, n)).astype(dtype)
    tol = _tol(dtype)
    pa, pb = params.copy(), params.copy()
    sa, sb = np.zeros((2, n), dtype), np.zeros((2, n), dtype)
    for t, g in enumerate(grads, start=1):
        bc = (0.01 / (1 - 0.9 ** t), np.sqrt(1 - 0.999 ** t), 0.9, 0.999, 1e-8)
        cy.adam_update(pa, g, sa[0], sa[1], *bc, grad_scale=-0.5)
        ref.adam_update(pb, g, sb[0], sb[1], *bc, grad_scale=-0.5)
    np.testing.assert_allclose(pa, pb, **tol)
    np.testing.assert_allclose(sa, sb, **tol)
    nest = nesterov and momentum > 0
    for g in grads:
        cy.sgd_update(pa, g, sa[0], 0.1, momentum, nest)
        ref.sgd_update(pb, g, sb[0], 0.1, momentum, nest)
    np.testing.assert_allclose(pa, pb, **tol)
    ga, gb = grads[0].copy(), grads[0].copy()
    assert cy.clip_grad_norm(ga, 0.5) == pytest.approx(ref.clip_grad_norm(gb, 0.5), rel=1e-6)
    np.testing.assert_allclose(ga, gb, **tol)
    lp, lb = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    np.testing.assert_allclose(cy.truncated_importance_weights(lp, lb, 1.5),
                               ref.truncated_importance_weights(lp, lb, 1.5), **tol)


# --------------------------------------------------------------------------- validation

def _setup(linear=False):
    rng = np.random.default_rng(3)
    if linear:
        policy = LinearSoftmaxPolicy(3, 2)
        obs = rng.normal(size=(4, 3))
    else:
        policy = TabularSoftmaxPolicy(3, 2)
        obs = np.array([0, 1, 2, 1])
    return policy, obs, np.array([0, 1, 1, 0]), np.array([1.0, -1.0, 0.5, 2.0])


@pytest.mark.parametrize("linear", [False, True])
def test_gradient_rejects_bad_input(backend, linear):
    policy, obs, actions, adv = _setup(linear)
    with pytest.raises(ValueError, match="actions.*length|length.*actions"):
        pg.policy_gradient(policy, obs, actions[:3], adv)
    with pytest.raises(ValueError, match="advantages"):
        pg.policy_gradient(policy, obs, actions, adv[:3])
    with pytest.raises(ValueError, match="advantages.*NaN"):
        pg.policy_gradient(policy, obs, actions, np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="weights"):
        pg.policy_gradient(policy, obs, actions, adv, weights=np.ones(5))
    with pytest.raises(ValueError, match="actions out of range"):
        pg.policy_gradient(policy, obs, np.array([0, 1, 2, 0]), adv)
    with pytest.raises(ValueError, match="actions out of range"):
        pg.policy_gradient(policy, obs, np.array([0, -1, 1, 0]), adv)
    with pytest.raises(TypeError, match="actions"):
        pg.policy_gradient(policy, obs, actions.astype(float), adv)
    with pytest.raises(ValueError, match="entropy_coef"):
        pg.policy_gradient(policy, obs, actions, adv, entropy_coef=np.nan)
    if linear:
        with pytest.raises(ValueError, match="obs"):
            pg.policy_gradient(policy, obs[:, :2], actions, adv)
        bad = obs.copy()
        bad[1, 1] = np.inf
        with pytest.raises(ValueError, match="obs contains NaN or inf"):
            pg.policy_gradient(policy, bad, actions, adv)
    else:
        with pytest.raises(ValueError, match="obs out of range"):
            pg.policy_gradient(policy, np.array([0, 1, 3, 1]), actions, adv)
    with pytest.raises(TypeError, match="policy"):
        pg.policy_gradient("policy", obs, actions, adv)


def test_kernel_rejects_wrong_params_size(backend):
    _, obs, actions, adv = _setup()
    with pytest.raises(ValueError, match="params has size 5, expected 6"):
        pg.active.pg.tabular_policy_gradient(np.zeros(5), 3, 2, obs, actions, adv)
    with pytest.raises(ValueError, match="params has size 6, expected 8"):
        pg.active.pg.linear_policy_gradient(np.zeros(6), 3, 2, np.zeros((4, 3)), actions, adv)
    with pytest.raises(TypeError, match="params"):
        pg.active.pg.tabular_policy_gradient(np.zeros(6, np.int64), 3, 2, obs, actions, adv)
    with pytest.raises(ValueError, match="params contains NaN"):
        pg.active.pg.tabular_policy_gradient(np.array([0, 0, np.nan, 0, 0, 0.0]), 3, 2, obs,
                                             actions, adv)


def test_returns_reject_bad_input(backend):
    r, d = np.ones(4), np.zeros(4, bool)
    for gamma in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="gamma"):
            pg.discounted_returns(r, d, gamma)
    with pytest.raises(ValueError, match="dones has length 3, expected 4"):
        pg.discounted_returns(r, d[:3], 0.9)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        pg.discounted_returns(np.array([1.0, np.nan, 0.0, 0.0]), d, 0.9)
    with pytest.raises(ValueError, match="dones must hold only 0/1"):
        pg.discounted_returns(r, np.array([0, 2, 0, 1]), 0.9)
    with pytest.raises(ValueError, match="bootstrap"):
        pg.discounted_returns(r, d, 0.9, bootstrap=np.inf)
    with pytest.raises(TypeError, match="rewards"):
        pg.discounted_returns(np.array(["a", "b"]), d[:2], 0.9)
    for lam in (-0.5, 1.01):
        with pytest.raises(ValueError, match="lam"):
            pg.gae(r, r, r, d, 0.9, lam)
    with pytest.raises(ValueError, match="values has length 3"):
        pg.gae(r, r[:3], r, d, 0.9, 0.5)
    with pytest.raises(ValueError, match="next_values contains NaN"):
        pg.gae(r, r, np.array([0, 0, np.nan, 0]), d, 0.9, 0.5)


def test_td_and_weights_reject_bad_input(backend):
    critic = pg.TabularCritic(3, lr=0.1)
    s = np.array([0, 1])
    with pytest.raises(ValueError, match="next_states out of range"):
        critic.td_update(s, np.ones(2), np.array([0, 3]), np.zeros(2), 0.9)
    with pytest.raises(ValueError, match="lr"):
        critic.td_update(s, np.ones(2), s, np.zeros(2), 0.9, lr=-1.0)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        critic.td_update(s, np.array([np.nan, 0.0]), s, np.zeros(2), 0.9)
    with pytest.raises(ValueError, match="gamma"):
        critic.td_update(s, np.ones(2), s, np.zeros(2), 1.5)
    np.testing.assert_array_equal(critic.values, 0.0)  # nothing was written
    with pytest.raises(ValueError, match="lr"):
        pg.TabularCritic(3, lr=-0.1)
    with pytest.raises(ValueError, match="rho_bar"):
        pg.truncated_importance_weights(np.zeros(2), np.zeros(2), rho_bar=0.0)
    with pytest.raises(ValueError, match="behaviour_log_probs has length 1"):
        pg.truncated_importance_weights(np.zeros(2), np.zeros(1))


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("make_opt", [lambda p: Adam(p, lr=0.1), lambda p: SGD(p, lr=0.1, momentum=0.9)])
def test_rejected_fused_step_changes_nothing(backend, linear, make_opt):
    policy, obs, actions, adv = _setup(linear)
    opt = make_opt(policy)
    pg.policy_gradient_step(policy, opt, obs, actions, adv)
    params, state, steps = policy.params.copy(), opt.state.copy(), opt.steps
    bad_calls = [
        (dict(advantages=np.array([1.0, np.nan, 0.0, 0.0])), "advantages"),
        (dict(actions=np.array([0, 1, 5, 0])), "actions"),
        (dict(actions=actions[:2]), "actions"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(max_grad_norm=np.nan), "max_grad_norm"),
        (dict(weights=np.array([1.0, 1.0, np.inf, 1.0])), "weights"),
    ]
    for bad, match in bad_calls:
        kwargs = dict(obs=obs, actions=actions, advantages=adv)
        kwargs.update(bad)
        extra = {k: kwargs.pop(k) for k in ("max_grad_norm", "weights") if k in kwargs}
        with pytest.raises(ValueError, match=match):
            pg.policy_gradient_step(policy, opt, kwargs["obs"], kwargs["actions"],
                                    kwargs["advantages"], **extra)
        np.testing.assert_array_equal(policy.params, params)
        np.testing.assert_array_equal(opt.state, state)
        assert opt.steps == steps
    other = policy.copy()
    with pytest.raises(ValueError, match="optimizer does not update this policy"):
        pg.policy_gradient_step(other, opt, obs, actions, adv)
    with pytest.raises(TypeError, match="optimizer"):
        pg.policy_gradient_step(policy, object(), obs, actions, adv)


def test_fused_kernel_rejects_bad_optimizer_state(backend):
    policy, obs, actions, adv = _setup()
    p = policy.params
    grad = np.empty_like(p)
    good = np.array([0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="opt_state must have shape"):
        pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad, 0,
                                     np.zeros((2, 5)), good)
    with pytest.raises(TypeError, match="opt_state must have dtype"):
        pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad, 0,
                                     np.zeros((2, 6), np.float32), good)
    with pytest.raises(ValueError, match="opt_kind"):
        pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad, 7,
                                     np.zeros((2, 6)), good)
    with pytest.raises(ValueError, match="lr"):
        pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad, 0,
                                     np.zeros((2, 6)), np.array([-0.1, 0.0, 0.0]))
    for bad, match in (([0.01, 0.9, 0.999, 1e-8, 0.0], "step number"), ([0.01, 0.9, 0.999, 1e-8, 1.5], "step number"),
                       ([0.01, 1.0, 0.999, 1e-8, 1.0], "beta1 must be < 1"), ([0.01, 0.9, 0.999, 0.0, 1.0], "eps must be > 0"),
                       ([np.nan, 0.9, 0.999, 1e-8, 1.0], "opt_hyper contains NaN")):
        with pytest.raises(ValueError, match=match):
            pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad, 1,
                                         np.zeros((2, 6)), np.array(bad))
    with pytest.raises(ValueError, match="grad_out must have shape"):
        pg.active.pg.tabular_pg_step(p, 3, 2, obs, actions, adv, None, 0.0, None, grad[:5], 0,
                                     np.zeros((2, 6)), good)
    np.testing.assert_array_equal(p, 0.0)


KERNELS = ["discounted_returns", "gae", "tabular_policy_gradient", "linear_policy_gradient",
           "clip_grad_norm", "sgd_update", "adam_update", "tabular_pg_step", "linear_pg_step",
           "tabular_td_update", "linear_td_update", "truncated_importance_weights"]


@needs_cython
@pytest.mark.parametrize("name", KERNELS)
def test_twins_share_kernel_names_and_signatures(name):
    import inspect

    assert str(inspect.signature(getattr(cy, name))) == str(inspect.signature(getattr(ref, name)))
    assert (cy.OPT_SGD, cy.OPT_ADAM, cy.N_HYPER) == (ref.OPT_SGD, ref.OPT_ADAM, ref.N_HYPER)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_detected_at_every_position(backend, dtype):
    # the Cython fast path scans with several vector accumulators: probe every lane and the tail
    policy = LinearSoftmaxPolicy(7, 3, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 7)).astype(dtype)
    actions, adv = rng.integers(0, 3, 9), rng.normal(size=9).astype(dtype)
    for bad_value in (np.nan, np.inf, -np.inf):
        for k in range(x.size):
            bad = x.copy()
            bad.flat[k] = bad_value
            with pytest.raises(ValueError, match="obs contains NaN or inf"):
                pg.policy_gradient(policy, bad, actions, adv)
        for k in range(policy.n_params):
            params = policy.params.copy()
            params[k] = bad_value
            with pytest.raises(ValueError, match="params contains NaN or inf"):
                pg.active.pg.linear_policy_gradient(params, 7, 3, x, actions, adv)
