"""MAML (one inner step) with an MLP softmax policy on 2-D point navigation, in idiomatic PyTorch.

This is the comparison of ``bench_mlp.py::test_maml_meta_iteration``: the algorithm of
``metarl_fast.MAML(metarl_fast.MLPSoftmaxPolicy(2, 9, hidden=(64, 64)), inner_lr=0.1,
episodes_per_task=20).meta_step(metarl_fast.PointNavigation(horizon=100).sample(20, rng), rng)``
written as a good PyTorch user would write it: float64 as the engine (``dtype=torch.float32``
for the usual PyTorch precision), one thread, everything batched over
tasks x episodes, no per-step Python work except the time loop of the environment.

The pieces
----------
- A functional MLP: one flat parameter vector per task, ``(T, P)``, in the engine's layout (per
  layer ``W`` stored (in, out) row-major, then ``b``), tanh, hidden (64, 64), 9 logits.  No
  ``nn.Module``: MAML needs the same network at many parameter values (the meta-parameters, each
  task's adapted ones), which a flat tensor gives directly (``torch.func.functional_call`` on a
  module would do the same with more machinery).
- The environment, stepped in torch on positions ``(T, N, 2)``: every episode starts at the
  origin; action ``k < 8`` moves 0.1 in direction ``2 pi k / 8``, action 8 stays; reward = minus
  the distance to the task's goal; 100 steps, nothing terminates.  Actions are drawn with
  ``torch.distributions.Categorical``.
- REINFORCE with the per-time-step leave-one-out baseline: returns-to-go ``G_t`` (gamma = 1 by
  default), ``b_t`` = the mean of ``G_t`` over the task's *other* episodes, step coefficients
  ``c_t = gamma^t (G_t - b_t) / N``; the surrogate ``sum_t c_t log pi(a_t | o_t)`` has the policy
  gradient as its gradient.
- MAML, K = 1: ``theta1 = theta0 + alpha g(theta0)`` on episodes D_in; the outer gradient
  ``v = g(theta1)`` on fresh episodes D_out at ``theta1``; the meta-gradient
  ``v + alpha (dE[g]/dtheta0)^T v`` with the second-order term estimated on fresh episodes D_h at
  ``theta0``; Adam on the meta-parameters (ascent, the mean over tasks).

The second-order term, and why it is the engine's estimator
------------------------------------------------------------
``E[g](theta)`` depends on ``theta`` twice: through ``log pi`` inside the sum, and through the
distribution of the episodes.  Its Jacobian has two parts,

    (d E[g] / d theta)^T v  ~  H v  +  1/N sum_e grad log p(tau_e) ((g_e - mean_{e' != e} g_e') . v)

with ``H`` the Hessian of the surrogate ``sum_t c_t log pi`` (the network's curvature
included) and ``g_e = N sum_{t in e} c_t grad log pi(a_t | o_t)`` the gradient estimate of
episode ``e`` alone (the leave-one-out mean of the other episodes is the control variate).
A plain ``create_graph=True`` through the inner surrogate gives only ``H v``: the second part,
the score-function term, is what makes the estimator unbiased (DiCE, Foerster et al. 2018;
ProMP, Rothfuss et al. 2019).  We build a tensor ``G(theta0)`` whose *value* does not matter
and whose *Jacobian* is exactly that sum, on D_h:

    G = grad_theta [sum_t c_t log pi_theta]                  (create_graph=True: Jacobian H)
      + 1/N sum_e (log p_e(theta) - stop(log p_e)) stop(g_e - mean_{e' != e} g_e')
                                                              (value 0, Jacobian: the score term)

and adapt with ``theta1 = theta0 + alpha (g_in + G - stop(G))``: the value of the inner step on
D_in, the Jacobian ``I + alpha dG/dtheta0``.  Back-propagating the outer surrogate on D_out
through ``theta1`` then gives ``v + alpha (dG/dtheta0)^T v``, the DiCE estimator with the
leave-one-out baseline -- term by term what ``metarl_fast.continuous_meta.ContinuousPolicyProblem``
computes analytically (``grad`` and ``hvp``: Pearlmutter's R-backprop plus the same
score-function weights), as ``tests/test_torch_maml_agrees.py`` checks on shared episodes.
The per-episode gradients ``g_e`` come out of the same backward pass: the surrogate is
differentiated with respect to one (expanded, not copied) parameter vector per episode.
"""
import math
from typing import NamedTuple

import torch
from torch.distributions import Categorical

torch.set_num_threads(1)  # the engine is single-threaded: compare one core with one core

DTYPE = torch.float64  # the engine's precision; float32 is a constructor argument away


# ---------------------------------------------------------------------------------------------
# The network: flat parameters, (in, out) weights then bias per layer
# ---------------------------------------------------------------------------------------------

