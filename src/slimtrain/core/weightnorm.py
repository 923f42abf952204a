"""Weight-normalised layers: find them, cut them, deep-copy them.

``w = g * v / ||v||`` with the norm over every axis but ``dim`` (``g`` has the
weight's size along ``dim`` and 1 elsewhere; ``dim=None``/``-1``: one norm over
the whole tensor, ``g`` a scalar). Two forms exist in torch:

* ``torch.nn.utils.parametrizations.weight_norm``: a parametrization holding
  ``parametrizations.weight.original0`` (``g``) and ``original1`` (``v``);
* the older ``torch.nn.utils.weight_norm``: parameters ``weight_g``/``weight_v`` and
  a forward pre-hook that recomputes ``weight`` (a non-leaf tensor, which
  ``copy.deepcopy`` refuses).

Cutting channels of ``w`` (rows and/or columns) is exact with ``v`` cut the same way
and ``g`` cut along ``dim`` and rescaled by ``||v_cut|| / ||v||`` (the kept part of the
norm), so the cut layer keeps its weight norm and ``w_cut`` equals ``w`` cut.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

__all__ = ["weight_norm_dim", "weight_norm_issue", "cut_weight", "permute_weight", "weight_norm_params",
           "deepcopy_model", "selection_only"]


def _old_hook(m: nn.Module, name: str = "weight"):
    from torch.nn.utils.weight_norm import WeightNorm

    return next((h for h in m._forward_pre_hooks.values() if isinstance(h, WeightNorm) and h.name == name), None)


def _new_param(m: nn.Module, name: str = "weight"):
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import _WeightNorm

    if not parametrize.is_parametrized(m, name):
        return None
    plist = m.parametrizations[name]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], _WeightNorm) else None


def weight_norm_dim(m: nn.Module, name: str = "weight") -> Optional[int]:
    """The ``dim`` of the weight norm on ``m.<name>`` (``-1``: over the whole tensor), or ``None`` if it has none."""
    p = _new_param(m, name)
    if p is not None:
        return int(p.dim)
    h = _old_hook(m, name)
    return int(h.dim) if h is not None else None


def weight_norm_issue(m: nn.Module) -> str:
    """Why export cannot cut ``m``'s parameters ("" if it can): a parametrization other than a single
    weight norm on ``weight`` (spectral norm, orthogonal, a user's own...)."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(m):
        return ""
    names = list(m.parametrizations.keys())
    if names == ["weight"] and _new_param(m) is not None:
        return ""
    kinds = sorted({type(p).__name__ for n in names for p in m.parametrizations[n]})
    return f"parametrization(s) {', '.join(kinds)} on {', '.join(names)} (export can cut a weight_norm on 'weight' only)"


_RESCALE = [True]


@contextlib.contextmanager
def selection_only() -> Iterator[None]:
    """Cut ``g`` without its rescale, so every cut is a pure selection of elements (for
    :func:`slimtrain.compact`'s dry run, which reads which elements a cut keeps, not their values)."""
    _RESCALE[0] = False
    try:
        yield
    finally:
        _RESCALE[0] = True


def _norm(v: Tensor, dim: int) -> Tensor:
    return torch.norm_except_dim(v, 2, dim)


@torch.no_grad()
def cut_weight(m: nn.Module, index: dict[int, Optional[Tensor]]) -> None:
    """Keep ``index[axis]`` along each axis of ``m.weight`` (``None``: the whole axis), in place; a plain
    parameter, a parametrized weight norm and the old weight-norm hook alike (``g`` rescaled, see the module
    docstring)."""
    def cut(t: Tensor, skip_unit: bool = False) -> Tensor:
        for axis, idx in index.items():
            if idx is not None and axis < t.dim() and not (skip_unit and t.shape[axis] == 1):
                t = t.index_select(axis, idx)
        return t

    def param(old: Tensor, new: Tensor) -> nn.Parameter:
        return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad)

    new = _new_param(m)
    old = _old_hook(m) if new is None else None
    if new is None and old is None:
        m.weight = param(m.weight, cut(m.weight))
        return
    dim = int(new.dim if new is not None else old.dim)
    if new is not None:
        holder, g_name, v_name = m.parametrizations.weight, "original0", "original1"
    else:
        holder, g_name, v_name = m, "weight_g", "weight_v"
    g, v = getattr(holder, g_name), getattr(holder, v_name)
    v_cut = cut(v)
    full = cut(_norm(v, dim), skip_unit=True)  # ||v|| of every kept slice along dim, before the cut
    kept = _norm(v_cut, dim)
    scale = torch.where(full > 0, kept / full.clamp_min(torch.finfo(full.dtype).tiny), torch.ones_like(full))
    g_cut = cut(g, skip_unit=True) * scale if _RESCALE[0] else cut(g, skip_unit=True)
    if new is not None:  # assign through the ParametrizationList's own attributes (no right_inverse)
        holder._parameters[g_name] = param(g, g_cut)
        holder._parameters[v_name] = param(v, v_cut)
    else:
        setattr(holder, g_name, param(g, g_cut))
        setattr(holder, v_name, param(v, v_cut))
        m.__dict__["weight"] = old.compute_weight(m)


def weight_norm_params(m: nn.Module) -> tuple[str, ...]:
    """Names (in ``m.named_parameters()``) of a weight norm's ``g`` and ``v`` (empty if ``m`` has none)."""
    if _new_param(m) is not None:
        return ("parametrizations.weight.original0", "parametrizations.weight.original1")
    if _old_hook(m) is not None:
        return ("weight_g", "weight_v")
    return ()


@torch.no_grad()
def permute_weight(m: nn.Module, axis: int, idx: Tensor) -> None:
    """Permute ``m.weight`` along ``axis`` in place (a weight norm's ``v`` along it, and ``g`` where it has that
    axis: a permutation leaves every norm as it was, so the weight is permuted exactly)."""
    new = _new_param(m)
    old = _old_hook(m) if new is None else None
    if new is None and old is None:
        m.weight.copy_(m.weight.index_select(axis, idx))
        return
    holder, g_name, v_name = (m.parametrizations.weight, "original0", "original1") if new is not None \
        else (m, "weight_g", "weight_v")
    g, v = getattr(holder, g_name), getattr(holder, v_name)
    v.copy_(v.index_select(axis, idx))
    if g.dim() > axis and g.shape[axis] == v.shape[axis] > 1:
        g.copy_(g.index_select(axis, idx))
    if old is not None:
        m.__dict__["weight"] = old.compute_weight(m)


@contextlib.contextmanager
def _copyable(model: nn.Module) -> Iterator[None]:
    """Old-style weight-normed modules hold ``weight`` as a non-leaf tensor that deepcopy refuses: detach it
    for the copy (the copy's hook recomputes it on every forward) and restore the original after."""
    saved = []
    for m in model.modules():
        for h in list(m._forward_pre_hooks.values()):
            from torch.nn.utils.weight_norm import WeightNorm

            if isinstance(h, WeightNorm) and isinstance(m.__dict__.get(h.name), Tensor):
                saved.append((m, h.name, m.__dict__[h.name]))
                m.__dict__[h.name] = m.__dict__[h.name].detach()
    try:
        yield
    finally:
        for m, name, t in saved:
            m.__dict__[name] = t


def deepcopy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for models with the old ``torch.nn.utils.weight_norm`` hooks."""
    with _copyable(model):
        return copy.deepcopy(model)
