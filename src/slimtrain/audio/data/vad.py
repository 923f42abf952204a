"""VAD corpora of the user's: readers (RTTM beside each file, one RTTM for a folder, CSV manifest) and a
crop dataset that streams from disk.

Three layouts (:func:`read_vad_corpus` tells them apart):

* a **folder** of audio files, each with an ``.rttm`` of the same stem beside it (an empty RTTM: no
  speech; a missing RTTM: a :class:`CorpusError` naming the audio file);
* one **RTTM file** for a folder: the audio files under the RTTM's folder, matched by stem to the RTTM's
  ``uri`` field; an audio file with no line is taken as *no speech* and counted in
  :attr:`VadCorpus.unannotated` (printed by the scan), a uri without an audio file is an error;
* a **CSV manifest** ``path,start,end`` (see :func:`slimtrain.audio.data.rttm.read_segment_csv`).

Checks at scan time (headers only, no samples decoded): missing / unreadable / empty audio, RTTM lines
that do not parse or have negative durations, segments that end more than one frame (10 ms) past the
end of their file, and -- when ``resample=False`` -- a file whose rate is not ``sample_rate`` (mixed
sample rates). Each is a :class:`CorpusError` naming the file and line; with a ``SkipReport(skip_bad=True)``
the recording is left out and reported instead. With ``resample=True`` (the default) files of any rate
are resampled to ``sample_rate`` when read, so mixed rates are not an error.

Frames follow the VAD models (:mod:`slimtrain.apps.vad.models`): hop ``sample_rate // 100`` (10 ms), frame
``t`` of a window starting at sample ``o`` is centred on sample ``o + t * hop``, ``samples // hop + 1``
frames; a frame is speech when its centre lies in ``[start, end)`` of a segment. Frames centred past the
end of the file (a padded last crop) get the label ``-1`` (ignore).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from .audio import AudioCache, AudioInfo, audio_info, list_audio, load_audio, resampled_length
from .errors import CorpusError, SkipReport
from .rttm import Segment, merge_segments, read_rttm, read_segment_csv

__all__ = ["VadRecording", "VadCorpus", "read_vad_corpus", "frame_labels_from_segments", "VadCropDataset",
           "END_TOLERANCE_S", "IGNORE"]

PathLike = Union[str, os.PathLike]
#: a segment may end this far past the end of its file (one 10 ms frame of annotation rounding)
END_TOLERANCE_S = 0.01
#: the label of frames past the end of a file (padding); losses and metrics leave them out
IGNORE = -1


@dataclass
class VadRecording:
    """One audio file and its merged speech segments (seconds)."""

    path: Path
    info: AudioInfo
    segments: list[tuple[float, float]]

    def num_samples(self, sample_rate: int) -> int:
        return resampled_length(self.info.frames, self.info.sample_rate, sample_rate)


@dataclass
class VadCorpus:
    """The recordings of one split at ``sample_rate``, what the scan skipped, and how it was read."""

    recordings: list[VadRecording]
    sample_rate: int
    source: str
    layout: str
    report: SkipReport = field(default_factory=SkipReport)
    unannotated: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(r.info.duration for r in self.recordings))

    @property
    def speech_seconds(self) -> float:
        return float(sum(min(b, r.info.duration) - a for r in self.recordings for a, b in r.segments))

    def summary(self) -> dict:
        """Counts for a result JSON."""
        return {"source": self.source, "layout": self.layout, "files": len(self.recordings),
                "hours": round(self.seconds / 3600, 4), "speech_fraction": round(self.speech_seconds / max(self.seconds, 1e-9), 4),
                "sample_rate": self.sample_rate, "native_rates": sorted({r.info.sample_rate for r in self.recordings}),
                "unannotated_files": len(self.unannotated), "skipped": self.report.counts()}


def _layout(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise CorpusError(path, "VAD data not found (give a folder of audio + .rttm files, one .rttm file, or a "
                                "path,start,end .csv manifest)", kind="missing")
    suffix = path.suffix.lower()
    if suffix == ".rttm":
        return "rttm"
    if suffix == ".csv":
        return "csv"
    raise CorpusError(path, f"unknown VAD data file type {suffix!r}: give a folder, an .rttm file or a .csv manifest",
                      kind="layout")


def _check_segments(segs: Sequence[Segment], info: AudioInfo, audio: Path) -> None:
    for s in segs:
        if s.end > info.duration + END_TOLERANCE_S:
            raise CorpusError(s.source, f"segment {s.start:g}-{s.end:g} s ends past the end of {audio} "
                                        f"({info.duration:.3f} s)", s.line, "segment-past-end")


def read_vad_corpus(path: PathLike, *, sample_rate: int = 16000, resample: bool = True,
                    report: Optional[SkipReport] = None, progress: bool = False, desc: str = "scan") -> VadCorpus:
    """Read a VAD corpus (layouts and checks: see the module docstring).

    ``report``: a :class:`SkipReport`; ``SkipReport(skip_bad=True)`` leaves bad recordings out and records
    them, the default raises the first :class:`CorpusError`. ``progress``: a tqdm bar over the files."""
    from tqdm.auto import tqdm

    p = Path(path)
    report = report if report is not None else SkipReport(False)
    layout = _layout(p)
    sr = int(sample_rate)
    # (audio path, segments or None for "read the .rttm beside it", the annotation file)
    todo: list[tuple[Path, Optional[list[Segment]]]] = []
    unannotated: list[str] = []
    bad_keys: set[str] = set()
    if layout == "folder":
        files = list_audio(p)
        if not files:
            raise CorpusError(p, "folder holds no audio files (wav, flac, ogg, ...)", kind="empty-folder")
        todo = [(f, None) for f in files]
    elif layout == "rttm":
        by_uri, bad_keys = read_rttm(p, report)
        files = list_audio(p.parent)
        stems: dict[str, Path] = {}
        for f in files:
            stems.setdefault(f.stem, f)
        for uri, segs in sorted(by_uri.items()):
            if uri not in stems and uri not in bad_keys:
                report.add(CorpusError(p, f"recording {uri!r} has no audio file under {p.parent}", segs[0].line,
                                       "audio-missing"))
        for f in files:
            if f.stem in bad_keys:
                continue
            if f.stem not in by_uri:
                unannotated.append(str(f))
            todo.append((f, by_uri.get(f.stem, [])))
    else:
        by_path, bad_keys = read_segment_csv(p, report)
        todo = [(Path(k), v) for k, v in sorted(by_path.items()) if k not in bad_keys]
        if not todo and not len(report):
            raise CorpusError(p, "manifest lists no files", kind="empty-manifest")
    recs: list[VadRecording] = []
    for audio, segs in tqdm(todo, desc=desc, unit="file", disable=not progress, leave=False):
        with report.catch():
            info = audio_info(audio)
            if not resample and info.sample_rate != sr:
                raise CorpusError(audio, f"mixed sample rates: this file is {info.sample_rate} Hz, the corpus is read at "
                                         f"{sr} Hz without resampling (allow resampling, or convert the file)",
                                  kind="sample-rate")
            if segs is None:
                rttm = audio.with_suffix(".rttm")
                if not rttm.is_file():
                    raise CorpusError(audio, f"no RTTM beside the audio file (expected {rttm.name}; an empty .rttm "
                                             "means no speech)", kind="rttm-missing")
                sub = SkipReport(False)
                by_uri, _ = read_rttm(rttm, sub)
                segs = [s for v in by_uri.values() for s in v]  # a per-file RTTM: any uri is this file
            _check_segments(segs, info, audio)
            recs.append(VadRecording(audio, info, merge_segments(segs)))
    if not recs:
        raise CorpusError(p, "no usable recording" + (f" ({len(report)} skipped; see the skip report)" if len(report) else ""),
                          kind="empty-corpus")
    return VadCorpus(recs, sr, str(p), layout, report, unannotated)


def frame_labels_from_segments(segments: Sequence[tuple[float, float]], offset: int, num_frames: int, hop: int,
                               sample_rate: int, total_samples: Optional[int] = None) -> np.ndarray:
    """Labels (float32) of ``num_frames`` frames centred on samples ``offset + t * hop``: 1 inside a
    segment (``start <= centre / sample_rate < end``), 0 outside, :data:`IGNORE` past ``total_samples``."""
    centres = offset + np.arange(num_frames, dtype=np.int64) * hop
    t = centres / float(sample_rate)
    lab = np.zeros(num_frames, dtype=np.float32)
    if len(segments):
        starts = np.asarray([a for a, _ in segments])
        ends = np.asarray([b for _, b in segments])
        k = np.searchsorted(starts, t, side="right") - 1  # last segment starting at or before t
        inside = (k >= 0) & (t < ends[np.maximum(k, 0)])
        lab[inside] = 1.0
    if total_samples is not None:
        lab[centres >= total_samples] = IGNORE
    return lab


class VadCropDataset(Dataset):
    """``(waveform crop, frame labels)`` pairs from a :class:`VadCorpus`, read from disk per item.

    Each recording is tiled into crops of ``crop_seconds`` (the last one zero-padded, its padded frames
    labelled :data:`IGNORE`). With ``train=True`` each crop's start moves by a random multiple of the hop
    (up to half a crop, drawn from ``(seed, epoch, index)``; call :meth:`set_epoch`) and ``noise`` (a
    :class:`~slimtrain.audio.data.noise.NoiseMixer`), if given, is mixed in. Only the index (file, offset) is
    held in memory; workers of a ``DataLoader`` each open the files they need. ``cache``: an
    :class:`~slimtrain.audio.data.audio.AudioCache` so resampling is done once per file.

    Items are ``(torch.float32 (crop_samples,), torch.float32 (crop_samples // hop + 1,))``.
    """

    def __init__(self, corpus: VadCorpus, crop_seconds: float = 4.0, *, train: bool = False, seed: int = 0,
                 noise: Optional[Callable] = None, cache: Optional[AudioCache] = None) -> None:
        if not crop_seconds > 0:
            raise ValueError(f"crop_seconds must be > 0, got {crop_seconds}")
        self.corpus = corpus
        self.sample_rate = corpus.sample_rate
        self.hop = self.sample_rate // 100
        self.crop = int(round(crop_seconds * self.sample_rate)) // self.hop * self.hop
        self.frames = self.crop // self.hop + 1
        self.train, self.seed, self.epoch = train, int(seed), 0
        self.noise, self.cache = noise, cache
        index = []
        for i, r in enumerate(corpus.recordings):
            n = r.num_samples(self.sample_rate)
            for o in range(0, max(n, 1), self.crop):
                index.append((i, o))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Draw other crop offsets and noise in the next epoch (``train=True``)."""
        self.epoch = int(epoch)

    def window(self, i: int) -> tuple[int, int]:
        """``(recording index, start sample)`` of item ``i`` in the current epoch."""
        rec, off = (int(v) for v in self.index[i])
        if self.train:
            n = self.corpus.recordings[rec].num_samples(self.sample_rate)
            rng = np.random.default_rng([self.seed, self.epoch, i])
            half = self.crop // self.hop // 2
            off = off + int(rng.integers(-half, half + 1)) * self.hop
            off = int(min(max(off, 0), max(0, (n - self.crop) // self.hop * self.hop)))
        return rec, off

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` as numpy arrays (``__getitem__`` wraps them in tensors)."""
        if not 0 <= i < len(self):
            raise IndexError(f"VadCropDataset index {i} out of range ({len(self)} crops)")
        rec_i, off = self.window(i)
        rec = self.corpus.recordings[rec_i]
        n = rec.num_samples(self.sample_rate)
        x = load_audio(rec.path, self.sample_rate, start=off, stop=off + self.crop, cache=self.cache, info=rec.info)
        if len(x) < self.crop:
            x = np.concatenate([x, np.zeros(self.crop - len(x), np.float32)])
        y = frame_labels_from_segments(rec.segments, off, self.frames, self.hop, self.sample_rate, n)
        if self.train and self.noise is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i, 1])
            x = self.noise(x, rng, speech=np.repeat(y > 0, self.hop)[: self.crop])
        return x.astype(np.float32, copy=False), y

    def __getitem__(self, i: int):
        import torch

        x, y = self.item(int(i))
        return torch.from_numpy(x), torch.from_numpy(y)
