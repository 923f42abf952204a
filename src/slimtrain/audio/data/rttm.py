"""RTTM speech segments and ``path,start,end`` CSV manifests, read line by line with named errors.

RTTM (NIST): ``SPEAKER <uri> <channel> <onset> <duration> <ortho> <stype> <name> <conf> [<slat>]``. Only
``SPEAKER`` lines carry segments; the other NIST types (``SPKR-INFO``, ``LEXEME``, ``NOSCORE``, ...), blank
lines and ``;;`` comments are skipped. Segments of every speaker are merged (the VAD only asks "is anyone
speaking"). A line with fewer than 5 fields, an unknown type, an onset/duration that is not a finite
number, a negative onset or a negative duration is a :class:`CorpusError` naming the file and line.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import CorpusError, SkipReport

__all__ = ["Segment", "read_rttm", "read_segment_csv", "merge_segments", "RTTM_TYPES"]

PathLike = Union[str, os.PathLike]

#: the NIST RTTM line types; only SPEAKER lines are speech segments
RTTM_TYPES = ("SPEAKER", "SPKR-INFO", "SEGMENT", "LEXEME", "NON-LEX", "NON-SPEECH", "FILLER", "NOSCORE",
              "NO_RT_METADATA", "SU", "A/P", "CB", "IP", "EDIT", "SPEAKER-INFO")


@dataclass(frozen=True)
class Segment:
    """A speech segment in seconds, with the file and line it came from (for error messages)."""

    start: float
    end: float
    source: str
    line: int


def _number(text: str, what: str, path, line: int, kind: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise CorpusError(path, f"{what} {text!r} is not a number", line, kind) from None
    if not math.isfinite(v):
        raise CorpusError(path, f"{what} {text!r} is not finite", line, kind)
    return v


def read_rttm(path: PathLike, report: Optional[SkipReport] = None) -> tuple[dict[str, list[Segment]], set[str]]:
    """Segments per recording (``uri``) of an RTTM file, and the set of uris that had a bad line.

    Without ``report`` (or with ``skip_bad=False``) the first bad line raises :class:`CorpusError`; with
    ``skip_bad`` each bad line is recorded and its uri (where the line has one) is returned in the
    bad set, so the caller can leave out that recording rather than train on half its labels."""
    p = Path(path)
    report = report if report is not None else SkipReport(False)
    out: dict[str, list[Segment]] = {}
    bad: set[str] = set()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report.add(CorpusError(p, f"cannot read RTTM file ({e})", kind="rttm-unreadable"))
        return out, {"*"}
    for n, raw in enumerate(text.splitlines(), start=1):
        f = raw.split()
        if not f or f[0].startswith(";;") or f[0].startswith("#"):
            continue
        with report.catch():
            try:
                if f[0] not in RTTM_TYPES:
                    raise CorpusError(p, f"unknown RTTM line type {f[0]!r} (expected SPEAKER ... ; got {raw.strip()!r})",
                                      n, "rttm-parse")
                if f[0] != "SPEAKER":
                    continue
                if len(f) < 5:
                    raise CorpusError(p, f"an RTTM SPEAKER line needs at least 5 fields (SPEAKER uri channel onset "
                                         f"duration ...), got {len(f)}: {raw.strip()!r}", n, "rttm-parse")
                onset = _number(f[3], "onset", p, n, "rttm-parse")
                dur = _number(f[4], "duration", p, n, "rttm-parse")
                if onset < 0:
                    raise CorpusError(p, f"negative onset {onset:g} s", n, "rttm-negative")
                if dur < 0:
                    raise CorpusError(p, f"negative duration {dur:g} s", n, "rttm-negative")
            except CorpusError:
                if len(f) >= 2 and f[0] == "SPEAKER":
                    bad.add(f[1])
                raise
            out.setdefault(f[1], []).append(Segment(onset, onset + dur, str(p), n))
    return out, bad


def read_segment_csv(path: PathLike, report: Optional[SkipReport] = None
                     ) -> tuple[dict[str, list[Segment]], set[str]]:
    """Segments per audio path of a CSV manifest with the header ``path,start,end`` (seconds; one row per
    speech segment; a row with empty ``start`` and ``end`` lists a file without speech). Paths are
    relative to the CSV's folder unless absolute. Returns ``(segments by resolved path, bad paths)``."""
    p = Path(path)
    report = report if report is not None else SkipReport(False)
    out: dict[str, list[Segment]] = {}
    bad: set[str] = set()
    try:
        rows = list(csv.reader(p.open(newline="", encoding="utf-8")))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(p, f"cannot read CSV manifest ({e})", kind="manifest-unreadable") from None
    if not rows or [c.strip().lower() for c in rows[0][:3]] != ["path", "start", "end"]:
        raise CorpusError(p, f"a VAD manifest starts with the header 'path,start,end', got "
                             f"{','.join(rows[0]) if rows else 'an empty file'!r}", 1, "manifest-header")
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        key = None
        with report.catch():
            try:
                if len(row) < 3:
                    raise CorpusError(p, f"expected 3 columns path,start,end, got {len(row)}: {','.join(row)!r}", n,
                                      "manifest-parse")
                audio = Path(row[0].strip())
                key = str(audio if audio.is_absolute() else (p.parent / audio))
                s, e = row[1].strip(), row[2].strip()
                if not s and not e:
                    out.setdefault(key, [])
                    continue
                start = _number(s, "start", p, n, "manifest-parse")
                end = _number(e, "end", p, n, "manifest-parse")
                if start < 0:
                    raise CorpusError(p, f"negative start {start:g} s", n, "manifest-negative")
                if end < start:
                    raise CorpusError(p, f"negative duration: end {end:g} s is before start {start:g} s", n,
                                      "manifest-negative")
            except CorpusError:
                if key is not None:
                    bad.add(key)
                raise
            out.setdefault(key, []).append(Segment(start, end, str(p), n))
    return out, bad


def merge_segments(segments) -> list[tuple[float, float]]:
    """Sorted, non-overlapping ``(start, end)`` pairs covering the union of ``segments``."""
    pairs = sorted((s.start, s.end) if isinstance(s, Segment) else (float(s[0]), float(s[1])) for s in segments)
    out: list[list[float]] = []
    for a, b in pairs:
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
