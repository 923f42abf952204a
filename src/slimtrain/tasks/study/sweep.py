"""One sweep for every study: (method, alpha or budget, kappa_min) rows x seeds on :mod:`slimtrain.train.sweep_engine`.

Rows: a DCL run for each ``kappa_min`` x (each ``alpha``, then each ``budget``) and a plain model from scratch
for each fixed base width; each for every seed. The data are those of the sweep's base seed for every row
(the seeds vary the initialisation and batch order). Writes ``OUT/sweep.csv`` (one line per run),
``OUT/sweep_summary.csv`` (per row: seeds, mean and 95 % Student-t interval of each metric), ``OUT/config.json``
and ``OUT/sweep.png`` (the headline metric against FLOPs per example); ``OUT/rows/`` holds each finished run,
so ``resume`` runs only the missing ones.

The studies with their own grids (VAD, anti-spoofing) run on the same machinery through two hooks:
:class:`Phase` (a phase's jobs are made from the rows of the phases before it: pruning to the cost a DCL row
reached is a second phase) and :func:`run_phases` (the phases in order on the sweep engine, one rows folder, a
study's ``failed`` rule and a hook after each phase); their job keys stay their own, so ``--resume`` finds the
rows a sweep saved before.
"""
from __future__ import annotations

import functools
import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ...train.stats import summarize_rows
from ...train.sweep_engine import Job, SweepError, read_sweep_rows, run_jobs
from .tables import write_rows_csv, write_summary_csv
from .config import StudyConfig
from .spec import Study

__all__ = ["Phase", "run_phases", "sweep_jobs", "run_sweep", "summarize", "format_table", "markdown_table",
           "best_row", "write_csv", "write_summary", "read_csv"]

COST_COLUMNS = ("flops", "macs", "params")


def _study(module: str, name: str) -> Study:
    study = importlib.import_module(module).STUDY
    if study.name != name:
        raise ValueError(f"module {module} defines study {study.name!r}, not {name!r}")
    return study


@functools.lru_cache(maxsize=2)
def _data(module: str, name: str, cfg_json: str):
    study = _study(module, name)
    return study.build_data(study.config(**json.loads(cfg_json)))


def _job(arg: tuple) -> dict:
    """One run in a sweep worker: ``(study module, study name, config dict, data seed, width)``."""
    from .train import train_run

    module, name, cfg_dict, data_seed, width = arg
    study = _study(module, name)
    cfg = study.config(**cfg_dict)
    data = _data(module, name, json.dumps({**cfg_dict, "seed": data_seed}, sort_keys=True))
    _, row = train_run(study, cfg, data, width=width, threads=1)
    return {"row_id": row_id(row), **row}


def row_id(row: dict) -> str:
    """The row a run belongs to, the same for every seed (e.g. ``dcl kappa=0.25 alpha=1``, ``fixed width=8``)."""
    if row["method"] == "fixed":
        return f"fixed width={row['width']}"
    ctl = f"budget={row['budget']:g}" if not _nan(row.get("budget")) else f"alpha={row['alpha']:g}"
    return f"dcl kappa={row['kappa_min']:g} {ctl}"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def sweep_jobs(study: Study, cfg: StudyConfig, *, alphas: Sequence[float], kappas: Sequence[float],
               budgets: Sequence[float] = (), fixed_widths: Sequence[int] = (), seeds: Sequence[int] = (0,)) -> list[Job]:
    """The jobs of a sweep of ``study`` around ``cfg`` (every row for every seed)."""
    if not (alphas or budgets) and not fixed_widths:
        raise ValueError("a sweep needs at least one alpha, budget or fixed width")
    if (alphas or budgets) and not kappas:
        raise ValueError("DCL rows need at least one kappa-min")
    runs: list[tuple[str, dict, Optional[int]]] = []
    for k in kappas:
        runs += [(f"dcl-k{k:g}-a{a:g}", {"kappa_min": k, "alpha": a, "budget": None}, None) for a in alphas]
        runs += [(f"dcl-k{k:g}-b{b:g}", {"kappa_min": k, "budget": b}, None) for b in budgets]
    runs += [(f"fixed-w{w}", {"kappa_min": None, "budget": None}, w) for w in fixed_widths]
    jobs = []
    for seed in seeds:
        for key, change, width in runs:
            run_cfg = cfg.replace(**change, seed=seed).validate()
            jobs.append(Job(f"{key}-seed{seed}", _job, (study.module, study.name, run_cfg.as_dict(), cfg.seed, width)))
    return jobs


