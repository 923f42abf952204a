"""Synthetic case study: a regression problem whose needed width is known.

The paper's first example. A fixed random *teacher* network

    x (in_dim=16) -> Linear -> tanh (h_true=8 units) -> Linear -> y (out_dim=4)

generates the targets ``y = teacher(x) + noise`` for ``x ~ N(0, I)``. A
*student* MLP of the same shape but a deliberately oversized hidden width
(64) is made dynamic with :func:`slimtrain.make_dynamic` (one DCL on the hidden
layer) and trained with the weighted trade-off loss
``MSE + alpha * FLOPs(K) / FLOPs(64)``. Exactly ``h_true`` hidden units are
enough to reach the noise floor and fewer are not, so the learned width can be
checked against a known answer: for ``alpha = 0`` it stays at full size, as
``alpha`` grows it shrinks towards ``h_true`` with no loss of accuracy, and only
a large ``alpha`` pushes it below ``h_true``, where the test error rises.

Why one hidden layer: the student then has the teacher's structure, so the
"right" width is exactly ``h_true`` and the learned width can be read directly
against it. With two hidden layers the needed width of each layer is no longer
defined by the teacher (the second layer can trade width with the first), and
the picture gets muddier without showing anything more about the method.

Teacher details (so that every one of its ``h_true`` units matters): the input
weights are scaled so each pre-activation has standard deviation
``teacher_gain`` (2.5: tanh well inside its non-linear range, so no unit is
close to linear and no two units can be merged), and every unit's output
weight vector has the same norm. The teacher's outputs are scaled to unit
variance (on average over the outputs), so the target noise standard deviation ``noise_std`` fixes the
noise floor of the normalised test error: ``NMSE >= noise_std^2 / (1 + noise_std^2)``.

Everything is generated from ``seed`` on the CPU; nothing is downloaded.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..train import distributed, training
from ..train.training import torch_threads
from ..train.checkpoint import load_checkpoint, make_recipe, register_task, save_checkpoint
from ..core.cost import model_cost
from ..core.export import export
from ..core.graph import dynamic_widths, make_dynamic
from ..core.loss import TradeoffLoss
from ..train.record import WidthRecorder
from ..train.stats import format_interval, mean_interval, paired_verdict
from ..train.sweep_engine import Job, read_sweep_rows, run_jobs

__all__ = [
    "SyntheticConfig", "SyntheticData", "DEFAULT_ALPHAS", "DEFAULT_BASELINE_WIDTHS", "QUICK_ALPHAS",
    "QUICK_BASELINE_WIDTHS", "make_teacher", "make_data", "build_student", "build_dynamic_student",
    "train_run", "run_sweep", "sweep_jobs", "write_sweep_csv", "read_sweep_csv", "write_summary_csv", "summarize",
    "significance", "data_fingerprint", "plot_sweep", "format_table", "SWEEP_COLUMNS", "SUMMARY_METRICS", "TASK",
]

TASK = "synthetic"

#: the default sweep: alpha = 0 (no pressure), a range that moves the width from
#: full size down to h_true, and large values that push it below h_true.
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
DEFAULT_BASELINE_WIDTHS: tuple[int, ...] = (1, 2, 3, 4, 6, 7, 8, 10, 12, 16, 32, 64)
QUICK_ALPHAS: tuple[float, ...] = (0.0, 1.0, 8.0)
QUICK_BASELINE_WIDTHS: tuple[int, ...] = (2, 8, 32)

SWEEP_COLUMNS = [
    "method", "alpha", "width", "width_continuous", "macs", "flops", "params", "params_exported",
    "flops_exported", "test_mse", "test_nmse", "val_nmse", "seconds",
    # provenance of every (row, seed) line
    "seed", "data_fingerprint", "torch_version", "threads", "hostname", "wall_seconds",
]


@dataclass
class SyntheticConfig:
    """Every setting of the synthetic case study (problem, student, training)."""

    # problem
    in_dim: int = 16
    h_true: int = 8
    out_dim: int = 4
    teacher_gain: float = 2.5
    noise_std: float = 0.05
    n_train: int = 8192
    n_val: int = 2048
    n_test: int = 8192
    # student
    hidden: int = 64
    kappa_min: float = 1.0 / 64
    # training
    epochs: int = 80
    batch_size: int = 128
    lr: float = 3e-3
    width_lr: float = 0.1
    lr_final: float = 0.05  # cosine decay of both learning rates to this fraction
    warmup_epochs: int = 2  # widths frozen at full size while the student first fits
    settle_epochs: int = 0  # the last epochs train the weights at fixed hard widths (slimtrain.settle_widths)
    compact_every: Optional[int] = 0  # cut the model to its widths (slimtrain.compact) every N epochs (0: at the settle; None: never)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "SyntheticConfig":
        """Tiny settings for tests and smoke runs (a few seconds per run)."""
        base = dict(n_train=2048, n_val=512, n_test=2048, hidden=32, kappa_min=1.0 / 32, epochs=12,
                    warmup_epochs=1, batch_size=32, lr=1e-2)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> "SyntheticConfig":
        """Raise ``ValueError`` with a clear message for an impossible setting."""
        for name in ("in_dim", "h_true", "out_dim", "n_train", "n_val", "n_test", "hidden", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.kappa_min, (int, float)) and 0.0 < self.kappa_min <= 1.0):
            raise ValueError(f"kappa-min must be in (0, 1], got {self.kappa_min!r}")
        if self.kappa_min * self.hidden < 1 - 1e-9:
            raise ValueError(
                f"kappa-min={self.kappa_min:g} with hidden={self.hidden} allows fewer than 1 unit; "
                f"use kappa-min >= 1/{self.hidden}"
            )
        for name in ("lr", "width_lr", "teacher_gain"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number, got {v!r}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise-std must be >= 0, got {self.noise_std!r}")
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"lr-final must be in (0, 1], got {self.lr_final!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup-epochs must be in [0, epochs), got {self.warmup_epochs} with epochs={self.epochs}")
        training.check_settle_epochs(self.settle_epochs, self.warmup_epochs, self.epochs)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch-size {self.batch_size} is larger than the training set ({self.n_train})")
        return self

    @property
    def noise_floor(self) -> float:
        """The NMSE of the teacher itself on noisy targets (no model can do better on average)."""
        return self.noise_std**2 / (1.0 + self.noise_std**2)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- problem -------------------------------------------------------------------------------------
def make_teacher(cfg: SyntheticConfig) -> nn.Sequential:
    """The fixed random teacher ``Linear(in, h_true) -> tanh -> Linear(h_true, out)`` for ``cfg.seed``.

    Its outputs have unit variance on average over the output dimensions for ``x ~ N(0, I)``
    (estimated on a large draw; one common scale, so every hidden unit stays equally strong).
    """
    g = torch.Generator().manual_seed(10_007 * cfg.seed + 1)
    t = nn.Sequential(nn.Linear(cfg.in_dim, cfg.h_true), nn.Tanh(), nn.Linear(cfg.h_true, cfg.out_dim, bias=False))
    with torch.no_grad():
        t[0].weight.copy_(torch.randn(cfg.h_true, cfg.in_dim, generator=g) * cfg.teacher_gain / math.sqrt(cfg.in_dim))
        t[0].bias.copy_(torch.randn(cfg.h_true, generator=g) * 0.5)
        w2 = torch.randn(cfg.out_dim, cfg.h_true, generator=g)
        t[2].weight.copy_(w2 / w2.norm(dim=0, keepdim=True))  # every hidden unit equally strong
        probe = t(torch.randn(65536, cfg.in_dim, generator=g))
        t[2].weight.div_(probe.var(dim=0).mean().sqrt().clamp_min(1e-8))  # one scale: units stay equal
    for p in t.parameters():
        p.requires_grad_(False)
    return t.eval()


@dataclass
class SyntheticData:
    """The train/val/test splits and the target variance used to normalise the error."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    def nmse(self, mse: float, split: str = "test") -> float:
        """MSE divided by the split's target variance (mean over output dimensions)."""
        y = getattr(self, f"y_{split}")
        return float(mse) / float(y.var(dim=0).mean())


