"""The fused RL^2 trial rollout with a GRU policy (metarl_fast.rl2, issue 17): semantics against
a plain per-trial loop of public pieces, twin parity, the hidden state's carry and reset, the
draw order, validation."""
import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import rl2
from metarl_fast.reference import gru as ref_gru
from metarl_fast.reference import policy as ref_policy
from metarl_fast.tasks import BernoulliBandits, GridNavigation, TabularMDPs, TaskBatch

from conftest import needs_cython

HIDDEN = 8


def _custom_batch(rng, n, S, A, horizon, kind):
    """Random tasks with a random start, terminal states and ``kind`` rewards."""
    P = rng.dirichlet(np.ones(S), (n, S, A))
    start = rng.dirichlet(np.ones(S), n)
    terminal = rng.random((n, S)) < 0.3
    terminal[:, 0] = False
    kw = {}
    if kind == "outcome":
        kw = dict(reward_values=rng.normal(size=(n, S, A, S, 3)),
                  reward_probs=rng.dirichlet(np.ones(3), (n, S, A, S)))
        R = None
    elif kind == "transition":
        kw = dict(reward_next=rng.normal(size=(n, S, A, S)))
        R = None
    else:
        R = rng.random((n, S, A))
    return TaskBatch(P, R, horizon, start=start, terminal=terminal, reward_noise=kind, **kw)


def _batches(seed):
    rng = np.random.default_rng(seed)
    out = [(BernoulliBandits(int(rng.integers(2, 6)), horizon=int(rng.integers(1, 6))).sample(
                int(rng.integers(1, 6)), rng), int(rng.integers(1, 4)))]
    for S in (2, 4, 6):
        out.append((TabularMDPs(S, int(rng.integers(2, 4)), horizon=int(rng.integers(1, 5))).sample(
            int(rng.integers(1, 6)), rng), int(rng.integers(1, 4))))
    out.append((GridNavigation(3, horizon=4).sample(int(rng.integers(2, 7)), rng), 3))
    for kind in ("outcome", "transition", "bernoulli", "none"):
        out.append((_custom_batch(rng, int(rng.integers(1, 5)), int(rng.integers(2, 5)),
                                  int(rng.integers(1, 4)), int(rng.integers(1, 5)), kind), 2))
    return out


def _params(batch, seed, scale=1.0):
    D = rl2.rl2_input_dim(batch.n_states, batch.n_actions)
    return scale * ref_gru.gru_init(D, HIDDEN, batch.n_actions, np.random.default_rng(seed))


def _count_le(cdf, u):
    return int(np.count_nonzero(cdf[:-1] <= u * cdf[-1]))


def _plain_trials(batch, params, N, seed):
    """The specification as a plain loop: trial by trial, step by step, ``gru_step_act`` on one row
    with a Generator advanced to the step's action uniform, and one environment step built from
    the batch's tables with the documented blocks.  Returns (per-step records, final Generator)."""
    t = batch.tables
    T, S, A, H = t.n_tasks, t.n_states, t.n_actions, t.horizon
    gen = np.random.default_rng(seed)
    u_start = gen.random((T, N)) if t.stochastic_start else None
    act_offset = T * N if t.stochastic_start else 0  # the action block's place in the stream
    gen.random((T, N, H))
    noise = None
    if t.reward_kind == 1:
        noise = gen.standard_normal((T, N, H))
    elif t.reward_kind == 2:
        noise = gen.random((T, N, H))
    u_next = gen.random((T, N, H)) if t.stochastic_transitions else None
    u_reward = gen.random((T, N, H)) if t.reward_kind == 4 else None
    steps = []
    for i in range(T):
        h = np.zeros((1, HIDDEN))  # reset at the trial's start only
        a_prev, r_prev, done_prev = None, 0.0, 0.0
        for e in range(N):
            s = (_count_le(t.start_cdf[i], u_start[i, e]) if t.stochastic_start
                 else int(t.start_state[i]))
            for step in range(H):
                x = np.zeros(S + A + 2)
                x[s] = 1.0
                if a_prev is not None:
                    x[S + a_prev] = 1.0
                x[S + A], x[S + A + 1] = r_prev, done_prev
                bitgen = np.random.PCG64(seed)
                bitgen.advance(act_offset + (i * N + e) * H + step)
                actions, logits, values, h = ref_gru.gru_step_act(params, x[None], h,
                                                                  np.random.Generator(bitgen))
                a = int(actions[0])
                mean = t.reward_mean[i, s, a]
                if t.stochastic_transitions:
                    s2 = _count_le(t.trans_cdf_padded[i, s, a], u_next[i, e, step])
                else:
                    s2 = int(t.next_state[i, s, a])
                if t.reward_kind == 1:
                    r = mean + t.reward_std[i] * noise[i, e, step]
                elif t.reward_kind == 2:
                    r = 1.0 if noise[i, e, step] < mean else 0.0
                elif t.reward_kind == 3:
                    r = t.reward_next[i, s, a, s2]
                elif t.reward_kind == 4:
                    k = _count_le(t.reward_cdf[i, s, a, s2], u_reward[i, e, step])
                    r = t.reward_values[i, s, a, s2, k]
                else:
                    r = mean
                ends = bool(t.terminal[i, s2])
                cut = not ends and step == H - 1
                logp = ref_policy.log_prob(logits, np.array([a]))[0]
                steps.append((s, a, r, ends, cut, logp, values[0], i, e, x))
                a_prev, r_prev, done_prev = a, r, float(ends or cut)
                s = s2
                if ends or cut:
                    break
    return steps, gen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_per_trial_loop(backend, seed):
    for k, (batch, N) in enumerate(_batches(seed)):
        params = _params(batch, seed + 10 * k, scale=3.0)
        rng = np.random.default_rng(seed)
        out = rl2.rl2_rollout(batch, params, HIDDEN, N, rng)
        steps, gen = _plain_trials(batch, params, N, seed)
        cols = list(zip(*steps))
        for field, want in zip(("obs", "action", "reward", "terminated", "truncated"), cols[:5]):
            assert np.array_equal(getattr(out, field), np.array(want)), (k, field)
        np.testing.assert_allclose(out.logp, cols[5], rtol=1e-12, atol=1e-14)
        assert np.array_equal(out.value, np.array(cols[6]))
        assert np.array_equal(out.trial_id, np.array(cols[7]))
        assert np.array_equal(out.episode_id, np.array(cols[8]))
        assert np.array_equal(out.trial_length, np.bincount(cols[7], minlength=batch.n_tasks))
        trial_return = np.zeros(batch.n_tasks)
        for r, i in zip(cols[2], cols[7]):
            trial_return[i] += r
        assert np.array_equal(out.trial_return, trial_return)
        # the GRU inputs, in the flat order through the mask
        assert np.array_equal(out.inputs.transpose(1, 0, 2)[out.mask.T], np.array(cols[9]))
        assert rng.bit_generator.state == gen.bit_generator.state


