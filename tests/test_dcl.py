"""The dynamic complexity layer: gradient in K, continuity, eval = hard mask, noise, bounds."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from slimtrain import DynamicWidth, WidthError
from slimtrain.core.dcl import inward_clamp


def _signal_weight(k: float, n: int) -> torch.Tensor:
    """By hand: 1 below floor(K), sin(pi/2 * frac(K)) on channel floor(K), 0 above."""
    w = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        share = min(max(k - i, 0.0), 1.0)
        w[i] = math.sin(math.pi / 2 * share)
    return w


def _swapped_signal_weight(k: float, n: int) -> torch.Tensor:
    """The sign trap: sqrt(1 - lambda) on the signal (cos instead of sin) on the blended channel."""
    w = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        if i < math.floor(k):
            w[i] = 1.0
        elif i == math.floor(k):
            w[i] = math.cos(math.pi / 2 * (k - i))
    return w


def _bcast(w, dim, nd):
    shape = [1] * nd
    shape[dim] = -1
    return w.view(shape)


channels = st.integers(2, 12)


@st.composite
def fractional_width(draw, lo=1.0):
    n = draw(channels)
    k = draw(st.floats(lo, n, exclude_min=True, exclude_max=True))
    assume(abs(k - round(k)) > 1e-3)
    return n, k


# ---------------------------------------------------------------- gradient reaches K
@pytest.mark.parametrize("k,shape,dim", [(3.3, (4, 7), -1), (5.71, (2, 7, 5), 1), (1.5, (3, 4, 2, 7), -1),
                                         (6.02, (3, 7), 1)])
def test_gradcheck_output_wrt_theta(monkeypatch, k, shape, dim):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    fixed = {}

    def fixed_noise(t, **kw):  # the same nu on every call
        key = tuple(t.shape)
        if key not in fixed:
            fixed[key] = torch.randn(key, dtype=t.dtype, generator=gen)
        return fixed[key].clone()

    monkeypatch.setattr(torch, "randn_like", fixed_noise)
    n = shape[dim]
    d = DynamicWidth(n, dim=dim).double().train()
    theta = torch.tensor(k / n, dtype=torch.float64, requires_grad=True)
    f = lambda th: functional_call(d, {"theta": th}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f, (theta,), eps=1e-6, atol=1e-6)
    # and the analytic value by hand: dy_i/dK = pi/2 (cos(pi f/2) x_i - sin(pi f/2) sigma nu) on channel floor(K)
    y = f(theta)
    r = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    (g,) = torch.autograd.grad((y * r).sum(), theta)
    i, frac = math.floor(k), k - math.floor(k)
    xi = x.select(dim % x.dim(), i)
    sigma = xi.std(unbiased=False)
    nu = fixed[tuple(xi.shape)]
    dy = math.pi / 2 * (math.cos(math.pi / 2 * frac) * xi - math.sin(math.pi / 2 * frac) * sigma * nu)
    want = n * (dy * r.select(dim % x.dim(), i)).sum()  # dK/dtheta = N
    assert g.item() == pytest.approx(want.item(), rel=1e-9)


@settings(max_examples=60)
@given(nk=fractional_width(), batch=st.integers(1, 4), extra=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_gradient_reaches_fractional_width(nk, batch, extra, seed):
    n, k = nk
    torch.manual_seed(seed)
    shape = (batch, n, extra) if extra else (batch, n)
    d = DynamicWidth(n, dim=1).train()
    d.set_width(k)
    x = torch.randn(shape)
    r = torch.randn(shape)
    (d(x) * r).sum().backward()
    g = d.theta.grad
    assert g is not None and torch.isfinite(g) and g.item() != 0.0


def test_gradient_flows_at_the_bounds_and_back_inside():
    """inward clamp: passes the gradient inside, outside only towards the range."""
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = inward_clamp(x, 0.0, 1.0)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.3, 1.0, 1.0]))
    (g,) = torch.autograd.grad(y, x, torch.ones(5))  # descent would lower every x
    assert torch.equal(g, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0]))  # blocked only below the range
    (g,) = torch.autograd.grad(inward_clamp(x, 0.0, 1.0), x, -torch.ones(5))  # descent raises x
    assert torch.equal(g, torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0]))  # blocked only above it
    # a DCL at full width still has a gradient that can shrink it
    d = DynamicWidth(6, kappa_min=0.5).train()
    torch.manual_seed(0)
    x = torch.randn(8, 6)
    d.set_width(5.5)
    (d(x) * x).sum().backward()
    assert d.theta.grad.item() != 0


# ---------------------------------------------------------------- continuity and monotonicity
@pytest.mark.parametrize("n", [3, 8])
def test_noise_free_output_is_continuous_across_integers(zero_noise, n):
    torch.manual_seed(0)
    x = torch.randn(5, n, 3, dtype=torch.float64)
    d = DynamicWidth(n, dim=1).double().train()
    eps = 1e-4
    for k in range(2, n):  # K >= 1 always, so K = 1 - eps does not exist
        d.set_width(k - eps)
        below = d(x)
        d.set_width(k + eps)
        above = d(x)
        jump = (above - below).abs().max().item()
        assert jump <= 2 * eps * x.abs().max().item(), (k, jump)
        # the library's weights are the by-hand sin weights, not the swapped ones
        for kk, y in ((k - eps, below), (k + eps, above)):
            want = x * _bcast(_signal_weight(kk, n), 1, 3)
            assert torch.allclose(y, want, atol=1e-12, rtol=0)
        # guard against the sign trap: the swapped weighting jumps by a whole channel
        swapped = (x * _bcast(_swapped_signal_weight(k + eps, n) - _swapped_signal_weight(k - eps, n), 1, 3))
        assert swapped.abs().max().item() > 0.5 * x.select(1, k - 1).abs().max().item()


def test_noise_weight_is_cos_and_keeps_the_variance(unit_noise):
    """With nu = 1 the blended channel is sin(pi f/2) x_i + cos(pi f/2) sigma_i (sin^2 + cos^2 = 1)."""
    torch.manual_seed(0)
    n, k = 6, 3.3
    x = torch.randn(4, 5, n, dtype=torch.float64)
    d = DynamicWidth(n).double().train()
    d.set_width(k)
    y = d(x)
    f = k - 3
    sigma = x[..., 3].std(unbiased=False)
    want = math.sin(math.pi / 2 * f) * x[..., 3] + math.cos(math.pi / 2 * f) * sigma
    assert torch.allclose(y[..., 3], want, atol=1e-12)
    assert torch.equal(y[..., :3], x[..., :3])
    assert torch.equal(y[..., 4:], torch.zeros_like(y[..., 4:]))


@settings(max_examples=60)
@given(n=channels, a=st.floats(0, 1), b=st.floats(0, 1))
def test_signal_weight_is_monotone_in_width(zero_noise, n, a, b):
    lo, hi = sorted((1 + a * (n - 1), 1 + b * (n - 1)))
    d = DynamicWidth(n).double().train()
    x = torch.ones(2, n, dtype=torch.float64)
    d.set_width(lo)
    w_lo = d(x)[0]
    d.set_width(hi)
    w_hi = d(x)[0]
    assert torch.all(w_lo <= w_hi + 1e-12)
    assert torch.all((w_lo >= 0) & (w_hi <= 1))
    assert torch.allclose(w_lo, _signal_weight(lo, n), atol=1e-9)


def test_swapped_weighting_would_not_be_monotone():
    """Documents why the signal gets sin: with cos, channel k-1 loses its signal as K -> k."""
    w_mid = _swapped_signal_weight(2.5, 4)[2]
    w_late = _swapped_signal_weight(2.99, 4)[2]
    assert w_late < w_mid
    assert _signal_weight(2.99, 4)[2] > _signal_weight(2.5, 4)[2]


# ---------------------------------------------------------------- eval mode = hard truncation
def _expected_hard(k: float) -> int:
    r = round(k)
    return r if abs(k - r) < 1e-4 else math.ceil(k)


@settings(max_examples=80)
@given(n=channels, u=st.floats(0, 1), near=st.sampled_from([None, -5e-5, 0.0, 5e-5]),
       dims=st.integers(1, 4), data=st.data(), frozen=st.booleans())
def test_eval_mode_is_exact_truncation(n, u, near, dims, data, frozen):
    k = 1 + u * (n - 1)
    if near is not None:
        k = min(max(round(k) + near, 1.0), float(n))
    else:
        assume(abs(k - round(k)) > 1e-3 or k == round(k))
    dim = data.draw(st.integers(-dims, dims - 1), label="dim")
    shape = [data.draw(st.integers(1, 3)) for _ in range(dims)]
    shape[dim] = n
    d = DynamicWidth(n, dim=dim)
    d.set_width(k)
    if frozen:
        d.train()
        d.frozen = True
    else:
        d.eval()
    c = _expected_hard(k)
    assert d.hard_width == c
    x = torch.randn(shape)
    want = x.clone()
    want.narrow(dim, c, n - c).zero_()
    y = d(x)
    assert torch.equal(y, want)
    assert torch.equal(d(x), y)  # no randomness


@pytest.mark.parametrize("n,k,want", [(8, 5.0, 5), (8, 5 + 5e-5, 5), (8, 5 - 5e-5, 5), (8, 5 + 5e-3, 6),
                                      (8, 4.9, 5), (8, 1.0, 1), (8, 8.0, 8), (7, 3.0, 3), (13, 11.0, 11)])
def test_hard_width_rule(n, k, want):
    d = DynamicWidth(n)
    with torch.no_grad():
        d.theta.fill_(k / n)
    assert d.hard_width == want


@settings(max_examples=50)
@given(n=st.integers(1, 64), data=st.data())
def test_integer_width_round_trips_through_float32(n, data):
    k = data.draw(st.integers(1, n))
    d = DynamicWidth(n)
    d.set_width(k)
    assert d.hard_width == k
    assert float(d.width.detach()) == pytest.approx(k, abs=1e-4)


def test_set_width_clamps_to_bounds():
    d = DynamicWidth(10, kappa_min=0.25)
    d.set_width(0)
    assert float(d.width.detach()) == pytest.approx(2.5)
    assert d.hard_width == 3
    d.set_width(99)
    assert float(d.width.detach()) == pytest.approx(10)


# ---------------------------------------------------------------- training noise
def test_training_noise_has_the_channel_std_on_the_blended_channel():
    torch.manual_seed(123)
    n, k = 5, 2.4  # blended channel 2, signal sin(0.2 pi), noise cos(0.2 pi)
    x = torch.randn(400, n, 50, dtype=torch.float64)
    x[:, 2] = 3.0 * x[:, 2] + 1.0  # this channel's scale differs from the others
    d = DynamicWidth(n, dim=1).double().train()
    d.set_width(k)
    y = d(x)
    f = k - 2
    noise = y[:, 2] - math.sin(math.pi / 2 * f) * x[:, 2]
    sigma = x[:, 2].std(unbiased=False).item()  # about 3
    assert sigma == pytest.approx(3.0, rel=0.02)
    assert noise.std().item() == pytest.approx(math.cos(math.pi / 2 * f) * sigma, rel=0.03)
    assert abs(noise.mean().item()) < 0.03 * sigma
    # independent of the signal
    assert abs(torch.corrcoef(torch.stack([noise.flatten(), x[:, 2].flatten()]))[0, 1].item()) < 0.03
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.equal(y[:, 3:], torch.zeros_like(y[:, 3:]))
    # fresh noise on every call, only on the blended channel
    y2 = d(x)
    assert not torch.equal(y2[:, 2], y[:, 2])
    assert torch.equal(y2[:, :2], y[:, :2])


def test_no_noise_at_full_width_and_no_grad_to_x_through_sigma():
    torch.manual_seed(0)
    d = DynamicWidth(4).train()
    x = torch.randn(3, 4, requires_grad=True)
    assert torch.equal(d(x), x)
    d.set_width(2.5)
    y = d(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    # dy_i/dx_i = sqrt(lambda_i): 1, 1, sin(pi/4), 0 -- sigma is detached
    want = torch.tensor([1.0, 1.0, math.sin(math.pi / 4), 0.0]).expand(3, 4)
    assert torch.allclose(g, want, atol=1e-6)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(num_channels=8, min_channels=5, max_channels=3), "minimum width 5 is larger than maximum width 3"),
    (dict(num_channels=8, kappa_min=0.0), "kappa_min must be in \\(0, 1\\]"),
    (dict(num_channels=8, kappa_min=-0.1), "kappa_min must be in"),
    (dict(num_channels=8, kappa_min=1.5), "kappa_min must be in"),
    (dict(num_channels=8, kappa_min=float("nan")), "kappa_min must be in"),
    (dict(num_channels=8, kappa_max=0.0), "kappa_max must be in"),
    (dict(num_channels=8, min_channels=0), "at least 1 channel"),
    (dict(num_channels=8, max_channels=9), "exceeds num_channels=8"),
    (dict(num_channels=8, min_channels=9), "larger than maximum width"),
    (dict(num_channels=8, kappa_min=0.5, min_channels=2), "either kappa_min or min_channels"),
    (dict(num_channels=8, kappa_min=0.5, init=3), "init width 3 outside \\[4, 8\\]"),
    (dict(num_channels=8, init=8.5), "init width 8.5 outside"),
    (dict(num_channels=0), "positive integer"),
    (dict(num_channels=2.5), "positive integer"),
])
def test_bad_bounds(kwargs, match):
    with pytest.raises(WidthError, match=match):
        DynamicWidth(**kwargs)


def test_bounds_from_kappa_and_init():
    d = DynamicWidth(16, kappa_min=0.125, kappa_max=0.75, init=6)
    assert (d.min_width, d.max_width) == (2.0, 12.0)
    assert float(d.width.detach()) == pytest.approx(6)


@pytest.mark.parametrize("dim,shape,match", [
    (-1, (3, 5), "expects 4 channels on axis -1, got shape \\(3, 5\\)"),
    (1, (3, 2, 4), "expects 4 channels on axis 1"),
    (3, (3, 4), "dim=3 does not exist for an input of shape \\(3, 4\\)"),
    (-3, (4, 4), "does not exist"),
    (0, (), "0-d tensor"),
])
def test_wrong_input_to_forward(dim, shape, match):
    d = DynamicWidth(4, dim=dim)
    for mode in (d.train, d.eval):
        mode()
        with pytest.raises(WidthError, match=match):
            d(torch.randn(shape))


@pytest.mark.parametrize("n", [1, 7, 49, 98, 103, 161, 197])
def test_default_bounds_for_every_channel_count(n):
    """(1/n)*n < 1 in floating point for some n; the default minimum is exactly one channel."""
    d = DynamicWidth(n)
    assert (d.min_width, d.max_width) == (1.0, float(n))


def test_kappa_bounds_snap_to_integers():
    d = DynamicWidth(100, kappa_min=0.07, kappa_max=0.29)
    assert (d.min_width, d.max_width) == (7.0, 29.0)


def test_masks_stay_correct_across_width_changes():
    """After many width changes (train and eval, float32 widths on a float64 input) every output is
    still the by-hand mask and every input gradient the by-hand signal weight."""
    torch.manual_seed(0)
    n = 12
    d = DynamicWidth(n, dim=1, min_channels=1)
    x = torch.randn(4, n, 3, dtype=torch.float64)
    for k in [11.5, 3.25, 7.0, 1.75, 9.5, 2.5, 5.5, 6.25, 10.75, 4.5, 8.0, 3.25, 12.0]:
        d.set_width(k)
        d.eval()
        assert torch.equal(d(x) != 0, (x != 0) & (torch.arange(n) < d.hard_width).view(1, n, 1))
        d.train()
        xr = x.clone().requires_grad_(True)
        y = d(xr)
        keep = _signal_weight(k, n).view(1, n, 1)
        i = math.floor(k)
        rows = [c for c in range(n) if c != i]  # channel floor(K) carries noise
        assert torch.allclose(y[:, rows], (x * keep)[:, rows], atol=1e-12)
        y.sum().backward()
        assert torch.allclose(xr.grad, keep.expand_as(x), atol=1e-12)
