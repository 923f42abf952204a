"""Channel-flow tracing: which width (group) feeds which layer, from one forward pass.

A *group* is a space of channels produced by a layer (the output features of a
Linear, the output channels of a conv, the hidden size of a GRU...). Groups
joined by an elementwise add/sub/mul of two tensors are tied (a residual
connection forces its branches to share a width). Every tensor carries a tag
``(group, dim, outer, inner)``: its axis ``dim`` holds ``outer * N * inner``
elements and channel ``c`` of the group occupies the indices
``o * N * inner + c * inner + i``. That covers flatten/reshape in either order.

The tracer runs a sample forward with module hooks on known layers and a
:class:`torch.overrides.TorchFunctionMode` for the functional operations
between them. Operations it does not understand make the tag *opaque*; an
opaque dynamic group reaching a layer is an error that names the operation.

Whether a tensor's channels outside the width are zero depends on which DCLs
:func:`slimtrain.make_dynamic` attaches, so the tag holds it as a condition on
them (:class:`Masked`), and ``Trace.dcl_slots`` lists where each DCL would be
seen: the plan answers both for its own choice without tracing again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .attach import DCL_CHILD, attached_dcl, bound_width, is_dynamic_mha, is_dynamic_rnn
from .errors import GraphError
from .modules import DynamicRecurrent

__all__ = ["Tag", "Group", "LayerUse", "Trace", "trace_channels", "GraphError", "LEAF_TYPES", "HEAD_COUNT_ATTRS",
           "Masked", "ALWAYS", "NEVER"]


#: attributes of an attention module that hold its head count (a literal count in a view that reads one of these
#: follows a cut; export then updates every size attribute by value, see export._set_head_counts)
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "nhead", "num_key_value_heads")


@dataclass(frozen=True)
class Masked:
    """Whether a DCL zeroed the channels outside a width (and nothing since made them non-zero), as a condition
    on the DCLs :func:`slimtrain.make_dynamic` will attach: an OR of ANDs of *conditions*, each true when that
    attachment is made: ``("host", module)`` (slimtrain's DCL on the module's output, or a GRU/LSTM made
    dynamic), ``("heads", module)`` (an attention's head count made dynamic), ``("ln", module)`` (a LayerNorm
    bound to a width). One trace of the plain model so answers "zeroed?" for every choice of widths.

    :attr:`now` is the answer for the model as traced (nothing more attached); :meth:`holds` for a given choice.
    It has no truth value of its own (``bool(m)`` raises), so no reader confuses the condition with an answer."""

    terms: frozenset = frozenset()  # of frozensets of conditions; the empty term is always true

    def __and__(self, other: "Masked") -> "Masked":
        return Masked(_absorb(frozenset(a | b for a in self.terms for b in other.terms)))

    def __or__(self, other: "Masked") -> "Masked":
        return Masked(_absorb(self.terms | other.terms))

    def holds(self, attached: Callable[[Hashable], bool]) -> bool:
        """True if the channels are zero outside the width once exactly the conditions ``attached`` are made."""
        return any(all(attached(c) for c in t) for t in self.terms)

    @property
    def now(self) -> bool:
        """True if the channels are zero outside the width in the model as traced."""
        return frozenset() in self.terms

    def __bool__(self) -> bool:
        raise TypeError("Masked is a condition: use .now or .holds(attached)")


def _absorb(terms: frozenset) -> frozenset:
    """Drop the terms that contain another term (``a | (a & b) == a``)."""
    if len(terms) < 2:
        return terms
    return frozenset(t for t in terms if not any(o < t for o in terms))


#: zeroed whatever is attached (a DCL the model already holds) / never (an op made the channels non-zero)
ALWAYS = Masked(frozenset({frozenset()}))
NEVER = Masked()


def when(condition: Hashable) -> Masked:
    """Zeroed once ``condition`` is attached (see :class:`Masked`)."""
    return Masked(frozenset({frozenset({condition})}))


@dataclass(frozen=True)
class Tag:
    group: int
    dim: Optional[int]  # None: opaque (an unknown op touched the channels)
    outer: int = 1
    inner: int = 1
    producer: Optional[str] = None  # set while the tensor comes straight from one layer
    op: Optional[str] = None  # the op that made it opaque
    masked: Masked = NEVER  # a DCL zeroed the channels outside the width, and no BatchNorm since (a condition)
    # a concatenation along the channel axis: ((group, size), ...) in order; group -1 = a fixed block
    segs: Optional[tuple[tuple[int, int], ...]] = None

    def groups(self) -> list[int]:
        """Every group this tag carries (several for a channel concatenation)."""
        return [g for g, _ in self.segs if g >= 0] if self.segs else [self.group]


@dataclass
class Group:
    gid: int
    size: int
    producers: list[str] = field(default_factory=list)


@dataclass
class LayerUse:
    """One call of a known layer in the sample forward pass."""

    name: str
    kind: str
    in_tag: Optional[Tag]
    out_group: Optional[int]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trace:
    groups: dict[int, Group]
    uses: list[LayerUse]
    ties: list[tuple[int, int, str]]  # (group a, group b, where)
    loose_ties: list[tuple[int, str]]  # group tied to a tensor with no producer
    dcl_claims: list[tuple[str, int, Optional[str]]]  # (dcl name, group, producer it masked)
    bn_after: dict[str, str]  # producer name -> BatchNorm consuming its raw output
    output_tags: list[Optional[Tag]]
    fixed_macs: float = 0.0
    opaque: list[tuple[int, str]] = field(default_factory=list)  # (group, op) that lost track
    param_uses: list[tuple[str, int, int, str]] = field(default_factory=list)  # (parameter name, group, axis, op)
    param_reads: dict[str, str] = field(default_factory=dict)  # model parameter -> a layer that reads it as input
    prods: list[tuple[float, int]] = field(default_factory=list)  # (MACs at full width, group) of products
    group_inner: dict[int, int] = field(default_factory=dict)  # group -> elements per channel (head_dim)
    group_outer: dict[int, int] = field(default_factory=dict)  # group -> heads sharing one head width
    # (group, masked, op) of every product that contracts two activations over a dynamic width (q @ k^T)
    contractions: list[tuple[int, Masked, str]] = field(default_factory=list)
    parent: dict[int, int] = field(default_factory=dict)
    # every place a DCL would be claimed, in the order of the forward pass: (dcl name, group, producer, the
    # attachment that makes it a claim, as a Masked condition, its holder: ("host"|"heads", module) or ("module",
    # path of a DynamicWidth the model holds)); ``dcl_claims`` are those true now
    dcl_slots: list[tuple[str, int, Optional[str], Masked, tuple[str, str]]] = field(default_factory=list)

    def root(self, g: int) -> int:
        while self.parent.get(g, g) != g:
            g = self.parent[g]
        return g


def is_transposed_linear(m: nn.Module) -> bool:
    """A Linear layer that stores its weight as ``(in, out)`` and computes ``x @ W + b``, as
    ``transformers``' ``Conv1D`` (GPT-2 and its relatives) does."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int) and isinstance(w, Tensor)
            and w.dim() == 2 and w.shape[1] == m.nf)


