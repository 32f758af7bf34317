"""Issue 13: hostile input for every public entry point (tests/hostile_sweep.py), in a child
process per backend, so that a crash fails this test and not the run.  Every finding -- an
exception other than TypeError / ValueError / FloatingPointError / MemoryError, a message in
NumPy's or Cython's words or on several lines, a rejected call that changed a buffer, a policy or
an optimizer, a hostile call that runs for seconds -- is listed in the failure."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_entry_point_rejects_hostile_input_cleanly(backend):
    """The catalogue of hostile variants (None, every dtype, byte-swapped, strided, Fortran,
    misaligned, read-only, empty, extra/missing axes, NaN, infinities, extremes, huge ints, ...)
    for every argument, plus Hypothesis' random arrays for every array argument."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "hostile_sweep.py"), backend,
                           "--hypothesis", "25"],
                          capture_output=True, text=True, timeout=900, cwd=HERE)
    assert proc.returncode == 0, (f"the sweep died (exit {proc.returncode}; a negative code is a "
                                  f"signal: the process crashed)\n{proc.stderr[-3000:]}")
    findings = json.loads(proc.stdout)
    assert findings == [], json.dumps(findings[:40], indent=1)


@pytest.mark.parametrize("args", [
    ["--episodes", "100000000"],
    ["--replay", "--replay-capacity", "100000000000"],
    ["--meta-batch", "1000000000"],
    ["--tasks", "tabular-mdp", "--n-states", "100000"],
])
def test_the_cli_answers_requests_beyond_the_machine_in_one_line(tmp_path, args):
    """Class 8: an out-of-memory request is a user mistake: exit 2 and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "metarl_fast", "train", *args, "--iterations", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("metarl-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
