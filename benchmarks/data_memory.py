"""Benchmark: peak RSS of VAD training on a corpus of many hours of 16 kHz flac + RTTM files.

The corpus (``--hours``, default 10) is generated on disk in a temporary folder: 60 s files of synthetic
speech in noise with RTTMs beside them (:func:`slimtrain.data.fixtures.make_rttm_folder`), in folders
of 20 files. Every measurement runs in a fresh process and reports its peak RSS (``ru_maxrss``) and the
largest peak RSS of its DataLoader worker processes:

1. **data pass**: one epoch of the training ``DataLoader`` (``slimtrain vad``'s
   :class:`~slimtrain.data.VadCropDataset`, 4 s crops, batch 16, 2 workers, crop offsets and labels as in
   training) over the whole corpus and over a quarter of it, without a model: every crop of every file
   is read and resampled from disk, so this is the data path's memory at the full size;
2. **training epoch**: one epoch of :func:`slimtrain.tasks.vad.corpus.train_vad_on_corpus` (the default
   CRNN with DCLs at 16 kHz, one torch thread, the same loader) over ``--train-hours`` (default 1) and
   a quarter of that: the model's share (activations, gradients, optimiser) depends on the batch, not
   on the hours, which the pair shows.

Side by side: the peak-RSS ratios of the larger to the smaller corpus (1.0 = no growth with the hours),
and the float32 size of the audio, what the load-everything path would hold. Goal: < 2 GB at 10 h.

    python benchmarks/data_memory.py [--hours 10] [--train-hours 1] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
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
mode, train, val, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch
torch.set_num_threads(1)
from slimtrain.tasks.vad.corpus import CorpusDataConfig, load_corpus_data, train_vad_on_corpus, _loader
from slimtrain.tasks.vad.train import VadRunConfig
t0 = time.time()
data = load_corpus_data(CorpusDataConfig(train=train, val=val, sample_rate=16000, loader_workers=workers), progress=False)
scan = time.time() - t0
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.time()
if mode == "data":
    data.train.set_epoch(0)
    n = 0
    for x, y in _loader(data.train, 16, workers, True, 0):
        n += x.shape[0]
    assert n == len(data.train)
else:
    train_vad_on_corpus(VadRunConfig(epochs=1, batch_size=16, warmup_epochs=0), data, threads=1)
print(json.dumps({"mode": mode, "crops": len(data.train), "scan_s": round(scan, 1), "epoch_s": round(time.time() - t1, 1),
                  "rss_before_mb": before / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "hours": data.summary["train"]["hours"]}))
"""


def generate(root: Path, hours: float, file_seconds: float = 60.0) -> float:
    from slimtrain.audio.data.fixtures import make_rttm_folder

    n = max(1, int(round(hours * 3600 / file_seconds)))
    t0 = time.time()
    for g in range(0, n, 20):  # one group of 20 files per call: one file's samples in memory at a time
        make_rttm_folder(root / "train" / f"g{g // 20:03d}", min(20, n - g), seconds=file_seconds, seed=g, empty_rttm=0)
    make_rttm_folder(root / "val", 3, seconds=10.0, seed=10**6)
    return time.time() - t0


