"""The meta-training loop, the evaluation protocol, run directories and checkpoints.

A run is fully described by a :class:`TrainConfig`.  :class:`MetaTrainer` repeats: draw a meta-batch
of tasks -> collect episodes with the fused rollout -> adapt (inner steps) -> meta-update ->
every ``eval_every`` iterations evaluate on held-out tasks -> checkpoint; until ``iterations``, the
``time_budget`` (seconds) or the ``target`` (mean post-adaptation return on the held-out tasks) is
reached.

Reproducibility: every random number of iteration ``i`` comes from
``SeedSequence(seed, spawn_key=(i,))`` (tasks from its child 0, episodes from its child 1; the
multi-task baseline's episodes from ``SeedSequence(seed, spawn_key=(i, 2))``), the held-out tasks
from ``SeedSequence(eval_seed, spawn_key=(0,))`` and the evaluation's adaptation episodes from
``SeedSequence(eval_seed, spawn_key=(1,))`` (a fresh generator for every initialisation
evaluated).  The RNG state of the run is therefore determined by ``(seed, iteration)``: a
checkpoint stores both, with the parameters and the optimizer state, and a resumed run continues
bit-identically.  ``metrics.jsonl`` holds no wall-clock values (the same seed
writes the same file); timings per phase go to ``timings.jsonl``.
"""
import dataclasses
import json
import math
import os
import signal
import sys
import time

import numpy as np

from metarl_fast import _validate, io, meta, task_specs
from metarl_fast.reference.incontext import MAX_ABS_WEIGHT
from metarl_fast.policy import TabularSoftmaxPolicy

