"""Gymnasium's API: task.make_env() is a gymnasium.Env (check_env), the families are registered
Gymnasium ids, VecEnv follows the vector API (SAME_STEP auto-reset), and all of it also works
without Gymnasium (a child process where it cannot be imported)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.rollout import MultiDiscrete, VecEnv
from metarl_fast.tasks import Discrete, TabularEnv
from test_rollout import _random_start_family

try:
    import gymnasium
    from gymnasium.utils.env_checker import check_env
except ImportError:  # the tests that need it are skipped; the no-Gymnasium path still runs
    gymnasium = None

needs_gymnasium = pytest.mark.skipif(gymnasium is None, reason="gymnasium is not installed (the 'gym' extra)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FAMILIES = [mf.GridNavigation(size=4), mf.TabularMDPs(n_states=5, n_actions=3), mf.BernoulliBandits(),
            mf.Chain(slip=0.2), mf.Chain(), _random_start_family()]
FAMILY_IDS = ["grid", "mdps", "bandits", "chain-slip", "chain", "random-start"]


def _run_child(code, hide_gymnasium):
    """Run ``code`` in a fresh interpreter (Gymnasium made unimportable first if asked); returns
    the JSON it prints last."""
    prelude = "import sys\nsys.modules['gymnasium'] = None\n" if hide_gymnasium else ""
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# importing metarl_fast
# ---------------------------------------------------------------------------------------------

def test_importing_metarl_fast_does_not_import_gymnasium():
    got = _run_child("""
        import json, sys
        import metarl_fast, metarl_fast.rollout, metarl_fast.tasks
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('gymnasium', 'metarl_fast.gym_env'))))
        """, hide_gymnasium=False)
    assert got == []


# ---------------------------------------------------------------------------------------------
# spaces: a seedable stream of their own, as Gymnasium's
# ---------------------------------------------------------------------------------------------

def test_discrete_sample_needs_no_argument_and_seeds_like_gymnasium():
    space = Discrete(7, seed=3)
    draws = [space.sample() for _ in range(50)]
    assert all(space.contains(x) and isinstance(x, np.int64) for x in draws)
    np.testing.assert_array_equal(draws, np.random.default_rng(3).integers(7, size=50))
    assert space.seed(3) == 3 and [space.sample() for _ in range(50)] == draws
    assert isinstance(space.seed(), int)  # fresh entropy, reported as Gymnasium does
    state = space.np_random.bit_generator.state
    assert space.sample(np.random.default_rng(0)) in space  # sample(rng) still works...
    assert space.np_random.bit_generator.state == state     # ...and leaves the own stream alone
    assert Discrete(7, seed=np.random.SeedSequence(3)).sample() == draws[0]
    for bad, err in ((1.5, TypeError), (-1, ValueError), (np.random.default_rng(0), TypeError), (True, TypeError)):
        with pytest.raises(err, match="seed"):
            Discrete(3).seed(bad)
    with pytest.raises(TypeError, match="rng"):
        space.sample(2.5)
    if gymnasium is not None:
        theirs = gymnasium.spaces.Discrete(7, seed=3)
        assert [int(theirs.sample()) for _ in range(50)] == [int(x) for x in draws]


def test_multi_discrete_space():
    space = MultiDiscrete([3, 5, 2], seed=4)
    draws = np.array([space.sample() for _ in range(200)])
    assert draws.dtype == np.int64 and draws.shape == (200, 3)
    assert all(space.contains(x) for x in draws) and (draws.max(axis=0) == [2, 4, 1]).all()
    assert space.contains([2, 4, 1]) and not space.contains([3, 0, 0]) and not space.contains([0, 0])
    assert not space.contains(np.zeros(3)) and space == MultiDiscrete([3, 5, 2]) and space != MultiDiscrete([3, 5])
    with pytest.raises(ValueError, match="nvec"):
        MultiDiscrete([3, 0])
    if gymnasium is not None:
        theirs = gymnasium.spaces.MultiDiscrete([3, 5, 2], seed=4)
        np.testing.assert_array_equal(draws, [theirs.sample() for _ in range(200)])


# ---------------------------------------------------------------------------------------------
# one task: make_env() is a gymnasium.Env
# ---------------------------------------------------------------------------------------------

@needs_gymnasium
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_make_env_is_a_gymnasium_env_that_passes_check_env(family):
    task = family.sample(2, 0)[1]
    env = task.make_env()
    assert isinstance(env, gymnasium.Env) and type(env) is type(task.as_gymnasium())
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs) and info == {}
    for _ in range(3 * task.horizon):
        action = env.action_space.sample()  # no argument
        assert env.action_space.contains(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        assert env.observation_space.contains(obs) and isinstance(reward, float)
        if terminated or truncated:
            env.reset()


def _trajectory(env, seed, n_steps=40):
    """[(obs, reward, terminated, truncated)] of fixed actions, resetting at each episode end."""
    obs, _ = env.reset(seed=seed)
    out = [(int(obs), 0.0, False, False)]
    for k in range(n_steps):
        obs, reward, terminated, truncated, _ = env.step(k % env.action_space.n)
        out.append((int(obs), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            out.append((int(env.reset()[0]), 0.0, False, False))
    return out


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_reset_seed_is_reproducible_and_both_envs_draw_alike(family):
    task = family.sample(2, 5)[0]
    env = task.make_env()
    assert _trajectory(env, 3) == _trajectory(env, 3)
    assert _trajectory(env, np.random.SeedSequence(3)) == _trajectory(env, 3)
    assert _trajectory(env, np.random.default_rng(3)) == _trajectory(env, 3)
    plain = TabularEnv(task)  # the no-Gymnasium twin draws the same numbers
    assert _trajectory(plain, 3) == _trajectory(env, 3)
    shared = np.random.default_rng(9)  # a Generator is used as is: the env advances it
    mirror = np.random.default_rng(9)
    _trajectory(env, shared)
    _trajectory(plain, mirror)
    assert shared.bit_generator.state == mirror.bit_generator.state


@needs_gymnasium
def test_gymnasium_env_rejects_bad_seeds_and_options_by_name():
    env = mf.Chain().sample(1, 0)[0].make_env()
    for bad, err in ((1.5, TypeError), ("0", TypeError), (-3, ValueError), (True, TypeError),
                     (np.random.RandomState(0), TypeError)):
        with pytest.raises(err, match="seed"):
            env.reset(seed=bad)
    with pytest.raises(TypeError, match="options"):
        env.reset(seed=0, options=3)
    env.reset(seed=np.int64(2))
    assert env.np_random_seed == 2
    env.reset(seed=np.random.default_rng(0))
    assert env.np_random_seed == -1  # Gymnasium's value for a stream of unknown seed


# ---------------------------------------------------------------------------------------------
# registered ids
# ---------------------------------------------------------------------------------------------

REGISTERED = [("metarl_fast/GridNavigation-v0", mf.GridNavigation, {"size": 5}),
              ("metarl_fast/TabularMDPs-v0", mf.TabularMDPs, {"n_states": 4, "n_actions": 3, "horizon": 7}),
              ("metarl_fast/BernoulliBandits-v0", mf.BernoulliBandits, {"n_arms": 3}),
              ("metarl_fast/Chain-v0", mf.Chain, {"slip": 0.1, "horizon": 6})]


@needs_gymnasium
@pytest.mark.parametrize("env_id,family,kwargs", REGISTERED, ids=[r[0] for r in REGISTERED])
def test_gymnasium_make_of_every_registered_id(env_id, family, kwargs):
    import metarl_fast.gym_env as gym_env

    assert env_id in gym_env.ENV_IDS and env_id in gymnasium.registry
    env = gymnasium.make(env_id, task_seed=3, **kwargs)
    want = family(**kwargs).sample(1, 3)[0]
    got = env.unwrapped.task
    for name in ("P", "R", "start", "terminal"):
        np.testing.assert_array_equal(getattr(got.batch, name)[got.index], getattr(want.batch, name)[want.index])
    assert env.spec.max_episode_steps == want.horizon and env.spec.kwargs["task_seed"] == 3
    check_env(env.unwrapped, skip_render_check=True)
    assert _trajectory(env, 4) == _trajectory(want.make_env(), 4)
    other = gymnasium.make(env_id, task_seed=4, **kwargs).unwrapped.task
    assert not all(np.array_equal(getattr(other.batch, n)[0], getattr(got.batch, n)[0]) for n in ("P", "R", "terminal"))
    with pytest.raises(TypeError, match="task_seed"):
        gymnasium.make(env_id, task_seed=1.5)
    # make_vec: a VecEnv of num_envs copies of that task
    venv = gymnasium.make_vec(env_id, num_envs=3, task_seed=3, **kwargs)
    assert isinstance(venv, VecEnv) and venv.num_envs == 3
    np.testing.assert_array_equal(venv.tasks.R[0], want.batch.R[want.index])


@needs_gymnasium
def test_grid_navigation_id_episode_ends_at_the_horizon():
    env = gymnasium.make("metarl_fast/GridNavigation-v0", size=5, task_seed=3)
    assert env.unwrapped.observation_space.n == 25 and env.spec.max_episode_steps == 10
    env.reset(seed=0)
    ends = [env.step(4)[2:4] for _ in range(10)]  # stay in the centre: the goal is elsewhere
    assert ends == [(False, False)] * 9 + [(False, True)]


@needs_gymnasium
@pytest.mark.parametrize("prefix", ["metarl_fast.gym_env:", "metarl_fast:"])
def test_ids_need_no_import_but_the_module_in_the_id(prefix):
    got = _run_child(f"""
        import json, gymnasium
        env = gymnasium.make("{prefix}metarl_fast/GridNavigation-v0", size=5, task_seed=3)
        obs, _ = env.reset(seed=0)
        print(json.dumps([int(obs), env.spec.max_episode_steps, type(env.unwrapped).__name__]))
        """, hide_gymnasium=False)
    assert got == [12, 10, "GymnasiumTabularEnv"]


@needs_gymnasium
@pytest.mark.parametrize("order", ["metarl_fast first", "gymnasium first", "a gymnasium submodule first"])
def test_plain_ids_work_whichever_is_imported_first(order):
    imports = {"metarl_fast first": "import metarl_fast\nimport gymnasium",
               "gymnasium first": "import gymnasium\nimport metarl_fast",
               "a gymnasium submodule first": "import metarl_fast\nimport gymnasium.spaces\nimport gymnasium"}[order]
    got = _run_child(imports + """
