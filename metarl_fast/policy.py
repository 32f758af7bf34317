"""Softmax policies: the public kernels (dispatched to the active backend) and the policy classes.

``TabularSoftmaxPolicy`` holds logits ``theta[s, a]``; ``LinearSoftmaxPolicy`` holds ``W`` (F, A)
and ``b`` (A,) with logits ``phi(s) @ W + b``.  Both keep every parameter in one flat float array
``policy.params``; ``theta``/``W``/``b`` are views into it, so optimizers and meta-learners update
it in place and the views follow.
"""
import numpy as np

from metarl_fast import _validate, io
from metarl_fast._backend import active

POLICY_FORMAT_VERSION = 1


def _along(kernel, logits, axis, out, reduce):
    """``kernel`` (rows of a 2-D array) along ``axis`` of any-dimensional ``logits``, as NumPy
    and SciPy take it: the axis is moved last and the others flattened into rows."""
    if axis in (-1, 1) and isinstance(logits, np.ndarray) and logits.ndim == 2:
        return kernel(logits, out)  # the kernels' own layout: no copy, out= as given
    if logits is None:
        return kernel(logits, out)  # the kernel names it
    x = np.asarray(logits)
    if x.ndim == 0:
        raise ValueError("logits must have at least one axis, got a scalar")
    axis = _validate.positive_int(axis, "axis", minimum=-x.ndim)
    if axis >= x.ndim:
        raise ValueError(f"axis {axis} is out of range for logits of {x.ndim} dimensions")
    moved = np.moveaxis(x, axis, -1)
    rows = np.ascontiguousarray(moved.reshape(-1, moved.shape[-1]))
    result = kernel(rows, None)
    shape = moved.shape[:-1] if reduce else moved.shape
    result = result.reshape(shape)
    if not reduce:
        result = np.moveaxis(result, -1, axis)
    if out is not None:
        _validate.check_out(out, result.shape, result.dtype)
        out[...] = result
        return out
    return result


def softmax(logits, out=None, axis=-1):
    """Softmax along ``axis`` (default the last) of float32/float64 ``logits`` of any shape (a
    1-D vector, (B, A) rows, ...); returns the same shape and dtype."""
    return _along(active.policy.softmax, logits, axis, out, False)


def log_softmax(logits, out=None, axis=-1):
    """Log-softmax along ``axis`` of ``logits`` of any shape; returns the same shape and dtype."""
    return _along(active.policy.log_softmax, logits, axis, out, False)


def entropy(logits, out=None, axis=-1):
    """Entropy of the softmax along ``axis``; returns the shape of ``logits`` without that axis
    (a float array of dtype of ``logits``: 0-d for a 1-D vector)."""
    return _along(active.policy.entropy, logits, axis, out, True)


def log_prob(logits, actions, out=None):
    """``log pi(actions[i] | logits[i])`` for int ``actions`` (B,); returns (B,)."""
    return active.policy.log_prob(logits, actions, out)


def grad_log_prob(logits, actions, out=None):
    """``onehot(actions) - softmax(logits)``, the gradient of log pi w.r.t. the logits; (B, A)."""
    return active.policy.grad_log_prob(logits, actions, out)


def sample_actions(logits, rng, out=None):
    """One action per row of (B, A) ``logits`` by inverse CDF; int64 (B,).

    Exactly one ``rng.random()`` per row, so both backends return identical actions for the same
    Generator state.  Non-contiguous ``logits`` are copied once to C order.
    """
    rng = _validate.as_generator(rng)
    return active.policy.sample_actions(logits, rng, out)


def sample_actions_at(logits, rows, rng, out=None):
    """``sample_actions(logits[rows], rng)`` without the gather: one action per entry of ``rows``
    (int (n,)) from the softmax of table row ``rows[i]`` of (R, A) ``logits``; the same actions
    and draws, each table row exponentiated once (every row must be valid, used or not)."""
    rng = _validate.as_generator(rng)
    return active.policy.sample_actions_at(logits, rows, rng, out)




