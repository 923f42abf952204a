"""slimtrain.data.spoof_corpus: the protocol formats, every bad-input case, the streaming datasets."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings, strategies as st

from slimtrain.audio.data import CorpusError, SkipReport
from slimtrain.audio.data.spoof_corpus import (PROTOCOL_LAYOUTS, SpoofCrops, SpoofUtterances, asvspoof2019_paths, clips_of,
                                         crop_or_tile, detect_format, read_asv_scores, read_spoof_corpus)
from slimtrain.audio.data.spoof_fixtures import make_asvspoof2019_tree, make_itw_tree, make_plain_csv

SR = 16000


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoofcorpus")
    return {"asv": make_asvspoof2019_tree(root / "asv", n_bona=3, n_per_attack=1, seconds=(0.2, 0.4)),
            "itw": make_itw_tree(root / "itw", n_bona=3, n_spoof=3, seconds=(0.2, 0.4)),
            "csv": make_plain_csv(root / "csv", n_bona=3, n_per_attack=1, seconds=(0.2, 0.4)),
            "root": root}


@pytest.fixture(scope="module")
def flacs(tmp_path_factory):
    """Five 16 kHz flac files U0..U4 in one folder (for generated protocols)."""
    d = tmp_path_factory.mktemp("flacs") / "flac"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(str(d / f"U{i}.flac"), (rng.standard_normal(SR // 4) * 0.1).astype(np.float32), SR)
    return d


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _raises_at(match_line, fn, *a, **kw):
    with pytest.raises(CorpusError) as e:
        fn(*a, **kw)
    if match_line is not None:
        assert e.value.line == match_line, str(e.value)
        assert f"line {match_line}:" in str(e.value)
    return e.value


# ------------------------------------------------------------------------------------------ formats
def test_fixture_trees_parse_in_every_format(trees):
    asv = trees["asv"]
    tr = read_spoof_corpus(asv["train"], progress=False)
    assert tr.format == "asvspoof" and tr.sample_rate == SR
    assert tr.audio_dir == asv["root"] / "LA" / "ASVspoof2019_LA_train" / "flac"  # found by the official layout
    assert tr.counts() == {"bonafide": 3, **{f"A0{i}": 1 for i in range(1, 7)}}
    ev = read_spoof_corpus(asv["eval"], progress=False)
    assert set(ev.counts()) == {"bonafide", "A07", "A16", "A19"}
    itw = read_spoof_corpus(trees["itw"], progress=False)
    assert itw.format == "itw" and itw.counts() == {"bonafide": 3, "spoof": 3}
    pc = read_spoof_corpus(trees["csv"], progress=False)
    assert pc.format == "csv" and pc.counts() == {"bonafide": 3, "A01": 1, "A02": 1, "A03": 1}
    # the protocol lines agree with the items: bona fide items have label 1, spoofs 0
    for c in (tr, ev, itw, pc):
        assert all((it.attack == "bonafide") == (it.label == 1) for it in c.items)
        assert all(it.path.is_file() and it.frames > 0 for it in c.items)


def test_asvspoof_root_finds_protocols_and_asv_scores(trees, tmp_path):
    found = asvspoof2019_paths(trees["asv"]["root"])
    assert found["train"] == trees["asv"]["train"] and found["asv_eval"] == trees["asv"]["asv_eval"]
    assert asvspoof2019_paths(trees["asv"]["root"] / "LA")["dev"] == trees["asv"]["dev"]
    e = _raises_at(None, asvspoof2019_paths, tmp_path)
    assert "ASVspoof2019.LA.cm.train.trn.txt" in str(e)


def test_detect_format_and_forcing(trees, flacs, tmp_path):
    assert detect_format(trees["asv"]["train"]) == "asvspoof"
    assert detect_format(trees["itw"]) == "itw" and detect_format(trees["csv"]) == "csv"
    headerless = _write(tmp_path / "list.csv", f"{flacs}/U0.flac,bonafide\n{flacs}/U1.flac,spoof,A09\n")
    c = read_spoof_corpus(headerless, progress=False)
    assert c.format == "csv" and c.counts() == {"bonafide": 1, "A09": 1}
    # forcing a format reads the file that way: a CSV read as a protocol is bad lines, named
    _raises_at(1, read_spoof_corpus, headerless, format="asvspoof", audio_dir=flacs, progress=False)
    with pytest.raises(CorpusError, match="unknown format"):
        read_spoof_corpus(headerless, format="kaldi", progress=False)


_word = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=8)


@settings(max_examples=30, deadline=None)
@given(ncols=st.sampled_from(sorted(PROTOCOL_LAYOUTS)),
       rows=st.lists(st.tuples(_word, st.sampled_from(["bonafide", "spoof"]), _word, st.integers(0, 3)),
                     min_size=2, max_size=5),
       comments=st.booleans())
def test_asvspoof_layouts_property(flacs, tmp_path_factory, ncols, rows, comments):
    """Any layout: each line's key, attack, speaker and utterance land in the item of that line."""
    rows = [(spk, key, att, 0) for spk, key, att, _ in rows]
    rows[0] = (rows[0][0], "bonafide", rows[0][2], 0)
    rows[1] = (rows[1][0], "spoof", rows[1][2], 0)
    lines, want = [], []
    if comments:
        lines += ["# a comment", ""]
    for i, (spk, key, att, _) in enumerate(rows):
        cols = [f"x{j}" for j in range(ncols)]
        s, u, a, k = PROTOCOL_LAYOUTS[ncols]
        cols[s], cols[u], cols[a], cols[k] = spk, f"U{i}", att, key
        lines.append(" ".join(cols))
        want.append((len(lines), f"U{i}", spk, 1 if key == "bonafide" else 0, "bonafide" if key == "bonafide" else att))
    p = _write(tmp_path_factory.mktemp("prot") / "p.txt", "\n".join(lines) + "\n")
    c = read_spoof_corpus(p, audio_dir=flacs, progress=False)
    got = [(it.line, it.utt, it.speaker, it.label, it.attack) for it in c.items]
    assert got == want


