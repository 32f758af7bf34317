"""The training progress display of ``metarl-fast train``.

On a terminal, one line redrawn in place (``\\r``) that always fits the terminal: the width of the
stream's terminal is read at every redraw (``COLUMNS`` first, as :func:`shutil.get_terminal_size`
does, then the terminal itself, else 80 columns), and a line that would not fit loses its least
useful fields first (throughput, elapsed time, the long labels), then its bar shrinks, so the line
never wraps, down to a few columns.  Elsewhere (a file, a pipe, CI logs): plain lines every
``every`` iterations, at every held-out evaluation and at the end, with no ``\\r``.

The line shows the iteration count, the elapsed time and an ETA (from the iterations per second
so far, or from the time budget when that ends the run first), the noisy training return and the
latest held-out evaluation (mean and 95% confidence half-width after adaptation, marked
``held-out``).  What "return" means depends on the algorithm (see :func:`return_meaning`); a
legend line printed at the start says it.
"""
import math
import os
import sys
import textwrap
import time

from metarl_fast import _validate

DEFAULT_COLUMNS = 80
MIN_BAR_RICH = 12   # the bar's least inner width beside the long fields
MIN_BAR = 5         # ... beside the short fields, below which the barest line's bar shrinks
PREFERRED_BAR = 30  # the bar's inner width when the terminal has room


def terminal_width(stream, default=DEFAULT_COLUMNS):
    """Columns of the terminal ``stream`` writes to: ``COLUMNS`` when set to a positive integer,
    else the terminal's size, else ``default``."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return default
    return columns if columns > 0 else default


def fit_to_terminal(text, stream):
    """``text`` wrapped to the width of ``stream``'s terminal (as it is when not a terminal)."""
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return text
    return "\n".join(textwrap.wrap(text, max(terminal_width(stream) - 1, 20), subsequent_indent="  "))


def format_duration(seconds):
    """``m:ss`` below an hour, ``h:mm:ss`` below a day, ``NdHHh`` beyond; ``--:--`` when unknown
    (None, NaN, infinite or negative)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    total = int(round(seconds))
    if total >= 86400:
        days, rest = divmod(total, 86400)
        return f"{days}d{rest // 3600:02d}h"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_return(value, short=False):
    """A return with the digits it can afford: 4 significant digits (3 when ``short``)."""
    if value is None:
        return "--"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    digits = 3 if short else 4
    magnitude = abs(value)
    if magnitude >= 1e5 or (magnitude and magnitude < 0.01):
        return f"{value:.{digits - 1}g}"
    decimals = max(digits - 1 - (int(math.floor(math.log10(magnitude))) if magnitude else 0), 0)
    return f"{value:.{min(decimals, digits - 1)}f}"


def format_rate(steps_per_s):
    """Environment steps per second: ``18.3M steps/s``, ``20.0k steps/s``, ``512 steps/s``."""
    if steps_per_s is None or not math.isfinite(steps_per_s):
        return None
    if steps_per_s >= 1e6:
        return f"{steps_per_s / 1e6:.1f}M steps/s"
    if steps_per_s >= 1e3:
        return f"{steps_per_s / 1e3:.1f}k steps/s"
    return f"{steps_per_s:.0f} steps/s"


def return_meaning(algo, estimator="sampled"):
    """What the training return on the progress line measures for ``algo``: a short phrase."""
    if algo in ("in-context", "rl2"):
        return "trial return"
    if algo == "multitask":
        return "return"
    if algo == "reptile" and estimator != "exact":
        return "train return before adaptation"  # Reptile's sampled inner path measures no return after it
    return "train return after adaptation"


def legend(algo, *, estimator="sampled", inner_steps=1, eval_tasks=None, eval_every=None,
           eval_episodes=None):
    """The one-time line explaining the progress line's two returns."""
    noisy = "noisy, " if estimator != "exact" or algo in ("in-context", "rl2") else ""
    if algo in ("in-context", "rl2"):
        train = f"train = trial return (total reward of a trial; {noisy}mean over the meta-batch)"
        held = "held-out = trial return on held-out tasks"
    else:
        steps = f"{inner_steps} adaptation step{'s' if inner_steps != 1 else ''}"
        if algo == "multitask":
            train = f"train = return of the shared policy, no adaptation ({noisy}mean over the meta-batch)"
        elif algo == "reptile" and estimator != "exact":
            train = f"train = train return before adaptation ({noisy}mean over the meta-batch)"
        else:
            train = f"train = train return after {steps} ({noisy}mean over the meta-batch)"
        measured = (f"return of {eval_episodes} episodes per task" if eval_episodes
                    else "exact return")
        held = f"held-out = {measured} on held-out tasks after {steps}"
    tasks = f" over {eval_tasks} tasks" if eval_tasks else ""
    every = f", every {eval_every} iterations" if eval_every else ""
    return f"{train}; {held}, mean ± 95% CI{tasks}{every}"


