"""Print a Cython/NumPy table from a pytest-benchmark JSON file.

    python benches/ratios.py results.json

For every benchmark group holding both backends: the mean time of each, the time per row (or per
item, from ``extra_info['rows']``), and the speed-up of Cython over the NumPy reference.
"""
import json
import sys
from collections import defaultdict


def fmt_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def main(path):
    with open(path) as fh:
        data = json.load(fh)
    groups = defaultdict(dict)
    rows = {}
    for bench in data["benchmarks"]:
        backend = bench.get("extra_info", {}).get("backend") or bench["params"].get("backend")
        groups[bench["group"]][backend] = bench["stats"]["median"]
        rows[bench["group"]] = bench.get("extra_info", {}).get("rows")
    extra = sorted({b for times in groups.values() for b in times} - {"cython", "numpy"})
    head = "| group | cython | numpy reference | per item (cython) | speed-up vs reference |"
    head += "".join(f" {b} | speed-up vs {b} |" for b in extra)
    print(head)
    print("|---" * (5 + 2 * len(extra)) + "|")
    for group in sorted(groups):
        times = groups[group]
        cy, npy = times.get("cython"), times.get("numpy")
        per = fmt_time(cy / rows[group]) if cy and rows.get(group) else ""
        ratio = f"{npy / cy:.1f}x" if cy and npy else ""
        line = f"| {group} | {fmt_time(cy) if cy else ''} | {fmt_time(npy) if npy else ''} | {per} | {ratio} |"
        for b in extra:
            t = times.get(b)
            line += f" {fmt_time(t) if t else ''} | {f'{t / cy:.1f}x' if t and cy else ''} |"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1])
