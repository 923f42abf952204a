"""The deterministic cue removal every countermeasure input goes through, in training and in scoring:
band-pass 100-3600 Hz, leading/trailing silence trimmed, level set, cut into clips of the training length.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_RATE", "prepare", "trim_silence"]

#: the rate the countermeasures run at
SAMPLE_RATE = 8000


def _bandpass(x: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [100.0, 3600.0], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    if len(x) < 40:
        return x.astype(np.float64)
    return sosfiltfilt(sos, np.asarray(x, dtype=np.float64))


def _frame_db(x: np.ndarray, frame: int = 80) -> np.ndarray:
    n = max(1, len(x) // frame)
    e = np.mean(np.square(x[: n * frame].reshape(n, frame) if len(x) >= frame else x[None]), axis=1)
    return 10 * np.log10(e + 1e-12)


def trim_silence(x: np.ndarray, floor_db: float = 40.0, frame: int = 80) -> np.ndarray:
    """Drop leading and trailing 10 ms frames more than ``floor_db`` below the loudest frame."""
    db = _frame_db(x, frame)
    active = np.flatnonzero(db > db.max() - floor_db)
    if active.size == 0:
        return x
    return x[active[0] * frame: (active[-1] + 1) * frame]


def prepare(x: np.ndarray, clip: int) -> np.ndarray:
    """Clips ``(n, clip)`` of one recording after the deterministic cue removal."""
    y = trim_silence(_bandpass(x))
    rms = float(np.sqrt(np.mean(y ** 2))) if len(y) else 0.0
    if rms > 0:
        y = y * (10 ** (-24 / 20) / rms)
    if len(y) <= clip:
        out = np.zeros(clip)
        off = (clip - len(y)) // 2
        out[off:off + len(y)] = y
        return out[None].astype(np.float32)
    hop = clip // 2
    starts = list(range(0, len(y) - clip + 1, hop))
    if starts[-1] != len(y) - clip:
        starts.append(len(y) - clip)
    return np.stack([y[s:s + clip] for s in starts]).astype(np.float32)
