"""The trainer's numbers tied to their meaning, each recomputed here from its definition.

- ``eval.json``'s headline is the *exact* expected return (dynamic programming, ``exact.policy_value``)
  of the meta-learned parameters stored in ``checkpoint.npz`` after ``inner_steps`` sampled
  policy-gradient steps on each held-out task, the episodes drawn from the documented generator
  ``SeedSequence(eval_seed, spawn_key=(1,))``; the held-out tasks from ``spawn_key=(0,)``.
- The baselines are what their names say: the random policy is the exact value of the uniform
  policy, "from scratch" the zero initialisation adapted the same way (same episodes generator),
  "multi-task pre-trained" the multi-task learner's stored parameters adapted the same way, the
  oracle the optimal value by backward induction.
- Training follows the documented recipe (iteration ``i``'s tasks and episodes from
  ``SeedSequence(seed, spawn_key=(i,))``'s children, the multi-task baseline's from ``(i, 2)``).
- ``--resume`` restores everything: interrupted (SIGINT, a crash between checkpoints, or a shorter
  run continued) and resumed runs write the same ``metrics.jsonl``, ``eval.json`` and checkpoint
  arrays as an uninterrupted one -- the multi-task baseline and both optimizers' state included;
  the in-context learners too.
- Evaluation and checkpoint cadence; ``--held-out-goals``' split; ``compare``'s numbers are the
  runs' ``eval.json`` values.
"""
import dataclasses
import io as _io
import json
import math
import os
import signal

import numpy as np
import pytest

from metarl_fast import exact, meta, tasks
from metarl_fast.policy import TabularSoftmaxPolicy
from metarl_fast.trainer import MetaTrainer, TrainConfig, compare, format_comparison

# non-default inner_lr, gamma and baseline, so that an evaluation that ignores one of them shows
SMALL = dict(tasks="gridnav", grid_size=4, iterations=6, meta_batch=4, episodes_per_task=3, eval_every=3,
             eval_tasks=8, checkpoint_every=2, inner_steps=2, inner_lr=0.5, gamma=0.9, baseline="none",
             seed=5, eval_seed=77)


def small(**changes):
    return TrainConfig(**{**SMALL, **changes})


def train(cfg, out, *, resume=False, hook=None):
    trainer = MetaTrainer(cfg, out, log=_io.StringIO())
    if hook is not None:
        hook(trainer)
    return trainer, trainer.run(resume=resume)


def checkpoint_arrays(out):
    return MetaTrainer.read_checkpoint(os.path.join(out, "checkpoint.npz"))[1]


# ------------------------------------------------------------------- independent recomputation
def held_out_tasks(cfg, distribution=None):
    dist = distribution if distribution is not None else cfg.distribution(held_out=True)
    return dist.sample(cfg.eval_tasks, np.random.default_rng(np.random.SeedSequence(cfg.eval_seed, spawn_key=(0,))))


def exact_values(batch, thetas, gamma):
    """J of each task's softmax policy by DP on the task's own model (no trainer code)."""
    S, A = batch.n_states, batch.n_actions
    return np.array([exact.policy_value(batch[i].model(gamma=gamma), np.reshape(thetas[i], (S, A)))
                     for i in range(batch.n_tasks)])


def adapted_values(cfg, batch, init):
    """[J after 0, 1, ..., K sampled steps] per task, from ``init``, with the documented generator."""
    policy = TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    sampled = meta.SampledPolicyProblem(policy, batch, cfg.episodes_per_task, cfg.gamma,
                                        advantage=cfg.inner_estimator, baseline=cfg.baseline)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.eval_seed, spawn_key=(1,)))
    theta = np.tile(np.asarray(init, dtype=np.float64), (batch.n_tasks, 1))
    values = [exact_values(batch, theta, cfg.gamma)]
    for _ in range(cfg.inner_steps):
        theta = theta + cfg.inner_lr * sampled.grad(theta, sampled.sample(theta, rng))
        values.append(exact_values(batch, theta, cfg.gamma))
    return values


def summary(values):
    v = np.asarray(values, dtype=np.float64)
    std = v.std(ddof=1)
    return {"mean": v.mean(), "std": std, "ci95": 1.96 * std / math.sqrt(v.size)}


