"""In-context MDP learner: whole trials per second, Cython vs NumPy reference, same run.

    pytest benches/bench_incontext_mdp.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=incontext_mdp.json && python benches/ratios.py incontext_mdp.json

``extra_info['rows']`` is the number of environment steps per call, so the table's "per item"
column is the cost of one step (features of every action, softmax, the environment step, the
score function for ``reinforce_trials``, and a share of the per-episode value iteration).
"""
import numpy as np
import pytest

from metarl_fast import incontext_mdp
from metarl_fast.tasks import GridNavigation, TabularMDPs

from conftest import grid

# (family, n_tasks, n_episodes)
SIZES = grid([("TabularMDPs(5,3,10)", 2_000, 5), ("TabularMDPs(10,5,10)", 1_000, 5),
              ("GridNavigation(5)", 1_000, 5)],
             [("TabularMDPs(5,3,10)", 50, 2)])
FAMILIES = {"TabularMDPs(5,3,10)": TabularMDPs(5, 3, 10),
            "TabularMDPs(10,5,10)": TabularMDPs(10, 5, 10),
            "GridNavigation(5)": GridNavigation(5)}
# a sharp, exploring policy: the kernels' cost does not depend on the values, only their shape
WEIGHTS = np.array([2.0, 2.0, 2.0, -1.5, 1.0, 2.0, 0.7, 2.0])


def n_tasks_for(benchmark, n_tasks):
    """Under --benchmark-disable the body runs once, only to check it works: keep it small."""
    return min(n_tasks, 50) if benchmark.disabled else n_tasks


@pytest.mark.parametrize("kernel", ["run_trials", "reinforce_trials"])
@pytest.mark.parametrize("family,n_tasks,n_episodes", SIZES)
def test_trials(benchmark, backend, kernel, family, n_tasks, n_episodes):
    tasks = FAMILIES[family].sample(n_tasks_for(benchmark, n_tasks), 0)
    tasks.tables  # built once, outside the timing
    rng = np.random.default_rng(0)
    benchmark.group = f"incontext_mdp.{kernel} {family} tasks={n_tasks} episodes={n_episodes}"
    benchmark.extra_info.update(rows=n_tasks * n_episodes * tasks.horizon, backend=backend)
    result = benchmark(getattr(incontext_mdp, kernel), WEIGHTS, tasks, n_episodes, rng)
    returns = result if kernel == "run_trials" else result[0]
    assert returns.shape == (tasks.n_tasks, n_episodes)


@pytest.mark.parametrize("n_tasks,n_episodes", grid([(1_000, 5)], [(50, 2)]))
def test_meta_iteration(benchmark, backend, n_tasks, n_episodes):
    """One meta-training iteration of :meth:`InContextMDPLearner.fit` (sample tasks, trials, Adam)."""
    learner = incontext_mdp.InContextMDPLearner(WEIGHTS / 10)
    family = FAMILIES["TabularMDPs(5,3,10)"]
    rng = np.random.default_rng(0)
    benchmark.group = f"incontext_mdp.fit iteration TabularMDPs(5,3,10) tasks={n_tasks} episodes={n_episodes}"
    benchmark.extra_info.update(rows=n_tasks * n_episodes * family.horizon, backend=backend)
    history = benchmark(learner.fit, family, n_episodes, rng, n_iterations=1,
                        batch_size=n_tasks_for(benchmark, n_tasks))
    assert history.shape == (1,)
