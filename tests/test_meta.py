"""Meta-learners verified against mathematics: quadratic objectives, DP-exact MAML, estimator bias."""
import itertools

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import meta
from metarl_fast.tasks import TabularMDPs


def random_spd(rng, n, scale=1.0):
    m = rng.standard_normal((n, n))
    return scale * (m @ m.T / n + 0.5 * np.eye(n))


# ------------------------------------------------------------------ quadratic objectives
@pytest.mark.parametrize("inner_steps", [1, 2, 3])
@pytest.mark.parametrize("per_parameter_lr", [False, True])
def test_maml_gradient_equals_finite_differences_of_unrolled_inner_loop(inner_steps, per_parameter_lr):
    rng = np.random.default_rng(inner_steps)
    P = 4
    prob = meta.QuadraticProblem(random_spd(rng, P)[None], rng.standard_normal((1, P)))
    alpha = rng.uniform(0.05, 0.3, size=P) if per_parameter_lr else 0.2
    phi = rng.standard_normal(P)

    def unrolled(x):
        theta, _, _, _ = meta.adapt(prob, x, alpha, inner_steps, rng)
        return prob.value(theta)[0]

    h = 1e-6
    fd = np.array([(unrolled(phi + h * e) - unrolled(phi - h * e)) / (2 * h) for e in np.eye(P)])
    maml, lr_grad, _ = meta.meta_gradient(prob, phi, "maml", alpha, inner_steps, rng)
    np.testing.assert_allclose(maml[0], fd, rtol=1e-6, atol=1e-8)
    # the step-size gradient (Meta-SGD) too
    a0 = np.broadcast_to(alpha, (P,)).astype(float)

    def unrolled_alpha(a):
        theta, _, _, _ = meta.adapt(prob, phi, a, inner_steps, rng)
        return prob.value(theta)[0]

    fd_a = np.array([(unrolled_alpha(a0 + h * e) - unrolled_alpha(a0 - h * e)) / (2 * h) for e in np.eye(P)])
    np.testing.assert_allclose(lr_grad[0], fd_a, rtol=1e-6, atol=1e-8)
    theta_K, _, _, _ = meta.adapt(prob, phi, alpha, inner_steps, rng)
    fomaml, _, _ = meta.meta_gradient(prob, phi, "fomaml", alpha, inner_steps, rng)
    np.testing.assert_allclose(fomaml[0], prob.grad(theta_K, np.zeros(1, dtype=np.int64))[0])
    reptile, _, _ = meta.meta_gradient(prob, phi, "reptile", alpha, inner_steps, rng)
    np.testing.assert_allclose(reptile[0], theta_K[0] - phi)


class _Enumerated(meta.QuadraticProblem):
    """Minibatches taken from a fixed sequence (to enumerate every sequence exactly)."""

    def __init__(self, hessians, centers, sequence):
        super().__init__(hessians, centers)
        self.sequence = list(sequence)

    def sample(self, theta, rng):
        return np.array([self.sequence.pop(0)])


