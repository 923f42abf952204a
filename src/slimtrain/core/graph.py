"""Attach dynamic widths to a model and keep the resulting width graph.

:func:`make_dynamic` runs four stages:

1. :func:`~slimtrain.core.trace.trace_channels` -- one sample forward pass records the channel flow;
2. :func:`plan_attachments` -- from that trace alone, as plain data (:class:`~slimtrain.core.plan.AttachPlan`):
   which layers' outputs get a :class:`~slimtrain.core.dcl.DynamicWidth` (after a BatchNorm that reads the raw
   output, so the DCL zeroes what the next layer sees), which widths joined by residual adds share one DCL,
   which LayerNorms are bound to one, which widths stay fixed and why. A width found not to fit is left fixed
   inside the plan (a fixpoint on the data), not by attaching and retrying;
3. :func:`attach` -- carries the plan out on the model;
4. :func:`build_graph` -- the :class:`WidthGraph` of the plan, stored on the model, which the cost model and
   :func:`slimtrain.export` read.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from .attach import (DCL_CHILD, attach_dcl, bind_layer_norm, bound_width, detach_all, install_state_dict_hook,
                     make_mha_dynamic, make_rnn_dynamic)
from .dcl import DynamicWidth
from .plan import _PLAN_ATTR, AttachPlan, DclRef, Install, WidthEntry, WidthPlan
from .modules import DynamicOutput, DynamicRecurrent, MaskedLayerNorm, TransformerBlock
from .trace import CONV_TYPES, GraphError, Tag, Trace, _tensors, trace_channels

__all__ = ["make_dynamic", "plan_widths", "WidthGraph", "LayerSpec", "get_graph", "dynamic_widths", "settle_widths",
           "GraphError", "plan_attachments", "attach", "build_graph"]

_ATTR = "_slimtrain_graph"


@dataclass
class LayerSpec:
    """A layer of the traced model with the widths on each side."""

    name: str
    kind: str
    in_root: Optional[int]  # dynamic group feeding the layer (None: fixed)
    in_size: int  # channels of that group (N)
    in_outer: int
    in_inner: int
    out_root: Optional[int]  # dynamic group the layer produces (None: fixed)
    out_size: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class WidthGraph:
    """Which dynamic width (by DCL module name) feeds and leaves every layer."""

    dcls: dict[int, str]  # group root -> name of its DynamicWidth module
    layers: list[LayerSpec]
    fixed_macs: float  # MACs of operations between layers (attention products), per sample
    batch: int
    plan: Optional[AttachPlan] = None  # the plan make_dynamic carried out (None: a read-only graph of cost)

    def dcl_modules(self, model: nn.Module) -> dict[int, DynamicWidth]:
        return {r: model.get_submodule(n) for r, n in self.dcls.items()}  # type: ignore[misc]


def get_graph(model: nn.Module) -> WidthGraph:
    """The :class:`WidthGraph` stored by :func:`make_dynamic` (clear error if absent)."""
    g = model.__dict__.get(_ATTR)
    if g is None:
        reject_compiled_wrapper(model)
        raise GraphError("this model has no dynamic widths: call slimtrain.make_dynamic(model, sample) first")
    return g


def reject_compiled_wrapper(model: nn.Module) -> None:
    """Raise a clear error for the wrapper ``torch.compile(model)`` returns: slimtrain works on the module itself."""
    if _is_compiled_wrapper(model):
        raise GraphError("got the module torch.compile returned; pass the original module (model._orig_mod) to "
                         "slimtrain and compile the training step or model after make_dynamic")


def dynamic_widths(model: nn.Module, hard: bool = False) -> dict[str, float]:
    """Current width ``K`` of every dynamic group, keyed by the DCL's module name."""
    g = get_graph(model)
    out = {}
    for r, name in g.dcls.items():
        d: DynamicWidth = model.get_submodule(name)  # type: ignore[assignment]
        out[name] = float(d.hard_width) if hard else float(d.width.detach())
    return out


def settle_widths(model: nn.Module) -> dict[str, int]:
    """Fix every DCL of ``model`` at its hard width for the rest of training; returns those widths.

    From here on each DCL masks as in eval mode and at export (the first ``hard_width`` channels
    pass, no noise, no fractional channel) and its ``theta`` stops training
    (``requires_grad=False``, so optimisers skip it). The weights then train on exactly the network
    :func:`slimtrain.export` will cut, as a pruned model is fine-tuned. A complexity term still
    evaluates (to a constant). Used by ``fit(settle_epochs=...)``; a DDP wrapper made before this
    call must be made again (``DataParallel.settle`` does that).
    """
    out = {}
    for name, d in model.named_modules():
        if not isinstance(d, DynamicWidth):
            continue
        d.frozen = True
        d.theta.requires_grad_(False)
        out[name] = d.hard_width
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise GraphError("the whole model cannot be wrapped; make_dynamic needs submodules")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _convert_transformers(model: nn.Module) -> None:
    """Convert free-standing batch-first ``nn.TransformerEncoderLayer`` s to the equal :class:`TransformerBlock`
    (so the model width can shrink: ``nn.MultiheadAttention`` ties its query width to ``embed_dim``).
    Layers inside an ``nn.TransformerEncoder`` (whose forward reads ``layers[0].self_attn``) stay as they
    are: there the attention is one layer of fixed width and the feed-forward width is dynamic."""
    inside = {id(layer) for m in model.modules() if isinstance(m, (nn.TransformerEncoder, nn.TransformerDecoder))
              for layer in m.layers}
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.TransformerEncoderLayer) and id(m) not in inside and m.self_attn.batch_first:
            _set(model, name, TransformerBlock.from_torch(m))


