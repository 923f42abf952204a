"""Attention heads as a learnable width: the HF q/k/v + reshape + matmul/SDPA form."""
from __future__ import annotations

import math

import pytest
import torch
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
    from slimtrain.trace import trace_channels

    m = Net()
    x = torch.randn(3, 7, 6)
    plain = trace_channels(m, x)
    ext = trace_channels(m, x, extended=True)
    q = next(u for u in plain.uses if u.name == "attn.query")
    assert plain.groups[q.out_group].size == 20 and "out_inner" not in q.extra
    q = next(u for u in ext.uses if u.name == "attn.query")
    assert ext.groups[q.out_group].size == 4 and q.extra["out_inner"] == 5
