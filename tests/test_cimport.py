"""Downstream Cython code can cimport the nogil kernels (the README's example, compiled for real)."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import needs_cython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

README_EXAMPLE = textwrap.dedent('''
    # distutils: language = c
    from libc.stdint cimport int64_t
    from numpy.random cimport bitgen_t
    from metarl_fast._core.rng cimport bitgen_of
    from metarl_fast._core.policy cimport sample_rows, softmax_rows
    import numpy as np

    def greedy_mass(double[:, ::1] logits, rng):
        """Sample with the nogil kernel from downstream code; return actions and probabilities."""
        cdef Py_ssize_t n = logits.shape[0], k = logits.shape[1], status
        actions = np.empty(n, dtype=np.int64)
        probs = np.empty((n, k))
        cdef int64_t[::1] acts = actions
        cdef double[:, ::1] p = probs
        cdef bitgen_t* bitgen = bitgen_of(rng.bit_generator)
        with rng.bit_generator.lock, nogil:
            status = sample_rows(&logits[0, 0], n, k, bitgen, &acts[0])
            softmax_rows(&logits[0, 0], n, k, &p[0, 0])
        return actions, probs
''')


@needs_cython
def test_downstream_extension_can_cimport_kernels(tmp_path):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip("no C compiler")
    pytest.importorskip("Cython")
    (tmp_path / "downstream.pyx").write_text(README_EXAMPLE)
    (tmp_path / "setup.py").write_text(textwrap.dedent(f'''
        import numpy as np
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        ext = Extension("downstream", ["downstream.pyx"], include_dirs=[np.get_include()])
        setup(ext_modules=cythonize([ext], include_path=[{ROOT!r}], language_level=3), script_args=["build_ext", "--inplace", "-q"])
    '''))
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "setup.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check = textwrap.dedent('''
        import numpy as np, downstream, metarl_fast as mf
        logits = np.random.default_rng(0).standard_normal((500, 4))
        acts, probs = downstream.greedy_mass(logits, np.random.default_rng(7))
        with mf.use_backend("numpy"):
            assert (acts == mf.sample_actions(logits, np.random.default_rng(7))).all()
            assert np.allclose(probs, mf.softmax(logits))
        print("ok")
    ''')
    res = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
