"""The ``v2`` training-noise recipe of the extended VAD corpus: generated music, and the noise types the
per-noise-type table showed hardest drawn at lower SNR. Levels and SNRs are set exactly and measured back;
the recipe is versioned (a new fingerprint, ``v1`` corpora keep theirs) and leaves validation/test alone."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from slimtrain.tasks.augment import AugmentError, synth_music
from slimtrain.tasks.vad.data import DataError, VadDataConfig, measure_snr, mix_at_snr
from slimtrain.tasks.vad.extended import (EXTENDED_NOISE_TYPES, LOW_SNR_DB, LOW_SNR_TYPES, NOISE_RECIPES,
                                          _extended_noise, build_extended_clips, extended_fingerprint)

SR = 8000


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), snr=st.floats(-10, 40), n=st.integers(2000, 24000))
def test_generated_music_has_unit_level_and_is_mixed_at_the_requested_snr(seed, snr, n):
    rng = np.random.default_rng(seed)
    x, params = _extended_noise("synth-music", n, rng, SR, [], [], [])
    assert x.dtype == np.float32 and x.shape == (n,) and np.all(np.isfinite(x))
    assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, abs=1e-3)
    assert set(params) == {"bpm", "root_midi", "minor", "lead", "drums"} and 60 <= params["bpm"] <= 160
    y, _ = synth_music(n, np.random.default_rng(seed), SR)
    np.testing.assert_array_equal(x, y)  # deterministic given the generator
    speech = np.zeros(n)
    speech[n // 4: 3 * n // 4] = np.random.default_rng(seed + 1).standard_normal(3 * n // 4 - n // 4) * 0.05
    assert measure_snr(speech, mix_at_snr(speech, x, snr)) == pytest.approx(snr, abs=1e-3)


def test_generated_music_is_tonal_on_the_equal_tempered_grid():
    """Without drums every strong spectral peak is a note (or harmonic of one) within a quarter tone of the
    A440 equal-tempered grid; white noise of the same length is not."""
    def off_grid(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        f = np.fft.rfftfreq(len(x), 1 / SR)
        keep = (f > 60) & (f < 1000)
        peaks = f[keep][np.argsort(spec[keep])[-5:]]
        semis = 12 * np.log2(peaks / 440.0)
        return float(np.max(np.abs(semis - np.round(semis))))

    tonal = [x for x, p in (synth_music(4 * SR, np.random.default_rng(s), SR) for s in range(40)) if not p["drums"]][:4]
    assert len(tonal) == 4
    assert all(off_grid(x) < 0.25 for x in tonal)
    noise = [off_grid(np.random.default_rng(s).standard_normal(4 * SR)) for s in range(4)]
    assert max(noise) > 0.25
    with pytest.raises(AugmentError, match="synth_music: n must be >= 1, got 0"):
        synth_music(0, np.random.default_rng(0), SR)


def _utterances(rng: np.random.Generator, k: int = 14) -> list[tuple[str, np.ndarray]]:
    out = []
    for i in range(k):
        u = np.zeros(6000, np.float32)
        u[800:5200] = rng.standard_normal(4400) * 0.1 * np.sin(np.linspace(0, np.pi, 4400))
        out.append((f"v{i % 3}/u{i}", u))
    return out


def test_v2_clips_draw_the_hard_types_at_low_snr_and_measure_it_back():
    cfg = VadDataConfig(corpus="extended", clip_seconds=2.0, augment_probabilities=(0.3, 0.3, 0.3, 0.0))
    rng = np.random.default_rng(5)
    music = [np.sin(2 * np.pi * 220 * np.arange(3 * SR) / SR).astype(np.float32)]
    effects = [np.random.default_rng(1).standard_normal(3000).astype(np.float32)]
    split, details = build_extended_clips(_utterances(rng), music, effects, cfg, rng, 3.0, noise_recipe="v2")
    kinds = set(split.noise)
    assert "synth-music" in kinds and kinds <= set(NOISE_RECIPES["v2"]["noise_types"])
    assert [d["noise"] for d in details] == split.noise
    for kind, target, measured in zip(split.noise, split.target_snr_db, split.snr_db):
        assert measured == pytest.approx(target, abs=0.05)  # set exactly on what was mixed
        lo, hi = LOW_SNR_DB if kind in LOW_SNR_TYPES else (55.0, 70.0) if kind == "silence" else cfg.snr_db
        assert lo <= target <= hi
    low = [t for k, t in zip(split.noise, split.target_snr_db) if k in LOW_SNR_TYPES]
    assert len(low) >= 5 and max(low) <= LOW_SNR_DB[1]
    assert max(t for k, t in zip(split.noise, split.target_snr_db) if k not in LOW_SNR_TYPES + ("silence",)) > 10
    # v1 (the default) never draws generated music
    v1, _ = build_extended_clips(_utterances(rng), music, effects, cfg, np.random.default_rng(5), 3.0)
    assert "synth-music" not in v1.noise and set(v1.noise) <= set(EXTENDED_NOISE_TYPES)
    with pytest.raises(DataError, match="unknown noise recipe 'v3'"):
        build_extended_clips(_utterances(rng), music, effects, cfg, rng, 1.0, noise_recipe="v3")


def test_the_recipe_is_versioned_and_v1_settings_are_unchanged():
    v1, v2 = VadDataConfig(corpus="extended"), VadDataConfig(corpus="extended", noise_recipe="v2")
    assert "noise_recipe" not in v1.as_dict() and "noise_recipe" not in VadDataConfig().as_dict()
    assert v2.as_dict()["noise_recipe"] == "v2"
    inv = [{"kind": "speech", "package": "p", "version": "1"}]
    assert extended_fingerprint(v1, inv) != extended_fingerprint(v2, inv)
    with pytest.raises(DataError, match="unknown noise_recipe 'v9' \\(choose from v1, v2\\)"):
        VadDataConfig(corpus="extended", noise_recipe="v9").validate()
    with pytest.raises(DataError, match="noise_recipe 'v2' only applies to the extended corpus"):
        VadDataConfig(noise_recipe="v2").validate()


def test_data_command_refuses_the_recipe_without_the_extended_corpus(tmp_path, capsys):
    from slimtrain.cli import main

    assert main(["data", "vad", "--noise-recipe", "v2", "--out", str(tmp_path / "x"), "--no-progress"]) != 0
    assert "--noise-recipe only applies with --corpus extended" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_v2_build_changes_only_the_training_split(tmp_path):
    from slimtrain.tasks.audio import AudioError, extra_prompts
    from slimtrain.tasks.vad.build import build_vad_data

    if shutil.which("sox") is None:
        pytest.skip("needs sox")
    try:
        extra_prompts("es-co")
    except AudioError as e:
        pytest.skip(str(e))
    base = dict(corpus="extended", train_minutes=0.5, val_minutes=0.1, test_minutes=0.1, clip_seconds=2.0,
                max_files_per_language=5, tts_utterances=0, extra_train_speakers=("es-co",))
    m1 = json.loads(build_vad_data(VadDataConfig(**base), tmp_path / "v1").read_text())
    m2 = json.loads(build_vad_data(VadDataConfig(**base, noise_recipe="v2"), tmp_path / "v2").read_text())
    assert m1["corpus_version"] == "extended-v1" and m2["corpus_version"] == "extended-v2"
    assert m1["fingerprint"] != m2["fingerprint"] and m2["recipe"]["training_noise"]["low_snr_db"] == list(LOW_SNR_DB)
    for split in ("val", "test"):  # mixed with v1 either way: the same bytes
        assert (tmp_path / "v1" / f"{split}.npz").read_bytes() == (tmp_path / "v2" / f"{split}.npz").read_bytes()
        assert "synth-music" not in m2["splits"][split]["noise_counts"]
    assert "synth-music" in m2["splits"]["train"]["noise_counts"]
    assert sum(m2["splits"]["train"]["noise_counts"].values()) == m2["splits"]["train"]["clips"]
    assert (tmp_path / "v1" / "train.npz").read_bytes() != (tmp_path / "v2" / "train.npz").read_bytes()
