"""MLP policies on tabular tasks (issue 16's mathematical check): the exact DP problem against
finite differences, the sampled REINFORCE gradient and MAML Hessian-vector product unbiased
against it, and the sampled MAML meta-gradient converging to the exact one (FOMAML not)."""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import meta
from metarl_fast.mlp_tabular import ExactMLPProblem, SampledMLPProblem, linear_functional_hvp
from metarl_fast.reference import mlp as mlp_spec
from metarl_fast.tasks import GridNavigation, TabularMDPs


def tabular_mdps(seed, n_tasks, S, A, horizon):
    return TabularMDPs(n_states=S, n_actions=A, horizon=horizon).sample(n_tasks, np.random.default_rng(seed))


def hidden_preactivations(params, features, hidden, n_actions):
    """The first hidden layer's pre-activations on every state, (S, hidden[0])."""
    layers, _ = mlp_spec.mlp_layout(features.shape[1], hidden, n_actions)
    w_off, b_off, n_in, n_out = layers[0]
    return features @ params[w_off:b_off].reshape(n_in, n_out) + params[b_off:b_off + n_out]


FD_STEP = 1e-5


def fd_problem(family, activation):
    """(problem, theta (T, P), v (T, P)) on a small batch; relu parameters away from the kinks."""
    if family == "grid":
        tasks = GridNavigation(size=3, horizon=6).sample(2, np.random.default_rng(1))
    else:
        tasks = tabular_mdps(5, 2, S=4, A=3, horizon=5)
    S, A = tasks.n_states, tasks.n_actions
    policy = mf.MLPSoftmaxPolicy(S, A, hidden=(8,), activation=activation, rng=3)
    problem = ExactMLPProblem(policy, tasks, gamma=0.9)
    rng = np.random.default_rng(7)
    theta = policy.params + 0.5 * rng.standard_normal((2, policy.n_params))
    v = rng.standard_normal(theta.shape)
    for t in range(2 if activation == "relu" else 0):
        # one-hot observations: a step h v moves z[s] by h (v_W[s] + v_b), at most 2 h max|v|;
        # no relu kink may lie within 4 such steps
        z = hidden_preactivations(theta[t], problem.features, (8,), A)
        assert np.abs(z).min() > 8 * FD_STEP * np.abs(v).max(), "the test's parameters sit on a relu kink"
    return problem, theta, v


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("family", ["mdps", "grid"])
def test_exact_grad_and_hvp_equal_finite_differences(backend, family, activation):
    problem, theta, v = fd_problem(family, activation)
    h = FD_STEP
    eye = np.eye(problem.n_params)
    fd_grad = np.stack([(problem.value(theta + h * e) - problem.value(theta - h * e)) / (2 * h)
                        for e in eye], axis=1)
    grad = problem.grad(theta)
    assert np.abs(grad).max() > 1e-2  # a gradient worth checking
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-6, atol=1e-8)
    fd_hvp = (problem.grad(theta + h * v) - problem.grad(theta - h * v)) / (2 * h)
    np.testing.assert_allclose(problem.hvp(theta, None, v), fd_hvp, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("hidden", [(8,), (5, 4), ()])
def test_linear_functional_hvp_equals_finite_differences_of_the_vjp(activation, hidden):
    rng = np.random.default_rng(11)
    obs = rng.standard_normal((6, 3))
    layers, n_params = mlp_spec.mlp_layout(3, hidden, 4)
    params = rng.standard_normal(n_params)
    if hidden and activation == "relu":
        z = hidden_preactivations(params, obs, hidden, 4)
        assert np.abs(z).min() > 1e-4, "the test's parameters sit on a relu kink"
    dlogits, v = rng.standard_normal((6, 4)), rng.standard_normal(n_params)
    hv = linear_functional_hvp(params, obs, hidden, activation, dlogits, v)
    h = 1e-6
    fd = (mlp_spec.mlp_grad(params + h * v, obs, hidden, activation, dlogits)
          - mlp_spec.mlp_grad(params - h * v, obs, hidden, activation, dlogits)) / (2 * h)
    np.testing.assert_allclose(hv, fd, rtol=1e-6, atol=1e-8)
    if hidden:
        assert np.abs(hv).max() > 0.1  # the network's curvature is really there
    else:
        np.testing.assert_array_equal(hv, 0.0)  # logits linear in the parameters


# ------------------------------------------------------------------ sampled against exact
REPS = 20_000  # replications of one task, run as one task batch (one rollout call)


def unbiased_setup(reps=REPS, seed=2):
    """One small MDP replicated ``reps`` times, an MLP policy (hidden (8,), tanh), parameters and a
    direction (the same for every replication)."""
    tasks = tabular_mdps(11, 1, S=3, A=3, horizon=4)[np.zeros(reps, dtype=np.int64)]
    policy = mf.MLPSoftmaxPolicy(3, 3, hidden=(8,), activation="tanh", rng=1)
    rng = np.random.default_rng(seed)
    theta = np.broadcast_to(policy.params + 0.5 * rng.standard_normal(policy.n_params),
                            (reps, policy.n_params)).copy()
    v = np.broadcast_to(rng.standard_normal(policy.n_params), theta.shape).copy()
    return tasks, policy, theta, v, rng


def assert_mean_is(estimates, target, label, n_se=4.0):
    """Every component of the replications' mean within ``n_se`` standard errors of ``target``
    (P,), and the ratio along the target's direction within ``n_se`` standard errors of 1."""
    diff = estimates - target
    se = diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0])
    z = np.abs(diff.mean(axis=0)) / np.maximum(se, 1e-12)
    assert np.all(z < n_se), f"{label}: component z-scores {np.round(z, 2)}"
    u = target / np.linalg.norm(target)
    along = estimates @ u
    ratio = along.mean() / (target @ u)
    ratio_se = along.std(ddof=1) / np.sqrt(along.size) / abs(target @ u)
    assert abs(ratio - 1.0) < n_se * ratio_se, f"{label}: E[estimate]/exact = {ratio:.4f} +- {ratio_se:.4f}"


