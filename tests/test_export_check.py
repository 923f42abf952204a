"""Attention classes that derive their head size at run time (issue 24, section 2): export updates every size
attribute the module holds (by value), and runs the sample through the exported model, turning a failure into an
ExportError that names the module and the attributes involved."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimtrain
from slimtrain.core.export import ExportError

from _archs import HeadNet, RuntimeHeadAttention
from _helpers import count_macs

def _heads(model):
    return next(e for e in slimtrain.width_report(model).entries if e.unit == "heads")

def test_runtime_head_size_follows_the_cut():
    torch.manual_seed(0)
    model, x = HeadNet().eval(), torch.randn(2, 5, 8)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    e = _heads(model)
    assert e.dynamic and e.size == 4
    model.get_submodule(e.dcl).set_width(3.0)
    small = slimtrain.export(model)
    assert small.att.n_heads == 3 and small.att.dim == 24  # dim // n_heads is still the head size, 8
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    assert float(slimtrain.model_cost(model, hard=True).macs) * 2 == pytest.approx(count_macs(small, x), rel=1e-6)

def test_a_forward_that_fails_after_export_names_the_module_and_attributes(monkeypatch):
    """With the attributes left as they were (the behaviour before), the cut model's reshape fails: export says
    where and which integer attributes still hold a size it cut."""
    import sys

    ex = sys.modules["slimtrain.export"]  # the module (slimtrain.export is also the function)

    torch.manual_seed(0)
    model, x = HeadNet().eval(), torch.randn(2, 5, 8)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    model.get_submodule(_heads(model).dcl).set_width(3.0)
    monkeypatch.setattr(ex, "_set_head_counts", lambda *a: {})
    with pytest.raises(ExportError, match=r"fails on the sample in module 'att' \(RuntimeHeadAttention\).*"
                                          r"export cut 'att\.q_lin', 'att\.k_lin', 'att\.v_lin', 'att\.out_lin'.*att\.n_heads=4, att\.dim=32"):
        slimtrain.export(model)

class ReadsATuple(RuntimeHeadAttention):
    """Reads its head layout from a tuple export cannot know: the failure is reported, never silent."""

    def __init__(self):
        super().__init__()
        self.layout = (self.n_heads, self.dim // self.n_heads)

    def forward(self, query):
        bs = query.shape[0]
        q, k, v = (lin(query).view(bs, -1, *self.layout).transpose(1, 2) for lin in (self.q_lin, self.k_lin, self.v_lin))
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)), dim=-1)
        return self.out_lin(torch.matmul(weights, v).transpose(1, 2).reshape(bs, -1, self.dim))

def test_an_attribute_export_cannot_update_is_named():
    torch.manual_seed(0)
    model, x = HeadNet(ReadsATuple).eval(), torch.randn(2, 5, 8)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    model.get_submodule(_heads(model).dcl).set_width(3.0)
    with pytest.raises(ExportError, match=r"module 'att' \(ReadsATuple\).*export set att\.n_heads 4 -> 3, "
                                          r"att\.dim 32 -> 24; export cut 'att\.q_lin'"):
        slimtrain.export(model)

def test_transformers_distilbert_exports_with_cut_heads():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, hidden_dim=48,
                                        max_position_embeddings=16, dropout=0.0, attention_dropout=0.0,
                                        attn_implementation="eager")

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = transformers.DistilBertModel(cfg)
            self.head = nn.Linear(32, 3)

        def forward(self, ids):
            return self.head(self.backbone(ids).last_hidden_state)

    torch.manual_seed(0)
    model = Head().eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    slimtrain.make_dynamic(model, ids, kappa_min=0.25)
    heads = [e for e in slimtrain.width_report(model).entries if e.unit == "heads"]
    assert heads and all(e.dynamic for e in heads)
    for e in heads:
        model.get_submodule(e.dcl).set_width(2.0)
    small = slimtrain.export(model)
    with torch.no_grad():
        assert float((model(ids) - small(ids)).abs().max()) <= 1e-5
    att = small.backbone.transformer.layer[0].attention
    assert att.n_heads == 2 and att.q_lin.out_features == 16
