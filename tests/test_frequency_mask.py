"""Frequency masking (slimtrain.audio.frontend.FrequencyMask, the countermeasure's ``--freq-mask``): in training
it zeroes at most ``count`` runs of at most ``max_width`` consecutive bands, the same bands in every plane and
frame of a clip, with widths and places drawn uniformly; in evaluation it is the identity, so a trained model
scores, exports and costs exactly as one trained without it."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slimtrain
from slimtrain.apps.spoof.models import build_resnet, make_dynamic_stages
from slimtrain.audio.frontend import FrequencyMask
from slimtrain.tasks.spoof.train import SpoofConfig, model_kwargs
from slimtrain.tasks.study.config import StudyConfigError


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-d bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 3), st.integers(2, 40), st.sampled_from([3, 4]),
       st.integers(0, 2 ** 31 - 1))
def test_masks_whole_bands_within_width_and_count_and_leaves_the_rest(max_width, count, bands, dim, seed):
    torch.manual_seed(seed)
    x = torch.randn(5, 2, bands, 7) + 3.0 if dim == 4 else torch.randn(5, bands, 7) + 3.0  # (no exact zeros)
    y = FrequencyMask(max_width, count).train()(x)
    assert y.shape == x.shape
    zero = (y == 0)
    band_zero = zero.all(dim=-1)  # (batch, [planes,] bands): a band is masked in all frames or in none
    assert torch.equal(band_zero, zero.any(dim=-1))
    if dim == 4:  # the same bands in every plane
        assert torch.equal(band_zero[:, 0], band_zero[:, 1])
        band_zero = band_zero[:, 0]
    assert torch.equal(y[~zero], x[~zero])  # unmasked values pass unchanged
    for row in band_zero:
        runs = _runs(row)
        assert int(row.sum()) <= count * max_width
        assert len(runs) <= count
        if count == 1:
            assert all(r <= max_width for r in runs)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(1, 3), st.integers(0, 2 ** 31 - 1))
def test_identity_in_evaluation_mode(max_width, count, seed):
    torch.manual_seed(seed)
    x = torch.randn(3, 1, 16, 9)
    assert FrequencyMask(max_width, count).eval()(x) is x


def test_widths_and_places_are_uniform():
    """One mask of up to 6 of 20 bands over 20,000 clips: mean width 3 (uniform on 0..6), every width drawn, and
    each band masked about as often as the uniform start predicts (the edges least, the middle most)."""
    torch.manual_seed(0)
    n, bands, w = 20000, 20, 6
    masked = FrequencyMask(w, 1).train()(torch.ones(n, bands, 1))[..., 0] == 0
    widths = masked.sum(dim=1).float()
    assert abs(widths.mean().item() - w / 2) < 0.05
    assert set(widths.long().unique().tolist()) == set(range(w + 1))
    # P(band b masked) = mean over widths v of (#starts covering b) / (bands - v + 1)
    expect = torch.zeros(bands)
    for v in range(1, w + 1):
        for s in range(bands - v + 1):
            expect[s:s + v] += 1.0 / (bands - v + 1) / (w + 1)
    assert torch.allclose(masked.float().mean(dim=0), expect, atol=0.012)


def test_bad_settings_are_named():
    for kw, name in ((dict(max_width=0), "max_width"), (dict(max_width=2, count=0), "count"),
                     (dict(max_width=2.5), "max_width"), (dict(max_width=True), "max_width")):
        with pytest.raises(ValueError, match=name):
            FrequencyMask(**kw)
    with pytest.raises(ValueError, match="expects"):
        FrequencyMask(2).train()(torch.ones(4, 8))
    for kw, flag in ((dict(freq_mask=-1), "freq-mask"), (dict(freq_mask=2, freq_masks=0), "freq-masks"),
                     (dict(freq_mask=4, family="aasist"), "freq-mask")):
        with pytest.raises(StudyConfigError, match=flag):
            SpoofConfig(**kw).check()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_masked_model_scores_exports_and_costs_as_one_without(seed):
    """Same weights with and without the mask: equal outputs in evaluation mode (and different ones in training
    mode, where the mask acts); DCL export is exact and the cost model counts the same MACs."""
    kw = model_kwargs(SpoofConfig(width=4, blocks=(1, 1), n_mels=16, freq_mask=5, freq_masks=2))
    assert kw["freq_mask"] == [5, 2]
    torch.manual_seed(seed)
    masked = build_resnet(**kw)
    plain = build_resnet(**{k: v for k, v in kw.items() if k != "freq_mask"})
    assert masked.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(masked.state_dict())
    x = torch.randn(4, 4000)
    masked.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(masked(x), plain(x))
        masked.train(), plain.train()
        torch.manual_seed(1)
        assert not torch.allclose(masked(x), plain(x))
    make_dynamic_stages(masked, x, (0, 1), 0.25)
    for mod in masked.modules():
        if isinstance(mod, slimtrain.DynamicWidth):
            mod.theta.data.fill_(0.6)
    masked.eval()
    small = slimtrain.export(masked).eval()
    with torch.no_grad():
        assert torch.allclose(masked(x), small(x), atol=1e-5, rtol=0)
    assert isinstance(small.freq_mask, FrequencyMask)
    ref = build_resnet(**{k: v for k, v in kw.items() if k != "freq_mask"})
    assert float(slimtrain.model_cost(build_resnet(**kw), x[:1]).macs) == float(slimtrain.model_cost(ref, x[:1]).macs)
