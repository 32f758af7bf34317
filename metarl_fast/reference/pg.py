"""Policy-gradient kernels in pure NumPy: the executable specification of ``_core/pg.pyx``.

Conventions shared by both backends
-----------------------------------
- A *flat batch* holds several episodes one after the other; ``dones[i]`` is true at the last
  step of an episode (terminal state or end of the horizon).  Scans restart at every done.
- Float inputs (rewards, values, advantages, weights, features) are converted to the dtype of the
  result: the dtype of ``rewards`` for the return kernels, the dtype of ``params`` for the
  gradient, critic and optimizer kernels.  Computation runs in float64; results are rounded once.
- ``policy_gradient`` kernels return the gradient of the objective to *maximise*
  ``J = mean_i w_i A_i log pi(a_i | s_i) + entropy_coef * mean_i H(pi(. | s_i))``.
  Optimizer kernels *minimise* (PyTorch convention): they step along ``-grad_scale * grad``.
- Every entry point validates first and raises TypeError / ValueError naming the argument; a
  rejected call writes nothing.
- Overflow: finite inputs whose returns, advantages, untruncated importance ratios or gradient
  overflow the result's dtype (float64, or float32 when rounded) raise FloatingPointError naming
  what overflowed, before anything is written (``out``, parameters, optimizer state); truncated
  importance ratios saturate at ``rho_bar``.  The helpers ``check_*`` here are also the slow path of the
  Cython twin, so both backends raise the same errors.
"""
import math

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference._math import exp_nonpos

OPT_SGD = 0
OPT_ADAM = 1
# Layout of ``opt_hyper`` (float64) for the fused step:
#   SGD : [lr, momentum, nesterov (0/1)]
#   Adam: [lr, beta1, beta2, eps, t (the number of this step, 1, 2, ...)]
N_HYPER = {OPT_SGD: 3, OPT_ADAM: 5}


def adam_corrections(lr, beta1, beta2, t):
    """PyTorch's bias corrections at step ``t``: ``(lr / (1 - beta1**t), sqrt(1 - beta2**t))``."""
    return lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t)


# ---------------------------------------------------------------------------------------------
# Validation helpers (also the slow path of the Cython twin)
# ---------------------------------------------------------------------------------------------

