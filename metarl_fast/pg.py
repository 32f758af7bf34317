"""Policy-gradient updates: returns, advantages, gradients, critics, estimators, fused steps.

Every heavy function dispatches to the active backend's ``pg`` kernels (Cython or the NumPy
reference).  Gradients are of the objective to *maximise*; :func:`policy_gradient_step` ascends it
with an optimizer from :mod:`metarl_fast.optim` in one fused, GIL-free kernel call.

Flat batches: several episodes stored one after the other, ``dones[i]`` true at the last step of
each episode (terminal or end of horizon).  The estimators assume the batch starts at the
beginning of an episode (for ``time_steps``/``per_episode``).

Estimators (each one call, returning a :class:`PGUpdate`):

- :func:`reinforce_gradient`: return-to-go with a baseline (by default leave-one-out: the mean
  return-to-go at the same step of the batch's *other* episodes; or none, a constant, per-step
  values, a learned critic fitted to the returns, or the biased batch mean ``"mean"``);
- :func:`actor_critic_gradient`: TD(0) advantage ``r + gamma V(s') (1 - done) - V(s)`` with a
  :class:`TabularCritic` or :class:`LinearCritic` trained by TD(0);
- :func:`off_policy_gradient`: replayed samples weighted by truncated importance ratios
  ``min(rho_bar, pi(a|s) / mu(a|s))`` from the behaviour log-probabilities stored in the buffer.
  This single-step truncated form is a *biased*, lower-variance approximation (as in off-policy
  actor-critic and V-trace): it ignores the change in the state distribution and caps large
  ratios; its bias vanishes as mu -> pi.  :func:`per_decision_off_policy_gradient` is the
  unbiased (high-variance) per-decision importance-sampling estimator over whole episodes.
"""
from collections import namedtuple

import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.optim import Optimizer
from metarl_fast.policy import LinearSoftmaxPolicy, TabularSoftmaxPolicy
from metarl_fast.reference.pg import check_dones, check_features, check_vector

__all__ = [
    "PGUpdate",
    "discounted_returns",
    "gae",
    "vtrace",
    "clip_grad_norm",
    "truncated_importance_weights",
    "policy_gradient",
    "policy_gradient_step",
    "episode_time_steps",
    "count_episodes",
    "TabularCritic",
    "LinearCritic",
    "leave_one_out_baseline",
    "reinforce_gradient",
    "actor_critic_gradient",
    "off_policy_gradient",
    "per_decision_off_policy_gradient",
]

PGUpdate = namedtuple("PGUpdate", "grad advantages weights grad_norm")
PGUpdate.__doc__ = """Result of an estimator.

grad : ndarray (P,), the gradient of the objective (before clipping), dtype of the policy
advantages : ndarray (B,), the advantages used;  weights : ndarray (B,) or None
grad_norm : float, the L2 norm of ``grad``
"""


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

def discounted_returns(rewards, dones, gamma, bootstrap=None, out=None):
    """Discounted return-to-go over a flat batch of episodes; (B,) of the dtype of ``rewards``.

    ``G[i] = r[i] + gamma (1 - done[i]) G[i+1]`` with ``G[B] = bootstrap`` (default 0): the value
    of the state after the last step when the tail episode was cut short.
    See :func:`metarl_fast.reference.pg.discounted_returns`.
    """
    return active.pg.discounted_returns(rewards, dones, gamma, bootstrap, out)


def gae(rewards, values, next_values, dones, gamma, lam, out=None):
    """Generalised advantage estimates over a flat batch; (B,) of the dtype of ``rewards``.

    See :func:`metarl_fast.reference.pg.gae`.
    """
    return active.pg.gae(rewards, values, next_values, dones, gamma, lam, out)


