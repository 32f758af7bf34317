"""RL^2 (a GRU policy meta-trained by PPO over whole trials) on Bernoulli bandits, in idiomatic PyTorch.

This is the comparison of ``bench_rl2.py``: the algorithm of ``metarl_fast.RL2Learner(1, k,
hidden=128).meta_step(metarl_fast.BernoulliBandits(k, horizon=n).sample(T, rng), rng)`` written as
a good PyTorch user would write it: float64 as the engine, one thread, every trial of the batch
stepped together (one GRU step per time step), the PPO update recomputing the GRU over the
minibatch's whole trials with one ``nn.GRU`` call, autograd for the gradient, ``torch.optim.Adam``.

The pieces
----------
- :class:`GRUPolicy`: ``nn.GRU(D, H)`` (time-major) + ``nn.Linear(H, A)`` policy head +
  ``nn.Linear(H, 1)`` value head, the engine's parameterisation exactly (``metarl_fast.reference.gru``:
  ``gru_to_torch_order`` / ``gru_from_torch`` convert the flat parameter vector).
- :func:`rollout`: ``T`` trials of ``episodes_per_trial`` episodes of ``n_pulls`` pulls of a
  Bernoulli bandit each (all trials have the same length ``L``, so no padding or packing).  GRU
  input per step, as the engine's ``rl2_rollout`` (``D = 1 + A + 2``): the one-hot observation
  (one state: always 1), the one-hot previous action (zeros at the trial's first step), the
  previous reward, 1.0 if the previous step ended an episode; the hidden state starts at zero and
  is carried across the trial's episodes.  Actions by ``torch.multinomial`` on the softmax
  (``Categorical.sample`` does the same), rewards ``1.0`` where a uniform is below the arm's mean.
- :class:`TorchRL2`: PPO as ``RL2Learner.meta_step``: the value head's outputs mapped to
  returns by the running mean and std of the returns seen (``RL2Learner``'s value normalisation:
  ``V = mean + std * u``; the batch's returns are merged into the statistics and the head
  regresses on ``(R - mean) / std``), GAE over the whole trial (the next step's
  value is bootstrapped across episode ends; 0 after the trial's last step), returns =
  advantages + values, advantages normalised over the batch (population std, + 1e-8), then
  ``ppo_epochs`` epochs of ``minibatches`` groups of whole trials (``tensor_split`` of a
  permutation, as ``np.array_split``): the clipped surrogate, ``value_coef`` x mean
  ``0.5 (v - R)^2``, minus ``entropy_coef`` x mean entropy; the gradient scaled to the global
  norm ``max_grad_norm`` where it is larger (the engine's rule; ``clip_grad_norm_`` divides by
  ``norm + 1e-6``), one ``torch.optim.Adam`` step (the engine's Adam is PyTorch's formula with the
  same defaults: betas (0.9, 0.999), eps 1e-8).

``tests/test_torch_rl2_agrees.py`` checks, on the engine's own rollouts, that the forward pass,
the GAE, the PPO loss and its gradient and a whole update equal the engine's.
"""
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from metarl_fast.reference.gru import gru_from_torch, gru_to_torch_order

torch.set_num_threads(1)  # the engine is single-threaded: compare one core with one core

DTYPE = torch.float64  # the engine's precision
ADV_EPS = 1e-8         # RL2Learner's advantage normalisation: (A - mean) / (std + 1e-8)


class GRUPolicy(nn.Module):
    """A GRU over the steps of a batch of trials with a softmax policy head and a value head.

    ``forward(inputs (L, B, D), h0 (1, B, H) or None)`` -> logits (L, B, A), values (L, B),
    h_n (1, B, H).
    """

    def __init__(self, input_dim, n_actions, hidden=128, dtype=DTYPE):
        super().__init__()
        self.input_dim, self.n_actions, self.hidden = input_dim, n_actions, hidden
        self.gru = nn.GRU(input_dim, hidden, dtype=dtype)
        self.policy = nn.Linear(hidden, n_actions, dtype=dtype)
        self.value = nn.Linear(hidden, 1, dtype=dtype)

    def forward(self, inputs, h0=None):
        out, h_n = self.gru(inputs, h0)
        return self.policy(out), self.value(out).squeeze(-1), h_n

    # the engine's TORCH_NAMES in this module's parameter names
    def _engine_order(self):
        g = self.gru
        return (g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0, self.policy.weight,
                self.policy.bias, self.value.weight, self.value.bias)

    def load_engine_params(self, params):
        """Copy the engine's flat float64 parameters (P,) (``gru_layout(D, H, A)``) into the module."""
        tensors = gru_to_torch_order(params, self.input_dim, self.hidden, self.n_actions)
        with torch.no_grad():
            for target, array in zip(self._engine_order(), tensors.values()):
                target.copy_(torch.from_numpy(array))
        return self

    def engine_params(self):
        """The parameters as the engine's flat float64 vector (P,)."""
        return gru_from_torch(*(p.detach().numpy() for p in self._engine_order()))

    def engine_grad(self):
        """The parameters' ``.grad`` as a flat float64 vector (P,) in the engine's layout."""
        return gru_from_torch(*(p.grad.numpy() for p in self._engine_order()))


