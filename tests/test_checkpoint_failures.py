"""Failure paths of the run files: atomic writes under failures, and which check rejects a bad file.

- ``io.save_npz``, the trainer's checkpoint and ``eval.json`` (``_write_json_atomic``): a failure or
  a Ctrl-C in the middle of a write leaves the previous file intact and loadable, and no temporary
  file; the data is fsync'ed in a temporary file of the destination directory *before* the rename,
  and the directory afterwards.
- Corruption: a flipped byte is rejected by the zip CRC; a file whose zip is valid but whose
  content differs (an entry rewritten, the old checksum kept) is rejected by metarl_fast's own
  SHA-256 -- over each entry's bytes, dtype, shape and name; kind, version, missing metadata,
  pickles and inconsistent checkpoints each by their own check (every ``pytest.raises`` names it).
"""
import dataclasses
import io as _io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

from metarl_fast import io, trainer
from metarl_fast.trainer import MetaTrainer, TrainConfig

KIND = "TestArrays"


def payload(scale=1.0):
    return {"w": scale * np.arange(6, dtype=np.float64).reshape(2, 3), "n": np.array(3, dtype=np.int64),
            "name": np.array("hello")}


def leftovers(directory):
    return sorted(p for p in os.listdir(directory) if ".tmp" in p)


def assert_loads_as(path, expected):
    arrays, version = io.load_npz(path, kind=KIND, versions={1})
    assert version == 1 and sorted(arrays) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(arrays[key], expected[key])
        assert arrays[key].dtype == np.asarray(expected[key]).dtype


