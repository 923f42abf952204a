"""The *extended* VAD corpus (``slimtrain data vad --corpus extended``, version :data:`EXTENDED_VERSION`).

Same splits, clip length, SNR definition and labels as the core corpus (:mod:`.data`), with more
varied sources:

* **Speech**: the core Asterisk voices (train en + es, validation fr, test it) plus the GSM prompts of
  ``asterisk-prompt-es-co`` and ``asterisk-prompt-fr-armelle`` in *training*; plus
  ``tts_utterances`` synthetic utterances in training only (espeak-ng in many languages and voice
  variants, the flite voices, the Festival voices of ``apt-packages.txt``), reading the transcripts of
  the training languages. No Italian voice, text or speaker reaches training or validation: the test
  speaker *and language* stay held out.
* **Noise** (one type per clip): the core types (music on hold, white, pink, brown, modulated,
  clicks, near silence) plus ``coloured`` (``1/f^beta``, beta in [-1, 2.5]), ``modulated-coloured``
  (coloured noise under a random 0.3-8 Hz envelope), ``babble`` (3-6 other utterances of the same
  split summed) and ``effects`` (non-speech desktop sound effects from Debian sound themes, split
  by file between train/val/test).
* **Training-noise recipe** ``v2`` (``noise_recipe='v2'``, ``--noise-recipe v2``; corpus version
  ``extended-v2``): the training split also gets ``synth-music`` (generated music,
  :func:`slimtrain.tasks.augment.synth_music`), and its clips with the noise types the per-noise-type x SNR
  table showed hardest against Silero VAD (:data:`LOW_SNR_TYPES`: music, generated music, white, pink and
  sound effects) draw their SNR from :data:`LOW_SNR_DB` instead of the full range. Validation and test stay
  ``v1`` (byte-identical to a ``v1`` build), so numbers on them compare across recipes.
* **Augmentation** per clip (:func:`slimtrain.tasks.augment.draw_augmentation`): reverberation of
  the speech with a synthetic room impulse response (RT60 0.15-1 s) before mixing; band-limiting,
  a telephone codec (mu-law, A-law or GSM 06.10) and clipping on the mixture; then the random gain.
  Labels come from the dry clean speech (as in core); the SNR is set on the (reverberant) speech
  before the mixture is coded.

The manifest records the corpus name and version, every source (Debian package and version, voice,
language, number of files) and each clip's noise and augmentation parameters; the fingerprint is the
SHA-256 of the settings, the corpus recipe and the source inventory, so it changes when a source does.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .. import augment as G
from ..audio import (ASTERISK_VOICES, EXTRA_ASTERISK_SPEAKERS, AudioError, asterisk_transcripts, extra_prompts,
                     package_version, sound_effects)
from ..spoof.attacks import ESPEAK_VARIANTS_EXTENDED
from .data import (MANIFEST_VERSION, NOISE_TYPES, SPLITS, DataError, VadDataConfig, VadSplit,
                   _clip_speech, _draw_snr, _limited_gain, _prompt_name, _speech_files, frame_labels, make_noise,
                   measure_snr, noise_for_clip, read_split_audio, snr_range)

__all__ = ["EXTENDED_VERSION", "EXTENDED_NOISE_TYPES", "NOISE_RECIPES", "LOW_SNR_TYPES", "LOW_SNR_DB", "TTS_VOICES",
           "plan_tts", "extended_fingerprint",
           "build_extended_vad_data", "source_inventory"]

EXTENDED_VERSION = "extended-v1"
EXTENDED_NOISE_TYPES = NOISE_TYPES + ("coloured", "modulated-coloured", "babble", "effects")
#: noise types whose SNR the ``v2`` training recipe draws from :data:`LOW_SNR_DB`: where Silero VAD had the
#: lower EER below 5 dB on the Italian test splits (music, white, pink) or the held-out human voices (music,
#: effects) in the shipped model's per-noise-type table (docs/vad.md, "Noise where it fails")
LOW_SNR_TYPES = ("music", "synth-music", "white", "pink", "effects")
LOW_SNR_DB = (-5.0, 10.0)
#: the training split's noise types and corpus version per ``VadDataConfig.noise_recipe``
NOISE_RECIPES = {
    "v1": {"version": EXTENDED_VERSION, "noise_types": EXTENDED_NOISE_TYPES},
    "v2": {"version": "extended-v2", "noise_types": EXTENDED_NOISE_TYPES + ("synth-music",),
           "low_snr_types": LOW_SNR_TYPES, "low_snr_db": LOW_SNR_DB},
}

_ESPEAK_BY_TEXT = {  # espeak-ng voices per transcript language; Latin-script voices also read English
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
           "de", "nl", "sv", "da", "nb", "pl", "cs", "sk", "hu", "ro", "hr", "fi", "et", "pt", "pt-br", "af", "id", "tr"),
    "es": ("es", "es-419", "ca", "an", "eu"),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
}
#: every synthetic voice of the extended VAD training speech: (engine, voice, transcript language)
TTS_VOICES: tuple[tuple[str, str, str], ...] = (
    *(("espeak-ng", v, lg) for lg, vs in _ESPEAK_BY_TEXT.items() for v in dict.fromkeys(vs)),
    *(("flite", v, "en") for v in ("kal", "kal16", "awb", "rms", "slt")),
    *(("festival", v, "en") for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")),
    *(("festival", v, "es") for v in ("upc_ca_ona_hts", "czech_dita", "czech_krb", "czech_machac", "czech_ph",
                                        "hy_fi_mv_diphone", "suo_fi_lj_diphone")),
)
_ENGINE_PACKAGES = {"espeak-ng": ("espeak-ng",), "flite": ("flite",)}
_FESTIVAL_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k", "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "upc_ca_ona_hts": "festvox-ca-ona-hts", "czech_dita": "festvox-czech-dita", "czech_krb": "festvox-czech-krb",
    "czech_machac": "festvox-czech-machac", "czech_ph": "festvox-czech-ph", "hy_fi_mv_diphone": "festvox-suopuhe-mv",
    "suo_fi_lj_diphone": "festvox-suopuhe-lj",
}
_EFFECT_SPLIT = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def _recipe(noise_recipe: str = "v1") -> dict:
    """The corpus recipe (in the fingerprint); ``v1`` is exactly the recipe of every corpus built before ``v2``."""
    out = {"version": EXTENDED_VERSION, "noise_types": list(EXTENDED_NOISE_TYPES),
           "tts_voices": [list(v) for v in TTS_VOICES], "espeak_variants": list(ESPEAK_VARIANTS_EXTENDED),
           "effect_split": {k: list(v) for k, v in _EFFECT_SPLIT.items()}}
    if noise_recipe != "v1":
        r = NOISE_RECIPES[noise_recipe]
        out["version"] = r["version"]
        out["training_noise"] = {"noise_types": list(r["noise_types"]), "low_snr_types": list(r["low_snr_types"]),
                                 "low_snr_db": list(r["low_snr_db"]), "splits": ["train"]}
    return out


def _h01(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16 ** 8


# -- sources ------------------------------------------------------------------------------------------
def source_inventory(cfg: VadDataConfig, effects: Optional[dict[str, list[Path]]] = None) -> list[dict]:
    """Every source of the corpus: Debian package, its version, what it contributes, and how many files."""
    inv: list[dict] = []
    for lang in (*cfg.train_languages, *cfg.val_languages, *cfg.test_languages):
        voice, package = ASTERISK_VOICES[lang]
        inv.append({"kind": "speech", "package": package, "version": package_version(package), "speaker": voice,
                    "language": lang})
    for sp in cfg.extra_train_speakers:
        package, lang, _ = EXTRA_ASTERISK_SPEAKERS[sp]
        inv.append({"kind": "speech", "package": package, "version": package_version(package), "speaker": sp,
                    "language": lang, "files": len(extra_prompts(sp))})
    if cfg.human_voices:
        from ..human_voices import source, source_files

        for sid in cfg.human_voices:
            src = source(sid)
            inv.append({"kind": "human", "package": src.package, "version": package_version(src.package),
                        "source": sid, "language": " ".join(src.languages), "speakers": src.speakers,
                        "files": len(source_files(src))})
    inv.append({"kind": "music", "package": "asterisk-moh-opsound-wav",
                "version": package_version("asterisk-moh-opsound-wav")})
    if cfg.tts_utterances:
        for engine, voice, lang in TTS_VOICES:
            package = _FESTIVAL_PACKAGES[voice] if engine == "festival" else _ENGINE_PACKAGES[engine][0]
            inv.append({"kind": "tts", "package": package, "version": package_version(package), "engine": engine,
                        "voice": voice, "text_language": lang})
    for package, files in (effects or {}).items():
        inv.append({"kind": "effects", "package": package, "version": package_version(package), "files": len(files)})
    return inv


def extended_fingerprint(cfg: VadDataConfig, inventory: Sequence[dict]) -> str:
    """SHA-256 (16 hex) of the settings, the corpus recipe and the source inventory."""
    blob = json.dumps({"config": cfg.as_dict(), "recipe": _recipe(cfg.noise_recipe), "sources": list(inventory)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- synthetic speech -----------------------------------------------------------------------------
def plan_tts(cfg: VadDataConfig, rng: np.random.Generator, texts: dict[str, list[str]]) -> list[dict]:
    """``cfg.tts_utterances`` (voice, text) draws, spread evenly over the engines and then the voices."""
    by_engine: dict[str, list[tuple[str, str, str]]] = {}
    for v in TTS_VOICES:
        if texts.get(v[2]):
            by_engine.setdefault(v[0], []).append(v)
    engines = sorted(by_engine)
    plan = []
    for i in range(cfg.tts_utterances):
        engine = engines[i % len(engines)]
        _, voice, lang = by_engine[engine][int(rng.integers(len(by_engine[engine])))]
        text = texts[lang][int(rng.integers(len(texts[lang])))]
        item = {"engine": engine, "voice": voice, "language": lang, "text": text}
        if engine == "espeak-ng":
            var = str(rng.choice(ESPEAK_VARIANTS_EXTENDED))
            item.update(voice=voice + (f"+{var}" if var else ""), rate=int(rng.integers(120, 220)),
                        pitch=int(rng.integers(20, 81)))
        plan.append(item)
    return plan


def _synthesise(plan: list[dict], workers: int = 2, sample_rate: int = 8000) -> list[Optional[np.ndarray]]:
    from ..spoof import attacks as A

    out: list[Optional[np.ndarray]] = [None] * len(plan)

    def one(i: int) -> None:
        it = plan[i]
        try:
            if it["engine"] == "espeak-ng":
                out[i] = A.espeak(it["text"], it["voice"], it["rate"], it["pitch"], sample_rate=sample_rate)
            else:
                out[i] = A.flite(it["text"], it["voice"], sample_rate=sample_rate)
        except A.AttackError as e:
            warnings.warn(f"TTS utterance {i} skipped: {e}", stacklevel=2)

    def fest(voice: str, idx: list[int]) -> None:
        try:
            ys = A.festival_batch([plan[i]["text"] for i in idx], voice, sample_rate=sample_rate)
        except A.AttackError as e:
            warnings.warn(f"{len(idx)} Festival ({voice}) utterances skipped: {e}", stacklevel=2)
            return
        for i, y in zip(idx, ys):
            out[i] = y

    groups: dict[str, list[int]] = {}
    simple = []
    for i, it in enumerate(plan):
        (groups.setdefault(it["voice"], []) if it["engine"] == "festival" else simple).append(i)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        futs = [ex.submit(fest, v, idx[c:c + 40]) for v, idx in sorted(groups.items()) for c in range(0, len(idx), 40)]
        futs += [ex.submit(one, i) for i in simple]
        for f in futs:
            f.result()
    return out


def _training_texts(cfg: VadDataConfig) -> dict[str, list[str]]:
    from ..spoof.attacks import text_for_tts

    texts: dict[str, list[str]] = {}
    for lang in sorted({v[2] for v in TTS_VOICES}):
        if lang in cfg.test_languages:
            continue
        try:
            tx = asterisk_transcripts(lang)
        except AudioError:
            continue
        texts[lang] = sorted({text_for_tts(t) for t in tx.values() if len(t.split()) >= 2})
    return texts


# -- noise ----------------------------------------------------------------------------------------
def _extended_noise(kind: str, n: int, rng: np.random.Generator, sr: int, music: Sequence[np.ndarray],
                    babble_pool: Sequence[np.ndarray], effects: Sequence[np.ndarray]) -> tuple[np.ndarray, dict]:
    if kind in NOISE_TYPES:
        return make_noise(kind, n, rng, sr, music), {}
    if kind == "coloured":
        beta = round(float(rng.uniform(-1.0, 2.5)), 3)
        return G.coloured_noise(n, beta, rng), {"beta": beta}
    if kind == "modulated-coloured":
        beta, rate = round(float(rng.uniform(-1.0, 2.5)), 3), round(float(rng.uniform(0.3, 8.0)), 3)
        env = 0.5 * (1 + np.sin(2 * np.pi * rate * np.arange(n) / sr + rng.uniform(0, 2 * np.pi)))
        x = G.coloured_noise(n, beta, rng) * (0.05 + env ** 2)
        return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32), {"beta": beta, "rate_hz": rate}
    if kind == "babble":
        x, used = G.babble(n, babble_pool, rng)
        return x, {"talkers": len(used)}
    if kind == "synth-music":
        return G.synth_music(n, rng, sr)
    if kind == "effects":
        x = 0.01 * rng.standard_normal(n)
        k = int(rng.integers(1, 5))
        for _ in range(k):
            e = np.asarray(effects[int(rng.integers(len(effects)))], np.float64)[:n]
            at = int(rng.integers(0, max(1, n - len(e) // 2)))
            seg = e[: n - at] / (np.sqrt(np.mean(e ** 2)) + 1e-12)
            x[at:at + len(seg)] += seg * 10 ** (rng.uniform(-6, 6) / 20)
        return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32), {"effects": k}
    raise DataError(f"unknown noise type {kind!r}; choose from {NOISE_RECIPES['v2']['noise_types']}")


# -- clips ----------------------------------------------------------------------------------------
def build_extended_clips(utterances: Sequence[tuple[str, np.ndarray]], music: Sequence[np.ndarray],
                         effects: Sequence[np.ndarray], cfg: VadDataConfig, rng: np.random.Generator,
                         minutes: Optional[float], progress: Optional[Callable[[int], None]] = None,
                         noise_recipe: str = "v1") -> tuple[VadSplit, list[dict]]:
    """Like :func:`.data.build_clips` (the same speech tracks, :func:`.data._clip_speech`) with the extended
    noise types and augmentation; also returns each clip's noise parameters and augmentation chain (for
    the manifest). ``noise_recipe`` (:data:`NOISE_RECIPES`) chooses the noise types and where their SNR is
    drawn from."""
    if noise_recipe not in NOISE_RECIPES:
        raise DataError(f"unknown noise recipe {noise_recipe!r} (choose from {', '.join(NOISE_RECIPES)})")
    recipe = NOISE_RECIPES[noise_recipe]
    low = recipe.get("low_snr_types", ())
    kinds = tuple(k for k in recipe["noise_types"] if (k != "music" or music) and (k != "effects" or effects))
    babble_pool = [u for name, u in utterances if not name.startswith("tts/")] or [u for _, u in utterances]
    sr, hop = cfg.sample_rate, cfg.hop
    L = int(round(cfg.clip_seconds * sr))
    pr, pb, pc, pk = cfg.augment_probabilities
    audio, labels, snrs, noise_kinds, sources, targets, details = [], [], [], [], [], [], []
    for speech, names in _clip_speech(utterances, cfg, rng, minutes):
        chain = G.draw_augmentation(rng, sr, p_reverb=pr, p_band=pb, p_codec=pc, p_clip=pk)
        label = frame_labels(speech, hop, cfg.label_threshold_db, cfg.onset_frames, cfg.hangover_frames)
        wet = G.apply_augmentation(speech, chain["speech"], sr).astype(np.float64) if chain["speech"] else speech
        kind = kinds[int(rng.integers(len(kinds)))]
        noise, params = _extended_noise(kind, L, rng, sr, music, babble_pool, effects)
        snr = float(rng.uniform(*recipe["low_snr_db"])) if kind in low else _draw_snr(kind, cfg, rng)
        noise, has_speech = noise_for_clip(wet, noise, snr, cfg)
        noise = noise.astype(np.float64)
        measured = measure_snr(wet, noise, hop, cfg.label_threshold_db) if has_speech else math.nan
        mix = wet + noise
        if chain["mixture"]:
            mix = G.apply_augmentation(mix, chain["mixture"], sr).astype(np.float64)
        gain = _limited_gain(mix, cfg, rng)
        audio.append((mix * gain).astype(np.float32))
        labels.append(label)
        snrs.append(measured)
        targets.append(snr)
        noise_kinds.append(kind)
        sources.append(names)
        details.append({"noise": kind, **({"noise_params": params} if params else {}),
                        "augment": chain["speech"] + chain["mixture"], "gain_db": round(20 * math.log10(gain), 2)})
        if progress is not None:
            progress(1)
    split = VadSplit(np.stack(audio), np.stack(labels), np.asarray(snrs, np.float32), noise_kinds, sources,
                     np.asarray(targets, np.float32))
    return split, details


def _human_training_files(cfg: VadDataConfig) -> dict[str, str]:
    """Training files of ``cfg.human_voices`` (at most ``human_files_per_source`` each, drawn from their own
    seed stream) -> utterance name ``human/<source id>/<file path in its folder>``."""
    from ..human_voices import HumanVoiceError, package_dir, source, source_files

    out: dict[str, str] = {}
    for sid, seq in zip(cfg.human_voices, np.random.SeedSequence([cfg.seed, 8]).spawn(len(cfg.human_voices))):
        src = source(sid)
        try:
            files = source_files(src)
        except HumanVoiceError as e:
            raise DataError(f"extended VAD corpus: {e}") from None
        if len(files) > cfg.human_files_per_source:
            pick = np.random.default_rng(seq).choice(len(files), cfg.human_files_per_source, replace=False)
            files = [files[j] for j in sorted(pick)]
        base = package_dir(src)
        for f in files:
            out[str(f)] = f"human/{sid}/{f.relative_to(base).as_posix()}"
    return out


def _minutes_by_kind(speech_seconds: dict[str, float]) -> dict[str, float]:
    """Speech minutes of the split's clips by kind: ``human`` (every recorded voice) and ``tts``, and the TTS share."""
    tts = sum(v for k, v in speech_seconds.items() if k.startswith("tts/"))
    human = sum(speech_seconds.values()) - tts
    total = human + tts
    return {"human": round(human / 60, 3), "tts": round(tts / 60, 3),
            "tts_share": round(tts / total, 4) if total else 0.0}