def vtrace(rewards, values, next_values, log_rhos, ends, gamma, rho_bar=None, c_bar=None):
    """V-trace targets and policy-gradient advantages ``(vs, advantages)`` over trajectory pieces
    of a behaviour policy (IMPALA; pieces end at ``ends``, bootstrapped by ``next_values``).

    See :func:`metarl_fast.reference.pg.vtrace`.
    """
    return active.pg.vtrace(rewards, values, next_values, log_rhos, ends, gamma, rho_bar, c_bar)


def clip_grad_norm(grad, max_norm):
    """Scale ``grad`` (float (P,)) in place to L2 norm <= ``max_norm``; returns the norm before."""
    return active.pg.clip_grad_norm(grad, max_norm)


def truncated_importance_weights(log_probs, behaviour_log_probs, rho_bar=1.0, out=None):
    """``min(rho_bar, exp(log_probs - behaviour_log_probs))``; ``rho_bar=None``: untruncated."""
    return active.pg.truncated_importance_weights(log_probs, behaviour_log_probs, rho_bar, out)


_LINEAR = {TabularSoftmaxPolicy: False, LinearSoftmaxPolicy: True}


def _kind(policy):
    if isinstance(policy, TabularSoftmaxPolicy):
        return False
    if isinstance(policy, LinearSoftmaxPolicy):
        return True
    raise TypeError(f"policy must be a TabularSoftmaxPolicy or LinearSoftmaxPolicy, "
                    f"got {type(policy).__name__}")


def _no_features(features):
    if features is not None:
        raise ValueError("features= is for a LinearSoftmaxPolicy fed states; a "
                         "TabularSoftmaxPolicy takes the states alone")


def policy_gradient(policy, obs, actions, advantages, *, weights=None, entropy_coef=0.0, out=None,
                    features=None):
    """Gradient of ``mean_i w_i A_i log pi(a_i|s_i) + entropy_coef mean_i H(pi(.|s_i))``.

    Parameters
    ----------
    policy : TabularSoftmaxPolicy or LinearSoftmaxPolicy
    obs : int (B,) states (tabular, or linear with ``features``) or real (B, F) features (linear)
    actions : int (B,) in [0, A)
    advantages : float (B,), finite;  weights : float (B,), optional
    entropy_coef : float
    out : ndarray shaped like ``policy.params``, optional
    features : real (S, F), optional, linear policies only: the feature row of each state, so
        that ``obs`` are int states in [0, S).  The same gradient as ``obs=features[obs]``,
        computed per state (each visited state's logits and softmax once) when S <= B.

    Returns
    -------
    grad : ndarray shaped like ``policy.params`` (same dtype).  Tabular: scattered into the rows
    of ``theta``; linear: ``[phi^T G, sum G]`` with ``G = w A (onehot - pi) / B``.
    """
    if _kind(policy):
        if features is not None:
            return active.pg.linear_states_policy_gradient(
                policy.params, policy.n_features, policy.n_actions, features, obs, actions,
                advantages, weights, entropy_coef, out)
        return active.pg.linear_policy_gradient(policy.params, policy.n_features, policy.n_actions,
                                                obs, actions, advantages, weights, entropy_coef,
                                                out)
    _no_features(features)
    return active.pg.tabular_policy_gradient(policy.params, policy.n_states, policy.n_actions, obs,
                                             actions, advantages, weights, entropy_coef, out)


