"""Shared helpers of the benchmarks: small models, interleaved timing, table printing."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


class MLP(nn.Sequential):
    def __init__(self, d_in: int = 64, hidden: int = 256, d_out: int = 10) -> None:
        super().__init__(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class ConvStack(nn.Module):
    """Conv1d stack over (B, C, T) features -> per-item logits."""

    def __init__(self, c_in: int = 40, ch: int = 64, n_out: int = 2) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(c_in, ch, 5, padding=2)
        self.b1 = nn.BatchNorm1d(ch)
        self.c2 = nn.Conv1d(ch, ch, 5, padding=2)
        self.b2 = nn.BatchNorm1d(ch)
        self.c3 = nn.Conv1d(ch, ch, 3, padding=1)
        self.b3 = nn.BatchNorm1d(ch)
        self.fc = nn.Linear(ch, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean(-1))


class GRUModel(nn.Module):
    """Linear -> GRU -> frame logits over (B, T, F) features."""

    def __init__(self, f_in: int = 40, hidden: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(f_in, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.relu(self.inp(x)))
        return self.out(h).squeeze(-1)


def own_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own, so ``torch.compile`` keeps a separate cache for it.

    Closures made by one ``def`` share a code object, and dynamo's guards of a cached graph do not check
    module hooks (``skip_nnmodule_hook_guards``): the step of a model with DCL hooks could otherwise reuse
    the graph compiled for the plain model of the same class."""
    import types

    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{id(fn):x}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def training_step(model: nn.Module, x: torch.Tensor, loss_fn: Callable, objective: Optional[Callable] = None,
                  compiled: bool = False, optimizer: Optional[torch.optim.Optimizer] = None) -> Callable[[], None]:
    """One training step on the batch ``x``: forward, ``loss_fn`` (and ``objective``), backward, optimiser step.

    The optimiser defaults to ``slimtrain.training.make_optimizer`` (both learning rates 1e-4). ``compiled``:
    forward and loss under ``torch.compile(fullgraph=True)`` from a code object of their own (``own_code``);
    backward through AOTAutograd, the optimiser step eager."""
    from slimtrain.train.training import make_optimizer

    opt = optimizer if optimizer is not None else make_optimizer(model, lr=1e-4, width_lr=1e-4)

    def forward(x):
        loss = loss_fn(model(x))
        return objective(loss) if objective is not None else loss
    if compiled:
        forward = torch.compile(own_code(forward), fullgraph=True)

    def step():
        loss = forward(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                clock: str = "cpu", sync: Callable[[], object] = lambda: None) -> dict[str, list[float]]:
    """Time each function ``repeats`` times in turn (A, B, A, B, ...); seconds per call.

    ``clock="cpu"`` measures the process's CPU time (robust when other jobs share
    the cores: time spent waiting for a core is not counted); ``"wall"`` the wall clock.
    ``sync`` runs before each reading (``torch.cuda.synchronize`` for GPU work).
    """
    clock_fn = time.process_time if clock == "cpu" else time.perf_counter

    def now() -> float:
        sync()
        return clock_fn()
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = now()
            f()
            times[k].append(now() - t0)
    return times


def seed_list(text: str) -> list[int]:
    """``--seeds`` of a study script: a count ``N`` (seeds 0..N-1) or a comma-separated list such as ``3,4``
    (checked by :func:`slimtrain.train.sweep_engine.seeds_from_args`)."""
    import argparse

    from slimtrain.train.sweep_engine import seeds_from_args

    try:
        if "," in text:
            return seeds_from_args(None, [int(s) for s in text.split(",")])
        return seeds_from_args(int(text), None)
    except ValueError as e:  # (an argparse type: the message reaches the user as one line)
        raise argparse.ArgumentTypeError(f"{e} (--seeds N or --seeds 3,4)") from None


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else f"{c}" for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def machine() -> str:
    return (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU cores (shared with other jobs), python {platform.python_version()}")
