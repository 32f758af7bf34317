"""Benchmark helpers: both backends side by side, grouped so the Cython/NumPy ratio reads off.

``METARL_FAST_BENCH_QUICK=1`` (set by .ci/run, together with --benchmark-disable) shrinks the
parameter grids so the suite only checks that every benchmark still runs;
``METARL_FAST_BENCH_RETAIN=1`` runs the suite with freed memory kept in the process (see below).
"""
import os

import pytest

import metarl_fast as mf

QUICK = os.environ.get("METARL_FAST_BENCH_QUICK", "") not in ("", "0")
# METARL_FAST_BENCH_RETAIN=1: the whole run with metarl_fast.memory.retain_freed_memory() (as the
# metarl-fast command runs), so large per-call arrays do not page-fault; default: the allocator a
# library user gets
if os.environ.get("METARL_FAST_BENCH_RETAIN", "") not in ("", "0"):
    from metarl_fast.memory import retain_freed_memory

    retain_freed_memory()
BACKENDS = ["cython", "numpy"] if mf.is_available("cython") else ["numpy"]


def grid(full, quick):
    """The full parameter list, or the quick one in CI."""
    return quick if QUICK else full


@pytest.fixture(params=BACKENDS)
def backend(request):
    with mf.use_backend(request.param):
        yield request.param
