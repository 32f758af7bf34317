"""Atomic, pickle-free ``.npz`` files with a format version, a kind tag and a checksum.

Every file metarl_fast writes (policies, optimizer state, replay buffers, checkpoints) goes through
:func:`save_npz`: the arrays are written to a temporary file in the destination directory, flushed
and fsync'ed, then renamed over the target, so a crash or Ctrl-C leaves either the old file or the
new one, never a torn one.  :func:`load_npz` reads with ``allow_pickle=False`` and verifies the
kind, the format version and a SHA-256 over every array's name, dtype, shape and bytes.

The temporary file is ``.<name>.tmp-<pid>-<random>`` beside the target, created with mode 0666
filtered by the process umask (like any file the user creates); temporaries left by a process
that died mid-write (its pid no longer runs) are removed by the next save to the same target.
A destination that exists and is not a regular file (a symbolic link, a device, a directory) is
refused rather than replaced.  Any damage to a file -- a flipped bit anywhere, a truncation, a
``.npy`` or another file under the name -- ends in :class:`CheckpointError`.
"""
import hashlib
import os
import secrets
import stat
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
    _check_destination(path)
    _remove_stale_temporaries(directory, os.path.basename(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
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


def _check_destination(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) \
            else "not a regular file"
        raise ValueError(f"{path} is {what}; refusing to replace it (save to a regular file path)")


def _remove_stale_temporaries(directory, name):
    """Remove ``.<name>.tmp-<pid>-*`` files whose writing process no longer runs."""
    prefix = f".{name}.tmp-"
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _running(pid):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid we can ask about: leave its file alone
    return True


_NPY_MAGIC = b"\x93NUMPY"


def load_npz(path, *, kind, versions, plain_ok=False):
    """Load a file written by :func:`save_npz`, checking kind, version (in ``versions``) and checksum.

    Returns ``(arrays, version)``.  Raises :class:`CheckpointError` (a ValueError) with the reason
    for a missing, truncated, corrupted or foreign file.  ``plain_ok``: a plain ``.npz`` written by
    ``numpy.savez`` (no kind, version nor checksum) is accepted too, with version None.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from err
    if head == _NPY_MAGIC:
        raise CheckpointError(f"{path}: a single-array .npy file, not a metarl_fast .npz archive")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable metarl_fast .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except MemoryError as err:  # a damaged header that claims a huge array
        raise CheckpointError(f"{path}: not a readable metarl_fast .npz file (an entry claims more memory "
                              f"than there is)") from err
    except Exception as err:  # noqa: BLE001 -- zipfile and numpy raise many kinds on damaged input
        raise CheckpointError(f"{path}: not a readable metarl_fast .npz file ({err})") from err
    if plain_ok and not any(meta in arrays for meta in (_META_KIND, _META_VERSION, _META_CHECKSUM)):
        return _native_and_finite(path, arrays), None
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
    return _native_and_finite(path, arrays), version


def _native_and_finite(path, arrays):
    # a file written on a machine of the other byte order (or by hand) is read in native order:
    # the compiled kernels read raw memory
    arrays = {name: a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
              for name, a in arrays.items()}
    # contents, not only the checksum (which a crafted file recomputes): every engine file holds
    # finite numbers only
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and a.size and not np.all(np.isfinite(a)):
            raise CheckpointError(f"{path}: array {name!r} holds NaN or infinity")
    return arrays


def integer(value, name, low=0):
    """``value`` (a stored array or scalar) as a Python int: an integer dtype (no silent cast from
    float) and ``>= low``; ValueError naming ``name`` otherwise (the loaders wrap it)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.ndim != 0:
        raise ValueError(f"{name} must be an integer scalar, got {arr.dtype} of shape {arr.shape}")
    if int(arr) < low:
        raise ValueError(f"{name} must be >= {low}, got {int(arr)}")
    return int(arr)


def real(value, name):
    """``value`` (a stored scalar) as a Python float: a float dtype (no silent cast), finite."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f" or arr.ndim != 0 or not np.isfinite(arr):
        raise ValueError(f"{name} must be a finite float scalar, got {arr.dtype} of shape {arr.shape}")
    return float(arr)
