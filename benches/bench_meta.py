"""Meta-iterations per second: meta-batch 20 tasks, 20 episodes per task, K = 1, Cython vs NumPy.

The second-order MAML step must cost at most 3x the first-order (FOMAML) one: compare the
``maml`` and ``fomaml`` rows of the same group/backend.  ``maml-shared`` is MAML with
``hessian_data="shared"`` (no fresh episodes for the Hessian-vector product): the cost of the
unbiased default.

    pytest benches/bench_meta.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=meta.json && python benches/ratios.py meta.json
"""
import numpy as np
import pytest

import metarl_fast as mf

from conftest import grid

FAMILIES = {
    "TabularMDPs()": lambda: mf.TabularMDPs(),
    "GridNavigation(7)": lambda: mf.GridNavigation(size=7),
}
CASES = grid([(f, m, e) for f in FAMILIES for m in ("reptile", "fomaml", "maml", "maml-shared")
              for e in ("sampled",)]
             + [(f, m, "exact") for f in FAMILIES for m in ("fomaml", "maml")],
             [("GridNavigation(7)", "maml", "sampled"), ("GridNavigation(7)", "maml-shared", "sampled"),
              ("TabularMDPs()", "reptile", "sampled"),
              ("TabularMDPs()", "maml", "exact")])


@pytest.mark.parametrize("family,method,estimator", CASES)
def test_meta_iteration(benchmark, backend, family, method, estimator):
    dist = FAMILIES[family]()
    tasks = dist.sample(20, 0)
    probe = tasks[0]
    policy = mf.TabularSoftmaxPolicy(probe.n_states, probe.n_actions)
    # "maml-shared": the Hessian-vector products on the inner step's episodes (no fresh rollout)
    learner = mf.MetaLearner(policy, method.split("-")[0], inner_lr=0.5, inner_steps=1, episodes_per_task=20,
                             estimator=estimator, hessian_data="shared" if method.endswith("shared") else "fresh")
    rng = np.random.default_rng(0)
    benchmark.group = f"meta-iteration {family} {method} {estimator}"
    benchmark.extra_info.update(rows=1, backend=backend)
    stats = benchmark(learner.meta_step, tasks, rng)
    assert np.isfinite(stats["pre_return"])


SAMPLING_FAMILIES = {
    "GridNavigation(7)": lambda: mf.GridNavigation(size=7),
    "TabularMDPs()": lambda: mf.TabularMDPs(),
    "Chain()": lambda: mf.Chain(),
    "BernoulliBandits()": lambda: mf.BernoulliBandits(),
}


@pytest.mark.parametrize("part", ["task batch", "meta-iteration"])
@pytest.mark.parametrize("family", grid(list(SAMPLING_FAMILIES), ["GridNavigation(7)", "TabularMDPs()"]))
def test_task_sampling_share(benchmark, family, part):
    """A fresh meta-batch of 20 tasks (``sample(20)`` and the kernel tables it needs) against one
    MAML meta-iteration on a fixed batch (20 episodes per task, K = 1, from the uniform policy):
    the task batch's share of a meta-iteration as ``metarl-fast train`` runs it."""
    dist = SAMPLING_FAMILIES[family]()
    rng = np.random.default_rng(0)
    benchmark.group = f"task sampling share {family}"
    benchmark.extra_info.update(backend=part, rows=20)
    if part == "task batch":
        benchmark(lambda: dist.sample(20, rng).tables)
        return
    tasks = dist.sample(20, 1)
    policy = mf.TabularSoftmaxPolicy(tasks.n_states, tasks.n_actions)
    learner = mf.MetaLearner(policy, "maml", inner_lr=1.0, inner_steps=1, episodes_per_task=20)

    def step():
        policy.params[:] = 0.0  # the same work every round
        return learner.meta_step(tasks, rng)

    stats = benchmark(step)
    assert np.isfinite(stats["pre_return"])


REPLAY = {"on-policy": None, "replay 5": dict(episodes=5), "replay 32": dict(episodes=32),
          "actor-critic on-policy": None,
          "actor-critic windows 5x8": dict(episodes=5, order="windows", window=8, rho_bar=1.0)}


