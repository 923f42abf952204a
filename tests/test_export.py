"""export(model) is exactly the DCL model in eval mode, cut to ceil(K) widths."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain.core.attach import bound_width
from _helpers import WRAPPERS, ZOO, Recurrent, build, count_macs, dcls, first, n_params


def _draw_widths(data, model):
    """Random widths for every DCL: integers, fractions, and near-integers (within 1e-4)."""
    chosen = {}
    for name, d in dcls(model).items():
        kind = data.draw(st.sampled_from(["int", "frac", "near"]), label=f"kind[{name}]")
        lo, hi = d.min_width, d.max_width
        if kind == "int":
            k = float(data.draw(st.integers(math.ceil(lo), math.floor(hi)), label=f"K[{name}]"))
            expect = int(k)
        elif kind == "near":
            base = data.draw(st.integers(math.ceil(lo), math.floor(hi)), label=f"K[{name}]")
            delta = data.draw(st.sampled_from([-5e-5, 5e-5]), label=f"delta[{name}]")
            k = min(max(base + delta, lo), hi)
            expect = base
        else:
            k = data.draw(st.floats(lo, hi), label=f"K[{name}]")
            if abs(k - round(k)) < 2e-3:
                k = float(round(k))
            expect = math.ceil(k)
        d.set_width(k)
        chosen[name] = expect
    return chosen


@pytest.mark.parametrize("arch", sorted(ZOO))
@settings(max_examples=20)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_export_equals_eval_model(arch, data, seed):
    _, model, x = build(arch, seed)
    expect = _draw_widths(data, model)
    assert {n: d.hard_width for n, d in dcls(model).items()} == expect
    model.eval()
    with torch.no_grad():
        y = first(model(x))
    small = slimtrain.export(model)
    with torch.no_grad():
        ys = first(small(x))
    assert ys.shape == y.shape
    assert (y - ys).abs().max().item() <= 1e-5
    # exact parameter count of the cut model, from the analytic cost model
    c = slimtrain.model_cost(model, hard=True)
    assert c.params.item() == n_params(small)
    # independent MAC count of the cut model
    assert count_macs(small, x) == pytest.approx(c.macs.item() * x.shape[0], rel=1e-2)
    # no wrapper survives, and the source model is untouched (still dynamic)
    assert not [type(m).__name__ for m in small.modules() if isinstance(m, WRAPPERS)]
    assert any(isinstance(m, slimtrain.DynamicWidth) for m in model.modules())
    assert not small.training


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_full_width_dynamic_model_equals_original(arch):
    """At full width make_dynamic does not change the function (train mode: no noise at K=N)."""
    original, model, x = build(arch, 3)
    for m in (original, model):
        m.train()
    with torch.no_grad():
        a, b = first(original(x)), first(model(x))
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    original.eval(), model.eval()
    with torch.no_grad():
        a, b = first(original(x)), first(model(x))
        e = first(slimtrain.export(model)(x))
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.allclose(a, e, atol=1e-5, rtol=0)


def test_export_cut_layers_have_the_learned_sizes():
    _, model, x = build("mlp_bn", 0)
    ds = dcls(model)
    ds["0.dcl"].set_width(5.3)
    ds["3.dcl"].set_width(7)
    small = slimtrain.export(model)
    assert (small[0].in_features, small[0].out_features) == (10, 6)
    assert (small[2].in_features, small[2].out_features) == (6, 7)
    assert small[3].num_features == 7
    assert (small[5].in_features, small[5].out_features) == (7, 3)
    # the kept rows are the first ones, and the running statistics follow them
    assert torch.equal(small[2].weight, model[2].weight[:7, :6])
    assert torch.equal(small[3].running_var, model[3].running_var[:7])


def test_export_of_flatten_keeps_every_position_of_kept_channels():
    """Conv1d(16->8) -> Flatten -> Linear(48): the Linear keeps columns c*6 + t for c < K."""
    _, model, x = build("conv1d", 0)
    dcls(model)["3.dcl"].set_width(3)
    small = slimtrain.export(model)
    lin = model[6]
    keep = torch.tensor([c * 6 + t for c in range(3) for t in range(6)])
    assert torch.equal(small[6].weight, lin.weight[:, keep])


def test_export_gru_matches_hand_cut_gru():
    """An independently sliced nn.GRU (gate blocks r, z, n) equals the exported one."""
    torch.manual_seed(0)
    m = Recurrent(nn.GRU)
    x = torch.randn(2, 7, 5)
    ref = copy.deepcopy(m)
    slimtrain.make_dynamic(m, x)
    dcls(m)["inp.dcl"].set_width(12)
    dcls(m)["rnn.dcl"].set_width(4)
    m.eval()
    k, hfull = 4, 10
    cut = nn.GRU(12, k, batch_first=True)
    rows = torch.cat([torch.arange(g * hfull, g * hfull + k) for g in range(3)])
    with torch.no_grad():
        cut.weight_ih_l0.copy_(ref.rnn.weight_ih_l0[rows])
        cut.weight_hh_l0.copy_(ref.rnn.weight_hh_l0[rows][:, :k])
        cut.bias_ih_l0.copy_(ref.rnn.bias_ih_l0[rows])
        cut.bias_hh_l0.copy_(ref.rnn.bias_hh_l0[rows])
        want = nn.functional.linear(cut(torch.relu(ref.inp(x)))[0], ref.fc.weight[:, :k], ref.fc.bias)
        got = m(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_export_mel_frontend_slices_the_filterbank():
    _, model, x = build("mel", 0)
    dcls(model)["front.dcl"].set_width(7.5)
    small = slimtrain.export(model)
    assert small.front.n_mels == 8
    assert torch.equal(small.front.fbank, model.front.fbank[:8])
    assert small.c.in_channels == 8


def test_export_does_not_modify_the_model():
    _, model, x = build("res_projection", 1)
    for d in dcls(model).values():
        d.set_width(d.max_width / 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    slimtrain.export(model)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_layernorm_and_tuple_inputs():
    """Linear -> LayerNorm (bound to the width, class kept) -> ..., a model called with two inputs."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln, self.fc2, self.out = nn.Linear(6, 12), nn.LayerNorm(12), nn.Linear(12, 9), nn.Linear(9, 2)

        def forward(self, x, scale):
            h = torch.relu(self.ln(self.fc(x)))
            return self.out(torch.tanh(self.fc2(h * scale)))

    torch.manual_seed(0)
    m = M()
    with torch.no_grad():
        m.ln.weight.uniform_(0.5, 1.5)
        m.ln.bias.normal_()
    x, scale = torch.randn(3, 6), torch.tensor(2.0)
    slimtrain.make_dynamic(m, (x, scale))
    assert type(m.ln) is nn.LayerNorm and bound_width(m.ln) is m.fc.dcl
    m.fc.dcl.set_width(4.2)
    m.fc2.dcl.set_width(3)
    m.eval()
    small = slimtrain.export(m)
    assert type(small.ln) is nn.LayerNorm and small.ln.normalized_shape == (5,)
    with torch.no_grad():
        assert (m(x, scale) - small(x, scale)).abs().max().item() <= 1e-5
    c = slimtrain.model_cost(m, hard=True)
    assert c.params.item() == n_params(small)
    assert c.macs.item() * 3 == count_macs(small, x, scale)
