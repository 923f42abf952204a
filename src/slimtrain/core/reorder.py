"""Reorder the channels of a trained model by importance, without changing what it computes.

A DCL keeps the *first* ``K`` channels of a width. In a freshly initialised model the order
does not matter; in a trained one it does, since channels have no order and "keep the first K"
would drop important ones. :func:`reorder_channels` permutes, in place, the output channels of
every producer of a width and the matching input channels of every layer that reads it, so that
channel 0 is the most important. The model computes the same function afterwards (up to float
rounding), and :func:`slimtrain.make_dynamic` then keeps the most important channels::

    slimtrain.reorder_channels(model, sample, score="magnitude")
    slimtrain.make_dynamic(model, sample, kappa_min=0.25)

The channel flow comes from :func:`slimtrain.core.trace.trace_channels`. One permutation is used for
every member of a tied group (residual adds), for the input and output of a depthwise conv, and
for every call of a layer that runs more than once. Widths that cannot be permuted consistently
are left alone and reported with the reason: model outputs, widths added to a tensor no layer
produced (e.g. the model input), widths that pass through an operation the tracer marks opaque
(attention products, concatenation, softmax, indexing the channel axis...), widths read by an
unknown layer or on an unexpected axis, and general grouped convs.

By default the result is checked on ``sample`` (eval mode): if the output changed (an operation
the tracer cannot see, such as a per-channel parameter multiplied in ``forward``), the widths are
retried one at a time and those that change the output are restored and reported.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from .trace import Trace, _tensors, is_transposed_linear, trace_channels

__all__ = ["reorder_channels", "channel_scores", "ReorderError", "ReorderReport", "SCORES"]

SCORES = ("magnitude", "taylor")


class ReorderError(ValueError):
    """Channels cannot be reordered as asked (names the model part or argument)."""


@dataclass
class ReorderReport:
    """What :func:`reorder_channels` did.

    ``permutations`` maps a width (its producer layers, comma-separated) to the permutation
    applied (new channel ``i`` is old channel ``perm[i]``); ``scores`` to the importance of each
    channel in the *new* order (descending); ``left_alone`` to the reason a width was not touched.
    """

    permutations: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    left_alone: dict[str, str] = field(default_factory=dict)
    max_output_change: float = 0.0


# ------------------------------------------------------------------------------ the width plan
class _Union:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, g: int) -> int:
        while self.parent.get(g, g) != g:
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Width:
    """A set of groups that must share one permutation."""

    root: int
    size: int
    producers: list[tuple[str, str]] = field(default_factory=list)  # (layer name, kind)
    readers: list[tuple[str, str, int, int]] = field(default_factory=list)  # (name, kind, outer, inner)
    slopes: list[str] = field(default_factory=list)  # per-channel PReLU slopes the width passes through
    bad: Optional[str] = None

    def label(self) -> str:
        return ", ".join(dict.fromkeys(p for p, _ in self.producers)) or f"group {self.root}"


def _plan(model: nn.Module, tr: Trace) -> dict[int, _Width]:
    """Group the traced widths into permutation units and mark those that cannot be permuted."""
    from .modules import DynamicOutput, DynamicRecurrent

    if any(u.kind == "dcl" for u in tr.uses) or tr.dcl_claims or any(
            isinstance(m, (DynamicOutput, DynamicRecurrent)) for m in model.modules()):
        raise ReorderError("reorder_channels must run before make_dynamic (this model already has dynamic widths)")
    uf = _Union()
    for a, b, _ in tr.ties:
        uf.union(a, b)
    outs: dict[str, list[int]] = {}
    ins: dict[str, list[int]] = {}
    fixed_input: set[str] = set()  # layers called at least once on an input that is no traced width
    for u in tr.uses:
        if u.in_tag is None:
            fixed_input.add(u.name)
        if u.out_group is not None:
            outs.setdefault(u.name, []).append(u.out_group)
        if u.in_tag is not None:
            ins.setdefault(u.name, []).append(u.in_tag.group)
        m = model.get_submodule(u.name) if u.kind == "conv" else None
        if m is not None and m.groups > 1 and m.groups == m.in_channels == m.out_channels and u.in_tag is not None:
            uf.union(u.in_tag.group, u.out_group)  # depthwise: channel c in is channel c out
    for gs in list(outs.values()) + list(ins.values()):  # a layer called twice: one permutation
        for g in gs[1:]:
            uf.union(gs[0], g)
    widths: dict[int, _Width] = {}
    for gid, grp in tr.groups.items():
        r = uf.find(gid)
        w = widths.setdefault(r, _Width(r, grp.size))
        if w.size != grp.size:  # pragma: no cover - ties are between equal shapes
            w.bad = "tied widths of different sizes"
    for u in tr.uses:
        if u.out_group is not None:
            widths[uf.find(u.out_group)].producers.append((u.name, u.kind))

    def mark(g: int, why: str) -> None:
        w = widths.get(uf.find(g))
        if w is not None and w.bad is None:
            w.bad = why

    for t in tr.output_tags:
        if t is not None:
            mark(t.group, "it is the model output")
    for g, where in tr.loose_ties:
        mark(g, f"it is joined by {where}")
    for g, op in tr.opaque:
        mark(g, f"it passes through '{op}', which the tracer cannot follow")
    for pname, g, _, op in tr.param_uses:
        if op == "prelu":  # a slope per channel: permuted with the width
            w = widths.get(uf.find(g))
            if w is not None and pname not in w.slopes:
                w.slopes.append(pname)
    for u in tr.uses:
        t = u.in_tag
        if t is None:
            continue
        r = uf.find(t.group)
        if t.dim is None:
            mark(t.group, f"'{t.op}' before layer '{u.name}' hides its channels")
            continue
        nd = len(u.in_shape)
        want = {"linear": nd - 1, "rnn": nd - 1, "ln": nd - 1, "conv": 1, "bn": 1}.get(u.kind)
        if want is None:
            mark(t.group, f"layer '{u.name}' ({u.extra.get('type', u.kind)}) reads it and cannot be permuted")
            continue
        if t.dim != want:
            mark(t.group, f"layer '{u.name}' reads it on axis {t.dim}, not on its channel axis {want}")
            continue
        if u.kind in ("conv", "bn", "ln") and (t.outer, t.inner) != (1, 1):
            mark(t.group, f"layer '{u.name}' reads it reshaped")
            continue
        m = model.get_submodule(u.name)
        if u.name in fixed_input:
            mark(t.group, f"layer '{u.name}' is also called on an input whose channels cannot be permuted")
            continue
        odd = _odd_parameters(m, u.kind)
        if odd:
            mark(t.group, f"layer '{u.name}' has parameters {odd} that reordering does not know")
            continue
        if is_transposed_linear(m):
            mark(t.group, f"layer '{u.name}' is a transposed Linear (weight in x out), which reordering does not permute")
            continue
        if u.kind == "ln" and len(m.normalized_shape) != 1:
            mark(t.group, f"LayerNorm '{u.name}' normalises over several axes")
            continue
        if u.kind == "conv" and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            mark(t.group, f"grouped conv '{u.name}' (groups={m.groups}) mixes channels within groups")
            mark(u.out_group, f"grouped conv '{u.name}' (groups={m.groups}) mixes channels within groups")
            continue
        if u.kind == "rnn" and getattr(m, "proj_size", 0):
            mark(t.group, f"LSTM '{u.name}' has proj_size")
            continue
        widths[r].readers.append((u.name, u.kind, t.outer, t.inner))
    for u in tr.uses:
        if u.out_group is None:
            continue
        m = model.get_submodule(u.name)
        if u.kind == "rnn" and getattr(_rnn_of(m), "proj_size", 0):
            mark(u.out_group, f"LSTM '{u.name}' has proj_size")
        if is_transposed_linear(m):
            mark(u.out_group, f"layer '{u.name}' is a transposed Linear (weight in x out), which reordering does not permute")
        if u.kind == "conv" and m.groups > 1 and m.groups == m.in_channels == m.out_channels and u.name in fixed_input:
            # channel c out reads channel c in: its input (no traced width, e.g. an unknown layer's output) would
            # have to be permuted too
            mark(u.out_group, f"depthwise conv '{u.name}' reads an input whose channels cannot be permuted")
        odd = _odd_parameters(m, u.kind)
        if odd:
            mark(u.out_group, f"layer '{u.name}' has parameters {odd} that reordering does not know")
    for w in widths.values():
        w.readers = list(dict.fromkeys(w.readers))
        w.producers = list(dict.fromkeys(w.producers))
        names = [name for name, *_ in w.readers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if w.bad is None and twice:  # one weight cannot take two different column permutations
            w.bad = f"layer(s) {twice} read it with different flatten layouts"
        if w.bad is None and not w.readers:
            w.bad = "no layer reads it"
    return widths


_KNOWN_PARAMS = {"linear": ("weight", "bias"), "conv": ("weight", "bias"), "bn": ("weight", "bias"),
                 "ln": ("weight", "bias"), "mel": (), "rnn": ("weight_", "bias_")}


def _odd_parameters(m: nn.Module, kind: str) -> list[str]:
    """Parameters of a layer that a permutation of its known weights would miss (e.g. weight norm)."""
    from torch.nn.utils import parametrize

    from .weightnorm import weight_norm_issue, weight_norm_params

    if kind == "mel":
        return []
    if kind == "conv" and getattr(m, "transposed", False):
        return ["the weight of a transposed conv (its axes are (in, out))"]
    r = _rnn_of(m) if kind == "rnn" else m
    normed = weight_norm_params(r) if kind in ("linear", "conv") and not weight_norm_issue(r) else ()
    if parametrize.is_parametrized(r) and not normed:
        return [f"parametrized {n}" for n in r.parametrizations.keys()]
    known = _KNOWN_PARAMS.get(kind, ()) + normed  # a weight norm's g and v are permuted like the weight
    if kind == "rnn":
        return [n for n, _ in r.named_parameters(recurse=False) if not n.startswith(known)]
    return [n for n, _ in r.named_parameters() if n not in known]


# ------------------------------------------------------------------------------ index helpers
def _expand(p: Tensor, size: int, outer: int, inner: int) -> Tensor:
    """Flat indices of a channel permutation ``p`` in an axis of ``outer * size * inner`` elements."""
    o = torch.arange(outer)[:, None, None] * size * inner
    c = p[None, :, None] * inner
    i = torch.arange(inner)[None, None, :]
    return (o + c + i).reshape(-1)


def _rnn_of(m: nn.Module) -> nn.Module:
    return m.rnn if hasattr(m, "rnn") and isinstance(getattr(m, "rnn"), (nn.GRU, nn.LSTM)) else m


def _gates(r: nn.Module) -> int:
    return 3 if isinstance(r, nn.GRU) else 4


# ------------------------------------------------------------------------------ magnitude
def _bn_fold(model: nn.Module, tr: Trace, producer: str) -> Optional[Tensor]:
    """|gamma| / sqrt(var + eps) of the BatchNorm reading ``producer``'s raw output, if any."""
    name = tr.bn_after.get(producer)
    if name is None:
        return None
    bn = model.get_submodule(name)
    scale = torch.ones_like(bn.running_var) if bn.running_var is None else (bn.running_var + bn.eps).rsqrt()
    return scale * (bn.weight.abs() if bn.weight is not None else 1.0)