def policy_gradient_step(policy, optimizer, obs, actions, advantages, *, weights=None,
                         entropy_coef=0.0, max_grad_norm=None, grad_out=None, features=None):
    """Fused: gradient of the batch, clipping, and one optimizer step that *ascends* the objective.

    One kernel call without the GIL and without returning to Python per sample.  Arguments as
    :func:`policy_gradient` (``features``: linear policies fed states); ``optimizer`` must
    update ``policy.params`` (built from this policy);
    ``max_grad_norm`` None: no clipping; ``grad_out`` (shaped like params) receives the gradient
    before clipping.  A rejected call changes nothing (params, optimizer state, step count).

    Returns
    -------
    grad_norm : float, L2 norm of the gradient before clipping
    """
    linear = _LINEAR.get(type(policy))
    if linear is None:
        linear = _kind(policy)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an SGD or Adam optimizer, got {type(optimizer).__name__}")
    params = policy.params
    if optimizer.params is not params:
        raise ValueError("optimizer does not update this policy's params (build it with the policy)")
    if grad_out is None:
        grad_out = optimizer._grad
    opt_kind, hyper = optimizer._fused_hyper()
    if features is not None:
        if not linear:
            _no_features(features)
        norm = active.pg.linear_states_pg_step(params, policy.n_features, policy.n_actions,
                                               features, obs, actions, advantages, weights,
                                               entropy_coef, max_grad_norm, grad_out, opt_kind,
                                               optimizer.state, hyper)
    elif linear:
        norm = active.pg.linear_pg_step(params, policy.n_features, policy.n_actions, obs,
                                        actions, advantages, weights, entropy_coef, max_grad_norm,
                                        grad_out, opt_kind, optimizer.state, hyper)
    else:
        norm = active.pg.tabular_pg_step(params, policy.n_states, policy.n_actions, obs,
                                         actions, advantages, weights, entropy_coef, max_grad_norm,
                                         grad_out, opt_kind, optimizer.state, hyper)
    optimizer.steps += 1
    return norm


def fused_step(policy, optimizer, features=None):
    """:func:`policy_gradient_step` bound once to ``policy`` and ``optimizer``, for hot loops.

    ``features`` (S, F), linear policies only: the steps take int states, as with
    ``policy_gradient_step(..., features=features)``; the table is validated and copied here, once.

    Returns ``step``; ``step(obs, actions, advantages, weights=None, entropy_coef=0.0,
    max_grad_norm=None)`` computes the same update as ``policy_gradient_step(policy, optimizer,
    ...)`` (the optimizer's step count advances, a rejected call changes nothing) and returns the
    gradient's norm before clipping, without re-reading the policy and the optimizer's arrays on
    each call: a call on a small batch costs less.  The step uses the backend active when it was
    built, and raises ValueError if the policy or the optimizer no longer holds the arrays it was
    bound to (``set_params`` and ``load_state_dict`` write in place and keep them).  The unclipped
    gradient is written into ``optimizer``'s scratch buffer.
    """
    linear = _LINEAR.get(type(policy))
    if linear is None:
        linear = _kind(policy)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an SGD or Adam optimizer, got {type(optimizer).__name__}")
    if optimizer.params is not policy.params:
        raise ValueError("optimizer does not update this policy's params (build it with the policy)")
    opt_kind, _ = optimizer._fused_hyper()
    n_rows = policy.n_features if linear else policy.n_states
    if features is not None:
        if not linear:
            _no_features(features)
        features = check_features(features, policy.n_features, policy.dtype, "features").copy()
        if features.shape[0] < 1:
            raise ValueError("features must have at least one row (one per state)")
    return active.pg.FusedStep(policy, optimizer, linear, n_rows, policy.n_actions, opt_kind,
                               features)


# ---------------------------------------------------------------------------------------------
# Episode helpers
# ---------------------------------------------------------------------------------------------

def _dones(dones):
    arr = np.asarray(dones)
    if arr.ndim != 1:
        raise ValueError(f"dones must be 1-D, got shape {arr.shape}")
    return check_dones(arr, arr.shape[0])


