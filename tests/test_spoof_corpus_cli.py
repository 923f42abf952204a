"""slimtrain spoof on a user corpus: EER per attack, min t-DCF, skip-bad, the paper recipe, spoof.load at 16 kHz."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings, strategies as st

from slimtrain import spoof
from slimtrain.cli import main
from slimtrain.audio.data.spoof_corpus import clips_of
from slimtrain.audio.data.spoof_fixtures import make_asvspoof2019_tree
from slimtrain.tasks.metrics import eer_by_group, min_tdcf

TINY = ["--epochs", "2", "--crop-seconds", "0.5", "--batch-size", "8", "--loader-workers", "1", "--no-progress"]


# ------------------------------------------------------------------------------------------ metrics
def test_min_tdcf_hand_case():
    """ASV at its EER threshold 2 (tar [2, 3], non [-3, -2]): Pmiss_asv = Pfa_asv = 0, half the spoofs
    ([-1, 5]) pass it; C1 = Ptar = 0.9405, C2 = 10 * 0.05 * 0.5 = 0.25. CM bona [1, 2], spoof [0, 3]:
    rejecting the score 0 and below gives Pmiss 0, Pfa 0.5: 0.125 / 0.25 = 0.5, the minimum (accept all: 1;
    reject <= 1: (0.9405 * 0.5 + 0.125) / 0.25 = 2.38; reject all: 0.9405 / 0.25)."""
    assert min_tdcf([1, 2], [0, 3], [2, 3], [-3, -2], [-1, 5]) == pytest.approx(0.5)
    # all spoofs pass the ASV: C2 = 0.5; the same CM point gives 0.25 / 0.5
    assert min_tdcf([1, 2], [0, 3], [2, 3], [-3, -2], [4, 5]) == pytest.approx(0.5)
    # spoofs all rejected by the ASV leave the CM nothing to do: undefined, said so
    with pytest.raises(ValueError, match="undefined"):
        min_tdcf([1, 2], [0, 3], [2, 3], [-3, -2], [-5, -4])


# scores on a 0.1 grid, so an increasing affine map keeps distinct scores distinct in floating point
_scores = st.lists(st.integers(-100, 100), min_size=1, max_size=30).map(lambda v: [i / 10 for i in v])


@settings(max_examples=80, deadline=None)
@given(bona=_scores, spf=_scores, shift=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_min_tdcf_properties(bona, spf, shift, scale):
    asv = (np.array([2.0, 3.0, 4.0]), np.array([-3.0, -2.0]), np.array([-1.0, 5.0, 6.0]))
    v = min_tdcf(bona, spf, *asv)
    assert 0 <= v <= 1 + 1e-12  # accept-all and reject-all are both candidates, each >= 1 after normalising
    # a strictly increasing transform of the CM scores keeps every operating point
    assert min_tdcf(np.array(bona) * scale + shift, np.array(spf) * scale + shift, *asv) == pytest.approx(v)
    # a CM that ranks every bona fide score above every spoof costs nothing
    assert min_tdcf(np.array(bona) - min(bona) + max(spf) + 1, spf, *asv) == pytest.approx(0.0, abs=1e-12)


def test_eer_by_group_per_attack():
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [4, 5, 6, 7, 0, 1, 9, 10]  # A01 below every bona fide score, A02 above
    e = eer_by_group(labels, scores, ["bonafide"] * 4 + ["A01", "A01", "A02", "A02"])
    assert e["A01"] == 0.0 and e["A02"] == 1.0 and 0 < e["pooled"] < 1
    assert set(e) == {"pooled", "A01", "A02"}


# ------------------------------------------------------------------------------------------ CLI end to end
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_asvspoof2019_tree(tmp_path_factory.mktemp("asv"), n_bona=6, n_per_attack=3, broken=True)


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["spoof", "--quick", "--asvspoof-root", str(tree["root"]), "--skip-bad", "--out", str(out), *TINY])
    assert rc == 0
    return out, json.loads((out / "result.json").read_text())


def test_cli_without_skip_bad_names_the_broken_line(tree, tmp_path, capsys):
    rc = main(["spoof", "--quick", "--train-data", str(tree["train"]), "--val-data", str(tree["dev"]),
               "--out", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{tree['train']}, line {tree['broken']}:" in err and "cannot read audio file" in err
    assert not (tmp_path / "model.ckpt").exists()


def test_cli_result_per_attack_tdcf_and_skips(run, tree):
    out, doc = run
    assert doc["skipped"]["skipped"] == 1 and doc["skipped"]["by_kind"] == {"audio-unreadable": 1}
    rows = (out / "skipped.csv").read_text().splitlines()
    assert len(rows) == 2 and f",{tree['broken']},audio-unreadable," in rows[1]
    r = doc["result"]
    assert set(r["val"]["eer"]) == {"pooled", "A01", "A02", "A03", "A04", "A05", "A06"}
    assert set(r["test"]["eer"]) == {"pooled", "A07", "A16", "A19"}
    assert "min_tdcf" in r["test"] and 0 <= r["test"]["min_tdcf"] <= 1 and "min_tdcf" not in r["val"]
    assert all(0 <= v <= 100 for v in r["test"]["eer"].values())
    assert doc["data"]["train"]["counts"]["bonafide"] == 6 and doc["data"]["train"]["items"] == 24
    assert doc["data"]["asv_scores"] == str(tree["asv_eval"])
    assert r["sample_rate"] == 16000 and doc["options"]["sample_rate"] == 16000


def test_loaded_model_scores_at_16k_without_downsampling(run, tree):
    out, doc = run
    cm = spoof.load(out / "model.ckpt")
    assert cm.sample_rate == 16000 and cm.preprocess == "none" and cm.clip_samples == 8000
    assert cm.model.frontend.sample_rate == 16000
    f = sorted((tree["root"] / "LA" / "ASVspoof2019_LA_eval" / "flac").glob("*.flac"))[0]
    x, sr = sf.read(str(f), dtype="float32")
    with torch.no_grad():  # the score is the model on the 16 kHz clips themselves: nothing resampled
        want = float(cm.model(torch.from_numpy(clips_of(x, 8000))).mean())
    assert cm.score(x, sr) == pytest.approx(want, abs=1e-5)
    with pytest.warns(UserWarning, match="upsampled"):
        cm.score(x[::2], 8000)


def test_cli_scores_match_the_loaded_model(run, tree):
    """The test EER in result.json comes from the same per-file scores that spoof.load gives."""
    from slimtrain.audio.data.spoof_corpus import read_spoof_corpus

    out, doc = run
    cm = spoof.load(out / "model.ckpt")
    c = read_spoof_corpus(tree["eval"], progress=False)
    scores = np.array([cm.score(*sf.read(str(it.path), dtype="float32")) for it in c.items])
    e = eer_by_group(c.labels, scores, c.attacks)
    assert {k: round(100 * v, 6) for k, v in e.items()} == {k: round(v, 6) for k, v in doc["result"]["test"]["eer"].items()}


def test_corpus_flags_refused_on_the_builtin_corpus(tmp_path, capsys):
    assert main(["spoof", "--quick", "--sample-rate", "16000", "--out", str(tmp_path)]) == 2
    assert "--sample-rate applies to your corpus" in capsys.readouterr().err
    assert main(["spoof", "--recipe", "paper", "--train-data", "x.txt", "--sample-rate", "8000",
                 "--val-data", "y.txt", "--out", str(tmp_path)]) == 2
    assert "runs at 16000 Hz" in capsys.readouterr().err


def test_paper_recipe_end_to_end(tmp_path):
    tree = make_asvspoof2019_tree(tmp_path / "asv", n_bona=4, n_per_attack=1, seconds=(0.3, 0.5))
    out = tmp_path / "paper"
    rc = main(["spoof", "--recipe", "paper", "--asvspoof-root", str(tree["root"]), "--out", str(out), "--epochs", "1",
               "--crop-seconds", "0.25", "--batch-size", "4", "--loader-workers", "1", "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["recipe"] == "paper"
    assert doc["config"]["width"] == 64 and doc["config"]["blocks"] == [3, 4, 6, 3]
    assert doc["result"]["sample_rate"] == 16000 and doc["result"]["stages"] == [0, 1, 2, 3]
    assert set(doc["result"]["test"]["eer"]) == {"pooled", "A07", "A16", "A19"} and "min_tdcf" in doc["result"]["test"]
    cm = spoof.load(out / "model.ckpt")
    assert cm.sample_rate == 16000 and cm.model.stem.out_channels <= 64
    assert len(cm.model.stages) == 4 and [len(s) for s in cm.model.stages] == [3, 4, 6, 3]
    x, sr = sf.read(str(sorted((tree["root"] / "LA" / "ASVspoof2019_LA_eval" / "flac").glob("*.flac"))[0]))
    assert np.isfinite(cm.score(x, sr))


def test_itw_and_csv_at_8k_end_to_end(tmp_path):
    """In-the-Wild meta.csv for training, a plain CSV for validation, 16 kHz files, an 8 kHz model: the
    front-end is built for 8 kHz and the loaded model resamples wideband input down to its rate."""
    from slimtrain.audio.data.spoof_fixtures import make_itw_tree, make_plain_csv

    meta = make_itw_tree(tmp_path / "itw", n_bona=8, n_spoof=8, seconds=(0.3, 0.6))
    val = make_plain_csv(tmp_path / "csv", n_bona=3, n_per_attack=1, seconds=(0.3, 0.6))
    out = tmp_path / "run"
    rc = main(["spoof", "--quick", "--train-data", str(meta), "--val-data", str(val), "--sample-rate", "8000",
               "--out", str(out), *TINY])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["data"]["train"]["format"] == "itw" and doc["data"]["val"]["format"] == "csv"
    assert doc["data"]["train"]["counts"] == {"bonafide": 8, "spoof": 8}
    assert set(doc["result"]["val"]["eer"]) == {"pooled", "A01", "A02", "A03"} and "test" not in doc["result"]
    cm = spoof.load(out / "model.ckpt")
    assert cm.sample_rate == 8000 and cm.clip_samples == 4000 and cm.model.frontend.n_fft == 256
    x, sr = sf.read(str(meta.parent / "0.wav"), dtype="float32")
    assert sr == 16000 and np.isfinite(cm.score(x, sr))


def test_front_end_and_rawboost_options_on_your_corpus(tmp_path):
    """--n-mels/--n-fft/--freq-scale replace the rate's front-end settings and --rawboost augments the batches."""
    from slimtrain.audio.data.spoof_fixtures import make_plain_csv
    from slimtrain.tasks.spoof.corpus_train import CorpusOptions
    from slimtrain.train.checkpoint import load_checkpoint

    data = make_plain_csv(tmp_path / "csv", n_bona=8, n_per_attack=4, seconds=(0.3, 0.6))
    out = tmp_path / "run"
    rc = main(["spoof", "--quick", "--train-data", str(data), "--val-data", str(data), "--sample-rate", "8000",
               "--n-mels", "40", "--n-fft", "512", "--freq-scale", "linear", "--phase", "gd", "--head", "one-class",
               "--rawboost", "1+2", "--freq-mask", "6", "--freq-masks", "2",
               "--out", str(out), *TINY])
    assert rc == 0
    cm = spoof.load(out / "model.ckpt")
    fe = cm.model.frontend
    assert (fe.n_fft, fe.scale, fe.hop_length) == (512, "linear", 160) and fe.fbank.shape == (40, 257)
    assert [f.feature for f in cm.model.phase] == ["gd"] and cm.model.phase[0].fbank.shape == (40, 257)
    assert cm.model.head == "one-class"
    assert (cm.model.freq_mask.max_width, cm.model.freq_mask.count) == (6, 2)
    assert load_checkpoint(out / "model.ckpt")["extra"]["config"]["rawboost"] == "1+2"
    assert CorpusOptions(sample_rate=16000).frontend == {"n_fft": 512, "hop_length": 320, "n_mels": 64}
    with pytest.raises(ValueError, match="n-fft must be an integer >= 2"):
        CorpusOptions(sample_rate=8000, n_fft=1).validate()
    with pytest.raises(ValueError, match="freq-scale must be one of"):
        CorpusOptions(sample_rate=8000, freq_scale="bark").validate()
    with pytest.raises(ValueError, match="phase feature 'mgd' is unknown"):
        CorpusOptions(sample_rate=8000, phase="gd+mgd").validate()


