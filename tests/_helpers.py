"""Model zoo and independent counters used by several test files."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import slimtrain
from slimtrain import DynamicOutput, DynamicRecurrent, DynamicWidth, MaskedLayerNorm

WRAPPERS = (DynamicWidth, DynamicOutput, DynamicRecurrent, MaskedLayerNorm)


def count_macs(model: nn.Module, *inputs) -> float:
    """Multiply-accumulates of one forward pass as torch's own FlopCounterMode counts them.

    Fused kernels hide products from the counter (the CPU flash kernel of
    ``scaled_dot_product_attention``, the fast path of ``nn.TransformerEncoderLayer``), so the pass
    runs with the MHA fast path off and SDPA on its math backend, whose matmuls the counter sees."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH), \
                FlopCounterMode(display=False) as fc:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return fc.get_total_flops() / 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first(y):
    return y[0] if isinstance(y, tuple) else y


def randomise_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Random BatchNorm running statistics and norm affine parameters (so cut channels matter)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)


def dcls(model: nn.Module) -> dict[str, DynamicWidth]:
    """Every distinct DCL of a dynamic model, by module name."""
    return {name: model.get_submodule(name) for name in slimtrain.get_graph(model).dcls.values()}


# ---------------------------------------------------------------------------- zoo
class ResIdentity(nn.Module):
    """Residual conv block with an identity shortcut inside the network."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.b3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(h + self.b3(self.c3(torch.relu(self.b2(self.c2(h))))))
        return self.fc(h.mean(dim=(2, 3)))


class ResProjection(nn.Module):
    """Residual block whose shortcut is a strided 1x1 conv projection (8 -> 12 channels)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.b2 = nn.BatchNorm2d(12)
        self.c3 = nn.Conv2d(12, 12, 3, padding=1)
        self.b3 = nn.BatchNorm2d(12)
        self.proj = nn.Conv2d(8, 12, 1, stride=2)
        self.bp = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        y = self.b3(self.c3(torch.relu(self.b2(self.c2(h)))))
        h = torch.relu(y + self.bp(self.proj(h)))
        return self.fc(h.flatten(1))


class Recurrent(nn.Module):
    def __init__(self, cls=nn.GRU, bidirectional=False, num_layers=1, batch_first=True, last_state=False):
        super().__init__()
        self.batch_first, self.last_state = batch_first, last_state
        self.inp = nn.Linear(5, 12)
        self.rnn = cls(12, 10, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)
        self.fc = nn.Linear(10 * (2 if bidirectional and not last_state else 1), 2)

    def forward(self, x):  # x: (B, T, 5)
        h = torch.relu(self.inp(x))
        if not self.batch_first:
            h = h.transpose(0, 1)
        out, state = self.rnn(h)
        if self.last_state:
            hn = state[0] if isinstance(state, tuple) else state
            return self.fc(hn[-1])
        return self.fc(out)


class TorchTransformer(nn.Module):
    def __init__(self, norm_first=True, activation="relu"):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blk = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True, norm_first=norm_first,
                                              activation=activation)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.blk(self.inp(x)))


class BlockTransformer(nn.Module):
    """Two slimtrain.TransformerBlocks in a ModuleList, post-norm then pre-norm, causal second."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.blocks = nn.ModuleList([
            slimtrain.TransformerBlock(12, 3, 20, dropout=0.0, activation="gelu", norm_first=False),
            slimtrain.TransformerBlock(12, 2, 16, dropout=0.0, norm_first=True, causal=True),
        ])
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.fc(h.mean(1))


class Mel(nn.Module):
    def __init__(self):
        super().__init__()
        self.front = slimtrain.MelFrontend(sample_rate=8000, n_fft=128, hop_length=64, n_mels=20)
        self.c = nn.Conv1d(20, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.c(self.front(x))).transpose(1, 2))


class ConvGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 12, 3, padding=1)
        self.b = nn.BatchNorm1d(12)
        self.rnn = nn.GRU(12, 10, batch_first=True)
        self.fc = nn.Linear(10, 2)

    def forward(self, x):
        h = torch.relu(self.b(self.c(x))).transpose(1, 2)
        return self.fc(self.rnn(h)[0][:, -1])


class CrossAxisResidual(nn.Module):
    """A conv (B, C, T) stream plus a Linear applied on (B, T, C): one width seen on two axes."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 8, 3, padding=1)
        self.b = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.b(self.c(x)))
        h = h + torch.relu(self.fc(h.transpose(1, 2))).transpose(1, 2)
        return self.out(h.mean(-1))


def _mlp_bn():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.BatchNorm1d(24), nn.GELU(),
                         nn.Linear(24, 3))


def _mlp_seq():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 2))


def _cnn1d():
    return nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 8, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 2))


def _cnn2d():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 2 * 2, 3))


# name -> (factory, input shape)
ZOO = {
    "mlp_bn": (_mlp_bn, (4, 10)),
    "mlp_positions": (_mlp_seq, (2, 5, 6)),
    "conv1d": (_cnn1d, (3, 4, 16)),
    "conv2d": (_cnn2d, (2, 3, 8, 8)),
    "res_identity": (ResIdentity, (2, 3, 8, 8)),
    "res_projection": (ResProjection, (2, 3, 8, 8)),
    "gru": (lambda: Recurrent(nn.GRU), (2, 7, 5)),
    "gru_seq_first_last_state": (lambda: Recurrent(nn.GRU, batch_first=False, last_state=True), (2, 7, 5)),
    "lstm": (lambda: Recurrent(nn.LSTM), (2, 7, 5)),
    "lstm_bi_2layer": (lambda: Recurrent(nn.LSTM, bidirectional=True, num_layers=2), (2, 7, 5)),
    "gru_bi_2layer_last_state": (lambda: Recurrent(nn.GRU, bidirectional=True, num_layers=2, last_state=True), (2, 6, 5)),
    "conv_gru": (ConvGRU, (2, 4, 9)),
    "cross_axis_residual": (CrossAxisResidual, (2, 3, 5)),
    "torch_transformer_pre": (lambda: TorchTransformer(norm_first=True), (2, 5, 6)),
    "torch_transformer_post": (lambda: TorchTransformer(norm_first=False, activation="gelu"), (2, 5, 6)),
    "transformer_blocks": (BlockTransformer, (2, 5, 6)),
    "mel": (Mel, (2, 640)),
}


def build(name: str, seed: int = 0):
    """(original model, dynamic model, sample) for a zoo entry; norms randomised, dropout off."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = factory()
    randomise_norms(model, gen)
    x = torch.randn(shape, generator=gen)
    original = copy.deepcopy(model)
    slimtrain.make_dynamic(model, x)
    return original, model, x
