"""Means, 95 % intervals over seeds and paired comparisons for multi-seed sweeps.

Every sweep row is repeated for seeds ``0..N-1``; a result is the mean over seeds with a
two-sided Student-t confidence interval ``mean +- t_{0.975, n-1} * s / sqrt(n)`` (``s``: sample
standard deviation). The t interval is exact for normally distributed run-to-run noise and is
the usual choice for the small ``n`` (3-10 seeds) a sweep can afford; with ``n = 1`` there is no
interval (``lo``/``hi`` are NaN and tables print ``n=1``), never an invented one.

Two methods are compared on the *paired* differences ``a_seed - b_seed`` over the seeds both
have (the same seed means the same data, teacher and initialisation stream, so the pairing removes
the seed-to-seed variation they share): ``A`` is called better than ``B`` only when the t interval
of the mean difference excludes 0 (equivalently a two-sided paired t-test at the 5 % level).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["Interval", "Comparison", "mean_interval", "paired_difference", "compare", "summarize_rows",
           "format_interval", "paired_verdict", "CONFIDENCE"]

#: the confidence level of every interval in the tables and plots
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """``mean`` of ``n`` values with its confidence interval ``[lo, hi]`` (NaN when ``n < 2``)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2`` (NaN without an interval)."""
        return (self.hi - self.lo) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether the interval exists and does not contain ``value``."""
        return self.n >= 2 and not math.isnan(self.lo) and (value < self.lo or value > self.hi)


@dataclass(frozen=True)
class Comparison:
    """The paired difference ``A - B`` and the verdict drawn from it."""

    difference: Interval
    verdict: str  # "A better than B", "B better than A" or "no significant difference"

    @property
    def significant(self) -> bool:
        return self.verdict != "no significant difference"


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and two-sided Student-t ``confidence`` interval of ``values`` (one per seed).

    Raises ``ValueError`` for no values, a non-finite value or a confidence outside (0, 1).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval: no values (a row with no finished seed?)")
    if any(not math.isfinite(v) for v in xs):
        raise ValueError(f"mean_interval: values must be finite, got {xs}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_interval: confidence must be in (0, 1), got {confidence!r}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    var = math.fsum((v - mean) ** 2 for v in xs) / (n - 1)
    half = _t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Interval:
    """Interval of the mean of ``a[seed] - b[seed]`` over the seeds present in both."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"paired_difference: no common seed (A has {sorted(a)}, B has {sorted(b)})")
    return mean_interval([a[s] - b[s] for s in seeds], confidence)


def compare(a: Mapping[int, float], b: Mapping[int, float], *, higher_is_better: bool,
            confidence: float = CONFIDENCE) -> Comparison:
    """Paired comparison of a metric of methods A and B, each given as ``{seed: value}``.

    "A better than B" only when the interval of the mean paired difference excludes 0.
    """
    d = paired_difference(a, b, confidence)
    if not d.excludes(0.0):
        return Comparison(d, "no significant difference")
    a_higher = d.lo > 0
    return Comparison(d, "A better than B" if a_higher == higher_is_better else "B better than A")


def summarize_rows(rows: Sequence[Mapping], by: Sequence[str], metrics: Sequence[str],
                   seed_key: str = "seed") -> list[dict]:
    """Group per-seed ``rows`` by the columns ``by`` (first-seen order) and summarise ``metrics``.

    Each entry holds the ``by`` values, ``n`` (rows in the group), ``seeds`` and per metric an
    :class:`Interval` under the metric's name and ``{seed: value}`` under ``<metric>_by_seed``
    (metric values that are missing or NaN are left out of that metric). Rows without a seed
    (tables written before seeds were recorded) count as seed 0, one per group: ``n = 1``.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, grp in groups.items():
        seeds = [r.get(seed_key) if r.get(seed_key) is not None else 0 for r in grp]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"summarize_rows: rows {dict(zip(by, key))} repeat a seed ({seeds}); "
                             "group by more columns")
        entry: dict = dict(zip(by, key))
        entry.update(n=len(grp), seeds=seeds)
        for m in metrics:
            vals = {s: float(r[m]) for s, r in zip(seeds, grp)
                    if r.get(m) is not None and r.get(m) != "" and math.isfinite(float(r[m]))}
            entry[f"{m}_by_seed"] = vals
            entry[m] = mean_interval(list(vals.values())) if vals else None
        out.append(entry)
    return out


def format_interval(iv: Interval | None, fmt: str = ".4f", scale: float = 1.0) -> str:
    """``mean ± half-width`` of ``iv`` (times ``scale``), the bare mean for ``n = 1`` or a zero
    width, ``-`` for no value."""
    if iv is None:
        return "-"
    mean = format(iv.mean * scale, fmt)
    if iv.n < 2 or math.isnan(iv.lo) or iv.half_width == 0:
        return mean
    return f"{mean} ± {format(iv.half_width * scale, fmt)}"


def paired_verdict(a: Mapping[int, float], b: Mapping[int, float], *, higher_is_better: bool,
                   fmt: str = "+.4f", scale: float = 1.0) -> str:
    """A table cell for the paired comparison of A with B: ``better``/``worse`` (the 95 % interval
    of the same-seed difference excludes 0), ``n.s.``, or ``n=1`` with fewer than 2 common seeds."""
    common = set(a) & set(b)
    if len(common) < 2:
        return "n=1"
    c = compare(a, b, higher_is_better=higher_is_better)
    d = c.difference
    tag = {"A better than B": "better", "B better than A": "worse"}.get(c.verdict, "n.s.")
    return (f"{tag} ({format(d.mean * scale, fmt)} [{format(d.lo * scale, fmt)}, "
            f"{format(d.hi * scale, fmt)}])")
