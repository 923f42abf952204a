"""nn.MultiheadAttention (issue 24, section 2): sequence-first and batch-first inputs, positional or keyword
calls, build a cost (no IndexError), the head count is a learnable width, export keeps the first heads exactly
(PrunedMultiheadAttention) and the cost equals torch's flop counter."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimtrain
from slimtrain.core.modules import PrunedMultiheadAttention

from _archs import AttnNet
from _helpers import count_macs, n_params


CASES = [
    dict(batch_first=False), dict(batch_first=True), dict(batch_first=False, keyword=True),
    dict(batch_first=True, keyword=True), dict(batch_first=False, add_bias_kv=True),
    dict(batch_first=True, add_zero_attn=True), dict(batch_first=False, kdim=10, vdim=10), dict(batch_first=True, bias=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_attention_heads_are_learnable_and_export_exactly(case):
    torch.manual_seed(0)
    model, x = AttnNet(**case).eval(), torch.randn(3, 7, 6)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    heads = [e for e in slimtrain.width_report(model).entries if e.unit == "heads"]
    assert len(heads) == 1 and heads[0].dynamic and heads[0].size == 4 and heads[0].producers == ["att"]
    objective = slimtrain.TradeoffLoss(model, alpha=1.0)  # used to raise IndexError for sequence-first inputs
    model.train()
    objective(model(x).pow(2).mean()).backward()
    dcl = model.get_submodule(heads[0].dcl)
    assert dcl.theta.grad is not None and float(dcl.theta.grad) > 0  # the cost pushes the head count down
    dcl.set_width(2.0)
    model.eval()
    small = slimtrain.export(model)
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    att = small.att
    assert type(att) is PrunedMultiheadAttention and isinstance(att, nn.MultiheadAttention)
    assert att.num_heads == 2 and att.embed_dim == 16 and att.head_dim == 4 and att.out_proj.in_features == 8
    cost = slimtrain.model_cost(model, hard=True)
    assert float(cost.macs) * x.shape[0] == pytest.approx(count_macs(small, x), rel=1e-6)
    assert float(cost.params) == pytest.approx(n_params(small), rel=1e-6)
    full = slimtrain.model_cost(model, full=True)
    assert float(full.macs) > float(cost.macs)


@pytest.mark.parametrize("batch_first", [False, True])
def test_cost_of_fixed_attention_matches_the_counter(batch_first):
    """Read-only cost of a model holding nn.MultiheadAttention, both layouts: equal to FlopCounterMode's."""
    torch.manual_seed(0)
    model, x = AttnNet(batch_first).eval(), torch.randn(2, 5, 6)
    assert float(slimtrain.model_cost(model, x).macs) * 2 == pytest.approx(count_macs(model, x), rel=1e-6)


class TorchEnc(nn.Module):
    """nn.TransformerEncoder as people write it (sequence-first by default), with an optional padding mask."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first),
                                         2, enable_nested_tensor=False)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        pad = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        pad[0, -2:] = True
        if self.batch_first:
            return self.out(self.enc(h, src_key_padding_mask=pad))
        return self.out(self.enc(h.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1))


@pytest.mark.parametrize("batch_first", [False, True])
def test_heads_inside_torch_encoder_layers_are_learnable(batch_first):
    """The heads of nn.TransformerEncoderLayer's attention: exact in eval with torch's fused fast path enabled (the
    dynamic model does not take it while its attention masks heads, the exported one not with a cut attention)."""
    torch.manual_seed(0)
    model, x = TorchEnc(batch_first).eval(), torch.randn(2, 5, 6)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    heads = [e for e in slimtrain.width_report(model).entries if e.unit == "heads"]
    assert len(heads) == 2 and all(e.dynamic for e in heads)
    for e, k in zip(heads, (2.0, 3.0)):
        model.get_submodule(e.dcl).set_width(k)
    assert torch.backends.mha.get_fastpath_enabled()
    small = slimtrain.export(model)
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    assert [layer.self_attn.num_heads for layer in small.enc.layers] == [2, 3]
    assert all(layer.activation_relu_or_gelu == 0 for layer in small.enc.layers)
    cost = slimtrain.model_cost(model, hard=True)
    assert float(cost.macs) * 2 == pytest.approx(count_macs(small, x), rel=1e-6)
    assert float(cost.params) == pytest.approx(n_params(small), rel=1e-6)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("opts", [dict(), dict(add_bias_kv=True), dict(add_zero_attn=True), dict(kdim=5, vdim=3)])
def test_pruned_attention_equals_torch_at_full_heads(batch_first, opts):
    """PrunedMultiheadAttention's own forward is torch's at full width: outputs and attention weights, with
    key-padding and attention masks, batched and unbatched."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 3, batch_first=batch_first, **opts).eval()
    mine = copy.deepcopy(ref)
    mine.__class__ = PrunedMultiheadAttention
    q = torch.randn(4, 2, 12)
    k, v = torch.randn(6, 2, opts.get("kdim", 12)), torch.randn(6, 2, opts.get("vdim", 12))
    if batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    for kw in (dict(), dict(key_padding_mask=pad), dict(attn_mask=torch.randn(4, 6)),
               dict(key_padding_mask=pad, attn_mask=torch.rand(4, 6) > 0.8, average_attn_weights=False)):
        with torch.no_grad():
            a, b = ref(q, k, v, **kw), mine(q, k, v, **kw)
        assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6), kw
    one = (lambda t: t[0]) if batch_first else (lambda t: t[:, 0])
    with torch.no_grad():
        a, b = ref(one(q), one(k), one(v)), mine(one(q), one(k), one(v))
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)


