"""One configuration base for every study: the training settings they share, checked with named errors."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from ...training import check_settle_epochs

__all__ = ["StudyConfig", "StudyConfigError"]


class StudyConfigError(ValueError):
    """A study setting out of range; the message names the setting (as its command-line option) and the value."""


def _opt(name: str) -> str:
    return name.replace("_", "-")


@dataclass
class StudyConfig:
    """Settings of one run of a study. A study subclasses it to add its own (all with defaults) and may
    set :attr:`QUICK` (the overrides of ``--quick``) and extend :meth:`check`.

    ``kappa_min=None`` trains the plain model (no DCL); ``budget`` (cost per example, in the units of
    ``cost_metric``) replaces the ``alpha`` term by a hinge budget."""

    family: str = ""
    width: int = 16
    seed: int = 0
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    lr_final: float = 0.05
    width_lr: float = 0.05
    warmup_epochs: int = 1
    settle_epochs: int = 0
    compact_every: Optional[int] = 0
    alpha: float = 1.0
    kappa_min: Optional[float] = 0.125
    budget: Optional[float] = None
    cost_metric: str = "flops"

    #: the settings ``--quick`` changes (tiny, for tests)
    QUICK: ClassVar[dict] = {}
    #: the model families a study offers (the first is the default); empty: any
    FAMILIES: ClassVar[tuple[str, ...]] = ()
    #: the grid of ``--sweep`` and of ``--sweep --quick`` (alphas, kappas, fixed base widths)
    SWEEP: ClassVar[dict] = {"alphas": (0.5, 2.0), "kappas": (0.25, 0.0625), "fixed_widths": (4, 8, 16)}
    QUICK_SWEEP: ClassVar[dict] = {"alphas": (1.0,), "kappas": (0.25,), "fixed_widths": (4,)}

    @classmethod
    def quick(cls, **overrides: Any) -> "StudyConfig":
        """The ``--quick`` settings, with ``overrides`` on top."""
        return cls(**{**cls.QUICK, **overrides})

    @property
    def dynamic(self) -> bool:
        return self.kappa_min is not None

    def validate(self) -> "StudyConfig":
        """Check every setting; raises :class:`StudyConfigError` naming the first bad one. Returns ``self``."""
        if self.FAMILIES and self.family not in self.FAMILIES:
            raise StudyConfigError(f"family must be one of {', '.join(self.FAMILIES)}, got {self.family!r}")
        for name in ("width", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise StudyConfigError(f"{_opt(name)} must be an integer >= 1, got {v!r}")
        for name in ("seed", "warmup_epochs", "settle_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise StudyConfigError(f"{_opt(name)} must be an integer >= 0, got {v!r}")
        for name in ("lr", "width_lr", "lr_final"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise StudyConfigError(f"{_opt(name)} must be a number > 0, got {v!r}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise StudyConfigError(f"alpha must be a number >= 0, got {self.alpha!r}")
        if self.kappa_min is not None and not (isinstance(self.kappa_min, (int, float)) and 0 < self.kappa_min <= 1):
            raise StudyConfigError(f"kappa-min must be in (0, 1], got {self.kappa_min!r}")
        if self.budget is not None and not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
                                            and self.budget > 0):
            raise StudyConfigError(f"budget must be a number > 0, got {self.budget!r}")
        if self.cost_metric not in ("flops", "macs", "params"):
            raise StudyConfigError(f"cost metric must be flops, macs or params, got {self.cost_metric!r}")
        c = self.compact_every
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 0):
            raise StudyConfigError(f"compact-every must be an integer >= 0 (or None: never), got {c!r}")
        if self.warmup_epochs >= self.epochs:
            raise StudyConfigError(f"warmup-epochs must be < epochs, got {self.warmup_epochs} with epochs="
                                   f"{self.epochs}")
        try:
            check_settle_epochs(self.settle_epochs, self.warmup_epochs, self.epochs)
        except ValueError as e:
            raise StudyConfigError(str(e)) from None
        self.check()
        return self

    def check(self) -> None:
        """A study's own checks (raise :class:`StudyConfigError`); the base checks none."""

    def replace(self, **changes: Any) -> "StudyConfig":
        """A copy with ``changes``; an unknown setting is an error naming it."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise StudyConfigError(f"{type(self).__name__} has no setting {', '.join(unknown)}; "
                                   f"settings: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
