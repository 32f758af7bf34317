"""In-context meta-RL for Bernoulli bandits: a policy that has learned how to explore.

:class:`InContextBanditLearner` is the RL^2 idea (Duan et al. 2016; Wang et al. 2016) with an
explicit memory instead of a recurrent network: during a trial it keeps each arm's successes and
failures, turns them into a few per-arm features (posterior mean and spread, the knowledge
gradient, the pulls left, ... -- see :mod:`metarl_fast.reference.incontext`) and pulls an arm from
``softmax(features @ weights)``.  One weight vector scores every arm, so the policy is symmetric in
the arms.  Meta-training (:meth:`InContextBanditLearner.fit`) is REINFORCE on the total reward of
whole trials over tasks drawn from the prior ``p ~ U[0, 1]^k``; at meta-test nothing is updated:
the exploration happens *in context*, through the features.

Every trial runs inside one kernel call of the active backend (``active.incontext``), without the
GIL in the Cython backend; Python is touched once per meta-iteration.
"""
import numpy as np

from metarl_fast import _validate, io
from metarl_fast._backend import active
from metarl_fast.baselines import sample_arm_means
from metarl_fast.reference.incontext import FEATURE_NAMES, MAX_ABS_WEIGHT, N_FEATURES, check_weights

__all__ = ["InContextBanditLearner", "bandit_features", "run_trials", "reinforce_trials",
           "baselined_gradient", "trial_log_probs", "fresh_trial_terms", "replayed_trial_terms",
           "FEATURE_NAMES", "N_FEATURES", "PRETRAINED_WEIGHTS"]

LEARNER_FORMAT_VERSION = 1

# The weights of ``InContextBanditLearner.pretrained()``: exactly what
#     InContextBanditLearner().fit(5, 10, np.random.default_rng(0), n_iterations=100, batch_size=5000)
# returns on the Cython backend (~2 s); tests/test_incontext.py re-runs that call and compares.
# On 100k fresh trials they earn 99.8% of the Bayes-optimal value with 5 arms and 10 pulls, and the
# same weights beat Thompson sampling and posterior-greedy with 25 and 50 pulls (the features carry
# the time left, so one weight vector serves every horizon).
PRETRAINED_CALL = dict(n_arms=5, n_pulls=10, seed=0, n_iterations=100, batch_size=5000)
PRETRAINED_WEIGHTS = np.array([
    8.348966176459916, -1.4728021787387962, 0.6523095331550189, 14.136077051766092,
    14.28179836889924, 8.615382139757118, 0.6471098439498495, 8.43020332554525])
PRETRAINED_WEIGHTS.setflags(write=False)


def bandit_features(successes, failures, n_remaining, n_pulls):
    """Per-arm features ``(n_tasks, n_arms, N_FEATURES)`` float64 from int counts (n_tasks, n_arms).

    See :func:`metarl_fast.reference.incontext.bandit_features`.
    """
    return active.incontext.bandit_features(successes, failures, n_remaining, n_pulls)


def run_trials(weights, arm_means, n_pulls, rng, actions_out=None, features_out=None,
               rewards_out=None):
    """Total reward (float64 (n_tasks,)) of one in-context trial per task; optionally the
    actions, every arm's features and the rewards of each step.

    See :func:`metarl_fast.reference.incontext.run_trials`.
    """
    rng = _validate.as_generator(rng)
    return active.incontext.run_trials(weights, arm_means, n_pulls, rng, actions_out,
                                       features_out, rewards_out)


def reinforce_trials(weights, arm_means, n_pulls, rng):
    """Trials plus the REINFORCE sums ``(totals, weighted_score, score_sums, reward_sums)``.

    See :func:`metarl_fast.reference.incontext.reinforce_trials`.
    """
    rng = _validate.as_generator(rng)
    return active.incontext.reinforce_trials(weights, arm_means, n_pulls, rng)


