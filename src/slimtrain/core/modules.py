"""Wrappers that put a :class:`~slimtrain.core.dcl.DynamicWidth` on a layer's output.

* :class:`DynamicOutput` applies a DCL after any module (Linear, conv, BatchNorm...).
* :class:`DynamicRecurrent` makes the hidden size of a GRU/LSTM dynamic: the
  recurrent weights that read hidden channel ``c`` are scaled by the channel's
  signal weight, so in eval mode channels above ``ceil(K)`` never reach the
  recurrence or the output: exactly a GRU/LSTM with ``ceil(K)`` hidden units.
  Noise is injected on the output sequence (not inside the recurrence).
* :class:`MaskedLayerNorm` normalises only over the channels a DCL keeps.
* :class:`TransformerBlock` is an attention block with plain ``nn.Linear``
  parts, equivalent to ``nn.TransformerEncoderLayer``, whose model width and
  feed-forward width can be made dynamic.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .dcl import DynamicWidth, _width_value, first_order_backward, standard_width

__all__ = ["DynamicOutput", "DynamicRecurrent", "MaskedLayerNorm", "PrunedMultiheadAttention", "TransformerBlock"]


class DynamicOutput(nn.Module):
    """``dcl(module(x))``: the wrapped module's output channels get a learnable width."""

    def __init__(self, module: nn.Module, dcl: DynamicWidth, dim: Optional[int] = None) -> None:
        super().__init__()
        self.module = module
        self.dcl = dcl
        self.dim = dcl.dim if dim is None else dim

    def forward(self, *args, **kwargs):
        return self.dcl(self.module(*args, **kwargs), dim=self.dim)


class DynamicRecurrent(nn.Module):
    """A GRU/LSTM whose hidden size is the width of ``dcl``."""

    def __init__(self, rnn: nn.Module, dcl: DynamicWidth) -> None:
        super().__init__()
        if not isinstance(rnn, (nn.GRU, nn.LSTM)):
            raise TypeError(f"DynamicRecurrent wraps nn.GRU or nn.LSTM, got {type(rnn).__name__}")
        if getattr(rnn, "proj_size", 0):
            raise TypeError("LSTM with proj_size > 0 is not supported for a dynamic hidden size")
        if dcl.num_channels != rnn.hidden_size:
            raise ValueError(f"DCL has {dcl.num_channels} channels but hidden_size is {rnn.hidden_size}")
        self.rnn = rnn
        self.dcl = dcl

    def _masked_params(self, mask: Tensor) -> dict[str, Tensor]:
        params = dict(self.rnn.named_parameters())
        dirs = 2 if self.rnn.bidirectional else 1
        for name, p in list(params.items()):
            if name.startswith("weight_hh"):
                params[name] = p * mask.to(p.dtype)
            elif name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
                params[name] = p * mask.repeat(dirs).to(p.dtype)
        return params

    def forward(self, x: Tensor, hx=None):
        dcl = self.dcl
        if dcl.passes_whole(x):  # settled or eval at full width: nothing is masked
            return self.rnn(x) if hx is None else self.rnn(x, hx)
        mask = dcl.mask()
        out, h = functional_call(self.rnn, self._masked_params(mask), (x,) if hx is None else (x, hx))
        dirs = 2 if self.rnn.bidirectional else 1
        if dirs == 1:
            out = dcl(out, dim=-1)
        else:
            n = self.rnn.hidden_size
            out = torch.cat([dcl(out[..., :n], dim=-1), dcl(out[..., n:], dim=-1)], dim=-1)
        m = mask.to(out.dtype)
        h = tuple(t * m for t in h) if isinstance(h, tuple) else h * m
        return out, h


