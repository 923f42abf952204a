"""RawBoost: on-the-fly waveform augmentation for spoofing countermeasures, batched in torch.

After Tak et al., "RawBoost: A Raw Data Boosting and Augmentation Method Applied to Automatic Speaker
Verification Anti-Spoofing" (ICASSP 2022), whose three operations model the channel and the noise a
recording meets, not the attack, so a detector trained with them has to rely on cues that survive both:

1. **linear and non-linear convolutive noise** (:func:`convolutive_noise`): ``y = sum_j h_j * x^j`` for
   ``j = 1..n_orders``, each ``h_j`` a random filter (a cascade of ``n_bands`` notches with random
   centre, width and depth, normalised to a peak gain of 1), the higher orders 5-20 dB down: a random
   channel with harmonic distortion;
2. **impulsive signal-dependent noise** (:func:`impulsive_noise`): up to ``percent`` % of the samples
   ``x[t] += g * x[t] * u1 * u2`` (``u`` uniform in [-1, 1]): clicks and clipping-like errors;
3. **stationary signal-independent noise** (:func:`stationary_noise`): white noise through a random notch
   filter, added at a random SNR of 10-40 dB.

:func:`rawboost` applies an *algorithm* (the paper's numbering: ``"1"``, ``"2"``, ``"3"``, ``"1+2"`` in
series, the paper's best on ASVspoof 2019/2021 LA, ``"1+2+3"`` in series) to a batch ``(batch, samples)``.

Differences from the published numpy code, chosen so that it runs on a batch in one pass: the band
filters are applied in the frequency domain (a magnitude response, zero phase, circular over the clip)
instead of by FIR convolution, with the passband and transition widths of the published Hamming-window
FIRs of 10-100 taps (:func:`band_response`). Band edges
scale with the sample rate (the paper's 20-8000 Hz and 100-1000 Hz widths at 16 kHz). Every random draw
comes from the ``torch.Generator`` passed in, so a training run repeats exactly.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["rawboost", "convolutive_noise", "impulsive_noise", "stationary_noise", "band_response",
           "RAWBOOST_ALGORITHMS"]

#: the algorithms :func:`rawboost` takes (the paper's numbers; "+" = in series)
RAWBOOST_ALGORITHMS = ("1", "2", "3", "1+2", "1+2+3")


def _check(x: Tensor) -> None:
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"RawBoost expects a float batch of waveforms (batch, samples), got "
                         f"{tuple(x.shape)} {x.dtype}")


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _peak_normalise(y: Tensor) -> Tensor:
    return y / y.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)


def band_response(batch: int, n_freqs: int, sample_rate: int, g: torch.Generator, n_bands: int = 5,
                  width_hz: tuple[float, float] = (100.0, 1000.0), taps: tuple[int, int] = (10, 100)) -> Tensor:
    """Random magnitude responses ``(batch, n_freqs)`` on the rfft grid, peak 1: each a cascade of
    ``n_bands`` notches (band-stops: ``scipy.signal.firwin(c, [f1, f2])`` in the published code, whose default
    ``pass_zero`` makes a two-edge design a band-stop). A notch's centre is uniform over [20 Hz, Nyquist]
    and its width uniform in ``width_hz`` (both scaled by ``sample_rate / 16000``, the paper's rate); its
    response is the ideal band-stop smoothed over the transition width ``3.3 * sample_rate / c`` of a
    Hamming-window FIR of ``c`` taps (``c`` uniform in ``taps``), floored at 2e-3 (the window's sidelobes):
    a short filter makes a shallow, wide dip, a long one a deep, narrow notch."""
    nyq = sample_rate / 2
    scale = sample_rate / 16000
    f = torch.linspace(0.0, nyq, n_freqs, dtype=torch.float64)
    centre = _uniform(g, (batch, n_bands, 1), 20.0 * scale, nyq)
    width = _uniform(g, (batch, n_bands, 1), width_hz[0] * scale, width_hz[1] * scale)
    tw = 3.3 * sample_rate / _uniform(g, (batch, n_bands, 1), float(taps[0]), float(taps[1]))
    lo, hi = centre - width / 2, centre + width / 2
    overlap = (torch.minimum(f + tw / 2, hi) - torch.maximum(f - tw / 2, lo)).clamp_min(0.0) / tw
    h = (1.0 - overlap).clamp(min=2e-3).prod(dim=1)
    return h / h.amax(dim=-1, keepdim=True)


def _filter(x: Tensor, h: Tensor) -> Tensor:
    n = x.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * h, n=n, dim=-1)


def convolutive_noise(x: Tensor, g: torch.Generator, sample_rate: int, n_orders: int = 5, n_bands: int = 5,
                      bias_db: tuple[float, float] = (5.0, 20.0)) -> Tensor:
    """Algorithm 1: ``sum_j h_j * x^j`` (``j = 1..n_orders``; orders above 1 at a random -5 to -20 dB),
    mean removed, peak-normalised to the input's peak."""
    _check(x)
    b, n = x.shape
    xd = x.double()
    peak = xd.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
    xn = xd / peak
    y = torch.zeros_like(xd)
    for j in range(1, n_orders + 1):
        h = band_response(b, n // 2 + 1, sample_rate, g, n_bands)
        gain = torch.ones(b, 1, dtype=torch.float64) if j == 1 else \
            10.0 ** (-_uniform(g, (b, 1), *bias_db) / 20.0)
        y = y + gain * _filter(xn ** j, h)
    y = y - y.mean(dim=-1, keepdim=True)
    return (_peak_normalise(y) * peak).to(x.dtype)


def impulsive_noise(x: Tensor, g: torch.Generator, percent: float = 10.0, gain: float = 2.0) -> Tensor:
    """Algorithm 2: on a random ``U(0, percent)`` % of each clip's samples, ``x += gain * x * u1 * u2``."""
    _check(x)
    b, n = x.shape
    frac = _uniform(g, (b, 1), 0.0, percent / 100.0)
    hit = torch.rand((b, n), generator=g, dtype=torch.float64) < frac
    f = (2 * torch.rand((b, n), generator=g, dtype=torch.float64) - 1) * \
        (2 * torch.rand((b, n), generator=g, dtype=torch.float64) - 1)
    xd = x.double()
    return (xd + hit * gain * xd * f).to(x.dtype)


def stationary_noise(x: Tensor, g: torch.Generator, sample_rate: int, snr_db: tuple[float, float] = (10.0, 40.0),
                     n_bands: int = 5) -> Tensor:
    """Algorithm 3: white noise through a random notch filter, added at a random SNR in ``snr_db``
    (the SNR of the clip's whole energy; a silent clip stays silent)."""
    _check(x)
    b, n = x.shape
    white = torch.randn((b, n), generator=g, dtype=torch.float64)
    noise = _filter(white, band_response(b, n // 2 + 1, sample_rate, g, n_bands))
    xd = x.double()
    px = xd.pow(2).mean(dim=-1, keepdim=True)
    pn = noise.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-20)
    snr = _uniform(g, (b, 1), *snr_db)
    return (xd + noise * torch.sqrt(px / pn * 10.0 ** (-snr / 10.0))).to(x.dtype)


def rawboost(x: Tensor, g: torch.Generator, sample_rate: int, algorithm: str = "1+2",
             p: float = 1.0, mask: Optional[Tensor] = None) -> Tensor:
    """Apply RawBoost ``algorithm`` (one of :data:`RAWBOOST_ALGORITHMS`) to a batch ``(batch, samples)``.

    ``p``: the probability that a clip is augmented (the others pass unchanged); ``mask`` (bool,
    ``(batch,)``) instead says which clips are."""
    if algorithm not in RAWBOOST_ALGORITHMS:
        raise ValueError(f"RawBoost algorithm must be one of {', '.join(RAWBOOST_ALGORITHMS)}, got {algorithm!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"RawBoost probability must be in [0, 1], got {p!r}")
    _check(x)
    if mask is None:
        mask = torch.rand(x.shape[0], generator=g) < p
    y = x
    for step in algorithm.split("+"):
        if step == "1":
            y = convolutive_noise(y, g, sample_rate)
        elif step == "2":
            y = impulsive_noise(y, g)
        else:
            y = stationary_noise(y, g, sample_rate)
    return torch.where(mask[:, None], y, x)
