"""Issue 13, class 5: a file's contents are validated after its checksum.  A checksum the writer
recomputes proves nothing about a crafted file: every engine file, rewritten with one array
changed and a valid checksum, is refused with CheckpointError when the change makes it
inconsistent -- a NaN or infinity in a float array, an integer array stored as float (no silent
cast), a float array stored as integers, a negative counter."""
import dataclasses

import numpy as np
import pytest

import metarl_fast as mf
from metarl_fast import io
from metarl_fast.trainer import CHECKPOINT_KIND, CHECKPOINT_VERSION, MetaTrainer, TrainConfig


def _policy(tmp_path):
    p = mf.TabularSoftmaxPolicy(3, 2, theta=np.arange(6.0).reshape(3, 2))
    p.save(tmp_path / "f.npz")
    return p._kind, lambda path: mf.TabularSoftmaxPolicy.load(path)


def _linear(tmp_path):
    p = mf.LinearSoftmaxPolicy(3, 2)
    p.save(tmp_path / "f.npz")
    return p._kind, lambda path: mf.LinearSoftmaxPolicy.load(path)


def _adam(tmp_path):
    params = np.zeros(6)
    opt = mf.Adam(params, lr=0.1)
    opt.step(np.ones(6))
    opt.save(tmp_path / "f.npz")

    def load(path):
        fresh = mf.Adam(np.zeros(6), lr=0.1)
        fresh.load(path)
        return fresh
    return opt.kind, load


def _buffer(tmp_path, cls=mf.ReplayBuffer):
    buf = cls(8)
    buf.add_batch(np.arange(5), np.arange(5) % 2, np.ones(5), np.arange(1, 6),
                  np.array([0, 0, 1, 0, 0], dtype=bool), logp=np.full(5, -0.5))
    buf.save(tmp_path / "f.npz")
    return cls._kind, lambda path: cls.load(path)


def _prio(tmp_path):
    return _buffer(tmp_path, mf.PrioritizedReplayBuffer)


def _bandit_learner(tmp_path):
    learner = mf.InContextBanditLearner.pretrained()
    learner.save(tmp_path / "f.npz")
    return learner._kind, lambda path: mf.InContextBanditLearner.load(path)


def _checkpoint(tmp_path):
    config = TrainConfig(tasks="gridnav", grid_size=3, iterations=2, meta_batch=2, episodes_per_task=2,
                         eval_every=2, eval_tasks=4, checkpoint_every=1)
    MetaTrainer(config, str(tmp_path / "run"), log=open("/dev/null", "w")).run()
    src = tmp_path / "run" / "checkpoint.npz"
    (tmp_path / "f.npz").write_bytes(src.read_bytes())

    def load(path):
        saved, _ = MetaTrainer.read_checkpoint(str(path))
        trainer = MetaTrainer(dataclasses.replace(saved, iterations=3), str(tmp_path / "run"),
                              log=open("/dev/null", "w"))
        trainer.load_checkpoint(str(path))
        return trainer
    return CHECKPOINT_KIND, load


FILES = {"TabularSoftmaxPolicy": _policy, "LinearSoftmaxPolicy": _linear, "Adam": _adam,
         "ReplayBuffer": _buffer, "PrioritizedReplayBuffer": _prio,
         "InContextBanditLearner": _bandit_learner, "trainer checkpoint": _checkpoint}


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _rewrite(src, dst, key, value):
    """``src`` with array ``key`` replaced, written by the engine's own writer (valid checksum)."""
    arrays = _arrays(src)
    meta = {k: v for k, v in arrays.items() if k.startswith("__")}
    data = {k: v for k, v in arrays.items() if not k.startswith("__")}
    data[key] = value
    io.save_npz(dst, data, kind=str(meta["__kind__"]), version=int(meta["__format_version__"]))


def _corruptions(value):
    if value.dtype.kind == "f" and value.size:
        bad = value.copy()
        bad.reshape(-1)[0] = np.nan
        yield "NaN", bad
        bad = value.copy()
        bad.reshape(-1)[-1] = np.inf
        yield "inf", bad
        yield "as int64", value.astype(np.int64)
    if value.dtype.kind in "iu":
        yield "as float64", value.astype(np.float64)
        if value.ndim == 0:
            yield "negative", np.array(-1, dtype=value.dtype)


@pytest.mark.parametrize("name", sorted(FILES))
def test_crafted_files_with_a_valid_checksum_are_refused(tmp_path, name):
    kind, load = FILES[name](tmp_path)
    src = tmp_path / "f.npz"
    load(src)  # the file as written loads
    accepted = []
    # a replay buffer's observation and action dtypes are its schema (any numeric dtype is a valid
    # buffer), so only their values are crafted
    schema = {"obs", "action", "next_obs"} if "Buffer" in name else set()
    for key, value in _arrays(src).items():
        if key.startswith("__") or value.dtype.kind not in "fiu":
            continue
        for label, bad in _corruptions(value):
            if key in schema and label.startswith("as "):
                continue
            dst = tmp_path / "crafted.npz"
            _rewrite(src, dst, key, bad)
            try:
                load(dst)
            except io.CheckpointError:
                continue
            accepted.append(f"{key} {label}")
    assert accepted == [], f"{name}: crafted contents accepted: {accepted}"