def check_vector(x, name, length=None, dtype=None, finite=True):
    """``x`` as a C-contiguous 1-D float array (``dtype`` forces a conversion), NaN/inf refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got {_validate.got(arr)}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in _validate.FLOAT_DTYPES else np.dtype(np.float64)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length} (mismatched lengths)")
    if finite and arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} contains NaN or inf (at index {bad})")
    return arr


def check_dones(dones, length, name="dones"):
    """``dones`` as a C-contiguous uint8 (B,) array of 0/1 (bool, int or float 0/1 accepted)."""
    arr = np.asarray(dones)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a bool or numeric array, got {_validate.got(arr)}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length} (mismatched lengths)")
    if arr.dtype.kind != "b" and arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0/1 (or booleans)")
    return np.ascontiguousarray(arr != 0, dtype=np.uint8)


def check_unit(value, name):
    return _validate.finite_float(value, name, low=0.0, high=1.0)


def check_params(params, name="params"):
    """Flat, C-contiguous, writeable, finite float32/float64 parameters (never copied)."""
    if not isinstance(params, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(params).__name__}")
    if params.dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {_validate.got(params)}")
    if params.ndim != 1:
        raise ValueError(f"{name} must be 1-D (flat), got shape {params.shape}")
    if not params.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not np.all(np.isfinite(params)):
        raise ValueError(f"{name} contains NaN or inf")
    return params


def check_params_size(params, expected, name="params"):
    if params.shape[0] != expected:
        raise ValueError(f"{name} has size {params.shape[0]}, expected {expected} for this policy shape")


def check_features(x, n_features, dtype, name, length=None):
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got {_validate.got(arr)}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (B, {n_features}), got {np.shape(x)}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {length} (mismatched lengths)")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_state_vector(state, n, dtype, name):
    if not isinstance(state, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(state).__name__}")
    if state.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {state.dtype}")
    if state.shape != (n,):
        raise ValueError(f"{name} must have shape {(n,)}, got {state.shape}")
    if not state.flags.c_contiguous or not state.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return state


def _check_pg_batch(params, n_rows, n_actions, obs, actions, advantages, weights, entropy_coef,
                    linear):
    params = check_params(params)
    n_rows = _validate.positive_int(n_rows, "n_features" if linear else "n_states")
    n_actions = _validate.positive_int(n_actions, "n_actions")
    check_params_size(params, n_rows * n_actions + (n_actions if linear else 0))
    if linear:
        obs = check_features(obs, n_rows, params.dtype, "obs")
    else:
        obs = _validate.int_array(obs, "obs", ndim=1, low=0, high=n_rows)
    actions, advantages, weights, entropy_coef = _check_steps(
        params, obs.shape[0], n_actions, actions, advantages, weights, entropy_coef)
    return params, n_rows, n_actions, obs, actions, advantages, weights, entropy_coef


def _check_steps(params, batch, n_actions, actions, advantages, weights, entropy_coef):
    """The per-step arguments of a policy-gradient batch of ``batch`` steps, validated."""
    actions = _validate.int_array(actions, "actions", ndim=1, length=batch, low=0, high=n_actions)
    advantages = check_vector(advantages, "advantages", batch, params.dtype)
    if weights is not None:
        weights = check_vector(weights, "weights", batch, params.dtype)
    return actions, advantages, weights, _validate.finite_float(entropy_coef, "entropy_coef")


def check_tabular_batch(params, n_states, n_actions, states, actions, advantages, weights,
                        entropy_coef):
    return _check_pg_batch(params, n_states, n_actions, states, actions, advantages, weights,
                           entropy_coef, linear=False)


def check_linear_batch(params, n_features, n_actions, features, actions, advantages, weights,
                       entropy_coef):
    return _check_pg_batch(params, n_features, n_actions, features, actions, advantages, weights,
                           entropy_coef, linear=True)


def check_optimizer(params, opt_kind, opt_state, opt_hyper):
    if opt_kind not in N_HYPER:
        raise ValueError(f"opt_kind must be {OPT_SGD} (SGD) or {OPT_ADAM} (Adam), got {opt_kind!r}")
    if not isinstance(opt_state, np.ndarray):
        raise TypeError(f"opt_state must be a numpy.ndarray, got {type(opt_state).__name__}")
    if opt_state.dtype != params.dtype:
        raise TypeError(f"opt_state must have dtype {params.dtype} (that of params), got {opt_state.dtype}")
    if opt_state.shape != (2, params.shape[0]):
        raise ValueError(f"opt_state must have shape {(2, params.shape[0])}, got {opt_state.shape}")
    if not opt_state.flags.c_contiguous or not opt_state.flags.writeable:
        raise ValueError("opt_state must be C-contiguous and writeable")
    hyper = np.ascontiguousarray(opt_hyper, dtype=np.float64)
    if hyper.shape != (N_HYPER[opt_kind],):
        raise ValueError(f"opt_hyper must have shape {(N_HYPER[opt_kind],)}, got {hyper.shape}")
    if not np.all(np.isfinite(hyper)):
        raise ValueError("opt_hyper contains NaN or inf")
    return hyper


def check_max_norm(max_norm, name="max_grad_norm"):
    """None or 0 (no clipping) or a positive finite float; returns 0.0 for 'no clipping'."""
    if max_norm is None:
        return 0.0
    return _validate.finite_float(max_norm, name, low=0.0)


# ---------------------------------------------------------------------------------------------
# Returns and advantages
# ---------------------------------------------------------------------------------------------

def discounted_returns(rewards, dones, gamma, bootstrap=None, out=None):
    """Discounted return-to-go over a flat batch of episodes.

    ``G[i] = r[i] + gamma * (1 - done[i]) * G[i+1]`` scanned backwards, with ``G[B] = bootstrap``
    (the value of the state after the last step, for a batch whose tail episode was cut short;
    default 0).  The scan restarts at every done, so episodes never leak into each other.

    Parameters
    ----------
    rewards : float32/float64 (B,)        (other real arrays are converted to float64)
    dones : bool or 0/1 (B,)
    gamma : float in [0, 1]
    bootstrap : float, optional
    out : ndarray (B,) of the dtype of ``rewards``, optional

    Returns
    -------
    returns : ndarray (B,), dtype of ``rewards``
    """
    rewards = check_vector(rewards, "rewards")
    n = rewards.shape[0]
    dones = check_dones(dones, n)
    gamma = check_unit(gamma, "gamma")
    tail = 0.0 if bootstrap is None else _validate.finite_float(bootstrap, "bootstrap")
    if out is not None:
        _validate.check_out(out, (n,), rewards.dtype)
    r = rewards.astype(np.float64)
    result = np.empty(n, dtype=np.float64)
    # G[i] = r[i] + (0.0 if done[i] else gamma * G[i+1]), G[n] = tail: evaluated in waves of
    # equal distance to the episode's end (same operations per element as the sequential scan)
    waves = _waves(dones)
    if waves is None:  # few long episodes: the plain scan is faster
        g = tail
        for i in range(n - 1, -1, -1):
            g = r[i] + (0.0 if dones[i] else gamma * g)
            result[i] = g
        return _finish_finite(result, rewards.dtype, out, "discounted_returns: the returns")
    nxt = np.empty(n + 1, dtype=np.float64)
    nxt[n] = tail
    for idx in waves:
        step = np.where(dones[idx] != 0, 0.0, gamma * nxt[idx + 1])
        result[idx] = r[idx] + step
        nxt[idx] = result[idx]
    return _finish_finite(result, rewards.dtype, out, "discounted_returns: the returns")


def _waves(dones):
    """Indices grouped by their distance to the end of their episode (0 first), as a list.

    An episode ends at a done or at the end of the batch.  Scans backwards over a flat batch are
    then a loop over the longest episode's length instead of over the batch.  None when the
    longest episode is so long (relative to the batch) that a plain loop is cheaper.
    """
    n = dones.shape[0]
    if n == 0:
        return []
    positions = np.arange(n)
    ends = np.where(dones != 0, positions, n)
    ends[-1] = n - 1
    distance = np.minimum.accumulate(ends[::-1])[::-1] - positions
    longest = int(distance.max()) + 1
    if longest > 64 and longest > n // 16:
        return None
    order = np.argsort(distance, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(distance))])
    return [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def gae(rewards, values, next_values, dones, gamma, lam, out=None):
    """Generalised advantage estimation over a flat batch of episodes.

    ``delta[i] = r[i] + gamma * (1 - done[i]) * next_values[i] - values[i]`` and
    ``A[i] = delta[i] + gamma * lam * (1 - done[i]) * A[i+1]`` (``A[B] = 0``).  ``lam = 1`` gives
    the Monte-Carlo advantage (return minus value, bootstrapped with ``next_values`` at the tail),
    ``lam = 0`` the TD(0) error.

    Parameters
    ----------
    rewards, values, next_values : float (B,)   converted to the dtype of ``rewards``
    dones : bool or 0/1 (B,)
    gamma, lam : float in [0, 1]

    Returns
    -------
    advantages : ndarray (B,), dtype of ``rewards``
    """
    rewards = check_vector(rewards, "rewards")
    n = rewards.shape[0]
    values = check_vector(values, "values", n, rewards.dtype)
    next_values = check_vector(next_values, "next_values", n, rewards.dtype)
    dones = check_dones(dones, n)
    gamma = check_unit(gamma, "gamma")
    lam = check_unit(lam, "lam")
    if out is not None:
        _validate.check_out(out, (n,), rewards.dtype)
    r, v, nv = (a.astype(np.float64) for a in (rewards, values, next_values))
    result = np.empty(n, dtype=np.float64)
    # A[i] = r - v if done[i] else ((r + gamma nv) - v) + (gamma lam) A[i+1], A[n] = 0, in waves
    gl = gamma * lam
    waves = _waves(dones)
    if waves is None:  # few long episodes: the plain scan is faster
        acc = 0.0
        for i in range(n - 1, -1, -1):
            if dones[i]:
                acc = r[i] - v[i]
            else:
                acc = r[i] + gamma * nv[i] - v[i] + gl * acc
            result[i] = acc
        return _finish_finite(result, rewards.dtype, out, "gae: the advantages")
    nxt = np.zeros(n + 1, dtype=np.float64)
    for idx in waves:
        cont = r[idx] + gamma * nv[idx] - v[idx] + gl * nxt[idx + 1]
        result[idx] = np.where(dones[idx] != 0, r[idx] - v[idx], cont)
        nxt[idx] = result[idx]
    return _finish_finite(result, rewards.dtype, out, "gae: the advantages")


def check_log_ratios(log_rhos, length, dtype, name="log_rhos"):
    """``log(pi / mu)`` per step as a C-contiguous (B,) array of ``dtype``: NaN and +inf refused,
    -inf (an action the current policy can no longer take) allowed."""
    arr = check_vector(log_rhos, name, length, dtype, finite=False)
    bad = np.isnan(arr) | (arr == np.inf)
    if arr.size and bad.any():
        raise ValueError(f"{name} contains NaN or +inf (at index {int(np.flatnonzero(bad)[0])})")
    return arr


def check_cap(value, name):
    """A truncation level: None (no cap) or a finite float > 0, returned as a float (inf: none)."""
    if value is None:
        return math.inf
    return _validate.finite_float(value, name, low=0.0, low_open=True)


def vtrace(rewards, values, next_values, log_rhos, ends, gamma, rho_bar=None, c_bar=None):
    """V-trace targets and policy-gradient advantages over a flat batch of trajectory pieces
    (Espeholt et al. 2018, IMPALA, eq. 1 and section 4.2).

    A *piece* is a run of consecutive steps of one episode generated by a behaviour policy mu:
    ``ends[i]`` is true at a piece's last step (an episode's end or a window's cut); the
    recursion restarts there and ``next_values[i]`` bootstraps what follows (it must be 0 after a
    terminal state).  With ``rho_i = min(rho_bar, exp(log_rhos[i]))``,
    ``c_i = min(c_bar, exp(log_rhos[i]))`` and ``delta_i = rho_i (r_i + gamma nv_i - v_i)``::

        A_i  = delta_i + gamma c_i (1 - end_i) A_{i+1}          (A_B = 0)
        vs_i = v_i + A_i                                        (the V-trace target)
        adv_i = rho_i (r_i + gamma (nv_i + (1 - end_i) A_{i+1}) - v_i)

    ``adv_i`` is ``rho_i (r_i + gamma vs_{i+1} - v_i)`` when ``next_values[i] == values[i + 1]``
    inside a piece.  Untruncated (``rho_bar = c_bar = None``) and with the exact ``V^pi`` as
    values, ``E_mu[vs_i | x_i] = V^pi(x_i)``; truncated, the targets' fixed point is the value of
    ``pi_rho(a|x) ~ min(rho_bar mu(a|x), pi(a|x))`` (Theorem 1).  On-policy (``log_rhos = 0``)
    ``vs_i`` is the n-step return to the piece's end, bootstrapped with ``next_values``.

    Parameters
    ----------
    rewards, values, next_values : float (B,)   converted to the dtype of ``rewards``
    log_rhos : float (B,)  ``log pi(a_i|x_i) - log mu(a_i|x_i)`` (-inf allowed, not NaN or +inf)
    ends : bool or 0/1 (B,)
    gamma : float in [0, 1]
    rho_bar, c_bar : float > 0 or None (untruncated)

    Returns
    -------
    vs, advantages : ndarray (B,), dtype of ``rewards``

    Raises FloatingPointError if a target or advantage overflows (large untruncated ratios).
    """
    rewards = check_vector(rewards, "rewards")
    n = rewards.shape[0]
    values = check_vector(values, "values", n, rewards.dtype)
    next_values = check_vector(next_values, "next_values", n, rewards.dtype)
    log_rhos = check_log_ratios(log_rhos, n, rewards.dtype)
    ends = check_dones(ends, n, "ends")
    gamma = check_unit(gamma, "gamma")
    rho_cap, c_cap = check_cap(rho_bar, "rho_bar"), check_cap(c_bar, "c_bar")
    r, v, nv = (a.astype(np.float64) for a in (rewards, values, next_values))
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(log_rhos.astype(np.float64))
        rho, c = np.minimum(ratio, rho_cap), np.minimum(ratio, c_cap)
        delta = rho * (r + gamma * nv - v)
        carry = np.zeros(n + 1)  # A_{i+1} as seen from step i (0 after a piece's end)
        acc = np.empty(n)
        # A_i = delta_i + (gamma c_i) A_{i+1} inside a piece, scanned backwards in waves of equal
        # distance to the piece's end (same operations per element as the sequential scan)
        waves = _waves(ends)
        for idx in (waves if waves is not None else ([i] for i in range(n - 1, -1, -1))):
            idx = np.asarray(idx)
            nxt = np.where(ends[idx] != 0, 0.0, carry[idx + 1])
            acc[idx] = delta[idx] + (gamma * c[idx]) * nxt
            carry[idx] = acc[idx]
        tail = np.where(ends != 0, 0.0, carry[1:])
        vs = v + acc
        adv = rho * (r + gamma * (nv + tail) - v)
    return (_finish_finite(vs, rewards.dtype, None, "vtrace: the targets"),
            _finish_finite(adv, rewards.dtype, None, "vtrace: the advantages"))


def _finish(result, dtype, out):
    if out is None:
        return result.astype(dtype)
    out[...] = result
    return out


_GRAD_OVERFLOW = "the policy gradient's entries (advantages or weights too large)"


def _finish_finite(result, dtype, out, what):
    """:func:`_finish`, but finite inputs that overflow (to +-inf, in float64 or when rounded to
    float32) raise FloatingPointError naming ``what`` instead of returning inf: nothing is
    written to ``out`` then."""
    with np.errstate(over="ignore"):
        final = result.astype(dtype)
    if final.size and not np.all(np.isfinite(final)):
        raise FloatingPointError(f"{what} overflow the {np.dtype(dtype).name} range")
    if out is None:
        return final
    out[...] = final
    return out


# ---------------------------------------------------------------------------------------------
# Policy gradients
# ---------------------------------------------------------------------------------------------

def _logit_grads(logits, actions, coef, entropy_coef, batch):
    """d J / d logits (B, A) in float64 for a (B, A) float64 logits matrix."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = exp_nonpos(z)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    g = -p
    rows = np.arange(logits.shape[0])
    g[rows, actions] += 1.0
    g *= coef[:, None]
    if entropy_coef != 0.0:
        log_p = z - np.log(s)
        h = -(p * log_p).sum(axis=1, keepdims=True)
        g += (entropy_coef / batch) * (-p * (log_p + h))
    return g


