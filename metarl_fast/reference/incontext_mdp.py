"""In-context MDP learner kernels in pure NumPy: the executable specification of
``_core/incontext_mdp.pyx``.

A *trial* is ``n_episodes`` episodes on ONE task of an :class:`~metarl_fast.tasks.EnvTables`
(``S`` states, ``A`` actions, horizon ``H``; the environment semantics of
:mod:`metarl_fast.reference.envs`).  The agent does not know the task.  Across the episodes of the
trial it keeps, per task,

- ``count[s, a]``         visits of ``(s, a)``;
- ``reward_sum[s, a]``    observed rewards summed in step order;
- ``trans[s, a, s']``     observed transitions;
- ``visits[s]``           visits of ``s``;
- ``seen_terminal[s]``    whether entering ``s`` has ended an episode.

At the start of every episode it runs a finite-horizon value iteration on the empirical model
(:func:`empirical_q`), and before each step, in state ``s`` with ``h`` steps left in the episode, it
scores every action ``a`` with ``N_FEATURES`` features and draws from ``softmax(features @
weights)``: the same weights score every action, so the policy is symmetric in the actions.  With
``n = count[s, a]``, ``d = n + 1``, ``rho = (n_episodes * H - k) / (n_episodes * H)`` the fraction
of the trial's nominal steps left (``k = e * H + t``, step ``t`` of episode ``e``):

====  ==============================  ===================================================
 0    ``reward_sum / d``              mean reward shrunk towards 0 (one pseudo-visit)
 1    ``1 / sqrt(d)``                 optimism bonus
 2    ``rho / sqrt(d)``               optimism that fades as the trial runs out
 3    ``n / (visits[s] + 1)``         fraction of the visits of ``s`` spent on ``a``
 4    ``Qe[h, s, a]``                 empirical Q-value with ``h`` steps left
 5    ``Qo[h, s, a]``                 optimistic Q-value with ``h`` steps left
 6    ``1.0 if Qe == max_b Qe[h, s, b] else 0.0``  the empirically greedy actions
 7    ``(Qo - Qe) * rho``             the value of exploring, fading with the trial
====  ==============================  ===================================================

Empirical values (``V_0 = Vo_0 = 0``; ``V_h(s') = 0`` for a ``seen_terminal`` state)::

    Qe_h(s, a) = (reward_sum + sum_s' trans[s, a, s'] V_{h-1}(s')) / d
    Qo_h(s, a) = (reward_sum + sum_s' trans[s, a, s'] Vo_{h-1}(s') + max_s' Vo_{h-1}(s')) / d + 1 / sqrt(d)

``Qe`` is the exact finite-horizon Q of the empirical model in which one phantom visit of every
``(s, a)`` paid 0 and ended the episode; ``Qo`` sends that phantom visit to the best state instead
and adds the bonus.  The sums over ``s'`` run sequentially in ``s'`` order in both backends (and
every other float operation in the same order), so features and actions are bit-identical.

Random draws, identical in both backends and exactly those of
:func:`metarl_fast.reference.envs.rollout` (each one bulk call on ``rng``; entry ``[i, e, t]``
serves step ``t`` of episode ``e`` of task ``i``; entries after an episode ended go unused):

1. ``rng.random((T, N))``     start states, only if some task has a random start;
2. ``rng.random((T, N, H))``  actions: the inverse-CDF rule of
   :func:`metarl_fast.reference.policy.sample_actions` on ``exp_nonpos(logits - max)``;
3. reward noise ``(T, N, H)``: ``rng.standard_normal`` (gaussian) or ``rng.random`` (bernoulli);
4. ``rng.random((T, N, H))``  next states, only if some transition is random;
5. ``rng.random((T, N, H))``  reward outcomes, only for ``"outcome"`` rewards.

So with zero weights (the uniform policy) a trial takes exactly the actions and rewards of
``rollout`` with a uniform tabular policy.  The blocks are held for the whole call: up to three
float64 per step slot (``T * N * H``), as in ``rollout``.
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast.reference._math import exp_nonpos, linear_logits
from metarl_fast.reference.incontext import check_record
from metarl_fast.reference.envs import (_draw_noise, _draw_reward_outcomes, _flat_sa, _inverse_cdf,
                                        _next_states, _rewards, _transition_rewards, check_tables)
from metarl_fast.tasks import REWARD_OUTCOME, REWARD_TRANSITION

N_FEATURES = 8
FEATURE_NAMES = ("mean_reward", "bonus", "bonus_x_remaining", "visit_fraction", "q_empirical",
                 "q_optimistic", "is_greedy", "optimism_x_remaining")
# Larger weights are refused; logits that still overflow (huge rewards) raise FloatingPointError.
MAX_ABS_WEIGHT = 1e100
NONFINITE_MESSAGE = ("non-finite logits in the in-context MDP trial: the weights are too large "
                     "for these rewards (or the empirical values overflow float64)")


# ------------------------------------------------------------------ boundary checks (both backends)
def check_weights(weights, name="weights"):
    """``weights`` as a C-contiguous float64 (N_FEATURES,) array, finite and ``|w| <= 1e100``."""
    return _validate.weight_vector(weights, N_FEATURES, name, MAX_ABS_WEIGHT)


def check_trial_inputs(weights, tables, n_episodes, rng):
    """The shared validation of :func:`run_trials` and :func:`reinforce_trials`."""
    w = check_weights(weights)
    check_tables(tables)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    _validate.check_rng(rng)
    # the kernels draw the trials' uniforms up front: one table of n_tasks x n_episodes x horizon
    _validate.check_table_size(tables.n_tasks * n_episodes * tables.horizon,
                               f"n_episodes={n_episodes:,}: trials of n_tasks x n_episodes x horizon "
                               f"= {tables.n_tasks} x {n_episodes:,} x {tables.horizon} steps")
    return w, n_episodes


def check_statistics(count, reward_sum, trans, seen_terminal, horizon):
    """Validation of :func:`empirical_q`; returns float64 C-contiguous copies and the horizon."""
    c = _validate.float_array(np.asarray(count, dtype=np.float64)
                              if isinstance(count, np.ndarray) and count.dtype.kind in "iu"
                              else count, "count", ndim=3).astype(np.float64, copy=False)
    n, S, A = c.shape
    if n < 1 or S < 1 or A < 1:
        raise ValueError(f"count must have shape (n_tasks, S, A) with all >= 1, got {c.shape}")
    r = _validate.float_array(reward_sum, "reward_sum", ndim=3).astype(np.float64, copy=False)
    if r.shape != c.shape:
        raise ValueError(f"reward_sum must have shape {c.shape}, got {r.shape}")
    p = _validate.float_array(np.asarray(trans, dtype=np.float64)
                              if isinstance(trans, np.ndarray) and trans.dtype.kind in "iu"
                              else trans, "trans", ndim=4).astype(np.float64, copy=False)
    if p.shape != (n, S, A, S):
        raise ValueError(f"trans must have shape {(n, S, A, S)}, got {p.shape}")
    term = np.asarray(seen_terminal)
    if term.dtype != np.bool_:
        raise TypeError(f"seen_terminal must be a bool array, got {_validate.got(term)}")
    if term.shape != (n, S):
        raise ValueError(f"seen_terminal must have shape {(n, S)}, got {term.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
        raise ValueError("count, reward_sum and trans must be finite")
    if c.min() < 0 or p.min() < 0:
        raise ValueError("count and trans must be >= 0")
    horizon = _validate.positive_int(horizon, "horizon")
    return (np.ascontiguousarray(c), np.ascontiguousarray(r), np.ascontiguousarray(p),
            np.ascontiguousarray(term), horizon)


# ------------------------------------------------------------------ kernels
def _empirical_q(count, reward_sum, trans, seen_terminal, horizon):
    """(Qe, Qo), each float64 (n, horizon, S, A) with ``[:, h - 1]`` for ``h`` steps left."""
    n, S, A = count.shape
    denom = count + 1.0
    bonus = 1.0 / np.sqrt(denom)
    q_emp = np.empty((n, horizon, S, A))
    q_opt = np.empty((n, horizon, S, A))
    v = np.zeros((n, S))
    vo = np.zeros((n, S))
    vo_max = np.zeros(n)
    for h in range(horizon):
        acc = reward_sum.copy()
        acc_o = reward_sum.copy()
        for s2 in range(S):  # sequential over s': the Cython twin sums in the same order
            acc = acc + trans[..., s2] * v[:, None, None, s2]
            acc_o = acc_o + trans[..., s2] * vo[:, None, None, s2]
        q = acc / denom
        qo = (acc_o + vo_max[:, None, None]) / denom + bonus
        q_emp[:, h] = q
        q_opt[:, h] = qo
        v = np.where(seen_terminal, 0.0, q.max(axis=2))
        vo = np.where(seen_terminal, 0.0, qo.max(axis=2))
        vo_max = vo.max(axis=1)
    return q_emp, q_opt


def empirical_q(count, reward_sum, trans, seen_terminal, horizon):
    """Finite-horizon empirical and optimistic Q-values of the learner's statistics.

    Parameters
    ----------
    count : float or int (n_tasks, S, A)      visits of each (s, a), >= 0
    reward_sum : float (n_tasks, S, A)        observed rewards summed
    trans : float or int (n_tasks, S, A, S)   observed transitions, >= 0
    seen_terminal : bool (n_tasks, S)         states known to end an episode (value 0)
    horizon : int >= 1

    Returns
    -------
    q_empirical, q_optimistic : float64 (n_tasks, horizon, S, A)
        ``[:, h - 1]`` holds the values with ``h`` steps left (formulas in the module docstring).
    """
    return _empirical_q(*check_statistics(count, reward_sum, trans, seen_terminal, horizon))


def _step_features(cnt, rs, visits, qe, qo, rho):
    """Features (L, A, N_FEATURES) of the current state's rows (L, A); no validation."""
    denom = cnt + 1.0
    phi = np.empty(cnt.shape + (N_FEATURES,))
    phi[..., 0] = rs / denom
    phi[..., 1] = 1.0 / np.sqrt(denom)
    phi[..., 2] = phi[..., 1] * rho
    phi[..., 3] = cnt / (visits[:, None] + 1.0)
    phi[..., 4] = qe
    phi[..., 5] = qo
    phi[..., 6] = (qe == qe.max(axis=1, keepdims=True)).astype(np.float64)
    phi[..., 7] = (qo - qe) * rho
    return phi


