"""rollout_mlp (issue 16): the fused rollout of MLP softmax policies on PointNavigation and
CartPoles means what its specification (metarl_fast/reference/continuous_rollout.py) says, on
both backends: the same arrays as a plain Python loop over the public pieces, the documented
draws, the episode bookkeeping, the choice of policy per task, and clean errors."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import BACKENDS, needs_cython
from metarl_fast import _backend
from metarl_fast.continuous_rollout import ContinuousTrajectories, rollout_mlp
from metarl_fast.continuous_tasks import CartPoles, CartPolesBatch, PointNavigation
from metarl_fast.reference import mlp as ref_mlp
from metarl_fast.reference import policy as ref_policy

HERE = os.path.dirname(os.path.abspath(__file__))


def _params(batch, hidden, n_policies, seed):
    rng = np.random.default_rng(seed)
    p = np.stack([ref_mlp.mlp_init(batch.obs_dim, hidden, batch.n_actions, rng) * 3.0
                  for _ in range(n_policies)])
    return p


def _loop_rollout(batch, params2d, policy_of_task, hidden, activation, n_episodes, rng):
    """The specification as a plain loop: per task, per episode, the family's reset of that one
    task, then one ``mlp_act`` per step on the one row and ``batch.step``; the action uniforms an
    episode did not use are skipped (H per episode in all)."""
    mlp = _backend.active.mlp
    H, cart = batch.horizon, isinstance(batch, CartPolesBatch)
    rec = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated",
                           "logp", "task_id")}
    lengths = np.zeros((batch.n_tasks, n_episodes), dtype=np.int64)
    returns = np.zeros((batch.n_tasks, n_episodes))
    for i in range(batch.n_tasks):
        task = batch[i]
        p = params2d[policy_of_task[i]]
        for e in range(n_episodes):
            s = task.reset_states(rng)
            ret = 0.0
            for t in range(H):
                a = mlp.mlp_act(p, s, hidden, activation, rng)
                logits = mlp.mlp_logits(p, s, hidden, activation)
                ns, r, term = task.step(s, a)
                term = bool(term[0]) and cart
                rec["obs"].append(s[0]), rec["action"].append(a[0]), rec["reward"].append(r[0])
                rec["next_obs"].append(ns[0]), rec["terminated"].append(term)
                rec["truncated"].append(not term and t == H - 1)
                rec["logp"].append(ref_policy.log_prob(logits, a)[0]), rec["task_id"].append(i)
                ret += r[0]
                s = ns
                if term:
                    break
            rng.random(H - (t + 1))
            lengths[i, e], returns[i, e] = t + 1, ret
    return rec, lengths, returns


@pytest.mark.parametrize("family", [CartPoles(horizon=40), PointNavigation(horizon=12),
                                    PointNavigation(horizon=7, n_directions=4, step_size=0.3)])
@pytest.mark.parametrize("hidden, activation", [((8,), "tanh"), ((), "relu"), ((6, 5), "relu")])
@pytest.mark.parametrize("per_task", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rollout_is_the_plain_loop_over_public_pieces(backend, family, hidden, activation, per_task,
                                                      seed):
    batch = family.sample(4, seed)
    params = _params(batch, hidden, 4 if per_task else 1, seed + 10)
    pot = np.arange(4) if per_task else np.zeros(4, dtype=np.int64)
    r1, r2 = np.random.default_rng(seed + 20), np.random.default_rng(seed + 20)
    traj = rollout_mlp(batch, params if per_task else params[0], 3, r1, hidden=hidden,
                       activation=activation)
    rec, lengths, returns = _loop_rollout(batch, params, pot, hidden, activation, 3, r2)
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id"):
        assert np.array_equal(getattr(traj, name), np.array(rec[name])), name
    if batch.n_actions <= 8:  # the same left-to-right sum as log_prob's: the same bits
        assert np.array_equal(traj.logp, np.array(rec["logp"]))
    else:
        np.testing.assert_allclose(traj.logp, np.array(rec["logp"]), rtol=1e-14, atol=1e-15)
    assert np.array_equal(traj.episode_length, lengths)
    assert np.array_equal(traj.episode_return, returns)
    assert r1.random() == r2.random(), "the two consumed different numbers of draws"
    if isinstance(batch, CartPolesBatch):
        assert (lengths < batch.horizon).any(), "no episode terminated early: the test is too weak"


@pytest.mark.parametrize("family, start_draws", [(CartPoles(horizon=30), 4),
                                                 (PointNavigation(horizon=9), 0)])
def test_a_call_draws_a_fixed_number_of_uniforms(backend, family, start_draws):
    batch = family.sample(5, 0)
    params = _params(batch, (4,), 1, 0)[0]
    rng = np.random.default_rng(7)
    rollout_mlp(batch, params, 3, rng, hidden=(4,))
    expected = np.random.default_rng(7)
    expected.random(5 * 3 * (start_draws + batch.horizon))
    assert rng.bit_generator.state == expected.bit_generator.state


def _check_bookkeeping(traj, batch, n_episodes):
    T, H = batch.n_tasks, batch.horizon
    assert traj.episode_length.shape == traj.episode_return.shape == (T, n_episodes)
    assert np.array_equal(np.diff(traj.episode_start), traj.episode_length.ravel())
    assert traj.n_steps == traj.episode_length.sum() == traj.episode_start[-1]
    assert traj.obs.shape == traj.next_obs.shape == (traj.n_steps, batch.obs_dim)
    assert np.array_equal(traj.task_id, np.repeat(np.arange(T), traj.episode_length.sum(axis=1)))
    for i in range(T):
        for e in range(n_episodes):
            sl = traj.episode(i, e)
            n = sl.stop - sl.start
            assert 1 <= n <= H
            last = sl.stop - 1
            assert traj.terminated[last] != traj.truncated[last], "exactly one at the last step"
            assert not traj.terminated[sl.start:last].any() and not traj.truncated[sl.start:last].any()
            assert traj.truncated[last] == (n == H and not traj.terminated[last])
            assert traj.episode_return[i, e] == sum(traj.reward[sl].tolist())
            assert np.array_equal(traj.next_obs[sl.start:last], traj.obs[sl.start + 1:sl.stop])
    assert np.all(traj.logp <= 0.0) and np.all(np.isfinite(traj.logp))
    assert np.all((traj.action >= 0) & (traj.action < batch.n_actions))


def test_episode_bookkeeping_cartpoles(backend):
    batch = CartPoles(horizon=60).sample(11, 3)
    traj = rollout_mlp(batch, _params(batch, (16,), 11, 1), 4, np.random.default_rng(0), hidden=(16,))
    _check_bookkeeping(traj, batch, 4)
    assert traj.terminated.any()
    assert np.all(traj.reward == 1.0)
    starts = traj.obs[traj.episode_start[:-1]]
    assert np.all(np.abs(starts) <= 0.05)
    term_steps = traj.next_obs[traj.terminated]
    assert np.all((np.abs(term_steps[:, 0]) > 2.4) | (np.abs(term_steps[:, 2]) > 12 * 2 * np.pi / 360))
    assert repr(traj) == (f"ContinuousTrajectories(n_tasks=11, n_episodes=4, n_steps={traj.n_steps}, "
                          f"obs_dim=4)")
    assert len(traj) == traj.n_steps and np.array_equal(traj.done, traj.terminated | traj.truncated)


def test_episode_bookkeeping_point_navigation(backend):
    batch = PointNavigation(horizon=15).sample(6, 3)
    traj = rollout_mlp(batch, _params(batch, (), 1, 1)[0], 2, np.random.default_rng(0), hidden=())
    _check_bookkeeping(traj, batch, 2)
    assert np.all(traj.episode_length == 15) and not traj.terminated.any()
    assert traj.truncated.sum() == 12
    assert np.all(traj.obs[traj.episode_start[:-1]] == 0.0)
    goals = batch.goals[traj.task_id]
    assert np.array_equal(traj.reward, -np.sqrt(((traj.next_obs - goals) ** 2).sum(axis=1)))


@pytest.mark.parametrize("n_tasks, n_episodes", [(70, 4), (3, 300), (257, 1)])
def test_many_episodes_pack_across_chunks(backend, n_tasks, n_episodes):
    """More episodes than one chunk of the compiled kernel holds (256 rows): packed steps, the
    same as the batch split into pieces run one after another from the same stream."""
    batch = CartPoles(horizon=25).sample(n_tasks, 0)
    params = _params(batch, (5,), n_tasks, 2)
    traj = rollout_mlp(batch, params, n_episodes, np.random.default_rng(1), hidden=(5,))
    _check_bookkeeping(traj, batch, n_episodes)
    rng = np.random.default_rng(1)
    cut = n_tasks // 2
    a = rollout_mlp(batch[:cut], params[:cut], n_episodes, rng, hidden=(5,))
    b = rollout_mlp(batch[cut:], params[cut:], n_episodes, rng, hidden=(5,))
    assert np.array_equal(traj.obs, np.concatenate([a.obs, b.obs]))
    assert np.array_equal(traj.logp, np.concatenate([a.logp, b.logp]))
    assert np.array_equal(traj.task_id, np.concatenate([a.task_id, b.task_id + cut]))


def test_which_policy_acts_on_which_task(backend):
    batch = CartPoles(horizon=30).sample(5, 0)
    params = _params(batch, (4,), 3, 0)
    pot = np.array([2, 0, 0, 1, 2])

    def run(p, **kw):
        return rollout_mlp(batch, p, 2, np.random.default_rng(4), hidden=(4,), **kw)

    chosen = run(params, policy_of_task=pot)
    gathered = run(params[pot])  # (T, P): policy i for task i
    for name in ("obs", "action", "logp", "reward"):
        assert np.array_equal(getattr(chosen, name), getattr(gathered, name)), name
    shared = run(params[1])
    assert np.array_equal(shared.logp, run(params[1:2]).logp)
    assert np.array_equal(shared.logp, run(params, policy_of_task=np.ones(5, dtype=np.int64)).logp)
    assert not np.array_equal(shared.action, chosen.action)


def test_float_overflow_raises_and_leaves_the_generator_alone(backend):
    """Finite parameters whose logits overflow once the point has moved (a step of 10 from the
    origin: 1e308 + 10 * 1e308): FloatingPointError, and the Generator as before the call."""
    batch = PointNavigation(horizon=5, step_size=10.0).sample(2, 0)
    params = np.full(_params(batch, (), 1, 0).shape[1], 1e308)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(FloatingPointError, match="logits overflow"):
        rollout_mlp(batch, params, 2, rng, hidden=())
    assert rng.bit_generator.state == state


def _valid():
    batch = CartPoles(horizon=5).sample(3, 0)
    return batch, _params(batch, (4,), 1, 0)[0]


@pytest.mark.parametrize("change, error, match", [
    (dict(batch=CartPoles()), TypeError, "batch must be a PointNavigationBatch or CartPolesBatch"),
    (dict(params=np.zeros(5)), ValueError, "params must have 30 entries per policy"),
    (dict(params=np.zeros((3, 30), dtype=np.float32)), TypeError, "params must have dtype float64"),
    (dict(params=np.full(30, np.nan)), ValueError, "params contains NaN or inf"),
    (dict(params=np.zeros((2, 2, 30))), ValueError, "params must be 1-D"),
    (dict(params=np.zeros((2, 30))), ValueError, "params holds 2 policies for 3 tasks"),
    (dict(params=np.zeros((2, 30)), policy_of_task=[0, 1, 2]), ValueError, "policy_of_task out of range"),
    (dict(policy_of_task=[0, 0]), ValueError, "policy_of_task has length 2"),
    (dict(policy_of_task=[0.0, 0.0, 0.0]), TypeError, "policy_of_task must be an integer array"),
    (dict(n_episodes=0), ValueError, "n_episodes must be >= 1"),
    (dict(n_episodes=2.0), TypeError, "n_episodes must be an int"),
    (dict(n_episodes=10**9), ValueError, "rollout_mlp: n_tasks x n_episodes x horizon"),
    (dict(rng="seed"), TypeError, "rng must be a numpy.random.Generator"),
    (dict(hidden=(0,)), ValueError, r"hidden\[0\] must be in 1..1024"),
    (dict(hidden=8), TypeError, "hidden must be a tuple of ints"),
    (dict(activation="sigmoid"), ValueError, "activation must be one of"),
])
def test_invalid_arguments_are_named(backend, change, error, match):
    batch, params = _valid()
    kwargs = dict(batch=batch, params=params, n_episodes=2, rng=np.random.default_rng(0),
                  hidden=(4,), activation="tanh", policy_of_task=None)
    kwargs.update(change)
    rng = kwargs["rng"]
    state = rng.bit_generator.state if isinstance(rng, np.random.Generator) else None
    with pytest.raises(error, match=match):
        rollout_mlp(kwargs.pop("batch"), kwargs.pop("params"), kwargs.pop("n_episodes"),
                    kwargs.pop("rng"), **kwargs)
    if state is not None:
        assert rng.bit_generator.state == state, "a rejected call drew"


def test_kernels_check_their_own_arguments(backend):
    kernels = _backend.active.continuous_rollout
    batch, params = _valid()
    with pytest.raises(ValueError, match="env_params must hold at least one task"):
        kernels.cartpoles_rollout(np.zeros((0, 5)), params, np.zeros(0, dtype=np.int64), (4,),
                                  "tanh", 1, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        kernels.cartpoles_rollout(batch.params, params, np.zeros(3, dtype=np.int64), (4,), "tanh",
                                  1, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="moves must hold at least one action"):
        kernels.point_navigation_rollout(np.zeros((2, 2)), np.zeros((0, 2)), params,
                                         np.zeros(2, dtype=np.int64), (4,), "tanh", 1, 5,
                                         np.random.default_rng(0))


HOSTILE = """
import numpy as np
import metarl_fast as mf
from metarl_fast.continuous_rollout import rollout_mlp
from metarl_fast.continuous_tasks import CartPoles, PointNavigation
mf.set_backend({backend!r})
k = mf._backend.active.continuous_rollout
cart, point = CartPoles(horizon=8).sample(3, 0), PointNavigation(horizon=8).sample(3, 0)
good = np.zeros(30)
variants = [None, "x", 3, 1e300, np.nan, [], [[]], np.zeros(0), np.zeros((0, 30)), good[::2],
            np.zeros(30, dtype=">f8"), np.zeros(30, dtype=np.int64), np.zeros(30, dtype=object),
            np.full(30, np.inf), np.full(30, -1e308), np.zeros((3, 30), order="F")[:, :],
            np.zeros((30, 3)).T, np.zeros(31), 2**70, -1, True, (4,), (2**40,), (-1,), ("a",)]
