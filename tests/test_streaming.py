"""Streaming: chunked resampling and the chunked CRNN give the same numbers as one offline call."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.audio.io import StreamingResampler, resample_to
from slimtrain.apps.vad.models import CRNNStream, StreamingError, build_vad_model, stream_logits


def _chunks(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, i, k = [], 0, 0
    while i < len(x):
        c = sizes[k % len(sizes)]
        out.append(x[i:i + c])
        i, k = i + c, k + 1
    return out


@pytest.fixture(scope="module")
def crnn():
    """A small CRNN with non-trivial BatchNorm statistics (eval mode), as an exported model would be."""
    torch.manual_seed(3)
    m = build_vad_model("crnn", n_mels=12, conv1=5, conv2=7, hidden=6)
    for bn in (m.norm, m.bn1, m.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return m.eval()


def _sig(z):
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


@settings(max_examples=40)
@given(n=st.integers(129, 2500), sizes=st.lists(st.integers(0, 400), min_size=1, max_size=6).filter(any),
       seed=st.integers(0, 2 ** 16))
def test_crnn_stream_equals_offline_for_any_chunking(crnn, n, sizes, seed):
    x = (np.random.default_rng(seed).standard_normal(n) * 0.2).astype(np.float32)
    with torch.no_grad():
        ref = crnn(torch.from_numpy(x)[None])[0].numpy()
    got = stream_logits(crnn, _chunks(x, sizes))
    assert got.shape == ref.shape == (n // 80 + 1,)
    assert np.abs(_sig(got) - _sig(ref)).max() <= 1e-5


def test_crnn_stream_one_sample_at_a_time_and_frames_appear_as_soon_as_complete(crnn):
    x = (np.random.default_rng(0).standard_normal(700) * 0.2).astype(np.float32)
    s = CRNNStream(crnn)
    counts = [len(s.feed(x[i:i + 1])) for i in range(len(x))]
    # frame t is complete once samples up to 80 t + 128 are in (t = 0 needs 129 for the reflect padding)
    emitted = np.cumsum(counts)
    for n, frames in ((128, 0), (129, 1), (207, 1), (208, 2), (209, 2), (700, 8)):
        assert emitted[n - 1] == frames, n
    tail = s.flush()
    assert emitted[-1] + len(tail) == 700 // 80 + 1
    with pytest.raises(StreamingError, match="already flushed"):
        s.flush()
    with pytest.raises(StreamingError, match="flushed"):
        s.feed(x[:10])


def test_stream_errors_name_the_problem(crnn):
    with pytest.raises(StreamingError, match="Transformer VAD cannot stream cheaply"):
        CRNNStream(build_vad_model("transformer").eval())
    with pytest.raises(StreamingError, match="eval mode"):
        CRNNStream(build_vad_model("crnn").train())
    s = CRNNStream(crnn)
    s.feed(np.zeros(100, np.float32))
    with pytest.raises(StreamingError, match="holds 100 samples; the model needs at least 129"):
        s.flush()


RATES = [6000, 8000, 11025, 16000, 22050, 44100, 48000]


@settings(max_examples=40)
@given(sr=st.sampled_from(RATES), n=st.integers(0, 6000),
       sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=5).filter(any), seed=st.integers(0, 2 ** 16))
def test_streaming_resampler_equals_resample_poly(sr, n, sizes, seed):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    r = StreamingResampler(sr, 8000)
    y = np.concatenate([r.feed(c) for c in _chunks(x, sizes)] + [r.flush()])
    ref = resample_to(x, sr, 8000) if n else np.zeros(0, np.float32)
    assert y.shape == ref.shape
    if n:
        assert np.abs(y - ref).max() <= 1e-6


def test_streaming_resampler_emits_outputs_before_the_end():
    r = StreamingResampler(16000, 8000)
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    first = r.feed(x[:8000])
    # 0.5 s in, everything but the last ~half filter length (10 output samples) is out already
    assert 3980 <= len(first) <= 4000