@pytest.mark.parametrize("k", [2, 3])
def test_expected_directions_match_nichol_et_al_taylor_expansion(k):
    """Nichol et al. (2018, sec. 5): to first order in alpha, with independent minibatches and
    losses L, E[g_MAML] = g - 2(k-1) a Hg, E[g_FOMAML] = g - (k-1) a Hg, E[g_Reptile] = k g -
    k(k-1)/2 a Hg.  We ascend J = -L (g_J = -g_L, H_J = -H_L), so the directions are
    E[MAML] = g + 2(k-1) a Hg, E[FOMAML] = g + (k-1) a Hg, E[Reptile/a] = k g + k(k-1)/2 a Hg."""
    rng = np.random.default_rng(7)
    P, M = 3, 3
    hessians = np.stack([random_spd(rng, P) for _ in range(M)])[None]
    centers = rng.standard_normal((1, M, P))
    phi = rng.standard_normal(P)
    gbar = np.mean([-hessians[0, j] @ (phi - centers[0, j]) for j in range(M)], axis=0)
    Hbar = -hessians[0].mean(axis=0)

    def expected(method, alpha):
        steps = k if method == "reptile" else k - 1
        total = np.zeros(P)
        seqs = list(itertools.product(range(M), repeat=k))
        for seq in seqs:
            prob = _Enumerated(hessians, centers, seq)
            # Nichol et al.'s setting: each Hessian on the minibatch of its own step
            d, _, _ = meta.meta_gradient(prob, phi, method, alpha, steps, rng, hessian_data="shared")
            total += d[0]
        out = total / len(seqs)
        return out / alpha if method == "reptile" else out

    predicted = {
        "maml": lambda a: gbar + 2 * (k - 1) * a * Hbar @ gbar,
        "fomaml": lambda a: gbar + (k - 1) * a * Hbar @ gbar,
        "reptile": lambda a: k * gbar + 0.5 * k * (k - 1) * a * Hbar @ gbar,
    }
    for method, formula in predicted.items():
        errors = [np.linalg.norm(expected(method, a) - formula(a)) for a in (2e-3, 1e-3)]
        first_order = np.linalg.norm((k - 1) * 2e-3 * Hbar @ gbar)
        assert errors[0] < 0.05 * first_order, (method, errors, first_order)
        if errors[0] > 1e-12:  # (FOMAML with k=2 is exact on quadratics: no remainder at all)
            assert errors[1] < errors[0] / 3.0, (method, errors)  # the remainder is O(alpha^2)


# ------------------------------------------------------------------ exact (DP) meta-gradients
def small_tasks(seed, n_tasks=2, S=3, A=2, horizon=5):
    return TabularMDPs(n_states=S, n_actions=A, horizon=horizon).sample(n_tasks, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", ["tabular", "linear"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_exact_maml_equals_finite_differences(kind, inner_steps):
    tasks = small_tasks(3)
    rng = np.random.default_rng(0)
    if kind == "tabular":
        policy, features = mf.TabularSoftmaxPolicy(3, 2), None
    else:
        features = rng.standard_normal((3, 2))
        policy = mf.LinearSoftmaxPolicy(2, 2)
    prob = meta.ExactPolicyProblem(policy, tasks, gamma=0.95, features=features)
    phi = 0.5 * rng.standard_normal(prob.n_params)
    alpha = 0.4

    def objective(x):  # J(theta_K(x)) with exact inner gradients, per task
        theta, _, _, _ = meta.adapt(prob, x, alpha, inner_steps, rng)
        return prob.value(theta)

    h = 1e-5
    fd = np.stack([(objective(phi + h * e) - objective(phi - h * e)) / (2 * h) for e in np.eye(prob.n_params)], axis=1)
    exact, _, _ = meta.meta_gradient(prob, phi, "maml", alpha, inner_steps, rng)
    rel = np.linalg.norm(exact - fd) / np.linalg.norm(fd)
    assert rel < 1e-5, rel
    # and the first-order direction is measurably different (it drops the second-order term)
    fo, _, _ = meta.meta_gradient(prob, phi, "fomaml", alpha, inner_steps, rng)
    assert np.linalg.norm(fo - fd) / np.linalg.norm(fd) > 1e-2


def test_exact_gradient_and_hvp_match_exact_module_and_finite_differences():
    from metarl_fast import exact

    tasks = small_tasks(5, n_tasks=3, S=4, A=3, horizon=6)
    policy = mf.TabularSoftmaxPolicy(4, 3)
    prob = meta.ExactPolicyProblem(policy, tasks, gamma=0.9)
    rng = np.random.default_rng(1)
    theta = rng.standard_normal((3, 12))
    g = prob.grad(theta)
    for i in range(3):
        model = tasks[i].model(gamma=0.9)
        np.testing.assert_allclose(g[i], exact.policy_gradient_exact(model, theta[i]).ravel(), atol=1e-12)
        assert abs(prob.value(theta)[i] - exact.policy_value(model, theta[i])) < 1e-12
    v = rng.standard_normal((3, 12))
    h = 1e-5
    fd = (prob.grad(theta + h * v) - prob.grad(theta - h * v)) / (2 * h)
    np.testing.assert_allclose(prob.hvp(theta, None, v), fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ sampled estimators
def replicated(task_batch, copies):
    """One task repeated ``copies`` times: independent replications in one rollout call."""
    idx = np.zeros(copies, dtype=np.int64)
    return task_batch[idx]


REPS = 20_000  # replications of one task, run as one task batch (one rollout call)


def unbiased_setup(kind, reps=REPS, seed=2):
    """One small MDP replicated ``reps`` times, a policy, parameters and a direction."""
    base = small_tasks(11, n_tasks=1, S=3, A=3, horizon=4)
    tasks = replicated(base, reps)
    rng = np.random.default_rng(seed)
    features = None
    policy = mf.TabularSoftmaxPolicy(3, 3)
    if kind == "linear":
        features = rng.standard_normal((3, 2))
        policy = mf.LinearSoftmaxPolicy(2, 3)
    n_params = policy.n_params
    theta = np.broadcast_to(0.7 * rng.standard_normal(n_params), (reps, n_params)).copy()
    v = np.broadcast_to(rng.standard_normal(n_params), theta.shape).copy()
    return tasks, policy, features, theta, v, rng


def assert_mean_is(estimates, target, label, n_se=4.0):
    """Every component of the replications' mean within ``n_se`` standard errors of ``target``
    (per replication (R, P), or one (P,) vector), and the ratio along the target's mean direction
    within ``n_se`` standard errors of 1."""
    diff = estimates - target
    se = diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0])
    z = np.abs(diff.mean(axis=0)) / np.maximum(se, 1e-12)
    assert np.all(z < n_se), f"{label}: component z-scores {np.round(z, 2)}"
    mean_target = np.broadcast_to(target, estimates.shape).mean(axis=0)
    u = mean_target / np.linalg.norm(mean_target)
    along, along_target = estimates @ u, np.broadcast_to(target, estimates.shape) @ u
    ratio = along.mean() / along_target.mean()
    ratio_se = (along - along_target).std(ddof=1) / np.sqrt(along.size) / abs(along_target.mean())
    assert abs(ratio - 1.0) < n_se * ratio_se, f"{label}: E[estimate]/exact = {ratio:.4f} +- {ratio_se:.4f}"


