"""A small, task-free training loop for dynamic models (progress bar, records, seeds)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .dcl import DynamicWidth
from .loss import TradeoffLoss
from .record import WidthRecorder

__all__ = ["seed_everything", "make_optimizer", "fit", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float = 1e-3, width_lr: float = 1e-2, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with a separate learning rate for the width parameters (relative units)."""
    if lr <= 0 or width_lr <= 0:
        raise ValueError(f"learning rates must be positive, got lr={lr}, width_lr={width_lr}")
    width = [p for m in model.modules() if isinstance(m, DynamicWidth) for p in m.parameters(recurse=False)]
    ids = {id(p) for p in width}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if width:
        groups.append({"params": width, "lr": width_lr, "weight_decay": 0.0})
    return torch.optim.Adam(groups)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    metric: float


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    task_loss: Callable[[Tensor, Tensor], Tensor],
    objective: TradeoffLoss,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    evaluate: Optional[Callable[[nn.Module], float]] = None,
    recorder: Optional[WidthRecorder] = None,
    progress: bool = True,
    desc: str = "train",
) -> list[EpochResult]:
    """Train ``model`` on ``task_loss + complexity`` for ``epochs`` epochs.

    ``batches(epoch)`` yields ``(inputs, targets)``; ``evaluate(model)`` (run in
    eval mode) gives the task metric recorded after each epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    results = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for x, y in batches(epoch):
            loss = objective(task_loss(model(x), y))
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at epoch {epoch}; lower the learning rate or check inputs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            n += 1
        model.eval()
        metric = float(evaluate(model)) if evaluate is not None else math.nan
        res = EpochResult(epoch, total / max(n, 1), metric)
        results.append(res)
        if recorder is not None:
            recorder.log(epoch, model, train_loss=res.train_loss, metric=metric)
        bar.set_postfix(loss=f"{res.train_loss:.4f}", metric=f"{metric:.4f}", cost=f"{objective.last.get('cost_rel', 1):.3f}")
    return results
