"""The policy-gradient inner problem of MLP policies on continuous-observation tasks.

:class:`ContinuousPolicyProblem` is what :class:`metarl_fast.meta.MetaLearner` (MAML, FOMAML,
Reptile, multi-task) adapts on when its policy is a :class:`~metarl_fast.policy.MLPSoftmaxPolicy`
and its tasks a :class:`~metarl_fast.continuous_tasks.PointNavigationBatch` or
:class:`~metarl_fast.continuous_tasks.CartPolesBatch`: the same estimator as the tabular
:class:`~metarl_fast.meta.SampledPolicyProblem`, through the network's kernels (``active.mlp``)
instead of a table of logits.

- ``sample``: every task's episodes under its own parameters, one fused compiled rollout
  (:func:`metarl_fast.continuous_rollout.rollout_mlp`).
- ``grad``: REINFORCE with a per-time-step baseline,
  ``1/N sum_episodes sum_t gamma^t (G_t - b_t) grad log pi(a_t | o_t)`` (the per-step
  coefficients of ``active.meta.pg_prepare``, as for tabular tasks; leave-one-out baseline by
  default, unbiased for every N >= 1).
- ``hvp``: ``(d E[g] / d theta)^T v`` per task, the unbiased second-order term of MAML (as the
  DiCE / ProMP estimators): the exact Hessian-vector product of the REINFORCE surrogate
  ``sum_t c_t log pi(a_t | o_t)`` *including the network's own curvature* (Pearlmutter's
  R-backprop, ``active.mlp.mlp_hvp``) plus the score-function term
  ``sum_episodes kappa_e sum_t grad log pi(a_t | o_t)`` with
  ``kappa_e = N sum_{t in e} c_t (J_t v)[a_t] - p_t . (J_t v)`` minus its leave-one-out mean
  over the task's other episodes (the same weights as ``active.meta.hvp_table`` for tables).
"""
import time

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active

_BASELINE_CODES = {"none": 0, "leave-one-out": 1, "mean": 2}  # pg_prepare's codes


def is_continuous_batch(task_batch):
    """True for the batches of the continuous-observation families."""
    from metarl_fast.continuous_tasks import CartPolesBatch, PointNavigationBatch

    return isinstance(task_batch, (PointNavigationBatch, CartPolesBatch))