@pytest.mark.parametrize("n_episodes", [1, 2, 5])
@pytest.mark.parametrize("kind", ["tabular", "linear"])
def test_sampled_gradient_and_hvp_are_unbiased_for_few_episodes(backend, kind, n_episodes):
    tasks, policy, features, theta, v, rng = unbiased_setup(kind)
    sampled = meta.SampledPolicyProblem(policy, tasks, n_episodes=n_episodes, gamma=0.9, features=features)
    exact = meta.ExactPolicyProblem(policy, tasks[:1], gamma=0.9, features=features)
    data = sampled.sample(theta, rng)
    assert_mean_is(sampled.grad(theta, data), exact.grad(theta[:1])[0], f"grad N={n_episodes}")
    assert_mean_is(sampled.hvp(theta, data, v), exact.hvp(theta[:1], None, v[:1])[0], f"hvp N={n_episodes}")


@pytest.mark.parametrize("n_episodes", [2, 5])
def test_mean_baseline_is_biased_by_one_minus_one_over_n(backend, n_episodes):
    """The documented bias of ``baseline="mean"`` (all episodes reach every step here)."""
    tasks, policy, features, theta, v, rng = unbiased_setup("tabular")
    sampled = meta.SampledPolicyProblem(policy, tasks, n_episodes=n_episodes, gamma=0.9, baseline="mean")
    exact = meta.ExactPolicyProblem(policy, tasks[:1], gamma=0.9)
    data = sampled.sample(theta, rng)
    assert_mean_is(sampled.grad(theta, data), (1 - 1 / n_episodes) * exact.grad(theta[:1])[0], "mean baseline")


