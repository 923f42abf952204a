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
    "EXTRA_ASTERISK_SPEAKERS", "deb_root", "extra_prompts", "SOUND_EFFECT_PACKAGES", "sound_effects",
    "package_version",
]

PathLike = Union[str, os.PathLike]

#: language -> voice folder under ``sounds/`` (one professional speaker each) and its Debian package
ASTERISK_VOICES: dict[str, tuple[str, str]] = {
    "en": ("en_US_f_Allison", "asterisk-core-sounds-en-wav"),
    "es": ("es_MX_f_Allison", "asterisk-core-sounds-es-wav"),
    "fr": ("fr_CA_f_June", "asterisk-core-sounds-fr-wav"),
    "it": ("it_IT_m_Carlo", "asterisk-core-sounds-it-wav"),
}


#: extra Asterisk speakers (GSM prompts): speaker id -> (Debian package, language, folder under
#: ``usr/share/asterisk/sounds``). These packages conflict with ``asterisk-core-sounds-es``/``-fr``
#: (same paths), so they are *unpacked* (``apt-get download`` + ``dpkg-deb -x``) under
#: :func:`deb_root`, not installed; see ``apt-unpack.txt``.
EXTRA_ASTERISK_SPEAKERS: dict[str, tuple[str, str, str]] = {
    "es-co": ("asterisk-prompt-es-co", "es", "es"),
    "fr-armelle": ("asterisk-prompt-fr-armelle", "fr", "fr"),
}

#: Debian packages with non-speech sound effects (desktop sound themes, free licences) and the
#: file patterns used; spoken files (e.g. freedesktop's ``audio-channel-*`` "front left") are left out.
SOUND_EFFECT_PACKAGES: dict[str, tuple[str, ...]] = {
    "sound-theme-freedesktop": ("freedesktop/stereo/*.oga",),
    "oxygen-sounds": ("Oxygen-*.ogg",),
    "yaru-theme-sound": ("Yaru/stereo/*.oga",),
}
_SPOKEN_EFFECTS = ("audio-channel-",)


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
        if p.suffix.lower() == ".gsm":  # raw GSM 06.10 (Asterisk prompts): libsndfile cannot read it
            data, sr = _decode_with_sox(p)
        else:
            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except AudioError:
        raise
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


def _decode_with_sox(p: Path) -> tuple[np.ndarray, int]:
    """Raw GSM 06.10 at 8 kHz (how Asterisk ships it) -> float32 ``(n, 1)`` through ``sox``."""
    import shutil
    import subprocess

    exe = shutil.which("sox")
    if exe is None:
        raise AudioError(f"cannot read {p}: GSM files need 'sox'; install it with: apt-get install sox libsox-fmt-base")
    r = subprocess.run([exe, "-t", "gsm", "-r", "8000", "-c", "1", str(p), "-t", "raw", "-e", "signed-integer",
                        "-b", "16", "-"], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AudioError(f"cannot read GSM file {p}: {' '.join(r.stderr.decode(errors='replace').split())[:200]}")
    x = np.frombuffer(r.stdout, dtype="<i2").astype(np.float32) / 32768.0
    return x[:, None], 8000


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


def deb_root() -> Path:
    """Folder where Debian packages that cannot be installed side by side are unpacked, one folder per
    package (``SLIMTRAIN_DEB_DIR`` or /opt/slimtrain/debs)."""
    return Path(os.environ.get("SLIMTRAIN_DEB_DIR", "/opt/slimtrain/debs"))


def package_path(package: str, path: str | Path, root: Optional[PathLike] = None, *, installed_first: bool = True) -> Path:
    """Where ``path`` (a path inside Debian ``package``, e.g. ``usr/share/...``) lies: ``root/<package>/<path>``
    when ``root`` is given (one folder per unpacked package), else the installed ``/<path>`` when it exists and
    ``installed_first``, else ``deb_root()/<package>/<path>`` when it exists (unpacked by install.sh,
    ``apt-unpack.txt``), else the installed path (for the error that names it)."""
    if root is not None:
        return Path(root) / package / path
    installed = Path("/") / path
    if installed_first and installed.exists():
        return installed
    unpacked = deb_root() / package / path
    return unpacked if unpacked.exists() else installed


def extra_prompts(speaker: str, root: Optional[PathLike] = None) -> list[Path]:
    """Sorted GSM prompt files of an extra Asterisk speaker (``"es-co"``, ``"fr-armelle"``), unpacked
    under ``root`` (default :func:`deb_root`) as ``<package>/usr/share/asterisk/sounds/<folder>``."""
    if speaker not in EXTRA_ASTERISK_SPEAKERS:
        raise AudioError(f"unknown extra Asterisk speaker {speaker!r}; choose from {sorted(EXTRA_ASTERISK_SPEAKERS)}")
    package, _, sub = EXTRA_ASTERISK_SPEAKERS[speaker]
    folder = Path(root if root is not None else deb_root()) / package / "usr/share/asterisk/sounds" / sub
    files = sorted(f for f in folder.rglob("*.gsm") if f.is_file()) if folder.is_dir() else []
    if not files:
        raise AudioError(
            f"no {speaker} prompts found in {folder}; unpack the package with: apt-get download {package} && "
            f"dpkg-deb -x {package}_*.deb {Path(root if root is not None else deb_root()) / package} "
            f"(it conflicts with asterisk-core-sounds-{EXTRA_ASTERISK_SPEAKERS[speaker][1]}, so it is not installed; "
            "or set SLIMTRAIN_DEB_DIR)")
    return files


def sound_effects(root: PathLike = "/usr/share/sounds") -> dict[str, list[Path]]:
    """Non-speech sound-effect files per Debian package of :data:`SOUND_EFFECT_PACKAGES` (packages with
    no files are left out; :class:`AudioError` if none is installed)."""
    out: dict[str, list[Path]] = {}
    for package, patterns in SOUND_EFFECT_PACKAGES.items():
        files = sorted({f for pat in patterns for f in Path(root).glob(pat)
                        if f.is_file() and not f.name.startswith(_SPOKEN_EFFECTS)})
        if files:
            out[package] = files
    if not out:
        raise AudioError(f"no sound effects in {root}; install them with: apt-get install {' '.join(SOUND_EFFECT_PACKAGES)}")
    return out


def package_version(package: str) -> str:
    """Installed Debian version of ``package`` (``dpkg-query``), the unpacked one's from its
    changelog folder name, or ``"unknown"``; recorded in manifests and fingerprints."""
    import shutil
    import subprocess

    exe = shutil.which("dpkg-query")
    if exe is not None:
        r = subprocess.run([exe, "-W", "-f=${Status} ${Version}", package], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.startswith("install ok installed"):
            return r.stdout.split()[-1]
    version = deb_root() / package / "VERSION"  # written by the unpack step (install.sh, apt-unpack.txt)
    if version.is_file():
        return version.read_text().strip() + " (unpacked)"
    return "unknown"
