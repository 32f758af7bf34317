"""Policy-gradient kernels: returns, GAE, gradients, critics, importance weights, validation."""
import numpy as np
import pytest

from metarl_fast import pg
from metarl_fast.optim import SGD, Adam
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy


def _returns_by_definition(rewards, dones, gamma, bootstrap=0.0):
    """sum_k gamma^(k-t) r_k until the end of the episode (plus the discounted bootstrap)."""
    n = len(rewards)
    out = np.zeros(n)
    for t in range(n):
        g, k, disc = 0.0, t, 1.0
        while True:
            g += disc * rewards[k]
            if dones[k]:
                break
            if k == n - 1:
                g += disc * gamma * bootstrap
                break
            k += 1
            disc *= gamma
        out[t] = g
    return out


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _surrogate(logits, actions, advantages, weights, entropy_coef):
    """mean_i w_i A_i log pi(a_i) + c mean_i H(pi_i), the objective policy_gradient differentiates."""
    lp = _log_softmax(logits)
    rows = np.arange(len(actions))
    h = -(np.exp(lp) * lp).sum(axis=1)
    return np.mean(weights * advantages * lp[rows, actions]) + entropy_coef * np.mean(h)


def _central_diff(f, x, h=1e-6):
    g = np.zeros_like(x)
    for k in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[k] += h
        xm[k] -= h
        g[k] = (f(xp) - f(xm)) / (2 * h)
    return g


# --------------------------------------------------------------------------- returns / GAE

def test_discounted_returns_match_definition(backend, rng):
    rewards = rng.normal(size=40)
    dones = rng.random(40) < 0.2
    for gamma, bootstrap in [(0.9, None), (1.0, 2.5), (0.0, 1.0), (0.97, -3.0)]:
        got = pg.discounted_returns(rewards, dones, gamma, bootstrap)
        want = _returns_by_definition(rewards, dones, gamma, 0.0 if bootstrap is None else bootstrap)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,p_done", [(300, 0.0), (300, 0.003), (2000, 0.05)])
def test_returns_and_gae_long_and_short_episodes(backend, n, p_done):
    rng = np.random.default_rng(n)
    rewards, values = rng.normal(size=n), rng.normal(size=n)
    dones = rng.random(n) < p_done
    want = _returns_by_definition(rewards, dones, 0.99, 0.5)
    np.testing.assert_allclose(pg.discounted_returns(rewards, dones, 0.99, 0.5), want, rtol=1e-9,
                               atol=1e-9)
    next_values = np.append(values[1:], 0.5)
    np.testing.assert_allclose(pg.gae(rewards, values, next_values, dones, 0.99, 1.0),
                               want - values, rtol=1e-8, atol=1e-8)


def test_discounted_returns_restart_at_done(backend):
    rewards = np.array([1.0, 1.0, 1.0, 1.0])
    dones = np.array([False, True, False, True])
    np.testing.assert_array_equal(pg.discounted_returns(rewards, dones, 0.5), [1.5, 1.0, 1.5, 1.0])
    # a cut-short tail takes the bootstrap value, a finished one ignores it
    np.testing.assert_array_equal(pg.discounted_returns(rewards, dones, 0.5, bootstrap=10.0),
                                  [1.5, 1.0, 1.5, 1.0])
    np.testing.assert_array_equal(pg.discounted_returns(rewards[:3], dones[:3], 0.5, bootstrap=8.0),
                                  [1.5, 1.0, 5.0])


def test_discounted_returns_dtype_and_out(backend):
    r32 = np.ones(5, dtype=np.float32)
    res = pg.discounted_returns(r32, np.zeros(5, bool), 0.5)
    assert res.dtype == np.float32
    out = np.empty(5, dtype=np.float32)
    assert pg.discounted_returns(r32, np.zeros(5, bool), 0.5, out=out) is out
    np.testing.assert_allclose(out, res)
    assert pg.discounted_returns(np.zeros(0), np.zeros(0, bool), 0.9).shape == (0,)


