"""Shared fixtures: every behavioural test runs on each available backend.

With METARL_FAST_BACKEND=numpy in the environment (a checkout without the compiled extension),
only the numpy backend is exercised and twin-parity tests are skipped.
"""
import os

import numpy as np
import pytest
from hypothesis import settings

import metarl_fast as mf

# CI runs the same hypothesis examples every time (a red CI is then a real regression, reproducible
# by running with CI=true); locally hypothesis keeps exploring new inputs.  No deadline: a loaded
# machine must not turn a slow example into a failure.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ONLY_NUMPY = os.environ.get("METARL_FAST_BACKEND", "").strip().lower() == "numpy"
BACKENDS = ["numpy"] if ONLY_NUMPY or not mf.is_available("cython") else ["cython", "numpy"]
HAVE_CYTHON = "cython" in BACKENDS

needs_cython = pytest.mark.skipif(not HAVE_CYTHON, reason="compiled extension not used in this run")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test with the given backend active (restored afterwards)."""
    with mf.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
