"""The analytic cost model against torch's FlopCounterMode, and its gradient in K."""
from __future__ import annotations

import copy
import math
from functools import partial as P

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import slimtrain
from _helpers import ZOO, build, count_macs, dcls, first, n_params


# ------------------------------------------------------------------ random architectures
class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity (or strided 1x1 projection) shortcut."""

    def __init__(self, conv, bn, c_in, c_out, k, stride):
        super().__init__()
        self.a, self.ba = conv(c_in, c_out, k, stride=stride, padding=k // 2), bn(c_out)
        self.b, self.bb = conv(c_out, c_out, k, padding=k // 2), bn(c_out)
        self.proj = None
        if stride != 1 or c_in != c_out:
            self.proj, self.bp = conv(c_in, c_out, 1, stride=stride), bn(c_out)

    def forward(self, x):
        y = self.bb(self.b(torch.relu(self.ba(self.a(x)))))
        return y + (x if self.proj is None else self.bp(self.proj(x)))


class Net(nn.Module):
    """Layers applied in order, with optional glue ops between them (by name)."""

    def __init__(self, steps):
        super().__init__()
        self.layers = nn.ModuleList([m for m, _ in steps])
        self.glue = [g for _, g in steps]

    def forward(self, x):
        for m, g in zip(self.layers, self.glue):
            x = m(x)
            if isinstance(x, tuple):
                x = x[0]
            if g == "relu":
                x = torch.relu(x)
            elif g == "gelu":
                x = nn.functional.gelu(x)
            elif g == "to_seq":  # (B, C, T) -> (B, T, C)
                x = x.transpose(1, 2)
            elif g == "flatten":
                x = x.flatten(1)
            elif g == "mean_t":  # (B, C, T...) -> (B, C)
                x = x.mean(dim=tuple(range(2, x.dim())))
        return x


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _countable(model: nn.Module) -> nn.Module:
    """FlopCounterMode does not see the CPU fused attention kernel inside nn.MultiheadAttention;
    count torch transformer layers through their (numerically equal, see test_modules)
    TransformerBlock copies, which do the same products with explicit matmuls."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.TransformerEncoderLayer):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, slimtrain.TransformerBlock.from_torch(m))
    return model


