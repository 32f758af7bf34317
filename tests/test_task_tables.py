"""Tasks in the form their kernels read: next-state tables for deterministic families, the dense
``P`` built only when asked for, kernel tables identical to those of the dense representation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from metarl_fast._core import envs as core_envs
from metarl_fast.reference import envs as reference_envs
from metarl_fast.rollout import rollout
from metarl_fast.tasks import (BernoulliBandits, Chain, EnvTables, GridNavigation, TabularMDPs,
                               TaskBatch, _draw_index, guide_buckets, padded_cdf_rows)

FAMILIES = {
    "grid": lambda: GridNavigation(size=5),
    "chain": lambda: Chain(n_states=4, n_actions=3),
    "chain-slip": lambda: Chain(n_states=4, n_actions=3, slip=0.2),
    "bandits": lambda: BernoulliBandits(n_arms=4),
    "mdps": lambda: TabularMDPs(n_states=4, n_actions=3),
}


def dense_twin(batch):
    """The same tasks through the validating constructor from dense arrays (the representation
    every family used before next-state tables)."""
    twin = TaskBatch(np.array(batch.P), np.array(batch.R), batch.horizon, start=np.array(batch.start),
                     terminal=np.array(batch.terminal), reward_noise=batch.reward_noise,
                     reward_std=np.array(batch.reward_std))
    return twin


def one_hot(next_state, n_states):
    return (next_state[..., None] == np.arange(n_states)).astype(np.float64)


@pytest.mark.parametrize("family", ["grid", "chain", "bandits"])
def test_deterministic_families_hold_a_next_state_table_not_a_dense_P(family):
    batch = FAMILIES[family]().sample(6, 3)
    assert batch.next_state is not None and batch.next_state.dtype == np.int64
    assert batch._P is None
    tables = batch.tables
    assert not tables.stochastic_transitions and batch._P is None  # the kernels never need P
    assert tables.trans_cdf_padded.size <= 5 and tables.trans_guide.size == 1
    np.testing.assert_array_equal(tables.next_state, batch.next_state)
    # P on demand: the one-hot of the table, read-only, built once
    P = batch.P
    np.testing.assert_array_equal(P, one_hot(batch.next_state, batch.n_states))
    assert not P.flags.writeable and batch.P is P


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kernel_tables_equal_those_of_the_dense_representation(family):
    batch = FAMILIES[family]().sample(5, 11)
    twin = dense_twin(batch)
    for name in EnvTables.__slots__:
        mine, theirs = getattr(batch.tables, name), getattr(twin.tables, name)
        if isinstance(mine, np.ndarray):
            if name == "next_state" and twin.tables.stochastic_transitions:
                continue  # unused when transitions are random
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
            assert mine.dtype == theirs.dtype and not mine.flags.writeable, name
        else:
            assert mine == theirs, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rollouts_equal_those_of_the_dense_representation(backend, family):
    batch = FAMILIES[family]().sample(4, 2)
    twin = dense_twin(batch)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    policy.params[:] = np.random.default_rng(0).normal(size=policy.params.shape)
    mine = rollout(policy, batch, 6, np.random.default_rng(9))
    theirs = rollout(policy, twin, 6, np.random.default_rng(9))
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp",
                 "episode_length"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name), err_msg=name)


def test_sub_batches_keep_the_representation_and_hints():
    grid = GridNavigation(size=4).sample(6, 1)
    sub = grid[[4, 0, 4]]
    assert sub._P is None
    np.testing.assert_array_equal(sub.next_state, grid.next_state[[4, 0, 4]])
    np.testing.assert_array_equal(sub.tables.start_state, grid.tables.start_state[[4, 0, 4]])
    np.testing.assert_array_equal(sub.info["goal"], grid.info["goal"][[4, 0, 4]])
    mdps = TabularMDPs(n_states=3, n_actions=2).sample(4, 1)
    sub = mdps[1:3]
    assert sub._stochastic and sub.tables.stochastic_transitions
    np.testing.assert_array_equal(sub.tables.trans_cdf_padded, mdps.tables.trans_cdf_padded[1:3])
    wide = TabularMDPs(n_states=40, n_actions=2).sample(4, 1)
    np.testing.assert_array_equal(wide[[2, 0]].tables.trans_guide, wide.tables.trans_guide[[2, 0]])


def test_exact_dp_reads_the_dense_P_of_a_next_state_batch():
    """Exact dynamic programming keeps working on a next-state batch (it builds P on demand)."""
    from metarl_fast.exact import policy_gradient_exact

    batch = GridNavigation(size=3).sample(2, 0)
    twin = dense_twin(batch)
    logits = np.random.default_rng(1).normal(size=(9, 5))
    for i in range(2):
        a = policy_gradient_exact(batch[i].model(), logits)
        b = policy_gradient_exact(twin[i].model(), logits)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_user_next_state_tables_are_checked():
    R = np.zeros((2, 3, 2))
    ok = TaskBatch(next_state=np.array([[[0, 1], [2, 2], [1, 0]]] * 2), R=R, horizon=4)
    assert ok.n_tasks == 2 and ok.n_states == 3 and ok.n_actions == 2
    np.testing.assert_array_equal(ok.P[0, 1, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="exactly one of P"):
        TaskBatch(np.ones((2, 3, 2, 3)) / 3, R, 4, next_state=np.zeros((2, 3, 2), dtype=int))
    with pytest.raises(ValueError, match="exactly one of P"):
        TaskBatch(None, R, 4)
    with pytest.raises(ValueError, match=r"next_state\[1, 2, 0\] = 3 is not a state in \[0, 3\)"):
        bad = np.zeros((2, 3, 2), dtype=int)
        bad[1, 2, 0] = 3
        TaskBatch(next_state=bad, R=R, horizon=4)
    with pytest.raises(ValueError, match=r"next_state\[0, 0, 1\] = -1 is not a state"):
        bad = np.zeros((2, 3, 2), dtype=int)
        bad[0, 0, 1] = -1
        TaskBatch(next_state=bad, R=R, horizon=4)
    with pytest.raises(TypeError, match="next_state must be an integer array"):
        TaskBatch(next_state=np.zeros((2, 3, 2)), R=R, horizon=4)
    with pytest.raises(ValueError, match="next_state must be 3-D"):
        TaskBatch(next_state=np.zeros((3, 2), dtype=int), R=R, horizon=4)
    with pytest.raises(ValueError, match=r"R must have shape \(2, 3, 2\)"):
        TaskBatch(next_state=np.zeros((2, 3, 2), dtype=int), R=np.zeros((2, 3, 3)), horizon=4)
    with pytest.raises(ValueError, match=r"R must have shape \(2, 3, 2\)"):
        TaskBatch(next_state=np.zeros((2, 3, 2), dtype=int), horizon=4)
    # the caller's table is copied: writing to it later changes nothing
    table = np.zeros((1, 2, 2), dtype=np.int64)
    batch = TaskBatch(next_state=table, R=np.zeros((1, 2, 2)), horizon=2)
    table[0, 0, 0] = 1
    assert batch.next_state[0, 0, 0] == 0 and not batch.next_state.flags.writeable


def test_transition_rewards_on_a_next_state_table_are_the_rewards_of_the_taken_transition():
    next_state = np.array([[[1, 0], [1, 1]]])
    reward_next = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)
    batch = TaskBatch(next_state=next_state, R=np.zeros((1, 2, 2)), horizon=3,
                      reward_noise="transition", reward_next=reward_next)
    np.testing.assert_array_equal(batch.R, [[[1.0, 2.0], [5.0, 7.0]]])
    dense = TaskBatch(batch.P, np.zeros((1, 2, 2)), 3, reward_noise="transition", reward_next=reward_next)
    np.testing.assert_array_equal(batch.R, dense.R)


def test_random_mdp_batches_skip_the_determinism_scan_but_match_it():
    """TabularMDPs rows are stochastic by construction: the tables say so without scanning P, and
    agree with the scan of the same arrays."""
    batch = TabularMDPs(n_states=5, n_actions=2).sample(3, 4)
    assert batch._stochastic and batch.tables.stochastic_transitions
    assert dense_twin(batch).tables.stochastic_transitions
    one_state = TabularMDPs(n_states=1, n_actions=2).sample(2, 0)  # S = 1: certain, scanned
    assert not one_state._stochastic and not one_state.tables.stochastic_transitions


# row widths on both sides of the guide tables' threshold (33 states: 32 compared sums)
rows = st.tuples(st.integers(1, 4), st.integers(1, 3),
                 st.one_of(st.integers(1, 19), st.integers(30, 90)), st.integers(0, 2**32 - 1))


def check_guide(padded, guide):
    """The guide's defining property, row by row: entry b is the number of compared sums below
    b * (total * ((1 - 2**-40) / G)), so a search from it for any u in bucket b finds the outcome."""
    L = padded.shape[-1] - 1
    G = guide_buckets(L)
    if G == 0:
        assert guide.shape == (1, 1, 1, 1)
        return
    flat, gflat = padded.reshape(-1, L + 1), guide.reshape(-1, G + 1)
    assert gflat.dtype == np.int32 and gflat.shape[0] == flat.shape[0]
    for row, g in zip(flat, gflat):
        thresholds = np.arange(G + 1) * (row[L] * ((1 - 2.0**-40) / G))
        np.testing.assert_array_equal(g, [np.count_nonzero(row[:L] < x) for x in thresholds])


@settings(max_examples=60, deadline=None)
@given(rows)
def test_transition_cdfs_twins_equal_cumsum_and_the_padded_layout(shape_seed):
    a, b, m, seed = shape_seed
    P = np.random.default_rng(seed).dirichlet(np.ones(m), size=(a, b))
    want_padded = padded_cdf_rows(np.cumsum(P, axis=-1))
    for backend in ("numpy", "cython"):
        with mf.use_backend(backend):
            from metarl_fast._backend import active

            padded, guide = active.envs.transition_cdfs(P)
        np.testing.assert_array_equal(padded, want_padded)
        check_guide(padded, guide)
        assert not padded.flags.writeable and not guide.flags.writeable
    np.testing.assert_array_equal(guide, reference_envs.transition_cdfs(P)[1])


def test_transition_cdfs_layout_by_hand():
    padded, guide = reference_envs.transition_cdfs(np.array([[0.25, 0.25, 0.5]]))
    np.testing.assert_array_equal(padded, [[0.25, 0.5, np.inf, np.inf, 1.0]])
    assert guide.shape == (1, 1, 1, 1)  # too narrow for a guide
    # 33 equal outcomes: 32 compared sums k / 33, 8 buckets of width 1 / 8
    padded, guide = reference_envs.transition_cdfs(np.full((1, 33), 1 / 33))
    want = [np.count_nonzero(np.cumsum(np.full(33, 1 / 33))[:32] < b / 8 * (1 - 2.0**-40))
            for b in range(9)]
    assert want == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    np.testing.assert_array_equal(guide, [want])


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_guided_draws_equal_the_whole_row_count_at_every_bucket_edge(backend):
    """Draws on wide rows (guide tables) give the outcome the definition gives -- the number of
    compared sums <= u * total -- also for u at and next to every bucket edge and every sum, where
    rounding of u * G or of u * total could start a guided search past the outcome."""
    S = 64
    P = np.random.default_rng(3).dirichlet(np.full(S, 0.3), size=(1, S, 1))  # uneven rows
    P[0, 0, 0, 5:9] = 0.0  # empty outcomes: equal sums
    P /= P.sum(axis=-1, keepdims=True)
    batch = mf.TaskBatch(P=P, R=np.zeros((1, S, 1)), horizon=1)
    padded = batch.tables.trans_cdf_padded[0, 0, 0]
    L = padded.size - 1
    G = guide_buckets(L)
    assert G > 0
    us = [b / G for b in range(G)] + list(padded[:S - 1] / padded[L])
    us = np.array([np.nextafter(u, d) for u in us for d in (0.0, 2.0)] + us)
    us = np.clip(us, 0.0, np.nextafter(1.0, 0.0))
    want = np.array([np.count_nonzero(padded[:L] <= u * padded[L]) for u in us])
    assert len(set(want)) > S // 2  # the edges reach most outcomes
    assert [_draw_index(padded, u) for u in us] == list(want)  # the single environment's draw
    with mf.use_backend(backend):
        from metarl_fast._backend import active

        got = active.envs.next_states(batch.tables, np.zeros(us.size, dtype=np.int64), us)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_next_states_refuses_bad_rows_and_uniforms(backend):
    batch = TabularMDPs(n_states=40, n_actions=2).sample(2, 0)
    rows, u = np.array([0, 159]), np.array([0.5, 0.25])
    with mf.use_backend(backend):
        from metarl_fast._backend import active

        assert active.envs.next_states(batch.tables, rows, u).shape == (2,)
        with pytest.raises(ValueError, match="rows out of range"):
            active.envs.next_states(batch.tables, np.array([0, 160]), u)
        with pytest.raises(ValueError, match="u must be in"):
            active.envs.next_states(batch.tables, rows, np.array([0.5, 1.0]))
        with pytest.raises(ValueError, match="u must have length 2"):
            active.envs.next_states(batch.tables, rows, np.array([0.5]))


def test_compiled_transition_cdfs_refuses_what_it_cannot_read():
    from metarl_fast._core import envs

    for bad in (np.ones((3, 4), dtype=np.float32), np.ones((4, 6))[:, ::2],
                np.ones((3, 0)), [[1.0]]):
        with pytest.raises(TypeError, match="P must be a C-contiguous float64 array"):
            envs.transition_cdfs(bad)


@pytest.mark.parametrize("family", ["grid", "chain"])
def test_exact_problem_on_a_next_state_table_equals_the_dense_one(family):
    """ExactPolicyProblem gathers and scatters through the next-state table: the same return,
    gradient and Hessian-vector product as with the dense P (terminal states included)."""
    from metarl_fast.meta import ExactPolicyProblem

    batch = FAMILIES[family]().sample(4, 5)
    twin = dense_twin(FAMILIES[family]().sample(4, 5))  # the same tasks (same seed), made dense
    assert twin.next_state is None
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    rng = np.random.default_rng(2)
    theta = rng.normal(size=(4, policy.n_params))
    v = rng.normal(size=(4, policy.n_params))
    for gamma in (1.0, 0.9):
        table, dense = ExactPolicyProblem(policy, batch, gamma), ExactPolicyProblem(policy, twin, gamma)
        np.testing.assert_allclose(table.value(theta), dense.value(theta), rtol=1e-12)
        np.testing.assert_allclose(table.grad(theta), dense.grad(theta), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(table.hvp(theta, None, v), dense.hvp(theta, None, v),
                                   rtol=1e-9, atol=1e-12)
    if family == "grid":
        assert batch.terminal.any() and batch._P is None  # the dense P was never built


@pytest.mark.parametrize("family", ["grid", "chain-slip", "mdps"])
@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_batched_oracle_equals_value_iteration_per_task(family, gamma):
    """ExactPolicyProblem.optimal_value (all tasks at once, through the next-state table where
    there is one) equals exact.optimal_value on each task's own model."""
    from metarl_fast import exact
    from metarl_fast.meta import ExactPolicyProblem

    batch = FAMILIES[family]().sample(6, 7)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    got = ExactPolicyProblem(policy, batch, gamma).optimal_value()
    want = [exact.optimal_value(batch[i].model(gamma=gamma))[0][0] @ batch.start[i] for i in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and it is the best any policy does: no lower than the uniform policy's exact value
    assert np.all(got >= ExactPolicyProblem(policy, batch, gamma).value(np.zeros((6, policy.n_params))) - 1e-12)


def test_grid_goal_tables_built_once_equal_the_ones_built_per_batch():
    """GridNavigation keeps each goal's rewards and terminal row when they are small; a family
    too large for that builds them per batch: the same tasks either way."""
    kept = GridNavigation(size=5, squared=True)
    per_batch = GridNavigation(size=5, squared=True)
    per_batch._goal_tables = None
    a, b = kept.sample(9, 3), per_batch.sample(9, 3)
    np.testing.assert_array_equal(a.R, b.R)
    np.testing.assert_array_equal(a.terminal, b.terminal)
    np.testing.assert_array_equal(a.info["goal"], b.info["goal"])
    assert GridNavigation(size=31)._goal_tables is None  # 960 goals x 961 cells x 5: built per batch


@settings(max_examples=40, deadline=None)
@given(rows)
def test_dirichlet_rows_are_generator_dirichlet_bit_for_bit(shape_seed):
    """Exponentials then dirichlet_rows (both backends) give the tables of rng.dirichlet's rows
    on the same stream, bit for bit."""
    a, b, m, seed = shape_seed
    want = np.random.default_rng(seed).dirichlet(np.ones(m), size=(a, b))
    want_padded, want_guide = reference_envs.transition_cdfs(want)
    for backend in ("numpy", "cython"):
        with mf.use_backend(backend):
            from metarl_fast._backend import active

            padded, guide = active.envs.dirichlet_rows(
                np.random.default_rng(seed).standard_exponential(size=(a, b, m)))
        np.testing.assert_array_equal(padded, want_padded)
        np.testing.assert_array_equal(guide, want_guide)
        assert not (padded.flags.writeable or guide.flags.writeable)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 6), st.one_of(st.integers(1, 12), st.integers(30, 70)), st.integers(1, 5),
       st.integers(0, 2**32 - 1))
