"""The recorded human-voice registry (``slimtrain.tasks.human_voices``), its use in the extended corpus,
and the ``unseen-human`` / ``unseen-tts`` evaluation sets (``slimtrain.tasks.vad.unseen_human``)."""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from slimtrain.cli import main
from slimtrain.tasks import human_voices as H
from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.unseen import check_training_manifest
from slimtrain.tasks.vad.data import DataError, VadDataConfig, VadSplit
from slimtrain.tasks.vad.unseen import HELD_OUT_SPEAKER, UnseenConfig, build_unseen_set, training_voices
from slimtrain.tasks.vad.unseen_human import (TTS_GROUPS, UnseenHumanConfig, _check_kinds, build_unseen_human_set,
                                              held_out_human_sources, load_split_set)

ROOT = Path(__file__).resolve().parents[1]


def _speechlike(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Noise under a syllable-rate envelope with silent edges (enough for the frame labels)."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    env = np.clip(np.sin(np.pi * t / seconds), 0, 1) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.3 * env * rng.standard_normal(n)).astype(np.float32)


def _write(path: Path, x: np.ndarray, sr: int) -> float:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, format="OGG" if path.suffix == ".ogg" else "WAV")
    return len(x) / sr


def _fake_tree(root: Path, srcs, rng: np.random.Generator, per_source: int = 3) -> dict[str, tuple[int, float]]:
    """Write ``per_source`` files matching each source's first pattern (plus one non-matching file);
    returns ``{id: (files, seconds)}`` of the matching ones."""
    expected = {}
    for s in srcs:
        folder = root / s.package / s.folder
        pat = s.patterns[0]
        seconds = 0.0
        for k in range(per_source):
            name = pat.replace("**/", "sub/").replace("*/", "lvl/").replace("*", f"f{k}", 1).replace("*", "x")
            if name.endswith(".gsm"):
                frames = int(rng.integers(10, 200))
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(bytes(33 * frames))
                seconds += frames * 160 / 8000
            else:
                sr = int(rng.choice([8000, 22050, 44100]))
                seconds += _write(folder / name, _speechlike(rng, float(rng.uniform(0.3, 1.2)), sr), sr)
        (folder / "README.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "README.txt").write_text("not audio, not matched")
        expected[s.id] = (per_source, seconds)
    return expected


# -- the registry ---------------------------------------------------------------------------------------
def test_measured_totals_match_the_files_of_a_fake_package_tree(tmp_path):
    rng = np.random.default_rng(0)
    srcs = [H.source(i) for i in ("klettres-it", "klettres-de", "fillets-cs", "asterisk-ru", "es-co", "it-menardi")]
    expected = _fake_tree(tmp_path, srcs, rng)
    # a Fish Fillets line of a minor character (not -m-/-v-) is not one of the counted lead voices
    _write(tmp_path / "fillets-ng-data-cs/usr/share/games/fillets-ng/sound/lvl/cs/a-hs-b.ogg",
           _speechlike(rng, 0.5, 8000), 8000)
    rows = H.measure(srcs, root=tmp_path)
    for r in rows:
        n, sec = expected[r["id"]]
        assert r["files"] == n and r["bad_files"] == 0
        assert r["minutes"] == pytest.approx(sec / 60, abs=0.006)
    t = H.totals(rows)
    assert t["all"]["speakers"] == sum(s.speakers for s in srcs) == 7  # Fish Fillets: two lead voices
    assert t["all"]["languages"] == sorted({lg for s in srcs for lg in s.languages}) == ["cs", "de", "es", "it", "ru"]
    assert t["held-out"]["speakers"] == 2 and t["held-out"]["languages"] == ["it"]
    assert t["all"]["files"] == sum(n for n, _ in expected.values())
    assert t["all"]["minutes"] == pytest.approx(sum(r["minutes"] for r in rows))
    # the CSV round trip keeps the numbers
    back = H.read_csv(H.write_csv(rows, tmp_path / "hv.csv"))
    assert H.totals(back) == t


def test_bad_or_missing_files_give_named_errors(tmp_path, monkeypatch):
    src = H.source("klettres-he")
    with pytest.raises(H.HumanVoiceError, match=r"'klettres-he'.*apt-get install klettres-data"):
        H.source_files(src, root=tmp_path)
    folder = tmp_path / "klettres-data/usr/share/klettres/he/alpha"
    _write(folder / "a.ogg", _speechlike(np.random.default_rng(1), 0.5, 8000), 8000)
    (folder / "broken.ogg").write_bytes(b"OggS not really")
    with pytest.warns(UserWarning, match=r"'klettres-he': skipped 1 of 2 files: .*broken\.ogg: not a readable audio"):
        (row,) = H.measure([src], root=tmp_path)
    assert row["files"] == 1 and row["bad_files"] == 1
    (folder / "a.ogg").unlink()
    with pytest.raises(H.HumanVoiceError, match=r"'klettres-he': none of its 1 files is usable; first: .*broken\.ogg"):
        H.measure([src], root=tmp_path)
    gsm = tmp_path / "asterisk-prompt-es-co/usr/share/asterisk/sounds/es/x.gsm"
    gsm.parent.mkdir(parents=True)
    gsm.write_bytes(bytes(50))
    with pytest.raises(H.HumanVoiceError, match=r"x\.gsm: not a raw GSM 06\.10 file \(50 bytes"):
        H.measure([H.source("es-co")], root=tmp_path)
    # an unpacked package that is not there names the unpack command
    monkeypatch.setenv("SLIMTRAIN_DEB_DIR", str(tmp_path / "no-debs"))
    with pytest.raises(H.HumanVoiceError, match=r"'fr-armelle'.*apt-get download asterisk-prompt-fr-armelle"):
        H.source_files(H.source("fr-armelle"))
    with pytest.raises(H.HumanVoiceError, match="unknown human-voice source 'nope'; known: asterisk-en"):
        H.source("nope")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,package\nx,y\n")
    with pytest.raises(H.HumanVoiceError, match=r"bad\.csv line 2: missing column\(s\) version"):
        H.read_csv(bad_csv)


@pytest.mark.parametrize("sources, message", [
    (("klettres-it",), "'klettres-it' is registered as 'held-out', not 'train'"),
    (("es-co",), "'es-co' is already a voice of the corpus"),
    (("nope",), "unknown human-voice source 'nope'"),
])
def test_the_corpus_refuses_held_out_builtin_or_unknown_sources(sources, message):
    with pytest.raises(DataError, match=message):
        VadDataConfig(corpus="extended", human_voices=sources).validate()
    with pytest.raises(DataError, match="human_voices only applies to the extended corpus"):
        VadDataConfig(human_voices=("klettres-de",)).validate()


def test_held_out_speakers_and_languages_are_in_no_training_source_or_voice():
    from slimtrain.tasks.vad.extended import TTS_VOICES

    held = H.sources("held-out")
    assert len(held) >= 5 and len(H.held_out_languages()) >= 4
    train_langs = {lg for s in H.SOURCES if s.role in ("train", "val") for lg in s.languages}
    assert not H.held_out_languages() & train_langs
    # no synthetic training voice speaks or reads a held-out language either
    from slimtrain.tasks.vad.unseen import _FESTIVAL_LANGUAGE, _base_language

    tts_langs = {_base_language(v) if e == "espeak-ng" else _FESTIVAL_LANGUAGE.get(v, "en") for e, v, _ in TTS_VOICES}
    tts_langs |= {lg for _, _, lg in TTS_VOICES}
    assert not H.held_out_languages() & tts_langs
    assert not {s.id for s in held} & {s.id for s in H.SOURCES if s.role == "train"}
    # a manifest that trains on every addable source passes; one held-out source or language in it fails
    ok = {"corpus": "extended", "fingerprint": "f" * 16,
          "config": {"train_languages": ["en", "es"], "extra_train_speakers": ["es-co"],
                     "human_voices": [s.id for s in H.sources("train", addable=True)]},
          "splits": {"train": {"speakers": ["en_US_f_Allison", "es_MX_f_Allison", "es-co"], "tts_voices": []}}}
    check_training_manifest(ok)
    assert {"fillets-cs", "klettres-ru"} <= training_voices(ok)["speakers"]
    leak = json.loads(json.dumps(ok))
    leak["config"]["human_voices"].append("klettres-uk")
    with pytest.raises(H.HumanVoiceError, match="held-out source 'klettres-uk'.*held-out language 'uk'"):
        check_training_manifest(leak)
    tts_leak = json.loads(json.dumps(ok))
    tts_leak["splits"]["train"]["tts_voices"] = ["espeak-ng/he+m3"]
    with pytest.raises(H.HumanVoiceError, match="held-out language 'he' is spoken in the training split"):
        check_training_manifest(tts_leak)


# -- real installed packages (install.sh installs them: apt-packages.txt) ----------------------------------
def test_installed_packages_match_the_committed_registry_table():
    rows = {r["id"]: r for r in H.read_csv(ROOT / "docs/vad_results/human_voices.csv")}
    assert set(rows) == {s.id for s in H.SOURCES}
    pick = [s for s in H.SOURCES if s.package in ("klettres-data", "asterisk-core-sounds-ru-wav")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Russian package has one empty prompt (counted in bad_files)
        try:
            measured = H.measure(pick)
        except H.HumanVoiceError as e:  # not installed (install.sh installs them; under CI=true a skip fails)
            pytest.skip(str(e))
    for m in measured:
        assert (m["files"], m["bad_files"]) == (rows[m["id"]]["files"], rows[m["id"]]["bad_files"]), m["id"]
        assert m["minutes"] == pytest.approx(rows[m["id"]]["minutes"], abs=0.011), m["id"]


def test_extended_corpus_records_the_human_sources_it_trains_on(tmp_path):
    if shutil.which("sox") is None:
        pytest.skip("needs sox")
    try:
        H.source_files(H.source("klettres-de")), H.source_files(H.source("fillets-cs"))
    except H.HumanVoiceError as e:
        pytest.skip(str(e))
    cfg = VadDataConfig(corpus="extended", train_minutes=0.3, val_minutes=0.1, test_minutes=0.1, clip_seconds=2.0,
                        max_files_per_language=3, tts_utterances=2, extra_train_speakers=("es-co",),
                        human_voices=("klettres-de", "fillets-cs"), human_files_per_source=4)
    man = json.loads(build_vad_data(cfg, tmp_path).read_text())
    hv = man["human_voices"]
    assert [r["id"] for r in hv["sources"]] == ["klettres-de", "fillets-cs"]
    assert [r["files_read"] for r in hv["sources"]] == [4, 4]
    assert hv["totals"]["speakers"] == 3 and hv["totals"]["languages"] == ["cs", "de"]
    # all training voices: the two Asterisk voices, es-co and the added three
    assert hv["all_training_voices"]["speakers"] == 6
    assert hv["all_training_voices"]["languages"] == ["cs", "de", "en", "es"]
    names = {n for clip in man["splits"]["train"]["clip_sources"] for n in clip}
    used = {n.split("/")[1] for n in names if n.startswith("human/")}
    assert used <= {"klettres-de", "fillets-cs"} and used
    in_clips = sum(r["minutes_in_clips"] for r in hv["sources"])
    assert in_clips == pytest.approx(hv["totals"]["minutes_in_clips"], abs=1e-3) and in_clips > 0
    kinds = man["splits"]["train"]["speech_minutes_by_kind"]
    assert kinds["human"] > kinds["tts"] and kinds["tts_share"] < 0.5
    check_training_manifest(man)
    # without human voices the settings (and fingerprint) are those of the corpus before the registry
    assert "human_voices" not in VadDataConfig(corpus="extended").as_dict()


# -- the split evaluation sets ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_sets(tmp_path_factory):
    from slimtrain.tasks.audio import AudioError, extra_prompts

    for prog in ("sox", "espeak-ng", "festival"):
        if shutil.which(prog) is None:
            pytest.skip(f"needs {prog}")
    try:
        extra_prompts(HELD_OUT_SPEAKER)
    except AudioError as e:
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("split_sets")
    fake = tmp / "debs"
    _fake_tree(fake, held_out_human_sources() + held_out_human_sources("expressive"), np.random.default_rng(3),
               per_source=2)
    udir = tmp / "unseen"
    build_unseen_set(udir, UnseenConfig(human_utterances=3, festival_utterances=2, espeak_utterances=4))
    build_unseen_human_set(udir, UnseenHumanConfig(utterances_per_source=2), root=fake)
    build_unseen_human_set(udir, UnseenHumanConfig(utterances_per_source=2), root=fake, which="unseen-expressive")
    return tmp, udir


def test_unseen_human_holds_only_held_out_human_voices_and_unseen_tts_only_synthetic_ones(split_sets):
    _, udir = split_sets
    human, hgroups, hinfo = load_split_set("unseen-human", udir, build=False)
    tts, tgroups, tinfo = load_split_set("unseen-tts", udir, build=False)
    held = {s.id for s in H.sources("held-out", collection="core")}
    assert set(hgroups) == held and len(hgroups) == len(human.audio) == len(human.sources)
    train_ids = {s.id for s in H.SOURCES if s.role == "train"} | {"en_US_f_Allison", "es_MX_f_Allison"}
    for g, names in zip(hgroups, human.sources):
        assert names and all(not n.startswith("tts/") for n in names)
        assert all((n.split("/")[1] if n.startswith("human/") else n.split("/")[0]) == g for n in names)
        assert g not in train_ids
    assert set(tgroups) == set(TTS_GROUPS) and all(n.startswith("tts/") for c in tts.sources for n in c)
    assert hinfo["fingerprint"] != tinfo["fingerprint"]
    # a mixed clip is refused, naming the clip
    bad = VadSplit(human.audio[:1], human.labels[:1], human.snr_db[:1], human.noise[:1], [["tts/espeak-ng/it/0"]])
    with pytest.raises(DataError, match="unseen-human clip 0 .* holds synthetic speech: tts/espeak-ng/it/0"):
        _check_kinds("unseen-human", bad, hgroups[:1])
    with pytest.raises(DataError, match="unseen-tts clip 0 .* holds a human voice: fr-armelle/x"):
        _check_kinds("unseen-tts", VadSplit(tts.audio[:1], tts.labels[:1], tts.snr_db[:1], tts.noise[:1],
                                            [["fr-armelle/x"]]), tgroups[:1])


def test_unseen_expressive_holds_the_held_out_voice_packs_only(split_sets):
    _, udir = split_sets
    ex, groups, info = load_split_set("unseen-expressive", udir, build=False)
    _, _, hinfo = load_split_set("unseen-human", udir, build=False)
    packs = {s.id for s in H.sources("held-out", collection="expressive")}
    assert set(groups) == packs and len(packs) >= 3 and len(groups) == len(ex.audio)
    assert all(n.startswith("human/hedgewars-") for c in ex.sources for n in c)  # no TTS, no core voice
    assert not packs & {s.id for s in H.SOURCES if s.role == "train"}
    assert info["set"] == "unseen-expressive" and info["fingerprint"] != hinfo["fingerprint"]
    with pytest.raises(DataError, match="unknown held-out human set 'unseen-x'"):
        build_unseen_human_set(udir, which="unseen-x")


def test_eval_reports_per_source_and_per_snr_band_numbers_on_both_split_sets(split_sets, monkeypatch, capsys):
    pytest.importorskip("silero_vad")
    from slimtrain.tasks.vad import unseen_human as U

    tmp, udir = split_sets
    monkeypatch.setattr(U, "build_unseen_set", lambda *a, **k: None)  # keep the tiny sets built above
    monkeypatch.setattr(U, "build_unseen_human_set", lambda *a, **k: None)
    data_dir = tmp / "data"
    build_vad_data(VadDataConfig.quick(test_minutes=0.2), data_dir)
    for which, groups in (("unseen-human", {s.id for s in H.sources("held-out", collection="core")}),
                          ("unseen-tts", set(TTS_GROUPS)),
                          ("unseen-expressive", {s.id for s in H.sources("held-out", collection="expressive")})):
        out = tmp / f"{which}.csv"
        assert main(["vad", "eval", "--set", which, "--data", str(data_dir), "--unseen", str(udir),
                     "--csv", str(out)]) == 0
        rows = list(csv.DictReader(out.open()))
        assert [r["model"] for r in rows] == ["shipped", "Silero VAD (8 kHz)"] and rows[0]["set"] == which
        for r in rows:
            assert {f"auc {g}" for g in groups} | {f"f1 {g}" for g in groups} <= set(r)
            assert {"auc < 5 dB", "auc 5-15 dB", "auc 15-25 dB", "auc >= 25 dB"} <= set(r)
            assert 0 < float(r["auc"]) <= 1
    capsys.readouterr()


def test_eval_refuses_a_training_corpus_with_a_held_out_human_source(tmp_path, monkeypatch):
    from slimtrain.tasks.vad.evaluate import evaluate_models

    data = tmp_path / "data"
    data.mkdir()
    man = {"version": 1, "corpus": "core", "fingerprint": "a" * 16,
           "config": {"train_languages": ["en", "uk"], "extra_train_speakers": []},
           "splits": {s: {"clip_sources": [], "speakers": []} for s in ("train", "val", "test")}}
    (data / "manifest.json").write_text(json.dumps(man))
    for s in ("train", "val", "test"):
        np.savez(data / f"{s}.npz", audio=np.zeros((1, 800), np.float32), labels=np.zeros((1, 11), np.uint8),
                 snr_db=np.zeros(1, np.float32), noise=np.asarray(["white"]))
    with pytest.raises(H.HumanVoiceError, match="held-out language 'uk' is spoken in the training split"):
        evaluate_models([None], "unseen-human", data, unseen_dir=tmp_path / "u", silero=False)


@pytest.mark.parametrize("argv, message", [
    (["data", "vad", "--corpus", "extended", "--human-voices", "klettres-xx"], "unknown human-voice source(s) klettres-xx"),
    (["data", "vad", "--human-voices", "train", "--out", "/nonexistent/x"],
     "--human-voices/--human-files only apply with --corpus extended"),
    (["data", "vad", "--corpus", "extended", "--human-files", "0"], "--human-files"),
])
def test_human_voice_options_reject_bad_input_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err.split("error:")[-1]


def test_human_voices_command_names_a_package_that_is_not_there(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLIMTRAIN_DEB_DIR", str(tmp_path / "no-debs"))
    monkeypatch.setattr(H, "SOURCES", tuple(s for s in H.SOURCES if s.unpacked))  # skip measuring the big ones
    assert main(["data", "human-voices", "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "human-voice source 'es-co'" in err and "apt-get download asterisk-prompt-es-co" in err
    assert "\n" not in err and not (tmp_path / "x.csv").exists()


def test_role_keywords_name_the_core_sources_and_expressive_names_the_voice_packs():
    core = [s.id for s in H.sources("train", addable=True, collection="core")]
    packs = [s.id for s in H.sources("train", addable=True, collection="expressive")]
    assert packs and all(i.startswith("hedgewars-") for i in packs) and not set(core) & set(packs)
    assert H.parse_source_list("train") == core  # the documented corpora's commands rebuild the same corpora
    assert H.parse_source_list("expressive") == packs
    assert H.parse_source_list("train,expressive") == core + packs == H.parse_source_list("all")
    assert H.parse_source_list(f"{packs[0]},train,{packs[0]}") == [packs[0]] + core  # order kept, no duplicates
    assert H.parse_source_list("expressive", "held-out") == [s.id for s in H.sources("held-out", collection="expressive")]
    assert H.parse_source_list("none") == []
    with pytest.raises(H.HumanVoiceError, match="unknown human-voice source.*hedgewars-robot"):
        H.parse_source_list("train,hedgewars-robot")  # the processed Robot pack is not registered
    with pytest.raises(H.HumanVoiceError, match="unknown collection 'x'"):
        H.sources(collection="x")
    # a held-out pack in a training split is a leak like any other held-out source
    man = {"corpus": "extended", "fingerprint": "f" * 16,
           "config": {"train_languages": ["en"], "extra_train_speakers": [], "human_voices": ["hedgewars-default-pl"]},
           "splits": {"train": {"speakers": ["en_US_f_Allison"], "tts_voices": []}}}
    with pytest.raises(H.HumanVoiceError, match="held-out source 'hedgewars-default-pl'"):
        check_training_manifest(man)


def test_package_path_prefers_root_then_installed_then_unpacked(tmp_path, monkeypatch):
    """One lookup serves the human-voice folders and the unit-selection texts: ``root`` wins, an installed
    file comes before the unpacked one unless the source is unpack-only, and a path found nowhere is the
    installed one (the path an error names)."""
    from slimtrain.tasks.audio import package_path

    monkeypatch.setenv("SLIMTRAIN_DEB_DIR", str(tmp_path / "debs"))
    assert package_path("pkg", "usr/share/x", tmp_path / "r") == tmp_path / "r/pkg/usr/share/x"
    assert package_path("pkg", "usr/share/slimtrain-nowhere") == Path("/usr/share/slimtrain-nowhere")
    unpacked = tmp_path / "debs/pkg/usr/share/slimtrain-nowhere"
    unpacked.mkdir(parents=True)
    assert package_path("pkg", "usr/share/slimtrain-nowhere") == unpacked
    # /usr exists on every machine: installed first, unless the source is only ever unpacked
    (tmp_path / "debs/pkg/usr").mkdir(exist_ok=True)
    assert package_path("pkg", "usr") == Path("/usr")
    assert package_path("pkg", "usr", installed_first=False) == tmp_path / "debs/pkg/usr"
    # the unit-selection texts use it
    from slimtrain.tasks.spoof.unit_selection import TEXT_FILE, TEXT_PACKAGE, text_file
    assert text_file(tmp_path / "r") == tmp_path / "r" / TEXT_PACKAGE / TEXT_FILE
