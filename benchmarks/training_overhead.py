"""Benchmark 1: time per training step of a DCL model vs the same plain full-width model.

Both steps do forward, loss, backward and an Adam step on the same batch; the DCL
step also computes the trade-off cost term (``TradeoffLoss``). Runs are interleaved
(plain, DCL, plain, DCL, ...) and the median of each is reported. Every DCL sits at
K = 0.7 N (a blended channel with noise, as in the middle of training), not at full width.

    python benchmarks/training_overhead.py [--steps 30] [--threads 1] [--mode eager|compiled|both]
                                           [--device cpu|cuda|mps] [--repeats R]

``--repeats R``: R blocks of ``--steps`` interleaved steps per model; the ratio column then gives the mean
of the R per-block ratios (median DCL / median plain) with its 95 % Student-t half-width
(``slimtrain.stats.mean_interval``), and the ms columns the medians over all blocks.

On an accelerator (``--device cuda``) the steps are timed on the wall clock with a synchronize before
each reading, and a ``syncs/step`` column counts the device-to-host syncs of one DCL training step
(``torch.cuda.set_sync_debug_mode``: every sync the step asks for raises a warning, counted here).

``--mode compiled`` compiles the forward and loss of BOTH sides with ``torch.compile`` (inductor,
``fullgraph=True``; backward through AOTAutograd, Adam step eager on both sides) before timing;
the DCL side then runs the tensor path of the DCL and cost term (no host reads).
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import _common as C  # noqa: E402  (sets sys.path)
import slimtrain
from slimtrain.train.stats import format_interval, mean_interval
from slimtrain.train.training import seed_everything

GOAL = 1.10


def cases():
    yield "MLP 64-256-256-10", C.MLP(), torch.randn(256, 64), lambda y: F.cross_entropy(y, torch.zeros(256, dtype=torch.long, device=y.device))
    yield "Conv1d 40-64x3 (T=100)", C.ConvStack(), torch.randn(32, 40, 100), lambda y: F.cross_entropy(y, torch.zeros(32, dtype=torch.long, device=y.device))
    yield "GRU 40-64 (T=100)", C.GRUModel(), torch.randn(32, 100, 40), lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y))
    # the same MLP family 16x wider per step: the fixed per-step cost of the DCLs stays, its share shrinks
    yield "MLP 256-1024-1024-10", C.MLP(256, 1024, 10), torch.randn(512, 256), lambda y: F.cross_entropy(y, torch.zeros(512, dtype=torch.long, device=y.device))
    # the case-study models at their training batch sizes (steps of 10 ms or more)
    from slimtrain.apps.vad.models import build_vad_model

    torch.manual_seed(0)
    yield ("VAD CRNN (conv+GRU), 16 x 1 s", build_vad_model("crnn"), torch.randn(16, 8000) * 0.1,
           lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y)))
    yield ("VAD Transformer, 16 x 1 s", build_vad_model("transformer"), torch.randn(16, 8000) * 0.1,
           lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y)))
    # the sweeps' own training steps: batches of 16 clips of 4 s (docs/vad.md)
    for fam, label in (("crnn", "CRNN (conv+GRU)"), ("transformer", "Transformer")):
        torch.manual_seed(0)
        yield (f"VAD {label}, 16 x 4 s (sweep step)", build_vad_model(fam), torch.randn(16, 32000) * 0.1,
               lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y)))


def count_syncs(step, device: torch.device, steps: int = 3) -> str:
    """Device-to-host syncs per call of ``step`` (CUDA only; ``n/a`` elsewhere)."""
    if device.type != "cuda":
        return "n/a"
    import warnings

    step()  # warm: first-call allocations and lazy init are not the step's syncs
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message) for w in caught)
    return f"{n / steps:g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model (after 5 warm-up steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU time (robust on a shared machine); wall: wall clock")
    ap.add_argument("--mode", choices=("eager", "compiled", "both"), default="both",
                    help="eager PyTorch, torch.compile on both sides, or both tables")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (accelerators: wall clock)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="blocks of --steps interleaved steps per model (> 1: the ratio with a 95%% interval)")
    ap.add_argument("--cases", default=None, metavar="TEXT[,TEXT]",
                    help="only the models whose name contains one of these (e.g. 'MLP 256,CRNN')")
    a = ap.parse_args(argv)
    a.device = torch.device(a.device)
    if a.device.type != "cpu":
        a.clock = "wall"
    torch.set_num_threads(a.threads)
    torch._dynamo.config.allow_rnn = True  # the GRU model compiles whole
    torch._dynamo.config.cache_size_limit = 64  # each model is a new compilation of the same step code
    worst = 0.0
    for mode in (("eager", "compiled") if a.mode == "both" else (a.mode,)):
        worst = max(worst, _table(a, mode == "compiled"))
    print(f"worst ratio: {worst:.3f}")
    return 0


def _table(a, compiled: bool) -> float:
    seed_everything(0)
    rows = []
    worst = 0.0
    dev = a.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (
        torch.mps.synchronize if dev.type == "mps" else (lambda: None))
    for name, model, x, loss_fn in cases():
        if a.cases and not any(c.strip() in name for c in a.cases.split(",")):
            continue
        model, x = model.to(dev), x.to(dev)
        plain = model.train()
        dyn = slimtrain.make_dynamic(copy.deepcopy(model), x[:2], kappa_min=0.1).train()
        obj = slimtrain.TradeoffLoss(dyn, alpha=0.1)
        for d in dyn.modules():
            if isinstance(d, slimtrain.DynamicWidth):
                d.set_width(0.7 * d.num_channels + 0.3)
        steps = {"plain": C.training_step(plain, x, loss_fn, compiled=compiled),
                 "dcl": C.training_step(dyn, x, loss_fn, obj, compiled=compiled)}
        blocks = [C.interleaved(steps, repeats=a.steps, warmup=5 if r == 0 else 1, clock=a.clock, sync=sync)
                  for r in range(max(1, a.repeats))]
        p = C.median([v for t in blocks for v in t["plain"]]) * 1e3
        d = C.median([v for t in blocks for v in t["dcl"]]) * 1e3
        ratio = mean_interval([C.median(t["dcl"]) / C.median(t["plain"]) for t in blocks])
        worst = max(worst, ratio.mean)
        rows.append([name, tuple(x.shape).__str__(), f"{p:.3f}", f"{d:.3f}", format_interval(ratio, ".3f"),
                     "ok" if ratio.mean <= GOAL else "ABOVE GOAL", count_syncs(steps["plain"], dev),
                     count_syncs(steps["dcl"], dev)])
    mode = "torch.compile (inductor, fullgraph) on both sides" if compiled else "eager"
    reps = f"{a.repeats} blocks of " if a.repeats > 1 else ""
    print(f"Training step {a.clock} time on {dev}, {mode}, median of {reps}{a.steps} interleaved steps, "
          f"{a.threads} thread(s); {C.machine()}")
    print(C.table(["model", "batch", "plain ms", "DCL+cost ms", "ratio", f"goal <= {GOAL}",
                   "syncs/step plain", "syncs/step DCL"], rows))
    print()
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