def _dcl_dim(kind: str) -> int:
    return -1 if kind in ("linear", "rnn", "emb", "mha") else 1


def _new_dcl(size: int, kind: str, bounds: dict[str, Any]) -> DynamicWidth:
    b = dict(bounds)
    if b.get("min_channels") is not None:
        b["min_channels"] = min(int(b["min_channels"]), size)
    k = b.get("kappa_min")
    if k is not None and 0 < k <= 1 and k * size < 1:  # never below one channel: floor 1
        b["kappa_min"], b["min_channels"] = None, 1
    return DynamicWidth(size, dim=_dcl_dim(kind), **b)


def _install_for(tr: Trace, producer: str, kind: str, dcl: DclRef) -> Install:
    """How ``dcl`` goes onto ``producer``'s output (after the BatchNorm that reads it, if any)."""
    if kind == "mha_heads":  # the head count of an nn.MultiheadAttention
        return Install("heads", producer, dcl, producer)
    if kind == "rnn":
        return Install("rnn", producer, dcl, producer)
    at = tr.bn_after.get(producer, producer)
    use = next((u for u in tr.uses if u.name == producer and u.out_group is not None), None)
    inner = use.extra.get("out_inner", 1) if use is not None and at == producer else 1
    outer = use.extra.get("out_outer", 1) if use is not None and at == producer else 1
    return Install("hook", at, dcl, producer, 1 if at != producer else _dcl_dim(kind), inner, outer)


def _holder_key(inst: Install) -> tuple[str, str]:
    """The trace's name for where an install puts its DCL (see ``Trace.dcl_slots``)."""
    return ("heads" if inst.how == "heads" else "host", inst.module)


def _apply(model: nn.Module, inst: Install, dcl: DynamicWidth) -> None:
    """Carry out one :class:`~slimtrain.core.plan.Install` with the DCL module ``dcl``, in place."""
    mod = model.get_submodule(inst.module)
    if inst.how == "heads":
        make_mha_dynamic(mod, dcl, inst.module)
    elif inst.how == "rnn":
        if isinstance(mod, DynamicRecurrent):  # built by hand: share the width
            mod.dcl = dcl
        else:
            make_rnn_dynamic(mod, dcl, inst.module)
    elif inst.how == "share":  # the hook (or forward) that applies it stays; only the width is shared
        mod._modules[DCL_CHILD] = dcl
    else:
        attach_dcl(mod, dcl, inst.dim, inst.module, inner=inst.inner, outer=inst.outer)


def _user_dcl_roots(tr: Trace) -> dict[int, str]:
    """Groups already masked by a DynamicWidth the user put in the model (not one slimtrain attached)."""
    out: dict[int, str] = {}
    for dname, g, _ in tr.dcl_claims:
        parent, _, attr = dname.rpartition(".")
        if attr == DCL_CHILD and parent:
            continue
        out.setdefault(tr.root(g), dname)
    return out


def _select(model: nn.Module, tr: Trace, layers: Optional[Iterable[Union[str, type]]], exclude: Iterable[str],
            strict: bool = False, refused: Optional[dict[str, tuple[str, str]]] = None
            ) -> tuple[list[tuple[str, str, int]], dict[int, tuple[str, str]]]:
    """``(chosen producers, {root: (category, reason)} for every width left fixed)``."""
    unsafe = _unsafe_roots(model, tr)
    for p, why in (refused or {}).items():  # found not to fit by an earlier round of plan_attachments
        for u in tr.uses:
            if u.name == p and u.out_group is not None:
                unsafe.setdefault(tr.root(u.out_group), why)
    user = _user_dcl_roots(tr)
    producers = [(u.name, u.kind, u.out_group) for u in tr.uses if u.out_group is not None]
    names = {p for p, _, _ in producers}
    excl = set(exclude)
    fixed: dict[int, tuple[str, str]] = {}
    # widths joined by a residual are one width: excluding one layer keeps all of them full
    for p, _, g in producers:
        if p in excl:
            fixed.setdefault(tr.root(g), ("excluded", f"'{p}' is in exclude"))
    excl |= {p for p, _, g in producers if tr.root(g) in fixed}
    chosen: list[tuple[str, str, int]] = []
    if layers is None:
        for p, k, g in producers:
            r = tr.root(g)
            if r in user:  # the user's own DynamicWidth already masks this width: it is the group's DCL
                continue
            if p in excl:
                continue
            if r in unsafe:
                fixed.setdefault(r, unsafe[r])
                continue
            chosen.append((p, k, tr.groups[g].size))
        if strict:
            bad = [why for cat, why in fixed.values() if cat == "unsupported"]
            if bad:
                raise GraphError("strict=True: these widths cannot be made dynamic: " + "; ".join(bad))
        return chosen, fixed
    wanted = list(layers)
    for w in wanted:
        if isinstance(w, str):
            if w not in names:
                raise GraphError(
                    f"'{w}' is not a supported layer of this model that ran in the sample pass "
                    f"(supported layers seen: {sorted(names)})"
                )
            chosen.extend((p, k, tr.groups[g].size) for p, k, g in producers if p == w)
        elif isinstance(w, type):
            chosen.extend((p, k, tr.groups[g].size) for p, k, g in producers
                          if p not in excl and isinstance(model.get_submodule(p), w))
        else:
            raise GraphError(f"layers must hold module names or types, got {w!r}")
    chosen = [c for c in chosen if c[0] not in excl]
    picked = {c[0] for c in chosen}
    for p, _, g in producers:
        r = tr.root(g)
        if r not in fixed and r not in user and p not in picked:
            fixed[r] = unsafe.get(r, ("not selected", f"'{p}' is not in layers"))
    return chosen, fixed


