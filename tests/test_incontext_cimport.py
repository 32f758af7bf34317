"""Downstream Cython code can cimport the in-context and baseline trial kernels (compiled for real)."""
import textwrap

from downstream import build_and_check
from conftest import needs_cython

DOWNSTREAM = textwrap.dedent('''
    # distutils: language = c
    from libc.stdint cimport int64_t
    from numpy.random cimport bitgen_t
    from metarl_fast._core.rng cimport bitgen_of
    from metarl_fast._core.incontext cimport IC_N_FEATURES, arm_features, play_trials
    from metarl_fast._core.baselines cimport C_THOMPSON, play_agent
    import numpy as np

    def trials(double[::1] weights, double[:, ::1] means, Py_ssize_t n_pulls, rng):
        """In-context trials then Thompson trials, from one nogil block of downstream code."""
        cdef Py_ssize_t n = means.shape[0], k = means.shape[1]
        ours = np.empty(n)
        thompson = np.empty(n)
        actions = np.empty((n, n_pulls), dtype=np.int64)
        cdef double[::1] o = ours, th = thompson
        cdef int64_t[:, ::1] acts = actions
        cdef bitgen_t* bitgen = bitgen_of(rng.bit_generator)
        with rng.bit_generator.lock, nogil:
            play_trials(&weights[0], &means[0, 0], n, k, n_pulls, bitgen, &o[0], &acts[0, 0],
                        NULL, NULL, NULL)
            play_agent(C_THOMPSON, 0.0, &means[0, 0], n, k, n_pulls, bitgen, &th[0])
        return ours, thompson, actions

    def features(double[::1] successes, double[::1] failures, double remaining, double n_pulls):
        phi = np.empty((successes.shape[0], IC_N_FEATURES))
        cdef double[:, ::1] p = phi
        arm_features(&successes[0], &failures[0], successes.shape[0], remaining, n_pulls, &p[0, 0])
        return phi
''')

CHECK = textwrap.dedent('''
    import numpy as np, downstream
    from metarl_fast.reference import baselines, incontext
    w = np.array([2.0, -1.0, 0.5, 3.0, 1.0, 0.7, -0.4, 0.9])
    means = np.random.default_rng(0).random((300, 4))
    ours, thompson, actions = downstream.trials(w, means, 7, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    expected_actions = np.empty((300, 7), dtype=np.int64)
    assert (ours == incontext.run_trials(w, means, 7, rng, expected_actions)).all()
    assert (actions == expected_actions).all()
    assert (thompson == baselines.run_agent_trials(baselines.AGENT_THOMPSON, 0.0, means, 7, rng)).all()
    s, f = np.array([2.0, 0.0, 1.0]), np.array([1.0, 0.0, 3.0])
    phi = downstream.features(s, f, 3.0, 10.0)
    assert (phi == incontext.bandit_features(s[None].astype(int), f[None].astype(int), 3, 10)[0]).all()
    print("ok")
''')


@needs_cython
def test_downstream_extension_can_cimport_trial_kernels(tmp_path):
    build_and_check(tmp_path, "downstream", DOWNSTREAM, CHECK, numpy_random=True)
