"""MLP softmax policies (issue 16): the engine's Cython and NumPy backends against PyTorch.

1. Forward + sample, obs_dim 4, hidden (64, 64), A = 2: one observation per call (B = 1, timed
   in a Python loop of LOOP calls) and B = 4096 rows per call; ``MLPSoftmaxPolicy.act``, the raw
   kernel ``active.mlp.mlp_act`` and a PyTorch ``nn.Sequential`` forward + ``Categorical`` sample
   under ``torch.no_grad()``, in float64 and float32.
2. One MAML meta-iteration on PointNavigation (20 tasks x 20 episodes, horizon 100, hidden
   (64, 64), one inner step, fresh episodes for the second-order term, Adam): ``mf.MAML`` against
   ``benches/torch_maml.py`` (the same estimator, checked by tests/test_torch_maml_agrees.py).
3. The fused rollout of an MLP policy on CartPoles (64 tasks x 10 episodes, horizon 200):
   steps per second, and the network's share from the same rollout with hidden () (a linear
   policy: the environment, sampling and recording with a negligible network) and from the
   network alone, batched, on the rollout's own observations.

Everything single-threaded: run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
MKL_NUM_THREADS=1`` (NumPy's BLAS, which the NumPy backend's gradients use); torch is set to one
thread by ``torch_maml.py``.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 pytest benches/bench_mlp.py \
        --benchmark-only --benchmark-group-by=group --benchmark-json=mlp.json \
        && python benches/ratios.py mlp.json
"""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast._backend import active
from metarl_fast.continuous_rollout import rollout_mlp

from conftest import grid

try:
    import torch
except ImportError:  # pragma: no cover - optional (the 'bench' extra)
    torch = None
    tm = None
else:
    import torch_maml as tm  # sets torch to one thread

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (the 'bench' extra): "
                                                       "no PyTorch comparison")

DTYPES = {"float64": np.float64, "float32": np.float32}

# -------------------------------------------------------------------------------------------
# 1. Forward + sample
# -------------------------------------------------------------------------------------------
OBS_DIM, N_ACTIONS = 4, 2
ACT_HIDDEN = grid((64, 64), (8,))
ACT_DTYPES = grid(["float64", "float32"], ["float64"])
LOOP = grid(1000, 10)  # B = 1: calls per round (per item = one call)
BIG_B = grid(4096, 64)


def _loop(fn, *args):
    calls = range(LOOP)

    def run():
        for _ in calls:
            fn(*args)
    return run


def _act_group(n_rows, dtype):
    if n_rows == 1:
        return f"act obs_dim=4 hidden={ACT_HIDDEN} A=2 {dtype} B=1 (loop of {LOOP} calls)"
    return f"act obs_dim=4 hidden={ACT_HIDDEN} A=2 {dtype} B={n_rows}"


@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("n_rows", [1, BIG_B])
@pytest.mark.parametrize("call", ["policy.act", "mlp_act"])
def test_act(benchmark, backend, call, n_rows, dtype):
    """``policy.act(obs, rng)`` (one observation (4,) -> an int when B = 1) and the kernel
    ``active.mlp.mlp_act(params, obs (B, 4), hidden, "tanh", rng, out)``."""
    policy = mf.MLPSoftmaxPolicy(OBS_DIM, N_ACTIONS, hidden=ACT_HIDDEN, dtype=DTYPES[dtype], rng=0)
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((n_rows, OBS_DIM)).astype(DTYPES[dtype])
    benchmark.group = _act_group(n_rows, dtype)
    label = backend if call == "policy.act" else f"{backend} mlp_act"
    benchmark.extra_info.update(rows=LOOP if n_rows == 1 else n_rows, backend=label)
    if call == "policy.act":
        x = obs[0] if n_rows == 1 else obs
        run = _loop(policy.act, x, rng) if n_rows == 1 else (lambda: policy.act(x, rng))
    else:
        out = np.empty(n_rows, dtype=np.int64)
        kernel = active.mlp.mlp_act  # the backend the fixture selected
        args = (policy.params, obs, policy.hidden, policy.activation, rng, out)
        run = _loop(kernel, *args) if n_rows == 1 else (lambda: kernel(*args))
    benchmark(run)
    assert 0 <= policy.act(obs, rng)[0] < N_ACTIONS


@needs_torch
@pytest.mark.parametrize("dtype", ACT_DTYPES)
@pytest.mark.parametrize("n_rows", [1, BIG_B])
def test_act_torch(benchmark, n_rows, dtype):
    """PyTorch: ``Categorical(logits=net(x)).sample()`` under ``torch.no_grad()``, ``net`` an
    ``nn.Sequential`` of Linear/Tanh layers (one thread)."""
    nn = torch.nn
    widths = (OBS_DIM, *ACT_HIDDEN, N_ACTIONS)
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    net = nn.Sequential(*layers[:-1]).to(getattr(torch, dtype))
    torch.manual_seed(0)
    x = torch.randn(n_rows, OBS_DIM, dtype=getattr(torch, dtype))

    def act(x):
        with torch.no_grad():
            return torch.distributions.Categorical(logits=net(x)).sample()

    benchmark.group = _act_group(n_rows, dtype)
    benchmark.extra_info.update(rows=LOOP if n_rows == 1 else n_rows, backend="torch")
    benchmark(_loop(act, x) if n_rows == 1 else (lambda: act(x)))
    assert act(x).shape == (n_rows,)


# -------------------------------------------------------------------------------------------
# 2. One MAML meta-iteration on PointNavigation
# -------------------------------------------------------------------------------------------
# (n_tasks, episodes per task, horizon, hidden)
MAML_SIZE = grid((20, 20, 100, (64, 64)), (2, 2, 5, (8,)))
MAML_GROUP = "MAML meta-iteration PointNavigation {} tasks x {} episodes, horizon {}, hidden {}, K=1".format(
    *MAML_SIZE)


