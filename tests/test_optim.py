"""SGD and Adam: hand-computed PyTorch sequences, state round-trips, checkpoints, validation."""
import math

import numpy as np
import pytest

from metarl_fast import io, pg
from metarl_fast.optim import SGD, Adam, load_checkpoint, save_checkpoint
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy

GRADS = [[0.5, -1.0, 2.0], [0.1, 0.0, -3.0], [-0.4, 0.7, 1.0], [2.0, -0.2, 0.0], [0.3, 0.3, 0.3]]


def torch_adam_reference(params, grads, lr, beta1, beta2, eps):
    """torch.optim.Adam (amsgrad=False, weight_decay=0), written out with Python floats."""
    params = list(map(float, params))
    m = [0.0] * len(params)
    v = [0.0] * len(params)
    history = []
    for t, grad in enumerate(grads, start=1):
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        for i, g in enumerate(grad):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            denom = math.sqrt(v[i]) / math.sqrt(bias_correction2) + eps
            params[i] -= step_size * m[i] / denom
        history.append(list(params))
    return history


def torch_sgd_reference(params, grads, lr, momentum, nesterov):
    """torch.optim.SGD (dampening=0, weight_decay=0): buffer = g on the first step."""
    params = list(map(float, params))
    buf = None
    history = []
    for grad in grads:
        if momentum:
            buf = list(grad) if buf is None else [momentum * b + g for b, g in zip(buf, grad)]
            step = [g + momentum * b for g, b in zip(grad, buf)] if nesterov else buf
        else:
            step = grad
        params = [p - lr * s for p, s in zip(params, step)]
        history.append(list(params))
    return history


def test_adam_first_step_moves_each_param_by_lr(backend):
    # |update| = lr at t = 1 whatever the gradient scale (bias correction), a known Adam property
    params = np.array([1.0, 2.0, -3.0])
    Adam(params, lr=0.01).step(np.array([0.5, -50.0, 7.0]))
    np.testing.assert_allclose(params, [0.99, 2.01, -3.01], rtol=1e-9)


@pytest.mark.parametrize("lr,betas,eps", [(0.01, (0.9, 0.999), 1e-8), (0.3, (0.5, 0.9), 1e-3),
                                          (0.05, (0.0, 0.99), 1e-6)])
def test_adam_matches_torch_formula(backend, lr, betas, eps):
    start = [0.2, -0.1, 1.5]
    want = torch_adam_reference(start, GRADS, lr, *betas, eps)
    params = np.array(start)
    opt = Adam(params, lr=lr, betas=betas, eps=eps)
    for grad, expected in zip(GRADS, want):
        opt.step(np.array(grad))
        np.testing.assert_allclose(params, expected, rtol=1e-13, atol=1e-15)
    assert opt.steps == len(GRADS)


def test_adam_float32(backend):
    start = [0.2, -0.1, 1.5]
    want = torch_adam_reference(start, GRADS, 0.01, 0.9, 0.999, 1e-8)
    params = np.array(start, dtype=np.float32)
    opt = Adam(params, lr=0.01)
    for grad in GRADS:
        opt.step(np.array(grad, dtype=np.float32))
    assert params.dtype == np.float32 and opt.state.dtype == np.float32
    np.testing.assert_allclose(params, want[-1], rtol=1e-5)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.5, True)])
def test_sgd_matches_torch_formula(backend, momentum, nesterov):
    start = [0.2, -0.1, 1.5]
    want = torch_sgd_reference(start, GRADS, 0.1, momentum, nesterov)
    params = np.array(start)
    opt = SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov)
    for grad, expected in zip(GRADS, want):
        opt.step(np.array(grad))
        np.testing.assert_allclose(params, expected, rtol=1e-13, atol=1e-15)


def test_optimizer_updates_policy_views(backend):
    policy = TabularSoftmaxPolicy(2, 2)
    opt = SGD(policy, lr=1.0)
    opt.step(np.array([1.0, 0.0, 0.0, -2.0]))
    np.testing.assert_array_equal(policy.theta, [[-1.0, 0.0], [0.0, 2.0]])


@pytest.mark.parametrize("make", [lambda p: Adam(p, lr=0.05, betas=(0.8, 0.95)),
                                  lambda p: SGD(p, lr=0.1, momentum=0.7, nesterov=True)])
