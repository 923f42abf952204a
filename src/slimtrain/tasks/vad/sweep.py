"""``slimtrain vad --sweep``: DCL models over kappa_min (and alpha / budget), the baselines on the same
data and metric, and the shipped VADs; writes CSVs (ours and the paper's table shape) and a Pareto PNG.

Rows (``method``):

* ``DCL`` -- dynamic widths trained with the trade-off loss, one run per kappa_min (the paper's
  sweep 0.5, 0.25, 0.125, 0.0625) at ``alpha``, plus any extra ``alphas`` / ``budgets``; the last
  ``settle_epochs`` (default half) train the weights at the fixed hard widths, as pruning fine-tunes
  (budget runs too; ``settle_at_budget`` settles them at the first step whose widths meet the budget);
* ``fixed`` -- the same family trained from scratch with every width (and the mel bands) scaled;
* ``prune`` -- structured magnitude pruning (torch-pruning) of a full model trained for
  ``epochs - prune_finetune_epochs`` epochs, pruned to the MACs of a DCL point and fine-tuned for
  ``prune_finetune_epochs`` (default half), so it gets the same total epochs as a DCL run;
* ``gates`` -- hard-concrete (L0) channel gates with a complexity-budget interval (the paper's SG);
* ``anchor`` -- WebRTC VAD modes 0-3 and Silero VAD (no training; FLOPs not counted).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ...train.stats import format_interval, paired_verdict, summarize_rows
from ..study.tables import fmt_cell, write_rows_csv
from ..study.tables import write_summary_csv as write_summary
from ...train.sweep_engine import Job, read_sweep_rows
from ..study.sweep import Phase, run_phases
from .build import build_vad_data
from .data import VadDataConfig, VadSplit, load_vad_data
from .train import SNR_BANDS, VadRunConfig, default_settle_epochs, evaluate_scores, train_vad

__all__ = ["VadSweepConfig", "run_sweep", "write_sweep_csv", "write_paper_csvs", "plot_pareto", "format_table",
           "pareto_notes", "read_sweep_csv", "summarize", "format_summary_table", "format_detail_table",
           "write_summary_csv", "front_comparison", "format_front_table", "front_sentences", "verdict_cell", "length_tag"]

PAPER_NAMES = {"crnn": ("(a) CRNNVAD", "CRNNVAD", "DCRNNVAD", "SCRNNVAD"),
               "transformer": ("(b) TrVAD", "TrVAD", "DTrVAD", "STrVAD")}


#: epochs of the sweep before it trained 24 (its checkpoints' names carry no length)
UNTAGGED_EPOCHS = 12


def length_tag(epochs: int) -> str:
    """``_e<N>`` in the checkpoint names of N-epoch runs, so that runs of other lengths never overwrite each
    other's files (``--resume`` trusts a row whose checkpoint exists); empty for 12, whose names predate it."""
    return "" if int(epochs) == UNTAGGED_EPOCHS else f"_e{int(epochs)}"


