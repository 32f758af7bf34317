"""The engine against what a competent user writes instead, same process, same work, float64.

Peers (``benches/peers.py``): idiomatic NumPy, numba ``@njit`` loops (``numba``: numba's own
``np.random`` stream; ``numba-gen``: the same loops drawing from a numpy Generator passed in, which
costs ~7 us of boxing per call but draws faster), PyTorch (batched, float64, one thread), the per-task loop of a learn2learn user (MAML only) and cpprb (replay only).  Each
peer is skipped when its package is missing, and each first *checks* (at setup, not timed) that it
computes what the engine computes:

1. ``sample_actions`` (S=10, A=5): action frequencies on a large draw against the policy's
   probabilities (chi-square, every implementation, the engine included);
2. replay ``add_batch(256)`` / ``sample(32)`` on a 100k ring: the stored data reads back equal
   after the ring wrapped; sampled rows match their storage slot; slots are in range and uniform
   (chi-square);
3. rollout (GridNavigation(7), TabularMDPs()): on a large run, mean episode return against the
   exact value by dynamic programming (per task and overall) and against the engine's; mean
   episode length against the engine's; action frequencies per state against the policy
   (chi-square); mean visits per episode of every (task, state) against the engine's (two-sample
   z per cell, Bonferroni threshold at family-wise level 1e-3: visits within an episode are
   correlated, so a pooled chi-square of visit counts would be wrong);
4. PG + Adam step (S=10, A=5): parameters after 3 steps equal the engine's to rtol 1e-12;
5. MAML meta-iteration (K=1, 20 tasks x 20 episodes, fresh tasks each iteration, Adam): the torch
   meta-gradient equals the engine's on the engine's own episodes (to 1e-9), the torch task
   tables equal the engine's, and on a tiny family (GridNavigation(3), horizon 4, 2 goals, many
   replications) every implementation's sampled meta-gradient is unbiased: its mean minus the
   exact DP meta-gradient along the same inner step (``ExactPolicyProblem.grad`` at the adapted
   parameters, ``ExactPolicyProblem.hvp`` at phi) is within 4 standard errors of 0 per coordinate,
   and so is its inner step against the exact gradient.

Groups are named so the ratios read off; ``extra_info["impl"]`` names the implementation and
``extra_info["backend"]`` is ``"cython"`` for the engine (the column ``ratios.py`` divides by) and
the peer's name otherwise::

    pytest benches/bench_peers.py --benchmark-only --benchmark-group-by=group \
        --benchmark-json=peers.json -p no:cacheprovider && python benches/ratios.py peers.json

In ratios.py's table the peer columns' "speed-up vs X" is time(X) / time(engine).
"""
import functools
import math

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import meta as mf_meta
from metarl_fast import pg as mf_pg

import peers
from conftest import QUICK, grid

ENGINE_BACKEND = "cython" if mf.is_available("cython") else "numpy"
_NEEDS = {"numba": "numba", "numba-gen": "numba", "torch": "torch", "torch-multinomial": "torch", "torch-icdf": "torch",
          "torch-loop": "torch", "cpprb": "cpprb"}
Z_MAX = 4.0  # every statistical check: within 4 standard errors (or chi-square z < 4)


def _require(impl):
    if impl in _NEEDS:
        pytest.importorskip(_NEEDS[impl])


def _label(benchmark, group, impl, rows=None):
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, backend=ENGINE_BACKEND if impl == "engine" else impl)
    if rows is not None:
        benchmark.extra_info["rows"] = rows


@pytest.fixture(autouse=True)
def _engine_backend():
    with mf.use_backend(ENGINE_BACKEND):
        yield


def _torch_gen(seed):
    gen = peers.torch.Generator()
    gen.manual_seed(seed)
    return gen


# =============================================================================================
# 1. sample_actions
# =============================================================================================

S1, A1 = 10, 5
SAMPLE_IMPLS = ["engine", "numpy-idiomatic", "numba", "numba-gen", "torch-multinomial", "torch-icdf"]


