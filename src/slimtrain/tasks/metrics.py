"""Detection metrics of the speech case studies (scikit-learn underneath).

Scores are "higher = positive class" (speech for VAD, bona fide for anti-spoofing).
"""
from __future__ import annotations

import numpy as np

__all__ = ["eer", "eer_threshold", "roc_auc", "f1_at"]


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or Inf")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError("labels must be 0/1")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("need both classes (0 and 1) among the labels to compute this metric")
    return y, s


def _eer_point(labels, scores) -> tuple[float, float]:
    from sklearn.metrics import roc_curve

    y, s = _check(labels, scores)
    fpr, tpr, thr = roc_curve(y, s)
    d = (1.0 - tpr) - fpr  # fnr - fpr: +1 at the first ROC point, -1 at the last, non-increasing
    i = int(np.flatnonzero(d <= 0)[0])  # first point with fpr >= fnr (i >= 1)
    t = d[i - 1] / (d[i - 1] - d[i])  # linear interpolation to the crossing
    rate = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    threshold = float(thr[i])
    return float(rate), threshold


def eer(labels, scores) -> float:
    """Equal error rate in [0, 1]: where false-acceptance and false-rejection rates meet on the ROC."""
    return _eer_point(labels, scores)[0]


def eer_threshold(labels, scores) -> float:
    """Score threshold at the equal-error point (choose it on validation data)."""
    return _eer_point(labels, scores)[1]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve."""
    from sklearn.metrics import roc_auc_score

    y, s = _check(labels, scores)
    return float(roc_auc_score(y, s))


def f1_at(labels, scores, threshold: float) -> float:
    """F1 of the positive class when ``score >= threshold`` is called positive."""
    from sklearn.metrics import f1_score

    y, s = _check(labels, scores)
    return float(f1_score(y, (s >= threshold).astype(int), zero_division=0))
