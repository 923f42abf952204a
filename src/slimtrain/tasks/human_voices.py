"""Registry of the *recorded human* voices in Debian packages that the VAD and anti-spoofing corpora use (no TTS here).

Every source (:data:`SOURCES`) names its Debian package, the folder and file patterns inside it, its
spoken language(s), how many speakers it holds (and how that count was made: speaker identity is
rarely documented, so e.g. KLettres counts one speaker per language folder), its licence and its
role: ``train`` (may be added to the extended corpus's training speech with
``slimtrain data vad --corpus extended --human-voices train``), ``val``/``test`` (the core corpus's
Asterisk voices) or ``held-out`` (never in any training split: the human part of
``slimtrain vad eval --set unseen-human``). Held-out sources marked ``language_held_out`` also keep
their *language* out of training; :func:`slimtrain.tasks.vad.unseen.check_training_manifest` raises on a leak.

:func:`measure` counts files and seconds of each source on this machine (``soundfile`` headers; raw GSM
from its size), :func:`totals` sums speakers, languages, files and minutes per role, and
``slimtrain data human-voices --csv docs/vad_results/human_voices.csv`` writes the table that
``docs/vad.md`` shows (block ``vad-human-voices`` of ``slimtrain report``).

Packages are installed by ``install.sh`` (``apt-packages.txt``) at ``/``; the two GSM Asterisk speakers
are unpacked under :func:`slimtrain.tasks.audio.deb_root` (``apt-unpack.txt``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .audio import deb_root, package_path

__all__ = ["HumanSource", "HumanVoiceError", "SOURCES", "ROLES", "source", "sources", "package_dir",
           "parse_source_list", "source_files", "usable_files", "measure", "totals", "write_csv", "read_csv",
           "held_out_languages", "COLLECTIONS"]

ROLES = ("train", "val", "test", "held-out")
#: bytes per 160-sample frame of raw GSM 06.10 at 8 kHz (Asterisk's .gsm prompts)
_GSM_FRAME_BYTES, _GSM_FRAME_SAMPLES, _GSM_RATE = 33, 160, 8000


class HumanVoiceError(ValueError):
    """A human-voice source that is unknown, not installed, or holds a bad file (the message names it)."""


@dataclass(frozen=True)
class HumanSource:
    """One recorded human-voice source inside a Debian package."""

    id: str
    package: str
    folder: str  #: path of the files inside the package tree, e.g. ``usr/share/klettres/it``
    patterns: tuple[str, ...]  #: globs relative to ``folder``
    languages: tuple[str, ...]
    speakers: int
    speaker_note: str  #: how ``speakers`` was counted
    content: str
    license: str
    role: str  #: one of :data:`ROLES`
    language_held_out: bool = False  #: held-out source whose language no training split may use
    unpacked: bool = False  #: unpacked under ``deb_root()/<package>`` (apt-unpack.txt), not installed
    #: already a voice of the corpora (an Asterisk voice of a split or an extra speaker), so not added again
    #: through ``human_voices``
    builtin: bool = False
    #: ``core``: the sources of the documented corpora, which the role keywords (``train``, ``held-out``) name;
    #: ``expressive``: the Hedgewars voice packs (short acted lines), named by the keyword ``expressive`` or by
    #: id, so that the documented commands still rebuild the same corpora and sets
    collection: str = "core"

    @property
    def speaker_ids(self) -> tuple[str, ...]:
        """One id per speaker (``<source id>`` or ``<source id>#k``)."""
        return (self.id,) if self.speakers == 1 else tuple(f"{self.id}#{k}" for k in range(1, self.speakers + 1))


_KLETTRES_NOTE = "one native speaker per language folder assumed (KLettres credits no speaker per file)"
_KLETTRES_LICENSE = "GPL-2+ (Debian copyright of klettres-data)"
#: KLettres folder -> (language, role); Italian, Lithuanian, Hebrew, Malayalam and Ukrainian are held out
_KLETTRES = {
    "ar": ("ar", "train"), "cs": ("cs", "train"), "da": ("da", "train"), "de": ("de", "train"), "en": ("en", "train"),
    "en_GB": ("en", "train"), "es": ("es", "train"), "fr": ("fr", "train"), "hu": ("hu", "train"),
    "nb": ("nb", "train"), "nds": ("nds", "train"), "nl": ("nl", "train"), "pt_BR": ("pt", "train"),
    "ru": ("ru", "train"), "tn": ("tn", "train"),
    "it": ("it", "held-out"), "lt": ("lt", "held-out"), "he": ("he", "held-out"), "ml": ("ml", "held-out"),
    "uk": ("uk", "held-out"),
}
_FILLETS_NOTE = ("the two lead characters only (files *-m-* small fish, *-v-* big fish), one actor each "
                 "assumed; other characters left out")

_HEDGEWARS_NOTE = ("one speaker per voice pack assumed (the packs credit no speaker); the English accent packs "
                   "may share actors, so every held-out pack is in another language; Robot (processed), Singer "
                   "(sung) and Russian / Russian_pl (language undocumented) left out")
#: Hedgewars voice pack -> (language, role): the English packs and the Russian one train, the Spanish, Polish and
#: Ukrainian ones are held out
_HEDGEWARS = {
    "Default": ("en", "train"), "British": ("en", "train"), "Classic": ("en", "train"), "HillBilly": ("en", "train"),
    "Mobster": ("en", "train"), "Pirate": ("en", "train"), "Surfer": ("en", "train"), "Default_ru": ("ru", "train"),
    "Default_es": ("es", "held-out"), "Default_pl": ("pl", "held-out"), "Default_uk": ("uk", "held-out"),
}
#: languages of the held-out KLettres speakers, which no training split may speak (a held-out pack in one of
#: them holds its language out too)
_HELD_OUT_LANGUAGES = {lang for lang, role in _KLETTRES.values() if role == "held-out"}

SOURCES: tuple[HumanSource, ...] = (
    # the Asterisk voices of the core corpus (one professional speaker per voice folder)
    HumanSource("asterisk-en", "asterisk-core-sounds-en-wav", "usr/share/asterisk/sounds/en_US_f_Allison",
                ("**/*.wav",), ("en",), 1, "voice folder en_US_f_Allison", "PBX prompts", "CC-BY-SA-3.0", "train", builtin=True),
    HumanSource("asterisk-es", "asterisk-core-sounds-es-wav", "usr/share/asterisk/sounds/es_MX_f_Allison",
                ("**/*.wav",), ("es",), 1, "voice folder es_MX_f_Allison", "PBX prompts", "CC-BY-SA-3.0", "train", builtin=True),
    HumanSource("asterisk-fr", "asterisk-core-sounds-fr-wav", "usr/share/asterisk/sounds/fr_CA_f_June",
                ("**/*.wav",), ("fr",), 1, "voice folder fr_CA_f_June", "PBX prompts", "CC-BY-SA-3.0", "val", builtin=True),
    HumanSource("asterisk-it", "asterisk-core-sounds-it-wav", "usr/share/asterisk/sounds/it_IT_m_Carlo",
                ("**/*.wav",), ("it",), 1, "voice folder it_IT_m_Carlo", "PBX prompts", "CC-BY-SA-3.0", "test", builtin=True),
    HumanSource("es-co", "asterisk-prompt-es-co", "usr/share/asterisk/sounds/es", ("**/*.gsm",), ("es",), 1,
                "one speaker (package description)", "PBX prompts (GSM)", "GPL-2 (Debian copyright)", "train",
                unpacked=True, builtin=True),
    HumanSource("fr-armelle", "asterisk-prompt-fr-armelle", "usr/share/asterisk/sounds/fr", ("**/*.gsm",), ("fr",), 1,
                "Armelle Desjardins (package description)", "PBX prompts (GSM)", "BSD-style (Debian copyright)",
                "held-out", unpacked=True, builtin=True),
    # new: a Russian professional IVR voice (training) and a second Italian PBX voice (held out)
    HumanSource("asterisk-ru", "asterisk-core-sounds-ru-wav", "usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU",
                ("**/*.wav",), ("ru",), 1, "voice folder ru_RU_f_IvrvoiceRU (ivrvoice.ru)", "PBX prompts",
                "CC-BY-3.0", "train"),
    HumanSource("it-menardi", "asterisk-prompt-it-menardi-wav", "usr/share/asterisk/sounds/it_IT_f_Menardi",
                ("**/*.wav",), ("it",), 1, "voice folder it_IT_f_Menardi (Paola Dal Zot, Debian copyright)",
                "PBX prompts", "CC-BY-SA-3.0", "held-out", language_held_out=True),
    # KLettres: letters and syllables read by native speakers
    *(HumanSource(f"klettres-{d}", "klettres-data", f"usr/share/klettres/{d}", ("alpha/*.ogg", "syllab/*.ogg"),
                  (lang,), 1, _KLETTRES_NOTE, "letters and syllables", _KLETTRES_LICENSE, role,
                  language_held_out=role == "held-out")
      for d, (lang, role) in _KLETTRES.items()),
    # Fish Fillets NG: acted game dialogue (Czech and Dutch dubs)
    *(HumanSource(f"fillets-{lang}", f"fillets-ng-data-{lang}", "usr/share/games/fillets-ng/sound",
                  (f"*/{lang}/*-m-*.ogg", f"*/{lang}/*-v-*.ogg"), (lang,), 2, _FILLETS_NOTE, "acted game dialogue",
                  "GPL-2+ (Debian copyright)", "train")
      for lang in ("cs", "nl")),
    # Hedgewars: voice packs of short acted lines ("Incoming!", "Missed", laughs and grunts), one pack per folder
    *(HumanSource(f"hedgewars-{pack.lower().replace('_', '-')}", "hedgewars-data",
                  f"usr/share/games/hedgewars/Data/Sounds/voices/{pack}", ("*.ogg",), (lang,), 1, _HEDGEWARS_NOTE,
                  "short acted game lines", "GFDL-1.3 (Debian copyright)", role, language_held_out=lang in _HELD_OUT_LANGUAGES, unpacked=True, collection="expressive")
      for pack, (lang, role) in _HEDGEWARS.items()),
)


COLLECTIONS = ("core", "expressive")


def sources(role: Optional[str] = None, *, addable: bool = False,
            collection: Optional[str] = None) -> list[HumanSource]:
    """The registered sources, optionally only those of one role and/or one :data:`COLLECTIONS` entry;
    ``addable``: only those that ``human_voices`` can add (not :attr:`HumanSource.builtin`)."""
    if role is not None and role not in ROLES:
        raise HumanVoiceError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    if collection is not None and collection not in COLLECTIONS:
        raise HumanVoiceError(f"unknown collection {collection!r}; choose from {', '.join(COLLECTIONS)}")
    return [s for s in SOURCES if (role is None or s.role == role) and not (addable and s.builtin)
            and (collection is None or s.collection == collection)]


def source(source_id: str) -> HumanSource:
    """The source with this id (:class:`HumanVoiceError` naming the known ids otherwise)."""
    for s in SOURCES:
        if s.id == source_id:
            return s
    raise HumanVoiceError(f"unknown human-voice source {source_id!r}; known: {', '.join(s.id for s in SOURCES)}")


def parse_source_list(text: str, role: str = "train") -> list[str]:
    """Source ids from a command-line value: ``none``, or comma-separated items, each ``role`` (every addable
    core source of that role: what the documented corpora use), ``expressive`` (every addable source of that
    role in the expressive collection), ``all`` (both) or a source id (:class:`HumanVoiceError` naming unknown
    ones). Ids keep the order given, duplicates dropped."""
    t = text.strip()
    if t == "none":
        return []
    keywords = {role: "core", "expressive": "expressive", "all": None}
    known = {s.id for s in SOURCES}
    ids: list[str] = []
    bad: list[str] = []
    for item in (i.strip() for i in t.split(",")):
        if not item:
            continue
        if item in keywords:
            ids += [s.id for s in sources(role, addable=True, collection=keywords[item])]
        elif item in known:
            ids.append(item)
        else:
            bad.append(item)
    if bad or not ids:
        raise HumanVoiceError(f"unknown human-voice source(s) {', '.join(bad) or repr(text)}; use {role!r}, "
                              f"'expressive', 'all' or ids from: {', '.join(s.id for s in sources(role, addable=True))}")
    return list(dict.fromkeys(ids))


def held_out_languages() -> set[str]:
    """Languages that no training split may use (those of held-out sources with ``language_held_out``)."""
    return {lg for s in SOURCES if s.role == "held-out" and s.language_held_out for lg in s.languages}


def package_dir(src: HumanSource, root: Optional[str | Path] = None) -> Path:
    """The folder of ``src``'s files: ``root/<package>/<folder>`` when ``root`` is given (one folder per
    package, like an unpacked tree), else the installed ``/<folder>``, else ``deb_root()/<package>/<folder>``."""
    return package_path(src.package, src.folder, root, installed_first=not src.unpacked)


def source_files(src: HumanSource, root: Optional[str | Path] = None) -> list[Path]:
    """Sorted files of ``src`` (:class:`HumanVoiceError` with the install command when none is found)."""
    folder = package_dir(src, root)
    files = sorted({f for pat in src.patterns for f in folder.glob(pat) if f.is_file()}) if folder.is_dir() else []
    if not files:
        how = (f"apt-get download {src.package} && dpkg-deb -x {src.package}_*.deb {deb_root() / src.package} "
               "(apt-unpack.txt)" if src.unpacked else f"apt-get install {src.package} (apt-packages.txt)")
        raise HumanVoiceError(f"human-voice source {src.id!r}: no files matching {', '.join(src.patterns)} in "
                              f"{folder}; install it with: {how}, or run install.sh")
    return files


def _seconds(path: Path) -> float:
    import soundfile as sf

    if path.suffix.lower() == ".gsm":
        n = path.stat().st_size
        if n < _GSM_FRAME_BYTES or n % _GSM_FRAME_BYTES:
            raise HumanVoiceError(f"{path}: not a raw GSM 06.10 file ({n} bytes is not a whole number of "
                                  f"{_GSM_FRAME_BYTES}-byte frames)")
        return n // _GSM_FRAME_BYTES * _GSM_FRAME_SAMPLES / _GSM_RATE
    try:
        info = sf.info(str(path))
    except Exception as e:  # LibsndfileError / RuntimeError on a damaged or non-audio file
        raise HumanVoiceError(f"{path}: not a readable audio file ({' '.join(str(e).split())[:160]})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise HumanVoiceError(f"{path}: empty audio file ({info.frames} samples)")
    return info.frames / info.samplerate


def usable_files(src: HumanSource, root: Optional[str | Path] = None) -> list[Path]:
    """:func:`source_files` less the empty or unreadable ones (checked from their headers; one warning names
    them); :class:`HumanVoiceError` when none is left."""
    import warnings

    files, bad = [], []
    for f in source_files(src, root):
        try:
            _seconds(f)
            files.append(f)
        except HumanVoiceError as e:
            bad.append(str(e))
    if not files:
        raise HumanVoiceError(f"human-voice source {src.id!r}: none of its {len(bad)} files is usable; first: {bad[0]}")
    if bad:
        warnings.warn(f"human-voice source {src.id!r}: skipped {len(bad)} of {len(bad) + len(files)} files: "
                      + "; ".join(bad[:3]), stacklevel=2)
    return files


def measure(selection: Optional[Iterable[HumanSource]] = None, root: Optional[str | Path] = None) -> list[dict]:
    """One row per source: the registry fields plus the usable ``files`` found, their ``minutes`` (from the
    file headers) and the ``bad_files`` skipped (empty or unreadable; one warning names them). A missing
    package, or a source whose every file is bad, raises :class:`HumanVoiceError` naming it."""
    import warnings

    from .audio import package_version

    rows = []
    for s in (SOURCES if selection is None else selection):
        files = source_files(s, root)
        seconds, bad = 0.0, []
        for f in files:
            try:
                seconds += _seconds(f)
            except HumanVoiceError as e:
                bad.append(str(e))
        if len(bad) == len(files):
            raise HumanVoiceError(f"human-voice source {s.id!r}: none of its {len(files)} files is usable; "
                                  f"first: {bad[0]}")
        if bad:
            warnings.warn(f"human-voice source {s.id!r}: skipped {len(bad)} of {len(files)} files: "
                          + "; ".join(bad[:3]), stacklevel=2)
        rows.append({"id": s.id, "package": s.package, "version": package_version(s.package) if root is None else "",
                     "role": s.role, "languages": " ".join(s.languages), "speakers": s.speakers,
                     "speaker_note": s.speaker_note, "content": s.content, "license": s.license,
                     "language_held_out": s.language_held_out, "files": len(files) - len(bad),
                     "bad_files": len(bad), "minutes": round(seconds / 60, 2)})
    return rows


def totals(rows: Sequence[dict]) -> dict[str, dict]:
    """Per role and ``all``: sources, speakers, distinct languages, files and minutes of measured ``rows``."""
    out = {}
    for role in (*ROLES, "all"):
        sel = [r for r in rows if role == "all" or r["role"] == role]
        if not sel:
            continue
        langs = sorted({lg for r in sel for lg in str(r["languages"]).split()})
        out[role] = {"sources": len(sel), "speakers": sum(int(r["speakers"]) for r in sel), "languages": langs,
                     "n_languages": len(langs), "files": sum(int(r["files"]) for r in sel),
                     "minutes": round(sum(float(r["minutes"]) for r in sel), 2)}
    return out


_CSV_KEYS = ("id", "package", "version", "role", "languages", "speakers", "speaker_note", "content", "license",
             "language_held_out", "files", "bad_files", "minutes")


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write measured rows to CSV (the table ``docs/vad.md`` shows)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, _CSV_KEYS)
        w.writeheader()
        w.writerows({k: r[k] for k in _CSV_KEYS} for r in rows)
    return p


def read_csv(path: str | Path) -> list[dict]:
    """Rows written by :func:`write_csv` (numbers parsed); a missing column is a named error."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise HumanVoiceError(f"cannot read {p}: {e}") from None
    for i, r in enumerate(rows, start=2):
        missing = [k for k in _CSV_KEYS if r.get(k) in (None,)]
        if missing:
            raise HumanVoiceError(f"{p} line {i}: missing column(s) {', '.join(missing)}")
        try:
            r["speakers"], r["files"], r["bad_files"] = int(r["speakers"]), int(r["files"]), int(r["bad_files"])
            r["minutes"] = float(r["minutes"])
        except ValueError as e:
            raise HumanVoiceError(f"{p} line {i}: {e}") from None
        r["language_held_out"] = r["language_held_out"] == "True"
    return rows
