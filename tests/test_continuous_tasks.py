"""PointNavigation and CartPoles (issue 16): the dynamics against mathematics and Gymnasium, the
families' distributions, the batch containers and the boundary checks, on each backend."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BACKENDS
from metarl_fast import _backend
from metarl_fast.continuous_tasks import CartPoles, CartPolesBatch, PointNavigation, PointNavigationBatch
from metarl_fast.reference import continuous as spec

try:
    import gymnasium  # noqa: F401
    from gymnasium.envs.classic_control import CartPoleEnv
except ImportError:  # pragma: no cover - gymnasium is optional
    CartPoleEnv = None

HERE = os.path.dirname(os.path.abspath(__file__))


def _outs(n, obs_dim):
    return np.full((n, obs_dim), -7.0), np.full(n, -7.0), np.ones(n, dtype=bool)


def _run(policy, batch, rng, steps=None):
    """(return per task, final states) of ``steps`` (default horizon) steps of ``policy(states)``."""
    states = batch.reset_states(rng)
    total = np.zeros(batch.n_tasks)
    for _ in range(batch.horizon if steps is None else steps):
        states, rewards, _ = batch.step(states, policy(states))
        total += rewards
    return total, states


# -- PointNavigation ------------------------------------------------------------------------------

def test_point_moves_are_unit_directions_times_the_step_plus_stay():
    moves = spec.point_navigation_moves(8, 0.1)
    assert moves.shape == (9, 2) and not moves.flags.writeable
    angles = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(moves[:8], 0.1 * np.stack([np.cos(angles), np.sin(angles)], 1), atol=1e-16)
    np.testing.assert_allclose(np.hypot(moves[:8, 0], moves[:8, 1]), 0.1, rtol=1e-15)
    assert np.array_equal(moves[8], [0.0, 0.0])
    # moves along the axes are exact (no 6e-18 leftovers of cos(pi / 2))
    assert np.array_equal(moves[[0, 2, 4, 6]], [[0.1, 0], [0, 0.1], [-0.1, 0], [0, -0.1]])


def test_point_reward_is_minus_the_distance_after_the_move_and_stay_stays(backend, rng):
    batch = PointNavigation().sample(50, 3)
    states = rng.uniform(-1, 1, (50, 2))
    actions = rng.integers(0, batch.n_actions, 50)
    actions[:5] = batch.n_actions - 1  # stay
    new, rewards, terminated = batch.step(states, actions)
    np.testing.assert_array_equal(new, states + batch.moves[actions])
    np.testing.assert_array_equal(new[:5], states[:5])
    np.testing.assert_allclose(rewards, -np.linalg.norm(new - batch.goals, axis=1), rtol=1e-15)
    assert not terminated.any() and new.dtype == rewards.dtype == np.float64


def test_point_reset_is_the_origin_and_draws_nothing(backend):
    batch = PointNavigation().sample(7, 0)
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    states = batch.reset_states(rng)
    assert np.array_equal(states, np.zeros((7, 2))) and rng.bit_generator.state == before


def test_point_goal_on_a_move_ray_gives_the_closed_form_optimum(backend):
    """Goal k steps along a move direction: every step of the straight walk gains the full step,
    so the greedy return is -sum_t max(d0 - t s, 0), which bounds every policy's return."""
    s, k, H = 0.1, 7, 20
    for direction in range(8):
        goal = k * spec.point_navigation_moves(8, s)[direction]
        batch = PointNavigationBatch(goal[None], horizon=H, step_size=s)
        total, _ = _run(lambda st: _greedy(batch, st), batch, 0)
        want = -sum(max(k * s - t * s, 0.0) for t in range(1, H + 1))
        assert total[0] == pytest.approx(want, abs=1e-12)


def _greedy(batch, states):
    """The action whose move lands closest to the goal (ties: the lowest index)."""
    cand = states[:, None, :] + batch.moves[None]
    return np.argmin(np.linalg.norm(cand - batch.goals[:, None, :], axis=2), axis=1)


