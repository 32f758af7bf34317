"""Fused rollouts and VecEnv: statistics against the task models, structure, buffers, bad input."""
import numpy as np
import pytest

import metarl_fast as mf
from conftest import needs_cython
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.rollout import Trajectories, VecEnv, rollout
from metarl_fast.tasks import (BernoulliBandits, Chain, GridNavigation, TabularFamily, TabularMDPs,
                               TaskBatch)


def dp_value(model, theta):
    """Expected undiscounted return of softmax(theta) on an MDPModel (backward induction)."""
    z = theta - theta.max(axis=1, keepdims=True)
    pi = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    cont = model.P * (~model.terminal)[None, None, :]
    V = np.zeros(model.n_states)
    for _ in range(model.horizon):
        V = (pi * (model.R + cont @ V)).sum(axis=1)
    return float(model.start @ V)


def _within(mean, target, se, k=4.0):
    assert abs(mean - target) < k * se, (mean, target, se)


def test_random_policy_return_on_tabular_mdps(backend):
    batch = TabularMDPs().sample(2000, 1)
    traj = rollout(TabularSoftmaxPolicy(10, 5), batch, 4, np.random.default_rng(2))
    per_task = traj.episode_return.mean(axis=1)
    _within(per_task.mean(), 10.0, per_task.std() / np.sqrt(per_task.size))
    assert traj.n_steps == 2000 * 4 * 10 and np.all(traj.episode_length == 10)
    # reward noise: unit variance around the mean reward of the (state, action) taken
    resid = traj.reward - batch.R[traj.task_id, traj.obs, traj.action]
    assert abs(resid.mean()) < 4 / np.sqrt(resid.size)
    assert abs(resid.var() - 1.0) < 4 * np.sqrt(2 / resid.size)


def test_bandit_reward_per_pull(backend):
    batch = BernoulliBandits(n_arms=5, horizon=10).sample(4000, 3)
    traj = rollout(TabularSoftmaxPolicy(1, 5), batch, 2, 4)
    per_task = traj.reward.reshape(4000, -1).mean(axis=1)
    _within(per_task.mean(), 0.5, per_task.std() / np.sqrt(4000))
    assert set(np.unique(traj.reward)) <= {0.0, 1.0} and np.all(traj.obs == 0)
    # given the arm, rewards are Bernoulli(p_arm): pooled residuals have mean zero
    resid = traj.reward - batch.R[traj.task_id, 0, traj.action]
    assert abs(resid.mean()) < 4 * 0.5 / np.sqrt(resid.size)


@pytest.mark.parametrize("family,seed", [
    (TabularMDPs(), 0), (Chain(), 1), (Chain(slip=0.2, horizon=8), 2),
    (GridNavigation(size=5, horizon=8, goals=[(1, 2), (2, 3)]), 3),
    (BernoulliBandits(n_arms=3, horizon=6), 4),
])
def test_mean_return_matches_dynamic_programming(backend, family, seed):
    """A fixed stochastic policy on one task: Monte Carlo return within 4 standard errors of DP."""
    task = family.sample(1, seed)
    S, A = task.n_states, task.n_actions
    theta = np.random.default_rng(seed).normal(size=(S, A))
    model = task[0].model()
    value = dp_value(model, theta)
    try:
        from metarl_fast.exact import policy_value
    except ImportError:
        pass
    else:
        assert policy_value(model, theta) == pytest.approx(value, rel=1e-10, abs=1e-10)
    copies = task[np.zeros(400, dtype=np.int64)]  # 400 copies of the task: vectorised in both backends
    traj = rollout(TabularSoftmaxPolicy(S, A, theta=theta), copies, 25, np.random.default_rng(seed + 10))
    returns = traj.episode_return.reshape(-1)
    _within(returns.mean(), value, max(returns.std(), 1e-12) / np.sqrt(returns.size))


