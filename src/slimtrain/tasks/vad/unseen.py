"""The *unseen-voices* VAD evaluation set (version :data:`UNSEEN_VERSION`): voices no training split uses.

Built by code from Debian packages, offline and seeded, in three groups of clips (each clip holds
one group only, so the metrics can be split by group):

* ``human``: the Asterisk speaker **fr Armelle** (``asterisk-prompt-fr-armelle``, GSM prompts). The
  extended corpus *can* train on her (``extra_train_speakers``); the shipped recipe keeps her out
  (``slimtrain data vad --corpus extended --extra-speakers es-co``) so that one real human voice stays
  unheard. Her language (French) is not unseen: it is the validation language and espeak-ng's French
  voices read French text in extended training; she is the one declared exception.
* ``festival``: the two Festival **Italian** diphone voices (``festvox-italp16k``, ``festvox-itapc16k``),
  which no training recipe uses, reading Italian Asterisk transcripts.
* ``espeak-ng``: espeak-ng voices of languages that no training recipe uses (:data:`UNSEEN_ESPEAK`),
  reading Italian transcripts, with the random voice variant, rate and pitch of extended training.

(The Festival *Finnish* voices and every flite voice are used by extended training, so they are not here.)
Clips are mixed exactly like the extended test split (:func:`.extended.build_extended_clips`: the
test split's music track and sound effects, the extended noise types, augmentation and gain), labels
from the dry speech as everywhere. :func:`check_held_out` compares the set's voices and languages with
the training split of any corpus manifest and raises :class:`DataError` on an overlap.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..audio import EXTRA_ASTERISK_SPEAKERS, AudioError, asterisk_transcripts, extra_prompts, package_version
from .data import DataError, VadDataConfig, VadSplit, read_split_audio
from .extended import TTS_VOICES, _effects_for, build_extended_clips
from ..human_voices import HumanVoiceError, held_out_languages, sources

__all__ = ["UNSEEN_VERSION", "UNSEEN_ESPEAK", "UNSEEN_FESTIVAL", "HELD_OUT_SPEAKER", "GROUPS", "UnseenConfig",
           "unseen_voices", "training_voices", "check_held_out", "check_training_manifest", "build_unseen_set",
           "load_unseen_set"]

UNSEEN_VERSION = "unseen-v1"
#: the real speaker kept out of training for this set (an ``EXTRA_ASTERISK_SPEAKERS`` key)
HELD_OUT_SPEAKER = "fr-armelle"
#: espeak-ng voices (= languages) used by no training recipe: Italian and Latin-script languages
UNSEEN_ESPEAK = ("it", "lt", "lv", "sl", "sq", "is", "cy", "sw", "ms", "eo", "mt", "ga")
#: Festival voices used by no training recipe (Italian diphone voices)
UNSEEN_FESTIVAL = {"lp_diphone": "festvox-italp16k", "pc_diphone": "festvox-itapc16k"}
GROUPS = ("human", "festival", "espeak-ng")
#: spoken language of the Festival voices of extended training
_FESTIVAL_LANGUAGE = {"kal_diphone": "en", "ked_diphone": "en", "cmu_us_slt_arctic_hts": "en", "upc_ca_ona_hts": "ca",
                      "czech_dita": "cs", "czech_krb": "cs", "czech_machac": "cs", "czech_ph": "cs",
                      "hy_fi_mv_diphone": "fi", "suo_fi_lj_diphone": "fi", "lp_diphone": "it", "pc_diphone": "it"}
_FILE = "unseen.npz"
_MANIFEST = "unseen_manifest.json"


@dataclass
class UnseenConfig:
    """Size and seed of the unseen set (utterances per group; every utterance is used once)."""

    seed: int = 0
    human_utterances: int = 150
    festival_utterances: int = 60
    espeak_utterances: int = 144
    text_language: str = "it"
    #: rate of the clips (8000 or 16000); every source is read (or synthesised) at it
    sample_rate: int = 8000

    def validate(self) -> "UnseenConfig":
        if self.sample_rate not in (8000, 16000):
            raise DataError(f"unseen set: sample_rate must be 8000 or 16000, got {self.sample_rate!r}")
        for k in ("human_utterances", "festival_utterances", "espeak_utterances"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise DataError(f"unseen set: {k} must be an integer >= 1, got {v!r}")
        return self


def _base_language(voice: str) -> str:
    """Language of an espeak-ng voice name such as ``en-gb-scotland+f3`` -> ``en``."""
    return voice.split("+")[0].split("-")[0]


def unseen_voices() -> list[dict]:
    """Every voice of the set: group, engine, voice, spoken language, Debian package."""
    package, lang, _ = EXTRA_ASTERISK_SPEAKERS[HELD_OUT_SPEAKER]
    out = [{"group": "human", "engine": "asterisk", "voice": HELD_OUT_SPEAKER, "language": lang, "package": package,
            "language_seen_in_training": True}]
    out += [{"group": "festival", "engine": "festival", "voice": v, "language": _FESTIVAL_LANGUAGE[v], "package": p}
            for v, p in UNSEEN_FESTIVAL.items()]
    out += [{"group": "espeak-ng", "engine": "espeak-ng", "voice": v, "language": v, "package": "espeak-ng"}
            for v in UNSEEN_ESPEAK]
    return out


def training_voices(manifest: dict) -> dict[str, set]:
    """Voices and languages of a corpus manifest's *training* split.

    ``speakers``: Asterisk voice folders and extra speakers; ``tts``: ``engine/voice`` without the
    espeak-ng variant; ``languages``: the spoken languages of all of them and the TTS text languages."""
    train = manifest["splits"]["train"]
    cfg = manifest.get("config", {})
    speakers = set(train.get("speakers", []))
    languages = set(cfg.get("train_languages", []))
    for sp in cfg.get("extra_train_speakers", []) if manifest.get("corpus") == "extended" else []:
        speakers.add(sp)
        languages.add(EXTRA_ASTERISK_SPEAKERS[sp][1] if sp in EXTRA_ASTERISK_SPEAKERS else sp)
    if manifest.get("corpus") == "extended":
        from ..human_voices import source

        for sid in cfg.get("human_voices", []) or []:
            speakers.add(sid)
            languages.update(source(sid).languages)
    tts = set()
    text_lang = {f"{e}/{v}": lg for e, v, lg in TTS_VOICES}
    for tv in train.get("tts_voices", []):
        engine, voice = tv.split("/", 1)
        base = voice.split("+")[0]
        tts.add(f"{engine}/{base}")
        if engine == "espeak-ng":
            languages.add(_base_language(base))
        elif engine == "festival":
            languages.add(_FESTIVAL_LANGUAGE.get(base, base))
        else:
            languages.add("en")  # flite voices are English
        if f"{engine}/{base}" in text_lang:
            languages.add(text_lang[f"{engine}/{base}"])
    return {"speakers": speakers, "tts": tts, "languages": languages}


def check_held_out(manifests: Sequence[dict], voices: Optional[Sequence[dict]] = None) -> None:
    """Raise :class:`DataError` if a voice of the unseen set (or its language, except the declared human
    hold-out's) is in the training split of any of ``manifests``."""
    voices = unseen_voices() if voices is None else voices
    problems = []
    for m in manifests:
        tv = training_voices(m)
        name = f"corpus {m.get('corpus', 'core')} (fingerprint {m.get('fingerprint', '?')})"
        for v in voices:
            key = v["voice"] if v["engine"] == "asterisk" else f"{v['engine']}/{v['voice']}"
            if key in tv["speakers"] or key in tv["tts"]:
                hint = (f"; build the training data with 'slimtrain data vad --corpus extended --extra-speakers "
                        f"{','.join(s for s in EXTRA_ASTERISK_SPEAKERS if s != HELD_OUT_SPEAKER)}'"
                        if v["engine"] == "asterisk" else "")
                problems.append(f"{v['group']} voice {key!r} is in the training split of {name}{hint}")
            elif v["language"] in tv["languages"] and not v.get("language_seen_in_training"):
                problems.append(f"{v['group']} voice {key!r}: language {v['language']!r} is in the training split "
                                f"of {name}")
    if problems:
        raise DataError("unseen VAD set is not held out: " + "; ".join(problems))


def _fingerprint(cfg: UnseenConfig, data_cfg: VadDataConfig, inventory: list[dict]) -> str:
    blob = json.dumps({"version": UNSEEN_VERSION, "config": config_dict(cfg), "mix": data_cfg.as_dict(),
                       "voices": inventory}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_dict(cfg) -> dict:
    """``asdict(cfg)`` without ``sample_rate`` at 8 kHz, so the 8 kHz sets keep the fingerprints they had
    before the rate was a setting."""
    d = asdict(cfg)
    if d.get("sample_rate") == 8000:
        d.pop("sample_rate")
    return d


def _mix_config(cfg: UnseenConfig) -> VadDataConfig:
    """Mixing settings: those of the extended corpus's test split (every utterance once), at ``cfg.sample_rate``."""
    return VadDataConfig(seed=cfg.seed, corpus="extended", test_minutes=None, sample_rate=cfg.sample_rate,
                         hop=cfg.sample_rate // 100)


def _texts(language: str) -> list[str]:
    from ..spoof.attacks import text_for_tts

    try:
        tx = asterisk_transcripts(language)
    except AudioError as e:
        raise DataError(f"unseen VAD set: {e}") from None
    return sorted({text_for_tts(t) for t in tx.values() if len(t.split()) >= 3})


def _synth(plan: list[dict], sample_rate: int = 8000) -> list[tuple[str, np.ndarray]]:
    from .extended import _synthesise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        audio = _synthesise(plan, workers=1, sample_rate=sample_rate)
    ok = [(f"tts/{p['engine']}/{p['voice']}/{k}", y) for k, (p, y) in enumerate(zip(plan, audio))
          if y is not None and len(y) > 0 and np.any(y)]
    if len(ok) < len(plan) // 2:
        msgs = "; ".join(str(w.message) for w in caught[:3])
        raise DataError(f"unseen VAD set: only {len(ok)} of {len(plan)} synthetic utterances could be made "
                        f"(is the synthesiser installed? {msgs})")
    return ok


def build_unseen_set(out_dir: str | Path, cfg: Optional[UnseenConfig] = None, *, force: bool = False) -> Path:
    """Build (or reuse) the unseen set in ``out_dir`` (``unseen.npz`` + ``unseen_manifest.json``); returns
    the manifest path. A missing source package is a :class:`DataError` naming it."""
    from ..audio import music_on_hold, sound_effects

    cfg = (cfg or UnseenConfig()).validate()
    out = Path(out_dir)
    mpath = out / _MANIFEST
    mix = _mix_config(cfg)
    voices = unseen_voices()
    try:
        prompts = extra_prompts(HELD_OUT_SPEAKER)
        effects = sound_effects()
        music_files = music_on_hold()
    except AudioError as e:
        raise DataError(f"unseen VAD set: {e}") from None
    inventory = [{**v, "version": package_version(v["package"])} for v in voices]
    fp = _fingerprint(cfg, mix, inventory + [{"human_files": len(prompts)}])
    if not force and is_built(mpath, out / _FILE, fp):
        return mpath
    seqs = np.random.SeedSequence([cfg.seed, 11]).spawn(len(GROUPS))
    texts = _texts(cfg.text_language)
    from ..spoof.attacks import ESPEAK_VARIANTS_EXTENDED

    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    rng = np.random.default_rng(seqs[0])
    pick = sorted(rng.choice(len(prompts), min(cfg.human_utterances, len(prompts)), replace=False))
    (good, skipped), (mgood, _), (egood, _) = read_split_audio(  # the test split's music track and effects
        "test", [prompts[j] for j in pick], music_files, _effects_for("test", effects), mix.sample_rate)
    groups["human"] = [(f"{HELD_OUT_SPEAKER}/{p.parent.name}/{p.stem}", x) for p, x in good]
    rng = np.random.default_rng(seqs[1])
    fest = list(UNSEEN_FESTIVAL)
    groups["festival"] = _synth([{"engine": "festival", "voice": fest[i % len(fest)], "language": cfg.text_language,
                                  "text": texts[int(rng.integers(len(texts)))]}
                                 for i in range(cfg.festival_utterances)], mix.sample_rate)
    rng = np.random.default_rng(seqs[2])
    plan = []
    for i in range(cfg.espeak_utterances):
        voice = UNSEEN_ESPEAK[i % len(UNSEEN_ESPEAK)]
        var = str(rng.choice(ESPEAK_VARIANTS_EXTENDED))
        plan.append({"engine": "espeak-ng", "voice": voice + (f"+{var}" if var else ""), "language": voice,
                     "text": texts[int(rng.integers(len(texts)))], "rate": int(rng.integers(120, 220)),
                     "pitch": int(rng.integers(20, 81))})
    groups["espeak-ng"] = _synth(plan, mix.sample_rate)
    music = [x for _, x in mgood]
    fx = [x for _, x in egood]
    seqs = np.random.SeedSequence([cfg.seed, 12]).spawn(len(GROUPS))
    clips = mix_groups([(g, groups[g], seq) for g, seq in zip(GROUPS, seqs)], music, fx, mix)
    manifest = {"set": "unseen", "version": UNSEEN_VERSION, "fingerprint": fp, "config": config_dict(cfg),
                "mix_config": mix.as_dict(), "voices": inventory, "clips": len(clips.group),
                "clips_by_group": {g: clips.group.count(g) for g in GROUPS},
                "speech_minutes_by_group": {g: round(sum(len(x) for _, x in groups[g]) / mix.sample_rate / 60, 2)
                                            for g in GROUPS},
                "skipped_files": [f"{p}: {why}" for p, why in skipped],
                "noise_counts": {k: clips.noise.count(k) for k in sorted(set(clips.noise))}}
    return write_clip_set(out / _FILE, mpath, clips, manifest)


@dataclass
class GroupClips:
    """The clips of a held-out set, built group by group (a TTS group, a human source)."""

    audio: list
    labels: list
    snr_db: list
    noise: list
    sources: list
    group: list
    details: list


def mix_groups(groups: Sequence[tuple[str, list, np.random.SeedSequence]], music: list, fx: list, mix) -> GroupClips:
    """Every group's utterances ``(name, [(source, audio)], seed)``, shuffled by its seed and mixed into clips
    (:func:`~slimtrain.tasks.vad.extended.build_extended_clips`) with the test split's music and effects."""
    clips = GroupClips([], [], [], [], [], [], [])
    for name, group_utts, seq in groups:
        rng = np.random.default_rng(seq)
        utts = [group_utts[j] for j in rng.permutation(len(group_utts))]
        split, det = build_extended_clips(utts, music, fx, mix, rng, None)
        clips.audio.append(split.audio)
        clips.labels.append(split.labels)
        clips.snr_db.append(split.snr_db)
        clips.noise += split.noise
        clips.sources += split.sources
        clips.group += [name] * len(split.audio)
        clips.details += det
    return clips


def write_clip_set(file: Path, mpath: Path, clips: GroupClips, manifest: dict) -> Path:
    """``clips`` to ``file`` (npz) and ``manifest`` plus the per-clip lists to ``mpath``, written atomically;
    returns ``mpath``."""
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, audio=np.concatenate(clips.audio), labels=np.concatenate(clips.labels),
             snr_db=np.concatenate(clips.snr_db), noise=np.asarray(clips.noise), group=np.asarray(clips.group))
    manifest = {**manifest, "clip_groups": clips.group, "clip_sources": clips.sources, "clip_details": clips.details}
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(mpath)
    return mpath


def is_built(manifest: Path, clips: Path, fingerprint: str) -> bool:
    """True when a held-out clip set's ``clips`` exist and its ``manifest`` records ``fingerprint``
    (the same sources and settings: no need to build it again)."""
    if not (manifest.is_file() and clips.is_file()):
        return False
    try:
        return json.loads(manifest.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def load_clip_set(out_dir: str | Path, manifest_name: str, file_name: str, what: str, build_flag: str
                  ) -> tuple[VadSplit, list[str], dict]:
    """``(split, group of each clip, manifest)`` of a held-out clip set in ``out_dir`` (its manifest
    ``manifest_name`` and clips ``file_name``); a missing or damaged set is a :class:`DataError` naming
    ``what`` it is and the ``slimtrain vad eval`` flag that builds it."""
    out = Path(out_dir)
    mpath = out / manifest_name
    if not mpath.is_file():
        raise DataError(f"no {what} in {out} ({manifest_name} missing); build it with "
                        f"'slimtrain vad eval {build_flag} --unseen {out}'")
    try:
        manifest = json.loads(mpath.read_text())
        with np.load(out / file_name) as z:
            split = VadSplit(z["audio"], z["labels"], z["snr_db"], [str(s) for s in z["noise"]],
                             manifest["clip_sources"])
            groups = [str(g) for g in z["group"]]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise DataError(f"{what} in {out} is damaged ({type(e).__name__}: {e}); rebuild it with --force") from None
    return split, groups, manifest


def load_unseen_set(out_dir: str | Path) -> tuple[VadSplit, list[str], dict]:
    """``(split, group of each clip, manifest)`` written by :func:`build_unseen_set`."""
    return load_clip_set(out_dir, _MANIFEST, _FILE, "unseen VAD set", "--set unseen")


def check_training_manifest(manifest: dict) -> None:
    """Raise :class:`HumanVoiceError` if the training split of a VAD corpus manifest uses a held-out human
    source, or (for held-out languages) any voice, human or TTS, of a held-out language."""
    tv = training_voices(manifest)
    used = set(manifest.get("config", {}).get("human_voices", []) or [])
    problems = []
    for s in sources("held-out"):
        if s.id in used or s.id in tv["speakers"]:
            problems.append(f"held-out source {s.id!r} ({s.package}) is in the training split")
    for lg in sorted(held_out_languages() & tv["languages"]):
        problems.append(f"held-out language {lg!r} is spoken in the training split")
    if problems:
        raise HumanVoiceError(f"VAD corpus (fingerprint {manifest.get('fingerprint', '?')}) leaks held-out human "
                              "voices: " + "; ".join(problems))
