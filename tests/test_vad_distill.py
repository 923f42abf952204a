"""Distillation while shrinking in VAD training: ``train_vad(teacher=...)`` and ``slimtrain vad --teacher``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimtrain.cli import main
from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.data import VadDataConfig, load_vad_data
from slimtrain.tasks.vad.train import VadRunConfig, frame_scores, train_vad


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vad_quick_kd")
    build_vad_data(VadDataConfig.quick(), cache)
    return cache, load_vad_data(cache)[0]


class _Speech(torch.nn.Module):
    """A 'teacher' that calls every frame speech with logit +8 (one frame per 10 ms, as the models)."""

    def forward(self, x):
        return torch.full((x.shape[0], x.shape[-1] // 80 + 1), 8.0)


def test_the_teacher_pulls_the_shrinking_vad_toward_its_frame_logits(quick):
    _, data = quick
    cfg = VadRunConfig(family="crnn", kappa_min=0.25, alpha=1.0, epochs=2)
    plain, row = train_vad(cfg, data)
    taught, row_kd = train_vad(cfg, data, teacher=_Speech(), distill_weight=20.0)
    assert row["distill_weight"] == 0.0 and row_kd["distill_weight"] == 20.0
    x = torch.from_numpy(data["test"].audio[:8])
    with torch.no_grad():
        a, b = plain(x).mean().item(), taught(x).mean().item()
    assert b > a + 0.5, (a, b)  # most frames are silence: only the teacher's term pushes every logit up


def test_a_teacher_of_another_rate_or_bad_settings_are_named(quick):
    _, data = quick
    cfg = VadRunConfig(family="crnn", kappa_min=0.25, alpha=1.0, epochs=1)
    with pytest.raises(ValueError, match=r"the teacher gives frame logits of shape \(2, 3\).*same rate and hop"):
        train_vad(cfg, data, teacher=lambda x: torch.zeros(x.shape[0], 3))
    with pytest.raises(ValueError, match=r"weight must be a number >= 0 \(and finite\), got nan"):
        train_vad(cfg, data, teacher=_Speech(), distill_weight=float("nan"))


def test_vad_command_trains_a_student_from_a_full_width_teacher(quick, tmp_path, capsys):
    cache, data = quick
    base = ["vad", "--data", str(cache), "--epochs", "2", "--no-progress"]
    assert main([*base, "--kappa-min", "1", "--alpha", "0", "--out", str(tmp_path / "t")]) == 0
    assert main([*base, "--kappa-min", "0.25", "--teacher", str(tmp_path / "t" / "vad_crnn.pt"),
                 "--distill-weight", "0.5", "--out", str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "s" / "result.json").read_text())["result"]
    assert res["distill_weight"] == 0.5
    teacher = json.loads((tmp_path / "t" / "result.json").read_text())["result"]
    assert res["mflops_per_s"] < teacher["mflops_per_s"]
    capsys.readouterr()
    assert main([*base, "--sweep", "--teacher", str(tmp_path / "t" / "vad_crnn.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "--teacher applies to single runs" in capsys.readouterr().err
    assert main([*base, "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y")]) == 2
    assert "model file not found" in capsys.readouterr().err
    # the student scores frames (the run is a usable model)
    from slimtrain.train.checkpoint import load_for_inference

    s = frame_scores(load_for_inference(tmp_path / "s" / "vad_crnn.pt", "vad")[0], data["test"].audio[:8])
    assert s.shape[0] == 8 and np.isfinite(s).all()


def test_silero_teacher_serves_its_cached_logits_for_training_clips_only(quick, tmp_path):
    pytest.importorskip("silero_vad")
    from slimtrain.tasks.vad.anchors import AnchorError, silero_scores, silero_teacher

    cache, data = quick
    audio = data["train"].audio[:6]
    teacher = silero_teacher(audio)
    out = teacher(torch.from_numpy(audio[[4, 1]]))
    p = np.clip(silero_scores(audio[[4, 1]]), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(torch.sigmoid(out).numpy(), p, rtol=1e-4, atol=1e-6)
    with pytest.raises(AnchorError, match="has no labels for"):
        teacher(torch.from_numpy(audio[:1] * 0.5))
    assert main(["vad", "--data", str(cache), "--epochs", "1", "--no-progress", "--kappa-min", "0.25",
                 "--teacher", "silero", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "result.json").read_text())["result"]["distill_weight"] == 1.0
