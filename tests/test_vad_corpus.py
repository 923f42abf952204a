"""The VAD on the user's corpus end to end: a 16 kHz flac + RTTM folder -> `slimtrain vad` -> vad.load ->
predict / stream / ONNX; --skip-bad; `vad eval --test-data`; --sweep on user data; the paper recipe on
VCTK- and ESC-50-shaped fixtures; the model's sample rate."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from slimtrain import vad
from slimtrain.cli import main
from slimtrain.audio.data import CorpusError, read_vad_corpus, frame_labels_from_segments
from slimtrain.audio.data.fixtures import make_esc50_tree, make_rttm_folder, make_vctk_tree

SMALL = ["--widths", "conv1=8,conv2=8,hidden=12,n_mels=24", "--crop-seconds", "1.5", "--batch-size", "4",
         "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_rttm_folder(root / "train", 8, seed=1, broken=True)
    make_rttm_folder(root / "val", 3, seed=2)
    make_rttm_folder(root / "test", 3, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["vad", "--train-data", str(corpus / "train"), "--val-data", str(corpus / "val"), "--test-data",
               str(corpus / "test"), "--sample-rate", "16000", "--skip-bad", "--epochs", "4", "--out", str(out), *SMALL])
    assert rc == 0
    return out


def test_without_skip_bad_the_broken_file_stops_the_run_by_name(corpus, tmp_path, capsys):
    rc = main(["vad", "--train-data", str(corpus / "train"), "--val-data", str(corpus / "val"), "--epochs", "1",
               "--out", str(tmp_path), *SMALL])
    assert rc == 2
    assert "broken.flac: cannot read audio file" in capsys.readouterr().err
    assert not (tmp_path / "vad_crnn.pt").exists()


def test_skip_bad_writes_the_report_and_counts_it(trained):
    res = json.loads((trained / "result.json").read_text())
    assert res["skipped"]["skipped"] == 1 and res["skipped"]["by_kind"] == {"audio-unreadable": 1}
    rows = list(csv.DictReader(open(res["skipped"]["report"])))
    assert len(rows) == 1 and rows[0]["path"].endswith("broken.flac")
    assert res["data"]["train"]["files"] == 8 and res["result"]["sample_rate"] == 16000
    assert res["result"]["metrics_on"] == "test"


def _labels(path, n):
    c = read_vad_corpus(path.parent)
    rec = next(r for r in c.recordings if r.path == path)
    return frame_labels_from_segments(rec.segments, 0, n // 160 + 1, 160, 16000, n)


def test_trained_model_loads_runs_at_16k_and_predicts(trained, corpus):
    from slimtrain.tasks.metrics import roc_auc

    m = vad.load(trained / "vad_crnn.pt")
    assert m.sample_rate == 16000 and m.resamples(16000) is None and m.resamples(8000) == "up"
    ys, ps = [], []
    for f in sorted((corpus / "test").glob("*.flac")):
        x, sr = sf.read(str(f), dtype="float32")
        p = m.frame_probs(x, sr)
        assert len(p) == len(x) // 160 + 1
        y = _labels(f, len(x))
        ys.append(y[y >= 0])
        ps.append(p[y >= 0])
    assert roc_auc(np.concatenate(ys), np.concatenate(ps)) > 0.8  # it learned the RTTM segments of unseen files
    x, sr = sf.read(str(corpus / "test" / "file001.flac"), dtype="float32")
    s = m.stream(sr)
    streamed = np.concatenate([s.feed(x[:3001]), s.feed(x[3001:]), s.flush()])
    np.testing.assert_allclose(streamed, m.frame_probs(x, sr), atol=1e-5)
    p8 = m.frame_probs(x[::2], 8000)  # 8 kHz input is upsampled to the model's 16 kHz
    assert len(p8) == len(x) // 160 + 1


def test_shipped_models_say_which_rate_they_run_at():
    m8 = vad.load(sample_rate=8000)
    assert m8.sample_rate == 8000 and m8.resamples(16000) == "down" and "sample_rate=8000" in repr(m8)
    assert len(m8.frame_probs(np.zeros(16000, np.float32), 16000)) == 8000 // 80 + 1
    both = vad.load()  # 16 kHz input runs through the 16 kHz model, not downsampled
    assert both.resamples(16000) is None and both.for_rate(16000).sample_rate == 16000 and "wideband=" in repr(both)


def test_trained_model_exports_to_onnx(trained, tmp_path):
    from slimtrain.core.export import export_onnx

    m = vad.load(trained / "vad_crnn.pt")
    info = export_onnx(m.model, torch.randn(1, 2400) * 0.1, tmp_path / "vad.onnx")  # 0.15 s: the exporter unrolls the GRU
    assert info["max_abs_diff"] <= 1e-4 and (tmp_path / "vad.onnx").is_file()


def test_predict_and_eval_commands_on_the_16k_model(trained, corpus, capsys, tmp_path):
    f = corpus / "test" / "file002.flac"
    assert main(["vad", "predict", "--model", str(trained / "vad_crnn.pt"), str(f), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"][0]["duration"] == pytest.approx(3.0) and doc["failed"] == 0
    assert main(["vad", "eval", "-m", str(trained / "vad_crnn.pt"), "--test-data", str(corpus / "test"),
                 "--val-data", str(corpus / "val"), "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert rows[0]["sample_rate"] == 16000 and rows[0]["auc"] > 0.8 and rows[0]["threshold_from"] == "val-data"
    assert main(["vad", "eval", "-m", str(trained / "vad_crnn.pt"), "--test-data", str(corpus / "test"),
                 "--sample-rate", "8000", "--no-progress"]) == 2
    assert "runs at 16000 Hz" in capsys.readouterr().err


def test_cli_refuses_meaningless_data_flags(corpus, tmp_path, capsys):
    base = ["vad", "--out", str(tmp_path), "--no-progress"]
    assert main(base + ["--train-data", str(corpus / "train")]) == 2
    assert "needs both --train-data PATH and --val-data PATH" in capsys.readouterr().err
    assert main(base + ["--sample-rate", "16000"]) == 2
    assert "with the built-in corpus needs a corpus built at that rate" in capsys.readouterr().err
    assert main(base + ["--recipe", "paper", "--vctk", str(tmp_path)]) == 2
    assert "--recipe paper needs --vctk DIR and --esc50 DIR" in capsys.readouterr().err
    assert main(base + ["--sample-rate", "44100"]) == 2


def test_sweep_on_user_data_runs_dcl_and_fixed_rows(corpus, tmp_path):
    rc = main(["vad", "--sweep", "--quick", "--family", "crnn", "--train-data", str(corpus / "val"), "--val-data",
               str(corpus / "test"), "--epochs", "1", "--crop-seconds", "1.5", "--out", str(tmp_path), "--no-progress",
               "--no-anchors"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert sorted(r["method"] for r in rows) == ["DCL", "fixed", "fixed"]
    assert all(r["status"] == "ok" and 0 <= float(r["auc"]) <= 1 for r in rows)


# -- the paper recipe -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper_trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    return make_vctk_tree(root / "VCTK", seconds=1.0), make_esc50_tree(root / "ESC-50", 1, seconds=2.0)


def test_paper_recipe_end_to_end_on_fixtures(paper_trees, tmp_path):
    from slimtrain.audio.data.fixtures import synthetic_speech

    vctk_dir, esc = paper_trees
    rc = main(["vad", "--recipe", "paper", "--vctk", str(vctk_dir), "--esc50", str(esc), "--epochs", "1",
               "--crop-seconds", "1.0", "--batch-size", "4", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["result"]["family"] for r in res["runs"]] == ["crnn", "transformer"]
    assert res["data"]["test"]["speakers"] == ["p229"] and res["data"]["val"]["esc50_folds"] == [4]
    for fam, params in (("crnn", 673873), ("transformer", 138082)):  # the paper's full-model sizes, within 1 %
        m = vad.load(tmp_path / f"vad_{fam}.pt")
        assert m.sample_rate == 16000
        n = sum(p.numel() for p in m.model.parameters())
        assert abs(n - params) / params < 0.01 and m.model.frontend.n_mels == 80
        x = synthetic_speech(16000, 16000, np.random.default_rng(0))
        assert len(m.frame_probs(x, 16000)) == 101


def test_paper_mixtures_label_the_clean_speech(paper_trees):
    from slimtrain.tasks.vad.paper import paper_data, vctk_speakers

    vctk_dir, esc = paper_trees
    assert sorted(vctk_speakers(vctk_dir)) == ["p225", "p226", "p227", "p228", "p229"]
    d = paper_data(vctk_dir, esc, crop_seconds=2.0, seed=1)
    assert len(d.train) == 9 and len(d.val) == 3 and len(d.test) == 3
    for i in range(len(d.test)):
        x, y = d.test[i]
        assert x.shape == (32000,) and y.shape == (201,)
        assert torch.equal(d.test[i][0], x)  # evaluation items are fixed
        assert 0 < float(y.mean()) < 1 or float(y.sum()) == 0
    d.train.set_epoch(0)
    a = d.train[0][0]
    d.train.set_epoch(1)
    assert not torch.equal(a, d.train[0][0])  # training items are redrawn each epoch


def test_vctk_080_layout_and_bad_trees_are_named(tmp_path, paper_trees):
    from slimtrain.tasks.vad.paper import esc50_folds, vctk_speakers

    old = make_vctk_tree(tmp_path / "old", ("p300", "p301", "p302"), 2, layout="wav48", seconds=0.5)
    assert {k: len(v) for k, v in vctk_speakers(old).items()} == {"p300": 2, "p301": 2, "p302": 2}
    with pytest.raises(CorpusError, match="not a VCTK folder"):
        vctk_speakers(tmp_path)
    with pytest.raises(CorpusError, match=r"esc50\.csv: ESC-50 table not found"):
        esc50_folds(tmp_path)
    _, esc = paper_trees
    meta = esc / "meta" / "esc50.csv"
    good = meta.read_text()
    try:
        meta.write_text(good + "1-999-A-0.wav,1,0,dog,True,999,A\n")
        with pytest.raises(CorpusError, match=r"esc50\.csv, line 7: names .*1-999-A-0\.wav, which does not exist"):
            esc50_folds(esc)
        meta.write_text(good + "x.wav,nine,0,dog,True,1,A\n")
        with pytest.raises(CorpusError, match=r"line 7: fold 'nine' is not a number"):
            esc50_folds(esc)
    finally:
        meta.write_text(good)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_torchscript_vad_keeps_its_rate(tmp_path, rate):
    import warnings

    from slimtrain.apps.vad.models import build_vad_model

    m = build_vad_model("crnn", 24, sample_rate=rate, conv1=4, conv2=4, hidden=4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(m, torch.randn(1, rate)), str(tmp_path / "model.pt"))
    v = vad.load(tmp_path / "model.pt")
    assert v.sample_rate == rate  # read from the filterbank: a 16 kHz TorchScript model is not run at 8 kHz
    x = np.random.default_rng(0).standard_normal(rate).astype(np.float32) * 0.1
    np.testing.assert_allclose(v.frame_logits(x, rate), m(torch.from_numpy(x)[None]).detach().numpy()[0], atol=1e-5)