def test_gae_limits(backend, rng):
    n = 30
    rewards, values, next_values = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    dones = rng.random(n) < 0.25
    gamma = 0.9
    # lam = 0: the TD(0) error
    td = rewards + gamma * np.where(dones, 0.0, next_values) - values
    np.testing.assert_allclose(pg.gae(rewards, values, next_values, dones, gamma, 0.0), td,
                               rtol=1e-12, atol=1e-12)
    # lam = 1 with consistent values (next_values[i] = values[i+1] inside episodes): G - V,
    # bootstrapped with next_values at the tail
    next_values = np.append(values[1:], 0.7)
    want = _returns_by_definition(rewards, dones, gamma, 0.7) - values
    np.testing.assert_allclose(pg.gae(rewards, values, next_values, dones, gamma, 1.0), want,
                               rtol=1e-10, atol=1e-10)


def test_gae_matches_lambda_recursion(backend, rng):
    n = 25
    r, v, nv = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    d = rng.random(n) < 0.2
    gamma, lam = 0.95, 0.7
    delta = r + gamma * np.where(d, 0.0, nv) - v
    want = np.zeros(n)
    for t in range(n):  # A_t = sum_k (gamma lam)^(k-t) delta_k within the episode
        acc, k, c = 0.0, t, 1.0
        while True:
            acc += c * delta[k]
            if d[k] or k == n - 1:
                break
            k += 1
            c *= gamma * lam
        want[t] = acc
    np.testing.assert_allclose(pg.gae(r, v, nv, d, gamma, lam), want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("entropy_coef", [0.0, 0.3])
@pytest.mark.parametrize("with_weights", [False, True])
def test_tabular_gradient_is_derivative_of_surrogate(backend, rng, entropy_coef, with_weights):
    S, A, B = 4, 3, 50
    policy = TabularSoftmaxPolicy(S, A, theta=rng.normal(size=(S, A)))
    states, actions = rng.integers(0, S, B), rng.integers(0, A, B)
    adv = rng.normal(size=B)
    w = rng.random(B) if with_weights else None
    grad = pg.policy_gradient(policy, states, actions, adv, weights=w, entropy_coef=entropy_coef)
    assert grad.shape == policy.params.shape and grad.dtype == np.float64
    ww = np.ones(B) if w is None else w
    fd = _central_diff(lambda th: _surrogate(th.reshape(S, A)[states], actions, adv, ww,
                                             entropy_coef), policy.params.copy())
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # untouched states get exactly zero
    unseen = np.setdiff1d(np.arange(S), states)
    assert np.all(grad.reshape(S, A)[unseen] == 0.0)


@pytest.mark.parametrize("entropy_coef", [0.0, 0.2])
def test_linear_gradient_is_derivative_of_surrogate(backend, rng, entropy_coef):
    F, A, B = 5, 4, 40
    policy = LinearSoftmaxPolicy(F, A, W=rng.normal(size=(F, A)), b=rng.normal(size=A))
    x, actions = rng.normal(size=(B, F)), rng.integers(0, A, B)
    adv, w = rng.normal(size=B), rng.random(B)
    grad = pg.policy_gradient(policy, x, actions, adv, weights=w, entropy_coef=entropy_coef)

    def objective(p):
        W, b = p[:F * A].reshape(F, A), p[F * A:]
        return _surrogate(x @ W + b, actions, adv, w, entropy_coef)

    np.testing.assert_allclose(grad, _central_diff(objective, policy.params.copy()),
                               rtol=1e-6, atol=1e-8)


def test_linear_gradient_formula(backend, rng):
    F, A, B = 3, 5, 20
    policy = LinearSoftmaxPolicy(F, A, W=rng.normal(size=(F, A)), b=rng.normal(size=A))
    x, actions, adv = rng.normal(size=(B, F)), rng.integers(0, A, B), rng.normal(size=B)
    grad = pg.policy_gradient(policy, x, actions, adv)
    probs = np.exp(_log_softmax(x @ policy.W + policy.b))
    G = (np.eye(A)[actions] - probs) * adv[:, None] / B
    np.testing.assert_allclose(grad[:F * A].reshape(F, A), x.T @ G, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grad[F * A:], G.sum(axis=0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_dtype_and_empty_batch(backend, rng, dtype):
    policy = TabularSoftmaxPolicy(3, 2, dtype=dtype)
    g = pg.policy_gradient(policy, np.array([0, 2]), np.array([1, 0]), np.array([1.0, -1.0]))
    assert g.dtype == dtype
    assert np.all(pg.policy_gradient(policy, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                     np.zeros(0)) == 0)
    lin = LinearSoftmaxPolicy(2, 3, dtype=dtype)
    g = pg.policy_gradient(lin, rng.normal(size=(4, 2)), np.array([0, 1, 2, 0]), np.ones(4))
    assert g.dtype == dtype and g.shape == lin.params.shape


def test_gradient_out_argument(backend, rng):
    policy = TabularSoftmaxPolicy(3, 2)
    out = np.full(6, np.nan)
    res = pg.policy_gradient(policy, np.array([0, 1]), np.array([1, 1]), np.array([1.0, 2.0]), out=out)
    assert res is out
    # uniform policy over 2 actions: sample i adds A_i (onehot(1) - 1/2) / 2 to its state's row
    np.testing.assert_array_equal(out, [-0.25, 0.25, -0.5, 0.5, 0.0, 0.0])


def test_entropy_gradient_pushes_towards_uniform(backend):
    policy = TabularSoftmaxPolicy(1, 3, theta=[[2.0, 0.0, -1.0]])
    g = pg.policy_gradient(policy, np.zeros(5, np.int64), np.zeros(5, np.int64), np.zeros(5),
                           entropy_coef=1.0)
    assert g[0] < 0 < g[2]  # lower the favoured logit, raise the unlikely one
    uniform = TabularSoftmaxPolicy(1, 3)
    g = pg.policy_gradient(uniform, np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2),
                           entropy_coef=1.0)
    np.testing.assert_allclose(g, 0.0, atol=1e-15)


def test_clip_grad_norm(backend):
    g = np.array([3.0, 4.0])
    assert pg.clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, np.array([0.6, 0.8]) * 5.0 / (5.0 + 1e-6))
    g = np.array([0.3, 0.4])
    assert pg.clip_grad_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g, [0.3, 0.4])  # already short enough: untouched
    g32 = np.array([30.0, 40.0], dtype=np.float32)
    pg.clip_grad_norm(g32, None)
    np.testing.assert_array_equal(g32, [30.0, 40.0])
    pg.clip_grad_norm(g32, 5.0)
    assert g32.dtype == np.float32 and np.linalg.norm(g32) == pytest.approx(5.0, rel=1e-5)


