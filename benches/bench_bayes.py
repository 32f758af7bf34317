"""Exact Bayes-optimal bandit value (dynamic programming over belief states), Cython vs the NumPy
backend's pure-Python reference, same run.

    pytest benches/bench_bayes.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=bayes.json && python benches/ratios.py bayes.json

The backend's kernel is called directly (the public function caches its results); the reference
at (5, 25) takes seconds, so each case runs a fixed small number of rounds.
"""
import pytest

from metarl_fast import baselines as bl
from metarl_fast._backend import active

from conftest import grid

# (n_arms, n_pulls, known value to 3 decimals)
CASES = grid([(5, 10, 6.660), (2, 50, 31.997), (5, 25, 18.193)], [(5, 10, 6.660)])


@pytest.mark.parametrize("n_arms,n_pulls,value", CASES)
def test_bayes_optimal_value(benchmark, backend, n_arms, n_pulls, value):
    if backend == "numpy" and n_pulls >= 25 and not benchmark.disabled:
        rounds = 1
    else:
        rounds = 3
    benchmark.group = f"bayes_optimal_value arms={n_arms} pulls={n_pulls}"
    benchmark.extra_info.update(rows=bl._ref.bayes_state_count(n_arms, n_pulls, limit=10**9)[0], backend=backend)
    result = benchmark.pedantic(active.baselines.bayes_optimal_value, args=(n_arms, n_pulls), rounds=rounds,
                                iterations=1)
    assert round(result, 3) == value
