"""The PyTorch RL^2 of benches/torch_rl2.py (the comparison of bench_rl2.py) computes what
``RL2Learner`` computes: fed the engine's own rollout, its ``nn.GRU`` forward equals
``gru_forward``, its GAE equals ``RL2Learner.advantages``, its PPO loss and autograd gradient
equal ``ppo_loss_terms`` + ``gru_backward`` (both clip branches active), and one whole PPO update
(same permutations) ends at the engine's parameters.  Its own rollout builds the engine's GRU
inputs.  Skipped without torch."""
import importlib.util
import pathlib

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast._backend import active
from metarl_fast.rl2 import rl2_rollout
from metarl_fast.rl2_learner import ppo_loss_terms, to_time_major

torch = pytest.importorskip("torch", reason="torch not installed (the 'bench' extra): no PyTorch RL2 to check")


def _load_torch_rl2():
    path = pathlib.Path(__file__).resolve().parents[1] / "benches" / "torch_rl2.py"
    spec = importlib.util.spec_from_file_location("bench_torch_rl2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tr = _load_torch_rl2()

CLIP, VALUE_COEF, ENTROPY_COEF = 0.2, 0.5, 0.05


def _engine_rollout(n_arms=3, n_pulls=4, episodes=2, n_trials=6, hidden=7, seed=0):
    """An engine learner and one rollout of ``n_trials`` bandit trials (``episodes`` episodes of
    ``n_pulls`` pulls: the done flag is set inside the trial)."""
    learner = mf.RL2Learner(1, n_arms, hidden, episodes_per_trial=episodes, gamma=0.9,
                            gae_lambda=0.8, entropy_coef=ENTROPY_COEF, rng=seed)
    batch = mf.BernoulliBandits(n_arms, horizon=n_pulls).sample(n_trials, np.random.default_rng(seed + 1))
    ro = rl2_rollout(batch, learner.params, hidden, episodes, np.random.default_rng(seed + 2))
    return learner, batch, ro


def _policy(learner, params):
    policy = tr.GRUPolicy(learner.input_dim, learner.n_actions, learner.hidden)
    return policy.load_engine_params(params)


def test_parameters_round_trip_through_the_torch_module():
    learner, _, _ = _engine_rollout()
    policy = _policy(learner, learner.params)
    np.testing.assert_array_equal(policy.engine_params(), learner.params)
    assert policy.gru.weight_ih_l0.shape == (3 * learner.hidden, learner.input_dim)


def test_torch_forward_equals_gru_forward_and_the_rollout():
    learner, _, ro = _engine_rollout(hidden=16)
    policy = _policy(learner, learner.params)
    with torch.no_grad():
        logits, values, _ = policy(torch.from_numpy(ro.inputs))
    h0 = np.zeros((ro.inputs.shape[1], learner.hidden))
    ref_logits, ref_values, _ = active.gru.gru_forward(learner.params, ro.inputs, h0, ro.resets)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=0, atol=1e-13)
    np.testing.assert_allclose(values.numpy(), ref_values, rtol=0, atol=1e-13)
    trials = tr.engine_trials(ro)
    logp = torch.log_softmax(logits, -1).gather(-1, trials.action[..., None])[..., 0]
    np.testing.assert_allclose(logp.numpy(), trials.logp.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(values.numpy(), trials.value.numpy(), rtol=0, atol=1e-13)


def test_torch_rollout_inputs_have_the_engine_layout():
    """``step_inputs`` fed the engine rollout's previous actions, rewards and episode ends gives
    the engine's GRU inputs bit for bit; the torch rollout's own inputs follow its own actions
    and rewards, and recomputing its GRU over them gives its logp and values (state carried)."""
    learner, _, ro = _engine_rollout(n_arms=4, n_pulls=3, episodes=3)
    trials = tr.engine_trials(ro)
    n_steps = trials.action.shape[0]
    done = torch.from_numpy(to_time_major(ro.terminated | ro.truncated, ro.mask)).double()
    assert done.sum() > done.shape[1]  # episode ends inside the trials
    for k in range(n_steps):
        prev = max(k - 1, 0)
        x = tr.step_inputs(trials.action[prev], trials.reward[prev] * (k > 0), done[prev] * (k > 0),
                           learner.n_actions, first=k == 0)
        np.testing.assert_array_equal(x.numpy(), ro.inputs[k])

    policy = _policy(learner, learner.params)
    means = torch.from_numpy(np.random.default_rng(3).random((50, 4)))
    ours = tr.rollout(policy, means, 3, 3, torch.Generator().manual_seed(0))
    assert ours.inputs.shape == (9, 50, 4 + 3)
    np.testing.assert_array_equal(ours.inputs[0, :, 1:].numpy(), 0.0)
    np.testing.assert_array_equal(ours.inputs[:, :, 0].numpy(), 1.0)
    one_hot = torch.nn.functional.one_hot(ours.action[:-1], 4).double()
    np.testing.assert_array_equal(ours.inputs[1:, :, 1:5].numpy(), one_hot.numpy())
    np.testing.assert_array_equal(ours.inputs[1:, :, 5].numpy(), ours.reward[:-1].numpy())
    np.testing.assert_array_equal(ours.inputs[1:, :, 6].numpy()[[2, 5]], 1.0)
    np.testing.assert_array_equal(ours.inputs[1:, :, 6].numpy()[[0, 1, 3, 4, 6, 7]], 0.0)
    with torch.no_grad():
        logits, values, _ = policy(ours.inputs)
    logp = torch.log_softmax(logits, -1).gather(-1, ours.action[..., None])[..., 0]
    np.testing.assert_allclose(logp.numpy(), ours.logp.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(values.numpy(), ours.value.numpy(), rtol=0, atol=1e-12)


def test_torch_advantages_equal_the_learners():
    learner, _, ro = _engine_rollout()
    torch_rl2 = tr.TorchRL2(learner.n_actions, learner.hidden, learner.params, gamma=0.9,
                            gae_lambda=0.8)
    norm_adv, returns = torch_rl2.advantages(tr.engine_trials(ro))
    advantages, ref_returns = learner.advantages(ro)
    valid = advantages[ro.mask]
    ref_norm = (advantages - valid.mean()) / (valid.std() + 1e-8)
    np.testing.assert_allclose(returns.numpy(), ref_returns, rtol=0, atol=1e-14)
    np.testing.assert_allclose(norm_adv.numpy(), ref_norm, rtol=0, atol=1e-13)


def _clip_branches(ratio, advantages):
    """Counts of steps where the minimum is the clipped term (A > 0, rho > 1 + eps; A < 0,
    rho < 1 - eps) and where it is the unclipped one."""
    upper = (advantages > 0) & (ratio > 1 + CLIP)
    lower = (advantages < 0) & (ratio < 1 - CLIP)
    return int(upper.sum()), int(lower.sum()), int((~upper & ~lower).sum())


@pytest.mark.parametrize("hidden,n_arms,seed", [(7, 3, 0), (32, 5, 1)])
def test_torch_ppo_loss_and_gradient_equal_the_engine(hidden, n_arms, seed):
    """At parameters moved away from the rollout's (so ratios leave [1 - eps, 1 + eps] on both
    sides), the torch loss and its autograd gradient equal ``ppo_loss_terms`` and
    ``gru_backward(dlogits, dvalues)``."""
    learner, _, ro = _engine_rollout(n_arms=n_arms, hidden=hidden, seed=seed)
    trials = tr.engine_trials(ro)
    torch_rl2 = tr.TorchRL2(n_arms, hidden, learner.params, gamma=0.9, gae_lambda=0.8)
    norm_adv, returns = torch_rl2.advantages(trials)
    params = learner.params + np.random.default_rng(seed + 5).normal(0.0, 0.25, learner.params.shape)

    h0 = np.zeros((ro.inputs.shape[1], hidden))
    logits, values, _ = active.gru.gru_forward(params, ro.inputs, h0, ro.resets)
    args = (trials.action.numpy(), trials.logp.numpy(), norm_adv.numpy(), returns.numpy(), ro.mask)
    loss, dlogits, dvalues, stats = ppo_loss_terms(logits, values, *args, CLIP, VALUE_COEF,
                                                   ENTROPY_COEF)
    grad = active.gru.gru_backward(params, ro.inputs, h0, ro.resets, dlogits, dvalues)

    policy = _policy(learner, params)
    torch_loss, torch_stats = tr.ppo_loss(policy, trials.inputs, trials.action, trials.logp,
                                          norm_adv, returns, CLIP, VALUE_COEF, ENTROPY_COEF)
    torch_loss.backward()
    torch_grad = policy.engine_grad()

    ratio = np.exp(np.take_along_axis(
        logits - np.log(np.exp(logits).sum(-1, keepdims=True)), args[0][..., None], 2)[..., 0] - args[1])
    upper, lower, unclipped = _clip_branches(ratio, args[2])
    assert upper > 0 and lower > 0 and unclipped > 0, (upper, lower, unclipped)

    assert torch_loss.item() == pytest.approx(loss, rel=0, abs=1e-12)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert torch_stats[key] == pytest.approx(stats[key], rel=0, abs=1e-12)
    scale = np.abs(grad).max()
    np.testing.assert_allclose(torch_grad, grad, rtol=0, atol=1e-10 * scale)

    # the check can fail: the value and entropy terms each move the gradient far more than the
    # tolerance (a torch loss without value_coef, or with the entropy's sign flipped, is rejected)
    for coefs in ((1.0, ENTROPY_COEF), (VALUE_COEF, -ENTROPY_COEF), (VALUE_COEF, 0.0)):
        _, dl, dv, _ = ppo_loss_terms(logits, values, *args, CLIP, *coefs)
        other = active.gru.gru_backward(params, ro.inputs, h0, ro.resets, dl, dv)
        assert np.abs(other - grad).max() > 1e-6 * scale


def test_torch_update_equals_one_engine_meta_step():
    """From the same parameters, the engine's rollout and the same per-epoch permutations (drawn
    from the same Generator after the rollout, as ``meta_step`` draws them), 4 epochs x 3
    minibatches of torch PPO with Adam and the global-norm clip end at ``meta_step``'s
    parameters."""
    n_trials, hidden = 10, 12
    learner = mf.RL2Learner(1, 3, hidden, episodes_per_trial=2, lr=3e-3, minibatches=3,
                            max_grad_norm=0.05, entropy_coef=ENTROPY_COEF, rng=4)
    batch = mf.BernoulliBandits(3, horizon=4).sample(n_trials, np.random.default_rng(5))
    start = learner.params.copy()
    torch_rl2 = tr.TorchRL2(3, hidden, start, n_pulls=4, episodes_per_trial=2, lr=3e-3,
                            minibatches=3, max_grad_norm=0.05, entropy_coef=ENTROPY_COEF)
    engine_stats = learner.meta_step(batch, np.random.default_rng(6))

    rng = np.random.default_rng(6)  # replay meta_step's draws: the rollout, then the permutations
    ro = rl2_rollout(batch, start, hidden, 2, rng)
    orders = [rng.permutation(n_trials) for _ in range(learner.ppo_epochs)]
    torch_stats = torch_rl2.update(tr.engine_trials(ro), orders=orders)

    assert engine_stats["grad_norm"] > 0.05  # the clip was active
    assert torch_stats["grad_norm"] == pytest.approx(engine_stats["grad_norm"], rel=1e-10)
    moved = np.abs(learner.params - start).max()
    assert moved > 1e-3
    np.testing.assert_allclose(torch_rl2.policy.engine_params(), learner.params, rtol=0,
                               atol=1e-10 * moved)


def test_torch_meta_step_runs_and_moves_the_parameters():
    torch_rl2 = tr.TorchRL2(3, 8, n_pulls=5)
    before = torch_rl2.policy.engine_params()
    gen = torch.Generator().manual_seed(0)
    stats = torch_rl2.meta_step(torch.rand(8, 3, generator=gen, dtype=torch.float64), gen)
    assert 0.0 <= stats["mean_trial_return"] <= 5.0
    after = torch_rl2.policy.engine_params()
    assert np.all(np.isfinite(after)) and not np.array_equal(after, before)
