"""Callbacks for the training frameworks people use instead of :func:`slimtrain.train.training.fit`.

* :mod:`slimtrain.integrations.lightning` -- ``DynamicWidthCallback`` for the Lightning ``Trainer``
  (``pip install "slimtrain[lightning]"``);
* :mod:`slimtrain.integrations.transformers` -- ``DynamicWidthCallback`` for the transformers
  ``Trainer`` (``pip install "slimtrain[hf]"``).

Each adds the trade-off term of a :class:`slimtrain.TradeoffLoss` to the framework's loss, logs the
widths, cost and budget to the framework's loggers, settles the widths on a schedule, keeps its state in
the framework's checkpoints and writes :func:`slimtrain.export` of the model at the end. Importing this
package imports neither framework; importing one of its modules imports that framework (and names
the extra to install when it is missing).
"""
from ._common import IntegrationError, load_export

__all__ = ["IntegrationError", "load_export"]