def _coef(advantages, weights, batch):
    coef = advantages.astype(np.float64)
    if weights is not None:
        coef = coef * weights.astype(np.float64)
    return coef / batch


def tabular_policy_gradient(params, n_states, n_actions, states, actions, advantages,
                            weights=None, entropy_coef=0.0, out=None):
    """Policy gradient of a tabular softmax policy, averaged over the batch.

    ``grad = (1/B) sum_i w_i A_i d log pi(a_i|s_i)/d theta + entropy_coef (1/B) sum_i dH(s_i)/d theta``
    with ``d log pi(a|s)/d theta[s] = onehot(a) - pi(.|s)`` and
    ``dH(s)/d theta[s, k] = -pi_k (log pi_k + H(s))``, scattered into the rows of ``theta``.

    Parameters
    ----------
    params : float32/float64 (n_states * n_actions,)   flat logits ``theta``, finite
    n_states, n_actions : int >= 1
    states, actions : int (B,) in range
    advantages : float (B,), finite;  weights : float (B,), finite, optional (default 1)
    entropy_coef : float
    out : ndarray (n_params,) of the dtype of ``params``, optional

    Returns
    -------
    grad : ndarray (n_params,), dtype of ``params``.  An empty batch gives zeros.
    """
    params, n_states, n_actions, states, actions, advantages, weights, entropy_coef = \
        check_tabular_batch(params, n_states, n_actions, states, actions, advantages, weights,
                            entropy_coef)
    if out is not None:
        _validate.check_out(out, params.shape, params.dtype)
    return _finish_finite(_tabular_grad(params, n_states, n_actions, states, actions, advantages,
                                        weights, entropy_coef), params.dtype, out, _GRAD_OVERFLOW)


