"""The two VAD families of the paper, small enough for CPU training, both streaming-capable.

Both map a waveform ``(batch, samples)`` at 8 kHz to per-frame speech logits ``(batch, frames)``
at a 10 ms hop (``frames = samples // 80 + 1``), with the log-mel front-end inside the model so
its number of bands is a dynamic width and an exported model takes raw audio.

* **CRNN**: log-mel (80 bands) -> BatchNorm (a learned per-band affine at inference, no
  per-utterance statistics) -> two causal 1-D convolutions over time (kernel 3, left context
  only) with BatchNorm + ReLU -> unidirectional GRU -> linear frame classifier.
* **Transformer**: log-mel -> BatchNorm -> linear projection to ``d_model`` -> causal
  attention blocks (pre-norm; each frame attends to itself and the past only; query/key/value
  width ``attn`` = 16, 2 heads) -> linear classifier. DCLs act on the mel bands, ``d_model``
  (shared by the residual stream) and each block's feed-forward width; the attention products
  (``T^2 * attn`` per block) are not reduced by them.

Look-ahead: the only look-ahead is the centred STFT window (256 samples = 32 ms, centred on the
frame), i.e. 16 ms; everything after the front-end is causal. The Transformer attends to all past
frames of the clip (a growing key/value cache when streamed); its attention cost is quoted for 4 s
clips.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ...frontend import MelFrontend
from ...modules import TransformerBlock

__all__ = ["FAMILIES", "CRNNVAD", "TransformerVAD", "build_vad_model", "DEFAULT_WIDTHS", "scaled_widths"]

FAMILIES = ("crnn", "transformer")

#: full-width sizes of each family (keyword arguments of its constructor besides n_mels)
DEFAULT_WIDTHS: dict[str, dict[str, int]] = {
    "crnn": {"conv1": 24, "conv2": 24, "hidden": 32},
    "transformer": {"d_model": 32, "ff": 64, "layers": 2, "heads": 2, "attn": 16},
}


class CRNNVAD(nn.Module):
    """Log-mel -> BN -> 2 causal conv blocks -> GRU -> per-frame logit."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 8000, conv1: int = 24, conv2: int = 24,
                 hidden: int = 32, kernel: int = 3) -> None:
        super().__init__()
        self.frontend = MelFrontend(sample_rate=sample_rate, n_fft=256, hop_length=sample_rate // 100, n_mels=n_mels)
        self.norm = nn.BatchNorm1d(n_mels)
        self.kernel = kernel
        self.conv1 = nn.Conv1d(n_mels, conv1, kernel, padding=kernel - 1)
        self.bn1 = nn.BatchNorm1d(conv1)
        self.conv2 = nn.Conv1d(conv1, conv2, kernel, padding=kernel - 1)
        self.bn2 = nn.BatchNorm1d(conv2)
        self.gru = nn.GRU(conv2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def _causal(self, conv: nn.Conv1d, x: Tensor) -> Tensor:
        return conv(x)[..., : x.shape[-1]]  # padding on both sides, keep the first T: left context only

    def forward(self, wav: Tensor) -> Tensor:
        x = self.norm(self.frontend(wav))  # (B, mels, T)
        x = torch.relu(self.bn1(self._causal(self.conv1, x)))
        x = torch.relu(self.bn2(self._causal(self.conv2, x)))
        y, _ = self.gru(x.transpose(1, 2))  # (B, T, hidden)
        return self.head(y).squeeze(-1)


class TransformerVAD(nn.Module):
    """Log-mel -> BN -> linear to ``d_model`` -> causal attention blocks -> per-frame logit."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 8000, d_model: int = 32, ff: int = 64,
                 layers: int = 2, heads: int = 2, attn: int = 16) -> None:
        super().__init__()
        self.frontend = MelFrontend(sample_rate=sample_rate, n_fft=256, hop_length=sample_rate // 100, n_mels=n_mels)
        self.norm = nn.BatchNorm1d(n_mels)
        self.proj = nn.Linear(n_mels, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, heads, ff, dropout=0.0, norm_first=True, attn_dim=attn,
                             causal=True)
            for _ in range(layers))
        self.head = nn.Linear(d_model, 1)

    def forward(self, wav: Tensor) -> Tensor:
        x = self.norm(self.frontend(wav)).transpose(1, 2)  # (B, T, mels)
        x = self.proj(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x).squeeze(-1)


def scaled_widths(family: str, scale: float) -> dict[str, int]:
    """Every width of ``family`` times ``scale`` (at least 1; heads and depth unchanged)."""
    base = DEFAULT_WIDTHS[_family(family)]
    out = {}
    for k, v in base.items():
        out[k] = v if k in ("layers", "heads") else max(1, int(round(v * scale)))
    if "attn" in out:  # the attention width must stay a multiple of the heads
        out["attn"] = max(out["heads"], out["attn"] // out["heads"] * out["heads"])
    return out


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown VAD family {family!r}; choose from {FAMILIES}")
    return family


def build_vad_model(family: str = "crnn", n_mels: int = 80, sample_rate: int = 8000,
                    **width_kwargs: Optional[int]) -> nn.Module:
    """A plain (full-width, not yet dynamic) VAD model: waveform (B, samples) -> logits (B, frames).

    ``width_kwargs`` override :data:`DEFAULT_WIDTHS` (crnn: conv1, conv2, hidden; transformer:
    d_model, ff, layers, heads, attn = query/key/value width).
    """
    family = _family(family)
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    widths = dict(DEFAULT_WIDTHS[family])
    unknown = set(width_kwargs) - set(widths)
    if unknown:
        raise ValueError(f"unknown width argument(s) {sorted(unknown)} for family {family!r}; known: {sorted(widths)}")
    for k, v in width_kwargs.items():
        if v is not None:
            if int(v) < 1:
                raise ValueError(f"width {k} must be >= 1, got {v}")
            widths[k] = int(v)
    cls = CRNNVAD if family == "crnn" else TransformerVAD
    return cls(n_mels=n_mels, sample_rate=sample_rate, **widths)
