"""The CSV files every sweep writes: one line per run, and the summary over seeds, in one cell format."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["fmt_cell", "write_rows_csv", "write_summary_csv"]


def fmt_cell(v: Any) -> str:
    """A CSV cell: floats to 6 significant digits, NaN and None empty, anything else as ``str``."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _write(path: str | Path, header: Sequence[str], lines) -> Path:
    """Write atomically (a killed sweep never leaves half a table)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(lines)
    os.replace(tmp, path)
    return path


def write_rows_csv(rows: Sequence[Mapping], path: str | Path, columns: Sequence[str]) -> Path:
    """``rows`` as CSV with ``columns`` (a key a row lacks is an empty cell; keys not in ``columns`` are left out)."""
    return _write(path, columns, ([fmt_cell(r.get(c)) for c in columns] for r in rows))


def write_summary_csv(summary: Sequence[Mapping], path: str | Path, lead: Mapping[str, Callable[[Mapping], Any]],
                      metrics: Sequence[str]) -> Path:
    """``sweep_summary.csv``: per entry of ``summary`` (:func:`slimtrain.train.stats.summarize_rows`), the ``lead``
    columns (``name: value of the entry``) and ``<metric>_mean``, ``_lo``, ``_hi`` of every metric (the interval
    empty for one seed; all three empty without a value)."""
    cols = list(lead) + [f"{m}_{k}" for m in metrics for k in ("mean", "lo", "hi")]

    def line(e: Mapping) -> list[str]:
        vals = [fmt_cell(get(e)) for get in lead.values()]
        for m in metrics:
            iv = e[m]
            vals += ["", "", ""] if iv is None else [fmt_cell(iv.mean), fmt_cell(iv.lo), fmt_cell(iv.hi)]
        return vals

    return _write(path, cols, (line(e) for e in summary))
