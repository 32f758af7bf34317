"""The compiled rollout runs long rollouts in chunks of tasks, looking at pending signals between
chunks: the same steps as in one piece (and as the NumPy reference), and Ctrl-C arrives fast."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import metarl_fast as mf
from conftest import needs_cython
from metarl_fast.rollout import rollout

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "logp", "task_id",
          "episode_length", "episode_return")


@needs_cython
@pytest.mark.parametrize("family", [
    lambda: mf.GridNavigation(size=4, horizon=7),          # terminal states: lockstep + general
    lambda: mf.TabularMDPs(n_states=4, n_actions=3),       # fixed length, gaussian, random moves
    lambda: mf.Chain(n_states=3, slip=0.3),                # random transitions, no noise
    lambda: mf.BernoulliBandits(n_arms=3),                 # bernoulli rewards
    lambda: mf.TabularFamily(                              # random starts, transition rewards
        sampler=lambda n, rng: dict(P=rng.dirichlet(np.ones(3), size=(n, 3, 2)), R=np.zeros((n, 3, 2)),
                                    horizon=4, start=rng.dirichlet(np.ones(3), size=n),
                                    terminal=np.tile([False, False, True], (n, 1)),
                                    reward_noise="transition", reward_next=rng.normal(size=(n, 3, 2, 3)))),
])
@pytest.mark.parametrize("chunk_steps", [1, 37, 10**9])
def test_chunked_rollout_equals_the_reference(family, chunk_steps):
    from metarl_fast._core import envs

    batch = family().sample(9, 3)
    policy = mf.TabularSoftmaxPolicy(batch.n_states, batch.n_actions)
    policy.params[:] = np.random.default_rng(0).normal(size=policy.n_params)
    old = envs._set_rollout_chunk_steps(chunk_steps)
    try:
        with mf.use_backend("cython"):
            got = rollout(policy, batch, 5, np.random.default_rng(11))
    finally:
        envs._set_rollout_chunk_steps(old)
    with mf.use_backend("numpy"):
        want = rollout(policy, batch, 5, np.random.default_rng(11))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@needs_cython
@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_interrupts_one_long_rollout_call_within_half_a_second():
    """One rollout call of about 18 M steps (about a second here) interrupted 0.1 s in, while its
    episodes run (GridNavigation draws only its action uniforms up front): the KeyboardInterrupt
    arrives long before the call would have ended."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        import numpy as np
        import metarl_fast as mf
        from metarl_fast.rollout import rollout
        batch = mf.GridNavigation(7).sample(10000, 0); batch.tables
        policy = mf.TabularSoftmaxPolicy(49, 5)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter(); rollout(policy, batch, 150, rng); whole = time.perf_counter() - t0
        sent = []
        def fire():
            time.sleep(0.1)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=fire).start()
        try:
            rollout(policy, batch, 150, rng)
            print("not interrupted", whole)
        except KeyboardInterrupt:
            print(f"{time.perf_counter() - sent[0]:.3f} {whole:.3f}")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not out.stdout.startswith("not"), out.stdout
    latency, whole = (float(v) for v in out.stdout.split())
    # without the chunks the interrupt waits for the call to end: latency ~ whole - 0.1 s
    assert latency < 0.25 and latency < whole / 3, (latency, whole)