_logits = linear_logits  # (feature by feature: bit-identical to the Cython kernel's sums)


def _play(w, tables, n_episodes, rng, want_grad, actions_out, features_out=None, rewards_out=None):
    # overflowing rewards end in FloatingPointError below; numpy's own warnings add nothing
    with np.errstate(over="ignore", invalid="ignore"):
        return _play_trials(w, tables, n_episodes, rng, want_grad, actions_out, features_out,
                            rewards_out)


def _play_trials(w, tables, n_episodes, rng, want_grad, actions_out, features_out, rewards_out):
    t = tables
    T, N, H, S, A = t.n_tasks, n_episodes, t.horizon, t.n_states, t.n_actions
    K = N * H
    u_start = rng.random((T, N)) if t.stochastic_start else None
    u_act = rng.random((T, N, H))
    noise = _draw_noise(t, rng, (T, N, H))
    u_next = rng.random((T, N, H)) if t.stochastic_transitions else None
    u_reward = _draw_reward_outcomes(t, rng, (T, N, H))

    count = np.zeros((T, S, A))
    reward_sum = np.zeros((T, S, A))
    trans = np.zeros((T, S, A, S))
    visits = np.zeros((T, S))
    seen_terminal = np.zeros((T, S), dtype=bool)
    returns = np.zeros((T, N))
    tasks = np.arange(T)
    if actions_out is not None:
        actions_out[...] = -1
    if features_out is not None:
        features_out[...] = 0.0
    if rewards_out is not None:
        rewards_out[...] = 0.0
    if want_grad:
        cum_score = np.zeros((T, N_FEATURES))
        weighted_score = np.zeros(N_FEATURES)
        score_sums = np.zeros((K, N_FEATURES))
        reward_sums = np.zeros(K)
    for e in range(N):
        q_emp, q_opt = _empirical_q(count, reward_sum, trans, seen_terminal, H)
        s = (_inverse_cdf(t.start_cdf, u_start[:, e]) if t.stochastic_start
             else t.start_state.copy())
        live = tasks
        for step in range(H):
            k = e * H + step
            rho = float(K - k) / float(K)
            st = s[live]
            phi = _step_features(count[live, st], reward_sum[live, st], visits[live, st],
                                 q_emp[live, H - step - 1, st], q_opt[live, H - step - 1, st], rho)
            logits = _logits(phi, w)
            if not np.all(np.isfinite(logits)):
                raise FloatingPointError(NONFINITE_MESSAGE)
            ex = exp_nonpos(logits - logits.max(axis=1, keepdims=True))
            cdf = np.cumsum(ex, axis=1)
            # the number of the first A - 1 running sums <= u * total (the rule of sample_actions)
            target = u_act[live, e, step] * cdf[:, -1]
            a = np.add.reduce(cdf[:, :-1] <= target[:, None], axis=1, dtype=np.int64)
            sa = _flat_sa(t, live, st, a)
            r = _rewards(t, live, sa, None if noise is None else noise[live, e, step])
            s2 = _next_states(t, sa, None if u_next is None else u_next[live, e, step])
            if t.reward_kind == REWARD_TRANSITION:
                r = t.reward_next.reshape(-1)[sa * S + s2]
            elif t.reward_kind == REWARD_OUTCOME:
                r = _transition_rewards(t, sa, s2, u_reward[live, e, step])
            ends = t.terminal.reshape(-1)[live * S + s2].astype(bool)
            count[live, st, a] += 1.0
            reward_sum[live, st, a] += r
            trans[live, st, a, s2] += 1.0
            visits[live, st] += 1.0
            seen_terminal[live, s2] |= ends
            returns[live, e] += r
            if actions_out is not None:
                actions_out[live, e, step] = a
            if features_out is not None:
                features_out[live, e, step] = phi
            if rewards_out is not None:
                rewards_out[live, e, step] = r
            if want_grad:
                probs = ex / cdf[:, -1:]
                rows = np.arange(live.size)
                score = phi[rows, a] - np.einsum("la,laj->lj", probs, phi)
                cum_score[live] += score
                weighted_score += r @ cum_score[live]
                score_sums[k] = score.sum(axis=0)
                reward_sums[k] = r.sum()
            s[live] = s2
            if ends.any():
                live = live[~ends]
                if live.size == 0:
                    break
    if want_grad:
        return returns, weighted_score, score_sums, reward_sums
    return returns


