"""make_dynamic before and after it became one trace + a plan (issue 20): wall time and trace passes, side by side.

For each model the "before" side (the source of a git revision, ``git archive REV src``) and this tree run in
turn, each in a subprocess of this interpreter that builds a fresh model per call (not timed), calls
``slimtrain.make_dynamic`` once to warm up, then ``--repeats`` times, and counts the calls of
``slimtrain.graph.trace_channels`` (the sample forward passes make_dynamic runs). Medians are reported.

    python benchmarks/make_dynamic_pipeline.py [--before c073c0d] [--repeats 7] [--only resnet,vad_transformer]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: a ResNet-ish and a transformer-ish model of each origin (tests/_zoo.py), and a model whose width is refused
MODELS = ("resnet", "spoof_resnet", "convnext", "vad_crnn", "vad_transformer", "bert", "torch_transformer_encoder",
          "refused")


def _worker(name: str, repeats: int) -> dict:
    """Runs inside the subprocess: times make_dynamic on fresh copies of one model."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from torch import nn

    import slimtrain
    import slimtrain.core.graph as graph

    torch.set_num_threads(1)
    if name == "refused":  # a sigmoid between two layers: found unfit by the graph check, left fixed
        def build():
            return nn.Sequential(nn.Linear(16, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)), \
                torch.randn(8, 16)
    else:
        import _zoo

        build = next(e.build for e in _zoo.ZOO if e.name == name)
    calls = []
    real = graph.trace_channels
    graph.trace_channels = lambda *a, **k: calls.append(1) or real(*a, **k)
    times, traces = [], []
    for i in range(repeats + 1):
        torch.manual_seed(0)
        model, x = build()
        calls.clear()
        t0 = time.perf_counter()
        slimtrain.make_dynamic(model, x)
        if i:  # the first call warms up (lazy imports, caches)
            times.append(time.perf_counter() - t0)
            traces.append(len(calls))
    widths = sorted(slimtrain.dynamic_widths(model))
    return {"seconds": statistics.median(times), "traces": traces[0], "widths": widths}


def _run(src: Path, name: str, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--repeats", str(repeats)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} under {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="c073c0d", help="git revision of the 'before' side (default: the commit "
                    "before make_dynamic became one trace)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated model names (default: %s)" % ",".join(MODELS))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.repeats)))
        return 0
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "before.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), args.before, "src"], check=True)
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
        before_src, after_src = Path(tmp) / "src", ROOT / "src"
        print(f"make_dynamic, median of {args.repeats} calls per model, 1 thread; before = {args.before}, "
              "after = this tree\n")
        print("| model | before ms | after ms | after / before | traces before | traces after | same widths |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for name in names:
            b = _run(before_src, name, args.repeats)
            a = _run(after_src, name, args.repeats)
            print(f"| {name} | {b['seconds'] * 1e3:.1f} | {a['seconds'] * 1e3:.1f} | {a['seconds'] / b['seconds']:.2f} "
                  f"| {b['traces']} | {a['traces']} | {'yes' if a['widths'] == b['widths'] else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