def assert_summary(row, values):
    want = summary(values)
    for key in ("mean", "std", "ci95"):
        assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


def assert_adapted_row(row, values):
    assert len(row["after_steps"]) == len(values)
    for got, want in zip(row["after_steps"], values):
        assert_summary(got, want)
    assert_summary(row, values[-1])  # the headline: after the K-th step


def optimal_values(batch, gamma):
    """Backward induction (value iteration over time) on each task's model, written out here."""
    out = []
    for i in range(batch.n_tasks):
        m = batch[i].model(gamma=gamma)
        keep = m.P * (~m.terminal)[None, None, :]
        V = np.zeros(m.P.shape[0])
        for _ in range(m.horizon):
            V = (m.R + gamma * keep @ V).max(axis=1)
        out.append(float(m.start @ V))
    return np.array(out)


# ------------------------------------------------------------------------------ evaluation
def test_eval_json_headline_and_baselines_are_what_they_claim(tmp_path, backend):
    cfg = small(horizon=3)  # shorter than some goals' distance: the oracle's value depends on the steps left
    out = tmp_path / "run"
    trainer, result = train(cfg, out)
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    rows = on_disk["results"]
    assert list(result["results"]) == ["maml (meta-learned)", "random policy", "from scratch", "multi-task pre-trained",
                          "oracle (knows the MDP)"]
    assert on_disk["n_tasks"] == cfg.eval_tasks and on_disk["inner_steps"] == cfg.inner_steps
    assert on_disk["eval_seed"] == cfg.eval_seed and on_disk["iterations"] == cfg.iterations
    assert on_disk["stopped_by"] == "iterations" and on_disk["seed"] == cfg.seed

    arrays = checkpoint_arrays(out)
    assert int(arrays["iteration"]) == cfg.iterations
    np.testing.assert_array_equal(arrays["learner_params"], trainer.params)
    batch = held_out_tasks(cfg)
    assert np.array_equal(batch.R, trainer.test_tasks.R) and np.array_equal(batch.P, trainer.test_tasks.P)

    learned = adapted_values(cfg, batch, arrays["learner_params"])
    assert_adapted_row(rows["maml (meta-learned)"], learned)
    assert not np.allclose(learned[0], learned[-1])  # it adapted: the K steps moved the policy
    # the uniform policy's exact value (zero logits), computed with a DP written in the test
    uniform = np.full((batch.n_states, batch.n_actions), 1.0 / batch.n_actions)
    random_values = np.array([batch[i].model(gamma=cfg.gamma).start @ exact.evaluate_policy(
        batch[i].model(gamma=cfg.gamma), uniform)[1][0] for i in range(batch.n_tasks)])
    assert_summary(rows["random policy"], random_values)
    scratch = adapted_values(cfg, batch, np.zeros(batch.n_states * batch.n_actions))
    assert_adapted_row(rows["from scratch"], scratch)
    np.testing.assert_allclose(scratch[0], random_values, rtol=1e-12)
    multitask = adapted_values(cfg, batch, arrays["multitask_params"])
    assert_adapted_row(rows["multi-task pre-trained"], multitask)
    assert not np.array_equal(arrays["multitask_params"], arrays["learner_params"])
    oracle = optimal_values(batch, cfg.gamma)
    assert_summary(rows["oracle (knows the MDP)"], oracle)
    for values in (learned, scratch, multitask):  # the oracle is the ceiling of every policy, task by task
        for v in values:
            assert np.all(v <= oracle + 1e-9)
    # the last metrics line's held-out return is the same headline (same parameters, same protocol)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["eval_return"] == rows["maml (meta-learned)"]["mean"]
    assert last["eval_ci95"] == rows["maml (meta-learned)"]["ci95"]


def test_actor_critic_inner_estimator_is_the_one_evaluated(tmp_path):
    cfg = small(inner_estimator="actor-critic", baseline="leave-one-out", algo="multitask", inner_steps=1,
                iterations=2, eval_every=2)
    _, result = train(cfg, tmp_path / "ac")
    arrays = checkpoint_arrays(tmp_path / "ac")
    assert "multitask_params" not in arrays  # the learner is the multi-task one: no second copy
    batch = held_out_tasks(cfg)
    rows = result["results"]
    assert "multi-task pre-trained" not in rows
    assert_adapted_row(rows["multitask (meta-learned)"], adapted_values(cfg, batch, arrays["learner_params"]))
    assert_adapted_row(rows["from scratch"], adapted_values(cfg, batch, np.zeros(arrays["learner_params"].size)))


