"""The training progress display: one line that fits the terminal, the right returns, plain lines
elsewhere (metarl_fast.progress and its use by MetaTrainer.run)."""
import io
import re

import pytest

from metarl_fast.progress import (Progress, format_duration, format_return, legend, return_meaning,
                                  terminal_width)
from metarl_fast.trainer import MetaTrainer, TrainConfig


class FakeTTY(io.StringIO):
    """A terminal without a file descriptor: its width comes from COLUMNS (or the 80 fallback)."""

    def isatty(self):
        return True


class AsciiTTY(FakeTTY):
    encoding = "ascii"


class Clock:
    """A deterministic clock: each call returns the current fake time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def rendered_lines(text):
    """What a terminal shows, line by line: every segment between \\r and \\n."""
    return [seg for line in text.split("\n") for seg in line.split("\r")]


def drive(stream, total=1500, eval_every=250, seconds_per_iteration=0.2, **kwargs):
    clock = Clock()
    progress = Progress(total, stream, clock=clock, eval_tasks=200, eval_every=eval_every, **kwargs)
    for it in range(1, total + 1):
        clock.now += seconds_per_iteration
        evaluated = it % eval_every == 0
        progress.update(it, -15.8734 + 0.001 * it, 18.3e6,
                        eval_mean=-17.0194 if evaluated else None, eval_ci95=1.5168 if evaluated else None)
    progress.close("iterations")
    return progress


@pytest.mark.parametrize("width", [40, 60, 80, 200])
def test_every_rendered_line_fits_the_terminal(monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    stream = FakeTTY()
    drive(stream)
    lines = rendered_lines(stream.getvalue())
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, too_long[:3]
    # the line is redrawn in place: one \r per redraw, the legend and the finish line end in \n
    assert stream.getvalue().count("\r") > 10
    assert lines[-2].startswith("done: 1500/1500")


@pytest.mark.parametrize("width, kept, dropped", [
    (200, ["1500/1500", "train ", "held-out -17.02", "elapsed", "ETA 0:00", "M steps/s"], []),
    (80, ["1400/1500", "train ", "held-out -17.02", "ETA"], ["steps/s"]),
    (40, ["1400/1500", "ho -17.0", "ETA"], ["steps/s", "elapsed"]),
])
def test_narrow_terminals_drop_fields_before_the_bar_and_keep_the_held_out_return(width, kept, dropped):
    clock = Clock()
    progress = Progress(1500, FakeTTY(), clock=clock)
    iteration = 1500 if width == 200 else 1400
    clock.now = 0.2 * iteration
    progress.update(iteration, -15.87, 18.3e6, eval_mean=-17.0194, eval_ci95=1.5168)
    line = progress.render(width)
    assert len(line) <= width - 1, line
    assert line.startswith("[") and "]" in line, line  # the bar is still there
    for text in kept:
        assert text in line, (text, line)
    for text in dropped:
        assert text not in line, (text, line)


def test_the_width_is_read_again_at_every_update(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = FakeTTY()
    clock = Clock()
    progress = Progress(100, stream, clock=clock, min_interval=0.0)
    for it in range(1, 51):
        clock.now += 1.0
        progress.update(it, 1.0, 1e6, eval_mean=2.0 if it == 10 else None, eval_ci95=0.5 if it == 10 else None)
    wide = max(len(line) for line in rendered_lines(stream.getvalue()))
    assert wide > 80
    monkeypatch.setenv("COLUMNS", "40")  # the terminal was narrowed
    start = len(stream.getvalue())
    for it in range(51, 101):
        clock.now += 1.0
        progress.update(it, 1.0, 1e6)
    progress.close("iterations")
    after = rendered_lines(stream.getvalue()[start:])
    assert max(len(line) for line in after) <= 40


def test_terminal_width_honours_columns_then_falls_back_to_80(monkeypatch):
    monkeypatch.setenv("COLUMNS", "123")
    assert terminal_width(FakeTTY()) == 123
    monkeypatch.setenv("COLUMNS", "wide")
    assert terminal_width(FakeTTY()) == 80  # no file descriptor: the fallback
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(FakeTTY()) == 80
    stream = FakeTTY()
    drive(stream, total=300, eval_every=100)
    assert max(len(line) for line in rendered_lines(stream.getvalue())) <= 80


def test_durations_and_returns_are_formatted_compactly():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600, 86399, 3 * 86400 + 7200)] == \
        ["0:00", "0:59", "1:01", "59:59", "1:00:00", "23:59:59", "3d02h"]
    assert [format_duration(s) for s in (None, float("nan"), float("inf"), -1)] == ["--:--"] * 4
    assert [format_return(v) for v in (-15.8734, 6.66, 150.23, 1234.5, 12345.0, None)] == \
        ["-15.87", "6.660", "150.2", "1234", "12345", "--"]
    assert format_return(-15.8734, short=True) == "-15.9"


def test_eta_comes_from_the_rate_so_far_or_from_the_time_budget_when_that_binds():
    clock = Clock()
    progress = Progress(100, io.StringIO(), clock=clock)
    assert progress.eta() == (None, False)  # no iteration yet: no rate
    clock.now = 10.0
    progress.update(10, 1.0)
    assert progress.eta() == (pytest.approx(90.0), False)
    assert "ETA 1:30" in progress.plain_line() and "elapsed 0:10" in progress.plain_line()

    clock = Clock()
    budget = Progress(100, io.StringIO(), clock=clock, time_budget=20.0)
    clock.now = 10.0
    budget.update(10, 1.0)
    assert budget.eta() == (pytest.approx(10.0), True)
    assert "ETA 0:10 (time budget)" in budget.plain_line()
    assert budget.fraction() == pytest.approx(0.5)  # half the budget spent, a tenth of the iterations

    clock = Clock()  # a resumed run: the rate counts this session's iterations only
    resumed = Progress(100, io.StringIO(), clock=clock, start=50)
    clock.now = 5.0
    resumed.update(60, 1.0)
    assert resumed.eta() == (pytest.approx(20.0), False)


def test_plain_streams_get_periodic_lines_without_carriage_returns():
    stream = io.StringIO()
    drive(stream, total=300, eval_every=100, every=50)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("train = train return after 1 adaptation step")  # the legend
    body = [line for line in lines if line.startswith("iter ")]
    assert [line.split()[1] for line in body] == [f"{i}/300" for i in (50, 100, 150, 200, 250, 300)]
    assert "held-out --" in body[0] and "held-out -17.02 ± 1.517 (iter 100)" in body[1]
    assert lines[-1].startswith("done: 300/300 iterations in 1:00 (stopped by iterations), held-out -17.02")


def test_a_stream_that_cannot_encode_plus_minus_gets_ascii():
    stream = AsciiTTY()
    drive(stream, total=60, eval_every=20)
    stream.getvalue().encode("ascii")  # raises on any non-ASCII character
    assert "+-" in stream.getvalue()


@pytest.mark.parametrize("algo, estimator, meaning, train, held", [
    ("maml", "sampled", "train return after adaptation", "train return after 1 adaptation step",
     "held-out = exact return on held-out tasks after 1 adaptation step"),
    ("fomaml", "exact", "train return after adaptation", "train return after 1 adaptation step (mean",
     "after 1 adaptation step"),
    ("reptile", "sampled", "train return before adaptation", "train return before adaptation",
     "after 1 adaptation step"),
    ("multitask", "sampled", "return", "no adaptation", "after 1 adaptation step"),
    ("in-context", "sampled", "trial return", "train = trial return", "held-out = trial return"),
])
def test_the_legend_says_what_each_return_means(algo, estimator, meaning, train, held):
    assert return_meaning(algo, estimator) == meaning
    text = legend(algo, estimator=estimator, eval_tasks=200, eval_every=250)
    assert train in text and held in text and "95% CI over 200 tasks, every 250 iterations" in text


@pytest.mark.parametrize("kwargs, error, match", [
    ({"total": -1}, ValueError, "total must be >= 0"),
    ({"total": 1.5}, TypeError, "total must be an int"),
    ({"total": 10, "every": 0}, ValueError, "every must be >= 1"),
    ({"total": 10, "time_budget": float("nan")}, ValueError, "time_budget must be finite"),
    ({"total": 10, "stream": 3}, TypeError, "stream must be a text stream"),
    ({"total": 10, "clock": 3}, TypeError, "clock must be callable"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        Progress(**kwargs)


TINY = dict(tasks="gridnav", grid_size=4, iterations=12, meta_batch=4, episodes_per_task=8, eval_every=6,
            eval_tasks=20, checkpoint_every=4)


@pytest.mark.parametrize("width", [40, 80])
def test_a_training_run_on_a_terminal_shows_the_held_out_evaluation_and_fits(tmp_path, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    log = FakeTTY()
    evaluation = MetaTrainer(TrainConfig(**TINY), tmp_path / "run", log=log).run()
    lines = rendered_lines(log.getvalue())
    assert max(len(line) for line in lines) <= width
    held = evaluation["results"]["maml (meta-learned)"]
    assert any("12/12" in line for line in lines)
    # the last in-training evaluation (iteration 12) is on the line: the same number as metrics.jsonl
    last = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    shown = format_return(float(re.search(r'"eval_return": ([-0-9.e]+)', last).group(1)), short=width < 60)
    assert any(shown in line for line in lines), (shown, lines[-5:])
    assert lines[-2].startswith("done: 12/12") and held is not None


def test_a_training_run_to_a_file_writes_plain_lines(tmp_path):
    log = io.StringIO()
    MetaTrainer(TrainConfig(**TINY), tmp_path / "run", log=log).run()
    text = log.getvalue()
    assert "\r" not in text
    assert "iter 12/12" in text and "held-out" in text and "(iter 12)" in text
    assert text.splitlines()[-1].startswith("done: 12/12 iterations")


def test_an_in_context_run_says_its_return_is_a_trial_return(tmp_path):
    log = io.StringIO()
    cfg = TrainConfig(tasks="bandits", algo="in-context", meta_batch=20, iterations=4, eval_every=2,
                      eval_tasks=20, checkpoint_every=2)
    MetaTrainer(cfg, tmp_path / "run", log=log).run()
    assert log.getvalue().startswith("train = trial return")


def test_an_interrupted_or_failed_run_says_so_on_its_finish_line():
    stream = FakeTTY()
    progress = Progress(100, stream, clock=Clock())
    progress.update(3, 1.0)
    progress.close("interrupt")
    assert rendered_lines(stream.getvalue())[-2].startswith("interrupted: 3/100")
    stream = io.StringIO()
    progress = Progress(100, stream, clock=Clock())
    progress.update(3, 1.0)
    progress.close(None)
    assert stream.getvalue().splitlines()[-1].startswith("stopped: 3/100")
    assert "(stopped by" not in stream.getvalue()


@pytest.mark.parametrize("columns", [40, 60, 80])
def test_the_runs_first_line_and_warnings_fit_the_terminal(columns, monkeypatch, tmp_path):
    from metarl_fast.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    assert main(["train", "--tasks", "chain", "--iterations", "2", "--eval-every", "1", "--eval-tasks", "3",
                 "--out", str(tmp_path / "a-run-directory-with-a-rather-long-name")]) == 0
    # a run that warns (every episode earns the same return: no learning signal)
    import numpy as np

    import metarl_fast as mf

    batch = mf.Chain(n_states=3, n_actions=2, horizon=4).sample(2, 0)
    flat = mf.TabularFamily(batch.P, np.zeros(batch.R.shape), 4)
    trainer = MetaTrainer(TrainConfig(tasks=flat, iterations=11, eval_every=11, eval_tasks=2, meta_batch=2,
                                      episodes_per_task=2), tmp_path / "flat", log=stream)
    trainer.run()
    assert trainer.signal_warning is not None
    lines = re.split(r"[\r\n]", stream.getvalue())
    assert "metarl-fast train:" in stream.getvalue()
    assert all(len(line) < columns for line in lines), [line for line in lines if len(line) >= columns]
