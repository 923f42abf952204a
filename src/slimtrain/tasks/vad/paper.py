"""``slimtrain vad --recipe paper``: the paper's VAD set-up from the user's VCTK and ESC-50 copies.

**Models at the paper's sizes.** The paper gives the size of its full models (docs/paper/vad_pooled.csv:
CRNNVAD 673,873 parameters, TrVAD 138,082, both with 80 mel bands at 16 kHz), not every layer width; ours
are this project's two families with widths chosen to match those parameter counts:

* CRNN: 80 mels, conv1 78, conv2 256 (kernel 3), GRU 336: 678,875 parameters (+0.7 %). The 78 channels of
  conv1 follow the paper's own numbers: its DCRNNVAD rows lose 236 parameters per mel band cut (16,079 for
  80 -> 12 bands), which is BatchNorm (2) + a 3-tap convolution of 78 channels (234).
* Transformer: 80 mels, d_model 64, 4 blocks of 4 heads (attention width 64), feed-forward 128: 139,297
  parameters (+0.9 %).

Their cost is far above the paper's MFLOP/s (ours at 16 kHz: 139.7 and 72.6 MFLOP/s counted by
:func:`slimtrain.model_cost`; the paper: 2.25 and 19.6): a frame-rate GRU of this size alone costs about
0.6 M multiply-adds per 10 ms frame, so the paper's models must run at a lower frame rate or count cost
differently, which its text does not say; we match the parameters, not the FLOPs.

**Data.** VCTK utterances (``wav48_silence_trimmed/pXXX/*_mic1.flac`` of VCTK 0.92, or ``wav48/pXXX/*.wav``
of 0.80; ``txt/`` is not needed) mixed with ESC-50 clips (``audio/*.wav`` + ``meta/esc50.csv``), at 16 kHz:

* splits by speaker (sorted ids: the last 10 % test, the 10 % before validation, at least one each) and by
  ESC-50 fold (1-3 train, 4 validation, 5 test), so no test voice or noise clip is heard in training;
* each item: one utterance (cut to ``crop_seconds - 0.5`` if longer) at a random place in a
  ``crop_seconds`` crop of silence, with an ESC-50 clip at an SNR drawn from ``snr_db`` (-5 to 20 dB) over
  the speech samples (:class:`slimtrain.audio.data.NoiseMixer`; 10 % of crops hold noise only);
* labels, our documented choice (docs/method.md does not say how the paper labelled its frames): the
  project's energy labels on the *clean* speech (:func:`slimtrain.tasks.vad.data.frame_labels`: a frame is
  speech within 35 dB of the crop's loudest frame, widened 2 frames before and 8 after), at the 10 ms hop.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ...audio.data import AudioCache, CorpusError, NoiseMixer, SkipReport, audio_info, load_audio
from .data import frame_labels

__all__ = ["PAPER_WIDTHS", "PAPER_N_MELS", "PAPER_SAMPLE_RATE", "vctk_speakers", "esc50_folds", "VctkEscMixture",
           "paper_data"]

PathLike = Union[str, os.PathLike]
PAPER_SAMPLE_RATE = 16000
PAPER_N_MELS = 80
PAPER_WIDTHS = {"crnn": {"conv1": 78, "conv2": 256, "hidden": 336},
                "transformer": {"d_model": 64, "ff": 128, "layers": 4, "heads": 4, "attn": 64}}
ESC50_SPLIT = {"train": (1, 2, 3), "val": (4,), "test": (5,)}


def vctk_speakers(root: PathLike) -> dict[str, list[Path]]:
    """Audio files per speaker of a VCTK copy (0.92's mic1 flacs, else 0.80's wavs); a named error when
    ``root`` has neither layout."""
    root = Path(root)
    for sub, pattern in (("wav48_silence_trimmed", "*_mic1.flac"), ("wav48", "*.wav"), ("wav48_silence_trimmed", "*.flac")):
        d = root / sub
        if d.is_dir():
            out = {s.name: sorted(s.glob(pattern)) for s in sorted(d.iterdir()) if s.is_dir()}
            out = {k: v for k, v in out.items() if v}
            if out:
                return out
    raise CorpusError(root, "not a VCTK folder: expected wav48_silence_trimmed/pXXX/*_mic1.flac (VCTK 0.92) or "
                            "wav48/pXXX/*.wav (VCTK 0.80)", kind="layout")


def esc50_folds(root: PathLike) -> dict[int, list[Path]]:
    """ESC-50 clips per fold from ``meta/esc50.csv``; named errors for a missing table, a line without a
    known fold or a clip that is not in ``audio/``."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise CorpusError(meta, "ESC-50 table not found (expected ESC-50/meta/esc50.csv beside ESC-50/audio/)",
                          kind="missing")
    out: dict[int, list[Path]] = {}
    with meta.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "filename" not in rows[0] or "fold" not in rows[0]:
        raise CorpusError(meta, "expected a header with 'filename' and 'fold' columns", 1, "manifest-header")
    ci, cf = rows[0].index("filename"), rows[0].index("fold")
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            fold = int(row[cf])
        except (ValueError, IndexError):
            raise CorpusError(meta, f"fold {row[cf] if len(row) > cf else ''!r} is not a number 1-5", n,
                              "manifest-parse") from None
        if fold not in range(1, 6):
            raise CorpusError(meta, f"fold {fold} is not in 1-5", n, "manifest-parse")
        p = root / "audio" / row[ci]
        if not p.is_file():
            raise CorpusError(meta, f"names {p}, which does not exist", n, "audio-missing")
        out.setdefault(fold, []).append(p)
    return out