def linear_sizes(m: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transposed Linear."""
    if is_transposed_linear(m):
        return int(m.weight.shape[0]), int(m.nf)
    return m.in_features, m.out_features


def _kind(m: nn.Module) -> Optional[str]:
    from .dcl import DynamicWidth
    from .modules import DynamicRecurrent, MaskedLayerNorm

    if isinstance(m, DynamicWidth):
        return "dcl"
    if isinstance(m, DynamicRecurrent):
        return "rnn"
    if isinstance(m, MaskedLayerNorm):
        return "ln"
    if getattr(m, "slimtrain_kind", None) == "mel":  # a mel filterbank front end (audio.frontend.MelFrontend)
        return "mel"
    if isinstance(m, nn.Linear) or is_transposed_linear(m):
        return "linear"
    if isinstance(m, CONV_TYPES):  # transposed convs too (their ``transposed`` flag swaps the weight's axes)
        return "conv"
    if isinstance(m, nn.PReLU):
        return "prelu"
    if isinstance(m, (nn.GRU, nn.LSTM)):
        return "rnn"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "bn"
    if isinstance(m, nn.LayerNorm):
        return "ln"
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    if isinstance(m, nn.Embedding):
        return "emb"
    return None


#: convolutions slimtrain can cost and cut (``m.transposed``: weight ``(in, out/groups, *kernel)``)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)

LEAF_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GRU, nn.LSTM, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)

# Ops that act on every element alone and keep zeros at zero.
_ZERO_KEEPING = {
    "relu", "relu_", "gelu", "silu", "tanh", "leaky_relu", "leaky_relu_", "elu", "hardtanh", "relu6",
    "hardswish", "mish", "dropout", "dropout1d", "dropout2d", "neg", "__neg__", "abs", "clone",
    "contiguous", "float", "double", "half", "to", "type_as", "detach", "softsign", "tanhshrink", "selu", "selu_",
    "celu",
}
# Ops that keep the tensor's layout along the channel axis (pooling, padding, along other axes).
_PER_CHANNEL = {
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "_max_pool1d", "_max_pool2d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "pad", "interpolate", "upsample",
}
# Elementwise ops that do not keep zero at zero (the width passes, the cut channels are no longer zero)
_ELEMENTWISE = {"masked_fill", "sigmoid", "hardsigmoid", "exp", "cos", "softplus", "erf", "sigmoid_", "rsqrt", "reciprocal",
                "__rsub__", "pow", "__pow__", "square", "sqrt", "log", "log1p", "silu_"}
_CAT = {"cat", "concat", "concatenate", "stack"}
_MATMUL = {"matmul", "bmm", "__matmul__", "scaled_dot_product_attention"}
_ALONG = {"softmax", "log_softmax", "_softmax"}  # along another axis: the width passes
_TAKE = {"take_along_dim"}  # picks entries along another axis (graph pooling's top-k nodes): the width passes
_SPLIT = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}
# ops through which a model parameter stays "that parameter" for broadcasting (class tokens, position embeddings)
_PARAM_KEEPING = {"expand", "expand_as", "unsqueeze", "to", "type_as", "contiguous", "clone", "float", "half",
                  "double", "detach", "__get__", "repeat", "broadcast_to"}
_VIEW_LIKE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_PERMUTE = {"transpose", "swapaxes", "permute", "movedim", "t", "moveaxis"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min"}
_JOIN = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_",
         "maximum", "minimum", "fmax", "fmin"}  # max/min of two widths keep zeros like a sum
_SCALE = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__itruediv__", "div_"}


def _tensors(obj: Any) -> list[Tensor]:
    out: list[Tensor] = []
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            out.extend(_tensors(o))
    elif isinstance(obj, dict):
        for o in obj.values():
            out.extend(_tensors(o))
    return out


def _map_view(tag: Tag, old: tuple[int, ...], new: tuple[int, ...], n: int) -> Tag:
    """Where the channel digit of ``tag`` lands after a reshape from ``old`` to ``new``."""
    d = tag.dim
    assert d is not None
    before = math.prod(old[:d]) * tag.outer  # blocks before the channel digit
    after = tag.inner * math.prod(old[d + 1:])  # elements after it
    for j in range(len(new)):
        s_j = math.prod(new[j + 1:])
        if s_j and after % s_j == 0 and (s_j * new[j]) % (after * n) == 0:
            if math.prod(new[:j]) and before % math.prod(new[:j]) == 0:
                inner = after // s_j
                outer = (s_j * new[j]) // (after * n)
                return Tag(tag.group, j, outer, inner, tag.producer, op=None if tag.masked.now else tag.op, masked=tag.masked)
    return Tag(tag.group, None, op="reshape")


#: ``Tag.op`` of a product that contracted a dynamic width of both its operands (see ``_Tracer._matmul``)
_CONTRACTED = "<contracted>"


def _between_macs(name: str, args, kwargs, out) -> float:
    """MACs of products computed outside layers (attention), as FlopCounterMode counts them."""
    if name == "scaled_dot_product_attention":
        q, k, v = args[:3]
        return float(math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1]))
    if name in ("conv1d", "conv2d") and isinstance(out, Tensor) and len(args) >= 2 and isinstance(args[1], Tensor):
        return float(out.numel() * args[1][0].numel())  # a functional conv outside a layer (a fixed filter bank)
    if name in ("matmul", "bmm", "mm", "__matmul__") and isinstance(out, Tensor) and len(args) >= 2:
        a = args[0]
        return float(out.numel() * a.shape[-1]) if isinstance(a, Tensor) and a.dim() >= 1 else 0.0
    if name == "multi_head_attention_forward":
        return _functional_mha_macs(args, kwargs)
    return 0.0


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight")


#: functional products outside layers that :func:`_between_macs` does not model: their MACs are counted with
#: torch's FlopCounterMode while tracing and added to the fixed cost (the width through them is not followed)
_COUNTED_FUNCS = {"linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "einsum", "addmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot",
                  "tensordot", "inner", "chain_matmul", "linalg_multi_dot", "multi_dot"}


#: why the widths through ``F.multi_head_attention_forward`` stay fixed (as the width report says it)
_MHA_FUNCTION = ("multi_head_attention_forward (torch's function requires num_heads * head_dim == embed_dim == "
                 "the query width, so neither the heads nor the width of a module calling it can be cut)")


def _functional_mha_macs(args, kwargs) -> float:
    """MACs of ``F.multi_head_attention_forward`` (called by modules that hold their own attention
    weights, e.g. WavLM's attention): the q/k/v and output projections and the two attention
    products, as FlopCounterMode counts the matrix products the function runs."""
    a = dict(zip(_MHA_ARGS, args))
    a.update(kwargs)
    q, k = a["query"], a["key"]
    if not isinstance(q, Tensor) or not isinstance(k, Tensor):
        return 0.0
    batch = q.shape[1] if q.dim() == 3 else 1
    L, S, E = q.shape[0], k.shape[0], int(a["embed_dim_to_check"])
    if a.get("use_separate_proj_weight"):
        proj = L * a["q_proj_weight"].numel() + S * (a["k_proj_weight"].numel() + a["v_proj_weight"].numel())
    else:
        proj = (L + 2 * S) * E * E
    proj += L * a["out_proj_weight"].numel()
    extra = int(a.get("bias_k") is not None) + int(bool(a.get("add_zero_attn")))
    return float(batch * (proj + 2 * L * (S + extra) * E))


class _Tracer(TorchFunctionMode):
    def __init__(self, sizes: dict[int, int]) -> None:
        super().__init__()
        self.tags: dict[int, Tag] = {}
        self.keep: list[Tensor] = []
        self.depth = 0
        self.sizes = sizes
        self.ties: list[tuple[int, int, str]] = []
        self.loose: list[tuple[int, str]] = []
        self.opaque: list[tuple[int, str]] = []
        self.fixed_macs = 0.0
        self.param_of: dict[int, tuple[str, Tensor]] = {}  # id(tensor) -> (parameter/buffer name, parameter)
        self.param_uses: list[tuple[str, int, int, str]] = []  # (name, group, axis, op)
        self.param_reads: dict[str, str] = {}  # parameter name -> a layer that reads it whole (e.g. a stack node)
        self.prods: list[tuple[float, int]] = []  # (MACs at full width, group they scale with)
        self.group_inner: dict[int, int] = {}  # group -> elements per channel (a head of head_dim)
        self.group_outer: dict[int, int] = {}  # group -> heads (the width counts dimensions per head)
        self.contractions: list[tuple[int, Masked, str]] = []
        self.heads = "count"  # what a (heads, head_dim) split makes dynamic: "count" or "width"
        self.consumed: set[int] = set()  # groups already read by a layer or joined
        self.head_attr: Callable[[str, int], bool] = lambda producer, heads: False
        self.extended = False  # follow head splits and channel concatenations (see trace_channels)

    def tag(self, t: Any) -> Optional[Tag]:
        return self.tags.get(id(t)) if isinstance(t, Tensor) else None

    def set(self, t: Tensor, tag: Optional[Tag]) -> None:
        if tag is not None and isinstance(t, Tensor):
            self.tags[id(t)] = tag
            self.keep.append(t)

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        counted = 0.0
        if self.depth == 0 and name in _COUNTED_FUNCS:  # a product called functionally: count it as torch does
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc:
                out = func(*args, **kwargs)
            counted = fc.get_total_flops() / 2
        else:
            out = func(*args, **kwargs)
        if self.depth > 0:
            return out
        macs = _between_macs(name, args, kwargs, out) or counted
        ins = [(t, self.tag(t)) for t in _tensors(args) + _tensors(kwargs)]
        tagged = [(t, g) for t, g in ins if g is not None]
        outs = _tensors(out)
        if macs and not tagged:
            self.fixed_macs += macs
        if not tagged:
            if outs and name in _PARAM_KEEPING and ins and all(id(t) in self.param_of for t, _ in ins):
                self.param_of[id(outs[0])] = self.param_of[id(ins[0][0])]  # a model parameter, expanded/viewed
                self.keep.append(outs[0])
            return out
        if not outs:
            return out
        try:
            tag = self._rule(name, func, args, kwargs, out, ins, tagged)
        except Exception:  # a rule that cannot decide makes the channels opaque
            tag = Tag(tagged[0][1].group, None, op=name)
        if tag.op == _CONTRACTED:  # two activations multiplied over their shared width (q @ k^T): no width left
            self.prods.append((macs, tag.group))
            self.contractions.append((tag.group, tag.masked, name))
            return out
        if tag.dim is None:  # every dynamic width that went through this op is now unknown
            self.opaque.extend((gg, tag.op or name) for _, g in tagged if g.dim is not None for gg in g.groups())
        if macs:  # a product between layers (attention): linear in the width that runs along its batch/rows
            if tag.dim is not None and (tag.outer, tag.inner) == (1, 1):
                self.prods.append((macs, tag.group))
            else:
                self.fixed_macs += macs
        many = name in _SPLIT and isinstance(out, (tuple, list)) and tag.dim is not None
        for o in outs if many else outs[:1]:
            self.set(o, tag)
        return out

    def _param_operand(self, other: Tensor, tag: Tag, x: Tensor, where: str) -> bool:
        """``other`` (untagged) is a model parameter (maybe expanded) meeting width ``tag`` of ``x``:
        record it so export cuts it along the channel axis. False if it is not a parameter."""
        src = self.param_of.get(id(other))
        if src is None or tag.dim is None or (tag.outer, tag.inner) != (1, 1):
            return False
        pname, p = src
        right = x.dim() - tag.dim  # channel axis counted from the right (broadcasting aligns the right)
        axis = p.dim() - right
        if axis < 0 or p.shape[axis] == 1:
            return True  # broadcast along the channels: nothing to cut
        if p.shape[axis] != self.sizes[tag.group]:
            return False
        self.param_uses.append((pname, tag.group, axis, where))
        return True

    def _rule(self, name, func, args, kwargs, out, ins, tagged) -> Tag:
        x, tag = tagged[0]
        opaque = Tag(tag.group, None, op=name)
        if tag.dim is None:
            return tag
        if any(g.segs for _, g in tagged):
            return self._segs_rule(name, args, kwargs, out, tagged)
        if name in _SPLIT or name in _CAT:
            return self._cat_split(name, args, kwargs, out, tagged)
        if name == "multi_head_attention_forward":  # a module's own weights through torch's attention function
            return Tag(tag.group, None, op=_MHA_FUNCTION)
        if not isinstance(out, Tensor):
            if name in _PER_CHANNEL and isinstance(out, tuple):
                out = out[0]
            else:
                return opaque
        n = self.sizes[tag.group]
        if name in _JOIN or name in _SCALE:
            # broadcasting: the operand with the output's shape carries the channels
            full = [(t, g) for t, g in tagged if isinstance(t, Tensor) and t.shape == out.shape]
            if full:
                x, tag = full[0]
                opaque = Tag(tag.group, None, op=name)
                if tag.dim is None:
                    return tag
        if name in _TAKE:  # entries picked along another axis (top-k nodes): the width passes
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
            if x is not args[0] or dim is None or dim % x.dim() == tag.dim or out.dim() != x.dim() \
                    or out.shape[tag.dim] != x.shape[tag.dim]:
                return opaque
            return Tag(tag.group, tag.dim, tag.outer, tag.inner, masked=tag.masked)
        if name in _ZERO_KEEPING:
            return tag if out.shape == x.shape else opaque
        if name in _ELEMENTWISE:  # elementwise but f(0) != 0: channels stay, no longer zero outside the width
            return Tag(tag.group, tag.dim, tag.outer, tag.inner, op=name, masked=NEVER) if out.shape == x.shape else opaque
        if name in _PER_CHANNEL:
            same = out.dim() == x.dim() and out.shape[tag.dim] == x.shape[tag.dim]
            return tag if same and tag.outer == tag.inner == 1 else opaque
        if name in _VIEW_LIKE:
            # a fresh layer output viewed as (heads, head_dim): the width counts heads (also when head_dim is 1)
            return self._head_split(tag, tuple(x.shape), tuple(out.shape), args[1:]) or \
                _map_view(tag, tuple(x.shape), tuple(out.shape), n)
        if name in _MATMUL:
            return self._matmul(name, args, kwargs, out, tagged)
        if name in _ALONG:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None or dim % x.dim() == tag.dim:
                return opaque
            return Tag(tag.group, tag.dim, tag.outer, tag.inner, op=name, masked=NEVER)
        if name in _PERMUTE:
            return self._permute(name, args, kwargs, x, tag)
        if name in _REDUCE:
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dims is None or isinstance(out, tuple):
                return opaque
            dims = [dims] if isinstance(dims, int) else list(dims)
            dims = [d % x.dim() for d in dims]
            if tag.dim in dims:
                if name == "sum" and (tag.outer, tag.inner) == (1, 1):
                    # a sum over the channels (a learned vector times a width, summed: attention logits) contracts
                    # the width; exact after a cut when the channels outside it are zero
                    return Tag(tag.group, None, op=_CONTRACTED, masked=tag.masked)
                return opaque
            keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            return Tag(tag.group, tag.dim if keep else tag.dim - sum(d < tag.dim for d in dims), tag.outer, tag.inner, masked=tag.masked)
        if name == "__getitem__":
            return self._getitem(args[1], x, tag)
        if name in _JOIN or name in _SCALE:
            others = [a for a in args[:2] if a is not x]
            other = others[0] if others else kwargs.get("other")
            if not isinstance(other, Tensor) or other.dim() == 0:
                # scaling keeps zeros; adding a constant does not
                return tag if name in _SCALE else Tag(tag.group, tag.dim, tag.outer, tag.inner, op=name, masked=NEVER)
            otag = self.tag(other)
            if out.shape != x.shape:
                # x_i * x_j of every node pair: two operands of one width broadcast along other axes
                if otag is None or otag.dim is None or (otag.outer, otag.inner, tag.outer, tag.inner) != (1, 1, 1, 1) \
                        or not (out.dim() == x.dim() == other.dim()) or otag.dim != tag.dim \
                        or not (x.shape[tag.dim] == other.shape[otag.dim] == out.shape[tag.dim]):
                    return opaque
                self.ties.append((tag.group, otag.group, f"'{name}' of outputs of {tag.producer or '?'} and "
                                  f"{otag.producer or '?'}"))
                both = tag.masked & otag.masked if name in _JOIN else tag.masked | otag.masked
                return Tag(tag.group, tag.dim, 1, 1, op=None if both.now else (tag.op or otag.op), masked=both)
            if otag is not None and otag.dim is not None and other.shape != x.shape and name in _SCALE \
                    and (otag.outer, otag.inner) == (1, 1) and self.sizes.get(otag.group) == 1 \
                    and other.shape[otag.dim] == 1 and x.dim() - tag.dim == other.dim() - otag.dim:
                # a one-channel score broadcast over a width (graph pooling's node scores): a scale
                return Tag(tag.group, tag.dim, tag.outer, tag.inner, masked=tag.masked)
            if otag is None:
                if self._param_operand(other, tag, x, name):  # a learned scale/bias/position embedding
                    keep = tag.masked if name in _SCALE else NEVER
                    return Tag(tag.group, tag.dim, tag.outer, tag.inner, op=None if keep.now else name, masked=keep)
                if name in _SCALE:
                    return Tag(tag.group, tag.dim, tag.outer, tag.inner, masked=tag.masked)
                right = x.dim() - tag.dim
                if other.dim() < right or other.shape[other.dim() - right] == 1:  # e.g. an attention mask
                    return Tag(tag.group, tag.dim, tag.outer, tag.inner, op=name, masked=NEVER)
                self.loose.append((tag.group, f"'{name}' with a tensor that no layer produced"))
                return Tag(tag.group, tag.dim, tag.outer, tag.inner)
            if otag.dim is None or (otag.outer, otag.inner) != (tag.outer, tag.inner):
                return opaque
            if other.shape != x.shape:  # broadcast (e.g. a squeeze-and-excitation gate): channel axes must meet
                if x.dim() - tag.dim != other.dim() - otag.dim or other.shape[otag.dim] != x.shape[tag.dim]:
                    return opaque
            elif otag.dim != tag.dim:
                return opaque
            self.ties.append((tag.group, otag.group, f"'{name}' of outputs of {tag.producer or '?'} and {otag.producer or '?'}"))
            both = tag.masked & otag.masked if name in _JOIN else tag.masked | otag.masked
            return Tag(tag.group, tag.dim, tag.outer, tag.inner, masked=both)
        return opaque

    def _head_split(self, tag: Tag, old: tuple, new: tuple, shape_args: tuple = ()) -> Optional[Tag]:
        """``(..., H*hd) -> (..., H, hd)`` right after the layer that produced the width: its channels become
        H heads of hd elements (the width counts heads; the layer's output keeps hd rows per head)."""
        d, g = tag.dim, tag.group
        if not self.extended:
            return None
        if (tag.outer, tag.inner) != (1, 1) or tag.producer is None or g in self.group_inner or g in self.consumed \
                or g in self.group_outer:
            return None
        if any(g in (a, b) for a, b, _ in self.ties) or len(new) != len(old) + 1:
            return None
        if new[:d] != old[:d] or new[d + 2:] != old[d + 1:] or new[d] * new[d + 1] != old[d] \
                or (new[d] < 2 and self.heads == "count") or d != len(old) - 1:
            return None
        asked = [int(a) for a in (shape_args[0] if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list,
                 torch.Size)) else shape_args) if isinstance(a, int)]
        if self.heads == "width":
            # the width counts dimensions per head, the same in every head: the view must compute head_dim
            # (-1), as a literal one would not follow a cut
            if not (len(asked) == len(new) and asked[d + 1] == -1):
                return None
            self.group_outer[g] = new[d]
            self.sizes[g] = new[d + 1]
            return Tag(g, d + 1, 1, 1, tag.producer, masked=tag.masked)
        minus_one = len(asked) == len(new) and asked[d] == -1
        if not minus_one and not self.head_attr(tag.producer, new[d]):
            return None  # a literal head count in the user's view would not follow a cut
        self.group_inner[g] = new[d + 1]
        self.sizes[g] = new[d]
        return Tag(g, d, 1, 1, tag.producer, masked=tag.masked)

    def _matmul(self, name, args, kwargs, out, tagged) -> Tag:
        """matmul/bmm and scaled_dot_product_attention: a width on a batch axis (attention heads) passes
        (tying the operands' widths); one on the rows/columns of a product passes; contracted, it is lost."""
        x, tag = tagged[0]
        opaque = Tag(tag.group, None, op=name)
        if not isinstance(out, Tensor):
            return opaque
        ops = [a for a in args[:3 if name == "scaled_dot_product_attention" else 2] if isinstance(a, Tensor)]
        res: Optional[Tag] = None
        masked_any = NEVER
        contracted: list[Tag] = []
        for i, a in enumerate(ops):
            t = self.tag(a)
            if t is None:
                continue
            if t.dim is None or (t.outer, t.inner) != (1, 1):
                return opaque
            right = a.dim() - t.dim
            if name == "scaled_dot_product_attention":
                if right <= 2:
                    return opaque  # on the tokens or head_dim
            elif right <= 2:
                rows = i == 0 and right == 2
                cols = i == 1 and right == 1
                if not (rows or cols):
                    contracted.append(t)  # the contracted axis
                    continue
            od = out.dim() - right
            if res is None:
                res = Tag(t.group, od, 1, 1, masked=NEVER)
            elif res.dim == od:
                self.ties.append((res.group, t.group, f"'{name}' of outputs of {tag.producer or '?'} and {t.producer or '?'}"))
            else:
                return opaque
            # zero outside the width stays zero in the product if the values (sdpa: v) or any factor is zero there
            if name != "scaled_dot_product_attention" or i == 2:
                masked_any = masked_any | t.masked
        if contracted:
            # both factors carry a width on the contracted axis (q @ k^T over a per-head width): one width for
            # both, and the product has no width left. With one factor only it is a layer written as a product.
            if len(contracted) != 2 or res is not None or not all(t.group in self.group_outer for t in contracted):
                return opaque
            a, b = contracted
            if a.group != b.group:
                self.ties.append((a.group, b.group, f"'{name}' contracting outputs of {a.producer or '?'} and "
                                  f"{b.producer or '?'}"))
            # exact after a cut only if the channels outside the width are zero in a factor
            return Tag(a.group, None, op=_CONTRACTED, masked=a.masked | b.masked)
        if res is None:
            return opaque
        return Tag(res.group, res.dim, 1, 1, masked=masked_any)

    def _segs_rule(self, name, args, kwargs, out, tagged) -> Tag:
        """A channel concatenation passes elementwise zero-keeping ops, pooling, permutes and reductions
        over other axes (and concatenates further); anything else loses it."""
        x, tag = tagged[0]
        opaque = Tag(tag.group, None, op=name if name not in _CAT else f"{name} of a concatenation")
        if name in _CAT:
            return self._cat_split(name, args, kwargs, out, tagged)
        if len(tagged) != 1 or not isinstance(out, Tensor):
            return opaque
        if name in _ZERO_KEEPING or name in _PER_CHANNEL:
            same = out.dim() == x.dim() and out.shape[tag.dim] == x.shape[tag.dim]
            return tag if same else opaque
        if name in _PERMUTE:
            return replace(tag, dim=self._permute(name, args, kwargs, x, tag).dim)
        if name in _REDUCE:
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dims is None:
                return opaque
            dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else list(dims))]
            if tag.dim in dims:
                return opaque
            keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            return replace(tag, dim=tag.dim if keep else tag.dim - sum(d < tag.dim for d in dims), producer=None)
        if name in _VIEW_LIKE:
            t = _map_view(tag, tuple(x.shape), tuple(out.shape), x.shape[tag.dim])
            return replace(tag, dim=t.dim, producer=None) if t.dim is not None and (t.outer, t.inner) == (1, 1) else opaque
        return opaque

    def _cat_split(self, name, args, kwargs, out, tagged) -> Tag:
        """cat/stack/split/chunk along an axis other than the channels (tokens, time): the width passes."""
        x, tag = tagged[0]
        opaque = Tag(tag.group, None, op=f"{name} along the channel axis")
        if tag.dim is None:
            return tag
        if name in _SPLIT:
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if name == "unbind":
                dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim % x.dim() == tag.dim:
                return opaque
            if name == "unbind" and dim % x.dim() < tag.dim:
                return Tag(tag.group, tag.dim - 1, tag.outer, tag.inner, masked=tag.masked)
            return Tag(tag.group, tag.dim, tag.outer, tag.inner, masked=tag.masked)
        seq = args[0] if args else kwargs.get("tensors")
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        ref = seq[0]
        if name == "stack":
            nd = ref.dim() + 1
            d = dim % nd
            if any(t.shape != ref.shape for t in seq):
                return opaque
            new_dim = tag.dim + (1 if d <= tag.dim else 0)
        else:
            d = dim % ref.dim()
            if d == tag.dim:
                return self._channel_cat(seq, d, tag) if name != "stack" else opaque
            if any(self.tag(t) is not None and self.tag(t).segs for t in seq):
                return opaque
            new_dim = tag.dim
        masked = ALWAYS
        for t in seq:
            g = self.tag(t)
            if g is None:
                if self._param_operand(t, tag, x, name):  # e.g. a class token
                    masked = NEVER
                    continue
                self.loose.append((tag.group, f"'{name}' with a tensor that no layer produced"))
                masked = NEVER
                continue
            if g.dim is None or (g.dim, g.outer, g.inner) != (tag.dim, tag.outer, tag.inner):
                return opaque
            if g.group != tag.group:
                self.ties.append((tag.group, g.group, f"'{name}' of outputs of {tag.producer or '?'} and {g.producer or '?'}"))
            masked = masked & g.masked
        return Tag(tag.group, new_dim, tag.outer, tag.inner, masked=masked)

    def _channel_cat(self, seq, d: int, tag: Tag) -> Tag:
        """Concatenation along the channel axis: the result carries each input's width as one block."""
        opaque = Tag(tag.group, None, op="cat along the channel axis")
        if not self.extended:
            return opaque
        segs: list[tuple[int, int]] = []
        masked = ALWAYS
        for t in seq:
            g = self.tag(t)
            if g is None:  # a fixed block (the model input, a constant): never cut
                segs.append((-1, int(t.shape[d])))
                continue
            if g.dim != d or (g.outer, g.inner) != (1, 1):
                return opaque
            if g.segs:
                segs.extend(g.segs)
            elif self.sizes.get(g.group) == t.shape[d]:
                segs.append((g.group, int(t.shape[d])))
            else:
                return opaque
            masked = masked & g.masked
        first = next((s for s, _ in segs if s >= 0), tag.group)
        return Tag(first, d, 1, 1, masked=masked, segs=tuple(segs))

    def _permute(self, name, args, kwargs, x, tag) -> Tag:
        nd = x.dim()
        if name == "t":
            perm = list(range(nd))[::-1]
        elif name == "permute":
            p = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else args[1]
            perm = [int(v) % nd for v in p]
        else:
            a, b = (int(args[1]) % nd, int(args[2]) % nd)
            if name in ("movedim", "moveaxis"):
                perm = [i for i in range(nd) if i != a]
                perm.insert(b, a)
            else:
                perm = list(range(nd))
                perm[a], perm[b] = perm[b], perm[a]
        return Tag(tag.group, perm.index(tag.dim), tag.outer, tag.inner, tag.producer, masked=tag.masked)

    def _getitem(self, idx, x, tag) -> Tag:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, Tensor) or isinstance(i, list) for i in idx):
            return Tag(tag.group, None, op="indexing")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for i in idx:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (x.dim() - n_real))
            else:
                expanded.append(i)
        expanded.extend([slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None)))
        src = new = 0
        for i in expanded:
            if i is None:
                new += 1
                continue
            if src == tag.dim:
                if isinstance(i, slice) and i == slice(None):
                    return Tag(tag.group, new, tag.outer, tag.inner, tag.producer, masked=tag.masked)
                return Tag(tag.group, None, op="indexing the channel axis")
            if not isinstance(i, int):
                new += 1
            src += 1
        return Tag(tag.group, None, op="indexing")


