"""The import paths of slimtrain before its modules moved into layer packages (core, train, audio, apps).

``import slimtrain.export``, ``from slimtrain.training import fit``, ``slimtrain.data.read_rttm`` and
unpickling a model saved when its classes lived in ``slimtrain.modules`` keep working: importing an old path
imports the new module and registers that very module under the old name too (so
``monkeypatch.setattr("slimtrain.training.fit", ...)`` patches the one module there is). Old paths are not
deprecated; new code and the docs use the new ones.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Optional

_CORE = ("attach", "compact", "cost", "dcl", "distill", "errors", "export", "graph", "latency", "loss", "modules",
         "plan", "reorder", "trace", "weightnorm")
_TRAIN = ("checkpoint", "distributed", "record", "stats", "sweep_engine", "training")

#: old module path -> new module path (a package's submodules follow their package)
MOVED: dict[str, str] = {
    **{f"slimtrain.{m}": f"slimtrain.core.{m}" for m in _CORE},
    **{f"slimtrain.{m}": f"slimtrain.train.{m}" for m in _TRAIN},
    "slimtrain.frontend": "slimtrain.audio.frontend",
    "slimtrain.audio_input": "slimtrain.audio.io",
    "slimtrain.data": "slimtrain.audio.data",
    "slimtrain.vad": "slimtrain.apps.vad",
    "slimtrain.spoof": "slimtrain.apps.spoof",
    "slimtrain.shipped": "slimtrain.apps.shipped",
    "slimtrain.report": "slimtrain.tasks.report",
    "slimtrain.tasks.vad.models": "slimtrain.apps.vad.models",
    "slimtrain.tasks.spoof.models": "slimtrain.apps.spoof.models",
}

#: names an old module had that now live elsewhere: old module -> {name: new module}
_EXTRA: dict[str, dict[str, str]] = {
    "slimtrain.export": {"load_exported": "slimtrain.train.checkpoint"},
}


def new_path(old: str) -> Optional[str]:
    """The module that an old import path now names (``None`` if ``old`` did not move)."""
    if old in MOVED:
        return MOVED[old]
    for o, n in MOVED.items():
        if old.startswith(o + "."):
            return n + old[len(o):]
    return None


class _Alias(ModuleType):
    """An old module path some of whose names moved to other modules (``slimtrain.export.load_exported``):
    every attribute read, written or listed is the new module's, and the moved names are found where they went."""

    def __init__(self, name: str, target: ModuleType) -> None:
        super().__init__(name, target.__doc__)
        object.__setattr__(self, "_target", target)

    @property  # type: ignore[misc]
    def __dict__(self) -> dict:  # what monkeypatching tools read and restore
        return object.__getattribute__(self, "_target").__dict__

    def __getattr__(self, name: str) -> Any:
        target = object.__getattribute__(self, "_target")
        try:
            return getattr(target, name)
        except AttributeError:
            where = _EXTRA.get(self.__name__, {}).get(name)
            if where is None:
                raise AttributeError(f"module {self.__name__!r} (now {target.__name__!r}) has no attribute "
                                     f"{name!r}") from None
            return getattr(importlib.import_module(where), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__") and name.endswith("__"):  # the import system's own bookkeeping
            object.__setattr__(self, name, value)
        else:
            setattr(object.__getattribute__(self, "_target"), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_target"), name)

    def __dir__(self) -> list[str]:
        return dir(object.__getattribute__(self, "_target"))


def _old_module(old: str, new: str) -> ModuleType:
    """The module an old path names: the new module itself, or an alias where names moved elsewhere."""
    target = importlib.import_module(new)
    return _Alias(old, target) if old in _EXTRA else target


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = _old_module(spec.name, self.new)
        self._spec = module.__dict__.get("__spec__") if not isinstance(module, _Alias) else None
        return module

    def exec_module(self, module: ModuleType) -> None:
        if self._spec is not None:  # the import system set the old path's spec on the module: give it its own back
            module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        new = new_path(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install(package: ModuleType) -> None:
    """Put the old-path finder on ``sys.meta_path``; register at once the old modules whose names are also
    functions of the package (``slimtrain.export``, ``slimtrain.compact``), so that importing them later
    does not replace the function on the package with the module."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    for old, new in MOVED.items():
        short = old.rpartition(".")[2]
        if old.count(".") == 1 and old not in sys.modules and callable(getattr(package, short, None)) \
                and not isinstance(getattr(package, short), ModuleType):
            sys.modules[old] = _old_module(old, new)
