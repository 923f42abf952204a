"""Anti-spoofing corpora from the user's disk: ASVspoof protocols, In-the-Wild, plain CSV.

:func:`read_spoof_corpus` reads one protocol into a :class:`SpoofCorpus` (a list of
:class:`SpoofItem`: file, label, attack ID, the protocol line it came from), checks every audio
file once (exists, readable, not empty, one sample rate), and :class:`SpoofCrops` /
:class:`SpoofUtterances` turn it into torch ``Dataset`` objects that read the audio from disk in
``DataLoader`` workers (nothing is held in RAM).

Formats (``format="auto"`` tells them apart by the first line; force one with ``format=``):

* ``asvspoof``: whitespace-separated protocol lines; the column count tells the edition:

  ====  ==========================================================  ===================
  cols  layout                                                      corpus
  ====  ==========================================================  ===================
  5     ``SPEAKER UTT - ATTACK KEY``                                ASVspoof 2019 LA/PA
  6     ``SPEAKER UTT GENDER - ATTACK KEY``                         ASVspoof 5 (phase 1)
  8     ``SPEAKER UTT CODEC TRANSMISSION ATTACK KEY TRIM SUBSET``   ASVspoof 2021 LA
  10    ``SPEAKER UTT GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG    ASVspoof 5
        ATTACK KEY TMP``
  ====  ==========================================================  ===================

  ``KEY`` is ``bonafide`` or ``spoof``; the audio is ``UTT.flac`` (or ``.wav``) in ``audio_dir``,
  else in ``flac/`` beside the protocol, else where the official tree puts it
  (``LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt`` ->
  ``LA/ASVspoof2019_LA_train/flac``; ``ASVspoof5.train.tsv`` -> ``flac_T`` beside or above the
  protocol folder, ``dev`` -> ``flac_D``, ``eval`` -> ``flac_E_eval``).
* ``itw``: In-the-Wild's ``meta.csv`` (header ``file,speaker,label``, labels ``bona-fide`` /
  ``spoof``; no attack IDs, so every spoof is attack ``spoof``); audio beside ``meta.csv``.
* ``csv``: ``path,label[,attack]`` with an optional header; ``label`` is ``bonafide`` /
  ``bona-fide`` / ``spoof``; paths relative to the CSV's folder (or ``audio_dir``).

Bad input raises :class:`~slimtrain.audio.data.errors.CorpusError` naming the file and the line; with
``skip_bad=True`` the item is left out and recorded in the corpus' :class:`SkipReport` instead
(a problem that leaves nothing to train on still raises).
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import AudioCache, AudioFileError, AudioInfo, audio_info, load_audio, resampled_length
from .errors import CorpusError, SkipReport

__all__ = ["SpoofItem", "SpoofCorpus", "SpoofCrops", "SpoofUtterances", "read_spoof_corpus", "detect_format",
           "read_asv_scores", "AsvScores", "clips_of", "crop_or_tile", "SPOOF_FORMATS", "PROTOCOL_LAYOUTS",
           "BONAFIDE", "asvspoof2019_paths"]

PathLike = Union[str, os.PathLike]
SPOOF_FORMATS = ("asvspoof", "itw", "csv")
BONAFIDE = "bonafide"
AUDIO_EXTS = (".flac", ".wav", ".ogg")
#: ASVspoof protocol column count -> (speaker, utterance, attack, key) column indices
PROTOCOL_LAYOUTS: dict[int, tuple[int, int, int, int]] = {5: (0, 1, 3, 4), 6: (0, 1, 4, 5), 8: (0, 1, 4, 5),
                                                          10: (0, 1, 7, 8)}
_BONA_WORDS = {"bonafide", "bona-fide", "bona_fide", "bona fide"}
_SPOOF_WORDS = {"spoof"}


@dataclass(frozen=True)
class SpoofItem:
    """One utterance: ``label`` 1 = bona fide, 0 = spoof; ``attack`` is ``"bonafide"`` for bona fide
    items, the attack ID (``A01``...) for spoofs (``"spoof"`` where the corpus names none)."""

    path: Path
    label: int
    attack: str
    utt: str
    speaker: str
    line: int
    sample_rate: int = 0
    frames: int = 0


@dataclass
class SpoofCorpus:
    """The items of one protocol, its format, the audio's sample rate and what was skipped."""

    protocol: Path
    format: str
    items: list[SpoofItem]
    audio_dir: Optional[Path]
    sample_rate: int
    report: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def attacks(self) -> np.ndarray:
        return np.array([it.attack for it in self.items], dtype=object)

    def counts(self) -> dict[str, int]:
        """Items per attack ID (``bonafide`` first)."""
        c = Counter(it.attack for it in self.items)
        return {k: c[k] for k in sorted(c, key=lambda a: (a != BONAFIDE, a))}

    def seconds(self) -> float:
        return float(sum(it.frames / it.sample_rate for it in self.items if it.sample_rate))


