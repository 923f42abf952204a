"""Which bona fide voices a countermeasure calls spoofed: its EER per bona fide speaker source.

Pooled and per-attack EERs mix every bona fide voice of the evaluation split; a deployed countermeasure meets
one voice at a time. This scores models on a corpus's evaluation split and, for each bona fide source (the
split's ``language`` field: an Asterisk prompt voice or a recorded human-voice source), writes its clip count,
whether no training split holds it (held-out), its median score (bona fide > 0 at the default threshold), its
share of clips accepted at that threshold, and the EER of its clips alone against every spoof, against the
unseen families, and against each attack::

    python benchmarks/spoof_by_speaker.py --data runs/spoof_hv --model shipped=src/slimtrain/assets/spoof_default.pt \\
        --csv docs/spoof_results/by_speaker.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts src/ on the path)


def rows_for(name: str, path: str, data: Path) -> list[dict]:
    """One row per bona fide source of ``data``'s evaluation split, scored by the model at ``path``."""
    import numpy as np
    import torch

    from slimtrain import spoof
    from slimtrain.tasks.metrics import eer
    from slimtrain.tasks.spoof.attacks import ATTACKS
    from slimtrain.tasks.spoof.data import data_fingerprint, load_split
    from slimtrain.tasks.spoof.train import score_model

    man = json.loads((data / "manifest.json").read_text())
    test = load_split(data, "eval")
    torch.set_num_threads(1)
    scores = np.asarray(score_model(spoof.load(path).model, test.waveforms()), np.float64)
    bona = test.label == 1
    unseen = np.isin(test.attack, list(man["unseen_attacks"])) & ~bona
    out = []
    for src in sorted(set(test.language[bona])):
        mine = bona & (test.language == src)

        def against(spoofs: np.ndarray) -> float:
            keep = mine | spoofs
            return 100 * eer(test.label[keep], scores[keep]) if spoofs.any() else float("nan")

        heldout = bool(test.heldout[mine].all()) if test.heldout is not None else False
        out.append({"model": name, "source": src, "heldout": heldout, "n": int(mine.sum()),
                    "median_score": float(np.median(scores[mine])), "accepted": float(np.mean(scores[mine] > 0)),
                    "eer_all": against(~bona), "eer_unseen": against(unseen),
                    **{f"eer_{a}": against(~bona & (test.attack == a)) for a in ATTACKS},
                    "data_fingerprint": data_fingerprint(data)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a corpus folder (slimtrain data spoof)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                   help="a countermeasure checkpoint to score (repeatable)")
    p.add_argument("--csv", type=Path, default=Path("runs/spoof_by_speaker.csv"))
    a = p.parse_args(argv)
    rows = []
    for spec in a.model:
        name, _, path = spec.partition("=")
        if not name or not path:
            p.error(f"--model wants NAME=MODEL, got {spec!r}")
        rows += rows_for(name, path, a.data)
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(f"{r['model']:10s} {r['source']:14s} {'held-out' if r['heldout'] else 'training':8s} n={r['n']:4d} "
              f"median {r['median_score']:+6.2f} accepted {100 * r['accepted']:5.1f} % EER all {r['eer_all']:5.1f} "
              f"unseen {r['eer_unseen']:5.1f}")
    print(f"wrote {a.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
