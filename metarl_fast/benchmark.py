"""The standard throughput suite behind ``metarl-fast bench``: Cython vs NumPy in one run.

The pytest-benchmark suites in ``benches/`` are the detailed measurements; this is the quick
overview a user runs on their own machine.  Each case is timed as the best of several repeats.
"""
import time

import numpy as np

import metarl_fast as mf


def _best_time(fn, repeats, min_time=0.05):
    """Best per-call seconds over ``repeats`` rounds (each round runs ``fn`` for >= min_time)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best


def _cases(quick):
    from metarl_fast import meta
    from metarl_fast.rollout import rollout
    from metarl_fast.tasks import GridNavigation, TabularMDPs

    rows = 1024 if quick else 65536
    logits = np.random.default_rng(0).standard_normal((rows, 5))
    rng = np.random.default_rng(1)
    yield (f"sample_actions B={rows} A=5", rows, "rows",
           lambda: mf.sample_actions(logits, rng))
    n_tasks = 64 if quick else 1024
    mdps = TabularMDPs().sample(n_tasks, 0)
    policy = mf.TabularSoftmaxPolicy(10, 5)
    steps = n_tasks * 10
    yield (f"rollout TabularMDPs {n_tasks} tasks x 1 episode", steps, "env steps",
           lambda: rollout(policy, mdps, 1, rng))
    grid = GridNavigation(size=5)
    tasks = grid.sample(20, 0)

    def meta_iteration():
        learner = meta.MAML(mf.TabularSoftmaxPolicy(25, 5), inner_lr=1.0, episodes_per_task=20)
        learner.meta_step(tasks, np.random.default_rng(2))

    yield "MAML meta-iteration GridNavigation(5) 20 tasks x 20 episodes", 1, "meta-iterations", meta_iteration


def run_bench(quick=False):
    """Run the suite on both backends; returns a list of dicts (one per case)."""
    backends = [b for b in mf.BACKENDS if mf.is_available(b)]
    repeats = 2 if quick else 5
    results = []
    previous = mf.get_backend()
    try:
        for name, items, unit, _ in _cases(quick):
            results.append({"case": name, "items_per_call": items, "unit": unit, "seconds": {}})
        for backend in backends:
            mf.set_backend(backend)
            for result, (_, _, _, fn) in zip(results, _cases(quick)):
                result["seconds"][backend] = _best_time(fn, repeats, 0.02 if quick else 0.2)
    finally:
        mf.set_backend(previous)
    for r in results:
        s = r["seconds"]
        r["per_second"] = {b: r["items_per_call"] / t for b, t in s.items()}
        if "cython" in s and "numpy" in s:
            r["speedup_cython_over_numpy"] = s["numpy"] / s["cython"]
    return results


def format_bench(results):
    lines = [f"{'case':<62} {'cython /s':>12} {'numpy /s':>12} {'speed-up':>9}"]
    for r in results:
        ps = r["per_second"]
        cy = f"{ps['cython']:.3g}" if "cython" in ps else "-"
        npy = f"{ps['numpy']:.3g}" if "numpy" in ps else "-"
        ratio = f"{r['speedup_cython_over_numpy']:.1f}x" if "speedup_cython_over_numpy" in r else "-"
        lines.append(f"{r['case']:<62} {cy:>12} {npy:>12} {ratio:>9}   ({r['unit']})")
    return "\n".join(lines)