def run_trials(weights, tables, n_episodes, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """Play one trial of ``n_episodes`` episodes on each task with the in-context softmax policy.

    Parameters
    ----------
    weights : float64 (N_FEATURES,)
        Shared per-action feature weights, finite, ``|w| <= 1e100``.
    tables : metarl_fast.tasks.EnvTables
        ``TaskBatch.tables`` of the ``T`` tasks (one trial each).
    n_episodes : int >= 1
    rng : numpy.random.Generator
        Consumed as described in the module docstring.
    actions_out : int64 (T, n_episodes, horizon), optional
        If given, receives the actions taken (``-1`` after an episode ended).
    features_out : float64 (T, n_episodes, horizon, n_actions, N_FEATURES), optional
        If given, receives every action's features at each step (the logits are
        ``features_out[i, e, t] @ weights``; zeros after an episode ended), so that a trial can
        be scored again under other weights (:class:`metarl_fast.pool.TrialPool`).
    rewards_out : float64 (T, n_episodes, horizon), optional
        If given, receives each step's reward (zeros after an episode ended).

    Returns
    -------
    episode_returns : float64 (T, n_episodes)
        Rewards of each episode summed in step order; a trial's total is the row sum.

    Raises
    ------
    FloatingPointError
        If a logit is not finite (weights far too large for the task's rewards).  Raised mid-trial:
        ``rng`` has been advanced and ``actions_out`` may be partly written.
    """
    w, n_episodes = check_trial_inputs(weights, tables, n_episodes, rng)
    if actions_out is not None:
        _validate.check_out(actions_out, (tables.n_tasks, n_episodes, tables.horizon), np.int64,
                            "actions_out")
    check_record(features_out, rewards_out, tables.n_tasks, None, tables.n_actions,
                 (n_episodes, tables.horizon), N_FEATURES)
    return _play(w, tables, n_episodes, rng, False, actions_out, features_out, rewards_out)


def reinforce_trials(weights, tables, n_episodes, rng):
    """Play trials like :func:`run_trials` and accumulate the REINFORCE statistics.

    Step slot ``k = e * horizon + t`` (``K = n_episodes * horizon`` slots; a slot after its
    episode ended contributes nothing).  With ``score[i, k] = d log pi(a[i, k]) / d weights``,
    ``C[i, k] = sum_{k' <= k} score[i, k']`` and rewards ``r[i, k]``::

        grad = (weighted_score - sum_k b[k] * score_sums[k]) / T

    is the policy gradient of the mean total trial reward for any action-independent baseline
    ``b[k]`` (see :func:`metarl_fast.incontext.baselined_gradient`).

    Returns
    -------
    episode_returns : float64 (T, n_episodes)
    weighted_score : float64 (N_FEATURES,)  ``sum_{i,k} r[i, k] * C[i, k]``
    score_sums : float64 (K, N_FEATURES)    ``sum_i score[i, k]``
    reward_sums : float64 (K,)              ``sum_i r[i, k]``
    """
    w, n_episodes = check_trial_inputs(weights, tables, n_episodes, rng)
    return _play(w, tables, n_episodes, rng, True, None)
