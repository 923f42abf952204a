"""The on-disk format of a shipped (exported, dense) model: state dict + plain builder arguments.

A shipped model is two files with the same stem:

* ``NAME.pt`` -- ``torch.save`` of a plain dict ``{"format": "slimtrain-shipped-model", "version": 1,
  "task": ..., "builder": {...}, "state_dict": {...}, "meta": {...}}``. It holds only tensors and
  plain values, so it loads with ``torch.load(weights_only=True)`` (no code runs from the file).
* ``NAME.json`` -- the same ``meta`` (recipe, data fingerprint, reproducing command, metrics) as
  readable text, plus the SHA-256 of ``NAME.pt``.

Loading does not go through the training path (no ``make_dynamic``, no graph tracing): the task's
*plain* builder makes the full-width model from ``builder`` and :func:`fit_to_state` re-sizes every
layer to the shapes in the state dict (the exported widths), which is then loaded strictly.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

__all__ = ["FORMAT", "VERSION", "ShippedModelError", "fit_to_state", "save_shipped", "load_shipped", "sha256_of"]

FORMAT = "slimtrain-shipped-model"
VERSION = 1
PathLike = Union[str, os.PathLike]


class ShippedModelError(ValueError):
    """A shipped model file is missing, damaged, or does not fit its builder (the message names the file)."""


def sha256_of(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _shape(state: dict, key: str, where: str) -> torch.Size:
    if key not in state:
        raise ShippedModelError(f"{where}: the state dict has no '{key}'")
    return state[key].shape


def _resized(m: nn.Module, name: str, state: dict, where: str) -> nn.Module | None:
    """A same-kind copy of layer ``m`` with the sizes of ``state`` (None if ``m`` needs no change)."""
    p = f"{name}." if name else ""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        out_c, in_per_group = _shape(state, p + "weight", where)[:2]
        return type(m)(in_per_group * m.groups, out_c, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                       bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        (n,) = _shape(state, p + "running_mean", where)
        return type(m)(n, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=True)
    if isinstance(m, nn.Linear):
        out_f, in_f = _shape(state, p + "weight", where)
        return nn.Linear(in_f, out_f, bias=m.bias is not None)
    if isinstance(m, nn.LayerNorm):
        return nn.LayerNorm(tuple(_shape(state, p + "weight", where)), eps=m.eps)
    if isinstance(m, (nn.GRU, nn.LSTM)):
        ih = _shape(state, p + "weight_ih_l0", where)
        hh = _shape(state, p + "weight_hh_l0", where)
        return type(m)(ih[1], hh[1], num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                       dropout=m.dropout, bidirectional=m.bidirectional)
    return None


def fit_to_state(model: nn.Module, state: dict, where: str = "<state dict>") -> nn.Module:
    """Re-size the layers of ``model`` (in place) to the tensor shapes of ``state``, then load it strictly.

    Handles Conv1d/2d, BatchNorm1d/2d, Linear, LayerNorm, GRU/LSTM and buffers such as a mel
    filterbank. Raises :class:`ShippedModelError` naming ``where`` and the layer when they do not fit.
    """
    for name, m in list(model.named_modules()):
        new = _resized(m, name, state, where)
        if new is None:
            continue
        if not name:
            raise ShippedModelError(f"{where}: the model itself is a single layer; ship a container module")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    for name, m in model.named_modules():  # persistent buffers whose size follows a width (mel filterbank)
        p = f"{name}." if name else ""
        for b, t in list(m._buffers.items()):
            key = p + b
            if t is not None and key in state and state[key].shape != t.shape and b not in ("running_mean",
                                                                                             "running_var"):
                m._buffers[b] = torch.empty_like(state[key])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ShippedModelError(f"{where}: the state dict does not fit the model its builder makes: "
                                f"{' '.join(str(e).split())[:400]}") from None
    return model.eval()


def save_shipped(path: PathLike, model: nn.Module, task: str, builder: dict, meta: dict) -> tuple[Path, Path]:
    """Write ``path`` (.pt) and its ``.json`` sidecar; returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    try:  # plain JSON values only, so that torch.load(weights_only=True) reads the file back
        meta, builder = json.loads(json.dumps(meta)), json.loads(json.dumps(builder))
    except (TypeError, ValueError) as e:
        raise ShippedModelError(f"{path}: meta and builder must be JSON values: {e}") from None
    payload = {"format": FORMAT, "version": VERSION, "task": task, "builder": builder, "state_dict": state,
               "meta": meta}
    torch.save(payload, path)
    side = path.with_suffix(".json")
    doc = {"format": FORMAT, "version": VERSION, "task": task, "builder": builder, **meta,
           "file": path.name, "sha256": sha256_of(path)}
    side.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path, side


def is_shipped(path: PathLike) -> bool:
    """Whether ``path`` is a file in this format (reads it)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load notes when it meets a TorchScript archive
            d = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not one
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT


def load_shipped(path: PathLike, task: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """``(plain model in eval mode, meta)`` from a shipped ``.pt``; ``build(builder)`` makes the full-width model."""
    p = Path(path)
    if not p.is_file():
        raise ShippedModelError(f"shipped model not found: {p}")
    try:
        d = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        raise ShippedModelError(f"{p} cannot be read as a shipped model ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ShippedModelError(f"{p} is not a slimtrain shipped model (no '{FORMAT}' marker)")
    if d.get("version") != VERSION:
        raise ShippedModelError(f"{p} has format version {d.get('version')!r}; this slimtrain reads {VERSION}")
    if d.get("task") != task:
        raise ShippedModelError(f"{p} is a shipped {d.get('task')!r} model, not a {task!r} model")
    try:
        model = build(dict(d["builder"]))
    except (TypeError, ValueError, KeyError) as e:
        raise ShippedModelError(f"{p}: its builder arguments {d.get('builder')!r} are not valid: {e}") from None
    return fit_to_state(model, d["state_dict"], str(p)), dict(d.get("meta", {}))
