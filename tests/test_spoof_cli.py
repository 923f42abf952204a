"""The anti-spoofing commands: ``slimtrain data spoof``, ``slimtrain spoof`` and ``slimtrain spoof score``."""
from __future__ import annotations

import json

import pytest
import torch

from slimtrain.cli import build_parser, main
from slimtrain.tasks.audio import asterisk_prompts, write_audio

from _spoof_fixtures import spoof_data  # noqa: F401  (fixture)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *words, expect=2):
    assert code == expect, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimtrain: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("path", [("spoof",), ("spoof", "score"), ("data", "spoof")])
def test_help_explains_every_option(capsys, path):
    code, out, _ = _run(capsys, *path, "--help")
    assert code == 0
    p = build_parser()
    for name in path:
        p = next(a for a in p._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
                 and name in a.choices).choices[name]
    for action in p._actions:
        if action.option_strings and action.help and action.dest != "help":
            assert action.option_strings[-1] in out
            assert len(action.help) > 15, action.option_strings


@pytest.mark.parametrize("argv, words", [
    (["spoof", "--stages", "7"], ["stage 7 does not exist"]),
    (["spoof", "--stages", "0/1"], ["--sweep"]),
    (["spoof", "--kappa-min", "0.5,0.25"], ["--sweep"]),
    (["spoof", "--kappa-min", "0"], ["kappa-min"]),
    (["spoof", "--alpha", "-1"], ["alpha"]),
    (["spoof", "--fixed-widths", "4"], ["--sweep"]),
    (["spoof", "--rawboost-p", "0.5"], ["--rawboost-p needs --rawboost"]),
    (["spoof", "--train-data", "no.csv", "--rawboost-p", "0.5"], ["--rawboost-p needs --rawboost"]),  # your corpus
    (["spoof", "--rawboost", "4"], ["--rawboost", "invalid choice"]),
    (["spoof", "--n-mels", "0"], ["n-mels"]),
    (["spoof", "--family", "aasist", "--n-mels", "64"], ["--n-mels", "ResNet family only"]),
    (["spoof", "--family", "aasist", "--freq-mask", "4"], ["--freq-mask", "ResNet family only"]),
    (["spoof", "--freq-mask", "-1"], ["freq-mask", ">= 0"]),
    (["spoof", "--freq-mask", "4", "--freq-masks", "0"], ["freq-masks", ">= 1"]),
    (["spoof", "--freq-masks", "2"], ["--freq-masks needs --freq-mask"]),
    (["spoof", "--macs-budget", "0"], ["--macs-budget", "must be > 0"]),
    (["spoof", "--macs-budget", "lots"], ["--macs-budget", "expected a number"]),
    (["spoof", "--macs-budget", "1e6", "--plain"], ["--macs-budget", "drop"]),
    (["spoof", "--macs-budget", "1e6", "--params-budget", "1000"], ["--macs-budget", "drop"]),
    (["spoof", "--macs-budget", "1e6", "--kappa-control", "floor"], ["--macs-budget", "drop"]),
])
def test_bad_values_give_one_line_errors(capsys, tmp_path, spoof_data, argv, words):  # noqa: F811
    data = spoof_data[0]
    code, _, err = _run(capsys, *argv, "--quick", "--data", data, "--out", tmp_path, "--no-progress")
    _one_line_error(code, err, *words)


