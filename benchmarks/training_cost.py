"""What a whole DCL training run costs against training the full model: CPU time, peak memory, metric.

For the VAD CRNN, the VAD Transformer and the anti-spoofing ResNet at their sweep settings, three arms
with paired seeds (the same seed: the same data order and initialisation stream):

* ``plain``: the full-width model trained without DCLs (the sweep's fixed x1.0 row);
* ``dcl``: DCLs to kappa_min 0.25 (VAD: alpha 1.0 and the last half of the epochs settled, per-head
  widths and spread mel bands for the Transformer; anti-spoofing: all four stages, the floor budget),
  never compacted (``compact_every=None``);
* ``compact``: the same DCL run cut to its widths after every epoch and at the settle point
  (``compact_every=1``, :func:`slimtrain.compact`); the anti-spoofing run (4 long epochs) also after every
  8 optimiser steps (``compact_steps=8``). A cut changes no training step (the kept channels compute
  what they computed), so the two DCL arms differ only in what they cost.

Every run is a fresh subprocess with one torch thread; runs are interleaved (plain, dcl, compact for
one seed, then the next seed), so a change of load on the shared machine hits the arms alike. Reported
per run: the process CPU time of the whole run (model building, training, export and the final scoring) and
of its training loop alone (the epochs: forward, backward, optimiser steps, compaction), the peak RSS
of the process and what training added to it, the final metric (VAD: test frame AUC; anti-spoofing:
pooled EER %) and the exported model's cost. The summary gives the CPU ratio compacted / plain and
dcl / plain (mean and 95 % interval of the per-seed ratios) and whether the compacted metric lies in
the 95 % interval of the uncompacted DCL runs (``slimtrain.stats``; n = 1: no interval); the same table
as the README's, which ``slimtrain report`` generates from the CSV.

    python benchmarks/training_cost.py [--quick] [--seeds 3] [--epochs N] [--models vad-crnn,vad-transformer,spoof]
                                       [--csv docs/training_cost.csv] [--data DIR]

``--quick``: the tasks' quick data sets (built into ``--data`` if missing, offline, a few minutes each;
the networks stay the sweeps'); the epochs default to the sweeps' (VAD 24, anti-spoofing 4) or to 4
with ``--quick``. Goal (issue 22): compacted <= 0.8 x plain at the same epochs, metric within the
uncompacted DCL interval.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import _common as C  # noqa: F401  (sets sys.path)

MODELS = ("vad-crnn", "vad-transformer", "spoof")
ARMS = ("plain", "dcl", "compact")
GOAL = 0.8
KAPPA = 0.25
COMPACT_STEPS = 8  # anti-spoofing compacted arm: also cut every 8 optimiser steps (fit(compact_steps=8))
FIELDS = ["model", "arm", "seed", "epochs", "quick", "cpu_seconds", "loop_cpu_seconds", "peak_rss_mib", "train_rss_mib", "metric_name",
          "metric", "mflops_per_s", "params", "widths"]


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _timed(module, name: str, spent: list) -> None:
    """Wrap ``module.name`` so the process CPU time of its calls adds up in ``spent[0]``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        t0 = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - t0
    setattr(module, name, wrapper)


