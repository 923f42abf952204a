"""Do unseen noise sources or the label convention explain why the shipped VAD trails Silero on held-out sets
outside this repository? Scores the shipped VAD and Silero VAD (frame AUC) on the held-out human voices

* mixed as ``slimtrain vad eval`` mixes them (the extended test split's music and effects), and
* mixed the same way with music and sound effects of ``hedgewars-data`` that no split uses (its 27 music
  tracks; its effects except the vocal ones: ``hell_*``, ``Yoohoo``, ``Kiss``, ``hogchant*``),

each against the 10 ms energy labels and against segment-style labels (gaps shorter than 100 / 200 / 500 ms
closed). Also AUC per noise type. Writes one CSV row per (set, noise sources, label gap, noise type, model).

    python benchmarks/vad_noise_shift.py --csv docs/vad_results/noise_shift.csv
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from _common import ROOT  # noqa: F401  (puts src/ on the path)

SETS = {"unseen-human": "core", "unseen-expressive": "expressive"}
GAPS_MS = (0, 100, 200, 500)
VOCAL_EFFECTS = ("hell_", "Yoohoo", "Kiss", "hogchant")


def close_gaps(labels: np.ndarray, frames: int) -> np.ndarray:
    """Per clip, set to 1 every run of 0 of at most ``frames`` frames that lies between two speech frames."""
    out = labels.copy()
    for row in out:
        idx = np.flatnonzero(row)
        for a, d in zip(idx[:-1], np.diff(idx)):
            if 1 < d <= frames + 1:
                row[a + 1:a + d] = 1
    return out


def hedgewars_noise(rate: int) -> tuple[list, list]:
    """(music, effects) of hedgewars-data as arrays at ``rate``."""
    from slimtrain.tasks.audio import deb_root, read_many

    data = deb_root() / "hedgewars-data" / "usr/share/games/hedgewars/Data"
    if not data.is_dir():
        raise SystemExit(f"hedgewars-data is not unpacked under {deb_root()} (install.sh unpacks apt-unpack.txt)")
    music = sorted((data / "Music").glob("*.ogg"))
    fx = [f for f in sorted((data / "Sounds").glob("*.ogg")) if not f.name.startswith(VOCAL_EFFECTS)]
    return ([x for _, x in read_many(music, rate, what="music")[0]],
            [x for _, x in read_many(fx, rate, what="effects")[0]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unseen", type=Path, default=Path("runs/unseen"), help="folder of the held-out sets")
    p.add_argument("--csv", type=Path, default=Path("runs/vad_noise_shift.csv"))
    a = p.parse_args(argv)

    import torch

    from slimtrain.apps import vad
    from slimtrain.tasks.audio import read_many
    from slimtrain.tasks.human_voices import source, source_files
    from slimtrain.tasks.metrics import roc_auc
    from slimtrain.tasks.vad.anchors import silero_scores
    from slimtrain.tasks.vad.train import frame_scores
    from slimtrain.tasks.vad.unseen import UnseenConfig, _mix_config, mix_groups
    from slimtrain.tasks.vad.unseen_human import held_out_human_sources, load_split_set

    torch.set_num_threads(1)
    rate = 8000
    model = vad.load(None, sample_rate=rate).model
    music, fx = hedgewars_noise(rate)
    print(f"hedgewars noise: {len(music)} music tracks, {len(fx)} effects")
    mix = _mix_config(UnseenConfig(sample_rate=rate))
    rows = []
    for which, collection in SETS.items():
        split, _, info = load_split_set(which, a.unseen, sample_rate=rate)
        srcs = held_out_human_sources(collection)
        if which == "unseen-human":  # its fr Armelle clips come from the unseen set; here from her files
            srcs = [source("fr-armelle")] + srcs
        groups = []
        for s, seq in zip(srcs, np.random.SeedSequence([0, 21]).spawn(len(srcs))):
            good, _ = read_many(source_files(s)[:80], rate, what=s.id)
            groups.append((s.id, [(f"human/{s.id}/{i}", x) for i, (_, x) in enumerate(good)], seq))
        clips = mix_groups(groups, music, fx, mix)
        shifted = (np.concatenate(clips.audio), np.concatenate(clips.labels), np.asarray(clips.noise))
        for noise_src, (audio, labels, noise) in (("eval mix", (split.audio, split.labels, np.asarray(split.noise))),
                                                 ("hedgewars music + effects", shifted)):
            scores = {"shipped": frame_scores(model, audio), "Silero VAD": silero_scores(audio, rate, rate // 100)}
            for gap in GAPS_MS:
                lab = close_gaps(labels, gap // 10) if gap else labels
                kinds = ["all"] + sorted(set(noise.tolist())) if gap == 0 else ["all"]
                for kind in kinds:
                    k = np.ones(len(lab), bool) if kind == "all" else noise == kind
                    if lab[k].min() == lab[k].max():
                        continue
                    for name, sc in scores.items():
                        rows.append({"set": which, "set_fingerprint": info["fingerprint"], "noise_sources": noise_src,
                                     "label_gap_ms": gap, "noise": kind, "clips": int(k.sum()), "model": name,
                                     "auc": round(float(roc_auc(lab[k].ravel(), sc[k].ravel())), 4)})
    for r in rows:
        if r["noise"] == "all":
            print(f"{r['set']:18s} {r['noise_sources']:26s} label gaps <= {r['label_gap_ms']:3d} ms  "
                  f"{r['model']:10s} AUC {r['auc']:.4f}")
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {a.csv} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
