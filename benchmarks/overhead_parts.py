"""Profile of benchmark 1's miss: what one DCL and the cost term cost per training step, part by part.

Times forward + backward of the pieces a DCL training step adds, next to the floor that any
PyTorch autograd function written in Python pays, on the activation of the small MLP of
``training_overhead.py`` (batch 256, 256 channels, width 0.7 N); interleaved, median of
``--repeats`` blocks of ``--calls`` calls, process CPU time, 1 thread.

    python benchmarks/overhead_parts.py [--repeats 9] [--calls 300]

A second table times whole training steps of that MLP: plain, plain with two inline mask
multiplies (the least any per-layer width mask adds in eager mode), settled DCLs and DCL training;
a third the same steps compiled (``torch.compile``), with DCL training split into its parts.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import _common as C  # noqa: E402  (sets sys.path)
import slimtrain
from slimtrain.train.training import make_optimizer


class _Identity(torch.autograd.Function):
    """The cheapest useful autograd function written in Python: y = x * mask, dy/dx = mask."""

    @staticmethod
    def forward(ctx, x, mask):  # type: ignore[override]
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return g * mask, None


def parts():
    x = torch.randn(256, 256, requires_grad=True)
    g = torch.randn(256, 256)
    mask = torch.ones(256)
    dcl = slimtrain.DynamicWidth(256, kappa_min=0.1).train()
    dcl.set_width(0.7 * 256 + 0.3)
    mlp = C.MLP()
    dyn = slimtrain.make_dynamic(copy.deepcopy(mlp), torch.randn(2, 64), kappa_min=0.1).train()
    obj = slimtrain.TradeoffLoss(dyn, alpha=0.1)
    task = torch.tensor(1.0, requires_grad=True)
    plain_opt = make_optimizer(mlp, lr=1e-4)
    dyn_opt = make_optimizer(dyn, lr=1e-4, width_lr=1e-4)
    xb = torch.randn(256, 64)
    yb = torch.zeros(256, dtype=torch.long)
    for m, o in ((mlp, plain_opt), (dyn, dyn_opt)):  # gradients and Adam state exist before timing
        F.cross_entropy(m(xb), yb).backward()
        o.step()

    def builtin_mul():
        (x * mask).backward(g)

    def python_function():
        _Identity.apply(x, mask).backward(g)

    def dcl_step():
        dcl(x).backward(g)

    def cost_term():
        obj(task).backward()

    yield "x * mask, built-in op (fwd+bwd)", builtin_mul
    yield "x * mask as a Python autograd.Function (fwd+bwd)", python_function
    yield "one DCL, training mode (fwd+bwd)", dcl_step
    yield "cost term of the MLP (2 DCLs; fwd+bwd)", cost_term
    yield "Adam step, plain MLP (1 parameter group)", plain_opt.step
    yield "Adam step, DCL MLP (+ widths group, 2 scalars)", dyn_opt.step
    # why make_optimizer asks for the fused Adam: the channels a DCL masks get exactly zero gradients,
    # so their second moments stay exactly 0, and the for-each Adam's sqrt is several times slower on
    # zeros on this CPU; the fused kernel is not (and is faster anyway)
    for kind, kw in (("for-each", {"foreach": True}), ("fused", {"fused": True})):
        for label, zero_share in (("dense gradient", 0.0), ("30 % masked rows", 0.3)):
            yield f"{kind} Adam step, 1024x1024 weight, {label}", _adam_step(kw, zero_share)


def _adam_step(kw: dict, zero_share: float):
    w = torch.nn.Parameter(torch.randn(1024, 1024))
    grad = torch.randn(1024, 1024)
    grad[: int(zero_share * 1024)] = 0.0
    opt = torch.optim.Adam([w], lr=1e-4, **kw)

    def step():
        w.grad = grad
        opt.step()
    return step


class _InlineMasks(torch.nn.Module):
    """The small MLP with a constant 0/1 mask multiplied into both hidden activations, written inline: the
    least any per-layer width mask adds to an eager step (no noise, no width gradient, no cost term)."""

    def __init__(self, mlp: torch.nn.Sequential, keep: int) -> None:
        super().__init__()
        self.mlp = mlp
        self.register_buffer("mask", (torch.arange(mlp[0].out_features) < keep).float())

    def forward(self, x):
        m = self.mlp
        x = m[1](m[0](x) * self.mask)
        return m[4](m[3](m[2](x) * self.mask))


def whole_steps(repeats: int, compiled: bool = False) -> list[list[str]]:
    """Training steps of the small MLP (batch 256): plain, the inline-mask floor, settled DCLs
    (:func:`slimtrain.settle_widths`: hard masks through the DCL hooks) and DCL training + cost term.

    ``compiled``: forward and loss of every step under ``torch.compile(fullgraph=True)`` (Adam eager, as in
    benchmark 1), plus DCL training without the cost term and with the widths in the weights' Adam group
    (possible here because both learning rates are equal), to split the compiled overhead."""
    mlp = C.MLP()
    x, y = torch.randn(256, 64), torch.zeros(256, dtype=torch.long)

    def dynamic():
        d = slimtrain.make_dynamic(copy.deepcopy(mlp), x[:2], kappa_min=0.1).train()
        for m in d.modules():
            if isinstance(m, slimtrain.DynamicWidth):
                m.set_width(0.7 * m.num_channels + 0.3)
        return d

    def step(model, obj=None, one_group: bool = False):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True) if one_group else None
        return C.training_step(model, x, lambda out: F.cross_entropy(out, y), obj, compiled, opt)
    settled, training = dynamic(), dynamic()
    slimtrain.settle_widths(settled)
    steps = {"plain MLP": step(copy.deepcopy(mlp)),
             "+ 2 inline mask multiplies (floor)": step(_InlineMasks(copy.deepcopy(mlp), 180)),
             "settled DCLs (hard masks via hooks), no cost term": step(settled)}
    if compiled:
        steps["DCL training, no cost term"] = step(dynamic())
        one = dynamic()
        steps["DCL training + cost term, widths in the weights' Adam group"] = \
            step(one, slimtrain.TradeoffLoss(one, alpha=0.1), one_group=True)
    steps["DCL training + cost term (benchmark 1)"] = step(training, slimtrain.TradeoffLoss(training, alpha=0.1))
    t = C.interleaved(steps, repeats=repeats, warmup=10)
    base = C.median(t["plain MLP"])
    return [[k, f"{C.median(v) * 1e6:.0f}", f"{C.median(v) / base:.3f}"] for k, v in t.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fns = dict(parts())
    for f in fns.values():
        for _ in range(20):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.repeats):
        for k, f in fns.items():
            t0 = time.process_time()
            for _ in range(a.calls):
                f()
            times[k].append((time.process_time() - t0) / a.calls * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["x * mask, built-in op (fwd+bwd)"]
    rows = [[k, f"{v:.1f}", f"{v / base:.2f}"] for k, v in med.items()]
    print(f"Per-call CPU time (us), median of {a.repeats} x {a.calls} interleaved calls, 1 thread, "
          f"activation (256, 256); {C.machine()}")
    print(C.table(["part", "us per call", "x built-in mul"], rows))
    extra = (med["one DCL, training mode (fwd+bwd)"] - base) * 2 + med["cost term of the MLP (2 DCLs; fwd+bwd)"] \
        + med["Adam step, DCL MLP (+ widths group, 2 scalars)"] - med["Adam step, plain MLP (1 parameter group)"]
    floor = (med["x * mask as a Python autograd.Function (fwd+bwd)"] - base) * 2
    print(f"added per step of the small MLP (2 DCLs + cost + widths group): {extra / 1e3:.2f} ms, of which "
          f"{floor / 1e3:.2f} ms is the floor of two Python autograd functions")
    print()
    print(f"Whole training steps of the small MLP (batch 256), median of {a.repeats * 30} interleaved steps, "
          f"CPU time, 1 thread")
    print(C.table(["step", "us", "ratio to plain"], whole_steps(a.repeats * 30)))
    print()
    print(f"The same steps with forward and loss under torch.compile (inductor, fullgraph; Adam eager), "
          f"median of {a.repeats * 30} interleaved steps")
    print(C.table(["step", "us", "ratio to plain"], whole_steps(a.repeats * 30, compiled=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