def raw_entries(path):
    """The .npz's entries as stored (metadata included), read with numpy directly."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# ----------------------------------------------------------------------------- atomic writes
def test_round_trip_and_the_file_is_a_plain_npz(tmp_path):
    path = tmp_path / "a.npz"
    assert io.save_npz(path, payload(), kind=KIND, version=1) == str(path)
    assert_loads_as(path, payload())
    raw = raw_entries(path)
    assert str(raw["__kind__"]) == KIND and int(raw["__format_version__"]) == 1
    assert raw["__checksum__"].dtype == np.uint8 and raw["__checksum__"].size == 32
    with zipfile.ZipFile(path) as zf:  # uncompressed, as documented
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert leftovers(tmp_path) == []


def _failing_savez(exc):
    def savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")  # a torn file, then the failure
        raise exc
    return savez


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_failure_while_writing_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, exc):
    path = tmp_path / "a.npz"
    io.save_npz(path, payload(), kind=KIND, version=1)
    before = path.read_bytes()
    monkeypatch.setattr(io.np, "savez", _failing_savez(exc))
    with pytest.raises(type(exc), match="No space left" if isinstance(exc, OSError) else "^$"):
        io.save_npz(path, payload(2.0), kind=KIND, version=1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_loads_as(path, payload())
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failure_at_fsync_or_rename_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch, where):
    path = tmp_path / "a.npz"
    io.save_npz(path, payload(), kind=KIND, version=1)

    def boom(*args):
        raise OSError(5, f"Input/output error in {where}")

    monkeypatch.setattr(io.os, where, boom)
    with pytest.raises(OSError, match=f"Input/output error in {where}"):
        io.save_npz(path, payload(2.0), kind=KIND, version=1)
    monkeypatch.undo()
    assert_loads_as(path, payload())
    assert leftovers(tmp_path) == []


def test_the_data_is_fsynced_in_the_destination_directory_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append(("fsync-dir" if stat.S_ISDIR(mode) else "fsync-file", os.fstat(fd).st_size))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.dirname(os.path.abspath(src)), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    path = tmp_path / "sub" / "a.npz"
    path.parent.mkdir()
    io.save_npz(path, payload(), kind=KIND, version=1)
    monkeypatch.undo()
    kinds = [e[0] for e in events]
    assert kinds == ["fsync-file", "replace", "fsync-dir"], events
    assert events[0][1] == path.stat().st_size  # the whole file was on disk when fsync'ed
    assert events[1][1] == str(path.parent) and events[1][2] == str(path)  # a temporary beside the target
    assert_loads_as(path, payload())


def test_checkpoint_interrupted_mid_write_keeps_the_previous_one_and_the_run_resumes(tmp_path, monkeypatch):
    cfg = TrainConfig(grid_size=4, iterations=6, meta_batch=4, episodes_per_task=3, eval_every=3, eval_tasks=6,
                      checkpoint_every=2, seed=4)
    MetaTrainer(cfg, tmp_path / "full", log=_io.StringIO()).run()
    real_savez, calls = np.savez, [0]

    def savez(fh, **arrays):
        calls[0] += 1
        if calls[0] == 2:  # the checkpoint of iteration 4: Ctrl-C half-way through the write
            fh.write(b"PK\x03\x04 torn")
            raise KeyboardInterrupt
        return real_savez(fh, **arrays)

    monkeypatch.setattr(io.np, "savez", savez)
    with pytest.raises(KeyboardInterrupt, match="^$"):
        MetaTrainer(cfg, tmp_path / "part", log=_io.StringIO()).run()
    monkeypatch.undo()
    assert leftovers(tmp_path / "part") == []
    _, arrays = MetaTrainer.read_checkpoint(tmp_path / "part" / "checkpoint.npz")
    assert int(arrays["iteration"]) == 2
    MetaTrainer(cfg, tmp_path / "part", log=_io.StringIO()).run(resume=True)
    for name in ("metrics.jsonl", "eval.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    _, a = MetaTrainer.read_checkpoint(tmp_path / "part" / "checkpoint.npz")
    _, b = MetaTrainer.read_checkpoint(tmp_path / "full" / "checkpoint.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_ctrl_c_while_resume_truncates_the_logs_loses_no_line(tmp_path, monkeypatch):
    cfg = TrainConfig(grid_size=4, iterations=6, meta_batch=3, episodes_per_task=3, eval_every=2, eval_tasks=6,
                      checkpoint_every=3, seed=8)
    MetaTrainer(cfg, tmp_path / "full", log=_io.StringIO()).run()
    part = MetaTrainer(cfg, tmp_path / "part", log=_io.StringIO())
    step, calls = part.learner.meta_step, [0]

    def crash(*args):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("simulated crash")
        return step(*args)

    part.learner.meta_step = crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        part.run()
    metrics = tmp_path / "part" / "metrics.jsonl"
    before = metrics.read_bytes()
    assert len(before.splitlines()) == 4  # one line past the checkpoint of iteration 3
    real_open = open

    class Torn:
        """A file whose writelines writes one line, then Ctrl-C."""

        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def writelines(self, lines):
            self.fh.write(lines[0])
            self.fh.flush()
            raise KeyboardInterrupt

    def torn_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Torn(fh) if "w" in mode and "metrics.jsonl" in os.fspath(path) else fh

    monkeypatch.setattr(trainer, "open", torn_open, raising=False)
    with pytest.raises(KeyboardInterrupt, match="^$"):
        MetaTrainer(cfg, tmp_path / "part", log=_io.StringIO()).run(resume=True)
    monkeypatch.undo()
    assert metrics.read_bytes() == before and leftovers(tmp_path / "part") == []
    MetaTrainer(cfg, tmp_path / "part", log=_io.StringIO()).run(resume=True)
    for name in ("metrics.jsonl", "eval.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


@pytest.mark.parametrize("where", ["dump", "fsync", "replace", "ctrl-c"])
def test_eval_json_write_failure_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch, where):
    path = str(tmp_path / "eval.json")
    trainer._write_json_atomic(path, {"results": {"a": 1.0}})
    assert json.load(open(path)) == {"results": {"a": 1.0}}
    if where in ("dump", "ctrl-c"):
        exc = KeyboardInterrupt() if where == "ctrl-c" else OSError(28, "No space left on device")

        def dump(obj, fh, **kwargs):
            fh.write('{"results": {"a": 2')  # torn JSON, then the failure
            raise exc
        monkeypatch.setattr(trainer.json, "dump", dump)
        expected, message = type(exc), ("No space left" if where == "dump" else "^$")
    else:
        def boom(*args):
            raise OSError(5, f"Input/output error in {where}")
        monkeypatch.setattr(trainer.os, where, boom)
        expected, message = OSError, f"Input/output error in {where}"
    with pytest.raises(expected, match=message):
        trainer._write_json_atomic(path, {"results": {"a": 2.0}})
    monkeypatch.undo()
    assert json.load(open(path)) == {"results": {"a": 1.0}}
    assert leftovers(tmp_path) == []


def test_eval_json_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(trainer.os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)), real_fsync(fd))[1])
    monkeypatch.setattr(trainer.os, "replace", lambda a, b: (events.append(("replace", a, b)), real_replace(a, b))[1])
    path = str(tmp_path / "eval.json")
    trainer._write_json_atomic(path, {"x": [1, 2, 3]})
    monkeypatch.undo()
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[0][1] == os.path.getsize(path) and events[1][2] == path
    assert os.path.dirname(events[1][1]) == str(tmp_path)
    assert json.load(open(path)) == {"x": [1, 2, 3]}


# ------------------------------------------------------------------------------- rejection
def rewrite(path, out, **changes):
    """The file's entries with ``changes`` applied, written by np.savez: a valid zip, the old checksum."""
    entries = raw_entries(path)
    entries.update(changes)
    np.savez(out, **entries)
    return out


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    io.save_npz(path, payload(), kind=KIND, version=1)
    return path


