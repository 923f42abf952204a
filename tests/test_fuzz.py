"""Property tests of the fast paths: the compiled cost polynomial and the fused DCL autograd node
must equal their straightforward reference definitions (values and gradients) on random models,
widths, shapes and dtypes. (Export exactness and agreement with torch's FLOP counter on random
architectures are fuzzed in tests/test_cost.py.)"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slimtrain
from slimtrain.core.cost import _counted_params, layer_costs
from slimtrain.core.dcl import DynamicWidth, inward_clamp
from slimtrain.core.graph import get_graph

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import dcls  # noqa: E402
from test_cost import _build_random, architectures  # noqa: E402


def _reference_cost(model):
    """Sum of the per-layer costs (the readable definition) plus parameters no layer counts."""
    g = get_graph(model)
    rows = layer_costs(model, hard=False)
    macs = sum((r[2] for r in rows), torch.zeros(())) + g.fixed_macs / g.batch
    counted = {id(p) for p in _counted_params(model, g)}
    params = sum((r[3] for r in rows), torch.zeros(())) + sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return macs, params


@settings(max_examples=60)
@given(arch=architectures(), seed=st.integers(0, 1000), data=st.data())
def test_compiled_cost_equals_layer_sum_with_gradients(arch, seed, data):
    model, x = _build_random(arch, seed)
    slimtrain.make_dynamic(model, x)
    ds = list(dcls(model).values())
    for i, d in enumerate(ds):
        # some widths outside the bounds too: the clamp rule of the gradient must match
        lo, hi = d.min_width / d.num_channels, d.max_width / d.num_channels
        with torch.no_grad():
            d.theta.fill_(data.draw(st.floats(lo - 0.2, hi + 0.2), label=f"theta{i}"))
    wm, wp = data.draw(st.floats(-2, 2), label="wm"), data.draw(st.floats(-2, 2), label="wp")
    macs, params = _reference_cost(model)
    ref = torch.autograd.grad(wm * macs + wp * params, [d.theta for d in ds], allow_unused=True)
    fast = slimtrain.model_cost(model, hard=False)
    got = torch.autograd.grad(wm * fast.macs + wp * fast.params, [d.theta for d in ds], allow_unused=True)
    assert fast.macs.item() == pytest.approx(macs.item(), rel=1e-5)
    assert fast.params.item() == pytest.approx(float(torch.as_tensor(params).detach()), rel=1e-5)
    for a, b in zip(ref, got):
        a = torch.zeros(()) if a is None else a
        assert b.item() == pytest.approx(a.item(), rel=1e-4, abs=1e-3)
    # the hard and full costs equal the reference at the exported / full widths
    for d in ds:
        d.set_width(d.hard_width)
    m_int, p_int = _reference_cost(model)
    hard = slimtrain.model_cost(model, hard=True)
    assert hard.macs.item() == pytest.approx(m_int.item(), rel=1e-5)
    assert hard.params.item() == pytest.approx(float(torch.as_tensor(p_int).detach()), rel=1e-6)


def _reference_dcl(d: DynamicWidth, x: torch.Tensor, dim: int) -> torch.Tensor:
    """The DCL forward composed from torch operations (as documented in slimtrain.dcl)."""
    n = d.num_channels
    k = n * inward_clamp(d.theta, d.min_width / n, d.max_width / n)
    share = (k - d._index).clamp(0.0, 1.0)
    shape = [1] * x.dim()
    shape[dim] = n
    y = x * torch.sin(0.5 * math.pi * share).to(x.dtype).view(shape)
    i = int(torch.floor(k.detach()).item())
    if i >= n:
        return y
    xi = x.select(dim, i)
    stat = xi.detach().to(torch.promote_types(xi.dtype, torch.float32))
    sigma = stat.std(unbiased=False).to(x.dtype) if xi.numel() > 1 else xi.detach().abs()
    noise = torch.cos(0.5 * math.pi * share[i]).to(x.dtype) * sigma * torch.randn_like(xi)
    onehot = torch.zeros(shape, dtype=x.dtype)
    onehot.view(-1)[i] = 1.0
    return y + onehot * noise.unsqueeze(dim)


@settings(max_examples=150)
@given(n=st.integers(1, 12), rank=st.integers(1, 4), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fused_dcl_equals_composed_reference(n, rank, data, dtype):
    dim = data.draw(st.integers(-rank, rank - 1), label="dim")
    shape = [data.draw(st.integers(1, 4), label=f"s{a}") for a in range(rank)]
    shape[dim] = n
    d = DynamicWidth(n, dim=dim, min_channels=1).train()
    rel = data.draw(st.one_of(st.floats(-0.2, 1.2), st.sampled_from([c / n for c in range(n + 1)])), label="theta")
    with torch.no_grad():
        d.theta.fill_(rel)
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    outs = []
    for fn in (lambda t: d(t), lambda t: _reference_dcl(d, t, dim)):
        xx = x.clone().requires_grad_()
        d.theta.grad = None
        torch.manual_seed(seed)
        y = fn(xx)
        (y * w).sum().backward()
        outs.append((y.detach(), xx.grad.clone(), d.theta.grad.clone()))
    (y1, gx1, gt1), (y2, gx2, gt2) = outs
    tol = 1e-5  # the mask is computed in float32 (theta's dtype) in both; the noise weight may round differently
    assert torch.allclose(y1, y2, atol=tol, rtol=tol)
    assert torch.allclose(gx1, gx2, atol=tol, rtol=tol)
    assert gt1.item() == pytest.approx(gt2.item(), rel=1e-4, abs=1e-4)
