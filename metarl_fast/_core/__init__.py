"""Compiled Cython kernels (nogil, typed memoryviews). Twins of :mod:`metarl_fast.reference`."""
