"""MLP softmax policies on tabular tasks: the exact (DP) and the sampled inner problems.

The mathematical check of issue 16: an :class:`~metarl_fast.policy.MLPSoftmaxPolicy` acting on a
tabular :class:`~metarl_fast.tasks.TaskBatch` through a feature table ``features`` (S, obs_dim)
(observation of state ``s`` = ``features[s]``; one-hot by default), so that the policy's logits
table per task is ``L_t = MLP_{theta_t}(features)`` (S, A) and the objective ``J_t(L_t)`` is
computed exactly by dynamic programming.  Both classes follow the inner-problem interface of
:mod:`metarl_fast.meta` (``n_tasks``, ``n_params``, ``sample``, ``grad``, ``hvp``, ``value``) and
take ``theta`` float64 (T, P), one parameter vector per task.

- :class:`ExactMLPProblem`: ``J``, ``dJ/dL`` and the logit-space Hessian-vector product by the DP
  of :class:`~metarl_fast.meta.ExactPolicyProblem` (a tabular softmax policy whose parameters are
  the logits table), then the chain rule through the network:
  ``grad = J_net^T g_L`` and
  ``hvp = J_net^T (H_L (J_net v)) + sum_{s,a} g_L[s, a] (d^2 L[s, a] / d theta^2) v``,
  the last term (the network's own curvature) by :func:`linear_functional_hvp`.
- :class:`SampledMLPProblem`: the sampled REINFORCE gradient (leave-one-out baseline) and the
  unbiased MAML Hessian-vector product of
  :class:`~metarl_fast.continuous_meta.ContinuousPolicyProblem` (whose ``grad`` and ``hvp`` it
  inherits), on episodes of the tabular fused rollout sampled with the MLP's logits tables.

NumPy and the active backend's MLP kernels; nothing here is compiled (a check, not a fast path).
"""
import time
import types

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.continuous_meta import _BASELINE_CODES, ContinuousPolicyProblem
from metarl_fast.meta import ExactPolicyProblem
from metarl_fast.policy import MLPSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference import mlp as _mlp_spec

__all__ = ["ExactMLPProblem", "SampledMLPProblem", "linear_functional_hvp"]


def _check_policy_and_tasks(policy, task_batch):
    from metarl_fast.tasks import TaskBatch

    if not isinstance(policy, MLPSoftmaxPolicy):
        raise TypeError(f"policy must be an MLPSoftmaxPolicy, got {type(policy).__name__}")
    if not isinstance(task_batch, TaskBatch):
        raise TypeError(f"task_batch must be a tabular TaskBatch (e.g. TabularMDPs(...).sample(n, rng)), "
                        f"got {type(task_batch).__name__}")
    if policy.n_actions != task_batch.n_actions:
        raise ValueError(f"the policy has {policy.n_actions} actions, the tasks {task_batch.n_actions}")


def _check_features(features, n_states, obs_dim):
    """The observation table, float64 (S, obs_dim) C-contiguous (default: one-hot, identity)."""
    if features is None:
        if obs_dim != n_states:
            raise ValueError(f"an MLP with obs_dim={obs_dim} needs a feature table (features=, shape "
                             f"({n_states}, {obs_dim})); one-hot needs obs_dim == n_states = {n_states}")
        return np.eye(n_states)
    table = np.asarray(features)
    if table.dtype.kind not in "fiu":
        raise TypeError(f"features must be a real array, got dtype {table.dtype}")
    table = np.ascontiguousarray(table, dtype=np.float64)
    if table.shape != (n_states, obs_dim) or not np.all(np.isfinite(table)):
        raise ValueError(f"features must be finite with shape ({n_states}, {obs_dim}), got {table.shape}")
    return table


