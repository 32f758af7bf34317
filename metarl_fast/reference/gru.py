"""GRU softmax policy kernels for RL^2 in pure NumPy: the executable specification of
``_core/gru.pyx``.

The network
-----------
One GRU layer over the steps of a batch of trials, PyTorch's ``torch.nn.GRU`` parameterisation
(gates r, z, n; input size D, hidden size H in 1..512), then two linear heads on the new hidden
state: policy logits (A actions) and a scalar value.  For a row with input ``x`` and previous
hidden state ``h`` (zeroed first where ``resets[t, b]``):

    r  = sig(x W_ir + b_ir + h W_hr + b_hr)
    z  = sig(x W_iz + b_iz + h W_hz + b_hz)
    n  = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h
    logits = h' W_pi + b_pi,   value = h' w_v + b_v

Parameter layout (:func:`gru_layout`)
-------------------------------------
One flat float64 vector ``params`` (P,), each matrix stored (in, out) row-major like the MLP's
(``reference/mlp.py``), gate blocks in PyTorch's order r | z | n:

    name    shape         offset                      PyTorch
    W_x     (D, 3H)       0                           gru.weight_ih_l0.T   (weight_ih_l0 is (3H, D))
    W_h     (H, 3H)       3HD                         gru.weight_hh_l0.T
    b_x     (3H,)         3HD + 3H^2                  gru.bias_ih_l0
    b_h     (3H,)         3HD + 3H^2 + 3H             gru.bias_hh_l0
    W_out   (H, A + 1)    3HD + 3H^2 + 6H             [policy.weight; value.weight].T
    b_out   (A + 1,)      3HD + 3H^2 + 6H + H(A + 1)  [policy.bias, value.bias]

``P = 3H (D + H + 2) + (H + 1)(A + 1)``.  Column ``A`` of the output head is the value head.
:func:`gru_to_torch_order` and :func:`gru_from_torch` convert to and from PyTorch's tensors.

Arithmetic (both backends)
--------------------------
float64 only (float32 is refused with a TypeError).  Every affine map is ``b[k]``, then
``+ x[j] * W[j, k]`` for ``j = 0, 1, ...`` in that order (no FMA);
``sig(x) = 0.5 + 0.5 tanh(0.5 x)`` with the shared, build-independent
:func:`metarl_fast.reference.mlp.tanh` (``gru_kernels.h`` holds a C copy of its twin); the gate
formulas are evaluated exactly as written above, left to right.  The forward pass (logits,
values, hidden states) and the fused step :func:`gru_step_act` are therefore bit-identical in both
backends, and so are the sampled actions.  Gradients are sums in another order in each backend
(BLAS here, blocked loops in Cython, with fused multiply-adds where the CPU has them): they agree
to ~1e-13 relative, not bit for bit.

The forward's activations for the backward (:class:`GRUCache`)
-------------------------------------------------------------
``gru_forward(..., return_cache=True)`` also returns a :class:`GRUCache`: the hidden states and the
gate values ``r | z | n | g_n`` (``g_n = b_hn + h W_hn``) of every step and row, with copies of the
arguments.  ``gru_backward(..., cache=cache)`` then skips rerunning the forward pass (the
gradient is the same, bit for bit, as without the cache).  A cache is only valid for the
arguments that made it: ``gru_backward`` compares its ``params``, ``inputs``, ``h0`` and
``resets`` with the cache's copies, bit for bit, and refuses a mismatch (for instance ``params``
updated in place since the forward) with a ValueError.  A cache from either backend works in both.

Initialisation (:func:`gru_init`)
---------------------------------
As PyTorch's defaults: every GRU weight and bias ~ U(-k, k) with ``k = 1/sqrt(H)``; the heads as
``nn.Linear(H, .)``: weight and bias ~ U(-k, k) with the same ``k = 1/sqrt(H)`` (fan-in H).
Draws: ``rng.uniform(-k, k, n)`` once per block, in the layout's order (W_x, W_h, b_x, b_h,
W_out, b_out), each in its storage order.

Validation
----------
Every function checks its arguments first and raises TypeError (type, dtype) or ValueError
(shape, range, NaN/inf, ...) naming the argument; a rejected call writes nothing and draws
nothing.  ``params``: flat C-contiguous finite float64 ndarray of size P; ``inputs``, ``h0``/``h``,
``dlogits``, ``dvalues``: float64 (lists converted; non-contiguous arrays copied once), finite;
``resets``: bool.  Finite inputs whose results overflow raise FloatingPointError.
"""
import math

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import pg as _pg
from metarl_fast.reference import policy as _policy
from metarl_fast.reference.mlp import tanh

