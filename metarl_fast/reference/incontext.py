"""In-context bandit learner kernels in pure NumPy: the executable specification of
``_core/incontext.pyx``.

A *trial* is ``n_pulls`` pulls of a Bernoulli bandit whose arm means ``p`` (one row of
``arm_means``) the agent does not know.  The agent keeps, per arm, its successes ``s`` and failures
``f`` so far; before each pull it computes ``N_FEATURES`` features per arm from those counts
(:func:`bandit_features`) and pulls an arm from ``softmax(features @ weights)``: the same weight
vector scores every arm, so the policy is symmetric in the arms and works for any number of arms.
This is an RL^2-style learner whose memory is the explicit posterior, not a recurrent state.

Random draws, identical in both backends: all trials of a call advance in lock step; at pull ``t``
the trials first draw their arms, in trial order, each with one ``rng.random()`` uniform by the
inverse-CDF rule of :func:`metarl_fast.reference.policy.sample_actions`; then they draw their
rewards, in trial order, each with one more uniform ``u``: reward ``1`` if ``u < p[arm]`` else
``0``.  Logits are summed feature by feature in index order and exponentiated with
:func:`metarl_fast.reference._math.exp_nonpos`, so both backends pull the same arms.

Per-arm features (``m`` posterior mean under a uniform Beta(1, 1) prior, ``r`` pulls remaining
including the current one, ``n = n_pulls``, ``M`` the largest posterior mean):

====  =================================  ====================================================
 0    ``m = (s + 1) / (c + 2)``          posterior mean, ``c = s + f`` the arm's pull count
 1    ``sd = sqrt(m (1 - m) / (c + 3))`` posterior standard deviation
 2    ``sd * r / n``                     optimism that fades as the trial runs out
 3    ``kg``                             knowledge gradient: expected gain of ``M`` from one
                                         more observation of this arm
 4    ``kg * (r - 1)``                   the KG(*) exploration value of the remaining pulls
 5    ``1.0 if m == M else 0.0``         the arm currently believed best
 6    ``c / n``                          fraction of the trial spent on this arm
 7    ``m * r / n``                      lets the greediness change with the time left
====  =================================  ====================================================

with ``kg = m max(O, (s + 2) / (c + 3)) + (1 - m) max(O, (s + 1) / (c + 3)) - M`` where ``O``
is the largest posterior mean among the *other* arms (``-inf`` if there are none).
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import policy as _policy
from metarl_fast.reference._math import linear_logits

N_FEATURES = 8
FEATURE_NAMES = ("mean", "std", "std_x_remaining", "knowledge_gradient", "kg_x_pulls_left",
                 "is_best", "pull_fraction", "mean_x_remaining")
# Larger weights are refused so that logits (|features| <= n_pulls) can never overflow.
MAX_ABS_WEIGHT = 1e100


# ------------------------------------------------------------------ boundary checks (both backends)
# The longest trial (pulls) the kernels accept: its per-pull score sums are n_pulls x 8 float64.
MAX_PULLS = 2**24


def check_weights(weights, name="weights"):
    """``weights`` as a C-contiguous float64 (N_FEATURES,) array, finite and ``|w| <= 1e100``."""
    return _validate.weight_vector(weights, N_FEATURES, name, MAX_ABS_WEIGHT)


def check_arm_means(arm_means, name="arm_means"):
    """``arm_means`` as a C-contiguous float64 (n_tasks, n_arms) array with values in [0, 1]."""
    if isinstance(arm_means, np.ndarray) and arm_means.dtype.kind in "iub":
        raise TypeError(f"{name} must be a float array, got {_validate.got(arm_means)}")
    p = np.asarray(arm_means)
    if p.dtype.kind not in "f":
        raise TypeError(f"{name} must be a float array, got {_validate.got(p)}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n_tasks, n_arms) with n_arms >= 1, got {p.shape}")
    if np.isnan(p).any():
        raise ValueError(f"{name} contains NaN")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], found values in [{p.min()!r}, {p.max()!r}]")
    return p


def check_trial_inputs(weights, arm_means, n_pulls, rng):
    """The shared validation of :func:`run_trials` and :func:`reinforce_trials`."""
    w = check_weights(weights)
    p = check_arm_means(arm_means)
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    if n_pulls > MAX_PULLS:
        raise ValueError(f"n_pulls must be <= {MAX_PULLS:,} (a trial's per-pull statistics), "
                         f"got {n_pulls:,}")
    _validate.check_rng(rng)
    return w, p, n_pulls


def check_counts(successes, failures, n_remaining, n_pulls):
    """Validation of :func:`bandit_features`; returns float64 (B, K) copies of the counts."""
    for name, value in (("successes", successes), ("failures", failures)):
        if value is None:
            raise TypeError(f"{name} must be an integer array, got None")
    s = _validate.int_array(np.asarray(successes).reshape(-1), "successes", ndim=1, low=0)
    f = _validate.int_array(np.asarray(failures).reshape(-1), "failures", ndim=1, low=0)
    shape = np.shape(successes)
    if len(shape) != 2 or shape[1] < 1:
        raise ValueError(f"successes must have shape (n_tasks, n_arms) with n_arms >= 1, got {shape}")
    if np.shape(failures) != shape:
        raise ValueError(f"failures must have shape {shape}, got {np.shape(failures)}")
    n_pulls = _validate.positive_int(n_pulls, "n_pulls")
    n_remaining = _validate.positive_int(n_remaining, "n_remaining")
    if n_remaining > n_pulls:
        raise ValueError(f"n_remaining must be <= n_pulls ({n_pulls}), got {n_remaining}")
    if s.size and (s + f).reshape(shape).sum(axis=1).max() > n_pulls - n_remaining:
        raise ValueError("successes + failures of a task exceed the pulls already made "
                         f"(n_pulls - n_remaining = {n_pulls - n_remaining})")
    return s.reshape(shape).astype(np.float64), f.reshape(shape).astype(np.float64), n_remaining, n_pulls


# ------------------------------------------------------------------ kernels
def _features(s, f, n_remaining, n_pulls):
    """Features of float64 counts ``s``, ``f`` (B, K) -> (B, K, N_FEATURES); no validation."""
    n_tasks, n_arms = s.shape
    c = s + f
    m = (s + 1.0) / (c + 2.0)
    sd = np.sqrt(m * (1.0 - m) / (c + 3.0))
    rem = float(n_remaining)
    frac = rem / float(n_pulls)
    rows = np.arange(n_tasks)
    best = m.argmax(axis=1)
    top = m[rows, best]
    if n_arms > 1:
        masked = m.copy()
        masked[rows, best] = -np.inf
        second = masked.max(axis=1)
    else:
        second = np.full(n_tasks, -np.inf)
    others = np.broadcast_to(top[:, None], m.shape).copy()
    others[rows, best] = second
    up = (s + 2.0) / (c + 3.0)
    down = (s + 1.0) / (c + 3.0)
    kg = m * np.maximum(others, up) + (1.0 - m) * np.maximum(others, down) - top[:, None]
    phi = np.empty((n_tasks, n_arms, N_FEATURES))
    phi[..., 0] = m
    phi[..., 1] = sd
    phi[..., 2] = sd * frac
    phi[..., 3] = kg
    phi[..., 4] = kg * (rem - 1.0)
    phi[..., 5] = (m == top[:, None]).astype(np.float64)
    phi[..., 6] = c / float(n_pulls)
    phi[..., 7] = m * frac
    return phi


_logits = linear_logits  # (feature by feature: bit-identical to the Cython kernel's sums)


def bandit_features(successes, failures, n_remaining, n_pulls):
    """Per-arm features of the in-context learner (see the module docstring for the table).

    Parameters
    ----------
    successes, failures : int (n_tasks, n_arms)
        Rewards 1 and 0 observed so far on each arm.
    n_remaining : int in [1, n_pulls]
        Pulls left in the trial, including the one about to be made.
    n_pulls : int >= 1
        Length of the trial.

    Returns
    -------
    features : float64 (n_tasks, n_arms, N_FEATURES)
    """
    s, f, n_remaining, n_pulls = check_counts(successes, failures, n_remaining, n_pulls)
    return _features(s, f, n_remaining, n_pulls)


def check_record(features_out, rewards_out, n_tasks, n_slots, n_actions, slot_shape=None,
                 n_features=N_FEATURES):
    """The optional per-step records of a trial call: ``features_out`` float64
    ``(n_tasks, *slot_shape, n_actions, n_features)`` and ``rewards_out`` float64
    ``(n_tasks, *slot_shape)`` (``slot_shape`` defaults to ``(n_slots,)``), C-contiguous and
    writeable; checked before anything is drawn."""
    slot_shape = (n_slots,) if slot_shape is None else tuple(slot_shape)
    if features_out is not None:
        _validate.check_out(features_out, (n_tasks,) + slot_shape + (n_actions, n_features),
                            np.float64, "features_out")
    if rewards_out is not None:
        _validate.check_out(rewards_out, (n_tasks,) + slot_shape, np.float64, "rewards_out")


def _play(w, p, n_pulls, rng, want_grad, actions_out, features_out=None, rewards_out=None):
    n_tasks, n_arms = p.shape
    s = np.zeros((n_tasks, n_arms))
    f = np.zeros((n_tasks, n_arms))
    totals = np.zeros(n_tasks)
    rows = np.arange(n_tasks)
    if want_grad:
        cum_score = np.zeros((n_tasks, N_FEATURES))
        weighted_score = np.zeros(N_FEATURES)
        score_sums = np.zeros((n_pulls, N_FEATURES))
        reward_sums = np.zeros(n_pulls)
    for t in range(n_pulls):
        phi = _features(s, f, n_pulls - t, n_pulls)
        logits = _logits(phi, w)
        arms = _policy.sample_actions(logits, rng)
        rewards = (rng.random(n_tasks) < p[rows, arms]).astype(np.float64)
        if actions_out is not None:
            actions_out[:, t] = arms
        if features_out is not None:
            features_out[:, t] = phi
        if rewards_out is not None:
            rewards_out[:, t] = rewards
        s[rows, arms] += rewards
        f[rows, arms] += 1.0 - rewards
        totals += rewards
        if want_grad:
            probs = _policy.softmax(logits)
            score = phi[rows, arms] - np.einsum("bk,bkj->bj", probs, phi)
            cum_score += score
            weighted_score += rewards @ cum_score
            score_sums[t] = score.sum(axis=0)
            reward_sums[t] = rewards.sum()
    if want_grad:
        return totals, weighted_score, score_sums, reward_sums
    return totals


def run_trials(weights, arm_means, n_pulls, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """Play one trial of ``n_pulls`` pulls on each task with the in-context softmax policy.

    Parameters
    ----------
    weights : float64 (N_FEATURES,)
        Shared per-arm feature weights, finite, ``|w| <= 1e100``.
    arm_means : float (n_tasks, n_arms), values in [0, 1]
        Success probability of every arm of every task.
    n_pulls : int >= 1
    rng : numpy.random.Generator
        Consumed as described in the module docstring (``2 * n_tasks * n_pulls`` uniforms).
    actions_out : int64 (n_tasks, n_pulls), optional
        If given, receives the arm pulled at each step.
    features_out : float64 (n_tasks, n_pulls, n_arms, N_FEATURES), optional
        If given, receives every arm's features at each step (what the policy saw: the logits are
        ``features_out[i, t] @ weights``), so that a trial can be scored again under other
        weights (the in-context replay pool, :class:`metarl_fast.pool.TrialPool`).
    rewards_out : float64 (n_tasks, n_pulls), optional
        If given, receives the reward of each pull.

    Returns
    -------
    totals : float64 (n_tasks,)
        Total reward of each trial (an integer count in ``[0, n_pulls]``).
    """
    w, p, n_pulls = check_trial_inputs(weights, arm_means, n_pulls, rng)
    if actions_out is not None:
        _validate.check_out(actions_out, (p.shape[0], n_pulls), np.int64, "actions_out")
    check_record(features_out, rewards_out, p.shape[0], n_pulls, p.shape[1])
    return _play(w, p, n_pulls, rng, False, actions_out, features_out, rewards_out)


def reinforce_trials(weights, arm_means, n_pulls, rng):
    """Play trials like :func:`run_trials` and accumulate the REINFORCE statistics.

    With ``score[i, t] = d log pi(a[i, t]) / d weights`` (``= phi[a] - sum_b pi_b phi[b]``),
    ``S[i, t] = sum_{t' <= t} score[i, t']`` and rewards ``r[i, t]``, the returns are sums over
    trials that give the per-time-step-baselined policy gradient of the mean total reward
    (reward-to-go form, ``sum_t r_t S_t = sum_t G_t score_t`` with ``G_t = sum_{t' >= t} r_t'``)::

        grad = (weighted_score - sum_t b[t] * score_sums[t]) / n_tasks

    for any baseline ``b[t]`` that does not depend on the trials' actions.  (The batch mean
    reward-to-go ``reward_sums[t:].sum() / n_tasks`` does, through each trial's own share:
    :func:`metarl_fast.incontext.baselined_gradient` uses the other trials' mean instead.)

    Returns
    -------
    totals : float64 (n_tasks,)             total reward of each trial
    weighted_score : float64 (N_FEATURES,)  ``sum_{i,t} r[i, t] * S[i, t]``
    score_sums : float64 (n_pulls, N_FEATURES)  ``sum_i score[i, t]``
    reward_sums : float64 (n_pulls,)        ``sum_i r[i, t]``
    """
    w, p, n_pulls = check_trial_inputs(weights, arm_means, n_pulls, rng)
    return _play(w, p, n_pulls, rng, True, None)