def _maml_setup():
    n_tasks, _, horizon, hidden = MAML_SIZE
    tasks = mf.PointNavigation(horizon=horizon).sample(n_tasks, 0)
    phi0 = mf.MLPSoftmaxPolicy(2, 9, hidden=hidden, rng=0).params.copy()
    return tasks, phi0


def test_maml_meta_iteration(benchmark, backend):
    """``mf.MAML(policy, inner_lr=0.1, episodes_per_task=20).meta_step(tasks, rng)``; the
    parameters are reset before each round (every round does the same work from the same phi)."""
    n_tasks, n_episodes, horizon, hidden = MAML_SIZE
    tasks, phi0 = _maml_setup()
    policy = mf.MLPSoftmaxPolicy(2, 9, hidden=hidden, params=phi0)
    learner = mf.MAML(policy, inner_lr=0.1, episodes_per_task=n_episodes)
    rng = np.random.default_rng(0)

    def step():
        policy.params[...] = phi0
        return learner.meta_step(tasks, rng)

    benchmark.group = MAML_GROUP
    benchmark.extra_info.update(rows=1, backend=backend, env_steps=3 * n_tasks * n_episodes * horizon)
    stats = benchmark(step)
    assert np.isfinite(stats["pre_return"])


@needs_torch
@pytest.mark.parametrize("dtype", grid(["float64", "float32"], ["float64"]))
def test_maml_meta_iteration_torch(benchmark, dtype):
    """``benches/torch_maml.py``: ``TorchMAML(phi).meta_step(env)``, one thread, from the same phi
    and tasks (goals) as the engine; phi is reset before each round.  float64 is the engine's
    precision; float32 is what PyTorch users usually run."""
    n_tasks, n_episodes, horizon, hidden = MAML_SIZE
    tasks, phi0 = _maml_setup()
    torch.manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    env = tm.PointNavigation(np.array(tasks.goals), horizon=horizon, dtype=torch_dtype)
    maml = tm.TorchMAML(phi0, hidden=hidden, inner_lr=0.1, episodes_per_task=n_episodes, dtype=torch_dtype)
    start = torch.from_numpy(phi0).to(torch_dtype)

    def step():
        with torch.no_grad():
            maml.phi.copy_(start)
        return maml.meta_step(env)

    benchmark.group = MAML_GROUP
    benchmark.extra_info.update(rows=1, backend="torch" if dtype == "float64" else f"torch {dtype}")
    stats = benchmark(step)
    assert np.isfinite(stats["pre_return"])


# -------------------------------------------------------------------------------------------
# 3. Fused rollout on CartPoles: steps per second and the network's share
# -------------------------------------------------------------------------------------------
ROLLOUT_SIZE = grid((64, 10, 200), (4, 2, 20))  # tasks, episodes per task, horizon
ROLLOUT_HIDDEN = grid([(64, 64), ()], [(8,), ()])
ROLLOUT_GROUP = "rollout_mlp CartPoles {} tasks x {} episodes, horizon {}".format(*ROLLOUT_SIZE)


def _cartpoles():
    n_tasks, _, horizon = ROLLOUT_SIZE
    return mf.CartPoles(horizon=horizon).sample(n_tasks, 0)


@pytest.mark.parametrize("hidden", ROLLOUT_HIDDEN, ids=lambda h: f"hidden={h}")
def test_cartpoles_rollout(benchmark, backend, hidden):
    """One fused ``rollout_mlp`` call (network forward, sampling, CartPole step, recording).
    Each round draws from a fresh Generator of the same seed, so every round runs the same
    episodes; ``extra_info['steps']`` is their number: steps/s = steps / time.  hidden () is a
    linear policy (4 x 2 weights): its time per step is the rollout without the network."""
    _, n_episodes, _ = ROLLOUT_SIZE
    batch = _cartpoles()
    params = mf.MLPSoftmaxPolicy(4, 2, hidden=hidden, rng=0).params
    steps = rollout_mlp(batch, params, n_episodes, np.random.default_rng(1), hidden=hidden).n_steps
    benchmark.group = f"{ROLLOUT_GROUP}, hidden={hidden}"
    benchmark.extra_info.update(rows=steps, steps=steps, backend=backend)
    traj = benchmark(lambda: rollout_mlp(batch, params, n_episodes, np.random.default_rng(1), hidden=hidden))
    assert traj.n_steps == steps


@pytest.mark.parametrize("hidden", ROLLOUT_HIDDEN[:1], ids=lambda h: f"hidden={h}")
def test_cartpoles_network_alone(benchmark, backend, hidden):
    """The network of the rollout above alone: ``mlp_act`` (forward + sampling) on all of the
    rollout's observations in one batched call (a lower bound of the network's cost inside the
    rollout, which runs it one row per step)."""
    _, n_episodes, _ = ROLLOUT_SIZE
    params = mf.MLPSoftmaxPolicy(4, 2, hidden=hidden, rng=0).params
    traj = rollout_mlp(_cartpoles(), params, n_episodes, np.random.default_rng(1), hidden=hidden)
    obs = np.ascontiguousarray(traj.obs)
    out = np.empty(traj.n_steps, dtype=np.int64)
    rng = np.random.default_rng(2)
    kernel = active.mlp.mlp_act
    benchmark.group = f"{ROLLOUT_GROUP}, hidden={hidden}"
    benchmark.extra_info.update(rows=traj.n_steps, steps=traj.n_steps, backend=f"{backend} mlp_act batched")
    benchmark(kernel, params, obs, hidden, "tanh", rng, out)
    assert out.max() < 2
