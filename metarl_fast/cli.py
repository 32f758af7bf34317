"""The ``metarl-fast`` command line."""
import argparse
import os
import platform
import sys


def _info(args):
    import numpy as np

    import metarl_fast
    from metarl_fast import _backend

    try:
        from metarl_fast import _build_info as build
        compile_args = " ".join(build.COMPILE_ARGS)
        openmp = "yes" if build.OPENMP else "no (built without OpenMP)"
        built_numpy = build.BUILT_WITH_NUMPY
    except ImportError:
        compile_args, openmp, built_numpy = "(not built)", "unknown", "(not built)"
    rows = [
        ("metarl_fast", metarl_fast.__version__),
        ("backend", metarl_fast.get_backend()),
        ("cython extension", "available" if _backend.is_available("cython") else "NOT BUILT"),
        ("compiler flags", compile_args),
        ("OpenMP", openmp),
        ("numpy", f"{np.__version__} (built against {built_numpy})"),
        ("python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})"),
        ("cpu cores", str(os.cpu_count())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser():
    import metarl_fast

    # Note: without the compiled extension, select the numpy backend with METARL_FAST_BACKEND=numpy
    # (the package picks its backend when it is imported, before any option is read).
    parser = argparse.ArgumentParser(prog="metarl-fast", description="Meta-reinforcement learning on the CPU.")
    parser.add_argument("--version", action="version", version=f"metarl-fast {metarl_fast.__version__}")
    parser.add_argument("--backend", choices=("cython", "numpy"), help="kernel backend (default: cython)")
    sub = parser.add_subparsers(dest="command")
    p_info = sub.add_parser("info", help="version, backend, build flags, OpenMP and NumPy versions")
    p_info.set_defaults(func=_info)
    return parser


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    import metarl_fast

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        try:
            metarl_fast.set_backend(args.backend)
        except ImportError as err:
            print(f"metarl-fast: error: {err}", file=sys.stderr)
            return 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return args.func(args)
