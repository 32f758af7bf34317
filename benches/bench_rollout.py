"""Environment steps per second: fused ``rollout`` and ``VecEnv.step``, Cython vs NumPy reference.

``TabularMDPs()`` (10 states, 5 actions, horizon 10, Gaussian rewards, Dirichlet transitions) with
a tabular softmax policy; one task (a single environment running episodes one after another) and
1024 tasks.  Every call of a group does the same work on both backends, so the time ratio is the
speed ratio; ``extra_info["steps"]`` gives the steps per call.  A GridNavigation group times the
path for episodes of varying length (terminal goal states).

    pytest benches/bench_rollout.py --benchmark-only --benchmark-columns=min,mean,median
"""
import numpy as np
import pytest

from conftest import QUICK, grid
from metarl_fast.policy import TabularSoftmaxPolicy
from metarl_fast.rollout import RolloutWorkspace, VecEnv, rollout
from metarl_fast.tasks import GridNavigation, TabularMDPs

# (n_tasks, n_episodes per task)
ROLLOUTS = grid([(1, 100), (1024, 10)], [(1, 3), (64, 2)])
VEC_TASKS = grid([1024], [64])
# the RolloutWorkspace groups: 10 episodes of horizon 10 per task, about 50 bytes of outputs per
# step, so 5 MB (1024 tasks) to 330 MB (65536 tasks) per call
WORKSPACE_TASKS = grid([1024, 16384, 65536], [64])


@pytest.mark.parametrize("n_tasks,n_episodes", ROLLOUTS)
def test_rollout_tabular_mdps(benchmark, backend, n_tasks, n_episodes):
    batch = TabularMDPs().sample(n_tasks, 0)
    batch.tables  # built once per batch, outside the timed region
    policy = TabularSoftmaxPolicy(10, 5, theta=np.random.default_rng(1).normal(size=(10, 5)))
    rng = np.random.default_rng(2)
    benchmark.group = f"rollout TabularMDPs {n_tasks} tasks x {n_episodes} episodes"
    steps = n_tasks * n_episodes * 10
    benchmark.extra_info.update(backend=backend, steps=steps)
    if backend == "numpy" and not QUICK:
        benchmark.pedantic(rollout, (policy, batch, n_episodes, rng), rounds=3, iterations=1)
        traj = rollout(policy, batch, n_episodes, rng)
    else:
        traj = benchmark(rollout, policy, batch, n_episodes, rng)
    assert traj.n_steps == steps


@pytest.mark.parametrize("n_tasks", VEC_TASKS)
def test_vecenv_step_tabular_mdps(benchmark, backend, n_tasks):
    venv = VecEnv(TabularMDPs().sample(n_tasks, 0))
    rng = np.random.default_rng(3)
    venv.reset(seed=rng)
    actions = rng.integers(5, size=venv.n_envs)
    benchmark.group = f"VecEnv.step TabularMDPs {n_tasks} envs"
    benchmark.extra_info.update(backend=backend, steps=n_tasks)
    obs, rewards, terminated, truncated, infos = benchmark(venv.step, actions)
    assert obs.shape == (n_tasks,)


@pytest.mark.parametrize("n_tasks", grid([1024], [16]))
def test_rollout_grid_navigation(benchmark, backend, n_tasks):
    """Episodes that end at the goal (terminal states): the variable-length path."""
    batch = GridNavigation().sample(n_tasks, 0)
    batch.tables
    policy = TabularSoftmaxPolicy(49, 5, theta=np.random.default_rng(1).normal(size=(49, 5)))
    rng = np.random.default_rng(2)
    benchmark.group = f"rollout GridNavigation(7) {n_tasks} tasks x 10 episodes"
    benchmark.extra_info.update(backend=backend)
    if backend == "numpy" and not QUICK:
        benchmark.pedantic(rollout, (policy, batch, 10, rng), rounds=3, iterations=1)
    else:
        traj = benchmark(rollout, policy, batch, 10, rng)
        assert traj.n_tasks == n_tasks


@pytest.mark.parametrize("n_tasks,n_episodes", ROLLOUTS)
def test_rollout_random_number_floor(benchmark, n_tasks, n_episodes):
    """The same random numbers the TabularMDPs rollout draws (per step: an action uniform, a
    reward normal, a next-state uniform), drawn alone in bulk from the same kind of generator:
    the floor of that group (pytest benches/bench_rollout.py -k "tabular_mdps or floor")."""
    rng = np.random.default_rng(2)
    shape = (n_tasks, n_episodes, 10)

    def draws():
        return rng.random(shape), rng.standard_normal(shape), rng.random(shape)

    benchmark.group = f"rollout TabularMDPs {n_tasks} tasks x {n_episodes} episodes"
    benchmark.extra_info.update(backend="random numbers alone", steps=n_tasks * n_episodes * 10)
    out = benchmark(draws)
    assert out[0].shape == shape



@pytest.mark.parametrize("family", ["GridNavigation(7)", "TabularMDPs"])
@pytest.mark.parametrize("n_tasks", WORKSPACE_TASKS)
@pytest.mark.parametrize("outputs", ["fresh arrays", "reused workspace"])
def test_rollout_workspace(benchmark, backend, family, n_tasks, outputs):
    """The fused rollout allocating its outputs at every call (large ones mapped and page-faulted
    afresh) against ``out=RolloutWorkspace(...)`` reused across calls; ``extra_info["steps"]`` is
    the steps of the first call (GridNavigation's episodes end at the goal), so time per step =
    time / steps.  The NumPy reference runs the 1024-task groups only (and the quick grid)."""
    if backend == "numpy" and not QUICK and n_tasks > 1024:
        pytest.skip("the NumPy reference takes seconds per call at this size")
    batch = (GridNavigation() if family.startswith("Grid") else TabularMDPs()).sample(n_tasks, 0)
    batch.tables
    policy = TabularSoftmaxPolicy(batch.n_states, batch.n_actions,
                                  theta=np.random.default_rng(1).normal(size=(batch.n_states, batch.n_actions)))
    rng = np.random.default_rng(2)
    kwargs = {"out": RolloutWorkspace(n_tasks, 10, batch.horizon)} if outputs == "reused workspace" else {}
    steps = rollout(policy, batch, 10, rng, **kwargs).n_steps  # (the workspace's pages faulted here)
    benchmark.group = f"rollout workspace {family} {n_tasks} tasks x 10 episodes"
    benchmark.extra_info.update(backend=backend, steps=steps, outputs=outputs)
    if backend == "numpy" and not QUICK:
        traj = benchmark.pedantic(rollout, (policy, batch, 10, rng), kwargs, rounds=3, iterations=1)
    else:
        traj = benchmark(rollout, policy, batch, 10, rng, **kwargs)
    assert traj.n_tasks == n_tasks
