"""The DCL and the cost term without host reads: the tensor path equals the eager-CPU fast path,
a training step never reads a value back to the host, and ``torch.compile`` traces a whole
training step of the case-study models in one graph (no graph break, no recompilation)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import slimtrain
import slimtrain.train.training
from slimtrain import DynamicWidth


class NoHostReads(TorchDispatchMode):
    """Fails on every device-to-host read: ``.item()``, ``float(t)``, ``bool(t)``, ``int(t)`` all
    dispatch ``aten._local_scalar_dense`` (on a GPU, each would be a sync)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host read (.item()/float()/bool()) on the training path")
        return func(*args, **(kwargs or {}))


def _both_paths(n, dim, k, x, hold=False):
    out = []
    for fast in (True, False):
        torch.manual_seed(7)
        d = DynamicWidth(n, dim=dim).double().train()
        d.host_fast_path = fast
        d.set_width(k)
        d._hold.fill_(hold)
        xr = x.clone().requires_grad_(True)
        y = d(xr)
        r = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        (y * r).sum().backward()
        out.append((y.detach(), xr.grad, d.theta.grad))
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), u=st.floats(0, 1), at_integer=st.booleans(), batch=st.integers(1, 3),
       extra=st.integers(0, 2), hold=st.booleans())
def test_tensor_path_equals_the_host_fast_path(n, u, at_integer, batch, extra, hold):
    k = 1 + u * (n - 1)
    if at_integer:
        k = float(round(k))
    shape = (batch, n, extra) if extra else (batch, n)
    x = torch.randn(shape, dtype=torch.float64)
    assume(batch * (extra or 1) > 1)
    (y1, gx1, gt1), (y2, gx2, gt2) = _both_paths(n, 1, k, x, hold)
    assert torch.allclose(y1, y2, atol=1e-12, rtol=0)
    assert torch.allclose(gx1, gx2, atol=1e-12, rtol=0)
    g1 = 0.0 if gt1 is None else gt1.item()
    g2 = 0.0 if gt2 is None else gt2.item()
    assert g2 == pytest.approx(g1, rel=1e-9, abs=1e-9)
    if hold or k == n:
        assert g2 == 0.0  # held (warm-up) or full width: no gradient to the width from the task
        assert torch.equal(y2, x)


def test_full_width_gives_no_width_gradient_from_the_task_loss():
    """Otherwise Adam would normalise a float-rounding residue into full-size random steps."""
    d = DynamicWidth(64).train()
    d.host_fast_path = False
    x = torch.randn(32, 64)
    (d(x) * torch.randn(32, 64)).sum().backward()
    assert d.theta.grad is not None and d.theta.grad.item() == 0.0


def _mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 3))
    return slimtrain.make_dynamic(m, torch.randn(2, 12), kappa_min=0.1).train()


def _tensor_path(model):
    for d in model.modules():
        if isinstance(d, DynamicWidth):
            d.host_fast_path = False
            d.set_width(0.6 * d.num_channels + 0.3)
    return model


@pytest.mark.parametrize("objective", [dict(alpha=0.5), dict(budget=100.0, lagrangian=True, warmup_steps=2)])
def test_training_step_reads_nothing_back_to_the_host(objective):
    m = _tensor_path(_mlp())
    obj = slimtrain.TradeoffLoss(m, **objective)
    x = torch.randn(16, 12)
    for _ in range(3):
        m.zero_grad(set_to_none=True)
        with NoHostReads():
            loss = obj(m(x).pow(2).mean())
            loss.backward()
        assert all(d.theta.grad is not None for d in m.modules() if isinstance(d, DynamicWidth))
    with pytest.raises(AssertionError, match="host read"):  # the detector itself works
        with NoHostReads():
            float(loss.detach())


def _count_graphs(fn, *args, steps: int = 1, after=None):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    out = None
    for _ in range(steps):
        out = compiled(*args)
        if after is not None:
            after(out)
    return graphs, out


def test_compiled_training_runs_in_one_graph_through_warmup_and_after():
    m = _tensor_path(_mlp())
    obj = slimtrain.TradeoffLoss(m, alpha=2.0, warmup_steps=2)
    opt = slimtrain.training.make_optimizer(m, lr=1e-3, width_lr=5e-2)
    x = torch.randn(16, 12)
    k0 = slimtrain.dynamic_widths(m)

    def step(out):
        opt.zero_grad()
        out.backward()
        opt.step()

    graphs, loss = _count_graphs(lambda x: obj(m(x).pow(2).mean()), x, steps=6, after=step)
    assert len(graphs) == 1  # no graph break and no recompilation (warm-up flags are tensors)
    assert obj.steps == 6
    k1 = slimtrain.dynamic_widths(m)
    assert all(k1[n] < k0[n] - 0.05 for n in k0)  # the cost term moved every width after warm-up


