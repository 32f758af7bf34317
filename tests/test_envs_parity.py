"""The Cython stepping kernels equal the NumPy reference bit for bit (hypothesis-generated tasks)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from conftest import needs_cython
from metarl_fast.policy import TabularSoftmaxPolicy
from metarl_fast.rollout import Trajectories, VecEnv, rollout
from metarl_fast.tasks import REWARD_NOISES, TaskBatch


@st.composite
def task_batches(draw):
    n = draw(st.integers(1, 4))
    S = draw(st.integers(1, 6))
    A = draw(st.integers(1, 4))
    horizon = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    P = rng.dirichlet(np.ones(S), size=(n, S, A))
    kind_p = draw(st.sampled_from(["dense", "sparse", "deterministic"]))
    if kind_p != "dense":
        keep = rng.random(P.shape) < (0.4 if kind_p == "sparse" else 0.0)
        keep[..., 0] |= ~keep.any(axis=-1)  # at least one reachable state per row
        if kind_p == "deterministic":
            keep = np.eye(S, dtype=bool)[rng.integers(S, size=(n, S, A))]
        P = np.where(keep, P + 0.1, 0.0)
        P /= P.sum(axis=-1, keepdims=True)
    noise = draw(st.sampled_from(REWARD_NOISES))
    R = rng.random((n, S, A)) if noise == "bernoulli" else rng.normal(size=(n, S, A))
    if draw(st.booleans()):
        start = rng.dirichlet(np.ones(S), size=n)
    else:
        start = np.eye(S)[rng.integers(S, size=n)]
    terminal = rng.random((n, S)) < draw(st.sampled_from([0.0, 0.3]))
    kwargs = dict(start=start, terminal=terminal, reward_noise=noise,
                  reward_std=rng.random(n) * 2)
    if noise == "transition":
        kwargs["reward_next"] = rng.normal(size=(n, S, A, S))
    theta = rng.normal(size=(S, A)) * 3
    if A > 1:
        theta[rng.random((S, A)) < 0.2] = -np.inf
        theta[np.all(theta == -np.inf, axis=1), 0] = 0.0
    return TaskBatch(P, R, horizon, **kwargs), theta


@needs_cython
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=task_batches(), n_episodes=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_rollout_twins_identical(case, n_episodes, seed):
    batch, theta = case
    pol = TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    pol.theta[...] = theta
    out, states = [], []
    for be in ("cython", "numpy"):
        rng = np.random.default_rng(seed)
        with mf.use_backend(be):
            out.append(rollout(pol, batch, n_episodes, rng))
        states.append(rng.bit_generator.state)
    a, b = out
    for name in Trajectories._FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    np.testing.assert_array_equal(a.episode_length, b.episode_length)
    np.testing.assert_array_equal(a.episode_return, b.episode_return)
    assert states[0] == states[1]
    # forbidden actions are never taken
    assert np.all(np.isfinite(a.logp))


@needs_cython
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=task_batches(), n_envs=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_vec_step_twins_identical(case, n_envs, seed):
    batch, _ = case
    runs = []
    for be in ("cython", "numpy"):
        rng = np.random.default_rng(seed)
        act_rng = np.random.default_rng(seed + 1)
        with mf.use_backend(be):
            venv = VecEnv(batch, n_envs)
            trace = [venv.reset(seed=rng)[0]]
            for _ in range(12):
                acts = act_rng.integers(batch.n_actions, size=venv.n_envs)
                trace.extend(venv.step(acts)[:4])
                trace.append(venv.final_obs.copy())
                trace.append(venv.elapsed)
        trace.append(rng.bit_generator.state)
        runs.append(trace)
    for x, y in zip(*runs):
        if isinstance(x, dict):
            assert x == y
        else:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


def test_single_state_single_action(backend):
    batch = TaskBatch(np.ones((2, 1, 1, 1)), np.array([[[1.5]], [[-1.0]]]), 3)
    traj = rollout(TabularSoftmaxPolicy(1, 1), batch, 2, 0)
    np.testing.assert_array_equal(traj.episode_return, [[4.5, 4.5], [-3.0, -3.0]])
    assert np.all(traj.logp == 0.0) and np.all(traj.action == 0)


def test_kernels_validate_env_state(backend):
    from metarl_fast._backend import active

    batch = TaskBatch(np.ones((1, 1, 2, 1)), np.zeros((1, 1, 2)), 3)
    t = batch.tables
    task = np.zeros(2, dtype=np.int64)
    state = np.zeros(2, dtype=np.int64)
    elapsed = np.zeros(2, dtype=np.int64)
    outs = [np.empty(2, dtype=np.int64), np.empty(2), np.empty(2, dtype=bool), np.empty(2, dtype=bool),
            np.empty(2, dtype=np.int64)]
    rng = np.random.default_rng(0)
    active.envs.vec_step(t, task, state, elapsed, [1, 0], rng, *outs)
    with pytest.raises(ValueError, match="elapsed"):
        active.envs.vec_step(t, task, state, np.array([0, 3]), [1, 0], rng, *outs)
    with pytest.raises(ValueError, match="state"):
        active.envs.vec_step(t, task, np.array([0, 1]), elapsed, [1, 0], rng, *outs)
    with pytest.raises(ValueError, match="task_of_env"):
        active.envs.vec_reset(t, task + 1, state, elapsed, rng)
    with pytest.raises(TypeError, match="reward_out"):
        active.envs.vec_step(t, task, state, elapsed, [1, 0], rng, outs[0], outs[0], *outs[2:])
    with pytest.raises(TypeError, match="state"):
        active.envs.vec_reset(t, task, state.astype(np.int32), elapsed, rng)


@needs_cython
@pytest.mark.parametrize("S,A", [(2, 1), (5, 5), (9, 6), (10, 5), (13, 9), (17, 2), (21, 12)])
@pytest.mark.parametrize("noise", REWARD_NOISES)
def test_rollout_twins_identical_for_every_row_width(S, A, noise):
    """The compiled kernel has separate loops for the CDF row widths (4, 8, 12, 16, other) of
    actions and next states; each equals the reference."""
    rng = np.random.default_rng(S * 100 + A)
    n = 6
    P = rng.dirichlet(np.ones(S), size=(n, S, A))
    R = rng.random((n, S, A)) if noise == "bernoulli" else rng.normal(size=(n, S, A))
    kwargs = dict(reward_noise=noise, reward_std=rng.random(n) + 0.5)
    if noise == "transition":
        kwargs["reward_next"] = rng.normal(size=(n, S, A, S))
    batch = TaskBatch(P, R, 7, **kwargs)
    pol = TabularSoftmaxPolicy(S, A, theta=rng.normal(size=(S, A)))
    out = []
    for be in ("cython", "numpy"):
        with mf.use_backend(be):
            out.append(rollout(pol, batch, 3, np.random.default_rng(11)))
    for name in Trajectories._FIELDS:
        np.testing.assert_array_equal(getattr(out[0], name), getattr(out[1], name), err_msg=name)
    np.testing.assert_array_equal(out[0].episode_return, out[1].episode_return)


@needs_cython
@pytest.mark.parametrize("S", [33, 47, 90])
@pytest.mark.parametrize("rows", ["dense", "sparse"])
@pytest.mark.parametrize("terminal", [0.0, 0.05])
def test_twins_identical_on_wide_rows_with_guide_tables(S, rows, terminal):
    """Rows of 32 or more compared sums are searched through their guide tables in every
    compiled stepping loop (lockstep, terminal states, VecEnv); each equals the reference's
    whole-row count, also on sparse rows (many equal sums: empty outcomes)."""
    rng = np.random.default_rng(S + (7 if rows == "sparse" else 0))
    n, A = 5, 3
    P = rng.dirichlet(np.full(S, 0.5), size=(n, S, A))
    if rows == "sparse":
        P = np.where(rng.random(P.shape) < 0.15, P + 0.05, 0.0)
        P[..., -1] += 1e-3  # every row reaches something
        P /= P.sum(axis=-1, keepdims=True)
    batch = TaskBatch(P, rng.normal(size=(n, S, A)), 12, reward_noise="gaussian",
                      terminal=rng.random((n, S)) < terminal)
    assert batch.tables.trans_guide.shape[-1] > 1
    pol = TabularSoftmaxPolicy(S, A, theta=rng.normal(size=(S, A)))
    out, traces = [], []
    for be in ("cython", "numpy"):
        with mf.use_backend(be):
            out.append(rollout(pol, batch, 9, np.random.default_rng(11)))
            venv = VecEnv(batch, 2)
            act_rng = np.random.default_rng(3)
            trace = [venv.reset(seed=4)[0]]
            for _ in range(30):
                trace.extend(venv.step(act_rng.integers(A, size=venv.n_envs))[:3])
            traces.append(trace)
    for name in Trajectories._FIELDS:
        np.testing.assert_array_equal(getattr(out[0], name), getattr(out[1], name), err_msg=name)
    np.testing.assert_array_equal(out[0].episode_length, out[1].episode_length)
    for x, y in zip(*traces):
        np.testing.assert_array_equal(x, y)


@needs_cython
@settings(max_examples=60, deadline=None)
@given(n_pol=st.integers(1, 3), S=st.integers(1, 5), A=st.integers(1, 12),
       scale=st.sampled_from([1.0, 30.0, 1e300]), seed=st.integers(0, 2**32 - 1))
def test_action_cdf_twins_identical(n_pol, S, A, scale, seed):
    from metarl_fast._core import envs as core_envs
    from metarl_fast.reference import envs as ref_envs

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_pol, S, A)) * scale
    if A > 1:
        x[rng.random(x.shape) < 0.2] = -np.inf
        x[np.all(x == -np.inf, axis=-1), 0] = rng.normal()
    cdf_c, z_c = core_envs.action_cdf(x)
    cdf_r, z_r = ref_envs.action_cdf(x)
    np.testing.assert_array_equal(cdf_c, cdf_r)
    np.testing.assert_array_equal(z_c, z_r)
    assert np.all(cdf_c[..., -1] >= 1.0)


@needs_cython
@pytest.mark.parametrize("value,match", [(np.nan, "policy 1, state 2: .*NaN"),
                                         (np.inf, "policy 1, state 2: .*[+]inf"),
                                         (-np.inf, "policy 1, state 2: .*all -inf")])
def test_action_cdf_rejects_bad_rows_like_the_reference(value, match):
    from metarl_fast._core import envs as core_envs
    from metarl_fast.reference import envs as ref_envs

    x = np.zeros((2, 3, 4))
    x[1, 2, :] = -np.inf
    x[1, 2, 1] = value
    for module in (core_envs, ref_envs):
        with pytest.raises(ValueError, match=match):
            module.action_cdf(x)
    with pytest.raises(TypeError, match="logits"):
        core_envs.action_cdf(x.astype(np.float32))


def test_episode_offsets(backend):
    from metarl_fast._backend import active

    length = np.array([[3, 0, 2], [1, 4, 5]], dtype=np.int64)
    np.testing.assert_array_equal(active.envs.episode_offsets(length), [0, 3, 3, 5, 6, 10, 15])
    assert active.envs.episode_offsets(length).dtype == np.int64
    # any layout or integer dtype: the same offsets
    np.testing.assert_array_equal(active.envs.episode_offsets(length.T.astype(np.int32)),
                                  [0, 3, 4, 4, 8, 10, 15])
