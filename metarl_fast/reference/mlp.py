"""MLP softmax policy kernels in pure NumPy: the executable specification of ``_core/mlp.pyx``.

The network
-----------
``obs (B, obs_dim) -> Linear -> act -> ... -> Linear -> logits (B, n_actions)``, with
``hidden`` a tuple of layer widths (each 1..1024, at most 64 layers; empty = a linear policy
``obs @ W + b``) and ``activation`` ``"tanh"`` or ``"relu"`` (``relu'(0) = 0``).

Parameter layout (:func:`mlp_layout`)
-------------------------------------
One flat vector ``params`` (P,), float32 or float64, layer by layer: ``W_0`` stored (in, out)
row-major, then ``b_0`` (out,), then ``W_1``, ``b_1``, ...  With widths
``n = (obs_dim, *hidden, n_actions)``, layer ``l`` maps ``n[l] -> n[l+1]``, ``W_l`` starts at
``w_offset_l`` and ``b_l`` at ``w_offset_l + n[l] * n[l+1]``; ``P = sum_l (n[l] + 1) n[l+1]``.
``z_l = a_l W_l + b_l`` (``a_0 = obs``), ``a_{l+1} = act(z_l)``, logits = ``z_{L-1}``.

Arithmetic (both backends)
--------------------------
Everything is computed in float64 (float32 params/obs are widened) and rounded once to the dtype
of ``params``.  The forward pass is bit-identical in both backends: each pre-activation is
``b[k]``, then ``+ a[j] * W[j, k]`` for ``j = 0, 1, ...`` in that order (no FMA), and tanh is
:func:`tanh` below (its own expm1 in plain IEEE steps, not libm or NumPy's tanh, whose last
bits differ between builds).  Sampling is therefore identical too.
Gradients, JVPs and HVPs are sums in another order in each backend (BLAS here, blocked loops in
Cython): they agree to ~1e-13 relative, not bit for bit.

Initialisation (:func:`mlp_init`)
---------------------------------
As PyTorch's ``nn.Linear``: every weight and bias of layer ``l`` ~ U(-k, k), ``k = 1/sqrt(n[l])``.
Draws: per layer, ``rng.uniform(-k, k, n[l] * n[l+1])`` (float64, in the storage order of
``W_l``), then ``rng.uniform(-k, k, n[l+1])`` for ``b_l``; then cast to ``dtype``.

Validation
----------
Every function checks its arguments first and raises TypeError (type, dtype) or ValueError
(shape, range, NaN/inf, ...) naming the argument; a rejected call writes nothing and draws
nothing.  ``params`` must be a flat C-contiguous float32/float64 ndarray of size P; ``obs``
must have the dtype of ``params`` (lists are converted; a non-contiguous array is copied once);
``coef``, ``v`` and ``dlogits`` are converted to float64.  Finite inputs whose logits or results
overflow raise FloatingPointError.
"""
import math
import numbers

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import pg as _pg
from metarl_fast.reference import policy as _policy
from metarl_fast.reference._math import exp_nonpos

ACTIVATIONS = ("tanh", "relu")
MAX_WIDTH = 1024
MAX_DEPTH = 64

# tanh|x| = -em / (2 + em), em = expm1(-2|x|): Cody-Waite reduction -2|x| = n ln2 + r
# (|r| <= ln2/2, ln2 in two parts as in exp_nonpos), expm1(r) = r + r^2 q(r) with
# q(r) = sum_{i=0..11} r^i / (i + 2)! (truncation < 1e-17 relative) evaluated in Estrin's scheme,
# then em = 2^n expm1(r) + (2^n - 1).  |x| > 20 is clamped to 20 (tanh rounds to 1 beyond 19.1).
TANH_CLAMP = 20.0
_EXPM1_COEFFS = (  # 1/2!, 1/3!, ..., 1/13!
    0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333,
    0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06,
    2.755731922398589e-07, 2.505210838544172e-08, 2.08767569878681e-09, 1.6059043836821613e-10,
)
_LOG2E = 1.44269504088896338700e00
_SHIFTER = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER_BITS = np.uint64(0x4338000000000000)