@st.composite
def architectures(draw):
    """(steps, input shape) of a random small model with 1-3 hidden layers plus an output layer."""
    family = draw(st.sampled_from(["mlp", "mlp_seq", "conv1d", "conv2d", "rnn", "conv_rnn", "res", "transformer"]))
    depth = draw(st.integers(1, 3))
    width = lambda: draw(st.integers(2, 12))  # noqa: E731
    batch = draw(st.integers(1, 3))
    steps = []
    if family in ("mlp", "mlp_seq"):
        f0 = draw(st.integers(1, 8))
        shape = (batch, f0) if family == "mlp" else (batch, draw(st.integers(1, 4)), f0)
        f = f0
        for _ in range(depth):
            n = width()
            steps.append((P(nn.Linear, f, n, bias=draw(st.booleans())), None))
            if family == "mlp" and batch > 1 and draw(st.booleans()):
                steps.append((P(nn.BatchNorm1d, n), None))
            steps[-1] = (steps[-1][0], draw(st.sampled_from(["relu", "gelu"])))
            f = n
        steps.append((P(nn.Linear, f, draw(st.integers(1, 4))), None))
        return steps, shape
    if family in ("conv1d", "conv2d", "conv_rnn"):
        two_d = family == "conv2d"
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        c0 = draw(st.integers(1, 4))
        size = draw(st.integers(6, 10)) if two_d else draw(st.integers(8, 20))
        shape = (batch, c0, size, size) if two_d else (batch, c0, size)
        c = c0
        for _ in range(depth if family != "conv_rnn" else min(depth, 2)):
            n = width()
            k = draw(st.sampled_from([1, 3] if two_d else [1, 3, 5]))
            s = draw(st.sampled_from([1, 2]))
            p = draw(st.sampled_from([0, k // 2]))
            if _conv_out(size, k, s, p) < 1:
                s, p = 1, k // 2
            size = _conv_out(size, k, s, p)
            steps.append((P(conv, c, n, k, stride=s, padding=p, bias=draw(st.booleans())), "relu"))
            if draw(st.booleans()):
                steps[-1] = (steps[-1][0], None)
                steps.append((P(bn, n), "relu"))
            c = n
        if family == "conv_rnn":
            steps[-1] = (steps[-1][0], "to_seq")
            cls = draw(st.sampled_from([nn.GRU, nn.LSTM]))
            h = width()
            bi = draw(st.booleans())
            steps.append((P(cls, c, h, num_layers=draw(st.integers(1, 2)), batch_first=True, bidirectional=bi), None))
            steps.append((P(nn.Linear, h * (2 if bi else 1), 2), None))
            return steps, shape
        head = draw(st.sampled_from(["flatten", "mean_t"]))
        steps[-1] = (steps[-1][0], head)
        n_in = c * (size ** (2 if two_d else 1)) if head == "flatten" else c
        steps.append((P(nn.Linear, n_in, draw(st.integers(1, 4))), None))
        return steps, shape
    if family == "res":
        two_d = draw(st.booleans())
        conv, bn = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        size = draw(st.integers(4, 8))
        c0 = draw(st.integers(1, 3))
        shape = (batch + 1, c0, size, size) if two_d else (batch + 1, c0, size)
        c = width()
        steps.append((P(conv, c0, c, 3, padding=1), None))
        steps.append((P(bn, c), "relu"))
        for _ in range(min(depth, 2)):
            n = draw(st.sampled_from([c, width()]))
            steps.append((P(ResBlock, conv, bn, c, n, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2]))),
                          "relu"))
            c = n
        steps[-1] = (steps[-1][0], "mean_t")
        steps.append((P(nn.Linear, c, 2), None))
        return steps, shape
    if family == "transformer":
        heads = draw(st.integers(1, 3))
        d = heads * draw(st.integers(1, 4))
        shape = (batch, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        steps.append((P(nn.Linear, shape[-1], d), None))
        for _ in range(min(depth, 2)):
            ff = width()
            nf, act = draw(st.booleans()), draw(st.sampled_from(["relu", "gelu"]))
            if draw(st.booleans()):
                layer = P(nn.TransformerEncoderLayer, d, heads, ff, dropout=0.0, activation=act,
                          batch_first=True, norm_first=nf)
            else:
                layer = P(slimtrain.TransformerBlock, d, heads, ff, dropout=0.0, activation=act,
                          norm_first=nf, causal=draw(st.booleans()))
            steps.append((layer, None))
        steps.append((P(nn.Linear, d, 2), None))
        return steps, shape
    # rnn: Linear -> (GRU|LSTM)* -> Linear, batch first
    f0 = draw(st.integers(1, 6))
    shape = (batch, draw(st.integers(1, 5)), f0)
    f = width()
    steps.append((P(nn.Linear, f0, f), "relu"))
    for _ in range(min(depth, 2)):
        cls = draw(st.sampled_from([nn.GRU, nn.LSTM]))
        h = width()
        bi = draw(st.booleans())
        steps.append((P(cls, f, h, num_layers=draw(st.integers(1, 2)), batch_first=True, bidirectional=bi), None))
        f = h * (2 if bi else 1)
    steps.append((P(nn.Linear, f, 2), None))
    return steps, shape


def _build_random(arch, seed):
    """Instantiate the drawn layer factories under ``seed`` (so a failing example replays exactly)."""
    steps, shape = arch
    torch.manual_seed(seed)
    model = Net([(make(), glue) for make, glue in steps])
    x = torch.randn(shape)
    return model, x


@settings(max_examples=300)
@given(arch=architectures(), seed=st.integers(0, 1000), data=st.data())
def test_cost_matches_flop_counter_on_random_models(arch, seed, data):
    model, x = _build_random(arch, seed)
    original = copy.deepcopy(model)
    slimtrain.make_dynamic(model, x)
    b = x.shape[0]
    # full=True: the cost of the untouched original model
    full = slimtrain.model_cost(model, full=True)
    assert full.macs.item() * b == pytest.approx(count_macs(_countable(original).eval(), x), rel=1e-2)
    assert full.params.item() == n_params(original)
    # random integer widths: the analytic cost equals the counted cost of the exported model
    fractional = data.draw(st.booleans(), label="fractional")
    for name, d in dcls(model).items():
        if fractional:
            d.set_width(data.draw(st.floats(d.min_width, d.max_width), label=name))
        else:
            d.set_width(data.draw(st.integers(math.ceil(d.min_width), math.floor(d.max_width)), label=name))
    hard = slimtrain.model_cost(model, hard=True)
    small = slimtrain.export(model)
    assert hard.macs.item() * b == pytest.approx(count_macs(small, x), rel=1e-2)
    assert hard.params.item() == n_params(small)
    assert hard.flops.item() == 2 * hard.macs.item()
    # at integer widths the continuous cost equals the hard one
    for d in dcls(model).values():
        d.set_width(d.hard_width)
    soft = slimtrain.model_cost(model, hard=False)
    assert soft.macs.item() == pytest.approx(hard.macs.item(), rel=1e-5)
    # export is exact on these models too
    model.eval()
    with torch.no_grad():
        assert (first(model(x)) - first(small(x))).abs().max().item() <= 1e-5


@settings(max_examples=60)
@given(arch=architectures(), seed=st.integers(0, 1000), data=st.data())
def test_soft_cost_is_differentiable_and_increasing(arch, seed, data):
    model, x = _build_random(arch, seed)
    slimtrain.make_dynamic(model, x)
    ds = dcls(model)
    for name, d in ds.items():
        d.set_width(data.draw(st.floats(d.min_width, d.max_width), label=name))
    c = slimtrain.model_cost(model, hard=False)
    assert c.macs.requires_grad and c.params.requires_grad
    grads = torch.autograd.grad(c.macs, [d.theta for d in ds.values()], allow_unused=True)
    for (name, d), g in zip(ds.items(), grads):
        assert g is not None and g.item() > 0, f"d macs / d theta of {name} is {g}"
    # raising any one width raises the cost; the hard cost is the soft cost at ceil(K)
    base = c.macs.item()
    for name, d in ds.items():
        k = float(d.width.detach())
        if k + 0.25 <= d.max_width:
            d.set_width(k + 0.25)
            with torch.no_grad():
                assert slimtrain.model_cost(model, hard=False).macs.item() > base
            d.set_width(k)
    hard = slimtrain.model_cost(model, hard=True).macs.item()
    for d in ds.values():
        d.set_width(d.hard_width)
    assert slimtrain.model_cost(model, hard=False).macs.item() == pytest.approx(hard, rel=1e-5)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_cost_of_zoo_models(arch):
    original, model, x = build(arch, 0)
    b = x.shape[0]
    full = slimtrain.model_cost(model, full=True)
    assert full.macs.item() * b == pytest.approx(count_macs(_countable(original).eval(), x), rel=1e-2)
    assert full.params.item() == n_params(original)
    # a model that is not dynamic can be costed from a sample (read-only trace)
    plain = slimtrain.model_cost(copy.deepcopy(original), x)
    assert plain.macs.item() == pytest.approx(full.macs.item(), rel=1e-6)
    assert plain.params.item() == full.params.item()
    gen = torch.Generator().manual_seed(1)
    for d in dcls(model).values():
        d.set_width(d.min_width + (d.max_width - d.min_width) * torch.rand((), generator=gen).item())
    hard = slimtrain.model_cost(model, hard=True)
    small = slimtrain.export(model)
    assert hard.macs.item() * b == pytest.approx(count_macs(small, x), rel=1e-2)
    soft = slimtrain.model_cost(model, hard=False)
    soft.macs.backward()
    for name, d in dcls(model).items():
        assert d.theta.grad is not None and d.theta.grad.item() > 0, name


def test_linear_cost_by_hand():
    """Linear(10->32) -> Linear(32->24) -> Linear(24->3) on a (B, 5, 10) input, by hand."""
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))
    x = torch.randn(4, 5, 10)
    slimtrain.make_dynamic(model, x)
    model[0].dcl.set_width(6.5)
    model[2].dcl.set_width(10)
    k1, k2 = 6.5, 10.0
    c = slimtrain.model_cost(model, hard=False)
    assert c.macs.item() == pytest.approx(5 * (10 * k1 + k1 * k2 + k2 * 3), rel=1e-6)
    assert c.params.item() == pytest.approx(
        (10 * k1 + k1) + (k1 * k2 + k2) + (k2 * 3 + 3), rel=1e-6)  # the widths' theta are not counted
    h = slimtrain.model_cost(model, hard=True)
    assert h.macs.item() == 5 * (10 * 7 + 7 * 10 + 10 * 3)
    assert c.flops.item() == pytest.approx(2 * c.macs.item())