def _tabular_grad(params, n_states, n_actions, states, actions, advantages, weights, entropy_coef):
    """Per-state form: ``(1/B) sum_i c_i (onehot(a_i) - pi(.|s_i))`` (``c_i = w_i A_i``) is, in the
    row of state ``s``, ``(1/B)`` times the one-hots of its steps minus
    ``((sum_{i: s_i = s} c_i) / B) pi(.|s)``; the entropy term is ``count(s) * entropy_coef / B *
    dH(s)``.  Each visited state's softmax is computed once."""
    S, A = n_states, n_actions
    batch = states.shape[0]
    if not batch:
        return np.zeros(S * A, dtype=np.float64)
    coef = advantages.astype(np.float64)
    if weights is not None:
        coef = coef * weights.astype(np.float64)
    onehots = np.bincount(states * A + actions, weights=coef, minlength=S * A).reshape(S, A)
    count = np.bincount(states, minlength=S)
    visited = np.flatnonzero(count)
    coef_sum = np.bincount(states, weights=coef, minlength=S)[visited]
    theta = params.astype(np.float64).reshape(S, A)[visited]
    z = theta - theta.max(axis=1, keepdims=True)
    e = exp_nonpos(z)
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    grad = np.zeros((S, A), dtype=np.float64)
    grad[visited] = onehots[visited] / batch - (coef_sum / batch)[:, None] * p
    if entropy_coef != 0.0:
        log_p = z - np.log(total)
        h = -(p * log_p).sum(axis=1, keepdims=True)
        grad[visited] += (count[visited, None] * (entropy_coef / batch)) * (-p * (log_p + h))
    return grad.reshape(-1)


def linear_policy_gradient(params, n_features, n_actions, features, actions, advantages,
                           weights=None, entropy_coef=0.0, out=None):
    """Policy gradient of a linear softmax policy (logits ``phi @ W + b``), averaged over the batch.

    With ``G[i] = w_i A_i (onehot(a_i) - pi_i) / B`` (+ the entropy term), the gradient is
    ``dW = phi^T G`` and ``db = sum_i G[i]``, returned flat as ``[dW.ravel(), db]``.

    Parameters
    ----------
    params : float32/float64 (n_features * n_actions + n_actions,)  ``W`` (row-major) then ``b``
    features : real (B, n_features), finite (converted to the dtype of ``params``)
    other arguments : as :func:`tabular_policy_gradient`
    """
    params, n_features, n_actions, features, actions, advantages, weights, entropy_coef = \
        check_linear_batch(params, n_features, n_actions, features, actions, advantages, weights,
                           entropy_coef)
    if out is not None:
        _validate.check_out(out, params.shape, params.dtype)
    return _finish_finite(_linear_grad(params, n_features, n_actions, features, actions, advantages,
                                       weights, entropy_coef), params.dtype, out, _GRAD_OVERFLOW)


