"""Gradient-based meta-learners: Reptile, first-order MAML and MAML with the exact second-order term.

Everything works on a *batch of inner problems* (one per task of a meta-batch) whose parameters are
stacked in a ``(T, P)`` array.  An inner problem gives, for parameters ``theta`` (T, P):

- ``sample(theta, rng)``: fresh data (episodes) for each task, or ``None`` when exact;
- ``grad(theta, data)``: an (ascent) estimate ``g`` of ``dJ_t/dtheta_t`` for each task, (T, P);
- ``hvp(theta, data, v)``: ``(d E[g] / d theta)^T v`` per task, (T, P): the Hessian-vector product
  of the objective *including* the score-function term of the sampling distribution, so that MAML's
  meta-gradient is unbiased (as the DiCE / ProMP estimators), never a materialised Hessian.

With ``K`` inner steps ``theta_{k+1} = theta_k + alpha * g(theta_k)`` (alpha a scalar or, as in
Meta-SGD, one step size per parameter) the meta-gradient of ``J(theta_K)`` is obtained by the
backward recursion ``v_K = g(theta_K)`` on fresh data, ``v_k = v_{k+1} + H_k^T (alpha * v_{k+1})``:
``(I + alpha H)^T`` chained through every inner step (O(P + batch * A) memory, whatever K).
FOMAML stops at ``v_K``; Reptile uses ``theta_K - theta_0`` (Nichol et al., 2018).

What the sampled MAML meta-gradient estimates: by default (``hessian_data="fresh"``) each
``H_k^T`` is estimated on its own fresh episodes at ``theta_k``, independent of the episodes that
took the inner step, so that given the inner path ``theta_0 .. theta_K`` the expectation of the
estimate is exactly ``prod_k (I + alpha nabla^2 J(theta_k))^T nabla J(theta_K)`` (independent
batches for the step, the Hessian and the outer gradient, as in Fallah et al., 2020).  With
``hessian_data="shared"`` the HVP reuses the inner step's episodes (no extra sampling, as the
LVC / ProMP implementations do): the Hessian estimate is then correlated with the step it
differentiates, a bias of order ``alpha^2 / N``.

Problems provided here:

- :class:`SampledPolicyProblem`: tabular tasks (``metarl_fast.tasks``), episodes from the fused
  ``rollout``, REINFORCE with discounted return-to-go and a leave-one-out per-time-step baseline
  (unbiased for every number of episodes N >= 1); the HVP uses the closed-form Hessian of the
  softmax ``-(diag pi - pi pi^T)`` per visited state plus the score-function term, with a
  leave-one-out control variate (unbiased for ``nabla^2 J v``, N >= 1);
- :class:`ExactPolicyProblem`: the same objective computed by dynamic programming on each task's
  model: zero-variance gradients, and Hessian-vector products by complex-step differentiation of
  the DP gradient (exact to rounding: ``Im(g(theta + i h v)) / h`` has no cancellation);
- :class:`QuadraticProblem`: quadratic objectives with exact Hessians (verification).

Both policy problems work for :class:`TabularSoftmaxPolicy` and :class:`LinearSoftmaxPolicy` (the
latter over a feature table ``phi[s]``): all that differs is the linear map from parameters to the
per-state logits table, applied forwards (``jvp``) and backwards (``vjp``).
"""
import time

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.optim import SGD, Adam
from metarl_fast.pg import discounted_returns
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy, log_softmax, softmax

METHODS = ("reptile", "fomaml", "maml", "multitask")
ADVANTAGES = ("reinforce", "actor-critic")
BASELINES = ("leave-one-out", "mean", "none")
_BASELINE_CODES = {"none": 0, "leave-one-out": 1, "mean": 2}  # pg_prepare's codes
HESSIAN_DATA = ("fresh", "shared")


# ---------------------------------------------------------------------------------------------
# Parameters -> per-state logits table, for a batch of T parameter vectors
# ---------------------------------------------------------------------------------------------

class TabularMap:
    """``logits[t] = params[t].reshape(S, A)``."""

    def __init__(self, n_states, n_actions):
        self.n_states, self.n_actions = n_states, n_actions
        self.n_params = n_states * n_actions

    def jvp(self, params):
        """(T, P) -> logits tables (T, S, A); linear, so it is also the directional derivative."""
        return params.reshape(params.shape[0], self.n_states, self.n_actions)

    def vjp(self, grad_logits):
        """(T, S, A) gradients w.r.t. the logits table -> (T, P) w.r.t. the parameters."""
        return grad_logits.reshape(grad_logits.shape[0], -1)


class LinearMap:
    """``logits[t] = phi @ W[t] + b[t]`` with a feature table ``phi`` (S, F)."""

    def __init__(self, features, n_actions):
        self.features = np.ascontiguousarray(features, dtype=np.float64)
        self.n_states, self.n_features = self.features.shape
        self.n_actions = n_actions
        self.n_params = self.n_features * n_actions + n_actions

    def _split(self, params):
        T, FA = params.shape[0], self.n_features * self.n_actions
        return params[:, :FA].reshape(T, self.n_features, self.n_actions), params[:, FA:]

    def jvp(self, params):
        W, b = self._split(params)
        return np.einsum("sf,tfa->tsa", self.features, W) + b[:, None, :]

    def vjp(self, grad_logits):
        T = grad_logits.shape[0]
        gW = np.einsum("sf,tsa->tfa", self.features, grad_logits)
        return np.concatenate([gW.reshape(T, -1), grad_logits.sum(axis=1)], axis=1)


def param_map(policy, n_states, features=None):
    """The parameters -> logits-table map of ``policy`` on tasks with ``n_states`` states."""
    if isinstance(policy, TabularSoftmaxPolicy):
        if policy.n_states != n_states:
            raise ValueError(f"the policy has {policy.n_states} states, the tasks {n_states}")
        return TabularMap(n_states, policy.n_actions)
    if isinstance(policy, LinearSoftmaxPolicy):
        if features is None:
            if policy.n_features != n_states:
                raise ValueError(
                    f"a LinearSoftmaxPolicy with {policy.n_features} features needs a feature table "
                    f"(features=, shape ({n_states}, {policy.n_features})); one-hot needs n_features == n_states")
            features = np.eye(n_states)
        features = np.asarray(features, dtype=np.float64)
        if features.shape != (n_states, policy.n_features) or not np.all(np.isfinite(features)):
            raise ValueError(f"features must be finite with shape ({n_states}, {policy.n_features}), "
                             f"got {features.shape}")
        return LinearMap(features, policy.n_actions)
    raise TypeError(f"policy must be a TabularSoftmaxPolicy or LinearSoftmaxPolicy, got {type(policy).__name__}")


# ---------------------------------------------------------------------------------------------
# Inner problems
# ---------------------------------------------------------------------------------------------

