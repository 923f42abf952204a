"""Why the LPC vocoder (A7) stays near chance: what separates it from bona fide speech, and whether
the countermeasure's input can see it.

``python -m slimtrain.tasks.spoof.a7_study [--n 200] [--seed 0]`` resynthesises ``n`` bona fide
prompts (all four Asterisk voices) with A7 (and, for comparison, A5 WORLD and A6 Griffin-Lim),
passes every clip through the data set's cue removal (:func:`..data.condition`), and prints:

1. per mel band (the countermeasure's front-end: 32 bands, 0-4 kHz, 256-point FFT, 20 ms hop), the
   mean log-mel difference attack - bona fide in dB and the AUC of that band's time-mean;
2. the cross-validated EER of a logistic regression on (a) the per-band time means of the log-mel -
   exactly what the model's per-utterance mean normalisation removes - and (b) the per-band
   standard deviations over time of the mean-normalised log-mel (a summary of what the model keeps);
3. the share of energy outside the 100-3600 Hz band-pass *before* conditioning.

Results and their reading are in docs/spoof.md ("Why A7 stays near chance").
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import numpy as np

from ..audio import ASTERISK_VOICES, asterisk_prompts, read_audio
from . import attacks as A
from .data import SR, condition

__all__ = ["band_statistics", "run_study"]


def _logmel(clips: np.ndarray, n_mels: int = 32, n_fft: int = 256, hop: int = 160) -> np.ndarray:
    import torch

    from ...audio.frontend import MelFrontend

    fe = MelFrontend(sample_rate=SR, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    with torch.no_grad():
        return fe(torch.from_numpy(clips.astype(np.float32) / 32768.0)).numpy().astype(np.float64)


def _cv_eer(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..metrics import eer

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    s = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="decision_function")
    return float(eer(y, s))


def _auc(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]))


def band_statistics(bona: np.ndarray, spoof: np.ndarray) -> dict:
    """Per-band and classifier statistics of conditioned int16 clips (see the module docstring)."""
    lb, ls = _logmel(bona), _logmel(spoof)
    mb, ms = lb.mean(axis=2), ls.mean(axis=2)  # (clips, bands): what mean normalisation removes
    sb = (lb - lb.mean(axis=2, keepdims=True)).std(axis=2)
    ss = (ls - ls.mean(axis=2, keepdims=True)).std(axis=2)
    y = np.r_[np.ones(len(bona)), np.zeros(len(spoof))]
    db = 10 / np.log(10)
    auc = [max(_auc(mb[:, k], ms[:, k]), 1 - _auc(mb[:, k], ms[:, k])) for k in range(mb.shape[1])]
    return {
        "band_mean_diff_db": [round(float(v), 2) for v in (ms.mean(0) - mb.mean(0)) * db],
        "band_mean_auc": [round(a, 3) for a in auc],
        "eer_band_means": round(_cv_eer(np.r_[mb, ms], y), 4),
        "eer_band_stds_after_norm": round(_cv_eer(np.r_[sb, ss], y), 4),
        "eer_both": round(_cv_eer(np.r_[np.c_[mb, sb], np.c_[ms, ss]], y), 4),
    }


def _out_of_band_share(xs: Sequence[np.ndarray]) -> float:
    shares = []
    for x in xs:
        p = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        shares.append(p[(f < 100) | (f > 3600)].sum() / max(p.sum(), 1e-20))
    return float(np.median(shares))


def run_study(n: int = 200, seed: int = 0, attacks: Sequence[str] = ("A7", "A6", "A5"), clip_seconds: float = 1.0) -> dict:
    """Generate ``n`` bona fide clips and their copies by each attack; return the statistics."""
    rng = np.random.default_rng(seed)
    files = [f for lg in sorted(ASTERISK_VOICES) for f in asterisk_prompts(lg)]
    pick = [files[i] for i in rng.choice(len(files), n, replace=False)]
    raw = [read_audio(f, SR)[0] for f in pick]
    clip = int(round(clip_seconds * SR))
    bona = np.stack([condition(x, np.random.default_rng([seed, 2, i]), clip) for i, x in enumerate(raw)])
    out: dict = {"n": n, "seed": seed, "bona_out_of_band_share": _out_of_band_share(raw), "attacks": {}}
    for a in attacks:
        if a == "A7":
            copies = [A.lpc_copy(x, seed=i) for i, x in enumerate(raw)]
        elif a == "A6":
            copies = [A.griffin_lim_copy(x, seed=i) for i, x in enumerate(raw)]
        elif a == "A5":
            copies = A.world_copy_batch(raw)
        else:
            raise ValueError(f"the study covers the copy attacks A5, A6, A7, not {a!r}")
        spoof = np.stack([condition(y, np.random.default_rng([seed, 3, i]), clip) for i, y in enumerate(copies)])
        stats = band_statistics(bona, spoof)
        stats["out_of_band_share"] = _out_of_band_share(copies)
        out["attacks"][a] = stats
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slimtrain.tasks.spoof.a7_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="bona fide prompts (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the statistics to this file")
    args = p.parse_args(argv)
    res = run_study(args.n, args.seed)
    print(f"bona fide: median energy share outside 100-3600 Hz before conditioning {100 * res['bona_out_of_band_share']:.2f}%")
    for a, s in res["attacks"].items():
        print(f"{a}: EER band means (removed by mean normalisation) {100 * s['eer_band_means']:.1f}%, "
              f"band stds after normalisation {100 * s['eer_band_stds_after_norm']:.1f}%, both {100 * s['eer_both']:.1f}%; "
              f"out-of-band share {100 * s['out_of_band_share']:.2f}%")
        print(f"   mean log-mel diff per band (dB): {s['band_mean_diff_db']}")
        print(f"   band-mean AUC per band:          {s['band_mean_auc']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