def _split_speakers(speakers: list[str]) -> dict[str, list[str]]:
    if len(speakers) < 3:
        raise CorpusError(None, f"the VCTK folder has {len(speakers)} speaker(s); the recipe needs at least 3 "
                                "(train, validation and test speakers)", kind="layout")
    k = max(1, len(speakers) // 10)
    return {"train": speakers[:-2 * k], "val": speakers[-2 * k:-k], "test": speakers[-k:]}


class VctkEscMixture(torch.utils.data.Dataset):
    """``(mixture crop, frame labels)`` items from VCTK utterances and ESC-50 noise (module docstring).

    Item ``i`` of epoch ``e`` is drawn from ``(seed, e, i)``; ``train=False`` sets are the same every epoch."""

    def __init__(self, utterances: list[Path], noise: NoiseMixer, *, sample_rate: int = PAPER_SAMPLE_RATE,
                 crop_seconds: float = 4.0, seed: int = 0, train: bool = False, noise_only: float = 0.1,
                 cache: Optional[AudioCache] = None, report: Optional[SkipReport] = None,
                 progress: bool = False) -> None:
        self.sample_rate, self.hop = int(sample_rate), int(sample_rate) // 100
        self.crop = int(round(crop_seconds * sample_rate)) // self.hop * self.hop
        self.frames = self.crop // self.hop + 1
        self.noise, self.seed, self.train, self.noise_only, self.cache = noise, int(seed), train, noise_only, cache
        self.epoch = 0
        report = report if report is not None else SkipReport(False)
        self.items = []
        from tqdm.auto import tqdm

        for p in tqdm(utterances, desc="scan VCTK", unit="file", disable=not progress, leave=False):
            with report.catch():
                self.items.append((p, audio_info(p)))
        if not self.items:
            raise CorpusError(None, "no usable VCTK utterance in this split", kind="empty-corpus")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, i])
        path, info = self.items[i]
        speech = np.zeros(self.crop, np.float32)
        if rng.random() >= self.noise_only:
            u = load_audio(path, self.sample_rate, cache=self.cache, info=info)
            u = u[: max(1, self.crop - self.sample_rate // 2)]
            at = int(rng.integers(0, self.crop - len(u) + 1))
            speech[at:at + len(u)] = u
        y = frame_labels(speech, self.hop).astype(np.float32)
        active = np.repeat(y > 0, self.hop)[: self.crop]
        x = self.noise(speech, rng, speech=active if active.any() else None)
        return x.astype(np.float32), y

    def __getitem__(self, i: int):
        x, y = self.item(int(i))
        return torch.from_numpy(x), torch.from_numpy(y)


def paper_data(vctk: PathLike, esc50: PathLike, *, crop_seconds: float = 4.0, seed: int = 0,
               snr_db: tuple[float, float] = (-5.0, 20.0), skip_bad: bool = False, cache_dir: Optional[str] = None,
               loader_workers: int = 0, progress: bool = False):
    """The train/val/test :class:`VctkEscMixture` sets as a :class:`~slimtrain.tasks.vad.corpus.CorpusData`."""
    from .corpus import CorpusData

    report = SkipReport(skip_bad)
    cache = AudioCache(cache_dir) if cache_dir else None
    speakers = vctk_speakers(vctk)
    split_spk = _split_speakers(sorted(speakers))
    folds = esc50_folds(esc50)
    sets, summary = {}, {}
    for split in ("train", "val", "test"):
        files = [f for fold in ESC50_SPLIT[split] for f in folds.get(fold, [])]
        if not files:
            raise CorpusError(Path(esc50) / "meta" / "esc50.csv",
                              f"no ESC-50 clip in fold(s) {ESC50_SPLIT[split]} for the {split} split", kind="layout")
        mixer = NoiseMixer(files, PAPER_SAMPLE_RATE, snr_db=snr_db, report=report, cache=cache,
                           silence_level_dbfs=(-45.0, -15.0))  # noise-only crops: at a level of its own
        utts = [u for s in split_spk[split] for u in speakers[s]]
        sets[split] = VctkEscMixture(utts, mixer, crop_seconds=crop_seconds, seed=seed, train=split == "train",
                                     cache=cache, report=report, progress=progress)
        summary[split] = {"speakers": split_spk[split], "utterances": len(sets[split]), "esc50_folds":
                          list(ESC50_SPLIT[split]), "noise_clips": len(mixer)}
    # the speech share of training frames, from the first (up to) 32 training items
    n = min(32, len(sets["train"]))
    frac = float(np.mean([sets["train"].item(i)[1].mean() for i in range(n)]))
    summary["recipe"] = "paper (VCTK + ESC-50, 16 kHz)"
    return CorpusData(sets["train"], sets["val"], sets["test"], PAPER_SAMPLE_RATE, report, summary, frac, loader_workers)
