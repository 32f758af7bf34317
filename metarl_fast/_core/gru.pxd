# GRU softmax policy kernels for RL^2 (see gru.pyx and metarl_fast/reference/gru.py for the layout
# and the arithmetic), for other Cython code to cimport:
#
#     from metarl_fast._core.gru cimport GRUNet, gru_net_init, gru_step
#
# All are noexcept nogil, float64, and trust their input (validated, C-contiguous, finite).
# Return codes: -1 success, -2 out of memory, -3 a result is not finite (overflow; nothing drawn).
from libc.stdint cimport int64_t, uint8_t
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    GRU_OK = -1
    GRU_NO_MEMORY = -2
    GRU_OVERFLOW = -3
    GRU_MAX_HIDDEN = 512

cdef struct GRUNet:
    intp_t input_dim      # D
    intp_t hidden         # H
    intp_t n_actions      # A
    intp_t n_params       # P = 3H (D + H + 2) + (H + 1)(A + 1)
    intp_t wx_off         # W_x (D, 3H), gate blocks r | z | n
    intp_t wh_off         # W_h (H, 3H)
    intp_t bx_off         # b_x (3H,)
    intp_t bh_off         # b_h (3H,)
    intp_t wo_off         # W_out (H, A + 1): policy columns, then the value column
    intp_t bo_off         # b_out (A + 1,)

# Fills ``net``; returns the parameter count P.
cdef intp_t gru_net_init(GRUNet* net, intp_t input_dim, intp_t hidden,
                         intp_t n_actions) noexcept nogil
# The forward pass over n_steps steps of n_rows trials: inputs (T, B, D), h0 (B, H), resets (T, B)
# (nonzero: zero the state before step t) -> logits_out (T, B, A), values_out (T, B),
# hidden_out (T + 1, B, H), and unless NULL trace_out (T, B, 4H): per step and row the gates
# r | z | n | g_n (g_n = b_hn + hp W_hn), what gru_bptt needs.
cdef intp_t gru_run(const GRUNet* net, const double* params, const double* inputs,
                    const double* h0, const uint8_t* resets, intp_t n_steps, intp_t n_rows,
                    double* logits_out, double* values_out, double* hidden_out,
                    double* trace_out) noexcept nogil
# grad_out (P,) = d/d params of sum(dlogits * logits) + sum(dvalues * values) (BPTT), from the
# hidden_out and trace_out of gru_run on the same arguments (hidden_in, trace_in), or, when either
# is NULL, by rerunning the forward pass (the same gradient, bit for bit).
cdef intp_t gru_bptt(const GRUNet* net, const double* params, const double* inputs,
                     const double* h0, const uint8_t* resets, intp_t n_steps, intp_t n_rows,
                     const double* dlogits, const double* dvalues, const double* hidden_in,
                     const double* trace_in, double* grad_out) noexcept nogil
# One step: inputs (B, D), h (B, H) -> logits_out (B, A), values_out (B,), h_out (B, H) (may be h),
# then actions_out[i] ~ softmax(logits_out[i]), one uniform per row in row order (skipped when
# bitgen is NULL).  The caller holds the BitGenerator's lock.
cdef intp_t gru_step(const GRUNet* net, const double* params, const double* inputs,
                     const double* h, intp_t n_rows, bitgen_t* bitgen, int64_t* actions_out,
                     double* logits_out, double* values_out, double* h_out) noexcept nogil