@dataclass
class VadSweepConfig:
    """What ``slimtrain vad --sweep`` runs (``quick()`` is the CI-sized version)."""

    families: tuple[str, ...] = ("crnn", "transformer")
    kappas: tuple[float, ...] = (0.5, 0.25, 0.125, 0.0625)
    alpha: float = 1.0
    alphas: tuple[float, ...] = (0.25, 4.0)  # extra DCL runs at kappa_min = min(kappas)
    budgets: tuple[float, ...] = (1.5e6,)  # extra DCL budget runs (FLOPs per second of audio)
    fixed_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    prune_kappas: tuple[float, ...] = (0.5, 0.125)  # prune to the MACs of these DCL points
    #: fine-tuning epochs of the pruned models (default ``epochs // 2``); the full model they start from is
    #: trained for the rest, so a pruning row has the same total epochs as a DCL row
    prune_finetune_epochs: Optional[int] = None
    gate_intervals: tuple[tuple[float, float], ...] = ((0.5, 1.0), (0.25, 0.5), (0.125, 0.25), (0.0625, 0.125))
    #: epochs of every run (DCL, fixed widths, pruning and gates alike). 24: at 12 both families were still
    #: learning (5 seeds, AUC after 12 and 24 epochs: full CRNN 0.960 and 0.967, full Transformer 0.957 and
    #: 0.963), and a DCL run, which spends its first half finding its widths, was then judged on how fast its
    #: search trains rather than on the architecture it finds (docs/vad.md, "Epochs")
    epochs: int = 24
    #: the last epochs of each DCL run train at fixed hard widths (:func:`slimtrain.settle_widths`); default
    #: half of ``epochs`` (:func:`default_settle_epochs`), the fine-tuning share of a pruning row (0: widths
    #: learn to the end)
    settle_epochs: Optional[int] = None
    #: budget rows: also settle at the first step whose widths meet the budget (before the last ``settle_epochs``).
    #: Off: at 24 epochs that froze the Transformer's widths early, at per-head widths of 1.22 that export as 2,
    #: 26 % over the budget and below the fixed-width front; settled at the half like every DCL row, both
    #: families end near the budget and on or above the front (docs/vad.md, "Epochs")
    settle_at_budget: bool = False
    #: what the Transformer's DCL rows learn of the attention: "width" (dimensions per head, default: with the
    #: head count, every run ended at one 8-wide head per block, dearer than the fixed x0.25 model) or "count"
    heads: str = "width"
    #: the mel bands' order in the DCL rows: "spread" (default: a cut keeps bands across the whole range and
    #: lowers the resolution) or "low" (as in the paper: a cut keeps the lowest bands and lowers the bandwidth)
    band_order: str = "spread"
    seed: int = 0
    seeds: Optional[tuple[int, ...]] = None  # every row for each of these seeds (default: (seed,))
    workers: int = 1
    engine: str = "local"  # or "ray" (see slimtrain.sweep_engine)
    address: Optional[str] = None  # Ray cluster address for engine="ray"
    anchors: bool = True
    webrtc_modes: tuple[int, ...] = (0, 1, 2, 3)
    data: VadDataConfig = field(default_factory=VadDataConfig)
    #: the user's corpus (a :class:`~slimtrain.tasks.vad.corpus.CorpusDataConfig` as a dict) instead of ``data``:
    #: then only the DCL and fixed-width rows run (pruning, gates and the WebRTC/Silero anchors need the
    #: built-in in-memory splits), each streaming its crops from disk
    corpus: Optional[dict] = None
    #: crops per batch of the ``corpus`` rows
    batch_size: int = 16

    @property
    def prune_split(self) -> tuple[int, int]:
        """(full-model epochs, fine-tuning epochs) of a pruning row; they add up to ``epochs``."""
        ft = self.epochs // 2 if self.prune_finetune_epochs is None else self.prune_finetune_epochs
        if not 1 <= ft < self.epochs:
            raise ValueError(f"prune_finetune_epochs must be in [1, epochs={self.epochs}), got {ft}")
        return self.epochs - ft, ft

    @property
    def dcl_settle_epochs(self) -> int:
        """Settled epochs of a DCL row (``settle_epochs``; default :func:`default_settle_epochs`: half)."""
        return default_settle_epochs(self.epochs) if self.settle_epochs is None else int(self.settle_epochs)

    @property
    def seed_list(self) -> list[int]:
        """The seeds every row is run for."""
        return list(self.seeds) if self.seeds else [self.seed]

    @classmethod
    def quick(cls, **overrides) -> "VadSweepConfig":
        base = dict(kappas=(0.25,), fixed_scales=(1.0, 0.25), prune_kappas=(), gate_intervals=((0.25, 0.5),),
                    epochs=3, webrtc_modes=(2,), alphas=(), budgets=(), data=VadDataConfig.quick())
        base.update(overrides)
        return cls(**base)


# -- jobs ---------------------------------------------------------------------------------------
_DATA: dict = {}


def _load(cache: str) -> dict[str, VadSplit]:
    if cache not in _DATA:
        _DATA[cache] = load_vad_data(cache)[0]
    return _DATA[cache]


def _job(job: dict) -> dict:
    """Run one sweep job in this process (one thread). Errors become a row with ``status``."""
    import torch

    warnings.filterwarnings("ignore", message="TF32 acceleration")
    torch.set_num_threads(1)
    kind = job["kind"]
    t0 = time.time()
    data = _load(job["cache"]) if job.get("corpus") is None else None  # (a corpus loads inside: its errors are rows)
    try:
        if data is None:
            row = _corpus_row(job)
        elif kind in ("DCL", "fixed"):
            _, row = train_vad(VadRunConfig(**job["run"]), data, checkpoint=job.get("checkpoint"),
                               device=job.get("device", "cpu"))
        elif kind == "prune":
            row = _prune_row(job, data)
        elif kind == "gates":
            row = _gate_row(job, data)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
        if job.get("checkpoint"):
            row["checkpoint"] = job["checkpoint"]
        row.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001 - one failed run or baseline must not lose the sweep
        row = {"family": job["run"]["family"], "method": kind, "status": f"failed: {type(e).__name__}: {e}"}
    row["label"] = job["label"]
    row["seed"] = job["run"]["seed"]
    row["data_fingerprint"] = job.get("data_fingerprint")
    row["wall_seconds"] = round(time.time() - t0, 1)
    return row


def _corpus_row(job: dict) -> dict:
    """A DCL or fixed-width row on the user's corpus (:mod:`slimtrain.tasks.vad.corpus`)."""
    from .corpus import CorpusDataConfig, load_corpus_data, train_vad_on_corpus

    key = json.dumps(job["corpus"], sort_keys=True) + f"|{job['run']['seed']}"
    if key not in _DATA:
        c = dict(job["corpus"])
        c["noise_snr_db"] = tuple(c["noise_snr_db"])
        _DATA[key] = load_corpus_data(CorpusDataConfig(**c), seed=job["run"]["seed"])
    _, row = train_vad_on_corpus(VadRunConfig(**job["run"]), _DATA[key], checkpoint=job.get("checkpoint"),
                                 device=job.get("device", "cpu"))
    return row


def _prune_row(job: dict, data: dict[str, VadSplit]) -> dict:
    """Structured magnitude pruning of a trained full model to ``target_mflops``, fine-tuned."""
    from .baselines_glue import prune_baseline

    return prune_baseline(job, data)


