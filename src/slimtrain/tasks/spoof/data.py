"""The offline anti-spoofing data set: protocol, cue removal, cache with a manifest.

Bona fide speech is the four Asterisk prompt voices (en_US Allison, es_MX Allison, fr_CA June,
it_IT Carlo; 8 kHz studio recordings). Spoofed speech comes from the seven attack families of
:mod:`slimtrain.tasks.spoof.attacks`, fed with the *same* prompt texts (A1-A4) or the same
recordings (A5-A7), so content does not tell the classes apart.

Protocol (:class:`SpoofDataConfig`):

* the prompts of en/es/it are split by name into a training part (80 %) and an evaluation part;
  fr_CA June is a **held-out bona fide speaker** (evaluation only);
* **train**: bona fide clips of the en/es/it training prompts; spoofs of the *known* attacks
  (default A1 espeak-ng, A2 flite, A3 Festival diphone, A5 WORLD, A8 hard splice) on training
  texts/recordings;
* **eval**: bona fide clips of the held-out speaker and of the en/es/it evaluation prompts;
  spoofs of every attack on evaluation texts/recordings, including the **unseen** attacks
  (default A4 Festival HTS, A6 Griffin-Lim, A7 LPC vocoder, A9 smoothed splice) that training never
  sees. Splices (A8, A9) draw their units from recordings of one speaker in the same split, so the
  evaluation splices of the held-out speaker are made of a voice training never heard.

Cue removal (:func:`condition`, identical for every clip of both classes): band-pass
100-3600 Hz, trim leading/trailing silence (frames 40 dB below the loudest), random level
(-30..-18 dBFS RMS), a fixed clip length (random crop of longer utterances, random placement
of shorter ones in silence), white noise 30-50 dB below the speech level, 16-bit quantisation.
:func:`shortcut_eer` checks that duration, level, leading silence and speech density alone do not
separate the classes (pooled, or bona fide against one family).

Everything is drawn from ``seed`` (per item, so parallel generation gives the same bytes);
``build_dataset`` writes ``train.npz``, ``eval.npz``, ``items.csv`` and ``manifest.json``
(config, counts, SHA-256 of each file) into the cache folder and reuses them when the config
matches.

Recorded human voices (``human_voices`` / ``human_heldout``, source ids of
:mod:`slimtrain.tasks.human_voices`): the training sources add ``n_bona_train`` more bona fide
training clips and are recordings for the copy and splice attacks (``n_spoof_train_per_attack // 2``
more clips per such attack); the held-out sources add ``n_bona_eval_heldout`` evaluation-only bona
fide clips of speakers (and mostly languages) no split trains on, and ``n_spoof_eval_per_attack // 2``
copy/splice clips per such attack made of their recordings. Draws pick a speaker first (in proportion
to each source's speaker count), then one of its files, so a source with thousands of files does not
drown one with thirty. Every human item has its own random stream: the other clips stay byte-identical.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..audio import ASTERISK_VOICES, AudioError, asterisk_prompts, asterisk_transcripts, read_audio
from ...apps.spoof.preprocess import SAMPLE_RATE, _bandpass, trim_silence  # (cue removal, shared with scoring)
from . import attacks as A
from . import unit_selection as U

__all__ = [
    "SpoofDataConfig", "SpoofSplit", "build_dataset", "load_split", "condition", "cue_features",
    "shortcut_eer", "plan_items", "DataError", "SR", "data_fingerprint", "spoof_fingerprint", "source_inventory",
]

SR = SAMPLE_RATE
MANIFEST = "manifest.json"
FORMAT = "slimtrain-spoof-data"
#: values of :attr:`SpoofDataConfig.splice_like_source`
SPLICE_LIKE_SOURCE = ("none", "train", "all")
VERSION = 1
EXTENDED_VERSION = "extended-v1"
#: bona fide speakers added by the extended corpus (known speakers: split by prompt name like en/es/it)
EXTENDED_BONA_SPEAKERS = ("es-co", "fr-armelle")


#: the attack families of the first corpora, in their plan order; later ones are planned after every one of these
_FIRST_FAMILIES = ("bona", "A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9")


class DataError(ValueError):
    """Bad data settings or an unusable cache folder (the message names it)."""


@dataclass
class SpoofDataConfig:
    """Sizes and protocol of the data set; everything else follows from ``seed``."""

    seed: int = 0
    clip_seconds: float = 1.0
    heldout_language: str = "fr"
    train_attacks: tuple[str, ...] = ("A1", "A2", "A3", "A5", "A8")
    eval_attacks: tuple[str, ...] = ("A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9")
    n_bona_train: int = 800
    n_spoof_train_per_attack: int = 200
    n_bona_eval_heldout: int = 200
    n_bona_eval_known: int = 100
    n_spoof_eval_per_attack: int = 100
    eval_fraction: float = 0.2  # of each en/es/it voice's prompts, by name
    #: ``"core"`` (documented), ``"extended"`` (more bona fide speakers, voices and variants; see
    #: :data:`EXTENDED_VERSION`) or ``None``: whatever corpus the folder holds (core if none)
    corpus: Optional[str] = None
    #: recorded human voices added as known bona fide speakers (source ids of role ``train``; see module doc)
    human_voices: tuple[str, ...] = ()
    #: recorded human voices added as evaluation-only bona fide speakers (source ids of role ``held-out``)
    human_heldout: tuple[str, ...] = ()
    #: at most this many files per human source (``None``: all; for quick builds and tests)
    human_files_per_source: Optional[int] = None
    #: this fraction of the *training* clips, bona fide and spoofed alike, goes through a codec drawn from
    #: :data:`slimtrain.tasks.augment.ROUNDTRIP_CODECS` after the cue removal, so that a recording's codec
    #: (the human voices come as Ogg Vorbis, the prompts as PCM or GSM) cannot tell the classes apart
    train_codec_fraction: float = 0.0
    #: draw the training split this many times (an integer >= 1): draw ``k`` repeats the plan of the training
    #: clips with random streams of its own (same prompt split, speakers, attack families and counts), so
    #: the training split grows ``k``-fold in new crops, texts, voices and splices while the evaluation split,
    #: and the first draw, stay byte-identical
    train_scale: int = 1
    #: splices (A8, A9) shaped like their source recording: as long as it (after trimming its silence) and with
    #: the pause after each unit in its source (up to :data:`~slimtrain.tasks.spoof.attacks.SPLICE_MAX_PAUSE_MS`),
    #: so that neither the length nor the speech density of a clip tells a splice from a recording (the plain
    #: splices are 1.6 s of speech without a pause): ``"none"`` (every documented corpus), ``"train"`` (training
    #: splices only: the evaluation split stays byte-identical) or ``"all"``
    splice_like_source: str = "none"

    @classmethod
    def quick(cls, **overrides) -> "SpoofDataConfig":
        """A few dozen clips: tests and ``--quick`` (generated in seconds)."""
        base = dict(n_bona_train=48, n_spoof_train_per_attack=12, n_bona_eval_heldout=16, n_bona_eval_known=8,
                    n_spoof_eval_per_attack=12)
        base.update(overrides)
        return cls(**base)

    @property
    def unseen_attacks(self) -> tuple[str, ...]:
        return tuple(a for a in self.eval_attacks if a not in self.train_attacks)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * SR))

    @property
    def effective_corpus(self) -> str:
        return self.corpus or "core"

    def validate(self) -> "SpoofDataConfig":
        """Raise :class:`DataError` for an impossible setting."""
        if self.corpus not in (None, "core", "extended"):
            raise DataError(f"unknown corpus {self.corpus!r}; choose from core, extended")
        for a in (*self.train_attacks, *self.eval_attacks):
            if a not in A.ATTACKS:
                raise DataError(f"unknown attack {a!r}; choose from {', '.join(A.ATTACKS)}")
        if not self.train_attacks:
            raise DataError("train-attacks must name at least one attack")
        if self.heldout_language not in ASTERISK_VOICES:
            raise DataError(f"held-out language must be one of {sorted(ASTERISK_VOICES)}, got {self.heldout_language!r}")
        for name in ("n_bona_train", "n_spoof_train_per_attack", "n_bona_eval_heldout", "n_spoof_eval_per_attack"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise DataError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
        if not isinstance(self.n_bona_eval_known, int) or self.n_bona_eval_known < 0:
            raise DataError(f"n-bona-eval-known must be an integer >= 0, got {self.n_bona_eval_known!r}")
        if not (0.25 <= self.clip_seconds <= 10):
            raise DataError(f"clip-seconds must be in [0.25, 10], got {self.clip_seconds!r}")
        if not (0.05 <= self.eval_fraction <= 0.5):
            raise DataError(f"eval-fraction must be in [0.05, 0.5], got {self.eval_fraction!r}")
        self._validate_human()
        f = self.train_codec_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise DataError(f"train-codec-fraction must be a number in [0, 1], got {f!r}")
        k = self.train_scale
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
            raise DataError(f"train-scale must be an integer in [1, 64], got {k!r}")
        if self.splice_like_source not in SPLICE_LIKE_SOURCE:
            raise DataError(f"splice-like-source must be one of {', '.join(SPLICE_LIKE_SOURCE)}, got "
                            f"{self.splice_like_source!r}")
        return self

    def _validate_human(self) -> None:
        from ..human_voices import HumanVoiceError, source

        for field_, role in (("human_voices", "train"), ("human_heldout", "held-out")):
            ids = getattr(self, field_)
            if isinstance(ids, str) or len(set(ids)) != len(ids):
                raise DataError(f"{field_.replace('_', '-')} must be distinct source ids, got {ids!r}")
            for sid in ids:
                try:
                    src = source(sid)
                except HumanVoiceError as e:
                    raise DataError(str(e)) from None
                if src.role != role or src.builtin:
                    raise DataError(f"{field_.replace('_', '-')}: source {sid!r} has role {src.role!r}"
                                    f"{' and is an Asterisk voice of the corpus already' if src.builtin else ''}; "
                                    f"use a {role!r} source (slimtrain data human-voices lists them)")
        if self.human_files_per_source is not None and (not isinstance(self.human_files_per_source, int)
                                                         or self.human_files_per_source < 2):
            raise DataError(f"human-files-per-source must be an integer >= 2 (or unset), got "
                            f"{self.human_files_per_source!r}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train_attacks"], d["eval_attacks"] = list(self.train_attacks), list(self.eval_attacks)
        if self.effective_corpus == "core":
            d.pop("corpus")  # the core config (and cache check) is exactly the documented one
        if not self.train_codec_fraction:
            d.pop("train_codec_fraction")  # (configs without it, and their caches, stay as they were)
        if self.train_scale == 1:
            d.pop("train_scale")  # (likewise)
        if self.splice_like_source == "none":
            d.pop("splice_like_source")  # (likewise)
        if not (self.human_voices or self.human_heldout):
            for k in ("human_voices", "human_heldout", "human_files_per_source"):
                d.pop(k)  # configs without human voices (and their caches) stay as they were
        else:
            d["human_voices"], d["human_heldout"] = list(self.human_voices), list(self.human_heldout)
        return d


# -- cue removal -------------------------------------------------------------------------------------
def condition(x: np.ndarray, rng: np.random.Generator, clip_samples: int) -> np.ndarray:
    """The cue-removal chain applied identically to every clip (see the module docstring) -> int16."""
    y = trim_silence(_bandpass(x))
    if len(y) == 0 or not np.any(y):
        raise DataError("clip is silent after trimming")
    level = rng.uniform(-30.0, -18.0)
    y = y * (10 ** (level / 20) / max(math.sqrt(float(np.mean(y ** 2))), 1e-12))
    out = np.zeros(clip_samples)
    if len(y) >= clip_samples:
        off = int(rng.integers(0, len(y) - clip_samples + 1))
        out[:] = y[off: off + clip_samples]
    else:
        off = int(rng.integers(0, clip_samples - len(y) + 1))
        out[off: off + len(y)] = y
    snr = rng.uniform(30.0, 50.0)
    out += rng.standard_normal(clip_samples) * 10 ** ((level - snr) / 20)
    return np.round(np.clip(out, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def cue_features(x: np.ndarray) -> np.ndarray:
    """Trivial cues of a clip: [active duration (s), RMS (dBFS), leading-silence length (s), speech density],
    activity = 10 ms frames within 30 dB of the loudest; speech density = the share of active frames (a
    clip without pauses is dense: 0.91 for the plain splices of the documented corpus, 0.66 for its bona
    fide clips). The clip's columns of :func:`slimtrain.tasks.spoof.shortcuts.utterance_cues`."""
    from .shortcuts import utterance_cues

    a = np.asarray(x)
    x = a.astype(np.float64)
    if a.dtype.kind == "i" or np.abs(x).max(initial=0) > 1.5:  # int16 PCM (or its values as floats)
        x = x / 32768.0
    return utterance_cues(x, SR)[[1, 2, 3, 5]]


