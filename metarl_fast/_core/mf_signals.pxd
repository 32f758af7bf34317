# Ctrl-C inside long nogil kernels (see mf_signals.h).
cdef extern from "mf_signals.h":
    ctypedef struct mf_pending_t:
        pass
    int mf_signal_raised(mf_pending_t* pending) noexcept nogil
    int mf_raise_pending(mf_pending_t* pending) except -1
