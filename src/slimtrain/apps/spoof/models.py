"""The anti-spoofing countermeasure: a ResNet34-style Conv2d network on log-mel spectrograms.

As in the paper (ResNet34: four residual stages of (3, 4, 6, 3) basic blocks, channel widths
``w, 2w, 4w, 8w``), with a width multiplier so it trains on a CPU: the paper's network has base
width 64; ours defaults to :data:`DEFAULT_WIDTH` (8) and a coarser spectrogram (20 ms hop,
:data:`DEFAULT_N_MELS` bands at 8 kHz). The spectrogram front-end (:class:`slimtrain.MelFrontend`)
is part of the model, so a model (and its export) maps raw audio ``(batch, samples)`` to one logit
per clip (bona fide = positive). Each utterance's log-mel is mean-normalised over time, which
removes the overall gain. With ``phase`` features (:class:`slimtrain.audio.frontend.BandReassignment`: group
delay, instantaneous frequency) each is one more input plane of the stem, band for band with the log-mel.

DCLs (:func:`make_dynamic_stages`) go on the channel width of the chosen residual stages: the
residual stream of a stage (all the convolutions whose outputs meet in the stage's residual
adds: one width, tied by :func:`slimtrain.make_dynamic`'s residual tying, not by hand) and the
inner width of each of its blocks (``conv1``). Stage 0's residual stream is also the stem's
output (identity shortcut), so it is tied to it.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...audio.frontend import BandReassignment, FrequencyMask, MelFrontend, parse_phase_features
from ...core.graph import make_dynamic

__all__ = [
    "BasicBlock", "SpoofResNet", "build_resnet", "stage_layers", "make_dynamic_stages", "parse_stages",
    "DEFAULT_WIDTH", "DEFAULT_BLOCKS", "DEFAULT_N_MELS", "DEFAULT_HOP", "QUICK_BLOCKS", "HEADS", "ONE_CLASS",
    "margin_bce",
]

DEFAULT_WIDTH = 8
DEFAULT_BLOCKS: tuple[int, ...] = (3, 4, 6, 3)  # ResNet34
QUICK_BLOCKS: tuple[int, ...] = (1, 1, 1, 1)  # tests and --quick
DEFAULT_N_MELS = 32
DEFAULT_HOP = 160  # 20 ms at 8 kHz
DEFAULT_N_FFT = 256


#: output heads: ``"linear"`` (a logit from the pooled features) or ``"one-class"`` (OC-softmax, :data:`ONE_CLASS`)
HEADS = ("linear", "one-class")
#: OC-softmax (Zhang, Jiang and Duan, IEEE SPL 2021) as published: embedding size, scale ``alpha`` and the
#: cosine margins of the two classes
ONE_CLASS = {"embed_dim": 32, "alpha": 20.0, "m_bona": 0.9, "m_spoof": 0.2}


def margin_bce(logits: Tensor, target: Tensor, margin: float = 0.0, pos_weight: Optional[Tensor] = None) -> Tensor:
    """Binary cross-entropy with a margin on each side: bona fide (1) logits pushed above ``margin``, spoofs
    below ``-margin``. With a one-class head's :attr:`SpoofResNet.margin` it is the OC-softmax loss
    ``log(1 + exp(alpha (m_y - cos) (-1)^y))``; with ``margin=0`` plain BCE."""
    if margin:
        logits = logits - margin * (2 * target - 1)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: Optional[nn.Sequential] = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(y + s)


class SpoofResNet(nn.Module):
    """Waveform ``(batch, samples)`` -> bona fide logit ``(batch,)``."""

    def __init__(self, width: int = DEFAULT_WIDTH, blocks: Sequence[int] = DEFAULT_BLOCKS, n_mels: int = DEFAULT_N_MELS,
                 sample_rate: int = 8000, n_fft: int = DEFAULT_N_FFT, hop_length: int = DEFAULT_HOP,
                 freq_scale: str = "mel", phase: Sequence[str] = (), head: str = "linear",
                 freq_mask: Sequence[int] = ()) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        blocks = tuple(int(b) for b in blocks)
        if not blocks or any(b < 1 for b in blocks):
            raise ValueError(f"blocks must be a non-empty list of integers >= 1, got {blocks!r}")
        self.frontend = MelFrontend(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                    scale=freq_scale)
        phase = parse_phase_features("+".join(phase))  # (names an unknown or repeated feature)
        self.phase = nn.ModuleList(BandReassignment(f, sample_rate, n_fft, hop_length, n_mels, scale=freq_scale)
                                   for f in phase)
        # training only (identity in eval mode): (max_width, count) frequency masks on the stacked features
        self.freq_mask = FrequencyMask(*[int(v) for v in freq_mask]) if len(freq_mask) else None
        self.stem = nn.Conv2d(1 + len(self.phase), width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        stages = []
        c = width
        for s, n in enumerate(blocks):
            c_out = width * 2 ** s
            layers = []
            for b in range(n):
                layers.append(BasicBlock(c, c_out, stride=2 if (b == 0 and s > 0) else 1))
                c = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = head
        if head == "linear":
            self.fc = nn.Linear(c, 1)
        else:  # an embedding of fixed size (the pooled width may shrink), its cosine with a learned direction
            self.embed = nn.Linear(c, ONE_CLASS["embed_dim"])
            self.center = nn.Linear(ONE_CLASS["embed_dim"], 1, bias=False)

    @property
    def margin(self) -> float:
        """The logit margin of each class for :func:`margin_bce` (0 for the linear head; for the one-class head
        ``alpha * (m_bona - m_spoof) / 2``, the OC-softmax margins around the logit's zero)."""
        if self.head == "linear":
            return 0.0
        return ONE_CLASS["alpha"] * (ONE_CLASS["m_bona"] - ONE_CLASS["m_spoof"]) / 2

    def forward(self, wav: Tensor) -> Tensor:
        x = self.frontend(wav)  # (B, mels, frames)
        x = x - x.mean(dim=-1, keepdim=True)
        x = torch.stack([x] + [m(wav) for m in self.phase], 1) if len(self.phase) else x.unsqueeze(1)
        if self.freq_mask is not None:
            x = self.freq_mask(x)
        x = torch.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            x = stage(x)
        pooled = x.mean(dim=(2, 3))
        if self.head == "linear":
            return self.fc(pooled).squeeze(-1)
        z = self.embed(pooled)
        cos = self.center(z / z.norm(dim=1, keepdim=True).clamp_min(1e-8)).squeeze(-1) / \
            self.center.weight.norm().clamp_min(1e-8)
        return ONE_CLASS["alpha"] * (cos - (ONE_CLASS["m_bona"] + ONE_CLASS["m_spoof"]) / 2)


def build_resnet(width: int = DEFAULT_WIDTH, blocks: Sequence[int] = DEFAULT_BLOCKS, n_mels: int = DEFAULT_N_MELS,
                 sample_rate: int = 8000, n_fft: int = DEFAULT_N_FFT, hop_length: int = DEFAULT_HOP,
                 freq_scale: str = "mel", phase: Sequence[str] = (), head: str = "linear",
                 freq_mask: Sequence[int] = ()) -> SpoofResNet:
    """The plain (non-dynamic) countermeasure: waveform ``(B, samples)`` -> logit ``(B,)``, bona fide positive.

    ``blocks=(3, 4, 6, 3)`` is ResNet34; ``width`` is the first stage's channel count (the paper: 64).
    ``freq_scale``: the spacing of the ``n_mels`` log filterbank bands, ``"mel"`` or ``"linear"`` (LFCC's).
    ``phase``: phase features stacked on the log-mel as more input planes (``("gd",)``, ``("gd", "if")``; see
    :class:`slimtrain.audio.frontend.BandReassignment`). ``head``: ``"linear"`` or ``"one-class"`` (OC-softmax:
    train it with :func:`margin_bce` and the model's :attr:`~SpoofResNet.margin`). ``freq_mask``:
    ``(max_width, count)`` frequency masks on the features in training mode only
    (:class:`slimtrain.audio.frontend.FrequencyMask`; ``()``: none).
    """
    return SpoofResNet(width, blocks, n_mels, sample_rate, n_fft, hop_length, freq_scale, phase, head, freq_mask)


def parse_stages(spec: "str | Iterable[int]", n_stages: int = 4) -> tuple[int, ...]:
    """``"0"``, ``"1,3"``, ``"all"``/``"X"`` -> sorted stage indices (``ValueError`` naming the bad entry)."""
    if isinstance(spec, str):
        s = spec.strip()
        if s.lower() in ("all", "x"):
            return tuple(range(n_stages))
        parts = [p.strip() for p in s.split(",") if p.strip()]
        if not parts:
            raise ValueError("stages must be a comma-separated list like '0' or '0,1,2,3', or 'all'")
        out = []
        for p in parts:
            try:
                out.append(int(p))
            except ValueError:
                raise ValueError(f"stage {p!r} is not an integer (use e.g. '0,1,2,3' or 'all')") from None
    else:
        out = [int(p) for p in spec]
    for i in out:
        if not 0 <= i < n_stages:
            raise ValueError(f"stage {i} does not exist; the model has stages 0..{n_stages - 1}")
    if len(set(out)) != len(out):
        raise ValueError(f"stage listed twice in {spec!r}")
    return tuple(sorted(out))


def stage_layers(model: SpoofResNet, stages: Iterable[int]) -> list[str]:
    """Module names whose output width belongs to the given stages: every block's ``conv1`` (inner
    width) and ``conv2`` and shortcut conv (the residual stream; make_dynamic ties these)."""
    names = []
    for s in stages:
        if not 0 <= s < len(model.stages):
            raise ValueError(f"stage {s} does not exist; the model has stages 0..{len(model.stages) - 1}")
        for b, block in enumerate(model.stages[s]):
            names += [f"stages.{s}.{b}.conv1", f"stages.{s}.{b}.conv2"]
            if block.shortcut is not None:
                names.append(f"stages.{s}.{b}.shortcut.0")
    return names


def make_dynamic_stages(model: SpoofResNet, sample: Tensor, stages: Iterable[int], kappa_min: float) -> SpoofResNet:
    """Attach DCLs to the chosen stages (see the module docstring); returns the same model.

    Every width gets the floor ``max(1, kappa_min * N)`` channels: with a small base width,
    ``kappa_min * N`` can be below one channel (8 * 0.0625 = 0.5), and a layer keeps at least one.
    """
    from ...core.dcl import DynamicWidth

    if not 0 < kappa_min <= 1:
        raise ValueError(f"kappa-min must be in (0, 1], got {kappa_min!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")
        make_dynamic(model, sample, layers=stage_layers(model, stages), min_channels=1)
    for m in model.modules():
        if isinstance(m, DynamicWidth):
            m.min_width = max(1.0, float(kappa_min) * m.num_channels)
    return model
