"""Issue 14: every public rng argument accepts a numpy Generator, an int seed or a SeedSequence
(``default_rng(seed)``: the same seed, the same draws), and nothing else; no global state."""
import numpy as np
import pytest

import metarl_fast as mf

from hostile_sweep import _entries


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, dict):  # (wall-clock timings aside)
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a if "time" not in k)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and np.isnan(a):
        return np.isnan(b)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return type(a) is type(b)
    return a == b


def _rng_entries():
    for name, make in _entries().items():
        _, args, kwargs, _ = make()
        for i, value in enumerate(args):
            if isinstance(value, np.random.Generator):
                yield name, make, i


@pytest.mark.parametrize("name,make,slot", list(_rng_entries()), ids=lambda v: v if isinstance(v, str) else "")
def test_an_int_seed_or_a_seed_sequence_is_the_generator_they_seed(backend, name, make, slot):
    results = []
    for seed in (np.random.default_rng(7), 7, np.random.SeedSequence(7), np.int64(7)):
        call, args, kwargs, _ = make()
        args = list(args)
        args[slot] = seed
        results.append(call(*args, **kwargs))
    for other in results[1:]:
        assert _same(results[0], other), name


@pytest.mark.parametrize("bad,error,pattern", [
    (-1, ValueError, "rng must be a non-negative int seed, got -1"),
    (1.5, TypeError, "rng must be a numpy.random.Generator, an int seed or a SeedSequence, got float"),
    (np.random.RandomState(0), TypeError, "got RandomState"),
    (True, TypeError, "got bool"),
])
def test_anything_else_is_named(backend, bad, error, pattern):
    logits = np.zeros((2, 3))
    with pytest.raises(error, match=pattern):
        mf.sample_actions(logits, bad)
    with pytest.raises(error, match=pattern):
        mf.MetaLearner(mf.TabularSoftmaxPolicy(9, 5), "fomaml").meta_step(mf.GridNavigation(size=3).sample(2, 0), bad)


def test_no_global_state():
    """The global NumPy generator is neither read nor advanced by the engine."""
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mf.rollout(mf.TabularSoftmaxPolicy(4, 2), mf.Chain().sample(3, 0), 2, 0)
    mf.MetaLearner(mf.TabularSoftmaxPolicy(4, 2), "maml", episodes_per_task=2).meta_step(mf.Chain().sample(2, 1), 3)
    assert np.array_equal(np.random.get_state()[1], before)
