"""Spoofing attack generators: eleven families, all offline (Debian programs, PyPI packages, torch).

=====  ===================================  ===============================================================
id     family                               generator
=====  ===================================  ===============================================================
A1     formant synthesis                    ``espeak-ng``: en/es/fr/it voices and variants (+f1..+m7),
                                            random rate (130-190 wpm) and pitch (25-75)
A2     diphone/cluster-unit (flite)         ``flite`` voices kal, kal16, awb, rms, slt (English)
A3     Festival diphone concatenation       ``festival`` voices kal_diphone, ked_diphone (English),
                                            lp_diphone, pc_diphone (Italian)
A4     Festival HTS statistical-parametric  ``festival`` voices cmu_us_slt_arctic_hts (English),
                                            upc_ca_ona_hts (Catalan voice, reads the Spanish texts)
A5     WORLD vocoder copy-synthesis         ``pyworld`` DIO + StoneMask F0, CheapTrick envelope, D4C
                                            aperiodicity, resynthesis of a bona fide utterance
A6     Griffin-Lim from a mel spectrogram   torch: power spectrogram -> 40-band mel -> pseudo-inverse ->
                                            32 Griffin-Lim iterations (phase discarded)
A7     LPC vocoder (LPC-10-style codec)     order-10 LPC per 20 ms frame, autocorrelation pitch,
                                            pulse-train / white-noise excitation, frame gain
A8     splice, hard joins                   syllable-like units (energy segmentation) of 4 bona fide
                                            recordings of one speaker, butt-joined (:mod:`.splice`)
A9     splice, smoothed joins               the same, each join aligned by waveform similarity (within
                                            5 ms, about a pitch period) and crossfaded over 10 ms
A10    harmonic-plus-noise vocoder          :func:`hnm_copy` (opt-in)
A11    Festival unit selection (clunits)    ``festival`` voice msu_ru_nsh_clunits (Russian) reading Russian
                                            game messages (:mod:`.unit_selection`; opt-in)
=====  ===================================  ===============================================================

A1-A4 and A11 synthesise text (A1-A4 the transcripts of the bona fide prompts, so content is shared by both
classes); A5-A7 and A10 resynthesise bona fide recordings; A8-A9 are made of bona fide samples themselves (what a
unit-selection synthesiser does). No neural vocoder: every registry package that offers one (e.g. a HiFi-GAN
or WaveGlow) needs pretrained weights downloaded at run time, which this project does not do. Every generator is deterministic given its
arguments (the random choices are drawn by the caller from a seeded generator and passed in).
A program that is missing raises :class:`AttackError` with the ``apt-get install`` line.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio import AudioError, read_audio

__all__ = [
    "AttackError", "ATTACKS", "TEXT_ATTACKS", "COPY_ATTACKS", "SPLICE_ATTACKS", "Attack", "require_program",
    "espeak", "flite", "festival_batch", "world_copy", "world_copy_batch", "griffin_lim_copy", "lpc_copy",
    "text_for_tts", "ESPEAK_VOICES", "FLITE_VOICES", "FESTIVAL_DIPHONE_VOICES", "FESTIVAL_HTS_VOICES",
    "ESPEAK_VOICES_EXTENDED", "ESPEAK_VARIANTS_EXTENDED", "FESTIVAL_DIPHONE_VOICES_EXTENDED",
    "FESTIVAL_EVAL_ONLY_VOICES", "FESTIVAL_ATTACKS", "FESTIVAL_UTF8_VOICES", "festival_package",
]

SR = 8000


class AttackError(RuntimeError):
    """An attack generator cannot run (missing program or voice) or failed on an input."""


@dataclass(frozen=True)
class Attack:
    """One attack family: id, short name and what it takes (``"text"`` or ``"audio"``)."""

    id: str
    name: str
    source: str
    description: str


ATTACKS: dict[str, Attack] = {a.id: a for a in [
    Attack("A1", "espeak-ng", "text", "formant synthesis, espeak-ng voices/variants, random rate and pitch"),
    Attack("A2", "flite", "text", "flite voices kal, kal16, awb, rms, slt"),
    Attack("A3", "festival-diphone", "text", "Festival diphone voices kal/ked (en), lp/pc (it)"),
    Attack("A4", "festival-hts", "text", "Festival HTS voices us-slt (en), ca-ona (reads es texts)"),
    Attack("A5", "world", "audio", "WORLD vocoder analysis/synthesis of bona fide speech"),
    Attack("A6", "griffin-lim", "audio", "Griffin-Lim phase reconstruction from a 40-band mel spectrogram"),
    Attack("A7", "lpc", "audio", "LPC-10-style vocoder: order-10 LPC, pulse/noise excitation"),
    Attack("A8", "splice", "splice", "syllable-like units of bona fide recordings, butt-joined"),
    Attack("A9", "splice-smooth", "splice", "syllable-like units of bona fide recordings, aligned and crossfaded"),
    Attack("A10", "hnm", "audio", "harmonic-plus-noise vocoder: harmonics of the F0 read off the spectral "
                                  "envelope (WORLD's DIO/CheapTrick analysis), envelope-shaped noise above 3 kHz "
                                  "and when unvoiced"),
    Attack("A11", "unit-selection", "text", "Festival unit selection (clunits), voice msu_ru_nsh (Russian), "
                                            "reading Russian sentences"),
]}
SPLICE_ATTACKS = tuple(a for a, v in ATTACKS.items() if v.source == "splice")
#: recordings of one speaker a splice draws its units from, and the crossfade of A9
SPLICE_SOURCES = 4
SPLICE_SMOOTH_MS = 10.0
#: ``SpoofDataConfig.splice_like_source``: the longest pause a splice unit brings from its source (a sentence-internal
#: pause; longer silences of the prompts are breaks between sentences) and the shortest splice (a few syllables)
SPLICE_MAX_PAUSE_MS = 500.0
SPLICE_MIN_SECONDS = 0.3
TEXT_ATTACKS = tuple(a for a, v in ATTACKS.items() if v.source == "text")
COPY_ATTACKS = tuple(a for a, v in ATTACKS.items() if v.source == "audio")

#: espeak-ng voice per language; variants are appended as ``voice+variant``
ESPEAK_VOICES: dict[str, tuple[str, ...]] = {"en": ("en-us", "en-gb"), "es": ("es", "es-419"), "fr": ("fr", "fr-be"),
                                             "it": ("it",)}
ESPEAK_VARIANTS = ("", "f1", "f2", "f3", "f4", "m1", "m2", "m3", "m4", "m7")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_DIPHONE_VOICES: dict[str, tuple[str, ...]] = {"en": ("kal_diphone", "ked_diphone"),
                                                       "it": ("lp_diphone", "pc_diphone")}
FESTIVAL_HTS_VOICES: dict[str, tuple[str, ...]] = {"en": ("cmu_us_slt_arctic_hts",), "es": ("upc_ca_ona_hts",)}

#: extended corpus (``--corpus extended``): more espeak-ng accents/languages and voice variants, and
#: more Festival diphone voices (Czech and Finnish voices reading the es/it transcripts, ASCII-folded).
#: flite in Debian has no further general voices (``awb_time`` only speaks clock times); the Debian
#: Hindi/Marathi/Telugu ``festvox-*-nsk`` voices do not load (their ``<lang>_phones.scm`` is missing).
ESPEAK_VOICES_EXTENDED: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"),
    "es": ("es", "es-419"), "fr": ("fr", "fr-be", "fr-ch"), "it": ("it",),
}
ESPEAK_VARIANTS_EXTENDED = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
                            "klatt", "klatt2", "klatt3", "klatt4", "croak", "grandma", "grandpa", "Alicia", "Andy",
                            "Annie", "steph", "iven", "edward", "max", "norbert", "quincy", "travis", "whisper")
FESTIVAL_DIPHONE_VOICES_EXTENDED: dict[str, tuple[str, ...]] = {
    "en": ("kal_diphone", "ked_diphone"),
    "es": ("czech_dita", "czech_krb", "czech_machac", "czech_ph", "hy_fi_mv_diphone", "suo_fi_lj_diphone"),
    "it": ("lp_diphone", "pc_diphone", "czech_dita", "czech_ph", "hy_fi_mv_diphone", "suo_fi_lj_diphone"),
}
#: voices of a *seen* family that only the evaluation split uses (unseen voices)
FESTIVAL_EVAL_ONLY_VOICES = ("hy_fi_mv_diphone", "suo_fi_lj_diphone")

_APT = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
_FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k", "lp_diphone": "festvox-italp16k",
    "pc_diphone": "festvox-itapc16k", "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "upc_ca_ona_hts": "festvox-ca-ona-hts", "czech_dita": "festvox-czech-dita", "czech_krb": "festvox-czech-krb",
    "czech_machac": "festvox-czech-machac", "czech_ph": "festvox-czech-ph", "hy_fi_mv_diphone": "festvox-suopuhe-mv",
    "suo_fi_lj_diphone": "festvox-suopuhe-lj", "msu_ru_nsh_clunits": "festvox-ru",
}
#: the families Festival synthesises (one process per voice and batch of texts)
FESTIVAL_ATTACKS = ("A3", "A4", "A11")
#: Festival voices whose text front end reads UTF-8 (Cyrillic): their texts are not folded to ASCII
FESTIVAL_UTF8_VOICES = ("msu_ru_nsh_clunits",)


def festival_package(voice: str) -> str:
    """Debian package of a Festival voice (``"unknown"`` if not listed)."""
    return _FESTIVAL_VOICE_PACKAGES.get(voice, "unknown")


def require_program(name: str) -> str:
    """Path of the program ``name``; :class:`AttackError` with the apt-get line if it is missing."""
    p = shutil.which(name)
    if p is None:
        raise AttackError(f"'{name}' is not installed; install it with: apt-get install {_APT.get(name, name)}")
    return p


def _run(cmd: Sequence[str], what: str, timeout: float = 120.0) -> None:
    try:
        r = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AttackError(f"{what} timed out after {timeout:.0f}s") from None
    if r.returncode != 0:
        msg = " ".join(r.stderr.decode(errors="replace").split())[:300]
        raise AttackError(f"{what} failed (exit {r.returncode}): {msg}")


def _read(path: Path, what: str, sample_rate: int = SR) -> np.ndarray:
    try:
        x, _ = read_audio(path, sample_rate)
    except AudioError as e:
        raise AttackError(f"{what} produced no usable audio: {e}") from None
    return x


# -- A1-A4: text to speech ------------------------------------------------------------------------
def espeak(text: str, voice: str, rate: int = 160, pitch: int = 50, sample_rate: int = SR) -> np.ndarray:
    """A1: espeak-ng formant synthesis of ``text`` with ``voice`` (e.g. ``en-us+f3``) -> float32 at
    ``sample_rate`` (default 8 kHz; espeak-ng writes 22.05 kHz)."""
    exe = require_program("espeak-ng")
    with tempfile.TemporaryDirectory(prefix="slimtrain-espeak-") as d:
        out = Path(d) / "x.wav"
        _run([exe, "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "-w", str(out), "--", text],
             f"espeak-ng (voice {voice})")
        return _read(out, f"espeak-ng (voice {voice})", sample_rate)


def flite(text: str, voice: str, sample_rate: int = SR) -> np.ndarray:
    """A2: flite synthesis of ``text`` with one of :data:`FLITE_VOICES` -> float32 at ``sample_rate`` (default 8 kHz)."""
    exe = require_program("flite")
    with tempfile.TemporaryDirectory(prefix="slimtrain-flite-") as d:
        out = Path(d) / "x.wav"
        _run([exe, "-voice", voice, "-t", text, "-o", str(out)], f"flite (voice {voice})")
        return _read(out, f"flite (voice {voice})", sample_rate)


def _scheme_string(text: str, fold: bool = True) -> str:
    """A Scheme string of ``text`` (letters, digits and sentence punctuation). ``fold``: to ASCII, as Festival's
    Latin-script voices read Latin-1 and their letter-to-sound rules reject many accented letters; the voices
    of :data:`FESTIVAL_UTF8_VOICES` read their script as UTF-8."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii") if fold else text
    keep = "".join(c if (c.isalnum() or c in " .,;:?!'-") else " " for c in folded)
    return '"' + (" ".join(keep.split()) or "a") + '"'


