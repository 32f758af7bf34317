# MLP softmax policy kernels (see mlp.pyx and metarl_fast/reference/mlp.py for the layout and
# the arithmetic), for other Cython code to cimport:
#
#     from metarl_fast._core.mlp cimport MLPNet, mlp_net_init, mlp_forward
#
# All are noexcept nogil and trust their input (validated, C-contiguous, finite).  Return codes:
#   -1 success, -2 out of memory, -3 a result is not finite (overflow; nothing was drawn).
from cython cimport floating
from libc.stdint cimport int64_t
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef enum:
    MLP_OK = -1
    MLP_NO_MEMORY = -2
    MLP_OVERFLOW = -3
    MLP_MAX_DEPTH = 64        # hidden layers at most
    MLP_MAX_WIDTH = 1024      # units per hidden layer at most
    MLP_BLOCK_ROWS = 64       # rows carried through all layers at a time

cdef struct MLPNet:
    intp_t n_layers                       # Linear layers: len(hidden) + 1
    intp_t width[MLP_MAX_DEPTH + 2]       # (obs_dim, *hidden, n_actions)
    intp_t w_off[MLP_MAX_DEPTH + 1]       # W_l = params[w_off[l]:b_off[l]], (width[l], width[l+1])
    intp_t b_off[MLP_MAX_DEPTH + 1]       # b_l = params[b_off[l]:b_off[l] + width[l+1]]
    intp_t n_params
    intp_t max_width                      # max of width[0..n_layers]
    bint use_tanh                         # else relu

# Fills ``net`` for widths (obs_dim, hidden..., n_actions); returns the parameter count.
cdef intp_t mlp_net_init(MLPNet* net, intp_t obs_dim, const intp_t* hidden, intp_t n_hidden,
                         intp_t n_actions, bint use_tanh) noexcept nogil
# logits_out (n_rows, A) = the network's logits rounded to ``floating``.
cdef intp_t mlp_forward(const MLPNet* net, const floating* params, const floating* obs,
                        intp_t n_rows, floating* logits_out) noexcept nogil
# actions_out[i] ~ softmax(mlp_forward(...)[i]), one uniform per row; caller holds the lock.
cdef intp_t mlp_sample(const MLPNet* net, const floating* params, const floating* obs,
                       intp_t n_rows, bitgen_t* bitgen, int64_t* actions_out) noexcept nogil
