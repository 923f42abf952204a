"""A11, unit selection: Festival's cluster-unit voice ``msu_ru_nsh_clunits`` reading Russian sentences.

A unit-selection synthesiser (Festival's ``clunits``, the technique behind most commercial TTS before neural
vocoders) cuts its output from hours of one speaker's real recordings: for each target phone it picks a
stored unit by a target cost and a join cost and concatenates the waveforms. It is the synthesiser the
splices A8/A9 stand in for, with a real unit inventory and join search instead of random syllables. The only
unit-selection voice in Debian is ``festvox-ru`` (Moscow State University, male speaker ``nsh``, 16 kHz).

Its texts are the Russian messages of the game Hedgewars (``hedgewars-data``, ``Data/Locale/ru.txt``: 800
announcer lines, weapon descriptions and menu strings), cleaned of their placeholders and markup
(:func:`russian_texts`) and split into training and evaluation texts by a hash of their key, like the
prompts. Bona fide Russian comes from the Asterisk Russian voice (``asterisk-ru``, a training human voice);
the texts differ from its prompts (there is no Russian transcript in the archive), so A11 does not share
content with a bona fide clip as A1-A4 do. Opt-in: A11 is in neither split by default
(``slimtrain data spoof --eval-attacks ...,A11`` adds it as an unseen family).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

__all__ = ["VOICE", "VOICE_PACKAGE", "TEXT_PACKAGE", "TEXT_FILE", "LANGUAGE", "UnitSelectionError", "russian_texts",
           "text_file", "clean_text"]

VOICE = "msu_ru_nsh_clunits"
VOICE_PACKAGE = "festvox-ru"
TEXT_PACKAGE = "hedgewars-data"
TEXT_FILE = "usr/share/games/hedgewars/Data/Locale/ru.txt"
LANGUAGE = "ru"
#: a text needs this many words with a Cyrillic letter (single words are menu labels and weapon names)
MIN_WORDS = 2
#: and is cut to this many words (a clip is 1 s; weapon descriptions run to paragraphs)
MAX_WORDS = 20

_PLACEHOLDER = re.compile(r"%\d+|%|<[^>]*>")
_COMMAND = re.compile(r"^\s*/\S+")  # a chat command's name (its help text follows)
_KEEP = re.compile(r"[^\w\s.,;:?!'-]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


class UnitSelectionError(RuntimeError):
    """The text source of A11 is missing or empty (the message names the package to install)."""


def text_file(root: Optional[Path] = None) -> Path:
    """``ru.txt`` of ``hedgewars-data``: under ``root`` (one folder per unpacked package) when given, else the
    installed file, else the one unpacked by install.sh (``apt-unpack.txt``) under the project's deb folder."""
    from ..audio import package_path

    return package_path(TEXT_PACKAGE, TEXT_FILE, root)


def clean_text(text: str) -> str:
    """One message as a sentence to read: placeholders (``%1``, ``<text>``), chat command names and markup out,
    the UI's line breaks (``|``) as spaces, symbols other than sentence punctuation out, only words the front
    end can read (:func:`_readable`), at most :data:`MAX_WORDS` words."""
    t = _PLACEHOLDER.sub(" ", _COMMAND.sub(" ", text.replace("|", " ")))
    words = [w for w in _KEEP.sub(" ", t).split() if _readable(w)]
    return " ".join(words[:MAX_WORDS])


def _readable(word: str) -> bool:
    """A word the Russian front end can read: letters (a hyphen inside allowed) with sentence punctuation around
    them. Abbreviations and elisions with a period inside (``т.к.``, ``лю...гм``, ``hedgewars.org``) stop its
    letter-to-sound rules, and a token of punctuation alone is no word."""
    core = word.strip(".,;:?!'-")
    return bool(core) and core.replace("-", "").isalpha()


def russian_texts(root: Optional[Path] = None) -> dict[str, str]:
    """Message key (``"02:00#3"``: the file's key and its occurrence, as the game keeps several lines per key
    and picks one at random) -> cleaned Russian sentence of at least :data:`MIN_WORDS` Cyrillic words,
    from :func:`text_file`; :class:`UnitSelectionError` naming the package when the file is missing."""
    f = text_file(root)
    if not f.is_file():
        raise UnitSelectionError(
            f"A11 texts: {f} not found; unpack {TEXT_PACKAGE} as install.sh does (apt-unpack.txt): apt-get download "
            f"{TEXT_PACKAGE} && dpkg-deb -x {TEXT_PACKAGE}_*.deb <deb folder>/{TEXT_PACKAGE}")
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(";") or "=" not in line:
            continue
        key, text = (s.strip() for s in line.split("=", 1))
        n = seen[key] = seen.get(key, -1) + 1
        t = clean_text(text)
        if sum(bool(_CYRILLIC.search(w)) for w in t.split()) >= MIN_WORDS:
            out[f"{key}#{n}"] = t
    if not out:
        raise UnitSelectionError(f"A11 texts: no Russian sentence in {f}")
    return out
