"""Policy-gradient estimator kernels of the meta-learners, in NumPy: the specification of
``_core/meta.pyx``.

All work on flat batches of ``n`` steps from ``T`` tasks whose policies are per-state tables of
``T * S`` rows (row ``key[i] = task_id[i] * S + obs[i]``):

- :func:`pg_prepare`: per-step action probabilities and REINFORCE coefficients
  ``coef_i = gamma^t_i (G_i - b_i) / N`` (discounted return-to-go ``G``, N episodes per task) with
  a per-time-step baseline ``b_i`` chosen by ``baseline``: ``BASELINE_LOO`` (1), the mean of ``G_t``
  over the task's *other* episodes that reached step ``t`` (0 when none did): independent of the
  episode it is applied to, so the estimate is unbiased for every N >= 1; ``BASELINE_MEAN`` (2),
  the mean over *all* the task's episodes that reached ``t``, own episode included: biased, the
  expectation is ``(1 - 1/N)`` times the gradient when every episode reaches ``t`` (exactly 0 at
  N = 1); ``BASELINE_NONE`` (0): ``b = 0``;
- :func:`score_table`: ``sum_i coef_i (onehot(a_i) - pi_i)`` accumulated into the rows ``key[i]``
  (the gradient w.r.t. the logits table);
- :func:`hvp_table`: ``(d E[g] / d logits)^T dl`` for a direction ``dl`` of the logits table: the
  Hessian of the surrogate, ``-coef_i (diag pi_i - pi_i pi_i^T) dl[key_i]``, plus the
  score-function term ``kappa_e (onehot(a_i) - pi_i) / N`` with ``kappa_e = F_e . dl`` minus the
  leave-one-out mean over the task's other episodes (a control variate with zero mean).
"""
import numpy as np

from metarl_fast.reference.pg import discounted_returns


BASELINE_NONE, BASELINE_LOO, BASELINE_MEAN = 0, 1, 2


def pg_prepare(probs_table, key, actions, rewards, dones, steps, task_id, n_tasks, gamma, n_episodes,
               baseline, probs_out, coef_out):
    """Fill ``probs_out`` (n, A) and ``coef_out`` (n,) (see the module docstring)."""
    n = key.shape[0]
    probs_out[...] = probs_table[key]
    returns = discounted_returns(rewards, dones, gamma)
    horizon = int(steps.max()) + 1 if n else 1
    slot = task_id * horizon + steps
    counts = np.bincount(slot, minlength=n_tasks * horizon)
    sums = np.bincount(slot, weights=returns, minlength=n_tasks * horizon)
    if baseline == BASELINE_LOO:
        others = counts[slot] - 1.0
        b = np.where(others > 0, (sums[slot] - returns) / np.maximum(others, 1.0), 0.0)
    elif baseline == BASELINE_MEAN:
        b = sums[slot] / counts[slot]
    else:
        b = 0.0
    coef_out[...] = gamma ** steps.astype(np.float64) * (returns - b) / n_episodes


def score_table(key, actions, probs, coef, table_out):
    """``table_out[key_i] += coef_i (onehot(a_i) - probs_i)`` after zeroing ``table_out``."""
    n, A = probs.shape
    per_step = -probs * coef[:, None]
    per_step[np.arange(n), actions] += coef
    _scatter(key, per_step, table_out)


def hvp_table(key, actions, probs, coef, episode, n_tasks, n_episodes, dl_table, table_out):
    """Hessian-vector product of the REINFORCE surrogate incl. the score-function term.

    ``episode`` (n,) numbers the episodes ``task * n_episodes + e``, ``0 <= e < n_episodes``.
    """
    n, A = probs.shape
    rows = np.arange(n)
    dl = dl_table[key]
    pd = (probs * dl).sum(axis=1)
    dlogp = dl[rows, actions] - pd
    per_step = -coef[:, None] * (probs * dl - probs * pd[:, None])
    fv = np.bincount(episode, weights=n_episodes * coef * dlogp, minlength=n_tasks * n_episodes)
    fv = fv.reshape(n_tasks, n_episodes)
    if n_episodes > 1:
        kappa = fv - (fv.sum(axis=1, keepdims=True) - fv) / (n_episodes - 1)
    else:
        kappa = fv
    k_step = kappa.reshape(-1)[episode] / n_episodes
    score = -probs * k_step[:, None]
    score[rows, actions] += k_step
    _scatter(key, per_step + score, table_out)


def _scatter(key, per_step, table_out):
    rows, A = table_out.shape
    for a in range(A):
        table_out[:, a] = np.bincount(key, weights=per_step[:, a], minlength=rows)
