"""slimtrain: learn layer widths and computational cost in the same training run.

Core API::

    model = slimtrain.make_dynamic(model, sample, kappa_min=0.125)
    loss = slimtrain.TradeoffLoss(model, alpha=0.5)(task_loss)
    small = slimtrain.export(model)
    slimtrain.compact(model, optimizer)   # mid-training: cut to the current widths, train on
"""
from .compact import CompactError, compact
from .cost import Cost, layer_costs, model_cost
from .dcl import DynamicWidth, WidthError
from .distill import DistillError, Distiller
from .export import export
from .frontend import MelFrontend
from .graph import GraphError, dynamic_widths, get_graph, make_dynamic, plan_widths, settle_widths
from .loss import LossConfigError, TradeoffLoss
from .plan import WidthPlan, width_report
from .modules import DynamicOutput, DynamicRecurrent, MaskedLayerNorm, TransformerBlock
from .reorder import ReorderError, ReorderReport, channel_scores, reorder_channels

__version__ = "0.1.0"
__all__ = [
    "CompactError", "Cost", "DistillError", "Distiller", "DynamicOutput", "DynamicRecurrent", "DynamicWidth", "GraphError",
    "LossConfigError",
    "MaskedLayerNorm", "MelFrontend", "ReorderError", "ReorderReport", "TradeoffLoss", "TransformerBlock",
    "WidthError", "WidthPlan", "channel_scores", "compact", "dynamic_widths", "export", "get_graph", "layer_costs",
    "make_dynamic", "model_cost", "plan_widths", "reorder_channels", "settle_widths", "width_report",
]