MAX_HIDDEN = 512
TORCH_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
               "policy.weight", "policy.bias", "value.weight", "value.bias")


# ---------------------------------------------------------------------------------------------
# Layout, initialisation, conversion to and from PyTorch
# ---------------------------------------------------------------------------------------------

def _check_hidden(hidden, name="hidden"):
    hidden = _validate.positive_int(hidden, name)
    if hidden > MAX_HIDDEN:
        raise ValueError(f"{name} must be in 1..{MAX_HIDDEN}, got {hidden}")
    return hidden


def gru_layout(input_dim, hidden, n_actions):
    """Where each block lives in the flat parameter vector.

    Parameters
    ----------
    input_dim : int >= 1 (D);  hidden : int in 1..512 (H);  n_actions : int >= 1 (A)

    Returns
    -------
    layout : dict name -> (offset, shape) for "W_x", "W_h", "b_x", "b_h", "W_out", "b_out"
        (``params[offset : offset + prod(shape)].reshape(shape)``)
    n_params : int, the size P of ``params``
    """
    d = _validate.positive_int(input_dim, "input_dim")
    h = _check_hidden(hidden)
    a = _validate.positive_int(n_actions, "n_actions")
    layout, offset = {}, 0
    for name, shape in (("W_x", (d, 3 * h)), ("W_h", (h, 3 * h)), ("b_x", (3 * h,)),
                        ("b_h", (3 * h,)), ("W_out", (h, a + 1)), ("b_out", (a + 1,))):
        layout[name] = (offset, shape)
        offset += math.prod(shape)
    _validate.check_table_size(offset, f"a GRU with input_dim={d}, hidden={h}, n_actions={a} "
                                       f"(its parameter vector)")
    return layout, offset


def gru_init(input_dim, hidden, n_actions, rng):
    """Fresh float64 parameters (P,), initialised as PyTorch's ``nn.GRU`` + ``nn.Linear`` heads.

    Every block ~ U(-1/sqrt(H), 1/sqrt(H)), drawn as ``rng.uniform(-k, k, size)`` once per block in
    the layout's order (W_x, W_h, b_x, b_h, W_out, b_out), each in its storage order.
    """
    layout, n_params = gru_layout(input_dim, hidden, n_actions)
    _validate.check_rng(rng)
    k = 1.0 / math.sqrt(hidden)
    params = np.empty(n_params)
    for offset, shape in layout.values():
        size = math.prod(shape)
        params[offset:offset + size] = rng.uniform(-k, k, size)
    return params


def _blocks(p, input_dim, hidden, n_actions):
    layout, _ = gru_layout(input_dim, hidden, n_actions)
    return {name: p[off:off + math.prod(shape)].reshape(shape)
            for name, (off, shape) in layout.items()}


