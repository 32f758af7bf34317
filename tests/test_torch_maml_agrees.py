"""The PyTorch MAML of benches/torch_maml.py (the comparison of bench_mlp.py) computes the engine's
meta-gradient: fed the same episodes, its autograd meta-gradient equals, per task, the direction
of ``metarl_fast.meta.meta_gradient`` on a ``ContinuousPolicyProblem`` (MLP policy on
PointNavigation, K = 1, fresh Hessian episodes), which is built from the analytic kernels
(``grad``, ``hvp``: R-backprop plus the score-function term).  Skipped without torch."""
import importlib.util
import pathlib

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast._backend import active
from metarl_fast.continuous_meta import ContinuousPolicyProblem
from metarl_fast.meta import meta_gradient

torch = pytest.importorskip("torch", reason="torch not installed (the 'bench' extra): no PyTorch MAML to check")


def _load_torch_maml():
    path = pathlib.Path(__file__).resolve().parents[1] / "benches" / "torch_maml.py"
    spec = importlib.util.spec_from_file_location("bench_torch_maml", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tm = _load_torch_maml()


def _episodes(data, n_tasks, n_episodes, horizon):
    """The engine's flat trajectories as torch (T, N, H, ...) episodes (PointNavigation episodes
    all last ``horizon`` steps)."""
    traj = data["traj"]
    assert np.all(traj.episode_length == horizon)
    shape = (n_tasks, n_episodes, horizon)
    return tm.Episodes(torch.from_numpy(traj.obs.reshape(shape + (2,)).copy()),
                       torch.from_numpy(traj.action.reshape(shape).copy()),
                       torch.from_numpy(traj.reward.reshape(shape).copy()))


def _engine_maml(hidden, n_tasks, n_episodes, horizon, inner_lr, seed):
    """The engine's per-task MAML directions (T, P), adapted parameters (T, P), and the three
    episode sets it drew (D_in, D_out, D_h, replayed from the same seed), with the problem."""
    batch = mf.PointNavigation(horizon=horizon, goal_low=-0.3, goal_high=0.3).sample(n_tasks, seed)
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=hidden, rng=seed + 1)
    problem = ContinuousPolicyProblem(policy, batch, n_episodes)
    phi = policy.params.astype(np.float64)
    direction, _, info = meta_gradient(problem, phi, "maml", inner_lr, 1, np.random.default_rng(seed + 2))
    # the same draws again: D_in at phi, D_out at the adapted parameters, D_h at phi
    rng = np.random.default_rng(seed + 2)
    theta0 = np.broadcast_to(phi, (n_tasks, phi.shape[0])).copy()
    d_in = problem.sample(theta0, rng)
    theta1 = theta0 + inner_lr * problem.grad(theta0, d_in)
    np.testing.assert_array_equal(theta1, info["path"][1])
    d_out = problem.sample(theta1, rng)
    d_h = problem.sample(theta0, rng)
    return direction, theta1, (d_in, d_out, d_h), problem, batch, phi


def _torch_direction(phi, goals, episodes, task, n_episodes, inner_lr, hidden):
    """torch's meta-gradient and adapted parameters of task ``task`` alone, on its episodes."""
    layers, _ = tm.mlp_layout(2, hidden, 9)
    env = tm.PointNavigation(goals[task:task + 1], horizon=episodes[0].obs.shape[2])
    mine = [tm.Episodes(*(x[task:task + 1] for x in d)) for d in episodes]
    leaf = torch.tensor(phi, requires_grad=True)
    objective, theta1, _ = tm.maml_objective(leaf, env, n_episodes, inner_lr, layers, episodes=mine)
    (grad,) = torch.autograd.grad(objective, leaf)
    return grad.numpy(), theta1[0].numpy()


CASES = [((8, 8), 2, 2, 3), ((64, 64), 2, 2, 3), ((16,), 3, 5, 7)]


