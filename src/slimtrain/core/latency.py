"""Measured latency as a differentiable function of the widths, per backend.

FLOPs do not predict the latency of small models: a fixed cost per operator call (dispatch,
kernel launch, session overhead) and memory traffic dominate. :func:`profile` measures it
instead, on the backend the model will run on (``"torch"`` eager CPU, ``"onnxruntime"`` CPU,
``"cuda"``):

1. Every dynamic layer of a model prepared by :func:`slimtrain.make_dynamic` is cut *alone*
   (with :mod:`slimtrain.core.export`'s own cutting) to a grid of input and output widths and timed
   on the input it sees in the model (captured from one forward pass of ``sample`` at full
   width): warm-up calls, then the median of ``repeats`` calls. For onnxruntime each cut layer is
   exported to ONNX (the dynamo exporter, as :func:`slimtrain.core.export.export_onnx` does) and run by
   an ``InferenceSession`` with one intra-op thread; the cost of an empty session call (an
   Identity graph on the same input) is subtracted, since the whole model pays it once.
2. Each layer gets a monotone model, fitted by non-negative least squares
   (:func:`scipy.optimize.nnls`)::

       t_l(K_in, K_out) = c0 + c1 K_in + c2 K_out + c3 K_in K_out   (+ c4 K_out^2 for GRU/LSTM)

   the terms of a roofline-style cost: ``c0`` the fixed per-call cost, ``c1``/``c2`` moving the
   input and output activations (proportional to the widths), ``c3`` the multiply-accumulates
   (and the weights) of a linear/conv layer, ``c4`` the recurrent ``H x H`` product. Only the
   terms of the dynamic sides are used (a side of fixed width is a constant), a BatchNorm or
   LayerNorm whose two sides are one width is ``c0 + c1 K``. With every coefficient ``>= 0`` and
   widths ``>= 0``, the prediction never decreases when a width grows, is smooth, and is a
   polynomial of torch operations, so it is a loss term whose gradient flows into every ``K``.
3. The whole model is timed after export at a few uniform width scales (``calibrate``) and
   ``T(K) = a + b * sum_l t_l(K)`` is fitted (``a, b >= 0``, again NNLS): ``a`` holds what no
   dynamic layer owns (the STFT of a front-end, activations, the session call), ``b`` corrects
   the layers' isolated timings for what they share inside one graph (caches, fused calls).
   Grid points of a layer, and the calibration models, are timed in turns (A, B, C, A, B, C, ...),
   so that a change of machine load hits them alike.

The profile is saved as JSON (:meth:`LatencyProfile.save` / :func:`load_profile`) with the
backend, thread count, torch/onnxruntime versions, the machine and every timed grid point.
Units: milliseconds per call of ``sample``; :meth:`LatencyProfile.predict` converts to ms per
item (``unit="ms/item"``: per call / batch) or ms per second of audio (``"ms/s"``: needs
``seconds``, the duration of one item).

What it does not model: attention products between activations (no module to cut) and layers
that read a concatenation of several widths are listed in ``LatencyProfile.unprofiled``; their
time is in the fixed term ``a`` at the width they had in the calibration runs.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .graph import LayerSpec, get_graph

__all__ = ["profile", "LatencyProfile", "LayerFit", "LatencyError", "load_profile", "BACKENDS", "UNITS",
           "measure", "measure_interleaved", "backend_runner"]

BACKENDS = ("torch", "onnxruntime", "cuda")
#: units of a prediction: per call of the profiling sample, per item of it, per second of audio
UNITS = ("ms/call", "ms/item", "ms/s")
_FORMAT = "slimtrain-latency-profile"
_VERSION = 1
#: layer kinds that are cut and timed alone
_TIMED = ("linear", "conv", "rnn", "bn", "ln", "mel")
#: kinds whose tied sides (one width in and out) still multiply the width by itself
_PRODUCT_KINDS = ("linear", "conv", "rnn")


class LatencyError(ValueError):
    """A latency profile cannot be made, loaded or used (the message names the backend, file or layer)."""


@dataclass
class LayerFit:
    """One profiled layer: which widths feed it, the grid it was timed on and its fitted coefficients."""

    name: str
    kind: str
    in_dcl: Optional[str]  # DCL name of the input width (None: fixed)
    out_dcl: Optional[str]
    in_size: int  # full width of each side
    out_size: int
    terms: list[str]  # names of the fitted terms, e.g. ["1", "in", "out", "in*out"]
    coef: list[float]  # ms per call, one per term, all >= 0
    points: list[list[float]] = field(default_factory=list)  # [K_in, K_out, measured ms]

    @property
    def tied(self) -> bool:
        return self.in_dcl is not None and self.in_dcl == self.out_dcl

    def features(self, k_in, k_out) -> list:
        """The values of :attr:`terms` at ``(k_in, k_out)`` (floats or tensors: +, * only)."""
        vals = {"1": 1.0, "in": k_in, "out": k_out, "in*out": k_in * k_out, "out^2": k_out * k_out,
                "in^2": k_in * k_in}
        return [vals[t] for t in self.terms]

    def predict(self, k_in, k_out):
        """Fitted ms per call at ``(k_in, k_out)``."""
        total = 0.0
        for c, f in zip(self.coef, self.features(k_in, k_out)):
            total = total + c * f
        return total


def _terms(kind: str, din: bool, dout: bool, tied: bool) -> list[str]:
    if tied:
        return ["1", "in"] + (["in^2"] if kind in _PRODUCT_KINDS else [])
    t = ["1"]
    if din:
        t.append("in")
    if dout:
        t.append("out")
    if din and dout:
        t.append("in*out")
    if kind == "rnn" and dout:
        t.append("out^2")
    return t


@dataclass
class LatencyProfile:
    """Fitted latency of a dynamic model on one backend: ``a + b * sum of the layers' fits`` (ms per call)."""

    backend: str
    threads: int
    batch: int  # items in one call of the profiling sample
    seconds: Optional[float]  # duration of one item (for ms per second of audio)
    sample_shape: list[int]
    dcls: dict[str, int]  # DCL name -> full width
    layers: list[LayerFit]
    intercept: float  # a, ms per call
    scale: float  # b
    calibration: list[dict] = field(default_factory=list)  # {"widths": {...}, "measured": ms, "layers": ms}
    unprofiled: list[dict] = field(default_factory=list)  # {"name", "kind", "why"}
    settings: dict = field(default_factory=dict)  # points, repeats, warmup, clock
    meta: dict = field(default_factory=dict)  # versions, machine, date

    # -- prediction ----------------------------------------------------------------------------
    def _divisor(self, unit: str) -> float:
        if unit not in UNITS:
            raise LatencyError(f"unknown latency unit {unit!r}; use one of {UNITS}")
        if unit == "ms/call":
            return 1.0
        if unit == "ms/item":
            return float(self.batch)
        if not self.seconds:
            raise LatencyError("unit 'ms/s' (ms per second of audio) needs the duration of one item: "
                               "profile(..., seconds=...) when profiling")
        return float(self.batch) * float(self.seconds)

    def predict(self, model: Optional[nn.Module] = None, *, widths: Optional[dict] = None, hard: bool = False,
                unit: str = "ms/call"):
        """Predicted latency in ``unit``.

        Widths come from ``model``'s DCLs (``hard``: the exported ``ceil(K)``; otherwise the
        continuous ``K``, differentiable) or from ``widths`` (``{dcl name: K}``, floats or tensors;
        a DCL not given is at full width). Returns a 0-d tensor (a float when every width is a float).
        """
        div = self._divisor(unit)
        if model is not None:
            widths = self.model_widths(model, hard=hard)
        widths = dict(widths or {})
        unknown = sorted(set(widths) - set(self.dcls))
        if unknown:
            raise LatencyError(f"widths for DCLs the profile does not have: {unknown}; profiled: {sorted(self.dcls)}")
        total = 0.0
        for f in self.layers:
            k_in = widths.get(f.in_dcl, f.in_size) if f.in_dcl is not None else f.in_size
            k_out = widths.get(f.out_dcl, f.out_size) if f.out_dcl is not None else f.out_size
            total = total + f.predict(k_in, k_out)
        return (self.intercept + self.scale * total) / div

    def model_widths(self, model: nn.Module, hard: bool = False) -> dict:
        """``{dcl name: K}`` of ``model`` for :meth:`predict` (checks it is the profiled model first)."""
        self.check_model(model)
        g = get_graph(model)
        out = {}
        for name in g.dcls.values():
            d = model.get_submodule(name)
            out[name] = float(d.hard_width) if hard else d.width
        return out

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`LatencyError` unless ``model`` has the profiled DCLs and layers (names, kinds, sizes)."""
        g = get_graph(model)
        mods = g.dcl_modules(model)
        have = {g.dcls[r]: mods[r].num_channels for r in g.dcls}
        if have != self.dcls:
            missing = sorted(set(self.dcls) - set(have))
            extra = sorted(set(have) - set(self.dcls))
            sizes = sorted(n for n in set(have) & set(self.dcls) if have[n] != self.dcls[n])
            raise LatencyError("the latency profile is of another model: "
                               + "; ".join(p for p in (f"DCLs missing from the model: {missing}" if missing else "",
                                                       f"DCLs not in the profile: {extra}" if extra else "",
                                                       "different full widths: " + ", ".join(
                                                           f"{n} {self.dcls[n]} in the profile, {have[n]} in the model"
                                                           for n in sizes) if sizes else "") if p)
                               + "; profile this model with slimtrain.core.latency.profile(model, sample)")
        layers = {s.name: s for s in g.layers}
        for f in self.layers:
            s = layers.get(f.name)
            if s is None:
                raise LatencyError(f"the latency profile is of another model: its layer '{f.name}' ({f.kind}) is not "
                                   "a layer of this model")
            sig = (s.kind, _dcl_name(g, s.in_root), _dcl_name(g, _out_root(s)))
            if sig != (f.kind, f.in_dcl, f.out_dcl):
                raise LatencyError(f"the latency profile is of another layer set: layer '{f.name}' is "
                                   f"{f.kind} {f.in_dcl} -> {f.out_dcl} in the profile but {sig[0]} {sig[1]} -> "
                                   f"{sig[2]} in this model")

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {"format": _FORMAT, "version": _VERSION, **d}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the profile as JSON (atomically: a temporary file renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = "<dict>") -> "LatencyProfile":
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise LatencyError(f"{where}: not a slimtrain latency profile (no \"format\": \"{_FORMAT}\")")
        if d.get("version") != _VERSION:
            raise LatencyError(f"{where}: latency profile version {d.get('version')!r}; this slimtrain reads "
                               f"version {_VERSION}")
        try:
            layers = [LayerFit(**lf) for lf in d["layers"]]
            kw = {k: d[k] for k in ("backend", "threads", "batch", "seconds", "sample_shape", "dcls", "intercept",
                                    "scale")}
            extra = {k: d.get(k, v) for k, v in (("calibration", []), ("unprofiled", []), ("settings", {}),
                                                 ("meta", {}))}
        except (KeyError, TypeError) as e:
            raise LatencyError(f"{where}: latency profile misses or mistypes a field: {e}") from None
        return cls(layers=layers, **kw, **extra)


def load_profile(path: Union[str, Path]) -> LatencyProfile:
    """Read a profile written by :meth:`LatencyProfile.save` (clear error naming the file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LatencyError(f"cannot read latency profile '{path}': {e.strerror or e}") from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise LatencyError(f"'{path}' is not JSON (line {getattr(e, 'lineno', '?')}): {e}") from None
    return LatencyProfile.from_dict(d, where=f"'{path}'")


def as_profile(latency: Union[LatencyProfile, str, Path, None]) -> LatencyProfile:
    """A :class:`LatencyProfile` from a profile or the path of a saved one."""
    if isinstance(latency, LatencyProfile):
        return latency
    if isinstance(latency, (str, Path)):
        return load_profile(latency)
    raise LatencyError(f"latency must be a LatencyProfile or the path of a saved one, got {type(latency).__name__}")


# -- timing --------------------------------------------------------------------------------------
def measure(fn: Callable[[], Any], *, repeats: int = 30, warmup: int = 5, clock: str = "cpu",
            sync: Callable[[], Any] = lambda: None) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls.

    ``clock="cpu"``: the process's CPU time (robust on a shared machine: waiting for a core is not
    counted; right for one thread); ``"wall"``: the wall clock (GPU work, several threads). ``sync``
    runs before each reading (``torch.cuda.synchronize``)."""
    if clock not in ("cpu", "wall"):
        raise LatencyError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = now()
        fn()
        sync()
        out.append(now() - t0)
    return statistics.median(out)


def measure_interleaved(fns: Sequence[Callable[[], Any]], *, repeats: int = 30, warmup: int = 5, clock: str = "cpu",
                        sync: Callable[[], Any] = lambda: None) -> list[float]:
    """Median seconds per call of each of ``fns``, timed in turns (A, B, C, A, B, C, ...) so that a change
    of machine load hits all of them alike (see :func:`measure` for ``clock`` and ``sync``)."""
    if clock not in ("cpu", "wall"):
        raise LatencyError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            sync()
            t0 = now()
            fn()
            sync()
            out[i].append(now() - t0)
    return [statistics.median(v) for v in out]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise LatencyError(f"unknown latency backend {backend!r}; use one of {BACKENDS}")
    if backend == "cuda" and not torch.cuda.is_available():
        raise LatencyError("backend 'cuda': no CUDA GPU is available to this process (torch.cuda.is_available() is "
                           "False); profile on 'torch' or 'onnxruntime', or on a machine with a GPU")
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
            import onnx  # noqa: F401
        except ImportError as e:
            raise LatencyError(f"backend 'onnxruntime' needs onnxruntime and onnx ({e}); install the deploy extra: "
                               "pip install 'slimtrain[deploy]'") from None


def _onnx_bytes(module: nn.Module, args: tuple) -> bytes:
    """``module(*args)`` as an ONNX model (the dynamo exporter, as :func:`slimtrain.core.export.export_onnx`)."""
    import logging

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, args, dynamo=True, verbose=False, opset_version=18)
        return prog.model_proto.SerializeToString()
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _ort_session(data: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _identity_onnx(x: np.ndarray) -> bytes:
    """An ONNX graph that returns its input (the cost of an empty session call)."""
    import onnx
    from onnx import TensorProto, helper

    dt = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE}.get(x.dtype,
                                                                                                TensorProto.FLOAT)
    inp = helper.make_tensor_value_info("input", dt, list(x.shape))
    out = helper.make_tensor_value_info("output", dt, list(x.shape))
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity", [inp], [out])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = min(m.ir_version, 9)
    return m.SerializeToString()


class _FirstOutput(nn.Module):
    """``module(*args)`` reduced to its first tensor output (a GRU returns ``(y, h)``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args):
        y = self.module(*args)
        return y[0] if isinstance(y, (tuple, list)) else y


