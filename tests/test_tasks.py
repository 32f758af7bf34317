"""Task families: sampled arrays, exact models, single environments (Gymnasium protocol), bad input."""
import numpy as np
import pytest

from metarl_fast.mdp import MDPModel
from metarl_fast.tasks import (BernoulliBandits, Chain, FromGymnasium, GridNavigation,
                               TabularFamily, TabularMDPs, TaskBatch, as_generator)


def test_tabular_mdps_arrays_and_model():
    batch = TabularMDPs().sample(3, 0)
    assert (batch.n_tasks, batch.n_states, batch.n_actions, batch.horizon) == (3, 10, 5, 10)
    assert batch.P.shape == (3, 10, 5, 10) and batch.R.shape == (3, 10, 5)
    np.testing.assert_allclose(batch.P.sum(-1), 1.0, atol=1e-12)
    assert batch.reward_noise == "gaussian" and np.all(batch.reward_std == 1.0)
    model = batch[1].model()
    assert isinstance(model, MDPModel) and model.horizon == 10
    np.testing.assert_array_equal(model.P, batch.P[1])
    np.testing.assert_array_equal(model.start, np.eye(10)[0])
    # reproducible from the seed, different between seeds
    np.testing.assert_array_equal(TabularMDPs().sample(3, 0).P, batch.P)
    assert not np.array_equal(TabularMDPs().sample(3, 1).P, batch.P)
    same = TabularMDPs().sample(3, np.random.default_rng(0))
    np.testing.assert_array_equal(same.R, batch.R)


def test_tabular_mdps_prior_moments():
    batch = TabularMDPs(n_states=4, n_actions=3).sample(4000, 7)
    # mu ~ N(1, 1); Dirichlet(1,1,1,1) marginals have mean 1/4, variance 3/80
    assert abs(batch.R.mean() - 1.0) < 0.02 and abs(batch.R.std() - 1.0) < 0.02
    assert abs(batch.P.mean() - 0.25) < 0.005
    assert abs(batch.P.var() - 3 / 80) < 0.002


def test_bandits():
    batch = BernoulliBandits(n_arms=3, horizon=7).sample(5000, 3)
    assert batch.P.shape == (5000, 1, 3, 1) and batch.reward_noise == "bernoulli"
    p = batch.R[:, 0, :]
    assert p.min() >= 0 and p.max() <= 1 and abs(p.mean() - 0.5) < 0.01 and abs(p.var() - 1 / 12) < 0.005
    assert batch[0].model().horizon == 7


def test_grid_navigation_geometry():
    dist = GridNavigation(size=5, horizon=9)
    batch = dist.sample(20, 4)
    S = 25
    assert batch.P.shape == (20, S, 5, S) and batch.horizon == 9
    centre = 2 * 5 + 2
    assert np.all(batch.start[:, centre] == 1.0)
    i = 0
    gr, gc = batch.info["goal"][i]
    assert batch.terminal[i].sum() == 1 and batch.terminal[i, gr * 5 + gc]
    m = batch[i].model()
    # moves: up from row 0 stays, right from the centre goes to col 3
    assert m.P[0, 0, 0] == 1.0 and m.P[centre, 3, centre + 1] == 1.0 and m.P[centre, 4, centre] == 1.0
    d = np.hypot(2 - gr, 3 - gc)
    assert m.R[centre, 3] == pytest.approx(-d)
    sq = GridNavigation(size=5, squared=True, goals=[(0, 0)]).sample(2, 0)
    assert sq.R[0, centre, 0] == pytest.approx(-(1 ** 2 + 2 ** 2))  # up -> (1, 2)
    assert np.all(sq.terminal[:, 0]) and GridNavigation(size=7).horizon == 14


def test_chain_rewarded_action_varies():
    batch = Chain().sample(50, 5)
    assert batch.P.shape == (50, 4, 2, 4)
    good = batch.info["good_action"]
    assert len({tuple(g) for g in good}) > 1
    for i in range(3):
        m = batch[i].model()
        for s in range(4):
            g = good[i, s]
            assert m.R[s, g] == 1.0 and m.R[s, 1 - g] == 0.0
            assert m.P[s, g, min(s + 1, 3)] == 1.0 and m.P[s, 1 - g, 0] == 1.0
    slip = Chain(slip=0.25).sample(1, 0)[0].model()
    g = batch.info["good_action"][0, 0]
    assert slip.P[0].max() == 0.75


