"""Keyword-spotting models (log-mel front end, a small CNN or GRU, one logit per class) and their metrics."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import Tensor, nn

from ...audio.frontend import MelFrontend
from ..study import Split
from .data import SAMPLE_RATE

__all__ = ["FAMILIES", "KwsNet", "build_model", "evaluate"]

FAMILIES = ("cnn", "gru")


class KwsNet(nn.Module):
    """Waveform ``(batch, samples)`` -> class logits ``(batch, classes)``."""

    def __init__(self, family: str = "cnn", width: int = 32, n_mels: int = 32, classes: int = 5) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown kws family {family!r}; choose from {', '.join(FAMILIES)}")
        self.family = family
        self.front = MelFrontend(SAMPLE_RATE, n_fft=256, hop_length=80, n_mels=n_mels)
        if family == "cnn":
            self.conv1 = nn.Conv1d(n_mels, width, 3, padding=1)
            self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        else:
            self.gru = nn.GRU(n_mels, width, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, wav: Tensor) -> Tensor:
        x = self.front(wav)
        x = (x - x.mean(dim=2, keepdim=True)) / 4.0  # per band, so a cut band leaves the others as they were
        if self.family == "cnn":
            x = F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=2)
        else:
            x = self.gru(x.transpose(1, 2))[0].mean(dim=1)
        return self.head(x)


def build_model(**kwargs) -> nn.Module:
    """The plain model of a recipe's keyword arguments."""
    return KwsNet(**kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split) -> dict:
    """Accuracy and macro F1 of ``model`` (eval mode) on ``split``."""
    model.eval()
    pred = torch.cat([model(split.x[i:i + 256]).argmax(1) for i in range(0, len(split.x), 256)]).numpy()
    y = split.y.numpy()
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(f1_score(y, pred, average="macro"))}
