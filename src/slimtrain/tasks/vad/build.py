"""Build (or reuse) a VAD corpus: the core one (:mod:`.data`) or the extended one (:mod:`.extended`)."""
from __future__ import annotations

from pathlib import Path

from .data import VadDataConfig, _read_manifest, build_core_vad_data, splits_complete
from .extended import build_extended_vad_data

__all__ = ["build_vad_data"]


def build_vad_data(cfg: VadDataConfig, cache_dir: str | Path, *, force: bool = False,
                   progress: bool = False) -> Path:
    """Build (or reuse) the three splits in ``cache_dir``; returns the manifest path.

    ``cfg.corpus`` chooses the corpus; with no choice, a folder already built with ``--corpus extended``
    is read as it is. Unreadable speech or music files are skipped with one warning (counted in the manifest).
    """
    cfg.validate()
    cache = Path(cache_dir)
    manifest_path = cache / "manifest.json"
    old = _read_manifest(manifest_path)
    if cfg.corpus is None and old.get("corpus", "core") != "core" and splits_complete(cache) and not force:
        return manifest_path  # a folder built with --corpus extended is read as it is
    if cfg.effective_corpus == "extended":
        return build_extended_vad_data(cfg, cache, force=force, progress=progress)
    return build_core_vad_data(cfg, cache, force=force, progress=progress)