def _float_rows(obs, width, dtype, name):
    """``obs`` as finite (B, width) rows of ``dtype`` (C-contiguous), or TypeError/ValueError
    naming ``name``."""
    x = np.asarray(obs)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got {_validate.got(x)}")
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (B, {width}), got {np.shape(obs)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class _SoftmaxPolicy:
    """Shared behaviour of the softmax policies (params handling, sampling, persistence).

    Every method takes a batch of observations or one observation as Gymnasium gives it (a state
    as an int for the tabular policy, one feature vector for the linear one): then ``act``
    returns an int, ``log_prob`` and ``entropy`` a float, ``logits`` and ``probs`` shape (A,).
    """

    _kind = None
    _one_ndim = None  # the ndim of one observation

    def _one(self, obs):
        if type(obs) is np.ndarray:  # the hot path: one attribute read, no np.ndim call
            return obs.ndim == self._one_ndim
        return (obs is not None and not isinstance(obs, (list, tuple, str))
                and np.ndim(obs) == self._one_ndim)

    def probs(self, obs):
        """Action probabilities, shape (B, A) (one observation: (A,))."""
        if self._one(obs):
            return self.probs(np.asarray(obs)[None])[0]
        return softmax(self.logits(obs))

    def act(self, obs, rng):
        """Sample actions for a batch of observations; int64 (B,) (one observation: an int)."""
        rng = _validate.as_generator(rng)
        if self._one(obs):
            return int(self.act(np.asarray(obs)[None], rng)[0])
        return sample_actions(self.logits(obs), rng)

    def log_prob(self, obs, actions):
        """``log pi(actions | obs)``, shape (B,) (one observation and action: a float)."""
        if self._one(obs) and np.ndim(actions) == 0:
            return float(self.log_prob(np.asarray(obs)[None], np.asarray(actions)[None])[0])
        return log_prob(self.logits(obs), actions)

    def entropy(self, obs):
        """Entropy of the action distribution at each observation, shape (B,) (one: a float)."""
        if self._one(obs):
            return float(self.entropy(np.asarray(obs)[None])[0])
        return entropy(self.logits(obs))

    @property
    def n_params(self):
        return self.params.size

    @property
    def dtype(self):
        return self.params.dtype

    def set_params(self, values):
        """Copy ``values`` (flat, length n_params, finite) into ``params`` in place."""
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"params must be a real array, got {_validate.got(values)}")
        if values.shape != self.params.shape:
            raise ValueError(f"params must have shape {self.params.shape}, got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("params must be finite")
        self.params[...] = values

    def copy(self):
        new = self.__class__.__new__(self.__class__)
        new._init_from(self._shape_args(), self.params.copy())
        return new

    def save(self, path):
        """Write the policy atomically to ``path`` (.npz, no pickle, with a format version)."""
        arrays = {"params": self.params, "shape": np.asarray(self._shape_args(), dtype=np.int64)}
        return io.save_npz(path, arrays, kind=self._kind, version=POLICY_FORMAT_VERSION)

    @classmethod
    def load(cls, path):
        """Read a policy written by :meth:`save`; raises ``CheckpointError`` on a bad file."""
        arrays, _ = io.load_npz(path, kind=cls._kind, versions={POLICY_FORMAT_VERSION})
        try:
            stored_shape = arrays["shape"]
            params = arrays["params"]
        except KeyError as err:
            raise io.CheckpointError(f"{path}: missing array {err}") from err
        if stored_shape.dtype.kind not in "iu" or stored_shape.ndim != 1:
            raise io.CheckpointError(f"{path}: inconsistent policy file (shape of dtype "
                                     f"{stored_shape.dtype}, shape {stored_shape.shape})")
        shape = tuple(int(v) for v in stored_shape)
        new = cls.__new__(cls)
        try:
            new._validate_shape(shape)
            if params.dtype not in _validate.FLOAT_DTYPES or params.shape != (new._size(shape),):
                raise ValueError(f"params of shape {params.shape}, dtype {params.dtype}")
        except (ValueError, TypeError) as err:
            raise io.CheckpointError(f"{path}: inconsistent policy file ({err})") from err
        new._init_from(shape, np.ascontiguousarray(params))
        return new

    def __eq__(self, other):
        return (type(self) is type(other) and self._shape_args() == other._shape_args()
                and self.params.dtype == other.params.dtype and np.array_equal(self.params, other.params))

    __hash__ = None


class TabularSoftmaxPolicy(_SoftmaxPolicy):
    """Softmax over a table of logits: ``pi(a | s) = softmax(theta[s])``.

    Parameters
    ----------
    n_states, n_actions : int >= 1
    dtype : float32 or float64
    theta : array (n_states, n_actions), optional
        Initial logits (default zeros: the uniform policy).

    Attributes
    ----------
    params : ndarray (n_states * n_actions,)  the flat parameters (updated in place by optimizers)
    theta  : ndarray (n_states, n_actions)    a view of ``params``
    """

    _kind = "TabularSoftmaxPolicy"

    _one_ndim = 0  # one observation: a state (int)

    def __init__(self, n_states, n_actions, dtype=np.float64, theta=None):
        n_states = _validate.positive_int(n_states, "n_states")
        n_actions = _validate.positive_int(n_actions, "n_actions")
        _validate.check_table_size(n_states * n_actions, f"TabularSoftmaxPolicy(n_states={n_states}, "
                                   f"n_actions={n_actions}) would hold n_states x n_actions logits")
        dtype = _check_dtype(dtype)
        params = np.zeros(n_states * n_actions, dtype=dtype)
        self._init_from((n_states, n_actions), params)
        if theta is not None:
            theta = np.asarray(theta)
            if theta.shape != (n_states, n_actions):
                raise ValueError(f"theta must have shape {(n_states, n_actions)}, got {theta.shape}")
            self.set_params(theta.reshape(-1))

    @staticmethod
    def _validate_shape(shape):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"bad tabular policy shape {shape}")

    @staticmethod
    def _size(shape):
        return shape[0] * shape[1]

    def _init_from(self, shape, params):
        self.n_states, self.n_actions = shape
        self.params = params
        self.theta = params.reshape(shape)

    def _shape_args(self):
        return (self.n_states, self.n_actions)

    def check_obs(self, obs, name="obs"):
        """``obs`` as int64 (B,) states in ``[0, n_states)``."""
        return _validate.int_array(obs, name, ndim=1, low=0, high=self.n_states)

    def logits(self, obs):
        """Logits of the given states, shape (B, A) (a copy of rows of ``theta``; one state: (A,))."""
        if self._one(obs):
            return self.logits(np.asarray(obs)[None])[0]
        return self.theta[self.check_obs(obs)]

    def act(self, obs, rng):
        """Sample actions for a batch of states; int64 (B,).  The same actions and draws as
        ``sample_actions(self.logits(obs), rng)``; when the batch is large next to the table,
        each state's softmax is computed once (``sample_actions_at``) instead of once per row."""
        rng = _validate.as_generator(rng)
        if self._one(obs):
            return int(self.act(np.asarray(obs)[None], rng)[0])
        if (isinstance(obs, np.ndarray) and obs.ndim == 1
                and self.n_states <= max(64, 4 * obs.shape[0])):
            try:
                return active.policy.sample_actions_at(self.theta, obs, rng)
            except (TypeError, ValueError):
                self.check_obs(obs)  # name the argument as the user knows it
                raise
        return sample_actions(self.logits(obs), rng)

    def __repr__(self):
        return f"TabularSoftmaxPolicy(n_states={self.n_states}, n_actions={self.n_actions}, dtype={self.dtype})"


