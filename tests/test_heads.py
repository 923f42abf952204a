"""Attention heads as a learnable width: the HF q/k/v + reshape + matmul/SDPA form."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import slimtrain
from _helpers import count_macs, n_params


class SelfAttention(nn.Module):
    """The transformers layout: q/k/v Linear, view to heads, products, merge, output Linear."""

    def __init__(self, d: int = 16, heads: int = 4, head_dim: int = 5, sdpa: bool = False) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, head_dim
        self.all_head_size = heads * head_dim
        self.query, self.key, self.value = (nn.Linear(d, self.all_head_size) for _ in range(3))
        self.dense = nn.Linear(self.all_head_size, d)
        self.sdpa = sdpa

    def forward(self, x, mask):
        b, t, _ = x.shape
        shape = (b, t, self.num_attention_heads, self.attention_head_size)
        q, k, v = (lin(x).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))
        if self.sdpa:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size) + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(b, t, self.all_head_size)
        return self.dense(ctx)


class Net(nn.Module):
    def __init__(self, sdpa: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = SelfAttention(sdpa=sdpa)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        mask = torch.zeros(x.shape[0], 1, 1, x.shape[1])
        mask[0, ..., -1] = -1e4  # padding of the first item
        h = self.inp(x)
        h = h + self.attn(h, mask)
        return self.out(h.mean(1))


@pytest.mark.parametrize("sdpa", [False, True])
def test_heads_are_one_learnable_width_and_export_cuts_whole_heads(sdpa):
    torch.manual_seed(0)
    m = Net(sdpa)
    x = torch.randn(3, 7, 6)
    slimtrain.make_dynamic(m, x)
    plan = slimtrain.width_report(m)
    heads = next(e for e in plan.entries if "attn.query" in e.producers)
    assert heads.dynamic and heads.size == 4 and set(heads.producers) == {"attn.query", "attn.key", "attn.value"}
    assert heads.unit == "heads"
    m.train()
    c0 = slimtrain.model_cost(m)
    m(x).sum().backward()
    c0.macs.backward()
    assert m.attn.query.dcl.theta.grad is not None and m.attn.query.dcl.theta.grad > 0  # fewer heads cost less
    m.attn.query.dcl.set_width(2.4)  # -> 3 heads
    m.inp.dcl.set_width(11)
    m.eval()
    small = slimtrain.export(m)
    a = small.attn
    assert (a.num_attention_heads, a.all_head_size, a.attention_head_size) == (3, 15, 5)
    assert (a.query.out_features, a.value.out_features, a.dense.in_features) == (15, 15, 15)
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    cost = slimtrain.model_cost(m, hard=True)
    assert cost.params.item() == n_params(small)
    full = slimtrain.model_cost(m, full=True).macs.item()
    assert cost.macs.item() < full
    if not sdpa:  # FlopCounterMode does not count CPU scaled_dot_product_attention
        assert cost.macs.item() == pytest.approx(count_macs(small, x) / 3, rel=1e-6)
    # attention products are in the cost: 2 products of T*T*head_dim per head and item
    t, hd = 7, 5
    per_head = 2 * t * t * hd
    m.attn.query.dcl.set_width(4)
    four = slimtrain.model_cost(m, hard=True).macs.item()
    m.attn.query.dcl.set_width(3)
    three = slimtrain.model_cost(m, hard=True).macs.item()
    proj = 3 * t * 11 * hd + t * hd * 11  # q/k/v rows and dense columns of one head
    assert four - three == pytest.approx(per_head + proj)


def test_transformer_block_head_count_is_learnable_and_exported():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), slimtrain.TransformerBlock(16, 4, 24, dropout=0.0), nn.Linear(16, 2))
    x = torch.randn(2, 5, 6)
    slimtrain.make_dynamic(m, x)
    m[1].q.dcl.set_width(2)
    m.eval()
    small = slimtrain.export(m)
    assert small[1].nhead == 2 and small[1].q.out_features == 8 and small[1].out.in_features == 8
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    assert slimtrain.model_cost(m, hard=True).macs.item() == pytest.approx(count_macs(small, x) / 2, rel=1e-6)


def test_plain_trace_api_keeps_channel_counts():
    """trace_channels(model, sample) (read by slimtrain.reorder and others) still reports channels;
    heads, channel concatenations and parameter containers are followed only with extended=True."""
    from slimtrain.core.trace import trace_channels

    m = Net()
    x = torch.randn(3, 7, 6)
    plain = trace_channels(m, x)
    ext = trace_channels(m, x, extended=True)
    q = next(u for u in plain.uses if u.name == "attn.query")
    assert plain.groups[q.out_group].size == 20 and "out_inner" not in q.extra
    q = next(u for u in ext.uses if u.name == "attn.query")
    assert ext.groups[q.out_group].size == 4 and q.extra["out_inner"] == 5


class WidthNet(nn.Module):
    """A residual TransformerBlock stack whose attention learns the dimensions per head."""

    def __init__(self, heads: int = 2, attn: int = 12, causal: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blk = slimtrain.TransformerBlock(16, heads, 24, dropout=0.0, norm_first=True, attn_dim=attn,
                                              causal=causal)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.blk(self.inp(x)))


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([1, 2, 3]), head_dim=st.integers(2, 6), causal=st.booleans(),
       shares=st.lists(st.floats(0, 1), min_size=4, max_size=4), seed=st.integers(0, 1000))
def test_per_head_width_exports_exactly_and_costs_what_the_flop_counter_counts(heads, head_dim, causal, shares, seed):
    torch.manual_seed(seed)
    m = WidthNet(heads, heads * head_dim, causal)
    x = torch.randn(2, 5, 6)
    slimtrain.make_dynamic(m, x, kappa_min=0.1, heads="width")
    qk, v = m.blk.q.dcl, m.blk.v.dcl
    assert m.blk.k.dcl is qk and v is not qk  # q @ k^T contracts the query and key widths: one width
    assert qk.num_channels == v.num_channels == head_dim
    dcls = [d for d in m.modules() if isinstance(d, slimtrain.DynamicWidth)]
    dcls = list({id(d): d for d in dcls}.values())
    for d, u in zip(dcls, shares + [0.5] * len(dcls)):
        d.set_width(d.min_width + u * (d.max_width - d.min_width))
    m.eval()
    small = slimtrain.export(m)
    kq, kv = qk.hard_width, v.hard_width
    assert small.blk.nhead == heads  # every head kept, each narrower
    assert (small.blk.q.out_features, small.blk.k.out_features) == (heads * kq, heads * kq)
    assert (small.blk.v.out_features, small.blk.out.in_features, small.blk.attn_dim) == (heads * kv,) * 3
    with torch.no_grad():
        torch.testing.assert_close(small(x), m(x), rtol=1e-5, atol=1e-5)
    cost = slimtrain.model_cost(m, hard=True)
    assert cost.macs.item() == pytest.approx(count_macs(small, x) / 2, rel=1e-6)
    assert cost.params.item() == n_params(small)


def test_per_head_width_gets_gradients_and_the_cost_falls_with_it():
    torch.manual_seed(0)
    m = WidthNet()
    x = torch.randn(3, 5, 6)
    slimtrain.make_dynamic(m, x, kappa_min=0.1, heads="width")
    qk = m.blk.q.dcl
    entry = next(e for e in slimtrain.width_report(m).entries if "blk.q" in e.producers)
    assert (entry.size, entry.unit, set(entry.producers)) == (6, "per head, 2 heads", {"blk.q", "blk.k"})
    assert "6 (per head, 2 heads)" in str(slimtrain.width_report(m))
    qk.set_width(3.4)
    m.train()
    m(x).square().sum().backward()
    assert qk.theta.grad is not None and qk.theta.grad != 0  # the task reaches the per-head width
    qk.theta.grad = None
    slimtrain.model_cost(m).macs.backward()
    assert qk.theta.grad > 0  # a wider head costs more
    # one more dimension in every head of q and k: the two projections' rows, and q @ k^T over T*T per head
    t, heads = 5, 2
    qk.set_width(4)
    four = slimtrain.model_cost(m, hard=True).macs.item()
    qk.set_width(3)
    three = slimtrain.model_cost(m, hard=True).macs.item()
    assert four - three == pytest.approx(heads * (2 * t * 16 + t * t))


class LiteralHeadDim(SelfAttention):
    """HF style: ``view(b, t, -1, head_dim)`` with a literal head_dim, which a cut would not follow."""

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, -1, self.attention_head_size).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size) + mask
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.dense(ctx.transpose(1, 2).reshape(b, t, self.all_head_size))


def test_per_head_width_refuses_a_literal_head_dim_and_bad_settings():
    m = Net()
    m.attn = LiteralHeadDim()
    x = torch.randn(3, 7, 6)
    with pytest.raises(slimtrain.GraphError, match="attn.query"):
        slimtrain.make_dynamic(m, x, layers=["attn.query"], heads="width")
    slimtrain.make_dynamic(m, x, heads="width")  # default selection: those widths stay fixed, the rest learns
    plan = slimtrain.width_report(m)
    q = next(e for e in plan.entries if "attn.query" in e.producers)
    assert not q.dynamic
    with pytest.raises(slimtrain.GraphError, match="heads must be"):
        slimtrain.make_dynamic(Net(), x, heads="dims")


def test_reordering_keeps_the_attention_widths_in_order_and_the_output():
    """reorder= with per-head widths: the residual and feed-forward channels are sorted, the per-head
    dimensions keep their order (the products are opaque to the reordering trace), the function stays."""
    torch.manual_seed(3)
    m = WidthNet()
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        before = m.eval()(x)
    q_bias = m.blk.q.bias.detach().clone()
    slimtrain.make_dynamic(m, x, kappa_min=0.1, heads="width", reorder="magnitude")
    assert torch.equal(m.blk.q.bias, q_bias)  # q's output dimensions keep their order (its inputs were sorted)
    assert m.blk.q.dcl.num_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), before, rtol=1e-5, atol=1e-5)
