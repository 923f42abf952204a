"""Train and evaluate a VAD on the user's corpus (:mod:`slimtrain.audio.data`), streaming crops from disk.

The run is :func:`train_vad_on_corpus`: the model of :class:`~slimtrain.tasks.vad.train.VadRunConfig` is
built at the corpus's sample rate (8 or 16 kHz front-end, :func:`~slimtrain.apps.vad.models.vad_frontend`),
made dynamic, and trained with frame BCE (+ the trade-off loss) on batches from a ``DataLoader`` over a
:class:`~slimtrain.audio.data.VadCropDataset` (workers read the crops; only the crop index is in memory).
Frames labelled :data:`slimtrain.audio.data.IGNORE` (past the end of a file) are left out of the loss and the
metrics. The threshold is the EER point on the validation set; EER, ROC-AUC and F1 at that threshold
are reported on the test set (on the validation set when there is no test set, and the row says so).
The checkpoint records the sample rate, so ``slimtrain.vad.load(path)`` runs the model at its rate.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...core.export import export
from ...core.graph import make_dynamic
from ...train.checkpoint import make_recipe, save_checkpoint
from ...audio.data import IGNORE, AudioCache, NoiseMixer, SkipReport, VadCropDataset, read_vad_corpus
from ...train.distributed import is_main, resolve_device
from ...core.graph import dynamic_widths
from ...core.loss import TradeoffLoss
from ...train.training import DataParallel, make_optimizer, seed_everything, torch_threads
from ..metrics import eer, eer_threshold, f1_at, roc_auc
from ...apps.vad.models import build_vad_model
from .train import TASK, VadRunConfig, _mel_bands, _plain, _plain_widths, exported_cost

__all__ = ["CorpusDataConfig", "CorpusData", "load_corpus_data", "train_vad_on_corpus", "corpus_scores",
           "corpus_metrics", "SAMPLE_RATES", "sample_shape"]

#: the rates the VAD trains at
SAMPLE_RATES = (8000, 16000)
SAMPLE_SECONDS = 4.0


def sample_shape(sample_rate: int) -> tuple[int, int]:
    """The ``make_dynamic`` trace batch: 2 clips of 4 s at ``sample_rate`` (cost per item = per 4 s clip)."""
    return (2, int(SAMPLE_SECONDS * sample_rate))


@dataclass
class CorpusDataConfig:
    """Where the user's data is and how it is read (see ``slimtrain vad --help``)."""

    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None
    noise: Optional[str] = None
    sample_rate: int = 16000
    #: resample files at other rates (False: such a file is a "mixed sample rates" error)
    resample: bool = True
    skip_bad: bool = False
    crop_seconds: float = 4.0
    noise_snr_db: tuple[float, float] = (-5.0, 20.0)
    noise_p: float = 0.8
    cache_dir: Optional[str] = None
    loader_workers: int = 0

    def validate(self) -> "CorpusDataConfig":
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"--sample-rate must be one of {SAMPLE_RATES}, got {self.sample_rate}")
        if not self.crop_seconds >= 0.5:
            raise ValueError(f"crop_seconds must be >= 0.5, got {self.crop_seconds}")
        return self


@dataclass
class CorpusData:
    """The datasets of a run and the one skip report of every scan."""

    train: Optional[torch.utils.data.Dataset]
    val: Optional[torch.utils.data.Dataset]
    test: Optional[torch.utils.data.Dataset]
    sample_rate: int
    report: SkipReport
    summary: dict = field(default_factory=dict)
    speech_fraction: float = 0.5
    loader_workers: int = 0


