"""The anti-spoofing sweep: the paper's stage x kappa_min grid, fixed widths and pruning baselines.

Rows (one training run each, all on the same data and budget):

* ``dcl``: DCLs on one stage (B0..B3) or all four (X), for each ``kappa_min`` in
  :data:`DEFAULT_KAPPAS` (the paper's grid), trade-off loss at ``alpha``;
* ``fixed``: the plain ResNet at base widths :data:`DEFAULT_FIXED_WIDTHS` trained from scratch (the
  full width is the paper's "ResNet34 (baseline)" row);
* ``pruned``: the full model trained, then structurally pruned with ``torch-pruning`` (through
  :func:`slimtrain.tasks.baselines.prune_to_macs`) to the MACs of the all-stage DCL runs, and
  fine-tuned (:func:`pruning_row` is the one place that touches the pruning module).

Writes ``sweep.csv`` (the paper's columns -- model, dynamic_resblock, min_kappa, params_millions,
gflops (GFLOP per second of audio), eer_percent -- plus per-attack EERs and the details),
``sweep.png`` (pooled and unseen-attack EER against MACs per second of audio) and ``config.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ...train.stats import format_interval, paired_verdict, summarize_rows
from ...train.sweep_engine import Job, read_sweep_rows
from ..study.sweep import Phase, run_phases
from ..study.tables import write_rows_csv
from ..study.tables import write_summary_csv as write_summary
from .attacks import ATTACKS
from .data import load_split
from .train import SpoofConfig, train_run

__all__ = ["DEFAULT_KAPPAS", "DEFAULT_STAGE_SETS", "DEFAULT_FIXED_WIDTHS", "QUICK_KAPPAS", "QUICK_STAGE_SETS",
           "QUICK_FIXED_WIDTHS", "run_sweep", "write_sweep_csv", "plot_sweep", "format_table", "pruning_row",
           "SWEEP_COLUMNS", "pruning_available", "read_sweep_csv", "add_pruning_rows", "summarize", "row_id",
           "format_summary_table", "format_detail_table", "write_summary_csv", "data_fingerprint"]

DEFAULT_KAPPAS: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625)
DEFAULT_STAGE_SETS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2,), (3,), (0, 1, 2, 3))
DEFAULT_FIXED_WIDTHS: tuple[int, ...] = (2, 3, 4, 6, 8)
QUICK_KAPPAS: tuple[float, ...] = (0.25,)
QUICK_STAGE_SETS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3),)
QUICK_FIXED_WIDTHS: tuple[int, ...] = (4, 8)

SWEEP_COLUMNS = [
    "model", "dynamic_resblock", "min_kappa", "params_millions", "gflops", "eer_percent",
    "eer_unseen_percent", "eer_known_percent", *[f"eer_{a}_percent" for a in ATTACKS],
    "method", "alpha", "control", "width", "macs", "macs_per_second", "params", "params_exported", "target_macs",
    "export_max_abs_diff", "widths", "widths_continuous", "seconds",
    # provenance of every (row, seed) line
    "pruned_at_kappa", "seed", "data_fingerprint", "torch_version", "threads", "hostname", "wall_seconds",
]


def pruning_available() -> bool:
    """Whether :mod:`slimtrain.tasks.baselines` (with ``prune_to_macs``) and torch-pruning import."""
    try:
        from .. import baselines  # noqa: F401
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return hasattr(baselines, "prune_to_macs")


def _prune_fn(model, sample, target_macs: float, finetune):
    """One-shot L2 structured pruning to ``target_macs`` (torch-pruning), then ``finetune(model)``."""
    from ..baselines import prune_to_macs

    # channel granularity can leave no pruning ratio within 5 % of the target: accept 15 % (the row
    # reports the MACs actually reached)
    return prune_to_macs(model, sample, target_macs, tolerance=0.15, finetune=lambda m, step: finetune(m)).model


def pruning_row(cfg: SpoofConfig, data_dir: str, unseen: Sequence[str], target_macs: float,
                trained: Optional[str] = None) -> dict:
    """Prune the full model to ``target_macs`` MACs per clip and fine-tune it (method ``pruned``).

    ``trained``: checkpoint of the full-width model trained from scratch (the sweep's fixed row) to
    prune; without it a full model is trained first."""
    train, test = load_split(Path(data_dir), "train"), load_split(Path(data_dir), "eval")
    state = None
    if trained is not None and Path(trained).is_file():
        from ...train.checkpoint import load_checkpoint

        state = load_checkpoint(trained)["state_dict"]
    return train_run(cfg, train, test, unseen, prune_to=target_macs, prune_fn=_prune_fn, init_state=state,
                     progress=False)


def data_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 (16 hex digits) of the data set's ``manifest.json`` (which holds every file's SHA-256)."""
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()[:16]


def _job(job: tuple) -> dict:
    """One (row, seed) of the sweep, run by :mod:`slimtrain.train.sweep_engine`; a failure becomes a row
    with ``method = "failed"`` and a ``status`` (so ``--resume`` runs it again)."""
    try:
        row = _job_inner(job)
    except Exception as e:  # noqa: BLE001 - one failing run must not lose the sweep
        row = {"method": "failed", "error": f"{job[0]} run {job[4]!r} (kappa-min {job[5]}) failed: "
                                            f"{type(e).__name__}: {' '.join(str(e).split())}"}
    if row.get("method") == "failed":
        row["status"] = "failed"
    row["seed"] = job[1].seed
    row["data_fingerprint"] = data_fingerprint(job[2]) if (Path(job[2]) / "manifest.json").is_file() else None
    return row


def _job_inner(job: tuple) -> dict:
    kind, cfg, data_dir, unseen, value, kappa, alpha, runs_dir, *rest = job
    device = rest[0] if rest else "cpu"  # pruning jobs train on the CPU
    floor = len(rest) > 1 and rest[1] == "floor"
    if kind == "pruned":
        trained = str(Path(runs_dir) / f"model_fixed{cfg.width}.ckpt") if runs_dir else None
        try:
            row = pruning_row(cfg, data_dir, unseen, value, trained)
        except Exception as e:  # noqa: BLE001 - a failing baseline must not lose the sweep
            return {"method": "failed", "error": f"pruning to {value:.0f} MACs failed: {type(e).__name__}: {e}"}
        row["pruned_at_kappa"] = kappa
    else:
        train, test = load_split(Path(data_dir), "train"), load_split(Path(data_dir), "eval")
        if kind == "dcl":
            tag = f"stages{''.join(map(str, value))}_kappa{kappa:g}"
            row = train_run(cfg, train, test, unseen, stages=value, kappa_min=kappa, alpha=alpha, floor=floor,
                            progress=False,
                            device=device,
                            record_csv=Path(runs_dir) / f"widths_{tag}.csv" if runs_dir else None,
                            checkpoint=Path(runs_dir) / f"model_{tag}.ckpt" if runs_dir else None)
        else:
            row = train_run(cfg, train, test, unseen, width=value, progress=False, device=device,
                            checkpoint=Path(runs_dir) / f"model_fixed{value}.ckpt" if runs_dir else None)
    return _paper_columns(row, cfg)


def _paper_columns(row: dict, cfg: SpoofConfig) -> dict:
    depth = {(3, 4, 6, 3): "ResNet34", (2, 2, 2, 2): "ResNet18"}.get(tuple(cfg.blocks), f"ResNet{list(cfg.blocks)}")
    if row["method"] == "dcl":
        name = f"Dyn{depth}"
        stages = row["stages"].replace(",", ", ")
    elif row["method"] == "fixed":
        name = f"{depth} w{row['width']}" + (" (baseline)" if row["width"] == cfg.width else "")
        stages = "-"
    else:
        name = f"{depth} w{row['width']} pruned"
        stages = "-"
    out = dict(row)
    out.update({
        "model": name, "dynamic_resblock": stages,
        "min_kappa": row["kappa_min"] if row["method"] == "dcl" else "-",
        "params_millions": row["params"] / 1e6, "gflops": row["gflops_per_second"], "eer_percent": row["eer_pooled"],
        "eer_unseen_percent": row["eer_unseen"], "eer_known_percent": row["eer_known"],
        **{f"eer_{a}_percent": row[f"eer_{a}"] for a in ATTACKS},
    })
    return out


def _key(job: tuple) -> str:
    kind, cfg, _, _, value, kappa, _, _, *rest = job
    if kind == "dcl":
        floor = rest[1:] == ["floor"]
        head = f"dcl-stages{''.join(map(str, value))}-kappa{kappa:g}" + ("-floor" if floor else "") + (
            "-settled" if floor and cfg.settle_at_budget else "")  # (old rows keep their keys)
    elif kind == "fixed":
        head = f"fixed-w{value}"
    else:
        head = f"pruned-kappa{kappa:g}-macs{value:.0f}"
    return f"{head}-seed{cfg.seed}"


def _phases_run(phases: Sequence[Phase], out_dir: Optional[Path], **run) -> list[dict]:
    """The phases on the skeleton's sweep (:func:`slimtrain.tasks.study.sweep.run_phases`): rows saved in
    ``out_dir/rows`` under :func:`_key`; a failed run is warned about and left out (saved as failed: ``--resume``
    runs it again)."""
    return run_phases(phases, Path(out_dir) / "rows" if out_dir is not None else None, **run,
                      failed=lambda r: r["error"] if r.get("method") == "failed" else None,
                      note=lambda r: r.get("error", "")[:60] if r.get("method") == "failed"
                      else f"{r['model']} {r['dynamic_resblock']} seed={r['seed']} eer={r['eer_percent']:.1f}%")


def _jobs(jobs: list[tuple]) -> list[Job]:
    return [Job(_key(j), _job, j) for j in jobs]


def _pruning_targets(rows: Sequence[dict], full: int) -> dict[float, float]:
    """``{kappa_min: MACs}`` of the all-stage DCL rows of one seed (one target per distinct MACs,
    named by its largest kappa_min)."""
    by_macs: dict[float, float] = {}
    for r in rows:
        if r["method"] == "dcl" and len(str(r["stages"]).split(",")) == full:
            by_macs[r["macs"]] = max(by_macs.get(r["macs"], 0.0), float(r["kappa_min"]))
    return {k: m for m, k in sorted(by_macs.items())}


def _pruned_jobs(rows: Sequence[dict], full: int, cfg: SpoofConfig, data_dir, unseen: Sequence[str],
                 runs_dir: Optional[str]) -> list[Job]:
    """The pruning jobs of one seed's ``rows`` (:func:`_pruning_targets`), each fine-tuned with ``cfg``."""
    return _jobs([("pruned", cfg, str(data_dir), tuple(unseen), float(t), float(k), math.nan, runs_dir)
                  for k, t in _pruning_targets(rows, full).items()])


def run_sweep(data_dir: Path, cfg: SpoofConfig, out_dir: Optional[Path] = None, *,
              stage_sets: Sequence[Sequence[int]] = DEFAULT_STAGE_SETS, kappas: Sequence[float] = DEFAULT_KAPPAS,
              alpha: float = 1.0, fixed_widths: Sequence[int] = DEFAULT_FIXED_WIDTHS, pruning: bool = True,
              workers: int = 1, progress: bool = True, seeds: Optional[Sequence[int]] = None,
              engine: str = "local", address: Optional[str] = None, resume: bool = False,
              device: str = "cpu", control: str = "floor") -> list[dict]:
    """Run every row (see the module docstring) for every training seed in ``seeds`` (default
    ``[cfg.seed]``; the data set is the one in ``data_dir`` for all seeds) and write the outputs to
    ``out_dir`` (``sweep.csv`` one line per row and seed, ``sweep_summary.csv`` mean and 95 %
    interval over seeds, ``sweep.png``, ``config.json``; finished rows in ``out_dir/rows``, which
    ``resume=True`` skips). ``engine``/``workers``/``address``: see :mod:`slimtrain.train.sweep_engine`.

    ``device`` is passed to the DCL and fixed-width runs (the pruning baseline trains on the CPU).
    ``control``: ``"floor"`` (default) trains each DCL row toward its floor (a budget at the cost of every
    width at ``kappa_min * N``; see :class:`slimtrain.TradeoffLoss`), so the ``kappa_min`` rows trace the
    trade-off as in the paper; ``"alpha"`` uses the weighted cost term at ``alpha`` instead.

    The pruning targets are the MACs of the same seed's all-stage DCL runs (or of the
    widest-stage-set runs when no all-stage set is swept), so the pruned rows sit at matching cost.
    """
    cfg.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    seeds = [int(s) for s in (seeds if seeds is not None else [cfg.seed])]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    man = json.loads((Path(data_dir) / "manifest.json").read_text()) if (Path(data_dir) / "manifest.json").is_file() else None
    if man is None:
        load_split(Path(data_dir), "train")  # raises the DataError with the build hint
    unseen = tuple(man.get("unseen_attacks", ())) if man else ()
    multi = len(seeds) > 1

    def runs_dir(seed: int) -> Optional[str]:
        if out_dir is None:
            return None
        d = Path(out_dir) / "runs" / (f"seed{seed}" if multi else "")
        d.mkdir(parents=True, exist_ok=True)
        return str(d)

    jobs = []
    for seed in seeds:
        c = dataclasses.replace(cfg, seed=seed)
        jobs += [("dcl", c, str(data_dir), unseen, tuple(s), float(k), float(alpha), runs_dir(seed), device, control)
                 for s in stage_sets for k in kappas]
        jobs += [("fixed", c, str(data_dir), unseen, int(w), math.nan, math.nan, runs_dir(seed), device)
                 for w in fixed_widths]

    def grid_written(rows: list[dict]) -> None:  # the main grid is safe on disk before the baselines run
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_sweep_csv(rows, Path(out_dir) / "sweep.csv")

    def pruning_jobs(rows: list[dict]) -> list[Job]:
        """Second phase: prune to the MACs the same seed's all-stage DCL rows reached."""
        if not pruning:
            return []
        if not pruning_available():
            print("slimtrain: note: pruning baseline skipped (slimtrain.tasks.baselines.prune_to_macs or torch-pruning "
                  "is not available)")
            return []
        full = max(len(s) for s in stage_sets) if stage_sets else 0
        return [j for seed in seeds for j in _pruned_jobs([r for r in rows if r["seed"] == seed], full,
                                                           dataclasses.replace(cfg, seed=seed), data_dir, unseen,
                                                           runs_dir(seed))]

    t0 = time.perf_counter()
    rows = _phases_run([Phase("spoof sweep", lambda _: _jobs(jobs), after=grid_written),
                        Phase("spoof pruning", pruning_jobs)], out_dir, engine=engine, workers=workers,
                       address=address, resume=resume, progress=progress)
    rows.sort(key=_sort_key)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_sweep_csv(rows, out / "sweep.csv")
        write_summary_csv(rows, out / "sweep_summary.csv")
        plot_sweep(rows, out / "sweep.png", cfg)
        (out / "config.json").write_text(json.dumps({
            "config": cfg.as_dict(), "data": man.get("config") if man else None, "unseen_attacks": list(unseen),
            "stage_sets": [list(s) for s in stage_sets], "kappas": list(kappas), "alpha": alpha, "control": control,
            "fixed_widths": list(fixed_widths), "pruning": pruning and pruning_available(), "workers": workers,
            "seeds": seeds, "engine": engine, "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    return rows


def _sort_key(r: dict) -> tuple:
    """Rows by method, width / stages / kappa_min (pruned: by target), then seed."""
    order = {"fixed": 0, "dcl": 1, "pruned": 2}
    dcl = r["method"] == "dcl"
    target = r.get("pruned_at_kappa") if r["method"] == "pruned" else None
    return (order[r["method"]], -r["width"] if r["method"] == "fixed" else 0, len(r["stages"]), r["stages"],
            -(r["kappa_min"] if dcl else 0), r["alpha"] if dcl else 0, target if target is not None else 0,
            r.get("seed") or 0, r["macs"])


def read_sweep_csv(path: Path) -> list[dict]:
    """Rows of a ``sweep.csv`` back as numbers, with the keys :func:`plot_sweep` and :func:`format_table` use."""
    rows = read_sweep_rows(path, f"no sweep table at {Path(path)}; run 'slimtrain spoof --sweep' first",
                           text=("model", "dynamic_resblock", "min_kappa", "method", "widths", "widths_continuous",
                                 "data_fingerprint", "torch_version", "hostname", "control"),
                           keep_unparsed=True)
    for d in rows:
        d["width"] = int(d["width"])
        d["params"] = int(d["params"])
        for k in ("seed", "threads"):  # absent or empty in tables written before seeds were recorded
            v = d.get(k)
            d[k] = None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
        d["stages"] = str(d["dynamic_resblock"]).replace(" ", "") if d["method"] == "dcl" else "-"
        d["control"] = d.get("control") or ("alpha" if d["method"] == "dcl" else "")  # older tables: alpha
        d["kappa_min"] = float(d["min_kappa"]) if d["method"] == "dcl" else math.nan
        d["eer_pooled"], d["eer_unseen"], d["eer_known"] = d["eer_percent"], d["eer_unseen_percent"], d[
            "eer_known_percent"]
        d["gflops_per_second"] = d["gflops"]
        for a in ATTACKS:
            d[f"eer_{a}"] = d.get(f"eer_{a}_percent", math.nan)  # tables written before A8/A9 existed
    return rows


def add_pruning_rows(data_dir: Path, cfg: SpoofConfig, out_dir: Path, *, workers: int = 1,
                     progress: bool = True) -> list[dict]:
    """Add (or replace) the pruning rows of an existing sweep in ``out_dir`` (targets: the MACs of
    its all-stage DCL rows; the full model: ``out_dir/runs/model_fixed<width>.ckpt`` if present)."""
    if not pruning_available():
        raise ImportError("the pruning baseline needs slimtrain.tasks.baselines.prune_to_macs and torch-pruning")
    out = Path(out_dir)
    rows = [r for r in read_sweep_csv(out / "sweep.csv") if r["method"] != "pruned"]
    dcl = [r for r in rows if r["method"] == "dcl"]
    if not dcl:
        raise ValueError(f"{out / 'sweep.csv'} has no DCL rows to match")
    full = max(len(r["stages"].split(",")) for r in dcl)
    man = json.loads((Path(data_dir) / "manifest.json").read_text())
    unseen = tuple(man.get("unseen_attacks", ()))
    jobs = _pruned_jobs(dcl, full, cfg, data_dir, unseen, str(out / "runs"))
    new = _phases_run([Phase("pruning", lambda _: jobs)], out, workers=workers, progress=progress)
    rows += new
    write_sweep_csv(rows, out / "sweep.csv")
    plot_sweep(rows, out / "sweep.png", cfg)
    return rows


def write_sweep_csv(rows: Iterable[dict], path: Path) -> Path:
    """Write the table (columns :data:`SWEEP_COLUMNS`) atomically."""
    return write_rows_csv(list(rows), path, SWEEP_COLUMNS)



def format_table(rows: Iterable[dict]) -> str:
    """The sweep as a Markdown table (the paper's columns plus unseen-attack EERs)."""
    unseen_cols = [a for a in ("A4", "A6", "A7")]
    head = ("| model | dynamic stages | kappa_min | params (M) | MMAC/s | GFLOP/s | EER pooled % | EER unseen % | "
            + " | ".join(f"EER {a} %" for a in unseen_cols) + " |")
    lines = [head, "| " + " | ".join(["---"] * 3 + ["---:"] * (5 + len(unseen_cols))) + " |"]
    for r in rows:
        k = f"{r['kappa_min']:g}" if r["method"] == "dcl" else "-"
        per = " | ".join(f"{r.get(f'eer_{a}', math.nan):.1f}" for a in unseen_cols)
        lines.append(f"| {r['model']} | {r['dynamic_resblock']} | {k} | {r['params'] / 1e6:.3f} | "
                     f"{r['macs_per_second'] / 1e6:.2f} | {r['gflops_per_second']:.4f} | {r['eer_pooled']:.2f} | "
                     f"{r['eer_unseen']:.2f} | {per} |")
    return "\n".join(lines)


#: the metrics summarised over seeds (mean and 95 % Student-t interval)
SUMMARY_METRICS = ("params", "macs", "macs_per_second", "gflops_per_second", "eer_pooled", "eer_unseen",
                   "eer_known", *[f"eer_{a}" for a in ATTACKS])


def row_id(r: dict) -> str:
    """What makes a row the same row across seeds: DCL stages and kappa_min, fixed width, or the
    pruned model's target (the kappa_min of the all-stage DCL run whose MACs it matches; the MACs
    themselves for tables written before that was recorded)."""
    if r["method"] == "dcl":
        return f"dcl {r['stages']} {r['kappa_min']:g} " + (
            "floor" if r.get("control") == "floor" else f"a{r['alpha']:g}")
    if r["method"] == "fixed":
        return f"fixed w{r['width']}"
    k = r.get("pruned_at_kappa")
    if k is None or (isinstance(k, float) and math.isnan(k)):
        return f"pruned {r['macs']:.0f}"
    return f"pruned @{k:g}"


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One entry per row id (:func:`row_id`) in first-seen order: ``n``, ``seeds``, ``row`` (the
    first seed's row, for names) and an interval per :data:`SUMMARY_METRICS` metric over seeds."""
    keyed = [dict(r, row_id=row_id(r)) for r in rows]
    first: dict[str, dict] = {}
    for r in keyed:
        first.setdefault(r["row_id"], r)
    out = summarize_rows(keyed, ("row_id",), SUMMARY_METRICS)
    for e in out:
        e["row"] = first[e["row_id"]]
    return out


def _mean_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows averaged over seeds (keys as in a row), with ``<metric>_err`` = the 95 % half-width
    (0 for one seed) and ``n``."""
    out = []
    for e in summarize(rows):
        r = dict(e["row"], n=e["n"])
        for m in SUMMARY_METRICS:
            iv = e[m]
            r[m] = iv.mean if iv is not None else math.nan
            r[f"{m}_err"] = 0.0 if iv is None or math.isnan(iv.lo) else iv.half_width
        out.append(r)
    return out


def format_summary_table(rows: Sequence[dict]) -> str:
    """Markdown table over seeds: mean ± 95 % half-width (the value alone for n = 1) and the paired
    pooled-EER comparison with the full-width fixed model (``better``/``worse`` only when the
    same-seed difference's interval excludes 0; ``n=1`` for single-seed results)."""
    summary = summarize(rows)
    widest = max((e for e in summary if e["row"]["method"] == "fixed"), key=lambda e: e["row"]["width"], default=None)
    lines = ["| model | dynamic stages | kappa_min | alpha | n | params (k) | MMAC/s | EER pooled % | EER unseen % | "
             "EER pooled vs full width (paired) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in summary:
        r = e["row"]
        k = f"{r['kappa_min']:g}" if r["method"] == "dcl" else "-"
        alpha = ("floor" if r.get("control") == "floor" else f"{r['alpha']:g}") if r["method"] == "dcl" else "-"
        if widest is None:
            vs = ""
        elif e is widest:
            vs = "ref."
        else:
            vs = paired_verdict(e["eer_pooled_by_seed"], widest["eer_pooled_by_seed"], higher_is_better=False,
                                fmt="+.2f")
        stages = _stage_name(r["stages"]) if r["method"] == "dcl" else "-"
        lines.append(f"| {r['model']} | {stages} | {k} | {alpha} | {e['n']} | "
                     f"{format_interval(e['params'], '.1f', 1e-3)} | {format_interval(e['macs_per_second'], '.2f', 1e-6)} | "
                     f"{format_interval(e['eer_pooled'], '.2f')} | {format_interval(e['eer_unseen'], '.2f')} | {vs} |")
    return "\n".join(lines)


def _stage_name(stages: str) -> str:
    parts = [p for p in str(stages).replace(" ", "").split(",") if p]
    if len(parts) == 4:
        return "X (all)"
    return ", ".join(f"B{p}" for p in parts) if parts else "-"


def format_detail_table(rows: Sequence[dict]) -> str:
    """The full table (``docs/spoof.md``): size, cost and EER pooled / unseen / known / per attack of
    every row, mean ± 95 % half-width over seeds (the value alone for n = 1)."""
    unseen, known = ("A4", "A6", "A7"), ("A1", "A2", "A3", "A5")
    fi = format_interval
    lines = ["| method | dynamic stages | kappa_min | params (k) | MMAC/s | GFLOP/s | EER pooled % | EER unseen % | "
             + " | ".join(f"{a} %" for a in unseen) + " | EER known % | " + " | ".join(f"{a} %" for a in known) + " |",
             "| --- | --- | " + " | ".join(["---:"] * (6 + len(unseen) + 1 + len(known))) + " |"]
    for e in summarize(rows):
        r = e["row"]
        method = {"dcl": "DCL", "fixed": f"fixed w{r['width']}", "pruned": "pruned"}[r["method"]]
        stages = _stage_name(r["stages"]) if r["method"] == "dcl" else "-"
        k = f"{r['kappa_min']:g}" if r["method"] == "dcl" else "-"
        lines.append(f"| {method} | {stages} | {k} | {fi(e['params'], '.1f', 1e-3)} | "
                     f"{fi(e['macs_per_second'], '.2f', 1e-6)} | {fi(e['gflops_per_second'], '.4f')} | "
                     f"{fi(e['eer_pooled'], '.2f')} | {fi(e['eer_unseen'], '.2f')} | "
                     + " | ".join(fi(e[f"eer_{a}"], ".1f") for a in unseen) + f" | {fi(e['eer_known'], '.2f')} | "
                     + " | ".join(fi(e[f"eer_{a}"], ".1f") for a in known) + " |")
    return "\n".join(lines)


def write_summary_csv(rows: Sequence[dict], path: Path) -> Path:
    """``sweep_summary.csv``: per row id, ``n`` and mean/lo/hi of every summary metric (lo/hi empty for n = 1)."""
    lead = {"row_id": lambda e: e["row_id"], "model": lambda e: e["row"]["model"],
            "dynamic_resblock": lambda e: e["row"]["dynamic_resblock"], "min_kappa": lambda e: e["row"]["min_kappa"],
            "n": lambda e: e["n"]}
    return write_summary(summarize(rows), path, lead, SUMMARY_METRICS)


def plot_sweep(rows: Sequence[dict], path: Path, cfg: Optional[SpoofConfig] = None) -> Path:
    """Pareto plot: pooled EER and unseen-attack EER against MACs per second of audio (means over
    seeds with 95 % Student-t error bars; none for a single seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _mean_rows(rows)
    n_seeds = max((r["n"] for r in rows), default=1)
    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    markers = {(0,): ("o", "tab:blue", "DCL stage B0"), (1,): ("s", "tab:orange", "DCL stage B1"),
               (2,): ("^", "tab:green", "DCL stage B2"), (3,): ("v", "tab:purple", "DCL stage B3")}
    for ax, key, title in zip(axes, ("eer_pooled", "eer_unseen"), ("all attacks (pooled)", "unseen attacks only")):
        fixed = sorted((r for r in rows if r["method"] == "fixed"), key=lambda r: r["macs"])
        if fixed:
            ax.errorbar([r["macs_per_second"] for r in fixed], [r[key] for r in fixed],
                        yerr=[r[f"{key}_err"] for r in fixed], fmt="o-", color="0.4", capsize=3,
                        label="fixed width, from scratch", zorder=2)
            for r in fixed:
                ax.annotate(f"w{r['width']}", (r["macs_per_second"], r[key]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="0.35")
        pruned = sorted((r for r in rows if r["method"] == "pruned"), key=lambda r: r["macs"])
        if pruned:
            ax.errorbar([r["macs_per_second"] for r in pruned], [r[key] for r in pruned],
                        yerr=[r[f"{key}_err"] for r in pruned], fmt="D--", color="tab:brown", ms=5, capsize=3,
                        label="torch-pruning + fine-tune", zorder=2)
        dcl = [r for r in rows if r["method"] == "dcl"]
        seen = set()
        groups: dict[tuple, list[dict]] = {}  # runs that ended on the same point share one label
        for r in dcl:
            groups.setdefault((r["stages"], round(r["macs"]), round(r[key], 6)), []).append(r)
        for (stages, _, _), grp in groups.items():
            st = tuple(int(x) for x in stages.split(","))
            m, c, lab = markers.get(st, ("*", "tab:red", "DCL all stages (X)"))
            r = grp[0]
            ax.errorbar([r["macs_per_second"]], [r[key]], yerr=[r[f"{key}_err"]], fmt=m, color=c,
                        ms=9 if m == "*" else 6, mec="k", mew=0.4, capsize=3, label=None if lab in seen else lab,
                        zorder=3)
            seen.add(lab)
            ax.annotate(",".join(f"{g['kappa_min']:g}" for g in grp), (r["macs_per_second"], r[key]),
                        textcoords="offset points", xytext=(4, 3), fontsize=6, color=c)
        ax.set_xscale("log")
        ax.set_xlabel("MACs per second of audio (exported model)")
        ax.set_ylabel("EER (%)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    if cfg is not None:
        runs = f"mean of {n_seeds} seeds, 95 % intervals" if n_seeds > 1 else f"seed {cfg.seed}"
        fig.suptitle(f"Anti-spoofing countermeasure, ResNet blocks {list(cfg.blocks)}, base width {cfg.width}; "
                     f"{cfg.epochs} epochs, {runs} (labels: kappa_min)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path
