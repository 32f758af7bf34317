"""FromGymnasium models the Gymnasium toy-text envs exactly (FrozenLake, Taxi, CliffWalking, plain
and slippery), and the "outcome" reward kind (several rewards for one transition) that slippery
CliffWalking needs is drawn the same way by both kernel twins and by Task.make_env()."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gymnasium = pytest.importorskip("gymnasium", reason="FromGymnasium needs Gymnasium (the 'gym' extra)")

import metarl_fast as mf  # noqa: E402
from conftest import needs_cython  # noqa: E402
from metarl_fast import exact, tasks  # noqa: E402
from metarl_fast.policy import TabularSoftmaxPolicy  # noqa: E402
from metarl_fast.rollout import Trajectories, rollout  # noqa: E402
from metarl_fast.tasks import FromGymnasium, TaskBatch  # noqa: E402


# -- the tables equal the env's P ------------------------------------------------------------------

def _reachable(env):
    """States an episode of ``env`` can be in (start states, then non-terminating transitions)."""
    base = env.unwrapped
    seen = set(np.flatnonzero(np.asarray(base.initial_state_distrib) > 0).tolist())
    todo = list(seen)
    while todo:
        s = todo.pop()
        for a in base.P[s]:
            for prob, s2, _, term in base.P[s][a]:
                if prob > 0 and not term and s2 not in seen:
                    seen.add(s2)
                    todo.append(s2)
    return seen


def _assert_matches_env(batch, i, env):
    """Task ``i`` of ``batch`` has the env's probabilities, expected rewards, start distribution
    and (from every state an episode can be in) terminal flags."""
    base = env.unwrapped
    S, A = env.observation_space.n, env.action_space.n
    assert batch.n_states == S and batch.n_actions == A  # these envs need no terminal copies
    P = np.zeros((S, A, S))
    reward_sum = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            for prob, s2, r, _ in base.P[s][a]:
                P[s, a, s2] += prob
                reward_sum[s, a, s2] += prob * r
    np.testing.assert_allclose(batch.P[i], P, atol=1e-12)
    np.testing.assert_allclose(batch.R[i], reward_sum.sum(-1), atol=1e-12)
    np.testing.assert_allclose(batch.start[i], base.initial_state_distrib, atol=1e-15)
    if batch.reward_next is not None:
        expected = np.divide(reward_sum, P, out=np.zeros_like(P), where=P > 0)
        np.testing.assert_allclose(np.where(P > 0, batch.reward_next[i], 0.0), expected, atol=1e-12)
    for s in _reachable(env):
        for a in range(A):
            for prob, s2, _, term in base.P[s][a]:
                if prob > 0:
                    assert batch.terminal[i, s2] == term, (s, a, s2)


@pytest.mark.parametrize("env_id,kwargs,noise", [
    ("FrozenLake-v1", {}, "transition"),
    ("FrozenLake-v1", {"map_name": "8x8"}, "transition"),
    ("FrozenLake8x8-v1", {"is_slippery": False}, "none"),
    ("Taxi-v4", {}, "none"),
    ("Taxi-v4", {"is_rainy": True}, "transition"),
    ("CliffWalking-v1", {"horizon": 60}, "none"),
    ("CliffWalkingSlippery-v1", {"horizon": 60}, "outcome"),
])
def test_tables_match_the_envs_model(env_id, kwargs, noise):
    kwargs = dict(kwargs)
    horizon = kwargs.pop("horizon", None)
    dist = FromGymnasium(env_id, horizon=horizon, **kwargs)
    batch = dist.sample(2, 0)
    assert batch.reward_noise == noise
    env = gymnasium.make(env_id, **kwargs)
    assert batch.horizon == (horizon or env.spec.max_episode_steps)
    for i in range(2):
        _assert_matches_env(batch, i, env)
    assert dist.env_id == env_id and dist.env_kwargs == kwargs
    assert env_id in repr(dist) and all(f"{k}=" in repr(dist) for k in kwargs)


def test_taxi_loads_without_terminal_copies():
    """Taxi's dropoff ends the episode in states that unreachable states enter without ending:
    they are terminal, and no copy is needed (500 states, deterministic: a next-state table)."""
    batch = FromGymnasium("Taxi-v4").sample(3, 1)
    assert batch.n_states == 500 and batch.next_state is not None and batch.reward_noise == "none"
    base = gymnasium.make("Taxi-v4").unwrapped
    ends = {s2 for s in range(500) for a in range(6) for _, s2, _, term in base.P[s][a] if term}
    assert ends and all(batch.terminal[0, s] for s in ends)
    assert batch.terminal[0].sum() == len(ends)


def test_slippery_cliff_has_two_rewards_on_one_transition():
    batch = FromGymnasium("CliffWalkingSlippery-v1", horizon=50).sample(1, 0)
    start = 36
    right = 1  # from the start: up (-1), into the cliff (back to the start, -100), the wall (stays, -1)
    assert batch.reward_values.shape[-1] == 2
    np.testing.assert_allclose(batch.P[0, start, right, start], 2 / 3)
    values, probs = batch.reward_values[0, start, right, start], batch.reward_probs[0, start, right, start]
    assert sorted(values.tolist()) == [-100.0, -1.0]
    np.testing.assert_allclose(probs, [0.5, 0.5])
    np.testing.assert_allclose(batch.reward_next[0, start, right, start], -50.5)


def test_tables_of_one_env():
    tables = FromGymnasium.tables_of(gymnasium.make("CliffWalkingSlippery-v1"), horizon=10)
    assert tables["reward_noise"] == "outcome" and tables["horizon"] == 10 and tables["n_env_states"] == 48
    assert tables["P"].shape == (48, 4, 48) and tables["reward_values"].shape == (48, 4, 48, 2)
    np.testing.assert_allclose(tables["R"], np.einsum("sat,sat->sa", tables["P"], tables["reward_next"]))
    plain = FromGymnasium.tables_of(gymnasium.make("FrozenLake-v1"))
    assert plain["reward_noise"] == "transition" and plain["horizon"] == 100 and plain["terminal"].sum() == 5


def test_frozen_lake_options_random_maps_and_lists():
    dist = FromGymnasium("FrozenLake-v1", desc="random", size=5, p=0.7, is_slippery=[True, False])
    batch = dist.sample(6, 3)
    assert batch.P.shape == (6, 25, 4, 25) and batch.horizon == 100
    assert "desc='random'" in repr(dist) and "size=5" in repr(dist)
    from gymnasium.envs.toy_text.frozen_lake import generate_random_map
    for i in range(6):
        desc = generate_random_map(size=5, p=0.7, seed=int(batch.info["map_seed"][i]))
        slippery = [True, False][batch.info["combination"][i]]
        _assert_matches_env(batch, i, gymnasium.make("FrozenLake-v1", desc=desc, is_slippery=slippery))
    assert len({batch.P[i].tobytes() for i in range(6)}) > 1
    one_map, other_map = ["SF", "FG"], ["SH", "FG"]
    single = FromGymnasium("FrozenLake-v1", desc=one_map).sample(2, 0)  # a list of strings: one map
    assert single.n_states == 4 and single.terminal[1].tolist() == [False, False, False, True]
    maps = FromGymnasium("FrozenLake-v1", desc=[one_map, other_map], is_slippery=False).sample(20, 0)
    for i in range(20):
        assert maps.terminal[i, 1] == (maps.info["combination"][i] == 1)
    both = FromGymnasium("FrozenLake-v1", is_slippery=[True, False]).sample(40, 0)
    assert set(both.info["combination"].tolist()) == {0, 1}
    for i in (int(np.argmin(both.info["combination"])), int(np.argmax(both.info["combination"]))):
        _assert_matches_env(both, i, gymnasium.make("FrozenLake-v1",
                                                    is_slippery=[True, False][both.info["combination"][i]]))


def test_same_rng_same_tasks_and_a_fixed_family_holds_one_task():
    dist = FromGymnasium("FrozenLake-v1", desc="random", size=4, is_slippery=[True, False])
    a, b, c = dist.sample(5, 7), dist.sample(5, np.random.default_rng(7)), dist.sample(5, 8)
    for name in ("P", "R", "start", "terminal", "reward_next"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.P, c.P)
    again = FromGymnasium("FrozenLake-v1", desc="random", size=4, is_slippery=[True, False]).sample(5, 7)
    np.testing.assert_array_equal(a.P, again.P)
    one = FromGymnasium("Taxi-v4").sample(4, 0)
    assert all(np.array_equal(one.next_state[0], one.next_state[i]) for i in range(4))


def test_tables_of_one_combination_are_read_once(monkeypatch):
    made = []
    real_make = gymnasium.make

    def counting_make(env_id, **kwargs):
        made.append((env_id, kwargs))
        return real_make(env_id, **kwargs)

    monkeypatch.setattr(gymnasium, "make", counting_make)
    options = dict(success_rate=0.6, is_slippery=[True, False])  # a combination no other test reads
    first = FromGymnasium("FrozenLake-v1", **options)
    assert len(made) == 2  # one per combination
    first.sample(10, 0)
    second = FromGymnasium("FrozenLake-v1", **options)
    x, y = first.sample(10, 1), second.sample(10, 1)
    assert len(made) == 2
    np.testing.assert_array_equal(x.P, y.P)


# -- what cannot be modelled ---------------------------------------------------------------------

@pytest.mark.parametrize("env_id,error,match", [
    ("Blackjack-v1", TypeError, "Discrete observation_space, got Tuple"),
    ("CartPole-v1", TypeError, "Discrete observation_space, got Box"),
])
def test_envs_without_a_tabular_model_fail_in_one_line(env_id, error, match):
    with pytest.raises(error, match=match) as info:
        FromGymnasium(env_id)
    assert "\n" not in str(info.value) and "Taxi-v4" in str(info.value)


@pytest.mark.parametrize("args,kwargs,error,match", [
    (("Nope-v0",), {}, ValueError, "unknown Gymnasium env id"),
    (("CliffWalking-v1",), {}, ValueError, "pass horizon="),
    (("Taxi-v4",), {"fickle_passenger": True}, ValueError, "fickle_passenger"),
    (("Taxi-v4",), {"desc": "random"}, ValueError, "not FrozenLake"),
    (("FrozenLake-v1",), {"size": 4}, ValueError, "desc='random'"),
    (("FrozenLake-v1",), {"desc": "random", "p": 0.1}, ValueError, "p"),
    (("FrozenLake-v1",), {"is_slippery": []}, ValueError, "nothing to choose"),
    (("FrozenLake-v1",), {"map_name": "5x5"}, ValueError, "failed"),
    (("Taxi-v4",), {"bogus": 1}, TypeError, "bogus"),
    ((3,), {}, TypeError, "callable"),
    ((lambda rng: None,), {"is_slippery": True}, ValueError, "env_kwargs"),
])
def test_bad_arguments_fail_in_one_line(args, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        FromGymnasium(*args, **kwargs)
    assert "\n" not in str(info.value)


# -- exact values equal the real env's Monte Carlo returns ------------------------------------------

def _mc_returns(env, pi, horizon, n_episodes, seed):
    """Returns of ``pi`` (S0, A) run through the real gymnasium env, cut at ``horizon`` steps."""
    rng = np.random.default_rng([seed, 1])  # not the env's own stream (gymnasium seeds PCG64(seed))
    cdf = np.cumsum(pi, axis=1)
    out = np.empty(n_episodes)
    s, _ = env.reset(seed=seed)
    for e in range(n_episodes):
        s, _ = env.reset()
        total = 0.0
        for _ in range(horizon):
            a = int(np.searchsorted(cdf[s], rng.random() * cdf[s, -1], side="right"))
            s, r, term, trunc, _ = env.step(min(a, pi.shape[1] - 1))
            total += r
            if term:
                break
        out[e] = total
    return out


@pytest.mark.parametrize("env_id,kwargs,horizon,n_episodes", [
    ("FrozenLake-v1", {}, 40, 3000),
    ("CliffWalkingSlippery-v1", {}, 25, 2000),
    ("Taxi-v4", {"is_rainy": True}, 15, 1500),
])
def test_exact_value_equals_the_real_envs_mean_return(env_id, kwargs, horizon, n_episodes):
    batch = FromGymnasium(env_id, horizon=horizon, **kwargs).sample(1, 0)
    model = batch[0].model()
    S, A = model.n_states, model.n_actions
    theta = np.random.default_rng(3).normal(size=(S, A))
    value = exact.policy_value(model, theta)
    pi = exact.softmax_policy(theta)
    env = gymnasium.make(env_id, max_episode_steps=10**6, **kwargs)
    returns = _mc_returns(env, pi, horizon, n_episodes, seed=11)
    se = returns.std() / np.sqrt(n_episodes)
    assert abs(returns.mean() - value) < 4.5 * se + 1e-9, (returns.mean(), value, se)


def test_our_rollout_has_the_slippery_cliffs_reward_distribution(backend):
    """From the start, moving right: back to the start by the cliff (-100) or by the wall (-1),
    each with probability 1/3; up (-1) with 1/3."""
    batch = FromGymnasium("CliffWalkingSlippery-v1", horizon=3).sample(1, 0)
    theta = np.full((48, 4), -60.0)
    theta[:, 1] = 0.0  # always right
    traj = rollout(TabularSoftmaxPolicy(48, 4, theta=theta), batch[np.zeros(200, dtype=np.int64)], 20,
                   np.random.default_rng(5))
    first = traj.step_in_episode == 0
    assert np.all(traj.obs[first] == 36)
    back = first & (traj.next_obs == 36)
    n, n_back = int(first.sum()), int(back.sum())
    cliff = int(np.count_nonzero(traj.reward[back] == -100.0))
    assert set(np.unique(traj.reward[first])) == {-100.0, -1.0}
    assert abs(n_back / n - 2 / 3) < 4.5 * np.sqrt(2 / 9 / n)
    assert abs(cliff / n_back - 1 / 2) < 4.5 * np.sqrt(1 / 4 / n_back)
    assert np.all(traj.reward[first & (traj.next_obs == 24)] == -1.0)


# -- terminal copies -------------------------------------------------------------------------------

class _TwoWayEnv(gymnasium.Env):
    """State 1 is entered by going on (from 0, action 0) and by ending (from 0, action 1, with a
    reward of 5 or 1): it gets an absorbing terminal copy, state 3.  State 2 is never reached."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gymnasium.spaces.Discrete(3)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.initial_state_distrib = np.array([1.0, 0.0, 0.0])
        self.P = {0: {0: [(1.0, 1, 0.0, False)], 1: [(0.5, 1, 5.0, True), (0.5, 1, 1.0, True)]},
                  1: {0: [(0.7, 0, -1.0, False), (0.3, 1, 2.0, False)], 1: [(1.0, 1, 0.0, True)]},
                  2: {0: [(1.0, 2, 0.0, True)], 1: [(1.0, 1, 0.0, True)]}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = 0
        return 0, {}

    def step(self, a):
        entries = self.P[self.s][a]
        j = self.np_random.choice(len(entries), p=[e[0] for e in entries])
        _, self.s, r, term = entries[j]
        return self.s, r, term, False, {}


def test_a_state_entered_both_ways_gets_a_terminal_copy(backend):
    batch = FromGymnasium(lambda rng: _TwoWayEnv(), horizon=8).sample(2, 0)
    assert batch.n_states == 4 and batch.reward_noise == "outcome"
    np.testing.assert_array_equal(batch.terminal[0], [False, False, True, True])
    assert batch.P[0, 0, 1, 3] == 1.0 and batch.P[0, 1, 1, 3] == 1.0 and batch.P[0, 3, 0, 3] == 1.0
    np.testing.assert_allclose(batch.R[0, 0, 1], 3.0)
    traj = rollout(TabularSoftmaxPolicy(4, 2), batch, 300, np.random.default_rng(0))
    assert np.all(traj.terminated == (traj.next_obs == 3))
    assert set(np.unique(traj.reward[(traj.obs == 0) & (traj.action == 1)])) == {1.0, 5.0}
    theta = np.zeros((4, 2))
    value = exact.policy_value(batch[0].model(), theta)
    returns = _mc_returns(_TwoWayEnv(), np.full((3, 2), 0.5), 8, 4000, seed=2)
    assert abs(returns.mean() - value) < 4.5 * returns.std() / np.sqrt(returns.size)


# -- the "outcome" reward kind ---------------------------------------------------------------------

def _outcome_batch(rng, n, S, A, K, dense, terminal_rate):
    if dense:
        P = rng.dirichlet(np.ones(S), size=(n, S, A))
        P = np.where(rng.random(P.shape) < 0.3, 0.0, P + 0.05)
        P[..., 0] += 1e-3
        P /= P.sum(-1, keepdims=True)
        arrays = dict(P=P)
    else:
        arrays = dict(next_state=rng.integers(S, size=(n, S, A)))
    probs = rng.dirichlet(np.ones(K), size=(n, S, A, S))
    probs[rng.random(probs.shape) < 0.2] = 0.0
    probs[..., 0] += probs.sum(-1) == 0
    probs /= probs.sum(-1, keepdims=True)
    start = rng.dirichlet(np.ones(S), size=n) if rng.random() < 0.5 else None
    return TaskBatch(**arrays, horizon=int(rng.integers(1, 7)), reward_noise="outcome",
                     reward_values=rng.normal(size=(n, S, A, S, K)).round(2), reward_probs=probs,
                     start=start, terminal=rng.random((n, S)) < terminal_rate)


@st.composite
def outcome_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = _outcome_batch(rng, draw(st.integers(1, 4)), draw(st.integers(1, 7)), draw(st.integers(1, 4)),
                           draw(st.integers(1, 3)), draw(st.booleans()), draw(st.sampled_from([0.0, 0.3])))
    return batch, rng.normal(size=(batch.n_states, batch.n_actions)) * 2


@needs_cython
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=outcome_cases(), n_episodes=st.integers(1, 5), seed=st.integers(0, 2**32 - 1),
       chunk=st.sampled_from([None, 1, 7]))
