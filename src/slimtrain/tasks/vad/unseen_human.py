"""The unseen set split by voice kind: ``unseen-human`` (recorded human voices only) and ``unseen-tts``.

* ``unseen-tts``: the clips of the unseen-voices set (:mod:`.unseen`) whose voices are synthetic (groups
  ``festival`` and ``espeak-ng``); the same clips, so its numbers are those groups of ``--set unseen``.
* ``unseen-human``: the unseen set's human clips (fr Armelle, group ``fr-armelle``) plus clips of every
  other *held-out* human-voice source of :mod:`.human_voices` (a second Italian PBX voice and the
  KLettres speakers of Italian, Lithuanian, Hebrew, Malayalam and Ukrainian), one source per clip
  (group = source id), mixed exactly like the unseen set (the extended test split's music, effects,
  noise types and augmentation; labels from the dry speech). Version :data:`HUMAN_VERSION`, written
  as ``unseen_human.npz`` + ``unseen_human_manifest.json`` next to the unseen set.

No clip of either set mixes a human and a synthetic voice; :func:`load_split_set` checks it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..audio import AudioError, music_on_hold, sound_effects
from .data import DataError, VadSplit, read_split_audio
from .extended import _effects_for
from ..human_voices import HumanVoiceError, package_dir, source_files, sources
from .unseen import (HELD_OUT_SPEAKER, UnseenConfig, _mix_config, build_unseen_set, config_dict, is_built,
                     load_clip_set, load_unseen_set, mix_groups, write_clip_set)

__all__ = ["HUMAN_VERSION", "SPLIT_SETS", "TTS_GROUPS", "UnseenHumanConfig", "held_out_human_sources",
           "build_unseen_human_set", "load_split_set", "subset"]

HUMAN_VERSION = "unseen-human-v1"
EXPRESSIVE_VERSION = "unseen-expressive-v1"
SPLIT_SETS = ("unseen-human", "unseen-tts", "unseen-expressive")
TTS_GROUPS = ("festival", "espeak-ng")
_FILE = "unseen_human.npz"
_MANIFEST = "unseen_human_manifest.json"
#: held-out human clip sets: name -> (collection of :mod:`..human_voices`, clips file, manifest, version)
_HUMAN_SETS = {"unseen-human": ("core", _FILE, _MANIFEST, HUMAN_VERSION),
               "unseen-expressive": ("expressive", "unseen_expressive.npz", "unseen_expressive_manifest.json",
                                     EXPRESSIVE_VERSION)}


@dataclass
class UnseenHumanConfig:
    """Seed and size of the held-out human clips (at most ``utterances_per_source`` files per source)."""

    seed: int = 0
    utterances_per_source: int = 80
    #: rate of the clips (8000 or 16000)
    sample_rate: int = 8000

    def validate(self) -> "UnseenHumanConfig":
        if self.sample_rate not in (8000, 16000):
            raise DataError(f"unseen-human set: sample_rate must be 8000 or 16000, got {self.sample_rate!r}")
        if not isinstance(self.utterances_per_source, int) or self.utterances_per_source < 1:
            raise DataError(f"unseen-human set: utterances_per_source must be an integer >= 1, "
                            f"got {self.utterances_per_source!r}")
        return self


def held_out_human_sources(collection: str = "core") -> list:
    """Held-out human-voice sources of ``collection`` other than fr Armelle (whose clips come from the unseen
    set): ``core`` makes ``--set unseen-human``, ``expressive`` ``--set unseen-expressive``."""
    return [s for s in sources("held-out", collection=collection) if s.id != HELD_OUT_SPEAKER]


def _fingerprint(cfg: UnseenHumanConfig, inventory: list[dict], version: str = HUMAN_VERSION) -> str:
    blob = json.dumps({"version": version, "config": config_dict(cfg),
                       "mix": _mix_config(UnseenConfig(seed=cfg.seed, sample_rate=cfg.sample_rate)).as_dict(),
                       "sources": inventory}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_unseen_human_set(out_dir: str | Path, cfg: Optional[UnseenHumanConfig] = None, *, force: bool = False,
                           root: Optional[str | Path] = None, which: str = "unseen-human") -> Path:
    """Build (or reuse) the held-out human clips of set ``which`` (``unseen-human``: the core collection's
    held-out sources; ``unseen-expressive``: the Hedgewars packs) in ``out_dir``; returns the manifest path.
    A missing package is a :class:`DataError` naming it (``root``: a folder with one sub-folder per package)."""
    from ..audio import package_version

    cfg = (cfg or UnseenHumanConfig()).validate()
    if which not in _HUMAN_SETS:
        raise DataError(f"unknown held-out human set {which!r}; choose from {', '.join(_HUMAN_SETS)}")
    collection, file_name, manifest_name, version = _HUMAN_SETS[which]
    out = Path(out_dir)
    mpath = out / manifest_name
    srcs = held_out_human_sources(collection)
    try:
        files = {s.id: source_files(s, root) for s in srcs}
        effects = sound_effects()
        music_files = music_on_hold()
    except (HumanVoiceError, AudioError) as e:
        raise DataError(f"{which} set: {e}") from None
    inventory = [{"id": s.id, "package": s.package, "version": "" if root else package_version(s.package),
                  "languages": list(s.languages), "speakers": s.speakers, "files": len(files[s.id])} for s in srcs]
    fp = _fingerprint(cfg, inventory, version)
    if not force and is_built(mpath, out / file_name, fp):
        return mpath
    mix = _mix_config(UnseenConfig(seed=cfg.seed, sample_rate=cfg.sample_rate))
    picked: dict[str, str] = {}
    for s, seq in zip(srcs, np.random.SeedSequence([cfg.seed, 21]).spawn(len(srcs))):
        fs = files[s.id]
        if len(fs) > cfg.utterances_per_source:
            fs = [fs[j] for j in sorted(np.random.default_rng(seq).choice(len(fs), cfg.utterances_per_source,
                                                                          replace=False))]
        base = package_dir(s, root)
        picked.update({str(f): f"{s.id}/{f.relative_to(base).as_posix()}" for f in fs})
    (good, skipped), (mgood, _), (egood, _) = read_split_audio(
        "test", [Path(f) for f in picked], music_files, _effects_for("test", effects), mix.sample_rate)
    by_source: dict[str, list[tuple[str, np.ndarray]]] = {s.id: [] for s in srcs}
    for p, x in good:
        name = picked[str(p)]
        by_source[name.split("/")[0]].append((f"human/{name}", x))
    music, fx = [x for _, x in mgood], [x for _, x in egood]
    seqs = np.random.SeedSequence([cfg.seed, 22]).spawn(len(srcs))
    for s in srcs:
        if not by_source[s.id]:
            raise DataError(f"{which} set: no readable file of source {s.id!r} ({s.package})")
    clips = mix_groups([(s.id, by_source[s.id], seq) for s, seq in zip(srcs, seqs)], music, fx, mix)
    manifest = {"set": which, "version": version, "fingerprint": fp, "config": config_dict(cfg),
                "mix_config": mix.as_dict(), "sources": inventory, "clips": len(clips.group),
                "clips_by_source": {s.id: clips.group.count(s.id) for s in srcs},
                "speech_minutes_by_source": {k: round(sum(len(x) for _, x in v) / mix.sample_rate / 60, 2)
                                             for k, v in by_source.items()},
                "skipped_files": [f"{p}: {why}" for p, why in skipped]}
    return write_clip_set(out / file_name, mpath, clips, manifest)


def subset(split: VadSplit, keep: np.ndarray) -> VadSplit:
    """The clips of ``split`` where ``keep`` (a boolean mask) is true."""
    idx = np.flatnonzero(keep)
    return VadSplit(split.audio[idx], split.labels[idx], split.snr_db[idx], [split.noise[i] for i in idx],
                    [split.sources[i] for i in idx] if split.sources else [])


def _concat(a: VadSplit, b: VadSplit) -> VadSplit:
    if a.audio.shape[1:] != b.audio.shape[1:] or a.labels.shape[1:] != b.labels.shape[1:]:
        raise DataError(f"unseen-human set: clip shapes differ ({a.audio.shape[1:]} vs {b.audio.shape[1:]}); "
                        "rebuild both sets with --force")
    return VadSplit(np.concatenate([a.audio, b.audio]), np.concatenate([a.labels, b.labels]),
                    np.concatenate([a.snr_db, b.snr_db]), a.noise + b.noise, list(a.sources) + list(b.sources))


def _human_clip_set(which: str, udir: Path, build: bool, sample_rate: int) -> tuple[VadSplit, list[str], dict]:
    """``(clips, source of each, manifest)`` of the held-out human clip set ``which`` (built first when ``build``)."""
    _, file_name, manifest_name, _ = _HUMAN_SETS[which]
    if build:
        build_unseen_human_set(udir, UnseenHumanConfig(sample_rate=sample_rate), which=which)
    return load_clip_set(udir, manifest_name, file_name, f"{which} set", f"--set {which}")


def load_split_set(which: str, unseen_dir: str | Path, *, build: bool = True,
                   sample_rate: int = 8000) -> tuple[VadSplit, list[str], dict]:
    """``(split, source group of each clip, info)`` of ``unseen-human``, ``unseen-tts`` or ``unseen-expressive``
    (built into ``unseen_dir`` at ``sample_rate`` when ``build``); ``info`` has the set name, fingerprint and
    sources."""
    if which not in SPLIT_SETS:
        raise DataError(f"unknown evaluation set {which!r}; choose from {', '.join(SPLIT_SETS)}")
    udir = Path(unseen_dir)
    if which == "unseen-expressive":  # its own clips only: the unseen set is neither built nor read
        out, out_groups, hm = _human_clip_set(which, udir, build, sample_rate)
        info = {"set": which, "fingerprint": hm["fingerprint"], "sources": [s["id"] for s in hm["sources"]]}
    else:
        if build:
            build_unseen_set(udir, UnseenConfig(sample_rate=sample_rate))
        split, groups, um = load_unseen_set(udir)
        if which == "unseen-tts":
            keep = np.isin(np.asarray(groups), TTS_GROUPS)
            out, out_groups = subset(split, keep), [x for x in groups if x in TTS_GROUPS]
            fp = hashlib.sha256(f"{um['fingerprint']}/tts".encode()).hexdigest()[:16]
            names = list(TTS_GROUPS)
        else:  # unseen-human: the unseen set's human clips (fr Armelle) + the held-out human clip set
            extra, extra_groups, hm = _human_clip_set(which, udir, build, sample_rate)
            keep = np.asarray(groups) == "human"
            out = _concat(subset(split, keep), extra)
            out_groups = [HELD_OUT_SPEAKER] * int(keep.sum()) + extra_groups
            fp = hashlib.sha256(f"{um['fingerprint']}/{hm['fingerprint']}".encode()).hexdigest()[:16]
            names = [HELD_OUT_SPEAKER] + [s["id"] for s in hm["sources"]]
        info = {"set": which, "fingerprint": fp, "sources": names}
    _check_kinds(which, out, out_groups)
    return out, out_groups, info


def _check_kinds(which: str, split: VadSplit, groups: list[str]) -> None:
    """Every utterance of a clip must be of the set's kind (``tts/`` names for unseen-tts, none for the human sets)."""
    for i, names in enumerate(split.sources):
        tts = [n for n in names if str(n).startswith("tts/")]
        if which != "unseen-tts" and tts:
            raise DataError(f"{which} clip {i} ({groups[i]}) holds synthetic speech: {tts[0]}")
        if which == "unseen-tts" and len(tts) != len(names):
            human = [n for n in names if not str(n).startswith("tts/")]
            raise DataError(f"unseen-tts clip {i} ({groups[i]}) holds a human voice: {human[0]}")
