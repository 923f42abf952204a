"""Per-epoch record of every width, the cost and the task metric (CSV, optional TensorBoard)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional

from torch import nn

from ..core.cost import model_cost
from ..core.graph import dynamic_widths

__all__ = ["WidthRecorder"]


class WidthRecorder:
    """Append one row per call: ``epoch``, metrics, ``K`` of each DCL, MACs, FLOPs, params.

    Args:
        csv_path: file to write (parent folders are created); ``None`` keeps rows in memory only.
        tensorboard_dir: if given, the same values go to a TensorBoard event file
            (needs the ``tensorboard`` package; a clear error says so otherwise).
    """

    def __init__(self, csv_path: Optional[str | os.PathLike] = None,
                 tensorboard_dir: Optional[str | os.PathLike] = None) -> None:
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.rows: list[dict[str, float]] = []
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError("TensorBoard logging needs `pip install tensorboard`") from e
            self._writer = SummaryWriter(str(tensorboard_dir))

    def log(self, epoch: int, model: nn.Module, **metrics: float) -> dict[str, float]:
        """Record the model's current widths and cost next to ``metrics``; returns the row."""
        was = model.training
        model.eval()
        c = model_cost(model, hard=True)
        model.train(was)
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: float(v) for k, v in metrics.items()})
        for name, k in dynamic_widths(model).items():
            row[f"K[{name}]"] = round(k, 4)
        row.update({"macs": float(c.macs), "flops": float(c.flops), "params": float(c.params)})
        self.rows.append(row)
        if self.csv_path is not None:
            self._write()
        if self._writer is not None:
            for k, v in row.items():
                if k != "epoch" and math.isfinite(v):
                    self._writer.add_scalar(k.replace("[", "/").replace("]", ""), v, epoch)
            self._writer.flush()
        return row

    def _write(self) -> None:
        assert self.csv_path is not None
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        keys: list[str] = []
        for r in self.rows:
            keys.extend(k for k in r if k not in keys)
        tmp = self.csv_path.with_suffix(self.csv_path.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
