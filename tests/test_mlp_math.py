"""MLP softmax policy kernels against mathematics (finite differences, torch.autograd, the init
distribution, sampling frequencies), on each backend; and their argument checks."""
import numpy as np
import pytest

from metarl_fast import _backend
from metarl_fast.reference import mlp as ref

from conftest import BACKENDS

ACTS = ["tanh", "relu"]
SHAPES = [(3, (5, 4), 4), (2, (), 3), (4, (6,), 2)]


@pytest.fixture(params=BACKENDS)
def kern(request):
    """The mlp kernel module of each backend."""
    with _backend.use_backend(request.param):
        yield _backend.active.mlp


def _problem(obs_dim, hidden, n_actions, seed=0, n_rows=7, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = ref.mlp_init(obs_dim, hidden, n_actions, rng, dtype=dtype)
    params += rng.normal(scale=0.3, size=params.shape).astype(dtype)  # not only tiny weights
    obs = rng.normal(size=(n_rows, obs_dim)).astype(dtype)
    actions = rng.integers(0, n_actions, n_rows)
    coef = rng.normal(size=n_rows)
    v = rng.normal(size=params.shape[0])
    return params, obs, actions, coef, v


def _surrogate(kern, params, obs, hidden, act, actions, coef):
    logits = kern.mlp_logits(params, obs, hidden, act)
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float((coef * log_p[np.arange(len(actions)), actions]).sum())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_central_differences(kern, act, shape):
    obs_dim, hidden, n_actions = shape
    params, obs, actions, coef, v = _problem(obs_dim, hidden, n_actions)
    h = 1e-6
    fd = np.empty_like(params)
    for k in range(params.shape[0]):
        e = np.zeros_like(params)
        e[k] = h
        fd[k] = (_surrogate(kern, params + e, obs, hidden, act, actions, coef)
                 - _surrogate(kern, params - e, obs, hidden, act, actions, coef)) / (2 * h)
    grad = kern.mlp_policy_gradient(params, obs, hidden, act, actions, coef)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())
    # mlp_grad is the same product with dlogits given
    logits = kern.mlp_logits(params, obs, hidden, act)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlogits = (np.eye(n_actions)[actions] - p) * coef[:, None]
    np.testing.assert_allclose(kern.mlp_grad(params, obs, hidden, act, dlogits), grad,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_jvp_and_hvp_match_finite_differences(kern, act, shape):
    obs_dim, hidden, n_actions = shape
    params, obs, actions, coef, v = _problem(obs_dim, hidden, n_actions, seed=1)
    h = 1e-6
    jvp_fd = (kern.mlp_logits(params + h * v, obs, hidden, act)
              - kern.mlp_logits(params - h * v, obs, hidden, act)) / (2 * h)
    jvp = kern.mlp_jvp(params, obs, hidden, act, v)
    np.testing.assert_allclose(jvp, jvp_fd, rtol=1e-6, atol=1e-7 * np.abs(jvp_fd).max())
    hvp_fd = (kern.mlp_policy_gradient(params + h * v, obs, hidden, act, actions, coef)
              - kern.mlp_policy_gradient(params - h * v, obs, hidden, act, actions, coef)) / (2 * h)
    hvp = kern.mlp_hvp(params, obs, hidden, act, actions, coef, v)
    np.testing.assert_allclose(hvp, hvp_fd, rtol=1e-5, atol=1e-6 * np.abs(hvp_fd).max())


@pytest.mark.parametrize("act", ACTS)
def test_hessian_is_symmetric(kern, act):
    """u . H v = v . H u (a backward R-pass with a wrong or missing term breaks the symmetry)."""
    params, obs, actions, coef, v = _problem(3, (5, 4), 4, seed=2)
    u = np.random.default_rng(9).normal(size=params.shape[0])
    hv = kern.mlp_hvp(params, obs, (5, 4), act, actions, coef, v)
    hu = kern.mlp_hvp(params, obs, (5, 4), act, actions, coef, u)
    assert abs(u @ hv - v @ hu) <= 1e-10 * (abs(u @ hv) + 1e-12)


try:
    import torch
except ImportError:  # pragma: no cover
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: no autograd cross-check")


def _torch_logits(theta, obs, layers, act):
    a = torch.tensor(obs, dtype=torch.float64)
    for index, (w_off, b_off, n_in, n_out) in enumerate(layers):
        a = a @ theta[w_off:b_off].reshape(n_in, n_out) + theta[b_off:b_off + n_out]
        if index < len(layers) - 1:
            a = torch.tanh(a) if act == "tanh" else torch.relu(a)
    return a


@needs_torch
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES + [(4, (64, 64), 2)])
def test_logits_grad_jvp_hvp_match_torch_autograd(kern, act, shape):
    obs_dim, hidden, n_actions = shape
    params, obs, actions, coef, v = _problem(obs_dim, hidden, n_actions, seed=3, n_rows=33)
    layers, _ = ref.mlp_layout(obs_dim, hidden, n_actions)
    theta = torch.tensor(params, requires_grad=True)
    logits = _torch_logits(theta, obs, layers, act)
    f = (torch.tensor(coef) * torch.log_softmax(logits, 1)[torch.arange(len(actions)),
                                                          torch.tensor(actions)]).sum()
    (g,) = torch.autograd.grad(f, theta, create_graph=True)
    (hv,) = torch.autograd.grad(g @ torch.tensor(v), theta)
    jvp = torch.func.jvp(lambda t: _torch_logits(t, obs, layers, act), (theta.detach(),),
                         (torch.tensor(v),))[1]

    def close(ours, theirs):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * np.abs(theirs).max())

    close(kern.mlp_logits(params, obs, hidden, act), logits)
    close(kern.mlp_policy_gradient(params, obs, hidden, act, actions, coef), g)
    close(kern.mlp_hvp(params, obs, hidden, act, actions, coef, v), hv)
    close(kern.mlp_jvp(params, obs, hidden, act, v), jvp)


