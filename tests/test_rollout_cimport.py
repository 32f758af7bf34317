"""Downstream Cython code can cimport the rollout kernels of ``_core/envs.pxd``: the drawing kernel
and the pre-drawn-blocks kernel (blocks placed in the output arrays, as the pxd allows) both equal
the NumPy reference."""
import textwrap

from conftest import needs_cython
from downstream import build_and_check

DOWNSTREAM = textwrap.dedent('''
    # distutils: language = c
    cimport numpy as cnp
    from libc.stdint cimport int64_t, uint8_t
    from numpy.random cimport bitgen_t
    from numpy.random.c_distributions cimport random_standard_normal_fill, random_standard_uniform_fill
    from metarl_fast._core.rng cimport bitgen_of
    from metarl_fast._core.envs cimport (EnvTablesC, RolloutOut, fill_tables, rollout_draw_kernel,
                                         rollout_kernel)
    import numpy as np
    from metarl_fast.tasks import padded_cdf_rows

    cnp.import_array()

    def run(tables, action_cdf, action_logp, policy_of_task, Py_ssize_t N, rng, bint predrawn):
        """Gaussian-reward, random-start-free tables only (enough for the check)."""
        cdef EnvTablesC t
        fill_tables(tables, &t)
        cdef Py_ssize_t T = t.n_tasks, H = t.horizon, cap = T * N * H, n
        obs, act, nxt, task = (np.empty(cap, dtype=np.int64) for _ in range(4))
        rew, logp = np.empty(cap), np.empty(cap)
        term, trunc = np.empty(cap, dtype=np.uint8), np.empty(cap, dtype=np.uint8)
        length, ret = np.empty(T * N, dtype=np.int64), np.empty(T * N)
        u_next = np.empty(cap)
        cdef int64_t[::1] o_obs = obs, o_act = act, o_next = nxt, o_task = task, o_len = length
        cdef double[::1] o_rew = rew, o_logp = logp, o_ret = ret, un = u_next
        cdef uint8_t[::1] o_term = term, o_trunc = trunc
        cdef RolloutOut out
        out.obs, out.action, out.next_obs, out.task_id = &o_obs[0], &o_act[0], &o_next[0], &o_task[0]
        out.reward, out.logp, out.episode_return = &o_rew[0], &o_logp[0], &o_ret[0]
        out.terminated, out.truncated, out.episode_length = &o_term[0], &o_trunc[0], &o_len[0]
        padded = padded_cdf_rows(action_cdf)  # read-only
        cdef const double[:, :, ::1] cdf = padded
        cdef const double[:, :, ::1] lp = action_logp
        cdef const int64_t[::1] pot = policy_of_task
        cdef bitgen_t* bitgen = bitgen_of(rng.bit_generator)
        with rng.bit_generator.lock, nogil:
            if predrawn:
                random_standard_uniform_fill(bitgen, cap, &o_logp[0])
                random_standard_normal_fill(bitgen, cap, &o_rew[0])
                random_standard_uniform_fill(bitgen, cap, &un[0])
                n = rollout_kernel(&t, &cdf[0, 0, 0], cdf.shape[2], &lp[0, 0, 0], &pot[0], N,
                                   NULL, &o_logp[0], &o_rew[0], &un[0], &out)
            else:
                n = rollout_draw_kernel(&t, &cdf[0, 0, 0], cdf.shape[2], &lp[0, 0, 0], &pot[0], N,
                                        bitgen, &out)
        return (obs[:n], act[:n], rew[:n], nxt[:n], term[:n].view(bool), trunc[:n].view(bool),
                logp[:n], task[:n], length.reshape(T, N), ret.reshape(T, N))
''')

CHECK = """
        import numpy as np, rollout_downstream
        from metarl_fast.reference import envs as ref
        from metarl_fast.rollout import action_tables
        from metarl_fast.tasks import TabularMDPs
        for n_tasks, n_episodes in ((7, 3), (1, 5)):
            batch = TabularMDPs(n_states=6, n_actions=3, horizon=4).sample(n_tasks, 1)
            cdf, logp = action_tables(np.random.default_rng(2).normal(size=(1, 6, 3)))
            pot = np.zeros(n_tasks, dtype=np.int64)
            want = ref.rollout(batch.tables, cdf, logp, pot, n_episodes, np.random.default_rng(5))
            for predrawn in (False, True):
                rng = np.random.default_rng(5)
                got = rollout_downstream.run(batch.tables, cdf, logp, pot, n_episodes, rng, predrawn)
                for x, y in zip(got, want):
                    assert np.array_equal(x, y), (predrawn, x, y)
        print("ok")
"""


@needs_cython
def test_downstream_extension_can_cimport_rollout_kernels(tmp_path):
    build_and_check(tmp_path, "rollout_downstream", DOWNSTREAM, CHECK, numpy_random=True)
