"""The study skeleton (slimtrain.tasks.study) and the keyword-spotting study built only from it."""
from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from slimtrain.train.checkpoint import load_checkpoint, load_dynamic_model
from slimtrain.cli import main
from slimtrain.core.export import export
from slimtrain.tasks import kws
from slimtrain.tasks.kws.data import CLIP_SAMPLES, make_clips
from slimtrain.tasks.study import Metric, StudyConfig, StudyConfigError, add_options, train_run
from slimtrain.tasks.study import sweep as study_sweep

TINY = dict(train_per_class=8, test_per_class=4, n_keywords=3, epochs=2, batch_size=8, width=6, n_mels=8)


def _cfg(**over) -> kws.KwsConfig:
    return kws.KwsConfig.quick(**{**TINY, **over})


def test_kws_data_is_deterministic_balanced_and_train_test_differ():
    x1, y1 = make_clips(3, 4, seed=5)
    x2, y2 = make_clips(3, 4, seed=5)
    assert torch.equal(torch.from_numpy(x1), torch.from_numpy(x2)) and (y1 == y2).all()
    assert x1.shape == (15, CLIP_SAMPLES) and sorted(set(y1.tolist())) == [0, 1, 2, 3, 4]
    assert all((y1 == c).sum() == 3 for c in range(5))
    data = kws.build_data(_cfg())
    assert not any(torch.equal(a, b) for a in data.train.x for b in data.test.x)
    with pytest.raises(ValueError, match="keywords"):
        make_clips(2, 1, seed=0)


def test_kws_trains_widths_move_and_exports_exactly(tmp_path):
    cfg = _cfg(epochs=4, warmup_epochs=0, alpha=4.0, width_lr=0.3, kappa_min=0.25)
    data = kws.build_data(cfg)
    small, row = train_run(kws.STUDY, cfg, data, checkpoint=tmp_path / "m.ckpt")
    widths = json.loads(row["widths"])
    full = {"front.dcl": cfg.n_mels, "conv1.dcl": cfg.width, "conv2.dcl": cfg.width}
    assert set(widths) == set(full)
    assert any(widths[k] < full[k] for k in full), widths  # the cost term cut some width
    assert all(widths[k] >= math.ceil(cfg.kappa_min * full[k]) for k in full)  # never below the floor
    assert row["export_max_abs_diff"] < 1e-5
    assert row["params_exported"] == sum(p.numel() for p in small.parameters())
    assert small.conv1.out_channels == widths["conv1.dcl"]  # physically cut
    assert 0.0 <= row["accuracy"] <= 1.0 and set(row) >= {"macro_f1", "flops", "macs"}
    # the checkpoint rebuilds the same model: its export gives the same outputs
    again = export(load_dynamic_model(tmp_path / "m.ckpt").eval()).eval()
    with torch.no_grad():
        assert torch.allclose(again(data.test.x[:8]), small(data.test.x[:8]), atol=1e-5)
    assert load_checkpoint(tmp_path / "m.ckpt")["extra"]["metric"] == {
        "name": "accuracy", "value": row["accuracy"], "higher_is_better": True}


def test_a_budget_replaces_the_alpha_term_and_pulls_the_cost_down():
    full_cfg = _cfg(kappa_min=None)
    _, full = train_run(kws.STUDY, full_cfg, kws.build_data(full_cfg))
    cfg = _cfg(epochs=4, warmup_epochs=0, width_lr=0.3, kappa_min=0.25, budget=0.5 * full["flops"], alpha=3.0)
    _, row = train_run(kws.STUDY, cfg, kws.build_data(cfg))
    assert row["alpha"] == 0.0 and row["budget"] == cfg.budget  # the alpha given is not used with a budget
    assert row["flops"] < full["flops"]


def test_fixed_width_run_has_no_dcl_and_uses_the_width():
    cfg = _cfg(kappa_min=None)
    small, row = train_run(kws.STUDY, cfg, kws.build_data(cfg), width=4)
    assert row["method"] == "fixed" and row["widths"] == "{}" and math.isnan(row["alpha"])
    assert small.conv1.out_channels == 4 and row["export_max_abs_diff"] == 0.0