def load_corpus_data(cfg: CorpusDataConfig, *, progress: bool = False, seed: int = 0) -> CorpusData:
    """Scan the train/val/test corpora (and the noise folder) of ``cfg``; datasets that read from disk."""
    cfg.validate()
    report = SkipReport(cfg.skip_bad)
    cache = AudioCache(cfg.cache_dir) if cfg.cache_dir else None
    noise = None
    if cfg.noise:
        noise = NoiseMixer(cfg.noise, cfg.sample_rate, snr_db=cfg.noise_snr_db, p=cfg.noise_p, report=report,
                           cache=cache)
    sets, summary = {}, {}
    for split in ("train", "val", "test"):
        where = getattr(cfg, split)
        if where is None:
            sets[split] = None
            continue
        corpus = read_vad_corpus(where, sample_rate=cfg.sample_rate, resample=cfg.resample, report=report,
                                 progress=progress, desc=f"scan {split}")
        sets[split] = VadCropDataset(corpus, cfg.crop_seconds, train=split == "train", seed=seed,
                                     noise=noise if split == "train" else None, cache=cache)
        summary[split] = {k: v for k, v in corpus.summary().items() if k != "skipped"}
        summary[split]["crops"] = len(sets[split])
        if corpus.unannotated:
            print(f"{split}: {len(corpus.unannotated)} audio file(s) have no line in {where}: taken as no speech "
                  f"(e.g. {corpus.unannotated[0]})")
    if noise is not None:
        summary["noise"] = {"source": cfg.noise, "files": len(noise), "snr_db": list(cfg.noise_snr_db), "p": cfg.noise_p}
    frac = summary["train"]["speech_fraction"] if "train" in summary else 0.5
    return CorpusData(sets["train"], sets["val"], sets["test"], cfg.sample_rate, report, summary, frac,
                      cfg.loader_workers)


def _loader(ds, batch_size: int, workers: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed) if shuffle else None,
                                       persistent_workers=False)


