"""Eager-CPU shortcuts of a DCL training step equal the tensor path they replace (issue 22): the
one-node masked LayerNorm (values and every gradient, the width's included), the sliced LayerNorm
of settled/eval widths, and the widths that keep every channel (settled after a cut, eval) and so
leave their tensors, GRU and attention weights untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain import DynamicWidth
from slimtrain.core.modules import _HostMaskedLayerNorm, masked_layer_norm


def _ln_both_paths(n, k, lead, affine, hold, mode, seed):
    """``masked_layer_norm`` output and gradients (x, weight, bias, theta) on the host path and the tensor path."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*lead, n, generator=gen, dtype=torch.float64) * 3 + 1
    w0 = torch.randn(n, generator=gen, dtype=torch.float64) if affine else None
    b0 = torch.randn(n, generator=gen, dtype=torch.float64) if affine else None
    r = torch.randn(*lead, n, generator=gen, dtype=torch.float64)
    out = []
    for fast in (True, False):
        d = DynamicWidth(n, min_channels=1).double()
        d.set_width(k)
        d._hold.fill_(hold)
        d.train(mode != "eval")
        d.frozen = mode == "settled"
        d.host_fast_path = fast
        x = x0.clone().requires_grad_(True)
        w = None if w0 is None else w0.clone().requires_grad_(True)
        b = None if b0 is None else b0.clone().requires_grad_(True)
        y = masked_layer_norm(x, d, w, b, 1e-5)
        (y * r).sum().backward()
        tg = d.theta.grad
        out.append((y.detach(), x.grad, None if w is None else w.grad, None if b is None else b.grad,
                    0.0 if tg is None else tg.item()))
    return out


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 12), u=st.floats(0, 1), at_integer=st.booleans(), lead=st.sampled_from([(3,), (2, 5), (1, 1)]),
       affine=st.booleans(), hold=st.booleans(), mode=st.sampled_from(["train", "train", "settled", "eval"]),
       seed=st.integers(0, 10_000))
def test_host_masked_layer_norm_equals_the_tensor_path(n, u, at_integer, lead, affine, hold, mode, seed):
    k = 1 + u * (n - 1)
    if at_integer:  # the clamp of channel k and k - 1 both pass a gradient there
        k = float(round(k))
    (y1, gx1, gw1, gb1, gt1), (y2, gx2, gw2, gb2, gt2) = _ln_both_paths(n, k, lead, affine, hold, mode, seed)
    assert torch.allclose(y1, y2, atol=1e-10, rtol=0)
    assert torch.allclose(gx1, gx2, atol=1e-9, rtol=0)
    for a, b in ((gw1, gw2), (gb1, gb2)):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-9, rtol=0)
    assert gt1 == pytest.approx(gt2, rel=1e-8, abs=1e-9)


def test_host_masked_layer_norm_is_one_node_with_a_width_gradient():
    d = DynamicWidth(16).train()
    d.set_width(9.4)
    x = torch.randn(4, 16, requires_grad=True)
    y = masked_layer_norm(x, d, None, None, 1e-5)
    assert type(y.grad_fn).__name__ == _HostMaskedLayerNorm.__name__ + "Backward"
    assert torch.all(y[:, 10:] == 0) and torch.all(y[:, 9] != 0)  # above floor(K) + 1 nothing passes
    (y * torch.randn(4, 16)).sum().backward()
    assert d.theta.grad.item() != 0.0


def _model():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(10, 24)
            self.norm = nn.LayerNorm(24)
            self.proj = nn.Linear(24, 16)
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.gru = nn.GRU(16, 12, batch_first=True)
            self.out = nn.Linear(12, 1)

        def forward(self, x):
            h = self.proj(self.norm(self.inp(x)))
            a, _ = self.mha(h, h, h)
            y, _ = self.gru(a)
            return self.out(y).squeeze(-1)
    torch.manual_seed(0)
    x = torch.randn(3, 7, 10)
    m = slimtrain.make_dynamic(M(), x[:2], kappa_min=0.1)
    for i, d in enumerate(d for d in m.modules() if isinstance(d, DynamicWidth)):
        d.set_width((0.45 + 0.1 * i) * d.num_channels + 0.2)
    return m, x