def load(path):
    return io.load_npz(path, kind=KIND, versions={1})


def test_a_flipped_byte_is_caught_by_the_zip_crc(good, tmp_path):
    raw = good.read_bytes()
    data = bytearray(raw)
    data[raw.find(payload()["w"].tobytes()) + 9] ^= 0x40
    (tmp_path / "flip.npz").write_bytes(bytes(data))
    with pytest.raises(io.CheckpointError, match=r"not a readable metarl_fast \.npz file \(Bad CRC-32"):
        load(tmp_path / "flip.npz")


@pytest.mark.parametrize("change", ["value", "dtype", "shape", "extra", "missing"])
def test_valid_zip_with_other_content_is_caught_by_the_sha256(good, tmp_path, change):
    w = payload()["w"]
    entries = raw_entries(good)
    if change == "value":
        w2 = w.copy()
        w2[1, 2] += 1e-12
        changes = {"w": w2}
    elif change == "dtype":  # the same bytes read as another dtype
        changes = {"w": w.view(np.int64)}
    elif change == "shape":  # the same bytes in another shape
        changes = {"w": w.reshape(3, 2)}
    elif change == "extra":
        changes = {"x": np.zeros(2)}
    else:
        entries.pop("n")
        np.savez(tmp_path / "bad.npz", **entries)
        changes = None
    if changes is not None:
        rewrite(good, tmp_path / "bad.npz", **changes)
    with pytest.raises(io.CheckpointError, match="checksum mismatch, the file is corrupted"):
        load(tmp_path / "bad.npz")


def test_a_renamed_entry_is_caught_by_the_sha256(good, tmp_path):
    entries = raw_entries(good)
    entries["v"] = entries.pop("w")
    np.savez(tmp_path / "renamed.npz", **entries)
    with pytest.raises(io.CheckpointError, match="checksum mismatch"):
        load(tmp_path / "renamed.npz")


def test_kind_version_and_metadata_checks_each_fire(good, tmp_path):
    # a consistent file of another kind / version: the checksum is right, the kind or version is not
    io.save_npz(tmp_path / "kind.npz", payload(), kind="Other", version=1)
    with pytest.raises(io.CheckpointError, match=f"holds a Other, expected a {KIND}"):
        load(tmp_path / "kind.npz")
    io.save_npz(tmp_path / "v2.npz", payload(), kind=KIND, version=2)
    with pytest.raises(io.CheckpointError, match=r"format version 2 is not supported \(this metarl_fast reads \[1\]\)"):
        load(tmp_path / "v2.npz")
    assert io.load_npz(tmp_path / "v2.npz", kind=KIND, versions={1, 2})[1] == 2
    with pytest.raises(io.CheckpointError, match=r"format version 2 is not supported \(this metarl_fast reads \[1, 3\]\)"):
        io.load_npz(tmp_path / "v2.npz", kind=KIND, versions={1, 3})  # a version in the gap
    io.save_npz(tmp_path / "v0.npz", payload(), kind=KIND, version=0)  # older than any supported
    with pytest.raises(io.CheckpointError, match="format version 0 is not supported"):
        load(tmp_path / "v0.npz")
    # the kind / version rewritten but the old checksum kept: the checksum covers them too
    rewrite(good, tmp_path / "kind2.npz", __kind__=np.array("Other"))
    with pytest.raises(io.CheckpointError, match="checksum mismatch"):
        load(tmp_path / "kind2.npz")
    rewrite(good, tmp_path / "ver2.npz", __format_version__=np.array(2, dtype=np.int64))
    with pytest.raises(io.CheckpointError, match="checksum mismatch"):
        load(tmp_path / "ver2.npz")
    for missing in ("__kind__", "__format_version__", "__checksum__"):
        entries = raw_entries(good)
        entries.pop(missing)
        np.savez(tmp_path / "m.npz", **entries)
        with pytest.raises(io.CheckpointError, match=f"not a metarl_fast file \\(missing {missing}\\)"):
            load(tmp_path / "m.npz")
    with pytest.raises(io.CheckpointError, match="no such file"):
        load(tmp_path / "absent.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(io.CheckpointError, match="not a readable metarl_fast .npz file"):
        load(tmp_path / "empty.npz")


def test_pickles_are_never_written_nor_loaded(good, tmp_path):
    with pytest.raises(TypeError, match="array 'o' has dtype object; refusing to pickle"):
        io.save_npz(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)}, kind=KIND, version=1)
    assert not (tmp_path / "o.npz").exists() and leftovers(tmp_path) == []
    entries = raw_entries(good)
    entries["w"] = np.array([1, "x"], dtype=object)  # a pickled entry in an otherwise valid file
    np.savez(tmp_path / "pickle.npz", **entries)
    with pytest.raises(io.CheckpointError, match="not a readable.*allow_pickle=False"):
        load(tmp_path / "pickle.npz")


