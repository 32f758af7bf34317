"""NumPy twin of ``_core/mf_exp.h``: the exponential both backends use for softmax policies.

Same operations in the same order as the C version, so results are bit-identical; that is what
makes sampled actions identical across backends.  Accurate to ~1 ulp against ``np.exp``.
"""
import numpy as np

EXP_LOWEST = -708.0
_LOG2E = 1.44269504088896338700e00
_SHIFTER = 6755399441055744.0
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER_BITS = np.uint64(0x4338000000000000)
# 1/13!, 1/12!, ..., 1/2!, 1, 1 (Horner order)
_COEFFS = (
    1.6059043836821613e-10, 2.08767569878681e-09, 2.505210838544172e-08,
    2.755731922398589e-07, 2.7557319223985893e-06, 2.48015873015873e-05,
    0.0001984126984126984, 0.001388888888888889, 0.008333333333333333,
    0.041666666666666664, 0.16666666666666666, 0.5, 1.0, 1.0,
)


def exp_nonpos(x):
    """exp(x) elementwise for a float64 array with x <= 0 (no NaN); x < -708 gives 0."""
    x = np.asarray(x, dtype=np.float64)
    xc = np.maximum(x, EXP_LOWEST)
    t = xc * _LOG2E + _SHIFTER
    n = t - _SHIFTER
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = np.full_like(r, _COEFFS[0])
    for c in _COEFFS[1:]:
        p *= r
        p += c
    scale = ((t.view(np.uint64) - _SHIFTER_BITS + np.uint64(1023)) << np.uint64(52)).view(np.float64)
    y = p * scale
    y[x < EXP_LOWEST] = 0.0
    return y


def linear_logits(phi, w):
    """``phi @ w`` over the last axis, feature by feature in index order (the Cython kernels sum
    in the same order, so the logits are bit-identical)."""
    logits = phi[..., 0] * w[0]
    for j in range(1, w.shape[0]):
        logits = logits + phi[..., j] * w[j]
    return logits
