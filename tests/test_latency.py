"""Latency profiles: a monotone, differentiable fit of measured layer latency, saved and used as a loss term.

Timings are never asserted on (the machine is shared); the tests check the fit's structure, the
gradient, the round trip and the errors. Tiny grids and few repeats keep the module fast.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import slimtrain
from slimtrain import latency
from slimtrain.core.latency import LatencyError, LatencyProfile, load_profile
from slimtrain.core.loss import LossConfigError
from slimtrain.train.training import make_optimizer


def _model(hidden: int = 12) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 6)
    slimtrain.make_dynamic(m, x)
    return m, x


@pytest.fixture(scope="module")
def measured():
    m, x = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tiny model's timings may not resolve the scale
        p = latency.profile(m, x, "torch", points=3, repeats=2, warmup=1, seconds=0.5)
    return m, x, p


def _positive(p: LatencyProfile) -> LatencyProfile:
    """The same profile with known positive coefficients (the loss tests must not depend on timing noise)."""
    layers = [dataclasses.replace(f, coef=[0.01 * (i + 1) for i in range(len(f.terms))]) for f in p.layers]
    return dataclasses.replace(p, layers=layers, intercept=0.05, scale=1.0)


def test_profile_covers_every_dynamic_layer(measured):
    m, _, p = measured
    assert [f.name for f in p.layers] == ["0", "2", "4"]
    assert p.dcls == {"0.dcl": 12, "2.dcl": 8}
    assert p.layers[1].terms == ["1", "in", "out", "in*out"]  # both sides dynamic: the bilinear terms
    assert p.layers[0].terms == ["1", "out"] and p.layers[2].terms == ["1", "in"]
    assert len(p.layers[1].points) == 9  # 3 x 3 grid
    assert all(c >= 0 for f in p.layers for c in f.coef) and p.scale > 0 and p.intercept >= 0
    assert p.backend == "torch" and p.meta["torch"] == torch.__version__ and p.batch == 4


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_prediction_never_decreases_in_any_width(measured, data):
    _, _, p = measured
    widths = {n: data.draw(st.floats(1.0, float(full)), label=n) for n, full in p.dcls.items()}
    name = data.draw(st.sampled_from(sorted(p.dcls)))
    step = data.draw(st.floats(0.0, float(p.dcls[name])))
    wider = dict(widths, **{name: min(float(p.dcls[name]), widths[name] + step)})
    for prof in (p, _positive(p)):
        assert float(prof.predict(widths=wider)) >= float(prof.predict(widths=widths)) - 1e-12


def test_prediction_is_differentiable_in_the_widths(measured):
    m, _, p = measured
    q = _positive(p)
    pred = q.predict(m)  # the model's continuous widths
    assert isinstance(pred, torch.Tensor) and pred.requires_grad
    pred.backward()
    dcls = [m.get_submodule(n) for n in q.dcls]
    assert all(d.theta.grad is not None and float(d.theta.grad) > 0 for d in dcls)
    # the gradient of the width of the first layer's output: its own term and the next layer's
    k0, k1 = 12.0, 8.0
    f0, f1 = q.layers[0], q.layers[1]
    dk = f0.coef[1] + f1.coef[1] + f1.coef[3] * k1  # d/dK0 of c0 + c1 K0 (+ c1' K0 + c3' K0 K1)
    assert float(m.get_submodule("0.dcl").theta.grad) == pytest.approx(dk * 12, rel=1e-5)  # dK/dtheta = N
    assert float(q.predict(widths={"0.dcl": k0, "2.dcl": k1})) == pytest.approx(float(pred.detach()), rel=1e-6)


def test_units(measured):
    _, _, p = measured
    call = float(p.predict(widths={}))
    assert float(p.predict(widths={}, unit="ms/item")) == pytest.approx(call / 4)
    assert float(p.predict(widths={}, unit="ms/s")) == pytest.approx(call / 4 / 0.5)
    with pytest.raises(LatencyError, match="unknown latency unit 'us'"):
        p.predict(widths={}, unit="us")
    with pytest.raises(LatencyError, match="needs the duration"):
        dataclasses.replace(p, seconds=None).predict(widths={}, unit="ms/s")
    with pytest.raises(LatencyError, match="does not have"):
        p.predict(widths={"nope.dcl": 3.0})


def test_save_load_round_trip(measured, tmp_path):
    m, _, p = measured
    path = p.save(tmp_path / "sub" / "prof.json")
    q = load_profile(path)
    assert q.to_dict() == p.to_dict()
    assert json.loads(path.read_text())["backend"] == "torch"
    w = {"0.dcl": 5.5, "2.dcl": 3.25}
    assert float(q.predict(widths=w)) == float(p.predict(widths=w))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(LatencyError, match="cannot read latency profile .*missing.json"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LatencyError, match="bad.json' is not JSON"):
        load_profile(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LatencyError, match="other.json': not a slimtrain latency profile"):
        load_profile(other)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "slimtrain-latency-profile", "version": 99}))
    with pytest.raises(LatencyError, match="version 99"):
        load_profile(old)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "slimtrain-latency-profile", "version": 1, "backend": "torch"}))
    with pytest.raises(LatencyError, match="misses or mistypes a field"):
        load_profile(broken)


def test_latency_budget_moves_widths_down(measured, tmp_path):
    m0, x, p = measured
    m, _ = _model()  # a fresh model of the same architecture (the profile fits it)
    q = _positive(p)
    path = q.save(tmp_path / "prof.json")
    loss = slimtrain.TradeoffLoss(m, metric="latency", budget=float(q.predict(widths={}, unit="ms/item")) * 0.5,
                                  latency=str(path))
    assert loss.full == pytest.approx(float(q.predict(widths={}, unit="ms/item")))
    before = slimtrain.dynamic_widths(m)
    opt = make_optimizer(m, lr=1e-3, width_lr=0.05)
    for _ in range(5):
        out = loss(m(x).pow(2).mean())
        opt.zero_grad()
        out.backward()
        opt.step()
    after = slimtrain.dynamic_widths(m)
    assert all(after[n] < before[n] for n in before), (before, after)
    assert loss.last["cost"] > loss.budget and loss.current_cost() < loss.full
    loss.fill_budget()  # the widths a settle at this latency budget would keep: within it
    assert loss.current_cost() <= loss.budget


def test_latency_floor_budget_and_per_second(measured):
    _, _, p = measured
    m, _ = _model()
    q = _positive(p)
    loss = slimtrain.TradeoffLoss(m, metric="latency", budget="floor", latency=q, unit="ms/s", lagrangian=True)
    floor = q.predict(widths={n: float(m.get_submodule(n).min_width) for n in q.dcls}, unit="ms/s")
    assert loss.budget == pytest.approx(float(floor))
    assert loss.full == pytest.approx(float(q.predict(widths={}, unit="ms/s")))


def test_latency_loss_errors(measured):
    _, _, p = measured
    m, _ = _model()
    with pytest.raises(LossConfigError, match="needs a measured profile"):
        slimtrain.TradeoffLoss(m, metric="latency", budget=1.0)
    with pytest.raises(LossConfigError, match="unit must be 'ms/item'.*got 'seconds'"):
        slimtrain.TradeoffLoss(m, metric="latency", budget=1.0, latency=p, unit="seconds")
    with pytest.raises(LossConfigError, match="go with metric='latency'"):
        slimtrain.TradeoffLoss(m, metric="flops", budget=1.0, latency=p)
    with pytest.raises(LossConfigError, match="needs the duration"):
        slimtrain.TradeoffLoss(m, metric="latency", budget=1.0, latency=dataclasses.replace(p, seconds=None),
                               unit="ms/s")
    with pytest.raises(LossConfigError, match="must be a LatencyProfile or the path"):
        slimtrain.TradeoffLoss(m, metric="latency", budget=1.0, latency=3)
    wider, _ = _model(hidden=16)  # same layer names, other full widths
    with pytest.raises(LossConfigError, match=r"another model: different full widths: 0.dcl 12 in the profile, 16"):
        slimtrain.TradeoffLoss(wider, metric="latency", budget=1.0, latency=p)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2))
    slimtrain.make_dynamic(other, torch.randn(4, 6))
    with pytest.raises(LossConfigError, match="another model: DCLs missing from the model: \\['2.dcl'\\]"):
        slimtrain.TradeoffLoss(other, metric="latency", budget=1.0, latency=p)
    with pytest.raises(LossConfigError, match="budget must be a positive number"):
        slimtrain.TradeoffLoss(m, metric="latency", budget=-1.0, latency=p)


def test_profile_errors():
    m, x = _model()
    with pytest.raises(LatencyError, match="unknown latency backend 'tpu'"):
        latency.profile(m, x, "tpu")
    with pytest.raises(LatencyError, match="points must be >= 2"):
        latency.profile(m, x, points=1)
    with pytest.raises(LatencyError, match="at least two different width scales"):
        latency.profile(m, x, calibrate=(1.0, 1.0))
    with pytest.raises(LatencyError, match="seconds must be a positive duration"):
        latency.profile(m, x, seconds=0)
    with pytest.raises(LatencyError, match=r"layers \['fc9'\] are not layers of the model"):
        latency.profile(m, x, layers=["fc9"], repeats=1, warmup=0)
    with pytest.raises(slimtrain.GraphError, match="make_dynamic"):
        latency.profile(nn.Linear(3, 3), torch.randn(2, 3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    m, x = _model()
    with pytest.raises(LatencyError, match="backend 'cuda': no CUDA GPU is available"):
        latency.profile(m, x, "cuda")


def test_onnxruntime_backend_profiles_one_layer():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    x = torch.randn(2, 6)
    slimtrain.make_dynamic(m, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = latency.profile(m, x, "onnxruntime", points=2, repeats=2, warmup=1, layers=["0"], calibrate=(1.0, 0.0))
    assert p.backend == "onnxruntime" and p.meta["onnxruntime"] and p.threads == 1
    assert [f.name for f in p.layers] == ["0"] and len(p.layers[0].points) == 2
    assert all(c >= 0 for c in p.layers[0].coef) and all(pt[2] >= 0 for pt in p.layers[0].points)
    assert [r["kappa"] for r in p.calibration] == [1.0, 0.0]


def test_report_blocks_follow_the_csv(tmp_path):
    import csv

    from slimtrain.tasks.report import ReportError, render_block

    (tmp_path / "docs").mkdir()
    with pytest.raises(ReportError, match="latency.csv"):
        render_block("latency-predict", tmp_path)
    common = {"clip_s": "1.0", "backend": "onnxruntime 1 thread", "machine": "m", "mflops_per_call": "1.0",
              "flop_guess_ms": "0.1", "widths": "{}"}
    rows = [dict(common, part="predict", family="crnn", setting="full (calibration)", measured_ms="0.5",
                 predicted_ms="0.45", error_pct="-10.0", flop_guess_error_pct="0.0"),
            dict(common, part="predict", family="crnn", setting="uniform 0.5", measured_ms="0.4",
                 predicted_ms="0.42", error_pct="5.0", flop_guess_error_pct="-40.0"),
            dict(common, part="predict", family="crnn", setting="random 0", measured_ms="0.4",
                 predicted_ms="0.37", error_pct="-7.0", flop_guess_error_pct="-60.0")]
    train = {"part": "train", "family": "crnn", "epochs": "8", "ref_scale": "0.25", "clip_s": "1.0",
             "predicted_ms_per_s": "0.45", "eer": "0.1"}
    for seed, (lat, fl) in enumerate([(0.95, 0.94), (0.96, 0.94), (0.97, 0.95)]):
        rows.append(dict(train, method="latency", seed=str(seed), auc=str(lat), measured_ms_per_s="0.46",
                         mflops_per_s="2.0", widths='{"norm.dcl": 60, "bn1.dcl": 4, "bn2.dcl": 4, "gru.dcl": 8}'))
        rows.append(dict(train, method="flops", seed=str(seed), auc=str(fl), measured_ms_per_s="0.45",
                         mflops_per_s="0.7", widths='{"norm.dcl": 20, "bn1.dcl": 4, "bn2.dcl": 4, "gru.dcl": 10}'))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(tmp_path / "docs" / "latency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    pred = render_block("latency-predict", tmp_path)
    # the calibration row is shown but not counted in the error summary: mean of 5 and 7, max 7
    assert "| VAD crnn | full (calibration) | 1.000 | 0.500 | 0.450 | -10.0 % |" in pred
    assert "profile error mean 6.0 %, max 7.0 % over the 2 settings" in pred
    assert "FLOP-proportional guess mean 50.0 %, max 60.0 %" in pred
    assert "VAD crnn mean 6.0 % / max 7.0 %" in render_block("latency-readme", tmp_path)
    tr = render_block("latency-train", tmp_path)
    assert "| first step at budget | latency | 3 |" in tr and "| 60.0 |" in tr
    # paired AUC difference latency - flops: 0.01, 0.02, 0.02 -> mean +0.0167
    assert "AUC, latency budget - FLOP budget (paired by seed): +0.0167 [" in tr


def test_floor_budget_with_a_flat_profile_is_named(measured):
    _, _, p = measured
    m, _ = _model()
    flat = dataclasses.replace(p, layers=[dataclasses.replace(f, coef=[0.01] + [0.0] * (len(f.terms) - 1))
                                          for f in p.layers])
    with pytest.raises(LossConfigError, match="latency profile is flat in every width"):
        slimtrain.TradeoffLoss(m, metric="latency", budget="floor", latency=flat)
