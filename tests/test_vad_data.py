"""VAD data pipeline: label alignment, achieved SNR, speaker split, bad files, determinism."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain import MelFrontend
from slimtrain.tasks.audio import ASTERISK_VOICES, write_audio
from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.data import (NOISE_TYPES, DataError, VadDataConfig, build_clips, frame_labels, load_vad_data, make_noise, measure_snr, mix_at_snr)

SR, HOP = 8000, 80


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, 15000), length=st.integers(200, 8000), onset=st.integers(0, 3), hang=st.integers(0, 10))
def test_labels_mark_exactly_the_frames_that_overlap_speech_plus_onset_and_hangover(start, length, onset, hang):
    n = 24000
    x = np.zeros(n)
    end = min(n, start + length)
    x[start:end] = 0.1 * np.sign(np.sin(np.arange(end - start) * 0.3) + 1e-9)  # constant power burst
    lab = frame_labels(x, HOP, threshold_db=35.0, onset_frames=onset, hangover_frames=hang)
    assert len(lab) == MelFrontend(n_mels=8).frames(n) == n // HOP + 1
    # frame t covers samples [80t - 40, 80t + 40); its level is within 35 dB of the peak iff it
    # overlaps the burst by more than ~0.03% of the window, i.e. by at least one sample
    covers = np.array([(t * HOP - HOP // 2 < end) and (t * HOP + HOP // 2 > start) for t in range(len(lab))])
    first, last = np.flatnonzero(covers)[[0, -1]]
    expect = np.zeros(len(lab), dtype=np.uint8)
    expect[max(0, first - onset):min(len(lab), last + hang + 1)] = 1
    np.testing.assert_array_equal(lab, expect)


def test_labels_of_silence_are_all_zero():
    assert frame_labels(np.zeros(4000)).sum() == 0


@settings(max_examples=30, deadline=None)
@given(snr=st.floats(-10, 40), seed=st.integers(0, 10_000), kind=st.sampled_from([k for k in NOISE_TYPES if k != "music"]))
def test_mix_at_snr_achieves_the_requested_snr(snr, seed, kind):
    rng = np.random.default_rng(seed)
    speech = np.zeros(16000)
    speech[3000:11000] = rng.standard_normal(8000) * 0.05
    noise = make_noise(kind, 16000, rng)
    assert abs(np.mean(noise.astype(np.float64) ** 2) - 1.0) < 1e-3  # unit power
    scaled = mix_at_snr(speech, noise, snr)
    assert measure_snr(speech, scaled) == pytest.approx(snr, abs=1e-3)


def test_measure_snr_is_active_speech_power_over_noise_power():
    speech = np.zeros(16000)
    speech[4000:12000] = 0.1  # power 0.01 over the active part only
    noise = np.full(16000, 0.01)  # power 1e-4
    # the active part is the frames above threshold: exactly the burst (edge frames are partly inside,
    # their samples outside the burst are zero and lower the mean slightly)
    assert measure_snr(speech, noise) == pytest.approx(20.0, abs=0.1)


def _tiny_corpus(root: Path, n_files: int = 4, corrupt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for lang, (voice, _) in ASTERISK_VOICES.items():
        for i in range(n_files):
            x = np.zeros(SR)
            x[2000:6000] = 0.2 * np.sin(2 * np.pi * (150 + 30 * i) * np.arange(4000) / SR) * rng.uniform(0.5, 1, 4000)
            write_audio(root / "sounds" / voice / f"p{i}.wav", x, SR)
    if corrupt:
        (root / "sounds" / ASTERISK_VOICES["en"][0] / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    write_audio(root / "moh" / "tune.wav", 0.1 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR), SR)
    return root


def _tiny_cfg(root: Path, **kw) -> VadDataConfig:
    return VadDataConfig(corpus_root=str(root), train_minutes=0.2, val_minutes=0.1, test_minutes=0.1, clip_seconds=2.0,
                         **kw)


def test_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path):
    root = _tiny_corpus(tmp_path / "corpus", corrupt=True)
    with pytest.warns(UserWarning, match=r"skipped 1 of 9 train speech files.*broken\.wav"):
        build_vad_data(_tiny_cfg(root), tmp_path / "cache")
    _, manifest = load_vad_data(tmp_path / "cache")
    assert len(manifest["splits"]["train"]["skipped_files"]) == 1
    assert "broken.wav" in manifest["splits"]["train"]["skipped_files"][0]
    assert manifest["splits"]["train"]["speech_files"] == 8  # 4 en (1 broken skipped) + 4 es


def test_missing_voice_folder_is_a_clear_error(tmp_path):
    root = _tiny_corpus(tmp_path / "corpus")
    import shutil

    shutil.rmtree(root / "sounds" / ASTERISK_VOICES["it"][0])
    with pytest.raises(Exception, match=r"no Asterisk it prompts found in .*it_IT_m_Carlo"):
        build_vad_data(_tiny_cfg(root), tmp_path / "cache")


def test_build_is_deterministic_and_cached(tmp_path):
    root = _tiny_corpus(tmp_path / "corpus")
    cfg = _tiny_cfg(root, seed=3)
    m1 = build_vad_data(cfg, tmp_path / "a")
    m2 = build_vad_data(cfg, tmp_path / "b")
    assert json.loads(m1.read_text())["fingerprint"] == json.loads(m2.read_text())["fingerprint"]
    a, _ = load_vad_data(tmp_path / "a")
    b, _ = load_vad_data(tmp_path / "b")
    for split in a:
        np.testing.assert_array_equal(a[split].audio, b[split].audio)
        np.testing.assert_array_equal(a[split].labels, b[split].labels)
    mtime = (tmp_path / "a" / "train.npz").stat().st_mtime_ns
    build_vad_data(cfg, tmp_path / "a")  # same config: reused, not rewritten
    assert (tmp_path / "a" / "train.npz").stat().st_mtime_ns == mtime
    c = _tiny_cfg(root, seed=4)
    build_vad_data(c, tmp_path / "a")
    assert not np.array_equal(load_vad_data(tmp_path / "a")[0]["train"].audio, a["train"].audio)


def test_clips_mix_components_at_the_drawn_snr_and_label_the_clean_speech(tmp_path):
    cfg = VadDataConfig(clip_seconds=2.0)
    rng = np.random.default_rng(1)
    utts = []
    for i in range(12):
        u = np.zeros(6000, np.float32)
        u[1000:5000] = rng.standard_normal(4000) * 0.1
        utts.append((f"v/u{i}", u))
    music = [np.sin(2 * np.pi * 300 * np.arange(SR * 3) / SR).astype(np.float32)]
    split = build_clips(utts, music, cfg, rng, minutes=0.5, keep_components=True)
    assert split.audio.shape == (15, 16000) and split.labels.shape == (15, 201)
    for i in range(len(split.audio)):
        s, n = split.speech[i], split.noise_audio[i]
        np.testing.assert_allclose(split.audio[i], s + n, atol=1e-6)
        achieved = measure_snr(s, n)
        assert achieved == pytest.approx(split.target_snr_db[i], abs=0.05)  # measured on what was mixed
        assert achieved == pytest.approx(split.snr_db[i], abs=0.05)
        if split.noise[i] != "silence":
            assert cfg.snr_db[0] - 0.05 <= achieved <= cfg.snr_db[1] + 0.05
        np.testing.assert_array_equal(split.labels[i], frame_labels(s, HOP, cfg.label_threshold_db, cfg.onset_frames,
                                                                    cfg.hangover_frames))
        assert np.max(np.abs(split.audio[i])) <= 0.99 + 1e-6


def test_config_rejects_test_speaker_in_training():
    with pytest.raises(DataError, match="test languages"):
        VadDataConfig(train_languages=("en", "it")).validate()
    with pytest.raises(DataError, match="unknown language 'de'"):
        VadDataConfig(val_languages=("de",)).validate()


@pytest.fixture(scope="session")
def quick_vad_data(tmp_path_factory):
    """The real (Asterisk) quick set, shared by the VAD tests."""
    cache = tmp_path_factory.mktemp("vad_quick")
    build_vad_data(VadDataConfig.quick(), cache)
    return cache


def test_no_test_speaker_leaks_into_training(quick_vad_data):
    data, manifest = load_vad_data(quick_vad_data)
    voices = {lang: v for lang, (v, _) in ASTERISK_VOICES.items()}
    train = {s for clip in manifest["splits"]["train"]["clip_sources"] for s in clip}
    val = {s for clip in manifest["splits"]["val"]["clip_sources"] for s in clip}
    test = {s for clip in manifest["splits"]["test"]["clip_sources"] for s in clip}
    assert train and val and test
    assert {s.split("/")[0] for s in train} <= {voices["en"], voices["es"]}
    assert {s.split("/")[0] for s in val} == {voices["fr"]}
    assert {s.split("/")[0] for s in test} == {voices["it"]}
    assert not (set(manifest["splits"]["train"]["music_files"]) & set(manifest["splits"]["test"]["music_files"]))
    for split in data.values():
        assert 0.2 < split.labels.mean() < 0.9  # both classes well represented


# -- the extended corpus (--corpus extended) ------------------------------------------------------
def test_core_corpus_settings_and_fingerprint_are_unchanged_by_the_extended_fields():
    from slimtrain.tasks.vad.data import _fingerprint

    # the values of the data sets documented in docs/vad.md (before the extended corpus existed)
    assert _fingerprint(VadDataConfig()) == "cf2a4139b193778e"
    assert _fingerprint(VadDataConfig.quick()) == "63d8c9ed41dac2a0"
    assert _fingerprint(VadDataConfig(corpus="core")) == "cf2a4139b193778e"
    assert "corpus" not in VadDataConfig().as_dict() and VadDataConfig(corpus="extended").as_dict()["corpus"] == "extended"
    with pytest.raises(DataError, match="unknown corpus 'big'"):
        VadDataConfig(corpus="big").validate()
    with pytest.raises(DataError, match="test language must stay held out"):
        VadDataConfig(corpus="extended", test_languages=("fr",), val_languages=("it",)).validate()


def _needs(*programs: str) -> None:
    import shutil

    from slimtrain.tasks.audio import AudioError, extra_prompts

    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"not installed: {missing} (apt-packages.txt)")
    try:
        extra_prompts("es-co"), extra_prompts("fr-armelle")
    except AudioError as e:
        pytest.skip(str(e))


def test_gsm_prompt_of_an_extra_speaker_decodes_to_whole_gsm_frames():
    _needs("sox")
    from slimtrain.tasks.audio import extra_prompts, read_audio

    f = extra_prompts("es-co")[0]
    x, sr = read_audio(f)
    assert sr == 8000 and x.dtype == np.float32
    assert len(x) == f.stat().st_size // 33 * 160  # GSM 06.10: 33-byte frames of 160 samples
    assert 1e-4 < float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) < 0.7 and np.max(np.abs(x)) <= 1.0
    assert read_audio(f, 16000)[0].shape == (2 * len(x),)


def test_extended_fingerprint_changes_when_a_source_or_setting_changes():
    from slimtrain.tasks.vad.extended import extended_fingerprint

    cfg = VadDataConfig(corpus="extended")
    inv = [{"kind": "speech", "package": "asterisk-prompt-es-co", "version": "0.20070403-2.1", "files": 285},
           {"kind": "tts", "package": "espeak-ng", "version": "1.51", "voice": "en-us"}]
    fp = extended_fingerprint(cfg, inv)
    assert fp == extended_fingerprint(VadDataConfig(corpus="extended"), [dict(d) for d in inv])
    changed = [
        extended_fingerprint(cfg, [inv[0], {**inv[1], "version": "1.52"}]),  # new synthesiser version
        extended_fingerprint(cfg, [{**inv[0], "files": 284}, inv[1]]),  # a prompt file fewer
        extended_fingerprint(cfg, inv[:1]),  # a voice dropped
        extended_fingerprint(VadDataConfig(corpus="extended", tts_utterances=10), inv),
        extended_fingerprint(VadDataConfig(corpus="extended", seed=1), inv),
    ]
    assert len({fp, *changed}) == 6


def _tiny_extended(**kw) -> VadDataConfig:
    return VadDataConfig(corpus="extended", train_minutes=0.4, val_minutes=0.1, test_minutes=0.1, clip_seconds=2.0,
                         max_files_per_language=5, tts_utterances=6, augment_probabilities=(0.5, 0.5, 0.5, 0.5), **kw)


def test_tiny_extended_build_is_deterministic_and_keeps_the_test_speaker_and_language_out(tmp_path):
    _needs("sox", "espeak-ng", "flite", "festival")
    from slimtrain.tasks.vad.extended import TTS_VOICES

    cfg = _tiny_extended()
    m1 = build_vad_data(cfg, tmp_path / "a")
    m2 = build_vad_data(cfg, tmp_path / "b")
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.npz").read_bytes() == (tmp_path / "b" / f"{split}.npz").read_bytes()
    man = json.loads(m1.read_text())
    assert man == json.loads(m2.read_text())
    assert man["corpus"] == "extended" and man["corpus_version"].startswith("extended-v")
    assert {s["package"] for s in man["sources"]} >= {"asterisk-prompt-es-co", "asterisk-prompt-fr-armelle", "espeak-ng"}
    held_out = ASTERISK_VOICES["it"][0]
    train_val = [name for split in ("train", "val") for clip in man["splits"][split]["clip_sources"] for name in clip]
    assert train_val and not any(held_out in n for n in train_val)
    assert {n.split("/")[0] for n in train_val} >= {"es-co", "fr-armelle", "tts"}  # extra speakers and TTS are in
    assert all(lang != "it" for _, _, lang in TTS_VOICES)
    assert not any(v.startswith(("espeak-ng/it", "festival/lp_", "festival/pc_")) for v in man["splits"]["train"]["tts_voices"])
    assert all(held_out in n for clip in man["splits"]["test"]["clip_sources"] for n in clip)
    details = man["splits"]["train"]["clip_details"]
    assert len(details) == man["splits"]["train"]["clips"] and any(d["augment"] for d in details)
    # a training command given this folder (corpus unspecified) reads it instead of rebuilding core
    before = m1.stat().st_mtime_ns
    assert build_vad_data(VadDataConfig.quick(), tmp_path / "a") == m1 and m1.stat().st_mtime_ns == before
    data, _ = load_vad_data(tmp_path / "a")
    assert data["train"].audio.shape[1] == 2 * SR and np.max(np.abs(data["train"].audio)) <= 0.99 + 1e-6


def test_data_command_corpus_options_are_checked(tmp_path, capsys):
    from slimtrain.cli import main

    assert main(["data", "vad", "--tts-utterances", "3", "--out", str(tmp_path / "x"), "--no-progress"]) != 0
    assert "--tts-utterances only applies with --corpus extended" in capsys.readouterr().err
    assert main(["data", "vad", "--corpus", "big", "--out", str(tmp_path / "y")]) == 2
    assert "argument --corpus: invalid choice: 'big'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_utterance_cut_to_its_silence_makes_a_clip_without_speech_not_an_error():
    """An utterance longer than the clip whose first seconds are silent (a recorded voice with a long lead-in)
    is cut to silence: that clip has no speech. It is kept as a no-speech clip (labels all 0, SNR NaN, noise
    where the speech level would have put it), the rest of the split is as before, and the SNR range of the
    split leaves it out (it failed the whole corpus build with 'cannot set the SNR' before)."""
    from slimtrain.tasks.vad.data import noise_for_clip, snr_range

    cfg = VadDataConfig(clip_seconds=2.0)
    rng = np.random.default_rng(3)
    talk = np.zeros(6000, np.float32)
    talk[1000:5000] = rng.standard_normal(4000) * 0.1
    lead_in = np.concatenate([np.zeros(3 * SR, np.float32), rng.standard_normal(SR).astype(np.float32) * 0.1])
    utts = [("v/a", talk), ("v/lead", lead_in), ("v/b", talk.copy()), ("v/c", talk.copy())]
    split = build_clips(utts, [], cfg, np.random.default_rng(0), minutes=None, keep_components=True)
    silent = [i for i, names in enumerate(split.sources) if names == ["v/lead"]]
    assert len(silent) == 1
    i = silent[0]
    assert math.isnan(split.snr_db[i]) and not split.labels[i].any()
    others = [j for j in range(len(split.audio)) if j != i]
    assert np.abs(split.noise_audio[i]).max() > 0 and np.isfinite(split.audio[i]).all()
    noise = make_noise("pink", 2 * SR, np.random.default_rng(4))
    scaled, has_speech = noise_for_clip(split.speech[i] * 0, noise, 7.0, cfg)  # the level it is mixed at
    level = 20 * np.log10(np.sqrt(np.mean(scaled.astype(np.float64) ** 2)))
    assert not has_speech and level == pytest.approx(np.mean(cfg.speech_level_dbfs) - 7.0, abs=1e-3)
    scaled, has_speech = noise_for_clip(talk.astype(np.float64), noise[:6000], 7.0, cfg)
    assert has_speech and measure_snr(talk, scaled) == pytest.approx(7.0, abs=0.05)  # with speech: as before
    assert np.isfinite(split.snr_db[others]).all() and all(split.labels[j].any() for j in others)
    assert snr_range(split.snr_db) == {"min": float(np.min(split.snr_db[others])),
                                       "max": float(np.max(split.snr_db[others]))}
    with pytest.raises(DataError, match="without speech and without noise"):
        noise_for_clip(np.zeros(SR), np.zeros(SR), 10.0, cfg)