def _linear_grad(params, n_features, n_actions, features, actions, advantages, weights,
                 entropy_coef):
    batch = features.shape[0]
    grad = np.zeros(params.shape[0], dtype=np.float64)
    if batch:
        p64 = params.astype(np.float64)
        W = p64[: n_features * n_actions].reshape(n_features, n_actions)
        b = p64[n_features * n_actions:]
        x = features.astype(np.float64)
        g = _logit_grads(x @ W + b, actions, _coef(advantages, weights, batch), entropy_coef, batch)
        grad[: n_features * n_actions] = (x.T @ g).reshape(-1)
        grad[n_features * n_actions:] = g.sum(axis=0)
    return grad



def check_linear_states_batch(params, n_features, n_actions, features, states, actions,
                              advantages, weights, entropy_coef):
    """Validated ``(params, n_features, n_actions, features, states, actions, advantages,
    weights, entropy_coef)`` for a linear policy fed states with a feature table."""
    params = check_params(params)
    n_features = _validate.positive_int(n_features, "n_features")
    n_actions = _validate.positive_int(n_actions, "n_actions")
    check_params_size(params, n_features * n_actions + n_actions)
    features = check_features(features, n_features, params.dtype, "features")
    if features.shape[0] < 1:
        raise ValueError("features must have at least one row (one per state)")
    states = _validate.int_array(states, "obs", ndim=1, low=0, high=features.shape[0])
    actions, advantages, weights, entropy_coef = _check_steps(
        params, states.shape[0], n_actions, actions, advantages, weights, entropy_coef)
    return (params, n_features, n_actions, features, states, actions, advantages, weights,
            entropy_coef)


def linear_states_policy_gradient(params, n_features, n_actions, features, states, actions,
                                  advantages, weights=None, entropy_coef=0.0, out=None):
    """:func:`linear_policy_gradient` on the feature rows ``features[states]``, computed per state.

    The policy's logits depend on the state only, so each visited state's logits ``phi_s @ W + b``
    and softmax are computed once (the tabular gradient of that logits table,
    :func:`tabular_policy_gradient`), and the chain rule maps the per-state logit gradient ``G``
    back: ``dW = phi[visited]^T G``, ``db = sum_s G[s]``.  Work O(B + visited x F x A) instead of
    O(B x F x A); the same gradient as ``linear_policy_gradient(..., features[states], ...)``.

    Parameters
    ----------
    features : real (S, n_features), finite: the feature row of each state (e.g. one-hot, S = F)
    states : int (B,) in [0, S)
    other arguments : as :func:`linear_policy_gradient`
    """
    checked = check_linear_states_batch(params, n_features, n_actions, features, states,
                                        actions, advantages, weights, entropy_coef)
    if out is not None:
        _validate.check_out(out, checked[0].shape, checked[0].dtype)
    return _finish_finite(_linear_states_grad(*checked), checked[0].dtype, out, _GRAD_OVERFLOW)


def _linear_states_grad(params, n_features, n_actions, features, states, actions, advantages,
                        weights, entropy_coef):
    grad = np.zeros(params.shape[0], dtype=np.float64)
    if not states.shape[0]:
        return grad
    n_w = n_features * n_actions
    p64 = params.astype(np.float64)
    visited, local = np.unique(states, return_inverse=True)
    phi = features[visited].astype(np.float64)
    table = phi @ p64[:n_w].reshape(n_features, n_actions) + p64[n_w:]
    G = _tabular_grad(table.reshape(-1), visited.shape[0], n_actions, local.reshape(-1), actions,
                      advantages, weights, entropy_coef).reshape(-1, n_actions)
    grad[:n_w] = (phi.T @ G).reshape(-1)
    grad[n_w:] = G.sum(axis=0)
    return grad


# ---------------------------------------------------------------------------------------------
# Gradient clipping and optimizer updates (in place)
# ---------------------------------------------------------------------------------------------

def clip_grad_norm(grad, max_norm):
    """Scale ``grad`` in place so its L2 norm is at most ``max_norm`` (PyTorch's rule).

    ``coef = max_norm / (norm + 1e-6)``; the gradient is multiplied by ``coef`` only if
    ``coef < 1``.  ``max_norm`` = 0 or None disables clipping.

    Parameters
    ----------
    grad : float32/float64 (P,), C-contiguous, writeable, finite
    max_norm : float >= 0 or None

    Returns
    -------
    norm : float, the L2 norm before clipping
    """
    grad = check_params(grad, "grad")
    if not grad.flags.writeable:
        raise ValueError("grad must be writeable")
    max_norm = check_max_norm(max_norm, "max_norm")
    norm, coef = _clip_coef(grad, max_norm)
    if coef != 1.0:
        grad[...] = grad.astype(np.float64) * coef
    return norm


_NORM_OVERFLOW = "the gradient's L2 norm overflows the float64 range (entries near 1e308)"