# ------------------------------------------------------------------------------------------ bad input
def test_protocol_errors_name_file_and_line(flacs, tmp_path):
    bad_key = _write(tmp_path / "a.txt", "S U0 - - bonafide\nS U1 - A01 spooof\n")
    e = _raises_at(2, read_spoof_corpus, bad_key, audio_dir=flacs, progress=False)
    assert str(bad_key) in str(e) and "unknown key 'spooof'" in str(e)
    cols = _write(tmp_path / "b.txt", "S U0 - - bonafide\nS U1 A01 spoof\n")
    assert "4 columns" in str(_raises_at(2, read_spoof_corpus, cols, audio_dir=flacs, progress=False))
    missing = _write(tmp_path / "c.txt", "S U0 - - bonafide\nS U1 - A01 spoof\nS NOPE - A02 spoof\n")
    e = _raises_at(3, read_spoof_corpus, missing, audio_dir=flacs, progress=False)
    assert "NOPE" in str(e) and "does not exist" in str(e)
    dup = _write(tmp_path / "d.txt", "S U0 - - bonafide\nS U1 - A01 spoof\nS U0 - A02 spoof\n")
    assert "first on line 1" in str(_raises_at(3, read_spoof_corpus, dup, audio_dir=flacs, progress=False))
    one_class = _write(tmp_path / "e.txt", "S U0 - - bonafide\nS U1 - - bonafide\n")
    with pytest.raises(CorpusError, match="needs both classes"):
        read_spoof_corpus(one_class, audio_dir=flacs, progress=False)
    with pytest.raises(CorpusError, match="no audio folder found"):
        read_spoof_corpus(bad_key, progress=False)  # no flac/ beside it, no official layout
    with pytest.raises(CorpusError, match="protocol file not found"):
        read_spoof_corpus(tmp_path / "nothing.txt", progress=False)
    with pytest.raises(CorpusError, match="empty"):
        read_spoof_corpus(_write(tmp_path / "f.txt", "\n# only a comment\n"), progress=False)


