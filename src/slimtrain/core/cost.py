"""Differentiable complexity model: MACs and parameters as functions of the widths.

Every layer's cost is a polynomial in the effective width of its input
(``K_in``, the DCL before it, times any flatten factor) and of its output
(``K_out``), with fixed sizes where a side is not dynamic:

* Linear: ``positions * K_in * K_out`` MACs, ``K_in*K_out + K_out`` params;
* Conv1d/2d: ``B * out_positions * K_out * K_in/groups * prod(kernel)`` MACs
  (depthwise: ``K_in/groups = 1``), ``K_out*K_in/groups*prod(kernel) + K_out`` params;
  transposed: ``B * in_positions * K_in * K_out/groups * prod(kernel)``; a weight norm adds
  its ``g`` to the params;
* nn.MultiheadAttention: q/k/v and output projections and both attention products with an
  inner width of ``K_heads * head_dim``, either layout;
* GRU/LSTM: per step, layer and direction ``gates * (in*H + H*H)`` MACs with
  gates = 3/4; params ``gates*(H*in + H*H + 2H)``;
* BatchNorm/LayerNorm: ``2K`` params, no MACs; mel front-end: ``frames *
  n_freqs * K`` MACs per pooled spectrum (``pooled_spectra``, default 1); attention products ``Tq*Tk*(d_k + d_v)`` per head.

MACs count multiply-accumulates of matrix products and convolutions, the same
operations :class:`torch.utils.flop_counter.FlopCounterMode` counts
(``FLOPs = 2 * MACs``); activations, norms and the STFT are not counted.
All totals are per item of the sample batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from .dcl import first_order_backward
from .graph import GraphError, LayerSpec, WidthGraph, get_graph, reject_compiled_wrapper
from .modules import DynamicRecurrent

__all__ = ["Cost", "model_cost", "layer_costs"]


@dataclass
class Cost:
    """MACs, FLOPs (= 2 MACs) and parameters per input item, as tensors."""

    macs: Tensor
    params: Tensor
    seconds: Optional[float] = None

    @property
    def flops(self) -> Tensor:
        return 2.0 * self.macs

    @property
    def flops_per_second(self) -> Tensor:
        """FLOPs per second of input audio (needs ``seconds`` of the sample item)."""
        if not self.seconds:
            raise ValueError("flops_per_second needs the sample's duration: model_cost(..., seconds=...)")
        return self.flops / self.seconds

    def metric(self, name: str) -> Tensor:
        if name in ("macs", "flops", "params"):
            return getattr(self, name)
        raise ValueError(f"unknown cost metric {name!r}; use 'macs', 'flops' or 'params'")


def _rnn_module(model: nn.Module, name: str) -> nn.Module:
    m = model.get_submodule(name)
    return m.rnn if isinstance(m, DynamicRecurrent) else m


def _unwrap(model: nn.Module, name: str) -> nn.Module:
    m = model.get_submodule(name)
    return m


def _layer_cost(model: nn.Module, s: LayerSpec, k_in: Tensor, k_out: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(MACs over the whole sample batch, params) of one layer for widths ``k_in``/``k_out``."""
    zero = k_in * 0
    if s.kind == "prod":  # a product between layers whose batch/rows run along the width (attention heads)
        return k_in * (s.extra["macs"] / s.in_size), zero
    if s.kind == "param":  # a parameter cut along one axis with the width (no products)
        t = _param_or_buffer(model, s.name)
        per = t.numel() // max(1, t.shape[s.extra["axis"]])
        return zero, (k_in * per if isinstance(t, nn.Parameter) else zero)
    m = _unwrap(model, s.name)
    if s.kind == "linear":
        positions = math.prod(s.out_shape[:-1])
        macs = positions * k_in * k_out
        params = k_in * k_out + (k_out if m.bias is not None else zero)
        from .trace import is_transposed_linear

        axes = (k_in, k_out) if is_transposed_linear(m) else (k_out, k_in)
        return macs, params + _norm_params(m, axes, zero)
    if s.kind == "conv":
        kernel = math.prod(m.kernel_size)
        if m.transposed:  # weight (in, out/groups, *kernel), one product per input position (as torch counts)
            positions = s.in_shape[0] * math.prod(s.in_shape[2:])
            per_group_out = k_out / m.groups if m.groups == 1 or s.out_root is None else zero + 1
            macs = positions * k_in * per_group_out * kernel
            params = k_in * per_group_out * kernel + (k_out if m.bias is not None else zero)
            return macs, params + _norm_params(m, (k_in, per_group_out), zero)
        positions = s.out_shape[0] * math.prod(s.out_shape[2:])
        per_group_in = k_in / m.groups if m.groups == 1 or s.in_root is None else zero + 1
        macs = positions * k_out * per_group_in * kernel
        params = k_out * per_group_in * kernel + (k_out if m.bias is not None else zero)
        return macs, params + _norm_params(m, (k_out, per_group_in), zero)
    if s.kind == "rnn":
        r = _rnn_module(model, s.name)
        gates = 3 if isinstance(r, nn.GRU) else 4
        dirs = 2 if r.bidirectional else 1
        bf = r.batch_first
        b, t = (s.in_shape[0], s.in_shape[1]) if bf else (s.in_shape[1], s.in_shape[0])
        h = k_out
        macs = zero
        params = zero
        for layer in range(r.num_layers):
            inp = k_in if layer == 0 else h * dirs
            macs = macs + dirs * b * t * gates * (inp * h + h * h)
            params = params + dirs * gates * (h * inp + h * h + (2 * h if r.bias else 0))
        return macs, params
    if s.kind == "bn":
        return zero, (2 * k_out if m.affine else zero)
    if s.kind == "emb":  # a table lookup: no products
        return zero, m.num_embeddings * k_out
    if s.kind == "ln":
        n_aff = (1 if m.weight is not None else 0) + (1 if m.bias is not None else 0)
        return zero, n_aff * k_out
    if s.kind == "mel":
        inner = m.module if hasattr(m, "module") else m
        frames = s.out_shape[-1]  # a front end that pools more than the power spectrum says how many it pools
        return s.out_shape[0] * frames * inner.n_freqs * k_out * getattr(inner, "pooled_spectra", 1), zero
    if s.kind == "mha":  # q/k/v projections, the two attention products, out_proj; k_out heads of head_dim
        return _mha_cost(m, s, k_out * m.head_dim, zero)
    return zero, zero