def test_training_follows_the_documented_seed_recipe(tmp_path):
    cfg = small(iterations=2, eval_every=2, checkpoint_every=2)
    train(cfg, tmp_path / "run")
    arrays = checkpoint_arrays(tmp_path / "run")
    dist = tasks.GridNavigation(size=cfg.grid_size)
    S, A = cfg.grid_size ** 2, 5
    kwargs = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, meta_lr=cfg.meta_lr,
                  meta_optimizer=cfg.meta_optimizer, episodes_per_task=cfg.episodes_per_task, gamma=cfg.gamma,
                  estimator=cfg.estimator, inner_estimator=cfg.inner_estimator, baseline=cfg.baseline,
                  hessian_data=cfg.hessian_data)
    learner = meta.MetaLearner(TabularSoftmaxPolicy(S, A), "maml", **kwargs)
    multitask = meta.MetaLearner(TabularSoftmaxPolicy(S, A), "multitask", **kwargs)
    for i in range(cfg.iterations):
        tasks_ss, episodes_ss = np.random.SeedSequence(cfg.seed, spawn_key=(i,)).spawn(2)
        batch = dist.sample(cfg.meta_batch, np.random.default_rng(tasks_ss))
        learner.meta_step(batch, np.random.default_rng(episodes_ss))
        multitask.meta_step(batch, np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(i, 2))))
    np.testing.assert_array_equal(arrays["learner_params"], learner.policy.params)
    np.testing.assert_array_equal(arrays["multitask_params"], multitask.policy.params)
    for key, value in learner.state_dict().items():
        np.testing.assert_array_equal(arrays["learner_" + key], value, err_msg=key)
    for key, value in multitask.state_dict().items():
        np.testing.assert_array_equal(arrays["multitask_" + key], value, err_msg=key)