def gru_to_torch_order(params, input_dim, hidden, n_actions):
    """The parameters as PyTorch's tensors (new float64 arrays), a dict keyed by
    :data:`TORCH_NAMES`: ``weight_ih_l0`` (3H, D), ``weight_hh_l0`` (3H, H), ``bias_ih_l0`` (3H,),
    ``bias_hh_l0`` (3H,) of ``nn.GRU(D, H)``; ``policy.weight`` (A, H), ``policy.bias`` (A,) of
    ``nn.Linear(H, A)``; ``value.weight`` (1, H), ``value.bias`` (1,) of ``nn.Linear(H, 1)``."""
    params = _check_params(params)
    _, n_params = gru_layout(input_dim, hidden, n_actions)
    _pg.check_params_size(params, n_params)
    b = _blocks(params, input_dim, hidden, n_actions)
    w_out = b["W_out"].T
    return {"weight_ih_l0": b["W_x"].T.copy(), "weight_hh_l0": b["W_h"].T.copy(),
            "bias_ih_l0": b["b_x"].copy(), "bias_hh_l0": b["b_h"].copy(),
            "policy.weight": w_out[:n_actions].copy(), "policy.bias": b["b_out"][:n_actions].copy(),
            "value.weight": w_out[n_actions:].copy(), "value.bias": b["b_out"][n_actions:].copy()}


def gru_from_torch(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, policy_weight,
                   policy_bias, value_weight, value_bias):
    """Flat float64 ``params`` (P,) from PyTorch-shaped arrays (see :func:`gru_to_torch_order`;
    pass ``tensor.detach().numpy()``).  D, H and A are read from ``weight_ih_l0`` (3H, D) and
    ``policy_weight`` (A, H); every other shape must agree."""
    arrays = [_validate.float_array(x, name).astype(np.float64) for x, name in zip(
        (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, policy_weight, policy_bias,
         value_weight, value_bias), TORCH_NAMES)]
    w_ih, w_hh, b_ih, b_hh, w_pi, b_pi, w_v, b_v = arrays
    if w_ih.ndim != 2 or w_ih.shape[0] % 3 or w_ih.shape[0] == 0:
        raise ValueError(f"weight_ih_l0 must have shape (3H, D), got {w_ih.shape}")
    hidden, input_dim = w_ih.shape[0] // 3, w_ih.shape[1]
    if w_pi.ndim != 2 or w_pi.shape[1] != hidden:
        raise ValueError(f"policy_weight must have shape (A, {hidden}), got {w_pi.shape}")
    n_actions = w_pi.shape[0]
    layout, n_params = gru_layout(input_dim, hidden, n_actions)
    expected = {"weight_hh_l0": (3 * hidden, hidden), "bias_ih_l0": (3 * hidden,),
                "bias_hh_l0": (3 * hidden,), "policy.bias": (n_actions,),
                "value.weight": (1, hidden), "value.bias": (1,)}
    for name, x in zip(TORCH_NAMES, arrays):
        if name in expected and x.shape != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}, got {x.shape}")
    params = np.empty(n_params)
    b = _blocks(params, input_dim, hidden, n_actions)
    b["W_x"][...] = w_ih.T
    b["W_h"][...] = w_hh.T
    b["b_x"][...] = b_ih
    b["b_h"][...] = b_hh
    b["W_out"][...] = np.concatenate([w_pi, w_v]).T
    b["b_out"][...] = np.concatenate([b_pi, b_v])
    return params


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _check_params(params):
    params = _pg.check_params(params)
    if params.dtype != np.float64:
        raise TypeError(f"params must be float64 (the GRU kernels run in float64 only), "
                        f"got {params.dtype}")
    return params


def _float64(x, name, ndim):
    arr = _validate.float_array(x, name, ndim=ndim, dtype=np.float64)
    _check_finite(arr, name)
    return arr


def _n_actions(params, input_dim, hidden):
    """A from the size of ``params``: P = 3H (D + H + 2) + (H + 1)(A + 1)."""
    rest = params.shape[0] - 3 * hidden * (input_dim + hidden + 2)
    n_out = rest // (hidden + 1) if rest > 0 else 0
    if n_out < 2 or n_out * (hidden + 1) != rest:
        raise ValueError(f"params has size {params.shape[0]}, which is not the size of a GRU "
                         f"with input_dim={input_dim} and hidden={hidden} for any n_actions >= 1 "
                         f"(gru_layout gives the sizes)")
    return n_out - 1