class QuadraticProblem:
    """``J_t(theta) = -1/2 (theta - c_t)^T A_t (theta - c_t)`` for T tasks (maximised).

    Optionally each task has ``M`` minibatch objectives (``hessians`` (T, M, P, P), ``centers``
    (T, M, P)); ``sample`` then draws one minibatch index per task with ``rng.integers``.
    """

    def __init__(self, hessians, centers):
        self.hessians = np.asarray(hessians, dtype=np.float64)
        self.centers = np.asarray(centers, dtype=np.float64)
        if self.hessians.ndim == 3:
            self.hessians, self.centers = self.hessians[:, None], self.centers[:, None]
        T, M, P = self.centers.shape
        if self.hessians.shape != (T, M, P, P):
            raise ValueError(f"hessians must have shape {(T, M, P, P)}, got {self.hessians.shape}")
        self.n_tasks, self.n_minibatches, self.n_params = T, M, P

    def sample(self, theta, rng):
        return rng.integers(0, self.n_minibatches, size=self.n_tasks)

    def grad(self, theta, data):
        idx = np.arange(self.n_tasks)
        A, c = self.hessians[idx, data], self.centers[idx, data]
        return -np.einsum("tpq,tq->tp", A, theta - c)

    def hvp(self, theta, data, v):
        A = self.hessians[np.arange(self.n_tasks), data]
        return -np.einsum("tpq,tq->tp", A, v)

    def value(self, theta, data=None):
        """Mean objective over the minibatches, per task, (T,)."""
        d = theta[:, None, :] - self.centers
        return -0.5 * np.einsum("tmp,tmpq,tmq->tm", d, self.hessians, d).mean(axis=1)


class SampledPolicyProblem:
    """Policy-gradient inner problem on a batch of tabular tasks, from sampled episodes.

    ``J_t(theta) = E[sum_t gamma^t r_t]``.  The gradient estimate is REINFORCE:
    ``1/N sum_episodes sum_t gamma^t (G_t - b_t) grad log pi(a_t | s_t)`` with the discounted
    return-to-go ``G_t`` and a per-time-step baseline ``b_t`` (``baseline``):

    - ``"leave-one-out"`` (default): the mean of ``G_t`` over the task's *other* episodes that
      reached step ``t`` (none: no baseline).  It does not depend on the episode it is applied to,
      so ``grad`` is unbiased for ``dJ/dtheta`` and ``hvp`` for ``nabla^2 J v`` for every N >= 1
      (at N = 1 it is plain REINFORCE).
    - ``"mean"``: the mean over all N episodes, the episode's own return included: the expectation
      is ``(1 - 1/N)`` times the gradient (when every episode reaches every step; exactly zero at
      N = 1).  Kept for comparison only.
    - ``"none"``: ``b_t = 0`` (unbiased, higher variance).

    Episodes come from :func:`metarl_fast.rollout.rollout` (one call for all tasks).

    ``normalize_returns``: each task's rewards are divided by the standard deviation of its
    episodes' returns in the batch (left as they are when that is 0), a per-task scale of the
    gradient treated as a constant, as in most policy-gradient code: the inner step becomes
    insensitive to the scale of the rewards (a step of ``inner_lr`` in standardised units), at
    the price of unbiasedness (the scale is estimated from the same episodes).  ``value`` still
    reports the true returns.
    """

    def __init__(self, policy, task_batch, n_episodes, gamma=1.0, features=None, advantage="reinforce",
                 baseline="leave-one-out", pool=None, normalize_returns=False, workspaces=None):
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.advantage, self.baseline = advantage, baseline
        self.policy, self.tasks = policy, task_batch
        self.n_tasks = task_batch.n_tasks
        if policy.n_actions != task_batch.n_actions:
            raise ValueError(f"the policy has {policy.n_actions} actions, the tasks {task_batch.n_actions}")
        self.map = param_map(policy, task_batch.n_states, features)
        self.features = None if isinstance(self.map, TabularMap) else self.map.features
        self.n_params = self.map.n_params
        self.n_episodes = _validate.positive_int(n_episodes, "n_episodes")
        # one rollout holds n_tasks x n_episodes x horizon steps: refused before it is allocated
        self.rollout_steps = self.n_tasks * self.n_episodes * max(task_batch.horizon, 1)
        _validate.check_table_size(self.rollout_steps,
                                   f"n_episodes={self.n_episodes:,}: a rollout of n_tasks x n_episodes "
                                   f"x horizon = {self.n_tasks} x {self.n_episodes:,} x "
                                   f"{task_batch.horizon} steps")
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        self._policy_of_task = np.arange(self.n_tasks, dtype=np.int64)  # task i runs policy i
        self.env_steps = 0  # environment steps sampled so far
        self.sampling_time = 0.0  # seconds spent in the rollouts
        # replay (metarl_fast.pool): every rollout is stored; each gradient estimate adds the
        # task's stored episodes by per-decision importance sampling
        self.pool = pool
        self.pool_ids = None if pool is None else pool.task_ids(task_batch)
        if pool is not None:
            _check_replay_estimator(pool.config, advantage)
        if not isinstance(normalize_returns, (bool, np.bool_)):
            raise TypeError(f"normalize_returns must be a bool, got {type(normalize_returns).__name__}")
        if normalize_returns and pool is not None:
            raise ValueError("normalize_returns does not combine with replay (stored episodes keep "
                             "their raw rewards)")
        self.normalize_returns = bool(normalize_returns)
        # a RolloutWorkspaces: each rollout writes into the next of its reused output arrays (the
        # data of a sample() is valid until that workspace comes round again)
        self.workspaces = workspaces

    def sample(self, theta, rng):
        """Episodes of every task under its own parameters, in one fused rollout call (``rng``: a
        Generator, an int seed or a SeedSequence)."""
        from metarl_fast.rollout import Trajectories, action_tables

        rng = _validate.as_generator(rng)

        start = time.perf_counter()
        logits = self.map.jvp(np.asarray(theta, dtype=np.float64))        # (T, S, A)
        cdf, logp = action_tables(logits)
        if self.workspaces is None:
            traj = Trajectories(*active.envs.rollout(self.tasks.tables, cdf, logp, self._policy_of_task,
                                                      self.n_episodes, rng))
        else:
            out, starts = self.workspaces.next(self.n_tasks, self.n_episodes, self.tasks.horizon)
            traj = Trajectories._with_offsets(active.envs.rollout(
                self.tasks.tables, cdf, logp, self._policy_of_task, self.n_episodes, rng, out=out), starts)
        self.env_steps += traj.n_steps
        self.sampling_time += time.perf_counter() - start
        data = self._prepare(logits, traj)
        if self.pool is not None:
            windows = self.pool.config.order == "windows"
            replayed = (self.pool.replay_windows if windows else self.pool.replay)(
                self.pool_ids, rng)  # stored before this rollout
            self.pool.store(traj, self.pool_ids)
            if replayed is not None:
                data["replay"] = (self._window_terms(logits, data, replayed) if windows
                                  else self._replay_terms(logits, data, replayed))
        return data

    def _prepare(self, logits, traj):
        """Per-step quantities shared by ``grad`` and ``hvp`` (computed once per batch)."""
        S, A = self.map.n_states, self.map.n_actions
        probs_table = softmax(np.ascontiguousarray(logits.reshape(-1, A)))  # (T * S, A)
        key = traj.task_id * S + traj.obs
        coef = np.empty(traj.n_steps)
        rewards = np.ascontiguousarray(traj.reward, dtype=np.float64)
        if self.normalize_returns:
            rewards = rewards * return_scales(traj.episode_return)[traj.task_id]
        episode, steps = active.envs.episode_steps(traj.episode_length)
        active.meta.pg_prepare(key, rewards, traj.done, steps, traj.task_id, self.n_tasks,
                               self.gamma, self.n_episodes, _BASELINE_CODES[self.baseline], coef)
        data = {"traj": traj, "key": key, "probs_table": probs_table, "coef": coef,
                "episode": episode, "steps": steps}
        if self.advantage == "actor-critic":
            data["values"] = self._critic_values(traj, key, rewards)
            data["coef"] = self._actor_critic_coef(traj, key, rewards, steps, data["values"])
        return data

    def _replay_terms(self, logits, data, replayed):
        fresh = None if self.baseline == "none" else (data["traj"], data["steps"])
        return replay_coefficients(logits, replayed, self.n_tasks, self.gamma, self.pool,
                                   self.n_episodes, fresh, data["traj"].task_id)

    def _window_terms(self, logits, data, windows):
        return window_coefficients(logits, windows, self.n_tasks, self.gamma, self.pool,
                                   data["values"], self.n_episodes, data["traj"].task_id)

    def _critic_values(self, traj, key, rewards):
        """The tabular critic per task fitted to this batch, float64 (T * S,): V(s) = the mean
        discounted return-to-go observed from s (0 for a state the batch never visited)."""
        size = self.n_tasks * self.map.n_states
        returns = discounted_returns(rewards, traj.done, self.gamma)
        counts = np.bincount(key, minlength=size)
        return np.bincount(key, weights=returns, minlength=size) / np.maximum(counts, 1)

    def _actor_critic_coef(self, traj, key, rewards, steps, values):
        """``gamma^t (r + gamma (1 - done) V(s') - V(s)) / N``: TD(0) advantages with the tabular
        critic ``values`` (:meth:`_critic_values`).

        Biased like every actor-critic (the critic is approximate and time-independent), lower
        variance than REINFORCE; the Hessian and score-function terms treat it as constant.
        """
        S = self.map.n_states
        next_key = traj.task_id * S + traj.next_obs
        td = rewards + self.gamma * (~traj.terminated) * (~traj.truncated) * values[next_key] - values[key]
        return self.gamma ** steps.astype(np.float64) * td / self.n_episodes

    def _table(self):
        return np.empty((self.n_tasks * self.map.n_states, self.map.n_actions))

    def grad(self, theta, data):
        table = self._table()
        key, action, coef = data["key"], data["traj"].action, data["coef"]
        replay = data.get("replay")
        if replay is not None:  # the fresh and the replayed episodes' terms, one mean per task
            key = np.concatenate([key, replay["key"]])
            action = np.concatenate([action, replay["action"]])
            coef = np.concatenate([coef * replay["fresh_scale"], replay["coef"]])
        active.meta.score_table(key, action, data["probs_table"], coef, table)
        return self.map.vjp(table.reshape(self.n_tasks, self.map.n_states, self.map.n_actions))

    def hvp(self, theta, data, v):
        """``(d E[g]/d theta)^T v``: Hessian of the surrogate plus the score-function term."""
        S, A = self.map.n_states, self.map.n_actions
        dl = np.ascontiguousarray(self.map.jvp(np.asarray(v, dtype=np.float64)).reshape(-1, A))
        table = self._table()
        active.meta.hvp_table(data["key"], data["traj"].action, data["probs_table"], data["coef"], data["episode"],
                              self.n_tasks, self.n_episodes, dl, table)
        return self.map.vjp(table.reshape(self.n_tasks, S, A))

    def value(self, theta, data):
        """Mean undiscounted episode return per task in ``data``, (T,)."""
        return data["traj"].episode_return.mean(axis=1)


