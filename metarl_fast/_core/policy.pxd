# Softmax policy kernels over C-contiguous (B, A) logits, for other Cython code to cimport:
#
#     from metarl_fast._core.policy cimport sample_rows
#
# All are noexcept nogil and trust their input (C-contiguous, B >= 0, A >= 1).  Return codes:
#   -1               success
#   -2               out of memory
#   i >= 0           row i is invalid (contains NaN or +inf, or is all -inf); nothing was drawn
# Exponentials use mf_exp.h, so results equal the NumPy reference bit for bit (exp) and up to the
# summation order elsewhere; sampled actions are identical for the same BitGenerator state.
from cython cimport floating
from libc.stdint cimport int64_t
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    MF_OK = -1
    MF_NO_MEMORY = -2

cdef intp_t row_max(const floating* logits, intp_t n_rows, intp_t n_actions,
                    double* max_out) noexcept nogil
cdef intp_t softmax_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                         floating* probs_out) noexcept nogil
cdef intp_t log_softmax_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                             floating* log_probs_out) noexcept nogil
cdef intp_t entropy_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                         floating* entropy_out) noexcept nogil
cdef intp_t log_prob_rows(const floating* logits, const int64_t* actions, intp_t n_rows,
                          intp_t n_actions, floating* log_prob_out) noexcept nogil
cdef intp_t grad_log_prob_rows(const floating* logits, const int64_t* actions, intp_t n_rows,
                               intp_t n_actions, floating* grad_out) noexcept nogil
# The caller holds the BitGenerator's lock.  One uniform per row, drawn in row order.
cdef intp_t sample_rows(const floating* logits, intp_t n_rows, intp_t n_actions,
                        bitgen_t* bitgen, int64_t* actions_out) noexcept nogil
# actions_out[i] ~ softmax(logits[rows[i]]) for i < n_draws (rows in [0, n_rows)): the actions and
# draws of sample_rows on the gathered rows, each of the n_rows table rows exponentiated once.
cdef intp_t sample_rows_at(const floating* logits, intp_t n_rows, intp_t n_actions,
                           const int64_t* rows, intp_t n_draws, bitgen_t* bitgen,
                           int64_t* actions_out) noexcept nogil
