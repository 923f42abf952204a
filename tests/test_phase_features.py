"""Phase features (slimtrain.audio.frontend.BandReassignment): the STFT's reassignment operators pooled in the
filterbank's bands read where in time (group delay) and frequency (instantaneous frequency) a band's energy sits."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.audio.frontend import BandReassignment, MelFrontend, parse_phase_features

SR = 8000


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([256, 512]), st.integers(-64, 64), st.integers(5, 20), st.floats(0.1, 10.0))
def test_group_delay_of_an_impulse_is_its_offset_from_the_frame_centre(n_fft, offset, frame, amplitude):
    """An impulse ``offset`` samples after frame ``frame``'s centre: every band of that frame reads
    ``offset / (n_fft / 2)``, at any level (within the window's middle half, where the impulse holds the frame's
    energy far above the 1e-6 floor, and in frames whose window stays clear of the reflected edge)."""
    hop = 80
    wav = torch.zeros(1, 4000)
    wav[0, frame * hop + offset] = amplitude
    out = BandReassignment("gd", SR, n_fft, hop, n_mels=24)(wav)[0, :, frame]
    assert torch.allclose(out, torch.full_like(out, offset / (n_fft / 2)), atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(st.integers(16, 100), st.floats(-0.45, 0.45), st.floats(0.0, 2 * math.pi))
def test_instantaneous_frequency_of_a_sinusoid_is_its_offset_from_each_bin(k, delta, phase):
    """A sinusoid at bin ``k + delta``: bins ``k-1``, ``k``, ``k+1`` (one band each) read ``delta + 1``, ``delta``,
    ``delta - 1`` bins (scaled by the clamp range); from bin 16 up, where the image at ``-(k + delta)`` no longer
    leaks in through the window's side lobes (at bin 8 it adds up to 0.007 bins)."""
    n_fft = 256
    t = torch.arange(8000, dtype=torch.float64)
    wav = (0.1 * torch.cos(2 * math.pi * (k + delta) * t / n_fft + phase)).float().unsqueeze(0)
    m = BandReassignment("if", SR, n_fft, 80, n_mels=n_fft // 2 + 1)
    m.fbank = torch.eye(n_fft // 2 + 1)
    out = m(wav)[0, k - 1:k + 2, 50] * m.IF_RANGE_BINS
    assert torch.allclose(out.double(), torch.tensor([delta + 1, delta, delta - 1], dtype=torch.float64), atol=3e-3)


@pytest.mark.parametrize("feature", ["gd", "if"])
def test_bounded_level_free_and_zero_in_silence(feature):
    g = torch.Generator().manual_seed(0)
    speechy = torch.randn(3, 8000, generator=g) * torch.linspace(0, 1, 8000) ** 2
    m = BandReassignment(feature, SR, 512, 160, n_mels=64)
    out = m(speechy)
    assert out.shape == MelFrontend(SR, 512, 160, 64)(speechy).shape
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.1
    # a ratio of two pooled spectra: no gain in it (where the frames hold energy, not the fade-in's first ones)
    assert torch.allclose(m(3.0 * speechy)[..., 10:], out[..., 10:], atol=1e-3)
    assert torch.equal(m(torch.zeros(2, 8000)), torch.zeros_like(m(torch.zeros(2, 8000))))


def test_parse_and_bad_settings_are_named():
    assert parse_phase_features(None) == parse_phase_features("none") == parse_phase_features("") == ()
    assert parse_phase_features("gd+if") == ("gd", "if") and parse_phase_features(" IF ") == ("if",)
    for bad, msg in (("gd+mgd", "phase feature 'mgd' is unknown"), ("if+if", "listed twice")):
        with pytest.raises(ValueError, match=msg):
            parse_phase_features(bad)
    with pytest.raises(ValueError, match="feature must be one of"):
        BandReassignment("phase")
    from slimtrain.apps.spoof.models import build_resnet

    for bad, msg in ((("gd", "gd"), "listed twice"), (("gd", "mgd"), "phase feature 'mgd' is unknown")):
        with pytest.raises(ValueError, match=msg):
            build_resnet(width=2, blocks=(1, 1, 1, 1), n_mels=8, phase=bad)
    with pytest.raises(ValueError, match="expects \\(batch, samples\\)"):
        BandReassignment("gd")(torch.zeros(8000))
