"""Anti-spoofing countermeasure for users: load a model and score audio (higher = bona fide).

```python
from slimtrain import spoof
cm = spoof.load()                      # the shipped model (src/slimtrain/assets/spoof_default.pt)
s = cm.score(audio, sample_rate)       # float; > 0 leans bona fide, < 0 leans spoofed
```

``audio`` follows the same conventions as :mod:`slimtrain.vad`: numpy array or torch tensor, float
or int16/int32 PCM, mono or ``(channels, samples)`` / ``(samples, channels)`` (channels averaged),
any sample rate, resampled with ``scipy.signal.resample_poly`` to the rate the model runs at,
:attr:`Countermeasure.sample_rate`: 8 kHz for the shipped model and the built-in corpus' models, the
rate it was trained at (8 or 16 kHz) for a model trained on your corpus (``slimtrain spoof
--train-data``): a 16 kHz model scores wideband input at 16 kHz, never downsampled (narrowband input
is upsampled, with a warning: it has no content above its Nyquist frequency).

Built-in corpus models: the recording goes through the deterministic part of the training cue
removal (band-pass, silence trim, -24 dBFS) and is cut into clips of the training length with 50 %
overlap (a shorter recording is centred in silence). Corpus-trained models (``preprocess ==
"none"``): the raw recording is cut into clips of the training crop length with 50 % overlap (a
shorter one is repeated end to end, as in training). The score is the mean clip logit. 0 is the
training decision boundary, not a tuned threshold. Bad input raises :class:`AudioInputError`
naming the call.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ...audio.io import AudioInputError, as_mono_float, check_rate, resample_to

__all__ = ["Countermeasure", "AudioInputError", "load", "default_model_path", "MODEL_SAMPLE_RATE"]

MODEL_SAMPLE_RATE = 8000
PathLike = Union[str, os.PathLike]


def default_model_path() -> Path:
    """Path of the shipped countermeasure ``spoof_default.pt`` inside the installed package."""
    from importlib.resources import files

    return Path(str(files("slimtrain") / "assets" / "spoof_default.pt"))


class Countermeasure:
    """A loaded countermeasure; :meth:`score` gives one bona fide score per recording.

    ``sample_rate``: the rate the model runs at (input is resampled to it); ``preprocess``: ``"cue"``
    (the built-in corpus' cue removal) or ``"none"`` (raw clips, models trained on a user corpus)."""

    def __init__(self, model: nn.Module, clip_samples: int, *, meta: Optional[dict] = None,
                 source: str = "<model>", sample_rate: int = MODEL_SAMPLE_RATE, preprocess: str = "cue") -> None:
        if clip_samples < 1:
            raise ValueError(f"clip_samples must be >= 1, got {clip_samples}")
        if preprocess not in ("cue", "none"):
            raise ValueError(f"preprocess must be 'cue' or 'none', got {preprocess!r}")
        self.model = model.eval()
        self.clip_samples = int(clip_samples)
        self.meta = dict(meta or {})
        self.source = source
        self.sample_rate = int(sample_rate)
        self.preprocess = preprocess

    def __repr__(self) -> str:
        return (f"Countermeasure(source={self.source!r}, sample_rate={self.sample_rate}, "
                f"clip_seconds={self.clip_samples / self.sample_rate:g})")

    def resamples(self, sample_rate: int) -> Optional[str]:
        """``"down"``, ``"up"`` or ``None``: what :meth:`score` does to input at ``sample_rate``."""
        sr = check_rate(sample_rate, "spoof.resamples")
        return None if sr == self.sample_rate else ("down" if sr > self.sample_rate else "up")

    @torch.no_grad()
    def clip_scores(self, audio: Any, sample_rate: int) -> np.ndarray:
        """Logit of every clip of the prepared recording (see the module docstring)."""
        from .preprocess import prepare

        where = "spoof.score"
        sr = check_rate(sample_rate, where)
        if sr < self.sample_rate and self.preprocess == "none":
            warnings.warn(f"{where}: {sr} Hz audio is upsampled to the model's {self.sample_rate} Hz; it has no content "
                          f"above {sr / 2:g} Hz, unlike the model's training data", stacklevel=3)
        x = resample_to(as_mono_float(audio, where), sr, self.sample_rate)
        if not np.any(x):
            raise AudioInputError(f"{where}: audio is all zeros (digital silence); there is nothing to score")
        if self.preprocess == "none":
            from ...audio.data.spoof_corpus import clips_of

            clips = torch.from_numpy(np.ascontiguousarray(clips_of(x, self.clip_samples), dtype=np.float32))
        else:
            clips = torch.from_numpy(np.clip(prepare(x, self.clip_samples), -1, 1))
        return self.model(clips).reshape(-1).float().numpy()

    def score(self, audio: Any, sample_rate: int) -> float:
        """Bona fide score of one recording: the mean clip logit (higher = bona fide)."""
        return float(np.mean(self.clip_scores(audio, sample_rate)))


def _build_plain(builder: dict) -> nn.Module:
    from .models import build_resnet

    kw = dict(builder)
    kw["blocks"] = tuple(kw["blocks"])
    return build_resnet(**kw)


def load(path: Optional[PathLike] = None) -> Countermeasure:
    """Load a countermeasure: the shipped model (no argument), a shipped ``.pt``, a checkpoint written by
    ``slimtrain spoof`` (cut to its learned widths) or a TorchScript ``model.pt`` of ``slimtrain export``."""
    from ...train.checkpoint import CheckpointError
    from ..shipped import ShippedModelError, is_shipped, load_shipped

    p = default_model_path() if path is None else Path(path)
    if not p.is_file():
        raise CheckpointError(f"model file not found: {p}" + (" (the shipped model is missing from this "
                                                                   "install)" if path is None else ""))
    if is_shipped(p):
        try:
            model, meta = load_shipped(p, "spoof", _build_plain)
        except ShippedModelError as e:
            raise CheckpointError(str(e)) from None
        return Countermeasure(model, int(meta["clip_samples"]), meta=meta, source=str(p))
    from ...train.checkpoint import load_for_inference

    model, ckpt = load_for_inference(p, "spoof")
    if ckpt is None:  # TorchScript export: the clip length is not stored; 1 s at 8 kHz
        return Countermeasure(model, MODEL_SAMPLE_RATE, source=str(p))
    inp = ckpt.get("extra", {}).get("input", {})
    rate = int(inp.get("sample_rate", ckpt["recipe"]["kwargs"].get("sample_rate", MODEL_SAMPLE_RATE)))
    return Countermeasure(model, int(ckpt["recipe"]["sample_shape"][-1]), source=str(p), sample_rate=rate,
                          preprocess=str(inp.get("preprocess", "cue")), meta=inp)
