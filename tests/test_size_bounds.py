"""Class 3 of the hardening issue: one size argument cannot make the engine build an unbounded
table.  Every constructor and family ``sample`` refuses, naming its arguments, before allocating
anything (each case runs in a subprocess with a 2 GB address-space limit and a timeout, so a
regression fails one test instead of exhausting the machine)."""
import subprocess
import sys
import textwrap

import pytest

CASES = [
    ("mf.GridNavigation(size=10**6)", r"GridNavigation\(size=1000000\): one task's table"),
    ("mf.GridNavigation(size=100).sample(10**5, 0)", r"sample\(n=100000\) would build a table of n x 50,000"),
    ("mf.TabularMDPs(n_states=10**4)", r"TabularMDPs\(n_states=10000, n_actions=5\): one task's transition table"),
    ("mf.TabularMDPs().sample(10**7, 0)", r"sample\(n=10000000\)"),
    ("mf.Chain(n_states=10**9)", r"Chain\(n_states=1000000000, n_actions=2, slip=0.0\)"),
    ("mf.Chain(n_states=10**5, slip=0.1)", r"Chain\(n_states=100000, n_actions=2, slip=0.1\)"),
    ("mf.BernoulliBandits(n_arms=10**12).sample(1, 0)", r"BernoulliBandits\(n_arms=1000000000000\)"),
    ("mf.BernoulliBandits(n_arms=10**5).sample(10**4, 0)", r"sample\(n=10000\)"),
    ("mf.TabularSoftmaxPolicy(10**30, 2)", r"TabularSoftmaxPolicy\(n_states=10{30}, n_actions=2\)"),
    ("mf.LinearSoftmaxPolicy(2**20, 2**10)", r"LinearSoftmaxPolicy\(n_features=1048576, n_actions=1024\)"),
]


@pytest.mark.parametrize("expr,match", CASES, ids=[c[0] for c in CASES])
def test_a_huge_size_is_refused_before_allocating(expr, match):
    code = textwrap.dedent(f"""
        import resource, re, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        import metarl_fast as mf
        try:
            {expr}
        except ValueError as err:
            print("ValueError:", err)
            sys.exit(0 if "2**28" in str(err) or "of memory available" in str(err) else 3)
        sys.exit(4)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr[-2000:])
    import re
    assert re.search(match, out.stdout), out.stdout


def test_the_bounds_leave_room_for_real_work():
    import metarl_fast as mf

    mf.GridNavigation(size=64).sample(8, 0)            # 4096 states
    mf.TabularMDPs(n_states=200, n_actions=5).sample(4, 0)
    mf.TabularSoftmaxPolicy(10**6, 8)