def test_evaluation_and_checkpoint_cadence(tmp_path):
    cfg = small(iterations=7, eval_every=3, checkpoint_every=2)
    saved = []

    def spy(trainer):
        original = trainer.save_checkpoint
        trainer.save_checkpoint = lambda: (saved.append(trainer.iteration), original())

    _, result = train(cfg, tmp_path / "run", hook=spy)
    assert saved == [2, 4, 6, 7]  # every checkpoint_every iterations and at the end, each once
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == list(range(1, 8))
    assert [r["iteration"] for r in lines if "eval_return" in r] == [3, 6, 7]
    assert all(r["seed"] == cfg.seed and r["env_steps"] > 0 for r in lines)
    timings = [json.loads(line) for line in (tmp_path / "run" / "timings.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in timings] == list(range(1, 8))
    assert result["iterations"] == 7


def test_target_stops_at_the_first_evaluation_that_reaches_it(tmp_path):
    cfg = small(iterations=9, eval_every=3, checkpoint_every=2, target=-1e9)
    saved = []

    def spy(trainer):
        original = trainer.save_checkpoint
        trainer.save_checkpoint = lambda: (saved.append(trainer.iteration), original())

    _, result = train(cfg, tmp_path / "run", hook=spy)
    assert result["stopped_by"] == "target" and result["iterations"] == 3
    assert saved == [2, 3]
    assert int(checkpoint_arrays(tmp_path / "run")["iteration"]) == 3


def test_held_out_goals_follow_the_documented_split_and_are_what_is_evaluated(tmp_path):
    cfg = small(held_out_goals=4, iterations=2, eval_every=2, seed=11)
    size = cfg.grid_size
    cells = np.array([c for c in range(size * size) if c != (size // 2) * size + size // 2])
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2 ** 30,)))
    withheld = np.zeros(cells.size, dtype=bool)
    withheld[rng.choice(cells.size, size=cfg.held_out_goals, replace=False)] = True
    train_goals = np.stack(np.divmod(cells[~withheld], size), axis=1)
    test_goals = np.stack(np.divmod(cells[withheld], size), axis=1)
    trainer, result = train(cfg, tmp_path / "run")
    assert result["goals"] == {"train": train_goals.tolist(), "test": test_goals.tolist(),
                               "test_goals_seen_in_training": False}
    as_set = lambda g: {tuple(x) for x in np.asarray(g).tolist()}
    for i in range(3):  # training batches (iteration recipe) never hold a test goal
        tasks_ss, _ = np.random.SeedSequence(cfg.seed, spawn_key=(i,)).spawn(2)
        batch = trainer.dist.sample(cfg.meta_batch, np.random.default_rng(tasks_ss))
        assert as_set(batch.info["goal"]) <= as_set(train_goals)
    # the evaluation ran on tasks with the withheld goals only, recomputed from that goal list
    batch = held_out_tasks(cfg, tasks.GridNavigation(size=size, goals=test_goals))
    assert as_set(batch.info["goal"]) <= as_set(test_goals)
    arrays = checkpoint_arrays(tmp_path / "run")
    assert_adapted_row(result["results"]["maml (meta-learned)"], adapted_values(cfg, batch, arrays["learner_params"]))
    assert_summary(result["results"]["oracle (knows the MDP)"], optimal_values(batch, cfg.gamma))
    # without withheld goals the test goals are every goal, and eval.json says they were trained on
    _, plain = train(small(iterations=1, eval_every=1), tmp_path / "plain")
    assert plain["goals"]["test_goals_seen_in_training"] is True
    assert plain["goals"]["train"] == plain["goals"]["test"] and len(plain["goals"]["test"]) == size * size - 1


# ---------------------------------------------------------------------------------- resume
def assert_same_run(a, b, files=("metrics.jsonl", "eval.json", "config.toml")):
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ta = [json.loads(x)["iteration"] for x in (a / "timings.jsonl").read_text().splitlines()]
    tb = [json.loads(x)["iteration"] for x in (b / "timings.jsonl").read_text().splitlines()]
    assert ta == tb
    xa, xb = checkpoint_arrays(a), checkpoint_arrays(b)
    assert sorted(xa) == sorted(xb)
    for key in xa:
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


def sigint_at(call):
    """A hook: the learner's ``call``-th meta-step sends this process SIGINT (as Ctrl-C would)."""
    def hook(trainer):
        step, count = trainer.learner.meta_step, [0]

        def meta_step(*args):
            count[0] += 1
            if count[0] == call:
                os.kill(os.getpid(), signal.SIGINT)
            return step(*args)
        trainer.learner.meta_step = meta_step
    return hook


def test_resume_after_sigint_between_checkpoints_is_identical(tmp_path):
    cfg = small(iterations=6, eval_every=2, checkpoint_every=4)
    train(cfg, tmp_path / "full")
    handler = signal.getsignal(signal.SIGINT)
    trainer, result = train(cfg, tmp_path / "part", hook=sigint_at(3))
    assert result is None and trainer.stopped_by == "interrupt" and trainer.iteration == 3
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's handler is given back
    assert not (tmp_path / "part" / "eval.json").exists()
    arrays = checkpoint_arrays(tmp_path / "part")
    assert int(arrays["iteration"]) == 3  # saved at the interruption, between the checkpoints at 0 and 4
    assert int(arrays["learner_opt_steps"]) == 3 and int(arrays["multitask_opt_steps"]) == 3
    resumed, _ = train(cfg, tmp_path / "part", resume=True)
    assert resumed.iteration == 6
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_resume_after_a_crash_between_checkpoints_rewrites_the_lost_lines(tmp_path):
    cfg = small(iterations=6, eval_every=2, checkpoint_every=3)
    train(cfg, tmp_path / "full")

    def crash_at_5(trainer):
        step, count = trainer.multitask.meta_step, [0]

        def meta_step(*args):
            count[0] += 1
            if count[0] == 5:
                raise RuntimeError("simulated crash")
            return step(*args)
        trainer.multitask.meta_step = meta_step

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "part", hook=crash_at_5)
    metrics = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in metrics] == [1, 2, 3, 4]  # 4 is past the checkpoint
    assert int(checkpoint_arrays(tmp_path / "part")["iteration"]) == 3
    train(cfg, tmp_path / "part", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "part")


