"""``from slimtrain import vad``: the shipped model, its metadata, input handling, segments and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain import vad
from slimtrain.cli import main
from slimtrain.apps.shipped import sha256_of


@pytest.fixture(scope="module")
def model():
    return vad.load()


def _labelled_clip_set() -> list[tuple[np.ndarray, np.ndarray]]:
    """A FIXED clip set with known frame labels: Italian Asterisk prompts (the held-out test voice) and
    espeak-ng Italian speech, each between stretches of noise, at 10-20 dB SNR (seeded)."""
    from slimtrain.tasks.audio import asterisk_prompts, read_audio
    from slimtrain.tasks.spoof.attacks import espeak
    from slimtrain.tasks.vad.data import frame_labels, make_noise, mix_at_snr

    rng = np.random.default_rng(20260)
    files = asterisk_prompts("it")
    speech = [read_audio(files[i], 8000)[0][:24000] for i in (11, 137, 263, 389)]
    speech += [espeak("buongiorno, il numero che avete chiamato non è al momento raggiungibile", "it"),
               espeak("per favore lasciate un messaggio dopo il segnale acustico", "it+m3")]
    out = []
    for k, s in enumerate(speech):
        s = s / (np.sqrt(np.mean(s ** 2)) + 1e-9) * 0.05
        lead, tail = (np.zeros(int(rng.uniform(0.6, 1.2) * 8000)) for _ in range(2))
        clean = np.concatenate([lead, s, tail])
        noise = make_noise(("white", "pink", "brown")[k % 3], len(clean), rng)
        x = (clean + mix_at_snr(clean, noise, float(rng.uniform(10, 20)))).astype(np.float32)
        out.append((x, frame_labels(clean.astype(np.float32))))
    return out


@pytest.fixture(scope="module")
def clips():
    return _labelled_clip_set()


# -- the shipped files ------------------------------------------------------------------------------
def test_shipped_files_are_small_complete_and_consistent():
    pt = vad.default_model_path()
    meta = json.loads(pt.with_suffix(".json").read_text())
    assert pt.stat().st_size < 100_000
    assert meta["sha256"] == sha256_of(pt)
    assert meta["format"] == "slimtrain-shipped-model" and meta["task"] == "vad" and meta["sample_rate"] == 8000
    r = meta["recipe"]
    assert r["family"] == "crnn" and 0 < r["kappa_min"] <= 1 and r["epochs"] >= 1
    assert r["alpha"] > 0 or r["budget"] > 0  # a DCL trade-off: a FLOPs weight or a FLOP/s budget (hinge)
    assert set(r["exported_widths"]) == {"n_mels", "conv1", "conv2", "hidden"}
    assert len(meta["data"]["fingerprint"]) == 16 and meta["data"]["config"]["test_languages"] == ["it"]
    assert any(c.startswith("slimtrain data vad") for c in meta["commands"])
    assert any("slimtrain vad --family crnn" in c for c in meta["commands"])
    m = meta["metrics"]
    assert 0.9 < m["auc"] <= 1 and 0 < m["eer"] < 0.2 and 0.8 < m["f1_at_threshold"] <= 1
    assert 0 < m["mflops_per_s"] < 2.39 and m["params"] < 13393  # <= 1/10 of Silero's 23.94 MFLOP/s at 8 kHz
    # measured by 'slimtrain vad eval' on the core Italian test split and the unseen-voices set, next to Silero
    sets = meta["metrics_by_set"]
    assert set(sets) == {"test", "unseen", "unseen-human", "unseen-expressive"}
    assert sets["test"]["ours"]["data_fingerprint"] == "cf2a4139b193778e"  # the core corpus of docs/vad.md
    assert sets["test"]["ours"]["mflops_per_s"] == pytest.approx(m["mflops_per_s"], rel=1e-6)
    for name in ("test", "unseen", "unseen-human", "unseen-expressive"):
        ours, silero = sets[name]["ours"], sets[name]["silero"]
        # the goal of issue 11 (test, unseen) and the choice set of issue 23 (recorded voices only), as shipped
        assert ours["auc"] > silero["auc"] and ours["f1"] > silero["f1"], name
    assert {"auc fr-armelle", "auc klettres-he"} <= set(sets["unseen-human"]["ours"])  # per recorded speaker
    assert {"auc hedgewars-default-es", "auc hedgewars-default-pl"} <= set(sets["unseen-expressive"]["ours"])
    assert sets["test"]["ours"]["auc"] > 0.98 and sets["unseen"]["ours"]["auc"] > 0.95
    assert {"auc human", "auc festival", "auc espeak-ng"} <= set(sets["unseen"]["ours"])
    assert meta["streaming"]["ours_ms_per_s_8khz"] < meta["streaming"]["silero_ms_per_s_8khz"]
    assert 0 < meta["threshold"] < 1
    # the .pt holds only plain values and carries the same metadata
    d = torch.load(pt, weights_only=True)
    assert d["meta"]["metrics"] == m and d["meta"]["threshold"] == meta["threshold"]


def test_shipped_model_has_the_recorded_widths_and_cost(model):
    from slimtrain import model_cost

    w = model.meta["recipe"]["exported_widths"]
    net = model.model
    assert (net.frontend.n_mels, net.conv1.out_channels, net.conv2.out_channels, net.gru.hidden_size) == \
        (w["n_mels"], w["conv1"], w["conv2"], w["hidden"])
    cost = model_cost(net, torch.zeros(1, 32000), seconds=4.0)
    assert cost.flops_per_second / 1e6 == pytest.approx(model.meta["metrics"]["mflops_per_s"], rel=1e-6)
    assert model.threshold == pytest.approx(model.meta["threshold"])


def test_shipped_model_detects_speech_on_a_fixed_clip_set(model, clips):
    from slimtrain.tasks.metrics import roc_auc

    labels = np.concatenate([lab for _, lab in clips])
    probs = np.concatenate([model.frame_probs(x, 8000) for x, _ in clips])
    assert probs.shape == labels.shape and 0.2 < labels.mean() < 0.8
    assert roc_auc(labels, probs) > 0.99  # measured 0.997 (the model shipped before issue 11: 0.980)
    hit = said = found = 0
    for x, lab in clips:
        segs = model.speech_timestamps(x, 8000)
        t = np.arange(len(lab)) * 0.01
        inside = np.zeros(len(lab), dtype=bool)
        for s in segs:
            inside |= (t >= s["start"]) & (t <= s["end"])
        lab = lab.astype(bool)
        # every clip's speech is found, the espeak-ng Italian clips too (measured >= 0.97 per clip; before
        # issue 11 the shipped model found only 48 % and 57 % of the two espeak-ng clips)
        assert (inside & lab).sum() > 0.9 * lab.sum()
        hit, said, found = hit + (inside & lab).sum(), said + lab.sum(), found + inside.sum()
    assert hit > 0.95 * said  # the segments cover almost every labelled speech frame (measured: 0.996)
    # and lie mostly on speech (measured: 0.850 for the file trained with the Hedgewars packs, threshold 0.39;
    # 0.89 for the file before it, threshold 0.33; 0.92 for the one before issue 23, 0.42: the frames between
    # words and around the speech count against it)
    assert hit > 0.82 * found


# -- input handling -----------------------------------------------------------------------------------
def test_layouts_dtypes_and_tensors_agree(model, clips):
    x = clips[0][0]
    ref = model.frame_probs(x, 8000)
    assert ref.dtype == np.float32 and ref.shape == (len(x) // 80 + 1,)
    st2 = np.stack([x, x])
    for a in (st2, st2.T, torch.from_numpy(x), torch.from_numpy(st2), x.astype(np.float64)):
        np.testing.assert_allclose(model.frame_probs(a, 8000), ref, atol=1e-6)
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    np.testing.assert_allclose(model.frame_probs(pcm, 8000), ref, atol=2e-3)
    # the 8 kHz model alone resamples other rates: 16 kHz gives the same frame grid and nearly the same
    # probabilities (vad.load() would run 16 kHz input through the 16 kHz model: tests/test_vad_16k.py)
    from scipy.signal import resample_poly

    p16 = vad.load(sample_rate=8000).frame_probs(resample_poly(x, 2, 1).astype(np.float32), 16000)
    assert p16.shape == ref.shape and np.abs(p16 - ref).mean() < 0.02


@pytest.mark.parametrize("audio, rate, message", [
    (np.zeros(0, np.float32), 8000, "vad.frame_probs: audio is empty"),
    (np.full(1000, np.nan, np.float32), 8000, "contains NaN or Inf"),
    (np.zeros((2, 3, 400), np.float32), 8000, "must be 1-D (samples) or 2-D"),
    (np.zeros((400, 400), np.float32), 8000, "cannot tell channels from samples"),
    (np.zeros(1000, np.complex64), 8000, "dtype complex64 is not supported"),
    (np.zeros(100, np.float32), 8000, "too short: 100 samples at 8000 Hz"),
    (np.zeros(1000, np.float32), 0, "sample_rate must be a positive integer"),
    (np.zeros(1000, np.float32), 8000.5, "sample_rate must be a positive integer"),
    (np.zeros(1000, np.float32), "8000", "sample_rate must be a positive integer"),
    ("audio.wav", 8000, "audio must be a numpy array or torch tensor"),
])
def test_bad_input_is_a_named_error(model, audio, rate, message):
    with pytest.raises(vad.AudioInputError) as e:
        model.frame_probs(audio, rate)
    assert message in str(e.value)


# -- streaming through the facade ---------------------------------------------------------------------
@settings(max_examples=15)
@given(sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=5).filter(any),
       rate=st.sampled_from([8000, 16000, 44100]))
def test_stream_equals_frame_probs(model, clips, sizes, rate):
    from scipy.signal import resample_poly

    x = clips[1][0][:16000]
    if rate != 8000:
        x = resample_poly(x, rate // 100, 80).astype(np.float32) if rate == 44100 else resample_poly(x, 2, 1)
    pcm = np.round(np.stack([x, 0.5 * x], axis=1) * 20000).astype(np.int16)  # stereo, channels-last, int16
    ref = model.frame_probs(pcm, rate)
    s = model.stream(rate, channels=2)
    out, i, k = [], 0, 0
    while i < len(pcm):
        c = sizes[k % len(sizes)]
        out.append(s.feed(pcm[i:i + c]))
        i, k = i + c, k + 1
    out.append(s.flush())
    got = np.concatenate(out)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5
    assert s.frames == len(ref)


def test_stream_input_errors(model):
    s = model.stream(16000)
    with pytest.raises(vad.AudioInputError, match="mono stream takes 1-D chunks"):
        s.feed(np.zeros((2, 100), np.float32))
    with pytest.raises(vad.AudioInputError, match=r"expected chunks of shape \(2, n\) or \(n, 2\)"):
        model.stream(8000, channels=2).feed(np.zeros((3, 100), np.float32))
    with pytest.raises(vad.AudioInputError, match="sample_rate"):
        model.stream(-1)
    s2 = model.stream(8000, channels=2)
    s2.feed(np.zeros((300, 2), np.float32))  # channels-last from now on
    with pytest.raises(vad.AudioInputError, match="changes the channel layout"):
        s2.feed(np.zeros((2, 300), np.float32))
    # a square chunk follows the stream's layout
    sq = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    assert np.allclose(s2._mono(sq), [1.5, 3.5])  # rows are samples
    assert np.allclose(model.stream(8000, channels=2)._mono(sq), [2.0, 3.0])  # unknown yet: channels-first


# -- segments ---------------------------------------------------------------------------------------
def test_segments_follow_silero_rules():
    p = np.zeros(200)
    p[20:60] = 0.9  # 0.4 s of speech
    p[65:70] = 0.9  # after a 50 ms pause (< min silence 100 ms): same segment
    p[120:130] = 0.9  # 100 ms burst: shorter than min speech 250 ms, dropped
    segs = vad.probs_to_segments(p, 0.5)
    assert segs == [{"start": 0.165, "end": 0.725}]  # (20 - 0.5) * 10 ms - 30 ms pad, (70 - 0.5) * 10 ms + 30 ms
    assert vad.probs_to_segments(p, 0.5, min_speech_ms=50, speech_pad_ms=0) == [
        {"start": 0.195, "end": 0.695}, {"start": 1.195, "end": 1.295}]
    # a close pair of segments shares the gap instead of overlapping
    q = np.zeros(100)
    q[10:40] = q[45:80] = 0.9
    assert vad.probs_to_segments(q, 0.5, min_silence_ms=40, min_speech_ms=0, speech_pad_ms=30) == [
        {"start": 0.065, "end": 0.42}, {"start": 0.42, "end": 0.825}]
    with pytest.raises(ValueError, match="threshold must be in"):
        vad.probs_to_segments(p, 1.5)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=300), st.floats(0.05, 0.95),
       st.floats(0, 300), st.floats(0, 300), st.floats(0, 100))
def test_segments_are_ordered_disjoint_and_inside_the_audio(probs, thr, min_speech, min_silence, pad):
    segs = vad.probs_to_segments(np.array(probs), thr, min_speech_ms=min_speech, min_silence_ms=min_silence,
                                 speech_pad_ms=pad)
    end = (len(probs) - 0.5) * 0.01
    for s in segs:
        assert 0 <= s["start"] < s["end"] <= end + 1e-9
    for a, b in zip(segs, segs[1:]):
        assert a["end"] <= b["start"] + 1e-9


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_without_smoothing_segments_are_exactly_the_runs_above_threshold(speech):
    p = np.where(speech, 0.8, 0.2)
    segs = vad.probs_to_segments(p, 0.5, neg_threshold=0.5, min_speech_ms=0, min_silence_ms=0, speech_pad_ms=0)
    runs, t = [], 0
    while t < len(speech):
        if speech[t]:
            u = t
            while u < len(speech) and speech[u]:
                u += 1
            runs.append((max(0.0, (t - 0.5) * 0.01), min((u - 0.5) * 0.01, (len(speech) - 0.5) * 0.01)))
            t = u
        else:
            t += 1
    runs = [(round(a, 3), round(b, 3)) for a, b in runs if b > a]
    assert [(s["start"], s["end"]) for s in segs] == runs


# -- loading other model files --------------------------------------------------------------------------
def test_load_errors_name_the_file(tmp_path):
    from slimtrain.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="model file not found: .*missing.pt"):
        vad.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="bad.pt"):
        vad.load(bad)
    from slimtrain import spoof

    with pytest.raises(CheckpointError, match="shipped 'spoof' model, not a 'vad' model"):
        vad.load(spoof.default_model_path())


def test_a_transformer_checkpoint_loads_but_does_not_stream(tmp_path):
    from slimtrain.train.checkpoint import make_recipe, save_checkpoint
    from slimtrain.apps.vad.models import StreamingError, build_vad_model

    net = build_vad_model("transformer", n_mels=8, d_model=8, ff=8, attn=4)
    ckpt = save_checkpoint(tmp_path / "tr.pt", net, make_recipe("vad", {"family": "transformer", "n_mels": 8,
                                                                        "d_model": 8, "ff": 8, "attn": 4},
                                                                (2, 32000), {"plain": True}))
    m = vad.load(ckpt)
    assert m.frame_probs(np.zeros(800, np.float32), 8000).shape == (11,) and not m.can_stream
    with pytest.raises(StreamingError, match="no streaming runner"):
        m.stream(8000)


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_predict_many_files_and_folders_with_the_shipped_model(clips, tmp_path, capsys):
    import soundfile as sf

    (tmp_path / "d" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "d" / "a.wav", clips[0][0], 8000)
    sf.write(tmp_path / "d" / "sub" / "b.flac", np.stack([clips[1][0]] * 2, 1), 8000)
    (tmp_path / "d" / "sub" / "notes.txt").write_text("not audio, not searched")
    (tmp_path / "d" / "sub" / "broken.wav").write_bytes(b"RIFF junk")
    single = tmp_path / "d" / "a.wav"
    assert main(["vad", "predict", str(single)]) == 0
    out, err = capsys.readouterr()
    lines = [ln.split("\t") for ln in out.strip().splitlines()]
    api = vad.load().speech_timestamps(clips[0][0], 8000)
    assert [(float(a), float(b)) for a, b in lines] == [(s["start"], s["end"]) for s in api]
    assert "1 files:" in err and "speech segments" in err

    assert main(["vad", "predict", str(tmp_path / "d"), "--format", "json", "--frames"]) == 1  # broken.wav failed
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [f["file"].split("/")[-1] for f in doc["files"]] == ["a.wav", "b.flac"]
    assert doc["failed"] == 1 and doc["errors"][0]["file"].endswith("broken.wav")
    assert len(doc["files"][0]["frames"]) == len(clips[0][0]) // 80 + 1
    errors = [ln for ln in err.splitlines() if ln.startswith("slimtrain: error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0] and "1 of 3 failed" in err

    assert main(["vad", "predict", "--format", "rttm", str(single), str(tmp_path / "nope.wav")]) == 1
    out, err = capsys.readouterr()
    rows = [ln.split() for ln in out.strip().splitlines()]
    assert rows and all(r[0] == "SPEAKER" and r[1] == "a" and r[7] == "speech" for r in rows)
    got = [v for r in rows for v in (float(r[3]), float(r[3]) + float(r[4]))]
    assert got == pytest.approx([v for s in api for v in (s["start"], s["end"])], abs=2e-3)
    assert "audio file not found:" in err and "nope.wav" in err


def test_cli_predict_takes_an_explicit_model_and_the_old_positional_form(clips, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, clips[2][0], 8000)
    model = str(vad.default_model_path())
    assert main(["vad", "predict", "--model", model, str(wav)]) == 0
    a = capsys.readouterr().out
    assert main(["vad", "predict", model, str(wav)]) == 0  # old form: MODEL FILE
    assert capsys.readouterr().out == a and a.strip()
    assert main(["vad", "predict", "--format", "rttm", "--frames", str(wav)]) == 2
    assert "--frames cannot be written as rttm" in capsys.readouterr().err