def test_outcome_rollout_twins_identical(case, n_episodes, seed, chunk):
    from metarl_fast._core import envs as core_envs

    batch, theta = case
    pol = TabularSoftmaxPolicy(batch.n_states, batch.n_actions, theta=theta)
    out, states = [], []
    old = core_envs._set_rollout_chunk_steps(chunk) if chunk else None
    try:
        for be in ("cython", "numpy"):
            rng = np.random.default_rng(seed)
            with mf.use_backend(be):
                out.append(rollout(pol, batch, n_episodes, rng))
            states.append(rng.bit_generator.state)
    finally:
        if old is not None:
            core_envs._set_rollout_chunk_steps(old)
    for name in Trajectories._FIELDS:
        np.testing.assert_array_equal(getattr(out[0], name), getattr(out[1], name), err_msg=name)
    np.testing.assert_array_equal(out[0].episode_return, out[1].episode_return)
    assert states[0] == states[1]
    t = out[0]
    possible = batch.reward_values[t.task_id, t.obs, t.action, t.next_obs]
    assert np.all(np.any(possible == t.reward[:, None], axis=1))


def _vec_trace(module, batch, seed, n_steps=12):
    n = 2 * batch.n_tasks
    task = np.repeat(np.arange(batch.n_tasks), 2).astype(np.int64)
    state, elapsed = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    rng, act_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    module.vec_reset(batch.tables, task, state, elapsed, rng)
    trace = [state.copy()]
    for _ in range(n_steps):
        outs = [np.empty(n, np.int64), np.empty(n), np.empty(n, bool), np.empty(n, bool), np.empty(n, np.int64)]
        module.vec_step(batch.tables, task, state, elapsed, act_rng.integers(batch.n_actions, size=n), rng, *outs)
        trace += [o.copy() for o in outs] + [state.copy(), elapsed.copy()]
    return trace, rng.bit_generator.state


