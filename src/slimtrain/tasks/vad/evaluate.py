"""``slimtrain vad eval``: score VAD models and Silero VAD side by side on one evaluation set.

Sets: ``test`` (the held-out Italian test split of ``--data``) or ``unseen`` (:mod:`.unseen`: voices and
languages no training split uses). Every model, Silero included, gets its decision threshold at the
EER point of the *validation* split of ``--data`` (as in the sweep); reported per frame: ROC-AUC, EER,
F1 at that threshold, EER per SNR band and (unseen set) AUC/EER/F1 per voice group. For the unseen
set the training split of ``--data`` is checked to hold none of its voices (:func:`.unseen.check_held_out`).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..metrics import eer, f1_at, roc_auc
from .data import DataError, load_vad_data
from .train import evaluate_scores, exported_cost, frame_scores

__all__ = ["EVAL_SETS", "evaluate_models", "write_rows", "format_rows"]

EVAL_SETS = ("test", "unseen")
SILERO = "Silero VAD (8 kHz)"


def _group_metrics(labels: np.ndarray, scores: np.ndarray, groups: Sequence[str], threshold: float) -> dict:
    out = {}
    g = np.asarray(groups)
    for name in dict.fromkeys(groups):
        sel = g == name
        y, s = labels[sel].ravel(), scores[sel].ravel()
        out[f"auc {name}"] = roc_auc(y, s)
        out[f"eer {name}"] = eer(y, s)
        out[f"f1 {name}"] = f1_at(y, s, threshold)
    return out


def _load_set(which: str, data_dir: Path, unseen_dir: Optional[Path]):
    if which not in EVAL_SETS:
        raise DataError(f"unknown evaluation set {which!r}; choose from {', '.join(EVAL_SETS)}")
    data, manifest = load_vad_data(data_dir)
    val = data["val"]
    if which == "test":
        return val, data["test"], None, manifest, {"set": "test", "fingerprint": manifest["fingerprint"]}
    from .unseen import build_unseen_set, check_held_out, load_unseen_set

    check_held_out([manifest])
    udir = Path(unseen_dir) if unseen_dir is not None else Path(data_dir).parent / "unseen"
    build_unseen_set(udir)
    split, groups, um = load_unseen_set(udir)
    return val, split, groups, manifest, {"set": "unseen", "fingerprint": um["fingerprint"]}


def evaluate_models(models: Sequence[Optional[Path]], which: str, data_dir: Path, *,
                    unseen_dir: Optional[Path] = None, silero: bool = True) -> list[dict]:
    """One row per model (``None`` = the shipped model) and, with ``silero``, one for Silero VAD."""
    from ... import vad

    val, test, groups, manifest, info = _load_set(which, Path(data_dir), unseen_dir)
    scorers = []
    for m in models:
        v = vad.load(m)
        flops, params = exported_cost(v.model)
        scorers.append(("shipped" if m is None else str(m), lambda a, v=v: frame_scores(v.model, a),
                        flops / 1e6, int(params)))
    if silero:
        from .anchors import silero_scores, silero_params

        scorers.append((SILERO, silero_scores, math.nan, silero_params() or 0))
    rows = []
    for name, score, mflops, params in scorers:
        sv, st = score(val.audio), score(test.audio)
        res = evaluate_scores((val.labels, sv), (test.labels, st), test.snr_db)
        if groups is not None:
            res.update(_group_metrics(test.labels, st, groups, res["threshold"]))
        rows.append({"model": name, "set": which, "set_fingerprint": info["fingerprint"],
                     "data_fingerprint": manifest["fingerprint"], "mflops_per_s": mflops, "params": params,
                     "clips": len(test.audio), **res})
    return rows


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write rows as CSV (``.csv``) or JSON (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return path


def format_rows(rows: list[dict]) -> str:
    """A plain-text table: AUC, EER, F1 and the per-group/per-SNR EERs."""
    extra = [k for k in rows[0] if k.startswith(("eer ", "auc ")) and k != "eer"]
    head = ["model", "MFLOP/s", "AUC", "EER %", "F1"] + extra
    lines = ["\t".join(head)]
    for r in rows:
        mf = "-" if not math.isfinite(r["mflops_per_s"]) else f"{r['mflops_per_s']:.2f}"
        cells = [r["model"], mf, f"{r['auc']:.4f}", f"{100 * r['eer']:.2f}", f"{r['f1']:.4f}"]
        cells += [f"{r[k]:.4f}" if k.startswith("auc") else f"{100 * r[k]:.1f}" for k in extra]
        lines.append("\t".join(cells))
    return "\n".join(lines)
