"""``sample_actions_at``: the actions and draws of ``sample_actions`` on gathered rows, without
the gather (each table row exponentiated once); the tabular policy's ``act`` uses it."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metarl_fast as mf
from metarl_fast._backend import active


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(1, 20), st.integers(0, 300), st.sampled_from(["float64", "float32"]),
       st.floats(0.1, 30.0), st.integers(0, 2**32 - 1))
def test_equals_sample_actions_on_the_gathered_rows(n_rows, n_actions, n_draws, dtype, scale, seed):
    """Same actions, same number of draws (the generators end in the same state), both backends;
    including -inf logits (impossible actions)."""
    rng = np.random.default_rng(seed)
    table = (scale * rng.standard_normal((n_rows, n_actions))).astype(dtype)
    if n_actions > 1:
        table[rng.random((n_rows, n_actions)) < 0.2] = -np.inf
        table[:, 0] = np.where(np.isinf(table).all(axis=1), 0.0, table[:, 0])
    rows = rng.integers(0, n_rows, n_draws)
    for backend in mf.BACKENDS if mf.is_available("cython") else ["numpy"]:
        with mf.use_backend(backend):
            g1, g2 = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
            got = mf.sample_actions_at(table, rows, g1)
            want = mf.sample_actions(table[rows], g2)
            np.testing.assert_array_equal(got, want)
            assert got.dtype == np.int64 and g1.random() == g2.random()
            if n_actions > 1 and n_draws:
                assert np.all(np.isfinite(table[rows, got]))  # never an impossible action


def test_out_and_empty(backend):
    table = np.zeros((3, 2))
    out = np.full(4, -1, dtype=np.int64)
    g = np.random.default_rng(0)
    assert mf.sample_actions_at(table, np.array([0, 2, 1, 1]), g, out=out) is out
    assert np.all((out >= 0) & (out < 2))
    state = g.bit_generator.state
    assert mf.sample_actions_at(table, np.zeros(0, dtype=np.int64), g).shape == (0,)
    assert g.bit_generator.state == state  # nothing drawn


@pytest.mark.parametrize("bad_row", [0, 2])
def test_a_bad_table_row_is_refused_used_or_not_and_nothing_is_drawn(backend, bad_row):
    table = np.zeros((3, 2))
    table[bad_row, 1] = np.nan
    g = np.random.default_rng(0)
    state = g.bit_generator.state
    with pytest.raises(ValueError, match=f"row {bad_row}"):
        mf.sample_actions_at(table, np.array([1, 1]), g)
    assert g.bit_generator.state == state


@pytest.mark.parametrize("rows,err,match", [
    (np.array([0, 3]), ValueError, "rows out of range"),
    (np.array([-1]), ValueError, "rows out of range"),
    (np.array([0.5]), TypeError, "rows must be an integer array"),
    (np.zeros((2, 2), dtype=np.int64), ValueError, "rows must be 1-D"),
])
def test_bad_rows_are_named(backend, rows, err, match):
    g = np.random.default_rng(0)
    state = g.bit_generator.state
    with pytest.raises(err, match=match):
        mf.sample_actions_at(np.zeros((3, 2)), rows, g)
    assert g.bit_generator.state == state


@pytest.mark.parametrize("n_states,batch", [(10, 1), (10, 32), (500, 3), (500, 4096)])
def test_tabular_act_is_sample_actions_on_its_logits(backend, n_states, batch):
    """Both of act's paths (per-state table, per-row gather) give the documented actions."""
    rng = np.random.default_rng(n_states + batch)
    policy = mf.TabularSoftmaxPolicy(n_states, 4, theta=rng.normal(size=(n_states, 4)))
    obs = rng.integers(0, n_states, batch)
    got = policy.act(obs, np.random.default_rng(7))
    np.testing.assert_array_equal(got, mf.sample_actions(policy.logits(obs), np.random.default_rng(7)))


def test_tabular_act_names_obs(backend):
    policy = mf.TabularSoftmaxPolicy(3, 2)
    with pytest.raises(ValueError, match="obs out of range"):
        policy.act(np.array([0, 5]), np.random.default_rng(0))
    with pytest.raises(TypeError, match="obs must be an integer array"):
        policy.act(np.array([0.0, 1.0]), np.random.default_rng(0))