def _norm_params(m: nn.Module, axes: tuple, zero):
    """Parameters a weight norm adds (its ``g``): the weight's size along the norm's ``dim`` (``axes`` holds the
    sizes of the weight's first two axes as functions of the widths; -1: one scalar)."""
    from .weightnorm import weight_norm_dim

    d = weight_norm_dim(m)
    if d is None:
        return zero
    if d == -1:
        return zero + 1
    return axes[d] if d < 2 else zero + int(m.weight.shape[d])


def _mha_cost(m: nn.Module, s: LayerSpec, inner, zero) -> tuple:
    """(MACs, params) of an ``nn.MultiheadAttention`` whose inner width (heads x head_dim) is ``inner``, for
    either layout (``batch_first`` or sequence-first) and unbatched inputs, as FlopCounterMode counts them."""
    q_shape = s.in_shape
    kv = s.extra.get("kv_shapes") or [q_shape, q_shape]
    if len(q_shape) not in (2, 3) or any(len(sh) != len(q_shape) for sh in kv):
        raise GraphError(f"nn.MultiheadAttention '{s.name}': query shape {tuple(q_shape)} and key/value shapes "
                         f"{[tuple(sh) for sh in kv]} are not all (length, batch, embed) / (batch, length, embed) "
                         "or (length, embed)")
    tokens_q = math.prod(q_shape[:-1])  # batch x query length
    tokens_k = math.prod(kv[0][:-1])
    tokens_v = math.prod(kv[-1][:-1])
    batch = 1 if len(q_shape) == 2 else (q_shape[0] if m.batch_first else q_shape[1])
    extra = int(m.bias_k is not None) + int(bool(m.add_zero_attn))  # tokens appended to the keys
    src = tokens_k // batch + extra
    e_q, e_k, e_v, e_o = m.embed_dim, kv[0][-1], kv[-1][-1], m.out_proj.out_features
    macs = inner * (tokens_q * e_q + tokens_k * e_k + tokens_v * e_v + tokens_q * src * 2 + tokens_q * e_o)
    params = inner * (e_q + e_k + e_v + e_o)
    if m.in_proj_bias is not None:
        params = params + 3 * inner
    if m.bias_k is not None:
        params = params + 2 * inner
    if m.out_proj.bias is not None:
        params = params + e_o
    return zero + macs, zero + params


