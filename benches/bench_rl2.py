"""RL^2 (issue 17): the GRU policy's fused trial rollout, one PPO update and one whole
meta-iteration, the engine's Cython and NumPy backends against PyTorch, in the same run.

Bernoulli bandits, k = 5 arms, n = 10 pulls (one episode per trial), T = 1000 trials, GRU hidden
128, float64, ``RL2Learner``'s defaults (PPO: 4 epochs x 4 minibatches of whole trials):

1. the rollout: ``rl2_rollout`` (one fused call over all trials) against ``torch_rl2.rollout``
   (all trials stepped together: one ``nn.GRU`` step, softmax, ``torch.multinomial`` and the
   bandit per time step, under ``torch.no_grad()``);
2. one PPO update on one rollout's trials (GAE, normalised advantages, 16 minibatch steps of
   forward, loss, backpropagation through time, global-norm clip, Adam): the engine's
   ``RL2Learner`` update (``meta_step`` after its rollout) against ``TorchRL2.update``
   (``nn.GRU`` over the minibatch's trials, autograd, ``torch.optim.Adam``);
3. one meta-iteration end to end (rollout + update): ``RL2Learner.meta_step`` against
   ``TorchRL2.meta_step``.

``benches/torch_rl2.py`` is the PyTorch side (one thread; ``tests/test_torch_rl2_agrees.py``
checks that it computes the engine's forward, loss, gradient and update).  ``extra_info['rows']``
is the number of trials per call, so the "per item" column of ``ratios.py`` is the time per
trial (trials/s = T / time).  The parameters are reset before each round.  Everything
single-threaded:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 pytest benches/bench_rl2.py \
        --benchmark-only --benchmark-group-by=group --benchmark-json=rl2.json \
        && python benches/ratios.py rl2.json
"""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast.rl2 import rl2_rollout

from conftest import QUICK, grid

try:
    import torch
except ImportError:  # pragma: no cover - optional (the 'bench' extra)
    torch = None
    tr = None
else:
    import torch_rl2 as tr  # sets torch to one thread

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (the 'bench' extra): "
                                                       "no PyTorch comparison")

N_ARMS, N_PULLS = 5, 10
N_TRIALS, HIDDEN = grid((1000, 128), (16, 8))
SIZE = f"BernoulliBandits k={N_ARMS} n={N_PULLS}, {N_TRIALS} trials, hidden {HIDDEN}"
ROLLOUT_GROUP = f"rl2 rollout {SIZE}"
UPDATE_GROUP = f"rl2 PPO update (4 epochs x 4 minibatches) {SIZE}"
META_GROUP = f"rl2 meta-iteration (rollout + PPO update) {SIZE}"


def _setup():
    """The bandits (T tasks), a learner, and its starting parameters."""
    batch = mf.BernoulliBandits(N_ARMS, horizon=N_PULLS).sample(N_TRIALS, np.random.default_rng(0))
    learner = mf.RL2Learner(1, N_ARMS, HIDDEN, rng=1)
    return batch, learner, learner.params.copy()


def _torch_setup(params0):
    batch, _, _ = _setup()
    learner = tr.TorchRL2(N_ARMS, HIDDEN, params0, n_pulls=N_PULLS)
    means = torch.from_numpy(np.array(batch.R[:, 0, :]))  # (T, k) arm means, a writable copy
    return learner, means


def _timed(benchmark, backend, fn):
    """The NumPy reference's update runs for seconds: three rounds of one call."""
    if backend == "numpy" and not QUICK:
        return benchmark.pedantic(fn, rounds=3, iterations=1)
    return benchmark(fn)


def _label(benchmark, group, backend):
    benchmark.group = group
    benchmark.extra_info.update(rows=N_TRIALS, trials=N_TRIALS, backend=backend)


# -------------------------------------------------------------------------------------------
# 1. The fused rollout
# -------------------------------------------------------------------------------------------

