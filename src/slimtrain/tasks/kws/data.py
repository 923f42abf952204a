"""Synthetic spoken-keyword clips, generated from a seed (no download): each keyword is a fixed sequence of
three vowel-like syllables (two formants on a pitch pulse train); clips vary pitch, timing, level and noise."""
from __future__ import annotations

import numpy as np
import torch

from ..study import Split, StudyData

__all__ = ["SAMPLE_RATE", "CLIP_SAMPLES", "FORMANTS", "make_clips", "build_data"]

SAMPLE_RATE = 8000
CLIP_SAMPLES = 4000  # 0.5 s
#: (F1, F2) in Hz of the syllables a keyword is built from (rough /a/ /i/ /u/ /e/ /o/)
FORMANTS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840))


def _keywords(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct syllable sequences, the same for every seed (class ``n`` is "no keyword": noise only)."""
    rng = np.random.default_rng(12345)
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        k = tuple(int(v) for v in rng.integers(0, len(FORMANTS), 3))
        if k not in out and len(set(k)) > 1:
            out.append(k)
    return out


def _syllable(rng: np.random.Generator, formants: tuple[int, int], n: int, pitch: float, shift: float) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    source = np.sign(np.sin(2 * np.pi * pitch * t))  # a buzzy glottal stand-in
    tone = sum(np.sin(2 * np.pi * f * shift * t + rng.uniform(0, 2 * np.pi)) / (i + 1) for i, f in enumerate(formants))
    return tone * (0.6 + 0.4 * source) * np.hanning(n)


def make_clips(n_per_class: int, n_keywords: int, seed: int, snr_db: tuple[float, float] = (-10.0, 10.0)):
    """``(clips (N, CLIP_SAMPLES) float32, labels (N,) int64)``: ``n_per_class`` of each keyword and of noise."""
    if n_per_class < 1 or n_keywords < 2:
        raise ValueError(f"need >= 1 clip per class and >= 2 keywords, got {n_per_class} and {n_keywords}")
    if n_keywords > 40:
        raise ValueError(f"at most 40 keywords can be told apart by three of {len(FORMANTS)} syllables, "
                         f"got {n_keywords}")
    rng = np.random.default_rng(seed)
    words = _keywords(n_keywords)
    clips, labels = [], []
    for label in range(n_keywords + 1):
        for _ in range(n_per_class):
            x = np.zeros(CLIP_SAMPLES)
            if label < n_keywords:
                pitch, shift = rng.uniform(90, 220), rng.uniform(0.85, 1.15)
                pos = int(rng.integers(0, CLIP_SAMPLES // 5))
                for syl in words[label]:
                    n = int(rng.uniform(0.08, 0.11) * SAMPLE_RATE)
                    x[pos:pos + n] += _syllable(rng, FORMANTS[syl], n, pitch, shift)[: CLIP_SAMPLES - pos]
                    pos = min(CLIP_SAMPLES - 1, pos + n + int(rng.integers(0, 120)))
            power = float(np.mean(x ** 2)) or 1e-2
            noise = rng.standard_normal(CLIP_SAMPLES) * np.sqrt(power / 10 ** (rng.uniform(*snr_db) / 10))
            y = (x + noise) * rng.uniform(0.1, 0.5) / max(1e-6, float(np.abs(x + noise).max()))
            clips.append(y.astype(np.float32))
            labels.append(label)
    return np.stack(clips), np.asarray(labels, dtype=np.int64)


def build_data(cfg) -> StudyData:
    """Train and test clips of ``cfg`` (``n_keywords``, ``train_per_class``, ``test_per_class``, ``seed``); the
    test clips come from another seed stream, so no clip is in both."""
    xs, ys = make_clips(cfg.train_per_class, cfg.n_keywords, seed=2 * cfg.seed)
    xt, yt = make_clips(cfg.test_per_class, cfg.n_keywords, seed=2 * cfg.seed + 1)
    info = {"sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES, "classes": cfg.n_keywords + 1,
            "keywords": _keywords(cfg.n_keywords), "train_clips": len(ys), "test_clips": len(yt)}
    return StudyData(Split(torch.from_numpy(xs), torch.from_numpy(ys)), Split(torch.from_numpy(xt),
                                                                              torch.from_numpy(yt)), info)
