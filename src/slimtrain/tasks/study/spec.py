"""What a study is: its data, its models and its metrics; everything else is the shared skeleton."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

__all__ = ["Metric", "Split", "StudyData", "Study"]


@dataclass(frozen=True)
class Metric:
    """One result column of a study: its name in the rows, which direction is better, how it prints."""

    name: str
    higher_is_better: bool
    fmt: str = ".4f"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (NaN is never better)."""
        if math.isnan(a):
            return False
        return math.isnan(b) or (a > b if self.higher_is_better else a < b)


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one split, as tensors (batch first)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"a split needs as many inputs as targets, got {len(self.x)} and {len(self.y)}")
        if len(self.x) == 0:
            raise ValueError("a split holds no example")


@dataclass(frozen=True)
class StudyData:
    """The splits a study trains (``train``) and scores (``test``) on, and what it says about them."""

    train: Split
    test: Split
    info: dict


@dataclass(frozen=True)
class Study:
    """A case study as the skeleton runs it (:mod:`slimtrain.tasks.study`).

    * ``name``: the command (``slimtrain NAME``) and the checkpoint task;
    * ``config``: its :class:`~slimtrain.tasks.study.config.StudyConfig` subclass (defaults, ``quick()``);
    * ``build_data(cfg)``: the splits, deterministic in ``cfg`` (no download);
    * ``model_kwargs(cfg, width)`` and ``build_model(**kwargs)``: plain keyword arguments (stored in the
      checkpoint recipe) and the plain model they build; ``width`` is a fixed baseline's base width;
    * ``task_loss(outputs, targets)``: the loss the trade-off term is added to;
    * ``evaluate(model, split)``: the metrics of an exported model on a split, ``{name: value}``;
    * ``metrics``: the metric columns; the first is the headline one (the sweep's best row);
    * ``help``/``description``: the command's help texts; ``cost_unit`` the unit cost is reported per.
    """

    name: str
    config: type
    build_data: Callable[..., StudyData]
    model_kwargs: Callable[..., dict]
    build_model: Callable[..., nn.Module]
    task_loss: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module, Split], dict]
    metrics: tuple[Metric, ...]
    help: str = ""
    description: str = ""
    module: str = ""  #: the module that defines the study (imported by sweep workers to find it)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError(f"study {self.name!r} names no metric")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name!r} repeats a metric: {names}")

    @property
    def headline(self) -> Metric:
        return self.metrics[0]