import json
env = gymnasium.make("metarl_fast/GridNavigation-v0", size=5, task_seed=3)
obs, _ = env.reset(seed=0)
print(json.dumps([int(obs), env.spec.max_episode_steps]))
""", hide_gymnasium=False)
    assert got == [12, 10]


# ---------------------------------------------------------------------------------------------
# VecEnv: Gymnasium's vector API
# ---------------------------------------------------------------------------------------------

@needs_gymnasium
def test_vecenv_is_a_gymnasium_vector_env_with_batched_spaces():
    from gymnasium.vector import AutoresetMode, VectorEnv
    from gymnasium.vector.utils import batch_space

    batch = mf.TabularMDPs(n_states=6, n_actions=3).sample(4, 0)
    venv = VecEnv(batch, 2)
    assert isinstance(venv, VectorEnv) and isinstance(venv, VecEnv) and venv.num_envs == 8
    assert venv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    assert venv.single_observation_space == gymnasium.spaces.Discrete(6)
    assert venv.single_action_space == gymnasium.spaces.Discrete(3)
    assert venv.observation_space == batch_space(venv.single_observation_space, 8)
    assert venv.action_space == batch_space(venv.single_action_space, 8)
    obs, infos = venv.reset(seed=0)
    assert obs.dtype == venv.observation_space.dtype and obs.shape == (8,) and infos == {}
    assert venv.observation_space.contains(obs) and venv.np_random_seed == 0
    for _ in range(25):
        actions = venv.action_space.sample()
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        assert venv.observation_space.contains(obs)
        assert (rewards.dtype, terminated.dtype, truncated.dtype) == (np.float64, np.bool_, np.bool_)
        assert rewards.shape == terminated.shape == truncated.shape == (8,) and isinstance(infos, dict)
    # a gymnasium vector wrapper reads it as it is
    stats = gymnasium.wrappers.vector.RecordEpisodeStatistics(venv)
    stats.reset(seed=1)
    for k in range(10):
        *_, infos = stats.step(np.full(8, k % 3))
    assert infos["_episode"].all() and (infos["episode"]["l"] == 10).all()
    venv.close()
    assert venv.closed


def _sync_vector_env(tasks, seed):
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    envs = SyncVectorEnv([lambda task=task: task.make_env() for task in tasks], autoreset_mode=AutoresetMode.SAME_STEP)
    envs.reset(seed=seed)
    return envs


@needs_gymnasium
@pytest.mark.parametrize("family,n_tasks,per_task", [
    (mf.GridNavigation(size=3, horizon=4), 3, 2), (mf.Chain(horizon=5), 2, 3),       # deterministic: many envs
    (mf.TabularMDPs(n_states=4, n_actions=2, horizon=3), 1, 1), (mf.Chain(slip=0.3, horizon=4), 1, 1),
    (_random_start_family(), 1, 1), (mf.BernoulliBandits(horizon=3), 1, 1)])  # random: one env, one stream
def test_vecenv_same_step_autoreset_matches_single_envs(backend, family, n_tasks, per_task):
    """Step for step, VecEnv equals Gymnasium's SyncVectorEnv in SAME_STEP mode over the single
    envs of the same tasks with the same seed: obs, rewards, ends, final_obs and its mask."""
    batch = family.sample(n_tasks, 1)
    venv = VecEnv(batch, per_task)
    sync = _sync_vector_env([batch[k // per_task] for k in range(venv.num_envs)], seed=6)
    obs, _ = venv.reset(seed=6)
    np.testing.assert_array_equal(obs, sync.reset(seed=6)[0])
    actions = np.random.default_rng(0).integers(batch.n_actions, size=(60, venv.num_envs))
    n_ended = 0
    for a in actions:
        mine, theirs = venv.step(a), sync.step(a)
        for x, y in zip(mine[:4], theirs[:4]):
            np.testing.assert_array_equal(x, y)
        assert ("final_obs" in mine[4]) == ("final_obs" in theirs[4])
        if "final_obs" in theirs[4]:
            mask = theirs[4]["_final_obs"]
            np.testing.assert_array_equal(mine[4]["_final_obs"], mask)
            np.testing.assert_array_equal(mine[4]["final_obs"][mask], theirs[4]["final_obs"][mask].astype(np.int64))
            np.testing.assert_array_equal(mine[4]["final_obs"][~mask], mine[0][~mask])  # the state reached
            np.testing.assert_array_equal(mine[4]["_final_info"], mask)
            n_ended += int(mask.sum())
    assert n_ended >= venv.num_envs  # the comparison went through auto-resets


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_vecenv_reset_seed_is_reproducible(backend, family):
    batch = family.sample(3, 2)
    venv = VecEnv(batch, 2)
    actions = np.random.default_rng(1).integers(batch.n_actions, size=(30, venv.num_envs))

    def run(seed):
        out = [venv.reset(seed=seed)[0]]
        for a in actions:
            out.extend(venv.step(a)[:4])
        return out

    first = run(8)
    for again in (run(8), run(np.random.SeedSequence(8)), run(np.random.default_rng(8))):
        for x, y in zip(first, again):
            np.testing.assert_array_equal(x, y)
    # without a seed the stream continues: the same as one Generator shared from the start
    shared = np.random.default_rng(8)
    venv.reset(seed=shared)
    venv.step(actions[0])
    venv.reset()
    mirror = np.random.default_rng(8)
    venv.reset(seed=mirror)
    venv.step(actions[0])
    venv.reset(seed=mirror)
    assert shared.bit_generator.state == mirror.bit_generator.state


def test_vecenv_bad_calls_are_named_and_change_nothing(backend):
    venv = VecEnv(mf.Chain(slip=0.5).sample(2, 0), 2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.zeros(4, dtype=np.int64))
    venv.reset(seed=1)
    state = (venv.state, venv.np_random.bit_generator.state)
    for bad, err in ((1.5, TypeError), (-1, ValueError), ("1", TypeError), ([1, 2], TypeError)):
        with pytest.raises(err, match="seed"):
            venv.reset(seed=bad)
    with pytest.raises(TypeError, match="options"):
        venv.reset(seed=2, options="x")
    with pytest.raises(ValueError, match="actions"):
        venv.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(venv.state, state[0])
    assert venv.np_random.bit_generator.state == state[1]
    with pytest.raises(TypeError, match="np_random"):
        venv.np_random = 3


# ---------------------------------------------------------------------------------------------
# without Gymnasium
# ---------------------------------------------------------------------------------------------

NO_GYM_CHILD = """
    import json
    import numpy as np
    import metarl_fast as mf
    from metarl_fast.rollout import MultiDiscrete, VecEnv
    from metarl_fast.tasks import Discrete, TabularEnv

    task = mf.Chain(slip=0.3, horizon=5).sample(2, 1)[1]
    env = task.make_env()
    assert type(env) is TabularEnv and type(env.action_space) is Discrete
    try:
        task.as_gymnasium()
        raise SystemExit("as_gymnasium() worked without gymnasium")
    except ImportError as err:
        assert "pip install gymnasium" in str(err)
    samples = [int(env.action_space.sample()) for _ in range(20)]
    assert all(0 <= a < 2 for a in samples)
    env.action_space.seed(3)
    seeded = [int(env.action_space.sample()) for _ in range(20)]
    obs, info = env.reset(seed=3)
    traj = [int(obs)]
    for k in range(12):
        obs, reward, terminated, truncated, info = env.step(k % 2)
        traj.append([int(obs), reward, terminated, truncated])
        if terminated or truncated:
            traj.append(int(env.reset()[0]))
    venv = VecEnv(mf.TabularMDPs(n_states=4, n_actions=2, horizon=3).sample(2, 0), 2)
    assert type(venv) is VecEnv and venv.metadata["autoreset_mode"] == "SameStep"
    assert venv.observation_space == MultiDiscrete([4] * 4) and venv.single_action_space == Discrete(2)
    vobs, infos = venv.reset(seed=5)
    vtraj = [vobs.tolist()]
    for k in range(7):
        o, r, te, tr, infos = venv.step(venv.action_space.sample(np.random.default_rng(k)))
        vtraj.append([o.tolist(), r.tolist(), te.tolist(), tr.tolist(), infos.get("_final_obs", np.zeros(0)).tolist()])
    print(json.dumps({"seeded": seeded, "traj": traj, "vtraj": vtraj}))
