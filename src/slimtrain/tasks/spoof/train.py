"""Training and evaluation of one countermeasure (dynamic stages, fixed width, or pruned).

A run trains :func:`~slimtrain.apps.spoof.models.build_resnet` on the ``train`` split (binary
cross-entropy, bona fide = 1) and scores the ``eval`` split. With dynamic stages the loss is
``BCE + alpha * FLOPs(K) / FLOPs(full)`` (:class:`slimtrain.TradeoffLoss`), the widths are frozen
at full size for ``warmup_epochs``, and the model is exported (cut to ``ceil(K)``) before it is
scored, so every number describes the plain exported network. EER (scikit-learn ROC) is
reported pooled over the whole evaluation set, pooled over the unseen attacks only, and per
attack (bona fide evaluation clips against that attack's clips).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...audio.frontend import FREQUENCY_SCALES, parse_phase_features
from ...train import distributed, training
from ...train.allocator import keep_freed_memory
from ...train.training import torch_threads
from ...train.checkpoint import make_recipe, register_task, save_checkpoint
from ...core.cost import model_cost
from ...core.graph import make_dynamic
from ...core.loss import TradeoffLoss
from ...train.record import WidthRecorder
from ..metrics import eer
from ..rawboost import RAWBOOST_ALGORITHMS, rawboost
from ..study.config import StudyConfigError, TrainConfig, check_ints
from ..study.train import exported, fit_epochs, output_distiller
from .attacks import ATTACKS
from .data import SR, SpoofSplit
from .aasist import AASIST_CONFIGS, build_aasist
from ...apps.spoof.models import (DEFAULT_BLOCKS, DEFAULT_HOP, DEFAULT_N_FFT, DEFAULT_N_MELS, DEFAULT_WIDTH, HEADS,
                                  QUICK_BLOCKS, build_resnet, make_dynamic_stages, margin_bce)

__all__ = ["SpoofConfig", "train_run", "score_model", "eer_report", "build_spoof_model", "TASK", "model_kwargs",
           "FAMILIES", "make_dynamic_aasist"]

TASK = "spoof"
#: model families of ``slimtrain spoof --family``: the ResNet34-style log-mel network, AASIST and AASIST-L
FAMILIES = ("resnet", "aasist", "aasist-l")


@dataclass
class SpoofConfig(TrainConfig):
    """Model and training settings of one run (the shared ones and their checks: :class:`TrainConfig`)."""

    width: int = DEFAULT_WIDTH
    blocks: tuple[int, ...] = DEFAULT_BLOCKS
    n_mels: int = DEFAULT_N_MELS
    hop_length: int = DEFAULT_HOP
    n_fft: int = DEFAULT_N_FFT
    freq_scale: str = "mel"  # the ResNet's filterbank spacing: mel | linear
    #: phase features stacked on the ResNet's log-mel (``"gd"``, ``"if"``, ``"gd+if"``; None: none), see
    #: :class:`slimtrain.audio.frontend.BandReassignment`
    phase: Optional[str] = None
    #: the ResNet's output head: "linear" or "one-class" (OC-softmax, trained with its margins)
    head: str = "linear"
    epochs: int = 4
    width_lr: float = 0.02
    lr_final: float = 0.05
    compact_steps: Optional[int] = None  # DCL runs: also cut after every N optimiser steps within the epochs
    #: budget runs (``floor``, ``params_budget`` or ``macs_budget``): settle the widths (and cut the model to them)
    #: at the first optimiser step whose widths meet the budget, and train the weights at them for the rest of the run
    settle_at_budget: bool = False
    #: with ``settle_at_budget``: first scale the widths to the last channel step below the budget
    #: (``TradeoffLoss.fill_budget``; the crossing step can overshoot it by a fifth)
    fill_budget: bool = False
    family: str = "resnet"  # resnet | aasist | aasist-l (width/blocks/n_mels/hop/n_fft: the ResNet only)
    #: RawBoost on every training batch (:func:`slimtrain.tasks.rawboost.rawboost`: "1", "2", "3", "1+2", "1+2+3";
    #: None: off) and the fraction of clips it augments
    rawboost: Optional[str] = None
    rawboost_p: float = 1.0
    #: frequency masks on the ResNet's features in training (``FrequencyMask``): up to ``freq_mask`` consecutive
    #: bands per mask (0: off), ``freq_masks`` masks per clip
    freq_mask: int = 0
    freq_masks: int = 1

    FAMILIES: ClassVar[tuple[str, ...]] = FAMILIES
    #: ``--quick``: a tiny network (one block per stage)
    QUICK: ClassVar[dict] = dict(blocks=QUICK_BLOCKS, epochs=4, batch_size=16, warmup_epochs=1)

    def check(self) -> None:
        check_ints(self, ("width", "n_mels", "hop_length"), 1)
        check_ints(self, ("n_fft",), 2)
        check_ints(self, ("freq_mask",), 0)
        check_ints(self, ("freq_masks",), 1)
        if self.freq_mask and self.family != "resnet":
            raise StudyConfigError(f"freq-mask applies to the ResNet family, not {self.family!r}")
        if self.rawboost is not None and self.rawboost not in RAWBOOST_ALGORITHMS:
            raise StudyConfigError(f"rawboost must be one of {', '.join(RAWBOOST_ALGORITHMS)} (or unset), got "
                                   f"{self.rawboost!r}")
        if not (isinstance(self.rawboost_p, (int, float)) and 0.0 <= self.rawboost_p <= 1.0):
            raise StudyConfigError(f"rawboost-p must be in [0, 1], got {self.rawboost_p!r}")
        if self.freq_scale not in FREQUENCY_SCALES:
            raise StudyConfigError(f"freq-scale must be one of {', '.join(FREQUENCY_SCALES)}, got {self.freq_scale!r}")
        try:
            parse_phase_features(self.phase)
        except (ValueError, AttributeError) as e:
            raise StudyConfigError(f"phase: {e}" if isinstance(e, ValueError) else
                                   f"phase must be a string like 'gd' or 'gd+if', got {self.phase!r}") from None
        if self.head not in HEADS:
            raise StudyConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if not self.blocks or any((not isinstance(b, int)) or b < 1 for b in self.blocks):
            raise StudyConfigError(f"blocks must be integers >= 1, got {self.blocks!r}")
        if self.warmup_epochs >= self.epochs:
            raise StudyConfigError(f"warmup-epochs must be in [0, epochs), got {self.warmup_epochs} with "
                                   f"epochs={self.epochs}")
        if self.fill_budget and not self.settle_at_budget:
            raise StudyConfigError("fill-budget fills the budget when the widths settle at it: it needs "
                                   "settle-at-budget")
        if self.compact_steps is not None and (isinstance(self.compact_steps, bool) or not isinstance(self.compact_steps, int)
                                               or self.compact_steps < 1):
            raise StudyConfigError(f"compact-steps must be an integer >= 1 (or unset), got {self.compact_steps!r}")

    def augmenter(self, sample_rate: int) -> Optional[Callable[[Tensor, torch.Generator], Tensor]]:
        """``augment(batch, generator)`` applying this run's RawBoost at ``sample_rate`` (None when off)."""
        if self.rawboost is None:
            return None
        algorithm, p = self.rawboost, float(self.rawboost_p)
        return lambda xb, g: rawboost(xb, g, sample_rate, algorithm, p)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d


