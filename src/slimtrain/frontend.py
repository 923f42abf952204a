"""Log-mel front-end computed with torch alone (no torchaudio).

Wrapped by :func:`slimtrain.make_dynamic` its number of mel bands becomes a
dynamic width: the DCL keeps the lowest ``K`` bands of the ``n_mels``-band
bank (channel order = band order, low to high), and export slices the
filterbank to those bands, so the exported front-end computes exactly the
bands the downstream layers were trained on.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

__all__ = ["MelFrontend", "mel_filterbank"]


def _hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """Triangular HTK-mel filterbank, shape ``(n_mels, n_freqs)``."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}, sr={sample_rate}")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
                          _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(), n_mels + 2, dtype=torch.float64)
    pts = _mel_to_hz(mels)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` -> log-mel ``(batch, n_mels, frames)``.

    Frames are centred (``torch.stft(center=True)``), hop ``hop_length``;
    ``log(mel + 1e-6)``. The filterbank is a buffer, so it travels with the
    state dict and is sliced at export.
    """

    def __init__(self, sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 80, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float | None = None) -> None:
        super().__init__()
        if n_mels < 1 or n_fft < 2 or hop_length < 1:
            raise ValueError(f"bad MelFrontend settings n_mels={n_mels}, n_fft={n_fft}, hop_length={hop_length}")
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.register_buffer("fbank", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def n_mels(self) -> int:
        return self.fbank.shape[0]

    @property
    def n_freqs(self) -> int:
        return self.fbank.shape[1]

    def frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"MelFrontend expects (batch, samples), got shape {tuple(wav.shape)}")
        spec = torch.stft(wav, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (batch, freqs, frames)
        mel = torch.matmul(self.fbank, power)
        return torch.log(mel + 1e-6)