def _gate_row(job: dict, data: dict[str, VadSplit]) -> dict:
    """Hard-concrete channel gates with a budget interval (relative FLOPs)."""
    from .baselines_glue import gate_baseline

    return gate_baseline(job, data)


def _label(family: str, method: str, **kw) -> str:
    _, base, dyn, gate = PAPER_NAMES[family]
    if method == "DCL":
        extra = f" a={kw['alpha']}" if kw.get("alpha") is not None and kw.get("extra") == "alpha" else ""
        extra += f" B={kw['budget'] / 1e6:g}M" if kw.get("budget") is not None else ""
        return f"{dyn} {kw['kappa_min']:g}{extra}"
    if method == "fixed":
        return f"{base} x{kw['scale']:g}" if kw["scale"] != 1 else f"{base} (baseline)"
    if method == "prune":
        return f"P{base} @{dyn} {kw['kappa']:g}"
    if method == "gates":
        lo, hi = kw["interval"]
        return f"{gate} [{lo:g}, {hi:g})"
    raise ValueError(method)


def _job_key(job: dict) -> str:
    """Stable, readable key of a job: kind, label, seed and a hash of every setting."""
    digest = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", job["label"]).strip("_")
    return f"{job['kind']}-{job['run']['family']}-{slug}-seed{job['run']['seed']}-{digest}"


def _checkpoint_done(job: Job, row: dict) -> bool:
    ckpt = job.arg.get("checkpoint")
    return not ckpt or Path(ckpt).is_file()


def _run_phases(phases: Sequence[Phase], cfg: VadSweepConfig, progress: bool, out: Path,
                resume: bool = False) -> list[dict]:
    """Run ``phases`` on the skeleton's sweep (:func:`slimtrain.tasks.study.sweep.run_phases`); each finished
    row is saved in ``out/rows`` under :func:`_job_key`. With ``resume`` a job whose saved row (same settings,
    status ok, and its checkpoint present) exists is not run again. A failed row stays in the table (its
    ``status`` says why)."""
    return run_phases(phases, out / "rows", engine=cfg.engine, workers=cfg.workers, address=cfg.address,
                      resume=resume, progress=progress, is_done=_checkpoint_done,
                      note=lambda r: f"{r.get('label')} seed={r.get('seed')}")


def _jobs(jobs: Sequence[dict]) -> list[Job]:
    return [Job(_job_key(j), _job, j) for j in jobs]


def _anchor_rows(cfg: VadSweepConfig, data: dict[str, VadSplit]) -> list[dict]:
    from .anchors import AnchorError, silero_params, silero_scores, webrtc_scores

    rows = []
    val, test = data["val"], data["test"]
    for mode in cfg.webrtc_modes:
        t0 = time.time()
        try:
            m = evaluate_scores((val.labels, webrtc_scores(val.audio, mode)), (test.labels, webrtc_scores(test.audio, mode)),
                                test.snr_db)
            rows.append({"family": "anchor", "method": "anchor", "label": f"WebRTC VAD mode {mode}", "status": "ok",
                         "mflops_per_s": math.nan, "params": math.nan, "mel_bands": None, **m,
                         "wall_seconds": round(time.time() - t0, 1)})
        except AnchorError as e:
            rows.append({"family": "anchor", "method": "anchor", "label": f"WebRTC VAD mode {mode}", "status": f"failed: {e}"})
    t0 = time.time()
    try:
        m = evaluate_scores((val.labels, silero_scores(val.audio)), (test.labels, silero_scores(test.audio)), test.snr_db)
        rows.append({"family": "anchor", "method": "anchor", "label": "Silero VAD (8 kHz)", "status": "ok",
                     "mflops_per_s": math.nan, "params": silero_params(), "mel_bands": None, **m,
                     "wall_seconds": round(time.time() - t0, 1)})
    except AnchorError as e:
        rows.append({"family": "anchor", "method": "anchor", "label": "Silero VAD (8 kHz)", "status": f"failed: {e}"})
    return rows