class _Problems:
    """Raise :class:`CorpusError` or, with ``report.skip_bad``, record the problem in ``report``."""

    def __init__(self, report: SkipReport) -> None:
        self.report = report

    def __call__(self, file: PathLike, line: Optional[int], message: str, kind: str = "protocol") -> None:
        self.report.add(CorpusError(file, message, line=line, kind=kind))


def _label_of(word: str) -> Optional[int]:
    w = word.strip().lower()
    if w in _BONA_WORDS:
        return 1
    if w in _SPOOF_WORDS:
        return 0
    return None


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise CorpusError(path, "protocol file not found" if not path.exists() else "protocol is not a file")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(path, f"not a text protocol (not UTF-8: {e.reason} at byte {e.start})") from None


def detect_format(path: PathLike) -> str:
    """``"asvspoof"``, ``"itw"`` or ``"csv"`` from the first non-empty line of ``path``."""
    p = Path(path)
    for line in _read_lines(p):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if "," in s:
            head = [c.strip().lower() for c in next(csv.reader([s]))]
            if {"file", "speaker", "label"} <= set(head):
                return "itw"
            return "csv"
        return "asvspoof"
    raise CorpusError(p, "protocol is empty (no lines to read)")


def _audio_candidates(protocol: Path) -> list[Path]:
    """Folders where an ASVspoof protocol's audio lives, in the order they are tried."""
    out = [protocol.parent / "flac"]
    m = re.match(r"ASVspoof2019\.(LA|PA)\.cm\.(train|dev|eval)\.", protocol.name)
    if m:
        out.append(protocol.parent.parent / f"ASVspoof2019_{m.group(1)}_{m.group(2)}" / "flac")
    m = re.match(r"ASVspoof5\.(train|dev|eval)", protocol.name)
    if m:
        sub = {"train": ["flac_T"], "dev": ["flac_D"], "eval": ["flac_E_eval", "flac_E"]}[m.group(1)]
        for base in (protocol.parent, protocol.parent.parent):
            out += [base / s for s in sub]
    m = re.match(r"ASVspoof2021\.(LA|DF|PA)\.", protocol.name)
    if m:
        out.append(protocol.parent.parent / f"ASVspoof2021_{m.group(1)}_eval" / "flac")
    return out


def _find_audio(folder: Path, stem: str) -> Optional[Path]:
    for ext in AUDIO_EXTS:
        f = folder / f"{stem}{ext}"
        if f.is_file():
            return f
    return None