def test_one_episode_gives_a_nonzero_gradient_and_meta_gradient(backend):
    tasks, policy, _, theta, _, rng = unbiased_setup("tabular", reps=8)
    exact = meta.ExactPolicyProblem(policy, tasks, gamma=0.9)
    assert np.linalg.norm(exact.grad(theta)[0]) > 0.05
    sampled = meta.SampledPolicyProblem(policy, tasks, n_episodes=1, gamma=0.9)
    assert np.all(np.linalg.norm(sampled.grad(theta, sampled.sample(theta, rng)), axis=1) > 0)
    learner = mf.MAML(policy, inner_lr=0.5, episodes_per_task=1, gamma=0.9)
    before = policy.params.copy()
    stats = learner.meta_step(tasks, rng)
    assert stats["direction_norm"] > 0 and not np.array_equal(policy.params, before)


def exact_chain(exact, path, alpha):
    """``prod_k (I + alpha H(theta_k))^T grad J(theta_K)`` by DP along each replication's path."""
    v = exact.grad(path[-1])
    for k in range(len(path) - 2, -1, -1):
        v = v + exact.hvp(path[k], None, alpha * v)
    return v


@pytest.mark.parametrize("n_episodes", [1, 2, 5])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_sampled_maml_meta_gradient_is_unbiased_given_the_inner_path(backend, inner_steps, n_episodes):
    """E[MAML estimate | theta_0..theta_K] = prod_k (I + alpha nabla^2 J(theta_k))^T nabla J(theta_K):
    checked against DP along each replication's own sampled path (paired, so the path's own
    randomness cancels), for as few as one episode per task."""
    tasks, policy, _, theta, _, rng = unbiased_setup("tabular")
    alpha = 1.0
    sampled = meta.SampledPolicyProblem(policy, tasks, n_episodes=n_episodes, gamma=0.9)
    direction, _, info = meta.meta_gradient(sampled, theta[0], "maml", alpha, inner_steps, rng)
    target = exact_chain(meta.ExactPolicyProblem(policy, tasks, gamma=0.9), info["path"], alpha)
    assert_mean_is(direction, target, f"MAML K={inner_steps} N={n_episodes}")
    fomaml, _, info = meta.meta_gradient(sampled, theta[0], "fomaml", alpha, inner_steps, rng)
    target = meta.ExactPolicyProblem(policy, tasks, gamma=0.9).grad(info["path"][-1])
    assert_mean_is(fomaml, target, f"FOMAML K={inner_steps} N={n_episodes}")


def test_shared_hessian_data_is_biased():
    """Reusing the inner step's episodes for the HVP correlates the Hessian estimate with the step
    it differentiates: the documented reason for ``hessian_data="fresh"``."""
    tasks, policy, _, theta, _, rng = unbiased_setup("tabular")
    sampled = meta.SampledPolicyProblem(policy, tasks, n_episodes=1, gamma=0.9)
    direction, _, info = meta.meta_gradient(sampled, theta[0], "maml", 1.0, 1, rng, hessian_data="shared")
    target = exact_chain(meta.ExactPolicyProblem(policy, tasks, gamma=0.9), info["path"], 1.0)
    diff = direction - target
    z = np.abs(diff.mean(axis=0)) / (diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0]))
    assert z.max() > 6, z


def test_sampled_maml_converges_to_exact_and_fomaml_does_not():
    base = small_tasks(21, n_tasks=1, S=3, A=2, horizon=5)
    reps = 300
    tasks = replicated(base, reps)
    policy = mf.TabularSoftmaxPolicy(3, 2)
    rng = np.random.default_rng(4)
    phi = 0.5 * rng.standard_normal(6)
    alpha = 0.5
    exact = meta.ExactPolicyProblem(policy, tasks[:1], gamma=1.0)
    target, _, _ = meta.meta_gradient(exact, phi, "maml", alpha, 1, rng)
    errs = {}
    for method in ("maml", "fomaml"):
        prob = meta.SampledPolicyProblem(policy, tasks, n_episodes=400, gamma=1.0)
        d, _, _ = meta.meta_gradient(prob, phi, method, alpha, 1, rng)
        mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / np.sqrt(reps)
        errs[method] = (np.linalg.norm(mean - target[0]), np.linalg.norm(se))
    maml_err, maml_se = errs["maml"]
    fo_err, fo_se = errs["fomaml"]
    assert maml_err < 3 * maml_se + 0.02 * np.linalg.norm(target), errs
    assert fo_err > 5 * fo_se and fo_err > 3 * maml_err, errs


