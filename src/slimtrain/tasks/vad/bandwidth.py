"""How much of a VAD corpus's speech is truly wideband: the native rate of every speech source.

A corpus built at 16 kHz (``slimtrain data vad --sample-rate 16000``) reads every source at 16 kHz, but
only sources recorded or synthesised at 16 kHz or more carry the band above 4 kHz; the Asterisk prompts
are 8 kHz recordings, so upsampled they hold nothing above 4 kHz. :func:`speech_bandwidth` sums the
speech minutes of a split's clips (``speech_minutes_by_source`` of an extended manifest) by the native
rate of their source, measured from the files (human voices) or from one synthesised word (TTS voices).
"""
from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import soundfile as sf

__all__ = ["WIDEBAND_HZ", "native_rate", "speech_bandwidth"]

#: a source is wideband when its native rate is at least this (it has content above 4 kHz)
WIDEBAND_HZ = 16000
_ASTERISK_HZ = 8000  # every Asterisk prompt package (core voices, es-co, fr-armelle, ru) holds 8 kHz files


@functools.lru_cache(maxsize=None)
def _tts_rate(engine: str, voice: str) -> Optional[int]:
    """Native output rate of one TTS voice, from one synthesised word (None if it cannot be made)."""
    with tempfile.TemporaryDirectory(prefix="slimtrain-rate-") as d:
        out = Path(d) / "x.wav"
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-w", str(out), "--", "a"]
        elif engine == "flite":
            cmd = ["flite", "-voice", voice, "-t", "a", "-o", str(out)]
        elif engine == "festival":
            script = Path(d) / "r.scm"
            script.write_text(f"(voice_{voice})\n(utt.save.wave (utt.synth (Utterance Text \"a\")) \"{out}\" 'riff)\n")
            cmd = ["festival", "-b", str(script)]
        else:
            return None
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
            return int(sf.info(str(out)).samplerate)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            return None


@functools.lru_cache(maxsize=None)
def _human_rate(source_id: str) -> Optional[int]:
    from ..human_voices import HumanVoiceError, source, source_files

    try:
        files = source_files(source(source_id))
        return int(sf.info(str(files[0])).samplerate)
    except (HumanVoiceError, IndexError, OSError, RuntimeError, KeyError):
        return None


def native_rate(source_key: str) -> Optional[int]:
    """Native rate (Hz) of a ``speech_minutes_by_source`` key: ``tts/<engine>/<voice>``, ``human/<id>`` or an
    Asterisk voice / extra speaker name (8 kHz); None where it cannot be measured."""
    parts = source_key.split("/")
    if parts[0] == "tts" and len(parts) >= 3:
        return _tts_rate(parts[1], parts[2].split("+")[0] if parts[1] != "espeak-ng" else parts[2])
    if parts[0] == "human" and len(parts) >= 2:
        return _human_rate(parts[1])
    return _ASTERISK_HZ


def speech_bandwidth(split_info: dict) -> dict:
    """Speech minutes of a split by native bandwidth: ``wideband_minutes`` (native rate >= 16 kHz),
    ``narrowband_minutes``, ``unknown_minutes``, ``wideband_share`` (of the known) and ``rates`` per source.

    ``split_info`` is one split of an extended manifest (it needs ``speech_minutes_by_source``)."""
    by_source = split_info.get("speech_minutes_by_source")
    if not by_source:
        raise ValueError("speech_bandwidth: the split has no 'speech_minutes_by_source' (only the extended corpus "
                         "records it)")
    wide = narrow = unknown = 0.0
    rates: dict[str, Optional[int]] = {}
    for key, minutes in by_source.items():
        r = rates[key] = native_rate(key)
        if r is None:
            unknown += minutes
        elif r >= WIDEBAND_HZ:
            wide += minutes
        else:
            narrow += minutes
    known = wide + narrow
    return {"wideband_minutes": round(wide, 2), "narrowband_minutes": round(narrow, 2),
            "unknown_minutes": round(unknown, 2), "wideband_share": round(wide / known, 4) if known else 0.0,
            "rates": rates}