class _Poly:
    """A polynomial in the dynamic widths: ``{(root, root, ...): coefficient}``.

    :func:`_layer_cost` is written with ``+``, ``*`` and ``/`` only, so running it
    on ``_Poly`` widths yields each layer's cost as exact polynomial coefficients,
    which :class:`_CompiledCost` evaluates with a few tensor operations per step.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: Optional[dict[tuple[int, ...], float]] = None) -> None:
        self.terms = {k: v for k, v in (terms or {}).items() if v != 0}

    @staticmethod
    def of(value) -> "_Poly":
        if isinstance(value, _Poly):
            return value
        return _Poly({(): float(value)})

    def __add__(self, other) -> "_Poly":
        out = dict(self.terms)
        for k, v in _Poly.of(other).terms.items():
            out[k] = out.get(k, 0.0) + v
        return _Poly(out)

    __radd__ = __add__

    def __mul__(self, other) -> "_Poly":
        o = _Poly.of(other)
        out: dict[tuple[int, ...], float] = {}
        for ka, va in self.terms.items():
            for kb, vb in o.terms.items():
                k = tuple(sorted(ka + kb))
                out[k] = out.get(k, 0.0) + va * vb
        return _Poly(out)

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> "_Poly":
        return _Poly({k: v / float(other) for k, v in self.terms.items()})


class _CompiledCost:
    """Total MACs and params of a graph as polynomials in the group widths.

    Built once per model (cached on its :class:`WidthGraph`); evaluating it is
    a gather, a product and a sum, instead of a Python walk over the layers.
    """

    def __init__(self, model: nn.Module, g: WidthGraph) -> None:
        self.roots = list(g.dcls)
        var = {r: _Poly({(r,): 1.0}) for r in self.roots}
        macs, params = _Poly(), _Poly()
        for s in g.layers:
            k_in, k_out = _sides(model, s, var, lambda v: _Poly.of(v))
            lm, lp = _layer_cost(model, s, k_in, k_out, g.batch)
            macs = macs + _Poly.of(lm) / g.batch
            params = params + _Poly.of(lp)
        macs = macs + g.fixed_macs / g.batch
        counted = {id(p) for p in _counted_params(model, g)}
        params = params + float(sum(p.numel() for p in model.parameters() if id(p) not in counted))
        pos = {r: i + 1 for i, r in enumerate(self.roots)}  # slot 0 of the width vector is the constant 1
        # one table of monomials for both polynomials: idx[t] holds the width slots of monomial t
        # (padded with slot 0, the constant 1), coef[t] its (MACs, params) coefficients
        monomials = sorted(set(macs.terms) | set(params.terms) | {()}, key=lambda k: (len(k), k))
        deg = max(1, max(len(k) for k in monomials))
        self.idx = torch.tensor([[pos[r] for r in k] + [0] * (deg - len(k)) for k in monomials], dtype=torch.long)
        # float64 coefficients: sums of large integer products stay exact
        self.coef = torch.tensor([[macs.terms.get(k, 0.0), params.terms.get(k, 0.0)] for k in monomials],
                                 dtype=torch.float64)
        mods = g.dcl_modules(model)
        self.n = torch.tensor([float(mods[r].full_channels) for r in self.roots], dtype=torch.float32)  # theta's unit
        self.bounds(model, g)
        # the same polynomials as Python lists for the eager-CPU path: (coefficient, [width index, ...])
        self.py_terms = [[(float(v), [pos[r] - 1 for r in k]) for k, v in q.terms.items()] for q in (macs, params)]

    def bounds(self, model: nn.Module, g: WidthGraph) -> None:
        """(Re)read every width's bounds in ``theta`` units (:func:`slimtrain.compact` lowers the upper ones)."""
        mods = g.dcl_modules(model)
        self.lo = torch.tensor([mods[r].min_width / mods[r].full_channels for r in self.roots], dtype=torch.float32)
        self.hi = torch.tensor([mods[r].max_width / mods[r].full_channels for r in self.roots], dtype=torch.float32)
        self._on: dict = {}

    def _tables(self, device: torch.device) -> tuple[Tensor, ...]:
        """The constant tables on ``device``, in float64 (float32 where the device has no float64)."""
        t = self._on.get(device)
        if t is None:
            fdt = torch.float32 if device.type == "mps" else torch.float64
            t = self._on[device] = (self.idx.to(device), self.coef.to(device, fdt), self.n.to(device),
                                    self.lo.to(device), self.hi.to(device))
        return t

    def soft_cost(self, dcls: list) -> tuple[Tensor, Tensor]:
        """(MACs, params) at the continuous widths ``K_r = N_r clamp(theta_r)``, differentiable in every
        ``theta`` (the clamp follows the inward rule of :class:`~slimtrain.core.dcl.DynamicWidth`).

        Tensor operations only, on the widths' device: no host sync, no graph break under
        ``torch.compile``."""
        if not dcls:
            return self(torch.zeros(0))
        from .dcl import inward_clamp

        if dcls[0].theta.device.type == "cpu" and not torch.compiler.is_compiling() \
                and all(d.host_fast_path for d in dcls):
            return _PolyCostFunction.apply(self, dcls, *[d.theta for d in dcls])
        theta = torch.stack([d.theta for d in dcls])
        _, _, n, lo, hi = self._tables(theta.device)
        k = n * inward_clamp(theta, lo.to(theta.dtype), hi.to(theta.dtype))
        if torch.compiler.is_compiling():
            # the polynomials unrolled into scalar arithmetic with constant coefficients: inductor fuses
            # them into one small kernel (the gather + matmul form costs two matmul calls per step)
            ks = k.to(torch.float64 if k.device.type != "mps" else torch.float32).unbind(0)
            out = []
            for terms in self.py_terms:
                total = torch.zeros((), dtype=ks[0].dtype, device=k.device)
                for coef, idx in terms:
                    prod = ks[idx[0]] * coef if idx else torch.full_like(total, coef)
                    for j in idx[1:]:
                        prod = prod * ks[j]
                    total = total + prod
                out.append(total.to(torch.float32))
            return out[0], out[1]
        return self(k)

    def __call__(self, widths) -> tuple[Tensor, Tensor]:
        """(MACs, params) for the widths of :attr:`roots` (a 1-d tensor or a sequence of numbers/0-d tensors)."""
        if not isinstance(widths, Tensor):
            widths = torch.stack([torch.as_tensor(w, dtype=torch.float64).reshape(()) for w in widths]) \
                if len(widths) else torch.zeros(0, dtype=torch.float64)
        idx, coef, _, _, _ = self._tables(widths.device)
        w = torch.cat([torch.ones(1, dtype=coef.dtype, device=widths.device), widths.to(coef.dtype).reshape(-1)])
        mono = w[idx[:, 0]]
        for j in range(1, idx.shape[1]):  # products by explicit multiplication: prod's backward syncs
            mono = mono * w[idx[:, j]]
        out = (mono @ coef).to(torch.float32)
        return out[0], out[1]