def test_episode_grads_are_per_episode_sums(kern):
    params, obs, actions, coef, _ = _problem(3, (5,), 3, seed=4, n_rows=150)
    episode = np.sort(np.random.default_rng(4).integers(0, 4, 150))
    episode[episode == 2] = 3  # episode 2 has no rows: a zero row
    grads = kern.mlp_episode_grads(params, obs, (5,), "relu", actions, coef, episode, 5)
    assert grads.shape == (5, params.shape[0])
    for e in range(5):
        rows = episode == e
        expect = (kern.mlp_policy_gradient(params, obs[rows], (5,), "relu", actions[rows], coef[rows])
                  if rows.any() else np.zeros(params.shape[0]))
        np.testing.assert_allclose(grads[e], expect, rtol=1e-12, atol=1e-14)
    assert not grads[2].any() and not grads[4].any()


def test_empty_hidden_is_a_linear_policy(kern):
    params, obs, actions, coef, _ = _problem(3, (), 4, seed=5)
    w, b = params[:12].reshape(3, 4), params[12:]
    np.testing.assert_allclose(kern.mlp_logits(params, obs, (), "tanh"), obs @ w + b, rtol=1e-13)
    assert np.array_equal(kern.mlp_logits(params, obs, (), "tanh"), kern.mlp_logits(params, obs, (), "relu"))