def test_a_shorter_run_continued_is_the_longer_run(tmp_path):
    longer = small(iterations=6, eval_every=2, checkpoint_every=2, meta_optimizer="adam")
    train(longer, tmp_path / "full")
    train(dataclasses.replace(longer, iterations=4), tmp_path / "part")
    _, result = train(longer, tmp_path / "part", resume=True)
    assert result["iterations"] == 6
    # (config.toml keeps the first run's settings; the checkpoint's config_toml is the longer run's)
    assert_same_run(tmp_path / "full", tmp_path / "part", files=("metrics.jsonl", "eval.json"))


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    cfg = small(iterations=5, eval_every=5, checkpoint_every=2)
    _, first = train(cfg, tmp_path / "run")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("metrics.jsonl", "eval.json", "checkpoint.npz")}
    _, again = train(cfg, tmp_path / "run", resume=True)
    assert again == first
    for name, data in before.items():
        assert (tmp_path / "run" / name).read_bytes() == data, name


@pytest.mark.parametrize("family", ["bandits", "tabular-mdp"])
def test_in_context_runs_resume_identically_and_report_their_meaning(tmp_path, family):
    from metarl_fast import incontext, incontext_mdp

    extra = dict(n_states=3, n_actions=2, trial_episodes=3) if family == "tabular-mdp" else {}
    cfg = TrainConfig(tasks=family, algo="in-context", meta_batch=30, iterations=6, eval_every=3,
                      eval_tasks=40, checkpoint_every=4, meta_lr=0.2, seed=2, eval_seed=9, **extra)
    train(cfg, tmp_path / "full")
    trainer, result = train(cfg, tmp_path / "part", hook=sigint_at(2))
    assert result is None and int(checkpoint_arrays(tmp_path / "part")["iteration"]) == 2
    train(cfg, tmp_path / "part", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "part")
    assert int(checkpoint_arrays(tmp_path / "part")["learner_opt_steps"]) == 6

    rows = json.loads((tmp_path / "full" / "eval.json").read_text())["results"]
    weights = checkpoint_arrays(tmp_path / "full")["learner_params"]
    batch = held_out_tasks(cfg)
    rng = lambda: np.random.default_rng(np.random.SeedSequence(cfg.eval_seed, spawn_key=(1,)))
    if family == "bandits":
        arm_means = np.ascontiguousarray(batch.R[:, 0, :])
        assert_summary(rows["in-context (meta-learned)"], incontext.run_trials(weights, arm_means, batch.horizon, rng()))
    else:
        E = cfg.trial_episodes
        assert_summary(rows["in-context (meta-learned)"], incontext_mdp.run_trials(weights, batch, E, rng()).sum(axis=1))
        assert_summary(rows["random policy"], incontext_mdp.run_trials(np.zeros_like(weights), batch, E, rng()).sum(axis=1))
        assert_summary(rows["oracle (knows the MDP)"], E * optimal_values(batch, 1.0))