@pytest.mark.parametrize("hidden,n_tasks,n_episodes,horizon", CASES)
def test_torch_maml_equals_engine_meta_gradient_on_shared_episodes(hidden, n_tasks, n_episodes, horizon):
    inner_lr = 0.5
    direction, theta1, data, problem, batch, phi = _engine_maml(hidden, n_tasks, n_episodes, horizon,
                                                                inner_lr, seed=11)
    episodes = [_episodes(d, n_tasks, n_episodes, horizon) for d in data]
    goals = np.array(batch.goals)
    for t in range(n_tasks):
        grad, theta1_torch = _torch_direction(phi, goals, episodes, t, n_episodes, inner_lr, hidden)
        scale = np.abs(direction[t]).max()
        np.testing.assert_allclose(theta1_torch, theta1[t], rtol=0, atol=1e-12 * np.abs(theta1[t]).max())
        np.testing.assert_allclose(grad, direction[t], rtol=0, atol=1e-9 * scale)

    # the check can fail: each second-order part is far above its tolerance (a torch MAML with a
    # plain create_graph -- no score-function term -- or with the first-order direction only
    # would be rejected)
    d_out, d_h = data[1], data[2]
    v = problem.grad(theta1, d_out)
    theta0 = np.broadcast_to(phi, theta1.shape)
    second = problem.hvp(theta0, d_h, inner_lr * v)
    np.testing.assert_allclose(direction, v + second, rtol=1e-12, atol=1e-14)
    traj, coef = d_h["traj"], d_h["coef"]
    for t in range(n_tasks):
        rows = problem._rows(d_h, t)
        curvature = inner_lr * active.mlp.mlp_hvp(phi, traj.obs[rows], hidden, "tanh", traj.action[rows],
                                                  coef[rows], v[t])
        score = second[t] - curvature
        scale = np.abs(direction[t]).max()
        assert np.abs(score).max() > 1e-5 * scale
        assert np.abs(curvature).max() > 1e-5 * scale


def test_torch_pieces_equal_the_engine():
    """The environment step, the network's logits and the REINFORCE coefficients of the torch
    comparison are the engine's (so the benchmark times the same work)."""
    hidden, n_tasks, n_episodes, horizon = (8, 8), 3, 4, 6
    _, _, data, problem, batch, phi = _engine_maml(hidden, n_tasks, n_episodes, horizon, 0.5, seed=5)
    env = tm.PointNavigation(np.array(batch.goals), horizon=horizon)
    np.testing.assert_array_equal(env.moves.numpy(), batch.moves)
    rng = np.random.default_rng(0)
    states = rng.uniform(-1, 1, (n_tasks, 2))
    actions = rng.integers(0, 9, n_tasks)
    next_states, rewards, _ = batch.step(states, actions)
    position, reward = env.step(torch.from_numpy(states)[:, None], torch.from_numpy(actions)[:, None])
    np.testing.assert_array_equal(position[:, 0].numpy(), next_states)
    np.testing.assert_allclose(reward[:, 0].numpy(), rewards, rtol=1e-15, atol=0)

    layers, _ = tm.mlp_layout(2, hidden, 9)
    obs = rng.normal(size=(n_tasks, 5, 2))
    logits = tm.mlp_logits(torch.from_numpy(np.broadcast_to(phi, (n_tasks, phi.shape[0])).copy()),
                           torch.from_numpy(obs), layers).numpy()
    ours = active.mlp.mlp_logits(phi, obs.reshape(-1, 2), hidden, "tanh").reshape(logits.shape)
    np.testing.assert_allclose(logits, ours, rtol=1e-13, atol=1e-13)

    episodes = _episodes(data[0], n_tasks, n_episodes, horizon)
    coef = tm.reinforce_coefs(episodes, 1.0).numpy().reshape(-1)
    np.testing.assert_allclose(coef, data[0]["coef"], rtol=1e-12, atol=1e-13 * np.abs(coef).max())
    # with gamma < 1 (the recursion branch), against a direct sum
    gamma = 0.9
    discounted = tm.reinforce_coefs(episodes, gamma).numpy()
    rew = episodes.reward.numpy()
    G = np.array([[[sum(gamma ** (k - h) * rew[t, e, k] for k in range(h, horizon)) for h in range(horizon)]
                   for e in range(n_episodes)] for t in range(n_tasks)])
    b = (G.sum(axis=1, keepdims=True) - G) / (n_episodes - 1)
    expected = gamma ** np.arange(horizon) * (G - b) / n_episodes
    np.testing.assert_allclose(discounted, expected, rtol=1e-12, atol=1e-14)


def test_torch_maml_meta_step_runs_and_moves_phi():
    """A real meta-iteration (sampled episodes, Adam) on a tiny meta-batch: finite, phi moves."""
    torch.manual_seed(0)
    phi = tm.mlp_init(2, (8,), 9)
    maml = tm.TorchMAML(phi, hidden=(8,), episodes_per_task=3)
    before = maml.phi.detach().clone()
    stats = maml.meta_step(tm.PointNavigation(torch.tensor([[0.2, -0.1], [-0.3, 0.3]]), horizon=5))
    assert np.isfinite(stats["pre_return"]) and np.isfinite(stats["post_return"])
    assert torch.all(torch.isfinite(maml.phi))
    assert not torch.equal(maml.phi.detach(), before)