@pytest.mark.parametrize("n_directions", [4, 8, 16])
def test_point_greedy_return_lies_between_closed_form_bounds(backend, n_directions):
    """No policy beats U = -sum_t max(d0 - t s, 0) (a step moves at most s).  Greedy, with
    c = cos(pi / n): while d >= s a step cuts d by at least s (c - 1/2) (from d'^2 <= d^2 - 2 d s c
    + s^2), and d never grows (stay), so d_t <= max(s, d0 - t s (c - 1/2)): L = -sum_t of that.
    Greedy ends within s / (2 c) of the goal once the horizon is long enough."""
    s = 0.1
    fam = PointNavigation(horizon=60, step_size=s, n_directions=n_directions, goal_low=-1, goal_high=1)
    batch = fam.sample(200, 11)
    total, final = _run(lambda st: _greedy(batch, st), batch, 0)
    d0 = np.linalg.norm(batch.goals, axis=1)
    t = np.arange(1, batch.horizon + 1)[None]
    c = math.cos(math.pi / n_directions)
    upper = -np.maximum(d0[:, None] - t * s, 0).sum(1)
    lower = -np.maximum(s, d0[:, None] - t * s * (c - 0.5)).sum(1)
    assert np.all(total <= upper + 1e-12) and np.all(total >= lower - 1e-12)
    assert np.all(np.linalg.norm(final - batch.goals, axis=1) <= s / (2 * c) + 1e-12)
    # and it is not vacuous: a random policy falls below the greedy one
    random_total, _ = _run(lambda st: np.random.default_rng(1).integers(0, batch.n_actions, 200), batch, 0)
    assert random_total.mean() < total.mean()


def test_point_goals_are_uniform_in_the_square():
    batch = PointNavigation(goal_low=-0.5, goal_high=1.5).sample(20000, 4)
    g = batch.goals
    assert g.min() >= -0.5 and g.max() < 1.5 and g.shape == (20000, 2)
    se = 2.0 / math.sqrt(12 * 20000)
    assert np.all(np.abs(g.mean(axis=0) - 0.5) < 5 * se)
    assert np.all(np.abs(g.std(axis=0) - 2.0 / math.sqrt(12)) < 0.01)
    assert np.array_equal(g, np.random.default_rng(4).uniform(-0.5, 1.5, (20000, 2)))
    assert np.array_equal(PointNavigation(goal_low=0.25, goal_high=0.25).sample(3, 0).goals, np.full((3, 2), 0.25))


# -- CartPoles ------------------------------------------------------------------------------------

@pytest.mark.skipif(CartPoleEnv is None, reason="gymnasium is not installed: nothing to compare with")
def test_cartpoles_at_gymnasium_defaults_reproduce_cartpoleenv_step(backend):
    """200 trajectories (random or noisy balancing actions, starts from reset) against CartPoleEnv.step on
    the same state: next state (Gymnasium keeps it in float64) within 1e-12, reward, terminated."""
    n = 200
    batch = CartPoles.gymnasium_defaults().sample(n, 0)
    rng = np.random.default_rng(9)
    states = batch.reset_states(rng)
    envs = [CartPoleEnv() for _ in range(n)]
    for e in envs:
        e.reset(seed=0)
    alive = np.ones(n, dtype=bool)
    compared = 0
    for _ in range(300):
        # odd tasks push at random, even ones mostly balance the pole (long trajectories)
        balance = (states[:, 2] + 0.5 * states[:, 3] > 0).astype(np.int64)
        actions = np.where((np.arange(n) % 2 == 0) & (rng.random(n) < 0.9), balance, rng.integers(0, 2, n))
        new, rewards, terminated = batch.step(states, actions)
        for i in np.flatnonzero(alive):
            envs[i].state = states[i].copy()
            envs[i].steps_beyond_terminated = None
            _, r, term, trunc, _ = envs[i].step(int(actions[i]))
            np.testing.assert_allclose(new[i], envs[i].state, rtol=0, atol=1e-12)
            assert (r, term, trunc) == (rewards[i], terminated[i], False)
            compared += 1
        alive &= ~terminated
        states = new
    assert compared > 10000 and not alive.all()


