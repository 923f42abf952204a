"""slimtrain.reorder_channels: permuting channels by importance leaves the function unchanged, is
consistent across coupled layers (tied residual groups, depthwise convs, RNN gates, BatchNorm
statistics, mel bands), leaves what it cannot permute alone (and says why), and lets make_dynamic
keep the most important channels."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain import ReorderError, channel_scores, reorder_channels

sys.path.insert(0, str(Path(__file__).parent))
import _helpers  # noqa: E402
import _zoo  # noqa: E402
from _helpers import first, randomise_norms  # noqa: E402
from test_cost import _build_random, architectures  # noqa: E402

ATOL = 1e-5


def _out(model, x):
    model.eval()
    with torch.no_grad():
        return first(model(x)).clone()


def _same(a, b):
    return (a - b).abs().max().item() <= ATOL * max(1.0, a.abs().max().item())


def _descending(s: torch.Tensor) -> bool:
    return bool((s[:-1] >= s[1:] - 1e-5 * s.abs().max().clamp_min(1e-12)).all())


@settings(max_examples=100)
@given(arch=architectures(), seed=st.integers(0, 1000), score=st.sampled_from(["magnitude", "taylor"]))
def test_reorder_keeps_outputs_and_sorts_scores_on_random_models(arch, seed, score):
    model, x = _build_random(arch, seed)
    randomise_norms(model, torch.Generator().manual_seed(seed))
    model.eval()
    ref = _out(model, x)
    kw = dict(batches=[x, x + 0.1], loss_fn=lambda y: y.pow(2).mean()) if score == "taylor" else {}
    rep = reorder_channels(model, x, score, check=False, **kw)  # no safety net: the plan alone must be right
    assert _same(ref, _out(model, x))
    assert rep.permutations, f"nothing was reordered; left alone: {rep.left_alone}"
    for label, s in rep.scores.items():
        assert _descending(s), label
    # scored again after the reordering, every width is sorted most important first
    for label, s in channel_scores(model, x, score, **kw).items():
        assert _descending(s), (label, s)


@pytest.mark.parametrize("name", sorted(_helpers.ZOO))
def test_reorder_keeps_outputs_on_the_helper_zoo(name):
    factory, shape = _helpers.ZOO[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = factory()
    randomise_norms(model, gen)
    x = torch.randn(shape, generator=gen)
    ref = _out(model, x)
    rep = reorder_channels(model, x, check=False)
    assert _same(ref, _out(model, x))
    assert any((p != torch.arange(len(p))).any() for p in rep.permutations.values())


@pytest.mark.parametrize("name", [e.name for e in _zoo.ZOO])
def test_reorder_keeps_outputs_on_the_model_zoo(name):
    """transformers models, torch containers and the project's models (tests/_zoo.py)."""
    entry = next(e for e in _zoo.ZOO if e.name == name)
    torch.manual_seed(0)
    model, x = entry.build()
    randomise_norms(model, torch.Generator().manual_seed(1))
    ref = _out(model, x)
    rep = reorder_channels(model, x, check=False)
    assert _same(ref, _out(model, x))
    # ConvNeXt: every width passes through ConvNextLayer, a module with its own layer-scale parameter;
    # GPT-2: its transposed Linear layers (transformers' Conv1D) are left alone, with that reason
    assert rep.permutations or name in ("convnext", "gpt2"), rep.left_alone
    if name == "gpt2":
        assert any("transposed Linear" in why for why in rep.left_alone.values())


def test_tied_residual_group_gets_one_permutation_over_all_members():
    torch.manual_seed(0)
    model = _helpers.ResIdentity()
    randomise_norms(model, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 8, 8)
    old = copy.deepcopy(model)
    scores = channel_scores(model, x)
    rep = reorder_channels(model, x)
    (label,) = [k for k in rep.permutations if "c1" in k]
    assert label == "c1, c3"
    p = rep.permutations[label]
    assert torch.equal(p, torch.argsort(-scores[label], stable=True))
    q = rep.permutations["c2"]
    # both producers and their BatchNorms in the same order (c3 also reads c2's width)
    assert torch.equal(model.c1.weight, old.c1.weight[p])
    assert torch.equal(model.c3.weight, old.c3.weight[p][:, q])
    for bn in ("b1", "b3"):
        assert torch.equal(getattr(model, bn).running_mean, getattr(old, bn).running_mean[p])
    assert torch.equal(model.c2.weight, old.c2.weight[q][:, p])  # the reader inside the block
    assert torch.equal(model.fc.weight, old.fc.weight[:, p])