def test_sweep_rows_summary_resume_and_direction(tmp_path):
    cfg = _cfg(epochs=2)
    kw = dict(alphas=[2.0], kappas=[0.5], fixed_widths=[3], seeds=[0, 1], progress=False)
    rows = study_sweep.run_sweep(kws.STUDY, cfg, tmp_path, **kw)
    assert sorted(r["row_id"] for r in rows) == ["dcl kappa=0.5 alpha=2"] * 2 + ["fixed width=3"] * 2
    with (tmp_path / "sweep_summary.csv").open() as f:
        summary = {r["row_id"]: r for r in csv.DictReader(f)}
    assert {s["n"] for s in summary.values()} == {"2"}
    accs = [r["accuracy"] for r in rows if r["row_id"] == "fixed width=3"]
    assert float(summary["fixed width=3"]["accuracy_mean"]) == pytest.approx(sum(accs) / 2, rel=1e-5)
    assert (tmp_path / "sweep.png").stat().st_size > 0 and (tmp_path / "sweep.csv").is_file()
    best = study_sweep.best_row(kws.STUDY, rows)
    assert best["accuracy"] == max(r["accuracy"] for r in rows)  # higher is better for accuracy
    # resume: every row is on disk, so nothing runs again (same rows, same wall times)
    again = study_sweep.run_sweep(kws.STUDY, cfg, tmp_path, resume=True, **kw)
    assert [r["wall_seconds"] for r in again] == [r["wall_seconds"] for r in rows]


@given(st.floats(allow_nan=True), st.floats(allow_nan=True), st.booleans())
def test_metric_direction(a, b, higher):
    m = Metric("m", higher)
    got = m.better(a, b)
    if math.isnan(a):
        assert not got
    elif math.isnan(b):
        assert got
    else:
        assert got == ((a > b) if higher else (a < b))
        assert not (got and m.better(b, a))  # never both ways


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be an integer >= 1, got 0"),
    ("width", 2.5, "width must be an integer >= 1, got 2.5"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("lr", float("nan"), "lr must be a number > 0"),
    ("alpha", -0.5, "alpha must be a number >= 0, got -0.5"),
    ("kappa_min", 1.5, r"kappa-min must be in \(0, 1\], got 1.5"),
    ("budget", 0.0, "budget must be a number > 0"),
    ("compact_every", -2, "compact-every must be an integer >= 0"),
    ("settle_epochs", 3, "settle-epochs must leave an epoch"),
    ("family", "lstm", "family must be one of cnn, gru, got 'lstm'"),
    ("n_keywords", 1, "n-keywords must be an integer >= 2, got 1"),
])
def test_config_errors_name_the_setting(field, value, message):
    with pytest.raises(StudyConfigError, match=message):
        _cfg(**{field: value}).validate()


def test_vad_and_spoof_run_configs_share_the_named_checks():
    from slimtrain.tasks.spoof.train import SpoofConfig
    from slimtrain.tasks.vad.train import VadRunConfig

    for cls in (VadRunConfig, SpoofConfig):
        for field, value, message in [("epochs", 0, "epochs must be an integer >= 1, got 0"),
                                      ("lr", float("inf"), "lr must be a number > 0, got inf"),
                                      ("compact_every", 1.5, "compact-every must be an integer >= 0"),
                                      ("family", "lstm", "family must be one of .*got 'lstm'")]:
            with pytest.raises(StudyConfigError, match=message):
                cls(**{field: value}).validate()
    with pytest.raises(StudyConfigError, match="n-fft must be an integer >= 2, got 0"):
        SpoofConfig(n_fft=0).validate()  # a study's own check, after the shared ones
    for kw, message in [({"rawboost": "9"}, "rawboost must be one of 1, 2, 3, 1\\+2, 1\\+2\\+3"),
                        ({"rawboost": "3", "rawboost_p": 2.0}, "rawboost-p must be in \\[0, 1\\], got 2.0"),
                        ({"freq_scale": "bark"}, "freq-scale must be one of mel, linear, got 'bark'"),
                        ({"phase": "gd+gd"}, "phase: phase feature listed twice in 'gd\\+gd'"),
                        ({"phase": 3}, "phase must be a string like 'gd' or 'gd\\+if', got 3"),
                        ({"head": "softmax"}, "head must be one of linear, one-class, got 'softmax'")]:
        with pytest.raises(StudyConfigError, match=message):
            SpoofConfig(**kw).validate()
    with pytest.raises(StudyConfigError, match="sample_rate must be 8000 or 16000"):
        VadRunConfig(sample_rate=44100).validate()