def _check_finite(x, name):
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")


def _check_net(params, x, x_name, h, h_name, x_ndim, finite=True):
    """(params, x, h, D, H, A): ``x`` (..., D) with ``x_ndim`` axes, ``h`` (B, H); shapes are
    checked before values (``finite=False``: the caller checks NaN/inf after its own sizes)."""
    params = _check_params(params)
    x = _validate.float_array(x, x_name, ndim=x_ndim, dtype=np.float64)
    h = _validate.float_array(h, h_name, ndim=2, dtype=np.float64)
    if x.shape[-1] < 1:
        raise ValueError(f"{x_name} must have at least one feature (input_dim >= 1), "
                         f"got shape {x.shape}")
    if not 1 <= h.shape[1] <= MAX_HIDDEN:
        raise ValueError(f"{h_name} must have shape (B, H) with H in 1..{MAX_HIDDEN}, "
                         f"got shape {h.shape}")
    if h.shape[0] != x.shape[-2]:
        raise ValueError(f"{h_name} has {h.shape[0]} rows but {x_name} has a batch of "
                         f"{x.shape[-2]} (shape {x.shape})")
    input_dim, hidden = x.shape[-1], h.shape[1]
    n_actions = _n_actions(params, input_dim, hidden)
    if finite:
        _check_finite(x, x_name)
        _check_finite(h, h_name)
    return params, x, h, input_dim, hidden, n_actions


def _check_resets(resets, n_steps, n_rows):
    if resets is None:
        raise TypeError("resets must be a bool array (T_steps, B), got None")
    arr = np.asarray(resets)
    if arr.dtype != np.bool_:
        raise TypeError(f"resets must be a bool array (T_steps, B), got {_validate.got(arr)}")
    if arr.shape != (n_steps, n_rows):
        raise ValueError(f"resets must have shape {(n_steps, n_rows)} (T_steps, B), "
                         f"got {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_sequence(params, inputs, h0, resets):
    """(params, inputs (T, B, D), h0 (B, H), resets (T, B) bool, D, H, A), validated."""
    params, inputs, h0, d, h, a = _check_net(params, inputs, "inputs", h0, "h0", 3, finite=False)
    resets = _check_resets(resets, inputs.shape[0], inputs.shape[1])
    n_steps, n_rows = inputs.shape[:2]
    # the largest table either backend allocates: the per-step gate trace (T, B, 4H)
    _validate.check_table_size(n_steps * n_rows * max(4 * h, a + 1),
                               f"a GRU over T_steps={n_steps} steps of B={n_rows} trials "
                               f"with hidden={h} (its per-step tables)")
    _check_finite(inputs, "inputs")
    _check_finite(h0, "h0")
    return params, inputs, h0, resets, d, h, a


def _check_out(out, name, shape):
    if out is not None:
        _validate.check_out(out, shape, np.float64, name=name)
    return out


class GRUCache:
    """What :func:`gru_forward` keeps for :func:`gru_backward` (``return_cache=True``); all
    arrays float64, C-contiguous and read-only.

    Attributes
    ----------
    trace : float64 (T_steps, B, 4H)   per step and row the gates ``r | z | n | g_n``
                                       (``g_n = b_hn + hp W_hn``, ``hp`` the state after the reset)
    hidden : float64 (T_steps + 1, B, H)   the hidden states (a copy of the forward's ``hidden``)

    and the arguments of the forward (copies), which :func:`gru_backward` checks its own against.
    Made only by ``gru_forward``; about ``T_steps * B * (5H + D)`` doubles.
    """
    __slots__ = ("trace", "hidden", "_params", "_inputs", "_h0", "_resets")

    def __init__(self, trace, hidden, params, inputs, h0, resets):
        self.trace, self.hidden = trace, hidden
        self._params, self._inputs = params.copy(), inputs.copy()
        self._h0, self._resets = h0.copy(), resets.copy()
        for arr in (self.trace, self.hidden, self._params, self._inputs, self._h0, self._resets):
            arr.flags.writeable = False

    def __repr__(self):
        n_steps, n_rows, h4 = self.trace.shape
        return f"GRUCache(T_steps={n_steps}, B={n_rows}, H={h4 // 4})"


def _same_bits(x, y):
    return x.shape == y.shape and x.tobytes() == y.tobytes()


def _check_cache(cache, params, inputs, h0, resets, hidden):
    """The (hidden (T + 1, B, H), trace (T, B, 4H)) of a cache made by ``gru_forward`` from
    exactly these (validated) arguments."""
    if not isinstance(cache, GRUCache):
        raise TypeError(f"cache must be a GRUCache returned by gru_forward(..., "
                        f"return_cache=True), got {type(cache).__name__}")
    n_steps, n_rows = inputs.shape[:2]
    for arr, name, shape in ((cache.trace, "cache.trace", (n_steps, n_rows, 4 * hidden)),
                             (cache.hidden, "cache.hidden", (n_steps + 1, n_rows, hidden))):
        if not (isinstance(arr, np.ndarray) and arr.dtype == np.float64
                and arr.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous float64 array, got "
                            f"{_validate.got(arr)}")
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, but these arguments need {shape}: "
                             f"the cache was made by gru_forward for other inputs or h0")
    for arr, mine, name in ((params, cache._params, "params"), (inputs, cache._inputs, "inputs"),
                            (h0, cache._h0, "h0"), (resets, cache._resets, "resets")):
        if not _same_bits(arr, mine):
            raise ValueError(f"cache was made by gru_forward with other {name} (changed since "
                             f"the forward?): its activations would give a wrong gradient")
    return cache.hidden, cache.trace


