"""MAML and friends with an MLP policy on continuous-observation tasks (issue 16).

The estimator is checked against mathematics where it breaks: on a two-step PointNavigation the
expected return is a finite sum over the 9 x 9 action sequences, so its gradient and Hessian are
known (central differences of the exact sum); the sampled gradient and Hessian-vector product
must be unbiased at the smallest numbers of episodes (N = 1, 2, 5), by many replications.
"""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.continuous_meta import ContinuousPolicyProblem
from metarl_fast.reference import mlp as mlp_spec

HIDDEN = (3,)


def two_step_tasks(n_tasks=2, seed=0):
    return mf.PointNavigation(horizon=2, step_size=0.3).sample(n_tasks, seed)


def exact_return(batch, t, theta, gamma):
    """Expected return of task t under parameters theta (P,): sum over every action sequence."""
    moves = batch.moves
    goal = batch.goals[t]
    p0 = np.zeros(2)
    logits0 = mlp_spec.mlp_logits(theta, p0[None], HIDDEN, "tanh")[0]
    pi0 = np.exp(logits0 - logits0.max())
    pi0 /= pi0.sum()
    p1 = p0 + moves  # (A, 2): the position after each first action
    r1 = -np.linalg.norm(p1 - goal, axis=1)
    logits1 = mlp_spec.mlp_logits(theta, np.ascontiguousarray(p1), HIDDEN, "tanh")
    pi1 = np.exp(logits1 - logits1.max(axis=1, keepdims=True))
    pi1 /= pi1.sum(axis=1, keepdims=True)
    p2 = p1[:, None, :] + moves[None, :, :]
    r2 = -np.linalg.norm(p2 - goal, axis=2)
    return float(pi0 @ (r1 + gamma * (pi1 * r2).sum(axis=1)))


def exact_grad(batch, t, theta, gamma, eps=1e-5):
    g = np.empty_like(theta)
    for j in range(theta.size):
        d = np.zeros_like(theta)
        d[j] = eps
        g[j] = (exact_return(batch, t, theta + d, gamma) - exact_return(batch, t, theta - d, gamma)) / (2 * eps)
    return g


def exact_hvp(batch, t, theta, gamma, v, eps=1e-4):
    return (exact_grad(batch, t, theta + eps * v, gamma) - exact_grad(batch, t, theta - eps * v, gamma)) / (2 * eps)


def replicate(problem, theta, v, n_rep, seed):
    rng = np.random.default_rng(seed)
    grads, hvps = [], []
    for _ in range(n_rep):
        data = problem.sample(theta, rng)
        grads.append(problem.grad(theta, data))
        hvps.append(problem.hvp(theta, data, v))
    return np.array(grads), np.array(hvps)


@pytest.mark.parametrize("n_episodes", [1, 2, 5])
def test_gradient_and_hessian_vector_product_are_unbiased_at_small_batches(n_episodes):
    batch = two_step_tasks()
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=HIDDEN, rng=3)
    gamma = 0.9
    rng = np.random.default_rng(4)
    theta = policy.params[None, :] + 0.5 * rng.normal(size=(2, policy.n_params))
    v = rng.normal(size=(2, policy.n_params))
    problem = ContinuousPolicyProblem(policy, batch, n_episodes, gamma)
    n_rep = 6000 // n_episodes
    grads, hvps = replicate(problem, theta, v, n_rep, seed=n_episodes)
    for t in range(2):
        want_g = exact_grad(batch, t, theta[t], gamma)
        want_h = exact_hvp(batch, t, theta[t], gamma, v[t])
        for got, want in ((grads[:, t], want_g), (hvps[:, t], want_h)):
            mean, se = got.mean(axis=0), got.std(axis=0) / np.sqrt(n_rep)
            z = (mean - want) / np.maximum(se, 1e-12)
            assert np.all(np.abs(z) < 5.0), (np.abs(z).max(), want, mean)
            # and the check has power: the bias a dropped term would leave is far outside
            assert np.abs(want).max() > 10 * se.max()


