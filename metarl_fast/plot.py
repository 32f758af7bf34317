"""PNG figures of a run directory (``metarl-fast plot RUN_DIR``).

Needs matplotlib (the optional ``plot`` extra: ``pip install "metarl_fast[plot]"``), imported
only here and only when a figure is drawn; figures are drawn on the Agg canvas (no display, no
global pyplot state).  What is drawn depends on the run's algorithm:

* MAML, FOMAML, Reptile, multi-task: ``learning_curve.png`` (the training return before and after
  adaptation per meta-iteration, faint, with its rolling mean; the held-out evaluations with
  their 95% confidence intervals) and ``adaptation_curve.png`` (the return after 0..K adaptation
  steps on the held-out tasks, the meta-learned initialisation against every baseline of
  ``eval.json``).
* in-context: ``learning_curve.png`` (the trial return) and ``comparison.png`` (the learner
  against every baseline of ``eval.json`` with 95% CIs, the Bayes-optimal value as the ceiling).

Every file is written atomically (a temporary file renamed over the target).
"""
import json
import os
import sys
import textwrap

import numpy as np

MISSING_MATPLOTLIB = 'plotting needs matplotlib: pip install "metarl_fast[plot]"'
LEARNER_SUFFIX = "(meta-learned)"
CEILING = "Bayes-optimal (exact, prior mean)"
DPI = 120

# every baseline the evaluations write, in the order they are drawn, with its own style
_STYLES = {
    "multi-task pre-trained": {"color": "tab:purple", "linestyle": "--", "marker": "D"},
    "from scratch": {"color": "tab:orange", "linestyle": "-.", "marker": "s"},
    "from scratch (REINFORCE)": {"color": "tab:orange", "linestyle": "-.", "marker": "s"},
    "posterior-greedy": {"color": "tab:brown", "linestyle": "--", "marker": "v"},
    "epsilon-greedy (0.1)": {"color": "tab:olive", "linestyle": "-.", "marker": "^"},
    "UCB1": {"color": "tab:cyan", "linestyle": ":", "marker": "P"},
    "Thompson sampling": {"color": "tab:pink", "linestyle": "--", "marker": "X"},
    "random policy": {"color": "0.35", "linestyle": ":", "marker": "x"},
    "random": {"color": "0.35", "linestyle": ":", "marker": "x"},
    "oracle (knows the MDP)": {"color": "tab:green", "linestyle": "--", "marker": "*"},
    CEILING: {"color": "tab:red", "linestyle": "--", "marker": "*"},
}
_LEARNER_STYLE = {"color": "tab:blue", "linestyle": "-", "marker": "o"}
_OTHER_STYLES = [{"color": c, "linestyle": ls, "marker": m} for c, ls, m in
                 (("tab:gray", "--", "h"), ("darkgoldenrod", ":", "<"), ("teal", "-.", ">"),
                  ("indigo", "--", "p"))]


