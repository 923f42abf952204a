"""The two VAD families of the paper, small enough for CPU training, both streaming-capable.

Both map a waveform ``(batch, samples)`` at their ``sample_rate`` (8 kHz by default, or 16 kHz) to
per-frame speech logits ``(batch, frames)`` at a 10 ms hop (``frames = samples // hop + 1``, hop = 80 at
8 kHz, 160 at 16 kHz; the STFT window is 32 ms at either rate, :func:`vad_frontend`), with the log-mel front-end inside the model so
its number of bands is a dynamic width and an exported model takes raw audio.

* **CRNN**: log-mel (80 bands) -> BatchNorm (a learned per-band affine at inference, no
  per-utterance statistics) -> two causal 1-D convolutions over time (kernel 3, left context
  only) with BatchNorm + ReLU -> unidirectional GRU -> linear frame classifier.
* **Transformer**: log-mel -> BatchNorm -> linear projection to ``d_model`` -> causal
  attention blocks (pre-norm; each frame attends to itself and the past only; query/key/value
  width ``attn`` = 16, 2 heads) -> linear classifier. DCLs act on the mel bands, ``d_model``
  (shared by the residual stream) and each block's feed-forward width; the attention products
  (``T^2 * attn`` per block) are not reduced by them.

Look-ahead: the only look-ahead is the centred STFT window (32 ms: 256 samples at 8 kHz, centred on the
frame), i.e. 16 ms; everything after the front-end is causal. The Transformer attends to all past
frames of the clip (a growing key/value cache when streamed); its attention cost is quoted for 4 s
clips.

Streaming (:class:`CRNNStream`): the plain (exported or fixed-width) CRNN runs chunk by chunk with
carried state -- the samples of the STFT frames not yet complete, the last ``kernel - 1`` input
frames of each causal convolution and the GRU hidden state -- and gives the same logits as one
call on the whole signal. The Transformer has no streaming runner: each new frame would attend to
a key/value cache that grows with the stream (cost per frame linear in the stream length), so it
is not cheap to stream; :func:`stream_logits` names that.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ...audio.frontend import MelFrontend
from ...core.modules import TransformerBlock

__all__ = ["FAMILIES", "CRNNVAD", "TransformerVAD", "MarbleNetVAD", "build_vad_model", "DEFAULT_WIDTHS",
           "scaled_widths", "CRNNStream", "StreamingError", "min_samples", "stream_logits", "vad_frontend"]

FAMILIES = ("crnn", "transformer", "marblenet")

#: full-width sizes of each family (keyword arguments of its constructor besides n_mels)
DEFAULT_WIDTHS: dict[str, dict[str, int]] = {
    "crnn": {"conv1": 24, "conv2": 24, "hidden": 32},
    "transformer": {"d_model": 32, "ff": 64, "layers": 2, "heads": 2, "attn": 16},
    # MarbleNet 3x2x64 (Jia et al. 2021): prologue/epilogue width 128, B=3 blocks of R=2 sub-blocks, 64 channels
    "marblenet": {"outer": 128, "channels": 64, "blocks": 3, "repeat": 2},
}


def vad_frontend(sample_rate: int, n_mels: int, band_order: str = "low") -> MelFrontend:
    """The VADs' log-mel front-end at ``sample_rate``: 10 ms hop (``sample_rate // 100``) and a 32 ms window
    (``n_fft = 32 * sample_rate // 1000``: 256 at 8 kHz, 512 at 16 kHz), mel bands up to ``sample_rate / 2``."""
    if sample_rate % 100 or sample_rate < 4000:
        raise ValueError(f"VAD sample_rate must be a multiple of 100 Hz and >= 4000, got {sample_rate}")
    return MelFrontend(sample_rate=sample_rate, n_fft=32 * sample_rate // 1000, hop_length=sample_rate // 100,
                       n_mels=n_mels, band_order=band_order)


class CRNNVAD(nn.Module):
    """Log-mel -> BN -> 2 causal conv blocks -> GRU -> per-frame logit."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 8000, conv1: int = 24, conv2: int = 24,
                 hidden: int = 32, kernel: int = 3, band_order: str = "low") -> None:
        super().__init__()
        self.frontend = vad_frontend(sample_rate, n_mels, band_order)
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
                 layers: int = 2, heads: int = 2, attn: int = 16, band_order: str = "low") -> None:
        super().__init__()
        self.frontend = vad_frontend(sample_rate, n_mels, band_order)
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


class SeparableConv(nn.Module):
    """1-D time-channel separable convolution: depthwise conv over time (one filter per channel, "same"
    padding) then a pointwise (1x1) conv across channels, then BatchNorm; no biases (as in MarbleNet)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(c_in, c_in, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                                   groups=c_in, bias=False)
        self.pointwise = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class MarbleBlock(nn.Module):
    """``repeat`` separable sub-blocks (ReLU between them) plus a residual 1x1 conv + BN, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, kernel: int, repeat: int) -> None:
        super().__init__()
        self.subs = nn.ModuleList(SeparableConv(c_in if i == 0 else c_out, c_out, kernel) for i in range(repeat))
        self.res_conv = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.res_bn = nn.BatchNorm1d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for i, sub in enumerate(self.subs):
            y = sub(y)
            if i < len(self.subs) - 1:
                y = torch.relu(y)
        return torch.relu(y + self.res_bn(self.res_conv(x)))


class MarbleNetVAD(nn.Module):
    """MarbleNet (Jia et al., ICASSP 2021; NVIDIA NeMo ``marblenet_3x2x64``) as a frame-wise VAD.

    Log-mel -> BN -> prologue C1 (separable, kernel 11, ``outer`` channels) -> ``blocks`` residual blocks
    B_i (kernels 13, 15, 17, ...; ``repeat`` separable sub-blocks of ``channels``) -> epilogue C2 (separable,
    kernel 29, dilation 2, ``outer``) and C3 (1x1 conv, ``outer``) -> a linear per-frame logit. Every conv
    has stride 1 and "same" padding, so there is one logit per 10 ms frame (the paper classifies 0.63 s
    segments; here each frame is classified, as the other VAD families do). Non-causal: the receptive
    field is +-0.9 s (not streamable frame by frame).
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 8000, outer: int = 128, channels: int = 64,
                 blocks: int = 3, repeat: int = 2, band_order: str = "low") -> None:
        super().__init__()
        self.frontend = MelFrontend(sample_rate=sample_rate, n_fft=256, hop_length=sample_rate // 100, n_mels=n_mels,
                                    band_order=band_order)
        self.norm = nn.BatchNorm1d(n_mels)
        self.prologue = SeparableConv(n_mels, outer, 11)
        self.blocks = nn.ModuleList(MarbleBlock(outer if b == 0 else channels, channels, 13 + 2 * b, repeat)
                                    for b in range(blocks))
        self.epilogue1 = SeparableConv(channels, outer, 29, dilation=2)
        self.epilogue2 = nn.Conv1d(outer, outer, 1, bias=False)
        self.epilogue2_bn = nn.BatchNorm1d(outer)
        self.head = nn.Linear(outer, 1)

    def forward(self, wav: Tensor) -> Tensor:
        x = torch.relu(self.prologue(self.norm(self.frontend(wav))))  # (B, outer, T)
        for blk in self.blocks:
            x = blk(x)
        x = torch.relu(self.epilogue1(x))
        x = torch.relu(self.epilogue2_bn(self.epilogue2(x)))
        return self.head(x.transpose(1, 2)).squeeze(-1)