def backend_runner(module: nn.Module, args: tuple, backend: str, threads: int = 1) -> Callable[[], Any]:
    """A no-argument function that runs ``module(*args)`` on ``backend`` (ONNX export + session for
    onnxruntime, the module moved to the GPU for cuda). Used for layers and for whole models alike."""
    _check_backend(backend)
    module = module.eval()
    if backend == "onnxruntime":
        wrapped = _FirstOutput(module).eval()
        try:
            data = _onnx_bytes(wrapped, args)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            raise LatencyError(f"backend 'onnxruntime': ONNX export of {type(module).__name__} failed: "
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                               ) from None
        sess = _ort_session(data, threads)
        feed = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
        return lambda: sess.run(None, feed)
    dev = torch.device("cuda" if backend == "cuda" else "cpu")
    module = module.to(dev)
    args = tuple(a.to(dev) for a in args)

    def run():
        with torch.inference_mode():
            module(*args)
    return run


def _ort_overhead(args: tuple, threads: int, repeats: int, warmup: int, clock: str) -> float:
    x = args[0].detach().cpu().numpy()
    sess = _ort_session(_identity_onnx(x), threads)
    feed = {sess.get_inputs()[0].name: x}
    return measure(lambda: sess.run(None, feed), repeats=repeats, warmup=warmup, clock=clock)


