"""Issue 13, class 6: finite inputs whose results overflow raise FloatingPointError (naming what
overflowed) instead of returning inf, and a rejected call writes nothing; truncation saturates."""
import warnings

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import pg

DONES = np.array([0, 0, 0, 1], dtype=np.uint8)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference's own float64 overflow
        yield


@pytest.mark.parametrize("dtype,big", [(np.float64, 1e308), (np.float32, 3e38)])
def test_returns_and_advantages_that_overflow_raise_and_leave_out_alone(backend, dtype, big):
    rewards = np.full(4, big, dtype=dtype)
    out = np.full(4, 7.0, dtype=dtype)
    with pytest.raises(FloatingPointError, match=f"discounted_returns: the returns overflow the {np.dtype(dtype).name}"):
        pg.discounted_returns(rewards, DONES, 1.0, out=out)
    zeros = np.zeros(4, dtype=dtype)
    with pytest.raises(FloatingPointError, match="gae: the advantages overflow"):
        pg.gae(rewards, zeros, zeros, DONES, 1.0, 1.0, out=out)
    assert np.all(out == 7.0)
    # just below the limit: a finite result, as before
    ok = pg.discounted_returns(np.full(4, big / 8, dtype=dtype), DONES, 1.0, out=out)
    assert ok is out and np.all(np.isfinite(out)) and out[0] == pytest.approx(big / 2, rel=1e-6)


def test_untruncated_importance_ratios_that_overflow_raise_truncated_ones_saturate(backend):
    log_pi, log_mu = np.array([0.0, 800.0]), np.zeros(2)
    out = np.full(2, 3.0)
    with pytest.raises(FloatingPointError, match="truncated_importance_weights: untruncated ratios"):
        pg.truncated_importance_weights(log_pi, log_mu, None, out=out)
    assert np.all(out == 3.0)
    np.testing.assert_array_equal(pg.truncated_importance_weights(log_pi, log_mu, 2.0), [1.0, 2.0])
    with pytest.raises(FloatingPointError, match="overflow the float32"):
        pg.truncated_importance_weights(np.array([0.0, 100.0], np.float32), np.zeros(2, np.float32), None)


@pytest.mark.parametrize("kind", ["tabular", "linear", "linear states"])
def test_gradients_that_overflow_raise_and_steps_change_nothing(backend, kind):
    states, actions = np.array([0, 1]), np.array([0, 1])
    huge = np.full(2, 1e308)
    if kind == "tabular":
        policy, obs, kw = mf.TabularSoftmaxPolicy(2, 2), states, {}
    elif kind == "linear":
        policy, obs, kw = mf.LinearSoftmaxPolicy(2, 2), np.eye(2), {}
    else:
        policy, obs, kw = mf.LinearSoftmaxPolicy(2, 2), states, {"features": np.eye(2)}
    with pytest.raises(FloatingPointError, match="policy gradient's entries .* overflow the float64"):
        pg.policy_gradient(policy, obs, actions, huge, weights=np.full(2, 10.0), **kw)
    adam = mf.Adam(policy.params, lr=0.1)
    before, state = policy.params.copy(), adam.state.copy()
    with pytest.raises(FloatingPointError, match="policy gradient's entries"):
        pg.policy_gradient_step(policy, adam, obs, actions, huge, weights=np.full(2, 10.0), **kw)
    step = pg.fused_step(policy, adam, **kw)
    with pytest.raises(FloatingPointError, match="policy gradient's entries"):
        step(obs, actions, huge, weights=np.full(2, 10.0))
    np.testing.assert_array_equal(policy.params, before)
    np.testing.assert_array_equal(adam.state, state)
    assert adam.steps == 0
    # a float32 policy: a gradient beyond float32's range is an overflow too
    small = mf.TabularSoftmaxPolicy(2, 2, dtype=np.float32)
    with pytest.raises(FloatingPointError, match="overflow the float32"):
        pg.policy_gradient(small, states, actions, np.full(2, 3e38, np.float32), weights=np.full(2, 100.0, np.float32))


def test_clipping_a_gradient_whose_squares_overflow_is_exact(backend):
    """Entries near 1e308: the sum of squares overflows, the norm does not (it is computed scaled
    by the largest entry), and clipping gives the direction at the requested norm."""
    grad = np.array([1e308, -1e308, 0.0])
    norm = mf.clip_grad_norm(grad, 1.0)
    assert norm == pytest.approx(np.sqrt(2.0) * 1e308, rel=1e-12)
    np.testing.assert_allclose(grad, [np.sqrt(0.5), -np.sqrt(0.5), 0.0], rtol=1e-12)
    unclipped = np.array([1e200, 1e200])
    assert mf.clip_grad_norm(unclipped, 0.0) == pytest.approx(np.sqrt(2.0) * 1e200, rel=1e-12)
    assert np.all(unclipped == 1e200)


def test_a_norm_beyond_float64_raises_and_changes_nothing(backend):
    grad = np.full(4, 1.5e308)
    with pytest.raises(FloatingPointError, match="L2 norm overflows the float64 range"):
        mf.clip_grad_norm(grad, 1.0)
    assert np.all(grad == 1.5e308)


def test_fused_steps_clip_huge_gradients_exactly(backend):
    """A policy gradient with entries near 1e308 (squares overflow) clipped to norm 1: the step is
    the gradient's direction at norm 1 (state 0 pushes action 0 up, state 1 action 1)."""
    policy = mf.TabularSoftmaxPolicy(2, 2)
    opt = mf.SGD(policy.params, lr=1.0)
    norm = mf.policy_gradient_step(policy, opt, np.array([0, 1]), np.array([0, 1]),
                                   np.array([1e308, 1e308]), max_grad_norm=1.0)
    assert norm == pytest.approx(0.5e308, rel=1e-12)
    np.testing.assert_allclose(policy.params, [0.5, -0.5, -0.5, 0.5], rtol=1e-12)


def test_in_context_training_refuses_weights_it_could_not_resume():
    """Class 5: an Adam step of 1e150 would put the weights above the learners' bound (1e100):
    rolled back with DivergenceError, so no checkpoint holds weights a resume would refuse."""
    from metarl_fast.meta import DivergenceError
    from metarl_fast.trainer import InContextTraining, TrainConfig

    config = TrainConfig(tasks="bandits", algo="in-context", meta_lr=1e150).validate()
    training = InContextTraining(config)
    before = training.params.copy()
    rng = np.random.default_rng(0)
    with pytest.raises(DivergenceError, match="larger than 1e\\+100 \\(rolled back\\)"):
        training.meta_step(config.distribution().sample(200, rng), rng)
    np.testing.assert_array_equal(training.params, before)
    assert training.iteration == 0
    bad = training.state_dict()
    bad["params"] = np.full_like(before, 1e200)
    with pytest.raises(ValueError, match="weights above 1e\\+100"):
        InContextTraining(config).load_state_dict(bad)
