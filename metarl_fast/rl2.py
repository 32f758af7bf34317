"""The fused RL^2 trial rollout: a GRU policy acting over whole trials of tabular tasks.

:func:`rl2_rollout` runs one trial (``n_episodes_per_trial`` episodes in a row of one task) per
task of a :class:`~metarl_fast.tasks.TaskBatch` with the GRU softmax policy of the GRU kernels
(``_core/gru.pyx``, specification in :mod:`metarl_fast.reference.gru`): the hidden state starts at
zero at the trial's start and is carried across the trial's episodes, so the policy can learn
*in context* from its own history.  The GRU input at each step is (one-hot observation, one-hot
previous action, previous reward, previous done flag): ``input_dim = S + A + 2``
(:func:`rl2_input_dim`).  The whole batch of trials runs in one kernel call of the active backend
(``active.rl2``), without the GIL in the Cython backend.  The GRU input layout, the random draws
and the outputs are documented in :mod:`metarl_fast.reference.rl2`.
"""
from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.reference.rl2 import RL2Rollout
from metarl_fast.tasks import TaskBatch

__all__ = ["rl2_rollout", "rl2_input_dim", "RL2Rollout"]


def rl2_input_dim(n_states, n_actions):
    """``n_states + n_actions + 2``: the GRU input size of :func:`rl2_rollout` (one-hot
    observation, one-hot previous action, previous reward, previous done flag)."""
    n_states = _validate.positive_int(n_states, "n_states")
    n_actions = _validate.positive_int(n_actions, "n_actions")
    return n_states + n_actions + 2


def rl2_rollout(task_batch, params, hidden, n_episodes_per_trial, rng):
    """One RL^2 trial per task of ``task_batch`` with the GRU policy ``params``.

    Parameters
    ----------
    task_batch : metarl_fast.tasks.TaskBatch   ``T`` tabular tasks (bandits: one state), ``S``
        states, ``A`` actions, horizon ``H``
    params : float64 (P,)   GRU parameters laid out by
        ``gru_layout(rl2_input_dim(S, A), hidden, A)`` (e.g. from ``gru_init``)
    hidden : int in 1..512   the GRU's hidden size
    n_episodes_per_trial : int >= 1
    rng : numpy.random.Generator, int seed or SeedSequence   draws as documented in
        :mod:`metarl_fast.reference.rl2` (fixed per call, the same in both backends)

    Returns
    -------
    RL2Rollout: per-step ``obs``, ``action`` (int64), ``reward``, ``terminated``, ``truncated``
    (bool), ``logp``, ``value`` (float64), ``trial_id``, ``episode_id`` (int64), flat (n,) and
    trial-major; ``trial_length`` int64 (T,), ``trial_return`` float64 (T,); and for recomputing
    the logits with ``gru_forward(params, inputs, zeros((T, hidden)), resets)``: ``inputs``
    float64 (L, T, S + A + 2), ``resets`` bool (L, T), ``mask`` bool (L, T) (time-major, ``L``
    the longest trial's step count).
    """
    if not isinstance(task_batch, TaskBatch):
        raise TypeError(f"task_batch must be a metarl_fast.tasks.TaskBatch, "
                        f"got {type(task_batch).__name__}")
    rng = _validate.as_generator(rng)
    return active.rl2.rl2_rollout(task_batch.tables, params, hidden, n_episodes_per_trial, rng)
