"""Cost against the size of the work: time and peak memory at growing sizes, and the slope of
log(time) against log(size) fitted by least squares (1: linear; the issue-21 curves).

    python benches/scaling.py            # every curve (a few minutes), a Markdown table on stdout
    python benches/scaling.py --quick    # tiny sizes: checks that it runs (bench_scaling.py, CI)

Each (curve, size) point runs in a fresh child process, the sizes of a curve interleaved over
``--repeats`` rounds, so that no point inherits another's heap or caches; a point's time is the
median over its rounds of the best of ``--calls`` calls after a warm-up call, and its memory the
child's peak resident set (``ru_maxrss``) above the same child's just before the first call.
The compiled backend; the machine and date are the reader's to note.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np

# name -> (what the size is, sizes, quick sizes, unit the time is divided by)
CURVES = {
    "rollout GridNavigation(7), 10 episodes, reused outputs": ("tasks T", [64, 512, 4096, 32768], [8, 16], "step"),
    "rollout TabularMDPs(S, 5), 64 tasks x 10 episodes, reused outputs": ("states S", [10, 100, 300, 1000], [5, 40], "step"),
    "TabularMDPs(S, 5).sample(16)": ("states S", [10, 100, 300, 1000], [5, 40], "call"),
    "TabularMDPs(1000, 5).sample(T)": ("tasks T", [8, 16, 32, 64], [1, 2], "task"),
    "MAML meta-iteration, GridNavigation(7), 20 episodes": ("tasks", [20, 80, 320, 1280], [2, 4], "task"),
    "GridNavigation(size).sample(20)": ("size", [7, 15, 30, 60], [3, 4], "call"),
    "bayes_optimal_value(2, n) (not cached)": ("pulls n", [15, 30, 60, 120], [5, 10], "call"),
}

CHILD = r"""
import json, os, resource, sys, time
import numpy as np
import metarl_fast as mf

name, size, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
if name.startswith("rollout GridNavigation"):
    batch = mf.GridNavigation(size=7).sample(size, 0)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    ws = mf.RolloutWorkspace(size, 10, batch.horizon)
    work = lambda: mf.rollout(policy, batch, 10, rng, out=ws).n_steps
elif name.startswith("rollout TabularMDPs"):
    batch = mf.TabularMDPs(n_states=size, n_actions=5).sample(64, 0)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    ws = mf.RolloutWorkspace(64, 10, batch.horizon)
    work = lambda: mf.rollout(policy, batch, 10, rng, out=ws).n_steps
elif name.startswith("TabularMDPs(1000"):
    # quick mode (CI): 40 states, enough for wide rows with guide tables
    dist = mf.TabularMDPs(n_states=40 if os.environ.get("SCALING_QUICK") else 1000, n_actions=5)
    work = lambda: (dist.sample(size, rng).tables, size)[1]
elif name.startswith("TabularMDPs"):
    dist = mf.TabularMDPs(n_states=size, n_actions=5)
    work = lambda: (dist.sample(16, rng).tables, 1)[1]
elif name.startswith("MAML"):
    batch = mf.GridNavigation(size=7).sample(size, 0)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    learner = mf.MAML(policy, episodes_per_task=20)
    def work():
        policy.params[:] = 0.0  # the same work every call
        learner.meta_step(batch, rng)
        return size
elif name.startswith("GridNavigation"):
    dist = mf.GridNavigation(size=size)
    work = lambda: (dist.sample(20, rng).tables, 1)[1]
else:
    from metarl_fast import baselines

    def work():  # the cached value cleared: every call computes it
        baselines._bayes_optimal_value.cache_clear()
        return (mf.bayes_optimal_value(2, size), 1)[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
units = work()  # warm-up: tables, pages, workspaces
best = float("inf")
for _ in range(calls):
    t = time.perf_counter()
    units = work()
    best = min(best, time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": best, "units": units, "peak_mib": (peak - before) / 1024}))
"""


def measure(name, size, calls, quick=False):
    env = {**os.environ, "METARL_FAST_BACKEND": os.environ.get("METARL_FAST_BACKEND", "cython")}
    if quick:
        env["SCALING_QUICK"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, name, str(size), str(calls)], capture_output=True,
                          text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} at {size}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(sizes, values):
    """Least-squares slope of log(values) against log(sizes)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0])


def run(quick=False, repeats=3, calls=3):
    rows = []
    for name, (what, sizes, quick_sizes, unit) in CURVES.items():
        sizes = quick_sizes if quick else sizes
        points = {size: [] for size in sizes}
        for _ in range(repeats):  # sizes interleaved
            for size in sizes:
                points[size].append(measure(name, size, calls, quick))
        seconds = [float(np.median([p["seconds"] for p in points[s]])) for s in sizes]
        per_unit = [sec / max(points[s][0]["units"], 1) for sec, s in zip(seconds, sizes)]
        peak = [max(p["peak_mib"] for p in points[s]) for s in sizes]
        rows.append({"curve": name, "size": what, "sizes": sizes, "seconds": seconds, "unit": unit,
                     "per_unit": per_unit, "peak_mib": peak, "time_slope": slope(sizes, seconds),
                     "per_unit_slope": slope(sizes, per_unit)})
    return rows


def _time(seconds):
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def markdown(rows):
    lines = ["| curve | sizes | time per call | per unit | peak memory (MiB) | slope: time / per unit |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['curve']} | {r['size']} = {', '.join(map(str, r['sizes']))} | "
                     f"{' / '.join(_time(s) for s in r['seconds'])} | "
                     f"{' / '.join(_time(s) for s in r['per_unit'])} per {r['unit']} | "
                     f"{' / '.join(f'{m:.0f}' for m in r['peak_mib'])} | "
                     f"{r['time_slope']:.2f} / {r['per_unit_slope']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.quick, args.repeats, args.calls)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
