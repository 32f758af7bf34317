"""Downstream Cython code can cimport the nogil pg kernels declared in ``_core/pg.pxd``."""
import textwrap

from downstream import build_and_check
from conftest import needs_cython

DOWNSTREAM = textwrap.dedent('''
    from libc.stdint cimport int64_t, uint8_t
    from metarl_fast._core.pg cimport tabular_grad, adam_kernel, returns_scan, PG_OK
    import numpy as np

    def grad_then_adam(double[::1] theta, Py_ssize_t n_states, Py_ssize_t n_actions,
                       int64_t[::1] states, int64_t[::1] actions, double[::1] adv,
                       double lr):
        """Tabular gradient with the nogil kernel, then one Adam ascent step (t = 1)."""
        grad = np.zeros(theta.shape[0])
        m = np.zeros(theta.shape[0])
        v = np.zeros(theta.shape[0])
        cdef double[::1] g = grad, mv = m, vv = v
        cdef Py_ssize_t status
        with nogil:
            status = tabular_grad(&theta[0], n_states, n_actions, &states[0], &actions[0],
                                  &adv[0], <const double*> NULL, 0.0, states.shape[0], &g[0])
            adam_kernel(&theta[0], &g[0], &mv[0], &vv[0], theta.shape[0], lr / (1 - 0.9),
                        (1 - 0.999) ** 0.5, 0.9, 0.999, 1e-8, -1.0)
        assert status == PG_OK
        return grad

    def returns(double[::1] rewards, uint8_t[::1] dones, double gamma):
        out = np.empty(rewards.shape[0])
        cdef double[::1] o = out
        with nogil:
            returns_scan(&rewards[0], &dones[0], rewards.shape[0], gamma, 0.0, &o[0])
        return out
''')


CHECK = """
        import numpy as np, pg_downstream
        from metarl_fast.reference import pg as ref
        rng = np.random.default_rng(0)
        theta = rng.normal(size=12)
        s, a, adv = rng.integers(0, 4, 50), rng.integers(0, 3, 50), rng.normal(size=50)
        want = ref.tabular_policy_gradient(theta, 4, 3, s, a, adv)
        p = theta.copy()
        grad = pg_downstream.grad_then_adam(p, 4, 3, s, a, adv, 0.01)
        assert np.allclose(grad, want, rtol=1e-12, atol=1e-15)
        q, m, v = theta.copy(), np.zeros(12), np.zeros(12)
        ref.adam_update(q, want, m, v, 0.01 / (1 - 0.9), (1 - 0.999) ** 0.5, 0.9, 0.999, 1e-8, -1.0)
        assert np.allclose(p, q, rtol=1e-12)
        r, d = rng.normal(size=30), (rng.random(30) < 0.2).astype(np.uint8)
        assert np.array_equal(pg_downstream.returns(r, d, 0.9), ref.discounted_returns(r, d, 0.9))
        print("ok")
"""


@needs_cython
def test_downstream_extension_can_cimport_pg_kernels(tmp_path):
    build_and_check(tmp_path, "pg_downstream", DOWNSTREAM, CHECK)
