"""Dynamic complexity layer (DCL): a learnable, continuous effective width K.

For a feature tensor with ``N`` channels along ``dim`` and a width ``K`` in
``[N_min, N_max]`` the layer keeps information on the first ``K`` channels
(0-based channel index ``i``):

* ``w_i = clamp(K - i, 0, 1)`` is the share of channel ``i`` that is kept:
  1 for ``i < floor(K)``, ``frac(K)`` for ``i = floor(K)``, 0 above;
* ``lambda_i = sin^2(pi/2 * w_i)`` is the signal share of the blended channel;
* the output is ``sqrt(lambda_i) * x_i + sqrt(1 - lambda_i) * sigma_i * nu``
  on the blended channel ``i = floor(K)`` (``nu ~ N(0, 1)`` fresh each call,
  ``sigma_i`` that channel's standard deviation over all other axes,
  detached), ``x_i`` below it and ``0`` above it.

The information kept (``sum_i lambda_i``-like) grows with ``K`` and the noise
free part ``E[y] = sqrt(lambda_i) x_i`` is continuous in ``K`` across integers.
In eval mode no noise is added and the layer is exactly the hard mask that
keeps ``hard_width = ceil(K)`` channels, which is what :func:`slimtrain.export`
cuts to.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DynamicWidth", "inward_clamp", "WidthError"]

#: Widths closer than this to an integer are rounded to it before ``ceil``
#: (guards against ``5.0000001`` exporting 6 channels).
_ROUND_TOL = 1e-4


class WidthError(ValueError):
    """Raised for invalid width bounds or tensors that do not fit a DCL."""


class _InwardClamp(torch.autograd.Function):
    """Clamp whose gradient passes inside the range, and outside it only when a
    descent step would move the value back inside (so it cannot stick to a
    bound, nor drift far beyond one)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo, hi) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        blocked = ((x < ctx.lo) & (grad > 0)) | ((x > ctx.hi) & (grad < 0))
        return torch.where(blocked, torch.zeros_like(grad), grad), None, None


def inward_clamp(x: Tensor, lo, hi) -> Tensor:
    """``x.clamp(lo, hi)`` with the gradient rule of :class:`_InwardClamp` (bounds: floats or tensors like ``x``)."""
    return _InwardClamp.apply(x, lo, hi)


_HALF_PI = 0.5 * math.pi


def first_order_backward(backward):
    """``torch.autograd.function.once_differentiable`` where it matters, and nothing where it does not.

    A backward that runs with grad mode on (``create_graph=True``) goes through ``once_differentiable``,
    so a second derivative raises instead of being silently wrong; an ordinary backward (grad mode off)
    calls the function directly and skips the wrapper's per-call bookkeeping (about 17 us per DCL on CPU).
    """
    guarded = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            return guarded(ctx, *grads)
        return backward(ctx, *grads)
    return wrapper


def _width_value(t: float, lo: float, hi: float, n: int, dtype: torch.dtype) -> float:
    """``float(n * clamp(theta, lo, hi))`` rounded as torch computes it in ``theta``'s dtype, without tensor ops."""
    c = min(max(t, lo), hi)
    if dtype == torch.float32:
        return float(np.float32(np.float32(c) * np.float32(n)))
    if dtype == torch.float64:
        return c * n
    return float(torch.tensor(c, dtype=dtype) * n)


def _step_mask(cache: dict, n: int, width: int, dtype: torch.dtype, device: torch.device, inner: int = 1) -> Tensor:
    """``[1] * width + [0] * (n - width)`` as a tensor, each entry repeated ``inner`` times (the size of
    the axes after the channel axis), cached per (width, dtype, device, inner).

    A cached mask is never written to (it is saved for backward as is), so reusing it is safe; the
    cache holds at most a few widths (the width moves slowly during training)."""
    key = (n, width, dtype, device, inner)
    m = cache.get(key)
    if m is None:
        if len(cache) >= 8:
            cache.clear()
        m = torch.zeros(n * inner, dtype=dtype, device=device)
        m[:width * inner] = 1
        cache[key] = m
    return m


