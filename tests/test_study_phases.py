"""The skeleton's sweep phases (slimtrain.tasks.study.sweep.Phase / run_phases): a second phase made from the first's
rows, resume keeping finished rows, a study's failed rows, and the anti-spoofing sweep's keys on them."""
from __future__ import annotations

import csv
import json
import math

import pytest

from slimtrain.tasks.study.sweep import Phase, run_phases
from slimtrain.train.sweep_engine import Job

from _spoof_fixtures import spoof_data  # noqa: F401  (fixture)

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
    # rows trained with --settle-at-budget are kept apart from the floor rows saved before it
    s = SpoofConfig(seed=3, settle_at_budget=True)
    assert _key(("dcl", s, "d", (), (0, 1, 2, 3), 0.25, 1.0, None, "cpu", "floor")) == \
        "dcl-stages0123-kappa0.25-floor-settled-seed3"


# -- the VAD sweep's second phase (pruning at the MACs its DCL rows reached), with a stand-in for training ----------
VAD_CALLS: list[tuple] = []


def _vad_row(job: dict) -> dict:
    """A stand-in for one VAD run: DCL rows reach 1 + seed + kappa_min MFLOP/s; the checkpoint is written."""
    from pathlib import Path

    from slimtrain.tasks.vad.train import SNR_BANDS

    run, kind = job["run"], job["kind"]
    VAD_CALLS.append((kind, run["seed"]))
    mflops = {"DCL": lambda: 1.0 + run["seed"] + run.get("kappa_min", 0), "fixed": lambda: 10.0,
              "prune": lambda: job["target_mflops"]}[kind]()
    if job.get("checkpoint"):
        Path(job["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["checkpoint"]).write_bytes(b"x")
    return {"family": run["family"], "method": kind, "label": job["label"], "status": "ok", "seed": run["seed"],
            "kappa_min": run.get("kappa_min"), "alpha": run.get("alpha"), "budget": run.get("budget"),
            "mel_bands": 10, "mflops_per_s": mflops, "params": 100, "auc": 0.9, "f1": 0.8, "eer": 0.1,
            "epochs": run["epochs"], "checkpoint": job.get("checkpoint"),
            **{f"eer {b}": 0.1 for b, _, _ in SNR_BANDS}}


def test_vad_pruning_rows_target_the_same_seeds_dcl_cost_and_resume_keeps_them(tmp_path, monkeypatch):
    import slimtrain.tasks.vad.sweep as vs

    def fake_build(data_cfg, cache, progress=True):
        from pathlib import Path
        Path(cache).mkdir(parents=True, exist_ok=True)
        (Path(cache) / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 16}))

    monkeypatch.setattr(vs, "build_vad_data", fake_build)
    monkeypatch.setattr(vs, "_job", _vad_row)
    cfg = vs.VadSweepConfig.quick(families=("crnn",), kappas=(0.25,), prune_kappas=(0.25,), gate_intervals=(),
                                  fixed_scales=(1.0,), anchors=False, seeds=(0, 1))
    VAD_CALLS.clear()
    rows = vs.run_sweep(cfg, tmp_path, progress=False)
    assert VAD_CALLS == [("DCL", 0), ("fixed", 0), ("DCL", 1), ("fixed", 1), ("prune", 0), ("prune", 1)]
    prune = [r for r in rows if r["method"] == "prune"]
    assert [(r["seed"], r["mflops_per_s"], r["label"]) for r in prune] == [
        (0, 1.25, "PCRNNVAD @DCRNNVAD 0.25"), (1, 2.25, "PCRNNVAD @DCRNNVAD 0.25")]
    assert [r["epochs"] for r in prune] == [1, 1]  # the fine-tuning share of the 3 epochs; the rest pre-trains
    keys = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "rows").glob("*.json"))
    assert keys == ["DCL-crnn-DCRNNVAD_0.25-seed0", "DCL-crnn-DCRNNVAD_0.25-seed1", "fixed-crnn-CRNNVAD_baseline-seed0",
                    "fixed-crnn-CRNNVAD_baseline-seed1", "prune-crnn-PCRNNVAD_DCRNNVAD_0.25-seed0",
                    "prune-crnn-PCRNNVAD_DCRNNVAD_0.25-seed1"]
    table = (tmp_path / "sweep.csv").read_text()
    VAD_CALLS.clear()
    assert vs.run_sweep(cfg, tmp_path, progress=False, resume=True) and VAD_CALLS == []
    assert (tmp_path / "sweep.csv").read_text() == table
    (tmp_path / "checkpoints" / "crnn_dcl_k0.25_spread_e3_seed1.pt").unlink()  # a saved row without its checkpoint
    VAD_CALLS.clear()
    vs.run_sweep(cfg, tmp_path, progress=False, resume=True)
    assert VAD_CALLS == [("DCL", 1)]  # run again; its pruning row (same target) is still found


# -- the anti-spoofing sweep's second phase, trained for real (seconds) ---------------------------------------------
def _no_training(job):
    raise AssertionError(f"{job[0]} ran again on resume")


