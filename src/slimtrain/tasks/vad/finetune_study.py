"""Shrinking a *trained* VAD: DCL fine-tuning against torch-pruning + fine-tuning, at equal MACs and epochs.

``python -m slimtrain.tasks.vad.finetune_study --seeds 3 --out runs/vad_finetune``

For every seed the full-width model (the sweep's ``fixed x1``: every width, 80 mel bands, ``full_epochs``
of training) is trained once -- or read from ``--full-checkpoints DIR`` (a sweep's
``checkpoints/<family>_fixed_x1[_e<N>]_seed<S>.pt``, ``_e<N>`` for ``full_epochs`` other than 12) -- and then, for every target cost ``T`` (FLOPs per
second of audio), shrunk two ways from the *same* weights:

* ``DCL``: :func:`slimtrain.make_dynamic` with ``reorder="magnitude"`` (channels and mel bands
  permuted, most important first, without changing the function; every width starts at full size),
  then ``finetune_epochs`` epochs of the frame BCE plus the budget hinge
  ``relu(FLOPs / T - 1)`` (:class:`slimtrain.TradeoffLoss`, ``alpha = 0``), then ``export``. With
  ``settle="budget"`` (default) the widths learn only until the cost first meets the target; every
  later step trains the weights at those fixed hard widths (:func:`slimtrain.settle_widths`), as the
  pruned model is fine-tuned at its final architecture (``width_steps`` in the CSV: the steps before);
  ``settle="none"`` lets the widths move to the end;
* ``prune``: the mel bands cut by magnitude to the DCL model's band count, torch-pruning (structured
  L2 group magnitude) down to the MACs the *exported DCL model* has, then ``finetune_epochs`` epochs
  of the frame BCE (:func:`slimtrain.tasks.vad.baselines_glue.prune_baseline`).

So the two arms start from one trained model, get the same fine-tuning epochs and the same
optimiser (Adam 3e-3; the DCL widths 0.05) and end at the same MACs (the pruning target is the DCL
result, met within ``tolerance``; the CSV keeps both exported MFLOP/s). The pairing is per seed: the
paired difference DCL - prune of AUC and EER with its 95 % Student-t interval
(:func:`slimtrain.train.stats.compare`) is what :func:`format_study_table` reports.

Writes ``finetune_study.csv`` (one row per arm, target and seed; :data:`COLUMNS`).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .build import build_vad_data
from .data import VadDataConfig, VadSplit, load_vad_data
from .sweep import length_tag
from .train import SNR_BANDS

__all__ = ["FinetuneStudyConfig", "run_study", "write_study_csv", "read_study_csv", "format_study_table",
           "study_sentences", "COLUMNS", "StudyError"]

ARMS = ("DCL", "prune")
ARM_NAMES = {"DCL": "DCL fine-tuning (magnitude reorder)", "prune": "torch-pruning + fine-tuning"}


class StudyError(ValueError):
    """Invalid fine-tuning study settings or an unreadable study CSV."""


@dataclass
class FinetuneStudyConfig:
    """What the study runs (``quick()``: the seconds-sized test version)."""

    family: str = "crnn"
    targets: tuple[float, ...] = (1.5e6, 0.75e6)  # FLOPs per second of audio (full CRNN: 4.66e6)
    seeds: tuple[int, ...] = (0, 1, 2)
    full_epochs: int = 12  # as the sweep's fixed x1 model
    finetune_epochs: int = 6
    #: "budget": the DCL widths learn until the cost first meets the target, then stay fixed (the weights
    #: train on at those hard widths); "none": the widths learn to the end
    settle: str = "budget"
    kappa_min: float = 0.0625  # lower bound of the DCL widths (the budget decides where they stop)
    lr: float = 3e-3
    width_lr: float = 0.05
    tolerance: float = 0.05  # accepted relative MAC mismatch of the pruned model
    data: VadDataConfig = field(default_factory=VadDataConfig)

    @classmethod
    def quick(cls, **overrides) -> "FinetuneStudyConfig":
        base = dict(targets=(1.5e6,), seeds=(0,), full_epochs=1, finetune_epochs=1, data=VadDataConfig.quick())
        base.update(overrides)
        return cls(**base)

    def validate(self) -> "FinetuneStudyConfig":
        if not self.targets or any(not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)
                                   for t in self.targets):
            raise StudyError(f"finetune_study: targets must be positive FLOPs per second, got {self.targets!r}")
        if not self.seeds:
            raise StudyError("finetune_study: no seeds")
        if self.full_epochs < 1 or self.finetune_epochs < 1:
            raise StudyError(f"finetune_study: full_epochs and finetune_epochs must be >= 1, got "
                             f"{self.full_epochs}, {self.finetune_epochs}")
        if self.settle not in ("budget", "none"):
            raise StudyError(f"finetune_study: settle must be 'budget' or 'none', got {self.settle!r}")
        if not 0 < self.kappa_min <= 1 or not 0 < self.tolerance < 1:
            raise StudyError(f"finetune_study: kappa_min must be in (0, 1] and tolerance in (0, 1), got "
                             f"{self.kappa_min}, {self.tolerance}")
        return self


def _full_config(cfg: FinetuneStudyConfig, seed: int):
    """The sweep's ``fixed x1`` run config (same job, so its checkpoint can be reused)."""
    from ...apps.vad.models import scaled_widths
    from .train import VadRunConfig

    return VadRunConfig(family=cfg.family, kappa_min=None, n_mels=80, widths=scaled_widths(cfg.family, 1.0),
                        epochs=cfg.full_epochs, seed=seed)


