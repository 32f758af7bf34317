"""Task distributions named by a string, as ``metarl-fast train --tasks SPEC`` and
:class:`~metarl_fast.trainer.TrainConfig` take them.

=====================  =========================================================================
``gridnav``            :class:`~metarl_fast.tasks.GridNavigation` (``grid_size``, ``horizon``)
``tabular-mdp``        :class:`~metarl_fast.tasks.TabularMDPs` (``n_states``, ``n_actions``)
``bandits``            :class:`~metarl_fast.tasks.BernoulliBandits` (``n_arms``, ``horizon``)
``chain``              :class:`~metarl_fast.tasks.Chain` (``n_states``, ``n_actions``)
``file:PATH``          a :class:`~metarl_fast.tasks.TabularFamily` read from an ``.npz`` of task
                       arrays (see :meth:`TabularFamily.load <metarl_fast.tasks.TabularFamily.load>`)
``gym:ENV_ID``         :class:`~metarl_fast.tasks.FromGymnasium` of a Gymnasium toy-text env;
                       ``env_kwargs`` are its keyword arguments (a list: one value per task)
``MODULE:NAME``        a :class:`~metarl_fast.tasks.TaskDistribution` named ``NAME`` in the
                       importable module ``MODULE`` (the current directory is searched too), or a
                       function returning one, called with ``env_kwargs`` as keyword arguments
=====================  =========================================================================

A distribution built in Python (any :class:`~metarl_fast.tasks.TaskDistribution`) is given to the
trainer directly (``TrainConfig(tasks=distribution)``); its run records ``python:<repr>``.
"""
import importlib
import json
import os
import sys

BUILT_IN = ("gridnav", "tabular-mdp", "bandits", "chain", "point-nav", "cartpoles")
# the built-in families with continuous observations (an MLP policy; see metarl_fast.continuous_tasks)
CONTINUOUS = ("point-nav", "cartpoles")
PYTHON_PREFIX = "python:"


def parse_env_kwargs(text, name="env-kwargs"):
    """The JSON object ``text`` as a dict ('' -> {}); ValueError naming ``name`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a JSON object in a string, got {type(text).__name__}")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object such as '{{\"map_name\": \"8x8\"}}', got {text!r}")
    return value


def kind_of(spec):
    """``"built-in"``, ``"file"``, ``"gym"``, ``"module"`` or ``"python"``; ValueError if ``spec``
    is none of them."""
    if not isinstance(spec, str):
        raise TypeError(f"tasks must be a name, a spec string or a TaskDistribution, got {type(spec).__name__}")
    if spec in BUILT_IN:
        return "built-in"
    prefix, sep, rest = spec.partition(":")
    if sep and rest:
        if prefix == "file":
            return "file"
        if prefix == "gym":
            return "gym"
        if spec.startswith(PYTHON_PREFIX):
            return "python"
        if prefix and all(part.isidentifier() for part in prefix.split(".")) and rest.isidentifier():
            return "module"
    raise ValueError(f"unknown tasks {spec!r}; choose one of {', '.join(BUILT_IN)}, or file:PATH.npz, "
                     f"gym:ENV_ID (e.g. gym:FrozenLake-v1) or MODULE:NAME (a TaskDistribution in your module)")


def build(spec, env_kwargs="", horizon=0):
    """The :class:`~metarl_fast.tasks.TaskDistribution` of a non-built-in ``spec``."""
    from metarl_fast import tasks

    kind = kind_of(spec)
    kwargs = parse_env_kwargs(env_kwargs)
    h = {} if not horizon else {"horizon": horizon}
    if kind == "file":
        if kwargs:
            raise ValueError("env-kwargs do not apply to file: tasks")
        family = tasks.TabularFamily.load(spec[len("file:"):])
        if horizon:
            raise ValueError("horizon is stored in the tasks file; leave it at 0 for file: tasks")
        return family
    if kind == "gym":
        return tasks.FromGymnasium(spec[len("gym:"):], **h, **kwargs)
    if kind == "module":
        if horizon:
            raise ValueError("horizon applies to built-in and gym: tasks; set it in your distribution")
        return _from_module(spec, kwargs)
    if kind == "python":
        raise ValueError(f"this run's tasks were given in Python ({spec[len(PYTHON_PREFIX):]}): pass the same "
                         f"distribution again, as TrainConfig(tasks=distribution)")
    raise ValueError(f"{spec!r} is a built-in family")  # pragma: no cover - the trainer builds those


def _from_module(spec, kwargs):
    from metarl_fast.tasks import TaskDistribution

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise ValueError(f"tasks {spec!r}: cannot import {module_name!r} ({err})") from None
        sys.path.insert(0, os.getcwd())  # a module beside the user, as `python -m` would find it
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err2:
            raise ValueError(f"tasks {spec!r}: cannot import {module_name!r} ({err2}; run from the directory "
                             f"that holds it, or put that directory on PYTHONPATH)") from None
        finally:
            sys.path.remove(os.getcwd())
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"tasks {spec!r}: module {module_name!r} has no {attr!r}") from None
    if isinstance(obj, TaskDistribution):
        if kwargs:
            raise ValueError(f"tasks {spec!r} is a TaskDistribution: env-kwargs apply to a function only")
        return obj
    if not callable(obj):
        raise ValueError(f"tasks {spec!r} must name a TaskDistribution or a function returning one, "
                         f"got {type(obj).__name__}")
    dist = obj(**kwargs)
    if not isinstance(dist, TaskDistribution):
        raise ValueError(f"tasks {spec!r}: {attr}(...) must return a TaskDistribution (e.g. "
                         f"metarl_fast.TabularFamily(sampler=...)), got {type(dist).__name__}")
    return dist
