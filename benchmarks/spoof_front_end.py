"""Which front end and augmentation the countermeasure should use: a screen of named arms on one corpus.

Every arm is the ``human`` recipe of ``benchmarks/spoof_human_voices.py`` (DCLs on all four stages toward
the kappa-min floor, every training clip of a ``--human-voices`` corpus, no teacher) with one change to
the front end (bands, band spacing, FFT size, hop), the floor, or RawBoost on the training batches; all
are scored on the same evaluation split (the held-out speakers' bona fide clips against every spoof:
``eer_heldout``). Short runs (8 epochs) to rank ideas; the winner then gets the full study::

    python benchmarks/spoof_front_end.py --data runs/spoof_hv --seeds 3 --arms mel32,mel64-n512-k0.35 \\
        --csv docs/spoof_results/front_end.csv

It prints each arm's mean with a 95 % t interval and the paired difference against ``mel32`` (the
ResNet's default front end) where both have the same seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import ROOT, seed_list  # noqa: F401  (ROOT: puts src/ on the path)

#: arm -> (SpoofConfig overrides, kappa_min); 32 mel bands, n_fft 256, hop 20 ms, kappa-min 0.5 unless given
ARMS: dict[str, tuple[dict, float]] = {
    "mel32": ({}, 0.5),
    "linear32": ({"freq_scale": "linear"}, 0.5),
    "linear64": ({"freq_scale": "linear", "n_mels": 64}, 0.5),
    "linear129": ({"freq_scale": "linear", "n_mels": 129}, 0.5),
    "mel64": ({"n_mels": 64}, 0.5),
    "mel64-n512": ({"n_mels": 64, "n_fft": 512}, 0.5),
    "mel32-hop10": ({"hop_length": 80}, 0.5),
    "mel64-k0.35": ({"n_mels": 64}, 0.35),
    "mel64-n512-k0.35": ({"n_mels": 64, "n_fft": 512}, 0.35),
    "rawboost-1+2": ({"rawboost": "1+2"}, 0.5),
    "rawboost-3": ({"rawboost": "3"}, 0.5),
    "mel64-n512-k0.35-rawboost-3": ({"n_mels": 64, "n_fft": 512, "rawboost": "3"}, 0.35),
    "mel96-n512-k0.3": ({"n_mels": 96, "n_fft": 512}, 0.3),
    "mel64-n512-hop10-k0.25": ({"n_mels": 64, "n_fft": 512, "hop_length": 80}, 0.25),
}
COLUMNS = ["arm", "seed", "epochs", "kappa_min", "n_mels", "n_fft", "hop_length", "freq_scale", "rawboost", "params",
           "macs_per_second", "eer_pooled", "eer_heldout", "eer_unseen", "eer_known"]


def _run(job: tuple) -> dict:
    """One arm and seed: its row (the CSV keeps :data:`COLUMNS` and the per-attack EERs)."""
    arm, seed, data, epochs = job
    from slimtrain.tasks.spoof.data import data_fingerprint, load_split
    from slimtrain.tasks.spoof.train import SpoofConfig, train_run

    over, kappa = ARMS[arm]
    data = Path(data)
    man = json.loads((data / "manifest.json").read_text())
    cfg = SpoofConfig(epochs=epochs, seed=seed, **over)
    row = train_run(cfg, load_split(data, "train"), load_split(data, "eval"), man["unseen_attacks"],
                    stages=(0, 1, 2, 3), kappa_min=kappa, floor=True, progress=False)
    return {**row, "arm": arm, "seed": seed, "epochs": epochs, "kappa_min": kappa, "n_mels": cfg.n_mels,
            "n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "freq_scale": cfg.freq_scale,
            "rawboost": cfg.rawboost or "", "data_fingerprint": data_fingerprint(data)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a corpus built with --human-voices")
    p.add_argument("--arms", default="mel32", help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--seeds", type=seed_list, default="3", help="a count N (seeds 0..N-1) or a comma-separated list")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="parallel runs (one torch thread each)")
    p.add_argument("--csv", type=Path, default=Path("runs/spoof_front_end.csv"),
                   help="rows are added to this file (a row of the same arm, seed and epochs is replaced)")
    a = p.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    seeds = a.seeds
    from slimtrain.tasks.spoof.attacks import ATTACKS
    from slimtrain.train.stats import format_interval, mean_interval, paired_difference

    columns = [*COLUMNS, *[f"eer_heldout_{x}" for x in ATTACKS], *[f"eer_{x}" for x in ATTACKS], "seconds",
               "data_fingerprint"]
    jobs = [(arm, s, str(a.data), a.epochs) for s in seeds for arm in arms]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        new = list(ex.map(_run, jobs))
    old = []
    if a.csv.is_file():
        with a.csv.open(newline="") as f:
            old = list(csv.DictReader(f))
    key = {(r["arm"], int(r["seed"]), int(r["epochs"])) for r in new}
    rows = [r for r in old if (r["arm"], int(r["seed"]), int(r["epochs"])) not in key] + new
    rows.sort(key=lambda r: (list(ARMS).index(r["arm"]) if r["arm"] in ARMS else 99, int(r["epochs"]), int(r["seed"])))
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(new)} runs in {time.perf_counter() - t0:.0f}s; wrote {a.csv}")
    by = {}
    for r in rows:
        if int(r["epochs"]) == a.epochs:
            by.setdefault(r["arm"], {})[int(r["seed"])] = r
    for arm, rs in by.items():
        cells = [f"MMAC/s {float(next(iter(rs.values()))['macs_per_second']) / 1e6:.2f}"]
        cells += [f"{m} {format_interval(mean_interval([float(r[m]) for r in rs.values()]), '.2f')}"
                  for m in ("eer_pooled", "eer_heldout")]
        line = f"  {arm:28s} n={len(rs)} " + "; ".join(cells)
        if arm != "mel32" and "mel32" in by and len(set(rs) & set(by["mel32"])) >= 2:
            d = paired_difference({s: float(r["eer_heldout"]) for s, r in rs.items()},
                                  {s: float(r["eer_heldout"]) for s, r in by["mel32"].items()})
            line += f"; held-out vs mel32 {d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}]"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
