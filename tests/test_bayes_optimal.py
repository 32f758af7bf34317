"""The exact Bayes-optimal value: compiled level-by-level sweep against the memoised recursion
(reference twin), the up-front state count against the states the recursion memoises, and the
refusal of problems that are too large before any work."""
import time

import pytest

from metarl_fast import baselines as bl
from metarl_fast.reference import baselines as ref

from conftest import HAVE_CYTHON, needs_cython

if HAVE_CYTHON:
    from metarl_fast._core import baselines as core


@needs_cython
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_compiled_value_equals_the_reference_on_every_small_problem(k):
    for n in range(0, 11):
        assert core.bayes_optimal_value(k, n) == ref.bayes_optimal_value(k, n), (k, n)


@needs_cython
def test_compiled_value_with_more_arms_than_pulls():
    for k, n in [(6, 3), (9, 5), (12, 6)]:
        assert core.bayes_optimal_value(k, n) == ref.bayes_optimal_value(k, n), (k, n)


def memoised_states(k, n):
    cache = set()

    def visit(state, remaining):
        if remaining <= 1 or state in cache:
            return
        for i, (s, f) in enumerate(state):
            rest = state[:i] + state[i + 1:]
            visit(tuple(sorted(rest + ((s + 1, f),))), remaining - 1)
            visit(tuple(sorted(rest + ((s, f + 1),))), remaining - 1)
        cache.add(state)

    visit(((0, 0),) * k, n)
    return len(cache)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_state_count_is_the_number_of_memoised_beliefs(k):
    for n in range(0, 11):
        assert ref.bayes_state_count(k, n) == (memoised_states(k, n), True), (k, n)


def test_known_values_of_the_readme(backend):
    assert round(bl.bayes_optimal_value(5, 10), 3) == 6.660


@needs_cython
def test_known_value_five_arms_25_pulls_compiled(backend):
    if backend != "cython":
        pytest.skip("a million beliefs: compiled backend only")
    start = time.perf_counter()
    assert round(bl.bayes_optimal_value(5, 25), 3) == 18.193
    assert time.perf_counter() - start < 5.0


def test_large_problem_refused_up_front_with_the_exact_count(backend):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"bayes_optimal_value\(5, 50\) needs 469,941,901 belief "
                                         r"states, above the limit MAX_BAYES_STATES = 5,000,000"):
        bl.bayes_optimal_value(5, 50)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("k,n", [(100, 100), (2, 10**6), (1000, 3000)])
def test_huge_problems_refused_fast_with_a_lower_bound(backend, k, n):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs more than [0-9,]+ belief states"):
        bl.bayes_optimal_value(k, n)
    assert time.perf_counter() - start < 0.1


def test_bad_input_of_the_kernels():
    with pytest.raises(ValueError, match="n_pulls must be >= 0"):
        ref.bayes_optimal_value(2, -1)
    with pytest.raises(TypeError, match="n_pulls must be an int"):
        ref.bayes_state_count(2, 3.0)


def test_more_arms_than_pulls_change_nothing():
    """A fresh arm is always at hand with n_pulls arms, so the value with more arms is the same:
    checked against the unreduced recursion, and a huge arm count is answered, not allocated."""
    from metarl_fast.reference import baselines as ref

    for n_pulls in (1, 2, 3, 4):
        for n_arms in range(n_pulls, n_pulls + 3):
            assert ref.bayes_optimal_value(n_arms, n_pulls) == pytest.approx(
                ref.bayes_optimal_value(n_pulls, n_pulls), rel=1e-12)
    assert bl.bayes_optimal_value(2**70, 3) == pytest.approx(ref.bayes_optimal_value(3, 3), rel=1e-12)
