"""The skeleton every case study shares: a study keeps only its data, models and metrics.

* :mod:`.spec` -- :class:`Study` (what differs between studies) and :class:`Metric` (with its direction);
* :mod:`.config` -- :class:`TrainConfig` (the training settings every run shares, named errors) and
  :class:`StudyConfig` (+ width and DCL control, as the skeleton trains);
* :mod:`.train` -- one run on :func:`slimtrain.train.training.fit`: DCL or fixed width, export, metrics, checkpoint;
* :mod:`.sweep` -- (method, alpha/budget, kappa_min) rows x seeds on :mod:`slimtrain.train.sweep_engine`, run as
  phases (:class:`~.sweep.Phase`: a later phase's jobs come from the earlier rows), as the VAD and
  anti-spoofing sweeps run;
* :mod:`.cli` -- the shared options (:func:`add_options`) and ``slimtrain NAME [--sweep]`` (:func:`study_command`).

A new study is one small folder: a :class:`StudyConfig` subclass, ``build_data``, ``build_model`` and
``evaluate``, one :class:`Study` named ``STUDY`` and a ``register = study_command(STUDY)`` (see
``slimtrain.tasks.kws`` and docs/architecture-studies.md).
"""
from .cli import add_options, study_command
from .config import StudyConfig, StudyConfigError, TrainConfig
from .spec import Metric, Split, Study, StudyData
from .train import register_builder, train_run

__all__ = ["Study", "Metric", "Split", "StudyData", "StudyConfig", "StudyConfigError", "TrainConfig", "add_options",
           "study_command", "train_run", "register_builder"]