def test_custom_family_from_arrays_and_sampler():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(3), size=(2, 3, 2))
    R = rng.normal(size=(2, 3, 2))
    fam = TabularFamily(P=P, R=R, horizon=4, reward_noise="gaussian", reward_std=0.5)
    batch = fam.sample(10, 1)
    assert batch.n_tasks == 10 and batch.horizon == 4 and np.all(batch.reward_std == 0.5)
    for k in range(10):
        assert any(np.array_equal(batch.P[k], P[j]) for j in range(2))
    one = TabularFamily(P=P[0], R=R[0], horizon=2).sample(3, 0)
    np.testing.assert_array_equal(one.P[2], P[0])

    def sampler(n, rng):
        return dict(P=rng.dirichlet(np.ones(3), size=(n, 3, 2)), R=rng.normal(size=(n, 3, 2)), horizon=5)

    listed = TabularFamily(P=P, R=R, horizon=4, reward_noise="gaussian", reward_std=[0.5, 2.0]).sample(20, 1)
    assert set(listed.reward_std) == {0.5, 2.0}
    b2 = TabularFamily(sampler=sampler).sample(4, 2)
    assert b2.n_tasks == 4 and b2.horizon == 5
    with pytest.raises(ValueError, match="returned 3 tasks"):
        TabularFamily(sampler=lambda n, rng: sampler(3, rng)).sample(4, 0)


def test_batch_indexing():
    batch = TabularMDPs().sample(6, 0)
    sub = batch[[4, 1]]
    np.testing.assert_array_equal(sub.P, batch.P[[4, 1]])
    grid = GridNavigation(size=4).sample(5, 0)
    np.testing.assert_array_equal(grid[1:3].info["goal"], grid.info["goal"][1:3])
    assert batch[2:4].n_tasks == 2 and batch[-1].index == 5 and len(list(batch)) == 6
    with pytest.raises(IndexError, match="task index 6 out of range"):
        batch[6]
    with pytest.raises(ValueError, match="at least one task"):
        batch[np.array([], dtype=np.int64)]
    assert not batch.P.flags.writeable


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def _valid(n=1, S=2, A=2):
    P = np.full((n, S, A, S), 1.0 / S)
    return P, np.zeros((n, S, A))


def test_transition_rows_are_checked():
    P, R = _valid()
    P[0, 1, 0] = [0.7, 0.25]
    with pytest.raises(ValueError, match=r"s=1, a=0\) does not sum to 1: sum 0\.95"):
        TaskBatch(P, R, 3)
    P[0, 1, 0] = [1.2, -0.2]
    with pytest.raises(ValueError, match=r"s=1, a=0.*negative"):
        TaskBatch(P, R, 3)
    P[0, 1, 0] = [0.5 + 5e-9, 0.5]
    TaskBatch(P, R, 3)  # within the 1e-8 tolerance
    P[0, 1, 0] = [np.nan, 1.0]
    with pytest.raises(ValueError, match="finite"):
        TaskBatch(P, R, 3)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(P=np.ones((1, 2, 2, 3))), ValueError, "shape"),
    (dict(R=np.zeros((1, 2, 3))), ValueError, "R must have shape"),
    (dict(horizon=0), ValueError, "horizon"),
    (dict(horizon=2.5), TypeError, "horizon"),
    (dict(start=np.array([[0.5, 0.6]])), ValueError, "start"),
    (dict(terminal=np.zeros((1, 2))), TypeError, "terminal"),
    (dict(terminal=np.zeros((1, 3), dtype=bool)), ValueError, "terminal"),
    (dict(reward_noise="poisson"), ValueError, "reward_noise"),
    (dict(reward_std=-1.0), ValueError, "reward_std"),
    (dict(reward_noise="transition"), ValueError, "reward_next"),
    (dict(reward_noise="bernoulli", R=np.full((1, 2, 2), 1.5)), ValueError, r"\[0, 1\]"),
    (dict(P=np.array(["a"])), TypeError, "P"),
])
def test_task_batch_bad_input(kwargs, err, match):
    P, R = _valid()
    args = dict(P=P, R=R, horizon=3)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        TaskBatch(args.pop("P"), args.pop("R"), args.pop("horizon"), **args)


