"""Estimators against exact gradients: REINFORCE, actor-critic, off-policy; seed example training."""
import numpy as np
import pytest

from metarl_fast import exact, pg
from metarl_fast.mdp import MDPModel
from metarl_fast.optim import Adam
from metarl_fast.policy import TabularSoftmaxPolicy

N_EPISODES = 12000
N_GROUPS = 40


def _group_estimates(episodes, estimator):
    """Run ``estimator(slice)`` on N_GROUPS disjoint groups of whole episodes; (N_GROUPS, P)."""
    n = episodes.episode_ids[-1] + 1
    bounds = np.searchsorted(episodes.episode_ids, np.linspace(0, n, N_GROUPS + 1).astype(int))
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out.append(estimator(slice(lo, hi)))
    return np.array(out)


def _assert_mean_matches(estimates, exact_grad, n_se=4.0):
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    err = np.abs(mean - exact_grad.reshape(-1))
    assert np.all(err <= n_se * se + 1e-9), (err / np.maximum(se, 1e-300)).max()


MDP_CASES = [(0, 3, 2, 5, 1.0, 0), (1, 5, 3, 8, 0.9, 0), (2, 6, 4, 6, 0.95, 1)]


@pytest.mark.parametrize("case", MDP_CASES)
def test_reinforce_is_unbiased_and_baseline_reduces_variance(backend, case):
    seed, S, A, T, gamma, n_term = case
    mdp = exact.random_mdp(np.random.default_rng(seed), S, A, T, gamma, n_term)
    theta = np.random.default_rng(50 + seed).normal(size=(S, A))
    policy = TabularSoftmaxPolicy(S, A, theta=theta)
    ep = exact.sample_episodes(mdp, theta, N_EPISODES, np.random.default_rng(60 + seed))
    truth = exact.policy_gradient_exact(mdp, theta)

    def estimator(baseline):
        return lambda sl: pg.reinforce_gradient(
            policy, ep.states[sl], ep.actions[sl], ep.rewards[sl], ep.dones[sl], gamma,
            baseline=baseline, discount_states=True, per_episode=True).grad

    plain = _group_estimates(ep, estimator(None))
    leave_one_out = _group_estimates(ep, estimator("leave-one-out"))
    _assert_mean_matches(plain, truth)
    _assert_mean_matches(leave_one_out, truth)
    # rewards are in [0, 1): centring the returns lowers the total variance
    assert leave_one_out.var(axis=0).sum() < plain.var(axis=0).sum()


def test_reinforce_learned_baseline(backend):
    mdp = exact.random_mdp(np.random.default_rng(1), 5, 3, 8, 0.9)
    theta = np.random.default_rng(2).normal(size=(5, 3))
    policy = TabularSoftmaxPolicy(5, 3, theta=theta)
    ep = exact.sample_episodes(mdp, theta, N_EPISODES, np.random.default_rng(3))
    critic = pg.TabularCritic(5, lr=0.5)
    for _ in range(30):  # warm the state-value baseline on the first episodes
        pg.reinforce_gradient(policy, ep.states[:2000], ep.actions[:2000], ep.rewards[:2000],
                              ep.dones[:2000], 0.9, baseline=critic)
    frozen = critic.values.copy()

    def estimator(sl):
        critic.values[...] = frozen  # a baseline independent of the group's own actions
        return pg.reinforce_gradient(policy, ep.states[sl], ep.actions[sl], ep.rewards[sl],
                                     ep.dones[sl], 0.9, baseline=critic, discount_states=True,
                                     per_episode=True).grad

    learned = _group_estimates(ep, estimator)
    _assert_mean_matches(learned, exact.policy_gradient_exact(mdp, theta))
    plain = _group_estimates(ep, lambda sl: pg.reinforce_gradient(
        policy, ep.states[sl], ep.actions[sl], ep.rewards[sl], ep.dones[sl], 0.9, baseline=None,
        discount_states=True, per_episode=True).grad)
    assert learned.var(axis=0).sum() < plain.var(axis=0).sum()