def _overflow(what, *arrays):
    for arr in arrays:
        if arr.size and not np.all(np.isfinite(arr)):
            raise FloatingPointError(f"{what} overflow the float64 range (params or inputs "
                                     f"too large)")


# ---------------------------------------------------------------------------------------------
# Forward and backward (float64)
# ---------------------------------------------------------------------------------------------

def _affine(x, w, b):
    """``b + x[:, 0] w[0] + x[:, 1] w[1] + ...`` summed in that order (the Cython order)."""
    out = np.empty((x.shape[0], w.shape[1]))
    out[...] = b
    for j in range(w.shape[0]):
        out += x[:, j:j + 1] * w[j]
    return out


def _sigmoid(x):
    return 0.5 + 0.5 * tanh(0.5 * x)


def _gates(a, g, hp):
    """One step's element-wise part: (h', r, z, n, g_n) from ``a = b_x + x W_x``,
    ``g = b_h + hp W_h`` (B, 3H) and ``hp`` (B, H)."""
    h = hp.shape[1]
    r = _sigmoid(a[:, :h] + g[:, :h])
    z = _sigmoid(a[:, h:2 * h] + g[:, h:2 * h])
    g_n = g[:, 2 * h:]
    n = tanh(a[:, 2 * h:] + r * g_n)
    return (1.0 - z) * n + z * hp, r, z, n, g_n


def _previous(hs, resets, t):
    """The state entering step t (B, H): ``hs[t]`` with the reset rows zeroed."""
    return np.where(resets[t][:, None], 0.0, hs[t])


