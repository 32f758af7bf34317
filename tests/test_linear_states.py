"""A linear softmax policy fed int states with a feature table (``features=``): the gradient and
the fused step computed per state equal the per-row forms on ``features[states]``, the one-hot
case equals the tabular gradient, and both backends agree.  Reference first: each mathematical
test runs on the active backend and on the NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarl_fast import pg
from metarl_fast._core import pg as core_pg
from metarl_fast.optim import SGD, Adam
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference import pg as ref_pg

BACKENDS = [ref_pg, core_pg]
IDS = ["numpy", "cython"]


def _problem(rng, S, B, F=6, A=4, dtype=np.float64):
    params = rng.normal(size=F * A + A).astype(dtype)
    phi = rng.normal(size=(S, F)).astype(dtype)
    states = rng.integers(0, S, B)
    actions = rng.integers(0, A, B)
    adv = rng.normal(size=B).astype(dtype)
    weights = rng.random(B).astype(dtype)
    return params, F, A, phi, states, actions, adv, weights


def _surrogate(params, F, A, rows, actions, coef, entropy_coef):
    """J = mean_i c_i log pi(a_i | x_i) + entropy_coef mean_i H(x_i), in float64."""
    W, b = params[:F * A].reshape(F, A), params[F * A:]
    z = rows @ W + b
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    B = rows.shape[0]
    return ((coef * log_p[np.arange(B), actions]).sum() - entropy_coef * (p * log_p).sum()) / B


@pytest.mark.parametrize("kernels", BACKENDS, ids=IDS)
@pytest.mark.parametrize("S,B", [(1, 1), (2, 5), (8, 64), (40, 7)])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.7])
def test_gradient_is_the_derivative_of_the_surrogate(kernels, S, B, entropy_coef):
    rng = np.random.default_rng(S * 100 + B)
    params, F, A, phi, states, actions, adv, weights = _problem(rng, S, B)
    grad = kernels.linear_states_policy_gradient(params, F, A, phi, states, actions, adv, weights,
                                                 entropy_coef)
    coef = adv * weights
    eps = 1e-6
    fd = np.empty_like(params)
    for k in range(params.size):
        up, down = params.copy(), params.copy()
        up[k] += eps
        down[k] -= eps
        fd[k] = (_surrogate(up, F, A, phi[states], actions, coef, entropy_coef)
                 - _surrogate(down, F, A, phi[states], actions, coef, entropy_coef)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("kernels", BACKENDS, ids=IDS)
def test_one_hot_features_give_the_tabular_gradient(kernels):
    """With phi = I (S = F) the linear policy is a table theta = W + b; dW is the tabular
    gradient and db the sum of its rows."""
    rng = np.random.default_rng(3)
    S, A, B = 5, 3, 40
    W = rng.normal(size=(S, A))
    b = rng.normal(size=A)
    states, actions = rng.integers(0, S, B), rng.integers(0, A, B)
    adv = rng.normal(size=B)
    lin = kernels.linear_states_policy_gradient(np.concatenate([W.ravel(), b]), S, A, np.eye(S),
                                                states, actions, adv, None, 0.2)
    tab = kernels.tabular_policy_gradient((W + b).ravel(), S, A, states, actions, adv, None, 0.2)
    np.testing.assert_allclose(lin[:S * A], tab, atol=1e-15)
    np.testing.assert_allclose(lin[S * A:], tab.reshape(S, A).sum(axis=0), atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(S=st.integers(1, 30), B=st.integers(0, 60), F=st.integers(1, 9), A=st.integers(1, 6),
       use_weights=st.booleans(), entropy_coef=st.sampled_from([0.0, 0.5]),
       dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**32 - 1))
def test_twins_equal_the_per_row_gradient(S, B, F, A, use_weights, entropy_coef, dtype, seed):
    """Per state (S <= B) and gathered (S > B), both backends: the gradient on features[states]."""
    rng = np.random.default_rng(seed)
    params, F, A, phi, states, actions, adv, weights = _problem(rng, S, B, F, A, dtype)
    weights = weights if use_weights else None
    want = ref_pg.linear_policy_gradient(params, F, A, phi[states], actions, adv, weights,
                                         entropy_coef)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for kernels in BACKENDS:
        got = kernels.linear_states_policy_gradient(params, F, A, phi, states, actions, adv,
                                                    weights, entropy_coef)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


def _policy_and_batch(rng, S=6, F=4, A=3, B=48):
    policy = LinearSoftmaxPolicy(F, A, W=rng.normal(size=(F, A)), b=rng.normal(size=A))
    phi = rng.normal(size=(S, F))
    return (policy, phi, rng.integers(0, S, B), rng.integers(0, A, B), rng.normal(size=B))


@pytest.mark.parametrize("make_opt", [lambda p: Adam(p, lr=0.05), lambda p: SGD(p, 0.1, momentum=0.9)],
                         ids=["adam", "sgd"])
@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_step_and_fused_step_equal_the_per_row_step(make_opt, max_grad_norm):
    rng = np.random.default_rng(11)
    policy, phi, states, actions, adv = _policy_and_batch(rng)
    rows_policy, states_policy, fused_policy = policy.copy(), policy.copy(), policy.copy()
    rows_opt, states_opt = make_opt(rows_policy.params), make_opt(states_policy.params)
    fused_opt = make_opt(fused_policy.params)
    step = pg.fused_step(fused_policy, fused_opt, features=phi)
    for _ in range(4):
        n_rows = pg.policy_gradient_step(rows_policy, rows_opt, phi[states], actions, adv,
                                         max_grad_norm=max_grad_norm, entropy_coef=0.1)
        n_states = pg.policy_gradient_step(states_policy, states_opt, states, actions, adv,
                                           max_grad_norm=max_grad_norm, entropy_coef=0.1,
                                           features=phi)
        n_fused = step(states, actions, adv, entropy_coef=0.1, max_grad_norm=max_grad_norm)
        assert n_states == pytest.approx(n_rows, rel=1e-12) and n_fused == pytest.approx(n_rows, rel=1e-12)
    np.testing.assert_allclose(states_policy.params, rows_policy.params, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fused_policy.params, rows_policy.params, rtol=1e-12, atol=1e-14)
    assert rows_opt.steps == states_opt.steps == fused_opt.steps == 4
    np.testing.assert_allclose(pg.policy_gradient(states_policy, states, actions, adv, features=phi),
                               pg.policy_gradient(states_policy, phi[states], actions, adv),
                               rtol=1e-12, atol=1e-15)


def test_fused_step_holds_its_own_copy_of_the_table():
    rng = np.random.default_rng(12)
    policy, phi, states, actions, adv = _policy_and_batch(rng)
    twin = policy.copy()
    step = pg.fused_step(policy, Adam(policy.params, lr=0.05), features=phi)
    want_step = pg.fused_step(twin, Adam(twin.params, lr=0.05), features=phi.copy())
    phi[...] = np.nan  # the caller's array changes after binding: the step does not see it
    assert np.isfinite(step(states, actions, adv))
    want_step(states, actions, adv)
    np.testing.assert_array_equal(policy.params, twin.params)


def test_rejections_name_the_argument_and_change_nothing():
    rng = np.random.default_rng(13)
    policy, phi, states, actions, adv = _policy_and_batch(rng)
    opt = Adam(policy.params, lr=0.05)
    before = policy.params.copy()
    bad_phi = phi.copy()
    bad_phi[2, 1] = np.nan
    cases = [
        (dict(features=bad_phi), ValueError, "features"),
        (dict(features=phi[:, :2]), ValueError, "features"),
        (dict(features=phi[:0]), ValueError, "features"),
        (dict(features=phi.astype(object)), TypeError, "features"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            pg.policy_gradient_step(policy, opt, states, actions, adv, **kwargs)
        with pytest.raises(error, match=name):
            pg.fused_step(policy, opt, **kwargs)
    step = pg.fused_step(policy, opt, features=phi)
    out_of_range = states.copy()
    out_of_range[-1] = phi.shape[0]
    for bad_states in (out_of_range, states.astype(float) + 0.5, -states - 1):
        with pytest.raises((ValueError, TypeError), match="obs"):
            step(bad_states, actions, adv)
        with pytest.raises((ValueError, TypeError), match="obs"):
            pg.policy_gradient(policy, bad_states, actions, adv, features=phi)
    bad_adv = adv.copy()
    bad_adv[0] = np.inf
    with pytest.raises(ValueError, match="advantages"):
        step(states, actions, bad_adv)
    np.testing.assert_array_equal(policy.params, before)
    assert opt.steps == 0
    tabular = TabularSoftmaxPolicy(6, 3)
    with pytest.raises(ValueError, match="features"):
        pg.policy_gradient(tabular, states, actions, adv, features=phi)
    with pytest.raises(ValueError, match="features"):
        pg.fused_step(tabular, Adam(tabular.params), features=phi)


def test_act_on_states_draws_as_act_on_their_features():
    rng = np.random.default_rng(14)
    policy, phi, states, _, _ = _policy_and_batch(rng, S=7, B=500)
    got = policy.act(states, np.random.default_rng(5), features=phi)
    want = policy.act(phi[states], np.random.default_rng(5))
    np.testing.assert_array_equal(got, want)
    g1, g2 = np.random.default_rng(6), np.random.default_rng(6)
    policy.act(states, g1, features=phi)
    policy.act(phi[states], g2)
    assert g1.bit_generator.state == g2.bit_generator.state  # one uniform per decision
    with pytest.raises(ValueError, match="obs"):
        policy.act(np.append(states, 7), rng, features=phi)
    with pytest.raises(ValueError, match="features"):
        policy.act(states, rng, features=phi[:, :2])
