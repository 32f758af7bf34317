"""Standard normal fills bit-identical to NumPy's ``Generator.standard_normal``, without its
mispredicted branch.

NumPy draws a standard normal with a 256-layer ziggurat: one 64-bit draw ``r`` gives the layer
``idx`` (low 8 bits), a sign bit and a 52-bit magnitude ``rabs``; ``x = rabs * w[idx]`` is
returned (negated if the sign bit is set) whenever ``rabs < k[idx]`` -- about 98.5% of draws --
and otherwise a rejection step (wedge or tail) draws more numbers.  Its compiled sign test is a
branch that mispredicts on half of all draws (about 7 ns each on this project's machine, half
the cost of a draw).

This module runs the common case inline with the sign applied to the bits (no branch), and hands
every other draw to NumPy's own ``random_standard_normal`` through a BitGenerator wrapper that
first replays the ``r`` already drawn, then forwards to the real BitGenerator.  So the rare path
is NumPy's code on NumPy's stream, and the common path is the same arithmetic.

The tables ``w`` and ``k`` are not exported by NumPy; they are read off NumPy's own function at
import time by feeding it chosen 64-bit words through a probing BitGenerator (``w[idx]`` is the
value returned for magnitude 1; ``k[idx]`` the smallest magnitude that is not accepted at once,
found by bisection).  The result is then checked against ``random_standard_normal_fill`` on
200 000 draws that include rejection steps; if anything differs (a future NumPy with another
algorithm), ``standard_normal_fill`` simply calls NumPy's fill.  ``fast_path_active()`` says
which one runs.
"""
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport random_standard_normal, random_standard_normal_fill

import numpy as np

from metarl_fast._core.rng cimport bitgen_of

cdef uint64_t KI[256]
cdef double WI[256]
cdef bint FAST = False

cdef extern from *:
    """
    #define MF_MAG_MASK 0x000FFFFFFFFFFFFFULL  /* the 52 magnitude bits of a ziggurat draw */
    """
    uint64_t MAG_MASK "MF_MAG_MASK"


# ---------------------------------------------------------------------------------------------
# The replaying BitGenerator (hands a drawn word back to NumPy's function)
# ---------------------------------------------------------------------------------------------

cdef struct Replay:
    bitgen_t* real
    uint64_t word
    bint pending


cdef uint64_t _replay_u64(void* st) noexcept nogil:
    cdef Replay* rp = <Replay*> st
    if rp.pending:
        rp.pending = False
        return rp.word
    return rp.real.next_uint64(rp.real.state)


cdef uint32_t _replay_u32(void* st) noexcept nogil:
    cdef Replay* rp = <Replay*> st
    return rp.real.next_uint32(rp.real.state)


cdef double _replay_double(void* st) noexcept nogil:
    cdef Replay* rp = <Replay*> st
    return rp.real.next_double(rp.real.state)


cdef uint64_t _replay_raw(void* st) noexcept nogil:
    cdef Replay* rp = <Replay*> st
    return rp.real.next_raw(rp.real.state)


cdef void standard_normal_fill(bitgen_t* bitgen, intp_t n, double* out) noexcept nogil:
    """out[:n] = the next n values of ``rng.standard_normal()`` drawn from bitgen."""
    cdef intp_t i
    cdef uint64_t r, rabs, bits
    cdef int idx
    cdef double x
    cdef Replay rp
    cdef bitgen_t wrapper
    if not FAST:
        random_standard_normal_fill(bitgen, n, out)
        return
    rp.real = bitgen
    rp.pending = False
    wrapper.state = &rp
    wrapper.next_uint64 = _replay_u64
    wrapper.next_uint32 = _replay_u32
    wrapper.next_double = _replay_double
    wrapper.next_raw = _replay_raw
    for i in range(n):
        r = bitgen.next_uint64(bitgen.state)
        idx = r & 0xFF
        rabs = (r >> 9) & MAG_MASK
        if rabs < KI[idx]:
            x = <double> rabs * WI[idx]
            memcpy(&bits, &x, 8)
            bits ^= ((r >> 8) & 1) << 63  # the sign: a negation is exactly a flip of this bit
            memcpy(&out[i], &bits, 8)
        else:  # rejection step: NumPy's own code, starting from this very word
            rp.word = r
            rp.pending = True
            out[i] = random_standard_normal(&wrapper)


def fast_path_active():
    """True if ``standard_normal_fill`` runs the inline ziggurat (else it calls NumPy's fill)."""
    return FAST


def fill(bit_generator, double[::1] out):
    """Fill ``out`` with standard normals from ``bit_generator`` (under its lock).  For tests."""
    cdef bitgen_t* bg = bitgen_of(bit_generator)
    with bit_generator.lock:
        standard_normal_fill(bg, out.shape[0], &out[0] if out.shape[0] else NULL)


# ---------------------------------------------------------------------------------------------
# Reading the tables off NumPy's function
# ---------------------------------------------------------------------------------------------

cdef struct Probe:
    uint64_t first       # the word returned by the first next_uint64 call
    int n_u64            # next_uint64 calls made
    int n_double         # next_double calls made (a rejection step ran)


# Probe inputs after the first few calls vary (a Weyl sequence), so that even a NumPy whose
# normal sampler works differently terminates here; its values then fail the check and the
# module falls back to NumPy's fill.
cdef uint64_t WEYL = 0x9E3779B97F4A7C15


