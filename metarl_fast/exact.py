"""Exact dynamic programming on a finite tabular task (:class:`metarl_fast.mdp.MDPModel`), float64.

The ground truth for the stochastic estimators (policy gradient, meta-gradients): the value of a
tabular softmax policy, its exact gradient by the finite-horizon policy-gradient theorem, optimal
values by backward induction, plus a small episode sampler.

Semantics follow :mod:`metarl_fast.mdp`: ``s_0 ~ start``; at step ``t < horizon`` the agent acts,
collects ``R[s_t, a_t]`` and moves to ``s_{t+1} ~ P[s_t, a_t]``; the episode ends after
``horizon`` steps or on entering a terminal state.  ``J = E[sum_t gamma^t r_t]``.

With ``d_t(s)`` the probability that the episode is still running and in ``s`` at step ``t``
(time-dependent, because the horizon is finite),

    dJ / d theta[s, a] = sum_t gamma^t d_t(s) pi(a|s) (Q_t(s, a) - V_t(s)).
"""
from collections import namedtuple

import numpy as np

from metarl_fast import _validate
from metarl_fast.mdp import MDPModel

__all__ = [
    "Episodes",
    "softmax_policy",
    "evaluate_policy",
    "state_distributions",
    "policy_value",
    "policy_gradient_exact",
    "linear_policy_value",
    "linear_policy_gradient_exact",
    "optimal_value",
    "sample_episodes",
    "random_mdp",
]

Episodes = namedtuple("Episodes", "states actions rewards next_states dones log_probs time_steps "
                                  "episode_ids")
Episodes.__doc__ = """Episodes laid out one after the other (a flat batch), all arrays of length B.

states, actions, next_states : int64;  rewards, log_probs : float64 (log pi(a|s) of the sampling
policy);  dones : bool, true at the last step of each episode;  time_steps : int64, step index t
within the episode;  episode_ids : int64, which episode each step belongs to (0 .. n-1).
"""


def _check_mdp(mdp):
    if not isinstance(mdp, MDPModel):
        raise TypeError(f"mdp must be a metarl_fast.mdp.MDPModel, got {type(mdp).__name__}")
    return mdp


def _check_theta(mdp, theta, name="theta"):
    arr = np.asarray(theta)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array, got {_validate.got(arr)}")
    arr = np.asarray(arr, dtype=np.float64)
    shape = (mdp.n_states, mdp.n_actions)
    if arr.shape == (shape[0] * shape[1],):
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (or be flat), got {np.shape(theta)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def softmax_policy(theta):
    """``pi[s, a] = softmax(theta[s])[a]`` in float64; ``theta`` (S, A) -> (S, A)."""
    theta = np.asarray(theta, dtype=np.float64)
    z = theta - theta.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _continue_matrix(mdp):
    """``P[s, a, s'] * (1 - terminal[s'])``: transitions that keep the episode running."""
    return mdp.P * (~mdp.terminal)[None, None, :]


def evaluate_policy(mdp, pi):
    """Backward induction for a fixed stochastic policy.

    Parameters
    ----------
    mdp : MDPModel
    pi : float64 (S, A), rows are distributions (a time-independent policy)

    Returns
    -------
    Q : float64 (T, S, A) and V : float64 (T + 1, S), with ``V[T] = 0`` and
    ``Q[t, s, a] = R[s, a] + gamma sum_{s'} P[s, a, s'] (1 - terminal[s']) V[t+1, s']``.
    """
    _check_mdp(mdp)
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"pi must have shape {(mdp.n_states, mdp.n_actions)}, got {pi.shape}")
    T, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    Pc = _continue_matrix(mdp)
    Q = np.empty((T, S, A))
    V = np.zeros((T + 1, S))
    for t in range(T - 1, -1, -1):
        Q[t] = mdp.R + mdp.gamma * (Pc @ V[t + 1])
        V[t] = (pi * Q[t]).sum(axis=1)
    return Q, V