def test_cartpoles_reset_draws_gymnasiums_uniforms_in_task_order(backend):
    batch = CartPoles().sample(33, 1)
    states = batch.reset_states(np.random.default_rng(8))
    assert np.array_equal(states, np.random.default_rng(8).uniform(-0.05, 0.05, (33, 4)))
    out = np.empty((33, 4))
    assert batch.reset_states(8, out=out) is out and np.array_equal(out, states)


def test_cartpoles_terminate_exactly_beyond_the_thresholds(backend):
    """Zero velocities keep x and theta, so the state after the step is the state given: inside
    or on a threshold is alive, a hair beyond terminates (with reward 1, the terminating step)."""
    thr, xt = spec.CARTPOLE_THETA_THRESHOLD, spec.CARTPOLE_X_THRESHOLD
    assert thr == 12 * 2 * math.pi / 360 and xt == 2.4
    batch = CartPoles.gymnasium_defaults()
    xs = [xt, -xt, 0.0, 0.0]
    ths = [0.0, 0.0, thr, -thr]
    for x, th in zip(xs, ths):
        b = batch.sample(1, 0)
        # the pole accelerates, but a velocity step of tau * 0 leaves theta/x at the threshold
        s = np.array([[x, 0.0, th, 0.0]])
        new, r, term = b.step(s, [0])
        assert new[0, 0] == x and new[0, 2] == th and r[0] == 1.0 and not term[0]
    x_out = np.array([[np.nextafter(xt, 9), 0, 0, 0], [0, 0, np.nextafter(-thr, -9), 0]])
    # a state that moves past the threshold during the step terminates with reward 1
    crossing = np.array([[2.39, 1.0, 0.0, 0.0], [0.0, 0.0, thr - 1e-4, 0.1]])
    new, r, term = CartPolesBatch(np.tile(spec.CARTPOLE_DEFAULTS, (2, 1))).step(crossing, [1, 1])
    assert term.all() and np.array_equal(r, [1.0, 1.0]) and new[0, 0] > xt and new[1, 2] > thr
    # a state already beyond is absorbing: unchanged, reward 0, still terminated
    new, r, term = CartPolesBatch(np.tile(spec.CARTPOLE_DEFAULTS, (2, 1))).step(x_out, [1, 0])
    assert np.array_equal(new, x_out) and np.array_equal(r, [0.0, 0.0]) and term.all()


def test_cartpoles_episode_after_termination_stays_absorbed(backend):
    batch = CartPoles().sample(64, 2)
    rng = np.random.default_rng(3)
    states = batch.reset_states(rng)
    done = np.zeros(64, dtype=bool)
    for _ in range(200):
        frozen = states.copy()
        states, rewards, terminated = batch.step(states, rng.integers(0, 2, 64))
        assert np.array_equal(states[done], frozen[done]) and np.all(rewards[done] == 0.0)
        assert np.all(rewards[~done] == 1.0) and np.all(terminated[done])
        done |= terminated
    assert done.all()


def test_cartpoles_parameters_drawn_from_their_ranges():
    fam = CartPoles(gravity=(1.0, 2.0), masscart=0.7, masspole=(0.05, 0.15), length=(0.3, 0.3))
    batch = fam.sample(5000, 6)
    assert batch.params.shape == (5000, 5) and not batch.params.flags.writeable
    assert np.all(batch.masscart == 0.7) and np.all(batch.length == 0.3)
    for name, (lo, hi) in (("gravity", (1.0, 2.0)), ("masspole", (0.05, 0.15))):
        col = getattr(batch, name)
        assert col.min() >= lo and col.max() <= hi and not col.flags.writeable
        assert abs(col.mean() - (lo + hi) / 2) < 5 * (hi - lo) / math.sqrt(12 * 5000)
    assert np.array_equal(batch.params, CartPoles(gravity=(1.0, 2.0), masscart=0.7, masspole=(0.05, 0.15),
                                                  length=(0.3, 0.3)).sample(5000, 6).params)
    defaults = CartPoles().sample(2000, 0).params
    np.testing.assert_allclose(defaults.mean(0), spec.CARTPOLE_DEFAULTS, rtol=0.05)
    assert np.all(defaults >= 0.5 * np.array(spec.CARTPOLE_DEFAULTS) * (1 - 1e-12))
    assert np.all(defaults <= 1.5 * np.array(spec.CARTPOLE_DEFAULTS) * (1 + 1e-12))