def test_hvp_without_the_score_function_term_is_biased():
    """The score-function term matters: the surrogate's Hessian alone misses the exact Hessian
    by many standard errors (so the unbiasedness test above can fail on that bug)."""
    batch = two_step_tasks(1)
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=HIDDEN, rng=3)
    theta = policy.params[None, :].copy()
    v = np.random.default_rng(5).normal(size=(1, policy.n_params))
    problem = ContinuousPolicyProblem(policy, batch, 5, 0.9)
    rng = np.random.default_rng(6)
    curv = []
    for _ in range(1500):
        data = problem.sample(theta, rng)
        traj = data["traj"]
        curv.append(mf._backend.active.mlp.mlp_hvp(theta[0], traj.obs, HIDDEN, "tanh", traj.action,
                                                   data["coef"], v[0]))
    curv = np.array(curv)
    want = exact_hvp(batch, 0, theta[0], 0.9, v[0])
    z = (curv.mean(axis=0) - want) / (curv.std(axis=0) / np.sqrt(len(curv)) + 1e-12)
    assert np.abs(z).max() > 8


def test_maml_meta_trains_an_mlp_on_point_navigation_and_resumes_bit_for_bit(tmp_path):
    """MAML with an MLP policy runs end to end on PointNavigation: the post-adaptation return
    improves over training, and a learner restored from its state continues identically."""
    family = mf.PointNavigation(horizon=10)
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=(16,), rng=0)
    learner = mf.MAML(policy, inner_lr=0.1, meta_lr=0.02, episodes_per_task=8)
    rng = np.random.default_rng(1)
    first = [learner.meta_step(family.sample(8, rng), rng)["post_return"] for _ in range(5)]
    state = learner.state_dict()
    twin = mf.MAML(mf.MLPSoftmaxPolicy(2, 9, hidden=(16,), rng=99), inner_lr=0.1, meta_lr=0.02,
                   episodes_per_task=8)
    twin.load_state_dict(state)
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    for _ in range(3):
        a = learner.meta_step(family.sample(8, rng_a), rng_a)
        b = twin.meta_step(family.sample(8, rng_b), rng_b)
        assert a["post_return"] == b["post_return"]
    np.testing.assert_array_equal(learner.policy.params, twin.policy.params)
    later = [learner.meta_step(family.sample(8, rng), rng)["post_return"] for _ in range(40)]
    assert np.mean(later[-10:]) > np.mean(first)


@pytest.mark.parametrize("cls", [mf.FOMAML, mf.Reptile, mf.MultiTask])
def test_first_order_learners_run_on_cartpoles(cls):
    family = mf.CartPoles(horizon=30)
    learner = cls(mf.MLPSoftmaxPolicy(4, 2, hidden=(8,), rng=0), inner_lr=0.05, episodes_per_task=4)
    before = learner.policy.params.copy()
    info = learner.meta_step(family.sample(4, 0), 1)
    assert np.isfinite(info["pre_return"]) and info["env_steps"] > 0
    assert not np.array_equal(before, learner.policy.params)


def test_an_mlp_learner_refuses_what_it_cannot_do():
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=(4,), rng=0)
    with pytest.raises(ValueError, match="estimator='sampled'"):
        mf.MAML(policy, estimator="exact")
    with pytest.raises(ValueError, match="inner_estimator='reinforce'"):
        mf.MAML(policy, inner_estimator="actor-critic")
    learner = mf.MAML(policy)
    with pytest.raises(TypeError, match="task_batch must be a PointNavigation or CartPoles batch"):
        learner.meta_step(mf.GridNavigation(size=3).sample(2, 0), 0)
    tabular = mf.MAML(mf.TabularSoftmaxPolicy(9, 9))
    with pytest.raises(TypeError, match="policy must be an MLPSoftmaxPolicy"):
        tabular.meta_step(mf.PointNavigation().sample(2, 0), 0)
    with pytest.raises(ValueError, match="the policy takes 4 observations"):
        ContinuousPolicyProblem(mf.MLPSoftmaxPolicy(4, 2, hidden=(4,), rng=0), two_step_tasks(), 2)
