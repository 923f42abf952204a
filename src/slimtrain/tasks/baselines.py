"""Comparison baselines for the DCL method, independent of the task.

* :func:`prune_to_macs`: structured magnitude pruning of a trained full model
  with ``torch-pruning`` until its MACs per example reach a target, with an
  optional fine-tuning callback after each pruning step.
* :class:`HardConcreteGate`, :func:`add_gates`, :class:`GateBudgetLoss`:
  stochastic L0 (hard-concrete) channel gates on the same positions a DCL
  would take, trained in one run under a complexity-budget interval (the
  paper's "SG" competitor), exported to a plain dense model.

See ``docs/baselines.md`` for settings and how they map to the paper.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..core.cost import model_cost
from ..core.dcl import DynamicWidth
from ..audio.frontend import MelFrontend

__all__ = [
    "PruneResult", "PruneError", "prune_to_macs", "layer_widths", "HardConcreteGate", "GatedWidth", "add_gates",
    "gates", "gate_parameters", "make_gate_optimizer", "expected_cost", "GateBudgetLoss", "export_gated",
]


class PruneError(ValueError):
    """Bad input to :func:`prune_to_macs` or a target that cannot be reached."""


# ----------------------------------------------------------------------------- pruning
@dataclass
class PruneResult:
    """What :func:`prune_to_macs` returns.

    Attributes:
        model: the pruned plain model (a copy; the input is not changed).
        macs / params: per example, as :func:`slimtrain.model_cost` counts them.
        full_macs / full_params: the same for the unpruned model.
        target_macs: the requested MACs.
        widths: output channels of every Conv/Linear/BN layer, hidden size of RNNs, mel bands.
        full_widths: the same before pruning.
        ratio: the channel pruning ratio of the last step (torch-pruning's unit).
        unpruned: names of layers left at full width on purpose (ignored, output layer,
            multi-layer or bidirectional GRU/LSTM) with the reason.
    """

    model: nn.Module
    macs: float
    params: float
    full_macs: float
    full_params: float
    target_macs: float
    widths: dict[str, int]
    full_widths: dict[str, int]
    ratio: float
    unpruned: dict[str, str] = field(default_factory=dict)

    @property
    def relative_macs(self) -> float:
        return self.macs / self.full_macs


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv/Linear/BatchNorm layer, hidden size of every GRU/LSTM, bands of a mel front-end."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, MelFrontend):
            out[name] = m.n_mels
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, (nn.GRU, nn.LSTM)):
            out[name] = m.hidden_size
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = m.num_features
    return out


class _GRUStandIn(nn.Module):
    """Stands in for an ``nn.GRU`` / ``nn.LSTM`` while torch-pruning traces the model.

    torch-pruning 1.6 has no GRU pruner and its tracer walks into the GRU's
    internal gate splits, so the GRU is replaced by a bias-free linear map
    (input -> hidden x directions) whose weight is the per-unit L2 norm over the
    gate blocks of ``weight_ih_l0``. The pruner built by :func:`_gru_standin_pruner`
    cuts the real RNN with the same indices: input columns of any RNN, hidden
    units of a single-layer unidirectional GRU only (others are ignored layers).
    """

    def __init__(self, gru: nn.Module) -> None:
        super().__init__()
        h = gru.hidden_size
        dirs = 2 if gru.bidirectional else 1
        gates_n = 3 if isinstance(gru, nn.GRU) else 4
        self.in_features, self.out_features = gru.input_size, h * dirs
        ws = [getattr(gru, "weight_ih_l0" + sfx).detach().view(gates_n, h, gru.input_size)
              for sfx in ("", "_reverse")[:dirs]]
        self.weight = nn.Parameter(torch.cat([w.pow(2).sum(0).sqrt() for w in ws]).clone())
        object.__setattr__(self, "gru", gru)  # not a submodule: torch-pruning must not see it

    def forward(self, x: Tensor, hx=None):  # type: ignore[override]
        y = nn.functional.linear(x, self.weight)
        last = y[:, -1] if self.gru.batch_first else y[-1]
        return y, last.unsqueeze(0)


def _gru_standin_pruner():
    import torch_pruning as tp

    base = tp.pruner.function.BasePruningFunc

    class GRUStandInPruner(base):  # type: ignore[misc,valid-type]
        """Prunes a :class:`_GRUStandIn` and the GRU behind it (hidden units / input channels)."""

        TARGET_MODULES = _GRUStandIn

        def prune_out_channels(self, layer: _GRUStandIn, idxs: list) -> nn.Module:
            gru = layer.gru
            if not isinstance(gru, nn.GRU) or gru.num_layers > 1 or gru.bidirectional:
                raise PruneError(f"cannot prune the hidden size of {gru!r}; pass it in ignored_layers")
            h = gru.hidden_size
            keep = torch.tensor(sorted(set(range(h)) - {int(i) for i in idxs}), dtype=torch.long)
            rows = torch.cat([keep + g * h for g in range(3)])
            with torch.no_grad():
                gru.weight_ih_l0 = nn.Parameter(gru.weight_ih_l0.index_select(0, rows).clone())
                gru.weight_hh_l0 = nn.Parameter(gru.weight_hh_l0.index_select(0, rows).index_select(1, keep).clone())
                if gru.bias:
                    gru.bias_ih_l0 = nn.Parameter(gru.bias_ih_l0.index_select(0, rows).clone())
                    gru.bias_hh_l0 = nn.Parameter(gru.bias_hh_l0.index_select(0, rows).clone())
                layer.weight = nn.Parameter(layer.weight.index_select(0, keep).clone())
            gru.hidden_size = layer.out_features = len(keep)
            return layer

        def prune_in_channels(self, layer: _GRUStandIn, idxs: list) -> nn.Module:
            gru = layer.gru
            keep = torch.tensor(sorted(set(range(gru.input_size)) - {int(i) for i in idxs}), dtype=torch.long)
            with torch.no_grad():
                for sfx in ("", "_reverse")[:2 if gru.bidirectional else 1]:
                    w = getattr(gru, "weight_ih_l0" + sfx)
                    setattr(gru, "weight_ih_l0" + sfx, nn.Parameter(w.index_select(1, keep).clone()))
                layer.weight = nn.Parameter(layer.weight.index_select(1, keep).clone())
            gru.input_size = layer.in_features = len(keep)
            return layer

        def get_out_channels(self, layer: _GRUStandIn) -> int:
            return layer.out_features

        def get_in_channels(self, layer: _GRUStandIn) -> int:
            return layer.in_features

    return GRUStandInPruner()


class _MelStandIn(nn.Module):
    """Stands in for a :class:`~slimtrain.MelFrontend` when its bands may be pruned (``prune_mel=True``).

    The front-end has no parameters, so torch-pruning's tracer would not link
    its output to the next layer; a unit per-band scale makes the link, and
    the pruner of :func:`_mel_standin_pruner` removes filterbank rows.
    """

    def __init__(self, mel: MelFrontend) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(mel.n_mels))
        object.__setattr__(self, "mel", mel)

    def forward(self, wav: Tensor) -> Tensor:
        return self.mel(wav) * self.scale[:, None]


def _mel_standin_pruner():
    import torch_pruning as tp

    class MelStandInPruner(tp.pruner.function.BasePruningFunc):  # type: ignore[misc,name-defined]
        TARGET_MODULES = _MelStandIn

        def prune_out_channels(self, layer: _MelStandIn, idxs: list) -> nn.Module:
            keep = torch.tensor(sorted(set(range(layer.mel.n_mels)) - {int(i) for i in idxs}), dtype=torch.long)
            layer.mel.fbank = layer.mel.fbank.index_select(0, keep).clone()
            layer.scale = nn.Parameter(layer.scale.detach().index_select(0, keep).clone())
            return layer

        def prune_in_channels(self, layer: _MelStandIn, idxs: list) -> nn.Module:
            return layer  # the waveform has no channels

        def get_out_channels(self, layer: _MelStandIn) -> int:
            return layer.mel.n_mels

        def get_in_channels(self, layer: _MelStandIn):
            return None

    return MelStandInPruner()


def _importance(name: str):
    import torch_pruning as tp

    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "random":
        return tp.importance.RandomImportance()
    raise PruneError(f"importance must be 'l2', 'l1' or 'random', got {name!r}")


def _output_layers(model: nn.Module, sample) -> list[nn.Module]:
    """The Conv/Linear/RNN layers whose output reaches the model output without another such layer."""
    # the last parametric layer executed is the output layer in every model we build; it is never pruned
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GRU, nn.LSTM))]
    try:
        with torch.no_grad():
            model.eval()(sample)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:] if order else []


def _plan(model: nn.Module, sample, ignored_layers: Sequence[nn.Module],
          prune_mel: bool = False) -> tuple[list[nn.Module], dict[str, str]]:
    names = {id(m): n for n, m in model.named_modules()}
    ignored: list[nn.Module] = []
    why: dict[str, str] = {}
    for m in ignored_layers:
        if id(m) not in names:
            raise PruneError(f"ignored layer {type(m).__name__} is not a module of the model")
        ignored.append(m)
        why[names[id(m)]] = "ignored by the caller"
    for m in _output_layers(model, sample):
        if m not in ignored:
            ignored.append(m)
        why[names[id(m)]] = "output layer"
    for n, m in model.named_modules():
        if isinstance(m, MelFrontend) and not prune_mel:
            ignored.append(m)
            why[n] = "mel front-end: band count left alone"
        elif isinstance(m, (nn.GRU, nn.LSTM)) and (m.num_layers > 1 or m.bidirectional or
                                                   getattr(m, "proj_size", 0)):
            ignored.append(m)
            why[n] = "multi-layer/bidirectional RNN: torch-pruning cannot prune its hidden size"
        elif isinstance(m, nn.LSTM):
            ignored.append(m)  # torch-pruning 1.6's LSTMPruner cuts weight_ih along the wrong axis
            why[n] = "LSTM: torch-pruning 1.6's LSTM pruner is unreliable, hidden size kept"
    return ignored, why


def _prune_once(model: nn.Module, sample, ratio: float, importance: str, round_to: Optional[int],
                ignored_names: set[str], global_pruning: bool, seed: int, prune_mel: bool = False) -> nn.Module:
    """A pruned copy of ``model`` with ``ratio`` of the channels of every prunable group removed."""
    import torch_pruning as tp

    out = copy.deepcopy(model).eval()
    if ratio <= 0:
        return out
    from ..core.graph import _set

    stand_ins = {}
    for n, m in list(out.named_modules()):
        if isinstance(m, (nn.GRU, nn.LSTM)):  # also ignored ones: their input side is still pruned
            stand_ins[n] = _GRUStandIn(m)
            _set(out, n, stand_ins[n])
        elif isinstance(m, MelFrontend) and prune_mel and n not in ignored_names:
            stand_ins[n] = _MelStandIn(m)
            _set(out, n, stand_ins[n])
    ignored = [m for n, m in out.named_modules() if n in ignored_names]
    torch.manual_seed(seed)
    pruner = tp.pruner.MetaPruner(
        out, sample, importance=_importance(importance), pruning_ratio=ratio, global_pruning=global_pruning,
        iterative_steps=1, ignored_layers=ignored, round_to=round_to,
        customized_pruners={_GRUStandIn: _gru_standin_pruner(), _MelStandIn: _mel_standin_pruner()},
        root_module_types=[nn.Conv1d, nn.Conv2d, nn.Linear, _GRUStandIn, _MelStandIn],
    )
    pruner.step()
    for n, m in stand_ins.items():
        _set(out, n, m.gru if isinstance(m, _GRUStandIn) else m.mel)
    for m in out.modules():
        if isinstance(m, nn.RNNBase):
            m.flatten_parameters()
    return out


def _macs(model: nn.Module, sample) -> tuple[float, float]:
    c = model_cost(model.eval(), sample)
    return float(c.macs), float(c.params)


def prune_to_macs(
    model: nn.Module,
    sample: Tensor,
    target_macs: float,
    *,
    relative: bool = False,
    ignored_layers: Iterable[nn.Module] = (),
    importance: str = "l2",
    iterative_steps: int = 1,
    round_to: Optional[int] = None,
    global_pruning: bool = False,
    tolerance: float = 0.05,
    finetune: Optional[Callable[[nn.Module, int], Optional[nn.Module]]] = None,
    prune_mel: bool = False,
    seed: int = 0,
) -> PruneResult:
    """Structured channel pruning of a plain model until its MACs per example reach ``target_macs``.

    Uses ``torch_pruning.pruner.MetaPruner`` (magnitude importance of each
    dependency group, so residual adds, BatchNorm and concatenations stay
    consistent). torch-pruning's ratio is in channels, not MACs, so each step
    bisects the channel ratio on a fresh copy until
    :func:`slimtrain.model_cost` (``sample``'s MACs per item) is within
    ``tolerance`` (relative) of that step's target, preferring the closest
    result at or below it.

    Never pruned: the output layer (the last Conv/Linear/RNN to run),
    ``ignored_layers`` and, unless ``prune_mel=True``, the band count of any
    :class:`~slimtrain.MelFrontend`.
    GRU hidden sizes are pruned (single-layer, unidirectional GRU, via a pruner
    added here since torch-pruning has none); multi-layer or bidirectional GRUs
    and all LSTMs keep their hidden size (their input side is still pruned as
    the producer's channels are). ``PruneResult.unpruned`` lists them.

    Args:
        model: a plain (non-dynamic) model; it is not changed.
        sample: an input batch for tracing and counting (MACs are per item).
        target_macs: the MACs per example to reach, or a share of the full
            model's MACs when ``relative=True`` (e.g. ``0.25``).
        importance: ``"l2"`` / ``"l1"`` group magnitude, or ``"random"`` (seeded).
        iterative_steps: prune in this many steps, the targets shrinking
            geometrically from the full MACs to ``target_macs``.
        round_to: keep channel counts multiples of this.
        global_pruning: rank channels across layers (torch-pruning's global
            mode) instead of the same ratio in every layer.
        tolerance: accepted relative MAC error of the final result.
        finetune: ``finetune(model, step)`` is called after every pruning step
            (``step`` = 1..iterative_steps), in training mode, to fine-tune in place
            (or return a replacement model). Splitting the fine-tuning epochs
            across the steps is the caller's business; with ``iterative_steps=1``
            it runs once at the end.
        prune_mel: also prune the mel bands of a :class:`~slimtrain.MelFrontend`
            (filterbank rows, ranked by the magnitude of the layer reading them),
            as the DCL and gate models may. Default: bands left alone.
        seed: seeds the random importance.
    """
    import torch_pruning  # noqa: F401 - a clear error if the package is missing

    if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise PruneError(f"iterative_steps must be a positive integer, got {iterative_steps!r}")
    if not isinstance(target_macs, (int, float)) or not math.isfinite(target_macs) or target_macs <= 0:
        raise PruneError(f"target_macs must be a positive number, got {target_macs!r}")
    if not 0 < tolerance < 1:
        raise PruneError(f"tolerance must be in (0, 1), got {tolerance!r}")
    if any(n for n, _ in model.named_modules() if n.endswith("dcl")) or model.__dict__.get("_slimtrain_graph"):
        raise PruneError("prune_to_macs needs a plain model; export() a dynamic model first")
    was_training = model.training
    base = copy.deepcopy(model).eval()
    own = {id(m): n for n, m in model.named_modules()}
    user = []
    for m in ignored_layers:
        if id(m) not in own:
            raise PruneError(f"ignored layer {type(m).__name__} is not a module of the model")
        user.append(base.get_submodule(own[id(m)]))
    ignored, why = _plan(base, sample, user, prune_mel)
    names = {id(m): n for n, m in base.named_modules()}
    ignored_names = {names[id(m)] for m in ignored}
    full_macs, full_params = _macs(base, sample)
    target = float(target_macs) * (full_macs if relative else 1.0)
    if relative and not 0 < target_macs <= 1:
        raise PruneError(f"a relative target must be in (0, 1], got {target_macs!r}")
    if target > full_macs * (1 + 1e-9):
        raise PruneError(f"target {target:.6g} MACs exceeds the full model's {full_macs:.6g} MACs")
    full_widths = layer_widths(base)
    current, ratio = base, 0.0
    for step in range(1, iterative_steps + 1):
        step_target = full_macs * (target / full_macs) ** (step / iterative_steps)
        start_macs, _ = _macs(current, sample)
        ratio, current, bracket = _bisect(current, sample, step_target, start_macs, importance, round_to,
                                          ignored_names, global_pruning, seed + step, tolerance, prune_mel)
        if finetune is not None:
            current.train()
            replaced = finetune(current, step)
            if replaced is not None:
                current = replaced
            current.eval()
    macs, params = _macs(current, sample)
    if abs(macs / target - 1) > tolerance:
        near = (f"the nearest reachable values were {bracket[1]:.6g} and {bracket[0]:.6g} MACs" if bracket[1] > 0
                else f"the smallest reachable is about {bracket[0]:.6g} MACs")
        raise PruneError(
            f"pruning reached {macs:.6g} MACs, not within {tolerance:.0%} of the target {target:.6g}: {near} "
            f"(channel granularity, round_to, or layers that are not pruned: {', '.join(why) or 'none'}); "
            f"raise tolerance or change the target")
    current.train(was_training)
    return PruneResult(current, macs, params, full_macs, full_params, target, layer_widths(current), full_widths,
                       ratio, why)


def _bisect(model, sample, target, start_macs, importance, round_to, ignored_names, global_pruning, seed, tol,
            prune_mel=False):
    """(ratio, pruned copy) whose MACs are closest to ``target``, preferring results at or below it."""
    if start_macs <= target * (1 + tol) and start_macs >= target * (1 - tol):
        return 0.0, copy.deepcopy(model), (start_macs, start_macs)
    lo, hi = 0.0, 0.99
    above, below = math.inf, 0.0
    best: Optional[tuple[float, float, nn.Module]] = None

    def score(m: float) -> float:
        err = m / target - 1
        return abs(err) + (0.0 if err <= 0 else 1e-3)  # ties go to the result under the target

    # MACs of a stack of pruned layers fall roughly like (1 - ratio)^2: guess from that, then
    # interpolate inside the bracket in log space (falling back to halving it)
    mid = 1.0 - math.sqrt(target / start_macs)
    m_lo, m_hi = start_macs, None
    for it in range(14):
        if not lo < mid < hi or it % 3 == 2:  # halve now and then: interpolation alone can stall
            mid = 0.5 * (lo + hi)
        cand = _prune_once(model, sample, mid, importance, round_to, ignored_names, global_pruning, seed, prune_mel)
        m, _ = _macs(cand, sample)
        if best is None or score(m) < score(best[1]):
            best = (mid, m, cand)
        if m > target:
            lo, m_lo = mid, m
            above = min(above, m)
        else:
            hi, m_hi = mid, m
            below = max(below, m)
        if abs(m / target - 1) <= tol * 0.5 or hi - lo < 1e-3:
            break
        if m_hi is not None and m_hi > 0 and m_lo > m_hi:  # log-linear interpolation in the bracket
            f = math.log(m_lo / target) / math.log(m_lo / m_hi)
            mid = lo + min(max(f, 0.1), 0.9) * (hi - lo)
        else:
            mid = 1.0 - (1.0 - mid) * math.sqrt(target / m) if m > 0 else 0.5 * (lo + hi)
    assert best is not None
    return best[0], best[2], (above, below)


# ----------------------------------------------------------------------------- stochastic gates
#: hard-concrete constants of Louizos et al. (2018)
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def _hard_concrete_open_prob(log_alpha: Tensor, beta: float = BETA) -> Tensor:
    """``P(z != 0)`` of a hard-concrete gate: ``sigmoid(log_alpha - beta * log(-gamma / zeta))``."""
    return torch.sigmoid(log_alpha - beta * math.log(-GAMMA / ZETA))


class HardConcreteGate(nn.Module):
    """L0 hard-concrete gate per channel (Louizos, Welling & Kingma, 2018).

    Training: ``z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)``
    with ``u ~ U(0, 1)`` per channel (one sample shared by the batch). Eval: a
    deterministic binary gate that keeps the ``n = round(sum_i P(z_i != 0))``
    channels of largest ``log_alpha`` (at least one), so a closed channel is
    exactly zero and can be removed, and the kept count is the expected open
    count that the budget loss constrained during training (the rounded median
    gate ``1[log_alpha > 0]`` closes every channel whose open probability is
    below ``sigmoid(1.6) = 0.83`` and leaves exported models far below their
    budget). ``expected_open()`` is ``sum_i P(z_i != 0)``, differentiable in ``log_alpha``.
    """

    def __init__(self, num_channels: int, dim: int = -1, *, init_open: float = 0.9, beta: float = BETA) -> None:
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
        if not 0 < init_open < 1:
            raise ValueError(f"init_open must be in (0, 1), got {init_open!r}")
        self.num_channels, self.dim, self.beta = num_channels, dim, beta
        la = math.log(init_open / (1 - init_open)) + beta * math.log(-GAMMA / ZETA)
        self.log_alpha = nn.Parameter(torch.full((num_channels,), la))

    def sample(self) -> Tensor:
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def open_count(self) -> int:
        """Channels kept in eval: the expected number of open gates, rounded (at least 1)."""
        return min(self.num_channels, max(1, int(round(float(self.expected_open().detach())))))

    def open_mask(self) -> Tensor:
        """The eval gate: 1 on the :meth:`open_count` channels of largest ``log_alpha``, else 0."""
        la = self.log_alpha.detach()
        keep = torch.argsort(-la, stable=True)[: self.open_count()]
        return torch.zeros_like(la).index_fill_(0, keep, 1.0)

    def gate(self) -> Tensor:
        return self.sample() if self.training else self.open_mask()

    def expected_open(self) -> Tensor:
        return _hard_concrete_open_prob(self.log_alpha, self.beta).sum()

    def forward(self, x: Tensor) -> Tensor:
        d = self.dim if self.dim >= 0 else x.dim() + self.dim
        shape = [1] * x.dim()
        shape[d] = self.num_channels
        return x * self.gate().to(x.dtype).view(shape)


class GatedWidth(DynamicWidth):
    """A :class:`~slimtrain.DynamicWidth` whose channels are switched by hard-concrete gates.

    :func:`add_gates` turns the DCLs of a dynamic model into this class in place,
    so every wrapper, tied residual group and the cost graph stay as they are.
    ``width`` is the expected number of open gates (what the budget loss
    costs); ``hard_width`` the number open in eval. One gate sample is drawn
    per model forward and shared by every use of the group.

    Cost: :func:`expected_cost` is the differentiable (training) cost;
    ``slimtrain.model_cost(model, hard=True)`` counts the open gates (the
    exported model). ``model_cost`` in its soft mode reads the frozen DCL
    ``theta``, not the gates: do not use it for a gated model.
    """

    gate: HardConcreteGate

    @property
    def width(self) -> Tensor:  # type: ignore[override]
        return self.gate.expected_open()

    @property
    def hard_width(self) -> int:  # type: ignore[override]
        return self.gate.open_count()

    def resample(self) -> None:
        self.__dict__["_z"] = None

    def _current(self) -> Tensor:
        z = self.__dict__.get("_z")
        if z is None:
            z = self.gate.sample()
            if not bool((z > 0).any()):  # never a group with zero channels (a LayerNorm over none is NaN):
                # open the most likely gate fully for this sample, as the eval rule keeps at least one
                z = z + torch.zeros_like(z).index_fill_(0, self.gate.log_alpha.detach().argmax().reshape(1), 1.0)
            self.__dict__["_z"] = z
        return z

    def hard_mask(self) -> Tensor:  # type: ignore[override]
        return self.gate.open_mask()

    def mask(self) -> Tensor:  # type: ignore[override]
        return self._current() if self.training and not self.frozen else self.hard_mask()

    def keep_share(self, width: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        return self.mask()

    soft_mask = mask  # type: ignore[assignment]

    def forward(self, x: Tensor, dim: Optional[int] = None) -> Tensor:  # type: ignore[override]
        d = self._axis(x, dim)
        shape = [1] * x.dim()
        shape[d] = self.num_channels
        return x * self.mask().to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return (f"num_channels={self.num_channels}, dim={self.dim}, expected_open="
                f"{float(self.width.detach()):.2f}, open_in_eval={self.hard_width}")


def gates(model: nn.Module) -> dict[str, GatedWidth]:
    """Every gated group of a model prepared by :func:`add_gates`, by module name."""
    from ..core.graph import get_graph

    return {n: model.get_submodule(n) for n in get_graph(model).dcls.values()
            if isinstance(model.get_submodule(n), GatedWidth)}


def add_gates(model: nn.Module, sample, layers=None, *, exclude: Iterable[str] = (), init_open: float = 0.9,
              beta: float = BETA) -> nn.Module:
    """Put hard-concrete channel gates where :func:`slimtrain.make_dynamic` would put DCLs, in place.

    Calls ``make_dynamic(model, sample, layers, exclude=...)`` (so residual
    groups share one gate vector and :func:`slimtrain.model_cost` knows the
    layers) and turns each DCL into a :class:`GatedWidth`. A
    :class:`~slimtrain.MelFrontend` gets gates on its bands as it would get a
    DCL (the paper's SG models select mel bands too); pass its name in
    ``exclude`` to keep every band. The DCL's ``theta`` is frozen
    (``requires_grad=False``); the learnable parameters are the ``log_alpha`` s.
    Returns the same model.
    """
    from ..core.graph import make_dynamic

    make_dynamic(model, sample, layers, exclude=tuple(exclude))
    seen: set[int] = set()
    gated = []
    for m in model.modules():
        if isinstance(m, DynamicWidth) and id(m) not in seen:
            seen.add(id(m))
            m.__class__ = GatedWidth
            m.min_width = 1.0
            m.theta.requires_grad_(False)
            m.gate = HardConcreteGate(m.num_channels, m.dim, init_open=init_open, beta=beta).to(m.theta.device)
            gated.append(m)
    model.__dict__["_slimtrain_gates"] = gated
    model.register_forward_pre_hook(_resample_gates)
    return model


def _resample_gates(model: nn.Module, args) -> None:
    """Forward pre-hook: a fresh gate sample for every model forward (shared by all uses of a group)."""
    for m in model.modules():
        if isinstance(m, GatedWidth):
            m.resample()


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log_alpha`` of every gate (once per tied group)."""
    return [g.gate.log_alpha for g in model.__dict__.get("_slimtrain_gates", [])]


def make_gate_optimizer(model: nn.Module, lr: float = 1e-3, gate_lr: float = 1e-2,
                        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with a separate learning rate for the gate ``log_alpha`` s (the gated twin of
    :func:`slimtrain.train.training.make_optimizer`, which would give them the weights' rate)."""
    if lr <= 0 or gate_lr <= 0:
        raise ValueError(f"learning rates must be positive, got lr={lr}, gate_lr={gate_lr}")
    gp = gate_parameters(model)
    if not gp:
        raise ValueError("make_gate_optimizer needs a model prepared by add_gates(model, sample)")
    ids = {id(p) for p in gp}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.Adam([{"params": rest, "lr": lr, "weight_decay": weight_decay},
                             {"params": gp, "lr": gate_lr, "weight_decay": 0.0}])


def expected_cost(model: nn.Module):
    """``(MACs, params)`` per item at the expected number of open gates, differentiable in every ``log_alpha``.

    Evaluates the core's compiled cost polynomial (:mod:`slimtrain.core.cost`) at the
    gate widths, so no cost model is duplicated here.
    """
    from ..core.cost import _compiled
    from ..core.graph import get_graph

    g = get_graph(model)
    comp = _compiled(model, g)
    mods = g.dcl_modules(model)
    widths = torch.stack([mods[r].width.reshape(()).float() for r in comp.roots]) if comp.roots else torch.zeros(0)
    return comp(widths)


class GateBudgetLoss(nn.Module):
    """Complexity-budget interval for a gated model: ``task + mu * (v + v^2) + l0 * open share``.

    ``v = (relu(lo - C) + relu(C - hi)) / C_full`` is the distance (in units of
    the full model's cost) of the expected cost ``C`` (at the expected numbers
    of open gates) from the interval ``[lo, hi] = [low + margin*w, high - margin*w]``,
    ``w = high - low``: zero inside it, linear near it (a gradient that does not
    vanish at the edge, so the task loss cannot hold the cost just outside) and
    squared far from it. ``margin`` (default 0.1) aims a little inside the
    requested interval so the sampled gates end up in it; ``margin=0`` makes the
    penalty zero on all of ``[low, high]``. ``l0`` (default 0) adds the mean open
    probability over all gates (the L0 term of Louizos et al.).

    Args:
        model: a model prepared by :func:`add_gates`.
        low, high: the interval, in the unit of ``metric``, or as shares of the
            full model's cost when ``relative=True`` (the paper's ``[kappa_min, 2 kappa_min)``).
        metric: ``"macs"``, ``"flops"`` or ``"params"``.
        mu: weight of the hinge.
        margin: share of the interval width kept free on each side (``[0, 0.5)``).
    """

    def __init__(self, model: nn.Module, low: float, high: float, *, relative: bool = False, metric: str = "macs",
                 mu: float = 10.0, l0: float = 0.0, margin: float = 0.1) -> None:
        super().__init__()
        if model.__dict__.get("_slimtrain_gates") is None:
            raise ValueError("GateBudgetLoss needs a model prepared by add_gates(model, sample)")
        if metric not in ("macs", "flops", "params"):
            raise ValueError(f"metric must be 'macs', 'flops' or 'params', got {metric!r}")
        for name, v in (("low", low), ("high", high), ("mu", mu), ("l0", l0)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not low < high:
            raise ValueError(f"the budget interval needs low < high, got [{low!r}, {high!r}]")
        if not isinstance(margin, (int, float)) or not 0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
        self.model = [model]
        self.metric, self.mu, self.l0 = metric, float(mu), float(l0)
        with torch.no_grad():
            full = model_cost(model, full=True)
        self.full = float(full.params if metric == "params" else full.macs) * (2.0 if metric == "flops" else 1.0)
        scale = self.full if relative else 1.0
        self.low, self.high = float(low) * scale, float(high) * scale
        w = self.high - self.low
        self.aim = (self.low + margin * w, self.high - margin * w)
        if relative and high > 1 + 1e-9:
            raise ValueError(f"a relative interval must lie in [0, 1], got high={high!r}")
        self.last: dict[str, float] = {}

    def cost(self) -> Tensor:
        macs, params = expected_cost(self.model[0])
        return params if self.metric == "params" else macs * (2.0 if self.metric == "flops" else 1.0)

    def penalty(self) -> Tensor:
        c = self.cost()
        v = (torch.relu(self.aim[0] - c) + torch.relu(c - self.aim[1])) / self.full
        pen = self.mu * (v + v * v)
        if self.l0:
            gs = self.model[0].__dict__["_slimtrain_gates"]
            probs = torch.cat([_hard_concrete_open_prob(g.gate.log_alpha, g.gate.beta) for g in gs])
            pen = pen + self.l0 * probs.mean()
        self.last = {"cost": float(c.detach()), "cost_rel": float(c.detach()) / self.full,
                     "penalty": float(pen.detach())}
        return pen

    def forward(self, task_loss: Tensor) -> Tensor:
        pen = self.penalty()
        self.last["task"] = float(task_loss.detach())
        return task_loss + pen.to(task_loss.dtype)


def _expand(p: Tensor, size: int, outer: int, inner: int) -> Tensor:
    o = torch.arange(outer)[:, None, None] * size * inner
    c = p[None, :, None] * inner
    i = torch.arange(inner)[None, None, :]
    return (o + c + i).reshape(-1)


@torch.no_grad()
def _permute_layer(model: nn.Module, s, perms: dict[int, Tensor]) -> None:
    from ..core.modules import DynamicRecurrent

    if s.kind == "prod":
        return
    if s.kind == "param":
        p = perms.get(s.in_root)
        if p is not None:
            owner, _, attr = s.name.rpartition(".")
            t = getattr(model.get_submodule(owner) if owner else model, attr)
            t.copy_(t.index_select(s.extra["axis"], p))
        return
    m = model.get_submodule(s.name)
    p_out = perms.get(s.out_root) if s.out_root is not None else None
    if p_out is not None and s.extra.get("out_inner", 1) > 1:
        p_out = _expand(p_out, s.out_size, 1, s.extra["out_inner"])
    p_in = perms.get(s.in_root) if s.in_root is not None else None
    in_idx = _expand(p_in, s.in_size, s.in_outer, s.in_inner) if p_in is not None else None
    if "in_segs" in s.extra and any(r is not None and r in perms for r, _ in s.extra["in_segs"]):
        parts, off = [], 0
        for r, n in s.extra["in_segs"]:
            parts.append(off + (perms[r] if r is not None and r in perms else torch.arange(n)))
            off += n
        in_idx = torch.cat(parts)

    def rows(t, idx):
        if t is not None and idx is not None:
            t.copy_(t.index_select(0, idx))

    def cols(t, idx):
        if t is not None and idx is not None:
            t.copy_(t.index_select(1, idx))

    if s.kind in ("linear", "conv"):
        depthwise = s.kind == "conv" and m.groups > 1
        if depthwise and p_in is not None and (p_out is None or not torch.equal(p_in, p_out)):
            raise ValueError(f"cannot reorder the gated channels of grouped conv '{s.name}'")
        rows(m.weight, p_out)
        rows(m.bias, p_out)
        if not depthwise:
            cols(m.weight, in_idx)
    elif s.kind in ("bn", "ln"):
        for k in ("weight", "bias", "running_mean", "running_var"):
            rows(getattr(m, k, None), in_idx)
    elif s.kind == "rnn":
        r = m.rnn if isinstance(m, DynamicRecurrent) else m
        gates_n = 3 if isinstance(r, nn.GRU) else 4
        h, dirs = r.hidden_size, 2 if r.bidirectional else 1
        g_rows = torch.cat([g * h + p_out for g in range(gates_n)]) if p_out is not None else None
        for name, prm in r.named_parameters(recurse=False):
            rows(prm, g_rows)
            if name.startswith("weight_hh"):
                cols(prm, p_out)
            elif name.startswith("weight_ih_l0"):
                cols(prm, in_idx)
            elif name.startswith("weight_ih") and p_out is not None:
                cols(prm, _expand(p_out, h, dirs, 1))
        r.flatten_parameters()
    elif s.kind == "mel":
        if p_out is not None:
            m.fbank.copy_(m.fbank.index_select(0, p_out))


def export_gated(model: nn.Module) -> nn.Module:
    """A dense copy of a gated model with every closed channel removed (equal to the model in eval mode).

    The open channels of each group are moved to the front (a permutation of
    producer rows and consumer columns, which leaves the function unchanged),
    each gate becomes an ordinary DCL with ``K`` = the open count, and
    :func:`slimtrain.export` cuts to it.
    """
    from ..core.export import export
    from ..core.graph import get_graph

    g = get_graph(model)
    _resample_gates(model, ())  # drop cached samples (non-leaf tensors cannot be deep-copied)
    work = copy.deepcopy(model).eval()
    work.__dict__["_slimtrain_graph"] = g
    mods = g.dcl_modules(work)
    perms: dict[int, Tensor] = {}
    for r, d in mods.items():
        if isinstance(d, GatedWidth):
            open_ = d.hard_mask()
            perms[r] = torch.argsort(-open_, stable=True)
    for s in g.layers:
        _permute_layer(work, s, perms)
    for r, d in mods.items():
        if isinstance(d, GatedWidth):
            k = d.hard_width
            with torch.no_grad():
                d.gate.log_alpha.copy_(d.gate.log_alpha[perms[r]])
            del d.gate
            d.__class__ = DynamicWidth
            d.set_width(float(k))
    return export(work)
