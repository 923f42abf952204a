"""Devices and data-parallel training under ``torchrun`` (task-free helpers for :func:`slimtrain.train.training.fit`).

* :func:`resolve_device` turns ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a
  :class:`torch.device`, or raises :class:`DeviceError` (one line, naming the device) when it is not
  available. Under ``torchrun`` a plain ``"cuda"`` means ``cuda:LOCAL_RANK``.
* :func:`world` reads the rank, world size and local rank (from the process group, or from the
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables ``torchrun`` sets); :func:`init` starts the
  process group (gloo for CPU, nccl for CUDA) if the user has not; :func:`shutdown` ends it.
* :func:`wrap` puts a model in :class:`~torch.nn.parallel.DistributedDataParallel`,
  :func:`seed_ranks` gives every rank but 0 its own random stream (DCL noise, dropout),
  :func:`shard` gives each rank its disjoint
  part of a global batch, :func:`sum_over_ranks` adds a few numbers over the ranks.

Every rank must see the same global batches (a seeded shuffle); each takes rows
``[rank * B / W, (rank + 1) * B / W)`` of a batch of ``B`` rows (``torch.tensor_split``), so the
global batch size, the number of steps and the learning-rate schedule are those of a
single-process run, and the averaged gradient is the single-process gradient of a mean loss
(exactly, up to float summation order, for models whose forward does not mix the rows of a batch;
the DCL noise and its ``sigma`` and BatchNorm statistics are computed per rank, on its shard).
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DeviceError", "World", "DEVICE_TYPES", "resolve_device", "world", "launched", "is_main", "init",
           "shutdown", "barrier", "wrap", "seed_ranks", "has_frozen_widths", "shard", "sum_over_ranks", "gather_objects", "rank_seed"]

#: device types the ``--device`` options accept (``cuda:N`` as well)
DEVICE_TYPES = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """The requested device does not exist on this machine or in this torch build."""


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DeviceError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def world() -> World:
    """Rank, world size and local rank: from the initialised process group, else from ``torchrun``'s variables."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise DeviceError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process of the job")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def launched() -> bool:
    """True when this process is one of several (``torchrun --nproc_per_node N`` with ``N > 1``)."""
    return world().parallel


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that prints and writes files."""
    return world().main


def resolve_device(device: Union[str, torch.device, None] = "cpu") -> torch.device:
    """The :class:`torch.device` for ``device`` (``None``: cpu), checked to be available.

    Under ``torchrun`` a plain ``"cuda"`` becomes ``cuda:LOCAL_RANK``. Raises :class:`DeviceError`
    with a one-line message naming the device when it cannot be used.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICE_TYPES)} or cuda:N") from None
    if dev.type not in DEVICE_TYPES:
        raise DeviceError(f"unsupported device {str(dev)!r}; use one of {', '.join(DEVICE_TYPES)} or cuda:N")
    w = world()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {str(dev)!r} is not available: {why}; use --device cpu")
        count = torch.cuda.device_count()
        index = dev.index if dev.index is not None else (w.local_rank if w.parallel else 0)
        if index >= count:
            who = f" (LOCAL_RANK {w.local_rank})" if dev.index is None and w.parallel else ""
            raise DeviceError(f"device 'cuda:{index}'{who} is not available: this machine has {count} CUDA GPU(s)")
        return torch.device("cuda", index)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {str(dev)!r} is not available: no Apple MPS backend in this torch build "
                              "or on this machine; use --device cpu")
        if w.parallel:
            raise DeviceError("data-parallel training (torchrun) is not supported on 'mps'; use cpu or cuda")
    return dev


def init(device: Union[str, torch.device, None] = None) -> World:
    """Start the default process group when launched by ``torchrun`` and none exists yet.

    The backend is nccl for a CUDA ``device`` and gloo otherwise; the group reads ``torchrun``'s
    ``MASTER_ADDR``/``MASTER_PORT`` (``env://``). A group started here is ended by :func:`shutdown`
    or at interpreter exit. Returns :func:`world`. A single process starts nothing.
    """
    w = world()
    if not w.parallel or (dist.is_available() and dist.is_initialized()):
        return w
    if not dist.is_available():
        raise DeviceError("this torch build has no torch.distributed; run a single process")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    atexit.register(shutdown)
    return world()


