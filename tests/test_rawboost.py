"""RawBoost (slimtrain.tasks.rawboost): each operation does what its docstring says, on a batch, repeatably."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.tasks.rawboost import (RAWBOOST_ALGORITHMS, band_response, convolutive_noise, impulsive_noise,
                                      rawboost, stationary_noise)
from slimtrain.train.training import shuffled_cosine_batches


def _speechy(batch: int = 4, n: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 8000
    f0 = 100 + 100 * torch.rand(batch, 1, generator=g)
    x = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    return (0.3 * x * torch.rand(batch, 1, generator=g)).float()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sr=st.sampled_from([8000, 16000]))
def test_band_response_is_a_cascade_of_notches_with_peak_one(seed, sr):
    h = band_response(3, 257, sr, torch.Generator().manual_seed(seed))
    assert h.shape == (3, 257)
    assert torch.allclose(h.amax(-1), torch.ones(3, dtype=h.dtype))
    assert torch.all(h >= 2e-3 ** 5 - 1e-12) and torch.all(h <= 1 + 1e-12)
    # five notches of at most 1000 * sr / 16000 Hz plus their transitions leave a part of the band untouched
    assert torch.all((h > 0.99).float().mean(-1) > 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_stationary_noise_lands_between_10_and_40_db_snr(seed):
    x = _speechy(seed=seed % 1000)
    y = stationary_noise(x, torch.Generator().manual_seed(seed), 8000)
    snr = 10 * torch.log10(x.double().pow(2).mean(-1) / (y - x).double().pow(2).mean(-1))
    assert torch.all(snr >= 10 - 1e-3) and torch.all(snr <= 40 + 1e-3)


def test_impulsive_noise_touches_at_most_the_given_share_of_samples():
    x = _speechy()
    y = impulsive_noise(x, torch.Generator().manual_seed(1), percent=10.0, gain=2.0)
    changed = (y != x).float().mean(-1)
    assert torch.all(changed <= 0.10 + 0.01) and changed.max() > 0.005
    # the change is signal-dependent: |delta| <= gain * |x|
    assert torch.all((y - x).abs() <= 2.0 * x.abs() + 1e-6)


def test_convolutive_noise_keeps_the_peak_and_adds_harmonics():
    n = 8000
    t = torch.arange(n) / 8000
    x = (0.5 * torch.sin(2 * math.pi * 250 * t)).repeat(4, 1)
    y = convolutive_noise(x, torch.Generator().manual_seed(3), 8000)
    assert torch.allclose(y.abs().amax(-1), x.abs().amax(-1), rtol=1e-5)
    spec = torch.fft.rfft(y.double(), dim=-1).abs()
    # the squares and cubes of a 250 Hz tone put energy at 500 and 750 Hz, which a linear filter cannot
    assert torch.all(spec[:, 500] + spec[:, 750] > 1e-3 * spec[:, 250])


@pytest.mark.parametrize("algorithm", RAWBOOST_ALGORITHMS)
def test_rawboost_is_repeatable_and_keeps_shape_and_dtype(algorithm):
    x = _speechy()
    a = rawboost(x, torch.Generator().manual_seed(5), 8000, algorithm)
    b = rawboost(x, torch.Generator().manual_seed(5), 8000, algorithm)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_rawboost_mask_and_probability_leave_other_clips_alone():
    x = _speechy()
    mask = torch.tensor([True, False, True, False])
    y = rawboost(x, torch.Generator().manual_seed(0), 8000, "1+2+3", mask=mask)
    assert torch.equal(y[~mask], x[~mask]) and not torch.equal(y[mask], x[mask])
    assert torch.equal(rawboost(x, torch.Generator().manual_seed(0), 8000, "3", p=0.0), x)


def test_rawboost_refuses_bad_input():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        rawboost(_speechy(), torch.Generator(), 8000, "4")
    with pytest.raises(ValueError, match="probability must be in"):
        rawboost(_speechy(), torch.Generator(), 8000, "3", p=1.5)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        rawboost(torch.zeros(8000), torch.Generator(), 8000)


def test_batches_with_augment_repeat_per_epoch():
    x, y = _speechy(8), torch.zeros(8)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def aug(xb, g):
        return rawboost(xb, g, 8000, "1+2")

    batches = shuffled_cosine_batches(x, y, opt, batch_size=4, epochs=2, seed=7, lr_final=0.1, augment=aug)
    first, again, other = list(batches(1)), list(batches(1)), list(batches(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # a resumed epoch sees the same inputs
    assert not torch.equal(first[0][0], other[0][0])
    plain = list(shuffled_cosine_batches(x, y, opt, batch_size=4, epochs=2, seed=7, lr_final=0.1)(1))
    assert not torch.equal(plain[0][0], first[0][0])
