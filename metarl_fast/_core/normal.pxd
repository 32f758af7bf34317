# Standard normal draws equal to NumPy's, for other Cython code to cimport:
#
#     from metarl_fast._core.normal cimport standard_normal_fill
#
# standard_normal_fill(bitgen, n, out) writes exactly the n values ``rng.standard_normal(n)``
# returns (NumPy's ziggurat, the same draws from the same BitGenerator), faster: see normal.pyx.
# The caller holds the BitGenerator's lock.
from numpy.random cimport bitgen_t

ctypedef Py_ssize_t intp_t

cdef void standard_normal_fill(bitgen_t* bitgen, intp_t n, double* out) noexcept nogil
