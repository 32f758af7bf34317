# Access to a numpy.random.Generator's BitGenerator from Cython (NumPy's public C API).
#
# Draw only while holding ``rng.bit_generator.lock``; one ``next_double`` is exactly one
# ``rng.random()`` value, so kernels that draw in the same order as the NumPy reference consume
# the same stream and make the same decisions.
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from numpy.random cimport bitgen_t


cdef inline bitgen_t* bitgen_of(object bit_generator) except NULL:
    """The C state of ``bit_generator`` (a numpy.random.BitGenerator)."""
    capsule = bit_generator.capsule
    if not PyCapsule_IsValid(capsule, "BitGenerator"):
        raise ValueError("rng.bit_generator has no valid BitGenerator capsule")
    return <bitgen_t*> PyCapsule_GetPointer(capsule, "BitGenerator")


cdef inline double next_uniform(bitgen_t* bitgen) noexcept nogil:
    """One uniform double in [0, 1): the value ``Generator.random()`` would return."""
    return bitgen.next_double(bitgen.state)
