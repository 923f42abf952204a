"""Compaction: cut a dynamic model to its current widths in the middle of training.

Channels at or above ``ceil(K)`` of a width are exactly zero (in eval, and in training the DCL
multiplies them by zero), yet the layer that reads them still multiplies them. :func:`compact` cuts
every dynamic width in place to ``min(N, ceil(K) + margin)`` channels with the cutting path of
:func:`slimtrain.export` (same modules, classes and attribute names; weights, BatchNorm statistics,
size and head-count attributes cut), keeps the DCLs attached with their new ``N`` and the same ``K``,
and slices the optimiser's state, so training goes on with the same optimiser object on a smaller,
cheaper network. In eval mode the output does not change.

``theta`` keeps its unit (:attr:`DynamicWidth.full_channels`, the ``N`` the model was built with),
so its value, learning rate and optimiser moments mean what they meant before; the cost model's
``full=True`` (and :class:`~slimtrain.TradeoffLoss`'s ``alpha`` normalisation and budgets) keep
meaning the model as built.
"""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .dcl import _ROUND_TOL, DynamicWidth
from .export import cut_in_place
from .graph import GraphError, WidthGraph, get_graph
from .weightnorm import selection_only

__all__ = ["compact", "compact_to", "compacted_sizes", "kept_channels", "CompactError"]


class CompactError(ValueError):
    """The model, optimiser or margin cannot be compacted (names the parameter, layer or value)."""


def compacted_sizes(model: nn.Module) -> dict[str, int]:
    """``{DCL name: channels}`` of every width cut below its size as built (empty: never compacted)."""
    g = model.__dict__.get("_slimtrain_graph")
    if g is None:
        return {}
    return {name: int(d.num_channels) for name, d in ((n, model.get_submodule(n)) for n in g.dcls.values())
            if d.num_channels < d.full_channels}


def compact(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
            margin: int = 0) -> dict[str, int]:
    """Cut every dynamic width of ``model`` in place to ``min(N, ceil(K) + margin)`` channels.

    ``ceil(K)`` channels are all the eval-mode model (and :func:`slimtrain.export`) uses; a width whose
    ``K`` is a whole number (e.g. at its lower bound) keeps one more, channel ``K``, to which a training
    step adds noise (see :func:`kept_channels`), so a training step on the cut model computes what it
    computed before on the kept channels. A settled width (:func:`slimtrain.settle_widths`) is cut to
    exactly ``ceil(K)``.

    Args:
        model: a model prepared by :func:`slimtrain.make_dynamic` (compacted before or not).
        optimizer: the optimiser training it (any ``torch.optim`` optimiser whose per-parameter state
            holds tensors shaped like the parameter, or scalars: Adam/AdamW moments, SGD momentum).
            The cut parameters are new ``nn.Parameter`` objects: they replace the old ones in its
            ``param_groups`` and their state is sliced and re-keyed, so the same object trains on.
        margin: channels kept above ``ceil(K)`` (room for a width to grow back), ``>= 0``.

    Returns ``{DCL name: channels}`` after the cut. A width already at ``min(N, ceil(K) + margin)``
    is left as it is. Wrappers made around the model before (DDP, ``torch.compile``) must be made
    again; a :class:`~slimtrain.TradeoffLoss` of the model follows the new sizes by itself.
    """
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise CompactError(f"margin must be an integer >= 0 (channels kept above ceil(K)), got {margin!r}")
    g = _graph(model)
    mods = g.dcl_modules(model)
    sizes = {name: min(mods[r].num_channels, kept_channels(mods[r]) + margin) for r, name in g.dcls.items()}
    return compact_to(model, sizes, optimizer)


def kept_channels(d: DynamicWidth) -> int:
    """The channels a training step of ``d`` can make non-zero: ``ceil(K)``, or ``floor(K) + 1`` where they
    differ (a whole-number ``K``, e.g. at the lower bound: channel ``K`` then carries only the noise);
    ``hard_width`` once settled/frozen (no noise), ``N`` while held at full width (warm-up)."""
    if d.frozen:
        return d.hard_width
    if bool(d._hold):
        return d.num_channels
    k = float(d.width.detach())
    return min(d.num_channels, max(d.hard_width, math.floor(k) + 1))


def compact_to(model: nn.Module, sizes: dict[str, int], optimizer: Optional[torch.optim.Optimizer] = None
               ) -> dict[str, int]:
    """Cut the widths named in ``sizes`` ({DCL name: channels}) in place to those sizes; see :func:`compact`.

    Used to rebuild a compacted model from its recipe (checkpoints record the sizes). Every size must lie
    between ``ceil`` of the width's lower bound and its current ``N``.
    """
    g = _graph(model)
    by_name = {name: r for r, name in g.dcls.items()}
    mods = g.dcl_modules(model)
    cut: dict[int, int] = {}
    for name, n in sizes.items():
        if name not in by_name:
            raise CompactError(f"'{name}' is not a dynamic width of this model (its widths: {sorted(by_name)})")
        d = mods[by_name[name]]
        low = math.ceil(d.min_width - _ROUND_TOL)
        if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= d.num_channels:
            raise CompactError(f"width '{name}': cannot cut to {n!r} channels; it has {d.num_channels} and its "
                               f"lower bound is {d.min_width:g}")
        if type(d).forward is not DynamicWidth.forward:
            raise CompactError(f"width '{name}' is a {type(d).__name__} with its own forward; compaction cuts "
                               "a DynamicWidth to ceil(K), which may not be what that module keeps")
        if n < d.num_channels:
            cut[by_name[name]] = n
    _check_optimizer(model, optimizer)
    if cut:
        index = _index_maps(model, g, cut)  # a dry run on a copy: any failure leaves the model untouched
        before = dict(model.named_parameters(remove_duplicate=False))
        cut_in_place(model, g, cut)
        after = dict(model.named_parameters(remove_duplicate=False))
        swaps = {id(old): (old, after[name], index[name]) for name, old in before.items() if after[name] is not old}
        _resize_widths(model, g, cut)
        if optimizer is not None:
            _slice_optimizer(optimizer, swaps)
    return {name: int(mods[r].num_channels) for r, name in g.dcls.items()}


