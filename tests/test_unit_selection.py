"""A11, unit selection: the Russian text source, Festival's clunits voice reading Cyrillic, the opt-in family."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimtrain.tasks.spoof import attacks as A
from slimtrain.tasks.spoof import unit_selection as U
from slimtrain.tasks.spoof.data import SR, DataError, SpoofDataConfig, plan_items

from _spoof_fixtures import programs_missing

needs_tts = pytest.mark.skipif(bool(programs_missing()), reason="speech synthesisers not installed")

_LOCALE = """; Перевод сообщений на русский
; Weapon names
00:00=Граната
02:00=%1 увидел свет в конце тоннеля!
02:00=%1 покидает мирскую суету!
02:01=%1
06:19=/hya <text>: Отобразить текст в пузыре крика
04:39=Летай в другие части карты.|Атака: Запуск/выключение тарелки
broken line without a key
"""


@given(st.text(max_size=400))
def test_clean_text_keeps_only_words_and_sentence_punctuation(text):
    t = U.clean_text(text)
    assert not re.search(r"[%<>|/\"()\\]", t)
    assert len(t.split()) <= U.MAX_WORDS
    assert t == " ".join(t.split())  # single spaces, no edges
    # every word is letters (a hyphen inside allowed) with sentence punctuation around them: no abbreviation
    # or elision with a period inside, which stops the Russian letter-to-sound rules
    assert all(w.strip(".,;:?!'-").replace("-", "").isalpha() for w in t.split())


@pytest.mark.parametrize("text, clean", [
    ("Но будь осторожен, т.к. оно воскресит", "Но будь осторожен, оно воскресит"),
    ("%1 герой среди лю...гм...ёжиков", "герой среди"),
    ("Hedgewars от команды Hedgewars.org", "Hedgewars от команды"),
    ("где-нибудь с пользой!", "где-нибудь с пользой!"),
])
def test_clean_text_drops_what_the_front_end_cannot_read(text, clean):
    assert U.clean_text(text) == clean


def test_russian_texts_key_every_line_drop_placeholders_and_labels(tmp_path):
    f = tmp_path / U.TEXT_PACKAGE / U.TEXT_FILE
    f.parent.mkdir(parents=True)
    f.write_text(_LOCALE, encoding="utf-8")
    t = U.russian_texts(tmp_path)
    # a key repeated in the file (the game picks one of its lines) keeps every line; single words are labels
    assert t == {"02:00#0": "увидел свет в конце тоннеля!", "02:00#1": "покидает мирскую суету!",
                 "06:19#0": "Отобразить текст в пузыре крика",
                 "04:39#0": "Летай в другие части карты. Атака: Запуск выключение тарелки"}


def test_missing_text_source_names_the_package(tmp_path):
    with pytest.raises(U.UnitSelectionError, match="hedgewars-data"):
        U.russian_texts(tmp_path)


def test_only_utf8_voices_keep_their_script():
    assert A._scheme_string("Приготовься пошуметь!", fold=False) == '"Приготовься пошуметь!"'
    assert A._scheme_string("Приготовься пошуметь!") == '"!"'  # what the ASCII fold would leave of it
    assert U.VOICE in A.FESTIVAL_UTF8_VOICES and A.festival_package(U.VOICE) == U.VOICE_PACKAGE


@needs_tts
def test_the_unit_selection_voice_reads_cyrillic_text_as_speech():
    short, long_ = A.festival_batch(["Ничья", "Победитель получает все, проигравший остаётся ни с чем"], U.VOICE)
    assert short.dtype == np.float32 and np.sqrt(np.mean(long_ ** 2)) > 1e-3
    # it read the words (a folded text would be one letter): more words, more speech
    assert len(long_) > 1.0 * SR and len(long_) > 2 * len(short)
    np.testing.assert_array_equal(long_, A.festival_batch(["Победитель получает все, проигравший остаётся ни с "
                                                           "чем"], U.VOICE)[0])


@needs_tts
def test_the_voice_reads_every_text_of_the_source():
    texts = U.russian_texts()
    outs = A.festival_batch(list(texts.values()), U.VOICE)  # (an unreadable text is an AttackError naming it)
    assert len(outs) == len(texts) > 600
    assert min(len(y) for y in outs) > 0.3 * SR


@needs_tts
def test_a11_is_opt_in_and_leaves_every_other_clip_of_the_plan_as_it_was():
    base, _ = plan_items(SpoofDataConfig.quick())
    cfg = SpoofDataConfig.quick(eval_attacks=(*SpoofDataConfig().eval_attacks, "A11"))
    items, _ = plan_items(cfg)
    assert "A11" not in {it.attack for it in base} and "A11" in cfg.unseen_attacks
    assert [(it.split, it.attack, it.language, it.prompt, it.text, it.voice, it.params) for it in items[:len(base)]] \
        == [(it.split, it.attack, it.language, it.prompt, it.text, it.voice, it.params) for it in base]
    a11 = items[len(base):]
    assert len(a11) == cfg.n_spoof_eval_per_attack and {(it.split, it.attack, it.voice) for it in a11} \
        == {("eval", "A11", U.VOICE)}
    # its texts: the evaluation half of the Russian messages, disjoint from the training half
    train_cfg = SpoofDataConfig.quick(train_attacks=("A1", "A11"))
    train_keys = {it.prompt for it in plan_items(train_cfg)[0] if it.attack == "A11" and it.split == "train"}
    assert train_keys and not train_keys & {it.prompt for it in a11}
    texts = U.russian_texts()
    assert all(texts[it.prompt] == it.text for it in a11)


def test_a11_without_its_texts_is_a_named_data_error(monkeypatch, tmp_path):
    monkeypatch.setattr(U, "text_file", lambda root=None: tmp_path / "missing" / "ru.txt")
    with pytest.raises(DataError, match="hedgewars-data"):
        plan_items(SpoofDataConfig.quick(eval_attacks=("A1", "A11")))


def test_eval_attacks_option_builds_a11_as_an_unseen_family_and_names_a_bad_one(tmp_path, capsys):
    import json

    from slimtrain.cli import main
    from slimtrain.tasks.spoof.data import load_split

    assert main(["data", "spoof", "--eval-attacks", "A1,A12", "--out", str(tmp_path)]) == 2
    assert "unknown attack 'A12'" in capsys.readouterr().err
    if programs_missing():
        pytest.skip("speech synthesisers not installed")
    out = tmp_path / "d"
    assert main(["data", "spoof", "--quick", "--eval-attacks", "A1,A4,A11", "--out", str(out), "--no-progress"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["counts"]["eval"]["A11"] == SpoofDataConfig.quick().n_spoof_eval_per_attack
    assert "A11" in man["unseen_attacks"] and "A11" not in man["counts"]["train"]
    us = man["unit_selection"]
    assert us["voice"] == U.VOICE and us["package"] == U.VOICE_PACKAGE and us["texts_per_split"]["eval"] > 50
    ev = load_split(out, "eval")
    a11 = ev.audio[ev.attack == "A11"].astype(np.float64) / 32768
    # conditioned like every clip: speech at the common level, not silence
    assert np.all(10 * np.log10(np.mean(a11 ** 2, axis=1)) > -40)
