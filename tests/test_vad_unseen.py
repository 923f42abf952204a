"""The unseen-voices VAD evaluation set (``slimtrain.tasks.vad.unseen``) and ``slimtrain vad eval``."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from slimtrain.cli import main
from slimtrain.tasks.vad.build import build_vad_data
from slimtrain.tasks.vad.data import DataError, VadDataConfig
from slimtrain.tasks.vad.unseen import (HELD_OUT_SPEAKER, UNSEEN_ESPEAK, UNSEEN_FESTIVAL, UnseenConfig,
                                        build_unseen_set, check_held_out, load_unseen_set, training_voices,
                                        unseen_voices)


def _needs(*programs: str) -> None:
    from slimtrain.tasks.audio import AudioError, extra_prompts

    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    try:
        extra_prompts(HELD_OUT_SPEAKER)
    except AudioError as e:
        pytest.skip(str(e))


def _manifest(corpus: str, speakers: list[str], tts: list[str], extra: tuple[str, ...] = ()) -> dict:
    return {"corpus": corpus, "fingerprint": "f" * 16,
            "config": {"train_languages": ["en", "es"], "extra_train_speakers": list(extra)},
            "splits": {"train": {"speakers": speakers + list(extra), "tts_voices": tts}}}


def _every_extended_training_voice(extra: tuple[str, ...]) -> dict:
    """The worst case of the extended recipe: every TTS voice with every espeak-ng variant."""
    from slimtrain.tasks.spoof.attacks import ESPEAK_VARIANTS_EXTENDED
    from slimtrain.tasks.vad.extended import TTS_VOICES

    tts = [f"{e}/{v}" + (f"+{var}" if var and e == "espeak-ng" else "")
           for e, v, _ in TTS_VOICES for var in (ESPEAK_VARIANTS_EXTENDED if e == "espeak-ng" else ("",))]
    return _manifest("extended", ["en_US_f_Allison", "es_MX_f_Allison"], tts, extra)


def test_no_unseen_voice_or_language_can_be_drawn_by_either_training_recipe():
    core = _manifest("core", ["en_US_f_Allison", "es_MX_f_Allison"], [])
    ext = _every_extended_training_voice(("es-co",))
    check_held_out([core, ext])  # no error
    tv = training_voices(ext)
    assert {"espeak-ng/de", "festival/hy_fi_mv_diphone", "flite/kal"} <= tv["tts"]  # parsed, variants stripped
    assert {"en", "es", "fr", "de", "fi", "cs", "ca"} <= tv["languages"] and "it" not in tv["languages"]
    voices = unseen_voices()
    assert {v["voice"] for v in voices} == {HELD_OUT_SPEAKER, *UNSEEN_FESTIVAL, *UNSEEN_ESPEAK}
    for v in voices:  # every language is unseen except the declared human hold-out's (French)
        assert (v["language"] in tv["languages"]) == bool(v.get("language_seen_in_training")), v
    # the default extended recipe trains on fr Armelle: refused, with the command that keeps her out
    with pytest.raises(DataError, match="human voice 'fr-armelle' is in the training split.*--extra-speakers es-co"):
        check_held_out([_every_extended_training_voice(("es-co", "fr-armelle"))])
    # an unseen espeak-ng voice (any variant) or language in training is refused too
    with pytest.raises(DataError, match="espeak-ng voice 'espeak-ng/lt' is in the training split"):
        check_held_out([_manifest("extended", [], ["espeak-ng/lt+m3"])])
    with pytest.raises(DataError, match="language 'it' is in the training split"):
        check_held_out([_manifest("extended", [], ["festival/czech_ph", "espeak-ng/it-x+f1"])])


def test_tiny_unseen_set_holds_out_every_voice_of_a_real_training_manifest(tmp_path):
    _needs("sox", "espeak-ng", "festival")
    train_man = json.loads(build_vad_data(VadDataConfig(
        corpus="extended", train_minutes=0.4, val_minutes=0.1, test_minutes=0.1, clip_seconds=2.0,
        max_files_per_language=5, tts_utterances=8, extra_train_speakers=("es-co",)), tmp_path / "train").read_text())
    check_held_out([train_man])
    cfg = UnseenConfig(human_utterances=3, festival_utterances=2, espeak_utterances=4)
    mpath = build_unseen_set(tmp_path / "unseen", cfg)
    split, groups, man = load_unseen_set(tmp_path / "unseen")
    assert man["clips_by_group"] == {g: groups.count(g) for g in ("human", "festival", "espeak-ng")}
    assert all(man["clips_by_group"].values()) and len(split.audio) == len(groups) == len(split.labels)
    assert split.labels.shape[1] == split.audio.shape[1] // 80 + 1 and 0.2 < split.labels.mean() < 0.95
    # each clip's utterances come from its group's voices only, and none from a training voice
    train_names = {n for clip in train_man["splits"]["train"]["clip_sources"] for n in clip}
    train_voices = {"/".join(n.split("/")[:3]).split("+")[0] if n.startswith("tts/") else n.split("/")[0]
                    for n in train_names}
    assert "es-co" in train_voices and HELD_OUT_SPEAKER not in train_voices
    for g, names in zip(groups, man["clip_sources"]):
        for n in names:
            voice = n.split("/")[0] if g == "human" else n.split("/")[2].split("+")[0]
            assert voice in {"human": {HELD_OUT_SPEAKER}, "festival": set(UNSEEN_FESTIVAL),
                             "espeak-ng": set(UNSEEN_ESPEAK)}[g], n
            assert ("/".join(n.split("/")[:3]).split("+")[0] if n.startswith("tts/") else voice) not in train_voices
    # reused when nothing changed
    before = mpath.stat().st_mtime_ns
    assert build_unseen_set(tmp_path / "unseen", cfg) == mpath and mpath.stat().st_mtime_ns == before


def test_eval_command_names_a_missing_corpus_or_source(tmp_path, capsys, monkeypatch):
    assert main(["vad", "eval", "--set", "unseen", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimtrain: error:") and f"no VAD data in {tmp_path / 'none'}" in err and "\n" not in err
    assert "slimtrain data vad --out" in err
    monkeypatch.setenv("SLIMTRAIN_DEB_DIR", str(tmp_path / "no-debs"))
    with pytest.raises(DataError, match="unseen VAD set: no fr-armelle prompts found.*asterisk-prompt-fr-armelle"):
        build_unseen_set(tmp_path / "u")
    assert main(["vad", "eval", "--set", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_eval_command_scores_the_shipped_model_next_to_silero(tmp_path, capsys):
    pytest.importorskip("silero_vad")
    from slimtrain import vad
    from slimtrain.tasks.metrics import roc_auc
    from slimtrain.tasks.vad.data import load_vad_data
    from slimtrain.tasks.vad.train import frame_scores

    data_dir = tmp_path / "data"
    build_vad_data(VadDataConfig.quick(test_minutes=0.5), data_dir)
    out = tmp_path / "rows.csv"
    assert main(["vad", "eval", "--set", "test", "--data", str(data_dir), "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1].startswith("model\tMFLOP/s\tAUC\tEER %\tF1")
    assert lines[2].startswith("shipped\t") and lines[3].startswith("Silero VAD (8 kHz)\t-\t")
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == ["shipped", "Silero VAD (8 kHz)"]
    data, man = load_vad_data(data_dir)
    expected = roc_auc(data["test"].labels.ravel(), frame_scores(vad.load().model, data["test"].audio).ravel())
    assert float(rows[0]["auc"]) == pytest.approx(expected, abs=1e-9)
    assert rows[0]["data_fingerprint"] == man["fingerprint"] and float(rows[0]["mflops_per_s"]) > 0
    assert all(0.5 < float(r["auc"]) <= 1 and 0 < float(r["f1"]) <= 1 for r in rows)
    assert all(0 < float(r["eer"]) < 0.5 for r in rows) and {"eer < 5 dB", "eer >= 25 dB"} <= set(rows[0])


@pytest.mark.parametrize("argv, message", [
    (["vad", "--widths", "conv9=3", "--data", "/nonexistent"], "--widths: unknown width(s) conv9 for family crnn"),
    (["vad", "--widths", "conv1=x"], "expected NAME=N[,NAME=N...] with N >= 1"),
    (["vad", "--sweep", "--widths", "conv1=32"], "--widths applies to a single run, not --sweep"),
    (["data", "vad", "--extra-speakers", "xx"], "unknown extra speaker(s) xx; choose from es-co, fr-armelle"),
    (["data", "vad", "--extra-speakers", "es-co", "--out", "/nonexistent/x"],
     "--extra-speakers only applies with --corpus extended"),
])
def test_new_options_reject_bad_input_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err.split("error:")[-1]


@pytest.mark.parametrize("manifest, file, what, flag", [
    ("unseen_manifest.json", "unseen.npz", "unseen VAD set", "--set unseen"),
    ("unseen_human_manifest.json", "unseen_human.npz", "unseen-human set", "--set unseen-human"),
])
def test_a_missing_or_damaged_held_out_set_is_named_with_its_build_flag(tmp_path, manifest, file, what, flag):
    from slimtrain.tasks.vad.data import DataError
    from slimtrain.tasks.vad.unseen import load_clip_set

    with pytest.raises(DataError, match=f"no {what} in .*{manifest} missing.*'slimtrain vad eval {flag} --unseen"):
        load_clip_set(tmp_path, manifest, file, what, flag)
    (tmp_path / manifest).write_text("{}")
    (tmp_path / file).write_bytes(b"not an npz")
    with pytest.raises(DataError, match=f"{what} in .* is damaged .*rebuild it with --force"):
        load_clip_set(tmp_path, manifest, file, what, flag)
