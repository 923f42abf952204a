"""Non-intrusive attachment of dynamic widths to a user's modules.

The user's modules stay where they are, with their class, attributes and
parameter names. A :class:`~slimtrain.core.dcl.DynamicWidth` is registered as a child
named ``dcl`` of the module whose output it masks (the producer, or the
BatchNorm right after it), and a forward hook applies it to that module's
output. So ``model.fc1`` is still the user's ``nn.Linear`` (``fc1.weight``,
``fc1.in_features`` keep working), and the DCL's parameter is ``fc1.dcl.theta``.

* LayerNorm over a dynamic width: a forward hook recomputes the output with
  statistics over the kept channels only (the module is not replaced).
* GRU/LSTM hidden size: the instance's ``forward`` is replaced (the class is
  not) by one that scales the recurrent weights by each hidden unit's signal
  weight (see :class:`~slimtrain.core.modules.DynamicRecurrent`).
* State dicts: a load-state-dict post-hook on the model root drops the DCL
  keys from ``missing_keys``, so the user's ORIGINAL state dict loads with
  ``strict=True`` into the dynamic model (the widths keep their values), and
  slimtrain's checkpoints (which hold the ``*.dcl.theta`` keys) restore widths.

Everything added is marked, so :func:`detach_all` removes it exactly (used by
export and to undo a failed ``make_dynamic``).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .dcl import DynamicWidth
from .errors import GraphError
from .modules import masked_layer_norm

__all__ = ["DCL_CHILD", "attach_dcl", "attached_dcl", "bind_layer_norm", "bound_width", "make_rnn_dynamic",
           "is_dynamic_rnn", "make_mha_dynamic", "is_dynamic_mha", "detach_all", "install_state_dict_hook"]

#: Name of the child that holds a module's DCL (``<module path>.dcl``).
DCL_CHILD = "dcl"
_MARK = "_slimtrain_attached"  # instance __dict__ flag: this module's ``dcl`` child was added by slimtrain
_LN_SOURCE = "_slimtrain_width_source"
_RNN_FLAG = "_slimtrain_dynamic_rnn"
_SD_FLAG = "_slimtrain_sd_hook"
_MHA_FLAG = "_slimtrain_dynamic_mha"


class _ApplyDCL:
    """Forward hook: ``module.dcl(output, dim=self.dim)`` (holds no reference to the DCL, so deepcopy is safe)."""

    def __init__(self, dim: int, inner: int = 1, outer: int = 1) -> None:
        self.dim, self.inner = dim, inner  # inner > 1: each channel is a block of that many (an attention head)
        self.outer = outer  # outer > 1: the channels repeat that many times along the axis (a width per head)

    def _apply(self, dcl: DynamicWidth, y: Tensor) -> Tensor:
        outer = self.__dict__.get("outer", 1)  # (hooks pickled before per-head widths have none)
        if self.inner == 1 and outer == 1:
            return dcl(y, dim=self.dim)
        d = self.dim % y.dim()
        if self.inner > 1:
            heads = y.unflatten(d, (y.shape[d] // self.inner, self.inner))
            return dcl(heads, dim=d).flatten(d, d + 1)
        heads = y.unflatten(d, (outer, y.shape[d] // outer))
        return dcl(heads, dim=d + 1).flatten(d, d + 1)

    def __call__(self, module: nn.Module, args: Any, out: Any) -> Any:
        dcl = module._modules[DCL_CHILD]
        if isinstance(out, tuple):
            return (self._apply(dcl, out[0]), *out[1:])
        return self._apply(dcl, out)


def attached_dcl(module: nn.Module) -> Optional[DynamicWidth]:
    """The DCL slimtrain attached to ``module``'s output, or ``None``."""
    if module.__dict__.get(_MARK) is None:
        return None
    return module._modules.get(DCL_CHILD)  # type: ignore[return-value]


def attach_dcl(module: nn.Module, dcl: DynamicWidth, dim: int, where: str = "", inner: int = 1,
               outer: int = 1) -> None:
    """Register ``dcl`` as ``module.dcl`` and apply it to the module's output with a forward hook."""
    if module.__dict__.get(_MARK) is not None:
        module._modules[DCL_CHILD] = dcl  # share (tie) another width: keep the hook, swap the module
        return
    if DCL_CHILD in module._modules or DCL_CHILD in module.__dict__ or hasattr(type(module), DCL_CHILD):
        raise GraphError(f"module '{where}' ({type(module).__name__}) already has an attribute '{DCL_CHILD}'; "
                         "slimtrain cannot attach its width there")
    module.add_module(DCL_CHILD, dcl)
    module.__dict__[_MARK] = module.register_forward_hook(_ApplyDCL(dim, inner, outer)).id


