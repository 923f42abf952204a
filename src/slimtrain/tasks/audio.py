"""Audio I/O shared by the speech case studies: reading with clear errors, resampling, and the
offline corpora that Debian packages install (Asterisk prompts, Asterisk music on hold).

Nothing here is downloaded: the corpora come from ``apt-get install`` (see the README) and are
looked up under ``/usr/share/asterisk`` unless ``SLIMTRAIN_ASTERISK_DIR`` points elsewhere.
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

__all__ = [
    "AudioError", "ASTERISK_VOICES", "asterisk_root", "asterisk_prompts", "asterisk_transcripts",
    "music_on_hold", "read_audio", "read_many", "resample", "write_audio", "rms_dbfs", "set_rms_dbfs",
]

PathLike = Union[str, os.PathLike]

#: language -> voice folder under ``sounds/`` (one professional speaker each) and its Debian package
ASTERISK_VOICES: dict[str, tuple[str, str]] = {
    "en": ("en_US_f_Allison", "asterisk-core-sounds-en-wav"),
    "es": ("es_MX_f_Allison", "asterisk-core-sounds-es-wav"),
    "fr": ("fr_CA_f_June", "asterisk-core-sounds-fr-wav"),
    "it": ("it_IT_m_Carlo", "asterisk-core-sounds-it-wav"),
}


class AudioError(ValueError):
    """A missing, unreadable, empty or otherwise unusable audio file (the message names it)."""


# -- reading and writing ------------------------------------------------------------------------------
def read_audio(path: PathLike, sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32 in [-1, 1]; resample to ``sample_rate`` if given.

    Multi-channel files are averaged to mono. Raises :class:`AudioError` naming the file when it is
    missing, not a readable audio file, or holds no samples.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise AudioError(f"audio file not found: {p}")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on bad files
        raise AudioError(f"cannot read audio file {p}: {' '.join(str(e).split())}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {p} is empty (0 samples)")
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(x)):
        raise AudioError(f"audio file {p} contains NaN or Inf samples")
    if sample_rate is not None and sr != sample_rate:
        x, sr = resample(x, sr, sample_rate), sample_rate
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def read_many(paths: Sequence[PathLike], sample_rate: int, *, what: str = "audio files",
              ) -> tuple[list[tuple[Path, np.ndarray]], list[tuple[Path, str]]]:
    """Read many files, skipping bad ones with one warning that counts and names them.

    Returns ``(good, skipped)`` with ``good = [(path, samples)]`` and ``skipped = [(path, reason)]``.
    Raises :class:`AudioError` only when *every* file is bad (or ``paths`` is empty), so one corrupt
    file never aborts a long run.
    """
    good: list[tuple[Path, np.ndarray]] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        try:
            x, _ = read_audio(p, sample_rate)
        except AudioError as e:
            skipped.append((Path(p), str(e)))
            continue
        good.append((Path(p), x))
    if not good:
        detail = f"; first problem: {skipped[0][1]}" if skipped else ""
        raise AudioError(f"no usable {what} (tried {len(paths)}){detail}")
    if skipped:
        names = ", ".join(str(p) for p, _ in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} {what} that could not be read: {names}",
                      stacklevel=2)
    return good, skipped


def write_audio(path: PathLike, x: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples as 16-bit PCM WAV (clipped to [-1, 1]); creates parent folders."""
    import soundfile as sf

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(p), np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0), int(sample_rate), subtype="PCM_16")
    return p


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling by a rational factor: polyphase FIR (``scipy.signal.resample_poly``,
    Kaiser window, beta 5), which low-pass filters at the lower Nyquist frequency before decimating."""
    from scipy.signal import resample_poly

    if orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return np.asarray(x, dtype=np.float32)
    f = Fraction(int(new_sr), int(orig_sr))
    y = resample_poly(np.asarray(x, dtype=np.float64), f.numerator, f.denominator, window=("kaiser", 5.0))
    return y.astype(np.float32)


def rms_dbfs(x: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for silence)."""
    r = float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64))))) if len(x) else 0.0
    return 20 * math.log10(r) if r > 0 else -math.inf


def set_rms_dbfs(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale ``x`` to the given RMS level (silence is returned unchanged)."""
    cur = rms_dbfs(x)
    if not math.isfinite(cur):
        return np.asarray(x, dtype=np.float32)
    return (np.asarray(x, dtype=np.float64) * 10 ** ((level_dbfs - cur) / 20)).astype(np.float32)


# -- offline corpora from Debian packages ---------------------------------------------------------------
def asterisk_root() -> Path:
    """Folder holding Asterisk's ``sounds/`` and ``moh/`` (``SLIMTRAIN_ASTERISK_DIR`` or /usr/share/asterisk)."""
    return Path(os.environ.get("SLIMTRAIN_ASTERISK_DIR", "/usr/share/asterisk"))


def _install_hint(packages: Iterable[str]) -> str:
    return f"install it with: apt-get install {' '.join(packages)} (or set SLIMTRAIN_ASTERISK_DIR)"


def asterisk_prompts(language: str, root: Optional[PathLike] = None) -> list[Path]:
    """Sorted WAV prompt files of one Asterisk voice (``"en"``, ``"es"``, ``"fr"``, ``"it"``)."""
    if language not in ASTERISK_VOICES:
        raise AudioError(f"unknown Asterisk language {language!r}; choose from {sorted(ASTERISK_VOICES)}")
    voice, package = ASTERISK_VOICES[language]
    folder = Path(root) if root is not None else asterisk_root() / "sounds" / voice
    files = sorted(folder.rglob("*.wav")) if folder.is_dir() else []
    if not files:
        raise AudioError(f"no Asterisk {language} prompts found in {folder}; {_install_hint([package])}")
    return files


def asterisk_transcripts(language: str, doc_root: PathLike = "/usr/share/doc") -> dict[str, str]:
    """Prompt name (path without ``.wav`` relative to the voice folder, e.g. ``digits/1``) -> text,
    from the companion package ``asterisk-core-sounds-<lang>`` (``core-sounds-<lang>.txt.gz``)."""
    if language not in ASTERISK_VOICES:
        raise AudioError(f"unknown Asterisk language {language!r}; choose from {sorted(ASTERISK_VOICES)}")
    f = Path(doc_root) / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"
    if not f.is_file():
        raise AudioError(f"no transcripts at {f}; install it with: apt-get install asterisk-core-sounds-{language}")
    out: dict[str, str] = {}
    with gzip.open(f, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            if text.strip():
                out[name.strip()] = text.strip()
    return out


def music_on_hold(root: Optional[PathLike] = None) -> list[Path]:
    """Sorted WAV files of Asterisk's music on hold (``asterisk-moh-opsound-wav``)."""
    folder = Path(root) if root is not None else asterisk_root() / "moh"
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise AudioError(f"no music-on-hold WAV files in {folder}; {_install_hint(['asterisk-moh-opsound-wav'])}")
    return files