"""


def test_without_gymnasium_everything_works_and_draws_the_same():
    got = _run_child(NO_GYM_CHILD, hide_gymnasium=True)
    assert got["seeded"] == np.random.default_rng(3).integers(2, size=20).tolist()
    # the same calls here (with Gymnasium, if installed) give the same numbers
    task = mf.Chain(slip=0.3, horizon=5).sample(2, 1)[1]
    env = task.make_env()
    obs, _ = env.reset(seed=3)
    traj = [int(obs)]
    for k in range(12):
        obs, reward, terminated, truncated, _ = env.step(k % 2)
        traj.append([int(obs), reward, terminated, truncated])
        if terminated or truncated:
            traj.append(int(env.reset()[0]))
    assert got["traj"] == traj
    venv = VecEnv(mf.TabularMDPs(n_states=4, n_actions=2, horizon=3).sample(2, 0), 2)
    vobs, _ = venv.reset(seed=5)
    vtraj = [vobs.tolist()]
    for k in range(7):
        o, r, te, tr, infos = venv.step(MultiDiscrete([2] * 4).sample(np.random.default_rng(k)))
        vtraj.append([o.tolist(), r.tolist(), te.tolist(), tr.tolist(), infos.get("_final_obs", np.zeros(0)).tolist()])
    assert got["vtraj"] == vtraj