@pytest.mark.parametrize("n_episodes", [1, 2, 5])
def test_sampled_gradient_and_hvp_are_unbiased_for_few_episodes(backend, n_episodes):
    tasks, policy, theta, v, rng = unbiased_setup()
    sampled = SampledMLPProblem(policy, tasks, n_episodes=n_episodes, gamma=0.9)
    exact = ExactMLPProblem(policy, tasks[:1], gamma=0.9)
    data = sampled.sample(theta, rng)
    grad, hvp = sampled.grad(theta, data), sampled.hvp(theta, data, v)
    exact_grad, exact_hvp = exact.grad(theta[:1])[0], exact.hvp(theta[:1], None, v[:1])[0]
    assert_mean_is(grad, exact_grad, f"grad N={n_episodes}")
    assert_mean_is(hvp, exact_hvp, f"hvp N={n_episodes}")
    # power: the exact values are far from what the estimates would be without the score-function
    # term or without the network's curvature (in standard errors of the estimates' mean)
    se = np.linalg.norm(hvp.std(axis=0, ddof=1) / np.sqrt(REPS))
    logits = exact.logits(theta[:1])[0]
    g_logits = exact.table.grad(logits.reshape(1, -1)).reshape(logits.shape)
    curvature = linear_functional_hvp(theta[0], exact.features, policy.hidden, policy.activation,
                                      g_logits, v[0])
    assert np.linalg.norm(curvature) > 10 * se, (np.linalg.norm(curvature), se)


def test_mean_baseline_is_detected_as_biased(backend):
    """The z-score check has power on the gradient: ``baseline="mean"`` scales it by 1 - 1/N."""
    tasks, policy, theta, _, rng = unbiased_setup()
    sampled = SampledMLPProblem(policy, tasks, n_episodes=2, gamma=0.9, baseline="mean")
    exact = ExactMLPProblem(policy, tasks[:1], gamma=0.9).grad(theta[:1])[0]
    grad = sampled.grad(theta, sampled.sample(theta, rng))
    assert_mean_is(grad, 0.5 * exact, "mean baseline, N=2")
    with pytest.raises(AssertionError, match="z-scores|E\\[estimate\\]"):
        assert_mean_is(grad, exact, "mean baseline against the exact gradient")


