"""Compile a small Cython extension the way a downstream project would, then run a check on it.

Shared by the cimport tests of every kernel family: the ``.pxd`` files are found through
``include_path`` (the directory that holds the ``metarl_fast`` package) exactly as the README says.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_and_check(tmp_path, module, pyx_source, check_source, *, numpy_random=False):
    """Build ``module`` from ``pyx_source`` in ``tmp_path`` and run ``check_source`` (must print "ok").

    ``numpy_random``: also link NumPy's ``npyrandom`` and see ``_core/*.h`` (for kernels that use
    ``numpy.random.c_distributions`` or ``mf_exp.h``).  Skips when no C compiler or Cython is present.
    """
    if shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None:
        pytest.skip("no C compiler")
    pytest.importorskip("Cython")
    (tmp_path / f"{module}.pyx").write_text(pyx_source)
    include_dirs = [np.get_include()]
    extra = ""
    if numpy_random:
        include_dirs.append(os.path.join(ROOT, "metarl_fast", "_core"))
        lib = os.path.join(os.path.dirname(np.__file__), "random", "lib")
        extra = f', library_dirs=[{lib!r}], libraries=["npyrandom", "m"]'
    (tmp_path / "setup.py").write_text(textwrap.dedent(f'''
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        ext = Extension({module!r}, [{module + ".pyx"!r}], include_dirs={include_dirs!r}{extra},
                        extra_compile_args=["-O0", "-ffp-contract=off"])  # compiles fast; same IEEE ops
        setup(ext_modules=cythonize([ext], include_path=[{ROOT!r}], language_level=3),
              script_args=["build_ext", "--inplace", "-q"])
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    res = subprocess.run([sys.executable, "setup.py"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(check_source)], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
