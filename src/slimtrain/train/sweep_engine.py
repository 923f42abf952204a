"""One engine for every sweep: independent jobs with stable keys, run locally or on Ray, resumable.

A sweep is a list of :class:`Job` s. Each job is one row of a results table for one seed; its
``key`` (unique, filename-safe, e.g. ``learned-alpha0.5-seed2``) names the file
``rows_dir/<key>.json`` its row is written to as soon as it finishes. With ``resume=True`` a job
whose row file already holds a finished row (``status`` missing or ``"ok"``, and ``is_done``
agreeing) is not run again, so a killed driver loses at most the jobs in flight -- on both engines.

Engines:

* ``"local"``: ``workers == 1`` runs the jobs in this process; more workers use a
  :class:`concurrent.futures.ProcessPoolExecutor` with the *spawn* start method (forking a process
  that already ran torch is unsafe), shut down (and on error or Ctrl-C its pending jobs cancelled)
  before returning, so no worker or semaphore outlives the sweep.
* ``"ray"``: every job is a Ray task (``ray.remote(num_cpus=job.cpus, num_gpus=job.gpus)``). Without
  ``address`` a local Ray is started with ``num_cpus=workers`` (no dashboard) and shut down at the
  end; with ``address`` (``ray://head:10001`` or ``auto``) the driver joins that cluster and ships
  the ``slimtrain`` package to it. Plain tasks rather than Ray Tune trials: a row is a function call
  that returns a dict, the grid is already explicit, and resuming is by our row files, so Tune's
  trial directories, searchers and reporting would add start-up time and nothing a sweep uses. If
  Ray is already initialised (a test fixture, a notebook), the engine uses that session and leaves
  it running.

The engine adds the provenance columns every row carries: ``torch_version``, ``threads`` (torch
threads the job ran with), ``hostname`` and ``wall_seconds`` (measured where the job ran).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Optional, Sequence

from tqdm.auto import tqdm

__all__ = ["Job", "SweepError", "run_jobs", "ENGINES", "row_path", "seeds_from_args", "read_sweep_rows"]

ENGINES = ("local", "ray")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


class SweepError(RuntimeError):
    """A sweep that cannot run (bad jobs, unknown engine, a job that raised)."""


@dataclass(frozen=True)
class Job:
    """One row of a sweep: ``fn(arg)`` returns the row (a dict); ``key`` names its result file.

    ``fn`` must be a module-level function (it is pickled to worker processes / Ray workers).
    ``threads`` torch threads are set before ``fn`` runs; ``cpus``/``gpus`` are the Ray resources.
    """

    key: str
    fn: Callable[[Any], dict]
    arg: Any = None
    threads: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    meta: dict = field(default_factory=dict, compare=False)


def row_path(rows_dir: str | Path, key: str) -> Path:
    """The file the row of job ``key`` is written to."""
    return Path(rows_dir) / f"{key}.json"


def seeds_from_args(seeds: Optional[int], seed_list: Optional[Sequence[int]], default: int = 0) -> list[int]:
    """The seeds of a sweep: ``seed_list`` as given, else ``0..seeds-1``, else ``[default]``."""
    if seeds is not None and seed_list is not None:
        raise ValueError("give either --seeds or --seed-list, not both")
    if seed_list is not None:
        out = [int(s) for s in seed_list]
        if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
            raise ValueError(f"seed list must be distinct integers >= 0, got {list(seed_list)}")
        return out
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    return [default]


def read_sweep_rows(path: str | Path, missing: str, *, text: Collection[str] = (), ints: Collection[str] = (),
                    none_if_empty: Collection[str] = (), bools: Collection[str] = (), empty_text: Optional[str] = "",
                    keep_unparsed: bool = False) -> list[dict]:
    """The rows of a sweep's ``sweep.csv`` back as typed values, in the file's column order.

    A cell of a ``text`` column stays a string (``empty_text`` when empty); of a ``bools`` column
    ``True``/``False`` (``None`` otherwise); of an ``ints`` column an integer (``None`` when empty);
    any other cell a float, NaN when empty (``None`` for the ``none_if_empty`` columns). A cell that is
    not a number raises ``ValueError`` unless ``keep_unparsed`` (then it stays a string). A missing
    file raises ``ValueError(missing)``, which should say how to make the table."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(missing)
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            r: dict = {}
            for k, v in raw.items():
                if k in text:
                    r[k] = v if v != "" else empty_text
                elif k in bools:
                    r[k] = {"True": True, "False": False}.get(v)
                elif v == "" or v is None:
                    r[k] = None if k in ints or k in none_if_empty else math.nan
                elif k in ints:
                    r[k] = int(float(v))
                else:
                    try:
                        r[k] = float(v)
                    except ValueError:
                        if not keep_unparsed:
                            raise
                        r[k] = v
            rows.append(r)
    return rows


