"""Comparison baselines: torch-pruning to a MAC target and hard-concrete stochastic gates."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain.tasks.baselines import (
    GateBudgetLoss, HardConcreteGate, PruneError, add_gates, expected_cost, export_gated, gates, layer_widths,
    make_gate_optimizer, prune_to_macs,
)

from _helpers import count_macs


class TinyResNet(nn.Module):
    """Conv2d + BatchNorm stack with an identity residual add and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c1, self.b1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.relu(self.b0(self.c0(x)))
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class MelConvGRU(nn.Module):
    """Mel front-end, Conv1d + BatchNorm, GRU and a per-frame Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = slimtrain.MelFrontend(n_mels=20)
        self.c, self.b = nn.Conv1d(20, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.g = nn.GRU(32, 24, batch_first=True)
        self.fc = nn.Linear(24, 2)

    def forward(self, wav):
        h = torch.relu(self.b(self.c(self.mel(wav))))
        out, _ = self.g(h.transpose(1, 2))
        return self.fc(out)


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)


# ----------------------------------------------------------------------------- pruning
def test_prune_resnet_reaches_target_and_counts_agree() -> None:
    torch.manual_seed(0)
    model, x = TinyResNet(), torch.randn(2, 1, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune_to_macs(model, x, 0.4, relative=True, tolerance=0.05)
    full = float(slimtrain.model_cost(model, x).macs)
    assert res.full_macs == pytest.approx(full)
    assert abs(res.macs / (0.4 * full) - 1) <= 0.05
    # torch's own counter on the pruned model (MACs over the batch of 2)
    assert count_macs(res.model, x) / 2 == pytest.approx(res.macs, rel=0.01)
    assert res.model(x).shape == (2, 3)
    assert res.widths["fc"] == 3 and "fc" in res.unpruned
    # residual add: both branches of the sum keep the same width
    assert res.widths["b0"] == res.widths["b2"] < 16
    assert res.widths == layer_widths(res.model)
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])


def test_prune_conv_gru_prunes_hidden_keeps_mel_and_runs_finetune() -> None:
    torch.manual_seed(1)
    model, x = MelConvGRU(), torch.randn(2, 1600)
    calls = []

    def finetune(m: nn.Module, step: int) -> None:
        calls.append((step, m.training, float(slimtrain.model_cost(m.eval(), x).macs)))

    res = prune_to_macs(model, x, 0.35, relative=True, iterative_steps=2, finetune=finetune, tolerance=0.06)
    assert [c[0] for c in calls] == [1, 2] and all(c[1] for c in calls)
    assert calls[0][2] > calls[1][2]  # the first step stops half way (geometrically)
    assert abs(res.relative_macs / 0.35 - 1) <= 0.06
    assert res.widths["g"] < 24 and res.model.g.hidden_size == res.widths["g"]
    assert res.model.g.input_size == res.widths["c"]
    assert res.model.mel.n_mels == 20 and "mel" in res.unpruned
    assert count_macs(res.model, x) / 2 == pytest.approx(res.macs, rel=0.01)
    assert res.model(x).shape == (2, 21, 2)


def test_prune_mel_bands_on_request_and_clear_error_at_the_floor() -> None:
    torch.manual_seed(4)
    model, x = MelConvGRU(), torch.randn(2, 1600)
    kept = prune_to_macs(model, x, 0.5, relative=True)
    floor = 21 * 129 * 20  # MACs per item of the mel filterbank (frames x freqs x bands): not prunable by default
    with pytest.raises(PruneError, match="smallest reachable"):
        prune_to_macs(model, x, 0.5 * floor / kept.full_macs, relative=True)
    res = prune_to_macs(model, x, 0.5 * floor / kept.full_macs, relative=True, prune_mel=True, tolerance=0.1)
    assert res.widths["mel"] < 20 and "mel" not in res.unpruned
    assert res.model.c.in_channels == res.widths["mel"]
    assert count_macs(res.model, x) / 2 == pytest.approx(res.macs, rel=0.01)
    assert res.model(x).shape == (2, 21, 2)


class ConvBiLSTM(nn.Module):
    """Conv1d feeding a bidirectional LSTM: the RNN keeps its hidden size, its input side is pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(8, 32, 3, padding=1)
        self.r = nn.LSTM(32, 12, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(24, 2)

    def forward(self, x):
        out, _ = self.r(torch.relu(self.c(x)).transpose(1, 2))
        return self.fc(out)


def test_prune_bidirectional_lstm_keeps_hidden_prunes_its_input() -> None:
    torch.manual_seed(2)
    model, x = ConvBiLSTM(), torch.randn(2, 8, 10)
    res = prune_to_macs(model, x, 0.7, relative=True, tolerance=0.1)
    assert res.widths["r"] == 12 and "r" in res.unpruned
    assert res.model.r.input_size == res.widths["c"] < 32
    assert res.model(x).shape == (2, 10, 2)
    assert count_macs(res.model, x) / 2 == pytest.approx(res.macs, rel=0.01)


@settings(max_examples=10)
@given(st.sets(st.integers(0, 9), max_size=8), st.sets(st.integers(0, 5), max_size=4))
def test_gru_pruner_cuts_exactly_the_given_units(hidden: set, inputs: set) -> None:
    from slimtrain.tasks.baselines import _gru_standin_pruner, _GRUStandIn

    torch.manual_seed(0)
    gru, x = nn.GRU(6, 10, batch_first=True), torch.randn(2, 5, 6)
    with torch.no_grad():  # units/inputs to be removed no longer influence the others
        gru.weight_hh_l0[:, sorted(hidden)] = 0
        gru.weight_ih_l0[:, sorted(inputs)] = 0
    ref, _ = gru(x)
    keep_h = [i for i in range(10) if i not in hidden]
    keep_in = [i for i in range(6) if i not in inputs]
    pruner, stand = _gru_standin_pruner(), _GRUStandIn(gru)
    pruner.prune_out_channels(stand, sorted(hidden))
    pruner.prune_in_channels(stand, sorted(inputs))
    gru.flatten_parameters()
    assert (gru.hidden_size, gru.input_size) == (len(keep_h), len(keep_in))
    out, _ = gru(x[..., keep_in])
    assert torch.allclose(out, ref[..., keep_h], atol=1e-6)


def test_prune_bad_input_is_clear() -> None:
    model, x = TinyResNet(), torch.randn(2, 1, 12, 12)
    full = float(slimtrain.model_cost(model, x).macs)
    with pytest.raises(PruneError, match="exceeds the full model"):
        prune_to_macs(model, x, 2 * full)
    with pytest.raises(PruneError, match="positive"):
        prune_to_macs(model, x, -1.0)
    with pytest.raises(PruneError, match="iterative_steps"):
        prune_to_macs(model, x, 0.5, relative=True, iterative_steps=0)
    dyn = slimtrain.make_dynamic(TinyResNet(), x)
    with pytest.raises(PruneError, match="plain model"):
        prune_to_macs(dyn, x, 0.5, relative=True)


# ----------------------------------------------------------------------------- gates
@settings(max_examples=15)
@given(st.floats(-4.0, 4.0))
def test_hard_concrete_open_probability_matches_samples(la: float) -> None:
    torch.manual_seed(0)
    g = HardConcreteGate(4000)
    with torch.no_grad():
        g.log_alpha.fill_(la)
    z = g.sample()
    assert bool(((z >= 0) & (z <= 1)).all())
    p = float(g.expected_open().detach()) / 4000
    assert float((z > 0).float().mean()) == pytest.approx(p, abs=0.03)
    g.eval()
    # all gates equal: eval keeps the expected open count, rounded, at least one
    kept = g(torch.ones(1, 4000))
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert int(kept.sum()) == max(1, round(p * 4000))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=40))
def test_eval_gate_keeps_the_expected_open_count_of_largest_log_alpha(las: list) -> None:
    g = HardConcreteGate(len(las))
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor(las))
    m = g.eval().open_mask()
    n = int(m.sum())
    assert n == max(1, round(float(g.expected_open().detach())))
    la = g.log_alpha.detach()
    if n < len(las):  # every kept gate is at least as open as every closed one
        assert float(la[m.bool()].min()) >= float(la[~m.bool()].max())