def test_transition_frequencies_chi_square(backend):
    batch = TabularMDPs(n_states=5, n_actions=3).sample(1, 9)
    copies = batch[np.zeros(200, dtype=np.int64)]
    traj = rollout(TabularSoftmaxPolicy(5, 3), copies, 20, np.random.default_rng(1))
    counts = np.zeros((5, 3, 5))
    np.add.at(counts, (traj.obs, traj.action, traj.next_obs), 1)
    n_sa = counts.sum(axis=2, keepdims=True)
    expected = n_sa * batch.P[0]
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = 5 * 3 * 4
    assert chi2 < df + 5 * np.sqrt(2 * df)


def test_trajectory_structure(backend):
    batch = GridNavigation(size=3, horizon=6, goals=[(1, 2)]).sample(3, 0)
    theta = np.zeros((9, 5))
    theta[:, 3] = 2.0  # mostly right
    traj = rollout(TabularSoftmaxPolicy(9, 5, theta=theta), batch, 7, 5)
    assert isinstance(traj, Trajectories) and traj.n_tasks == 3 and traj.n_episodes == 7
    assert traj.episode_start[-1] == traj.n_steps == traj.episode_length.sum()
    for i in range(3):
        for e in range(7):
            sl = traj.episode(i, e)
            assert np.all(traj.task_id[sl] == i)
            assert traj.obs[sl][0] == 4  # the centre
            np.testing.assert_array_equal(traj.obs[sl][1:], traj.next_obs[sl][:-1])
            assert traj.episode_return[i, e] == pytest.approx(traj.reward[sl].sum())
            assert traj.done[sl][-1] and not traj.done[sl][:-1].any()
            if traj.terminated[sl][-1]:
                assert traj.next_obs[sl][-1] == 5
            else:
                assert traj.truncated[sl][-1] and sl.stop - sl.start == 6
            np.testing.assert_array_equal(traj.step_in_episode[sl], np.arange(sl.stop - sl.start))
    assert traj.terminated.any() and traj.truncated.any()
    assert np.all(traj.terminated & traj.truncated == False)  # noqa: E712
    with pytest.raises(IndexError, match=r"no episode \(3, 0\)"):
        traj.episode(3, 0)


def test_actions_and_logp_match_the_policy_kernels(backend):
    """On a bandit the action draws come first, one per step: exactly sample_actions' stream."""
    batch = BernoulliBandits(n_arms=4, horizon=5).sample(1, 0)
    theta = np.array([[0.3, -1.0, 2.0, 0.0]])
    traj = rollout(TabularSoftmaxPolicy(1, 4, theta=theta), batch, 50, np.random.default_rng(8))
    expected = mf.sample_actions(np.repeat(theta, 250, axis=0), np.random.default_rng(8))
    np.testing.assert_array_equal(traj.action, expected)
    np.testing.assert_allclose(traj.logp, mf.log_prob(np.repeat(theta, 250, axis=0), traj.action),
                               rtol=0, atol=1e-14)


def test_float32_policy_and_forbidden_actions(backend):
    batch = TabularMDPs(n_states=3, n_actions=3).sample(5, 0)
    theta = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    pol = TabularSoftmaxPolicy(3, 3, dtype=np.float32)
    pol.theta[...] = theta  # -inf marks a forbidden action (set_params would refuse it)
    traj = rollout(pol, batch, 20, 1)
    assert not np.any((traj.obs == 0) & (traj.action == 1))
    assert np.all(traj.action[traj.obs == 1] == 2) and np.all(traj.logp[traj.obs == 1] == 0.0)
    assert np.all(np.isfinite(traj.logp))