def run_sweep(study: Study, cfg: StudyConfig, out: Path, *, alphas: Sequence[float], kappas: Sequence[float],
              budgets: Sequence[float] = (), fixed_widths: Sequence[int] = (), seeds: Sequence[int] = (0,),
              workers: int = 1, engine: str = "local", address: Optional[str] = None, resume: bool = False,
              progress: bool = True, extra: Sequence[Phase] = ()) -> list[dict]:
    """Run the sweep and write its files to ``out``; returns one row per run. ``extra``: phases run after the
    grid, each making its jobs from the rows before it (a study's own row kinds; their rows need the
    headline metric, ``method``, ``flops`` and a ``row_id``)."""
    if not study.module:
        raise ValueError(f"study {study.name!r} has no module (sweep workers import it to find the study)")
    jobs = sweep_jobs(study, cfg, alphas=alphas, kappas=kappas, budgets=budgets, fixed_widths=fixed_widths, seeds=seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({
        "study": study.name, "config": cfg.as_dict(), "alphas": list(alphas), "kappas": list(kappas),
        "budgets": list(budgets), "fixed_widths": list(fixed_widths), "seeds": list(seeds)}, indent=2) + "\n")
    head = study.headline
    rows = run_phases([Phase(f"{study.name} sweep", lambda _: jobs), *extra], out / "rows", engine=engine,
                      workers=workers, address=address, resume=resume, progress=progress,
                      note=lambda r: f"{head.name} {r[head.name]:{head.fmt}}")
    write_csv(rows, out / "sweep.csv")
    write_summary(study, rows, out / "sweep_summary.csv")
    plot(study, rows, out / "sweep.png")
    return rows


@dataclass(frozen=True)
class Phase:
    """One phase of a sweep: ``jobs(rows)`` makes its jobs from the rows the phases before it returned (the
    first phase gets ``[]``); ``desc`` names its progress bar; ``after(rows)``, if given, runs once the phase is
    done, with every row so far (e.g. to write the table before a slow second phase starts)."""

    desc: str
    jobs: Callable[[list[dict]], Sequence[Job]]
    after: Optional[Callable[[list[dict]], None]] = None


def run_phases(phases: Sequence[Phase], rows_dir: Optional[str | Path], *, engine: str = "local", workers: int = 1,
               address: Optional[str] = None, resume: bool = False, progress: bool = True,
               is_done: Optional[Callable[[Job, dict], bool]] = None, note: Optional[Callable[[dict], str]] = None,
               failed: Optional[Callable[[dict], Optional[str]]] = None) -> list[dict]:
    """Run ``phases`` in order with :func:`slimtrain.train.sweep_engine.run_jobs` (every job's row saved in
    ``rows_dir`` under its key; ``resume`` skips the saved ones, and a later phase is made again from the
    rows, saved or new) and return the rows of every phase in job order.

    ``failed(row)``: the message of a row that failed (``None`` for a good one); such a row is left out of the
    result with ``slimtrain: warning: MESSAGE`` (a study saves it with a ``status`` other than ``ok``, so
    ``resume`` runs it again). ``is_done`` and ``note``: as in :func:`~slimtrain.train.sweep_engine.run_jobs`.
    Two phases with one job key raise :class:`~slimtrain.train.sweep_engine.SweepError` naming it."""
    rows: list[dict] = []
    keys: dict[str, str] = {}
    for phase in phases:
        jobs = list(phase.jobs(list(rows)))
        for j in jobs:  # (within a phase the engine checks; across phases a shared key would overwrite a row)
            if keys.setdefault(j.key, phase.desc) != phase.desc:
                raise SweepError(f"sweep phase {phase.desc!r} has a job key of phase {keys[j.key]!r}: {j.key!r}")
        if jobs:
            got = run_jobs(jobs, rows_dir, engine=engine, workers=workers, address=address, resume=resume,
                           progress=progress, desc=phase.desc, is_done=is_done, note=note)
            for r in got:
                msg = failed(r) if failed is not None else None
                if msg is None:
                    rows.append(r)
                else:
                    print(f"slimtrain: warning: {msg}")
        if phase.after is not None:
            phase.after(rows)
    return rows


