"""Latency budgets on ONNX Runtime: predicted vs measured latency, and a latency- vs a FLOP-budgeted VAD.

(a) ``--part predict``: each VAD family (CRNN, Transformer with per-head widths) is made dynamic,
    profiled on onnxruntime (CPU, 1 intra-op thread; :func:`slimtrain.latency.profile`, calls of one
    clip of ``--clip`` seconds), then exported at width settings that the calibration did not use
    (uniform scales 0.625, 0.375, 0.125 and random per-width settings; all timed in turns) and timed whole in an
    ``InferenceSession``. The profile's prediction (exported widths) is set next to the measured
    latency, and next to the FLOP-proportional guess ``measured_full * FLOPs / FLOPs_full``.
(b) ``--part train``: the VAD CRNN trained with a latency budget (``TradeoffLoss(metric="latency")``)
    and with a FLOP budget, both set from the same reference (every width at ``--ref-scale`` of full:
    its predicted latency and its FLOPs), over ``--seeds`` seeds with short epochs (``--settle budget``: the
    widths settle at the first step that meets the budget; ``half``: at the half); each exported
    model is timed on onnxruntime and scored on the held-out test speaker; paired differences with
    Student-t intervals (:mod:`slimtrain.stats`).

    python benchmarks/latency.py --part predict --csv docs/latency_predict.csv
    python benchmarks/latency.py --part train --seeds 3 --epochs 4 --data runs/vad/data --csv docs/latency_train.csv

Times are process CPU time (``--clock cpu``: one thread, waiting for a core not counted), medians.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import time
import warnings
from pathlib import Path

import torch

import _common as C
import slimtrain
from slimtrain import latency
from slimtrain.core.cost import model_cost

RATE = 8000


def _dynamic_vad(family: str) -> torch.nn.Module:
    from slimtrain.apps.vad.models import build_vad_model
    from slimtrain.tasks.vad.train import SAMPLE_SHAPE

    torch.manual_seed(0)
    m = build_vad_model(family)
    slimtrain.make_dynamic(m, torch.randn(*SAMPLE_SHAPE) * 0.1, kappa_min=0.0625,
                           heads="width" if family == "transformer" else "count")
    return m


def _set_widths(model, widths: dict) -> dict:
    for name, k in widths.items():
        model.get_submodule(name).set_width(k)
    return {n: float(model.get_submodule(n).hard_width) for n in widths}


def part_predict(a) -> list[dict]:
    rows = []
    x = torch.randn(1, int(a.clip * RATE)) * 0.1
    for family in a.families:
        model = _dynamic_vad(family)
        t0 = time.perf_counter()
        prof = latency.profile(model, x, "onnxruntime", points=a.points, repeats=a.repeats, seconds=a.clip,
                               clock=a.clock, progress=True)
        t_prof = time.perf_counter() - t0
        if a.profile_dir:
            prof.save(Path(a.profile_dir) / f"vad_{family}_onnxruntime.json")
        dyn = copy.deepcopy(model).eval()
        full = {n: float(k) for n, k in prof.dcls.items()}
        settings = [("full (calibration)", full)]
        settings += [(f"uniform {s:g}", {n: max(dyn.get_submodule(n).min_width, s * k) for n, k in full.items()})
                     for s in (0.625, 0.375, 0.125)]
        rng = random.Random(a.seed)
        settings += [(f"random {i}", {n: rng.uniform(dyn.get_submodule(n).min_width, k) for n, k in full.items()})
                     for i in range(a.random)]
        runs, hards, flopss = [], [], []
        for label, widths in settings:  # every setting exported first, then timed in turns
            hards.append(_set_widths(dyn, widths))
            small = slimtrain.export(dyn).eval()
            runs.append(latency.backend_runner(small, (x,), "onnxruntime", threads=1))
            flopss.append(float(model_cost(small, x).flops))
        times = latency.measure_interleaved(runs, repeats=a.repeats, warmup=5, clock=a.clock)
        base_ms, base_flops = 1e3 * times[0], flopss[0]
        for (label, _), hard, flops, t in zip(settings, hards, flopss, times):
            ms = 1e3 * t
            pred = float(prof.predict(widths=hard))
            flop_guess = base_ms * flops / base_flops
            rows.append({"part": "predict", "family": family, "setting": label, "widths": json.dumps(hard),
                         "mflops_per_call": round(flops / 1e6, 4), "measured_ms": round(ms, 4),
                         "predicted_ms": round(pred, 4), "error_pct": round(100 * (pred - ms) / ms, 2),
                         "flop_guess_ms": round(flop_guess, 4),
                         "flop_guess_error_pct": round(100 * (flop_guess - ms) / ms, 2),
                         "clip_s": a.clip, "profile_s": round(t_prof, 1), "backend": "onnxruntime 1 thread",
                         "machine": C.machine()})
            print(f"{family:12s} {label:20s} measured {ms:.4f} ms  predicted {pred:.4f} ms "
                  f"({rows[-1]['error_pct']:+.1f} %)  FLOP guess {flop_guess:.4f} ({rows[-1]['flop_guess_error_pct']:+.1f} %)",
                  flush=True)
    return rows


def part_train(a) -> list[dict]:
    from slimtrain.tasks.vad.data import load_vad_data
    from slimtrain.tasks.vad.train import SAMPLE_SECONDS, evaluate_model, train_loop
    from slimtrain.train.training import make_optimizer, seed_everything

    data, _ = load_vad_data(a.data)
    x = torch.randn(1, int(a.clip * RATE)) * 0.1
    ref = _dynamic_vad("crnn")
    if a.profile:  # a saved profile of this model on this machine (e.g. from --part predict --profile-dir)
        prof = latency.load_profile(a.profile)
        prof.check_model(ref)
        x = torch.randn(*prof.sample_shape) * 0.1
        a.clip = float(prof.seconds)
    else:
        prof = latency.profile(ref, x, "onnxruntime", points=a.points, repeats=a.repeats, seconds=a.clip,
                               clock=a.clock, progress=True)
    if a.profile_dir and not a.profile:
        prof.save(Path(a.profile_dir) / "vad_crnn_onnxruntime_train.json")
    ref_widths = {n: max(ref.get_submodule(n).min_width, a.ref_scale * k) for n, k in prof.dcls.items()}
    hard = _set_widths(ref, ref_widths)
    lat_budget = float(prof.predict(widths=hard, unit="ms/s"))
    small = slimtrain.export(ref).eval()
    flop_budget = float(model_cost(small, torch.zeros(1, int(SAMPLE_SECONDS * RATE))).flops)  # per 4 s item
    print(f"reference (every width x{a.ref_scale:g}): predicted {lat_budget:.4f} ms per s of audio, "
          f"{flop_budget / SAMPLE_SECONDS / 1e6:.3f} MFLOP/s", flush=True)
    steps = math.ceil(len(data["train"].audio) / 16)
    rows, smalls = [], []
    for seed in range(a.seeds):
        for method in ("latency", "flops"):
            t0 = time.perf_counter()
            seed_everything(seed)
            model = _dynamic_vad("crnn")
            seed_everything(seed)
            kw = dict(metric="latency", latency=prof, unit="ms/s") if method == "latency" else dict(metric="flops")
            budget = lat_budget if method == "latency" else flop_budget
            # the hinge mu * (cost / budget - 1) measured in units of the reducible cost (full - floor), as
            # budget="floor" does: most of the CRNN's latency is fixed (the STFT), so per unit of the budget
            # the latency hinge would push about 7x less than the FLOP one; this makes the two pushes alike
            span = slimtrain.TradeoffLoss(model, budget="floor", **kw)
            obj = slimtrain.TradeoffLoss(model, budget=budget, mu=budget / (span.full - span.budget),
                                         warmup_steps=steps, **kw)
            opt = make_optimizer(model, lr=3e-3, width_lr=0.05)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # the widths settle (fixed, weights fine-tuned) at the half; with --settle budget already at the
                # first step that meets the budget, as the VAD sweep's budget rows can (settle_at_budget)
                train_loop(model, data["train"], a.epochs, opt, batch_size=16, seed=seed, penalty=obj,
                           settle_epochs=a.epochs // 2,
                           settle_when=obj.meets_budget if a.settle == "budget" else None)
            model.eval()
            widths = {n: float(model.get_submodule(n).hard_width) for n in prof.dcls}
            small = slimtrain.export(model).eval()
            metrics = evaluate_model(small, data["val"], data["test"])
            smalls.append(small)
            fl = float(model_cost(small, torch.zeros(1, int(SAMPLE_SECONDS * RATE))).flops) / SAMPLE_SECONDS
            rows.append({"part": "train", "family": "crnn", "method": method, "seed": seed, "epochs": a.epochs,
                         "settle": a.settle,
                         "widths": json.dumps(widths),
                         "predicted_ms_per_s": round(float(prof.predict(widths=widths, unit="ms/s")), 4),
                         "budget": lat_budget if method == "latency" else flop_budget / SAMPLE_SECONDS,
                         "mflops_per_s": round(fl / 1e6, 4), "auc": round(metrics["auc"], 5),
                         "eer": round(metrics["eer"], 5), "clip_s": a.clip, "ref_scale": a.ref_scale,
                         "train_s": round(time.perf_counter() - t0, 1), "machine": C.machine()})
            print({k: rows[-1][k] for k in ("method", "seed", "widths", "predicted_ms_per_s", "mflops_per_s", "auc",
                                            "train_s")}, flush=True)
    # every exported model timed in turns at the end, so that all see the same machine load
    runs = [latency.backend_runner(m, (x,), "onnxruntime", threads=1) for m in smalls]
    for r, t in zip(rows, latency.measure_interleaved(runs, repeats=a.repeats * 3, warmup=5, clock=a.clock)):
        r["measured_ms_per_s"] = round(1e3 * t / a.clip, 4)
        print(r["method"], r["seed"], "measured", r["measured_ms_per_s"], "ms per s of audio", flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    """The tables of the docs page, from the CSV rows (also :mod:`slimtrain.report`'s rendering)."""
    from slimtrain.tasks.report import latency_tables

    return latency_tables(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("predict", "train"), default="predict")
    ap.add_argument("--families", nargs="+", default=["crnn", "transformer"])
    ap.add_argument("--clip", type=float, default=1.0, help="seconds of audio per timed call (batch 1)")
    ap.add_argument("--points", type=int, default=3, help="grid points per dynamic side of a layer")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--random", type=int, default=4, help="random per-width settings per family (part predict)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per method (part train)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ref-scale", type=float, default=0.25, help="both budgets: every width at this share of full")
    ap.add_argument("--settle", choices=("budget", "half"), default="budget",
                    help="part train: widths settle at the first step that meets the budget, or at the half")
    ap.add_argument("--data", default="runs/vad/data")
    ap.add_argument("--profile-dir", default=None, help="also save each profile (JSON) here")
    ap.add_argument("--profile", default=None, help="part train: use this saved profile of the VAD CRNN")
    ap.add_argument("--csv", default=None, help="append the rows to this CSV (rows of the other part are kept)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = part_predict(a) if a.part == "predict" else part_train(a)
    if a.csv:
        path = Path(a.csv)
        old = []
        if path.exists():
            with path.open() as f:
                old = [r for r in csv.DictReader(f) if r.get("part") != a.part
                       or (a.part == "train" and r.get("settle", "budget") != a.settle)]
        keys: list[str] = []
        for r in old + rows:
            keys += [k for k in r if k not in keys]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(old + rows)
        with path.open() as f:
            print(summary(list(csv.DictReader(f))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