def _graph(model: nn.Module) -> WidthGraph:
    try:
        return get_graph(model)
    except GraphError as e:
        raise CompactError(f"compact needs a dynamic model: {e}") from None


def _check_optimizer(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Every parameter the optimiser holds is the model's, and its state can be sliced like it."""
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise CompactError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if id(p) not in names:
                raise CompactError(f"the optimizer's param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)}) "
                                   "is not a parameter of this model; compact the model its optimizer trains")
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise CompactError(f"optimizer state '{k}' of '{names.get(id(p), '?')}' has shape {tuple(v.shape)}, "
                                   f"not the parameter's {tuple(p.shape)}; it cannot be cut with it")


def _index_maps(model: nn.Module, g: WidthGraph, cut: dict[int, int]) -> dict[str, Optional[Tensor]]:
    """For every parameter name: the flat indices of the old elements that the cut keeps (``None``: not cut).

    The cut runs on a CPU copy whose parameters hold their own flat indices (float64, exact), so the map
    comes from the very code that cuts the model, whatever layers it knows."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape),
                                   requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().cpu().clone()
    probe = copy.deepcopy(model, memo)
    gp = get_graph(probe)
    before = dict(probe.named_parameters(remove_duplicate=False))
    try:
        with selection_only():  # a weight norm's g is rescaled by the real cut: here only which elements stay
            cut_in_place(probe, gp, cut)
    except Exception as e:  # noqa: BLE001 - reported with the model's own context
        raise CompactError(f"cutting this model failed ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                           "the model was not changed") from None
    out: dict[str, Optional[Tensor]] = {}
    tied: dict[int, list[str]] = {}
    after = dict(probe.named_parameters(remove_duplicate=False))
    for name, new in after.items():
        old = before[name]
        tied.setdefault(id(old), []).append(name)
        if new is old:
            out[name] = None
            continue
        idx = new.detach().reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= old.numel() or not torch.equal(idx, idx.round())):
            raise CompactError(f"parameter '{name}' is not cut by selecting elements; compaction cannot map it")
        out[name] = idx.long()
    for names in tied.values():
        if len(names) > 1 and len({id(after[n]) for n in names}) > 1:
            raise CompactError(f"the tied parameters {names} would be cut into separate tensors; compaction keeps "
                               "ties, so exclude their width from make_dynamic")
    return out


@torch.no_grad()
def _resize_widths(model: nn.Module, g: WidthGraph, cut: dict[int, int]) -> None:
    """The DCLs and the width graph follow the cut: new ``N`` (and upper bound), same ``K``."""
    mods = g.dcl_modules(model)
    for r, n in cut.items():
        d = mods[r]
        d.num_channels = n
        d.max_width = min(d.max_width, float(n))
        d._index = torch.arange(n, dtype=d._index.dtype, device=d._index.device)
        d.__dict__.pop("_hard_mask_cache", None)
        d.__dict__.pop("_mask_cache", None)
    for s in g.layers:
        if s.in_root in cut:
            if s.kind == "prod":  # MACs linear in the width: the same MACs per channel
                s.extra["macs"] = s.extra["macs"] * cut[s.in_root] / s.in_size
            s.in_size = cut[s.in_root]
        if s.out_root in cut:
            s.out_size = cut[s.out_root]
        if "in_segs" in s.extra:
            s.extra["in_segs"] = [(r, cut.get(r, n) if r is not None else n) for r, n in s.extra["in_segs"]]
    comp = g.__dict__.get("_compiled_cost")
    if comp is not None:  # the cost polynomials do not depend on N; the upper bounds do
        comp.bounds(model, g)


@torch.no_grad()
def _slice_optimizer(optimizer: torch.optim.Optimizer, swaps: dict[int, tuple[Tensor, Tensor, Tensor]]) -> None:
    """Replace each cut parameter in ``optimizer``'s groups by its new tensor and cut its state alike."""
    for group in optimizer.param_groups:
        group["params"] = [swaps[id(p)][1] if id(p) in swaps else p for p in group["params"]]
    for old, new, idx in swaps.values():
        st = optimizer.state.pop(old, None)
        if st is None:
            continue
        out = {}
        for k, v in st.items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape == old.shape:
                v = v.reshape(-1).index_select(0, idx.to(v.device)).reshape(new.shape).clone()
            out[k] = v
        optimizer.state[new] = out