class Progress:
    """A live progress line on a terminal, plain periodic lines otherwise.

    ``total``: the iteration the run stops at; ``start``: the iteration it starts from (a resumed
    run), the ETA counts only the iterations of this session.  ``time_budget`` (seconds, 0: none)
    bounds the ETA.  ``algo``, ``estimator``, ``inner_steps``, ``eval_tasks`` and ``eval_every``
    word the legend.  ``clock``: seconds, monotonic (tests pass a fake one).  ``min_interval``:
    the least seconds between two redraws of the terminal line (evaluations and the last
    iteration are always drawn).
    """

    def __init__(self, total, stream=None, every=50, *, start=0, algo="maml", estimator="sampled",
                 inner_steps=1, eval_tasks=None, eval_every=None, time_budget=0.0,
                 clock=time.perf_counter, min_interval=0.1, eval_episodes=None):
        self.stream = stream if stream is not None else sys.stderr
        if not callable(getattr(self.stream, "write", None)):
            raise TypeError(f"stream must be a text stream with write(), got {type(self.stream).__name__}")
        self.tty = bool(getattr(self.stream, "isatty", None) and self.stream.isatty())
        self.total = _validate.positive_int(total, "total", minimum=0)
        self.every = _validate.positive_int(every, "every")
        self.start = _validate.positive_int(start, "start", minimum=0)
        _validate.finite_float(time_budget, "time_budget", low=0.0)
        _validate.finite_float(min_interval, "min_interval", low=0.0)
        if not callable(clock):
            raise TypeError(f"clock must be callable (seconds, e.g. time.perf_counter), got {type(clock).__name__}")
        self.algo, self.estimator = algo, estimator
        self.time_budget = float(time_budget or 0.0)
        self.clock, self.min_interval = clock, float(min_interval)
        self.t0 = clock()
        self.iteration = self.start
        self.train_return = None
        self.eval_mean = self.eval_ci95 = self.eval_iteration = None
        self.steps_per_s = None
        self._drawn_at = None      # clock() of the last terminal redraw
        self._drawn_len = 0        # characters of the line now on the terminal
        self._closed = False
        self.pm = "±" if _encodes(self.stream, "±") else "+-"
        self._legend = legend(algo, estimator=estimator, inner_steps=inner_steps, eval_tasks=eval_tasks,
                              eval_every=eval_every, eval_episodes=eval_episodes).replace("±", self.pm)
        self._legend_written = False

    @classmethod
    def for_config(cls, config, stream=None, start=0, **kwargs):
        """The display of a run of ``config`` (a :class:`~metarl_fast.trainer.TrainConfig`)
        starting at iteration ``start``."""
        return cls(config.iterations, stream, start=start, algo=config.algo, estimator=config.estimator,
                   inner_steps=config.inner_steps, eval_tasks=config.eval_tasks,
                   eval_every=config.eval_every, time_budget=config.time_budget,
                   eval_episodes=config.eval_episodes if config.continuous else None, **kwargs)

    # -- state --
    def elapsed(self):
        return self.clock() - self.t0

    def eta(self):
        """``(seconds left or None, whether the time budget is what bounds it)``."""
        elapsed = self.elapsed()
        done = self.iteration - self.start
        by_rate = None
        if done > 0 and elapsed > 0:
            by_rate = max(self.total - self.iteration, 0) * elapsed / done
        if self.time_budget > 0:
            by_budget = max(self.time_budget - elapsed, 0.0)
            if by_rate is None or by_budget < by_rate:
                return by_budget, True
        return by_rate, False

    def fraction(self):
        """Completed fraction of the run in [0, 1] (the larger of iterations and time budget)."""
        f = self.iteration / self.total if self.total > 0 else 1.0
        if self.time_budget > 0:
            f = max(f, self.elapsed() / self.time_budget)
        return min(max(f, 0.0), 1.0)

    # -- output --
    def write_legend(self):
        """The legend line (once), wrapped to the terminal's width on a terminal."""
        if self._legend_written:
            return
        self._legend_written = True
        if self.tty:
            self._clear_line()
            room = self._columns() - 1
            if room < 20:  # too narrow to be read: the line alone
                return
            text = "\n".join(textwrap.wrap(self._legend + " (narrow terminals: tr, ho)", room))
        else:
            text = self._legend
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, iteration, train_return, steps_per_s=None, *, eval_mean=None, eval_ci95=None):
        """Iteration ``iteration`` is done: its training return (float or None), throughput
        (environment steps per second or None) and, when it evaluated on the held-out tasks,
        ``eval_mean`` and ``eval_ci95``."""
        self.write_legend()
        self.iteration = int(iteration)
        self.train_return = None if train_return is None else float(train_return)
        self.steps_per_s = steps_per_s
        evaluated = eval_mean is not None
        if evaluated:
            self.eval_mean = float(eval_mean)
            self.eval_ci95 = None if eval_ci95 is None else float(eval_ci95)
            self.eval_iteration = self.iteration
        last = self.iteration >= self.total
        if self.tty:
            now = self.clock()
            if evaluated or last or self._drawn_at is None or now - self._drawn_at >= self.min_interval:
                self._drawn_at = now
                self._draw(self.render(self._columns()))
        elif evaluated or last or self.iteration % self.every == 0:
            self.stream.write(self.plain_line() + "\n")
            self.stream.flush()

    def close(self, stopped_by=None):
        """The finish line: where the run stopped and after how long (``stopped_by``: the reason,
        e.g. ``"iterations"``, ``"time budget"``, ``"target"``, ``"interrupt"``; None when the run
        failed)."""
        if self._closed:
            return
        self._closed = True
        if self.iteration == self.start and not self._legend_written and stopped_by is None:
            return  # nothing was shown
        what = {None: "stopped", "interrupt": "interrupted"}.get(stopped_by, "done")
        why = f" (stopped by {stopped_by})" if stopped_by not in (None, "interrupt") else ""
        took = format_duration(self.elapsed())
        held = held_short = ""
        if self.eval_mean is not None:
            held = (f", held-out {format_return(self.eval_mean)} {self.pm} {format_return(self.eval_ci95)}"
                    f" at iteration {self.eval_iteration}")
            held_short = (f", ho {format_return(self.eval_mean, True)}"
                          f"{'' if self.eval_ci95 is None else self.pm + _two_digits(self.eval_ci95)}")
        text = f"{what}: {self.iteration}/{self.total} iterations in {took}{why}{held}"
        if self.tty:
            room = max(self._columns() - 1, 1)
            for candidate in (text, f"{what}: {self.iteration}/{self.total} in {took}{held_short}",
                              f"{what}: {self.iteration}/{self.total} in {took}"):
                if len(candidate) <= room:
                    break
            self._draw(candidate[:room])
            self.stream.write("\n")
            self._drawn_len = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def plain_line(self):
        """The line of a non-terminal stream (no width limit, every field spelled out)."""
        eta, budget = self.eta()
        parts = [f"iter {self.iteration}/{self.total}",
                 f"train {format_return(self.train_return)}",
                 "held-out " + (f"{format_return(self.eval_mean)} {self.pm} {format_return(self.eval_ci95)} "
                                f"(iter {self.eval_iteration})" if self.eval_mean is not None else "--"),
                 f"elapsed {format_duration(self.elapsed())}",
                 f"ETA {format_duration(eta)}" + (" (time budget)" if budget else "")]
        if format_rate(self.steps_per_s):
            parts.append(format_rate(self.steps_per_s))
        return "  ".join(parts)

    def render(self, columns):
        """The terminal line for a terminal of ``columns`` columns: at most ``columns - 1``
        characters (the last column is left free: some terminals wrap a line that fills it)."""
        room = max(columns - 1, 1)
        eta, budget = self.eta()
        eta_text = format_duration(eta)
        count = f"{self.iteration}/{self.total}"
        held_long, held_short = "held-out --", "ho --"
        if self.eval_mean is not None:
            ci = "" if self.eval_ci95 is None else f"{self.pm}{format_return(self.eval_ci95)}"
            ci_short = "" if self.eval_ci95 is None else f"{self.pm}{_two_digits(self.eval_ci95)}"
            held_long = f"held-out {format_return(self.eval_mean)}{ci} @{self.eval_iteration}"
            held_short = f"ho {format_return(self.eval_mean, True)}{ci_short}"
        train_long = f"train {format_return(self.train_return)}"
        train_short = f"tr {format_return(self.train_return, True)}"
        rate = format_rate(self.steps_per_s)
        elapsed = f"{format_duration(self.elapsed())} elapsed"
        eta_long = f"ETA {eta_text}" + (" (time budget)" if budget else "")
        eta_short = f"ETA {eta_text}"
        # from the richest line to the barest: the first whose fields fit beside a bar of its
        # least width wins (the rich lines want a readable bar, the bare ones keep their fields)
        variants = [
            (MIN_BAR_RICH, [count, train_long, held_long, elapsed, eta_long, rate]),
            (MIN_BAR_RICH, [count, train_long, held_long, elapsed, eta_long]),
            (MIN_BAR_RICH, [count, train_long, held_long, eta_long]),
            (MIN_BAR_RICH, [count, train_long, held_long.rsplit(" @", 1)[0], eta_short]),
            (MIN_BAR, [count, train_short, held_short, eta_short]),
            (MIN_BAR, [count, held_short, eta_short]),
            (MIN_BAR, [count, held_short]),
            (MIN_BAR, [count]),
        ]
        for least, fields in variants:
            text = " ".join(f for f in fields if f)
            if len(text) + 3 + least <= room:
                inner = min(PREFERRED_BAR, room - len(text) - 3)
                return f"{self._bar(inner)} {text}"
        inner = room - len(text) - 3  # the barest text: the bar shrinks, then goes
        if inner >= 3:
            return f"{self._bar(inner)} {text}"
        return text[:room]

    def _bar(self, inner):
        filled = int(inner * self.fraction())
        return "[" + "#" * filled + "." * (inner - filled) + "]"

    def _columns(self):
        return terminal_width(self.stream)

    def _draw(self, line):
        # blanks over the rest of a longer previous line, never past the terminal's width
        pad = max(min(self._drawn_len, self._columns() - 1) - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._drawn_len = len(line)

    def _clear_line(self):
        if self._drawn_len:
            self.stream.write("\r" + " " * min(self._drawn_len, self._columns() - 1) + "\r")
            self._drawn_len = 0


def _two_digits(value):
    """A confidence half-width with 2 significant digits (the narrow line's)."""
    if not math.isfinite(value) or abs(value) >= 100:
        return format_return(value, short=True)
    return f"{value:.2g}"


def _encodes(stream, text):
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    return True