def _parse_asvspoof(path: Path, audio_dir: Optional[Path], bad: _Problems) -> tuple[list[SpoofItem], Path]:
    if audio_dir is None:
        tried = _audio_candidates(path)
        audio_dir = next((d for d in tried if d.is_dir()), None)
        if audio_dir is None:
            raise CorpusError(path, "no audio folder found for this protocol; tried "
                              + ", ".join(str(d) for d in tried) + " (give it with --audio-dir)")
    elif not audio_dir.is_dir():
        raise CorpusError(path, f"audio folder {audio_dir} does not exist")
    items: list[SpoofItem] = []
    seen: dict[str, int] = {}
    known = ", ".join(f"{n} ({' '.join(_LAYOUT_NAMES[n])})" for n in PROTOCOL_LAYOUTS)
    for no, line in enumerate(_read_lines(path), 1):
        cols = line.split()
        if not cols or cols[0].startswith("#"):
            continue
        lay = PROTOCOL_LAYOUTS.get(len(cols))
        if lay is None:
            bad(path, no, f"{len(cols)} columns; an ASVspoof protocol line has one of: {known}")
            continue
        spk, utt, attack, key = (cols[i] for i in lay)
        label = _label_of(key) if key in ("bonafide", "spoof") else None
        if label is None:
            bad(path, no, f"unknown key {key!r} in column {lay[3] + 1} (expected 'bonafide' or 'spoof')")
            continue
        if utt in seen:
            bad(path, no, f"utterance {utt} is listed twice (first on line {seen[utt]})")
            continue
        seen[utt] = no
        f = _find_audio(audio_dir, utt)
        if f is None:
            bad(path, no, f"names {utt}, but {audio_dir / (utt + '.flac')} does not exist", kind="missing-audio")
            continue
        items.append(SpoofItem(f, label, BONAFIDE if label else (attack if attack != "-" else "spoof"), utt, spk, no))
    return items, audio_dir


_LAYOUT_NAMES = {5: ("SPEAKER", "UTT", "-", "ATTACK", "KEY"), 6: ("SPEAKER", "UTT", "GENDER", "-", "ATTACK", "KEY"),
                 8: ("SPEAKER", "UTT", "CODEC", "TX", "ATTACK", "KEY", "TRIM", "SUBSET"),
                 10: ("SPEAKER", "UTT", "GENDER", "CODEC", "CODEC_Q", "CODEC_SEED", "TAG", "ATTACK", "KEY", "TMP")}


def _csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    lines = _read_lines(path)
    for no, row in enumerate(csv.reader(lines), 1):
        if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        yield no, [c.strip() for c in row]


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def _parse_itw(path: Path, audio_dir: Optional[Path], bad: _Problems) -> tuple[list[SpoofItem], Path]:
    base = audio_dir or path.parent
    rows = iter(_csv_rows(path))
    try:
        hno, head = next(rows)
    except StopIteration:
        raise CorpusError(path, "meta.csv is empty") from None
    cols = [h.lower() for h in head]
    missing = [c for c in ("file", "speaker", "label") if c not in cols]
    if missing:
        raise CorpusError(path, f"header {','.join(head)} lacks column(s) {', '.join(missing)} (In-the-Wild meta.csv has "
                          "file,speaker,label)", line=hno)
    fi, si, li = cols.index("file"), cols.index("speaker"), cols.index("label")
    items: list[SpoofItem] = []
    for no, row in rows:
        if len(row) != len(cols):
            bad(path, no, f"{len(row)} fields, the header has {len(cols)}")
            continue
        label = _label_of(row[li])
        if label is None:
            bad(path, no, f"unknown label {row[li]!r} (expected 'bona-fide' or 'spoof')")
            continue
        f = _resolve(base, row[fi])
        if not f.is_file():
            bad(path, no, f"names {row[fi]}, but {f} does not exist", kind="missing-audio")
            continue
        items.append(SpoofItem(f, label, BONAFIDE if label else "spoof", Path(row[fi]).stem, row[si], no))
    return items, base