@pytest.mark.parametrize("opt_factory", [lambda p: SGD(p, lr=0.1, momentum=0.9),
                                         lambda p: SGD(p, lr=0.1, momentum=0.5, nesterov=True),
                                         lambda p: Adam(p, lr=0.05)])
@pytest.mark.parametrize("max_norm", [None, 0.05])
def test_fused_step_equals_gradient_then_step(backend, rng, opt_factory, max_norm):
    S, A, B = 5, 3, 64
    pa = TabularSoftmaxPolicy(S, A, theta=rng.normal(size=(S, A)))
    pb = pa.copy()
    oa, ob = opt_factory(pa), opt_factory(pb)
    for _ in range(3):
        s, a, adv = rng.integers(0, S, B), rng.integers(0, A, B), rng.normal(size=B)
        w = rng.random(B)
        norm = pg.policy_gradient_step(pa, oa, s, a, adv, weights=w, entropy_coef=0.1,
                                       max_grad_norm=max_norm)
        g = pg.policy_gradient(pb, s, a, adv, weights=w, entropy_coef=0.1)
        assert norm == pytest.approx(np.linalg.norm(g), rel=1e-12)
        pg.clip_grad_norm(g, max_norm)
        ob.step(-g)
        np.testing.assert_allclose(pa.params, pb.params, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(oa.state, ob.state, rtol=1e-12, atol=1e-14)
    assert oa.steps == ob.steps == 3


def test_fused_step_linear_ascends_surrogate(backend, rng):
    F, A, B = 6, 4, 128
    policy = LinearSoftmaxPolicy(F, A)
    opt = Adam(policy, lr=0.05)
    x, actions, adv = rng.normal(size=(B, F)), rng.integers(0, A, B), rng.normal(size=B)
    objective = lambda: _surrogate(x @ policy.W + policy.b, actions, adv, np.ones(B), 0.0)
    before = objective()
    for _ in range(20):
        pg.policy_gradient_step(policy, opt, x, actions, adv)
    assert objective() > before + 0.05


# --------------------------------------------------------------------------- critics

def test_tabular_td_update(backend):
    values = np.array([0.0, 1.0, 2.0])
    states, next_states = np.array([0, 1, 0]), np.array([1, 2, 2])
    rewards, dones = np.array([1.0, 0.5, -1.0]), np.array([False, True, False])
    td = pg.active.pg.tabular_td_update(values, states, rewards, next_states, dones, 0.9, 0.3)
    want = np.array([1.0 + 0.9 * 1.0 - 0.0, 0.5 - 1.0, -1.0 + 0.9 * 2.0 - 0.0])
    np.testing.assert_allclose(td, want)
    np.testing.assert_allclose(values, [0.0 + 0.3 * (want[0] + want[2]) / 3, 1.0 + 0.3 * want[1] / 3,
                                        2.0])


def test_tabular_critic_learns_chain_values(backend):
    # 3-state chain 0 -> 1 -> 2 -> end, reward 1 per step, gamma 0.5: V = [1.75, 1.5, 1]
    critic = pg.TabularCritic(3, lr=0.5)
    states, next_states = np.array([0, 1, 2]), np.array([1, 2, 0])
    for _ in range(300):
        critic.td_update(states, np.ones(3), next_states, np.array([0, 0, 1]), 0.5)
    np.testing.assert_allclose(critic.values, [1.75, 1.5, 1.0], rtol=1e-6)


def test_linear_critic_learns_chain_values(backend):
    critic = pg.LinearCritic(3, lr=0.5)
    eye = np.eye(3)
    for _ in range(400):
        critic.td_update(eye, np.ones(3), eye[[1, 2, 0]], np.array([0, 0, 1]), 0.5)
    np.testing.assert_allclose(critic.value(eye), [1.75, 1.5, 1.0], rtol=1e-5)


def test_critic_fit_returns(backend):
    critic = pg.TabularCritic(2, lr=1.0)
    err = critic.fit_returns(np.array([0, 0, 1]), np.array([1.0, 3.0, 5.0]))
    np.testing.assert_allclose(err, [1.0, 3.0, 5.0])
    np.testing.assert_allclose(critic.values, [4.0 / 3.0, 5.0 / 3.0])


# --------------------------------------------------------------------------- importance weights

def test_truncated_importance_weights(backend):
    lp = np.log(np.array([0.5, 0.2, 0.9]))
    lb = np.log(np.array([0.25, 0.4, 0.3]))
    np.testing.assert_allclose(pg.truncated_importance_weights(lp, lb, 1.0), [1.0, 0.5, 1.0])
    np.testing.assert_allclose(pg.truncated_importance_weights(lp, lb, None), [2.0, 0.5, 3.0])
    np.testing.assert_allclose(pg.truncated_importance_weights(lp, lb, 2.5), [2.0, 0.5, 2.5])


def test_episode_helpers():
    dones = np.array([0, 0, 1, 1, 0, 1, 0], dtype=bool)
    np.testing.assert_array_equal(pg.episode_time_steps(dones), [0, 1, 2, 0, 0, 1, 0])
    assert pg.count_episodes(dones) == 4
    assert pg.count_episodes(dones[:6]) == 3
    assert pg.count_episodes(np.zeros(0, bool)) == 0


def test_fused_step_sees_hyper_parameter_changes(backend, rng):
    pa = TabularSoftmaxPolicy(3, 2, theta=rng.normal(size=(3, 2)))
    pb = pa.copy()
    oa, ob = Adam(pa, lr=0.01), Adam(pb, lr=0.01)
    s, a, adv = rng.integers(0, 3, 16), rng.integers(0, 2, 16), rng.normal(size=16)
    for lr, betas in [(0.01, (0.9, 0.999)), (0.3, (0.5, 0.9)), (0.05, (0.0, 0.99))]:
        oa.lr, (oa.beta1, oa.beta2) = lr, betas
        ob.lr, (ob.beta1, ob.beta2) = lr, betas
        pg.policy_gradient_step(pa, oa, s, a, adv)
        ob.step(-pg.policy_gradient(pb, s, a, adv))
        np.testing.assert_allclose(pa.params, pb.params, rtol=1e-13, atol=1e-15)
