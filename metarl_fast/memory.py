"""Keeping freed memory in the process, so that large per-call arrays do not page-fault; large
tables faulted in at once (:func:`populated_empty`); the memory a process can still fill.

A rollout of 1024 tasks x 10 episodes returns about 5 MB of fresh arrays.  glibc's ``malloc``
serves blocks that large with ``mmap`` (or trims its heap when they are freed), so every call
gets pages that the kernel must fault in and zero: measured on this project's machine, that is
more than half of the rollout's time (``benches/README.md``).  :func:`retain_freed_memory` asks
glibc to serve such blocks from its heap and to keep up to ``max_bytes`` of freed heap instead
of returning it to the operating system.  The price is resident memory that stays with the
process after the arrays are freed (at most ``max_bytes`` beyond what it uses).

It changes the whole process's allocator, so the library never calls it on import: the
``metarl-fast`` command calls it for its own process; a service embedding the engine decides for
itself (or sets ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment).
"""
import ctypes
import ctypes.util
import mmap
import sys

import numpy as np

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX / 2 = 32 MiB on 64-bit systems
_MMAP_THRESHOLD_MAX = 32 * 2**20


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def retain_freed_memory(max_bytes=256 * 2**20):
    """Serve blocks up to 32 MiB from the heap and keep up to ``max_bytes`` (int >= 0) of freed
    heap in the process.  Returns True if glibc accepted both settings; False where there is no
    glibc ``mallopt`` (other platforms, other C libraries), which changes nothing."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or not 0 <= max_bytes < 2**31:
        raise ValueError(f"max_bytes must be an int in [0, 2**31), got {max_bytes!r}")
    mallopt = _libc()
    if mallopt is None:
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    trim_ok = mallopt(_M_TRIM_THRESHOLD, max_bytes)
    return bool(mmap_ok) and bool(trim_ok)


MEMINFO = "/proc/meminfo"
CGROUP_MAX = "/sys/fs/cgroup/memory.max"
CGROUP_CURRENT = "/sys/fs/cgroup/memory.current"


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def available_bytes():
    """Memory this process can still fill, in bytes, or None where it cannot be told.

    NumPy's zeroed allocations are lazy (the pages arrive when first written), so a buffer
    checked only against the machine's total memory is created fine and the process is killed
    later, while it fills.  The bound is the smallest of: the kernel's estimate of memory
    available without swapping (``MemAvailable``), the cgroup's limit minus its usage (containers),
    and the address-space limit (``RLIMIT_AS``) minus what the process already maps."""
    bounds = []
    meminfo = _read(MEMINFO)
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                bounds.append(int(line.split()[1]) * 1024)
    limit, used = _read(CGROUP_MAX), _read(CGROUP_CURRENT)
    if limit and used and limit.strip() != "max":
        try:
            bounds.append(max(int(limit) - int(used), 0))
        except ValueError:
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            status = _read("/proc/self/status") or ""
            mapped = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                           if line.startswith("VmSize:")), 0)
            bounds.append(max(soft - mapped, 0))
    except (ImportError, ValueError, OSError):
        pass
    return min(bounds) if bounds else None


# below this size an array is allocated as NumPy does: the faults of a few pages cost little
POPULATE_MIN_BYTES = 16 * 2**20
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", None)


def populated_empty(shape, dtype):
    """An uninitialised C-contiguous array whose pages are all mapped before it is returned, for
    large tables that are written whole right away (task tables).

    NumPy's large arrays get their pages one fault at a time as they are first written; in a
    virtual machine each fault can cost microseconds (measured on this project's 2-vCPU VM:
    2.3 ns per byte written for an 800 MB array, against 0.36 with the pages mapped at once).
    From ``POPULATE_MIN_BYTES`` on, where Linux's ``MAP_POPULATE`` exists, the array lives in an
    anonymous private mapping populated by the kernel in one call (freed when the array is);
    elsewhere, or for smaller arrays, it is ``np.empty(shape, dtype)``.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if _MAP_POPULATE is None or n_bytes < POPULATE_MIN_BYTES:
        return np.empty(shape, dtype)
    try:
        buf = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE)
    except (OSError, ValueError):  # no room for one mapping that large: let NumPy try
        return np.empty(shape, dtype)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)