def mlp_layout(obs_dim, hidden, n_actions):
    """``[(w_offset, b_offset, n_in, n_out), ...]`` per Linear layer and the size P."""
    widths = (obs_dim, *hidden, n_actions)
    layers, offset = [], 0
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers.append((offset, offset + n_in * n_out, n_in, n_out))
        offset += (n_in + 1) * n_out
    return layers, offset


def mlp_init(obs_dim, hidden, n_actions, generator=None, dtype=DTYPE):
    """Flat parameters (P,), initialised as ``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    layers, n_params = mlp_layout(obs_dim, hidden, n_actions)
    params = torch.empty(n_params, dtype=dtype)
    for w_off, b_off, n_in, n_out in layers:
        bound = 1.0 / math.sqrt(n_in)
        params[w_off:b_off + n_out].uniform_(-bound, bound, generator=generator)
    return params


def mlp_logits(params, obs, layers):
    """Logits (..., B, A) of observations ``obs`` (..., B, obs_dim) under ``params`` (..., P).

    The leading dimensions batch the networks: params (T, P) with obs (T, B, D) runs one network
    per task; params (T, N, P) with obs (T, N, H, D) one per episode.
    """
    x = obs
    for index, (w_off, b_off, n_in, n_out) in enumerate(layers):
        weight = params[..., w_off:b_off].unflatten(-1, (n_in, n_out))
        bias = params[..., b_off:b_off + n_out].unsqueeze(-2)
        x = x @ weight + bias
        if index < len(layers) - 1:
            x = torch.tanh(x)
    return x


def log_probs(params, episodes, layers):
    """log pi(a_t | o_t) at every step, (T, N, H); params (T, P) or (T, N, P)."""
    T, N, H, D = episodes.obs.shape
    if params.dim() == 2:  # one network per task: its episodes' steps as one batch of rows
        logits = mlp_logits(params, episodes.obs.reshape(T, N * H, D), layers).reshape(T, N, H, -1)
    else:
        logits = mlp_logits(params, episodes.obs, layers)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, episodes.action.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# The environment and the rollout
# ---------------------------------------------------------------------------------------------

class Episodes(NamedTuple):
    obs: torch.Tensor       # float (T, N, H, 2): the position at which each action was taken
    action: torch.Tensor    # int64 (T, N, H)
    reward: torch.Tensor    # float (T, N, H)


class PointNavigation:
    """``T`` point-navigation tasks (one goal each), stepped as tensors."""

    def __init__(self, goals, horizon=100, step_size=0.1, n_directions=8, dtype=DTYPE):
        self.goals = torch.as_tensor(goals, dtype=dtype)                   # (T, 2)
        self.horizon = horizon
        angles = 2.0 * math.pi * torch.arange(n_directions, dtype=torch.float64) / n_directions
        unit = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        unit[unit.abs() < 1e-15] = 0.0                                     # exact moves along the axes
        moves = torch.cat([step_size * unit, torch.zeros(1, 2, dtype=torch.float64)])  # (A, 2), last = stay
        self.moves = moves.to(dtype)
        self.n_tasks, self.obs_dim, self.n_actions = self.goals.shape[0], 2, n_directions + 1

    def step(self, position, action):
        """Positions (T, N, 2) and actions (T, N) -> new positions and rewards (T, N)."""
        position = position + self.moves[action]
        reward = -torch.linalg.vector_norm(position - self.goals[:, None, :], dim=-1)
        return position, reward

    @torch.no_grad()
    def rollout(self, params, n_episodes, layers):
        """``n_episodes`` episodes of every task under its parameters ``params`` (T, P)."""
        position = torch.zeros(self.n_tasks, n_episodes, 2, dtype=self.goals.dtype)
        obs, actions, rewards = [], [], []
        for _ in range(self.horizon):
            action = Categorical(logits=mlp_logits(params, position, layers)).sample()
            obs.append(position)
            position, reward = self.step(position, action)
            actions.append(action)
            rewards.append(reward)
        return Episodes(torch.stack(obs, 2), torch.stack(actions, 2), torch.stack(rewards, 2))


# ---------------------------------------------------------------------------------------------
# REINFORCE and MAML
# ---------------------------------------------------------------------------------------------

def reinforce_coefs(episodes, gamma):
    """``c_t = gamma^t (G_t - b_t) / N``, (T, N, H): return-to-go minus the leave-one-out mean
    of the return-to-go of the task's other episodes at the same step."""
    reward = episodes.reward
    N, H = reward.shape[1], reward.shape[2]
    discount = gamma ** torch.arange(H, dtype=reward.dtype)
    if gamma == 1.0:  # G_t = sum_{k >= t} r_k
        returns = reward.flip(-1).cumsum(-1).flip(-1)
    else:             # G_t = r_t + gamma G_{t+1}
        returns = torch.empty_like(reward)
        acc = torch.zeros_like(reward[..., 0])
        for t in range(H - 1, -1, -1):
            acc = reward[..., t] + gamma * acc
            returns[..., t] = acc
    if N > 1:
        baseline = (returns.sum(dim=1, keepdim=True) - returns) / (N - 1)
    else:
        baseline = torch.zeros_like(returns)
    return discount * (returns - baseline) / N


