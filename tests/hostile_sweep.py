"""Hostile input for every public entry point (issue 13), run in a child process by
tests/test_hostile.py so that a crash fails one test instead of killing the run.

Each entry point is given with valid arguments; one argument at a time is replaced by a hostile
variant (None, every other dtype, byte-swapped, strided, Fortran-ordered, misaligned, read-only,
empty, an extra or a missing axis, NaN, infinities, extreme and negative values, huge Python ints,
strings...), from a fixed catalogue and from Hypothesis strategies (random dtypes, shapes and
elements).  A call may succeed or raise TypeError / ValueError / FloatingPointError /
MemoryError with a one-line message in the engine's words; anything else (another exception
type, NumPy's or Cython's own text, a crash) is a finding.  Objects that hold state (a replay
buffer, a policy, an optimizer) must be unchanged by a rejected call.

Usage: python tests/hostile_sweep.py BACKEND [--hypothesis N]; prints a JSON list of findings.
"""
import json
import sys
import time
import warnings

import numpy as np

import metarl_fast as mf
from metarl_fast import exact, incontext, incontext_mdp, pg

ALLOWED = (TypeError, ValueError, FloatingPointError, MemoryError)
# NumPy's, Cython's or Python's own words: a rejection must be in the engine's
FORBIDDEN = ("C long", "C ssize_t", "fixed-type tuple", "Buffer dtype mismatch",
             "context manager protocol", "object of type 'NoneType'", "'NoneType' object",
             "Cannot cast", "ufunc", "buffer source array is read-only", "ndarray is not",
             "Expected ", "Invalid value for", "only integer scalar arrays",
             "could not convert string", "invalid literal for int",
             "cannot be safely interpreted", "unsupported operand", "not supported between")


# -- the entry points, each with valid arguments -------------------------------------------------

def _rng():
    return np.random.default_rng(0)


def _logits():
    return np.random.default_rng(1).normal(size=(6, 3))


def _tabular():
    return mf.TabularSoftmaxPolicy(4, 3, theta=np.random.default_rng(2).normal(size=(4, 3)))


def _linear():
    return mf.LinearSoftmaxPolicy(5, 3)


def _steps(n=6):
    rng = np.random.default_rng(3)
    return (rng.integers(4, size=n), rng.integers(3, size=n), rng.normal(size=n),
            np.array([0, 0, 1, 0, 0, 1], dtype=bool)[:n])


def _buffer():
    buf = mf.ReplayBuffer(16)
    buf.add_batch(np.arange(6), np.arange(6) % 3, np.ones(6), np.arange(1, 7),
                  np.array([0, 0, 1, 0, 0, 1], dtype=bool))
    return buf


def _prio():
    buf = mf.PrioritizedReplayBuffer(16)
    buf.add_batch(np.arange(6), np.arange(6) % 3, np.ones(6), np.arange(1, 7),
                  np.array([0, 0, 1, 0, 0, 1], dtype=bool))
    return buf


def _tasks():
    return mf.Chain().sample(2, 0)


