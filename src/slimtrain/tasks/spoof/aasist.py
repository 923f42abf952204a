"""AASIST (Jung et al., ICASSP 2022): raw-waveform countermeasure with spectro-temporal graph attention.

Written from the paper ("AASIST: Audio Anti-Spoofing using Integrated Spectro-Temporal Graph
Attention Networks") and its published configurations (``AASIST.conf`` / ``AASIST-L.conf``):

* **front end**: a RawNet2-style sinc convolution, ``filts[0]`` band-pass filters with mel-spaced fixed
  cut-offs (Hamming-windowed ideal band-passes, odd length ``first_conv + 1``; no learnable
  parameters, as in AASIST), then ``|.|``, a 3x3 max-pool over (filter, time), BatchNorm and SELU;
* **encoder**: six residual blocks of 2-D convolutions (kernels 2x3) over (filter, time), each followed
  by a (1, 3) max-pool over time;
* **graph module**: the spectral graph (nodes = filters, max over time, plus a learned position
  embedding) and the temporal graph (nodes = frames, max over filters), each through a graph attention
  layer (GAT) and a graph pool (top-k of a learned node score); two branches of heterogeneous stacking
  graph attention (HS-GAL: two layers each, the second residual, with a stack node ("master")), a
  graph pool between the layers; the max graph operation (element-wise max of the branches) and the
  readout (max |.| and mean of each node type, the stack node) into a two-class linear layer.

The model maps ``(batch, samples)`` to one logit per clip, bona fide positive: ``z_bona - z_spoof`` of
the two-class output layer (softmax cross-entropy on two logits equals BCE on their difference).

Written so that :func:`slimtrain.make_dynamic` can follow every width (the changes to the published code
are the same functions, rewritten, except the last two points, which change the parameter count):

* the pairwise node products are a broadcast product ``x_i * x_j``; the attention logits are the
  learned vector ``w`` times ``tanh(att_proj(.))`` summed over the channels (``matmul`` by a
  ``(d, 1)`` parameter in the published code; the same numbers);
* HS-GAL's attention "board" (three vectors for type-1/type-1, type-2/type-2 and cross edges) is
  selected with a fixed edge-type mask instead of writes into a zero tensor;
* graph pooling gathers the top-k nodes with ``torch.take_along_dim`` (``gather`` in the published code);
* **residual blocks** are conv-BN-SELU-conv-BN (+ shortcut) -> max-pool: the published block computes
  ``conv1`` on its input and never uses its first BatchNorm (a no-op there); here every BatchNorm directly
  follows its convolution, which a DCL needs (BatchNorm statistics of a cut channel are not zero).
  Net effect: the first BatchNorm of blocks 2-6 (over the input width) is replaced by one after ``conv2``
  of every block (over the output width);
* the node projections with and without attention (two ``Linear``s summed, then BatchNorm) are one
  ``Linear`` over ``[aggregated, x]`` (the same function; one bias vector of ``out_dim`` fewer), so the
  BatchNorm directly follows one layer.

Parameter counts (tested, ``tests/test_aasist.py``): ``aasist`` 297,738 (paper 297,866, -128);
``aasist-l`` 85,178 (paper 85,306, -128): the BatchNorm placement adds 128 (full) / 48 (L), the merged
projections remove one bias of ``out_dim`` per graph layer, 256 / 176 (see ``docs/spoof.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AASISTConfig", "AASIST", "SincConv", "ResidualBlock", "GraphAttention", "HSGraphAttention",
           "GraphPool", "build_aasist", "AASIST_CONFIGS", "PAPER_PARAMS"]


@dataclass(frozen=True)
class AASISTConfig:
    """The published configuration fields (``filts``, ``gat_dims``, ``pool_ratios``, ``temperatures``)."""

    n_sinc: int = 70
    first_conv: int = 128
    filts: tuple[tuple[int, int], ...] = ((1, 32), (32, 32), (32, 64), (64, 64))
    gat_dims: tuple[int, int] = (64, 32)
    pool_ratios: tuple[float, float, float, float] = (0.5, 0.7, 0.5, 0.5)
    temperatures: tuple[float, float, float, float] = (2.0, 2.0, 100.0, 100.0)

    def validate(self) -> "AASISTConfig":
        if self.n_sinc < 3:
            raise ValueError(f"n_sinc must be >= 3 (the 3x3 max-pool), got {self.n_sinc}")
        if len(self.filts) != 4 or any(len(f) != 2 or min(f) < 1 for f in self.filts):
            raise ValueError(f"filts must be four (in, out) pairs of positive integers, got {self.filts!r}")
        if self.filts[0][0] != 1:
            raise ValueError(f"the first residual block reads one channel (filts[1][0] must be 1), got {self.filts[0]}")
        for a, b in zip(self.filts, self.filts[1:]):
            if a[1] != b[0]:
                raise ValueError(f"filts do not chain: {a} then {b}")
        if len(self.gat_dims) != 2 or min(self.gat_dims) < 1:
            raise ValueError(f"gat_dims must be two positive integers, got {self.gat_dims!r}")
        if len(self.pool_ratios) != 4 or not all(0 < r <= 1 for r in self.pool_ratios):
            raise ValueError(f"pool_ratios must be four numbers in (0, 1], got {self.pool_ratios!r}")
        if len(self.temperatures) != 4 or not all(t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be four positive numbers, got {self.temperatures!r}")
        return self


#: the two published configurations (AASIST.conf, AASIST-L.conf)
AASIST_CONFIGS: dict[str, AASISTConfig] = {
    "aasist": AASISTConfig(),
    "aasist-l": AASISTConfig(filts=((1, 32), (32, 32), (32, 24), (24, 24)), gat_dims=(24, 32),
                             pool_ratios=(0.4, 0.5, 0.7, 0.5)),
}
#: parameter counts stated by the paper / the official configurations
PAPER_PARAMS = {"aasist": 297_866, "aasist-l": 85_306}


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


class SincConv(nn.Module):
    """Fixed mel-spaced band-pass filter bank (RawNet2/AASIST front end): ``(B, samples) -> (B, n, frames)``.

    Filter ``i`` passes ``[f_i, f_{i+1}]`` with edges equally spaced on the mel scale from 0 to the Nyquist
    frequency; each is an ideal band-pass (difference of two sincs) under a Hamming window of odd length.
    The filters are a buffer: no learnable parameters (as in AASIST)."""

    def __init__(self, n_filters: int = 70, kernel_size: int = 128, sample_rate: int = 16000) -> None:
        super().__init__()
        k = kernel_size + 1 if kernel_size % 2 == 0 else kernel_size
        edges = _hz(np.linspace(0.0, float(_mel(sample_rate / 2)), n_filters + 1))
        t = np.arange(k) - (k - 1) / 2
        lo, hi = edges[:-1, None], edges[1:, None]
        ideal = 2 * hi / sample_rate * np.sinc(2 * hi * t / sample_rate) - 2 * lo / sample_rate * np.sinc(
            2 * lo * t / sample_rate)
        self.register_buffer("filters", torch.tensor(ideal * np.hamming(k), dtype=torch.float32).unsqueeze(1))
        self.n_filters, self.kernel_size, self.sample_rate = n_filters, k, sample_rate

    def forward(self, wav: Tensor) -> Tensor:
        return F.conv1d(wav.unsqueeze(1), self.filters)


class ResidualBlock(nn.Module):
    """conv(2x3)-BN-SELU-conv(2x3)-BN plus shortcut (a (1, 3) conv when the width changes), then max-pool (1, 3)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, (2, 3), padding=(1, 1))
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, (2, 3), padding=(0, 1))
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Conv2d(c_in, c_out, (1, 3), padding=(0, 1)) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.selu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return F.max_pool2d(y + s, (1, 3))