@needs_cython
@pytest.mark.parametrize("seed", range(8))
def test_outcome_vec_step_and_trials_twins_identical(seed):
    from metarl_fast._core import envs as core_envs
    from metarl_fast._core import incontext_mdp as core_icm
    from metarl_fast.reference import envs as ref_envs
    from metarl_fast.reference import incontext_mdp as ref_icm

    rng = np.random.default_rng(seed)
    batch = _outcome_batch(rng, 3, 5, 3, 3, seed % 2 == 0, 0.3)
    (a, state_a), (b, state_b) = _vec_trace(core_envs, batch, seed), _vec_trace(ref_envs, batch, seed)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert state_a == state_b
    w = rng.normal(size=8)
    acts = [np.empty((3, 4, batch.horizon), dtype=np.int64) for _ in range(2)]
    rets = [m.run_trials(w, batch.tables, 4, np.random.default_rng(seed), out)
            for m, out in ((core_icm, acts[0]), (ref_icm, acts[1]))]
    np.testing.assert_array_equal(rets[0], rets[1])
    np.testing.assert_array_equal(acts[0], acts[1])


def test_make_env_draws_outcomes_like_the_kernels():
    """One environment of Task.make_env() and one of the kernels' vec_step, on the same stream:
    the same observations and rewards (next state, then the outcome, then a new start)."""
    from metarl_fast.reference import envs as ref_envs

    batch = _outcome_batch(np.random.default_rng(4), 1, 4, 2, 3, True, 0.3)
    t = batch.tables
    env = batch[0].make_env()
    rng_env, rng_kernel = np.random.default_rng(9), np.random.default_rng(9)
    obs, _ = env.reset(seed=rng_env)
    task, state, elapsed = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)
    ref_envs.vec_reset(t, task, state, elapsed, rng_kernel)
    assert obs == state[0]
    rewards = set()
    for k in range(60):
        a = k % 2
        obs, reward, term, trunc, _ = env.step(a)
        outs = [np.empty(1, np.int64), np.empty(1), np.empty(1, bool), np.empty(1, bool), np.empty(1, np.int64)]
        ref_envs.vec_step(t, task, state, elapsed, [a], rng_kernel, *outs)
        assert (obs, reward, term, trunc) == (outs[4][0], outs[1][0], outs[2][0], outs[3][0])
        rewards.add(reward)
        if term or trunc:
            obs, _ = env.reset()
            assert obs == outs[0][0]
    assert len(rewards) > 3
    assert rng_env.bit_generator.state == rng_kernel.bit_generator.state


