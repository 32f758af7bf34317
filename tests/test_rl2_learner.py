"""RL2Learner (issue 17): PPO over whole RL^2 trials of a GRU policy.  The analytic loss gradient
against finite differences, GAE across episode boundaries against a hand computation, learning on
2-armed bandits, bit-for-bit resume, validation."""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import rl2
from metarl_fast._backend import active
from metarl_fast.rl2_learner import RL2Learner, gae_trials, ppo_loss_terms, to_time_major
from metarl_fast.tasks import TaskBatch


def _tasks_of_unequal_length(rng):
    """Two 3-state, 2-action tasks with horizon 4; state 2 is terminal in task 0 only, so its
    trial (2 episodes) is shorter than task 1's and the minibatch has padding slots."""
    P = rng.dirichlet(np.ones(3), (2, 3, 2))
    P[0, :, :, 2] += 1.0
    P /= P.sum(axis=3, keepdims=True)
    terminal = np.zeros((2, 3), dtype=bool)
    terminal[0, 2] = True
    return TaskBatch(P, rng.normal(size=(2, 3, 2)), 4, terminal=terminal, reward_noise="gaussian")


def test_analytic_loss_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(3)
    hidden, batch = 4, _tasks_of_unequal_length(rng)
    D = rl2.rl2_input_dim(3, 2)
    behaviour = active.gru.gru_init(D, hidden, 2, rng)
    ro = rl2.rl2_rollout(batch, behaviour, hidden, 2, rng)
    assert ro.trial_length[0] < ro.trial_length[1]  # padding slots in trial 0's column
    mask = ro.mask
    learner = RL2Learner(3, 2, hidden, episodes_per_trial=2, gamma=0.9, gae_lambda=0.8, rng=0)
    advantages, returns = learner.advantages(ro)
    actions, old_logp = to_time_major(ro.action, mask), to_time_major(ro.logp, mask)
    # the policy being updated has moved away from the behaviour policy: clipping is active
    params = behaviour + 0.25 * rng.standard_normal(behaviour.size)
    h0 = np.zeros((2, hidden))
    clip, value_coef, entropy_coef = 0.2, 0.7, 0.05

    def loss(p):
        logits, values, _ = active.gru.gru_forward(p, ro.inputs, h0, ro.resets)
        return ppo_loss_terms(logits, values, actions, old_logp, advantages, returns, mask,
                              clip, value_coef, entropy_coef)

    _, dlogits, dvalues, stats = loss(params)
    logits, _, _ = active.gru.gru_forward(params, ro.inputs, h0, ro.resets)
    new_logp = np.take_along_axis(logits - np.log(np.exp(logits).sum(2, keepdims=True)),
                                  actions[..., None], axis=2)[..., 0]
    ratio = np.exp(new_logp - old_logp)[mask]
    clipped_min = ratio * advantages[mask] > np.clip(ratio, 1 - clip, 1 + clip) * advantages[mask]
    assert 0 < clipped_min.sum() < clipped_min.size  # both branches of the minimum occur
    assert 0 < stats["clip_fraction"] < 1
    assert np.all(dlogits[~mask] == 0) and np.all(dvalues[~mask] == 0)

    grad = active.gru.gru_backward(params, ro.inputs, h0, ro.resets, dlogits, dvalues)
    eps = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        step = np.zeros_like(params)
        step[i] = eps
        numeric[i] = (loss(params + step)[0] - loss(params - step)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_gae_of_two_numbers_by_hand():
    # one trial of 2 steps, gamma 0.5, lambda 0.5: delta1 = 1 - 2 = -1 (no value after the last
    # step), delta0 = 0 + 0.5 * 2 - 1 = 0; A1 = -1, A0 = 0 + 0.25 * -1
    adv = gae_trials(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]),
                     np.array([[True], [True]]), 0.5, 0.5)
    np.testing.assert_allclose(adv[:, 0], [-0.25, -1.0], rtol=0, atol=1e-15)