def return_scales(episode_returns):
    """``1 / std`` of each task's episode returns, float64 (T,), from ``episode_returns`` (T, N);
    1 where the returns do not vary (nothing to scale: the gradient is zero with a baseline)."""
    std = episode_returns.std(axis=1)
    flat = std <= 1e-12 * (1.0 + np.abs(episode_returns).max(axis=1))
    return np.where(flat, 1.0, 1.0 / np.where(flat, 1.0, std))


def _replayed_log_ratios(logits, batch, owner, lengths, pool):
    """``(task, key, log_rho)`` of replayed steps: each step's task index, its row ``task * S +
    state`` of the logits table and ``log pi(a|s) - log mu(a|s)`` (untruncated; recorded in the
    pool's statistics)."""
    _, S, A = logits.shape
    task = np.repeat(owner, lengths)
    key = task * S + batch.obs
    log_pi = log_softmax(np.ascontiguousarray(logits.reshape(-1, A)))[key, batch.action]
    log_rho = log_pi - batch.logp
    pool.record(owner.shape[0], np.exp(log_rho))
    return task, key, log_rho


def replay_coefficients(logits, replayed, n_tasks, gamma, pool, n_fresh=0, fresh=None,
                        fresh_task_id=None):
    """Per-step coefficients of replayed episodes for :func:`score_table` (per-decision
    importance sampling, see :mod:`metarl_fast.pool`), so that each task's estimate is the mean
    over its ``n_fresh + M_t`` episodes.

    ``logits`` (T, S, A) of the current parameters; ``replayed`` from :meth:`EpisodePool.replay`;
    ``fresh``: ``(traj, steps)`` of the fresh episodes, whose mean return-to-go at each step is the
    replayed steps' baseline (None: no baseline); ``fresh_task_id``: the fresh steps' task index.
    Returns a dict: ``key``, ``action``, ``coef`` of the replayed steps and ``fresh_scale`` (the
    factor ``n_fresh / (n_fresh + M_t)`` of each fresh step, None without fresh steps).
    """
    batch, owner, lengths = replayed
    task, key, log_rho = _replayed_log_ratios(logits, batch, owner, lengths, pool)
    if pool.config.rho_bar is not None:
        log_rho = np.minimum(log_rho, np.log(pool.config.rho_bar))
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = np.arange(task.shape[0]) - np.repeat(first, lengths)
    cum = np.cumsum(log_rho)
    c = np.exp(cum - np.repeat(cum[first] - log_rho[first], lengths))  # prod_{k <= t} rho_k
    last = np.zeros(task.shape[0], dtype=np.uint8)
    last[first + lengths - 1] = 1
    is_returns = discounted_returns(c * batch.reward, last, gamma)
    b = np.zeros(task.shape[0])
    if fresh is not None:  # the mean return-to-go at step t of the task's fresh episodes
        traj, steps = fresh
        H = int(max(steps.max(initial=0), t.max(initial=0))) + 1
        fresh_returns = discounted_returns(np.ascontiguousarray(traj.reward, dtype=np.float64),
                                           traj.done, gamma)
        slot = traj.task_id * H + steps
        counts = np.bincount(slot, minlength=n_tasks * H)
        means = np.bincount(slot, weights=fresh_returns, minlength=n_tasks * H) / np.maximum(counts, 1)
        b = means[task * H + t]
    n_per_task = n_fresh + np.bincount(owner, minlength=n_tasks)
    coef = gamma ** t.astype(np.float64) * (is_returns - c * b) / n_per_task[task]
    fresh_scale = None
    if fresh_task_id is not None:
        fresh_scale = (n_fresh / np.maximum(n_per_task, 1))[fresh_task_id]
    return {"key": key, "action": np.ascontiguousarray(batch.action, dtype=np.int64),
            "coef": coef, "fresh_scale": fresh_scale}


