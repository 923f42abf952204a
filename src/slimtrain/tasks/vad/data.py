"""VAD data: Asterisk prompt speech mixed with music and synthetic noise, labelled per 10 ms frame.

Design (see ``docs/vad.md``):

* **Split by speaker/language**: train = English + Spanish voices, validation = French, test =
  Italian (one professional speaker per language, so the test speaker is never heard in training).
  Music on hold is split by file too (3 train, 1 validation, 1 test).
* **Clips** of ``clip_seconds``: utterances (each at a random level) placed one after another with
  random gaps, then noise of one type (music, white, pink, brown, modulated, clicks, or near
  silence) added at a random SNR and the mixture given a random gain.
* **SNR** = active speech power (samples in frames whose clean level passes the label threshold)
  over the noise power of the whole clip, in dB. It is set exactly and measured back.
* **Labels** (10 ms hop, frame ``t`` centred on sample ``t * hop`` like :class:`slimtrain.MelFrontend`):
  a frame is speech when the clean speech level over its hop-long window is within
  ``label_threshold_db`` (35 dB) of the clip's loudest speech frame; the speech regions are then
  widened by ``onset_frames`` (2) before and ``hangover_frames`` (8, i.e. 80 ms) after.
* Everything comes from one seed; :func:`~slimtrain.tasks.vad.build.build_vad_data` writes ``<split>.npz`` and ``manifest.json``
  into a cache folder and reuses them when the configuration matches.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .errors import DataError
from ..audio import ASTERISK_VOICES, AudioError, asterisk_prompts, music_on_hold, read_many

__all__ = [
    "VadDataConfig", "VadSplit", "NOISE_TYPES", "SPLITS", "frame_labels", "make_noise", "mix_at_snr",
    "measure_snr", "build_clips", "build_core_vad_data", "load_vad_data", "DataError", "CORPORA", "EVAL_SETS",
]

SPLITS = ("train", "val", "test")
#: the sets ``slimtrain vad eval --set`` scores on (:mod:`.evaluate`; the unseen ones: :mod:`.unseen`, :mod:`.unseen_human`)
EVAL_SETS = ("test", "unseen", "unseen-human", "unseen-tts", "unseen-expressive")
NOISE_TYPES = ("music", "white", "pink", "brown", "modulated", "clicks", "silence")
#: music-on-hold files per split (by index in the sorted list of 5)
_MUSIC_SPLIT = {"train": (0, 1, 2), "val": (3,), "test": (4,)}
MANIFEST_VERSION = 1
#: selectable corpora: ``core`` = the documented data set (byte-identical), ``extended`` = more speakers,
#: synthetic speech, more noise types and augmentation (:mod:`slimtrain.tasks.vad.extended`)
CORPORA = ("core", "extended")
_EXTENDED_FIELDS = ("corpus", "tts_utterances", "extra_train_speakers", "augment_probabilities")
#: extended-corpus fields left out of the settings (and fingerprint) while no human-voice source is used,
#: so corpora built before the human-voice registry keep their fingerprints
_HUMAN_FIELDS = ("human_voices", "human_files_per_source")
#: training-noise recipes of the extended corpus (:data:`slimtrain.tasks.vad.extended.NOISE_RECIPES`); ``v1`` is
#: left out of the settings (and fingerprint), so corpora built before ``v2`` existed keep their fingerprints
NOISE_RECIPE_NAMES = ("v1", "v2")




@dataclass
class VadDataConfig:
    """How the VAD mixtures are made. ``*_minutes=None`` uses every utterance of that split once."""

    seed: int = 0
    sample_rate: int = 8000
    hop: int = 80
    clip_seconds: float = 4.0
    train_languages: tuple[str, ...] = ("en", "es")
    val_languages: tuple[str, ...] = ("fr",)
    test_languages: tuple[str, ...] = ("it",)
    train_minutes: Optional[float] = 16.0
    val_minutes: Optional[float] = 4.0
    test_minutes: Optional[float] = None
    snr_db: tuple[float, float] = (-5.0, 30.0)
    speech_level_dbfs: tuple[float, float] = (-32.0, -20.0)
    gain_db: tuple[float, float] = (-10.0, 6.0)
    gap_seconds: tuple[float, float] = (0.1, 1.2)
    label_threshold_db: float = 35.0
    onset_frames: int = 2
    hangover_frames: int = 8
    max_files_per_language: Optional[int] = None
    corpus_root: Optional[str] = None  # folder with sounds/<voice>/ and moh/ (default: /usr/share/asterisk)
    #: ``"core"`` (the documented data set), ``"extended"`` (see :mod:`slimtrain.tasks.vad.extended`), or
    #: ``None``: whatever corpus the cache folder already holds (core if it holds none), so the training
    #: and sweep commands read an extended folder they are given instead of overwriting it
    corpus: Optional[str] = None
    #: extended corpus only: synthetic (TTS) utterances added to the training speech, extra real
    #: training speakers (GSM prompts), and the share of clips with each augmentation
    tts_utterances: int = 400
    extra_train_speakers: tuple[str, ...] = ("es-co", "fr-armelle")
    augment_probabilities: tuple[float, float, float, float] = (0.3, 0.25, 0.3, 0.1)  # reverb, band, codec, clip
    #: extended corpus only: recorded human-voice sources (ids of :mod:`.human_voices` with role ``train``)
    #: added to the training speech, at most ``human_files_per_source`` files each (drawn from the seed)
    human_voices: tuple[str, ...] = ()
    human_files_per_source: int = 120
    #: extended corpus only: the training split's noise recipe, ``v1`` (every extended noise type, SNR from
    #: ``snr_db``) or ``v2`` (+ generated music; the noise types Silero VAD beat us on below 5 dB drawn at
    #: lower SNR); validation and test are mixed with ``v1`` either way
    noise_recipe: str = "v1"

    @classmethod
    def quick(cls, **overrides) -> "VadDataConfig":
        """A tiny set for tests and CI (a few dozen files per language)."""
        base = dict(train_minutes=1.5, val_minutes=0.5, test_minutes=1.0, max_files_per_language=40)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> "VadDataConfig":
        problems = []
        if self.sample_rate < 1000 or self.hop < 1:
            problems.append(f"sample_rate {self.sample_rate} / hop {self.hop} invalid")
        if self.clip_seconds <= 0.5:
            problems.append(f"clip_seconds must be > 0.5, got {self.clip_seconds}")
        for name in ("train_minutes", "val_minutes", "test_minutes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                problems.append(f"{name} must be > 0 or None, got {v}")
        for name in ("snr_db", "speech_level_dbfs", "gain_db", "gap_seconds"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                problems.append(f"{name} range ({lo}, {hi}) is empty")
        langs = [self.train_languages, self.val_languages, self.test_languages]
        for ls in langs:
            for lang in ls:
                if lang not in ASTERISK_VOICES:
                    problems.append(f"unknown language {lang!r} (choose from {sorted(ASTERISK_VOICES)})")
        if set(self.test_languages) & (set(self.train_languages) | set(self.val_languages)):
            problems.append("test languages (speakers) must not also be used for training or validation")
        if self.corpus not in (None,) + CORPORA:
            problems.append(f"unknown corpus {self.corpus!r} (choose from {', '.join(CORPORA)})")
        if self.effective_corpus == "extended":
            from ..audio import EXTRA_ASTERISK_SPEAKERS

            for sp in self.extra_train_speakers:
                if sp not in EXTRA_ASTERISK_SPEAKERS:
                    problems.append(f"unknown extra speaker {sp!r} (choose from {sorted(EXTRA_ASTERISK_SPEAKERS)})")
                elif EXTRA_ASTERISK_SPEAKERS[sp][1] in self.test_languages:
                    problems.append(f"extra speaker {sp!r} speaks a test language; the test language must stay held out")
            if not isinstance(self.tts_utterances, int) or self.tts_utterances < 0:
                problems.append(f"tts_utterances must be an integer >= 0, got {self.tts_utterances!r}")
            if not all(0 <= p <= 1 for p in self.augment_probabilities) or len(self.augment_probabilities) != 4:
                problems.append(f"augment_probabilities must be 4 numbers in [0, 1], got {self.augment_probabilities}")
            from ..human_voices import SOURCES

            roles = {s.id: s.role for s in SOURCES}
            builtin = {s.id for s in SOURCES if s.builtin}
            for sid in self.human_voices:
                if sid in builtin:
                    problems.append(f"human-voice source {sid!r} is already a voice of the corpus (Asterisk voices "
                                    "and extra_train_speakers choose it)")
                elif sid not in roles:
                    problems.append(f"unknown human-voice source {sid!r} (see 'slimtrain data human-voices')")
                elif roles[sid] != "train":
                    problems.append(f"human-voice source {sid!r} is registered as {roles[sid]!r}, not 'train': "
                                    "it must stay out of training")
            if not isinstance(self.human_files_per_source, int) or self.human_files_per_source < 1:
                problems.append(f"human_files_per_source must be an integer >= 1, got {self.human_files_per_source!r}")
            if self.noise_recipe not in NOISE_RECIPE_NAMES:
                problems.append(f"unknown noise_recipe {self.noise_recipe!r} (choose from {', '.join(NOISE_RECIPE_NAMES)})")
        elif self.human_voices:
            problems.append("human_voices only applies to the extended corpus (corpus='extended')")
        elif self.noise_recipe != "v1":
            problems.append(f"noise_recipe {self.noise_recipe!r} only applies to the extended corpus (corpus='extended')")
        if problems:
            raise DataError("bad VAD data configuration: " + "; ".join(problems))
        return self

    @property
    def effective_corpus(self) -> str:
        return self.corpus or "core"

    def as_dict(self) -> dict:
        """JSON-able settings. The core corpus leaves out the extended-only fields, so its fingerprint
        and manifest are exactly those of the data sets documented before the extended corpus."""
        d = asdict(self)
        if self.effective_corpus == "core":
            for k in _EXTENDED_FIELDS:
                d.pop(k)
        if self.effective_corpus == "core" or not self.human_voices:
            for k in _HUMAN_FIELDS:
                d.pop(k)
        if self.effective_corpus == "core" or self.noise_recipe == "v1":
            d.pop("noise_recipe")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class VadSplit:
    """One split: ``audio`` (clips, samples) float32, ``labels`` (clips, frames) uint8, per-clip SNR and noise."""

    audio: np.ndarray
    labels: np.ndarray
    snr_db: np.ndarray
    noise: list[str]
    sources: list[list[str]] = field(default_factory=list)
    target_snr_db: Optional[np.ndarray] = None  # drawn SNR (set only by build_clips)
    speech: Optional[np.ndarray] = None  # clean speech and noise as mixed (only with keep_components)
    noise_audio: Optional[np.ndarray] = None


# -- labels --------------------------------------------------------------------------------------
def frame_levels_db(speech: np.ndarray, hop: int) -> np.ndarray:
    """Level (dBFS) of frame ``t``: the mean power of ``speech[t*hop - hop//2 : t*hop + hop - hop//2]``."""
    n = len(speech)
    frames = n // hop + 1
    padded = np.concatenate([np.zeros(hop // 2), np.asarray(speech, dtype=np.float64) ** 2, np.zeros(hop)])
    power = padded[: frames * hop].reshape(frames, hop).mean(axis=1)
    return 10 * np.log10(power + 1e-12)


def _dilate(active: np.ndarray, before: int, after: int) -> np.ndarray:
    out = active.copy()
    idx = np.flatnonzero(active)
    for d in range(1, after + 1):
        out[np.minimum(idx + d, len(out) - 1)] = True
    for d in range(1, before + 1):
        out[np.maximum(idx - d, 0)] = True
    return out


def frame_labels(speech: np.ndarray, hop: int = 80, threshold_db: float = 35.0, onset_frames: int = 2,
                 hangover_frames: int = 8) -> np.ndarray:
    """0/1 speech label per frame (``len(speech) // hop + 1`` frames) from the clean speech alone.

    A frame is speech when its level is within ``threshold_db`` of the loudest frame (and above
    -90 dBFS); speech regions are widened ``onset_frames`` before and ``hangover_frames`` after.
    """
    lev = frame_levels_db(speech, hop)
    if not np.any(lev > -90):
        return np.zeros(len(lev), dtype=np.uint8)
    active = (lev > lev.max() - threshold_db) & (lev > -90)
    return _dilate(active, onset_frames, hangover_frames).astype(np.uint8)


def _active_samples(speech: np.ndarray, hop: int, threshold_db: float) -> np.ndarray:
    lev = frame_levels_db(speech, hop)
    active = (lev > lev.max() - threshold_db) & (lev > -90)
    mask = np.repeat(active, hop)
    mask = np.concatenate([mask[hop // 2:], np.zeros(hop, dtype=bool)])[: len(speech)]
    return mask


def measure_snr(speech: np.ndarray, noise: np.ndarray, hop: int = 80, threshold_db: float = 35.0) -> float:
    """Active-speech-to-noise ratio in dB: speech power over frames above the label threshold,
    noise power over the whole clip."""
    mask = _active_samples(speech, hop, threshold_db)
    ps = float(np.mean(np.asarray(speech, np.float64)[mask] ** 2)) if mask.any() else 0.0
    pn = float(np.mean(np.asarray(noise, np.float64) ** 2))
    if ps <= 0:
        return -math.inf
    return math.inf if pn <= 0 else 10 * math.log10(ps / pn)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, hop: int = 80,
               threshold_db: float = 35.0) -> np.ndarray:
    """``noise`` rescaled so that ``measure_snr(speech, scaled) == snr_db``."""
    return _rescaled(noise, measure_snr(speech, noise, hop, threshold_db), snr_db)


def _rescaled(noise: np.ndarray, now: float, snr_db: float) -> np.ndarray:
    """``noise``, now at an SNR of ``now`` dB, rescaled to ``snr_db``."""
    if not math.isfinite(now):
        raise DataError("cannot set the SNR of a clip without speech or without noise")
    return (np.asarray(noise, np.float64) * 10 ** ((now - snr_db) / 20)).astype(np.float32)


def noise_for_clip(speech: np.ndarray, noise: np.ndarray, snr_db: float, cfg: "VadDataConfig") -> tuple[np.ndarray, bool]:
    """``(noise scaled for the clip, whether the clip has speech)``: :func:`mix_at_snr` for a clip with
    speech. A speech track without one active frame (an utterance longer than the clip, cut to a stretch of
    its silence: digital silence below -90 dBFS) is a clip without speech: its labels are all 0, an SNR is
    undefined, and its noise is set ``snr_db`` below the middle of ``cfg.speech_level_dbfs``, where the
    speech would have been (its measured SNR is recorded as NaN)."""
    now = measure_snr(speech, noise, cfg.hop, cfg.label_threshold_db)  # -inf: no active speech frame
    if now != -math.inf:
        return _rescaled(noise, now, snr_db), True
    rms = float(np.sqrt(np.mean(np.asarray(noise, np.float64) ** 2)))
    if rms <= 0:
        raise DataError("cannot set the level of a clip without speech and without noise")
    level = 0.5 * (cfg.speech_level_dbfs[0] + cfg.speech_level_dbfs[1]) - snr_db
    return (np.asarray(noise, np.float64) * (10 ** (level / 20) / rms)).astype(np.float32), False


def snr_range(snr_db: np.ndarray) -> dict:
    """``{"min", "max"}`` of the measured SNRs of a split's clips, leaving out the clips without speech (NaN)."""
    ok = np.asarray(snr_db, np.float64)
    ok = ok[np.isfinite(ok)]
    return {"min": float(ok.min()), "max": float(ok.max())} if ok.size else {"min": math.nan, "max": math.nan}


# -- noise ---------------------------------------------------------------------------------------
def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= f ** (exponent / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / (np.std(x) + 1e-12)


def make_noise(kind: str, n: int, rng: np.random.Generator, sample_rate: int = 8000,
               music: Sequence[np.ndarray] = ()) -> np.ndarray:
    """``n`` samples of unit-power noise of type ``kind`` (one of :data:`NOISE_TYPES`)."""
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _colored(rng, n, 1.0)
    elif kind == "brown":
        x = _colored(rng, n, 2.0)
    elif kind == "modulated":  # pink noise under a slow random on/off-ish envelope (non-stationary)
        t = np.arange(n) / sample_rate
        rate = rng.uniform(0.3, 4.0)
        env = 0.5 * (1 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        x = _colored(rng, n, 1.0) * (0.05 + env ** 2)
    elif kind == "clicks":  # decaying bursts at random times over a faint white floor
        x = 0.02 * rng.standard_normal(n)
        for _ in range(int(rng.integers(3, 30))):
            at, length = int(rng.integers(0, n)), int(rng.integers(20, 400))
            burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
            x[at:at + length] += rng.uniform(0.5, 3) * burst[: n - at]
    elif kind == "music":
        if not music:
            raise DataError("noise type 'music' needs music-on-hold recordings")
        track = music[int(rng.integers(len(music)))]
        if len(track) <= n:
            x = np.resize(track, n).astype(np.float64)
        else:
            start = int(rng.integers(0, len(track) - n))
            x = track[start:start + n].astype(np.float64)
        if np.std(x) < 1e-6:
            x = x + 1e-3 * rng.standard_normal(n)
    elif kind == "silence":  # a very faint noise floor (digital silence has no defined SNR)
        x = rng.standard_normal(n)
    else:
        raise DataError(f"unknown noise type {kind!r}; choose from {NOISE_TYPES}")
    x = np.asarray(x, dtype=np.float64)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


# -- clips ---------------------------------------------------------------------------------------
def _clip_speech(utterances: Sequence[tuple[str, np.ndarray]], cfg: VadDataConfig, rng: np.random.Generator,
                 minutes: Optional[float]) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The clean speech track of each clip and the names of its utterances, one clip at a time.

    Utterances are taken in the given order (cycling if ``minutes`` needs more; with ``minutes=None``
    until each was used once), each at a random level from ``cfg.speech_level_dbfs``, placed one
    after another with random gaps from ``cfg.gap_seconds`` after a random lead-in. Shared by the
    core (:func:`build_clips`) and extended corpora: the caller draws the clip's noise, gain, etc.
    from the same ``rng`` before asking for the next clip, so the draws keep their order."""
    sr = cfg.sample_rate
    L = int(round(cfg.clip_seconds * sr))
    n_clips = None if minutes is None else max(1, int(math.ceil(minutes * 60 / cfg.clip_seconds)))
    i, used_all, made = 0, False, 0
    while (n_clips is None and not used_all) or (n_clips is not None and made < n_clips):
        speech = np.zeros(L, dtype=np.float64)
        names: list[str] = []
        pos = int(rng.uniform(0.05, 1.0) * sr)
        while pos < L - sr // 4:
            name, u = utterances[i % len(utterances)]
            u = u * 10 ** ((rng.uniform(*cfg.speech_level_dbfs) - _rms_db(u)) / 20)
            if len(u) > L - pos:
                if names:
                    break  # keep it for the next clip
                u = u[: L - pos]
            speech[pos:pos + len(u)] += u
            names.append(name)
            i += 1
            if i >= len(utterances):
                used_all = True
                if n_clips is None:
                    break
            pos += len(u) + int(rng.uniform(*cfg.gap_seconds) * sr)
        yield speech, names
        made += 1


def _draw_snr(kind: str, cfg: VadDataConfig, rng: np.random.Generator) -> float:
    """The target SNR of a clip: from ``cfg.snr_db``, or 55-70 dB under near silence."""
    return float(rng.uniform(*cfg.snr_db)) if kind != "silence" else float(rng.uniform(55.0, 70.0))


def _limited_gain(mix: np.ndarray, cfg: VadDataConfig, rng: np.random.Generator) -> float:
    """A random gain from ``cfg.gain_db``, lowered where needed to keep the mixture's peak at 0.99.

    Speech and noise are scaled together, so the SNR stays the same."""
    gain = 10 ** (rng.uniform(*cfg.gain_db) / 20)
    peak = np.max(np.abs(mix)) * gain
    if peak > 0.99:
        gain *= 0.99 / peak
    return gain


def build_clips(utterances: Sequence[tuple[str, np.ndarray]], music: Sequence[np.ndarray], cfg: VadDataConfig,
                rng: np.random.Generator, minutes: Optional[float],
                progress: Optional[Callable[[int], None]] = None, keep_components: bool = False) -> VadSplit:
    """Concatenate utterances (in the given order, cycling if ``minutes`` needs more) into clips and mix.

    Without ``music`` the noise is drawn from the other types only."""
    kinds_allowed = NOISE_TYPES if music else tuple(k for k in NOISE_TYPES if k != "music")
    sr, hop = cfg.sample_rate, cfg.hop
    L = int(round(cfg.clip_seconds * sr))
    audio, labels, snrs, kinds, sources, targets, comps = [], [], [], [], [], [], []
    for speech, names in _clip_speech(utterances, cfg, rng, minutes):
        kind = kinds_allowed[int(rng.integers(len(kinds_allowed)))]
        noise = make_noise(kind, L, rng, sr, music)
        snr = _draw_snr(kind, cfg, rng)
        noise, has_speech = noise_for_clip(speech, noise, snr, cfg)
        mix = speech + noise
        gain = _limited_gain(mix, cfg, rng)
        audio.append((mix * gain).astype(np.float32))
        labels.append(frame_labels(speech, hop, cfg.label_threshold_db, cfg.onset_frames, cfg.hangover_frames))
        snrs.append(measure_snr(speech * gain, noise * gain, hop, cfg.label_threshold_db) if has_speech else math.nan)
        targets.append(snr)
        if keep_components:
            comps.append(((speech * gain).astype(np.float32), (noise * gain).astype(np.float32)))
        kinds.append(kind)
        sources.append(names)
        if progress is not None:
            progress(1)
    return VadSplit(np.stack(audio), np.stack(labels), np.asarray(snrs, np.float32), kinds, sources,
                    np.asarray(targets, np.float32),
                    np.stack([c[0] for c in comps]) if comps else None, np.stack([c[1] for c in comps]) if comps else None)


def _rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-12)


def _speech_files(cfg: VadDataConfig, languages: Sequence[str], rng: np.random.Generator) -> list[Path]:
    files: list[Path] = []
    for lang in languages:
        root = None
        if cfg.corpus_root is not None:
            root = Path(cfg.corpus_root) / "sounds" / ASTERISK_VOICES[lang][0]
        fs = asterisk_prompts(lang, root)
        if cfg.max_files_per_language is not None and len(fs) > cfg.max_files_per_language:
            pick = rng.choice(len(fs), cfg.max_files_per_language, replace=False)
            fs = [fs[j] for j in sorted(pick)]
        files.extend(fs)
    return files


def _prompt_name(path: Path) -> str:
    """``<voice>/<relative path>`` (the voice folder names the speaker)."""
    for voice, _ in ASTERISK_VOICES.values():
        if voice in path.parts:
            k = path.parts.index(voice)
            return "/".join(path.parts[k:])
    return path.name


def _fingerprint(cfg: VadDataConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def read_split_audio(split: str, speech: list, music_files: list, effects: list, rate: int):
    """Read a split's speech files (a named ``DataError`` when none is readable), its share of the
    music files and the given sound-effect files (unreadable music or effects are skipped);
    warnings about skipped files are re-raised once the reading is done. Returns
    ``((good, skipped), (music, music_skipped), (effects, effects_skipped))``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            speech_read = read_many(speech, rate, what=f"{split} speech files")
        except AudioError as e:
            raise DataError(f"{split} split: {e}") from None
        idx = [j for j in _MUSIC_SPLIT[split] if j < len(music_files)] or list(range(len(music_files)))
        try:
            music_read = read_many([music_files[j] for j in idx], rate, what=f"{split} music files")
        except AudioError:
            music_read = ([], [(music_files[j], "unreadable") for j in idx])
        try:
            effects_read = read_many(effects, rate, what=f"{split} sound effects") if effects else ([], [])
        except AudioError:
            effects_read = ([], [(f, "unreadable") for f in effects])
    for w in caught:
        warnings.warn(str(w.message), stacklevel=3)
    return speech_read, music_read, effects_read


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def splits_complete(cache: Path) -> bool:
    """True when ``cache`` holds every split file."""
    return all((cache / f"{s}.npz").is_file() for s in SPLITS)


def build_core_vad_data(cfg: VadDataConfig, cache_dir: str | Path, *, force: bool = False,
                        progress: bool = False) -> Path:
    """Build (or reuse) the three splits of the core corpus in ``cache_dir``; returns the manifest path
    (:func:`slimtrain.tasks.vad.build.build_vad_data` chooses between the core and the extended corpus).

    Unreadable speech or music files are skipped with one warning (counted in the manifest).
    """
    cfg.validate()
    cache = Path(cache_dir)
    manifest_path = cache / "manifest.json"
    old = _read_manifest(manifest_path)
    complete = splits_complete(cache)
    if not force and old.get("fingerprint") == _fingerprint(cfg) and complete:
        return manifest_path
    cache.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    music_files = music_on_hold(None if cfg.corpus_root is None else Path(cfg.corpus_root) / "moh")
    manifest: dict = {"version": MANIFEST_VERSION, "fingerprint": _fingerprint(cfg), "config": cfg.as_dict(),
                      "splits": {}}
    rng_root = np.random.SeedSequence(cfg.seed)
    for split, seq in zip(SPLITS, rng_root.spawn(3)):
        rng = np.random.default_rng(seq)
        languages = {"train": cfg.train_languages, "val": cfg.val_languages, "test": cfg.test_languages}[split]
        files = _speech_files(cfg, languages, rng)
        (good, skipped), (mgood, mskipped), _ = read_split_audio(split, files, music_files, [], cfg.sample_rate)
        utts = [(_prompt_name(p), x) for p, x in good]
        order = rng.permutation(len(utts))
        utts = [utts[j] for j in order]
        minutes = {"train": cfg.train_minutes, "val": cfg.val_minutes, "test": cfg.test_minutes}[split]
        total = None if minutes is None else max(1, int(math.ceil(minutes * 60 / cfg.clip_seconds)))
        music = [x for _, x in mgood]
        with tqdm(total=total, desc=f"vad data {split}", unit="clip", disable=not progress, leave=False) as bar:
            data = build_clips(utts, music, cfg, rng, minutes, bar.update)
        np.savez(cache / f"{split}.npz", audio=data.audio, labels=data.labels, snr_db=data.snr_db,
                 noise=np.asarray(data.noise))
        manifest["splits"][split] = {
            "languages": list(languages),
            "speakers": [ASTERISK_VOICES[lang][0] for lang in languages],
            "clips": int(len(data.audio)),
            "seconds": float(data.audio.size / cfg.sample_rate),
            "speech_fraction": float(data.labels.mean()),
            "speech_files": len(good),
            "skipped_files": [f"{p}: {why}" for p, why in list(skipped) + list(mskipped)],
            "music_files": [str(p.name) for p, _ in mgood],
            "noise_counts": {k: data.noise.count(k) for k in NOISE_TYPES},
            "snr_db": snr_range(data.snr_db),
            "clip_sources": data.sources,
        }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)
    return manifest_path


def load_vad_data(cache_dir: str | Path) -> tuple[dict[str, VadSplit], dict]:
    """The splits and manifest written by :func:`~slimtrain.tasks.vad.build.build_vad_data` (clear error if missing/corrupt)."""
    cache = Path(cache_dir)
    mpath = cache / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"no VAD data in {cache} (manifest.json missing); build it with 'slimtrain data vad --out {cache}'")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"VAD manifest {mpath} cannot be read: {e}") from None
    out = {}
    for split in SPLITS:
        f = cache / f"{split}.npz"
        try:
            with np.load(f) as z:
                out[split] = VadSplit(z["audio"], z["labels"], z["snr_db"], [str(s) for s in z["noise"]],
                                      manifest["splits"][split]["clip_sources"])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"VAD data file {f} is missing or damaged ({type(e).__name__}: {e}); "
                            f"rebuild with 'slimtrain data vad --out {cache} --force'") from None
    return out, manifest