TASK_FAMILIES = task_specs.BUILT_IN
ALGOS = ("maml", "fomaml", "reptile", "multitask", "in-context", "rl2")
# the in-context learners: meta-trained on whole trials, evaluated by their trial return (no adaptation steps)
TRIAL_ALGOS = ("in-context", "rl2")
CHECKPOINT_KIND = "MetaTrainerCheckpoint"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class TrainConfig:
    """Everything needed to repeat a run (written to ``config.toml``).

    ``tasks``: a built-in family (``gridnav``, ``tabular-mdp``, ``bandits``, ``chain``, and with
    continuous observations and an MLP policy ``point-nav``, ``cartpoles``), a spec
    string (``file:PATH.npz``, ``gym:ENV_ID``, ``MODULE:NAME``; see :mod:`metarl_fast.task_specs`)
    with ``env_kwargs`` a JSON object of keyword arguments, or any
    :class:`~metarl_fast.tasks.TaskDistribution` object (recorded as ``python:<its repr>``).
    """

    tasks: object = "gridnav"
    env_kwargs: str = ""             # gym:/MODULE:NAME tasks: a JSON object of keyword arguments
    grid_size: int = 7
    n_states: int = 10
    n_actions: int = 5
    n_arms: int = 5
    horizon: int = 0                 # 0: the family's default
    algo: str = "maml"
    estimator: str = "sampled"
    inner_estimator: str = "reinforce"
    baseline: str = "leave-one-out"  # per-step baseline of the sampled estimates (meta.BASELINES)
    hessian_data: str = "fresh"      # MAML's HVPs on fresh episodes or the inner step's (meta.HESSIAN_DATA)
    held_out_goals: int = 0          # gridnav: goal cells withheld from training, the test tasks' goals
    meta_batch: int = 20
    inner_steps: int = 1
    inner_lr: float = 1.0
    meta_lr: float = 0.05
    meta_optimizer: str = "adam"
    episodes_per_task: int = 20
    gamma: float = 1.0
    iterations: int = 1500
    time_budget: float = 0.0         # seconds; 0: none
    target: float = float("nan")     # stop when the held-out post-adaptation return reaches it
    eval_every: int = 250
    trial_episodes: int = 5          # in-context learners on MDP tasks: episodes per trial
    rl2_hidden: int = 64             # rl2: the GRU's hidden size
    rl2_lr: float = 0.003            # rl2: Adam's learning rate of the PPO updates
    ppo_epochs: int = 4              # rl2: PPO epochs over each iteration's trials
    ppo_minibatches: int = 4         # rl2: minibatches (groups of whole trials) per epoch
    ppo_clip: float = 0.2            # rl2: PPO's ratio clip
    gae_lambda: float = 0.95         # rl2: GAE's lambda (across the episodes of a trial)
    entropy_coef: float = 0.01       # rl2: entropy bonus
    checkpoint_every: int = 100
    eval_tasks: int = 200
    normalize_returns: bool = False  # each task's rewards divided by its returns' std (sampled estimator)
    replay: bool = False             # a replay pool shared across tasks (metarl_fast.pool)
    replay_capacity: int = 100_000   # transitions the pool holds
    replay_batch: int = 32           # stored episodes replayed per task in each gradient estimate
    replay_order: str = "uniform"    # uniform, sequences (whole episodes) or windows (actor-critic)
    replay_window: int = 8           # steps per replayed window (replay_order "windows")
    rho_bar: float = 0.0             # truncation of the per-decision importance ratios (0: none)
    replay_ratio: int = 1            # meta-updates per iteration's environment steps (>1: first-order only)
    policy: str = "auto"             # auto (tabular for tabular tasks, mlp for point-nav / cartpoles), tabular, mlp
    hidden: str = "64,64"            # mlp: hidden widths, comma-separated ("" for none: a linear policy)
    activation: str = "tanh"         # mlp: tanh or relu
    eval_episodes: int = 20          # point-nav / cartpoles: episodes per held-out task for each measured return
    seed: int = 0
    eval_seed: int = 1_000_003
    backend: str = "cython"

    @property
    def tasks_name(self):
        """``tasks`` as the string a run records (``python:<repr>`` for a distribution object)."""
        from metarl_fast.tasks import TaskDistribution

        if isinstance(self.tasks, TaskDistribution):
            return task_specs.PYTHON_PREFIX + repr(self.tasks)
        return self.tasks

    @property
    def continuous(self):
        """True for the continuous-observation families (an MLP policy, Monte Carlo evaluation)."""
        return isinstance(self.tasks, str) and self.tasks in task_specs.CONTINUOUS

    def hidden_widths(self):
        """``hidden`` as a tuple of ints (ValueError naming it otherwise)."""
        text = self.hidden.strip() if isinstance(self.hidden, str) else None
        if text is None:
            raise ValueError(f"hidden must be a string of comma-separated widths, got {self.hidden!r}")
        try:
            widths = tuple(int(part) for part in text.split(",")) if text else ()
        except ValueError:
            raise ValueError(f"hidden must be comma-separated widths such as 64,64, got {self.hidden!r}") from None
        from metarl_fast.reference.mlp import check_hidden

        return check_hidden(widths, "hidden")

    def validate(self):
        from metarl_fast.tasks import TaskDistribution

        if not isinstance(self.tasks, TaskDistribution):
            task_specs.kind_of(self.tasks)
            task_specs.parse_env_kwargs(self.env_kwargs)
            if self.env_kwargs.strip() and self.tasks in TASK_FAMILIES:
                raise ValueError("env-kwargs apply to gym: and MODULE:NAME tasks (the built-in families "
                                 "have their own options)")
        elif self.env_kwargs.strip():
            raise ValueError("env-kwargs apply to gym: and MODULE:NAME tasks, not to a distribution object")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.inner_estimator not in meta.ADVANTAGES:
            raise ValueError(f"inner-estimator must be one of {meta.ADVANTAGES}, got {self.inner_estimator!r}")
        if self.baseline not in meta.BASELINES:
            raise ValueError(f"baseline must be one of {meta.BASELINES}, got {self.baseline!r}")
        if self.hessian_data not in meta.HESSIAN_DATA:
            raise ValueError(f"hessian-data must be one of {meta.HESSIAN_DATA}, got {self.hessian_data!r}")
        _validate.positive_int(self.held_out_goals, "held-out-goals", minimum=0)
        if self.held_out_goals:
            n_goals = self.grid_size * self.grid_size - 1
            if self.tasks != "gridnav":
                raise ValueError("held-out-goals applies to --tasks gridnav only")
            if self.held_out_goals >= n_goals:
                raise ValueError(f"held-out-goals must leave a training goal: at most {n_goals - 1} "
                                 f"of the {n_goals} goals of a {self.grid_size}x{self.grid_size} grid")
        if self.estimator not in meta.ESTIMATORS:
            raise ValueError(f"estimator must be one of {meta.ESTIMATORS}, got {self.estimator!r}")
        for name in ("grid_size", "n_states", "n_actions", "n_arms", "meta_batch", "inner_steps",
                     "episodes_per_task", "iterations", "eval_every", "checkpoint_every", "eval_tasks",
                     "trial_episodes"):
            _validate.positive_int(getattr(self, name), name.replace("_", "-"))
        _validate.positive_int(self.horizon, "horizon", minimum=0)
        if self.algo == "rl2":
            self._validate_rl2()
        if self.normalize_returns:
            if self.algo == "in-context":
                raise ValueError("normalize-returns applies to the gradient-based algorithms (maml, fomaml, "
                                 "reptile, multitask)")
            if self.estimator != "sampled" or self.replay:
                raise ValueError("normalize-returns needs the sampled estimator without --replay")
        if self.replay:
            if self.estimator != "sampled":
                raise ValueError("replay needs the sampled estimator (not exact)")
            if self.algo == "in-context":
                if self.replay_order == "windows":
                    raise ValueError("the in-context learners replay whole trials: replay order "
                                     "uniform or sequences")
                self.replay_config()
            else:
                meta._check_replay_estimator(self.replay_config(), self.inner_estimator)
        if self.policy not in ("auto", "tabular", "mlp"):
            raise ValueError(f"policy must be auto, tabular or mlp, got {self.policy!r}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be tanh or relu, got {self.activation!r}")
        self.hidden_widths()
        _validate.positive_int(self.eval_episodes, "eval-episodes")
        if self.policy == "mlp" and not self.continuous:
            raise ValueError("an mlp policy meta-trains on the continuous-observation tasks (point-nav, "
                             "cartpoles); tabular tasks take the tabular policy")
        if self.continuous:
            if self.policy == "tabular":
                raise ValueError(f"{self.tasks} has continuous observations: it needs --policy mlp (or auto)")
            if self.algo in TRIAL_ALGOS:
                raise ValueError(f"the in-context learners run on bandit and tabular tasks, not {self.tasks}")
            if self.estimator != "sampled" or self.inner_estimator != "reinforce" or self.replay:
                raise ValueError(f"{self.tasks} with an mlp policy: the sampled REINFORCE estimator "
                                 f"without replay (no exact model, no tabular critic)")
        for name in ("seed", "eval_seed"):
            _validate.positive_int(getattr(self, name), name.replace("_", "-"), minimum=0)
        _validate.finite_float(self.inner_lr, "inner-lr", low=0.0, low_open=True)
        _validate.finite_float(self.meta_lr, "meta-lr", low=0.0, low_open=True)
        _validate.finite_float(self.gamma, "gamma", low=0.0, high=1.0)
        _validate.finite_float(self.time_budget, "time-budget", low=0.0)
        if not (math.isnan(self.target) or math.isfinite(self.target)):
            raise ValueError(f"target must be finite, got {self.target}")
        return self

    def _validate_rl2(self):
        from metarl_fast.reference.gru import MAX_HIDDEN

        if self.continuous:
            raise ValueError(f"the in-context learners run on bandit and tabular tasks, not {self.tasks}")
        if self.replay or self.normalize_returns:
            raise ValueError("rl2 trains on-policy by PPO on its own trials: no --replay, no --normalize-returns")
        for name in ("rl2_hidden", "ppo_epochs", "ppo_minibatches"):
            _validate.positive_int(getattr(self, name), name.replace("_", "-"))
        if self.rl2_hidden > MAX_HIDDEN:
            raise ValueError(f"rl2-hidden must be in 1..{MAX_HIDDEN}, got {self.rl2_hidden}")
        if self.meta_batch < self.ppo_minibatches:
            raise ValueError(f"meta-batch ({self.meta_batch} trials) must be at least ppo-minibatches "
                             f"({self.ppo_minibatches}): every minibatch needs a trial")
        _validate.finite_float(self.rl2_lr, "rl2-lr", low=0.0, low_open=True)
        _validate.finite_float(self.ppo_clip, "ppo-clip", low=0.0, low_open=True)
        _validate.finite_float(self.gae_lambda, "gae-lambda", low=0.0, high=1.0)
        _validate.finite_float(self.entropy_coef, "entropy-coef", low=0.0)

    def replay_config(self):
        """The :class:`~metarl_fast.pool.ReplayConfig` of ``--replay`` (None when replay is off)."""
        from metarl_fast.pool import ReplayConfig

        if not self.replay:
            return None
        rho_bar = _validate.finite_float(self.rho_bar, "rho-bar", low=0.0)
        if 0.0 < rho_bar < 1.0:
            raise ValueError(f"rho-bar must be 0 (no truncation) or >= 1, got {rho_bar}")
        if self.replay_ratio > 1 and self.algo == "maml":
            raise ValueError("replay-ratio above 1 needs a first-order algorithm (fomaml, reptile, "
                             "multitask): MAML's Hessian needs fresh episodes")
        return ReplayConfig(capacity=self.replay_capacity, episodes=self.replay_batch,
                            order=self.replay_order, rho_bar=rho_bar or None,
                            ratio=self.replay_ratio, window=self.replay_window)

    def goal_split(self):
        """GridNavigation's goal cells ``(training goals, held-out goals)``, int64 (n, 2) each.

        With ``held_out_goals = k > 0``, k of the cells (all but the start) are withheld from
        training, chosen by ``SeedSequence(seed, spawn_key=(2**30,))`` (a key no iteration uses):
        the split belongs to the training run, so ``metarl-fast eval`` with another eval seed still
        tests on goals the run never trained on.  With k = 0 both are every goal.
        """
        size = self.grid_size
        centre = (size // 2) * size + size // 2
        cells = np.array([c for c in range(size * size) if c != centre], dtype=np.int64)
        goals = np.stack(np.divmod(cells, size), axis=1)
        if not self.held_out_goals:
            return goals, goals
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2**30,)))
        withheld = np.zeros(cells.size, dtype=bool)
        withheld[rng.choice(cells.size, size=self.held_out_goals, replace=False)] = True
        return goals[~withheld], goals[withheld]

    def distribution(self, held_out=False):
        """The training task distribution, or (``held_out``) the one the test tasks come from: the
        same, except for GridNavigation with ``held_out_goals`` (the withheld goals only)."""
        from metarl_fast import tasks

        if isinstance(self.tasks, tasks.TaskDistribution):
            return self.tasks
        if self.tasks not in TASK_FAMILIES:
            return task_specs.build(self.tasks, self.env_kwargs, self.horizon)
        h = {} if self.horizon == 0 else {"horizon": self.horizon}
        if self.tasks == "gridnav":
            goals = self.goal_split()[1 if held_out else 0] if self.held_out_goals else None
            return tasks.GridNavigation(size=self.grid_size, goals=goals, **h)
        if self.tasks == "tabular-mdp":
            return tasks.TabularMDPs(n_states=self.n_states, n_actions=self.n_actions, **h)
        if self.tasks == "bandits":
            return tasks.BernoulliBandits(n_arms=self.n_arms, **h)
        if self.tasks == "point-nav":
            from metarl_fast.continuous_tasks import PointNavigation

            return PointNavigation(**h)
        if self.tasks == "cartpoles":
            from metarl_fast.continuous_tasks import CartPoles

            return CartPoles(**h)
        return tasks.Chain(n_states=self.n_states, n_actions=self.n_actions, **h)

    # -- TOML (flat table of scalars; read back with the standard library's tomllib) --
    def to_toml(self):
        lines = ["# metarl-fast run configuration (metarl-fast train --config this-file)"]
        for f in dataclasses.fields(self):
            value = self.tasks_name if f.name == "tasks" else getattr(self, f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = "nan" if math.isnan(value) else repr(value)
            elif isinstance(value, int):
                text = str(value)
            else:
                text = json.dumps(value)
            lines.append(f"{f.name} = {text}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, path):
        import tomllib

        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as err:
            raise ValueError(f"cannot read config {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config {path} is not valid TOML: {err}") from err
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data, source="config"):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(f"{source}: unknown setting {key!r}")
            default = fields[name].default
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f"{source}: {key} must be {type(default).__name__}, got {value!r}")
            kwargs[name] = value
        return cls(**kwargs)


def iteration_rngs(seed, iteration):
    """(tasks rng, episodes rng) of meta-iteration ``iteration``: children of SeedSequence(seed, (iteration,))."""
    ss = np.random.SeedSequence(seed, spawn_key=(iteration,))
    tasks_ss, episodes_ss = ss.spawn(2)
    return np.random.default_rng(tasks_ss), np.random.default_rng(episodes_ss)