def shortcut_eer(train: "SpoofSplit", test: "SpoofSplit", attack: Optional[str] = None) -> float:
    """EER on ``test`` of a logistic regression trained on ``train`` with :func:`cue_features` alone
    (standardised). Near 0.5 = the cues carry no class information. ``attack``: bona fide against that
    family only, in both splits (a cue of one family, such as the density of splices, can hide in the pool)."""
    from .shortcuts import cue_eers

    def keep(split: "SpoofSplit") -> np.ndarray:
        if attack is None:
            return np.ones(len(split), dtype=bool)
        k = (split.label == 1) | (np.asarray(split.attack) == attack)
        if not (k & (split.label == 0)).any():
            raise DataError(f"attack {attack!r} has no clip in this split (it has: "
                            f"{', '.join(sorted(set(split.attack) - {'bona'}))})")
        return k

    ktr, kte = keep(train), keep(test)
    ftr = np.stack([cue_features(a) for a in train.audio[ktr]])
    fte = np.stack([cue_features(a) for a in test.audio[kte]])
    return cue_eers(ftr, train.label[ktr], fte, test.label[kte])["pooled"] / 100


# -- protocol --------------------------------------------------------------------------------------
@dataclass
class Item:
    """One clip to generate."""

    split: str
    label: int  # 1 bona fide, 0 spoof
    attack: str  # "bona" or A1..A7
    language: str
    prompt: str  # Asterisk prompt name (text or recording source)
    text: str = ""
    voice: str = ""
    params: dict = field(default_factory=dict)