def model_kwargs(cfg: SpoofConfig, width: Optional[int] = None) -> dict:
    """Keyword arguments of :func:`build_resnet` (or, with ``family``, :func:`build_aasist`) for ``cfg``
    (plain values, stored in checkpoint recipes)."""
    if cfg.family != "resnet":
        return {"family": cfg.family, "sample_rate": SR}
    kw = {"width": int(width or cfg.width), "blocks": list(cfg.blocks), "n_mels": cfg.n_mels, "sample_rate": SR,
          "n_fft": cfg.n_fft, "hop_length": cfg.hop_length}
    if cfg.freq_scale != "mel":  # (recipes of mel models stay as they were)
        kw["freq_scale"] = cfg.freq_scale
    if parse_phase_features(cfg.phase):
        kw["phase"] = list(parse_phase_features(cfg.phase))
    return {**kw, **head_and_mask_kwargs(cfg)}


def head_and_mask_kwargs(cfg: SpoofConfig) -> dict:
    """The ResNet's output head and training frequency masks of ``cfg`` as :func:`build_resnet` keyword
    arguments, each only where it is not the default (so recipes of older models stay as they were)."""
    kw: dict = {}
    if cfg.head != "linear":
        kw["head"] = cfg.head
    if cfg.freq_mask:
        kw["freq_mask"] = [int(cfg.freq_mask), int(cfg.freq_masks)]
    return kw


