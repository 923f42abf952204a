"""Frame AUC and EER per noise type x SNR band (``slimtrain vad eval --by-noise FILE``).

Every clip of the VAD sets records its noise type (``VadSplit.noise``, the ``noise`` array of the split
files) and its measured SNR (``snr_db``), so the pooled numbers can be broken down by both. A cell holds
the frames of the clips with that noise type whose SNR lies in the band (the bands of
:data:`slimtrain.tasks.vad.train.SNR_BANDS`); ``all`` rows pool a noise type over every band, or a band
over every noise type. A cell with no clip is left out; one whose frames are all speech or all
non-speech has no AUC/EER (NaN).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..metrics import eer, roc_auc
from .errors import DataError

__all__ = ["ALL", "BreakdownError", "noise_snr_breakdown", "hardest"]

#: the noise or band name of a pooled row
ALL = "all"


class BreakdownError(DataError):
    """Inputs of a per-noise-type breakdown that do not fit together (shapes, lengths, NaN SNR, empty names)."""


def _bands():
    from .train import SNR_BANDS

    return SNR_BANDS


def _check(labels: np.ndarray, scores: np.ndarray, snr_db: np.ndarray, noise: Sequence[str], what: str):
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    snr = np.asarray(snr_db, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise BreakdownError(f"{what}: labels {labels.shape} and scores {scores.shape} must both be (clips, frames)")
    n = labels.shape[0]
    if snr.shape != (n,):
        raise BreakdownError(f"{what}: {snr.size} SNR values for {n} clips")
    if len(noise) != n:
        raise BreakdownError(f"{what}: {len(noise)} noise types for {n} clips")
    bad = np.flatnonzero(np.isnan(snr))
    if bad.size:
        raise BreakdownError(f"{what}: clip {int(bad[0])} has no SNR (NaN)")
    for i, k in enumerate(noise):
        if not isinstance(k, str) or not k:
            raise BreakdownError(f"{what}: clip {i} has no noise type ({k!r})")
    if not np.all(np.isfinite(scores)):
        i = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise BreakdownError(f"{what}: the scores of clip {i} hold NaN or Inf")
    return labels, scores, snr, np.asarray(noise, dtype=object)


def _cell(labels: np.ndarray, scores: np.ndarray, sel: np.ndarray) -> dict:
    y, s = labels[sel].ravel(), scores[sel].ravel()
    both = y.size > 0 and 0 < y.mean() < 1
    return {"clips": int(sel.sum()), "frames": int(y.size), "speech_fraction": float(y.mean()) if y.size else math.nan,
            "auc": roc_auc(y, s) if both else math.nan, "eer": eer(y, s) if both else math.nan}


def noise_snr_breakdown(labels: np.ndarray, scores: np.ndarray, snr_db: np.ndarray, noise: Sequence[str], *,
                        what: str = "breakdown") -> list[dict]:
    """One row ``{noise, band, clips, frames, speech_fraction, auc, eer}`` per noise type x SNR band with a clip,
    then per noise type over all bands (``band='all'``), then per band over all noise (``noise='all'``).

    ``labels``/``scores`` are (clips, frames); ``snr_db`` and ``noise`` one value per clip. Noise types keep
    the order in which they first occur. Raises :class:`BreakdownError` (naming ``what``) on inputs that do
    not fit together."""
    labels, scores, snr, kinds = _check(labels, scores, snr_db, noise, what)
    bands = [(b, (snr >= lo) & (snr < hi)) for b, lo, hi in _bands()]
    types = list(dict.fromkeys(kinds.tolist()))
    rows = []
    for k in types:
        is_k = kinds == k
        for b, in_b in bands:
            if (is_k & in_b).any():
                rows.append({"noise": k, "band": b, **_cell(labels, scores, is_k & in_b)})
    for k in types:
        rows.append({"noise": k, "band": ALL, **_cell(labels, scores, kinds == k)})
    for b, in_b in bands:
        if in_b.any():
            rows.append({"noise": ALL, "band": b, **_cell(labels, scores, in_b)})
    return rows


def hardest(rows: Sequence[dict], model: str, *, band: str = ALL, metric: str = "auc",
            n: Optional[int] = None) -> list[tuple[str, float]]:
    """``(noise type, value)`` of ``model``'s rows in ``band``, worst first (lowest AUC or highest EER); NaN
    cells are left out."""
    if metric not in ("auc", "eer"):
        raise BreakdownError(f"metric must be 'auc' or 'eer', got {metric!r}")
    cells = [(r["noise"], float(r[metric])) for r in rows
             if r.get("model", model) == model and r["band"] == band and r["noise"] != ALL
             and not math.isnan(float(r[metric]))]
    if not cells:
        raise BreakdownError(f"no breakdown rows of model {model!r} in band {band!r}")
    cells.sort(key=lambda c: c[1], reverse=metric == "eer")
    return cells[:n] if n else cells
