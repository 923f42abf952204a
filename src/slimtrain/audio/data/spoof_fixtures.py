"""Small format-faithful anti-spoofing corpora for tests and demos (generated, nothing downloaded).

* :func:`make_asvspoof2019_tree`: the ASVspoof 2019 LA layout (``LA/ASVspoof2019_LA_cm_protocols/
  ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt``, ``LA/ASVspoof2019_LA_{train,dev,eval}/flac/
  LA_{T,D,E}_<7 digits>.flac``, ``LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.{dev,eval}.gi.trl.
  scores.txt``), 5-column protocol lines ``LA_0079 LA_T_1138215 - A01 spoof``; train and dev hold
  bona fide speech and attacks A01-A06, eval bona fide and A07, A16, A19 (in the real corpus A16
  and A19 are A04 and A06 again; here they are made the same way).
* :func:`make_itw_tree`: In-the-Wild's ``release_in_the_wild/meta.csv`` (``file,speaker,label``,
  ``bona-fide``/``spoof``) and its wav files.
* :func:`make_plain_csv`: ``path,label,attack`` with flac files beside it.

"Bona fide" audio is noise shaped by a syllable-rate (3-6 Hz) envelope and a wandering formant;
each attack family is a different synthetic signal (steady harmonic buzz, tone sweeps, gated
tones, ...), so a small countermeasure can tell them apart in a few epochs. ``broken=True`` adds
one item whose file is not audio (for the skip-bad path).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["make_asvspoof2019_tree", "make_itw_tree", "make_plain_csv", "synth_utterance", "FAMILY"]

PathLike = Union[str, os.PathLike]
#: attack ID -> signal family (A16 and A19 are A04 and A06 again, as in ASVspoof 2019 LA)
FAMILY = {"A01": 1, "A02": 2, "A03": 3, "A04": 4, "A05": 5, "A06": 6, "A07": 1, "A16": 4, "A19": 6}


def synth_utterance(family: int, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One float32 utterance: ``family`` 0 = bona fide, 1..6 = a spoof family (see the module docstring)."""
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    nyq = sample_rate / 2
    if family == 0:
        env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))) ** 2
        x = rng.standard_normal(n) * env
        f = rng.uniform(0.1, 0.3) * nyq * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        x = x + 0.5 * env * np.sin(2 * np.pi * np.cumsum(f) / sample_rate)
    elif family in (1, 4):  # steady harmonic buzz (family 4: more harmonics)
        f0 = rng.uniform(90, 200)
        k = 5 if family == 1 else 15
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, k + 1))
    elif family in (2, 5):  # linear tone sweeps
        f1, f2 = sorted(rng.uniform(0.05, 0.8, 2) * nyq)
        f = f1 + (f2 - f1) * (t / t[-1] if n > 1 else t)
        x = np.sin(2 * np.pi * np.cumsum(f) / sample_rate)
        if family == 5:
            x = x + 0.3 * rng.standard_normal(n)
    else:  # 3, 6: gated tones
        gate = (np.sin(2 * np.pi * rng.uniform(8, 15) * t) > 0).astype(float)
        x = gate * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * nyq * t)
        if family == 6:
            x = x + 0.2 * rng.standard_normal(n)
    x = np.asarray(x, dtype=np.float64)
    x = x / (np.max(np.abs(x)) + 1e-9) * rng.uniform(0.2, 0.8)
    return x.astype(np.float32)


def _write(path: Path, x: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sample_rate, subtype="PCM_16")


def _utt_id(prefix: str, rng: np.random.Generator, used: set) -> str:
    while True:
        u = f"LA_{prefix}_{int(rng.integers(1_000_000, 9_999_999))}"
        if u not in used:
            used.add(u)
            return u