def _node_bn(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm over the channels of ``(B, nodes, C)`` (statistics over batch and nodes)."""
    shape = x.shape
    return bn(x.reshape(-1, shape[-1])).reshape(shape)


def _pairwise(x: Tensor) -> Tensor:
    """``(B, N, C) -> (B, N, N, C)``: the products ``x_i * x_j`` of every node pair."""
    return x.unsqueeze(2) * x.unsqueeze(1)


class GraphAttention(nn.Module):
    """Graph attention layer of AASIST: attention ``softmax_j(w . tanh(W_a (x_i * x_j)) / T)``, node update
    ``SELU(BN(W [sum_j a_ij x_j, x_i] + b))``."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_weight = nn.Parameter(torch.empty(out_dim))
        nn.init.normal_(self.att_weight, std=math.sqrt(2.0 / (out_dim + 1)))  # xavier-normal of a (d, 1) matrix
        self.proj = nn.Linear(2 * in_dim, out_dim)  # [with attention, without attention]
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_drop(x)
        att = (torch.tanh(self.att_proj(_pairwise(x))) * self.att_weight).sum(-1)  # (B, N, N)
        att = torch.softmax(att / self.temperature, dim=-1)
        y = self.proj(torch.cat([torch.matmul(att, x), x], dim=-1))
        return F.selu(_node_bn(self.bn, y))


class HSGraphAttention(nn.Module):
    """Heterogeneous stacking graph attention layer (HS-GAL) with a stack node.

    Two node types are projected to a common space and joined into one graph; edge attention uses one
    learned vector per edge type (type 1-1, type 2-2, across); the stack node attends to every node and
    is updated from its own projection plus the attended nodes."""

    def __init__(self, in_dim: int, out_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.proj_type1 = nn.Linear(in_dim, in_dim)
        self.proj_type2 = nn.Linear(in_dim, in_dim)
        self.att_proj = nn.Linear(in_dim, out_dim)
        self.att_projM = nn.Linear(in_dim, out_dim)
        std = math.sqrt(2.0 / (out_dim + 1))
        self.att_weight11 = nn.Parameter(torch.randn(out_dim) * std)
        self.att_weight22 = nn.Parameter(torch.randn(out_dim) * std)
        self.att_weight12 = nn.Parameter(torch.randn(out_dim) * std)
        self.att_weightM = nn.Parameter(torch.randn(out_dim) * std)
        self.proj = nn.Linear(2 * in_dim, out_dim)
        self.proj_with_attM = nn.Linear(in_dim, out_dim)
        self.proj_without_attM = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.input_drop = nn.Dropout(0.2)
        self.temperature = float(temperature)

    def forward(self, x1: Tensor, x2: Tensor, master: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n1, n2 = x1.shape[1], x2.shape[1]
        x = self.input_drop(torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1))
        # stack node: attends to every node
        h = torch.tanh(self.att_projM(x * master))
        am = torch.softmax((h * self.att_weightM).sum(-1) / self.temperature, dim=-1)  # (B, N)
        master = self.proj_with_attM(torch.matmul(am.unsqueeze(1), x)) + self.proj_without_attM(master)
        # node attention, one vector per edge type
        h = torch.tanh(self.att_proj(_pairwise(x)))
        s11, s22, s12 = ((h * w).sum(-1) for w in (self.att_weight11, self.att_weight22, self.att_weight12))
        t = torch.cat([torch.zeros(n1, dtype=torch.bool), torch.ones(n2, dtype=torch.bool)]).to(x.device)
        same1 = ~t[:, None] & ~t[None, :]
        same2 = t[:, None] & t[None, :]
        att = torch.where(same1, s11, torch.where(same2, s22, s12))
        att = torch.softmax(att / self.temperature, dim=-1)
        y = self.proj(torch.cat([torch.matmul(att, x), x], dim=-1))
        y = F.selu(_node_bn(self.bn, y))
        return y[:, :n1], y[:, n1:], master


class GraphPool(nn.Module):
    """Keep the ``max(1, int(ratio * N))`` nodes of highest score ``sigmoid(W x)``, scaled by their scores."""

    def __init__(self, ratio: float, in_dim: int, p: float = 0.3) -> None:
        super().__init__()
        self.ratio = float(ratio)
        self.proj = nn.Linear(in_dim, 1)
        self.drop = nn.Dropout(p)

    def forward(self, h: Tensor) -> Tensor:
        scores = torch.sigmoid(self.proj(self.drop(h)))  # (B, N, 1)
        k = max(int(h.shape[1] * self.ratio), 1)
        idx = torch.topk(scores, k, dim=1).indices  # (B, k, 1)
        return torch.take_along_dim(h * scores, idx, dim=1)


class AASIST(nn.Module):
    """Waveform ``(batch, samples)`` -> bona fide logit ``(batch,)`` (see the module docstring)."""

    #: clips per forward pass when a whole split is scored (``score_model``): its activations are about 200 MB
    #: per clip-second (the encoder's 32 x 23 x T/3 maps), so the ResNet's 256 needed GBs per batch
    score_batch = 16

    def __init__(self, cfg: AASISTConfig = AASISTConfig(), sample_rate: int = 16000) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.sinc = SincConv(cfg.n_sinc, cfg.first_conv, sample_rate)
        self.first_bn = nn.BatchNorm2d(1)
        blocks = [cfg.filts[0], cfg.filts[1], cfg.filts[2], cfg.filts[3], cfg.filts[3], cfg.filts[3]]
        self.encoder = nn.ModuleList(ResidualBlock(a, b) for a, b in blocks)
        c, g0, g1 = cfg.filts[-1][1], cfg.gat_dims[0], cfg.gat_dims[1]
        self.pos_S = nn.Parameter(torch.randn(1, cfg.n_sinc // 3, c))
        self.master1 = nn.Parameter(torch.randn(1, 1, g0))
        self.master2 = nn.Parameter(torch.randn(1, 1, g0))
        t = cfg.temperatures
        self.gat_S = GraphAttention(c, g0, t[0])
        self.gat_T = GraphAttention(c, g0, t[1])
        self.hs11 = HSGraphAttention(g0, g1, t[2])
        self.hs12 = HSGraphAttention(g1, g1, t[2])
        self.hs21 = HSGraphAttention(g0, g1, t[2])
        self.hs22 = HSGraphAttention(g1, g1, t[2])
        r = cfg.pool_ratios
        self.pool_S = GraphPool(r[0], g0)
        self.pool_T = GraphPool(r[1], g0)
        self.pool_hS1 = GraphPool(r[2], g1)
        self.pool_hT1 = GraphPool(r[2], g1)
        self.pool_hS2 = GraphPool(r[2], g1)
        self.pool_hT2 = GraphPool(r[2], g1)
        self.drop_way = nn.Dropout(0.2)
        self.drop = nn.Dropout(0.5)
        self.out_layer = nn.Linear(5 * g1, 2)

    @property
    def min_samples(self) -> int:
        """Shortest input with at least one frame left after the front end and the six time pools."""
        return self.sinc.kernel_size - 1 + 3 * 3 ** len(self.encoder)

    def _branch(self, first: HSGraphAttention, second: HSGraphAttention, pool_S: GraphPool, pool_T: GraphPool,
                out_T: Tensor, out_S: Tensor, master: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t1, s1, m1 = first(out_T, out_S, master)
        s1, t1 = pool_S(s1), pool_T(t1)
        t_aug, s_aug, m_aug = second(t1, s1, m1)
        return self.drop_way(t1 + t_aug), self.drop_way(s1 + s_aug), self.drop_way(m1 + m_aug)

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"AASIST expects a waveform batch (batch, samples), got shape {tuple(wav.shape)}")
        if wav.shape[1] < self.min_samples:
            raise ValueError(f"AASIST needs at least {self.min_samples} samples per clip (the sinc filters, a 3x "
                             f"pool and six 3x time pools), got {wav.shape[1]}")
        x = F.max_pool2d(torch.abs(self.sinc(wav)).unsqueeze(1), (3, 3))  # (B, 1, filters/3, frames)
        x = F.selu(self.first_bn(x))
        for block in self.encoder:
            x = block(x)
        e = torch.abs(x)  # (B, C, F, T)
        e_S = torch.amax(e, dim=3).transpose(1, 2) + self.pos_S  # spectral nodes (B, F, C)
        e_T = torch.amax(e, dim=2).transpose(1, 2)  # temporal nodes (B, T, C)
        out_S = self.pool_S(self.gat_S(e_S))
        out_T = self.pool_T(self.gat_T(e_T))
        t1, s1, m1 = self._branch(self.hs11, self.hs12, self.pool_hS1, self.pool_hT1, out_T, out_S, self.master1)
        t2, s2, m2 = self._branch(self.hs21, self.hs22, self.pool_hS2, self.pool_hT2, out_T, out_S, self.master2)
        out_T, out_S, master = torch.maximum(t1, t2), torch.maximum(s1, s2), torch.maximum(m1, m2)
        hidden = torch.cat([torch.amax(torch.abs(out_T), dim=1), torch.mean(out_T, dim=1),
                            torch.amax(torch.abs(out_S), dim=1), torch.mean(out_S, dim=1), master.squeeze(1)], dim=1)
        z = self.out_layer(self.drop(hidden))
        return z[:, 1] - z[:, 0]


def build_aasist(family: str = "aasist", sample_rate: int = 16000, config: Optional[AASISTConfig] = None) -> AASIST:
    """AASIST (``"aasist"``) or AASIST-L (``"aasist-l"``) with the published sizes, at ``sample_rate``."""
    if config is None:
        if family not in AASIST_CONFIGS:
            raise ValueError(f"unknown AASIST family {family!r}; choose from {', '.join(AASIST_CONFIGS)}")
        config = AASIST_CONFIGS[family]
    return AASIST(config, sample_rate)
