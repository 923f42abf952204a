"""The framework-free part of the training-framework callbacks (slimtrain.integrations): optional imports,
settings errors, the settle schedule, the logged values and load_export."""
from __future__ import annotations

import copy
import importlib
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain.integrations import IntegrationError, load_export
from slimtrain.integrations._common import WidthControl


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))
    return slimtrain.make_dynamic(net, torch.randn(3, 6), kappa_min=0.25)


_OBJECTIVE = slimtrain.TradeoffLoss(_mlp(), alpha=1.0)


def test_core_and_integrations_package_import_no_framework():
    code = ("import sys, slimtrain, slimtrain.integrations, slimtrain.training, slimtrain.export\n"
            "bad = sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') if m in sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module,blocked,extra", [
    ("slimtrain.integrations.lightning", ("lightning", "lightning.pytorch"), "lightning"),
    ("slimtrain.integrations.transformers", ("transformers",), "hf"),
])
def test_missing_framework_names_the_extra(monkeypatch, module, blocked, extra):
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # "not installed"
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf'{module} needs the \'{blocked[0]}\' package.*pip install "slimtrain\[{extra}\]"'):
        importlib.import_module(module)


@pytest.mark.parametrize("value,match", [
    (0, "step number must be >= 1"), (-3, "step number must be >= 1"), (1.0, r"settle_at=1\.0.*\(0, 1\)"),
    (0.0, r"settle_at=0\.0.*\(0, 1\)"), (1.5, r"\(0, 1\)"), (True, "got True"), ("half", "got 'half'"),
])
def test_bad_settle_at_is_named(value, match):
    with pytest.raises(IntegrationError, match=match):
        WidthControl(slimtrain.TradeoffLoss(_mlp(), alpha=1.0), settle_at=value)


def test_other_bad_settings_are_named():
    model = _mlp()
    with pytest.raises(IntegrationError, match=r"objective must be a slimtrain\.TradeoffLoss.*got Sequential"):
        WidthControl(model)
    with pytest.raises(IntegrationError, match=r"settle_at_budget=True needs an objective with a budget"):
        WidthControl(slimtrain.TradeoffLoss(model, alpha=1.0), settle_at_budget=True)
    with pytest.raises(IntegrationError, match=r"fill_budget=True fills the budget .* needs settle_at_budget=True"):
        WidthControl(slimtrain.TradeoffLoss(model, budget=1e3), fill_budget=True)
    c = WidthControl(slimtrain.TradeoffLoss(model, alpha=1.0), settle_at=0.5)
    with pytest.raises(IntegrationError, match=r"settle_at=0\.5 is a fraction.*not known.*step number"):
        c.start(float("inf"), 0)
    with pytest.warns(UserWarning, match="settle_at=20 is past the run's 10 optimizer steps"):
        WidthControl(slimtrain.TradeoffLoss(model, alpha=1.0), settle_at=20).start(10, 0)


@given(st.floats(0.001, 0.999), st.integers(1, 10_000))
def test_fraction_becomes_the_nearest_step_of_the_run(frac, total):
    c = WidthControl(_OBJECTIVE, settle_at=frac)
    c.start(total, 0)
    assert 1 <= c.settle_step <= total
    assert abs(c.settle_step - frac * total) <= 0.5 or c.settle_step == 1


def test_schedule_settles_at_the_step_or_when_the_budget_is_met():
    model = _mlp()
    c = WidthControl(slimtrain.TradeoffLoss(model, alpha=1.0), settle_at=3)
    c.start(10, 0)
    assert not c.after_step(1) and not c.after_step(2) and not c.settled
    assert c.after_step(3) and c.settled and not c.after_step(4)

    model = _mlp()
    full = float(slimtrain.model_cost(model, full=True).flops)
    objective = slimtrain.TradeoffLoss(model, budget=0.6 * full)
    c = WidthControl(objective, settle_at_budget=True, fill_budget=True)
    c.start(10, 0)
    assert not c.after_step(1)  # full width: over the budget
    for m in model.modules():
        if isinstance(m, slimtrain.DynamicWidth):
            m.set_width(m.min_width)
    assert c.after_step(2) and c.settled
    # it settled filled: the exported network spends the budget up to one channel step, not the lower bounds
    exported = float(slimtrain.model_cost(slimtrain.export(copy.deepcopy(model).eval()), torch.randn(1, 6)).flops)
    assert 0.75 * full * 0.6 < exported <= 0.6 * full + 1e-6
    widths = slimtrain.dynamic_widths(model)
    assert all(not m.theta.requires_grad for m in model.modules() if isinstance(m, slimtrain.DynamicWidth))
    # a resume past the step settles at the start; the logged values follow the model
    model2 = _mlp()
    c2 = WidthControl(slimtrain.TradeoffLoss(model2, budget=0.6 * full, lagrangian=True), settle_at=3)
    c2.start(10, 5)
    m = c2.metrics()
    assert c2.settled and m["slimtrain/settled"] == 1.0
    assert m["slimtrain/budget"] == pytest.approx(0.6 * full) and "slimtrain/mu" in m
    assert set(k for k in m if k.startswith("slimtrain/width/")) == {f"slimtrain/width/{n}" for n in widths}
    assert m["slimtrain/cost_rel"] == pytest.approx(1.0) and m["slimtrain/params_hard"] == float(
        slimtrain.model_cost(model2, full=True).params)


def test_state_round_trip_restores_counter_multiplier_and_settle():
    model = _mlp()
    full = float(slimtrain.model_cost(model, full=True).flops)
    a = WidthControl(slimtrain.TradeoffLoss(model, budget=0.5 * full, lagrangian=True, warmup_steps=3))
    with torch.no_grad():
        a.objective.mu.fill_(2.5)
    a.objective.set_steps(7)
    a.settle()
    b = WidthControl(slimtrain.TradeoffLoss(_mlp(), budget=0.5 * full, lagrangian=True, warmup_steps=3))
    b.load_state(a.state())
    assert b.objective.steps == 7 and float(b.objective.mu) == 2.5 and b.settled
    with pytest.raises(IntegrationError, match="slimtrain state in the checkpoint is not readable"):
        b.load_state({"steps": 1})


def test_load_export_errors_name_the_folder(tmp_path):
    model = _mlp()
    c = WidthControl(slimtrain.TradeoffLoss(model, alpha=1.0), export_path=tmp_path / "small")
    for m in model.modules():
        if isinstance(m, slimtrain.DynamicWidth):
            m.set_width(m.min_width + 1.5)
    small = c.export(step=3)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(load_export(tmp_path / "small", _mlp(seed=2))(x), small(x))
        assert torch.equal(torch.load(tmp_path / "small" / "model.pt", weights_only=False)(x), small(x))
    with pytest.raises(IntegrationError, match=r"'.*nowhere' holds no readable callback export"):
        load_export(tmp_path / "nowhere", _mlp())
    torch.manual_seed(0)
    other = slimtrain.make_dynamic(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 6))
    with pytest.raises(IntegrationError, match=r"widths the model lacks \(2\.dcl.*make the model dynamic as it was"):
        load_export(tmp_path / "small", other)