def test_outcome_batches_sub_batch_and_stay_read_only():
    batch = _outcome_batch(np.random.default_rng(1), 4, 3, 2, 2, True, 0.0)
    sub = batch[[2, 0]]
    np.testing.assert_array_equal(sub.reward_values, batch.reward_values[[2, 0]])
    np.testing.assert_array_equal(sub.reward_probs, batch.reward_probs[[2, 0]])
    np.testing.assert_allclose(batch.reward_next, (batch.reward_values * batch.reward_probs).sum(-1))
    np.testing.assert_allclose(batch.R, np.einsum("nsat,nsat->nsa", batch.P, batch.reward_next))
    for arr in (batch.reward_values, batch.reward_probs, batch.tables.reward_cdf, batch.tables.reward_values):
        with pytest.raises(ValueError, match="WRITEABLE"):
            arr.setflags(write=True)
    assert batch.tables.reward_outcomes == 2
    other = TaskBatch(batch.P, batch.R, 3, reward_noise="transition", reward_next=batch.reward_next)
    assert other.tables.reward_values.shape == (1, 1, 1, 1, 1)  # built for "outcome" only
    assert other.reward_values is None


def _outcome_kwargs(**change):
    n, S, A, K = 2, 3, 2, 2
    kwargs = dict(P=np.full((n, S, A, S), 1 / 3), R=None, horizon=4, reward_noise="outcome",
                  reward_values=np.zeros((n, S, A, S, K)), reward_probs=np.full((n, S, A, S, K), 0.5))
    kwargs.update(change)
    return kwargs


