"""Backend switch, the ImportError for a missing extension, and the CLI's info command."""
import os
import subprocess
import sys

import numpy as np
import pytest

import metarl_fast as mf

from conftest import needs_cython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Simulates a source checkout where the extension was never built.
BLOCK_CORE = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith('metarl_fast._core.'):
            raise ImportError('No module named ' + repr(name))
sys.meta_path.insert(0, Block())
"""


def run_py(code, env_backend=None):
    env = dict(os.environ)
    env.pop("METARL_FAST_BACKEND", None)
    if env_backend:
        env["METARL_FAST_BACKEND"] = env_backend
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_set_and_get_backend():
    before = mf.get_backend()
    try:
        mf.set_backend("numpy")
        assert mf.get_backend() == "numpy"
        with pytest.raises(ValueError, match="backend must be one of"):
            mf.set_backend("torch")
        assert mf.get_backend() == "numpy"
    finally:
        mf.set_backend(before)


def test_use_backend_restores_previous():
    before = mf.get_backend()
    with mf.use_backend("numpy"):
        assert mf.get_backend() == "numpy"
    assert mf.get_backend() == before


@needs_cython
def test_switching_backends_never_changes_sampled_integers(rng):
    logits = rng.standard_normal((1000, 7))
    with mf.use_backend("cython"):
        a = mf.sample_actions(logits, np.random.default_rng(3))
        p = mf.softmax(logits)
    with mf.use_backend("numpy"):
        b = mf.sample_actions(logits, np.random.default_rng(3))
        q = mf.softmax(logits)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(p, q, rtol=1e-13)


def test_missing_extension_raises_helpful_import_error():
    res = run_py(BLOCK_CORE + "import metarl_fast")
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "build_ext --inplace" in res.stderr
    assert "METARL_FAST_BACKEND=numpy" in res.stderr


def test_numpy_backend_works_without_extension():
    code = BLOCK_CORE + (
        "import numpy as np, metarl_fast as mf\n"
        "assert mf.get_backend() == 'numpy'\n"
        "print(mf.sample_actions(np.zeros((2, 3)), np.random.default_rng(0)).tolist())\n"
        "try:\n    mf.set_backend('cython')\nexcept ImportError as e:\n    print('refused', 'pip install' in str(e))\n"
    )
    res = run_py(code, env_backend="numpy")
    assert res.returncode == 0, res.stderr
    assert "refused True" in res.stdout


def test_bad_environment_backend():
    res = run_py("import metarl_fast", env_backend="fortran")
    assert res.returncode != 0 and "METARL_FAST_BACKEND must be one of" in res.stderr


def test_cli_version_and_info():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "metarl_fast", "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and mf.__version__ in out.stdout
    info = subprocess.run([sys.executable, "-m", "metarl_fast", "info", "--backend", "numpy"],
                          capture_output=True, text=True, env=env)
    assert info.returncode == 0, info.stderr
    for key in ("backend", "numpy", "OpenMP", "compiler flags"):
        assert key in info.stdout
    assert "numpy" in info.stdout.split("backend", 1)[1].splitlines()[0]
