"""The skeleton's sweep phases (slimtrain.tasks.study.sweep.Phase / run_phases): a second phase made from the first's
rows, resume keeping finished rows, a study's failed rows, and the anti-spoofing sweep's keys on them."""
from __future__ import annotations

import json
import math

from slimtrain.tasks.study.sweep import Phase, run_phases
from slimtrain.train.sweep_engine import Job

CALLS: list[str] = []


def _grid(arg: dict) -> dict:
    """A first-phase row: its 'cost' is 10 x its value (as a DCL row's MACs come out of training)."""
    CALLS.append(f"grid{arg['v']}")
    if arg.get("fail"):
        return {"method": "failed", "status": "failed", "error": f"run {arg['v']} failed"}
    return {"method": "grid", "v": arg["v"], "cost": 10.0 * arg["v"]}


def _derived(arg: dict) -> dict:
    """A second-phase row: it runs at the cost a first-phase row reached."""
    CALLS.append(f"derived{arg['target']:g}")
    return {"method": "derived", "target": arg["target"], "cost": arg["target"] - 1.0}


def _phases(values, fail=(), seen=None):
    def first(rows):
        assert rows == []
        return [Job(f"grid-v{v}", _grid, {"v": v, "fail": v in fail}) for v in values]

    def second(rows):
        return [Job(f"derived-t{r['cost']:g}", _derived, {"target": r["cost"]}) for r in rows if r["method"] == "grid"]

    def after(rows):
        if seen is not None:
            seen.append([r["method"] for r in rows])

    return [Phase("grid", first, after=after), Phase("derived", second)]


def _failed(r: dict):
    return r["error"] if r.get("method") == "failed" else None


def test_second_phase_rows_come_from_the_first_phase_rows(tmp_path):
    CALLS.clear()
    seen: list = []
    rows = run_phases(_phases([1, 2, 3], seen=seen), tmp_path / "rows", progress=False)
    assert [(r["method"], r["cost"]) for r in rows] == [("grid", 10.0), ("grid", 20.0), ("grid", 30.0),
                                                      ("derived", 9.0), ("derived", 19.0), ("derived", 29.0)]
    assert [r["target"] for r in rows[3:]] == [10.0, 20.0, 30.0]
    assert seen == [["grid"] * 3]  # the after-hook ran once the first phase was done, before the second
    assert CALLS == ["grid1", "grid2", "grid3", "derived10", "derived20", "derived30"]
    assert sorted(p.name for p in (tmp_path / "rows").glob("*.json")) == sorted(
        ["grid-v1.json", "grid-v2.json", "grid-v3.json", "derived-t10.json", "derived-t20.json", "derived-t30.json"])
    assert all(r["threads"] == 1 and r["wall_seconds"] >= 0 for r in rows)  # the engine's provenance columns


def test_resume_keeps_finished_rows_and_remakes_the_second_phase_from_them(tmp_path):
    CALLS.clear()
    first = run_phases(_phases([1, 2]), tmp_path / "rows", progress=False)
    (tmp_path / "rows" / "grid-v2.json").unlink()  # a run killed before it finished
    saved = (tmp_path / "rows" / "derived-t10.json").read_text()
    CALLS.clear()
    again = run_phases(_phases([1, 2]), tmp_path / "rows", progress=False, resume=True)
    assert CALLS == ["grid2"]  # only the missing run; both second-phase rows were saved and found
    assert (tmp_path / "rows" / "derived-t10.json").read_text() == saved
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in first]
    assert [{k: v for k, v in r.items() if k != "wall_seconds"} for r in again] == strip
    CALLS.clear()
    run_phases(_phases([1, 2, 4]), tmp_path / "rows", progress=False, resume=True)  # a grown grid: the new rows only
    assert CALLS == ["grid4", "derived40"]


def test_a_failed_row_is_named_left_out_and_run_again_on_resume(tmp_path, capsys):
    CALLS.clear()
    rows = run_phases(_phases([1, 2], fail={2}), tmp_path / "rows", progress=False, failed=_failed)
    assert "slimtrain: warning: run 2 failed" in capsys.readouterr().out
    assert [r["method"] for r in rows] == ["grid", "derived"]  # no second-phase row for the failed one
    assert json.loads((tmp_path / "rows" / "grid-v2.json").read_text())["status"] == "failed"
    CALLS.clear()
    rows = run_phases(_phases([1, 2]), tmp_path / "rows", progress=False, failed=_failed, resume=True)
    assert CALLS == ["grid2", "derived20"]
    assert [r["cost"] for r in rows] == [10.0, 20.0, 9.0, 19.0]


def test_phases_without_a_rows_folder_run_and_keep_nothing(tmp_path):
    rows = run_phases(_phases([5]), None, progress=False)
    assert [r["cost"] for r in rows] == [50.0, 49.0]
    assert not any(tmp_path.iterdir())


def test_spoof_job_keys_are_those_its_saved_rows_carry():
    """The anti-spoofing sweep's keys (``--resume`` finds rows saved under them by earlier versions)."""
    from slimtrain.tasks.spoof.sweep import _key
    from slimtrain.tasks.spoof.train import SpoofConfig

    c = SpoofConfig(seed=3)
    assert _key(("dcl", c, "d", (), (0, 1, 2, 3), 0.25, 1.0, None, "cpu", "floor")) == \
        "dcl-stages0123-kappa0.25-floor-seed3"
    assert _key(("dcl", c, "d", (), (2,), 0.0625, 1.0, None, "cpu", "alpha")) == "dcl-stages2-kappa0.0625-seed3"
    assert _key(("fixed", c, "d", (), 8, math.nan, math.nan, None, "cpu")) == "fixed-w8-seed3"
    assert _key(("pruned", c, "d", (), 6313476.4, 0.25, math.nan, None)) == "pruned-kappa0.25-macs6313476-seed3"