def check_budget(what: str, budget: Optional[float]) -> None:
    """A budget of a run is unset or a finite number > 0 (``ValueError`` naming ``what`` otherwise)."""
    if budget is not None and not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                                   and math.isfinite(budget) and budget > 0):
        raise ValueError(f"{what} budget must be a positive number, got {budget!r}")


def macs_budget_loss(model: nn.Module, macs_per_second: float, item_seconds: float, warmup_steps: int) -> TradeoffLoss:
    """The trade-off loss of a MACs budget given per second of audio, for a model traced on items of
    ``item_seconds`` (the loss counts MACs per item): Lagrangian multiplier, as the floor and params budgets."""
    return TradeoffLoss(model, budget=float(macs_per_second) * item_seconds, lagrangian=True, lr_mu=0.5,
                        metric="macs", warmup_steps=warmup_steps)


def build_spoof_model(recipe: dict) -> nn.Module:
    """Builder registered for the ``"spoof"`` task: the ResNet with DCLs on ``recipe['dynamic']['stages']``
    (none: the plain model)."""
    kw = dict(recipe["kwargs"])
    dyn = recipe.get("dynamic", {})
    if kw.get("family", "resnet") != "resnet":
        model = build_aasist(kw["family"], int(kw["sample_rate"]))
        if dyn.get("all"):
            sample = torch.randn(*recipe["sample_shape"], generator=torch.Generator().manual_seed(0)) * 0.1
            make_dynamic_aasist(model, sample, float(dyn["kappa_min"]))
        return model
    kw["blocks"] = tuple(kw["blocks"])
    model = build_resnet(**kw)
    stages = dyn.get("stages") or []
    if stages:
        sample = torch.randn(*recipe["sample_shape"], generator=torch.Generator().manual_seed(0)) * 0.1
        make_dynamic_stages(model, sample, stages, float(dyn["kappa_min"]))
    return model


register_task(TASK, build_spoof_model)


def make_dynamic_aasist(model: nn.Module, sample: Tensor, kappa_min: float) -> nn.Module:
    """DCLs on every width of an AASIST that can carry one (:func:`slimtrain.width_report` says which stay
    fixed and why), each with the floor ``max(1, kappa_min * N)``; returns the same model."""
    if not 0 < kappa_min <= 1:
        raise ValueError(f"kappa-min must be in (0, 1], got {kappa_min!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")
        make_dynamic(model, sample, kappa_min=float(kappa_min))
    return model