class _HostMaskedLayerNorm(torch.autograd.Function):
    """The eager-CPU fast path of :func:`masked_layer_norm` in training: the same values and gradients
    (to float rounding) in one autograd node with a hand-written backward, instead of the ~15 autograd
    nodes of the tensor form (a DCL training step of the VAD Transformer spent more in them than in
    its four LayerNorms' arithmetic).

    With ``w_j = clamp(K - j, 0, 1)`` (``K = N`` while held), ``W = sum w``, ``m_j = sin(pi/2 w_j)``:
    ``mu = <x, w> / W``, ``var = <(x - mu)^2, w> / W``, ``r = (var + eps)^-1/2``, ``yh = (x - mu) r``,
    ``y = (yh gamma + beta) m``. Backward with ``gm = g gamma m``, ``S1 = sum_j gm_j``, ``S2 = sum_j gm_j yh_j``:
    ``dx = r (gm - w / W (S1 + yh S2))``; ``dgamma = sum g yh m``, ``dbeta = sum g m``; and for the width
    ``dL/dw_j = sum[-yh_j S1 / W - S2 (yh_j^2 - var r^2) / (2W)] + pi/2 cos(pi/2 w_j) sum g_j (yh_j gamma_j + beta_j)``
    over the channels where the clamp of ``w_j`` passes a gradient (``0 <= K - j <= 1``), ``dL/dtheta = U dL/dK``
    with the inward-clamp rule of :class:`~slimtrain.core.dcl.DynamicWidth`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                dcl: DynamicWidth, eps: float) -> Tensor:  # type: ignore[override]
        n, u = dcl.num_channels, dcl.full_channels
        lo, hi = dcl.min_width / u, dcl.max_width / u
        held = bool(dcl._hold)
        t = theta.item()
        k = float(n) if held else _width_value(t, lo, hi, u, theta.dtype)
        i = min(int(math.floor(k)), n)
        total = float(n) if held else k  # sum of the shares: i whole channels and k - i of channel i
        zeros = [0.0] * (n - i - 1)
        if i < n:  # rows: the shares w, w / total, and the signal weights m = sin(pi/2 w)
            rows = [[1.0] * i + [k - i] + zeros, [1.0 / total] * i + [(k - i) / total] + zeros,
                    [1.0] * i + [math.sin(0.5 * math.pi * (k - i))] + zeros]
        else:
            rows = [[1.0] * n, [1.0 / total] * n, [1.0] * n]
        w, wt, m = torch.tensor(rows, dtype=x.dtype).unbind(0)
        xc = x - torch.matmul(x, wt).unsqueeze(-1)
        var = torch.matmul(xc * xc, wt)
        r = (var + eps).rsqrt_().unsqueeze(-1)
        yh = xc.mul_(r)
        a = m if weight is None else weight.detach() * m
        y = yh * a if bias is None else torch.addcmul(bias.detach() * m, yh, a)
        ctx.save_for_backward(yh, r, var, wt, m, weight, bias)
        ctx.k, ctx.i, ctx.n, ctx.u, ctx.t, ctx.lo, ctx.hi, ctx.held, ctx.total = k, i, n, u, t, lo, hi, held, total
        return y

    @staticmethod
    @first_order_backward
    def backward(ctx, g: Tensor):  # type: ignore[override]
        yh, r, var, wt, m, weight, bias = ctx.saved_tensors
        total, n, k = ctx.total, ctx.n, ctx.k
        a = m if weight is None else weight * m
        gx = gt = gw = gb = None
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not ctx.held
        need_w = weight is not None and ctx.needs_input_grad[2]
        need_b = bias is not None and ctx.needs_input_grad[3]
        gy = g * yh if need_x or need_w or need_t else None
        gy_sum = gy.reshape(-1, n).sum(0) if need_w or need_t else None
        g_sum = g.reshape(-1, n).sum(0) if need_b or need_t else None
        if need_x or need_t:
            s1 = torch.matmul(g, a).unsqueeze(-1)
            s2 = torch.matmul(gy, a).unsqueeze(-1)
        if need_x:
            gx = torch.addcmul(g * a, torch.addcmul(s1, yh, s2), wt, value=-1.0).mul_(r)
        if need_w:
            gw = gy_sum * m
        if need_b:
            gb = g_sum * m
        if ctx.needs_input_grad[1]:
            v = 0.0
            js = [j for j in (ctx.i - 1, ctx.i) if 0 <= j < n and 0.0 <= k - j <= 1.0]  # where the clamp passes
            if need_t and js:  # the few sums over rows in NumPy (small arrays: less per-call overhead than torch)
                ys = yh.detach().reshape(-1, n).numpy()
                s1f, s2f = s1.detach().reshape(-1).numpy(), s2.detach().reshape(-1).numpy()
                rf = r.detach().reshape(-1).numpy()
                sr = float(np.dot(s2f, var.detach().numpy().reshape(-1) * rf * rf))  # sum S2 var r^2
                gys, gs = gy_sum.detach().numpy(), g_sum.detach().numpy()
                gam = None if weight is None else weight.detach().numpy()
                bet = None if bias is None else bias.detach().numpy()
                for j in js:
                    col = ys[:, j]
                    wj = min(max(k - j, 0.0), 1.0)
                    stats = -(float(np.dot(s1f, col)) + 0.5 * (float(np.dot(s2f, col * col)) - sr)) / total
                    gm = float(gys[j]) * (1.0 if gam is None else float(gam[j])) \
                        + (0.0 if bet is None else float(gs[j]) * float(bet[j]))
                    v += stats + 0.5 * math.pi * math.cos(0.5 * math.pi * wj) * gm
                v *= ctx.u
                if (ctx.t < ctx.lo and v > 0) or (ctx.t > ctx.hi and v < 0):  # inward clamp rule
                    v = 0.0
            gt = torch.tensor(v, dtype=yh.dtype)
        return gx, gt, gw, gb, None, None


def _host_masked_ln_ok(x: Tensor, dcl: DynamicWidth, weight: Optional[Tensor], bias: Optional[Tensor]) -> bool:
    """The eager-CPU case (float32 or float64 throughout) that :class:`_HostMaskedLayerNorm` and the sliced
    eval form cover."""
    return (dcl.host_fast_path and standard_width(dcl) and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and dcl.theta.dtype == x.dtype and dcl.theta.device.type == "cpu" and x.dim() >= 1
            and x.shape[-1] == dcl.num_channels and not torch.compiler.is_compiling()
            and all(p is None or (p.dtype == x.dtype and p.device.type == "cpu") for p in (weight, bias)))


def masked_layer_norm(x: Tensor, dcl: DynamicWidth, weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float) -> Tensor:
    """LayerNorm over the last axis whose statistics count channel ``i`` with the weight
    ``clamp(K - i, 0, 1)`` of ``dcl`` (its hard mask in eval or when frozen); channels outside the
    width are zero on output."""
    soft = dcl.training and not dcl.frozen
    if _host_masked_ln_ok(x, dcl, weight, bias):
        if soft:
            return _HostMaskedLayerNorm.apply(x, dcl.theta, weight, bias, dcl, eps)
        h = dcl._host_hard_width(x)
        if h is not None:  # a LayerNorm of the first h channels; the channels above are zero
            n = dcl.num_channels
            if h >= n:
                return F.layer_norm(x, (n,), weight, bias, eps)
            part = F.layer_norm(x[..., :h], (h,), None if weight is None else weight[:h],
                                None if bias is None else bias[:h], eps)
            return F.pad(part, (0, n - h))
    share = dcl.keep_share() if soft else dcl.hard_mask()
    w = share.to(x.dtype)
    total = w.sum()
    mean = (x * w).sum(-1, keepdim=True) / total
    var = (((x - mean) ** 2) * w).sum(-1, keepdim=True) / total
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    # dcl.mask() from the share already computed (one evaluation of the width per call, not two)
    return y * (torch.sin(0.5 * math.pi * share).to(x.dtype) if soft else w)


class MaskedLayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis whose statistics use only the kept channels.

    With ``width_source`` unset it is an ordinary LayerNorm. Bound to a DCL
    (done by :func:`slimtrain.make_dynamic`), channel ``i`` counts with weight
    ``clamp(K - i, 0, 1)`` (hard width in eval), and channels outside the
    width are zero on output, so eval mode equals a LayerNorm of ``ceil(K)``.
    """

    def bind(self, dcl: Optional[DynamicWidth]) -> None:
        object.__setattr__(self, "_width_source", dcl)

    def forward(self, x: Tensor) -> Tensor:
        dcl: Optional[DynamicWidth] = getattr(self, "_width_source", None)
        if dcl is None:
            return super().forward(x)
        return masked_layer_norm(x, dcl, self.weight, self.bias, self.eps)