def _entries():
    """name -> factory returning (callable, args, kwargs, state) with valid arguments; ``state``
    (optional) returns a snapshot of what a rejected call must leave unchanged."""
    s, a, r, d = _steps()
    feats = np.random.default_rng(4).normal(size=(6, 5))
    P = np.full((2, 3, 2, 3), 1 / 3)
    R = np.zeros((2, 3, 2))
    E = {}

    def add(name, make):
        E[name] = make

    add("softmax", lambda: (mf.softmax, [_logits()], {}, None))
    add("log_softmax", lambda: (mf.log_softmax, [_logits()], {}, None))
    add("entropy", lambda: (mf.entropy, [_logits()], {}, None))
    add("sample_actions", lambda: (mf.sample_actions, [_logits(), _rng()], {}, None))
    add("sample_actions_at", lambda: (mf.sample_actions_at, [_logits(), np.array([0, 2, 5]), _rng()], {}, None))
    add("log_prob", lambda: (mf.log_prob, [_logits(), np.array([0, 1, 2, 0, 1, 2])], {}, None))
    add("grad_log_prob", lambda: (mf.grad_log_prob, [_logits(), np.array([0, 1, 2, 0, 1, 2])], {}, None))
    add("discounted_returns", lambda: (mf.discounted_returns, [r, d, 0.9], {"bootstrap": 0.5}, None))
    add("gae", lambda: (mf.gae, [r, r * 0.5, r * 0.2, d, 0.9, 0.95], {}, None))
    add("vtrace", lambda: (pg.vtrace, [r, r * 0.5, r * 0.2, r * 0.1, d, 0.9], {"rho_bar": 1.0, "c_bar": 1.0}, None))
    add("clip_grad_norm", lambda: (mf.clip_grad_norm, [r.copy(), 1.0], {}, None))
    add("truncated_importance_weights", lambda: (mf.truncated_importance_weights, [r * 0.1, r * 0.2], {"rho_bar": 2.0}, None))

    def with_policy(fn, policy, args, kwargs=None):
        def snapshot():
            return policy.params.copy()
        return fn, args, kwargs or {}, snapshot

    add("policy_gradient", lambda: with_policy(mf.policy_gradient, (p := _tabular()), [p, s, a, r], {"entropy_coef": 0.01}))
    add("policy_gradient_linear", lambda: with_policy(mf.policy_gradient, (p := _linear()), [p, feats, a, r]))
    add("policy_gradient_features", lambda: with_policy(
        mf.policy_gradient, (p := _linear()), [p, s, a, r], {"features": np.random.default_rng(5).normal(size=(4, 5))}))

    def step_entry():
        p = _tabular()
        opt = mf.Adam(p.params, lr=0.1)
        return mf.policy_gradient_step, [p, opt, s, a, r], {"max_grad_norm": 1.0}, lambda: (p.params.copy(), opt.state_dict()["m"].copy() if "m" in opt.state_dict() else None)
    add("policy_gradient_step", step_entry)
    add("reinforce_gradient", lambda: with_policy(mf.reinforce_gradient, (p := _tabular()), [p, s, a, r, d, 0.9]))
    add("actor_critic_gradient", lambda: with_policy(
        mf.actor_critic_gradient, (p := _tabular()), [p, mf.TabularCritic(4), s, a, r, (s + 1) % 4, d, 0.9]))
    add("off_policy_gradient", lambda: with_policy(mf.off_policy_gradient, (p := _tabular()), [p, s, a, r, np.full(6, -1.0)]))
    add("per_decision_off_policy_gradient", lambda: with_policy(
        mf.per_decision_off_policy_gradient, (p := _tabular()), [p, s, a, r, d, np.full(6, -1.0), 0.9]))
    add("policy.act", lambda: with_policy((p := _tabular()).act, p, [s, _rng()]))
    add("policy.probs", lambda: with_policy((p := _tabular()).probs, p, [s]))
    add("policy.log_prob", lambda: with_policy((p := _tabular()).log_prob, p, [s, a]))
    add("policy.set_params", lambda: with_policy((p := _tabular()).set_params, p, [np.zeros(12)]))
    add("linear.act", lambda: with_policy((p := _linear()).act, p, [feats, _rng()]))
    add("TabularSoftmaxPolicy", lambda: (mf.TabularSoftmaxPolicy, [4, 3], {"theta": np.zeros((4, 3))}, None))
    add("LinearSoftmaxPolicy", lambda: (mf.LinearSoftmaxPolicy, [5, 3], {"W": np.zeros((5, 3)), "b": np.zeros(3)}, None))

    def critic_entry(method, args):
        def make():
            c = mf.TabularCritic(4)
            return getattr(c, method), args, {}, lambda: c.values.copy() if hasattr(c, "values") else None
        return make
    add("critic.td_update", critic_entry("td_update", [s, r, (s + 1) % 4, d, 0.9]))
    add("critic.fit_returns", critic_entry("fit_returns", [s, r]))

    def opt_entry(kind):
        def make():
            params = np.zeros(6)
            opt = mf.Adam(params, lr=0.1) if kind == "adam" else mf.SGD(params, lr=0.1, momentum=0.9)
            return opt.step, [r.copy()], {"grad_scale": 1.0}, lambda: (params.copy(), opt.steps)
        return make
    add("Adam.step", opt_entry("adam"))
    add("SGD.step", opt_entry("sgd"))
    add("Adam", lambda: (mf.Adam, [np.zeros(4)], {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8}, None))

    def buffer_entry(method, args, kwargs=None, make_buffer=_buffer):
        def make():
            buf = make_buffer()

            def snapshot():
                return (len(buf), buf.n_added, tuple(np.array(f, copy=True) for f in buf._store))
            return getattr(buf, method), args, kwargs or {}, snapshot
        return make
    add("ReplayBuffer", lambda: (mf.ReplayBuffer, [16], {"obs_shape": (2,), "obs_dtype": np.float32}, None))
    add("buffer.add", buffer_entry("add", [1, 2, 0.5, 2, False], {"truncated": False, "task_id": 1, "logp": -0.3}))
    add("buffer.add_batch", buffer_entry("add_batch", [s, a, r, (s + 1) % 4, d], {"task_id": 1, "logp": np.full(6, -0.5)}))
    add("buffer.sample", buffer_entry("sample", [4, _rng()], {"task_id": 0}))
    add("buffer.sample_sequences", buffer_entry("sample_sequences", [2, 2, _rng()]))
    add("buffer.gather", buffer_entry("gather", [np.array([0, 3, 5])]))
    add("prio.update_priorities", buffer_entry("update_priorities", [np.array([0, 3]), np.array([0.5, 2.0])], None, _prio))
    add("prio.sample", buffer_entry("sample", [4, _rng()], {"beta": 0.4}, _prio))
    add("TaskBatch", lambda: (mf.TaskBatch, [P, R, 3], {"terminal": np.zeros((2, 3), dtype=bool),
                                                        "start": np.array([[1.0, 0, 0], [0, 1.0, 0]])}, None))
    add("GridNavigation.sample", lambda: (mf.GridNavigation(size=3).sample, [4, _rng()], {}, None))
    add("TabularMDPs", lambda: (mf.TabularMDPs, [], {"n_states": 4, "n_actions": 2, "horizon": 5}, None))
    add("rollout", lambda: (mf.rollout, [_tabular_for_chain(), _tasks(), 2, _rng()], {}, None))

    def vecenv_entry():
        env = mf.VecEnv(_tasks(), 2)
        env.reset(seed=_rng())
        return env.step, [np.array([0, 1, 1, 0])], {}, None
    add("VecEnv.step", vecenv_entry)
    add("VecEnv", lambda: (mf.VecEnv, [_tasks(), 2], {}, None))
    add("exact.policy_value", lambda: (exact.policy_value, [_tasks(), np.zeros((2, 5, 2))], {"gamma": 0.9}, None))
    add("MetaLearner.meta_step", lambda: (mf.MetaLearner(mf.TabularSoftmaxPolicy(4, 2), "maml", episodes_per_task=2).meta_step,
                                          [_tasks(), _rng()], {}, None))
    add("MetaLearner", lambda: (mf.MetaLearner, [mf.TabularSoftmaxPolicy(4, 2), "fomaml"],
                                {"inner_lr": 0.1, "episodes_per_task": 2, "gamma": 0.9}, None))
    add("incontext.run_trials", lambda: (incontext.run_trials, [np.zeros(8), np.full((3, 2), 0.5), 4, _rng()], {}, None))
    add("incontext.bandit_features", lambda: (incontext.bandit_features, [np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), 3, 5], {}, None))
    add("incontext_mdp.run_trials", lambda: (incontext_mdp.run_trials, [np.zeros(8), _tasks(), 2, _rng()], {}, None))
    add("bayes_optimal_value", lambda: (mf.bayes_optimal_value, [2, 3], {}, None))
    # the exact (dynamic-programming) API, the MDP model and the baselines
    mdp = exact.random_mdp(np.random.default_rng(6), 3, 2, 4, gamma=0.9, n_terminal=1)
    theta = np.random.default_rng(7).normal(size=(3, 2))
    add("MDPModel", lambda: (mf.MDPModel, [mdp.P, mdp.R, mdp.start, 4], {"gamma": 0.9, "terminal": mdp.terminal}, None))
    add("exact.random_mdp", lambda: (exact.random_mdp, [_rng(), 3, 2, 4], {"gamma": 0.9, "n_terminal": 1}, None))
    add("exact.policy_value", lambda: (exact.policy_value, [mdp, theta], {}, None))
    add("exact.policy_gradient_exact", lambda: (exact.policy_gradient_exact, [mdp, theta], {}, None))
    add("exact.evaluate_policy", lambda: (exact.evaluate_policy, [mdp, np.full((3, 2), 0.5)], {}, None))
    add("exact.state_distributions", lambda: (exact.state_distributions, [mdp, np.full((3, 2), 0.5)], {}, None))
    add("exact.sample_episodes", lambda: (exact.sample_episodes, [mdp, theta, 3, _rng()], {}, None))
    add("exact.linear_policy_value", lambda: (exact.linear_policy_value, [mdp, np.eye(3), np.zeros(8)], {}, None))
    add("exact.linear_policy_gradient_exact", lambda: (exact.linear_policy_gradient_exact,
                                                       [mdp, np.eye(3), np.zeros(8)], {}, None))
    add("exact.softmax_policy", lambda: (exact.softmax_policy, [theta], {}, None))
    add("oracle_value", lambda: (mf.oracle_value, [mdp], {}, None))
    add("UCB1Agent.run_trials", lambda: (mf.UCB1Agent().run_trials, [np.full((3, 2), 0.5), 4, _rng()], {}, None))
    add("ThompsonSamplingAgent.run_trials", lambda: (mf.ThompsonSamplingAgent().run_trials,
                                                     [np.full((3, 2), 0.5), 4, _rng()], {}, None))
    add("EpsilonGreedyAgent", lambda: (mf.EpsilonGreedyAgent, [], {"epsilon": 0.1}, None))
    add("UCB1Agent", lambda: (mf.UCB1Agent, [], {"c": 1.0}, None))
    add("compare_bandit_agents", lambda: (mf.compare_bandit_agents, [{"random": mf.RandomAgent()}, 2, 3, 10, _rng()],
                                          {"level": 0.9}, None))
    # more of the policies, critics, buffers, task families and environments
    add("policy.entropy", lambda: with_policy((p := _tabular()).entropy, p, [s]))
    add("policy.logits", lambda: with_policy((p := _tabular()).logits, p, [s]))
    add("linear.log_prob", lambda: with_policy((p := _linear()).log_prob, p, [feats, a]))
    add("linear.probs", lambda: with_policy((p := _linear()).probs, p, [feats]))

    def linear_critic_entry(method, args):
        def make():
            c = mf.LinearCritic(5)
            return getattr(c, method), args, {}, lambda: c.params.copy()
        return make
    add("LinearCritic.td_update", linear_critic_entry("td_update", [feats, r, feats[::-1].copy(), d, 0.9]))
    add("LinearCritic.fit_returns", linear_critic_entry("fit_returns", [feats, r]))
    add("TabularCritic", lambda: (mf.TabularCritic, [4], {"lr": 0.1, "values": np.zeros(4)}, None))
    add("SGD", lambda: (mf.SGD, [np.zeros(4), 0.1], {"momentum": 0.9, "nesterov": True}, None))
    add("PrioritizedReplayBuffer", lambda: (mf.PrioritizedReplayBuffer, [16, 0.6], {"eps": 1e-6}, None))
    add("buffer.sample_indices", buffer_entry("sample_indices", [4, _rng()], {"task_id": 0}))
    add("buffer.task_count", buffer_entry("task_count", [0]))
    add("GridNavigation", lambda: (mf.GridNavigation, [3], {"horizon": 6, "goals": np.array([[0, 2], [2, 2]])}, None))
    add("Chain", lambda: (mf.Chain, [], {"n_states": 4, "n_actions": 2, "horizon": 5, "slip": 0.1}, None))
    add("BernoulliBandits.sample", lambda: (mf.BernoulliBandits(n_arms=3, horizon=4).sample, [5, _rng()], {}, None))
    add("TabularFamily", lambda: (mf.TabularFamily, [P, R, 3], {}, None))
    add("TaskBatch[]", lambda: (_tasks().__getitem__, [np.array([1, 0, 1])], {}, None))
    # "outcome" rewards (several rewards for one transition) and the Gymnasium toy-text family
    outcome = {"reward_noise": "outcome", "reward_values": np.arange(72.0).reshape(2, 3, 2, 3, 2),
               "reward_probs": np.full((2, 3, 2, 3, 2), 0.5)}
    add("TaskBatch outcome", lambda: (mf.TaskBatch, [P, None, 3], dict(outcome), None))
    add("rollout outcome", lambda: (mf.rollout, [mf.TabularSoftmaxPolicy(3, 2), mf.TaskBatch(P, None, 3, **outcome),
                                                 2, _rng()], {}, None))
    try:
        import gymnasium  # noqa: F401 - the family is only there with the 'gym' extra
    except ImportError:
        return E
    add("FromGymnasium", lambda: (mf.FromGymnasium, ["FrozenLake-v1"], {"is_slippery": [True, False], "horizon": 20},
                                  None))
    add("FromGymnasium random maps", lambda: (mf.FromGymnasium, ["FrozenLake-v1"],
                                              {"desc": "random", "size": 4, "p": 0.8}, None))
    add("FromGymnasium.sample", lambda: (mf.FromGymnasium("CliffWalkingSlippery-v1", horizon=10).sample,
                                         [3, _rng()], {}, None))
    add("FromGymnasium.sample random maps", lambda: (mf.FromGymnasium("FrozenLake-v1", desc="random", size=4).sample,
                                                     [3, _rng()], {}, None))

    def reset_entry():
        env = mf.VecEnv(_tasks(), 2)
        return env.reset, [_rng()], {}, None
    add("VecEnv.reset", reset_entry)
    add("mean_confidence_interval", lambda: (mf.mean_confidence_interval, [r], {"level": 0.9}, None))
    return E