def _seed_jobs(cfg: VadSweepConfig, out: Path, seed: int, multi: bool) -> list[dict]:
    """The training jobs of one seed (checkpoint names carry the seed when the sweep has several)."""
    common = {"epochs": cfg.epochs, "seed": seed}
    settle = cfg.dcl_settle_epochs
    dyn = {**common, "settle_epochs": settle} if settle else common
    if cfg.band_order != "low":  # (a fixed-width model has all its bands: their order does not matter)
        dyn = {**dyn, "band_order": cfg.band_order}
    tag = f"_seed{seed}" if multi else ""
    etag = length_tag(cfg.epochs)
    at_budget = bool(settle and cfg.settle_at_budget)
    jobs: list[dict] = []
    for fam in cfg.families:
        # per-head widths: a setting of the run (and its own checkpoint names); head count is the default
        # the DCL checkpoints' names carry the settings that differ from the paper's (their own recipes)
        dyn_fam, suffix = (dict(dyn, heads="width"), "_hw") if fam == "transformer" and cfg.heads == "width" \
            else (dyn, "")
        if cfg.band_order != "low":
            suffix += f"_{cfg.band_order}"
        suffix += etag
        for k in cfg.kappas:
            jobs.append({"kind": "DCL", "label": _label(fam, "DCL", kappa_min=k),
                         "run": {"family": fam, "kappa_min": k, "alpha": cfg.alpha, **dyn_fam},
                         "checkpoint": str(out / "checkpoints" / f"{fam}_dcl_k{k:g}{suffix}{tag}.pt")})
        k_low = min(cfg.kappas) if cfg.kappas else 0.125
        for a in cfg.alphas:
            jobs.append({"kind": "DCL", "label": _label(fam, "DCL", kappa_min=k_low, alpha=a, extra="alpha"),
                         "run": {"family": fam, "kappa_min": k_low, "alpha": a, **dyn_fam},
                         "checkpoint": str(out / "checkpoints" / f"{fam}_dcl_k{k_low:g}_a{a:g}{suffix}{tag}.pt")})
        for b in cfg.budgets:
            jobs.append({"kind": "DCL", "label": _label(fam, "DCL", kappa_min=k_low, budget=b),
                         "run": {"family": fam, "kappa_min": k_low, "alpha": 0.0, "budget": b, **dyn_fam,
                                 **({"settle_at_budget": True} if at_budget else {})},
                         "checkpoint": str(out / "checkpoints" / f"{fam}_dcl_k{k_low:g}_b{b:g}{suffix}"
                                                                  f"{'_atb' if at_budget else ''}{tag}.pt")})
        for s in cfg.fixed_scales:
            from ...apps.vad.models import scaled_widths

            jobs.append({"kind": "fixed", "label": _label(fam, "fixed", scale=s),
                         "run": {"family": fam, "kappa_min": None, "n_mels": max(1, int(round(80 * s))),
                                 "widths": scaled_widths(fam, s), **common},
                         "checkpoint": str(out / "checkpoints" / f"{fam}_fixed_x{s:g}{etag}{tag}.pt")})
        for interval in cfg.gate_intervals:
            jobs.append({"kind": "gates", "label": _label(fam, "gates", interval=interval), "interval": list(interval),
                         "run": {"family": fam, **common}})
    return jobs


def run_sweep(cfg: VadSweepConfig, out: str | Path, *, cache: Optional[str | Path] = None, progress: bool = True,
              resume: bool = False, device: str = "cpu") -> list[dict]:
    """Build/reuse the data, run every job, write ``sweep.csv``, ``vad_pooled.csv``, ``vad_by_snr.csv``
    and ``pareto.png`` into ``out``; returns the rows. ``resume`` reuses finished runs saved in
    ``out/rows`` (same settings and data). ``device`` is passed to the DCL and fixed-width runs
    (the pruning and gate baselines train on the CPU)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = str(cache if cache is not None else out / "data")
    if cfg.corpus is None:
        build_vad_data(cfg.data, cache, progress=progress)
    jobs: list[dict] = []
    multi = len(cfg.seed_list) > 1
    for seed in cfg.seed_list:
        jobs += _seed_jobs(cfg, out, seed, multi)
    if cfg.corpus is not None:
        return _corpus_sweep(cfg, jobs, out, progress, resume, device)
    for j in jobs:
        j["cache"] = cache
        if j["kind"] in ("DCL", "fixed") and device != "cpu":
            j["device"] = device  # only off the CPU, so --resume still matches rows saved before
    fingerprint = json.loads((Path(cache) / "manifest.json").read_text())["fingerprint"]
    for j in jobs:
        j["data_fingerprint"] = fingerprint

    def prune_jobs(rows: list[dict]) -> list[Job]:
        """Second phase: pruning to the MACs the same seed's DCL runs reached."""
        pj = []
        for seed in cfg.seed_list:
            for fam in cfg.families:
                for k in cfg.prune_kappas:
                    match = [r for r in rows if r.get("family") == fam and r.get("method") == "DCL"
                             and r.get("status") == "ok" and r.get("seed") == seed and r.get("kappa_min") == k
                             and r.get("budget") is None and r.get("alpha") == cfg.alpha]
                    if not match:
                        continue
                    pre, ft = cfg.prune_split
                    pj.append({"kind": "prune", "label": _label(fam, "prune", kappa=k), "cache": cache,
                               "target_mflops": match[0]["mflops_per_s"], "mel_bands": match[0]["mel_bands"],
                               "run": {"family": fam, "epochs": ft, "pretrain_epochs": pre, "seed": seed},
                               "data_fingerprint": fingerprint})
        return _jobs(pj)

    rows = _run_phases([Phase("vad sweep", lambda _: _jobs(jobs)), Phase("vad pruning", prune_jobs)], cfg, progress,
                       out, resume)
    if cfg.anchors:
        rows += _anchor_rows(cfg, _load(cache))
    return _write_outputs(rows, out)


