"""Checkpoints of dynamic models that know how to rebuild their model.

A checkpoint is a ``torch.save`` file holding a plain dict::

    {"format": "slimtrain-checkpoint", "version": 1,
     "state_dict": ...,            # of the dynamic (DCL) model
     "recipe": {"task": name,      # a builder registered with register_task
                "kwargs": {...},   # the builder's arguments
                "sample_shape": [...],          # shape of the make_dynamic sample batch
                "dynamic": {"kappa_min": ...}, # make_dynamic keyword arguments
                "module": "pkg.task",           # module whose import registers the builder (optional)
                "compact": {dcl name: N}},      # widths cut by slimtrain.compact (only after a compaction)
     "widths": {dcl name: K},      # continuous widths when saved
     "extra": {...}}               # anything else (metrics, settings)

It holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``: loading runs no code from the file.
The model is rebuilt by the builder registered under the recipe's task name
(:func:`register_task`), then the state dict is loaded into it. If no builder is
registered yet, the modules declared under the ``slimtrain.tasks`` entry-point group
are imported, then the recipe's ``module`` (recorded by :func:`make_recipe`); the
core itself never imports a task. A model saved after :func:`slimtrain.compact` records its
cut sizes under the recipe's ``compact``, and :func:`build_from_recipe` cuts the built model to them.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "register_task", "registered_tasks",
    "build_from_recipe", "load_dynamic_model", "make_recipe", "load_for_inference", "load_exported",
]

FORMAT = "slimtrain-checkpoint"
VERSION = 1

PathLike = Union[str, os.PathLike]
Builder = Callable[[dict], nn.Module]

_REGISTRY: dict[str, Builder] = {}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a slimtrain checkpoint."""


def register_task(name: str, build_fn: Builder, *, overwrite: bool = True) -> None:
    """Register ``build_fn(recipe) -> dynamic model`` under the task ``name``.

    The builder must return the model exactly as it was when saved: same
    modules and :func:`slimtrain.make_dynamic` applied with the recipe's
    ``sample_shape`` and ``dynamic`` keyword arguments.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty string, got {name!r}")
    if not callable(build_fn):
        raise ValueError(f"build_fn for task {name!r} must be callable, got {build_fn!r}")
    if not overwrite and name in _REGISTRY and _REGISTRY[name] is not build_fn:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = build_fn


#: entry-point group under which packages declare modules that register tasks when imported
ENTRY_POINT_GROUP = "slimtrain.tasks"


def _load_task_plugins() -> None:
    """Import every module declared under the ``slimtrain.tasks`` entry-point group (they call
    :func:`register_task`). The core names no task: the case studies declare themselves in
    ``pyproject.toml``, and the CLI imports :mod:`slimtrain.tasks` itself."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ImportError:  # a declared task whose optional dependencies are missing
            continue


def registered_tasks() -> list[str]:
    """Names of the registered tasks (the built-in ones once :mod:`slimtrain.tasks` is imported, or their
    entry points are loaded)."""
    return sorted(_REGISTRY)


def make_recipe(task: str, kwargs: dict, sample_shape, dynamic: Optional[dict] = None) -> dict:
    """The recipe dict stored in a checkpoint (plain values only)."""
    recipe = {
        "task": str(task),
        "kwargs": dict(kwargs),
        "sample_shape": [int(s) for s in sample_shape],
        "dynamic": dict(dynamic or {}),
    }
    builder = _REGISTRY.get(str(task))
    if builder is not None and getattr(builder, "__module__", None):
        recipe["module"] = builder.__module__  # imported on load if nothing registered the task yet
    return recipe


def _dcl_widths(model: nn.Module) -> dict[str, float]:
    from ..core.dcl import DynamicWidth

    return {n: float(m.width.detach()) for n, m in model.named_modules() if isinstance(m, DynamicWidth)}


