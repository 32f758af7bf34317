"""Atomic, pickle-free ``.npz`` files with a format version, a kind tag and a checksum.

Every file metarl_fast writes (policies, optimizer state, replay buffers, checkpoints) goes through
:func:`save_npz`: the arrays are written to a temporary file in the destination directory, flushed
and fsync'ed, then renamed over the target, so a crash or Ctrl-C leaves either the old file or the
new one, never a torn one.  :func:`load_npz` reads with ``allow_pickle=False`` and verifies the
kind, the format version and a SHA-256 over every array's name, dtype, shape and bytes.
"""
import hashlib
import os
import tempfile
import zipfile

import numpy as np

_META_KIND = "__kind__"
_META_VERSION = "__format_version__"
_META_CHECKSUM = "__checksum__"


class CheckpointError(ValueError):
    """A file that cannot be loaded: missing, truncated, corrupted, wrong kind or version."""


def _checksum(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def save_npz(path, arrays, *, kind, version):
    """Write ``arrays`` (name -> array-like) atomically to ``path`` as an uncompressed ``.npz``.

    ``kind`` (str) and ``version`` (int) are stored beside the arrays and checked by
    :func:`load_npz`.  Object arrays are refused (no pickle, ever).
    """
    path = os.fspath(path)
    payload = {}
    for name, value in arrays.items():
        if name.startswith("__"):
            raise ValueError(f"array name {name!r} is reserved")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"array {name!r} has dtype object; refusing to pickle")
        payload[name] = a
    payload[_META_KIND] = np.array(kind)
    payload[_META_VERSION] = np.array(int(version), dtype=np.int64)
    payload[_META_CHECKSUM] = _checksum(payload)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_npz(path, *, kind, versions):
    """Load a file written by :func:`save_npz`, checking kind, version (in ``versions``) and checksum.

    Returns ``(arrays, version)``.  Raises :class:`CheckpointError` (a ValueError) with the reason
    for a missing, truncated, corrupted or foreign file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(f"{path}: not a readable metarl_fast .npz file ({err})") from err
    for meta in (_META_KIND, _META_VERSION, _META_CHECKSUM):
        if meta not in arrays:
            raise CheckpointError(f"{path}: not a metarl_fast file (missing {meta})")
    stored = arrays.pop(_META_CHECKSUM)
    if not np.array_equal(stored, _checksum(arrays)):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupted")
    file_kind = str(arrays.pop(_META_KIND))
    version = int(arrays.pop(_META_VERSION))
    if file_kind != kind:
        raise CheckpointError(f"{path}: holds a {file_kind}, expected a {kind}")
    if version not in versions:
        raise CheckpointError(
            f"{path}: format version {version} is not supported (this metarl_fast reads {sorted(versions)})"
        )
    return arrays, version