def make_data(cfg: SyntheticConfig) -> SyntheticData:
    """Deterministic splits for ``cfg.seed``: ``x ~ N(0, I)``, ``y = teacher(x) + noise_std * N(0, I)``."""
    teacher = make_teacher(cfg)
    g = torch.Generator().manual_seed(10_007 * cfg.seed + 2)
    out = []
    with torch.no_grad():
        for n in (cfg.n_train, cfg.n_val, cfg.n_test):
            x = torch.randn(n, cfg.in_dim, generator=g)
            y = teacher(x) + cfg.noise_std * torch.randn(n, cfg.out_dim, generator=g)
            out += [x, y]
    return SyntheticData(*out)


# -- models --------------------------------------------------------------------------------------
def build_student(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The plain student MLP ``Linear(in, hidden) -> tanh -> Linear(hidden, out)``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def _recipe(cfg: SyntheticConfig) -> dict:
    return make_recipe(TASK, {"in_dim": cfg.in_dim, "hidden": cfg.hidden, "out_dim": cfg.out_dim},
                       (cfg.batch_size, cfg.in_dim), {"kappa_min": cfg.kappa_min})


def build_dynamic_student(recipe: dict) -> nn.Sequential:
    """Builder registered for the ``"synthetic"`` task: the student with its DCL attached."""
    kw = recipe["kwargs"]
    model = build_student(int(kw["in_dim"]), int(kw["hidden"]), int(kw["out_dim"]))
    sample = torch.randn(*recipe["sample_shape"], generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")  # from the tracer, on CPU builds
        return make_dynamic(model, sample, **recipe.get("dynamic", {}))


register_task(TASK, build_dynamic_student)


# -- training ------------------------------------------------------------------------------------
def _batches(cfg: SyntheticConfig, data: SyntheticData, optimizer: torch.optim.Optimizer):
    """``batches(epoch)`` for :func:`slimtrain.train.training.fit` over the training set (seeded shuffle, cosine decay)."""
    return training.shuffled_cosine_batches(data.x_train[:cfg.n_train], data.y_train[:cfg.n_train], optimizer,
                                            batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed,
                                            lr_final=cfg.lr_final)


def _count_flops(model: nn.Module, x: Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as fc:
            model(x)
    return fc.get_total_flops() / x.shape[0]


def train_run(
    cfg: SyntheticConfig,
    alpha: Optional[float] = 0.0,
    *,
    width: Optional[int] = None,
    data: Optional[SyntheticData] = None,
    record_csv: Optional[str | Path] = None,
    tensorboard_dir: Optional[str | Path] = None,
    checkpoint: Optional[str | Path] = None,
    progress: bool = True,
    threads: Optional[int] = 1,
    resume: bool = False,
    device: str = "cpu",
    noise_seed: Optional[int] = None,
) -> dict:
    """Train one student and return its results (one row of the sweep table).

    ``width=None``: the dynamic student of ``cfg.hidden`` units trained with the
    trade-off loss at ``alpha`` (method ``"learned"``). ``width=n``: a plain MLP
    of ``n`` hidden units trained on the task loss alone with the same budget
    (method ``"fixed"``). ``checkpoint`` (learned runs only) saves a checkpoint
    that :func:`slimtrain.train.checkpoint.load_dynamic_model` and ``slimtrain export`` read.
    ``threads`` fixes torch's thread count for the run (1: repeatable results).
    The checkpoint is also written after every epoch; ``resume=True`` continues
    a killed run from it (same final result as an uninterrupted run).
    ``device``: where to train (``"cpu"``, ``"cuda"``, ``"mps"``; see
    :func:`slimtrain.train.distributed.resolve_device`); the results are computed on the CPU.
    ``noise_seed``: reseed torch with it after initialisation, so only the DCL noise
    draws change (the run-to-run spread at fixed data and initial weights).
    Under ``torchrun`` the run is data-parallel (:func:`slimtrain.train.training.fit`); every
    rank returns the same row and only rank 0 writes the record and the checkpoint.
    """
    cfg.validate()
    learned = width is None
    if learned and (alpha is None or not math.isfinite(alpha) or alpha < 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not learned and (not isinstance(width, int) or width < 1):
        raise ValueError(f"a fixed width must be an integer >= 1, got {width!r}")
    if checkpoint is not None and not learned:
        raise ValueError("checkpoints are written for learned-width runs only")
    if resume and checkpoint is None:
        raise ValueError("resume needs the checkpoint of the run to continue")
    if resume and checkpoint is not None and Path(checkpoint).exists():
        _check_resumable(Path(checkpoint), cfg, alpha)
    dev = distributed.resolve_device(device)
    main = distributed.is_main()
    data = data if data is not None else make_data(cfg)
    ctx = torch_threads(threads)
    t0 = time.perf_counter()
    with ctx:
        training.seed_everything(cfg.seed)
        steps = cfg.n_train // cfg.batch_size
        if learned:
            model = build_student(cfg.in_dim, cfg.hidden, cfg.out_dim)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="TF32 acceleration")
                make_dynamic(model, data.x_train[:cfg.batch_size], kappa_min=cfg.kappa_min)
            objective = TradeoffLoss(model, alpha=float(alpha), metric="flops", warmup_steps=cfg.warmup_epochs * steps)
            optimizer = training.make_optimizer(model, cfg.lr, cfg.width_lr)
            desc = f"alpha={alpha:g}"
        else:
            model = build_student(cfg.in_dim, width, cfg.out_dim)
            objective = None
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            desc = f"width={width}"
        recorder = None
        if learned and main and (record_csv is not None or tensorboard_dir is not None):
            recorder = WidthRecorder(record_csv, tensorboard_dir)
        if noise_seed is not None:
            torch.manual_seed(int(noise_seed))

        def evaluate(m: nn.Module) -> float:
            d = next(m.parameters()).device
            with torch.no_grad():
                return data.nmse(F.mse_loss(m(data.x_val.to(d)), data.y_val.to(d)), "val")

        try:
            training.fit(model, _batches(cfg, data, optimizer), F.mse_loss, objective, optimizer, cfg.epochs,
                         evaluate=evaluate, recorder=recorder, progress=progress, desc=desc,
                         checkpoint=checkpoint, recipe=_recipe(cfg) if learned else None,
                         extra={"config": cfg.as_dict(), "alpha": float(alpha) if learned else None},
                         resume=resume, device=dev, settle_epochs=cfg.settle_epochs if learned else 0,
                         compact_every=cfg.compact_every if learned else 0)
        finally:
            if recorder is not None:
                recorder.close()
        model.to("cpu").eval()
        with torch.no_grad():
            test_mse = float(F.mse_loss(model(data.x_test), data.y_test))
            val_nmse = evaluate(model)
        if learned:
            cost = model_cost(model, hard=True)
            small = export(model)
            k_hard = int(next(iter(dynamic_widths(model, hard=True).values())))
            k_soft = float(next(iter(dynamic_widths(model, hard=False).values())))
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="TF32 acceleration")
                cost = model_cost(model, data.x_test[:cfg.batch_size])
            small = model
            k_hard, k_soft = width, float(width)
        row = {
            "method": "learned" if learned else "fixed",
            "alpha": float(alpha) if learned else math.nan,
            "width": k_hard,
            "width_continuous": round(k_soft, 4),
            "macs": float(cost.macs),
            "flops": float(cost.flops),
            "params": int(round(float(cost.params))),
            "params_exported": sum(p.numel() for p in small.parameters()),
            "flops_exported": _count_flops(small, data.x_test[:256]),
            "test_mse": test_mse,
            "test_nmse": data.nmse(test_mse, "test"),
            "val_nmse": val_nmse,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if checkpoint is not None and main:
            # keep the training state fit() wrote, so --resume of a finished run just reports it
            state = load_checkpoint(checkpoint)["extra"].get("training")
            save_checkpoint(checkpoint, model, _recipe(cfg), extra={
                "training": state,
                "config": cfg.as_dict(), "alpha": float(alpha),  # type: ignore[arg-type]
                "metric": {"name": "test_nmse", "value": row["test_nmse"]},
                "result": {k: v for k, v in row.items() if k != "method"},
            })
    return row


def _check_resumable(path: Path, cfg: SyntheticConfig, alpha: Optional[float]) -> None:
    """Refuse to resume from a checkpoint of a run with other settings (clear message)."""
    extra = load_checkpoint(path)["extra"]
    saved = extra.get("config")
    if saved is not None and saved != cfg.as_dict():
        diff = sorted(k for k in set(saved) | set(cfg.as_dict()) if saved.get(k) != cfg.as_dict().get(k))
        raise ValueError(f"cannot resume from '{path}': it was trained with other settings ({', '.join(diff)}); "
                         "use the same options or another --out folder")
    if extra.get("alpha") is not None and alpha is not None and float(extra["alpha"]) != float(alpha):
        raise ValueError(f"cannot resume from '{path}': it was trained with alpha={extra['alpha']:g}, not {alpha:g}")


# -- sweep ---------------------------------------------------------------------------------------
def data_fingerprint(cfg: SyntheticConfig, data: Optional[SyntheticData] = None) -> str:
    """SHA-256 (16 hex digits) of the problem settings and the generated splits of ``cfg.seed``."""
    data = data if data is not None else make_data(cfg)
    problem = {k: getattr(cfg, k) for k in ("in_dim", "h_true", "out_dim", "teacher_gain", "noise_std", "n_train",
                                            "n_val", "n_test", "seed")}
    h = hashlib.sha256(json.dumps(problem, sort_keys=True).encode())
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        h.update(getattr(data, name).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _run_name(kind: str, value, seed: int) -> str:
    return (f"alpha={value:g}" if kind == "learned" else f"width={value}") + f"_seed{seed}"


def _sweep_job(job: dict) -> dict:
    """One (row, seed) of the sweep, run by :mod:`slimtrain.train.sweep_engine` (in any process)."""
    cfg = dataclasses.replace(job["cfg"], seed=job["seed"])
    kind, value, records, tensorboard = job["kind"], job["value"], job["records"], job["tensorboard"]
    data = make_data(cfg)
    name = _run_name(kind, value, cfg.seed)
    kw: dict = {"progress": False, "data": data, "device": job.get("device", "cpu")}
    if kind == "learned":
        kw["record_csv"] = Path(records) / f"widths_{name}.csv" if records else None
        kw["tensorboard_dir"] = Path(tensorboard) / name if tensorboard else None
        kw["checkpoint"] = Path(records) / f"model_{name}.ckpt" if records else None
        row = train_run(cfg, value, **kw)
    else:
        row = train_run(cfg, None, width=value, **kw)
    row["seed"] = cfg.seed
    row["data_fingerprint"] = data_fingerprint(cfg, data)
    return row


def sweep_jobs(cfg: SyntheticConfig, alphas: Sequence[float], baseline_widths: Sequence[int], seeds: Sequence[int],
               records: Optional[str] = None, tensorboard: Optional[str] = None, device: str = "cpu") -> list[Job]:
    """The sweep as engine jobs: every learned alpha and fixed width for every seed (seed by seed,
    learned runs first: they take longest, so parallel workers finish together)."""
    jobs = []
    for s in seeds:  # seed-major: an interrupted sweep has whole seeds done
        for kind, values in (("learned", [float(a) for a in alphas]), ("fixed", [int(w) for w in baseline_widths])):
            for v in values:
                key = (f"learned-alpha{v:g}" if kind == "learned" else f"fixed-width{v}") + f"-seed{s}"
                jobs.append(Job(key, _sweep_job, {"cfg": cfg, "kind": kind, "value": v, "seed": int(s),
                                                  "records": records, "tensorboard": tensorboard, "device": device}))
    return jobs


def run_sweep(
    cfg: SyntheticConfig,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    baseline_widths: Sequence[int] = DEFAULT_BASELINE_WIDTHS,
    out_dir: Optional[str | Path] = None,
    *,
    workers: int = 1,
    progress: bool = True,
    tensorboard: bool = False,
    seeds: Optional[Sequence[int]] = None,
    engine: str = "local",
    address: Optional[str] = None,
    resume: bool = False,
    device: str = "cpu",
) -> list[dict]:
    """Learned-width runs at every ``alpha`` and fixed-width baselines, all with ``cfg``'s budget,
    each repeated for every seed in ``seeds`` (default: ``[cfg.seed]``; the seed sets the teacher,
    the data and the initialisation).

    With ``out_dir``: writes ``sweep.csv`` (one line per row and seed), ``sweep_summary.csv`` (mean
    and 95 % interval over seeds), ``sweep.png``, ``config.json``, each finished row in
    ``out_dir/rows/`` (``resume=True`` skips those) and, in ``out_dir/runs/``, each learned run's
    width record and checkpoint. ``engine``/``workers``/``address``: see :mod:`slimtrain.train.sweep_engine`;
    results do not depend on them. ``device`` is passed to every :func:`train_run`.
    """
    cfg.validate()
    alphas = [float(a) for a in alphas]
    if any(not math.isfinite(a) or a < 0 for a in alphas):
        raise ValueError(f"alphas must be finite numbers >= 0, got {alphas}")
    widths = [int(w) for w in baseline_widths]
    if any(w < 1 for w in widths):
        raise ValueError(f"baseline widths must be >= 1, got {widths}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    seeds = [int(s) for s in (seeds if seeds is not None else [cfg.seed])]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    out = Path(out_dir) if out_dir is not None else None
    records = str(out / "runs") if out is not None else None
    tb = str(out / "tensorboard") if (out is not None and tensorboard) else None
    jobs = sweep_jobs(cfg, alphas, widths, seeds, records, tb, device)
    rows = run_jobs(jobs, out / "rows" if out is not None else None, engine=engine, workers=workers, address=address,
                    resume=resume, progress=progress, desc="synthetic sweep", note=_row_note)
    keyed = sorted(zip(jobs, rows), key=lambda jr: (jr[0].arg["kind"] != "learned", jr[0].arg["value"],
                                                    jr[0].arg["seed"]))
    result = [r for _, r in keyed]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_sweep_csv(result, out / "sweep.csv")
        write_summary_csv(result, out / "sweep_summary.csv")
        plot_sweep(result, out / "sweep.png", cfg)
        (out / "config.json").write_text(json.dumps(
            {"config": cfg.as_dict(), "alphas": alphas, "baseline_widths": widths, "seeds": seeds}, indent=2) + "\n")
    return result


def _row_note(row: dict) -> str:
    head = f"alpha={row['alpha']:g}" if row["method"] == "learned" else "fixed"
    return f"{head} seed={row.get('seed')} width={row['width']} nmse={row['test_nmse']:.4f}"


def write_sweep_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """Write the sweep table (columns :data:`SWEEP_COLUMNS`, one line per row and seed) atomically."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    os.replace(tmp, path)
    return path


_INT_COLUMNS = ("width", "params", "params_exported", "seed", "threads")
_TEXT_COLUMNS = ("method", "data_fingerprint", "torch_version", "hostname")


def read_sweep_csv(path: str | Path) -> list[dict]:
    """The rows of a ``sweep.csv`` back as numbers. A table written before seeds were recorded (no
    ``seed`` column) reads with ``seed = None``: one run per row, shown as ``n=1``."""
    rows = read_sweep_rows(path, f"no synthetic sweep table at {Path(path)}; run 'slimtrain synthetic --sweep' first",
                           text=_TEXT_COLUMNS, ints=_INT_COLUMNS)
    for r in rows:
        r.setdefault("seed", None)
    return rows


#: the metrics summarised over seeds (mean and 95 % interval)
SUMMARY_METRICS = ("width", "width_continuous", "flops", "params", "test_nmse", "val_nmse")


def _group_key(r: dict) -> tuple:
    return ("learned", r["alpha"]) if r["method"] == "learned" else ("fixed", r["width"])


def summarize(rows: Iterable[dict]) -> list[dict]:
    """One entry per sweep row (learned alpha / fixed width): ``n`` seeds, ``seeds`` and, per
    metric of :data:`SUMMARY_METRICS`, an :class:`slimtrain.train.stats.Interval` and ``{seed: value}``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group_key(r), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (k[0] != "learned", k[1])):
        grp = sorted(groups[key], key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        entry: dict = {"method": key[0], "alpha": key[1] if key[0] == "learned" else math.nan,
                       "fixed_width": key[1] if key[0] == "fixed" else None, "n": len(grp),
                       "seeds": [r.get("seed") for r in grp]}
        for m in SUMMARY_METRICS:
            entry[m] = mean_interval([float(r[m]) for r in grp])
            entry[f"{m}_by_seed"] = {(r.get("seed") if r.get("seed") is not None else 0): float(r[m]) for r in grp}
        out.append(entry)
    return out


def _reference(summary: list[dict]) -> dict[str, Optional[dict]]:
    """What each method is compared with: the learned run at the smallest alpha (alpha = 0: no
    pressure, full width) and the widest fixed width."""
    learned = [e for e in summary if e["method"] == "learned"]
    fixed = [e for e in summary if e["method"] == "fixed"]
    return {"learned": min(learned, key=lambda e: e["alpha"]) if learned else None,
            "fixed": max(fixed, key=lambda e: e["fixed_width"]) if fixed else None}


def significance(entry: dict, ref: Optional[dict]) -> str:
    """The paired (same-seed) test NMSE comparison of ``entry`` with ``ref``, as a table cell:
    ``worse``/``better`` (95 % interval of the difference excludes 0), ``n.s.``, ``n=1`` (no
    interval) or ``ref.`` for the reference itself."""
    if ref is None:
        return ""
    if ref is entry:
        return "ref."
    return paired_verdict(entry["test_nmse_by_seed"], ref["test_nmse_by_seed"], higher_is_better=False,
                          fmt="+.2f", scale=1e3)


def write_summary_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """``sweep_summary.csv``: per sweep row, ``n`` and the mean, 95 % interval (lo, hi) of every
    :data:`SUMMARY_METRICS` metric over seeds (empty lo/hi for ``n = 1``)."""
    summary = summarize(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["method", "alpha", "fixed_width", "n"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "lo", "hi")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in summary:
            vals = [e["method"], "" if math.isnan(e["alpha"]) else f"{e['alpha']:g}", e["fixed_width"] or "", e["n"]]
            for m in SUMMARY_METRICS:
                iv = e[m]
                vals += [f"{iv.mean:.6g}"] + ["" if math.isnan(x) else f"{x:.6g}" for x in (iv.lo, iv.hi)]
            w.writerow(vals)
    return path


def format_table(rows: Iterable[dict]) -> str:
    """The sweep as a Markdown table: learned runs by alpha, then the fixed widths; every number the
    mean ± the 95 % Student-t half-width over seeds (just the value when ``n = 1``; NMSE in units of
    10⁻³), and the paired test NMSE comparison with alpha = 0 (learned) or the widest fixed width."""
    summary = summarize(rows)
    ref = _reference(summary)
    lines = ["| method | alpha | width (K) | FLOPs | params | test NMSE (10⁻³) | n | "
             "test NMSE vs reference, paired (10⁻³) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in summary:
        if e["method"] == "learned":
            k = f"{format_interval(e['width'], '.1f' if e['n'] > 1 else '.0f')} " \
                f"({format_interval(e['width_continuous'], '.2f')})"
            alpha = f"{e['alpha']:g}"
        else:
            k, alpha = f"{e['fixed_width']}", "-"
        lines.append(f"| {e['method']} | {alpha} | {k} | {format_interval(e['flops'], '.0f')} | {format_interval(e['params'], '.0f')} | "
                     f"{format_interval(e['test_nmse'], '.2f', 1e3)} | {e['n']} | {significance(e, ref[e['method']])} |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict], path: str | Path, cfg: Optional[SyntheticConfig] = None) -> Path:
    """``sweep.png``: test NMSE against FLOPs (learned and fixed widths), and learned width against
    alpha; means over seeds with 95 % Student-t error bars (none for ``n = 1``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = cfg or SyntheticConfig()
    summary = summarize(rows)
    learned = [e for e in summary if e["method"] == "learned"]
    fixed = [e for e in summary if e["method"] == "fixed"]
    n_seeds = max((e["n"] for e in summary), default=1)

    def err(ivs):
        """yerr for errorbar: the half-widths (0 where there is no interval)."""
        return [0.0 if math.isnan(iv.lo) else iv.half_width for iv in ivs]

    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.35, 1]})
    runs = f"mean of {n_seeds} seeds, 95 % interval" if n_seeds > 1 else "one run"

    # panel 1: error vs cost
    if fixed:
        ax.errorbar([e["flops"].mean for e in fixed], [e["test_nmse"].mean for e in fixed],
                    yerr=err([e["test_nmse"] for e in fixed]), fmt="o-", color="0.45", ms=6, lw=1.2, capsize=3,
                    label="fixed width, trained from scratch", zorder=2)
        for e in fixed:
            ax.annotate(f"{e['fixed_width']}", (e["flops"].mean, e["test_nmse"].mean), textcoords="offset points",
                        xytext=(-4, -12), fontsize=8, color="0.35", ha="center")
    if learned:
        ax.errorbar([e["flops"].mean for e in learned], [e["test_nmse"].mean for e in learned],
                    xerr=err([e["flops"] for e in learned]), yerr=err([e["test_nmse"] for e in learned]), fmt="*",
                    color="tab:red", ms=13, mec="darkred", ecolor="darkred", capsize=3, zorder=3,
                    label=f"learned width (DCL, start {cfg.hidden}), {runs} per alpha")
        # one label per cluster of points that landed (nearly) on the same place: "α=1, 2"
        groups: list[list[dict]] = []
        for e in learned:
            for grp in groups:
                g0 = grp[0]
                if (abs(math.log(g0["flops"].mean / e["flops"].mean)) < 0.25
                        and abs(math.log(max(g0["test_nmse"].mean, 1e-12) / max(e["test_nmse"].mean, 1e-12))) < 0.25):
                    grp.append(e)
                    break
            else:
                groups.append([e])
        for grp in groups:
            x = max(e["flops"].mean for e in grp)
            y = max(e["test_nmse"].mean for e in grp)
            ax.annotate("α=" + ", ".join(f"{e['alpha']:g}" for e in grp), (x, y), textcoords="offset points",
                        xytext=(7, 5), fontsize=8, color="darkred")
    teacher_flops = 2 * (cfg.in_dim * cfg.h_true + cfg.h_true * cfg.out_dim)
    ax.axvline(teacher_flops, color="tab:blue", ls="--", lw=1, label=f"teacher size (h_true={cfg.h_true})")
    ax.axhline(cfg.noise_floor, color="tab:green", ls=":", lw=1.2, label="noise floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = [e["flops"].mean for e in summary if e["flops"].mean > 0]
    if xs:  # room for the labels right of the largest models
        ax.set_xlim(min(xs) / 1.4, max(xs) * 1.9)
    ax.set_xlabel("FLOPs per example (exported model)")
    ax.set_ylabel("test NMSE (MSE / target variance)")
    ax.set_title("accuracy vs cost")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="center right")  # the empty corner: large models at the noise floor

    # panel 2: learned width vs alpha
    if learned:
        a = [e["alpha"] for e in learned]
        nonzero = [x for x in a if x > 0]
        ax2.errorbar(a, [e["width"].mean for e in learned], yerr=err([e["width"] for e in learned]), fmt="*-",
                     color="tab:red", ms=11, mec="darkred", capsize=3, label="learned width ceil(K) (exported)")
        ax2.plot(a, [e["width_continuous"].mean for e in learned], ".", color="k", ms=5,
                 label="continuous K at the end")
        if nonzero:
            ax2.set_xscale("symlog", linthresh=min(nonzero), linscale=0.6)
    ax2.axhline(cfg.h_true, color="tab:blue", ls="--", lw=1.2, label=f"needed width h_true={cfg.h_true}")
    ax2.axhline(cfg.hidden, color="0.5", ls=":", lw=1, label=f"full width {cfg.hidden}")
    ax2.set_yscale("log", base=2)
    ax2.set_ylim(0.8, cfg.hidden * 1.3)
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= cfg.hidden * 1.3]
    ax2.set_yticks(ticks, [str(t) for t in ticks])
    ax2.set_xlabel("alpha (weight of FLOPs / full FLOPs)")
    ax2.set_ylabel("hidden width")
    ax2.set_title("learned width vs alpha")
    ax2.grid(True, which="both", alpha=0.25)
    ax2.legend(fontsize=8, loc="upper right")
    seeds = sorted({s for e in summary for s in e["seeds"] if s is not None})
    seed_text = (f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1))
                 else "seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1
                 else f"seed {seeds[0] if seeds else cfg.seed}")
    fig.suptitle(f"Synthetic teacher {cfg.in_dim}-{cfg.h_true}-{cfg.out_dim} (tanh), student {cfg.in_dim}-"
                 f"{cfg.hidden}-{cfg.out_dim}; {cfg.epochs} epochs, {seed_text}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path
