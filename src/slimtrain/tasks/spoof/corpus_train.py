"""Train and evaluate the countermeasure on the user's corpus (``slimtrain spoof --train-data ...``).

The audio streams from disk (:class:`slimtrain.audio.data.SpoofCrops` in ``DataLoader`` workers): each
step reads a random crop of ``crop_seconds`` of every file in the batch, at the run's sample rate
(8 or 16 kHz; the front-end is built for that rate, see :func:`frontend_for_rate`). The loss is
binary cross-entropy with the bona fide class weighted by ``n_spoof / n_bona`` (ASVspoof 2019 LA
has about 9 spoofs per bona fide file), plus the complexity term with dynamic stages, as in
:func:`slimtrain.tasks.spoof.train.train_run`. Evaluation scores every whole file (the mean logit
of its clips, :func:`slimtrain.audio.data.spoof_corpus.clips_of`, exactly as
:meth:`slimtrain.spoof.Countermeasure.score` does) and reports EER pooled and per attack ID, and
min t-DCF where ASV scores are given.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...train import distributed, training
from ...train.checkpoint import make_recipe, save_checkpoint
from ...core.cost import model_cost
from ...audio.frontend import FREQUENCY_SCALES, parse_phase_features
from ...audio.data.spoof_corpus import AsvScores, SpoofCorpus, SpoofCrops, SpoofUtterances
from ...core.export import export
from ...core.graph import dynamic_widths
from ...core.loss import TradeoffLoss
from ...train.record import WidthRecorder
from ..metrics import eer_by_group, min_tdcf
from ..study.config import check_ints
from ...apps.spoof.models import build_resnet, make_dynamic_stages, margin_bce
from .train import TASK, SpoofConfig, check_budget, head_and_mask_kwargs, macs_budget_loss

__all__ = ["CorpusOptions", "frontend_for_rate", "train_on_corpus", "score_corpus", "evaluate_scores",
           "PREPROCESS"]

#: the checkpoint's ``extra["input"]["preprocess"]`` of corpus-trained models: raw audio, no cue removal
PREPROCESS = "none"


def frontend_for_rate(sample_rate: int) -> dict:
    """Log-mel settings for a rate: 20 ms hop at both rates; 8 kHz: n_fft 256, 32 bands (to 4 kHz);
    16 kHz: n_fft 512, 64 bands (to 8 kHz)."""
    if sample_rate == 8000:
        return {"n_fft": 256, "hop_length": 160, "n_mels": 32}
    if sample_rate == 16000:
        return {"n_fft": 512, "hop_length": 320, "n_mels": 64}
    raise ValueError(f"sample rate must be 8000 or 16000 Hz, got {sample_rate}")


@dataclass
class CorpusOptions:
    """Data settings of a corpus run: model rate, training crop length, DataLoader workers, cache."""

    sample_rate: int = 16000
    crop_seconds: float = 4.0
    workers: int = 0
    cache_dir: Optional[Path] = None
    #: filterbank bands and FFT size (None: :func:`frontend_for_rate`'s) and the bands' spacing (mel | linear)
    n_mels: Optional[int] = None
    n_fft: Optional[int] = None
    freq_scale: str = "mel"
    #: phase features stacked on the log-mel ("gd", "if", "gd+if"; None: none)
    phase: Optional[str] = None

    @property
    def frontend(self) -> dict:
        """The ResNet's front-end settings: :func:`frontend_for_rate` with this run's bands and spacing."""
        fe = frontend_for_rate(self.sample_rate)
        if self.n_mels is not None:
            fe["n_mels"] = int(self.n_mels)
        if self.n_fft is not None:
            fe["n_fft"] = int(self.n_fft)
        if self.freq_scale != "mel":
            fe["freq_scale"] = self.freq_scale
        if parse_phase_features(self.phase):
            fe["phase"] = list(parse_phase_features(self.phase))
        return fe

    @property
    def crop_samples(self) -> int:
        return max(1, int(round(self.crop_seconds * self.sample_rate)))

    def validate(self) -> "CorpusOptions":
        frontend_for_rate(self.sample_rate)
        if not (math.isfinite(self.crop_seconds) and self.crop_seconds > 0):
            raise ValueError(f"crop-seconds must be a positive number, got {self.crop_seconds!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        for name, low in (("n_mels", 1), ("n_fft", 2)):
            if getattr(self, name) is not None:  # (None: the rate's default)
                check_ints(self, (name,), low)
        if self.freq_scale not in FREQUENCY_SCALES:
            raise ValueError(f"freq-scale must be one of {', '.join(FREQUENCY_SCALES)}, got {self.freq_scale!r}")
        parse_phase_features(self.phase)
        return self


def _cache(opts: CorpusOptions):
    if opts.cache_dir is None:
        return None
    from ...audio.data import AudioCache

    return AudioCache(opts.cache_dir)


def _loader(ds, opts: CorpusOptions, **kw) -> DataLoader:
    return DataLoader(ds, num_workers=opts.workers, persistent_workers=False, **kw)


@torch.no_grad()
def score_corpus(model: nn.Module, corpus: SpoofCorpus, opts: CorpusOptions, clip_samples: int, *,
                 progress: bool = True, desc: str = "score", device: str | torch.device = "cpu") -> np.ndarray:
    """Bona fide score (mean clip logit) of every file of ``corpus``, in its order."""
    from tqdm.auto import tqdm

    model.eval()
    dev = torch.device(device)
    ds = SpoofUtterances(corpus, opts.sample_rate, clip_samples, cache=_cache(opts))
    out = np.zeros(len(ds))
    for clips, _, i in tqdm(_loader(ds, opts, batch_size=None), total=len(ds), desc=desc, unit="file",
                            disable=not progress, leave=False):
        out[i] = float(model(clips.to(dev)).reshape(-1).mean())
    return out


def evaluate_scores(corpus: SpoofCorpus, scores: np.ndarray, asv: Optional[AsvScores] = None) -> dict:
    """``{"eer": {"pooled": %, "<attack>": %...}, "min_tdcf": value or absent, "counts": {...}}``."""
    eers = eer_by_group(corpus.labels, scores, corpus.attacks)
    out: dict = {"eer": {k: 100 * v for k, v in eers.items()}, "counts": corpus.counts()}
    if asv is not None:
        lab = corpus.labels == 1
        out["min_tdcf"] = min_tdcf(scores[lab], scores[~lab], asv.target, asv.nontarget, asv.spoof)
    return out


def _bce(pos_weight: float, margin: float = 0.0):
    """The class-weighted loss of a corpus run (:func:`margin_bce`: plain BCE, or OC-softmax's margins)."""
    w = torch.tensor(float(pos_weight))

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margin_bce(logits, y, margin, pos_weight=w.to(logits.device))

    return loss


def train_on_corpus(
    cfg: SpoofConfig,
    opts: CorpusOptions,
    train: SpoofCorpus,
    val: SpoofCorpus,
    test: Optional[SpoofCorpus] = None,
    *,
    asv: Optional[AsvScores] = None,
    stages: Sequence[int] = (0, 1, 2, 3),
    kappa_min: float = 0.125,
    alpha: float = 1.0,
    macs_budget: Optional[float] = None,
    checkpoint: Optional[Path] = None,
    record_csv: Optional[Path] = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Train one countermeasure on ``train`` and evaluate it on ``val`` (and ``test``); returns the result
    (cost per second of audio, learned widths, EER per attack and pooled in percent, min t-DCF on ``test``
    -- or ``val`` without a test set -- where ``asv`` is given, seconds). ``stages`` empty: a plain
    model of ``cfg.width``. ``macs_budget``: a budget on the MACs per second of audio (Lagrangian multiplier)
    instead of ``alpha``. The checkpoint holds the model (with its DCLs) and its input settings."""
    cfg.validate()
    opts.validate()
    dev = distributed.resolve_device(device)
    main = distributed.is_main()
    if not 0 < kappa_min <= 1:
        raise ValueError(f"kappa-min must be in (0, 1], got {kappa_min!r}")
    if alpha < 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    check_budget("MACs", macs_budget)
    t0 = time.perf_counter()
    crop = opts.crop_samples
    fe = opts.frontend
    kwargs = {"width": cfg.width, "blocks": list(cfg.blocks), "sample_rate": opts.sample_rate, **fe,
              **head_and_mask_kwargs(cfg)}
    cache = _cache(opts)
    train_ds = SpoofCrops(train, opts.sample_rate, crop, seed=cfg.seed, cache=cache)
    n_bona = int(train.labels.sum())
    pos_weight = (len(train) - n_bona) / max(n_bona, 1)
    steps = len(train_ds) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"the training corpus has {len(train_ds)} usable files, fewer than one batch of "
                         f"{cfg.batch_size}; lower --batch-size")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")
        training.seed_everything(cfg.seed)
        model = build_resnet(**{**kwargs, "blocks": tuple(cfg.blocks)})
        margin = model.margin
        sample = torch.stack([train_ds[i][0] for i in range(min(8, len(train_ds)))])
        recorder = WidthRecorder(record_csv, None) if (record_csv is not None and stages and main) else None
        if stages:
            make_dynamic_stages(model, sample, stages, kappa_min)
            if macs_budget is not None:  # (items: the training crops)
                objective = macs_budget_loss(model, macs_budget, opts.crop_seconds, cfg.warmup_epochs * steps)
            else:
                objective = TradeoffLoss(model, alpha=float(alpha), metric="flops",
                                         warmup_steps=cfg.warmup_epochs * steps)
            optimizer = training.make_optimizer(model, cfg.lr, cfg.width_lr)
        else:
            objective = None
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        base = [g["lr"] for g in optimizer.param_groups]
        total = steps * cfg.epochs
        augment = cfg.augmenter(opts.sample_rate)

        def batches(epoch: int):
            from tqdm.auto import tqdm

            train_ds.set_epoch(epoch)
            order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            loader = _loader(train_ds, opts, batch_size=cfg.batch_size, sampler=order.tolist(), drop_last=True)
            for i, (x, y) in enumerate(tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                                            disable=not progress, leave=False)):
                t = (epoch * steps + i) / max(total - 1, 1)
                scale = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * t))
                for grp, lr in zip(optimizer.param_groups, base):
                    grp["lr"] = lr * scale
                if augment is not None:
                    x = augment(x, training.step_generator(cfg.seed, epoch, i))
                yield x, y

        desc = f"stages={','.join(map(str, stages))} kappa={kappa_min:g}" if stages else f"width={cfg.width}"
        try:
            training.fit(model, batches, _bce(pos_weight, margin), objective, optimizer, cfg.epochs, recorder=recorder,
                         progress=progress, desc=desc, device=dev, settle_epochs=cfg.settle_epochs if stages else 0)
        finally:
            if recorder is not None:
                recorder.close()
        model.to("cpu").eval()
        if stages:
            widths = {k: int(v) for k, v in dynamic_widths(model, hard=True).items()}
            small = export(model).eval()
        else:
            widths, small = {}, model
        cost = model_cost(small, sample, seconds=opts.crop_seconds)
        result: dict = {"stages": list(stages), "kappa_min": float(kappa_min) if stages else None,
                        "alpha": float(alpha) if stages and macs_budget is None else None,
                        "macs_budget": float(macs_budget) if stages and macs_budget is not None else None,
                        "widths": widths,
                        "sample_rate": opts.sample_rate, "crop_seconds": opts.crop_seconds,
                        "macs_per_second": float(cost.macs) / opts.crop_seconds,
                        "gflops_per_second": float(cost.flops) / opts.crop_seconds / 1e9,
                        "params": sum(p.numel() for p in small.parameters()), "bona_weight": pos_weight}
        sets = [("val", val)] + ([("test", test)] if test is not None else [])
        tdcf_on = sets[-1][0]
        small.to(dev)  # scoring runs where training ran (a GPU scores ASVspoof's 96k dev + eval files)
        for name, corpus in sets:
            scores = score_corpus(small, corpus, opts, crop, progress=progress and main, desc=f"score {name}",
                                  device=dev)
            result[name] = evaluate_scores(corpus, scores, asv if name == tdcf_on else None)
        small.to("cpu")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if checkpoint is not None and main:
        recipe = make_recipe(TASK, kwargs, list(sample.shape),
                             {"kappa_min": float(kappa_min), "stages": list(stages)})
        save_checkpoint(checkpoint, model, recipe, extra={
            "config": cfg.as_dict(), "alpha": float(alpha), "clip_seconds": opts.crop_seconds,
            "input": {"sample_rate": opts.sample_rate, "preprocess": PREPROCESS, "clip_samples": crop},
            "metric": {"name": "eer_pooled_percent", "value": result[tdcf_on]["eer"]["pooled"]},
        })
    return result
