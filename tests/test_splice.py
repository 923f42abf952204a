"""Splice attacks (A8, A9): made of bona fide samples, smoothing removes the join discontinuity, the
energy segmentation finds syllable-like units, and the unseen-attack protocol holds."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.tasks.spoof.data import SpoofDataConfig, plan_items
from slimtrain.tasks.spoof.splice import SpliceError, join_discontinuity, splice, syllable_units

SR = 8000


def _syllables(seed: int, n: int = 5) -> np.ndarray:
    """A voiced-speech-like test signal: ``n`` harmonic bursts (random f0, 120-220 ms) with short pauses."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        m = int(rng.integers(960, 1760))
        t = np.arange(m) / SR
        f0 = rng.uniform(90, 220)
        tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
        parts += [tone * np.hanning(m) * rng.uniform(0.2, 0.6), np.zeros(int(rng.integers(240, 640)))]
    return np.concatenate(parts) + 1e-4 * rng.standard_normal(sum(len(p) for p in parts))


def test_energy_segmentation_finds_one_unit_per_burst():
    x = _syllables(0, n=5)
    units = syllable_units(x)
    assert len(units) == 5
    assert all(b - a >= 480 for a, b in units) and all(b1 <= a2 for (_, b1), (a2, _) in zip(units, units[1:]))
    # two bursts touching (no pause) still split at the energy valley between them
    y = np.concatenate([_syllables(1, 1)[:1500], _syllables(2, 1)[:1500]])
    assert len(syllable_units(y)) == 2


def _windows(x: np.ndarray, w: int) -> set[bytes]:
    v = np.lib.stride_tricks.sliding_window_view(x, w)
    return {r.tobytes() for r in v}


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([0.0, 5.0, 10.0]), st.sampled_from([0.0, 30.0, 500.0]))
def test_every_sample_window_outside_the_crossfades_comes_from_a_source_recording(seed, smooth_ms, pause_ms):
    srcs = [_syllables(seed + k, n=4) for k in range(3)]
    r = splice(srcs, seed, seconds=0.8, smooth_ms=smooth_ms, max_pause_ms=pause_ms)
    ov = int(round(smooth_ms * SR / 1000))
    # provenance: consecutive units tile the output; outside a crossfade each is a verbatim copy
    starts = [o for _, _, _, o in r.provenance]
    assert starts[0] == 0 and starts == sorted(starts) and r.joins == starts[1:]
    ends = starts[1:] + [len(r.audio)]
    for (k, a, b, o), e in zip(r.provenance, ends):
        last = e == len(r.audio)
        head = ov if o > 0 else 0  # a unit after the first starts with the crossfade into it
        tail = 0 if last else ov  # and, unless last, ends with the crossfade into the next
        assert e - o == (b - a) - tail  # the next unit starts where this one's tail crossfade does
        np.testing.assert_array_equal(r.audio[o + head: o + (b - a) - tail], srcs[k][a + head: b - tail])
    # and independently of provenance: every 16-sample window clear of the joins is found in a source
    w = 16
    known = set().union(*(_windows(s, w) for s in srcs))
    blocked = np.zeros(len(r.audio), bool)
    for j in r.joins:
        blocked[max(0, j - w + 1): j + ov] = True
    pos = [i for i in range(len(r.audio) - w + 1) if not blocked[i: i + w].any()]
    assert pos and all(r.audio[i: i + w].tobytes() in known for i in pos)


def _speech_sources(n: int = 24) -> list[np.ndarray]:
    from slimtrain.tasks.audio import AudioError, asterisk_prompts, read_audio

    try:
        files = asterisk_prompts("en")[:n]
    except AudioError as e:
        pytest.skip(f"Asterisk prompts not installed: {e}")
    return [read_audio(f, SR)[0] for f in files]


def test_smoothing_removes_the_join_discontinuity_on_real_speech():
    xs = _speech_sources()
    rng = np.random.default_rng(0)
    hard, soft, base = [], [], []
    for i in range(8):
        srcs = [xs[int(j)] for j in rng.choice(len(xs), 4, replace=False)]
        h, s = splice(srcs, i), splice(srcs, i, smooth_ms=10.0)
        hard.append(join_discontinuity(h.audio, h.joins))
        soft.append(join_discontinuity(s.audio, s.joins))
        base.append(join_discontinuity(s.audio, rng.integers(100, len(s.audio) - 100, 20)))  # anywhere
    assert np.mean(hard) > 4 * np.mean(soft)  # butt joins: a spike in the waveform's curvature
    assert np.mean(soft) < 1.5 * np.mean(base)  # smoothed joins: like any other point of the speech


def _density(clip: np.ndarray) -> float:
    from slimtrain.tasks.spoof.data import cue_features

    return float(cue_features(clip)[3])


def test_pauses_make_a_splice_as_dense_as_the_speech_it_is_made_of():
    """Butt-joined units are speech from end to end; with the pauses after them (``max_pause_ms``) a splice's
    share of active frames, after the corpus' conditioning, is that of its source recordings."""
    from slimtrain.tasks.spoof.data import condition

    xs = _speech_sources()
    rng = np.random.default_rng(0)
    bona, dense, paused = [], [], []
    for i in range(12):
        srcs = [xs[int(j)] for j in rng.choice(len(xs), 4, replace=False)]
        bona.append(_density(condition(srcs[0], np.random.default_rng(i), SR)))
        dense.append(_density(condition(splice(srcs, i).audio, np.random.default_rng(i), SR)))
        p = splice(srcs, i, max_pause_ms=500.0)
        paused.append(_density(condition(p.audio, np.random.default_rng(i), SR)))
        # a pause is the source's own: the samples after a unit, never more than 500 ms of them
        assert all(b - a <= len(srcs[k]) for k, a, b, _ in p.provenance)
    assert np.median(dense) > np.median(bona) + 0.1
    assert abs(np.median(paused) - np.median(bona)) < 0.1


