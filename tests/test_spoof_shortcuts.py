"""The cue audit (``slimtrain.tasks.spoof.shortcuts``, ``slimtrain spoof audit``): the cues measure what they name,
a cue-only classifier finds a silence shortcut and only that, and the command flags it on a corpus on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.cli import main
from slimtrain.tasks.spoof.shortcuts import CUE_NAMES, cue_eers, utterance_cues

SR = 16000


def _speech(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    return (0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + 0.3 * np.sin(2 * np.pi * 4 * t))).astype(
        np.float32)


def _utterance(lead: float, speech: float, trail: float, rng: np.random.Generator, gap: float = 0.0) -> np.ndarray:
    """``lead`` s of near-silence, ``speech`` s of a tone (a ``gap`` s pause in its middle), ``trail`` s of silence."""
    half = _speech(int(speech * SR / 2), rng)
    x = np.concatenate([np.zeros(int(lead * SR)), half, np.zeros(int(gap * SR)), half, np.zeros(int(trail * SR))])
    return (x + 1e-5 * rng.standard_normal(len(x))).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(lead=st.floats(0.0, 0.5), speech=st.floats(0.2, 1.0), trail=st.floats(0.0, 0.5), gap=st.floats(0.0, 0.3))
def test_cues_measure_length_silences_span_and_density(lead, speech, trail, gap):
    x = _utterance(lead, speech, trail, np.random.default_rng(0), gap=gap)
    c = dict(zip(CUE_NAMES, utterance_cues(x, SR)))
    frame = 0.01 + 1e-9
    assert c["length_s"] == pytest.approx(len(x) / SR)
    assert abs(c["lead_s"] - lead) <= frame and abs(c["trail_s"] - trail) <= 2 * frame
    assert abs(c["span_s"] - (speech + gap)) <= 2 * frame
    n = len(x) // (SR // 100)
    assert abs(c["density"] - speech / (n / 100)) <= 4 / n + 1e-9  # the pause is not active (a frame per edge)
    assert c["level_dbfs"] == pytest.approx(10 * np.log10(np.mean(x.astype(np.float64) ** 2)), abs=1e-6)


def test_cue_only_classifier_finds_a_silence_shortcut_and_only_that():
    rng = np.random.default_rng(1)

    def corpus(n: int):
        xs, labels, attacks = [], [], []
        for i in range(n):
            xs.append(_utterance(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3), rng))
            labels.append(1)
            attacks.append("bonafide")
            xs.append(_utterance(rng.uniform(0.0, 0.05), rng.uniform(0.4, 0.8), rng.uniform(0.0, 0.05), rng))
            labels.append(0)
            attacks.append("A01")  # the shortcut: almost no silence around the speech
            xs.append(_utterance(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3), rng))
            labels.append(0)
            attacks.append("A02")  # shaped like bona fide
        return np.stack([utterance_cues(x, SR) for x in xs]), np.array(labels), np.array(attacks)

    ctr, ytr, atr = corpus(30)
    cte, yte, ate = corpus(20)
    e = cue_eers(ctr, ytr, cte, yte, ate)
    assert e["A01"] < 15.0 and e["A02"] > 30.0
    cv = cue_eers(ctr, ytr, test_attacks=atr)  # cross-validated on one corpus: the same verdict
    assert cv["A01"] < 15.0 and cv["A02"] > 30.0
    with pytest.raises(ValueError, match="bona fide .* and spoofed"):
        cue_eers(ctr[ytr == 1], ytr[ytr == 1])


def _csv_corpus(root, n: int, seed: int):
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = ["path,label,attack"]
    for i in range(n):
        for lab, att, lead, trail in (("bonafide", "", 0.3, 0.2), ("spoof", "A01", 0.0, 0.0), ("spoof", "A02", 0.3, 0.2)):
            f = f"audio/{att or 'bona'}_{i}.flac"
            sf.write(str(root / f), _utterance(lead * rng.uniform(0.7, 1.3), rng.uniform(0.4, 0.8),
                                               trail * rng.uniform(0.7, 1.3), rng), SR)
            rows.append(f"{f},{lab},{att}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def test_audit_command_flags_the_attack_the_silences_give_away(tmp_path, capsys):
    train, test = _csv_corpus(tmp_path / "train", 12, 0), _csv_corpus(tmp_path / "test", 8, 1)
    assert main(["spoof", "audit", "--train-data", str(train), "--test-data", str(test), "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] == ["A01"] and out["eer"]["A02"] > 30.0
    assert out["counts"] == {"bonafide": 8, "A01": 8, "A02": 8}
    assert out["means"]["A01"]["lead_s"] < 0.02 < out["means"]["bonafide"]["lead_s"]
    assert main(["spoof", "audit", "--train-data", str(train), "--no-progress"]) == 0  # cross-validated, table
    cap = capsys.readouterr()
    assert "5-fold cross-validation" in cap.out and "A01" in cap.out
    assert "warning: A01: the cues alone reach" in cap.err and "A02" not in cap.err
    assert main(["spoof", "audit", "--train-data", str(tmp_path / "missing.csv"), "--no-progress"]) != 0
    assert "missing.csv" in capsys.readouterr().err


def test_audit_names_a_broken_file_and_skips_it_only_when_asked(tmp_path, capsys):
    train = _csv_corpus(tmp_path / "c", 10, 2)
    (tmp_path / "c" / "audio" / "A02_3.flac").write_bytes(b"not audio")  # a corrupt file in the corpus
    assert main(["spoof", "audit", "--train-data", str(train), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "A02_3.flac" in err and "line" in err  # the file and its protocol line, no traceback
    assert main(["spoof", "audit", "--train-data", str(train), "--skip-bad", "--json", "--no-progress"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["counts"]["A02"] == 9 and out["skipped"]["skipped"] == 1
    assert "A02_3.flac" in cap.err  # the skip summary names it