def _clip_coef(grad, max_norm):
    """``(norm, coef)`` of PyTorch's rule.  Finite entries whose squares overflow are scaled by the
    largest magnitude first (``norm = m sqrt(sum (g / m)^2)``, ``coef = (max_norm / m) /
    sqrt(sum (g / m)^2)``), so clipping a huge gradient is exact; a norm itself beyond the float64
    range raises FloatingPointError (before any parameter or optimizer state is written)."""
    g = grad.astype(np.float64)
    with np.errstate(over="ignore"):
        squares = float(np.dot(g, g))
    if math.isinf(squares):
        m = float(np.abs(g).max())
        scaled = math.sqrt(float(np.dot(g / m, g / m)))
        with np.errstate(over="ignore"):
            norm = m * scaled
        if math.isinf(norm):
            raise FloatingPointError(_NORM_OVERFLOW)
        coef = 1.0
        if max_norm > 0.0:
            c = (max_norm / m) / scaled
            if c < 1.0:
                coef = c
        return norm, coef
    norm = math.sqrt(squares)
    coef = 1.0
    if max_norm > 0.0:
        c = max_norm / (norm + 1e-6)
        if c < 1.0:
            coef = c
    return norm, coef


def _check_update(params, grad, states):
    params = check_params(params)
    if not params.flags.writeable:
        raise ValueError("params must be writeable")
    grad = check_vector(grad, "grad", params.shape[0], params.dtype)
    for name, state in states:
        check_state_vector(state, params.shape[0], params.dtype, name)
    return params, grad


def sgd_update(params, grad, velocity, lr, momentum=0.0, nesterov=False, grad_scale=1.0):
    """One SGD step in place (PyTorch's ``torch.optim.SGD`` with dampening 0, no weight decay).

    With ``g = grad_scale * grad``: if ``momentum`` is 0, ``params -= lr * g``; otherwise
    ``velocity = momentum * velocity + g`` and ``params -= lr * (g + momentum * velocity)``
    (Nesterov) or ``params -= lr * velocity``.  A zero initial velocity reproduces PyTorch's first
    step (which sets the buffer to ``g``).

    Parameters
    ----------
    params, velocity : float32/float64 (P,), C-contiguous, writeable (velocity: same dtype)
    grad : float (P,), finite
    lr, momentum : float >= 0;  nesterov : bool;  grad_scale : float
    """
    params, grad = _check_update(params, grad, [("velocity", velocity)])
    lr = _validate.finite_float(lr, "lr", low=0.0)
    momentum = _validate.finite_float(momentum, "momentum", low=0.0)
    grad_scale = _validate.finite_float(grad_scale, "grad_scale")
    _sgd(params, grad.astype(np.float64) * grad_scale, velocity, lr, momentum, bool(nesterov))


def _sgd(params, g, velocity, lr, momentum, nesterov):
    p = params.astype(np.float64)
    if momentum != 0.0:
        buf = momentum * velocity.astype(np.float64) + g
        velocity[...] = buf
        step = g + momentum * buf if nesterov else buf
    else:
        step = g
    params[...] = p - lr * step


def adam_update(params, grad, exp_avg, exp_avg_sq, step_size, bias_correction2_sqrt,
                beta1, beta2, eps, grad_scale=1.0):
    """One Adam step in place, PyTorch's ``torch.optim.Adam`` formula (single-tensor form).

    With ``g = grad_scale * grad`` and step number ``t`` (counted by the caller):
    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2``,
    ``denom = sqrt(v) / sqrt(1 - beta2^t) + eps``, ``params -= (lr / (1 - beta1^t)) * m / denom``.
    The caller passes ``step_size = lr / (1 - beta1^t)`` and ``bias_correction2_sqrt``.

    Parameters
    ----------
    params, exp_avg, exp_avg_sq : float32/float64 (P,), C-contiguous, writeable, same dtype
    grad : float (P,), finite
    step_size : float >= 0; bias_correction2_sqrt : float in (0, 1]; beta1, beta2 in [0, 1);
    eps : float > 0
    """
    params, grad = _check_update(params, grad, [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)])
    step_size, bc2, beta1, beta2, eps = _check_adam_hyper(step_size, bias_correction2_sqrt,
                                                         beta1, beta2, eps)
    grad_scale = _validate.finite_float(grad_scale, "grad_scale")
    _adam(params, grad.astype(np.float64) * grad_scale, exp_avg, exp_avg_sq, step_size, bc2,
          beta1, beta2, eps)


def _check_adam_hyper(step_size, bc2, beta1, beta2, eps):
    return (_validate.finite_float(step_size, "step_size", low=0.0),
            _validate.finite_float(bc2, "bias_correction2_sqrt", low=0.0, high=1.0, low_open=True),
            _validate.finite_float(beta1, "beta1", low=0.0, high=1.0, high_open=True),
            _validate.finite_float(beta2, "beta2", low=0.0, high=1.0, high_open=True),
            _validate.finite_float(eps, "eps", low=0.0, low_open=True))


def _adam(params, g, exp_avg, exp_avg_sq, step_size, bc2, beta1, beta2, eps):
    m = beta1 * exp_avg.astype(np.float64) + (1.0 - beta1) * g
    v = beta2 * exp_avg_sq.astype(np.float64) + (1.0 - beta2) * (g * g)
    exp_avg[...] = m
    exp_avg_sq[...] = v
    denom = np.sqrt(v) / bc2 + eps
    params[...] = params.astype(np.float64) - step_size * (m / denom)


# ---------------------------------------------------------------------------------------------
# Fused gradient + clipping + optimizer step
# ---------------------------------------------------------------------------------------------

def _fused(params, grad64, grad_out, max_grad_norm, opt_kind, opt_state, hyper):
    grad_out[...] = _finish_finite(grad64, grad_out.dtype, None, _GRAD_OVERFLOW)
    norm, coef = _clip_coef(grad_out, max_grad_norm)
    # ascend J: the optimizer minimises, so it is fed -coef * grad
    g = grad_out.astype(np.float64) * (-coef)
    if opt_kind == OPT_SGD:
        _sgd(params, g, opt_state[0], hyper[0], hyper[1], hyper[2] != 0.0)
    else:
        lr, beta1, beta2, eps, t = hyper
        step_size, bc2 = adam_corrections(lr, beta1, beta2, t)
        _adam(params, g, opt_state[0], opt_state[1], step_size, bc2, beta1, beta2, eps)
    return norm