@torch.no_grad()
def _magnitude(model: nn.Module, tr: Trace, w: _Width) -> Tensor:
    n = w.size
    prod = torch.zeros(n, dtype=torch.float64)
    cons = torch.zeros(n, dtype=torch.float64)
    has_prod = has_cons = False
    for name, kind in w.producers:
        m = model.get_submodule(name)
        if kind in ("linear", "conv"):
            rows = m.weight.detach().double().flatten(1).pow(2).sum(1)
            fold = _bn_fold(model, tr, name)
            prod += rows * (fold.double() ** 2 if fold is not None else 1.0)
            has_prod = True
        elif kind == "rnn":
            r = _rnn_of(m)
            h, gates = r.hidden_size, _gates(r)
            for pname, p in r.named_parameters():
                if pname.startswith("weight_"):
                    prod += p.detach().double().pow(2).reshape(gates, h, -1).sum((0, 2))
            has_prod = True
    for name, kind, outer, inner in w.readers:
        m = model.get_submodule(name)
        if kind == "linear":
            cols = m.weight.detach().double().pow(2).reshape(m.out_features, outer, n, inner).sum((0, 1, 3))
        elif kind == "conv" and m.groups == 1:
            cols = m.weight.detach().double().transpose(0, 1).flatten(1).pow(2).sum(1)
        elif kind == "rnn":
            r = _rnn_of(m)
            cols = sum(p.detach().double().pow(2).reshape(p.shape[0], outer, n, inner).sum((0, 1, 3))
                       for pname, p in r.named_parameters() if pname.startswith("weight_ih_l0"))
        else:
            continue
        cons += cols
        has_cons = True
    # The product of the two norms is the size of the weight path through the channel; it does not
    # change when a positive factor moves between a layer and the next (a ReLU network's symmetry).
    if has_prod and has_cons:
        return (prod.sqrt() * cons.sqrt()).float()
    return (prod if has_prod else cons).sqrt().float()


