"""Audio files of a user's corpus: info, loading (whole or a window) as mono float32 at a target rate,
and an optional on-disk cache of the resampled signal.

* Reading is :mod:`soundfile` (wav, flac, ogg, ... whatever libsndfile reads); channels are averaged to
  mono; resampling is :func:`slimtrain.audio.io.resample_to` (``scipy.signal.resample_poly``, Kaiser
  window), the resampler of the rest of the project.
* A window ``[start, stop)`` (in samples at the target rate) reads only the native samples it needs,
  plus a margin of the resampling filter's length aligned to the resampler's grid, so it equals the
  same window of the whole file resampled (to float rounding) without reading the whole file.
* :class:`AudioCache` stores the resampled mono float32 signal once per (file, mtime, size, rate) as
  ``.npy``; later reads memory-map it, so resampling is done once and windows cost no decoding.
* A missing, unreadable or empty file is a :class:`CorpusError` subclass naming the file.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..io import AUDIO_SUFFIXES, _ratio, resample_to
from .errors import CorpusError

__all__ = ["AudioFileError", "MissingAudioError", "UnreadableAudioError", "EmptyAudioError", "AudioInfo",
           "audio_info", "load_audio", "resampled_length", "AudioCache", "AUDIO_SUFFIXES", "list_audio"]

PathLike = Union[str, os.PathLike]


class AudioFileError(CorpusError):
    """An audio file of the corpus cannot be used (the message names it)."""


class MissingAudioError(AudioFileError):
    """The audio file does not exist."""

    def __init__(self, path, reason: str = "audio file not found", line: Optional[int] = None,
                 kind: str = "audio-missing") -> None:
        super().__init__(path, reason, line, kind)


class UnreadableAudioError(AudioFileError):
    """The file exists but is not audio that soundfile can decode (or holds NaN/Inf)."""

    def __init__(self, path, reason: str = "cannot read audio file", line: Optional[int] = None,
                 kind: str = "audio-unreadable") -> None:
        super().__init__(path, reason, line, kind)


class EmptyAudioError(AudioFileError):
    """The file decodes to zero samples."""

    def __init__(self, path, reason: str = "audio file is empty (0 samples)", line: Optional[int] = None,
                 kind: str = "audio-empty") -> None:
        super().__init__(path, reason, line, kind)


@dataclass(frozen=True)
class AudioInfo:
    """Header of an audio file: native rate, frames (samples per channel), channels."""

    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def list_audio(folder: PathLike) -> list[Path]:
    """Audio files under ``folder`` (recursive, following symbolic links to folders, sorted), by the
    suffixes libsndfile reads."""
    out = []
    for d, _, names in os.walk(folder, followlinks=True):
        out.extend(Path(d) / n for n in names if Path(n).suffix.lower() in AUDIO_SUFFIXES)
    return sorted(f for f in out if f.is_file())


def audio_info(path: PathLike) -> AudioInfo:
    """The header of ``path`` (no samples decoded); named errors for missing/unreadable/empty files."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise MissingAudioError(p)
    try:
        i = sf.info(str(p))
    except Exception as e:  # LibsndfileError / RuntimeError / TypeError on non-audio files
        raise UnreadableAudioError(p, f"cannot read audio file ({' '.join(str(e).split())[:200]})") from None
    if i.frames <= 0 or i.samplerate <= 0:
        raise EmptyAudioError(p)
    return AudioInfo(str(p), int(i.samplerate), int(i.frames), int(i.channels))


def resampled_length(frames: int, orig_sr: int, new_sr: int) -> int:
    """Number of samples :func:`resample_to` gives for ``frames`` input samples (``ceil(n * up / down)``)."""
    up, down = _ratio(orig_sr, new_sr)
    return -(-int(frames) * up // down)


def _read_native(p: Path, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    import soundfile as sf

    try:
        data, _ = sf.read(str(p), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as e:
        raise UnreadableAudioError(p, f"cannot read audio file ({' '.join(str(e).split())[:200]})") from None
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(x)):
        raise UnreadableAudioError(p, "audio file contains NaN or Inf samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_audio(path: PathLike, sample_rate: Optional[int] = None, *, start: int = 0, stop: Optional[int] = None,
               cache: Optional["AudioCache"] = None, info: Optional[AudioInfo] = None) -> np.ndarray:
    """Mono float32 samples ``[start, stop)`` of ``path`` at ``sample_rate`` (native rate if ``None``).

    ``start``/``stop`` count samples at the target rate; the window is clipped to the file (so it may
    come back shorter). With ``cache`` the resampled file is stored once and memory-mapped after."""
    p = Path(path)
    info = info or audio_info(p)
    sr = info.sample_rate if sample_rate is None else int(sample_rate)
    if cache is not None:
        full = cache.get(p, sr, info=info)
        return np.array(full[start:stop], dtype=np.float32)
    total = resampled_length(info.frames, info.sample_rate, sr)
    stop = total if stop is None else min(int(stop), total)
    start = max(0, int(start))
    if start == 0 and stop == total:
        x = _read_native(p)
        if x.size == 0:
            raise EmptyAudioError(p)
        return resample_to(x, info.sample_rate, sr)[:total]
    if stop <= start:
        return np.zeros(0, dtype=np.float32)
    if sr == info.sample_rate:
        return _read_native(p, start, stop)
    up, down = _ratio(info.sample_rate, sr)
    # resample_poly's filter spans 10 * max(up, down) upsampled samples each side: that many / up input samples
    margin = int(math.ceil(10 * max(up, down) / up)) + 2
    i0 = max(0, (start * down // up - margin) // down * down)  # on the resampler's grid: output o = i0 * up / down
    i1 = min(info.frames, -(-stop * down // up) + margin)
    y = resample_to(_read_native(p, i0, i1), info.sample_rate, sr)
    o = i0 * up // down
    return np.ascontiguousarray(y[start - o: stop - o], dtype=np.float32)


class AudioCache:
    """Resampled mono float32 audio stored as ``<root>/<key>.npy``, the key hashing the file's absolute
    path, mtime, size and the rate, so a changed file or another rate is a new entry. Safe with
    several DataLoader workers (written to a temporary file, then renamed)."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: PathLike, sample_rate: int) -> str:
        p = Path(path).resolve()
        st = p.stat()
        raw = f"{p}|{st.st_mtime_ns}|{st.st_size}|{int(sample_rate)}"
        return hashlib.sha1(raw.encode()).hexdigest()[:20]

    def path_for(self, path: PathLike, sample_rate: int) -> Path:
        return self.root / f"{self.key(path, sample_rate)}.npy"

    def get(self, path: PathLike, sample_rate: int, *, info: Optional[AudioInfo] = None) -> np.ndarray:
        """The resampled signal (read-only memory map), computed and stored on first use."""
        p = Path(path)
        if not p.is_file():
            raise MissingAudioError(p)
        f = self.path_for(p, sample_rate)
        if not f.is_file():
            x = load_audio(p, sample_rate, info=info)
            tmp = f.with_name(f".{f.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, x)
            os.replace(tmp, f)
        try:
            return np.load(f, mmap_mode="r")
        except (OSError, ValueError):  # a damaged entry: rebuild it
            f.unlink(missing_ok=True)
            return self.get(p, sample_rate, info=info)