def test_equal_logits_act_as_uniform_tabular_rollout(backend):
    """A GRU with a zero output head (equal logits) takes exactly the actions of the tabular
    rollout's uniform policy: the draw order is rollout's."""
    for batch, N in _batches(7):
        params = _params(batch, 3)
        layout, _ = ref_gru.gru_layout(rl2.rl2_input_dim(batch.n_states, batch.n_actions), HIDDEN,
                                       batch.n_actions)
        off = layout["W_out"][0]
        params[off:] = 0.0
        rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
        out = rl2.rl2_rollout(batch, params, HIDDEN, N, rng_a)
        policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions, dtype=np.float64)
        traj = mf.rollout(policy, batch, N, rng_b)
        for field in ("obs", "action", "reward", "terminated", "truncated"):
            assert np.array_equal(getattr(out, field), getattr(traj, field)), field
        assert np.array_equal(out.trial_id, traj.task_id)
        np.testing.assert_allclose(out.logp, traj.logp, rtol=1e-13)
        assert rng_a.bit_generator.state == rng_b.bit_generator.state


@needs_cython
@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_twins_bit_identical(seed):
    from metarl_fast._core import rl2 as fast
    from metarl_fast.reference import rl2 as ref
    for k, (batch, N) in enumerate(_batches(seed)):
        params = _params(batch, seed + k, scale=2.0)
        rng_ref, rng_fast = np.random.default_rng(seed), np.random.default_rng(seed)
        a = ref.rl2_rollout(batch.tables, params, HIDDEN, N, rng_ref)
        b = fast.rl2_rollout(batch.tables, params, HIDDEN, N, rng_fast)
        for field, x, y in zip(a._fields, a, b):
            assert x.dtype == y.dtype and x.shape == y.shape, field
            assert np.array_equal(x, y), field
        assert rng_ref.bit_generator.state == rng_fast.bit_generator.state


def _episode_resets(out):
    """Resets at every episode's first step (the wrong semantics for RL^2)."""
    resets = np.zeros(out.mask.shape, dtype=bool)
    done = out.terminated | out.truncated
    first = np.concatenate([[True], done[:-1]])
    step = np.concatenate([np.arange(n) for n in out.trial_length])
    resets[step[first], out.trial_id[first]] = True
    return resets


