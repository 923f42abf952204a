"""Waveform augmentations and extra noise types of the *extended* speech corpora.

Every function is pure given its arguments (random choices come from a ``numpy`` generator passed
in), works on mono float arrays and returns float32 of the same length unless said otherwise:

* :func:`apply_gain` - scale by a gain in dB;
* :func:`clip_hard` - drive into hard clipping at ``+-limit``;
* :func:`band_limit` - Butterworth band-pass (``scipy.signal``, zero phase);
* :func:`mu_law_roundtrip` / :func:`a_law_roundtrip` - G.711 companding + 8-bit quantisation, in numpy;
* :func:`gsm_roundtrip` - GSM 06.10 full-rate codec through ``sox`` (Debian package ``sox`` +
  ``libsox-fmt-base``); the encode/decode is deterministic;
* :func:`ogg_roundtrip` - Ogg Vorbis / Opus in memory through ``soundfile``; :func:`codec_roundtrip` picks
  any of these by name;
* :func:`synthetic_rir` / :func:`reverberate` - room impulse response = direct path + exponentially
  decaying Gaussian noise whose energy falls 60 dB in ``rt60`` seconds; convolution keeps the length;
* :func:`coloured_noise` - ``1/f^beta`` noise for any ``beta`` (blue < 0 < pink 1 < brown 2);
* :func:`babble` - sum of several other utterances at random offsets and levels;
* :func:`synth_music` - generated music: chords, a bass line, an optional vibrato lead melody and drums;
* :func:`measure_rt60` - Schroeder backward integration (T20 extrapolated to 60 dB), used by tests.

:func:`draw_augmentation` draws one augmentation chain as a JSON-able list of ``{"op": ..., params}``
(recorded per clip in the manifest) and :func:`apply_augmentation` applies such a list.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "AugmentError", "apply_gain", "clip_hard", "band_limit", "mu_law_roundtrip", "a_law_roundtrip",
    "gsm_roundtrip", "ogg_roundtrip", "codec_roundtrip", "ROUNDTRIP_CODECS", "synthetic_rir", "reverberate",
    "measure_rt60", "coloured_noise", "babble",
    "synth_music", "draw_augmentation", "apply_augmentation", "chain_summary", "CODECS",
]

CODECS = ("mulaw", "alaw", "gsm")


class AugmentError(ValueError):
    """An augmentation got a bad parameter or a required program is missing (the message names it)."""


def _f64(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise AugmentError(f"{what}: expected a 1-D (mono) signal, got shape {tuple(x.shape)}")
    return x


# -- level and clipping ----------------------------------------------------------------------------
def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """``x * 10**(gain_db/20)`` (the RMS changes by exactly ``gain_db``)."""
    if not math.isfinite(gain_db):
        raise AugmentError(f"apply_gain: gain_db must be finite, got {gain_db}")
    return (_f64(x, "apply_gain") * 10 ** (gain_db / 20)).astype(np.float32)


def clip_hard(x: np.ndarray, limit: float) -> np.ndarray:
    """Hard clipping to ``[-limit, limit]`` (``0 < limit``)."""
    if not limit > 0:
        raise AugmentError(f"clip_hard: limit must be > 0, got {limit}")
    return np.clip(_f64(x, "clip_hard"), -limit, limit).astype(np.float32)


# -- band-limiting and telephone codecs ------------------------------------------------------------
def band_limit(x: np.ndarray, sample_rate: int, low_hz: float, high_hz: float, order: int = 6) -> np.ndarray:
    """Zero-phase Butterworth band-pass ``low_hz``..``high_hz`` (``low_hz = 0``: low-pass only)."""
    from scipy.signal import butter, sosfiltfilt

    nyq = sample_rate / 2
    if not (0 <= low_hz < high_hz < nyq):
        raise AugmentError(f"band_limit: need 0 <= low ({low_hz}) < high ({high_hz}) < Nyquist ({nyq})")
    xd = _f64(x, "band_limit")
    if len(xd) < 3 * (order + 1) * 2:
        return xd.astype(np.float32)
    if low_hz > 0:
        sos = butter(order, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    else:
        sos = butter(order, high_hz, btype="lowpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, xd).astype(np.float32)


def _quantise8(y: np.ndarray) -> np.ndarray:
    """Companded value in [-1, 1] -> one of 256 levels (8-bit code) and back."""
    code = np.clip(np.floor(np.clip(y, -1.0, 1.0) * 128.0), -128, 127)
    return (code + 0.5) / 128.0


def mu_law_roundtrip(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """G.711 mu-law: compress, quantise to 8 bits, expand (input clipped to [-1, 1])."""
    xd = np.clip(_f64(x, "mu_law_roundtrip"), -1.0, 1.0)
    y = np.sign(xd) * np.log1p(mu * np.abs(xd)) / math.log1p(mu)
    q = _quantise8(y)
    return (np.sign(q) * np.expm1(np.abs(q) * math.log1p(mu)) / mu).astype(np.float32)


def a_law_roundtrip(x: np.ndarray, a: float = 87.6) -> np.ndarray:
    """G.711 A-law: compress, quantise to 8 bits, expand (input clipped to [-1, 1])."""
    xd = np.clip(_f64(x, "a_law_roundtrip"), -1.0, 1.0)
    ax = np.abs(xd)
    la = 1 + math.log(a)
    y = np.where(ax < 1 / a, a * ax / la, (1 + np.log(np.maximum(a * ax, 1e-12))) / la) * np.sign(xd)
    q = _quantise8(y)
    aq = np.abs(q)
    out = np.where(aq < 1 / la, aq * la / a, np.exp(aq * la - 1) / a) * np.sign(q)
    return out.astype(np.float32)


def gsm_roundtrip(x: np.ndarray, sample_rate: int = 8000, timeout: float = 60.0) -> np.ndarray:
    """GSM 06.10 encode + decode with ``sox`` at 8 kHz (other rates are resampled there and back).

    The codec's 20 ms frames are padded at the end; the output is cut back to ``len(x)``."""
    from .audio import resample

    exe = shutil.which("sox")
    if exe is None:
        raise AugmentError("gsm_roundtrip: 'sox' is not installed; install it with: apt-get install sox libsox-fmt-base")
    xd = _f64(x, "gsm_roundtrip")
    n = len(xd)
    if n == 0:
        return xd.astype(np.float32)
    x8 = resample(xd, sample_rate, 8000) if sample_rate != 8000 else xd
    pcm = (np.clip(x8, -1.0, 32767 / 32768) * 32768).round().astype("<i2").tobytes()
    raw = ["-t", "raw", "-r", "8000", "-e", "signed-integer", "-b", "16", "-c", "1"]
    try:
        enc = subprocess.run([exe, *raw, "-", "-t", "gsm", "-"], input=pcm, capture_output=True, timeout=timeout)
        if enc.returncode != 0:
            raise AugmentError(f"gsm_roundtrip: sox GSM encoding failed: {enc.stderr.decode(errors='replace')[:200]}")
        dec = subprocess.run([exe, "-t", "gsm", "-r", "8000", "-c", "1", "-", *raw, "-"], input=enc.stdout,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AugmentError(f"gsm_roundtrip: sox timed out after {timeout:.0f}s") from None
    if dec.returncode != 0:
        raise AugmentError(f"gsm_roundtrip: sox GSM decoding failed: {dec.stderr.decode(errors='replace')[:200]}")
    y = np.frombuffer(dec.stdout, dtype="<i2").astype(np.float64) / 32768.0
    if sample_rate != 8000:
        y = resample(y, 8000, sample_rate)
    out = np.zeros(n)
    out[: min(n, len(y))] = y[:n]
    return out.astype(np.float32)


def ogg_roundtrip(x: np.ndarray, sample_rate: int, codec: str = "vorbis", quality: float = 0.5) -> np.ndarray:
    """Ogg Vorbis or Opus encode + decode in memory (``soundfile``/libsndfile); ``quality`` in [0, 1] is
    libsndfile's compression level (0: best quality, 1: smallest file). Opus needs 8, 12, 16, 24 or 48 kHz.
    The output is cut or zero-padded to ``len(x)``."""
    import io

    import soundfile as sf

    if codec not in ("vorbis", "opus"):
        raise AugmentError(f"ogg_roundtrip: codec must be 'vorbis' or 'opus', got {codec!r}")
    if not 0.0 <= quality <= 1.0:
        raise AugmentError(f"ogg_roundtrip: quality must be in [0, 1], got {quality!r}")
    if codec == "opus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
        raise AugmentError(f"ogg_roundtrip: Opus runs at 8, 12, 16, 24 or 48 kHz, not {sample_rate} Hz")
    xd = np.clip(_f64(x, "ogg_roundtrip"), -1.0, 1.0)
    n = len(xd)
    if n == 0:
        return xd.astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, xd.astype(np.float32), sample_rate, format="OGG", subtype=codec.upper(), compression_level=quality)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float64")
    out = np.zeros(n)
    out[: min(n, len(y))] = y[:n]
    return out.astype(np.float32)


