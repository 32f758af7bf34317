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
from setuptools.command.build_ext import build_ext

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

# Record how the extensions were built; `metarl-fast info` prints it.  A module already built in
# the source tree with the same record (flags, numpy) and newer than its sources is reused.
BUILD_INFO = os.path.join("metarl_fast", "_build_info.py")
build_info = ('"""Written by setup.py at build time."""\n'
              f"COMPILE_ARGS = {COMPILE_ARGS!r}\n"
              f"OPENMP = {bool(OPENMP)!r}\n"
              f"DEBUG = {DEBUG!r}\n"
              f"BUILT_WITH_NUMPY = {np.__version__!r}\n")
try:
    with open(BUILD_INFO) as fh:
        SAME_BUILD = fh.read() == build_info
except OSError:
    SAME_BUILD = False


def _say(message):
    """A progress line: on stderr (shown by `pip install -v` and in logs) and, since pip hides a
    build's output otherwise, on the user's terminal when there is one."""
    print(message, file=sys.stderr, flush=True)
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(message + "\n")
    except OSError:
        pass


def _in_tree_module(name):
    """The compiled module ``metarl_fast._core.<name>`` in the source tree (may not exist)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return os.path.join("metarl_fast", "_core", name + suffix)


def _up_to_date_in_tree(name):
    """True if the source tree holds module ``name`` built with this build's flags and numpy,
    newer than its .pyx and every .pxd and .h of the kernels (the project's sources, not the
    generated C, which a fresh build environment regenerates with new timestamps)."""
    built = _in_tree_module(name)
    if not SAME_BUILD or not os.path.exists(built):
        return False
    sources = [os.path.join("metarl_fast", "_core", name + ".pyx")]
    sources += glob(os.path.join("metarl_fast", "_core", "*.pxd"))
    sources += glob(os.path.join("metarl_fast", "_core", "*.h"))
    return os.path.getmtime(built) >= max(os.path.getmtime(p) for p in sources)


class BuildExt(build_ext):
    """build_ext that says what it compiles and reuses in-tree modules that are up to date (an
    editable install builds in a fresh directory and would otherwise compile everything again)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:  # (an editable install's build does not pass the setup() options on)
            self.parallel = JOBS

    def run(self):
        super().run()
        if not SAME_BUILD:  # recorded once the build has succeeded
            with open(BUILD_INFO, "w") as fh:
                fh.write(build_info)
            if self.inplace:
                return
            # the installed package (a wheel, or an editable install's build directory) holds it too
            target = os.path.join(self.build_lib, BUILD_INFO)
            if os.path.isdir(os.path.dirname(target)):
                shutil.copy2(BUILD_INFO, target)

    def build_extensions(self):
        self._reused = 0
        todo = [ext for ext in self.extensions if not self._up_to_date_in_tree(ext)]
        if todo:
            _say(f"metarl_fast: compiling {len(todo)} Cython kernel module(s) of {len(self.extensions)} "
                 f"with {self.parallel or 1} job(s)...")
        super().build_extensions()
        if self._reused:
            _say(f"metarl_fast: {self._reused} module(s) already built in the source tree and up to date: reused")

    def _up_to_date_in_tree(self, ext):
        return not self.force and _up_to_date_in_tree(ext.name.rsplit(".", 1)[1])

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        built = _in_tree_module(ext.name.rsplit(".", 1)[1])
        if self._up_to_date_in_tree(ext):
            if os.path.abspath(built) != os.path.abspath(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(built, target)
            self._reused += 1
            return
        super().build_extension(ext)

JOBS = max(1, os.cpu_count() or 1)
# modules already built in the tree are not even translated again (build_ext copies them)
FORCE = "--force" in sys.argv or "-f" in sys.argv
stale = [ext for ext in extensions if FORCE or not _up_to_date_in_tree(ext.name.rsplit(".", 1)[1])]
fresh = [ext for ext in extensions if ext not in stale]
setup(
    ext_modules=cythonize(
        stale,
        compiler_directives=DIRECTIVES,
        include_path=[os.path.dirname(os.path.abspath(__file__))],
        nthreads=JOBS if JOBS > 1 else 0,
    ) + fresh,
    # compile the extension modules in parallel (one C file per job)
    options={"build_ext": {"parallel": JOBS}},
    cmdclass={"build_ext": BuildExt},
)
