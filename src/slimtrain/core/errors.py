"""The error of the core's graph analysis, at the bottom of the import graph.

:class:`GraphError` is raised by tracing, planning and attaching alike, so it lives
here, below all of them; :mod:`slimtrain.core.trace` and :mod:`slimtrain.core.graph` re-export
it (``from slimtrain.core.trace import GraphError`` keeps working, same class).
"""
from __future__ import annotations

__all__ = ["GraphError"]


class GraphError(ValueError):
    """The model's channel flow cannot be made dynamic (names the layers involved)."""
