"""Knowledge distillation while shrinking: a fixed teacher guides the model whose widths are learned.

The strongest learned structured-pruning methods for speech and language models (DPHuBERT, CoFi)
shrink the student while it imitates a teacher, usually the full model it starts from. The
:class:`Distiller` gives that term for any model prepared by :func:`slimtrain.make_dynamic`::

    teacher = copy.deepcopy(trained_full_model)          # or any model that scores the same task
    model = slimtrain.make_dynamic(trained_full_model, sample)
    kd = slimtrain.Distiller(teacher, output="bce", temperature=2.0, weight=1.0)
    out = model(x)
    loss = objective(task_loss(out, y) + kd(x, out))   # or fit(..., distill=kd)

* output terms (``output=``): ``"kl"`` -- softmax classes on the last axis,
  ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.); ``"bce"`` -- independent binary logits
  (frame-level VAD, a one-logit countermeasure), ``T^2 * BCE(s/T, sigmoid(t/T))``; ``"mse"`` -- the
  raw outputs, mean squared error. ``T^2`` keeps the gradient's scale independent of ``T``.
* hidden-state terms (``hidden={student_module: teacher_module}``, with ``student=model``): the output of each named student
  module is matched to the teacher's by ``MSE / var(teacher)`` (so every pair weighs the same
  whatever its scale), through an optional projection (``projections={student_module: nn.Module}``;
  its parameters are the distiller's, for the optimiser). Channels a DCL has cut are zero in the
  student and not in the teacher, so the hidden term pulls toward keeping width: the trade-off
  against the cost term is the user's ``hidden_weight``. After :func:`slimtrain.compact` a student's
  hidden state has fewer channels; the removed ones were exact zeros, so they are matched as zeros
  (the term does not change by compaction).

The teacher runs in eval mode under ``torch.no_grad()`` and is never trained. Any callable that maps
the inputs to outputs of the student's shape may be a teacher (e.g. a labeller of unlabelled audio).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .compact import compacted_sizes

__all__ = ["Distiller", "DistillError", "output_distill_loss"]

OUTPUT_KINDS = ("kl", "bce", "mse")


class DistillError(ValueError):
    """A distillation term cannot be formed (shapes that differ, an unknown module, bad settings)."""


def output_distill_loss(student: Tensor, teacher: Tensor, kind: str = "kl", temperature: float = 1.0) -> Tensor:
    """The output term between student and teacher outputs of the same shape (see the module docs)."""
    if kind not in OUTPUT_KINDS:
        raise DistillError(f"output must be one of {OUTPUT_KINDS}, got {kind!r}")
    if student.shape != teacher.shape:
        raise DistillError(f"student output has shape {tuple(student.shape)} but the teacher's has "
                           f"{tuple(teacher.shape)}; distillation needs outputs of one shape")
    t = float(temperature)
    teacher = teacher.detach().to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "bce":
        return t * t * F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t))
    log_s = F.log_softmax(student / t, dim=-1).reshape(-1, student.shape[-1])
    log_t = F.log_softmax(teacher / t, dim=-1).reshape(-1, student.shape[-1])
    return t * t * F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def _first_tensor(out) -> Tensor:
    """A module's output tensor (the first element of a tuple output, e.g. a GRU's sequence)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise DistillError(f"a hidden-state module returned {type(out).__name__}, not a tensor or a tuple of tensors")