def tanh(z):
    """tanh of a float64 array, bit-identical to ``mf_mlp_tanh`` in ``_core/mlp_kernels.h``.

    One branch-free formula for every ``z`` (so the C loop vectorises): ``tanh|z| = -em / (2 + em)``
    with ``em = expm1(-2 min(|z|, 20))`` (see the comment above), sign copied from ``z``; NaN stays
    NaN, +-inf gives +-1.  Within 2 ulp of the exact tanh.
    """
    z = np.asarray(z, dtype=np.float64)
    a = np.abs(z)
    a = np.where(a > TANH_CLAMP, TANH_CLAMP, a)
    y = a * -2.0
    t = y * _LOG2E + _SHIFTER
    n = t - _SHIFTER
    r = (y - n * _LN2_HI) - n * _LN2_LO
    c = _EXPM1_COEFFS
    r2 = r * r
    r4 = r2 * r2
    q = ((c[0] + r * c[1]) + r2 * (c[2] + r * c[3])) + r4 * (
        ((c[4] + r * c[5]) + r2 * (c[6] + r * c[7]))
        + r4 * ((c[8] + r * c[9]) + r2 * (c[10] + r * c[11])))
    p = r + r2 * q
    with np.errstate(over="ignore", invalid="ignore"):  # NaN lanes: garbage scale, NaN result
        s = ((np.atleast_1d(t).view(np.uint64) - _SHIFTER_BITS + np.uint64(1023))
             << np.uint64(52)).view(np.float64).reshape(t.shape)
    em = s * p + (s - 1.0)
    return np.copysign(em / (2.0 + em), z)


# ---------------------------------------------------------------------------------------------
# Layout, initialisation, argument checks
# ---------------------------------------------------------------------------------------------

