"""make_dynamic's layer selection and its errors (each names the layers or op involved)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimtrain
from slimtrain.core.attach import attached_dcl
from slimtrain import GraphError, LossConfigError, WidthError
from _helpers import ResIdentity, TorchTransformer, dcls


class Scale(nn.Module):
    """A module with its own parameter that the tracer does not know."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.w


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.block = nn.Sequential(Scale(16))
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(self.block(torch.relu(self.fc1(x))))


class InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(x + torch.relu(self.fc(x)))


class OpBetween(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 2)
        self.hid = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc2(self.op(self.fc1(x)))


def mlp():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


X4 = torch.randn(3, 4)


def test_unsupported_module_reading_dynamic_width_is_named():
    m = WithCustom()
    with pytest.raises(GraphError, match=r"unsupported layer 'block\.0' \(Scale\) reads the dynamic width of 'fc1'"):
        slimtrain.make_dynamic(m, X4, layers=["fc1"])
    # by default fc1 is silently left at full width (nothing else can shrink: error says so)
    with pytest.raises(GraphError, match="no layer to make dynamic"):
        slimtrain.make_dynamic(WithCustom(), X4)


def test_residual_with_model_input_is_refused():
    with pytest.raises(GraphError, match=r"'fc' is joined by '(__)?add'.*model input"):
        slimtrain.make_dynamic(InputResidual(), torch.randn(2, 8), layers=["fc"])


def test_output_layer_cannot_be_dynamic():
    with pytest.raises(GraphError, match=r"output width of '4' is the model's output"):
        slimtrain.make_dynamic(mlp(), X4, layers=["4"])


@pytest.mark.parametrize("op,name", [
    (lambda h: torch.sort(h, dim=-1).values, "sort"),
    (lambda h: F.softmax(h, dim=-1), "softmax"),
    (lambda h: torch.cumsum(h, dim=-1), "cumsum"),
    (lambda h: h + 1.0, "add"),  # a constant offset makes cut channels non-zero
    (lambda h: h[:, [3, 1, 2] + list(range(3, 16))[:13]], "indexing"),
])
def test_unknown_op_between_layers_is_named(op, name):
    m = OpBetween(op)
    with pytest.raises(GraphError, match=rf"operation '{name}[^']*'.*'fc1'"):
        slimtrain.make_dynamic(m, X4, layers=["fc1"])


def test_unknown_op_is_skipped_by_default():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(torch.relu(self.b(F.softmax(self.a(x), dim=-1))))

    m = slimtrain.make_dynamic(M(), X4)
    assert list(slimtrain.dynamic_widths(m)) == ["b.dcl"]


def test_unknown_layer_name_lists_the_names():
    with pytest.raises(GraphError, match=r"'nonexistent' is not a supported layer.*\['0', '2', '4'\]"):
        slimtrain.make_dynamic(mlp(), X4, layers=["nonexistent"])
    with pytest.raises(GraphError, match="module names or types"):
        slimtrain.make_dynamic(mlp(), X4, layers=[3])


def test_layers_by_type_and_exclude():
    m = slimtrain.make_dynamic(mlp(), X4, layers=[nn.Linear], exclude=["4"])
    assert sorted(slimtrain.dynamic_widths(m)) == ["0.dcl", "2.dcl"]
    m = slimtrain.make_dynamic(mlp(), X4, exclude=["2"])
    assert sorted(slimtrain.dynamic_widths(m)) == ["0.dcl"]
    with pytest.raises(GraphError, match="all were excluded"):
        slimtrain.make_dynamic(mlp(), X4, exclude=["0", "2"])


def test_default_selection_skips_output_and_attention_projections():
    m = TorchTransformer()
    x = torch.randn(2, 5, 6)
    slimtrain.make_dynamic(m, x)
    names = set(slimtrain.dynamic_widths(m))
    assert names == {"inp.dcl", "blk.ff1.dcl", "blk.q.dcl"}  # model width, feed-forward width, head count
    assert isinstance(m.blk, slimtrain.TransformerBlock)
    for p in ("blk.q", "blk.k", "blk.v", "fc"):
        assert isinstance(m.get_submodule(p), nn.Linear), p
    # the residual stream is one width: out and ff2 share inp's DCL
    assert m.blk.out.dcl is m.inp.dcl and m.blk.ff2.dcl is m.inp.dcl
    assert isinstance(m.blk.norm1, slimtrain.MaskedLayerNorm)
    # q, k and v share the head count (4 heads of 4)
    assert m.blk.k.dcl is m.blk.q.dcl and m.blk.v.dcl is m.blk.q.dcl and m.blk.q.dcl.num_channels == 4