def _check_fused(params, grad_out, max_grad_norm, opt_kind, opt_state, opt_hyper):
    if not params.flags.writeable:
        raise ValueError("params must be writeable")
    _validate.check_out(grad_out, params.shape, params.dtype, "grad_out")
    max_grad_norm = check_max_norm(max_grad_norm)
    hyper = check_optimizer(params, opt_kind, opt_state, opt_hyper)
    if opt_kind == OPT_SGD:
        if hyper[0] < 0 or hyper[1] < 0:
            raise ValueError("opt_hyper: lr and momentum must be >= 0")
    else:
        lr, beta1, beta2, eps, t = hyper
        _validate.finite_float(lr, "opt_hyper lr", low=0.0)
        _check_adam_hyper(0.0, 1.0, beta1, beta2, eps)
        if t < 1 or t != math.floor(t):
            raise ValueError(f"opt_hyper step number must be an integer >= 1, got {t}")
    return max_grad_norm, hyper


def tabular_pg_step(params, n_states, n_actions, states, actions, advantages, weights,
                    entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper):
    """Fused policy-gradient ascent step for a tabular softmax policy, in place.

    Computes ``grad`` as :func:`tabular_policy_gradient` into ``grad_out``, clips it like
    :func:`clip_grad_norm` (``max_grad_norm`` None/0: no clipping), then applies the optimizer to
    ``params`` along ``-clip_coef * grad`` (ascent on J).

    Parameters
    ----------
    grad_out : ndarray (P,) of the dtype of ``params``   receives the unclipped gradient
    opt_kind : int, ``OPT_SGD`` or ``OPT_ADAM``
    opt_state : ndarray (2, P) of the dtype of ``params``  SGD: row 0 velocity; Adam: m, v
    opt_hyper : float64 array, see ``N_HYPER``

    Returns
    -------
    norm : float, L2 norm of the gradient before clipping
    """
    params, n_states, n_actions, states, actions, advantages, weights, entropy_coef = \
        check_tabular_batch(params, n_states, n_actions, states, actions, advantages, weights,
                            entropy_coef)
    max_grad_norm, hyper = _check_fused(params, grad_out, max_grad_norm, opt_kind, opt_state,
                                        opt_hyper)
    grad = _tabular_grad(params, n_states, n_actions, states, actions, advantages, weights,
                         entropy_coef)
    return _fused(params, grad, grad_out, max_grad_norm, opt_kind, opt_state, hyper)


def linear_pg_step(params, n_features, n_actions, features, actions, advantages, weights,
                   entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state, opt_hyper):
    """Fused policy-gradient ascent step for a linear softmax policy; see :func:`tabular_pg_step`."""
    params, n_features, n_actions, features, actions, advantages, weights, entropy_coef = \
        check_linear_batch(params, n_features, n_actions, features, actions, advantages, weights,
                           entropy_coef)
    max_grad_norm, hyper = _check_fused(params, grad_out, max_grad_norm, opt_kind, opt_state,
                                        opt_hyper)
    grad = _linear_grad(params, n_features, n_actions, features, actions, advantages, weights,
                        entropy_coef)
    return _fused(params, grad, grad_out, max_grad_norm, opt_kind, opt_state, hyper)


def linear_states_pg_step(params, n_features, n_actions, features, states, actions, advantages,
                          weights, entropy_coef, max_grad_norm, grad_out, opt_kind, opt_state,
                          opt_hyper):
    """Fused step of :func:`linear_states_policy_gradient`; see :func:`tabular_pg_step`."""
    checked = check_linear_states_batch(params, n_features, n_actions, features, states, actions,
                                        advantages, weights, entropy_coef)
    max_grad_norm, hyper = _check_fused(checked[0], grad_out, max_grad_norm, opt_kind, opt_state,
                                        opt_hyper)
    return _fused(checked[0], _linear_states_grad(*checked), grad_out, max_grad_norm, opt_kind,
                  opt_state, hyper)


# ---------------------------------------------------------------------------------------------
# Critics (TD(0), batch semi-gradient) and importance weights
# ---------------------------------------------------------------------------------------------

def _check_td(rewards, dones, batch, dtype, gamma, lr):
    rewards = check_vector(rewards, "rewards", batch, dtype)
    dones = check_dones(dones, batch)
    gamma = check_unit(gamma, "gamma")
    lr = _validate.finite_float(lr, "lr", low=0.0)
    return rewards, dones, gamma, lr


def tabular_td_update(values, states, rewards, next_states, dones, gamma, lr, out=None):
    """One batch TD(0) step on a table of state values, in place; returns the TD errors.

    ``delta[i] = r[i] + gamma * (1 - done[i]) * V[s'[i]] - V[s[i]]`` with the values before the
    update, then ``V[s] += lr * (1/B) sum_{i: s[i] = s} delta[i]`` (semi-gradient of the mean
    squared TD error, targets held fixed).  ``lr = 0`` only evaluates the errors.

    Parameters
    ----------
    values : float32/float64 (S,), C-contiguous, writeable, finite
    states, next_states : int (B,) in [0, S);  rewards : float (B,);  dones : 0/1 (B,)
    gamma : float in [0, 1];  lr : float >= 0

    Returns
    -------
    td_errors : ndarray (B,), dtype of ``values``
    """
    values = check_params(values, "values")
    if not values.flags.writeable:
        raise ValueError("values must be writeable")
    n = values.shape[0]
    states = _validate.int_array(states, "states", ndim=1, low=0, high=n)
    batch = states.shape[0]
    next_states = _validate.int_array(next_states, "next_states", ndim=1, length=batch, low=0, high=n)
    rewards, dones, gamma, lr = _check_td(rewards, dones, batch, values.dtype, gamma, lr)
    if out is not None:
        _validate.check_out(out, (batch,), values.dtype)
    v = values.astype(np.float64)
    delta = rewards.astype(np.float64) + gamma * np.where(dones, 0.0, v[next_states]) - v[states]
    if batch and lr != 0.0:
        acc = np.zeros(n, dtype=np.float64)
        np.add.at(acc, states, delta)
        values[...] = v + (lr / batch) * acc
    return _finish(delta, values.dtype, out)