class _MaskedLNHook:
    """Forward hook: LayerNorm statistics over the kept channels of the bound DCL only."""

    def __call__(self, ln: nn.LayerNorm, args: Any, out: Tensor) -> Tensor:
        dcl: Optional[DynamicWidth] = ln.__dict__.get(_LN_SOURCE)
        if dcl is None:
            return out
        return masked_layer_norm(args[0], dcl, ln.weight, ln.bias, ln.eps)


def bind_layer_norm(ln: nn.LayerNorm, dcl: DynamicWidth) -> None:
    """Make ``ln`` normalise over the channels ``dcl`` keeps (eval: exactly a LayerNorm of ``ceil(K)``)."""
    first = _LN_SOURCE not in ln.__dict__
    ln.__dict__[_LN_SOURCE] = dcl
    if first:
        ln.__dict__[_LN_SOURCE + "_hook"] = ln.register_forward_hook(_MaskedLNHook()).id


def bound_width(ln: nn.Module) -> Optional[DynamicWidth]:
    """The DCL a LayerNorm is bound to (by :func:`bind_layer_norm` or ``MaskedLayerNorm.bind``)."""
    return ln.__dict__.get(_LN_SOURCE) or getattr(ln, "_width_source", None)


def _masked_rnn_params(rnn: nn.Module, mask: Tensor) -> dict[str, Tensor]:
    dirs = 2 if rnn.bidirectional else 1
    params: dict[str, Tensor] = {}
    for name, p in rnn.named_parameters(recurse=False):
        if name.startswith("weight_hh"):
            p = p * mask.to(p.dtype)
        elif name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
            p = p * mask.repeat(dirs).to(p.dtype)
        params[name] = p
    return params


def _dynamic_rnn_forward(self: nn.Module, x: Tensor, hx=None):
    from torch.nn.utils.stateless import _reparametrize_module

    dcl: DynamicWidth = self._modules[DCL_CHILD]  # type: ignore[assignment]
    if dcl.passes_whole(x):  # settled or eval at full width: every weight and output unmasked
        return type(self).forward(self, x) if hx is None else type(self).forward(self, x, hx)
    mask = dcl.mask()
    with _reparametrize_module(self, _masked_rnn_params(self, mask)):
        out, h = type(self).forward(self, x) if hx is None else type(self).forward(self, x, hx)
    if self.bidirectional:
        n = self.hidden_size
        out = torch.cat([dcl(out[..., :n], dim=-1), dcl(out[..., n:], dim=-1)], dim=-1)
    else:
        out = dcl(out, dim=-1)
    m = mask.to(out.dtype)
    h = tuple(t * m for t in h) if isinstance(h, tuple) else h * m
    return out, h


def is_dynamic_rnn(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_RNN_FLAG))


def make_rnn_dynamic(rnn: nn.Module, dcl: DynamicWidth, where: str = "") -> None:
    """Make a GRU/LSTM's hidden size the width of ``dcl`` (instance forward replaced; class kept)."""
    if getattr(rnn, "proj_size", 0):
        raise GraphError(f"LSTM '{where}' has proj_size > 0; its hidden size cannot be dynamic")
    if dcl.num_channels != rnn.hidden_size:
        raise GraphError(f"'{where}': DCL has {dcl.num_channels} channels but hidden_size is {rnn.hidden_size}")
    if _replace_forward(rnn, dcl, _dynamic_rnn_forward, is_dynamic_rnn(rnn), where):
        rnn.__dict__[_RNN_FLAG] = True


def _replace_forward(module: nn.Module, dcl: DynamicWidth, forward, attached: bool, where: str) -> bool:
    """Give ``module`` the DCL child ``dcl`` and the instance forward ``forward(module, ...)``; a module made
    dynamic before (``attached``) only gets the new DCL. Returns True when the forward was replaced now."""
    if attached:
        module._modules[DCL_CHILD] = dcl
        return False
    if DCL_CHILD in module._modules or DCL_CHILD in module.__dict__:
        raise GraphError(f"module '{where}' already has an attribute '{DCL_CHILD}'")
    module.add_module(DCL_CHILD, dcl)
    # a partial of a module-level function (not a bound method) so the model still pickles and deep-copies
    module.__dict__["forward"] = functools.partial(forward, module)
    return True


