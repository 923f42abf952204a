"""The shared sweep engine: keys, per-row files and --resume, errors, the spawn pool's clean shutdown,
and the Ray engine giving the same rows as the local one."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimtrain.train.sweep_engine import Job, SweepError, row_path, run_jobs, seeds_from_args
from slimtrain.tasks import synthetic as syn

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = syn.SyntheticConfig.quick(epochs=2, n_train=256, n_val=64, n_test=256, batch_size=32)
#: columns that measure the machine, not the result
TIMING = {"seconds", "wall_seconds", "hostname"}


def _square(arg: dict) -> dict:
    """A job that records each call in ``arg['log']`` (so a test can count calls)."""
    with open(arg["log"], "a") as f:
        f.write(f"{arg['x']}\n")
    if arg["x"] < 0:
        raise ValueError(f"negative input {arg['x']}")
    return {"x": arg["x"], "y": arg["x"] ** 2}


def _jobs(tmp_path: Path, xs) -> list[Job]:
    return [Job(f"x{x}", _square, {"x": x, "log": str(tmp_path / "calls.log")}) for x in xs]


def _calls(tmp_path: Path) -> list[int]:
    log = tmp_path / "calls.log"
    return [int(v) for v in log.read_text().split()] if log.exists() else []


def test_rows_come_back_in_job_order_with_provenance_and_one_file_each(tmp_path):
    import torch

    rows = run_jobs(_jobs(tmp_path, [3, 1, 2]), tmp_path / "rows", progress=False)
    assert [r["y"] for r in rows] == [9, 1, 4]
    assert all(r["threads"] == 1 and r["torch_version"] == torch.__version__ and r["wall_seconds"] >= 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == ["x1.json", "x2.json", "x3.json"]
    assert json.loads(row_path(tmp_path / "rows", "x3").read_text())["y"] == 9


def test_resume_runs_only_missing_or_failed_rows(tmp_path):
    rows_dir = tmp_path / "rows"
    run_jobs(_jobs(tmp_path, [1, 2, 3]), rows_dir, progress=False)
    row_path(rows_dir, "x2").unlink()  # killed before this row finished
    row_path(rows_dir, "x3").write_text(json.dumps({"status": "failed: boom"}))  # failed row: run again
    rows = run_jobs(_jobs(tmp_path, [1, 2, 3, 4]), rows_dir, resume=True, progress=False)
    assert [r["y"] for r in rows] == [1, 4, 9, 16]
    assert _calls(tmp_path) == [1, 2, 3, 2, 3, 4]
    # a veto (e.g. a missing checkpoint) reruns a saved row too
    run_jobs(_jobs(tmp_path, [1]), rows_dir, resume=True, progress=False, is_done=lambda job, row: False)
    assert _calls(tmp_path)[-1] == 1


def test_bad_jobs_and_a_failing_job_give_named_errors(tmp_path):
    with pytest.raises(SweepError, match="share the key 'x1'"):
        run_jobs(_jobs(tmp_path, [1, 1]), progress=False)
    with pytest.raises(SweepError, match="not filename-safe"):
        run_jobs([Job("a/b", _square, {})], progress=False)
    with pytest.raises(SweepError, match="unknown sweep engine 'dask'"):
        run_jobs(_jobs(tmp_path, [1]), engine="dask", progress=False)
    with pytest.raises(SweepError, match="resume needs a rows directory"):
        run_jobs(_jobs(tmp_path, [1]), resume=True, progress=False)
    with pytest.raises(SweepError, match="--address applies to --engine ray"):
        run_jobs(_jobs(tmp_path, [1]), address="ray://head:10001", progress=False)
    with pytest.raises(SweepError, match=r"sweep job x-5 failed: ValueError: negative input -5"):
        run_jobs(_jobs(tmp_path, [2, -5, 7]), tmp_path / "rows", progress=False)
    assert row_path(tmp_path / "rows", "x2").is_file()  # what finished before stays on disk


def test_seed_arguments():
    assert seeds_from_args(3, None) == [0, 1, 2]
    assert seeds_from_args(None, [4, 2]) == [4, 2]
    assert seeds_from_args(None, None, default=7) == [7]
    with pytest.raises(ValueError, match="either --seeds or --seed-list"):
        seeds_from_args(2, [1])
    with pytest.raises(ValueError, match="distinct"):
        seeds_from_args(None, [1, 1])


def test_two_worker_sweep_exits_without_leaked_semaphores(tmp_path):
    """The spawn pool is shut down properly: no 'leaked semaphore' warning from the resource tracker."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONWARNINGS="always")
    cmd = [sys.executable, "-m", "slimtrain", "synthetic", "--sweep", "--quick", "--epochs", "1", "--alphas", "0",
           "--baselines", "2", "--workers", "2", "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "leaked semaphore" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [("learned", "0"), ("fixed", "0")]


# -- Ray ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (ray.init takes seconds); the engine reuses it and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _table(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(path.open())]


def test_ray_engine_gives_the_local_rows_and_resumes(ray_session, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    syn.run_sweep(TINY, (0.0, 4.0), (), local, seeds=[0, 1], workers=1, progress=False)
    syn.run_sweep(TINY, (0.0, 4.0), (), remote, seeds=[0, 1], engine="ray", workers=2, progress=False)
    assert ray_session.is_initialized()  # a session the engine did not start is left running
    a, b = _table(local / "sweep.csv"), _table(remote / "sweep.csv")
    assert len(a) == 4 and [(r["alpha"], r["seed"]) for r in a] == [("0.0", "0"), ("0.0", "1"), ("4.0", "0"),
                                                                    ("4.0", "1")]
    assert a == b
    # resume on Ray: only the row whose file is gone runs again
    stamps = {p.name: p.stat().st_mtime_ns for p in (remote / "rows").iterdir()}
    row_path(remote / "rows", "learned-alpha4-seed1").unlink()
    syn.run_sweep(TINY, (0.0, 4.0), (), remote, seeds=[0, 1], engine="ray", workers=2, progress=False, resume=True)
    after = {p.name: p.stat().st_mtime_ns for p in (remote / "rows").iterdir()}
    assert after.keys() == stamps.keys()
    assert [n for n in stamps if after[n] != stamps[n]] == ["learned-alpha4-seed1.json"]
    assert _table(remote / "sweep.csv") == a
