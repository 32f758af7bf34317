"""Mutation testing: plant each catalogued bug in a copy of the tree, run its tests, count the kills.

    python tests/mutation/run.py                    # every mutation, results in tests/mutation/RESULTS.md
    python tests/mutation/run.py --only replay      # the mutations whose id or file name contains "replay"
    python tests/mutation/run.py --list             # what the catalogue holds
    python tests/mutation/run.py --jobs 2 --no-record

The catalogue is ``tests/mutation/catalogue_*.py``: each defines ``MUTATIONS``, a list of
:class:`Mutation` (a realistic small bug: one exact snippet of one file and its mutated form, and
the tests that should catch it).  Each mutation runs in a fresh copy of the working tree (the
built extension modules included): a mutated ``.pyx`` or ``.h`` is rebuilt there first
(``METARL_FAST_ONLY``), a mutated reference module (``metarl_fast/reference/``) is tested with
``METARL_FAST_BACKEND=numpy`` so that only tests against mathematics -- not parity with the
Cython twin -- can kill it.  Outcomes: ``killed`` (a test failed, the process crashed, or it hung
past the timeout), ``survived``, ``equivalent`` (survived, and the catalogue explains why no test
can tell), ``invalid`` (the mutated code does not build or import).
"""
import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@dataclasses.dataclass
class Mutation:
    """One planted bug: ``find`` (must occur exactly once in ``path``) becomes ``replace``."""

    id: str
    path: str
    find: str
    replace: str
    tests: list
    note: str = ""
    equivalent: str = ""  # why no test can tell (then a survival is not a miss)

    @property
    def module(self):
        name = os.path.basename(self.path).split(".")[0]
        if self.path.startswith("metarl_fast/_core/"):
            return f"_core.{name}"
        if self.path.startswith("metarl_fast/reference/"):
            return f"reference.{name}"
        return name

    @property
    def needs_build(self):
        return self.path.endswith((".pyx", ".pxd", ".h"))

    def extension(self):
        """The kernel module to rebuild (headers: every module that includes them)."""
        if self.path.endswith(".pyx") or self.path.endswith(".pxd"):
            return os.path.basename(self.path).split(".")[0]
        header = os.path.basename(self.path)
        users = [os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(ROOT, "metarl_fast/_core/*.pyx"))
                 if header in open(p).read()]
        return ",".join(sorted(users))


def load_catalogue():
    mutations = []
    for path in sorted(glob.glob(os.path.join(HERE, "catalogue_*.py"))):
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        mutations.extend(module.MUTATIONS)
    ids = [m.id for m in mutations]
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise SystemExit(f"duplicate mutation ids: {sorted(duplicated)}")
    return mutations


def check(mutation):
    """The catalogue entry applies to the current tree: its snippet occurs exactly once."""
    text = open(os.path.join(ROOT, mutation.path)).read()
    count = text.count(mutation.find)
    if count != 1:
        return f"{mutation.id}: snippet found {count} times in {mutation.path}"
    if mutation.find == mutation.replace:
        return f"{mutation.id}: the mutation changes nothing"
    return None