@pytest.mark.parametrize("factory,match", [
    (lambda: TabularMDPs(n_states=0), "n_states"),
    (lambda: TabularMDPs(n_actions=0), "n_actions"),
    (lambda: TabularMDPs(horizon=0), "horizon"),
    (lambda: BernoulliBandits(n_arms=0), "n_arms"),
    (lambda: Chain(n_states=0), "n_states"),
    (lambda: GridNavigation(size=5, goals=[(5, 0)]), "outside"),
    (lambda: GridNavigation(size=5, goals=[(-1, 2)]), "outside"),
    (lambda: GridNavigation(size=5, goals=[(2, 2)]), "start cell"),
    (lambda: Chain(slip=1.5), "slip"),
])
def test_family_parameters_checked(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("seed", [1.5, "0", None, np.random.RandomState(0), True])
def test_seeds_must_be_ints_or_generators(seed):
    with pytest.raises(TypeError, match="rng"):
        TabularMDPs().sample(2, seed)
    with pytest.raises(TypeError, match="rng"):
        as_generator(seed)
    if seed is not None:
        with pytest.raises(TypeError, match="seed"):
            TabularMDPs().sample(2, 0)[0].make_env().reset(seed=seed)


def test_sample_count_checked():
    with pytest.raises(ValueError, match="n must be >= 1"):
        TabularMDPs().sample(0, 0)
    with pytest.raises(TypeError, match="n must be an int"):
        TabularMDPs().sample(2.0, 0)


# ---------------------------------------------------------------------------------------------
# single environment
# ---------------------------------------------------------------------------------------------

def test_env_protocol_and_episode_end():
    env = GridNavigation(size=3, horizon=4, goals=[(1, 2)]).sample(1, 0)[0].make_env()
    # (a gymnasium.spaces.Discrete where Gymnasium is installed, else metarl_fast's Discrete)
    assert (env.observation_space.n, env.observation_space.start, env.action_space.n) == (9, 0, 5)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    obs, info = env.reset(seed=0)
    assert obs == 4 and info == {} and env.observation_space.contains(obs)
    obs, r, term, trunc, info = env.step(3)  # right: onto the goal
    assert (obs, r, term, trunc) == (5, 0.0, True, False)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)
    env.reset()
    for k in range(4):
        obs, r, term, trunc, _ = env.step(4)  # stay in the centre, distance 1
        assert r == -1.0 and not term and trunc == (k == 3)
    env.reset()
    for bad, err in ((5, ValueError), (-1, ValueError), (1.0, TypeError), ("a", TypeError)):
        with pytest.raises(err, match="action"):
            env.step(bad)
    assert env.step(np.int64(4))[0] == 4  # a rejected action changed nothing


def test_env_reset_seed_reproducible():
    env = TabularMDPs().sample(1, 0)[0].make_env()
    traj = []
    for _ in range(2):
        env.reset(seed=3)
        traj.append([env.step(k % 5)[:2] for k in range(10)])
    assert traj[0] == traj[1]


def test_transition_frequencies_chi_square():
    """Next-state counts of one (s, a) pair match P by a chi-square test at a fixed seed."""
    batch = TabularMDPs(n_states=6, n_actions=2, horizon=1).sample(1, 11)
    env = batch[0].make_env()
    rng = np.random.default_rng(5)
    counts = np.zeros(6)
    n = 20000
    env.reset(seed=rng)
    for _ in range(n):
        env.reset()
        s2 = env.step(1)[0]
        counts[s2] += 1
    expected = n * batch.P[0, 0, 1]
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # df = 5, p = 0.001


def test_gymnasium_check_env():
    gymnasium = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    for dist in (TabularMDPs(), GridNavigation(size=4), BernoulliBandits(), Chain(slip=0.1)):
        env = dist.sample(2, 0)[1].as_gymnasium()
        assert isinstance(env, gymnasium.Env)
        check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=1)
        assert env.observation_space.contains(obs)


def _frozen_lake(rng):
    import gymnasium
    from gymnasium.envs.toy_text.frozen_lake import generate_random_map

    return gymnasium.make("FrozenLake-v1", desc=generate_random_map(size=4, seed=int(rng.integers(2**31))))


def test_from_gymnasium_frozen_lake():
    pytest.importorskip("gymnasium")
    batch = FromGymnasium(_frozen_lake).sample(3, 0)
    assert batch.P.shape == (3, 16, 4, 16) and batch.horizon == 100
    assert batch.reward_noise == "transition" and not np.array_equal(batch.terminal[0], batch.terminal[1]) \
        or not np.array_equal(batch.P[0], batch.P[2])
    np.testing.assert_allclose(batch.P.sum(-1), 1.0)
    # the tabular twin reproduces the real env's dynamics: same model
    env = _frozen_lake(np.random.default_rng(0))
    base = env.unwrapped
    m = batch[0].model()
    for s in range(16):
        for a in range(4):
            for prob, s2, r, term in base.P[s][a]:
                assert m.P[s, a, s2] >= prob - 1e-12 and m.terminal[s2] == term
    np.testing.assert_allclose(m.R.max(), 1 / 3, atol=1e-12)  # slippery: 1/3 chance into the goal


