"""Gymnasium-API environments of the continuous task families (metarl_fast.continuous_env):
one task (ContinuousTaskEnv, as_gymnasium: check_env), every task vectorised (ContinuousVecEnv:
same-step auto-reset, copy=False), both equal to stepping the batch by hand with the same draws."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.continuous_env import (Box, ContinuousTaskEnv, ContinuousVecEnv, as_gymnasium,
                                        observation_bounds)
from metarl_fast.reference import continuous as spec

try:
    import gymnasium
    from gymnasium.utils.env_checker import check_env
    from gymnasium.vector.utils import batch_space
except ImportError:  # the tests that need it are skipped; the no-Gymnasium path still runs
    gymnasium = None

needs_gymnasium = pytest.mark.skipif(gymnasium is None, reason="gymnasium is not installed (the 'gym' extra)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# horizon 12: random actions end CartPoles episodes both ways (pole falls / horizon reached)
FAMILIES = [mf.CartPoles(horizon=12), mf.PointNavigation(horizon=5, goal_low=-1.0, goal_high=1.0)]
FAMILY_IDS = ["cartpoles", "point"]


def _batch(family, n=3, seed=0):
    return family.sample(n, seed)


ENV_MAKERS = [pytest.param(ContinuousTaskEnv, id="plain"),
              pytest.param(as_gymnasium, id="gymnasium", marks=needs_gymnasium)]


# ---------------------------------------------------------------------------------------------
# one task
# ---------------------------------------------------------------------------------------------

@needs_gymnasium
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_as_gymnasium_is_a_gymnasium_env_that_passes_check_env(family):
    env = as_gymnasium(_batch(family), 2)
    assert isinstance(env, gymnasium.Env) and isinstance(env, ContinuousTaskEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # the only complaint allowed is the one Gymnasium's own CartPole-v1 gets: infinite bounds
    other = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert other == []
    assert isinstance(env.observation_space, gymnasium.spaces.Box)
    assert env.observation_space.dtype == np.float64 and env.observation_space.shape == (family.obs_dim,)
    assert env.action_space == gymnasium.spaces.Discrete(family.n_actions)


@pytest.mark.parametrize("make", ENV_MAKERS)
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_episodes_equal_stepping_the_batch_by_hand_with_the_same_draws(backend, family, make):
    batch = _batch(family)
    index = 1
    env = make(batch, index)
    task = batch[index]
    by_hand_rng = np.random.default_rng(7)
    actions = np.random.default_rng(99).integers(0, family.n_actions, size=60)
    obs, info = env.reset(seed=7)
    states = task.reset_states(by_hand_rng)
    assert info == {} and obs.dtype == np.float64 and obs.shape == (family.obs_dim,)
    np.testing.assert_array_equal(obs, states[0])
    elapsed, ends = 0, set()
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(int(a))
        states, rewards, term = task.step(states, np.array([a]))
        elapsed += 1
        want_truncated = not term[0] and elapsed == batch.horizon
        np.testing.assert_array_equal(obs, states[0])
        assert type(reward) is float and reward == rewards[0]
        assert (terminated, truncated, info) == (bool(term[0]), want_truncated, {})
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            ends.add("terminated" if terminated else "truncated")
            obs, _ = env.reset()  # the stream continues: the by-hand one does too
            states = task.reset_states(by_hand_rng)
            np.testing.assert_array_equal(obs, states[0])
            elapsed = 0
    cartpoles = isinstance(batch, mf.continuous_tasks.CartPolesBatch)
    assert ends == ({"terminated", "truncated"} if cartpoles else {"truncated"})


def test_point_navigation_truncates_at_the_horizon_and_then_refuses_to_step(backend):
    batch = mf.continuous_tasks.PointNavigationBatch([[0.3, 0.0]], horizon=3, step_size=0.1, n_directions=4)
    env = ContinuousTaskEnv(batch)
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert env.step(4)[2:4] == (False, False)  # "stay": elapsed restarted at reset


def test_cartpole_terminating_at_the_horizon_is_terminated_not_truncated(backend):
    # pushing right at Gymnasium's physics from this start, the pole falls at step 8
    batch = mf.CartPoles.gymnasium_defaults(horizon=500).sample(1, 0)
    env = ContinuousTaskEnv(batch)
    env.reset(seed=0)
    steps = 1
    while not env.step(1)[2]:
        steps += 1
    env = ContinuousTaskEnv(mf.CartPoles.gymnasium_defaults(horizon=steps).sample(1, 0))
    env.reset(seed=0)
    flags = [env.step(1)[2:4] for _ in range(steps)]
    assert flags == [(False, False)] * (steps - 1) + [(True, False)]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(1)


def test_cartpole_start_states_are_seeded_like_gymnasium(backend):
    env = ContinuousTaskEnv(mf.CartPoles().sample(2, 0), 1)
    obs, _ = env.reset(seed=123)
    np.testing.assert_array_equal(obs, np.random.default_rng(123).uniform(-0.05, 0.05, 4))
    assert env.np_random_seed == 123
    np.testing.assert_array_equal(env.reset(seed=123)[0], obs)
    assert not np.array_equal(env.reset()[0], obs)  # no seed: the stream continues
    shared = np.random.default_rng(5)
    env.reset(seed=shared)
    assert env.np_random is shared and env.np_random_seed == -1


@pytest.mark.parametrize("make", ENV_MAKERS)
def test_step_before_reset_and_bad_actions_raise_and_change_nothing(backend, make):
    env = make(mf.CartPoles().sample(2, 0), 0)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=1)
    with pytest.raises(ValueError, match=r"action out of range: 2, must be in \[0, 2\)"):
        env.step(2)
    with pytest.raises(ValueError, match="action out of range: -1"):
        env.step(-1)
    with pytest.raises(TypeError, match="action must be an int, got bool"):
        env.step(True)
    with pytest.raises(TypeError, match="action must be an int, got float"):
        env.step(1.0)
    with pytest.raises(TypeError, match="action must be an int, got ndarray"):
        env.step(np.array([1]))
    assert env.elapsed == 0
    got = env.step(np.array(1))[0]  # 0-d int arrays and numpy ints are ints
    reference = make(mf.CartPoles().sample(2, 0), 0)
    reference.reset(seed=1)
    np.testing.assert_array_equal(got, reference.step(np.int64(1))[0])


def test_constructor_and_reset_arguments_are_checked():
    batch = mf.PointNavigation().sample(3, 0)
    with pytest.raises(TypeError, match="batch must be a metarl_fast.continuous_tasks"):
        ContinuousTaskEnv(mf.Chain().sample(2, 0))
    with pytest.raises(ValueError, match=r"index must be in \[-3, 3\)"):
        ContinuousTaskEnv(batch, 3)
    with pytest.raises(TypeError, match="index must be an int, got bool"):
        ContinuousTaskEnv(batch, True)
    assert ContinuousTaskEnv(batch, -1).index == 2
    np.testing.assert_array_equal(ContinuousTaskEnv(batch, -1).task.goals, batch.goals[2:])
    env = ContinuousTaskEnv(batch)
    with pytest.raises(ValueError, match="seed must be a non-negative int seed"):
        env.reset(seed=-1)
    with pytest.raises(TypeError, match="seed must be a numpy.random.Generator"):
        env.reset(seed="1")
    with pytest.raises(TypeError, match="options must be a dict or None"):
        env.reset(options=[1])


def test_observation_bounds_are_documented_ones():
    low, high = observation_bounds(mf.PointNavigation().sample(2, 0))
    np.testing.assert_array_equal(high, [np.inf, np.inf])
    np.testing.assert_array_equal(low, -high)
    low, high = observation_bounds(mf.CartPoles().sample(2, 0))
    np.testing.assert_array_equal(high, [4.8, np.inf, 2 * spec.CARTPOLE_THETA_THRESHOLD, np.inf])
    np.testing.assert_array_equal(low, -high)
    assert not high.flags.writeable
    with pytest.raises(TypeError, match="batch must be"):
        observation_bounds(np.zeros((2, 2)))


@needs_gymnasium
def test_cartpole_bounds_are_gymnasiums():
    want = gymnasium.make("CartPole-v1").observation_space
    got = ContinuousTaskEnv(mf.CartPoles().sample(1, 0)).observation_space
    np.testing.assert_allclose(got.high, want.high.astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(got.low, want.low.astype(np.float64), rtol=1e-6)


def test_dependency_free_box():
    box = Box([-1.0, 0.0, -np.inf, -np.inf], [1.0, np.inf, 2.0, np.inf], seed=3)
    assert box.shape == (4,) and box.dtype == np.float64
    for _ in range(50):
        assert box.contains(box.sample())
    np.testing.assert_array_equal(box.sample(rng=4), box.sample(rng=4))
    assert box.contains([0.0, 5.0, -9.0, 1e300]) and box.contains(np.array([0, 0, 0, 0]))
    assert not box.contains([2.0, 0.0, 0.0, 0.0])  # above high
    assert not box.contains([0.0, -1.0, 0.0, 0.0])  # below low
    assert not box.contains([0.0, 0.0, 0.0, np.nan])
    assert not box.contains(np.zeros(3)) and not box.contains(np.zeros(4, dtype=np.complex128))
    with pytest.raises(ValueError, match="low <= high"):
        Box([1.0], [0.0])
    with pytest.raises(ValueError, match="same shape"):
        Box([0.0], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# every task, vectorised
# ---------------------------------------------------------------------------------------------

def _lockstep(family, copy, n_envs_per_task=2, n_steps=40, seed=11):
    """The vector env's results next to n single envs sharing one Generator, reset in env order."""
    batch = _batch(family)
    venv = ContinuousVecEnv(batch, n_envs_per_task, copy=copy)
    shared = np.random.default_rng(seed)
    singles = [ContinuousTaskEnv(batch, k // n_envs_per_task) for k in range(venv.num_envs)]
    obs, _ = venv.reset(seed=seed)
    want = np.stack([env.reset(seed=shared)[0] for env in singles])
    np.testing.assert_array_equal(obs, want)
    action_rng = np.random.default_rng(seed + 1)
    n_ended = 0
    for _ in range(n_steps):
        actions = action_rng.integers(0, family.n_actions, venv.num_envs)
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        results = [env.step(int(a)) for env, a in zip(singles, actions)]
        reached = np.stack([r[0] for r in results])
        ended = np.array([r[2] or r[3] for r in results])
        np.testing.assert_array_equal(rewards, [r[1] for r in results])
        np.testing.assert_array_equal(terminated, [r[2] for r in results])
        np.testing.assert_array_equal(truncated, [r[3] for r in results])
        current = reached.copy()
        for k in np.flatnonzero(ended):  # auto-reset, in environment order
            current[k] = singles[k].reset()[0]
        np.testing.assert_array_equal(obs, current)
        if ended.any():
            n_ended += int(ended.sum())
            np.testing.assert_array_equal(infos["final_obs"], reached)
            np.testing.assert_array_equal(infos["_final_obs"], ended)
            np.testing.assert_array_equal(infos["_final_info"], ended)
            assert infos["final_info"] == {}
        else:
            assert infos == {}
        np.testing.assert_array_equal(venv.final_obs, reached)
        np.testing.assert_array_equal(venv.elapsed, [env.elapsed for env in singles])
    return n_ended


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "no-copy"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_vec_env_equals_single_envs_in_lockstep(backend, family, copy):
    assert _lockstep(family, copy) > 6


def test_vec_env_auto_resets_in_the_same_step(backend):
    batch = mf.continuous_tasks.PointNavigationBatch([[1.0, 0.0], [0.0, 1.0]], horizon=2, step_size=0.5,
                                                     n_directions=4)
    venv = ContinuousVecEnv(batch, 2)
    obs, infos = venv.reset(seed=0)
    assert obs.dtype == np.float64 and obs.shape == (4, 2) and infos == {}
    obs, rewards, terminated, truncated, infos = venv.step([0, 1, 0, 4])
    np.testing.assert_array_equal(obs, [[0.5, 0.0], [0.0, 0.5], [0.5, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(rewards, [-0.5, -np.hypot(1.0, 0.5), -np.hypot(0.5, 1.0), -1.0])
    assert infos == {} and not truncated.any() and not terminated.any()
    obs, rewards, terminated, truncated, infos = venv.step([0, 0, 1, 1])
    assert truncated.all() and not terminated.any()
    np.testing.assert_array_equal(obs, np.zeros((4, 2)))  # already the next episode's start
    final = infos["final_obs"]
    assert final.dtype == np.float64 and final.shape == (4, 2)
    np.testing.assert_array_equal(final, [[1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.0, 0.5]])
    assert infos["_final_obs"].dtype == np.bool_ and infos["_final_obs"].all()
    np.testing.assert_array_equal(venv.elapsed, [0, 0, 0, 0])


def test_vec_env_resets_only_the_ended_environments(backend):
    # one CartPole task per env; env 1 ends now (a fallen pole), env 0 does not
    batch = mf.CartPoles.gymnasium_defaults(horizon=50).sample(2, 0)
    venv = ContinuousVecEnv(batch)
    venv.reset(seed=0)
    venv._state[1] = [0.0, 0.0, 0.2, 3.0]  # falls within one step
    before = venv.state
    obs, rewards, terminated, truncated, infos = venv.step([1, 1])
    np.testing.assert_array_equal(terminated, [False, True])
    np.testing.assert_array_equal(infos["_final_obs"], [False, True])
    assert abs(infos["final_obs"][1, 2]) > spec.CARTPOLE_THETA_THRESHOLD
    np.testing.assert_array_equal(obs[0], infos["final_obs"][0])
    assert not np.array_equal(obs[0], before[0])  # stepped, not reset
    assert np.all(np.abs(obs[1]) <= 0.05)  # a new start state
    np.testing.assert_array_equal(venv.elapsed, [1, 0])


def test_vec_env_steps_all_environments_in_one_kernel_call(backend):
    venv = ContinuousVecEnv(mf.CartPoles(horizon=5).sample(3, 0), 4)
    calls = []
    step = venv.env_batch.step
    venv.env_batch.step = lambda *args, **kwargs: calls.append(len(args[1])) or step(*args, **kwargs)
    venv.reset(seed=0)
    for _ in range(12):
        venv.step(np.zeros(12, dtype=np.int64))
    assert calls == [12] * 12
    np.testing.assert_array_equal(venv.task_of_env, np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(venv.env_batch.params, venv.tasks.params[venv.task_of_env])


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_copy_false_returns_the_same_arrays_every_call(backend, family):
    venv = ContinuousVecEnv(_batch(family), 2, copy=False)
    first, _ = venv.reset(seed=0)
    seen, final = None, None
    for _ in range(3 * family.horizon):
        out = venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        assert out[0] is first
        seen = out if seen is None else seen
        assert all(a is b for a, b in zip(out[:4], seen[:4]))
        if out[4]:
            final = out[4] if final is None else final
            assert all(out[4][key] is final[key] for key in ("final_obs", "_final_obs", "_final_info"))
            assert out[4]["final_obs"] is venv.final_obs
    assert final is not None
    assert venv.reset()[0] is first
    copying = ContinuousVecEnv(_batch(family), 2)
    a, _ = copying.reset(seed=0)
    b, _ = copying.reset(seed=0)
    assert a is not b
    x = copying.step(np.zeros(copying.num_envs, dtype=np.int64))
    y = copying.step(np.zeros(copying.num_envs, dtype=np.int64))
    assert all(p is not q for p, q in zip(x[:4], y[:4]))


def test_vec_env_arguments_are_checked_and_a_rejected_step_changes_nothing(backend):
    batch = mf.CartPoles().sample(2, 0)
    with pytest.raises(TypeError, match="batch must be a metarl_fast.continuous_tasks"):
        ContinuousVecEnv(mf.Chain().sample(2, 0))
    with pytest.raises(ValueError, match="n_envs_per_task must be >= 1"):
        ContinuousVecEnv(batch, 0)
    with pytest.raises(TypeError, match="n_envs_per_task must be an int"):
        ContinuousVecEnv(batch, 1.5)
    with pytest.raises(TypeError, match="copy must be a bool"):
        ContinuousVecEnv(batch, copy="no")
    venv = ContinuousVecEnv(batch, 2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step([0, 0, 0, 0])
    with pytest.raises(TypeError, match="options must be a dict or None"):
        venv.reset(options=3)
    with pytest.raises(ValueError, match="seed must be a non-negative int seed"):
        venv.reset(seed=-2)
    venv.reset(seed=0)
    state, elapsed = venv.state, venv.elapsed
    with pytest.raises(ValueError, match="actions has length 3, expected 4"):
        venv.step([0, 0, 0])
    with pytest.raises(ValueError, match="actions out of range: found 2, must be < 2"):
        venv.step([0, 2, 0, 0])
    with pytest.raises(TypeError, match="actions must be an integer array, got dtype float64"):
        venv.step([0.0, 1.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="actions must be an integer array, got dtype bool"):
        venv.step([True, False, True, False])
    np.testing.assert_array_equal(venv.state, state)
    np.testing.assert_array_equal(venv.elapsed, elapsed)


def test_vec_env_detects_use_from_two_threads():
    venv = ContinuousVecEnv(mf.PointNavigation().sample(2, 0))
    venv.reset(seed=0)
    with venv._exclusive("step"):  # as if another thread's call were running
        with pytest.raises(RuntimeError, match="another thread.*not thread-safe"):
            venv.step([0, 0])
        with pytest.raises(RuntimeError, match="another thread.*not thread-safe"):
            venv.reset()
    venv.step([0, 0])  # released again


@needs_gymnasium
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_vec_env_is_a_gymnasium_vector_env_with_batched_spaces(family):
    venv = ContinuousVecEnv(_batch(family), 2)
    assert isinstance(venv, gymnasium.vector.VectorEnv) and isinstance(venv, ContinuousVecEnv)
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    assert venv.single_observation_space == ContinuousTaskEnv(_batch(family)).observation_space
    assert venv.single_action_space == gymnasium.spaces.Discrete(family.n_actions)
    assert venv.observation_space == batch_space(venv.single_observation_space, 6)
    assert venv.action_space == batch_space(venv.single_action_space, 6)
    obs, _ = venv.reset(seed=0)
    assert venv.observation_space.contains(obs)
    for _ in range(20):
        obs = venv.step(venv.action_space.sample())[0]
        assert venv.observation_space.contains(obs)
    venv.close()
    assert venv.closed


NO_GYM_CHILD = """
    import json, sys
    import numpy as np
    import metarl_fast as mf
    from metarl_fast.continuous_env import Box, ContinuousTaskEnv, ContinuousVecEnv, as_gymnasium
    from metarl_fast.rollout import MultiDiscrete
    from metarl_fast.tasks import Discrete
    batch = mf.CartPoles(horizon=12).sample(2, 0)
    env = ContinuousTaskEnv(batch, 1)
    assert type(env.observation_space) is Box and type(env.action_space) is Discrete
    obs, _ = env.reset(seed=3)
    traj = [obs.tolist()]
    for k in range(30):
        obs, reward, terminated, truncated, _ = env.step(k % 2)
        traj.append([obs.tolist(), reward, terminated, truncated])
        if terminated or truncated:
            traj.append(env.reset()[0].tolist())
    venv = ContinuousVecEnv(batch, 2)
    assert type(venv) is ContinuousVecEnv and venv.metadata["autoreset_mode"] == "SameStep"
    assert type(venv.observation_space) is Box and venv.observation_space.shape == (4, 4)
    assert venv.action_space == MultiDiscrete([2, 2, 2, 2])
    vtraj = [venv.reset(seed=5)[0].tolist()]
    for k in range(20):
        o, r, te, tr, infos = venv.step(np.array([k % 2, 1, 0, (k // 3) % 2]))
        vtraj.append([o.tolist(), r.tolist(), te.tolist(), tr.tolist()])
    try:
        as_gymnasium(batch)
        message = None
    except ImportError as err:
        message = str(err)
    print(json.dumps({"traj": traj, "vtraj": vtraj, "message": message,
                      "gym": sorted(m for m, mod in sys.modules.items()
                                     if m.startswith("gymnasium") and mod is not None)}))
    """


def test_without_gymnasium_everything_works_and_draws_the_same():
    proc = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['gymnasium'] = None\n"
                           + textwrap.dedent(NO_GYM_CHILD)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["gym"] == []
    assert "pip install gymnasium" in got["message"]
    # the same calls here (with Gymnasium, if installed) give the same numbers
    batch = mf.CartPoles(horizon=12).sample(2, 0)
    env = ContinuousTaskEnv(batch, 1)
    obs, _ = env.reset(seed=3)
    traj = [obs.tolist()]
    for k in range(30):
        obs, reward, terminated, truncated, _ = env.step(k % 2)
        traj.append([obs.tolist(), reward, terminated, truncated])
        if terminated or truncated:
            traj.append(env.reset()[0].tolist())
    assert got["traj"] == traj
    venv = ContinuousVecEnv(batch, 2)
    vtraj = [venv.reset(seed=5)[0].tolist()]
    for k in range(20):
        o, r, te, tr, infos = venv.step(np.array([k % 2, 1, 0, (k // 3) % 2]))
        vtraj.append([o.tolist(), r.tolist(), te.tolist(), tr.tolist()])
    assert got["vtraj"] == vtraj


def test_importing_the_module_does_not_import_gymnasium():
    code = ("import json, sys\nimport metarl_fast.continuous_env\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gymnasium'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_batches_and_vec_env_give_the_continuous_environments():
    import metarl_fast as mf
    from metarl_fast.continuous_env import ContinuousTaskEnv, ContinuousVecEnv

    batch = mf.CartPoles(horizon=20).sample(3, 0)
    env = batch.make_env(2)
    assert isinstance(env, ContinuousTaskEnv) and env.reset(seed=1)[0].shape == (4,)
    venv = mf.VecEnv(batch, 2, copy=False)
    assert isinstance(venv, ContinuousVecEnv) and venv.num_envs == 6
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (6, 4) and obs.dtype == np.float64
    pytest.importorskip("gymnasium", reason="as_gymnasium needs Gymnasium (the test extra)")
    import gymnasium

    assert isinstance(batch.as_gymnasium(1), gymnasium.Env)
