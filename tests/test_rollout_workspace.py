"""Issue 21: ``rollout(..., out=RolloutWorkspace(...))`` writes into reused output arrays and gives
the same results, bit for bit, as a call that allocates them; bad workspaces are refused before
anything is drawn or written, and nothing past the rollout's own slots is ever written."""
import threading

import numpy as np
import pytest

import metarl_fast as mf
from conftest import needs_cython
from metarl_fast._backend import active
from metarl_fast.pool import ReplayConfig
from metarl_fast.reference.envs import ROLLOUT_OUT_FIELDS
from metarl_fast.rollout import RolloutWorkspace, action_tables, rollout

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp", "task_id",
          "episode_length", "episode_return", "episode_start")

FAMILIES = {
    "grid": lambda: mf.GridNavigation(size=4, horizon=7),          # terminal states
    "mdps": lambda: mf.TabularMDPs(n_states=4, n_actions=3),       # gaussian noise, random moves
    "chain": lambda: mf.Chain(n_states=3, slip=0.3),               # random moves, no noise
    "bandits": lambda: mf.BernoulliBandits(n_arms=3),              # bernoulli rewards
    "random-start": lambda: mf.TabularFamily(                      # random starts, transition rewards
        sampler=lambda n, rng: dict(P=rng.dirichlet(np.ones(3), size=(n, 3, 2)), R=np.zeros((n, 3, 2)),
                                    horizon=4, start=rng.dirichlet(np.ones(3), size=n),
                                    terminal=np.tile([False, False, True], (n, 1)),
                                    reward_noise="transition", reward_next=rng.normal(size=(n, 3, 2, 3)))),
}


def _policy(batch, seed=0):
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    policy.params[:] = np.random.default_rng(seed).normal(size=policy.n_params)
    return policy


def _assert_same(got, want):
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [0, 7])
def test_workspace_gives_the_same_steps_and_stream_as_fresh_arrays(backend, family, seed):
    batch = FAMILIES[family]().sample(9, seed)
    policy = _policy(batch, seed)
    workspace = RolloutWorkspace(9, 5, batch.horizon)
    for name in FIELDS:  # garbage from an earlier use must not leak into the results
        getattr(workspace, name)[...] = 7
    rng_fresh, rng_ws = np.random.default_rng(seed + 100), np.random.default_rng(seed + 100)
    want = rollout(policy, batch, 5, rng_fresh)
    got = rollout(policy, batch, 5, rng_ws, out=workspace)
    _assert_same(got, want)
    assert rng_ws.bit_generator.state == rng_fresh.bit_generator.state
    assert np.shares_memory(got.obs, workspace.obs) and np.shares_memory(got.episode_start, workspace.episode_start)


def test_one_workspace_reused_across_sizes_equals_fresh_calls(backend):
    """Larger, smaller, other families and per-task policies through the same workspace: each call
    equals a fresh call, and the previous result's arrays are the ones overwritten."""
    workspace = RolloutWorkspace(12, 6, 10)
    rng_fresh, rng_ws = np.random.default_rng(3), np.random.default_rng(3)
    previous = None
    for family, n_tasks, n_episodes in [("mdps", 12, 5), ("grid", 3, 2), ("chain", 12, 6), ("grid", 12, 6),
                                        ("bandits", 1, 1), ("mdps", 7, 3)]:
        batch = FAMILIES[family]().sample(n_tasks, n_tasks)
        policies = [_policy(batch, j) for j in range(n_tasks)] if family == "chain" else _policy(batch)
        want = rollout(policies, batch, n_episodes, rng_fresh)
        got = rollout(policies, batch, n_episodes, rng_ws, out=workspace)
        _assert_same(got, want)
        if previous is not None:
            assert np.shares_memory(previous.reward, got.reward)
        previous = got


