"""Environments, fused rollouts and VecEnv at their boundaries, checked against the documented
rules and hand-computed values (never against the other backend).

``scripted_rng`` makes a Generator whose ``random()`` values are chosen, so every inverse-CDF draw
can be put exactly on a boundary (u = 0, u * total equal to a running sum, u -> 1): the outcome must
be the first j with ``u * c[-1] < c[j]`` -- never a state or action of probability zero.  The same
cases run through :func:`metarl_fast.rollout.rollout` (both backends; with and without terminal
states and with more or fewer than four episodes, so every compiled loop is reached), through
:class:`VecEnv` and through the single :class:`metarl_fast.tasks.TabularEnv`.
"""
import numpy as np
import pytest

from metarl_fast.policy import TabularSoftmaxPolicy
from metarl_fast.rollout import VecEnv, action_tables, rollout
from metarl_fast.tasks import GridNavigation, TaskBatch

from scripted import TOP, scripted_rng


def policy(S, A, allowed):
    """A tabular policy uniform over ``allowed[s]`` (a list of actions) in each state s; the other
    actions are forbidden (logit -inf)."""
    pol = TabularSoftmaxPolicy(S, A)
    pol.theta[...] = -np.inf
    for s, acts in enumerate(allowed):
        pol.theta[s, acts] = 0.0
    return pol


def one_step_batch(S, A, *, P, R=None, horizon=1, n=1, **kwargs):
    """A TaskBatch of n tasks with transitions P (zero mean rewards unless R is given)."""
    return TaskBatch(P, np.zeros((n, S, A)) if R is None else R, horizon, **kwargs)


def with_terminal(has_terminal, S, n=1):
    """A terminal-state table that leaves the dynamics unchanged: one extra, unreachable state is
    terminal (the compiled rollout then takes its terminal-aware loops)."""
    t = np.zeros((n, S), dtype=bool)
    if has_terminal:
        t[:, -1] = True
    return t


# ---------------------------------------------------------------------------------------------
# Inverse-CDF draws at their boundaries
# ---------------------------------------------------------------------------------------------

START_U = [0.0, 0.5, TOP, 0.25, 0.5 - 2.0 ** -53]
# start (0, .5, 0, .5): running sums 0 .5 .5 1 -> the first j with u < c[j]
START_WANT = [1, 3, 3, 1, 1]


@pytest.mark.parametrize("has_terminal", [False, True])
def test_start_states_at_cdf_boundaries(backend, has_terminal):
    S = 5  # state 4 is unreachable (terminal in the second case)
    start = np.array([[0.0, 0.5, 0.0, 0.5, 0.0]])
    P = np.zeros((1, S, 1, S))
    P[..., 0] = 1.0
    batch = one_step_batch(S, 1, start=start, P=P, terminal=with_terminal(has_terminal, S))
    traj = rollout(policy(S, 1, [[0]] * S), batch, 5, scripted_rng(START_U))
    np.testing.assert_array_equal(traj.obs, START_WANT)
    np.testing.assert_array_equal(traj.truncated, [True] * 5)
    venv = VecEnv(batch, 5)
    rng = scripted_rng(START_U + START_U[::-1])
    np.testing.assert_array_equal(venv.reset(seed=rng)[0], START_WANT)
    obs, _, _, trunc, _ = venv.step(np.zeros(5, np.int64))  # horizon 1: every env auto-resets
    assert trunc.all()
    np.testing.assert_array_equal(obs, START_WANT[::-1])
    env = batch[0].make_env()
    got = [env.reset(seed=scripted_rng(START_U))[0]] + [env.reset()[0] for _ in range(4)]
    np.testing.assert_array_equal(got, START_WANT)


@pytest.mark.parametrize("A", [3, 5, 9, 13, 17, 22])
@pytest.mark.parametrize("has_terminal", [False, True])
def test_actions_at_cdf_boundaries(backend, A, has_terminal):
    """Uniform over actions 1 .. A-1 (action 0 forbidden): running sums 0, 1, ..., A-1.  The
    widths cover every compiled search (rows of 4, 8, 12, 16 and 24 compared entries)."""
    S, N, H = 2, 5, 2
    P = np.zeros((1, S, A, S))
    P[..., 0] = 1.0
    batch = one_step_batch(S, A, P=P, terminal=with_terminal(has_terminal, S), horizon=H)
    m = A - 1
    us = [0.0, TOP, 1 / 2, 1 / 4, 1 / 4 - 2.0 ** -53, 1 / 8, 0.5 - 2.0 ** -53, 0.0, 0.75, TOP]
    traj = rollout(policy(S, A, [list(range(1, A)), [0]]), batch, N, scripted_rng(us))
    # running sums 0, 1, ..., m: action 1 + #{k in 1 .. m-1 : k <= u * m}
    want = [1 + int(np.count_nonzero(np.arange(1, m) <= u * m)) for u in us]
    np.testing.assert_array_equal(traj.action, want)
    assert np.all(traj.episode_length == H)  # state 1 (the terminal one) is never entered
    np.testing.assert_allclose(traj.logp, -np.log(m), rtol=1e-15)


