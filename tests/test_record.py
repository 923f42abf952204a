"""WidthRecorder's CSV, and a short end-to-end fit() with warm-up and a Lagrangian budget."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import slimtrain
from slimtrain.train.record import WidthRecorder
from slimtrain.train.training import fit, make_optimizer, seed_everything
from _helpers import build, count_macs, dcls


def test_recorder_writes_widths_and_costs(tmp_path):
    _, model, x = build("conv_gru", 0)
    ds = dcls(model)
    ds["b.dcl"].set_width(5.5)
    ds["rnn.dcl"].set_width(3)
    path = tmp_path / "sub" / "widths.csv"
    rec = WidthRecorder(path)
    model.train()
    row = rec.log(0, model, train_loss=0.5, metric=0.9)
    assert model.training  # the recorder restores the mode
    ds["rnn.dcl"].set_width(2)
    rec.log(1, model, train_loss=0.4, metric=0.8)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    cols = set(rows[0])
    assert {"epoch", "train_loss", "metric", "K[b.dcl]", "K[rnn.dcl]", "macs", "flops", "params"} <= cols
    assert float(rows[0]["K[b.dcl]"]) == pytest.approx(5.5, abs=1e-4)
    assert [float(r["K[rnn.dcl]"]) for r in rows] == [pytest.approx(3.0), pytest.approx(2.0)]
    # the recorded cost is the exported model's, counted independently
    model.eval()
    small = slimtrain.export(model)
    assert float(rows[1]["macs"]) * x.shape[0] == pytest.approx(count_macs(small, x), rel=1e-2)
    assert float(rows[1]["flops"]) == 2 * float(rows[1]["macs"])
    assert float(rows[1]["params"]) == sum(p.numel() for p in small.parameters())
    assert row["epoch"] == 0 and row["metric"] == 0.9
    assert not (tmp_path / "sub" / "widths.csv.tmp").exists()


def test_fit_with_warmup_and_lagrangian_budget(tmp_path):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    slimtrain.make_dynamic(model, x[:8], kappa_min=0.125)
    full = slimtrain.model_cost(model, full=True).flops.item()
    obj = slimtrain.TradeoffLoss(model, budget=0.3 * full, lagrangian=True, lr_mu=0.5, warmup_steps=4)
    opt = make_optimizer(model, lr=1e-2, width_lr=5e-2)
    rec = WidthRecorder(tmp_path / "w.csv")
    batches = lambda epoch: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]  # noqa: E731
    res = fit(model, batches, nn.functional.mse_loss, obj, opt, epochs=6, recorder=rec, progress=False,
              evaluate=lambda m: float(nn.functional.mse_loss(m(x), y).detach()))
    assert len(res) == 6 and len(rec.rows) == 6
    # the first epoch was warm-up: full widths; afterwards the budget pulls the widths down
    assert rec.rows[0]["flops"] == pytest.approx(full)
    assert rec.rows[-1]["flops"] < rec.rows[1]["flops"] < full
    assert obj.mu.item() > 0