def _validate_features(features, policy):
    """``features`` as a finite (S >= 1, F) table in the policy's dtype, or ValueError/TypeError."""
    table = policy.check_obs(features, "features")
    if table.shape[0] < 1:
        raise ValueError("features must have at least one row (one per state)")
    return table


class LinearSoftmaxPolicy(_SoftmaxPolicy):
    """Softmax over linear logits: ``pi(a | phi) = softmax(phi @ W + b)``.

    Parameters
    ----------
    n_features, n_actions : int >= 1
    dtype : float32 or float64
    W : array (n_features, n_actions), optional;  b : array (n_actions,), optional
        Initial weights and bias (default zeros).

    Attributes
    ----------
    params : ndarray (n_features * n_actions + n_actions,)  flat parameters, ``W`` first, then ``b``
    W : ndarray (n_features, n_actions) and b : ndarray (n_actions,), views of ``params``
    """

    _kind = "LinearSoftmaxPolicy"

    _one_ndim = 1  # one observation: a feature vector (F,)

    def __init__(self, n_features, n_actions, dtype=np.float64, W=None, b=None):
        n_features = _validate.positive_int(n_features, "n_features")
        n_actions = _validate.positive_int(n_actions, "n_actions")
        _validate.check_table_size((n_features + 1) * n_actions,
                                   f"LinearSoftmaxPolicy(n_features={n_features}, n_actions={n_actions}) "
                                   f"would hold (n_features + 1) x n_actions parameters")
        dtype = _check_dtype(dtype)
        self._init_from((n_features, n_actions), np.zeros(self._size((n_features, n_actions)), dtype=dtype))
        if W is not None:
            W = np.asarray(W)
            if W.dtype.kind not in "biuf":
                raise TypeError(f"W must be a real array, got {_validate.got(W)}")
            if W.shape != self.W.shape:
                raise ValueError(f"W must have shape {self.W.shape}, got {W.shape}")
            if not np.all(np.isfinite(W)):
                raise ValueError("W must be finite")
            self.W[...] = W
        if b is not None:
            b = np.asarray(b)
            if b.dtype.kind not in "biuf":
                raise TypeError(f"b must be a real array, got {_validate.got(b)}")
            if b.shape != self.b.shape:
                raise ValueError(f"b must have shape {self.b.shape}, got {b.shape}")
            if not np.all(np.isfinite(b)):
                raise ValueError("b must be finite")
            self.b[...] = b

    @staticmethod
    def _validate_shape(shape):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"bad linear policy shape {shape}")

    @staticmethod
    def _size(shape):
        return shape[0] * shape[1] + shape[1]

    def _init_from(self, shape, params):
        self.n_features, self.n_actions = shape
        self.params = params
        n_w = self.n_features * self.n_actions
        self.W = params[:n_w].reshape(shape)
        self.b = params[n_w:]

    def _shape_args(self):
        return (self.n_features, self.n_actions)

    def check_obs(self, obs, name="obs"):
        """``obs`` as finite (B, F) features in the policy's dtype (C-contiguous)."""
        return _float_rows(obs, self.n_features, self.dtype, name)

    def logits(self, obs):
        """Logits ``obs @ W + b``, shape (B, A) (one feature vector: (A,))."""
        if self._one(obs):
            return self.logits(np.asarray(obs)[None])[0]
        return self.check_obs(obs) @ self.W + self.b

    def act(self, obs, rng, features=None):
        """Sample actions; int64 (B,).  ``obs``: features (B, F), or, with ``features`` (S, F)
        (the feature row of each state), int states (B,) in [0, S): then each state's logits and
        softmax are computed once (``sample_actions_at``), with the same draws as
        ``act(features[obs], rng)``."""
        rng = _validate.as_generator(rng)
        if features is None:
            if self._one(obs):
                return int(sample_actions(self.logits(np.asarray(obs)[None]), rng)[0])
            return sample_actions(self.logits(obs), rng)
        table = self.logits(_validate_features(features, self))
        try:
            return active.policy.sample_actions_at(table, obs, rng)
        except (TypeError, ValueError):
            _validate.int_array(obs, "obs", ndim=1, low=0, high=table.shape[0])
            raise

    def __repr__(self):
        return f"LinearSoftmaxPolicy(n_features={self.n_features}, n_actions={self.n_actions}, dtype={self.dtype})"