TRANS_U = [0.0, 0.25, 0.25 - 2.0 ** -53, TOP, 0.5]


@pytest.mark.parametrize("S", [3, 9, 13, 17, 22])
@pytest.mark.parametrize("has_terminal", [False, True])
def test_next_states_at_cdf_boundaries(backend, S, has_terminal):
    """P(. | 0, 0) = (.25, 0, ..., 0, .75): u = .25 lands on a running sum shared by the states of
    probability zero, and must go past all of them.  The zero-probability state 1 is terminal in
    the second case (entering it would end the episode)."""
    P = np.zeros((1, S, 1, S))
    P[..., 0] = 1.0
    P[0, 0, 0] = 0.0
    P[0, 0, 0, [0, S - 1]] = [0.25, 0.75]
    terminal = np.zeros((1, S), dtype=bool)
    terminal[0, 1] = has_terminal
    batch = one_step_batch(S, 1, P=P, terminal=terminal)
    want = [0, S - 1, 0, S - 1, S - 1]
    traj = rollout(policy(S, 1, [[0]] * S), batch, 5, scripted_rng([0.0] * 5 + TRANS_U))
    np.testing.assert_array_equal(traj.next_obs, want)
    assert not traj.terminated.any() and traj.truncated.all()
    venv = VecEnv(batch, 5)
    rng = scripted_rng(TRANS_U)
    venv.reset(seed=rng)  # fixed start: draws nothing
    venv.step(np.zeros(5, np.int64))
    np.testing.assert_array_equal(venv.final_obs, want)
    env = batch[0].make_env()
    rng = scripted_rng(TRANS_U)
    got = []
    for _ in range(5):
        env.reset(seed=rng)
        got.append(env.step(0)[0])
    np.testing.assert_array_equal(got, want)


def test_bernoulli_rewards_at_their_boundaries(backend):
    """Reward 1.0 iff u < R: an arm with R = 0 never pays (u = 0 included), R = 1 always pays."""
    R = np.array([0.0, 0.5, 1.0]).reshape(3, 1, 1)
    batch = one_step_batch(1, 1, P=np.ones((3, 1, 1, 1)), R=R, reward_noise="bernoulli", horizon=2, n=3)
    noise = [0.0, TOP, 0.5, 0.5 - 2.0 ** -53]
    want = np.array([[0, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 1]], dtype=float)
    traj = rollout(policy(1, 1, [[0]]), batch, 2, scripted_rng([0.0] * 12 + noise * 3))
    np.testing.assert_array_equal(traj.reward.reshape(3, 4), want)
    venv = VecEnv(batch, 4)
    rng = scripted_rng(noise * 3)
    venv.reset(seed=rng)
    np.testing.assert_array_equal(venv.step(np.zeros(12, np.int64))[1], want.reshape(-1))
    for i in range(3):
        env = batch[i].make_env()
        rng = scripted_rng(noise)
        env.reset(seed=rng)
        got = [env.step(0)[1], env.step(0)[1]]
        env.reset()
        got += [env.step(0)[1], env.step(0)[1]]
        np.testing.assert_array_equal(got, want[i])


# ---------------------------------------------------------------------------------------------
# Episode ends: terminated exactly at the horizon is terminated, not truncated
# ---------------------------------------------------------------------------------------------

def two_goal_batch(horizon):
    """3x3 grid, start in the centre (4); task 0's goal (0, 2) is two steps away (up, right), task
    1's goal (2, 0) is not on that path."""
    parts = [GridNavigation(size=3, horizon=horizon, goals=[goal]).sample(1, 0) for goal in [(0, 2), (2, 0)]]
    return TaskBatch(np.concatenate([p.P for p in parts]), np.concatenate([p.R for p in parts]), horizon,
                     start=np.concatenate([p.start for p in parts]),
                     terminal=np.concatenate([p.terminal for p in parts]))


UP_THEN_RIGHT = [[4]] + [[3]] + [[4]] * 2 + [[0]] + [[4]] * 4   # state 4: up; state 1: right; else stay