def _count_cpu_attention() -> None:
    """Teach ``torch.utils.flop_counter`` the CPU fused attention kernel (it counts the CUDA kernels but
    gives 0 for ``_scaled_dot_product_flash_attention_for_cpu``), so counting a training step of a
    :class:`TransformerBlock` sees its attention products on every device. Same formulas as torch's."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd.default not in fc.flop_registry and fwd not in fc.flop_registry:
        fc.register_flop_formula(fwd)(lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
    if bwd is not None and bwd.default not in fc.flop_registry and bwd not in fc.flop_registry:
        fc.register_flop_formula(bwd)(
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))


_count_cpu_attention()


class TransformerBlock(nn.Module):
    """Self-attention + feed-forward block built from plain ``nn.Linear`` layers.

    Same maths as ``nn.TransformerEncoderLayer`` (batch-first, ReLU or GELU,
    ``norm_first`` selectable; dropout is off in eval). The attention inner
    width stays ``d_model`` so the number of heads is unaffected by a dynamic
    model width; see :meth:`from_torch` to convert a PyTorch layer exactly.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        attn_dim: Optional[int] = None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        attn_dim = attn_dim or d_model
        if attn_dim % nhead:
            raise ValueError(f"attention width {attn_dim} is not divisible by nhead={nhead}")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.nhead, self.attn_dim, self.d_model = nhead, attn_dim, d_model
        # the score divisor sqrt(head_dim) of the model as built: a constant, so that a model whose head
        # width is cut (make_dynamic(heads="width"), export) computes the same scores as before the cut
        self.score_div = math.sqrt(attn_dim // nhead)
        self.q = nn.Linear(d_model, attn_dim)
        self.k = nn.Linear(d_model, attn_dim)
        self.v = nn.Linear(d_model, attn_dim)
        self.out = nn.Linear(attn_dim, d_model)
        self.ff1 = nn.Linear(d_model, dim_feedforward)
        self.ff2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = MaskedLayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = MaskedLayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation
        self.norm_first = norm_first
        self.causal = causal
        # a state dict of the nn.TransformerEncoderLayer this block replaces loads too (see _from_torch_keys)
        self._register_load_state_dict_pre_hook(self._from_torch_keys)

    def _from_torch_keys(self, state_dict, prefix, *args) -> None:
        """Rename ``nn.TransformerEncoderLayer`` keys (``self_attn.in_proj_weight``...) to this block's."""
        w = state_dict.pop(prefix + "self_attn.in_proj_weight", None)
        b = state_dict.pop(prefix + "self_attn.in_proj_bias", None)
        if w is not None:
            for i, name in enumerate(("q", "k", "v")):
                state_dict[f"{prefix}{name}.weight"] = w.chunk(3)[i]
                if b is not None:
                    state_dict[f"{prefix}{name}.bias"] = b.chunk(3)[i]
        for old, new in (("self_attn.out_proj.", "out."), ("linear1.", "ff1."), ("linear2.", "ff2.")):
            for k in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + k[len(prefix + old):]] = state_dict.pop(k)

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> "TransformerBlock":
        """An exact copy of a batch-first ``nn.TransformerEncoderLayer``."""
        if not layer.self_attn.batch_first:
            raise ValueError("only batch_first=True TransformerEncoderLayer can be converted")
        act = layer.activation
        name = "gelu" if act is F.gelu or isinstance(act, nn.GELU) else "relu" if act is F.relu or isinstance(act, nn.ReLU) else None
        if name is None:
            raise ValueError(f"unsupported activation {act!r} in TransformerEncoderLayer")
        d = layer.self_attn.embed_dim
        blk = cls(d, layer.self_attn.num_heads, layer.linear1.out_features, layer.dropout.p, name,
                  layer.norm_first, layer.norm1.eps)
        w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        with torch.no_grad():
            for i, lin in enumerate((blk.q, blk.k, blk.v)):
                lin.weight.copy_(w[i * d:(i + 1) * d])
                lin.bias.copy_(b[i * d:(i + 1) * d])
            blk.out.load_state_dict(layer.self_attn.out_proj.state_dict())
            blk.ff1.load_state_dict(layer.linear1.state_dict())
            blk.ff2.load_state_dict(layer.linear2.state_dict())
            blk.norm1.load_state_dict(layer.norm1.state_dict())
            blk.norm2.load_state_dict(layer.norm2.state_dict())
        return blk

    def _attn(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        h = self.nhead
        q = self.q(x).view(b, t, h, -1).transpose(1, 2)
        k = self.k(x).view(b, t, h, -1).transpose(1, 2)
        v = self.v(x).view(b, t, h, -1).transpose(1, 2)
        div = getattr(self, "score_div", None) or math.sqrt(q.shape[-1])  # (blocks pickled before it existed)
        if self.training and torch.is_grad_enabled():
            # a training step: torch's fused kernel (no T x T tensors kept for backward, causal blocks skipped;
            # 2-4x faster at T = 400 on CPU, cost falling with the head width as the products' does)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0 / div)
            return self.dropout(self.out(a.transpose(1, 2).reshape(b, t, -1)))
        # inference, tracing and cost counting: explicit products, which ONNX export and every FLOP counter read
        scores = torch.matmul(q, k.transpose(-2, -1)) / div
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        a = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.dropout(self.out(a.transpose(1, 2).reshape(b, t, -1)))

    def _ff(self, x: Tensor) -> Tensor:
        act = F.gelu if self.activation == "gelu" else F.relu
        return self.dropout(self.ff2(self.dropout(act(self.ff1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"TransformerBlock expects (batch, time, d_model), got shape {tuple(x.shape)}")
        if self.norm_first:
            x = x + self._attn(self.norm1(x))
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._attn(x))
        return self.norm2(x + self._ff(x))


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose inner width ``num_heads * head_dim`` is below its ``embed_dim``.

    :func:`slimtrain.export` turns an ``nn.MultiheadAttention`` whose heads were cut into this class
    (``__class__`` swapped: the same parameters, names and state-dict keys; ``in_proj_weight`` holds
    ``3 * num_heads * head_dim`` rows). ``embed_dim`` stays the query and output width and ``head_dim``
    the per-head size; torch's ``F.multi_head_attention_forward`` cannot run it because it requires
    the inner width to equal the query width. The computation is the same as torch's (explicit
    ``baddbmm``/``bmm`` products, so FLOP counters see them), with ``batch_first``, unbatched inputs,
    key-padding and attention masks, ``is_causal``, ``bias_k``/``bias_v``, ``add_zero_attn``,
    separate ``kdim``/``vdim`` and ``need_weights``/``average_attn_weights``.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt, bsz, _ = query.shape
        h, hd = self.num_heads, self.head_dim
        inner = h * hd
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt, key.shape[0], dtype=torch.bool, device=query.device).triu(1)
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(inner)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.shape[0] != bsz * h:
                raise ValueError(f"a 3-d attn_mask needs batch * num_heads = {bsz * h} rows (this attention keeps "
                                 f"{h} heads after export), got shape {tuple(attn_mask.shape)}")
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        q = q.reshape(tgt, bsz * h, hd).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * h, hd).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * h, hd).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz * h, 1, hd)], dim=1)
            v = torch.cat([v, v.new_zeros(bsz * h, 1, hd)], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src = k.shape[1]
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, src).expand(-1, h, -1, -1).reshape(bsz * h, 1, src)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        q = q * math.sqrt(1.0 / float(hd))
        kt = k.transpose(-2, -1)
        scores = torch.bmm(q, kt) if attn_mask is None else torch.baddbmm(attn_mask, q, kt)
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt * bsz, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias).view(tgt, bsz, -1)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        weights = weights.view(bsz, h, tgt, src)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, (weights if batched else weights.squeeze(0))