@pytest.mark.parametrize("mode", grid(list(REPLAY), ["on-policy", "replay 5", "actor-critic windows 5x8"]))
def test_meta_iteration_with_replay(benchmark, backend, mode):
    """A MAML meta-iteration on GridNavigation(7) (20 fresh tasks × 20 episodes, K = 1) with the
    replay pool: every rollout stored, each estimate adding up to M stored episodes per task.
    The pool is filled by 30 meta-iterations first, so that its tasks recur."""
    from metarl_fast.pool import ReplayConfig

    dist = mf.GridNavigation(size=7)
    policy = mf.TabularSoftmaxPolicy(49, 5)
    replay = REPLAY[mode]
    learner = mf.MetaLearner(policy, "maml", inner_lr=1.0, meta_lr=0.05, episodes_per_task=20,
                             replay=None if replay is None else ReplayConfig(**replay),
                             inner_estimator="actor-critic" if mode.startswith("actor") else "reinforce")
    rng = np.random.default_rng(0)
    for _ in range(30):
        learner.meta_step(dist.sample(20, rng), rng)
    benchmark.group = f"meta-iteration GridNavigation(7) maml with a fresh batch, {mode}"
    benchmark.extra_info.update(rows=1, backend=backend)
    stats = benchmark(lambda: learner.meta_step(dist.sample(20, rng), rng))
    assert np.isfinite(stats["pre_return"])


INCONTEXT_REPLAY = {"on-policy": None, "replay 500": dict(episodes=500, rho_bar=2.0),
                    "replay 2000": dict(episodes=2000, rho_bar=2.0)}


@pytest.mark.parametrize("tasks", ["bandits", "tabular-mdp"])
@pytest.mark.parametrize("mode", grid(list(INCONTEXT_REPLAY), ["on-policy", "replay 500"]))
def test_incontext_iteration_with_replay(benchmark, backend, tasks, mode):
    """One meta-iteration of the in-context learner (500 fresh trials: bandits k = 5, 10 pulls;
    tabular MDPs S = 5, A = 3, 5 episodes of 10 steps) with and without the trial pool: every
    trial recorded and stored, M stored trials scored again and importance-weighted.  The pool is
    filled by 10 iterations first."""
    from metarl_fast.trainer import InContextTraining, TrainConfig

    replay = INCONTEXT_REPLAY[mode]
    config = TrainConfig(tasks=tasks, algo="in-context", n_states=5, n_actions=3, meta_lr=0.1,
                         replay=replay is not None, replay_capacity=100_000,
                         **({} if replay is None else dict(replay_batch=replay["episodes"],
                                                           rho_bar=replay["rho_bar"])))
    training = InContextTraining(config.validate())
    dist = config.distribution()
    rng = np.random.default_rng(0)
    for _ in range(10):
        training.meta_step(dist.sample(500, rng), rng)
    benchmark.group = f"in-context iteration {tasks}, 500 fresh trials, {mode}"
    benchmark.extra_info.update(rows=500, backend=backend)
    stats = benchmark(lambda: training.meta_step(dist.sample(500, rng), rng))
    assert np.isfinite(stats["pre_return"])


@pytest.mark.parametrize("memory", ["fresh", "reused"])
@pytest.mark.parametrize("n_tasks", grid([20, 256, 1024], [20]))
def test_meta_iteration_rollout_memory(benchmark, n_tasks, memory):
    """A MAML meta-iteration (GridNavigation(7), 20 episodes per task, K = 1, from the uniform
    policy) with the rollouts' outputs reused from iteration to iteration (the learners' default,
    ``MetaLearner.workspaces``) against fresh arrays at every rollout (``workspaces = None``)."""
    tasks = mf.GridNavigation(size=7).sample(n_tasks, 1)
    policy = mf.TabularSoftmaxPolicy(tasks.n_states, tasks.n_actions)
    learner = mf.MetaLearner(policy, "maml", inner_lr=1.0, inner_steps=1, episodes_per_task=20)
    if memory == "fresh":
        learner.workspaces = None
    rng = np.random.default_rng(0)

    def step():
        policy.params[:] = 0.0  # the same work every round
        return learner.meta_step(tasks, rng)

    step()  # the workspaces' pages faulted in once, before timing
    benchmark.group = f"meta-iteration rollout memory, {n_tasks} tasks"
    benchmark.extra_info.update(backend=memory, rows=n_tasks)
    stats = benchmark(step)
    assert np.isfinite(stats["pre_return"])