# activation names of MLPSoftmaxPolicy and their codes in its saved shape
_ACTIVATIONS = ("tanh", "relu")


class MLPSoftmaxPolicy(_SoftmaxPolicy):
    """Softmax over the logits of a small multilayer perceptron: ``pi(a | o) = softmax(f(o))``.

    ``f`` is ``Linear -> act -> ... -> Linear`` with the hidden widths ``hidden`` (``()``: a
    linear policy) and ``act`` = tanh or relu.  All parameters live in one flat vector
    ``params`` (the layout of :func:`metarl_fast.reference.mlp.mlp_layout`: per layer ``W``
    stored (in, out) row-major, then ``b``), so optimizers and meta-learners update it in place.
    Initialised as PyTorch's ``nn.Linear``: every weight and bias of a layer with fan-in ``n``
    uniform in ``[-1/sqrt(n), 1/sqrt(n)]``, drawn from ``rng`` layer by layer (``W`` then ``b``,
    :func:`metarl_fast.reference.mlp.mlp_init`).  Forward, sampling, gradients and exact
    Hessian-vector products are compiled kernels (``active.mlp``) with a NumPy twin.

    Parameters
    ----------
    obs_dim, n_actions : int >= 1
    hidden : tuple of int, default (64, 64)   widths of the hidden layers (each 1..1024)
    activation : {"tanh", "relu"}
    dtype : float32 or float64
    rng : int, Generator or None    the stream of the initial weights (None: fresh entropy)
    params : array (n_params,), optional   initial parameters instead of the random ones

    Attributes
    ----------
    params : ndarray (n_params,)   the flat parameters (updated in place by optimizers)
    layers : tuple of (W, b) views of ``params``, W (n_in, n_out)
    """

    _kind = "MLPSoftmaxPolicy"

    _one_ndim = 1  # one observation: a vector (obs_dim,)

    def __init__(self, obs_dim, n_actions, hidden=(64, 64), activation="tanh", dtype=np.float64,
                 rng=None, params=None):
        from metarl_fast.reference import mlp as mlp_spec

        obs_dim = _validate.positive_int(obs_dim, "obs_dim")
        n_actions = _validate.positive_int(n_actions, "n_actions")
        hidden = mlp_spec.check_hidden(hidden)
        activation = mlp_spec.check_activation(activation)
        dtype = _check_dtype(dtype)
        shape = (obs_dim, n_actions, _ACTIVATIONS.index(activation)) + hidden
        if params is None:
            rng = np.random.default_rng() if rng is None else _validate.as_generator(rng)
            values = mlp_spec.mlp_init(obs_dim, hidden, n_actions, rng, dtype)
        else:
            values = np.zeros(self._size(shape), dtype=dtype)
        self._init_from(shape, values)
        if params is not None:
            self.set_params(params)

    @staticmethod
    def _validate_shape(shape):
        from metarl_fast.reference import mlp as mlp_spec

        if len(shape) < 3 or shape[0] < 1 or shape[1] < 1 or not 0 <= shape[2] < len(_ACTIVATIONS):
            raise ValueError(f"bad MLP policy shape {shape}")
        mlp_spec.check_hidden(tuple(shape[3:]))

    @staticmethod
    def _size(shape):
        from metarl_fast.reference import mlp as mlp_spec

        return mlp_spec.mlp_layout(shape[0], tuple(shape[3:]), shape[1])[1]

    def _init_from(self, shape, params):
        from metarl_fast.reference import mlp as mlp_spec

        self.obs_dim, self.n_actions = shape[0], shape[1]
        self.activation = _ACTIVATIONS[shape[2]]
        self.hidden = tuple(int(h) for h in shape[3:])
        self.params = params
        specs, _ = mlp_spec.mlp_layout(self.obs_dim, self.hidden, self.n_actions)
        self.layers = tuple((params[w:b].reshape(n_in, n_out), params[b:b + n_out])
                            for w, b, n_in, n_out in specs)

    def _shape_args(self):
        return (self.obs_dim, self.n_actions, _ACTIVATIONS.index(self.activation)) + self.hidden

    def check_obs(self, obs, name="obs"):
        """``obs`` as finite (B, obs_dim) observations in the policy's dtype (C-contiguous)."""
        return _float_rows(obs, self.obs_dim, self.dtype, name)

    def logits(self, obs):
        """The network's logits, shape (B, A) (one observation: (A,)), in the policy's dtype."""
        if self._one(obs):
            return self.logits(np.asarray(obs)[None])[0]
        return active.mlp.mlp_logits(self.params, self.check_obs(obs), self.hidden, self.activation)

    def act(self, obs, rng):
        """Sample actions; int64 (B,) (one observation: an int).  Forward and sampling in one
        compiled call: the actions and draws of ``sample_actions(self.logits(obs), rng)``."""
        if type(obs) is np.ndarray and type(rng) is np.random.Generator and obs.dtype == self.params.dtype:
            # the agent-loop path: the kernel checks the rest (finiteness, layout) and names obs
            if obs.shape == (self.obs_dim,):
                return int(active.mlp.mlp_act(self.params, obs.reshape(1, self.obs_dim), self.hidden,
                                              self.activation, rng)[0])
            if obs.ndim == 2 and obs.shape[1] == self.obs_dim:
                return active.mlp.mlp_act(self.params, obs, self.hidden, self.activation, rng)
        rng = _validate.as_generator(rng)
        if self._one(obs):
            return int(self.act(np.asarray(obs)[None], rng)[0])
        return active.mlp.mlp_act(self.params, self.check_obs(obs), self.hidden, self.activation, rng)

    def __repr__(self):
        return (f"MLPSoftmaxPolicy(obs_dim={self.obs_dim}, n_actions={self.n_actions}, "
                f"hidden={self.hidden}, activation={self.activation!r}, dtype={self.dtype})")