def require_matplotlib():
    """The matplotlib module; ImportError with the install command when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None
    return matplotlib


class Run:
    """What a run directory holds, read back: ``name`` (the directory's name), ``path``,
    ``config`` (dict of ``config.toml``, empty without one), ``records`` (list of dicts, one per
    line of ``metrics.jsonl``), ``evaluation`` (dict of ``eval.json``, None before the run ends)."""

    def __init__(self, path, config, records, evaluation):
        self.path = path
        self.name = os.path.basename(os.path.abspath(path)) or path
        self.config, self.records, self.evaluation = config, records, evaluation

    def _setting(self, key, default):
        if key in self.config:
            return self.config[key]
        if self.evaluation is not None and key in self.evaluation:
            return self.evaluation[key]
        return default

    @property
    def algo(self):
        return self._setting("algo", "unknown algorithm")

    @property
    def tasks(self):
        return self._setting("tasks", "unknown tasks")

    @property
    def inner_steps(self):
        return int(self._setting("inner_steps", 1))

    @property
    def title(self):
        return f"{self.name} — {self.algo} on {self.tasks}"


def load_run(run_dir):
    """Read a run directory (see :class:`Run`); ValueError with one clear line when it is not
    one, or when its files are damaged."""
    path = os.fspath(run_dir)
    if not isinstance(path, str):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such run directory")
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory: give a run directory (the --out of metarl-fast train)")
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        runs = sorted(entry for entry in os.listdir(path)
                      if os.path.isfile(os.path.join(path, entry, "metrics.jsonl")))
        hint = f"; it holds the runs {', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}: plot each" if runs else ""
        raise ValueError(f"{path} is not a run directory (no metrics.jsonl){hint}")
    records = []
    with open(metrics_path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"{metrics_path}: line {number} is not a JSON record") from None
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int) \
                    or not isinstance(record.get("pre_return"), (int, float)):
                raise ValueError(f"{metrics_path}: line {number} is not a metrics record "
                                 f"(no iteration and pre_return)")
            records.append(record)
    if not records:
        raise ValueError(f"{metrics_path} holds no iterations yet: nothing to plot")
    config = {}
    config_path = os.path.join(path, "config.toml")
    if os.path.isfile(config_path):
        import tomllib

        try:
            with open(config_path, "rb") as fh:
                config = tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{config_path} is not valid TOML: {err}") from None
    evaluation = None
    eval_path = os.path.join(path, "eval.json")
    if os.path.isfile(eval_path):
        try:
            with open(eval_path) as fh:
                evaluation = json.load(fh)
        except ValueError:
            raise ValueError(f"{eval_path} is not valid JSON") from None
        if not isinstance(evaluation, dict) or not isinstance(evaluation.get("results"), dict):
            raise ValueError(f"{eval_path} is not an evaluation (no results)")
    return Run(path, config, records, evaluation)


def rolling_mean(values, window):
    """Centred rolling mean of ``values`` (1-D), ``window`` points wide (odd; shorter at the
    ends); NaN entries are left out of the means.  Returns float64 of the same length."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    half = window // 2
    valid = ~np.isnan(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(values.size)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, values.size)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def smoothing_window(n_points):
    """An odd window of about 5% of the points (1 below 30 points: nothing to smooth)."""
    if n_points < 30:
        return 1
    return 2 * (n_points // 40) + 1


def _style(name, index=0):
    if name.endswith(LEARNER_SUFFIX):
        return dict(_LEARNER_STYLE)
    if name in _STYLES:
        return dict(_STYLES[name])
    return dict(_OTHER_STYLES[index % len(_OTHER_STYLES)])


def _ordered(results):
    """Row names: the learner first, then the known baselines in their order, then the rest."""
    known = list(_STYLES)
    learner = [n for n in results if n.endswith(LEARNER_SUFFIX)]
    rest = [n for n in results if n not in learner]
    rest.sort(key=lambda n: (known.index(n) if n in known else len(known), n))
    return learner + rest


def _figure(width, height):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _integer_ticks(axis):
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def _legend_below(ax, ncol=2, order=None):
    # under the axes (savefig's tight bounding box keeps it): never over the data; in the order
    # of the labels in ``order`` (matplotlib lists the lines before the error bars)
    handles, labels = ax.get_legend_handles_labels()
    if order is not None:
        pairs = sorted(zip(handles, labels), key=lambda p: order.index(p[1]) if p[1] in order else len(order))
        handles, labels = [h for h, _ in pairs], [lab for _, lab in pairs]
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                  frameon=False, fontsize=8)


def learning_curve(run):
    """The learning curve of ``run`` (a :class:`Run`): a matplotlib Figure with one axes."""
    records = run.records
    its = np.array([r["iteration"] for r in records], dtype=np.int64)
    pre = np.array([r["pre_return"] for r in records], dtype=np.float64)
    post = np.array([np.nan if r.get("post_return") is None else r["post_return"] for r in records])
    in_context = run.algo in ("in-context", "rl2")
    k = run.inner_steps
    steps = f"{k} adaptation step{'s' if k != 1 else ''}"
    series = []  # (values, label, colour)
    if in_context:
        series.append((pre, "training tasks: trial return", "tab:blue"))
    elif run.algo == "multitask" or (np.all(np.isnan(post) | (post == pre)) and not np.all(np.isnan(post))):
        series.append((pre, "training tasks: return, no adaptation", "tab:blue"))
    else:
        series.append((pre, "training tasks: before adaptation", "tab:orange"))
        if not np.all(np.isnan(post)):
            series.append((post, f"training tasks: after {steps}", "tab:blue"))
    window = smoothing_window(its.size)
    fig = _figure(7.5, 4.4)
    ax = fig.add_subplot()
    marker = "." if its.size < 30 else None
    for values, label, colour in series:
        if window > 1:
            ax.plot(its, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(its, rolling_mean(values, window), color=colour, linewidth=2,
                    label=f"{label} (rolling mean of {window})")
        else:
            ax.plot(its, values, color=colour, linewidth=1.5, marker=marker, label=label)
    evals = [r for r in records if r.get("eval_return") is not None]
    if evals:
        what = "trial return" if in_context else f"after {steps}"
        ax.errorbar([r["iteration"] for r in evals], [r["eval_return"] for r in evals],
                    yerr=[r.get("eval_ci95") or 0.0 for r in evals], fmt="o", color="black",
                    markersize=5, capsize=3, elinewidth=1.2, zorder=3,
                    label=f"held-out tasks: {what} (mean ± 95% CI)")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("trial return (total reward of a trial)" if in_context else "return")
    faint = "; faint: every iteration" if window > 1 else ""
    ax.set_title(f"{run.title}\nlearning curve{faint}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return fig


def adaptation_curve(run):
    """Return after 0..K adaptation steps on the held-out tasks, the meta-learned initialisation
    against every baseline of ``eval.json`` (a matplotlib Figure with one axes).  Baselines
    without adaptation (random policy, oracle) are horizontal lines with their CI as a band."""
    evaluation = _need_evaluation(run)
    results = evaluation["results"]
    k = int(evaluation.get("inner_steps", run.inner_steps))
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    names = _ordered(results)
    curves = [n for n in names if "after_steps" in results[n]]
    for index, name in enumerate(names):
        row, style = results[name], _style(name, index)
        learner = name.endswith(LEARNER_SUFFIX)
        if "after_steps" in row:
            means = [s["mean"] for s in row["after_steps"]]
            cis = [s["ci95"] for s in row["after_steps"]]
            # a small sideways shift per curve, so that the error bars do not hide one another
            shift = 0.04 * (curves.index(name) - (len(curves) - 1) / 2)
            ax.errorbar(np.arange(len(means)) + shift, means, yerr=cis, capsize=3,
                        linewidth=2.5 if learner else 1.5, markersize=7 if learner else 6,
                        zorder=4 if learner else 3, label=name, **style)
        else:
            ax.axhline(row["mean"], color=style["color"], linestyle=style["linestyle"], linewidth=1.5,
                       label=name, zorder=2)
            if row.get("ci95"):
                ax.axhspan(row["mean"] - row["ci95"], row["mean"] + row["ci95"], color=style["color"],
                           alpha=0.12, linewidth=0, zorder=1)
    _integer_ticks(ax.xaxis)
    ax.set_xlim(-0.35, k + 0.35)
    ax.set_xlabel("adaptation steps on each held-out task (policy-gradient steps)")
    ax.set_ylabel("return on held-out tasks" + (" (Monte Carlo)" if evaluation.get("measured_by") == "monte carlo"
                                                 else " (exact)"))
    where = ""
    goals = evaluation.get("goals")
    if goals is not None:
        where = ("; test goals also trained on" if goals.get("test_goals_seen_in_training")
                 else "; test goals withheld from training")
    ax.set_title(f"{run.title}\nreturn after 0..{k} adaptation steps on {evaluation.get('n_tasks', '?')} "
                 f"held-out tasks (mean ± 95% CI){where}", fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=3, order=names)
    return fig


def comparison(run):
    """The in-context learner against every baseline of ``eval.json``: mean trial return with
    its 95% CI per method (ranked), the Bayes-optimal value, when present, as a horizontal line
    (a matplotlib Figure with one axes)."""
    evaluation = _need_evaluation(run)
    results = evaluation["results"]
    points = sorted((n for n in results if n != CEILING), key=lambda n: -results[n]["mean"])
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for x, name in enumerate(points):
        row, style = results[name], _style(name, x)
        learner = name.endswith(LEARNER_SUFFIX)
        ax.errorbar([x], [row["mean"]], yerr=[row["ci95"]], fmt=style["marker"], color=style["color"],
                    markersize=9 if learner else 7, capsize=4, elinewidth=2 if learner else 1.2,
                    zorder=3, label=name)
        ax.annotate(f"{row['mean']:.2f}±{row['ci95']:.2f}", (x, row["mean"] + row["ci95"]),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    if CEILING in results:
        ceiling = results[CEILING]["mean"]
        ax.axhline(ceiling, color=_STYLES[CEILING]["color"], linestyle="--", linewidth=1.5, zorder=2,
                   label=f"{CEILING}: {ceiling:.2f} (the ceiling)")
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels(["\n".join(textwrap.wrap(n, 14, break_long_words=False, break_on_hyphens=False)) for n in points], fontsize=8)
    for label, name in zip(ax.get_xticklabels(), points):
        if name.endswith(LEARNER_SUFFIX):
            label.set_fontweight("bold")
    ax.set_xlim(-0.6, len(points) - 0.4)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.06 * (high - low))  # room for the value above the top point
    trial = evaluation.get("trial_episodes")
    if trial:
        unit = f"a trial of {trial} episodes"
    else:
        horizon = _horizon(run) if run.tasks == "bandits" else None
        unit = f"a trial of {horizon} pulls" if horizon else "a trial"
    ax.set_ylabel(f"trial return\n(total reward of {unit})")
    ax.set_title(f"{run.title}\nheld-out trial return on {evaluation.get('n_tasks', '?')} tasks "
                 f"(mean ± 95% CI), ranked", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if CEILING in results:  # the points are named by the ticks: the legend names the line only
        handles, labels = ax.get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels) if lab.startswith(CEILING)]
        ax.legend(*zip(*keep), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=8)
    return fig


def _horizon(run):
    """The episode length of the run's tasks (None when config.toml cannot say)."""
    if run.config.get("horizon"):
        return int(run.config["horizon"])
    try:
        from metarl_fast.trainer import TrainConfig

        return int(TrainConfig.from_dict(run.config).distribution().sample(1, 0).horizon)
    except (ValueError, TypeError, KeyError, ImportError, OSError):
        return None


def _need_evaluation(run):
    if run.evaluation is None:
        raise ValueError(f"{run.path} has no eval.json (the run has not finished): no held-out comparison")
    return run.evaluation


def figures(run):
    """``{file name: Figure}`` of ``run`` (a :class:`Run`): the learning curve, plus the
    adaptation curve (gradient-based algorithms) or the comparison (in-context) when the run has
    an ``eval.json``."""
    out = {"learning_curve.png": learning_curve(run)}
    if run.evaluation is not None:
        if run.algo in ("in-context", "rl2") or not any("after_steps" in r for r in run.evaluation["results"].values()):
            out["comparison.png"] = comparison(run)
        else:
            out["adaptation_curve.png"] = adaptation_curve(run)
    return out


def save_figure(fig, path):
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file beside it, renamed)."""
    from metarl_fast.trainer import _write_atomic

    _write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight"), mode="wb")
    return path


def plot_run(run_dir, out_dir=None, *, log=None):
    """Draw the figures of the run in ``run_dir`` into ``out_dir`` (default: the run directory);
    returns the paths written.  A run without ``eval.json`` gets its learning curve only (a note
    goes to ``log``, default stderr)."""
    require_matplotlib()
    run = load_run(run_dir)
    target = run.path if out_dir is None else os.fspath(out_dir)
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"--out {target} is not a directory")
    os.makedirs(target, exist_ok=True)
    if run.evaluation is None:
        (log or sys.stderr).write(f"metarl-fast plot: {run.path} has no eval.json yet (an unfinished or "
                                  f"interrupted run): learning curve only\n")
    written = []
    for name, fig in figures(run).items():
        written.append(save_figure(fig, os.path.join(target, name)))
    return written
