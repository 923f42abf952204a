"""DCL-shrunk AASIST at AASIST-L's parameter count against AASIST-L trained from scratch.

Both arms see the same data, the same epochs and the same seeds (seed s: same batch order and
initialisation stream). Arm A: full AASIST with DCLs on every width that can carry one and a budget of
85,306 parameters (``TradeoffLoss(metric="params", budget=85_306)``, Lagrangian multiplier), exported to
its learned widths; arm B: AASIST-L (the published hand-shrunk configuration) without DCLs. Per seed it
writes one row per arm to ``--csv``; it prints each arm's mean EER with a 95 % t interval over seeds and
the paired difference A - B (slimtrain.stats).

Affordable run on 2 CPU cores (what docs/spoof.md reports)::

    python benchmarks/aasist_vs_aasist_l.py --quick --epochs 6 --seeds 3 --train-crop 4000 \\
        --csv docs/aasist_vs_aasist_l.csv

Full size (the core corpus, whole 1 s clips; about 1.2 GMAC per clip and step, hours per arm on a CPU,
minutes on a GPU with --device cuda)::

    python benchmarks/aasist_vs_aasist_l.py --epochs 30 --seeds 5 --width-lr 0.02 --device cuda \\
        --csv runs/aasist_vs_l.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts src/ on the path)

AASIST_L_PARAMS = 85_306
METRICS = ("eer_pooled", "eer_heldout", "eer_unseen", "eer_known")
COLUMNS = ("arm", "seed", "family", "method", "epochs", "train_crop", "settle_at_budget", "params", "params_exported",
           "macs_per_second", *METRICS, "export_max_abs_diff", "seconds", "data_fingerprint", "widths")


def _one(job: tuple) -> dict:
    arm, seed, data, epochs, crop, width_lr, budget, kappa, device, settle, out = job
    from slimtrain.tasks.spoof.attacks import ATTACKS
    from slimtrain.tasks.spoof.data import data_fingerprint, load_split
    from slimtrain.tasks.spoof.train import SpoofConfig, train_run
    import json

    man = json.loads((Path(data) / "manifest.json").read_text())
    dcl = arm == "dcl-aasist"
    family = "aasist" if dcl else "aasist-l"
    cfg = SpoofConfig(family=family, epochs=epochs, batch_size=16, warmup_epochs=1, seed=seed, width_lr=width_lr,
                      settle_at_budget=settle and dcl)
    row = train_run(cfg, load_split(data, "train"), load_split(data, "eval"), man["unseen_attacks"],
                    stages=(0,) if dcl else (), kappa_min=kappa, params_budget=budget if dcl else None,
                    train_crop=crop, progress=False, device=device,
                    checkpoint=None if out is None else Path(out) / f"{arm}-seed{seed}.ckpt")
    keep = (*COLUMNS, *(f"eer_heldout_{a}" for a in ATTACKS), *(f"eer_{a}" for a in ATTACKS))
    return {**{k: row[k] for k in keep if k in row}, "arm": arm, "seed": seed, "epochs": epochs,
            "train_crop": crop or "", "settle_at_budget": bool(settle and dcl), "data_fingerprint": data_fingerprint(data)}


def _write(path: Path, rows: list[dict]) -> None:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS), key=lambda k: (not k.startswith("eer_heldout"), k))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, *extra], extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(rows)


def _read(path: Path) -> list[dict]:
    """The rows of an earlier run (numbers as floats, seeds as ints) to go on from."""
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            row: dict = {}
            for k, v in r.items():
                row[k] = v
                if k not in ("arm", "family", "method", "widths", "data_fingerprint"):
                    for kind in (int, float):
                        try:
                            row[k] = kind(v)
                            break
                        except ValueError:
                            pass
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick corpus (runs/spoof/data-quick)")
    p.add_argument("--data", type=Path, default=None, help="data folder (built with 'slimtrain data spoof')")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, default=3, help="run seeds --first-seed .. SEEDS-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--train-crop", type=int, default=None, help="train on random crops of this many samples")
    p.add_argument("--width-lr", type=float, default=0.1)
    p.add_argument("--kappa-min", type=float, default=0.125)
    p.add_argument("--budget", type=int, default=AASIST_L_PARAMS)
    p.add_argument("--workers", type=int, default=2, help="parallel runs (one torch thread each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--settle-at-budget", action="store_true",
                   help="DCL arm: settle the widths (and cut the model) at the first step within the budget")
    p.add_argument("--out", type=Path, default=None, help="keep each model as <out>/<arm>-seed<s>.ckpt")
    p.add_argument("--csv", type=Path, default=Path("runs/aasist_vs_aasist_l.csv"))
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --csv (same data and epochs) and run only the missing arm/seed pairs")
    a = p.parse_args(argv)
    from slimtrain.train.stats import format_interval, mean_interval, paired_difference
    from slimtrain.tasks.spoof.data import SpoofDataConfig, build_dataset

    data = a.data or Path("runs/spoof/data-quick" if a.quick else "runs/spoof/data")
    build_dataset(data, SpoofDataConfig.quick() if a.quick else SpoofDataConfig(), progress=False)
    jobs = [(arm, s, str(data), a.epochs, a.train_crop, a.width_lr, a.budget, a.kappa_min, a.device,
             a.settle_at_budget, None if a.out is None else str(a.out))
            for s in range(a.first_seed, a.seeds) for arm in ("dcl-aasist", "aasist-l")]
    rows: list[dict] = []
    if a.resume and a.csv.is_file():
        from slimtrain.tasks.spoof.data import data_fingerprint

        rows = _read(a.csv)
        fp = data_fingerprint(data)
        for r in rows:
            if r.get("data_fingerprint") != fp or r.get("epochs") != a.epochs:  # (a CSV before these columns: no)
                raise SystemExit(f"--resume: {a.csv} holds a run on other data or epochs ({r.get('data_fingerprint')}, "
                                 f"{r.get('epochs')} epochs; now {fp}, {a.epochs}); give another --csv")
        done = {(r["arm"], r["seed"]) for r in rows}
        jobs = [j for j in jobs if (j[0], j[1]) not in done]
        print(f"--resume: {len(rows)} runs kept from {a.csv}, {len(jobs)} to run")
    t0 = time.perf_counter()
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        for row in ex.map(_one, jobs):  # the CSV is rewritten after every run: a late failure keeps the rest
            rows.append(row)
            _write(a.csv, rows)
    print(f"{len(rows)} runs ({len(jobs)} now) in {time.perf_counter() - t0:.0f}s; data {data}, {a.epochs} epochs, train crop "
          f"{a.train_crop or 'none'}, seeds {a.first_seed}..{a.seeds - 1}; wrote {a.csv}")
    by = {arm: {r["seed"]: r for r in rows if r["arm"] == arm} for arm in ("dcl-aasist", "aasist-l")}
    for arm, rs in by.items():
        cells = [f"params {format_interval(mean_interval([r['params_exported'] for r in rs.values()]), '.0f')}",
                 f"MMAC/s {format_interval(mean_interval([r['macs_per_second'] / 1e6 for r in rs.values()]), '.1f')}"]
        for m in METRICS:
            vals = [r[m] for r in rs.values() if not math.isnan(r[m])]
            if vals:
                cells.append(f"{m} {format_interval(mean_interval(vals), '.2f')} %")
        print(f"  {arm:11s} " + "; ".join(cells))
    for m in METRICS:
        if all(math.isnan(r[m]) for rs in by.values() for r in rs.values()):
            continue  # (eer_heldout: a corpus without held-out speakers)
        d = paired_difference({s: r[m] for s, r in by["dcl-aasist"].items()},
                              {s: r[m] for s, r in by["aasist-l"].items()})
        print(f"  {m} DCL-AASIST - AASIST-L (paired, 95 % t interval): {d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] "
              f"points over {d.n} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