def test_cartpoles_physics_depend_on_each_parameter(backend):
    """Changing one parameter changes the step (a kernel that read the wrong column would not)."""
    base = np.array(spec.CARTPOLE_DEFAULTS)
    s = np.array([[0.1, 0.2, 0.05, -0.3]])
    ref_next, _, _ = CartPolesBatch(base[None]).step(s, [1])
    for j in range(5):
        p = base.copy()
        p[j] *= 1.3
        new, _, _ = CartPolesBatch(p[None]).step(s, [1])
        assert not np.array_equal(new, ref_next), spec.CARTPOLE_PARAMS[j]


# -- batches ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fam", [PointNavigation(), CartPoles()], ids=["point", "cartpoles"])
def test_batches_index_len_repr_and_reproducibility(fam):
    batch = fam.sample(6, 0)
    assert len(batch) == batch.n_tasks == 6
    assert (batch.obs_dim, batch.n_actions) == ((2, 9) if isinstance(fam, PointNavigation) else (4, 2))
    assert batch.horizon == fam.horizon and "n_tasks=6" in repr(batch) and repr(fam).startswith(type(fam).__name__)
    key = "goals" if isinstance(fam, PointNavigation) else "params"
    table = getattr(batch, key)
    assert table.dtype == np.float64 and not table.flags.writeable
    with pytest.raises(ValueError, match="read-only|WRITEABLE|writeable"):
        table.setflags(write=True)
    assert np.array_equal(getattr(batch[-1], key), table[5:6]) and batch[2].n_tasks == 1
    assert np.array_equal(getattr(batch[1:4], key), table[1:4])
    assert np.array_equal(getattr(batch[[5, 0]], key), table[[5, 0]])
    assert np.array_equal(table, getattr(fam.sample(6, np.random.default_rng(0)), key))
    with pytest.raises(IndexError, match="out of range"):
        batch[6]
    with pytest.raises(ValueError, match="at least one task"):
        batch[3:3]
    with pytest.raises(ValueError, match="n must be >= 1"):
        fam.sample(0, 0)
    with pytest.raises(TypeError, match="rng must be"):
        fam.sample(2, "seed")


@pytest.mark.parametrize("make, match, err", [
    (lambda: PointNavigation(horizon=0), "horizon must be >= 1", ValueError),
    (lambda: PointNavigation(horizon=2.0), "horizon must be an int", TypeError),
    (lambda: PointNavigation(goal_low=1.0, goal_high=0.0), "goal_low must be <= goal_high", ValueError),
    (lambda: PointNavigation(goal_low=float("nan")), "goal_low must be finite", ValueError),
    (lambda: PointNavigation(goal_high=1e7), "goal_high must be <=", ValueError),
    (lambda: PointNavigation(step_size=0.0), "step_size must be >", ValueError),
    (lambda: PointNavigation(step_size="1"), "step_size must be a real number", TypeError),
    (lambda: PointNavigation(n_directions=0), "n_directions must be >= 1", ValueError),
    (lambda: CartPoles(horizon=-1), "horizon must be >= 1", ValueError),
    (lambda: CartPoles(gravity=(2.0, 1.0)), "gravity must be a range", ValueError),
    (lambda: CartPoles(masscart=(0.0, 1.0)), r"masscart\[0\] must be >=", ValueError),
    (lambda: CartPoles(length=(0.5, float("inf"))), r"length\[1\] must be finite", ValueError),
    (lambda: CartPoles(force_mag=(1, 2, 3)), "force_mag must be a pair", TypeError),
    (lambda: CartPoles(masspole="0.1"), "masspole must be a pair", TypeError),
    (lambda: CartPolesBatch(np.ones((2, 4))), r"params must have shape \(n, 5\)", ValueError),
    (lambda: CartPolesBatch(np.ones((0, 5))), "at least one task", ValueError),
    (lambda: CartPolesBatch(np.full((1, 5), np.nan)), "params must be finite", ValueError),
    (lambda: CartPolesBatch(np.ones((1, 5)), horizon=0), "horizon must be >= 1", ValueError),
    (lambda: PointNavigationBatch(np.ones((2, 3))), r"goals must have shape \(n, 2\)", ValueError),
    (lambda: PointNavigationBatch(np.ones((2, 2), dtype=np.float32)), "goals must have dtype float64", TypeError),
])
def test_constructors_reject_bad_arguments(make, match, err):
    with pytest.raises(err, match=match):
        make()