def test_hidden_state_carried_across_episodes_and_reset_per_trial(backend):
    batch = BernoulliBandits(3, horizon=4).sample(5, np.random.default_rng(0))
    params = _params(batch, 1, scale=2.0)
    out = rl2.rl2_rollout(batch, params, HIDDEN, 3, np.random.default_rng(2))
    h0 = np.zeros((batch.n_tasks, HIDDEN))
    assert out.resets[0].all() and not out.resets[1:].any()
    # the rollout's values are those of a GRU reset at each trial's start only ...
    logits, values, _ = ref_gru.gru_forward(params, out.inputs, h0, out.resets)
    assert np.array_equal(values.T[out.mask.T], out.value)
    np.testing.assert_allclose(ref_policy.log_prob(logits.transpose(1, 0, 2)[out.mask.T],
                                                   out.action), out.logp, rtol=1e-12)
    # ... and not those of one reset at every episode's start (they differ after episode 0)
    _, per_episode, _ = ref_gru.gru_forward(params, out.inputs, h0, _episode_resets(out))
    later = out.episode_id > 0
    assert not np.allclose(per_episode.T[out.mask.T][later], out.value[later])
    # every trial starts from the zero state: its first value is the GRU's on x_0 from zero
    first = np.concatenate([[0], np.cumsum(out.trial_length)[:-1]])
    _, _, v0, _ = ref_gru.gru_step_act(params, out.inputs[0], h0, np.random.default_rng(0))
    assert np.array_equal(out.value[first], v0)


def test_grid_trials_have_unequal_lengths(backend):
    """Terminal states end episodes early: trials run for different step counts in lockstep."""
    batch = GridNavigation(3, horizon=6).sample(8, np.random.default_rng(4))
    out = rl2.rl2_rollout(batch, _params(batch, 0, scale=0.0), HIDDEN, 4, np.random.default_rng(4))
    assert len(set(out.trial_length.tolist())) > 1
    assert out.mask.shape == (out.trial_length.max(), 8)
    assert np.array_equal(out.mask.sum(axis=0), out.trial_length)
    assert np.array_equal(np.bincount(out.trial_id * 4 + out.episode_id, minlength=32) > 0,
                          np.ones(32, dtype=bool))
    done = out.terminated | out.truncated
    assert np.array_equal(np.bincount(out.trial_id[done], minlength=8), np.full(8, 4))
    assert np.array_equal(out.inputs[..., -1].T[out.mask.T][1:],
                          np.where(out.trial_id[1:] == out.trial_id[:-1], done[:-1], False))


def test_validation(backend):
    batch = BernoulliBandits(3, horizon=2).sample(2, np.random.default_rng(0))
    params = _params(batch, 0)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(TypeError, match="task_batch must be a metarl_fast.tasks.TaskBatch"):
        rl2.rl2_rollout(batch.tables, params, HIDDEN, 1, rng)
    with pytest.raises(ValueError, match="params has size 10 but the GRU of this rollout"):
        rl2.rl2_rollout(batch, params[:10], HIDDEN, 1, rng)
    with pytest.raises(ValueError, match=r"params has size \d+ but .*hidden=4"):
        rl2.rl2_rollout(batch, params, 4, 1, rng)
    with pytest.raises(TypeError, match="params must be float64"):
        rl2.rl2_rollout(batch, params.astype(np.float32), HIDDEN, 1, rng)
    bad = params.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="params contains NaN or inf"):
        rl2.rl2_rollout(batch, bad, HIDDEN, 1, rng)
    with pytest.raises(ValueError, match="hidden must be in 1..512"):
        rl2.rl2_rollout(batch, params, 513, 1, rng)
    with pytest.raises(ValueError, match="hidden"):
        rl2.rl2_rollout(batch, params, 0, 1, rng)
    with pytest.raises(ValueError, match="n_episodes_per_trial"):
        rl2.rl2_rollout(batch, params, HIDDEN, 0, rng)
    with pytest.raises(TypeError, match="rng must be"):
        rl2.rl2_rollout(batch, params, HIDDEN, 1, "seed")
    with pytest.raises(ValueError, match="n_states"):
        rl2.rl2_input_dim(0, 3)
    assert rng.bit_generator.state == state  # a rejected call draws nothing


def test_overflow_raises(backend):
    batch = BernoulliBandits(3, horizon=2).sample(2, np.random.default_rng(0))
    params = _params(batch, 0)
    layout, _ = ref_gru.gru_layout(rl2.rl2_input_dim(1, 3), HIDDEN, 3)
    bx, wo = layout["b_x"][0], layout["W_out"][0]
    params[bx + HIDDEN:bx + 2 * HIDDEN] = -1e300  # z = 0
    params[bx + 2 * HIDDEN:bx + 3 * HIDDEN] = 1e300  # n = 1, so h = 1
    params[wo:wo + HIDDEN * 4] = 1e308  # logits = b + 8e308: inf
    with pytest.raises(FloatingPointError, match="overflow the float64 range"):
        rl2.rl2_rollout(batch, params, HIDDEN, 1, np.random.default_rng(0))


def test_int_seed_is_reproducible(backend):
    batch = TabularMDPs(3, 2, horizon=3).sample(3, np.random.default_rng(0))
    params = _params(batch, 0)
    a = rl2.rl2_rollout(batch, params, HIDDEN, 2, 5)
    b = rl2.rl2_rollout(batch, params, HIDDEN, 2, np.random.default_rng(5))
    assert np.array_equal(a.action, b.action) and np.array_equal(a.reward, b.reward)
