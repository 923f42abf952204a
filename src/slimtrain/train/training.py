"""A small, task-free training loop for dynamic models (progress bar, records, seeds)."""
from __future__ import annotations

import contextlib
import gc
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

from .allocator import keep_freed_memory
from . import distributed
from ..core.dcl import DynamicWidth
from ..core.graph import settle_widths
from ..core.loss import TradeoffLoss  # noqa: F401  (the usual objective; kept importable from here)
from .record import WidthRecorder

__all__ = ["seed_everything", "step_generator", "make_optimizer", "fit", "TrainingError", "EpochResult", "rng_state",
           "set_rng_state", "torch_threads", "shuffled_cosine_batches", "DataParallel"]


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
                            epochs: int, seed: int, lr_final: float,
                            augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None,
                            ) -> Callable[[int], Iterable[tuple[Tensor, Tensor]]]:
    """``batches(epoch)`` for :func:`fit`: a shuffle seeded by ``(seed, epoch)`` (so a resumed epoch sees
    the same batches) and a per-step cosine decay of every group's learning rate to ``lr_final`` times
    its start value. The last incomplete batch is dropped. ``augment(inputs, generator)``, if given,
    transforms each batch's inputs, drawing from a generator seeded by ``(seed, epoch, step)``."""
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
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, step_generator(seed, epoch, i))
            yield xb, y[idx]

    return batches


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch, step)``: per-batch random augmentation that a resumed
    epoch repeats exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + step)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fused_ok(params) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` takes these parameters: all floating, on one CPU/CUDA/MPS device type."""
    kinds = {(p.device.type, p.is_floating_point()) for p in params}
    return len(kinds) == 1 and next(iter(kinds)) in {("cpu", True), ("cuda", True), ("mps", True)}


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
    return torch.optim.Adam(groups, fused=_fused_ok(model.parameters()))


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
    device: Optional[str | torch.device] = None,
    ddp_options: Optional[dict] = None,
    settle_epochs: int = 0,
    settle_at_budget: bool = False,
    fill_budget: bool = False,
    distill: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    compact_every: Optional[int] = 0,
    compact_margin: int = 0,
    compact_steps: Optional[int] = None,
) -> list[EpochResult]:
    """Train ``model`` on ``task_loss`` (+ the complexity term of ``objective``) for ``epochs`` epochs.

    ``batches(epoch)`` yields ``(inputs, targets)`` and must depend only on
    ``epoch`` (and seeded state), so a resumed run sees the same batches;
    ``evaluate(model)`` (run in eval mode) gives the task metric recorded after
    each epoch. ``objective=None`` trains on the task loss alone (fixed-width
    baselines).

    ``checkpoint``: after every epoch the model, optimiser, objective state, RNG
    states, epoch, widths and recorder rows are written there atomically (with
    ``recipe``, see :func:`slimtrain.train.checkpoint.make_recipe`, and ``extra``).
    ``resume=True`` continues from that file if it exists (a run killed at any
    point repeats from the end of its last finished epoch and ends with the same
    result as an uninterrupted run). A NaN/Inf input or loss stops training with
    :class:`TrainingError`; the checkpoint then still holds the last good epoch.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``): the model (and
    ``objective``) are moved there and every batch is moved there before the
    forward pass; an unavailable device raises
    :class:`slimtrain.train.distributed.DeviceError`. ``None`` leaves the model where it
    is (batches are moved to the device of its first parameter).

    Data-parallel: launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` >
    1), fit starts the process group if you have not (gloo on CPU, nccl on CUDA,
    where ``"cuda"`` means ``cuda:LOCAL_RANK``), wraps the model in
    ``DistributedDataParallel`` (``ddp_options``: extra keyword arguments for it)
    and gives each rank its shard of every global batch
    (:func:`slimtrain.train.distributed.shard`), so ``batches(epoch)`` must yield the
    same global batches on every rank. Ranks other than 0 draw their own DCL
    noise. Only rank 0 shows progress, evaluates (the metric is sent to every
    rank), records and writes the checkpoint (it holds every rank's RNG state,
    for an exact resume with the same number of processes); the reported loss is
    the mean over ranks. ``model`` stays the plain module (checkpoints load
    without DDP); the process group stays up for the caller (see
    :func:`slimtrain.train.distributed.shutdown`).

    ``settle_epochs``: the last that many epochs train the weights with every width fixed at its
    hard width (:func:`slimtrain.settle_widths`: eval-mode masks, no noise, widths no longer
    trained), so training ends on exactly the network that is exported. They count in ``epochs``.
    ``settle_at_budget=True`` (an ``objective`` with a budget): the widths settle as soon as they
    meet the budget (checked after every optimiser step with ``objective.current_cost()``) and the
    weights train at them for the rest of the run; a budget hinge otherwise swings the widths past
    the budget and back. The crossing step can overshoot the budget by far; ``fill_budget=True`` first
    scales the widths by one common factor so that the settled (hard) widths spend the budget as fully as
    they can without exceeding it (:meth:`TradeoffLoss.fill_budget`). The checkpoint records the settle,
    so a resume continues settled.

    ``distill``: a :class:`slimtrain.Distiller` (or any ``(inputs, outputs) -> loss``); its term is
    added to the task loss of every batch, before the complexity term, so the model shrinks while it
    imitates the teacher.

    Compaction (:func:`slimtrain.compact`): ``compact_every=N`` cuts the model (and ``optimizer``'s
    state) to ``ceil(K) + compact_margin`` channels per width after every ``N`` th epoch, so the
    following epochs train a smaller network; and whenever the widths settle the model is cut to
    them (the settled network is exactly the cut one); ``compact_every=None`` never cuts (to measure
    what compaction saves). ``compact_steps=S`` also cuts after every ``S`` th optimiser step within the
    epochs, so a run whose widths fall inside one long epoch trains the smaller network from there on
    (a cut changes no step: each computes what the uncut one did on the kept channels; one with nothing
    to cut costs a few microseconds per width). The eval-mode model is unchanged by a cut. Under DDP every rank cuts alike and the DDP wrapper is made again; a checkpoint
    written after a cut records the sizes, so a resume cuts the fresh model to them first.

    On Linux/glibc, fit keeps freed memory in the process for the next step
    (:func:`slimtrain.train.allocator.keep_freed_memory`; ``SLIMTRAIN_KEEP_FREED_MEMORY=0`` leaves the
    allocator alone): a CPU step then stops page-faulting its activations in again.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= settle_epochs < epochs:
        raise ValueError(f"settle_epochs must be in [0, epochs={epochs}), got {settle_epochs}")
    if settle_at_budget and getattr(objective, "budget", None) is None:
        raise ValueError("settle_at_budget needs an objective with a budget (TradeoffLoss(budget=...))")
    if fill_budget and not settle_at_budget:
        raise ValueError("fill_budget fills the budget when the widths settle at it: it needs settle_at_budget=True")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint path to resume from")
    for name, v in (("compact_every", 0 if compact_every is None else compact_every), ("compact_margin", compact_margin)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0 (compact_every: or None), got {v!r}")
    if compact_steps is not None and (isinstance(compact_steps, bool) or not isinstance(compact_steps, int)
                                      or compact_steps < 1):
        raise ValueError(f"compact_steps must be an integer >= 1 (optimiser steps between cuts) or None, "
                         f"got {compact_steps!r}")
    keep_freed_memory()
    dp = DataParallel(model, objective, device, ddp_options)
    if isinstance(distill, nn.Module):
        distill.to(dp.device)  # the teacher (and any projections) beside the model
    cuttable = dp.cuttable and compact_every is not None
    w = dp.world
    results: list[EpochResult] = []
    start = 0
    settle_pending = settle_at_budget
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start, results, was_settled = _restore(checkpoint, model, objective, optimizer, recorder, epochs, dp)
        if w.parallel:  # the resumed ranks continue their own saved streams, not fresh ones
            _restore_rank_rng(checkpoint, w)
        if was_settled:
            dp.settle(optimizer if cuttable else None)
            settle_pending = False
    ckpt_note = f"; the last good checkpoint is '{checkpoint}'" if checkpoint is not None else ""
    bar = tqdm(range(start, epochs), desc=desc, disable=not (progress and w.main), leave=False, initial=start,
               total=epochs)
    try:
        for epoch in bar:
            if settle_epochs and epoch >= epochs - settle_epochs:
                dp.settle(optimizer if cuttable else None)  # the settled widths train as the cut network
            model.train()
            total, n = 0.0, 0
            for step, batch in enumerate(batches(epoch)):
                x, y = batch
                if not _finite_inputs(x):
                    raise TrainingError(f"the inputs of batch {step} in epoch {epoch} hold NaN or Inf values; "
                                        f"check the data{ckpt_note}")
                part = dp.batch((x, y))
                if part is None:  # fewer rows than ranks: every rank skips this step alike
                    continue
                x, y = part
                out = dp.forward(x)
                loss = task_loss(out, y)
                if distill is not None:
                    loss = loss + distill(x, out)
                if objective is not None:
                    loss = objective(loss)
                (value,) = dp.step(optimizer, loss, where=f"at epoch {epoch}, batch {step}",
                                   hint=f"lower the learning rate or check inputs{ckpt_note}")
                if cuttable and compact_steps and (n + 1) % compact_steps == 0:
                    dp.compact(optimizer, compact_margin)
                if settle_pending and objective.meets_budget():
                    if fill_budget:  # the crossing step overshoots: settle in the last channel step below the budget
                        objective.fill_budget()
                    dp.settle(optimizer if cuttable else None)
                    settle_pending = False
                total += value
                n += 1
            if cuttable and compact_every and (epoch + 1) % compact_every == 0:
                dp.compact(optimizer, compact_margin)
            model.eval()
            metric = math.nan
            if evaluate is not None and w.main:
                metric = float(evaluate(model))
            metric = dp.from_main(metric)
            res = EpochResult(epoch, total / max(n, 1), metric)
            results.append(res)
            if recorder is not None and w.main:
                recorder.log(epoch, model, train_loss=res.train_loss, metric=metric)
            if w.parallel:
                rank_states = distributed.gather_objects({"rng": rng_state(), "widths": _theta(model)})
                _check_same_widths(rank_states, epoch)
            else:
                rank_states = None
            if checkpoint is not None and w.main:
                _save_state(checkpoint, model, objective, optimizer, recorder, results, epochs, recipe, extra,
                            rank_states)
            last = getattr(objective, "last", {}) or {}
            bar.set_postfix(loss=f"{res.train_loss:.4f}", metric=f"{metric:.4f}", cost=f"{last.get('cost_rel', 1):.3f}")
    finally:
        bar.close()
        dp.close()
    distributed.barrier()  # rank 0's checkpoint is complete on every rank's return
    return results


class DataParallel:
    """The data-parallel side of a training loop (used by :func:`fit`; usable by other loops).

    In one process it only moves batches to the device. Under ``torchrun`` it starts the
    process group, wraps ``model`` in DDP (the model itself stays the plain module),
    reseeds ranks > 0 (:func:`slimtrain.train.distributed.seed_ranks`) and shards each global batch.
    Warm-up needs nothing special: :class:`~slimtrain.core.loss.TradeoffLoss` holds the widths at full
    size through a tensor flag, and a held DCL still takes ``theta`` into its forward (with a zero
    gradient), so DDP sees every width used on every step.
    """

    def __init__(self, model: nn.Module, objective=None, device: Optional[str | torch.device] = None,
                 ddp_options: Optional[dict] = None) -> None:
        if device is not None:
            self.device = distributed.resolve_device(device)
            model.to(self.device)
            if isinstance(objective, nn.Module):
                objective.to(self.device)
        else:
            self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # nccl collectives (and gathers) use the current device
        self.world = distributed.init(self.device)
        self.model, self.objective = model, objective
        self.options = dict(ddp_options or {})
        self._reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.net: nn.Module = distributed.wrap(model, self.device, **self.options)
        if self.world.parallel:
            distributed.seed_ranks(self.world)

    def batch(self, batch):
        """This rank's shard of a global ``batch`` on the device (``None``: every rank skips the step)."""
        if self.world.parallel:
            batch = distributed.shard(batch, self.world)
            if batch is None:
                return None
        return _to(batch, self.device)

    def forward(self, *inputs, **kwargs):
        """The (DDP) model's forward."""
        return self.net(*inputs, **kwargs)

    def mean(self, values: list) -> list[float]:
        """The mean over ranks of each value (tensors or floats), as floats; one all-reduce."""
        if not self.world.parallel:
            return [float(v.detach()) if isinstance(v, Tensor) else float(v) for v in values]
        t = torch.stack([v.detach().reshape(()).to(self._reduce_device, torch.float64) if isinstance(v, Tensor)
                         else torch.tensor(float(v), dtype=torch.float64, device=self._reduce_device)
                         for v in values])
        return [float(v) / self.world.size for v in distributed.sum_over_ranks(t, self._reduce_device)]

    def step(self, optimizer: torch.optim.Optimizer, loss: Tensor, *also: Tensor, where: str, hint: str) -> list[float]:
        """One optimiser step on ``loss``: the means over ranks of ``loss`` and ``also`` (one all-reduce; a
        non-finite loss raises :class:`TrainingError` "loss became ... ``where``; ``hint``" before any
        update), then zero_grad, backward and step. Returns the means."""
        values = self.mean([loss, *also])
        if not math.isfinite(values[0]):
            raise TrainingError(f"loss became {values[0]} {where}; {hint}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return values

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if not self.world.parallel:
            return value
        return float(distributed.sum_over_ranks([value if self.world.main else 0.0], self._reduce_device)[0])

    def settle(self, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, int]:
        """:func:`slimtrain.settle_widths` on the model, and a new DDP wrapper (the old one still waits
        for the widths' gradients); returns the settled widths. Does nothing once settled. With ``optimizer``
        a :attr:`cuttable` model is then cut to the settled widths (:meth:`compact`), so they train as the
        cut network."""
        if _settled(self.model):
            return {}
        widths = settle_widths(self.model)
        if self.net is not self.model:
            self._drop_net()
            self.net = distributed.wrap(self.model, self.device, **self.options)
        if optimizer is not None and self.cuttable:
            self.compact(optimizer)
        return widths

    @property
    def cuttable(self) -> bool:
        """True for a model made by :func:`slimtrain.make_dynamic` (one :meth:`compact` can cut)."""
        return self.model.__dict__.get("_slimtrain_graph") is not None

    def compact(self, optimizer: Optional[torch.optim.Optimizer] = None, margin: int = 0,
                sizes: Optional[dict[str, int]] = None) -> dict[str, int]:
        """:func:`slimtrain.compact` (or, with ``sizes``, :func:`~slimtrain.core.compact.compact_to`) on the model
        and ``optimizer``; a new DDP wrapper when anything was cut. Returns ``{DCL name: channels}``."""
        from ..core.compact import compact, compact_to

        before = {n: m.num_channels for n, m in self.model.named_modules() if isinstance(m, DynamicWidth)}
        out = compact_to(self.model, sizes, optimizer) if sizes is not None else compact(self.model, optimizer,
                                                                                          margin=margin)
        if self.net is not self.model and out != before:
            self._drop_net()
            self.net = distributed.wrap(self.model, self.device, **self.options)
        return out

    def _drop_net(self) -> None:
        if self.net is not self.model:
            self.net = self.model
            gc.collect()  # the DDP reducer's gradient hooks go with it (the model may be wrapped again)

    def close(self) -> None:
        """Drop the DDP wrapper (the model stays where it is)."""
        self._drop_net()


def check_settle_epochs(settle_epochs: int, warmup_epochs: int, epochs: int) -> None:
    """``ValueError`` unless ``settle_epochs`` (>= 0) leaves the warm-up and at least one epoch in which
    the widths learn (0 settles nothing and is always fine)."""
    if settle_epochs < 0 or (settle_epochs and warmup_epochs + settle_epochs >= epochs):
        raise ValueError(f"settle-epochs must leave an epoch to learn the widths in after the warm-up: "
                         f"settle-epochs={settle_epochs}, warmup-epochs={warmup_epochs}, epochs={epochs}")


def _settled(model: nn.Module) -> bool:
    """True once :func:`slimtrain.settle_widths` has run on ``model`` (every DCL frozen, widths not trained)."""
    return all(m.frozen and not m.theta.requires_grad for m in model.modules() if isinstance(m, DynamicWidth))


def _to(x, device: torch.device):
    """``x`` (a tensor, or a tuple/list/dict of them) on ``device``."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True) if x.device != device else x
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a named tuple
        return type(x)(*(_to(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _theta(model: nn.Module) -> dict[str, Tensor]:
    """Every DCL's ``theta`` (CPU copies), to compare across ranks."""
    return {n: m.theta.detach().cpu().clone() for n, m in model.named_modules() if isinstance(m, DynamicWidth)}


def _check_same_widths(rank_states: list[dict], epoch: int) -> None:
    """Raise :class:`TrainingError` if any rank's widths differ (bit for bit) from rank 0's."""
    ref = rank_states[0]["widths"]
    for r, st in enumerate(rank_states[1:], start=1):
        for name, t in ref.items():
            other = st["widths"].get(name)
            if other is None or not torch.equal(other, t):
                raise TrainingError(f"after epoch {epoch} the width theta of '{name}' differs between rank 0 "
                                    f"({float(t)!r}) and rank {r} ({None if other is None else float(other)!r}); "
                                    "every rank must see the same global batches and objective")


def _restore_rank_rng(path, w) -> None:
    from .checkpoint import load_checkpoint

    state = load_checkpoint(path)["extra"].get("training", {})
    ranks = state.get("rank_rng") or []
    if len(ranks) == w.size:
        set_rng_state(ranks[w.rank])
    else:  # saved by another number of processes: rank 0's stream everywhere, so give ranks > 0 their own
        distributed.seed_ranks(w)


def _save_state(path, model, objective, optimizer, recorder, results, epochs, recipe, extra,
                rank_states: Optional[list[dict]] = None) -> None:
    from .checkpoint import save_checkpoint

    state = {
        "epoch": results[-1].epoch,
        "epochs": int(epochs),
        "results": [[r.epoch, r.train_loss, r.metric] for r in results],
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "recorder_rows": [dict(r) for r in recorder.rows] if recorder is not None else [],
        "settled": any(isinstance(m, DynamicWidth) for m in model.modules()) and _settled(model),
    }
    if rank_states is not None:  # data-parallel: every rank's RNG state and widths (bit-identical widths)
        state["world_size"] = len(rank_states)
        state["rank_rng"] = [st["rng"] for st in rank_states]
        state["rank_widths"] = [st["widths"] for st in rank_states]
    if isinstance(objective, nn.Module):
        state["objective"] = {"state_dict": objective.state_dict(), "steps": int(getattr(objective, "steps", 0))}
    save_checkpoint(path, model, _fit_recipe(recipe), extra={**dict(extra or {}), "training": state})


def _restore(path, model, objective, optimizer, recorder, epochs,
             dp: Optional[DataParallel] = None) -> tuple[int, list[EpochResult], bool]:
    from .checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path)
    state = ckpt["extra"].get("training")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds no training state to resume from")
    if state.get("epochs") != epochs:
        raise CheckpointError(f"checkpoint '{path}' is of a run of {state.get('epochs')} epochs, not {epochs}")
    sizes = ckpt["recipe"].get("compact")
    if sizes:  # saved after a compaction: cut the fresh model (and optimiser) to the saved sizes first
        from ..core.compact import CompactError, compact_to

        try:
            if dp is not None:
                dp.compact(optimizer, sizes=dict(sizes))
            else:
                compact_to(model, dict(sizes), optimizer)
        except CompactError as e:
            raise CheckpointError(f"checkpoint '{path}' was saved after a compaction that does not fit this "
                                  f"model: {e}") from None
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
    return int(state["epoch"]) + 1, results, bool(state.get("settled", False))