def test_residual_shares_one_dcl():
    m = slimtrain.make_dynamic(ResIdentity(), torch.randn(2, 3, 8, 8))
    assert m.b3.dcl is m.b1.dcl
    assert len(dcls(m)) == 2


def test_batchnorm_after_a_residual_add_is_refused_with_advice():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)
            self.c2, self.b2 = nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8)
            self.c3 = nn.Conv1d(8, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            h = torch.relu(self.b1(self.c1(x)))
            h = torch.relu(self.b2(h + self.c2(h)))  # BatchNorm after the add: cut channels become constants
            return self.fc(torch.relu(self.c3(h)).mean(-1))

    m = M()
    with pytest.raises(GraphError, match=r"layer 'c3' reads the width of 'c1', 'c2' after a BatchNorm.*layer -> BatchNorm"):
        slimtrain.make_dynamic(m, torch.randn(2, 3, 6), layers=["c1"])
    # by default that width stays full and only c3 shrinks
    slimtrain.make_dynamic(m, torch.randn(2, 3, 6))
    assert list(slimtrain.dynamic_widths(m)) == ["c3.dcl"]


def test_batchnorm_after_activation_gets_the_dcl_after_it():
    """Linear -> ReLU -> BatchNorm: the DCL goes after the BatchNorm and export is still exact."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with torch.no_grad():
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.5, 2)
    slimtrain.make_dynamic(m, X4)
    assert type(m[2]) is nn.BatchNorm1d and attached_dcl(m[2]) is m[2].dcl
    m[2].dcl.set_width(3)
    m.eval()
    small = slimtrain.export(m)
    assert small[2].num_features == 3 and small[3].in_features == 3
    with torch.no_grad():
        assert (m(X4) - small(X4)).abs().max().item() <= 1e-5


def test_failed_make_dynamic_leaves_the_model_unchanged():
    """After an error the advice (exclude the layer) can be followed on the same model."""
    m = mlp()
    before = [type(c) for c in m.modules()]
    with pytest.raises(GraphError, match="output width of '4'"):
        slimtrain.make_dynamic(m, X4, layers=["2", "4"])
    assert [type(c) for c in m.modules()] == before
    slimtrain.make_dynamic(m, X4, layers=["2"])
    assert list(slimtrain.dynamic_widths(m)) == ["2.dcl"]
    t = TorchTransformer()
    with pytest.raises(GraphError):
        slimtrain.make_dynamic(t, torch.randn(2, 5, 6), layers=["fc"])
    assert isinstance(t.blk, nn.TransformerEncoderLayer)


def test_depthwise_conv_after_a_dynamic_layer():
    """A depthwise conv ties its input and output width (depthwise-separable block); a grouped conv
    that is not depthwise keeps the widths around it fixed, and asking for them is an error."""
    def net(groups=8):
        return nn.Sequential(nn.Conv1d(4, 8, 1), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Conv1d(8, 8, 3, groups=groups, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Conv1d(8, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 10, 2))
    x = torch.randn(3, 4, 10)
    m = slimtrain.make_dynamic(net(), x)
    assert list(slimtrain.dynamic_widths(m)) == ["1.dcl", "6.dcl"]
    assert m[4].dcl is m[1].dcl  # one width through the depthwise conv
    m[1].dcl.set_width(5)
    m.eval()
    small = slimtrain.export(m)
    assert (small[0].out_channels, small[3].in_channels, small[3].groups, small[6].in_channels) == (5, 5, 5, 5)
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    m = slimtrain.make_dynamic(net(groups=4), x)
    assert list(slimtrain.dynamic_widths(m)) == ["6.dcl"]
    with pytest.raises(GraphError, match=r"grouped conv '3' \(groups=4\)"):
        slimtrain.make_dynamic(net(groups=4), x, layers=["0"])


def test_make_dynamic_misuse():
    m = slimtrain.make_dynamic(mlp(), X4)
    with pytest.raises(GraphError, match="already applied"):
        slimtrain.make_dynamic(m, X4)
    with pytest.raises(GraphError, match="either kappa_min or min_channels"):
        slimtrain.make_dynamic(mlp(), X4, kappa_min=0.5, min_channels=2)
    with pytest.raises(WidthError, match="kappa_min must be in"):
        slimtrain.make_dynamic(mlp(), X4, kappa_min=0.0)
    # nn.TransformerEncoder is no longer refused: see tests/test_plan.py::test_transformer_encoder_container


def test_bounds_reach_every_dcl():
    m = slimtrain.make_dynamic(mlp(), X4, kappa_min=0.25)
    assert [(d.min_width, d.max_width) for d in dcls(m).values()] == [(4.0, 16.0), (2.0, 8.0)]
    m = slimtrain.make_dynamic(mlp(), X4, min_channels=10)
    assert [(d.min_width, d.max_width) for d in dcls(m).values()] == [(10.0, 16.0), (8.0, 8.0)]


def test_non_dynamic_model_errors():
    m = mlp()
    with pytest.raises(GraphError, match="make_dynamic"):
        slimtrain.model_cost(m)
    with pytest.raises(GraphError, match="make_dynamic"):
        slimtrain.export(m)
    with pytest.raises(GraphError, match="make_dynamic"):
        slimtrain.TradeoffLoss(m, alpha=0.1)
    with pytest.raises(GraphError, match="make_dynamic"):
        slimtrain.dynamic_widths(m)
    with pytest.raises(GraphError, match="make_dynamic"):
        slimtrain.get_graph(m)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=-0.1), "alpha must be a finite number >= 0"),
    (dict(alpha=float("nan")), "alpha must be"),
    (dict(budget=0), "budget must be a positive number"),
    (dict(budget=-5.0), "budget must be a positive number"),
    (dict(budget=float("inf")), "budget must be"),
    (dict(metric="joules"), "metric must be 'flops', 'macs', 'params' or 'latency', got 'joules'"),
    (dict(mu=-1.0), "mu must be"),
    (dict(lr_mu=-1.0), "lr_mu must be"),
    (dict(warmup_steps=-1), "warmup_steps must be >= 0"),
])
def test_loss_config_errors(kwargs, match):
    m = slimtrain.make_dynamic(mlp(), X4)
    with pytest.raises(LossConfigError, match=match):
        slimtrain.TradeoffLoss(m, **kwargs)


@pytest.mark.parametrize("excluded", ["c1", "c3"])
def test_excluding_one_branch_of_a_residual_keeps_the_joined_width_full(excluded):
    m = slimtrain.make_dynamic(ResIdentity(), torch.randn(2, 3, 8, 8), exclude=[excluded])
    assert list(slimtrain.dynamic_widths(m)) == ["b2.dcl"]
    assert isinstance(m.b1, nn.BatchNorm2d) and isinstance(m.b3, nn.BatchNorm2d)


def test_reshape_that_splits_a_width_over_two_axes_is_skipped():
    """Linear(24) viewed as (4 channels x 6 positions) cannot shrink by output features: the literal 4 in the
    user's view would not follow a cut (heads are split only where the view says -1 or the module holds the
    head count in an attribute that export updates)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.conv, self.out = nn.Linear(6, 24), nn.Conv1d(4, 5, 3), nn.Linear(5, 2)

        def forward(self, x):
            return self.out(torch.relu(self.conv(torch.relu(self.fc(x)).view(-1, 4, 6))).amax(-1))

    x = torch.randn(3, 6)
    assert list(slimtrain.dynamic_widths(slimtrain.make_dynamic(M(), x))) == ["conv.dcl"]
    with pytest.raises(GraphError, match=r"operation 'reshape' on the dynamic width of 'fc'"):
        slimtrain.make_dynamic(M(), x, layers=["fc"])


def test_batchnorm_after_a_recurrent_layer_keeps_its_width_full():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn = nn.Linear(3, 6), nn.GRU(6, 8, batch_first=True)
            self.bn, self.out = nn.BatchNorm1d(8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.rnn(torch.relu(self.inp(x)))[0]
            return self.out(torch.relu(self.bn(h.transpose(1, 2))).transpose(1, 2))

    m = slimtrain.make_dynamic(M(), torch.randn(2, 5, 3))
    assert list(slimtrain.dynamic_widths(m)) == ["inp.dcl"]
