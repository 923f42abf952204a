"""Mix non-speech audio (MUSAN, ESC-50, DEMAND, your own folder) into speech crops at random SNRs.

:class:`NoiseMixer` scans its files once (headers only), then for each crop picks a file, a random
window of the crop's length (looping a file shorter than the crop), an SNR drawn uniformly from
``snr_db`` and mixes: the noise is scaled so that the speech power over the crop's speech samples (all
samples when the crop holds no speech label) over the noise power is that SNR. A crop without any
signal (digital silence) gets the noise at a level drawn from ``silence_level_dbfs``. Windows are read
from disk per call (:func:`slimtrain.audio.data.audio.load_audio`), so the noise set never sits in memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .audio import AudioCache, AudioInfo, audio_info, list_audio, load_audio, resampled_length
from .errors import CorpusError, SkipReport

__all__ = ["NoiseMixer"]

PathLike = Union[str, os.PathLike]


class NoiseMixer:
    """Callable ``mixer(crop, rng, speech=None) -> mixed crop`` (see the module docstring).

    ``source``: a folder (searched recursively for audio files) or a list of files. ``p``: probability
    that a crop gets noise at all. Bad noise files follow ``report`` (named error, or skipped with
    ``skip_bad``)."""

    def __init__(self, source: Union[PathLike, Sequence[PathLike]], sample_rate: int, *,
                 snr_db: tuple[float, float] = (-5.0, 20.0), p: float = 1.0,
                 silence_level_dbfs: tuple[float, float] = (-60.0, -30.0), report: Optional[SkipReport] = None,
                 cache: Optional[AudioCache] = None) -> None:
        if not snr_db[0] <= snr_db[1] or not 0.0 <= p <= 1.0:
            raise ValueError(f"NoiseMixer: need snr_db low <= high and 0 <= p <= 1, got {snr_db}, {p}")
        report = report if report is not None else SkipReport(False)
        if isinstance(source, (str, os.PathLike)):
            folder = Path(source)
            if not folder.is_dir():
                raise CorpusError(folder, "noise folder not found", kind="missing")
            files = list_audio(folder)
            if not files:
                raise CorpusError(folder, "noise folder holds no audio files (wav, flac, ogg, ...)", kind="empty-folder")
        else:
            files = [Path(f) for f in source]
        self.files: list[tuple[Path, AudioInfo]] = []
        for f in files:
            with report.catch():
                self.files.append((f, audio_info(f)))
        if not self.files:
            raise CorpusError(str(source) if isinstance(source, (str, os.PathLike)) else None,
                              "no usable noise file", kind="empty-corpus")
        self.sample_rate, self.snr_db, self.p = int(sample_rate), tuple(snr_db), float(p)
        self.silence_level_dbfs, self.cache, self.report = tuple(silence_level_dbfs), cache, report

    def __len__(self) -> int:
        return len(self.files)

    def window(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples of a random noise file from a random start (looped when the file is shorter)."""
        path, info = self.files[int(rng.integers(len(self.files)))]
        total = resampled_length(info.frames, info.sample_rate, self.sample_rate)
        if total >= n:
            start = int(rng.integers(0, total - n + 1))
            return load_audio(path, self.sample_rate, start=start, stop=start + n, cache=self.cache, info=info)
        x = load_audio(path, self.sample_rate, cache=self.cache, info=info)
        return np.resize(x, n).astype(np.float32)

    def __call__(self, crop: np.ndarray, rng: np.random.Generator, speech: Optional[np.ndarray] = None) -> np.ndarray:
        x = np.asarray(crop, dtype=np.float32)
        if self.p < 1.0 and rng.random() >= self.p:
            return x
        noise = self.window(len(x), rng).astype(np.float64)
        pn = float(np.mean(noise ** 2))
        if pn <= 1e-20:
            return x
        sel = x[speech] if speech is not None and np.any(speech) else x
        ps = float(np.mean(np.asarray(sel, np.float64) ** 2))
        if ps > 1e-12:
            target = ps / 10 ** (rng.uniform(*self.snr_db) / 10)
        else:
            target = 10 ** (rng.uniform(*self.silence_level_dbfs) / 10)
        return (x + noise * np.sqrt(target / pn)).astype(np.float32)