# ------------------------------------------------------------------ learning works
def test_maml_and_reptile_initialisations_adapt_better_on_grid_navigation():
    from metarl_fast.tasks import GridNavigation

    dist = GridNavigation(size=5)
    held_out = dist.sample(200, np.random.default_rng(999))
    alpha = 1.0

    def adapted_value(params):
        """Exact return after one sampled adaptation step (20 episodes) on each held-out task."""
        policy = mf.TabularSoftmaxPolicy(25, 5)
        sampled = meta.SampledPolicyProblem(policy, held_out, n_episodes=20)
        theta, _, _, _ = meta.adapt(sampled, params, alpha, 1, np.random.default_rng(5))
        values = meta.ExactPolicyProblem(policy, held_out).value(theta)
        return values.mean(), 1.96 * values.std(ddof=1) / np.sqrt(values.size)

    def train(learner, iterations=400):
        rng = np.random.default_rng(0)
        for _ in range(iterations):
            learner.meta_step(dist.sample(20, rng), rng)
        return learner.policy.params

    results = {
        "random": adapted_value(np.zeros(125)),
        "multitask": adapted_value(train(meta.MultiTask(mf.TabularSoftmaxPolicy(25, 5), inner_lr=alpha, meta_lr=0.05))),
        "maml": adapted_value(train(meta.MAML(mf.TabularSoftmaxPolicy(25, 5), inner_lr=alpha, meta_lr=0.05))),
        "reptile": adapted_value(train(meta.Reptile(mf.TabularSoftmaxPolicy(25, 5), inner_lr=alpha,
                                                    inner_steps=3, meta_lr=0.1, meta_optimizer="adam"))),
    }
    for learned in ("maml", "reptile"):
        mean, ci = results[learned]
        for reference in ("random", "multitask"):
            ref_mean, ref_ci = results[reference]
            assert mean - ci > ref_mean + ref_ci, results  # non-overlapping 95% intervals


def test_actor_critic_inner_loop_adapts_and_meta_learns(backend):
    from metarl_fast.tasks import GridNavigation

    dist = GridNavigation(size=5)
    held_out = dist.sample(200, np.random.default_rng(999))
    policy = mf.TabularSoftmaxPolicy(25, 5)

    def adapted(params):
        sampled = meta.SampledPolicyProblem(policy, held_out, n_episodes=20, advantage="actor-critic")
        theta, _, _, _ = meta.adapt(sampled, params, 1.0, 1, np.random.default_rng(5))
        values = meta.ExactPolicyProblem(policy, held_out).value(theta)
        return values.mean(), 1.96 * values.std(ddof=1) / np.sqrt(values.size)

    before = meta.ExactPolicyProblem(policy, held_out).value(np.zeros((200, 125))).mean()
    scratch, scratch_ci = adapted(np.zeros(125))
    assert scratch > before + 5  # one actor-critic step from the uniform policy already helps
    learner = meta.MAML(policy, inner_lr=1.0, meta_lr=0.05, inner_estimator="actor-critic")
    rng = np.random.default_rng(0)
    for _ in range(300):
        learner.meta_step(dist.sample(20, rng), rng)
    learned, learned_ci = adapted(policy.params)
    assert learned - learned_ci > scratch + scratch_ci, (learned, scratch)


