"""The fused RL^2 trial rollout with a GRU policy in pure NumPy: the executable specification of
``_core/rl2.pyx``.

A *trial* is ``N = n_episodes_per_trial`` episodes in a row of ONE task of an
:class:`~metarl_fast.tasks.EnvTables` (``T`` tasks, ``S`` states, ``A`` actions, horizon ``H``;
the environment semantics of :func:`metarl_fast.reference.envs.rollout`: same tables, same reward
kinds, an episode ends on entering a terminal state or after ``H`` steps).  One trial runs per
task.  The GRU policy of :mod:`metarl_fast.reference.gru` acts: its hidden state is zero at the
trial's first step and carried across the trial's episodes (never reset at an episode boundary).

GRU input at each step (``input_dim = D = S + A + 2``), float64::

    x[0:S]        one-hot of the current observation (state) s
    x[S:S+A]      one-hot of the previous action (all zeros at the trial's first step)
    x[S+A]        the previous reward (0 at the trial's first step)
    x[S+A+1]      1.0 if the previous step ended an episode (terminated or truncated), else 0.0
                  (0 at the trial's first step)

Acting: logits, value and new hidden state come from one GRU step (the arithmetic of
:func:`metarl_fast.reference.gru.gru_step_act`, bit for bit); the action is drawn with the rule of
:func:`metarl_fast.sample_actions` from the step's action uniform ``u``: with
``z = logits - max(logits)``, ``c`` the running sum (left to right) of ``exp_nonpos(z)``, the
action is the number of ``c[0 .. A-2]`` that are ``<= u * c[A-1]`` (the first ``a`` with
``u * c[A-1] < c[a]``).  ``logp = z[a] - log(c[A-1])`` (``log`` the C library's, as ``math.log``).

Random draws (fixed per call, identical in both backends, exactly those of
:func:`metarl_fast.reference.envs.rollout` with ``n_episodes = N``): each one bulk call on
``rng`` before the first step; entry ``[i, e, t]`` serves step ``t`` of episode ``e`` of trial
``i``; entries after an episode has ended are drawn but unused:

1. ``rng.random((T, N))``            start states, only if some task has a random start;
2. ``rng.random((T, N, H))``         actions (the rule above);
3. reward noise ``(T, N, H)``: ``rng.standard_normal`` (gaussian) or ``rng.random`` (bernoulli),
   nothing for "none"/"transition"/"outcome" rewards;
4. ``rng.random((T, N, H))``         next states, only if some transition is random;
5. ``rng.random((T, N, H))``         reward outcomes, only for ``"outcome"`` rewards.

So a GRU whose logits are all equal takes exactly the actions of ``rollout`` with a uniform
tabular policy.  Both backends step the trials in lockstep: at step ``k`` every trial that has not
finished its ``N`` episodes takes its ``k``-th step (one GRU step over those rows).

Outputs (:class:`RL2Rollout`): per-step arrays flat and trial-major (trial, then episode, then
time), the trial totals, and, for recomputing logits and values with
:func:`metarl_fast.reference.gru.gru_forward` (a PPO update), the GRU's inputs time-major:
``gru_forward(params, inputs, np.zeros((T, hidden)), resets)`` gives at every slot with
``mask[k, i]`` the logits and value of trial ``i``'s step ``k`` (bit for bit the ones acted on),
and ``x.T[mask.T]`` (``x`` any (L, T) array) puts slots in the order of the flat arrays.

Validation: every argument is checked before anything is drawn.  A GRU result that overflows
float64 raises FloatingPointError after the random blocks were drawn (both backends alike).
"""
import collections
import math

import numpy as np

from metarl_fast import _validate
from metarl_fast.reference import gru as _gru
from metarl_fast.reference._math import exp_nonpos
from metarl_fast.reference.envs import (_draw_noise, _draw_reward_outcomes, _flat_sa, _inverse_cdf,
                                        _next_states, _rewards, _transition_rewards, check_tables)
from metarl_fast.tasks import REWARD_OUTCOME, REWARD_TRANSITION

RL2Rollout = collections.namedtuple("RL2Rollout", (
    "obs", "action", "reward", "terminated", "truncated", "logp", "value", "trial_id",
    "episode_id", "trial_length", "trial_return", "inputs", "resets", "mask"))