def _pad_compacted(s: Tensor, t: Tensor) -> Tensor:
    """A compacted student's hidden state, zero-filled back to the teacher's size.

    :func:`slimtrain.compact` keeps the first channels of a width and removes the rest, which the
    uncompacted student held at exactly zero; so for a compacted student, where the two shapes differ
    on one axis only and the student's is the smaller, the removed channels are restored as zeros at the end of that axis and
    the term is the one the uncompacted student would give. Other shape differences are left alone
    (and named by the caller). A per-head width (``heads="width"``) keeps channels inside every head,
    not at the end of the axis: match such a module through a projection.
    """
    if s.dim() != t.dim():
        return s
    diff = [i for i, (a, b) in enumerate(zip(s.shape, t.shape)) if a != b]
    if len(diff) != 1 or s.shape[diff[0]] > t.shape[diff[0]]:
        return s
    pad = [0, 0] * (s.dim() - 1 - diff[0]) + [0, t.shape[diff[0]] - s.shape[diff[0]]]
    return F.pad(s, pad)


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names, role: str) -> None:
        mods = dict(model.named_modules())
        missing = [n for n in names if n not in mods]
        if missing:
            known = ", ".join(n for n in list(mods)[1:12] if n)
            raise DistillError(f"{role} has no module named {missing[0]!r} (some of its modules: {known}, ...)")
        self.out: dict[str, Tensor] = {}
        self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_m, _i, out):
            self.out[name] = _first_tensor(out)
        return hook

    def pop(self) -> dict[str, Tensor]:
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Distiller(nn.Module):
    """The distillation term ``weight * output_term + hidden_weight * mean(hidden terms)``.

    Args:
        teacher: an ``nn.Module`` (put in eval mode, never trained) or a callable ``inputs -> outputs``.
        output: ``"kl"``, ``"bce"``, ``"mse"`` or ``None`` (hidden states only).
        temperature: ``T > 0`` of the ``kl`` and ``bce`` terms.
        weight: weight of the output term (``>= 0``).
        hidden: ``{student module name: teacher module name}`` pairs whose outputs are matched.
        hidden_weight: weight of the mean hidden-state term (``>= 0``).
        projections: ``{student module name: module}`` applied to that student output before matching.

        student: the model being trained; needed with ``hidden`` (its named modules are hooked now, so
            call the distiller after each forward of the student on the same inputs).

    Call it as ``distiller(inputs, student_output)`` after the student's forward on ``inputs``.
    """

    def __init__(self, teacher: nn.Module | Callable[..., Tensor], student: Optional[nn.Module] = None, *,
                 output: Optional[str] = "kl",
                 temperature: float = 1.0, weight: float = 1.0, hidden: Optional[Mapping[str, str]] = None,
                 hidden_weight: float = 1.0, projections: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__()
        if output is not None and output not in OUTPUT_KINDS:
            raise DistillError(f"output must be one of {OUTPUT_KINDS} or None, got {output!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise DistillError(f"temperature must be > 0 (and finite), got {temperature!r}")
        for name, v in (("weight", weight), ("hidden_weight", hidden_weight)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise DistillError(f"{name} must be a number >= 0 (and finite), got {v!r}")
        hidden = dict(hidden or {})
        if output is None and not hidden:
            raise DistillError("nothing to distil: give output= or hidden=")
        extra = set(projections or {}) - set(hidden)
        if extra:
            raise DistillError(f"projections for {sorted(extra)} name no student module of hidden=")
        if not callable(teacher):
            raise DistillError(f"teacher must be a module or a callable, got {type(teacher).__name__}")
        # the teacher is not a submodule: its weights are not the distiller's (optimiser, state_dict)
        self._teacher = [teacher]
        if isinstance(teacher, nn.Module):
            teacher.eval()
            teacher.requires_grad_(False)
        self.output, self.temperature, self.weight = output, float(temperature), float(weight)
        self.hidden, self.hidden_weight = hidden, float(hidden_weight)
        self.projections = nn.ModuleDict({k.replace(".", "__"): v for k, v in (projections or {}).items()})
        if hidden and not isinstance(teacher, nn.Module):
            raise DistillError("hidden= needs the teacher to be an nn.Module (its modules are hooked)")
        self._teacher_hooks: Optional[_Capture] = None
        self._student_hooks: Optional[_Capture] = None
        self._last: dict[str, Tensor] = {}
        if hidden:  # hooked now: a wrong module name fails here, and the student's first forward is seen
            if student is None:
                raise DistillError("hidden= needs the student: Distiller(teacher, student=model, hidden=...)")
            self._teacher_hooks = _Capture(teacher, list(hidden.values()), "the teacher")
            self._student_hooks = _Capture(student, list(hidden), "the student")
        self._student = [student]  # not a submodule either

    @property
    def last(self) -> dict[str, float]:
        """The output and hidden terms of the latest call, unweighted, as floats (read back on access)."""
        return {k: float(v) for k, v in self._last.items()}

    @property
    def teacher(self):
        return self._teacher[0]

    def _apply(self, fn, recurse=True):  # .to(device) / .half() move the (unregistered) teacher too
        if isinstance(self.teacher, nn.Module):
            self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def teacher_output(self, inputs) -> Tensor:
        """The teacher's output for ``inputs`` (no gradient; eval mode for a module)."""
        with torch.no_grad():
            out = self.teacher(inputs)
        return _first_tensor(out)

    def forward(self, inputs, student_output: Tensor) -> Tensor:
        """The distillation term for one batch. With ``hidden``, call it after the student's forward on
        ``inputs`` (its hidden outputs are those of the latest forward)."""
        if self.hidden and self._student_hooks is None:
            raise DistillError("the distiller's hooks were removed (remove_hooks()); build a new Distiller")
        s_hidden = self._student_hooks.pop() if self.hidden else {}
        if isinstance(self.teacher, nn.Module) and self.teacher.training:
            self.teacher.eval()  # a model.train() on a parent must not switch the teacher's dropout on
        t_out = self.teacher_output(inputs)
        total = student_output.new_zeros(())
        if self.output is not None and self.weight:
            term = output_distill_loss(student_output, t_out.to(student_output.device), self.output, self.temperature)
            self._last["output"] = term.detach()
            total = total + self.weight * term
        if self.hidden:
            t_hidden = self._teacher_hooks.pop()
            terms = []
            for s_name, t_name in self.hidden.items():
                if s_name not in s_hidden:
                    raise DistillError(f"student module {s_name!r} did not run in the latest forward; call the "
                                       "distiller after the student's forward on the same inputs")
                s = s_hidden[s_name]
                key = s_name.replace(".", "__")
                if key in self.projections:
                    s = self.projections[key](s)
                t = t_hidden[t_name].detach().to(s.device, s.dtype)
                if s.shape != t.shape and key not in self.projections and compacted_sizes(self._student[0]):
                    s = _pad_compacted(s, t)
                if s.shape != t.shape:
                    raise DistillError(f"hidden state of student {s_name!r} has shape {tuple(s.shape)}, the "
                                       f"teacher's {t_name!r} {tuple(t.shape)}; give projections={{{s_name!r}: ...}}")
                terms.append(F.mse_loss(s, t) / t.var().clamp_min(1e-8))
            term = torch.stack(terms).mean()
            self._last["hidden"] = term.detach()
            total = total + self.hidden_weight * term
        return total

    def remove_hooks(self) -> None:
        """Remove the forward hooks on the teacher and the student."""
        for c in (self._teacher_hooks, self._student_hooks):
            if c is not None:
                c.remove()
        self._teacher_hooks = self._student_hooks = None
