"""In-context meta-RL for finite tabular MDPs: a policy that has learned how to explore a task.

:class:`InContextMDPLearner` is the RL^2 idea (Duan et al. 2016) with an explicit memory instead of
a recurrent network.  A *trial* is several episodes on one unknown task; across them the learner
keeps per state-action visit counts, reward sums and transition counts.  At the start of every
episode it runs a short value iteration on the empirical model (empirical and optimistic
Q-values), and at every step it scores each action of the current state with features shared
across actions -- shrunk mean reward, optimism bonus, visit fraction, those Q-values, the time
left in the trial (table in :mod:`metarl_fast.reference.incontext_mdp`) -- and draws from
``softmax(features @ weights)``.  Meta-training (:meth:`InContextMDPLearner.fit`) is REINFORCE on
the total reward of whole trials over tasks drawn from a task family; at meta-test nothing is
updated: the exploration happens *in context*, through the features.

Every trial runs inside one kernel call of the active backend (``active.incontext_mdp``), without
the GIL in the Cython backend; Python is touched once per meta-iteration.
"""
import numpy as np

from metarl_fast import _validate
from metarl_fast._backend import active
from metarl_fast.baselines import oracle_value
from metarl_fast.incontext import InContextLearnerBase, baselined_gradient
from metarl_fast.reference.incontext_mdp import FEATURE_NAMES, N_FEATURES, check_weights
from metarl_fast.tasks import TabularMDPs, TaskBatch, TaskDistribution

__all__ = ["InContextMDPLearner", "empirical_q", "run_trials", "reinforce_trials",
           "oracle_trial_values", "FEATURE_NAMES", "N_FEATURES"]

LEARNER_FORMAT_VERSION = 1


def _tables(tasks):
    if not isinstance(tasks, TaskBatch):
        raise TypeError(f"tasks must be a metarl_fast.tasks.TaskBatch, got {type(tasks).__name__}")
    return tasks.tables


def empirical_q(count, reward_sum, trans, seen_terminal, horizon):
    """Empirical and optimistic Q-values ``(n_tasks, horizon, S, A)`` of the learner's statistics.

    See :func:`metarl_fast.reference.incontext_mdp.empirical_q`.
    """
    return active.incontext_mdp.empirical_q(count, reward_sum, trans, seen_terminal, horizon)


