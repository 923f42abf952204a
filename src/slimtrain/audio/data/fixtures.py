"""Small, format-faithful corpora generated on disk, for tests, CI and benchmarks (no download).

* :func:`make_rttm_folder`: audio files (flac by default) with an ``.rttm`` of the same stem beside each,
  synthetic voiced "speech" (harmonics of a gliding f0 under a syllable envelope) inside the RTTM
  segments and faint noise elsewhere; optionally one broken file (not audio) with its RTTM.
* :func:`make_vctk_tree`: VCTK's layout, ``wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac`` (+ ``mic2``)
  at 48 kHz (VCTK 0.92) or ``wav48/pXXX/pXXX_NNN.wav`` (VCTK 0.80), and ``txt/pXXX/pXXX_NNN.txt``.
* :func:`make_esc50_tree`: ESC-50's layout, ``audio/{fold}-{src}-{take}-{target}.wav`` (5 s, 44.1 kHz,
  mono) and ``meta/esc50.csv`` with its columns ``filename,fold,target,category,esc10,src_file,take``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

__all__ = ["synthetic_speech", "make_rttm_folder", "make_vctk_tree", "make_esc50_tree", "ESC50_COLUMNS"]

PathLike = Union[str, os.PathLike]
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
_CATEGORIES = ("dog", "rain", "crying_baby", "door_wood_knock", "helicopter", "rooster", "sea_waves",
               "sneezing", "mouse_click", "chainsaw")


def synthetic_speech(n: int, sample_rate: int, rng: np.random.Generator, level: float = 0.1) -> np.ndarray:
    """``n`` samples of a voiced, speech-like signal: 8 harmonics of an f0 gliding around 100-220 Hz
    under a 3-6 Hz syllable envelope (float32)."""
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 9))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.28))
    x = x * env
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * level
    return x.astype(np.float32)


def _write(path: Path, x: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sample_rate, subtype="PCM_16" if path.suffix.lower() in (".wav", ".flac") else None)


def make_rttm_folder(root: PathLike, n_files: int = 6, *, sample_rate: int = 16000, seconds: float = 3.0,
                     suffix: str = ".flac", seed: int = 0, broken: bool = False, empty_rttm: int = 1,
                     noise_level: float = 0.003) -> list[Path]:
    """``n_files`` audio files with speech segments and their RTTMs under ``root``; returns the audio paths.

    The first ``empty_rttm`` files hold no speech (an empty RTTM). With ``broken`` a file ``broken<suffix>``
    that is not audio is added, with a valid RTTM beside it (not in the returned list)."""
    rng = np.random.default_rng(seed)
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sample_rate)
    paths = []
    for i in range(n_files):
        x = noise_level * rng.standard_normal(n)
        lines = []
        if i >= empty_rttm:
            pos = rng.uniform(0.1, 0.6)
            while pos < seconds - 0.4:
                dur = min(rng.uniform(0.3, 1.0), seconds - pos - 0.05)
                a, b = int(pos * sample_rate), int((pos + dur) * sample_rate)
                x[a:b] += synthetic_speech(b - a, sample_rate, rng, level=rng.uniform(0.05, 0.2))
                lines.append(f"SPEAKER file{i:03d} 1 {pos:.3f} {dur:.3f} <NA> <NA> spk{i % 2} <NA> <NA>")
                pos += dur + rng.uniform(0.3, 0.9)
        p = out / f"file{i:03d}{suffix}"
        _write(p, x.astype(np.float32), sample_rate)
        p.with_suffix(".rttm").write_text("".join(line + "\n" for line in lines))
        paths.append(p)
    if broken:
        b = out / f"broken{suffix}"
        b.write_bytes(b"this is not an audio file\n" * 20)
        b.with_suffix(".rttm").write_text("SPEAKER broken 1 0.100 0.500 <NA> <NA> spk0 <NA> <NA>\n")
    return paths


def make_vctk_tree(root: PathLike, speakers: Sequence[str] = ("p225", "p226", "p227", "p228", "p229"),
                   utterances: int = 3, *, layout: str = "wav48_silence_trimmed", seconds: float = 1.5,
                   sample_rate: int = 48000, seed: int = 0) -> Path:
    """A VCTK-shaped tree under ``root`` (see the module docstring); returns ``root``. Each utterance is
    synthetic speech with short silences before and after (as VCTK's, trimmed or not)."""
    if layout not in ("wav48_silence_trimmed", "wav48"):
        raise ValueError(f"layout must be wav48_silence_trimmed or wav48, got {layout!r}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    for spk in speakers:
        for u in range(1, utterances + 1):
            n = int(seconds * sample_rate * rng.uniform(0.8, 1.2))
            lead, tail = int(0.15 * sample_rate), int(0.2 * sample_rate)
            x = np.zeros(n, np.float32)
            x[lead:n - tail] = synthetic_speech(n - lead - tail, sample_rate, rng)
            x += (1e-3 * rng.standard_normal(n)).astype(np.float32)
            name = f"{spk}_{u:03d}"
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{name}.txt").write_text(f"Utterance {u} of speaker {spk}.\n")
            if layout == "wav48":
                _write(root / "wav48" / spk / f"{name}.wav", x, sample_rate)
            else:
                for mic in (1, 2):
                    _write(root / layout / spk / f"{name}_mic{mic}.flac", x, sample_rate)
    return root


def make_esc50_tree(root: PathLike, clips_per_fold: int = 2, *, seconds: float = 5.0, sample_rate: int = 44100,
                    seed: int = 0) -> Path:
    """An ESC-50-shaped tree under ``root`` with ``clips_per_fold`` clips in each of the 5 folds (noise of
    varied colour, bursts and tones; no speech); returns ``root``."""
    import csv

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    n = int(seconds * sample_rate)
    for fold in range(1, 6):
        for k in range(clips_per_fold):
            target = int(rng.integers(len(_CATEGORIES)))
            src = int(rng.integers(10000, 300000))
            name = f"{fold}-{src}-A-{target}.wav"
            white = rng.standard_normal(n)
            kind = (fold + k) % 3
            if kind == 0:  # brown-ish
                x = np.cumsum(white)
                x -= np.convolve(x, np.ones(512) / 512, mode="same")
            elif kind == 1:  # bursts
                x = white * (rng.random(n // 2205 + 1) > 0.7).repeat(2205)[:n]
            else:  # a tone and noise
                x = np.sin(2 * np.pi * rng.uniform(300, 3000) * np.arange(n) / sample_rate) + 0.3 * white
            x = (x / (np.max(np.abs(x)) + 1e-9) * 0.5).astype(np.float32)
            _write(root / "audio" / name, x, sample_rate)
            rows.append([name, fold, target, _CATEGORIES[target], str(target < 5), f"{src}", "A"])
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ESC50_COLUMNS)
        w.writerows(rows)
    return root
