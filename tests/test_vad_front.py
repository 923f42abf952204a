"""DCL against the fixed-width / pruning / gates fronts of the VAD sweep, paired over seeds."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimtrain.tasks.vad.sweep import _front_value, format_front_table, front_comparison, front_sentences


def test_front_value_interpolates_in_log_flops_and_skips_dominated_points():
    pts = [(1.0, 0.90), (4.0, 0.96), (2.0, 0.80)]  # (2, 0.80) is dominated by the cheaper (1, 0.90)
    assert _front_value(pts, 2.0, True) == pytest.approx(0.93)  # halfway in log between 1 and 4
    assert _front_value(pts, 1.0, True) == pytest.approx(0.90)
    assert _front_value(pts, 8.0, True) == pytest.approx(0.96)  # a dearer budget can use the dearest model
    assert _front_value(pts, 0.5, True) is None  # cheaper than every model: no extrapolation
    # lower is better (EER): the front keeps the points with a lower value than every cheaper one
    assert _front_value([(1.0, 0.20), (2.0, 0.25), (4.0, 0.10)], 2.0, False) == pytest.approx(0.15)


@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(0, 1)), min_size=1, max_size=8), st.floats(0.1, 200))
def test_front_value_lies_between_the_front_points_around_it(pts, x):
    v = _front_value(pts, x, True)
    cheaper = [y for fx, y in pts if fx <= x]
    if x < min(fx for fx, _ in pts) * (1 - 1e-4):
        assert v is None
        return
    assert v is not None
    # never below the best model it could afford, never above the best model at all
    if cheaper:
        assert v >= max(cheaper) - 1e-9
    assert v <= max(y for _, y in pts) + 1e-9


def _rows(dcl_auc, fixed_offsets, prune_offset, dcl_flops=1.0):
    rows = []
    for seed, a in enumerate(dcl_auc):
        rows.append({"family": "crnn", "method": "DCL", "label": "DCRNNVAD 0.5", "status": "ok", "seed": seed,
                     "kappa_min": 0.5, "mflops_per_s": dcl_flops, "auc": a, "eer": 1 - a})
        for fx, fy in ((0.5, 0.90), (2.0, 0.96)):
            y = fy + fixed_offsets[seed]
            rows.append({"family": "crnn", "method": "fixed", "label": f"CRNNVAD x{fx}", "status": "ok", "seed": seed,
                         "kappa_min": None, "mflops_per_s": fx, "auc": y, "eer": 1 - y})
        y = a - prune_offset[seed]
        rows.append({"family": "crnn", "method": "prune", "label": "PCRNNVAD @DCRNNVAD 0.5", "status": "ok",
                     "seed": seed, "kappa_min": None, "mflops_per_s": dcl_flops, "auc": y, "eer": 1 - y})
    return rows


def test_front_comparison_is_paired_by_seed_and_names_significance():
    # DCL 0.95 at 1 MFLOP/s; the fixed front there is 0.93 (+ a seed offset shared by both): DCL above it,
    # and the large seed-to-seed spread cancels in the paired difference
    rows = _rows([0.95, 0.99, 0.91], [0.0, 0.04, -0.04], [0.001, -0.002, 0.0005])
    (e,) = front_comparison(rows, "crnn", "auc")
    assert e["fixed"].verdict == "A better than B" and e["fixed"].difference.mean == pytest.approx(0.02)
    assert e["prune"].verdict == "no significant difference" and e["prune_n"] == 3
    assert e["gates"] is None
    (f,) = front_comparison(rows, "crnn", "eer")  # lower is better: DCL's lower EER is still "better"
    assert f["fixed"].verdict == "A better than B" and f["fixed"].difference.mean == pytest.approx(-0.02)
    table = format_front_table(rows, "crnn")
    assert "| DCRNNVAD 0.5 | 3 | 1.00 | 0.950 ± " in table and "| above (+0.020 [+0.020, +0.020]) |" in table
    assert "| n.s. (" in table and "| - |" in table
    text = front_sentences(rows, "crnn")
    assert ("AUC against the fixed-width front (interpolated at the DCL model's FLOPs): of 1 DCL models, "
            "1 significantly better (DCRNNVAD 0.5)") in text
    assert "AUC against torch-pruning to the same MACs: of 1 DCL models, 0 significantly better, 1 not" in text


def test_one_seed_gives_no_verdict_and_cheap_dcl_has_no_front():
    one = _rows([0.95], [0.0], [0.01])
    assert "n=1 (+0.020)" in format_front_table(one, "crnn") and front_sentences(one, "crnn") == ""
    cheap = _rows([0.8, 0.81], [0.0, 0.0], [0.0, 0.0], dcl_flops=0.1)
    (e,) = front_comparison(cheap, "crnn")
    assert e["fixed"] is None and e["fixed_n"] == 0 and not math.isnan(e["mflops_per_s"].mean)


def test_pareto_plot_takes_seeds_with_equal_flops(tmp_path):
    # three seeds at the same FLOPs (a gates row that always exports the same widths): their mean rounds one
    # ulp above their range (0.1 * 3 / 3 > 0.1), which matplotlib refused as a negative error bar
    from slimtrain.tasks.vad.sweep import plot_pareto

    rows = [{"family": "transformer", "method": "gates", "label": "STrVAD [0.0625, 0.125)", "status": "ok",
             "seed": seed, "mflops_per_s": 0.1, "auc": 0.80 + 0.01 * seed, "f1": 0.79 + 0.01 * seed}
            for seed in range(3)]
    rows += [{"family": "transformer", "method": "fixed", "label": "TrVAD x0.5", "status": "ok", "seed": seed,
              "mflops_per_s": 0.3, "auc": 0.95, "f1": 0.9} for seed in range(3)]
    png = plot_pareto(rows, tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
