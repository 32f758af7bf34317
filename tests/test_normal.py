"""The compiled standard-normal fill equals NumPy's ``Generator.standard_normal`` bit for bit."""
import numpy as np
import pytest

normal = pytest.importorskip("metarl_fast._core.normal")

BIT_GENERATORS = [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox,
                  np.random.SFC64]


def test_fast_path_is_active():
    # the tables were read off NumPy's own function and checked against its fill at import
    assert normal.fast_path_active(), "the inline ziggurat fell back to NumPy's fill"


@pytest.mark.parametrize("bit_generator", BIT_GENERATORS)
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 300_000])
def test_fill_equals_numpy_bit_for_bit(bit_generator, n):
    ours, theirs = np.random.Generator(bit_generator(n + 3)), np.random.Generator(bit_generator(n + 3))
    out = np.empty(n)
    normal.fill(ours.bit_generator, out)
    expected = theirs.standard_normal(n)
    np.testing.assert_array_equal(out.view(np.uint64), expected.view(np.uint64))
    # the same number of words was consumed: both streams continue alike
    np.testing.assert_array_equal(ours.random(5), theirs.random(5))


def test_rejection_steps_are_numpys():
    """About 0.7% of draws leave the fast path (wedges and the tail beyond 3.65); among 2e6
    draws there are thousands, tail values included, and they must match too."""
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    out = np.empty(2_000_000)
    normal.fill(ours.bit_generator, out)
    expected = theirs.standard_normal(out.size)
    assert np.sum(np.abs(expected) > 3.66) > 100  # tail draws occurred
    np.testing.assert_array_equal(out.view(np.uint64), expected.view(np.uint64))
    assert out.mean() == pytest.approx(0.0, abs=5e-3) and out.var() == pytest.approx(1.0, abs=5e-3)


def test_negative_zero_and_sign():
    ours, theirs = np.random.default_rng(3), np.random.default_rng(3)
    out = np.empty(100_000)
    normal.fill(ours.bit_generator, out)
    expected = theirs.standard_normal(out.size)
    assert np.array_equal(np.signbit(out), np.signbit(expected))
    assert 0.45 < np.mean(np.signbit(out)) < 0.55


DOWNSTREAM = '''
from numpy.random cimport bitgen_t
from metarl_fast._core.rng cimport bitgen_of
from metarl_fast._core.normal cimport standard_normal_fill

def fill(rng, double[::1] out):
    cdef bitgen_t* bitgen = bitgen_of(rng.bit_generator)
    with rng.bit_generator.lock:
        standard_normal_fill(bitgen, out.shape[0], &out[0])
'''

CHECK = '''
import numpy as np, normal_downstream
out = np.empty(50_000)
normal_downstream.fill(np.random.default_rng(4), out)
assert np.array_equal(out, np.random.default_rng(4).standard_normal(50_000))
print("ok")
'''


def test_downstream_extension_can_cimport_the_normal_fill(tmp_path):
    from downstream import build_and_check
    build_and_check(tmp_path, "normal_downstream", DOWNSTREAM, CHECK, numpy_random=True)