def episode_time_steps(dones):
    """Step index ``t`` of each sample inside its episode (the batch starts an episode); int64 (B,)."""
    d = _dones(dones).astype(bool)
    n = d.shape[0]
    idx = np.arange(n, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    if n > 1:
        starts[1:] = np.where(d[:-1], idx[1:], 0)
    return idx - np.maximum.accumulate(starts)


def count_episodes(dones):
    """Number of (possibly unfinished) episodes in a flat batch."""
    d = _dones(dones)
    if d.shape[0] == 0:
        return 0
    return int(d.sum()) + (0 if d[-1] else 1)


# ---------------------------------------------------------------------------------------------
# Critics
# ---------------------------------------------------------------------------------------------

class TabularCritic:
    """State values ``V[s]`` trained by batch TD(0) (semi-gradient, mean over the batch).

    Parameters
    ----------
    n_states : int >= 1;  lr : float >= 0 (step size of :meth:`td_update`/:meth:`fit_returns`)
    dtype : float32 or float64;  values : real (n_states,), optional initial values (default 0)

    Attributes
    ----------
    params : ndarray (n_states,), the values (updated in place; ``values`` is the same array)
    """

    def __init__(self, n_states, lr=0.1, dtype=np.float64, values=None):
        self.n_states = _validate.positive_int(n_states, "n_states")
        _validate.check_table_size(self.n_states, f"TabularCritic(n_states={self.n_states:,}): its values")
        self.lr = _validate.finite_float(lr, "lr", low=0.0)
        dtype = np.dtype(dtype)
        if dtype not in _validate.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.params = np.zeros(self.n_states, dtype=dtype)
        if values is not None:
            self.params[...] = check_vector(values, "values", self.n_states, dtype)
        self.values = self.params

    def value(self, obs):
        """``V[obs]`` for int states (B,); returns (B,)."""
        return self.params[_validate.int_array(obs, "obs", ndim=1, low=0, high=self.n_states)]

    def td_update(self, obs, rewards, next_obs, dones, gamma, lr=None):
        """One batch TD(0) step; returns the TD errors (computed before the step), (B,)."""
        lr = self.lr if lr is None else lr
        return active.pg.tabular_td_update(self.params, obs, rewards, next_obs, dones, gamma, lr)

    def fit_returns(self, obs, returns, lr=None):
        """One Monte-Carlo regression step towards ``returns``; returns ``returns - V(obs)``."""
        lr = self.lr if lr is None else lr
        n = np.shape(obs)[0] if np.ndim(obs) >= 1 else 0
        return active.pg.tabular_td_update(self.params, obs, returns, obs, np.ones(n, np.uint8),
                                           0.0, lr)

    def __repr__(self):
        return f"TabularCritic(n_states={self.n_states}, lr={self.lr}, dtype={self.params.dtype})"


class LinearCritic:
    """Linear state values ``V(phi) = phi @ w + c`` trained by batch TD(0).

    Parameters
    ----------
    n_features : int >= 1;  lr : float >= 0;  dtype : float32 or float64

    Attributes
    ----------
    params : ndarray (n_features + 1,), ``[w, c]``;  w, c : views (``c`` is a 0-d view)
    """

    def __init__(self, n_features, lr=0.01, dtype=np.float64):
        self.n_features = _validate.positive_int(n_features, "n_features")
        _validate.check_table_size(self.n_features + 1,
                                   f"LinearCritic(n_features={self.n_features:,}): its weights")
        self.lr = _validate.finite_float(lr, "lr", low=0.0)
        dtype = np.dtype(dtype)
        if dtype not in _validate.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.params = np.zeros(self.n_features + 1, dtype=dtype)
        self.w = self.params[: self.n_features]
        self.c = self.params[self.n_features:]

    def value(self, obs):
        """``phi @ w + c`` for features (B, F); returns (B,)."""
        x = check_features(obs, self.n_features, self.params.dtype, "obs")
        return x @ self.w + self.c[0]

    def td_update(self, obs, rewards, next_obs, dones, gamma, lr=None):
        """One batch TD(0) step; returns the TD errors (computed before the step), (B,)."""
        lr = self.lr if lr is None else lr
        return active.pg.linear_td_update(self.params, self.n_features, obs, rewards, next_obs,
                                          dones, gamma, lr)

    def fit_returns(self, obs, returns, lr=None):
        """One Monte-Carlo regression step towards ``returns``; returns ``returns - V(obs)``."""
        lr = self.lr if lr is None else lr
        n = np.shape(obs)[0] if np.ndim(obs) >= 1 else 0
        return active.pg.linear_td_update(self.params, self.n_features, obs, returns, obs,
                                          np.ones(n, np.uint8), 0.0, lr)

    def __repr__(self):
        return f"LinearCritic(n_features={self.n_features}, lr={self.lr}, dtype={self.params.dtype})"


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------

def _apply(policy, obs, actions, advantages, weights, entropy_coef, optimizer, max_grad_norm):
    if optimizer is None:
        grad = policy_gradient(policy, obs, actions, advantages, weights=weights,
                               entropy_coef=entropy_coef)
        g = grad.astype(np.float64)
        return PGUpdate(grad, advantages, weights, float(np.sqrt(g @ g)))
    grad = np.empty_like(policy.params)
    norm = policy_gradient_step(policy, optimizer, obs, actions, advantages, weights=weights,
                                entropy_coef=entropy_coef, max_grad_norm=max_grad_norm,
                                grad_out=grad)
    return PGUpdate(grad, advantages, weights, norm)


def _episode_weights(dones, batch, gamma, discount_states, per_episode, dtype):
    """Per-sample weights gamma^t (``discount_states``) times B / n_episodes (``per_episode``)."""
    if not (discount_states or per_episode):
        return None
    w = np.ones(batch, dtype=np.float64)
    if discount_states:
        w = gamma ** episode_time_steps(dones).astype(np.float64)
    if per_episode and batch:
        w = w * (batch / count_episodes(dones))
    return w.astype(dtype)


def leave_one_out_baseline(returns, dones):
    """Per-sample leave-one-out baseline over a flat batch of episodes; float64 (B,).

    For the sample at step ``t`` of episode ``e``: the mean of ``returns`` at step ``t`` over the
    batch's *other* episodes that reached step ``t``, or 0 when no other episode did.  Episodes are
    delimited by ``dones`` and the batch starts at an episode start (see
    :func:`episode_time_steps`).  It depends only on the other episodes, so subtracting it leaves
    the policy-gradient estimate unbiased when the episodes are independent.
    """
    g = np.asarray(returns, dtype=np.float64)
    t = episode_time_steps(dones)
    if g.shape != t.shape:
        raise ValueError(f"returns has length {g.shape[0] if g.ndim else 0}, expected {t.shape[0]}")
    if t.shape[0] == 0:
        return np.zeros(0)
    sums = np.bincount(t, weights=g)[t]
    others = np.bincount(t)[t] - 1
    return np.where(others > 0, (sums - g) / np.maximum(others, 1), 0.0)


def reinforce_gradient(policy, obs, actions, rewards, dones, gamma, *, baseline="leave-one-out",
                       entropy_coef=0.0, discount_states=False, per_episode=False,
                       optimizer=None, max_grad_norm=None):
    """REINFORCE: ``A_t = G_t - b_t`` with the discounted return-to-go ``G_t``.

    Parameters
    ----------
    policy : softmax policy;  obs, actions : the batch (see :func:`policy_gradient`)
    rewards : float (B,);  dones : 0/1 (B,);  gamma : float in [0, 1]
    baseline : "leave-one-out" (default) | None | float | float (B,) | critic | "mean"
        - ``"leave-one-out"``: at step ``t`` of episode ``e``, the mean of ``G_t`` over the batch's
          *other* episodes that reached step ``t`` (0 if none did; so with one episode in the
          batch there is no baseline).  See :func:`leave_one_out_baseline`.
        - ``None``: no baseline (``A_t = G_t``).
        - a number: a constant baseline.
        - float (B,): per-step values ``b_i`` given by the caller.
        - a :class:`TabularCritic`/:class:`LinearCritic`: ``V(s_t)`` read *before* the critic is
          fitted to ``G`` (one regression step, taken after the advantages are computed).
        - ``"mean"``: the mean of ``G`` over every step of the batch, *including the episode's
          own steps*, which makes it depend on the episode's actions: the estimate is **biased**,
          by ``O(1/N)`` with ``N`` episodes in the batch.  With ``N`` episodes of equal length
          ``T`` (``discount_states`` and ``per_episode`` on) its expectation is
          ``dJ/dtheta - E[(sum_t gamma^t score_t) * mean_t G_t] / N`` (``score_t = d log
          pi(a_t|s_t) / d theta``, one episode); for one-step episodes that is exactly
          ``(1 - 1/N) dJ/dtheta``, and with ``N = T = 1`` the advantage, and so the gradient, is
          exactly zero.  Kept for comparison and for callers that ask for it.
    discount_states : bool
        Weight step ``t`` of each episode by ``gamma**t``.  Without it (the common practice) every
        step counts fully and, for ``gamma < 1``, the estimate is not the gradient of the discounted
        objective.
    per_episode : bool
        Normalise by the number of episodes ``N`` instead of the number of steps ``B``.  Without
        it the sum is divided by ``B``: ``1/T`` times the per-episode estimate when every episode
        has ``T`` steps, a ratio estimate (biased) when the lengths vary.
    optimizer : SGD/Adam bound to ``policy``, optional
        If given, the update is applied (ascent) by the fused kernel.
    max_grad_norm : float, optional, clipping for the fused update

    Notes
    -----
    Unbiasedness: for a batch of independent whole episodes of the current policy (the batch
    starting at an episode start) and ``entropy_coef=0``, the result is an unbiased estimate of
    ``dJ/dtheta`` of the discounted objective ``J = E[sum_t gamma^t r_t]``
    (:func:`metarl_fast.exact.policy_gradient_exact`) when ``discount_states=True`` and
    ``per_episode=True`` together with a baseline that is ``None``, a constant,
    ``"leave-one-out"``, a per-step array that does not depend on the batch's actions (e.g. a
    function of the state and step, or computed from other batches), or a critic (its values
    are taken before it is fitted to this batch).  Every other combination is biased:
    ``"mean"`` (above), ``discount_states=False`` with ``gamma < 1``, ``per_episode=False``
    (scaled by ``1/T``, or a ratio estimate).

    Returns
    -------
    PGUpdate
    """
    _kind(policy)  # a policy of the engine, else TypeError naming it
    dtype = policy.params.dtype
    returns = discounted_returns(check_vector(rewards, "rewards", dtype=dtype), dones, gamma)
    batch = returns.shape[0]
    critic = None
    if baseline is None:
        advantages = returns
    elif isinstance(baseline, str):
        if baseline == "leave-one-out":
            advantages = returns - leave_one_out_baseline(returns, dones)
        elif baseline == "mean":
            advantages = returns - (returns.mean(dtype=np.float64) if batch else 0.0)
        else:
            raise ValueError(f"baseline must be None, 'leave-one-out', 'mean', a number, an array "
                             f"or a critic, got {baseline!r}")
    elif isinstance(baseline, (TabularCritic, LinearCritic)):
        critic = baseline
        advantages = returns - critic.value(obs)
    elif np.ndim(baseline) == 0:
        advantages = returns - _validate.finite_float(baseline, "baseline")
    else:
        advantages = returns - check_vector(baseline, "baseline", batch, dtype)
    advantages = advantages.astype(dtype, copy=False)
    weights = _episode_weights(dones, batch, gamma, discount_states, per_episode, dtype)
    result = _apply(policy, obs, actions, advantages, weights, entropy_coef, optimizer,
                    max_grad_norm)
    if critic is not None:
        critic.fit_returns(obs, returns)
    return result


def actor_critic_gradient(policy, critic, obs, actions, rewards, next_obs, dones, gamma, *,
                          entropy_coef=0.0, update_critic=True, optimizer=None,
                          max_grad_norm=None):
    """One-step actor-critic: ``A = r + gamma V(s') (1 - done) - V(s)``, the critic trained by TD(0).

    The TD errors are computed with the critic before its update; then (``update_critic``) the
    critic takes one batch TD(0) step with its own ``lr``, and the policy gradient is formed (and
    applied if ``optimizer`` is given).  ``next_obs`` are the states reached (ignored where
    ``done``).

    Returns
    -------
    PGUpdate (``advantages`` = the TD errors)
    """
    _kind(policy)  # a policy of the engine, else TypeError naming it
    if not isinstance(critic, (TabularCritic, LinearCritic)):
        raise TypeError(f"critic must be a TabularCritic or LinearCritic, got {type(critic).__name__}")
    td_errors = critic.td_update(obs, rewards, next_obs, dones, gamma,
                                 lr=None if update_critic else 0.0)
    td_errors = td_errors.astype(policy.params.dtype, copy=False)
    return _apply(policy, obs, actions, td_errors, None, entropy_coef, optimizer, max_grad_norm)


def off_policy_gradient(policy, obs, actions, advantages, behaviour_log_probs, *, rho_bar=1.0,
                        entropy_coef=0.0, optimizer=None, max_grad_norm=None):
    """Off-policy gradient from replayed samples with truncated importance weights.

    ``w_i = min(rho_bar, pi(a_i|s_i) / mu(a_i|s_i))`` from the behaviour log-probabilities
    ``log mu`` stored with each sample; ``rho_bar=None`` leaves the ratios untruncated.  With
    ``mu = pi`` all weights are 1 and the result is the on-policy gradient.  This single-step form
    is a biased, lower-variance approximation (see the module doc) whose bias vanishes as
    ``mu -> pi``.

    Returns
    -------
    PGUpdate (``weights`` = the importance weights used)
    """
    _kind(policy)  # a policy of the engine, else TypeError naming it
    dtype = policy.params.dtype
    log_pi = policy.log_prob(obs, actions)
    weights = truncated_importance_weights(log_pi, check_vector(behaviour_log_probs,
                                                                "behaviour_log_probs",
                                                                log_pi.shape[0], dtype), rho_bar)
    advantages = check_vector(advantages, "advantages", log_pi.shape[0], dtype)
    return _apply(policy, obs, actions, advantages, weights, entropy_coef, optimizer, max_grad_norm)


def per_decision_off_policy_gradient(policy, obs, actions, rewards, dones, behaviour_log_probs,
                                     gamma, *, optimizer=None, max_grad_norm=None):
    """Unbiased off-policy gradient over whole episodes by per-decision importance sampling.

    With ``c_t = prod_{k <= t} pi(a_k|s_k) / mu(a_k|s_k)`` (products restart at each episode),
    the estimate is ``(1/N) sum_episodes sum_t gamma^t grad log pi(a_t|s_t)
    sum_{k >= t} gamma^(k-t) c_k r_k`` whose mean under ``mu`` is ``dJ/dtheta`` of ``pi`` (the
    batch must hold whole episodes, starting at the first step).  High variance; for analysis.

    Returns
    -------
    PGUpdate (``weights`` = ``gamma^t * B / N``, ``advantages`` = return-to-go of ``c r``)
    """
    _kind(policy)  # a policy of the engine, else TypeError naming it
    dtype = policy.params.dtype
    log_pi = policy.log_prob(obs, actions).astype(np.float64)
    batch = log_pi.shape[0]
    log_mu = check_vector(behaviour_log_probs, "behaviour_log_probs", batch, np.float64)
    r = check_vector(rewards, "rewards", batch, np.float64)
    d = check_dones(dones, batch)
    gamma = _validate.finite_float(gamma, "gamma", low=0.0, high=1.0)
    t = episode_time_steps(d)
    episode = np.cumsum(t == 0) - 1
    cum = np.cumsum(log_pi - log_mu)
    offset = np.concatenate([[0.0], cum])[np.flatnonzero(t == 0)][episode]
    c = np.exp(cum - offset)
    advantages = discounted_returns(c * r, d, gamma).astype(dtype)
    weights = _episode_weights(d, batch, gamma, True, True, dtype)
    return _apply(policy, obs, actions, advantages, weights, 0.0, optimizer, max_grad_norm)
