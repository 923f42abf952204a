"""Named errors for bad corpora, and the report of what ``skip_bad`` left out.

* :class:`CorpusError` is raised for anything wrong in a user's corpus (audio, RTTM, manifest,
  protocol); its message names the file and, where there is one, the line.
* :class:`SkipReport` is the policy: with ``skip_bad=False`` (the default) :meth:`SkipReport.catch`
  lets the error through; with ``skip_bad=True`` it records the item (path, line, reason), the run
  goes on, and at the end :meth:`SkipReport.summary` / :meth:`SkipReport.write` /
  :meth:`SkipReport.counts` say what was left out (printed, a CSV or JSONL file, the result JSON).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, TextIO, Union

__all__ = ["CorpusError", "SkippedItem", "SkipReport"]

PathLike = Union[str, os.PathLike]


class CorpusError(ValueError):
    """A file of the user's corpus cannot be used. The message is ``"<path>, line <n>: <reason>"``
    (or ``"<path>: <reason>"`` without a line); ``path``, ``line``, ``reason`` and ``kind`` (a short
    category such as ``"rttm-parse"``, used to count skips) are kept as attributes."""

    def __init__(self, path: Optional[PathLike], reason: str, line: Optional[int] = None, kind: str = "corpus") -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        self.kind = kind
        where = self.path if self.path is not None else "corpus"
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # picklable, so errors raised in DataLoader workers keep their fields
        return (type(self), (self.path, self.reason, self.line, self.kind))


@dataclass(frozen=True)
class SkippedItem:
    """One item left out by ``skip_bad``."""

    path: Optional[str]
    line: Optional[int]
    kind: str
    reason: str


class SkipReport:
    """Collects the items that ``skip_bad`` leaves out (see the module docstring).

    ``with report.catch(): ...`` raises the :class:`CorpusError` of the block unless ``skip_bad``, in
    which case it records it and the block's remaining statements are skipped."""

    def __init__(self, skip_bad: bool = False) -> None:
        self.skip_bad = bool(skip_bad)
        self.items: list[SkippedItem] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, error: CorpusError) -> None:
        """Record ``error`` (raises it instead when not ``skip_bad``)."""
        if not self.skip_bad:
            raise error
        self.items.append(SkippedItem(error.path, error.line, error.kind, error.reason))

    @contextmanager
    def catch(self) -> Iterator[None]:
        try:
            yield
        except CorpusError as e:
            self.add(e)

    def extend(self, other: "SkipReport") -> None:
        self.items.extend(other.items)

    def counts(self) -> dict:
        """``{"skipped": n, "by_kind": {kind: n}, "files": distinct files}`` for a result JSON."""
        return {"skipped": len(self.items), "by_kind": dict(sorted(Counter(i.kind for i in self.items).items())),
                "files": len({i.path for i in self.items})}

    def summary(self, limit: int = 10) -> str:
        """A few lines: how many items were skipped, by kind, and the first ``limit`` of them."""
        if not self.items:
            return "skip-bad: nothing skipped"
        c = self.counts()
        kinds = ", ".join(f"{k}: {n}" for k, n in c["by_kind"].items())
        lines = [f"skip-bad: skipped {c['skipped']} item(s) in {c['files']} file(s) ({kinds})"]
        for it in self.items[:limit]:
            where = f"{it.path}, line {it.line}" if it.line is not None else str(it.path)
            lines.append(f"  {where}: {it.reason}")
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more (see the report file)")
        return "\n".join(lines)

    def print_summary(self, file: Optional[TextIO] = None) -> None:
        print(self.summary(), file=sys.stderr if file is None else file)

    def write(self, path: PathLike) -> Path:
        """Every skipped item to ``path``: CSV (``path,line,kind,reason``) if it ends in ``.csv``,
        else JSON lines. Returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() == ".csv":
            with p.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "line", "kind", "reason"])
                for it in self.items:
                    w.writerow([it.path, "" if it.line is None else it.line, it.kind, it.reason])
        else:
            with p.open("w") as f:
                for it in self.items:
                    f.write(json.dumps(asdict(it)) + "\n")
        return p
