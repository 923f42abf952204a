"""Weight-normalised layers (issue 24, section 2): their widths are dynamic, export cuts g and v consistently
(exact for any weight-norm dim, the new parametrization and the old hook alike) and keeps the weight norm, and
the cost matches torch's flop counter."""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm as wn_new

import slimtrain
from slimtrain.train.training import make_optimizer
from slimtrain.core.weightnorm import cut_weight, weight_norm_dim

from _archs import Codec
from _helpers import count_macs, n_params


def wn_old(m: nn.Module, dim=0) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of the parametrization
        return torch.nn.utils.weight_norm(m, dim=dim)


def _shrunk(model: nn.Module, x: torch.Tensor, frac: float = 0.6) -> nn.Module:
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    for d in (model.get_submodule(n) for n in slimtrain.get_graph(model).dcls.values()):
        d.set_width(frac * d.num_channels)
    return model.eval()


def _is_weight_normed(m: nn.Module) -> bool:
    return weight_norm_dim(m) is not None


@pytest.mark.parametrize("style", ["parametrization", "hook"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_normed_codec_shrinks_and_exports_exactly(style, dim):
    torch.manual_seed(0)
    model = Codec(wn_new if style == "parametrization" else wn_old, dim)
    x = torch.randn(2, 1, 64)
    _shrunk(model, x)
    plan = slimtrain.width_report(model)
    dynamic = {p for e in plan.dynamic for p in e.producers}
    assert {"stem", "res1", "down"} <= dynamic, str(plan)
    small = slimtrain.export(model)
    with torch.no_grad():
        err = float((model(x) - small(x)).abs().max())
    assert err <= 1e-5
    for name in ("stem", "res1", "res2", "down", "proj"):
        conv = small.get_submodule(name)
        assert _is_weight_normed(conv), name  # still g * v / ||v||
        if style == "parametrization":
            assert parametrize.is_parametrized(conv, "weight")
            assert conv.parametrizations.weight.original1.shape == conv.weight.shape
        else:
            assert conv.weight_v.shape == conv.weight.shape
    assert small.stem.out_channels == 10 and small.stem.weight.shape[0] == 10  # ceil(0.6 * 16)
    assert small.down.in_channels == 10 and small.down.out_channels == 15
    cost = slimtrain.model_cost(model, hard=True)
    assert float(cost.macs) * x.shape[0] == pytest.approx(count_macs(small, x), rel=1e-6)
    assert float(cost.params) == pytest.approx(n_params(small), rel=1e-6)


def test_weight_normed_widths_train_down():
    """TradeoffLoss builds its cost over weight-normed layers and the widths move."""
    torch.manual_seed(0)
    model, x = Codec(), torch.randn(2, 1, 64)
    slimtrain.make_dynamic(model, x, kappa_min=0.25)
    objective = slimtrain.TradeoffLoss(model, alpha=4.0)
    opt = make_optimizer(model, lr=1e-3, width_lr=0.1)
    before = slimtrain.dynamic_widths(model)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        objective(model(x).pow(2).mean()).backward()
        opt.step()
    after = slimtrain.dynamic_widths(model)
    assert all(after[k] < before[k] for k in before)


def test_other_parametrizations_stay_fixed_with_the_reason():
    class Orth(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = torch.nn.utils.parametrizations.orthogonal(nn.Linear(8, 8))
            self.c = nn.Linear(8, 8)
            self.d = nn.Linear(8, 2)

        def forward(self, x):
            return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))

    model = Orth()
    plan = slimtrain.plan_widths(model, torch.randn(2, 8))
    fixed = {p: e.reason for e in plan.fixed for p in e.producers}
    assert "_Orthogonal" in fixed["a"] and "weight_norm" in fixed["a"]
    assert "c" in {p for e in plan.dynamic for p in e.producers}


@settings(max_examples=40, deadline=None)
@given(out_c=st.integers(1, 6), in_c=st.integers(1, 6), k=st.integers(1, 3), dim=st.sampled_from([0, 1, 2, None]),
       keep_out=st.integers(1, 6), keep_in=st.integers(1, 6), style=st.sampled_from(["new", "old"]),
       seed=st.integers(0, 1000))
def test_cut_weight_equals_the_cut_of_the_weight(out_c, in_c, k, dim, keep_out, keep_in, style, seed):
    """For any dim of the norm and any kept rows/columns: the cut layer's g * v / ||v|| is the full weight, cut."""
    torch.manual_seed(seed)
    conv = nn.Conv1d(in_c, out_c, k)
    conv = wn_new(conv, dim=dim) if style == "new" else wn_old(conv, dim=dim)
    d = -1 if dim is None else dim

    def weight() -> torch.Tensor:
        return conv.weight if style == "new" else torch._weight_norm(conv.weight_v, conv.weight_g, d)

    with torch.no_grad():
        full = weight().clone()
    rows = torch.randperm(out_c)[:min(keep_out, out_c)].sort().values
    cols = torch.randperm(in_c)[:min(keep_in, in_c)].sort().values
    cut_weight(conv, {0: rows, 1: cols})
    with torch.no_grad():
        assert torch.allclose(weight(), full[rows][:, cols], atol=1e-6, rtol=1e-5)
    assert weight_norm_dim(conv) == d


@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_reordering_permutes_weight_normed_layers_exactly(style):
    """A permutation leaves every norm as it was: g and v are permuted like the weight, the output is kept."""
    torch.manual_seed(0)
    model, x = Codec(wn_new if style == "parametrization" else wn_old).eval(), torch.randn(2, 1, 64)
    with torch.no_grad():
        y = model(x)
    rep = slimtrain.reorder_channels(model, x, "magnitude")
    assert {"stem, res2", "down"} <= set(rep.permutations), rep.left_alone
    assert any(not torch.equal(p, torch.arange(len(p))) for p in rep.permutations.values())
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)
    assert _is_weight_normed(model.stem) and _is_weight_normed(model.down)
