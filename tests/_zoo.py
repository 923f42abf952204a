"""The model zoo: well-known architectures pushed through the whole DCL pipeline.

Each entry builds a tiny model with random weights (transformers models from small configs,
never ``from_pretrained``; nothing is downloaded) and a sample batch. :func:`run_entry` then

1. ``make_dynamic(model, sample, kappa_min=0.25)``,
2. ``STEPS`` Adam steps on ``MSE(model(x), frozen_copy(x)) + TradeoffLoss(alpha=ALPHA)`` with a
   width learning rate high enough that the widths must move (at least one ``K`` must drop by
   one channel or more),
3. ``export``, and checks that the exported model equals the dynamic model in eval mode
   (max abs difference <= ``EXPORT_ATOL``),
4. compares the analytic MACs of the exported widths with ``torch.utils.flop_counter`` on the
   exported model (relative difference <= ``COUNTER_RTOL``).

Used by ``tests/test_zoo.py`` (one test per entry) and ``benchmarks/zoo.py`` (a markdown table).

transformers models are built with ``attn_implementation="eager"`` (explicit matmul + softmax,
the same function): the products of the CPU fused SDPA kernel are invisible to
``FlopCounterMode``, so with SDPA the counter check fails by exactly the attention products
(BERT here: analytic 91,648 vs counted 83,456 MACs), a gap of the counter, not of the cost model.
"""
from __future__ import annotations

import copy
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

import slimtrain
from slimtrain.core.graph import get_graph
from slimtrain.train.training import make_optimizer

from _helpers import count_macs, first

KAPPA_MIN = 0.25
STEPS = 10
ALPHA = 4.0
LR = 1e-3
WIDTH_LR = 0.1
EXPORT_ATOL = 1e-5
COUNTER_RTOL = 0.01


# --------------------------------------------------------------------------- wrappers
class HFHead(nn.Module):
    """A transformers backbone plus a Linear head, returning a plain tensor.

    The head makes the backbone's hidden width an inner width (a model's output width cannot
    shrink); ``key`` picks the output field (``last_hidden_state`` or ``pooler_output``).
    """

    def __init__(self, backbone: nn.Module, hidden: int, out: int = 3, key: str = "last_hidden_state",
                 channels_first: bool = False) -> None:
        super().__init__()
        self.backbone, self.key, self.channels_first = backbone, key, channels_first
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        h = getattr(self.backbone(x), self.key)
        if self.channels_first:  # (B, C, H, W) feature maps of the vision CNNs
            h = h.flatten(2).mean(-1) if h.dim() > 2 else h
        return self.head(h)


class TorchEncoder(nn.Module):
    """Linear -> nn.TransformerEncoder (2 layers) -> Linear, as people write it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)))


class BiRNN(nn.Module):
    """Linear -> 2-layer bidirectional GRU/LSTM -> Linear on every frame."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.rnn = cls(32, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(64, 3)

    def forward(self, x):
        return self.out(self.rnn(torch.relu(self.inp(x)))[0])


# --------------------------------------------------------------------------- builders
def _tiny_audio_kw() -> dict:
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
                do_stable_layer_norm=False, feat_extract_norm="group", attn_implementation="eager")


def _wav2vec2():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return HFHead(Wav2Vec2Model(Wav2Vec2Config(**_tiny_audio_kw())), 32), torch.randn(2, 400)


def _hubert():
    from transformers import HubertConfig, HubertModel

    return HFHead(HubertModel(HubertConfig(**_tiny_audio_kw())), 32), torch.randn(2, 400)


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation="eager")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return HFHead(BertModel(cfg, add_pooling_layer=False), 32), ids


def _vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return HFHead(ViTModel(cfg, add_pooling_layer=False), 32), torch.randn(2, 3, 16, 16)


def _wavlm():  # attention through F.multi_head_attention_forward with its own weights, relative position gates
    from transformers import WavLMConfig, WavLMModel

    return HFHead(WavLMModel(WavLMConfig(**_tiny_audio_kw())), 32), torch.randn(2, 400)


def _whisper_encoder():
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                        decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16,
                        dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
    return HFHead(WhisperModel(cfg).encoder, 32), torch.randn(2, 16, 32)


def _deit():  # class and distillation tokens concatenated with the patch tokens
    from transformers import DeiTConfig, DeiTModel

    cfg = DeiTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return HFHead(DeiTModel(cfg, add_pooling_layer=False), 32), torch.randn(2, 3, 16, 16)


def _gpt2():  # transformers' Conv1D: a Linear that stores its weight as (in, out); causal attention
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return HFHead(GPT2Model(cfg), 32), ids