@pytest.mark.parametrize("change,error,match", [
    (dict(reward_values=None), ValueError, "needs reward_values and reward_probs"),
    (dict(reward_probs=None), ValueError, "needs reward_values and reward_probs"),
    (dict(reward_values=np.zeros((2, 3, 2, 3))), ValueError, "reward_values must have shape"),
    (dict(reward_values=np.zeros((2, 3, 2, 3, 0))), ValueError, "K >= 1"),
    (dict(reward_probs=np.full((2, 3, 2, 3, 3), 1 / 3)), ValueError, r"reward_probs must have shape \(2, 3, 2, 3, 2\)"),
    (dict(reward_values=np.full((2, 3, 2, 3, 2), np.nan)), ValueError, "reward_values must be finite"),
    (dict(reward_probs=np.full((2, 3, 2, 3, 2), np.inf)), ValueError, "reward_probs must be finite"),
    (dict(reward_probs=np.stack([np.full((2, 3, 2, 3), 1.5), np.full((2, 3, 2, 3), -0.5)], -1)),
     ValueError, "is negative"),
    (dict(reward_probs=np.full((2, 3, 2, 3, 2), 0.4)), ValueError, r"transition \(task=0, s=0, a=0, s'=0\) sum to"),
    (dict(reward_values=np.array(["a"] * 72).reshape(2, 3, 2, 3, 2)), TypeError,
     "reward_values must be a numeric array"),
    (dict(reward_next=np.zeros((2, 3, 2, 3))), ValueError, "leave it out"),
    (dict(reward_noise="transition", reward_next=np.zeros((2, 3, 2, 3))), ValueError,
     'only used with reward_noise="outcome"'),
    (dict(reward_noise="noisy"), ValueError, "reward_noise must be one of"),
])
def test_outcome_arrays_are_validated(change, error, match):
    with pytest.raises(error, match=match):
        TaskBatch(**_outcome_kwargs(**change))