# ---------------------------------------------------------------------------------------------
# The rollout
# ---------------------------------------------------------------------------------------------

class Trials(NamedTuple):
    inputs: torch.Tensor   # float (L, T, D): the GRU input at each step, time-major
    action: torch.Tensor   # int64 (L, T)
    logp: torch.Tensor     # float (L, T): log pi(a | h) of the action taken
    value: torch.Tensor    # float (L, T): the value head at the step
    reward: torch.Tensor   # float (L, T)


def step_inputs(prev_action, prev_reward, prev_done, n_actions, first):
    """The GRU input (T, 1 + A + 2) of one bandit step: [1 | one-hot previous action (zeros if
    ``first``) | previous reward | previous done flag]."""
    one_hot = nn.functional.one_hot(prev_action, n_actions).to(prev_reward.dtype)
    if first:
        one_hot.zero_()
    ones = torch.ones_like(prev_reward)
    return torch.cat([ones[:, None], one_hot, prev_reward[:, None], prev_done[:, None]], dim=1)


@torch.no_grad()
def rollout(policy, means, n_pulls, episodes_per_trial=1, generator=None):
    """One trial per row of ``means`` (T, A) (the arms' Bernoulli means): ``episodes_per_trial``
    episodes of ``n_pulls`` pulls, all trials stepped together.  Returns :class:`Trials`."""
    n_trials, n_actions = means.shape
    dtype = means.dtype
    n_steps = n_pulls * episodes_per_trial
    rows = torch.arange(n_trials)
    inputs = torch.empty(n_steps, n_trials, n_actions + 3, dtype=dtype)
    actions = torch.empty(n_steps, n_trials, dtype=torch.int64)
    logps = torch.empty(n_steps, n_trials, dtype=dtype)
    values = torch.empty(n_steps, n_trials, dtype=dtype)
    rewards = torch.empty(n_steps, n_trials, dtype=dtype)
    h = torch.zeros(1, n_trials, policy.hidden, dtype=dtype)
    action = torch.zeros(n_trials, dtype=torch.int64)
    reward = torch.zeros(n_trials, dtype=dtype)
    done = torch.zeros(n_trials, dtype=dtype)
    for k in range(n_steps):
        x = step_inputs(action, reward, done, n_actions, first=k == 0)
        logits, value, h = policy(x[None], h)
        log_probs = torch.log_softmax(logits[0], dim=1)
        action = torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0]
        reward = (torch.rand(n_trials, generator=generator, dtype=dtype) < means[rows, action]).to(dtype)
        done = torch.full((n_trials,), float((k + 1) % n_pulls == 0), dtype=dtype)
        inputs[k], actions[k], values[k], rewards[k] = x, action, value[0], reward
        logps[k] = log_probs.gather(1, action[:, None])[:, 0]
    return Trials(inputs, actions, logps, values, rewards)


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------

def gae(rewards, values, gamma, gae_lambda):
    """GAE advantages (L, T) over whole trials of equal length: the next step's value is
    bootstrapped at every step but the last (episode ends inside a trial included)."""
    advantages = torch.empty_like(rewards)
    next_adv = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for k in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[k] + gamma * next_value - values[k]
        next_adv = delta + gamma * gae_lambda * next_adv
        advantages[k] = next_adv
        next_value = values[k]
    return advantages