#: the codecs of :func:`codec_roundtrip`
ROUNDTRIP_CODECS = ("mulaw", "alaw", "gsm", "vorbis", "opus")


def codec_roundtrip(x: np.ndarray, sample_rate: int, codec: str,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``x`` through one of :data:`ROUNDTRIP_CODECS` and back (Vorbis/Opus at a compression level drawn from
    ``rng`` in [0.3, 1.0], else 0.5)."""
    if codec == "mulaw":
        return mu_law_roundtrip(x)
    if codec == "alaw":
        return a_law_roundtrip(x)
    if codec == "gsm":
        return gsm_roundtrip(x, sample_rate)
    if codec in ("vorbis", "opus"):
        return ogg_roundtrip(x, sample_rate, codec, float(rng.uniform(0.3, 1.0)) if rng is not None else 0.5)
    raise AugmentError(f"unknown codec {codec!r}; choose from {', '.join(ROUNDTRIP_CODECS)}")


# -- reverberation ----------------------------------------------------------------------------------
def synthetic_rir(rt60: float, sample_rate: int, rng: np.random.Generator, direct_to_reverb_db: float = 0.0,
                  pre_delay_s: float = 0.0) -> np.ndarray:
    """Room impulse response: a unit direct path, ``pre_delay_s`` later a Gaussian-noise tail whose
    energy decays 60 dB in ``rt60`` s (amplitude ``exp(-6.9 t / rt60)``), lasting ``1.2 * rt60``.
    The tail energy is ``direct_to_reverb_db`` below the direct path; the result has unit peak."""
    if not (0.05 <= rt60 <= 5.0):
        raise AugmentError(f"synthetic_rir: rt60 must be in [0.05, 5] s, got {rt60}")
    n = max(2, int(round(1.2 * rt60 * sample_rate)))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-3 * math.log(10) * t / rt60)
    tail *= 10 ** (-direct_to_reverb_db / 20) / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
    delay = int(round(pre_delay_s * sample_rate))
    h = np.zeros(n + delay)
    h[0] = 1.0
    h[delay + 1: delay + n] += tail[1:]
    return (h / np.max(np.abs(h))).astype(np.float64)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``rir`` (FFT), cut to ``len(x)`` and scaled back to the dry RMS."""
    from scipy.signal import fftconvolve

    xd = _f64(x, "reverberate")
    h = _f64(rir, "reverberate (rir)")
    if len(xd) == 0:
        return xd.astype(np.float32)
    y = fftconvolve(xd, h)[: len(xd)]
    rx, ry = np.sqrt(np.mean(xd ** 2)), np.sqrt(np.mean(y ** 2))
    return (y * (rx / ry) if ry > 0 else y).astype(np.float32)


def measure_rt60(rir: np.ndarray, sample_rate: int) -> float:
    """RT60 of an impulse response by Schroeder backward integration: the slope of the energy decay
    curve between -5 and -25 dB (T20), extrapolated to 60 dB."""
    e = np.cumsum(np.asarray(rir, np.float64)[::-1] ** 2)[::-1]
    edc = 10 * np.log10(e / e[0] + 1e-300)
    i5, i25 = int(np.argmax(edc <= -5)), int(np.argmax(edc <= -25))
    if i25 <= i5:
        raise AugmentError("measure_rt60: the impulse response does not decay by 25 dB")
    t = np.arange(i5, i25) / sample_rate
    slope = np.polyfit(t, edc[i5:i25], 1)[0]
    return float(-60.0 / slope)


# -- noise ------------------------------------------------------------------------------------------
def coloured_noise(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with power spectrum ``~ 1/f**beta`` (0 white, 1 pink, 2 brown, -1 blue)."""
    if n < 2:
        raise AugmentError(f"coloured_noise: need at least 2 samples, got {n}")
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= f ** (beta / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def babble(n: int, utterances: Sequence[np.ndarray], rng: np.random.Generator, talkers: tuple[int, int] = (3, 6),
           ) -> tuple[np.ndarray, list[int]]:
    """Unit-RMS babble of ``n`` samples: ``talkers`` (inclusive range) utterances drawn from
    ``utterances``, each looped to fill the clip from a random offset at a random level (+-6 dB),
    summed. Returns the babble and the indices of the utterances used."""
    if not utterances:
        raise AugmentError("babble: needs at least one utterance")
    k = int(rng.integers(talkers[0], talkers[1] + 1))
    idx = [int(i) for i in rng.choice(len(utterances), size=k, replace=k > len(utterances))]
    out = np.zeros(n)
    for i in idx:
        u = np.asarray(utterances[i], np.float64)
        u = u / (np.sqrt(np.mean(u ** 2)) + 1e-12)
        start = int(rng.integers(0, max(1, len(u))))
        out += np.resize(np.roll(u, -start), n) * 10 ** (rng.uniform(-6, 6) / 20)
    return (out / (np.sqrt(np.mean(out ** 2)) + 1e-12)).astype(np.float32), idx


def _tone(f0: np.ndarray, sample_rate: int, harmonics: int, rolloff: float, phase: float) -> np.ndarray:
    """A harmonic tone following the frequency track ``f0`` (Hz per sample); harmonics above 0.45 x the rate
    are left out, so nothing folds over."""
    ph = 2 * np.pi * np.cumsum(f0) / sample_rate + phase
    out = np.zeros(len(f0))
    for h in range(1, harmonics + 1):
        if h * float(np.max(f0)) >= 0.45 * sample_rate:
            break
        out += np.sin(h * ph) / h ** rolloff
    return out


def synth_music(n: int, rng: np.random.Generator, sample_rate: int = 8000) -> tuple[np.ndarray, dict]:
    """Unit-RMS generated music of ``n`` samples and its parameters (JSON-able).

    A random tempo (60-160 bpm) and key (major or natural minor); a progression of triads (one per bar of
    4 beats) held as pads of 3-8 harmonics; a plucked bass on every beat; with probability 0.7 a lead
    melody (a random walk on the scale, notes of 1/2-2 beats, vibrato of 4-7 Hz, the most speech-like part:
    harmonic, with a moving pitch) and with probability 0.6 drums (a kick on beats 1 and 3, a noise
    hi-hat on every half beat). Stems are mixed at random levels (+-6 dB)."""
    if n < 1:
        raise AugmentError(f"synth_music: n must be >= 1, got {n}")
    sr = sample_rate
    bpm = float(rng.uniform(60, 160))
    beat = max(1, int(round(60 / bpm * sr)))
    root = int(rng.integers(45, 61))  # MIDI A2..C4
    minor = bool(rng.random() < 0.5)
    steps = (0, 2, 3, 5, 7, 8, 10) if minor else (0, 2, 4, 5, 7, 9, 11)
    scale = np.array([root + 12 * o + s for o in range(-1, 3) for s in steps])

    def hz(m):
        return 440.0 * 2 ** ((np.asarray(m, np.float64) - 69) / 12)

    t = np.arange(n)
    pads, bass = np.zeros(n), np.zeros(n)
    bar = 4 * beat
    for b0 in range(0, n, bar):
        deg = int(rng.integers(0, 7))
        chord = [scale[7 + deg + k] for k in (0, 2, 4)]  # a triad of the scale, from the middle octave
        seg = min(bar, n - b0)
        env = np.minimum(1.0, np.arange(seg) / (0.05 * sr)) * np.exp(-np.arange(seg) / (1.5 * bar))
        for m in chord:
            pads[b0:b0 + seg] += env * _tone(np.full(seg, hz(m)), sr, int(rng.integers(3, 9)), 1.5, rng.uniform(0, 6.3))
        for k0 in range(b0, b0 + seg, beat):
            k = min(beat, n - k0)
            bass[k0:k0 + k] += np.exp(-np.arange(k) / (0.3 * beat)) * _tone(np.full(k, hz(chord[0] - 12)), sr, 4, 1.0, 0.0)
    stems = {"pads": pads, "bass": bass}
    lead = bool(rng.random() < 0.7)
    if lead:
        f0, amp, pos, i = np.zeros(n), np.zeros(n), 0, int(rng.integers(10, 18))
        while pos < n:
            length = min(n - pos, int(beat * float(rng.choice([0.5, 1.0, 1.5, 2.0]))))
            i = int(np.clip(i + rng.integers(-2, 3), 7, len(scale) - 1))
            f0[pos:pos + length] = hz(scale[i])
            amp[pos:pos + length] = np.minimum(1.0, np.arange(length) / (0.02 * sr)) * np.exp(-np.arange(length) / (0.8 * beat))
            pos += length
        vib = 1 + float(rng.uniform(0.0, 0.02)) * np.sin(2 * np.pi * float(rng.uniform(4, 7)) * t / sr)
        stems["lead"] = amp * _tone(f0 * vib, sr, int(rng.integers(4, 12)), float(rng.uniform(0.7, 1.5)), 0.0)
    drums = bool(rng.random() < 0.6)
    if drums:
        d = np.zeros(n)
        klen = min(n, int(0.15 * sr))
        kick = np.sin(2 * np.pi * np.cumsum(np.linspace(120, 50, klen)) / sr) * np.exp(-np.arange(klen) / (0.04 * sr))
        for j, k0 in enumerate(range(0, n, beat)):
            if j % 4 in (0, 2):
                d[k0:k0 + klen] += kick[: n - k0]
        hlen = min(n, int(0.03 * sr))
        for k0 in range(0, n, max(1, beat // 2)):
            h = np.diff(rng.standard_normal(hlen + 1)) * np.exp(-np.arange(hlen) / (0.008 * sr))
            d[k0:k0 + hlen] += 0.3 * h[: n - k0]
        stems["drums"] = d
    out = np.zeros(n)
    for x in stems.values():
        out += x / (np.sqrt(np.mean(x ** 2)) + 1e-12) * 10 ** (rng.uniform(-6, 6) / 20)
    params = {"bpm": round(bpm, 1), "root_midi": root, "minor": minor, "lead": lead, "drums": drums}
    return (out / (np.sqrt(np.mean(out ** 2)) + 1e-12)).astype(np.float32), params


# -- random chains ----------------------------------------------------------------------------------
def draw_augmentation(rng: np.random.Generator, sample_rate: int, *, p_reverb: float = 0.3, p_band: float = 0.25,
                      p_codec: float = 0.3, p_clip: float = 0.1) -> dict[str, list[dict]]:
    """One random chain, as ``{"speech": [...], "mixture": [...]}`` lists of ``{"op": name, **params}``:
    reverberation acts on the speech before mixing; band-limiting, a codec and clipping on the mixture."""
    speech: list[dict] = []
    mixture: list[dict] = []
    if rng.random() < p_reverb:
        speech.append({"op": "reverb", "rt60": round(float(rng.uniform(0.15, 1.0)), 3),
                       "drr_db": round(float(rng.uniform(-3.0, 9.0)), 2), "seed": int(rng.integers(0, 2 ** 31))})
    if rng.random() < p_band:
        hi = min(float(rng.uniform(2400.0, 3800.0)), 0.95 * sample_rate / 2)
        mixture.append({"op": "band", "low_hz": round(float(rng.uniform(0.0, 350.0)), 1), "high_hz": round(hi, 1)})
    if rng.random() < p_codec:
        mixture.append({"op": "codec", "codec": str(rng.choice(CODECS))})
    if rng.random() < p_clip:
        mixture.append({"op": "clip", "drive_db": round(float(rng.uniform(3.0, 15.0)), 2)})
    return {"speech": speech, "mixture": mixture}


def apply_augmentation(x: np.ndarray, ops: Sequence[dict], sample_rate: int) -> np.ndarray:
    """Apply a list of ops from :func:`draw_augmentation` in order.

    ``clip`` scales the signal so its peak is ``drive_db`` above 1, clips at 1 and scales back down
    (the level stays comparable, the waveform is flattened)."""
    y = np.asarray(x, dtype=np.float32)
    for op in ops:
        name = op.get("op")
        if name == "reverb":
            rir = synthetic_rir(op["rt60"], sample_rate, np.random.default_rng(op["seed"]), op["drr_db"])
            y = reverberate(y, rir)
        elif name == "band":
            y = band_limit(y, sample_rate, op["low_hz"], op["high_hz"])
        elif name == "codec":
            peak = float(np.max(np.abs(y))) if len(y) else 0.0
            scale = 0.95 / peak if peak > 0.95 else 1.0  # codecs take [-1, 1]
            fn = {"mulaw": mu_law_roundtrip, "alaw": a_law_roundtrip}.get(op["codec"])
            z = fn(y * scale) if fn is not None else gsm_roundtrip(y * scale, sample_rate)
            y = (z / scale).astype(np.float32)
        elif name == "clip":
            peak = float(np.max(np.abs(y))) if len(y) else 0.0
            if peak > 0:
                g = 10 ** (op["drive_db"] / 20) / peak
                y = (clip_hard(y * g, 1.0) / g).astype(np.float32)
        elif name == "gain":
            y = apply_gain(y, op["gain_db"])
        else:
            raise AugmentError(f"apply_augmentation: unknown op {name!r}")
    return y


def chain_summary(ops: Optional[Sequence[dict]]) -> str:
    """Short text of a chain for tables, e.g. ``reverb+codec:gsm``."""
    if not ops:
        return "none"
    return "+".join(op["op"] + (f":{op['codec']}" if op["op"] == "codec" else "") for op in ops)
