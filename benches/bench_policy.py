"""Softmax policy kernels, Cython vs NumPy reference, B in {1, 16, 1024, 65536}, A in {2, 5, 16}.

    pytest benches/bench_policy.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=policy.json && python benches/ratios.py policy.json
"""
import numpy as np
import pytest

import metarl_fast as mf

from conftest import grid

SIZES = grid([(b, a) for b in (1, 16, 1024, 65536) for a in (2, 5, 16)], [(1, 5), (1024, 5)])
KERNELS = ["sample_actions", "softmax", "log_softmax", "entropy", "log_prob", "grad_log_prob"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_rows,n_actions", SIZES)
def test_policy_kernel(benchmark, backend, kernel, n_rows, n_actions):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_actions))
    actions = rng.integers(0, n_actions, size=n_rows)
    benchmark.group = f"{kernel} B={n_rows} A={n_actions}"
    benchmark.extra_info.update(rows=n_rows, backend=backend)
    fn = getattr(mf, kernel)
    if kernel == "sample_actions":
        out = np.empty(n_rows, dtype=np.int64)
        result = benchmark(fn, logits, rng, out)
    elif kernel in ("log_prob", "grad_log_prob"):
        result = benchmark(fn, logits, actions)
    else:
        result = benchmark(fn, logits)
    assert result.shape[0] == n_rows


MASKED_SIZES = grid([(1024, 5), (65536, 5), (65536, 16)], [(1024, 5)])


@pytest.mark.parametrize("n_rows,n_actions", MASKED_SIZES)
def test_sample_actions_masked(benchmark, backend, n_rows, n_actions):
    """Action masks: 30% of the logits are -inf (forbidden), which takes the per-row all--inf
    check that unmasked logits skip."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_actions))
    logits[rng.random(logits.shape) < 0.3] = -np.inf
    logits[:, 0] = 0.0  # every row keeps one allowed action
    out = np.empty(n_rows, dtype=np.int64)
    benchmark.group = f"sample_actions masked B={n_rows} A={n_actions}"
    benchmark.extra_info.update(rows=n_rows, backend=backend)
    result = benchmark(mf.sample_actions, logits, rng, out)
    assert result.shape[0] == n_rows


def _idiomatic_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _idiomatic_sample(logits, rng):
    cdf = np.cumsum(_idiomatic_softmax(logits), axis=1)
    u = rng.random(logits.shape[0])[:, None]
    return np.minimum((u >= cdf).sum(axis=1), logits.shape[1] - 1)


@pytest.mark.parametrize("kernel", ["sample_actions", "softmax"])
@pytest.mark.parametrize("n_rows,n_actions", SIZES)
def test_policy_kernel_idiomatic_numpy(benchmark, kernel, n_rows, n_actions):
    """What a user would write in plain NumPy (np.exp, no validation): a second yardstick beside
    the reference, whose exact, validated exponential costs more than np.exp."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_actions))
    benchmark.group = f"{kernel} B={n_rows} A={n_actions}"
    benchmark.extra_info.update(rows=n_rows, backend="idiomatic")
    if kernel == "sample_actions":
        result = benchmark(_idiomatic_sample, logits, rng)
    else:
        result = benchmark(_idiomatic_softmax, logits)
    assert result.shape[0] == n_rows


# B=1 from an agent loop: the per-call cost, timed in a Python loop of LOOP calls (per item = one
# call) so that pytest-benchmark's own call overhead is not counted; a bare ``rng.random()`` (one
# Python-to-C call drawing the same uniform) is the floor beside it.
LOOP = 1000


def _loop(fn, *args):
    calls = range(LOOP)

    def run():
        for _ in calls:
            fn(*args)
    return run


@pytest.mark.parametrize("n_actions", grid([2, 5, 16], [5]))
def test_sample_actions_b1_loop(benchmark, backend, n_actions):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, n_actions))
    out = np.empty(1, dtype=np.int64)
    benchmark.group = f"sample_actions B=1 A={n_actions} (loop of {LOOP} calls, out= given)"
    benchmark.extra_info.update(rows=LOOP, backend=backend)
    sample = mf.sample_actions
    benchmark(_loop(sample, logits, rng, out))
    assert 0 <= out[0] < n_actions


@pytest.mark.parametrize("n_actions", grid([2, 5, 16], [5]))
def test_sample_actions_b1_loop_floor(benchmark, n_actions):
    rng = np.random.default_rng(0)
    benchmark.group = f"sample_actions B=1 A={n_actions} (loop of {LOOP} calls, out= given)"
    benchmark.extra_info.update(rows=LOOP, backend="bare-rng.random()")
    benchmark(_loop(rng.random))
