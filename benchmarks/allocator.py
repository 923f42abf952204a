"""Training steps with and without ``keep_freed_memory`` (slimtrain.train.allocator), paired in one run.

glibc hands large freed buffers back to the OS, so every CPU training step page-faults its activations in
again; :func:`slimtrain.train.training.fit` keeps them in the process instead. Each run here is a fresh
subprocess with one torch thread that trains one model for ``--steps`` optimiser steps through ``fit`` (after
``--warmup`` steps not counted), with ``SLIMTRAIN_KEEP_FREED_MEMORY`` 1 (``kept``) or 0 (``returned``); the
two arms alternate (kept, returned, kept, ...), so a change of load on the shared machine hits both alike.
Per run: seconds per step (median), the process's user and system CPU seconds and its peak RSS; the
summary gives the ratio kept / returned per pair (mean and 95 % interval).

    python benchmarks/allocator.py [--models aasist-l,spoof-resnet,vad-crnn] [--pairs 3] [--steps 6]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import ROOT

MODELS = ("aasist-l", "spoof-resnet", "vad-crnn")


def _child(model_name: str, steps: int, warmup: int) -> dict:
    import resource
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    from slimtrain.train.allocator import keep_freed_memory
    from slimtrain.train.training import fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if model_name == "aasist-l":
        from slimtrain.tasks.spoof.aasist import build_aasist
        model, x, y = build_aasist("aasist-l", 8000), torch.randn(16, 4000), torch.randint(0, 2, (16,)).float()
    elif model_name == "spoof-resnet":
        from slimtrain.apps.spoof.models import build_resnet
        model, x, y = build_resnet(), torch.randn(32, 8000), torch.randint(0, 2, (32,)).float()
    elif model_name == "vad-crnn":
        from slimtrain.apps.vad.models import build_vad_model
        model = build_vad_model("crnn")
        x = torch.randn(32, 8000)
        y = torch.randint(0, 2, model(x[:1]).shape[1:]).float().expand(32, -1).contiguous()
    else:
        raise SystemExit(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times: list[float] = []

    def batches(epoch: int):
        times.append(time.perf_counter())
        yield x, y

    fit(model, batches, F.binary_cross_entropy_with_logits, None, opt, warmup + steps, progress=False)  # one step per epoch
    times.append(time.perf_counter())
    per_step = [b - a for a, b in zip(times, times[1:])][warmup:]
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"model": model_name, "tuned": keep_freed_memory(), "step_s": statistics.median(per_step),
            "user_s": r.ru_utime, "sys_s": r.ru_stime, "peak_rss_mib": r.ru_maxrss / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.steps, a.warmup)))
        return 0
    from slimtrain.train.stats import format_interval, mean_interval

    print(f"{'model':13s} {'arm':9s} {'s/step':>7s} {'user s':>7s} {'sys s':>6s} {'peak MiB':>8s}")
    for name in a.models.split(","):
        ratios: dict[str, list[float]] = {"step_s": [], "sys_s": [], "peak_rss_mib": []}
        for _ in range(a.pairs):
            pair = {}
            for arm, flag in (("kept", "1"), ("returned", "0")):
                env = {**os.environ, "SLIMTRAIN_KEEP_FREED_MEMORY": flag, "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": str(ROOT / "src")}
                out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(a.steps),
                                      "--warmup", str(a.warmup)], env=env, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                if row["tuned"] != (flag == "1"):
                    raise SystemExit(f"{name}: the allocator was {'not ' if flag == '1' else ''}tuned in arm {arm}")
                pair[arm] = row
                print(f"{name:13s} {arm:9s} {row['step_s']:7.3f} {row['user_s']:7.1f} {row['sys_s']:6.1f} "
                      f"{row['peak_rss_mib']:8.0f}", flush=True)
            for k in ratios:
                ratios[k].append(pair["kept"][k] / pair["returned"][k])
        print(f"  {name}: kept / returned, {a.pairs} pairs: step time "
              f"{format_interval(mean_interval(ratios['step_s']), '.2f')}, system CPU "
              f"{format_interval(mean_interval(ratios['sys_s']), '.2f')}, peak RSS "
              f"{format_interval(mean_interval(ratios['peak_rss_mib']), '.2f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
