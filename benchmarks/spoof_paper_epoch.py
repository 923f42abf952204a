"""Expected run time of one ``slimtrain spoof --recipe paper`` epoch on ASVspoof 2019 LA (25,380 training files).

Times a few training steps of the paper's countermeasure (ResNet34, base width 64, 16 kHz, every stage
dynamic at kappa_min 0.125, batch 32 of 4 s crops, the loss and optimiser of the run) on generated
audio, and the data side of a step (32 random 4 s crops read from 16 kHz flac files on disk, as the
DataLoader workers do), and extrapolates to the 793 steps of an epoch. Prints the device, the
threads, the median step time and the peak RSS.

    python benchmarks/spoof_paper_epoch.py [--steps 3] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slimtrain import training  # noqa: E402
from slimtrain.audio.data.spoof_corpus import SpoofCrops, read_spoof_corpus  # noqa: E402
from slimtrain.audio.data.spoof_fixtures import make_plain_csv  # noqa: E402
from slimtrain.core.loss import TradeoffLoss  # noqa: E402
from slimtrain.tasks.spoof.corpus_cli import PAPER  # noqa: E402
from slimtrain.tasks.spoof.corpus_train import frontend_for_rate  # noqa: E402
from slimtrain.apps.spoof.models import build_resnet, make_dynamic_stages  # noqa: E402

TRAIN_FILES = 25_380  # ASVspoof 2019 LA train: 2,580 bona fide + 22,800 spoofed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default: 3)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop-seconds", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sr = PAPER["sample_rate"]
    crop = int(a.crop_seconds * sr)
    model = build_resnet(width=PAPER["width"], blocks=PAPER["blocks"], sample_rate=sr, **frontend_for_rate(sr))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, crop, generator=g) * 0.1
    y = (torch.rand(a.batch, generator=g) < 0.1).float()
    make_dynamic_stages(model, x[:8], PAPER["stages"], 0.125)
    model.to(dev)
    objective = TradeoffLoss(model, alpha=1.0, metric="flops").to(dev)
    opt = training.make_optimizer(model, 3e-3, 0.02)
    xd, yd = x.to(dev), y.to(dev)
    times = []
    for i in range(a.steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = objective(torch.nn.functional.binary_cross_entropy_with_logits(model(xd), yd, pos_weight=torch.tensor(
            8.84, device=dev)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    with tempfile.TemporaryDirectory() as d:  # the data side: 32 random crops from flac files on disk
        csv = make_plain_csv(d, n_bona=a.batch // 2, n_per_attack=a.batch // 6 + 1, seconds=(3.0, 6.0))
        ds = SpoofCrops(read_spoof_corpus(csv, progress=False), sr, crop, seed=0)
        t = time.perf_counter()
        for i in range(a.batch):
            ds[i % len(ds)]
        load = time.perf_counter() - t
    steps = TRAIN_FILES // a.batch
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    print(f"device {dev} ({torch.get_num_threads()} threads), paper countermeasure: {params / 1e6:.1f} M params, "
          f"batch {a.batch} x {a.crop_seconds:g} s at {sr} Hz")
    print(f"train step: median {step:.2f} s of {len(times)} ({', '.join(f'{t:.2f}' for t in times)})")
    print(f"data of one batch (32 crops read from flac, one process): {load:.3f} s")
    print(f"epoch of {TRAIN_FILES} files = {steps} steps: {steps * step / 60:.0f} min "
          f"({steps * step / 3600:.1f} h) of training steps; peak RSS {rss:.0f} MiB")
    if math.isfinite(step) and dev.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
