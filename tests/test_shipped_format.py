"""The shipped-model format: a DCL checkpoint cut to uneven widths, shipped, reloads through the plain
builder (no make_dynamic) and computes exactly what the exported model computes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimtrain.train.checkpoint import make_recipe, save_checkpoint
from slimtrain.core.dcl import DynamicWidth
from slimtrain.apps.shipped import ShippedModelError, fit_to_state, load_shipped
from slimtrain.tasks.ship import ship_spoof, ship_vad


def test_vad_checkpoint_ships_and_reloads_exactly(tmp_path):
    from slimtrain.core.export import export
    from slimtrain.tasks.vad.train import build_dynamic_vad
    from slimtrain.apps.vad import _build_plain

    recipe = make_recipe("vad", {"family": "crnn", "n_mels": 80}, (2, 32000), {"kappa_min": 0.125})
    model = build_dynamic_vad(recipe)
    for m, k in zip([m for m in model.modules() if isinstance(m, DynamicWidth)], (13.4, 5.2, 17.9, 9.1)):
        m.set_width(k)
    model.eval()
    metrics = {"threshold": 0.3, "auc": 0.95, "eer": 0.1, "f1": 0.9, "eer < 5 dB": 0.2, "mflops_per_s": 1.0,
               "params": 1000, "mel_bands": 14}
    ckpt = save_checkpoint(tmp_path / "m.pt", model, recipe, extra={"metrics": metrics, "config": {"kappa_min": 0.125}})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(
        {"fingerprint": "0123456789abcdef", "config": {"seed": 0}, "splits": {"test": {"clips": 3, "seconds": 12.0}}}))
    pt = ship_vad(ckpt, tmp_path / "data", tmp_path / "out", ["slimtrain vad ..."], name="v")
    small, meta = load_shipped(pt, "vad", _build_plain)
    ref = export(model)
    x = torch.randn(1, 8000) * 0.1
    assert torch.equal(small(x), ref(x))
    assert (small.frontend.n_mels, small.conv1.out_channels, small.conv2.out_channels, small.gru.hidden_size) == \
        (14, 6, 18, 10)
    assert meta["recipe"]["exported_widths"] == {"n_mels": 14, "conv1": 6, "conv2": 18, "hidden": 10}
    assert meta["threshold"] == pytest.approx(1 / (1 + np.exp(-0.3)))
    assert json.loads(pt.with_suffix(".json").read_text())["data"]["fingerprint"] == "0123456789abcdef"


def test_spoof_checkpoint_ships_and_reloads_exactly(tmp_path):
    from slimtrain.core.export import export
    from slimtrain.apps.spoof import _build_plain
    from slimtrain.apps.spoof.models import QUICK_BLOCKS
    from slimtrain.tasks.spoof.train import build_spoof_model

    kw = {"width": 4, "blocks": list(QUICK_BLOCKS), "n_mels": 16, "sample_rate": 8000, "n_fft": 256,
          "hop_length": 160}
    recipe = make_recipe("spoof", kw, (2, 8000), {"kappa_min": 0.25, "stages": [0, 1, 2, 3]})
    model = build_spoof_model(recipe)
    dcls = [m for m in model.modules() if isinstance(m, DynamicWidth)]
    for i, m in enumerate(dcls):
        m.set_width(max(1.0, float(m.width.detach()) * (0.3 + 0.1 * (i % 5))))
    model.eval()
    ckpt = save_checkpoint(tmp_path / "c.ckpt", model, recipe, extra={
        "alpha": 4.0, "config": {}, "result": {"eer_pooled": 10.0, "params": 5, "macs_per_second": 1.0}})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"sha256": {"train.npz": "ab"}, "counts": {}}))
    pt = ship_spoof(ckpt, tmp_path / "data", tmp_path / "out", ["slimtrain spoof ..."], name="s")
    small, meta = load_shipped(pt, "spoof", _build_plain)
    ref = export(model)
    x = torch.randn(3, 8000) * 0.1
    assert torch.allclose(small(x), ref(x), atol=1e-6)
    assert meta["clip_samples"] == 8000 and len(meta["data"]["fingerprint"]) == 16
    with pytest.raises(ShippedModelError, match="shipped 'spoof' model, not a 'vad' model"):
        load_shipped(pt, "vad", _build_plain)


def test_fit_to_state_names_a_layer_that_does_not_fit():
    from slimtrain.apps.vad.models import build_vad_model

    state = build_vad_model("crnn", n_mels=10, conv1=4, conv2=4, hidden=5).state_dict()
    state["head.weight"] = torch.zeros(2, 7)  # 7 inputs, but the GRU has 5 outputs
    with pytest.raises(ShippedModelError, match="x.pt: the state dict does not fit"):
        fit_to_state(build_vad_model("crnn"), state, "x.pt")


def test_long_audio_runs_in_streamed_blocks_with_the_same_result(monkeypatch):
    import slimtrain.apps.vad as vad_mod

    model = vad_mod.load()
    x = (np.random.default_rng(0).standard_normal(12000) * 0.05).astype(np.float32)
    ref = model.frame_probs(x, 8000)
    monkeypatch.setattr(vad_mod, "_LONG_SECONDS", 0.625)  # 5000 samples at 8 kHz: blocks of 500 samples
    got = model.frame_probs(x, 8000)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
