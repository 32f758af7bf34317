"""`metarl-fast plot`: the right figures for each algorithm, valid PNGs written atomically, clear
errors (metarl_fast.plot and the CLI's plot command)."""
import io
import json
import os
import shutil
import struct
import sys

import numpy as np
import pytest

from metarl_fast.cli import main
from metarl_fast.trainer import MetaTrainer, TrainConfig

try:
    import matplotlib  # noqa: F401
except ImportError:
    HAVE_MATPLOTLIB = False
else:
    HAVE_MATPLOTLIB = True

needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB,
                                      reason='matplotlib is not installed (pip install "metarl_fast[plot]")')

GRID = dict(tasks="gridnav", grid_size=4, meta_batch=4, episodes_per_task=8, eval_tasks=20, checkpoint_every=4)
RUNS = {
    # 3 iterations: matplotlib's default locator would put ticks at 1.0, 1.5, ...
    "maml": TrainConfig(**GRID, algo="maml", iterations=3, eval_every=2, inner_steps=2),
    "fomaml": TrainConfig(**GRID, algo="fomaml", iterations=12, eval_every=6),
    "reptile": TrainConfig(**GRID, algo="reptile", iterations=12, eval_every=6),
    "multitask": TrainConfig(**GRID, algo="multitask", iterations=40, eval_every=10),
    "in-context-bandits": TrainConfig(tasks="bandits", algo="in-context", meta_batch=50, iterations=6,
                                      eval_every=3, eval_tasks=50, checkpoint_every=3),
    "in-context-mdp": TrainConfig(tasks="tabular-mdp", algo="in-context", n_states=3, n_actions=2,
                                  trial_episodes=2, meta_batch=20, iterations=4, eval_every=2, eval_tasks=20,
                                  checkpoint_every=2),
}
EXPECTED = {"in-context-bandits": "comparison.png", "in-context-mdp": "comparison.png"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, config in RUNS.items():
        MetaTrainer(config, root / name, log=io.StringIO()).run()
    return root


def png_size(path):
    """(width, height) of a PNG file; AssertionError when it is not one."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def labels(ax):
    return ax.get_legend_handles_labels()[1]


def integer_ticks(axis):
    ticks = [t for t in axis.get_ticklocs() if axis.get_view_interval()[0] <= t <= axis.get_view_interval()[1]]
    return len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


@needs_matplotlib
@pytest.mark.parametrize("name", list(RUNS))
def test_each_algorithm_gets_its_figures_as_valid_pngs(runs, name, capsys):
    assert main(["plot", str(runs / name)]) == 0
    printed = capsys.readouterr().out.split()
    second = EXPECTED.get(name, "adaptation_curve.png")
    assert printed == [str(runs / name / "learning_curve.png"), str(runs / name / second)]
    for path in printed:
        width, height = png_size(path)
        assert width > 400 and height > 300
    assert not [f for f in os.listdir(runs / name) if f.endswith(".tmp")]


@needs_matplotlib
@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "multitask"])
def test_the_adaptation_curve_shows_the_learner_against_every_baseline(runs, name):
    from metarl_fast import plot

    run = plot.load_run(runs / name)
    fig = plot.adaptation_curve(run)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    results = run.evaluation["results"]
    assert set(results) <= set(labels(ax)), (set(results) - set(labels(ax)))
    assert f"{name} (meta-learned)" in results
    if name != "multitask":
        assert "multi-task pre-trained" in labels(ax)
    # one error-bar curve per adapted initialisation, over 0..K steps
    curves = [c for c in ax.containers if c.get_label() in results]
    adapted = [n for n, r in results.items() if "after_steps" in r]
    assert sorted(c.get_label() for c in curves) == sorted(adapted)
    k = RUNS[name].inner_steps
    for container in curves:
        assert len(container.lines[0].get_xdata()) == k + 1
    assert name in ax.get_title() and "gridnav" in ax.get_title()
    assert integer_ticks(ax.xaxis), ax.xaxis.get_ticklocs()
    # the legend sits below the axes, off the data
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor() is not None
    # distinct styles: no two entries share colour and marker
    styles = {(str(c.lines[0].get_color()), c.lines[0].get_marker()) for c in curves}
    assert len(styles) == len(curves)


@needs_matplotlib
@pytest.mark.parametrize("name", list(RUNS))
def test_the_learning_curve_has_training_returns_and_held_out_points(runs, name):
    from metarl_fast import plot

    run = plot.load_run(runs / name)
    fig = plot.learning_curve(run)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert name in ax.get_title() and RUNS[name].algo in ax.get_title() and RUNS[name].tasks in ax.get_title()
    assert integer_ticks(ax.xaxis), ax.xaxis.get_ticklocs()
    evals = [r for r in run.records if "eval_return" in r]
    held = [c for c in ax.containers if c.get_label().startswith("held-out")]
    assert len(held) == 1 and len(held[0].lines[0].get_xdata()) == len(evals)
    names = labels(ax)
    if RUNS[name].algo in ("maml", "fomaml"):
        assert any("before adaptation" in n for n in names) and any("after 1 adaptation step" in n or
                                                                      "after 2 adaptation steps" in n for n in names)
    elif RUNS[name].algo == "in-context":
        assert any("trial return" in n for n in names)
    elif RUNS[name].algo == "multitask":
        assert any("no adaptation" in n for n in names)
        assert any("rolling mean" in n for n in names)  # 40 iterations: smoothed, the raw faint
        assert any(line.get_alpha() is not None and line.get_alpha() < 0.5 for line in ax.lines)


@needs_matplotlib
@pytest.mark.parametrize("name", ["in-context-bandits", "in-context-mdp"])
def test_the_in_context_comparison_has_every_baseline_and_the_ceiling(runs, name):
    from metarl_fast import plot

    run = plot.load_run(runs / name)
    fig = plot.comparison(run)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    results = run.evaluation["results"]
    names = labels(ax)
    for method in results:
        assert any(n == method or n.startswith(method + ":") for n in names), method
    assert name in ax.get_title() and "in-context" in ax.get_title()
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert set(ticks) == {n for n in results if n != plot.CEILING}
    if name == "in-context-bandits":
        assert plot.CEILING in results
        line = [ln for ln in ax.lines if ln.get_label().startswith(plot.CEILING)]
        assert len(line) == 1
        y = np.asarray(line[0].get_ydata(), dtype=float)
        assert np.allclose(y, results[plot.CEILING]["mean"])  # horizontal, at the exact value
    else:
        assert plot.CEILING not in results and not any(n.startswith(plot.CEILING) for n in names)
    # each method's point carries its 95% CI
    for container in ax.containers:
        row = results[container.get_label()]
        segment = container.lines[2][0].get_segments()[0]
        assert segment[1][1] - segment[0][1] == pytest.approx(2 * row["ci95"])


@needs_matplotlib
def test_plot_out_writes_elsewhere_and_an_unfinished_run_gets_its_learning_curve(runs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs / "reptile"), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["adaptation_curve.png", "learning_curve.png"]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs / "fomaml", unfinished)
    os.unlink(unfinished / "eval.json")
    capsys.readouterr()
    assert main(["plot", str(unfinished)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(unfinished / "learning_curve.png")]
    assert "no eval.json" in captured.err


@needs_matplotlib
def test_a_failed_write_leaves_the_previous_png_and_no_temporary_file(runs, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from metarl_fast import plot

    run_dir = tmp_path / "run"
    shutil.copytree(runs / "fomaml", run_dir)
    (run_dir / "learning_curve.png").write_bytes(b"previous")

    def broken(self, fname, **kwargs):  # half a PNG written, then the disk is full
        fname.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot.plot_run(run_dir)
    assert (run_dir / "learning_curve.png").read_bytes() == b"previous"
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]


def not_a_run(tmp_path, case):
    """A path that is not a run directory, of the kind ``case`` names."""
    if case == "missing":
        return tmp_path / "missing"
    if case == "file":
        (tmp_path / "file.txt").write_text("x")
        return tmp_path / "file.txt"
    if case == "empty metrics":
        (tmp_path / "metrics.jsonl").write_text("")
    elif case == "torn metrics":
        (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "pre_ret\n')
    return tmp_path


@needs_matplotlib
@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("file", "is not a directory"),
    ("empty directory", "is not a run directory (no metrics.jsonl)"),
    ("empty metrics", "holds no iterations yet"),
    ("torn metrics", "line 1 is not a JSON record"),
])
def test_a_directory_that_is_not_a_run_is_one_clear_line(tmp_path, capsys, case, message):
    assert main(["plot", str(not_a_run(tmp_path, case))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl-fast: error:") and message in err[0], err


@needs_matplotlib
def test_a_directory_of_runs_names_them(runs, capsys):
    assert main(["plot", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory" in err and "maml" in err and "plot each" in err


def test_without_matplotlib_plot_says_how_to_install_it(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", str(runs / "maml")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "metarl_fast[plot]"' in err and len(err.strip().splitlines()) == 1


def test_rolling_mean_is_centred_and_skips_nan():
    from metarl_fast.plot import rolling_mean, smoothing_window

    assert rolling_mean([1, 2, 3, 4, 5], 3).tolist() == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert rolling_mean([1, np.nan, 3], 3).tolist() == [1.0, 2.0, 3.0]
    assert rolling_mean([1, 2], 1).tolist() == [1.0, 2.0]
    assert smoothing_window(10) == 1 and smoothing_window(500) % 2 == 1
    with pytest.raises(ValueError, match="window must be >= 1"):
        rolling_mean([1.0], 0)
    with pytest.raises(ValueError, match="values must be 1-D"):
        rolling_mean(np.ones((2, 2)), 3)


def test_eval_json_of_every_run_is_what_the_figures_read(runs):
    # the figures read these keys: a change of eval.json's layout must show here first
    for name in RUNS:
        evaluation = json.loads((runs / name / "eval.json").read_text())
        assert evaluation["algo"] == RUNS[name].algo and evaluation["tasks"] == RUNS[name].tasks
        for row in evaluation["results"].values():
            assert {"mean", "ci95"} <= set(row)