def _tabular_for_chain():
    return mf.TabularSoftmaxPolicy(4, 2)


# -- hostile variants of a valid value -------------------------------------------------------------

def _byteswapped(x):
    return x.astype(x.dtype.newbyteorder()) if x.dtype.itemsize > 1 else None


def _misaligned(x):
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(x.dtype).reshape(x.shape) if x.dtype.itemsize and x.size else None
    if out is not None:
        out[...] = x
    return out


def _read_only(x):
    y = x.copy()
    y.setflags(write=False)
    return y


def _filled(x, value):
    try:
        y = x.astype(np.result_type(x.dtype, type(value)) if x.dtype.kind in "iub" and isinstance(value, float) else x.dtype)
        y[...] = value
        return y
    except (OverflowError, ValueError, TypeError):
        return None


def array_variants(x):
    out = {"None": None, "object": x.astype(object), "str": x.astype(str), "complex": x.astype(complex),
           "float16": x.astype(np.float16), "int8": x.astype(np.int8), "uint64": np.abs(x).astype(np.uint64),
           "bool": x.astype(bool), "list": x.tolist(), "byteswapped": _byteswapped(x),
           "misaligned": _misaligned(x), "read-only": _read_only(x), "empty": x[:0] if x.ndim else None,
           "extra axis": x[None], "scalar": x.reshape(-1)[0] if x.size else None,
           "strided": np.repeat(x, 2, axis=0)[::2] if x.ndim else None,
           "fortran": np.asfortranarray(x) if x.ndim >= 2 else None,
           "transposed": x.T if x.ndim >= 2 else None,
           "nan": _filled(x, np.nan), "inf": _filled(x, np.inf), "-inf": _filled(x, -np.inf),
           "1e308": _filled(x, 1e308), "-1": _filled(x, -1), "huge": _filled(x, 2**62),
           "zeros": np.zeros_like(x), "longer": np.concatenate([x, x]) if x.ndim else None}
    return {k: v for k, v in out.items() if v is not None or k == "None"}