def test_relu_and_tanh_activations(kern):
    params, obs, *_ = _problem(2, (3,), 2, seed=6)
    w0, b0 = params[:6].reshape(2, 3), params[6:9]
    w1, b1 = params[9:15].reshape(3, 2), params[15:17]
    z = obs @ w0 + b0
    np.testing.assert_allclose(kern.mlp_logits(params, obs, (3,), "relu"), np.maximum(z, 0) @ w1 + b1,
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(kern.mlp_logits(params, obs, (3,), "tanh"), np.tanh(z) @ w1 + b1,
                               rtol=1e-13, atol=1e-15)


def test_relu_derivative_at_zero_is_zero(kern):
    """A hidden unit with pre-activation exactly 0 passes no gradient (relu'(0) = 0)."""
    params = np.zeros(ref.mlp_layout(1, (1,), 2)[1])  # W0 = b0 = 0: z = 0 for every obs
    params[2:4] = [1.0, -1.0]
    obs = np.array([[1.0], [2.0]])
    grad = kern.mlp_grad(params, obs, (1,), "relu", np.ones((2, 2)))
    assert grad[0] == 0.0 and grad[1] == 0.0  # dW0, db0


def test_tanh_twin_is_accurate_and_odd():
    z = np.concatenate([np.linspace(-40, 40, 100001), np.linspace(-0.3, 0.3, 10001),
                        [0.0, -0.0, 0.25, -0.25, 1e-300, 800.0, -800.0]])
    t = ref.tanh(z)
    assert np.all(np.abs(t - np.tanh(z)) <= 4 * np.spacing(np.abs(np.tanh(z))))
    assert np.array_equal(ref.tanh(-z), -t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64(kern, dtype):
    params, obs, actions, coef, v = _problem(3, (5, 4), 4, seed=7, dtype=dtype)
    p64, o64 = params.astype(np.float64), obs.astype(np.float64)
    logits = kern.mlp_logits(params, obs, (5, 4), "tanh")
    assert logits.dtype == dtype
    # computed in float64 from the same values, rounded once
    assert np.array_equal(logits, kern.mlp_logits(p64, o64, (5, 4), "tanh").astype(dtype))
    for result in (kern.mlp_policy_gradient(params, obs, (5, 4), "tanh", actions, coef),
                   kern.mlp_hvp(params, obs, (5, 4), "tanh", actions, coef, v),
                   kern.mlp_jvp(params, obs, (5, 4), "tanh", v),
                   kern.mlp_episode_grads(params, obs, (5, 4), "tanh", actions, coef, np.zeros(7, int), 1)):
        assert result.dtype == dtype
    np.testing.assert_allclose(kern.mlp_policy_gradient(params, obs, (5, 4), "tanh", actions, coef),
                               kern.mlp_policy_gradient(p64, o64, (5, 4), "tanh", actions, coef), rtol=1e-5,
                               atol=1e-6)


def test_init_follows_torch_linear_default(kern):
    layers, n_params = kern.mlp_layout(4, (64, 32), 3)
    assert n_params == 5 * 64 + 65 * 32 + 33 * 3
    assert [layer[2:] for layer in layers] == [(4, 64), (64, 32), (32, 3)]
    draws = np.stack([kern.mlp_init(4, (64, 32), 3, np.random.default_rng(s)) for s in range(200)])
    for w_off, b_off, n_in, n_out in layers:
        k = 1 / np.sqrt(n_in)
        block = draws[:, w_off:b_off + n_out]
        assert np.abs(block).max() <= k
        assert abs(block.mean()) < 5 * k / np.sqrt(3 * block.size)
        assert abs(block.var() / (k * k / 3) - 1) < 0.05
    # documented draw order: per layer W then b, float64 uniform(-k, k), then cast
    rng = np.random.default_rng(3)
    expect = np.concatenate([np.concatenate([rng.uniform(-1 / np.sqrt(i), 1 / np.sqrt(i), i * o),
                                             rng.uniform(-1 / np.sqrt(i), 1 / np.sqrt(i), o)])
                             for _, _, i, o in layers])
    assert np.array_equal(kern.mlp_init(4, (64, 32), 3, np.random.default_rng(3)), expect)
    assert np.array_equal(kern.mlp_init(4, (64, 32), 3, np.random.default_rng(3), dtype=np.float32),
                          expect.astype(np.float32))


def test_act_frequencies_follow_the_softmax(kern):
    params, obs, *_ = _problem(3, (8,), 4, seed=8, n_rows=1)
    logits = kern.mlp_logits(params, obs, (8,), "tanh")[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    n = 40000
    actions = kern.mlp_act(params, np.repeat(obs, n, axis=0), (8,), "tanh", np.random.default_rng(0))
    counts = np.bincount(actions, minlength=4)
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 20.0, (counts, n * p)  # 3 degrees of freedom: P(chi2 > 20) < 2e-4


def test_act_is_sample_actions_of_the_logits_one_draw_per_row(kern):
    from metarl_fast.reference.policy import sample_actions
    for dtype in (np.float64, np.float32):
        params, obs, *_ = _problem(3, (5, 4), 4, seed=9, n_rows=300, dtype=dtype)
        r1, r2 = np.random.default_rng(1), np.random.default_rng(1)
        got = kern.mlp_act(params, obs, (5, 4), "relu", r1)
        assert got.dtype == np.int64
        assert np.array_equal(got, sample_actions(kern.mlp_logits(params, obs, (5, 4), "relu"), r2))
        assert r1.bit_generator.state == r2.bit_generator.state
        r2.random(300)
        assert r1.random() == np.random.default_rng(1).random(301)[-1]


def test_out_arrays_are_filled_and_returned(kern):
    params, obs, actions, coef, v = _problem(3, (5,), 4, seed=10)
    out = np.empty((7, 4))
    assert kern.mlp_logits(params, obs, (5,), "tanh", out=out) is out
    assert np.array_equal(out, kern.mlp_logits(params, obs, (5,), "tanh"))
    g = np.empty(params.shape[0])
    assert kern.mlp_hvp(params, obs, (5,), "tanh", actions, coef, v, out=g) is g
    a = np.empty(7, dtype=np.int64)
    assert kern.mlp_act(params, obs, (5,), "tanh", np.random.default_rng(0), out=a) is a
    with pytest.raises(TypeError, match="out must have dtype float64"):
        kern.mlp_logits(params, obs, (5,), "tanh", out=np.empty((7, 4), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(7, 4\)"):
        kern.mlp_logits(params, obs, (5,), "tanh", out=np.empty((7, 5)))


def test_empty_batch(kern):
    params, obs, *_ = _problem(3, (5,), 4, seed=11, n_rows=0)
    rng = np.random.default_rng(0)
    assert kern.mlp_logits(params, obs, (5,), "tanh").shape == (0, 4)
    assert kern.mlp_act(params, obs, (5,), "tanh", rng).shape == (0,)
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn
    e = np.empty(0, dtype=np.int64)
    assert not kern.mlp_policy_gradient(params, obs, (5,), "tanh", e, np.empty(0)).any()
    assert not kern.mlp_episode_grads(params, obs, (5,), "tanh", e, np.empty(0), e, 2).any()


def test_overflowing_logits_raise_and_draw_nothing(kern):
    params, obs, *_ = _problem(3, (), 2, seed=12, n_rows=3)
    params[:] = 1e300
    rng = np.random.default_rng(0)
    with pytest.raises(FloatingPointError, match="logits overflow"):
        kern.mlp_act(params, obs * 1e10, (), "relu", rng)
    assert rng.random() == np.random.default_rng(0).random()
    with pytest.raises(FloatingPointError, match="logits overflow the float32 range|logits overflow"):
        kern.mlp_logits(np.full(8, 1e30, np.float32), np.full((1, 3), 1e30, np.float32), (), "relu")


@pytest.mark.parametrize("call, error, match", [
    (lambda k, p, o: k.mlp_logits(p.astype(np.int64), o, (5,), "tanh"), TypeError, "params must be float32 or float64"),
    (lambda k, p, o: k.mlp_logits(p, o.astype(np.float32), (5,), "tanh"), TypeError, "obs must have dtype float64"),
    (lambda k, p, o: k.mlp_logits(p[::2], o, (5,), "tanh"), ValueError, "params must be C-contiguous"),
    (lambda k, p, o: k.mlp_logits(p.reshape(1, -1), o, (5,), "tanh"), ValueError, "params must be 1-D"),
    (lambda k, p, o: k.mlp_logits(p[:-1], o, (5,), "tanh"), ValueError, "params has size 43"),
    (lambda k, p, o: k.mlp_logits(p, o[:, :2], (5,), "tanh"), ValueError, "params has size 44"),
    (lambda k, p, o: k.mlp_logits(p, o[0], (5,), "tanh"), ValueError, "obs must be 2-D"),
    (lambda k, p, o: k.mlp_logits(np.where(np.arange(44) == 3, np.nan, p), o, (5,), "tanh"), ValueError,
     "params contains NaN or inf"),
    (lambda k, p, o: k.mlp_logits(p, np.where(o > 0, np.inf, o), (5,), "tanh"), ValueError, "obs contains NaN or inf"),
    (lambda k, p, o: k.mlp_logits(p, o, (5,), "sigmoid"), ValueError, "activation must be one of"),
    (lambda k, p, o: k.mlp_logits(p, o, (5,), None), TypeError, "activation must be one of"),
    (lambda k, p, o: k.mlp_logits(p, o, 5, "tanh"), TypeError, "hidden must be a tuple of ints"),
    (lambda k, p, o: k.mlp_logits(p, o, (5.0,), "tanh"), TypeError, r"hidden\[0\] must be an int"),
    (lambda k, p, o: k.mlp_logits(p, o, (0,), "tanh"), ValueError, r"hidden\[0\] must be in 1..1024"),
    (lambda k, p, o: k.mlp_logits(p, o, (2**70,), "tanh"), ValueError, r"hidden\[0\] must be in 1..1024"),
    (lambda k, p, o: k.mlp_act(p, o, (5,), "tanh", 3), TypeError, "rng must be a numpy.random.Generator"),
    (lambda k, p, o: k.mlp_policy_gradient(p, o, (5,), "tanh", np.full(7, 4), np.ones(7)), ValueError,
     "actions out of range"),
    (lambda k, p, o: k.mlp_policy_gradient(p, o, (5,), "tanh", np.zeros(7, int), np.ones(6)), ValueError,
     "coef has length 6"),
    (lambda k, p, o: k.mlp_policy_gradient(p, o, (5,), "tanh", np.zeros(7, int), np.full(7, np.nan)), ValueError,
     "coef contains NaN or inf"),
    (lambda k, p, o: k.mlp_hvp(p, o, (5,), "tanh", np.zeros(7, int), np.ones(7), np.ones(43)), ValueError,
     "v has length 43"),
    (lambda k, p, o: k.mlp_jvp(p, o, (5,), "tanh", np.full(44, np.inf)), ValueError, "v contains NaN or inf"),
    (lambda k, p, o: k.mlp_grad(p, o, (5,), "tanh", np.ones((7, 3))), ValueError, r"dlogits must have shape \(7, 4\)"),
    (lambda k, p, o: k.mlp_grad(p, o, (5,), "tanh", np.full((7, 4), np.nan)), ValueError, "dlogits contains NaN"),
    (lambda k, p, o: k.mlp_episode_grads(p, o, (5,), "tanh", np.zeros(7, int), np.ones(7), np.arange(7)[::-1], 7),
     ValueError, "episode must be sorted"),
    (lambda k, p, o: k.mlp_episode_grads(p, o, (5,), "tanh", np.zeros(7, int), np.ones(7), np.arange(7), 3),
     ValueError, "episode out of range"),
    (lambda k, p, o: k.mlp_init(3, (5,), 4, np.random.default_rng(0), dtype=np.int32), TypeError,
     "dtype must be float32 or float64"),
    (lambda k, p, o: k.mlp_layout(0, (5,), 4), ValueError, "obs_dim must be >= 1"),
    (lambda k, p, o: k.mlp_layout(3, (5,), 4.0), TypeError, "n_actions must be an int"),
])
def test_bad_arguments_are_named(kern, call, error, match):
    params, obs, *_ = _problem(3, (5,), 4, seed=13)
    assert params.shape == (44,)
    with pytest.raises(error, match=match):
        call(kern, params, obs)