def test_rollout(benchmark, backend):
    """``rl2_rollout(batch, params, 128, 1, rng)`` with the backend the fixture selected; a fresh
    Generator of the same seed per round (every round plays the same trials)."""
    batch, learner, _ = _setup()
    batch.tables  # built once, outside the timed region
    _label(benchmark, ROLLOUT_GROUP, backend)
    ro = _timed(benchmark, backend,
                lambda: rl2_rollout(batch, learner.params, HIDDEN, 1, np.random.default_rng(2)))
    assert ro.mask.shape == (N_PULLS, N_TRIALS) and ro.mask.all()


@needs_torch
def test_rollout_torch(benchmark):
    """``torch_rl2.rollout(policy, means, 10)``: one GRU step over all trials per pull."""
    _, _, params0 = _setup()
    learner, means = _torch_setup(params0)
    gen = torch.Generator()
    _label(benchmark, ROLLOUT_GROUP, "torch")

    def run():
        gen.manual_seed(2)
        return tr.rollout(learner.policy, means, N_PULLS, 1, gen)
    trials = benchmark(run)
    assert trials.action.shape == (N_PULLS, N_TRIALS)


# -------------------------------------------------------------------------------------------
# 2. One PPO update on one rollout's trials
# -------------------------------------------------------------------------------------------

def test_ppo_update(benchmark, backend):
    """The engine's PPO update (``active.gru`` forward and backward, NumPy loss, Adam) on one
    rollout of T trials; parameters and Adam state reset before each round."""
    batch, learner, params0 = _setup()
    ro = rl2_rollout(batch, params0, HIDDEN, 1, np.random.default_rng(2))
    _label(benchmark, UPDATE_GROUP, backend)

    def run():
        learner.params[...] = params0
        learner.optimizer.zero_state()
        learner.value_stats[:] = 0.0
        learner.update(ro, np.random.default_rng(3))
    _timed(benchmark, backend, run)
    assert not np.array_equal(learner.params, params0)


@needs_torch
def test_ppo_update_torch(benchmark):
    """``TorchRL2.update`` on the same rollout (the engine's, converted); parameters reset
    before each round."""
    batch, _, params0 = _setup()
    ro = rl2_rollout(batch, params0, HIDDEN, 1, np.random.default_rng(2))
    trials = tr.engine_trials(ro)
    learner, _ = _torch_setup(params0)
    gen = torch.Generator()
    _label(benchmark, UPDATE_GROUP, "torch")

    def run():
        learner.policy.load_engine_params(params0)
        learner.value_count, learner.value_mean, learner.value_m2 = 0, 0.0, 0.0
        gen.manual_seed(3)
        return learner.update(trials, gen)
    stats = benchmark(run)
    assert np.isfinite(stats["value_loss"])


# -------------------------------------------------------------------------------------------
# 3. One meta-iteration end to end
# -------------------------------------------------------------------------------------------

def test_meta_iteration(benchmark, backend):
    """``RL2Learner.meta_step(batch, rng)``: the rollout, then the PPO update."""
    batch, learner, params0 = _setup()
    batch.tables
    _label(benchmark, META_GROUP, backend)

    def run():
        learner.params[...] = params0
        return learner.meta_step(batch, np.random.default_rng(2))
    stats = _timed(benchmark, backend, run)
    assert np.isfinite(stats["mean_trial_return"])


@needs_torch
def test_meta_iteration_torch(benchmark):
    """``TorchRL2.meta_step(means, generator)``: the torch rollout, then the torch update."""
    _, _, params0 = _setup()
    learner, means = _torch_setup(params0)
    gen = torch.Generator()
    _label(benchmark, META_GROUP, "torch")

    def run():
        learner.policy.load_engine_params(params0)
        gen.manual_seed(2)
        return learner.meta_step(means, gen)
    stats = benchmark(run)
    assert np.isfinite(stats["mean_trial_return"])