def test_reinforce_baseline_forms(backend, rng):
    policy = TabularSoftmaxPolicy(3, 2, theta=rng.normal(size=(3, 2)))
    s, a = rng.integers(0, 3, 12), rng.integers(0, 2, 12)
    r, d = rng.random(12), np.arange(12) % 4 == 3
    g = pg.discounted_returns(r, d, 0.9)
    res = pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline=0.5)
    np.testing.assert_allclose(res.advantages, g - 0.5)
    np.testing.assert_allclose(res.grad, pg.policy_gradient(policy, s, a, g - 0.5))
    res = pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline=g)
    np.testing.assert_allclose(res.grad, 0.0, atol=1e-15)
    res = pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline="mean")
    np.testing.assert_allclose(res.advantages, g - g.mean())
    # the default: at step t, the mean of G_t over the other episodes (three of length 4)
    by_step = g.reshape(3, 4)
    loo = (by_step.sum(axis=0) - by_step) / 2
    res = pg.reinforce_gradient(policy, s, a, r, d, 0.9)
    np.testing.assert_allclose(res.advantages, (by_step - loo).ravel(), rtol=1e-12)
    with pytest.raises(ValueError, match="baseline"):
        pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline="median")
    with pytest.raises(ValueError, match="baseline has length"):
        pg.reinforce_gradient(policy, s, a, r, d, 0.9, baseline=np.zeros(3))


# --------------------------------------------------------------------------- actor-critic

def test_actor_critic_uses_td_errors_then_trains_critic(backend, rng):
    policy = TabularSoftmaxPolicy(4, 3, theta=rng.normal(size=(4, 3)))
    critic = pg.TabularCritic(4, lr=0.2, values=rng.normal(size=4))
    v0 = critic.values.copy()
    s, a, ns = rng.integers(0, 4, 20), rng.integers(0, 3, 20), rng.integers(0, 4, 20)
    r, d = rng.normal(size=20), rng.random(20) < 0.3
    td = r + 0.9 * np.where(d, 0.0, v0[ns]) - v0[s]
    res = pg.actor_critic_gradient(policy, critic, s, a, r, ns, d, 0.9)
    np.testing.assert_allclose(res.advantages, td, rtol=1e-12)
    np.testing.assert_allclose(res.grad, pg.policy_gradient(policy, s, a, td), rtol=1e-12)
    assert not np.array_equal(critic.values, v0)
    frozen = critic.values.copy()
    pg.actor_critic_gradient(policy, critic, s, a, r, ns, d, 0.9, update_critic=False)
    np.testing.assert_array_equal(critic.values, frozen)


def test_actor_critic_with_exact_values_is_unbiased_for_one_step_task(backend):
    # horizon 1: the TD(0) advantage with V = 0 is the reward, and the estimator is exact in mean
    mdp = exact.random_mdp(np.random.default_rng(4), 4, 3, 1, 1.0)
    theta = np.random.default_rng(5).normal(size=(4, 3))
    policy = TabularSoftmaxPolicy(4, 3, theta=theta)
    ep = exact.sample_episodes(mdp, theta, N_EPISODES, np.random.default_rng(6))
    critic = pg.TabularCritic(4, lr=0.0)
    est = _group_estimates(ep, lambda sl: pg.actor_critic_gradient(
        policy, critic, ep.states[sl], ep.actions[sl], ep.rewards[sl], ep.next_states[sl],
        ep.dones[sl], 1.0).grad)
    _assert_mean_matches(est, exact.policy_gradient_exact(mdp, theta))


def _seed_example(horizon=8, gamma=0.99):
    """The seed's task: 4 states in a chain s -> s+1 (mod 4); one of 2 actions is rewarded."""
    rewarded = np.array([1, 0, 0, 1])
    P = np.zeros((4, 2, 4))
    for s in range(4):
        P[s, :, (s + 1) % 4] = 1.0
    R = np.zeros((4, 2))
    R[np.arange(4), rewarded] = 1.0
    return MDPModel(P=P, R=R, start=np.full(4, 0.25), horizon=horizon, gamma=gamma), rewarded