def state_distributions(mdp, pi):
    """``d[t, s]``: probability that the episode is running and in ``s`` at step ``t``; (T, S).

    ``d[0] = start`` and ``d[t+1, s'] = sum_{s,a} d[t, s] pi[s, a] P[s, a, s'] (1 - terminal[s'])``.
    """
    _check_mdp(mdp)
    pi = np.asarray(pi, dtype=np.float64)
    T = mdp.horizon
    Pc = _continue_matrix(mdp)
    d = np.empty((T, mdp.n_states))
    d[0] = mdp.start
    for t in range(T - 1):
        d[t + 1] = np.einsum("s,sa,sat->t", d[t], pi, Pc)
    return d


def policy_value(mdp, theta):
    """Expected discounted return ``J(theta)`` of the tabular softmax policy ``softmax(theta[s])``.

    Parameters
    ----------
    mdp : MDPModel
    theta : real (S, A) or flat (S * A,), finite

    Returns
    -------
    float
    """
    _check_mdp(mdp)
    pi = softmax_policy(_check_theta(mdp, theta))
    _, V = evaluate_policy(mdp, pi)
    return float(mdp.start @ V[0])


def policy_gradient_exact(mdp, theta):
    """Exact gradient ``dJ/dtheta`` of :func:`policy_value`, shape (S, A), float64.

    ``sum_t gamma^t d_t(s) pi(a|s) (Q_t(s, a) - V_t(s))`` with the time-dependent state
    distribution ``d_t`` of :func:`state_distributions` (finite horizon, terminal states).
    """
    _check_mdp(mdp)
    pi = softmax_policy(_check_theta(mdp, theta))
    Q, V = evaluate_policy(mdp, pi)
    d = state_distributions(mdp, pi)
    disc = mdp.gamma ** np.arange(mdp.horizon)
    adv = Q - V[:-1, :, None]
    return np.einsum("t,ts,sa,tsa->sa", disc, d, pi, adv)


def _linear_logits(mdp, features, params):
    phi = np.asarray(features)
    if phi.dtype.kind not in "fiu":
        raise TypeError(f"features must be a real array, got {_validate.got(phi)}")
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != mdp.n_states:
        raise ValueError(f"features must have shape ({mdp.n_states}, F), got {phi.shape}")
    F, A = phi.shape[1], mdp.n_actions
    p = np.asarray(params, dtype=np.float64)
    if p.shape != (F * A + A,):
        raise ValueError(f"params must have shape {(F * A + A,)} (W then b), got {p.shape}")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(p))):
        raise ValueError("features and params must be finite")
    return phi, phi @ p[:F * A].reshape(F, A) + p[F * A:]


def linear_policy_value(mdp, features, params):
    """``J`` of the linear softmax policy ``softmax(features[s] @ W + b)`` (``LinearSoftmaxPolicy``).

    Parameters
    ----------
    features : real (S, F), the feature vector of each state
    params : real (F * A + A,), ``W`` (row-major) then ``b``, as ``LinearSoftmaxPolicy.params``
    """
    _check_mdp(mdp)
    _, logits = _linear_logits(mdp, features, params)
    return policy_value(mdp, logits)


def linear_policy_gradient_exact(mdp, features, params):
    """Exact ``dJ/dparams`` of :func:`linear_policy_value`, flat (F * A + A,) like ``params``.

    The chain rule through ``logits = features @ W + b``: with ``G = policy_gradient_exact(mdp,
    logits)`` (the gradient w.r.t. the table of logits), ``dW = features^T G`` and
    ``db = sum_s G[s]``.
    """
    _check_mdp(mdp)
    phi, logits = _linear_logits(mdp, features, params)
    G = policy_gradient_exact(mdp, logits)
    return np.concatenate([(phi.T @ G).reshape(-1), G.sum(axis=0)])


def optimal_value(mdp):
    """Optimal finite-horizon values by backward induction (value iteration over time).

    Returns
    -------
    V : float64 (T + 1, S)  optimal value with ``t`` steps elapsed (``V[T] = 0``)
    Q : float64 (T, S, A)   optimal action values
    greedy : int64 (T, S)   an optimal action (the first maximiser) at each step and state
    The optimal expected return is ``mdp.start @ V[0]``.
    """
    _check_mdp(mdp)
    T, S, A = mdp.horizon, mdp.n_states, mdp.n_actions
    Pc = _continue_matrix(mdp)
    Q = np.empty((T, S, A))
    V = np.zeros((T + 1, S))
    for t in range(T - 1, -1, -1):
        Q[t] = mdp.R + mdp.gamma * (Pc @ V[t + 1])
        V[t] = Q[t].max(axis=1)
    return V, Q, Q.argmax(axis=2).astype(np.int64)