def _unsafe_roots(model: nn.Module, tr: Trace) -> dict[int, tuple[str, str]]:
    """Groups that cannot shrink, with ``(category, reason)``: model outputs, residuals with the input,
    unknown ops or layers, grouped convs. Category ``"unsupported"`` is what ``strict=True`` refuses."""
    bad: dict[int, tuple[str, str]] = {}

    def mark(g: int, cat: str, why: str) -> None:
        bad.setdefault(tr.root(g), (cat, why))

    prod = {}
    for gid, grp in tr.groups.items():
        prod.setdefault(tr.root(gid), []).extend(grp.producers)

    def who(g: int) -> str:
        return ", ".join(f"'{p}'" for p in prod.get(tr.root(g), [])) or "?"

    for t in tr.output_tags:
        if t is not None:
            for g in t.groups():
                mark(g, "model output", f"the width of {who(g)} is the model's output")
    for g, where in tr.loose_ties:
        mark(g, "structure", f"the width of {who(g)} is joined by {where}; that sum cannot shrink")
    for g, op in tr.opaque:
        mark(g, "unsupported", f"unsupported operation '{op}' on the width of {who(g)}")
    for pname, g, _, op in tr.param_uses:
        if pname in tr.param_reads:  # cut where it meets the width, but read whole by a layer: no exact cut
            mark(g, "structure", f"model parameter '{pname}' meets the width of {who(g)} in '{op}' and is read whole "
                 f"by layer '{tr.param_reads[pname]}'")
    kinds = {u.name: u.kind for u in tr.uses}
    for u in tr.uses:
        if u.kind == "mha" and u.out_group is not None:
            mark(u.out_group, "structure", f"output of nn.MultiheadAttention '{u.name}': its out_proj width is its "
                 "embed_dim, which is also its query width (kept; its head count can be dynamic)")
        if u.kind == "mha_heads":
            continue
        t = u.in_tag
        if t is None:
            continue
        nd = len(u.in_shape)
        if t.segs:  # a channel concatenation: Linear, plain conv and GRU/LSTM can read it
            want = {"linear": nd - 1, "rnn": nd - 1, "conv": 1}.get(u.kind)
            m = model.get_submodule(u.name) if u.kind == "conv" else None
            if want is None or t.dim != want or (m is not None and m.groups != 1):
                for g in t.groups():
                    mark(g, "unsupported", f"layer '{u.name}' ({u.kind}) reads a concatenation along the channel axis")
            if u.out_group is not None and u.kind == "conv" and m is not None and m.groups != 1:
                mark(u.out_group, "unsupported", f"grouped conv '{u.name}' (groups={m.groups}) reads a concatenation")
            continue
        want = {"linear": nd - 1, "rnn": nd - 1, "ln": nd - 1, "conv": 1, "bn": 1, "mha": nd - 1}.get(u.kind, -1)
        reshaped = (t.outer, t.inner) != (1, 1) and u.kind in ("bn", "conv", "ln", "mha")
        if u.kind == "mha":
            why = f"read by nn.MultiheadAttention '{u.name}', whose query/key/value width is its embed_dim"
            mark(t.group, "structure", why)
            for kt in u.extra.get("kv_tags", []):
                if kt is not None:
                    mark(kt.group, "structure", why)
        elif u.kind == "unknown":
            mark(t.group, "unsupported", f"read by unsupported layer '{u.name}' ({u.extra.get('type')})")
        elif t.dim is None:
            mark(t.group, "unsupported", f"unsupported operation '{t.op}' before layer '{u.name}'")
        elif t.dim != want:
            mark(t.group, "unsupported", f"layer '{u.name}' ({u.kind}) reads it on axis {t.dim}, not its channel axis {want}")
        elif reshaped:
            mark(t.group, "unsupported", f"layer '{u.name}' ({u.kind}) reads it reshaped")
        if u.kind == "bn" and (t.producer is None or tr.bn_after.get(t.producer) != u.name
                               or kinds.get(t.producer) == "rnn"):
            # no DCL can follow this BatchNorm: what it feeds would not be zeroed
            mark(t.group, "structure", f"BatchNorm '{u.name}' does not directly follow the layer that produces it")
        if u.kind in ("linear", "conv", "rnn", "bn", "ln", "emb") and u.name:
            from .weightnorm import weight_norm_issue

            lm = model.get_submodule(u.name)
            issue = weight_norm_issue(lm) if u.kind in ("linear", "conv") else ""
            if not issue and u.kind not in ("linear", "conv"):
                from torch.nn.utils import parametrize

                issue = "parametrized weights" if parametrize.is_parametrized(lm) else ""
            if issue:
                why = f"layer '{u.name}' has {issue}, which export cannot cut"
                mark(t.group, "unsupported", why)
                if u.out_group is not None:
                    mark(u.out_group, "unsupported", why)
        m = model.get_submodule(u.name) if u.kind == "conv" else None
        if isinstance(m, CONV_TYPES) and m.groups != 1 and u.out_group is not None:
            depthwise = m.groups == m.in_channels == m.out_channels
            if tr.root(t.group) != tr.root(u.out_group) or not depthwise:  # see the grouped-conv rule in _build
                why = f"grouped conv '{u.name}' (groups={m.groups}) cannot be cut" + (
                    "" if depthwise else " (only depthwise convs whose input and output share one width can)")
                mark(t.group, "unsupported", why)
                mark(u.out_group, "unsupported", why)
    return bad