def _parse_csv(path: Path, audio_dir: Optional[Path], bad: _Problems) -> tuple[list[SpoofItem], Path]:
    base = audio_dir or path.parent
    items: list[SpoofItem] = []
    first = True
    for no, row in _csv_rows(path):
        if first:
            first = False
            if [c.lower() for c in row[:2]] == ["path", "label"]:
                if len(row) > 2 and row[2].lower() != "attack":
                    raise CorpusError(path, f"header column 3 is {row[2]!r}; a spoof CSV is path,label[,attack]", line=no)
                continue
        if len(row) not in (2, 3):
            bad(path, no, f"{len(row)} fields; a spoof CSV row is path,label[,attack]")
            continue
        label = _label_of(row[1])
        if label is None:
            bad(path, no, f"unknown label {row[1]!r} (expected 'bonafide', 'bona-fide' or 'spoof')")
            continue
        f = _resolve(base, row[0])
        if not f.is_file():
            bad(path, no, f"names {row[0]}, but {f} does not exist", kind="missing-audio")
            continue
        attack = BONAFIDE if label else ((row[2] if len(row) == 3 and row[2] else "spoof"))
        items.append(SpoofItem(f, label, attack, Path(row[0]).stem, "-", no))
    return items, base


_PARSERS: dict[str, Callable] = {"asvspoof": _parse_asvspoof, "itw": _parse_itw, "csv": _parse_csv}


def _scan_audio(items: list[SpoofItem], protocol: Path, bad: _Problems, progress: bool) -> list[SpoofItem]:
    from tqdm.auto import tqdm

    out = []
    for it in tqdm(items, desc=f"scan {protocol.name}", unit="file", disable=not progress, leave=False):
        try:
            info = audio_info(it.path)
        except AudioFileError as e:  # unreadable or empty: name the protocol line and the audio file
            bad(protocol, it.line, f"{it.path}: {e.reason}", kind=e.kind)
            continue
        out.append(SpoofItem(it.path, it.label, it.attack, it.utt, it.speaker, it.line, info.sample_rate, info.frames))
    return out


def read_spoof_corpus(
    path: PathLike,
    *,
    format: str = "auto",
    audio_dir: Optional[PathLike] = None,
    skip_bad: bool = False,
    report: Optional[SkipReport] = None,
    progress: bool = True,
    allow_mixed_rates: bool = False,
) -> SpoofCorpus:
    """Read and check one anti-spoofing protocol (see the module docstring for the formats).

    Every audio file's header is read once (soundfile): missing, unreadable or empty files, and
    files whose sample rate differs from the corpus' (the rate most files have) are
    :class:`CorpusError`\\ s naming the protocol line, or skipped into ``report`` with
    ``skip_bad=True`` (mixed rates are accepted with ``allow_mixed_rates=True``: every file is then
    resampled when it is read). ``report``: a :class:`SkipReport` to collect the skips in (several
    protocols can share one); it skips when ``skip_bad`` or its own ``skip_bad`` is true.
    """
    p = Path(path)
    fmt = detect_format(p) if format == "auto" else format
    if fmt not in SPOOF_FORMATS:
        raise CorpusError(p, f"unknown format {format!r}; choose auto or one of {', '.join(SPOOF_FORMATS)}")
    report = report if report is not None else SkipReport(skip_bad)
    if skip_bad:  # a report of its own that does not skip is told to (one that skips keeps skipping)
        report.skip_bad = True
    bad = _Problems(report)
    items, adir = _PARSERS[fmt](p, Path(audio_dir) if audio_dir is not None else None, bad)
    items = _scan_audio(items, p, bad, progress)
    if not items:
        raise CorpusError(p, "no usable items" + (f" ({len(report)} skipped, see the skip report)" if len(report) else ""))
    rates = Counter(it.sample_rate for it in items)
    rate = rates.most_common(1)[0][0]
    if len(rates) > 1 and not allow_mixed_rates:
        keep = []
        for it in items:
            if it.sample_rate != rate:
                bad(p, it.line, f"{it.path} is at {it.sample_rate} Hz, the rest of the corpus at {rate} Hz "
                                f"({dict(rates)}); resample the corpus to one rate", kind="mixed-rate")
            else:
                keep.append(it)
        items = keep
    if len({it.label for it in items}) < 2:
        # training and EER both need the two classes; say so here, not deep in a metric
        only = "bona fide" if items[0].label else "spoofed"
        raise CorpusError(p, f"every usable item is {only}; a countermeasure corpus needs both classes")
    return SpoofCorpus(p, fmt, items, adir, rate, report)


