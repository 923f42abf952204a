"""Means, Student-t intervals and paired comparisons over seeds (slimtrain.stats)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtrain.train.stats import compare, format_interval, mean_interval, paired_difference, paired_verdict, summarize_rows

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


def test_known_t_interval():
    iv = mean_interval([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.302653
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean_interval([5.0, 7.0], confidence=0.9).half_width == pytest.approx(6.313752, rel=1e-6)


def test_one_value_has_no_interval_and_prints_bare():
    iv = mean_interval([0.25])
    assert iv.mean == 0.25 and math.isnan(iv.lo) and math.isnan(iv.hi) and not iv.excludes(0.0)
    assert format_interval(iv, ".2f") == "0.25"
    assert format_interval(mean_interval([1.0, 2.0, 3.0]), ".2f") == "2.00 ± 2.48"


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), finite, st.floats(min_value=0.1, max_value=10))
def test_interval_contains_the_mean_and_moves_with_shift_and_scale(xs, shift, scale):
    iv = mean_interval(xs)
    assert iv.lo <= iv.mean <= iv.hi
    moved = mean_interval([scale * x + shift for x in xs])
    assert moved.mean == pytest.approx(scale * iv.mean + shift, abs=1e-6)
    assert moved.half_width == pytest.approx(scale * iv.half_width, rel=1e-6, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=2, max_size=10))
def test_a_method_never_beats_itself(xs):
    a = dict(enumerate(xs))
    c = compare(a, a, higher_is_better=True)
    assert not c.significant and c.difference.mean == 0


def test_pairing_finds_a_consistent_difference_that_unpaired_intervals_hide():
    # a large seed effect shared by both methods, and B always 0.01 worse (lower is better)
    seed_effect = [0.0, 0.3, -0.2, 0.5, 0.1]
    a = {s: 1.0 + e for s, e in enumerate(seed_effect)}
    b = {s: 1.01 + e + 0.001 * (s % 2) for s, e in enumerate(seed_effect)}
    ia, ib = mean_interval(list(a.values())), mean_interval(list(b.values()))
    assert ia.hi > ib.lo and ib.hi > ia.lo  # the unpaired intervals overlap
    c = compare(a, b, higher_is_better=False)
    assert c.verdict == "A better than B" and c.difference.hi < 0
    assert compare(b, a, higher_is_better=False).verdict == "B better than A"
    assert paired_verdict(a, b, higher_is_better=False).startswith("better (")
    assert paired_verdict({0: 1.0}, {0: 2.0}, higher_is_better=False) == "n=1"
    noisy = {s: v + (0.05 if s % 2 else -0.05) for s, v in a.items()}
    assert paired_verdict(noisy, b, higher_is_better=False).startswith("n.s. (")


def test_only_common_seeds_are_paired():
    d = paired_difference({0: 1.0, 1: 2.0, 2: 9.0}, {0: 0.5, 1: 1.5, 3: 0.0})
    assert d.n == 2 and d.mean == 0.5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="no common seed"):
        paired_difference({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError, match="repeat a seed"):
        summarize_rows([{"m": "a", "seed": 0, "x": 1.0}, {"m": "a", "seed": 0, "x": 2.0}], ("m",), ("x",))


def test_summarize_rows_groups_by_columns_and_treats_seedless_rows_as_n1():
    rows = [{"m": "a", "seed": s, "x": float(s)} for s in range(3)] + [{"m": "b", "x": 4.0, "seed": None}]
    a, b = summarize_rows(rows, ("m",), ("x", "missing"))
    assert (a["m"], a["n"], a["seeds"], a["x"].mean) == ("a", 3, [0, 1, 2], 1.0)
    assert a["x_by_seed"] == {0: 0.0, 1: 1.0, 2: 2.0} and a["missing"] is None
    assert b["n"] == 1 and math.isnan(b["x"].lo)