def festival_batch(texts: Sequence[str], voice: str, timeout: float = 600.0, sample_rate: int = SR) -> list[np.ndarray]:
    """A3/A4/A11: synthesise many texts with one Festival voice in a single ``festival -b`` process
    (start-up costs ~0.3 s, so batching matters) -> list of float32 arrays at ``sample_rate`` (default 8 kHz), in order."""
    exe = require_program("festival")
    if not texts:
        return []
    with tempfile.TemporaryDirectory(prefix="slimtrain-festival-") as d:
        lines = [f"(voice_{voice})"]
        for i, t in enumerate(texts):
            text = _scheme_string(t, fold=voice not in FESTIVAL_UTF8_VOICES)
            lines.append(f"(utt.save.wave (utt.synth (Utterance Text {text})) \"{d}/{i}.wav\" 'riff)")
        script = Path(d) / "run.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            r = subprocess.run([exe, "-b", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AttackError(f"festival (voice {voice}) timed out after {timeout:.0f}s") from None
        err = r.stderr.decode(errors="replace")
        if ("not defined" in err or "unbound variable" in err) and f"voice_{voice}" in err:
            pkg = _FESTIVAL_VOICE_PACKAGES.get(voice, "the voice's festvox package")
            raise AttackError(f"Festival voice '{voice}' is not installed; install it with: apt-get install {pkg}")
        out = []
        for i in range(len(texts)):
            f = Path(d) / f"{i}.wav"
            if not f.is_file():
                msg = " ".join(err.split())[:300]
                raise AttackError(f"festival (voice {voice}) did not synthesise text {i} {texts[i]!r}: {msg}")
            out.append(_read(f, f"festival (voice {voice})", sample_rate))
        return out