def baselined_gradient(weighted_score, score_sums, reward_sums, n_tasks):
    """The policy gradient of the mean total reward from :func:`reinforce_trials`'s sums.

    Unbiased, with a leave-one-out baseline: for trial ``i`` at pull (step slot) ``t`` the
    baseline is the mean reward-to-go of the batch's *other* trials,
    ``b_i[t] = (RS[t] - G_i[t]) / (n - 1)`` with ``RS[t] = sum_{t' >= t} reward_sums[t']`` the
    batch's total reward-to-go, ``G_i[t]`` trial ``i``'s own and ``n = n_tasks``.  It does not
    depend on trial ``i``'s actions, so (the trials being independent) the estimate's
    expectation is the gradient.  (The batch *mean* ``RS[t] / n`` includes the trial's own
    reward-to-go, and its estimate has expectation ``(1 - 1/n)`` times the gradient.)

    Derivation from the sums alone: with ``score_i[t]`` the score of trial ``i`` at ``t``,
    ``W = weighted_score = sum_{i,t} G_i[t] score_i[t]`` and ``SS = score_sums``,
    ``sum_i b_i[t] score_i[t] = (RS[t] SS[t] - sum_i G_i[t] score_i[t]) / (n - 1)``, so with
    ``M = sum_t RS[t] SS[t]``::

        grad = (W - (M - W) / (n - 1)) / n = (W - M / n) / (n - 1)

    which is exactly ``n / (n - 1)`` times the mean-baseline gradient ``(W - M / n) / n``.  With
    ``n == 1`` there is no other trial: ``b = 0`` and ``grad = W``; with ``n == 0`` (no trials,
    ``W = 0``) the gradient is zero.  Returns float64 (N_FEATURES,).
    """
    weighted_score = np.asarray(weighted_score, dtype=np.float64)
    if n_tasks <= 1:
        return weighted_score.copy()
    reward_to_go = np.cumsum(reward_sums[::-1])[::-1]
    # an elementwise product and a row-by-row sum rather than BLAS: the same bits on every machine,
    # so a seed reproduces the trained weights exactly (see PRETRAINED_WEIGHTS)
    mean_baselined = weighted_score - (reward_to_go[:, None] * score_sums).sum(axis=0) / n_tasks
    return mean_baselined / (n_tasks - 1)


def trial_log_probs(weights, features, actions):
    """Scores of recorded trials under ``weights``: ``log pi(a_k | h_k)`` and its gradient.

    ``features`` float64 (n, K, A, F) (what each step saw, from ``run_trials(...,
    features_out=)``), ``actions`` int (n, K) (negative or 0 where a step did not happen, its
    features then all zero).  The policy is ``softmax(features @ weights)``.  Returns ``logp``
    float64 (n, K) and ``score`` float64 (n, K, F) ``= phi[a] - sum_b pi_b phi[b]``.
    """
    w = np.asarray(weights, dtype=np.float64)
    n, K, A, F = features.shape
    flat = features.reshape(n * K, A, F)
    logits = flat @ w                                                  # (n K, A)
    logits -= logits.max(axis=1, keepdims=True)
    log_all = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    chosen = np.arange(n * K) * A + np.maximum(actions, 0).reshape(-1)  # (step, action) cells
    logp = log_all.reshape(-1)[chosen].reshape(n, K)
    mean_phi = np.matmul(np.exp(log_all)[:, None, :], flat)[:, 0, :]  # sum_b pi_b phi[b]
    score = flat.reshape(n * K * A, F)[chosen] - mean_phi
    return logp, score.reshape(n, K, F)


def _to_go(rewards):
    """Reward-to-go along the slots: ``G[:, k] = sum_{k' >= k} rewards[:, k']``."""
    return np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]


def fresh_trial_terms(score, rewards):
    """The sum over fresh trials of their REINFORCE terms with the leave-one-out baseline
    (:func:`baselined_gradient` from per-step scores (n, K, F) and rewards (n, K)); returns
    ``(sum of terms (F,), the batch's mean reward-to-go per slot (K,))``.  The terms' mean is
    :func:`baselined_gradient`'s estimate."""
    n = score.shape[0]
    to_go = _to_go(rewards)
    total = to_go.sum(axis=0)
    baseline = (total[None, :] - to_go) / (n - 1) if n > 1 else np.zeros_like(to_go)
    return np.einsum("nk,nkf->f", to_go - baseline, score), total / max(n, 1)


