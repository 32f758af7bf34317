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
                               TaskBatch, padded_cdf_rows)

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
    assert tables.trans_cdf.size == 1 and tables.trans_cdf_padded.size <= 5
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
    np.testing.assert_array_equal(sub.tables.trans_cdf, mdps.tables.trans_cdf[1:3])


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


rows = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 19), st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(rows)
def test_transition_cdfs_twins_equal_cumsum_and_the_padded_layout(shape_seed):
    a, b, m, seed = shape_seed
    P = np.random.default_rng(seed).dirichlet(np.ones(m), size=(a, b))
    want_cdf = np.cumsum(P, axis=-1)
    want_padded = padded_cdf_rows(want_cdf)
    for backend in ("numpy", "cython"):
        with mf.use_backend(backend):
            from metarl_fast._backend import active

            cdf, padded = active.envs.transition_cdfs(P)
        np.testing.assert_array_equal(cdf, want_cdf)
        np.testing.assert_array_equal(padded, want_padded)
        assert not cdf.flags.writeable and not padded.flags.writeable


def test_transition_cdfs_layout_by_hand():
    cdf, padded = reference_envs.transition_cdfs(np.array([[0.25, 0.25, 0.5]]))
    np.testing.assert_array_equal(cdf, [[0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(padded, [[0.25, 0.5, np.inf, np.inf, 1.0]])


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
    """Exponentials then dirichlet_rows (both backends) equal rng.dirichlet on the same stream;
    the CDF tables equal transition_cdfs of those rows."""
    a, b, m, seed = shape_seed
    want = np.random.default_rng(seed).dirichlet(np.ones(m), size=(a, b))
    for backend in ("numpy", "cython"):
        with mf.use_backend(backend):
            from metarl_fast._backend import active

            p, cdf, padded = active.envs.dirichlet_rows(
                np.random.default_rng(seed).standard_exponential(size=(a, b, m)))
            np.testing.assert_array_equal(p, want)
            want_cdf, want_padded = active.envs.transition_cdfs(want)
        np.testing.assert_array_equal(cdf, want_cdf)
        np.testing.assert_array_equal(padded, want_padded)
        assert not (p.flags.writeable or cdf.flags.writeable or padded.flags.writeable)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 6), st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_tabular_mdp_draws_are_generator_normal_then_dirichlet(n, S, A, seed):
    """Both backends' one-call draws of TabularMDPs equal rng.normal(1, 1) then rng.dirichlet on
    the same stream, bit for bit, and leave the generator where those calls leave it."""
    g = np.random.default_rng(seed)
    want_R = g.normal(1.0, 1.0, (n, S, A))
    want_P = g.dirichlet(np.ones(S), size=(n, S, A))
    want_cdf, want_padded = reference_envs.transition_cdfs(want_P)
    for kernels in (reference_envs, core_envs):
        rng = np.random.default_rng(seed)
        R, P, cdf, padded = kernels.tabular_mdp_draws(rng, n, S, A)
        for got, want in ((R, want_R), (P, want_P), (cdf, want_cdf), (padded, want_padded)):
            np.testing.assert_array_equal(got, want)
        assert rng.bit_generator.state == g.bit_generator.state
        assert not (P.flags.writeable or cdf.flags.writeable or padded.flags.writeable)


def test_random_mdp_tables_come_with_the_batch():
    """TabularMDPs builds its transition CDFs with P; they are those of P (and of sub-batches)."""
    batch = TabularMDPs(n_states=6, n_actions=2).sample(5, 8)
    assert batch._trans_cdfs is not None
    cdf, padded = reference_envs.transition_cdfs(np.ascontiguousarray(batch.P))
    np.testing.assert_array_equal(batch.tables.trans_cdf, cdf)
    np.testing.assert_array_equal(batch.tables.trans_cdf_padded, padded)
    sub = batch[[3, 1]]
    np.testing.assert_array_equal(sub.tables.trans_cdf, cdf[[3, 1]])
    assert not sub.tables.trans_cdf.flags.writeable
