"""The VAD fine-tuning study (DCL fine-tuning of a trained model vs torch-pruning + fine-tuning) and the
sweep's pruning rows: matched MACs, equal epochs, the CSV the report reads, paired verdicts."""
from __future__ import annotations

import math
import re

import pytest

from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.data import VadDataConfig
from slimtrain.tasks.vad.finetune_study import (COLUMNS, FinetuneStudyConfig, StudyError, format_study_table,
                                                read_study_csv, run_study, study_sentences, write_study_csv)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad_ft") / "data"
    build_vad_data(VadDataConfig.quick(), d, progress=False)
    return d


def test_quick_study_matches_macs_and_epochs_and_writes_the_report_columns(data_dir, tmp_path):
    cfg = FinetuneStudyConfig.quick(seeds=(0, 1), targets=(3.2e6,), finetune_epochs=3)
    out = tmp_path / "study"
    rows = run_study(cfg, out, cache=data_dir, progress=False)
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("DCL", 0), ("DCL", 1), ("prune", 0), ("prune", 1)]
    by = {(r["arm"], r["seed"]): r for r in rows}
    for seed in (0, 1):
        dcl, pr = by["DCL", seed], by["prune", seed]
        # both arms start from the same trained full model and shrink it ...
        assert dcl["full_auc"] == pr["full_auc"] and dcl["full_mflops_per_s"] == pr["full_mflops_per_s"]
        assert dcl["mflops_per_s"] < 0.95 * dcl["full_mflops_per_s"]
        # ... to the same MACs (the pruning target is the exported DCL model) and the same band count
        assert abs(pr["mflops_per_s"] / dcl["mflops_per_s"] - 1) <= cfg.tolerance
        assert pr["mel_bands"] == dcl["mel_bands"] < 80
        assert dcl["finetune_epochs"] == pr["finetune_epochs"] == 3
        # the DCL widths learned until the budget was met, then stayed: fewer steps than the 3 epochs hold
        assert 1 <= dcl["width_steps"] < 3 * 2 and pr.get("width_steps") is None
        assert 0.5 < dcl["auc"] <= 1 and 0.5 < pr["auc"] <= 1
    # the CSV has every column the report reads, and reads back as the same numbers
    back = read_study_csv(out / "finetune_study.csv")
    assert list(back[0]) == COLUMNS
    for a, b in zip(rows, back):
        assert b["auc"] == pytest.approx(a["auc"], rel=1e-5) and b["seed"] == a["seed"] and b["arm"] == a["arm"]
    table = format_study_table(back)
    assert "| 3.2 | DCL fine-tuning (magnitude reorder) | 2 |" in table
    assert "| 3.2 | torch-pruning + fine-tuning | 2 |" in table
    # the full models were saved; a rerun reads them instead of training (same full metrics)
    ckpt = out / "checkpoints" / "crnn_fixed_x1_e1_seed1.pt"  # (full_epochs=1: the sweep names the length)
    assert ckpt.is_file()
    stamp = ckpt.stat().st_mtime_ns
    again = run_study(cfg.__class__.quick(seeds=(1,), targets=(3.2e6,), finetune_epochs=3), out / "again",
                      cache=data_dir, full_checkpoints=out / "checkpoints", progress=False)
    assert ckpt.stat().st_mtime_ns == stamp  # read, not retrained
    assert [r["auc"] for r in again] == [by["DCL", 1]["auc"], by["prune", 1]["auc"]]  # and deterministic
    # a full model of another length has another name; a file under the right name with the wrong model is refused
    wrong = out / "checkpoints" / "crnn_fixed_x1_e3_seed0.pt"
    wrong.write_bytes((out / "checkpoints" / "crnn_fixed_x1_e1_seed0.pt").read_bytes())
    with pytest.raises(StudyError, match="not the crnn full model of seed 0 trained 3 epochs"):
        run_study(FinetuneStudyConfig.quick(seeds=(0,), full_epochs=3), out, cache=data_dir, progress=False)
    assert ckpt.stat().st_mtime_ns == stamp


