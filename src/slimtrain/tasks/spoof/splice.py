"""Splice attacks: new utterances cut and concatenated from bona fide recordings (what unit selection does).

* :func:`syllable_units` segments a recording into syllable-like units by its energy: 10 ms frames
  within ``floor_db`` of the loudest frame are active; an active run is cut at the valleys of the
  smoothed energy envelope (local minima at least ``valley_db`` below the peaks on both sides,
  :func:`scipy.signal.find_peaks` prominence), so a unit spans one energy peak (a syllable nucleus).
* :func:`splice` draws units at random from several recordings of one speaker and joins them:
  ``smooth_ms = 0`` butt-joins them (a waveform jump at every join: attack A8); ``smooth_ms > 0`` aligns
  each next unit to the previous one's end by waveform similarity (the start offset within one pitch
  period, ``align_ms``, that maximises the normalised cross-correlation over the overlap, as WSOLA does)
  and overlap-adds them with a raised-cosine crossfade of ``smooth_ms`` (attack A9).
* ``max_pause_ms > 0``: each unit brings the pause that follows it in its source recording (up to the next
  unit's start, at most ``max_pause_ms``), as a unit-selection synthesiser keeps a phrase break. Without
  it a splice is speech from end to end (94 % of its 10 ms frames active against 48 % for held-out human
  voices: speech density alone then separates splices from bona fide, see ``docs/spoof.md``); with it a
  splice pauses as often as the speaker it is made of.

Every output sample outside the crossfades is a sample of a source recording (``provenance`` says which);
``tests/test_splice.py`` checks that and that smoothing removes the join discontinuity
(:func:`join_discontinuity`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...apps.spoof.preprocess import _frame_db

__all__ = ["syllable_units", "splice", "SpliceResult", "join_discontinuity", "SpliceError"]

SR = 8000


class SpliceError(ValueError):
    """A splice cannot be made (no sources, a silent source, bad settings); the message says which."""


@dataclass
class SpliceResult:
    """The spliced audio, the join positions (output sample indices) and where every unit came from:
    ``provenance`` rows ``(source index, source start, source end, output start)``."""

    audio: np.ndarray
    joins: list[int]
    provenance: list[tuple[int, int, int, int]]


def syllable_units(x: np.ndarray, sr: int = SR, floor_db: float = 35.0, valley_db: float = 3.0,
                   min_ms: float = 60.0) -> list[tuple[int, int]]:
    """Syllable-like units ``[(start, end), ...]`` (sample indices) of a recording, from its energy envelope."""
    from scipy.signal import find_peaks

    x = np.asarray(x, dtype=np.float64)
    frame = max(1, sr // 100)
    if len(x) < 3 * frame:
        return []
    db = _frame_db(x, frame)
    env = np.convolve(db, np.ones(5) / 5, mode="same")
    active = db > db.max() - floor_db
    units: list[tuple[int, int]] = []
    i = 0
    while i < len(active):
        if not active[i]:
            i += 1
            continue
        j = i
        while j < len(active) and active[j]:
            j += 1
        valleys, _ = find_peaks(-env[i:j], prominence=valley_db)
        cuts = [i, *(i + int(v) for v in valleys), j]
        for a, b in zip(cuts, cuts[1:]):
            if (b - a) * 1000 / 100 >= min_ms:
                units.append((a * frame, b * frame))
        i = j
    return units


def _with_pauses(units: list[tuple[int, int]], n: int, max_pause: int) -> list[tuple[int, int]]:
    """Each unit extended over the pause after it: up to the next unit's start (the recording's end for the
    last unit), at most ``max_pause`` samples."""
    ends = [a for a, _ in units[1:]] + [n]
    return [(a, max(b, min(nxt, b + max_pause))) for (a, b), nxt in zip(units, ends)]


def splice(sources: Sequence[np.ndarray], seed: int, *, seconds: float = 1.6, smooth_ms: float = 0.0,
           align_ms: float = 5.0, max_pause_ms: float = 0.0, sr: int = SR) -> SpliceResult:
    """About ``seconds`` of speech made of syllable-like units drawn at random from ``sources``.

    ``smooth_ms = 0``: units butt-joined. ``smooth_ms > 0``: each unit is aligned to the previous one by
    waveform similarity (offset within ``align_ms``) and overlap-added with a raised-cosine crossfade of
    ``smooth_ms`` milliseconds. ``max_pause_ms > 0``: each unit keeps the pause that follows it in its
    source, up to that long (the module docstring says why)."""
    if not sources:
        raise SpliceError("splice needs at least one source recording")
    if smooth_ms < 0 or align_ms < 0 or seconds <= 0 or max_pause_ms < 0:
        raise SpliceError(f"smooth_ms, align_ms, max_pause_ms must be >= 0 and seconds > 0, got {smooth_ms}, "
                          f"{align_ms}, {max_pause_ms}, {seconds}")
    srcs = [np.asarray(s, dtype=np.float64) for s in sources]
    pause = int(round(max_pause_ms * sr / 1000))
    pool = [(k, a, b) for k, s in enumerate(srcs) for a, b in _with_pauses(syllable_units(s, sr), len(s), pause)]
    if not pool:
        raise SpliceError("no syllable-like unit found in the source recordings (silent or too short)")
    rng = np.random.default_rng(seed)
    ov = int(round(smooth_ms * sr / 1000))
    shift = int(round(align_ms * sr / 1000)) if ov else 0
    target = int(seconds * sr)
    out = np.zeros(0)
    joins: list[int] = []
    prov: list[tuple[int, int, int, int]] = []
    while len(out) < target:
        k, a, b = pool[int(rng.integers(len(pool)))]
        s = srcs[k]
        if len(out) == 0 or ov == 0:
            if len(out):
                joins.append(len(out))
            prov.append((k, a, b, len(out)))
            out = np.concatenate([out, s[a:b]])
            continue
        # waveform-similarity alignment: the unit start (within +-shift, inside the source) whose first
        # `ov` samples best match the output's last `ov` samples, then a raised-cosine crossfade
        tail = out[-ov:]
        best, best_c = a, -np.inf
        for st in range(max(0, a - shift), min(a + shift, len(s) - ov, b - ov) + 1):
            seg = s[st: st + ov]
            c = float(np.dot(tail, seg) / (np.linalg.norm(tail) * np.linalg.norm(seg) + 1e-12))
            if c > best_c:
                best, best_c = st, c
        unit = s[best:b]
        if len(unit) <= ov:
            continue
        fade = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ov) + 0.5) / ov)  # 0 -> 1
        start = len(out) - ov
        out[start:] = out[start:] * (1 - fade) + unit[:ov] * fade
        joins.append(start)
        prov.append((k, best, b, start))
        out = np.concatenate([out, unit[ov:]])
    return SpliceResult(out, joins, prov)


def join_discontinuity(y: np.ndarray, joins: Sequence[int], near: int = 2, span: int = 40) -> float:
    """How abrupt the joins are: at each join, the largest |second difference| of the waveform within ``near``
    samples of it, over the median |second difference| within ``span`` samples around it (the local
    texture); the mean over joins. A waveform jump or a kink gives a spike far above the local median; a
    join as smooth as the speech around it gives a value like any other point of the signal."""
    y = np.asarray(y, dtype=np.float64)
    d2 = np.abs(np.diff(y, 2))
    vals = []
    for j in joins:
        c = int(j) - 1  # d2[i] is centred on sample i + 1
        if c - span < 0 or c + span >= len(d2):
            continue
        vals.append(d2[c - near: c + near + 1].max() / (float(np.median(d2[c - span: c + span + 1])) + 1e-12))
    return float(np.mean(vals)) if vals else 0.0
