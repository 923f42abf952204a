"""Settling: the last epochs train the weights at fixed hard widths (``slimtrain.settle_widths``).

A settled model must train on exactly the network ``export`` cuts (no noise, no fractional
channel), its widths must not move, and every loop that offers it must reject a settle phase
that leaves no epochs to learn widths in.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain.train.training import fit, make_optimizer, seed_everything


def _model(hidden: int = 24) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    slimtrain.make_dynamic(model, torch.randn(8, 6), kappa_min=0.1)
    return model


def _dcls(model: nn.Module) -> list[slimtrain.DynamicWidth]:
    return [m for m in model.modules() if isinstance(m, slimtrain.DynamicWidth)]


@settings(max_examples=25, deadline=None)
@given(k1=st.floats(2.0, 24.0), k2=st.floats(2.0, 24.0))
def test_settled_training_forward_is_the_exported_network(k1, k2):
    model = _model()
    for d, k in zip(_dcls(model), (k1, k2)):
        d.set_width(k)
    expected = {name: d.hard_width for name, d in model.named_modules() if isinstance(d, slimtrain.DynamicWidth)}
    assert slimtrain.settle_widths(model) == expected
    assert all(not d.theta.requires_grad and d.frozen for d in _dcls(model))
    x = torch.randn(32, 6)
    model.train()
    a, b = model(x), model(x)  # no noise: two training-mode calls agree
    assert torch.equal(a, b)
    plain = slimtrain.export(model).eval()
    torch.testing.assert_close(a, plain(x), rtol=1e-5, atol=1e-6)


def test_settled_widths_take_no_optimizer_step_but_weights_do():
    model = _model()
    for d in _dcls(model):
        d.set_width(0.6 * d.num_channels + 0.4)
    opt = make_optimizer(model, lr=1e-2, width_lr=0.1)
    obj = slimtrain.TradeoffLoss(model, alpha=1.0)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(2):  # Adam state for the widths exists before the settle
        opt.zero_grad()
        obj(F.mse_loss(model(x), y)).backward()
        opt.step()
    slimtrain.settle_widths(model)
    theta = [d.theta.detach().clone() for d in _dcls(model)]
    w0 = model[0].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        obj(F.mse_loss(model(x), y)).backward()
        opt.step()
    assert all(torch.equal(t, d.theta) for t, d in zip(theta, _dcls(model)))
    assert not torch.equal(w0, model[0].weight)


def _fit(settle: int, epochs: int = 4):
    seed_everything(0)
    model = _model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 6, generator=g), torch.randn(96, 3, generator=g)
    obj = slimtrain.TradeoffLoss(model, alpha=2.0)
    opt = make_optimizer(model, lr=1e-2, width_lr=0.1)
    seen = []

    def batches(epoch):
        seen.append([d.theta.item() for d in _dcls(model)])
        perm = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        for i in range(4):
            idx = perm[i * 24:(i + 1) * 24]
            yield x[idx], y[idx]

    fit(model, batches, F.mse_loss, obj, opt, epochs, progress=False, settle_epochs=settle)
    return model, seen, x


def test_fit_settle_epochs_fix_the_widths_for_the_last_epochs_only():
    free, free_seen, _ = _fit(settle=0)
    model, seen, x = _fit(settle=2)
    assert seen[:3] == free_seen[:3]  # identical until the settle phase starts
    final = [d.theta.item() for d in _dcls(model)]
    assert seen[2] == seen[3] == final  # epochs 2 and 3 are settled
    assert seen[1] != seen[2]  # the widths did learn before
    assert final != [d.theta.item() for d in _dcls(free)]
    model.train()
    torch.testing.assert_close(model(x), slimtrain.export(copy.deepcopy(model)).eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settle", [-1, 4, 7])
def test_fit_rejects_a_settle_phase_outside_the_epochs(settle):
    with pytest.raises(ValueError, match="settle_epochs must be in"):
        _fit(settle=settle)


def test_vad_and_study_configs_name_a_settle_phase_that_leaves_no_width_learning():
    from slimtrain.tasks.vad.finetune_study import FinetuneStudyConfig, StudyError
    from slimtrain.tasks.vad.sweep import VadSweepConfig
    from slimtrain.tasks.vad.train import VadRunConfig

    with pytest.raises(ValueError, match="settle-epochs=2, warmup-epochs=1, epochs=3"):
        VadRunConfig(epochs=3, settle_epochs=2).validate()
    VadRunConfig(epochs=3, settle_epochs=1).validate()
    with pytest.raises(StudyError, match="settle must be 'budget' or 'none'"):
        FinetuneStudyConfig(settle="half").validate()
    assert VadSweepConfig(epochs=12).dcl_settle_epochs == 6
    assert VadSweepConfig(epochs=12, settle_epochs=0).dcl_settle_epochs == 0
    # the default leaves the warm-up epoch and one width-learning epoch
    assert [VadSweepConfig(epochs=e).dcl_settle_epochs for e in (1, 2, 3, 4, 5)] == [0, 0, 1, 2, 2]


def test_vad_loop_settles_once_the_condition_holds_and_keeps_the_widths():
    import numpy as np
    from types import SimpleNamespace

    from slimtrain.apps.vad.models import build_vad_model
    from slimtrain.tasks.vad.train import train_loop

    seed_everything(0)
    model = build_vad_model("crnn", 16, conv1=8, conv2=8, hidden=8)
    torch.manual_seed(0)
    slimtrain.make_dynamic(model, torch.randn(2, 4000) * 0.1, kappa_min=0.25)
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((16, 4000)) * 0.1).astype(np.float32)
    with torch.no_grad():
        frames = model.eval()(torch.from_numpy(audio[:1])).shape[1]
    labels = (rng.random((16, frames)) > 0.5).astype(np.uint8)
    full = slimtrain.TradeoffLoss(model, alpha=1.0).full
    obj = slimtrain.TradeoffLoss(model, alpha=0.0, budget=0.8 * full)
    asked: list[float] = []

    def met() -> bool:
        asked.append(obj.current_cost())
        return asked[-1] <= obj.budget

    thetas = []
    train_loop(model, SimpleNamespace(audio=audio, labels=labels), 1, make_optimizer(model, width_lr=0.05),
               batch_size=4, penalty=obj, settle_when=met)
    thetas.append([d.theta.item() for d in _dcls(model)])
    # asked after every step until the first yes, then never again; the widths met the budget there
    assert asked[-1] <= obj.budget < min(asked[:-1] or [math.inf])
    assert all(d.frozen and not d.theta.requires_grad for d in _dcls(model))
    train_loop(model, SimpleNamespace(audio=audio, labels=labels), 1, make_optimizer(model), batch_size=4, penalty=obj)
    assert [d.theta.item() for d in _dcls(model)] == thetas[0]


def test_synthetic_cli_settles_the_last_epochs(tmp_path):
    import csv

    from slimtrain.cli import main

    assert main(["synthetic", "--quick", "--settle-epochs", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    with (tmp_path / "widths.csv").open() as f:
        k = [float(r["K[0.dcl]"]) for r in csv.DictReader(f)]
    assert len(k) == 12
    # recorded after each epoch: the width learned through epoch 7 and stayed there in epochs 8-11
    assert k[-5:] == [k[-5]] * 5 and k[-6] != k[-5]
    # a settle phase that leaves no epoch to learn the width in is refused before any training
    assert main(["synthetic", "--quick", "--epochs", "3", "--settle-epochs", "2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x" / "model.ckpt").exists()


def test_spoof_config_names_a_settle_phase_that_leaves_no_width_learning():
    from slimtrain.tasks.spoof.train import SpoofConfig

    with pytest.raises(ValueError, match="settle-epochs=3, warmup-epochs=1, epochs=4"):
        SpoofConfig(settle_epochs=3).validate()
    assert SpoofConfig(settle_epochs=2).validate().as_dict()["settle_epochs"] == 2
    with pytest.raises(ValueError, match="fill-budget fills the budget .* needs settle-at-budget"):
        SpoofConfig(fill_budget=True).validate()  # refused, not silently ignored
    assert SpoofConfig(fill_budget=True, settle_at_budget=True).validate().fill_budget


def _budget_fit(tmp_path, crash_at=None, resume=False, epochs=4, fill=False):
    seed_everything(0)
    model = _model(hidden=32)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 6, generator=g), torch.randn(96, 3, generator=g)
    obj = slimtrain.TradeoffLoss(model, alpha=0.0, budget=0.3 * slimtrain.TradeoffLoss(model, alpha=1.0).full)
    opt = make_optimizer(model, lr=1e-2, width_lr=0.1)
    costs = []

    def batches(epoch):
        perm = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        for i in range(4):
            if (epoch, i) == crash_at:
                raise RuntimeError("crash")
            costs.append(obj.current_cost())
            yield x[perm[i * 24:(i + 1) * 24]], y[perm[i * 24:(i + 1) * 24]]

    try:
        fit(model, batches, F.mse_loss, obj, opt, epochs, progress=False, settle_at_budget=True,
            fill_budget=fill, checkpoint=tmp_path / "c.ckpt", resume=resume)
    except RuntimeError as e:
        assert str(e) == "crash"
    return model, obj, costs


def test_fit_settles_at_the_budget_and_a_resume_stays_settled(tmp_path):
    model, obj, costs = _budget_fit(tmp_path / "a")
    first = next(i for i, c in enumerate(costs) if c <= obj.budget)
    assert 0 < first < len(costs) - 1
    assert all(c == costs[first] for c in costs[first:])  # no width moved after the step that met the budget
    assert all(d.frozen and not d.theta.requires_grad for d in _dcls(model))
    # killed in the last epoch (after the settle) and resumed: settled from its first step, same end
    _budget_fit(tmp_path / "b", crash_at=(3, 1))
    again, _, _ = _budget_fit(tmp_path / "b", resume=True)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="settle_at_budget needs an objective with a budget"):
        fit(_model(), lambda e: iter(()), F.mse_loss, slimtrain.TradeoffLoss(_model(), alpha=1.0),
            make_optimizer(_model()), 2, progress=False, settle_at_budget=True)


def _hard_macs(model: nn.Module) -> float:
    """MACs of the network ``export`` cuts, counted on the exported model (not by the trade-off loss)."""
    return float(slimtrain.model_cost(slimtrain.export(copy.deepcopy(model).eval()), torch.randn(2, 6)).macs)


@settings(max_examples=30, deadline=None)
@given(k1=st.floats(2.5, 24.0), k2=st.floats(2.5, 24.0), share=st.floats(0.2, 0.95))
def test_fill_budget_spends_the_budget_up_to_the_next_channel(k1, k2, share):
    """``fill_budget`` (what a settle at the budget does first): the exported network costs at most the budget,
    one more channel step of the common scale would cost more, and the widths keep their learned ratio."""
    model = _model()
    obj = slimtrain.TradeoffLoss(model, alpha=0.0, budget=1.0, metric="macs")
    dcls = _dcls(model)
    for d in dcls:
        d.set_width(d.min_width)
    floor_cost = obj.current_cost()
    obj.budget = floor_cost + share * (obj.full - floor_cost)
    for d, k in zip(dcls, (k1, k2)):
        d.set_width(k)
    learned = [float(d.width) for d in dcls]
    s = obj.fill_budget()
    widths = [d.hard_width for d in dcls]
    assert widths == [min(max(math.ceil(k * s - 1e-6), math.ceil(d.min_width)), int(d.max_width))
                      for k, d in zip(learned, dcls)]
    assert _hard_macs(model) <= obj.budget + 1e-6
    growable = [(w / k, i) for i, (w, k, d) in enumerate(zip(widths, learned, dcls)) if w < d.max_width]
    if growable:  # the next step of the common scale adds a channel to some width: over the budget
        s_next = min(growable)[0] * (1 + 1e-5)
        for d, k in zip(dcls, learned):
            d.set_width(min(max(math.ceil(k * s_next - 1e-6), math.ceil(d.min_width)), d.max_width))
        assert _hard_macs(model) > obj.budget


def test_fill_budget_leaves_widths_alone_without_a_reachable_budget():
    model = _model()
    dcls = _dcls(model)
    for d, k in zip(dcls, (7.3, 11.6)):
        d.set_width(k)
    assert slimtrain.TradeoffLoss(model, alpha=1.0).fill_budget() == 1.0  # no budget
    obj = slimtrain.TradeoffLoss(model, alpha=0.0, budget=1.0)  # below what the lower bounds cost
    assert obj.fill_budget() == 1.0
    assert [round(float(d.width), 4) for d in dcls] == [7.3, 11.6]


def test_fit_fills_the_budget_when_asked_and_only_with_a_settle_at_it(tmp_path):
    """``fill_budget=True``: the same run settles at the same step but at the widths that spend the budget up to a
    channel step (counted on the exported network); without it the crossing step's widths stay, below that."""
    first, obj, _ = _budget_fit(tmp_path / "a")
    filled, obj_f, _ = _budget_fit(tmp_path / "b", fill=True)
    budget = obj.budget
    x = torch.randn(2, 6)
    cost = [float(slimtrain.model_cost(slimtrain.export(copy.deepcopy(m).eval()), x).macs) for m in (first, filled)]
    assert cost[0] < cost[1] <= budget + 1e-6
    assert all(d.frozen for d in _dcls(filled))
    with pytest.raises(ValueError, match="fill_budget .* needs settle_at_budget=True"):
        fit(_model(), lambda e: iter(()), F.mse_loss, slimtrain.TradeoffLoss(_model(), budget=1e3),
            make_optimizer(_model()), 2, progress=False, fill_budget=True)
