"""MLPSoftmaxPolicy: the network policy class over the MLP kernels (issue 16)."""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.policy import MLPSoftmaxPolicy, sample_actions, softmax
from metarl_fast.reference import mlp as mlp_spec


def test_init_is_pytorch_linear_from_the_given_stream_and_the_layers_are_views():
    policy = MLPSoftmaxPolicy(3, 4, hidden=(5, 6), rng=7)
    want = mlp_spec.mlp_init(3, (5, 6), 4, np.random.default_rng(7))
    np.testing.assert_array_equal(policy.params, want)
    assert policy.n_params == (3 + 1) * 5 + (5 + 1) * 6 + (6 + 1) * 4
    assert [W.shape for W, _ in policy.layers] == [(3, 5), (5, 6), (6, 4)]
    for (W, b), fan_in in zip(policy.layers, (3, 5, 6)):
        assert np.all(np.abs(W) <= 1 / np.sqrt(fan_in)) and np.all(np.abs(b) <= 1 / np.sqrt(fan_in))
    policy.params[:] = 0.0  # optimizers update params in place: the views follow
    assert all(not W.any() and not b.any() for W, b in policy.layers)
    assert not np.array_equal(MLPSoftmaxPolicy(3, 4, hidden=(5, 6), rng=8).params, want)


def test_logits_are_the_network_of_the_layers(backend):
    rng = np.random.default_rng(0)
    for activation, fn in (("tanh", mlp_spec.tanh), ("relu", lambda z: np.maximum(z, 0.0))):
        policy = MLPSoftmaxPolicy(4, 3, hidden=(8,), activation=activation, rng=1)
        obs = rng.normal(size=(6, 4))
        (W0, b0), (W1, b1) = policy.layers
        want = fn(obs @ W0 + b0) @ W1 + b1
        np.testing.assert_allclose(policy.logits(obs), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(policy.probs(obs), softmax(want), rtol=1e-12)
        np.testing.assert_allclose(policy.logits(obs[2]), want[2], rtol=1e-12, atol=1e-12)
    linear = MLPSoftmaxPolicy(2, 2, hidden=(), rng=0)
    W, b = linear.layers[0]
    np.testing.assert_allclose(linear.logits(np.eye(2)), W + b, rtol=1e-15)


def test_act_draws_what_sample_actions_draws_on_its_logits(backend):
    policy = MLPSoftmaxPolicy(4, 5, hidden=(16, 16), rng=2)
    obs = np.random.default_rng(3).normal(size=(50, 4))
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(policy.act(obs, a), sample_actions(policy.logits(obs), b))
    assert a.bit_generator.state == b.bit_generator.state
    one = policy.act(obs[0], 4)
    assert isinstance(one, int) and one == int(sample_actions(policy.logits(obs[:1]), 4)[0])
    lp = policy.log_prob(obs, np.zeros(50, dtype=np.int64))
    np.testing.assert_allclose(np.exp(lp), policy.probs(obs)[:, 0], rtol=1e-12)


def test_save_load_copy_and_equality(tmp_path):
    policy = MLPSoftmaxPolicy(2, 3, hidden=(4, 5), activation="relu", dtype=np.float32, rng=0)
    path = policy.save(tmp_path / "mlp.npz")
    loaded = MLPSoftmaxPolicy.load(path)
    assert loaded == policy and loaded.params.dtype == np.float32
    assert (loaded.hidden, loaded.activation, loaded.obs_dim, loaded.n_actions) == ((4, 5), "relu", 2, 3)
    twin = policy.copy()
    assert twin == policy and twin.params is not policy.params
    twin.params[0] += 1
    assert twin != policy
    assert MLPSoftmaxPolicy(2, 3, hidden=(4, 5), activation="tanh", dtype=np.float32,
                            params=policy.params) != policy  # another activation: another policy
    with pytest.raises(mf.CheckpointError, match="holds a MLPSoftmaxPolicy, expected a TabularSoftmaxPolicy"):
        mf.TabularSoftmaxPolicy.load(path)


def test_given_params_are_checked_and_used():
    policy = MLPSoftmaxPolicy(2, 2, hidden=(3,), params=np.arange(17.0))
    np.testing.assert_array_equal(policy.params, np.arange(17.0))
    with pytest.raises(ValueError, match="params must have shape"):
        MLPSoftmaxPolicy(2, 2, hidden=(3,), params=np.zeros(16))
    with pytest.raises(ValueError, match="params must be finite"):
        MLPSoftmaxPolicy(2, 2, hidden=(3,), params=np.full(17, np.nan))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(obs_dim=0, n_actions=2), ValueError, "obs_dim"),
    (dict(obs_dim=2, n_actions=0), ValueError, "n_actions"),
    (dict(obs_dim=2, n_actions=2, hidden=(0,)), ValueError, "hidden"),
    (dict(obs_dim=2, n_actions=2, hidden=(2000,)), ValueError, "hidden"),
    (dict(obs_dim=2, n_actions=2, activation="sigmoid"), ValueError, "activation"),
    (dict(obs_dim=2, n_actions=2, dtype=np.int32), TypeError, "dtype"),
    (dict(obs_dim=2, n_actions=2, rng="seed"), TypeError, "rng"),
])
def test_constructor_names_the_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        MLPSoftmaxPolicy(**kwargs)


def test_observations_are_checked(backend):
    policy = MLPSoftmaxPolicy(3, 2, hidden=(4,), rng=0)
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 3\)"):
        policy.logits(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="obs contains NaN"):
        policy.act(np.array([[0.0, np.nan, 1.0]]), 0)
    with pytest.raises(TypeError, match="obs must be a numeric array"):
        policy.act(np.array([["a", "b", "c"]]), 0)