def test_state_dict_round_trip_continues_identically(backend, make):
    rng = np.random.default_rng(0)
    a = np.array([0.1, 0.2, 0.3])
    opt_a = make(a)
    for _ in range(3):
        opt_a.step(rng.normal(size=3))
    b = a.copy()
    opt_b = make(b)
    opt_b.lr = 123.0  # overwritten by the state dict
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.lr == opt_a.lr and opt_b.steps == 3
    for _ in range(3):
        g = rng.normal(size=3)
        opt_a.step(g)
        opt_b.step(g)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(opt_a.state, opt_b.state)


def test_load_state_dict_rejects_mismatch():
    opt = Adam(np.zeros(3), lr=0.1)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="SGD"):
        opt.load_state_dict(SGD(np.zeros(3), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(Adam(np.zeros(4), lr=0.1).state_dict())
    bad = Adam(np.zeros(3), lr=0.1).state_dict()
    bad["beta1"] = np.array(1.5)
    with pytest.raises(ValueError, match="beta1"):
        opt.load_state_dict(bad)
    bad = Adam(np.zeros(3), lr=0.1).state_dict()
    del bad["steps"]
    with pytest.raises(ValueError, match="steps"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_optimizer_save_load(tmp_path, backend):
    params = np.array([1.0, -1.0])
    opt = Adam(params, lr=0.02)
    opt.step(np.array([0.3, -0.6]))
    path = opt.save(tmp_path / "adam.npz")
    fresh = Adam(params.copy(), lr=0.5).load(path)
    assert fresh.lr == 0.02 and fresh.steps == 1
    np.testing.assert_array_equal(fresh.state, opt.state)
    with pytest.raises(io.CheckpointError, match="holds a Adam, expected a SGD"):
        SGD(params.copy(), lr=0.1).load(path)
    with pytest.raises(io.CheckpointError, match="shape"):
        Adam(np.zeros(3), lr=0.1).load(path)


@pytest.mark.parametrize("make_policy", [lambda: TabularSoftmaxPolicy(3, 2, dtype=np.float32),
                                         lambda: LinearSoftmaxPolicy(4, 3)])
def test_checkpoint_policy_and_optimizer(tmp_path, backend, make_policy):
    rng = np.random.default_rng(1)
    policy = make_policy()
    opt = Adam(policy, lr=0.1)
    if isinstance(policy, TabularSoftmaxPolicy):
        obs = rng.integers(0, 3, 16)
    else:
        obs = rng.normal(size=(16, 4))
    actions, adv = rng.integers(0, policy.n_actions, 16), rng.normal(size=16)
    pg.policy_gradient_step(policy, opt, obs, actions, adv)
    path = save_checkpoint(tmp_path / "ckpt.npz", policy, opt)
    policy2, opt2 = load_checkpoint(path)
    assert policy2 == policy and opt2.params is policy2.params
    assert opt2.steps == 1 and opt2.lr == 0.1
    for p, o in ((policy, opt), (policy2, opt2)):
        pg.policy_gradient_step(p, o, obs, actions, adv)
    np.testing.assert_array_equal(policy.params, policy2.params)
    # a corrupted file is refused with a clear error
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(io.CheckpointError, match="not a readable metarl_fast .npz file"):
        load_checkpoint(bad)


def test_checkpoint_rejects_unbound_optimizer(tmp_path):
    policy = TabularSoftmaxPolicy(2, 2)
    with pytest.raises(ValueError, match="does not update"):
        save_checkpoint(tmp_path / "x.npz", policy, Adam(np.zeros(4), lr=0.1))


def test_hyper_parameter_validation():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="lr"):
        Adam(p, lr=-0.01)
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="beta1"):
        Adam(p, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="beta2"):
        Adam(p, betas=(0.9, -0.1))
    with pytest.raises(ValueError, match="eps"):
        Adam(p, eps=0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="params"):
        Adam(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="params"):
        Adam(np.zeros((3, 2)))
    opt = Adam(p, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    with pytest.raises(ValueError, match="beta2"):
        opt.beta2 = 1.0
    assert opt.lr == 0.1 and opt.betas == (0.9, 0.999)
    opt.lr = 0.5
    assert opt.lr == 0.5


def test_rejected_step_changes_nothing(backend):
    params = np.array([1.0, 2.0])
    opt = Adam(params, lr=0.1)
    opt.step(np.array([1.0, 1.0]))
    snapshot = params.copy(), opt.state.copy()
    for bad in (np.array([np.nan, 1.0]), np.array([1.0]), np.array([[1.0, 1.0]])):
        with pytest.raises(ValueError, match="grad"):
            opt.step(bad)
    np.testing.assert_array_equal(params, snapshot[0])
    np.testing.assert_array_equal(opt.state, snapshot[1])
    assert opt.steps == 1
