"""Softmax policy kernels in pure NumPy: the executable specification of ``_core/policy.pyx``.

All functions take C-contiguous ``(B, A)`` float32/float64 ``logits`` (a non-contiguous array is
copied once to C order; lists are converted to float64), ``B >= 0``, ``A >= 1``.  Computation runs
in float64 and results are cast to the input dtype.  Rules shared by both backends:

- the row max is subtracted before exponentiating, so huge logits (+-1e300) never overflow and
  rows of equal logits give uniform probabilities;
- ``-inf`` marks a forbidden action: probability 0, never sampled, log-probability ``-inf``;
- a row containing NaN or ``+inf``, or whose entries are all ``-inf``, raises ValueError naming
  the row, before anything is written or drawn.
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast.reference._math import exp_nonpos


def _shifted(logits):
    """(validated logits, z = logits - row max in float64, e = exp(z))."""
    x = _validate.check_logits(logits)
    xd = x.astype(np.float64, copy=False)
    bad = np.isnan(xd).any(axis=1) | np.isposinf(xd).any(axis=1)
    if xd.shape[0]:
        m = xd.max(axis=1) if xd.shape[0] else np.empty(0)
        bad |= m == -np.inf
        if bad.any():
            raise _validate.logits_row_error(x, int(np.flatnonzero(bad)[0]))
        z = xd - m[:, None]
    else:
        z = xd.copy()
    return x, z, exp_nonpos(z)


def _finish(result, dtype, out, name="out"):
    if out is None:
        return result.astype(dtype, copy=False)
    _validate.check_out(out, result.shape, dtype, name)
    out[...] = result
    return out


def softmax(logits, out=None):
    """Row-wise softmax probabilities.

    Parameters
    ----------
    logits : ndarray, shape (B, A), float32 or float64
    out : ndarray, shape (B, A), same dtype, optional
        Written in place and returned (no allocation).

    Returns
    -------
    probs : ndarray, shape (B, A), same dtype as ``logits``
    """
    x, z, e = _shifted(logits)
    if out is not None:
        _validate.check_out(out, x.shape, x.dtype)
    return _finish(e / e.sum(axis=1, keepdims=True), x.dtype, out)


def log_softmax(logits, out=None):
    """Row-wise log-probabilities ``z - log(sum(exp(z)))``, shape (B, A), dtype of ``logits``."""
    x, z, e = _shifted(logits)
    if out is not None:
        _validate.check_out(out, x.shape, x.dtype)
    return _finish(z - np.log(e.sum(axis=1, keepdims=True)), x.dtype, out)


def entropy(logits, out=None):
    """Entropy ``-sum_a pi_a log pi_a`` of each row, shape (B,), dtype of ``logits``.

    Forbidden (``-inf``) actions contribute 0.
    """
    x, z, e = _shifted(logits)
    if out is not None:
        _validate.check_out(out, (x.shape[0],), x.dtype)
    s = e.sum(axis=1)
    ez = np.where(e > 0, e * np.where(e > 0, z, 0.0), 0.0)
    return _finish(np.log(s) - ez.sum(axis=1) / s, x.dtype, out)


def log_prob(logits, actions, out=None):
    """``log pi(actions[i] | logits[i])``, shape (B,), dtype of ``logits``.

    ``actions``: integer array of shape (B,) with values in ``[0, A)`` (converted to int64).
    """
    x = _validate.check_logits(logits)
    acts = _validate.check_actions(actions, x.shape[0], x.shape[1])
    _, z, e = _shifted(x)
    if out is not None:
        _validate.check_out(out, (x.shape[0],), x.dtype)
    rows = np.arange(x.shape[0])
    return _finish(z[rows, acts] - np.log(e.sum(axis=1)), x.dtype, out)


def grad_log_prob(logits, actions, out=None):
    """Gradient of ``log pi(actions[i])`` w.r.t. ``logits[i]``: ``onehot(a) - pi``, shape (B, A)."""
    x = _validate.check_logits(logits)
    acts = _validate.check_actions(actions, x.shape[0], x.shape[1])
    _, z, e = _shifted(x)
    if out is not None:
        _validate.check_out(out, x.shape, x.dtype)
    grad = -(e / e.sum(axis=1, keepdims=True))
    rows = np.arange(x.shape[0])
    grad[rows, acts] += 1.0
    return _finish(grad, x.dtype, out)


def sample_actions(logits, rng, out=None):
    """Draw one action per row from ``softmax(logits)`` by inverse CDF.

    Exactly one ``rng.random()`` uniform ``u_i`` per row, drawn in row order.  With
    ``e = exp(z)`` (``z`` = logits minus the row max) and its running sum ``c`` (summed left to
    right), the action is the first ``a`` with ``u_i * c[A-1] < c[a]``.  Nothing is drawn if any
    row is invalid.

    Parameters
    ----------
    logits : ndarray, shape (B, A), float32 or float64
    rng : numpy.random.Generator
    out : ndarray, shape (B,), int64, optional

    Returns
    -------
    actions : ndarray, shape (B,), int64
    """
    _validate.check_rng(rng)
    x, z, e = _shifted(logits)
    if out is not None:
        _validate.check_out(out, (x.shape[0],), np.int64)
    if x.shape[0] == 0:
        return out if out is not None else np.empty(0, dtype=np.int64)
    cdf = np.cumsum(e, axis=1)
    target = rng.random(x.shape[0]) * cdf[:, -1]
    actions = (target[:, None] < cdf).argmax(axis=1).astype(np.int64)
    return _finish(actions, np.int64, out)


def sample_actions_at(logits, rows, rng, out=None):
    """``sample_actions(logits[rows], rng)`` without the gather: one action per entry of ``rows``
    (int (n,) in ``[0, R)``) from ``softmax(logits[rows[i]])``, the same actions and draws (one
    ``rng.random()`` per entry, in order), each of the ``R`` table rows exponentiated once.
    Every table row must be valid (finite, not all -inf), used or not; nothing is drawn otherwise.

    Parameters
    ----------
    logits : ndarray (R, A), float32 or float64 -- e.g. a tabular policy's theta
    rows : int array (n,), in [0, R)
    rng : numpy.random.Generator
    out : ndarray (n,), int64, optional

    Returns
    -------
    actions : ndarray (n,), int64
    """
    _validate.check_rng(rng)
    x, z, e = _shifted(logits)
    idx = _validate.int_array(rows, "rows", ndim=1, low=0, high=x.shape[0])
    if out is not None:
        _validate.check_out(out, (idx.shape[0],), np.int64)
    if idx.shape[0] == 0:
        return out if out is not None else np.empty(0, dtype=np.int64)
    cdf = np.cumsum(e, axis=1)[idx]
    target = rng.random(idx.shape[0]) * cdf[:, -1]
    actions = (target[:, None] < cdf).argmax(axis=1).astype(np.int64)
    return _finish(actions, np.int64, out)
