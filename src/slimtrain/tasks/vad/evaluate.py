"""``slimtrain vad eval``: score VAD models and Silero VAD side by side on one evaluation set.

Sets: ``test`` (the held-out Italian test split of ``--data``) or ``unseen`` (:mod:`.unseen`: voices and
languages no training split uses). Every model, Silero included, gets its decision threshold at the
EER point of the *validation* split of ``--data`` (as in the sweep); reported per frame: ROC-AUC, EER,
F1 at that threshold, EER per SNR band and (unseen set) AUC/EER/F1 per voice group. For the unseen
set the training split of ``--data`` is checked to hold none of its voices (:func:`.unseen.check_held_out`).
With a ``breakdown`` list, AUC and EER per noise type x SNR band (:mod:`.breakdown`) are added to it.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..metrics import eer, f1_at, roc_auc
from .data import EVAL_SETS, DataError, load_vad_data
from .train import evaluate_scores, exported_cost, frame_scores

__all__ = ["EVAL_SETS", "evaluate_models", "write_rows", "format_rows", "format_breakdown"]

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


def _band_auc(labels: np.ndarray, scores: np.ndarray, snr_db: np.ndarray) -> dict:
    """Frame ROC-AUC per SNR band (``auc < 5 dB`` ...; NaN where a band has no clip or one class only)."""
    from .train import SNR_BANDS

    out = {}
    for band, lo, hi in SNR_BANDS:
        sel = (snr_db >= lo) & (snr_db < hi)
        y = labels[sel].ravel()
        out[f"auc {band}"] = roc_auc(y, scores[sel].ravel()) if sel.any() and 0 < y.mean() < 1 else math.nan
    return out


def data_rate(manifest: dict) -> int:
    """The sample rate a VAD data folder was built at (its manifest's config; 8000 before it was a setting)."""
    return int(manifest.get("config", {}).get("sample_rate", 8000))


def default_unseen_dir(data_dir: Path, sample_rate: int = 8000) -> Path:
    """Where the unseen sets are built by default: next to ``data_dir``, ``unseen`` (8 kHz) or ``unseen-16k``."""
    return Path(data_dir).parent / ("unseen" if sample_rate == 8000 else f"unseen-{sample_rate // 1000}k")


def _load_set(which: str, data_dir: Path, unseen_dir: Optional[Path]):
    if which not in EVAL_SETS:
        raise DataError(f"unknown evaluation set {which!r}; choose from {', '.join(EVAL_SETS)}")
    data, manifest = load_vad_data(data_dir)
    val = data["val"]
    if which == "test":
        return val, data["test"], None, manifest, {"set": "test", "fingerprint": manifest["fingerprint"]}
    from .unseen import UnseenConfig, build_unseen_set, check_held_out, load_unseen_set

    check_held_out([manifest])
    rate = data_rate(manifest)
    udir = Path(unseen_dir) if unseen_dir is not None else default_unseen_dir(data_dir, rate)
    if which in ("unseen-human", "unseen-tts", "unseen-expressive"):
        from .unseen import check_training_manifest
        from .unseen_human import load_split_set

        check_training_manifest(manifest)
        split, groups, info = load_split_set(which, udir, sample_rate=rate)
        return val, split, groups, manifest, info
    build_unseen_set(udir, UnseenConfig(sample_rate=rate))
    split, groups, um = load_unseen_set(udir)
    return val, split, groups, manifest, {"set": "unseen", "fingerprint": um["fingerprint"]}


def evaluate_models(models: Sequence[Optional[Path]], which: str, data_dir: Path, *,
                    unseen_dir: Optional[Path] = None, silero: bool = True,
                    breakdown: Optional[list] = None) -> list[dict]:
    """One row per model (``None`` = the shipped model) and, with ``silero``, one for Silero VAD.

    ``breakdown``: a list that gets, per model, its rows of :func:`.breakdown.noise_snr_breakdown` on the set
    (frame AUC and EER per noise type x SNR band), each with the model, set and fingerprints."""
    from ...apps import vad

    rate = data_rate(load_vad_data(Path(data_dir))[1]) if Path(data_dir, "manifest.json").is_file() else 8000
    loaded = []
    for m in models:  # the shipped model: the one at the data's rate; any other must run at that rate
        v = vad.load(m, sample_rate=rate if m is None else None)
        if v.sample_rate != rate:
            raise DataError(f"slimtrain vad eval: model {m} runs at {v.sample_rate} Hz but the data in {data_dir} is "
                            f"at {rate} Hz; evaluate it on a corpus built at its rate ('slimtrain data vad "
                            f"--sample-rate {v.sample_rate}')")
        loaded.append((m, v))
    val, test, groups, manifest, info = _load_set(which, Path(data_dir), unseen_dir)
    scorers = []
    for m, v in loaded:
        flops, params = exported_cost(v.model, 4.0, rate)
        scorers.append((("shipped" if rate == 8000 else f"shipped-{rate // 1000}k") if m is None else str(m),
                        lambda a, v=v: frame_scores(v.model, a), flops / 1e6, int(params)))
    if silero:
        from .anchors import silero_scores, silero_params

        scorers.append((SILERO if rate == 8000 else f"Silero VAD ({rate // 1000} kHz)",
                        lambda a: silero_scores(a, rate, rate // 100), math.nan, silero_params() or 0))
    rows = []
    for name, score, mflops, params in scorers:
        sv, st = score(val.audio), score(test.audio)
        res = evaluate_scores((val.labels, sv), (test.labels, st), test.snr_db)
        res.update(_band_auc(test.labels, st, test.snr_db))
        if groups is not None:
            res.update(_group_metrics(test.labels, st, groups, res["threshold"]))
        head = {"model": name, "set": which, "set_fingerprint": info["fingerprint"],
                "data_fingerprint": manifest["fingerprint"]}
        rows.append({**head, "sample_rate": rate, "mflops_per_s": mflops, "params": params,
                     "clips": len(test.audio), **res})
        if breakdown is not None:
            from .breakdown import noise_snr_breakdown

            breakdown += [{**head, **r} for r in noise_snr_breakdown(test.labels, st, test.snr_db, test.noise,
                                                                      what=f"{which} set, model {name}")]
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


def format_breakdown(rows: list[dict], metric: str = "auc") -> str:
    """A plain-text table of breakdown rows: one line per noise type x band, ``metric`` of every model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["noise"], r["band"]), {})[r["model"]] = r
    lines = ["\t".join(["noise", "SNR band", "clips"] + [f"{metric.upper()} {m}" for m in models])]
    for (noise, band), by in cells.items():
        vals = [by.get(m, {}).get(metric, math.nan) for m in models]
        txt = [f"{v:.4f}" if metric == "auc" else f"{100 * v:.1f}" for v in map(float, vals)]
        lines.append("\t".join([noise, band, str(next(iter(by.values()))["clips"])] + txt))
    return "\n".join(lines)


# -- the candidate table (docs/vad_results/ship_candidates.csv) -------------------------------------
def _recipe_of(model: str) -> dict:
    """Recipe fields of a model row: from the checkpoint's training config or the shipped model's metadata."""
    if model == SILERO:
        return {"label": SILERO, "recipe": "silero_vad wheel (JIT, 8 kHz)"}
    from ...apps import vad
    from ...train.checkpoint import load_checkpoint
    from ...apps.shipped import is_shipped

    p = vad.default_model_path() if model == "shipped" else Path(model)
    if is_shipped(p):
        meta = json.loads(p.with_suffix(".json").read_text())
        cfg = {**meta["recipe"], "widths": meta["recipe"].get("full_widths", {})}
        data = f"{meta['data']['config'].get('corpus') or 'core'} {meta['data']['fingerprint']}"
    else:
        ck = load_checkpoint(p)
        cfg = dict(ck["extra"].get("config", {}))
        data = "see docs/vad.md"
    w = {"conv1": 24, "conv2": 24, "hidden": 32, **{k: v for k, v in (cfg.get("widths") or {}).items()
                                                    if k in ("conv1", "conv2", "hidden")}}
    cut = "" if cfg.get("budget") else f" kappa_min {cfg.get('kappa_min')} alpha {cfg.get('alpha')}"
    budget = f" budget {cfg['budget'] / 1e6:g}M" if cfg.get("budget") else ""
    label = f"CRNN {w['conv1']}/{w['conv2']}/{w['hidden']}{budget}{cut}, {cfg.get('epochs')} ep, seed {cfg.get('seed')}"
    return {"label": label, "recipe": f"full widths {w}, n_mels {cfg.get('n_mels', 80)}{budget}{cut}, epochs "
                                      f"{cfg.get('epochs')}, seed {cfg.get('seed')}, data {data}"}


def merge_sets(test_rows: Sequence[dict], unseen_rows: Sequence[dict],
               labels: Optional[dict[str, str]] = None) -> list[dict]:
    """One row per model with its metrics on both sets (columns ``test_*`` and ``unseen_*``); ``labels``
    prefixes the label of the named models (e.g. which one is shipped)."""
    unseen = {r["model"]: r for r in unseen_rows}
    keep = ("auc", "eer", "f1", "eer < 5 dB", "eer >= 25 dB")
    out = []
    for t in test_rows:
        u = unseen.get(t["model"])
        if u is None:
            continue
        row = {"model": t["model"], **_recipe_of(t["model"]), "mflops_per_s": t["mflops_per_s"],
               "params": t["params"]}
        if labels and t["model"] in labels:
            row["label"] = f"{labels[t['model']]}: {row['label']}"
        row.update({f"test_{k}": t[k] for k in keep})
        row.update({f"unseen_{k}": u[k] for k in keep})
        row.update({f"unseen_{k}": u[k] for k in u if k.startswith(("auc ", "eer ", "f1 ")) and "dB" not in k})
        row.update({"test_fingerprint": t["set_fingerprint"], "unseen_fingerprint": u["set_fingerprint"]})
        out.append(row)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m slimtrain.tasks.vad.evaluate TEST.json UNSEEN.json --csv OUT.csv``: merge two eval runs."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m slimtrain.tasks.vad.evaluate", description=main.__doc__)
    p.add_argument("test_json", type=Path)
    p.add_argument("unseen_json", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--label", action="append", default=[], metavar="MODEL=TEXT",
                   help="prefix the label of MODEL (as in the rows) with TEXT (repeatable)")
    a = p.parse_args(argv)
    labels = dict(x.split("=", 1) for x in a.label)
    rows = merge_sets(json.loads(a.test_json.read_text()), json.loads(a.unseen_json.read_text()), labels)
    print(f"wrote {write_rows(rows, a.csv)} ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