def test_fullgraph_compile_of_the_case_study_models():
    """The VAD CRNN (GRU: needs dynamo's allow_rnn) and the anti-spoofing ResNet trace whole."""
    from slimtrain.apps.spoof.models import build_resnet, make_dynamic_stages
    from slimtrain.apps.vad.models import build_vad_model

    torch.manual_seed(0)
    wav = torch.randn(2, 4000) * 0.1
    crnn = _tensor_path(slimtrain.make_dynamic(build_vad_model("crnn"), wav, kappa_min=0.125).train())
    res = _tensor_path(make_dynamic_stages(build_resnet(width=4, blocks=(1, 1, 1, 1)), wav, stages=range(4),
                                           kappa_min=0.125).train())
    # nn.GRU's cached flat-weight references differ between the very first call and later ones, which
    # costs the CRNN one recompilation on its second step; after that nothing recompiles
    for model, most in ((crnn, 2), (res, 1)):
        obj = slimtrain.TradeoffLoss(model, alpha=0.3)
        with torch._dynamo.config.patch(allow_rnn=True):
            graphs, loss = _count_graphs(lambda x: obj(model(x).float().pow(2).mean()), wav, steps=5,
                                         after=lambda out: out.backward())
        assert 1 <= len(graphs) <= most
        assert math.isfinite(float(loss.detach()))
        assert all(d.theta.grad is not None and d.theta.grad.abs().item() > 0
                   for d in model.modules() if isinstance(d, DynamicWidth))


def test_cost_term_tensor_path_equals_the_host_fast_path():
    m = _mlp()
    from slimtrain.core.cost import _compiled
    from slimtrain.core.graph import get_graph

    g = get_graph(m)
    comp = _compiled(m, g)
    dcls = [g.dcl_modules(m)[r] for r in comp.roots]
    results = []
    for fast in (True, False):
        for i, d in enumerate(dcls):
            d.host_fast_path = fast
            d.set_width(0.4 * d.num_channels + 0.7 + i)
            d.theta.grad = None
        macs, params = comp.soft_cost(dcls)
        (macs * 1e-3 + params * 1e-2).backward()
        results.append((macs.item(), params.item(), [d.theta.grad.item() for d in dcls]))
    (m1, p1, g1), (m2, p2, g2) = results
    assert m2 == pytest.approx(m1, rel=1e-6) and p2 == pytest.approx(p1, rel=1e-6)
    assert g2 == pytest.approx(g1, rel=1e-5)
    assert m1 < slimtrain.model_cost(m, full=True).macs.item()


@pytest.mark.parametrize("metric", ["flops", "macs", "params"])
@pytest.mark.parametrize("objective", [dict(alpha=0.7), dict(budget=200.0), dict(budget="floor", lagrangian=True),
                                       dict(alpha=0.3, budget=500.0, lagrangian=True, warmup_steps=2)])
def test_objective_host_path_equals_the_tensor_path(objective, metric):
    """The eager-CPU objective (one Python-float node) gives the tensor path's loss, width gradients,
    multiplier, warm-up holds and ``last`` at every step."""
    runs = []
    for fast in (True, False):
        m = _mlp()
        dcls = [d for d in m.modules() if isinstance(d, DynamicWidth)]
        for d in dcls:
            d.host_fast_path = fast
        obj = slimtrain.TradeoffLoss(m, metric=metric, **objective)
        if not objective.get("warmup_steps"):
            for i, d in enumerate(dcls):
                d.set_width(0.45 * d.num_channels + 0.6 + i)
        trace = []
        for step in range(4):
            task = torch.tensor(0.25 * step + 1.0, requires_grad=True)
            for d in dcls:
                d.theta.grad = None
            loss = obj(task)
            loss.backward()
            trace.append((loss.item(), task.grad.item(), [0.0 if d.theta.grad is None else d.theta.grad.item() for d in dcls],
                          obj.mu.item(), [bool(d._hold) for d in dcls], obj.last))
            with torch.no_grad():  # move the widths a little, as a step would
                for d in dcls:
                    d.theta.sub_(0.01)
        runs.append(trace)
    for (l1, t1, g1, mu1, h1, last1), (l2, t2, g2, mu2, h2, last2) in zip(*runs):
        assert l1 == pytest.approx(l2, rel=1e-6, abs=1e-7)
        assert t1 == t2 == 1.0
        assert g1 == pytest.approx(g2, rel=1e-5, abs=1e-9)
        assert mu1 == pytest.approx(mu2, rel=1e-6, abs=1e-9)
        assert h1 == h2
        assert last1 == pytest.approx(last2, rel=1e-6, abs=1e-9)
    assert any(abs(v) > 0 for _, _, g, _, _, _ in runs[0] for v in g)  # the widths were pushed at some step


