"""Boundary checks shared by both backends.

Kernels trust their input; every public entry point calls these first.  Each helper names the
offending argument in its message.  Conventions:

- wrong type / dtype            -> TypeError
- wrong shape, range, NaN, ...  -> ValueError
- non-contiguous arrays are copied once to C order (documented per function), never read wrongly.
"""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def got(arr):
    """What a rejected array-like was, for a message: ``None`` for None (which ``np.asarray``
    turns into a 0-d object array), else ``dtype <its dtype>``."""
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0 and arr.item() is None:
        return "None"
    if arr is None:
        return "None"
    return f"dtype {arr.dtype}"


def as_generator(seed, name="rng"):
    """``seed`` as a ``numpy.random.Generator``: a Generator is returned as is; an int seed (>= 0)
    or a ``SeedSequence`` makes a new one (``numpy.random.default_rng(seed)``: the same seed, the
    same draws, call after call).  No global state is read or written."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)):
        if seed < 0:
            raise ValueError(f"{name} must be a non-negative int seed, got {seed}")
        return np.random.default_rng(int(seed))
    raise TypeError(f"{name} must be a numpy.random.Generator, an int seed or a SeedSequence, "
                    f"got {type(seed).__name__}")


def check_rng(rng, name="rng"):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    return rng


def float_array(x, name, ndim=None, dtype=None):
    """Return ``x`` as a C-contiguous float32/float64 ndarray (copying once if it is not).

    ``dtype`` forces one of the two float dtypes; otherwise the input's own must be float32/64.
    Lists and other array-likes are converted (to float64 unless ``dtype`` says otherwise).
    """
    if x is None:
        raise TypeError(f"{name} must be a float32 or float64 array, got None")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x, dtype=dtype if dtype is not None else None)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name} must be a float32 or float64 array ({err})") from err
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be a float32 or float64 array, got {got(x)}")
        if x.dtype.kind in "iub" and dtype is None:
            raise TypeError(f"{name} must be a float32 or float64 array, got {got(x)}")
        if dtype is None and x.dtype not in FLOAT_DTYPES:
            x = x.astype(np.float64)
    if x.dtype.kind == "f" and not x.dtype.isnative:  # byte-swapped input: convert, never misread
        x = x.astype(x.dtype.newbyteorder("="))
    if dtype is not None:
        dtype = np.dtype(dtype)
        if x.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    elif x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got {got(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not x.flags.c_contiguous or not x.flags.aligned:
        x = np.array(x, order="C", copy=True)
    return x


def int_array(x, name, ndim=1, length=None, low=None, high=None):
    """Return ``x`` as a C-contiguous int64 ndarray, checking ``low <= x < high``."""
    if x is None:
        raise TypeError(f"{name} must be an integer array, got None")
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name} must be an integer array, got {got(arr)}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length}")
    if arr.size:
        if low is not None or high is not None:
            lo, hi = arr.min(), arr.max()
            if low is not None and lo < low:
                raise ValueError(f"{name} out of range: found {lo}, must be >= {low}")
            if high is not None and hi >= high:
                raise ValueError(f"{name} out of range: found {hi}, must be < {high}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    return arr if arr.flags.aligned else arr.copy()


def check_out(out, shape, dtype, name="out"):
    """Validate a caller-provided output array (exact shape and dtype, C-contiguous, writeable)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# The largest table (entries of one array) any constructor or family sample builds: 2**28 entries,
# 2 GiB of float64.  Larger requests fail with a ValueError naming the arguments, before anything
# is allocated or computed.
MAX_TABLE_ENTRIES = 2**28


def check_table_size(entries, what):
    """Raise ValueError (``what`` names the arguments and the table) if ``entries`` exceeds
    :data:`MAX_TABLE_ENTRIES`; ``entries`` is a Python int (no overflow)."""
    if entries > MAX_TABLE_ENTRIES:
        raise ValueError(f"{what}: {entries:,} entries, more than the {MAX_TABLE_ENTRIES:,} "
                         f"(2**28) one table may hold")


def check_memory(n_bytes, what):
    """Raise ValueError (``what`` names the arguments and the tables) if ``n_bytes`` is more than
    the memory this process can still fill (:func:`metarl_fast.memory.available_bytes`), before
    anything is allocated."""
    from metarl_fast.memory import available_bytes

    available = available_bytes()
    if available is not None and n_bytes > available:
        raise ValueError(f"{what}: {n_bytes / 2**30:,.1f} GiB, more than the "
                         f"{available / 2**30:,.1f} GiB of memory available")


def finite_float(value, name, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a Python float, checking it is finite and inside the given interval."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def logits_row_error(logits, row, name="logits"):
    """The ValueError for the first invalid row of a logits matrix (NaN, +inf, or all -inf)."""
    r = np.asarray(logits[row])
    if np.isnan(r).any():
        msg = f"{name} row {row} contains NaN"
    elif np.isposinf(r).any():
        msg = f"{name} row {row} contains +inf"
    else:
        msg = f"{name} row {row} is all -inf: no action is allowed"
    return ValueError(msg)


def check_logits(logits, name="logits"):
    """C-contiguous float32/float64 (B, A) logits with A >= 1 (copied once if non-contiguous)."""
    logits = float_array(logits, name, ndim=2)
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one action column, got shape {logits.shape}")
    return logits


def check_actions(actions, n_rows, n_actions, name="actions"):
    return int_array(actions, name, ndim=1, length=n_rows, low=0, high=n_actions)


def weight_vector(weights, n_features, name="weights", max_abs=1e100):
    """``weights`` as a C-contiguous float64 (n_features,) array, finite and ``|w| <= max_abs``."""
    if weights is None:
        raise TypeError(f"{name} must be a float array, got None")
    arr = np.asarray(weights)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got {got(arr)}")
    w = float_array(arr, name, ndim=1).astype(np.float64, copy=False)
    if w.shape != (n_features,):
        raise ValueError(f"{name} must have shape ({n_features},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.abs(w).max() > max_abs:
        raise ValueError(f"{name} must satisfy |w| <= {max_abs:g}, got {np.abs(w).max()!r}")
    return w
