"""The width plan: every channel width of a model, dynamic or fixed (and why), as plain data.

:func:`slimtrain.make_dynamic` stores one on the model; :func:`width_report`
returns it, ``str(plan)`` prints it as a table, :meth:`WidthPlan.to_dict` gives
plain JSON-ready values, and ``slimtrain plan MODULE:FACTORY --input-shape ...``
prints it from the command line.

:class:`AttachPlan` is the working form of the same decisions that ``make_dynamic``
makes from one trace before it changes the model: which DCL goes where, which
widths share one, which LayerNorms follow one, which widths stay fixed and why
(see :func:`slimtrain.core.graph.plan_attachments`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Union

from torch import nn

from .errors import GraphError

__all__ = ["WidthEntry", "WidthPlan", "width_report", "AttachPlan", "Install"]

_PLAN_ATTR = "_slimtrain_plan"


@dataclass
class WidthEntry:
    """One width (a group of channels; producers joined by residual adds share it)."""

    producers: list[str]  # layers whose output channels are this width (several: tied by a residual)
    size: int  # N, the full number of channels
    dynamic: bool
    dcl: Optional[str] = None  # module path of its DynamicWidth (``<layer>.dcl``, or the user's own)
    min_width: Optional[float] = None
    max_width: Optional[float] = None
    reason: str = ""  # why it stays fixed ("" when dynamic)
    category: str = ""  # model output | excluded | not selected | structure | unsupported
    readers: list[str] = field(default_factory=list)  # layers that read it
    user_dcl: bool = False  # the DynamicWidth was put there by the user
    unit: str = ""  # attention splits: "heads" (N counts heads) or "per head, H heads" (N dims per head)

    @property
    def tied(self) -> bool:
        return len(self.producers) > 1


@dataclass
class WidthPlan:
    """Every width of a traced model. ``str(plan)`` is the human report."""

    entries: list[WidthEntry]

    @property
    def dynamic(self) -> list[WidthEntry]:
        return [e for e in self.entries if e.dynamic]

    @property
    def fixed(self) -> list[WidthEntry]:
        return [e for e in self.entries if not e.dynamic]

    def to_dict(self) -> dict:
        return {"widths": [asdict(e) for e in self.entries]}

    def __str__(self) -> str:
        lines = [f"{len(self.dynamic)} dynamic, {len(self.fixed)} fixed widths"]
        rows = []
        for e in self.entries:
            who = ", ".join(e.producers)
            if e.dynamic:
                state = f"dynamic [{e.min_width:g}, {e.max_width:g}] via {e.dcl}" + (" (user's)" if e.user_dcl else "")
            else:
                state = f"fixed: {e.reason}"
            tie = "  tied" if e.tied else ""
            rows.append((who, f"{e.size} ({e.unit})" if e.unit else str(e.size), state + tie))
        w0 = max([len(r[0]) for r in rows] + [5])
        w1 = max([len(r[1]) for r in rows] + [1])
        lines.append(f"{'layer':<{w0}}  {'N':>{w1}}  width")
        lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
        return "\n".join(lines)


#: a DCL of an :class:`AttachPlan`: a new one (its index in ``AttachPlan.new``) or the module path of a
#: ``DynamicWidth`` the model already holds
DclRef = Union[int, str]


@dataclass(frozen=True)
class Install:
    """One change :func:`slimtrain.core.graph.attach` makes to the model.

    ``how``: ``"hook"`` (the DCL becomes ``module.dcl``, applied to its output on axis ``dim`` by a forward hook;
    ``inner``/``outer`` as for an attention width), ``"rnn"`` (a GRU/LSTM's hidden size), ``"heads"`` (an
    ``nn.MultiheadAttention``'s head count) or ``"share"`` (the ``dcl`` child ``module`` already holds is
    replaced, so widths joined by a residual share one DCL). ``producer``: the layer whose width it is."""

    how: str
    module: str
    dcl: DclRef
    producer: str = ""
    dim: int = -1
    inner: int = 1
    outer: int = 1


@dataclass(frozen=True)
class AttachPlan:
    """Every decision of :func:`slimtrain.make_dynamic`, made from one trace before the model changes.

    Plain data: :func:`slimtrain.core.graph.attach` carries it out, :func:`slimtrain.core.graph.build_graph` turns it
    into the :class:`~slimtrain.core.graph.WidthGraph` that the cost model and :func:`slimtrain.export` read."""

    dcls: dict[int, str]  # dynamic width (trace group root) -> module path of its DCL
    tied: dict[int, tuple[str, ...]]  # dynamic width -> the layers whose outputs it is (several: a residual)
    new: tuple[tuple[int, str], ...]  # (channels, layer kind) of each DCL to create, in order
    bounds: dict  # kappa_min / min_channels of every new DCL
    installs: tuple[Install, ...]
    layer_norms: tuple[tuple[str, DclRef], ...]  # LayerNorm -> the DCL whose kept channels it normalises over
    fixed: dict[int, tuple[str, str]]  # width -> (category, reason) for the widths left fixed
    refused: dict[str, tuple[str, str]]  # layer -> (category, reason): chosen, found not to fit, left fixed
    attached: frozenset  # the conditions (see slimtrain.core.trace.Masked) the installs make true
    batch: int  # of the traced sample
    #: why a second trace would be needed ("" : the one trace answers everything, see slimtrain.core.trace.Masked)
    retrace: str = ""


def width_report(model: nn.Module) -> WidthPlan:
    """The :class:`WidthPlan` of a model prepared by :func:`slimtrain.make_dynamic`."""
    p = model.__dict__.get(_PLAN_ATTR)
    if p is None:
        raise GraphError("this model has no width plan: call slimtrain.make_dynamic(model, sample) first "
                         "(or slimtrain.plan_widths(model, sample) for a read-only report)")
    return p
