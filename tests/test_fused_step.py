"""pg.fused_step: the policy-gradient step bound once to a policy and an optimizer computes what
policy_gradient_step computes, changes nothing when it rejects a call, and notices rebinding."""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import pg
from metarl_fast.optim import SGD, Adam


def make(kind, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    if kind == "tabular":
        policy = mf.TabularSoftmaxPolicy(6, 4, dtype=dtype, theta=rng.normal(size=(6, 4)))
        obs = rng.integers(0, 6, 40)
    else:
        policy = mf.LinearSoftmaxPolicy(5, 4, dtype=dtype, W=rng.normal(size=(5, 4)), b=rng.normal(size=4))
        obs = rng.normal(size=(40, 5)).astype(dtype)
    actions = rng.integers(0, 4, 40)
    return policy, obs, actions, rng.normal(size=40).astype(dtype), rng.random(40).astype(dtype)


OPTIMIZERS = {
    "adam": lambda p: Adam(p, lr=0.05),
    "sgd-nesterov": lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("kind", ["tabular", "linear"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_policy_gradient_step(backend, kind, opt, dtype):
    a, obs, actions, adv, w = make(kind, dtype=dtype)
    b = a.copy()
    opt_a, opt_b = OPTIMIZERS[opt](a), OPTIMIZERS[opt](b)
    step = pg.fused_step(b, opt_b)
    for i, kwargs in enumerate([{}, {"weights": w}, {"entropy_coef": 0.3}, {"max_grad_norm": 0.05}, {}]):
        norm_a = pg.policy_gradient_step(a, opt_a, obs, actions, adv, **kwargs)
        norm_b = step(obs, actions, adv, **kwargs)
        assert norm_a == norm_b, i
        np.testing.assert_array_equal(a.params, b.params, err_msg=str(i))
        np.testing.assert_array_equal(opt_a.state, opt_b.state, err_msg=str(i))
        np.testing.assert_array_equal(opt_a._grad, opt_b._grad, err_msg=str(i))
        assert opt_a.steps == opt_b.steps == i + 1


def test_a_rejected_call_changes_nothing(backend):
    policy, obs, actions, adv, _ = make("tabular")
    opt = Adam(policy, lr=0.05)
    step = pg.fused_step(policy, opt)
    step(obs, actions, adv)
    params, state = policy.params.copy(), opt.state.copy()
    bad = actions.copy()
    bad[3] = 9
    with pytest.raises(ValueError, match="actions out of range"):
        step(obs, bad, adv)
    nan_adv = adv.copy()
    nan_adv[0] = np.nan
    with pytest.raises(ValueError, match="advantages"):
        step(obs, actions, nan_adv)
    np.testing.assert_array_equal(policy.params, params)
    np.testing.assert_array_equal(opt.state, state)
    assert opt.steps == 1


def test_binding_is_checked(backend):
    policy, obs, actions, adv, _ = make("tabular")
    opt = Adam(policy, lr=0.05)
    step = pg.fused_step(policy, opt)
    opt.load_state_dict(opt.state_dict())      # writes in place: still bound
    policy.set_params(np.zeros(policy.n_params))
    step(obs, actions, adv)
    opt.state = opt.state.copy()               # a new array: the step refuses
    with pytest.raises(ValueError, match="no longer holds the arrays"):
        step(obs, actions, adv)
    other = mf.TabularSoftmaxPolicy(6, 4)
    with pytest.raises(ValueError, match="does not update this policy's params"):
        pg.fused_step(other, Adam(policy))
    with pytest.raises(TypeError, match="optimizer must be an SGD or Adam optimizer"):
        pg.fused_step(policy, object())
    with pytest.raises(TypeError, match="policy must be a TabularSoftmaxPolicy"):
        pg.fused_step(object(), opt)


def test_the_step_keeps_the_backend_it_was_built_with():
    if not mf.is_available("cython"):
        pytest.skip("compiled extension not built")
    policy, obs, actions, adv, _ = make("tabular")
    with mf.use_backend("numpy"):
        step = pg.fused_step(policy, Adam(policy))
    assert type(step).__module__ == "metarl_fast.reference.pg"
    with mf.use_backend("cython"):
        step(obs, actions, adv)  # still the reference's class
        assert type(pg.fused_step(policy, step.optimizer)).__module__ != "metarl_fast.reference.pg"