def test_tabular_mdp_draws_are_generator_normal_then_dirichlet(n, S, A, seed):
    """Both backends' one-call draws of TabularMDPs are the tables of rng.normal(1, 1) then
    rng.dirichlet on the same stream, bit for bit, and leave the generator where those calls
    leave it."""
    g = np.random.default_rng(seed)
    want_R = g.normal(1.0, 1.0, (n, S, A))
    want_P = g.dirichlet(np.ones(S), size=(n, S, A))
    want_padded, want_guide = reference_envs.transition_cdfs(want_P)
    for kernels in (reference_envs, core_envs):
        rng = np.random.default_rng(seed)
        R, padded, guide = kernels.tabular_mdp_draws(rng, n, S, A)
        for got, want in ((R, want_R), (padded, want_padded), (guide, want_guide)):
            np.testing.assert_array_equal(got, want)
        assert rng.bit_generator.state == g.bit_generator.state
        assert not (R.flags.writeable or padded.flags.writeable or guide.flags.writeable)


def test_compiled_draws_span_several_scratch_blocks():
    """The compiled draws fill their scratch a block of rows at a time: many blocks give the
    same tables as one fill."""
    g = np.random.default_rng(5)
    want_R = g.normal(1.0, 1.0, (3, 300, 4))
    want_padded, want_guide = reference_envs.transition_cdfs(g.dirichlet(np.ones(300), size=(3, 300, 4)))
    R, padded, guide = core_envs.tabular_mdp_draws(np.random.default_rng(5), 3, 300, 4)
    np.testing.assert_array_equal(R, want_R)
    np.testing.assert_array_equal(padded, want_padded)
    np.testing.assert_array_equal(guide, want_guide)


