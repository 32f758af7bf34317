"""Gymnasium classes and registered ids of metarl_fast's tasks (imports Gymnasium; optional).

Importing :mod:`metarl_fast` never imports this module or Gymnasium; it is imported by
:meth:`metarl_fast.tasks.Task.make_env` / ``as_gymnasium``, by :class:`metarl_fast.rollout.VecEnv`
when Gymnasium is importable, as soon as Gymnasium is imported in a process that imported
:mod:`metarl_fast` (before or after it: :mod:`metarl_fast._gym_hook`), or by name.  Importing it
registers the task families with Gymnasium:

====================================  ==========================================
id                                    family (``family_kwargs`` pass through)
====================================  ==========================================
``metarl_fast/GridNavigation-v0``     :class:`metarl_fast.tasks.GridNavigation`
``metarl_fast/TabularMDPs-v0``        :class:`metarl_fast.tasks.TabularMDPs`
``metarl_fast/BernoulliBandits-v0``   :class:`metarl_fast.tasks.BernoulliBandits`
``metarl_fast/Chain-v0``              :class:`metarl_fast.tasks.Chain`
====================================  ==========================================

``gymnasium.make(id, task_seed=3, **family_kwargs)`` is one task,
``Family(**family_kwargs).sample(1, task_seed)[0]`` (``task_seed`` an int >= 0, a SeedSequence
or a Generator; default 0), as a :class:`GymnasiumTabularEnv`; its ``spec.max_episode_steps`` is
the family's horizon (the env truncates there itself: no ``TimeLimit`` wrapper is added, and one
given through ``max_episode_steps=`` can only shorten episodes).  ``gymnasium.make_vec(id,
num_envs=k, ...)`` is one :class:`metarl_fast.rollout.VecEnv` of ``k`` copies of that task.

Gymnasium 1.x has no plugin entry points (removed in 1.0), so an id is found once this module has
been imported: after ``import metarl_fast`` (in either order with Gymnasium), or without importing
anything first by naming the module in the id::

    import gymnasium
    env = gymnasium.make("metarl_fast.gym_env:metarl_fast/GridNavigation-v0", size=5, task_seed=3)
"""
import dataclasses
import numbers

import gymnasium
import numpy as np
from gymnasium.vector.utils import batch_space

from metarl_fast._validate import as_generator
from metarl_fast.rollout import VecEnv
from metarl_fast.tasks import BernoulliBandits, Chain, GridNavigation, TabularMDPs, _TabularEnvLogic

NAMESPACE = "metarl_fast"


class GymnasiumTabularEnv(_TabularEnvLogic, gymnasium.Env):
    """One :class:`~metarl_fast.tasks.Task` as a ``gymnasium.Env`` (what ``task.make_env()``
    returns where Gymnasium is importable).

    Observations and actions are ``gymnasium.spaces.Discrete`` (int64 state and action indices).
    ``reset(seed=...)``: an int seeds ``np_random`` the Gymnasium way
    (``Generator(PCG64(SeedSequence(seed)))``, the same stream as ``numpy.random.default_rng(seed)``);
    a Generator is used as is (it is shared, not copied) and a SeedSequence seeds a new one;
    without a seed the previous stream continues.  The random draws of ``reset``/``step`` are
    those of :class:`metarl_fast.tasks.TabularEnv` and of one environment of
    :class:`~metarl_fast.rollout.VecEnv` (see :mod:`metarl_fast.tasks`).  The episode is
    truncated at the task's horizon; a terminal state entered at the last step is terminated,
    not truncated.
    """

    metadata = {"render_modes": []}

    def __init__(self, task):
        self._setup(task)
        self.observation_space = gymnasium.spaces.Discrete(task.n_states)
        self.action_space = gymnasium.spaces.Discrete(task.n_actions)
        self._spec = None

    @property
    def spec(self):
        """The ``EnvSpec`` set by ``gymnasium.make``, reporting ``max_episode_steps`` = horizon."""
        return self._spec

    @spec.setter
    def spec(self, value):
        # gymnasium.make sets a spec with max_episode_steps=None (a TimeLimit wrapper reports its
        # own): this env ends its episodes at the horizon itself, so its spec says so
        if value is not None and value.max_episode_steps is None:
            value = dataclasses.replace(value, max_episode_steps=self.task.horizon)
        self._spec = value

    def reset(self, *, seed=None, options=None):
        """Start an episode: ``(obs numpy.int64, info {})``; see the class docstring for ``seed``."""
        if isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
            self.np_random = as_generator(seed, "seed")  # the setter marks the seed unknown (-1)
            seed = None
        elif seed is not None:
            if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)) or seed < 0:
                as_generator(seed, "seed")  # raises, naming seed
            seed = int(seed)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        super().reset(seed=seed)
        return self._reset_state(self.np_random)

    def step(self, action):
        """``(obs numpy.int64, reward float, terminated bool, truncated bool, info {})``."""
        return self._step_state(action, self.np_random)

    def __repr__(self):
        return f"GymnasiumTabularEnv({self.task!r})"


