"""slimtrain: learn layer widths and computational cost in the same training run.

Core API::

    model = slimtrain.make_dynamic(model, sample, kappa_min=0.125)
    loss = slimtrain.TradeoffLoss(model, alpha=0.5)(task_loss)
    small = slimtrain.export(model)
    slimtrain.compact(model, optimizer)   # mid-training: cut to the current widths, train on
"""
import sys

from .core.compact import CompactError, compact
from .core.cost import Cost, layer_costs, model_cost
from .core.dcl import DynamicWidth, WidthError
from .core.distill import DistillError, Distiller
from .core.export import export
from .audio.frontend import MelFrontend
from .core.graph import GraphError, dynamic_widths, get_graph, make_dynamic, plan_widths, settle_widths
from .core.loss import LossConfigError, TradeoffLoss
from .core.plan import WidthPlan, width_report
from .core.modules import DynamicOutput, DynamicRecurrent, MaskedLayerNorm, TransformerBlock
from .core.reorder import ReorderError, ReorderReport, channel_scores, reorder_channels

from . import _legacy

_legacy.install(sys.modules[__name__])  # the old module paths (slimtrain.training, slimtrain.data, ...) keep working

__version__ = "0.1.0"


def __getattr__(name: str):
    """``slimtrain.training``, ``slimtrain.checkpoint``, ``slimtrain.vad``...: the modules of before the layer
    packages, imported on first use as they were (see :mod:`slimtrain._legacy`)."""
    if f"{__name__}.{name}" in _legacy.MOVED:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__all__ = [
    "CompactError", "Cost", "DistillError", "Distiller", "DynamicOutput", "DynamicRecurrent", "DynamicWidth", "GraphError",
    "LossConfigError",
    "MaskedLayerNorm", "MelFrontend", "ReorderError", "ReorderReport", "TradeoffLoss", "TransformerBlock",
    "WidthError", "WidthPlan", "channel_scores", "compact", "dynamic_widths", "export", "get_graph", "layer_costs",
    "make_dynamic", "model_cost", "plan_widths", "reorder_channels", "settle_widths", "width_report",
]