@pytest.mark.parametrize("name", ["__kind__", "__checksum__", "__anything"])
def test_reserved_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match=f"array name '{name}' is reserved"):
        io.save_npz(tmp_path / "r.npz", {name: np.zeros(1)}, kind=KIND, version=1)
    assert os.listdir(tmp_path) == []


def test_trainer_checkpoint_kind_version_and_consistency_checks(tmp_path):
    cfg = TrainConfig(grid_size=4, iterations=2, meta_batch=2, episodes_per_task=2, eval_every=2, eval_tasks=4)
    run = MetaTrainer(cfg, tmp_path / "run", log=_io.StringIO())
    run.run()
    path = tmp_path / "run" / "checkpoint.npz"
    arrays, version = io.load_npz(path, kind=trainer.CHECKPOINT_KIND, versions={trainer.CHECKPOINT_VERSION})
    assert version == trainer.CHECKPOINT_VERSION == 1
    assert int(arrays["iteration"]) == 2 and str(arrays["seed_entropy"]) == str(cfg.seed)
    stored = TrainConfig.from_dict(__import__("tomllib").loads(str(arrays["config_toml"])))
    assert stored.to_toml() == cfg.to_toml() == str(arrays["config_toml"])

    def variant(name, *, kind=trainer.CHECKPOINT_KIND, version=1, **changes):
        io.save_npz(tmp_path / name, {**arrays, **changes}, kind=kind, version=version)
        return tmp_path / name

    with pytest.raises(io.CheckpointError, match="format version 2 is not supported"):
        MetaTrainer.read_checkpoint(variant("v2.npz", version=2))
    with pytest.raises(io.CheckpointError, match="holds a TabularSoftmaxPolicy, expected a MetaTrainerCheckpoint"):
        MetaTrainer.read_checkpoint(variant("kind.npz", kind="TabularSoftmaxPolicy"))
    with pytest.raises(io.CheckpointError, match="inconsistent checkpoint .*unknown setting 'colour'"):
        MetaTrainer.read_checkpoint(variant("cfg.npz", config_toml=np.array('colour = "red"\n')))
    with pytest.raises(io.CheckpointError, match="inconsistent checkpoint .*params of shape"):
        MetaTrainer(cfg, tmp_path / "x", log=_io.StringIO()).load_checkpoint(
            variant("shape.npz", learner_params=np.zeros(3)))
    with pytest.raises(io.CheckpointError, match="inconsistent checkpoint .*params of shape"):
        MetaTrainer(cfg, tmp_path / "x", log=_io.StringIO()).load_checkpoint(
            variant("mt.npz", multitask_params=np.zeros(3)))
    without = {k: v for k, v in arrays.items() if k != "iteration"}
    io.save_npz(tmp_path / "noit.npz", without, kind=trainer.CHECKPOINT_KIND, version=1)
    with pytest.raises(io.CheckpointError, match="inconsistent checkpoint .*'iteration'"):
        MetaTrainer(cfg, tmp_path / "x", log=_io.StringIO()).load_checkpoint(tmp_path / "noit.npz")
    # the stored parameters rewritten (valid zip, old checksum): the engine's SHA-256 rejects it
    rewrite(path, tmp_path / "tampered.npz", learner_params=arrays["learner_params"] + 1.0)
    with pytest.raises(io.CheckpointError, match="checksum mismatch, the file is corrupted"):
        MetaTrainer.read_checkpoint(tmp_path / "tampered.npz")
    with pytest.raises(io.CheckpointError, match="checksum mismatch"):
        MetaTrainer(cfg, tmp_path / "x", log=_io.StringIO()).load_checkpoint(tmp_path / "tampered.npz")