RL2Rollout.__doc__ = """Result of ``rl2_rollout`` (``n`` steps in all, ``T`` trials, ``L`` the
longest trial's step count, ``D = S + A + 2``).

obs : int64 (n,)            the state observed at the step
action : int64 (n,)
reward : float64 (n,)
terminated, truncated : bool (n,)   the step ended its episode in a terminal state / at the horizon
logp : float64 (n,)         log-probability of the action under the GRU's logits
value : float64 (n,)        the GRU's value head at the step
trial_id : int64 (n,)       the trial (= task index)
episode_id : int64 (n,)     the episode within the trial, 0 .. N - 1
trial_length : int64 (T,)   steps of each trial
trial_return : float64 (T,) rewards of each trial summed in step order
inputs : float64 (L, T, D)  the GRU inputs, time-major (zeros where ``mask`` is False)
resets : bool (L, T)        True at step 0 (the hidden state starts at zero), else False
mask : bool (L, T)          True where trial ``i`` has a step ``k``
"""


def rl2_input_dim(n_states, n_actions):
    """``D = n_states + n_actions + 2``: the size of the GRU input of :func:`rl2_rollout`."""
    return n_states + n_actions + 2


def check_rl2_args(tables, params, hidden, n_episodes_per_trial, rng):
    """Shared validation of both backends; returns ``(params, hidden, N, D)``."""
    check_tables(tables)
    params = _gru._check_params(params)
    hidden = _gru._check_hidden(hidden)
    n_episodes = _validate.positive_int(n_episodes_per_trial, "n_episodes_per_trial")
    _validate.check_rng(rng)
    S, A = tables.n_states, tables.n_actions
    input_dim = rl2_input_dim(S, A)
    _, n_params = _gru.gru_layout(input_dim, hidden, A)
    if params.shape[0] != n_params:
        raise ValueError(f"params has size {params.shape[0]} but the GRU of this rollout "
                         f"(input_dim={input_dim} = S + A + 2, hidden={hidden}, n_actions={A}) "
                         f"has {n_params} parameters (gru_layout gives the sizes)")
    _gru._check_finite(params, "params")
    T, H = tables.n_tasks, tables.horizon
    steps = T * n_episodes * H
    _validate.check_table_size(steps * max(input_dim, hidden),
                               f"n_episodes_per_trial={n_episodes:,}: trials of n_tasks x "
                               f"n_episodes x horizon = {T} x {n_episodes:,} x {H} steps with "
                               f"input_dim={input_dim} (their GRU inputs)")
    return params, hidden, n_episodes, input_dim


