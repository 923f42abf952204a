"""Voice activity detection for users: load a model, get frame probabilities, speech segments, or stream.

```python
from slimtrain import vad
model = vad.load()                                  # the shipped models: 8 kHz (vad_default.pt) and 16 kHz (vad_16k.pt)
probs = model.frame_probs(audio, sample_rate)       # one speech probability per 10 ms frame
segs = model.speech_timestamps(audio, sample_rate)  # [{"start": s, "end": e}, ...] in seconds
stream = model.stream(sample_rate)                  # feed chunks of any size, get probabilities as frames complete
```

``audio`` is a numpy array or torch tensor, float (nominal range [-1, 1]) or int16/int32 PCM,
mono ``(samples,)`` or multi-channel ``(channels, samples)`` / ``(samples, channels)`` (the
channel axis is the one with at most 8 entries that is shorter than the other; channels are
averaged). Any sample rate: it is resampled to the rate of the model it runs through,
``model.for_rate(rate).sample_rate`` (the shipped pair: 16 kHz for input above 8 kHz, else 8 kHz; a
model trained with ``slimtrain vad --sample-rate 16000``: 16 kHz), with
``scipy.signal.resample_poly`` (Kaiser window, beta 5); a stream resamples with carried state and
gives exactly the same samples (:class:`slimtrain.audio.io.StreamingResampler`).

**Rates.** A model runs at the rate it was trained at, nothing else. Two models are shipped, as Silero
VAD runs at both rates: ``vad_default.pt`` runs at 8 kHz (telephone band) and ``vad_16k.pt`` at
16 kHz (wideband). ``vad.load()`` serves both: audio above 8 kHz (16, 22.05, 44.1, 48 kHz...) goes
to the 16 kHz model (resampled to 16 kHz, so its band up to 8 kHz is used), audio at 8 kHz or below to
the 8 kHz model; wideband input is never downsampled to 8 kHz. ``model.for_rate(rate)`` is the model
that input at ``rate`` runs through (its ``sample_rate`` says which), ``model.sample_rates`` the rates
served. ``vad.load(sample_rate=8000)`` or ``vad.load(sample_rate=16000)`` loads one of the two alone:
a single-rate model resamples everything to its ``sample_rate`` (the 8 kHz model given 16 kHz audio
downsamples it and never sees the band above 4 kHz; a 16 kHz model given 8 kHz audio upsamples it, the
band above 4 kHz then empty) -- check ``model.resamples(rate)``.

Frame ``t`` is centred on ``t * 10 ms`` of the input and covers ``[(t - 0.5) * 10, (t + 0.5) * 10]``
ms; there are ``samples // hop + 1`` frames at the model rate (hop = ``sample_rate // 100``). The
model looks half its STFT window ahead (32 ms windows: 16 ms).

Bad input raises :class:`AudioInputError` (empty, NaN/Inf, wrong number of dimensions, unknown
dtype, bad sample rate, shorter than half the STFT window: 129 samples at 8 kHz, 257 at 16 kHz) naming the call.

This module is a thin facade over :mod:`slimtrain.tasks.vad` (models and streaming) and
:mod:`slimtrain.apps.shipped` (the on-disk format).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from ...audio.io import AudioInputError, StreamingResampler, as_mono_float, check_rate, resample_to, to_float

__all__ = ["VAD", "VADStream", "AudioInputError", "load", "default_model_path", "probs_to_segments",
           "MODEL_SAMPLE_RATE", "FRAME_SECONDS", "SHIPPED_RATES"]

MODEL_SAMPLE_RATE = 8000
#: the shipped models by the rate they run at (files in ``slimtrain/assets``)
SHIPPED_RATES = {8000: "vad_default.pt", 16000: "vad_16k.pt"}
FRAME_SECONDS = 0.01
_LONG_SECONDS = 600  # above 10 min, frame_probs runs the CRNN in streamed blocks (same result)
PathLike = Union[str, os.PathLike]


def _check_shipped_rate(sample_rate: Any, where: str) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or int(sample_rate) not in SHIPPED_RATES:
        raise ValueError(f"{where}: sample_rate must be one of the shipped models' rates "
                         f"{', '.join(map(str, SHIPPED_RATES))} (Hz), got {sample_rate!r}")
    return int(sample_rate)


def default_model_path(sample_rate: int = MODEL_SAMPLE_RATE) -> Path:
    """Path of the shipped model for ``sample_rate`` inside the installed package: ``vad_default.pt``
    (8000, the default) or ``vad_16k.pt`` (16000)."""
    from importlib.resources import files

    rate = _check_shipped_rate(sample_rate, "vad.default_model_path")
    return Path(str(files("slimtrain") / "assets" / SHIPPED_RATES[rate]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))).astype(np.float32)


def _logit_to_prob(t: Optional[float]) -> Optional[float]:
    return None if t is None or not math.isfinite(t) else float(1.0 / (1.0 + math.exp(-t)))


# -- segments -------------------------------------------------------------------------------------------
def probs_to_segments(probs: np.ndarray, threshold: float = 0.5, *, neg_threshold: Optional[float] = None,
                      min_speech_ms: float = 250.0, min_silence_ms: float = 100.0, speech_pad_ms: float = 30.0,
                      duration: Optional[float] = None, frame_seconds: float = FRAME_SECONDS) -> list[dict]:
    """Speech segments ``[{"start": s, "end": e}]`` (seconds) from frame probabilities, like Silero's
    ``get_speech_timestamps``.

    A segment starts at the first frame with ``prob >= threshold`` and ends once the probability
    has stayed below ``neg_threshold`` (default ``max(threshold - 0.15, threshold / 2)``, a hysteresis) for
    ``min_silence_ms``; its end is the start of that quiet run. Segments shorter than
    ``min_speech_ms`` are dropped. Each segment is then widened by ``speech_pad_ms`` on both sides;
    where two segments are less than ``2 * speech_pad_ms`` apart, the gap is split between them
    (so segments never overlap). Frame ``t`` covers ``[(t - 0.5) f, (t + 0.5) f]`` seconds, clipped
    to ``[0, duration]`` (default: ``(len(probs) - 0.5) f``).
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"probs_to_segments: threshold must be in [0, 1], got {threshold}")
    neg = max(threshold - 0.15, threshold / 2) if neg_threshold is None else float(neg_threshold)
    if neg > threshold:
        raise ValueError(f"probs_to_segments: neg_threshold {neg} must not exceed threshold {threshold}")
    for name, v in (("min_speech_ms", min_speech_ms), ("min_silence_ms", min_silence_ms),
                    ("speech_pad_ms", speech_pad_ms)):
        if not v >= 0:
            raise ValueError(f"probs_to_segments: {name} must be >= 0, got {v}")
    f = frame_seconds
    end_of_audio = (len(p) - 0.5) * f if duration is None else float(duration)
    min_speech, min_silence, pad = min_speech_ms / 1000, min_silence_ms / 1000, speech_pad_ms / 1000

    def edge(t: int) -> float:  # boundary between frame t - 1 and frame t
        return min(max((t - 0.5) * f, 0.0), end_of_audio)

    raw: list[list[float]] = []
    start: Optional[float] = None
    quiet_from: Optional[int] = None
    for t, v in enumerate(p):
        if start is None:
            if v >= threshold:
                start, quiet_from = edge(t), None
            continue
        if v >= threshold:
            quiet_from = None
        elif v < neg:
            if quiet_from is None:
                quiet_from = t
            if edge(t + 1) - edge(quiet_from) >= min_silence:
                if edge(quiet_from) - start >= min_speech:
                    raw.append([start, edge(quiet_from)])
                start, quiet_from = None, None
    if start is not None:
        end = edge(quiet_from) if quiet_from is not None else end_of_audio
        if end - start >= min_speech:
            raw.append([start, end])
    for i, seg in enumerate(raw):
        if i == 0:
            seg[0] = max(0.0, seg[0] - pad)
        if i + 1 < len(raw):
            gap = raw[i + 1][0] - seg[1]
            if gap < 2 * pad:
                seg[1] += gap / 2
                raw[i + 1][0] -= gap / 2
            else:
                seg[1] += pad
                raw[i + 1][0] -= pad
        else:
            seg[1] = min(end_of_audio, seg[1] + pad)
    return [{"start": round(a, 3), "end": round(b, 3)} for a, b in raw]


