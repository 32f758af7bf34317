"""retain_freed_memory: large arrays allocated again and again stop page-faulting (glibc), in a
subprocess because it changes the whole process's allocator."""
import subprocess
import sys
import textwrap

import pytest

import metarl_fast as mf
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


def test_buffers_are_checked_against_what_the_process_can_still_fill(tmp_path, monkeypatch):
    """Issue 13, class 3: the zeroed storage is lazy, so a buffer is checked against the memory
    available (not the machine's total): one that fits the total but not what is available is
    refused before anything is allocated, naming its size."""
    from metarl_fast import memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:     100000 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    assert memory.available_bytes() <= 100000 * 1024
    with pytest.raises(MemoryError, match=r"capacity 10000000 needs .* more than this process can "
                                          r"still fill \(\d+ bytes available\)"):
        mf.ReplayBuffer(10_000_000)  # ~640 MB: far below the total, above what is available
    mf.ReplayBuffer(1000)


def test_the_address_space_limit_bounds_buffers():
    """A process whose address space is capped (ulimit -v) gets the MemoryError with the size, not
    NumPy's allocation failure or a kill."""
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))\n"
            "import metarl_fast as mf\n"
            "try:\n    mf.ReplayBuffer(50_000_000)\nexcept MemoryError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("refused a replay buffer of capacity 50000000"), out
