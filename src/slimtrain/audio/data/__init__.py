"""Users' corpora as torch data: named errors and skip reports, audio loading at a target rate with an
optional cache, VAD readers (RTTM folders, one RTTM, CSV manifests), a crop dataset that streams from
disk, and a noise mixer (shared by the VAD and anti-spoofing readers)."""
from __future__ import annotations

from .audio import (AudioCache, AudioFileError, AudioInfo, EmptyAudioError, MissingAudioError,
                    UnreadableAudioError, audio_info, list_audio, load_audio, resampled_length)
from .errors import CorpusError, SkippedItem, SkipReport
from .noise import NoiseMixer
from .rttm import Segment, merge_segments, read_rttm, read_segment_csv
from .vad import IGNORE, VadCorpus, VadCropDataset, VadRecording, frame_labels_from_segments, read_vad_corpus

__all__ = ["CorpusError", "SkippedItem", "SkipReport", "AudioFileError", "MissingAudioError",
           "UnreadableAudioError", "EmptyAudioError", "AudioInfo", "audio_info", "list_audio", "load_audio",
           "resampled_length", "AudioCache", "NoiseMixer", "Segment", "merge_segments", "read_rttm",
           "read_segment_csv", "IGNORE", "VadCorpus", "VadCropDataset", "VadRecording",
           "frame_labels_from_segments", "read_vad_corpus"]

# anti-spoofing corpora (ASVspoof protocols, In-the-Wild, CSV)
from .spoof_corpus import (SpoofCorpus, SpoofCrops, SpoofItem, SpoofUtterances, read_asv_scores,  # noqa: E402
                           read_spoof_corpus)

__all__ += ["SpoofCorpus", "SpoofCrops", "SpoofItem", "SpoofUtterances", "read_spoof_corpus", "read_asv_scores"]
