"""Recorded human voices in the anti-spoofing corpus (``SpoofDataConfig.human_voices`` / ``human_heldout``):
the added clips, the untouched rest, the held-out speakers' EERs and the named errors."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from _spoof_fixtures import programs_missing
from slimtrain.cli import main
from slimtrain.tasks import human_voices as H
from slimtrain.tasks.spoof.data import DataError, SpoofDataConfig, SpoofSplit, build_dataset, load_split, plan_items
from slimtrain.tasks.spoof.train import eer_report

TRAIN_IDS = ("klettres-de", "fillets-cs")  # one speaker and two speakers
HELD_IDS = ("klettres-he", "klettres-lt")


def _needs(ids=TRAIN_IDS + HELD_IDS) -> None:
    missing = programs_missing()
    if missing:
        pytest.skip(f"speech synthesisers not installed: {missing}")
    for sid in ids:
        try:
            H.source_files(H.source(sid))
        except H.HumanVoiceError as e:
            pytest.skip(str(e))


def _cfg(**kw) -> SpoofDataConfig:
    return SpoofDataConfig.quick(human_voices=TRAIN_IDS, human_heldout=HELD_IDS, human_files_per_source=6, **kw)


def test_configs_without_human_voices_are_unchanged():
    d = SpoofDataConfig().as_dict()
    assert not any(k.startswith("human") for k in d)
    assert set(SpoofDataConfig(corpus="extended").as_dict()) == set(d) | {"corpus"}
    assert _cfg().as_dict()["human_voices"] == list(TRAIN_IDS)


@pytest.mark.parametrize("kw, message", [
    (dict(human_voices=("klettres-he",)), r"source 'klettres-he' has role 'held-out'.*use a 'train' source"),
    (dict(human_heldout=("klettres-de",)), r"source 'klettres-de' has role 'train'.*use a 'held-out' source"),
    (dict(human_voices=("asterisk-en",)), "an Asterisk voice of the corpus already"),
    (dict(human_voices=("klettres-de", "klettres-de")), "must be distinct source ids"),
    (dict(human_voices=("nope",)), "unknown human-voice source 'nope'"),
    (dict(human_voices=("klettres-de",), human_files_per_source=1), "human-files-per-source must be an integer >= 2"),
])
def test_bad_human_settings_are_named(kw, message):
    with pytest.raises(DataError, match=message):
        SpoofDataConfig(**kw).validate()


def test_plan_adds_human_clips_on_their_own_stream_and_keeps_held_out_voices_out_of_training():
    _needs()
    base, _ = plan_items(SpoofDataConfig.quick())
    items, files = plan_items(_cfg())
    core = [it for it in items if it.language not in TRAIN_IDS + HELD_IDS]
    assert [(i.split, i.attack, i.language, i.prompt, i.params) for i in core] == \
           [(i.split, i.attack, i.language, i.prompt, i.params) for i in base]
    human = [it for it in items if it.language in TRAIN_IDS + HELD_IDS]
    q = SpoofDataConfig.quick()
    train_bona = [it for it in human if it.split == "train" and it.attack == "bona"]
    assert len(train_bona) == q.n_bona_train and {it.language for it in train_bona} <= set(TRAIN_IDS)
    eval_h = [it for it in human if it.split == "eval"]
    assert {it.language for it in eval_h} <= set(HELD_IDS)
    assert sum(it.attack == "bona" for it in eval_h) == q.n_bona_eval_heldout
    assert not any(it.language in HELD_IDS for it in items if it.split == "train")
    # copy and splice attacks only (the recordings have no transcripts), half the per-attack count each
    kinds = {it.attack for it in human if it.label == 0}
    assert kinds == {"A5", "A8", "A6", "A7", "A9"}
    assert sum(it.attack == "A8" and it.split == "train" for it in human) == q.n_spoof_train_per_attack // 2
    # splice sources come from the same speaker's files
    for it in human:
        if it.attack in ("A8", "A9"):
            assert all(f"{it.language}:{p}" in files for p in it.params["sources"])
    # draws are per speaker: fillets-cs (2 speakers) gets about twice klettres-de's share
    many, _ = plan_items(SpoofDataConfig(human_voices=TRAIN_IDS, human_files_per_source=6))
    n = {sid: sum(it.language == sid and it.attack == "bona" for it in many) for sid in TRAIN_IDS}
    assert 1.6 < n["fillets-cs"] / n["klettres-de"] < 2.5, n


def test_built_corpus_keeps_core_clips_byte_identical_and_records_the_voices(tmp_path):
    _needs()
    small = dict(n_bona_train=4, n_spoof_train_per_attack=2, n_bona_eval_heldout=4, n_bona_eval_known=1,
                 n_spoof_eval_per_attack=2)
    base = build_dataset(tmp_path / "core", SpoofDataConfig(**small), workers=2, progress=False)
    man = build_dataset(tmp_path / "hv", SpoofDataConfig(human_voices=TRAIN_IDS, human_heldout=HELD_IDS,
                                                         human_files_per_source=4, **small), workers=2, progress=False)
    assert base["counts"]["train"]["bona"] == 4 and man["counts"]["train"]["bona"] == 8
    for split in ("train", "eval"):
        a, b = load_split(tmp_path / "core", split), load_split(tmp_path / "hv", split)
        keep = ~np.isin(b.language, TRAIN_IDS + HELD_IDS)
        np.testing.assert_array_equal(a.audio, b.audio[keep])
        np.testing.assert_array_equal(a.attack, b.attack[keep])
    hv = man["human_voices"]
    assert [r["id"] for r in hv["sources"]] == list(TRAIN_IDS + HELD_IDS)
    assert hv["totals"]["train"]["speakers"] == 3 and hv["totals"]["held-out"]["languages"] == ["he", "lt"]
    assert all(r["version"] for r in hv["sources"])
    ev = load_split(tmp_path / "hv", "eval")
    assert ev.heldout.sum() == 4 + 4  # fr_CA June and the held-out human voices, bona fide only
    assert set(ev.language[ev.heldout]) <= {"fr", *HELD_IDS} and (ev.label[ev.heldout] == 1).all()
    # training commands read the folder as it is (a default config would not rebuild it over the voices)
    again = build_dataset(tmp_path / "hv", SpoofDataConfig(), progress=False)
    assert again == man


def test_heldout_eers_use_only_the_held_out_speakers_bona_fide_clips():
    lab = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    att = np.array(["bona"] * 4 + ["A1", "A1", "A8", "A8"])
    held = np.array([False, False, True, True, False, False, False, False])
    # known speakers score high; the held-out ones sit between A1 (low) and A8 (high)
    scores = np.array([9.0, 8.0, 1.0, 1.5, -5.0, -4.0, 3.0, 2.0])
    split = SpoofSplit(np.zeros((8, 4), np.int16), lab, att, np.array(["en"] * 8), held)
    r = eer_report(split, scores, unseen=("A8",))
    assert r["A1"] == 0.0 and r["heldout_A1"] == 0.0
    assert r["A8"] == 50.0 and r["heldout_A8"] == 100.0  # every splice outscores every held-out clip
    assert r["heldout"] == 50.0
    no = eer_report(SpoofSplit(split.audio, lab, att, split.language), scores, unseen=("A8",))
    assert not any(k.startswith("heldout") for k in no)


def test_data_command_options(tmp_path, capsys):
    assert main(["data", "spoof", "--human-voices", "klettres-xx", "--out", str(tmp_path)]) == 2
    assert "unknown human-voice source(s) klettres-xx" in capsys.readouterr().err
    assert main(["data", "spoof", "--quick", "--human-files", "3", "--out", str(tmp_path / "d")]) == 2
    assert "--human-files only applies with --human-voices" in capsys.readouterr().err
    assert main(["data", "spoof", "--quick", "--train-attacks", "A1,A99", "--out", str(tmp_path / "d")]) == 2
    assert "unknown attack 'A99'; choose from A1, A2" in capsys.readouterr().err
    assert main(["data", "spoof", "--quick", "--train-codecs", "1.5", "--out", str(tmp_path / "d")]) == 2
    assert "must be a fraction in [0, 1], got '1.5'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    _needs()
    assert main(["data", "spoof", "--quick", "--human-voices", ",".join(TRAIN_IDS), "--human-files", "3",
                 "--out", str(tmp_path / "h"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "human voices, train: 2 sources, 3 speakers" in out
    # --human-heldout defaults to every held-out source with --human-voices
    conf = json.loads((tmp_path / "h" / "manifest.json").read_text())["config"]
    assert conf["human_heldout"] == [s.id for s in H.sources("held-out", addable=True, collection="core")]


# -- distillation while shrinking (train_run(teacher=...), slimtrain spoof --teacher) ----------------------------
from _spoof_fixtures import spoof_data  # noqa: E402,F401  (fixture)


class _Confident(torch.nn.Module):
    """A 'teacher' that calls every clip bona fide with logit +8 (any model of the task may teach)."""

    def forward(self, x):
        return torch.full((x.shape[0],), 8.0)


def _mean_eval_logit(ckpt, test) -> float:
    from slimtrain.train.checkpoint import load_for_inference
    from slimtrain.tasks.spoof.train import score_model

    return float(np.mean(score_model(load_for_inference(ckpt, "spoof")[0], test.waveforms())))


def test_the_teacher_pulls_the_shrinking_model_toward_its_outputs(tmp_path, spoof_data):  # noqa: F811
    from slimtrain.tasks.spoof.train import SpoofConfig, train_run

    _, man, train, test = spoof_data
    cfg = SpoofConfig.quick(epochs=2, seed=0)
    kw = dict(stages=(0, 1, 2, 3), kappa_min=0.5, floor=True, progress=False)
    plain = train_run(cfg, train, test, man["unseen_attacks"], checkpoint=tmp_path / "a.ckpt", **kw)
    taught = train_run(cfg, train, test, man["unseen_attacks"], checkpoint=tmp_path / "b.ckpt", teacher=_Confident(),
                       distill_weight=20.0, **kw)
    assert plain["distill_weight"] == 0.0 and taught["distill_weight"] == 20.0
    a, b = _mean_eval_logit(tmp_path / "a.ckpt", test), _mean_eval_logit(tmp_path / "b.ckpt", test)
    assert b > a + 2.0, (a, b)  # half the clips are spoofs: only the teacher's term pushes every logit up


def test_init_from_teacher_starts_from_its_weights_and_bad_teachers_are_named(tmp_path, spoof_data):  # noqa: F811
    from slimtrain.apps.spoof.models import build_resnet
    from slimtrain.tasks.spoof.train import SpoofConfig, model_kwargs, train_run

    _, man, train, test = spoof_data
    cfg = SpoofConfig.quick(epochs=2, seed=0, lr=1e-12, width_lr=1e-12)  # training moves nothing
    teacher = build_resnet(**{**model_kwargs(cfg), "blocks": tuple(cfg.blocks)})
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    row = train_run(cfg, train, test, man["unseen_attacks"], teacher=teacher, init_from_teacher=True, progress=False,
                    checkpoint=tmp_path / "s.ckpt")
    assert row["init_from_teacher"] is True
    from slimtrain.train.checkpoint import load_for_inference

    student = dict(load_for_inference(tmp_path / "s.ckpt", "spoof")[0].named_parameters())
    for name, p in teacher.named_parameters():  # (BatchNorm's running statistics do move with the batches)
        torch.testing.assert_close(student[name], p, atol=1e-6, rtol=0)
    other = build_resnet(**{**model_kwargs(cfg, width=4), "blocks": tuple(cfg.blocks)})
    with pytest.raises(ValueError, match="init_from_teacher: the teacher is not a model of this family and width"):
        train_run(cfg, train, test, man["unseen_attacks"], teacher=other, init_from_teacher=True, progress=False)
    with pytest.raises(ValueError, match="init_from_teacher needs a teacher"):
        train_run(cfg, train, test, man["unseen_attacks"], init_from_teacher=True, progress=False)
    with pytest.raises(ValueError, match=r"the teacher gives outputs of shape \(8, 2\)"):
        train_run(cfg, train, test, man["unseen_attacks"], teacher=lambda x: torch.zeros(x.shape[0], 2), progress=False)
    with pytest.raises(ValueError, match=r"temperature must be > 0 \(and finite\), got 0"):
        train_run(cfg, train, test, man["unseen_attacks"], teacher=_Confident(), distill_temperature=0, progress=False)


def test_spoof_command_teacher_options(tmp_path, capsys, spoof_data):  # noqa: F811
    data = spoof_data[0]
    base = ["spoof", "--quick", "--data", str(data), "--epochs", "2", "--no-progress"]
    assert main([*base, "--plain", "--out", str(tmp_path / "t")]) == 0
    assert main([*base, "--stages", "0,1,2,3", "--kappa-min", "0.5", "--teacher", str(tmp_path / "t" / "model.ckpt"),
                 "--init-from-teacher", "--distill-weight", "0.5", "--out", str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "s" / "result.json").read_text())["result"]
    assert res["distill_weight"] == 0.5 and res["init_from_teacher"] is True
    capsys.readouterr()
    assert main([*base, "--init-from-teacher", "--out", str(tmp_path / "x")]) == 2
    assert "--init-from-teacher needs --teacher" in capsys.readouterr().err
    assert main([*base, "--sweep", "--teacher", str(tmp_path / "t" / "model.ckpt"), "--out", str(tmp_path / "y")]) == 2
    assert "--teacher apply to single runs" in capsys.readouterr().err
    assert main([*base, "--teacher", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "z")]) == 2
    assert "model file not found" in capsys.readouterr().err


# -- codecs on the training clips (--train-codecs) --------------------------------------------------------------
@pytest.mark.parametrize("codec", ["vorbis", "opus", "mulaw", "alaw", "gsm"])
def test_codec_roundtrips_keep_length_and_most_of_the_signal(codec):
    import shutil

    from slimtrain.tasks.augment import codec_roundtrip

    if codec == "gsm" and shutil.which("sox") is None:
        pytest.skip("sox not installed")
    t = np.arange(8000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    y = codec_roundtrip(x, 8000, codec, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.corrcoef(x[400:-400], y[400:-400])[0, 1] > 0.9
    assert not np.array_equal(x, y)  # a lossy codec changes the samples


def test_bad_codec_settings_are_named():
    from slimtrain.tasks.augment import AugmentError, codec_roundtrip, ogg_roundtrip

    with pytest.raises(AugmentError, match="unknown codec 'mp3'"):
        codec_roundtrip(np.zeros(10, np.float32), 8000, "mp3")
    with pytest.raises(AugmentError, match="Opus runs at 8, 12, 16, 24 or 48 kHz, not 11025 Hz"):
        ogg_roundtrip(np.zeros(10, np.float32), 11025, "opus")
    with pytest.raises(DataError, match=r"train-codec-fraction must be a number in \[0, 1\], got 1.5"):
        SpoofDataConfig(train_codec_fraction=1.5).validate()
    assert "train_codec_fraction" not in SpoofDataConfig().as_dict()


def test_training_codecs_change_only_training_clips_and_are_counted(tmp_path):
    if programs_missing():
        pytest.skip("speech synthesisers not installed")
    small = dict(n_bona_train=6, n_spoof_train_per_attack=2, n_bona_eval_heldout=2, n_bona_eval_known=1,
                 n_spoof_eval_per_attack=1)
    build_dataset(tmp_path / "a", SpoofDataConfig(**small), workers=2, progress=False)
    man = build_dataset(tmp_path / "b", SpoofDataConfig(train_codec_fraction=1.0, **small), workers=2, progress=False)
    a, b = load_split(tmp_path / "a", "eval"), load_split(tmp_path / "b", "eval")
    np.testing.assert_array_equal(a.audio, b.audio)  # evaluation clips untouched
    ta, tb = load_split(tmp_path / "a", "train"), load_split(tmp_path / "b", "train")
    assert all(not np.array_equal(x, y) for x, y in zip(ta.audio, tb.audio))  # every training clip coded
    counts = man["train_codecs"]
    assert sum(c["bona"] for c in counts.values()) == 6 and sum(c["spoof"] for c in counts.values()) == 10
    assert set(counts) <= {"mulaw", "alaw", "gsm", "vorbis", "opus"}
    # a default config reads the folder as it is instead of rebuilding over it
    assert build_dataset(tmp_path / "b", SpoofDataConfig(), progress=False) == man


# -- A10, the harmonic-plus-noise vocoder -------------------------------------------------------------------------
def test_hnm_vocoder_is_deterministic_keeps_level_and_discards_the_phase():
    from slimtrain.tasks.spoof.attacks import hnm_copy

    sr, t = 8000, np.arange(8000) / 8000
    f0 = 120 + 30 * t  # a gliding voiced sound with a few formant-like harmonics, then silence
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 20)) * 0.1
    x = np.concatenate([x, np.zeros(2000)]).astype(np.float32)
    a, b, c = hnm_copy(x, seed=1), hnm_copy(x, seed=1), hnm_copy(x, seed=2)
    assert a.shape == x.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    rms = lambda v: float(np.sqrt(np.mean(v ** 2)))  # noqa: E731
    assert 0.7 < rms(a[:8000]) / rms(x[:8000]) < 1.3  # frame energies follow the recording
    assert rms(a[8400:]) < 1e-3  # silence stays silent
    assert abs(np.corrcoef(x[:8000], a[:8000])[0, 1]) < 0.5  # the waveform (its phase) is not copied


def test_a_family_added_to_training_leaves_every_other_clip_as_it_was():
    _needs()
    base, _ = plan_items(_cfg())
    more, _ = plan_items(_cfg(train_attacks=("A1", "A2", "A3", "A5", "A8", "A10")))
    key = lambda it: (it.split, it.attack, it.language, it.prompt, json.dumps(it.params, sort_keys=True))  # noqa: E731
    assert [key(i) for i in more[:len(base)]] == [key(i) for i in base]  # same clips at the same indices
    q = SpoofDataConfig.quick()
    assert sum(i.attack == "A10" for i in more) == q.n_spoof_train_per_attack + q.n_spoof_train_per_attack // 2


# -- train_scale: more draws of the training split ------------------------------------------------------------------
def test_train_scale_adds_new_training_draws_and_leaves_the_plan_as_it_was():
    _needs()
    base, _ = plan_items(_cfg())
    more, _ = plan_items(_cfg(train_scale=3))
    key = lambda it: (it.split, it.attack, it.language, it.prompt, it.voice, json.dumps(it.params, sort_keys=True))  # noqa: E731
    assert [key(i) for i in more[:len(base)]] == [key(i) for i in base]  # same clips at the same indices
    extra = more[len(base):]
    assert {i.split for i in extra} == {"train"}
    count = lambda items: {a: sum(i.attack == a for i in items) for a in {i.attack for i in items}}  # noqa: E731
    train = [i for i in base if i.split == "train"]
    assert count(extra) == {a: 2 * n for a, n in count(train).items()}  # two more draws of every family
    assert len({key(i) for i in extra} - {key(i) for i in train}) > len(extra) // 2  # new clips, not copies
    # the extra draws respect the prompt split and the held-out speakers: nothing of evaluation in training
    ev = {(i.language, p) for i in base if i.split == "eval" for p in (i.prompt, *i.params.get("sources", ()))}
    tr = {(i.language, p) for i in more if i.split == "train" for p in (i.prompt, *i.params.get("sources", ()))}
    assert not ev & tr
    assert not {i.language for i in extra} & (set(HELD_IDS) | {"fr"})


def test_train_scale_keeps_the_evaluation_split_and_first_draw_byte_identical(tmp_path):
    if programs_missing():
        pytest.skip("speech synthesisers not installed")
    small = dict(n_bona_train=4, n_spoof_train_per_attack=2, n_bona_eval_heldout=2, n_bona_eval_known=1,
                 n_spoof_eval_per_attack=2, train_attacks=("A1", "A8"), eval_attacks=("A1", "A8", "A9"))
    build_dataset(tmp_path / "a", SpoofDataConfig(**small), workers=2, progress=False)
    man = build_dataset(tmp_path / "b", SpoofDataConfig(train_scale=2, **small), workers=2, progress=False)
    assert man["counts"]["train"] == {"bona": 8, "A1": 4, "A8": 4} and man["config"]["train_scale"] == 2
    assert (tmp_path / "a" / "eval.npz").read_bytes() == (tmp_path / "b" / "eval.npz").read_bytes()
    ta, tb = load_split(tmp_path / "a", "train"), load_split(tmp_path / "b", "train")
    np.testing.assert_array_equal(tb.audio[:len(ta)], ta.audio)
    assert not any(np.array_equal(x, y) for x in tb.audio[len(ta):] for y in ta.audio)
    assert "train_scale" not in SpoofDataConfig().as_dict()  # configs without it (and their caches) unchanged


@pytest.mark.parametrize("bad", [0, 65, 1.5, True])
def test_bad_train_scale_is_named(bad):
    with pytest.raises(DataError, match=r"train-scale must be an integer in \[1, 64\]"):
        SpoofDataConfig(train_scale=bad).validate()


def test_train_scale_option_reaches_the_corpus_and_refuses_zero(tmp_path, capsys):
    assert main(["data", "spoof", "--train-scale", "0", "--out", str(tmp_path)]) == 2
    assert "train scale must be >= 1, got 0" in capsys.readouterr().err
    if programs_missing():
        pytest.skip("speech synthesisers not installed")
    assert main(["data", "spoof", "--quick", "--train-scale", "2", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    q = SpoofDataConfig.quick()
    assert man["config"]["train_scale"] == 2 and man["counts"]["train"]["bona"] == 2 * q.n_bona_train
