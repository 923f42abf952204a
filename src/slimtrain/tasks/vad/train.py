"""Training and evaluation of one VAD model (DCL with the trade-off loss, or fixed width).

* Loss: per-frame binary cross-entropy on the speech logits (+ the complexity term for DCL runs).
* Optimiser: Adam, lr 3e-3 for weights, ``width_lr`` for the widths; batches of whole clips.
* Evaluation: frame scores on the validation split choose the threshold (EER point); on the test
  split (held-out speaker) we report frame EER pooled and per SNR band, ROC-AUC and F1 at that
  threshold. Cost: FLOPs per second of audio and parameters of the *exported* (cut) model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ... import export, make_dynamic, model_cost
from ...train.checkpoint import make_recipe, register_task, save_checkpoint
from ...core.graph import HEAD_MODES, dynamic_widths
from ...core.loss import TradeoffLoss
from ...train.distributed import is_main, resolve_device
from ...train.training import DataParallel, make_optimizer, seed_everything, torch_threads
from ...audio.frontend import BAND_ORDERS
from ..metrics import eer, eer_threshold, f1_at, roc_auc
from ..study.config import StudyConfigError, TrainConfig
from ..study.train import output_distiller
from .data import VadSplit
from ...apps.vad.models import FAMILIES, build_vad_model

__all__ = ["VadRunConfig", "default_settle_epochs", "SNR_BANDS", "train_vad", "train_loop", "frame_scores",
           "evaluate_scores",
           "evaluate_model", "exported_cost", "build_dynamic_vad", "TASK"]

TASK = "vad"
SNR_BANDS = (("< 5 dB", -math.inf, 5.0), ("5-15 dB", 5.0, 15.0), ("15-25 dB", 15.0, 25.0), (">= 25 dB", 25.0, math.inf))
SAMPLE_SECONDS = 4.0
SAMPLE_SHAPE = (2, 32000)  # the make_dynamic trace batch: 2 clips of 4 s (cost per item = per 4 s clip)


def _sample_shape(sample_rate: int) -> tuple[int, int]:
    """The ``make_dynamic`` trace batch at ``sample_rate``: 2 clips of :data:`SAMPLE_SECONDS`."""
    return (2, int(SAMPLE_SECONDS * sample_rate))


def default_settle_epochs(epochs: int, warmup_epochs: int = 1) -> int:
    """Settled epochs of a DCL run by default: half of ``epochs``, the fine-tuning share of a pruning row,
    but never so many that no epoch is left to learn the widths in after the warm-up."""
    return max(0, min(epochs // 2, epochs - warmup_epochs - 1))


@dataclass
class VadRunConfig(TrainConfig):
    """One training run. ``kappa_min=None`` trains a fixed-width model (``widths`` / ``n_mels``). The shared
    training settings and their checks: :class:`TrainConfig`."""

    family: str = "crnn"
    kappa_min: Optional[float] = 0.125
    alpha: float = 0.5
    budget: Optional[float] = None  # FLOPs per second of audio
    epochs: int = 6
    batch_size: int = 16
    #: with a ``budget``: the widths also settle at the first step whose widths meet it (before the
    #: last ``settle_epochs``), so the run ends at the budget instead of wherever the hinge swung to
    settle_at_budget: bool = False
    n_mels: int = 80
    widths: dict = field(default_factory=dict)
    #: attention widths of a dynamic Transformer: "count" (whole heads) or "width" (dimensions per head)
    heads: str = "count"
    #: the mel bands' channel order: "low" (a DCL cut keeps the lowest bands) or "spread" (bands across the range)
    band_order: str = "low"
    #: the rate the model runs at (8000 or 16000; the data's rate: ``manifest["config"]["sample_rate"]``)
    sample_rate: int = 8000

    FAMILIES: ClassVar[tuple[str, ...]] = FAMILIES

    def check(self) -> None:
        if self.sample_rate not in (8000, 16000):
            raise StudyConfigError(f"sample_rate must be 8000 or 16000, got {self.sample_rate!r}")
        if self.kappa_min is not None and not 0 < self.kappa_min <= 1:
            raise StudyConfigError(f"kappa_min must be in (0, 1], got {self.kappa_min}")
        if self.alpha < 0 or (self.budget is not None and self.budget <= 0):
            raise StudyConfigError(f"alpha must be >= 0 and budget > 0 (got alpha={self.alpha}, budget={self.budget})")
        if self.heads not in HEAD_MODES:
            raise StudyConfigError(f"heads must be 'count' or 'width', got {self.heads!r}")
        if self.band_order not in BAND_ORDERS:
            raise StudyConfigError(f"band_order must be one of {BAND_ORDERS}, got {self.band_order!r}")

    @property
    def dynamic(self) -> bool:
        return self.kappa_min is not None


# -- model building and checkpoints ---------------------------------------------------------------
def _recipe(cfg: VadRunConfig) -> dict:
    per_head = cfg.heads != "count" and cfg.family == "transformer"  # (the CRNN has no attention)
    dyn = {"kappa_min": cfg.kappa_min, **({"heads": cfg.heads} if per_head else {})}
    order = {"band_order": cfg.band_order} if cfg.band_order != "low" else {}
    rate = {"sample_rate": cfg.sample_rate} if cfg.sample_rate != 8000 else {}  # 8 kHz recipes stay as they were
    return make_recipe(TASK, {"family": cfg.family, "n_mels": cfg.n_mels, **rate, **order, **cfg.widths},
                       _sample_shape(cfg.sample_rate),
                       dyn if cfg.dynamic else {"plain": True})


def build_dynamic_vad(recipe: dict) -> nn.Module:
    """Checkpoint builder: the VAD model of ``recipe``, made dynamic as when it was trained."""
    kw = dict(recipe["kwargs"])
    model = build_vad_model(kw.pop("family"), kw.pop("n_mels", 80), **kw)
    dyn = recipe.get("dynamic", {})
    if not dyn.get("plain"):
        torch.manual_seed(0)
        make_dynamic(model, torch.randn(*recipe["sample_shape"]) * 0.1, kappa_min=dyn.get("kappa_min"),
                     heads=dyn.get("heads", "count"))
    return model


register_task(TASK, build_dynamic_vad)


# -- scoring ----------------------------------------------------------------------------------------
@torch.no_grad()
def frame_scores(model: nn.Module, audio: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Per-frame speech logits (clips, frames) of ``model`` in eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(audio), batch_size):
        out.append(model(torch.from_numpy(np.ascontiguousarray(audio[i:i + batch_size]))).float().numpy())
    model.train(was)
    return np.concatenate(out)


def evaluate_scores(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                    test_snr: np.ndarray) -> dict:
    """Metrics from frame scores: threshold = EER point on validation; on test EER (pooled, per SNR
    band), AUC and F1 at that threshold. ``val``/``test`` are ``(labels, scores)`` of shape (clips, frames)."""
    thr = eer_threshold(val[0].ravel(), val[1].ravel())
    y, s = test[0], test[1]
    res = {
        "threshold": float(thr),
        "eer": eer(y.ravel(), s.ravel()),
        "auc": roc_auc(y.ravel(), s.ravel()),
        "f1": f1_at(y.ravel(), s.ravel(), thr),
    }
    for band, lo, hi in SNR_BANDS:
        sel = (test_snr >= lo) & (test_snr < hi)
        yy = y[sel].ravel()
        res[f"eer {band}"] = eer(yy, s[sel].ravel()) if sel.any() and 0 < yy.mean() < 1 else math.nan
    return res


def evaluate_model(model: nn.Module, val: VadSplit, test: VadSplit) -> dict:
    """:func:`evaluate_scores` of ``model`` on the two splits."""
    return evaluate_scores((val.labels, frame_scores(model, val.audio)), (test.labels, frame_scores(model, test.audio)),
                           test.snr_db)


def exported_cost(model: nn.Module, seconds: float = 4.0, sample_rate: int = 8000) -> tuple[float, float]:
    """(FLOPs per second of audio, parameters) of a plain model, counted on a ``seconds`` clip."""
    x = torch.zeros(1, int(seconds * sample_rate))
    c = model_cost(model, x, seconds=seconds)
    return float(c.flops_per_second), float(c.params)


# -- training ---------------------------------------------------------------------------------------
def train_loop(model: nn.Module, train: VadSplit, epochs: int, optimizer: torch.optim.Optimizer, *,
               batch_size: int = 16, seed: int = 0, penalty: Optional[Callable[[Tensor], Tensor]] = None,
               progress: bool = False, desc: str = "vad", device: Optional[str | torch.device] = None,
               settle_epochs: int = 0, settle_when: Optional[Callable[[], bool]] = None,
               compact_every: Optional[int] = 0,
               distill: Optional[Callable[[Tensor, Tensor], Tensor]] = None) -> list[float]:
    """Plain epochs of frame-BCE training; ``penalty(task_loss) -> total loss`` adds a complexity term.
    The last ``settle_epochs`` epochs train at fixed hard widths (:func:`slimtrain.settle_widths`), and so
    does every step after the first one at which ``settle_when()`` is true (asked after each step; it must
    give the same answer on every rank, e.g. from the widths). A dynamic model is cut to its widths
    (:func:`slimtrain.compact`, with ``optimizer``) when they settle and after every ``compact_every`` epochs
    (``None``: never). ``distill``: a :class:`slimtrain.Distiller` (or any ``(inputs, logits) -> loss``) whose
    term is added to the frame BCE before the complexity term.

    Returns the mean training loss per epoch (the frame BCE alone). Raises :class:`TrainingError` on a non-finite loss.
    ``device``: where to train (``None``: where the model is). Under ``torchrun`` the loop is
    data-parallel (:class:`slimtrain.train.training.DataParallel`): every rank draws the same batches and
    trains on its shard of each; a last batch with fewer clips than processes is skipped.
    """
    gen = torch.Generator().manual_seed(seed)
    audio = torch.from_numpy(train.audio)
    labels = torch.from_numpy(train.labels.astype(np.float32))
    n = len(audio)
    pos = float(labels.mean())
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-3))  # balance the classes
    losses = []
    dp = DataParallel(model, penalty, device)
    cuttable = dp.cuttable and compact_every is not None
    pos_weight = pos_weight.to(dp.device)
    if isinstance(distill, nn.Module):
        distill.to(dp.device)  # the teacher beside the model
    bar = tqdm(range(epochs), desc=desc, disable=not (progress and dp.world.main), leave=False)
    try:
        for epoch in bar:
            if settle_epochs and epoch >= epochs - settle_epochs:
                dp.settle(optimizer if cuttable else None)  # the settled widths train as the cut network
            model.train()
            perm = torch.randperm(n, generator=gen)
            total, k = 0.0, 0
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                part = dp.batch((audio[idx], labels[idx]))
                if part is None:  # fewer clips than processes: every rank skips it alike
                    continue
                x, y = part
                logits = dp.forward(x)
                task = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
                loss = task if distill is None else task + distill(x, logits)
                loss = penalty(loss) if penalty is not None else loss
                _, task_value = dp.step(optimizer, loss, task, where=f"at epoch {epoch}", hint="lower the learning rate")
                if settle_when is not None and settle_when():
                    dp.settle(optimizer if cuttable else None)
                    settle_when = None
                total += task_value
                k += 1
            if compact_every and cuttable and (epoch + 1) % compact_every == 0:
                dp.compact(optimizer)
            losses.append(total / max(k, 1))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        bar.close()
        dp.close()
    return losses


def train_vad(cfg: VadRunConfig, data: dict[str, VadSplit], *, checkpoint: Optional[str | Path] = None,
              progress: bool = False, threads: Optional[int] = None, device: str = "cpu",
              teacher: Optional[nn.Module | Callable[[Tensor], Tensor]] = None, distill_weight: float = 1.0,
              distill_temperature: float = 2.0) -> tuple[nn.Module, dict]:
    """Train one model; returns ``(exported plain model, result row)``.

    ``teacher``: a trained VAD of the same rate (frame logits of the same shape, e.g. a full-width run) that
    the model imitates while its widths shrink: ``distill_weight * T^2 * BCE(s / T, sigmoid(t / T))`` per
    frame is added to the task loss (:class:`slimtrain.Distiller`, ``output="bce"``, ``T = distill_temperature``).

    The row holds the settings, learned widths, FLOPs/s and params of the exported model and the
    test metrics (see :func:`evaluate_scores`). ``device``: where to train (cpu, cuda, mps); the
    evaluation runs on the CPU. Under ``torchrun`` the training is data-parallel; every rank
    returns the same result and only rank 0 writes the checkpoint.
    """
    cfg.validate()
    dev = resolve_device(device)
    with torch_threads(threads):
        t0 = time.time()
        seed_everything(cfg.seed)
        model = build_vad_model(cfg.family, cfg.n_mels, sample_rate=cfg.sample_rate, band_order=cfg.band_order,
                                **cfg.widths)
        objective = None
        if cfg.dynamic:
            torch.manual_seed(0)
            make_dynamic(model, torch.randn(*_sample_shape(cfg.sample_rate)) * 0.1, kappa_min=cfg.kappa_min, heads=cfg.heads)
            seed_everything(cfg.seed)
            steps_per_epoch = math.ceil(len(data["train"].audio) / cfg.batch_size)
            objective = TradeoffLoss(model, alpha=cfg.alpha,
                                     budget=None if cfg.budget is None else cfg.budget * SAMPLE_SECONDS,
                                     metric="flops", warmup_steps=cfg.warmup_epochs * steps_per_epoch)
        optimizer = make_optimizer(model, lr=cfg.lr, width_lr=cfg.width_lr)
        kd = None if teacher is None else output_distiller(
            model, teacher, torch.from_numpy(np.ascontiguousarray(data["train"].audio[:2])), weight=distill_weight,
            temperature=distill_temperature, outputs="frame logits", hint="it must be a VAD of the same rate and hop")
        # the widths after each step meet the budget (never during warm-up, when they are held at full size)
        at_budget = objective.meets_budget if objective is not None and cfg.budget is not None and cfg.settle_at_budget \
            else None
        losses = train_loop(model, data["train"], cfg.epochs, optimizer, batch_size=cfg.batch_size, seed=cfg.seed,
                            penalty=objective, progress=progress, desc=f"{cfg.family} k={cfg.kappa_min}",
                            device=dev, settle_epochs=cfg.settle_epochs if cfg.dynamic else 0, settle_when=at_budget,
                            compact_every=cfg.compact_every if cfg.dynamic else 0, distill=kd)
        model.to("cpu").eval()
        widths = {k: round(v, 3) for k, v in dynamic_widths(model).items()} if cfg.dynamic else {}
        plain = export(model) if cfg.dynamic else model
        plain.eval()
        flops_s, params = exported_cost(plain, SAMPLE_SECONDS, cfg.sample_rate)
        metrics = evaluate_model(plain, data["val"], data["test"])
        row = {
            "family": cfg.family,
            "method": "DCL" if cfg.dynamic else "fixed",
            "kappa_min": cfg.kappa_min if cfg.dynamic else None,
            "alpha": cfg.alpha if cfg.dynamic else None,
            "budget": cfg.budget if cfg.dynamic else None,
            "heads": cfg.heads if cfg.dynamic and cfg.family == "transformer" else None,
            "band_order": cfg.band_order,
            "sample_rate": cfg.sample_rate,
            "mel_bands": _mel_bands(plain),
            "widths": widths or _plain_widths(plain),
            "mflops_per_s": flops_s / 1e6,
            "params": int(params),
            **metrics,
            "train_loss": losses[-1],
            "distill_weight": float(distill_weight) if kd is not None else 0.0,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "train_seconds": round(time.time() - t0, 1),
        }
        if checkpoint is not None and is_main():
            save_checkpoint(checkpoint, model, _recipe(cfg), extra={"metrics": _plain(row), "config": asdict(cfg)})
        return plain, row


def _plain(row: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, type(None))) else str(v)) for k, v in row.items()}


def _mel_bands(model: nn.Module) -> int:
    return int(model.frontend.n_mels)


def _plain_widths(model: nn.Module) -> dict:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d):
            out[name] = m.out_channels
        elif isinstance(m, nn.GRU):
            out[name] = m.hidden_size
        elif isinstance(m, nn.Linear) and m.out_features > 1:
            out[name] = m.out_features
    return out