def test_lstm_gates_recurrent_weights_and_next_layer_are_permuted_together():
    torch.manual_seed(0)
    model = _helpers.Recurrent(nn.LSTM, bidirectional=True, num_layers=2)
    x = torch.randn(2, 7, 5)
    old = copy.deepcopy(model)
    rep = reorder_channels(model, x, check=False)
    p = rep.permutations["rnn"]
    h = 10
    rows = torch.cat([g * h + p for g in range(4)])
    for name in ("weight_ih_l1_reverse", "weight_hh_l0", "bias_hh_l1"):
        want = getattr(old.rnn, name)[rows]
        if name.startswith("weight_hh"):
            want = want[:, p]
        elif name.startswith("weight_ih_l1"):
            want = want[:, torch.cat([p, h + p])]
        assert torch.equal(getattr(model.rnn, name), want), name
    assert torch.equal(model.fc.weight, old.fc.weight[:, torch.cat([p, h + p])])


class _Depthwise(nn.Module):
    def __init__(self, groups: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm1d(8)
        self.dw = nn.Conv1d(8, 8, 3, padding=1, groups=groups)
        self.b2 = nn.BatchNorm1d(8)
        self.pw = nn.Conv1d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.dw(h)))
        return self.fc(torch.relu(self.pw(h)).mean(-1))


def test_depthwise_conv_shares_the_permutation_of_its_input_and_output():
    torch.manual_seed(0)
    model = _Depthwise()
    randomise_norms(model, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 10)
    ref = _out(model, x)
    rep = reorder_channels(model, x, check=False)
    assert "c1, dw" in rep.permutations
    assert _same(ref, _out(model, x))


def test_grouped_conv_and_model_output_are_left_alone_with_the_reason():
    torch.manual_seed(0)
    model = _Depthwise(groups=2)
    x = torch.randn(2, 3, 10)
    ref = _out(model, x)
    rep = reorder_channels(model, x)
    assert "groups=2" in rep.left_alone["c1"] and "groups=2" in rep.left_alone["dw"]
    assert rep.left_alone["fc"] == "it is the model output"
    assert list(rep.permutations) == ["pw"]
    assert _same(ref, _out(model, x))


class _HiddenScale(nn.Module):
    """A per-channel buffer multiplied in forward: the tracer cannot see it. (A module with its own
    parameters is an unknown layer to the tracer, which then leaves everything inside alone.)"""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.register_buffer("scale", torch.linspace(0.1, 3.0, 6))
        self.b = nn.Linear(6, 5)
        self.c = nn.Linear(5, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)) * self.scale)))


def test_the_output_check_restores_widths_the_tracer_cannot_see():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    model = _HiddenScale()
    blind = copy.deepcopy(model)
    ref = _out(blind, x)
    reorder_channels(blind, x, check=False)
    assert not _same(ref, _out(blind, x))  # without the check the hidden scale breaks the function
    rep = reorder_channels(model, x)
    assert _same(ref, _out(model, x)) and rep.max_output_change <= ATOL
    assert "changed the output" in rep.left_alone["a"]
    assert "b" in rep.permutations  # the other width is still reordered