def shutdown() -> None:
    """End the default process group if there is one (every rank must call it; a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """A seed for ``rank``'s own random stream, derived from the common ``seed`` (distinct per rank)."""
    return (int(seed) * 1_000_003 + 104_729 * (int(rank) + 1)) % (2**63 - 1)


def has_frozen_widths(model: nn.Module) -> bool:
    """True if a DCL of ``model`` is frozen by hand (``DynamicWidth.frozen``) while its ``theta`` still
    trains: ``theta`` then takes no part in the forward. (Warm-up does not freeze: it holds widths
    through a tensor flag; :func:`slimtrain.settle_widths` also stops ``theta``, which DDP then skips.)"""
    from ..core.dcl import DynamicWidth

    return any(isinstance(m, DynamicWidth) and m.frozen and m.theta.requires_grad for m in model.modules())


def wrap(model: nn.Module, device: torch.device, *, find_unused_parameters: Optional[bool] = None,
         **ddp_kwargs: Any) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (the model itself in one process).

    DDP copies rank 0's parameters and buffers to every rank, so every rank starts from the same
    model. ``find_unused_parameters`` defaults to :func:`has_frozen_widths`: a DCL frozen by hand
    does not use its ``theta``, and DDP must not wait for that gradient.
    """
    w = world()
    if not w.parallel:
        return model
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("wrap() needs the process group: call slimtrain.train.distributed.init(device) first")
    if find_unused_parameters is None:
        find_unused_parameters = has_frozen_widths(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                               find_unused_parameters=find_unused_parameters, **ddp_kwargs)


def seed_ranks(w: Optional[World] = None) -> None:
    """Give every rank but 0 its own random stream (DCL noise, dropout): Python, NumPy and torch are
    reseeded with :func:`rank_seed` of ``torch.initial_seed()``; rank 0 keeps the process's stream.
    Call it after the model is initialised (the same on every rank)."""
    w = w or world()
    if w.rank > 0:
        import random

        import numpy as np

        s = rank_seed(torch.initial_seed(), w.rank)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)


def _shard_tensor(t: Tensor, w: World) -> Tensor:
    return torch.tensor_split(t, w.size)[w.rank]


def shard(batch: Any, w: Optional[World] = None) -> Any:
    """This rank's part of a global batch: rows ``[r*B/W, (r+1)*B/W)`` of every tensor in ``batch``.

    ``batch`` is a tensor or a (nested) tuple/list/dict of them, all with the same first dimension
    ``B``; other values pass unchanged. Returns ``None`` when ``B`` is smaller than the world size
    (some rank would get no rows), in which case every rank must skip the step. One process: ``batch``.
    """
    w = w or world()
    if not w.parallel:
        return batch
    sizes = set()

    def collect(b):
        if isinstance(b, Tensor):
            if b.dim() == 0:
                raise ValueError("cannot shard a batch holding a 0-dimensional tensor (no batch dimension)")
            sizes.add(int(b.shape[0]))
        elif isinstance(b, (tuple, list)):
            for v in b:
                collect(v)
        elif isinstance(b, dict):
            for v in b.values():
                collect(v)

    collect(batch)
    if len(sizes) > 1:
        raise ValueError(f"the tensors of a batch have different first dimensions {sorted(sizes)}; "
                         "data-parallel training splits the batch along the first dimension")
    if sizes and min(sizes) < w.size:
        return None

    def split(b):
        if isinstance(b, Tensor):
            return _shard_tensor(b, w)
        if isinstance(b, tuple):
            return type(b)(*map(split, b)) if hasattr(b, "_fields") else tuple(map(split, b))
        if isinstance(b, list):
            return [split(v) for v in b]
        if isinstance(b, dict):
            return {k: split(v) for k, v in b.items()}
        return b

    return split(batch)


def sum_over_ranks(values: Sequence[float] | Tensor, device: Union[str, torch.device] = "cpu") -> Tensor:
    """``values`` (float64) added over every rank; in one process the values themselves.

    ``device`` must be a CUDA device with the nccl backend (gloo works on CPU tensors)."""
    t = values.detach().to(device=device, dtype=torch.float64).reshape(-1).clone() if isinstance(values, Tensor) \
        else torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def gather_objects(obj: Any) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