class ContinuousPolicyProblem:
    """Sampled policy-gradient problem of an MLP policy on a batch of continuous tasks.

    Parameters
    ----------
    policy : MLPSoftmaxPolicy   (its shape: obs_dim, n_actions, hidden, activation)
    task_batch : PointNavigationBatch or CartPolesBatch
    n_episodes : int >= 1      episodes per task per estimate
    gamma : float in [0, 1]
    baseline : {"leave-one-out", "mean", "none"}   see :class:`metarl_fast.meta.SampledPolicyProblem`
    normalize_returns : bool   divide each task's rewards by the std of its episodes' returns

    ``theta`` arguments are float64 (T, P): one parameter vector per task.
    """

    def __init__(self, policy, task_batch, n_episodes, gamma=1.0, baseline="leave-one-out",
                 normalize_returns=False):
        from metarl_fast.policy import MLPSoftmaxPolicy

        if not isinstance(policy, MLPSoftmaxPolicy):
            raise TypeError(f"policy must be an MLPSoftmaxPolicy, got {type(policy).__name__}")
        if not is_continuous_batch(task_batch):
            raise TypeError("task_batch must be a PointNavigation or CartPoles batch, got "
                            f"{type(task_batch).__name__}")
        if policy.obs_dim != task_batch.obs_dim or policy.n_actions != task_batch.n_actions:
            raise ValueError(f"the policy takes {policy.obs_dim} observations and {policy.n_actions} "
                             f"actions, the tasks {task_batch.obs_dim} and {task_batch.n_actions}")
        if baseline not in _BASELINE_CODES:
            raise ValueError(f"baseline must be one of {tuple(_BASELINE_CODES)}, got {baseline!r}")
        if not isinstance(normalize_returns, (bool, np.bool_)):
            raise TypeError(f"normalize_returns must be a bool, got {type(normalize_returns).__name__}")
        self.policy, self.tasks = policy, task_batch
        self.hidden, self.activation = policy.hidden, policy.activation
        self.n_tasks, self.n_params = task_batch.n_tasks, policy.n_params
        self.n_episodes = _validate.positive_int(n_episodes, "n_episodes")
        self.rollout_steps = self.n_tasks * self.n_episodes * task_batch.horizon
        _validate.check_table_size(self.rollout_steps,
                                   f"n_episodes={self.n_episodes:,}: a rollout of n_tasks x n_episodes "
                                   f"x horizon = {self.n_tasks} x {self.n_episodes:,} x "
                                   f"{task_batch.horizon} steps")
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        self.baseline = baseline
        self.normalize_returns = bool(normalize_returns)
        self.env_steps = 0
        self.sampling_time = 0.0

    def sample(self, theta, rng):
        """Episodes of every task under its own parameters (one compiled rollout) and the
        per-step quantities ``grad`` and ``hvp`` share."""
        from metarl_fast.continuous_rollout import rollout_mlp
        from metarl_fast.meta import return_scales

        rng = _validate.as_generator(rng)
        start = time.perf_counter()
        traj = rollout_mlp(self.tasks, np.ascontiguousarray(theta, dtype=np.float64), self.n_episodes,
                           rng, hidden=self.hidden, activation=self.activation)
        self.env_steps += traj.n_steps
        self.sampling_time += time.perf_counter() - start
        rewards = np.ascontiguousarray(traj.reward, dtype=np.float64)
        if self.normalize_returns:
            rewards = rewards * return_scales(traj.episode_return)[traj.task_id]
        episode, steps = active.envs.episode_steps(traj.episode_length)
        coef = np.empty(traj.n_steps)
        done = traj.terminated | traj.truncated
        active.meta.pg_prepare(traj.task_id, rewards, done, steps, traj.task_id, self.n_tasks,
                               self.gamma, self.n_episodes, _BASELINE_CODES[self.baseline], coef)
        # the steps of task t are rows bounds[t]:bounds[t + 1] (tasks are contiguous, in order)
        bounds = np.zeros(self.n_tasks + 1, dtype=np.int64)
        np.cumsum(traj.episode_length.sum(axis=1), out=bounds[1:])
        return {"traj": traj, "coef": coef, "episode": episode, "bounds": bounds}

    def _rows(self, data, t):
        b = data["bounds"]
        return slice(int(b[t]), int(b[t + 1]))

    def grad(self, theta, data):
        """REINFORCE gradient per task, float64 (T, P)."""
        traj, coef = data["traj"], data["coef"]
        out = np.empty((self.n_tasks, self.n_params))
        for t in range(self.n_tasks):
            rows = self._rows(data, t)
            active.mlp.mlp_policy_gradient(theta[t], traj.obs[rows], self.hidden, self.activation,
                                           traj.action[rows], coef[rows], out=out[t])
        return out

    def hvp(self, theta, data, v):
        """``(d E[g]/d theta)^T v`` per task, float64 (T, P): the surrogate's exact Hessian
        (network curvature included) plus the score-function term."""
        traj, coef, episode = data["traj"], data["coef"], data["episode"]
        N = self.n_episodes
        out = np.empty((self.n_tasks, self.n_params))
        v = np.ascontiguousarray(v, dtype=np.float64)
        for t in range(self.n_tasks):
            rows = self._rows(data, t)
            obs, actions, c = traj.obs[rows], traj.action[rows], coef[rows]
            logits = active.mlp.mlp_logits(theta[t], obs, self.hidden, self.activation)
            dl = active.mlp.mlp_jvp(theta[t], obs, self.hidden, self.activation, v[t])
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            dlogp = dl[np.arange(actions.shape[0]), actions] - (p * dl).sum(axis=1)
            local = episode[rows] - t * N
            fv = np.bincount(local, weights=N * c * dlogp, minlength=N)
            kappa = fv - (fv.sum() - fv) / (N - 1) if N > 1 else fv
            score = active.mlp.mlp_policy_gradient(theta[t], obs, self.hidden, self.activation,
                                                   actions, np.ascontiguousarray(kappa[local] / N))
            curvature = active.mlp.mlp_hvp(theta[t], obs, self.hidden, self.activation, actions, c, v[t])
            out[t] = score + curvature
        return out

    def value(self, theta, data):
        """Mean undiscounted episode return per task in ``data``, (T,)."""
        return data["traj"].episode_return.mean(axis=1)
