"""A numpy Generator whose ``random()`` values are chosen by the test (boundary cases that random
data never hits: a uniform exactly on a CDF boundary, 0, or the largest double below 1)."""
import numpy as np

TOP = 1.0 - 2.0 ** -53  # the largest value Generator.random() returns


def _untemper(y):
    """Inverse of MT19937's output tempering."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    r = y
    for _ in range(5):
        r = y ^ ((r << 7) & 0x9D2C5680)
    y = r & 0xFFFFFFFF
    r = y
    for _ in range(3):
        r = y ^ (r >> 11)
    return r & 0xFFFFFFFF


def scripted_rng(uniforms):
    """A numpy Generator whose first ``rng.random()`` values (also through the compiled kernels,
    which call the same BitGenerator's next_double) are exactly ``uniforms`` (at most 312, each a
    multiple of 2**-53 in [0, 1)).  MT19937 builds a double from two 32-bit outputs, and its state
    words are untempered outputs, so choosing the state chooses the doubles."""
    words = []
    for u in uniforms:
        k = int(u * 2.0 ** 53)
        assert k / 2.0 ** 53 == u and 0 <= k < 2 ** 53, u
        words += [_untemper((k >> 26) << 5), _untemper((k & (2 ** 26 - 1)) << 6)]
    assert len(words) <= 624
    key = np.zeros(624, dtype=np.uint32)
    key[:len(words)] = words
    bit_generator = np.random.MT19937(0)
    bit_generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 0}}
    return np.random.Generator(bit_generator)
