"""The trade-off objective: task loss plus a differentiable complexity term.

* weighted: ``task + alpha * cost / cost_full`` (``cost_full`` = every width
  at full size, so ``alpha`` means the same for any model);
* budget: ``task + mu * relu(cost / budget - 1)`` -- a hinge that is zero
  below the budget and grows linearly (in units of the budget) above it;
  ``budget="floor"``: the budget is the cost with every width at its lower
  bound and the excess is measured in units of the reducible cost,
  ``relu((cost - floor) / (full - floor))``.
  ``mu`` defaults to 1; with ``lagrangian=True`` it is a multiplier that grows
  by ``lr_mu * violation`` each call and never drops below zero (a
  dual-ascent augmented Lagrangian: ``mu * v + rho/2 * v^2``).

``metric="latency"``: the cost is the latency predicted by a measured profile
(:func:`slimtrain.core.latency.profile`, passed as ``latency=``) in ms per item or per second of audio
(``unit=``), a smooth monotone function of the widths, so the widths follow measured latency
rather than FLOPs.

Both can be combined. During ``warmup_steps`` calls every DCL is held at
full width (its output is the full-width model, with no noise and no gradient
to its width) and the cost term is zero. The call counter and the hold flag are
tensors updated in place, so a training step never reads a value back to the
host and ``torch.compile`` traces the objective once (no recompilation per step).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .cost import Cost, _compiled, host_poly, host_theta_grads, model_cost
from .dcl import DynamicWidth, first_order_backward
from .graph import get_graph

if TYPE_CHECKING:
    from .latency import LatencyProfile

__all__ = ["TradeoffLoss", "LossConfigError"]


def _floor_cost(model: nn.Module) -> Cost:
    """MACs and params with every dynamic width at its lower bound."""
    g = get_graph(model)
    comp = _compiled(model, g)
    mods = g.dcl_modules(model)
    macs, params = comp(torch.tensor([float(mods[r].min_width) for r in comp.roots], dtype=torch.float64))
    return Cost(macs, params)


class LossConfigError(ValueError):
    """Invalid trade-off settings (negative alpha, non-positive budget...)."""


class TradeoffLoss(nn.Module):
    """``loss = task + complexity`` for a model prepared by :func:`slimtrain.make_dynamic`.

    Args:
        model: the dynamic model.
        alpha: weight of the normalised cost (``>= 0``).
        budget: target cost in the unit of ``metric`` (``> 0``), e.g. ``2e6`` FLOPs; or ``"floor"``:
            the cost with every width at its lower bound, so that (with ``lagrangian=True``) the
            widths end at their ``kappa_min`` floors and ``kappa_min`` controls the trade-off, as in
            the paper's sweeps.
        metric: ``"flops"``, ``"macs"``, ``"params"`` or ``"latency"`` (needs ``latency``).
        latency: a :class:`slimtrain.core.latency.LatencyProfile` of this model, or the path of a saved one.
        unit: the latency unit of ``budget`` and of the cost: ``"ms/item"`` (default) or ``"ms/s"``
            (ms per second of audio; the profile must know the item's duration); only with ``"latency"``.
        mu, lagrangian, lr_mu, rho: the budget penalty (see module docs).
        warmup_steps: calls during which widths stay at full size.
    """

    def __init__(self, model: nn.Module, alpha: float = 0.0, budget: Optional[float] = None, *,
                 metric: str = "flops", mu: float = 1.0, lagrangian: bool = False, lr_mu: float = 0.05,
                 rho: float = 1.0, warmup_steps: int = 0, latency: Union["LatencyProfile", str, Path, None] = None,
                 unit: Optional[str] = None) -> None:
        super().__init__()
        for name, v in (("alpha", alpha), ("mu", mu), ("lr_mu", lr_mu), ("rho", rho)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LossConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        floor = isinstance(budget, str) and budget == "floor"
        if budget is not None and not floor and (not isinstance(budget, (int, float)) or isinstance(budget, bool)
                                                 or not math.isfinite(budget) or budget <= 0):
            raise LossConfigError(f"budget must be a positive number or 'floor', got {budget!r}")
        if metric not in ("flops", "macs", "params", "latency"):
            raise LossConfigError(f"metric must be 'flops', 'macs', 'params' or 'latency', got {metric!r}")
        self.latency, self.unit = _latency_profile(model, metric, latency, unit)
        if warmup_steps < 0:
            raise LossConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
        get_graph(model)
        self.model = [model]  # not a submodule: no double registration of its parameters
        self.alpha, self.budget, self.metric = float(alpha), budget, metric
        self.lagrangian, self.lr_mu, self.rho = lagrangian, lr_mu, rho
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.warmup_steps = int(warmup_steps)
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.register_buffer("_step", torch.zeros((), dtype=torch.long, device=dev), persistent=False)
        if warmup_steps:  # held before the first forward, so no graph holds theta when it is reset
            for d in self._dcls():
                d.set_width(d.max_width)
                d._hold.fill_(True)
        with torch.no_grad():
            if self.latency is not None:
                self.full = float(self.latency.predict(widths=dict(self.latency.dcls), unit=self.unit))
            else:
                self.full = float(model_cost(model, full=True).metric(metric))
            if floor and self.latency is not None:
                g = get_graph(model)
                self.budget = float(self.latency.predict(
                    widths={n: float(m.min_width) for n, m in zip(g.dcls.values(), g.dcl_modules(model).values())},
                    unit=self.unit))
            elif floor:  # the cost with every width at its lower bound (kappa_min * N): kappa_min is the control
                self.budget = float(_floor_cost(model).metric(metric))
            if floor:
                if not self.full > self.budget:
                    raise LossConfigError("budget='floor': every width is already at its floor (kappa_min = 1?)"
                                          + (" or the latency profile is flat in every width" if self.latency
                                             is not None else "") + "; nothing can shrink")
        self.floor = floor

    def _dcls(self) -> list[DynamicWidth]:
        cached = self.__dict__.get("_dcl_cache")
        if cached is None:  # the model's structure is fixed once make_dynamic ran
            cached = [m for m in self.model[0].modules() if isinstance(m, DynamicWidth)]
            self.__dict__["_dcl_cache"] = cached
        return cached

    @property
    def steps(self) -> int:
        """Calls so far (reads the counter back from its device)."""
        return int(self._step.item())

    @steps.setter
    def steps(self, value: int) -> None:
        self.set_steps(value)

    def set_steps(self, steps: int) -> None:
        """Set the call counter (e.g. when resuming) and hold or free the widths to match it,
        so the model's next forward runs exactly as it would have in an uninterrupted run."""
        self._step.fill_(int(steps))
        if self.warmup_steps:
            for d in self._dcls():
                d._hold.fill_(int(steps) < self.warmup_steps)

    def cost(self) -> Cost:
        return model_cost(self.model[0], hard=False)

    def _soft_metric(self) -> Tensor:
        """The chosen metric at the continuous widths (the fast path of :meth:`cost` for training)."""
        if self.latency is not None:  # the profile was checked against the model once, at construction
            g = get_graph(self.model[0])
            widths = {n: d.width for n, d in zip(g.dcls.values(), g.dcl_modules(self.model[0]).values())}
            return torch.as_tensor(self.latency.predict(widths=widths, unit=self.unit), dtype=torch.float32)
        comp, dcls = self._cost_parts()
        if not dcls:
            return self.cost().metric(self.metric)
        macs, params = comp.soft_cost(dcls)
        return params if self.metric == "params" else (2.0 * macs if self.metric == "flops" else macs)

    def current_cost(self) -> float:
        """The chosen metric (per input item) at the widths as they are now, e.g. right after an
        optimiser step (``last["cost"]`` is the one the latest forward saw, before that step)."""
        with torch.no_grad():
            return float(self._soft_metric())

    def meets_budget(self) -> bool:
        """True if the widths as they are now cost no more than the budget (``False`` without a budget)."""
        return self.budget is not None and self.current_cost() <= self.budget

    @torch.no_grad()
    def fill_budget(self, iterations: int = 60) -> float:
        """Scale every width by one common factor ``s`` so that the *hard* widths (``ceil(s * K)``, what
        :func:`slimtrain.settle_widths` and :func:`slimtrain.export` keep) cost as much of the budget as they can
        without exceeding it; each width stays within its bounds. Returns ``s``.

        The step that first meets a budget can overshoot it by far (the multiplier keeps growing until the
        constraint holds, so the widths fall fastest right where they cross it: 8.7 M MAC/s asked, 7.15
        settled in the countermeasure study), and ``ceil`` adds up to a channel per layer. Called right
        before a settle at the budget (``fit(settle_at_budget=True)``), it lands the exported cost in the
        last channel step below the budget and keeps the ratios the widths learned. A no-op (``1.0``) without
        a budget, and when even the lower bounds cost more than the budget. The widths are left at integers."""
        if self.budget is None:
            return 1.0
        dcls = self._cost_parts()[1]  # every DCL of the model (the latency profile reads the same ones)
        if not dcls:
            return 1.0
        k0 = [float(d.width) for d in dcls]
        theta0 = [d.theta.detach().clone() for d in dcls]

        def widths_at(s: float) -> list[int]:
            return [min(max(math.ceil(k * s - 1e-6), math.ceil(d.min_width - 1e-6)), int(d.max_width))
                    for k, d in zip(k0, dcls)]

        def cost_at(s: float) -> float:
            for d, k in zip(dcls, widths_at(s)):
                d.set_width(k)
            return self.current_cost()

        lo, hi = 0.0, max(d.max_width / max(k, 1e-9) for d, k in zip(dcls, k0))
        if cost_at(lo) > self.budget:  # even the lower bounds cost more: leave the widths as they were
            for d, t in zip(dcls, theta0):
                d.theta.copy_(t)
            return 1.0
        if cost_at(hi) <= self.budget:
            return hi
        for _ in range(iterations):  # cost_at is a monotone step function of s: keep cost(lo) <= budget
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cost_at(mid) <= self.budget else (lo, mid)
        cost_at(lo)
        return lo

    @property
    def last(self) -> dict[str, float]:
        """``task``, ``cost``, ``cost_rel`` and ``penalty`` of the latest call, as floats (empty before the first)."""
        t = self.__dict__.get("_last")
        if t is None:
            return {}
        if isinstance(t, tuple):  # converted on first access: a training step needs no host sync for it
            t = self.__dict__["_last"] = {k: float(v) for k, v in zip(("task", "cost", "cost_rel", "penalty"), t)}
        return dict(t)

    def _host_path(self) -> bool:
        """Eager CPU: the whole penalty in one autograd node with Python-float maths (no tensor path)."""
        if torch.compiler.is_compiling() or self.latency is not None:
            return False
        dcls = self._cost_parts()[1]
        return bool(dcls) and all(d.host_fast_path and d.theta.device.type == "cpu" for d in dcls)

    def _cost_parts(self):
        """The compiled cost polynomials and the DCLs in the order of their widths (built once)."""
        cache = self.__dict__.get("_soft_cache")
        if cache is None:  # the compiled polynomials and the DCLs in their order, built once
            model = self.model[0]
            g = get_graph(model)
            comp = _compiled(model, g)
            mods = g.dcl_modules(model)
            cache = self.__dict__["_soft_cache"] = (comp, [mods[r] for r in comp.roots])
        return cache

    def forward(self, task_loss: Tensor) -> Tensor:
        if self._host_path():
            if self.warmup_steps:
                warm = int(self._step) < self.warmup_steps
                for d in self._dcls():
                    if bool(d._hold) != warm:
                        d._hold.fill_(warm)
            self._step.add_(1)
            comp, dcls = self._cost_parts()
            penalty = _HostPenaltyFunction.apply(self, comp, dcls, *[d.theta for d in dcls])
            self.__dict__["_last"] = (task_loss.detach(), *self.__dict__["_host_last"])
            return task_loss + penalty.to(task_loss.dtype)
        warm: Optional[Tensor] = None
        if self.warmup_steps:  # tensor flags: no host sync, one compiled graph for warm-up and after
            warm = self._step < self.warmup_steps
            for d in self._dcls():
                d._hold.copy_(warm)
        self._step.add_(1)
        c = self._soft_metric()
        rel = c / self.full
        penalty: Optional[Tensor] = None
        if self.alpha:
            penalty = self.alpha * rel
        if self.budget is not None:
            # the floor budget measures the excess in units of the reducible cost (full - floor), so the
            # push is the same whatever share of the model's cost is fixed
            scale = (self.full - self.budget) if self.floor else self.budget
            v = torch.relu((c - self.budget) / scale)
            if warm is not None:
                v = torch.where(warm, torch.zeros_like(v), v)
            # a copy: the in-place update of self.mu below must not touch what backward needs
            hinge = self.mu.clone() * v + (0.5 * self.rho * v * v if self.lagrangian else 0.0)
            penalty = hinge if penalty is None else penalty + hinge
            if self.lagrangian and self.training:
                with torch.no_grad():
                    self.mu.add_(self.lr_mu * v.detach()).clamp_(min=0.0)
        if penalty is None:
            penalty = torch.zeros((), device=task_loss.device)
        elif warm is not None:
            penalty = torch.where(warm.to(penalty.device), torch.zeros_like(penalty), penalty)
        penalty = penalty.to(task_loss.device)
        self.__dict__["_last"] = (task_loss.detach(), c.detach(), rel.detach(), penalty.detach())
        return task_loss + penalty.to(task_loss.dtype)


def _latency_profile(model: nn.Module, metric: str, latency, unit: Optional[str]):
    """``(profile, unit)`` for ``metric="latency"`` (checked against ``model``), ``(None, None)`` otherwise."""
    from .latency import LatencyError, as_profile

    if metric != "latency":
        if latency is not None or unit is not None:
            raise LossConfigError(f"latency= and unit= go with metric='latency', not metric={metric!r}")
        return None, None
    if latency is None:
        raise LossConfigError("metric='latency' needs a measured profile: latency=slimtrain.core.latency.profile(model, "
                              "sample, backend=...) or the path of one saved with .save(path)")
    unit = "ms/item" if unit is None else unit
    if unit not in ("ms/item", "ms/s"):
        raise LossConfigError(f"unit must be 'ms/item' (ms per item) or 'ms/s' (ms per second of audio), got {unit!r}")
    try:
        prof = as_profile(latency)
        prof.check_model(model)
        prof._divisor(unit)
    except LatencyError as e:
        raise LossConfigError(f"latency profile: {e}") from None
    return prof, unit


class _HostPenaltyFunction(torch.autograd.Function):
    """The eager-CPU fast path of :meth:`TradeoffLoss.forward`'s penalty: the cost polynomial, the
    weighted and budget terms, the warm-up rule and the multiplier update in Python floats, in one
    autograd node (reading a CPU ``theta`` or counter is no device sync; the tensor path of
    :meth:`TradeoffLoss.forward` gives the same values and gradients, tested)."""

    @staticmethod
    def forward(ctx, obj: "TradeoffLoss", comp, dcls: list, *thetas: Tensor) -> Tensor:  # type: ignore[override]
        t = [float(th.detach()) for th in thetas]
        (macs, params), (gm, gp) = host_poly(comp, dcls, t)
        scale_c = 2.0 if obj.metric == "flops" else 1.0
        c, dc = (params, gp) if obj.metric == "params" else (scale_c * macs, [scale_c * v for v in gm])
        c = float(np.float32(c))  # the tensor path's metric is float32
        warm = bool(obj.warmup_steps) and int(obj._step) - 1 < obj.warmup_steps
        rel = c / obj.full
        penalty, slope = 0.0, 0.0
        if obj.alpha:
            penalty, slope = obj.alpha * rel, obj.alpha / obj.full
        if obj.budget is not None:
            scale = (obj.full - obj.budget) if obj.floor else obj.budget
            v = max((c - obj.budget) / scale, 0.0)
            mu = float(obj.mu)
            penalty += mu * v + (0.5 * obj.rho * v * v if obj.lagrangian else 0.0)
            if v > 0:
                slope += (mu + (obj.rho * v if obj.lagrangian else 0.0)) / scale
            if obj.lagrangian and obj.training:
                obj.mu.fill_(max(mu + obj.lr_mu * (0.0 if warm else v), 0.0))
        if warm:
            penalty, slope = 0.0, 0.0
        obj.__dict__["_host_last"] = (c, rel, penalty)
        ctx.slope, ctx.dc, ctx.t, ctx.dcls = slope, dc, t, dcls
        return torch.tensor(penalty, dtype=torch.float32, device=thetas[0].device)

    @staticmethod
    @first_order_backward
    def backward(ctx, g: Tensor):  # type: ignore[override]
        s = float(g) * ctx.slope
        return (None, None, None, *host_theta_grads(ctx.dcls, ctx.t, [s * v for v in ctx.dc]))