def _step_args(kind, n=3):
    rng = np.random.default_rng(0)
    if kind == "cartpoles":
        params = np.tile(spec.CARTPOLE_DEFAULTS, (n, 1))
        return "cartpoles_step", [params, rng.uniform(-0.05, 0.05, (n, 4)), rng.integers(0, 2, n), *_outs(n, 4)]
    goals = rng.uniform(-0.5, 0.5, (n, 2))
    return "point_navigation_step", [goals, spec.point_navigation_moves(8, 0.1), rng.uniform(-1, 1, (n, 2)),
                                     rng.integers(0, 9, n), *_outs(n, 2)]


def _shift_out_over_states(args, s):
    """out_states one element further along the buffer that holds states (partial overlap)."""
    shape = args[s].shape
    base = np.zeros(args[s].size + 1)
    args[s], args[-3] = base[:-1].reshape(shape), base[1:].reshape(shape)


# (label, how to spoil the valid arguments in place, error, match)
_S = {"cartpoles": 1, "point": 2}   # where states sit
_A = {"cartpoles": 2, "point": 3}   # where actions sit
BAD_STEP_ARGS = [
    ("states float32", lambda k, a: a.__setitem__(_S[k], a[_S[k]].astype(np.float32)), TypeError, "states must have dtype float64"),
    ("states shape", lambda k, a: a.__setitem__(_S[k], a[_S[k]][:2]), ValueError, "states must have shape"),
    ("states nan", lambda k, a: a[_S[k]].__setitem__((1, 0), np.nan), ValueError, r"states\[1, 0\] = nan"),
    ("states inf", lambda k, a: a[_S[k]].__setitem__((2, 1), np.inf), ValueError, r"states\[2, 1\] = inf"),
    ("states huge", lambda k, a: a[_S[k]].__setitem__((0, 1), 1e101), ValueError, r"\|value\| <= 1e\+100"),
    ("actions high", lambda k, a: a[_A[k]].__setitem__(0, 99), ValueError, "actions out of range"),
    ("actions negative", lambda k, a: a[_A[k]].__setitem__(1, -1), ValueError, "actions out of range"),
    ("actions float", lambda k, a: a.__setitem__(_A[k], a[_A[k]].astype(float)), TypeError, "actions must be an integer array"),
    ("actions length", lambda k, a: a.__setitem__(_A[k], a[_A[k]][:1]), ValueError, "actions has length 1"),
    ("out_states dtype", lambda k, a: a.__setitem__(-3, a[-3].astype(np.float32)), TypeError, "out_states must have dtype"),
    ("out_rewards shape", lambda k, a: a.__setitem__(-2, np.empty(7)), ValueError, "out_rewards must have shape"),
    ("out_terminated dtype", lambda k, a: a.__setitem__(-1, np.empty(3, np.uint8)), TypeError, "out_terminated must have dtype bool"),
    ("out_states strided", lambda k, a: a.__setitem__(-3, np.empty((6, a[-3].shape[1]))[::2]), ValueError, "out_states must be C-contiguous"),
    ("out_rewards read-only", lambda k, a: a[-2].setflags(write=False), ValueError, "out_rewards must be writeable"),
    ("out_rewards misaligned", lambda k, a: a.__setitem__(-2, np.zeros(25, np.uint8)[1:].view(np.float64)), ValueError, "out_rewards must be aligned"),
    ("out_rewards list", lambda k, a: a.__setitem__(-2, [0.0] * 3), TypeError, "out_rewards must be a numpy.ndarray"),
    ("out aliasing", lambda k, a: a.__setitem__(-2, a[-3].reshape(-1)[:3]), ValueError, "out_rewards overlaps out_states"),
    ("out overlaps input", lambda k, a: a.__setitem__(-2, a[_S[k]].reshape(-1)[1:4]), ValueError, "out_rewards overlaps states"),
    ("out_states shifted over states", lambda k, a: _shift_out_over_states(a, _S[k]), ValueError, "out_states overlaps states"),
    ("first array None", lambda k, a: a.__setitem__(0, None), TypeError, "got None"),
]


