"""The method: dynamic widths, their cost, the trade-off loss, export and compaction. Imports only torch
(and numpy); nothing here knows about training loops, audio or tasks.

* :mod:`.dcl` -- ``DynamicWidth``, the feature-noise width ``K`` of one layer;
* :mod:`.trace` -- one forward pass that finds which channels flow where (widths, ties, unsupported ops);
* :mod:`.plan` -- the width report: every width, dynamic or fixed and why;
* :mod:`.attach` -- hooks that put a DCL on a layer's output, GRU/LSTM and attention heads;
* :mod:`.graph` -- ``make_dynamic``: trace, select, attach, build the width graph;
* :mod:`.cost` -- MACs and parameters as smooth functions of the widths;
* :mod:`.latency` -- measured per-layer latency, fitted smooth in the widths;
* :mod:`.loss` -- ``TradeoffLoss`` (weighted or budget form); :mod:`.distill` -- a teacher's term;
* :mod:`.export` -- cut every layer to ``ceil(K)``, a dense plain-torch model; :mod:`.compact` -- the same cut
  in the middle of training, optimizer state included;
* :mod:`.reorder`, :mod:`.weightnorm`, :mod:`.modules` (masked LayerNorm, Transformer block), :mod:`.errors`.
"""