class _SharedLayer(nn.Module):
    """One Linear applied to two different widths: both widths must take one permutation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
        self.shared = nn.Linear(6, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        u = torch.relu(self.shared(torch.relu(self.a(x))))
        v = torch.relu(self.shared(torch.relu(self.b(x[:, :3]))))
        return self.out(u * v)


def test_a_layer_called_twice_couples_the_widths_it_reads_and_writes():
    torch.manual_seed(0)
    model = _SharedLayer()
    x = torch.randn(5, 4)
    ref = _out(model, x)
    rep = reorder_channels(model, x, check=False)
    assert set(rep.permutations) == {"a, b", "shared"}
    assert _same(ref, _out(model, x))


def test_residual_with_the_input_is_left_alone():
    class InputResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x) + x))

    model = InputResidual()
    rep = reorder_channels(model, torch.randn(3, 6))
    assert "no layer produced" in rep.left_alone["a"] and not rep.permutations


def test_taylor_scores_reach_the_mel_bands():
    from slimtrain.apps.vad.models import build_vad_model

    torch.manual_seed(0)
    model = build_vad_model("crnn", n_mels=12, conv1=8, conv2=8, hidden=8)
    x = torch.randn(2, 800)
    ref = _out(model, x)
    s = channel_scores(model, x, "taylor", batches=[x], loss_fn=lambda y: y.pow(2).mean())
    assert (s["frontend"] > 0).all()
    rep = reorder_channels(model, x, "taylor", batches=[x], loss_fn=lambda y: y.pow(2).mean())
    assert "frontend" in rep.permutations and _same(ref, _out(model, x))


def test_bad_calls_raise_named_errors():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    with pytest.raises(ReorderError, match="score must be one of"):
        reorder_channels(model, x, "random")
    with pytest.raises(ReorderError, match="needs batches"):
        reorder_channels(model, x, "taylor")
    with pytest.raises(ReorderError, match="not modules of this model"):
        reorder_channels(model, x, exclude=["nope"])
    with pytest.raises(ReorderError, match="scalar"):
        reorder_channels(model, x, "taylor", batches=[x], loss_fn=lambda y: y)
    rep = reorder_channels(model, x, exclude=["0"])
    assert rep.left_alone["0"] == "excluded" and not rep.permutations
    slimtrain.make_dynamic(model, x)
    with pytest.raises(ReorderError, match="before make_dynamic"):
        reorder_channels(model, x)


def test_make_dynamic_after_reordering_keeps_the_important_channels():
    """8 of 64 hidden units carry the function; cut to 8, only the reordered model keeps them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    important = torch.randperm(64)[:8]
    with torch.no_grad():
        mask = torch.full((64,), 0.02)
        mask[important] = 1.0
        net[0].weight.mul_(mask[:, None])
        net[2].weight.mul_(mask[None, :])
    x = torch.randn(256, 10)
    ref = _out(net, x)
    errors = {}
    for reorder in (False, True):
        m = copy.deepcopy(net)
        if reorder:
            rep = reorder_channels(m, x)
            assert set(rep.permutations["0"][:8].tolist()) == set(important.tolist())
        slimtrain.make_dynamic(m, x, min_channels=1)
        for d in _helpers.dcls(m).values():
            d.set_width(8)
        small = slimtrain.export(m)
        errors[reorder] = (_out(small, x) - ref).pow(2).mean().item() / ref.pow(2).mean().item()
    assert errors[True] < 0.01 < errors[False]


def _load_example():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "shrink_trained.py"
    spec = importlib.util.spec_from_file_location("shrink_trained", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shrink_trained_example_reorder_then_finetune():
    """The example's path on a small trained synthetic student: the magnitude order keeps the units that
    matter (cutting to the teacher's 8 units costs far less), and DCL fine-tuning then shrinks the width
    and exports exactly (asserted inside finetune)."""
    ex = _load_example()
    from slimtrain.tasks.synthetic import SyntheticConfig, make_data

    cfg = SyntheticConfig(hidden=64, n_train=2048, n_val=64, n_test=1024, batch_size=64, kappa_min=1 / 64)
    data = make_data(cfg)
    trained = ex.train_full(cfg, data, epochs=20, seed=0, lr=1e-2)
    full = ex.test_nmse(trained, data)
    plain = ex.cut(trained, data, 8)
    m = copy.deepcopy(trained)
    ex.reorder(m, data, "magnitude")
    assert ex.test_nmse(m, data) == pytest.approx(full, rel=1e-4, abs=1e-6)  # reordering alone changes nothing
    ordered = ex.cut(m, data, 8)
    assert ordered < 0.5 * plain
    res = ex.finetune(m, data, cfg, alpha=1.0, epochs=3, seed=0, lr=1e-3, width_lr=0.1)
    assert res["width"] <= cfg.hidden // 2 and res["macs"] < 0.5 * cfg.hidden * (cfg.in_dim + cfg.out_dim)
    assert res["nmse"] < 0.1


def test_make_dynamic_reorder_option_is_reorder_channels_first():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 2))
    x = torch.randn(4, 6)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    slimtrain.reorder_channels(a, x, score="magnitude")
    slimtrain.make_dynamic(a, x, kappa_min=0.25)
    slimtrain.make_dynamic(b, x, kappa_min=0.25, reorder="magnitude")
    for m in (a, b):
        for d in m.modules():
            if isinstance(d, slimtrain.DynamicWidth):
                d.set_width(0.5 * d.num_channels)
        m.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.allclose(b(x), base(x))  # cut to half width: a different, smaller model
    with pytest.raises(slimtrain.GraphError, match="reorder must be 'magnitude'"):
        slimtrain.make_dynamic(copy.deepcopy(base), x, reorder="random")
