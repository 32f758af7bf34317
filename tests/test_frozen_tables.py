"""Issue 13, class 1: what the compiled kernels trust cannot be changed from Python.  A task
batch's arrays and its kernel tables are views whose WRITEABLE flag cannot be set again, and its
fields and tables cannot be reassigned: the probes that crashed the process (a next-state table
made writeable and filled with huge states, a reassigned table) now raise."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import metarl_fast as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILIES = {
    "grid": lambda: mf.GridNavigation(size=3).sample(3, 0),
    "mdps": lambda: mf.TabularMDPs(n_states=3, n_actions=2).sample(3, 0),
    "chain": lambda: mf.Chain().sample(3, 0),
    "bandits": lambda: mf.BernoulliBandits().sample(3, 0),
    "user arrays": lambda: mf.TaskBatch(np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 3, 2)),
                                        np.zeros((2, 3, 2)), 4, reward_noise="transition",
                                        reward_next=np.ones((2, 3, 2, 3)),
                                        terminal=np.array([[False, False, True]] * 2)),
    "sub-batch": lambda: mf.GridNavigation(size=3).sample(5, 0)[[3, 1]],
}
BATCH_FIELDS = ("P", "next_state", "R", "start", "terminal", "reward_std", "reward_next")


def _arrays(batch):
    for name in BATCH_FIELDS:
        value = getattr(batch, name)
        if value is not None:
            yield f"batch.{name}", value
    tables = batch.tables
    for name in tables._fields:
        value = getattr(tables, name)
        if isinstance(value, np.ndarray):
            yield f"batch.tables.{name}", value


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_table_can_be_made_writeable_or_reassigned(family, backend):
    batch = FAMILIES[family]()
    seen = 0
    for where, arr in _arrays(batch):
        seen += 1
        assert not arr.flags.writeable, where
        with pytest.raises(ValueError, match="WRITEABLE"):
            arr.setflags(write=True)
        for view in (arr[...], arr.reshape(-1), arr.view(np.uint8)):
            with pytest.raises(ValueError, match="WRITEABLE"):
                view.setflags(write=True)
    assert seen >= 10
    for name in BATCH_FIELDS + ("horizon", "reward_noise", "tables"):
        with pytest.raises(AttributeError, match="has no setter"):
            setattr(batch, name, getattr(batch, name))
    with pytest.raises(AttributeError, match="can't set attribute|has no setter"):
        batch.tables.next_state = np.zeros((3, 9, 5), dtype=np.int64)


PROBES = {
    "writeable next-state table": """
        b = mf.GridNavigation(size=3).sample(2, 0)
        b.next_state.setflags(write=True)
        b.next_state[...] = 10**9
    """,
    "reassigned next-state table": """
        b = mf.GridNavigation(size=3).sample(2, 0)
        b.next_state = np.full((2, 9, 5), 10**9)
    """,
    "writeable kernel table": """
        b = mf.GridNavigation(size=3).sample(2, 0)
        t = b.tables.next_state
        t.setflags(write=True)
        t[...] = 10**9
    """,
    "reassigned kernel table": """
        b = mf.GridNavigation(size=3).sample(2, 0)
        b.tables.next_state = np.full((2, 9, 5), 10**9)
    """,
    "writeable transition CDF": """
        b = mf.TabularMDPs(n_states=3, n_actions=2).sample(2, 0)
        t = b.tables.trans_cdf_padded
        t.setflags(write=True)
        t[...] = -1.0
    """,
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_the_probes_that_crashed_now_raise(probe):
    code = textwrap.dedent("""
        import numpy as np
        import metarl_fast as mf
        try:
    """) + textwrap.indent(textwrap.dedent(PROBES[probe]), "    ") + textwrap.dedent("""
        except (ValueError, AttributeError) as err:
            print("refused:", type(err).__name__)
        else:
            print("accepted")
        policy = mf.TabularSoftmaxPolicy(b.n_states, b.n_actions)
        traj = mf.rollout(policy, b, 3, np.random.default_rng(0))
        assert traj.next_obs.max() < b.n_states and traj.next_obs.min() >= 0
        print("rollout ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split("\n")[0].startswith("refused:") and "rollout ok" in out.stdout, out.stdout


@pytest.mark.parametrize("kind", ["plain", "prioritized"])
def test_replay_storage_views_cannot_be_made_writeable(backend, kind):
    cls = mf.ReplayBuffer if kind == "plain" else mf.PrioritizedReplayBuffer
    buf = cls(6, obs_shape=(2,), obs_dtype=np.float32)
    for i in range(9):
        buf.add(np.full(2, i, np.float32), i % 3, float(i), np.zeros(2, np.float32), i % 2 == 1,
                task_id=i % 2, logp=-float(i))
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "task_id", "episode_id", "logp"):
        view = getattr(buf, name)
        assert view.shape[0] == 6 and not view.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            view.setflags(write=True)
        with pytest.raises(ValueError, match="WRITEABLE"):
            view[...].setflags(write=True)
    before = buf.reward.copy()
    buf.add(np.ones(2, np.float32), 0, 100.0, np.ones(2, np.float32), True)
    assert buf.reward[(buf.write_position - 1) % 6] == 100.0 and not np.array_equal(buf.reward, before)


def test_vec_env_detects_use_from_two_threads_and_keeps_its_task_map(backend, monkeypatch):
    """A VecEnv stepped from a second thread while the first is inside step() raises (issue 13,
    class 7); its environment-to-task map cannot be made writeable (class 1)."""
    import threading

    from metarl_fast._backend import active

    vec = mf.VecEnv(mf.GridNavigation(size=3).sample(4, 0), n_envs_per_task=2)
    with pytest.raises(ValueError, match="WRITEABLE"):
        vec.task_of_env.setflags(write=True)
    vec.reset(seed=np.random.default_rng(0))
    actions = np.zeros(vec.n_envs, dtype=np.int64)
    inside, leave = threading.Event(), threading.Event()
    kernel = active.envs.vec_step

    def slow_step(*args):
        inside.set()
        leave.wait(10)
        return kernel(*args)

    monkeypatch.setattr(active.envs, "vec_step", slow_step)
    worker = threading.Thread(target=vec.step, args=(actions,))
    worker.start()
    try:
        assert inside.wait(10)
        with pytest.raises(RuntimeError, match="another thread is using this VecEnv"):
            vec.step(actions)
        with pytest.raises(RuntimeError, match="another thread is using this VecEnv"):
            vec.reset(seed=np.random.default_rng(3))
    finally:
        leave.set()
        worker.join()
    monkeypatch.undo()
    obs, *_ = vec.step(actions)  # usable again afterwards
    assert obs.shape == (vec.n_envs,)
