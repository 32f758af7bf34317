# Vectorisable exp for x <= 0, bit-identical to metarl_fast.reference._math.exp_nonpos.
cdef extern from "mf_exp.h" nogil:
    double mf_exp_nonpos(double x)
    void mf_exp_nonpos_block(const double* x, double* y, Py_ssize_t n)