def _sample(logits, u):
    """(actions int64 (B,), logp float64 (B,)) by the module's rule from uniforms u (B,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    cdf = np.cumsum(exp_nonpos(z), axis=1)
    actions = _inverse_cdf(cdf, u)
    log_total = np.array([math.log(c) for c in cdf[:, -1].tolist()])
    return actions, z[np.arange(z.shape[0]), actions] - log_total


def rl2_rollout(tables, params, hidden, n_episodes_per_trial, rng):
    """One RL^2 trial per task of ``tables`` with the GRU policy ``params``.

    Parameters
    ----------
    tables : metarl_fast.tasks.EnvTables   ``T`` tasks (trials), ``S`` states, ``A`` actions
    params : float64 (P,)                  GRU parameters, ``gru_layout(S + A + 2, hidden, A)``
    hidden : int in 1..512                 the GRU's hidden size
    n_episodes_per_trial : int >= 1        ``N``
    rng : numpy.random.Generator           draws as in the module docstring

    Returns
    -------
    RL2Rollout (see its docstring and the module docstring)
    """
    params, n_hidden, N, D = check_rl2_args(tables, params, hidden, n_episodes_per_trial, rng)
    t = tables
    T, S, A, H = t.n_tasks, t.n_states, t.n_actions, t.horizon
    u_start = rng.random((T, N)) if t.stochastic_start else None
    u_act = rng.random((T, N, H))
    noise = _draw_noise(t, rng, (T, N, H))
    u_next = rng.random((T, N, H)) if t.stochastic_transitions else None
    u_reward = _draw_reward_outcomes(t, rng, (T, N, H))

    cap = N * H  # steps of a trial at most
    obs = np.zeros((T, cap), dtype=np.int64)
    act = np.zeros((T, cap), dtype=np.int64)
    rew = np.zeros((T, cap))
    term = np.zeros((T, cap), dtype=bool)
    trunc = np.zeros((T, cap), dtype=bool)
    logp = np.zeros((T, cap))
    value = np.zeros((T, cap))
    episode_id = np.zeros((T, cap), dtype=np.int64)
    inputs = np.zeros((cap, T, D))
    mask = np.zeros((cap, T), dtype=bool)
    trial_return = np.zeros(T)

    tasks = np.arange(T)
    state = _inverse_cdf(t.start_cdf, u_start[:, 0]) if t.stochastic_start else t.start_state.copy()
    episode = np.zeros(T, dtype=np.int64)
    elapsed = np.zeros(T, dtype=np.int64)
    prev_action = np.zeros(T, dtype=np.int64)
    prev_reward = np.zeros(T)
    prev_done = np.zeros(T)
    h = np.zeros((T, n_hidden))
    live = tasks
    for k in range(cap):
        if live.size == 0:
            break
        n_live = live.size
        s, e, tt = state[live], episode[live], elapsed[live]
        x = np.zeros((n_live, D))
        x[np.arange(n_live), s] = 1.0
        if k > 0:
            x[np.arange(n_live), S + prev_action[live]] = 1.0
        x[:, S + A] = prev_reward[live]
        x[:, S + A + 1] = prev_done[live]
        logits, values, hs, _ = _gru._forward(params, x[None], h[live], np.zeros((1, n_live), bool),
                                              D, n_hidden, A)
        logits, values, h_new = logits[0], values[0], hs[1]
        _gru._overflow("the GRU's logits, values or hidden states", logits, values, h_new)
        a, lp = _sample(logits, u_act[live, e, tt])
        sa = _flat_sa(t, live, s, a)
        r = _rewards(t, live, sa, None if noise is None else noise[live, e, tt])
        s2 = _next_states(t, sa, None if u_next is None else u_next[live, e, tt])
        if t.reward_kind == REWARD_TRANSITION:
            r = t.reward_next.reshape(-1)[sa * S + s2]
        elif t.reward_kind == REWARD_OUTCOME:
            r = _transition_rewards(t, sa, s2, u_reward[live, e, tt])
        ends = t.terminal.reshape(-1)[live * S + s2].astype(bool)
        cut = ~ends & (tt == H - 1)
        done = ends | cut

        obs[live, k], act[live, k], rew[live, k] = s, a, r
        term[live, k], trunc[live, k] = ends, cut
        logp[live, k], value[live, k], episode_id[live, k] = lp, values, e
        inputs[k, live] = x
        mask[k, live] = True
        trial_return[live] += r

        h[live] = h_new  # carried across episodes: no reset at an episode boundary
        prev_action[live], prev_reward[live] = a, r
        prev_done[live] = np.where(done, 1.0, 0.0)
        elapsed[live] = np.where(done, 0, tt + 1)
        episode[live] = e + done
        state[live] = s2
        restart = live[done & (e + 1 < N)]
        if restart.size:
            if t.stochastic_start:
                state[restart] = _inverse_cdf(t.start_cdf[restart], u_start[restart, episode[restart]])
            else:
                state[restart] = t.start_state[restart]
        live = live[episode[live] < N]

    trial_length = mask.sum(axis=0).astype(np.int64)
    L = int(trial_length.max())
    valid = mask[:L].T  # (T, L): trial-major
    trial_id = np.broadcast_to(tasks[:, None], (T, cap))[:, :L]
    flat = [a[:, :L][valid] for a in (obs, act, rew, term, trunc, logp, value)]
    resets = np.zeros((L, T), dtype=bool)
    resets[0] = True
    return RL2Rollout(*flat, trial_id[valid], episode_id[:, :L][valid], trial_length, trial_return,
                      np.ascontiguousarray(inputs[:L]), resets, np.ascontiguousarray(mask[:L]))
