"""Transposed convolutions and an encoder-masker-decoder separation network (issue 24, section 2): the analytic
MACs equal torch's flop counter (transposed convs over shapes, strides, dilations and groups; the products inside
unknown modules and functional products counted as fixed), PReLU passes widths, and transposed convs are cut
exactly."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain

from _archs import TasNet
from _helpers import count_macs, n_params


@settings(max_examples=40, deadline=None)
@given(data=st.data(), two_d=st.booleans(), groups=st.integers(1, 3), stride=st.integers(1, 3),
       kernel=st.integers(1, 4), dilation=st.integers(1, 2), padding=st.integers(0, 2), batch=st.integers(1, 3),
       bias=st.booleans())
def test_transposed_conv_cost_equals_the_counter(data, two_d, groups, stride, kernel, dilation, padding, batch, bias):
    c_in = groups * data.draw(st.integers(1, 3), label="in per group")
    c_out = groups * data.draw(st.integers(1, 3), label="out per group")
    out_pad = data.draw(st.integers(0, max(0, min(stride, dilation) - 1)), label="output_padding")
    cls = nn.ConvTranspose2d if two_d else nn.ConvTranspose1d
    conv = cls(c_in, c_out, kernel, stride=stride, padding=padding, output_padding=out_pad, groups=groups,
               dilation=dilation, bias=bias)
    size = data.draw(st.integers(3, 7), label="length")
    x = torch.randn(batch, c_in, size, size + 1) if two_d else torch.randn(batch, c_in, size)
    out_len = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + out_pad + 1
    assume(out_len > 0)  # torch refuses an empty output
    cost = slimtrain.model_cost(conv, x)
    assert float(cost.macs) * batch == pytest.approx(count_macs(conv, x), rel=1e-6)
    assert float(cost.params) == n_params(conv)


class UpNet(nn.Module):
    """Conv encoder, two transposed convs (one depthwise) with PReLU between, a conv head."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.enc = nn.Conv1d(2, 16, 5, stride=2, padding=2)
        self.act = nn.PReLU(16)
        self.up1 = nn.ConvTranspose1d(16, 12, 4, stride=2, padding=1)
        if norm:  # HiFi-GAN's up-sampling: a weight-normed transposed conv (g along the input channels)
            self.up1 = torch.nn.utils.parametrizations.weight_norm(self.up1)
        self.act1 = nn.PReLU()
        self.dw = nn.ConvTranspose1d(12, 12, 3, padding=1, groups=12)
        self.head = nn.Conv1d(12, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.dw(self.act1(self.up1(self.act(self.enc(x)))))))


@pytest.mark.parametrize("norm", [False, True])
def test_transposed_convs_shrink_and_export_exactly(norm):
    torch.manual_seed(0)
    model, x = UpNet(norm).eval(), torch.randn(2, 2, 32)
    with torch.no_grad():
        model.act.weight.uniform_(-0.5, 0.5)  # a slope per channel, all different
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    dynamic = {p for e in slimtrain.width_report(model).dynamic for p in e.producers}
    assert {"enc", "up1", "dw"} <= dynamic
    for d in (model.get_submodule(n) for n in slimtrain.get_graph(model).dcls.values()):
        d.set_width(0.55 * d.num_channels)
    small = slimtrain.export(model)
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    assert small.up1.weight.shape == (9, 7, 4) and small.dw.weight.shape == (7, 1, 3) and small.dw.groups == 7
    assert small.act.weight.shape == (9,) and small.act.num_parameters == 9
    cost = slimtrain.model_cost(model, hard=True)
    assert float(cost.macs) * 2 == pytest.approx(count_macs(small, x), rel=1e-6)
    assert float(cost.params) == pytest.approx(n_params(small), rel=1e-6)


@pytest.mark.parametrize("norm", [False, True])
def test_separation_network_cost_equals_the_counter(norm):
    """Within 1e-6 relative (the tolerance of the zoo is 1 %): every product is costed, the decoder's transposed
    conv, the unknown module's conv and the masker's convs; PReLU, gLN and the mask multiply are elementwise
    (no MACs in either count)."""
    torch.manual_seed(0)
    model, x = TasNet(norm=norm).eval(), torch.randn(2, 1, 128)
    full = float(slimtrain.model_cost(model, x).macs) * 2  # read-only, every width at its size
    assert full == pytest.approx(count_macs(model, x), rel=1e-6)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    plan = slimtrain.width_report(model)
    dynamic = {p for e in plan.dynamic for p in e.producers}
    fixed = {p: e.reason for e in plan.fixed for p in e.producers}
    assert "blocks.2.0" in dynamic and "blocks.2.2" in dynamic  # the PReLUs pass the hidden widths
    assert "OwnConv" in fixed["bottleneck"]  # read by a layer slimtrain does not know: fixed, with the reason
    if norm:  # gLN mixes every channel: the width it reads stays fixed, with the reason
        assert "GlobalNorm" in fixed["blocks.0.0"]
    else:
        assert "blocks.0.0" in dynamic
    objective = slimtrain.TradeoffLoss(model, alpha=4.0)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if n.endswith("theta")], lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        objective(model(x).pow(2).mean()).backward()
        opt.step()
    model.eval()
    small = slimtrain.export(model)
    with torch.no_grad():
        assert float((model(x) - small(x)).abs().max()) <= 1e-5
    analytic = float(slimtrain.model_cost(model, hard=True).macs) * 2
    assert analytic < full
    assert analytic == pytest.approx(count_macs(small, x), rel=1e-6)


def test_reordering_leaves_transposed_convs_alone():
    torch.manual_seed(0)
    model, x = UpNet().eval(), torch.randn(2, 2, 32)
    with torch.no_grad():
        y = model(x)
    rep = slimtrain.reorder_channels(model, x, "magnitude")
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)
    assert any("transposed conv" in why for why in rep.left_alone.values()), rep.left_alone