def linear_td_update(params, n_features, features, rewards, next_features, dones, gamma, lr,
                     out=None):
    """One batch TD(0) step on a linear value ``V(phi) = phi @ w + c``, in place; returns TD errors.

    ``params`` is ``[w (n_features,), c]``; the update is ``w += lr * phi^T delta / B`` and
    ``c += lr * mean(delta)`` with ``delta`` computed before the update.

    Parameters
    ----------
    params : float32/float64 (n_features + 1,), C-contiguous, writeable, finite
    features, next_features : real (B, n_features), finite
    rewards, dones, gamma, lr : as :func:`tabular_td_update`
    """
    params = check_params(params)
    if not params.flags.writeable:
        raise ValueError("params must be writeable")
    n_features = _validate.positive_int(n_features, "n_features")
    check_params_size(params, n_features + 1)
    features = check_features(features, n_features, params.dtype, "features")
    batch = features.shape[0]
    next_features = check_features(next_features, n_features, params.dtype, "next_features", batch)
    rewards, dones, gamma, lr = _check_td(rewards, dones, batch, params.dtype, gamma, lr)
    if out is not None:
        _validate.check_out(out, (batch,), params.dtype)
    p = params.astype(np.float64)
    w, c = p[:n_features], p[n_features]
    x, nx = features.astype(np.float64), next_features.astype(np.float64)
    delta = rewards.astype(np.float64) + gamma * np.where(dones, 0.0, nx @ w + c) - (x @ w + c)
    if batch and lr != 0.0:
        p[:n_features] += (lr / batch) * (x.T @ delta)
        p[n_features] += (lr / batch) * delta.sum()
        params[...] = p
    return _finish(delta, params.dtype, out)


def truncated_importance_weights(log_probs, behaviour_log_probs, rho_bar=1.0, out=None):
    """``min(rho_bar, exp(log_probs - behaviour_log_probs))`` elementwise (``rho_bar`` None: no cap).

    Parameters
    ----------
    log_probs : float (B,)  log pi(a|s) of the current policy (finite)
    behaviour_log_probs : float (B,)  log mu(a|s) stored with the sample (finite)
    rho_bar : float > 0 or None

    Returns
    -------
    weights : ndarray (B,), dtype of ``log_probs``
    """
    log_probs = check_vector(log_probs, "log_probs")
    n = log_probs.shape[0]
    behaviour_log_probs = check_vector(behaviour_log_probs, "behaviour_log_probs", n, log_probs.dtype)
    cap = np.inf if rho_bar is None else _validate.finite_float(rho_bar, "rho_bar", low=0.0,
                                                                low_open=True)
    if out is not None:
        _validate.check_out(out, (n,), log_probs.dtype)
    with np.errstate(over="ignore"):
        ratio = np.exp(log_probs.astype(np.float64) - behaviour_log_probs.astype(np.float64))
    return _finish_finite(np.minimum(ratio, cap), log_probs.dtype, out,
                          "truncated_importance_weights: untruncated ratios pi / mu (truncate with rho_bar)")


class FusedStep:
    """A policy-gradient + optimizer step bound to one policy's parameters and one optimizer's
    state: ``step(obs, actions, advantages, weights=None, entropy_coef=0.0, max_grad_norm=None)``
    does what :func:`tabular_pg_step` / :func:`linear_pg_step` do with the optimizer's current
    step number, then advances ``optimizer.steps``.  Built by :func:`metarl_fast.pg.fused_step`
    (which checks the binding); each call checks that the policy and the optimizer still hold the
    arrays it was bound to (else ValueError).  Returns the gradient's norm before clipping.
    """

    def __init__(self, policy, optimizer, linear, n_rows, n_actions, opt_kind, features=None):
        self.policy, self.optimizer = policy, optimizer
        self.linear, self.n_rows, self.n_actions, self.opt_kind = bool(linear), n_rows, n_actions, opt_kind
        self.params, self.state, self.hyper = policy.params, optimizer.state, optimizer._hyper
        self.grad_out = optimizer._grad
        self.features = features  # linear policies fed states: the (S, F) feature table

    def _check_binding(self):
        if (self.policy.params is not self.params or self.optimizer.state is not self.state
                or self.optimizer._hyper is not self.hyper or self.optimizer.params is not self.params):
            raise ValueError("the policy or the optimizer no longer holds the arrays this step was "
                             "bound to; build a new one with metarl_fast.pg.fused_step")

    def __call__(self, obs, actions, advantages, weights=None, entropy_coef=0.0, max_grad_norm=None):
        self._check_binding()
        t = self.optimizer.steps + 1
        if self.opt_kind == OPT_ADAM:
            self.hyper[4] = t
        if self.features is not None:
            norm = linear_states_pg_step(self.params, self.n_rows, self.n_actions, self.features,
                                         obs, actions, advantages, weights, entropy_coef,
                                         max_grad_norm, self.grad_out, self.opt_kind, self.state,
                                         self.hyper)
        else:
            kernel = linear_pg_step if self.linear else tabular_pg_step
            norm = kernel(self.params, self.n_rows, self.n_actions, obs, actions, advantages,
                          weights, entropy_coef, max_grad_norm, self.grad_out, self.opt_kind,
                          self.state, self.hyper)
        self.optimizer.steps = t
        return norm
