"""Benchmark 4: peak resident memory (RSS) of training with and without DCLs.

Each variant trains in its own fresh process (plain full-width model vs the same model
with DCLs and the trade-off loss; same batch, 10 steps) and reports its peak RSS
(``ru_maxrss``) and the growth over the RSS just before training (the memory training
itself needs: activations, gradients, optimiser state). Processes are run interleaved
(plain, DCL, plain, DCL) and the median is taken. Goal: peak RSS ratio <= 1.15.

    python benchmarks/memory.py [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import _common as C

GOAL = 1.15
HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, warnings
sys.path.insert(0, sys.argv[1])
import torch, torch.nn.functional as F
import _common as C
import slimtrain
from slimtrain.train.training import make_optimizer
torch.set_num_threads(1)
torch.manual_seed(0)
case, dynamic = sys.argv[2], sys.argv[3] == "1"
if case == "conv":
    model, x = C.ConvStack(40, 128), torch.randn(64, 40, 400)
    loss_fn = lambda y: F.cross_entropy(y, torch.zeros(64, dtype=torch.long))
elif case == "gru":
    model, x = C.GRUModel(40, 128), torch.randn(64, 200, 40)
    loss_fn = lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y))
else:
    from slimtrain.apps.vad.models import build_vad_model
    model, x = build_vad_model("crnn"), torch.randn(32, 32000) * 0.1
    loss_fn = lambda y: F.binary_cross_entropy_with_logits(y, torch.zeros_like(y))
obj = None
if dynamic:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimtrain.make_dynamic(model, x[:2], kappa_min=0.1)
    obj = slimtrain.TradeoffLoss(model, alpha=0.1)
    for d in model.modules():
        if isinstance(d, slimtrain.DynamicWidth):
            d.set_width(0.7 * d.num_channels)  # mid-training: a blended channel in every DCL
model.train()
opt = make_optimizer(model, 1e-4, 1e-3)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(10):
    loss = loss_fn(model(x))
    if obj is not None:
        loss = obj(loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024}))
"""


def _run(case: str, dynamic: bool) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(HERE), case, "1" if dynamic else "0"],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="processes per variant (interleaved)")
    a = ap.parse_args(argv)
    rows = []
    names = {"conv": "Conv1d 40-128x3, batch 64x400", "gru": "GRU 40-128, batch 64x200",
             "vad": "VAD crnn, batch 32 x 4 s"}
    for case in ("conv", "gru", "vad"):
        res: dict[bool, list[dict]] = {False: [], True: []}
        try:
            for _ in range(a.runs):
                for dyn in (False, True):
                    res[dyn].append(_run(case, dyn))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows.append([names[case], f"skipped: {e}"] + [""] * 5)
            continue
        pk = {d: statistics.median(r["peak_mb"] for r in res[d]) for d in res}
        gr = {d: statistics.median(r["peak_mb"] - r["base_mb"] for r in res[d]) for d in res}
        ratio = pk[True] / pk[False]
        rows.append([names[case], f"{pk[False]:.0f}", f"{pk[True]:.0f}", f"{ratio:.3f}", f"{gr[False]:.0f}",
                     f"{gr[True]:.0f}", f"{gr[True] / max(gr[False], 1e-9):.3f}",
                     "ok" if ratio <= GOAL else "ABOVE GOAL"])
    print(f"Peak RSS of 10 training steps in a fresh process (median of {a.runs} interleaved runs); {C.machine()}")
    print(C.table(["model", "plain peak MB", "DCL peak MB", "ratio", "plain growth MB", "DCL growth MB",
                   "growth ratio", f"goal <= {GOAL}"], rows))
    print("growth = peak RSS minus the RSS before the first step (activations, gradients, optimiser state).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