def _model_rate(model: nn.Module) -> Optional[int]:
    """The rate of a VAD's front-end: its ``sample_rate``, or for a TorchScript model (no plain attributes)
    the rate whose 32 ms window has the filterbank's ``n_fft`` (256: 8 kHz, 512: 16 kHz)."""
    fe = getattr(model, "frontend", None)
    if fe is None:
        return None
    rate = getattr(fe, "sample_rate", None)
    if isinstance(rate, int):
        return rate
    fbank = getattr(fe, "fbank", None)
    if isinstance(fbank, torch.Tensor) and fbank.dim() == 2:
        return (fbank.shape[1] - 1) * 2 * 1000 // 32
    return None


# -- the model facade ---------------------------------------------------------------------------------
class VAD:
    """A loaded VAD model (see the module docstring). ``threshold`` is a speech probability."""

    frame_seconds = FRAME_SECONDS

    def __init__(self, model: nn.Module, *, threshold: Optional[float] = None, meta: Optional[dict] = None,
                 source: str = "<model>", sample_rate: Optional[int] = None) -> None:
        self.model = model.eval()
        #: the rate the model runs at (Hz); input at any other rate is resampled to it (module docstring)
        self.sample_rate = int(_model_rate(model) or sample_rate or MODEL_SAMPLE_RATE)
        self.meta = dict(meta or {})
        self.source = source
        #: default decision threshold (probability): the validation EER point recorded at training, else 0.5
        self.threshold = 0.5 if threshold is None else float(threshold)
        #: a higher-rate model that input above :attr:`sample_rate` runs through instead (see :meth:`for_rate`)
        self.wideband: Optional["VAD"] = None

    def __repr__(self) -> str:
        wide = f", wideband={self.wideband!r}" if self.wideband is not None else ""
        return (f"VAD(source={self.source!r}, sample_rate={self.sample_rate}, threshold={self.threshold:.3f}, "
                f"streaming={self.can_stream}{wide})")

    def with_wideband(self, wideband: "VAD") -> "VAD":
        """Serve input above :attr:`sample_rate` with ``wideband`` (a model at a higher rate); returns self."""
        if not isinstance(wideband, VAD) or wideband.wideband is not None:
            raise ValueError(f"with_wideband: expected a single-rate VAD, got {wideband!r}")
        if wideband.sample_rate <= self.sample_rate:
            raise ValueError(f"with_wideband: {wideband.source} runs at {wideband.sample_rate} Hz, not above this "
                             f"model's {self.sample_rate} Hz")
        self.wideband = wideband
        return self

    @property
    def sample_rates(self) -> tuple[int, ...]:
        """The rates of the models this VAD runs (one, or the narrowband and the wideband model's)."""
        return (self.sample_rate,) + (self.wideband.sample_rates if self.wideband is not None else ())

    def for_rate(self, sample_rate: int) -> "VAD":
        """The single-rate model that audio at ``sample_rate`` runs through: the wideband model for input
        above this model's rate (so wideband input is never downsampled to it), else this one."""
        sr = check_rate(sample_rate, "vad.for_rate")
        if self.wideband is None:
            return self
        if sr > self.sample_rate:
            return self.wideband.for_rate(sr)
        return VAD(self.model, threshold=self.threshold, meta=self.meta, source=self.source,
                   sample_rate=self.sample_rate)  # this model alone (its current threshold)

    def resamples(self, sample_rate: int) -> Optional[str]:
        """``"down"`` or ``"up"`` if audio at ``sample_rate`` is resampled before the model it runs through
        (:meth:`for_rate`), else ``None``."""
        sr = check_rate(sample_rate, "vad.resamples")
        rate = self.for_rate(sr).sample_rate
        return None if sr == rate else ("down" if sr > rate else "up")

    def _min_samples(self) -> int:
        from .models import min_samples

        if getattr(self.model, "frontend", None) is not None:
            return min_samples(self.model)
        return 32 * self.sample_rate // 1000 // 2 + 1  # a TorchScript model: this package's 32 ms window

    @property
    def can_stream(self) -> bool:
        from .models import CRNNVAD

        return isinstance(self.model, CRNNVAD)

    def _prepare(self, audio: Any, sample_rate: Any, where: str) -> np.ndarray:
        sr = check_rate(sample_rate, where)
        x = resample_to(as_mono_float(audio, where), sr, self.sample_rate)
        need = self._min_samples()
        if len(x) < need:
            raise AudioInputError(f"{where}: audio is too short: {len(x)} samples at {self.sample_rate} Hz "
                                  f"(after resampling); the model needs at least {need}")
        return x

    @torch.no_grad()
    def _logits(self, x: np.ndarray) -> np.ndarray:
        long = int(_LONG_SECONDS * self.sample_rate)
        if len(x) > long and self.can_stream:
            from .models import stream_logits

            step = long // 10
            return stream_logits(self.model, (x[i:i + step] for i in range(0, len(x), step)))
        return self.model(torch.from_numpy(x)[None]).reshape(-1).float().numpy()

    def frame_logits(self, audio: Any, sample_rate: int) -> np.ndarray:
        """Speech logits, one per 10 ms frame (float32)."""
        m = self.for_rate(check_rate(sample_rate, "vad.frame_logits"))
        return m._logits(m._prepare(audio, sample_rate, "vad.frame_logits"))

    def frame_probs(self, audio: Any, sample_rate: int) -> np.ndarray:
        """Speech probabilities, one per 10 ms frame (float32; ``samples // hop + 1`` frames at the rate of the
        model the input runs through, :meth:`for_rate`)."""
        m = self.for_rate(check_rate(sample_rate, "vad.frame_probs"))
        return _sigmoid(m._logits(m._prepare(audio, sample_rate, "vad.frame_probs")))

    def speech_timestamps(self, audio: Any, sample_rate: int, *, threshold: Optional[float] = None,
                          neg_threshold: Optional[float] = None, min_speech_ms: float = 250.0,
                          min_silence_ms: float = 100.0, speech_pad_ms: float = 30.0) -> list[dict]:
        """Speech segments ``[{"start": s, "end": e}]`` in seconds (see :func:`probs_to_segments`).

        ``threshold`` defaults to the :attr:`threshold` of the model the input runs through (its validation
        EER point).
        """
        m = self.for_rate(check_rate(sample_rate, "vad.speech_timestamps"))
        x = m._prepare(audio, sample_rate, "vad.speech_timestamps")
        probs = _sigmoid(m._logits(x))
        return probs_to_segments(probs, m.threshold if threshold is None else threshold,
                                 neg_threshold=neg_threshold, min_speech_ms=min_speech_ms,
                                 min_silence_ms=min_silence_ms, speech_pad_ms=speech_pad_ms,
                                 duration=len(x) / m.sample_rate)

    def stream(self, sample_rate: int, channels: int = 1, channels_last: Optional[bool] = None) -> "VADStream":
        """A :class:`VADStream` for audio at ``sample_rate`` with ``channels`` channels per chunk (run by the
        model :meth:`for_rate` picks)."""
        return VADStream(self.for_rate(check_rate(sample_rate, "vad.stream")), sample_rate, channels, channels_last)