# --------------------------------------------------------------------------------- compare
def test_compare_numbers_are_the_runs_eval_json_values(tmp_path):
    cfg = small(iterations=2, eval_every=2, held_out_goals=3)
    result = compare(cfg, ["maml", "fomaml"], [0, 1], str(tmp_path))
    runs = {(a, s): json.loads((tmp_path / f"{a}-seed{s}" / "eval.json").read_text())
            for a in ("maml", "fomaml") for s in (0, 1)}
    assert all(r["seed"] == s and r["algo"] == a for (a, s), r in runs.items())
    rows = result["rows"]
    assert list(rows) == ["maml (meta-learned)", "multi-task pre-trained", "fomaml (meta-learned)",
                          "from scratch", "random policy", "oracle (knows the MDP)"]

    def per_seed(algo, name, k):
        return [runs[(algo, s)]["results"][name]["after_steps"][k]["mean"] for s in (0, 1)]

    for algo in ("maml", "fomaml"):
        name = f"{algo} (meta-learned)"
        assert rows[name]["before"]["values"] == per_seed(algo, name, 0)
        assert rows[name]["after"]["values"] == per_seed(algo, name, -1)
        assert rows[name]["after"]["values"] == [runs[(algo, s)]["results"][name]["mean"] for s in (0, 1)]
        diffs = np.subtract(per_seed(algo, name, -1), per_seed(algo, "from scratch", -1))
        assert rows[name]["vs_scratch"]["values"] == pytest.approx(diffs.tolist())
        assert rows[name]["vs_scratch"]["mean"] == pytest.approx(diffs.mean())
        assert rows[name]["vs_scratch"]["ci95"] == pytest.approx(12.706 * diffs.std(ddof=1) / math.sqrt(2))
        assert rows[name]["after"]["ci95"] == pytest.approx(
            12.706 * np.std(per_seed(algo, name, -1), ddof=1) / math.sqrt(2))
    assert rows["multi-task pre-trained"]["after"]["values"] == per_seed("maml", "multi-task pre-trained", -1)
    assert rows["multi-task pre-trained"]["before"]["values"] == per_seed("maml", "multi-task pre-trained", 0)
    assert rows["from scratch"]["after"]["values"] == per_seed("maml", "from scratch", -1)
    assert rows["from scratch"]["before"]["values"] == per_seed("maml", "from scratch", 0)
    for name in ("random policy", "oracle (knows the MDP)"):
        assert rows[name]["before"]["values"] == [runs[("maml", s)]["results"][name]["mean"] for s in (0, 1)]
        assert rows[name]["after"] is None
    assert result["n_tasks"] == cfg.eval_tasks and result["seeds"] == [0, 1]
    assert result["test_goals_seen_in_training"] is False and result["held_out_goals"] == 3

    table = format_comparison(result).splitlines()
    assert len(table) == 2 + len(rows)
    for line, (name, row) in zip(table[2:], rows.items()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name and cells[1] == f"{row['before']['mean']:.1f}"
        if row["after"] is not None:
            assert cells[2] == f"{row['after']['mean']:.1f} ± {row['after']['ci95']:.1f}"
            assert cells[3] == " / ".join(f"{v:.1f}" for v in row["after"]["values"])


def test_logs_are_written_with_each_checkpoint_and_the_wall_time_adds_up(tmp_path):
    """metrics.jsonl and timings.jsonl hold exactly the iterations the checkpoint holds whenever one
    is written (a crash loses nothing ``--resume`` would keep); the run's wall-time breakdown
    covers the run."""
    cfg = small(iterations=7, eval_every=3, checkpoint_every=3)
    seen = []

    def spy(trainer):
        original = trainer.save_checkpoint

        def save():
            original()
            for name in ("metrics.jsonl", "timings.jsonl"):
                lines = (tmp_path / "run" / name).read_text().splitlines()
                seen.append((name, trainer.iteration, [json.loads(x)["iteration"] for x in lines]))
        trainer.save_checkpoint = save

    trainer, _ = train(cfg, tmp_path / "run", hook=spy)
    for name, at, iterations in seen:
        assert iterations == list(range(1, at + 1)), (name, at)
    assert [at for name, at, _ in seen if name == "metrics.jsonl"] == [3, 6, 7]
    wall = trainer.wall_time
    parts = ("meta_iterations", "multitask_baseline", "evaluation", "checkpoints_and_logs", "other")
    assert set(wall) == set(parts) | {"total"}
    assert all(wall[k] >= 0 for k in parts if k != "other") and wall["meta_iterations"] > 0
    assert math.isclose(sum(wall[k] for k in parts), wall["total"], rel_tol=1e-9)
    timings = [json.loads(x) for x in (tmp_path / "run" / "timings.jsonl").read_text().splitlines()]
    assert math.isclose(sum(r["meta_step_s"] for r in timings), wall["meta_iterations"], rel_tol=1e-9)


def test_lines_of_a_failed_run_are_written(tmp_path):
    """An exception mid-run (here a divergence at iteration 3) still writes the lines of the
    iterations that completed."""
    cfg = small(iterations=6, checkpoint_every=5)

    def fail_at_three(trainer):
        step = trainer.learner.meta_step

        def meta_step(batch, rng):
            if trainer.iteration == 2:
                raise meta.DivergenceError("injected")
            return step(batch, rng)
        trainer.learner.meta_step = meta_step

    with pytest.raises(meta.DivergenceError, match="injected"):
        train(cfg, tmp_path / "run", hook=fail_at_three)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2]