def _resnet():
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return HFHead(ResNetModel(cfg), 32, key="pooler_output", channels_first=True), torch.randn(2, 3, 32, 32)


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2Model

    cfg = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, min_depth=4,
                            classifier_dropout_prob=0.0)
    x = torch.randn(2, 3, 32, 32)
    backbone = MobileNetV2Model(cfg)
    with torch.no_grad():
        hidden = backbone(x).pooler_output.shape[1]
    return HFHead(backbone, hidden, key="pooler_output", channels_first=True), x


def _convnext():
    from transformers import ConvNextConfig, ConvNextModel

    cfg = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=2,
                         drop_path_rate=0.0)
    return HFHead(ConvNextModel(cfg), 32, key="pooler_output"), torch.randn(2, 3, 16, 16)


def _synthetic_mlp():
    from slimtrain.tasks.synthetic import build_student

    return build_student(16, 64, 4), torch.randn(8, 16)


def _vad_crnn():
    from slimtrain.apps.vad.models import build_vad_model

    return build_vad_model("crnn", n_mels=20, conv1=16, conv2=16, hidden=16), torch.randn(2, 1600)


def _vad_transformer():
    from slimtrain.apps.vad.models import build_vad_model

    return (build_vad_model("transformer", n_mels=20, d_model=32, ff=64, layers=1, heads=2, attn=16),
            torch.randn(2, 1600))


def _spoof_resnet():
    from slimtrain.apps.spoof.models import build_resnet

    return build_resnet(width=8, blocks=(1, 1), n_mels=20, n_fft=256, hop_length=128), torch.randn(2, 4000)


def _distilbert():  # attention that sized its heads from dim // n_heads at run time before transformers 4.48
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=16,
                           dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    return HFHead(DistilBertModel(cfg), 32), ids


