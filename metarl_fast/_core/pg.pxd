# Policy-gradient kernels (returns, GAE, softmax-policy gradients, optimizer updates, critics),
# for other Cython code to cimport:
#
#     from metarl_fast._core.pg cimport tabular_grad, adam_kernel
#
# All are noexcept nogil and trust their input (C-contiguous, in range, finite, B >= 0).
# Gradients are accumulated in float64 buffers ``grad`` that the caller zeroes; the functions
# returning intp_t give PG_OK (-1) on success or PG_NO_MEMORY (-2) (tabular_grad: or PG_BAD_INPUT).
from cython cimport floating
from libc.stdint cimport int64_t, uint8_t

ctypedef Py_ssize_t intp_t

cdef enum:
    PG_OK = -1
    PG_NO_MEMORY = -2
    PG_BAD_INPUT = -3
    PG_OPT_SGD = 0
    PG_OPT_ADAM = 1

# G[i] = r[i] + gamma * (1 - done[i]) * G[i+1], G[n] = bootstrap.
cdef void returns_scan(const floating* rewards, const uint8_t* dones, intp_t n, double gamma,
                       double bootstrap, floating* out) noexcept nogil
# A[i] = delta[i] + gamma * lam * (1 - done[i]) * A[i+1], A[n] = 0.
cdef void gae_scan(const floating* rewards, const floating* values, const floating* next_values,
                   const uint8_t* dones, intp_t n, double gamma, double lam,
                   floating* out) noexcept nogil
# V-trace over pieces ending at ends[i]: vs (targets) and adv (advantages), float64 (n,).
cdef void vtrace_scan(const floating* rewards, const floating* values, const floating* next_values,
                      const floating* log_rhos, const uint8_t* ends, intp_t n, double gamma,
                      double rho_cap, double c_cap, double* vs, double* adv) noexcept nogil
# grad (n_states * n_actions, zeroed) += d/dtheta [mean w A log pi + entropy_coef mean H].
# weights may be NULL (all ones).  Checks the steps itself: PG_BAD_INPUT if a state or action is
# out of range or an advantage or weight is not finite (grad is then partly written).
cdef intp_t tabular_grad(const floating* theta, intp_t n_states, intp_t n_actions,
                         const int64_t* states, const int64_t* actions, const floating* advantages,
                         const floating* weights, double entropy_coef, intp_t batch,
                         double* grad) noexcept nogil
# params = [W (n_features, n_actions) row-major, b (n_actions)]; features (batch, n_features).
cdef intp_t linear_grad(const floating* params, intp_t n_features, intp_t n_actions,
                        const floating* features, const int64_t* actions,
                        const floating* advantages, const floating* weights,
                        double entropy_coef, intp_t batch, double* grad) noexcept nogil
# linear_grad on the rows features[states] (features (n_states, n_features)), computed per state
# when n_states <= batch.  Checks states, actions and numbers itself, as tabular_grad.
cdef intp_t linear_states_grad(const floating* params, intp_t n_features, intp_t n_actions,
                               const floating* features, intp_t n_states, const int64_t* states,
                               const int64_t* actions, const floating* advantages,
                               const floating* weights, double entropy_coef, intp_t batch,
                               double* grad) noexcept nogil
# Optimizer updates along -scale * grad (PyTorch formulas).
cdef void sgd_kernel(floating* params, const floating* grad, floating* velocity, intp_t n,
                     double lr, double momentum, bint nesterov, double scale) noexcept nogil
cdef void adam_kernel(floating* params, const floating* grad, floating* exp_avg,
                      floating* exp_avg_sq, intp_t n, double step_size, double bc2_sqrt,
                      double beta1, double beta2, double eps, double scale) noexcept nogil
# grad_out = (floating) grad; clip (max_norm > 0); optimizer step ascending; returns the norm.
# hyper: SGD [lr, momentum, nesterov 0/1]; Adam [lr, beta1, beta2, eps, t (step number >= 1)].
cdef double clip_and_step(floating* params, const double* grad, floating* grad_out, intp_t n,
                          double max_norm, int opt_kind, floating* state0, floating* state1,
                          const double* hyper) noexcept nogil