def test_itw_and_csv_errors_name_file_and_line(flacs, tmp_path):
    itw = _write(tmp_path / "itw" / "meta.csv", f"file,speaker,label\n{flacs}/U0.flac,A,bona-fide\n"
                                                f"{flacs}/U1.flac,B,fake\n")
    assert "unknown label 'fake'" in str(_raises_at(3, read_spoof_corpus, itw, progress=False))
    itw2 = _write(tmp_path / "itw2" / "meta.csv", "file,speaker,label\n0.wav,A,spoof\n")
    assert "0.wav" in str(_raises_at(2, read_spoof_corpus, itw2, progress=False))
    head = _write(tmp_path / "itw3" / "meta.csv", "file,who,label\n0.wav,A,spoof\n")
    assert "lacks column(s) speaker" in str(_raises_at(1, read_spoof_corpus, head, format="itw", progress=False))
    csvf = _write(tmp_path / "c.csv", f"path,label\n{flacs}/U0.flac,bonafide\n{flacs}/U1.flac,maybe\n")
    assert "unknown label 'maybe'" in str(_raises_at(3, read_spoof_corpus, csvf, progress=False))
    csv2 = _write(tmp_path / "d.csv", "path,label\nmissing.flac,spoof\n")
    assert "missing.flac" in str(_raises_at(2, read_spoof_corpus, csv2, progress=False))


def test_bad_audio_and_mixed_rates(flacs, tmp_path):
    d = tmp_path / "flac"
    d.mkdir()
    for i in range(3):
        (d / f"U{i}.flac").write_bytes((flacs / f"U{i}.flac").read_bytes())
    (d / "BROKEN.flac").write_bytes(b"not audio at all")
    sf.write(str(d / "EMPTY.wav"), np.zeros(0, dtype=np.float32), SR)
    sf.write(str(d / "SLOW.flac"), np.zeros(800, dtype=np.float32) + 0.1, 8000)
    good = "S U0 - - bonafide\nS U1 - A01 spoof\nS U2 - A02 spoof\n"
    p = _write(tmp_path / "p1.txt", good + "S BROKEN - A03 spoof\n")
    e = _raises_at(4, read_spoof_corpus, p, progress=False)  # flac/ beside the protocol
    assert "BROKEN.flac" in str(e) and e.kind == "audio-unreadable"
    p = _write(tmp_path / "p2.txt", good + "S EMPTY - A03 spoof\n")
    assert _raises_at(4, read_spoof_corpus, p, progress=False).kind == "audio-empty"
    p = _write(tmp_path / "p3.txt", good + "S SLOW - A03 spoof\n")
    e = _raises_at(4, read_spoof_corpus, p, progress=False)
    assert "8000 Hz" in str(e) and e.kind == "mixed-rate"
    c = read_spoof_corpus(p, progress=False, allow_mixed_rates=True)
    assert len(c) == 4 and c.sample_rate == SR


def test_skip_bad_reports_every_case_and_keeps_the_rest(flacs, tmp_path):
    d = tmp_path / "flac"
    d.mkdir()
    for i in range(3):
        (d / f"U{i}.flac").write_bytes((flacs / f"U{i}.flac").read_bytes())
    (d / "BROKEN.flac").write_bytes(b"junk")
    sf.write(str(d / "SLOW.flac"), np.zeros(800, dtype=np.float32) + 0.1, 8000)
    p = _write(tmp_path / "p.txt", "S U0 - - bonafide\nS U1 - A01 spoof\nS U2 - A02 spoof\nS GONE - A03 spoof\n"
                                   "S BROKEN - A03 spoof\nS SLOW - A04 spoof\nS U2 - A05 spoof\nS U1 - A06 huh\n"
                                   "too few\n")
    report = SkipReport(True)
    c = read_spoof_corpus(p, skip_bad=True, report=report, progress=False)
    assert [it.utt for it in c.items] == ["U0", "U1", "U2"]
    assert sorted(i.line for i in report.items) == [4, 5, 6, 7, 8, 9]
    counts = report.counts()
    assert counts["skipped"] == 6
    assert counts["by_kind"] == {"audio-unreadable": 1, "missing-audio": 1, "mixed-rate": 1, "protocol": 3}
    out = report.write(tmp_path / "skipped.csv")
    assert len(out.read_text().splitlines()) == 7