def run(mode: str, train: Path, val: Path, workers: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(train), str(val), str(workers)], capture_output=True,
                       text=True, cwd=str(C.ROOT), env={**os.environ, "PYTHONPATH": str(C.ROOT / "src")})
    if r.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def subset(groups: list[Path], hours: float, file_hours: float, dest: Path) -> Path:
    """A folder of symbolic links to the first groups that hold about ``hours`` of audio."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    k = max(1, min(len(groups), int(round(hours / file_hours))))
    for g in groups[:k]:
        (dest / g.name).symlink_to(g.resolve(), target_is_directory=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=10.0, help="hours of audio generated (data pass)")
    ap.add_argument("--train-hours", type=float, default=1.0, help="hours of the training epoch")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--full-train", action="store_true",
                    help="also train one epoch over the whole corpus (measured, not estimated; hours of CPU at 10 h)")
    ap.add_argument("--keep", type=Path, default=None, help="generate into (or reuse) this folder and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="slimtrain-data-memory-"))
    try:
        gen_s = 0.0 if (root / "train").is_dir() else generate(root, args.hours)
        groups = sorted((root / "train").glob("g*"))
        disk = sum(f.stat().st_size for f in (root / "train").rglob("*.flac")) / 1e9
        group_h = 20 / 60
        rows = [run("data", root / "train", root / "val", args.workers),
                run("data", subset(groups, args.hours / 4, group_h, root / "sub_data"), root / "val", args.workers),
                run("train", subset(groups, args.train_hours, group_h, root / "sub_train"), root / "val", args.workers),
                run("train", subset(groups, args.train_hours / 4, group_h, root / "sub_train4"), root / "val",
                    args.workers)]
        if args.full_train:
            rows.append(run("train", root / "train", root / "val", args.workers))
        full = rows[0]
        print(f"corpus: {full['hours']:.2f} h of 16 kHz flac ({len(groups)} folders of 20 x 60 s files), {disk:.2f} GB "
              f"on disk{f', generated in {gen_s:.0f} s' if gen_s else ''}; as float32 in RAM: "
              f"{full['hours'] * 3600 * 16000 * 4 / 1e9:.2f} GB. {args.workers} DataLoader workers, batch 16 x 4 s.")
        print("| run | hours | crops | scan s | epoch s | RSS before MB | peak RSS MB | peak worker RSS MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {'data pass' if r['mode'] == 'data' else 'training epoch'} | {r['hours']:.2f} | {r['crops']} | "
                  f"{r['scan_s']} | {r['epoch_s']} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['peak_worker_rss_mb']:.0f} |")
        d_ratio = rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
        w_ratio = rows[0]["peak_worker_rss_mb"] / rows[1]["peak_worker_rss_mb"]
        t_ratio = rows[2]["peak_rss_mb"] / rows[3]["peak_rss_mb"]
        # a training epoch at the full size: its measured peak plus the data path's measured growth to the full size
        est = (rows[2]["peak_rss_mb"] + max(0.0, rows[0]["peak_rss_mb"] - rows[1]["peak_rss_mb"])) / 1024
        total = est + args.workers * max(rows[0]["peak_worker_rss_mb"], rows[2]["peak_worker_rss_mb"]) / 1024
        print(f"peak RSS ratios, larger / smaller corpus: data pass {d_ratio:.3f} (workers {w_ratio:.3f}) for "
              f"{rows[0]['hours']:.2f} / {rows[1]['hours']:.2f} h; training epoch {t_ratio:.3f} for "
              f"{rows[2]['hours']:.2f} / {rows[3]['hours']:.2f} h")
        print(f"training epoch at {full['hours']:.2f} h, estimated as the {rows[2]['hours']:.2f} h epoch's peak plus the data "
              f"pass's growth from {rows[1]['hours']:.2f} to {full['hours']:.2f} h: {est:.2f} GB in the main process, "
              f"{total:.2f} GB with its {args.workers} workers at their peaks (goal < {GOAL_GB} GB: "
              f"{'met' if total < GOAL_GB else 'NOT met'})")
        if args.full_train:
            r = rows[4]
            total = (r["peak_rss_mb"] + args.workers * r["peak_worker_rss_mb"]) / 1024
            print(f"training epoch over the whole {r['hours']:.2f} h, measured: peak RSS {r['peak_rss_mb'] / 1024:.2f} GB in "
                  f"the main process, {total:.2f} GB with its {args.workers} workers at their peaks (goal < {GOAL_GB} GB: "
                  f"{'met' if total < GOAL_GB else 'NOT met'})")
        return 0 if total < GOAL_GB else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
