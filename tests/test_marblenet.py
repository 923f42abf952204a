"""MarbleNet VAD family: size against the paper, one logit per 10 ms frame, every width dynamic, exact export at
random widths, analytic MACs against torch's flop counter."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slimtrain
from slimtrain.apps.vad.models import MarbleNetVAD, build_vad_model

from _helpers import count_macs, n_params, randomise_norms


def test_parameter_count_matches_marblenet_3x2x64():
    # NeMo's marblenet_3x2x64 with 80 mel features: 91.5 k; ours adds an input BatchNorm (160) and has a one-logit
    # head (129 instead of 258): 91,409. With the paper's 64 features: 89,153 (the paper rounds to 88 k)
    assert n_params(build_vad_model("marblenet", n_mels=80)) == 91_409
    assert abs(91_409 - 91_500) / 91_500 < 0.002
    assert n_params(build_vad_model("marblenet", n_mels=64)) == 89_153
    with pytest.raises(ValueError, match="unknown width argument"):
        build_vad_model("marblenet", hidden=3)


def test_one_logit_per_10ms_frame_and_convolutions_are_separable():
    m = build_vad_model("marblenet", n_mels=40).eval()
    assert m(torch.zeros(2, 1600)).shape == (2, 1600 // 80 + 1)
    dw = [c for c in m.modules() if isinstance(c, torch.nn.Conv1d) and c.groups > 1]
    assert len(dw) == 1 + 3 * 2 + 1 and all(c.groups == c.in_channels == c.out_channels for c in dw)
    assert m.epilogue1.depthwise.dilation == (2,) and m.prologue.depthwise.kernel_size == (11,)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_every_width_is_dynamic_export_is_exact_and_cost_matches_torch(seed):
    torch.manual_seed(seed)
    m = MarbleNetVAD(n_mels=24, outer=16, channels=8)
    randomise_norms(m, torch.Generator().manual_seed(seed))
    x = 0.1 * torch.randn(2, 1200, generator=torch.Generator().manual_seed(seed))
    slimtrain.make_dynamic(m, x)
    plan = slimtrain.width_report(m)
    assert len(plan.dynamic) == 10 and len(plan.fixed) == 1  # only the output is fixed
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, slimtrain.DynamicWidth):
            mod.theta.data.fill_(float(0.1 + 0.9 * torch.rand((), generator=g)))
    m.eval()
    small = slimtrain.export(m).eval()
    with torch.no_grad():
        assert torch.allclose(m(x), small(x), atol=1e-5, rtol=0)
    cost = slimtrain.model_cost(m, x, hard=True)
    assert int(round(float(cost.params))) == n_params(small)
    assert float(cost.macs) == pytest.approx(count_macs(small, x) / 2, rel=1e-6)
    for c in small.modules():  # depthwise convs stay depthwise at the cut width
        if isinstance(c, torch.nn.Conv1d) and c.groups > 1:
            assert c.groups == c.in_channels == c.out_channels
