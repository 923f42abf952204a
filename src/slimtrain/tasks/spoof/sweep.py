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

import csv
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from tqdm.auto import tqdm

from .attacks import ATTACKS
from .data import load_split
from .train import SpoofConfig, train_run

__all__ = ["DEFAULT_KAPPAS", "DEFAULT_STAGE_SETS", "DEFAULT_FIXED_WIDTHS", "QUICK_KAPPAS", "QUICK_STAGE_SETS",
           "QUICK_FIXED_WIDTHS", "run_sweep", "write_sweep_csv", "plot_sweep", "format_table", "pruning_row",
           "SWEEP_COLUMNS", "pruning_available", "read_sweep_csv", "add_pruning_rows"]

DEFAULT_KAPPAS: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625)
DEFAULT_STAGE_SETS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2,), (3,), (0, 1, 2, 3))
DEFAULT_FIXED_WIDTHS: tuple[int, ...] = (2, 3, 4, 6, 8)
QUICK_KAPPAS: tuple[float, ...] = (0.25,)
QUICK_STAGE_SETS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3),)
QUICK_FIXED_WIDTHS: tuple[int, ...] = (4, 8)

SWEEP_COLUMNS = [
    "model", "dynamic_resblock", "min_kappa", "params_millions", "gflops", "eer_percent",
    "eer_unseen_percent", "eer_known_percent", *[f"eer_{a}_percent" for a in ATTACKS],
    "method", "alpha", "width", "macs", "macs_per_second", "params", "params_exported", "target_macs",
    "export_max_abs_diff", "widths", "widths_continuous", "seconds",
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
        from ...checkpoint import load_checkpoint

        state = load_checkpoint(trained)["state_dict"]
    return train_run(cfg, train, test, unseen, prune_to=target_macs, prune_fn=_prune_fn, init_state=state,
                     progress=False)


def _job(job: tuple) -> dict:
    try:
        return _job_inner(job)
    except Exception as e:  # noqa: BLE001 - one failing run must not lose the sweep
        return {"method": "failed", "error": f"{job[0]} run {job[4]!r} (kappa-min {job[5]}) failed: "
                                             f"{type(e).__name__}: {' '.join(str(e).split())}"}


def _job_inner(job: tuple) -> dict:
    kind, cfg, data_dir, unseen, value, kappa, alpha, runs_dir, *rest = job
    device = rest[0] if rest else "cpu"  # pruning jobs train on the CPU
    if kind == "pruned":
        trained = str(Path(runs_dir) / f"model_fixed{cfg.width}.ckpt") if runs_dir else None
        try:
            row = pruning_row(cfg, data_dir, unseen, value, trained)
        except Exception as e:  # noqa: BLE001 - a failing baseline must not lose the sweep
            return {"method": "failed", "error": f"pruning to {value:.0f} MACs failed: {type(e).__name__}: {e}"}
    else:
        train, test = load_split(Path(data_dir), "train"), load_split(Path(data_dir), "eval")
        if kind == "dcl":
            tag = f"stages{''.join(map(str, value))}_kappa{kappa:g}"
            row = train_run(cfg, train, test, unseen, stages=value, kappa_min=kappa, alpha=alpha, progress=False,
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


def run_sweep(data_dir: Path, cfg: SpoofConfig, out_dir: Optional[Path] = None, *,
              stage_sets: Sequence[Sequence[int]] = DEFAULT_STAGE_SETS, kappas: Sequence[float] = DEFAULT_KAPPAS,
              alpha: float = 1.0, fixed_widths: Sequence[int] = DEFAULT_FIXED_WIDTHS, pruning: bool = True,
              workers: int = 1, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Run every row (see the module docstring) and write the outputs to ``out_dir``.

    ``device`` is passed to the DCL and fixed-width runs (the pruning baseline trains on the CPU).

    The pruning targets are the MACs of the all-stage DCL runs (or of the widest-stage-set runs
    when no all-stage set is swept), so the pruned rows sit at matching cost.
    """
    cfg.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    man = json.loads((Path(data_dir) / "manifest.json").read_text()) if (Path(data_dir) / "manifest.json").is_file() else None
    if man is None:
        load_split(Path(data_dir), "train")  # raises the DataError with the build hint
    unseen = tuple(man.get("unseen_attacks", ())) if man else ()
    runs_dir = str(Path(out_dir) / "runs") if out_dir is not None else None
    if runs_dir:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
    jobs = [("dcl", cfg, str(data_dir), unseen, tuple(s), float(k), float(alpha), runs_dir, device)
            for s in stage_sets for k in kappas]
    jobs += [("fixed", cfg, str(data_dir), unseen, int(w), math.nan, math.nan, runs_dir, device)
             for w in fixed_widths]
    rows: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="spoof sweep", unit="run", disable=not progress)
    pool = mp.get_context("spawn").Pool(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None

    def run_all(js: list[tuple]) -> None:
        it = pool.imap(_job, js) if pool is not None else map(_job, js)
        for row in it:
            if row.get("method") == "failed":
                print(f"slimtrain: warning: {row['error']}")
                bar.update()
                continue
            rows.append(row)
            bar.set_postfix_str(f"{row['model']} {row['dynamic_resblock']} eer={row['eer_percent']:.1f}%")
            bar.update()

    try:
        run_all(jobs)
        if out_dir is not None:  # the main grid is safe on disk before the baselines run
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_sweep_csv(rows, Path(out_dir) / "sweep.csv")
        if pruning and pruning_available():
            full = max(len(s) for s in stage_sets) if stage_sets else 0
            targets = sorted({r["macs"] for r in rows if r["method"] == "dcl" and len(r["stages"].split(",")) == full})
            pj = [("pruned", cfg, str(data_dir), unseen, float(t), math.nan, math.nan, runs_dir) for t in targets]
            bar.total += len(pj)
            bar.refresh()
            run_all(pj)
        elif pruning:
            print("slimtrain: note: pruning baseline skipped (slimtrain.tasks.baselines.prune_to_macs or torch-pruning "
                  "is not available)")
        if pool is not None:
            pool.close()
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.join()
        bar.close()
    order = {"fixed": 0, "dcl": 1, "pruned": 2}
    rows.sort(key=lambda r: (order[r["method"]], -r["width"] if r["method"] == "fixed" else 0,
                             len(r["stages"]), r["stages"], -(r["kappa_min"] if r["method"] == "dcl" else 0),
                             r["macs"]))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_sweep_csv(rows, out / "sweep.csv")
        plot_sweep(rows, out / "sweep.png", cfg)
        (out / "config.json").write_text(json.dumps({
            "config": cfg.as_dict(), "data": man.get("config") if man else None, "unseen_attacks": list(unseen),
            "stage_sets": [list(s) for s in stage_sets], "kappas": list(kappas), "alpha": alpha,
            "fixed_widths": list(fixed_widths), "pruning": pruning and pruning_available(), "workers": workers,
            "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
    return rows


def read_sweep_csv(path: Path) -> list[dict]:
    """Rows of a ``sweep.csv`` back as numbers, with the keys :func:`plot_sweep` and :func:`format_table` use."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no sweep table at {path}; run 'slimtrain spoof --sweep' first")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            d: dict = {}
            for k, v in r.items():
                if k in ("model", "dynamic_resblock", "min_kappa", "method", "widths", "widths_continuous"):
                    d[k] = v
                    continue
                try:
                    d[k] = float(v) if v not in ("", "-") else (math.nan if v == "" else v)
                except ValueError:
                    d[k] = v
            d["width"] = int(d["width"])
            d["params"] = int(d["params"])
            d["stages"] = str(r["dynamic_resblock"]).replace(" ", "") if r["method"] == "dcl" else "-"
            d["kappa_min"] = float(r["min_kappa"]) if r["method"] == "dcl" else math.nan
            d["eer_pooled"], d["eer_unseen"], d["eer_known"] = d["eer_percent"], d["eer_unseen_percent"], d[
                "eer_known_percent"]
            d["gflops_per_second"] = d["gflops"]
            for a in ATTACKS:
                d[f"eer_{a}"] = d[f"eer_{a}_percent"]
            rows.append(d)
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
    targets = sorted({r["macs"] for r in dcl if len(r["stages"].split(",")) == full})
    man = json.loads((Path(data_dir) / "manifest.json").read_text())
    unseen = tuple(man.get("unseen_attacks", ()))
    jobs = [("pruned", cfg, str(data_dir), unseen, float(t), math.nan, math.nan, str(out / "runs")) for t in targets]
    bar = tqdm(total=len(jobs), desc="pruning", unit="run", disable=not progress)
    new = []
    ctx = mp.get_context("spawn").Pool(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None
    try:
        for row in (ctx.imap(_job, jobs) if ctx is not None else map(_job, jobs)):
            if row.get("method") == "failed":
                print(f"slimtrain: warning: {row['error']}")
            else:
                new.append(row)
            bar.update()
    finally:
        if ctx is not None:
            ctx.close()
            ctx.join()
        bar.close()
    rows += new
    write_sweep_csv(rows, out / "sweep.csv")
    plot_sweep(rows, out / "sweep.png", cfg)
    return rows


def write_sweep_csv(rows: Iterable[dict], path: Path) -> Path:
    """Write the table (columns :data:`SWEEP_COLUMNS`) atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    os.replace(tmp, path)
    return path


def _fmt(v):
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return v


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


def plot_sweep(rows: Sequence[dict], path: Path, cfg: Optional[SpoofConfig] = None) -> Path:
    """Pareto plot: pooled EER and unseen-attack EER against MACs per second of audio."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    markers = {(0,): ("o", "tab:blue", "DCL stage B0"), (1,): ("s", "tab:orange", "DCL stage B1"),
               (2,): ("^", "tab:green", "DCL stage B2"), (3,): ("v", "tab:purple", "DCL stage B3")}
    for ax, key, title in zip(axes, ("eer_pooled", "eer_unseen"), ("all attacks (pooled)", "unseen attacks only")):
        fixed = sorted((r for r in rows if r["method"] == "fixed"), key=lambda r: r["macs"])
        if fixed:
            ax.plot([r["macs_per_second"] for r in fixed], [r[key] for r in fixed], "o-", color="0.4",
                    label="fixed width, from scratch", zorder=2)
            for r in fixed:
                ax.annotate(f"w{r['width']}", (r["macs_per_second"], r[key]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="0.35")
        pruned = sorted((r for r in rows if r["method"] == "pruned"), key=lambda r: r["macs"])
        if pruned:
            ax.plot([r["macs_per_second"] for r in pruned], [r[key] for r in pruned], "D--", color="tab:brown",
                    ms=5, label="torch-pruning + fine-tune", zorder=2)
        dcl = [r for r in rows if r["method"] == "dcl"]
        seen = set()
        groups: dict[tuple, list[dict]] = {}  # runs that ended on the same point share one label
        for r in dcl:
            groups.setdefault((r["stages"], round(r["macs"]), round(r[key], 6)), []).append(r)
        for (stages, _, _), grp in groups.items():
            st = tuple(int(x) for x in stages.split(","))
            m, c, lab = markers.get(st, ("*", "tab:red", "DCL all stages (X)"))
            r = grp[0]
            ax.plot([r["macs_per_second"]], [r[key]], m, color=c, ms=9 if m == "*" else 6, mec="k", mew=0.4,
                    label=None if lab in seen else lab, zorder=3)
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
        fig.suptitle(f"Anti-spoofing countermeasure, ResNet blocks {list(cfg.blocks)}, base width {cfg.width}; "
                     f"{cfg.epochs} epochs, seed {cfg.seed} (labels: kappa_min)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