def _corpus_sweep(cfg: VadSweepConfig, jobs: list[dict], out: Path, progress: bool, resume: bool,
                  device: str) -> list[dict]:
    """The DCL and fixed-width rows of ``jobs`` on ``cfg.corpus``; writes the same files as the sweep."""
    left = sorted({j["kind"] for j in jobs if j["kind"] not in ("DCL", "fixed")}) + (["anchors"] if cfg.anchors else [])
    if left:
        print(f"vad sweep on your data: DCL and fixed-width rows only (left out: {', '.join(left)}; they need the "
              "built-in corpus)")
    fingerprint = hashlib.sha256(json.dumps(cfg.corpus, sort_keys=True).encode()).hexdigest()[:16]
    jobs = [j for j in jobs if j["kind"] in ("DCL", "fixed")]
    for j in jobs:
        j["corpus"] = cfg.corpus
        j["run"] = dict(j["run"], batch_size=cfg.batch_size)
        j["data_fingerprint"] = fingerprint
        if device != "cpu":
            j["device"] = device
    rows = _run_phases([Phase("vad sweep", lambda _: _jobs(jobs))], cfg, progress, out, resume)
    return _write_outputs(rows, out)


def _write_outputs(rows: list[dict], out: Path) -> list[dict]:
    """The sweep's files from its rows: sweep.csv, sweep_summary.csv, the paper-shaped CSVs, pareto.png."""
    pareto_notes(rows)
    write_sweep_csv(rows, out / "sweep.csv")
    write_summary_csv(rows, out / "sweep_summary.csv")
    write_paper_csvs(rows, out)
    try:
        plot_pareto(rows, out / "pareto.png")
    except Exception as e:  # noqa: BLE001 - a plotting problem must not lose the numbers
        warnings.warn(f"could not draw {out / 'pareto.png'}: {e}")
    return rows


# -- outputs ------------------------------------------------------------------------------------
COLUMNS = ["family", "method", "label", "status", "kappa_min", "alpha", "budget", "heads", "band_order", "mel_bands", "mflops_per_s", "params",
           "auc", "f1", "eer", *[f"eer {b}" for b, _, _ in SNR_BANDS], "threshold", "widths", "on_front",
           "dominated_by", "epochs", "train_seconds", "wall_seconds", "checkpoint",
           "seed", "data_fingerprint", "torch_version", "threads", "hostname"]


_fmt = fmt_cell


def write_sweep_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """All rows, one per model, every metric (EER as a fraction)."""
    return write_rows_csv(rows, path, COLUMNS)


def write_paper_csvs(rows: Sequence[dict], out: str | Path) -> tuple[Path, Path]:
    """``vad_pooled.csv`` / ``vad_by_snr.csv`` with the columns of the paper's tables
    (/work/shared/paper-figures): EER in percent, MFLOP/s; one line per model, the mean over its seeds
    (the paper's tables have no seed column; ``sweep_summary.csv`` has the intervals)."""
    out = Path(out)
    pooled, by_snr = out / "vad_pooled.csv", out / "vad_by_snr.csv"
    summary = summarize(rows)
    kappa = {r["label"]: r.get("kappa_min") for r in rows if r.get("status") == "ok"}

    def mean(e: dict, key: str):
        return None if e[key] is None else e[key].mean

    with pooled.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subplot", "model", "min_kappa", "mel_bands", "params", "mflops", "eer_percent"])
        for e in summary:
            sub = PAPER_NAMES[e["family"]][0] if e["family"] in PAPER_NAMES else "anchors"
            bands = mean(e, "mel_bands")
            w.writerow([sub, e["label"], _fmt(kappa.get(e["label"])) or "-",
                        "-" if bands is None else f"{bands:.6g}", _fmt(mean(e, "params")),
                        _fmt(mean(e, "mflops_per_s")), f"{100 * e['eer'].mean:.2f}"])
    with by_snr.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "snr_range", "eer_percent"])
        for e in summary:
            for b, _, _ in SNR_BANDS:
                v = mean(e, f"eer {b}")
                w.writerow([e["label"], b, "" if v is None else f"{100 * v:.2f}"])
    return pooled, by_snr


def pareto_notes(rows: list[dict], metric: str = "auc") -> None:
    """Mark each trained row ``on_front`` (no other trained model of its family and seed has <= FLOPs
    and a higher ``metric``) and name, for DCL rows, the baselines that dominate them."""
    trained = [r for r in rows if r.get("status") == "ok" and r.get("method") in ("DCL", "fixed", "prune", "gates")]
    for r in trained:
        same = [o for o in trained if o is not r and o["family"] == r["family"] and o.get("seed") == r.get("seed")]
        better = [o for o in same if o["mflops_per_s"] <= r["mflops_per_s"] * 1.0001 and o[metric] > r[metric]]
        r["on_front"] = not better
        r["dominated_by"] = "; ".join(o["label"] for o in better if o["method"] != r["method"]) or None


def format_table(rows: Sequence[dict]) -> str:
    """The closing-note Pareto table (Markdown): method, MFLOP/s, params, AUC, F1, EER, on the front."""
    lines = ["| model | method | mel bands | MFLOP/s | params | AUC | F1 | EER % | on AUC front |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r.get('label')} | {r.get('method')} | | | | | | | {r.get('status')} |")
            continue
        mf = r.get("mflops_per_s")
        front = {True: "yes", False: "no", None: "-"}[r.get("on_front")]
        if r.get("dominated_by"):
            front += f" (below {r['dominated_by']})"
        params = r.get("params")
        lines.append(
            f"| {r['label']} | {r['method']} | {_fmt(r.get('mel_bands')) or '-'} | "
            f"{'-' if mf is None or (isinstance(mf, float) and math.isnan(mf)) else f'{mf:.2f}'} | "
            f"{'-' if params is None or (isinstance(params, float) and math.isnan(params)) else int(params)} | "
            f"{r['auc']:.4f} | {r['f1']:.4f} | {100 * r['eer']:.2f} | {front} |")
    return "\n".join(lines)