def _sampler(impl, theta, seed):
    """A function obs (np int64) -> actions (np), drawing from its own seeded generator."""
    if impl == "engine":
        policy = mf.TabularSoftmaxPolicy(*theta.shape, theta=theta.copy())
        rng = np.random.default_rng(seed)
        return lambda obs: policy.act(obs, rng)
    if impl == "numpy-idiomatic":
        rng = np.random.default_rng(seed)
        return lambda obs: peers.numpy_sample_actions(theta, obs, rng)
    if impl == "numba":
        peers.numba_seed(seed)
        return lambda obs: peers.numba_sample_actions(theta, obs, np.empty(obs.shape[0], np.int64))
    if impl == "numba-gen":
        rng = np.random.default_rng(seed)
        return lambda obs: peers.numba_gen_sample_actions(theta, obs, rng, np.empty(obs.shape[0], np.int64))
    torch = peers.torch
    gen, theta_t = _torch_gen(seed), torch.from_numpy(theta)
    fn = peers.torch_sample_actions_multinomial if impl == "torch-multinomial" else peers.torch_sample_actions_icdf
    return lambda obs: fn(theta_t, torch.from_numpy(obs), gen).numpy()


def check_sample_actions(impl, theta, n_per_state=20000, seed=123):
    """Chi-square of the action counts per state against softmax(theta) (z < 4)."""
    S, A = theta.shape
    obs = np.repeat(np.arange(S), n_per_state)
    actions = np.asarray(_sampler(impl, theta, seed)(obs))
    assert actions.shape == obs.shape and actions.min() >= 0 and actions.max() < A
    counts = np.bincount(obs * A + actions, minlength=S * A).reshape(S, A)
    stat, dof, z = peers.chi2_goodness_of_fit(counts, peers.softmax_table(theta))
    assert z < Z_MAX, f"{impl}: action frequencies disagree with the policy (chi2={stat:.1f}, dof={dof}, z={z:.1f})"
    return z


@pytest.mark.parametrize("batch,impl", [(b, i) for b in grid([32, 4096], [32, 4096]) for i in SAMPLE_IMPLS])
def test_sample_actions(benchmark, batch, impl):
    _require(impl)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(S1, A1))
    obs = rng.integers(0, S1, batch)
    check_sample_actions(impl, theta, n_per_state=5000 if QUICK else 20000)
    _label(benchmark, f"peers: sample_actions tabular S={S1} A={A1} B={batch}", impl, batch)
    seed = 7
    if impl == "engine":
        policy, g = mf.TabularSoftmaxPolicy(S1, A1, theta=theta.copy()), np.random.default_rng(seed)
        out = benchmark(policy.act, obs, g)
    elif impl == "numpy-idiomatic":
        out = benchmark(peers.numpy_sample_actions, theta, obs, np.random.default_rng(seed))
    elif impl == "numba":
        buf = np.empty(batch, np.int64)
        peers.numba_seed(seed)
        out = benchmark(peers.numba_sample_actions, theta, obs, buf)
    elif impl == "numba-gen":
        buf = np.empty(batch, np.int64)
        out = benchmark(peers.numba_gen_sample_actions, theta, obs, np.random.default_rng(seed), buf)
    else:
        torch = peers.torch
        fn = (peers.torch_sample_actions_multinomial if impl == "torch-multinomial"
              else peers.torch_sample_actions_icdf)
        out = benchmark(fn, torch.from_numpy(theta), torch.from_numpy(obs), _torch_gen(seed))
    assert len(out) == batch


# =============================================================================================
# 2. Replay: add_batch(256), sample(32) on a 100k ring
# =============================================================================================

CAPACITY = 100_000
REPLAY_IMPLS = ["engine", "numpy-idiomatic", "numba", "numba-gen", "cpprb"]