@pytest.mark.parametrize("kind", ["resnet", "layernorm"])
def test_training_sample_never_closes_a_whole_group(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "resnet":
        model, x = TinyResNet(), torch.randn(2, 1, 12, 12)
    else:  # a LayerNorm over a group with no open channel would divide by zero
        model, x = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2)), torch.randn(4, 8)
    add_gates(model, x)
    for g in gates(model).values():
        with torch.no_grad():
            g.gate.log_alpha.fill_(-20.0)  # every gate closed with probability ~1
    model.train()
    for _ in range(3):
        y = model(x)
        assert bool(torch.isfinite(y).all())
        for g in gates(model).values():
            assert int((g.mask() > 0).sum()) >= 1


def test_eval_gates_are_deterministic_training_gates_are_not() -> None:
    torch.manual_seed(0)
    model, x = TinyResNet(), torch.randn(2, 1, 12, 12)
    add_gates(model, x)
    with torch.no_grad():
        for g in gates(model).values():
            g.gate.log_alpha.normal_(0.0, 1.0)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_budget_gradient_reaches_log_alpha_and_penalty_is_a_hinge() -> None:
    torch.manual_seed(0)
    model, x = MelConvGRU(), torch.randn(2, 1600)
    add_gates(model, x)
    assert set(gates(model)) == {"mel.dcl", "b.dcl", "g.dcl"}  # mel bands are gated too, as DCLs would be
    rel = float(expected_cost(model)[0].detach()) / GateBudgetLoss(model, 0.1, 0.2, relative=True).full
    outside = GateBudgetLoss(model, 0.1, 0.2, relative=True)  # expected cost is above: penalised
    assert outside.penalty().item() > 0
    loss = outside(model(x).pow(2).mean())
    loss.backward()
    for name, g in gates(model).items():
        assert g.gate.log_alpha.grad is not None and float(g.gate.log_alpha.grad.abs().sum()) > 0, name
        assert float(g.gate.log_alpha.grad.sum()) > 0  # descent closes gates
    below = GateBudgetLoss(model, min(1.0, rel + 0.05), 1.0, relative=True)
    assert below.penalty().item() > 0
    inside = GateBudgetLoss(model, rel - 0.05, min(1.0, rel + 0.05), relative=True)
    assert GateBudgetLoss(model, rel - 0.01, min(1.0, rel + 0.05), relative=True, margin=0.4).penalty().item() > 0
    for g in gates(model).values():
        g.gate.log_alpha.grad = None
    pen = inside.penalty()
    assert pen.item() == 0.0
    pen.backward()
    assert all(float(g.gate.log_alpha.grad.abs().sum()) == 0 for g in gates(model).values())
    absolute = GateBudgetLoss(model, rel * inside.full - 1, rel * inside.full + 1, margin=0.0)
    assert absolute.penalty().item() == 0.0