def scalar_variants(v):
    common = {"None": None, "str": "3", "list": [v], "array": np.array([v, v]), "nan": float("nan"),
              "inf": float("inf"), "-inf": float("-inf"), "complex": 1 + 2j}
    if isinstance(v, (bool, np.bool_)):
        return {**common, "int 2": 2}
    if isinstance(v, (int, np.integer)):
        return {**common, "-1": -1, "0": 0, "2**31": 2**31, "2**63": 2**63, "2**70": 2**70,
                "-(2**70)": -(2**70), "1.5": 1.5, "np.int8": np.int8(3), "True": True,
                "np.uint64 max": np.uint64(2**64 - 1)}
    return {**common, "-1": -1.0, "0": 0.0, "1e308": 1e308, "-1e308": -1e308, "1e-320": 1e-320,
            "2**70": 2**70, "np.float32": np.float32(v), "True": True}


def other_variants(v):
    if isinstance(v, np.random.Generator):
        return {"None": None, "int seed": 0, "str": "rng", "RandomState": np.random.RandomState(0),
                "bit generator": np.random.PCG64(0), "seed sequence": np.random.SeedSequence(0)}
    if isinstance(v, tuple):
        return {"None": None, "short": v[:1], "long": v + v, "nan": tuple(float("nan") for _ in v), "str": "x"}
    return {"None": None, "str": "x", "int": 3, "array": np.zeros(3)}


