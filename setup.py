"""Build the Cython kernels of metarl_fast.

Every ``metarl_fast/_core/*.pyx`` is compiled with the same directives and flags.
Environment variables:

- ``METARL_FAST_ONLY=policy,replay``  build only these kernel modules (developer convenience);
- ``METARL_FAST_DEBUG=1``             bounds/wraparound/initialized checks back on, -O0;
- ``METARL_FAST_NO_OPENMP=1``         never use OpenMP even if the compiler supports it.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("METARL_FAST_DEBUG", "") not in ("", "0")


def _compiler_accepts(flag: str) -> bool:
    """True if the C compiler Python was built with accepts ``flag`` (compile + link)."""
    cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "probe.c")
        with open(c_file, "w") as fh:
            fh.write(src)
        try:
            res = subprocess.run(
                [cc, flag, c_file, "-o", os.path.join(tmp, "probe")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


def _openmp_flag():
    if os.environ.get("METARL_FAST_NO_OPENMP", "") not in ("", "0") or sys.platform == "win32":
        return None
    return "-fopenmp" if _compiler_accepts("-fopenmp") else None


OPENMP = _openmp_flag()
# -ffp-contract=off: no fused multiply-add, so the Cython kernels round exactly like the NumPy
# reference (identical exponentials => identical sampled actions).  Never -march=native / -ffast-math.
COMPILE_ARGS = ["-O0", "-g"] if DEBUG else ["-O3", "-ffp-contract=off"]
if OPENMP:
    COMPILE_ARGS.append(OPENMP)
LINK_ARGS = [OPENMP] if OPENMP else []

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}

numpy_random_lib = os.path.join(os.path.dirname(np.__file__), "random", "lib")
only = {m for m in os.environ.get("METARL_FAST_ONLY", "").split(",") if m}

extensions = []
for pyx in sorted(glob(os.path.join("metarl_fast", "_core", "*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    if only and name not in only:
        continue
    extensions.append(
        Extension(
            f"metarl_fast._core.{name}",
            [pyx],
            include_dirs=[np.get_include(), os.path.join("metarl_fast", "_core")],
            library_dirs=[numpy_random_lib],
            libraries=["npyrandom"] + ([] if sys.platform == "win32" else ["m"]),
            define_macros=[
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("METARL_FAST_OPENMP", "1" if OPENMP else "0"),
            ],
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
        )
    )

# Record how the extensions were built; `metarl-fast info` prints it.
with open(os.path.join("metarl_fast", "_build_info.py"), "w") as fh:
    fh.write('"""Written by setup.py at build time."""\n')
    fh.write(f"COMPILE_ARGS = {COMPILE_ARGS!r}\n")
    fh.write(f"OPENMP = {bool(OPENMP)!r}\n")
    fh.write(f"DEBUG = {DEBUG!r}\n")
    fh.write(f"BUILT_WITH_NUMPY = {np.__version__!r}\n")

JOBS = max(1, os.cpu_count() or 1)
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        include_path=[os.path.dirname(os.path.abspath(__file__))],
        nthreads=JOBS if JOBS > 1 else 0,
    ),
    # compile the extension modules in parallel (one C file per job)
    options={"build_ext": {"parallel": JOBS}},
)