def check_hidden(hidden, name="hidden"):
    """``hidden`` as a tuple of Python ints, each in 1..1024, at most 64 of them."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints (layer widths), got {type(hidden).__name__}")
    if len(hidden) > MAX_DEPTH:
        raise ValueError(f"{name} has {len(hidden)} layers, at most {MAX_DEPTH} are supported")
    widths = []
    for i, w in enumerate(hidden):
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Integral):
            raise TypeError(f"{name}[{i}] must be an int, got {type(w).__name__}")
        if not 1 <= w <= MAX_WIDTH:
            raise ValueError(f"{name}[{i}] must be in 1..{MAX_WIDTH}, got {int(w)}")
        widths.append(int(w))
    return tuple(widths)


def check_activation(activation, name="activation"):
    if not isinstance(activation, str):
        raise TypeError(f"{name} must be one of {ACTIVATIONS}, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def mlp_layout(obs_dim, hidden, n_actions):
    """Where each layer's weights live in the flat parameter vector.

    Parameters
    ----------
    obs_dim, n_actions : int >= 1
    hidden : tuple of int, each in 1..1024 (may be empty)

    Returns
    -------
    layers : tuple of ``(w_offset, b_offset, n_in, n_out)``, one per Linear layer:
        ``W_l = params[w_offset : b_offset].reshape(n_in, n_out)``,
        ``b_l = params[b_offset : b_offset + n_out]``
    n_params : int, the size P of ``params``
    """
    obs_dim = _validate.positive_int(obs_dim, "obs_dim")
    n_actions = _validate.positive_int(n_actions, "n_actions")
    widths = (obs_dim,) + check_hidden(hidden) + (n_actions,)
    layers, offset = [], 0
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers.append((offset, offset + n_in * n_out, n_in, n_out))
        offset += (n_in + 1) * n_out
    _validate.check_table_size(offset, f"an MLP with obs_dim={obs_dim}, hidden={hidden}, "
                                       f"n_actions={n_actions} (its parameter vector)")
    return tuple(layers), offset


def mlp_init(obs_dim, hidden, n_actions, rng, dtype=np.float64):
    """Fresh parameters (P,) of ``dtype`` (float32/float64), initialised as PyTorch's ``nn.Linear``.

    Per layer ``l`` (fan-in ``n_in``, ``k = 1/sqrt(n_in)``): ``rng.uniform(-k, k, n_in * n_out)``
    for ``W_l`` in its (in, out) storage order, then ``rng.uniform(-k, k, n_out)`` for ``b_l``,
    drawn in float64 and cast to ``dtype``.
    """
    layers, n_params = mlp_layout(obs_dim, hidden, n_actions)
    _validate.check_rng(rng)
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from err
    if dt not in _validate.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    params = np.empty(n_params, dtype=dt)
    for w_off, b_off, n_in, n_out in layers:
        k = 1.0 / math.sqrt(n_in)
        params[w_off:b_off] = rng.uniform(-k, k, n_in * n_out)
        params[b_off:b_off + n_out] = rng.uniform(-k, k, n_out)
    return params


def _check_net(params, obs, hidden, activation):
    """(params, obs (B, obs_dim) of params' dtype, layers, activation); obs_dim from ``obs``."""
    params = _pg.check_params(params)
    activation = check_activation(activation)
    obs = _validate.float_array(obs, "obs", ndim=2, dtype=params.dtype)
    if obs.shape[1] < 1:
        raise ValueError(f"obs must have at least one column (obs_dim >= 1), got shape {obs.shape}")
    hidden = check_hidden(hidden)
    # n_actions follows from the size: P = (n_last + 1) * A + (the hidden layers' sizes)
    widths = (obs.shape[1],) + hidden
    head = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    rest = params.shape[0] - head
    n_actions = rest // (widths[-1] + 1) if rest > 0 else 0
    if n_actions < 1 or n_actions * (widths[-1] + 1) != rest:
        raise ValueError(f"params has size {params.shape[0]}, which is not the size of an MLP "
                         f"with obs_dim={obs.shape[1]} (obs.shape[1]) and hidden={hidden} for any "
                         f"n_actions >= 1 (mlp_layout gives the sizes)")
    layers, _ = mlp_layout(obs.shape[1], hidden, n_actions)
    if obs.size and not np.all(np.isfinite(obs)):
        raise ValueError("obs contains NaN or inf")
    return params, obs, layers, activation


def _out(out, shape, dtype):
    if out is not None:
        _validate.check_out(out, shape, dtype)
    return out


def _finish(result, dtype, out, what):
    """``result`` rounded to ``dtype`` into ``out`` (or new); FloatingPointError if not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        final = result.astype(dtype)
    if final.size and not np.all(np.isfinite(final)):
        raise FloatingPointError(f"{what} overflow the {np.dtype(dtype).name} range "
                                 f"(params or obs too large)")
    if out is None:
        return final
    out[...] = final
    return out


# ---------------------------------------------------------------------------------------------
# Forward, backward, R-passes (float64)
# ---------------------------------------------------------------------------------------------

def _weights(p64, layer):
    w_off, b_off, n_in, n_out = layer
    return p64[w_off:b_off].reshape(n_in, n_out), p64[b_off:b_off + n_out]


def _act(z, activation):
    return tanh(z) if activation == "tanh" else np.where(z > 0.0, z, 0.0)


def _dact(a, activation):
    """act'(z) from a = act(z): 1 - a^2 (tanh) or [z > 0] = [a > 0] (relu)."""
    return 1.0 - a * a if activation == "tanh" else (a > 0.0).astype(np.float64)


def _ddact(a, activation):
    """act''(z) from a = act(z): -2 a (1 - a^2) (tanh) or 0 (relu)."""
    return -2.0 * a * (1.0 - a * a) if activation == "tanh" else np.zeros_like(a)


def _forward(p64, x64, layers, activation):
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported on the results
        return _forward_sums(p64, x64, layers, activation)


def _forward_sums(p64, x64, layers, activation):
    """Activations ``[a_0 = obs, a_1, ..., a_{L-1}]`` and the float64 logits (B, A).

    Each pre-activation is ``b[k] + a[0] W[0, k] + a[1] W[1, k] + ...`` summed in that order
    (the Cython kernels' order, so both give the same bits)."""
    acts = [x64]
    a = x64
    for index, layer in enumerate(layers):
        w, b = _weights(p64, layer)
        z = np.empty((a.shape[0], w.shape[1]))
        z[...] = b
        for j in range(w.shape[0]):
            z += a[:, j:j + 1] * w[j]
        if index == len(layers) - 1:
            return acts, z
        a = _act(z, activation)
        acts.append(a)
    raise AssertionError("an MLP has at least one layer")


def _softmax64(logits):
    e = exp_nonpos(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pg_dlogits(logits, actions, coef):
    """d/d logits of sum_i coef_i log softmax(logits_i)[a_i] = coef_i (onehot(a_i) - p_i)."""
    g = -_softmax64(logits)
    g[np.arange(logits.shape[0]), actions] += 1.0
    return g * coef[:, None]


def _deltas(p64, layers, acts, activation, g):
    """Back-propagated ``delta_l = d/dz_l`` of ``sum_i g_i . logits_i``, per layer (B, n_out)."""
    deltas = [None] * len(layers)
    delta = g
    for index in range(len(layers) - 1, -1, -1):
        deltas[index] = delta
        if index:
            w, _ = _weights(p64, layers[index])
            delta = (delta @ w.T) * _dact(acts[index], activation)
    return deltas


def _grad_from(layers, acts, deltas, n_params):
    grad = np.zeros(n_params)
    for (w_off, b_off, n_in, n_out), a, delta in zip(layers, acts, deltas):
        grad[w_off:b_off] = (a.T @ delta).reshape(-1)
        grad[b_off:b_off + n_out] = delta.sum(axis=0)
    return grad


def _r_forward(p64, v64, layers, acts, activation):
    """Forward R-pass: ``R(a_l)`` (``R(a_0) = 0``, stored as None) and ``R(z_l)`` per layer; the
    last ``R(z)`` is R(logits) = the Jacobian-vector product."""
    r_acts, r_zs = [None], []
    for index, layer in enumerate(layers):
        w, _ = _weights(p64, layer)
        vw, vb = _weights(v64, layer)
        r_z = acts[index] @ vw + vb
        if r_acts[index] is not None:
            r_z = r_z + r_acts[index] @ w
        r_zs.append(r_z)
        if index < len(layers) - 1:
            r_acts.append(_dact(acts[index + 1], activation) * r_z)
    return r_acts, r_zs


# ---------------------------------------------------------------------------------------------
# Public kernels
# ---------------------------------------------------------------------------------------------

def mlp_logits(params, obs, hidden, activation, out=None):
    """Logits of the MLP policy.

    Parameters
    ----------
    params : float32/float64 (P,)   flat parameters (see the module docstring)
    obs : (B, obs_dim), dtype of ``params``
    hidden : tuple of int;  activation : "tanh" or "relu"
    out : ndarray (B, A) of params' dtype, optional

    Returns
    -------
    logits : ndarray (B, A), dtype of ``params``
    """
    params, obs, layers, activation = _check_net(params, obs, hidden, activation)
    _out(out, (obs.shape[0], layers[-1][3]), params.dtype)
    _, logits = _forward(params.astype(np.float64), obs.astype(np.float64), layers, activation)
    return _finish(logits, params.dtype, out, "the MLP's logits")


def mlp_act(params, obs, hidden, activation, rng, out=None):
    """One action per row of ``obs`` from the MLP's softmax: forward and sampling fused.

    Exactly ``sample_actions(mlp_logits(params, obs, hidden, activation), rng)`` (the logits
    rounded to params' dtype first): one ``rng.random()`` per row, in row order, inverse CDF
    (:func:`metarl_fast.reference.policy.sample_actions`).  Nothing is drawn if a call is rejected.

    Returns
    -------
    actions : int64 (B,)
    """
    params, obs, layers, activation = _check_net(params, obs, hidden, activation)
    _validate.check_rng(rng)
    _out(out, (obs.shape[0],), np.int64)
    _, logits = _forward(params.astype(np.float64), obs.astype(np.float64), layers, activation)
    logits = _finish(logits, params.dtype, None, "the MLP's logits")
    return _policy.sample_actions(logits, rng, out=out)


def mlp_grad(params, obs, hidden, activation, dlogits, out=None):
    """Vector-Jacobian product ``sum_i dlogits[i] . d logits_i / d params`` (P,), dtype of params.

    ``dlogits``: real (B, A), finite, converted to float64.  Accumulated in float64.
    """
    params, obs, layers, activation = _check_net(params, obs, hidden, activation)
    n_rows, n_actions = obs.shape[0], layers[-1][3]
    g = _validate.float_array(dlogits, "dlogits", ndim=2)
    if g.shape != (n_rows, n_actions):
        raise ValueError(f"dlogits must have shape {(n_rows, n_actions)}, got {g.shape}")
    if g.size and not np.all(np.isfinite(g)):
        raise ValueError("dlogits contains NaN or inf")
    _out(out, params.shape, params.dtype)
    p64 = params.astype(np.float64)
    acts, _ = _forward(p64, obs.astype(np.float64), layers, activation)
    deltas = _deltas(p64, layers, acts, activation, g.astype(np.float64))
    return _finish(_grad_from(layers, acts, deltas, params.shape[0]), params.dtype, out,
                   "the MLP's gradient")


def _check_steps(params, obs, hidden, activation, actions, coef):
    params, obs, layers, activation = _check_net(params, obs, hidden, activation)
    acts = _validate.check_actions(actions, obs.shape[0], layers[-1][3])
    coef = _pg.check_vector(coef, "coef", length=obs.shape[0], dtype=np.float64)
    return params, obs, layers, activation, acts, coef


def mlp_policy_gradient(params, obs, hidden, activation, actions, coef, out=None):
    """Gradient (P,) of the REINFORCE surrogate ``sum_i coef[i] log softmax(logits_i)[actions[i]]``.

    :func:`mlp_grad` with ``dlogits[i] = coef[i] (onehot(actions[i]) - softmax(logits_i))``.
    ``actions``: int (B,) in [0, A); ``coef``: real (B,), finite.  Returns params' dtype.
    """
    params, obs, layers, activation, actions, coef = _check_steps(params, obs, hidden, activation,
                                                                  actions, coef)
    _out(out, params.shape, params.dtype)
    p64 = params.astype(np.float64)
    acts, logits = _forward(p64, obs.astype(np.float64), layers, activation)
    deltas = _deltas(p64, layers, acts, activation, _pg_dlogits(logits, actions, coef))
    return _finish(_grad_from(layers, acts, deltas, params.shape[0]), params.dtype, out,
                   "the MLP's gradient")


def _check_v(v, params):
    return _pg.check_vector(v, "v", length=params.shape[0], dtype=np.float64)


def mlp_jvp(params, obs, hidden, activation, v, out=None):
    """Jacobian-vector product (R-op) ``d logits / d params . v``: (B, A), dtype of params.

    ``v``: real (P,), finite (a direction in parameter space), converted to float64.
    """
    params, obs, layers, activation = _check_net(params, obs, hidden, activation)
    v64 = _check_v(v, params)
    _out(out, (obs.shape[0], layers[-1][3]), params.dtype)
    p64 = params.astype(np.float64)
    acts, _ = _forward(p64, obs.astype(np.float64), layers, activation)
    _, r_zs = _r_forward(p64, v64, layers, acts, activation)
    return _finish(r_zs[-1], params.dtype, out, "the MLP's Jacobian-vector product")


def mlp_hvp(params, obs, hidden, activation, actions, coef, v, out=None):
    """Exact Hessian-vector product ``H v`` (P,) of ``f = sum_i coef[i] log pi(actions[i] | obs[i])``.

    Pearlmutter's R-backprop: the forward R-pass gives ``R(z_l)``; with
    ``g = coef (onehot - p)`` and ``R(g) = -coef * p * (R(logits) - <p, R(logits)>)`` the
    backward R-pass runs, from the last layer down,
    ``R(dW_l) = a_l^T R(delta_l) + R(a_l)^T delta_l``, ``R(db_l) = sum_i R(delta_l)``,
    ``R(delta_{l-1}) = (R(delta_l) W_l^T + delta_l V_l^T) act'(z_{l-1})
    + (delta_l W_l^T) act''(z_{l-1}) R(z_{l-1})``.  Includes the network's own curvature.
    Returns params' dtype.
    """
    params, obs, layers, activation, actions, coef = _check_steps(params, obs, hidden, activation,
                                                                  actions, coef)
    v64 = _check_v(v, params)
    _out(out, params.shape, params.dtype)
    p64 = params.astype(np.float64)
    acts, logits = _forward(p64, obs.astype(np.float64), layers, activation)
    r_acts, r_zs = _r_forward(p64, v64, layers, acts, activation)
    r_logits = r_zs[-1]
    p = _softmax64(logits)
    delta = _pg_dlogits(logits, actions, coef)
    r_delta = -coef[:, None] * p * (r_logits - (p * r_logits).sum(axis=1, keepdims=True))
    hv = np.zeros(params.shape[0])
    for index in range(len(layers) - 1, -1, -1):
        w_off, b_off, n_in, n_out = layers[index]
        h_w = acts[index].T @ r_delta
        if r_acts[index] is not None:
            h_w += r_acts[index].T @ delta
        hv[w_off:b_off] = h_w.reshape(-1)
        hv[b_off:b_off + n_out] = r_delta.sum(axis=0)
        if index:
            w, _ = _weights(p64, layers[index])
            vw, _ = _weights(v64, layers[index])
            a = acts[index]  # a_l = act(z_{l-1})
            d_a = delta @ w.T
            r_d_a = r_delta @ w.T + delta @ vw.T
            r_delta = (r_d_a * _dact(a, activation)
                       + d_a * _ddact(a, activation) * r_zs[index - 1])
            delta = d_a * _dact(a, activation)
    return _finish(hv, params.dtype, out, "the MLP's Hessian-vector product")


def mlp_episode_grads(params, obs, hidden, activation, actions, coef, episode, n_episodes,
                      out=None):
    """Per-episode policy gradients (n_episodes, P), dtype of params:
    row ``e`` is ``sum_{i: episode[i] = e} coef[i] grad log pi(actions[i] | obs[i])``.

    ``episode``: int (B,), nondecreasing, in [0, n_episodes); an episode with no rows gives zeros.
    The rows sum to :func:`mlp_policy_gradient`.
    """
    params, obs, layers, activation, actions, coef = _check_steps(params, obs, hidden, activation,
                                                                  actions, coef)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes", minimum=0)
    _validate.check_table_size(n_episodes * params.shape[0],
                               "mlp_episode_grads: n_episodes * P (the per-episode gradients)")
    ids = _validate.int_array(episode, "episode", ndim=1, length=obs.shape[0], low=0,
                              high=max(n_episodes, 1))
    if ids.size and n_episodes == 0:
        raise ValueError("episode out of range: n_episodes is 0 but there are rows")
    if ids.size > 1 and np.any(np.diff(ids) < 0):
        raise ValueError("episode must be sorted (nondecreasing episode ids)")
    _out(out, (n_episodes, params.shape[0]), params.dtype)
    p64 = params.astype(np.float64)
    acts, logits = _forward(p64, obs.astype(np.float64), layers, activation)
    deltas = _deltas(p64, layers, acts, activation, _pg_dlogits(logits, actions, coef))
    grads = np.zeros((n_episodes, params.shape[0]))
    bounds = np.searchsorted(ids, np.arange(n_episodes + 1))
    for e in range(n_episodes):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            grads[e] = _grad_from(layers, [a[lo:hi] for a in acts], [d[lo:hi] for d in deltas],
                                  params.shape[0])
    return _finish(grads, params.dtype, out, "the MLP's per-episode gradients")