@pytest.mark.parametrize("make", [(TinyResNet, (2, 1, 12, 12)), (MelConvGRU, (2, 1600))])
def test_export_gated_equals_eval_model_and_costs_agree(make) -> None:
    cls, shape = make
    torch.manual_seed(3)
    model, x = cls(), torch.randn(*shape)
    _randomise_bn(model)
    add_gates(model, x)
    with torch.no_grad():
        for g in gates(model).values():
            g.gate.log_alpha.normal_(0.0, 2.0)
    model.eval()
    small = export_gated(model)
    assert not any(isinstance(m, slimtrain.DynamicWidth) for m in small.modules())
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-5
    hard = float(slimtrain.model_cost(model, hard=True).macs)
    assert count_macs(small, x) / 2 == pytest.approx(hard, rel=0.01)
    assert hard < float(slimtrain.model_cost(model, full=True).macs)


def test_short_training_moves_expected_macs_into_interval() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(64, 8)
    y = (x[:, :2].sum(1, keepdim=True) > 0).float()
    add_gates(model, x[:4])
    crit = GateBudgetLoss(model, 0.25, 0.5, relative=True)
    assert crit.last == {} and expected_cost(model)[0].item() / crit.full > 0.5
    opt = make_gate_optimizer(model, lr=0.01, gate_lr=0.05)
    assert [len(g["params"]) for g in opt.param_groups] == [6, 2]  # 3 Linear layers; 2 gated widths
    model.train()
    for _ in range(150):
        opt.zero_grad()
        loss = crit(nn.functional.binary_cross_entropy_with_logits(model(x), y))
        loss.backward()
        opt.step()
    rel = expected_cost(model)[0].item() / crit.full
    assert 0.25 <= rel <= 0.5 + 1e-3, rel
    model.eval()
    small = export_gated(model)
    assert count_macs(small, x) / 64 < 0.75 * crit.full


def test_gate_budget_bad_input() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="add_gates"):
        GateBudgetLoss(model, 0.2, 0.4, relative=True)
    add_gates(model, torch.randn(2, 4))
    with pytest.raises(ValueError, match="low < high"):
        GateBudgetLoss(model, 0.5, 0.25, relative=True)
    with pytest.raises(ValueError, match="metric"):
        GateBudgetLoss(model, 0.2, 0.4, relative=True, metric="joules")
    assert math.isfinite(GateBudgetLoss(model, 0.2, 0.4, relative=True, l0=0.1).penalty().item())