def test_linear_policy_one_hot_equals_tabular(backend):
    batch = Chain(slip=0.1).sample(6, 0)
    theta = np.random.default_rng(0).normal(size=(4, 2))
    tab = rollout(TabularSoftmaxPolicy(4, 2, theta=theta), batch, 5, 3)
    lin = rollout(LinearSoftmaxPolicy(4, 2, W=theta), batch, 5, 3)
    np.testing.assert_array_equal(tab.action, lin.action)
    np.testing.assert_array_equal(tab.obs, lin.obs)
    # explicit features: 2 features per state
    phi = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])
    W = np.array([[1.0, -1.0], [0.2, 0.3]])
    feat = rollout(LinearSoftmaxPolicy(2, 2, W=W), batch, 5, 3, features=phi)
    tab2 = rollout(TabularSoftmaxPolicy(4, 2, theta=phi @ W), batch, 5, 3)
    np.testing.assert_array_equal(feat.action, tab2.action)


def test_per_task_policies(backend):
    batch = BernoulliBandits(n_arms=2, horizon=4).sample(3, 0)
    pols = [TabularSoftmaxPolicy(1, 2, theta=[[50.0 * s, -50.0 * s]]) for s in (1, -1, 1)]
    traj = rollout(pols, batch, 3, 0)
    np.testing.assert_array_equal(traj.action.reshape(3, -1), [[0] * 12, [1] * 12, [0] * 12])
    with pytest.raises(ValueError, match="2 policies for 3 tasks"):
        rollout(pols[:2], batch, 3, 0)


def test_random_start_states(backend):
    P = np.zeros((1, 3, 1, 3))
    P[..., 2] = 1.0
    start = np.array([[0.2, 0.8, 0.0]])
    batch = TabularFamily(P=P, R=np.zeros((1, 3, 1)), horizon=1, start=start).sample(1, 0)
    traj = rollout(TabularSoftmaxPolicy(3, 1), batch[np.zeros(100, dtype=np.int64)], 100, 1)
    frac = np.mean(traj.obs == 1)
    _within(frac, 0.8, 0.4 / 100)


def test_rollout_writes_into_a_buffer(backend):
    batch = GridNavigation(size=3, horizon=5, goals=[(0, 1)]).sample(2, 0)
    calls = []

    class Recorder:
        def add_batch(self, *args, **kwargs):
            calls.append((args, kwargs))

    traj = rollout(TabularSoftmaxPolicy(9, 5), batch, 4, 1, buffer=Recorder())
    (args, kwargs), = calls
    for got, want in zip(args, (traj.obs, traj.action, traj.reward, traj.next_obs, traj.terminated)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kwargs["truncated"], traj.truncated)
    np.testing.assert_array_equal(kwargs["task_id"], traj.task_id)
    np.testing.assert_array_equal(kwargs["logp"], traj.logp)
    with pytest.raises(TypeError, match="add_batch"):
        rollout(TabularSoftmaxPolicy(9, 5), batch, 4, 1, buffer=object())


def test_rollout_into_replay_buffer(backend):
    replay = pytest.importorskip("metarl_fast.replay")
    batch = TabularMDPs().sample(3, 0)
    buf = replay.ReplayBuffer(1000)
    traj = rollout(TabularSoftmaxPolicy(10, 5), batch, 5, 2, buffer=buf)
    assert len(buf) == traj.n_steps == 150
    assert [buf.task_count(i) for i in range(3)] == [50, 50, 50]


