"""Properties of the waveform augmentations of the extended speech corpora (slimtrain.tasks.augment)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.tasks import augment as G

SR = 8000


def _speechlike(seed: int, n: int = 4000) -> np.ndarray:
    """A band-limited harmonic signal with a syllable-rate envelope (what the codecs are built for)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 12) if f0 * k < 3500)
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t) ** 2
    return (rng.uniform(0.05, 0.5) * x / np.max(np.abs(x))).astype(np.float32)


def _rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), gain_db=st.floats(-40, 40))
def test_gain_scales_rms_by_the_requested_db(seed, gain_db):
    x = _speechlike(seed, 800)
    y = G.apply_gain(x, gain_db)
    assert 20 * np.log10(_rms(y) / _rms(x)) == pytest.approx(gain_db, abs=1e-3)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), limit=st.floats(0.01, 1.0), scale=st.floats(0.1, 20.0))
def test_clipping_bounds_the_waveform_and_leaves_small_samples(seed, limit, scale):
    x = _speechlike(seed, 800) * scale
    y = G.clip_hard(x, limit)
    assert np.max(np.abs(y)) <= limit + 1e-6
    small = np.abs(x) < limit
    np.testing.assert_allclose(y[small], x[small], rtol=1e-6)
    with pytest.raises(G.AugmentError, match="limit"):
        G.clip_hard(x, 0.0)


@pytest.mark.parametrize("codec", ["mulaw", "alaw", "gsm"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(200, 5000))
def test_codec_roundtrip_keeps_length_and_correlates(codec, seed, n):
    if codec == "gsm" and shutil.which("sox") is None:
        pytest.skip("sox not installed (apt-packages.txt)")
    x = _speechlike(seed, n)
    y = {"mulaw": G.mu_law_roundtrip, "alaw": G.a_law_roundtrip, "gsm": G.gsm_roundtrip}[codec](x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.corrcoef(x, y)[0, 1] > 0.9
    assert not np.array_equal(x, y)  # it really is lossy


def test_g711_quantises_to_256_levels():
    x = np.linspace(-1, 1, 20001)
    for f in (G.mu_law_roundtrip, G.a_law_roundtrip):
        y = f(x)
        assert len(np.unique(y)) == 256
        assert np.all(np.diff(y) >= 0)  # monotone


@settings(max_examples=15, deadline=None)
@given(rt60=st.floats(0.15, 1.5), seed=st.integers(0, 10_000), drr=st.floats(-3, 6))
def test_rir_has_the_requested_rt60_within_20_percent(rt60, seed, drr):
    h = G.synthetic_rir(rt60, SR, np.random.default_rng(seed), direct_to_reverb_db=drr)
    assert h[0] == pytest.approx(1.0) or np.max(np.abs(h)) == pytest.approx(1.0)
    assert G.measure_rt60(h, SR) == pytest.approx(rt60, rel=0.2)


def test_reverberation_keeps_length_and_level_and_smears_in_time():
    x = np.zeros(8000, np.float32)
    x[1000:1400] = _speechlike(1, 400)
    y = G.reverberate(x, G.synthetic_rir(0.6, SR, np.random.default_rng(0)))
    assert y.shape == x.shape and _rms(y) == pytest.approx(_rms(x), rel=1e-4)
    assert np.mean(np.abs(y[2000:4000])) > 50 * np.mean(np.abs(x[2000:4000]) + 1e-9)


def test_band_limit_removes_energy_outside_the_band():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32)
    y = G.band_limit(x, SR, 300.0, 3000.0)
    f = np.fft.rfftfreq(len(x), 1 / SR)
    X, Y = np.abs(np.fft.rfft(x)) ** 2, np.abs(np.fft.rfft(y)) ** 2
    out_band = (f < 150) | (f > 3500)
    assert Y[out_band].sum() < 1e-3 * X[out_band].sum()
    in_band = (f > 600) & (f < 2500)
    assert Y[in_band].sum() == pytest.approx(X[in_band].sum(), rel=0.05)
    with pytest.raises(G.AugmentError, match="Nyquist"):
        G.band_limit(x, SR, 300.0, 4000.0)


@pytest.mark.parametrize("beta", [-1.0, 0.0, 1.0, 2.0])
def test_coloured_noise_has_the_requested_spectral_slope(beta):
    x = G.coloured_noise(1 << 15, beta, np.random.default_rng(0))
    assert _rms(x) == pytest.approx(1.0, rel=1e-3)
    f = np.fft.rfftfreq(len(x), 1 / SR)[1:]
    p = np.abs(np.fft.rfft(x))[1:] ** 2
    band = (f > 20) & (f < 3000)
    slope = np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.15)


def test_babble_sums_several_talkers_at_unit_level():
    utts = [_speechlike(s, 3000) for s in range(10)]
    y, used = G.babble(8000, utts, np.random.default_rng(3))
    assert 3 <= len(used) <= 6 and y.shape == (8000,)
    assert _rms(y) == pytest.approx(1.0, rel=1e-3)
    y2, used2 = G.babble(8000, utts, np.random.default_rng(3))
    assert used == used2 and np.array_equal(y, y2)


def test_drawn_chains_are_deterministic_and_applied_in_full():
    a = [G.draw_augmentation(np.random.default_rng([7, i]), SR, p_reverb=0.5, p_band=0.5, p_codec=0.5, p_clip=0.5)
         for i in range(40)]
    b = [G.draw_augmentation(np.random.default_rng([7, i]), SR, p_reverb=0.5, p_band=0.5, p_codec=0.5, p_clip=0.5)
         for i in range(40)]
    assert a == b
    ops = {op["op"] for c in a for part in c.values() for op in part}
    assert ops == {"reverb", "band", "codec", "clip"}
    x = _speechlike(0, 4000)
    for c in a[:8]:
        y = G.apply_augmentation(G.apply_augmentation(x, c["speech"], SR), c["mixture"], SR)
        assert y.shape == x.shape and np.all(np.isfinite(y))
    with pytest.raises(G.AugmentError, match="unknown op 'echo'"):
        G.apply_augmentation(x, [{"op": "echo"}], SR)