def _check_replay_estimator(config, advantage):
    """Whole episodes go with REINFORCE, windows with the actor-critic (its critic bootstraps
    each window's cut)."""
    if config.order == "windows" and advantage != "actor-critic":
        raise ValueError("replay windows need the actor-critic inner estimator: its critic "
                         "bootstraps the return where a window cuts an episode")
    if config.order != "windows" and advantage != "reinforce":
        raise ValueError("replay of whole episodes (order uniform or sequences) works with the "
                         "REINFORCE inner estimator; the actor-critic replays windows")


def window_coefficients(logits, windows, n_tasks, gamma, pool, values, n_fresh, fresh_task_id):
    """Per-step coefficients of replayed windows for :func:`score_table`: V-trace advantages
    (:func:`metarl_fast.pg.vtrace`, truncated at ``pool.config.rho_bar`` when set) computed over
    each window with the tabular critic ``values`` (T * S,) fitted to the fresh episodes, which
    bootstraps a window's cut; each step weighted ``gamma^t`` (``t`` its time step in its episode)
    and by its window's ``scale``, so that each window counts as one episode in the task's mean
    over its ``n_fresh + M`` terms (see :meth:`EpisodePool.replay_windows`).

    Biased as off-policy actor-critics are (Degris et al. 2012; Espeholt et al. 2018): the
    critic is approximate, and the windows' states come from the older policies' visits, not the
    current one's (the state distribution is not corrected).  Returns the dict of
    :func:`replay_coefficients`.
    """
    batch, owner, lengths, first_step, scale = windows
    _, S, A = logits.shape
    task, key, log_rho = _replayed_log_ratios(logits, batch, owner, lengths, pool)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = np.zeros(task.shape[0], dtype=np.uint8)
    ends[first + lengths - 1] = 1
    next_values = np.where(batch.terminated, 0.0, values[task * S + batch.next_obs])
    rho_bar = pool.config.rho_bar
    _, advantages = active.pg.vtrace(np.ascontiguousarray(batch.reward, dtype=np.float64),
                                     values[key], next_values, log_rho, ends, gamma, rho_bar, rho_bar)
    t = np.repeat(first_step - first, lengths) + np.arange(task.shape[0])
    n_per_task = n_fresh + np.bincount(owner, minlength=n_tasks)
    coef = gamma ** t.astype(np.float64) * advantages * np.repeat(scale, lengths) / n_per_task[task]
    return {"key": key, "action": np.ascontiguousarray(batch.action, dtype=np.int64),
            "coef": coef, "fresh_scale": (n_fresh / np.maximum(n_per_task, 1))[fresh_task_id]}


class ReplayProblem:
    """The inner problem of replay-only updates: every gradient estimate from the stored episodes
    of the tasks ``task_ids`` of ``pool`` (no environment step).  The first-order learners'
    extra updates of ``replay_ratio > 1`` (see :class:`MetaLearner`)."""

    def __init__(self, policy, pool, task_ids, n_states, gamma=1.0, features=None):
        self.map = param_map(policy, n_states, features)
        self.n_params, self.pool, self.gamma = self.map.n_params, pool, gamma
        self.task_ids = np.asarray(task_ids, dtype=np.int64)
        self.n_tasks = self.task_ids.shape[0]
        self.env_steps = 0

    def sample(self, theta, rng):
        logits = self.map.jvp(np.asarray(theta, dtype=np.float64))
        A = self.map.n_actions
        data = {"probs_table": softmax(np.ascontiguousarray(logits.reshape(-1, A))),
                "key": np.zeros(0, dtype=np.int64), "action": np.zeros(0, dtype=np.int64),
                "coef": np.zeros(0)}
        replayed = self.pool.replay(self.task_ids, rng)
        if replayed is not None:
            data.update(replay_coefficients(logits, replayed, self.n_tasks, self.gamma, self.pool))
        return data

    def grad(self, theta, data):
        table = np.empty((self.n_tasks * self.map.n_states, self.map.n_actions))
        active.meta.score_table(data["key"], data["action"], data["probs_table"], data["coef"], table)
        return self.map.vjp(table.reshape(self.n_tasks, self.map.n_states, self.map.n_actions))

    def hvp(self, theta, data, v):  # pragma: no cover - MAML never runs replay-only updates
        raise NotImplementedError("replay-only updates are first-order")

    def value(self, theta, data):
        return np.full(self.n_tasks, np.nan)