class _PolyCostFunction(torch.autograd.Function):
    """The eager-CPU fast path of :meth:`_CompiledCost.soft_cost`: the cost polynomials of the widths
    ``K_r = N_r clamp(theta_r, lo_r, hi_r)`` and their exact gradients, evaluated with Python floats
    (a handful of terms) in a single autograd node (about 2.5x faster than the tensor path on CPU;
    reading a CPU ``theta`` is no device sync, and this path is not taken under ``torch.compile``).
    The gradient of each ``theta`` follows the inward-clamp rule of :class:`~slimtrain.core.dcl.DynamicWidth`."""

    @staticmethod
    def forward(ctx, comp: "_CompiledCost", dcls: list, *thetas: Tensor):  # type: ignore[override]
        t = [float(th.detach()) for th in thetas]
        out, grads = host_poly(comp, dcls, t)
        ctx.grads, ctx.t, ctx.dcls = grads, t, dcls
        dev = thetas[0].device
        return torch.tensor(out[0], dtype=torch.float32, device=dev), torch.tensor(out[1], dtype=torch.float32, device=dev)

    @staticmethod
    @first_order_backward
    def backward(ctx, g_macs: Tensor, g_params: Tensor):  # type: ignore[override]
        gm = float(g_macs) if g_macs is not None else 0.0
        gp = float(g_params) if g_params is not None else 0.0
        return (None, None, *host_theta_grads(ctx.dcls, ctx.t, [gm * a + gp * b for a, b in zip(*ctx.grads)]))