# -- profiling -----------------------------------------------------------------------------------
def _dcl_name(g, root: Optional[int]) -> Optional[str]:
    return g.dcls.get(root) if root is not None else None


def _out_root(s: LayerSpec) -> Optional[int]:
    return s.in_root if s.kind in ("bn", "ln") else s.out_root


def _fixed_sizes(module: nn.Module, s: LayerSpec) -> tuple[int, int]:
    """(input, output) channel counts of a plain layer at full width."""
    if s.kind == "linear":
        from .trace import linear_sizes

        return linear_sizes(module)
    if s.kind == "conv":
        return module.in_channels, module.out_channels
    if s.kind == "rnn":
        return module.input_size, module.hidden_size
    if s.kind == "bn":
        return module.num_features, module.num_features
    if s.kind == "ln":
        return module.normalized_shape[-1], module.normalized_shape[-1]
    if s.kind == "mel":
        return module.n_freqs, module.n_mels
    return 0, 0


def _grid(lo: int, hi: int, points: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(lo, hi, max(2, points))})


def _holder(name: str, module: nn.Module) -> nn.Module:
    """A module that holds ``module`` at the dotted path ``name`` (so export's cutting finds it)."""
    root = nn.Module()
    parts = name.split(".")
    cur = root
    for p in parts[:-1]:
        nxt = nn.Module()
        cur.add_module(p, nxt)
        cur = nxt
    cur.add_module(parts[-1], module)
    return root


