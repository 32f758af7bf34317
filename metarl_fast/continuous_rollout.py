"""Fused rollouts of MLP softmax policies on the continuous-observation task families (issue 16).

:func:`rollout_mlp` runs whole episodes -- the MLP's forward pass and sampling, the environment
steps, the recording -- of every task of a :class:`~metarl_fast.continuous_tasks.PointNavigationBatch`
or :class:`~metarl_fast.continuous_tasks.CartPolesBatch` in one kernel call of the active backend
(``active.continuous_rollout``) and returns a :class:`ContinuousTrajectories`.  With the same
Generator state both backends give the same arrays bit for bit (float64) and leave the Generator in
the same state.  The order of the random draws, the sampling rule and the termination rules are
documented in :mod:`metarl_fast.reference.continuous_rollout`.

Example::

    import numpy as np
    from metarl_fast.continuous_rollout import rollout_mlp
    from metarl_fast.continuous_tasks import CartPoles
    from metarl_fast.reference.mlp import mlp_init

    batch = CartPoles(horizon=200).sample(64, rng=0)
    params = mlp_init(4, (64, 64), 2, np.random.default_rng(1))
    traj = rollout_mlp(batch, params, 10, np.random.default_rng(2), hidden=(64, 64))
    traj.episode_return.mean()
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.continuous_tasks import CartPolesBatch, PointNavigationBatch
from metarl_fast.rollout import _EpisodeCounts
from metarl_fast.reference import mlp as _mlp

__all__ = ["ContinuousTrajectories", "rollout_mlp"]


class ContinuousTrajectories(_EpisodeCounts):
    """The steps of ``n_episodes`` episodes on each of ``n_tasks`` tasks, as flat arrays.

    Steps are ordered by task, then episode, then time (no padding); ``n`` = total number of steps.

    Attributes
    ----------
    obs : float64 (n, obs_dim)      observation (state) in which the action was taken
    action : int64 (n,)
    reward : float64 (n,)
    next_obs : float64 (n, obs_dim) observation reached
    terminated : bool (n,)          the step ended the episode in a terminal state
    truncated : bool (n,)           the step reached the horizon without terminating
    logp : float64 (n,)             log-probability of ``action`` under the policy that acted
    task_id : int64 (n,)            index of the task in the batch
    episode_length : int64 (n_tasks, n_episodes)
    episode_return : float64 (n_tasks, n_episodes)   undiscounted, rewards summed in step order
    episode_start : int64 (n_tasks * n_episodes + 1,) offsets: episode ``k = task * n_episodes + e``
        is ``slice(episode_start[k], episode_start[k + 1])``
    """

    def __init__(self, obs, action, reward, next_obs, terminated, truncated, logp, task_id,
                 episode_length, episode_return):
        self.obs, self.action, self.reward, self.next_obs = obs, action, reward, next_obs
        self.terminated, self.truncated, self.logp, self.task_id = terminated, truncated, logp, task_id
        self.episode_length, self.episode_return = episode_length, episode_return
        self.episode_start = active.envs.episode_offsets(episode_length)

    @property
    def n_steps(self):
        return self.action.shape[0]

    @property
    def obs_dim(self):
        return self.obs.shape[1]

    def episode(self, task, e):
        """The slice of the flat arrays holding episode ``e`` of task ``task``."""
        if not (0 <= task < self.n_tasks and 0 <= e < self.n_episodes):
            raise IndexError(f"no episode ({task}, {e}) in {self.n_tasks} tasks x {self.n_episodes} episodes")
        k = int(task) * self.n_episodes + int(e)
        return slice(int(self.episode_start[k]), int(self.episode_start[k + 1]))

    def __len__(self):
        return self.n_steps

    def __repr__(self):
        return (f"ContinuousTrajectories(n_tasks={self.n_tasks}, n_episodes={self.n_episodes}, "
                f"n_steps={self.n_steps}, obs_dim={self.obs_dim})")


def rollout_mlp(batch, params, n_episodes, rng, *, hidden, activation="tanh", policy_of_task=None):
    """Run ``n_episodes`` episodes of an MLP softmax policy on every task of ``batch``, in one
    kernel call.

    Parameters
    ----------
    batch : PointNavigationBatch or CartPolesBatch (T tasks, obs_dim D, A actions, horizon H)
    params : float64 (P,) -- one policy for every task -- or (n_policies, P), finite; P is the
        size of the MLP (D, *hidden, A) (:func:`metarl_fast.reference.mlp.mlp_layout`).  A
        (T, P) array (one adapted policy per task, as in MAML) is used as is, without copies.
    n_episodes : int >= 1, episodes per task
    rng : numpy.random.Generator (or int seed); the draws are documented in
        :mod:`metarl_fast.reference.continuous_rollout` (a fixed number per call)
    hidden : tuple of int, the hidden layer widths (may be empty: a linear policy)
    activation : "tanh" or "relu"
    policy_of_task : int (T,) in ``[0, n_policies)``, optional: the policy of each task.  Default:
        policy ``i`` for task ``i`` when ``params`` is (T, P), policy 0 when it is (P,) or (1, P).

    Returns
    -------
    ContinuousTrajectories

    Raises TypeError / ValueError naming the argument (nothing is drawn then), and
    FloatingPointError if a logit overflows (the Generator's state is then restored).
    """
    if not isinstance(batch, (PointNavigationBatch, CartPolesBatch)):
        raise TypeError(f"batch must be a PointNavigationBatch or CartPolesBatch "
                        f"(metarl_fast.continuous_tasks), got {type(batch).__name__}")
    rng = _validate.as_generator(rng)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    hidden = _mlp.check_hidden(hidden)
    activation = _mlp.check_activation(activation)
    T = batch.n_tasks
    _validate.check_table_size(T * n_episodes * batch.horizon,
                               f"rollout_mlp: n_tasks x n_episodes x horizon = {T} x {n_episodes} x "
                               f"{batch.horizon} steps")
    if policy_of_task is None:
        try:
            shape = np.shape(params)
        except (ValueError, TypeError):  # (not an array: the kernel's check names the problem)
            shape = ()
        n_policies = shape[0] if len(shape) == 2 else 1
        if n_policies == 1:
            policy_of_task = np.zeros(T, dtype=np.int64)
        elif n_policies == T:
            policy_of_task = np.arange(T, dtype=np.int64)
        else:
            raise ValueError(f"params holds {n_policies} policies for {T} tasks: pass "
                             f"policy_of_task (the policy of each task), or one policy per task")
    if isinstance(batch, CartPolesBatch):
        out = active.continuous_rollout.cartpoles_rollout(
            batch.params, params, policy_of_task, hidden, activation, n_episodes, batch.horizon, rng)
    else:
        out = active.continuous_rollout.point_navigation_rollout(
            batch.goals, batch.moves, params, policy_of_task, hidden, activation, n_episodes,
            batch.horizon, rng)
    return ContinuousTrajectories(*out)