def sample_episodes(mdp, theta, n_episodes, rng):
    """Sample ``n_episodes`` episodes of the softmax policy ``softmax(theta)`` (rewards = ``R``).

    All episodes advance together, one step at a time: at each step the running episodes (in
    episode order) draw their actions with one ``rng.random()`` each (inverse CDF), then their
    next states with one more each.  The result is laid out episode after episode.

    Parameters
    ----------
    mdp : MDPModel;  theta : real (S, A);  n_episodes : int >= 1;  rng : numpy.random.Generator

    Returns
    -------
    Episodes
    """
    rng = _validate.as_generator(rng)
    _check_mdp(mdp)
    pi = softmax_policy(_check_theta(mdp, theta))
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    _validate.check_rng(rng)
    T = mdp.horizon
    pi_cdf = np.cumsum(pi, axis=1)
    P_cdf = np.cumsum(mdp.P, axis=2)
    start_cdf = np.cumsum(mdp.start)
    S, A = mdp.n_states, mdp.n_actions
    states = np.minimum(np.searchsorted(start_cdf, rng.random(n_episodes) * start_cdf[-1],
                                        side="right"), S - 1)
    alive = np.ones(n_episodes, dtype=bool)
    rec_s = np.full((n_episodes, T), -1, dtype=np.int64)
    rec_a = np.zeros((n_episodes, T), dtype=np.int64)
    rec_ns = np.zeros((n_episodes, T), dtype=np.int64)
    rec_done = np.zeros((n_episodes, T), dtype=bool)
    for t in range(T):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        s = states[idx]
        u = rng.random(idx.size)[:, None] * pi_cdf[s, -1:]
        a = np.minimum((u >= pi_cdf[s]).sum(axis=1), A - 1)
        u = rng.random(idx.size)[:, None] * P_cdf[s, a, -1:]
        ns = np.minimum((u >= P_cdf[s, a]).sum(axis=1), S - 1)
        rec_s[idx, t], rec_a[idx, t], rec_ns[idx, t] = s, a, ns
        done = mdp.terminal[ns] | (t == T - 1)
        rec_done[idx, t] = done
        states[idx] = ns
        alive[idx[done]] = False
    mask = rec_s >= 0
    s, a = rec_s[mask], rec_a[mask]
    t_idx = np.broadcast_to(np.arange(T), (n_episodes, T))[mask]
    ep = np.broadcast_to(np.arange(n_episodes)[:, None], (n_episodes, T))[mask]
    log_pi = np.log(pi)
    return Episodes(s, a, mdp.R[s, a].copy(), rec_ns[mask], rec_done[mask], log_pi[s, a],
                    t_idx.astype(np.int64), ep.astype(np.int64))


def random_mdp(rng, n_states, n_actions, horizon, gamma=1.0, n_terminal=0):
    """A random ``MDPModel`` (Dirichlet transitions, uniform [0, 1) rewards) for tests and demos.

    ``n_terminal`` of the states (the last ones) are terminal; the start distribution avoids them.
    """
    rng = _validate.as_generator(rng)
    _validate.check_rng(rng)
    S = _validate.positive_int(n_states, "n_states")
    A = _validate.positive_int(n_actions, "n_actions")
    _validate.positive_int(horizon, "horizon")
    n_terminal = _validate.positive_int(n_terminal, "n_terminal", minimum=0)
    if n_terminal >= S:
        raise ValueError(f"n_terminal must leave a start state: at most {S - 1}, got {n_terminal}")
    _validate.check_table_size(S * A * S, f"random_mdp(n_states={S:,}, n_actions={A:,}): its transitions")
    P = rng.dirichlet(np.ones(S), size=(S, A))
    R = rng.random((S, A))
    start = rng.dirichlet(np.ones(S - n_terminal))
    start = np.concatenate([start, np.zeros(n_terminal)])
    terminal = np.zeros(S, dtype=bool)
    if n_terminal:
        terminal[S - n_terminal:] = True
    return MDPModel(P=P, R=R, start=start / start.sum(), horizon=horizon, gamma=gamma,
                    terminal=terminal)