def _capture_inputs(plain: nn.Module, sample, names: Sequence[str]) -> dict[str, tuple]:
    """The positional inputs of each named module in one forward pass of ``sample`` (its first call)."""
    got: dict[str, tuple] = {}
    hooks = []
    for n in names:
        try:
            m = plain.get_submodule(n)
        except AttributeError:
            continue

        def hook(mod, args, n=n):
            if n not in got:
                got[n] = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            plain(*sample) if isinstance(sample, tuple) else plain(sample)
    finally:
        for h in hooks:
            h.remove()
    return got


def _cut_input(x: Tensor, s: LayerSpec, k_in: Optional[int]) -> Tensor:
    from .export import kept_index

    if k_in is None or s.kind == "mel":
        return x
    axis = 1 if s.kind in ("conv", "bn") else x.dim() - 1
    idx = kept_index(s.in_size, k_in, s.in_outer, s.in_inner)
    return x.index_select(axis, idx).contiguous()


def _set_uniform(model: nn.Module, kappa: float) -> dict[str, float]:
    """Every DCL at ``max(K_min, kappa * N)``; returns ``{name: hard width}``."""
    g = get_graph(model)
    out = {}
    for r, name in g.dcls.items():
        d = model.get_submodule(name)
        d.set_width(max(d.min_width, kappa * d.num_channels))
        out[name] = float(d.hard_width)
    return out


