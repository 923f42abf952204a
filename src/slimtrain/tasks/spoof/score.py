"""Score audio files with a trained countermeasure: one bona fide score per file.

A file is read at 8 kHz, passed through the deterministic part of the training cue removal
(band-pass, silence trim, -24 dBFS level), cut into clips of the training length with 50 %
overlap (a shorter file is centred in silence) and the clip logits are averaged. Higher =
more likely bona fide; the logit 0 is the training decision boundary, not a tuned threshold.
"""
from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from ..audio import read_audio
from ...apps.spoof.preprocess import prepare
from .data import SR

__all__ = ["load_scorer", "score_files", "prepare"]

PathLike = Union[str, os.PathLike]


def load_scorer(path: PathLike) -> tuple[nn.Module, int]:
    """A plain scoring model and its clip length in samples, from a slimtrain checkpoint (exported to
    its learned widths) or a TorchScript file written by ``slimtrain export`` (clip length then 1 s)."""
    from ...train.checkpoint import load_for_inference

    model, ckpt = load_for_inference(path, "spoof")
    return model, (int(ckpt["recipe"]["sample_shape"][-1]) if ckpt is not None else SR)


@torch.no_grad()
def score_files(model: nn.Module, files: Sequence[PathLike], clip: int) -> list[float]:
    """Mean clip logit of each file (:class:`~slimtrain.tasks.audio.AudioError` names a bad file)."""
    out = []
    for f in files:
        x, _ = read_audio(f, SR)
        clips = torch.from_numpy(np.clip(prepare(x, clip), -1, 1))
        out.append(float(model(clips).reshape(-1).mean()))
    return out