def _rows(dcl_auc, prune_auc, dcl_eer=None, prune_eer=None, target=1.5):
    rows = []
    for arm, aucs, eers in (("DCL", dcl_auc, dcl_eer), ("prune", prune_auc, prune_eer)):
        for s, a in enumerate(aucs):
            e = 0.1 if eers is None else eers[s]
            rows.append({c: math.nan for c in COLUMNS} | {
                "family": "crnn", "arm": arm, "seed": s, "target_mflops": target, "mflops_per_s": 1.49,
                "mel_bands": 30.0, "auc": a, "f1": 0.9, "eer": e, "eer < 5 dB": 0.2, "finetune_epochs": 6,
                "full_epochs": 12, "width_steps": 7 if arm == "DCL" else None, "widths": "{}",
                "data_fingerprint": "x"})
    return rows


def test_paired_verdicts_and_sentences_follow_the_numbers(tmp_path):
    # DCL higher on every seed by about 0.01 (small spread): significant; EER equal on average: not
    rows = _rows([0.95, 0.96, 0.955], [0.94, 0.951, 0.944], [0.10, 0.12, 0.11], [0.11, 0.11, 0.11])
    path = write_study_csv(rows, tmp_path / "s.csv")
    back = read_study_csv(path)
    table = format_study_table(back)
    assert "| 1.5 | 1.000 (0.0 %) | DCL better (+0.0100 [" in table
    assert re.search(r"\| n\.s\. \([+-]0\.00 \[-[0-9.]+, \+[0-9.]+\]\) \|$", table, re.M)
    text = study_sentences(back)
    assert "AUC DCL - prune +0.0100 [" in text and "DCL fine-tuning is significantly better" in text
    assert re.search(r"EER DCL - prune \S+ points \[-\S+, \+\S+\]: the difference is not significant", text)
    # pruning better on every seed
    text = study_sentences(_rows([0.90, 0.91, 0.905], [0.95, 0.96, 0.952]))
    assert "AUC DCL - prune -0.0490 [-0.0533, -0.0447]" in text and "torch-pruning is significantly better" in text
    # one seed: no test, never an invented interval
    one = format_study_table(_rows([0.9], [0.91]))
    assert "n=1" in one and "±" not in one


def test_bad_settings_and_files_are_named_errors(tmp_path):
    with pytest.raises(StudyError, match="targets must be positive"):
        FinetuneStudyConfig(targets=(0.0,)).validate()
    with pytest.raises(StudyError, match="finetune_epochs must be >= 1"):
        FinetuneStudyConfig(finetune_epochs=0).validate()
    with pytest.raises(StudyError, match="no fine-tuning study at"):
        read_study_csv(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("family,arm\ncrnn,DCL\n")
    with pytest.raises(StudyError, match="missing columns"):
        read_study_csv(tmp_path / "bad.csv")


def test_sweep_pruning_rows_get_the_same_total_epochs_as_dcl(data_dir, tmp_path):
    from slimtrain.tasks.vad.sweep import VadSweepConfig, run_sweep

    assert VadSweepConfig(epochs=12).prune_split == (6, 6)
    assert VadSweepConfig(epochs=12, prune_finetune_epochs=4).prune_split == (8, 4)
    with pytest.raises(ValueError, match="prune_finetune_epochs must be in"):
        _ = VadSweepConfig(epochs=3, prune_finetune_epochs=3).prune_split
    cfg = VadSweepConfig.quick(families=("crnn",), fixed_scales=(), gate_intervals=(), prune_kappas=(0.25,),
                               epochs=2, anchors=False, seeds=(0, 1))
    rows = run_sweep(cfg, tmp_path / "sw", cache=data_dir, progress=False)
    pr = [r for r in rows if r["method"] == "prune"]
    assert sorted(r["seed"] for r in pr) == [0, 1] and all(r["status"] == "ok" for r in pr)
    for r in pr:
        assert r["pretrain_epochs"] + r["epochs"] == 2 == next(
            d["epochs"] for d in rows if d["method"] == "DCL" and d["seed"] == r["seed"])
        dcl = next(d for d in rows if d["method"] == "DCL" and d["seed"] == r["seed"])
        assert abs(r["mflops_per_s"] / dcl["mflops_per_s"] - 1) <= 0.05