@needs_cython
def test_two_backends_identical():
    for family, S, A in ((TabularMDPs(), 10, 5), (GridNavigation(size=4), 16, 5),
                         (BernoulliBandits(), 1, 5), (Chain(slip=0.3), 4, 2)):
        batch = family.sample(7, 1)
        theta = np.random.default_rng(2).normal(size=(S, A))
        out = []
        for be in ("cython", "numpy"):
            with mf.use_backend(be):
                out.append(rollout(TabularSoftmaxPolicy(S, A, theta=theta), batch, 6, np.random.default_rng(3)))
        for name in Trajectories._FIELDS:
            np.testing.assert_array_equal(getattr(out[0], name), getattr(out[1], name), err_msg=name)
        np.testing.assert_array_equal(out[0].episode_return, out[1].episode_return)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_rollout_bad_input_changes_nothing(backend):
    batch = TabularMDPs().sample(2, 0)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    pol = TabularSoftmaxPolicy(10, 5)
    cases = [
        (lambda: rollout(TabularSoftmaxPolicy(9, 5), batch, 2, rng), ValueError, "shape"),
        (lambda: rollout(LinearSoftmaxPolicy(3, 5), batch, 2, rng), ValueError, "features"),
        (lambda: rollout(LinearSoftmaxPolicy(3, 5), batch, 2, rng, features=np.ones((9, 3))), ValueError, "features"),
        (lambda: rollout(pol, batch, 2, rng, features=np.ones((10, 3))), ValueError, "features"),
        (lambda: rollout("pol", batch, 2, rng), TypeError, "policy"),
        (lambda: rollout(pol, batch.P, 2, rng), TypeError, "task_batch"),
        (lambda: rollout(pol, batch, 0, rng), ValueError, "n_episodes"),
        (lambda: rollout(pol, batch, 1.0, rng), TypeError, "n_episodes"),
        (lambda: rollout(pol, batch, 2, 1.5), TypeError, "rng"),
        (lambda: rollout(pol, batch, 2, np.random.RandomState(0)), TypeError, "rng"),
    ]
    bad = TabularSoftmaxPolicy(10, 5)
    bad.theta[3] = -np.inf
    cases.append((lambda: rollout(bad, batch, 2, rng), ValueError, "state 3.*all -inf"))
    nan = TabularSoftmaxPolicy(10, 5)
    nan.params[7] = np.nan
    cases.append((lambda: rollout(nan, batch, 2, rng), ValueError, "state 1.*NaN"))
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()
    assert rng.bit_generator.state == state


def test_kernel_rejects_bad_tables(backend):
    from metarl_fast._backend import active
    from metarl_fast.rollout import action_tables

    batch = TabularMDPs(n_states=2, n_actions=2).sample(2, 0)
    cdf, logp = action_tables(np.zeros((1, 2, 2)))
    pot = np.zeros(2, dtype=np.int64)
    rng = np.random.default_rng(0)
    env = active.envs
    with pytest.raises(TypeError, match="tables"):
        env.rollout(batch, cdf, logp, pot, 1, rng)
    with pytest.raises(TypeError, match="action_cdf"):
        env.rollout(batch.tables, cdf.astype(np.float32), logp, pot, 1, rng)
    with pytest.raises(ValueError, match="action_cdf"):
        env.rollout(batch.tables, -cdf, logp, pot, 1, rng)
    with pytest.raises(ValueError, match="policy_of_task"):
        env.rollout(batch.tables, cdf, logp, pot + 1, 1, rng)
    with pytest.raises(ValueError, match="policy_of_task"):
        env.rollout(batch.tables, cdf, logp, pot[:1], 1, rng)


# ---------------------------------------------------------------------------------------------
# VecEnv
# ---------------------------------------------------------------------------------------------

def test_vecenv_auto_reset_and_final_obs(backend):
    batch = GridNavigation(size=3, horizon=3, goals=[(1, 2)]).sample(1, 0)
    venv = VecEnv(batch, n_envs_per_task=2)
    assert venv.num_envs == 2 and venv.single_observation_space.n == 9 and venv.single_action_space.n == 5
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step([0, 0])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(venv.reset(seed=rng)[0], [4, 4])
    obs, rew, term, trunc, infos = venv.step(np.array([3, 4]))  # env 0 reaches the goal
    np.testing.assert_array_equal(obs, [4, 4])
    np.testing.assert_array_equal(venv.final_obs, [5, 4])
    np.testing.assert_array_equal(infos["_final_obs"], [True, False])
    assert infos["final_obs"][0] == 5
    np.testing.assert_array_equal(rew, [0.0, -1.0])
    np.testing.assert_array_equal(term, [True, False])
    np.testing.assert_array_equal(trunc, [False, False])
    np.testing.assert_array_equal(venv.elapsed, [0, 1])
    assert venv.step([4, 4])[4] == {}  # no episode ended: no final_obs
    obs, rew, term, trunc, infos = venv.step([0, 4])  # env 1 hits the horizon (3 steps)
    np.testing.assert_array_equal(trunc, [False, True])
    np.testing.assert_array_equal(venv.final_obs, [1, 4])
    np.testing.assert_array_equal(infos["_final_obs"], [False, True])
    np.testing.assert_array_equal(obs, [1, 4])
    np.testing.assert_array_equal(venv.elapsed, [2, 0])