def test_recurrent_and_attention_cost_by_hand():
    """GRU: T*3*(in*H + H*H) per item; attention: T*T*(dk+dv) per head, all heads = T*T*2*d."""
    torch.manual_seed(0)
    gru = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.GRU(12, 10, batch_first=True))

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = gru, nn.Linear(10, 2)

        def forward(self, x):
            return self.fc(self.body(x)[0])

    m = G()
    x = torch.randn(2, 7, 5)
    slimtrain.make_dynamic(m, x)
    m.body[0].dcl.set_width(4)
    m.body[2].dcl.set_width(3)
    c = slimtrain.model_cost(m, hard=True)
    assert c.macs.item() == 7 * (5 * 4 + 3 * (4 * 3 + 3 * 3) + 3 * 2)
    blk = slimtrain.TransformerBlock(8, 2, 16, dropout=0.0)

    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk, self.fc = blk, nn.Linear(8, 1)

        def forward(self, x):
            return self.fc(self.blk(x))

    t = T()
    xt = torch.randn(3, 5, 8)
    full = slimtrain.model_cost(t, xt)
    d, ff, T_ = 8, 16, 5
    assert full.macs.item() == T_ * (4 * d * d + 2 * d * ff + d * 1) + T_ * T_ * 2 * d


def test_cost_seconds_and_metric():
    _, model, x = build("mel", 0)
    c = slimtrain.model_cost(model, hard=True, seconds=640 / 8000)
    assert c.flops_per_second.item() == pytest.approx(c.flops.item() / 0.08)
    assert torch.equal(c.metric("params"), c.params)
    with pytest.raises(ValueError, match="unknown cost metric"):
        c.metric("watts")
    with pytest.raises(ValueError, match="seconds"):
        slimtrain.model_cost(model).flops_per_second