def test_resamples_says_what_score_does(run):
    cm = spoof.load(run[0] / "model.ckpt")
    assert (cm.resamples(16000), cm.resamples(48000), cm.resamples(8000)) == (None, "down", "up")
    assert spoof.load().resamples(16000) == "down"  # the shipped model runs at 8 kHz


def test_macs_budget_on_your_corpus_replaces_alpha(tmp_path):
    """--macs-budget on your corpus replaces --alpha (recorded in result.json): a budget above the full network's
    cost leaves every width whole (the hinge is inactive; --alpha 1 alone would shrink them), and one of 1 MAC/s
    pulls the exported network below it."""
    import slimtrain
    from slimtrain.apps.spoof.models import build_resnet
    from slimtrain.audio.data.spoof_fixtures import make_plain_csv
    from slimtrain.train.checkpoint import load_checkpoint

    data = make_plain_csv(tmp_path / "csv", n_bona=8, n_per_attack=4, seconds=(0.3, 0.6))
    res = {}
    for budget in ("1e12", "1"):
        out = tmp_path / budget
        rc = main(["spoof", "--quick", "--train-data", str(data), "--val-data", str(data), "--sample-rate", "8000",
                   "--macs-budget", budget, "--out", str(out), *TINY, "--epochs", "6"])
        assert rc == 0
        res[budget] = json.loads((out / "result.json").read_text())["result"]
        assert res[budget]["macs_budget"] == float(budget) and res[budget]["alpha"] is None
    kw = load_checkpoint(tmp_path / "1" / "model.ckpt")["recipe"]["kwargs"]
    full = float(slimtrain.model_cost(build_resnet(**{**kw, "blocks": tuple(kw["blocks"])}),
                                      torch.zeros(1, 4000)).macs) / 0.5  # (0.5 s crops)
    assert res["1e12"]["macs_per_second"] == full
    assert res["1"]["macs_per_second"] < 0.95 * full
