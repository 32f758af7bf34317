"""retain_freed_memory: large arrays allocated again and again stop page-faulting (glibc), in a
subprocess because it changes the whole process's allocator."""
import subprocess
import sys
import textwrap

import pytest

from metarl_fast.memory import retain_freed_memory

PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from metarl_fast.memory import retain_freed_memory

    def faults(rounds=40):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            arrays = [np.ones(2**17) for _ in range(8)]   # 8 x 1 MiB, written, then freed
            del arrays
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults(2)
    default = faults()
    applied = retain_freed_memory()
    faults(2)
    print(applied, default, faults())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_arrays_stop_page_faulting():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, default, retained = out.stdout.split()
    if applied != "True":
        pytest.skip("this C library has no glibc mallopt")
    # 40 rounds x 8 MiB = 80k pages: by default most are faulted in again; retained, almost none
    assert int(default) > 20000, default
    assert int(retained) < int(default) / 20, (default, retained)


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, True, "1"])
def test_max_bytes_checked(bad):
    with pytest.raises(ValueError, match="max_bytes must be an int"):
        retain_freed_memory(bad)


def test_importing_the_library_leaves_the_allocator_alone():
    code = ("import resource, numpy as np, metarl_fast\n"
            "def f():\n"
            "    b = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(30):\n"
            "        a = [np.ones(2**17) for _ in range(8)]; del a\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - b\n"
            "f(); print(f())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 15000  # importing the library leaves the allocator alone
