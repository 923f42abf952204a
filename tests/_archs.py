"""Small models of the architecture classes of issue 24 (section 2), shared by their tests and the zoo:
weight-normalised conv stacks, nn.MultiheadAttention in either layout, an encoder-masker-decoder separation
network, an attention that derives its head size at run time."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as wn_new


class Codec(nn.Module):
    """A codec-like encoder (EnCodec/DAC/HiFi-GAN blocks): weight-normed Conv1d stacks, a residual unit,
    a strided down-sampling conv."""

    def __init__(self, norm=wn_new, dim=0):
        super().__init__()
        self.stem = norm(nn.Conv1d(1, 16, 7, padding=3), dim=dim)
        self.res1 = norm(nn.Conv1d(16, 16, 3, padding=2, dilation=2), dim=dim)
        self.res2 = norm(nn.Conv1d(16, 16, 1), dim=dim)
        self.down = norm(nn.Conv1d(16, 24, 4, stride=2, padding=1), dim=dim)
        self.proj = norm(nn.Conv1d(24, 8, 3, padding=1), dim=dim)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.res2(F.elu(self.res1(F.elu(h))))
        return self.proj(F.elu(self.down(F.elu(h))))


class AttnNet(nn.Module):
    """Linear -> nn.MultiheadAttention (own layout) -> residual -> feed-forward -> head."""

    def __init__(self, batch_first: bool, keyword: bool = False, **mha_kw):
        super().__init__()
        self.batch_first, self.keyword = batch_first, keyword
        self.inp = nn.Linear(6, 16)
        self.kv = nn.Linear(6, mha_kw.get("kdim", 16)) if "kdim" in mha_kw else None
        self.att = nn.MultiheadAttention(16, 4, batch_first=batch_first, **mha_kw)
        self.ff = nn.Linear(16, 24)
        self.out = nn.Linear(24, 3)

    def forward(self, x):  # x: (batch, time, 6)
        h = self.inp(x)
        kv = self.kv(x) if self.kv is not None else h
        q, k = (h, kv) if self.batch_first else (h.transpose(0, 1), kv.transpose(0, 1))
        a = self.att(query=q, key=k, value=k)[0] if self.keyword else self.att(q, k, k, need_weights=False)[0]
        a = a if self.batch_first else a.transpose(0, 1)
        return self.out(torch.relu(self.ff(h + a)))


class GlobalNorm(nn.Module):
    """gLN: normalise over channels and time (an unknown layer to slimtrain)."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, c, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1))

    def forward(self, x):
        mu = x.mean(dim=(1, 2), keepdim=True)
        var = ((x - mu) ** 2).mean(dim=(1, 2), keepdim=True)
        return self.gamma * (x - mu) / torch.sqrt(var + 1e-8) + self.beta


class OwnConv(nn.Module):
    """A layer slimtrain does not know that runs a product: its MACs must still be counted."""

    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, c, 3) * 0.1)

    def forward(self, x):
        return F.conv1d(x, self.w, padding=1)


class TasNet(nn.Module):
    """Encoder-masker-decoder separation network (ConvTasNet-like): Conv1d encoder, a masker of 1-D conv blocks
    with PReLU (and a gLN block), a sigmoid mask per source multiplied with the encoding, ConvTranspose1d decoder."""

    def __init__(self, n_src=2, feats=16, hidden=24, bottleneck=12, norm=False):
        super().__init__()
        self.n_src, self.feats = n_src, feats
        self.encoder = nn.Conv1d(1, feats, 8, stride=4, bias=False)
        self.bottleneck = nn.Conv1d(feats, bottleneck, 1)
        self.blocks = nn.ModuleList()
        for d in (1, 2, 4):
            layers = [nn.Conv1d(bottleneck, hidden, 1), nn.PReLU()]
            layers += [GlobalNorm(hidden)] if norm and d == 1 else []
            layers += [nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d, groups=hidden), nn.PReLU(hidden),
                       nn.Conv1d(hidden, bottleneck, 1)]
            self.blocks.append(nn.Sequential(*layers))
        self.own = OwnConv(bottleneck)
        self.mask = nn.Conv1d(bottleneck, n_src * feats, 1)
        self.decoder = nn.ConvTranspose1d(feats, 1, 8, stride=4, bias=False)

    def forward(self, x):
        w = self.encoder(x)
        h = self.bottleneck(w)
        for b in self.blocks:
            h = h + b(h)
        m = torch.sigmoid(self.mask(torch.relu(self.own(h)))).view(x.shape[0], self.n_src, self.feats, -1)
        s = w.unsqueeze(1) * m
        return self.decoder(s.view(-1, self.feats, s.shape[-1])).view(x.shape[0], self.n_src, -1)


class RuntimeHeadAttention(nn.Module):
    """The pattern of transformers' DistilBERT ``MultiHeadSelfAttention`` (before 4.48): ``dim // n_heads`` at
    run time, a literal head count in the view."""

    def __init__(self, dim: int = 32, n_heads: int = 4):
        super().__init__()
        self.n_heads, self.dim = n_heads, dim
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query):
        bs, _, _ = query.size()
        dim_per_head = self.dim // self.n_heads

        def shape(x):
            return x.view(bs, -1, self.n_heads, dim_per_head).transpose(1, 2)

        def unshape(x):
            return x.transpose(1, 2).contiguous().view(bs, -1, self.n_heads * dim_per_head)

        q = shape(self.q_lin(query)) / math.sqrt(dim_per_head)
        k, v = shape(self.k_lin(query)), shape(self.v_lin(query))
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)), dim=-1)
        return self.out_lin(unshape(torch.matmul(weights, v)))


class HeadNet(nn.Module):
    def __init__(self, attn_cls=None):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.att = (attn_cls or RuntimeHeadAttention)()
        self.ff = nn.Linear(32, 48)
        self.ff2 = nn.Linear(48, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.att(h)
        return self.out(h + self.ff2(torch.relu(self.ff(h))))
