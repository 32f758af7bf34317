"""Backend selection: every public kernel resolves to ``_core`` (Cython) or ``reference`` (NumPy).

The active backend is process-global.  It starts as ``$METARL_FAST_BACKEND`` (default ``cython``)
and changes with :func:`set_backend` or, temporarily, the :func:`use_backend` context manager.
"""
import contextlib
import importlib
import os

BACKENDS = ("cython", "numpy")
# The API layer reaches a kernel module of the active backend as ``active.<module>`` (e.g.
# ``active.policy``): ``metarl_fast._core.<module>`` or ``metarl_fast.reference.<module>``, imported
# on first use and cached until the backend changes.  ``policy`` is imported eagerly as the probe
# that the backend is usable at all.
_PROBE = "policy"
_PACKAGES = {"cython": "metarl_fast._core", "numpy": "metarl_fast.reference"}

BUILD_HINT = (
    "the compiled extension metarl_fast._core could not be imported ({err}). Build it with "
    "`pip install .` (or `pip install -e .`, or `python setup.py build_ext --inplace` in a source "
    "checkout; needs a C compiler, Cython>=3 and numpy>=2 at build time), or select the pure-NumPy "
    "backend with METARL_FAST_BACKEND=numpy."
)


class _Active:
    """The kernel modules of the active backend, as attributes (``active.policy`` ...)."""

    def __getattr__(self, module):
        if module.startswith("__"):
            raise AttributeError(module)
        value = _import(_name, module)
        setattr(self, module, value)  # cached: later lookups are plain attribute reads
        return value


active = _Active()
_name = None


def _import(backend, module):
    try:
        return importlib.import_module(f"{_PACKAGES[backend]}.{module}")
    except ImportError as err:
        if backend == "cython":
            raise ImportError(BUILD_HINT.format(err=err)) from err
        raise


def _load(name):
    return _import(name, _PROBE)


def _check_name(name):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def set_backend(name):
    """Select the backend of every public kernel: ``"cython"`` (compiled) or ``"numpy"`` (reference).

    Raises ImportError (saying how to build it) if ``"cython"`` is chosen and the extension is missing.
    """
    global _name
    _check_name(name)
    _load(name)
    active.__dict__.clear()
    _name = name


def get_backend():
    """Name of the active backend: ``"cython"`` or ``"numpy"``."""
    return _name


def is_available(name):
    """True if backend ``name`` can be loaded (the compiled extension is built, for ``"cython"``)."""
    _check_name(name)
    try:
        _load(name)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def use_backend(name):
    """Context manager: run a block with backend ``name``, then restore the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _initial():
    name = os.environ.get("METARL_FAST_BACKEND", "cython").strip().lower() or "cython"
    if name not in BACKENDS:
        raise ImportError(f"METARL_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    set_backend(name)