def make_dynamic(
    model: nn.Module,
    sample: Any,
    layers: Optional[Iterable[Union[str, type]]] = None,
    *,
    kappa_min: Optional[float] = None,
    min_channels: Optional[int] = None,
    exclude: Iterable[str] = (),
    strict: bool = False,
    reorder: Optional[str] = None,
    heads: str = "count",
) -> nn.Module:
    """Give the chosen layers of ``model`` a learnable output width, in place.

    Args:
        model: any ``nn.Module`` built from Linear, Conv1d/2d, ConvTranspose1d/2d (also weight-normalised),
            GRU, LSTM, BatchNorm, LayerNorm, PReLU, ``nn.MultiheadAttention`` (its head count),
            ``nn.TransformerEncoderLayer`` (converted to :class:`~slimtrain.core.modules.TransformerBlock`),
            :class:`~slimtrain.audio.frontend.MelFrontend` and functional glue (activations, pooling, reshapes,
            residual adds).
        sample: an input batch (a tensor, or a tuple of positional inputs).
        layers: module names or types whose output width becomes dynamic;
            default: every supported layer whose output is not the model output.
        kappa_min: lower bound on the relative width K/N (the paper sweeps
            0.5, 0.25, 0.125, 0.0625); or ``min_channels`` as an absolute bound.
        exclude: module names to leave at full width.
        strict: refuse (``GraphError`` naming the op/layer and module path) instead of leaving a
            width fixed because something on it is unsupported (unknown op or layer, grouped conv).
        reorder: ``"magnitude"`` (or ``"taylor"`` via :func:`slimtrain.reorder_channels` with
            batches) first permutes a trained model's channels, most important first, without
            changing its outputs, so that the DCLs' "keep the first K" keeps the important ones.
        heads: what an attention projection viewed as ``(heads, head_dim)`` learns: ``"count"`` (whole
            heads) or ``"width"`` (dimensions per head, the same in every head; the query and key widths
            are one width because ``q @ k^T`` contracts them). ``"width"`` needs the view to compute
            ``head_dim`` (``view(b, t, heads, -1)``) and an attention scale that does not read the
            head size at run time (a constant, as in :class:`~slimtrain.core.modules.TransformerBlock`).

    Returns the same model. Widths joined by residual adds share one DCL. A width that
    cannot shrink stays fixed; :func:`slimtrain.width_report` lists every width, dynamic
    or fixed and why. A ``DynamicWidth`` the user inserted is recognised as its width's DCL.
    """
    if kappa_min is not None and min_channels is not None:
        raise GraphError("give either kappa_min or min_channels, not both")
    reject_compiled_wrapper(model)
    if model.__dict__.get(_ATTR) is not None:
        raise GraphError("make_dynamic was already applied to this model")
    if heads not in HEAD_MODES:
        raise GraphError(f"heads must be 'count' or 'width', got {heads!r}")
    if reorder is not None:
        if reorder != "magnitude":
            raise GraphError(f"reorder must be 'magnitude' (or call slimtrain.reorder_channels(model, sample, "
                             f"score='taylor', batches=..., loss_fn=...) first), got {reorder!r}")
        from .reorder import reorder_channels

        reorder_channels(model, sample, score="magnitude")
    bounds = {"kappa_min": kappa_min, "min_channels": min_channels}
    # undo every change if anything below raises, so a corrected call can follow
    children = [(m, dict(m._modules)) for m in model.modules()]
    bound = [(m, getattr(m, "_width_source", None)) for m in model.modules() if isinstance(m, MaskedLayerNorm)]

    def rollback() -> None:
        detach_all(model)
        for m, mods in children:
            m._modules.clear()
            m._modules.update(mods)
        for m, src in bound:
            m.bind(src)

    try:
        _convert_transformers(model)
        tr = trace_channels(model, sample, extended=True, heads=heads)  # the one trace (see AttachPlan.retrace)
        plan = plan_attachments(model, tr, layers, exclude=exclude, strict=strict, bounds=bounds, batch=_batch(sample))
        attach(model, plan)
        graph = build_graph(model, tr, plan)
        graph.__dict__["_sample"] = _detached(sample)  # export runs it through the cut model
        model.__dict__[_ATTR] = graph
        model.__dict__[_PLAN_ATTR] = _plan(model, tr, plan.fixed, graph.dcls)
        install_state_dict_hook(model)
        if not model.__dict__.pop(_PROBE, False):
            # torch.compile does not guard on module hooks (``skip_nnmodule_hook_guards``): a graph compiled
            # from this model before would keep running without the widths just attached
            torch.compiler.reset()
    except BaseException:
        rollback()
        raise
    return model


#: what an attention projection split into heads can learn (``make_dynamic(..., heads=)``)
HEAD_MODES = ("count", "width")

_PROBE = "_slimtrain_plan_probe"  # set by plan_widths on its private copy


