"""Issue 13, class 2: byte order and alignment.  Every public entry point given big-endian or
misaligned arrays computes what it computes on the native, aligned copies (or rejects them with a
ValueError/TypeError naming the argument): never silently wrong numbers, never a crash.  The
cases run in a child process (a crash fails the test, not the run), on both backends."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = textwrap.dedent(r'''
    import json, sys
    import numpy as np
    import metarl_fast as mf
    from metarl_fast import pg, policy as P
    from metarl_fast.optim import Adam, SGD
    from metarl_fast._backend import active

    mf.set_backend(sys.argv[1])
    rng = np.random.default_rng(0)

    def big(x):
        x = np.asarray(x)
        return x.astype(x.dtype.newbyteorder(">"))

    def misaligned(x):
        x = np.ascontiguousarray(x)
        raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
        out = raw[1:].view(x.dtype).reshape(x.shape)
        out[...] = x
        assert not out.flags.aligned
        return out

    L = rng.normal(size=(6, 4)); acts = rng.integers(0, 4, 6)
    tab = mf.TabularSoftmaxPolicy(5, 3, theta=rng.normal(size=(5, 3)))
    lin = mf.LinearSoftmaxPolicy(4, 3, W=rng.normal(size=(4, 3)), b=rng.normal(size=3))
    s = rng.integers(0, 5, 8); a = rng.integers(0, 3, 8); adv = rng.normal(size=8); w = rng.random(8)
    X = rng.normal(size=(8, 4)); PHI = rng.normal(size=(5, 4))
    r = rng.normal(size=10); d = np.zeros(10, np.uint8); d[[4, 9]] = 1
    g = rng.normal(size=15)

    def stepped(policy, kind, **kw):
        def run(*args):
            p = policy.copy(); o = (Adam(p.params, lr=0.1) if kind == "adam"
                                    else SGD(p.params, lr=0.1, momentum=0.9))
            pg.policy_gradient_step(p, o, *args, **kw); pg.policy_gradient_step(p, o, *args, **kw)
            return p.params
        return run

    def fused(*args):
        p = tab.copy(); o = Adam(p.params, lr=0.1); st = pg.fused_step(p, o)
        st(*args); st(*args)
        return p.params

    def opt(kind):
        def run(grad):
            p = tab.copy(); o = Adam(p.params, lr=0.1) if kind == "adam" else SGD(p.params, lr=0.1, momentum=0.9)
            o.step(grad); o.step(grad)
            return p.params
        return run

    def replay_added(kind):
        def run(obs, reward, logp):
            b = mf.ReplayBuffer(16)
            if kind == "batch":
                b.add_batch(obs, obs, reward, obs, np.zeros(obs.shape[0], bool), logp=logp)
            else:
                for i in range(obs.shape[0]):
                    b.add(obs[i], obs[i], reward[i], obs[i], False, logp=logp[i])
            return np.concatenate([b.reward, b.logp, b.obs.astype(float)])
        return run

    def rollout_of(theta):
        batch = mf.GridNavigation(size=3).sample(4, 0)
        p = mf.TabularSoftmaxPolicy(9, 5)
        p.set_params(np.asarray(theta).reshape(-1))
        return mf.rollout(p, batch, 3, np.random.default_rng(1)).reward

    def taskbatch(P_, R_):
        return mf.rollout(mf.TabularSoftmaxPolicy(3, 2), mf.TaskBatch(P_, R_, 4), 3,
                          np.random.default_rng(2)).reward

    P3 = rng.dirichlet(np.ones(3), size=(2, 3, 2)); R3 = rng.normal(size=(2, 3, 2))

    cases = {
        "softmax": (P.softmax, (L,), [0]),
        "log_prob": (P.log_prob, (L, acts), [0, 1]),
        "sample_actions": (lambda l: P.sample_actions(l, np.random.default_rng(1)), (L,), [0]),
        "sample_actions_at": (lambda l, rows: P.sample_actions_at(l, rows, np.random.default_rng(1)),
                              (L, np.array([0, 1, 2])), [0, 1]),
        "policy_gradient tabular": (lambda s_, a_, adv_, w_: pg.policy_gradient(tab, s_, a_, adv_, weights=w_),
                                    (s, a, adv, w), [0, 1, 2, 3]),
        "policy_gradient linear": (lambda x, a_, adv_, w_: pg.policy_gradient(lin, x, a_, adv_, weights=w_),
                                   (X, a, adv, w), [0, 1, 2, 3]),
        "policy_gradient linear states": (lambda s_, adv_, phi: pg.policy_gradient(lin, s_, a, adv_, features=phi),
                                          (s, adv, PHI), [0, 1, 2]),
        "policy_gradient_step adam": (stepped(tab, "adam"), (s, a, adv), [0, 1, 2]),
        "policy_gradient_step sgd linear": (stepped(lin, "sgd"), (X, a, adv), [0, 2]),
        "fused_step": (fused, (s, a, adv), [0, 1, 2]),
        "Adam.step": (opt("adam"), (g,), [0]),
        "SGD.step": (opt("sgd"), (g,), [0]),
        "discounted_returns": (lambda r_, d_: pg.discounted_returns(r_, d_, 0.9), (r, d), [0]),
        "gae": (lambda r_, v, nv: pg.gae(r_, v, nv, d, 0.9, 0.95), (r, r[::-1].copy(), r * 2), [0, 1, 2]),
        "truncated_importance_weights": (pg.truncated_importance_weights, (adv, w), [0, 1]),
        "TabularCritic.td_update": (lambda s_, r_: pg.TabularCritic(5).td_update(s_, r_, s_, np.zeros(8, np.uint8), 0.9),
                                    (s, adv), [0, 1]),
        "LinearCritic.td_update": (lambda x: pg.LinearCritic(4).td_update(x, adv, x, np.zeros(8, np.uint8), 0.9),
                                   (X,), [0]),
        "ReplayBuffer.add_batch": (replay_added("batch"), (s, adv, -w), [0, 1, 2]),
        "ReplayBuffer.add": (replay_added("one"), (s, adv, -w), [0, 1, 2]),
        "rollout params": (rollout_of, (rng.normal(size=(9, 5)),), [0]),
        "TaskBatch arrays": (taskbatch, (P3, R3), [0, 1]),
        "episode_steps": (lambda e: active.envs.episode_steps(e)[1], (np.array([[2, 3], [1, 4]]),), [0]),
    }
    results = {}
    for name, (f, args, idx) in cases.items():
        want = np.asarray(f(*args), dtype=float)
        for how, convert in (("big-endian", big), ("misaligned", misaligned)):
            a2 = list(args)
            for i in idx:
                a2[i] = convert(a2[i])
            try:
                got = np.asarray(f(*a2), dtype=float)
                results[f"{name} / {how}"] = "same" if np.array_equal(got, want) else "WRONG"
            except (TypeError, ValueError) as err:
                results[f"{name} / {how}"] = "rejected: " + str(err)
    print(json.dumps(results))
''')


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_big_endian_and_misaligned_arrays_give_the_native_results(backend):
    if backend == "cython":
        from metarl_fast import _backend

        if not _backend.is_available("cython"):
            pytest.skip("compiled backend not built")
    out = subprocess.run([sys.executable, "-c", CASES, backend], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == 44
    wrong = {k: v for k, v in results.items() if v != "same"}
    assert not wrong, wrong


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_files_written_in_the_other_byte_order_load_in_native_order(tmp_path, backend):
    """A replay buffer and a policy saved with big-endian arrays (as a big-endian machine writes
    them, checksum and all) load into native storage: adding, sampling and acting give what the
    native file gives."""
    import numpy as np

    import metarl_fast as mf
    from metarl_fast import io

    if backend == "cython":
        from metarl_fast import _backend

        if not _backend.is_available("cython"):
            pytest.skip("compiled backend not built")
    with mf.use_backend(backend):
        rng = np.random.default_rng(0)
        buf = mf.ReplayBuffer(8, obs_shape=(2,), obs_dtype=np.float32)
        for i in range(11):
            buf.add(rng.normal(size=2).astype(np.float32), i % 3, float(i), np.zeros(2, np.float32),
                    i % 4 == 3, task_id=i % 2, logp=-0.5 * i)
        buf.save(tmp_path / "native.npz")
        arrays = {k: np.asarray(v) for k, v in buf._arrays().items()}
        swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
        assert any(not v.dtype.isnative for v in swapped.values())
        io.save_npz(tmp_path / "big.npz", swapped, kind="ReplayBuffer", version=1)
        native, big = mf.ReplayBuffer.load(tmp_path / "native.npz"), mf.ReplayBuffer.load(tmp_path / "big.npz")
        for b in (native, big):
            b.add(np.ones(2, np.float32), 1, 2.0, np.ones(2, np.float32), True, task_id=1, logp=-1.0)
        for field in ("obs", "reward", "logp", "task_id", "episode_id", "action"):
            assert getattr(big, field).dtype.isnative
            np.testing.assert_array_equal(getattr(big, field), getattr(native, field))
        for kwargs in ({}, {"task_id": 1}):
            a = native.sample(5, np.random.default_rng(3), **kwargs)
            b = big.sample(5, np.random.default_rng(3), **kwargs)
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        policy = mf.TabularSoftmaxPolicy(4, 3, theta=rng.normal(size=(4, 3)))
        io.save_npz(tmp_path / "policy.npz", {"params": policy.params.astype(">f8"),
                                               "shape": np.array([4, 3], dtype=">i8")},
                    kind="TabularSoftmaxPolicy", version=1)
        loaded = mf.TabularSoftmaxPolicy.load(tmp_path / "policy.npz")
        assert loaded == policy and loaded.params.dtype.isnative
        np.testing.assert_array_equal(loaded.act(np.arange(4), np.random.default_rng(4)),
                                      policy.act(np.arange(4), np.random.default_rng(4)))