def test_pruned_attention_names_a_per_head_mask_of_the_full_model():
    from slimtrain.core.export import _cut_mha_heads

    att = nn.MultiheadAttention(8, 4)
    _cut_mha_heads(att, 2)  # what export does to an attention that keeps 2 of its 4 heads
    assert type(att) is PrunedMultiheadAttention and att.in_proj_weight.shape == (12, 8)
    with pytest.raises(ValueError, match="batch \\* num_heads = 4 rows.*keeps 2 heads"):
        att(torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8), attn_mask=torch.zeros(8, 3, 3))


class OwnWeightsAttention(nn.Module):
    """WavLM's pattern: q/k/v/out Linear layers whose weights go to F.multi_head_attention_forward."""

    def __init__(self, e: int = 16, h: int = 4):
        super().__init__()
        self.e, self.h = e, h
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(e, e) for _ in range(4))

    def forward(self, x):  # (time, batch, e)
        out, _ = torch.nn.functional.multi_head_attention_forward(
            x, x, x, self.e, self.h, torch.empty([0]),
            torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)), None, None, False, 0.0,
            self.out_proj.weight, self.out_proj.bias, False, None, False, None, use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight)
        return out


def test_attention_through_the_functional_form_is_fixed_with_the_reason_and_costed():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.att = OwnWeightsAttention()
            self.ff = nn.Linear(16, 24)
            self.out = nn.Linear(24, 3)

        def forward(self, x):
            a = self.att(self.inp(x).transpose(0, 1)).transpose(0, 1)
            return self.out(torch.relu(self.ff(a)))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(2, 5, 6)
    assert float(slimtrain.model_cost(model, x).macs) * 2 == pytest.approx(count_macs(model, x), rel=1e-6)
    plan = slimtrain.plan_widths(model, x)
    fixed = {p: e.reason for e in plan.fixed for p in e.producers}
    assert "num_heads * head_dim == embed_dim" in fixed["inp"]


def test_keyword_called_sequence_first_attention_on_a_fixed_residual_builds_its_cost():
    """The issue's crash: a sequence-first attention called as attn(query=..., key=..., value=...) whose residual is
    the model input. Before, its traced input shape was empty and TradeoffLoss raised IndexError in the cost."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(16, 4)
            self.ff = nn.Linear(16, 24)
            self.out = nn.Linear(24, 3)

        def forward(self, x):
            s = x.transpose(0, 1)
            h = s + self.att(query=s, key=s, value=s, need_weights=False)[0]
            return self.out(torch.relu(self.ff(h.transpose(0, 1))))

    torch.manual_seed(0)
    model, x = M().eval(), torch.randn(2, 5, 16)
    slimtrain.make_dynamic(model, x)
    loss = slimtrain.TradeoffLoss(model, alpha=1.0)(torch.tensor(0.0))
    assert torch.isfinite(loss)
    spec = next(s for s in slimtrain.get_graph(model).layers if s.name == "att")
    assert spec.in_shape == (5, 2, 16)
    small = slimtrain.export(model)
    assert float(slimtrain.model_cost(model, hard=True).macs) * 2 == pytest.approx(count_macs(small, x), rel=1e-6)


def test_attention_cost_names_shapes_it_cannot_read():
    from slimtrain.core.cost import _mha_cost
    from slimtrain.core.graph import GraphError, LayerSpec

    att = nn.MultiheadAttention(16, 4)
    spec = LayerSpec("enc.att", "mha", None, 0, 1, 1, None, 4, (), (5, 2, 16), {"kv_shapes": []})
    with pytest.raises(GraphError, match=r"nn.MultiheadAttention 'enc.att': query shape \(\)"):
        _mha_cost(att, spec, 16, 0)
