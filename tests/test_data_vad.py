"""slimtrain.data VAD side: readers (RTTM folder, one RTTM, CSV), every bad-input case (named error and
the skip_bad path), crop dataset labels and shapes, DataLoader workers, the noise mixer."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings, strategies as st

from slimtrain.audio.data import (IGNORE, CorpusError, EmptyAudioError, MissingAudioError, NoiseMixer, SkipReport,
                            UnreadableAudioError, VadCropDataset, frame_labels_from_segments, merge_segments,
                            read_vad_corpus)
from slimtrain.audio.data.fixtures import make_rttm_folder

SR = 16000


def _wav(path, seconds=2.0, sr=SR, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (0.05 * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32)
    sf.write(str(path), x if channels > 1 else x[:, 0], sr, subtype="PCM_16")
    return path


def _rttm(path, *segs, uri=None):
    uri = uri or path.stem
    path.write_text("".join(f"SPEAKER {uri} 1 {a} {d} <NA> <NA> s <NA> <NA>\n" for a, d in segs))
    return path


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    _wav(d / "a.wav")
    _rttm(d / "a.rttm", (0.5, 0.5), (0.8, 0.4), (1.5, 0.2))
    _wav(d / "b.flac", 1.0, sr=8000)
    (d / "b.rttm").write_text("")
    return d


# -- readers ----------------------------------------------------------------------------------------
def test_folder_layout_merges_segments_and_reads_empty_rttm_as_no_speech(folder):
    c = read_vad_corpus(folder, sample_rate=SR)
    assert [r.path.name for r in c.recordings] == ["a.wav", "b.flac"]
    assert np.allclose(c.recordings[0].segments, [(0.5, 1.2), (1.5, 1.7)])
    assert c.recordings[1].segments == [] and c.recordings[1].info.sample_rate == 8000
    assert c.summary()["native_rates"] == [8000, 16000] and c.summary()["files"] == 2


def test_missing_rttm_names_the_audio_file(folder):
    _wav(folder / "c.wav")
    with pytest.raises(CorpusError, match=r"c\.wav: no RTTM beside the audio file \(expected c\.rttm"):
        read_vad_corpus(folder)
    r = SkipReport(skip_bad=True)
    c = read_vad_corpus(folder, report=r)
    assert len(c.recordings) == 2 and r.counts()["by_kind"] == {"rttm-missing": 1}


@pytest.mark.parametrize("line, kind, message", [
    ("SPEAKER a 1 0.5\n", "rttm-parse", "needs at least 5 fields"),
    ("SPEAKER a 1 zero 0.5 <NA> <NA> s <NA> <NA>\n", "rttm-parse", "onset 'zero' is not a number"),
    ("SPEAKR a 1 0.1 0.5 <NA> <NA> s <NA> <NA>\n", "rttm-parse", "unknown RTTM line type 'SPEAKR'"),
    ("SPEAKER a 1 0.5 -0.2 <NA> <NA> s <NA> <NA>\n", "rttm-negative", "negative duration -0.2"),
    ("SPEAKER a 1 1.5 0.6 <NA> <NA> s <NA> <NA>\n", "segment-past-end", r"ends past the end of .*a\.wav \(2\.000 s\)"),
])
def test_bad_rttm_lines_name_file_and_line_or_are_skipped(folder, line, kind, message):
    (folder / "a.rttm").write_text(";; a comment\nSPEAKER a 1 0.1 0.2 <NA> <NA> s <NA> <NA>\n" + line)
    with pytest.raises(CorpusError, match=rf"a\.rttm, line 3: .*{message}") as e:
        read_vad_corpus(folder)
    assert e.value.kind == kind and e.value.line == 3
    r = SkipReport(skip_bad=True)
    c = read_vad_corpus(folder, report=r)
    assert [x.path.name for x in c.recordings] == ["b.flac"]  # the whole recording is left out, not half its labels
    assert r.items[0].line == 3 and r.items[0].kind == kind


def test_segment_within_one_frame_past_the_end_is_accepted(folder):
    _rttm(folder / "a.rttm", (1.5, 0.509))
    assert np.allclose(read_vad_corpus(folder).recordings[0].segments, [(1.5, 2.009)])


@pytest.mark.parametrize("make, err", [
    (lambda p: p.write_bytes(b"RIFF not really"), UnreadableAudioError),
    (lambda p: sf.write(str(p), np.zeros(0, np.float32), SR), EmptyAudioError),
])
def test_unreadable_and_empty_audio_are_named(folder, make, err):
    make(folder / "bad.wav")
    _rttm(folder / "bad.rttm")
    with pytest.raises(err, match=r"bad\.wav: "):
        read_vad_corpus(folder)
    r = SkipReport(skip_bad=True)
    assert len(read_vad_corpus(folder, report=r).recordings) == 2 and r.items[0].path.endswith("bad.wav")


def test_mixed_sample_rates_error_only_without_resampling(folder):
    with pytest.raises(CorpusError, match=r"b\.flac: mixed sample rates: this file is 8000 Hz, .* 16000 Hz"):
        read_vad_corpus(folder, sample_rate=SR, resample=False)
    assert len(read_vad_corpus(folder, sample_rate=SR, resample=True).recordings) == 2


def test_one_rttm_for_a_folder(folder):
    (folder / "a.rttm").unlink()
    (folder / "b.rttm").unlink()
    _wav(folder / "sub" / "c.wav") if (folder / "sub").mkdir() is None else None
    whole = folder / "all.rttm"
    whole.write_text("SPEAKER a 1 0.5 0.5 <NA> <NA> x <NA> <NA>\nSPEAKER c 1 0.1 0.2 <NA> <NA> y <NA> <NA>\n")
    c = read_vad_corpus(whole)
    assert {r.path.name: np.round(r.segments, 6).tolist() for r in c.recordings} == {"a.wav": [[0.5, 1.0]], "b.flac": [], "c.wav": [[0.1, 0.3]]}
    assert c.unannotated == [str(folder / "b.flac")]
    whole.write_text(whole.read_text() + "SPEAKER zz 1 0.1 0.2 <NA> <NA> y <NA> <NA>\n")
    with pytest.raises(CorpusError, match=r"all\.rttm, line 3: recording 'zz' has no audio file"):
        read_vad_corpus(whole)


def test_csv_manifest_and_its_errors(folder):
    m = folder / "m.csv"
    m.write_text("path,start,end\na.wav,0.5,1.0\na.wav,0.9,1.2\nb.flac,,\n")
    c = read_vad_corpus(m)
    assert [np.round(r.segments, 6).tolist() for r in c.recordings] == [[[0.5, 1.2]], []]
    m.write_text("file,begin,stop\n")
    with pytest.raises(CorpusError, match=r"m\.csv, line 1: a VAD manifest starts with the header"):
        read_vad_corpus(m)
    m.write_text("path,start,end\na.wav,0.5,1.0\na.wav,1.0,0.5\n")
    with pytest.raises(CorpusError, match=r"m\.csv, line 3: negative duration"):
        read_vad_corpus(m)
    m.write_text("path,start,end\nnope.wav,0.1,0.2\n")
    with pytest.raises(MissingAudioError, match=r"nope\.wav: audio file not found"):
        read_vad_corpus(m)
    r = SkipReport(skip_bad=True)
    m.write_text("path,start,end\nnope.wav,0.1,0.2\na.wav,x,1\nb.flac,,\n")
    c = read_vad_corpus(m, report=r)
    assert [x.path.name for x in c.recordings] == ["b.flac"]
    assert sorted(i.kind for i in r.items) == ["audio-missing", "manifest-parse"]


def test_nothing_usable_and_unknown_layouts_are_named(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CorpusError, match="folder holds no audio files"):
        read_vad_corpus(tmp_path)
    with pytest.raises(CorpusError, match=r"x\.txt: unknown VAD data file type '\.txt'"):
        read_vad_corpus(tmp_path / "x.txt")
    with pytest.raises(CorpusError, match="VAD data not found"):
        read_vad_corpus(tmp_path / "missing")
    _wav(tmp_path / "only.wav")
    r = SkipReport(skip_bad=True)
    with pytest.raises(CorpusError, match=r"no usable recording \(1 skipped"):
        read_vad_corpus(tmp_path, report=r)


# -- labels and crops -------------------------------------------------------------------------------
segs_st = st.lists(st.tuples(st.floats(0, 5), st.floats(0.01, 1.0)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(segs=segs_st, offset=st.integers(0, 400), frames=st.integers(1, 300), rate=st.sampled_from([8000, 16000]))
def test_crop_labels_agree_with_the_segments(segs, offset, frames, rate):
    hop = rate // 100
    merged = merge_segments([(a, a + d) for a, d in segs])
    total = int(4 * rate)
    lab = frame_labels_from_segments(merged, offset * hop, frames, hop, rate, total)
    for t in range(frames):
        centre = offset * hop + t * hop
        want = IGNORE if centre >= total else float(any(a <= centre / rate < a + d for a, d in segs))
        assert lab[t] == want


def test_eval_crops_tile_each_file_and_match_the_whole_file_labels(tmp_path):
    paths = make_rttm_folder(tmp_path, 3, seconds=2.5, seed=3)
    c = read_vad_corpus(tmp_path, sample_rate=SR)
    ds = VadCropDataset(c, 1.0)
    assert len(ds) == 3 * 3
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (SR,) and y.shape == (SR // 160 + 1,)
    rec = c.recordings[2]
    whole = frame_labels_from_segments(rec.segments, 0, 40000 // 160 + 1, 160, SR, 40000)
    ys = [ds.item(i)[1] for i in range(6, 9)]
    got = np.concatenate([ys[0][:-1], ys[1][:-1], ys[2]])  # crops share their edge frame
    assert np.array_equal(got[:len(whole)], whole) and np.all(got[len(whole):] == IGNORE)
    xs = np.concatenate([ds.item(i)[0] for i in range(6, 9)])
    wav, _ = sf.read(str(paths[2]), dtype="float32")
    np.testing.assert_allclose(xs[:len(wav)], wav, atol=1e-6)
    assert np.all(xs[len(wav):] == 0)


def test_training_crops_move_by_whole_hops_and_stay_in_the_file(tmp_path):
    make_rttm_folder(tmp_path, 2, seconds=3.0, seed=4)
    ds = VadCropDataset(read_vad_corpus(tmp_path), 1.0, train=True, seed=7)
    starts = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        w = [ds.window(i) for i in range(len(ds))]
        assert all(o % 160 == 0 and 0 <= o <= 3 * SR - SR for _, o in w)
        starts.append(w)
    assert starts[0] != starts[1]
    ds.set_epoch(0)
    assert [ds.window(i) for i in range(len(ds))] == starts[0]


def test_dataloader_workers_give_the_same_items(tmp_path):
    make_rttm_folder(tmp_path, 2, seconds=2.0, seed=5, suffix=".ogg")
    ds = VadCropDataset(read_vad_corpus(tmp_path, sample_rate=8000), 1.0)
    one = [b for b in torch.utils.data.DataLoader(ds, batch_size=2)]
    two = [b for b in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    for (x1, y1), (x2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_multichannel_44k_file_is_read_mono_at_the_target_rate(tmp_path):
    _wav(tmp_path / "s.wav", 1.0, sr=44100, channels=2)
    _rttm(tmp_path / "s.rttm", (0.1, 0.3))
    ds = VadCropDataset(read_vad_corpus(tmp_path, sample_rate=SR), 1.0)
    x, y = ds[0]
    assert x.shape == (SR,) and int((y == 1).sum()) == 30 and y[-1] == IGNORE  # speech: frames 10..39


# -- noise ------------------------------------------------------------------------------------------
def test_noise_mixer_sets_the_snr_over_the_speech_samples(tmp_path):
    nd = tmp_path / "noise"
    nd.mkdir()
    _wav(nd / "n1.wav", 0.5, sr=22050, seed=1)
    _wav(nd / "n2.flac", 3.0, sr=SR, seed=2)
    mix = NoiseMixer(nd, SR, snr_db=(0.0, 10.0))
    rng = np.random.default_rng(0)
    speech = np.zeros(SR, np.float32)
    speech[4000:12000] = 0.1 * np.sin(np.arange(8000) * 0.05)
    mask = speech != 0
    for _ in range(20):
        before = rng.bit_generator.state
        out = mix(speech, rng, speech=mask)
        noise = out - speech
        snr = 10 * np.log10(np.mean(speech[mask].astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
        assert -1e-3 <= snr <= 10 + 1e-3
        rng2 = np.random.default_rng(0)
        rng2.bit_generator.state = before
        np.testing.assert_array_equal(mix(speech, rng2, speech=mask), out)  # the rng decides everything


def test_noise_folder_errors(tmp_path):
    with pytest.raises(CorpusError, match="noise folder not found"):
        NoiseMixer(tmp_path / "none", SR)
    (tmp_path / "bad.wav").write_bytes(b"xx")
    with pytest.raises(UnreadableAudioError, match=r"bad\.wav"):
        NoiseMixer(tmp_path, SR)
    _wav(tmp_path / "ok.wav", 0.2)
    r = SkipReport(skip_bad=True)
    assert len(NoiseMixer(tmp_path, SR, report=r)) == 1 and r.counts()["skipped"] == 1