def _masked_mha_params(mha: nn.Module, mask: Tensor) -> dict[str, Tensor]:
    """The value projection's rows (and ``bias_v``) scaled by their head's signal weight: a head whose weight is
    0 then adds nothing to the attention output, exactly an attention without that head."""
    m = mask.repeat_interleave(mha.head_dim).to(mha.out_proj.weight.dtype)
    params: dict[str, Tensor] = {}
    # q and k rows kept, v rows masked; each block is num_heads * head_dim rows (below embed_dim once compacted)
    scale = torch.cat([torch.ones(2 * m.numel(), dtype=m.dtype, device=m.device), m])
    if mha._qkv_same_embed_dim:
        params["in_proj_weight"] = mha.in_proj_weight * scale[:, None]
    else:
        params["v_proj_weight"] = mha.v_proj_weight * m[:, None]
    if mha.in_proj_bias is not None:
        params["in_proj_bias"] = mha.in_proj_bias * scale
    if mha.bias_v is not None:
        params["bias_v"] = mha.bias_v * m
    return params


def _no_op_hook(module: nn.Module, args: Any, out: Any) -> None:
    return None


def _dynamic_mha_forward(self: nn.Module, *args, **kwargs):
    from torch.nn.utils.stateless import _reparametrize_module

    dcl: DynamicWidth = self._modules[DCL_CHILD]  # type: ignore[assignment]
    if args and isinstance(args[0], Tensor) and dcl.passes_whole(args[0]):  # every head kept whole
        return type(self).forward(self, *args, **kwargs)
    with _reparametrize_module(self, _masked_mha_params(self, dcl.mask())):
        return type(self).forward(self, *args, **kwargs)


def is_dynamic_mha(module: nn.Module) -> bool:
    return module.__dict__.get(_MHA_FLAG) is not None


def make_mha_dynamic(mha: nn.Module, dcl: DynamicWidth, where: str = "") -> None:
    """Make the head count of an ``nn.MultiheadAttention`` the width of ``dcl`` (instance forward replaced;
    class kept): each head's value rows are scaled by its signal weight, so in eval mode the heads from
    ``ceil(K)`` on contribute nothing, and :func:`slimtrain.export` cuts them."""
    if dcl.num_channels != mha.num_heads:
        raise GraphError(f"'{where}': DCL has {dcl.num_channels} channels but num_heads is {mha.num_heads}")
    if not _replace_forward(mha, dcl, _dynamic_mha_forward, is_dynamic_mha(mha), where):
        return
    # a (no-op) hook: nn.TransformerEncoderLayer's fused fast path, which reads in_proj_weight directly, is not
    # taken while a submodule has hooks, so the layer calls this forward (the value rows masked) in eval too
    mha.__dict__[_MHA_FLAG] = mha.register_forward_hook(_no_op_hook).id


def _drop_dcl_keys(model: nn.Module, incompatible) -> None:
    """load_state_dict post-hook: a state dict without DCL keys (the user's original one) loads strictly."""
    dcl_keys = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, DynamicWidth):
            prefix = f"{name}." if name else ""
            dcl_keys.update(prefix + k for k in m.state_dict().keys())
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in dcl_keys]


def install_state_dict_hook(model: nn.Module) -> None:
    if model.__dict__.get(_SD_FLAG) is None:
        model.__dict__[_SD_FLAG] = model.register_load_state_dict_post_hook(_drop_dcl_keys).id


def _drop_hook(m: nn.Module, hook_id: int) -> None:
    for hooks in (m._forward_hooks, m._forward_hooks_with_kwargs, m._forward_hooks_always_called):
        hooks.pop(hook_id, None)


def detach_all(model: nn.Module) -> None:
    """Remove everything slimtrain attached (hooks, ``dcl`` children, LayerNorm bindings, RNN forwards)."""
    for m in model.modules():
        d = m.__dict__
        h = d.pop(_MARK, None)
        if h is not None:
            _drop_hook(m, h)
            m._modules.pop(DCL_CHILD, None)
        h = d.pop(_LN_SOURCE + "_hook", None)
        if h is not None:
            _drop_hook(m, h)
        d.pop(_LN_SOURCE, None)
        h = d.pop(_MHA_FLAG, None)
        if h is not None and not isinstance(h, bool):
            _drop_hook(m, h)
        if d.pop(_RNN_FLAG, None) or h is not None:
            d.pop("forward", None)
            m._modules.pop(DCL_CHILD, None)
        h = d.pop(_SD_FLAG, None)
        if h is not None:
            m._load_state_dict_post_hooks.pop(h, None)
