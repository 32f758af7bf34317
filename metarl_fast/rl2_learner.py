"""RL^2 meta-training: a GRU in-context learner trained end to end with PPO (issue 17).

:class:`RL2Learner` holds the flat parameter vector of the GRU softmax policy with a value head
(:mod:`metarl_fast.reference.gru`) and an :class:`~metarl_fast.optim.Adam` on it.  One
:meth:`RL2Learner.meta_step` plays one trial per task with the fused rollout
(:func:`metarl_fast.rl2.rl2_rollout`; the hidden state is carried across a trial's episodes), then
runs PPO over whole trials:

* advantages by GAE over each whole trial (:func:`gae_trials`): the trial goes on after an
  episode ends, so the next step's value is used there too; after the trial's last step the
  value is 0.  Returns ``R = advantages + values``; the advantages are then normalised over the
  batch (mean 0, std 1);
* ``ppo_epochs`` epochs, each over the trials in ``minibatches`` random groups: a forward pass
  (``gru_forward``) over the group's steps, the loss of :func:`ppo_loss_terms` and its gradient
  by backpropagation through time (``gru_backward`` of the analytic ``dL/dlogits``,
  ``dL/dvalues``), clipped to a global norm, one Adam step (Adam minimises the loss, i.e.
  maximises the clipped surrogate + entropy bonus).

The PPO loss of a minibatch of ``N`` valid steps (``rho = exp(log pi(a|h) - logp_old)``,
``A`` the normalised advantage, ``H`` the policy's entropy at the step)::

    L = -(1/N) sum min(rho A, clip(rho, 1 - eps, 1 + eps) A)
        + value_coef (1/N) sum 0.5 (v - R)^2  -  entropy_coef (1/N) sum H

and its gradient with respect to a step's logits ``l`` (``p = softmax(l)``, ``e_a`` the one-hot
of the taken action) and value ``v``::

    dL/dl = -(1/N) [unclipped] A rho (e_a - p)  +  entropy_coef (1/N) p * (log p + H)
    dL/dv = value_coef (1/N) (v - R)

``[unclipped]`` is 1 where the minimum picks ``rho A`` (the clipped term is constant in ``rho``
where it is smaller: ``A > 0, rho > 1 + eps`` or ``A < 0, rho < 1 - eps``), else 0; masked
(padding) slots contribute 0.  Both backends: the rollout and the GRU kernels run on the active
backend (``active.gru``); the rest is NumPy.
"""
import numbers

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.optim import Adam
from metarl_fast.reference.gru import MAX_HIDDEN
from metarl_fast.rl2 import rl2_input_dim, rl2_rollout
from metarl_fast.tasks import TaskBatch

__all__ = ["RL2Learner", "gae_trials", "ppo_loss_terms", "to_time_major"]

LEARNER_STATE_VERSION = 2
_ADV_EPS = 1e-8


def to_time_major(flat, mask):
    """The flat, trial-major per-step array ``flat`` (n,) of an :class:`~metarl_fast.rl2.RL2Rollout`
    as a time-major (L, T) array (zeros where ``mask`` (L, T) is False); the inverse of
    ``x.T[mask.T]``."""
    out = np.zeros((mask.shape[1], mask.shape[0]), dtype=np.asarray(flat).dtype)
    out[mask.T] = flat
    return np.ascontiguousarray(out.T)


