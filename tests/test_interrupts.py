"""Ctrl-C during `metarl-fast train`: a long iteration is left within a second, nothing of it is
kept, and the last checkpoint stays loadable (a real process, a real SIGINT)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from metarl_fast import _backend
from metarl_fast.trainer import MetaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# about 3 s per iteration with the compiled kernels (one call of the in-context trial kernel on
# 300 000 bandit trials of 100 pulls), little memory
LONG = ["train", "--backend", "cython", "--tasks", "bandits", "--algo", "in-context", "--meta-batch", "300000",
        "--horizon", "100", "--iterations", "50", "--checkpoint-every", "1", "--eval-every", "1000",
        "--eval-tasks", "10"]

pytestmark = [pytest.mark.skipif(not _backend.is_available("cython"), reason="compiled backend not built"),
              pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX timers")]


def _start(out):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "metarl_fast", *LONG, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_first_checkpoint(proc, out, timeout=120):
    path = out / "checkpoint.npz"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint after the first iteration"
        time.sleep(0.02)
    time.sleep(0.2)  # into the next (long) iteration


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_leaves_a_long_iteration_within_a_second(tmp_path, presses):
    out = tmp_path / "run"
    proc = _start(out)
    try:
        _wait_for_first_checkpoint(proc, out)
        before = MetaTrainer.read_checkpoint(str(out / "checkpoint.npz"))[1]["iteration"]
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    # the grace is 0.5 s; the margin is for a loaded machine (the process also has to exit)
    assert elapsed < (1.5 if presses == 1 else 1.0), elapsed
    assert "interrupted during iteration" in err and "Traceback" not in err, err
    # the abandoned iteration left nothing: the checkpoint is the one of the last full iteration
    _, arrays = MetaTrainer.read_checkpoint(str(out / "checkpoint.npz"))
    held = int(arrays["iteration"])
    assert held >= int(before) and f"holds iteration {held}" in err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == held


KERNEL_CALL = {
    "bandits": """
        from metarl_fast._core import incontext as kernels
        arms = np.random.default_rng(0).random((200000, 5))
        call = lambda rng: kernels.reinforce_trials(np.zeros(8), arms, 100, rng)
    """,
    "mdp": """
        from metarl_fast._core import incontext_mdp as kernels
        tables = mf.TabularMDPs(n_states=10, n_actions=5).sample(20000, 0).tables
        call = lambda rng: kernels.reinforce_trials(np.zeros(8), tables, 10, rng)
    """,
}


@pytest.mark.parametrize("kind", list(KERNEL_CALL))
def test_ctrl_c_interrupts_one_long_in_context_trial_call(kind):
    """One call of the trial kernel (about a second here) interrupted 0.1 s in: the
    KeyboardInterrupt arrives long before the call would have ended."""
    import textwrap

    code = textwrap.dedent("""
        import os, signal, threading, time
        import numpy as np
        import metarl_fast as mf
    """) + textwrap.dedent(KERNEL_CALL[kind]) + textwrap.dedent("""
        rng = np.random.default_rng(1)
        t0 = time.perf_counter(); call(rng); whole = time.perf_counter() - t0
        sent = []
        def fire():
            time.sleep(0.1)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=fire).start()
        try:
            call(rng)
            print("not interrupted", whole)
        except KeyboardInterrupt:
            print(f"{time.perf_counter() - sent[0]:.3f} {whole:.3f}")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    latency, whole = (float(v) for v in out.stdout.split())
    assert whole > 0.3, whole  # a call long enough to tell an interrupted one from a finished one
    assert latency < min(0.25, whole / 3), (latency, whole)


@pytest.mark.parametrize("kind", list(KERNEL_CALL))
def test_looking_at_signals_changes_no_result(kind):
    """The trial kernels look at signals every unit of work (the smallest setting): the same
    results as with the default spacing."""
    import numpy as np

    import metarl_fast as mf

    if kind == "bandits":
        from metarl_fast._core import incontext as kernels

        arms = np.random.default_rng(0).random((50, 4))
        call = lambda rng: kernels.reinforce_trials(np.full(8, 0.3), arms, 7, rng)  # noqa: E731
    else:
        from metarl_fast._core import incontext_mdp as kernels

        tables = mf.TabularMDPs(n_states=4, n_actions=3).sample(30, 0).tables
        call = lambda rng: kernels.reinforce_trials(np.full(8, 0.3), tables, 3, rng)  # noqa: E731
    want = call(np.random.default_rng(5))
    old = kernels._set_signal_check_work(1)
    try:
        got = call(np.random.default_rng(5))
    finally:
        kernels._set_signal_check_work(old)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
