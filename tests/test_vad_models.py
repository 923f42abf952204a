"""VAD models: shapes, causality (look-ahead), DCL export equality, checkpoints, training beats chance, anchors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slimtrain
from slimtrain.train.checkpoint import load_dynamic_model
from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.data import VadDataConfig, load_vad_data
from slimtrain.apps.vad.models import FAMILIES, build_vad_model, scaled_widths
from slimtrain.tasks.vad.train import VadRunConfig, evaluate_scores, exported_cost, frame_scores, train_vad


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vad_quick")
    build_vad_data(VadDataConfig.quick(), cache)
    return load_vad_data(cache)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_maps_waveform_to_one_logit_per_10ms_frame(family):
    m = build_vad_model(family).eval()
    for n in (8000, 12345):
        assert m(torch.randn(3, n) * 0.1).shape == (3, n // 80 + 1)


CAUSAL = tuple(f for f in FAMILIES if f != "marblenet")  # MarbleNet's convolutions are centred (docs/vad.md)


def test_marblenet_looks_ahead_by_its_receptive_field():
    torch.manual_seed(0)
    m = build_vad_model("marblenet").eval()
    x = torch.randn(1, 16000) * 0.1
    y = x.clone()
    y[:, 9000:] = torch.randn(1, 7000)
    a, b = m(x)[0], m(y)[0]
    changed = torch.nonzero(a != b).flatten()
    ahead = (9000 - 128) // 80 - int(changed.min())  # frames before the change that see it
    # receptive field: 5 + 2 * (6 + 7 + 8) + 28 = 75 frames each side, plus the STFT window's 1.6 frames
    assert 40 <= ahead <= 77
    assert torch.equal(a[: int(changed.min())], b[: int(changed.min())])


@pytest.mark.parametrize("family", CAUSAL)
def test_models_are_causal_up_to_the_16ms_stft_lookahead(family):
    torch.manual_seed(0)
    m = build_vad_model(family).eval()
    x = torch.randn(1, 16000) * 0.1
    y = x.clone()
    s0 = 9000
    y[:, s0:] = torch.randn(1, 16000 - s0)
    a, b = m(x)[0], m(y)[0]
    last_safe = (s0 - 128 - 1) // 80  # frame t sees samples up to 80t + 128 (centred 256-point window)
    assert torch.allclose(a[: last_safe + 1], b[: last_safe + 1], atol=1e-5)
    assert not torch.allclose(a[last_safe + 2:], b[last_safe + 2:], atol=1e-3)


def test_bad_family_and_width_are_clear_errors():
    with pytest.raises(ValueError, match="unknown VAD family 'lstm'"):
        build_vad_model("lstm")
    with pytest.raises(ValueError, match=r"unknown width argument\(s\) \['d_model'\] for family 'crnn'"):
        build_vad_model("crnn", d_model=3)
    assert scaled_widths("transformer", 0.25) == {"d_model": 8, "ff": 16, "layers": 2, "heads": 2, "attn": 4}


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_equals_the_dynamic_model_in_eval(family):
    torch.manual_seed(1)
    m = build_vad_model(family)
    x = torch.randn(2, 8000) * 0.1
    slimtrain.make_dynamic(m, x, kappa_min=0.1)
    widths = {"norm.dcl": 17.3}
    for name, dcl in m.named_modules():
        if isinstance(dcl, slimtrain.DynamicWidth):
            dcl.set_width(widths.get(name, 0.45 * dcl.num_channels))
    m.eval()
    small = slimtrain.export(m).eval()
    assert small.frontend.n_mels == 18  # ceil(K) mel bands
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters()) / 2
    z = torch.randn(3, 12000) * 0.2
    assert torch.allclose(small(z), m(z), atol=1e-5)
    flops, params = exported_cost(small, seconds=1.0)
    hard = slimtrain.model_cost(m, hard=True, seconds=1.0)
    assert flops == pytest.approx(float(hard.flops_per_second), rel=0.02)


def test_short_dcl_training_beats_chance_on_the_held_out_speaker_and_checkpoint_round_trips(quick_data, tmp_path):
    ckpt = tmp_path / "vad.pt"
    plain, row = train_vad(VadRunConfig(family="crnn", kappa_min=0.25, alpha=1.0, epochs=3), quick_data,
                           checkpoint=ckpt)
    assert row["auc"] > 0.8 and row["eer"] < 0.3, row  # chance: AUC 0.5, EER 0.5
    assert row["f1"] > 0.6
    assert row["mel_bands"] < 80 and row["mflops_per_s"] < 4.66  # the widths moved under the cost term
    dyn = load_dynamic_model(ckpt)
    x = torch.from_numpy(quick_data["test"].audio[:4])
    assert torch.allclose(slimtrain.export(dyn)(x), plain(x), atol=1e-5)
    assert torch.allclose(dyn(x), plain(x), atol=1e-5)


def test_transformer_with_per_head_widths_and_spread_bands_trains_and_its_checkpoint_rebuilds_them(quick_data, tmp_path):
    ckpt = tmp_path / "vad_tr.pt"
    plain, row = train_vad(VadRunConfig(family="transformer", kappa_min=0.25, alpha=1.0, epochs=2, heads="width",
                                        band_order="spread"), quick_data, checkpoint=ckpt)
    assert row["heads"] == "width" and row["band_order"] == "spread"
    dyn = load_dynamic_model(ckpt)  # the recipe records heads="width" and the band order: the same model comes back
    assert dyn.frontend.band_order == "spread" and plain.frontend.band_order == "spread"
    blk = dyn.blocks[0]
    assert blk.k.dcl is blk.q.dcl and blk.q.dcl.num_channels == 8  # 2 heads of 8 dimensions
    assert plain.blocks[0].nhead == 2 and plain.blocks[0].q.out_features == 2 * blk.q.dcl.hard_width
    x = torch.from_numpy(quick_data["test"].audio[:4])
    assert torch.allclose(dyn.eval()(x), plain(x), atol=1e-5)
    with pytest.raises(ValueError, match="heads must be 'count' or 'width'"):
        VadRunConfig(family="transformer", heads="dims").validate()
    with pytest.raises(ValueError, match="band_order must be one of"):
        VadRunConfig(band_order="high").validate()


def test_evaluate_scores_bands_and_threshold():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 50)) < 0.5).astype(np.uint8)
    perfect = y * 2.0 - 1.0
    snr = np.linspace(-5, 40, 40)
    res = evaluate_scores((y, perfect), (y, perfect), snr)
    assert res["eer"] == 0 and res["auc"] == 1 and res["f1"] == 1
    assert all(res[f"eer {b}"] == 0 for b in ("< 5 dB", "5-15 dB", "15-25 dB", ">= 25 dB"))
    noisy = perfect + rng.normal(0, 1.0, y.shape) * (snr[:, None] < 5)  # only low-SNR clips are hard
    res = evaluate_scores((y, perfect), (y, noisy), snr)
    assert res["eer < 5 dB"] > 0.1 and res["eer >= 25 dB"] == 0


def test_shipped_vads_separate_speech_from_non_speech(quick_data):
    from slimtrain.tasks.vad.anchors import silero_scores, webrtc_scores

    test = quick_data["test"]
    audio, labels = test.audio[:6], test.labels[:6].astype(bool)
    w = webrtc_scores(audio, 3)
    assert w.shape == labels.shape and set(np.unique(w)) <= {0.0, 1.0}
    s = silero_scores(audio)
    assert s.shape == labels.shape and 0 <= s.min() and s.max() <= 1
    assert s[labels].mean() > s[~labels].mean() + 0.3
