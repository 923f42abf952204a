"""``slimtrain data vad``, ``slimtrain vad`` (single run and --sweep --quick) and ``slimtrain vad predict``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from slimtrain.cli import main
from slimtrain.tasks.audio import write_audio
from slimtrain.tasks.vad.data import load_vad_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vad_run")
    assert main(["vad", "--quick", "--out", str(out), "--kappa-min", "0.25", "--no-progress"]) == 0
    return out


def test_single_run_writes_a_checkpoint_that_predict_and_export_use(trained, tmp_path, capsys):
    ckpt = trained / "vad_crnn.pt"
    assert ckpt.is_file() and (trained / "result.json").is_file()
    data, _ = load_vad_data(trained / "data-quick")
    test = data["test"]
    i = int(np.argmax([np.mean(lab) < 0.8 and lab[:30].sum() == 0 for lab in test.labels]))  # starts silent
    wav = write_audio(tmp_path / "clip.wav", test.audio[i], 8000)
    capsys.readouterr()
    assert main(["vad", "predict", str(ckpt), str(wav)]) == 0
    out = capsys.readouterr()
    segs = [tuple(map(float, line.split("\t"))) for line in out.out.strip().splitlines()]
    assert segs and all(0 <= a < b <= 4.0 for a, b in segs)
    assert "speech segments" in out.err
    # predicted speech frames agree with the labels far above chance
    lab = test.labels[i].astype(bool)
    pred = np.zeros_like(lab)
    for a, b in segs:
        pred[int(round(a * 100 + 0.5)):int(round(b * 100 + 0.5))] = True
    assert (pred == lab).mean() > 0.7
    # a 16 kHz stereo copy is resampled and gives nearly the same segments
    from scipy.signal import resample_poly

    x16 = resample_poly(test.audio[i], 2, 1).astype(np.float32)
    import soundfile as sf

    sf.write(tmp_path / "clip16.wav", np.stack([x16, x16], 1), 16000)
    assert main(["vad", "predict", str(ckpt), str(tmp_path / "clip16.wav")]) == 0
    segs16 = [tuple(map(float, line.split("\t"))) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(segs16) == pytest.approx(len(segs), abs=1)
    # slimtrain export works on the VAD checkpoint, and predict accepts its TorchScript model
    assert main(["export", str(ckpt), str(tmp_path / "exp"), "--no-onnx"]) == 0  # ONNX export is slow on CPU
    capsys.readouterr()
    assert main(["vad", "predict", str(tmp_path / "exp" / "model.pt"), str(wav), "--threshold", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_quick_sweep_writes_csvs_and_plot_with_dcl_baselines_and_anchors(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["vad", "--sweep", "--quick", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    ok = [r for r in rows if r["status"] == "ok"]
    methods = {r["method"] for r in ok}
    assert {"DCL", "fixed", "anchor"} <= methods
    for r in ok:
        assert 0.5 < float(r["auc"]) <= 1.0, r  # every model and shipped VAD is better than chance
    dcl = [r for r in ok if r["method"] == "DCL"]
    assert len(dcl) == 2 and all(float(r["auc"]) > 0.8 for r in dcl)
    full = {r["family"]: float(r["mflops_per_s"]) for r in ok if r["label"].endswith("(baseline)")}
    assert all(float(r["mflops_per_s"]) < full[r["family"]] for r in dcl)
    pooled = list(csv.DictReader((out / "vad_pooled.csv").open()))
    assert list(pooled[0]) == ["subplot", "model", "min_kappa", "mel_bands", "params", "mflops", "eer_percent"]
    by_snr = list(csv.DictReader((out / "vad_by_snr.csv").open()))
    assert list(by_snr[0]) == ["model", "snr_range", "eer_percent"]
    assert {r["snr_range"] for r in by_snr} == {"< 5 dB", "5-15 dB", "15-25 dB", ">= 25 dB"}
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "| model | method |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["vad", "--kappa-min", "2"], "kappa-min must be in (0, 1]"),
    (["vad", "--family", "lstm"], "family must be one of crnn, transformer"),
    (["vad", "--budget", "-3"], "budget must be > 0, got -3"),
    (["vad", "predict", "/nonexistent/model.pt", "x.wav"], "model file not found: /nonexistent/model.pt"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimtrain: error:") and message in err and "\n" not in err


def test_predict_names_a_bad_wav(trained, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    # a file that cannot be read is named on one line and counted; the exit code is 1 (per-file failure)
    assert main(["vad", "predict", str(trained / "vad_crnn.pt"), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("slimtrain: error:") and "bad.wav" in err[0]
    assert err[1].endswith("1 of 1 failed")


def test_data_command_builds_the_quick_set(tmp_path, capsys):
    assert main(["data", "vad", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "speakers it_IT_m_Carlo" in out and (tmp_path / "d" / "manifest.json").is_file()


def test_frames_to_segments_merges_short_gaps_and_drops_short_runs():
    from slimtrain.tasks.vad.predict import frames_to_segments

    s = np.zeros(100, dtype=bool)
    s[10:30] = True  # 0.195 .. 0.295 s
    s[33:40] = True  # gap of 3 frames (0.03 s) < min_gap: merged
    s[60:64] = True  # 0.04 s < min_speech: dropped
    assert frames_to_segments(s, 0.01, min_speech=0.1, min_gap=0.1) == [(0.095, 0.395)]
    assert frames_to_segments(s, 0.01, min_speech=0.0, min_gap=0.0) == [(0.095, 0.295), (0.325, 0.395), (0.595, 0.635)]
    assert frames_to_segments(np.zeros(5, dtype=bool)) == []


def test_pareto_notes_mark_dominated_points_and_name_the_baseline():
    from slimtrain.tasks.vad.sweep import pareto_notes

    rows = [
        {"family": "crnn", "method": "fixed", "label": "F small", "status": "ok", "mflops_per_s": 1.0, "auc": 0.90},
        {"family": "crnn", "method": "fixed", "label": "F big", "status": "ok", "mflops_per_s": 4.0, "auc": 0.95},
        {"family": "crnn", "method": "DCL", "label": "D1", "status": "ok", "mflops_per_s": 1.5, "auc": 0.93},
        {"family": "crnn", "method": "DCL", "label": "D2", "status": "ok", "mflops_per_s": 2.0, "auc": 0.89},
        {"family": "transformer", "method": "fixed", "label": "T", "status": "ok", "mflops_per_s": 0.1, "auc": 0.99},
        {"family": "anchor", "method": "anchor", "label": "A", "status": "ok", "mflops_per_s": float("nan"), "auc": 1.0},
    ]
    pareto_notes(rows)
    flags = {r["label"]: (r.get("on_front"), r.get("dominated_by")) for r in rows}
    assert flags["D1"] == (True, None)  # other family and anchors do not count
    assert flags["D2"] == (False, "F small")  # D1 also dominates it, but only baselines are named
    assert flags["F big"] == (True, None) and flags["F small"] == (True, None)
    assert flags["A"] == (None, None)


def test_multi_seed_sweep_records_seeds_and_reports_intervals(trained, tmp_path):
    """Every row runs for every seed (own checkpoint), rows carry seed and data fingerprint, and the
    summary has n = 2 with a Student-t interval; --resume reruns a row whose checkpoint is gone."""
    from slimtrain.train.sweep_engine import row_path
    from slimtrain.tasks.vad.sweep import VadSweepConfig, format_summary_table, run_sweep

    cfg = VadSweepConfig.quick(families=("crnn",), fixed_scales=(1.0,), gate_intervals=(), epochs=1, anchors=False,
                               seeds=(0, 1))
    out = tmp_path / "seeds"
    rows = run_sweep(cfg, out, cache=trained / "data-quick", progress=False)
    assert sorted((r["label"], r["seed"]) for r in rows) == [
        ("CRNNVAD (baseline)", 0), ("CRNNVAD (baseline)", 1), ("DCRNNVAD 0.25", 0), ("DCRNNVAD 0.25", 1)]
    assert len({r["data_fingerprint"] for r in rows}) == 1 and rows[0]["data_fingerprint"]
    assert all(r["threads"] == 1 and r["status"] == "ok" for r in rows)
    assert (out / "checkpoints" / "crnn_dcl_k0.25_spread_e1_seed1.pt").is_file()
    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["seed"] for r in table] == ["0", "0", "1", "1"] and {r["epochs"] for r in table} == {"1"}
    summary = {r["label"]: r for r in csv.DictReader((out / "sweep_summary.csv").open())}
    dcl = summary["DCRNNVAD 0.25"]
    assert dcl["n"] == "2" and float(dcl["auc_lo"]) < float(dcl["auc_mean"]) < float(dcl["auc_hi"])
    text = format_summary_table(rows)
    assert "| CRNNVAD (baseline) | fixed | 2 |" in text and "| ref. |" in text and " ± " in text
    assert any(v in text for v in ("| better (", "| worse (", "| n.s. ("))
    # a row whose checkpoint disappeared is run again on --resume; the others are reused
    (out / "checkpoints" / "crnn_dcl_k0.25_spread_e1_seed1.pt").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    again = run_sweep(cfg, out, cache=trained / "data-quick", progress=False, resume=True)
    changed = [n for n, t in stamps.items() if (out / "rows" / n).stat().st_mtime_ns != t]
    assert len(changed) == 1 and changed[0].startswith("DCL-crnn-DCRNNVAD_0.25-seed1-")
    assert [r["auc"] for r in again] == [r["auc"] for r in rows]  # same seed, same result
    assert row_path(out / "rows", changed[0][:-5]).is_file()



def test_sweep_checkpoint_names_carry_the_run_length(tmp_path):
    """24 epochs by default (settled half, pruning 12 + 12); a sweep of another length never writes to the
    checkpoint files of the default one, and 12-epoch runs keep the names they had before the tag."""
    from slimtrain.tasks.vad.sweep import VadSweepConfig, _seed_jobs

    def names(cfg):
        return {j["checkpoint"] for j in _seed_jobs(cfg, tmp_path, 0, multi=True) if "checkpoint" in j}

    cfg = VadSweepConfig()
    assert (cfg.epochs, cfg.dcl_settle_epochs, cfg.prune_split) == (24, 12, (12, 12))
    jobs = _seed_jobs(cfg, tmp_path, 0, multi=True)
    assert {j["run"]["epochs"] for j in jobs} == {24}
    assert {j["run"].get("settle_epochs") for j in jobs if j["kind"] == "DCL"} == {12}
    default, twelve = names(cfg), names(VadSweepConfig(epochs=12))
    assert all("_e24_" in Path(n).name for n in default) and not default & twelve
    assert str(tmp_path / "checkpoints" / "transformer_dcl_k0.5_hw_spread_seed0.pt") in twelve
    # budget rows settle at the half like every DCL row; settling at the budget is a setting with its own names
    budget = [j for j in jobs if j["run"].get("budget") is not None]
    assert budget and not any(j["run"].get("settle_at_budget") for j in budget)
    at = [j for j in _seed_jobs(VadSweepConfig(settle_at_budget=True), tmp_path, 0, multi=True)
          if j["run"].get("budget") is not None]
    assert all(j["run"]["settle_at_budget"] for j in at)
    assert {j["checkpoint"] for j in at}.isdisjoint(default) and all("_atb_" in j["checkpoint"] for j in at)


def test_an_explicit_data_folder_without_a_corpus_says_which_corpus_it_builds(trained, tmp_path, capsys):
    """``--data DIR`` without a corpus builds the core one there (the documented cache), and says so: a typo'd
    path or a stopped ``--corpus extended`` build would otherwise train on a corpus the user did not ask for.
    A folder that holds a corpus is used without the note."""
    new = tmp_path / "typo"
    assert main(["vad", "--quick", "--data", str(new), "--out", str(tmp_path / "o"), "--epochs", "1",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"no corpus in {new} (no manifest.json): building the core corpus there" in err
    assert "slimtrain data vad --corpus extended --out" in err and (new / "manifest.json").is_file()
    assert main(["vad", "--quick", "--data", str(trained / "data-quick"), "--out", str(tmp_path / "o2"),
                 "--epochs", "1", "--no-progress"]) == 0
    assert "no corpus in" not in capsys.readouterr().err
