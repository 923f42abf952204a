"""A small, task-free training loop for dynamic models (progress bar, records, seeds)."""
from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .dcl import DynamicWidth
from .loss import TradeoffLoss  # noqa: F401  (the usual objective; kept importable from here)
from .record import WidthRecorder

__all__ = ["seed_everything", "make_optimizer", "fit", "TrainingError", "EpochResult", "rng_state", "set_rng_state",
           "torch_threads", "shuffled_cosine_batches"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None`` or 0: leave the setting alone)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def shuffled_cosine_batches(x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer, *, batch_size: int,
                            epochs: int, seed: int, lr_final: float) -> Callable[[int], Iterable[tuple[Tensor, Tensor]]]:
    """``batches(epoch)`` for :func:`fit`: a shuffle seeded by ``(seed, epoch)`` (so a resumed epoch sees
    the same batches) and a per-step cosine decay of every group's learning rate to ``lr_final`` times
    its start value. The last incomplete batch is dropped."""
    n = len(y)
    steps = max(1, n // batch_size)
    total = steps * epochs
    base = [grp["lr"] for grp in optimizer.param_groups]

    def batches(epoch: int):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(steps):
            t = (epoch * steps + i) / max(total - 1, 1)
            scale = lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * t))
            for grp, lr in zip(optimizer.param_groups, base):
                grp["lr"] = lr * scale
            idx = perm[i * batch_size:(i + 1) * batch_size]
            yield x[idx], y[idx]

    return batches


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


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain values and tensors (``weights_only`` loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fit_recipe(recipe: Optional[dict]) -> dict:
    from .checkpoint import make_recipe

    return recipe if recipe is not None else make_recipe("fit", {}, [1])


def _finite_inputs(x) -> bool:
    ts = [x] if isinstance(x, Tensor) else [t for t in x if isinstance(t, Tensor)] if isinstance(x, (tuple, list)) else []
    return all(bool(torch.isfinite(t).all()) for t in ts if t.is_floating_point())


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    task_loss: Callable[[Tensor, Tensor], Tensor],
    objective: Optional[Callable[[Tensor], Tensor]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    evaluate: Optional[Callable[[nn.Module], float]] = None,
    recorder: Optional[WidthRecorder] = None,
    progress: bool = True,
    desc: str = "train",
    *,
    checkpoint: Optional[str | os.PathLike] = None,
    recipe: Optional[dict] = None,
    extra: Optional[dict] = None,
    resume: bool = False,
) -> list[EpochResult]:
    """Train ``model`` on ``task_loss`` (+ the complexity term of ``objective``) for ``epochs`` epochs.

    ``batches(epoch)`` yields ``(inputs, targets)`` and must depend only on
    ``epoch`` (and seeded state), so a resumed run sees the same batches;
    ``evaluate(model)`` (run in eval mode) gives the task metric recorded after
    each epoch. ``objective=None`` trains on the task loss alone (fixed-width
    baselines).

    ``checkpoint``: after every epoch the model, optimiser, objective state, RNG
    states, epoch, widths and recorder rows are written there atomically (with
    ``recipe``, see :func:`slimtrain.checkpoint.make_recipe`, and ``extra``).
    ``resume=True`` continues from that file if it exists (a run killed at any
    point repeats from the end of its last finished epoch and ends with the same
    result as an uninterrupted run). A NaN/Inf input or loss stops training with
    :class:`TrainingError`; the checkpoint then still holds the last good epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path to resume from")
    results: list[EpochResult] = []
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start, results = _restore(checkpoint, model, objective, optimizer, recorder, epochs)
    ckpt_note = f"; the last good checkpoint is '{checkpoint}'" if checkpoint is not None else ""
    bar = tqdm(range(start, epochs), desc=desc, disable=not progress, leave=False, initial=start, total=epochs)
    for epoch in bar:
        model.train()
        total, n = 0.0, 0
        for step, (x, y) in enumerate(batches(epoch)):
            if not _finite_inputs(x):
                raise TrainingError(f"the inputs of batch {step} in epoch {epoch} hold NaN or Inf values; "
                                    f"check the data{ckpt_note}")
            loss = task_loss(model(x), y)
            if objective is not None:
                loss = objective(loss)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss.detach())} at epoch {epoch}, batch {step}; "
                                    f"lower the learning rate or check inputs{ckpt_note}")
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
        if checkpoint is not None:
            _save_state(checkpoint, model, objective, optimizer, recorder, results, epochs, recipe, extra)
        last = getattr(objective, "last", {}) or {}
        bar.set_postfix(loss=f"{res.train_loss:.4f}", metric=f"{metric:.4f}", cost=f"{last.get('cost_rel', 1):.3f}")
    return results


def _save_state(path, model, objective, optimizer, recorder, results, epochs, recipe, extra) -> None:
    from .checkpoint import save_checkpoint

    state = {
        "epoch": results[-1].epoch,
        "epochs": int(epochs),
        "results": [[r.epoch, r.train_loss, r.metric] for r in results],
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "recorder_rows": [dict(r) for r in recorder.rows] if recorder is not None else [],
    }
    if isinstance(objective, nn.Module):
        state["objective"] = {"state_dict": objective.state_dict(), "steps": int(getattr(objective, "steps", 0))}
    save_checkpoint(path, model, _fit_recipe(recipe), extra={**dict(extra or {}), "training": state})


def _restore(path, model, objective, optimizer, recorder, epochs) -> tuple[int, list[EpochResult]]:
    from .checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path)
    state = ckpt["extra"].get("training")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds no training state to resume from")
    if state.get("epochs") != epochs:
        raise CheckpointError(f"checkpoint '{path}' is of a run of {state.get('epochs')} epochs, not {epochs}")
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint '{path}' does not fit this model/optimiser: {msg}") from None
    if isinstance(objective, nn.Module) and "objective" in state:
        objective.load_state_dict(state["objective"]["state_dict"])
        if hasattr(objective, "set_steps"):
            objective.set_steps(int(state["objective"]["steps"]))
        else:
            objective.steps = int(state["objective"]["steps"])
    if recorder is not None:
        recorder.rows = [dict(r) for r in state.get("recorder_rows", [])]
        if recorder.csv_path is not None and recorder.rows:
            recorder._write()
    set_rng_state(state["rng"])
    results = [EpochResult(int(e), float(l), float(m)) for e, l, m in state["results"]]
    return int(state["epoch"]) + 1, results
