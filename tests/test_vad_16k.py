"""The VAD at 16 kHz: two shipped models served by one ``vad.load()`` (wideband input never downsampled to
8 kHz), the 16 kHz asset's recorded format and metrics, 16 kHz training on the built-in corpus, and the
wideband share of a 16 kHz corpus."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtrain import vad
from slimtrain.apps.shipped import sha256_of

RATES = (8000, 16000)


def _noise_with_tone(rate: int, seconds: float = 1.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.05 * rng.standard_normal(len(t)) + 0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _tiny(rate: int, seed: int) -> vad.VAD:
    from slimtrain.apps.vad.models import build_vad_model

    torch.manual_seed(seed)
    return vad.VAD(build_vad_model("crnn", 12, sample_rate=rate, conv1=3, conv2=3, hidden=4), threshold=0.4,
                   source=f"tiny{rate}")


@pytest.fixture(scope="module")
def pair() -> vad.VAD:
    return _tiny(8000, 0).with_wideband(_tiny(16000, 1))


# -- rate selection (small random models, no asset needed) ----------------------------------------------
@pytest.mark.parametrize("rate,served", [(8000, 8000), (6000, 8000), (11025, 16000), (16000, 16000),
                                         (44100, 16000), (48000, 16000)])
def test_pair_runs_input_above_8k_through_the_16k_model(pair, rate, served):
    m = pair.for_rate(rate)
    assert m.sample_rate == served and pair.sample_rates == (8000, 16000)
    x = _noise_with_tone(rate)
    got = pair.frame_probs(x, rate)
    assert np.array_equal(got, m.frame_probs(x, rate))
    # frames at the served rate: samples // hop + 1 after resampling to it (no silent 8 kHz path for wideband)
    from slimtrain.audio.io import resample_to

    assert len(got) == len(resample_to(x, rate, served)) // (served // 100) + 1
    assert pair.resamples(rate) == (None if rate == served else ("down" if rate > served else "up"))


def test_pair_uses_each_models_own_threshold_and_streams_with_the_served_model(pair):
    pair.wideband.threshold = 0.0  # every frame is speech for the wideband model, none would be at 1.0
    x = _noise_with_tone(16000, 2.0)
    segs = pair.speech_timestamps(x, 16000, min_speech_ms=0)
    assert segs and segs[0]["start"] == 0.0
    ref = pair.frame_probs(x, 16000)
    s = pair.stream(16000)
    rng = np.random.default_rng(3)
    out, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 700))
        out.append(s.feed(x[i:i + k]))
        i += k
    out.append(s.flush())
    got = np.concatenate(out)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
    assert pair.for_rate(8000).wideband is None and pair.for_rate(8000).sample_rates == (8000,)
    assert not np.allclose(got, pair.for_rate(8000).frame_probs(x, 16000))  # the stream ran the 16 kHz model


def test_with_wideband_refuses_a_model_that_is_not_wider():
    with pytest.raises(ValueError, match="runs at 8000 Hz, not above this model's 16000 Hz"):
        _tiny(16000, 0).with_wideband(_tiny(8000, 1))


@pytest.mark.parametrize("bad", [22050, 0, -8000, "16000", 16000.0, True])
def test_load_names_a_bad_sample_rate(bad):
    import re

    with pytest.raises(ValueError, match=re.escape(f"vad.load: sample_rate must be one of the shipped models' rates "
                                                   f"8000, 16000 (Hz), got {bad!r}")):
        vad.load(sample_rate=bad)
    with pytest.raises(ValueError, match="vad.default_model_path: sample_rate"):
        vad.default_model_path(bad)


def test_load_refuses_a_model_file_at_another_rate(tmp_path):
    path = vad.default_model_path(8000)
    with pytest.raises(ValueError, match=f"{path.name} runs at 8000 Hz, not at the sample_rate=16000 asked for"):
        vad.load(path, sample_rate=16000)
    assert vad.load(path, sample_rate=8000).sample_rate == 8000


# -- the shipped pair ------------------------------------------------------------------------------------
needs_16k = pytest.mark.skipif(not vad.default_model_path(16000).is_file(), reason="vad_16k.pt is not shipped")


@needs_16k
def test_shipped_load_serves_16k_and_44k_input_with_the_16k_model_and_8k_input_with_the_8k_model():
    both = vad.load()
    assert both.sample_rates == (8000, 16000) and both.sample_rate == 8000
    alone = {r: vad.load(sample_rate=r) for r in RATES}
    assert [alone[r].sample_rate for r in RATES] == list(RATES)
    assert alone[16000].model.frontend.n_fft == 512 and alone[8000].model.frontend.n_fft == 256
    for rate, served in ((8000, 8000), (16000, 16000), (44100, 16000)):
        assert both.for_rate(rate).sample_rate == served
        assert both.for_rate(rate).source == str(vad.default_model_path(served))
        x = _noise_with_tone(rate, seed=rate)
        assert np.array_equal(both.frame_probs(x, rate), alone[served].frame_probs(x, rate))
    assert both.resamples(16000) is None and both.resamples(8000) is None
    assert alone[8000].resamples(16000) == "down"  # only a single 8 kHz model loaded on purpose downsamples


@needs_16k
def test_shipped_16k_stream_equals_offline():
    both = vad.load()
    x = _noise_with_tone(16000, 3.0, seed=5)
    ref = both.frame_probs(x, 16000)
    s = both.stream(16000)
    got = np.concatenate([s.feed(x[i:i + 512]) for i in range(0, len(x), 512)] + [s.flush()])
    assert got.shape == ref.shape == (len(x) // 160 + 1,) and np.abs(got - ref).max() <= 1e-5


@needs_16k
def test_shipped_16k_files_are_small_complete_and_consistent():
    from slimtrain import model_cost

    pt = vad.default_model_path(16000)
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size < 100_000 and meta["sha256"] == sha256_of(pt)
    assert meta["format"] == "slimtrain-shipped-model" and meta["task"] == "vad" and meta["sample_rate"] == 16000
    assert meta["builder"]["sample_rate"] == 16000 and meta["data"]["config"]["sample_rate"] == 16000
    assert meta["data"]["config"]["hop"] == 160 and meta["data"]["config"]["human_voices"]
    r = meta["recipe"]
    assert r["family"] == "crnn" and r["budget"] > 0 and r["epochs"] >= 1
    assert any(c.startswith("slimtrain data vad") and "--sample-rate 16000" in c for c in meta["commands"])
    assert any("slimtrain vad --family crnn" in c for c in meta["commands"])
    bw = meta["data"]["train_speech_bandwidth"]
    assert 0 < bw["wideband_share"] < 1 and bw["wideband_minutes"] > 0 and bw["narrowband_minutes"] > 0
    m = meta["metrics"]
    # <= 1/10 of Silero's 42.40 MFLOP/s at 16 kHz (docs/api.md, flop_counter)
    assert 0 < m["mflops_per_s"] < 4.24 and 0 < m["auc"] <= 1
    model = vad.load(sample_rate=16000)
    cost = model_cost(model.model, torch.zeros(1, 64000), seconds=4.0)
    assert cost.flops_per_second / 1e6 == pytest.approx(m["mflops_per_s"], rel=1e-6)
    assert model.threshold == pytest.approx(meta["threshold"])
    sets = meta["metrics_by_set"]
    assert {"unseen-human", "unseen-tts", "unseen-expressive"} <= set(sets)
    for name in ("unseen-human", "unseen-tts", "unseen-expressive"):
        ours, silero = sets[name]["ours"], sets[name]["silero"]
        assert ours["sample_rate"] == silero["sample_rate"] == 16000  # Silero scored on the same 16 kHz audio
        assert ours["set_fingerprint"] == silero["set_fingerprint"] and 0.5 < ours["auc"] <= 1
    d = torch.load(pt, weights_only=True)
    assert d["meta"]["metrics"] == m


# -- training and data at 16 kHz --------------------------------------------------------------------------
def test_built_in_training_runs_at_16k_and_the_checkpoint_loads_at_16k(tmp_path):
    from slimtrain.tasks.vad.data import VadSplit
    from slimtrain.tasks.vad.train import VadRunConfig, train_vad

    rng = np.random.default_rng(0)

    def split(n: int) -> VadSplit:
        audio = (0.05 * rng.standard_normal((n, 16000))).astype(np.float32)
        labels = np.zeros((n, 101), np.uint8)
        labels[:, 30:70] = 1
        audio[:, 3000:7000] += 0.3 * np.sin(np.arange(4000) / 3).astype(np.float32)
        return VadSplit(audio, labels, np.full(n, 10.0, np.float32), ["white"] * n)

    data = {"train": split(4), "val": split(2), "test": split(2)}
    cfg = VadRunConfig(kappa_min=0.5, alpha=0.1, epochs=2, batch_size=2, n_mels=12,
                       widths={"conv1": 3, "conv2": 3, "hidden": 4}, sample_rate=16000)
    plain, row = train_vad(cfg, data, checkpoint=tmp_path / "v.pt")
    assert row["sample_rate"] == 16000 and plain.frontend.n_fft == 512 and plain.frontend.hop_length == 160
    v = vad.load(tmp_path / "v.pt", sample_rate=16000)
    assert v.sample_rate == 16000
    assert len(v.frame_probs(data["test"].audio[0], 16000)) == 101
    with pytest.raises(ValueError, match="sample_rate must be 8000 or 16000, got 22050"):
        VadRunConfig(sample_rate=22050).validate()


def test_unseen_sets_keep_their_8k_fingerprints_and_name_a_bad_rate():
    from slimtrain.tasks.vad.data import DataError
    from slimtrain.tasks.vad.unseen import UnseenConfig, _mix_config, config_dict
    from slimtrain.tasks.vad.unseen_human import UnseenHumanConfig

    d8 = asdict(UnseenConfig())
    d8.pop("sample_rate")
    assert config_dict(UnseenConfig()) == d8  # the 8 kHz set's fingerprint input is what it was before
    assert config_dict(UnseenConfig(sample_rate=16000))["sample_rate"] == 16000
    assert (_mix_config(UnseenConfig(sample_rate=16000)).hop, _mix_config(UnseenConfig()).hop) == (160, 80)
    with pytest.raises(DataError, match="unseen set: sample_rate must be 8000 or 16000, got 11025"):
        UnseenConfig(sample_rate=11025).validate()
    with pytest.raises(DataError, match="unseen-human set: sample_rate must be 8000 or 16000, got 44100"):
        UnseenHumanConfig(sample_rate=44100).validate()


def test_speech_bandwidth_splits_minutes_by_native_rate(monkeypatch):
    from slimtrain.tasks.vad import bandwidth as B

    rates = {("espeak-ng", "en-us"): 22050, ("festival", "kal_diphone"): 16000, ("flite", "kal"): 8000}
    monkeypatch.setattr(B, "_tts_rate", lambda engine, voice: rates.get((engine, voice)))
    monkeypatch.setattr(B, "_human_rate", lambda sid: {"klettres-fr": 44100, "asterisk-ru": 8000}.get(sid))
    info = {"speech_minutes_by_source": {"en_US_f_Allison": 3.0, "es-co": 1.0, "tts/espeak-ng/en-us": 2.0,
                                         "tts/festival/kal_diphone": 0.5, "tts/flite/kal": 0.5,
                                         "human/klettres-fr": 1.5, "human/asterisk-ru": 1.0, "human/gone": 0.25}}
    b = B.speech_bandwidth(info)
    assert (b["wideband_minutes"], b["narrowband_minutes"], b["unknown_minutes"]) == (4.0, 5.5, 0.25)
    assert b["wideband_share"] == pytest.approx(4.0 / 9.5, abs=1e-4) and b["rates"]["es-co"] == 8000
    with pytest.raises(ValueError, match="no 'speech_minutes_by_source'"):
        B.speech_bandwidth({"clips": 3})


def test_espeak_synthesises_at_the_rate_asked_for():
    from slimtrain.tasks.spoof.attacks import espeak

    a8, a16 = espeak("hello there", "en-us"), espeak("hello there", "en-us", sample_rate=16000)
    assert abs(len(a16) - 2 * len(a8)) <= 2  # the same utterance, twice the samples (not a pitch-shifted 8 kHz one)
    spec = np.abs(np.fft.rfft(a16)) ** 2
    f = np.fft.rfftfreq(len(a16), 1 / 16000)
    assert spec[f > 4500].sum() > 1e-4 * spec.sum()  # it holds the band above 4 kHz that 8 kHz cannot


def test_vad_cli_refuses_a_sample_rate_other_than_the_corpus_rate(tmp_path, capsys):
    from slimtrain.cli import main

    data = tmp_path / "d16"
    data.mkdir()
    splits = {}
    for name in ("train", "val", "test"):
        np.savez(data / f"{name}.npz", audio=np.zeros((1, 16000), np.float32), labels=np.zeros((1, 101), np.uint8),
                 snr_db=np.zeros(1, np.float32), noise=np.asarray(["white"]))
        splits[name] = {"clip_sources": [[]]}
    (data / "manifest.json").write_text(json.dumps({"corpus": "extended", "fingerprint": "f" * 16,
                                                    "config": {"sample_rate": 16000, "hop": 160}, "splits": splits}))
    assert main(["vad", "--data", str(data), "--out", str(tmp_path / "o"), "--sample-rate", "8000", "--epochs", "1",
                 "--no-progress"]) != 0
    assert f"--sample-rate 8000: the corpus in {data} is at 16000 Hz" in capsys.readouterr().err
    assert main(["vad", "--quick", "--sample-rate", "16000", "--out", str(tmp_path / "o")]) != 0
    assert "--sweep and --quick are 8 kHz" in capsys.readouterr().err
    assert main(["vad", "--sample-rate", "16000", "--out", str(tmp_path / "o")]) != 0  # no --data: never built here
    assert "'slimtrain data vad --sample-rate 16000 --out DIR', then --data DIR" in capsys.readouterr().err


@needs_16k
def test_predict_runs_each_file_through_the_model_of_its_rate_with_that_models_threshold(tmp_path, capsys):
    import soundfile as sf

    from slimtrain.cli import main

    for rate in (8000, 16000, 44100):
        sf.write(tmp_path / f"a{rate}.wav", _noise_with_tone(rate, 1.0, seed=rate), rate)
    assert main(["vad", "predict", str(tmp_path), "--format", "json"]) == 0
    files = {Path(f["file"]).name: f for f in json.loads(capsys.readouterr().out)["files"]}
    both = vad.load()
    for rate, served in ((8000, 8000), (16000, 16000), (44100, 16000)):
        f = files[f"a{rate}.wav"]
        assert f["model_rate"] == served and f["threshold"] == pytest.approx(both.for_rate(served).threshold, abs=1e-6)