def _times_step(x: Tensor, step: Tensor, d: int, n: int) -> Tensor:
    """``x`` times the channel mask ``step`` along axis ``d`` (``step`` repeated for the axes after ``d``).

    A contiguous ``x`` is multiplied as ``(rest, n * inner)`` by a vector over its last axis: the same
    products as broadcasting ``step.view(1, .., n, 1, ..)``, which runs several times slower when the
    axes after ``d`` are short (a per-head width on ``(B, T, heads, head_dim)``: 7x on head_dim 8)."""
    full = step.numel()
    if x.numel() and x.is_contiguous() and full == n * math.prod(x.shape[d + 1:]):
        if torch.is_grad_enabled() and (x.requires_grad or step.requires_grad):  # autograd records the view
            return (x.view(-1, full) * step).view(x.shape)
        # inside a custom Function: the output must not be a view (an in-place op may follow the width)
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        torch.mul(x.view(-1, full), step, out=y.view(-1, full))
        return y
    shape = [1] * x.dim()
    shape[d] = n
    return x * step.view(n, -1)[:, 0].view(shape)


class _HostBlendFunction(torch.autograd.Function):
    """The eager-CPU fast path of :class:`_BlendFunction`: the same values and gradients, with the
    scalar maths (width, blend weights, sigma, the inward-clamp test) in Python floats.

    Reading ``theta`` of a CPU tensor is a memory read, not a device sync, and this path is never
    taken under ``torch.compile`` or on an accelerator (see :meth:`DynamicWidth.forward`). It runs
    a handful of tensor operations per call (``benchmarks/overhead_parts.py``): one pass over ``x``
    (times a cached 0/1 step mask), the blended channel's statistics, noise and blend, and it saves
    a single channel-sized vector for the width gradient.

    ``K = N * clamp(theta, K_min/N, K_max/N)``, ``i = floor(K)``, ``w = K - i``,
    ``s = sin(pi/2 w)``, ``c = cos(pi/2 w)``: ``y = x`` below ``i``, ``0`` above,
    ``y_i = s x_i + c sigma_i nu``. Backward: ``dL/dx = g * [1 below i, s at i, 0 above]``;
    ``dL/dK = pi/2 <g_i, c x_i - s sigma_i nu>`` (the only channel whose weight has a slope; at an
    integer ``K`` the channel below has weight 1 where ``cos(pi/2)`` is 0);
    ``dL/dtheta = N dL/dK`` with the rule of :class:`_InwardClamp`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, cache: dict, held: bool, d: int, lo: float, hi: float, n: int,
                u: int) -> Tensor:  # type: ignore[override]
        t = float(theta)
        k = float(n) if held else _width_value(t, lo, hi, u, theta.dtype)
        i = int(math.floor(k))
        ctx.d, ctx.i, ctx.n, ctx.u, ctx.t, ctx.lo, ctx.hi, ctx.held = d, i, n, u, t, lo, hi, held
        ctx.theta_dtype = theta.dtype
        if i >= n:  # full width: nothing is blended, no gradient to the width
            ctx.s = 1.0
            ctx.save_for_backward()
            return x.clone()
        w = k - i
        s, c = math.sin(_HALF_PI * w), math.cos(_HALF_PI * w)
        inner = math.prod(x.shape[d + 1:])
        step = _step_mask(cache, n, i, x.dtype, x.device, inner if x.is_contiguous() else 1)
        y = _times_step(x, step, d, n)
        xi = x.detach().select(d, i)
        nu = torch.randn_like(xi)
        # statistics in at least float32 (half inputs), in float64 for float64 inputs
        stat = xi if xi.dtype in (torch.float32, torch.float64) else xi.to(torch.promote_types(xi.dtype, torch.float32))
        sigma = float(stat.std(unbiased=False)) if xi.numel() > 1 else float(stat.abs().reshape(()))
        yi = y.select(d, i)
        yi.add_(xi, alpha=s)
        yi.add_(nu, alpha=c * sigma)
        v = None
        if ctx.needs_input_grad[1] and not held:  # dy_i/dK up to pi/2: c x_i - s sigma nu
            v = xi.mul(c)
            v.add_(nu, alpha=-s * sigma)
        ctx.s = s
        ctx.save_for_backward(step, v)
        return y

    @staticmethod
    @first_order_backward
    def backward(ctx, g: Tensor):  # type: ignore[override]
        d, i, n = ctx.d, ctx.i, ctx.n
        if i >= n:
            return g if ctx.needs_input_grad[0] else None, \
                torch.zeros((), dtype=ctx.theta_dtype) if ctx.needs_input_grad[1] else None, \
                None, None, None, None, None, None, None
        step, v = ctx.saved_tensors
        grad_x = grad_t = None
        gi = g.select(d, i)
        if ctx.needs_input_grad[0]:
            grad_x = _times_step(g, step if step.dtype == g.dtype else step.to(g.dtype), d, n)
            grad_x.select(d, i).add_(gi, alpha=ctx.s)
        if ctx.needs_input_grad[1]:
            gt = 0.0 if v is None else float((gi * v).sum()) * (_HALF_PI * ctx.u)
            if ctx.held or (ctx.t < ctx.lo and gt > 0) or (ctx.t > ctx.hi and gt < 0):  # inward clamp rule
                gt = 0.0
            grad_t = torch.tensor(gt, dtype=ctx.theta_dtype, device=g.device)
        return grad_x, grad_t, None, None, None, None, None, None, None


def _width_scalars(theta: Tensor, hold: Tensor, lo: float, hi: float, n: int, u: int):
    """``(t, K, i, w, full)`` as 0-d tensors: ``K = U clamp(theta)`` (``U``: the unit of ``theta``; ``N`` while held),
    ``i = floor(K)`` clamped to ``N - 1``, ``w = K - i`` in ``[0, 1]``, ``full = K >= N``."""
    t = theta.detach()
    k = torch.where(hold, torch.full_like(t, n), t.clamp(lo, hi) * u)  # held: full width (warm-up)
    i = torch.floor(k).clamp(max=n - 1)
    return t, k, i, (k - i).clamp(0.0, 1.0), k >= n  # nothing is blended at full width


def _channel_scaled(g: Tensor, m: Tensor, d: int, n: int) -> Tensor:
    """``g`` times the per-channel weights ``m`` along axis ``d`` (``n`` channels)."""
    shape = [1] * g.dim()
    shape[d] = n
    return g * m.to(g.dtype).view(shape)


class _BlendFunction(torch.autograd.Function):
    """(Channel axis last; :class:`_BlendOneHotFunction` takes the other layouts.) The training-mode DCL in one autograd node: width, mask, noise blend and both gradients.

    ``K = N * clamp(theta, K_min/N, K_max/N)``; forward ``y = x * sin(pi/2 w)`` plus
    ``cos(pi/2 w_i) sigma_i nu`` on channel ``i = floor(K)``, with ``w = clamp(K - index, 0, 1)``
    (1 below ``i``, ``K - i`` at ``i``, 0 above). Backward: ``dL/dx = g * sin(pi/2 w)``;
    ``dL/dK = pi/2 (cos(pi/2 w_i) <g_i, x_i> - sin(pi/2 w_i) <g_i, sigma_i nu>)`` from the blended
    channel alone (the only one whose weight has a slope); ``dL/dtheta = N dL/dK`` with the rule
    of :class:`_InwardClamp`.

    Everything is computed with tensor operations on the model's device: the blended channel is
    picked by a one-hot mask built from the width tensor, so no value ever goes to the host (no ``.item()``, no device sync, no graph break under ``torch.compile``). At full
    width (``K = N``) the index is clamped to ``N - 1`` with ``w = 1``: the channel passes whole and
    its noise weight is exactly zero. Only the blended channel of ``x`` and its noise are saved.
    """

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, index: Tensor, hold: Tensor, d: int, lo: float, hi: float, n: int,
                u: int) -> Tensor:  # type: ignore[override]
        t, k, i, w, full = _width_scalars(theta, hold, lo, hi, n, u)
        # blend weights as 0-d tensors: the signal weight s of channel i, its noise weight c
        s = torch.where(full, torch.ones_like(w), torch.sin(_HALF_PI * w))
        c = torch.where(full, torch.zeros_like(w), torch.cos(_HALF_PI * w))
        shape = [1] * x.dim()
        shape[d] = n
        # per-channel weights: m (signal: 1 below i, s at i, 0 above) and q (noise: sigma c at i, 0
        # elsewhere), written by indexed writes so that torch.compile keeps them in buffers instead of
        # re-evaluating the trigonometry at every element; then one pointwise pass y = x m + q nu
        ii = i.to(torch.long).reshape(1)
        m = (index < i).to(x.dtype).index_put((ii,), s.to(x.dtype).reshape(1))
        # the blended channel by an indexed read of one channel (not a reduction over all of them)
        xi = x.detach().index_select(d, ii)
        # statistics in at least float32 (half inputs), in float64 for float64 inputs
        stat = xi if xi.dtype in (torch.float32, torch.float64) else xi.to(torch.promote_types(xi.dtype, torch.float32))
        sigma = stat.std(unbiased=False) if xi.numel() > 1 else stat.abs().reshape(())
        q = torch.zeros_like(m).index_put((ii,), (sigma * c).to(x.dtype).reshape(1))
        nu = torch.randn_like(xi.select(d, 0)).unsqueeze(d)
        y = x * m.view(shape) + q.view(shape) * nu
        # dy_i/dK up to pi/2: c x_i - s sigma nu (zero at full width, where w = 1 has no slope)
        v = (c.to(x.dtype) * xi - (s * sigma).to(x.dtype) * nu) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(m, i, t, v, hold.clone(), full)
        ctx.d, ctx.n, ctx.u, ctx.lo, ctx.hi = d, n, u, lo, hi
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        m, i, t, v, hold, full = ctx.saved_tensors
        d, n = ctx.d, ctx.n
        grad_t = None
        grad_x = _channel_scaled(g, m, d, n) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            gi = g.index_select(d, i.to(torch.long).reshape(1))
            grad_t = ((_HALF_PI * ctx.u) * (gi * v).sum()).to(t.dtype)
            blocked = ((t < ctx.lo) & (grad_t > 0)) | ((t > ctx.hi) & (grad_t < 0)) | hold | full  # inward clamp rule
            grad_t = torch.where(blocked, torch.zeros_like(grad_t), grad_t)
        return grad_x, grad_t, None, None, None, None, None, None, None


class _BlendOneHotFunction(torch.autograd.Function):
    """:class:`_BlendFunction` for a channel axis that is not the last one (``(B, C, T)`` features).

    The same values and gradients, with the blended channel picked by a one-hot mask and the weights
    computed per element: for these layouts inductor compiled the indexed-write form several times
    slower when fused with the layers around it (``benchmarks/training_overhead.py --mode compiled``,
    Conv1d stack), while this form fuses into the surrounding kernels.

    The formulas and the gradient rules are those of :class:`_BlendFunction`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, index: Tensor, hold: Tensor, d: int, lo: float, hi: float, n: int,
                u: int) -> Tensor:  # type: ignore[override]
        t, k, i, w, full = _width_scalars(theta, hold, lo, hi, n, u)
        m = torch.sin(_HALF_PI * (k - index).clamp(0.0, 1.0)).to(x.dtype)
        shape = [1] * x.dim()
        shape[d] = n
        one_hot = (index == i).to(x.dtype).view(shape)  # the blended channel
        # the blended channel by a one-hot reduction (not index_select): elementwise work that
        # torch.compile fuses with the layers around it
        xi = (x.detach() * one_hot).sum(d, keepdim=True)
        # statistics in at least float32 (half inputs), in float64 for float64 inputs
        stat = xi if xi.dtype in (torch.float32, torch.float64) else xi.to(torch.promote_types(xi.dtype, torch.float32))
        sigma = stat.std(unbiased=False) if xi.numel() > 1 else stat.abs().reshape(())
        noise = sigma.to(x.dtype) * torch.randn_like(xi.select(d, 0)).unsqueeze(d)
        q = torch.where(full, torch.zeros_like(w), torch.cos(_HALF_PI * w)).to(x.dtype)
        y = x * m.view(shape) + one_hot * (noise * q)
        ctx.save_for_backward(m, one_hot, w, full, t, xi if ctx.needs_input_grad[1] else None, noise, hold.clone())
        ctx.d, ctx.n, ctx.u, ctx.lo, ctx.hi = d, n, u, lo, hi
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        m, one_hot, w, full, t, xi, noise, hold = ctx.saved_tensors
        d, n = ctx.d, ctx.n
        grad_t = None
        grad_x = _channel_scaled(g, m, d, n) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            gi = (g * one_hot.to(g.dtype)).sum(d, keepdim=True)
            a = (gi * xi).sum().to(t.dtype)
            b = (gi * noise).sum().to(t.dtype)
            zero = torch.zeros_like(w)
            sin_w = torch.where(full, zero, torch.sin(_HALF_PI * w))
            cos_w = torch.where(w >= 1, zero, torch.cos(_HALF_PI * w))  # sin has no slope at w = 1
            grad_t = (_HALF_PI * ctx.u) * (cos_w * a - sin_w * b)
            blocked = ((t < ctx.lo) & (grad_t > 0)) | ((t > ctx.hi) & (grad_t < 0)) | hold  # inward clamp rule
            grad_t = torch.where(blocked, torch.zeros_like(grad_t), grad_t)
        return grad_x, grad_t, None, None, None, None, None, None, None