def run_trials(weights, tasks, n_episodes, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """Episode returns float64 (n_tasks, n_episodes) of one in-context trial per task of ``tasks``;
    optionally the actions, every action's features and the rewards of each step.

    See :func:`metarl_fast.reference.incontext_mdp.run_trials` (``tasks`` a TaskBatch).
    """
    rng = _validate.as_generator(rng)
    return active.incontext_mdp.run_trials(weights, _tables(tasks), n_episodes, rng, actions_out,
                                           features_out, rewards_out)


def reinforce_trials(weights, tasks, n_episodes, rng):
    """Trials plus the REINFORCE sums ``(episode_returns, weighted_score, score_sums, reward_sums)``.

    See :func:`metarl_fast.reference.incontext_mdp.reinforce_trials` (``tasks`` a TaskBatch).
    """
    rng = _validate.as_generator(rng)
    return active.incontext_mdp.reinforce_trials(weights, _tables(tasks), n_episodes, rng)


def oracle_trial_values(tasks, n_episodes):
    """Expected total reward of a trial for the oracle that knows each task: float64 (n_tasks,).

    ``n_episodes * baselines.oracle_value(task.model())`` -- the ceiling of any learner.
    """
    _tables(tasks)
    n_episodes = _validate.positive_int(n_episodes, "n_episodes")
    return np.array([n_episodes * oracle_value(task.model()) for task in tasks])


def _task_source(tasks):
    if tasks is None:
        return TabularMDPs()
    if not isinstance(tasks, (TaskDistribution, TaskBatch)):
        raise TypeError("tasks must be a metarl_fast.tasks.TaskDistribution, a TaskBatch or None, "
                        f"got {type(tasks).__name__}")
    return tasks


def _draw_tasks(source, n, rng):
    """``n`` tasks: sampled from a distribution, or drawn with replacement from a TaskBatch
    (``rng.integers(len(batch), size=n)``)."""
    if isinstance(source, TaskBatch):
        per_task = source.n_states * source.n_actions * (source.n_states if source.next_state is None else 1)
        _validate.check_table_size(n * per_task, f"batch_size={n:,}: a batch of batch_size tasks' "
                                                 f"transition tables ({per_task:,} entries each)")
        return source[rng.integers(source.n_tasks, size=n)]
    return source.sample(n, rng)


class InContextMDPLearner(InContextLearnerBase):
    """Linear softmax over per-action statistics of the trial, meta-trained to explore tabular MDPs.

    Parameters
    ----------
    weights : float (N_FEATURES,), optional
        Initial feature weights (default zeros: the uniformly random agent).  Order and meaning in
        ``FEATURE_NAMES`` / :mod:`metarl_fast.reference.incontext_mdp`.

    Attributes
    ----------
    weights : float64 (N_FEATURES,)
        The meta-learned weights, updated in place by :meth:`fit`.  The same weights serve any
        number of states and actions and any horizon.
    trained_on : tuple (n_states, n_actions, horizon, n_episodes) or None
        The task shape of the last :meth:`fit`.

    Examples
    --------
    >>> from metarl_fast.tasks import TabularMDPs
    >>> family = TabularMDPs(5, 3, 10)
    >>> learner = InContextMDPLearner()
    >>> history = learner.fit(family, 5, np.random.default_rng(0))           # doctest: +SKIP
    >>> learner.evaluate(family, 5, np.random.default_rng(1), 10_000).mean()  # doctest: +SKIP
    """

    _kind = "InContextMDPLearner"
    _trained_on_len = 4
    feature_names = FEATURE_NAMES
    n_features = N_FEATURES

    def __init__(self, weights=None):
        self.weights = np.zeros(N_FEATURES) if weights is None else check_weights(weights).copy()
        self.trained_on = None

    # ------------------------------------------------------------------ acting
    def run_trials(self, tasks, n_episodes, rng, actions_out=None):
        """Play one trial of ``n_episodes`` episodes on each task; no learning happens.

        Parameters
        ----------
        tasks : metarl_fast.tasks.TaskBatch   ``T`` tasks
        n_episodes : int >= 1
        rng : numpy.random.Generator
        actions_out : int64 (T, n_episodes, horizon), optional
            Receives the actions (``-1`` after an episode ended).

        Returns
        -------
        episode_returns : float64 (T, n_episodes)
        """
        rng = _validate.as_generator(rng)
        return run_trials(self.weights, tasks, n_episodes, rng, actions_out)

    def evaluate(self, tasks, n_episodes, rng, n_trials=None):
        """Total reward of each trial: float64 (n_trials,).

        ``tasks`` is a TaskBatch (one trial per task; ``n_trials`` must be None or its length) or
        a TaskDistribution (``n_trials`` tasks are sampled first, from ``rng``).
        """
        rng = _validate.as_generator(rng)
        _validate.check_rng(rng)
        if isinstance(tasks, TaskDistribution):
            if n_trials is None:
                raise ValueError("n_trials is required when tasks is a TaskDistribution")
            tasks = tasks.sample(_validate.positive_int(n_trials, "n_trials"), rng)
        elif n_trials is not None and (not isinstance(tasks, TaskBatch)
                                       or _validate.positive_int(n_trials, "n_trials") != len(tasks)):
            raise ValueError(f"n_trials must be None or the number of tasks, got {n_trials!r}")
        return self.run_trials(tasks, n_episodes, rng).sum(axis=1)

    def policy_gradient(self, tasks, n_episodes, rng):
        """REINFORCE estimate of d mean-total-trial-reward / d weights on the given tasks.

        Returns ``(grad float64 (N_FEATURES,), totals float64 (n_tasks,))``; the baseline is the
        mean reward-to-go of the batch's *other* trials at each step slot (leave-one-out, so the
        estimate is unbiased; :func:`metarl_fast.incontext.baselined_gradient`).
        """
        rng = _validate.as_generator(rng)
        returns, weighted, score_sums, reward_sums = reinforce_trials(
            self.weights, tasks, n_episodes, rng)
        totals = returns.sum(axis=1)
        return baselined_gradient(weighted, score_sums, reward_sums, totals.shape[0]), totals

    # ------------------------------------------------------------------ meta-training
    def fit(self, tasks, n_episodes, rng, *, n_iterations=100, batch_size=2000,
            learning_rate=0.3, final_learning_rate=0.03, betas=(0.9, 0.999), eps=1e-8,
            callback=None, checkpoint_path=None, checkpoint_every=10):
        """Meta-train the weights by policy-gradient ascent on the mean total reward of trials.

        Each iteration draws ``batch_size`` tasks (``tasks.sample(batch_size, rng)`` for a
        distribution; for a TaskBatch, ``batch_size`` of its tasks with replacement), plays one
        trial on each (:func:`reinforce_trials`) and takes one Adam ascent step.  The step size
        decays geometrically from ``learning_rate`` to ``final_learning_rate``.

        Parameters
        ----------
        tasks : TaskDistribution, TaskBatch or None
            The task family (None: ``TabularMDPs()``).
        n_episodes : int >= 1
            Episodes per trial.
        rng : numpy.random.Generator
            The only source of randomness: the same seed gives the same weights.
        n_iterations, batch_size : int >= 1
        learning_rate, final_learning_rate : float > 0
        betas : (float, float) in [0, 1);  eps : float > 0
        callback : callable(iteration, learner, totals) or None
            Called after every step (``totals`` float64 (batch_size,) of that iteration).
        checkpoint_path : path or None
            If given, the learner is saved there (atomically, :meth:`save`) every
            ``checkpoint_every`` iterations and after the last one; a diverged step is never saved.
        checkpoint_every : int >= 1

        Returns
        -------
        history : float64 (n_iterations,)
            Mean total trial reward of each iteration's batch (before its update).

        Raises
        ------
        FloatingPointError
            If a step would make the weights non-finite or larger than ``1e100``, or the trials
            overflow: the message names the iteration and ``weights`` keep their last valid values.
        """
        rng = _validate.as_generator(rng)
        source = _task_source(tasks)
        n_episodes = _validate.positive_int(n_episodes, "n_episodes")
        _validate.check_rng(rng)

        def step(batch_size):
            batch = _draw_tasks(source, batch_size, rng)
            grad, totals = self.policy_gradient(batch, n_episodes, rng)
            return grad, totals, (batch.n_states, batch.n_actions, batch.horizon, n_episodes)

        return self._adam_fit(step, n_iterations, batch_size, learning_rate, final_learning_rate,
                              betas, eps, callback, checkpoint_path, checkpoint_every)

    def __repr__(self):
        return f"InContextMDPLearner(trained_on={self.trained_on})"