def asvspoof2019_paths(root: PathLike) -> dict[str, Path]:
    """The train/dev/eval CM protocols (and the ASV score files, where present) of an ASVspoof 2019 LA copy.

    ``root`` is the folder that holds ``LA/`` or ``LA/`` itself. Returns keys ``train``, ``dev``,
    ``eval`` and, where the files exist, ``asv_dev``, ``asv_eval``; a missing protocol is a
    :class:`CorpusError` naming the path it expected."""
    r = Path(root)
    la = r / "LA" if (r / "LA").is_dir() else r
    prot = la / "ASVspoof2019_LA_cm_protocols"
    out = {}
    for split, name in (("train", "train.trn"), ("dev", "dev.trl"), ("eval", "eval.trl")):
        f = prot / f"ASVspoof2019.LA.cm.{name}.txt"
        if not f.is_file():
            raise CorpusError(f, f"--asvspoof-root: the {split} protocol is not there (is {r} an ASVspoof 2019 LA copy?)")
        out[split] = f
    for split in ("dev", "eval"):
        f = la / "ASVspoof2019_LA_asv_scores" / f"ASVspoof2019.LA.asv.{split}.gi.trl.scores.txt"
        if f.is_file():
            out[f"asv_{split}"] = f
    return out


# --------------------------------------------------------------------------------------------- ASV scores
@dataclass
class AsvScores:
    """ASV scores split by trial type: target, non-target and spoof trials (ASVspoof 2019 format)."""

    target: np.ndarray
    nontarget: np.ndarray
    spoof: np.ndarray


#: ASV score file column count -> (key, score) column indices
_ASV_LAYOUTS = {3: (1, 2), 6: (4, 5)}


def read_asv_scores(path: PathLike) -> AsvScores:
    """Read an ASVspoof 2019 ASV score file: lines ``SOURCE KEY SCORE`` (the organizers'
    ``ASVspoof2019.LA.asv.{dev,eval}.gi.trl.scores.txt``) with ``SOURCE`` ``bonafide`` or an attack ID
    and ``KEY`` ``target``, ``nontarget`` or ``spoof``; 6-column lines (the t-DCF v2 package's score
    files) take the key from column 5 and the score from column 6. Bad lines are :class:`CorpusError`
    naming the line; each of the three trial types must be present."""
    p = Path(path)
    groups: dict[str, list[float]] = {"target": [], "nontarget": [], "spoof": []}
    for no, line in enumerate(_read_lines(p), 1):
        cols = line.split()
        if not cols or cols[0].startswith("#"):
            continue
        if len(cols) not in _ASV_LAYOUTS:
            raise CorpusError(p, f"{len(cols)} columns; an ASV score line is SOURCE KEY SCORE (or the 6 columns of "
                                 "the t-DCF package's score files)", line=no)
        ki, si = _ASV_LAYOUTS[len(cols)]
        if cols[ki] not in groups:
            raise CorpusError(p, f"unknown key {cols[ki]!r} in column {ki + 1} (expected target, nontarget or spoof)",
                              line=no)
        try:
            s = float(cols[si])
        except ValueError:
            s = float("nan")
        if not np.isfinite(s):
            raise CorpusError(p, f"score {cols[si]!r} is not a finite number", line=no)
        groups[cols[ki]].append(s)
    missing = [k for k, v in groups.items() if not v]
    if missing:
        raise CorpusError(p, f"no {' / '.join(missing)} trials; min t-DCF needs target, nontarget and spoof ASV scores")
    return AsvScores(*(np.asarray(groups[k], dtype=np.float64) for k in ("target", "nontarget", "spoof")))