def _resolve_bounds(
    n: int,
    kappa_min: Optional[float],
    kappa_max: Optional[float],
    min_channels: Optional[int],
    max_channels: Optional[int],
) -> tuple[float, float]:
    if not isinstance(n, int) or n < 1:
        raise WidthError(f"num_channels must be a positive integer, got {n!r}")
    if kappa_min is not None and min_channels is not None:
        raise WidthError("give either kappa_min or min_channels, not both")
    if kappa_max is not None and max_channels is not None:
        raise WidthError("give either kappa_max or max_channels, not both")
    for name, v in (("kappa_min", kappa_min), ("kappa_max", kappa_max)):
        if v is not None and not (0.0 < v <= 1.0 and math.isfinite(v)):
            raise WidthError(f"{name} must be in (0, 1], got {v!r}")
    lo = float(min_channels) if min_channels is not None else (kappa_min * n if kappa_min is not None else 1.0)
    hi = float(max_channels) if max_channels is not None else (kappa_max if kappa_max is not None else 1.0) * n
    # kappa * n can miss an integer by float rounding (0.07 * 100 = 7.000000000000001)
    lo, hi = (float(round(v)) if abs(v - round(v)) < 1e-9 else v for v in (lo, hi))
    if lo < 1:
        raise WidthError(f"the minimum width must be at least 1 channel, got {lo:g} (num_channels={n})")
    if hi > n:
        raise WidthError(f"the maximum width {hi:g} exceeds num_channels={n}")
    if lo > hi:
        raise WidthError(f"minimum width {lo:g} is larger than maximum width {hi:g} (num_channels={n})")
    return lo, hi