def _full_model(cfg: FinetuneStudyConfig, seed: int, data: dict[str, VadSplit], ckpt: Path):
    """The trained full model of ``seed`` (read from ``ckpt`` when it exists, else trained and saved there)
    and its row."""
    from ...train.checkpoint import load_checkpoint, load_dynamic_model
    from .train import _mel_bands, evaluate_model, exported_cost, train_vad

    if ckpt.is_file():
        saved = load_checkpoint(ckpt)
        conf = (saved.get("extra") or {}).get("config") or {}
        if conf and (conf.get("epochs") != cfg.full_epochs or conf.get("seed") != seed
                     or conf.get("family") != cfg.family or conf.get("kappa_min") is not None):
            raise StudyError(f"finetune_study: {ckpt} is not the {cfg.family} full model of seed {seed} trained "
                             f"{cfg.full_epochs} epochs (its config: {conf})")
        model = load_dynamic_model(saved).eval()
        flops_s, params = exported_cost(model)
        row = {"mel_bands": _mel_bands(model), "mflops_per_s": flops_s / 1e6, "params": int(params),
               **evaluate_model(model, data["val"], data["test"])}
        return model, row
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    model, row = train_vad(_full_config(cfg, seed), data, checkpoint=ckpt)
    return model.eval(), row


def _dcl_arm(cfg: FinetuneStudyConfig, full, target: float, seed: int, data: dict[str, VadSplit]) -> dict:
    """Reorder + make_dynamic + budget fine-tuning + export of a copy of ``full``."""
    import torch

    from ...core.export import export
    from ...core.graph import dynamic_widths, make_dynamic
    from ...core.loss import TradeoffLoss
    from ...train.training import make_optimizer, seed_everything
    from .train import (SAMPLE_SECONDS, SAMPLE_SHAPE, _mel_bands, evaluate_model, exported_cost, train_loop)

    model = copy.deepcopy(full).train()
    torch.manual_seed(0)
    make_dynamic(model, torch.randn(*SAMPLE_SHAPE) * 0.1, kappa_min=cfg.kappa_min, reorder="magnitude")
    seed_everything(seed + 1)  # as the pruning arm's fine-tuning (same batch order)
    objective = TradeoffLoss(model, alpha=0.0, budget=target * SAMPLE_SECONDS, metric="flops")
    optimizer = make_optimizer(model, lr=cfg.lr, width_lr=cfg.width_lr)
    width_steps: list[int] = []

    def budget_met() -> bool:  # the widths after this step cost no more than the target
        if objective.meets_budget():
            width_steps.append(objective.steps)
            return True
        return False
    train_loop(model, data["train"], cfg.finetune_epochs, optimizer, seed=seed + 1, penalty=objective,
               settle_when=budget_met if cfg.settle == "budget" else None)
    model.eval()
    widths = {k: round(v, 3) for k, v in dynamic_widths(model).items()}
    plain = export(model).eval()
    flops_s, params = exported_cost(plain)
    return {"mel_bands": _mel_bands(plain), "mflops_per_s": flops_s / 1e6, "params": int(params),
            "width_steps": width_steps[0] if width_steps else None, "widths": json.dumps(widths, sort_keys=True),
            **evaluate_model(plain, data["val"], data["test"])}


