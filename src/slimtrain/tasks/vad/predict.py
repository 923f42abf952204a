"""Speech segments of a WAV file from a trained or exported VAD model.

``MODEL`` is a slimtrain VAD checkpoint (dynamic or fixed; cut to its learned widths here) or a
TorchScript file written by ``slimtrain export``. The WAV is read as mono (channels averaged) and,
if its rate is not 8 kHz, resampled with a polyphase FIR (``scipy.signal.resample_poly``, Kaiser
window beta 5; see :func:`slimtrain.tasks.audio.resample`). A frame (10 ms hop) is speech when its
logit is at or above the threshold (default: the validation EER threshold stored in the
checkpoint, else 0 = probability 0.5); speech runs shorter than ``min_speech`` are dropped and
gaps shorter than ``min_gap`` are closed.

The command line (``slimtrain vad predict``) and the public API (:mod:`slimtrain.vad`) now use
:func:`slimtrain.vad.probs_to_segments` (Silero-style hysteresis, minimum durations and padding);
these helpers stay for code that called them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ...train.checkpoint import CheckpointError, load_for_inference
from ..audio import read_audio

__all__ = ["load_vad_for_inference", "frames_to_segments", "predict_segments", "PredictError"]

SAMPLE_RATE = 8000
HOP_SECONDS = 0.01


class PredictError(ValueError):
    """The model or audio cannot be used for prediction (the message names the file)."""


def load_vad_for_inference(path: str | Path) -> tuple[nn.Module, Optional[float]]:
    """``(plain model in eval mode, stored threshold or None)`` from a VAD checkpoint or TorchScript file."""
    try:
        model, ckpt = load_for_inference(path, "vad")
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    thr = (ckpt or {}).get("extra", {}).get("metrics", {}).get("threshold")
    return model, (float(thr) if thr is not None and math.isfinite(float(thr)) else None)


def frames_to_segments(speech: np.ndarray, hop_seconds: float = HOP_SECONDS, min_speech: float = 0.1,
                       min_gap: float = 0.1) -> list[tuple[float, float]]:
    """Runs of speech frames as ``(start, end)`` seconds; frame ``t`` covers ``[(t - 0.5) hop, (t + 0.5) hop]``."""
    s = np.asarray(speech, dtype=bool)
    segs: list[list[float]] = []
    t = 0
    while t < len(s):
        if s[t]:
            u = t
            while u < len(s) and s[u]:
                u += 1
            start, end = max(0.0, (t - 0.5) * hop_seconds), (u - 0.5) * hop_seconds
            if segs and start - segs[-1][1] < min_gap:
                segs[-1][1] = end
            else:
                segs.append([start, end])
            t = u
        else:
            t += 1
    return [(round(a, 3), round(b, 3)) for a, b in segs if b - a >= min_speech]


@torch.no_grad()
def predict_segments(model: nn.Module, wav_path: str | Path, threshold: float = 0.0, min_speech: float = 0.1,
                     min_gap: float = 0.1) -> tuple[list[tuple[float, float]], float]:
    """Speech segments of ``wav_path`` and its duration in seconds."""
    x, _ = read_audio(wav_path, SAMPLE_RATE)
    if len(x) < 256:
        raise PredictError(f"audio file {wav_path} is too short ({len(x)} samples at 8 kHz; need >= 256)")
    duration = len(x) / SAMPLE_RATE
    logits = model(torch.from_numpy(x)[None]).reshape(-1).numpy()
    segs = frames_to_segments(logits >= threshold, HOP_SECONDS, min_speech, min_gap)
    return [(a, min(b, round(duration, 3))) for a, b in segs], duration