def ppo_loss(policy, inputs, actions, old_logp, advantages, returns, clip, value_coef,
             entropy_coef):
    """``(loss, stats)``: the PPO loss of whole trials ``inputs`` (L, B, D) (the GRU rerun from a
    zero state) and float statistics (``policy_loss``, ``value_loss``, ``entropy``)."""
    logits, values, _ = policy(inputs)
    log_probs = torch.log_softmax(logits, dim=-1)
    new_logp = log_probs.gather(-1, actions[..., None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    ratio = torch.exp(new_logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    policy_loss = -surrogate.mean()
    value_loss = 0.5 * (values - returns).pow(2).mean()
    mean_entropy = entropy.mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy
    return loss, {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                  "entropy": mean_entropy.item()}


class TorchRL2:
    """RL^2 on Bernoulli bandits (``n_pulls`` pulls per episode): a :class:`GRUPolicy` trained by
    PPO with ``RL2Learner``'s defaults.  ``params``: the engine's flat float64 parameters to start from, or None (PyTorch's
    own initialisation, the same distribution as ``gru_init``)."""

    def __init__(self, n_actions, hidden=128, params=None, *, n_pulls=10, episodes_per_trial=1, lr=3e-4,
                 clip=0.2, gae_lambda=0.95, gamma=0.99, value_coef=0.5, entropy_coef=0.01,
                 ppo_epochs=4, minibatches=4, max_grad_norm=0.5, normalize_values=True, dtype=DTYPE):
        self.policy = GRUPolicy(n_actions + 3, n_actions, hidden, dtype=dtype)
        if params is not None:
            self.policy.load_engine_params(params)
        self.n_pulls, self.episodes_per_trial = n_pulls, episodes_per_trial
        self.clip, self.gae_lambda, self.gamma = clip, gae_lambda, gamma
        self.value_coef, self.entropy_coef = value_coef, entropy_coef
        self.ppo_epochs, self.minibatches, self.max_grad_norm = ppo_epochs, minibatches, max_grad_norm
        self.normalize_values = normalize_values
        self.value_count, self.value_mean, self.value_m2 = 0, 0.0, 0.0
        self.params = list(self.policy.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    def value_scale(self):
        """``(mean, std)`` of the returns seen (``(0, 1)`` before any, or without normalisation)."""
        if not self.normalize_values or self.value_count == 0:
            return 0.0, 1.0
        std = (self.value_m2 / self.value_count) ** 0.5
        return self.value_mean, (std if std > 1e-8 else 1.0)

    def advantages(self, trials):
        """``(normalised advantages, returns)``, each (L, T)."""
        mean, std = self.value_scale()
        values = mean + std * trials.value
        advantages = gae(trials.reward, values, self.gamma, self.gae_lambda)
        returns = advantages + values
        normalised = (advantages - advantages.mean()) / (advantages.std(correction=0) + ADV_EPS)
        return normalised, returns

    def update(self, trials, generator=None, orders=None):
        """PPO on ``trials`` (:class:`Trials`); ``orders``: optional list of one permutation of
        the trials per epoch (else ``torch.randperm``).  Returns the mean statistics."""
        advantages, returns = self.advantages(trials)
        if self.normalize_values:  # merge the batch's returns into the statistics, then standardise
            n, batch_mean = returns.numel(), returns.mean().item()
            batch_m2 = ((returns - batch_mean) ** 2).sum().item()
            total, delta = self.value_count + n, batch_mean - self.value_mean
            self.value_m2 += batch_m2 + delta * delta * self.value_count * n / total
            self.value_mean += delta * n / total
            self.value_count = total
            mean, std = self.value_scale()
            returns = (returns - mean) / std
        n_trials = trials.action.shape[1]
        totals, n_updates = {}, 0
        for epoch in range(self.ppo_epochs):
            order = (torch.as_tensor(orders[epoch]) if orders is not None
                     else torch.randperm(n_trials, generator=generator))
            for idx in torch.tensor_split(order, self.minibatches):
                loss, stats = ppo_loss(self.policy, trials.inputs[:, idx], trials.action[:, idx],
                                       trials.logp[:, idx], advantages[:, idx], returns[:, idx],
                                       self.clip, self.value_coef, self.entropy_coef)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = self.clip_gradient()
                self.optimizer.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                n_updates += 1
        return {key: value / n_updates for key, value in totals.items()}

    def clip_gradient(self):
        """Scale the gradient to the global norm ``max_grad_norm`` where it is larger; returns the
        norm before clipping."""
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                     for p in self.params])).item()
        if self.max_grad_norm is not None and norm > self.max_grad_norm:
            scale = self.max_grad_norm / norm
            for p in self.params:
                p.grad.mul_(scale)
        return norm

    def meta_step(self, means, generator=None):
        """One meta-iteration: a rollout of one trial per row of ``means`` (T, A), then PPO."""
        trials = rollout(self.policy, means, self.n_pulls, self.episodes_per_trial, generator)
        stats = self.update(trials, generator)
        stats["mean_trial_return"] = trials.reward.sum(0).mean().item()
        return stats


def engine_trials(ro):
    """An engine :class:`~metarl_fast.rl2.RL2Rollout` of equal-length trials as :class:`Trials`."""
    assert ro.mask.all(), "the torch comparison handles trials of equal length only"
    shape = ro.mask.shape[::-1]  # trial-major flat arrays -> (T, L) -> time-major (L, T)

    def tm(flat):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(flat).reshape(shape).T))
    return Trials(torch.from_numpy(ro.inputs.copy()), tm(ro.action), tm(ro.logp), tm(ro.value),
                  tm(ro.reward))


if __name__ == "__main__":  # a quick run: python benches/torch_rl2.py
    import time

    gen = torch.Generator().manual_seed(0)
    learner = TorchRL2(5, hidden=128)
    for it in range(3):
        means = torch.rand(1000, 5, generator=gen, dtype=DTYPE)
        start = time.perf_counter()
        stats = learner.meta_step(means, gen)
        print(f"iteration {it}: {time.perf_counter() - start:.3f} s, {stats}")
