"""Detection metrics of the speech case studies (scikit-learn underneath).

Scores are "higher = positive class" (speech for VAD, bona fide for anti-spoofing).
"""
from __future__ import annotations

import numpy as np

__all__ = ["eer", "eer_threshold", "roc_auc", "f1_at", "eer_by_group", "min_tdcf", "ASVSPOOF2019_COST"]


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


def eer_by_group(labels, scores, groups, positive_group: str = "bonafide") -> dict[str, float]:
    """EER in [0, 1] pooled over everything (``"pooled"``) and per group of the negatives: every positive
    item against the negatives of that group (anti-spoofing: bona fide against each attack ID)."""
    y, s = _check(labels, scores)
    g = np.asarray(groups, dtype=object).ravel()
    if g.shape != y.shape:
        raise ValueError(f"labels and groups differ in length: {y.size} vs {g.size}")
    out = {"pooled": eer(y, s)}
    pos = y == 1
    for name in sorted({str(a) for a in g[~pos]}):
        m = pos | (g == name)
        out[name] = eer(y[m], s[m])
    return out


#: the ASVspoof 2019 t-DCF cost model (evaluation plan, section 4): priors and costs of the tandem system
ASVSPOOF2019_COST = {"Pspoof": 0.05, "Ptar": (1 - 0.05) * 0.99, "Pnon": (1 - 0.05) * 0.01,
                     "Cmiss_asv": 1.0, "Cfa_asv": 10.0, "Cmiss_cm": 1.0, "Cfa_cm": 10.0}


def min_tdcf(bona_cm, spoof_cm, asv_target, asv_nontarget, asv_spoof, cost: dict | None = None,
             asv_threshold: float | None = None) -> float:
    """Minimum normalised tandem detection cost (t-DCF) of a countermeasure, ASVspoof 2019 formulation.

    The ASV system runs at its EER threshold on target vs non-target trials (or ``asv_threshold``):
    ``Pmiss_asv``, ``Pfa_asv`` and ``Pmiss_spoof_asv`` (spoofs it rejects). With the cost model
    (default :data:`ASVSPOOF2019_COST`) ``C1 = Ptar (Cmiss_cm - Cmiss_asv Pmiss_asv) - Pnon Cfa_asv
    Pfa_asv`` and ``C2 = Cfa_cm Pspoof (1 - Pmiss_spoof_asv)``, the t-DCF of a CM threshold ``t`` is
    ``C1 Pmiss_cm(t) + C2 Pfa_cm(t)``, normalised by ``min(C1, C2)`` (the better of accepting or
    rejecting everything, so the result lies in [0, 1]), minimised over every threshold. CM scores:
    higher = bona fide; ASV scores: higher = target."""
    c = dict(ASVSPOOF2019_COST if cost is None else cost)
    bona, spoof = (np.asarray(a, dtype=np.float64).ravel() for a in (bona_cm, spoof_cm))
    tar, non, spf = (np.asarray(a, dtype=np.float64).ravel() for a in (asv_target, asv_nontarget, asv_spoof))
    for name, a in (("bona fide CM", bona), ("spoof CM", spoof), ("ASV target", tar), ("ASV non-target", non),
                    ("ASV spoof", spf)):
        if a.size == 0:
            raise ValueError(f"min t-DCF needs {name} scores, got none")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} scores contain NaN or Inf")
    thr = eer_threshold(np.r_[np.ones(tar.size), np.zeros(non.size)], np.r_[tar, non]) \
        if asv_threshold is None else float(asv_threshold)
    p_miss_asv, p_fa_asv = float(np.mean(tar < thr)), float(np.mean(non >= thr))
    p_miss_spoof_asv = float(np.mean(spf < thr))
    c1 = c["Ptar"] * (c["Cmiss_cm"] - c["Cmiss_asv"] * p_miss_asv) - c["Pnon"] * c["Cfa_asv"] * p_fa_asv
    c2 = c["Cfa_cm"] * c["Pspoof"] * (1 - p_miss_spoof_asv)
    if c1 <= 0 or c2 <= 0:
        raise ValueError(f"t-DCF is undefined for this ASV system (C1={c1:.4g}, C2={c2:.4g}): its error rates at the "
                         "EER threshold leave no cost for the countermeasure to reduce")
    # every operating point: accept all (t = -inf), then reject each distinct score and everything below it
    u = np.unique(np.r_[bona, spoof])
    p_miss = np.r_[0.0, np.searchsorted(np.sort(bona), u, side="right") / bona.size]
    p_fa = np.r_[1.0, 1.0 - np.searchsorted(np.sort(spoof), u, side="right") / spoof.size]
    return float(np.min(c1 * p_miss + c2 * p_fa) / min(c1, c2))
