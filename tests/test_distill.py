"""Distillation while shrinking (slimtrain.Distiller): the terms' maths, gradients to the widths, fit."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain.core.distill import DistillError, Distiller, output_distill_loss
from slimtrain.train.training import fit, make_optimizer


def _net(hidden: int = 16, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


logits = st.lists(st.floats(-6, 6, width=32, allow_subnormal=False), min_size=8, max_size=8).map(lambda v: torch.tensor(v).reshape(2, 4))


@settings(max_examples=40, deadline=None)
@given(s=logits, t=logits, temp=st.floats(0.5, 4.0), kind=st.sampled_from(["kl", "mse"]))
def test_output_term_is_zero_only_for_equal_outputs_and_never_negative(s, t, temp, kind):
    assert float(output_distill_loss(t, t, kind, temp)) == pytest.approx(0.0, abs=1e-6)
    d = float(output_distill_loss(s, t, kind, temp))
    assert d >= -1e-6
    if kind == "mse" and (s - t).abs().max() > 1e-3:  # a difference the float32 square does not flush to 0
        assert d > 0


@settings(max_examples=30, deadline=None)
@given(s=logits, t=logits, temp=st.floats(0.5, 4.0))
def test_kl_term_is_hintons_formula(s, t, temp):
    p_t = torch.softmax(t / temp, -1)
    want = temp ** 2 * (p_t * (torch.log(p_t) - torch.log_softmax(s / temp, -1))).sum(-1).mean()
    assert float(output_distill_loss(s, t, "kl", temp)) == pytest.approx(float(want), rel=1e-4, abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(s=logits, t=logits, temp=st.floats(0.5, 4.0))
def test_bce_term_is_minimal_at_the_teachers_logits(s, t, temp):
    # BCE against soft targets sigmoid(t/T) is minimised exactly at s = t: its gradient vanishes there
    x = t.clone().requires_grad_(True)
    output_distill_loss(x, t, "bce", temp).backward()
    assert x.grad.abs().max() < 1e-5
    assert float(output_distill_loss(s, t, "bce", temp)) >= float(output_distill_loss(t, t, "bce", temp)) - 1e-6


def test_the_output_term_reaches_the_widths_and_weights_but_not_the_teacher():
    teacher = _net()
    student = slimtrain.make_dynamic(copy.deepcopy(teacher), torch.randn(8, 6), kappa_min=0.2)
    for d in student.modules():
        if isinstance(d, slimtrain.DynamicWidth):
            d.set_width(9.5)
    kd = Distiller(teacher, output="kl", temperature=2.0)
    x = torch.randn(32, 6)
    kd(x, student(x)).backward()
    thetas = [d.theta for d in student.modules() if isinstance(d, slimtrain.DynamicWidth)]
    assert thetas and all(t.grad is not None and t.grad.abs().sum() > 0 for t in thetas)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_hidden_states_of_a_cut_student_are_pulled_to_the_teachers():
    teacher = _net()
    student = slimtrain.make_dynamic(copy.deepcopy(teacher), torch.randn(8, 6), kappa_min=0.2)
    kd = Distiller(teacher, student, output=None, hidden={"2": "2"})
    x = torch.randn(16, 6)
    student.eval()
    assert float(kd(x, student(x)).detach()) == pytest.approx(0.0, abs=1e-6)  # full widths: same network
    for d in student.modules():
        if isinstance(d, slimtrain.DynamicWidth):
            d.set_width(4.0)
    cut = float(kd(x, student(x)).detach())
    assert cut > 0.05 and set(kd.last) == {"hidden"}


def test_projection_maps_a_narrower_student_to_the_teacher():
    teacher, student = _net(hidden=16), _net(hidden=8, seed=1)
    proj = nn.Linear(8, 16)
    kd = Distiller(teacher, student, output="mse", hidden={"0": "0"}, projections={"0": proj})
    assert [p is q for p, q in zip(kd.parameters(), proj.parameters())] == [True, True]
    x = torch.randn(4, 6)
    kd(x, student(x)).backward()
    assert proj.weight.grad is not None


@pytest.mark.parametrize("kwargs, match", [
    ({"output": "ce"}, "output must be one of"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"weight": -1}, "weight must be a number >= 0"),
    ({"temperature": float("inf")}, r"temperature must be > 0 \(and finite\), got inf"),
    ({"weight": float("nan")}, r"weight must be a number >= 0 \(and finite\), got nan"),
    ({"output": None}, "nothing to distil"),
    ({"hidden": {"0": "0"}}, "hidden= needs the student"),
    ({"hidden": {"0": "9"}, "student": "S"}, "the teacher has no module named '9'"),
    ({"hidden": {"x.y": "0"}, "student": "S"}, "the student has no module named 'x.y'"),
    ({"hidden": {"0": "0"}, "student": "S", "projections": {"4": nn.Identity()}}, r"projections for \['4'\]"),
])
def test_bad_settings_are_named_errors(kwargs, match):
    if kwargs.get("student") == "S":
        kwargs["student"] = _net()
    with pytest.raises(DistillError, match=match):
        Distiller(_net(), **kwargs)


def test_outputs_or_hidden_states_of_other_shapes_are_named_errors():
    kd = Distiller(_net(out=3), output="kl")
    with pytest.raises(DistillError, match=r"student output has shape \(4, 5\) but the teacher's has \(4, 3\)"):
        kd(torch.randn(4, 6), torch.randn(4, 5))
    teacher, student = _net(hidden=16), _net(hidden=8)
    kd = Distiller(teacher, student, output=None, hidden={"0": "0"})
    x = torch.randn(4, 6)
    with pytest.raises(DistillError, match=r"hidden state of student '0' has shape \(4, 8\).*projections="):
        kd(x, student(x))


def test_fit_with_a_teacher_trains_the_student_toward_it():
    torch.manual_seed(3)
    teacher = _net()
    x = torch.randn(64, 6)
    student = slimtrain.make_dynamic(_net(seed=7), x[:8], kappa_min=0.5)
    kd = Distiller(teacher, output="kl", temperature=1.0)
    gap = lambda: float(output_distill_loss(student.eval()(x), teacher(x), "kl"))  # noqa: E731
    before = gap()
    t0 = [p.detach().clone() for p in teacher.parameters()]
    fit(student, lambda e: [(x[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 64, 16)],
        lambda out, y: out.sum() * 0.0,  # no labels: the teacher is the only signal
        slimtrain.TradeoffLoss(student, alpha=0.0), make_optimizer(student, lr=1e-2), epochs=8,
        progress=False, distill=kd)
    assert gap() < 0.5 * before
    assert all(torch.equal(a, b) for a, b in zip(t0, teacher.parameters()))


def test_a_callable_teacher_labels_inputs():
    kd = Distiller(lambda x: x.sum(-1, keepdim=True), output="mse")
    x = torch.randn(5, 3)
    assert float(kd(x, x.sum(-1, keepdim=True))) == 0.0
    assert float(kd(x, torch.zeros(5, 1))) == pytest.approx(float((x.sum(-1) ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize("layer", ["0", "2"])
def test_the_hidden_term_is_unchanged_by_compaction(layer):
    teacher = _net(hidden=16)
    student = slimtrain.make_dynamic(copy.deepcopy(teacher), torch.randn(8, 6), kappa_min=0.2)
    for d, k in zip([m for m in student.modules() if isinstance(m, slimtrain.DynamicWidth)], (5.0, 9.0)):
        d.set_width(k)
    kd = Distiller(teacher, student, output="kl", hidden={layer: layer})
    x = torch.randn(16, 6)
    student.eval()
    before = float(kd(x, student(x)).detach())
    slimtrain.compact(student)
    assert student.get_submodule(layer).weight.shape[0] < 16  # really cut
    after = float(kd(x, student(x)).detach())
    assert after == pytest.approx(before, rel=1e-5, abs=1e-6)