def mean_ci(values):
    """Mean, standard deviation and 95% normal confidence half-width of a 1-D sample."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "ci95": 1.96 * std / math.sqrt(max(values.size, 1))}


def make_learner(config, policy):
    return meta.MetaLearner(
        policy, config.algo, inner_lr=config.inner_lr, inner_steps=config.inner_steps,
        meta_lr=config.meta_lr, meta_optimizer=config.meta_optimizer,
        episodes_per_task=config.episodes_per_task, gamma=config.gamma, estimator=config.estimator,
        inner_estimator=config.inner_estimator, baseline=config.baseline, hessian_data=config.hessian_data,
        replay=config.replay_config(), normalize_returns=config.normalize_returns)


def make_mlp_policy(config, batch):
    """The MLP policy of a continuous-task run (``hidden``, ``activation``), initialised as
    PyTorch's ``nn.Linear`` from ``SeedSequence(seed, spawn_key=(2**31,))``: the meta-learner and
    the multi-task baseline start from the same parameters."""
    from metarl_fast.policy import MLPSoftmaxPolicy

    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**31,)))
    return MLPSoftmaxPolicy(batch.obs_dim, batch.n_actions, hidden=config.hidden_widths(),
                            activation=config.activation, rng=rng)


def evaluate_continuous(config, params, test_tasks, *, baselines=True, multitask_params=None):
    """The evaluation protocol on held-out continuous tasks (``point-nav``, ``cartpoles``).

    As :func:`evaluate`, with returns measured by Monte Carlo instead of dynamic programming
    (there is no finite model): after 0, 1, ..., K sampled adaptation steps (``episodes_per_task``
    episodes each, ``inner_lr``), the mean undiscounted return of ``eval_episodes`` fresh episodes
    per task; mean, standard deviation and 95% confidence interval across tasks.  Every row adapts
    and is measured on the same streams (common random numbers).  Baselines: the uniform random
    policy (all parameters zero), a network from scratch (a fresh ``nn.Linear`` initialisation,
    adapted the same way) and the multi-task pre-trained network (when given).
    """
    from metarl_fast.continuous_meta import ContinuousPolicyProblem
    from metarl_fast.continuous_rollout import rollout_mlp

    probe = make_mlp_policy(config, test_tasks)
    sampled = ContinuousPolicyProblem(probe, test_tasks, config.episodes_per_task, config.gamma,
                                      baseline=config.baseline, normalize_returns=config.normalize_returns)
    rows = {}

    def measured(theta, rng):
        traj = rollout_mlp(test_tasks, theta, config.eval_episodes, rng, hidden=probe.hidden,
                           activation=probe.activation)
        return traj.episode_return.mean(axis=1)

    def adapted(name, init):
        rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))
        measure_rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(3,)))
        theta = np.broadcast_to(np.asarray(init, dtype=np.float64), (test_tasks.n_tasks, probe.n_params)).copy()
        steps = [measured(theta, measure_rng)]
        for _ in range(config.inner_steps):
            data = sampled.sample(theta, rng)
            theta = theta + config.inner_lr * sampled.grad(theta, data)
            steps.append(measured(theta, measure_rng))
        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[-1])}

    adapted(f"{config.algo} (meta-learned)", params)
    if baselines:
        uniform = np.zeros((test_tasks.n_tasks, probe.n_params))
        rows["random policy"] = mean_ci(measured(uniform, np.random.default_rng(
            np.random.SeedSequence(config.eval_seed, spawn_key=(3,)))))
        scratch_rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(4,)))
        from metarl_fast.reference.mlp import mlp_init

        adapted("from scratch", mlp_init(probe.obs_dim, probe.hidden, probe.n_actions, scratch_rng))
        if multitask_params is not None:
            adapted("multi-task pre-trained", multitask_params)
    return {"n_tasks": int(test_tasks.n_tasks), "inner_steps": config.inner_steps,
            "eval_seed": config.eval_seed, "eval_episodes": config.eval_episodes,
            "measured_by": "monte carlo", "results": rows}


def evaluate(config, params, test_tasks, *, baselines=True, multitask_params=None):
    """The evaluation protocol on held-out ``test_tasks``; returns a JSON-ready dict.

    Each gradient-based initialisation is adapted to every test task with ``inner_steps`` sampled
    policy-gradient steps (``episodes_per_task`` episodes each, ``inner_lr``); the return after
    0, 1, ..., K steps is the *exact* expected return of the adapted policy on that task (dynamic
    programming on the task's model: no evaluation noise).  Mean, standard deviation and 95%
    confidence interval across tasks.  Baselines on the same tasks: the uniform random policy, a
    learner from scratch (zero initialisation, same adaptation), the multi-task pre-trained
    policy (when given; same adaptation) and the oracle (optimal value by value iteration).
    """

    rows = {}
    n_states, n_actions = test_tasks.n_states, test_tasks.n_actions
    probe = TabularSoftmaxPolicy(n_states, n_actions)
    evaluator = meta.ExactPolicyProblem(probe, test_tasks, gamma=config.gamma)

    # one rollout's output memory, reused by every adaptation step of every row
    workspaces = meta.RolloutWorkspaces()

    def adapted(name, init):
        sampled = meta.SampledPolicyProblem(probe, test_tasks, config.episodes_per_task, config.gamma,
                                            advantage=config.inner_estimator, baseline=config.baseline,
                                            normalize_returns=config.normalize_returns,
                                            workspaces=workspaces)
        rng = np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))
        theta = np.broadcast_to(np.asarray(init, dtype=np.float64), (test_tasks.n_tasks, probe.n_params)).copy()
        steps = [evaluator.value(theta)]
        for _ in range(config.inner_steps):
            workspaces.begin()  # the previous step's episodes are no longer read
            data = sampled.sample(theta, rng)
            theta = theta + config.inner_lr * sampled.grad(theta, data)
            steps.append(evaluator.value(theta))
        rows[name] = {"after_steps": [mean_ci(v) for v in steps], **mean_ci(steps[-1])}

    adapted(f"{config.algo} (meta-learned)", params)
    if baselines:
        random_value = evaluator.value(np.zeros((test_tasks.n_tasks, probe.n_params)))
        rows["random policy"] = mean_ci(random_value)
        adapted("from scratch", np.zeros(probe.n_params))
        if multitask_params is not None:
            adapted("multi-task pre-trained", multitask_params)
        rows["oracle (knows the MDP)"] = mean_ci(evaluator.optimal_value())
    out = {"n_tasks": int(test_tasks.n_tasks), "inner_steps": config.inner_steps,
           "eval_seed": config.eval_seed, "results": rows}
    if config.tasks == "gridnav":
        train_goals, test_goals = config.goal_split()
        out["goals"] = {"train": train_goals.tolist(), "test": test_goals.tolist(),
                        "test_goals_seen_in_training": not config.held_out_goals}
    return out


class InContextTraining:
    """Meta-training of an in-context learner with the trainer's interface: one REINFORCE + Adam
    step on whole trials of a meta-batch of tasks.  Bandit tasks use
    :class:`~metarl_fast.incontext.InContextBanditLearner` (a trial is one episode of
    ``horizon`` pulls); MDP tasks use :class:`~metarl_fast.incontext_mdp.InContextMDPLearner`
    (a trial is ``trial_episodes`` episodes of one task)."""

    def __init__(self, config):
        from metarl_fast.incontext import InContextBanditLearner
        from metarl_fast.incontext_mdp import InContextMDPLearner
        from metarl_fast.optim import Adam

        self.bandits = config.tasks == "bandits"
        self.trial_episodes = config.trial_episodes
        self.learner = InContextBanditLearner() if self.bandits else InContextMDPLearner()
        self.params = self.learner.weights
        self.optimizer = Adam(self.params, lr=config.meta_lr)
        self.iteration = 0
        # --replay: whole trials in a TrialPool (built at the first step, when the shapes are known)
        self.replay = config.replay_config()
        self.pool = None

    def _step(self, grad):
        """One Adam ascent step along ``grad``; rolled back (DivergenceError) if it diverges."""
        saved = (self.params.copy(), self.optimizer.state_dict())
        self.optimizer.step(-grad)
        # the learners refuse weights above MAX_ABS_WEIGHT: a step there could never be resumed
        if not np.all(np.isfinite(self.params)) or np.abs(self.params).max() > MAX_ABS_WEIGHT:
            self.params[...] = saved[0]
            self.optimizer.load_state_dict(saved[1])
            raise meta.DivergenceError(f"meta-iteration {self.iteration + 1}: weights became non-finite "
                                       f"or larger than {MAX_ABS_WEIGHT:g} (rolled back)")

    def _recorded_trials(self, task_batch, rng):
        """One trial per task with every step recorded: ``(totals, features (T, K, A, F),
        actions (T, K), rewards (T, K))``, K the slots of a trial."""
        from metarl_fast import incontext, incontext_mdp

        T, A, F = task_batch.n_tasks, task_batch.n_actions, self.learner.n_features
        H = task_batch.horizon
        N = 1 if self.bandits else self.trial_episodes
        features = np.empty((T, N * H, A, F))
        actions = np.empty((T, N * H), dtype=np.int64)
        rewards = np.empty((T, N * H))
        if self.bandits:
            arm_means = np.ascontiguousarray(task_batch.R[:, 0, :])
            totals = incontext.run_trials(self.params, arm_means, H, rng, actions, features, rewards)
        else:
            totals = incontext_mdp.run_trials(
                self.params, task_batch, N, rng, actions.reshape(T, N, H),
                features.reshape(T, N, H, A, F), rewards.reshape(T, N, H)).sum(axis=1)
        return totals, features, actions, rewards

    def _replay_step(self, task_batch, rng):
        """The meta-step with the trial pool: the fresh trials' terms and the replayed trials'
        importance-sampled ones, one mean; then ``ratio - 1`` steps from replayed trials alone."""
        from metarl_fast.incontext import fresh_trial_terms, replayed_trial_terms, trial_log_probs
        from metarl_fast.pool import TrialPool

        totals, features, actions, rewards = self._recorded_trials(task_batch, rng)
        if self.pool is None:
            self.pool = TrialPool(self.replay, *features.shape[1:])
        logp, score = trial_log_probs(self.params, features, actions)
        grad, baseline = fresh_trial_terms(score, rewards)
        n_terms = totals.shape[0]
        replayed = self.pool.replay(rng)  # trials stored in earlier iterations
        if replayed is not None:
            terms, ratios = replayed_trial_terms(self.params, replayed, baseline, self.replay.rho_bar)
            self.pool.record(ratios.shape[0], ratios)
            grad, n_terms = grad + terms, n_terms + ratios.shape[0]
        grad = grad / n_terms
        self._step(grad)
        self.pool.store(features, actions, rewards, logp)
        self.pool.end_iteration()
        for _ in range(self.replay.ratio - 1):
            replayed = self.pool.replay(rng)
            terms, ratios = replayed_trial_terms(self.params, replayed, baseline, self.replay.rho_bar)
            self.pool.record(ratios.shape[0], ratios)
            self._step(terms / ratios.shape[0])
        stats = self.pool.stats()
        self.pool.reset_stats()
        return grad, totals, stats

    def meta_step(self, task_batch, rng):
        slots = task_batch.n_tasks * task_batch.horizon * (1 if self.bandits else self.trial_episodes)
        if self.replay is not None:
            grad, totals, stats = self._replay_step(task_batch, rng)
            self.iteration += 1
            return {"pre_return": float(totals.mean()), "post_return": None,
                    "direction_norm": float(np.linalg.norm(grad)), "env_steps": int(slots), **stats}
        if self.bandits:
            arm_means = np.ascontiguousarray(task_batch.R[:, 0, :])
            grad, totals = self.learner.policy_gradient(arm_means, task_batch.horizon, rng)
        else:
            grad, totals = self.learner.policy_gradient(task_batch, self.trial_episodes, rng)
        self._step(grad)
        self.iteration += 1
        return {"pre_return": float(totals.mean()), "post_return": None,
                "direction_norm": float(np.linalg.norm(grad)), "env_steps": int(slots)}

    def state_dict(self):
        d = {"params": self.params.copy(), "iteration": np.array(self.iteration, dtype=np.int64)}
        d.update({"opt_" + k: v for k, v in self.optimizer.state_dict().items()})
        if self.pool is not None:
            d.update(self.pool.state_dict())
        return d

    def load_state_dict(self, d):
        from metarl_fast.pool import TrialPool

        params = np.asarray(d["params"])
        if params.shape != self.params.shape or params.dtype.kind != "f":
            raise ValueError(f"weights of shape {params.shape} and dtype {params.dtype}, expected "
                             f"{self.params.shape} floats")
        if params.size and np.abs(params).max() > MAX_ABS_WEIGHT:
            raise ValueError(f"weights above {MAX_ABS_WEIGHT:g}")
        iteration = io.integer(d["iteration"], "iteration")
        pool = None
        if "trialpool_counters" in d:
            if self.replay is None:
                raise ValueError("the checkpoint holds a trial pool but replay is off")
            shape = np.asarray(d["trialpool_counters"])
            if shape.shape != (5,):
                raise ValueError("trialpool_counters: not a trial pool of this format")
            pool = TrialPool(self.replay, *(int(x) for x in shape[2:]))
            pool.load_state_dict(d)
        self.optimizer.load_state_dict({k[4:]: v for k, v in d.items() if k.startswith("opt_")})
        self.params[...] = params
        self.iteration = iteration
        self.pool = pool


class RL2Training:
    """Meta-training of :class:`~metarl_fast.rl2_learner.RL2Learner` (a GRU policy trained by PPO
    over whole trials) with the trainer's interface.  A trial is one episode of ``horizon`` pulls
    on bandit tasks, ``trial_episodes`` episodes of one task otherwise; the initial parameters
    are drawn from ``SeedSequence(seed, spawn_key=(2**30 + 1,))`` (a key no iteration uses)."""

    def __init__(self, config, n_states, n_actions):
        from metarl_fast.rl2_learner import RL2Learner

        self.trial_episodes = 1 if config.tasks == "bandits" else config.trial_episodes
        init = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**30 + 1,)))
        self.learner = RL2Learner(
            n_states, n_actions, config.rl2_hidden, episodes_per_trial=self.trial_episodes,
            lr=config.rl2_lr, clip=config.ppo_clip, gae_lambda=config.gae_lambda, gamma=config.gamma,
            entropy_coef=config.entropy_coef, ppo_epochs=config.ppo_epochs,
            minibatches=config.ppo_minibatches, rng=init)
        self.params = self.learner.params

    @property
    def iteration(self):
        return self.learner.iteration

    def meta_step(self, task_batch, rng):
        """One PPO iteration; a step whose parameters become non-finite (or whose GRU overflows)
        is rolled back and raises :class:`~metarl_fast.meta.DivergenceError`."""
        saved = self.learner.state_dict()
        try:
            stats = self.learner.meta_step(task_batch, rng)
            if not np.all(np.isfinite(self.params)):
                raise FloatingPointError("parameters became non-finite")
        except FloatingPointError as err:
            self.learner.load_state_dict(saved)
            raise meta.DivergenceError(f"meta-iteration {self.iteration + 1}: {err} (rolled back)") from err
        slots = task_batch.n_tasks * task_batch.horizon * self.trial_episodes
        out = {"pre_return": stats["mean_trial_return"], "post_return": None,
               "direction_norm": stats["grad_norm"], "env_steps": int(slots)}
        out.update((f"ppo_{k}", stats[k]) for k in ("approx_kl", "clip_fraction", "value_loss", "entropy"))
        return out

    def trial_returns(self, test_tasks, rng):
        """Total reward float64 (T,) of one trial per task with the current parameters."""
        return self.learner.evaluate(test_tasks, rng)

    def state_dict(self):
        return self.learner.state_dict()

    def load_state_dict(self, d):
        self.learner.load_state_dict(dict(d))


def evaluate_bandits(config, weights, test_tasks, *, baselines=True, learner=None):
    """In-context learner vs bandit baselines on the same held-out tasks (one trial each).

    Rows: the meta-learned in-context learner (the hand-feature learner with ``weights``, or
    ``learner``, a callable ``(test_tasks, rng) -> trial returns (T,)``, named after
    ``config.algo``), random, posterior-greedy, epsilon-greedy (0.1), UCB1, Thompson sampling,
    and the exact Bayes-optimal value (the ceiling) when it is small enough to compute.  Every
    agent plays the same arm means with the same seed.
    """
    from metarl_fast import baselines as bl
    from metarl_fast.incontext import run_trials

    arm_means = np.ascontiguousarray(test_tasks.R[:, 0, :])
    n_pulls, n_arms = test_tasks.horizon, arm_means.shape[1]

    def rng():
        return np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))

    if learner is None:
        rows = {"in-context (meta-learned)": mean_ci(run_trials(weights, arm_means, n_pulls, rng()))}
    else:
        rows = {f"{config.algo} (meta-learned)": mean_ci(learner(test_tasks, rng()))}
    if baselines:
        for name, agent in (("random", bl.RandomAgent()), ("posterior-greedy", bl.PosteriorGreedyAgent()),
                            ("epsilon-greedy (0.1)", bl.EpsilonGreedyAgent(0.1)), ("UCB1", bl.UCB1Agent()),
                            ("Thompson sampling", bl.ThompsonSamplingAgent())):
            rows[name] = mean_ci(agent.run_trials(arm_means, n_pulls, rng()))
        try:
            value = bl.bayes_optimal_value(n_arms, n_pulls)
        except ValueError:
            value = None
        if value is not None:
            rows["Bayes-optimal (exact, prior mean)"] = {"mean": value, "std": 0.0, "ci95": 0.0}
    return {"n_tasks": int(test_tasks.n_tasks), "inner_steps": 0, "eval_seed": config.eval_seed,
            "results": rows}


def evaluate_incontext_mdp(config, weights, test_tasks, *, baselines=True, learner=None):
    """In-context MDP learner vs baselines on the same held-out tasks: total reward of a trial of
    ``trial_episodes`` episodes per task (the hand-feature learner with ``weights``, or
    ``learner``, a callable ``(test_tasks, rng) -> trial returns (T,)``, named after
    ``config.algo``).

    Baselines: the uniform random policy; a from-scratch learner (a tabular softmax policy per
    task starting uniform, one REINFORCE step of ``inner_lr`` after every 2 episodes, per-step
    baseline); the oracle that knows each MDP (``trial_episodes`` x its optimal value).
    """
    from metarl_fast.incontext_mdp import oracle_trial_values, run_trials

    E = config.trial_episodes

    def rng():
        return np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(1,)))

    if learner is None:
        rows = {"in-context (meta-learned)": mean_ci(run_trials(weights, test_tasks, E, rng()).sum(axis=1))}
    else:
        rows = {f"{config.algo} (meta-learned)": mean_ci(learner(test_tasks, rng()))}
    if baselines:
        from metarl_fast.incontext_mdp import InContextMDPLearner

        zeros = np.zeros_like(InContextMDPLearner().weights)  # the uniform random policy
        rows["random policy"] = mean_ci(run_trials(zeros, test_tasks, E, rng()).sum(axis=1))
        probe = TabularSoftmaxPolicy(test_tasks.n_states, test_tasks.n_actions)
        learner = meta.SampledPolicyProblem(probe, test_tasks, 2, config.gamma)
        theta = np.zeros((test_tasks.n_tasks, probe.n_params))
        totals = np.zeros(test_tasks.n_tasks)
        generator = rng()
        for _ in range((E + 1) // 2):
            data = learner.sample(theta, generator)
            totals += data["traj"].episode_return.sum(axis=1)
            theta = theta + config.inner_lr * learner.grad(theta, data)
        if E % 2:  # an odd trial length: the last batch's second episode is not part of the trial
            totals -= data["traj"].episode_return[:, 1]
        rows["from scratch (REINFORCE)"] = mean_ci(totals)
        rows["oracle (knows the MDP)"] = mean_ci(oracle_trial_values(test_tasks, E))
    return {"n_tasks": int(test_tasks.n_tasks), "inner_steps": 0, "eval_seed": config.eval_seed,
            "trial_episodes": E, "results": rows}


def format_table(evaluation):
    """The evaluation as a plain-text table (one row per method)."""
    rows = evaluation["results"]
    k = evaluation["inner_steps"]
    width = max(28, max(len(name) for name in rows))
    tail = f"   after 0..{k} adaptation steps" if k else ""
    header = f"{'method':<{width}} {'return':>10} {'+-95% CI':>9} {'std':>8}{tail}"
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        steps = " ".join(f"{s['mean']:.2f}" for s in r.get("after_steps", []))
        lines.append(f"{name:<{width}} {r['mean']:>10.3f} {r['ci95']:>9.3f} {r['std']:>8.3f}   {steps}".rstrip())
    return "\n".join(lines)


# two-sided 95% quantiles of Student's t with 1..30 degrees of freedom (then the normal's 1.96)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def mean_ci_t(values):
    """Mean and Student-t 95% confidence half-width of a small sample (e.g. one value per seed)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n < 2:
        return {"mean": float(values.mean()), "ci95": float("nan"), "values": values.tolist()}
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return {"mean": float(values.mean()), "ci95": float(t * values.std(ddof=1) / math.sqrt(n)),
            "values": values.tolist()}


def compare(config, algos, seeds, out_dir, *, log=None, progress=None):
    """Train ``config`` once per (algorithm, training seed) and compare across seeds.

    Every run has the same held-out tasks (``eval_seed``); the per-run numbers are the mean
    exact returns over those tasks after 0 and K adaptation steps.  For each method: the mean over
    seeds with a Student-t 95% CI *across seeds* (the training seed's variability, which one run
    cannot show), and its paired difference to the from-scratch learner after K steps (same seed,
    same tasks); ``verdict`` says whether that CI excludes zero.  Run directories:
    ``out_dir/<algo>-seed<N>``; a run whose directory already holds the ``eval.json`` of a
    finished run of the same settings (``config.toml``) is read, not trained again, so a
    comparison that was interrupted continues where it stopped.  ``log`` receives the runs'
    progress bars, ``progress`` one line per finished run.
    """
    trials = [algo in TRIAL_ALGOS for algo in algos]
    if any(trials) and not all(trials):
        raise ValueError("compare the in-context learners (in-context, rl2) apart from the gradient-based ones "
                         "(maml, fomaml, reptile, multitask): they are measured differently")
    per_run = {}
    for algo in algos:
        for seed in seeds:
            cfg = dataclasses.replace(config, algo=algo, seed=seed).validate()
            run_dir = os.path.join(out_dir, f"{algo}-seed{seed}")
            per_run[(algo, seed)] = _finished_run(cfg, run_dir)
            if per_run[(algo, seed)] is None:
                per_run[(algo, seed)] = MetaTrainer(cfg, run_dir, log=log).run()
            if per_run[(algo, seed)] is None:
                raise KeyboardInterrupt
            if progress is not None:
                result = per_run[(algo, seed)]
                row = result["results"][f"{algo} (meta-learned)"]
                what = ("trial return" if algo in TRIAL_ALGOS
                        else f"after {cfg.inner_steps} adaptation step(s)")
                progress.write(f"{algo} seed {seed}: held-out {row['mean']:.3f} ± {row['ci95']:.3f} (95% CI) "
                               f"{what}; meta-trained in {training_time(run_dir):.1f} s\n")
                progress.flush()
    if all(trials):
        return _compare_trials(config, algos, seeds, per_run, out_dir)
    rows = {}

    def add(name, values_before, values_after, scratch_after=None):
        row = {"before": mean_ci_t(values_before), "after": mean_ci_t(values_after)}
        if scratch_after is not None:
            diff = mean_ci_t(np.asarray(values_after) - np.asarray(scratch_after))
            lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
            row["vs_scratch"] = diff
            row["verdict"] = ("helps" if lo > 0 else "hurts" if hi < 0 else "no significant difference")
        rows[name] = row

    def steps(result, name):
        r = result["results"][name]["after_steps"]
        return r[0]["mean"], r[-1]["mean"]

    first = per_run[(algos[0], seeds[0])]
    for algo in algos:
        runs = [per_run[(algo, seed)] for seed in seeds]
        scratch = [steps(r, "from scratch")[1] for r in runs]
        meta_name = f"{algo} (meta-learned)"
        b, a = zip(*(steps(r, meta_name) for r in runs))
        add(meta_name, b, a, scratch)
        if "multi-task pre-trained" in first["results"] and algo == algos[0]:
            b, a = zip(*(steps(r, "multi-task pre-trained") for r in runs))
            add("multi-task pre-trained", b, a, scratch)
    b, a = zip(*(steps(per_run[(algos[0], seed)], "from scratch") for seed in seeds))
    add("from scratch", b, a)
    for name in ("random policy", "oracle (knows the MDP)"):
        if name in first["results"]:  # (no oracle on continuous tasks)
            v = [per_run[(algos[0], seed)]["results"][name]["mean"] for seed in seeds]
            rows[name] = {"before": mean_ci_t(v), "after": None}
    out = {"algos": list(algos), "seeds": list(seeds), "inner_steps": config.inner_steps,
           "n_tasks": first["n_tasks"], "eval_seed": config.eval_seed, "rows": rows}
    if "goals" in first:
        out["test_goals_seen_in_training"] = first["goals"]["test_goals_seen_in_training"]
        out["held_out_goals"] = config.held_out_goals
    return out


_CEILINGS = ("oracle (knows the MDP)", "Bayes-optimal (exact, prior mean)")
_BASELINE_ORDER = ("random", "posterior-greedy", "epsilon-greedy (0.1)", "UCB1", "Thompson sampling",
                   "random policy", "from scratch (REINFORCE)") + _CEILINGS


def _compare_trials(config, algos, seeds, per_run, out_dir):
    """:func:`compare` of in-context learners: each learner's held-out trial return over the
    training seeds (mean, Student-t 95% CI across seeds), its difference to the best baseline on
    the same held-out tasks, and the baselines of the first run (they do not depend on the
    training seed), the ceilings last.  The baseline's value is one estimate over the held-out
    tasks shared by every seed, so its own 95% half-width is added to the difference's in
    quadrature: ``sqrt(ci_seeds**2 + ci_baseline**2)``."""
    first = per_run[(algos[0], seeds[0])]
    found = {name: r for name, r in first["results"].items() if not name.endswith("(meta-learned)")}
    # eval.json stores its rows sorted by name: the evaluation's own order, ceilings last
    order = [name for name in _BASELINE_ORDER if name in found and name not in _CEILINGS]
    order += sorted(name for name in found if name not in _BASELINE_ORDER and name not in _CEILINGS)
    order += [name for name in _CEILINGS if name in found]
    baselines = {name: found[name] for name in order}
    # the ceilings (an agent that knows each task, the Bayes-optimal value) are not baselines to beat
    best = max((name for name in baselines if name not in _CEILINGS),
               key=lambda name: baselines[name]["mean"], default=None)
    rows = {}
    for algo in algos:
        runs = [per_run[(algo, seed)] for seed in seeds]
        values = [r["results"][f"{algo} (meta-learned)"]["mean"] for r in runs]
        row = {"after": mean_ci_t(values),
               "training_time_s": mean_ci_t([training_time(os.path.join(out_dir, f"{algo}-seed{seed}"))
                                             for seed in seeds])}
        if best is not None:
            diff = mean_ci_t(np.asarray(values) - baselines[best]["mean"])
            diff["ci95"] = math.hypot(diff["ci95"], baselines[best]["ci95"])
            lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
            row["vs_best_baseline"] = diff
            row["verdict"] = "better" if lo > 0 else "worse" if hi < 0 else "no significant difference"
        rows[f"{algo} (meta-learned)"] = row
    for name, r in baselines.items():
        rows[name] = {"after": {"mean": r["mean"], "ci95": r["ci95"], "values": None}}
    return {"algos": list(algos), "seeds": list(seeds), "inner_steps": None, "trials": True,
            "best_baseline": best, "n_tasks": first["n_tasks"], "eval_seed": config.eval_seed, "rows": rows}


def training_time(run_dir):
    """Seconds spent in the meta-iterations of the run in ``run_dir`` (every ``--resume``
    included), from its ``timings.jsonl``; NaN when it cannot be read."""
    try:
        with open(os.path.join(run_dir, "timings.jsonl")) as fh:
            return float(sum(json.loads(line)["meta_step_s"] for line in fh if line.strip()))
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def _finished_run(config, run_dir):
    """The ``eval.json`` of a finished run of ``config`` in ``run_dir`` (its ``config.toml`` the
    same, every iteration done), or None."""
    try:
        with open(os.path.join(run_dir, "config.toml")) as fh:
            same = fh.read() == config.to_toml()
        with open(os.path.join(run_dir, "eval.json")) as fh:
            result = json.load(fh)
    except (OSError, ValueError):
        return None
    stopped_by = result.get("stopped_by")
    if not same or stopped_by not in ("iterations", "target") or (
            stopped_by == "iterations" and result.get("iterations") != config.iterations):
        return None  # another run, or one a time budget cut short (not repeatable)
    return result


def format_comparison(result):
    """:func:`compare`'s result as a Markdown table."""
    if result.get("trials"):
        return _format_trial_comparison(result)
    k = result["inner_steps"]
    lines = [f"| method | before adaptation | after {k} step{'s' if k > 1 else ''} (mean over seeds ± 95% CI) "
             f"| per seed | vs from scratch after {k} (paired) |",
             "|---|---|---|---|---|"]
    # about three significant digits at the table's scale (returns of hundreds or of fractions of 1)
    scale = max([abs(row["before"]["mean"]) for row in result["rows"].values()]
                + [abs(row["after"]["mean"]) for row in result["rows"].values() if row["after"] is not None]
                + [1e-3])
    q = int(min(4, max(1, 2 - math.floor(math.log10(scale)))))
    for name, row in result["rows"].items():
        before = row["before"]
        if row["after"] is None:
            lines.append(f"| {name} | {before['mean']:.{q}f} | — | — | — |")
            continue
        after = row["after"]
        seeds = " / ".join(f"{v:.{q}f}" for v in after["values"])
        versus = "—"
        if "vs_scratch" in row:
            d = row["vs_scratch"]
            versus = f"{d['mean']:+.{q}f} ± {d['ci95']:.{q}f}: {row['verdict']}"
        lines.append(f"| {name} | {before['mean']:.{q}f} | {after['mean']:.{q}f} ± {after['ci95']:.{q}f} | {seeds} "
                     f"| {versus} |")
    return "\n".join(lines)


def _format_trial_comparison(result):
    best = result["best_baseline"]
    lines = ["| method | held-out trial return (mean over seeds ± 95% CI) | per seed "
             "| difference to the best baseline (95% CI) |", "|---|---|---|---|"]
    scale = max([abs(row["after"]["mean"]) for row in result["rows"].values()] + [1e-3])
    q = int(min(4, max(1, 2 - math.floor(math.log10(scale)))))
    for name, row in result["rows"].items():
        after = row["after"]
        if after["values"] is None:  # a baseline: its CI is over the held-out tasks
            ci = f" ± {after['ci95']:.{q}f} (over tasks)" if after["ci95"] > 0 else ""
            lines.append(f"| {name} | {after['mean']:.{q}f}{ci} | — | — |")
            continue
        seeds = " / ".join(f"{v:.{q}f}" for v in after["values"])
        versus = "—"
        if "vs_best_baseline" in row:
            d = row["vs_best_baseline"]
            versus = f"{d['mean']:+.{q}f} ± {d['ci95']:.{q}f} vs {best}: {row['verdict']}"
        lines.append(f"| {name} | {after['mean']:.{q}f} ± {after['ci95']:.{q}f} | {seeds} | {versus} |")
    return "\n".join(lines)


def compare_replay(config, algos, seeds, out_dir, *, log=None, progress=None):
    """Each algorithm trained with and without the replay pool (``config``'s replay settings),
    over several training seeds: what replay buys.

    Per (algorithm, mode): the held-out return after K adaptation steps (mean over seeds with a
    Student-t 95% CI), its paired difference replay - on-policy (same seed, same held-out tasks)
    with a verdict, the environment steps the learner took (replayed episodes cost none), how many
    runs reached ``config.target`` (when set; runs stop there) and the wall time.  MAML runs with a
    replay ratio of 1 (its Hessian needs fresh episodes).  Run directories:
    ``out_dir/<algo>-<on-policy|replay>-seed<N>``.
    """
    rows = []
    if "in-context" in algos and len(algos) > 1:
        raise ValueError("compare the in-context learner on its own (--algos in-context): its "
                         "return is a trial's, not a return after adaptation steps")
    for algo in algos:
        results = {}
        for mode in ("on-policy", "replay"):
            runs = []
            for seed in seeds:
                cfg = dataclasses.replace(config, algo=algo, seed=seed, replay=mode == "replay")
                if algo == "maml" and cfg.replay:
                    cfg = dataclasses.replace(cfg, replay_ratio=1)
                cfg.validate()
                run_dir = os.path.join(out_dir, f"{algo}-{mode}-seed{seed}")
                trainer = MetaTrainer(cfg, run_dir, log=log)
                result = trainer.run()
                if result is None:
                    raise KeyboardInterrupt
                with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
                    env_steps = sum(json.loads(line)["env_steps"] for line in fh if line.strip())
                learned = result["results"][f"{algo} (meta-learned)"]
                after = learned["mean"] if algo == "in-context" else learned["after_steps"][-1]["mean"]
                runs.append({"after": after, "env_steps": env_steps,
                             "reached": result["stopped_by"] == "target",
                             "wall_s": trainer.wall_time["total"]})
                if progress is not None:
                    what = ("trial return" if algo == "in-context"
                            else f"after {cfg.inner_steps} step(s)")
                    progress.write(f"{algo} {mode} seed {seed}: {after:.3f} {what}, "
                                   f"{env_steps} environment steps, "
                                   f"{trainer.wall_time['total']:.1f} s\n")
                    progress.flush()
            results[mode] = runs
        for mode in ("on-policy", "replay"):
            runs = results[mode]
            row = {"algo": algo, "mode": mode,
                   "after": mean_ci_t([r["after"] for r in runs]),
                   "env_steps": mean_ci_t([r["env_steps"] for r in runs]),
                   "reached": sum(r["reached"] for r in runs),
                   "wall_s": mean_ci_t([r["wall_s"] for r in runs])}
            if mode == "replay":
                diff = mean_ci_t([r["after"] - o["after"] for r, o in zip(runs, results["on-policy"])])
                lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
                row["vs_on_policy"] = diff
                row["verdict"] = "helps" if lo > 0 else "hurts" if hi < 0 else "no significant difference"
                steps = mean_ci_t([r["env_steps"] - o["env_steps"] for r, o in zip(runs, results["on-policy"])])
                lo, hi = steps["mean"] - steps["ci95"], steps["mean"] + steps["ci95"]
                row["steps_vs_on_policy"] = steps
                row["steps_verdict"] = "fewer" if hi < 0 else "more" if lo > 0 else "no significant difference"
            rows.append(row)
    return {"algos": list(algos), "seeds": list(seeds),
            "inner_steps": None if list(algos) == ["in-context"] else config.inner_steps,
            "target": None if math.isnan(config.target) else config.target, "rows": rows}


def format_replay_comparison(result):
    """:func:`compare_replay`'s result as a Markdown table (the wall times, which vary from run to
    run, are in the JSON result and the progress lines)."""
    k = result["inner_steps"]
    target = result["target"]
    what = "trial return" if k is None else f"after {k} step{'s' if k > 1 else ''}"
    lines = [f"| method | {what} (mean over seeds ± 95% CI) "
             f"| replay − on-policy (paired) | environment steps per run |"
             + (f" runs reaching {target:g} | steps: replay − on-policy (paired) |"
                if target is not None else ""),
             "|---|---|---|---|" + ("---|---|" if target is not None else "")]
    n = len(result["seeds"])
    for row in result["rows"]:
        a = row["after"]
        versus = "—"
        if "vs_on_policy" in row:
            d = row["vs_on_policy"]
            versus = f"{d['mean']:+.2f} ± {d['ci95']:.2f}: {row['verdict']}"
        reached = ""
        if target is not None:
            steps = "—"
            if "steps_vs_on_policy" in row:
                d = row["steps_vs_on_policy"]
                steps = f"{d['mean'] / 1e6:+.2f} M ± {d['ci95'] / 1e6:.2f} M: {row['steps_verdict']}"
            reached = f" {row['reached']}/{n} | {steps} |"
        lines.append(f"| {row['algo']} {row['mode']} | {a['mean']:.2f} ± {a['ci95']:.2f} | {versus} "
                     f"| {row['env_steps']['mean']:,.0f} |{reached}")
    return "\n".join(lines)


class _AbandonIteration(KeyboardInterrupt):
    """Raised by the Ctrl-C handling of :class:`MetaTrainer` to leave a long iteration at once."""


class MetaTrainer:
    """Runs a :class:`TrainConfig`, writing ``config.toml``, ``metrics.jsonl``, ``timings.jsonl``,
    ``eval.json`` and ``checkpoint.npz`` into ``out_dir``.
    """

    def __init__(self, config, out_dir, *, log=None):
        self.config = config.validate()
        self.out_dir = os.fspath(out_dir)
        self.log = log if log is not None else sys.stderr
        self.dist = config.distribution()
        # the test tasks' distribution: the training one, except for withheld GridNavigation goals
        self.test_dist = config.distribution(held_out=True) if config.held_out_goals else self.dist
        probe = self.dist.sample(1, 0)
        if config.continuous:
            def new_policy():
                return make_mlp_policy(config, probe)
        else:
            self.n_states, self.n_actions = probe.n_states, probe.n_actions

            def new_policy():
                return TabularSoftmaxPolicy(self.n_states, self.n_actions)
        self.multitask = None
        if config.algo == "in-context":
            self.learner = InContextTraining(config)
            self.params = self.learner.params
        elif config.algo == "rl2":
            self.learner = RL2Training(config, self.n_states, self.n_actions)
            self.params = self.learner.params
        else:
            self.policy = new_policy()
            self.learner = make_learner(config, self.policy)
            self.params = self.policy.params
        # the multi-task pre-trained baseline is trained in the same run, on the same tasks (from
        # the same initial parameters)
        if config.algo not in ("multitask",) + TRIAL_ALGOS:
            mt_cfg = dataclasses.replace(config, algo="multitask")
            self.multitask = make_learner(mt_cfg, new_policy())
        self.test_tasks = self.test_dist.sample(
            config.eval_tasks, np.random.default_rng(np.random.SeedSequence(config.eval_seed, spawn_key=(0,))))
        self.iteration = 0
        self.best = None
        self._stop = False
        self._in_iteration = False  # Ctrl-C may abandon the iteration (see _request_stop)
        self.abandoned_iteration = None  # the iteration a Ctrl-C abandoned, if one did
        self.checkpoint_iteration = None  # the iteration checkpoint.npz holds after run()
        self._pending = {}  # log lines not yet written: file name -> lines
        self.wall_time = None  # seconds per part of the last completed run() (see run)
        self.signal_warning = None  # the "no learning signal" warning, once given (see _watch_signal)
        self._flat_iterations = 0
        self._adaptation_gains = []  # post - pre training return of the latest iterations

    # -- checkpoints --
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "checkpoint.npz")

    def save_checkpoint(self):
        self._flush_logs()  # the logs never lag behind the checkpoint
        arrays = {"config_toml": np.array(self.config.to_toml()),
                  "iteration": np.array(self.iteration, dtype=np.int64),
                  "seed_entropy": np.array(str(self.config.seed))}
        for key, value in self.learner.state_dict().items():
            arrays["learner_" + key] = value
        if self.multitask is not None:
            for key, value in self.multitask.state_dict().items():
                arrays["multitask_" + key] = value
        io.save_npz(self.checkpoint_path, arrays, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION)

    @staticmethod
    def read_checkpoint(path):
        """(config, arrays) of a checkpoint file; raises CheckpointError on a bad file."""
        arrays, _ = io.load_npz(path, kind=CHECKPOINT_KIND, versions={CHECKPOINT_VERSION})
        try:
            import tomllib

            config = TrainConfig.from_dict(tomllib.loads(str(arrays["config_toml"])), source=path)
        except (KeyError, ValueError) as err:
            raise io.CheckpointError(f"{path}: inconsistent checkpoint ({err})") from err
        return config, arrays

    # settings that do not change what is trained: a checkpoint may be evaluated or continued with others
    _NOT_TRAINING = frozenset({"iterations", "time_budget", "target", "eval_every", "eval_tasks", "eval_seed",
                               "checkpoint_every", "backend"})

    def load_checkpoint(self, path=None):
        path = path or self.checkpoint_path
        saved, arrays = self.read_checkpoint(path)
        def setting(config, name):
            return config.tasks_name if name == "tasks" else getattr(config, name)

        differ = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in self._NOT_TRAINING
                  and setting(saved, f.name) != setting(self.config, f.name)
                  and not (isinstance(getattr(saved, f.name), float) and math.isnan(getattr(saved, f.name))
                           and math.isnan(getattr(self.config, f.name)))]
        if differ:
            raise io.CheckpointError(f"{path}: trained with other settings than this trainer's "
                                     f"({', '.join(f'{n}={getattr(saved, n)!r}' for n in differ)})")
        try:
            self.learner.load_state_dict({k[8:]: v for k, v in arrays.items() if k.startswith("learner_")})
            if self.multitask is not None:
                self.multitask.load_state_dict({k[10:]: v for k, v in arrays.items() if k.startswith("multitask_")})
            self.iteration = io.integer(arrays["iteration"], "iteration")
        except (KeyError, ValueError) as err:
            raise io.CheckpointError(f"{path}: inconsistent checkpoint ({err})") from err

    # -- the loop --
    # Ctrl-C: the current iteration finishes (then a checkpoint is written) if it ends within
    # STOP_GRACE_S of the signal; else, or on a second Ctrl-C, it is abandoned: nothing of it is
    # written and the last checkpoint stays as it is (resume continues from there)
    STOP_GRACE_S = 0.5

    def _request_stop(self, signum, frame):
        if self._stop and self._in_iteration:  # a second Ctrl-C
            raise _AbandonIteration()
        self._stop = True
        if self._in_iteration and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, self.STOP_GRACE_S)

    def _grace_over(self, signum, frame):
        if self._in_iteration:
            raise _AbandonIteration()

    def run(self, *, resume=False):
        """Train until a stopping rule fires; returns the final evaluation dict."""
        cfg = self.config
        os.makedirs(self.out_dir, exist_ok=True)
        if resume:
            self.load_checkpoint()
            # lines written after the checkpoint (a crash between checkpoints) are written again
            for name in ("metrics.jsonl", "timings.jsonl"):
                self._truncate_log(name, self.iteration)
        else:
            with open(os.path.join(self.out_dir, "config.toml"), "w") as fh:
                fh.write(cfg.to_toml())
            for name in ("metrics.jsonl", "timings.jsonl"):
                open(os.path.join(self.out_dir, name), "w").close()
        previous = previous_alarm = None
        self._in_iteration = False
        if _main_thread():
            previous = signal.signal(signal.SIGINT, self._request_stop)
            if hasattr(signal, "SIGALRM"):
                previous_alarm = signal.signal(signal.SIGALRM, self._grace_over)
        from metarl_fast.progress import Progress

        progress = Progress.for_config(cfg, self.log, start=self.iteration)
        progress.write_legend()
        t_start = time.perf_counter()
        wall = dict.fromkeys(("meta_iterations", "multitask_baseline", "evaluation", "checkpoints_and_logs"), 0.0)
        stopped_by = "iterations"
        saved_at = self.iteration if resume else None  # the iteration checkpoint.npz holds
        try:
            while self.iteration < cfg.iterations:
                it = self.iteration
                tasks_rng, episodes_rng = iteration_rngs(cfg.seed, it)
                t0 = time.perf_counter()
                self._in_iteration = True
                batch = self.dist.sample(cfg.meta_batch, tasks_rng)
                stats = self.learner.meta_step(batch, episodes_rng)
                t1 = time.perf_counter()
                if self.multitask is not None:
                    self.multitask.meta_step(batch, np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(it, 2))))
                t2 = time.perf_counter()
                wall["meta_iterations"] += t1 - t0
                wall["multitask_baseline"] += t2 - t1
                self.iteration = it + 1
                steps = stats["env_steps"]
                self._watch_signal(stats)
                record = {"iteration": self.iteration, "seed": cfg.seed, "pre_return": stats["pre_return"],
                          "post_return": stats["post_return"], "direction_norm": stats["direction_norm"],
                          "env_steps": steps}
                record.update((k, v) for k, v in stats.items() if k.startswith(("pool_", "replayed_", "ppo_"))
                              or k in ("mean_importance_weight", "fraction_truncated"))
                evaluation = None
                if self.iteration % cfg.eval_every == 0 or self.iteration == cfg.iterations:
                    te = time.perf_counter()
                    evaluation = self.evaluate(baselines=False)
                    row = next(iter(evaluation["results"].values()))
                    record["eval_return"] = row["mean"]
                    record["eval_ci95"] = row["ci95"]
                    t_eval = time.perf_counter() - te
                    wall["evaluation"] += t_eval
                else:
                    t_eval = 0.0
                self._in_iteration = False  # from here on the iteration is kept
                if self._stop and hasattr(signal, "setitimer"):
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self._append("metrics.jsonl", record)
                phases = stats.get("time", {})
                self._append("timings.jsonl", {"iteration": self.iteration, "meta_step_s": t1 - t0,
                                                "sampling_s": phases.get("sampling", 0.0),
                                                "inner_s": phases.get("inner", 0.0),
                                                "outer_s": phases.get("outer", 0.0),
                                                "multitask_baseline_s": t2 - t1, "evaluation_s": t_eval,
                                                "steps_per_s": steps / max(t1 - t0, 1e-12)})
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.iterations:
                    tc = time.perf_counter()
                    self.save_checkpoint()
                    wall["checkpoints_and_logs"] += time.perf_counter() - tc
                    saved_at = self.iteration
                shown = stats["post_return"] if stats["post_return"] is not None else stats["pre_return"]
                progress.update(self.iteration, shown, steps / max(t1 - t0, 1e-12),
                                eval_mean=record.get("eval_return"), eval_ci95=record.get("eval_ci95"))
                if evaluation is not None and not math.isnan(cfg.target) and record["eval_return"] >= cfg.target:
                    stopped_by = "target"
                    break
                if cfg.time_budget and time.perf_counter() - t_start >= cfg.time_budget:
                    stopped_by = "time budget"
                    break
                if self._stop:
                    stopped_by = "interrupt"
                    break
            if saved_at != self.iteration:  # stopped early between checkpoints (never twice the same)
                self.save_checkpoint()
                saved_at = self.iteration
        except _AbandonIteration:
            # Ctrl-C during a long iteration: its partial state (parameters, pool) is dropped
            # unsaved; checkpoint.npz still holds iteration `saved_at`
            stopped_by = "interrupt"
            self.abandoned_iteration = self.iteration + 1
        finally:
            self._in_iteration = False
            if previous_alarm is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous_alarm)
            self._flush_logs()  # after a failure too: the lines of the iterations that ran
            progress.close(None if sys.exc_info()[0] is not None else stopped_by)  # None: failed
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.checkpoint_iteration = saved_at
        self.stopped_by = stopped_by
        if stopped_by == "interrupt":
            return None
        te = time.perf_counter()
        evaluation = self.evaluate()
        wall["evaluation"] += time.perf_counter() - te
        evaluation.update({"iterations": self.iteration, "stopped_by": stopped_by, "seed": cfg.seed,
                           "algo": cfg.algo, "tasks": cfg.tasks_name})
        _write_json_atomic(os.path.join(self.out_dir, "eval.json"), evaluation)
        wall["total"] = time.perf_counter() - t_start
        wall["other"] = wall["total"] - sum(v for k, v in wall.items() if k != "total")
        self.wall_time = wall
        return evaluation

    # meta-updates below this norm (for this many iterations in a row) are "no learning signal"
    NO_SIGNAL_NORM, NO_SIGNAL_ITERATIONS = 1e-8, 10

    # adaptation that lowers the training return, on average over this many iterations: the inner
    # step is too large for the scale of the returns
    HARMFUL_STEP_WINDOW = 20

    def _watch_signal(self, stats):
        """Warn once (in the log) when training runs but cannot learn, which nothing else would say:
        the meta-updates have been ~0 for NO_SIGNAL_ITERATIONS iterations in a row, or the inner
        step has lowered the training return on average over the last HARMFUL_STEP_WINDOW ones."""
        if self.signal_warning is not None:
            return
        cfg = self.config
        if stats["post_return"] is not None:
            self._adaptation_gains.append(stats["post_return"] - stats["pre_return"])
            del self._adaptation_gains[:-self.HARMFUL_STEP_WINDOW]
            gains = np.asarray(self._adaptation_gains)
            # significantly below zero (3 standard errors): noise alone does not warn
            if (gains.size == self.HARMFUL_STEP_WINDOW and not cfg.normalize_returns
                    and gains.mean() + 3.0 * gains.std(ddof=1) / math.sqrt(gains.size) < 0):
                first = self.iteration - self.HARMFUL_STEP_WINDOW + 1
                self._warn(f"adaptation makes the policies worse: the return after the inner step(s) was "
                           f"below the return before them by {-gains.mean():.3g} ± "
                           f"{3.0 * gains.std(ddof=1) / math.sqrt(gains.size):.2g} on average over "
                           f"iterations {first}-{self.iteration}. Likely cause: --inner-lr {cfg.inner_lr:g} is "
                           f"too large for returns of about {abs(stats['pre_return']):.3g}; try "
                           f"--normalize-returns, or a smaller --inner-lr "
                           f"(about {cfg.inner_lr / max(abs(stats['pre_return']), 1.0):.2g}).")
                return
        if stats["direction_norm"] >= self.NO_SIGNAL_NORM:
            self._flat_iterations = 0
            return
        self._flat_iterations += 1
        if self._flat_iterations != self.NO_SIGNAL_ITERATIONS:
            return
        scale = max(abs(stats["pre_return"]), abs(stats["post_return"] or 0.0))
        if cfg.algo in TRIAL_ALGOS:
            hint = "every trial of a batch earns the same return: try longer trials or other tasks"
        elif cfg.normalize_returns:
            hint = (f"every episode of a task earns the same return (about {scale:.3g}): the policy gradient is "
                    f"zero; try a longer --horizon or more --episodes")
        else:
            hint = (f"returns of about {scale:.3g} with --inner-lr {cfg.inner_lr:g} either do not vary (zero "
                    f"gradient) or make the inner step saturate the softmax (the adapted policies become "
                    f"deterministic and their gradients vanish); try --normalize-returns, or a smaller "
                    f"--inner-lr (about {cfg.inner_lr / max(scale, 1.0):.2g})")
        self._warn(f"no learning signal: the meta-update's norm stayed below {self.NO_SIGNAL_NORM:g} for "
                   f"{self.NO_SIGNAL_ITERATIONS} iterations in a row (iterations "
                   f"{self.iteration - self.NO_SIGNAL_ITERATIONS + 1}-{self.iteration}). Likely cause: {hint}.")

    def _warn(self, text):
        from metarl_fast.progress import fit_to_terminal

        self.signal_warning = "metarl-fast: warning: " + text
        tty = hasattr(self.log, "isatty") and self.log.isatty()
        self.log.write(("\n" if tty else "") + fit_to_terminal(self.signal_warning, self.log) + "\n")
        self.log.flush()

    def evaluate(self, baselines=True):
        """The evaluation protocol on this run's held-out tasks (see :func:`evaluate`)."""
        if self.config.algo in TRIAL_ALGOS:
            learner = self.learner.trial_returns if self.config.algo == "rl2" else None
            evaluate_trials = evaluate_bandits if self.config.tasks == "bandits" else evaluate_incontext_mdp
            return evaluate_trials(self.config, self.params, self.test_tasks, baselines=baselines,
                                   learner=learner)
        multitask = None if self.multitask is None else self.multitask.policy.params
        if self.config.continuous:
            return evaluate_continuous(self.config, self.params, self.test_tasks, baselines=baselines,
                                       multitask_params=multitask)
        return evaluate(self.config, self.params, self.test_tasks, baselines=baselines, multitask_params=multitask)

    def _truncate_log(self, name, last_iteration):
        path = os.path.join(self.out_dir, name)
        if not os.path.exists(path):
            open(path, "w").close()
            return
        with open(path) as fh:
            lines = [line for line in fh if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                iteration = json.loads(line)["iteration"]
            except (ValueError, KeyError, TypeError):
                if number == len(lines):  # a line torn by a crash mid-write: dropped, it is written again
                    self.log.write(f"metarl-fast: {path}: dropping its torn last line (line {number}); "
                                   f"iterations after the checkpoint are run again\n")
                    break
                raise io.CheckpointError(f"{path}: line {number} is not a JSON record; the run directory "
                                         f"is damaged") from None
            if iteration <= last_iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
        _write_atomic(path, lambda fh: fh.writelines(kept))  # a Ctrl-C here must not lose the kept lines

    def _append(self, name, record):
        """Queue one JSON line for ``name``; written with the next checkpoint (lines after the
        last checkpoint are dropped and written again by ``--resume`` anyway)."""
        self._pending.setdefault(name, []).append(json.dumps(record, sort_keys=True) + "\n")

    def _flush_logs(self):
        for name, lines in self._pending.items():
            if lines:
                with open(os.path.join(self.out_dir, name), "a") as fh:
                    fh.writelines(lines)
                lines.clear()


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _write_json_atomic(path, obj):
    _write_atomic(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=True))


def _write_atomic(path, write, mode="w"):
    """``write(fh)`` into a temporary file beside ``path`` (opened with ``mode``), fsync it, rename
    it over ``path``: a failure or Ctrl-C at any point leaves the previous file intact and no
    temporary file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