def pristine_copy(dest):
    """The tracked and untracked-unignored files, plus the built extension modules."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    extra = glob.glob(os.path.join(ROOT, "metarl_fast/_core/*.so")) + [os.path.join(ROOT, "metarl_fast/_build_info.py")]
    for rel in [p for p in listed if p] + [os.path.relpath(p, ROOT) for p in extra]:
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def run_one(mutation, pristine, timeout):
    work = tempfile.mkdtemp(prefix="mut-")
    start = time.perf_counter()
    try:
        shutil.copytree(pristine, work, dirs_exist_ok=True)
        target = os.path.join(work, mutation.path)
        text = open(target).read()
        with open(target, "w") as fh:
            fh.write(text.replace(mutation.find, mutation.replace, 1))
        env = dict(os.environ, PYTHONPATH=work, PYTHONDONTWRITEBYTECODE="1")
        env.pop("METARL_FAST_BACKEND", None)
        if mutation.needs_build:
            build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work,
                                   env=dict(env, METARL_FAST_ONLY=mutation.extension()),
                                   capture_output=True, text=True, timeout=timeout)
            if build.returncode != 0:
                return "invalid", "does not build: " + build.stderr.strip().splitlines()[-1][:200], time.perf_counter() - start
        if mutation.path.startswith("metarl_fast/reference/"):
            env["METARL_FAST_BACKEND"] = "numpy"
        try:
            res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                  "-p", "no:randomly", *mutation.tests], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", f"hung past {timeout} s", time.perf_counter() - start
        tail = (res.stdout.strip().splitlines() or [""])[-1][:200]
        if res.returncode == 0:
            return ("equivalent" if mutation.equivalent else "survived"), tail, time.perf_counter() - start
        if res.returncode == 1 or res.returncode < 0:
            first = next((line for line in res.stdout.splitlines() if line.startswith("FAILED")), tail)
            return "killed", first[:200], time.perf_counter() - start
        return "invalid", f"pytest exit {res.returncode}: {tail}", time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(results):
    """Markdown: kill rate per module, then every mutation that was not killed."""
    by_module = {}
    for r in results:
        by_module.setdefault(r["module"], []).append(r)
    lines = ["| module | mutations | killed | equivalent | survived | invalid | kill rate |",
             "|---|---|---|---|---|---|---|"]
    total = {"n": 0, "killed": 0, "equivalent": 0, "survived": 0, "invalid": 0}
    for module in sorted(by_module):
        rows = by_module[module]
        c = {k: sum(r["outcome"] == k for r in rows) for k in ("killed", "equivalent", "survived", "invalid")}
        valid = c["killed"] + c["survived"]
        rate = f"{100 * c['killed'] / valid:.0f}%" if valid else "—"
        lines.append(f"| {module} | {len(rows)} | {c['killed']} | {c['equivalent']} | {c['survived']} | {c['invalid']} | {rate} |")
        total["n"] += len(rows)
        for k in c:
            total[k] += c[k]
    valid = total["killed"] + total["survived"]
    lines.append(f"| **all** | {total['n']} | {total['killed']} | {total['equivalent']} | {total['survived']} | "
                 f"{total['invalid']} | **{100 * total['killed'] / max(valid, 1):.1f}%** |")
    others = [r for r in results if r["outcome"] != "killed"]
    if others:
        lines += ["", "Not killed:", ""]
        lines += [f"- `{r['id']}` ({r['outcome']}): {r['detail']}" for r in others]
    return "\n".join(lines), total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the mutations whose id or file name contains this")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutation (a hang counts as killed)")
    parser.add_argument("--no-record", action="store_true",
                        help="do not merge the results into last_run.json and RESULTS.md")
    args = parser.parse_args(argv)
    mutations = load_catalogue()
    if args.only:
        mutations = [m for m in mutations if args.only in m.id or args.only in os.path.basename(m.path)]
    problems = [p for p in map(check, mutations) if p]
    if problems:
        raise SystemExit("catalogue does not apply to this tree:\n" + "\n".join(problems))
    if args.list:
        for m in mutations:
            print(f"{m.id:40s} {m.path}  ({' '.join(m.tests)})")
        return 0
    pristine = tempfile.mkdtemp(prefix="mut-pristine-")
    pristine_copy(pristine)
    from concurrent.futures import ThreadPoolExecutor

    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [(m, pool.submit(run_one, m, pristine, args.timeout)) for m in mutations]
        for m, future in futures:
            outcome, detail, seconds = future.result()
            results.append({"id": m.id, "module": m.module, "path": m.path, "outcome": outcome,
                            "detail": m.equivalent if outcome == "equivalent" else detail,
                            "seconds": round(seconds, 1)})
            print(f"{outcome:10s} {m.id:40s} {seconds:6.1f}s  {detail}", flush=True)
    shutil.rmtree(pristine, ignore_errors=True)
    table, total = summarise(results)
    print("\n" + table)
    if not args.no_record:
        record(results)
    return 0 if total["survived"] == 0 and total["invalid"] == 0 else 1


def record(results):
    """Merge ``results`` into last_run.json (by id; entries no longer catalogued are dropped) and
    rewrite RESULTS.md from it, so that a run of part of the catalogue updates its part."""
    path = os.path.join(HERE, "last_run.json")
    previous = json.load(open(path)) if os.path.exists(path) else []
    current = {m.id for m in load_catalogue()}
    merged = {r["id"]: r for r in previous if r["id"] in current}
    stamp = time.strftime("%Y-%m-%d")
    merged.update({r["id"]: dict(r, date=stamp) for r in results})
    rows = sorted(merged.values(), key=lambda r: (r["module"], r["id"]))
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=1)
    table, _ = summarise(rows)
    missing = sorted(current - set(merged))
    dates = sorted({r.get("date", "?") for r in rows})
    with open(os.path.join(HERE, "RESULTS.md"), "w") as fh:
        fh.write("# Mutation testing: the latest result of every catalogued mutation\n\n"
                 "Produced by `python tests/mutation/run.py` (see its docstring and tests/README.md); "
                 f"runs of {', '.join(dates)}.\n\n" + table + "\n")
        if missing:
            fh.write("\nNot run yet: " + ", ".join(f"`{m}`" for m in missing) + "\n")


if __name__ == "__main__":
    sys.exit(main())