#: the metrics summarised over seeds (mean and 95 % Student-t interval)
SUMMARY_METRICS = ("mel_bands", "mflops_per_s", "params", "auc", "f1", "eer",
                   *[f"eer {b}" for b, _, _ in SNR_BANDS])


def summarize(rows: Sequence[dict]) -> list[dict]:
    """One entry per model (family, method, label) with ``n``, ``seeds`` and an interval per
    :data:`SUMMARY_METRICS` metric over its seeds (see :func:`slimtrain.train.stats.summarize_rows`)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    return summarize_rows(ok, ("family", "method", "label"), SUMMARY_METRICS)


def _baseline(summary: list[dict], family: str) -> Optional[dict]:
    return next((e for e in summary if e["family"] == family and e["method"] == "fixed"
                 and e["label"].endswith("(baseline)")), None)


def format_summary_table(rows: Sequence[dict], families: Optional[Sequence[str]] = None) -> str:
    """Markdown table over seeds: mean ± 95 % half-width (the value alone for n = 1) of mel bands,
    MFLOP/s, AUC and EER, the number of seeds, and the paired AUC comparison with the family's
    full-width fixed model (``better``/``worse`` only when the same-seed difference's interval
    excludes 0; ``n=1`` for single-seed results)."""
    summary = summarize(rows)
    lines = ["| model | method | n | mel bands | MFLOP/s | AUC | EER % | EER < 5 dB % | AUC vs full width (paired) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in summary:
        if families is not None and e["family"] not in families:
            continue
        base = _baseline(summary, e["family"])
        if e["method"] == "anchor":
            vs = "-"
        elif base is e:
            vs = "ref."
        elif base is None:
            vs = ""
        else:
            vs = paired_verdict(e["auc_by_seed"], base["auc_by_seed"], higher_is_better=True)
        lines.append(f"| {e['label']} | {e['method']} | {e['n']} | {format_interval(e['mel_bands'], '.0f')} | "
                     f"{format_interval(e['mflops_per_s'], '.2f')} | {format_interval(e['auc'], '.3f')} | "
                     f"{format_interval(e['eer'], '.2f', 100)} | {format_interval(e['eer < 5 dB'], '.1f', 100)} | "
                     f"{vs} |")
    return "\n".join(lines)


def format_detail_table(rows: Sequence[dict], family: str) -> str:
    """The full table of one family (``docs/vad.md``): every model with mel bands, MFLOP/s, params,
    AUC, F1, EER and EER per SNR band (mean ± 95 % half-width over seeds, the value alone for n = 1)
    and, for single-seed results, whether it is on the AUC front; ``family="anchor"``: the shipped VADs."""
    summary = [e for e in summarize(rows) if e["family"] == family]
    by_label = {r.get("label"): r for r in rows if r.get("status") == "ok" and r.get("family") == family}
    bands = [f"eer {b}" for b, _, _ in SNR_BANDS]
    band_head = " | ".join(f"EER {b[4:]}" for b in bands)
    fi = format_interval
    if family == "anchor":
        lines = [f"| model | params | AUC | F1 | EER % | {band_head} |",
                 "| --- | " + " | ".join(["---:"] * (4 + len(bands))) + " |"]
        for e in summary:
            params = "-" if e["params"] is None else fi(e["params"], ".0f")
            lines.append(f"| {e['label']} | {params} | {fi(e['auc'], '.4f')} | {fi(e['f1'], '.4f')} | "
                         f"{fi(e['eer'], '.2f', 100)} | " + " | ".join(fi(e[b], ".1f", 100) for b in bands) + " |")
        return "\n".join(lines)
    lines = [f"| model | method | mel bands | MFLOP/s | params | AUC | F1 | EER % | {band_head} | on AUC front |",
             "| --- | --- | " + " | ".join(["---:"] * (6 + len(bands))) + " | --- |"]
    for e in summary:
        if e["n"] == 1:
            r = by_label[e["label"]]
            front = {True: "yes", False: "no", None: "-"}[r.get("on_front")]
            if r.get("dominated_by"):
                front += f" (below {r['dominated_by']})"
        else:
            front = f"n={e['n']}"
        lines.append(f"| {e['label']} | {e['method']} | {fi(e['mel_bands'], '.0f')} | {fi(e['mflops_per_s'], '.2f')} | "
                     f"{fi(e['params'], '.0f')} | {fi(e['auc'], '.4f')} | {fi(e['f1'], '.4f')} | "
                     f"{fi(e['eer'], '.2f', 100)} | " + " | ".join(fi(e[b], ".1f", 100) for b in bands)
                     + f" | {front} |")
    return "\n".join(lines)


def write_summary_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """``sweep_summary.csv``: per model, ``n`` and mean/lo/hi of every summary metric (lo/hi empty for n = 1)."""
    lead = {k: (lambda e, k=k: e[k]) for k in ("family", "method", "label", "n")}
    return write_summary(summarize(rows), path, lead, SUMMARY_METRICS)


# -- DCL against the other fronts, paired over seeds ----------------------------------------------------
#: the competitors a DCL model is compared with: fixed widths and gates as fronts (interpolated at the
#: DCL model's FLOPs), pruning directly (its rows are pruned to a DCL run's MACs, same seed)
FRONT_METHODS = ("fixed", "prune", "gates")


def _front_value(points: Sequence[tuple[float, float]], x: float, higher_is_better: bool) -> Optional[float]:
    """The Pareto front of ``points`` (FLOPs, metric) at ``x``: only points no cheaper point beats are kept,
    joined linearly in log FLOPs; beyond the dearest front point its value holds (a dearer budget can use
    it); below the cheapest point there is no front (``None``, never an extrapolation)."""
    sign = 1.0 if higher_is_better else -1.0
    front: list[tuple[float, float]] = []
    for fx, fy in sorted(points, key=lambda p: (p[0], -sign * p[1])):  # at equal FLOPs the best first
        if not front or sign * fy > sign * front[-1][1]:
            front.append((fx, fy))
    if not front or x < front[0][0] * (1 - 1e-4):
        return None
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 0.0
            return y0 + t * (y1 - y0)
    return front[-1][1] if x >= front[-1][0] else front[0][1]


def front_comparison(rows: Sequence[dict], family: str, metric: str = "auc") -> list[dict]:
    """For every DCL model of ``family`` (one entry per label): its seeds' mean FLOPs and ``metric`` and, per
    competitor in :data:`FRONT_METHODS`, the paired comparison (:func:`slimtrain.train.stats.compare`, A = DCL) of
    the same-seed differences DCL - competitor; ``None`` where no seed has a competitor value (no pruning
    row at that DCL point, or the DCL model is cheaper than every competitor model)."""
    from ...train.stats import compare, mean_interval

    hib = metric != "eer" and not metric.startswith("eer ")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("family") == family
          and r.get("mflops_per_s") is not None and not math.isnan(r["mflops_per_s"])]
    out = []
    for label in dict.fromkeys(r["label"] for r in ok if r["method"] == "DCL"):
        dcl = {r.get("seed") or 0: r for r in ok if r["method"] == "DCL" and r["label"] == label}
        kappa = next(iter(dcl.values())).get("kappa_min")
        entry: dict = {"label": label, "n": len(dcl), "metric": metric,
                       "mflops_per_s": mean_interval([r["mflops_per_s"] for r in dcl.values()]),
                       metric: mean_interval([r[metric] for r in dcl.values()])}
        for method in FRONT_METHODS:
            a, b = {}, {}
            for seed, r in dcl.items():
                same = [o for o in ok if o["method"] == method and (o.get("seed") or 0) == seed]
                if method == "prune":
                    hit = [o for o in same if o["label"] == _label(family, "prune", kappa=kappa)
                           and _label(family, "DCL", kappa_min=kappa) == label] if kappa is not None else []
                    v = hit[0][metric] if hit else None
                else:
                    v = _front_value([(o["mflops_per_s"], o[metric]) for o in same], r["mflops_per_s"], hib)
                if v is not None:
                    a[seed], b[seed] = r[metric], v
            entry[method] = compare(a, b, higher_is_better=hib) if a else None
            entry[f"{method}_n"] = len(a)
        out.append(entry)
    return out


def verdict_cell(c, n: int, scale: float, fmt: str) -> str:
    """``above``/``below``/``n.s.`` with the mean difference and its interval (``n=1`` with the value alone)
    of a :func:`slimtrain.train.stats.compare` result over ``n`` seeds, values times ``scale``."""
    if c is None:
        return "-"
    d = c.difference
    if n < 2:
        return f"n=1 ({format(d.mean * scale, fmt)})"
    tag = {"A better than B": "above", "B better than A": "below"}.get(c.verdict, "n.s.")
    return f"{tag} ({format(d.mean * scale, fmt)} [{format(d.lo * scale, fmt)}, {format(d.hi * scale, fmt)}])"


def format_front_table(rows: Sequence[dict], family: str) -> str:
    """Markdown: each DCL model of ``family`` against the fixed-width front, pruning to its MACs and the
    gates front -- paired same-seed AUC and EER differences (DCL - competitor), mean [95 % interval];
    ``above``/``below`` only where the interval excludes 0."""
    from ...train.stats import format_interval

    auc = front_comparison(rows, family, "auc")
    eer = {e["label"]: e for e in front_comparison(rows, family, "eer")}
    lines = ["| DCL model | n | MFLOP/s | AUC | AUC - fixed-width front | AUC - pruning (same MACs) | "
             "AUC - gates front | EER pts - fixed-width front | EER pts - pruning |",
             "| --- | ---: | ---: | ---: | --- | --- | --- | --- | --- |"]
    for e in auc:
        f = eer[e["label"]]
        # for EER (lower is better) "above the front" means a lower EER: compare() already says A better
        lines.append(f"| {e['label']} | {e['n']} | {format_interval(e['mflops_per_s'], '.2f')} | "
                     f"{format_interval(e['auc'], '.3f')} | "
                     + " | ".join(verdict_cell(e[m], e[f"{m}_n"], 1.0, "+.3f") for m in FRONT_METHODS) + " | "
                     + " | ".join(verdict_cell(f[m], f[f"{m}_n"], 100.0, "+.2f") for m in ("fixed", "prune")) + " |")
    return "\n".join(lines)


def front_sentences(rows: Sequence[dict], family: str) -> str:
    """Generated summary of :func:`front_comparison` (AUC and EER) for ``family``: how many DCL models are
    significantly above, on (n.s.) or below each competitor."""
    names = {"fixed": "the fixed-width front (interpolated at the DCL model's FLOPs)",
             "prune": "torch-pruning to the same MACs", "gates": "the gates (SG) front"}
    out = []
    for metric, mname in (("auc", "AUC"), ("eer", "EER")):
        comps = front_comparison(rows, family, metric)
        for m in FRONT_METHODS:
            got = [(e["label"], e[m]) for e in comps if e[m] is not None and e[f"{m}_n"] >= 2]
            if not got:
                continue
            above = [lab for lab, c in got if c.verdict == "A better than B"]
            below = [lab for lab, c in got if c.verdict == "B better than A"]
            same = len(got) - len(above) - len(below)

            def names_of(labels: list[str]) -> str:
                return f" ({', '.join(labels)})" if labels else ""

            out.append(f"* {mname} against {names[m]}: of {len(got)} DCL models, {len(above)} significantly better"
                       f"{names_of(above)}, {same} not significantly different, {len(below)} significantly worse"
                       f"{names_of(below)}.")
    return "\n".join(out)


def read_sweep_csv(path: str | Path) -> list[dict]:
    """The rows of a VAD ``sweep.csv`` back as numbers (a table without a ``seed`` column -- written
    before seeds were recorded -- reads with ``seed = None``: one run per model, ``n = 1``)."""
    rows = read_sweep_rows(path, f"no VAD sweep table at {Path(path)}; run 'slimtrain vad --sweep' first",
                           text=("family", "method", "label", "status", "heads", "band_order", "widths", "dominated_by",
                                 "checkpoint", "data_fingerprint", "torch_version", "hostname"),
                           ints=("seed", "threads"),
                           none_if_empty=("mel_bands", "budget", "kappa_min", "alpha", "epochs"),
                           bools=("on_front",), empty_text=None)
    for r in rows:
        r.setdefault("seed", None)
    return rows


def plot_pareto(rows: Sequence[dict], path: str | Path) -> Path:
    """AUC and F1 vs MFLOP/s (log x), one colour per family, one marker per method; anchors as lines.
    Points are means over seeds with 95 % Student-t error bars on the metric and the range of the seeds'
    FLOPs as horizontal bars (the learned models' cost varies with the seed); no bars for a single seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"crnn": "tab:blue", "transformer": "tab:orange", "marblenet": "tab:purple"}
    markers = {"DCL": ("o", "-"), "fixed": ("s", "--"), "prune": ("^", ":"), "gates": ("D", "-.")}
    anchor_styles = ["tab:gray", "tab:brown", "tab:pink", "tab:olive", "tab:green"]

    def half(iv) -> float:
        return 0.0 if iv is None or math.isnan(iv.lo) else iv.half_width

    def xrange(e: dict) -> tuple[float, float]:
        # the seeds' FLOPs are positive and skewed: their range, not a t-interval that can cross 0 on a log axis
        vals = list(e["mflops_per_s_by_seed"].values()) or [e["mflops_per_s"].mean]
        return min(vals), max(vals)

    for ax, metric in zip(axes, ("auc", "f1")):
        for fam, color in colors.items():
            for method, (mk, ls) in markers.items():
                pts = sorted((e["mflops_per_s"].mean, e[metric].mean, half(e[metric]), xrange(e))
                             for e in summary
                             if e["family"] == fam and e["method"] == method and e[metric] is not None)
                if pts:
                    xs, ys, err, xr = zip(*pts)
                    # clamped at 0: the mean of equal FLOPs can round one ulp outside their range
                    xerr = [[max(0.0, x - lo) for x, (lo, _) in zip(xs, xr)],
                            [max(0.0, hi - x) for x, (_, hi) in zip(xs, xr)]]
                    ax.errorbar(xs, ys, yerr=err, xerr=xerr, marker=mk, linestyle=ls, color=color, capsize=3,
                                label=f"{fam} {method}")
        for i, e in enumerate(e for e in summary if e["method"] == "anchor" and e[metric] is not None):
            ax.axhline(e[metric].mean, color=anchor_styles[i % len(anchor_styles)], linewidth=0.9,
                       linestyle=(0, (4, 2)), label=f"{e['label']} (FLOPs not counted)")
        ax.set_xscale("log")
        ax.set_xlabel("MFLOP per second of audio (exported model, log scale)")
        ax.set_ylabel(f"frame {metric.upper()} on the held-out speaker (Italian)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("VAD: frame ROC-AUC vs complexity")
    axes[1].set_title("VAD: frame F1 (validation threshold) vs complexity")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return Path(path)
