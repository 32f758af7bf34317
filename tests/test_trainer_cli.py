"""End-to-end: the metarl-fast CLI and the MetaTrainer (run files, determinism, resume, errors)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from metarl_fast.trainer import MetaTrainer, TrainConfig

from conftest import needs_cython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tasks", "gridnav", "--grid-size", "4", "--iterations", "12", "--meta-batch", "4",
        "--episodes", "8", "--eval-every", "6", "--eval-tasks", "20", "--checkpoint-every", "4"]


def cli(*args, timeout=300, backend=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("METARL_FAST_TRACEBACK", None)
    if backend:
        env["METARL_FAST_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "metarl_fast", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def backend_args():
    return [] if os.environ.get("METARL_FAST_BACKEND") != "numpy" else ["--backend", "numpy"]


def test_train_writes_every_run_file_and_eval_plot_bench_work(tmp_path):
    out = tmp_path / "run"
    res = cli("train", *TINY, *backend_args(), "--out", str(out))
    assert res.returncode == 0, res.stderr
    for name in ("config.toml", "metrics.jsonl", "timings.jsonl", "eval.json", "checkpoint.npz"):
        assert (out / name).exists(), name
    assert "oracle" in res.stdout and "from scratch" in res.stdout and "multi-task" in res.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[5])["eval_return"] < 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation["results"]) >= {"maml (meta-learned)", "random policy", "from scratch", "oracle (knows the MDP)"}
    row = evaluation["results"]["maml (meta-learned)"]
    assert len(row["after_steps"]) == 2 and row["ci95"] > 0
    # the config file repeats the run
    assert TrainConfig.from_toml(out / "config.toml").grid_size == 4

    res = cli("eval", str(out), "--json", *backend_args())
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    assert again["eval_seed"] != evaluation["eval_seed"] and again["iterations"] == 12

    res = cli("bench", "--quick", "--json", *backend_args())
    assert res.returncode == 0, res.stderr
    bench = json.loads(res.stdout)
    assert {r["case"].split()[0] for r in bench} == {"sample_actions", "rollout", "MAML"}

    res = cli("plot", str(out))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert res.returncode == 2 and "pip install" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
        assert (out / "learning_curve.png").exists() and (out / "adaptation_curve.png").exists()


def test_in_context_learners_train_and_are_compared_with_baselines(tmp_path):
    out = tmp_path / "bandits"
    res = cli("train", "--tasks", "bandits", "--algo", "in-context", "--meta-batch", "2000",
              "--iterations", "30", "--meta-lr", "0.3", "--eval-tasks", "4000", "--eval-every", "10",
              "--out", str(out), "--json", *backend_args())
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["results"]
    assert set(rows) == {"in-context (meta-learned)", "random", "posterior-greedy", "epsilon-greedy (0.1)",
                         "UCB1", "Thompson sampling", "Bayes-optimal (exact, prior mean)"}
    learned = rows["in-context (meta-learned)"]
    assert learned["mean"] - learned["ci95"] > rows["random"]["mean"] + rows["random"]["ci95"]
    assert learned["mean"] <= rows["Bayes-optimal (exact, prior mean)"]["mean"] + 3 * learned["ci95"]
    res = cli("eval", str(out), "--json", *backend_args())
    assert res.returncode == 0, res.stderr
    res = cli("train", "--tasks", "tabular-mdp", "--n-states", "5", "--n-actions", "3", "--algo", "in-context",
              "--meta-batch", "300", "--iterations", "20", "--meta-lr", "0.1", "--eval-tasks", "600",
              "--eval-every", "10", "--trial-episodes", "4", "--out", str(tmp_path / "mdp"), "--json", *backend_args())
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["results"]
    assert set(rows) == {"in-context (meta-learned)", "random policy", "from scratch (REINFORCE)",
                         "oracle (knows the MDP)"}
    learned, rand, oracle = rows["in-context (meta-learned)"], rows["random policy"], rows["oracle (knows the MDP)"]
    assert learned["mean"] - learned["ci95"] > rand["mean"] + rand["ci95"]
    assert learned["mean"] < oracle["mean"]


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = TrainConfig(grid_size=4, iterations=8, meta_batch=4, episodes_per_task=8, eval_every=4,
                      eval_tasks=10, seed=7)
    a = MetaTrainer(cfg, tmp_path / "a", log=open(os.devnull, "w"))
    b = MetaTrainer(cfg, tmp_path / "b", log=open(os.devnull, "w"))
    ea, eb = a.run(), b.run()
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    assert ea["results"] == eb["results"]
    c = MetaTrainer(TrainConfig(**{**cfg.__dict__, "seed": 8}), tmp_path / "c")
    c.run()
    assert (tmp_path / "c" / "metrics.jsonl").read_bytes() != (tmp_path / "a" / "metrics.jsonl").read_bytes()


def test_resume_after_sigint_is_bit_identical(tmp_path):
    args = ["--tasks", "gridnav", "--grid-size", "4", "--iterations", "400", "--meta-batch", "4",
            "--episodes", "8", "--eval-every", "100", "--eval-tasks", "10", "--checkpoint-every", "50",
            *backend_args()]
    full = tmp_path / "full"
    res = cli("train", *args, "--out", str(full))
    assert res.returncode == 0, res.stderr
    part = tmp_path / "part"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "metarl_fast", "train", *args, "--out", str(part)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = part / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 60:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    stopped_at = len(metrics.read_text().splitlines())
    assert 60 <= stopped_at < 400
    # the checkpoint written at the interruption is loadable
    config, arrays = MetaTrainer.read_checkpoint(part / "checkpoint.npz")
    assert int(arrays["iteration"]) == stopped_at
    res = cli("train", "--resume", "--out", str(part), *backend_args())
    assert res.returncode == 0, res.stderr
    assert metrics.read_bytes() == (full / "metrics.jsonl").read_bytes()
    _, a = MetaTrainer.read_checkpoint(part / "checkpoint.npz")
    _, b = MetaTrainer.read_checkpoint(full / "checkpoint.npz")
    np.testing.assert_array_equal(a["learner_params"], b["learner_params"])
    np.testing.assert_array_equal(a["learner_opt_state"], b["learner_opt_state"])


def test_bad_checkpoints_and_options_give_one_line_errors(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY, *backend_args(), "--out", str(out)).returncode == 0
    ckpt = out / "checkpoint.npz"
    raw = ckpt.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 3])
    cases = [
        (["eval", str(tmp_path / "trunc.npz")], "not a readable"),
        (["eval", str(tmp_path / "missing.npz")], "no such file"),
        (["train", "--tasks", "mujoco", "--out", str(tmp_path / "x")], "unknown tasks 'mujoco'"),
        (["train", "--inner-lr", "-1", "--out", str(tmp_path / "x")], "inner-lr must be > 0"),
        (["train", "--iterations", "0", "--out", str(tmp_path / "x")], "iterations must be >= 1"),
        (["train", "--resume", "--out", str(tmp_path / "nothing")], "no such file"),
        (["train", *TINY, "--out", str(out)], "already holds a run"),
        (["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "x")], "cannot read config"),
    ]
    _, arrays = MetaTrainer.read_checkpoint(ckpt)
    data = bytearray(raw)
    data[raw.find(arrays["learner_params"].tobytes()) + 3] ^= 0xFF  # corrupt the stored parameters
    (tmp_path / "flip.npz").write_bytes(bytes(data))
    cases.append((["eval", str(tmp_path / "flip.npz")], "Bad CRC-32"))
    for args, message in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("metarl-fast: error:"), res.stderr
        assert message in lines[0], (message, lines[0])


def test_divergence_stops_with_one_line_and_an_intact_checkpoint(tmp_path):
    out = tmp_path / "div"
    res = cli("train", "--tasks", "gridnav", "--grid-size", "4", "--iterations", "40", "--meta-batch", "4",
              "--episodes", "8", "--eval-tasks", "10", "--checkpoint-every", "1", "--inner-lr", "1e308",
              "--out", str(out), *backend_args())
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "training diverged" in lines[-1] and "meta-iteration" in lines[-1] and "Traceback" not in res.stderr
    if (out / "checkpoint.npz").exists():  # every checkpoint written before the divergence loads
        _, arrays = MetaTrainer.read_checkpoint(out / "checkpoint.npz")
        assert np.all(np.isfinite(arrays["learner_params"]))


@needs_cython
def test_checkpoint_from_one_backend_evaluates_on_the_other(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY, "--backend", "cython", "--out", str(out)).returncode == 0
    a = cli("eval", str(out), "--json", "--backend", "numpy")
    b = cli("eval", str(out), "--json", "--backend", "cython")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra, rb = json.loads(a.stdout)["results"], json.loads(b.stdout)["results"]
    for name in ra:
        assert abs(ra[name]["mean"] - rb[name]["mean"]) < 1e-9, name


def test_one_episode_per_task_trains(tmp_path, backend):
    """With one episode per task the leave-one-out baseline is no baseline: plain REINFORCE, not 0."""
    cfg = TrainConfig(tasks="gridnav", grid_size=4, iterations=150, meta_batch=10, episodes_per_task=1,
                      eval_every=150, eval_tasks=100, algo="multitask", meta_lr=0.1, backend=backend)
    result = MetaTrainer(cfg, tmp_path / "mt").run()
    rows = result["results"]
    assert rows["multitask (meta-learned)"]["after_steps"][0]["mean"] > rows["random policy"]["mean"] + 1.0
    cfg = TrainConfig(tasks="gridnav", grid_size=4, iterations=5, meta_batch=4, episodes_per_task=1,
                      eval_every=5, eval_tasks=10, backend=backend)
    trainer = MetaTrainer(cfg, tmp_path / "maml")
    trainer.run()
    assert np.abs(trainer.params).max() > 0


def test_held_out_goals_are_never_trained_on(tmp_path):
    cfg = TrainConfig(tasks="gridnav", grid_size=5, held_out_goals=6, iterations=3, meta_batch=50,
                      eval_every=3, eval_tasks=40, seed=3)
    train_goals, test_goals = cfg.goal_split()
    assert len(train_goals) == 18 and len(test_goals) == 6
    as_set = lambda goals: {tuple(g) for g in np.asarray(goals).tolist()}
    assert not as_set(train_goals) & as_set(test_goals)
    assert as_set(train_goals) | as_set(test_goals) == {(r, c) for r in range(5) for c in range(5)} - {(2, 2)}
    trainer = MetaTrainer(cfg, tmp_path / "run")
    assert as_set(trainer.test_tasks.info["goal"]) <= as_set(test_goals)
    for it in range(3):
        batch = trainer.dist.sample(cfg.meta_batch, np.random.default_rng(it))
        assert not as_set(batch.info["goal"]) & as_set(test_goals)
    result = trainer.run()
    assert result["goals"]["test_goals_seen_in_training"] is False
    assert as_set(result["goals"]["test"]) == as_set(test_goals)
    # the split belongs to the training run: another eval seed keeps it
    import dataclasses
    assert np.array_equal(dataclasses.replace(cfg, eval_seed=5).goal_split()[1], test_goals)
    res = cli("train", "--grid-size", "5", "--held-out-goals", "24", *backend_args(), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "held-out-goals" in res.stderr
    res = cli("train", "--tasks", "chain", "--held-out-goals", "2", *backend_args(), "--out", str(tmp_path / "y"))
    assert res.returncode == 2 and "gridnav only" in res.stderr


def test_compare_reports_means_and_cis_across_seeds(tmp_path):
    from metarl_fast.trainer import compare, format_comparison, mean_ci_t

    assert mean_ci_t([1.0, 3.0])["ci95"] == pytest.approx(12.706 * np.sqrt(2.0) / np.sqrt(2))
    cfg = TrainConfig(tasks="gridnav", grid_size=4, iterations=4, meta_batch=4, episodes_per_task=4,
                      eval_every=4, eval_tasks=16)
    result = compare(cfg, ["maml", "reptile"], [0, 1, 2], str(tmp_path))
    rows = result["rows"]
    assert list(rows) == ["maml (meta-learned)", "multi-task pre-trained", "reptile (meta-learned)",
                          "from scratch", "random policy", "oracle (knows the MDP)"]
    for seed in (0, 1, 2):
        ev = json.loads((tmp_path / f"maml-seed{seed}" / "eval.json").read_text())
        assert rows["maml (meta-learned)"]["after"]["values"][seed] == ev["results"]["maml (meta-learned)"]["mean"]
    maml = rows["maml (meta-learned)"]
    diffs = np.array(maml["after"]["values"]) - np.array(rows["from scratch"]["after"]["values"])
    assert maml["vs_scratch"]["mean"] == pytest.approx(diffs.mean())
    assert maml["vs_scratch"]["ci95"] == pytest.approx(4.303 * diffs.std(ddof=1) / np.sqrt(3))
    lo, hi = maml["vs_scratch"]["mean"] - maml["vs_scratch"]["ci95"], maml["vs_scratch"]["mean"] + maml["vs_scratch"]["ci95"]
    assert maml["verdict"] == ("helps" if lo > 0 else "hurts" if hi < 0 else "no significant difference")
    table = format_comparison(result)
    assert table.count("\n") == 2 + len(rows) - 1 and "after 1 step" in table


# ------------------------------------------------------------------ the CLI in this process (fast)
IN_PROCESS = ["--tasks", "gridnav", "--grid-size", "4", "--iterations", "6", "--meta-batch", "3",
              "--episodes", "3", "--eval-every", "3", "--eval-tasks", "6", "--checkpoint-every", "2",
              "--inner-lr", "0.5", "--gamma", "0.9", "--seed", "3"]


@pytest.fixture
def main(monkeypatch, capsys):
    """``metarl-fast ARGS`` run in this process: (exit code, stdout, stderr); the backend restored."""
    import metarl_fast as mf
    from metarl_fast import cli

    monkeypatch.delenv("METARL_FAST_TRACEBACK", raising=False)

    def run(*args):
        with mf.use_backend(mf.get_backend()):
            code = cli.main([*args, *backend_args()] if args[0] in ("train", "eval", "compare") else list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def one_line_error(err, message):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl-fast: error:") and message in lines[0], err


def test_cli_usage_errors_exit_2_and_never_overwrite_a_run(tmp_path, main):
    out = tmp_path / "run"
    code, _, _ = main("train", *IN_PROCESS, "--out", str(out))
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = main("train", *IN_PROCESS, "--iterations", "8", "--out", str(out))
    assert code == 2
    one_line_error(err, f"{out} already holds a run; use --resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, _, err = main("eval", str(out), "--eval-tasks", "0")
    assert code == 2
    one_line_error(err, "eval-tasks must be >= 1")
    code, _, err = main("train", "--resume")
    assert code == 2
    one_line_error(err, "--resume needs --out RUN_DIR")
    code, _, err = main("train", *IN_PROCESS, "--threads", "2", "--out", str(tmp_path / "t"))
    assert code == 2 and not (tmp_path / "t").exists()
    one_line_error(err, "--threads 2: the kernels are single-threaded")
    small = IN_PROCESS[:IN_PROCESS.index("--seed")] + ["--iterations", "1", "--algos", "maml"]
    code, _, err = main("compare", *small, "--seeds", "0", "--out", str(tmp_path / "c"))
    assert code == 2
    one_line_error(err, "two seeds")
    code, _, err = main("compare", "--seeds", "0,x", "--out", str(tmp_path / "c"))
    assert code == 2
    one_line_error(err, "--seeds must be comma-separated integers")


def test_cli_divergence_exits_3_and_interrupt_exits_130_with_a_resumable_checkpoint(tmp_path, main, monkeypatch):
    from metarl_fast import meta

    code, _, err = main("train", *IN_PROCESS, "--inner-lr", "1e308", "--out", str(tmp_path / "div"))
    assert code == 3
    assert "training diverged" in err.strip().splitlines()[-1] and "Traceback" not in err

    code, _, _ = main("train", *IN_PROCESS, "--out", str(tmp_path / "full"))
    assert code == 0
    step, calls = meta.MetaLearner.meta_step, [0]

    def meta_step(self, *args):
        calls[0] += 1
        if calls[0] == 5:  # the meta-learner's step of iteration 3 (the multi-task learner steps too)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args)

    monkeypatch.setattr(meta.MetaLearner, "meta_step", meta_step)
    part = tmp_path / "part"
    code, _, err = main("train", *IN_PROCESS, "--out", str(part))
    assert code == 130
    assert "interrupted after iteration 3" in err and f"metarl-fast train --resume --out {part}" in err
    monkeypatch.undo()
    assert int(MetaTrainer.read_checkpoint(part / "checkpoint.npz")[1]["iteration"]) == 3
    # --resume takes every setting from the checkpoint (none given here)
    code, out, _ = main("train", "--resume", "--out", str(part), "--json")
    assert code == 0
    assert json.loads(out) == json.loads((tmp_path / "full" / "eval.json").read_text())
    for name in ("metrics.jsonl", "eval.json", "config.toml"):
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MetaTrainer, "evaluate", interrupted)
    code, _, err = main("eval", str(part))
    assert code == 130 and err.strip() == "metarl-fast: interrupted"


def test_cli_config_file_and_overrides_reach_the_run(tmp_path, main):
    import dataclasses

    cfg = dataclasses.replace(TrainConfig(), tasks="gridnav", grid_size=4, iterations=99, meta_batch=3,
                              episodes_per_task=3, eval_every=3, eval_tasks=6, checkpoint_every=2, seed=21)
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    code, _, _ = main("train", "--config", str(tmp_path / "c.toml"), "--iterations", "3", "--out", str(tmp_path / "r"))
    assert code == 0
    written = TrainConfig.from_toml(tmp_path / "r" / "config.toml")
    assert written.iterations == 3 and written.seed == 21 and written.grid_size == 4 and written.meta_batch == 3
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["iterations"] == 3


def test_cli_eval_reports_the_adapted_checkpoint_on_fresh_tasks(tmp_path, main):
    import dataclasses

    from test_trainer_meaning import adapted_values, assert_adapted_row, held_out_tasks

    run = tmp_path / "run"
    assert main("train", *IN_PROCESS, "--held-out-goals", "3", "--out", str(run))[0] == 0
    config, arrays = MetaTrainer.read_checkpoint(run / "checkpoint.npz")
    code, out, _ = main("eval", str(run), "--json")
    assert code == 0
    evaluation = json.loads(out)
    assert evaluation["eval_seed"] == config.eval_seed + 1 and evaluation["iterations"] == 6
    assert evaluation["checkpoint"] == str(run / "checkpoint.npz")
    fresh = dataclasses.replace(config, eval_seed=config.eval_seed + 1)
    batch = held_out_tasks(fresh)
    rows = evaluation["results"]
    assert_adapted_row(rows["maml (meta-learned)"], adapted_values(fresh, batch, arrays["learner_params"]))
    assert_adapted_row(rows["multi-task pre-trained"], adapted_values(fresh, batch, arrays["multitask_params"]))
    assert evaluation["goals"]["test"] == json.loads((run / "eval.json").read_text())["goals"]["test"]
    code, out, _ = main("eval", str(run / "checkpoint.npz"), "--eval-seed", "5", "--eval-tasks", "4")
    assert code == 0
    assert "on 4 fresh test tasks (eval seed 5)" in out
    assert "test goals: the 3 goals withheld from training (12 trained on)" in out
    fifth = dataclasses.replace(config, eval_seed=5, eval_tasks=4)
    headline = adapted_values(fifth, held_out_tasks(fifth), arrays["learner_params"])[-1].mean()
    line = next(x for x in out.splitlines() if x.startswith("maml (meta-learned)"))
    assert float(line.split()[2]) == pytest.approx(headline, abs=5e-4)
    code, out, _ = main("train", *IN_PROCESS, "--iterations", "1", "--out", str(tmp_path / "all"))
    assert code == 0 and "test goals drawn from all 15 goals, every one also a training goal" in out
    assert "time per phase (s):" in out and f"run directory: {tmp_path / 'all'}" in out


def test_resume_takes_its_settings_from_the_checkpoint_only(tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY, *backend_args(), "--out", str(out)).returncode == 0
    res = cli("train", "--resume", "--out", str(out), "--meta-batch", "40", *backend_args())
    assert res.returncode == 2 and "drop --meta-batch" in res.stderr
    cfg = TrainConfig(tasks="gridnav", grid_size=4, iterations=12, meta_batch=4, episodes_per_task=8,
                      eval_every=6, eval_tasks=20, checkpoint_every=4, seed=1)
    from metarl_fast.io import CheckpointError
    with pytest.raises(CheckpointError, match=r"trained with other settings than this trainer's \(seed=0\)"):
        MetaTrainer(cfg, out).load_checkpoint()
    import dataclasses
    MetaTrainer(dataclasses.replace(cfg, seed=0, eval_tasks=7, eval_seed=3), out).load_checkpoint()


def test_the_comparison_table_shows_three_significant_digits_at_any_scale():
    from metarl_fast.trainer import format_comparison

    def result(scale):
        row = {"before": {"mean": 0.123 * scale}, "after": {"mean": 0.691 * scale, "ci95": 0.0123 * scale,
                                                             "values": [0.68 * scale, 0.70 * scale]},
               "vs_scratch": {"mean": 0.0456 * scale, "ci95": 0.011 * scale}, "verdict": "helps"}
        return {"inner_steps": 1, "rows": {"maml (meta-learned)": row,
                                           "random policy": {"before": {"mean": 0.01 * scale}, "after": None}}}
    small = format_comparison(result(1.0))        # FrozenLake: returns below 1
    assert "| 0.123 | 0.691 ± 0.012 | 0.680 / 0.700 | +0.046 ± 0.011: helps |" in small
    large = format_comparison(result(100.0))      # GridNavigation: tens, one decimal as before
    assert "| 12.3 | 69.1 ± 1.2 | 68.0 / 70.0 | +4.6 ± 1.1: helps |" in large
