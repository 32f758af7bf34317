"""Issue 13: hostile input for every public entry point (tests/hostile_sweep.py), in a child
process per backend, so that a crash fails this test and not the run.  Every finding -- an
exception other than TypeError / ValueError / FloatingPointError / MemoryError, a message in
NumPy's or Cython's words or on several lines, a rejected call that changed a buffer, a policy or
an optimizer, a hostile call that runs for seconds -- is listed in the failure."""
import json
import os
import subprocess
import sys

import pytest

from conftest import BACKENDS

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_entry_point_rejects_hostile_input_cleanly(backend):
    """The catalogue of hostile variants (None, every dtype, byte-swapped, strided, Fortran,
    misaligned, read-only, empty, extra/missing axes, NaN, infinities, extremes, huge ints, ...)
    for every argument, plus Hypothesis' random arrays for every array argument."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "hostile_sweep.py"), backend,
                           "--hypothesis", "25"],
                          capture_output=True, text=True, timeout=900, cwd=HERE)
    assert proc.returncode == 0, (f"the sweep died (exit {proc.returncode}; a negative code is a "
                                  f"signal: the process crashed)\n{proc.stderr[-3000:]}")
    findings = json.loads(proc.stdout)
    assert findings == [], json.dumps(findings[:40], indent=1)


@pytest.mark.parametrize("args", [
    ["--episodes", "100000000"],
    ["--replay", "--replay-capacity", "100000000000"],
    ["--meta-batch", "1000000000"],
    ["--tasks", "tabular-mdp", "--n-states", "100000"],
])
def test_the_cli_answers_requests_beyond_the_machine_in_one_line(tmp_path, args):
    """Class 8: an out-of-memory request is a user mistake: exit 2 and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "metarl_fast", "train", *args, "--iterations", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("metarl-fast: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# -- one probe per class of the issue, each in a child process --------------------------------------
# (the full regression tests of each class: test_frozen_tables.py (1), test_byte_order.py (2),
# test_hostile_messages.py and test_replay_edges.py (3, 8), test_interrupts.py and
# test_rollout_chunks.py (4), test_checkpoint_failures.py and test_crafted_files.py (5),
# test_overflow.py (6), test_frozen_tables.py's VecEnv test and test_replay.py's concurrent tests
# (7), the sweep above (8))

PROBES = {
    "1 internal tables": """
        t = mf.GridNavigation(size=3).sample(2, 0)
        table = t.tables.next_state
        try:
            table.setflags(write=True)
            raise SystemExit("a kernel table was made writeable")
        except ValueError:
            pass
        mf.rollout(mf.TabularSoftmaxPolicy(9, 5), t, 2, np.random.default_rng(0))
    """,
    "2 byte order": """
        p = mf.TabularSoftmaxPolicy(3, 2, theta=np.arange(6.0).reshape(3, 2))
        s, a, adv = np.array([0, 1, 2]), np.array([1, 0, 1]), np.array([0.5, -1.0, 2.0])
        native = mf.policy_gradient(p, s, a, adv)
        swapped = mf.policy_gradient(p, s, a, adv.astype(">f8"))
        assert np.array_equal(native, swapped), (native, swapped)
    """,
    "3 unbounded work and memory": """
        import resource, time
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mf.ReplayBuffer(4).add(0, 0, 1.0, 0, False, task_id=(1 << 20) - 1)
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 64 * 1024
        start = time.perf_counter()
        for call in (lambda: mf.incontext.run_trials(np.zeros(8), np.full((2, 2), 0.5), 2**40, rng),
                     lambda: mf.GridNavigation(size=10**5)):
            try:
                call()
                raise SystemExit("a size beyond the limit was accepted")
            except ValueError:
                pass
        assert time.perf_counter() - start < 5
    """,
    "4 ctrl-c": """
        import signal, threading, time, os
        tasks = mf.TabularMDPs().sample(4096, 0)
        policy = mf.TabularSoftmaxPolicy(10, 5)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        try:
            while time.perf_counter() - start < 20:
                mf.rollout(policy, tasks, 200, rng)
            raise SystemExit("no KeyboardInterrupt")
        except KeyboardInterrupt:
            assert time.perf_counter() - start < 1.5, time.perf_counter() - start
    """,
    "5 crafted files": """
        import tempfile, os
        from metarl_fast import io
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "p.npz")
            io.save_npz(path, {"params": np.full(6, np.nan), "shape": np.array([3, 2])},
                        kind="TabularSoftmaxPolicy", version=1)
            try:
                mf.TabularSoftmaxPolicy.load(path)
                raise SystemExit("a NaN policy file loaded")
            except mf.CheckpointError:
                pass
    """,
    "6 silent overflow": """
        try:
            mf.discounted_returns(np.full(4, 1e308), np.array([0, 0, 0, 1]), 1.0)
            raise SystemExit("returns overflowed to inf silently")
        except FloatingPointError:
            pass
        g = np.array([1e308, -1e308])
        mf.clip_grad_norm(g, 1.0)
        assert np.all(np.isfinite(g)) and abs(np.linalg.norm(g) - 1.0) < 1e-12
    """,
    "7 concurrency": """
        import threading
        env = mf.VecEnv(mf.TabularMDPs().sample(64, 0), 64)
        env.reset(seed=rng)
        errors = []
        def work(seed):
            r = np.random.default_rng(seed)
            try:
                for _ in range(300):
                    env.step(r.integers(5, size=env.n_envs))
            except RuntimeError as err:
                errors.append(err)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert errors and all("thread" in str(e) for e in errors), errors
    """,
    "8 error messages": """
        for call in (lambda: mf.softmax(None), lambda: mf.discounted_returns(None, [0], 0.9)):
            try:
                call()
            except TypeError as err:
                assert "got None" in str(err) and "\\n" not in str(err), str(err)
    """,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PROBES))
def test_each_class_of_the_issue_holds_in_a_child_process(backend, name):
    import textwrap

    code = ("import numpy as np\nimport metarl_fast as mf\n"
            f"mf.set_backend({backend!r})\nrng = np.random.default_rng(0)\n"
            + textwrap.dedent(PROBES[name]) + "\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), \
        f"exit {proc.returncode}\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_sweeps_valid_arguments_are_valid(backend):
    """Each entry point of the sweep succeeds with its valid arguments, so that every hostile
    variant is judged against a call that would otherwise pass."""
    import warnings

    import metarl_fast as mf
    from hostile_sweep import _entries

    failed = []
    with mf.use_backend(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make in _entries().items():
            call, args, kwargs, _ = make()
            try:
                call(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - listed below
                failed.append(f"{name}: {type(err).__name__}: {err}")
    assert failed == []
