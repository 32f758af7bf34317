"""Downstream Cython code can cimport the nogil kernels (the README's example, compiled for real)."""
import textwrap

from downstream import build_and_check
from conftest import needs_cython

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


CHECK = """
        import numpy as np, downstream, metarl_fast as mf
        logits = np.random.default_rng(0).standard_normal((500, 4))
        acts, probs = downstream.greedy_mass(logits, np.random.default_rng(7))
        with mf.use_backend("numpy"):
            assert (acts == mf.sample_actions(logits, np.random.default_rng(7))).all()
            assert np.allclose(probs, mf.softmax(logits))
        print("ok")
"""


@needs_cython
def test_downstream_extension_can_cimport_kernels(tmp_path):
    build_and_check(tmp_path, "downstream", README_EXAMPLE, CHECK)
