"""First-order optimizers that update a flat parameter array (``policy.params``) in place.

The update formulas are PyTorch's (``torch.optim.SGD`` with dampening 0 and ``torch.optim.Adam``,
bias correction included); like PyTorch they *minimise*: :meth:`step` moves along ``-grad``.
To ascend an objective ``J`` pass ``-dJ`` (or use :func:`metarl_fast.pg.policy_gradient_step`,
which does so inside one fused kernel).  The state (velocity / moments, step count) lives in
NumPy arrays of the parameters' dtype, round-trips through :meth:`state_dict` /
:meth:`load_state_dict`, and is saved atomically with :func:`save_checkpoint`.
"""
import numpy as np

from metarl_fast import _validate, io
from metarl_fast._backend import active
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference.pg import OPT_ADAM, OPT_SGD, adam_corrections

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "save_checkpoint",
    "load_checkpoint",
]

OPTIMIZER_FORMAT_VERSION = 1
CHECKPOINT_FORMAT_VERSION = 1
_CHECKPOINT_KIND = "PolicyOptimizerCheckpoint"


def _target_params(params):
    """The flat array to update: ``params`` itself, or ``params.params`` for a policy."""
    arr = getattr(params, "params", params)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"params must be a policy or a numpy.ndarray, got {type(params).__name__}")
    if arr.dtype not in _validate.FLOAT_DTYPES:
        raise TypeError(f"params must be float32 or float64, got {_validate.got(arr)}")
    if arr.ndim != 1 or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError("params must be a flat, C-contiguous, writeable array")
    return arr


class _Hyper:
    """A hyper-parameter kept in the optimizer's float64 ``_hyper`` array, which the fused kernel
    reads as is (so a step costs no array construction); validated on assignment."""

    def __init__(self, index, check, as_type=float):
        self.index, self.check, self.as_type = index, check, as_type

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return self.as_type(obj._hyper[self.index])

    def __set__(self, obj, value):
        obj._hyper[self.index] = self.check(value, self.name)


def _non_negative(value, name):
    return _validate.finite_float(value, name, low=0.0)


def _beta(value, name):
    return _validate.finite_float(value, name, low=0.0, high=1.0, high_open=True)


def _positive(value, name):
    return _validate.finite_float(value, name, low=0.0, low_open=True)


