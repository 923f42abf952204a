"""Does a corpus give its labels away? Trivial cues of each utterance, and the EER of a classifier on them alone.

A countermeasure learns whatever separates the classes, and the cheapest thing often is not the speech:
ASVspoof 2019 LA's spoofs have shorter leading and trailing silences than its bona fide utterances (Müller et
al., "Speech is Silver, Silence is Golden", 2021), and the built-in corpus' plain splices fill the clip with
speech (``docs/spoof.md``, "Splices shaped like their source"). :func:`utterance_cues` measures six such cues
from the energy of 10 ms frames (:data:`CUE_NAMES`); :func:`cue_eers` trains a logistic regression on them
alone (standardised) and reports its EER pooled and per attack. An EER far below 50 % says a model can score
that attack without listening to the speech. ``slimtrain spoof audit`` runs it on a corpus in the field's
formats (:func:`audit_corpus`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ...apps.spoof.preprocess import _frame_db

__all__ = ["CUE_NAMES", "utterance_cues", "cue_eers", "audit_corpus", "SHORTCUT_WARN_EER"]

#: the cues of :func:`utterance_cues`, in order
CUE_NAMES = ("length_s", "span_s", "level_dbfs", "lead_s", "trail_s", "density")
#: ``slimtrain spoof audit`` flags an attack whose cue-only EER is below this (percent)
SHORTCUT_WARN_EER = 30.0


def utterance_cues(x: np.ndarray, sample_rate: int, floor_db: float = 30.0) -> np.ndarray:
    """``[length, active span, level, leading silence, trailing silence, speech density]`` of one mono
    recording (seconds, dBFS, share): a 10 ms frame is active when within ``floor_db`` of the loudest; the span
    runs from the first active frame to the last; density is the share of active frames."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    frame = max(1, int(sample_rate) // 100)
    n = len(x) // frame
    length = len(x) / sample_rate
    level = 10 * np.log10(float(np.mean(x ** 2)) + 1e-12) if len(x) else -120.0
    if n == 0:
        return np.array([length, 0.0, level, length, 0.0, 0.0])
    db = _frame_db(x, frame)
    on = db > db.max() - floor_db
    act = np.flatnonzero(on)
    if act.size == 0:
        return np.array([length, 0.0, level, length, 0.0, 0.0])
    sec = frame / sample_rate
    return np.array([length, (act[-1] - act[0] + 1) * sec, level, act[0] * sec, (n - 1 - act[-1]) * sec,
                     float(on.mean())])


def _eer(labels: np.ndarray, scores: np.ndarray) -> float:
    from ..metrics import eer

    return 100 * eer(labels, scores)


def cue_eers(train_cues: np.ndarray, train_labels: np.ndarray, test_cues: Optional[np.ndarray] = None,
             test_labels: Optional[np.ndarray] = None, test_attacks: Optional[Sequence[str]] = None,
             folds: int = 5, seed: int = 0) -> dict[str, float]:
    """EER (percent) of a logistic regression on the cues alone: ``pooled`` and one per attack (bona fide
    against that attack's items; label 1 = bona fide). Trained on the training items and scored on the test
    items; without test items, scored on the training items by ``folds``-fold stratified cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ytr = np.asarray(train_labels)
    if set(np.unique(ytr)) != {0, 1}:
        raise ValueError("the cue-only classifier needs bona fide (1) and spoofed (0) training items")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if test_cues is None:
        k = int(min(folds, np.bincount(ytr).min()))
        if k < 2:
            raise ValueError("cross-validation needs at least 2 items of each class")
        scores = cross_val_predict(clf, train_cues, ytr, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                   method="decision_function")
        y = ytr
    else:
        scores = clf.fit(train_cues, ytr).decision_function(test_cues)
        y = np.asarray(test_labels)
    out = {"pooled": _eer(y, scores)} if len(set(y)) == 2 else {}
    if test_attacks is not None:
        att = np.asarray(test_attacks)
        for a in sorted(set(att[y == 0])):
            keep = (y == 1) | (att == a)
            if (y[keep] == 1).any():
                out[str(a)] = _eer(y[keep], scores[keep])
    return out


def audit_corpus(train, test=None, *, progress: Optional[Callable[[int], None]] = None) -> dict:
    """The cue audit of one corpus (:class:`slimtrain.audio.data.spoof_corpus.SpoofCorpus`): every file read at
    its native rate; with ``test``, the classifier trains on ``train`` and scores ``test``, else it is
    cross-validated on ``train``. Returns ``{"eer": {...}, "means": {family: {cue: mean}}, "counts": {...}}``
    for the scored corpus (``bonafide`` and each attack)."""
    from ...audio.data.audio import load_audio

    def cues(corpus) -> np.ndarray:
        rows = []
        for it in corpus.items:
            rows.append(utterance_cues(load_audio(it.path), it.sample_rate or corpus.sample_rate))
            if progress is not None:
                progress(1)
        return np.stack(rows) if rows else np.zeros((0, len(CUE_NAMES)))

    ctr = cues(train)
    scored = test if test is not None else train
    cte = cues(test) if test is not None else None
    eers = cue_eers(ctr, train.labels, cte, None if test is None else test.labels, scored.attacks)
    c = cte if test is not None else ctr
    att = np.asarray(scored.attacks)
    means = {str(a): dict(zip(CUE_NAMES, map(float, c[att == a].mean(0)))) for a in scored.counts()}
    return {"eer": eers, "means": means, "counts": scored.counts()}