def host_poly(comp: "_CompiledCost", dcls: list, t: list[float]) -> tuple[list[float], list[list[float]]]:
    """(MACs, params) and their gradients in every width ``K_j``, in Python floats, at
    ``K_j = N_j clamp(theta_j)`` computed as :attr:`DynamicWidth.width` does (clamp in float32, times N)."""
    k = [float(np.float32(min(max(ti, d.min_width / d.full_channels), d.max_width / d.full_channels))
               * np.float32(d.full_channels)) for ti, d in zip(t, dcls)]
    out, grads = [], []
    for terms in comp.py_terms:
        total = 0.0
        g = [0.0] * len(k)
        for coef, idx in terms:
            prod = coef
            for j in idx:
                prod *= k[j]
            total += prod
            for a, j in enumerate(idx):  # d/dK_j of coef * prod(K)
                rest = coef
                for b, jj in enumerate(idx):
                    if b != a:
                        rest *= k[jj]
                g[j] += rest
        out.append(total)
        grads.append(g)
    return out, grads


def host_theta_grads(dcls: list, t: list[float], dk: list[float]) -> list[Tensor]:
    """``dL/dtheta_j = N_j dL/dK_j`` with the inward-clamp rule of :class:`~slimtrain.core.dcl.DynamicWidth`,
    as 0-d tensors like each ``theta``."""
    res = []
    for ti, d, g in zip(t, dcls, dk):
        n = d.full_channels
        v = n * g
        if (ti < d.min_width / n and v > 0) or (ti > d.max_width / n and v < 0):
            v = 0.0
        res.append(torch.tensor(v, dtype=d.theta.dtype, device=d.theta.device))
    return res


def _compiled(model: nn.Module, g: WidthGraph) -> _CompiledCost:
    c = g.__dict__.get("_compiled_cost")
    if c is None:
        c = _CompiledCost(model, g)
        g.__dict__["_compiled_cost"] = c
    return c


def _widths(model: nn.Module, g: WidthGraph, hard: bool) -> dict[int, Tensor]:
    out = {}
    for r, d in g.dcl_modules(model).items():
        out[r] = torch.tensor(float(d.hard_width)) if hard else d.width
    return out


def _param_or_buffer(model: nn.Module, name: str) -> Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, attr)


def _sides(model: nn.Module, s: LayerSpec, widths: dict, const=lambda v: torch.tensor(float(v))):
    if s.kind in ("param", "prod"):
        kin = widths.get(s.in_root)
        k = const(s.in_size) if kin is None else kin
        return k, k
    m = model.get_submodule(s.name)
    if s.kind == "rnn":
        r = _rnn_module(model, s.name)
        fixed_in, fixed_out = r.input_size, r.hidden_size
    elif s.kind == "linear":
        from .trace import linear_sizes

        fixed_in, fixed_out = linear_sizes(m)
    elif s.kind == "conv":
        fixed_in, fixed_out = m.in_channels, m.out_channels
    elif s.kind == "bn":
        fixed_in = fixed_out = m.num_features
    elif s.kind == "ln":
        fixed_in = fixed_out = m.normalized_shape[-1]
    elif s.kind == "mel":
        inner = m.module if hasattr(m, "module") else m
        fixed_in, fixed_out = inner.n_freqs, inner.n_mels
    elif s.kind == "mha":  # the dynamic side of an attention is its head count
        fixed_in, fixed_out = m.embed_dim, m.num_heads
    elif s.kind == "emb":
        fixed_in, fixed_out = m.num_embeddings, m.embedding_dim
    else:
        fixed_in = fixed_out = 0
    kin = widths.get(s.in_root) if s.in_root is not None else None
    k_in = const(fixed_in) if kin is None else kin * (s.in_outer * s.in_inner)
    if "in_segs" in s.extra:  # a channel concatenation: the sum of its blocks' widths
        k_in = const(0)
        for r, n in s.extra["in_segs"]:
            w = widths.get(r) if r is not None else None
            k_in = k_in + (const(n) if w is None else w)
    kout = widths.get(s.out_root) if s.out_root is not None else None
    k_out = const(fixed_out) if kout is None else kout * (s.extra.get("out_inner", 1) * s.extra.get("out_outer", 1))
    if s.kind in ("bn", "ln"):
        k_out = k_in
    return k_in, k_out