def test_asv_score_file(tmp_path, trees):
    s = read_asv_scores(trees["asv"]["asv_eval"])
    assert len(s.target) == len(s.nontarget) == len(s.spoof) == 40
    six = _write(tmp_path / "six.txt", "LA_0001 x y z target 1.5\nLA_0001 x y z nontarget -2\nA01 x y z spoof 0.5\n")
    s6 = read_asv_scores(six)
    assert (s6.target.tolist(), s6.nontarget.tolist(), s6.spoof.tolist()) == ([1.5], [-2.0], [0.5])
    bad = _write(tmp_path / "a.txt", "bonafide target 1.0\nbonafide impostor 2.0\n")
    assert "unknown key 'impostor'" in str(_raises_at(2, read_asv_scores, bad))
    bad = _write(tmp_path / "b.txt", "bonafide target 1.0\nA01 spoof nan\n")
    assert "not a finite number" in str(_raises_at(2, read_asv_scores, bad))
    bad = _write(tmp_path / "c.txt", "bonafide target 1.0\nbonafide nontarget 2.0\n")
    with pytest.raises(CorpusError, match="no spoof trials"):
        read_asv_scores(bad)


# ------------------------------------------------------------------------------------------ datasets
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), clip=st.integers(1, 64))
def test_clips_cover_the_recording(n, clip):
    x = np.arange(n, dtype=np.float32)
    c = clips_of(x, clip)
    assert c.shape[1] == clip
    if n <= clip:
        assert c.shape[0] == 1 and np.array_equal(c[0], np.resize(x, clip))  # repeated end to end
    else:
        assert c[0, 0] == 0 and c[-1, -1] == n - 1  # first starts at the start, last ends at the end
        covered = np.zeros(n, bool)
        for row in c:
            assert np.array_equal(row, np.arange(row[0], row[0] + clip))  # contiguous windows
            covered[int(row[0]):int(row[0]) + clip] = True
        assert covered.all()
        assert c.shape[0] <= -(-(n - clip) // max(1, clip // 2)) + 1


def test_crops_stream_from_disk_deterministically(trees):
    c = read_spoof_corpus(trees["asv"]["train"], progress=False)
    ds = SpoofCrops(c, SR, 2000, seed=3)
    x0, y0 = ds[0]
    assert x0.shape == (2000,) and x0.dtype == torch.float32 and float(y0) == c.items[0].label
    full, _ = sf.read(str(c.items[0].path), dtype="float32")
    windows = np.lib.stride_tricks.sliding_window_view(full, 2000)
    assert np.any(np.all(windows == x0.numpy(), axis=1))  # the crop is a window of the file
    assert torch.equal(SpoofCrops(c, SR, 2000, seed=3)[0][0], x0)  # same seed, epoch, index: same crop
    ds.set_epoch(1)
    crops = [ds[0][0] for _ in range(2)]
    assert torch.equal(crops[0], crops[1])
    assert not all(torch.equal(SpoofCrops(c, SR, 2000, seed=s)[0][0], x0) for s in range(4, 9))
    long = SpoofCrops(c, SR, 20 * SR)[0][0]  # longer than the file: repeated end to end
    assert long.shape == (20 * SR,) and torch.equal(long[:len(full)], torch.from_numpy(full))
    u = SpoofUtterances(c, 8000, 1000)  # another rate: resampled when read
    clips, label, i = u[0]
    assert i == 0 and clips.shape[1] == 1000 and label == c.items[0].label
    assert np.allclose(crop_or_tile(np.arange(3.0), 7), [0, 1, 2, 0, 1, 2, 0])
    loader = torch.utils.data.DataLoader(SpoofCrops(c, SR, 1000), batch_size=4, num_workers=1)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 1000) and yb.shape == (4,)
