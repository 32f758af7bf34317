"""The largest tabular problem of issue 21, measured once: ``TabularMDPs(1000, 5).sample(256)`` and
its first rollout (time, CPU time in the process and in the kernel, peak memory), then the
rollout's cost per step at 256 tasks for 10 and 1000 states (10 episodes of 10 steps, reused
outputs), each in a fresh child process.

    python benches/big_tables.py            # needs ~12 GB of free memory, about a minute
    python benches/big_tables.py --tasks 8  # a small check of the script itself
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
import metarl_fast as mf

what, S, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
batch = mf.TabularMDPs(n_states=S, n_actions=5).sample(T, 0)
t1 = time.perf_counter()
policy = mf.TabularSoftmaxPolicy(S, 5)
ws = mf.RolloutWorkspace(T, 10, 10)
mf.rollout(policy, batch, 10, 1, out=ws)
t2 = time.perf_counter()
after = resource.getrusage(resource.RUSAGE_SELF)
best = float("inf")
for r in range(5):
    t = time.perf_counter()
    mf.rollout(policy, batch, 10, r, out=ws)
    best = min(best, time.perf_counter() - t)
print(json.dumps({"states": S, "tasks": T, "sample_s": t1 - t0, "first_rollout_s": t2 - t1,
                  "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
                  "peak_gib": after.ru_maxrss / 2**20, "ns_per_step": best / (T * 100) * 1e9}))
"""


def measure(states, tasks):
    env = {**os.environ, "METARL_FAST_BACKEND": os.environ.get("METARL_FAST_BACKEND", "cython")}
    proc = subprocess.run([sys.executable, "-c", CHILD, "big", str(states), str(tasks)], capture_output=True,
                          text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=256)
    args = parser.parse_args(argv)
    rows = [measure(10, args.tasks), measure(1000, args.tasks)]
    print("| states | tasks | sample | first rollout | CPU: process / kernel | peak memory | rollout per step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['states']} | {r['tasks']} | {r['sample_s']:.2f} s | {r['first_rollout_s'] * 1e3:.1f} ms | "
              f"{r['user_s']:.1f} s / {r['system_s']:.1f} s | {r['peak_gib']:.2f} GiB | {r['ns_per_step']:.1f} ns |")
    print(f"rollout per step, 1000 states against 10: {rows[1]['ns_per_step'] / rows[0]['ns_per_step']:.1f}x")
    return rows


if __name__ == "__main__":
    main()