def test_vecenv_bad_actions_change_nothing(backend):
    venv = VecEnv(TabularMDPs().sample(2, 0), 3)
    rng = np.random.default_rng(1)
    venv.reset(seed=rng)
    venv.step(np.zeros(6, dtype=np.int64))
    before = (venv.state, venv.elapsed, rng.bit_generator.state)
    for actions, err in (([0] * 5, ValueError), ([0] * 5 + [5], ValueError), ([0] * 5 + [-1], ValueError),
                         (np.zeros(6), TypeError), (np.zeros((6, 1), dtype=int), ValueError)):
        with pytest.raises(err, match="actions"):
            venv.step(actions)
    for seed, err in ((3.5, TypeError), (-1, ValueError), (np.random.RandomState(0), TypeError)):
        with pytest.raises(err, match="seed"):
            venv.reset(seed=seed)
    with pytest.raises(TypeError, match="options"):
        venv.reset(options=[1])
    after = (venv.state, venv.elapsed, rng.bit_generator.state)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2] and venv.np_random is rng


def _random_start_family():
    rng = np.random.default_rng(4)
    P = rng.dirichlet(np.ones(4), size=(2, 4, 3))
    terminal = np.array([[False, False, False, True], [False, True, False, False]])
    start = np.array([[0.3, 0.3, 0.4, 0.0], [0.5, 0.0, 0.25, 0.25]])
    return TabularFamily(P=P, R=rng.normal(size=(2, 4, 3)), horizon=5, start=start, terminal=terminal,
                         reward_noise="gaussian", reward_std=0.5)


@pytest.mark.parametrize("family", [TabularMDPs(), Chain(slip=0.3), GridNavigation(size=3, horizon=4),
                                    BernoulliBandits(horizon=3), _random_start_family()])
def test_vecenv_equals_single_env(backend, family):
    """VecEnv with one environment draws exactly what a single env plus reset() draws."""
    task = family.sample(1, 2)[0]
    env = task.make_env()
    venv = VecEnv(task)
    g1, g2 = np.random.default_rng(7), np.random.default_rng(7)
    obs, _ = env.reset(seed=g1)
    assert venv.reset(seed=g2)[0][0] == obs
    acts = np.random.default_rng(0).integers(task.n_actions, size=60)
    for a in acts:
        o, r, term, trunc, _ = env.step(int(a))
        vo, vr, vterm, vtrunc, _ = venv.step([a])
        assert (venv.final_obs[0], vr[0], vterm[0], vtrunc[0]) == (o, r, term, trunc)
        if term or trunc:
            o, _ = env.reset()
        assert vo[0] == o
    assert g1.bit_generator.state == g2.bit_generator.state


def test_vecenv_reward_statistics(backend):
    batch = TabularMDPs().sample(500, 0)
    venv = VecEnv(batch, 2)
    rng = np.random.default_rng(0)
    obs, _ = venv.reset(seed=rng)
    resid = []
    for k in range(20):
        acts = rng.integers(5, size=venv.n_envs)
        _, rew, _, trunc, _ = venv.step(acts)
        resid.append(rew - batch.R[venv.task_of_env, obs, acts])
        obs = venv.state
        assert trunc.all() == (k % 10 == 9) and trunc.any() == (k % 10 == 9)
    resid = np.concatenate(resid)
    assert abs(resid.mean()) < 4 / np.sqrt(resid.size) and abs(resid.var() - 1) < 4 * np.sqrt(2 / resid.size)