@pytest.mark.parametrize("n_episodes", [1, 2, 5])
@pytest.mark.parametrize("horizon", [2, 3])
def test_goal_reached_exactly_at_the_horizon(backend, n_episodes, horizon):
    batch = two_goal_batch(horizon)
    traj = rollout(policy(9, 5, UP_THEN_RIGHT), batch, n_episodes, 3)
    r5, r8 = -np.sqrt(5.0), -np.sqrt(8.0)
    for e in range(n_episodes):
        a = traj.episode(0, e)
        np.testing.assert_array_equal(traj.obs[a], [4, 1])
        np.testing.assert_array_equal(traj.next_obs[a], [1, 2])
        np.testing.assert_array_equal(traj.reward[a], [-1.0, 0.0])
        np.testing.assert_array_equal(traj.terminated[a], [False, True])
        np.testing.assert_array_equal(traj.truncated[a], [False, False])
        b = traj.episode(1, e)
        np.testing.assert_array_equal(traj.next_obs[b], [1, 2, 2][:horizon])
        np.testing.assert_allclose(traj.reward[b], [r5, r8, r8][:horizon], rtol=1e-15)
        np.testing.assert_array_equal(traj.terminated[b], [False] * horizon)
        np.testing.assert_array_equal(traj.truncated[b], [False] * (horizon - 1) + [True])
    np.testing.assert_array_equal(traj.episode_length, [[2] * n_episodes, [horizon] * n_episodes])
    np.testing.assert_allclose(traj.episode_return, [[-1.0] * n_episodes, [r5 + (horizon - 1) * r8] * n_episodes],
                               rtol=1e-15)
    assert not np.any(traj.terminated & traj.truncated)


@pytest.mark.parametrize("horizon", [2, 3])
def test_vecenv_and_env_goal_reached_exactly_at_the_horizon(backend, horizon):
    batch = two_goal_batch(horizon)
    venv = VecEnv(batch, 1)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(venv.reset(seed=rng)[0], [4, 4])
    obs, rew, term, trunc, _ = venv.step(np.array([0, 0]))
    np.testing.assert_array_equal(obs, [1, 1])
    assert not term.any() and not trunc.any()
    obs, rew, term, trunc, _ = venv.step(np.array([3, 3]))
    np.testing.assert_array_equal(venv.final_obs, [2, 2])
    np.testing.assert_array_equal(term, [True, False])
    np.testing.assert_array_equal(trunc, [False, horizon == 2])
    np.testing.assert_array_equal(obs, [4, 2 if horizon == 3 else 4])  # auto-reset where it ended
    np.testing.assert_array_equal(venv.elapsed, [0, 0 if horizon == 2 else 2])
    for i, want in enumerate([(2, 0.0, True, False), (2, -np.sqrt(8.0), False, horizon == 2)]):
        env = batch[i].make_env()
        env.reset(seed=0)
        env.step(0)
        got = env.step(3)[:4]
        assert got[0] == want[0] and got[2:] == want[2:] and got[1] == pytest.approx(want[1], rel=1e-15)


@pytest.mark.parametrize("n_episodes", [1, 3, 4, 6])
def test_fixed_start_states_per_task(backend, n_episodes):
    """Each task starts in its own state, in rollouts (every loop), VecEnv resets and auto-resets."""
    S = 5  # 0 -> 1 -> 2 -> 3 -> 0 ...; state 4 unreachable and terminal
    P = np.zeros((3, S, 1, S))
    for s in range(4):
        P[:, s, 0, (s + 1) % 4] = 1.0
    P[:, 4, 0, 4] = 1.0
    start = np.eye(S)[[2, 0, 3]]
    for terminal in (None, with_terminal(True, S, 3)):
        batch = TaskBatch(P, np.zeros((3, S, 1)), 2, start=start, terminal=terminal)
        traj = rollout(policy(S, 1, [[0]] * S), batch, n_episodes, 0)
        np.testing.assert_array_equal(traj.obs.reshape(3, n_episodes, 2)[:, :, 0],
                                      np.repeat([[2], [0], [3]], n_episodes, axis=1))
        np.testing.assert_array_equal(traj.next_obs.reshape(3, n_episodes, 2)[:, :, 1],
                                      np.repeat([[0], [2], [1]], n_episodes, axis=1))
        venv = VecEnv(batch, 2)
        rng = np.random.default_rng(0)
        np.testing.assert_array_equal(venv.reset(seed=rng)[0], [2, 2, 0, 0, 3, 3])
        venv.step(np.zeros(6, np.int64))
        obs, _, _, trunc, _ = venv.step(np.zeros(6, np.int64))
        assert trunc.all()
        np.testing.assert_array_equal(obs, [2, 2, 0, 0, 3, 3])
        np.testing.assert_array_equal(venv.final_obs, [0, 0, 2, 2, 1, 1])