class GymnasiumVecEnv(VecEnv, gymnasium.vector.VectorEnv):
    """:class:`~metarl_fast.rollout.VecEnv` as a ``gymnasium.vector.VectorEnv`` (what
    ``VecEnv(...)`` builds where Gymnasium is importable): Gymnasium spaces (``Discrete`` single
    spaces, ``MultiDiscrete`` batched ones) and ``metadata["autoreset_mode"] =
    gymnasium.vector.AutoresetMode.SAME_STEP``; everything else is VecEnv's."""

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}

    @staticmethod
    def _make_spaces(n_states, n_actions, n_envs):
        single_obs = gymnasium.spaces.Discrete(n_states)
        single_action = gymnasium.spaces.Discrete(n_actions)
        return single_obs, single_action, batch_space(single_obs, n_envs), batch_space(single_action, n_envs)


# ---------------------------------------------------------------------------------------------
# Registered ids
# ---------------------------------------------------------------------------------------------

def _one_task(family_class, task_seed, family_kwargs):
    rng = as_generator(task_seed, "task_seed")
    return family_class(**family_kwargs).sample(1, rng)[0]


def _entry_points(family_class, function_name):
    """The (single, vector) entry points of ``family_class``'s id, named ``function_name`` and
    ``function_name + "_vec"`` in this module."""
    def make_env(task_seed=0, **family_kwargs):
        return GymnasiumTabularEnv(_one_task(family_class, task_seed, family_kwargs))

    def make_vec_env(num_envs=1, task_seed=0, **family_kwargs):
        return VecEnv(_one_task(family_class, task_seed, family_kwargs), n_envs_per_task=num_envs)

    name = family_class.__name__
    make_env.__name__ = make_env.__qualname__ = function_name
    make_vec_env.__name__ = make_vec_env.__qualname__ = function_name + "_vec"
    make_env.__doc__ = (f"``gymnasium.make('{NAMESPACE}/{name}-v0', task_seed=0, **kwargs)``: "
                        f"one task of ``{name}(**kwargs)`` as a GymnasiumTabularEnv.")
    make_vec_env.__doc__ = (f"``gymnasium.make_vec('{NAMESPACE}/{name}-v0', num_envs, task_seed=0, "
                            f"**kwargs)``: a VecEnv of ``num_envs`` copies of one task of ``{name}``.")
    return make_env, make_vec_env


make_grid_navigation, make_grid_navigation_vec = _entry_points(GridNavigation, "make_grid_navigation")
make_tabular_mdps, make_tabular_mdps_vec = _entry_points(TabularMDPs, "make_tabular_mdps")
make_bernoulli_bandits, make_bernoulli_bandits_vec = _entry_points(BernoulliBandits, "make_bernoulli_bandits")
make_chain, make_chain_vec = _entry_points(Chain, "make_chain")

# id -> name of its entry point in this module (the vector one adds "_vec")
ENV_IDS = {
    f"{NAMESPACE}/GridNavigation-v0": "make_grid_navigation",
    f"{NAMESPACE}/TabularMDPs-v0": "make_tabular_mdps",
    f"{NAMESPACE}/BernoulliBandits-v0": "make_bernoulli_bandits",
    f"{NAMESPACE}/Chain-v0": "make_chain",
}


def register_envs():
    """Register :data:`ENV_IDS` with Gymnasium (done on import; ids already registered are kept)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=f"{__name__}:{entry_point}",
                               vector_entry_point=f"{__name__}:{entry_point}_vec")


register_envs()
