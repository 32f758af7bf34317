"""``metarl-fast train --algo rl2``: the GRU in-context learner (RL2Learner) in the trainer's run
directory, with its evaluation against the baselines, resume, divergence handling, compare and
plots."""
import json
import os

import numpy as np
import pytest

from metarl_fast import meta
from metarl_fast.trainer import MetaTrainer, RL2Training, TrainConfig, compare, format_comparison

from test_trainer_cli import backend_args, cli

BANDITS = ["--tasks", "bandits", "--n-arms", "2", "--horizon", "10", "--algo", "rl2", "--rl2-hidden", "16",
           "--rl2-lr", "0.01", "--meta-batch", "200", "--eval-tasks", "4000"]


def quiet():
    return open(os.devnull, "w")


def test_rl2_learns_two_armed_bandits_and_is_compared_with_the_baselines(tmp_path):
    out = tmp_path / "run"
    res = cli("train", *BANDITS, "--iterations", "40", "--eval-every", "20", "--out", str(out), "--json",
              *backend_args())
    assert res.returncode == 0, res.stderr
    evaluation = json.loads(res.stdout)
    rows = evaluation["results"]
    assert set(rows) == {"rl2 (meta-learned)", "random", "posterior-greedy", "epsilon-greedy (0.1)", "UCB1",
                         "Thompson sampling", "Bayes-optimal (exact, prior mean)"}
    learned, rand = rows["rl2 (meta-learned)"], rows["random"]
    # random pulls earn 5.0 in expectation; the Bayes-optimal agent 6.02
    assert learned["mean"] - learned["ci95"] > rand["mean"] + rand["ci95"]
    assert learned["mean"] <= rows["Bayes-optimal (exact, prior mean)"]["mean"] + learned["ci95"]
    assert evaluation["algo"] == "rl2"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 41))
    assert all(r["env_steps"] == 200 * 10 and r["post_return"] is None for r in records)
    assert {"ppo_approx_kl", "ppo_clip_fraction", "ppo_entropy", "ppo_value_loss"} <= set(records[0])
    # the training return climbs from random's 5.0
    assert np.mean([r["pre_return"] for r in records[-10:]]) > np.mean([r["pre_return"] for r in records[:3]])
    # the checkpoint evaluates on its own, and plots show the learner against the baselines
    res = cli("eval", str(out), "--json", "--eval-seed", str(TrainConfig.eval_seed), *backend_args())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"]["rl2 (meta-learned)"] == learned
    pytest.importorskip("matplotlib", reason="matplotlib not installed (the 'plot' extra)")
    res = cli("plot", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "comparison.png").stat().st_size > 0 and (out / "learning_curve.png").stat().st_size > 0


def test_rl2_on_mdps_reports_random_scratch_and_oracle():
    cfg = TrainConfig(tasks="tabular-mdp", n_states=4, n_actions=3, algo="rl2", rl2_hidden=8, trial_episodes=3,
                      meta_batch=8, iterations=2, eval_every=2, eval_tasks=30)
    trainer = MetaTrainer(cfg, os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rl2-mdp-{os.getpid()}"),
                          log=quiet())
    evaluation = trainer.run()
    rows = evaluation["results"]
    assert list(rows) == ["rl2 (meta-learned)", "random policy", "from scratch (REINFORCE)",
                          "oracle (knows the MDP)"]
    assert evaluation["trial_episodes"] == 3
    # the learner's row is one trial of 3 episodes per held-out task
    assert trainer.learner.learner.episodes_per_trial == 3
    rng = np.random.default_rng(np.random.SeedSequence(cfg.eval_seed, spawn_key=(1,)))
    direct = trainer.learner.learner.evaluate(trainer.test_tasks, rng)
    assert rows["rl2 (meta-learned)"]["mean"] == pytest.approx(direct.mean(), rel=1e-12)
    assert rows["oracle (knows the MDP)"]["mean"] > rows["random policy"]["mean"]