def variants(v):
    if isinstance(v, np.ndarray):
        return array_variants(v)
    if isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_)):
        return scalar_variants(v)
    return other_variants(v)


# -- the sweep ------------------------------------------------------------------------------------

PROGRESS = False


SLOW_S = 2.0  # a rejected or accepted hostile call that takes longer is a finding (unbounded work)


def judge(call, args, kwargs, snapshot, where, findings, bad=0):
    if PROGRESS:
        print(where, file=sys.stderr, flush=True)
    before = snapshot() if snapshot else None
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(*args, **kwargs)
    except ALLOWED as err:
        text = str(err)
        if (not text or "\n" in text.strip() or any(f in text for f in FORBIDDEN)
                or (bad is None and "dtype object" in text)):
            findings.append({"where": where, "kind": "message", "error": type(err).__name__, "text": text[:300]})
        if before is not None and not _same(before, snapshot()):
            findings.append({"where": where, "kind": "state changed by a rejected call",
                             "error": type(err).__name__, "text": text[:200]})
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - every other exception is a finding
        findings.append({"where": where, "kind": "exception", "error": type(err).__name__,
                         "text": str(err)[:300]})
    elapsed = time.perf_counter() - start
    if elapsed > SLOW_S:
        findings.append({"where": where, "kind": "slow", "error": f"{elapsed:.1f} s", "text": ""})


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a == b