# --------------------------------------------------------------------------------------------- datasets
def crop_or_tile(x: np.ndarray, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``n`` samples of ``x``: a crop (random with ``rng``, else from the start) of a longer signal, the
    signal repeated end to end for a shorter one (as the ASVspoof baselines pad)."""
    if len(x) >= n:
        off = int(rng.integers(0, len(x) - n + 1)) if rng is not None else 0
        return x[off:off + n]
    reps = -(-n // max(len(x), 1))
    return np.tile(x, reps)[:n]


def clips_of(x: np.ndarray, n: int) -> np.ndarray:
    """Clips ``(k, n)`` covering a whole recording with 50 % overlap (the last one ends at the end);
    a recording of at most ``n`` samples gives one clip, repeated end to end."""
    if len(x) <= n:
        return crop_or_tile(x, n)[None]
    hop = max(1, n // 2)
    starts = list(range(0, len(x) - n + 1, hop))
    if starts[-1] != len(x) - n:
        starts.append(len(x) - n)
    return np.stack([x[s:s + n] for s in starts])


def _load(item: SpoofItem, sample_rate: int, crop: Optional[int], rng: Optional[np.random.Generator],
          cache: Optional[AudioCache] = None) -> np.ndarray:
    """Mono float32 audio of ``item`` at ``sample_rate``; with ``crop`` only a window of that many samples
    (random with ``rng``), read from disk alone (:func:`slimtrain.audio.data.load_audio`)."""
    info = AudioInfo(str(item.path), item.sample_rate, item.frames, 1) if item.sample_rate else None
    if crop is None:
        return load_audio(item.path, sample_rate, cache=cache, info=info)
    total = resampled_length(item.frames, item.sample_rate, sample_rate) if info is not None else 0
    if total > crop:
        off = int(rng.integers(0, total - crop + 1)) if rng is not None else 0
        x = load_audio(item.path, sample_rate, start=off, stop=off + crop, cache=cache, info=info)
    else:
        x = load_audio(item.path, sample_rate, cache=cache, info=info)
    return crop_or_tile(x, crop)


class SpoofCrops(Dataset):
    """Training crops: item ``i`` is ``(waveform (crop_samples,), label)`` as float32 tensors, a random
    crop (seeded by ``seed``, the epoch set with :meth:`set_epoch` and ``i``, so workers and resumed runs
    repeat) of the file at ``sample_rate``, read from disk when asked for."""

    def __init__(self, corpus: SpoofCorpus, sample_rate: int, crop_samples: int, *, seed: int = 0,
                 random_crop: bool = True, cache: Optional[AudioCache] = None) -> None:
        if crop_samples < 1:
            raise ValueError(f"crop_samples must be >= 1, got {crop_samples}")
        self.items, self.sample_rate, self.crop = list(corpus.items), int(sample_rate), int(crop_samples)
        self.seed, self.epoch, self.random_crop, self.cache = int(seed), 0, random_crop, cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.float32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        it = self.items[i]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.random_crop else None
        x = _load(it, self.sample_rate, self.crop, rng, self.cache)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.tensor(float(it.label))


class SpoofUtterances(Dataset):
    """Evaluation items: ``(clips (k, clip_samples), label, index)`` of each whole file at ``sample_rate``
    (:func:`clips_of`); use with ``DataLoader(batch_size=None)``."""

    def __init__(self, corpus: SpoofCorpus, sample_rate: int, clip_samples: int, *,
                 cache: Optional[AudioCache] = None) -> None:
        self.items, self.sample_rate, self.clip = list(corpus.items), int(sample_rate), int(clip_samples)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        it = self.items[i]
        x = _load(it, self.sample_rate, None, None, self.cache)
        return torch.from_numpy(clips_of(np.asarray(x, dtype=np.float32), self.clip)), it.label, i
