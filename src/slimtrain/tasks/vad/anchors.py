"""Shipped VADs as external anchors, run offline on the same 8 kHz clips and frame grid.

* **WebRTC VAD** (``webrtcvad-wheels``, modes 0-3): 10 ms frames of 16-bit PCM; frame ``j`` covers
  samples ``[80j, 80j + 80)``, so our frame ``t`` (centred on sample ``80t``) takes the decision of
  frame ``t`` (5 ms offset). Its score is binary (0/1), so its AUC is that of a single ROC point.
* **Silero VAD** (``silero-vad`` wheel, ``silero_vad/data/silero_vad.jit``, no network): at 8 kHz
  it scores 256-sample (32 ms) chunks; our frame ``t`` takes the probability of the chunk holding
  sample ``80t``. Weights are the ones shipped in the wheel.

Complexity: WebRTC VAD is a fixed-point Gaussian-mixture model on sub-band energies; we do not
count its operations. Silero VAD's parameters are counted from the loaded model; its FLOPs are
not published and not counted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["webrtc_scores", "silero_scores", "silero_params", "silero_teacher", "AnchorError"]


class AnchorError(RuntimeError):
    """A shipped VAD is not installed or cannot run."""


def webrtc_scores(audio: np.ndarray, mode: int, sample_rate: int = 8000, hop: int = 80) -> np.ndarray:
    """0/1 speech decisions of WebRTC VAD ``mode`` on our frame grid, shape (clips, samples // hop + 1)."""
    try:
        import webrtcvad
    except ImportError:
        raise AnchorError("webrtcvad is not installed (pip install webrtcvad-wheels)") from None
    if mode not in (0, 1, 2, 3):
        raise AnchorError(f"WebRTC VAD mode must be 0-3, got {mode}")
    vad = webrtcvad.Vad(mode)
    n_clips, n = audio.shape
    frames = n // hop + 1
    out = np.zeros((n_clips, frames), dtype=np.float32)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    for c in range(n_clips):
        buf = pcm[c]
        last = 0.0
        for j in range(frames):
            seg = buf[j * hop:(j + 1) * hop]
            if len(seg) == hop:
                last = float(vad.is_speech(seg.tobytes(), sample_rate))
            out[c, j] = last  # the final partial frame repeats the previous decision
    return out


def _silero_model():
    try:
        import silero_vad
    except ImportError:
        raise AnchorError("silero-vad is not installed (pip install silero-vad)") from None
    import torch

    path = Path(silero_vad.__file__).parent / "data" / "silero_vad.jit"
    if not path.is_file():
        raise AnchorError(f"silero-vad weights not found at {path}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location="cpu").eval()


def silero_scores(audio: np.ndarray, sample_rate: int = 8000, hop: int = 80, batch: int = 64) -> np.ndarray:
    """Speech probabilities of Silero VAD on our frame grid, shape (clips, samples // hop + 1)."""
    import torch

    model = _silero_model()
    chunk = 256 if sample_rate == 8000 else 512
    n_clips, n = audio.shape
    frames = n // hop + 1
    probs = []
    with torch.no_grad():
        for i in range(0, n_clips, batch):
            x = torch.from_numpy(np.ascontiguousarray(audio[i:i + batch], dtype=np.float32))
            model.reset_states()
            probs.append(model.audio_forward(x, sample_rate).float().numpy())
    p = np.concatenate(probs)  # (clips, chunks)
    idx = np.minimum(np.arange(frames) * hop // chunk, p.shape[1] - 1)
    return p[:, idx].astype(np.float32)


def silero_params() -> Optional[int]:
    """Parameter count of the shipped Silero VAD JIT model (every parameter it holds)."""
    try:
        model = _silero_model()
    except AnchorError:
        return None
    n = sum(p.numel() for p in model.parameters())
    return int(n) if n else None



def silero_teacher(audio: np.ndarray, sample_rate: int = 8000, hop: int = 80):
    """Silero VAD as a distillation teacher for training clips ``audio`` (clips, samples): its speech
    probabilities on our frame grid are computed once (:func:`silero_scores`) and served as logits
    ``log(p / (1 - p))`` (p clipped to [1e-4, 1 - 1e-4]) for any batch of those clips, found by their bytes
    (training draws whole clips; a clip that is not one of them is a named :class:`AnchorError`)."""
    import hashlib

    import torch

    p = np.clip(silero_scores(audio, sample_rate, hop), 1e-4, 1 - 1e-4)
    logits = torch.from_numpy(np.log(p / (1 - p)).astype(np.float32))
    index = {hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest(): i
             for i, a in enumerate(audio)}

    class _SileroTeacher(torch.nn.Module):
        """Cached Silero VAD frame logits of the training clips (Silero's MIT-licensed weights, from its wheel)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = []
            for clip in x.detach().to("cpu", torch.float32).numpy():
                i = index.get(hashlib.sha1(np.ascontiguousarray(clip).tobytes()).digest())
                if i is None:
                    raise AnchorError("the Silero teacher was given a clip it has no labels for: it labels the "
                                      "training clips it was built with, whole")
                rows.append(logits[i])
            return torch.stack(rows).to(x.device)

    return _SileroTeacher()
