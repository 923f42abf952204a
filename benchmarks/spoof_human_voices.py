"""The countermeasure trained with recorded human voices and distillation, against the recipe without them.

One corpus (``slimtrain data spoof --human-voices train --out DIR``) serves every arm: its core clips are
byte-identical to the core corpus, so the ``core`` arm trains on the training clips that are not human
voices, and every arm is scored on the same evaluation split, whose bona fide clips include the held-out
human speakers (``eer_heldout*``: those clips alone against every spoof / each attack). Arms per seed:

* ``core``: DCLs on all stages toward the kappa-min floor, trained without the human voices;
* ``human``: the same, trained on every training clip;
* ``full``: the plain full-width ResNet on every training clip (the teacher of the next arms, and the
  reference for the MAC ratio);
* ``human+kd``: ``human`` plus distillation from that seed's ``full`` model (``slimtrain.Distiller``,
  BCE at temperature 2, weight 1);
* ``human+kd-init``: ``human+kd`` starting from the teacher's weights (the DPHuBERT/CoFi recipe).

``--score NAME=MODEL`` scores an existing model (e.g. the shipped one) on the same split instead.
It writes one row per arm and seed (``--csv``), keeps every model (``--out``/<arm>-seed<s>.ckpt) and prints
each arm's mean with a 95 % t interval and paired differences against ``core`` and ``human``::

    slimtrain data spoof --human-voices train --out runs/spoof_hv
    python benchmarks/spoof_human_voices.py --data runs/spoof_hv --seeds 3 --epochs 8 \\
        --csv docs/spoof_results/human_voices.csv --out runs/spoof_hv_models
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import ROOT, seed_list  # noqa: F401  (ROOT: puts src/ on the path)

ARMS = ("core", "human", "full", "human+kd", "human+kd-init")
METRICS = ("eer_pooled", "eer_heldout", "eer_unseen", "eer_known")


def _columns() -> list[str]:
    from slimtrain.tasks.spoof.attacks import ATTACKS

    return ["arm", "seed", "epochs", "kappa_min", "macs_budget", "n_mels", "n_fft", "rawboost", "phase", "head",
            "freq_mask", "method", "params",
            "macs_per_second", *METRICS,
            *[f"eer_heldout_{a}" for a in ATTACKS], *[f"eer_{a}" for a in ATTACKS], "distill_weight",
            "init_from_teacher", "export_max_abs_diff", "seconds", "data_fingerprint", "widths"]


def _chain(job: tuple) -> list[dict]:
    """Run the arms of one job in order (a ``human+kd*`` arm uses the ``full`` model trained before it)."""
    arms, seed, data, epochs, kappa, out, model_over, macs_budget = job
    import numpy as np

    from slimtrain.train.checkpoint import load_for_inference
    from slimtrain.tasks.spoof.data import data_fingerprint, load_split
    from slimtrain.tasks.spoof.train import SpoofConfig, train_run

    data, out = Path(data), Path(out)
    man = json.loads((data / "manifest.json").read_text())
    human = set(man["config"].get("human_voices", []))
    train, test = load_split(data, "train"), load_split(data, "eval")
    rows = []
    for arm in arms:
        tr = train.subset(~np.isin(train.language, list(human))) if arm == "core" else train
        cfg = SpoofConfig(epochs=epochs, seed=seed, **model_over)
        kw: dict = {}
        if arm.startswith("human+kd"):
            kw = {"teacher": load_for_inference(out / f"full-seed{seed}.ckpt", "spoof")[0],
                  "init_from_teacher": arm.endswith("init")}
        stages = () if arm == "full" else (0, 1, 2, 3)
        if stages and macs_budget is not None:
            kw["macs_budget"] = macs_budget
        row = train_run(cfg, tr, test, man["unseen_attacks"], stages=stages, kappa_min=kappa,
                        floor=bool(stages) and macs_budget is None, checkpoint=out / f"{arm}-seed{seed}.ckpt",
                        progress=False, **kw)
        rows.append({"arm": arm, "seed": seed, "epochs": epochs, "kappa_min": kappa if stages else math.nan,
                     "macs_budget": macs_budget if stages and macs_budget is not None else "",
                     "n_mels": cfg.n_mels, "n_fft": cfg.n_fft, "rawboost": cfg.rawboost or "",
                     "phase": cfg.phase or "", "head": cfg.head,
                     "freq_mask": f"{cfg.freq_mask}x{cfg.freq_masks}" if cfg.freq_mask else "",
                     "data_fingerprint": data_fingerprint(data), **row})
    return rows


def _scored(spec: str, data: Path) -> dict:
    """Row of a model scored as it is (no training) on ``data``'s evaluation split."""
    import torch

    from slimtrain import spoof
    from slimtrain.core.cost import model_cost
    from slimtrain.tasks.spoof.data import data_fingerprint, load_split
    from slimtrain.tasks.spoof.train import eer_report, score_model

    name, _, path = spec.partition("=")
    if not name or not path:
        raise SystemExit(f"--score wants NAME=MODEL, got {spec!r}")
    man = json.loads((data / "manifest.json").read_text())
    test = load_split(data, "eval")
    model = spoof.load(path).model
    torch.set_num_threads(1)
    x = test.waveforms()
    eers = eer_report(test, score_model(model, x), man["unseen_attacks"])
    cost = model_cost(model, x[:2], seconds=x.shape[1] / 8000)
    return {"arm": name, "seed": 0, "method": "scored", "params": sum(p.numel() for p in model.parameters()),
            "macs_per_second": float(cost.macs) / (x.shape[1] / 8000), "data_fingerprint": data_fingerprint(data),
            **{f"eer_{k}": v for k, v in eers.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a corpus built with --human-voices")
    p.add_argument("--seeds", type=seed_list, default="3",
                   help="a count N (seeds 0..N-1) or a comma-separated list, e.g. 3,4")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--kappa-min", type=float, default=0.5)
    p.add_argument("--macs-budget", type=float, default=None,
                   help="DCL arms: a budget on the MACs per second of audio (e.g. 9.15e6) instead of training toward "
                        "the kappa-min floor; kappa-min stays each width's lower bound")
    p.add_argument("--n-mels", type=int, default=None, help="filterbank bands of every arm (default: the ResNet's 32)")
    p.add_argument("--n-fft", type=int, default=None, help="FFT size of every arm (default: 256)")
    p.add_argument("--rawboost", default=None, help="RawBoost algorithm on every arm's training batches (default: off)")
    p.add_argument("--phase", default=None, help="phase features of every arm: gd, if or gd+if (default: none)")
    p.add_argument("--head", default=None, choices=("linear", "one-class"), help="output head of every arm")
    p.add_argument("--settle-at-budget", action="store_true",
                   help="with --macs-budget: fix the widths at the first step that meets the budget and train the cut "
                        "network from there on (without it the multiplier can carry the widths well below the budget)")
    p.add_argument("--fill-budget", action="store_true",
                   help="with --settle-at-budget: settle at the last channel step below the budget "
                        "(TradeoffLoss.fill_budget) instead of where the crossing step left the widths")
    p.add_argument("--freq-mask", type=int, default=None, help="training frequency masks of every arm: max width")
    p.add_argument("--freq-masks", type=int, default=None, help="--freq-mask: masks per clip (default: 1)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--workers", type=int, default=2, help="parallel jobs (one torch thread each)")
    p.add_argument("--out", type=Path, default=Path("runs/spoof_hv_models"), help="folder for the checkpoints")
    p.add_argument("--csv", type=Path, default=Path("runs/spoof_human_voices.csv"))
    p.add_argument("--score", action="append", default=[], metavar="NAME=MODEL",
                   help="instead of training: score a trained or shipped countermeasure (checkpoint, TorchScript or "
                        "shipped .pt) on the evaluation split as row NAME (repeatable), e.g. "
                        "shipped-before=src/slimtrain/assets/spoof_default.pt")
    a = p.parse_args(argv)
    if a.score:
        rows = [_scored(spec, a.data) for spec in a.score]
        a.csv.parent.mkdir(parents=True, exist_ok=True)
        with a.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_columns(), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            print(f"  {r['arm']:14s} MMAC/s {r['macs_per_second'] / 1e6:.2f}; "
                  + "; ".join(f"{m} {r[m]:.2f}" for m in METRICS))
        print(f"wrote {a.csv}")
        return 0
    from slimtrain.train.stats import format_interval, mean_interval, paired_difference

    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; choose from {ARMS}")
    man = json.loads((a.data / "manifest.json").read_text())
    if not man["config"].get("human_voices"):
        p.error(f"{a.data} holds no human voices; build it with: slimtrain data spoof --human-voices train --out {a.data}")
    a.out.mkdir(parents=True, exist_ok=True)
    over = {k: v for k, v in (("n_mels", a.n_mels), ("n_fft", a.n_fft), ("rawboost", a.rawboost),
                              ("phase", a.phase), ("head", a.head), ("freq_mask", a.freq_mask),
                              ("freq_masks", a.freq_masks)) if v is not None}
    if a.settle_at_budget:
        if a.macs_budget is None:
            p.error("--settle-at-budget needs --macs-budget")
        over["settle_at_budget"] = True
    if a.fill_budget:
        if not a.settle_at_budget:
            p.error("--fill-budget needs --settle-at-budget")
        over["fill_budget"] = True
    jobs = []
    seeds = a.seeds
    for s in seeds:
        kd = [x for x in arms if x.startswith("human+kd")]
        if kd:
            jobs.append((["full", *kd] if "full" in arms or not (a.out / f"full-seed{s}.ckpt").is_file() else kd,
                         s, str(a.data), a.epochs, a.kappa_min, str(a.out), over, a.macs_budget))
        jobs += [([x], s, str(a.data), a.epochs, a.kappa_min, str(a.out), over, a.macs_budget)
                 for x in arms if x in ("core", "human") or (x == "full" and not kd)]
    jobs.sort(key=lambda j: -len(j[0]))  # the long chains first
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        rows = [r for rs in ex.map(_chain, jobs) for r in rs]
    rows.sort(key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_columns(), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f}s; data {a.data}, {a.epochs} epochs, seeds "
          f"{','.join(map(str, seeds))}; wrote {a.csv}")
    by = {arm: {r["seed"]: r for r in rows if r["arm"] == arm} for arm in arms}
    for arm, rs in by.items():
        cells = [f"MMAC/s {format_interval(mean_interval([r['macs_per_second'] / 1e6 for r in rs.values()]), '.2f')}"]
        cells += [f"{m} {format_interval(mean_interval([r[m] for r in rs.values()]), '.2f')}" for m in METRICS]
        print(f"  {arm:14s} " + "; ".join(cells))
    for base in ("core", "human"):
        for arm in arms:
            if arm == base or base not in by or (base == "human" and arm == "core"):
                continue
            for m in ("eer_pooled", "eer_heldout"):
                d = paired_difference({s: r[m] for s, r in by[arm].items()}, {s: r[m] for s, r in by[base].items()})
                print(f"  {m} {arm} - {base}: {d.mean:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] points over {d.n} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