def test_actor_critic_learns_seed_example(backend):
    mdp, rewarded = _seed_example()
    policy = TabularSoftmaxPolicy(4, 2)
    critic = pg.TabularCritic(4, lr=0.5)
    opt = Adam(policy, lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(150):
        ep = exact.sample_episodes(mdp, policy.theta, 8, rng)
        pg.actor_critic_gradient(policy, critic, ep.states, ep.actions, ep.rewards,
                                 ep.next_states, ep.dones, mdp.gamma, optimizer=opt)
    np.testing.assert_array_equal(policy.theta.argmax(axis=1), rewarded)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reinforce_adam_converges_on_seed_example(backend, dtype):
    mdp, rewarded = _seed_example()
    policy = TabularSoftmaxPolicy(4, 2, dtype=dtype)
    opt = Adam(policy, lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ep = exact.sample_episodes(mdp, policy.theta, 8, rng)  # the seed's batch: 8 x 8 steps
        pg.reinforce_gradient(policy, ep.states, ep.actions, ep.rewards, ep.dones, mdp.gamma,
                              baseline="mean", optimizer=opt)
    np.testing.assert_array_equal(policy.theta.argmax(axis=1), rewarded)
    probs = exact.softmax_policy(policy.theta)[np.arange(4), rewarded]
    assert np.all(probs > 0.9)
    best = mdp.start @ exact.optimal_value(mdp)[0][0]
    assert exact.policy_value(mdp, policy.theta) > 0.9 * best


# --------------------------------------------------------------------------- off-policy

def test_off_policy_with_behaviour_equal_to_policy_is_on_policy(backend, rng):
    policy = TabularSoftmaxPolicy(4, 3, theta=rng.normal(size=(4, 3)))
    s, a, adv = rng.integers(0, 4, 50), rng.integers(0, 3, 50), rng.normal(size=50)
    behaviour = policy.log_prob(s, a)
    res = pg.off_policy_gradient(policy, s, a, adv, behaviour, rho_bar=1.0)
    np.testing.assert_allclose(res.weights, 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.grad, pg.policy_gradient(policy, s, a, adv), rtol=1e-12,
                               atol=1e-15)


def _behaviour(theta, eps, seed=123):
    return theta + eps * np.random.default_rng(seed).normal(size=theta.shape)


@pytest.mark.parametrize("case", MDP_CASES[:2])
def test_per_decision_importance_sampling_is_unbiased(backend, case):
    seed, S, A, T, gamma, n_term = case
    mdp = exact.random_mdp(np.random.default_rng(seed), S, A, T, gamma, n_term)
    theta = np.random.default_rng(70 + seed).normal(size=(S, A))
    mu_theta = _behaviour(theta, 0.5)
    policy = TabularSoftmaxPolicy(S, A, theta=theta)
    ep = exact.sample_episodes(mdp, mu_theta, N_EPISODES, np.random.default_rng(80 + seed))
    est = _group_estimates(ep, lambda sl: pg.per_decision_off_policy_gradient(
        policy, ep.states[sl], ep.actions[sl], ep.rewards[sl], ep.dones[sl], ep.log_probs[sl],
        gamma).grad)
    _assert_mean_matches(est, exact.policy_gradient_exact(mdp, theta))


def _truncated_expectation(mdp, theta, mu_theta, rho_bar):
    """E_mu of the single-step truncated estimator with A_t = return-to-go under mu (gamma = 1),
    per episode: sum_t sum_s d^mu_t(s) sum_a mu(a|s) min(rho_bar, pi/mu) Q^mu_t(s,a) (e_a - pi_s)."""
    pi, mu = exact.softmax_policy(theta), exact.softmax_policy(mu_theta)
    Q_mu, _ = exact.evaluate_policy(mdp, mu)
    d_mu = exact.state_distributions(mdp, mu)
    w = np.minimum(rho_bar, pi / mu)
    grad = np.zeros_like(theta)
    S, A = theta.shape
    for a in range(A):
        coef = np.einsum("ts,s,s,ts->s", d_mu, mu[:, a], w[:, a], Q_mu[:, :, a])
        grad += coef[:, None] * (np.eye(A)[a][None, :] - pi)
    return grad


def test_truncated_off_policy_estimator_mean_and_vanishing_bias(backend):
    mdp = exact.random_mdp(np.random.default_rng(3), 4, 3, 6, 1.0)
    theta = np.random.default_rng(4).normal(size=(4, 3))
    policy = TabularSoftmaxPolicy(4, 3, theta=theta)
    truth = exact.policy_gradient_exact(mdp, theta)
    # 1) the implementation's sample mean matches its analytic expectation (replay-style batch)
    mu_theta = _behaviour(theta, 1.0)
    ep = exact.sample_episodes(mdp, mu_theta, N_EPISODES, np.random.default_rng(5))

    def estimator(sl):
        returns = pg.discounted_returns(ep.rewards[sl], ep.dones[sl], 1.0)
        res = pg.off_policy_gradient(policy, ep.states[sl], ep.actions[sl], returns,
                                     ep.log_probs[sl], rho_bar=1.0)
        return res.grad * (returns.shape[0] / pg.count_episodes(ep.dones[sl]))

    _assert_mean_matches(_group_estimates(ep, estimator),
                         _truncated_expectation(mdp, theta, mu_theta, 1.0))
    # 2) it is biased for mu != pi, and the bias vanishes as mu -> pi
    biases = [np.linalg.norm(_truncated_expectation(mdp, theta, _behaviour(theta, eps), 1.0) - truth)
              for eps in (1.0, 0.3, 0.1, 0.03, 0.0)]
    assert biases[0] > 1e-3
    assert all(b1 > b2 for b1, b2 in zip(biases, biases[1:]))
    assert biases[-1] < 1e-12


def test_off_policy_actor_critic_from_replay_learns_seed_example(backend):
    from metarl_fast.replay import ReplayBuffer

    mdp, rewarded = _seed_example()
    policy = TabularSoftmaxPolicy(4, 2)
    critic = pg.TabularCritic(4, lr=0.5)
    opt = Adam(policy, lr=0.05)
    buffer = ReplayBuffer(512)
    rng = np.random.default_rng(0)
    for it in range(200):
        behaviour = policy.theta.copy()  # the policy that collects is a little stale in replay
        ep = exact.sample_episodes(mdp, behaviour, 4, rng)
        buffer.add_batch(ep.states, ep.actions, ep.rewards, ep.next_states, ep.dones,
                         logp=ep.log_probs)
        batch = buffer.sample(64, rng)
        td = critic.td_update(batch.obs, batch.reward, batch.next_obs, batch.terminated, mdp.gamma)
        log_pi = policy.log_prob(batch.obs, batch.action)
        res = pg.off_policy_gradient(policy, batch.obs, batch.action, td, batch.logp, rho_bar=1.0,
                                     optimizer=opt)
        np.testing.assert_allclose(res.weights, np.minimum(1.0, np.exp(log_pi - batch.logp)),
                                   rtol=1e-12)
    np.testing.assert_array_equal(policy.theta.argmax(axis=1), rewarded)


def test_reinforce_linear_policy_is_unbiased(backend):
    from metarl_fast.policy import LinearSoftmaxPolicy

    mdp = exact.random_mdp(np.random.default_rng(9), 5, 3, 7, 0.9)
    rng = np.random.default_rng(10)
    features = rng.normal(size=(5, 4))
    policy = LinearSoftmaxPolicy(4, 3, W=rng.normal(size=(4, 3)), b=rng.normal(size=3))
    logits = features @ policy.W + policy.b
    ep = exact.sample_episodes(mdp, logits, N_EPISODES, np.random.default_rng(11))
    est = _group_estimates(ep, lambda sl: pg.reinforce_gradient(
        policy, features[ep.states[sl]], ep.actions[sl], ep.rewards[sl], ep.dones[sl], 0.9,
        discount_states=True, per_episode=True).grad)
    _assert_mean_matches(est, exact.linear_policy_gradient_exact(mdp, features, policy.params))
