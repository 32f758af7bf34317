"""In-context bandit learner: whole trials per second, Cython vs NumPy reference, same run.

    pytest benches/bench_incontext.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=incontext.json && python benches/ratios.py incontext.json

``extra_info['rows']`` is the number of pulls per call, so the table's "per item" column is the
cost of one pull (features of every arm, softmax, two uniforms, and the score function for
``reinforce_trials``).  The baseline agents (``metarl_fast.baselines``) run beside them for scale.
"""
import numpy as np
import pytest

from metarl_fast import baselines as bl
from metarl_fast import incontext

from conftest import grid

# (n_tasks, n_arms, n_pulls)
SIZES = grid([(10_000, 5, 10), (10_000, 5, 25), (1_000, 20, 50)], [(200, 5, 10)])
# weights of a sharp, exploring policy (the KG(*) index m + (r - 1) kg, scaled): the kernels' cost
# does not depend on the values, only their shape
WEIGHTS = np.array([30.0, 0.0, 0.0, 0.0, 30.0, 0.0, 0.0, 0.0])


def n_tasks_for(benchmark, n_tasks):
    """Under --benchmark-disable the body runs once, only to check it works: keep it small."""
    return min(n_tasks, 200) if benchmark.disabled else n_tasks


@pytest.mark.parametrize("kernel", ["run_trials", "reinforce_trials"])
@pytest.mark.parametrize("n_tasks,n_arms,n_pulls", SIZES)
def test_trials(benchmark, backend, kernel, n_tasks, n_arms, n_pulls):
    rng = np.random.default_rng(0)
    means = rng.random((n_tasks_for(benchmark, n_tasks), n_arms))
    benchmark.group = f"incontext.{kernel} tasks={n_tasks} arms={n_arms} pulls={n_pulls}"
    benchmark.extra_info.update(rows=n_tasks * n_pulls, backend=backend)
    result = benchmark(getattr(incontext, kernel), WEIGHTS, means, n_pulls, rng)
    totals = result if kernel == "run_trials" else result[0]
    assert totals.shape == (means.shape[0],)


@pytest.mark.parametrize("n_tasks,n_arms,n_pulls", grid([(10_000, 5, 10)], [(200, 5, 10)]))
def test_meta_iteration(benchmark, backend, n_tasks, n_arms, n_pulls):
    """One meta-training iteration of :meth:`InContextBanditLearner.fit` (tasks, trials, Adam)."""
    learner = incontext.InContextBanditLearner(WEIGHTS / 10)
    rng = np.random.default_rng(0)
    benchmark.group = f"incontext.fit iteration tasks={n_tasks} arms={n_arms} pulls={n_pulls}"
    benchmark.extra_info.update(rows=n_tasks * n_pulls, backend=backend)
    history = benchmark(learner.fit, n_arms, n_pulls, rng, n_iterations=1,
                        batch_size=n_tasks_for(benchmark, n_tasks))
    assert history.shape == (1,)


@pytest.mark.parametrize("agent", [bl.PosteriorGreedyAgent(), bl.ThompsonSamplingAgent()],
                         ids=lambda a: a.name)
@pytest.mark.parametrize("n_tasks,n_arms,n_pulls", grid([(10_000, 5, 10)], [(200, 5, 10)]))
def test_baseline_agents(benchmark, backend, agent, n_tasks, n_arms, n_pulls):
    rng = np.random.default_rng(0)
    means = rng.random((n_tasks_for(benchmark, n_tasks), n_arms))
    benchmark.group = f"baselines.{agent.name} tasks={n_tasks} arms={n_arms} pulls={n_pulls}"
    benchmark.extra_info.update(rows=n_tasks * n_pulls, backend=backend)
    totals = benchmark(agent.run_trials, means, n_pulls, rng)
    assert totals.shape == (means.shape[0],)