def _archs():
    import _archs

    return _archs


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: ``build() -> (model, sample)``; ``xfail`` is the current error when it fails today."""

    name: str
    build: Callable[[], tuple[nn.Module, Any]]
    xfail: Optional[str] = None


ZOO: list[ZooEntry] = [
    ZooEntry("wav2vec2", _wav2vec2),
    ZooEntry("hubert", _hubert),
    ZooEntry("bert", _bert),
    ZooEntry("vit", _vit),
    ZooEntry("deit", _deit),
    ZooEntry("wavlm", _wavlm),
    ZooEntry("whisper_encoder", _whisper_encoder),
    ZooEntry("gpt2", _gpt2),
    ZooEntry("resnet", _resnet),
    ZooEntry("mobilenet_v2", _mobilenet_v2),
    ZooEntry("convnext", _convnext),
    ZooEntry("torch_transformer_encoder", lambda: (TorchEncoder(), torch.randn(2, 6, 8))),
    ZooEntry("lstm_bi_2layer", lambda: (BiRNN(nn.LSTM), torch.randn(2, 6, 8))),
    ZooEntry("gru_bi_2layer", lambda: (BiRNN(nn.GRU), torch.randn(2, 6, 8))),
    ZooEntry("synthetic_mlp", _synthetic_mlp),
    ZooEntry("vad_crnn", _vad_crnn),
    ZooEntry("vad_transformer", _vad_transformer),
    ZooEntry("spoof_resnet", _spoof_resnet),
    # the architecture classes of issue 24 (tests/_archs.py)
    ZooEntry("distilbert", _distilbert),
    ZooEntry("runtime_head_attention", lambda: (_archs().HeadNet(), torch.randn(2, 5, 8))),
    ZooEntry("codec_weight_norm", lambda: (_archs().Codec(), torch.randn(2, 1, 64))),
    ZooEntry("mha_seq_first", lambda: (_archs().AttnNet(batch_first=False, keyword=True), torch.randn(2, 7, 6))),
    ZooEntry("mha_batch_first", lambda: (_archs().AttnNet(batch_first=True), torch.randn(2, 7, 6))),
    ZooEntry("conv_tasnet", lambda: (_archs().TasNet(norm=True), torch.randn(2, 1, 128))),
]


# --------------------------------------------------------------------------- procedure
@dataclass
class ZooResult:
    name: str
    n_dynamic: int = 0
    n_fixed: int = 0
    macs_before: float = math.nan  # per item, full widths
    macs_after: float = math.nan  # per item, exported widths
    max_drop: float = math.nan  # largest K decrease in channels
    export_err: float = math.nan
    counter_diff_pct: float = math.nan
    seconds: float = 0.0
    stage: str = ""  # the step that failed ("" when it passed)
    error: str = ""  # one-line message of the failure
    trace: str = field(default="", repr=False)

    @property
    def passed(self) -> bool:
        return not self.error


class ZooCheckError(AssertionError):
    """A zoo model went through the pipeline but a check failed (names model and check)."""


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def run_entry(entry: ZooEntry, seed: int = 0, steps: int = STEPS, reorder: Optional[str] = None,
              heads: str = "count") -> ZooResult:
    """Run the zoo procedure on one entry; failures are recorded in the result, never raised.

    ``reorder``: first reorder the channels by this score (``slimtrain.reorder_channels``, as for a
    trained model); the teacher is the model before reordering, so reordering must not change it.
    ``heads``: what attention heads learn (``make_dynamic(..., heads=)``).
    """
    res = ZooResult(entry.name)
    t0 = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(seed)
        model, x = entry.build()
        model.eval()
        teacher = copy.deepcopy(model)
        with torch.no_grad():
            target = first(teacher(x)).detach()
        if reorder is not None:
            stage = "reorder"
            rep = slimtrain.reorder_channels(model, x, reorder, check=False)
            with torch.no_grad():
                change = float((first(model(x)) - target).abs().max())
            if not change <= EXPORT_ATOL * max(1.0, float(target.abs().max())):
                raise ZooCheckError(f"{entry.name}: reordering changed the output by {change:.3g} "
                                    f"(reordered: {sorted(rep.permutations)})")
        stage = "make_dynamic"
        slimtrain.make_dynamic(model, x, kappa_min=KAPPA_MIN, heads=heads)
        g = get_graph(model)
        res.n_dynamic = len(g.dcls)
        res.n_fixed = sum(1 for s in g.layers if s.out_size > 0 and s.out_root is None)
        res.macs_before = float(slimtrain.model_cost(model, full=True).macs)
        dmods = g.dcl_modules(model)
        full = {r: float(d.num_channels) for r, d in dmods.items()}
        stage = "train"
        opt = make_optimizer(model, lr=LR, width_lr=WIDTH_LR)
        objective = slimtrain.TradeoffLoss(model, alpha=ALPHA)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            y = first(model(x))
            loss = objective(torch.nn.functional.mse_loss(y, target))
            if not torch.isfinite(loss):
                raise ZooCheckError(f"{entry.name}: training loss is not finite ({float(loss)})")
            loss.backward()
            opt.step()
        res.max_drop = max(full[r] - float(d.width.detach()) for r, d in dmods.items())
        if res.max_drop < 1.0:
            raise ZooCheckError(f"{entry.name}: no width dropped by a channel in {steps} steps "
                                f"(largest drop {res.max_drop:.3f})")
        stage = "export"
        model.eval()
        res.macs_after = float(slimtrain.model_cost(model, hard=True).macs)
        small = slimtrain.export(model).eval()
        with torch.no_grad():
            res.export_err = float((first(model(x)) - first(small(x))).abs().max())
        if not res.export_err <= EXPORT_ATOL:
            raise ZooCheckError(f"{entry.name}: exported model differs from the dynamic model in eval mode by "
                                f"{res.export_err:.3g} > {EXPORT_ATOL}")
        stage = "counter"
        counted = count_macs(small, x)
        analytic = res.macs_after * x.shape[0]
        res.counter_diff_pct = 100.0 * abs(analytic - counted) / max(counted, 1.0)
        if not res.counter_diff_pct <= 100 * COUNTER_RTOL:
            raise ZooCheckError(f"{entry.name}: analytic MACs {analytic:.0f} vs flop_counter {counted:.0f} "
                                f"({res.counter_diff_pct:.2f} % > {100 * COUNTER_RTOL:.0f} %)")
        stage = ""
    except Exception as e:  # recorded; check_entry re-raises
        res.stage, res.error, res.trace = stage, _one_line(e), traceback.format_exc()
    res.seconds = time.perf_counter() - t0
    return res


def check_entry(entry: ZooEntry, seed: int = 0) -> ZooResult:
    """Run the procedure and raise ``ZooCheckError`` naming the model and stage if anything failed."""
    res = run_entry(entry, seed)
    if not res.passed:
        raise ZooCheckError(f"zoo model '{entry.name}' failed at {res.stage}: {res.error}\n{res.trace}")
    return res


def markdown_table(results: list[ZooResult]) -> str:
    """The zoo results as a markdown table."""
    rows = ["| model | #dynamic widths | #fixed widths | MACs before | MACs after | export max abs err | "
            "counter diff % | time s | result |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def f(v: float, fmt: str) -> str:
        return "-" if math.isnan(v) else format(v, fmt)

    for r in results:
        verdict = "pass" if r.passed else f"FAIL ({r.stage}): {r.error[:120]}"
        rows.append(f"| {r.name} | {r.n_dynamic} | {r.n_fixed} | {f(r.macs_before, ',.0f')} | "
                    f"{f(r.macs_after, ',.0f')} | {f(r.export_err, '.1e')} | {f(r.counter_diff_pct, '.2f')} | "
                    f"{r.seconds:.1f} | {verdict} |")
    return "\n".join(rows)