def _judge_with(make, kind, key, bad, where, findings):
    """Fresh valid arguments from ``make`` with argument ``key`` (positional or keyword) replaced
    by ``bad``, judged."""
    call, args, kwargs, snapshot = make()
    args, kwargs = list(args), dict(kwargs)
    if kind == "arg":
        args[key] = bad
    else:
        kwargs[key] = bad
    judge(call, args, kwargs, snapshot, where, findings, bad)


def sweep(findings, only=None):
    entries = _entries()
    for name, make in entries.items():
        if only and only not in name:
            continue
        _, args, kwargs, _ = make()
        slots = [("arg", i) for i in range(len(args))] + [("kw", k) for k in kwargs]
        for kind, key in slots:
            value = args[key] if kind == "arg" else kwargs[key]
            for label, bad in variants(value).items():
                _judge_with(make, kind, key, bad, f"{name} {kind} {key} <- {label}", findings)


def hypothesis_sweep(findings, n_examples):
    """Random hostile arrays (every dtype and byte order, any shape, NaN/inf/extremes) for each
    array argument of each entry point."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(endianness="="), hnp.integer_dtypes(endianness=">"),
                       hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(endianness="="),
                       hnp.floating_dtypes(endianness=">"), hnp.complex_number_dtypes())
    hostile = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    entries = _entries()
    for name, make in entries.items():
        _, args, kwargs, _ = make()
        slots = ([("arg", i) for i, v in enumerate(args) if isinstance(v, np.ndarray)]
                 + [("kw", k) for k, v in kwargs.items() if isinstance(v, np.ndarray)])
        for kind, key in slots:
            _hypothesis_run(hostile, n_examples, name, make, kind, key, findings, settings, given,
                            HealthCheck)


def _hypothesis_run(hostile, n_examples, name, make, kind, key, findings, settings, given, health):
    @settings(max_examples=n_examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(health))
    @given(bad=hostile)
    def run(bad):
        _judge_with(make, kind, key, bad, f"{name} {kind} {key} <- hypothesis {bad.dtype.str}{bad.shape}",
                    findings)
    run()


def main():
    global PROGRESS
    import resource

    # a request for more memory than the machine has must end in MemoryError, not in the kernel's
    # OOM killer: the child's address space is capped (4 GiB above what it holds at the start)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))
    PROGRESS = "--progress" in sys.argv
    backend = sys.argv[1]
    mf.set_backend(backend)
    findings = []
    only = None
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1]
    sweep(findings, only)
    if "--hypothesis" in sys.argv:
        hypothesis_sweep(findings, int(sys.argv[sys.argv.index("--hypothesis") + 1]))
    seen, unique = set(), []
    for f in findings:
        key = (f["where"], f["kind"], f["error"])
        if key not in seen:
            seen.add(key)
            unique.append(f)
    print(json.dumps(unique, indent=1))


if __name__ == "__main__":
    main()