bad_pots = [None, [0, 0, 2**63 - 1], [-1, 0, 0], np.zeros(3, dtype=np.uint64) - 1, "abc",
            np.zeros((3, 1), dtype=np.int64), [0, 0, 0, 0]]
calls = []
for v in variants:
    calls += [lambda v=v: rollout_mlp(cart, v, 2, 0, hidden=(4,)),
              lambda v=v: rollout_mlp(point, v, 2, 0, hidden=()),
              lambda v=v: rollout_mlp(cart, good, v, 0, hidden=(4,)),
              lambda v=v: rollout_mlp(cart, good, 2, v, hidden=(4,)),
              lambda v=v: rollout_mlp(cart, good, 2, 0, hidden=v),
              lambda v=v: rollout_mlp(cart, good, 2, 0, hidden=(4,), activation=v),
              lambda v=v: rollout_mlp(v, good, 2, 0, hidden=(4,)),
              lambda v=v: k.cartpoles_rollout(v, good, np.zeros(3, dtype=np.int64), (4,), "tanh", 2, 8,
                                              np.random.default_rng(0)),
              lambda v=v: k.point_navigation_rollout(point.goals, v, np.zeros(18), np.zeros(3, dtype=np.int64),
                                                     (), "tanh", 2, 8, np.random.default_rng(0)),
              lambda v=v: k.cartpoles_rollout(cart.params, good, np.zeros(3, dtype=np.int64), (4,), "tanh", 2, v,
                                              np.random.default_rng(0))]
for pot in bad_pots:
    calls.append(lambda pot=pot: rollout_mlp(cart, np.zeros((3, 30)), 2, 0, hidden=(4,), policy_of_task=pot))
odd = 0
for call in calls:
    try:
        call()
    except (TypeError, ValueError, FloatingPointError) as err:
        assert "\\n" not in str(err), str(err)
    except Exception as err:
        odd += 1
        print("unexpected", type(err).__name__, err)
assert odd == 0
print("ok", len(calls))
"""


@needs_cython
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hostile_arguments_never_crash_a_child_process(backend_name):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(HOSTILE.format(backend=backend_name))],
                          capture_output=True, text=True, timeout=300, cwd=HERE)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1].startswith("ok"), \
        f"exit {proc.returncode} (negative: a signal, the process crashed)\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_public_names():
    import metarl_fast.continuous_rollout as module

    assert module.__all__ == ["ContinuousTrajectories", "rollout_mlp"]
    assert module.ContinuousTrajectories is ContinuousTrajectories
