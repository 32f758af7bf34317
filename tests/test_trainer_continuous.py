"""The trainer, evaluation and CLI on the continuous-observation tasks with an MLP policy (issue 16)."""
import dataclasses
import json

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.continuous_rollout import rollout_mlp
from metarl_fast.trainer import MetaTrainer, TrainConfig, evaluate_continuous, make_mlp_policy

TINY = dict(tasks="point-nav", horizon=8, iterations=6, meta_batch=3, episodes_per_task=4, eval_every=3,
            eval_tasks=6, eval_episodes=5, checkpoint_every=2, hidden="8", inner_lr=0.05, meta_lr=0.01)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("tasks", ["point-nav", "cartpoles"])
def test_a_run_trains_an_mlp_and_evaluates_every_row(tmp_path, tasks):
    cfg = TrainConfig(**{**TINY, "tasks": tasks, "horizon": 8 if tasks == "point-nav" else 20})
    trainer = MetaTrainer(cfg, tmp_path / "run", log=open(tmp_path / "log", "w"))
    assert isinstance(trainer.policy, mf.MLPSoftmaxPolicy) and trainer.policy.hidden == (8,)
    # the meta-learner and the multi-task baseline start from the same network
    np.testing.assert_array_equal(trainer.policy.params, trainer.multitask.policy.params)
    result = trainer.run()
    rows = result["results"]
    assert list(rows) == ["maml (meta-learned)", "random policy", "from scratch", "multi-task pre-trained"]
    assert result["measured_by"] == "monte carlo" and result["eval_episodes"] == 5
    for name, row in rows.items():
        assert np.isfinite(row["mean"]) and row["ci95"] >= 0
        if name != "random policy":
            assert len(row["after_steps"]) == 2
    metrics = read_lines(tmp_path / "run" / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == list(range(1, 7)) and "eval_return" in metrics[2]


def test_resume_continues_bit_for_bit(tmp_path):
    cfg = TrainConfig(**TINY)
    full = MetaTrainer(cfg, tmp_path / "full", log=open(tmp_path / "log", "w"))
    full.run()
    part = MetaTrainer(dataclasses.replace(cfg, iterations=4), tmp_path / "part", log=open(tmp_path / "log2", "w"))
    part.run()
    resumed = MetaTrainer(cfg, tmp_path / "part", log=open(tmp_path / "log3", "w"))
    resumed.run(resume=True)
    np.testing.assert_array_equal(full.policy.params, resumed.policy.params)
    np.testing.assert_array_equal(full.multitask.policy.params, resumed.multitask.policy.params)
    # the same training records (the shorter run also evaluated at its last iteration, 4)
    def training(path):
        return [{k: v for k, v in m.items() if not k.startswith("eval_")} for m in read_lines(path)]

    assert training(tmp_path / "full" / "metrics.jsonl") == training(tmp_path / "part" / "metrics.jsonl")


def test_the_evaluation_measures_what_it_says():
    """Row 'random policy' is the uniform policy's Monte Carlo return; the meta-learned row before
    adaptation is the given parameters' return on the same episodes' stream; adapting with
    inner_lr ~ 0 leaves it where it was (common random numbers across rows and steps)."""
    cfg = TrainConfig(**{**TINY, "inner_lr": 1e-300, "eval_episodes": 7}).validate()
    tasks = mf.PointNavigation(horizon=8).sample(5, 3)
    policy = make_mlp_policy(cfg, tasks)
    other = np.random.default_rng(8).normal(size=policy.n_params)  # the "multi-task" parameters
    out = evaluate_continuous(cfg, policy.params, tasks, multitask_params=other)
    rows = out["results"]
    stream = lambda: np.random.default_rng(np.random.SeedSequence(cfg.eval_seed, spawn_key=(3,)))  # noqa: E731

    def returns(params, rng):
        return rollout_mlp(tasks, np.tile(params, (5, 1)), 7, rng, hidden=(8,)).episode_return.mean(axis=1).mean()

    assert rows["random policy"]["mean"] == pytest.approx(returns(np.zeros(policy.n_params), stream()), rel=1e-12)
    for name, params in (("maml (meta-learned)", policy.params), ("multi-task pre-trained", other)):
        rng = stream()
        before, after = returns(params, rng), returns(params, rng)  # a step of 1e-300 changes nothing
        row = rows[name]
        assert row["after_steps"][0]["mean"] == pytest.approx(before, rel=1e-12)
        assert row["after_steps"][1]["mean"] == pytest.approx(after, rel=1e-12)
        assert row["mean"] == row["after_steps"][-1]["mean"] and before != after  # fresh episodes
    meta_row = rows["maml (meta-learned)"]
    # the uniform policy goes nowhere on average: its return is the one of a random walk
    assert rows["random policy"]["mean"] < meta_row["mean"] + 10


@pytest.mark.parametrize("changes,match", [
    (dict(tasks="gridnav", policy="mlp"), "an mlp policy meta-trains on the continuous-observation tasks"),
    (dict(policy="tabular"), "needs --policy mlp"),
    (dict(algo="in-context"), "in-context learners run on bandit and tabular tasks"),
    (dict(estimator="exact"), "the sampled REINFORCE estimator"),
    (dict(inner_estimator="actor-critic"), "the sampled REINFORCE estimator"),
    (dict(hidden="64,x"), "hidden must be comma-separated widths"),
    (dict(hidden="0"), "hidden"),
    (dict(activation="gelu"), "activation must be tanh or relu"),
    (dict(eval_episodes=0), "eval-episodes"),
])
def test_settings_that_do_not_fit_continuous_tasks_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **changes}).validate()


def test_the_command_line_trains_cartpoles(tmp_path):
    from metarl_fast.cli import main

    code = main(["train", "--tasks", "cartpoles", "--horizon", "15", "--iterations", "2", "--meta-batch", "2",
                 "--episodes", "3", "--eval-tasks", "4", "--eval-episodes", "2", "--hidden", "4,4",
                 "--activation", "relu", "--algo", "fomaml", "--out", str(tmp_path / "cp")])
    assert code == 0
    config = (tmp_path / "cp" / "config.toml").read_text()
    assert 'hidden = "4,4"' in config and 'activation = "relu"' in config
    result = json.loads((tmp_path / "cp" / "eval.json").read_text())
    assert result["tasks"] == "cartpoles" and "fomaml (meta-learned)" in result["results"]


def test_compare_on_continuous_tasks_and_a_rerun_reads_the_finished_runs(tmp_path, monkeypatch):
    from metarl_fast import trainer as trainer_module
    from metarl_fast.trainer import compare, format_comparison

    cfg = TrainConfig(**{**TINY, "iterations": 2, "eval_every": 2})
    log = open(tmp_path / "log", "w")
    first = compare(cfg, ["maml", "reptile"], [0, 1], tmp_path / "cmp", log=log)
    assert "oracle (knows the MDP)" not in first["rows"] and "random policy" in first["rows"]
    assert format_comparison(first).count("\n") == 1 + len(first["rows"])

    def no_training(self, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer_module.MetaTrainer, "run", no_training)
    assert compare(cfg, ["maml", "reptile"], [0, 1], tmp_path / "cmp", log=log) == first
    with pytest.raises(AssertionError, match="trained again"):  # other settings: trained again
        compare(dataclasses.replace(cfg, inner_lr=0.07), ["maml"], [0], tmp_path / "cmp", log=log)
