"""Standard normal fills: the compiled ``_core.normal`` fill vs NumPy's ``Generator.standard_normal``
(its twin: the same values bit for bit), side by side.

    pytest benches/bench_normal.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=normal.json && python benches/ratios.py normal.json
"""
import numpy as np
import pytest

from conftest import grid

normal = pytest.importorskip("metarl_fast._core.normal")

SIZES = grid([1024, 65536, 1 << 20], [1024])


@pytest.mark.parametrize("impl", ["cython", "numpy"])
@pytest.mark.parametrize("n", SIZES)
def test_standard_normal_fill(benchmark, impl, n):
    rng = np.random.default_rng(0)
    out = np.empty(n)
    benchmark.group = f"standard_normal fill n={n}"
    benchmark.extra_info.update(rows=n, backend=impl)
    if impl == "cython":
        benchmark(normal.fill, rng.bit_generator, out)
    else:
        benchmark(rng.standard_normal, out=out)
    assert np.isfinite(out).all()
