"""Coverage: channels-last permutes, learned scales, token concat/split, SE gates, embeddings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimtrain
from _helpers import count_macs, n_params


def _check(m: nn.Module, x, widths: dict[str, float], n_dynamic: int):
    """Train a step, set widths, export; the exported model equals the eval model and its cost is counted."""
    plan = slimtrain.width_report(m)
    assert len(plan.dynamic) == n_dynamic, str(plan)
    m.train()
    out = m(x)
    (out.float().pow(2).mean() + slimtrain.model_cost(m).macs * 1e-9).backward()
    for name, k in widths.items():
        m.get_submodule(name).set_width(k)
    m.eval()
    small = slimtrain.export(m)
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    cost = slimtrain.model_cost(m, hard=True)
    assert cost.macs.item() == pytest.approx(count_macs(small, x) / x.shape[0], rel=1e-6)
    assert cost.params.item() == pytest.approx(n_params(small), rel=1e-6)
    return small


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> channels-last permute -> LayerNorm -> Linear -> GELU -> Linear -> layer scale -> permute."""

    def __init__(self, c: int = 8, hidden: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = self.stem(x)
        y = self.dw(h).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(nn.functional.gelu(self.pw1(self.norm(y))))
        h = h + y.permute(0, 3, 1, 2)
        return self.head(h.mean((2, 3)))


def test_convnext_block_channels_last_and_layer_scale():
    torch.manual_seed(0)
    m = ConvNeXtBlock()
    x = torch.randn(2, 3, 8, 8)
    slimtrain.make_dynamic(m, x, kappa_min=0.25)
    small = _check(m, x, {"stem.dcl": 5, "pw1.dcl": 10.5}, 2)
    assert small.gamma.shape == (5,) and small.dw.groups == small.dw.in_channels == 5
    assert (small.pw1.in_features, small.pw1.out_features, small.norm.normalized_shape) == (5, 11, (5,))


class SE(nn.Module):
    """Conv -> squeeze-and-excitation gate (broadcast multiply) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 12, 3, padding=1)
        self.sq = nn.Conv1d(12, 2, 1)
        self.ex = nn.Conv1d(2, 12, 1)
        self.c2 = nn.Conv1d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        g = torch.sigmoid(self.ex(torch.relu(self.sq(h.mean(-1, keepdim=True)))))
        h = h * g
        return self.fc(torch.relu(self.c2(h)).mean(-1))


def test_squeeze_excitation_gate_ties_its_width_and_floor_is_one():
    torch.manual_seed(0)
    m = SE()
    x = torch.randn(3, 3, 10)
    slimtrain.make_dynamic(m, x, kappa_min=0.25)
    plan = slimtrain.width_report(m)
    gate = next(e for e in plan.entries if "ex" in e.producers)
    assert set(gate.producers) == {"c1", "ex"} and gate.dynamic
    assert m.sq.dcl.min_width == 1.0  # 2 * 0.25 < 1 -> floor 1
    small = _check(m, x, {"c1.dcl": 7, "sq.dcl": 1, "c2.dcl": 4}, 3)
    assert (small.ex.out_channels, small.sq.out_channels, small.c2.in_channels) == (7, 1, 7)


class TinyViT(nn.Module):
    """Patch embedding + class token concat on the token axis + position embedding, pre-norm MLP block."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.patch = nn.Conv1d(2, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d))
        self.ln = nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, 20), nn.Linear(20, d)
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.patch(x).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.fc2(torch.relu(self.fc1(self.ln(t))))
        first, rest = t.split([1, t.shape[1] - 1], dim=1)
        return self.head(self.ln_out(first[:, 0] + rest.mean(1)))


def test_class_token_concat_position_embedding_and_token_split():
    torch.manual_seed(0)
    m = TinyViT()
    x = torch.randn(2, 2, 16)
    slimtrain.make_dynamic(m, x)
    small = _check(m, x, {"patch.dcl": 7, "fc1.dcl": 9}, 2)
    assert small.cls.shape == (1, 1, 7) and small.pos.shape == (1, 5, 7) and small.head.in_features == 7


def test_embedding_width_is_dynamic():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(30, 10), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randint(0, 30, (4, 6))
    slimtrain.make_dynamic(m, x)
    small = _check(m, x, {"0.dcl": 4, "1.dcl": 5}, 2)
    assert small[0].embedding_dim == 4 and small[0].weight.shape == (30, 4)


def test_channel_concat_into_a_linear_is_dynamic_and_into_a_layernorm_stays_fixed():
    class Cat(nn.Module):
        def __init__(self, norm: bool) -> None:
            super().__init__()
            self.a, self.b, self.c, self.o = nn.Linear(4, 6), nn.Linear(4, 5), nn.Linear(11, 7), nn.Linear(7, 2)
            self.ln = nn.LayerNorm(11) if norm else nn.Identity()

        def forward(self, x):
            return self.o(torch.relu(self.c(self.ln(torch.cat([self.a(x), self.b(x)], dim=-1)))))

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    m = Cat(norm=False)
    slimtrain.make_dynamic(m, x)
    small = _check(m, x, {"a.dcl": 4, "b.dcl": 2, "c.dcl": 3}, 3)
    assert small.c.in_features == 6
    m = Cat(norm=True)
    slimtrain.make_dynamic(m, x)
    plan = slimtrain.width_report(m)
    assert [e.dynamic for e in plan.entries] == [False, False, True, False]
    assert "layer 'ln' (ln) reads a concatenation along the channel axis" in plan.entries[0].reason


class DenseCat(nn.Module):
    """DenseNet/U-Net style: concatenations along the channel axis, one with the model input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 6, 3, padding=1)
        self.c3 = nn.Conv1d(3 + 8 + 6, 10, 1)
        self.fc = nn.Linear(10 + 6, 2)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        h = torch.relu(self.c3(torch.cat([x, a, b], dim=1)))
        return self.fc(torch.cat([h.mean(-1), b.amax(-1)], dim=1))


def test_concatenation_along_the_channel_axis_keeps_each_block_dynamic():
    torch.manual_seed(0)
    m = DenseCat()
    x = torch.randn(3, 3, 9)
    slimtrain.make_dynamic(m, x)
    small = _check(m, x, {"c1.dcl": 5, "c2.dcl": 2.5, "c3.dcl": 4}, 3)
    assert (small.c3.in_channels, small.fc.in_features) == (3 + 5 + 3, 4 + 3)
    # the kept columns of c3 are the input's 3, then the first 5 of a's 8, then the first 3 of b's 6
    cols = torch.cat([torch.arange(3), 3 + torch.arange(5), 11 + torch.arange(3)])
    assert torch.equal(small.c3.weight, m.c3.weight[:4][:, cols])