# ------------------------------------------------------------------ bad input
def test_bad_hyper_parameters_and_shapes():
    policy = mf.TabularSoftmaxPolicy(3, 2)
    for kw, match in [({"inner_lr": 0.0}, "inner_lr"), ({"inner_lr": float("nan")}, "inner_lr"),
                      ({"meta_lr": -1.0}, "meta_lr"), ({"meta_lr": float("inf")}, "meta_lr"),
                      ({"inner_steps": 0}, "inner_steps"), ({"episodes_per_task": 0}, "episodes_per_task"),
                      ({"estimator": "magic"}, "estimator"), ({"gamma": 1.5}, "gamma"),
                      ({"inner_estimator": "td(5)"}, "inner_estimator"), ({"baseline": "median"}, "baseline"),
                      ({"hessian_data": "stale"}, "hessian_data")]:
        with pytest.raises(ValueError, match=match):
            meta.MAML(policy, **kw)
    with pytest.raises(ValueError, match="method must be one of"):
        meta.MetaLearner(policy, "sgd")
    with pytest.raises(ValueError, match="Meta-SGD"):
        meta.Reptile(policy, learn_inner_lr=True)
    with pytest.raises(TypeError, match="policy must be"):
        meta.MAML(np.zeros(6))
    learner = meta.MAML(mf.TabularSoftmaxPolicy(4, 2))
    with pytest.raises(ValueError, match="the policy has 4 states, the tasks 3"):
        learner.meta_step(small_tasks(1), np.random.default_rng(0))
    learner = meta.MAML(mf.TabularSoftmaxPolicy(3, 5))
    with pytest.raises(ValueError, match="the policy has 5 actions, the tasks 2"):
        learner.meta_step(small_tasks(1), np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be"):
        learner.meta_step(small_tasks(1), 3.5)
    with pytest.raises(ValueError, match="baseline must be one of"):
        meta.SampledPolicyProblem(policy, small_tasks(1), 2, baseline="median")
    with pytest.raises(ValueError, match="hessian_data must be one of"):
        meta.meta_gradient(meta.QuadraticProblem(np.eye(2)[None], np.zeros((1, 2))), np.zeros(2), "maml", 0.1, 1,
                           np.random.default_rng(0), hessian_data="stale")


def test_divergence_is_reported_and_rolled_back(monkeypatch):
    policy = mf.TabularSoftmaxPolicy(3, 2)
    learner = meta.MAML(policy, inner_lr=0.1, estimator="exact")
    tasks = small_tasks(2)
    for _ in range(2):
        learner.meta_step(tasks, np.random.default_rng(0))
    before = policy.params.copy()
    opt_before = learner.optimizer.state_dict()
    real = meta.meta_gradient

    def exploding(*args, **kwargs):
        direction, lr_grad, info = real(*args, **kwargs)
        direction[0, 0] = np.inf
        return direction, lr_grad, info

    monkeypatch.setattr(meta, "meta_gradient", exploding)
    with pytest.raises(meta.DivergenceError, match="meta-iteration 3"):
        learner.meta_step(tasks, np.random.default_rng(0))
    np.testing.assert_array_equal(policy.params, before)
    assert learner.iteration == 2
    assert learner.optimizer.state_dict()["steps"] == opt_before["steps"]


def test_the_classes_defaults_are_the_command_lines():
    """Issue 14: MAML(policy) trains as `metarl-fast train` does by default."""
    from metarl_fast.trainer import TrainConfig

    config = TrainConfig()
    learner = meta.MAML(mf.TabularSoftmaxPolicy(4, 2))
    assert (learner.inner_lr, learner.meta_lr, learner.inner_steps, learner.episodes_per_task,
            learner.gamma, learner.estimator, learner.inner_estimator, learner.baseline,
            learner.hessian_data) == (config.inner_lr, config.meta_lr, config.inner_steps,
                                      config.episodes_per_task, config.gamma, config.estimator,
                                      config.inner_estimator, config.baseline, config.hessian_data)
    assert isinstance(learner.optimizer, mf.Adam) and config.meta_optimizer == "adam"


def test_adapted_policies_are_the_adapted_parameters_as_policies():
    tasks = mf.GridNavigation(size=3).sample(3, 0)
    learner = meta.FOMAML(mf.TabularSoftmaxPolicy(9, 5), episodes_per_task=4)
    path = learner.adapt(tasks, 5, inner_steps=2)
    policies = learner.adapted_policies(tasks, 5, inner_steps=2)
    assert len(policies) == 3
    for policy, theta in zip(policies, path[-1]):
        assert isinstance(policy, mf.TabularSoftmaxPolicy) and policy is not learner.policy
        np.testing.assert_array_equal(policy.params, theta)
        assert isinstance(policy.act(0, 1), int)
    assert not np.array_equal(policies[0].params, learner.policy.params)