def _check_theta(theta, n_tasks, n_params, name="theta"):
    arr = np.asarray(theta)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.shape != (n_tasks, n_params):
        raise ValueError(f"{name} must have shape {(n_tasks, n_params)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def linear_functional_hvp(params, obs, hidden, activation, dlogits, v):
    """Exact Hessian-vector product of ``f(params) = sum_{i,a} dlogits[i, a] logits_i(params)[a]``.

    The network's own curvature only: ``dlogits`` (B, A) is a constant, so Pearlmutter's
    R-backprop of :func:`metarl_fast.reference.mlp.mlp_hvp` runs with ``delta_{L-1} = dlogits``
    and ``R(delta_{L-1}) = 0``.  From the last layer down,
    ``R(dW_l) = a_l^T R(delta_l) + R(a_l)^T delta_l``, ``R(db_l) = sum_i R(delta_l)``,
    ``R(delta_{l-1}) = (R(delta_l) W_l^T + delta_l V_l^T) act'(z_{l-1})
    + (delta_l W_l^T) act''(z_{l-1}) R(z_{l-1})``.  Zero for a network without hidden layers.

    Parameters
    ----------
    params : real (P,)   the MLP's flat parameters (layout of ``mlp_layout``)
    obs : real (B, obs_dim);  hidden : tuple of int;  activation : "tanh" or "relu"
    dlogits : real (B, A)   the functional's weights;  v : real (P,)   the direction

    Returns
    -------
    float64 (P,)
    """
    hidden = _mlp_spec.check_hidden(hidden)
    activation = _mlp_spec.check_activation(activation)
    x = np.asarray(obs, dtype=np.float64)
    g = np.asarray(dlogits, dtype=np.float64)
    if x.ndim != 2 or g.ndim != 2 or g.shape[0] != x.shape[0]:
        raise ValueError(f"obs (B, obs_dim) and dlogits (B, A) must have the same rows, got "
                         f"{x.shape} and {g.shape}")
    layers, n_params = _mlp_spec.mlp_layout(x.shape[1], hidden, g.shape[1])
    p = np.asarray(params, dtype=np.float64)
    d = np.asarray(v, dtype=np.float64)
    if p.shape != (n_params,) or d.shape != (n_params,):
        raise ValueError(f"params and v must have shape ({n_params},), got {p.shape} and {d.shape}")

    def weights(flat, layer):
        w_off, b_off, n_in, n_out = layer
        return flat[w_off:b_off].reshape(n_in, n_out), flat[b_off:b_off + n_out]

    tanh = activation == "tanh"
    # forward and forward R-pass: a_l (a_0 = obs), R(a_l) (R(a_0) = 0) and R(z_l)
    acts, r_acts, r_zs = [x], [np.zeros_like(x)], []
    for index, layer in enumerate(layers):
        w, b = weights(p, layer)
        vw, vb = weights(d, layer)
        r_z = acts[index] @ vw + vb + r_acts[index] @ w
        r_zs.append(r_z)
        if index < len(layers) - 1:
            z = acts[index] @ w + b
            a = np.tanh(z) if tanh else np.maximum(z, 0.0)
            slope = 1.0 - a * a if tanh else (z > 0.0).astype(np.float64)
            acts.append(a)
            r_acts.append(slope * r_z)
    hv = np.zeros(n_params)
    delta, r_delta = g, np.zeros_like(g)
    for index in range(len(layers) - 1, -1, -1):
        w_off, b_off, _, n_out = layers[index]
        hv[w_off:b_off] = (acts[index].T @ r_delta + r_acts[index].T @ delta).reshape(-1)
        hv[b_off:b_off + n_out] = r_delta.sum(axis=0)
        if index:
            w, _ = weights(p, layers[index])
            vw, _ = weights(d, layers[index])
            a = acts[index]
            slope = 1.0 - a * a if tanh else (a > 0.0).astype(np.float64)
            curve = -2.0 * a * slope if tanh else np.zeros_like(a)  # act''(z) from a = act(z)
            d_a = delta @ w.T
            r_delta = (r_delta @ w.T + delta @ vw.T) * slope + d_a * curve * r_zs[index - 1]
            delta = d_a * slope
    return hv


class ExactMLPProblem:
    """The policy-gradient inner problem of an MLP policy on tabular tasks, exact by DP.

    Parameters
    ----------
    policy : MLPSoftmaxPolicy   its shape (obs_dim, n_actions, hidden, activation); its parameters
        are not read (``theta`` arguments are)
    task_batch : TaskBatch      the tasks' models (``P`` or ``next_state``, mean ``R``, ``start``,
        ``terminal``, horizon), as :class:`~metarl_fast.meta.ExactPolicyProblem` reads them
    gamma : float in [0, 1]
    features : real (S, obs_dim), optional   the observation of each state (default one-hot:
        the identity, which needs ``obs_dim == S``)

    ``value`` is each task's exact ``J_t = E[sum_t gamma^t r_t]``; ``grad`` and ``hvp`` its exact
    gradient and Hessian-vector product (float64 (T, P)); ``sample`` returns None.
    """

    def __init__(self, policy, task_batch, gamma=1.0, features=None):
        _check_policy_and_tasks(policy, task_batch)
        self.policy, self.tasks = policy, task_batch
        self.hidden, self.activation = policy.hidden, policy.activation
        self.n_states, self.n_actions = task_batch.n_states, task_batch.n_actions
        self.features = _check_features(features, self.n_states, policy.obs_dim)
        self.n_tasks, self.n_params = task_batch.n_tasks, policy.n_params
        # the DP in logit space: a tabular softmax policy whose parameters are the logits table
        self.table = ExactPolicyProblem(TabularSoftmaxPolicy(self.n_states, self.n_actions), task_batch, gamma)
        self.gamma = self.table.gamma

    def logits(self, theta):
        """Each task's logits table ``MLP_{theta_t}(features)``, float64 (T, S, A)."""
        theta = _check_theta(theta, self.n_tasks, self.n_params)
        return np.stack([active.mlp.mlp_logits(theta[t], self.features, self.hidden, self.activation)
                         for t in range(self.n_tasks)])

    def _flat(self, table):
        return table.reshape(self.n_tasks, self.n_states * self.n_actions)

    def _table(self, flat):
        return flat.reshape(self.n_tasks, self.n_states, self.n_actions)

    def sample(self, theta, rng):
        return None

    def value(self, theta, data=None):
        """Exact ``J_t``, float64 (T,)."""
        return self.table.value(self._flat(self.logits(theta)))

    def grad(self, theta, data=None):
        """``J_net^T dJ/dL`` per task, float64 (T, P)."""
        theta = _check_theta(theta, self.n_tasks, self.n_params)
        g_logits = self._table(self.table.grad(self._flat(self.logits(theta))))
        return np.stack([active.mlp.mlp_grad(theta[t], self.features, self.hidden, self.activation,
                                             g_logits[t]) for t in range(self.n_tasks)])

    def hvp(self, theta, data, v):
        """``nabla^2 J_t v_t`` per task, float64 (T, P): the logit-space Hessian through the
        network's Jacobian plus the network's curvature weighted by ``dJ/dL``."""
        theta = _check_theta(theta, self.n_tasks, self.n_params)
        v = _check_theta(v, self.n_tasks, self.n_params, "v")
        logits = self._flat(self.logits(theta))
        g_logits = self._table(self.table.grad(logits))
        dl = np.stack([active.mlp.mlp_jvp(theta[t], self.features, self.hidden, self.activation, v[t])
                       for t in range(self.n_tasks)])
        h_logits = self._table(self.table.hvp(logits, None, self._flat(dl)))
        out = np.empty((self.n_tasks, self.n_params))
        for t in range(self.n_tasks):
            out[t] = (active.mlp.mlp_grad(theta[t], self.features, self.hidden, self.activation, h_logits[t])
                      + linear_functional_hvp(theta[t], self.features, self.hidden, self.activation,
                                              g_logits[t], v[t]))
        return out


class SampledMLPProblem(ContinuousPolicyProblem):
    """Sampled policy-gradient problem of an MLP policy on a batch of tabular tasks.

    Episodes come from the tabular fused rollout (``active.envs.rollout``), each task sampling its
    actions from its own logits table ``MLP_{theta_t}(features)`` (S, A); the per-step
    coefficients are ``active.meta.pg_prepare``'s (REINFORCE, discounted return-to-go, a
    per-time-step baseline: leave-one-out by default, unbiased for N >= 1).  ``grad`` and ``hvp``
    are :class:`~metarl_fast.continuous_meta.ContinuousPolicyProblem`'s on the observations
    ``features[s_t]``: the MLP's REINFORCE gradient, and the surrogate's exact Hessian (network
    curvature included) plus the leave-one-out score-function term.

    Parameters
    ----------
    policy : MLPSoftmaxPolicy;  task_batch : TaskBatch
    n_episodes : int >= 1   episodes per task per estimate
    gamma : float in [0, 1]
    features : real (S, obs_dim), optional   (default one-hot)
    baseline : {"leave-one-out", "mean", "none"}

    ``value`` is the mean undiscounted episode return per task in the data.
    """

    def __init__(self, policy, task_batch, n_episodes, gamma=1.0, features=None, baseline="leave-one-out"):
        _check_policy_and_tasks(policy, task_batch)
        if baseline not in _BASELINE_CODES:
            raise ValueError(f"baseline must be one of {tuple(_BASELINE_CODES)}, got {baseline!r}")
        self.policy, self.tasks = policy, task_batch
        self.hidden, self.activation = policy.hidden, policy.activation
        self.n_states, self.n_actions = task_batch.n_states, task_batch.n_actions
        self.features = _check_features(features, self.n_states, policy.obs_dim)
        self.n_tasks, self.n_params = task_batch.n_tasks, policy.n_params
        self.n_episodes = _validate.positive_int(n_episodes, "n_episodes")
        self.rollout_steps = self.n_tasks * self.n_episodes * max(task_batch.horizon, 1)
        _validate.check_table_size(self.rollout_steps,
                                   f"n_episodes={self.n_episodes:,}: a rollout of n_tasks x n_episodes "
                                   f"x horizon = {self.n_tasks} x {self.n_episodes:,} x "
                                   f"{task_batch.horizon} steps")
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        self.baseline = baseline
        self.normalize_returns = False
        self.env_steps = 0
        self.sampling_time = 0.0
        self._policy_of_task = np.arange(self.n_tasks, dtype=np.int64)  # task i runs policy i

    def sample(self, theta, rng):
        """Episodes of every task under its own parameters (one fused tabular rollout) and the
        per-step quantities ``grad`` and ``hvp`` share: a dict with ``traj`` (its ``obs`` the
        float64 observations ``features[s]`` (n, obs_dim), ``state`` the int64 states),
        ``coef``, ``episode``, ``bounds``."""
        from metarl_fast.rollout import Trajectories, action_tables

        rng = _validate.as_generator(rng)
        theta = _check_theta(theta, self.n_tasks, self.n_params)
        start = time.perf_counter()
        logits = np.stack([active.mlp.mlp_logits(theta[t], self.features, self.hidden, self.activation)
                           for t in range(self.n_tasks)])
        cdf, logp = action_tables(logits)
        traj = Trajectories(*active.envs.rollout(self.tasks.tables, cdf, logp, self._policy_of_task,
                                                  self.n_episodes, rng))
        self.env_steps += traj.n_steps
        self.sampling_time += time.perf_counter() - start
        key = traj.task_id * self.n_states + traj.obs
        episode, steps = active.envs.episode_steps(traj.episode_length)
        coef = np.empty(traj.n_steps)
        active.meta.pg_prepare(key, np.ascontiguousarray(traj.reward, dtype=np.float64), traj.done, steps,
                               traj.task_id, self.n_tasks, self.gamma, self.n_episodes,
                               _BASELINE_CODES[self.baseline], coef)
        # the steps of task t are rows bounds[t]:bounds[t + 1] (tasks are contiguous, in order)
        bounds = np.zeros(self.n_tasks + 1, dtype=np.int64)
        np.cumsum(traj.episode_length.sum(axis=1), out=bounds[1:])
        view = types.SimpleNamespace(obs=self.features[traj.obs], state=traj.obs, action=traj.action,
                                     episode_return=traj.episode_return, n_steps=traj.n_steps)
        return {"traj": view, "coef": coef, "episode": episode, "bounds": bounds}
