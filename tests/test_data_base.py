"""slimtrain.data base: CorpusError / SkipReport, audio loading, windows and the cache."""
from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings, strategies as st

from slimtrain.audio.data import (AudioCache, CorpusError, EmptyAudioError, MissingAudioError, SkipReport,
                            UnreadableAudioError, audio_info, load_audio, resampled_length)
from slimtrain.audio.io import resample_to


def test_corpus_error_names_file_and_line_and_pickles():
    e = CorpusError("a/b.rttm", "cannot parse", line=7, kind="rttm-parse")
    assert str(e) == "a/b.rttm, line 7: cannot parse"
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.line, e2.kind, str(e2)) == ("a/b.rttm", 7, "rttm-parse", str(e))
    assert str(CorpusError("x.wav", "bad")) == "x.wav: bad"


def test_skip_report_raises_without_skip_bad():
    r = SkipReport(skip_bad=False)
    with pytest.raises(CorpusError, match="f.rttm, line 2"):
        with r.catch():
            raise CorpusError("f.rttm", "oops", 2)
    assert len(r) == 0


def test_skip_report_records_writes_and_counts(tmp_path, capsys):
    r = SkipReport(skip_bad=True)
    reached = []
    for i in range(3):
        with r.catch():
            raise CorpusError(f"f{i % 2}.rttm", f"bad {i}", i + 1, kind="rttm-parse" if i else "audio-empty")
            reached.append(i)  # noqa: unreachable: the block stops at the error
    assert reached == []
    assert r.counts() == {"skipped": 3, "by_kind": {"audio-empty": 1, "rttm-parse": 2}, "files": 2}
    r.print_summary()
    err = capsys.readouterr().err
    assert "skipped 3 item(s) in 2 file(s)" in err and "f1.rttm, line 2: bad 1" in err
    rows = list(csv.DictReader(r.write(tmp_path / "skips.csv").open()))
    assert [row["line"] for row in rows] == ["1", "2", "3"] and rows[2]["reason"] == "bad 2"
    lines = [json.loads(s) for s in r.write(tmp_path / "skips.jsonl").read_text().splitlines()]
    assert lines[0] == {"path": "f0.rttm", "line": 1, "kind": "audio-empty", "reason": "bad 0"}


def _tone(n, sr, f=440.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_named_errors_for_missing_unreadable_empty(tmp_path):
    with pytest.raises(MissingAudioError, match="nope.wav: audio file not found"):
        load_audio(tmp_path / "nope.wav", 16000)
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(UnreadableAudioError, match="bad.flac: cannot read audio file"):
        audio_info(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(EmptyAudioError, match="empty.wav: audio file is empty"):
        load_audio(empty, 8000)


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    x = _tone(4410, 44100)
    stereo = np.stack([x, -0.5 * x], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", 16000)
    np.testing.assert_allclose(y, resample_to(0.25 * x, 44100, 16000), atol=1e-6)
    assert len(y) == resampled_length(4410, 44100, 16000) == 1600


@settings(max_examples=25, deadline=None)
@given(rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]), a=st.floats(0, 1), b=st.floats(0, 1))
def test_window_equals_the_same_window_of_the_whole_file(tmp_path_factory, rate, a, b):
    d = tmp_path_factory.mktemp("w")
    x = _tone(rate // 2, rate, seed=rate)
    sf.write(d / "x.flac", x, rate, subtype="PCM_24")
    whole = load_audio(d / "x.flac", 16000)
    lo, hi = sorted((int(a * len(whole)), int(b * len(whole))))
    np.testing.assert_allclose(load_audio(d / "x.flac", 16000, start=lo, stop=hi), whole[lo:hi], atol=2e-5)


def test_cache_stores_once_per_rate_and_follows_file_changes(tmp_path):
    src = tmp_path / "x.wav"
    sf.write(src, _tone(8000, 8000), 8000, subtype="FLOAT")
    cache = AudioCache(tmp_path / "cache")
    y = load_audio(src, 16000, cache=cache)
    np.testing.assert_allclose(y, load_audio(src, 16000), atol=0)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    np.testing.assert_array_equal(load_audio(src, 16000, start=100, stop=200, cache=cache), y[100:200])
    load_audio(src, 8000, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    import os
    sf.write(src, _tone(4000, 8000, f=100.0), 8000, subtype="FLOAT")
    os.utime(src, ns=(1, 1))
    assert len(load_audio(src, 16000, cache=cache)) == 8000