def trace_channels(model: nn.Module, sample: Any, *, extended: bool = False, heads: str = "count") -> Trace:
    """Run ``model(sample)`` once and record the channel flow between its layers.

    With ``extended=True`` (what :func:`slimtrain.make_dynamic` uses) more structures are
    followed: a module with its own parameters and children is looked into (its parameters
    used elementwise are listed in ``param_uses``), a layer output viewed as (heads, head_dim) becomes a width counted in heads (its
    group's ``size`` is then the head count and the producing use has ``extra["out_inner"]``; with
    ``heads="width"`` a width counted in dimensions per head, shared by all heads: ``size`` is the head
    dim, ``extra["out_outer"]`` the head count, and ``q @ k^T`` over it ties the two widths),
    and a concatenation along the channel axis gives a tag with ``segs``. Without it those are
    opaque, as before, so a reader of ``Trace.groups``/``uses`` sees channel counts only."""
    groups: dict[int, Group] = {}
    uses: list[LayerUse] = []
    slots: list[tuple[str, int, Optional[str], Masked, tuple[str, str]]] = []  # see Trace.dcl_slots
    bn_after: dict[str, str] = {}
    sizes: dict[int, int] = {}
    tracer = _Tracer(sizes)
    tracer.extended = extended
    tracer.heads = heads

    def head_attr(producer: str, heads: int) -> bool:  # the module holding the projection stores the head count
        owner = producer.rpartition(".")[0]
        try:
            mod = model.get_submodule(owner)
        except AttributeError:
            return False
        return any(getattr(mod, a, None) == heads for a in HEAD_COUNT_ATTRS)

    tracer.head_attr = head_attr
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def new_group(size: int, producer: str) -> int:
        gid = len(groups)
        groups[gid] = Group(gid, size, [producer])
        sizes[gid] = size
        return gid

    stack: list[tuple[nn.Module, Optional[Tag], tuple, Optional[Tensor]]] = []
    counters: dict[int, Any] = {}  # id(unknown module) -> the FlopCounterMode open over its forward
    mha_inputs: dict[int, list[tuple[Optional[Tag], tuple]]] = {}

    def pre(mod, args, kwargs):
        x = args[0] if args else _first_kwarg(kwargs)
        tag = tracer.tag(x)
        shape = tuple(x.shape) if isinstance(x, Tensor) else ()
        if tag is None and isinstance(x, Tensor) and id(x) in tracer.param_of and tracer.depth == 0:
            tracer.param_reads.setdefault(tracer.param_of[id(x)][0], names.get(mod, type(mod).__name__))
        if isinstance(mod, nn.MultiheadAttention):  # key and value: who produced them, and their shapes
            kv = [args[i] if len(args) > i else kwargs.get(("key", "value")[i - 1]) for i in (1, 2)]
            mha_inputs[id(mod)] = [(tracer.tag(t), tuple(t.shape)) for t in kv if isinstance(t, Tensor)]
        if tracer.depth == 0 and _kind(mod) is None:  # an unknown module: count its products as torch does
            from torch.utils.flop_counter import FlopCounterMode

            fc = FlopCounterMode(display=False)
            fc.__enter__()
            counters[id(mod)] = fc
        stack.append((mod, tag, shape, x))
        tracer.depth += 1

    def post(mod, args, out):
        tracer.depth -= 1
        mod_, tag, shape, x = stack.pop()
        if tag is not None:
            tracer.consumed.add(tag.group)
        name = names.get(mod, type(mod).__name__)
        kind = _kind(mod)
        first = out[0] if isinstance(out, tuple) else out
        oshape = tuple(first.shape) if isinstance(first, Tensor) else ()
        if kind is None:  # a module with parameters we do not know
            extra_u: dict[str, Any] = {"type": type(mod).__name__}
            fc = counters.pop(id(mod), None)
            if fc is not None:
                fc.__exit__(None, None, None)
                extra_u["macs"] = fc.get_total_flops() / 2  # fixed: a width it reads cannot be dynamic
                tracer.fixed_macs += extra_u["macs"]
            uses.append(LayerUse(name, "unknown", tag, None, shape, oshape, extra_u))
            return
        if kind == "prelu":  # elementwise and prelu(0) = 0: the width passes; a per-channel slope is cut with it
            if tag is not None:
                tracer.set(first, _prelu_tag(mod, name, tag, tracer))
            return
        if kind == "dcl":
            if tag is not None and tag.dim is not None:
                slots.append((name, tag.group, tag.producer, ALWAYS, ("module", name)))
                tracer.set(out, Tag(tag.group, tag.dim, tag.outer, tag.inner, tag.producer, masked=ALWAYS))
            else:
                uses.append(LayerUse(name, "dcl", tag, None, shape, oshape))
            return
        host = attached_dcl(mod)  # slimtrain's DCL on this module's output (applied by a hook, already in `out`)
        if kind in ("bn", "ln"):
            uses.append(LayerUse(name, kind, tag, None, shape, oshape))
            if tag is not None:
                if kind == "bn" and tag.producer is not None:
                    bn_after.setdefault(tag.producer, name)
                masked = NEVER
                if kind == "ln":  # normalised over the kept channels: bound now, or once the plan binds it
                    masked = ALWAYS if bound_width(mod) is not None else when(("ln", name))
                if tag.dim is not None:  # a DCL here (after the BatchNorm that reads a layer's raw output)
                    hosted = ALWAYS if host is not None else when(("host", name))
                    slots.append((f"{name}.{DCL_CHILD}", tag.group, tag.producer, hosted, ("host", name)))
                    masked = masked | hosted
                tracer.set(first, Tag(tag.group, tag.dim, tag.outer, tag.inner, tag.producer, masked=masked))
            return
        inner_mod = mod.rnn if isinstance(mod, DynamicRecurrent) else mod
        if kind == "linear":
            size, dim = linear_sizes(inner_mod)[1], first.dim() - 1
        elif kind == "conv":
            size, dim = inner_mod.out_channels, 1
        elif kind == "mel":
            size, dim = inner_mod.n_mels, 1
        elif kind == "mha":
            size, dim = inner_mod.embed_dim, first.dim() - 1
        elif kind == "emb":
            size, dim = inner_mod.embedding_dim, first.dim() - 1
        else:  # rnn
            size, dim = inner_mod.hidden_size, first.dim() - 1
        gid = new_group(size, name)
        outer = 2 if kind == "rnn" and inner_mod.bidirectional else 1
        extra: dict[str, Any] = {}
        if kind == "rnn":
            extra["batch_first"] = inner_mod.batch_first
        if kind == "mha":
            kv = mha_inputs.pop(id(mod), [])
            # the head count is a width of its own, inside the module (q/k/v rows, out_proj columns)
            hgid = new_group(inner_mod.num_heads, name)
            extra.update(batch_first=inner_mod.batch_first, num_heads=inner_mod.num_heads,
                         kv_tags=[t for t, _ in kv], kv_shapes=[sh for _, sh in kv], heads_group=hgid)
        uses.append(LayerUse(name, kind, tag, gid, shape, oshape, extra))
        if kind == "mha":
            uses.append(LayerUse(name, "mha_heads", None, hgid, shape, oshape, {}))
            slots.append((f"{name}.{DCL_CHILD}", hgid, name, ALWAYS if is_dynamic_mha(mod) else when(("heads", name)),
                          ("heads", name)))
        if kind == "conv" and tag is not None and tag.dim is not None and \
                inner_mod.groups == inner_mod.in_channels == inner_mod.out_channels and inner_mod.groups > 1:
            tracer.ties.append((tag.group, gid, f"depthwise conv '{name}'"))  # one width in and out
        wrapped = host is not None or (kind == "rnn" and (isinstance(mod, DynamicRecurrent) or is_dynamic_rnn(mod)))
        masked = ALWAYS if wrapped else when(("host", name))
        slots.append((f"{name}.{DCL_CHILD}", gid, name, masked, ("host", name)))
        tracer.set(first, Tag(gid, dim, outer, 1, name, masked=masked))
        if kind == "rnn" and isinstance(out, tuple):
            for h in _tensors(out[1]):
                tracer.set(h, Tag(gid, h.dim() - 1, 1, 1, name, masked=masked))

    leaf_mods = []
    for n, m in model.named_modules():
        k = _kind(m)
        own_params = any(True for _ in m.parameters(recurse=False))
        # a module with its own parameters that slimtrain does not know is one opaque layer, unless it is a
        # container (its parameters are then scales/tokens used elementwise, which the tracer follows)
        container = extended and any(True for c in m.children() if any(True for _ in c.parameters()))
        if k is not None or (own_params and not container and not _has_known_ancestor(model, n)):
            leaf_mods.append(m)
    # do not descend into known composite leaves (a DynamicRecurrent holds an RNN)
    skip = set()
    for m in leaf_mods:
        if _kind(m) == "rnn":  # the DCL of a dynamic GRU/LSTM runs inside its forward
            skip.update(c for c in m.modules() if c is not m)
        if _kind(m) in ("mel", "mha"):
            skip.update(c for c in m.modules() if c is not m)
        if attached_dcl(m) is not None:  # applied by slimtrain's hook; recorded with its host
            skip.add(attached_dcl(m))
    for m in leaf_mods:
        if m in skip:
            continue
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        # after slimtrain's own output hooks (DCL, masked LayerNorm): their ops run at depth > 0, untraced
        handles.append(m.register_forward_hook(post))
    for pname, prm in list(model.named_parameters()) + list(model.named_buffers()):
        tracer.param_of[id(prm)] = (pname, prm)
        tracer.keep.append(prm)
    was_training = model.training
    model.eval()
    first = _tensors(sample)
    if first and first[0].dim() < 2:
        raise GraphError(
            f"the sample has shape {tuple(first[0].shape)}: it must be a batch (batch axis first, then the "
            "input's own axes), e.g. sample.unsqueeze(0) for a single item"
        )
    try:
        with torch.no_grad(), tracer, torch.backends.mkldnn.flags(enabled=False):
            out = model(*sample) if isinstance(sample, tuple) else model(sample)
    except GraphError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        where = f" in layer '{names.get(stack[-1][0], type(stack[-1][0]).__name__)}' " \
                f"({type(stack[-1][0]).__name__})" if stack else ""
        shapes = ", ".join(str(tuple(t.shape)) for t in first) or type(sample).__name__
        msg = " ".join(str(e).split())[:300]
        raise GraphError(f"the sample batch of shape {shapes} does not fit the model: the forward pass failed"
                         f"{where}: {msg}") from None
    finally:
        for fc in reversed(list(counters.values())):  # a forward that raised inside an unknown module
            fc.__exit__(None, None, None)
        for h in handles:
            h.remove()
        model.train(was_training)
    claims = [(n, g, p) for n, g, p, m, _ in slots if m.now]
    tr = Trace(groups, uses, tracer.ties, tracer.loose, claims, bn_after, [tracer.tag(o) for o in _tensors(out)],
               tracer.fixed_macs, tracer.opaque, dcl_slots=slots)
    tr.param_uses = tracer.param_uses
    tr.param_reads = tracer.param_reads
    tr.prods = tracer.prods
    tr.group_inner = tracer.group_inner
    tr.group_outer = tracer.group_outer
    tr.contractions = tracer.contractions
    for gid, h in tracer.sizes.items():
        groups[gid].size = h  # a group split into heads counts heads
    for u in uses:
        if u.out_group in tracer.group_inner:
            u.extra["out_inner"] = tracer.group_inner[u.out_group]
            u.extra["heads"] = True
        if u.out_group in tracer.group_outer:
            u.extra["out_outer"] = tracer.group_outer[u.out_group]
            u.extra["head_width"] = True
    for a, b, _ in tr.ties:
        ra, rb = tr.root(a), tr.root(b)
        if ra != rb:
            tr.parent[max(ra, rb)] = min(ra, rb)
    return tr