def _run(b, inputs, h0, resets, keep_trace=True):
    """The recurrence: hidden states (T + 1, B, H) and the gate trace (T, B, 4H), per step and
    row ``r | z | n | g_n`` (the layout of :class:`GRUCache`; None unless ``keep_trace``)."""
    n_steps, n_rows, input_dim = inputs.shape
    h = h0.shape[1]
    ax = _affine(inputs.reshape(n_steps * n_rows, input_dim), b["W_x"], b["b_x"])
    ax = ax.reshape(n_steps, n_rows, 3 * h)
    hs = np.empty((n_steps + 1,) + h0.shape)
    hs[0] = h0
    trace = np.empty((n_steps, n_rows, 4 * h)) if keep_trace else None
    for t in range(n_steps):
        hp = _previous(hs, resets, t)
        hs[t + 1], r, z, n, g_n = _gates(ax[t], _affine(hp, b["W_h"], b["b_h"]), hp)
        if keep_trace:
            for k, gate in enumerate((r, z, n, g_n)):
                trace[t, :, k * h:(k + 1) * h] = gate
    return hs, trace


def _forward(params, inputs, h0, resets, d, h, a, keep_trace=False):
    b = _blocks(params, d, h, a)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported on the results
        hs, trace = _run(b, inputs, h0, resets, keep_trace)
        n_steps, n_rows = inputs.shape[:2]
        out = _affine(hs[1:].reshape(n_steps * n_rows, h), b["W_out"], b["b_out"])
    out = out.reshape(n_steps, n_rows, a + 1)
    return np.ascontiguousarray(out[..., :a]), np.ascontiguousarray(out[..., a]), hs, trace


def gru_forward(params, inputs, h0, resets, return_cache=False):
    """The GRU policy over the steps of a batch of trials.

    Parameters
    ----------
    params : float64 (P,)          flat parameters (see the module docstring)
    inputs : float64 (T_steps, B, D)
    h0 : float64 (B, H)            hidden state before step 0
    resets : bool (T_steps, B)     True: the hidden state is zeroed before step t (a new trial;
                                   within a trial it is carried across episodes)
    return_cache : bool            also return the :class:`GRUCache` for :func:`gru_backward`

    Returns
    -------
    logits : float64 (T_steps, B, A)
    values : float64 (T_steps, B)
    hidden : float64 (T_steps + 1, B, H)   ``hidden[0] = h0``, ``hidden[t + 1]`` the state after
                                           step t (before any reset of step t + 1)
    cache : GRUCache                       only with ``return_cache=True``
    """
    return_cache = _check_return_cache(return_cache)
    params, inputs, h0, resets, d, h, a = _check_sequence(params, inputs, h0, resets)
    logits, values, hs, trace = _forward(params, inputs, h0, resets, d, h, a, return_cache)
    _overflow("the GRU's logits, values or hidden states", logits, values, hs)
    if not return_cache:
        return logits, values, hs
    return logits, values, hs, GRUCache(trace, hs.copy(), params, inputs, h0, resets)


def _check_return_cache(return_cache):
    if not isinstance(return_cache, (bool, np.bool_)):
        raise TypeError(f"return_cache must be a bool, got {type(return_cache).__name__}")
    return bool(return_cache)