def machine_info(backend: str) -> dict:
    """Versions and machine of a profile (recorded with it; a profile is valid for this machine only)."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if backend == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares with each column scaled to unit maximum (conditioning)."""
    from scipy.optimize import nnls

    s = np.abs(a).max(axis=0)
    s[s == 0] = 1.0
    x, _ = nnls(a / s, b)
    return x / s


def profile(model: nn.Module, sample, backend: str = "torch", *, points: int = 4, repeats: int = 30,
            warmup: int = 5, threads: int = 1, seconds: Optional[float] = None, clock: Optional[str] = None,
            calibrate: Sequence[float] = (1.0, 0.75, 0.5, 0.25, 0.0), layers: Optional[Sequence[str]] = None,
            progress: bool = False) -> LatencyProfile:
    """Measure and fit the latency of ``model`` (made dynamic) on ``backend`` for calls on ``sample``.

    Args:
        model: a model prepared by :func:`slimtrain.make_dynamic` (not changed).
        sample: the input of one deployed call (e.g. one 0.32 s chunk, batch 1); its shapes, not
            those of the ``make_dynamic`` sample, set every layer's input.
        backend: ``"torch"`` (eager, CPU), ``"onnxruntime"`` (CPU execution provider) or ``"cuda"``.
        points: grid points per dynamic side of a layer (from its lower bound to full width).
        repeats, warmup: timed and untimed calls per grid point (the median is kept).
        threads: intra-op threads (torch's for "torch", the session's for "onnxruntime").
        seconds: duration of one item of ``sample`` (for predictions in ms per second of audio).
        clock: "cpu" (process CPU time; default for the CPU backends) or "wall" (default for cuda).
        calibrate: uniform width scales (``K = max(K_min, s * N)``) at which the exported model is
            timed whole to fit ``a`` and ``b`` (at least two distinct widths).
        layers: profile only these layer names (default: every dynamic layer that can be cut alone).
    """
    _check_backend(backend)
    if points < 2:
        raise LatencyError(f"points must be >= 2 per side, got {points}")
    if repeats < 1 or warmup < 0 or threads < 1:
        raise LatencyError(f"repeats and threads must be >= 1 and warmup >= 0 (got {repeats}, {threads}, {warmup})")
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise LatencyError(f"seconds must be a positive duration of one item, got {seconds!r}")
    if len({float(c) for c in calibrate}) < 2:
        raise LatencyError(f"calibrate needs at least two different width scales, got {list(calibrate)}")
    clock = clock or ("wall" if backend == "cuda" else "cpu")
    g = get_graph(model)
    from .export import _cut, export

    sample_t = sample if isinstance(sample, tuple) else (sample,)
    batch = int(sample_t[0].shape[0]) if sample_t[0].dim() else 1
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dyn = copy.deepcopy(model).cpu().eval()
        gd = get_graph(dyn)
        mods = gd.dcl_modules(dyn)
        _set_uniform(dyn, 1.0)
        plain = export(dyn).cpu().eval()
        chosen, skipped = [], []
        wanted = set(layers) if layers is not None else None
        for s in g.layers:
            din, dout = s.in_root is not None, _out_root(s) is not None
            if not (din or dout):
                continue
            if wanted is not None and s.name not in wanted:
                continue
            if s.kind not in _TIMED:
                why = ("a product between activations (attention): no module to cut and time alone"
                       if s.kind == "prod" else f"kind '{s.kind}' is not timed alone")
                skipped.append({"name": s.name, "kind": s.kind, "why": why})
                continue
            if "in_segs" in s.extra:
                skipped.append({"name": s.name, "kind": s.kind, "why": "reads a concatenation of several widths"})
                continue
            chosen.append(s)
        if wanted is not None:
            unknown = wanted - {s.name for s in g.layers}
            if unknown:
                raise LatencyError(f"layers {sorted(unknown)} are not layers of the model; its layers: "
                                   f"{[s.name for s in g.layers]}")
        inputs = _capture_inputs(plain, sample if isinstance(sample, tuple) else sample, [s.name for s in chosen])
        fits: list[LayerFit] = []
        for i, s in enumerate(chosen):
            if s.name not in inputs:
                skipped.append({"name": s.name, "kind": s.kind, "why": "not called in a forward pass of the sample"})
                continue
            full = plain.get_submodule(s.name)
            f_in, f_out = _fixed_sizes(full, s)
            out_root = _out_root(s)
            in_dcl, out_dcl = _dcl_name(g, s.in_root), _dcl_name(g, out_root)
            tied = in_dcl is not None and in_dcl == out_dcl
            lo_in = mods[s.in_root].min_width if s.in_root is not None else None
            lo_out = mods[out_root].min_width if out_root is not None else None
            g_in = _grid(math.ceil(lo_in), s.in_size, points) if in_dcl else [None]
            g_out = _grid(math.ceil(lo_out), mods[out_root].num_channels, points) if out_dcl and not tied else [None]
            args0 = inputs[s.name]
            overhead = 0.0
            if backend == "onnxruntime":
                overhead = _ort_overhead(args0[:1], threads, repeats, warmup, clock)
            pts, runs = [], []
            for k_in in g_in:
                for k_out in g_out:
                    if tied:
                        k_out = k_in
                    widths = {}
                    if s.in_root is not None:
                        widths[s.in_root] = k_in
                    if out_root is not None:
                        widths[out_root] = k_out
                    h = _holder(s.name, copy.deepcopy(full))
                    _cut(h, s, widths)
                    layer = h.get_submodule(s.name)
                    args = (_cut_input(args0[0], s, k_in),) + tuple(args0[1:])
                    runs.append(backend_runner(layer, args, backend, threads))
                    kin_v = float(k_in) if k_in is not None else float(f_in)
                    kout_v = float(k_out) if k_out is not None else float(f_out)
                    pts.append([kin_v, kout_v])
            sync = torch.cuda.synchronize if backend == "cuda" else (lambda: None)
            secs = measure_interleaved(runs, repeats=repeats, warmup=warmup, clock=clock, sync=sync)
            for p, t in zip(pts, secs):
                p.append(1e3 * max(0.0, t - overhead))
            fit = LayerFit(s.name, s.kind, in_dcl, out_dcl, int(s.in_size if in_dcl else f_in),
                           int(mods[out_root].num_channels if out_dcl else f_out),
                           _terms(s.kind, in_dcl is not None, out_dcl is not None, tied), [], pts)
            a = np.array([[float(v) for v in fit.features(p[0], p[1])] for p in pts], dtype=np.float64)
            fit.coef = [float(c) for c in _nnls(a, np.array([p[2] for p in pts]))]
            fits.append(fit)
            if progress:
                print(f"[latency] {i + 1}/{len(chosen)} {s.name} ({s.kind}): {len(pts)} points", flush=True)
        if not fits:
            raise LatencyError("no dynamic layer of the model could be profiled: "
                               + "; ".join(f"'{u['name']}': {u['why']}" for u in skipped) if skipped
                               else "the model has no dynamic layer")
        prof = LatencyProfile(backend=backend, threads=threads, batch=batch,
                              seconds=float(seconds) if seconds is not None else None,
                              sample_shape=list(sample_t[0].shape),
                              dcls={gd.dcls[r]: mods[r].num_channels for r in gd.dcls}, layers=fits,
                              intercept=0.0, scale=1.0, unprofiled=skipped,
                              settings={"points": points, "repeats": repeats, "warmup": warmup, "clock": clock,
                                        "calibrate": [float(c) for c in calibrate]},
                              meta=machine_info(backend))
        # whole-model calibration: measured = a + b * sum of the layer fits, a, b >= 0
        sync = torch.cuda.synchronize if backend == "cuda" else (lambda: None)
        rows, runs = [], []
        for kappa in calibrate:
            widths = _set_uniform(dyn, float(kappa))
            runs.append(backend_runner(export(dyn).cpu().eval(), sample_t, backend, threads))
            rows.append({"kappa": float(kappa), "widths": widths, "layers": float(prof.predict(widths=widths))})
        for r, t in zip(rows, measure_interleaved(runs, repeats=repeats, warmup=warmup, clock=clock, sync=sync)):
            r["measured"] = 1e3 * t
        a = np.array([[1.0, r["layers"]] for r in rows])
        coef = _nnls(a, np.array([r["measured"] for r in rows]))
        if not coef[1] > 0:
            # the whole-model timings do not resolve a width dependence (timing noise above the layers'
            # share): keep the isolated layers' scale (b = 1) and fit the fixed term alone
            coef = np.array([max(0.0, float(np.mean([r["measured"] - r["layers"] for r in rows]))), 1.0])
            prof.settings["scale_fallback"] = True
            warnings.warn(f"latency.profile: backend '{backend}': the whole model's latency "
                          f"({', '.join(format(r['measured'], '.4f') for r in rows)} ms at scales "
                          f"{[r['kappa'] for r in rows]}) does not grow with its layers' widths beyond the timing "
                          "noise; the layers' isolated timings are kept unscaled (more repeats or a larger sample "
                          "resolve it)", RuntimeWarning, stacklevel=2)
        prof.intercept, prof.scale, prof.calibration = float(coef[0]), float(coef[1]), rows
        return prof
    finally:
        torch.set_num_threads(prev_threads)
