"""Cut every layer to its learned width and return a plain dense model.

Each layer keeps the first ``ceil(K)`` channels of every dynamic width on
both sides (rows of the producer, columns of the consumer, with flatten
factors expanded; BatchNorm statistics, LayerNorm affine, the three/four
gate blocks of GRU/LSTM weights and the mel filterbank rows alike). The
DCL wrappers are removed, so the result holds only ``torch.nn`` layers (and
:class:`~slimtrain.core.modules.TransformerBlock` / :class:`~slimtrain.audio.frontend.MelFrontend`,
which are plain torch code) and equals the DCL model in eval mode.
"""
from __future__ import annotations

import contextlib
import io
from typing import Optional

import torch
from torch import Tensor, nn

from .attach import detach_all
from .dcl import DynamicWidth
from .graph import _ATTR, LayerSpec, _set, get_graph
from .modules import DynamicOutput, DynamicRecurrent, MaskedLayerNorm
from .trace import HEAD_COUNT_ATTRS, is_transposed_linear  # noqa: F401  (HEAD_COUNT_ATTRS: old import path)
from .weightnorm import cut_weight, deepcopy_model

__all__ = ["export", "cut_in_place", "kept_index", "export_onnx", "ExportError"]


def kept_index(size: int, width: int, outer: int = 1, inner: int = 1) -> Tensor:
    """Indices kept along an axis of ``outer * size * inner`` elements when ``width`` of ``size`` channels stay."""
    o = torch.arange(outer)[:, None, None] * size * inner
    c = torch.arange(width)[None, :, None] * inner
    i = torch.arange(inner)[None, None, :]
    return (o + c + i).reshape(-1)


def _rows(t: Tensor, idx: Optional[Tensor]) -> Tensor:
    return t if idx is None else t.index_select(0, idx)


def _cols(t: Tensor, idx: Optional[Tensor]) -> Tensor:
    return t if idx is None else t.index_select(1, idx)


def _gate_rows(hidden: int, width: int, gates: int) -> Tensor:
    return torch.cat([g * hidden + torch.arange(width) for g in range(gates)])


def _param(old: Optional[Tensor], new: Tensor) -> nn.Parameter:
    return nn.Parameter(new.detach().clone(), requires_grad=old.requires_grad if old is not None else True)