# -- A5-A7: copy-synthesis of bona fide audio ------------------------------------------------------
def world_copy(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """A5: WORLD vocoder analysis (DIO + StoneMask, CheapTrick, D4C) and resynthesis.

    D4C draws from WORLD's process-wide random generator (its voicing decisions can flip), so
    repeated calls in one process differ; :func:`world_copy_batch` gives reproducible output."""
    try:
        import pyworld
    except ImportError:
        raise AttackError("pyworld is not installed; install it with: pip install pyworld-prebuilt") from None
    xd = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.dio(xd, sr, frame_period=5.0)
    f0 = pyworld.stonemask(xd, f0, t, sr)
    sp = pyworld.cheaptrick(xd, f0, t, sr)
    ap = pyworld.d4c(xd, f0, t, sr)
    y = pyworld.synthesize(f0, sp, ap, sr, frame_period=5.0)
    return y[: len(x)].astype(np.float32)


_WORLD_CHILD = """
import io, sys
import numpy as np
import pyworld
z = np.load(io.BytesIO(sys.stdin.buffer.read()))
sr = int(z["sr"])
out = {}
for i in range(int(z["n"])):
    x = np.ascontiguousarray(z[f"x{i}"], dtype=np.float64)
    f0, t = pyworld.dio(x, sr, frame_period=5.0)
    f0 = pyworld.stonemask(x, f0, t, sr)
    y = pyworld.synthesize(f0, pyworld.cheaptrick(x, f0, t, sr), pyworld.d4c(x, f0, t, sr), sr, frame_period=5.0)
    out[f"y{i}"] = y[: len(x)].astype(np.float32)
buf = io.BytesIO()
np.savez(buf, **out)
sys.stdout.buffer.write(buf.getvalue())
"""


def world_copy_batch(xs: Sequence[np.ndarray], sr: int = SR, timeout: float = 900.0) -> list[np.ndarray]:
    """A5 for many recordings, reproducibly: :func:`world_copy` in order in a fresh Python process, so
    WORLD's random generator always starts from the same state."""
    import io
    import sys

    if not xs:
        return []
    try:
        import pyworld  # noqa: F401
    except ImportError:
        raise AttackError("pyworld is not installed; install it with: pip install pyworld-prebuilt") from None
    buf = io.BytesIO()
    np.savez(buf, sr=sr, n=len(xs), **{f"x{i}": np.asarray(x, dtype=np.float32) for i, x in enumerate(xs)})
    try:
        r = subprocess.run([sys.executable, "-c", _WORLD_CHILD], input=buf.getvalue(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AttackError(f"WORLD copy-synthesis timed out after {timeout:.0f}s") from None
    if r.returncode != 0:
        raise AttackError(f"WORLD copy-synthesis failed: {' '.join(r.stderr.decode(errors='replace').split())[-300:]}")
    z = np.load(io.BytesIO(r.stdout))
    return [z[f"y{i}"] for i in range(len(xs))]


def griffin_lim_copy(x: np.ndarray, sr: int = SR, n_fft: int = 256, hop: int = 64, n_mels: int = 40,
                     iterations: int = 32, seed: int = 0) -> np.ndarray:
    """A6: keep only a ``n_mels``-band mel power spectrogram, invert the filterbank (least squares,
    clipped at 0) and reconstruct the phase with ``iterations`` Griffin-Lim steps (torch)."""
    import torch

    from ...audio.frontend import mel_filterbank

    w = torch.hann_window(n_fft, dtype=torch.float64)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    spec = torch.stft(xt, n_fft, hop, window=w, center=True, return_complex=True)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr).double()
    mel = fb @ spec.abs() ** 2
    power = (torch.linalg.pinv(fb) @ mel).clamp_min(0.0)  # minimum-norm inverse of the filterbank
    mag = power.sqrt()
    g = torch.Generator().manual_seed(seed)
    phase = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=g, dtype=torch.float64))
    y = None
    for _ in range(iterations):
        y = torch.istft(mag * phase, n_fft, hop, window=w, center=True, length=len(x))
        s = torch.stft(y, n_fft, hop, window=w, center=True, return_complex=True)
        phase = torch.exp(1j * torch.angle(s))
    y = torch.istft(mag * phase, n_fft, hop, window=w, center=True, length=len(x))
    return y.numpy().astype(np.float32)


