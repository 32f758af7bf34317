"""Issue 14 (bring your own tasks): the trainer and the command line take any task distribution
(`file:PATH.npz`, `MODULE:NAME`, a distribution object in Python, `gym:ENV_ID` in
test_gymnasium_tasks.py) with the same evaluation, baselines, checkpoints and resume as the
built-in families; return normalisation; the warning when meta-training gets no signal."""
import dataclasses
import io as _io
import json
import os
import sys
import textwrap

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import meta, task_specs
from metarl_fast.cli import main
from metarl_fast.trainer import MetaTrainer, TrainConfig

SMALL = ["--iterations", "4", "--eval-every", "2", "--eval-tasks", "6", "--meta-batch", "4", "--episodes", "4"]
BASELINES = {"random policy", "from scratch", "multi-task pre-trained", "oracle (knows the MDP)"}


def _family():
    batch = mf.TabularMDPs(n_states=4, n_actions=3, horizon=6).sample(5, 0)
    return mf.TabularFamily(batch.P, batch.R, 6, start=batch.start, terminal=batch.terminal)


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


# ------------------------------------------------------------------------------ tasks files
def test_a_family_saved_and_loaded_holds_the_same_tasks(tmp_path):
    family = _family()
    family.save(tmp_path / "tasks.npz")
    loaded = mf.TabularFamily.load(tmp_path / "tasks.npz")
    a, b = family.sample(7, 3), loaded.sample(7, 3)
    for name in ("P", "R", "start", "terminal", "reward_std"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.horizon == b.horizon == 6


def test_plain_numpy_files_load_one_task_or_many_and_next_state_tables(tmp_path):
    batch = mf.GridNavigation(size=3).sample(2, 0)
    np.savez(tmp_path / "one.npz", P=batch.P[0], R=batch.R[0], horizon=np.int64(8))
    one = mf.TabularFamily.load(tmp_path / "one.npz").sample(3, 0)
    assert one.n_tasks == 3 and np.array_equal(one.P[2], batch.P[0])
    np.savez(tmp_path / "det.npz", next_state=batch.next_state, R=batch.R, horizon=np.int64(8),
             reward_noise=np.array("none"))
    det = mf.TabularFamily.load(tmp_path / "det.npz").sample(4, 1)
    assert det.next_state is not None and set(map(tuple, det.R.reshape(4, -1))) <= set(map(tuple, batch.R.reshape(2, -1)))


@pytest.mark.parametrize("arrays, match", [
    ({"P": "ok", "R": "ok", "horizon": np.int64(5), "colour": np.zeros(2)}, "unknown arrays"),
    ({"P": "ok", "horizon": np.int64(5)}, "needs the array 'R'"),
    ({"P": "ok", "R": "ok", "horizon": np.float64(5)}, "horizon must be an integer"),
    ({"P": "ok", "R": "nan", "horizon": np.int64(5)}, "NaN or infinity"),
    ({"P": "bad", "R": "ok", "horizon": np.int64(5)}, "sum to 1"),
    ({"P": "ok", "R": "ok", "horizon": np.int64(5), "reward_noise": np.int64(3)}, "reward_noise must be a string"),
])
def test_bad_tasks_files_are_refused_naming_the_file_and_the_problem(tmp_path, arrays, match):
    batch = mf.TabularMDPs(n_states=3, n_actions=2).sample(2, 0)
    values = {"ok": None, "nan": np.full(batch.R.shape, np.nan), "bad": batch.P * 2}
    made = {}
    for key, value in arrays.items():
        if isinstance(value, str):
            value = values[value] if values[value] is not None else getattr(batch, key)
        made[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **made)
    with pytest.raises(ValueError, match=match) as err:
        mf.TabularFamily.load(path)
    assert str(path) in str(err.value)


def test_train_on_a_tasks_file_evaluates_with_every_baseline_and_resumes_bit_identically(tmp_path, monkeypatch):
    _family().save(tmp_path / "tasks.npz")
    monkeypatch.chdir(tmp_path)  # a relative path is recorded as an absolute one
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(["train", "--tasks", "file:tasks.npz", *SMALL, "--out", full, "--json"]) == 0
    evaluation = json.load(open(os.path.join(full, "eval.json")))
    assert BASELINES <= set(evaluation["results"]) and evaluation["tasks"] == "file:" + str(tmp_path / "tasks.npz")
    stopped = dict(zip(SMALL[::2], SMALL[1::2]), **{"--iterations": "2"})
    assert main(["train", "--tasks", "file:tasks.npz", *[x for kv in stopped.items() for x in kv], "--out", part]) == 0
    monkeypatch.chdir("/")
    assert main(["train", "--resume", "--out", part, "--iterations", "4"]) == 0
    assert _metrics(part) == _metrics(full)


# ----------------------------------------------------------------------------- MODULE:NAME
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""
        import metarl_fast as mf

        chains = mf.Chain(n_states=4, n_actions=2, horizon=8)

        def family(n_states=3, slip=0.0):
            return mf.Chain(n_states=n_states, n_actions=2, horizon=8, slip=slip)

        def not_a_family():
            return 42

        number = 7
    """))
    monkeypatch.chdir(tmp_path)
    yield "my_tasks"
    sys.modules.pop("my_tasks", None)


def test_a_distribution_in_the_users_module_trains_from_the_current_directory(tmp_path, user_module):
    assert main(["train", "--tasks", "my_tasks:chains", *SMALL, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--tasks", "my_tasks:family", "--env-kwargs", '{"n_states": 5, "slip": 0.1}',
                 *SMALL, "--out", str(tmp_path / "b")]) == 0
    evaluation = json.load(open(tmp_path / "b" / "eval.json"))
    assert BASELINES <= set(evaluation["results"])
    dist = TrainConfig(tasks="my_tasks:family", env_kwargs='{"n_states": 5}').distribution()
    assert dist.sample(1, 0).n_states == 5


@pytest.mark.parametrize("tasks, kwargs, match", [
    ("my_tasks:nothing", "", "has no 'nothing'"),
    ("no_such_module_xyz:f", "", "cannot import 'no_such_module_xyz'"),
    ("my_tasks:number", "", "must name a TaskDistribution or a function"),
    ("my_tasks:not_a_family", "", "must return a TaskDistribution"),
    ("my_tasks:chains", '{"slip": 0.1}', "env-kwargs apply to a function only"),
    ("my_tasks:family", '{"colour": 1}', "unexpected keyword"),
])
def test_bad_module_tasks_are_one_line_errors(user_module, tasks, kwargs, match, capsys):
    assert main(["train", "--tasks", tasks, "--env-kwargs", kwargs, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl-fast: error:") and len(err.splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("tasks, kwargs, match", [
    ("foo", "", "unknown tasks 'foo'"),
    ("file:", "", "unknown tasks"),
    ("gridnav", '{"size": 3}', "env-kwargs apply to gym"),
    ("gym:FrozenLake-v1", "[1, 2]", "must be a JSON object"),
    ("gym:FrozenLake-v1", "{oops", "not valid JSON"),
])
def test_task_specs_are_validated_before_anything_runs(tasks, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(tasks=tasks, env_kwargs=kwargs).validate()


def test_kind_of_names_every_form():
    assert [task_specs.kind_of(s) for s in ("chain", "file:x.npz", "gym:Taxi-v3", "pkg.mod:f", "python:Chain()")] \
        == ["built-in", "file", "gym", "module", "python"]


# ----------------------------------------------------------------------- a distribution in Python
def test_a_distribution_object_trains_records_its_repr_and_resumes_only_with_it(tmp_path):
    family = _family()
    config = TrainConfig(tasks=family, iterations=4, eval_every=2, eval_tasks=6, meta_batch=4, episodes_per_task=4)
    full = MetaTrainer(config, tmp_path / "full", log=_io.StringIO())
    evaluation = full.run()
    assert BASELINES <= set(evaluation["results"])
    assert evaluation["tasks"] == "python:" + repr(family)
    assert 'tasks = "python:' in open(tmp_path / "full" / "config.toml").read()
    part = MetaTrainer(dataclasses.replace(config, iterations=2), tmp_path / "part", log=_io.StringIO())
    part.run()
    MetaTrainer(config, tmp_path / "part", log=_io.StringIO()).run(resume=True)
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "full")
    # the command line cannot rebuild a Python object: it says what to do instead
    assert main(["train", "--resume", "--out", str(tmp_path / "part"), "--iterations", "6"]) == 2
    with pytest.raises(ValueError, match="given in Python"):
        TrainConfig.from_toml(tmp_path / "full" / "config.toml").distribution()


# --------------------------------------------------------------------------- return normalisation
def test_return_scales_are_one_over_the_std_of_each_tasks_returns():
    returns = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0], [-100.0, -300.0, -200.0]])
    np.testing.assert_allclose(meta.return_scales(returns), [1 / np.std([1, 3, 5]), 1.0, 1 / np.std([100, 300, 200])])


@pytest.mark.parametrize("advantage", ["reinforce", "actor-critic"])
def test_normalised_gradients_are_each_tasks_gradient_divided_by_its_returns_std(advantage):
    tasks = mf.TabularMDPs(n_states=4, n_actions=3, horizon=6).sample(5, 0)
    policy = mf.TabularSoftmaxPolicy(4, 3)
    theta = np.random.default_rng(1).normal(size=(5, policy.n_params))
    raw = meta.SampledPolicyProblem(policy, tasks, 6, 0.9, advantage=advantage)
    normed = meta.SampledPolicyProblem(policy, tasks, 6, 0.9, advantage=advantage, normalize_returns=True)
    data_raw, data_normed = raw.sample(theta, 7), normed.sample(theta, 7)  # the same episodes
    scales = meta.return_scales(data_raw["traj"].episode_return)
    assert not np.allclose(scales, 1.0)
    np.testing.assert_allclose(normed.grad(theta, data_normed), raw.grad(theta, data_raw) * scales[:, None],
                               rtol=1e-12, atol=1e-15)
    v = np.random.default_rng(2).normal(size=theta.shape)
    np.testing.assert_allclose(normed.hvp(theta, data_normed, v), raw.hvp(theta, data_raw, v) * scales[:, None],
                               rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(normed.value(theta, data_normed), raw.value(theta, data_raw))  # true returns


def test_normalisation_is_refused_where_it_has_no_meaning():
    policy = mf.TabularSoftmaxPolicy(4, 2)
    with pytest.raises(ValueError, match="sampled estimator without replay"):
        mf.MAML(policy, estimator="exact", normalize_returns=True)
    with pytest.raises(TypeError, match="normalize_returns must be a bool"):
        mf.MAML(policy, normalize_returns="yes")
    with pytest.raises(ValueError, match="gradient-based algorithms"):
        TrainConfig(algo="in-context", tasks="bandits", normalize_returns=True).validate()
    with pytest.raises(ValueError, match="without --replay"):
        TrainConfig(normalize_returns=True, replay=True).validate()


# ------------------------------------------------------------------- no learning signal: a warning
def test_a_run_without_learning_signal_warns_once_with_the_fix(tmp_path):
    gym = pytest.importorskip("gymnasium", reason="CliffWalking comes from Gymnasium (the test extra)")
    # CliffWalking: returns of about -1000 under the random policy; an inner step of 1.0 makes the
    # adapted policies deterministic, so the meta-gradient vanishes (~1e-11 and below)
    cliff = mf.FromGymnasium(lambda rng: gym.make("CliffWalking-v1"), horizon=100)
    config = TrainConfig(tasks=cliff, iterations=12, eval_every=12, eval_tasks=2, meta_batch=2, episodes_per_task=4)
    log = _io.StringIO()
    trainer = MetaTrainer(config, tmp_path / "flat", log=log)
    trainer.run()
    assert all(r["direction_norm"] < 1e-8 for r in _metrics(tmp_path / "flat")[:10])
    assert log.getvalue().count("warning") == 1 and "no learning signal" in log.getvalue()
    assert "--normalize-returns" in trainer.signal_warning and "--inner-lr" in trainer.signal_warning
    # the fix it names gives a signal, and no warning
    log = _io.StringIO()
    fixed = MetaTrainer(dataclasses.replace(config, normalize_returns=True), tmp_path / "fixed", log=log)
    fixed.run()
    assert "no learning signal" not in log.getvalue() and fixed.signal_warning is None
    assert min(r["direction_norm"] for r in _metrics(tmp_path / "fixed")) > 1e-3


def test_adaptation_that_lowers_the_return_warns_once_with_the_fix(tmp_path):
    pytest.importorskip("gymnasium", reason="Taxi comes from Gymnasium (the test extra)")
    # Taxi: returns of about -770 under the random policy; an inner step of 1.0 overshoots, so the
    # adapted policies earn less than the initial ones
    config = TrainConfig(tasks="gym:Taxi-v4", iterations=60, eval_every=60, eval_tasks=2)
    log = _io.StringIO()
    trainer = MetaTrainer(config, tmp_path / "worse", log=log)
    trainer.run()
    gains = np.array([r["post_return"] - r["pre_return"] for r in _metrics(tmp_path / "worse")])
    assert gains[20:].mean() < 0
    assert log.getvalue().count("warning") == 1 and "adaptation makes the policies worse" in log.getvalue()
    assert "--normalize-returns" in trainer.signal_warning
    log = _io.StringIO()
    fixed = MetaTrainer(dataclasses.replace(config, normalize_returns=True), tmp_path / "fixed", log=log)
    fixed.run()
    assert "warning" not in log.getvalue()
    assert np.mean([r["post_return"] - r["pre_return"] for r in _metrics(tmp_path / "fixed")]) > 0


def test_noisy_adaptation_gains_do_not_warn(tmp_path):
    """Small batches: the gains swing around zero; only a significantly negative mean warns."""
    pytest.importorskip("gymnasium", reason="Taxi comes from Gymnasium (the test extra)")
    config = TrainConfig(tasks="gym:Taxi-v4", iterations=30, eval_every=30, eval_tasks=2, meta_batch=4,
                         episodes_per_task=4)
    log = _io.StringIO()
    MetaTrainer(config, tmp_path / "noisy", log=log).run()
    gains = np.array([r["post_return"] - r["pre_return"] for r in _metrics(tmp_path / "noisy")])
    assert gains[4:24].sum() < 0  # a plain "mean below zero" rule would have warned here
    assert "warning" not in log.getvalue()


def test_returns_that_never_vary_warn_too(tmp_path):
    batch = mf.Chain(n_states=4, n_actions=2, horizon=6).sample(3, 0)
    same = mf.TabularFamily(batch.P, np.full(batch.R.shape, -1.0), 6)  # every episode earns -6
    log = _io.StringIO()
    trainer = MetaTrainer(TrainConfig(tasks=same, iterations=11, eval_every=11, eval_tasks=2, meta_batch=2,
                                      episodes_per_task=3), tmp_path / "same", log=log)
    trainer.run()
    assert log.getvalue().count("no learning signal") == 1 and "do not vary" in trainer.signal_warning


def test_a_healthy_run_does_not_warn(tmp_path):
    log = _io.StringIO()
    MetaTrainer(TrainConfig(tasks="chain", iterations=30, eval_every=30, eval_tasks=4), tmp_path / "ok", log=log).run()
    assert "warning" not in log.getvalue()


# ------------------------------------------------------------------------------ gym:ENV_ID
@pytest.mark.parametrize("tasks, extra", [
    ("gym:FrozenLake-v1", ["--env-kwargs", '{"desc": "random", "size": 4, "is_slippery": [true, false]}']),
    ("gym:Taxi-v4", ["--normalize-returns"]),
    ("gym:CliffWalking-v1", ["--horizon", "30"]),
    ("gym:CliffWalkingSlippery-v1", ["--horizon", "30", "--normalize-returns"]),
])
def test_gymnasium_toy_text_envs_train_from_the_command_line_and_resume_bit_identically(tmp_path, tasks, extra):
    pytest.importorskip("gymnasium", reason="gym: tasks need Gymnasium (the test extra)")
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(["train", "--tasks", tasks, *extra, *SMALL, "--out", full]) == 0
    evaluation = json.load(open(os.path.join(full, "eval.json")))
    assert BASELINES <= set(evaluation["results"]) and evaluation["tasks"] == tasks
    stopped = dict(zip(SMALL[::2], SMALL[1::2]), **{"--iterations": "2"})
    assert main(["train", "--tasks", tasks, *extra, *[x for kv in stopped.items() for x in kv], "--out", part]) == 0
    assert main(["train", "--resume", "--out", part, "--iterations", "4"]) == 0
    assert _metrics(part) == _metrics(full)


def test_a_gym_env_without_a_horizon_asks_for_one_on_the_command_line(capsys):
    pytest.importorskip("gymnasium", reason="gym: tasks need Gymnasium (the test extra)")
    assert main(["train", "--tasks", "gym:CliffWalking-v1", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--horizon" in err, err


def test_an_outcome_reward_family_survives_a_tasks_file(tmp_path):
    pytest.importorskip("gymnasium", reason="CliffWalkingSlippery comes from Gymnasium (the test extra)")
    batch = mf.FromGymnasium("CliffWalkingSlippery-v1", horizon=20).sample(1, 0)
    family = mf.TabularFamily(batch.P, batch.R, 20, start=batch.start, terminal=batch.terminal,
                              reward_noise="outcome", reward_values=batch.reward_values,
                              reward_probs=batch.reward_probs)
    family.save(tmp_path / "cliff.npz")
    loaded = mf.TabularFamily.load(tmp_path / "cliff.npz").sample(2, 0)
    assert loaded.reward_noise == "outcome"
    for name in ("P", "R", "reward_values", "reward_probs", "terminal"):
        np.testing.assert_array_equal(getattr(loaded, name)[1], getattr(batch, name)[0])