def _human_manifest(cfg: VadDataConfig, names: dict[str, str], good: Sequence[tuple[Path, np.ndarray]],
                    speech_seconds: dict[str, float]) -> dict:
    """The human-voice sources of the training split: registry fields, files read, minutes in the clips, totals."""
    from ..human_voices import source, source_files

    read = {}
    for p, x in good:
        if str(p) in names:
            sid = names[str(p)].split("/")[1]
            n, sec = read.get(sid, (0, 0.0))
            read[sid] = (n + 1, sec + len(x) / cfg.sample_rate)
    rows = []
    for sid in cfg.human_voices:
        src = source(sid)
        n, sec = read.get(sid, (0, 0.0))
        rows.append({"id": sid, "package": src.package, "version": package_version(src.package), "role": src.role,
                     "languages": list(src.languages), "speakers": src.speakers, "speaker_note": src.speaker_note,
                     "license": src.license, "files_available": len(source_files(src)), "files_read": n,
                     "minutes_read": round(sec / 60, 3),
                     "minutes_in_clips": round(speech_seconds.get(f"human/{sid}", 0.0) / 60, 3)})
    langs = sorted({lg for r in rows for lg in r["languages"]})
    builtin = [ASTERISK_VOICES[lg][0] for lg in cfg.train_languages] + list(cfg.extra_train_speakers)
    all_langs = sorted(set(langs) | set(cfg.train_languages)
                       | {EXTRA_ASTERISK_SPEAKERS[sp][1] for sp in cfg.extra_train_speakers})
    return {"sources": rows,
            "all_training_voices": {"speakers": len(builtin) + sum(r["speakers"] for r in rows),
                                    "builtin": builtin, "languages": all_langs, "n_languages": len(all_langs)},
            "totals": {"sources": len(rows), "speakers": sum(r["speakers"] for r in rows),
                                        "languages": langs, "n_languages": len(langs),
                                        "files_read": sum(r["files_read"] for r in rows),
                                        "minutes_read": round(sum(r["minutes_read"] for r in rows), 3),
                                        "minutes_in_clips": round(sum(r["minutes_in_clips"] for r in rows), 3)}}