def test_gae_runs_across_episode_boundaries_of_a_trial(backend):
    """A rollout of 2 episodes per trial; the advantages by the explicit sum
    ``A_k = sum_j (gamma lambda)^j delta_{k+j}`` over the whole trial, the value of the next step
    bootstrapped at the episode boundary too."""
    rng = np.random.default_rng(5)
    batch = _tasks_of_unequal_length(rng)
    learner = RL2Learner(3, 2, 5, episodes_per_trial=2, gamma=0.9, gae_lambda=0.7, rng=1)
    ro = rl2.rl2_rollout(batch, learner.params, 5, 2, rng)
    advantages, returns = learner.advantages(ro)
    gamma, lam = 0.9, 0.7
    for trial in range(2):
        sel = ro.trial_id == trial
        r, v, ep = ro.reward[sel], ro.value[sel], ro.episode_id[sel]
        n = r.size
        assert ep[0] == 0 and ep[-1] == 1  # the trial has an episode boundary inside
        next_v = np.append(v[1:], 0.0)  # the next step's value, at the boundary too; 0 at the end
        delta = r + gamma * next_v - v
        hand = np.array([sum((gamma * lam) ** j * delta[k + j] for j in range(n - k))
                         for k in range(n)])
        np.testing.assert_allclose(advantages[:n, trial], hand, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(returns[:n, trial], hand + v, rtol=1e-12, atol=1e-12)
        assert np.all(advantages[n:, trial] == 0)


def test_meta_training_learns_to_explore_two_armed_bandits():
    """Random play earns 5.0 over 10 pulls, the Bayes-optimal agent 6.02; 60 PPO meta-steps of
    200 trials take the GRU clearly above random (~5.9 on either backend; this runs on the active
    one only: ~1 s compiled, ~6 s in NumPy)."""
    family = mf.BernoulliBandits(n_arms=2, horizon=10)
    learner = RL2Learner(1, 2, 16, lr=1e-2, rng=0)
    rng = np.random.default_rng(10)
    for _ in range(60):
        stats = learner.meta_step(family.sample(200, rng), rng)
    assert stats["iteration"] == 60 and learner.iteration == 60
    returns = learner.evaluate(family.sample(5000, np.random.default_rng(99)), 5)
    assert returns.shape == (5000,)
    assert returns.mean() > 5.6, returns.mean()  # ~15 standard errors above random


def test_state_dict_resume_continues_bit_for_bit(backend):
    family = mf.BernoulliBandits(n_arms=3, horizon=6)
    kwargs = dict(episodes_per_trial=2, lr=3e-3, minibatches=3, ppo_epochs=2)
    first = RL2Learner(1, 3, 8, rng=0, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(3):
        first.meta_step(family.sample(30, rng), rng)
    saved = first.state_dict()
    frozen = {k: np.copy(v) for k, v in saved.items()}
    stats_a = [first.meta_step(family.sample(30, np.random.default_rng(s)), s) for s in (7, 8)]

    second = RL2Learner(1, 3, 8, rng=123, **kwargs)
    second.load_state_dict(saved)
    assert second.iteration == 3
    stats_b = [second.meta_step(family.sample(30, np.random.default_rng(s)), s) for s in (7, 8)]
    assert stats_a == stats_b
    assert np.array_equal(first.params, second.params)
    assert np.array_equal(first.optimizer.state, second.optimizer.state)
    assert first.iteration == second.iteration == 5
    for key, value in frozen.items():  # state_dict holds copies, not views of the live state
        assert np.array_equal(saved[key], value)


def test_load_state_dict_rejects_another_shape_and_changes_nothing():
    small = RL2Learner(1, 3, 8, rng=0)
    other = RL2Learner(1, 3, 4, rng=1)
    before = small.params.copy()
    with pytest.raises(ValueError, match=r"state_dict is for .*hidden"):
        small.load_state_dict(other.state_dict())
    broken = small.state_dict()
    broken["adam_state"] = broken["adam_state"][:, :-1]
    with pytest.raises(ValueError, match="state_dict state has shape"):
        small.load_state_dict(broken)
    missing = small.state_dict()
    del missing["params"]
    with pytest.raises(ValueError, match="state_dict is missing 'params'"):
        small.load_state_dict(missing)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        small.load_state_dict([1, 2])
    assert np.array_equal(small.params, before)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_states=0), ValueError, "n_states must be >= 1"),
    (dict(n_actions=2.5), TypeError, "n_actions must be an int"),
    (dict(hidden=513), ValueError, r"hidden must be in 1\.\.512"),
    (dict(hidden=0), ValueError, "hidden must be >= 1"),
    (dict(episodes_per_trial=0), ValueError, "episodes_per_trial must be >= 1"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(lr="fast"), TypeError, "lr must be a real number"),
    (dict(clip=-0.1), ValueError, "clip must be > 0"),
    (dict(gae_lambda=1.5), ValueError, "gae_lambda must be <= 1"),
    (dict(gamma=float("nan")), ValueError, "gamma must be finite"),
    (dict(value_coef=-1.0), ValueError, "value_coef must be >= 0"),
    (dict(entropy_coef=-0.01), ValueError, "entropy_coef must be >= 0"),
    (dict(ppo_epochs=0), ValueError, "ppo_epochs must be >= 1"),
    (dict(minibatches=True), TypeError, "minibatches must be an int"),
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm must be > 0"),
    (dict(rng="seed"), TypeError, "rng must be a numpy.random.Generator"),
])
def test_constructor_validates_every_argument(kwargs, error, match):
    args = dict(n_states=1, n_actions=2, hidden=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        RL2Learner(args.pop("n_states"), args.pop("n_actions"), args.pop("hidden"), **args)


def test_meta_step_and_evaluate_validate_their_arguments():
    learner = RL2Learner(1, 2, 4, minibatches=4, rng=0)
    bandits = mf.BernoulliBandits(n_arms=2, horizon=3).sample(10, np.random.default_rng(0))
    with pytest.raises(TypeError, match="task_batch must be a metarl_fast.tasks.TaskBatch"):
        learner.meta_step("tasks", 0)
    with pytest.raises(ValueError, match="this learner was built for n_states=1, n_actions=2"):
        learner.meta_step(mf.BernoulliBandits(n_arms=3, horizon=3).sample(
            10, np.random.default_rng(0)), 0)
    with pytest.raises(ValueError, match="fewer than minibatches=4"):
        learner.meta_step(bandits[:3], 0)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        learner.meta_step(bandits, 1.5)
    with pytest.raises(TypeError, match="task_batch must be a metarl_fast.tasks.TaskBatch"):
        learner.evaluate(None, 0)
    with pytest.raises(ValueError, match="rng must be a non-negative int seed"):
        learner.evaluate(bandits, -1)
    before = learner.params.copy()
    learner.evaluate(bandits, 0)
    assert np.array_equal(learner.params, before) and learner.iteration == 0


def test_gae_trials_validates_its_arguments():
    ones = np.ones((2, 1))
    with pytest.raises(TypeError, match="mask must be a bool"):
        gae_trials(ones, ones, ones, 0.9, 0.9)
    with pytest.raises(ValueError, match="mask must be a prefix of True"):
        gae_trials(ones, ones, np.array([[False], [True]]), 0.9, 0.9)
    with pytest.raises(ValueError, match=r"values must have the shape of mask \(2, 1\)"):
        gae_trials(ones, np.ones((3, 1)), np.ones((2, 1), bool), 0.9, 0.9)
    with pytest.raises(ValueError, match="gamma must be <= 1"):
        gae_trials(ones, ones, np.ones((2, 1), bool), 1.1, 0.9)


def test_value_normalisation_keeps_the_statistics_of_every_return_and_maps_the_head():
    """``value_stats`` after two meta-steps are the count, mean and sum of squared deviations of
    both batches' GAE returns together; GAE uses ``V = mean + std * head`` with the statistics
    of the returns before the batch."""
    family = mf.BernoulliBandits(n_arms=3, horizon=7)
    learner = RL2Learner(1, 3, 6, episodes_per_trial=2, minibatches=2, lr=1e-2, rng=0)
    seen = []
    for seed in (1, 2):
        batch = family.sample(12, np.random.default_rng(seed))
        # the returns this step trains on: GAE on the rollout with the statistics so far
        ro = rl2.rl2_rollout(batch, learner.params, learner.hidden, 2, np.random.default_rng(seed))
        mean, std = learner.value_scale()
        values = to_time_major(ro.value, ro.mask) * std + mean
        adv = gae_trials(to_time_major(ro.reward, ro.mask), np.where(ro.mask, values, 0.0), ro.mask,
                         learner.gamma, learner.gae_lambda)
        seen.append((adv + values)[ro.mask])
        np.testing.assert_allclose(learner.advantages(ro)[0], adv, rtol=0, atol=1e-12)
        learner.meta_step(batch, np.random.default_rng(seed))
        returns = np.concatenate(seen)
        count, mean, m2 = learner.value_stats
        assert count == returns.size
        assert mean == pytest.approx(returns.mean(), rel=1e-12)
        assert m2 == pytest.approx(((returns - returns.mean()) ** 2).sum(), rel=1e-10)
    assert learner.value_scale() == pytest.approx((returns.mean(), returns.std()), rel=1e-10)
    off = RL2Learner(1, 3, 6, normalize_values=False, rng=0)
    off.meta_step(family.sample(12, np.random.default_rng(1)), 1)
    assert off.value_scale() == (0.0, 1.0) and np.all(off.value_stats == 0)
    with pytest.raises(TypeError, match="normalize_values must be a bool"):
        RL2Learner(1, 3, 6, normalize_values=1)


def test_long_trials_learn_with_value_normalisation_and_stall_without():
    """100 pulls of 2 arms at gamma = 0.99: returns-to-go reach ~30, so the unnormalised value
    loss dominates the clipped gradient and the policy stays at random play (50); with value
    normalisation 60 meta-steps of 100 trials reach ~61 (the best arm every pull: 66.7)."""
    family = mf.BernoulliBandits(n_arms=2, horizon=100)
    test = family.sample(2000, np.random.default_rng(99))
    means = {}
    for normalize in (True, False):
        learner = RL2Learner(1, 2, 16, lr=3e-3, gamma=0.99, normalize_values=normalize, rng=0)
        rng = np.random.default_rng(1)
        for _ in range(60):
            learner.meta_step(family.sample(100, rng), rng)
        means[normalize] = learner.evaluate(test, 5).mean()
    assert means[True] > 57.0, means  # random play: 50 +- 0.5 (2 standard errors)
    assert means[False] < 54.0, means


def test_state_dict_carries_the_value_statistics():
    family = mf.BernoulliBandits(n_arms=2, horizon=5)
    learner = RL2Learner(1, 2, 4, rng=0)
    learner.meta_step(family.sample(8, np.random.default_rng(0)), 0)
    saved = learner.state_dict()
    other = RL2Learner(1, 2, 4, rng=1)
    other.load_state_dict(saved)
    assert np.array_equal(other.value_stats, learner.value_stats) and other.value_stats[0] > 0
    before = other.value_stats.copy()
    for key, bad, match in (("value_stats", np.array([1.0, np.nan, 0.0]), "value_stats must be 3 finite"),
                            ("value_stats", np.array([-1.0, 0.0, 0.0]), "value_stats must be 3 finite"),
                            ("value_stats", np.zeros(2), "value_stats must be 3 finite"),
                            ("normalize_values", np.array(1), "normalize_values must be a bool"),
                            ("version", np.array(1), "state_dict has version 1, expected 2")):
        broken = dict(saved, **{key: bad})
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(broken)
    with pytest.raises(ValueError, match="saved with normalize_values=True"):
        RL2Learner(1, 2, 4, normalize_values=False, rng=0).load_state_dict(saved)
    assert np.array_equal(other.value_stats, before)


def test_update_on_a_given_rollout_is_meta_steps_second_half():
    family = mf.BernoulliBandits(n_arms=3, horizon=5)
    batch = family.sample(12, np.random.default_rng(0))
    a = RL2Learner(1, 3, 6, minibatches=3, rng=0)
    b = RL2Learner(1, 3, 6, minibatches=3, rng=0)
    stats_a = a.meta_step(batch, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    ro = rl2.rl2_rollout(batch, b.params, b.hidden, 1, rng)
    stats_b = b.update(ro, rng)
    assert stats_a == stats_b and np.array_equal(a.params, b.params) and b.iteration == 1
    with pytest.raises(TypeError, match="rollout must be a metarl_fast.rl2.RL2Rollout"):
        b.update(batch, 0)
    with pytest.raises(ValueError, match="rollout has 2 trials, fewer than minibatches=3"):
        b.update(rl2.rl2_rollout(batch[:2], b.params, b.hidden, 1, 0), 0)
    other = rl2.rl2_rollout(mf.BernoulliBandits(n_arms=2, horizon=5).sample(4, np.random.default_rng(0)),
                            RL2Learner(1, 2, 6, rng=0).params, 6, 1, 0)
    with pytest.raises(ValueError, match="rollout has GRU inputs of size 5, this learner's are 6"):
        b.update(other, 0)
    assert b.iteration == 1