def test_compiled_cost_term_equals_the_eager_one():
    """Under torch.compile the cost polynomials are unrolled into scalar arithmetic: same values and gradients."""
    m = _tensor_path(_mlp())
    from slimtrain.core.cost import _compiled
    from slimtrain.core.graph import get_graph

    g = get_graph(m)
    comp = _compiled(m, g)
    dcls = [g.dcl_modules(m)[r] for r in comp.roots]
    for i, d in enumerate(dcls):
        d.set_width(0.35 * d.num_channels + 0.4 + i)

    def cost():
        macs, params = comp.soft_cost(dcls)
        return macs * 1e-3 + params * 1e-2, macs, params

    results = []
    for fn in (cost, torch.compile(cost, fullgraph=True, backend="aot_eager")):
        for d in dcls:
            d.theta.grad = None
        total, macs, params = fn()
        total.backward()
        results.append((macs.item(), params.item(), [d.theta.grad.item() for d in dcls]))
    (m1, p1, g1), (m2, p2, g2) = results
    assert m2 == pytest.approx(m1, rel=1e-6) and p2 == pytest.approx(p1, rel=1e-6)
    assert g2 == pytest.approx(g1, rel=1e-5)
    assert all(v != 0 for v in g1)


def test_double_backward_through_the_eager_dcl_raises_instead_of_being_wrong():
    """An ordinary backward skips once_differentiable's bookkeeping; create_graph=True still goes through it."""
    d = DynamicWidth(16).train()
    d.set_width(9.4)
    x = torch.randn(4, 16, requires_grad=True)
    (gx,) = torch.autograd.grad((d(x) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()
    y = d(x)
    y.sum().backward()  # first order: fine
    assert d.theta.grad is not None and x.grad is not None


def test_cached_eval_mask_follows_every_change_of_the_width():
    """Eval/frozen reuse the hard mask until theta changes (optimizer step, set_width, load_state_dict)."""
    d = DynamicWidth(10).eval()
    x = torch.ones(2, 10)
    assert d(x).sum().item() == 20
    d.set_width(6.2)
    assert d(x)[0].tolist() == [1.0] * 7 + [0.0] * 3
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    d.theta.grad = torch.tensor(1.0)
    opt.step()  # theta 0.62 -> 0.52: K 5.2 -> 6 channels
    assert d(x)[0].sum().item() == 6
    fused = torch.optim.Adam(d.parameters(), lr=0.1, fused=True)  # updates theta without a version bump
    d.theta.grad = torch.tensor(1.0)
    fused.step()  # theta 0.52 -> 0.42: 5 channels
    assert d(x)[0].sum().item() == 5
    d.load_state_dict({"theta": torch.tensor(0.3)})
    assert d(x)[0].sum().item() == 3
    assert d(x.double()).dtype == torch.float64


def test_a_model_compiled_before_make_dynamic_runs_with_its_widths_afterwards():
    """torch.compile does not guard on module hooks: without the cache reset in make_dynamic the wrapper
    compiled before would keep running the full-width graph (the widths' hooks never called)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    compiled = torch.compile(m)
    full = compiled(x).detach()
    slimtrain.make_dynamic(m, x[:2], kappa_min=0.25)
    for d in m.modules():
        if isinstance(d, DynamicWidth):
            d.set_width(d.min_width)
    eager = m(x).detach()
    assert not torch.allclose(eager, full)  # the width changes the output
    torch.testing.assert_close(compiled(x).detach(), eager)


def test_compiled_wrapper_gets_a_clear_error_naming_the_original_module():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with pytest.raises(slimtrain.GraphError, match=r"torch.compile.*_orig_mod"):
        slimtrain.make_dynamic(torch.compile(m), x[:2])
    slimtrain.make_dynamic(m, x[:2], kappa_min=0.25)
    for call in (lambda c: slimtrain.TradeoffLoss(c, alpha=0.1), slimtrain.export, slimtrain.model_cost):
        with pytest.raises(slimtrain.GraphError, match=r"torch.compile.*_orig_mod"):
            call(torch.compile(m))
