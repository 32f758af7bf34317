"""Fused policy-gradient + Adam step, Cython vs NumPy reference, grouped by policy and batch size.

Tabular (S=10, A=5) and linear (F=64, A=16) softmax policies, float64, batches of 32 (the seed's),
1024 and 65536: one call of :func:`metarl_fast.pg.policy_gradient_step` computes the gradient of
the batch, and applies an Adam step to ``policy.params`` in place.  Plus the plain gradient and the
return/GAE scans at 65536.

    pytest benches/bench_pg.py --benchmark-only --benchmark-columns=min,mean,median \
        --benchmark-json=pg.json && python benches/ratios.py pg.json
"""
import numpy as np
import pytest

from conftest import QUICK, grid
from metarl_fast import pg
from metarl_fast.optim import Adam
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy

BATCHES = grid([32, 1024, 65536], [32, 1024])
BIG = 1024 if QUICK else 65536


def _make(kind, batch, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "tabular":
        policy = TabularSoftmaxPolicy(10, 5, theta=rng.normal(size=(10, 5)))
        obs = rng.integers(0, 10, batch)
    else:
        policy = LinearSoftmaxPolicy(64, 16, W=0.1 * rng.normal(size=(64, 16)),
                                     b=rng.normal(size=16))
        obs = rng.normal(size=(batch, 64))
    actions = rng.integers(0, policy.n_actions, batch)
    advantages = rng.normal(size=batch)
    return policy, obs, actions, advantages


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("kind", ["tabular", "linear"])
def test_fused_pg_adam_step(benchmark, backend, kind, batch):
    policy, obs, actions, advantages = _make(kind, batch)
    opt = Adam(policy, lr=0.01)
    size = "S=10 A=5" if kind == "tabular" else "F=64 A=16"
    benchmark.group = f"fused pg+Adam step {kind} {size} B={batch}"
    benchmark.extra_info.update(backend=backend, rows=batch)
    norm = benchmark(pg.policy_gradient_step, policy, opt, obs, actions, advantages)
    assert np.isfinite(norm) and np.all(np.isfinite(policy.params))


@pytest.mark.parametrize("batch", [32, 1024])
@pytest.mark.parametrize("form", ["states", "rows"])
def test_one_hot_linear_step(benchmark, backend, form, batch):
    """A linear policy on one-hot state features (S = F = 10, A = 5) as a tabular task gives it:
    fed int states with ``features=`` (each state's logits and softmax once) or fed the rows
    ``features[states]`` (B x F x A)."""
    rng = np.random.default_rng(2)
    policy = LinearSoftmaxPolicy(10, 5, W=rng.normal(size=(10, 5)), b=rng.normal(size=5))
    features = np.eye(10)
    states = rng.integers(0, 10, batch)
    obs = states if form == "states" else features[states]
    actions, advantages = rng.integers(0, 5, batch), rng.normal(size=batch)
    step = pg.fused_step(policy, Adam(policy, lr=0.01),
                         features=features if form == "states" else None)
    benchmark.group = f"fused pg+Adam step one-hot linear S=F=10 A=5 B={batch} fed {form}"
    benchmark.extra_info.update(backend=backend, rows=batch)
    norm = benchmark(step, obs, actions, advantages)
    assert np.isfinite(norm) and np.all(np.isfinite(policy.params))


@pytest.mark.parametrize("kind", ["tabular", "linear"])
def test_policy_gradient(benchmark, backend, kind):
    policy, obs, actions, advantages = _make(kind, BIG)
    benchmark.group = f"policy_gradient {kind} B={BIG}"
    benchmark.extra_info.update(backend=backend, rows=BIG)
    grad = benchmark(pg.policy_gradient, policy, obs, actions, advantages, entropy_coef=0.01)
    assert grad.shape == policy.params.shape


def test_discounted_returns_and_gae(benchmark, backend):
    rng = np.random.default_rng(1)
    rewards, values, next_values = (rng.normal(size=BIG) for _ in range(3))
    dones = rng.random(BIG) < 0.01
    benchmark.group = f"discounted_returns + gae B={BIG}"
    benchmark.extra_info.update(backend=backend, rows=BIG)

    def both():
        return (pg.discounted_returns(rewards, dones, 0.99),
                pg.gae(rewards, values, next_values, dones, 0.99, 0.95))

    returns, adv = benchmark(both)
    assert returns.shape == adv.shape == (BIG,)
