"""Log-mel front-end computed with torch alone (no torchaudio).

Wrapped by :func:`slimtrain.make_dynamic` its number of mel bands becomes a
dynamic width: the DCL keeps the first ``K`` bands of the ``n_mels``-band
bank in its channel order, and export slices the filterbank to those bands, so
the exported front-end computes exactly the bands the downstream layers were
trained on. The channel order is ``band_order``: ``"low"`` (low to high: the
first ``K`` bands are the lowest, so a cut lowers the bandwidth, as in the
paper) or ``"spread"`` (coarse to fine, :func:`spread_order`: the first ``K``
bands of every ``K`` lie across the whole range, so a cut lowers the resolution).

:class:`BandReassignment` pools the STFT's phase (group delay, instantaneous frequency) in the same bands,
for models that stack it on the log-mel (the countermeasure's ``--phase``).

:class:`FrequencyMask` is a training-time augmentation of such features (SpecAugment's frequency masks; Chen et al.
2020's "FreqAugment" for spoofing countermeasures): identity in evaluation mode, so it costs nothing at inference.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

__all__ = ["MelFrontend", "BandReassignment", "FrequencyMask", "mel_filterbank", "spread_order", "parse_phase_features",
           "BAND_ORDERS", "FREQUENCY_SCALES", "PHASE_FEATURES"]

BAND_ORDERS = ("low", "spread")
#: how the band edges are spaced: ``"mel"`` (HTK mel) or ``"linear"`` (equal widths in Hz, the
#: filterbank of LFCCs: the fine high-frequency resolution that synthetic-speech detectors use)
FREQUENCY_SCALES = ("mel", "linear")
#: the phase features of :class:`BandReassignment`: ``"gd"`` (group delay: where in the window a band's energy
#: sits) and ``"if"`` (instantaneous frequency: where between its bins a band's energy sits)
PHASE_FEATURES = ("gd", "if")


def _hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   scale: str = "mel") -> Tensor:
    """Triangular filterbank, shape ``(n_mels, n_freqs)``: HTK-mel spaced (``scale="mel"``) or equally spaced
    in Hz (``scale="linear"``, the filterbank of LFCCs)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}, sr={sample_rate}")
    if scale not in FREQUENCY_SCALES:
        raise ValueError(f"scale must be one of {FREQUENCY_SCALES}, got {scale!r}")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    if scale == "linear":
        pts = torch.linspace(f_min, f_max, n_mels + 2, dtype=torch.float64)
    else:
        mels = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
                              _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(), n_mels + 2,
                              dtype=torch.float64)
        pts = _mel_to_hz(mels)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def spread_order(n: int) -> list[int]:
    """A permutation of ``range(n)`` whose every prefix is spread over the whole range (coarse to fine).

    Position ``j`` takes the band nearest to the base-2 van der Corput point of ``j`` (0, 1/2, 1/4, 3/4,
    1/8, ...) of the ``[0, n)`` range that is still free; so the first 2, 4, 8... bands split the range
    evenly, and the prefixes in between fill it in, one gap at a time."""
    out: list[int] = []
    free = set(range(n))
    j = 0
    while free:
        v, f, k = 0.0, 0.5, j
        while k:
            v, k, f = v + f * (k & 1), k >> 1, f / 2
        target = v * n
        best = min(free, key=lambda b: (abs(b - target), b))
        out.append(best)
        free.discard(best)
        j += 1
    return out


class MelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` -> log-mel ``(batch, n_mels, frames)``.

    Frames are centred (``torch.stft(center=True)``), hop ``hop_length``;
    ``log(mel + 1e-6)``. The filterbank is a buffer, so it travels with the
    state dict and is sliced at export. ``band_order``: the order of its bands
    (rows), ``"low"`` (by frequency) or ``"spread"`` (see the module docs). ``scale``: ``"mel"`` or
    ``"linear"`` band spacing (:func:`mel_filterbank`; linear bands make it a log linear-filterbank front end).
    """

    #: how the core traces it (slimtrain.core.trace): its output bands are a width, cut by slicing ``fb``
    slimtrain_kind = "mel"

    def __init__(self, sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 80, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float | None = None, band_order: str = "low", scale: str = "mel") -> None:
        super().__init__()
        if n_mels < 1 or n_fft < 2 or hop_length < 1:
            raise ValueError(f"bad MelFrontend settings n_mels={n_mels}, n_fft={n_fft}, hop_length={hop_length}")
        if band_order not in BAND_ORDERS:
            raise ValueError(f"band_order must be one of {BAND_ORDERS}, got {band_order!r}")
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.band_order, self.scale = band_order, scale
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, scale)
        if band_order == "spread":
            fb = fb[spread_order(n_mels)]
        self.register_buffer("fbank", fb)
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


def parse_phase_features(spec: "str | None") -> tuple[str, ...]:
    """``None``/``""``/``"none"`` -> ``()``; ``"gd"``, ``"if"``, ``"gd+if"`` -> the features in that order
    (``ValueError`` naming a bad or repeated one)."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip().lower() for p in spec.split("+"))
    for p in parts:
        if p not in PHASE_FEATURES:
            raise ValueError(f"phase feature {p!r} is unknown: use {', '.join(PHASE_FEATURES)}, 'gd+if' or 'none'")
    if len(set(parts)) != len(parts):
        raise ValueError(f"phase feature listed twice in {spec!r}")
    return parts


class BandReassignment(MelFrontend):
    """Waveform ``(batch, samples)`` -> a phase feature per filterbank band ``(batch, n_mels, frames)``.

    A log-mel spectrogram keeps each bin's power and drops its phase, where vocoders and joins leave traces
    (an inconsistent Griffin-Lim phase, a pulse excitation without dispersion, a jump at a join). This module
    keeps the part of the phase that a short-time spectrum can read stably: the STFT's reassignment operators
    (Auger and Flandrin, IEEE TSP 1995), each bin's offset of its energy from the frame's centre,

    * ``"gd"``: in time, the bin's group delay ``Re(X_t conj X) / |X|^2`` (``X_t``: the STFT with the window
      ``n h(n)``), in units of half a window: where in the window the bin's energy sits;
    * ``"if"``: in frequency, ``-Im(X_d conj X) / |X|^2`` (``X_d``: with the window's derivative), in bins:
      where between its bins the bin's energy sits (its instantaneous frequency).

    Each band's value is the power-weighted mean over its bins, ``(fbank @ (offset * |X|^2)) / (fbank @ |X|^2)``,
    so bins without energy do not count and the value stays bounded (clamped to ``[-1, 1]`` after the scaling;
    a band without energy gives 0). Two filterbank products per frame: :attr:`pooled_spectra` tells the cost
    model so. The filterbank and its band order are the :class:`MelFrontend`'s, so a model can stack this
    module's output on its log-mel bands as a second input plane, band for band.
    """

    #: filterbank products per frame (the weighted offsets and the power), for slimtrain.core.cost
    pooled_spectra = 2
    #: ``"if"`` offsets beyond this many bins are clamped (a band's energy sits within a bin or two of a harmonic)
    IF_RANGE_BINS = 2.0

    def __init__(self, feature: str = "gd", sample_rate: int = 8000, n_fft: int = 256, hop_length: int = 80,
                 n_mels: int = 80, f_min: float = 0.0, f_max: float | None = None, band_order: str = "low",
                 scale: str = "mel") -> None:
        super().__init__(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, band_order, scale)
        if feature not in PHASE_FEATURES:
            raise ValueError(f"feature must be one of {PHASE_FEATURES}, got {feature!r}")
        self.feature = feature
        n = torch.arange(n_fft, dtype=torch.float64)
        if feature == "gd":  # n h(n), n from the window's centre (torch.stft centres frame t at sample t * hop)
            aux = (n - n_fft // 2) * torch.hann_window(n_fft, dtype=torch.float64)
        else:  # dh/dn of the periodic Hann window 0.5 - 0.5 cos(2 pi n / N)
            aux = (torch.pi / n_fft) * torch.sin(2 * torch.pi * n / n_fft)
        self.register_buffer("aux_window", aux.float(), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"BandReassignment expects (batch, samples), got shape {tuple(wav.shape)}")
        x = torch.stft(wav, self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)
        y = torch.stft(wav, self.n_fft, self.hop_length, window=self.aux_window, center=True, return_complex=True)
        power = x.real ** 2 + x.imag ** 2
        if self.feature == "gd":  # samples -> half windows
            weighted = (y.real * x.real + y.imag * x.imag) / (self.n_fft / 2)
        else:  # rad/sample -> bins -> the clamp range
            weighted = (y.real * x.imag - y.imag * x.real) * (self.n_fft / (2 * torch.pi) / self.IF_RANGE_BINS)
        num = torch.matmul(self.fbank, weighted)
        den = torch.matmul(self.fbank, power)
        return torch.clamp(num / (den + 1e-6), -1.0, 1.0)


class FrequencyMask(nn.Module):
    """Training-time frequency masking of filterbank features (SpecAugment, Park et al. 2019; "FreqAugment" for
    spoofing countermeasures, Chen et al. 2020).

    In training mode each example gets ``count`` masks; each mask sets ``w`` consecutive bands to 0, ``w`` drawn
    uniformly from ``0..max_width`` and its first band uniformly from the ``n_bands - w + 1`` places (torch's global
    generator, so ``torch.manual_seed`` repeats a run). 0 is the band's mean for features normalised to zero mean
    over time, which is how the countermeasure uses it. The same bands are masked in every plane of a
    ``(batch, planes, bands, frames)`` input. In evaluation mode it returns its input unchanged.
    """

    def __init__(self, max_width: int, count: int = 1) -> None:
        super().__init__()
        for name, v in (("max_width", max_width), ("count", count)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FrequencyMask {name} must be an integer >= 1, got {v!r}")
        self.max_width, self.count = max_width, count

    def extra_repr(self) -> str:
        return f"max_width={self.max_width}, count={self.count}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if x.dim() not in (3, 4):
            raise ValueError(f"FrequencyMask expects (batch, bands, frames) or (batch, planes, bands, frames), "
                             f"got shape {tuple(x.shape)}")
        batch, bands = x.shape[0], x.shape[-2]
        width = torch.randint(0, min(self.max_width, bands) + 1, (batch, self.count))
        start = (torch.rand(batch, self.count) * (bands - width + 1)).floor().long()
        band = torch.arange(bands)
        masked = ((band >= start[..., None]) & (band < (start + width)[..., None])).any(dim=1)  # (batch, bands)
        masked = masked.to(x.device)
        shape = (batch, 1, bands, 1) if x.dim() == 4 else (batch, bands, 1)
        return x.masked_fill(masked.view(shape), 0.0)