def maml_objective(phi, env, n_episodes, inner_lr, layers, gamma=1.0, episodes=None):
    """``(objective, theta1, stats)``: the outer surrogate (a scalar, summed over tasks) whose
    gradient with respect to the meta-parameters ``phi`` (P,) is the sum over tasks of the MAML
    meta-gradients (ascent); the adapted parameters (T, P) (values); the mean returns before and
    after adaptation.

    ``episodes``: optional ``[D_in, D_out, D_h]`` to use instead of sampling (to compare with
    the engine on the same episodes).
    """
    T, N = env.n_tasks, n_episodes
    given = iter(episodes) if episodes is not None else None

    def sample(params):
        return next(given) if given is not None else env.rollout(params, N, layers)

    theta0 = phi.expand(T, -1)  # every task starts from phi; gradients w.r.t. theta0 are per task

    # inner step on D_in (its value only: the Jacobian comes from G below)
    d_in = sample(theta0.detach())
    surrogate_in = (reinforce_coefs(d_in, gamma) * log_probs(theta0, d_in, layers)).sum()
    (g_in,) = torch.autograd.grad(surrogate_in, theta0)
    theta1_value = theta0.detach() + inner_lr * g_in
    d_out = sample(theta1_value)  # fresh episodes at the adapted parameters, for the outer step

    # G on fresh episodes D_h at theta0: Jacobian = surrogate Hessian + score-function term
    d_h = sample(theta0.detach())
    per_episode = theta0.unsqueeze(1).expand(T, N, -1)       # one view of theta0 per episode
    logp_h = log_probs(per_episode, d_h, layers)                # (T, N, H)
    surrogate_h = (reinforce_coefs(d_h, gamma) * logp_h).sum()
    (grads_h,) = torch.autograd.grad(surrogate_h, per_episode, create_graph=True)  # (T, N, P)
    G = grads_h.sum(dim=1)                                      # the policy gradient, (T, P)
    g_e = N * grads_h.detach()                                  # each episode's own estimate
    if N > 1:                                                   # minus the other episodes' mean
        g_e = g_e - (g_e.sum(dim=1, keepdim=True) - g_e) / (N - 1)
    logp_tau = logp_h.sum(dim=-1)                               # log p(tau_e) + const, (T, N)
    G = G + torch.einsum("tn,tnp->tp", logp_tau - logp_tau.detach(), g_e) / N

    theta1 = theta0 + inner_lr * (g_in + G - G.detach())        # value theta1, Jacobian I + alpha dG

    # the outer surrogate on D_out, back-propagated through theta1 to phi
    objective = (reinforce_coefs(d_out, gamma) * log_probs(theta1, d_out, layers)).sum()
    stats = {"pre_return": d_in.reward.sum(-1).mean().item(),
             "post_return": d_out.reward.sum(-1).mean().item()}
    return objective, theta1_value, stats


class TorchMAML:
    """MAML, K = 1, over meta-batches of point-navigation tasks; Adam on the meta-parameters."""

    def __init__(self, phi, obs_dim=2, n_actions=9, hidden=(64, 64), inner_lr=0.1, meta_lr=0.05,
                 episodes_per_task=20, gamma=1.0, dtype=DTYPE):
        self.layers, n_params = mlp_layout(obs_dim, hidden, n_actions)
        self.phi = torch.as_tensor(phi, dtype=dtype).clone().requires_grad_(True)
        if self.phi.shape != (n_params,):
            raise ValueError(f"phi must have shape ({n_params},) for this network, got {tuple(self.phi.shape)}")
        self.inner_lr, self.episodes_per_task, self.gamma = inner_lr, episodes_per_task, gamma
        self.optimizer = torch.optim.Adam([self.phi], lr=meta_lr)

    def meta_step(self, env):
        """One meta-iteration on the tasks of ``env`` (a :class:`PointNavigation`)."""
        objective, _, stats = maml_objective(self.phi, env, self.episodes_per_task, self.inner_lr,
                                             self.layers, self.gamma)
        self.optimizer.zero_grad(set_to_none=True)
        (-objective / env.n_tasks).backward()  # ascent on the mean over tasks
        self.optimizer.step()
        return stats


if __name__ == "__main__":  # a quick run: python benches/torch_maml.py
    import time

    torch.manual_seed(0)
    goals = torch.rand(20, 2, dtype=DTYPE) - 0.5
    maml = TorchMAML(mlp_init(2, (64, 64), 9))
    for it in range(3):
        start = time.perf_counter()
        stats = maml.meta_step(PointNavigation(goals))
        print(f"iteration {it}: {time.perf_counter() - start:.3f} s, {stats}")
