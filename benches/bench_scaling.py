"""benches/scaling.py (the cost-against-size curves of benches/README.md) runs, at tiny sizes:
every curve measured in child processes, with a time, a memory figure and a fitted slope."""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scaling  # noqa: E402


def test_scaling_curves_run_at_tiny_sizes():
    rows = scaling.run(quick=True, repeats=1, calls=1)
    assert [r["curve"] for r in rows] == list(scaling.CURVES)
    for r in rows:
        assert len(r["seconds"]) == len(r["sizes"]) and all(s > 0 for s in r["seconds"])
        assert math.isfinite(r["time_slope"]) and math.isfinite(r["per_unit_slope"])
    table = scaling.markdown(rows)
    assert table.count("\n") == len(rows) + 1


def test_slope_is_the_power_of_the_size():
    assert abs(scaling.slope([1, 2, 4, 8], [3, 12, 48, 192]) - 2.0) < 1e-12


def test_the_big_tables_script_runs_small():
    import big_tables

    rows = big_tables.main(["--tasks", "2"])
    assert [r["states"] for r in rows] == [10, 1000] and all(r["ns_per_step"] > 0 for r in rows)
