"""The replay pool of the meta-learners (metarl_fast.pool): the per-decision importance-weighted
gradient from replayed episodes against exact dynamic programming, the pool's bookkeeping, and
replay through the learners, the trainer and its checkpoints."""
import json
import os

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.meta import ExactPolicyProblem, MetaLearner, SampledPolicyProblem
from metarl_fast.pool import EpisodePool, ReplayConfig, task_keys
from metarl_fast.tasks import TaskBatch

BACKENDS = ["numpy", "cython"]


def _replicas(n, seed=4, S=3, A=2, horizon=4):
    """``n`` copies of one random MDP, each its own pool task (reward_std differs; it is unused
    without reward noise, but part of the task's key)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(S), size=(S, A))
    R = rng.normal(size=(S, A))
    terminal = np.zeros(S, dtype=bool)
    terminal[-1] = True
    return TaskBatch(np.broadcast_to(P, (n, S, A, S)).copy(), np.broadcast_to(R, (n, S, A)).copy(),
                     horizon, terminal=np.broadcast_to(terminal, (n, S)).copy(),
                     reward_std=1.0 + 1e-6 * np.arange(n))


def _switch(n, horizon=3):
    """``n`` copies of a task whose value hinges on the *later* actions: from state 0, action 1
    moves to state 1, where action 1 earns +3 and action 0 earns -3 at every step.  A policy mu
    that prefers action 0 there and a pi that prefers action 1 have very different Q-values, so
    replayed returns must weight each reward by the ratios of every action before it."""
    S, A = 2, 2
    P = np.zeros((S, A, S))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 1] = 1.0
    R = np.array([[0.0, 0.0], [-3.0, 3.0]])
    return TaskBatch(np.broadcast_to(P, (n, S, A, S)).copy(), np.broadcast_to(R, (n, S, A)).copy(),
                     horizon, start=np.broadcast_to([1.0, 0.0], (n, S)).copy(),
                     reward_std=1.0 + 1e-6 * np.arange(n))


def _estimates(n_fresh, n_replayed, rho_bar, replicas=20_000, gamma=0.9, seed=0, spread=1.0,
               switch=False):
    """Per replica: the task's gradient at pi from ``n_fresh`` fresh episodes and its
    ``n_replayed`` stored episodes of an earlier policy mu; and the exact gradient at pi."""
    tasks = _switch(replicas) if switch else _replicas(replicas)
    S, A = tasks.n_states, tasks.n_actions
    policy = mf.TabularSoftmaxPolicy(S, A)
    rng = np.random.default_rng(seed)
    if switch:
        theta_mu = np.tile([0.0, 0.0, 1.5, -1.5], (replicas, 1))
        theta_pi = np.tile([0.0, 0.0, -1.5, 1.5], (replicas, 1))
    else:
        theta_mu = np.tile(spread * rng.normal(size=S * A), (replicas, 1))
        theta_pi = np.tile(spread * rng.normal(size=S * A), (replicas, 1))
    pool = EpisodePool(ReplayConfig(capacity=replicas * n_replayed * 4, episodes=n_replayed,
                                    order="sequences", rho_bar=rho_bar))
    behaviour = SampledPolicyProblem(policy, tasks, n_replayed, gamma, pool=pool)
    behaviour.sample(theta_mu, rng)  # stores n_replayed episodes of mu per replica
    pool.end_iteration()
    target = SampledPolicyProblem(policy, tasks, n_fresh, gamma, pool=pool)
    data = target.sample(theta_pi, rng)
    assert np.array_equal(np.bincount(np.repeat(np.arange(replicas), 1)), np.ones(replicas))
    estimates = target.grad(theta_pi, data)
    exact = ExactPolicyProblem(policy, tasks[[0]], gamma).grad(theta_pi[:1])[0]
    return estimates, exact, data


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_fresh,n_replayed", [(1, 1), (1, 5), (2, 2), (5, 1)])
def test_untruncated_replay_gradient_is_unbiased(backend, n_fresh, n_replayed):
    """Unbiased at the smallest sample sizes: N fresh + M replayed episodes, 20 000 replications,
    every component within 4.5 standard errors of the exact gradient."""
    with mf.use_backend(backend):
        estimates, exact, data = _estimates(n_fresh, n_replayed, None)
    assert data["replay"]["coef"].shape[0] > 0
    z = _z(estimates, exact)
    assert np.all(np.abs(z) < 4.5), (z, estimates.mean(axis=0), exact)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_fresh,n_replayed", [(1, 2), (1, 5), (2, 2)])
def test_replayed_rewards_carry_the_ratios_of_every_action_before_them(backend, n_fresh, n_replayed):
    """On a task whose later actions decide the return (Q of mu far from Q of pi), still within
    4.5 standard errors of the exact gradient (40 000 replications)."""
    with mf.use_backend(backend):
        estimates, exact, _ = _estimates(n_fresh, n_replayed, None, replicas=40_000, switch=True)
    z = _z(estimates, exact)
    assert np.all(np.abs(z) < 4.5), (z, estimates.mean(axis=0), exact)


def _z(estimates, exact):
    """z-scores per component; a component with no variance (a terminal state's) must be exact."""
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(estimates.shape[0])
    still = se == 0
    np.testing.assert_allclose(mean[still], exact[still], atol=1e-12)
    return (mean[~still] - exact[~still]) / se[~still]


def test_truncated_replay_gradient_is_biased():
    """Truncating each ratio at rho_bar = 1 (the variance bound) biases the estimate when pi and
    mu differ: measured here, 40 000 replications, N = 1 fresh + M = 5 replayed episodes."""
    estimates, exact, _ = _estimates(1, 5, 1.0, replicas=40_000, spread=2.0)
    z = _z(estimates, exact)
    assert np.max(np.abs(z)) > 6, z
    untruncated, exact, _ = _estimates(1, 5, None, replicas=40_000, spread=2.0)
    assert np.max(np.abs(_z(untruncated, exact))) < 4.5


def test_pool_keys_ids_overwrite_and_release():
    tasks = mf.GridNavigation(size=3).sample(6, 0)
    keys = task_keys(tasks)
    goals = [tuple(g) for g in tasks.info["goal"]]
    for i in range(6):
        for j in range(6):
            assert (keys[i] == keys[j]) == (goals[i] == goals[j])
    pool = EpisodePool(ReplayConfig(capacity=200, episodes=3))
    ids = pool.task_ids(tasks)
    assert np.array_equal(ids == ids[:, None], keys_equal := np.array([[a == b for b in keys] for a in keys]))
    assert ids.max() < 6 and keys_equal.any()
    policy = mf.TabularSoftmaxPolicy(tasks.n_states, tasks.n_actions)
    problem = SampledPolicyProblem(policy, tasks, 4, pool=pool)
    rng = np.random.default_rng(1)
    theta = np.zeros((6, policy.n_params))
    data = problem.sample(theta, rng)
    assert "replay" not in data  # nothing stored in an earlier iteration yet
    fresh = EpisodePool(ReplayConfig(capacity=200, episodes=3))
    fresh.store(data["traj"], fresh.task_ids(tasks))
    assert fresh.replay(fresh.task_ids(tasks), rng) is None  # stored in this iteration: not yet
    fresh.end_iteration()
    assert fresh.replay(fresh.task_ids(tasks), rng) is not None
    assert len(pool.buffer) == min(200, data["traj"].n_steps)
    # every stored episode's steps are in the ring, labelled with its task's id
    eps = pool._episodes
    for task_id, start, length, _ in eps:
        slots = (start + np.arange(length)) % 200
        assert np.all(pool.buffer.task_id[slots] == task_id)
        assert start >= pool.buffer.n_added - len(pool.buffer)
    pool.end_iteration()
    for _ in range(30):  # the ring overwrites: ids of tasks with nothing left are given back
        other = mf.GridNavigation(size=3).sample(6, rng)
        SampledPolicyProblem(policy, other, 4, pool=pool).sample(theta, rng)
        pool.end_iteration()
    held = set(np.unique(pool._episodes[:, 0]).tolist())
    assert set(pool._keys) == held and len(held) <= 8
    assert pool.buffer._tasks.meta.shape[0] <= 16  # the per-task table stays small


@pytest.mark.parametrize("order", ["uniform", "sequences"])
def test_replay_draws_the_tasks_own_older_episodes(order):
    tasks = _replicas(3)
    policy = mf.TabularSoftmaxPolicy(tasks.n_states, tasks.n_actions)
    pool = EpisodePool(ReplayConfig(capacity=10_000, episodes=4, order=order))
    rng = np.random.default_rng(2)
    theta = np.zeros((3, policy.n_params))
    for _ in range(3):
        SampledPolicyProblem(policy, tasks, 5, pool=pool).sample(theta, rng)
        pool.end_iteration()
    ids = pool.task_ids(tasks)
    replayed, owner, lengths = pool.replay(ids, rng)
    assert np.array_equal(np.bincount(owner), [4, 4, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for e in range(owner.shape[0]):
        rows = slice(offsets[e], offsets[e + 1])
        assert np.all(replayed.task_id[rows] == ids[owner[e]])
        assert np.all(np.diff(replayed.episode_id[rows]) == 0)  # one whole episode
        assert replayed.terminated[rows][-1] and not replayed.terminated[rows][:-1].any()
    if order == "sequences":  # consecutive episodes of the task, in time order
        for t in range(3):
            firsts = replayed.episode_id[offsets[:-1][owner == t]]
            assert np.all(np.diff(firsts) > 0)


@pytest.mark.parametrize("order", ["uniform", "windows"])
def test_learners_train_with_replay_and_resume_bit_identically(tmp_path, order):
    base = ["train", "--tasks", "gridnav", "--grid-size", "4", "--iterations", "6", "--meta-batch", "4",
            "--episodes", "3", "--eval-every", "3", "--eval-tasks", "10", "--checkpoint-every", "3",
            "--replay", "--replay-capacity", "2000", "--replay-batch", "4", "--replay-order", order]
    if order == "windows":
        base += ["--replay-window", "3", "--inner-estimator", "actor-critic", "--rho-bar", "1"]
    from metarl_fast.cli import main

    for algo in ("maml", "fomaml", "reptile", "multitask"):
        full, part = tmp_path / f"{algo}-full", tmp_path / f"{algo}-part"
        assert main(base + ["--algo", algo, "--out", str(full)]) == 0
        assert main(base[:6] + ["3"] + base[7:] + ["--algo", algo, "--out", str(part)]) == 0
        # continue the 3-iteration run to 6 from its checkpoint (the pool included)
        import tomllib

        with open(part / "config.toml", "rb") as fh:
            assert tomllib.load(fh)["replay"] is True
        from metarl_fast.trainer import MetaTrainer, TrainConfig

        config, arrays = MetaTrainer.read_checkpoint(str(part / "checkpoint.npz"))
        assert "learner_pool_episodes" in arrays and int(arrays["learner_pool_counters"][2]) == 3
        import dataclasses

        trainer = MetaTrainer(dataclasses.replace(config, iterations=6), str(part))
        trainer.run(resume=True)
        lines = [json.loads(x) for x in open(full / "metrics.jsonl")]
        resumed = [json.loads(x) for x in open(part / "metrics.jsonl")]
        assert lines == resumed
        assert lines[-1]["replayed_episodes"] > 0 and lines[-1]["pool_tasks"] > 0
        assert lines[0]["replayed_episodes"] == 0  # nothing from earlier iterations yet
        a = MetaTrainer.read_checkpoint(str(full / "checkpoint.npz"))[1]
        b = MetaTrainer.read_checkpoint(str(part / "checkpoint.npz"))[1]
        for key in a:
            if key.startswith("learner_"):
                np.testing.assert_array_equal(a[key], b[key])


def test_replay_options_are_checked():
    from metarl_fast.trainer import TrainConfig

    with pytest.raises(ValueError, match="replay needs the sampled estimator"):
        TrainConfig(replay=True, estimator="exact").validate()
    with pytest.raises(ValueError, match="whole episodes .* REINFORCE"):
        TrainConfig(replay=True, inner_estimator="actor-critic").validate()
    with pytest.raises(ValueError, match="windows need the actor-critic"):
        TrainConfig(replay=True, replay_order="windows").validate()
    with pytest.raises(ValueError, match="windows need fresh episodes"):
        TrainConfig(replay=True, replay_order="windows", inner_estimator="actor-critic",
                    algo="fomaml", replay_ratio=2).validate()
    with pytest.raises(ValueError, match="replay window"):
        TrainConfig(replay=True, replay_order="windows", inner_estimator="actor-critic",
                    replay_window=0).validate()
    with pytest.raises(ValueError, match="windows need the actor-critic"):
        MetaLearner(mf.TabularSoftmaxPolicy(2, 2), "maml", replay=ReplayConfig(order="windows"))
    with pytest.raises(ValueError, match="rho-bar"):
        TrainConfig(replay=True, rho_bar=0.5).validate()
    with pytest.raises(ValueError, match="replay order"):
        TrainConfig(replay=True, replay_order="lifo").validate()
    with pytest.raises(ValueError, match="replay capacity"):
        TrainConfig(replay=True, replay_capacity=0).validate()
    with pytest.raises(ValueError, match="replay needs"):
        MetaLearner(mf.TabularSoftmaxPolicy(2, 2), "maml", estimator="exact", replay=ReplayConfig())


def test_replay_ratio_adds_first_order_updates_from_the_pool_alone():
    """ratio 2: a second meta-update per iteration from replayed episodes of tasks drawn from the
    pool (this iteration's episodes included), with no extra environment step."""
    tasks = mf.GridNavigation(size=4)
    rng_tasks = np.random.default_rng(0)
    batches = [tasks.sample(5, rng_tasks) for _ in range(3)]
    results = {}
    for ratio in (1, 2):
        policy = mf.TabularSoftmaxPolicy(16, 5)
        learner = MetaLearner(policy, "fomaml", inner_lr=0.5, episodes_per_task=4,
                              replay=ReplayConfig(capacity=5000, episodes=3, ratio=ratio))
        rng = np.random.default_rng(1)
        steps = [learner.meta_step(b, rng)["env_steps"] for b in batches]
        results[ratio] = (policy.params.copy(), steps, learner.optimizer.steps)
    assert results[2][2] > results[1][2] == 3  # more optimizer steps...
    assert not np.allclose(results[1][0], results[2][0])
    assert results[1][1][0] == results[2][1][0]  # ...for the same environment steps
    with pytest.raises(ValueError, match="first-order"):
        MetaLearner(mf.TabularSoftmaxPolicy(2, 2), "maml", replay=ReplayConfig(ratio=2))
    from metarl_fast.trainer import TrainConfig

    with pytest.raises(ValueError, match="first-order"):
        TrainConfig(replay=True, replay_ratio=2).validate()


@pytest.mark.parametrize("algo", ["fomaml", "reptile", "multitask"])
def test_replay_ratio_runs_resume_bit_identically(tmp_path, algo):
    from metarl_fast.cli import main

    base = ["train", "--tasks", "gridnav", "--grid-size", "4", "--iterations", "4", "--meta-batch", "4",
            "--episodes", "3", "--eval-every", "2", "--eval-tasks", "10", "--checkpoint-every", "2",
            "--replay", "--replay-capacity", "3000", "--replay-batch", "3", "--replay-ratio", "3",
            "--replay-order", "sequences", "--rho-bar", "2", "--algo", algo]
    assert main(base + ["--out", str(tmp_path / "full")]) == 0
    assert main(base[:6] + ["2"] + base[7:] + ["--out", str(tmp_path / "part")]) == 0
    import dataclasses

    from metarl_fast.trainer import MetaTrainer

    config, _ = MetaTrainer.read_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    assert config.replay_ratio == 3 and config.rho_bar == 2.0
    MetaTrainer(dataclasses.replace(config, iterations=4), str(tmp_path / "part")).run(resume=True)
    full = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
    part = [json.loads(x) for x in open(tmp_path / "part" / "metrics.jsonl")]
    assert full == part
    assert full[-1]["fraction_truncated"] is not None and full[-1]["replayed_episodes"] > 0


# -- windows: time-ordered replay, returns computed over each window by V-trace ------------------

def test_replay_windows_cut_the_tasks_older_episodes_at_window_boundaries():
    tasks = _replicas(3, horizon=9)
    policy = mf.TabularSoftmaxPolicy(tasks.n_states, tasks.n_actions)
    L = 3
    pool = EpisodePool(ReplayConfig(capacity=10_000, episodes=4, order="windows", window=L))
    rng = np.random.default_rng(2)
    theta = np.zeros((3, policy.n_params))
    for _ in range(3):
        SampledPolicyProblem(policy, tasks, 5, pool=pool, advantage="actor-critic").sample(theta, rng)
        pool.end_iteration()
    ids = pool.task_ids(tasks)
    starts = {}  # global position of each stored episode's first step, by episode id
    for task_id, start, length, _ in pool._episodes:
        starts[int(pool.buffer.episode_id[start % pool.buffer.capacity])] = (task_id, start, length)
    counts = np.zeros(pool.buffer.capacity)
    for _ in range(300):
        batch, owner, lengths, first_step, scale = pool.replay_windows(ids, rng)
        assert np.array_equal(np.bincount(owner), [4, 4, 4])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for w in range(owner.shape[0]):
            rows = slice(offsets[w], offsets[w + 1])
            episode = int(batch.episode_id[rows][0])
            task_id, start, length = starts[episode]
            assert task_id == ids[owner[w]] and np.all(batch.task_id[rows] == task_id)
            assert np.all(batch.episode_id[rows] == episode)
            assert first_step[w] % L == 0  # aligned on the episode's first step
            assert lengths[w] == min(L, length - first_step[w])
            np.testing.assert_array_equal(batch.indices[rows] % pool.buffer.capacity,
                                          (start + first_step[w] + np.arange(lengths[w])) % pool.buffer.capacity)
            held = pool._episodes[pool._episodes[:, 0] == task_id]
            assert scale[w] == pytest.approx(held[:, 2].sum() / held.shape[0] / lengths[w])
            counts[batch.indices[rows]] += 1
    # a window is drawn with probability (its length) / (the task's stored steps): 1200 draws per
    # task, every full window's count within 5 standard deviations of its expectation
    for task_id in np.unique(pool._episodes[:, 0]):
        held = pool._episodes[pool._episodes[:, 0] == task_id]
        p_window = L / held[:, 2].sum()
        for _, start, length, _ in held:
            full = (start + np.arange(0, length - L + 1, L)) % pool.buffer.capacity
            z = (counts[full] - 1200 * p_window) / np.sqrt(1200 * p_window * (1 - p_window))
            assert np.all(np.abs(z) < 5), z


def _window_estimates(replicas, n_stored, window, theta_mu_is_pi=True, seed=0, gamma=0.9,
                      rho_bar=None):
    """Per replica: the windows' gradient estimate (window_coefficients with the exact V^pi as
    critic) from ``n_stored`` episodes of mu; and the exact (discounted) gradient at pi."""
    from metarl_fast.meta import window_coefficients
    from metarl_fast.policy import log_softmax, softmax

    tasks = _replicas(replicas, horizon=60)  # absorbing state reached: the horizon almost never cuts
    S, A = tasks.n_states, tasks.n_actions
    policy = mf.TabularSoftmaxPolicy(S, A)
    rng = np.random.default_rng(seed)
    theta_pi = rng.normal(size=S * A)
    theta_mu = theta_pi if theta_mu_is_pi else rng.normal(size=S * A)
    pool = EpisodePool(ReplayConfig(capacity=replicas * n_stored * 80, episodes=2,
                                    order="windows", window=window, rho_bar=rho_bar))
    behaviour = SampledPolicyProblem(policy, tasks, n_stored, gamma, pool=pool, advantage="actor-critic")
    behaviour.sample(np.tile(theta_mu, (replicas, 1)), rng)
    pool.end_iteration()
    pi = softmax(theta_pi.reshape(S, A))
    P, R, terminal = tasks.P[0], tasks.R[0], tasks.terminal[0]
    live = np.flatnonzero(~terminal)
    v = np.zeros(S)
    p_pi = np.einsum("sa,sat->st", pi, P)[np.ix_(live, live)]
    v[live] = np.linalg.solve(np.eye(live.size) - gamma * p_pi, (pi * R).sum(axis=1)[live])
    logits = np.tile(theta_pi.reshape(S, A), (replicas, 1, 1))
    windows = pool.replay_windows(behaviour.pool_ids, rng)
    terms = window_coefficients(logits, windows, replicas, gamma, pool, np.tile(v, replicas), 0,
                                np.zeros(0, dtype=np.int64))
    table = np.zeros((replicas * S, A))
    onehot = np.eye(A)[terms["action"]] - pi[terms["key"] % S]
    np.add.at(table, terms["key"], terms["coef"][:, None] * onehot)
    exact = ExactPolicyProblem(policy, tasks[[0]], gamma).grad(theta_pi[None])[0]
    return table.reshape(replicas, S * A), exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_stored,window", [(1, 1), (1, 2), (2, 3)])
def test_on_policy_windows_with_the_exact_critic_are_unbiased(backend, n_stored, window):
    """Windows of 1-3 steps cut the episodes (mean length 3); with the exact V^pi bootstrapping each
    cut and the data of pi itself, the windows' estimate is the exact gradient in expectation:
    the cuts, the time steps gamma^t and the windows' weights are right (20 000 replications)."""
    with mf.use_backend(backend):
        estimates, exact = _window_estimates(20_000, n_stored, window)
    z = _z(estimates, exact)
    assert np.all(np.abs(z) < 4.5), (z, estimates.mean(axis=0), exact)


def test_off_policy_windows_are_biased_by_the_behaviours_state_distribution():
    """Off-policy, V-trace corrects the actions but not the states the older policy visited:
    measured bias (documented in metarl_fast.pool), 40 000 replications."""
    estimates, exact = _window_estimates(40_000, 2, 2, theta_mu_is_pi=False, seed=3)
    z = _z(estimates, exact)
    assert np.max(np.abs(z)) > 6, z


def test_truncated_windows_trade_bias_for_variance():
    """rho_bar = 1 (V-trace's rho_bar and c_bar) on the same windows: other estimates, with a
    smaller spread per replica."""
    untruncated, _ = _window_estimates(4000, 2, 3, theta_mu_is_pi=False, seed=5)
    truncated, _ = _window_estimates(4000, 2, 3, theta_mu_is_pi=False, seed=5, rho_bar=1.0)
    assert not np.allclose(untruncated, truncated)
    assert np.all(truncated.std(axis=0) <= untruncated.std(axis=0) + 1e-12)