def lpc_copy(x: np.ndarray, sr: int = SR, order: int = 10, frame: int = 160, hop: int = 80,
             seed: int = 0) -> np.ndarray:
    """A7: LPC-10-style vocoder. Per 20 ms frame (10 ms hop): order-``order`` LPC by autocorrelation,
    pitch by normalised autocorrelation (60-400 Hz, voiced if > 0.35), excitation = pulse train at
    that pitch or white noise, scaled to the prediction-error energy, all-pole synthesis with the
    filter state carried across hops."""
    from scipy.linalg import solve_toeplitz
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(x)
    pad = np.concatenate([x, np.zeros(frame)])
    win = np.hanning(frame)
    lo, hi = int(sr / 400), int(sr / 60)
    y = np.zeros(n + frame)
    zi = np.zeros(order)
    next_pulse = 0
    for start in range(0, n, hop):
        seg = pad[start:start + frame] * win
        r = np.correlate(seg, seg, mode="full")[frame - 1:]
        if r[0] <= 1e-10:
            y[start:start + hop] = 0.0
            continue
        r_reg = r[: order + 1].copy()
        r_reg[0] *= 1.0 + 1e-6
        try:
            a = solve_toeplitz(r_reg[:order], r_reg[1:order + 1])
        except np.linalg.LinAlgError:
            a = np.zeros(order)
        err = max(r_reg[0] - float(np.dot(a, r_reg[1:order + 1])), 1e-12)
        gain = math.sqrt(err / frame)
        lag = lo + int(np.argmax(r[lo:hi])) if hi < frame else lo
        voiced = r[lag] / r[0] > 0.35
        if voiced:
            exc = np.zeros(hop)
            while next_pulse < start + hop:
                if next_pulse >= start:
                    exc[next_pulse - start] = math.sqrt(lag)
                next_pulse += lag
        else:
            exc = rng.standard_normal(hop)
            next_pulse = start + hop
        out, zi = lfilter([gain * 1.0], np.concatenate([[1.0], -a]), exc, zi=zi)
        y[start:start + hop] = out
    y = y[:n]
    peak = np.max(np.abs(y)) if n else 0.0
    if peak > 1.0:
        y = y / peak
    return y.astype(np.float32)