@torch.no_grad()
def _cut(model: nn.Module, s: LayerSpec, widths: dict[int, int]) -> None:
    """Cut layer ``s.name`` to the kept widths in place: same module, its weights and config attributes updated."""
    if s.kind == "prod":
        return
    if s.kind == "param":  # a parameter/buffer that meets the width elementwise (scale, bias, token, position)
        w = widths.get(s.in_root) if s.in_root is not None else None
        if w is None:
            return
        owner_name, _, attr = s.name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        t = getattr(owner, attr)
        cut = t.index_select(s.extra["axis"], torch.arange(w))
        setattr(owner, attr, _param(t, cut) if isinstance(t, nn.Parameter) else cut.clone())
        if isinstance(owner, nn.PReLU):
            owner.num_parameters = int(cut.numel())
        return
    m = model.get_submodule(s.name)
    w_in = widths.get(s.in_root) if s.in_root is not None else None
    w_out = widths.get(s.out_root) if s.out_root is not None else None
    in_idx = kept_index(s.in_size, w_in, s.in_outer, s.in_inner) if w_in is not None else None
    if "in_segs" in s.extra and any(r is not None and r in widths for r, _ in s.extra["in_segs"]):
        parts, off = [], 0  # a channel concatenation: the kept channels of each block, at its offset
        for r, n in s.extra["in_segs"]:
            parts.append(off + torch.arange(widths[r] if r is not None and r in widths else n))
            off += n
        in_idx = torch.cat(parts)
    out_idx = kept_index(s.out_size, w_out, s.extra.get("out_outer", 1), s.extra.get("out_inner", 1)) \
        if w_out is not None else None
    if in_idx is None and out_idx is None:
        return  # a fixed layer: left exactly as it is
    if s.kind == "linear" and is_transposed_linear(m):  # weight (in, out), e.g. transformers' Conv1D
        cut_weight(m, {0: in_idx, 1: out_idx})
        if m.bias is not None:
            m.bias = _param(m.bias, _rows(m.bias, out_idx))
        m.nf = int(m.weight.shape[1])
        if hasattr(m, "nx"):
            m.nx = int(m.weight.shape[0])
    elif s.kind == "linear":
        cut_weight(m, {0: out_idx, 1: in_idx})  # a plain weight or a weight norm's g and v
        if m.bias is not None:
            m.bias = _param(m.bias, _rows(m.bias, out_idx))
        m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]
    elif s.kind == "conv":
        depthwise = m.groups > 1 and w_in is not None
        if m.transposed:  # weight (in, out/groups, *kernel)
            cut_weight(m, {0: out_idx if depthwise else in_idx, 1: None if depthwise else out_idx})
        else:  # a plain weight or a weight norm's g and v
            cut_weight(m, {0: out_idx, 1: None if depthwise else in_idx})
        if m.bias is not None:
            m.bias = _param(m.bias, _rows(m.bias, out_idx))
        m.out_channels = len(out_idx) if out_idx is not None else m.out_channels
        m.in_channels = len(in_idx) if in_idx is not None else m.in_channels
        if depthwise:
            m.groups = m.in_channels
    elif s.kind in ("bn", "ln"):
        if in_idx is None:
            return
        for k in ("weight", "bias"):  # the per-channel affine of either norm
            if getattr(m, k) is not None:
                setattr(m, k, _param(getattr(m, k), getattr(m, k)[in_idx]))
        if s.kind == "ln":
            m.normalized_shape = (len(in_idx),)
        else:
            for k in ("running_mean", "running_var"):
                if getattr(m, k) is not None:
                    setattr(m, k, getattr(m, k)[in_idx].clone())
            m.num_features = len(in_idx)
    elif s.kind == "emb":
        if out_idx is not None:
            m.weight = _param(m.weight, m.weight.index_select(1, out_idx))
            m.embedding_dim = w_out
    elif s.kind == "rnn":
        r = m.rnn if isinstance(m, DynamicRecurrent) else m
        _cut_rnn(r, in_idx, w_out)
    elif s.kind == "mel":
        if out_idx is not None:
            m.fbank = m.fbank[out_idx].clone()
    elif s.kind == "mha":
        if w_out is not None:
            _cut_mha_heads(m, w_out)


def _cut_mha_heads(m: nn.MultiheadAttention, kept: int) -> None:
    """Keep the first ``kept`` heads of an ``nn.MultiheadAttention`` in place: the q/k/v rows of those heads,
    their ``out_proj`` columns and ``bias_k``/``bias_v`` entries; ``num_heads`` updated, ``embed_dim`` (the query
    and output width) and ``head_dim`` kept. With fewer heads the class becomes
    :class:`~slimtrain.core.modules.PrunedMultiheadAttention` (torch's own forward needs ``num_heads * head_dim ==
    embed_dim``)."""
    from .modules import PrunedMultiheadAttention

    h, hd = m.num_heads, m.head_dim
    if kept >= h:
        return
    one = kept_index(h, kept, 1, hd)
    if m._qkv_same_embed_dim:
        m.in_proj_weight = _param(m.in_proj_weight, _rows(m.in_proj_weight, kept_index(h, kept, 3, hd)))
    else:
        for k in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            setattr(m, k, _param(getattr(m, k), _rows(getattr(m, k), one)))
    if m.in_proj_bias is not None:
        m.in_proj_bias = _param(m.in_proj_bias, _rows(m.in_proj_bias, kept_index(h, kept, 3, hd)))
    for k in ("bias_k", "bias_v"):
        if getattr(m, k) is not None:
            setattr(m, k, _param(getattr(m, k), getattr(m, k).index_select(2, one)))
    m.out_proj.weight = _param(m.out_proj.weight, _cols(m.out_proj.weight, one))
    m.out_proj.in_features = kept * hd
    m.num_heads = kept
    m.__class__ = PrunedMultiheadAttention