def test_outcome_probs_only_need_to_sum_to_one_where_the_transition_can_happen():
    P = np.zeros((1, 2, 1, 2))
    P[0, :, 0, 1] = 1.0
    probs = np.zeros((1, 2, 1, 2, 2))
    probs[..., 1, :] = [0.25, 0.75]  # s' = 0 is never entered: its row may be anything >= 0
    batch = TaskBatch(P, None, 2, reward_noise="outcome", reward_values=np.ones((1, 2, 1, 2, 2)),
                      reward_probs=probs)
    np.testing.assert_allclose(batch.R, 1.0)
    deterministic = TaskBatch(None, None, 2, next_state=np.ones((1, 2, 1), dtype=np.int64),
                              reward_noise="outcome", reward_values=np.ones((1, 2, 1, 2, 2)), reward_probs=probs)
    np.testing.assert_allclose(deterministic.R, 1.0)
    probs[0, 0, 0, 1] = [0.5, 0.6]
    with pytest.raises(ValueError, match=r"\(task=0, s=0, a=0, s'=1\)"):
        TaskBatch(P, None, 2, reward_noise="outcome", reward_values=np.ones((1, 2, 1, 2, 2)), reward_probs=probs)


def test_reward_kinds_are_ordered_as_the_kernels_codes():
    assert tasks.REWARD_KINDS[tasks.REWARD_OUTCOME] == "outcome"
    assert tasks.REWARD_NOISES == tasks.REWARD_KINDS[:4]
