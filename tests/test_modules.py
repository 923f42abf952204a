"""TransformerBlock, MaskedLayerNorm, DynamicRecurrent and MelFrontend against plain torch code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain import DynamicRecurrent, DynamicWidth, MaskedLayerNorm, MelFrontend, TransformerBlock
from slimtrain.audio.frontend import mel_filterbank, spread_order


# ------------------------------------------------------------------ TransformerBlock
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_block_from_torch_equals_torch_layer(norm_first, activation):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 40, dropout=0.1, activation=activation, batch_first=True,
                                       norm_first=norm_first, layer_norm_eps=1e-6)
    with torch.no_grad():
        for ln in (layer.norm1, layer.norm2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_()
    blk = TransformerBlock.from_torch(layer)
    assert (blk.d_model, blk.nhead, blk.ff1.out_features, blk.norm1.eps) == (16, 4, 40, 1e-6)
    x = torch.randn(3, 7, 16)
    layer.eval(), blk.eval()
    with torch.no_grad():
        assert (layer(x) - blk(x)).abs().max().item() <= 1e-5
    # same maths in training too (dropout off), where torch does not take its fused path
    layer.dropout.p = layer.dropout1.p = layer.dropout2.p = 0.0
    layer.self_attn.dropout = 0.0  # (TransformerBlock has no dropout on the attention weights)
    blk.dropout.p = 0.0
    layer.train(), blk.train()
    assert (layer(x) - blk(x)).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in blk.parameters()) == sum(p.numel() for p in layer.parameters())


def test_transformer_block_causal_mask_matches_torch():
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    blk = TransformerBlock.from_torch(layer)
    blk.causal = True
    x = torch.randn(2, 5, 8)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        assert (layer(x, src_mask=mask, is_causal=True) - blk(x)).abs().max().item() <= 1e-5


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), head_dim=st.integers(1, 6), t=st.integers(1, 40),
       causal=st.booleans(), norm_first=st.booleans(), div=st.sampled_from([None, 2.5]), seed=st.integers(0, 99))
def test_transformer_block_training_kernel_equals_explicit_products(heads, head_dim, t, causal, norm_first, div, seed):
    """A training step takes torch's fused attention kernel, inference the explicit products: both give the
    same outputs and the same gradients of the input and every weight (incl. a score divisor kept from a
    wider head, as a cut head has)."""
    torch.manual_seed(seed)
    d = heads * head_dim
    blk = TransformerBlock(d + 3, heads, 8, dropout=0.0, norm_first=norm_first, attn_dim=d, causal=causal)
    if div is not None:
        blk.score_div = div
    x = torch.randn(2, t, d + 3, dtype=torch.float64)
    blk.double()
    grads = []
    for training in (True, False):
        blk.train(training)
        blk.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = blk(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append((y.detach(), xi.grad, [p.grad.clone() for p in blk.parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = grads
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(gx1, gx2)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b)


def test_flop_counter_counts_the_training_attention_kernel():
    """torch's FLOP counter gives 0 for the CPU fused attention kernel; slimtrain registers torch's own
    attention formulas for it, so a counted training step holds the products the explicit form has."""
    from torch.utils.flop_counter import FlopCounterMode

    blk = TransformerBlock(16, 2, 32, dropout=0.0, norm_first=True, causal=True)
    x = torch.randn(3, 20, 16)
    blk.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        blk(x)
    explicit = fc.get_total_flops()
    blk.train()
    with FlopCounterMode(display=False) as fc:
        blk(x)
    assert fc.get_total_flops() == explicit  # forward: q k^T and a v, 2 * 3 * 2 * 20 * 20 * 8 each, + the Linears
    attn = 2 * (2 * 3 * 2 * 20 * 20 * 8)
    assert explicit > attn


def test_transformer_block_errors():
    with pytest.raises(ValueError, match="batch_first"):
        TransformerBlock.from_torch(nn.TransformerEncoderLayer(8, 2, 16))
    with pytest.raises(ValueError, match="not divisible by nhead=3"):
        TransformerBlock(8, 3)
    with pytest.raises(ValueError, match="activation must be"):
        TransformerBlock(8, 2, activation="tanh")
    with pytest.raises(ValueError, match="expects \\(batch, time, d_model\\)"):
        TransformerBlock(8, 2)(torch.randn(5, 8))


# ------------------------------------------------------------------ MaskedLayerNorm
@settings(max_examples=30)
@given(n=st.integers(2, 10), u=st.floats(0, 1), seed=st.integers(0, 1000))
def test_masked_layer_norm_eval_equals_layer_norm_of_kept_channels(n, u, seed):
    torch.manual_seed(seed)
    ln = MaskedLayerNorm(n, eps=1e-5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    x = torch.randn(3, 4, n)
    assert torch.allclose(ln(x), F.layer_norm(x, (n,), ln.weight, ln.bias, 1e-5), atol=1e-6)  # unbound
    d = DynamicWidth(n)
    d.set_width(1 + u * (n - 1))
    ln.bind(d)
    d.eval()
    k = d.hard_width
    y = ln(x)
    want = F.layer_norm(x[..., :k], (k,), ln.weight[:k], ln.bias[:k], 1e-5)
    assert torch.allclose(y[..., :k], want, atol=1e-5)
    assert torch.equal(y[..., k:], torch.zeros_like(y[..., k:]))


def test_masked_layer_norm_training_weights_channels_by_share():
    torch.manual_seed(0)
    n, k = 6, 3.25
    ln = MaskedLayerNorm(n, elementwise_affine=False)
    d = DynamicWidth(n).train()
    d.set_width(k)
    ln.bind(d)
    x = torch.randn(2, n, dtype=torch.float32)
    w = torch.tensor([1, 1, 1, 0.25, 0, 0])
    mean = (x * w).sum(-1, keepdim=True) / w.sum()
    var = (((x - mean) ** 2) * w).sum(-1, keepdim=True) / w.sum()
    signal = torch.sin(math.pi / 2 * w)
    want = (x - mean) / torch.sqrt(var + ln.eps) * signal
    assert torch.allclose(ln(x), want, atol=1e-5)


# ------------------------------------------------------------------ DynamicRecurrent
def _hand_cut_lstm(rnn: nn.LSTM, k: int) -> nn.LSTM:
    """An LSTM with k hidden units built from the first k units of every gate block (i, f, g, o)."""
    h, dirs = rnn.hidden_size, 2 if rnn.bidirectional else 1
    cut = nn.LSTM(rnn.input_size, k, rnn.num_layers, batch_first=rnn.batch_first, bidirectional=rnn.bidirectional)
    rows = torch.cat([torch.arange(g * h, g * h + k) for g in range(4)])
    next_cols = torch.cat([torch.arange(j * h, j * h + k) for j in range(dirs)])
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            q = p[rows]
            if name.startswith("weight_hh"):
                q = q[:, :k]
            elif name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
                q = q[:, next_cols]
            getattr(cut, name).copy_(q)
    return cut


@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 2), (False, 3)])
def test_dynamic_recurrent_eval_equals_smaller_lstm(bidirectional, layers):
    torch.manual_seed(0)
    rnn = nn.LSTM(5, 9, layers, batch_first=True, bidirectional=bidirectional)
    d = DynamicWidth(9, dim=-1)
    d.set_width(3.4)
    dyn = DynamicRecurrent(rnn, d).eval()
    cut = _hand_cut_lstm(rnn, 4)
    x = torch.randn(2, 6, 5)
    with torch.no_grad():
        out, (hn, cn) = dyn(x)
        o2, (h2, c2) = cut(x)
    dirs = 2 if bidirectional else 1
    out = out.view(2, 6, dirs, 9)
    assert torch.allclose(out[..., :4], o2.view(2, 6, dirs, 4), atol=1e-6)
    assert torch.equal(out[..., 4:], torch.zeros_like(out[..., 4:]))
    assert torch.allclose(hn[..., :4], h2, atol=1e-6) and torch.allclose(cn[..., :4], c2, atol=1e-6)
    assert not hn[..., 4:].any()


def test_dynamic_recurrent_gradient_reaches_width():
    torch.manual_seed(0)
    d = DynamicWidth(8).train()
    d.set_width(4.5)
    dyn = DynamicRecurrent(nn.GRU(3, 8, batch_first=True), d)
    out, h = dyn(torch.randn(2, 5, 3))
    (out.sum() + h.sum()).backward()
    assert d.theta.grad is not None and d.theta.grad.item() != 0


def test_dynamic_recurrent_errors():
    with pytest.raises(TypeError, match="wraps nn.GRU or nn.LSTM"):
        DynamicRecurrent(nn.RNN(3, 4), DynamicWidth(4))
    with pytest.raises(TypeError, match="proj_size"):
        DynamicRecurrent(nn.LSTM(3, 4, proj_size=2), DynamicWidth(4))
    with pytest.raises(ValueError, match="DCL has 5 channels but hidden_size is 4"):
        DynamicRecurrent(nn.GRU(3, 4), DynamicWidth(5))


# ------------------------------------------------------------------ MelFrontend
def test_mel_frontend_matches_a_hand_written_stft():
    torch.manual_seed(0)
    fe = MelFrontend(sample_rate=8000, n_fft=64, hop_length=16, n_mels=10)
    wav = torch.randn(2, 300, dtype=torch.float64)
    got = fe.double()(wav)
    n = 64
    padded = F.pad(wav[:, None], (n // 2, n // 2), mode="reflect")[:, 0]
    frames = padded.unfold(-1, n, 16) * torch.hann_window(n, dtype=torch.float64)
    power = torch.fft.rfft(frames).abs() ** 2  # (batch, frames, freqs)
    want = torch.log(power @ fe.fbank.T + 1e-6).transpose(1, 2)
    assert got.shape == (2, 10, fe.frames(300)) == want.shape
    assert torch.allclose(got, want, atol=1e-5)  # the module keeps a float32 Hann window


def test_mel_filterbank_is_triangular_and_ordered():
    fb = mel_filterbank(129, 20, 8000)
    assert fb.shape == (20, 129)
    assert torch.all(fb >= 0) and torch.all(fb.max(1).values <= 1 + 1e-6)
    peaks = fb.argmax(1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # band order = frequency order (export keeps the lowest)
    with pytest.raises(ValueError, match="f_min < f_max"):
        mel_filterbank(129, 20, 8000, f_min=5000)


def test_linear_filterbank_has_equal_band_spacing():
    fb = mel_filterbank(257, 31, 8000, scale="linear")
    centres = torch.linspace(0, 4000, 257)[fb.argmax(1)]
    gaps = centres.diff()
    assert torch.all((gaps - 125.0).abs() <= 4000 / 256 + 1e-3)  # 4000 / 32 Hz apart, to one FFT bin
    mel = mel_filterbank(257, 31, 8000)
    mel_gaps = torch.linspace(0, 4000, 257)[mel.argmax(1)].diff()
    assert mel_gaps[-1] > 3 * mel_gaps[0]  # mel bands widen with frequency, linear ones do not
    fe = MelFrontend(n_mels=31, n_fft=512, scale="linear")
    assert torch.equal(fe.fbank, fb) and fe.scale == "linear"
    with pytest.raises(ValueError, match="scale must be one of"):
        mel_filterbank(129, 20, 8000, scale="bark")


def test_mel_frontend_errors():
    with pytest.raises(ValueError, match="expects \\(batch, samples\\)"):
        MelFrontend()(torch.randn(100))
    with pytest.raises(ValueError, match="bad MelFrontend settings"):
        MelFrontend(n_mels=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_spread_order_is_a_permutation_whose_every_prefix_covers_the_range(n, data):
    order = spread_order(n)
    assert sorted(order) == list(range(n))
    k = data.draw(st.integers(1, n))
    kept = sorted(order[:k])
    gaps = [b - a for a, b in zip([0] + kept, kept + [n])]
    assert max(gaps) <= 2 * n / k + 2  # a prefix of the low order would leave a gap of n - k
    assert order[0] == 0


def test_spread_band_order_permutes_the_bands_and_a_cut_keeps_the_whole_range():
    wav = torch.randn(2, 4000) * 0.1
    low, spread = MelFrontend(n_mels=40), MelFrontend(n_mels=40, band_order="spread")
    perm = spread_order(40)
    assert torch.equal(spread.fbank, low.fbank[perm]) and spread.band_order == "spread"
    assert torch.allclose(spread(wav), low(wav)[:, perm])
    m = nn.Sequential(MelFrontend(n_mels=40, band_order="spread"), nn.Conv1d(40, 4, 1), nn.ReLU(), nn.Conv1d(4, 1, 1))
    slimtrain.make_dynamic(m, wav)
    next(d for d in m.modules() if isinstance(d, DynamicWidth) and d.num_channels == 40).set_width(10)  # the bands
    m.eval()
    small = slimtrain.export(m)
    kept = [perm[i] for i in range(10)]
    assert torch.equal(small[0].fbank, low.fbank[kept])
    assert max(kept) >= 30  # the kept bands reach the top of the range (the low order would stop at band 9)
    with torch.no_grad():
        torch.testing.assert_close(small(wav), m(wav))
    with pytest.raises(ValueError, match="band_order"):
        MelFrontend(band_order="high")
