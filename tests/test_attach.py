"""Non-intrusive attachment: the user's modules keep class, attributes and parameter names."""
from __future__ import annotations

import copy

import torch
from torch import nn

import slimtrain
from slimtrain.core.attach import attached_dcl, bound_width


class Net(nn.Module):
    """Code that reads its layers' attributes in forward (as ViT/HF models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(12)
        self.proj = nn.Linear(12, 10)
        self.ln = nn.LayerNorm(10)
        self.rnn = nn.GRU(10, 9, batch_first=True)
        self.head = nn.Linear(9, 2)

    def forward(self, x):
        assert self.conv1.stride == (1,) and self.proj.weight.shape[1] == self.conv1.out_channels
        h = torch.relu(self.bn1(self.conv1(x))).transpose(1, 2)
        h = torch.relu(self.ln(self.proj(h)))
        return self.head(self.rnn(h)[0][:, -1])


def _net():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn1.running_mean.normal_()
        m.bn1.running_var.uniform_(0.5, 2)
        m.ln.weight.uniform_(0.5, 1.5)
    return m, torch.randn(4, 3, 7)


def test_modules_keep_their_class_attributes_and_parameter_names():
    m, x = _net()
    types = {n: type(mod) for n, mod in m.named_modules()}
    keys = set(m.state_dict())
    slimtrain.make_dynamic(m, x)
    for n, t in types.items():
        assert type(m.get_submodule(n)) is t, n
    new = set(m.state_dict()) - keys
    assert new == {"bn1.dcl.theta", "proj.dcl.theta", "rnn.dcl.theta"}
    assert attached_dcl(m.bn1) is m.bn1.dcl and attached_dcl(m.conv1) is None
    assert bound_width(m.ln) is m.proj.dcl
    m.train()
    m(x)  # the forward that reads self.conv1.stride / self.proj.weight runs


def test_original_state_dict_loads_strictly_before_and_after_make_dynamic():
    m, x = _net()
    original = copy.deepcopy(m.state_dict())
    slimtrain.make_dynamic(m, x)
    m.proj.dcl.set_width(4)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if ".dcl." not in n:
                p.add_(1.0)
    res = m.load_state_dict(original, strict=True)  # no DCL keys in it: not an error
    assert not res.missing_keys and not res.unexpected_keys
    assert torch.equal(m.proj.weight, original["proj.weight"])
    assert m.proj.dcl.hard_width == 4  # the width was not in the dict: kept
    # a dynamic state dict (with the widths) round-trips into a fresh dynamic model
    m2, _ = _net()
    slimtrain.make_dynamic(m2, x)
    m2.load_state_dict(m.state_dict(), strict=True)
    assert m2.proj.dcl.hard_width == 4
    # a wrong key is still an error
    bad = dict(original)
    bad["proj.weightt"] = bad.pop("proj.weight")
    try:
        m2.load_state_dict(bad, strict=True)
    except RuntimeError as e:
        assert "proj.weight" in str(e)
    else:  # pragma: no cover
        raise AssertionError("a missing user key must fail a strict load")


def test_export_cuts_in_place_keeping_classes_and_config_attributes():
    m, x = _net()
    slimtrain.make_dynamic(m, x)
    m.bn1.dcl.set_width(5)
    m.proj.dcl.set_width(6.5)
    m.rnn.dcl.set_width(4)
    m.eval()
    small = slimtrain.export(m)
    for n, mod in m.named_modules():
        if n and not n.endswith("dcl"):
            assert type(small.get_submodule(n)) is type(mod), n
    assert not any(isinstance(mod, slimtrain.DynamicWidth) for mod in small.modules())
    assert not any(mod._forward_hooks for mod in small.modules())
    assert (small.conv1.out_channels, small.bn1.num_features) == (5, 5)
    assert (small.proj.in_features, small.proj.out_features, small.ln.normalized_shape) == (5, 7, (7,))
    assert (small.rnn.input_size, small.rnn.hidden_size, small.head.in_features) == (7, 4, 4)
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5
    assert set(small.state_dict()) == {k for k in m.state_dict() if ".dcl." not in k}
    # the dynamic model is untouched and still dynamic
    assert m.proj.dcl.hard_width == 7 and m.proj.weight.shape == (10, 12)


def test_subclassed_layer_keeps_its_class_and_extra_attributes():
    class Tagged(nn.Linear):
        note = "mine"

    m = nn.Sequential(Tagged(4, 8), nn.ReLU(), nn.Linear(8, 2))
    m[0].extra_value = 3
    x = torch.randn(5, 4)
    slimtrain.make_dynamic(m, x)
    m[0].dcl.set_width(3)
    small = slimtrain.export(m.eval())
    assert type(small[0]) is Tagged and small[0].extra_value == 3 and small[0].out_features == 3
    with torch.no_grad():
        assert (small(x) - m(x)).abs().max().item() <= 1e-5


def test_failed_make_dynamic_leaves_no_hooks_or_children():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    try:
        slimtrain.make_dynamic(m, torch.randn(5, 4), layers=["nope"])
    except slimtrain.GraphError:
        pass
    assert not any(mod._forward_hooks for mod in m.modules())
    assert set(m.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_dynamic_model_pickles_and_deep_copies_with_its_hooks():
    import io

    m, x = _net()
    slimtrain.make_dynamic(m, x)
    m.rnn.dcl.set_width(4)
    m.proj.dcl.set_width(6)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(m)
    for other in (loaded, twin):
        assert other.rnn.dcl is not m.rnn.dcl and other.rnn.dcl.hard_width == 4
        other.eval()
    m.eval()
    with torch.no_grad():
        ref = m(x)
        assert torch.equal(loaded(x), ref) and torch.equal(twin(x), ref)
        twin.rnn.dcl.set_width(2)  # the copy's hooks use the copy's widths
        assert not torch.equal(twin(x), ref) and torch.equal(m(x), ref)


def test_original_state_dict_of_a_converted_transformer_layer_loads_strictly():
    """A free-standing nn.TransformerEncoderLayer becomes a TransformerBlock; its original keys still load."""
    torch.manual_seed(0)

    def build():
        return nn.Sequential(nn.Linear(6, 16), nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True),
                             nn.Linear(16, 2))

    ref = build().eval()
    x = torch.randn(2, 5, 6)
    m = build()
    slimtrain.make_dynamic(m, x)
    assert isinstance(m[1], slimtrain.TransformerBlock)
    m.load_state_dict(ref.state_dict(), strict=True)
    m.eval()
    with torch.no_grad():
        assert (m(x) - ref(x)).abs().max().item() <= 1e-5