def layer_costs(model: nn.Module, *, hard: bool = False, full: bool = False) -> list[tuple[str, str, Tensor, Tensor]]:
    """Per-layer ``(name, kind, MACs per item, params)`` from the stored width graph."""
    g = get_graph(model)
    if full:  # the model as built, before any compaction
        widths: dict[int, Optional[Tensor]] = {r: torch.tensor(float(d.full_channels))
                                               for r, d in g.dcl_modules(model).items()}
    else:
        widths = dict(_widths(model, g, hard))
    rows = []
    for s in g.layers:
        k_in, k_out = _sides(model, s, widths)
        macs, params = _layer_cost(model, s, k_in, k_out, g.batch)
        rows.append((s.name, s.kind, macs / g.batch, params))
    return rows


def model_cost(model: nn.Module, sample=None, *, hard: Optional[bool] = None, full: bool = False,
               seconds: Optional[float] = None) -> Cost:
    """Total MACs/FLOPs and parameters of a dynamic model, per input item.

    Args:
        model: a model prepared by :func:`slimtrain.make_dynamic` (if ``sample``
            is given and the model is not dynamic yet, it is traced read-only
            with every width fixed).
        hard: use the exported widths ``ceil(K)`` (default: in eval mode);
            otherwise the continuous widths, differentiable in ``K``.
        full: every dynamic width at its full size as built, before any :func:`slimtrain.compact` (the normaliser).
        seconds: duration of one sample item, for :attr:`Cost.flops_per_second`.
    """
    if model.__dict__.get("_slimtrain_graph") is None:
        reject_compiled_wrapper(model)
        if sample is None:
            raise GraphError("model_cost needs a model prepared by make_dynamic, or a sample to trace")
        from .dcl import DynamicWidth

        own = [n for n, m in model.named_modules() if isinstance(m, DynamicWidth)]
        if own:
            raise GraphError(f"the model holds DynamicWidth modules ({', '.join(own[:4])}) but make_dynamic was not "
                             "applied: call slimtrain.make_dynamic(model, sample), which uses them, so the cost "
                             "follows their widths")
        from .graph import _build, _convert_transformers
        from .trace import _tensors, trace_channels

        # trace a copy with nn.TransformerEncoderLayer converted to the equivalent TransformerBlock
        # (as make_dynamic does): the tracer cannot see inside nn.MultiheadAttention
        from .weightnorm import deepcopy_model

        probe = deepcopy_model(model)
        _convert_transformers(probe)
        tr = trace_channels(probe, sample, extended=True)
        probe.__dict__["_slimtrain_graph"] = _build(probe, tr, int(_tensors(sample)[0].shape[0]))
        return model_cost(probe, hard=hard, full=True, seconds=seconds)
    g = get_graph(model)
    if hard is None:
        hard = not model.training
    comp = _compiled(model, g)
    mods = g.dcl_modules(model)
    if full:  # the model as built, before any compaction
        widths = torch.tensor([float(mods[r].full_channels) for r in comp.roots])
    elif hard:
        widths = torch.tensor([float(mods[r].hard_width) for r in comp.roots])
    else:
        macs, params = comp.soft_cost([mods[r] for r in comp.roots])
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        return Cost(macs.to(dev), params.to(dev), seconds)
    macs, params = comp(widths)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return Cost(macs.to(dev), params.to(dev), seconds)


def _counted_params(model: nn.Module, g: WidthGraph):
    from .dcl import DynamicWidth

    for s in g.layers:
        if s.kind in ("linear", "conv", "rnn", "bn", "ln", "emb", "mha"):
            yield from model.get_submodule(s.name).parameters()
        elif s.kind == "param":
            yield _param_or_buffer(model, s.name)
    for m in model.modules():
        if isinstance(m, DynamicWidth):
            yield from m.parameters(recurse=False)