def replayed_trial_terms(weights, replayed, baseline, rho_bar=None):
    """The sum over replayed trials (:meth:`metarl_fast.pool.TrialPool.replay`) of their
    per-decision importance-sampled REINFORCE terms at ``weights``:
    ``sum_k score_k (sum_{k' >= k} c_k' r_k' - c_k b_k)`` with ``c_k = prod_{j <= k} rho_j``,
    ``rho_j = pi(a_j | h_j) / mu(a_j | h_j)`` (each truncated at ``rho_bar`` when given) and
    ``b`` (K,) a baseline that does not depend on the replayed trials (the fresh batch's mean
    reward-to-go).  Untruncated, each trial's term is an unbiased estimate of the gradient of
    the mean total reward at ``weights``.  Returns ``(sum of terms (F,), the untruncated ratios
    (n, K))``; FloatingPointError if the ratio products overflow (truncate them)."""
    features, actions, rewards, behaviour_logp = replayed
    logp, score = trial_log_probs(weights, features, actions)
    log_rho = logp - behaviour_logp
    with np.errstate(over="ignore", invalid="ignore"):
        ratios = np.exp(log_rho)
        if rho_bar is not None:
            log_rho = np.minimum(log_rho, np.log(rho_bar))
        c = np.exp(np.cumsum(log_rho, axis=1))
        coef = _to_go(c * rewards) - c * baseline[None, :]
        terms = np.einsum("nk,nkf->f", coef, score)
    if not np.all(np.isfinite(terms)):
        raise FloatingPointError("replayed trials: the importance ratio products overflow "
                                 "(truncate them with rho_bar)")
    return terms, ratios