def _effects_for(split: str, effects: dict[str, list[Path]]) -> list[Path]:
    lo, hi = _EFFECT_SPLIT[split]
    return [f for fs in effects.values() for f in fs if lo <= _h01(f"{f.parent.name}/{f.name}") < hi]


def build_extended_vad_data(cfg: VadDataConfig, cache_dir: str | Path, *, force: bool = False,
                            progress: bool = False, workers: int = 2) -> Path:
    """Build (or reuse) the extended corpus in ``cache_dir``; returns the manifest path."""
    from tqdm.auto import tqdm

    from ..audio import music_on_hold

    cfg.validate()
    cache = Path(cache_dir)
    manifest_path = cache / "manifest.json"
    try:
        effects = sound_effects()
    except AudioError as e:
        raise DataError(f"extended VAD corpus: {e}") from None
    try:
        inventory = source_inventory(cfg, effects)
    except AudioError as e:
        raise DataError(f"extended VAD corpus: {e}") from None
    fp = extended_fingerprint(cfg, inventory)
    if not force and manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") == fp and all((cache / f"{s}.npz").is_file() for s in SPLITS):
            return manifest_path
    cache.mkdir(parents=True, exist_ok=True)
    music_files = music_on_hold(None if cfg.corpus_root is None else Path(cfg.corpus_root) / "moh")
    recipe = _recipe(cfg.noise_recipe)
    manifest: dict = {"version": MANIFEST_VERSION, "corpus": "extended", "corpus_version": recipe["version"],
                      "fingerprint": fp, "config": cfg.as_dict(), "recipe": recipe, "sources": inventory,
                      "splits": {}}
    seqs = np.random.SeedSequence([cfg.seed, 7]).spawn(4)
    # synthetic speech for training (drawn first, from its own stream)
    tts_rng = np.random.default_rng(seqs[3])
    plan = plan_tts(cfg, tts_rng, _training_texts(cfg)) if cfg.tts_utterances else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tts_audio = _synthesise(plan, workers, cfg.sample_rate)
    tts_utts = [(f"tts/{p['engine']}/{p['voice']}/{k}", y) for k, (p, y) in enumerate(zip(plan, tts_audio))
                if y is not None and len(y) > 0 and np.any(y)]
    tts_skipped = [str(w.message) for w in caught]
    for split, seq in zip(SPLITS, seqs[:3]):
        rng = np.random.default_rng(seq)
        languages = {"train": cfg.train_languages, "val": cfg.val_languages, "test": cfg.test_languages}[split]
        files = _speech_files(cfg, languages, rng)
        extra = cfg.extra_train_speakers if split == "train" else ()
        extra_files: list[Path] = []
        for sp in extra:
            fs = extra_prompts(sp)
            if cfg.max_files_per_language is not None and len(fs) > cfg.max_files_per_language:
                pick = rng.choice(len(fs), cfg.max_files_per_language, replace=False)
                fs = [fs[j] for j in sorted(pick)]
            extra_files.extend(fs)
        human_names = _human_training_files(cfg) if split == "train" else {}
        (good, skipped), (mgood, mskipped), (egood, eskipped) = read_split_audio(
            split, files + extra_files + [Path(f) for f in human_names], music_files, _effects_for(split, effects),
            cfg.sample_rate)
        speaker_of = {str(f): sp for sp in extra for f in extra_prompts(sp)}
        utts = [(human_names[str(p)] if str(p) in human_names else
                 f"{speaker_of[str(p)]}/" + "/".join(p.parts[p.parts.index("sounds") + 2:])
                 if str(p) in speaker_of else _prompt_name(p), x) for p, x in good]
        if split == "train":
            utts += tts_utts
        order = rng.permutation(len(utts))
        utts = [utts[j] for j in order]
        minutes = {"train": cfg.train_minutes, "val": cfg.val_minutes, "test": cfg.test_minutes}[split]
        total = None if minutes is None else max(1, int(math.ceil(minutes * 60 / cfg.clip_seconds)))
        with tqdm(total=total, desc=f"vad data {split} (extended)", unit="clip", disable=not progress,
                  leave=False) as bar:
            noise_recipe = cfg.noise_recipe if split == "train" else "v1"
            data, details = build_extended_clips(utts, [x for _, x in mgood], [x for _, x in egood], cfg, rng,
                                                 minutes, bar.update, noise_recipe)
        np.savez(cache / f"{split}.npz", audio=data.audio, labels=data.labels, snr_db=data.snr_db,
                 noise=np.asarray(data.noise))
        speech_seconds: dict[str, float] = {}
        lengths = {name: len(x) / cfg.sample_rate for name, x in utts}
        for names in data.sources:
            for name in names:
                spk = ("/".join(name.split("/")[:3]) if name.startswith("tts/") else
                       "/".join(name.split("/")[:2]) if name.startswith("human/") else name.split("/")[0])
                speech_seconds[spk] = speech_seconds.get(spk, 0.0) + lengths.get(name, 0.0)
        manifest["splits"][split] = {
            "languages": list(languages),
            "speakers": [ASTERISK_VOICES[lang][0] for lang in languages] + list(extra),
            "tts_voices": sorted({f"{p['engine']}/{p['voice']}" for p in plan}) if split == "train" else [],
            "clips": int(len(data.audio)),
            "seconds": float(data.audio.size / cfg.sample_rate),
            "speech_fraction": float(data.labels.mean()),
            "speech_files": len(good),
            "speech_minutes_by_source": {k: round(v / 60, 3) for k, v in sorted(speech_seconds.items())},
            "skipped_files": [f"{p}: {why}" for p, why in list(skipped) + list(mskipped) + list(eskipped)]
            + (tts_skipped if split == "train" else []),
            "music_files": [str(p.name) for p, _ in mgood],
            "effect_files": [f"{p.parent.name}/{p.name}" for p, _ in egood],
            "noise_counts": {k: data.noise.count(k) for k in NOISE_RECIPES[noise_recipe]["noise_types"]},
            "augment_counts": {op: sum(any(o["op"] == op for o in d["augment"]) for d in details)
                               for op in ("reverb", "band", "codec", "clip")},
            "snr_db": snr_range(data.snr_db),
            "clip_sources": data.sources,
            "clip_details": details,
        }
        if split == "train":
            manifest["splits"][split]["speech_minutes_by_kind"] = _minutes_by_kind(speech_seconds)
            if cfg.human_voices:
                manifest["human_voices"] = _human_manifest(cfg, human_names, good, speech_seconds)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)
    return manifest_path
