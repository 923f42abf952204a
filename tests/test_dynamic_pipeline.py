"""make_dynamic as its stages: one trace, a plan as plain data (ties, LayerNorm bindings, refusals resolved in
it), attach, and the graph that cost and export read, each checked on its own."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain import GraphError, width_report
from slimtrain import graph as graph_mod
from slimtrain.core.attach import bound_width
from slimtrain.core.graph import attach, build_graph, get_graph, plan_attachments
from slimtrain.core.plan import AttachPlan
from slimtrain.core.trace import ALWAYS, NEVER, Masked, trace_channels, when

from _helpers import ResIdentity


class ResLN(nn.Module):
    """A post-LN transformer-style block: ``norm(h + fc2(relu(fc1(h))))``; ``inp`` and ``fc2`` are one width."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.norm(h + self.fc2(torch.relu(self.fc1(h)))))


def gated():
    """``0`` feeds ``2`` through a sigmoid, which makes the cut channels 0.5, not 0: that width cannot shrink,
    which only the check of the graph with its DCLs in place finds (the selection sees a supported op)."""
    return nn.Sequential(nn.Linear(4, 16), nn.Sigmoid(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


X_LN, X_GATED, X_RES = torch.randn(2, 5, 6), torch.randn(3, 4), torch.randn(2, 3, 8, 8)


def _plan(model, x, **kw):
    tr = trace_channels(model, x, extended=True)
    return tr, plan_attachments(model, tr, batch=x.shape[0], **kw)


def _untouched(model):
    """What make_dynamic would change: children, hooks, state_dict keys."""
    return ([type(m).__name__ for m in model.modules()], list(model.state_dict()),
            [len(m._forward_hooks) for m in model.modules()])


def test_make_dynamic_traces_the_model_once(monkeypatch):
    """Residual ties, a LayerNorm binding, a BatchNorm host and a refused width: all settled from one trace
    (the stages before traced again after attaching, and once more per refusal)."""
    calls = []
    real = graph_mod.trace_channels
    monkeypatch.setattr(graph_mod, "trace_channels", lambda *a, **k: calls.append(1) or real(*a, **k))
    for model, x in ((ResLN(), X_LN), (ResIdentity(), X_RES), (gated(), X_GATED)):
        calls.clear()
        slimtrain.make_dynamic(model, x)
        assert len(calls) == 1, type(model).__name__
        assert get_graph(model).plan.retrace == ""


def test_the_plan_of_a_residual_model_ties_its_producers_and_binds_its_layer_norm():
    m = ResLN()
    before = _untouched(m)
    _, plan = _plan(m, X_LN)
    assert _untouched(m) == before  # planning reads the model only
    assert sorted(plan.tied.values()) == [("fc1",), ("inp", "fc2")]
    joined = next(r for r, ps in plan.tied.items() if ps == ("inp", "fc2"))
    assert plan.dcls[joined] == "inp.dcl"  # the first of the tied producers in the forward pass
    dcl_of = {i.module: i.dcl for i in plan.installs}
    assert {i.how for i in plan.installs} == {"hook"} and set(dcl_of) == {"inp", "fc1", "fc2"}
    assert dcl_of["inp"] == dcl_of["fc2"] != dcl_of["fc1"]  # one DCL for the joined width
    assert plan.layer_norms == (("norm", dcl_of["inp"]),)
    assert [n for n, _ in plan.new] == [16, 32, 16]  # one per chosen producer, as before; fc2's is not used
    assert plan.refused == {} and plan.retrace == ""


def test_a_width_that_does_not_fit_is_left_fixed_inside_the_plan_with_its_reason():
    m = gated()
    _, plan = _plan(m, X_GATED)
    assert list(plan.refused) == ["0"]
    cat, why = plan.refused["0"]
    assert cat == "unsupported" and "operation 'sigmoid' on the width of '0' before layer '2'" in why
    assert list(plan.dcls.values()) == ["2.dcl"]  # planned again without it: the other width stays dynamic
    assert [i.module for i in plan.installs] == ["2"]
    slimtrain.make_dynamic(m, X_GATED)
    fixed = next(e for e in width_report(m).entries if e.producers == ["0"])
    assert not fixed.dynamic and (fixed.category, fixed.reason) == (cat, why)
    # asked for explicitly, or strict about unsupported ops, the same finding is the error
    for kw in ({"layers": ["0"]}, {"strict": True}):
        m2 = gated()
        tr2 = trace_channels(m2, X_GATED, extended=True)
        with pytest.raises(GraphError, match="operation 'sigmoid' on the width of '0'"):
            plan_attachments(m2, tr2, batch=3, **kw)


def test_attaching_the_plan_to_a_fresh_copy_gives_the_model_make_dynamic_gives():
    torch.manual_seed(0)
    m = ResLN()
    twin = copy.deepcopy(m)
    slimtrain.make_dynamic(m, X_LN, kappa_min=0.25)
    plan = get_graph(m).plan
    attach(twin, plan)
    assert list(twin.state_dict()) == list(m.state_dict())
    assert twin.fc2.dcl is twin.inp.dcl and twin.fc1.dcl is not twin.inp.dcl
    assert bound_width(twin.norm) is twin.inp.dcl
    assert (twin.inp.dcl.min_width, twin.fc1.dcl.min_width) == (m.inp.dcl.min_width, m.fc1.dcl.min_width) == (4, 8)
    for net in (m, twin):
        net.inp.dcl.set_width(5)
        net.fc1.dcl.set_width(11)
        net.eval()
    with torch.no_grad():
        assert torch.equal(m(X_LN), twin(X_LN))


def test_the_graph_cost_and_export_read_is_the_plans():
    torch.manual_seed(0)
    m = ResLN()
    tr, plan = _plan(copy.deepcopy(m), X_LN)
    slimtrain.make_dynamic(m, X_LN)
    g = get_graph(m)
    assert isinstance(g.plan, AttachPlan) and g.plan == plan  # the same decisions as planned on a copy
    assert g.dcls == plan.dcls
    again = build_graph(m, tr, plan)  # the build stage is a function of (trace, plan)
    assert (again.dcls, again.layers, again.fixed_macs) == (g.dcls, g.layers, g.fixed_macs)
    joined = next(r for r, ps in plan.tied.items() if ps == ("inp", "fc2"))
    m.get_submodule(plan.dcls[joined]).set_width(5)
    small = slimtrain.export(m)
    assert small.inp.out_features == small.fc2.out_features == small.norm.normalized_shape[0] == 5
    assert small.out.in_features == 5
    with torch.no_grad():
        assert (small(X_LN) - m.eval()(X_LN)).abs().max().item() <= 1e-5


def test_an_error_while_attaching_leaves_the_model_unchanged():
    """The plan is carried out install by install; one that fails after others worked undoes them all."""
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    m[2].dcl = "the user's"  # the name slimtrain's child would take
    before = _untouched(m)
    _, plan = _plan(m, torch.randn(3, 4))
    assert [i.module for i in plan.installs] == ["0", "2"]  # "0" goes first and succeeds
    with pytest.raises(GraphError, match=r"module '2' \(Linear\) already has an attribute 'dcl'"):
        slimtrain.make_dynamic(m, torch.randn(3, 4))
    assert _untouched(m) == before and m[2].dcl == "the user's"
    slimtrain.make_dynamic(m, torch.randn(3, 4), exclude=["2"])  # the corrected call
    assert list(slimtrain.dynamic_widths(m)) == ["0.dcl"]


_CONDS = [("host", "a"), ("host", "b"), ("heads", "c"), ("ln", "d")]
_formulas = st.recursive(
    st.sampled_from([("always",), ("never",)]) | st.sampled_from(_CONDS).map(lambda c: ("when", c)),
    lambda inner: st.tuples(st.sampled_from(["and", "or"]), inner, inner), max_leaves=10)


def _as_masked(f) -> Masked:
    if f[0] in ("always", "never"):
        return ALWAYS if f[0] == "always" else NEVER
    if f[0] == "when":
        return when(f[1])
    a, b = _as_masked(f[1]), _as_masked(f[2])
    return a & b if f[0] == "and" else a | b


def _truth(f, on: set) -> bool:
    if f[0] in ("always", "never"):
        return f[0] == "always"
    if f[0] == "when":
        return f[1] in on
    a, b = _truth(f[1], on), _truth(f[2], on)
    return (a and b) if f[0] == "and" else (a or b)


@given(f=_formulas, on=st.sets(st.sampled_from(_CONDS)))
def test_a_masked_condition_answers_as_its_boolean_formula_for_every_choice(f, on):
    m = _as_masked(f)
    assert m.holds(on.__contains__) == _truth(f, on)
    assert m.now == _truth(f, set())


def test_a_masked_condition_has_no_truth_value_of_its_own():
    with pytest.raises(TypeError, match="use .now or .holds"):
        bool(when(("host", "a")))