def gae_trials(rewards, values, mask, gamma, gae_lambda):
    """Generalised advantage estimates over whole trials, time-major.

    Within a trial the next step's value is bootstrapped even where an episode ends (the trial,
    and the hidden state, go on); after the trial's last step (``mask[k + 1, i]`` False, or
    ``k = L - 1``) the next value is 0::

        delta[k] = r[k] + gamma V[k + 1] - V[k],   A[k] = delta[k] + gamma lambda A[k + 1]

    Parameters
    ----------
    rewards, values : float64 (L, T);  mask : bool (L, T), each column a prefix of True
    gamma, gae_lambda : float in [0, 1]

    Returns
    -------
    advantages : float64 (L, T)   0 where ``mask`` is False (returns = advantages + values)
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise TypeError(f"mask must be a bool (L, T) array, got {_validate.got(mask)}")
    rewards = _validate.float_array(rewards, "rewards", ndim=2, dtype=np.float64)
    values = _validate.float_array(values, "values", ndim=2, dtype=np.float64)
    for arr, name in ((rewards, "rewards"), (values, "values")):
        if arr.shape != mask.shape:
            raise ValueError(f"{name} must have the shape of mask {mask.shape}, got {arr.shape}")
    if np.any(mask[1:] & ~mask[:-1]):
        raise ValueError("mask must be a prefix of True in every column (steps 0 .. len - 1)")
    gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
    gae_lambda = _validate.finite_float(gae_lambda, "gae_lambda", low=0.0, high=1.0)
    n_steps, n_trials = mask.shape
    advantages = np.zeros((n_steps, n_trials))
    next_adv = np.zeros(n_trials)
    next_value = np.zeros(n_trials)
    for k in range(n_steps - 1, -1, -1):
        # next_value / next_adv are 0 after a trial's last step (padding slots hold 0)
        delta = rewards[k] + gamma * next_value - values[k]
        adv = np.where(mask[k], delta + gamma * gae_lambda * next_adv, 0.0)
        advantages[k] = adv
        next_adv = adv
        next_value = np.where(mask[k], values[k], 0.0)
    return advantages


def ppo_loss_terms(logits, values, actions, old_logp, advantages, returns, mask, clip,
                   value_coef, entropy_coef):
    """The PPO loss of a minibatch and its analytic gradient w.r.t. the logits and values.

    Parameters
    ----------
    logits : float64 (L, B, A);  values : float64 (L, B)   from ``gru_forward``
    actions : int (L, B);  old_logp, advantages, returns : float64 (L, B)   (the rollout's)
    mask : bool (L, B)   the valid steps (at least one)
    clip : float > 0;  value_coef, entropy_coef : float >= 0

    Returns
    -------
    loss : float   (the module docstring's ``L``)
    dlogits : float64 (L, B, A);  dvalues : float64 (L, B)   ``dL/dlogits``, ``dL/dvalues``
        (0 at masked slots), ready for ``gru_backward``
    stats : dict   ``policy_loss``, ``value_loss`` (mean 0.5 (v - R)^2), ``entropy``,
        ``approx_kl`` (mean of ``(rho - 1) - log rho``), ``clip_fraction`` (share of steps with
        ``|rho - 1| > clip``)
    """
    n_valid = int(np.count_nonzero(mask))
    if n_valid == 0:
        raise ValueError("mask selects no step")
    m = mask.astype(np.float64)
    z = logits - logits.max(axis=2, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=2, keepdims=True))  # (L, B, A)
    probs = np.exp(log_probs)
    a_safe = np.where(mask, actions, 0).astype(np.int64)
    new_logp = np.take_along_axis(log_probs, a_safe[..., None], axis=2)[..., 0]
    log_ratio = np.where(mask, new_logp - old_logp, 0.0)
    ratio = np.exp(log_ratio)
    clipped = np.clip(ratio, 1.0 - clip, 1.0 + clip)
    surr_unclipped = ratio * advantages
    surr_clipped = clipped * advantages
    # the minimum is the clipped term only where it is strictly smaller (then constant in rho)
    unclipped_active = surr_unclipped <= surr_clipped
    surrogate = np.where(unclipped_active, surr_unclipped, surr_clipped)
    entropy = -(probs * log_probs).sum(axis=2)  # (L, B)
    value_err = values - returns

    policy_loss = -float((surrogate * m).sum()) / n_valid
    value_loss = float((0.5 * value_err * value_err * m).sum()) / n_valid
    mean_entropy = float((entropy * m).sum()) / n_valid
    loss = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy

    # d surrogate / d rho = A where the unclipped term is the minimum; d rho / d l = rho (e_a - p)
    coef = np.where(mask & unclipped_active, advantages * ratio, 0.0)  # (L, B)
    dlogits = coef[..., None] * probs
    np.put_along_axis(dlogits, a_safe[..., None],
                      np.take_along_axis(dlogits, a_safe[..., None], axis=2) - coef[..., None],
                      axis=2)  # -coef (e_a - p)
    # d entropy / d l_j = -p_j (log p_j + H); the loss carries -entropy_coef * entropy
    dlogits += (entropy_coef * m)[..., None] * probs * (log_probs + entropy[..., None])
    dlogits /= n_valid
    dvalues = value_coef * value_err * m / n_valid

    stats = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": mean_entropy,
             "approx_kl": float((((ratio - 1.0) - log_ratio) * m).sum()) / n_valid,
             "clip_fraction": float(((np.abs(ratio - 1.0) > clip) & mask).sum()) / n_valid}
    return loss, np.ascontiguousarray(dlogits), np.ascontiguousarray(dvalues), stats


def _int_arg(value, name, minimum=1):
    return _validate.positive_int(value, name, minimum=minimum)


class RL2Learner:
    """A GRU policy (with value head) meta-trained by PPO over whole RL^2 trials.

    Parameters
    ----------
    n_states, n_actions : int >= 1   the task family's sizes (bandits: ``n_states = 1``)
    hidden : int in 1..512           the GRU's hidden size
    episodes_per_trial : int >= 1    episodes of one task per trial (hidden state carried)
    lr : float > 0                   Adam's learning rate
    clip : float > 0                 PPO's ratio clip ``eps``
    gae_lambda, gamma : float in [0, 1]
    value_coef, entropy_coef : float >= 0
    ppo_epochs : int >= 1;  minibatches : int >= 1 (groups of whole trials per epoch)
    max_grad_norm : float > 0 or None (no clipping)   global-norm gradient clip
    normalize_values : bool   the value head predicts standardised returns (see below)
    rng : numpy.random.Generator, int seed, SeedSequence or None (fresh OS entropy)
        draws the initial parameters (``gru_init``)

    Value normalisation (``normalize_values``, on by default): the value head's output ``u`` stands
    for the return ``V = mean + std * u``, with the mean and (population) standard deviation of
    every GAE return this learner has trained on so far (``value_stats``: count, mean and sum of
    squared deviations, merged batch by batch with Chan et al.'s formula); identity before the
    first batch.  Each meta-step computes GAE with the current statistics, merges the batch's
    returns into them, then regresses ``u`` on ``(R - mean) / std``.  Without it the value loss
    grows with the square of the returns: over trials of 100 steps at gamma = 0.99 it outweighs the
    policy's gradient under the global-norm clip and the policy stops learning.

    Attributes
    ----------
    params : float64 (P,)   ``gru_layout(n_states + n_actions + 2, hidden, n_actions)``
    optimizer : Adam on ``params``;  iteration : int, meta-steps taken
    value_stats : float64 (3,)   count, mean, sum of squared deviations of the returns seen
    """

    def __init__(self, n_states, n_actions, hidden=128, *, episodes_per_trial=1, lr=3e-4,
                 clip=0.2, gae_lambda=0.95, gamma=0.99, value_coef=0.5, entropy_coef=0.01,
                 ppo_epochs=4, minibatches=4, max_grad_norm=0.5, normalize_values=True, rng=None):
        self.n_states = _int_arg(n_states, "n_states")
        self.n_actions = _int_arg(n_actions, "n_actions")
        self.hidden = _int_arg(hidden, "hidden")
        if self.hidden > MAX_HIDDEN:
            raise ValueError(f"hidden must be in 1..{MAX_HIDDEN}, got {self.hidden}")
        self.episodes_per_trial = _int_arg(episodes_per_trial, "episodes_per_trial")
        lr = _validate.finite_float(lr, "lr", low=0.0, low_open=True)
        self.clip = _validate.finite_float(clip, "clip", low=0.0, low_open=True)
        self.gae_lambda = _validate.finite_float(gae_lambda, "gae_lambda", low=0.0, high=1.0)
        self.gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
        self.value_coef = _validate.finite_float(value_coef, "value_coef", low=0.0)
        self.entropy_coef = _validate.finite_float(entropy_coef, "entropy_coef", low=0.0)
        self.ppo_epochs = _int_arg(ppo_epochs, "ppo_epochs")
        self.minibatches = _int_arg(minibatches, "minibatches")
        if max_grad_norm is not None:
            max_grad_norm = _validate.finite_float(max_grad_norm, "max_grad_norm", low=0.0,
                                                   low_open=True)
        self.max_grad_norm = max_grad_norm
        if not isinstance(normalize_values, (bool, np.bool_)):
            raise TypeError(f"normalize_values must be a bool, got {type(normalize_values).__name__}")
        self.normalize_values = bool(normalize_values)
        self.value_stats = np.zeros(3)
        rng = np.random.default_rng() if rng is None else _validate.as_generator(rng)
        self.input_dim = rl2_input_dim(self.n_states, self.n_actions)
        self.params = active.gru.gru_init(self.input_dim, self.hidden, self.n_actions, rng)
        self.optimizer = Adam(self.params, lr=lr)
        self.iteration = 0

    @property
    def lr(self):
        return self.optimizer.lr

    # ------------------------------------------------------------------ checks
    def _check_batch(self, task_batch, name="task_batch"):
        if not isinstance(task_batch, TaskBatch):
            raise TypeError(f"{name} must be a metarl_fast.tasks.TaskBatch, "
                            f"got {type(task_batch).__name__}")
        if (task_batch.n_states, task_batch.n_actions) != (self.n_states, self.n_actions):
            raise ValueError(f"{name} has n_states={task_batch.n_states}, "
                             f"n_actions={task_batch.n_actions}; this learner was built for "
                             f"n_states={self.n_states}, n_actions={self.n_actions}")
        return task_batch

    # ------------------------------------------------------------------ acting
    def evaluate(self, task_batch, rng):
        """Total reward float64 (T,) of one trial per task with the current parameters (no
        update; one :func:`~metarl_fast.rl2.rl2_rollout`)."""
        self._check_batch(task_batch)
        rng = _validate.as_generator(rng)
        return rl2_rollout(task_batch, self.params, self.hidden, self.episodes_per_trial,
                           rng).trial_return

    # ------------------------------------------------------------------ training
    def meta_step(self, task_batch, rng):
        """One PPO meta-iteration on one trial per task of ``task_batch`` (see the module doc).

        ``rng`` (Generator, int seed or SeedSequence) draws the rollout, then one permutation of
        the trials per epoch.  Returns a dict: ``mean_trial_return`` (of the rollout, before the
        update), and averaged over the minibatch updates ``approx_kl``, ``clip_fraction``,
        ``value_loss``, ``entropy``, ``policy_loss``, ``grad_norm`` (before clipping);
        ``iteration`` (after this step).  A FloatingPointError from the GRU kernels (overflow)
        propagates; the minibatch updates made before it are kept.
        """
        self._check_batch(task_batch)
        rng = _validate.as_generator(rng)
        n_trials = task_batch.n_tasks
        if n_trials < self.minibatches:
            raise ValueError(f"task_batch has {n_trials} tasks, fewer than minibatches="
                             f"{self.minibatches} (each minibatch needs at least one trial)")
        ro = rl2_rollout(task_batch, self.params, self.hidden, self.episodes_per_trial, rng)
        return self.update(ro, rng)

    def update(self, rollout, rng):
        """The PPO iteration of :meth:`meta_step` on a given rollout (``meta_step`` = a rollout
        with the current parameters, then this).

        ``rollout``: an :class:`~metarl_fast.rl2.RL2Rollout` played with this learner's current
        parameters (its log-probabilities are PPO's behaviour policy), at least ``minibatches``
        trials; ``rng`` draws one permutation of the trials per epoch.  Returns
        :meth:`meta_step`'s dict; the iteration count goes up by one.
        """
        from metarl_fast.rl2 import RL2Rollout

        if not isinstance(rollout, RL2Rollout):
            raise TypeError(f"rollout must be a metarl_fast.rl2.RL2Rollout, got {type(rollout).__name__}")
        ro = rollout
        n_trials = ro.mask.shape[1]
        if n_trials < self.minibatches:
            raise ValueError(f"rollout has {n_trials} trials, fewer than minibatches="
                             f"{self.minibatches} (each minibatch needs at least one trial)")
        if ro.inputs.shape[2] != self.input_dim:
            raise ValueError(f"rollout has GRU inputs of size {ro.inputs.shape[2]}, this learner's "
                             f"are {self.input_dim}")
        rng = _validate.as_generator(rng)
        mask = ro.mask
        actions = to_time_major(ro.action, mask)
        old_logp = to_time_major(ro.logp, mask)
        advantages, returns = self.advantages(ro)
        if self.normalize_values:
            self._merge_value_stats(returns[mask])
            mean, std = self.value_scale()
            returns = np.where(mask, (returns - mean) / std, 0.0)  # the value head's targets
        valid_adv = advantages[mask]
        norm_adv = np.where(mask, (advantages - valid_adv.mean()) / (valid_adv.std() + _ADV_EPS),
                            0.0)

        totals = {"approx_kl": 0.0, "clip_fraction": 0.0, "value_loss": 0.0, "entropy": 0.0,
                  "policy_loss": 0.0, "grad_norm": 0.0}
        n_updates = 0
        for _ in range(self.ppo_epochs):
            order = rng.permutation(n_trials)
            for idx in np.array_split(order, self.minibatches):
                stats = self._update(ro, idx, actions, old_logp, norm_adv, returns)
                for key in totals:
                    totals[key] += stats[key]
                n_updates += 1
        self.iteration += 1
        out = {"mean_trial_return": float(ro.trial_return.mean())}
        out.update({key: value / n_updates for key, value in totals.items()})
        out["iteration"] = self.iteration
        return out

    def value_scale(self):
        """``(mean, std)`` with which the value head's output maps to a return
        (``V = mean + std * u``): ``(0, 1)`` without value normalisation or before any data; a
        standard deviation below 1e-8 counts as 1."""
        count, mean, m2 = self.value_stats
        if not self.normalize_values or count == 0:
            return 0.0, 1.0
        std = float(np.sqrt(m2 / count))
        return float(mean), (std if std > 1e-8 else 1.0)

    def _merge_value_stats(self, returns):
        """Merge a batch of returns into ``value_stats`` (Chan, Golub and LeVeque's pairwise
        update of count, mean and the sum of squared deviations)."""
        count, mean, m2 = self.value_stats
        n = returns.size
        batch_mean = float(returns.mean())
        batch_m2 = float(((returns - batch_mean) ** 2).sum())
        total = count + n
        delta = batch_mean - mean
        self.value_stats[:] = (total, mean + delta * n / total, m2 + batch_m2 + delta * delta * count * n / total)

    def advantages(self, rollout):
        """GAE advantages and returns (``advantages + values``) of an
        :class:`~metarl_fast.rl2.RL2Rollout`, each float64 (L, T) time-major (0 at padding
        slots), by :func:`gae_trials` over each whole trial with this learner's gamma and
        gae_lambda (not normalised); the values are the value head's outputs mapped by
        :meth:`value_scale`."""
        mask = rollout.mask
        mean, std = self.value_scale()
        values = np.where(mask, mean + std * to_time_major(rollout.value, mask), 0.0)
        advantages = gae_trials(to_time_major(rollout.reward, mask), values, mask, self.gamma,
                                self.gae_lambda)
        return advantages, np.where(mask, advantages + values, 0.0)

    def _update(self, ro, idx, actions, old_logp, norm_adv, returns):
        """One PPO gradient step on the trials ``idx`` of the rollout ``ro``."""
        n_steps = int(ro.trial_length[idx].max())
        inputs = np.ascontiguousarray(ro.inputs[:n_steps, idx])
        resets = np.ascontiguousarray(ro.resets[:n_steps, idx])
        h0 = np.zeros((idx.size, self.hidden))
        # the backward reuses the forward's activations (the cache) instead of rerunning it
        logits, values, _, cache = active.gru.gru_forward(self.params, inputs, h0, resets,
                                                          return_cache=True)
        sub = (slice(0, n_steps), idx)
        _, dlogits, dvalues, stats = ppo_loss_terms(
            logits, values, actions[sub], old_logp[sub], norm_adv[sub], returns[sub],
            ro.mask[sub], self.clip, self.value_coef, self.entropy_coef)
        grad = active.gru.gru_backward(self.params, inputs, h0, resets, dlogits, dvalues,
                                       cache=cache)
        grad_norm = float(np.sqrt(np.dot(grad, grad)))
        if self.max_grad_norm is not None and grad_norm > self.max_grad_norm:
            grad *= self.max_grad_norm / grad_norm
        self.optimizer.step(grad)  # Adam minimises the loss (= ascends the PPO objective)
        stats["grad_norm"] = grad_norm
        return stats

    # ------------------------------------------------------------------ persistence
    def state_dict(self):
        """Parameters, Adam state and iteration as a dict of NumPy arrays (copies); with the
        same ``rng`` afterwards, a learner that loads it continues bit for bit."""
        d = {"version": np.array(LEARNER_STATE_VERSION, dtype=np.int64),
             "shape": np.array([self.n_states, self.n_actions, self.hidden,
                                self.episodes_per_trial], dtype=np.int64),
             "params": self.params.copy(),
             "normalize_values": np.array(self.normalize_values),
             "value_stats": self.value_stats.copy(),
             "iteration": np.array(self.iteration, dtype=np.int64)}
        d.update({f"adam_{k}": v for k, v in self.optimizer.state_dict().items()})
        return d

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict` into this learner (same n_states, n_actions, hidden and
        episodes_per_trial).  Nothing changes if it is rejected (ValueError/TypeError)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        try:
            version = int(np.asarray(state_dict["version"]))
            shape = np.asarray(state_dict["shape"])
            params = np.asarray(state_dict["params"])
            iteration = np.asarray(state_dict["iteration"])
            normalize_values = np.asarray(state_dict["normalize_values"])
            value_stats = np.asarray(state_dict["value_stats"])
        except KeyError as err:
            raise ValueError(f"state_dict is missing {err}") from err
        if version != LEARNER_STATE_VERSION:
            raise ValueError(f"state_dict has version {version}, expected {LEARNER_STATE_VERSION}")
        expected = (self.n_states, self.n_actions, self.hidden, self.episodes_per_trial)
        if shape.shape != (4,) or tuple(int(v) for v in shape) != expected:
            raise ValueError(f"state_dict is for (n_states, n_actions, hidden, "
                             f"episodes_per_trial) = {tuple(shape.tolist())}, this learner is "
                             f"{expected}")
        if params.shape != self.params.shape or params.dtype != np.float64:
            raise ValueError(f"state_dict params has shape {params.shape} and dtype "
                             f"{params.dtype}, expected {self.params.shape} float64")
        if not np.all(np.isfinite(params)):
            raise ValueError("state_dict params contains NaN or inf")
        if (iteration.shape != () or not isinstance(iteration.item(), numbers.Integral)
                or iteration.item() < 0):
            raise ValueError(f"state_dict iteration must be an int >= 0, got {iteration!r}")
        if normalize_values.shape != () or normalize_values.dtype != np.bool_:
            raise ValueError(f"state_dict normalize_values must be a bool, got {normalize_values!r}")
        if bool(normalize_values) != self.normalize_values:
            raise ValueError(f"state_dict was saved with normalize_values={bool(normalize_values)}, "
                             f"this learner has normalize_values={self.normalize_values}")
        if (value_stats.shape != (3,) or value_stats.dtype != np.float64
                or not np.all(np.isfinite(value_stats)) or value_stats[0] < 0 or value_stats[2] < 0):
            raise ValueError("state_dict value_stats must be 3 finite float64 (count >= 0, mean, "
                             f"sum of squared deviations >= 0), got {value_stats!r}")
        adam = {k[5:]: v for k, v in state_dict.items() if k.startswith("adam_")}
        probe = Adam(params.copy(), lr=self.optimizer.lr)
        probe.load_state_dict(adam)  # validates without touching self
        self.optimizer.load_state_dict(adam)
        self.params[...] = params
        self.value_stats[:] = value_stats
        self.iteration = int(iteration.item())

    def __repr__(self):
        return (f"RL2Learner(n_states={self.n_states}, n_actions={self.n_actions}, "
                f"hidden={self.hidden}, episodes_per_trial={self.episodes_per_trial}, "
                f"iteration={self.iteration})")