def test_resume_continues_bit_for_bit(tmp_path):
    args = [*BANDITS, "--iterations", "12", "--eval-every", "6", "--checkpoint-every", "3", "--eval-tasks", "100",
            *backend_args()]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("train", *args, "--out", str(full)).returncode == 0
    first = list(args)
    first[first.index("--iterations") + 1] = "6"  # an evaluation iteration of the full run too
    res = cli("train", *first, "--out", str(part))
    assert res.returncode == 0, res.stderr
    res = cli("train", "--resume", "--out", str(part), "--iterations", "12", *backend_args())
    assert res.returncode == 0, res.stderr
    assert (part / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    _, a = MetaTrainer.read_checkpoint(part / "checkpoint.npz")
    _, b = MetaTrainer.read_checkpoint(full / "checkpoint.npz")
    for key in ("learner_params", "learner_adam_state", "learner_adam_steps", "learner_iteration"):
        np.testing.assert_array_equal(a[key], b[key])
    # another seed, another run
    res = cli("train", *args, "--seed", "1", "--out", str(tmp_path / "other"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "other" / "metrics.jsonl").read_bytes() != (full / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("changes, message", [
    ({"tasks": "point-nav"}, "the in-context learners run on bandit and tabular tasks"),
    ({"replay": True}, "rl2 trains on-policy"),
    ({"normalize_returns": True}, "rl2 trains on-policy"),
    ({"meta_batch": 3}, "must be at least ppo-minibatches"),
    ({"rl2_hidden": 513}, "rl2-hidden must be in 1..512"),
    ({"rl2_hidden": 0}, "rl2-hidden"),
    ({"ppo_epochs": 0}, "ppo-epochs"),
    ({"rl2_lr": 0.0}, "rl2-lr"),
    ({"ppo_clip": -0.1}, "ppo-clip"),
    ({"gae_lambda": 1.5}, "gae-lambda"),
    ({"entropy_coef": float("nan")}, "entropy-coef"),
])
def test_bad_rl2_settings_are_refused_naming_them(changes, message):
    cfg = TrainConfig(**{"tasks": "bandits", "algo": "rl2", **changes})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_a_diverging_iteration_is_rolled_back(monkeypatch):
    cfg = TrainConfig(tasks="bandits", n_arms=3, algo="rl2", rl2_hidden=4, meta_batch=8).validate()
    training = RL2Training(cfg, 1, 3)
    batch = cfg.distribution().sample(8, np.random.default_rng(0))
    training.meta_step(batch, np.random.default_rng(1))
    before = training.state_dict()
    original = training.learner.meta_step

    def poisoned(task_batch, rng):
        stats = original(task_batch, rng)
        training.learner.params[0] = np.nan
        return stats

    monkeypatch.setattr(training.learner, "meta_step", poisoned)
    with pytest.raises(meta.DivergenceError, match="meta-iteration 2: parameters became non-finite"):
        training.meta_step(batch, np.random.default_rng(2))
    after = training.state_dict()
    assert training.iteration == 1
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)


def test_compare_reports_the_learners_across_seeds_against_the_best_baseline(tmp_path):
    cfg = TrainConfig(tasks="bandits", n_arms=2, horizon=10, algo="rl2", rl2_hidden=8, rl2_lr=0.01, meta_batch=64,
                      iterations=6, eval_every=6, eval_tasks=500)
    result = compare(cfg, ["rl2"], [0, 1, 2], str(tmp_path))
    rows = result["rows"]
    # the ceiling is not a baseline to beat; the best real baseline is
    baselines = {name: json.loads((tmp_path / "rl2-seed0" / "eval.json").read_text())["results"][name]["mean"]
                 for name in ("random", "posterior-greedy", "epsilon-greedy (0.1)", "UCB1", "Thompson sampling")}
    assert result["best_baseline"] == max(baselines, key=baselines.get)
    values = [json.loads((tmp_path / f"rl2-seed{s}" / "eval.json").read_text())["results"]["rl2 (meta-learned)"]["mean"]
              for s in (0, 1, 2)]
    row = rows["rl2 (meta-learned)"]
    assert row["after"]["values"] == values
    assert all(t > 0 for t in row["training_time_s"]["values"])
    diffs = np.array(values) - baselines[result["best_baseline"]]
    assert row["vs_best_baseline"]["mean"] == pytest.approx(diffs.mean())
    best_ci = json.loads((tmp_path / "rl2-seed0" / "eval.json").read_text())["results"][result["best_baseline"]]["ci95"]
    assert row["vs_best_baseline"]["ci95"] == pytest.approx(np.hypot(4.303 * diffs.std(ddof=1) / np.sqrt(3),
                                                                     best_ci))
    # the evaluation's row order (eval.json stores them sorted), the ceiling last
    assert list(rows) == ["rl2 (meta-learned)", "random", "posterior-greedy", "epsilon-greedy (0.1)", "UCB1",
                          "Thompson sampling", "Bayes-optimal (exact, prior mean)"]
    lo = row["vs_best_baseline"]["mean"] - row["vs_best_baseline"]["ci95"]
    hi = row["vs_best_baseline"]["mean"] + row["vs_best_baseline"]["ci95"]
    assert row["verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "no significant difference")
    table = format_comparison(result)
    assert table.count("\n") == 2 + len(rows) - 1
    assert f"vs {result['best_baseline']}: {row['verdict']}" in table and "Bayes-optimal" in table
    # finished runs are read back, not trained again
    mtime = os.path.getmtime(tmp_path / "rl2-seed0" / "eval.json")
    assert compare(cfg, ["rl2"], [0, 1, 2], str(tmp_path)) == result
    assert os.path.getmtime(tmp_path / "rl2-seed0" / "eval.json") == mtime
    with pytest.raises(ValueError, match="compare the in-context learners"):
        compare(cfg, ["rl2", "maml"], [0, 1], str(tmp_path / "mixed"))


@pytest.mark.parametrize("tasks", ["gridnav", "chain", "gym:FrozenLake-v1"])
def test_rl2_trains_on_any_tabular_family(tmp_path, tasks):
    if tasks.startswith("gym:"):
        pytest.importorskip("gymnasium", reason="gymnasium not installed (the 'gym' extra)")
    cfg = TrainConfig(tasks=tasks, grid_size=4, algo="rl2", rl2_hidden=8, trial_episodes=2, meta_batch=8,
                      iterations=2, eval_every=2, eval_tasks=10)
    evaluation = MetaTrainer(cfg, tmp_path, log=quiet()).run()
    rows = evaluation["results"]
    assert list(rows)[0] == "rl2 (meta-learned)" and "oracle (knows the MDP)" in rows
    assert np.isfinite(rows["rl2 (meta-learned)"]["mean"]) and evaluation["trial_episodes"] == 2