def _no_fused_attention(model: nn.Module) -> None:
    """Keep torch's fused transformer paths away from attentions whose heads were cut: they call native kernels
    with ``in_proj_weight`` and ``embed_dim == num_heads * head_dim``. An ``nn.TransformerEncoderLayer`` holding
    one gets ``activation_relu_or_gelu = 0`` (read only to choose the fused path; its forward applies
    ``activation``), an ``nn.TransformerEncoder`` over such layers ``use_nested_tensor = False``."""
    from .modules import PrunedMultiheadAttention

    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer) and isinstance(m.self_attn, PrunedMultiheadAttention):
            m.activation_relu_or_gelu = 0
        if isinstance(m, nn.TransformerEncoder) and any(
                isinstance(getattr(layer, "self_attn", None), PrunedMultiheadAttention) for layer in m.layers):
            m.use_nested_tensor = False


def _cut_rnn(r: nn.Module, in_idx: Optional[Tensor], w: Optional[int]) -> None:
    """Cut a GRU/LSTM in place: every gate block's rows, the hidden and input columns; sizes updated."""
    gates = 3 if isinstance(r, nn.GRU) else 4
    h_full = r.hidden_size
    h = w if w is not None else h_full
    dirs = 2 if r.bidirectional else 1
    rows = _gate_rows(h_full, h, gates)
    hid_cols = torch.arange(h)
    layer_in = kept_index(h_full, h, dirs, 1)
    for name, p in list(r.named_parameters(recurse=False)):
        q = p.index_select(0, rows)
        if name.startswith("weight_hh"):
            q = q.index_select(1, hid_cols)
        elif name.startswith("weight_ih"):
            q = _cols(q, in_idx) if name.startswith("weight_ih_l0") else q.index_select(1, layer_in)
        setattr(r, name, _param(p, q))
    r.hidden_size = h
    if in_idx is not None:
        r.input_size = len(in_idx)
    r._init_flat_weights()
    r.flatten_parameters()


