"""Partial dynamism: what cannot shrink stays fixed, the plan says why; strict=True refuses instead."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import slimtrain
from slimtrain import GraphError
from _helpers import count_macs


class GroupedTail(nn.Module):
    """Conv -> grouped conv (groups=4, not depthwise) in a residual, as wav2vec2's positional conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(3, 16, 3, padding=1)
        self.g = nn.Conv1d(16, 16, 3, padding=1, groups=4)
        self.hid = nn.Linear(16, 12)
        self.f = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.relu(self.c(x))
        h = h + self.g(h)
        return self.f(torch.relu(self.hid(h.mean(-1))))


class SortNet(nn.Module):
    """An op the tracer does not know (sort over channels) on one width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.sort(torch.relu(self.a(x)), dim=-1).values
        return self.c(torch.relu(self.b(h)))


def _entry(plan, producer):
    return next(e for e in plan.entries if producer in e.producers)


def test_grouped_conv_stays_fixed_and_the_rest_is_dynamic():
    m = GroupedTail()
    slimtrain.make_dynamic(m, torch.randn(2, 3, 8))
    plan = slimtrain.width_report(m)
    e = _entry(plan, "g")
    assert not e.dynamic and e.tied and set(e.producers) == {"c", "g"}
    assert "grouped conv 'g' (groups=4)" in e.reason and e.category == "unsupported"
    assert _entry(plan, "hid").dynamic and _entry(plan, "hid").dcl == "hid.dcl"
    assert "fixed: grouped conv 'g'" in str(plan) and "dynamic" in str(plan)
    json.dumps(plan.to_dict())  # plain data


def test_strict_turns_unsupported_into_an_error_naming_op_and_module():
    with pytest.raises(GraphError, match=r"strict=True.*grouped conv 'g' \(groups=4\)"):
        slimtrain.make_dynamic(GroupedTail(), torch.randn(2, 3, 8), strict=True)
    with pytest.raises(GraphError, match=r"strict=True.*unsupported operation 'sort' on the width of 'a'"):
        slimtrain.make_dynamic(SortNet(), torch.randn(3, 4), strict=True)
    m = SortNet()
    slimtrain.make_dynamic(m, torch.randn(3, 4))  # not strict: 'a' fixed, 'b' dynamic
    plan = slimtrain.width_report(m)
    assert not _entry(plan, "a").dynamic and "'sort'" in _entry(plan, "a").reason
    assert _entry(plan, "b").dynamic
    assert _entry(plan, "c").category == "model output"


def test_plan_widths_does_not_change_the_model():
    m = SortNet()
    keys = set(m.state_dict())
    plan = slimtrain.plan_widths(m, torch.randn(3, 4))
    assert set(m.state_dict()) == keys and not any(x._forward_hooks for x in m.modules())
    assert [e.dynamic for e in plan.entries] == [False, True, False]


def test_hand_inserted_dynamic_width_is_the_groups_dcl_and_is_costed():
    m = nn.Sequential(nn.Linear(4, 8), slimtrain.DynamicWidth(8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                      nn.Linear(6, 2))
    x = torch.randn(3, 4)
    with pytest.raises(GraphError, match="DynamicWidth modules \\(1\\).*make_dynamic"):
        slimtrain.model_cost(m, x)  # no silent full cost
    slimtrain.make_dynamic(m, x)
    plan = slimtrain.width_report(m)
    e = _entry(plan, "0")
    assert e.dynamic and e.dcl == "1" and e.user_dcl and not e.tied
    assert sorted(slimtrain.dynamic_widths(m)) == ["1", "3.dcl"]
    m.train()
    c = slimtrain.model_cost(m)
    c.macs.backward()
    assert m[1].theta.grad is not None and m[1].theta.grad.abs() > 0  # the cost is differentiable in its width
    m[1].set_width(3)
    m[3].dcl.set_width(5)
    m.eval()
    small = slimtrain.export(m)
    assert small[0].out_features == 3 and isinstance(small[1], nn.Identity)
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    assert slimtrain.model_cost(m, hard=True).macs.item() == pytest.approx(count_macs(small, x) / 3)


def test_width_floor_is_one_channel():
    class SE(nn.Module):  # a 2-channel squeeze layer: kappa_min * 2 < 1
        def __init__(self) -> None:
            super().__init__()
            self.a, self.sq, self.out = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(2, 3)

        def forward(self, x):
            return self.out(torch.relu(self.sq(torch.relu(self.a(x)))))

    m = SE()
    slimtrain.make_dynamic(m, torch.randn(3, 4), kappa_min=0.25)
    assert (m.sq.dcl.min_width, m.a.dcl.min_width) == (1.0, 2.0)


def test_transformer_encoder_container():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True), num_layers=2), nn.Linear(16, 2))
    x = torch.randn(3, 5, 6)
    ref = m.state_dict()
    slimtrain.make_dynamic(m, x, kappa_min=0.25)
    assert type(m[1].layers[0]) is nn.TransformerEncoderLayer
    plan = slimtrain.width_report(m)
    assert [e.dcl for e in plan.dynamic] == ["1.layers.0.self_attn.dcl", "1.layers.0.linear1.dcl",
                                             "1.layers.1.self_attn.dcl", "1.layers.1.linear1.dcl"]
    assert [e.unit for e in plan.dynamic] == ["heads", "", "heads", ""]
    stream = _entry(plan, "0")
    assert not stream.dynamic and "nn.MultiheadAttention '1.layers.0.self_attn'" in stream.reason
    m.load_state_dict(ref, strict=True)
    m.train()
    m(x).sum().backward()
    m[1].layers[0].linear1.dcl.set_width(9.5)
    m[1].layers[1].self_attn.dcl.set_width(2.5)
    m.eval()
    small = slimtrain.export(m)
    assert small[1].layers[0].linear1.out_features == 10 and small[1].layers[0].linear2.in_features == 10
    assert small[1].layers[1].self_attn.num_heads == 3 and small[1].layers[0].self_attn.num_heads == 4
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5


def test_cli_plan_prints_the_report_of_a_users_factory(tmp_path, monkeypatch, capsys):
    from slimtrain.cli import main

    (tmp_path / "user_models_for_plan.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c = nn.Conv1d(3, 16, 3, padding=1)\n"
        "        self.g = nn.Conv1d(16, 16, 3, padding=1, groups=4)\n"
        "        self.hid = nn.Linear(16, 12)\n"
        "        self.f = nn.Linear(12, 2)\n"
        "    def forward(self, x):\n"
        "        h = torch.relu(self.c(x))\n"
        "        h = h + self.g(h)\n"
        "        return self.f(torch.relu(self.hid(h.mean(-1))))\n"
        "def build():\n    return Net()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["plan", "user_models_for_plan:build", "--input-shape", "2,3,8", "--kappa-min", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "1 dynamic, 2 fixed widths" in out and "hid.dcl" in out and "grouped conv 'g' (groups=4)" in out
    assert main(["plan", "user_models_for_plan:build", "--input-shape", "2,3,8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [w["dynamic"] for w in data["widths"]] == [False, True, False]
    assert main(["plan", "user_models_for_plan:build", "--input-shape", "2,3,8", "--strict"]) == 2
    assert "grouped conv 'g'" in capsys.readouterr().err
    assert main(["plan", "user_models_for_plan:nope", "--input-shape", "2,3,8"]) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err


def test_plan_widths_keeps_torch_compile_caches_and_make_dynamic_clears_them():
    """plan_widths works on a private copy (nothing compiled from it can be stale); make_dynamic changes the
    user's modules in place, so it clears the caches (dynamo does not guard on the hooks it adds)."""
    from torch._dynamo.testing import CompileCounter

    cnt = CompileCounter()
    f = torch.compile(lambda x: torch.relu(x) * 2, backend=cnt)
    x = torch.randn(3, 4)
    f(x)
    slimtrain.plan_widths(SortNet(), x)
    f(x)
    assert cnt.frame_count == 1
    slimtrain.make_dynamic(SortNet(), x)
    f(x)
    assert cnt.frame_count == 2
