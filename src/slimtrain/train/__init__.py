"""Training infrastructure on top of the core: :mod:`.training` (``fit``: checkpoints, resume, settling,
compaction), :mod:`.distributed` (DDP under torchrun), :mod:`.checkpoint` (recipes, task registry, loading),
:mod:`.record` (per-epoch width records), :mod:`.sweep_engine` (local processes or Ray),
:mod:`.stats` (seeds and intervals)."""