def cut_in_place(model: nn.Module, g, widths: dict[int, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """Cut every layer of ``model`` (its width graph ``g``) in place to ``widths`` ({group root: channels
    kept}; groups not in it stay whole): weights, BatchNorm statistics, size and head-count attributes
    (returned: ``{module: {attribute: (old, new)}}``), and fused attention paths turned off where heads
    were cut. The one cutting path of :func:`export` and :func:`slimtrain.compact`."""
    for s in g.layers:
        _cut(model, s, widths)
    changed = _set_head_counts(model, g, widths)
    _no_fused_attention(model)
    return changed


def export(model: nn.Module) -> nn.Module:
    """A dense copy of ``model`` with every dynamic width cut to ``ceil(K)``, in eval mode.

    The input model is not changed. The copy keeps the user's modules (same
    classes and attribute names; weights and size attributes such as
    ``in_features``/``out_channels``/``hidden_size`` cut in place), has no DCL
    modules, hooks or noise, and ``export(model)(x) == model.eval()(x)`` up to
    float rounding.
    """
    g = get_graph(model)
    out = deepcopy_model(model)
    out.__dict__.pop(_ATTR, None)
    out.eval()
    widths = {r: d.hard_width for r, d in g.dcl_modules(out).items()}
    changed = cut_in_place(out, g, widths)
    _strip(out)
    sample = g.__dict__.get("_sample")
    if sample is not None:  # the sample make_dynamic traced: the exported model must still run it
        cut: dict[str, list[str]] = {}  # module -> its children (or itself) whose widths export cut
        for s in g.layers:
            if s.kind not in ("param", "prod") and (s.in_root in widths or s.out_root in widths):
                cut.setdefault(s.name.rpartition(".")[0], []).append(s.name)
        old_sizes = set()  # every size export cut (channels, heads, heads x head_dim)
        for s in g.layers:
            if s.out_root in widths and widths[s.out_root] < s.out_size:
                old_sizes |= {s.out_size, s.out_size * s.extra.get("out_inner", 1) * s.extra.get("out_outer", 1)}
            if s.in_root in widths and widths[s.in_root] < s.in_size:
                old_sizes |= {s.in_size, s.in_size * s.in_inner * s.in_outer}
        _check_runs(out, sample, changed, cut, old_sizes)
    return out.eval()


def _int_attrs(mod: nn.Module) -> dict[str, int]:
    """The module's own integer attributes (not bools, not class-level properties)."""
    return {k: v for k, v in vars(mod).items() if isinstance(v, int) and not isinstance(v, bool)
            and not k.startswith("_") and not isinstance(getattr(type(mod), k, None), property)}


def _set_head_counts(model: nn.Module, g, widths: dict[int, int]) -> dict[str, dict[str, tuple[int, int]]]:
    """Update the size attributes of the modules that hold cut attention projections; returns what was changed,
    ``{module name: {attribute: (old, new)}}``.

    The rule is by value, within the module that owns the projections: an integer attribute equal to the old
    inner width (heads x head_dim: ``dim``, ``embed_dim``, ``all_head_size``, ``hidden_size``... which a forward
    divides by the head count or reshapes to) becomes the new inner width; one equal to the old head count whose
    name says it counts heads (``n_heads``, ``num_attention_heads``...) becomes the kept count; with per-head
    widths one equal to the old per-head size whose name says it is per head (``head_dim``,
    ``attention_head_size``) becomes the kept size."""
    changed: dict[str, dict[str, tuple[int, int]]] = {}

    def per_head(k: str) -> bool:  # a head's size (head_dim, attention_head_size), not a head count
        k = k.lower()
        return "head" in k and any(w in k for w in ("dim", "size", "width"))

    def update(owner: str, inner: tuple[int, int], heads: Optional[tuple[int, int]],
               head_size: Optional[tuple[int, int]]) -> None:
        mod = model.get_submodule(owner)
        for k, v in _int_attrs(mod).items():
            new = None
            if v == inner[0]:
                new = inner[1]
            elif heads is not None and v == heads[0] and "head" in k.lower() and not per_head(k):
                new = heads[1]
            elif head_size is not None and v == head_size[0] and per_head(k):
                new = head_size[1]
            if new is not None and new != v:
                setattr(mod, k, new)
                changed.setdefault(owner, {})[k] = (v, new)

    done = set()
    # per-head widths: the inner width (heads * head_dim) the attention's output merge reads is the value's
    merged = {s.in_root for s in g.layers if s.kind == "linear" and s.in_root is not None}
    for s in g.layers:
        inner = s.extra.get("out_inner", 1)
        owner = s.name.rpartition(".")[0]
        if s.extra.get("head_width"):  # every head kept, each narrower
            if s.out_root in widths and s.out_root in merged and owner not in done:
                done.add(owner)
                outer, kept = s.extra["out_outer"], widths[s.out_root]
                update(owner, (outer * s.out_size, outer * kept), None, (s.out_size, kept))
            continue
        if not s.extra.get("heads") or s.out_root is None or s.out_root not in widths or owner in done:
            continue
        done.add(owner)
        heads, kept = s.out_size, widths[s.out_root]
        update(owner, (heads * inner, kept * inner), (heads, kept), None)
    return changed


def _to(sample, device):
    if isinstance(sample, Tensor):
        return sample.to(device)
    if isinstance(sample, (tuple, list)):
        return type(sample)(_to(t, device) for t in sample)
    if isinstance(sample, dict):
        return {k: _to(v, device) for k, v in sample.items()}
    return sample


@torch.no_grad()
def _check_runs(model: nn.Module, sample, changed: dict[str, dict[str, tuple[int, int]]],
                cut: dict[str, list[str]], old_sizes: set[int]) -> None:
    """Run ``sample`` through the exported model; a failure becomes an :class:`ExportError` that names the module
    it happened in, the size attributes export changed there (or above it) and the integer attributes that still
    hold a size it cut."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []
    failed: list[str] = []

    def pre(mod, args):
        stack.append(names.get(mod, type(mod).__name__))

    def post(mod, args, out):
        stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    dev = next((p.device for p in model.parameters()), None)
    try:
        x = _to(sample, dev) if dev is not None else sample
        model(*x) if isinstance(x, tuple) else model(x)
        return
    except Exception as e:  # noqa: BLE001 - any failure of the user's forward is reported with its place
        failed = list(stack)
        err = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    finally:
        for h in handles:
            h.remove()
    where = failed[-1] if failed else ""
    mod = model.get_submodule(where) if where else model
    chain = [n for n in failed if n]  # the module and its callers, outermost first
    notes = []
    for n in reversed(chain):
        if n in changed:
            notes.append(f"export set {', '.join(f'{n}.{k} {a} -> {b}' for k, (a, b) in changed[n].items())}")
        if n in cut:
            notes.append(f"export cut {', '.join(repr(c) for c in cut[n])}")
    old_sizes = old_sizes | {a for d in changed.values() for a, _ in d.values()}
    stale = [f"{n}.{k}={v}" for n in reversed(chain) for k, v in _int_attrs(model.get_submodule(n)).items()
             if v in old_sizes]
    if stale:
        notes.append(f"integer attributes still equal to a cut size: {', '.join(stale)}")
    raise ExportError(
        f"the exported model fails on the sample in module '{where or '<model>'}' ({type(mod).__name__}): {err}"
        + ("; " + "; ".join(notes) if notes else "")
        + ". Its forward reads a size that export did not update; exclude that width (make_dynamic(..., "
        "exclude=[...])) or report the module's class"
    )


def _strip(model: nn.Module) -> None:
    detach_all(model)
    for name, m in list(model.named_modules()):
        if not name:
            continue
        try:
            model.get_submodule(name)
        except AttributeError:  # parent replaced already
            continue
        if isinstance(m, DynamicOutput):
            _set(model, name, m.module)
        elif isinstance(m, DynamicRecurrent):
            _set(model, name, m.rnn)
        elif isinstance(m, DynamicWidth):
            _set(model, name, nn.Identity())
        elif isinstance(m, MaskedLayerNorm):
            new = nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.weight is not None,
                               bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
            _set(model, name, new)


class ExportError(RuntimeError):
    """A deployment artefact could not be written or does not reproduce the model."""


def export_onnx(model: nn.Module, sample: Tensor, path, *, atol: float = 1e-5, opset: int = 18) -> dict:
    """Write ``model`` (a plain/exported module) to ONNX at ``path`` and check it with onnxruntime.

    Tries ``torch.onnx.export(dynamo=True)`` first and the TorchScript-based
    exporter if that fails; the batch axis is dynamic where the exporter allows,
    the other axes keep the sample's sizes (the dynamo exporter unrolls GRU/LSTM
    layers over the sample's length, which makes long samples slow to export).
    The file is written to a temporary name and renamed when it passed the check
    (``|onnx - torch| <= atol * max(1, max|y|)`` on ``sample``). Returns a dict
    with the exporter used, the largest difference and whether the batch is dynamic.
    """
    from pathlib import Path

    path = Path(path)
    model = model.eval()
    with torch.no_grad():
        ref = model(sample)
    if not isinstance(ref, Tensor):
        raise ExportError("ONNX export handles models with a single tensor output")
    scale = max(1.0, float(ref.abs().max()))
    tmp = path.with_name(f".{path.name}.tmp")
    errors = []
    attempts = [("dynamo", True), ("torchscript", True), ("torchscript", False)]

    import logging

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # the exporters log a warning per missing optional package (torchvision...)
        lg.setLevel(logging.ERROR)
    try:
        return _try_exports(model, sample, path, tmp, ref, scale, atol, opset, attempts, errors)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _try_exports(model, sample, path, tmp, ref, scale, atol, opset, attempts, errors) -> dict:
    import os
    import warnings

    for exporter, dynamic in attempts:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
                    prog = torch.onnx.export(model, (sample,), dynamo=True, dynamic_shapes=shapes,
                                             input_names=["input"], output_names=["output"], opset_version=opset,
                                             verbose=False)
                    prog.save(str(tmp))
                else:
                    torch.onnx.export(model, (sample,), str(tmp), dynamo=False, input_names=["input"],
                                      output_names=["output"], opset_version=min(opset, 17),
                                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None)
            diff = _onnx_diff(tmp, sample, ref)
        except Exception as e:  # noqa: BLE001 - exporters raise many kinds; try the next one
            errors.append(f"{exporter}{' (dynamic batch)' if dynamic else ''}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
            continue
        if diff <= atol * scale:
            os.replace(tmp, path)
            for extra in tmp.parent.glob(tmp.name + ".data"):
                os.replace(extra, path.with_name(path.name + ".data"))
            return {"exporter": exporter, "dynamic_batch": dynamic, "max_abs_diff": diff, "opset": opset}
        errors.append(f"{exporter}: onnxruntime output differs by {diff:.3g}")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    raise ExportError("ONNX export failed: " + "; ".join(errors))


def _onnx_diff(path, sample: Tensor, ref: Tensor) -> float:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    y = sess.run(None, {name: sample.detach().cpu().numpy()})[0]
    return float(np.abs(y - ref.detach().cpu().numpy()).max())