def gru_backward(params, inputs, h0, resets, dlogits, dvalues, cache=None):
    """Gradient (P,) float64 of ``sum(dlogits * logits) + sum(dvalues * values)`` with respect to
    ``params``, by backpropagation through time (float64 accumulation; nothing flows into
    ``h0`` through a reset).

    Parameters
    ----------
    params, inputs, h0, resets : as :func:`gru_forward`
    dlogits : float64 (T_steps, B, A);  dvalues : float64 (T_steps, B)   finite
    cache : GRUCache, optional   from ``gru_forward(params, inputs, h0, resets,
                                 return_cache=True)`` with these very arguments (checked, bit for
                                 bit): its activations replace a rerun of the forward pass.
                                 Without it the forward is rerun; the gradient is the same.
    """
    params, inputs, h0, resets, d, h, a = _check_sequence(params, inputs, h0, resets)
    n_steps, n_rows = inputs.shape[:2]
    dlogits = _float64(dlogits, "dlogits", 3)
    if dlogits.shape != (n_steps, n_rows, a):
        raise ValueError(f"dlogits must have shape {(n_steps, n_rows, a)}, got {dlogits.shape}")
    dvalues = _float64(dvalues, "dvalues", 2)
    if dvalues.shape != (n_steps, n_rows):
        raise ValueError(f"dvalues must have shape {(n_steps, n_rows)}, got {dvalues.shape}")
    if cache is not None:
        hs, trace = _check_cache(cache, params, inputs, h0, resets, h)
    b = _blocks(params, d, h, a)
    grad = np.zeros_like(params)
    g = _blocks(grad, d, h, a)
    with np.errstate(over="ignore", invalid="ignore"):
        if cache is None:
            hs, trace = _run(b, inputs, h0, resets)
        dy = np.concatenate([dlogits, dvalues[..., None]], axis=2)  # (T, B, A + 1)
        hs1 = hs[1:].reshape(-1, h)
        g["W_out"][...] = hs1.T @ dy.reshape(-1, a + 1)
        g["b_out"][...] = dy.reshape(-1, a + 1).sum(axis=0)
        dh_head = dy @ b["W_out"].T  # (T, B, H)
        carry = np.zeros((n_rows, h))
        for t in range(n_steps - 1, -1, -1):
            hp = _previous(hs, resets, t)
            r, z, n, g_n = (trace[t, :, k * h:(k + 1) * h] for k in range(4))
            dh = carry + dh_head[t]
            dan = (dh * (1.0 - z)) * (1.0 - n * n)
            dar = (dan * g_n) * (r * (1.0 - r))
            daz = (dh * (hp - n)) * (z * (1.0 - z))
            dgx = np.concatenate([dar, daz, dan], axis=1)
            dgh = np.concatenate([dar, daz, dan * r], axis=1)
            g["W_x"] += inputs[t].T @ dgx
            g["b_x"] += dgx.sum(axis=0)
            g["W_h"] += hp.T @ dgh
            g["b_h"] += dgh.sum(axis=0)
            carry = dh * z + dgh @ b["W_h"].T
            carry[resets[t]] = 0.0  # the state before a reset does not reach step t
    _overflow("the GRU's gradient", grad)
    return grad


def gru_step_act(params, inputs, h, rng, h_out=None, logits_out=None, values_out=None):
    """One step of the GRU policy for B rows, fused with sampling (for acting).

    ``h`` is the state after the previous step (zero it where a new trial starts).  The actions
    are exactly ``metarl_fast.policy.sample_actions(logits, rng)``: one ``rng.random()`` per row,
    in row order, inverse CDF.  Nothing is drawn or written if the call is rejected.

    Parameters
    ----------
    params : float64 (P,);  inputs : float64 (B, D);  h : float64 (B, H)
    rng : numpy.random.Generator
    h_out : float64 (B, H), optional   the new hidden state (may be ``h`` itself: in place)
    logits_out : float64 (B, A), optional;  values_out : float64 (B,), optional

    Returns
    -------
    actions : int64 (B,);  logits : float64 (B, A);  values : float64 (B,);
    h_new : float64 (B, H)   (the ``*_out`` arrays when given)
    """
    params, inputs, h, d, hidden, a = _check_net(params, inputs, "inputs", h, "h", 2)
    _validate.check_rng(rng)
    n_rows = inputs.shape[0]
    _check_out(h_out, "h_out", (n_rows, hidden))
    _check_out(logits_out, "logits_out", (n_rows, a))
    _check_out(values_out, "values_out", (n_rows,))
    logits, values, hs, _ = _forward(params, inputs[None], h, np.zeros((1, n_rows), bool),
                                     d, hidden, a)
    logits, values, h_new = logits[0], values[0], hs[1]
    _overflow("the GRU's logits, values or hidden states", logits, values, h_new)
    actions = _policy.sample_actions(logits, rng)
    results = []
    for res, out in ((logits, logits_out), (values, values_out), (h_new, h_out)):
        if out is not None:
            out[...] = res
            res = out
        results.append(res)
    return (actions, *results)