_MASK_API = ("forward", "width", "hard_width", "keep_share", "soft_mask", "hard_mask", "mask", "_hard_width_tensor")


def standard_width(d: "DynamicWidth") -> bool:
    """True when ``d``'s masks are those of :class:`DynamicWidth` itself (a subclass that overrides none of
    its width or mask methods): the host-path shortcuts that compute the masks from ``theta`` (the masked
    LayerNorm, the whole-width skips) apply only then."""
    cls = type(d)
    ok = _STANDARD.get(cls)
    if ok is None:
        ok = _STANDARD[cls] = all(getattr(cls, a) is getattr(DynamicWidth, a) for a in _MASK_API)
    return ok


_STANDARD: dict = {}


class DynamicWidth(nn.Module):
    """Make the number of channels of a feature tensor a learnable scalar ``K``.

    Args:
        num_channels: ``N``, the size of the channel axis.
        dim: the channel axis (``-1`` for Linear/GRU outputs, ``1`` for conv).
        kappa_min / kappa_max: bounds on the relative width ``K / N``.
        min_channels / max_channels: absolute bounds on ``K`` (alternative).
        init: initial ``K`` (default: the maximum width).

    ``K`` is ``N * clamp(theta, K_min/N, K_max/N)`` where ``theta`` is an
    unconstrained parameter in relative units (so one learning rate suits
    layers of any size) and the clamp lets gradients back inside the range.
    """

    def __init__(
        self,
        num_channels: int,
        dim: int = -1,
        *,
        kappa_min: Optional[float] = None,
        kappa_max: Optional[float] = None,
        min_channels: Optional[int] = None,
        max_channels: Optional[int] = None,
        init: Optional[float] = None,
    ) -> None:
        super().__init__()
        lo, hi = _resolve_bounds(num_channels, kappa_min, kappa_max, min_channels, max_channels)
        self.num_channels = num_channels
        #: the unit of ``theta`` (``K = full_channels * clamp(theta)``): ``N`` as built. :func:`slimtrain.compact`
        #: cuts ``num_channels`` and keeps it, so ``theta``, its learning rate and optimiser state keep their meaning
        self.full_channels = num_channels
        self.dim = dim
        self.min_width = lo
        self.max_width = hi
        k0 = hi if init is None else float(init)
        if not lo <= k0 <= hi:
            raise WidthError(f"init width {k0:g} outside [{lo:g}, {hi:g}]")
        self.theta = nn.Parameter(torch.tensor(k0 / num_channels, dtype=torch.float32))
        self.register_buffer("_index", torch.arange(num_channels, dtype=torch.float32), persistent=False)
        # set in place by TradeoffLoss during warm-up: the width acts as full (no noise, no gradient)
        self.register_buffer("_hold", torch.zeros((), dtype=torch.bool), persistent=False)
        self.frozen = False
        #: eager CPU runs take :class:`_HostBlendFunction` (same values and gradients, scalar maths in
        #: Python floats); set False to always use the tensor path of accelerators and ``torch.compile``
        self.host_fast_path = True

    # -- width -----------------------------------------------------------------
    @property
    def width(self) -> Tensor:
        """The continuous width ``K`` (a differentiable 0-d tensor)."""
        n, u = self.num_channels, self.full_channels
        k = u * inward_clamp(self.theta, self.min_width / u, self.max_width / u)
        return torch.where(self._hold.clone(), torch.full_like(k, n).detach(), k)  # hold changes in place

    def _hard_width_tensor(self) -> Tensor:
        """``hard_width`` as a 0-d tensor on the parameter's device (no host sync)."""
        n, u = self.num_channels, self.full_channels
        k = self.theta.detach().clamp(self.min_width / u, self.max_width / u) * u
        r = torch.round(k)
        k = torch.where((k - r).abs() < _ROUND_TOL, r, torch.ceil(k))
        return k.clamp(math.ceil(self.min_width - _ROUND_TOL), n)

    @property
    def hard_width(self) -> int:
        """Channels kept in eval mode and at export: ``ceil(K)`` (near-integers round)."""
        return int(self._hard_width_tensor().item())

    @torch.no_grad()
    def set_width(self, k: float) -> None:
        """Set ``K`` (clamped to the bounds)."""
        k = min(max(float(k), self.min_width), self.max_width)
        self.theta.fill_(k / self.full_channels)

    def keep_share(self, width: Optional[Tensor] = None) -> Tensor:
        """``w_i = clamp(K - i, 0, 1)`` for every channel (differentiable in K)."""
        k = self.width if width is None else width
        return (k - self._index.to(k.device)).clamp(0.0, 1.0)

    def soft_mask(self) -> Tensor:
        """``sqrt(lambda_i)``: the signal weight of every channel (training)."""
        return torch.sin(0.5 * math.pi * self.keep_share())

    def hard_mask(self) -> Tensor:
        """1 on the first ``hard_width`` channels, 0 elsewhere (eval)."""
        # clamp(hard_width - i, 0, 1) is exactly 1 below hard_width and 0 from it on (both are integers):
        # float arithmetic, not a comparison, so torch.compile keeps a float mask (a bool mask it fused
        # into the consumers as a per-element conversion, ~12 % of a compiled small-MLP step)
        return (self._hard_width_tensor() - self._index).clamp(0.0, 1.0).to(self.theta.dtype)

    def _cached_hard_mask(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """:meth:`hard_mask` in ``dtype`` on ``device``, recomputed only when ``theta``'s value changed.

        Keyed by the value, not by the tensor's version counter: the fused optimizers update
        parameters without bumping it. Cached only for a CPU ``theta`` outside ``torch.compile``
        (reading it is then a memory read, not a device sync)."""
        th = self.theta
        if th.device.type != "cpu" or torch.compiler.is_compiling():
            return self.hard_mask().to(device=device, dtype=dtype)
        return self._hard_cache(dtype, device)[0]

    def _hard_cache(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
        """``(hard mask in dtype on device, hard width)`` for a CPU ``theta`` outside ``torch.compile``,
        recomputed only when ``theta``'s value (or the channel count, cut by :func:`slimtrain.compact`) changed."""
        th = self.theta
        key = (float(th.detach()), id(th), self.num_channels, dtype, device)
        hit = self.__dict__.get("_hard_mask_cache")
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        m = self.hard_mask().to(device=device, dtype=dtype)
        h = int(self._hard_width_tensor())
        self.__dict__["_hard_mask_cache"] = (key, m, h)
        return m, h

    def _host_hard_width(self, x: Tensor) -> Optional[int]:
        """``hard_width`` when the eval/settled mask of ``x`` can be applied on the host path (eager, CPU,
        :attr:`host_fast_path`), else ``None`` (then the tensor path applies :meth:`hard_mask`)."""
        if not self.host_fast_path or x.device.type != "cpu" or self.theta.device.type != "cpu" \
                or torch.compiler.is_compiling() or not standard_width(self):
            return None
        return self._hard_cache(x.dtype, x.device)[1]

    def passes_whole(self, x: Tensor) -> bool:
        """True when this width leaves ``x`` exactly as it is: eval mode or settled (:attr:`frozen`) at
        ``hard_width == num_channels`` (e.g. right after :func:`slimtrain.compact`), on the host path.
        Layers that apply the width to their weights (GRU, attention) then skip the masking."""
        return (not self.training or self.frozen) and self._host_hard_width(x) == self.num_channels

    def mask(self) -> Tensor:
        """The per-channel weight used by the current mode."""
        return self.soft_mask() if self.training and not self.frozen else self.hard_mask()

    # -- forward ---------------------------------------------------------------
    def _axis(self, x: Tensor, dim: Optional[int] = None) -> int:
        dim = self.dim if dim is None else dim
        if x.dim() == 0:
            raise WidthError("DynamicWidth got a 0-d tensor; it needs a channel axis")
        d = dim if dim >= 0 else x.dim() + dim
        if not 0 <= d < x.dim():
            raise WidthError(f"channel axis dim={dim} does not exist for an input of shape {tuple(x.shape)}")
        if x.shape[d] != self.num_channels:
            raise WidthError(
                f"DynamicWidth expects {self.num_channels} channels on axis {dim}, "
                f"got shape {tuple(x.shape)}"
            )
        return d

    def forward(self, x: Tensor, dim: Optional[int] = None) -> Tensor:
        """Apply the width to ``x`` along ``dim`` (default: the module's ``dim``).

        One DCL can serve several tensors that carry the same channels on
        different axes (a residual stream seen as ``(B, C, T)`` and ``(B, T, C)``).
        """
        d = self._axis(x, dim)
        shape = [1] * x.dim()
        shape[d] = self.num_channels
        n, u = self.num_channels, self.full_channels
        if not self.training or self.frozen:
            h = self._host_hard_width(x)
            if h is None:
                return x * self._cached_hard_mask(x.dtype, x.device).view(shape)
            if h >= n:  # every channel kept: the mask is all ones, x * 1 is x
                return x
            # the hard mask is the step mask of hard_width (1 below it, 0 from it on)
            inner = math.prod(x.shape[d + 1:]) if x.is_contiguous() else 1
            return _times_step(x, _step_mask(self.__dict__.setdefault("_mask_cache", {}), n, h, x.dtype, x.device,
                                             inner), d, n)
        if self.host_fast_path and x.device.type == "cpu" and not torch.compiler.is_compiling():
            cache = self.__dict__.setdefault("_mask_cache", {})
            return _HostBlendFunction.apply(x, self.theta, cache, bool(self._hold), d, self.min_width / u,
                                            self.max_width / u, n, u)
        blend = _BlendFunction if d == x.dim() - 1 else _BlendOneHotFunction
        return blend.apply(x, self.theta, self._index, self._hold, d, self.min_width / u, self.max_width / u, n, u)

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, dim={self.dim}, "
            f"width={float(self.width.detach()):.2f} in [{self.min_width:g}, {self.max_width:g}]"
        )
