"""Trivial cues per attack family, and how much a countermeasure leans on them.

The cue removal makes every clip 1 s at a random level, but a family can still differ from bona fide speech in
how much of the clip it fills: the plain splices (A8, A9) are 1.6 s of speech without a pause, cropped to 1 s,
while a prompt is often shorter than a second and pauses between words. For each corpus (``--data``) this
writes, per family of the evaluation split, the mean of each cue of ``slimtrain.tasks.spoof.data.cue_features``
(active duration, level, leading silence, speech density), the EER of a logistic regression on those cues alone
(trained on the training split's bona fide clips against that family; ``shortcut_eer``), and, for each model
(``--model``), its EER for the held-out speakers' bona fide clips against that family. Scoring the same model
on a corpus whose splices are built like their sources (``slimtrain data spoof --splice-like-source all``) and on
the documented one says how much of its splice detection the cues carry::

    python benchmarks/spoof_shortcuts.py --data documented=runs/spoof_hv --data like-source=runs/spoof_hv_ls \\
        --model shipped=src/slimtrain/assets/spoof_default.pt --csv docs/spoof_results/shortcuts.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts src/ on the path)

CUES = ("duration_s", "level_dbfs", "lead_s", "density")


def rows_for(corpus: str, data: Path, models: list[tuple[str, str]]) -> list[dict]:
    """One row per family (``all``, ``bona`` and each attack) of ``data``'s evaluation split."""
    import numpy as np
    import torch

    from slimtrain import spoof
    from slimtrain.tasks.metrics import eer
    from slimtrain.tasks.spoof.data import cue_features, data_fingerprint, load_split, shortcut_eer
    from slimtrain.tasks.spoof.train import score_model

    man = json.loads((data / "manifest.json").read_text())
    train, test = load_split(data, "train"), load_split(data, "eval")
    cues = np.stack([cue_features(a) for a in test.audio])
    torch.set_num_threads(1)
    scores = {name: np.asarray(score_model(spoof.load(path).model, test.waveforms()), np.float64)
              for name, path in models}
    held = test.heldout if test.heldout is not None else test.label == 1
    out = []
    for fam in ["all", "bona", *sorted(set(test.attack) - {"bona"})]:
        mine = np.ones(len(test), bool) if fam == "all" else test.attack == fam
        row = {"corpus": corpus, "data_fingerprint": data_fingerprint(data),
               "splice_like_source": man["config"].get("splice_like_source", "none"), "family": fam,
               "in_training": fam in set(train.attack), "n": int(mine.sum()),
               **{c: float(v) for c, v in zip(CUES, cues[mine].mean(0))}}
        if fam == "all":
            row["shortcut_eer"] = 100 * shortcut_eer(train, test)
        elif fam != "bona" and fam in set(train.attack):
            row["shortcut_eer"] = 100 * shortcut_eer(train, test, attack=fam)
        for name, s in scores.items():
            keep = held | (mine & (test.label == 0))
            row[f"eer_{name}"] = 100 * eer(test.label[keep], s[keep]) if fam != "bona" else float("nan")
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="NAME=DIR",
                   help="a corpus folder (slimtrain data spoof), repeatable")
    p.add_argument("--model", action="append", default=[], metavar="NAME=MODEL",
                   help="a countermeasure to score on every corpus (repeatable)")
    p.add_argument("--csv", type=Path, default=Path("runs/spoof_shortcuts.csv"))
    a = p.parse_args(argv)

    def pairs(specs: list[str], what: str) -> list[tuple[str, str]]:
        out = []
        for spec in specs:
            name, _, path = spec.partition("=")
            if not name or not path:
                p.error(f"--{what} wants NAME={what.upper()}, got {spec!r}")
            out.append((name, path))
        return out

    datas, models = pairs(a.data, "data"), pairs(a.model, "model")
    for _, d in datas:
        if not (Path(d) / "manifest.json").is_file():
            p.error(f"{d} is not a corpus folder (no manifest.json); build it with: slimtrain data spoof --out {d}")
    rows = [r for name, d in datas for r in rows_for(name, Path(d), models)]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(f"{r['corpus']:12s} {r['family']:5s} n={r['n']:4d} " + " ".join(f"{c} {r[c]:7.3f}" for c in CUES)
              + (f" cue-only EER {r['shortcut_eer']:5.1f}" if "shortcut_eer" in r else " " * 19)
              + "".join(f" {k} {r[k]:5.1f}" for k in r if k.startswith("eer_")))
    print(f"wrote {a.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