@pytest.mark.parametrize("kind", ["cartpoles", "point"])
@pytest.mark.parametrize("label, spoil, err, match", BAD_STEP_ARGS, ids=[b[0] for b in BAD_STEP_ARGS])
def test_step_kernels_reject_bad_arguments_and_write_nothing(backend, kind, label, spoil, err, match):
    name, args = _step_args(kind)
    spoil(kind, args)
    outs = [np.array(o, copy=True) if isinstance(o, np.ndarray) else o for o in args[-3:]]
    with pytest.raises(err, match=match):
        getattr(_backend.active.continuous, name)(*args)
    for before, after in zip(outs, args[-3:]):
        if isinstance(before, np.ndarray) and isinstance(after, np.ndarray):
            assert np.array_equal(before, after), "a rejected call wrote its outputs"


@pytest.mark.parametrize("kind", ["cartpoles", "point"])
def test_step_kernels_accept_lists_strided_and_byteswapped_inputs_and_step_in_place(backend, kind):
    name, args = _step_args(kind, n=5)
    fn = getattr(_backend.active.continuous, name)
    fn(*args)
    want = [o.copy() for o in args[-3:]]
    s, a = _S[kind], _A[kind]
    for convert in (lambda x: x.tolist(), lambda x: np.repeat(x, 2, axis=0)[::2],
                    lambda x: x.astype(x.dtype.newbyteorder()), np.asfortranarray):
        again = list(args)
        again[s], again[a] = convert(args[s]), convert(args[a])
        again[-3:] = _outs(5, args[s].shape[1])
        fn(*again)
        for w, got in zip(want, again[-3:]):
            assert np.array_equal(w, got)
    states = args[s].copy()
    in_place = list(args)
    in_place[s] = states
    in_place[-3:] = [states, np.empty(5), np.empty(5, dtype=bool)]
    fn(*in_place)
    assert np.array_equal(states, want[0]) and np.array_equal(in_place[-2], want[1])


def test_step_kernels_reject_bad_tables(backend):
    ops = _backend.active.continuous
    name, args = _step_args("cartpoles")
    bad = args[0].copy()
    bad[1, 2] = 0.0  # masspole 0
    with pytest.raises(ValueError, match=r"params\[1, 2\] \(masspole\) = 0.0 is outside"):
        ops.cartpoles_step(bad, *args[1:])
    bad = args[0].copy()
    bad[0, 4] = np.nan
    with pytest.raises(ValueError, match="params must be finite"):
        ops.cartpoles_step(bad, *args[1:])
    with pytest.raises(ValueError, match=r"params must have shape \(n, 5\)"):
        ops.cartpoles_step(args[0][:, :4].copy(), *args[1:])
    name, args = _step_args("point")
    with pytest.raises(ValueError, match=r"\|goal\| <= 1e\+06"):
        ops.point_navigation_step(args[0] * 1e7, *args[1:])
    with pytest.raises(ValueError, match="moves must hold at least one action"):
        ops.point_navigation_step(args[0], args[1][:0], *args[2:])
    with pytest.raises(ValueError, match=r"\|move\| <= 1e\+06"):
        ops.point_navigation_step(args[0], args[1] * 1e8, *args[2:])
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        ops.cartpoles_reset(np.ones((2, 5)), 0)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\)"):
        ops.cartpoles_reset(np.ones((2, 5)), np.random.default_rng(0), out=np.empty((2, 2)))
    with pytest.raises(TypeError, match="out must be None or a tuple"):
        CartPoles().sample(2, 0).step(np.zeros((2, 4)), [0, 1], out=[1, 2, 3])