def hnm_copy(x: np.ndarray, sr: int = SR, seed: int = 0, frame_period: float = 5.0,
             max_voiced: float = 0.75) -> np.ndarray:
    """A10: harmonic-plus-noise copy-synthesis (the sinusoidal model behind HNM and neural source-filter vocoders).

    F0 by DIO + StoneMask and the spectral envelope by CheapTrick (WORLD's analysis; both deterministic, unlike
    D4C); in voiced frames a sum of harmonics of the interpolated F0 up to ``max_voiced`` of the Nyquist
    frequency, each with the envelope's amplitude at its frequency and a phase that only integrates the F0 (the
    recording's phase is not kept); above that and in unvoiced frames white noise (``seed``) shaped by the
    envelope (STFT, 32 ms window, 5 ms hop). Each 5 ms frame is scaled to the recording's frame energy."""
    try:
        import pyworld
    except ImportError:
        raise AttackError("pyworld is not installed; install it with: pip install pyworld-prebuilt") from None
    import torch

    xd = np.ascontiguousarray(x, dtype=np.float64)
    n = len(xd)
    if n < sr // 50:
        return np.zeros(n, np.float32)
    f0, t = pyworld.dio(xd, sr, frame_period=frame_period)
    f0 = pyworld.stonemask(xd, f0, t, sr)
    sp = pyworld.cheaptrick(xd, f0, t, sr)  # (frames, fft_size // 2 + 1) power envelope
    fft_size = (sp.shape[1] - 1) * 2
    hop = int(round(sr * frame_period / 1000))
    frame_of = np.clip(np.arange(n) // hop, 0, len(f0) - 1)
    voiced = f0[frame_of] > 0
    vt = np.flatnonzero(f0 > 0)
    f0s = np.where(voiced, np.interp(np.arange(n) / sr, t[vt], f0[vt]) if len(vt) else 0.0, 0.0)
    mvf = max_voiced * sr / 2
    phase = 2 * np.pi * np.cumsum(f0s) / sr
    harm = np.zeros(n)
    if len(vt):
        for k in range(1, int(mvf / max(f0[vt].min(), 40.0)) + 1):
            fk = k * f0s
            on = voiced & (fk < mvf)
            if not on.any():
                break
            bins = np.clip(np.round(fk / sr * fft_size).astype(int), 0, sp.shape[1] - 1)
            harm += np.where(on, np.sqrt(sp[frame_of, bins]), 0.0) * np.cos(k * phase)
    nfft = 256
    win = torch.hann_window(nfft, dtype=torch.float64)
    noise = torch.as_tensor(np.random.default_rng(seed).standard_normal(n))
    spec = torch.stft(noise, nfft, hop, window=win, center=True, return_complex=True)  # (nfft//2+1, frames)
    freqs = np.arange(nfft // 2 + 1) * sr / nfft
    cols = np.clip(np.arange(spec.shape[1]), 0, len(f0) - 1)
    env = np.sqrt(sp[cols][:, np.clip(np.round(freqs / sr * fft_size).astype(int), 0, sp.shape[1] - 1)]).T
    mask = np.where((f0[cols] > 0)[None, :] & (freqs[:, None] < mvf), 0.0, 1.0)
    shaped = torch.istft(spec * torch.as_tensor(env * mask), nfft, hop, window=win, center=True, length=n).numpy()
    y = harm / max(np.sqrt(np.mean(harm ** 2)), 1e-12) * 0.1 + shaped / max(np.sqrt(np.mean(shaped ** 2)), 1e-12) * 0.02
    # each frame at the recording's energy
    m = (n + hop - 1) // hop
    ex = np.pad(xd, (0, m * hop - n)).reshape(m, hop)
    ey = np.pad(y, (0, m * hop - n)).reshape(m, hop)
    gain = np.sqrt((ex ** 2).mean(1) / np.maximum((ey ** 2).mean(1), 1e-12))
    gain = np.convolve(gain, np.ones(3) / 3, mode="same")  # no clicks at frame edges
    y = (ey * gain[:, None]).reshape(-1)[:n]
    peak = np.max(np.abs(y))
    return (y / peak if peak > 1.0 else y).astype(np.float32)


def text_for_tts(text: str, max_words: int = 14) -> str:
    """Transcript cleaned for a synthesiser: drop bracketed notes and ellipses, keep ``max_words`` words."""
    import re

    t = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
    t = t.replace("...", " ").replace("…", " ")
    words = t.split()[:max_words]
    return " ".join(words) if words else text.strip()