# ----------------------------------------------------------------------------- hostile files and destinations
def test_every_single_bit_flip_ends_in_checkpoint_error(tmp_path):
    """Each bit of a small file flipped in turn (headers, central directory and data alike): the
    load succeeds only if the content is intact, else raises CheckpointError -- never another
    exception (zipfile and numpy raise many kinds on damaged input)."""
    path = tmp_path / "a.npz"
    io.save_npz(path, payload(), kind=KIND, version=1)
    raw = path.read_bytes()
    bad = tmp_path / "flip.npz"
    other = []
    for byte in range(len(raw)):
        for bit in (0, 3, 7):
            data = bytearray(raw)
            data[byte] ^= 1 << bit
            bad.write_bytes(bytes(data))
            try:
                assert_loads_as(bad, payload())
            except io.CheckpointError:
                pass
            except Exception as err:  # noqa: BLE001
                other.append((byte, bit, type(err).__name__, str(err)[:80]))
    assert not other, other[:5]


def test_a_npy_file_under_the_name_is_named_as_such(tmp_path):
    np.save(tmp_path / "w.npy", np.zeros(3))
    os.replace(tmp_path / "w.npy", tmp_path / "w.npz")
    with pytest.raises(io.CheckpointError, match="a single-array .npy file, not a metarl_fast .npz archive"):
        io.load_npz(tmp_path / "w.npz", kind=KIND, versions={1})
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(io.CheckpointError, match="not a zip archive"):
        io.load_npz(tmp_path / "t.npz", kind=KIND, versions={1})
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(io.CheckpointError, match="not a regular file"):
        io.load_npz(tmp_path / "d.npz", kind=KIND, versions={1})


def test_non_regular_destinations_are_refused_and_left_alone(tmp_path):
    target = tmp_path / "real.npz"
    io.save_npz(target, payload(), kind=KIND, version=1)
    link = tmp_path / "link.npz"
    os.symlink(target, link)
    with pytest.raises(ValueError, match="is a symbolic link; refusing to replace it"):
        io.save_npz(link, payload(2.0), kind=KIND, version=1)
    assert os.path.islink(link)
    assert_loads_as(target, payload())
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a directory; refusing to replace it"):
        io.save_npz(tmp_path / "dir.npz", payload(), kind=KIND, version=1)
    assert leftovers(tmp_path) == []


def test_saved_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        io.save_npz(tmp_path / "a.npz", payload(), kind=KIND, version=1)
        os.umask(0o077)
        io.save_npz(tmp_path / "b.npz", payload(), kind=KIND, version=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.npz").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.npz").st_mode) == 0o600


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".a.npz.tmp-{dead}-abcd"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".a.npz.tmp-{os.getppid()}-ef01"  # a running process (our parent) is writing
    live.write_bytes(b"being written")
    unrelated = tmp_path / f".b.npz.tmp-{dead}-abcd"
    unrelated.write_bytes(b"another target's")
    io.save_npz(tmp_path / "a.npz", payload(), kind=KIND, version=1)
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert_loads_as(tmp_path / "a.npz", payload())


def test_resume_drops_a_torn_last_log_line_and_refuses_a_damaged_middle(tmp_path):
    cfg = TrainConfig(tasks="gridnav", grid_size=4, iterations=6, meta_batch=4, episodes_per_task=4,
                      eval_every=3, eval_tasks=8, checkpoint_every=3)
    straight = tmp_path / "straight"
    MetaTrainer(cfg, straight, log=open(os.devnull, "w")).run()
    run = tmp_path / "run"
    MetaTrainer(dataclasses.replace(cfg, iterations=3), run, log=open(os.devnull, "w")).run()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"iteration": 4, "pre_ret')  # a crash in the middle of writing line 4
    log = _io.StringIO()
    trainer = MetaTrainer(cfg, run, log=log)
    trainer.run(resume=True)
    assert "dropping its torn last line (line 4)" in log.getvalue()
    assert (run / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(io.CheckpointError, match="line 2 is not a JSON record"):
        MetaTrainer(cfg, run, log=open(os.devnull, "w")).run(resume=True)