def test_random_mdp_batches_keep_only_the_sums_and_build_P_on_request():
    """TabularMDPs keeps its rows' running sums (and guide) only; P, built when asked for, is
    their differences: the Dirichlet rows to rounding, and exactly what the kernels draw."""
    batch = TabularMDPs(n_states=40, n_actions=2).sample(5, 8)
    assert batch._trans_cdfs is not None and batch._P is None
    tables = batch.tables
    assert batch._P is None  # the kernels' tables need no P
    g = np.random.default_rng(8)
    g.normal(size=(5, 40, 2))
    dirichlet = g.dirichlet(np.ones(40), size=(5, 40, 2))
    np.testing.assert_allclose(batch.P, dirichlet, rtol=0, atol=1e-15)
    assert not batch.P.flags.writeable
    padded, guide = reference_envs.transition_cdfs(dirichlet)
    np.testing.assert_array_equal(tables.trans_cdf_padded, padded)
    np.testing.assert_array_equal(tables.trans_guide, guide)
    # the differences summed again left to right give the sums back (to rounding)
    np.testing.assert_allclose(np.cumsum(batch.P, axis=-1)[..., :39], padded[..., :39], rtol=0, atol=4e-16)
    sub = batch[[3, 1]]
    np.testing.assert_array_equal(sub.tables.trans_cdf_padded, padded[[3, 1]])
    assert not sub.tables.trans_cdf_padded.flags.writeable
    np.testing.assert_array_equal(sub.P, batch.P[[3, 1]])


def test_random_mdp_memory_is_checked_before_anything_is_drawn():
    """TabularMDPs' tables are bounded by the memory available, in bytes per task, checked
    before allocating: a request beyond it fails at once and leaves the generator untouched."""
    family = TabularMDPs(n_states=1000, n_actions=5)
    per_task = family._bytes_per_task()
    assert per_task == 1000 * 5 * (8 + 8 * 1001 + 4 * 251)  # rewards, sums, guide: ~9 B per entry
    from metarl_fast.memory import available_bytes

    n = available_bytes() // per_task + 1
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    with pytest.raises(ValueError, match=r"sample\(n=.*GiB, more than the .* GiB of memory available"):
        family.sample(int(n), rng)
    assert rng.bit_generator.state == before
