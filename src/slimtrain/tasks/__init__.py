"""Case studies built on the slimtrain core.

Importing this package registers each task's model builder with
:func:`slimtrain.train.checkpoint.register_task`, so :func:`slimtrain.train.checkpoint.load_dynamic_model`
can rebuild their checkpoints.

* :mod:`slimtrain.tasks.synthetic` -- a regression problem whose needed width is known.
* :mod:`slimtrain.tasks.vad` -- voice activity detection on Asterisk prompts mixed with noise.
* :mod:`slimtrain.tasks.spoof` -- bona fide vs synthetic speech with unseen attacks.
* :mod:`slimtrain.tasks.kws` -- keyword spotting on synthetic keywords, built only from the skeleton
  :mod:`slimtrain.tasks.study` that the studies share.
* :mod:`slimtrain.tasks.baselines` -- torch-pruning and hard-concrete gate baselines.
"""
from . import synthetic  # noqa: F401  (registers the "synthetic" builder)
from . import vad  # noqa: F401  (registers the "vad" builder)
from . import spoof  # noqa: F401  (registers the "spoof" builder)
from . import kws  # noqa: F401  (registers the "kws" builder)

__all__ = ["synthetic", "vad", "spoof", "kws"]
