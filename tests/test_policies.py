"""TabularSoftmaxPolicy and LinearSoftmaxPolicy: views, sampling, persistence, bad input."""
import os

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.io import CheckpointError

TOL = {np.float32: 1e-5, np.float64: 1e-13}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tabular_policy_views_and_kernels(backend, rng, dtype):
    pol = mf.TabularSoftmaxPolicy(4, 2, dtype=dtype)
    assert pol.params.shape == (8,) and pol.theta.shape == (4, 2) and pol.dtype == dtype
    pol.params[:] = rng.standard_normal(8)
    assert np.shares_memory(pol.params, pol.theta)
    obs = np.array([0, 3, 3, 1])
    np.testing.assert_array_equal(pol.logits(obs), pol.theta[obs])
    np.testing.assert_allclose(pol.probs(obs), mf.softmax(pol.theta[obs]))
    a = pol.act(obs, np.random.default_rng(1))
    np.testing.assert_array_equal(a, mf.sample_actions(pol.theta[obs], np.random.default_rng(1)))
    np.testing.assert_allclose(pol.log_prob(obs, a), mf.log_prob(pol.theta[obs], a))
    z = pol.theta[obs].astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(pol.entropy(obs), -(p * np.log(p)).sum(axis=1), rtol=TOL[dtype])
    assert pol.entropy(obs).shape == (4,) and pol.entropy(obs).dtype == dtype


def test_linear_policy_logits(backend, rng):
    pol = mf.LinearSoftmaxPolicy(3, 4, W=rng.standard_normal((3, 4)), b=rng.standard_normal(4))
    assert pol.params.shape == (16,)
    assert np.shares_memory(pol.params, pol.W) and np.shares_memory(pol.params, pol.b)
    phi = rng.standard_normal((5, 3))
    np.testing.assert_allclose(pol.logits(phi), phi @ pol.W + pol.b)
    assert pol.act(phi, rng).shape == (5,)
    pol.params[-4:] = 0.0
    np.testing.assert_array_equal(pol.b, 0.0)


@pytest.mark.parametrize("cls,args", [(mf.TabularSoftmaxPolicy, (5, 3)), (mf.LinearSoftmaxPolicy, (2, 3))])
def test_save_load_copy_round_trip(tmp_path, rng, cls, args):
    pol = cls(*args, dtype=np.float32)
    pol.params[:] = rng.standard_normal(pol.n_params)
    path = tmp_path / "pol.npz"
    pol.save(path)
    back = cls.load(path)
    assert back == pol and back.dtype == np.float32
    c = pol.copy()
    assert c == pol and not np.shares_memory(c.params, pol.params)
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_load_rejects_corrupt_truncated_and_foreign_files(tmp_path, rng):
    pol = mf.TabularSoftmaxPolicy(3, 2)
    path = tmp_path / "p.npz"
    pol.save(path)
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        mf.TabularSoftmaxPolicy.load(tmp_path / "trunc.npz")
    with pytest.raises(CheckpointError, match="holds a TabularSoftmaxPolicy"):
        mf.LinearSoftmaxPolicy.load(path)
    with pytest.raises(CheckpointError, match="no such file"):
        mf.TabularSoftmaxPolicy.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", params=np.zeros(6))
    with pytest.raises(CheckpointError, match="not a metarl_fast file"):
        mf.TabularSoftmaxPolicy.load(tmp_path / "plain.npz")
    # flip one byte of the stored params: checksum catches it
    from metarl_fast import io
    arrays, _ = io.load_npz(path, kind="TabularSoftmaxPolicy", versions={1})
    bad = dict(arrays)
    io.save_npz(tmp_path / "v2.npz", bad, kind="TabularSoftmaxPolicy", version=99)
    with pytest.raises(CheckpointError, match="format version 99"):
        mf.TabularSoftmaxPolicy.load(tmp_path / "v2.npz")
    data = bytearray(raw)
    idx = data.find(np.zeros(6).tobytes())
    data[idx] = 1
    (tmp_path / "flip.npz").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable metarl_fast .npz file"):
        mf.TabularSoftmaxPolicy.load(tmp_path / "flip.npz")


def test_bad_constructor_and_observations(backend):
    with pytest.raises(ValueError, match="n_states must be >= 1"):
        mf.TabularSoftmaxPolicy(0, 2)
    with pytest.raises(TypeError, match="n_actions must be an int"):
        mf.TabularSoftmaxPolicy(3, 2.5)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        mf.TabularSoftmaxPolicy(3, 2, dtype=np.int64)
    with pytest.raises(ValueError, match="theta must have shape"):
        mf.TabularSoftmaxPolicy(3, 2, theta=np.zeros((2, 3)))
    pol = mf.TabularSoftmaxPolicy(3, 2)
    with pytest.raises(ValueError, match="obs out of range"):
        pol.act(np.array([0, 3]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="obs out of range"):
        pol.logits(np.array([-1]))
    with pytest.raises(TypeError, match="obs must be an integer"):
        pol.logits(np.array([0.5]))
    with pytest.raises(ValueError, match="params must be finite"):
        pol.set_params(np.array([0, 0, 0, np.nan, 0, 0]))
    lin = mf.LinearSoftmaxPolicy(3, 2)
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 3\)"):
        lin.logits(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="obs contains NaN"):
        lin.logits(np.array([[0.0, np.nan, 1.0]]))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_and_friends_take_any_shape_and_an_axis(backend, axis):
    """Issue 14: as NumPy/SciPy do: a 1-D vector, or any array with ``axis``."""
    x = np.random.default_rng(0).normal(size=(2, 3, 4))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(mf.softmax(x, axis=axis), p, rtol=1e-12)
    np.testing.assert_allclose(mf.log_softmax(x, axis=axis), np.log(p), rtol=1e-12)
    np.testing.assert_allclose(mf.entropy(x, axis=axis), -(p * np.log(p)).sum(axis=axis), rtol=1e-12)
    np.testing.assert_allclose(mf.softmax(np.array([1.0, 2.0])), [1 / (1 + np.e), np.e / (1 + np.e)])
    assert float(mf.entropy(np.zeros(4))) == pytest.approx(np.log(4))
    with pytest.raises(ValueError, match="axis 3 is out of range for logits of 3 dimensions"):
        mf.softmax(x, axis=3)
    with pytest.raises(ValueError, match="axis must be >= -3"):
        mf.softmax(x, axis=-4)


def test_policies_take_one_observation_as_gymnasium_gives_it(backend):
    """Issue 14: a state as an int (tabular) or one feature vector (linear): act returns an int,
    log_prob and entropy floats, probs and logits (A,); the same numbers as a batch of one."""
    tab = mf.TabularSoftmaxPolicy(3, 2, theta=np.arange(6.0).reshape(3, 2))
    lin = mf.LinearSoftmaxPolicy(3, 2, W=np.arange(6.0).reshape(3, 2) / 5)
    for policy, one, batch in ((tab, 2, np.array([2])), (lin, np.ones(3), np.ones((1, 3)))):
        a = policy.act(one, np.random.default_rng(4))
        assert type(a) is int and a == policy.act(batch, np.random.default_rng(4))[0]
        np.testing.assert_array_equal(policy.probs(one), policy.probs(batch)[0])
        np.testing.assert_array_equal(policy.logits(one), policy.logits(batch)[0])
        assert policy.log_prob(one, 1) == policy.log_prob(batch, np.array([1]))[0]
        assert isinstance(policy.entropy(one), float)
    with pytest.raises(ValueError, match="obs"):
        tab.act(7, np.random.default_rng(0))