def summarize(study: Study, rows: Sequence[dict]) -> list[dict]:
    """Per row id (first-seen order): ``n``, ``seeds`` and, per metric and cost column, an
    :class:`~slimtrain.train.stats.Interval` over seeds (:func:`slimtrain.train.stats.summarize_rows`)."""
    return summarize_rows(rows, ("row_id",), [m.name for m in study.metrics] + list(COST_COLUMNS))


def write_summary(study: Study, rows: Sequence[dict], path: Path) -> Path:
    """``sweep_summary.csv``: row id, n, seeds and mean/lo/hi of every metric and cost column."""
    lead = {"row_id": lambda e: e["row_id"], "n": lambda e: e["n"], "seeds": lambda e: " ".join(map(str, e["seeds"]))}
    return write_summary_csv(summarize(study, rows), path, lead, [m.name for m in study.metrics] + list(COST_COLUMNS))


def _cell(iv, fmt: str, sep: str = "±") -> str:
    """``mean±half-width`` (the mean alone for one seed)."""
    if iv is None:
        return "-"
    v = f"{iv.mean:{fmt}}"
    return v if iv.n < 2 or math.isnan(iv.lo) else f"{v}{sep}{iv.half_width:{fmt}}"


def best_row(study: Study, rows: Sequence[dict]) -> dict:
    """The row with the best headline metric (in the study's direction)."""
    head = study.headline
    best = rows[0]
    for r in rows[1:]:
        if head.better(float(r[head.name]), float(best[head.name])):
            best = r
    return best


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """``sweep.csv``: one line per run, the columns in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return write_rows_csv(rows, path, cols)


def read_csv(path: Path) -> list[dict]:
    """The runs of a ``sweep.csv`` written by :func:`run_sweep`, typed as when they were run."""
    return read_sweep_rows(path, f"{path} is missing: run 'slimtrain STUDY --sweep --out DIR' and copy DIR/sweep.csv",
                           text=("row_id", "method", "family", "widths", "hostname", "torch_version"),
                           ints=("seed", "width", "params", "params_exported", "threads"))


def markdown_table(study: Study, rows: Sequence[dict]) -> str:
    """The summary as a Markdown table (mean ± 95 % half-width over seeds), best headline metric in bold."""
    summary = summarize(study, rows)
    head = study.headline
    means = [e[head.name].mean for e in summary if e[head.name] is not None]
    best = max(means) if head.higher_is_better else min(means)
    out = ["| row | seeds | " + " | ".join(m.name for m in study.metrics) + " | FLOPs per example | params |",
           "| --- | ---: |" + " ---: |" * len(study.metrics) + " ---: | ---: |"]
    for e in summary:
        cells = []
        for m in study.metrics:
            v = _cell(e[m.name], m.fmt, " ± ")
            cells.append(f"**{v}**" if m is head and e[m.name] is not None and e[m.name].mean == best else v)
        out.append(f"| {e['row_id']} | {e['n']} | " + " | ".join(cells)
                   + f" | {e['flops'].mean:,.0f} | {e['params'].mean:,.0f} |")
    return "\n".join(out)


def format_table(study: Study, rows: Sequence[dict]) -> str:
    """The summary as a text table: row, seeds, each metric's mean (and interval), FLOPs and params."""
    lines = ["row                          seeds  " + "  ".join(f"{m.name:>16s}" for m in study.metrics)
             + "        FLOPs   params"]
    for e in summarize(study, rows):
        cells = "  ".join(f"{_cell(e[m.name], m.fmt):>16s}" for m in study.metrics)
        lines.append(f"{e['row_id']:28s} {e['n']:5d}  {cells} {e['flops'].mean:12.0f} {e['params'].mean:8.0f}")
    return "\n".join(lines)


def plot(study: Study, rows: Sequence[dict], path: Path) -> Path:
    """The headline metric of every run against its FLOPs per example (DCL and fixed width apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = study.headline
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, marker in (("dcl", "o"), ("fixed", "s")):
        sel = [r for r in rows if r["method"] == method]
        if sel:
            ax.scatter([r["flops"] for r in sel], [r[head.name] for r in sel], marker=marker, label=method)
    ax.set_xlabel("FLOPs per example")
    ax.set_ylabel(f"{head.name} ({'higher' if head.higher_is_better else 'lower'} is better)")
    ax.set_title(f"{study.name} sweep")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # the same PNG bytes for the same rows
    plt.close(fig)
    return Path(path)