class Optimizer:
    """Base class.  ``params`` is the flat array updated in place; ``state`` is (2, P) of its dtype."""

    kind = None
    _hyper_names = ()

    def __init__(self, params):
        self.params = _target_params(params)
        self.state = np.zeros((2, self.params.shape[0]), dtype=self.params.dtype)
        self.steps = 0
        self._grad = np.empty_like(self.params)  # scratch gradient of the fused pg step
        self._hyper = np.zeros(len(self._hyper_names) + (1 if self.kind == "Adam" else 0))

    def zero_state(self):
        """Forget the accumulated state (velocity / moments and step count)."""
        self.state[...] = 0
        self.steps = 0

    def step(self, grad):
        """One update of ``params`` in place along ``-grad`` (grad: float (P,), finite)."""
        raise NotImplementedError

    # The fused kernels receive (kind, state, hyper) and advance ``steps`` only on success.
    def _fused_hyper(self):
        raise NotImplementedError

    def state_dict(self):
        """The optimizer's state and hyper-parameters as a dict of NumPy arrays (copies)."""
        d = {"kind": np.array(self.kind), "steps": np.array(self.steps, dtype=np.int64),
             "state": self.state.copy()}
        for name in self._hyper_names:
            d[name] = np.array(getattr(self, name), dtype=np.float64)
        return d

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict` (the hyper-parameters too); checks kind, shape and dtype.

        Nothing changes if the dict is rejected.
        """
        try:
            kind = str(state_dict["kind"])
            if kind != self.kind:
                raise ValueError(f"state_dict is for a {kind} optimizer, not {self.kind}")
            steps = io.integer(state_dict["steps"], "steps")
            state = np.asarray(state_dict["state"])
            hyper = {name: io.real(state_dict[name], name) for name in self._hyper_names}
        except KeyError as err:
            raise ValueError(f"state_dict is missing {err}") from err
        if state.shape != self.state.shape or state.dtype != self.state.dtype:
            raise ValueError(f"state_dict state has shape {state.shape} and dtype {state.dtype}, "
                             f"expected {self.state.shape} and {self.state.dtype}")
        if steps < 0 or not np.all(np.isfinite(state)):
            raise ValueError("state_dict holds a negative step count or non-finite state")
        probe = self.__class__.__new__(self.__class__)
        probe._hyper = self._hyper.copy()
        probe._set_hyper(**hyper)  # validates, leaves self unchanged on error
        self._set_hyper(**hyper)
        self.state[...] = state
        self.steps = steps

    def save(self, path):
        """Write :meth:`state_dict` atomically to ``path`` (.npz via :mod:`metarl_fast.io`)."""
        return io.save_npz(path, self.state_dict(), kind=self.kind, version=OPTIMIZER_FORMAT_VERSION)

    def load(self, path):
        """Restore the state saved by :meth:`save` into this optimizer (same params shape)."""
        arrays, _ = io.load_npz(path, kind=self.kind, versions={OPTIMIZER_FORMAT_VERSION})
        try:
            self.load_state_dict(arrays)
        except ValueError as err:
            raise io.CheckpointError(f"{path}: {err}") from err
        return self


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch's formula.

    Parameters
    ----------
    params : policy or float32/float64 flat ndarray, updated in place
    lr : float >= 0;  momentum : float >= 0;  nesterov : bool (needs momentum > 0)
    """

    kind = "SGD"
    _hyper_names = ("lr", "momentum", "nesterov")

    def __init__(self, params, lr, momentum=0.0, nesterov=False):
        super().__init__(params)
        self._set_hyper(lr, momentum, nesterov)

    lr = _Hyper(0, _non_negative)
    momentum = _Hyper(1, _non_negative)
    nesterov = _Hyper(2, lambda value, name: 1.0 if value else 0.0, bool)

    def _set_hyper(self, lr, momentum, nesterov):
        lr = _non_negative(lr, "lr")
        momentum = _non_negative(momentum, "momentum")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov momentum requires momentum > 0")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov

    def step(self, grad, grad_scale=1.0):
        """``params -= lr * step`` with ``step`` from ``grad_scale * grad`` (see the class doc)."""
        active.pg.sgd_update(self.params, grad, self.state[0], self.lr, self.momentum,
                             self.nesterov, grad_scale)
        self.steps += 1

    def _fused_hyper(self):
        return OPT_SGD, self._hyper

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov})"


class Adam(Optimizer):
    """Adam, step for step PyTorch's ``torch.optim.Adam`` (amsgrad off, no weight decay).

    At step ``t``: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``params -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Parameters
    ----------
    params : policy or float32/float64 flat ndarray, updated in place
    lr : float >= 0 (default 0.01, as the seed);  betas : (b1, b2) in [0, 1);  eps : float > 0
    """

    kind = "Adam"
    _hyper_names = ("lr", "beta1", "beta2", "eps")

    def __init__(self, params, lr=0.01, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError) as err:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from err
        self._set_hyper(lr, beta1, beta2, eps)

    lr = _Hyper(0, _non_negative)
    beta1 = _Hyper(1, _beta)
    beta2 = _Hyper(2, _beta)
    eps = _Hyper(3, _positive)

    def _set_hyper(self, lr, beta1, beta2, eps):
        values = (_non_negative(lr, "lr"), _beta(beta1, "beta1"), _beta(beta2, "beta2"),
                  _positive(eps, "eps"))
        self.lr, self.beta1, self.beta2, self.eps = values

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _corrections(self, t):
        return adam_corrections(self.lr, self.beta1, self.beta2, t)

    def step(self, grad, grad_scale=1.0):
        """One Adam step along ``-grad_scale * grad`` (see the class doc)."""
        step_size, bc2 = self._corrections(self.steps + 1)
        active.pg.adam_update(self.params, grad, self.state[0], self.state[1], step_size, bc2,
                              self.beta1, self.beta2, self.eps, grad_scale)
        self.steps += 1

    def _fused_hyper(self):
        # the kernel reads [lr, beta1, beta2, eps, t]; only the step number changes per call
        self._hyper[4] = self.steps + 1
        return OPT_ADAM, self._hyper

    def __repr__(self):
        return f"Adam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps})"


_OPTIMIZERS = {"SGD": SGD, "Adam": Adam}
_POLICIES = {"TabularSoftmaxPolicy": TabularSoftmaxPolicy, "LinearSoftmaxPolicy": LinearSoftmaxPolicy}


def save_checkpoint(path, policy, optimizer):
    """Save a policy and its optimizer together, atomically, in one ``.npz`` (no pickle)."""
    if type(policy).__name__ not in _POLICIES:
        raise TypeError(f"policy must be a softmax policy, got {type(policy).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an SGD or Adam, got {type(optimizer).__name__}")
    if optimizer.params is not policy.params:
        raise ValueError("optimizer does not update this policy's params")
    arrays = {"policy_kind": np.array(policy._kind), "policy_shape": np.asarray(policy._shape_args()),
              "policy_params": policy.params}
    arrays.update({f"opt_{k}": v for k, v in optimizer.state_dict().items()})
    return io.save_npz(path, arrays, kind=_CHECKPOINT_KIND, version=CHECKPOINT_FORMAT_VERSION)


def load_checkpoint(path):
    """Read a :func:`save_checkpoint` file; returns ``(policy, optimizer)`` (optimizer bound to it)."""
    arrays, _ = io.load_npz(path, kind=_CHECKPOINT_KIND, versions={CHECKPOINT_FORMAT_VERSION})
    try:
        cls = _POLICIES[str(arrays["policy_kind"])]
        shape = tuple(int(v) for v in arrays["policy_shape"])
        params = arrays["policy_params"]
        opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt_")}
        opt_cls = _OPTIMIZERS[str(opt_state["kind"])]
        policy = cls(*shape, dtype=params.dtype)
        policy.set_params(params)
        optimizer = opt_cls.__new__(opt_cls)
        Optimizer.__init__(optimizer, policy)
        optimizer._set_hyper(**{n: float(opt_state[n]) for n in opt_cls._hyper_names})
        optimizer.load_state_dict(opt_state)
    except (KeyError, ValueError, TypeError) as err:
        raise io.CheckpointError(f"{path}: inconsistent checkpoint ({err})") from err
    return policy, optimizer
