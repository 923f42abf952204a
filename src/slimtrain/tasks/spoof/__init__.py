"""Anti-spoofing case study: bona fide Asterisk prompts against seven offline attack families,
a ResNet34-style countermeasure with dynamic residual stages, EER on unseen attacks.

* :mod:`.attacks` -- one generator per attack family (A1-A7);
* :mod:`.data` -- protocol, cue removal, cache + manifest, the shortcut test;
* :mod:`.models` -- ``build_resnet`` and the per-stage DCL selection;
* :mod:`.train` -- one run (dynamic, fixed width or pruned) and its EERs;
* :mod:`.sweep` -- the paper's stage x kappa_min grid with baselines, CSV + Pareto PNG;
* :mod:`.score` -- scoring audio files with a trained model;
* :mod:`.cli` -- ``slimtrain data spoof``, ``slimtrain spoof``, ``slimtrain spoof score``.

Importing the package registers the ``"spoof"`` checkpoint builder.
"""
from . import train as _train  # noqa: F401  (registers the "spoof" builder)
from ...apps.spoof.models import build_resnet

__all__ = ["build_resnet"]