def scaled_widths(family: str, scale: float) -> dict[str, int]:
    """Every width of ``family`` times ``scale`` (at least 1; heads and depth unchanged)."""
    base = DEFAULT_WIDTHS[_family(family)]
    out = {}
    for k, v in base.items():
        out[k] = v if k in ("layers", "heads", "blocks", "repeat") else max(1, int(round(v * scale)))
    if "attn" in out:  # the attention width must stay a multiple of the heads
        out["attn"] = max(out["heads"], out["attn"] // out["heads"] * out["heads"])
    return out


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown VAD family {family!r}; choose from {FAMILIES}")
    return family


def build_vad_model(family: str = "crnn", n_mels: int = 80, sample_rate: int = 8000, band_order: str = "low",
                    **width_kwargs: Optional[int]) -> nn.Module:
    """A plain (full-width, not yet dynamic) VAD model: waveform (B, samples) -> logits (B, frames).

    ``width_kwargs`` override :data:`DEFAULT_WIDTHS` (crnn: conv1, conv2, hidden; transformer:
    d_model, ff, layers, heads, attn = query/key/value width). ``band_order``: the mel bands' channel
    order (:class:`~slimtrain.audio.frontend.MelFrontend`; "spread" for a DCL on the bands to cut resolution, not
    bandwidth).
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
    cls = {"crnn": CRNNVAD, "transformer": TransformerVAD, "marblenet": MarbleNetVAD}[family]
    return cls(n_mels=n_mels, sample_rate=sample_rate, band_order=band_order, **widths)


# -- streaming --------------------------------------------------------------------------------------
class StreamingError(ValueError):
    """A model that cannot stream, or a stream used wrongly (the message names the model or the call)."""


def min_samples(model: nn.Module) -> int:
    """Fewest samples the model's centred STFT accepts (``n_fft // 2 + 1``: the reflect padding needs them)."""
    n_fft = getattr(getattr(model, "frontend", None), "n_fft", None)
    if n_fft is None:  # a TorchScript model keeps no plain attributes: the window of this package's VADs
        n_fft = 256
    return int(n_fft) // 2 + 1


class CRNNStream:
    """Feed audio at the model rate in chunks of any size; get the logits of the frames completed so far.

    ``feed(chunk)`` returns the logits of every frame whose STFT window is complete (frame ``t`` needs
    the samples up to ``hop * t + n_fft / 2``), ``flush()`` ends the stream and returns the last frames,
    whose windows reach past the end (filled by reflection, as ``torch.stft(center=True)`` does). The
    concatenation of all outputs equals ``model(whole signal)`` up to float rounding; tests check it.
    The model must be a plain :class:`CRNNVAD` in eval mode (exported; BatchNorm uses its running
    statistics).

    A 32 ms chunk is only three frames, so the cost per chunk is the number of operations, not their
    FLOPs: the runner copies the weights into float32 numpy arrays (eval-mode BatchNorms become
    per-channel affines, ``bn1``/``bn2`` folded into the convolutions) and computes each chunk with a
    few numpy calls (one rfft for the frames, one product per conv tap, one GRU step per frame).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, CRNNVAD):
            raise StreamingError(f"streaming needs a plain CRNNVAD (exported or fixed width), got "
                                 f"{type(model).__name__}" + (" (a Transformer VAD cannot stream cheaply: its "
                                 "key/value cache grows with the stream)" if isinstance(model, TransformerVAD) else ""))
        if model.training:
            raise StreamingError("CRNNStream: put the model in eval mode first (model.eval())")
        g = model.gru
        if g.num_layers != 1 or g.bidirectional or not g.bias or not g.batch_first:
            raise StreamingError("CRNNStream: needs a one-layer, unidirectional, batch-first GRU with biases")
        self.model = model
        fe = model.frontend
        self.n_fft, self.hop, self.pad = int(fe.n_fft), int(fe.hop_length), int(fe.n_fft) // 2
        self._raw: list[np.ndarray] = []  # samples before the left reflect padding can be built
        self._buf: Optional[np.ndarray] = None  # padded signal from padded index hop * next_frame on
        self._n = 0  # samples received
        self._t = 0  # next frame index
        self._ended = False

        def f32(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        with torch.no_grad():
            a0, b0 = _bn_affine(model.norm)
            a1, b1 = _bn_affine(model.bn1)
            a2, b2 = _bn_affine(model.bn2)
            self._window = f32(fe.window)
            self._fbank = f32(fe.fbank)
            self._norm = (f32(a0)[:, None], f32(b0)[:, None])
            # conv taps as matrices: y = sum_j W[:, :, j] @ x[:, j : j + T] + b
            self._conv = []
            for conv, a, b in ((model.conv1, a1, b1), (model.conv2, a2, b2)):
                w = conv.weight * a[:, None, None]
                bias = (conv.bias if conv.bias is not None else torch.zeros_like(a)) * a + b
                self._conv.append(([f32(w[:, :, j]) for j in range(w.shape[-1])], f32(bias)[:, None]))
            self._w_ih, self._w_hh = f32(g.weight_ih_l0), f32(g.weight_hh_l0)
            self._b_ih, self._b_hh = f32(g.bias_ih_l0)[:, None], f32(g.bias_hh_l0)
            self._w_out, self._b_out = f32(model.head.weight), f32(model.head.bias)
        self._ctx = [np.zeros((model.conv1.in_channels, model.conv1.kernel_size[0] - 1), np.float32),
                     np.zeros((model.conv2.in_channels, model.conv2.kernel_size[0] - 1), np.float32)]
        self._h = np.zeros(g.hidden_size, np.float32)

    @property
    def samples_received(self) -> int:
        return self._n

    @property
    def frames_emitted(self) -> int:
        return self._t

    def _start(self) -> None:
        x = np.concatenate(self._raw) if self._raw else np.zeros(0, np.float32)
        self._raw = []
        self._buf = np.concatenate([x[1:self.pad + 1][::-1], x])  # torch.stft(center=True) reflect padding

    def _frames(self, seg: np.ndarray) -> np.ndarray:
        """Logits ``(frames,)`` of consecutive complete STFT windows in ``seg`` (padded samples)."""
        frames = np.lib.stride_tricks.sliding_window_view(seg, self.n_fft)[:: self.hop]  # (T, n_fft)
        spec = np.fft.rfft(frames * self._window, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2
        x = np.log(self._fbank @ power.T + np.float32(1e-6)) * self._norm[0] + self._norm[1]  # (mels, T)
        for i, (taps, bias) in enumerate(self._conv):
            x = np.concatenate([self._ctx[i], x], axis=1)
            k, T = len(taps), x.shape[1] - len(taps) + 1
            self._ctx[i] = x[:, x.shape[1] - (k - 1):] if k > 1 else x[:, :0]
            y = bias + taps[0] @ x[:, :T]
            for j in range(1, k):
                y = y + taps[j] @ x[:, j:j + T]
            x = np.maximum(y, 0)
        gi = self._w_ih @ x + self._b_ih  # (3H, T): input parts of the r, z, n gates
        H = len(self._h)
        h, hs = self._h, np.empty((x.shape[1], H), np.float32)
        for t in range(x.shape[1]):
            gh = self._w_hh @ h + self._b_hh
            r = _sigmoid(gi[:H, t] + gh[:H])
            z = _sigmoid(gi[H:2 * H, t] + gh[H:2 * H])
            n = np.tanh(gi[2 * H:, t] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
            hs[t] = h
        self._h = h
        return (hs @ self._w_out.T + self._b_out).reshape(-1).astype(np.float32)

    def _run(self, stop: int) -> np.ndarray:
        """Frames ``self._t .. stop-1`` from the buffer; drops the samples no later frame needs."""
        assert self._buf is not None
        if stop <= self._t:
            return np.zeros(0, dtype=np.float32)
        n_frames = stop - self._t
        out = self._frames(self._buf[: (n_frames - 1) * self.hop + self.n_fft])
        self._buf = self._buf[n_frames * self.hop:]
        self._t = stop
        return out

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Logits of the frames completed by ``chunk`` (mono float32 samples at the model rate)."""
        if self._ended:
            raise StreamingError("CRNNStream.feed: the stream was flushed; start a new stream")
        x = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        self._n += len(x)
        if self._buf is None:
            self._raw.append(x)
            if self._n <= self.pad:
                return np.zeros(0, dtype=np.float32)
            self._start()
        elif len(x):
            self._buf = np.concatenate([self._buf, x])
        # frame t is complete when padded samples up to hop * t + n_fft exist: hop * t + n_fft <= pad + n
        stop = (self.pad + self._n - self.n_fft) // self.hop + 1 if self.pad + self._n >= self.n_fft else 0
        return self._run(max(stop, self._t))

    def flush(self) -> np.ndarray:
        """End the stream: logits of the remaining frames (``frames = samples // hop + 1`` in all)."""
        if self._ended:
            raise StreamingError("CRNNStream.flush: the stream was already flushed")
        if self._n < min_samples(self.model):
            raise StreamingError(f"CRNNStream.flush: the stream holds {self._n} samples; the model needs at least "
                                 f"{min_samples(self.model)} (its STFT window is {self.n_fft} samples, centred)")
        self._ended = True
        assert self._buf is not None
        # right reflect padding: the pad samples before the last one, mirrored
        tail = self._buf[len(self._buf) - self.pad - 1: len(self._buf) - 1][::-1]
        self._buf = np.concatenate([self._buf, tail])
        return self._run(self._n // self.hop + 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow for large |x|


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
    return scale.detach(), shift.detach()


@torch.no_grad()
def stream_logits(model: nn.Module, chunks) -> np.ndarray:
    """Logits of ``model`` fed ``chunks`` one after the other, then flushed (see :class:`CRNNStream`)."""
    s = CRNNStream(model)
    out = [s.feed(c) for c in chunks]
    out.append(s.flush())
    return np.concatenate(out)
