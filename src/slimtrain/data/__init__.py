"""Users' corpora as torch data: named errors and skip reports, audio loading at a target rate with an
optional cache (shared by the VAD and anti-spoofing readers)."""
from __future__ import annotations

from .audio import (AudioCache, AudioFileError, AudioInfo, EmptyAudioError, MissingAudioError,
                    UnreadableAudioError, audio_info, list_audio, load_audio, resampled_length)
from .errors import CorpusError, SkippedItem, SkipReport

__all__ = ["CorpusError", "SkippedItem", "SkipReport", "AudioFileError", "MissingAudioError",
           "UnreadableAudioError", "EmptyAudioError", "AudioInfo", "audio_info", "list_audio", "load_audio",
           "resampled_length", "AudioCache"]

# anti-spoofing corpora (ASVspoof protocols, In-the-Wild, CSV)
from .spoof_corpus import (SpoofCorpus, SpoofCrops, SpoofItem, SpoofUtterances, read_asv_scores,  # noqa: E402
                           read_spoof_corpus)

__all__ += ["SpoofCorpus", "SpoofCrops", "SpoofItem", "SpoofUtterances", "read_spoof_corpus", "read_asv_scores"]