def _transitions(start, n):
    """n transitions; ``obs`` is the global transition number (so a row names its slot)."""
    t = np.arange(start, start + n, dtype=np.int64)
    return (t, t % 5, (t % 7) * 0.5, t + 1, t % 20 == 19, t % 50 == 49, ((t // 100) % 4).astype(np.int32),
            -0.2 - 0.1 * (t % 3))


class _Engine:
    """The engine's ReplayBuffer behind the peers' (positional) interface, for the checks."""

    def __init__(self, capacity):
        self.buf = mf.ReplayBuffer(capacity)

    def add_batch(self, obs, action, reward, next_obs, done, truncated, task_id, logp):
        return self.buf.add_batch(obs, action, reward, next_obs, done, truncated=truncated, task_id=task_id,
                                  logp=logp)

    def contents(self):
        b = self.buf.gather(np.arange(len(self.buf)))
        return [b.obs, b.action, b.reward, b.next_obs, b.terminated, b.truncated, b.task_id, b.logp]

    def sample(self, n, rng):
        b = self.buf.sample(n, rng)
        return [b.obs, b.action, b.reward, b.next_obs, b.terminated, b.truncated, b.task_id, b.logp, b.indices]


class _Cpprb:
    def __init__(self, capacity):
        self.rb = peers.cpprb_buffer(capacity)

    def add_batch(self, *cols):
        peers.cpprb_add_batch(self.rb, *cols)

    def contents(self):
        d = self.rb.get_all_transitions()
        return [d[k].ravel() for k in ("obs", "act", "rew", "next_obs", "done", "truncated", "task_id", "logp")]

    def sample(self, n, rng):
        d = self.rb.sample(n)
        return [d[k].ravel() for k in ("obs", "act", "rew", "next_obs", "done", "truncated", "task_id", "logp")]


def _ring(impl, capacity):
    return {"engine": _Engine, "numpy-idiomatic": peers.NumpyRing, "numba": peers.NumbaRing,
            "numba-gen": peers.NumbaGenRing, "cpprb": _Cpprb}[impl](capacity)


def check_replay(impl, capacity=1000, n_draws=200_000, batch=256):
    """Fill 2.5 x capacity (the ring wraps), read everything back, sample uniformly."""
    ring = _ring(impl, capacity)
    if impl == "numba":
        peers.numba_seed(5)
    total = int(2.5 * capacity)
    for start in range(0, total, batch):
        ring.add_batch(*_transitions(start, min(batch, total - start)))
    # slot j holds the latest transition t with t % capacity == j
    t_of_slot = np.arange(capacity)
    t_of_slot = t_of_slot + capacity * ((total - 1 - t_of_slot) // capacity)
    expected = _transitions(0, total)
    got = ring.contents()
    names = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id", "logp")
    for name, col, exp in zip(names, got, expected):
        np.testing.assert_array_equal(np.asarray(col), exp[t_of_slot], err_msg=f"{impl}: stored {name} differs")
    rng = np.random.default_rng(5)
    slots = []
    for _ in range(n_draws // 4096):
        rows = ring.sample(4096, rng)
        t = np.asarray(rows[0])
        assert np.all((t >= 0) & (t < total))
        for name, col, exp in zip(names, rows[:8], expected):  # every field of a sampled row matches its slot
            np.testing.assert_array_equal(np.asarray(col), exp[t], err_msg=f"{impl}: sampled {name} differs")
        if len(rows) > 8:  # the slot indices the implementation reports
            np.testing.assert_array_equal(np.asarray(rows[8]), t % capacity)
        slots.append(t % capacity)
    slots = np.concatenate(slots)
    counts = np.bincount(slots, minlength=capacity)[None, :]
    assert counts.min() > 0, f"{impl}: some slots are never sampled"  # (expected count n_draws / capacity)
    stat, dof, z = peers.chi2_goodness_of_fit(counts, np.full((1, capacity), 1.0 / capacity))
    assert z < Z_MAX, f"{impl}: sampled slots are not uniform (chi2={stat:.0f}, dof={dof}, z={z:.1f})"
    return z


def _full_ring(impl, capacity):
    ring = _ring(impl, capacity)
    chunk = 10_000
    for start in range(0, capacity + capacity // 2, chunk):
        ring.add_batch(*_transitions(start, chunk))
    return ring


@pytest.mark.parametrize("op,impl", [(op, i) for op in ("add_batch(256)", "sample(32)") for i in REPLAY_IMPLS
                                     if not (op.startswith("add") and i == "numba-gen")])  # same add as numba
def test_replay(benchmark, op, impl):
    _require(impl)
    check_replay(impl, n_draws=50_000 if QUICK else 200_000)
    ring = _full_ring(impl, CAPACITY)
    n = 256 if op.startswith("add") else 32
    _label(benchmark, f"peers: replay.{op} tabular capacity=1e5", impl, n)
    rng = np.random.default_rng(3)
    cols = _transitions(0, 256)
    if impl == "engine":
        buf = ring.buf
        obs, action, reward, next_obs, done, truncated, task_id, logp = cols
        if op.startswith("add"):
            benchmark(buf.add_batch, obs, action, reward, next_obs, done, truncated=truncated, task_id=task_id,
                      logp=logp)
        else:
            benchmark(buf.sample, 32, rng)
    elif impl == "cpprb":
        if op.startswith("add"):
            benchmark(peers.cpprb_add_batch, ring.rb, *cols)
        else:
            benchmark(ring.rb.sample, 32)
    else:
        if op.startswith("add"):
            benchmark(ring.add_batch, *cols)
        else:
            benchmark(ring.sample, 32, rng)


# =============================================================================================
# 3. Rollout: 20 tasks x 20 episodes, one tabular softmax policy
# =============================================================================================

ROLLOUT_FAMILIES = {"GridNavigation(7)": lambda: mf.GridNavigation(size=7), "TabularMDPs()": lambda: mf.TabularMDPs()}
ROLLOUT_IMPLS = ["engine", "numpy-idiomatic", "numba", "numba-gen", "torch"]


def task_arrays(batch):
    """A TaskBatch as the peers' plain arrays (built once per batch, like ``batch.tables``)."""
    if batch.reward_noise not in ("none", "gaussian"):
        raise ValueError(f"peers support reward_noise none/gaussian, not {batch.reward_noise}")
    noise = batch.reward_std if batch.reward_noise == "gaussian" else None
    start = np.argmax(batch.start, axis=1)
    assert np.all(batch.start[np.arange(batch.n_tasks), start] == 1.0), "peers need a fixed start state"
    if batch.next_state is not None:
        return peers.TaskArrays(batch.R, batch.horizon, next_state=batch.next_state, terminal=batch.terminal,
                                start=start, noise_std=noise)
    return peers.TaskArrays(batch.R, batch.horizon, P=batch.P, terminal=batch.terminal, start=start,
                            noise_std=noise)


@functools.lru_cache(maxsize=None)
def _rollout_case(family):
    batch = ROLLOUT_FAMILIES[family]().sample(20, 0)
    batch.tables
    S, A = batch.n_states, batch.n_actions
    theta = np.random.default_rng(1).normal(size=(S, A))
    return batch, theta, task_arrays(batch)


def _rollout_stats(impl, family, n_episodes, seed):
    """Per-task returns (T, N), lengths (T, N), (state, action) counts (S, A) and visits of every
    state in every episode (T, N, S)."""
    batch, theta, ta = _rollout_case(family)
    T, S, A = batch.n_tasks, batch.n_states, batch.n_actions
    if impl == "engine":
        traj = mf.rollout(mf.TabularSoftmaxPolicy(S, A, theta=theta.copy()), batch, n_episodes,
                          np.random.default_rng(seed))
        ret, length = traj.episode_return, traj.episode_length
        obs, act = traj.obs, traj.action
        episode = np.repeat(np.arange(T * n_episodes), traj.episode_length.reshape(-1))
    else:
        if impl == "numpy-idiomatic":
            d = peers.numpy_rollout(theta, ta, n_episodes, np.random.default_rng(seed))
        elif impl == "numba":
            peers.numba_seed(seed)
            d = peers.numba_rollout(theta, ta, n_episodes)
        elif impl == "numba-gen":
            d = peers.numba_gen_rollout(theta, ta, n_episodes, np.random.default_rng(seed))
        else:
            d = {k: v.numpy() for k, v in peers.torch_rollout(peers.torch.from_numpy(theta), ta.to_torch(),
                                                              n_episodes, _torch_gen(seed)).items()}
        valid = d["valid"]
        ret, length = d["episode_return"], d["episode_length"]
        obs, act = d["obs"][valid], d["action"][valid]
        episode = np.broadcast_to(np.arange(T * n_episodes).reshape(T, n_episodes, 1), valid.shape)[valid]
    sa = np.bincount(obs * A + act, minlength=S * A).reshape(S, A)
    visits = np.bincount(episode * S + obs, minlength=T * n_episodes * S).reshape(T, n_episodes, S)
    return np.asarray(ret, dtype=np.float64), np.asarray(length, dtype=np.float64), sa, visits


@functools.lru_cache(maxsize=None)
def _engine_rollout_stats(family, n_episodes):
    return _rollout_stats("engine", family, n_episodes, seed=11)


@functools.lru_cache(maxsize=None)
def _exact_values(family):
    batch, theta, _ = _rollout_case(family)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions, theta=theta.copy())
    problem = mf_meta.ExactPolicyProblem(policy, batch)
    return problem.value(np.broadcast_to(theta.reshape(-1), (batch.n_tasks, theta.size)).copy())


def _mean_se(x):
    """Mean over tasks of the per-task means of x (T, N), and its standard error."""
    T, N = x.shape
    return x.mean(), math.sqrt((x.var(axis=1, ddof=1) / N).sum()) / T


def check_rollout(impl, family, n_episodes=1000):
    batch, theta, _ = _rollout_case(family)
    ret, length, sa, visits = _rollout_stats(impl, family, n_episodes, seed=22)
    J = _exact_values(family)
    T, N = ret.shape
    # mean return against the exact value, per task (chi-square) and overall
    z_task = (ret.mean(axis=1) - J) / np.sqrt(ret.var(axis=1, ddof=1) / N)
    assert np.all(np.isfinite(z_task))
    zc = peers.chi2_z(float((z_task ** 2).sum()), T)
    m, se = _mean_se(ret)
    z_all = (m - J.mean()) / se
    assert abs(z_all) < Z_MAX and zc < Z_MAX, \
        f"{impl} {family}: mean return {m:.4f} vs exact {J.mean():.4f} (z={z_all:.1f}, per-task chi2 z={zc:.1f})"
    # against the engine's own large run
    e_ret, e_len, e_sa, e_visits = _engine_rollout_stats(family, n_episodes)
    em, ese = _mean_se(e_ret)
    z_eng = (m - em) / math.hypot(se, ese)
    lm, lse = _mean_se(length)
    elm, else_ = _mean_se(e_len)
    z_len = 0.0 if lse == 0 and else_ == 0 and lm == elm else (lm - elm) / math.hypot(lse, else_)
    assert abs(z_eng) < Z_MAX and abs(z_len) < Z_MAX, \
        f"{impl} {family}: vs engine return z={z_eng:.1f}, length z={z_len:.1f}"
    # action frequencies per state against the policy; visits per episode against the engine's
    _, _, z_act = peers.chi2_goodness_of_fit(sa, peers.softmax_table(theta))
    z_cells = np.stack([peers.two_sample_z(visits[t], e_visits[t]) for t in range(T)])
    z_vis, limit = float(np.abs(z_cells).max()), max(Z_MAX, peers.bonferroni_z(z_cells.size))
    assert z_act < Z_MAX and z_vis < limit, \
        f"{impl} {family}: action z={z_act:.1f}, state visits max |z|={z_vis:.1f} (limit {limit:.2f})"
    return {"z_exact": z_all, "z_task_chi2": zc, "z_engine": z_eng, "z_length": z_len, "z_actions": z_act,
            "z_visits_max": z_vis, "z_visits_limit": limit}


@pytest.mark.parametrize("family,impl", [(f, i) for f in ROLLOUT_FAMILIES for i in ROLLOUT_IMPLS])
def test_rollout(benchmark, family, impl):
    _require(impl)
    check_rollout(impl, family, n_episodes=1000)
    batch, theta, ta = _rollout_case(family)
    n = 20
    _label(benchmark, f"peers: rollout {family} 20 tasks x {n} episodes", impl, 20 * n)
    if impl == "engine":
        policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions, theta=theta.copy())
        benchmark(mf.rollout, policy, batch, n, np.random.default_rng(4))
    elif impl == "numpy-idiomatic":
        benchmark(peers.numpy_rollout, theta, ta, n, np.random.default_rng(4))
    elif impl == "numba":
        peers.numba_seed(4)
        benchmark(peers.numba_rollout, theta, ta, n)
    elif impl == "numba-gen":
        benchmark(peers.numba_gen_rollout, theta, ta, n, np.random.default_rng(4))
    else:
        benchmark(peers.torch_rollout, peers.torch.from_numpy(theta), ta.to_torch(), n, _torch_gen(4))


# =============================================================================================
# 4. PG + Adam step, tabular softmax S=10, A=5
# =============================================================================================

PG_IMPLS = ["engine", "engine-call", "numpy-idiomatic", "numba", "torch"]


def _pg_case(batch, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(S1, A1))
    batches = [(rng.integers(0, S1, batch), rng.integers(0, A1, batch), rng.normal(size=batch)) for _ in range(3)]
    return theta, batches


class _EnginePG:
    """The engine's step: ``pg.fused_step`` (bound once, for hot loops), or with ``call=True`` the
    one-call API ``policy_gradient_step(policy, optimizer, ...)``."""

    def __init__(self, theta, lr=0.01, call=False):
        self.policy = mf.TabularSoftmaxPolicy(*theta.shape, theta=theta.copy())
        self.opt = mf.Adam(self.policy, lr=lr)
        if call:
            self.step = functools.partial(mf.policy_gradient_step, self.policy, self.opt)
        else:
            self.step = mf_pg.fused_step(self.policy, self.opt)

    @property
    def params(self):
        return self.policy.theta.copy()


def _pg_peer(impl, theta):
    if impl in ("engine", "engine-call"):
        return _EnginePG(theta, call=impl == "engine-call"), (lambda b: b)
    if impl == "numpy-idiomatic":
        return peers.NumpyPGAdam(theta), (lambda b: b)
    if impl == "numba":
        return peers.NumbaPGAdam(theta), (lambda b: b)
    torch = peers.torch
    return peers.TorchPGAdam(theta), (lambda b: tuple(torch.from_numpy(x) for x in b))


def _pg_params(peer):
    if isinstance(peer, _EnginePG):
        return peer.params
    if isinstance(peer, peers.TorchPGAdam):
        return peer.theta.detach().numpy().copy()
    return peer.theta.copy()


def _pg_grad(peer):
    if isinstance(peer, peers.TorchPGAdam):
        return -peer.theta.grad.numpy()  # torch minimises -J
    return peer.grad


def check_pg(impl, batch):
    """The gradient of the first step (Adam hides its scale) and the parameters after 3 steps
    equal the engine's to rtol 1e-12."""
    theta, batches = _pg_case(batch)
    policy = mf.TabularSoftmaxPolicy(*theta.shape, theta=theta.copy())
    ref, _ = _pg_peer("engine", theta)
    peer, conv = _pg_peer(impl, theta)
    for k, b in enumerate(batches):
        ref.step(*b)
        peer.step(*conv(b))
        if k == 0 and impl not in ("engine", "engine-call"):
            np.testing.assert_allclose(_pg_grad(peer).reshape(-1), mf.policy_gradient(policy, *b), rtol=1e-12,
                                       atol=1e-15, err_msg=f"{impl}: the policy gradient differs from the engine's")
    np.testing.assert_allclose(_pg_params(peer), _pg_params(ref), rtol=1e-12, atol=0,
                               err_msg=f"{impl}: parameters after 3 PG+Adam steps differ from the engine's")
    assert not np.allclose(_pg_params(ref), theta)


@pytest.mark.parametrize("batch,impl", [(b, i) for b in (32, 1024) for i in PG_IMPLS])
def test_pg_adam_step(benchmark, batch, impl):
    _require(impl)
    check_pg(impl, batch)
    theta, batches = _pg_case(batch)
    peer, conv = _pg_peer(impl, theta)
    _label(benchmark, f"peers: pg+Adam step tabular S={S1} A={A1} B={batch}", impl, batch)
    benchmark(peer.step, *conv(batches[0]))
    assert np.all(np.isfinite(_pg_params(peer)))


# =============================================================================================
# 5. MAML meta-iteration on fresh tasks
# =============================================================================================

MAML_IMPLS = ["engine", "torch", "torch-loop"]
INNER_LR, META_BATCH, EPISODES = 1.0, 20, 20  # TrainConfig's defaults
# The timed meta-iterations start every round from the uniform policy (the engine resets its
# parameters, 245 floats, before each step; the torch peers step Adam with learning rate 0), so
# every round does the same work: a policy that learns reaches the goal sooner, and the engine's
# rollouts stop at the goal while a batched peer steps on until every episode has ended, so a
# training run would flatter the engine as it learns.
TIMED_META_LR = 0.0
META_LR = 0.05  # TrainConfig's default (the engine's Adam; its parameters are reset each round)


class _Recording(mf_meta.SampledPolicyProblem):
    """The engine's sampled problem, keeping the episodes it draws (inner, outer, Hessian)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = []

    def sample(self, theta, rng):
        data = super().sample(theta, rng)
        self.log.append(data["traj"])
        return data


def padded_episodes(traj, horizon):
    """The engine's flat Trajectories as the torch peers' padded (T, N, H) tensors."""
    torch = peers.torch
    T, N = traj.episode_length.shape
    ep = np.repeat(np.arange(T * N), traj.episode_length.reshape(-1))
    step = traj.step_in_episode
    out = {}
    for name, src, dtype in (("obs", traj.obs, np.int64), ("action", traj.action, np.int64),
                             ("reward", traj.reward, np.float64)):
        arr = np.zeros((T * N, horizon), dtype)
        arr[ep, step] = src
        out[name] = torch.from_numpy(arr.reshape(T, N, horizon))
    valid = np.zeros((T * N, horizon), bool)
    valid[ep, step] = True
    out["valid"] = torch.from_numpy(valid.reshape(T, N, horizon))
    return out


def _torch_tasks(dist, batch, gen=None):
    sampler = peers.TorchGridNavigation(dist.size, dist.horizon, dist.goals, gen)
    return sampler.from_goals(peers.torch.from_numpy(batch.info["goal"]))


def check_maml_same_episodes(impl, **kwargs):
    """On the engine's own episodes, the torch meta-gradient (per task) equals the engine's, and
    the torch task tables equal the engine's."""
    dist = mf.GridNavigation(size=7)
    batch = dist.sample(4, 0)
    tt = _torch_tasks(dist, batch)
    np.testing.assert_array_equal(tt.R.numpy(), batch.R)
    np.testing.assert_array_equal(tt.next_state.numpy(), batch.next_state)
    np.testing.assert_array_equal(tt.terminal.numpy(), batch.terminal)
    np.testing.assert_array_equal(tt.start.numpy(), np.argmax(batch.start, axis=1))
    S, A = batch.n_states, batch.n_actions
    phi = 0.5 * np.random.default_rng(3).normal(size=S * A)
    problem = _Recording(mf.TabularSoftmaxPolicy(S, A), batch, 5)
    direction, _, info = mf_meta.meta_gradient(problem, phi, "maml", INNER_LR, 1, np.random.default_rng(4))
    assert len(problem.log) == 3
    data = [padded_episodes(tr, batch.horizon) for tr in problem.log]
    theta0 = np.broadcast_to(phi.reshape(S, A), (batch.n_tasks, S, A))
    dirs, theta1 = peers.torch_maml_directions(theta0, tt, 5, INNER_LR, None, loop=impl == "torch-loop",
                                               data=data, **kwargs)
    np.testing.assert_allclose(theta1.reshape(batch.n_tasks, -1), info["path"][1], rtol=1e-10, atol=1e-12,
                               err_msg=f"{impl}: inner step differs from the engine's on the same episodes")
    np.testing.assert_allclose(dirs.reshape(batch.n_tasks, -1), direction, rtol=1e-9, atol=1e-12,
                               err_msg=f"{impl}: meta-gradient differs from the engine's on the same episodes")


TINY_GOALS = [(0, 0), (1, 2)]


def _maml_samples(impl, reps, n_episodes, seed, **kwargs):
    """Per-replication meta-gradients and adapted parameters on the tiny family (T*reps, P)."""
    dist = mf.GridNavigation(size=3, horizon=4, goals=TINY_GOALS)
    base = dist.sample(64, 0)
    first = [int(np.flatnonzero(np.all(base.info["goal"] == g, axis=1))[0]) for g in TINY_GOALS]
    batch = base[np.repeat(first, reps)]
    S, A = batch.n_states, batch.n_actions
    phi = 0.7 * np.random.default_rng(9).normal(size=S * A)
    if impl == "engine":
        problem = mf_meta.SampledPolicyProblem(mf.TabularSoftmaxPolicy(S, A), batch, n_episodes)
        dirs, _, info = mf_meta.meta_gradient(problem, phi, "maml", INNER_LR, 1, np.random.default_rng(seed))
        theta1 = info["path"][1]
    else:
        tt = _torch_tasks(dist, batch)
        theta0 = np.broadcast_to(phi.reshape(S, A), (batch.n_tasks, S, A))
        dirs, theta1 = peers.torch_maml_directions(theta0, tt, n_episodes, INNER_LR, _torch_gen(seed),
                                                   loop=impl == "torch-loop", **kwargs)
        dirs, theta1 = dirs.reshape(batch.n_tasks, -1), theta1.reshape(batch.n_tasks, -1)
    return batch, phi, dirs, theta1


def _z_scores(x, target, groups):
    """Per group and coordinate: (mean of x - mean of target) / standard error, NaN where x has no
    variance (there the difference must be exactly 0)."""
    zs = []
    for g in groups:
        d = x[g] - target[g]
        m, s = d.mean(axis=0), d.std(axis=0, ddof=1) / math.sqrt(len(g))
        const = s < 1e-12
        assert np.all(np.abs(m[const]) < 1e-9), "a zero-variance coordinate differs from the exact value"
        zs.append(np.where(const, 0.0, m / np.where(const, 1.0, s)))
    return np.stack(zs)


def check_maml_unbiased(impl, reps=2000, n_episodes=10, seed=17, **kwargs):
    """Mean sampled meta-gradient minus the exact DP meta-gradient along the same inner step, and
    mean inner step minus the exact inner gradient, within Z_MAX standard errors per coordinate."""
    batch, phi, dirs, theta1 = _maml_samples(impl, reps, n_episodes, seed, **kwargs)
    S, A = batch.n_states, batch.n_actions
    exact = mf_meta.ExactPolicyProblem(mf.TabularSoftmaxPolicy(S, A), batch)
    theta0 = np.broadcast_to(phi, theta1.shape).copy()
    v = exact.grad(theta1)
    target = v + exact.hvp(theta0, None, INNER_LR * v)   # (I + alpha H(phi)) grad J(theta1), per replication
    groups = [np.arange(i * reps, (i + 1) * reps) for i in range(len(TINY_GOALS))]
    z_meta = _z_scores(dirs, target, groups)
    z_inner = _z_scores((theta1 - theta0) / INNER_LR, exact.grad(theta0), groups)
    zmax_meta, zmax_inner = float(np.abs(z_meta).max()), float(np.abs(z_inner).max())
    assert zmax_meta < Z_MAX, f"{impl}: meta-gradient biased (max |z| = {zmax_meta:.1f} over {z_meta.size} coordinates)"
    assert zmax_inner < Z_MAX, f"{impl}: inner gradient biased (max |z| = {zmax_inner:.1f})"
    return zmax_meta, zmax_inner


@pytest.mark.parametrize("impl", MAML_IMPLS)
def test_maml_meta_iteration(benchmark, impl):
    _require(impl)
    if impl != "engine":
        check_maml_same_episodes(impl)
    reps = {"engine": 2000, "torch": 2000, "torch-loop": 150 if QUICK else 400}[impl]
    check_maml_unbiased(impl, reps=reps)
    dist = mf.GridNavigation(size=7)
    _label(benchmark, f"peers: MAML meta-iteration GridNavigation(7) {META_BATCH} tasks x {EPISODES} episodes "
                      f"K=1 (fresh tasks, Adam)", impl, META_BATCH * EPISODES)
    if impl == "engine":
        policy = mf.TabularSoftmaxPolicy(dist.size ** 2, dist.N_ACTIONS)
        learner = mf.MetaLearner(policy, "maml", inner_lr=INNER_LR, inner_steps=1, meta_lr=META_LR,
                                 episodes_per_task=EPISODES)
        rng = np.random.default_rng(0)

        def step():
            policy.params[:] = 0.0
            return learner.meta_step(dist.sample(META_BATCH, rng), rng)

        benchmark(step)
        params = policy.params
    else:
        gen = _torch_gen(0)
        sampler = peers.TorchGridNavigation(dist.size, dist.horizon, dist.goals, gen)
        cls = peers.TorchMAMLLoop if impl == "torch-loop" else peers.TorchMAML
        learner = cls(sampler, META_BATCH, EPISODES, INNER_LR, TIMED_META_LR, gen)
        if impl == "torch-loop" and not QUICK:
            benchmark.pedantic(learner.meta_step, rounds=15, iterations=1, warmup_rounds=1)
        else:
            benchmark(learner.meta_step)
        params = learner.phi.detach().numpy()
    assert np.all(np.isfinite(params))
