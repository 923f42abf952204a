"""One configuration base for every study: the training settings they share, checked with named errors."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ...train.training import check_settle_epochs

__all__ = ["TrainConfig", "StudyConfig", "StudyConfigError", "check_ints"]


class StudyConfigError(ValueError):
    """A study setting out of range; the message names the setting (as its command-line option) and the value."""


def _opt(name: str) -> str:
    return name.replace("_", "-")


@dataclass
class TrainConfig:
    """The training settings every study's run has, and their checks. A study's run configuration derives
    from it (or from :class:`StudyConfig`) and sets its own defaults; :meth:`validate` runs these checks and
    then the study's :meth:`check`."""

    family: str = ""
    seed: int = 0
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    width_lr: float = 0.05
    warmup_epochs: int = 1
    settle_epochs: int = 0
    compact_every: Optional[int] = 0

    #: the model families a study offers (the first is the default); empty: any
    FAMILIES: ClassVar[tuple[str, ...]] = ()
    #: the settings ``--quick`` changes (tiny, for tests)
    QUICK: ClassVar[dict] = {}

    @classmethod
    def quick(cls, **overrides: Any):
        """The ``--quick`` settings (:attr:`QUICK`), with ``overrides`` on top."""
        return cls(**{**cls.QUICK, **overrides})

    def validate(self):
        """Check every setting; raises :class:`StudyConfigError` naming the first bad one. Returns ``self``."""
        if self.FAMILIES and self.family not in self.FAMILIES:
            raise StudyConfigError(f"family must be one of {', '.join(self.FAMILIES)}, got {self.family!r}")
        check_ints(self, ("epochs", "batch_size"), 1)
        check_ints(self, ("seed", "warmup_epochs", "settle_epochs"), 0)
        _positive(self, ("lr", "width_lr"))
        c = self.compact_every
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise StudyConfigError(f"compact-every must be an integer >= 0 (or None: never), got {c!r}")
        try:
            check_settle_epochs(self.settle_epochs, self.warmup_epochs, self.epochs)
        except ValueError as e:
            raise StudyConfigError(str(e)) from None
        self.check()
        return self

    def check(self) -> None:
        """A study's own checks (raise :class:`StudyConfigError`); the base checks none."""

    def replace(self, **changes: Any):
        """A copy with ``changes``; an unknown setting is an error naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise StudyConfigError(f"{type(self).__name__} has no setting {', '.join(unknown)}; "
                                   f"settings: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_ints(cfg, names, minimum: int) -> None:
    """Each setting of ``names`` must be an integer ``>= minimum`` (:class:`StudyConfigError` names the first that is not)."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise StudyConfigError(f"{_opt(name)} must be an integer >= {minimum}, got {v!r}")


def _positive(cfg, names) -> None:
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise StudyConfigError(f"{_opt(name)} must be a number > 0, got {v!r}")


@dataclass
class StudyConfig(TrainConfig):
    """A run as the skeleton trains it (:func:`slimtrain.tasks.study.train_run`): the shared training settings,
    a base ``width``, a cosine decay to ``lr_final`` and the DCL control. A study subclasses it to add its own
    settings (all with defaults) and may set :attr:`QUICK` (the overrides of ``--quick``) and the sweep grids.

    ``kappa_min=None`` trains the plain model (no DCL); ``budget`` (cost per example, in the units of
    ``cost_metric``) replaces the ``alpha`` term by a hinge budget."""

    width: int = 16
    lr_final: float = 0.05
    alpha: float = 1.0
    kappa_min: Optional[float] = 0.125
    budget: Optional[float] = None
    cost_metric: str = "flops"

    #: the grid of ``--sweep`` and of ``--sweep --quick`` (alphas, kappas, fixed base widths)
    SWEEP: ClassVar[dict] = {"alphas": (0.5, 2.0), "kappas": (0.25, 0.0625), "fixed_widths": (4, 8, 16)}
    QUICK_SWEEP: ClassVar[dict] = {"alphas": (1.0,), "kappas": (0.25,), "fixed_widths": (4,)}

    @property
    def dynamic(self) -> bool:
        return self.kappa_min is not None

    def validate(self) -> "StudyConfig":
        check_ints(self, ("width",), 1)
        _positive(self, ("lr_final",))
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) \
                or self.alpha < 0:
            raise StudyConfigError(f"alpha must be a number >= 0, got {self.alpha!r}")
        if self.kappa_min is not None and not (isinstance(self.kappa_min, (int, float)) and 0 < self.kappa_min <= 1):
            raise StudyConfigError(f"kappa-min must be in (0, 1], got {self.kappa_min!r}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
                                            and self.budget > 0):
            raise StudyConfigError(f"budget must be a number > 0, got {self.budget!r}")
        if self.cost_metric not in ("flops", "macs", "params"):
            raise StudyConfigError(f"cost metric must be flops, macs or params, got {self.cost_metric!r}")
        return super().validate()

