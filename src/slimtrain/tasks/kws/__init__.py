"""Keyword spotting, the third study: synthetic keywords (:mod:`.data`), a CNN or GRU (:mod:`.models`),
accuracy; training, sweep and command come from the skeleton (:mod:`slimtrain.tasks.study`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from ..study import Metric, Study, StudyConfig, register_builder, study_command
from ..study.config import check_ints
from .data import build_data
from .models import FAMILIES, build_model, evaluate

__all__ = ["KwsConfig", "STUDY", "register"]


@dataclass
class KwsConfig(StudyConfig):
    """A keyword-spotting run: the shared settings plus the data's size and the front end's mel bands."""

    family: str = "cnn"
    width: int = 32
    n_mels: int = 32
    n_keywords: int = 6
    train_per_class: int = 64
    test_per_class: int = 32
    epochs: int = 12
    alpha: float = 0.3

    FAMILIES: ClassVar[tuple[str, ...]] = FAMILIES
    SWEEP: ClassVar[dict] = {"alphas": (0.1, 0.2, 0.3, 1.0), "kappas": (0.125,), "fixed_widths": (8, 16, 32)}
    QUICK: ClassVar[dict] = {"width": 8, "n_mels": 16, "train_per_class": 16, "test_per_class": 8, "epochs": 3,
                             "batch_size": 16}

    def check(self) -> None:
        check_ints(self, ("n_mels", "train_per_class", "test_per_class"), 1)
        check_ints(self, ("n_keywords",), 2)


STUDY = Study(
    name="kws", config=KwsConfig, build_data=build_data, build_model=build_model, evaluate=evaluate,
    model_kwargs=lambda cfg, width: {"family": cfg.family, "width": width, "n_mels": cfg.n_mels,
                                     "classes": cfg.n_keywords + 1},
    task_loss=F.cross_entropy, metrics=(Metric("accuracy", True), Metric("macro_f1", True)), module=__name__,
    help="the keyword-spotting study: a CNN/GRU on synthetic keywords with learned widths, or --sweep",
    description="Keyword spotting on synthetic keywords (three vowel-like syllables each, random pitch, timing, "
                "level and noise at -10 to 10 dB SNR, 8 kHz; plus a no-keyword class), made from --seed with no "
                "download. A log-mel CNN or GRU gets DCLs on the mel bands and every hidden width, trained on "
                "cross-entropy + alpha * FLOPs(K)/FLOPs(full); metrics: accuracy and macro F1 on the test clips.")
register_builder(STUDY)
register = study_command(STUDY)
