"""The model zoo (issue 10 item 7): every model goes make_dynamic -> training steps in which a width
must move -> exact export (eval output equal within 1e-5) -> analytic MACs vs torch's flop counter
(within 1 %). Entries that fail today are strict xfails whose reason is the current error: the test
checks that it is still that error, and flips to XPASS (a failure) when the core is fixed, so the
mark must then be removed. See tests/_zoo.py for the models and the procedure."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402
from _zoo import ZOO, ZooCheckError, check_entry, run_entry  # noqa: E402


class UnexpectedZooFailure(RuntimeError):
    """An xfail entry failed with a different error than the one recorded in its reason."""


def _param(entry):
    marks = [pytest.mark.xfail(strict=True, raises=ZooCheckError, reason=entry.xfail)] if entry.xfail else []
    return pytest.param(entry, id=entry.name, marks=marks)


@pytest.mark.parametrize("entry", [_param(e) for e in ZOO])
def test_zoo_model(entry):
    if not entry.xfail:
        res = check_entry(entry)
        assert res.max_drop >= 1.0 and res.export_err <= _zoo.EXPORT_ATOL
        assert res.counter_diff_pct <= 100 * _zoo.COUNTER_RTOL
        assert res.macs_after < res.macs_before
        return
    res = run_entry(entry)
    if res.passed:
        return  # strict xfail: reported as XPASS, i.e. a failure telling to remove the mark
    got = f"{res.stage}: {res.error}"
    recorded = entry.xfail.split(" (")[0][:120]  # a trailing "(...)" in the reason is our comment
    if not got.startswith(recorded):
        raise UnexpectedZooFailure(f"zoo model '{entry.name}' now fails differently: {got}\n(recorded: {entry.xfail})")
    raise ZooCheckError(got)


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in ZOO if not e.xfail])
def test_zoo_model_after_magnitude_reordering(entry):
    """The same procedure on the channel-reordered model (the path for a trained model): reordering
    keeps the output, and make_dynamic, training, export and the counter check still hold."""
    res = run_entry(entry, reorder="magnitude")
    assert res.passed, f"{res.stage}: {res.error}\n{res.trace}"
    assert res.max_drop >= 1.0 and res.export_err <= _zoo.EXPORT_ATOL


@pytest.mark.parametrize("name", ["bert", "whisper_encoder", "wav2vec2", "torch_transformer_encoder",
                                  "vad_transformer"])
def test_zoo_attention_models_with_per_head_widths(name):
    """make_dynamic(heads="width") on the attention models: the procedure holds (export exact, cost equal to
    the flop counter). transformers' attention views with a literal head_dim, so their head widths stay
    fixed; the VAD Transformer's view computes it, so its query/key and value get per-head widths."""
    entry = next(e for e in ZOO if e.name == name)
    res = run_entry(entry, heads="width")
    assert res.passed, f"{res.stage}: {res.error}\n{res.trace}"
    if name == "vad_transformer":
        assert res.n_dynamic > run_entry(entry).n_dynamic  # query/key and value: two widths instead of one


def test_zoo_covers_the_issue_list():
    names = {e.name for e in ZOO}
    for want in ("wav2vec2", "hubert", "bert", "vit", "resnet", "mobilenet_v2", "convnext",
                 "torch_transformer_encoder", "lstm_bi_2layer", "gru_bi_2layer", "synthetic_mlp", "vad_crnn",
                 "spoof_resnet"):
        assert want in names


def test_zoo_harness_reports_an_inexact_export(monkeypatch):
    """The harness must catch a wrong export, a wrong counter and widths that do not move."""
    entry = next(e for e in ZOO if e.name == "synthetic_mlp")
    import slimtrain

    real_export = slimtrain.export

    def bad_export(model):
        small = real_export(model)
        with torch.no_grad():
            next(small.parameters()).add_(1e-3)
        return small

    monkeypatch.setattr(slimtrain, "export", bad_export)
    res = run_entry(entry)
    assert res.stage == "export" and "differs from the dynamic model" in res.error
    monkeypatch.setattr(slimtrain, "export", real_export)
    res = run_entry(entry, steps=0)
    assert res.stage == "train" and "no width dropped" in res.error
    monkeypatch.setattr(_zoo, "count_macs", lambda model, x: 2.0 * real_count(model, x))
    res = run_entry(entry)
    assert res.stage == "counter" and "flop_counter" in res.error


real_count = _zoo.count_macs