@torch.no_grad()
def score_model(model: nn.Module, audio: Tensor, batch: Optional[int] = None) -> np.ndarray:
    """Bona fide scores (logits) of ``audio`` ``(N, samples)``, model in eval mode, ``batch`` clips per forward
    pass (default: the model's ``score_batch`` if it has one, else 256; freed batch buffers are kept for the
    next batch: :func:`slimtrain.train.allocator.keep_freed_memory`)."""
    keep_freed_memory()
    batch = batch or getattr(model, "score_batch", 256)
    model.eval()
    out = [model(audio[i:i + batch]).reshape(-1) for i in range(0, len(audio), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def eer_report(split: SpoofSplit, scores: np.ndarray, unseen: Sequence[str]) -> dict[str, float]:
    """EER in percent: ``pooled`` (all), ``unseen`` (bona fide vs unseen attacks), ``known`` and one per attack;
    where the split knows its evaluation-only speakers (:attr:`SpoofSplit.heldout`), also ``heldout`` (their
    bona fide clips alone against every spoof) and ``heldout_<attack>`` (against that attack)."""
    lab, att = split.label, split.attack
    bona = lab == 1
    out: dict[str, float] = {"pooled": 100 * eer(lab, scores)}
    if split.heldout is not None and split.heldout.any():
        ho = split.heldout | ~bona
        out["heldout"] = 100 * eer(lab[ho], scores[ho])
        for a in ATTACKS:
            m = split.heldout | (att == a)
            if np.any(m & ~bona):
                out[f"heldout_{a}"] = 100 * eer(lab[m], scores[m])
    uns = bona | np.isin(att, list(unseen))
    if np.any(uns & ~bona):
        out["unseen"] = 100 * eer(lab[uns], scores[uns])
    kn = bona | (~bona & ~np.isin(att, list(unseen)))
    if np.any(kn & ~bona):
        out["known"] = 100 * eer(lab[kn], scores[kn])
    for a in ATTACKS:
        m = bona | (att == a)
        if np.any(m & ~bona):
            out[a] = 100 * eer(lab[m], scores[m])
    return out


def _fit(model: nn.Module, cfg: SpoofConfig, x: Tensor, y: Tensor, objective, optimizer, epochs: int,
         recorder: Optional[WidthRecorder], progress: bool, desc: str, device=None, settle_epochs: int = 0,
         distill=None) -> None:
    loss = functools.partial(margin_bce, margin=float(getattr(model, "margin", 0.0)))  # (0: plain BCE)
    fit_epochs(model, cfg, x, y, loss, objective, optimizer, epochs, recorder=recorder,
               progress=progress, desc=desc, device=device, settle_epochs=settle_epochs, augment=cfg.augmenter(SR),
               compact_steps=cfg.compact_steps if objective is not None else None,
               settle_at_budget=cfg.settle_at_budget and objective is not None,  # (train_run checked the budget)
               fill_budget=cfg.fill_budget and objective is not None, distill=distill)


def train_run(
    cfg: SpoofConfig,
    train: SpoofSplit,
    test: SpoofSplit,
    unseen: Sequence[str],
    *,
    stages: Sequence[int] = (),
    kappa_min: float = 0.125,
    alpha: float = 1.0,
    floor: bool = False,
    width: Optional[int] = None,
    prune_to: Optional[float] = None,
    prune_fn: Optional[Callable] = None,
    init_state: Optional[dict] = None,
    record_csv: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    progress: bool = True,
    threads: Optional[int] = 1,
    device: str = "cpu",
    params_budget: Optional[float] = None,
    macs_budget: Optional[float] = None,
    train_crop: Optional[int] = None,
    teacher: Optional[nn.Module | Callable[[Tensor], Tensor]] = None,
    distill_weight: float = 1.0,
    distill_temperature: float = 2.0,
    init_from_teacher: bool = False,
) -> dict:
    """Train one countermeasure and return its row (cost per second of audio, EERs).

    * ``stages`` non-empty: DCLs on those stages (method ``"dcl"``), trade-off loss at ``alpha``; with
      ``floor=True`` instead a budget at the floor cost (every width at ``kappa_min * N``, Lagrangian
      multiplier; ``alpha`` is not used), so ``kappa_min`` controls the learned widths;
    * ``stages`` empty: a plain model of ``width`` (default ``cfg.width``) from scratch (``"fixed"``);
    * ``prune_to`` (MACs per clip): the plain full model is trained, then ``prune_fn(model, sample,
      prune_to, finetune)`` prunes it structurally and fine-tunes it (``"pruned"``); with
      ``init_state`` (the state dict of an already trained plain model of this width) that model is
      pruned instead of training a new one.

    ``device``: where to train (cpu, cuda, mps); pruning, fine-tuning, export and scoring run on the
    CPU. ``params_budget``: with DCLs, a budget on the parameter count (Lagrangian multiplier) instead of
    ``alpha``; ``macs_budget``: the same on the MACs per second of audio (e.g. ``9.15e6``), so the widths
    spend a fixed inference cost where the task gains most instead of all sitting at one floor. ``train_crop``: train on random crops of this many samples (AASIST at full clip length costs
    about 1.2 GMAC per second of audio); evaluation always uses the whole clips.

    With ``cfg.family`` ``"aasist"``/``"aasist-l"`` any non-empty ``stages`` means DCLs on every width that
    can carry one (:func:`make_dynamic_aasist`); empty: the plain network.

    ``teacher`` (a trained countermeasure of this task, e.g. the full-width model): distillation while
    training, ``distill_weight * T^2 * BCE(s / T, sigmoid(t / T))`` added to the task loss
    (:class:`slimtrain.Distiller`, ``output="bce"``, ``T = distill_temperature``); with ``init_from_teacher``
    the model starts from the teacher's weights (same family and width: the DPHuBERT/CoFi recipe of shrinking
    the model it imitates). Under ``torchrun`` the training is data-parallel (:func:`slimtrain.train.training.fit`): every
    rank returns the same row and only rank 0 writes the width record and the checkpoint.
    """
    cfg.validate()
    dev = distributed.resolve_device(device)
    main = distributed.is_main()
    if alpha < 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not 0 < kappa_min <= 1:
        raise ValueError(f"kappa-min must be in (0, 1], got {kappa_min!r}")
    check_budget("params", params_budget)
    check_budget("MACs", macs_budget)
    if params_budget is not None and macs_budget is not None:
        raise ValueError("give one budget: params or MACs, not both")
    budget_given = params_budget is not None or macs_budget is not None
    if floor and budget_given:
        raise ValueError("floor=True is a budget of its own (the floor cost); drop it or the params/MACs budget")
    aasist = cfg.family != "resnet"
    if cfg.settle_at_budget and stages and not floor and not budget_given:
        raise ValueError("settle_at_budget needs a budget: floor=True, params_budget or macs_budget")
    if aasist and prune_to is not None:
        raise ValueError("the pruning baseline is for the ResNet family")
    if init_from_teacher and teacher is None:
        raise ValueError("init_from_teacher needs a teacher")
    t0 = time.perf_counter()
    x, yl = train.waveforms(), torch.from_numpy(train.label.astype(np.float32))
    xt = test.waveforms()
    seconds = x.shape[1] / SR
    with torch_threads(threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")
        training.seed_everything(cfg.seed)
        steps = max(1, len(yl) // cfg.batch_size)
        if aasist:
            model = build_aasist(cfg.family, SR)
        else:
            model = build_resnet(**{**model_kwargs(cfg, width), "blocks": tuple(cfg.blocks)})
        if train_crop is not None:
            if not 0 < train_crop <= x.shape[1]:
                raise ValueError(f"train crop must be in 1..{x.shape[1]} samples, got {train_crop!r}")
            g = torch.Generator().manual_seed(cfg.seed)
            off = torch.randint(0, x.shape[1] - train_crop + 1, (len(x),), generator=g)
            x = torch.stack([x[i, o:o + train_crop] for i, o in enumerate(off.tolist())])
        sample = x[: min(8, len(x))]
        kd = None
        if teacher is not None:
            if init_from_teacher:
                try:
                    model.load_state_dict(teacher.state_dict())
                except (RuntimeError, AttributeError) as e:
                    raise ValueError("init_from_teacher: the teacher is not a model of this family and width ("
                                     + str(e).splitlines()[0] + ")") from None
            kd = output_distiller(model, teacher, sample, weight=distill_weight, temperature=distill_temperature)
        recorder = WidthRecorder(record_csv, None) if (record_csv is not None and stages and main) else None
        if stages:
            if aasist:
                make_dynamic_aasist(model, sample, kappa_min)
            else:
                make_dynamic_stages(model, sample, stages, kappa_min)
            if params_budget is not None:
                objective = TradeoffLoss(model, budget=float(params_budget), lagrangian=True, lr_mu=0.5,
                                         metric="params", warmup_steps=cfg.warmup_epochs * steps)
            elif macs_budget is not None:  # (items: the training clips or crops)
                objective = macs_budget_loss(model, macs_budget, sample.shape[1] / SR, cfg.warmup_epochs * steps)
            elif floor:
                objective = TradeoffLoss(model, budget="floor", lagrangian=True, lr_mu=0.5, metric="flops",
                                         warmup_steps=cfg.warmup_epochs * steps)
            else:
                objective = TradeoffLoss(model, alpha=float(alpha), metric="flops",
                                         warmup_steps=cfg.warmup_epochs * steps)
            optimizer = training.make_optimizer(model, cfg.lr, cfg.width_lr)
            method, desc = "dcl", (f"{cfg.family} kappa={kappa_min:g}" if aasist
                                   else f"stages={','.join(map(str, stages))} kappa={kappa_min:g}")
        else:
            objective = None  # fit trains on the task loss alone
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            method = "pruned" if prune_to is not None else "fixed"
            desc = cfg.family if aasist else f"width={width or cfg.width}"
        try:
            if init_state is not None:
                if stages:
                    raise ValueError("init_state is for plain models (fixed width or pruning)")
                model.load_state_dict(init_state)
            else:
                _fit(model, cfg, x, yl, objective, optimizer, cfg.epochs, recorder, progress, desc, dev,
                     settle_epochs=cfg.settle_epochs if stages else 0, distill=kd)
        finally:
            if recorder is not None:
                recorder.close()
        model.to("cpu").eval()
        extra: dict = {}
        if prune_to is not None:
            if prune_fn is None:
                raise ValueError("prune_to needs prune_fn")
            full_macs = float(model_cost(model, sample).macs)

            def finetune(m: nn.Module, epochs: int = max(1, cfg.epochs // 2)) -> nn.Module:
                opt = torch.optim.Adam(m.parameters(), lr=cfg.lr * 0.3)
                _fit(m, cfg, x, yl, None, opt, epochs, None, progress, f"finetune {desc}")
                return m.eval()

            model = prune_fn(model, sample, float(prune_to), finetune).eval()
            extra["macs_full"] = full_macs
        small, widths, cont, diff = exported(model, xt[:16]) if stages else (model, {}, {}, 0.0)
        cost = model_cost(small, xt[:2], seconds=seconds)
        scores = score_model(small, xt)
        eers = eer_report(test, scores, unseen)
    row = {
        "family": cfg.family,
        "method": method,
        "stages": ",".join(map(str, stages)) if stages else "-",
        "kappa_min": float(kappa_min) if stages else math.nan,
        "alpha": (0.0 if floor else float(alpha)) if stages else math.nan,
        "control": ("params-budget" if params_budget is not None else "macs-budget" if macs_budget is not None
                    else "floor" if floor else "alpha") if stages else "",
        "params_budget": float(params_budget) if params_budget is not None else math.nan,
        "macs_budget": float(macs_budget) if macs_budget is not None else math.nan,
        "width": int(width or cfg.width),
        "macs": float(cost.macs),
        "macs_per_second": float(cost.macs) / seconds,
        "gflops_per_second": float(cost.flops) / seconds / 1e9,
        "params": int(round(float(cost.params))),
        "params_exported": sum(p.numel() for p in small.parameters()),
        "eer_pooled": eers["pooled"],
        "eer_unseen": eers.get("unseen", math.nan),
        "eer_known": eers.get("known", math.nan),
        **{f"eer_{a}": eers.get(a, math.nan) for a in ATTACKS},
        "eer_heldout": eers.get("heldout", math.nan),
        **{f"eer_heldout_{a}": eers.get(f"heldout_{a}", math.nan) for a in ATTACKS},
        "export_max_abs_diff": diff,
        "distill_weight": float(distill_weight) if teacher is not None else 0.0,
        "init_from_teacher": bool(init_from_teacher),
        "widths": json.dumps(widths, sort_keys=True),
        "widths_continuous": json.dumps(cont, sort_keys=True),
        "seconds": round(time.perf_counter() - t0, 1),
        **extra,
    }
    if prune_to is not None:
        row["target_macs"] = float(prune_to)
    if checkpoint is not None and prune_to is None and main:
        dyn = {"kappa_min": float(kappa_min), "all": bool(stages)} if aasist else \
            {"kappa_min": float(kappa_min), "stages": list(stages)}
        recipe = make_recipe(TASK, model_kwargs(cfg, width), list(sample.shape), dyn)
        save_checkpoint(checkpoint, model, recipe, extra={
            "config": cfg.as_dict(), "alpha": float(alpha), "clip_seconds": seconds,
            "metric": {"name": "eer_pooled_percent", "value": eers["pooled"]},
            "result": {k: v for k, v in row.items() if isinstance(v, (int, float, str))},
        })
    return row