def _prelu_tag(mod: nn.PReLU, name: str, tag: Tag, tracer: "_Tracer") -> Tag:
    """The tag after a PReLU: unchanged for one shared slope; with a slope per channel (on axis 1) the slope
    vector is cut with the width (a ``param`` use), on any other axis or layout the width is lost."""
    if tag.dim is None or mod.weight.numel() == 1:
        return tag
    if tag.segs or tag.dim != 1 or (tag.outer, tag.inner) != (1, 1) or mod.weight.numel() != tracer.sizes[tag.group]:
        op = f"PReLU '{name}' with a slope per channel on another axis"
        tracer.opaque.extend((g, op) for g in tag.groups())
        return Tag(tag.group, None, op=op)
    tracer.param_uses.append((f"{name}.weight" if name else "weight", tag.group, 0, "prelu"))
    return tag


#: keyword names under which a layer's main input can be passed (``attn(query=x, key=x, value=x)``)
_INPUT_KWARGS = ("input", "query", "x", "hidden_states", "inputs")


def _first_kwarg(kwargs: dict) -> Any:
    """The main input of a layer called with keyword arguments only (``None`` if none is known)."""
    for k in _INPUT_KWARGS:
        if isinstance(kwargs.get(k), Tensor):
            return kwargs[k]
    return None


def _has_known_ancestor(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        anc = model.get_submodule(".".join(parts[:i]))
        if _kind(anc) in ("rnn", "mel", "mha"):
            return True
    return False
