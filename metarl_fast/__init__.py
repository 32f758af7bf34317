"""metarl_fast: meta-reinforcement learning on the CPU.

Typed Cython kernels over NumPy arrays (``metarl_fast._core``) with a pure-NumPy reference twin
(``metarl_fast.reference``).  Every public kernel and class below dispatches to the active
backend: ``set_backend("cython" | "numpy")``, or ``METARL_FAST_BACKEND`` before import.
"""
__version__ = "0.1.0"

from metarl_fast._backend import (  # noqa: F401
    BACKENDS,
    get_backend,
    is_available,
    set_backend,
    use_backend,
)

from metarl_fast._backend import _initial

_initial()
del _initial

from metarl_fast.io import CheckpointError  # noqa: E402,F401
from metarl_fast.mdp import MDPModel  # noqa: E402,F401
from metarl_fast.policy import (  # noqa: E402,F401
    LinearSoftmaxPolicy,
    MLPSoftmaxPolicy,
    TabularSoftmaxPolicy,
    entropy,
    grad_log_prob,
    log_prob,
    log_softmax,
    sample_actions,
    sample_actions_at,
    softmax,
)
from metarl_fast.replay import Batch, PrioritizedReplayBuffer, ReplayBuffer  # noqa: E402,F401
from metarl_fast.optim import SGD, Adam  # noqa: E402,F401
from metarl_fast.pg import (  # noqa: E402,F401
    LinearCritic,
    TabularCritic,
    actor_critic_gradient,
    clip_grad_norm,
    discounted_returns,
    gae,
    off_policy_gradient,
    per_decision_off_policy_gradient,
    policy_gradient,
    policy_gradient_step,
    reinforce_gradient,
    truncated_importance_weights,
)
from metarl_fast.tasks import (  # noqa: E402,F401
    BernoulliBandits,
    Chain,
    FromGymnasium,
    GridNavigation,
    TabularFamily,
    TabularMDPs,
    Task,
    TaskBatch,
)
from metarl_fast.continuous_tasks import CartPoles, PointNavigation  # noqa: E402,F401
from metarl_fast.continuous_rollout import ContinuousTrajectories, rollout_mlp  # noqa: E402,F401
from metarl_fast.continuous_env import ContinuousTaskEnv, ContinuousVecEnv  # noqa: E402,F401
from metarl_fast.rl2_learner import RL2Learner  # noqa: E402,F401
from metarl_fast.rollout import RolloutWorkspace, Trajectories, VecEnv, rollout  # noqa: E402,F401
from metarl_fast import exact  # noqa: E402,F401
from metarl_fast.meta import FOMAML, MAML, MetaLearner, MultiTask, Reptile  # noqa: E402,F401
from metarl_fast.trainer import MetaTrainer, TrainConfig, evaluate  # noqa: E402,F401
from metarl_fast.incontext import InContextBanditLearner  # noqa: E402,F401
from metarl_fast.incontext_mdp import InContextMDPLearner  # noqa: E402,F401
from metarl_fast.baselines import (  # noqa: E402,F401
    EpsilonGreedyAgent,
    PosteriorGreedyAgent,
    RandomAgent,
    ThompsonSamplingAgent,
    UCB1Agent,
    bayes_optimal_value,
    compare_bandit_agents,
    mean_confidence_interval,
    oracle_value,
)
from metarl_fast import baselines, incontext, incontext_mdp, meta, tasks  # noqa: E402,F401

# Gymnasium ids (metarl_fast/GridNavigation-v0, ...): registered now if Gymnasium is already
# imported, else as soon as it is (importing metarl_fast never imports Gymnasium itself)
from metarl_fast import _gym_hook  # noqa: E402

_gym_hook.register_when_gymnasium_is_imported()
