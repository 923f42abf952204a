"""Audio given to the public APIs (:mod:`slimtrain.vad`, :mod:`slimtrain.spoof`): checks, mono, rate.

* :func:`as_mono_float` turns a numpy array or torch tensor (float or integer PCM, mono or
  multi-channel) into mono float32 in [-1, 1], or raises :class:`AudioInputError` naming the call,
  the problem and the shape.
* :func:`resample_to` resamples offline with :func:`scipy.signal.resample_poly` (Kaiser window,
  beta 5), the same resampler as :func:`slimtrain.tasks.audio.resample`.
* :class:`StreamingResampler` gives *the same samples* as :func:`resample_to` on the whole signal
  when fed the signal in chunks of any size: it evaluates the very FIR that ``resample_poly``
  designs (``firwin(20 * max(up, down) + 1, 1 / max(up, down), ("kaiser", 5.0)) * up``, zero
  padding outside the signal) one output sample at a time as soon as its input samples are there,
  and the rest at :meth:`StreamingResampler.flush`. Only float64 summation order differs (about
  1e-16), which the test checks.

Channel layout of a 2-D input: the channel axis is the one of size <= 8 that is smaller than the
other (``(channels, samples)`` or ``(samples, channels)``); channels are averaged. A 2-D input where
neither axis qualifies is an error, not a guess.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["AudioInputError", "MAX_CHANNELS", "AUDIO_SUFFIXES", "expand_audio_paths", "to_float", "as_mono_float",
           "check_rate", "resample_to", "StreamingResampler"]

#: the most channels a 2-D input may have (more means the layout cannot be told apart from samples)
MAX_CHANNELS = 8
_KAISER = ("kaiser", 5.0)


class AudioInputError(ValueError):
    """Audio or a sample rate given to a public API cannot be used (the message names the call)."""


def check_rate(sample_rate: Any, where: str) -> int:
    """``sample_rate`` as a positive int, else :class:`AudioInputError`."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float, np.floating)):
        raise AudioInputError(f"{where}: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if not math.isfinite(float(sample_rate)) or float(sample_rate) != int(sample_rate) or int(sample_rate) <= 0:
        raise AudioInputError(f"{where}: sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def _to_numpy(audio: Any, where: str) -> np.ndarray:
    try:
        import torch

        if isinstance(audio, torch.Tensor):
            return audio.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if isinstance(audio, (list, tuple)):
        audio = np.asarray(audio, dtype=np.float64)
    if not isinstance(audio, np.ndarray):
        raise AudioInputError(f"{where}: audio must be a numpy array or torch tensor, got {type(audio).__name__}")
    return audio


def to_float(audio: Any, where: str) -> np.ndarray:
    """``audio`` as a float32 numpy array of the same shape (int16 / 32768, int32 / 2**31, uint8 centred at
    128 and / 128, float as it is); :class:`AudioInputError` for other dtypes or NaN/Inf samples."""
    x = _to_numpy(audio, where)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = (x.astype(np.float64) / 2.0 ** 31).astype(np.float32)
    elif x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
    else:
        raise AudioInputError(f"{where}: audio dtype {x.dtype} is not supported (use float, int16, int32 or uint8)")
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioInputError(f"{where}: audio contains NaN or Inf (first at flat index {int(np.argmax(bad))} of "
                              f"{x.size})")
    return x


def as_mono_float(audio: Any, where: str, *, allow_empty: bool = False) -> np.ndarray:
    """Mono float32 samples of ``audio`` (see the module docstring for layouts and :func:`to_float` for scaling)."""
    x = to_float(audio, where)
    if x.ndim == 2:
        a, b = x.shape
        if a <= MAX_CHANNELS and a < b:
            x = x.mean(axis=0)
        elif b <= MAX_CHANNELS and b < a:
            x = x.mean(axis=1)
        elif a == 1 or b == 1:
            x = x.reshape(-1)
        else:
            raise AudioInputError(
                f"{where}: cannot tell channels from samples in audio of shape {tuple(x.shape)}; give (samples,), "
                f"(channels, samples) or (samples, channels) with at most {MAX_CHANNELS} channels")
    elif x.ndim != 1:
        raise AudioInputError(f"{where}: audio must be 1-D (samples) or 2-D (channels x samples), got shape "
                              f"{tuple(x.shape)}")
    if x.size == 0 and not allow_empty:
        raise AudioInputError(f"{where}: audio is empty (shape {tuple(np.shape(audio))})")
    return np.ascontiguousarray(x, dtype=np.float32)


def _ratio(orig_sr: int, new_sr: int) -> tuple[int, int]:
    f = Fraction(int(new_sr), int(orig_sr))
    return f.numerator, f.denominator


def resample_to(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """``x`` at ``new_sr`` (float32): ``scipy.signal.resample_poly`` with a Kaiser (beta 5) window."""
    if orig_sr == new_sr:
        return np.asarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    up, down = _ratio(orig_sr, new_sr)
    return resample_poly(np.asarray(x, dtype=np.float64), up, down, window=_KAISER).astype(np.float32)


class StreamingResampler:
    """Chunked version of :func:`resample_to` with carried state (equal outputs, see the module doc)."""

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        self.up, self.down = _ratio(orig_sr, new_sr)
        self.identity = self.up == self.down == 1
        self._x = np.zeros(0, dtype=np.float64)  # input samples still needed
        self._x0 = 0  # absolute index of self._x[0]
        self._n_in = 0  # samples received
        self._m = 0  # next output index
        if self.identity:
            return
        from scipy.signal import firwin

        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=_KAISER) * self.up
        pre = self.down - half_len % self.down
        self._shift = (half_len + pre) // self.down  # resample_poly's n_pre_remove
        hp = np.concatenate([np.zeros(pre), h])
        self._q = -(-len(hp) // self.up)  # taps per output
        self._h = np.concatenate([hp, np.zeros(self._q * self.up + self.up - len(hp))])
        self._hlen = len(hp)

    def _last_input(self, m: int) -> int:
        return ((m + self._shift) * self.down) // self.up  # newest input index output m uses

    def _emit(self, stop: int) -> np.ndarray:
        """Outputs ``self._m .. stop-1`` from the buffered input (zeros beyond what was received).

        ``upfirdn`` on the buffered segment gives the same sums as on the whole signal when the
        segment starts at a multiple of ``down`` (then its output grid is the whole signal's, shifted).
        """
        from scipy.signal import upfirdn

        if stop <= self._m:
            return np.zeros(0, dtype=np.float32)
        j0, j1 = self._m + self._shift, stop - 1 + self._shift  # rows of the full upfirdn output
        i_hi = min(self._last_input(stop - 1), self._n_in - 1)
        off = self._x0 * self.up // self.down
        seg = self._x[: i_hi + 1 - self._x0]
        full = upfirdn(self._h[: self._hlen], seg, self.up, self.down) if len(seg) else np.zeros(0)
        y = full[j0 - off: j1 - off + 1]
        if len(y) < stop - self._m:  # outputs whose inputs all lie past the end are zeros
            y = np.concatenate([y, np.zeros(stop - self._m - len(y))])
        self._m = stop
        keep = self._last_input(self._m) - self._q + 1  # oldest input the next output uses ...
        keep = max(self._x0, min(keep, self._n_in) // self.down * self.down)  # ... from a multiple of down
        self._x = self._x[keep - self._x0:]
        self._x0 = keep
        return y.astype(np.float32)

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Resampled samples that are complete after ``x`` (mono float) arrives."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if self.identity:
            self._n_in += len(x)
            return x.astype(np.float32)
        self._x = np.concatenate([self._x, x])
        self._n_in += len(x)
        # output m is complete when its newest input index is < n_in
        stop = (self._n_in * self.up - 1) // self.down - self._shift + 1 if self._n_in else 0
        stop = max(stop, self._m)
        stop = min(stop, self._n_out(self._n_in))
        return self._emit(stop)

    def _n_out(self, n_in: int) -> int:
        return -(-n_in * self.up // self.down)

    def flush(self) -> np.ndarray:
        """The remaining outputs, treating the input as ended (zero padding, as ``resample_poly``)."""
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self._n_out(self._n_in))


#: file name endings taken as audio when a folder is searched (what libsndfile, behind soundfile, reads)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".w64",
                  ".caf", ".rf64")


def expand_audio_paths(paths) -> list[tuple["Path", str | None]]:
    """``[(path, None)]`` for each file and each audio file under each folder (recursive, sorted), and
    ``[(path, reason)]`` for a path that does not exist or a folder without audio files."""
    from pathlib import Path

    out: list[tuple[Path, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                out.append((p, f"folder {p} holds no audio files ({', '.join(AUDIO_SUFFIXES[:4])}, ...)"))
            out.extend((f, None) for f in found)
        elif p.exists():
            out.append((p, None))
        else:
            out.append((p, f"audio file not found: {p}"))
    return out


#: file suffixes that mark the first positional path of a scoring command as the model
MODEL_SUFFIXES = (".pt", ".ckpt", ".pth", ".jit")


def split_model_arg(model: "Path | None", paths: list) -> tuple:
    """The old positional form ``MODEL FILE...`` of the scoring commands: a first path ending in a model
    suffix is the model; returns ``(model, files)``."""
    if model is None and len(paths) >= 2 and paths[0].suffix.lower() in MODEL_SUFFIXES:
        return paths[0], list(paths[1:])
    return model, list(paths)