def test_cost_hard_default_follows_mode():
    _, model, x = build("mlp_bn", 0)
    dcls(model)["0.dcl"].set_width(4.5)
    model.train()
    assert slimtrain.model_cost(model).macs.requires_grad
    model.eval()
    assert slimtrain.model_cost(model).macs.item() == slimtrain.model_cost(model, hard=True).macs.item()


class _OwnWeightsAttention(nn.Module):
    """Attention that holds its own projection weights and calls F.multi_head_attention_forward
    (as WavLM does), between two Linear layers."""

    def __init__(self, d: int = 16, heads: int = 2, hidden: int = 24) -> None:
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.ff = nn.Linear(d, hidden)
        self.ff2 = nn.Linear(hidden, d)
        self.in_proj = nn.Parameter(torch.randn(3 * d, d) * 0.1)
        self.in_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        self.heads = heads
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x).transpose(0, 1)  # (T, B, d)
        a, _ = F.multi_head_attention_forward(h, h, h, h.shape[-1], self.heads, self.in_proj, self.in_bias, None, None,
                                              False, 0.0, self.out_proj.weight, self.out_proj.bias,
                                              training=False, need_weights=True)
        a = a.transpose(0, 1)
        return self.out(a + self.ff2(torch.relu(self.ff(a))))


def test_functional_multi_head_attention_is_costed_like_the_counter():
    torch.manual_seed(0)
    m = _OwnWeightsAttention()
    x = torch.randn(2, 5, 8)
    slimtrain.make_dynamic(m, x, kappa_min=0.25)
    assert "ff" in " ".join(slimtrain.dynamic_widths(m))  # the feed-forward width is learnable
    for d in m.modules():
        if isinstance(d, slimtrain.DynamicWidth):
            d.set_width(0.5 * d.num_channels + 0.2)
    m.eval()
    small = slimtrain.export(m).eval()
    analytic = float(slimtrain.model_cost(m, hard=True).macs) * x.shape[0]
    assert analytic == pytest.approx(count_macs(small, x), rel=1e-6)