def test_vecenv_environment_k_runs_task_k_div_n(backend):
    R = np.array([10.0, 20.0, 30.0]).reshape(3, 1, 1)
    batch = TaskBatch(np.ones((3, 1, 1, 1)), R, 4)
    venv = VecEnv(batch, 2)
    np.testing.assert_array_equal(venv.task_of_env, [0, 0, 1, 1, 2, 2])
    venv.reset(seed=0)
    np.testing.assert_array_equal(venv.step(np.zeros(6, np.int64))[1],
                                  [10, 10, 20, 20, 30, 30])


# ---------------------------------------------------------------------------------------------
# Reward noise and transitions: the documented draws, and their statistics
# ---------------------------------------------------------------------------------------------

def _gaussian_batch():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(3), size=(2, 3, 2))
    return TaskBatch(P, rng.normal(size=(2, 3, 2)), 4, reward_noise="gaussian", reward_std=[0.5, 2.0])


@pytest.mark.parametrize("n_episodes", [1, 3, 4])
def test_gaussian_rewards_follow_the_documented_draws(backend, n_episodes):
    """reward = R[task, s, a] + reward_std[task] * z, z the (T, N, H) standard normal block drawn
    after the action uniforms (reference/envs.py docstring)."""
    batch = _gaussian_batch()
    T, N, H = 2, n_episodes, 4
    traj = rollout(TabularSoftmaxPolicy(3, 2), batch, N, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    rng.random((T, N, H))
    z = rng.standard_normal((T, N, H)).reshape(-1)
    want = batch.R[traj.task_id, traj.obs, traj.action] + batch.reward_std[traj.task_id] * z
    np.testing.assert_allclose(traj.reward, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(traj.episode_return.reshape(-1), traj.reward.reshape(-1, H).sum(axis=1), rtol=1e-13)
    # VecEnv: the noise block (n,) first in each step
    venv = VecEnv(batch, 3)
    rng, mirror = np.random.default_rng(6), np.random.default_rng(6)
    obs, _ = venv.reset(seed=rng)
    task = venv.task_of_env
    for _ in range(5):  # (fixed start: the auto-resets after step 4 draw nothing)
        acts = np.arange(6) % 2
        _, rew, _, _, _ = venv.step(acts)
        z = mirror.standard_normal(6)
        mirror.random(6)  # next-state uniforms
        np.testing.assert_allclose(rew, batch.R[task, obs, acts] + batch.reward_std[task] * z, rtol=1e-13, atol=1e-15)
        obs = venv.state
    # single environment: standard_normal() then random() per step
    env = batch[1].make_env()
    rng, mirror = np.random.default_rng(7), np.random.default_rng(7)
    s, _ = env.reset(seed=rng)
    for a in (0, 1, 1, 0):
        s2, r, _, _, _ = env.step(a)
        assert r == pytest.approx(batch.R[1, s, a] + 2.0 * mirror.standard_normal(), rel=1e-13, abs=1e-15)
        mirror.random()
        s = s2


def test_gaussian_reward_noise_moments_per_task(backend):
    batch = _gaussian_batch()
    traj = rollout(TabularSoftmaxPolicy(3, 2), batch, 1500, np.random.default_rng(2))
    resid = traj.reward - batch.R[traj.task_id, traj.obs, traj.action]
    for task, std in enumerate([0.5, 2.0]):
        r = resid[traj.task_id == task]
        assert abs(r.mean()) < 4 * std / np.sqrt(r.size)
        assert abs(r.var() - std ** 2) < 4 * std ** 2 * np.sqrt(2 / r.size)


def test_transition_frequencies_per_task_with_zero_and_certain_rows(backend):
    """Two tasks with different P, rows with zero entries and rows with one certain next state:
    next-state counts of every (task, s, a) match P (chi-square), impossible ones never occur."""
    P = np.zeros((2, 3, 2, 3))
    P[0, 0, 0] = [0.5, 0.0, 0.5]
    P[0, 0, 1] = [0.0, 1.0, 0.0]
    P[0, 1, 0] = [0.2, 0.3, 0.5]
    P[0, 1, 1] = [0.0, 0.0, 1.0]
    P[0, 2, 0] = [0.9, 0.1, 0.0]
    P[0, 2, 1] = [0.0, 0.25, 0.75]
    P[1] = P[0][::-1, ::-1, ::-1]
    batch = TaskBatch(P, np.zeros((2, 3, 2)), 10, start=np.full((2, 3), 1 / 3))
    counts = np.zeros((2, 3, 2, 3))
    traj = rollout(TabularSoftmaxPolicy(3, 2), batch, 250, np.random.default_rng(3))
    np.add.at(counts, (traj.task_id, traj.obs, traj.action, traj.next_obs), 1)
    venv = VecEnv(batch, 50)
    rng = np.random.default_rng(4)
    obs, _ = venv.reset(seed=rng)
    for _ in range(40):
        acts = rng.integers(2, size=venv.n_envs)
        venv.step(acts)
        np.add.at(counts, (venv.task_of_env, obs, acts, venv.final_obs), 1)
        obs = venv.state
    assert np.all(counts[P == 0] == 0)
    expected = counts.sum(axis=-1, keepdims=True) * P
    keep = P > 0
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum() - np.count_nonzero(P.max(axis=-1) > 0))
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_random_start_frequencies_per_task(backend):
    start = np.array([[0.2, 0.8, 0.0], [0.5, 0.0, 0.5]])
    P = np.zeros((2, 3, 1, 3))
    P[..., 0] = 1.0
    batch = TaskBatch(P, np.zeros((2, 3, 1)), 1, start=start)
    n = 3000
    traj = rollout(policy(3, 1, [[0]] * 3), batch, n, np.random.default_rng(0))
    venv = VecEnv(batch, n)
    rng = np.random.default_rng(1)
    draws = [traj.obs.reshape(2, n), venv.reset(seed=rng)[0].reshape(2, n),
             venv.step(np.zeros(2 * n, np.int64))[0].reshape(2, n)]  # the auto-reset starts
    for got in draws:
        for task in range(2):
            counts = np.bincount(got[task], minlength=3)
            assert np.all(counts[start[task] == 0] == 0)
            p = start[task, 0]
            assert abs(counts[0] - n * p) < 4.5 * np.sqrt(n * p * (1 - p)), (task, counts)


def test_transition_rewards_without_terminal_states(backend):
    """reward_noise="transition": the reward of each step is reward_next[task, s, a, s'] (in every
    compiled loop: no terminal states, 1 to 5 episodes)."""
    rng = np.random.default_rng(8)
    P = rng.dirichlet(np.ones(4), size=(2, 4, 3))
    reward_next = rng.normal(size=(2, 4, 3, 4))
    batch = TaskBatch(P, np.zeros((2, 4, 3)), 3, reward_noise="transition", reward_next=reward_next)
    for n_episodes in (1, 2, 5):
        traj = rollout(TabularSoftmaxPolicy(4, 3), batch, n_episodes, n_episodes)
        np.testing.assert_array_equal(traj.reward, reward_next[traj.task_id, traj.obs, traj.action, traj.next_obs])
    np.testing.assert_allclose(batch.R, np.einsum("nsat,nsat->nsa", P, reward_next), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# Action tables and trajectories of one episode
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 40.0, 1e300])
def test_action_tables_are_softmax(backend, scale):
    x = np.random.default_rng(0).normal(size=(2, 3, 6)) * scale
    x[0, 1, [0, 4]] = -np.inf
    cdf, logp = action_tables(x)
    with np.errstate(over="ignore", invalid="ignore"):
        z = x - x.max(axis=-1, keepdims=True)
        w = np.exp(z)
    np.testing.assert_allclose(cdf, np.cumsum(w, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(np.exp(logp), w / w.sum(axis=-1, keepdims=True), rtol=1e-13, atol=1e-300)
    assert np.all(logp[0, 1, [0, 4]] == -np.inf) and np.all(np.diff(cdf, axis=-1) >= 0)


@pytest.mark.parametrize("T", [3, 5])
def test_one_episode_per_task(backend, T):
    batch = GridNavigation(size=3, horizon=4, goals=[(1, 2)]).sample(T, 0)
    traj = rollout(policy(9, 5, [[4]] * 4 + [[3]] + [[4]] * 4), batch, 1, 0)  # centre: right
    assert traj.n_episodes == 1 and traj.n_steps == T
    np.testing.assert_array_equal(traj.episode_start, np.arange(T + 1))
    np.testing.assert_array_equal(traj.task_id, np.arange(T))
    np.testing.assert_array_equal(traj.terminated, [True] * T)
    assert not traj.truncated.any()
    np.testing.assert_array_equal(traj.reward, np.zeros(T))
    np.testing.assert_array_equal(traj.step_in_episode, np.zeros(T))
    for i in range(T):
        assert traj.episode(i, 0) == slice(i, i + 1)
    with pytest.raises(IndexError, match=r"no episode \(0, 1\)"):
        traj.episode(0, 1)