class ExactPolicyProblem:
    """The policy-gradient inner problem computed exactly by dynamic programming.

    Uses each task's model (``P``, mean ``R``, ``start``, ``terminal``, horizon) from the
    :class:`~metarl_fast.tasks.TaskBatch`; ``sample`` returns ``None``.  ``grad`` is the
    policy-gradient theorem with time-dependent state distributions (as
    :func:`metarl_fast.exact.policy_gradient_exact`, vectorised over tasks); ``hvp`` is the
    complex-step derivative of that gradient, exact to rounding.
    """

    _H = 1e-30

    def __init__(self, policy, task_batch, gamma=1.0, features=None):
        self.policy, self.tasks = policy, task_batch
        self.n_tasks = task_batch.n_tasks
        if policy.n_actions != task_batch.n_actions:
            raise ValueError(f"the policy has {policy.n_actions} actions, the tasks {task_batch.n_actions}")
        self.map = param_map(policy, task_batch.n_states, features)
        self.n_params = self.map.n_params
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        self.horizon = task_batch.horizon
        self.next_state = task_batch.next_state
        if self.next_state is None:
            self.P_cont = task_batch.P * (~task_batch.terminal)[:, None, None, :]
        else:  # deterministic tasks: gathers and scatters through the next-state table, no dense P
            n, S = task_batch.n_tasks, task_batch.n_states
            self.cont = (~task_batch.terminal).astype(np.float64)                 # (T, S)
            self.flat_next = (self.next_state + S * np.arange(n)[:, None, None]).reshape(-1)
        self.R, self.start = task_batch.R, task_batch.start

    def _solve(self, logits, with_grad=True):
        """(J (T,), dJ/dlogits (T, S, A) or None) by DP; complex ``logits`` propagate through."""
        with np.errstate(over="ignore"):  # huge logits: x - max may reach -inf, i.e. probability 0
            z = logits - logits.real.max(axis=2, keepdims=True)
        e = np.exp(z)
        pi = e / e.sum(axis=2, keepdims=True)
        Tn, S, A = pi.shape
        H = self.horizon
        Q = np.empty((H, Tn, S, A), dtype=pi.dtype)
        V = np.zeros((H + 1, Tn, S), dtype=pi.dtype)
        for t in range(H - 1, -1, -1):
            Q[t] = self.R + self.gamma * self._expected_next(V[t + 1])
            V[t] = (pi * Q[t]).sum(axis=2)
        J = np.einsum("ns,ns->n", self.start, V[0])
        if not with_grad:
            return J, None
        d = self.start.astype(pi.dtype)
        grad = np.zeros_like(pi)
        disc = 1.0
        for t in range(H):
            grad += disc * d[:, :, None] * pi * (Q[t] - V[t][:, :, None])
            d = self._next_distribution(d[:, :, None] * pi)
            disc *= self.gamma
        return J, grad

    def _expected_next(self, V):
        """``sum_k P(k | s, a) V[k]`` over non-terminal ``k``: (T, S, A) from V (T, S)."""
        if self.next_state is None:
            return np.einsum("nsak,nk->nsa", self.P_cont, V)
        return (V * self.cont).reshape(-1)[self.flat_next].reshape(self.next_state.shape)

    def _next_distribution(self, w):
        """State distribution after one step from the (state, action) weights ``w`` (T, S, A),
        mass entering a terminal state dropped: (T, S)."""
        if self.next_state is None:
            return np.einsum("nsa,nsak->nk", w, self.P_cont)
        T, S = self.cont.shape
        flat = w.reshape(-1)
        d = np.bincount(self.flat_next, weights=flat.real, minlength=T * S)
        if np.iscomplexobj(flat):
            d = d + 1j * np.bincount(self.flat_next, weights=flat.imag, minlength=T * S)
        return d.reshape(T, S) * self.cont

    def sample(self, theta, rng):
        return None

    def grad(self, theta, data=None):
        _, g = self._solve(self.map.jvp(np.asarray(theta, dtype=np.float64)))
        return self.map.vjp(g)

    def hvp(self, theta, data, v):
        logits = self.map.jvp(np.asarray(theta, dtype=np.float64))
        direction = self.map.jvp(np.asarray(v, dtype=np.float64))
        _, g = self._solve(logits + 1j * self._H * direction)
        return self.map.vjp(g.imag / self._H)

    def value(self, theta, data=None):
        J, _ = self._solve(self.map.jvp(np.asarray(theta, dtype=np.float64)), with_grad=False)
        return J

    def optimal_value(self):
        """Each task's optimal expected return, (T,): backward induction over the horizon, as
        :func:`metarl_fast.exact.optimal_value` per task (the oracle)."""
        V = np.zeros(self.start.shape)
        for _ in range(self.horizon):
            V = (self.R + self.gamma * self._expected_next(V)).max(axis=2)
        return np.einsum("ns,ns->n", self.start, V)


# ---------------------------------------------------------------------------------------------
# Algorithms on (T, P) parameter stacks
# ---------------------------------------------------------------------------------------------

def adapt(problem, params, inner_lr, inner_steps, rng):
    """K inner steps ``theta <- theta + alpha * g(theta)`` from ``params`` (P,) or (T, P).

    Returns ``(theta_K (T, P), thetas [theta_0..theta_{K-1}], data [d_0..d_{K-1}], grads)``.
    """
    params = np.asarray(params, dtype=np.float64)
    theta = np.broadcast_to(params, (problem.n_tasks, problem.n_params)).copy()
    thetas, datas, grads = [], [], []
    for _ in range(inner_steps):
        data = problem.sample(theta, rng)
        g = problem.grad(theta, data)
        thetas.append(theta)
        datas.append(data)
        grads.append(g)
        with np.errstate(over="ignore", invalid="ignore"):
            theta = theta + inner_lr * g
        if not np.all(np.isfinite(theta)):
            raise DivergenceError(f"inner step {len(thetas)} produced non-finite parameters")
    return theta, thetas, datas, grads