def test_from_gymnasium_rejects_non_discrete():
    gymnasium = pytest.importorskip("gymnasium")

    class Box(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(0, 1, (2,))
        action_space = gymnasium.spaces.Discrete(2)

    with pytest.raises(TypeError, match="Discrete observation_space"):
        FromGymnasium(lambda rng: Box()).sample(1, 0)

    class NoModel(gymnasium.Env):
        observation_space = gymnasium.spaces.Discrete(2)
        action_space = gymnasium.spaces.Discrete(2)

    with pytest.raises(TypeError, match="tabular model"):
        FromGymnasium(lambda rng: NoModel()).sample(1, 0)
    with pytest.raises(TypeError, match="callable"):
        FromGymnasium(3)


def test_gymnasium_env_matches_plain_env():
    pytest.importorskip("gymnasium")
    task = Chain(slip=0.3, horizon=6).sample(1, 0)[0]
    plain, gym_env = task.make_env(), task.as_gymnasium()
    for seed in (5, 6):
        a, _ = plain.reset(seed=seed)
        b, _ = gym_env.reset(seed=seed)  # gymnasium seeds Generator(PCG64(seed)), as default_rng does
        assert a == b
        for k in range(6):
            assert plain.step(k % 2) == gym_env.step(k % 2)


def test_from_gymnasium_rollout_matches_model(backend):
    pytest.importorskip("gymnasium")
    from metarl_fast.policy import TabularSoftmaxPolicy
    from metarl_fast.rollout import rollout

    batch = FromGymnasium(_frozen_lake, horizon=30).sample(1, 3)
    model = batch[0].model()
    theta = np.zeros((16, 4))
    theta[:, [1, 2]] = 1.0  # prefer down and right
    pi = np.exp(theta) / np.exp(theta).sum(1, keepdims=True)
    V = np.zeros(16)
    cont = model.P * (~model.terminal)[None, None, :]
    for _ in range(model.horizon):
        V = (pi * (model.R + cont @ V)).sum(1)
    traj = rollout(TabularSoftmaxPolicy(16, 4, theta=theta), batch[np.zeros(500, dtype=np.int64)], 20, 4)
    returns = traj.episode_return.reshape(-1)
    assert set(np.unique(traj.reward)) <= {0.0, 1.0}
    assert abs(returns.mean() - model.start @ V) < 4 * max(returns.std(), 1e-3) / np.sqrt(returns.size)
    assert np.all(traj.terminated[traj.reward == 1.0])


def test_as_gymnasium_without_gymnasium(monkeypatch):
    import sys

    import metarl_fast.tasks as tasks

    monkeypatch.setattr(tasks, "_GYM_CLASS", None)
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(ImportError, match="pip install gymnasium"):
        TabularMDPs().sample(1, 0)[0].as_gymnasium()
    assert TabularMDPs().sample(1, 0)[0].make_env().reset(seed=0)[0] == 0  # the plain env needs nothing


# ---------------------------------------------------------------------------------------------
# The families' documented semantics, entry by entry
# ---------------------------------------------------------------------------------------------

def test_family_draws_are_the_documented_ones():
    """Each family draws exactly what its docstring says, in that order."""
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(BernoulliBandits(n_arms=3).sample(4, 3).R[:, 0, :], rng.random((4, 3)))
    batch = TabularMDPs(n_states=3, n_actions=2).sample(5, 4)
    rng = np.random.default_rng(4)
    np.testing.assert_array_equal(batch.R, rng.normal(1.0, 1.0, (5, 3, 2)))
    dirichlet = rng.dirichlet(np.ones(3), size=(5, 3, 2))
    # kept as the rows' running sums, bit for bit; P is their differences (the rows to rounding)
    np.testing.assert_array_equal(batch.tables.trans_cdf_padded[..., [0, 1, 4]], np.cumsum(dirichlet, axis=-1))
    np.testing.assert_allclose(batch.P, dirichlet, rtol=0, atol=2e-16)
    goals = [(0, 0), (3, 1), (2, 4)]
    grid = GridNavigation(size=5, goals=goals).sample(6, 5)
    np.testing.assert_array_equal(grid.info["goal"], np.array(goals)[np.random.default_rng(5).integers(3, size=6)])
    chain = Chain(n_states=4, n_actions=3).sample(7, 6)
    np.testing.assert_array_equal(chain.info["good_action"], np.random.default_rng(6).integers(3, size=(7, 4)))


@pytest.mark.parametrize("slip", [0.0, 0.25, 1.0])
def test_chain_dynamics_entry_by_entry(slip):
    """Rewarded action good[s]: pays 1, advances with probability 1 - slip (the last state stays),
    else back to 0; any other action: pays 0, back to 0 with probability 1 - slip, else advances."""
    S, A = 4, 3
    batch = Chain(n_states=S, n_actions=A, slip=slip).sample(5, 1)
    good = batch.info["good_action"]
    for i in range(5):
        for s in range(S):
            for a in range(A):
                want = np.zeros(S)
                p_advance = 1.0 - slip if a == good[i, s] else slip
                want[min(s + 1, S - 1)] += p_advance
                want[0] += 1.0 - p_advance
                np.testing.assert_allclose(batch.P[i, s, a], want, atol=1e-15, err_msg=(i, s, a))
                assert batch.R[i, s, a] == float(a == good[i, s])
    assert np.all(batch.start[:, 0] == 1.0) and not batch.terminal.any()


@pytest.mark.parametrize("squared", [False, True])
def test_grid_navigation_dynamics_entry_by_entry(squared):
    size = 4
    batch = GridNavigation(size=size, horizon=5, squared=squared).sample(6, 2)
    moves = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1), 4: (0, 0)}
    for i, (gr, gc) in enumerate(batch.info["goal"]):
        terminal = np.zeros(size * size, dtype=bool)
        terminal[gr * size + gc] = True
        np.testing.assert_array_equal(batch.terminal[i], terminal)
        for s in range(size * size):
            r, c = divmod(s, size)
            for a, (dr, dc) in moves.items():
                nr, nc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
                assert batch.P[i, s, a, nr * size + nc] == 1.0
                d2 = (nr - gr) ** 2 + (nc - gc) ** 2
                assert batch.R[i, s, a] == pytest.approx(-(d2 if squared else np.sqrt(d2)), rel=1e-15)
        centre = (size // 2) * size + size // 2
        np.testing.assert_array_equal(batch.start[i], np.eye(size * size)[centre])
        assert (gr, gc) != (size // 2, size // 2)


def test_env_tables_certain_and_random_outcomes():
    """A batch is stochastic as soon as one row has two possible outcomes; certain rows still give
    their state."""
    P = np.zeros((2, 2, 2, 2))
    P[..., 1] = 1.0
    det = TaskBatch(P, np.zeros((2, 2, 2)), 3, start=np.array([[0.0, 1.0], [1.0, 0.0]]))
    t = det.tables
    assert not t.stochastic_transitions and not t.stochastic_start and not t.has_terminal
    np.testing.assert_array_equal(t.next_state, np.ones((2, 2, 2)))
    np.testing.assert_array_equal(t.start_state, [1, 0])
    P[1, 0, 1] = [0.5, 0.5]
    mixed = TaskBatch(P, np.zeros((2, 2, 2)), 3, start=np.array([[0.0, 1.0], [0.5, 0.5]]),
                      terminal=np.array([[False, False], [False, True]]))
    t = mixed.tables
    assert t.stochastic_transitions and t.stochastic_start and t.has_terminal
    np.testing.assert_array_equal(t.trans_cdf_padded[1, 0, 1], [0.5, np.inf, np.inf, np.inf, 1.0])


def test_single_env_boundaries():
    """TabularEnv: a terminal state entered at the last step is terminated, not truncated; a
    transition of probability zero is never taken, even for u = 0 or u on a running sum."""
    env = GridNavigation(size=3, horizon=2, goals=[(0, 2)]).sample(1, 0)[0].make_env()
    env.reset(seed=0)
    assert env.step(0)[2:4] == (False, False)       # up: (0, 1)
    assert env.step(3)[1:4] == (0.0, True, False)   # right: the goal, at the horizon
    env.reset()
    env.step(4)
    assert env.step(4)[2:4] == (False, True)        # horizon in a non-terminal state
    P = np.zeros((1, 3, 1, 3))
    P[0, :, 0] = [0.25, 0.0, 0.75]
    env = TaskBatch(P, np.zeros((1, 3, 1)), 1, start=np.array([[0.0, 0.5, 0.5]]))[0].make_env()
    from scripted import scripted_rng  # a Generator whose random() values are chosen

    rng = scripted_rng([0.0, 0.0, 0.5, 0.25])
    assert env.reset(seed=rng)[0] == 1            # u = 0: not the impossible state 0
    assert env.step(0)[0] == 0                    # u = 0: state 0 (probability .25)
    assert env.reset()[0] == 2                    # u = .5 on the running sum .5: state 2
    assert env.step(0)[0] == 2                    # u = .25 on the running sum .25: past state 1