def test_sampled_maml_converges_to_exact_and_fomaml_does_not(backend):
    tasks = tabular_mdps(21, 1, S=3, A=2, horizon=5)
    reps = 300
    replicated = tasks[np.zeros(reps, dtype=np.int64)]
    policy = mf.MLPSoftmaxPolicy(3, 2, hidden=(8,), activation="tanh", rng=4)
    rng = np.random.default_rng(4)
    phi = policy.params + 0.5 * rng.standard_normal(policy.n_params)
    alpha = 0.5
    exact = ExactMLPProblem(policy, tasks, gamma=1.0)
    target = meta.meta_gradient(exact, phi, "maml", alpha, 1, rng)[0][0]
    first_order = meta.meta_gradient(exact, phi, "fomaml", alpha, 1, rng)[0][0]
    errs = {}
    for method in ("maml", "fomaml"):
        problem = SampledMLPProblem(policy, replicated, n_episodes=400, gamma=1.0)
        d, _, _ = meta.meta_gradient(problem, phi, method, alpha, 1, rng)
        mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / np.sqrt(reps)
        errs[method] = (np.linalg.norm(mean - target), np.linalg.norm(se))
    maml_err, maml_se = errs["maml"]
    fo_err, fo_se = errs["fomaml"]
    tolerance = 3 * maml_se + 0.02 * np.linalg.norm(target)
    assert np.linalg.norm(target - first_order) > 10 * maml_se, errs  # the second-order term matters
    # power: the network's curvature alone moves the meta-gradient by more than the tolerance
    # (H is symmetric: its share of (I + alpha H) g' is alpha times the functional's HVP along g')
    g_logits = exact.table.grad(exact.logits(phi[None]).reshape(1, -1)).reshape(3, 2)
    curvature = alpha * linear_functional_hvp(phi, exact.features, policy.hidden, policy.activation,
                                              g_logits, first_order)
    assert np.linalg.norm(curvature) > tolerance, (np.linalg.norm(curvature), tolerance)
    assert maml_err < tolerance, errs
    assert fo_err > 5 * fo_se and fo_err > 3 * maml_err, errs


# ------------------------------------------------------------------ arguments
def test_bad_arguments_are_named():
    tasks = tabular_mdps(0, 2, S=3, A=2, horizon=3)
    policy = mf.MLPSoftmaxPolicy(3, 2, hidden=(4,), rng=0)
    with pytest.raises(TypeError, match="policy must be an MLPSoftmaxPolicy"):
        ExactMLPProblem(mf.TabularSoftmaxPolicy(3, 2), tasks)
    with pytest.raises(TypeError, match="task_batch must be a tabular TaskBatch"):
        SampledMLPProblem(policy, "tasks", 2)
    with pytest.raises(ValueError, match="actions"):
        ExactMLPProblem(mf.MLPSoftmaxPolicy(3, 3, hidden=(4,), rng=0), tasks)
    with pytest.raises(ValueError, match="needs a feature table"):
        ExactMLPProblem(mf.MLPSoftmaxPolicy(2, 2, hidden=(4,), rng=0), tasks)
    with pytest.raises(ValueError, match="features must be finite with shape"):
        ExactMLPProblem(policy, tasks, features=np.ones((3, 2)))
    with pytest.raises(ValueError, match="gamma"):
        ExactMLPProblem(policy, tasks, gamma=1.5)
    with pytest.raises(ValueError, match="n_episodes"):
        SampledMLPProblem(policy, tasks, 0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        SampledMLPProblem(policy, tasks, 2, baseline="median")
    problem = ExactMLPProblem(policy, tasks)
    with pytest.raises(ValueError, match="theta must have shape"):
        problem.grad(np.zeros((1, policy.n_params)))
    with pytest.raises(ValueError, match="v contains NaN"):
        problem.hvp(np.zeros((2, policy.n_params)), None, np.full((2, policy.n_params), np.nan))
    features = np.random.default_rng(0).standard_normal((3, 5))
    wide = mf.MLPSoftmaxPolicy(5, 2, hidden=(4,), rng=0)
    assert ExactMLPProblem(wide, tasks, features=features).grad(np.tile(wide.params, (2, 1))).shape == (2, wide.n_params)