def save_checkpoint(path: PathLike, model: nn.Module, recipe: dict, extra: Optional[dict] = None) -> Path:
    """Write ``model``'s state, its ``recipe`` and ``extra`` to ``path`` atomically.

    The file is first written next to ``path`` and then renamed over it, so a
    crash never leaves a half-written checkpoint. Returns the path.
    """
    if not isinstance(recipe, dict) or not isinstance(recipe.get("task"), str):
        raise CheckpointError("recipe must be a dict with a 'task' name (see slimtrain.train.checkpoint.make_recipe)")
    from ..core.compact import compacted_sizes

    sizes = compacted_sizes(model)
    recipe = {**recipe, "compact": sizes} if sizes else {k: v for k, v in recipe.items() if k != "compact"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "state_dict": state,
        "recipe": recipe,
        "widths": _dcl_widths(model),
        "extra": dict(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: PathLike) -> dict:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file if it is missing, cannot be
    read (corrupt, truncated, not a torch file) or is not a slimtrain checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if len(first) > 120 and ". " in first:
            first = first.split(". ")[0]
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(f"checkpoint '{path}' cannot be read (corrupt or not a torch file): {detail}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a slimtrain checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint '{path}' has version {ckpt.get('version')!r}; this slimtrain reads version {VERSION}")
    problems = []
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append("'state_dict' is not a dict of tensors")
    recipe = ckpt.get("recipe")
    if not isinstance(recipe, dict):
        problems.append("'recipe' is missing")
    else:
        if not isinstance(recipe.get("task"), str):
            problems.append("the recipe has no task name")
        if not isinstance(recipe.get("kwargs", {}), dict) or not isinstance(recipe.get("dynamic", {}), dict):
            problems.append("the recipe's 'kwargs'/'dynamic' are not dicts")
        shape = recipe.get("sample_shape")
        if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            problems.append(f"the recipe's sample_shape {shape!r} is not a list of positive integers")
        cut = recipe.get("compact", {})
        if not isinstance(cut, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                and v > 0 for k, v in cut.items()):
            problems.append(f"the recipe's 'compact' {cut!r} is not a dict of layer names to channel counts")
    if not isinstance(ckpt.get("widths", {}), dict) or not isinstance(ckpt.get("extra", {}), dict):
        problems.append("'widths'/'extra' are not dicts")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' is damaged: " + "; ".join(problems))
    ckpt.setdefault("widths", {})
    ckpt.setdefault("extra", {})
    ckpt["path"] = str(path)
    return ckpt


def build_from_recipe(recipe: dict, where: str = "") -> nn.Module:
    """A fresh dynamic model from ``recipe`` via the registered builder (``where``: file, for messages)."""
    task = recipe.get("task")
    if task not in _REGISTRY:
        _load_task_plugins()
    module = recipe.get("module")
    if task not in _REGISTRY and isinstance(module, str) and re.fullmatch(r"[A-Za-z_][\w.]*", module):
        import importlib

        try:
            importlib.import_module(module)  # the module whose import registered the builder when it was saved
        except ImportError:
            pass
    if task not in _REGISTRY:
        raise CheckpointError(
            f"{f'checkpoint {where!r}: ' if where else ''}no builder registered for task {task!r} "
            f"(known: {registered_tasks()}); "
            "call slimtrain.train.checkpoint.register_task(name, build_fn) before loading"
        )
    model = _REGISTRY[task](recipe)
    if recipe.get("compact"):  # saved after slimtrain.compact: the same cut sizes
        from ..core.compact import CompactError, compact_to

        try:
            compact_to(model, dict(recipe["compact"]))
        except CompactError as e:
            raise CheckpointError(f"{f'checkpoint {where!r}: ' if where else ''}the recorded compaction does not fit "
                                  f"the model task {task!r} builds: {e}") from None
    return model


def load_dynamic_model(path_or_ckpt: Union[PathLike, dict]) -> nn.Module:
    """Rebuild the dynamic model of a checkpoint and load its weights and widths.

    Accepts a path or a dict returned by :func:`load_checkpoint`. The model is
    returned in eval mode (the widths are then the hard, exported ones).
    """
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    where = ckpt.get("path", "<checkpoint>")
    model = build_from_recipe(ckpt["recipe"], where)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint '{where}' does not fit the model its recipe builds: {msg}") from None
    for name, k in ckpt.get("widths", {}).items():
        now = _dcl_widths(model).get(name)
        if now is None or not math.isclose(now, float(k), rel_tol=1e-5, abs_tol=1e-5):
            raise CheckpointError(f"checkpoint '{where}': width of '{name}' is {now} after loading, saved {k}")
    return model.eval()


def load_for_inference(path: PathLike, task: str) -> tuple[nn.Module, Optional[dict]]:
    """``(plain model in eval mode, checkpoint dict or None)`` from a checkpoint of ``task`` or a TorchScript file.

    A slimtrain checkpoint is rebuilt and, if it has dynamic widths, cut to them
    (:func:`slimtrain.export`); a TorchScript file written by ``slimtrain export``
    is loaded as it is (the second item is then ``None``). A missing file, a file
    that is neither, or a checkpoint of another task raises :class:`CheckpointError`
    naming the file.
    """
    import warnings

    from ..core.dcl import DynamicWidth
    from ..core.export import export

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load notes when it meets a TorchScript archive
            ckpt = load_checkpoint(p)
    except CheckpointError:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated in recent torch; it still loads
                return torch.jit.load(str(p), map_location="cpu").eval(), None
        except Exception as e:  # noqa: BLE001 - torch.jit raises several kinds
            raise CheckpointError(f"{p} is neither a slimtrain checkpoint nor a TorchScript model "
                                  f"({type(e).__name__})") from None
    if ckpt["recipe"].get("task") != task:
        raise CheckpointError(f"{p} is a checkpoint of task {ckpt['recipe'].get('task')!r}, not of {task!r}")
    model = load_dynamic_model(ckpt)
    if any(isinstance(m, DynamicWidth) for m in model.modules()):
        model = export(model)
    return model.eval(), ckpt


def load_exported(out_dir) -> nn.Module:
    """Rebuild the exported model written by ``slimtrain export`` from ``OUT_DIR/model_state.pt``.

    Reads the recipe and widths stored in ``OUT_DIR/summary.json``, builds the
    dynamic model with the registered task builder, cuts it to those widths and
    loads the saved state dict (strictly). The result is in eval mode.
    """
    import json

    out = Path(out_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
        recipe, widths = summary["recipe"], summary["widths"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"'{out / 'summary.json'}' is missing or has no recipe/widths: {e}") from None
    model = build_from_recipe(recipe, str(out))
    state = torch.load(out / "model_state.pt", map_location="cpu", weights_only=True)
    return cut_and_load(model, widths, state, out / "model_state.pt", "the model of its summary")


def cut_and_load(model: nn.Module, widths: dict[str, float], state: dict, where: PathLike, what: str,
                 error: type[Exception] = CheckpointError) -> nn.Module:
    """``model`` (dynamic) set to ``widths`` (DCL name -> K), exported, with the exported ``state`` loaded
    strictly; eval mode. A state that does not fit raises ``error`` naming ``where`` and ``what`` it should fit."""
    from ..core.export import export

    for name, k in widths.items():
        model.get_submodule(name).set_width(float(k))
    small = export(model.eval())
    try:
        small.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise error(f"'{where}' does not fit {what}: {' '.join(str(e).split())[:300]}") from None
    return small.eval()