def test_config_replace_names_an_unknown_setting():
    with pytest.raises(StudyConfigError, match="no setting colour"):
        StudyConfig().replace(colour=1)
    assert _cfg().replace(alpha=0.5).alpha == 0.5


def test_add_options_names_an_unknown_option():
    with pytest.raises(ValueError, match="unknown shared option.*nonsense"):
        add_options(argparse.ArgumentParser(), ["alpha", "nonsense"])


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "-1"], "alpha must be >= 0, got -1"),
    (["--kappa-min", "0"], r"kappa-min must be in \(0, 1\], got 0"),
    (["--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--family", "lstm"], "invalid choice: 'lstm'"),
    (["--width", "x"], "expected an integer width, got 'x'"),
    (["--alphas", "0.1"], "--alphas only applies with --sweep"),
    (["--kappa-min", "0.5,0.25"], "give one --kappa-min for a single run"),
    (["--seeds", "2"], "--seeds only apply with --sweep"),
    (["--quick", "--epochs", "3", "--settle-epochs", "3"], "settle-epochs must leave an epoch"),
])
def test_kws_command_errors_are_named(argv, message, capsys, tmp_path):
    assert main(["kws", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimtrain: error:") and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "o" / "model.ckpt").exists()


def test_kws_command_single_run_writes_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["kws", "--quick", "--epochs", "2", "--width", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["config"]["epochs"] == 2 and res["config"]["width"] == 4 and res["data"]["classes"] == 7
    assert (out / "model.ckpt").is_file() and (out / "widths.csv").is_file()
    assert f"accuracy {res['result']['accuracy']:.4f}" in capsys.readouterr().out
    # 'slimtrain export' rebuilds the kws checkpoint (its builder is registered by the study) and cuts it
    assert main(["export", str(out / "model.ckpt"), str(out / "export"), "--no-onnx"]) == 0
    summary = json.loads((out / "export" / "summary.json").read_text())
    assert summary["task"] == "kws" and summary["widths"] == json.loads(res["result"]["widths"])
    assert summary["check"]["passed"]
    # the same settings resume (the run is finished, so it only reports); other settings are refused, named
    assert main(argv + ["--resume"]) == 0
    assert main(argv[:-1] + ["--alpha", "0.5", "--no-progress", "--resume"]) == 2
    assert "other settings (alpha)" in capsys.readouterr().err


@given(st.one_of(st.none(), st.floats(allow_infinity=False), st.integers(), st.text(max_size=5)))
def test_csv_cells_round_to_six_digits_and_leave_missing_empty(v):
    from slimtrain.tasks.study.tables import fmt_cell

    cell = fmt_cell(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        assert cell == ""
    elif isinstance(v, float):
        significant = cell.lstrip("-").split("e")[0].replace(".", "").lstrip("0")  # "0.015625" -> "15625"
        assert float(cell) == pytest.approx(v, rel=1e-5, abs=1e-300) and len(significant) <= 6
    else:
        assert cell == str(v)


def test_vad_sweep_table_round_trips_byte_for_byte_through_the_shared_writer(tmp_path):
    """The committed VAD sweep table, read and written again by the shared CSV writer, is the same file."""
    from pathlib import Path

    from slimtrain.tasks.vad.sweep import read_sweep_csv, write_sweep_csv

    src = Path(__file__).resolve().parents[1] / "docs" / "vad_results" / "sweep.csv"
    out = write_sweep_csv(read_sweep_csv(src), tmp_path / "sweep.csv")
    assert out.read_bytes() == src.read_bytes()