cdef uint64_t _probe_u64(void* st) noexcept nogil:
    cdef Probe* p = <Probe*> st
    p.n_u64 += 1
    if p.n_u64 == 1:
        return p.first
    if p.n_u64 < 8:
        return <uint64_t> 128  # layer 128, magnitude 0: accepted at once by the ziggurat
    return <uint64_t> p.n_u64 * WEYL


cdef uint32_t _probe_u32(void* st) noexcept nogil:
    return 0


cdef double _probe_double(void* st) noexcept nogil:
    cdef Probe* p = <Probe*> st
    p.n_double += 1
    if p.n_double < 8:
        return 0.5  # ends the ziggurat's tail loop at once, and decides any wedge test
    return <double> ((<uint64_t> p.n_double * WEYL) >> 11) * (1.0 / 9007199254740992.0)


cdef uint64_t _probe_raw(void* st) noexcept nogil:
    return 0


cdef double _probe(uint64_t word, Probe* p) noexcept nogil:
    cdef bitgen_t bg
    p.first = word
    p.n_u64 = 0
    p.n_double = 0
    bg.state = p
    bg.next_uint64 = _probe_u64
    bg.next_uint32 = _probe_u32
    bg.next_double = _probe_double
    bg.next_raw = _probe_raw
    return random_standard_normal(&bg)


cdef bint _accepted_at_once(int idx, uint64_t rabs) noexcept nogil:
    cdef Probe p
    _probe((rabs << 9) | <uint64_t> idx, &p)
    return p.n_u64 == 1 and p.n_double == 0


cdef bint _read_tables() noexcept nogil:
    cdef int idx
    cdef uint64_t lo, hi, mid
    cdef Probe p
    cdef double x
    for idx in range(256):
        # k[idx]: the smallest magnitude not accepted at once (accepted <=> rabs < k[idx])
        if _accepted_at_once(idx, MAG_MASK):
            KI[idx] = MAG_MASK + 1
        else:
            lo, hi = 0, MAG_MASK  # invariant: lo is accepted or lo == 0, hi is not accepted
            if not _accepted_at_once(idx, 0):
                KI[idx] = 0
            else:
                while hi - lo > 1:
                    mid = lo + (hi - lo) // 2
                    if _accepted_at_once(idx, mid):
                        lo = mid
                    else:
                        hi = mid
                KI[idx] = hi
        # w[idx]: the value for magnitude 1 (accepted at once, or by the wedge test of the first
        # word when k[idx] <= 1: x is tiny, so exp(-x*x/2) == 1 accepts it)
        x = _probe((<uint64_t> 1 << 9) | <uint64_t> idx, &p)
        if p.n_u64 != 1:
            return False
        WI[idx] = x
    return True


cdef bint _matches_numpy(intp_t n) except -1:
    """The fast fill equals NumPy's on n draws from two identically seeded PCG64 and on the
    Philox stream, with rejection steps among them."""
    global FAST
    cdef double[::1] ours, theirs
    for bit_generator, seed in ((np.random.PCG64, 20261129), (np.random.Philox, 7)):
        a, b = bit_generator(seed), bit_generator(seed)
        ours = np.empty(n)
        theirs = np.empty(n)
        FAST = True
        standard_normal_fill(bitgen_of(a), n, &ours[0])
        FAST = False
        random_standard_normal_fill(bitgen_of(b), n, &theirs[0])
        if not np.array_equal(np.asarray(ours).view(np.uint64), np.asarray(theirs).view(np.uint64)):
            return False
        if a.random_raw(4).tolist() != b.random_raw(4).tolist():  # same position in the stream
            return False
    return True


cdef uint64_t _scripted_u64(void* st) noexcept nogil:
    cdef Probe* s = <Probe*> st
    s.n_u64 += 1
    return s.first if s.n_u64 == 1 else <uint64_t> s.n_u64 * WEYL


cdef double _scripted_double(void* st) noexcept nogil:
    cdef Probe* s = <Probe*> st
    s.n_double += 1
    return <double> ((<uint64_t> s.n_double * WEYL) >> 11) * (1.0 / 9007199254740992.0)


cdef double _draw_scripted(uint64_t word, bint ours, Probe* s):
    # a Probe's counters, with a stream that starts with ``word`` then runs a Weyl sequence
    cdef bitgen_t bg
    cdef double out
    s.first = word
    s.n_u64 = 0
    s.n_double = 0
    bg.state = s
    bg.next_uint64 = _scripted_u64
    bg.next_uint32 = _probe_u32
    bg.next_double = _scripted_double
    bg.next_raw = _probe_raw
    if ours:
        standard_normal_fill(&bg, 1, &out)
    else:
        out = random_standard_normal(&bg)
    return out


def _first_draw_from_word(uint64_t word):
    """For tests: one draw of ``standard_normal_fill`` and one of NumPy's own
    ``random_standard_normal`` from a stream that starts with ``word`` (then fixed words), as
    ``((value, u64 words used, doubles used) ours, (...) NumPy's)``: they must be equal for every
    word, those at the acceptance boundary ``k[idx]`` of each layer included."""
    cdef Probe a, b
    x = _draw_scripted(word, True, &a)
    y = _draw_scripted(word, False, &b)
    return (x, a.n_u64, a.n_double), (y, b.n_u64, b.n_double)


def _tables():
    """For tests: the ziggurat tables read off NumPy, ``(k (256,) uint64, w (256,) float64)``."""
    return (np.array([KI[i] for i in range(256)], dtype=np.uint64),
            np.array([WI[i] for i in range(256)], dtype=np.float64))


def _init():
    global FAST
    FAST = False
    if _read_tables() and _matches_numpy(200_000):
        FAST = True


_init()