def _execute(fn: Callable[[Any], dict], arg: Any, threads: int) -> dict:
    """Run one job where it is scheduled and add the provenance columns."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    row = dict(fn(arg))
    row.setdefault("torch_version", torch.__version__)
    row.setdefault("threads", threads)
    row.setdefault("hostname", socket.gethostname())
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _save(rows_dir: Optional[Path], key: str, row: dict) -> None:
    if rows_dir is None:
        return
    path = row_path(rows_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, default=str, allow_nan=True))
    os.replace(tmp, path)


def _load_done(rows_dir: Path, job: Job, is_done: Optional[Callable[[Job, dict], bool]]) -> Optional[dict]:
    path = row_path(rows_dir, job.key)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict) or row.get("status", "ok") != "ok":
        return None
    if is_done is not None and not is_done(job, row):
        return None
    return row


def _check(jobs: Sequence[Job], engine: str, workers: int) -> None:
    if engine not in ENGINES:
        raise SweepError(f"unknown sweep engine {engine!r}; use one of {', '.join(ENGINES)}")
    if workers < 1:
        raise SweepError(f"workers must be >= 1, got {workers}")
    seen: set[str] = set()
    for j in jobs:
        if not _KEY.match(j.key):
            raise SweepError(f"sweep job key {j.key!r} is not filename-safe (letters, digits, . _ = + -)")
        if j.key in seen:
            raise SweepError(f"two sweep jobs share the key {j.key!r}")
        seen.add(j.key)


def run_jobs(
    jobs: Sequence[Job],
    rows_dir: Optional[str | Path] = None,
    *,
    engine: str = "local",
    workers: int = 1,
    address: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    desc: str = "sweep",
    is_done: Optional[Callable[[Job, dict], bool]] = None,
    note: Optional[Callable[[dict], str]] = None,
) -> list[dict]:
    """Run ``jobs`` and return their rows in the order of ``jobs``.

    ``rows_dir``: where each finished row is saved (needed for ``resume``). ``is_done(job, row)``
    can veto a saved row (e.g. its checkpoint is missing). ``note(row)`` is shown on the progress
    bar. A job that raises stops the sweep with a :class:`SweepError` naming its key (rows already
    finished stay on disk).
    """
    jobs = list(jobs)
    _check(jobs, engine, workers)
    if address is not None and engine != "ray":
        raise SweepError("--address applies to --engine ray only")
    rdir = Path(rows_dir) if rows_dir is not None else None
    if resume and rdir is None:
        raise SweepError("resume needs a rows directory (an output folder)")
    rows: list[Optional[dict]] = [None] * len(jobs)
    if resume:
        for i, j in enumerate(jobs):
            rows[i] = _load_done(rdir, j, is_done)  # type: ignore[arg-type]
    todo = [i for i, r in enumerate(rows) if r is None]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run", disable=not progress)

    def done(i: int, row: dict) -> None:
        _save(rdir, jobs[i].key, row)
        rows[i] = row
        if note is not None:
            bar.set_postfix_str(note(row))
        bar.update()

    try:
        if not todo:
            pass
        elif engine == "ray":
            _run_ray(jobs, todo, done, workers, address)
        elif workers == 1 or len(todo) == 1:
            for i in todo:
                done(i, _call(jobs[i]))
        else:
            _run_pool(jobs, todo, done, workers)
    finally:
        bar.close()
    return [r for r in rows if r is not None]


def _call(job: Job) -> dict:
    try:
        return _execute(job.fn, job.arg, job.threads)
    except Exception as e:  # noqa: BLE001 - re-raised with the job's key
        raise SweepError(f"sweep job {job.key} failed: {type(e).__name__}: {e}") from e


def _run_pool(jobs: Sequence[Job], todo: list[int], done: Callable[[int, dict], None], workers: int) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=mp.get_context("spawn"))
    try:
        pending = {pool.submit(_execute, jobs[i].fn, jobs[i].arg, jobs[i].threads): i for i in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                try:
                    row = fut.result()
                except Exception as e:  # noqa: BLE001 - re-raised with the job's key
                    raise SweepError(f"sweep job {jobs[i].key} failed: {type(e).__name__}: {e}") from e
                done(i, row)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(jobs: Sequence[Job], todo: list[int], done: Callable[[int, dict], None], workers: int,
             address: Optional[str]) -> None:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is in the dev extra
        raise SweepError("--engine ray needs Ray: pip install 'slimtrain[ray]'") from e
    started = False
    if not ray.is_initialized():
        if address is None:
            # local workers inherit this process's environment (PYTHONPATH included)
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the slimtrain package folder
            ray.init(address=address, runtime_env={"py_modules": [package]})
        started = True
    try:
        task = ray.remote(max_retries=0)(_execute)
        refs = {}
        for i in todo:
            j = jobs[i]
            refs[task.options(num_cpus=j.cpus, num_gpus=j.gpus).remote(j.fn, j.arg, j.threads)] = i
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - re-raised with the job's key
                    for r in refs:
                        ray.cancel(r, force=True)
                    raise SweepError(f"sweep job {jobs[i].key} failed on Ray: {type(e).__name__}: {e}") from e
                done(i, row)
    finally:
        if started:
            ray.shutdown()
