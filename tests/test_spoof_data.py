"""Anti-spoofing data: attack generators, cue removal, protocol, cache + manifest, the shortcut test."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimtrain.tasks.audio import asterisk_prompts, read_audio
from slimtrain.tasks.spoof import attacks as A
from slimtrain.tasks.spoof.data import (SR, DataError, SpoofDataConfig, build_dataset, condition, cue_features,
                                        load_split, plan_items, shortcut_eer)

from _spoof_fixtures import programs_missing, spoof_data  # noqa: F401  (fixture)

needs_tts = pytest.mark.skipif(bool(programs_missing()), reason="speech synthesisers not installed")


def _bona() -> np.ndarray:
    return read_audio(asterisk_prompts("en")[0], SR)[0]


# -- attack generators ---------------------------------------------------------------------------------
@needs_tts
@pytest.mark.parametrize("make", [
    lambda: A.espeak("Please enter your account number", "en-us+f3", 150, 60),
    lambda: A.flite("Please enter your account number", "slt"),
    lambda: A.festival_batch(["Please enter your account number", 'say "hi" (twice) è'], "kal_diphone")[1],
    lambda: A.festival_batch(["Por favor ingrese su numero"], "upc_ca_ona_hts")[0],
], ids=["A1-espeak", "A2-flite", "A3-festival-diphone", "A4-festival-hts"])
def test_text_attacks_give_speech_at_8khz_deterministically(make):
    x, y = make(), make()
    assert x.dtype == np.float32 and len(x) > SR // 2  # at least half a second
    assert np.sqrt(np.mean(x ** 2)) > 1e-3  # not silent
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fn", [lambda x: A.world_copy_batch([x])[0], A.griffin_lim_copy, A.lpc_copy],
                         ids=["A5", "A6", "A7"])
def test_copy_synthesis_keeps_length_level_and_changes_the_signal(fn):
    x = _bona()
    y = fn(x)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    rx, ry = np.sqrt(np.mean(x ** 2)), np.sqrt(np.mean(y ** 2))
    assert 0.1 < ry / rx < 10  # same order of loudness
    assert np.max(np.abs(y - x)) > 0.05 * np.max(np.abs(x))  # a real resynthesis, not a copy
    np.testing.assert_array_equal(y, fn(x))  # deterministic


def test_missing_program_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(A.shutil, "which", lambda *a, **k: None)
    with pytest.raises(A.AttackError, match="apt-get install espeak-ng"):
        A.espeak("hello", "en-us")
    with pytest.raises(A.AttackError, match="apt-get install festival"):
        A.festival_batch(["hello"], "kal_diphone")


@needs_tts
def test_missing_festival_voice_names_the_voice():
    with pytest.raises(A.AttackError, match="no_such_voice"):
        A.festival_batch(["hello"], "no_such_voice")


# -- cue removal ---------------------------------------------------------------------------------------
@given(st.integers(0, 2 ** 31 - 1), st.integers(800, 20000))
def test_condition_gives_fixed_length_and_repeats_for_a_seed(seed, n):
    t = np.arange(n) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.05)).astype(np.float32)
    a = condition(x, np.random.default_rng(seed), 8000)
    b = condition(x, np.random.default_rng(seed), 8000)
    assert a.dtype == np.int16 and a.shape == (8000,)
    np.testing.assert_array_equal(a, b)
    level = 20 * np.log10(np.sqrt(np.mean((a / 32768.0) ** 2)))
    assert level < -17.5  # random level in -30..-18 dBFS of the speech part; shorter ones are padded
    if n - 480 >= 8000:  # the tone fills the clip
        assert level > -30.5


def test_cue_features_measure_duration_level_leading_silence_and_density():
    x = np.zeros(8000)
    x[2000:6000] = 0.1 * np.sin(np.arange(4000) * 0.3)
    x[3000:4000] = 0  # a 125 ms pause inside the speech: same span, lower density
    dur, rms, lead, density = cue_features(x)
    assert density == pytest.approx(3000 / 8000, abs=0.011)
    assert dur == pytest.approx(0.5, abs=0.011)
    assert lead == pytest.approx(0.25, abs=0.011)
    assert rms == pytest.approx(20 * np.log10(0.1 / np.sqrt(2) * np.sqrt(3000 / 8000)), abs=0.2)


# -- protocol, cache, manifest -------------------------------------------------------------------------
def test_plan_is_deterministic_and_keeps_unseen_attacks_and_heldout_speaker_out_of_training():
    cfg = SpoofDataConfig.quick()
    a, _ = plan_items(cfg)
    b, _ = plan_items(cfg)
    assert [vars(i) for i in a] == [vars(i) for i in b]
    train = [i for i in a if i.split == "train"]
    assert not {i.attack for i in train} & set(cfg.unseen_attacks)
    assert set(cfg.unseen_attacks) >= {"A4", "A6"} and len(cfg.unseen_attacks) >= 2
    assert all(i.language != cfg.heldout_language for i in train)
    ev_bona = [i for i in a if i.split == "eval" and i.label == 1]
    assert any(i.language == cfg.heldout_language for i in ev_bona)
    # no prompt recording or text is shared between training and evaluation (content split)
    train_prompts = {(i.language, i.prompt) for i in train}
    assert not train_prompts & {(i.language, i.prompt) for i in a if i.split == "eval"}
    c, _ = plan_items(SpoofDataConfig.quick(seed=1))
    assert [vars(i) for i in c] != [vars(i) for i in a]


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown attack 'A42'"):
        SpoofDataConfig(train_attacks=("A42",)).validate()
    with pytest.raises(DataError, match="held-out language"):
        SpoofDataConfig(heldout_language="de").validate()
    with pytest.raises(DataError, match="slimtrain data spoof"):
        load_split(tmp_path, "train")


def test_dataset_manifest_counts_hashes_and_cache_reuse(spoof_data):  # noqa: F811
    out, man, train, test = spoof_data
    cfg = SpoofDataConfig.quick()
    assert man["config"] == cfg.as_dict()
    assert man["counts"]["train"]["bona"] == cfg.n_bona_train == int(train.label.sum())
    assert set(man["counts"]["eval"]) == {"bona", *cfg.eval_attacks}
    assert train.audio.shape == (len(train), cfg.clip_samples) and train.audio.dtype == np.int16
    import hashlib
    for name, digest in man["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    before = {f: os.stat(out / f).st_mtime_ns for f in man["sha256"]}
    again = build_dataset(out, cfg, progress=False)  # same settings: reused, not rebuilt
    assert again == json.loads((out / "manifest.json").read_text())
    assert {f: os.stat(out / f).st_mtime_ns for f in man["sha256"]} == before


def test_shortcut_cues_alone_stay_near_chance(spoof_data):  # noqa: F811
    """Duration, RMS, leading silence and density must not separate bona fide from spoof (EER >= 35%)."""
    _, _, train, test = spoof_data
    assert shortcut_eer(train, test) >= 0.35
    # one family at a time: a family missing from a split is named, not scored on an empty set
    assert 0.0 <= shortcut_eer(train, test, attack="A1") <= 1.0
    with pytest.raises(DataError, match="attack 'A9' has no clip in this split .*A8"):
        shortcut_eer(train, test, attack="A9")


@needs_tts
def test_generation_is_byte_identical_for_a_seed_whatever_the_workers(tmp_path):
    cfg = SpoofDataConfig(n_bona_train=2, n_spoof_train_per_attack=1, n_bona_eval_heldout=2, n_bona_eval_known=1,
                          n_spoof_eval_per_attack=1)
    a = build_dataset(tmp_path / "a", cfg, workers=1, progress=False)
    b = build_dataset(tmp_path / "b", cfg, workers=3, progress=False)
    assert a["sha256"] == b["sha256"]


# -- the extended corpus (--corpus extended) ------------------------------------------------------
def _needs_extra_speakers() -> None:
    from slimtrain.tasks.audio import AudioError, extra_prompts

    try:
        extra_prompts("es-co"), extra_prompts("fr-armelle")
    except AudioError as e:
        pytest.skip(str(e))


def test_core_config_is_unchanged_by_the_corpus_option():
    assert "corpus" not in SpoofDataConfig().as_dict() and "corpus" not in SpoofDataConfig(corpus="core").as_dict()
    assert SpoofDataConfig(corpus="extended").as_dict()["corpus"] == "extended"
    with pytest.raises(DataError, match="unknown corpus 'big'"):
        SpoofDataConfig(corpus="big").validate()


def test_extended_protocol_adds_speakers_and_voices_and_keeps_the_held_out_ones_out_of_training():
    _needs_extra_speakers()
    cfg = SpoofDataConfig.quick(corpus="extended", n_bona_train=300, n_spoof_train_per_attack=80,
                                n_spoof_eval_per_attack=80)
    items, files = plan_items(cfg)
    train = [i for i in items if i.split == "train"]
    ev = [i for i in items if i.split == "eval"]
    # the two extra Asterisk speakers are bona fide training speakers (GSM files) and copy-attack sources
    assert {"es-co", "fr-armelle"} <= {i.language for i in train if i.label == 1}
    assert {"es-co", "fr-armelle"} & {i.language for i in train if i.attack == "A5"}
    assert str(files[f"es-co:{next(i.prompt for i in train if i.language == 'es-co')}"]).endswith(".gsm")
    # held-out bona fide speaker, unseen families and eval-only voices never reach training
    assert all(i.language != cfg.heldout_language for i in train)
    assert not {i.attack for i in train} & set(cfg.unseen_attacks)
    fin = set(A.FESTIVAL_EVAL_ONLY_VOICES)
    assert not fin & {i.voice for i in train} and fin & {i.voice for i in ev if i.attack == "A3"}
    assert any(i.voice.startswith("czech_") for i in train)
    # more espeak-ng accents and variants than the core corpus
    core_a1 = {i.voice for i in plan_items(SpoofDataConfig.quick(n_spoof_train_per_attack=80))[0] if i.attack == "A1"}
    ext_a1 = {i.voice for i in items if i.attack == "A1"}
    assert len(ext_a1) > len(core_a1) and any(v.startswith("en-gb-scotland") or "+klatt" in v for v in ext_a1)
    assert not {(i.language, i.prompt) for i in train} & {(i.language, i.prompt) for i in ev}
    assert [vars(i) for i in plan_items(cfg)[0]] == [vars(i) for i in items]  # deterministic


def test_extended_spoof_fingerprint_changes_when_a_source_or_setting_changes():
    from slimtrain.tasks.spoof.data import spoof_fingerprint

    cfg = SpoofDataConfig(corpus="extended")
    inv = [{"use": "A1", "package": "espeak-ng", "version": "1.51", "voices": ["en-us"]},
           {"use": "bona fide", "package": "asterisk-prompt-es-co", "version": "0.2", "voices": ["es-co"]}]
    fp = spoof_fingerprint(cfg, inv)
    assert fp == spoof_fingerprint(SpoofDataConfig(corpus="extended"), [dict(d) for d in inv])
    assert len({fp, spoof_fingerprint(cfg, [{**inv[0], "version": "1.52"}, inv[1]]),
                spoof_fingerprint(cfg, [{**inv[0], "voices": ["en-us", "en-gb"]}, inv[1]]),
                spoof_fingerprint(cfg, inv[:1]),
                spoof_fingerprint(SpoofDataConfig(corpus="extended", seed=3), inv)}) == 5


def test_a_folder_holding_the_extended_corpus_is_read_not_rebuilt_by_training_commands(tmp_path):
    from slimtrain.tasks.spoof.data import FORMAT, VERSION

    for f in ("train.npz", "eval.npz", "items.csv"):
        (tmp_path / f).write_bytes(b"x")
    man = {"format": FORMAT, "version": VERSION, "config": SpoofDataConfig(corpus="extended").as_dict(),
           "corpus": "extended", "fingerprint": "0123456789abcdef", "unseen_attacks": ["A4"],
           "sha256": {"train.npz": "-", "eval.npz": "-", "items.csv": "-"}}
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    before = os.stat(tmp_path / "train.npz").st_mtime_ns
    # 'slimtrain spoof --data DIR' builds with the default config (corpus unspecified): DIR is read as it is
    assert build_dataset(tmp_path, SpoofDataConfig.quick(), progress=False) == man
    assert os.stat(tmp_path / "train.npz").st_mtime_ns == before


def _fake_corpus(folder, cfg: SpoofDataConfig) -> dict:
    from slimtrain.tasks.spoof.data import FORMAT, VERSION

    folder.mkdir(parents=True, exist_ok=True)
    for f in ("train.npz", "eval.npz", "items.csv"):
        (folder / f).write_bytes(b"x")
    man = {"format": FORMAT, "version": VERSION, "config": cfg.as_dict(), "unseen_attacks": list(cfg.unseen_attacks),
           "sha256": {"train.npz": "-", "eval.npz": "-", "items.csv": "-"}}
    (folder / "manifest.json").write_text(json.dumps(man))
    return man


@pytest.mark.parametrize("recipe", [dict(eval_attacks=("A1", "A4", "A11")), dict(train_attacks=("A1", "A10")),
                                    dict(train_scale=2), dict(splice_like_source="train")],
                         ids=["eval-attacks", "train-attacks", "train-scale", "like-source"])
def test_training_reads_a_folder_of_another_recipe_and_the_data_command_rebuilds_it(tmp_path, recipe):
    from slimtrain.cli import main
    from slimtrain.tasks.spoof.data import _adopt

    man = _fake_corpus(tmp_path / "d", SpoofDataConfig.quick(**recipe))
    # a training command (default config, corpus unspecified) reads it as it is, not building the default over it
    assert build_dataset(tmp_path / "d", SpoofDataConfig(), progress=False) == man
    _fake_corpus(tmp_path / "plain", SpoofDataConfig.quick(seed=3))
    assert _adopt(tmp_path / "plain") is None and _adopt(tmp_path / "d") == man  # sizes and seed are no recipe
    if programs_missing():
        pytest.skip("speech synthesisers not installed")
    if recipe == dict(eval_attacks=("A1", "A4", "A11")):  # (one rebuild is enough to show it)
        # 'slimtrain data spoof' builds what it is asked, also over a folder of another recipe
        assert main(["data", "spoof", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
        assert json.loads((tmp_path / "d" / "manifest.json").read_text())["config"] == SpoofDataConfig.quick().as_dict()


def test_data_fingerprint_of_a_folder(tmp_path, spoof_data):  # noqa: F811
    from slimtrain.tasks.spoof.data import data_fingerprint

    out, man, _, _ = spoof_data
    fp = data_fingerprint(out)
    assert len(fp) == 16 and fp == data_fingerprint(out)
    (tmp_path / "manifest.json").write_text(json.dumps({**man, "sha256": {**man["sha256"], "train.npz": "0" * 64}}))
    assert data_fingerprint(tmp_path) != fp  # other bytes, other fingerprint
    (tmp_path / "manifest.json").write_text(json.dumps({**man, "fingerprint": "abc"}))
    assert data_fingerprint(tmp_path) == "abc"  # extended manifests carry their own
    with pytest.raises(DataError, match="slimtrain data spoof"):
        data_fingerprint(tmp_path / "missing")