def _prompt_split(names: Sequence[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    def h(n: str) -> float:
        return int(hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()[:8], 16) / 16 ** 8

    ev = sorted(n for n in names if h(n) < frac)
    tr = sorted(n for n in names if h(n) >= frac)
    return tr, ev


def _corpus(language: str) -> tuple[dict[str, Path], dict[str, str]]:
    files = asterisk_prompts(language)
    voice_dir = files[0].parents[0]
    root = next((p for p in files[0].parents if p.name == ASTERISK_VOICES[language][0]), voice_dir)
    by_name = {str(f.relative_to(root).with_suffix("")): f for f in files}
    texts = asterisk_transcripts(language)
    return by_name, texts


def _extra_corpus(speaker: str) -> dict[str, Path]:
    """Prompt name -> GSM file of an extra Asterisk speaker (no transcripts: copy attacks only)."""
    from ..audio import extra_prompts

    try:
        fs = extra_prompts(speaker)
    except AudioError as e:
        raise DataError(str(e)) from None
    out = {}
    for f in fs:
        k = f.parts.index("sounds") + 2
        out[str(Path(*f.parts[k:]).with_suffix(""))] = f
    return out


def plan_items(cfg: SpoofDataConfig) -> tuple[list[Item], dict[str, Path]]:
    """The deterministic list of clips for ``cfg`` and the map prompt key -> bona fide file.

    With ``cfg.train_scale = k`` the training clips of draws 1..k-1 follow those of the plain plan (whose
    items, and so indices and bytes, do not change)."""
    cfg.validate()
    items, files = _plan(cfg, 0)
    for draw in range(1, cfg.train_scale):
        items += [it for it in _plan(cfg, draw)[0] if it.split == "train"]
    if cfg.splice_like_source != "none":  # (a parameter of its own: the other items and their streams stay as they were)
        for it in items:
            if it.attack in A.SPLICE_ATTACKS and (cfg.splice_like_source == "all" or it.split == "train"):
                it.params["like_source"] = True
    return items, files


def _plan(cfg: SpoofDataConfig, draw: int) -> tuple[list[Item], dict[str, Path]]:
    """One draw of the plan: draw 0 is the corpus as documented, draw ``k`` the same plan from random streams
    of its own (the prompt split, which follows ``cfg.seed`` alone, is the same in every draw)."""
    tail = (13, draw) if draw else ()  # (draw 0 keeps the streams every existing corpus was built from)
    extended = cfg.effective_corpus == "extended"
    rng = np.random.default_rng([cfg.seed, 1, *tail])
    langs = sorted(ASTERISK_VOICES) + (sorted(EXTENDED_BONA_SPEAKERS) if extended else [])
    known = [lg for lg in langs if lg != cfg.heldout_language]
    text_langs = sorted(ASTERISK_VOICES)  # languages with transcripts (the text attacks read these)
    espeak_voices = A.ESPEAK_VOICES_EXTENDED if extended else A.ESPEAK_VOICES
    espeak_variants = A.ESPEAK_VARIANTS_EXTENDED if extended else A.ESPEAK_VARIANTS
    diphone_voices = A.FESTIVAL_DIPHONE_VOICES_EXTENDED if extended else A.FESTIVAL_DIPHONE_VOICES
    files: dict[str, Path] = {}
    texts: dict[str, str] = {}
    pool: dict[tuple[str, str], list[str]] = {}  # (split, lang) -> prompt keys
    for lg in langs:
        by_name, tx = _corpus(lg) if lg in ASTERISK_VOICES else (_extra_corpus(lg), {})
        for n, f in by_name.items():
            files[f"{lg}:{n}"] = f
            if n in tx:
                texts[f"{lg}:{n}"] = A.text_for_tts(tx[n])
        names = sorted(by_name)
        if lg == cfg.heldout_language:
            pool[("eval", lg)] = names
        else:
            tr, ev = _prompt_split(names, cfg.eval_fraction, cfg.seed)
            pool[("train", lg)], pool[("eval", lg)] = tr, ev

    def pick(split: str, langs_: Sequence[str], n: int, need_text: bool = False) -> list[tuple[str, str]]:
        cands = [(lg, nm) for lg in langs_ for nm in pool.get((split, lg), [])
                 if not need_text or f"{lg}:{nm}" in texts]
        if not cands:
            raise DataError(f"no {split} prompts for languages {list(langs_)}")
        idx = rng.choice(len(cands), size=n, replace=n > len(cands))
        return [cands[i] for i in idx]

    items: list[Item] = []
    for lg, nm in pick("train", known, cfg.n_bona_train):
        items.append(Item("train", 1, "bona", lg, nm))
    for lg, nm in pick("eval", [cfg.heldout_language], cfg.n_bona_eval_heldout):
        items.append(Item("eval", 1, "bona", lg, nm))
    if cfg.n_bona_eval_known:
        for lg, nm in pick("eval", known, cfg.n_bona_eval_known):
            items.append(Item("eval", 1, "bona", lg, nm))
    eval_langs = langs  # evaluation texts/recordings: held-out speaker + evaluation prompts
    for split, attacks, n in (("train", cfg.train_attacks, cfg.n_spoof_train_per_attack),
                              ("eval", cfg.eval_attacks, cfg.n_spoof_eval_per_attack)):
        src_langs = known if split == "train" else eval_langs
        text_src = [lg for lg in src_langs if lg in text_langs]
        for a in attacks:
            if a == "A1":
                for lg, nm in pick(split, text_src, n, True):
                    voice = str(rng.choice(espeak_voices[lg]))
                    var = str(rng.choice(espeak_variants))
                    items.append(Item(split, 0, a, lg, nm, texts[f"{lg}:{nm}"], voice + (f"+{var}" if var else ""),
                                      {"rate": int(rng.integers(130, 191)), "pitch": int(rng.integers(25, 76))}))
            elif a == "A2":
                for lg, nm in pick(split, [lg for lg in src_langs if lg == "en"] or ["en"], n, True):
                    items.append(Item(split, 0, a, lg, nm, texts[f"{lg}:{nm}"], str(rng.choice(A.FLITE_VOICES))))
            elif a in ("A3", "A4"):
                voices = diphone_voices if a == "A3" else A.FESTIVAL_HTS_VOICES
                if extended and split == "train":  # some voices of the seen family stay unseen
                    voices = {lg: tuple(v for v in vs if v not in A.FESTIVAL_EVAL_ONLY_VOICES) for lg, vs in voices.items()}
                for lg, nm in pick(split, [lg for lg in text_src if lg in voices] or list(voices), n, True):
                    items.append(Item(split, 0, a, lg, nm, texts[f"{lg}:{nm}"], str(rng.choice(voices[lg]))))
            elif a in A.SPLICE_ATTACKS:
                # its own random stream, so adding splices leaves every other item as it was
                srng = np.random.default_rng([cfg.seed, 8, int(a[1:]), 0 if split == "train" else 1, *tail])
                cands = [(lg, nm) for lg in src_langs for nm in pool.get((split, lg), [])]
                for c in srng.choice(len(cands), size=n, replace=n > len(cands)):
                    lg, nm = cands[int(c)]
                    same = pool[(split, lg)]  # units from recordings of the same speaker and split
                    others = [str(same[int(k)]) for k in srng.choice(len(same), size=A.SPLICE_SOURCES - 1)]
                    items.append(Item(split, 0, a, lg, nm, params={"seed": int(srng.integers(0, 2 ** 31)),
                                                                     "sources": others}))
            elif a == "A11":  # Russian sentences of their own (unit_selection), split by key like the prompts
                ru = _unit_selection_texts(cfg, split)
                urng = np.random.default_rng([cfg.seed, 12, 0 if split == "train" else 1, *tail])
                for c in urng.choice(len(ru), size=n, replace=n > len(ru)):
                    key, text = ru[int(c)]
                    items.append(Item(split, 0, a, U.LANGUAGE, key, text, U.VOICE))
            elif a in ("A5", "A6", "A7"):
                for lg, nm in pick(split, src_langs, n):
                    items.append(Item(split, 0, a, lg, nm, params={"seed": int(rng.integers(0, 2 ** 31))}))
            else:  # families added later draw from a stream of their own: the other items stay as they were
                arng = np.random.default_rng([cfg.seed, 11, int(a[1:]), 0 if split == "train" else 1, *tail])
                cands = [(lg, nm) for lg in src_langs for nm in pool.get((split, lg), [])]
                for c in arng.choice(len(cands), size=n, replace=n > len(cands)):
                    lg, nm = cands[int(c)]
                    items.append(Item(split, 0, a, lg, nm, params={"seed": int(arng.integers(0, 2 ** 31))}))
    items += _human_items(cfg, files, tail)
    # families added after A9 go last: every clip's cue removal draws from its index, so the clips of a
    # corpus without them keep their indices (and bytes) when they are added
    items.sort(key=lambda it: it.attack not in _FIRST_FAMILIES)
    return items, files


def _unit_selection_texts(cfg: SpoofDataConfig, split: str) -> list[tuple[str, str]]:
    """(key, text) of A11's Russian sentences of ``split`` (keys hashed into splits as :func:`_prompt_split`)."""
    try:
        texts = U.russian_texts()
    except U.UnitSelectionError as e:
        raise DataError(str(e)) from None
    tr, ev = _prompt_split(sorted(texts), cfg.eval_fraction, cfg.seed)
    return [(k, texts[k]) for k in (tr if split == "train" else ev)]


def _human_files(sid: str, cap: Optional[int]) -> dict[str, Path]:
    """File key -> path of one human-voice source (the first ``cap`` files by name when capped)."""
    from ..human_voices import HumanVoiceError, package_dir, source, usable_files

    src = source(sid)
    try:
        fs = usable_files(src)
    except HumanVoiceError as e:
        raise DataError(str(e)) from None
    root = package_dir(src)
    fs = fs[:cap] if cap else fs
    return {str(f.relative_to(root).with_suffix("")): f for f in fs}


def _human_items(cfg: SpoofDataConfig, files: dict[str, Path], tail: tuple[int, ...] = ()) -> list[Item]:
    """The clips of the recorded human voices (module doc): bona fide and copy/splice attacks made of them.

    Each draw takes a speaker in proportion to the sources' speaker counts, then a file of that source,
    from a random stream of its own (so the other items do not change)."""
    from ..human_voices import source

    items: list[Item] = []
    for split, sids, n_bona, attacks, n_spoof in (
            ("train", cfg.human_voices, cfg.n_bona_train, cfg.train_attacks, cfg.n_spoof_train_per_attack // 2),
            ("eval", cfg.human_heldout, cfg.n_bona_eval_heldout, cfg.eval_attacks, cfg.n_spoof_eval_per_attack // 2)):
        if not sids:
            continue
        pool = {}
        for sid in sids:
            by_name = _human_files(sid, cfg.human_files_per_source)
            pool[sid] = sorted(by_name)
            files.update({f"{sid}:{k}": f for k, f in by_name.items()})
        weight = np.array([source(sid).speakers for sid in sids], dtype=float)
        weight /= weight.sum()
        hrng = np.random.default_rng([cfg.seed, 9, 0 if split == "train" else 1, *tail])

        def draw() -> tuple[str, str]:
            sid = sids[int(hrng.choice(len(sids), p=weight))]
            return sid, pool[sid][int(hrng.integers(len(pool[sid])))]

        for _ in range(n_bona):
            sid, nm = draw()
            items.append(Item(split, 1, "bona", sid, nm))
        for a in attacks:
            if A.ATTACKS[a].source not in ("audio", "splice"):
                continue  # text attacks read transcripts, which these recordings do not have
            for _ in range(n_spoof if n_spoof else 0):
                sid, nm = draw()
                if a in A.SPLICE_ATTACKS:
                    same = pool[sid]
                    others = [str(same[int(k)]) for k in hrng.choice(len(same), size=A.SPLICE_SOURCES - 1)]
                    items.append(Item(split, 0, a, sid, nm, params={"seed": int(hrng.integers(0, 2 ** 31)),
                                                                     "sources": others}))
                else:
                    items.append(Item(split, 0, a, sid, nm, params={"seed": int(hrng.integers(0, 2 ** 31))}))
    return items


# -- generation --------------------------------------------------------------------------------------
def _synthesise(items: list[Item], files: dict[str, Path], workers: int,
                progress: Optional[Callable[[int], None]] = None) -> list[np.ndarray]:
    raw: list[Optional[np.ndarray]] = [None] * len(items)

    def bona(lg: str, nm: str) -> np.ndarray:
        try:
            return read_audio(files[f"{lg}:{nm}"], SR)[0]
        except AudioError as e:
            raise DataError(str(e)) from None

    def one(i: int) -> int:
        it = items[i]
        if it.attack == "bona":
            raw[i] = bona(it.language, it.prompt)
        elif it.attack == "A1":
            raw[i] = A.espeak(it.text, it.voice, it.params["rate"], it.params["pitch"])
        elif it.attack == "A2":
            raw[i] = A.flite(it.text, it.voice)
        elif it.attack == "A6":
            raw[i] = A.griffin_lim_copy(bona(it.language, it.prompt), seed=it.params["seed"])
        elif it.attack == "A7":
            raw[i] = A.lpc_copy(bona(it.language, it.prompt), seed=it.params["seed"])
        elif it.attack == "A10":
            raw[i] = A.hnm_copy(bona(it.language, it.prompt), seed=it.params["seed"])
        elif it.attack in A.SPLICE_ATTACKS:
            from .splice import splice

            srcs = [bona(it.language, p) for p in (it.prompt, *it.params["sources"])]
            smooth = A.SPLICE_SMOOTH_MS if it.attack == "A9" else 0.0
            if it.params.get("like_source"):  # as long as the recording it stands in for, pausing like its speaker
                seconds = max(len(trim_silence(_bandpass(srcs[0]))) / SR, A.SPLICE_MIN_SECONDS)
                raw[i] = splice(srcs, it.params["seed"], seconds=seconds, smooth_ms=smooth,
                                max_pause_ms=A.SPLICE_MAX_PAUSE_MS).audio
            else:
                raw[i] = splice(srcs, it.params["seed"], smooth_ms=smooth).audio
        return 1

    def festival(key: tuple[str, str], idx: list[int]) -> int:
        outs = A.festival_batch([items[i].text for i in idx], key[1])
        for i, y in zip(idx, outs):
            raw[i] = y
        return len(idx)

    def world(idx: list[int]) -> int:
        outs = A.world_copy_batch([bona(items[i].language, items[i].prompt) for i in idx])
        for i, y in zip(idx, outs):
            raw[i] = y
        return len(idx)

    fest: dict[tuple[str, str], list[int]] = {}
    simple = []
    world_idx = [i for i, it in enumerate(items) if it.attack == "A5"]
    for i, it in enumerate(items):
        if it.attack == "A5":
            continue
        if it.attack in A.FESTIVAL_ATTACKS:
            fest.setdefault((it.split, it.voice), []).append(i)
        else:
            simple.append(i)
    jobs: list[tuple[Callable, tuple]] = [(world, (world_idx,))] if world_idx else []
    for key, idx in sorted(fest.items()):
        for c in range(0, len(idx), 40):  # chunks: several festival processes run side by side
            jobs.append((festival, (key, idx[c:c + 40])))
    jobs += [(one, (i,)) for i in simple]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        futs = [ex.submit(f, *a) for f, a in jobs]
        for fu in futs:
            n = fu.result()
            if progress is not None:
                progress(n)
    return raw  # type: ignore[return-value]


@dataclass
class SpoofSplit:
    """One split in memory: ``audio`` int16 ``(N, samples)``, ``label`` (1 bona fide), ``attack`` ids."""

    audio: np.ndarray
    label: np.ndarray
    attack: np.ndarray
    language: np.ndarray
    #: bona fide clips of evaluation-only speakers (fr_CA June, held-out human voices); ``None``: not known
    heldout: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.label)

    def waveforms(self):
        """Float32 tensor ``(N, samples)`` in [-1, 1]."""
        import torch

        return torch.from_numpy(self.audio.astype(np.float32) / 32768.0)

    def subset(self, mask: np.ndarray) -> "SpoofSplit":
        return SpoofSplit(self.audio[mask], self.label[mask], self.attack[mask], self.language[mask],
                          None if self.heldout is None else self.heldout[mask])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: settings of a data set that only scale it (sizes and seed); every other setting is its recipe
_SCALE_KEYS = ("seed", "n_bona_train", "n_spoof_train_per_attack", "n_bona_eval_heldout", "n_bona_eval_known",
               "n_spoof_eval_per_attack", "human_files_per_source")


def _recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _SCALE_KEYS}


def _adopt(out: Path) -> Optional[dict]:
    """The manifest of a complete data set in ``out`` built with another recipe than the core default (extended
    corpus, human voices, training codecs, other attack families, more draws, like-source splices), else
    ``None``: a training command reads such a folder as it is instead of building the default over it."""
    m = out / MANIFEST
    if not m.is_file():
        return None
    try:
        man = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    default = _recipe(SpoofDataConfig().as_dict())
    if man.get("format") != FORMAT or (man.get("corpus", "core") == "core"
                                       and _recipe(man.get("config", {})) == default):
        return None
    return man if all((out / f).is_file() for f in man.get("sha256", {})) else None


def source_inventory(items: Sequence["Item"]) -> list[dict]:
    """Debian package, version and use of every source in ``items`` (bona fide speakers, synthesisers
    and Festival voices) - what the extended manifest records and its fingerprint covers."""
    from ..audio import EXTRA_ASTERISK_SPEAKERS, package_version

    from ..human_voices import source

    used: dict[tuple[str, str], set[str]] = {}
    for it in items:
        if it.attack == "bona":
            pkg = (ASTERISK_VOICES[it.language][1] if it.language in ASTERISK_VOICES
                   else EXTRA_ASTERISK_SPEAKERS[it.language][0] if it.language in EXTRA_ASTERISK_SPEAKERS
                   else source(it.language).package)
            used.setdefault(("bona fide", pkg), set()).add(it.language)
        elif it.attack == "A1":
            used.setdefault(("A1", "espeak-ng"), set()).add(it.voice)
        elif it.attack == "A2":
            used.setdefault(("A2", "flite"), set()).add(it.voice)
        elif it.attack in A.FESTIVAL_ATTACKS:
            used.setdefault((it.attack, A.festival_package(it.voice)), set()).add(it.voice)
            if it.attack == "A11":
                used.setdefault(("A11 texts", U.TEXT_PACKAGE), set()).add(U.TEXT_FILE)
    return [{"use": use, "package": pkg, "version": package_version(pkg), "voices": sorted(v)}
            for (use, pkg), v in sorted(used.items())]


def spoof_fingerprint(cfg: SpoofDataConfig, inventory: Sequence[dict]) -> str:
    """SHA-256 (16 hex) of the settings, the extended recipe and the source inventory."""
    recipe = {"version": EXTENDED_VERSION, "espeak": {k: list(v) for k, v in A.ESPEAK_VOICES_EXTENDED.items()},
              "variants": list(A.ESPEAK_VARIANTS_EXTENDED),
              "diphone": {k: list(v) for k, v in A.FESTIVAL_DIPHONE_VOICES_EXTENDED.items()},
              "eval_only": list(A.FESTIVAL_EVAL_ONLY_VOICES), "bona_extra": list(EXTENDED_BONA_SPEAKERS)}
    blob = json.dumps({"config": cfg.as_dict(), "recipe": recipe, "sources": list(inventory)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_ok(out: Path, cfg: SpoofDataConfig) -> bool:
    m = out / MANIFEST
    if not m.is_file():
        return False
    try:
        man = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if man.get("format") != FORMAT or man.get("version") != VERSION or man.get("config") != cfg.as_dict():
        return False
    return all((out / f).is_file() for f in man.get("sha256", {}))


def build_dataset(out: Path, cfg: SpoofDataConfig, *, workers: int = 2, progress: bool = True,
                  force: bool = False, adopt: bool = True) -> dict:
    """Generate (or reuse) the data set for ``cfg`` in ``out``; returns the manifest dict. With ``adopt`` (training
    commands) and ``cfg.corpus`` unset, a complete data set of another recipe in ``out`` is returned as it is;
    ``adopt=False`` (``slimtrain data spoof``) builds ``cfg`` over it."""
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"data folder {out} is a file")
    if not force and _cache_ok(out, cfg):
        return json.loads((out / MANIFEST).read_text())
    if not force and cfg.corpus is None and adopt:  # a folder built with another recipe is read as it is
        adopted = _adopt(out)
        if adopted is not None:
            return adopted
    for prog in ("espeak-ng", "flite", "festival"):
        needed = {"espeak-ng": "A1", "flite": "A2", "festival": ("A3", "A4")}[prog]
        if any(a in needed for a in (*cfg.train_attacks, *cfg.eval_attacks)):
            A.require_program(prog)
    t0 = time.perf_counter()
    items, files = plan_items(cfg)
    bar = tqdm(total=len(items), desc="synthesise", disable=not progress, leave=False)
    raw = _synthesise(items, files, workers, bar.update)
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.clip_samples
    clips = np.zeros((len(items), n), dtype=np.int16)
    used_codecs: dict[str, dict[str, int]] = {}
    for i, (it, x) in enumerate(zip(items, raw)):
        rng = np.random.default_rng([cfg.seed, 2, i])
        try:
            clips[i] = condition(x, rng, n)
        except DataError as e:
            raise DataError(f"item {i} ({it.attack} {it.language}:{it.prompt}): {e}") from None
        if it.split == "train" and cfg.train_codec_fraction:
            codec = _train_codec(clips, i, cfg)
            if codec:
                used_codecs.setdefault(codec, {"bona": 0, "spoof": 0})["bona" if it.label else "spoof"] += 1
    man_files = {}
    for split in ("train", "eval"):
        idx = [i for i, it in enumerate(items) if it.split == split]
        f = out / f"{split}.npz"
        np.savez(f, audio=clips[idx], label=np.array([items[i].label for i in idx], dtype=np.int64),
                 attack=np.array([items[i].attack for i in idx]), language=np.array([items[i].language for i in idx]))
        man_files[f.name] = _sha256(f)
    with open(out / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "split", "label", "attack", "language", "prompt", "voice", "params", "text"])
        for i, it in enumerate(items):
            w.writerow([i, it.split, it.label, it.attack, it.language, it.prompt, it.voice,
                        json.dumps(it.params, sort_keys=True), it.text])
    man_files["items.csv"] = _sha256(out / "items.csv")
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        counts.setdefault(it.split, {}).setdefault(it.attack, 0)
        counts[it.split][it.attack] += 1
    extra: dict = {}
    if cfg.effective_corpus == "extended":
        inventory = source_inventory(items)
        extra = {"corpus": "extended", "corpus_version": EXTENDED_VERSION, "sources": inventory,
                 "fingerprint": spoof_fingerprint(cfg, inventory),
                 "voices": {a: sorted({f"{it.split}:{it.voice}" for it in items if it.attack == a and it.voice})
                            for a in ("A1", "A2", "A3", "A4")}}
    if cfg.human_voices or cfg.human_heldout:
        extra["human_voices"] = _human_manifest(cfg, items)
    if "A11" in (*cfg.train_attacks, *cfg.eval_attacks):
        from ..audio import package_version

        extra["unit_selection"] = {
            "voice": U.VOICE, "package": U.VOICE_PACKAGE, "version": package_version(U.VOICE_PACKAGE),
            "texts": U.TEXT_FILE, "text_package": U.TEXT_PACKAGE, "text_version": package_version(U.TEXT_PACKAGE),
            "texts_per_split": {sp: len(_unit_selection_texts(cfg, sp)) for sp in ("train", "eval")}}
    if cfg.train_codec_fraction:
        extra["train_codecs"] = dict(sorted(used_codecs.items()))
    manifest = {
        "format": FORMAT, "version": VERSION, "config": cfg.as_dict(), **extra, "counts": counts,
        "unseen_attacks": list(cfg.unseen_attacks),
        "attacks": {a: dataclasses.asdict(A.ATTACKS[a]) for a in A.ATTACKS},
        "sample_rate": SR, "clip_samples": n, "sha256": man_files,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST)
    return manifest


def _train_codec(clips: np.ndarray, i: int, cfg: SpoofDataConfig) -> str:
    """Pass training clip ``i`` through a random codec with probability ``cfg.train_codec_fraction`` (its own
    random stream); returns the codec's name, or ``""`` when the clip stays as it is."""
    from ..augment import ROUNDTRIP_CODECS, codec_roundtrip

    rng = np.random.default_rng([cfg.seed, 10, i])
    if rng.random() >= cfg.train_codec_fraction:
        return ""
    codec = str(rng.choice(ROUNDTRIP_CODECS))
    y = codec_roundtrip(clips[i].astype(np.float32) / 32768.0, SR, codec, rng)
    clips[i] = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    return codec


def _human_manifest(cfg: SpoofDataConfig, items: Sequence[Item]) -> dict:
    """Per human source: package, version, role, languages, speakers, files available and clips per split and
    kind; with the totals (what ``slimtrain data spoof`` prints and the manifest keeps)."""
    from ..audio import package_version
    from ..human_voices import source

    rows = []
    for sid in (*cfg.human_voices, *cfg.human_heldout):
        src = source(sid)
        mine = [it for it in items if it.language == sid]
        rows.append({"id": sid, "package": src.package, "version": package_version(src.package), "role": src.role,
                     "languages": list(src.languages), "speakers": src.speakers, "content": src.content,
                     "files_used": len({it.prompt for it in mine if it.attack == "bona"}),
                     "bona": sum(it.attack == "bona" for it in mine),
                     "spoof": sum(it.attack != "bona" for it in mine)})
    tot = {}
    for role in ("train", "held-out"):
        sel = [r for r in rows if r["role"] == role]
        tot[role] = {"sources": len(sel), "speakers": sum(r["speakers"] for r in sel),
                     "languages": sorted({lg for r in sel for lg in r["languages"]}),
                     "bona": sum(r["bona"] for r in sel), "spoof": sum(r["spoof"] for r in sel)}
    return {"sources": rows, "totals": tot}


def data_fingerprint(out: Path) -> str:
    """The data fingerprint to record in results: the extended manifest's ``fingerprint``, or for a
    core folder the SHA-256 (16 hex) of its files' SHA-256 digests (same bytes -> same value)."""
    m = Path(out) / MANIFEST
    try:
        man = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"no readable spoofing manifest {m} ({e}); build it with: slimtrain data spoof --out {out}") from None
    if "fingerprint" in man:
        return str(man["fingerprint"])
    return hashlib.sha256(json.dumps(man.get("sha256", {}), sort_keys=True).encode()).hexdigest()[:16]


def load_split(out: Path, split: str) -> SpoofSplit:
    """Read ``train`` or ``eval`` from a folder written by :func:`build_dataset` (checks the manifest)."""
    out = Path(out)
    m = out / MANIFEST
    if not m.is_file():
        raise DataError(f"no spoofing data in {out} (missing {MANIFEST}); build it with: slimtrain data spoof --out {out}")
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    f = out / f"{split}.npz"
    if not f.is_file():
        raise DataError(f"{f} is missing; rebuild with: slimtrain data spoof --out {out} --force")
    try:
        with np.load(f) as z:
            sp = SpoofSplit(z["audio"], z["label"], z["attack"], z["language"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{f} cannot be read ({e}); rebuild with: slimtrain data spoof --out {out} --force") from None
    try:
        conf = json.loads(m.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{m} cannot be read ({e}); rebuild with: slimtrain data spoof --out {out} --force") from None
    if "heldout_language" in conf:
        keys = [conf["heldout_language"], *conf.get("human_heldout", [])]
        sp.heldout = (sp.label == 1) & np.isin(sp.language, keys)
    return sp