def make_asvspoof2019_tree(root: PathLike, *, sample_rate: int = 16000, n_bona: int = 6, n_per_attack: int = 3,
                           seconds: tuple[float, float] = (0.6, 1.2), broken: bool = False, seed: int = 0) -> dict:
    """Write an ASVspoof 2019 LA-shaped tree under ``root``; returns ``{"root", "train", "dev", "eval",
    "asv_dev", "asv_eval", "broken"}`` (paths; ``broken`` the protocol line number of the broken train
    item, or ``None``). Dev and eval get ``max(2, n_bona * 2 // 3)`` bona fide items and
    ``max(1, n_per_attack * 2 // 3)`` per attack."""
    rng = np.random.default_rng(seed)
    la = Path(root) / "LA"
    prot = la / "ASVspoof2019_LA_cm_protocols"
    prot.mkdir(parents=True, exist_ok=True)
    out: dict = {"root": Path(root), "broken": None}
    used: set = set()
    splits = (("train", "T", "trn", ("A01", "A02", "A03", "A04", "A05", "A06"), n_bona, n_per_attack),
              ("dev", "D", "trl", ("A01", "A02", "A03", "A04", "A05", "A06"), max(2, n_bona * 2 // 3),
               max(1, n_per_attack * 2 // 3)),
              ("eval", "E", "trl", ("A07", "A16", "A19"), max(2, n_bona * 2 // 3), max(1, n_per_attack * 2 // 3)))
    for split, pre, kind, attacks, nb, na in splits:
        rows = [("bonafide", 0)] * nb + [(a, FAMILY[a]) for a in attacks for _ in range(na)]
        order = rng.permutation(len(rows))
        lines = []
        for j in order:
            attack, fam = rows[j]
            utt = _utt_id(pre, rng, used)
            spk = f"LA_{int(rng.integers(79, 99)):04d}"
            x = synth_utterance(fam, rng.uniform(*seconds), sample_rate, rng)
            _write(la / f"ASVspoof2019_LA_{split}" / "flac" / f"{utt}.flac", x, sample_rate)
            lines.append(f"{spk} {utt} - {'-' if attack == 'bonafide' else attack} "
                         f"{'bonafide' if attack == 'bonafide' else 'spoof'}")
        if broken and split == "train":
            utt = _utt_id(pre, rng, used)
            (la / "ASVspoof2019_LA_train" / "flac" / f"{utt}.flac").write_bytes(b"this is not a flac file\n" * 4)
            lines.append(f"LA_0080 {utt} - A03 spoof")
            out["broken"] = len(lines)
        f = prot / f"ASVspoof2019.LA.cm.{split}.{kind}.txt"
        f.write_text("\n".join(lines) + "\n")
        out[split] = f
    scores = la / "ASVspoof2019_LA_asv_scores"
    scores.mkdir(parents=True, exist_ok=True)
    for split, attacks in (("dev", ("A01", "A02")), ("eval", ("A07", "A16"))):
        lines = [f"bonafide target {v:.5f}" for v in rng.normal(3, 1, 40)]
        lines += [f"bonafide nontarget {v:.5f}" for v in rng.normal(-3, 1, 40)]
        lines += [f"{attacks[i % 2]} spoof {v:.5f}" for i, v in enumerate(rng.normal(1.5, 1.5, 40))]
        f = scores / f"ASVspoof2019.LA.asv.{split}.gi.trl.scores.txt"
        f.write_text("\n".join(lines) + "\n")
        out[f"asv_{split}"] = f
    return out


def make_itw_tree(root: PathLike, *, sample_rate: int = 16000, n_bona: int = 6, n_spoof: int = 6,
                  seconds: tuple[float, float] = (0.6, 1.2), seed: int = 1) -> Path:
    """Write ``root/release_in_the_wild/{meta.csv, 0.wav, 1.wav, ...}``; returns the ``meta.csv`` path."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "release_in_the_wild"
    d.mkdir(parents=True, exist_ok=True)
    speakers = ["Alec Guinness", "Barack Obama", "Christopher Hitchens"]
    rows = ["file,speaker,label"]
    labels = ["bona-fide"] * n_bona + ["spoof"] * n_spoof
    for i, j in enumerate(rng.permutation(len(labels))):
        lab = labels[j]
        fam = 0 if lab == "bona-fide" else int(rng.integers(1, 7))
        _write(d / f"{i}.wav", synth_utterance(fam, rng.uniform(*seconds), sample_rate, rng), sample_rate)
        rows.append(f"{i}.wav,{speakers[i % len(speakers)]},{lab}")
    f = d / "meta.csv"
    f.write_text("\n".join(rows) + "\n")
    return f


def make_plain_csv(root: PathLike, *, sample_rate: int = 16000, n_bona: int = 6, n_per_attack: int = 2,
                   attacks: tuple[str, ...] = ("A01", "A02", "A03"), seconds: tuple[float, float] = (0.6, 1.2),
                   seed: int = 2) -> Path:
    """Write ``root/plain/{list.csv, audio/*.flac}`` (``path,label,attack``, header row); returns the CSV path."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "plain"
    rows = ["path,label,attack"]
    items = [("bonafide", "")] * n_bona + [("spoof", a) for a in attacks for _ in range(n_per_attack)]
    for i, (lab, att) in enumerate(items):
        fam = 0 if lab == "bonafide" else FAMILY[att]
        _write(d / "audio" / f"utt{i:03d}.flac", synth_utterance(fam, rng.uniform(*seconds), sample_rate, rng),
               sample_rate)
        rows.append(f"audio/utt{i:03d}.flac,{lab},{att}")
    f = d / "list.csv"
    f.write_text("\n".join(rows) + "\n")
    return f