class VADStream:
    """Chunk-by-chunk speech probabilities, equal to :meth:`VAD.frame_probs` of the whole signal.

    ``feed(chunk)`` returns the probabilities of the frames completed so far (possibly none);
    ``flush()`` ends the stream and returns the rest. Chunks may have any length (also 0 or 1
    sample). A chunk with ``channels > 1`` is ``(channels, n)`` or ``(n, channels)``; its channels are
    averaged. The layout is ``channels_last`` if given, else it is taken from the first chunk whose shape
    tells it and kept (a later square chunk such as ``(2, 2)`` follows it; before any such chunk, a square
    chunk is read channels-first). A chunk in the other layout is an error.
    """

    def __init__(self, vad: VAD, sample_rate: int, channels: int = 1, channels_last: Optional[bool] = None) -> None:
        from .models import CRNNStream, StreamingError

        self.sample_rate = check_rate(sample_rate, "vad.stream")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise AudioInputError(f"vad.stream: channels must be a positive integer, got {channels!r}")
        self.channels = channels
        #: layout of multi-channel chunks; None = taken from the first chunk whose shape tells it
        self.channels_last = channels_last
        if not vad.can_stream:
            raise StreamingError(f"vad.stream: {vad.source} holds a {type(vad.model).__name__}, which has no "
                                 "streaming runner (only the CRNN streams; a Transformer's key/value cache grows "
                                 "with the stream, and a TorchScript model exposes no state)")
        self._resampler = StreamingResampler(self.sample_rate, vad.sample_rate)
        self._model = CRNNStream(vad.model)
        self.frames = 0

    def _mono(self, chunk: Any) -> np.ndarray:
        where = "VADStream.feed"
        x = to_float(chunk, where)
        if self.channels == 1:
            if x.ndim == 2 and 1 in x.shape:
                x = x.reshape(-1)
            if x.ndim != 1:
                raise AudioInputError(f"{where}: a mono stream takes 1-D chunks, got shape {tuple(x.shape)} "
                                      "(open the stream with channels=N for multi-channel chunks)")
            return x
        if x.ndim != 2 or self.channels not in x.shape:
            raise AudioInputError(f"{where}: expected chunks of shape ({self.channels}, n) or (n, {self.channels}), "
                                  f"got {tuple(x.shape)}")
        if x.shape[0] != x.shape[1]:
            last = x.shape[1] == self.channels
            if self.channels_last is not None and last != self.channels_last:
                raise AudioInputError(f"{where}: chunk of shape {tuple(x.shape)} changes the channel layout of "
                                      f"this stream ({'(n, channels)' if self.channels_last else '(channels, n)'})")
            self.channels_last = last
        x = x.T if self.channels_last else x  # a square chunk keeps the stream's layout (channels-first if unknown)
        return x.mean(axis=0).astype(np.float32)

    def feed(self, chunk: Any) -> np.ndarray:
        """Probabilities of the frames that ``chunk`` completes (float32, possibly empty)."""
        y = self._resampler.feed(self._mono(chunk))
        out = _sigmoid(self._model.feed(y)) if len(y) else np.zeros(0, dtype=np.float32)
        self.frames += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of stream: the probabilities of the remaining frames."""
        y = self._resampler.flush()
        head = self._model.feed(y) if len(y) else np.zeros(0, dtype=np.float32)
        out = _sigmoid(np.concatenate([head, self._model.flush()]))
        self.frames += len(out)
        return out


# -- loading --------------------------------------------------------------------------------------------
def _build_plain(builder: dict) -> nn.Module:
    from .models import build_vad_model

    kw = dict(builder)
    return build_vad_model(kw.pop("family"), kw.pop("n_mels"), **kw)


def load(path: Optional[PathLike] = None, *, sample_rate: Optional[int] = None) -> VAD:
    """Load a VAD: the shipped models (no ``path``), a shipped ``.pt`` (with its ``.json``), a slimtrain
    checkpoint (``slimtrain vad`` writes ``OUT/vad_FAMILY.pt``; cut to its learned widths), a folder
    written by ``slimtrain export`` or its TorchScript ``model.pt`` (TorchScript cannot stream).

    Without ``path``: both shipped models, the 8 kHz one serving input at 8 kHz or below and the 16 kHz one
    input above 8 kHz (:meth:`VAD.for_rate`); ``sample_rate=8000`` or ``16000`` loads that one alone. With
    ``path``, ``sample_rate`` (if given) must be the rate the model runs at."""
    if sample_rate is not None:
        sample_rate = _check_shipped_rate(sample_rate, "vad.load")
    if path is None:
        if sample_rate is not None:
            return _load_one(default_model_path(sample_rate), shipped_default=True)
        narrow = _load_one(default_model_path(8000), shipped_default=True)
        wide_path = default_model_path(16000)
        return narrow.with_wideband(_load_one(wide_path, shipped_default=True)) if wide_path.is_file() else narrow
    model = _load_one(Path(path))
    if sample_rate is not None and model.sample_rate != sample_rate:
        raise ValueError(f"vad.load: {path} runs at {model.sample_rate} Hz, not at the sample_rate={sample_rate} "
                         "asked for")
    return model


def _load_one(p: Path, shipped_default: bool = False) -> VAD:
    from ...train.checkpoint import CheckpointError, load_exported, load_for_inference
    from ..shipped import ShippedModelError, is_shipped, load_shipped

    if p.is_dir():
        model = load_exported(p)
        thr = rate = None
        try:
            summary = json.loads((p / "summary.json").read_text())
            thr = summary.get("threshold")
            rate = (summary.get("recipe") or {}).get("kwargs", {}).get("sample_rate")
        except (OSError, ValueError, AttributeError):
            pass
        return VAD(model, threshold=_logit_to_prob(thr), source=str(p), sample_rate=rate)
    if not p.is_file():
        raise CheckpointError(f"model file not found: {p}" + (" (the shipped model is missing from this install)"
                                                               if shipped_default else ""))
    if is_shipped(p):
        try:
            model, meta = load_shipped(p, "vad", _build_plain)
        except ShippedModelError as e:
            raise CheckpointError(str(e)) from None
        return VAD(model, threshold=meta.get("threshold"), meta=meta, source=str(p))
    model, ckpt = load_for_inference(p, "vad")
    thr = (ckpt or {}).get("extra", {}).get("metrics", {}).get("threshold")
    return VAD(model, threshold=_logit_to_prob(None if thr is None else float(thr)),
               meta=(ckpt or {}).get("extra", {}), source=str(p))