def _is_compiled_wrapper(model: nn.Module) -> bool:
    """True for the module ``torch.compile(model)`` returns (it holds the original as ``_orig_mod``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(model, OptimizedModule)


def _batch(sample: Any) -> int:
    """The batch size of ``sample`` (its first tensor's first axis)."""
    first = _tensors(sample)
    if not first or first[0].dim() == 0:
        raise GraphError("sample must be a batch tensor (or a tuple of inputs whose first is one)")
    return int(first[0].shape[0])


def plan_attachments(model: nn.Module, tr: Trace, layers: Optional[Iterable[Union[str, type]]] = None, *,
                     exclude: Iterable[str] = (), strict: bool = False, bounds: Optional[dict[str, Any]] = None,
                     batch: int = 1) -> AttachPlan:
    """Stage 2 of :func:`make_dynamic`: every decision, from the trace ``tr`` of ``model`` alone, as plain data.

    Chooses the widths (``layers``/``exclude``/``strict`` as in :func:`make_dynamic`), places their DCLs, gives
    widths joined by residual adds one DCL and binds LayerNorms, then checks the graph. A chosen width that does
    not fit (an unsupported op on it, a BatchNorm between its DCL and a reader...) is left fixed with that
    reason and the plan made again from the same trace, until every check passes; with ``layers`` given,
    ``strict`` and an unsupported width, or a user's DCL involved, it is a :class:`GraphError` instead.
    ``model`` is read, never changed.
    """
    exclude = tuple(exclude)
    refused: dict[str, tuple[str, str]] = {}
    while True:  # each round leaves at least one more layer's width fixed, or raises
        chosen, fixed = _select(model, tr, layers, exclude, strict, refused)
        if not chosen and not _user_dcl_roots(tr):
            plan = _plan(model, tr, fixed, {})
            raise GraphError("no layer to make dynamic: the model has no supported hidden layer (or all were "
                             f"excluded)\n{plan}")
        att = _Attachments(model, tr)
        att.settle(chosen)
        found = _check_and_build(model, tr, att.dcls(), att.on, batch)
        if isinstance(found, WidthGraph):
            return att.plan(fixed, refused, bounds or {}, batch)
        user = [d for d in found.dcls if d.rpartition(".")[2] != DCL_CHILD]
        if layers is not None or (strict and found.category == "unsupported") or user or not found.producers \
                or all(p in refused for p in found.producers):
            raise GraphError(found.message)
        for p in found.producers:  # leave that width fixed and plan again
            refused.setdefault(p, (found.category, found.message))


def attach(model: nn.Module, plan: AttachPlan) -> None:
    """Stage 3 of :func:`make_dynamic`: carry ``plan`` out on ``model``, in place.

    Creates the plan's new DCLs, installs each (a forward hook, a GRU/LSTM or attention forward, a shared
    ``dcl`` child) and binds the LayerNorms. Raises :class:`GraphError` if a module cannot take its DCL
    (``make_dynamic`` then undoes every change)."""
    # in the model's mode (as ``model.train(model.training)`` would set them; trace_channels ends with that)
    made = [_new_dcl(size, kind, plan.bounds).train(model.training) for size, kind in plan.new]
    own = {ref: model.get_submodule(ref) for ref in
           {i.dcl for i in plan.installs} | {r for _, r in plan.layer_norms} if isinstance(ref, str)}

    def dcl(ref: DclRef) -> DynamicWidth:
        return made[ref] if isinstance(ref, int) else own[ref]  # type: ignore[return-value]

    for inst in plan.installs:
        _apply(model, inst, dcl(inst.dcl))
    for name, ref in plan.layer_norms:
        ln = model.get_submodule(name)
        if isinstance(ln, MaskedLayerNorm):
            ln.bind(dcl(ref))
        else:
            bind_layer_norm(ln, dcl(ref))  # type: ignore[arg-type]


def build_graph(model: nn.Module, tr: Trace, plan: AttachPlan) -> WidthGraph:
    """Stage 4 of :func:`make_dynamic`: the :class:`WidthGraph` of ``plan`` (every traced layer with the dynamic
    width on each side, the fixed MACs between layers), which the cost model and :func:`slimtrain.export` read.
    ``model`` is read, never changed; the graph keeps ``plan``."""
    graph = _check_and_build(model, tr, plan.dcls, plan.attached.__contains__, plan.batch)
    if not isinstance(graph, WidthGraph):  # pragma: no cover - plan_attachments returns only plans that build
        raise GraphError(f"the width plan does not hold for this trace: {graph.message}")
    graph.plan = plan
    return graph


def _detached(sample: Any) -> Any:
    if isinstance(sample, torch.Tensor):
        return sample.detach()
    if isinstance(sample, (tuple, list)):
        return type(sample)(_detached(t) for t in sample)
    return sample


def _plan(model: nn.Module, tr: Trace, fixed: dict[int, tuple[str, str]], dcls: dict[int, str]) -> WidthPlan:
    """The report of every width of the trace (``fixed`` reasons keyed by its roots, matched through the
    producers' names)."""
    by_producer: dict[str, tuple[str, str]] = {}
    first_roots: dict[int, list[str]] = {}
    for gid, grp in tr.groups.items():
        first_roots.setdefault(tr.root(gid), []).extend(grp.producers)
    for r, why in fixed.items():
        for p in first_roots.get(r, []):
            by_producer.setdefault(p, why)
    readers: dict[int, list[str]] = {}
    for u in tr.uses:
        if u.in_tag is not None and u.kind != "dcl":
            lst = readers.setdefault(tr.root(u.in_tag.group), [])
            if u.name not in lst:
                lst.append(u.name)
    user = _user_dcl_roots(tr)
    unit: dict[int, str] = {}  # what a channel of a split attention width is
    for gid in tr.group_inner:
        unit[tr.root(gid)] = "heads"
    for gid, h in tr.group_outer.items():
        unit[tr.root(gid)] = f"per head, {h} heads"
    for u in tr.uses:
        if u.kind == "mha_heads" and u.out_group is not None:
            unit[tr.root(u.out_group)] = "heads"
    entries = []
    for r, producers in first_roots.items():
        size = tr.groups[r].size
        if r in dcls:
            d = model.get_submodule(dcls[r])
            entries.append(WidthEntry(producers, size, True, dcls[r], float(d.min_width), float(d.max_width),
                                      readers=readers.get(r, []), user_dcl=r in user, unit=unit.get(r, "")))
        else:
            # a module with two widths (an attention's output and its heads) has its reason under its own root
            own = fixed.get(r) if unit.get(r) == "heads" else None
            cat, why = own or next((by_producer[p] for p in producers if p in by_producer), ("not selected", "not chosen"))
            entries.append(WidthEntry(producers, size, False, reason=why, category=cat, readers=readers.get(r, []),
                                      unit=unit.get(r, "")))
    return WidthPlan(entries)


def plan_widths(model: nn.Module, sample: Any, layers: Optional[Iterable[Union[str, type]]] = None,
                **kwargs: Any) -> WidthPlan:
    """The :class:`~slimtrain.core.plan.WidthPlan` ``make_dynamic(model, sample, ...)`` would make; ``model`` is not changed."""
    from .weightnorm import deepcopy_model

    probe = deepcopy_model(model)
    probe.__dict__[_PROBE] = True  # a fresh copy: no graph compiled from it can be stale, so no cache reset
    make_dynamic(probe, sample, layers, **kwargs)
    return probe.__dict__[_PLAN_ATTR]


class _Attachments:
    """Where each DCL of a selection goes, worked out on the trace's data (``model`` is only read).

    It finds what attaching the chosen DCLs and re-tracing would: the DCLs of widths joined by a residual
    become one (the first in the forward pass), every producer of a dynamic width gets that DCL (after its
    BatchNorm), LayerNorms over a dynamic width are bound to its DCL. The trace's ``dcl_slots`` say which DCL
    each attachment makes visible where; it repeats until nothing changes."""

    def __init__(self, model: nn.Module, tr: Trace) -> None:
        self.model, self.tr = model, tr
        self._own = {id(m): n for n, m in model.named_modules() if isinstance(m, DynamicWidth)}
        self.kinds = {u.name: u.kind for u in tr.uses}
        self.state: dict[tuple[str, str], DclRef] = {}  # DCL holder (see Trace.dcl_slots) -> its DCL
        for name, _, _, cond, holder in tr.dcl_slots:
            if cond.now:  # a DCL the model holds already
                self.state.setdefault(holder, self._own_ref(name))
        self.initial = dict(self.state)
        self.wrapped: dict[tuple[str, str], Install] = {}  # holders given a DCL here (the first install)
        self.new: list[tuple[int, str]] = []
        self.lns: dict[str, DclRef] = {}

    def _own_ref(self, path: str) -> DclRef:
        try:
            return self._own.get(id(self.model.get_submodule(path)), path)
        except AttributeError:
            return path

    def on(self, cond: Any) -> bool:
        """Whether an attachment condition (see :class:`~slimtrain.core.trace.Masked`) is met."""
        return cond[1] in self.lns if cond[0] == "ln" else cond in self.state

    def claims(self) -> list[tuple[str, int, Optional[str], tuple[str, str]]]:
        """The trace's claims once these attachments are made: (DCL name, group, producer, holder)."""
        return [(n, g, p, h) for n, g, p, cond, h in self.tr.dcl_slots if cond.holds(self.on)]

    def dcls(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for name, g, _, _ in self.claims():
            out.setdefault(self.tr.root(g), name)
        return out

    def wrap(self, producer: str, kind: str, ref: DclRef) -> None:
        inst = _install_for(self.tr, producer, kind, ref)
        key = _holder_key(inst)
        if inst.how == "hook" and key in self.state:
            raise GraphError(f"'{inst.module}' already has a dynamic width")
        self.state[key] = ref
        self.wrapped.setdefault(key, inst)

    def settle(self, chosen: list[tuple[str, str, int]]) -> None:
        """A new DCL on each chosen producer, then the ties until nothing changes."""
        for producer, kind, size in chosen:
            self.new.append((size, kind))
            self.wrap(producer, kind, len(self.new) - 1)
        for _ in range(10):
            if not self._tie():
                return
        raise GraphError("could not settle the residual ties of this model")  # pragma: no cover

    def _ours(self, name: str, holder: tuple[str, str]) -> bool:
        """The DCL at ``holder`` may be replaced by a tied width's (slimtrain's, or a wrapper's child)."""
        if holder[0] != "module":
            return True
        parent, _, attr = name.rpartition(".")
        if attr != DCL_CHILD or not parent:
            return False
        return ("host", parent) in self.state or ("heads", parent) in self.state \
            or isinstance(self.model.get_submodule(parent), (DynamicOutput, DynamicRecurrent))

    def _tie(self) -> bool:
        """Share one DCL per tied group, give every producer of a dynamic group it, bind LayerNorms. True if changed."""
        tr = self.tr
        canon: dict[int, tuple[str, tuple[str, str]]] = {}
        masked: dict[int, set[Optional[str]]] = {}
        changed = False
        for name, g, producer, holder in self.claims():
            r = tr.root(g)
            masked.setdefault(r, set()).add(producer)
            if r not in canon:
                canon[r] = (name, holder)
                continue
            keep = self.state[canon[r][1]]
            if self.state[holder] == keep:
                continue
            if not self._ours(name, holder):
                raise GraphError(
                    f"the DynamicWidth modules '{canon[r][0]}' and '{name}' sit on widths joined by a "
                    "residual connection; use one module for both"
                )
            self.state[holder] = keep  # the hook keeps its own axis; only the width is shared
            changed = True
        for gid, grp in tr.groups.items():
            r = tr.root(gid)
            if r not in canon:
                continue
            for p in grp.producers:
                if p not in masked[r]:
                    self.wrap(p, self.kinds[p], self.state[canon[r][1]])
                    masked[r].add(p)
                    changed = True
        for u in tr.uses:
            if u.kind == "ln" and u.in_tag is not None and u.in_tag.dim is not None and not u.in_tag.segs \
                    and tr.root(u.in_tag.group) in canon:
                ln = self.model.get_submodule(u.name)
                ref = self.state[canon[tr.root(u.in_tag.group)][1]]
                if len(ln.normalized_shape) != 1:
                    raise GraphError(f"LayerNorm '{u.name}' normalises over several axes; only the last axis can be dynamic")
                bound = bound_width(ln)
                if self.lns.get(u.name, self._own.get(id(bound)) if bound is not None else None) != ref:
                    self.lns[u.name] = ref
                    changed = True
        return changed

    def plan(self, fixed: dict[int, tuple[str, str]], refused: dict[str, tuple[str, str]], bounds: dict[str, Any],
             batch: int) -> AttachPlan:
        dcls = self.dcls()
        tied: dict[int, list[str]] = {}
        for gid, grp in self.tr.groups.items():
            if self.tr.root(gid) in dcls:
                tied.setdefault(self.tr.root(gid), []).extend(p for p in grp.producers
                                                               if p not in tied.get(self.tr.root(gid), []))
        installs = []
        for key, ref in self.state.items():
            if key in self.wrapped:
                installs.append(replace(self.wrapped[key], dcl=ref))
            elif ref != self.initial.get(key):  # a DCL the model holds, replaced by its tied width's
                installs.append(Install("share", key[1].rpartition(".")[0] if key[0] == "module" else key[1], ref))
        attached = frozenset(self.state) | frozenset(("ln", n) for n in self.lns)
        return AttachPlan(dcls, {r: tuple(ps) for r, ps in tied.items()}, tuple(self.new),
                          {k: v for k, v in bounds.items() if v is not None},
                          tuple(installs), tuple(self.lns.items()), dict(fixed), dict(refused), attached, batch)


@dataclass
class _Refusal:
    """A chosen width turned out not to fit (``producers``); the default selection leaves it fixed."""

    message: str
    producers: list[str]
    category: str
    dcls: list[str]


def _build(model: nn.Module, tr: Trace, batch: int) -> WidthGraph:
    """The :class:`WidthGraph` of the DCLs ``tr`` saw (none on a plain model: every width fixed)."""
    dcls: dict[int, str] = {}
    for dname, g, _ in tr.dcl_claims:
        dcls.setdefault(tr.root(g), dname)
    graph = _check_and_build(model, tr, dcls, lambda cond: False, batch)
    if not isinstance(graph, WidthGraph):
        raise GraphError(graph.message)
    return graph


def _check_and_build(model: nn.Module, tr: Trace, dcls: dict[int, str], on: Callable[[Any], bool],
                     batch: int) -> Union[WidthGraph, _Refusal]:
    """The graph with the dynamic widths ``dcls`` (the attachment conditions ``on`` met), or the first
    :class:`_Refusal` found: a dynamic width that does not fit."""
    dyn = set(dcls)

    def shown(name: str) -> str:  # the user's module path, not the wrapper's inner one
        parent, _, attr = name.rpartition(".")
        if attr == "module" and isinstance(model.get_submodule(parent), DynamicOutput):
            return parent
        return name

    def refuse(category: str, roots: list, msg: str) -> _Refusal:
        names = [shown(p) for r in roots if r is not None
                 for gid, grp in tr.groups.items() if tr.root(gid) == r for p in grp.producers]
        return _Refusal(msg, names, category, [dcls[r] for r in roots if r is not None and r in dcls])

    def prod_names(root: int) -> str:
        ps = [shown(p) for gid, grp in tr.groups.items() if tr.root(gid) == root for p in grp.producers]
        return ", ".join(f"'{p}'" for p in ps) or "?"

    for g, where in tr.loose_ties:
        if tr.root(g) in dyn:
            return refuse("structure", [tr.root(g)],
                f"the dynamic width of {prod_names(tr.root(g))} is joined by {where} (e.g. the model input "
                "in a residual); that sum cannot shrink. Exclude those layers or give the shortcut a layer."
            )
    for g, op in tr.opaque:
        if tr.root(g) in dyn:
            return refuse("unsupported", [tr.root(g)],
                f"operation '{op}' on the dynamic width of {prod_names(tr.root(g))} is not supported "
                "(supported: elementwise activations, dropout, pooling, reshape/flatten, transpose, residual add)"
            )
    for g, masked, op in tr.contractions:
        if tr.root(g) in dyn and not masked.holds(on):
            return refuse("unsupported", [tr.root(g)],
                f"'{op}' contracts the width of {prod_names(tr.root(g))} where the channels outside the "
                "width are not zero (an operation between the projection and the product changes them)"
            )
    for t in tr.output_tags:
        if t is not None and t.segs and any(tr.root(g) in dyn for g in t.groups()):
            return refuse("model output", [tr.root(g) for g in t.groups()], "a concatenation of dynamic widths "
                         f"({', '.join(prod_names(tr.root(g)) for g in t.groups())}) is the model's output")
        if t is not None and tr.root(t.group) in dyn:
            return refuse("model output", [tr.root(t.group)],
                f"the output width of {prod_names(tr.root(t.group))} is the model's output; it cannot be dynamic "
                "(exclude that layer)"
            )
    layers: list[LayerSpec] = []
    for u in tr.uses:
        tag: Optional[Tag] = u.in_tag
        if tag is not None and tag.segs:  # a concatenation along the channel axis: one block per width
            segs = [(tr.root(g) if g >= 0 and tr.root(g) in dyn else None, n) for g, n in tag.segs]
            bad = [r for r, _ in segs if r is not None]
            if bad and u.kind not in ("linear", "conv", "rnn"):
                return refuse("unsupported", bad, f"layer '{shown(u.name)}' ({u.kind}) reads a concatenation of "
                             "dynamic widths along the channel axis; Linear, conv and GRU/LSTM can")
            if bad and not tag.masked.holds(on):
                return refuse("structure", bad, f"layer '{shown(u.name)}' reads a concatenation whose cut channels "
                             "are not zero")
            if u.kind in ("linear", "conv", "rnn"):
                out_root = tr.root(u.out_group) if u.out_group is not None and tr.root(u.out_group) in dyn else None
                extra = dict(u.extra, in_segs=segs)
                layers.append(LayerSpec(u.name, u.kind, None, sum(n for _, n in segs), 1, 1, out_root,
                                        tr.groups[u.out_group].size if u.out_group is not None else 0,
                                        u.in_shape, u.out_shape, extra))
                continue
            tag = None
        in_root = tr.root(tag.group) if tag is not None and tr.root(tag.group) in dyn else None
        if in_root is not None:
            assert tag is not None
            src = prod_names(in_root)
            if u.kind == "unknown":
                return refuse("unsupported", [in_root],
                    f"unsupported layer '{shown(u.name)}' ({u.extra.get('type')}) reads the dynamic width of {src}; "
                    "supported: Linear, Conv1d, Conv2d, GRU, LSTM, BatchNorm1d/2d, LayerNorm, TransformerBlock"
                )
            if tag.dim is None:
                return refuse("unsupported", [in_root],
                    f"operation '{tag.op}' between {src} and layer '{shown(u.name)}' is not supported on a dynamic "
                    "width (supported: elementwise activations, dropout, pooling, reshape/flatten, transpose, "
                    "residual add)"
                )
            nd = len(u.in_shape)
            want = {"linear": nd - 1, "rnn": nd - 1, "ln": nd - 1, "conv": 1, "bn": 1, "dcl": tag.dim}.get(u.kind)
            if want is not None and tag.dim != want:
                return refuse("unsupported", [in_root],
                    f"layer '{shown(u.name)}' reads the dynamic width of {src} on axis {tag.dim}, but its channel axis is {want}"
                )
            if u.kind in ("bn", "conv", "ln") and (tag.outer, tag.inner) != (1, 1):
                return refuse("unsupported", [in_root], f"layer '{shown(u.name)}' reads a reshaped dynamic width of {src}; only Linear layers can")
            if u.kind in ("linear", "conv", "rnn") and not tag.masked.holds(on):
                if tag.op:
                    return refuse("unsupported", [in_root],
                                 f"operation '{tag.op}' on the width of {src} before layer '{shown(u.name)}' makes "
                                 "the channels outside the width non-zero (supported: ops that keep zero at zero)")
                return refuse("structure", [in_root],
                    f"layer '{shown(u.name)}' reads the width of {src} after a BatchNorm that follows its dynamic width; "
                    "put the BatchNorm right after the layer (layer -> BatchNorm -> activation) so cut channels stay zero"
                )
        out_root = tr.root(u.out_group) if u.out_group is not None and tr.root(u.out_group) in dyn else None
        if u.kind in ("bn", "ln") and in_root is not None:
            out_root = in_root
        mod = model.get_submodule(u.name)
        extra = dict(u.extra)
        if u.kind == "conv":
            c = mod
            if c.groups != 1 and (in_root is not None or out_root is not None):
                if not (c.groups == c.in_channels == c.out_channels and in_root == out_root):
                    return refuse("unsupported", [in_root, out_root],
                        f"grouped conv '{shown(u.name)}' (groups={c.groups}) can only be dynamic as a depthwise conv "
                        "whose input and output share one width"
                    )
        if u.kind == "mha" and (in_root is not None or out_root is not None):
            return refuse("structure", [in_root, out_root], f"nn.MultiheadAttention '{shown(u.name)}' keeps its embed_dim: its input and output "
                             "widths cannot be dynamic")
        out_size = tr.groups[u.out_group].size if u.out_group is not None else 0
        if u.kind == "mha":  # the layer's dynamic side is its head count
            hg = u.extra["heads_group"]
            out_root = tr.root(hg) if tr.root(hg) in dyn else None
            out_size = tr.groups[hg].size
        if u.kind == "rnn" and isinstance(mod, DynamicRecurrent) and out_root is None:
            out_root = tr.root(u.out_group) if u.out_group is not None else None
        in_size = tr.groups[tag.group].size if tag is not None and in_root is not None else 0
        if u.kind not in ("dcl", "unknown", "mha_heads"):
            layers.append(LayerSpec(u.name, u.kind, in_root, in_size, tag.outer if in_root is not None else 1,
                                    tag.inner if in_root is not None else 1, out_root, out_size,
                                    u.in_shape, u.out_shape, extra))
    fixed_macs = tr.fixed_macs
    for i, (macs, g) in enumerate(tr.prods):  # attention products: linear in the head count
        r = tr.root(g)
        if r in dyn:
            layers.append(LayerSpec(f"<product {i}>", "prod", r, tr.groups[g].size, 1, 1, None, 0, (), (), {"macs": macs}))
        else:
            fixed_macs += macs
    owners = {s.name for s in layers}
    seen: set[str] = set()
    for pname, g, axis, _ in tr.param_uses:  # learned scales, biases, class tokens, position embeddings
        r = tr.root(g)
        if r in dyn and pname not in seen and pname.rpartition(".")[0] not in owners:
            seen.add(pname)
            layers.append(LayerSpec(pname, "param", r, tr.groups[g].size, 1, 1, None, 0, (), (), {"axis": axis}))
    return WidthGraph(dcls, layers, fixed_macs, batch)