def test_splice_pause_after_a_unit_stops_at_the_next_unit_and_the_cap():
    x = _syllables(3, n=4)
    units = syllable_units(x)
    r = splice([x], 0, seconds=3.0, max_pause_ms=20.0)
    starts = {a: nxt for (a, _), nxt in zip(units, [a for a, _ in units[1:]] + [len(x)])}
    ends = dict(units)
    for _, a, b, _ in r.provenance:
        assert b == max(ends[a], min(starts[a], ends[a] + 160))  # 20 ms at 8 kHz, never into the next unit


def test_bad_splice_input_is_named():
    with pytest.raises(SpliceError, match="at least one source"):
        splice([], 0)
    with pytest.raises(SpliceError, match="no syllable-like unit"):
        splice([np.zeros(100)], 0)
    with pytest.raises(SpliceError, match="smooth_ms"):
        splice([_syllables(0)], 0, smooth_ms=-1)
    with pytest.raises(SpliceError, match="max_pause_ms"):
        splice([_syllables(0)], 0, max_pause_ms=-5)


def test_splices_like_their_source_touch_only_the_splices_of_the_chosen_splits():
    from slimtrain.tasks.spoof.data import DataError

    base, _ = plan_items(SpoofDataConfig.quick())
    for mode, splits in (("train", {"train"}), ("all", {"train", "eval"})):
        cfg = SpoofDataConfig.quick(splice_like_source=mode)
        assert cfg.as_dict()["splice_like_source"] == mode
        items, _ = plan_items(cfg)
        assert [(i.split, i.attack, i.prompt) for i in items] == [(i.split, i.attack, i.prompt) for i in base]
        for i, b in zip(items, base):
            paused = i.attack in ("A8", "A9") and i.split in splits
            assert i.params == ({**b.params, "like_source": True} if paused else b.params)
    assert "splice_like_source" not in SpoofDataConfig.quick().as_dict()  # documented corpora keep their config
    with pytest.raises(DataError, match="splice-like-source must be one of none, train, all, got 'some'"):
        SpoofDataConfig(splice_like_source="some").validate()


def test_smoothed_splice_is_unseen_and_splices_never_cross_the_split():
    cfg = SpoofDataConfig.quick()
    assert "A9" in cfg.unseen_attacks and "A8" in cfg.train_attacks and "A8" not in cfg.unseen_attacks
    items, _ = plan_items(cfg)
    train = [i for i in items if i.split == "train"]
    assert {i.attack for i in train} == {"bona", "A1", "A2", "A3", "A5", "A8"}
    assert {i.attack for i in items if i.split == "eval"} >= {"A8", "A9"}
    used = {sp: {(i.language, p) for i in items if i.split == sp for p in (i.prompt, *i.params.get("sources", ()))
                 if i.attack in ("bona", "A5", "A6", "A7", "A8", "A9")} for sp in ("train", "eval")}
    assert not used["train"] & used["eval"]  # no recording feeds both splits
    assert not any(lg == cfg.heldout_language for lg, _ in used["train"])
    for i in items:
        if i.attack in ("A8", "A9"):
            assert len(i.params["sources"]) == 3
    # adding splices left the other attacks' items as they were
    old, _ = plan_items(SpoofDataConfig.quick(train_attacks=("A1", "A2", "A3", "A5"),
                                              eval_attacks=("A1", "A2", "A3", "A4", "A5", "A6", "A7")))
    assert [(i.split, i.attack, i.prompt, i.params) for i in old] == \
        [(i.split, i.attack, i.prompt, i.params) for i in items if i.attack not in ("A8", "A9")]


def test_splices_like_their_source_lose_the_length_and_density_cues(tmp_path):
    """The plain splices fill the clip with speech (no silence around or inside them); built like their
    source they are as long and as dense as the bona fide clips, by the corpus' own cue features."""
    from slimtrain.tasks.audio import AudioError, asterisk_prompts
    from slimtrain.tasks.spoof.data import build_dataset, cue_features, load_split

    try:
        asterisk_prompts("en")
    except AudioError as e:
        pytest.skip(f"Asterisk prompts not installed: {e}")
    tiny = dict(n_bona_train=4, n_spoof_train_per_attack=4, n_bona_eval_heldout=12, n_bona_eval_known=12,
                n_spoof_eval_per_attack=24, train_attacks=("A8",), eval_attacks=("A8", "A9"))
    gap = {}
    for mode in ("none", "all"):
        build_dataset(tmp_path / mode, SpoofDataConfig(splice_like_source=mode, **tiny), workers=1, progress=False)
        ev = load_split(tmp_path / mode, "eval")
        f = np.stack([cue_features(a) for a in ev.audio])
        splices = np.isin(ev.attack, ["A8", "A9"])
        gap[mode] = f[splices].mean(0) - f[ev.label == 1].mean(0)  # duration, level, lead, density
    assert gap["none"][0] > 0.1 and gap["none"][3] > 0.1  # 1.6 s of speech without a pause
    assert abs(gap["all"][0]) < 0.1 and abs(gap["all"][3]) < 0.1