def _loss_and_grads(m, x, fast):
    for d in m.modules():
        if isinstance(d, DynamicWidth):
            d.host_fast_path = fast
    torch.manual_seed(3)
    loss = m(x).pow(2).mean()
    params = [p for p in m.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("mode", ["settled", "eval"])
def test_widths_that_keep_every_channel_change_nothing(mode):
    m, x = _model()
    slimtrain.settle_widths(m)
    slimtrain.compact(m, torch.optim.Adam(m.parameters()))  # cut to the settled widths: every channel kept
    m.train(mode == "settled")
    dcls = [d for d in m.modules() if isinstance(d, DynamicWidth)]
    assert all(d.passes_whole(x) for d in dcls)
    y = torch.randn(2, 5, m.inp.dcl.num_channels)
    assert m.inp.dcl(y, dim=-1) is y  # no mask multiply at all
    fast_loss, fast_grads = _loss_and_grads(m, x, True)
    slow_loss, slow_grads = _loss_and_grads(m, x, False)
    assert torch.allclose(fast_loss, slow_loss, atol=1e-7, rtol=1e-6)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_a_cut_width_below_its_size_still_masks():
    m, x = _model()
    slimtrain.settle_widths(m)  # settled, not cut: hard_width < N, so the masks must still apply
    m.train()
    d = m.inp.dcl
    assert not d.passes_whole(x) and d.hard_width < d.num_channels
    y = torch.ones(2, d.num_channels)
    assert torch.equal(d(y), (torch.arange(d.num_channels) < d.hard_width).float().expand(2, -1))
    fast_loss, fast_grads = _loss_and_grads(m, x, True)
    slow_loss, slow_grads = _loss_and_grads(copy.deepcopy(m), x, False)
    assert torch.allclose(fast_loss, slow_loss, atol=1e-7, rtol=1e-6)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 6), inner=st.integers(1, 9), rows=st.integers(2, 5), u=st.floats(0, 1),
       layout=st.sampled_from(["contiguous", "x_transposed", "grad_transposed"]), frozen=st.booleans(),
       seed=st.integers(0, 10_000))
def test_host_blend_with_axes_after_the_channel_equals_the_tensor_path(n, inner, rows, u, layout, frozen, seed):
    """The host path multiplies a contiguous ``(.., n, inner)`` tensor by a mask repeated ``inner`` times
    (a per-head width on ``(B, T, heads, head_dim)``); strided inputs and gradients take the broadcast."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, n, inner, generator=gen, dtype=torch.float64)
    r = torch.randn(rows, n, inner, generator=gen, dtype=torch.float64)
    out = []
    for fast in (True, False):
        d = DynamicWidth(n, dim=1, min_channels=1).double().train()
        d.set_width(1 + u * (n - 1))
        d.host_fast_path = fast
        d.frozen = frozen  # settled: the hard mask of ceil(K) channels, no noise
        leaf = (base.transpose(0, 2).contiguous() if layout == "x_transposed" else base.clone()).requires_grad_(True)
        x = leaf.transpose(0, 2) if layout == "x_transposed" else leaf
        torch.manual_seed(seed)
        y = d(x)
        loss = (y.transpose(0, 2).contiguous().transpose(0, 2) * r).sum() if layout == "grad_transposed" \
            else (y * r).sum()
        loss.backward()
        out.append((y.detach(), leaf.grad, 0.0 if d.theta.grad is None else d.theta.grad.item()))
    (y1, g1, t1), (y2, g2, t2) = out
    i = min(int(1 + u * (n - 1)), n - 1)  # the blended channel: its noise is laid out like x, which the two
    keep = torch.arange(n) != i           # paths do differently for a strided x (as before this change)
    assert torch.allclose(y1[:, keep], y2[:, keep], atol=1e-12, rtol=0)
    assert torch.allclose(g1, g2, atol=1e-12, rtol=0)  # dL/dx does not depend on the noise
    if layout == "contiguous" or frozen:
        assert torch.allclose(y1, y2, atol=1e-12, rtol=0)
        assert t1 == pytest.approx(t2, rel=1e-9, abs=1e-12)


def test_a_subclass_with_its_own_masks_takes_no_shortcut():
    """The shortcuts read the masks from ``theta``; a subclass that defines its masks otherwise (the gated
    baseline's open gates) keeps its own masking, even where ``theta`` says every channel is kept."""
    from slimtrain.core.dcl import standard_width

    class Odd(DynamicWidth):
        def hard_mask(self):
            return (torch.arange(self.num_channels) % 2 == 0).to(self.theta.dtype)

    plain, odd = DynamicWidth(4).eval(), Odd(4).eval()
    x = torch.ones(2, 4)
    assert standard_width(plain) and not standard_width(odd)
    assert plain.passes_whole(x) and not odd.passes_whole(x)
    y = masked_layer_norm(torch.randn(3, 4), odd, None, None, 1e-5)
    assert torch.all(y[:, 1::2] == 0)  # the odd channels are masked, not a LayerNorm of all four


@pytest.mark.parametrize("frozen", [False, True])
def test_an_in_place_op_may_follow_the_width(frozen):
    """The masked tensor is a tensor of its own, not a view (``ReLU(inplace=True)`` after a BatchNorm's DCL)."""
    out = []
    for fast in (True, False):
        torch.manual_seed(0)
        d = DynamicWidth(6, dim=1).train()
        d.set_width(3.6)
        d.frozen = frozen
        d.host_fast_path = fast
        x = torch.randn(2, 6, 4, 5, requires_grad=True)
        y = torch.relu_(d(x))
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out.append((y.detach(), x.grad))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-6) and torch.allclose(out[0][1], out[1][1], atol=1e-6)
