"""What the Lightning and transformers callbacks share: the checks, the settle schedule, the logged
values, the state kept in checkpoints and the export at the end (:class:`WidthControl`)."""
from __future__ import annotations

import copy
import importlib
import json
import math
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from ..core.cost import model_cost
from ..core.dcl import DynamicWidth
from ..core.export import export
from ..core.graph import dynamic_widths, settle_widths
from ..core.loss import TradeoffLoss
from ..train.checkpoint import cut_and_load

__all__ = ["IntegrationError", "WidthControl", "load_export", "require", "MIN_WIDTH_LR"]

#: below this learning rate the widths (``theta``, relative units) barely move in a fine-tuning run
MIN_WIDTH_LR = 1e-3


class IntegrationError(ValueError):
    """A framework callback set up in a way that cannot work; the message names the setting and the fix."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that names the slimtrain extra which installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the '{module.split('.')[0]}' package, which is not installed: "
                          f"pip install \"slimtrain[{extra}]\" ({e})") from e


def _check_settle_at(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IntegrationError(f"settle_at must be an optimizer step (int >= 1), a fraction of the run's steps "
                               f"(float in (0, 1)) or None, got {value!r}")
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise IntegrationError(f"settle_at={value!r}: a float is a fraction of the run's optimizer steps and must "
                               "lie in (0, 1); give an int for a step number")
    if isinstance(value, int) and value < 1:
        raise IntegrationError(f"settle_at={value!r}: a step number must be >= 1")


class WidthControlled:
    """What both framework callbacks expose of their :class:`WidthControl` (``self.width_control``)."""

    width_control: "WidthControl"

    @property
    def objective(self) -> TradeoffLoss:
        return self.width_control.objective

    @property
    def exported(self) -> Optional[nn.Module]:
        """The exported model at the end of training (``None`` before, and on ranks other than 0)."""
        return self.width_control.exported


class WidthControl:
    """The framework-free part of a ``DynamicWidthCallback``.

    Args:
        objective: the :class:`slimtrain.TradeoffLoss` of the dynamic model (its model is the one trained).
        settle_at: fix the widths (:func:`slimtrain.settle_widths`) after this many optimizer steps (an
            int), or after this share of the run's optimizer steps (a float in (0, 1)); ``None``: never
            on a schedule. The remaining steps train the weights of exactly the network that is exported.
        settle_at_budget: settle after the first optimizer step whose widths meet the objective's budget.
        fill_budget: with ``settle_at_budget``, first scale the widths by one factor to the last channel step
            below the budget (:meth:`slimtrain.TradeoffLoss.fill_budget`; the crossing step can overshoot).
        export_path: a folder to write the exported model to at the end: ``model_state.pt`` (its state
            dict; :func:`load_export` rebuilds the model from it), ``export.json`` (widths and costs) and,
            where torch can pickle the module (not with ``weight_norm``), ``model.pt`` (the whole module on
            the CPU, for ``torch.load(..., weights_only=False)``). ``None``: export in memory only (``.exported``).
        prefix: prefix of every logged key.
    """

    def __init__(self, objective: TradeoffLoss, *, settle_at: Union[int, float, None] = None,
                 settle_at_budget: bool = False, fill_budget: bool = False,
                 export_path: Union[str, os.PathLike, None] = None, prefix: str = "slimtrain/") -> None:
        if not isinstance(objective, TradeoffLoss):
            raise IntegrationError(f"objective must be a slimtrain.TradeoffLoss built on the dynamic model, got "
                                   f"{type(objective).__name__}: objective = slimtrain.TradeoffLoss(model, alpha=...)")
        _check_settle_at(settle_at)
        if settle_at_budget and objective.budget is None:
            raise IntegrationError("settle_at_budget=True needs an objective with a budget "
                                   "(slimtrain.TradeoffLoss(model, budget=...))")
        if fill_budget and not settle_at_budget:
            raise IntegrationError("fill_budget=True fills the budget when the widths settle at it: it needs "
                                   "settle_at_budget=True")
        self.objective = objective
        self.model: nn.Module = objective.model[0]
        self.settle_at = settle_at
        self.settle_at_budget = bool(settle_at_budget)
        self.fill_budget = bool(fill_budget)
        self.settle_step: Optional[int] = settle_at if isinstance(settle_at, int) else None
        self.export_path = Path(export_path) if export_path is not None else None
        self.prefix = str(prefix)
        self.exported: Optional[nn.Module] = None

    # -- checks ------------------------------------------------------------------------------------
    def named_dcls(self) -> list[tuple[str, DynamicWidth]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, DynamicWidth)]

    def check_model(self, root: nn.Module, what: str) -> None:
        """``IntegrationError`` unless the objective's model is ``root`` or one of its submodules."""
        if not any(m is self.model for m in root.modules()):
            raise IntegrationError(f"the objective's model ({type(self.model).__name__}) is not part of the {what} "
                                   f"being trained ({type(root).__name__}): build the TradeoffLoss on the dynamic "
                                   "model that the framework trains (or on a submodule of it)")

    def check_optimizer(self, param_groups: Iterable[dict], fix: str) -> None:
        """``IntegrationError`` if the optimizer does not train every width; a warning if it trains them
        at a learning rate too low to move them (``fix`` says how to give them their own)."""
        group_of = {id(p): g for g in param_groups for p in g["params"]}
        dcls = [(n, d) for n, d in self.named_dcls() if d.theta.requires_grad]
        missing = [n for n, d in dcls if id(d.theta) not in group_of]
        if missing:
            raise IntegrationError(f"the optimizer does not train the width '{missing[0]}.theta' ({len(missing)} of "
                                   f"{len(dcls)} widths missing), so no width can move; {fix}")
        lrs = [float(group_of[id(d.theta)].get("lr", 0.0)) for _, d in dcls]
        if lrs and min(lrs) < MIN_WIDTH_LR:
            warnings.warn(f"the widths train at lr={min(lrs):g}, too low to move them in a short run (theta is "
                          f"in relative units; {MIN_WIDTH_LR:g} or more is usual); {fix}", stacklevel=3)

    # -- schedule ----------------------------------------------------------------------------------
    def start(self, total_steps: float, step: int) -> None:
        """At the start of training: move the objective to the model's device, turn a fractional
        ``settle_at`` into a step of this run and settle if the run resumes past that step."""
        dev = next((d.theta.device for _, d in self.named_dcls()), None)
        if dev is not None:
            self.objective.to(dev)
        if isinstance(self.settle_at, float):
            if not math.isfinite(total_steps) or total_steps <= 0:
                raise IntegrationError(f"settle_at={self.settle_at} is a fraction of the run's optimizer steps, but "
                                       "their number is not known (an iterable dataset without max_steps?); give "
                                       "settle_at as a step number")
            self.settle_step = max(1, round(self.settle_at * total_steps))
        elif self.settle_step is not None and math.isfinite(total_steps) and self.settle_step > total_steps:
            warnings.warn(f"settle_at={self.settle_step} is past the run's {int(total_steps)} optimizer steps: "
                          "the widths never settle", stacklevel=3)
        if self.settle_step is not None and step >= self.settle_step:
            self.settle()

    @property
    def settled(self) -> bool:
        dcls = self.named_dcls()
        return bool(dcls) and all(d.frozen and not d.theta.requires_grad for _, d in dcls)

    def settle(self) -> None:
        if not self.settled:
            settle_widths(self.model)

    def after_step(self, step: int) -> bool:
        """After optimizer step number ``step`` (1-based): settle if due; True if it settled now."""
        if self.settled:
            return False
        if self.settle_step is not None and step >= self.settle_step:
            self.settle()
            return True
        if self.settle_at_budget and self.objective.meets_budget():
            if self.fill_budget:  # as fit(fill_budget=True): the last channel step below the budget
                self.objective.fill_budget()
            self.settle()
            return True
        return False

    # -- logging -----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Every width ``K``, the cost (soft, in the objective's metric, and relative to the full model),
        the MACs and params at the exported widths, the last penalty, the budget (and ``mu``), settled."""
        p, obj = self.prefix, self.objective
        out = {f"{p}width/{n}": k for n, k in dynamic_widths(self.model).items()}
        c = obj.current_cost()
        out[f"{p}cost"] = c
        out[f"{p}cost_rel"] = c / obj.full if obj.full else math.nan
        with torch.no_grad():
            hard = model_cost(self.model, hard=True)
        out[f"{p}macs_hard"] = float(hard.macs)
        out[f"{p}params_hard"] = float(hard.params)
        last = obj.last
        if "penalty" in last:
            out[f"{p}penalty"] = last["penalty"]
        if obj.budget is not None:
            out[f"{p}budget"] = float(obj.budget)
            out[f"{p}mu"] = float(obj.mu)
        out[f"{p}settled"] = float(self.settled)
        return out

    # -- checkpoint state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the model's weights (the widths are parameters of the model)."""
        return {"settled": self.settled, "steps": int(self.objective.steps), "mu": float(self.objective.mu)}

    def load_state(self, state: dict[str, Any]) -> None:
        try:
            settled, steps, mu = bool(state["settled"]), int(state["steps"]), float(state["mu"])
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrationError(f"the slimtrain state in the checkpoint is not readable ({state!r}: {e})") from None
        with torch.no_grad():
            self.objective.mu.fill_(mu)
        self.objective.set_steps(steps)
        if settled:
            self.settle()

    # -- export ------------------------------------------------------------------------------------
    def export(self, step: Optional[int] = None, write: bool = True) -> nn.Module:
        """:func:`slimtrain.export` of the model (in eval mode), written to ``export_path`` if set and ``write``
        (False on the ranks that do not save)."""
        with torch.no_grad():
            full = model_cost(self.model, full=True)
            hard = model_cost(self.model, hard=True)
        small = export(self.model).eval()
        self.exported = small
        if self.export_path is not None and write:
            out = self.export_path
            out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in small.state_dict().items()}, out / "model_state.pt")
            files = ["model_state.pt", "export.json"]
            try:  # the whole module, where torch can pickle it
                torch.save(copy.deepcopy(small).cpu(), out / "model.pt")
                files.insert(0, "model.pt")
            except Exception as e:  # e.g. weight_norm's local hooks: torch cannot pickle parametrized modules
                (out / "model.pt").unlink(missing_ok=True)
                warnings.warn(f"'{out / 'model.pt'}' not written: torch cannot pickle the exported model "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); load '{out / 'model_state.pt'}' with "
                              "slimtrain.integrations.load_export", stacklevel=2)
            summary = {
                "step": step,
                "widths": {n: d.hard_width for n, d in self.named_dcls()},
                "full": {"macs": float(full.macs), "flops": float(full.flops), "params": float(full.params)},
                "exported": {"macs": float(hard.macs), "flops": float(hard.flops), "params": float(hard.params)},
                "params_exported_model": sum(p.numel() for p in small.parameters()),
                "files": files,
            }
            (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
        return small


def load_export(path: Union[str, os.PathLike], model: nn.Module) -> nn.Module:
    """The model a callback exported to ``path``, rebuilt on ``model``: the same architecture made dynamic
    the same way (``slimtrain.make_dynamic`` with the same sample and options; its weights do not matter).
    Sets the widths of ``path/export.json``, exports and loads ``path/model_state.pt`` strictly; eval mode."""
    out = Path(path)
    try:
        widths = json.loads((out / "export.json").read_text())["widths"]
        state = torch.load(out / "model_state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise IntegrationError(f"'{out}' holds no readable callback export (export.json with widths and "
                               f"model_state.pt): {e}") from None
    dcls = dict((n, m) for n, m in model.named_modules() if isinstance(m, DynamicWidth))
    unknown = sorted(set(widths) - set(dcls))
    if unknown or not dcls:
        raise IntegrationError(f"'{out / 'export.json'}' has widths the model lacks ({', '.join(unknown[:3]) or 'none'}"
                               f"; the model has {len(dcls)} dynamic widths): make the model dynamic as it was for "
                               "training")
    return cut_and_load(model, widths, state, out / "model_state.pt", "the model cut to the widths of export.json",
                        IntegrationError)