class InContextLearnerBase:
    """What the in-context learners share: Adam meta-training on a trial-level policy gradient,
    persistence (atomic ``.npz``, no pickle) and equality.  Subclasses set ``_kind``,
    ``n_features`` and ``_trained_on_len`` and provide ``fit`` (which builds the per-iteration step)."""

    _kind = None
    n_features = None
    _trained_on_len = None

    def _adam_fit(self, step, n_iterations, batch_size, learning_rate, final_learning_rate, betas,
                  eps, callback, checkpoint_path, checkpoint_every):
        """The meta-training loop; ``step(batch_size) -> (grad, totals, trained_on)`` draws a batch
        of tasks, plays one trial on each and returns the REINFORCE gradient."""
        n_iterations = _validate.positive_int(n_iterations, "n_iterations")
        batch_size = _validate.positive_int(batch_size, "batch_size")
        lr0 = _validate.finite_float(learning_rate, "learning_rate", low=0.0, low_open=True)
        lr1 = _validate.finite_float(final_learning_rate, "final_learning_rate", low=0.0, low_open=True)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError) as err:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from err
        beta1 = _validate.finite_float(beta1, "beta1", low=0.0, high=1.0, high_open=True)
        beta2 = _validate.finite_float(beta2, "beta2", low=0.0, high=1.0, high_open=True)
        eps = _validate.finite_float(eps, "eps", low=0.0, low_open=True)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        checkpoint_every = _validate.positive_int(checkpoint_every, "checkpoint_every")

        first_moment = np.zeros(self.n_features)
        second_moment = np.zeros(self.n_features)
        history = np.empty(n_iterations)
        decay = (lr1 / lr0) ** (1.0 / n_iterations)
        for it in range(n_iterations):
            try:
                grad, totals, trained_on = step(batch_size)
            except FloatingPointError as err:
                raise FloatingPointError(f"meta-training diverged at iteration {it}: {err}; "
                                         "the weights keep their values from before this "
                                         "iteration") from err
            history[it] = totals.mean()
            first_moment = beta1 * first_moment + (1.0 - beta1) * grad
            second_moment = beta2 * second_moment + (1.0 - beta2) * grad * grad
            step_size = lr0 * decay ** it / (1.0 - beta1 ** (it + 1))
            denom = np.sqrt(second_moment / (1.0 - beta2 ** (it + 1))) + eps
            new_weights = self.weights + step_size * first_moment / denom
            if not np.all(np.isfinite(new_weights)) or np.abs(new_weights).max() > MAX_ABS_WEIGHT:
                raise FloatingPointError(
                    f"meta-training diverged at iteration {it}: the weights would become "
                    f"non-finite or exceed {MAX_ABS_WEIGHT:g} (lower the learning rate); "
                    "the weights keep their values from before this iteration")
            self.weights[...] = new_weights
            self.trained_on = trained_on
            if callback is not None:
                callback(it, self, totals)
            if checkpoint_path is not None and ((it + 1) % checkpoint_every == 0
                                                or it + 1 == n_iterations):
                self.save(checkpoint_path)
        return history

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the learner atomically to ``path`` (.npz via :mod:`metarl_fast.io`, no pickle)."""
        trained_on = np.asarray(self.trained_on if self.trained_on is not None else (), dtype=np.int64)
        arrays = {"weights": self.weights, "trained_on": trained_on,
                  "n_features": np.array(self.n_features, dtype=np.int64)}
        return io.save_npz(path, arrays, kind=self._kind, version=LEARNER_FORMAT_VERSION)

    @classmethod
    def load(cls, path):
        """Read a learner written by :meth:`save`; raises ``CheckpointError`` on a bad file."""
        arrays, _ = io.load_npz(path, kind=cls._kind, versions={LEARNER_FORMAT_VERSION})
        try:
            weights, trained_on = arrays["weights"], arrays["trained_on"]
            if io.integer(arrays["n_features"], "n_features") != cls.n_features:
                raise ValueError(f"{int(arrays['n_features'])} features, this version has {cls.n_features}")
            if weights.dtype != np.float64:
                raise ValueError(f"weights of dtype {weights.dtype}")
            learner = cls(weights)
            if trained_on.dtype != np.int64 or trained_on.shape not in ((0,), (cls._trained_on_len,)):
                raise ValueError(f"trained_on of shape {trained_on.shape}")
            if trained_on.size and trained_on.min() < 1:
                raise ValueError(f"trained_on values must be >= 1, got {trained_on.tolist()}")
        except KeyError as err:
            raise io.CheckpointError(f"{path}: missing array {err}") from err
        except (ValueError, TypeError) as err:
            raise io.CheckpointError(f"{path}: inconsistent learner file ({err})") from err
        learner.trained_on = tuple(int(v) for v in trained_on) or None
        return learner

    def __eq__(self, other):
        return (type(self) is type(other) and self.trained_on == other.trained_on
                and np.array_equal(self.weights, other.weights))

    __hash__ = None


class InContextBanditLearner(InContextLearnerBase):
    """Linear softmax over per-arm posterior features, meta-trained to explore Bernoulli bandits.

    Parameters
    ----------
    weights : float (N_FEATURES,), optional
        Initial feature weights (default zeros: the uniformly random agent).  Order and meaning in
        ``FEATURE_NAMES`` / :mod:`metarl_fast.reference.incontext`.

    Attributes
    ----------
    weights : float64 (N_FEATURES,)
        The meta-learned weights, updated in place by :meth:`fit`.
    trained_on : tuple (n_arms, n_pulls) or None
        The task family of the last :meth:`fit`.

    Examples
    --------
    >>> learner = InContextBanditLearner()
    >>> history = learner.fit(5, 10, np.random.default_rng(0))            # doctest: +SKIP
    >>> learner.evaluate(5, 10, 100_000, np.random.default_rng(1)).mean()  # doctest: +SKIP
    """

    _kind = "InContextBanditLearner"
    feature_names = FEATURE_NAMES
    n_features = N_FEATURES
    _trained_on_len = 2

    def __init__(self, weights=None):
        self.weights = np.zeros(N_FEATURES) if weights is None else check_weights(weights).copy()
        self.trained_on = None

    @classmethod
    def pretrained(cls):
        """A learner with :data:`PRETRAINED_WEIGHTS` (meta-trained on 5 arms, 10 pulls; see there)."""
        learner = cls(PRETRAINED_WEIGHTS)
        learner.trained_on = (PRETRAINED_CALL["n_arms"], PRETRAINED_CALL["n_pulls"])
        return learner

    # ------------------------------------------------------------------ acting
    def run_trials(self, arm_means, n_pulls, rng, actions_out=None):
        """Play one trial of ``n_pulls`` pulls on each task; no learning happens.

        Parameters
        ----------
        arm_means : float (n_tasks, n_arms), values in [0, 1]
        n_pulls : int >= 1
        rng : numpy.random.Generator
        actions_out : int64 (n_tasks, n_pulls), optional  receives the pulled arms

        Returns
        -------
        totals : float64 (n_tasks,)
        """
        rng = _validate.as_generator(rng)
        return run_trials(self.weights, arm_means, n_pulls, rng, actions_out)

    def evaluate(self, n_arms, n_pulls, n_trials, rng):
        """Total rewards of ``n_trials`` trials on tasks drawn from the prior (float64 (n_trials,)).

        Arm means come first from ``rng.random((n_trials, n_arms))``, as for the baselines'
        :meth:`~metarl_fast.baselines.BanditAgent.evaluate`.
        """
        rng = _validate.as_generator(rng)
        n_trials = _validate.positive_int(n_trials, "n_trials")
        n_pulls = _validate.positive_int(n_pulls, "n_pulls")
        return self.run_trials(sample_arm_means(n_trials, n_arms, rng), n_pulls, rng)

    def policy_gradient(self, arm_means, n_pulls, rng):
        """REINFORCE estimate of d mean-total-reward / d weights on the given tasks.

        Returns ``(grad float64 (N_FEATURES,), totals float64 (n_tasks,))``.
        """
        rng = _validate.as_generator(rng)
        totals, weighted, score_sums, reward_sums = reinforce_trials(
            self.weights, arm_means, n_pulls, rng)
        return baselined_gradient(weighted, score_sums, reward_sums, totals.shape[0]), totals

    # ------------------------------------------------------------------ meta-training
    def fit(self, n_arms, n_pulls, rng, *, n_iterations=100, batch_size=10_000,
            learning_rate=1.0, final_learning_rate=0.1, betas=(0.9, 0.999), eps=1e-8,
            callback=None, checkpoint_path=None, checkpoint_every=10):
        """Meta-train the weights by policy-gradient ascent on the mean total reward of trials.

        Each iteration draws ``batch_size`` tasks from the prior (``rng.random((batch_size,
        n_arms))``), plays one trial on each (:func:`reinforce_trials`) and takes one Adam ascent
        step along :func:`baselined_gradient`.  The step size decays geometrically from
        ``learning_rate`` to ``final_learning_rate``; the weight norm grows as the policy sharpens,
        which anneals its temperature.

        Parameters
        ----------
        n_arms, n_pulls : int >= 1
            The task family: arms per task and pulls per trial.
        rng : numpy.random.Generator
            The only source of randomness: the same seed gives the same weights.
        n_iterations, batch_size : int >= 1
        learning_rate, final_learning_rate : float > 0
        betas : (float, float) in [0, 1);  eps : float > 0
            Adam's moment decays and denominator guard.
        callback : callable(iteration, learner, totals) or None
            Called after every step (``totals`` float64 (batch_size,) of that iteration).
        checkpoint_path : path or None
            If given, the learner is saved there (atomically, :meth:`save`) every
            ``checkpoint_every`` iterations and after the last one; a diverged step is never saved.
        checkpoint_every : int >= 1

        Returns
        -------
        history : float64 (n_iterations,)
            Mean total reward of each iteration's batch (before its update).

        Raises
        ------
        FloatingPointError
            If a step would make the weights non-finite or larger than ``1e100``: the message
            names the iteration and ``weights`` keep their last valid values.
        """
        rng = _validate.as_generator(rng)
        n_arms = _validate.positive_int(n_arms, "n_arms")
        n_pulls = _validate.positive_int(n_pulls, "n_pulls")
        _validate.check_rng(rng)

        _validate.check_table_size(_validate.positive_int(batch_size, "batch_size") * n_arms,
                                   f"batch_size={batch_size:,}: a batch of batch_size x n_arms arm means")

        def step(batch_size):
            arm_means = rng.random((batch_size, n_arms))
            grad, totals = self.policy_gradient(arm_means, n_pulls, rng)
            return grad, totals, (n_arms, n_pulls)

        return self._adam_fit(step, n_iterations, batch_size, learning_rate, final_learning_rate,
                              betas, eps, callback, checkpoint_path, checkpoint_every)

    def __repr__(self):
        return f"InContextBanditLearner(trained_on={self.trained_on})"
