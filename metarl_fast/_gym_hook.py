"""Registers the families' Gymnasium ids (see :mod:`metarl_fast.gym_env`) without importing
Gymnasium: at once if it is imported already, else right after its import finishes, so that
``import metarl_fast; import gymnasium; gymnasium.make("metarl_fast/Chain-v0")`` works in either
order and ``import metarl_fast`` costs nothing when Gymnasium is not used."""
import importlib.abc
import importlib.util
import sys


class _AfterGymnasium(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``gymnasium`` is about to be imported it wraps the real
    loader's ``exec_module`` so that the ids are registered once the module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)  # once; and the lookup below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def _register():
    try:
        import metarl_fast.gym_env  # noqa: F401  (registers on import)
    except Exception as err:  # noqa: BLE001 -- never break the user's import of gymnasium
        import warnings

        warnings.warn(f"metarl_fast could not register its Gymnasium ids: {err}", RuntimeWarning, stacklevel=2)


def register_when_gymnasium_is_imported():
    if sys.modules.get("gymnasium") is not None:
        _register()
    elif not any(isinstance(finder, _AfterGymnasium) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterGymnasium())
