"""Benchmark 2: analytic MACs/params of exported models vs two independent counters.

For the synthetic, VAD and anti-spoofing models (widths set to kappa = 0.5 of every
dynamic layer, then exported), compares per layer type and in total:
analytic MACs (slimtrain.model_cost) vs torch.utils.flop_counter (FLOPs / 2) and fvcore
(which counts one "flop" per multiply-accumulate), and analytic params vs the exported
model's parameter count. Goal: <= 1 % difference.

    python benchmarks/cost_truth.py [--kappa 0.5]
"""
from __future__ import annotations

import argparse
import warnings
from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import _common as C
import slimtrain
from _tasks import set_relative_width, task_models

GOAL = 0.01
LEAF_KIND = ((nn.Linear, "linear"), (nn.Conv1d, "conv"), (nn.Conv2d, "conv"), (nn.GRU, "rnn"), (nn.LSTM, "rnn"),
             (slimtrain.MelFrontend, "mel"))


def _kind(m: nn.Module):
    for cls, k in LEAF_KIND:
        if isinstance(m, cls):
            return k
    return None


def torch_counts(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], float]:
    """MACs per layer kind and in total, from FlopCounterMode's per-module counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
            model(x)
    counts = fc.get_flop_counts()
    root = type(model).__name__
    per: dict[str, float] = defaultdict(float)
    for name, m in model.named_modules():
        k = _kind(m)
        if k is None or not name:
            continue
        per[k] += sum(counts.get(f"{root}.{name}", {}).values()) / 2
    total = fc.get_total_flops() / 2
    per["other (attention products)"] = total - sum(per.values())
    return dict(per), total


def fvcore_counts(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], float, str]:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return {}, float("nan"), "fvcore not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fa = FlopCountAnalysis(model, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_mod = fa.by_module()
            total = float(fa.total())
            unsupported = sorted(fa.unsupported_ops())
    except Exception as e:  # noqa: BLE001
        return {}, float("nan"), f"fvcore failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    per: dict[str, float] = defaultdict(float)
    for name, m in model.named_modules():
        k = _kind(m)
        if k is not None and name:
            per[k] += by_mod.get(name, 0)
    per["other (attention products)"] = total - sum(per.values())
    missing = [u for u in unsupported if any(w in u for w in ("gru", "lstm", "stft", "matmul", "bmm"))]
    note = ("fvcore has no counter for: " + ", ".join(missing)) if missing else ""
    return dict(per), total, note


def analytic(model: nn.Module) -> tuple[dict[str, float], float, float]:
    per: dict[str, float] = defaultdict(float)
    for _, kind, macs, _ in slimtrain.layer_costs(model, hard=True):
        if float(macs):
            per[kind] += float(macs)
    g = slimtrain.get_graph(model)
    c = slimtrain.model_cost(model.eval(), hard=True)
    per["other (attention products)"] = g.fixed_macs / g.batch
    return dict(per), float(c.macs), float(c.params)


def pct(a: float, b: float) -> str:
    if b != b or b == 0:
        return "n/a" if a else "+0.000%"
    return f"{100 * (a - b) / b:+.3f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kappa", type=float, default=0.5, help="relative width of every dynamic layer before export")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows, totals, notes = [], [], []
    worst = 0.0
    for t in task_models():
        if t.skipped:
            totals.append([t.name, t.skipped, "", "", "", "", "", ""])
            continue
        dyn = t.dynamic()
        set_relative_width(dyn, a.kappa)
        dyn.eval()
        small = slimtrain.export(dyn)
        x = t.sample[:1]  # cost per item
        per_a, mac_a, par_a = analytic(dyn)
        per_t, mac_t = torch_counts(small, x)
        per_f, mac_f, note = fvcore_counts(small, x)
        par_n = sum(p.numel() for p in small.parameters())
        for k in sorted(set(per_a) | set(per_t) | set(per_f)):
            va, vt = per_a.get(k, 0.0), per_t.get(k, 0.0)
            vf = per_f.get(k, float("nan")) if per_f else float("nan")
            if not va and not vt and not (vf == vf and abs(vf) > 0.5):
                continue
            fv_diff = "fvcore only (not products)" if not va and vf == vf and vf > 0 else pct(va, vf)
            rows.append([t.name, k, f"{va:,.0f}", f"{vt:,.0f}", pct(va, vt), f"{vf:,.0f}" if vf == vf else "n/a",
                         fv_diff])
        d_t = abs(mac_a - mac_t) / mac_t
        d_p = abs(par_a - par_n) / par_n
        worst = max(worst, d_t, d_p)
        totals.append([t.name, f"{mac_a:,.0f}", f"{mac_t:,.0f}", pct(mac_a, mac_t), f"{mac_f:,.0f}" if mac_f == mac_f else "n/a",
                       pct(mac_a, mac_f), f"{par_a:,.0f} / {par_n:,}", "ok" if max(d_t, d_p) <= GOAL else "ABOVE GOAL"])
        if note:
            notes.append(f"{t.name}: {note}")
    print(f"Cost truth at kappa={a.kappa} (every dynamic layer at that relative width, then exported); "
          f"MACs per input item; {C.machine()}")
    print(C.table(["model", "MACs analytic", "MACs torch counter", "diff", "MACs fvcore", "diff fvcore",
                   "params analytic / exported", f"goal <= {GOAL:.0%} (torch, params)"], totals))
    print()
    print("Per layer type:")
    print(C.table(["model", "layer type", "MACs analytic", "MACs torch counter", "diff", "MACs fvcore", "diff fvcore"], rows))
    for n in notes:
        print("note:", n)
    print("note: fvcore also counts operations that are not products (batch norm, pooling, softmax...) "
          "in 'other', and none for GRU/LSTM; the analytic model counts matrix products and convolutions "
          "as torch.utils.flop_counter does (the STFT is not counted by either).")
    print(f"worst difference vs torch counter / params: {100 * worst:.4f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
