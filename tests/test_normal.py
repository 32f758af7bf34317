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
    """About 1.5% of draws leave the fast path (wedges and the tail beyond 3.65); among 2e6
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


MAG_BITS = 52


def test_every_layer_matches_numpy_at_its_acceptance_boundary():
    """One draw from a chosen first word, ours against NumPy's own function: value and the number
    of words and doubles consumed.  The magnitudes k[idx] - 1 (the largest accepted at once) and
    k[idx] (the smallest sent to NumPy's rejection step) of every layer, and a few others: a table
    or comparison off by one shows here, where random streams would hit it once in 2**44 draws."""
    k, w = normal._tables()
    mag_max = (1 << MAG_BITS) - 1
    rng = np.random.default_rng(5)
    checked = 0
    for idx in range(256):
        ki = int(k[idx])
        magnitudes = {0, 1, mag_max, int(rng.integers(0, mag_max))}
        magnitudes |= {m for m in (ki - 1, ki, ki + 1) if 0 <= m <= mag_max}
        for rabs in magnitudes:
            for sign in (0, 1):
                word = (rabs << 9) | (sign << 8) | idx
                ours, theirs = normal._first_draw_from_word(word)
                assert ours[1:] == theirs[1:], (idx, rabs, ours, theirs)
                assert np.float64(ours[0]).view(np.uint64) == np.float64(theirs[0]).view(np.uint64), (idx, rabs)
                checked += 1
    assert checked > 256 * 8


def test_the_fast_path_takes_ziggurats_share_of_draws():
    """NumPy's 256-layer ziggurat accepts about 98.5% of words at once; the tables read off it must
    send exactly those to the inline path (a table that is too small still gives NumPy's values,
    through the slow rejection path, and only this share shows it)."""
    k, _ = normal._tables()
    words = np.random.default_rng(9).bit_generator.random_raw(1_000_000).astype(np.uint64)
    idx = (words & np.uint64(0xFF)).astype(np.int64)
    rabs = (words >> np.uint64(9)) & np.uint64((1 << MAG_BITS) - 1)
    fast = np.mean(rabs < k[idx])
    assert 0.98 < fast < 0.99, fast