def test_quick_run_export_and_score(capsys, tmp_path, spoof_data):  # noqa: F811
    data = spoof_data[0]
    code, out, _ = _run(capsys, "data", "spoof", "--quick", "--out", data, "--no-progress")  # cached: reused
    assert code == 0 and "A4, A6, A7" in out
    o = tmp_path / "run"
    code, out, err = _run(capsys, "spoof", "--quick", "--data", data, "--out", o, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert "EER pooled" in out
    res = json.loads((o / "result.json").read_text())["result"]
    assert res["export_max_abs_diff"] < 1e-5 and 0 <= res["eer_unseen"] <= 100
    code, out, err = _run(capsys, "export", o / "model.ckpt", tmp_path / "exp")
    assert code == 0, err
    wavs = [asterisk_prompts("fr")[0], asterisk_prompts("it")[1]]
    code, out, err = _run(capsys, "spoof", "score", o / "model.ckpt", *wavs)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [ln.split("\t")[1] for ln in lines] == [str(w) for w in wavs]
    ckpt_scores = [float(ln.split("\t")[0]) for ln in lines]
    code, out, _ = _run(capsys, "spoof", "score", tmp_path / "exp" / "model.pt", *wavs)  # TorchScript export
    assert code == 0
    assert [float(ln.split("\t")[0]) for ln in out.strip().splitlines()] == pytest.approx(ckpt_scores, abs=1e-3)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    code, out, err = _run(capsys, "spoof", "score", o / "model.ckpt", wavs[0], bad)
    assert code == 1 and err.strip().splitlines()[-1] == "slimtrain: 1 of 2 files failed"
    _one_line_error(code, "\n".join(err.strip().splitlines()[:-1]), "bad.wav", expect=1)
    assert len(out.strip().splitlines()) == 1  # the good file is still scored
    code, _, err = _run(capsys, "spoof", "score", "--model", bad, wavs[0])
    _one_line_error(code, err, "bad.wav")
    code, _, err = _run(capsys, "spoof", "score", tmp_path / "missing.ckpt", wavs[0])
    _one_line_error(code, err, "missing.ckpt")


def test_front_end_and_rawboost_options_reach_the_model(capsys, tmp_path, spoof_data):  # noqa: F811
    from slimtrain.audio.frontend import mel_filterbank
    from slimtrain.train.checkpoint import load_checkpoint, load_dynamic_model

    data = spoof_data[0]
    rows = {}
    for name, extra in [("plain", []), ("rb", ["--rawboost", "1+2+3", "--rawboost-p", "0.5", "--freq-mask", "3",
                                               "--freq-masks", "2"])]:
        o = tmp_path / name
        code, out, err = _run(capsys, "spoof", "--quick", "--data", data, "--out", o, "--epochs", "2", "--no-progress",
                              "--n-mels", "24", "--freq-scale", "linear", "--phase", "gd+if", "--head", "one-class",
                              *extra)
        assert code == 0, err
        rows[name] = json.loads((o / "result.json").read_text())["result"]
        assert rows[name]["export_max_abs_diff"] < 1e-5
    ckpt = load_checkpoint(tmp_path / "rb" / "model.ckpt")
    assert ckpt["recipe"]["kwargs"]["n_mels"] == 24 and ckpt["recipe"]["kwargs"]["freq_scale"] == "linear"
    assert ckpt["recipe"]["kwargs"]["phase"] == ["gd", "if"] and ckpt["recipe"]["kwargs"]["head"] == "one-class"
    assert ckpt["extra"]["config"]["rawboost"] == "1+2+3" and ckpt["extra"]["config"]["rawboost_p"] == 0.5
    assert ckpt["recipe"]["kwargs"]["freq_mask"] == [3, 2] and "freq_mask" not in \
        load_checkpoint(tmp_path / "plain" / "model.ckpt")["recipe"]["kwargs"]
    model = load_dynamic_model(tmp_path / "rb" / "model.ckpt")
    assert model.frontend.n_mels == 24  # (the quick DCL run keeps the bands; it cuts channels)
    assert torch.equal(model.frontend.fbank, mel_filterbank(129, 24, 8000, scale="linear"))
    assert [f.feature for f in model.phase] == ["gd", "if"] and model.stem.in_channels == 3
    assert model.head == "one-class" and not hasattr(model, "fc")
    assert all(torch.equal(f.fbank, model.frontend.fbank) for f in model.phase)  # band for band
    # same seed, same data: the augmentation alone changed what was learned
    assert rows["plain"]["eer_pooled"] != rows["rb"]["eer_pooled"] or rows["plain"]["widths_continuous"] != \
        rows["rb"]["widths_continuous"]


def test_quick_sweep_writes_the_paper_columns_and_the_plot(capsys, tmp_path, spoof_data):  # noqa: F811
    import csv

    data = spoof_data[0]
    o = tmp_path / "sweep"
    code, out, err = _run(capsys, "spoof", "--sweep", "--quick", "--data", data, "--out", o, "--epochs", "1",
                          "--fixed-widths", "4", "--no-pruning", "--no-progress")
    assert code == 0, err
    rows = list(csv.DictReader(open(o / "sweep.csv")))
    paper = ["model", "dynamic_resblock", "min_kappa", "params_millions", "gflops", "eer_percent"]
    assert list(rows[0])[:6] == paper
    assert {f"eer_{a}_percent" for a in ("A1", "A2", "A3", "A4", "A5", "A6", "A7")} <= set(rows[0])
    assert [r["method"] for r in rows] == ["fixed", "dcl"]
    assert rows[1]["dynamic_resblock"] == "0, 1, 2, 3" and float(rows[1]["min_kappa"]) == 0.25
    for r in rows:  # the paper's units: GFLOP per second of audio (1 s clips here), millions of parameters
        assert float(r["gflops"]) == pytest.approx(2 * float(r["macs_per_second"]) / 1e9, rel=1e-4)
        assert float(r["params_millions"]) == pytest.approx(int(r["params"]) / 1e6, rel=1e-4)
        assert float(r["eer_percent"]) >= 0 and float(r["export_max_abs_diff"] or 0) < 1e-5
    assert (o / "sweep.png").stat().st_size > 10_000


def test_multi_seed_sweep_reports_mean_and_interval_per_row(capsys, tmp_path, spoof_data):  # noqa: F811
    import csv

    data = spoof_data[0]
    o = tmp_path / "seeds"
    code, out, err = _run(capsys, "spoof", "--sweep", "--quick", "--data", data, "--out", o, "--epochs", "1",
                          "--fixed-widths", "4", "--no-pruning", "--no-progress", "--seed-list", "0,3")
    assert code == 0, err
    rows = list(csv.DictReader(open(o / "sweep.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("fixed", "0"), ("fixed", "3"), ("dcl", "0"), ("dcl", "3")]
    assert len({r["data_fingerprint"] for r in rows}) == 1 and all(r["threads"] == "1" for r in rows)
    assert (o / "runs" / "seed3" / "model_fixed4.ckpt").is_file()
    summary = list(csv.DictReader(open(o / "sweep_summary.csv")))
    assert [s["n"] for s in summary] == ["2", "2"]
    table = [line for line in out.splitlines() if line.startswith("| ResNet") or line.startswith("| DynResNet")]
    assert len(table) == 2
    assert " w4 | - | - | - | 2 |" in table[0] and table[0].endswith("| ref. |")  # widest fixed width: reference
    assert "| X (all) | 0.25 | floor | 2 |" in table[1] and " ± " in table[1]  # kappa_min controls (default)
    assert all(r["control"] == "floor" for r in rows if r["method"] == "dcl")
    assert any(v in table[1] for v in ("| better (", "| worse (", "| n.s. ("))