def test_empty_batches_step_to_nothing(backend):
    ops = _backend.active.continuous
    ops.cartpoles_step(np.empty((0, 5)), np.empty((0, 4)), np.empty(0, np.int64), *_outs(0, 4))
    ops.point_navigation_step(np.empty((0, 2)), spec.point_navigation_moves(4, 1.0), np.empty((0, 2)),
                              np.empty(0, np.int64), *_outs(0, 2))
    assert ops.cartpoles_reset(np.empty((0, 5)), np.random.default_rng(0)).shape == (0, 4)


HOSTILE_CHILD = r"""
import json, sys
import numpy as np
import metarl_fast as mf
import hostile_sweep as hs
from metarl_fast import _backend
from metarl_fast.continuous_tasks import CartPoles, PointNavigation
from metarl_fast.reference import continuous as spec

mf.set_backend(sys.argv[1])
ops = _backend.active.continuous

def step_entry(name, args):
    def make():
        fresh = [a.copy() if isinstance(a, np.ndarray) and a.flags.writeable else a for a in args]
        return getattr(ops, name), fresh, {}, lambda: tuple(o.copy() for o in fresh[-3:])
    return make

def entries():
    rng = np.random.default_rng(0)
    n = 4
    params = np.tile(spec.CARTPOLE_DEFAULTS, (n, 1))
    goals = rng.uniform(-0.5, 0.5, (n, 2))
    moves = np.array(spec.point_navigation_moves(8, 0.1))
    out = {
        "cartpoles_step": step_entry("cartpoles_step", [params, rng.uniform(-0.05, 0.05, (n, 4)),
                                     rng.integers(0, 2, n), np.zeros((n, 4)), np.zeros(n), np.zeros(n, bool)]),
        "point_navigation_step": step_entry("point_navigation_step", [goals, moves, rng.uniform(-1, 1, (n, 2)),
                                            rng.integers(0, 9, n), np.zeros((n, 2)), np.zeros(n), np.zeros(n, bool)]),
    }
    def reset_entry(name, table):
        def make():
            r = np.random.default_rng(0)
            o = np.zeros((n, 4 if name == "cartpoles_reset" else 2))
            return getattr(ops, name), [table.copy(), r], {"out": o}, lambda: (o.copy(), str(r.bit_generator.state))
        return make
    out["cartpoles_reset"] = reset_entry("cartpoles_reset", params)
    out["point_navigation_reset"] = reset_entry("point_navigation_reset", goals)
    for fam in (CartPoles(), PointNavigation()):
        def make(fam=fam):
            b = fam.sample(n, 0)
            s = b.reset_states(0) + 0.01
            return b.step, [s, np.zeros(n, np.int64)], {}, lambda: s.copy()
        out[f"{type(fam).__name__}.step"] = make
    return out

hs._entries = entries
findings = []
hs.sweep(findings)
hs.hypothesis_sweep(findings, int(sys.argv[2]))
print(json.dumps(findings[:40]))
"""


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_hostile_inputs_raise_cleanly_in_a_child_process(backend_name):
    """tests/hostile_sweep.py's catalogue (None, every dtype, byte-swapped, strided, Fortran,
    misaligned, read-only, empty, extra axes, NaN, infinities, extremes, huge ints, ...) and
    Hypothesis arrays for every argument of the kernels and batch steps: TypeError/ValueError with
    a one-line message, nothing written by a rejected call, no crash (a signal fails here)."""
    proc = subprocess.run([sys.executable, "-c", HOSTILE_CHILD, backend_name, "25"], capture_output=True,
                          text=True, timeout=600, cwd=HERE)
    assert proc.returncode == 0, f"the child died (exit {proc.returncode})\n{proc.stderr[-3000:]}"
    findings = json.loads(proc.stdout.strip().splitlines()[-1])
    assert findings == [], json.dumps(findings, indent=1)
