"""Frame AUC/EER per noise type x SNR band (``slimtrain vad eval --by-noise``): every cell equals the metric
computed with scikit-learn on the frames of the clips it selects; bad inputs are named; the eval command
writes the breakdown and its pooled band rows agree with the per-band AUC columns it already reported."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from slimtrain.tasks.vad.breakdown import ALL, BreakdownError, hardest, noise_snr_breakdown

BANDS = {"< 5 dB": (-math.inf, 5), "5-15 dB": (5, 15), "15-25 dB": (15, 25), ">= 25 dB": (25, math.inf)}


def _eer_by_hand(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.flatnonzero(fnr - fpr <= 0)[0])
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    return float(fpr[i - 1] + d0 / (d0 - d1) * (fpr[i] - fpr[i - 1]))


def _fixture(rng: np.random.Generator, clips: int, frames: int = 30):
    labels = (rng.random((clips, frames)) < 0.5).astype(np.uint8)
    labels[:, 0], labels[:, 1] = 0, 1  # both classes in every clip
    scores = labels * rng.normal(1.0, 1.0, (clips, frames)) + rng.normal(0, 1.0, (clips, frames))
    return labels, scores


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), clips=st.integers(1, 14))
def test_every_cell_is_sklearn_on_the_frames_of_its_clips(seed, clips):
    rng = np.random.default_rng(seed)
    labels, scores = _fixture(rng, clips)
    snr = rng.choice([-5.0, 4.99, 5.0, 14.0, 15.0, 24.9, 25.0, 60.0], clips)
    noise = [str(x) for x in rng.choice(["babble", "white", "music"], clips)]
    rows = noise_snr_breakdown(labels, scores, snr, noise)
    seen = set()
    for r in rows:
        lo, hi = BANDS.get(r["band"], (-math.inf, math.inf))
        sel = np.array([(r["noise"] in (ALL, k)) and lo <= x < hi for k, x in zip(noise, snr)])
        y, s = labels[sel].ravel(), scores[sel].ravel()
        assert r["clips"] == sel.sum() > 0 and r["frames"] == y.size
        assert r["speech_fraction"] == pytest.approx(y.mean())
        assert r["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert r["eer"] == pytest.approx(_eer_by_hand(y, s), abs=1e-12)
        seen.add((r["noise"], r["band"]))
    # every (noise, band) with a clip has exactly one row; every noise and band has an 'all' row
    cells = {(k, b) for k, x in zip(noise, snr) for b, (lo, hi) in BANDS.items() if lo <= x < hi}
    assert seen == cells | {(k, ALL) for k in noise} | {(ALL, b) for _, b in cells}
    assert len(rows) == len(seen)
    # the band cells of a noise type partition its clips
    for k in set(noise):
        assert sum(r["clips"] for r in rows if r["noise"] == k and r["band"] != ALL) == noise.count(k)


def test_a_one_class_cell_has_no_auc_and_hardest_ranks_the_rest():
    labels = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], np.uint8)
    scores = np.array([[0.1, 0.9, 0.8, 0.2], [0.5, 0.1, 0.2, 0.3], [0.9, 0.1, 0.2, 0.8], [0.6, 0.65, 0.7, 0.1]])
    rows = noise_snr_breakdown(labels, scores, np.array([0.0, 30.0, 0.0, 0.0]), ["white", "white", "babble", "pink"])
    cell = {(r["noise"], r["band"]): r for r in rows}
    assert math.isnan(cell["white", ">= 25 dB"]["auc"]) and cell["white", ">= 25 dB"]["clips"] == 1
    assert cell["white", "< 5 dB"]["auc"] == 1.0 and cell["babble", "< 5 dB"]["auc"] == 0.0
    assert hardest(rows, "any", band="< 5 dB") == [("babble", 0.0), ("pink", 0.75), ("white", 1.0)]
    assert [k for k, _ in hardest(rows, "any", band="< 5 dB", metric="eer", n=1)] == ["babble"]
    with pytest.raises(BreakdownError, match="no breakdown rows of model 'any' in band '5-15 dB'"):
        hardest(rows, "any", band="5-15 dB")


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "scores": a["scores"][:, :-1]}, r"labels \(3, 4\) and scores \(3, 3\)"),
    (lambda a: {**a, "labels": a["labels"].ravel(), "scores": a["scores"].ravel()},
     r"labels \(12,\) and scores \(12,\) must both be \(clips, frames\)"),
    (lambda a: {**a, "snr_db": a["snr_db"][:2]}, "2 SNR values for 3 clips"),
    (lambda a: {**a, "noise": a["noise"][:2]}, "2 noise types for 3 clips"),
    (lambda a: {**a, "snr_db": np.array([1.0, np.nan, 3.0])}, r"clip 1 has no SNR \(NaN\)"),
    (lambda a: {**a, "noise": ["white", "", "pink"]}, "clip 1 has no noise type"),
    (lambda a: {**a, "scores": np.where(np.arange(12).reshape(3, 4) == 9, np.nan, a["scores"])},
     "the scores of clip 2 hold NaN or Inf"),
])
def test_bad_inputs_are_named(change, message):
    labels, scores = _fixture(np.random.default_rng(0), 3, 4)
    args = change({"labels": labels, "scores": scores, "snr_db": np.array([1.0, 2.0, 3.0]),
                   "noise": ["white", "babble", "pink"]})
    with pytest.raises(BreakdownError, match="test set, model m: " + message):
        noise_snr_breakdown(args["labels"], args["scores"], args["snr_db"], args["noise"], what="test set, model m")


def test_eval_writes_the_breakdown_and_its_band_rows_match_the_band_columns(tmp_path, capsys):
    from slimtrain.cli import main
    from slimtrain.tasks.vad.build import build_vad_data
    from slimtrain.tasks.vad.data import VadDataConfig, load_vad_data

    data = tmp_path / "data"
    build_vad_data(VadDataConfig.quick(test_minutes=1.2), data)
    out, by = tmp_path / "rows.csv", tmp_path / "by_noise.csv"
    assert main(["vad", "eval", "--set", "test", "--data", str(data), "--no-silero", "--csv", str(out),
                 "--by-noise", str(by)]) == 0
    printed = capsys.readouterr().out
    assert "frame AUC per noise type x SNR band" in printed
    row = next(csv.DictReader(out.open()))
    cells = list(csv.DictReader(by.open()))
    low = sorted((float(c["auc"]), c["noise"]) for c in cells
                 if c["band"] == "< 5 dB" and c["noise"] != ALL and c["auc"] != "nan")
    assert low  # the quick corpus of seed 0 has clips below 5 dB; the printed ranking is the 3 lowest AUCs
    assert "# hardest below 5 dB for shipped: " + ", ".join(f"{k} (AUC {v:.3f})" for v, k in low[:3]) in printed
    assert {c["model"] for c in cells} == {"shipped"} and {c["set"] for c in cells} == {"test"}
    split = load_vad_data(data)[0]["test"]
    assert {c["noise"] for c in cells} == set(split.noise) | {ALL}
    for c in cells:
        if c["noise"] == ALL and not math.isnan(float(c["auc"])):  # the same frames as the band columns
            assert float(c["auc"]) == pytest.approx(float(row[f"auc {c['band']}"]), abs=1e-9)
            assert float(c["eer"]) == pytest.approx(float(row[f"eer {c['band']}"]), abs=1e-9)
    assert sum(int(c["clips"]) for c in cells if c["band"] == ALL and c["noise"] != ALL) == int(row["clips"])


# -- the generated table (slimtrain report, block vad-noise-snr) ---------------------------------------------
def _docs_copy(tmp_path):
    import shutil
    from pathlib import Path

    from slimtrain.tasks.report import NOISE_SNR_SETS

    src = Path(__file__).resolve().parents[1] / "docs" / "vad_results"
    dst = tmp_path / "docs" / "vad_results"
    dst.mkdir(parents=True)
    for name, _, _ in NOISE_SNR_SETS:
        shutil.copy(src / name, dst / name)
    return tmp_path, dst


def test_the_report_table_follows_the_breakdown_csvs(tmp_path):
    from slimtrain.tasks.report import render_block

    root, d = _docs_copy(tmp_path)
    before = render_block("vad-noise-snr", root)
    assert "| music | 0.882 / 0.952 (16) |" in before
    assert "below 5 dB on: music (0.882 against 0.952)" in before
    path = d / "noise_snr_test_core.csv"
    rows = list(csv.DictReader(path.open()))
    for r in rows:  # our music cell below 5 dB now beats Silero's
        if r["model"] == "shipped" and r["noise"] == "music" and r["band"] == "< 5 dB":
            r["auc"], r["eer"] = "0.99", "0.02"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    after = render_block("vad-noise-snr", root)
    assert "| music | **0.990** / 0.952 (16) |" in after and "| music | **2.0** / 10.0 |" in after
    assert "below 5 dB on: pink (0.969 against 0.979)" in after


def test_the_report_table_names_a_missing_or_one_model_csv(tmp_path):
    from slimtrain.tasks.report import ReportError, render_block

    root, d = _docs_copy(tmp_path)
    path = d / "noise_snr_test_ext.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if not line.startswith("Silero")) + "\n")
    with pytest.raises(ReportError, match=r"noise_snr_test_ext.csv needs the rows of one model and of Silero VAD"):
        render_block("vad-noise-snr", root)
    path.unlink()
    with pytest.raises(ReportError, match=r"noise_snr_test_ext.csv; run 'slimtrain vad eval --set test --data "
                                          r"runs/ext96h --by-noise"):
        render_block("vad-noise-snr", root)


def _write(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_the_recipe_table_pairs_v2_with_v1_of_the_same_seed(tmp_path):
    from slimtrain.tasks.report import NOISE_RECIPE_SETS, ReportError, render_block

    d = tmp_path / "docs" / "vad_results"
    d.mkdir(parents=True)
    bands = ["< 5 dB", "5-15 dB", "15-25 dB", ">= 25 dB"]

    def row(model, auc, eer):
        return {"model": model, "clips": 9, "set_fingerprint": "f", "mflops_per_s": 2.0, "auc": auc, "eer": eer,
                **{f"auc {b}": auc - 0.01 * i for i, b in enumerate(bands)}}

    models = {"runs/noise_v1_seed0/vad_crnn.pt": (0.90, 0.20), "runs/noise_v2_seed0/vad_crnn.pt": (0.93, 0.15),
              "runs/noise_v1_seed1/vad_crnn.pt": (0.91, 0.20), "runs/noise_v2_seed1/vad_crnn.pt": (0.90, 0.19),
              "runs/noise48_v1_seed0/vad_crnn.pt": (0.95, 0.10), "runs/noise48_v2_seed0/vad_crnn.pt": (0.94, 0.11),
              "Silero VAD (8 kHz)": (0.88, 0.2)}
    for key, _, _ in NOISE_RECIPE_SETS:
        _write(d / f"noise_recipe_{key}.csv", [row(m, *v) for m, v in models.items()])
        _write(d / f"noise_recipe_{key}_by_noise.csv", [{"model": m, "noise": "music", "band": "< 5 dB", "auc": a}
                                                         for m, a in zip(models, (0.7, 0.8, 0.7, 0.6, 0.8, 0.8, 0.85))])
    out = render_block("vad-noise-recipe", tmp_path)
    assert "| 16 min, recipe v1, seed 0 | 2.00 | 0.9000 | 20.00 | 0.900 | 0.890 | 0.880 | 0.870 | 0.700 |" in out
    assert "| **16 min: v2 - v1, seed 0** | | +0.0300 | -5.00 | +0.030 | +0.030 | +0.030 | +0.030 | +0.100 |" in out
    assert "| **16 min: v2 - v1, seed 1** | | -0.0100 | -1.00 | -0.010 | -0.010 | -0.010 | -0.010 | -0.100 |" in out
    assert "| **16 min: seeds where v2 is better (of 2)** | | 1 | 2 | 1 | 1 | 1 | 1 | 1 |" in out
    # mean of the paired differences with its Student-t interval (t(1) = 12.706, se = 0.02 and 2 points)
    assert "| **16 min: v2 - v1, mean ± 95 % half-width (2 seeds)** | | +0.0100 ± 0.2541 | -3.00 ± 25.41 |" in out
    assert out.count("**16 min: v2 - v1, seed 0**") == len(NOISE_RECIPE_SETS)
    assert "| 48 min, recipe v2, seed 0 | 2.00 | 0.9400 | 11.00 |" in out
    assert "| **48 min: v2 - v1, seed 0** | | -0.0100 | +1.00 | -0.010 | -0.010 | -0.010 | -0.010 | +0.000 |" in out
    assert "48 min: seeds where v2" not in out and "48 min: v2 - v1, mean" not in out  # one seed: no count
    path = d / "noise_recipe_unseen_human.csv"
    _write(path, [row("runs/noise_v1_seed0/vad_crnn.pt", 0.9, 0.2)])
    with pytest.raises(ReportError, match="noise_recipe_unseen_human.csv needs a v1 and a v2 run of the same seed"):
        render_block("vad-noise-recipe", tmp_path)
    _write(path, [row("runs/other.pt", 0.9, 0.2)])
    with pytest.raises(ReportError, match="model 'runs/other.pt' is neither Silero VAD nor a run folder named"):
        render_block("vad-noise-recipe", tmp_path)
    path.unlink()
    with pytest.raises(ReportError, match="noise_recipe_unseen_human.csv; run 'slimtrain vad eval --set unseen-human"):
        render_block("vad-noise-recipe", tmp_path)


def test_the_human_training_table_summarises_arms_over_seeds_and_pairs_them_with_the_baseline(tmp_path):
    from slimtrain.tasks.report import HUMAN_TRAINING_SETS, ReportError, render_block

    d = tmp_path / "docs" / "vad_results"
    d.mkdir(parents=True)

    def row(model, auc, eer, f1=0.8):
        return {"model": model, "clips": 9, "set_fingerprint": "f", "mflops_per_s": 2.0, "auc": auc, "eer": eer,
                "f1": f1, "auc < 5 dB": auc - 0.05, "auc fr-x": auc + 0.01}

    rows = [row(f"runs/noise48_v1_seed{s}/vad_crnn.pt", a, 0.20) for s, a in enumerate((0.90, 0.91, 0.92))]
    rows += [row(f"runs/hv48_v1_seed{s}/vad_crnn.pt", a + 0.02, 0.18) for s, a in enumerate((0.90, 0.91, 0.925))]
    rows += [row("Silero VAD (8 kHz)", 0.88, 0.25)]
    for key, _ in HUMAN_TRAINING_SETS:
        _write(d / f"human_training_{key}.csv", rows)
    out = render_block("vad-human-training", tmp_path)
    # mean 0.91, sd 0.01, t(2) = 4.303: half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert "| extended 48 min, noise v1 | 3 | 2.00 | 0.9100 ± 0.0248 | 20.00 ± 0.00 | 0.800 ± 0.000 | 0.860 ± 0.025 | 0.920 ± 0.025 |" in out
    assert "| Silero VAD (8 kHz) | - | - | 0.8800 | 25.00 | 0.800 | 0.830 | 0.890 |" in out
    # paired by seed: differences +0.02, +0.02, +0.025: mean +0.0217, interval (+0.0145, +0.0288) excludes 0
    line = next(ln for ln in out.splitlines() if ln.startswith("| extended 48 min + human voices, noise v1 | better"))
    assert "better (+0.0217 [+0.0145, +0.0288])" in line and "better (-2.00" in line
    assert "noise v2 |" not in out  # arms without runs are left out
    _write(d / "human_training_unseen_human.csv", rows[3:])
    with pytest.raises(ReportError, match="no noise48_v1_seed<k> run"):
        render_block("vad-human-training", tmp_path)
    _write(d / "human_training_unseen_human.csv", [row("runs/other/vad_crnn.pt", 0.9, 0.2)])
    with pytest.raises(ReportError, match="neither Silero VAD nor a run folder"):
        render_block("vad-human-training", tmp_path)