def test_spoof_pruning_phase_targets_the_dcl_macs_and_resume_runs_nothing(tmp_path, spoof_data, monkeypatch):  # noqa: F811
    import slimtrain.tasks.spoof.sweep as sp
    from slimtrain.tasks.spoof.train import SpoofConfig

    if not sp.pruning_available():
        pytest.skip("torch-pruning is not installed")
    cfg = SpoofConfig.quick(epochs=1, warmup_epochs=0)
    kw = dict(stage_sets=sp.QUICK_STAGE_SETS, kappas=(0.25,), fixed_widths=(cfg.width,), progress=False)
    rows = sp.run_sweep(spoof_data[0], cfg, tmp_path, **kw)
    assert [r["method"] for r in rows] == ["fixed", "dcl", "pruned"]
    dcl, pruned = rows[1], rows[2]
    assert pruned["target_macs"] == dcl["macs"] and pruned["pruned_at_kappa"] == 0.25
    assert (tmp_path / "rows" / f"pruned-kappa0.25-macs{dcl['macs']:.0f}-seed{cfg.seed}.json").is_file()
    table = (tmp_path / "sweep.csv").read_text()
    monkeypatch.setattr(sp, "_job", _no_training)
    again = sp.run_sweep(spoof_data[0], cfg, tmp_path, resume=True, **kw)
    assert [r["macs"] for r in again] == [r["macs"] for r in rows]
    assert (tmp_path / "sweep.csv").read_text() == table


# -- the skeleton's own sweep with a study's extra row kind after the grid -----------------------------------------
def _half_cost(arg: dict) -> dict:
    """An extra row kind: 'a model at half the cost the DCL row reached' (a stand-in, no training)."""
    return {"row_id": f"half of {arg['of']}", "method": "half", "seed": arg["seed"], "flops": arg["flops"] / 2,
            "macs": arg["flops"] / 4, "params": 1, "accuracy": 0.5, "macro_f1": 0.5}


def test_skeleton_sweep_runs_an_extra_phase_made_from_its_dcl_rows(tmp_path):
    from slimtrain.tasks import kws
    from slimtrain.tasks.study import sweep as study_sweep

    cfg = kws.KwsConfig.quick(train_per_class=8, test_per_class=4, n_keywords=3, epochs=1, batch_size=8, width=6,
                              n_mels=8)

    def halves(rows):
        return [Job(f"half-{r['row_id'].replace(' ', '_')}-seed{r['seed']}", _half_cost,
                    {"of": r["row_id"], "seed": r["seed"], "flops": r["flops"]}) for r in rows if r["method"] == "dcl"]

    kw = dict(alphas=[1.0], kappas=[0.5], seeds=[0, 1], progress=False, extra=[Phase("halves", halves)])
    rows = study_sweep.run_sweep(kws.STUDY, cfg, tmp_path, **kw)
    dcl = [r for r in rows if r["method"] == "dcl"]
    half = [r for r in rows if r["method"] == "half"]
    assert [r["flops"] for r in half] == [r["flops"] / 2 for r in dcl] and [r["seed"] for r in half] == [0, 1]
    assert (tmp_path / "rows" / "half-dcl_kappa=0.5_alpha=1-seed1.json").is_file()
    with (tmp_path / "sweep_summary.csv").open() as f:
        summary = {r["row_id"]: r for r in csv.DictReader(f)}
    assert summary["half of dcl kappa=0.5 alpha=1"]["n"] == "2"
    assert float(summary["half of dcl kappa=0.5 alpha=1"]["flops_mean"]) == pytest.approx(
        sum(r["flops"] for r in dcl) / 4, rel=1e-5)
    again = study_sweep.run_sweep(kws.STUDY, cfg, tmp_path, resume=True, **kw)
    assert [r["wall_seconds"] for r in again] == [r["wall_seconds"] for r in rows]  # nothing ran again


def test_a_vad_job_that_fails_becomes_a_named_row_that_resume_runs_again():
    from slimtrain.tasks.vad.sweep import _job

    row = _job({"kind": "DCL", "label": "DCRNNVAD 0.25", "run": {"family": "crnn", "seed": 4},
                "corpus": {"no_such_setting": 1}, "data_fingerprint": "abc"})
    assert row["status"].startswith("failed: KeyError: 'noise_snr_db'")  # not "ok": --resume runs it again
    assert (row["family"], row["method"], row["label"], row["seed"], row["data_fingerprint"]) == (
        "crnn", "DCL", "DCRNNVAD 0.25", 4, "abc")


def test_a_job_key_two_phases_share_is_named(tmp_path):
    from slimtrain.train.sweep_engine import SweepError

    phases = [Phase("grid", lambda rows: [Job("grid-v1", _grid, {"v": 1})]),
              Phase("again", lambda rows: [Job("grid-v1", _grid, {"v": 2})])]
    with pytest.raises(SweepError, match="phase 'again' has a job key of phase 'grid': 'grid-v1'"):
        run_phases(phases, tmp_path / "rows", progress=False)
    assert json.loads((tmp_path / "rows" / "grid-v1.json").read_text())["v"] == 1  # the first row is kept