def test_buffer_gets_the_same_transitions_with_a_workspace(backend):
    batch = FAMILIES["grid"]().sample(4, 1)
    buffers = [mf.ReplayBuffer(1000), mf.ReplayBuffer(1000)]
    rollout(_policy(batch), batch, 3, np.random.default_rng(5), buffer=buffers[0])
    rollout(_policy(batch), batch, 3, np.random.default_rng(5), buffer=buffers[1],
            out=RolloutWorkspace(4, 3, batch.horizon))
    assert len(buffers[0]) == len(buffers[1]) > 0
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id", "logp"):
        np.testing.assert_array_equal(getattr(buffers[1], name), getattr(buffers[0], name), err_msg=name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nothing_past_the_rollouts_slots_is_written(backend, family):
    """A workspace larger than the call: entries past n_tasks x n_episodes x horizon (steps) and
    n_tasks x n_episodes (episodes; + 1 for the offsets) keep their sentinel."""
    batch = FAMILIES[family]().sample(5, 2)
    workspace = RolloutWorkspace(8, 4, batch.horizon + 3)
    sentinels = {}
    for name in FIELDS:
        arr = getattr(workspace, name)
        arr[...] = np.ones(1, dtype=arr.dtype)[0] * 3
        sentinels[name] = arr.copy()
    rollout(_policy(batch), batch, 3, np.random.default_rng(1), out=workspace)
    steps, episodes = 5 * 3 * batch.horizon, 5 * 3
    for name in FIELDS:
        used = {"episode_length": episodes, "episode_return": episodes, "episode_start": episodes + 1}.get(name, steps)
        np.testing.assert_array_equal(getattr(workspace, name)[used:], sentinels[name][used:], err_msg=name)


@needs_cython
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk_steps", [1, 37, 10**9])
def test_compiled_workspace_rollout_in_chunks_equals_the_reference(family, chunk_steps):
    from metarl_fast._core import envs

    batch = FAMILIES[family]().sample(9, 3)
    policy = _policy(batch)
    workspace = RolloutWorkspace(10, 5, batch.horizon)
    old = envs._set_rollout_chunk_steps(chunk_steps)
    try:
        with mf.use_backend("cython"):
            got = rollout(policy, batch, 5, np.random.default_rng(11), out=workspace)
    finally:
        envs._set_rollout_chunk_steps(old)
    with mf.use_backend("numpy"):
        want = rollout(policy, batch, 5, np.random.default_rng(11), out=RolloutWorkspace(9, 5, batch.horizon))
    _assert_same(got, want)


# ---------------------------------------------------------------------------------------------
# bad workspaces
# ---------------------------------------------------------------------------------------------

def test_workspace_constructor_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_tasks"):
        RolloutWorkspace(0, 1, 1)
    with pytest.raises(TypeError, match="n_episodes"):
        RolloutWorkspace(1, 1.5, 1)
    with pytest.raises(TypeError, match="horizon"):
        RolloutWorkspace(1, 1, "10")
    with pytest.raises(ValueError, match=r"RolloutWorkspace\(100000, 1000, 10\)"):
        RolloutWorkspace(100_000, 1000, 10)


def _replace_obs(ws):
    ws.obs = np.zeros(ws.max_steps, dtype=np.int64)


def _reinterpret_obs(ws):
    ws.obs = ws.obs.view(np.float64)


def _read_only_reward(ws):
    ws.reward.setflags(write=False)


def _shrink_logp(ws):
    ws.logp.shape = (ws.max_steps // 2, 2)


def _delete_task_id(ws):
    del ws.task_id


def _shrink_in_place(ws):
    ws.next_obs.resize(3, refcheck=False)


def test_rollout_rejects_bad_workspaces_before_drawing(backend):
    batch = FAMILIES["grid"]().sample(4, 0)
    policy = _policy(batch)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    cases = [
        (lambda: rollout(policy, batch, 3, rng, out=np.zeros(100)), TypeError, "out must be a .*RolloutWorkspace"),
        (lambda: rollout(policy, batch, 3, rng, out=RolloutWorkspace(4, 2, batch.horizon)), ValueError,
         "out .*too small.*84 steps"),
        (lambda: rollout(policy, batch, 3, rng, out=RolloutWorkspace(1, 11, batch.horizon + 1)), ValueError,
         "out .*too small.*in 12 episodes"),
        (lambda: rollout(policy, batch, 3, rng, out=RolloutWorkspace(4, 3, batch.horizon - 1)), ValueError,
         "out .*too small"),
    ]
    for spoil, match in [(_replace_obs, "out.obs .*replaced"), (_reinterpret_obs, "out.obs .*replaced"),
                         (_read_only_reward, "out.reward was changed"), (_shrink_logp, "out.logp was changed"),
                         (_delete_task_id, "out.task_id .*replaced"), (_shrink_in_place, "out.next_obs was changed")]:
        workspace = RolloutWorkspace(4, 3, batch.horizon)
        spoil(workspace)
        cases.append((lambda workspace=workspace: rollout(policy, batch, 3, rng, out=workspace), ValueError, match))
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()
    assert rng.bit_generator.state == state


def test_a_workspace_serves_one_call_at_a_time(backend):
    batch = FAMILIES["mdps"]().sample(2, 0)
    workspace = RolloutWorkspace(2, 2, batch.horizon)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with workspace._exclusive():  # as if another thread's call were running
        with pytest.raises(RuntimeError, match="another thread.*RolloutWorkspace"):
            rollout(_policy(batch), batch, 2, rng, out=workspace)
    assert rng.bit_generator.state == state
    assert rollout(_policy(batch), batch, 2, rng, out=workspace).n_steps == 2 * 2 * batch.horizon
    done = []
    thread = threading.Thread(target=lambda: done.append(
        rollout(_policy(batch), batch, 2, np.random.default_rng(1), out=workspace).n_steps))
    thread.start()
    thread.join()
    assert done == [2 * 2 * batch.horizon]


# ---------------------------------------------------------------------------------------------
# the kernels' out argument
# ---------------------------------------------------------------------------------------------

def _kernel_args(n_tasks=3):
    batch = FAMILIES["grid"]().sample(n_tasks, 0)
    cdf, logp = action_tables(np.random.default_rng(0).normal(size=(1, batch.n_states, batch.n_actions)))
    return batch.tables, cdf, logp, np.zeros(n_tasks, dtype=np.int64)


def _kernel_out(n_steps, n_episodes):
    return tuple(np.zeros(n_steps if per_step else n_episodes, dtype=dtype)
                 for _, dtype, per_step in ROLLOUT_OUT_FIELDS)


def test_kernel_out_equals_fresh_arrays(backend):
    args = _kernel_args()
    want = active.envs.rollout(*args, 4, np.random.default_rng(2))
    out = _kernel_out(3 * 4 * args[0].horizon + 5, 3 * 4 + 2)
    got = active.envs.rollout(*args, 4, np.random.default_rng(2), out=out)
    for a, b, (name, _, _) in zip(got, want, ROLLOUT_OUT_FIELDS):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert np.shares_memory(a, out[[f[0] for f in ROLLOUT_OUT_FIELDS].index(name)])


def test_kernel_rejects_bad_out(backend):
    args = _kernel_args()
    steps, episodes = 3 * 2 * args[0].horizon, 3 * 2
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state

    def with_field(j, arr):
        out = list(_kernel_out(steps, episodes))
        out[j] = arr
        return tuple(out)

    good = _kernel_out(steps, episodes)
    read_only = np.zeros(steps)
    read_only.setflags(write=False)
    shared = np.zeros(2 * steps, dtype=np.int64)
    cases = [
        (list(good), TypeError, "out must be None or a tuple of 10 arrays"),
        (good[:9], TypeError, "tuple of 10 arrays.*length 9"),
        (with_field(0, list(range(steps))), TypeError, "out obs must be a numpy.ndarray"),
        (with_field(2, np.zeros(steps, dtype=np.float32)), TypeError, "out reward must have dtype float64"),
        (with_field(4, np.zeros(steps, dtype=np.uint8)), TypeError, "out terminated must have dtype bool"),
        (with_field(1, np.zeros(steps, dtype=">i8")), TypeError, "out action must have dtype int64"),
        (with_field(3, np.zeros((steps, 1), dtype=np.int64)), ValueError, "out next_obs must be 1-D"),
        (with_field(6, np.zeros(2 * steps)[::2]), ValueError, "out logp must be C-contiguous"),
        (with_field(6, read_only), ValueError, "out logp must be .*writeable"),
        (with_field(7, np.zeros(steps - 1, dtype=np.int64)), ValueError, "out task_id holds .* needs"),
        (with_field(9, np.zeros(episodes - 1)), ValueError, "out episode_return holds .* needs"),
        (with_field(2, args[2].reshape(-1)), ValueError, "overlap"),  # action_logp
    ]
    overlapping = list(_kernel_out(steps, episodes))
    overlapping[0], overlapping[1] = shared[:steps], shared[steps - 1:]
    cases.append((tuple(overlapping), ValueError, "overlap"))
    for out, err, match in cases:
        with pytest.raises(err, match=match):
            active.envs.rollout(*args, 2, rng, out=out)
    # policy_of_task, read while the steps are written, inside the action array
    action = np.zeros(steps, dtype=np.int64)
    with pytest.raises(ValueError, match="overlap"):
        active.envs.rollout(*args[:3], action[:3], 2, rng, out=with_field(1, action))
    assert rng.bit_generator.state == state
    for arr in good:
        assert not arr.any()


@needs_cython
def test_twins_write_the_same_workspace():
    batch = FAMILIES["random-start"]().sample(6, 4)
    results = []
    for name in ("cython", "numpy"):
        with mf.use_backend(name):
            workspace = RolloutWorkspace(6, 4, batch.horizon)
            results.append(rollout(_policy(batch), batch, 4, np.random.default_rng(9), out=workspace))
    _assert_same(*results)


# ---------------------------------------------------------------------------------------------
# the meta-learners' rollouts reuse their outputs from iteration to iteration
# ---------------------------------------------------------------------------------------------

def _learner_run(make, batches, reuse, **kwargs):
    policy = mf.TabularSoftmaxPolicy(batches[0].n_states, batches[0].n_actions)
    learner = make(policy, episodes_per_task=3, **kwargs)
    if not reuse:
        learner.workspaces = None
    rng = np.random.default_rng(5)
    stats = [learner.meta_step(batch, rng) for batch in batches]
    return policy.params.copy(), [(s["pre_return"], s["post_return"], s["direction_norm"]) for s in stats], learner


@pytest.mark.parametrize("make, kwargs", [
    (mf.MAML, dict(inner_steps=2)),
    (mf.MAML, dict(hessian_data="shared")),
    (mf.FOMAML, dict(inner_estimator="actor-critic")),
    (mf.Reptile, dict(inner_steps=3)),
    (mf.FOMAML, dict(replay=ReplayConfig(capacity=5000, episodes=4))),
], ids=["maml-k2", "maml-shared", "fomaml-ac", "reptile-k3", "fomaml-replay"])
def test_meta_steps_with_reused_rollout_memory_equal_fresh_ones(backend, make, kwargs):
    # batches of different sizes: the workspaces grow, and a smaller batch reuses a larger one
    batches = [mf.GridNavigation(size=4).sample(n, seed) for seed, n in enumerate((3, 8, 2, 8, 5))]
    fresh_params, fresh_stats, _ = _learner_run(make, batches, False, **kwargs)
    params, stats, learner = _learner_run(make, batches, True, **kwargs)
    np.testing.assert_array_equal(params, fresh_params)
    assert stats == fresh_stats
    spaces = list(learner.workspaces._spaces)
    assert spaces  # the rollouts did go through workspaces
    learner.meta_step(batches[1], np.random.default_rng(9))  # one more iteration: the same memory
    assert [a is b for a, b in zip(learner.workspaces._spaces, spaces)] == [True] * len(spaces)
    assert len(learner.workspaces._spaces) == len(spaces)


@pytest.mark.parametrize("family", ["grid", "mdps"])
def test_vec_env_without_copies_returns_the_same_arrays_and_the_same_numbers(backend, family):
    """VecEnv(copy=False) writes every step into the same arrays (no allocation per step) and
    gives, step for step, the numbers of the copying VecEnv; copy=True never hands out an array
    twice."""
    batch = (mf.GridNavigation(size=3).sample(3, 1) if family == "grid"
             else mf.TabularMDPs(n_states=4, n_actions=3, horizon=3).sample(3, 1))
    fresh, reused = mf.VecEnv(batch, 2), mf.VecEnv(batch, 2, copy=False)
    assert repr(reused).endswith("copy=False)")
    obs_a, _ = fresh.reset(seed=5)
    obs_b, _ = reused.reset(seed=5)
    np.testing.assert_array_equal(obs_a, obs_b)
    act_rng = np.random.default_rng(0)
    seen, ended_steps = None, 0
    for _ in range(12):
        actions = act_rng.integers(batch.n_actions, size=fresh.num_envs)
        a, b = fresh.step(actions), reused.step(actions)
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y)
        assert a[4].keys() == b[4].keys()
        for key in a[4]:
            if key != "final_info":
                np.testing.assert_array_equal(a[4][key], b[4][key])
        ended_steps += bool(a[4])
        arrays = tuple(id(x) for x in b[:4])
        assert seen is None or arrays == seen  # the same four arrays every step
        seen = arrays
        assert reused.final_obs is b[0] or reused.final_obs is reused._outputs[4]
    assert ended_steps > 0  # episodes ended: the infos' arrays were compared too
    again = fresh.step(np.zeros(fresh.num_envs, dtype=np.int64))
    assert all(x is not y for x, y in zip(again[:4], a[:4]))


def test_vec_env_copy_must_be_a_bool():
    batch = mf.GridNavigation(size=3).sample(1, 0)
    with pytest.raises(TypeError, match="copy must be a bool"):
        mf.VecEnv(batch, copy="no")