def run_one(job: dict) -> dict:
    """One training run in this process (called in a fresh subprocess by :func:`main`)."""
    import torch

    torch.set_num_threads(1)
    loop = [0.0]  # CPU seconds in the training loop alone (the tasks' train_loop / fit)
    model, arm, seed, epochs, quick, data = (job[k] for k in ("model", "arm", "seed", "epochs", "quick", "data"))
    compact_every = None if arm == "dcl" else 1
    if model.startswith("vad-"):
        from slimtrain.tasks.vad.data import load_vad_data
        from slimtrain.tasks.vad import train as vad_train
        from slimtrain.tasks.vad.train import VadRunConfig, default_settle_epochs, train_vad

        _timed(vad_train, "train_loop", loop)
        fam = model.split("-", 1)[1]
        split, _ = load_vad_data(data)
        if arm == "plain":
            cfg = VadRunConfig(family=fam, kappa_min=None, epochs=epochs, seed=seed)
        else:  # the sweep's DCL row at kappa_min 0.25 (VadSweepConfig defaults)
            cfg = VadRunConfig(family=fam, kappa_min=KAPPA, alpha=1.0, epochs=epochs, seed=seed,
                               settle_epochs=default_settle_epochs(epochs), band_order="spread",
                               heads="width" if fam == "transformer" else "count", compact_every=compact_every)
        rss0, t0 = _maxrss_mib(), time.process_time()
        _, row = train_vad(cfg, split, progress=False, threads=1)
        cpu = time.process_time() - t0
        metric_name, metric, cost, params = "test AUC", row["auc"], row["mflops_per_s"], row["params"]
        widths = row["widths"]
    else:
        from slimtrain.tasks.spoof.data import load_split
        from slimtrain.tasks.spoof import train as spoof_train
        from slimtrain.tasks.spoof.train import SpoofConfig, train_run

        _timed(spoof_train, "_fit", loop)
        over = {"epochs": epochs, "seed": seed, "compact_every": compact_every,
                # the widths fall inside the first epoch after the warm-up: cut every 8 of its 56 steps
                "compact_steps": COMPACT_STEPS if arm == "compact" else None}
        cfg = SpoofConfig(**over)  # the sweep's network (ResNet34 blocks, width 8), also with --quick data
        train, test = load_split(Path(data), "train"), load_split(Path(data), "eval")
        unseen = tuple(json.loads((Path(data) / "manifest.json").read_text())["unseen_attacks"])
        dcl = {} if arm == "plain" else {"stages": (0, 1, 2, 3), "kappa_min": KAPPA, "floor": True}
        rss0, t0 = _maxrss_mib(), time.process_time()
        row = train_run(cfg, train, test, unseen, progress=False, threads=1, **dcl)
        cpu = time.process_time() - t0
        metric_name, metric = "pooled EER %", row["eer_pooled"]
        cost, params = row["macs_per_second"] * 2 / 1e6, row.get("params_exported", row.get("params"))
        widths = row.get("widths", "")
    peak = _maxrss_mib()
    return {"model": model, "arm": arm, "seed": seed, "epochs": epochs, "quick": int(quick),
            "cpu_seconds": round(cpu, 2), "loop_cpu_seconds": round(loop[0], 2), "peak_rss_mib": round(peak, 1), "train_rss_mib": round(peak - rss0, 1),
            "metric_name": metric_name, "metric": float(metric), "mflops_per_s": round(float(cost), 4),
            "params": int(params), "widths": json.dumps(widths) if not isinstance(widths, str) else widths}


def _ensure_data(model: str, quick: bool, root: Path) -> str:
    """The data folder of ``model``'s task (built when missing)."""
    if model.startswith("vad-"):
        from slimtrain.tasks.vad.build import build_vad_data
        from slimtrain.tasks.vad.data import VadDataConfig

        out = root / ("vad-quick" if quick else "vad")
        build_vad_data(VadDataConfig.quick() if quick else VadDataConfig(), out, progress=False)
        return str(out)
    from slimtrain.tasks.spoof.data import SpoofDataConfig, build_dataset

    out = root / ("spoof-quick" if quick else "spoof")
    build_dataset(out, SpoofDataConfig.quick() if quick else SpoofDataConfig(), workers=1, progress=False)
    return str(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds per arm (default 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="the seeds are FIRST..FIRST+N-1 (to split a run over processes; join their CSVs)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of every run (default: the sweeps' -- VAD 24, anti-spoofing 4 -- or 4 with --quick)")
    ap.add_argument("--quick", action="store_true", help="the tasks' quick data sets (the networks stay the sweeps')")
    ap.add_argument("--data", type=Path, default=Path("runs/training_cost"), help="data cache folder")
    ap.add_argument("--csv", type=Path, default=None, help="write every run's row here (e.g. docs/training_cost.csv)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one run, in a subprocess
    a = ap.parse_args(argv)
    if a.one is not None:
        print("RESULT" + json.dumps(run_one(json.loads(a.one))), flush=True)
        return 0
    models = [m for m in a.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    data = {m: _ensure_data(m, a.quick, a.data) for m in models}
    rows: list[dict] = []
    t_all = time.perf_counter()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for m in models:
            epochs = a.epochs or (4 if a.quick else (24 if m.startswith("vad-") else 4))
            for arm in ARMS:
                job = {"model": m, "arm": arm, "seed": seed, "epochs": epochs, "quick": a.quick, "data": data[m]}
                proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                      text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
                if proc.returncode != 0 or not line:
                    print(f"{m} {arm} seed {seed} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    return 1
                row = json.loads(line[-1][6:])
                rows.append(row)
                print(f"{m:16s} {arm:8s} seed {seed}: {row['cpu_seconds']:7.1f} s CPU ({row['loop_cpu_seconds']:.1f} s "
                      f"in the training loop), peak {row['peak_rss_mib']:.0f} "
                      f"MiB, {row['metric_name']} {row['metric']:.4f}, {row['mflops_per_s']:.3f} MFLOP/s", flush=True)
    if a.csv is not None:
        a.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    from slimtrain.tasks.report import training_cost_table

    text = training_cost_table(rows)
    print(f"\nWhole training runs, {a.seeds} paired seed(s), 1 thread, process CPU time; {C.machine()}; "
          f"{time.perf_counter() - t_all:.0f} s wall in all")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