@torch.no_grad()
def corpus_scores(model: nn.Module, ds, *, batch_size: int = 16, workers: int = 0, progress: bool = False,
                  desc: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Frame labels and speech logits of ``model`` (eval mode, CPU) over ``ds``, ignored frames left out."""
    was = model.training
    model.eval()
    ys, ss = [], []
    for x, y in tqdm(_loader(ds, batch_size, workers, False, 0), desc=desc, disable=not progress, leave=False):
        s = model(x).float()
        keep = y != IGNORE
        ys.append(y[keep].numpy())
        ss.append(s[keep].numpy())
    model.train(was)
    return np.concatenate(ys).astype(np.int64), np.concatenate(ss)


def corpus_metrics(model: nn.Module, val, test=None, *, batch_size: int = 16, workers: int = 0,
                   progress: bool = False, threshold: Optional[float] = None) -> dict:
    """Threshold (logit) = EER point on ``val`` (or ``threshold``); EER, AUC, F1 on ``test`` (else ``val``)."""
    res: dict = {}
    if val is not None:
        yv, sv = corpus_scores(model, val, batch_size=batch_size, workers=workers, progress=progress, desc="score val")
        if threshold is None:
            threshold = eer_threshold(yv, sv)
        res["val_eer"] = eer(yv, sv)
    if threshold is None:
        raise ValueError("corpus_metrics: give a validation set or a threshold")
    on = test if test is not None else val
    y, s = corpus_scores(model, on, batch_size=batch_size, workers=workers, progress=progress,
                         desc="score test" if test is not None else "score val")
    res.update({"threshold": float(threshold), "eer": eer(y, s), "auc": roc_auc(y, s), "f1": f1_at(y, s, threshold),
                "metrics_on": "test" if test is not None else "val", "frames": int(len(y)),
                "speech_fraction_frames": float(y.mean())})
    return res


def _corpus_recipe(cfg: VadRunConfig, sample_rate: int) -> dict:
    per_head = cfg.heads != "count" and cfg.family == "transformer"
    dyn = {"kappa_min": cfg.kappa_min, **({"heads": cfg.heads} if per_head else {})}
    order = {"band_order": cfg.band_order} if cfg.band_order != "low" else {}
    return make_recipe(TASK, {"family": cfg.family, "n_mels": cfg.n_mels, "sample_rate": int(sample_rate), **order,
                              **cfg.widths}, sample_shape(sample_rate), dyn if cfg.dynamic else {"plain": True})


def train_vad_on_corpus(cfg: VadRunConfig, data: CorpusData, *, checkpoint: Optional[str | Path] = None,
                        progress: bool = False, threads: Optional[int] = None, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Train one model on ``data``; returns ``(exported plain model, result row)`` (see the module docstring)."""
    cfg.validate()
    if data.train is None or data.val is None:
        raise ValueError("training needs a train and a validation set (--train-data and --val-data)")
    dev = resolve_device(device)
    sr = data.sample_rate
    with torch_threads(threads):
        t0 = time.time()
        seed_everything(cfg.seed)
        model = build_vad_model(cfg.family, cfg.n_mels, sample_rate=sr, band_order=cfg.band_order, **cfg.widths)
        objective = None
        steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        if cfg.dynamic:
            torch.manual_seed(0)
            make_dynamic(model, torch.randn(*sample_shape(sr)) * 0.1, kappa_min=cfg.kappa_min, heads=cfg.heads)
            seed_everything(cfg.seed)
            objective = TradeoffLoss(model, alpha=cfg.alpha,
                                     budget=None if cfg.budget is None else cfg.budget * SAMPLE_SECONDS,
                                     metric="flops", warmup_steps=cfg.warmup_epochs * steps_per_epoch)
        optimizer = make_optimizer(model, lr=cfg.lr, width_lr=cfg.width_lr)
        at_budget = objective.meets_budget if objective is not None and cfg.budget is not None and cfg.settle_at_budget \
            else None
        pos = min(max(data.speech_fraction, 1e-3), 1 - 1e-3)
        pos_weight = torch.tensor((1 - pos) / pos)
        dp = DataParallel(model, objective, dev)
        pos_weight = pos_weight.to(dp.device)
        settle = cfg.settle_epochs if cfg.dynamic else 0
        losses: list[float] = []
        try:
            for epoch in range(cfg.epochs):
                if settle and epoch >= cfg.epochs - settle:
                    dp.settle()
                data.train.set_epoch(epoch)
                model.train()
                total, k = 0.0, 0
                bar = tqdm(_loader(data.train, cfg.batch_size, data.loader_workers, True, cfg.seed + epoch),
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                           disable=not (progress and dp.world.main), leave=False)
                for batch in bar:
                    part = dp.batch(batch)
                    if part is None:
                        continue
                    x, y = part
                    logits = dp.forward(x)
                    keep = y != IGNORE
                    task = F.binary_cross_entropy_with_logits(logits[keep], y[keep], pos_weight=pos_weight)
                    loss = objective(task) if objective is not None else task
                    _, task_value = dp.step(optimizer, loss, task, where=f"at epoch {epoch}", hint="lower the learning rate")
                    if at_budget is not None and at_budget():
                        dp.settle()
                        at_budget = None
                    total += task_value
                    k += 1
                    bar.set_postfix(loss=f"{total / k:.4f}")
                bar.close()
                losses.append(total / max(k, 1))
        finally:
            dp.close()
        model.to("cpu").eval()
        widths = {k: round(v, 3) for k, v in dynamic_widths(model).items()} if cfg.dynamic else {}
        plain = export(model) if cfg.dynamic else model
        plain.eval()
        flops_s, params = exported_cost(plain, SAMPLE_SECONDS, sr)
        metrics = corpus_metrics(plain, data.val, data.test, batch_size=cfg.batch_size, workers=data.loader_workers,
                                 progress=progress)
        row = {
            "family": cfg.family, "method": "DCL" if cfg.dynamic else "fixed",
            "kappa_min": cfg.kappa_min if cfg.dynamic else None, "alpha": cfg.alpha if cfg.dynamic else None,
            "budget": cfg.budget if cfg.dynamic else None, "sample_rate": sr, "band_order": cfg.band_order,
            "mel_bands": _mel_bands(plain), "widths": widths or _plain_widths(plain),
            "mflops_per_s": flops_s / 1e6, "params": int(params), **metrics,
            "train_loss": losses[-1], "epochs": cfg.epochs, "seed": cfg.seed,
            "train_seconds": round(time.time() - t0, 1),
        }
        if checkpoint is not None and is_main():
            save_checkpoint(checkpoint, model, _corpus_recipe(cfg, sr),
                            extra={"metrics": _plain(row), "config": asdict(cfg), "sample_rate": sr,
                                   "data": data.summary, "skipped": data.report.counts()})
        return plain, row