def _prune_arm(cfg: FinetuneStudyConfig, full, dcl_row: dict, seed: int, data: dict[str, VadSplit]) -> dict:
    """Prune a copy of ``full`` to the exported DCL model's MACs and band count, then fine-tune."""
    from . import baselines_glue

    job = {"kind": "prune", "target_mflops": dcl_row["mflops_per_s"], "mel_bands": dcl_row["mel_bands"],
           "run": {"family": cfg.family, "epochs": cfg.finetune_epochs, "seed": seed}}
    row = baselines_glue.prune_baseline(job, data, model=copy.deepcopy(full), lr=cfg.lr, tolerance=cfg.tolerance)
    return {"mel_bands": row["mel_bands"], "mflops_per_s": row["mflops_per_s"], "params": row["params"],
            "widths": json.dumps(row["widths"], sort_keys=True),
            **{k: row[k] for k in ("auc", "f1", "eer", "threshold", *[f"eer {b}" for b, _, _ in SNR_BANDS])}}


def run_study(cfg: FinetuneStudyConfig, out: str | Path, *, cache: Optional[str | Path] = None,
              full_checkpoints: Optional[str | Path] = None, progress: bool = True) -> list[dict]:
    """Run every (seed, target, arm); writes ``out/finetune_study.csv`` and returns the rows."""
    import torch

    cfg.validate()
    warnings.filterwarnings("ignore", message="TF32 acceleration")
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache if cache is not None else out / "data")
    build_vad_data(cfg.data, cache, progress=progress)
    data = load_vad_data(cache)[0]
    fingerprint = json.loads((cache / "manifest.json").read_text())["fingerprint"]
    ck_dir = Path(full_checkpoints) if full_checkpoints is not None else out / "checkpoints"
    rows: list[dict] = []
    for seed in cfg.seeds:
        t0 = time.time()
        name = f"{cfg.family}_fixed_x1{length_tag(cfg.full_epochs)}_seed{seed}.pt"  # as the sweep names it
        full, full_row = _full_model(cfg, seed, data, ck_dir / name)
        common = {"family": cfg.family, "seed": seed, "finetune_epochs": cfg.finetune_epochs,
                  "full_epochs": cfg.full_epochs, "full_mflops_per_s": full_row["mflops_per_s"],
                  "full_auc": full_row["auc"], "full_eer": full_row["eer"], "data_fingerprint": fingerprint}
        if progress:
            print(f"seed {seed}: full model {full_row['mflops_per_s']:.2f} MFLOP/s, AUC {full_row['auc']:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
        for target in cfg.targets:
            t1 = time.time()
            dcl = _dcl_arm(cfg, full, target, seed, data)
            t2 = time.time()
            pr = _prune_arm(cfg, full, dcl, seed, data)
            t3 = time.time()
            for arm, r, secs in (("DCL", dcl, t2 - t1), ("prune", pr, t3 - t2)):
                rows.append({**common, "arm": arm, "target_mflops": target / 1e6, **r, "wall_seconds": round(secs, 1)})
            if progress:
                print(f"  target {target / 1e6:g} MFLOP/s: DCL {dcl['mflops_per_s']:.3f} MFLOP/s AUC {dcl['auc']:.4f}; "
                      f"prune {pr['mflops_per_s']:.3f} MFLOP/s AUC {pr['auc']:.4f} ({t3 - t1:.0f}s)", flush=True)
        write_study_csv(rows, out / "finetune_study.csv")
    return rows


# -- CSV and tables ------------------------------------------------------------------------------
COLUMNS = ["family", "arm", "target_mflops", "seed", "mel_bands", "mflops_per_s", "params", "auc", "f1", "eer",
           *[f"eer {b}" for b, _, _ in SNR_BANDS], "threshold", "widths", "finetune_epochs", "width_steps",
           "full_epochs", "full_mflops_per_s", "full_auc", "full_eer", "wall_seconds", "data_fingerprint"]
_NUMERIC = {"target_mflops", "mel_bands", "mflops_per_s", "params", "auc", "f1", "eer", "threshold",
            *[f"eer {b}" for b, _, _ in SNR_BANDS], "full_mflops_per_s", "full_auc", "full_eer", "wall_seconds"}
_INTS = {"seed", "finetune_epochs", "full_epochs"}
_OPTIONAL_INTS = {"width_steps"}  # the DCL arm's (empty: the widths learned to the end); empty on pruning rows


def write_study_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """One line per (arm, target, seed) with :data:`COLUMNS`."""
    from .sweep import write_rows_csv

    return write_rows_csv(rows, path, COLUMNS)


def read_study_csv(path: str | Path) -> list[dict]:
    """The rows of a ``finetune_study.csv`` back as numbers (``StudyError`` naming a missing file/column)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"no fine-tuning study at {path}; run 'python -m slimtrain.tasks.vad.finetune_study'")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise StudyError(f"{path}: missing columns {missing}")
        rows = []
        for raw in reader:
            r: dict = dict(raw)
            for c in _NUMERIC:
                r[c] = float(raw[c]) if raw[c] != "" else math.nan
            for c in _INTS:
                r[c] = int(raw[c])
            for c in _OPTIONAL_INTS:
                r[c] = int(raw[c]) if raw[c] != "" else None
            rows.append(r)
    return rows


def _pairs(rows: Sequence[dict]) -> dict[float, dict[str, dict[int, dict]]]:
    """``{target: {arm: {seed: row}}}``."""
    out: dict[float, dict[str, dict[int, dict]]] = {}
    for r in rows:
        out.setdefault(r["target_mflops"], {}).setdefault(r["arm"], {})[r["seed"]] = r
    return out


def _compare(by: dict[str, dict[int, dict]], metric: str, higher_is_better: bool):
    from ...train.stats import compare

    a = {s: r[metric] for s, r in by.get("DCL", {}).items()}
    b = {s: r[metric] for s, r in by.get("prune", {}).items()}
    if len(set(a) & set(b)) < 2:
        return None
    return compare(a, b, higher_is_better=higher_is_better)


def format_study_table(rows: Sequence[dict]) -> str:
    """Markdown: per target and arm, mean ± 95 % half-width of exported MFLOP/s, mel bands, AUC, F1, EER and
    EER below 5 dB; then per target the paired (same-seed) difference DCL - prune of AUC and EER."""
    from ...train.stats import format_interval as fi, mean_interval

    def iv(rs: list[dict], key: str):
        vals = [r[key] for r in rs if not math.isnan(r[key])]
        return mean_interval(vals) if vals else None

    lines = ["| target MFLOP/s | arm | n | mel bands | exported MFLOP/s | AUC | F1 | EER % | EER < 5 dB % |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    pairs = _pairs(rows)
    for target in sorted(pairs, reverse=True):
        for arm in ARMS:
            rs = list(pairs[target].get(arm, {}).values())
            if not rs:
                continue
            lines.append(f"| {target:g} | {ARM_NAMES[arm]} | {len(rs)} | {fi(iv(rs, 'mel_bands'), '.1f')} | "
                         f"{fi(iv(rs, 'mflops_per_s'), '.3f')} | {fi(iv(rs, 'auc'), '.4f')} | {fi(iv(rs, 'f1'), '.4f')} | "
                         f"{fi(iv(rs, 'eer'), '.2f', 100)} | {fi(iv(rs, 'eer < 5 dB'), '.1f', 100)} |")
    lines += ["", "| target MFLOP/s | MFLOP/s ratio prune/DCL (max dev.) | AUC: DCL - prune | EER points: DCL - prune |",
              "| ---: | ---: | --- | --- |"]
    for target in sorted(pairs, reverse=True):
        by = pairs[target]
        common = sorted(set(by.get("DCL", {})) & set(by.get("prune", {})))
        ratios = [by["prune"][s]["mflops_per_s"] / by["DCL"][s]["mflops_per_s"] for s in common]
        dev = max((abs(x - 1) for x in ratios), default=math.nan)
        cells = []
        for metric, hib, scale, fmt in (("auc", True, 1.0, "+.4f"), ("eer", False, 100.0, "+.2f")):
            c = _compare(by, metric, hib)
            if c is None:
                cells.append("n=1")
                continue
            d = c.difference
            tag = {"A better than B": "DCL better", "B better than A": "pruning better"}.get(c.verdict, "n.s.")
            cells.append(f"{tag} ({format(d.mean * scale, fmt)} [{format(d.lo * scale, fmt)}, "
                         f"{format(d.hi * scale, fmt)}])")
        mean_ratio = sum(ratios) / len(ratios) if ratios else math.nan
        lines.append(f"| {target:g} | {mean_ratio:.3f} ({100 * dev:.1f} %) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def study_sentences(rows: Sequence[dict]) -> str:
    """One generated sentence per target: which arm is better on AUC and EER, and whether significantly."""
    out = []
    pairs = _pairs(rows)
    for target in sorted(pairs, reverse=True):
        by = pairs[target]
        n = len(set(by.get("DCL", {})) & set(by.get("prune", {})))
        parts = []
        for metric, name, hib, scale, unit, f in (("auc", "AUC", True, 1.0, "", "+.4f"),
                                                  ("eer", "EER", False, 100.0, " points", "+.2f")):
            c = _compare(by, metric, hib)
            if c is None:
                parts.append(f"{name}: one seed, no test")
                continue
            d = c.difference
            what = {"A better than B": "DCL fine-tuning is significantly better",
                    "B better than A": "torch-pruning is significantly better"}.get(
                c.verdict, "the difference is not significant")
            parts.append(f"{name} DCL - prune {d.mean * scale:{f}}{unit} "
                         f"[{d.lo * scale:{f}}, {d.hi * scale:{f}}]: {what}")
        out.append(f"* At {target:g} MFLOP/s ({n} paired seed{'s' if n != 1 else ''}): " + "; ".join(parts) + ".")
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slimtrain.tasks.vad.finetune_study",
                                description="DCL fine-tuning of a trained VAD vs torch-pruning + fine-tuning "
                                            "(equal MACs, equal epochs, paired seeds)")
    p.add_argument("--family", default="crnn", choices=("crnn", "transformer"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--targets", default="1.5e6,0.75e6", help="FLOPs per second of audio, comma-separated")
    p.add_argument("--full-epochs", type=int, default=None, help="default 12 (quick: 1)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default 6 (quick: 1)")
    p.add_argument("--settle", choices=("budget", "none"), default="budget",
                   help="DCL arm: 'budget' fixes the widths once the cost first meets the target and fine-tunes "
                        "the weights at them (default); 'none' lets the widths learn to the end")
    p.add_argument("--out", default="runs/vad_finetune")
    p.add_argument("--data", default=None, help="VAD data folder (default OUT/data; built when missing)")
    p.add_argument("--full-checkpoints", default=None,
                   help="folder with <family>_fixed_x1[_e<N>]_seed<S>.pt (e.g. a 3-seed sweep's checkpoints/); "
                        "a missing one is trained and saved there")
    p.add_argument("--quick", action="store_true", help="the tiny test configuration")
    args = p.parse_args(argv)
    try:
        targets = tuple(float(t) for t in args.targets.split(",") if t.strip())
    except ValueError:
        p.error(f"--targets must be numbers, got {args.targets!r}")
    make = FinetuneStudyConfig.quick if args.quick else FinetuneStudyConfig
    given = {k: v for k, v in (("full_epochs", args.full_epochs), ("finetune_epochs", args.finetune_epochs))
             if v is not None}
    given["settle"] = args.settle
    cfg = make(family=args.family, seeds=tuple(range(args.seeds)), targets=targets, **given)
    try:
        rows = run_study(cfg, args.out, cache=args.data, full_checkpoints=args.full_checkpoints)
    except StudyError as e:
        print(f"finetune_study: error: {e}", file=sys.stderr)
        return 2
    print(format_study_table(rows))
    print(study_sentences(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