# ------------------------------------------------------------------------------ taylor
def _taylor(model: nn.Module, widths: dict[int, _Width], batches: Iterable[Any],
            loss_fn: Callable[..., Tensor]) -> dict[int, Tensor]:
    """sum over items of |sum over positions of activation * d loss / d activation| per channel."""
    owner: dict[str, list[tuple[int, str]]] = {}
    for r, w in widths.items():
        if w.bad is None:
            for name, kind in w.producers:
                owner.setdefault(name, []).append((r, kind))
    acc = {r: torch.zeros(w.size, dtype=torch.float64) for r, w in widths.items() if w.bad is None}
    handles = []

    def hook_for(name: str):
        def hook(mod, args, out):
            t = out[0] if isinstance(out, tuple) else out
            if not isinstance(t, Tensor) or not t.is_floating_point():
                return
            replaced = None
            if not t.requires_grad:  # e.g. a mel front-end on the raw waveform: still give its bands a gradient
                if isinstance(out, tuple):
                    return
                t = replaced = t.detach().requires_grad_(True)
            a = t.detach().clone()
            for r, kind in owner[name]:
                n = widths[r].size
                axis = 1 if kind in ("conv", "mel") else a.dim() - 1

                def on_grad(g, a=a, r=r, axis=axis, n=n):
                    ag = (a * g).movedim(axis, -1)
                    ag = ag.reshape(ag.shape[0], -1, ag.shape[-1]) if ag.dim() > 1 else ag[None, None]
                    if ag.shape[-1] != n:  # bidirectional RNN: (..., 2 * H) -> both directions of unit c
                        ag = ag.reshape(ag.shape[0], -1, ag.shape[-1] // n, n).sum(2)
                    acc[r].add_(ag.double().sum(1).abs().sum(0))

                t.register_hook(on_grad)
            return replaced
        return hook

    for name in owner:
        handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
    seen = 0
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            if isinstance(batch, (tuple, list)):
                x, *rest = batch
                loss = loss_fn(model(x), *rest)
            else:
                loss = loss_fn(model(batch))
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise ReorderError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                                   f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
            loss.backward()
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    if seen == 0:
        raise ReorderError("score='taylor' needs at least one batch in batches")
    return {r: a.float() for r, a in acc.items()}


# ------------------------------------------------------------------------------ permuting
@torch.no_grad()
def _apply(model: nn.Module, w: _Width, p: Tensor) -> None:
    """Permute every producer's output channels and every reader's input channels of ``w`` by ``p``."""
    from .weightnorm import permute_weight

    n = w.size

    def rows(t: Optional[Tensor], idx: Tensor) -> None:
        if t is not None:
            t.copy_(t.index_select(0, idx))

    def cols(t: Tensor, idx: Tensor) -> None:
        t.copy_(t.index_select(1, idx))

    for pname in w.slopes:  # PReLU(num_parameters=C): one slope per channel
        rows(model.get_parameter(pname), p)
    for name, kind in w.producers:
        m = model.get_submodule(name)
        if kind in ("linear", "conv"):
            permute_weight(m, 0, p)  # a plain weight, or a weight norm's g and v
            rows(m.bias, p)
        elif kind == "mel":
            rows(m.fbank, p)
        elif kind == "rnn":
            r = _rnn_of(m)
            h, dirs = r.hidden_size, 2 if r.bidirectional else 1
            g_rows = torch.cat([g * h + p for g in range(_gates(r))])
            for pname, prm in r.named_parameters():
                rows(prm, g_rows)
                if pname.startswith("weight_hh"):
                    cols(prm, p)
                elif pname.startswith("weight_ih") and not pname.startswith("weight_ih_l0"):
                    cols(prm, _expand(p, h, dirs, 1))
            r.flatten_parameters()
    for name, kind, outer, inner in w.readers:
        m = model.get_submodule(name)
        idx = _expand(p, n, outer, inner)
        if kind == "linear":
            permute_weight(m, 1, idx)
        elif kind == "conv":
            if m.groups == 1:
                permute_weight(m, 1, idx)
            # depthwise: its rows were permuted as a producer of the same (united) width
        elif kind in ("bn", "ln"):
            for k in ("weight", "bias", "running_mean", "running_var"):
                rows(getattr(m, k, None), idx)
        elif kind == "rnn":
            r = _rnn_of(m)
            for pname, prm in r.named_parameters():
                if pname.startswith("weight_ih_l0"):
                    cols(prm, idx)
            r.flatten_parameters()


def _run(model: nn.Module, sample: Any) -> list[Tensor]:
    with torch.no_grad():
        out = model(*sample) if isinstance(sample, tuple) else model(sample)
    return [t.detach().clone() for t in _tensors(out)]


def _change(ref: list[Tensor], got: list[Tensor]) -> float:
    """Largest abs difference, relative to the output scale where that exceeds 1."""
    worst = 0.0
    for a, b in zip(ref, got):
        if a.is_floating_point():
            scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
            worst = max(worst, float((a - b).abs().max()) / scale if a.numel() else 0.0)
        elif not torch.equal(a, b):
            worst = math.inf
    return worst


# ------------------------------------------------------------------------------ public API
def _scores(model: nn.Module, sample: Any, score: str, batches, loss_fn,
            exclude) -> tuple[Trace, dict[int, _Width], dict[int, Tensor]]:
    if score not in SCORES:
        raise ReorderError(f"score must be one of {SCORES}, got {score!r}")
    if score == "taylor" and (batches is None or loss_fn is None):
        raise ReorderError("score='taylor' needs batches (inputs, or (input, target...) tuples) and "
                           "loss_fn(output, *targets) -> scalar")
    tr = trace_channels(model, sample)
    widths = _plan(model, tr)
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ReorderError(f"exclude names {unknown} are not modules of this model")
    for w in widths.values():
        if w.bad is None and any(p in exclude for p, _ in w.producers):
            w.bad = "excluded"
    if score == "magnitude":
        return tr, widths, {r: _magnitude(model, tr, w) for r, w in widths.items() if w.bad is None}
    was = model.training
    model.eval()  # scores of the function the model computes at inference (no dropout, BN statistics)
    try:
        with torch.enable_grad():
            return tr, widths, _taylor(model, widths, batches, loss_fn)
    finally:
        model.train(was)


def channel_scores(model: nn.Module, sample: Any, score: str = "magnitude", *,
                   batches: Optional[Iterable[Any]] = None, loss_fn: Optional[Callable[..., Tensor]] = None,
                   exclude: Iterable[str] = ()) -> dict[str, Tensor]:
    """Importance of every channel of every permutable width, keyed by its producer layers.

    ``magnitude``: the L2 norm of the weights that write the channel (BatchNorm scale folded in)
    times the L2 norm of the weights that read it, summed over every member of a tied group.
    ``taylor``: ``sum over items |sum over positions activation * dL/dactivation|`` on the
    producers' outputs over ``batches`` (first-order Taylor estimate of the loss change when the
    channel is removed), summed over tied members.
    """
    _, widths, scores = _scores(model, sample, score, batches, loss_fn, tuple(exclude))
    return {widths[r].label(): s for r, s in scores.items()}


def reorder_channels(model: nn.Module, sample: Any, score: str = "magnitude", *,
                     batches: Optional[Iterable[Any]] = None, loss_fn: Optional[Callable[..., Tensor]] = None,
                     exclude: Iterable[str] = (), check: bool = True, atol: float = 1e-5) -> ReorderReport:
    """Permute the channels of every permutable width of ``model`` (in place), most important first.

    Args:
        model: a plain model (before :func:`slimtrain.make_dynamic`).
        sample: an input batch for the trace (and the output check).
        score: ``"magnitude"`` (weights only) or ``"taylor"`` (needs ``batches`` and ``loss_fn``);
            see :func:`channel_scores`.
        batches: for Taylor, an iterable of inputs or of ``(input, target, ...)`` tuples.
        loss_fn: for Taylor, ``loss_fn(output, *targets)`` returning a scalar.
        exclude: producer layer names whose width must keep its order.
        check: compare the output on ``sample`` before and after (eval mode); widths whose
            permutation changes it by more than ``atol`` (relative to the output scale when that
            exceeds 1) are restored and reported in ``left_alone``.

    Returns a :class:`ReorderReport`.
    """
    if not isinstance(model, nn.Module):
        raise ReorderError(f"model must be an nn.Module, got {type(model).__name__}")
    tr, widths, scores = _scores(model, sample, score, batches, loss_fn, tuple(exclude))
    report = ReorderReport()
    for w in widths.values():
        if w.bad is not None:
            report.left_alone[w.label()] = w.bad
    perms = {r: torch.argsort(-s, stable=True) for r, s in scores.items()}
    was = model.training
    model.eval()
    try:
        ref = _run(model, sample) if check else []
        state = copy.deepcopy(model.state_dict()) if check else None
        for r, p in perms.items():
            _apply(model, widths[r], p)
        if check:
            change = _change(ref, _run(model, sample))
            if change > atol:  # find the widths the trace could not see through, one at a time
                model.load_state_dict(state)
                for r, p in list(perms.items()):
                    _apply(model, widths[r], p)
                    c = _change(ref, _run(model, sample))
                    if c > atol:
                        _apply(model, widths[r], torch.argsort(p))
                        report.left_alone[widths[r].label()] = (
                            f"permuting it changed the output by {c:.2g} (an operation the tracer does not "
                            "see, e.g. a per-channel parameter used in forward)")
                        del perms[r]
                change = _change(ref, _run(model, sample))
            report.max_output_change = change
    finally:
        model.train(was)
    for r, p in perms.items():
        report.permutations[widths[r].label()] = p
        report.scores[widths[r].label()] = scores[r][p]
    return report