def meta_gradient(problem, params, method, inner_lr, inner_steps, rng, hessian_data="fresh"):
    """Ascent direction of the meta-objective for each task, (T, P), and diagnostics.

    ``method``: ``"reptile"`` (theta_K - params), ``"fomaml"`` (g at theta_K on fresh data),
    ``"maml"`` (the full second-order meta-gradient), ``"multitask"`` (g at params: joint training
    without adaptation, the pre-training baseline).  ``hessian_data``: ``"fresh"`` episodes for each
    Hessian-vector product (unbiased given the inner path) or the inner step's own (``"shared"``;
    see the module docstring).  Returns ``(direction, inner_lr_grad, info)``;
    ``inner_lr_grad`` (T, P) is the gradient w.r.t. a per-parameter step size (Meta-SGD) for MAML,
    else None.  ``info`` holds the pre- and post-adaptation values estimated on the way and, for
    FOMAML and MAML, the inner ``path`` ``[theta_0, ..., theta_K]`` (each (T, P)).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if hessian_data not in HESSIAN_DATA:
        raise ValueError(f"hessian_data must be one of {HESSIAN_DATA}, got {hessian_data!r}")
    params = np.asarray(params, dtype=np.float64)
    clock = time.perf_counter
    sampling0 = getattr(problem, "sampling_time", 0.0)
    t0 = clock()
    if method == "multitask":
        theta = np.broadcast_to(params, (problem.n_tasks, problem.n_params)).copy()
        data = problem.sample(theta, rng)
        value = problem.value(theta, data)
        direction = problem.grad(theta, data)
        return direction, None, {"pre": value, "post": value,
                                 "time": _phase_times(problem, sampling0, clock() - t0, 0.0)}
    theta_K, thetas, datas, grads = adapt(problem, params, inner_lr, inner_steps, rng)
    t_inner = clock() - t0
    pre = problem.value(thetas[0], datas[0])
    if method == "reptile":
        post = problem.value(theta_K, None) if datas[0] is None else None
        return theta_K - params, None, {"pre": pre, "post": post,
                                        "time": _phase_times(problem, sampling0, t_inner, 0.0)}
    sampling_inner = getattr(problem, "sampling_time", 0.0)
    t1 = clock()
    data_out = problem.sample(theta_K, rng)
    v = problem.grad(theta_K, data_out)
    info = {"pre": pre, "post": problem.value(theta_K, data_out), "path": thetas + [theta_K]}
    lr_grad = None
    if method == "maml":
        lr_grad = np.zeros_like(v)
        for k in range(inner_steps - 1, -1, -1):
            lr_grad += v * grads[k]
            data_h = datas[k] if hessian_data == "shared" else problem.sample(thetas[k], rng)
            v = v + problem.hvp(thetas[k], data_h, inner_lr * v)
    info["time"] = _phase_times(problem, sampling0, t_inner, clock() - t1, sampling_inner)
    return v, lr_grad, info


def _phase_times(problem, sampling0, inner, outer, sampling_inner=None):
    """Seconds spent sampling episodes, in the inner loop and in the outer step (excl. sampling)."""
    sampling = getattr(problem, "sampling_time", 0.0) - sampling0
    inner_sampling = sampling if sampling_inner is None else sampling_inner - sampling0
    return {"sampling": sampling, "inner": max(inner - inner_sampling, 0.0),
            "outer": max(outer - (sampling - inner_sampling), 0.0)}


# ---------------------------------------------------------------------------------------------
# Learners
# ---------------------------------------------------------------------------------------------

class DivergenceError(FloatingPointError):
    """Meta-training produced non-finite parameters; the update was rolled back."""


ESTIMATORS = ("sampled", "exact")


class RolloutWorkspaces:
    """The rollouts' output arrays of one meta-iteration, reused by the next ones: the ``i``-th
    rollout of an iteration writes into the ``i``-th :class:`~metarl_fast.rollout.RolloutWorkspace`
    (grown when a batch needs more room).  A meta-iteration keeps every rollout of its inner path
    until its meta-gradient, so each gets its own; the next iteration (:meth:`begin`) overwrites
    them, without the allocation and page faults of fresh outputs."""

    def __init__(self):
        self._spaces = []
        self._used = 0

    def begin(self):
        self._used = 0

    def next(self, n_tasks, n_episodes, horizon):
        """(the kernel's ``out`` arrays, ``episode_start``) of the next workspace, with room for
        ``n_tasks x n_episodes x horizon`` steps."""
        from metarl_fast.rollout import RolloutWorkspace

        steps, episodes = n_tasks * n_episodes * horizon, n_tasks * n_episodes
        if self._used == len(self._spaces):
            self._spaces.append(None)
        space = self._spaces[self._used]
        if space is None or space.max_steps < steps or space.max_episodes < episodes:
            space = self._spaces[self._used] = RolloutWorkspace(n_tasks, n_episodes, horizon)
        self._used += 1
        # no public handle reaches these workspaces' arrays: the per-call check that they are
        # still the workspace's own (6 us, RolloutWorkspace._arrays) is not needed here
        return space._out, space.episode_start


class MetaLearner:
    """Meta-train the initial parameters of a softmax ``policy`` across tasks.

    Parameters
    ----------
    policy : TabularSoftmaxPolicy, LinearSoftmaxPolicy or MLPSoftmaxPolicy
        Its ``params`` are the meta-parameters phi, updated in place by :meth:`meta_step`.  An
        MLP policy meta-trains on continuous-observation tasks (``PointNavigation``,
        ``CartPoles``) with the sampled REINFORCE estimator
        (:class:`metarl_fast.continuous_meta.ContinuousPolicyProblem`).
    method : {"reptile", "fomaml", "maml", "multitask"}
    inner_lr : float > 0
        The inner (adaptation) step size alpha (default 1.0, as ``metarl-fast train``).
    inner_steps : int >= 1
        K, the number of policy-gradient adaptation steps per task.
    meta_lr : float > 0, optional
        Outer step size (default 0.05 with Adam, as ``metarl-fast train``; 0.1 for Reptile with
        SGD, as its epsilon).
    meta_optimizer : {"adam", "sgd"}
    episodes_per_task : int >= 1
        Episodes sampled per task for every gradient estimate (``estimator="sampled"``).
    gamma : float in [0, 1]
    estimator : {"sampled", "exact"}
        ``"exact"`` computes every gradient and Hessian-vector product by dynamic programming on
        the tasks' models: a noise-free meta-gradient.
    inner_estimator : {"reinforce", "actor-critic"}
        Advantages of the inner policy-gradient steps (sampled estimator): return-to-go minus a
        per-time-step baseline, or TD(0) errors of a per-task tabular critic.
    baseline : {"leave-one-out", "mean", "none"}
        Per-time-step baseline of the sampled REINFORCE estimates (see
        :class:`SampledPolicyProblem`): leave-one-out is unbiased for every ``episodes_per_task``.
    hessian_data : {"fresh", "shared"}
        MAML's Hessian-vector products on fresh episodes (default; unbiased given the inner path)
        or on the inner step's own episodes (no extra sampling, biased; see the module docstring).
    learn_inner_lr : bool
        Meta-SGD: learn one step size per parameter (MAML only), with its own Adam at ``meta_lr``.
    features : float (S, F), optional
        Feature table for a LinearSoftmaxPolicy (default one-hot).
    normalize_returns : bool
        Divide each task's rewards by the standard deviation of its episodes' returns (sampled
        estimator; see :class:`SampledPolicyProblem`): makes ``inner_lr`` independent of the scale
        of the rewards (e.g. returns in the hundreds, where a step of 1.0 saturates the softmax).

    Attributes
    ----------
    workspaces : RolloutWorkspaces or None
        The output memory :meth:`meta_step`'s rollouts reuse from iteration to iteration (about
        50 bytes per step of each rollout of one iteration, kept between iterations; at 1024
        tasks a meta-iteration runs 1.8-1.9x faster than with fresh arrays, see benches/README.md).
        None: fresh arrays at every rollout, the same results.
    """

    def __init__(self, policy, method, *, inner_lr=1.0, inner_steps=1, meta_lr=None,
                 meta_optimizer="adam", episodes_per_task=20, gamma=1.0, estimator="sampled",
                 learn_inner_lr=False, features=None, inner_estimator="reinforce",
                 baseline="leave-one-out", hessian_data="fresh", replay=None, normalize_returns=False):
        from metarl_fast.policy import MLPSoftmaxPolicy

        if not isinstance(policy, (TabularSoftmaxPolicy, LinearSoftmaxPolicy, MLPSoftmaxPolicy)):
            raise TypeError(f"policy must be a TabularSoftmaxPolicy, LinearSoftmaxPolicy or MLPSoftmaxPolicy, "
                            f"got {type(policy).__name__}")
        if isinstance(policy, MLPSoftmaxPolicy):  # continuous tasks: sampled REINFORCE only
            if estimator != "sampled":
                raise ValueError("an MLPSoftmaxPolicy needs estimator='sampled' (the exact estimator "
                                 "reads tabular models)")
            if inner_estimator != "reinforce":
                raise ValueError("an MLPSoftmaxPolicy needs inner_estimator='reinforce' (the "
                                 "actor-critic estimator fits a tabular critic)")
            if replay is not None:
                raise ValueError("replay needs a tabular or linear policy (the episode pool stores "
                                 "tabular states)")
            if features is not None:
                raise ValueError("features are for a LinearSoftmaxPolicy; an MLPSoftmaxPolicy "
                                 "reads the tasks' observations")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if inner_estimator not in ADVANTAGES:
            raise ValueError(f"inner_estimator must be one of {ADVANTAGES}, got {inner_estimator!r}")
        self.inner_estimator = inner_estimator
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if hessian_data not in HESSIAN_DATA:
            raise ValueError(f"hessian_data must be one of {HESSIAN_DATA}, got {hessian_data!r}")
        self.baseline, self.hessian_data = baseline, hessian_data
        if meta_optimizer not in ("adam", "sgd"):
            raise ValueError(f"meta_optimizer must be 'adam' or 'sgd', got {meta_optimizer!r}")
        self.policy, self.method, self.estimator = policy, method, estimator
        self.inner_lr = _validate.finite_float(inner_lr, "inner_lr", low=0.0, low_open=True)
        self.inner_steps = _validate.positive_int(inner_steps, "inner_steps")
        if meta_lr is None:
            meta_lr = 0.1 if (method == "reptile" and meta_optimizer == "sgd") else 0.05
        self.meta_lr = _validate.finite_float(meta_lr, "meta_lr", low=0.0, low_open=True)
        self.episodes_per_task = _validate.positive_int(episodes_per_task, "episodes_per_task")
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        if learn_inner_lr and method != "maml":
            raise ValueError("learn_inner_lr (Meta-SGD) needs method='maml'")
        self.features = features
        self.optimizer = (Adam(policy.params, lr=self.meta_lr) if meta_optimizer == "adam"
                          else SGD(policy.params, lr=self.meta_lr))
        self.learn_inner_lr = bool(learn_inner_lr)
        # the step sizes alpha: one per parameter (Meta-SGD), or the scalar broadcast
        self.inner_lrs = np.full(policy.n_params, self.inner_lr)
        self.lr_optimizer = Adam(self.inner_lrs, lr=self.meta_lr) if self.learn_inner_lr else None
        self.iteration = 0
        # meta_step's rollouts reuse their output memory from iteration to iteration (None: fresh
        # arrays every rollout, as adapt() and problem() use)
        self.workspaces = RolloutWorkspaces()
        if not isinstance(normalize_returns, (bool, np.bool_)):
            raise TypeError(f"normalize_returns must be a bool, got {type(normalize_returns).__name__}")
        self.normalize_returns = bool(normalize_returns)
        if self.normalize_returns and (estimator != "sampled" or replay is not None):
            raise ValueError("normalize_returns needs the sampled estimator without replay (exact "
                             "gradients have no sampled returns; stored episodes keep their raw rewards)")
        self.pool = None
        if replay is not None:
            from metarl_fast.pool import EpisodePool

            if estimator != "sampled":
                raise ValueError("replay needs the sampled estimator")
            _check_replay_estimator(replay, inner_estimator)
            if replay.ratio > 1 and method == "maml":
                raise ValueError("a replay ratio above 1 needs a first-order learner (reptile, "
                                 "fomaml, multitask): MAML's Hessian needs fresh episodes")
            self.pool = EpisodePool(replay)

    def problem(self, task_batch, pool=None, workspaces=None):
        """The inner problem of this learner on ``task_batch`` (sampled or exact; ``pool``: the
        replay pool its estimates use and its rollouts fill; ``workspaces``: a
        :class:`RolloutWorkspaces` its rollouts write into)."""
        from metarl_fast.continuous_meta import ContinuousPolicyProblem, is_continuous_batch
        from metarl_fast.policy import MLPSoftmaxPolicy

        if is_continuous_batch(task_batch) or isinstance(self.policy, MLPSoftmaxPolicy):
            return ContinuousPolicyProblem(self.policy, task_batch, self.episodes_per_task, self.gamma,
                                           baseline=self.baseline, normalize_returns=self.normalize_returns)
        if self.estimator == "exact":
            return ExactPolicyProblem(self.policy, task_batch, self.gamma, self.features)
        return SampledPolicyProblem(self.policy, task_batch, self.episodes_per_task, self.gamma, self.features,
                                    advantage=self.inner_estimator, baseline=self.baseline,
                                    pool=pool, normalize_returns=self.normalize_returns, workspaces=workspaces)

    def _alpha(self):
        return self.inner_lrs if self.learn_inner_lr else self.inner_lr

    def meta_step(self, task_batch, rng):
        """One meta-iteration on a meta-batch of tasks; updates ``policy.params`` in place.

        Returns a dict: ``pre_return`` / ``post_return`` (mean over tasks before / after adaptation,
        when measured), ``direction_norm``.  Raises :class:`DivergenceError` (parameters rolled
        back) if the update is not finite.
        """
        rng = _validate.as_generator(rng)
        from metarl_fast.continuous_meta import is_continuous_batch
        from metarl_fast.tasks import TaskBatch

        if not (isinstance(task_batch, TaskBatch) or is_continuous_batch(task_batch)):
            raise TypeError(f"task_batch must be a TaskBatch (e.g. GridNavigation().sample(20, rng)) or a "
                            f"continuous-task batch (e.g. PointNavigation().sample(20, rng)), "
                            f"got {type(task_batch).__name__}")
        _validate.check_rng(rng)
        # the rollouts write into the previous iteration's output arrays (nothing outlives an iteration)
        if self.workspaces is not None:
            self.workspaces.begin()
        problem = self.problem(task_batch, self.pool, self.workspaces)
        # the inner path keeps every step's parameters and rollout until the meta-gradient
        _validate.check_table_size(
            self.inner_steps * (problem.n_tasks * problem.n_params + getattr(problem, "rollout_steps", 0)),
            f"inner_steps={self.inner_steps:,}: the inner path of inner_steps x (n_tasks x n_params + "
            f"a rollout's steps)")
        phi = self.policy.params.astype(np.float64)
        try:
            direction, lr_grad, info = meta_gradient(problem, phi, self.method, self._alpha(),
                                                     self.inner_steps, rng, self.hessian_data)
        except DivergenceError as err:
            raise DivergenceError(f"meta-iteration {self.iteration + 1}: {err} (nothing was updated)") from None
        finally:
            if self.pool is not None:
                self.pool.end_iteration()
        saved = (self.policy.params.copy(), self.optimizer.state_dict(), self.inner_lrs.copy(),
                 None if self.lr_optimizer is None else self.lr_optimizer.state_dict())
        self.iteration += 1
        mean_dir = self._update(direction, lr_grad, saved)
        pool_stats = {}
        if self.pool is not None:
            # replay ratio: further first-order meta-updates from the pool alone
            for _ in range(self.pool.config.ratio - 1):
                ids = self.pool.sample_tasks(task_batch.n_tasks, rng)
                if ids.shape[0] == 0:
                    break
                replay_problem = ReplayProblem(self.policy, self.pool, ids, task_batch.n_states,
                                               self.gamma, self.features)
                try:
                    extra, _, _ = meta_gradient(replay_problem, self.policy.params.astype(np.float64),
                                                self.method, self._alpha(), self.inner_steps, rng)
                except DivergenceError as err:
                    self._rollback(saved)
                    raise DivergenceError(f"meta-iteration {self.iteration + 1}: replay-only "
                                          f"update: {err} (update rolled back)") from None
                self._update(extra, None, saved)
            pool_stats = self.pool.stats()
            self.pool.reset_stats()
        return {
            **pool_stats,
            "pre_return": float(np.mean(info["pre"])),
            "post_return": None if info["post"] is None else float(np.mean(info["post"])),
            "direction_norm": float(np.sqrt((mean_dir * mean_dir).sum())),  # no BLAS call: it wakes BLAS threads
            "env_steps": int(getattr(problem, "env_steps", 0)),
            "time": info["time"],
        }

    def _update(self, direction, lr_grad, saved):
        """One outer step along the tasks' mean ``direction``; rolls back to ``saved`` and raises
        DivergenceError if it is not finite.  Returns the mean direction."""
        mean_dir = direction.mean(axis=0)
        failing = self.iteration
        if not np.all(np.isfinite(mean_dir)):
            self._rollback(saved)
            raise DivergenceError(f"meta-iteration {failing}: non-finite meta-gradient (update rolled back)")
        self.optimizer.step(-mean_dir.astype(self.policy.dtype))
        if lr_grad is not None and self.lr_optimizer is not None:
            self.lr_optimizer.step(-lr_grad.mean(axis=0))
            np.maximum(self.inner_lrs, 1e-6, out=self.inner_lrs)
        if not (np.all(np.isfinite(self.policy.params)) and np.all(np.isfinite(self.inner_lrs))):
            self._rollback(saved)
            raise DivergenceError(f"meta-iteration {failing}: parameters became non-finite (update rolled back)")
        return mean_dir

    def _rollback(self, saved):
        params, opt, lrs, lr_opt = saved
        self.policy.params[...] = params
        self.optimizer.load_state_dict(opt)
        self.inner_lrs[...] = lrs
        if lr_opt is not None:
            self.lr_optimizer.load_state_dict(lr_opt)
        self.iteration -= 1

    def adapt(self, task_batch, rng, inner_steps=None, estimator=None):
        """Adapt the meta-parameters to each task of ``task_batch``: (K+1, T, P) parameters.

        Entry ``k`` holds the parameters after ``k`` inner steps (entry 0 is phi itself).
        """
        rng = _validate.as_generator(rng)
        steps = self.inner_steps if inner_steps is None else _validate.positive_int(inner_steps, "inner_steps")
        old = self.estimator
        if estimator is not None:
            if estimator not in ESTIMATORS:
                raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
            self.estimator = estimator
        try:
            problem = self.problem(task_batch)
        finally:
            self.estimator = old
        theta_K, thetas, _, _ = adapt(problem, self.policy.params, self._alpha(), steps, rng)
        return np.stack(thetas + [theta_K])

    def adapted_policies(self, task_batch, rng, inner_steps=None, estimator=None):
        """One policy per task of ``task_batch`` after its K adaptation steps (:meth:`adapt`'s
        last entry): copies of ``self.policy`` with the adapted parameters, ready to ``act``."""
        final = self.adapt(task_batch, rng, inner_steps, estimator)[-1]
        policies = []
        for theta in final:
            policy = self.policy.copy()
            policy.set_params(theta.astype(policy.dtype))
            policies.append(policy)
        return policies

    def state_dict(self):
        d = {"params": self.policy.params.copy(), "inner_lrs": self.inner_lrs.copy(),
             "iteration": np.array(self.iteration, dtype=np.int64)}
        for key, value in self.optimizer.state_dict().items():
            d["opt_" + key] = value
        if self.lr_optimizer is not None:
            for key, value in self.lr_optimizer.state_dict().items():
                d["lropt_" + key] = value
        if self.pool is not None:
            d.update(self.pool.state_dict())
        return d

    def load_state_dict(self, d):
        from metarl_fast import io

        params = np.asarray(d["params"])
        if params.shape != self.policy.params.shape:
            raise ValueError(f"params of shape {params.shape} do not fit the policy {self.policy.params.shape}")
        inner_lrs = np.asarray(d["inner_lrs"])
        for name, arr in (("params", params), ("inner_lrs", inner_lrs)):
            if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must hold finite floats, got dtype {arr.dtype}")
        if inner_lrs.shape != self.inner_lrs.shape or not np.all(inner_lrs > 0):
            raise ValueError(f"inner_lrs must be {self.inner_lrs.shape} positive step sizes")
        iteration = io.integer(d["iteration"], "iteration")
        self.optimizer.load_state_dict({k[4:]: v for k, v in d.items() if k.startswith("opt_")})
        if self.lr_optimizer is not None:
            self.lr_optimizer.load_state_dict({k[6:]: v for k, v in d.items() if k.startswith("lropt_")})
        if self.pool is not None:
            self.pool.load_state_dict(d)
        self.policy.params[...] = params
        self.inner_lrs[...] = inner_lrs
        self.iteration = iteration


class Reptile(MetaLearner):
    """Reptile (Nichol et al., 2018): phi <- phi + epsilon * mean_i(W_i - phi), W_i = K inner steps.

    Defaults to SGD as the outer optimizer (``meta_lr`` is epsilon, default 0.1); Adam on request.
    """

    def __init__(self, policy, *, meta_optimizer="sgd", **kwargs):
        super().__init__(policy, "reptile", meta_optimizer=meta_optimizer, **kwargs)


class FOMAML(MetaLearner):
    """First-order MAML: the outer direction is the policy gradient at the adapted parameters,
    estimated on fresh episodes of the same task (Finn et al., 2017)."""

    def __init__(self, policy, **kwargs):
        super().__init__(policy, "fomaml", **kwargs)


class MAML(MetaLearner):
    """MAML with the exact second-order term (Finn et al., 2017; unbiased as DiCE / ProMP).

    Meta-gradient ``(I + alpha grad g)^T grad J(theta')`` chained through every inner step with
    analytic Hessian-vector products; ``estimator="exact"`` makes it noise-free by DP.
    """

    def __init__(self, policy, **kwargs):
        super().__init__(policy, "maml", **kwargs)


class MultiTask(MetaLearner):
    """Joint training on all tasks without adaptation: the multi-task pre-trained baseline."""

    def __init__(self, policy, **kwargs):
        super().__init__(policy, "multitask", **kwargs)
