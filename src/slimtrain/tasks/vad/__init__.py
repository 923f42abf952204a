"""Voice activity detection case study (issue 3): real speech from Debian's Asterisk prompts mixed
with music and synthetic noise; CRNN and Transformer VADs with dynamic widths; baselines and
shipped VADs as anchors. See ``docs/vad.md``.

Importing this package registers the ``"vad"`` checkpoint builder.
"""
from . import train  # noqa: F401  (registers the "vad" builder)
from ...apps.vad.models import FAMILIES, build_vad_model

__all__ = ["FAMILIES", "build_vad_model"]
