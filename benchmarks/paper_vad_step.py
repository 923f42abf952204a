"""Step time of the paper-size VAD models (``slimtrain vad --recipe paper``) on this machine.

One training step = forward + backward + Adam on a batch of 16 crops of 4 s at 16 kHz, with DCLs and the
trade-off loss, as the recipe trains. Prints the median of ``--steps`` steps per family and the time of one
epoch over VCTK 0.92 (44,242 mic1 utterances: 2,766 steps of 16) that it implies.

    python benchmarks/paper_vad_step.py [--device cpu|cuda] [--steps 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import _common as C  # noqa: F401 - puts src/ on the path
import torch
import torch.nn.functional as F

VCTK_UTTERANCES = 44242


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    from slimtrain import TradeoffLoss, make_dynamic
    from slimtrain.apps.vad.models import build_vad_model
    from slimtrain.tasks.vad.paper import PAPER_N_MELS, PAPER_WIDTHS
    from slimtrain.train.training import make_optimizer

    dev = torch.device(args.device)
    steps_per_epoch = -(-VCTK_UTTERANCES // 16)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch 16 x 4 s at 16 kHz")
    print("| family | params | median step s | steps | epoch over VCTK (min) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for fam in ("crnn", "transformer"):
        torch.manual_seed(0)
        m = build_vad_model(fam, PAPER_N_MELS, sample_rate=16000, **PAPER_WIDTHS[fam])
        make_dynamic(m, torch.randn(2, 64000) * 0.1, kappa_min=0.125)
        m.to(dev)
        obj = TradeoffLoss(m, alpha=1.0, metric="flops")
        opt = make_optimizer(m, lr=3e-3, width_lr=0.05)
        x = (torch.randn(16, 64000) * 0.1).to(dev)
        times = []
        for _ in range(args.steps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            y = m(x)
            loss = obj(F.binary_cross_entropy_with_logits(y, torch.zeros_like(y)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        med = statistics.median(times[1:])  # the first step warms up
        n = sum(p.numel() for p in m.parameters())
        print(f"| {fam} | {n} | {med:.2f} | {args.steps} | {med * steps_per_epoch / 60:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
