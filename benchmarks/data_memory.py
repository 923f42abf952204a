"""Benchmark: peak RSS of one VAD training epoch on a corpus of HOURS of 16 kHz flac + RTTM files.

The corpus is generated on disk in a temporary folder (60 s files of synthetic speech in noise, RTTMs
beside them; :func:`slimtrain.data.fixtures.make_rttm_folder`). Each epoch runs in a fresh process
(``slimtrain vad``'s code path: :func:`slimtrain.tasks.vad.corpus.train_vad_on_corpus`, the default
CRNN with DCLs at 16 kHz, 4 s crops, batch 16, one torch thread, DataLoader workers reading the crops
from disk) and reports its peak RSS (``ru_maxrss``) and that of its worker processes. Side by side, the
same epoch over a smaller part of the corpus (``--compare-hours``, default a quarter): peak RSS that does
not grow with the hours is what streaming promises. Goal: < 2 GB at
10 h. For comparison the float32 size of the audio, what the load-everything path would hold.

    python benchmarks/data_memory.py [--hours 10] [--compare-hours H] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: F401 - puts src/ on the path

GOAL_GB = 2.0

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
train, val, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
from slimtrain.tasks.vad.corpus import CorpusDataConfig, load_corpus_data, train_vad_on_corpus
from slimtrain.tasks.vad.train import VadRunConfig
t0 = time.time()
data = load_corpus_data(CorpusDataConfig(train=train, val=val, sample_rate=16000, loader_workers=workers), progress=False)
scan = time.time() - t0
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.time()
_, row = train_vad_on_corpus(VadRunConfig(epochs=1, batch_size=16, warmup_epochs=0), data, threads=1)
print(json.dumps({"crops": len(data.train), "scan_s": round(scan, 1), "epoch_s": round(time.time() - t1, 1),
                  "rss_before_mb": before / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "hours": data.summary["train"]["hours"], "auc": row["auc"]}))
"""


def generate(root: Path, hours: float, file_seconds: float = 60.0) -> tuple[list[Path], float]:
    from slimtrain.data.fixtures import make_rttm_folder

    n = max(1, int(round(hours * 3600 / file_seconds)))
    t0 = time.time()
    # in groups of 20 files (one call each), so no more than one file's samples are in memory at a time
    for g in range(0, n, 20):
        sub = root / "train" / f"g{g // 20:03d}"
        make_rttm_folder(sub, min(20, n - g), seconds=file_seconds, seed=g, empty_rttm=0)
    make_rttm_folder(root / "val", 3, seconds=10.0, seed=10**6)
    return sorted((root / "train").glob("*")), time.time() - t0


def run_epoch(train: Path, val: Path, workers: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(train), str(val), str(workers)], capture_output=True, text=True,
                       cwd=str(C.ROOT), env={**__import__("os").environ, "PYTHONPATH": str(C.ROOT / "src")})
    if r.returncode != 0:
        raise SystemExit(f"epoch failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _link_subset(groups: list[Path], frac: float, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for g in groups[: max(1, int(round(len(groups) * frac)))]:
        (dest / g.name).symlink_to(g, target_is_directory=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compare-hours", type=float, default=None,
                    help="the smaller corpus run side by side (default: a quarter of --hours)")
    ap.add_argument("--keep", type=Path, default=None, help="generate into (or reuse) this folder and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="slimtrain-data-memory-"))
    try:
        if (root / "train").is_dir():
            groups, gen_s = sorted((root / "train").glob("g*")), 0.0
        else:
            groups, gen_s = generate(root, args.hours)
        disk = sum(f.stat().st_size for f in (root / "train").rglob("*.flac")) / 1e9
        frac = 0.25 if args.compare_hours is None else min(1.0, args.compare_hours / args.hours)
        quarter = _link_subset(groups, frac, root / f"subset{frac:g}")
        small = run_epoch(quarter, root / "val", args.workers)
        full = run_epoch(root / "train", root / "val", args.workers)
        ram_gb = full["hours"] * 3600 * 16000 * 4 / 1e9
        print(f"corpus: {full['hours']:.2f} h of 16 kHz flac in {len(groups)} folders, {disk:.2f} GB on disk "
              f"(generated in {gen_s:.0f} s); float32 in RAM would be {ram_gb:.2f} GB")
        print("| corpus | crops | scan s | epoch s | RSS before epoch MB | peak RSS MB | peak worker RSS MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in (small, full):
            print(f"| {r['hours']:.2f} h | {r['crops']} | {r['scan_s']} | {r['epoch_s']} | {r['rss_before_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['peak_worker_rss_mb']:.0f} |")
        peak_gb = max(full["peak_rss_mb"], full["peak_worker_rss_mb"]) / 1024
        print(f"peak RSS ratio {full['hours']:.2f} h / {small['hours']:.2f} h corpus: {full['peak_rss_mb'] / small['peak_rss_mb']:.3f}; "
              f"peak RSS at {full['hours']:.2f} h: {peak_gb:.2f} GB (goal < {GOAL_GB} GB, "
              f"{'met' if peak_gb < GOAL_GB else 'NOT met'}); {args.workers} DataLoader workers")
        return 0 if peak_gb < GOAL_GB else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
