"""Policy-gradient estimator kernels of the meta-learners, in NumPy: the specification of
``_core/meta.pyx``.

All work on flat batches of ``n`` steps from ``T`` tasks whose policies are per-state tables of
``T * S`` rows (row ``key[i] = task_id[i] * S + obs[i]``):

- :func:`pg_prepare`: per-step REINFORCE coefficients
  ``coef_i = gamma^t_i (G_i - b_i) / N`` (discounted return-to-go ``G``, N episodes per task) with
  a per-time-step baseline ``b_i`` chosen by ``baseline``: ``BASELINE_LOO`` (1), the mean of ``G_t``
  over the task's *other* episodes that reached step ``t`` (0 when none did): independent of the
  episode it is applied to, so the estimate is unbiased for every N >= 1; ``BASELINE_MEAN`` (2),
  the mean over *all* the task's episodes that reached ``t``, own episode included: biased, the
  expectation is ``(1 - 1/N)`` times the gradient when every episode reaches ``t`` (exactly 0 at
  N = 1); ``BASELINE_NONE`` (0): ``b = 0``;
- :func:`score_table`: ``sum_i coef_i (onehot(a_i) - pi_i)`` accumulated into the rows ``key[i]``
  (the gradient w.r.t. the logits table), the softmax term once per row;
- :func:`hvp_table`: ``(d E[g] / d logits)^T dl`` for a direction ``dl`` of the logits table: the
  Hessian of the surrogate, ``-coef_i (diag pi_i - pi_i pi_i^T) dl[key_i]``, plus the
  score-function term ``kappa_e (onehot(a_i) - pi_i) / N`` with ``kappa_e = F_e . dl`` minus the
  leave-one-out mean over the task's other episodes (a control variate with zero mean).
"""
import numpy as np

from metarl_fast.reference.pg import discounted_returns


BASELINE_NONE, BASELINE_LOO, BASELINE_MEAN = 0, 1, 2


def pg_prepare(key, rewards, dones, steps, task_id, n_tasks, gamma, n_episodes, baseline, coef_out):
    """Fill ``coef_out`` (n,) (see the module docstring)."""
    n = key.shape[0]
    returns = discounted_returns(rewards, dones, gamma)
    horizon = int(steps.max()) + 1 if n else 1
    slot = task_id * horizon + steps
    counts = np.bincount(slot, minlength=n_tasks * horizon).astype(np.float64)
    sums = np.bincount(slot, weights=returns, minlength=n_tasks * horizon)
    # per (task, step) slot, G - b = scale * G - shift: the baseline's division once per slot
    scale, shift = np.ones_like(sums), np.zeros_like(sums)
    if baseline == BASELINE_LOO:      # b = (sum - G) / (count - 1), 0 without other episodes
        has = counts > 1.0
        scale[has] = counts[has] / (counts[has] - 1.0)
        shift[has] = sums[has] / (counts[has] - 1.0)
    elif baseline == BASELINE_MEAN:   # b = sum / count
        has = counts > 0.0
        shift[has] = sums[has] / counts[has]
    weight = gamma ** np.arange(horizon, dtype=np.float64) / n_episodes
    coef_out[...] = weight[steps] * (scale[slot] * returns - shift[slot])


def _cells(key, actions, weights, rows, A):
    """``weights`` summed into their (row, action) cells, step by step; (rows, A)."""
    return np.bincount(key * A + actions, weights=weights, minlength=rows * A).reshape(rows, A)


def _row_sums(x):
    """Row sums in action order (as the compiled kernel adds them), (rows,)."""
    return np.cumsum(x, axis=1)[:, -1]


def score_table(key, actions, probs_table, coef, table_out):
    """``table_out[k] = sum_{i: key_i = k} coef_i (onehot(a_i) - probs_table[k])``.

    Per row: the one-hots of its steps, minus ``(sum_i coef_i) probs_table[k]`` with that sum read
    off the row's cells -- the softmax term once per row, not once per step.
    """
    rows, A = table_out.shape
    if A == 0:
        return
    cells = _cells(key, actions, coef, rows, A)
    table_out[...] = cells - _row_sums(cells)[:, None] * probs_table


def hvp_table(key, actions, probs_table, coef, episode, n_tasks, n_episodes, dl_table, table_out):
    """Hessian-vector product of the REINFORCE surrogate incl. the score-function term.

    ``episode`` (n,) numbers the episodes ``task * n_episodes + e``, ``0 <= e < n_episodes``.
    Per row ``k`` with ``p = probs_table[k]``, ``dl = dl_table[k]``, ``pd = p . dl``:
    ``sum_{i: key_i = k} [kappa_i (onehot(a_i) - p) - coef_i (p dl - p pd)]`` (elementwise
    products), ``kappa_i`` the score weight of step ``i``'s episode.
    """
    rows, A = table_out.shape
    if A == 0:
        return
    p, dl = probs_table, dl_table
    pd = _row_sums(p * dl)
    dlogp = dl[key, actions] - pd[key]
    fv = np.bincount(episode, weights=n_episodes * coef * dlogp, minlength=n_tasks * n_episodes)
    fv = fv.reshape(n_tasks, n_episodes)
    if n_episodes > 1:
        kappa = fv - (fv.sum(axis=1, keepdims=True) - fv) / (n_episodes - 1)
    else:
        kappa = fv
    k_step = kappa.reshape(-1)[episode] / n_episodes
    cells = _cells(key, actions, k_step, rows, A)
    coef_sum = np.bincount(key, weights=coef, minlength=rows)
    table_out[...] = ((cells - _row_sums(cells)[:, None] * p)
                      - coef_sum[:, None] * (p * dl - p * pd[:, None]))
