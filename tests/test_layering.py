"""The core never imports the case studies; tasks register themselves."""
from __future__ import annotations

import subprocess
import sys


def test_core_and_cli_import_no_task_module():
    code = ("import sys, slimtrain, slimtrain.train.checkpoint, slimtrain.core.export, slimtrain.core.cost, slimtrain.cli\n"
            "bad = sorted(m for m in sys.modules if m.startswith('slimtrain.tasks'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_from_recipe_of_an_unregistered_task_names_the_fix():
    import pytest

    from slimtrain.train.checkpoint import CheckpointError, build_from_recipe

    with pytest.raises(CheckpointError, match="no builder registered for task 'nope'.*register_task"):
        build_from_recipe({"task": "nope", "kwargs": {}, "sample_shape": [1, 2], "dynamic": {}})


def test_cli_lists_the_task_commands():
    from slimtrain.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"synthetic", "export", "plan", "vad", "spoof"} <= set(sub.choices)


# --- import contracts (pyproject.toml [tool.importlinter]) and the core's import graph ----------------------------

import os
import sys as _sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "train", "integrations", "audio", "apps", "tasks", "cli")


def _graph():
    import grimp

    return grimp.build_graph("slimtrain", include_external_packages=True, cache_dir=None)


def _core_graph(g=None) -> dict[str, set[str]]:
    """``{core module: core modules it imports}``, every import (function-level ones too)."""
    g = g or _graph()
    core = g.find_descendants("slimtrain.core")
    return {a: {b for b in g.find_modules_directly_imported_by(a) if b in core and b != a} for a in core}


def find_cycle(edges: dict[str, set[str]]):
    """A list ``[a, b, ..., a]`` of modules that import each other in a ring, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(a):
        state[a] = 1
        path.append(a)
        for b in sorted(edges.get(a, ())):
            if state.get(b) == 1:
                return path[path.index(b):] + [b]
            if b not in state and (found := visit(b)):
                return found
        state[a] = 2
        path.pop()
        return None

    for a in sorted(edges):
        if a not in state and (found := visit(a)):
            return found
    return None


def test_find_cycle_finds_a_ring_and_only_a_ring():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle


def test_the_folders_are_the_layers():
    """Every module of the package sits in one of the layer packages (plus the root's API, CLI and the
    old-path aliases): the flat folder of before is gone."""
    top = {p.stem if p.is_file() else p.name for p in (ROOT / "src" / "slimtrain").iterdir()
           if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    assert top == {"__init__", "__main__", "_legacy", *LAYERS}, sorted(top)


def test_the_core_imports_only_itself_torch_and_numpy():
    """The method (slimtrain.core) imports no other slimtrain layer and no third-party package but torch and
    numpy at import time (scipy and ONNX Runtime only inside the latency profiler's functions)."""
    g = _graph()
    core = g.find_descendants("slimtrain.core") | {"slimtrain.core"}
    outside, external = set(), set()
    for a in core:
        for b in g.find_modules_directly_imported_by(a):
            if b.startswith("slimtrain.") and b not in core:
                outside.add((a, b))
            elif not b.startswith("slimtrain") and b.split(".")[0] not in _sys.stdlib_module_names:
                external.add(b.split(".")[0])
    assert not outside, sorted(outside)
    assert external <= {"torch", "numpy", "scipy", "onnx", "onnxruntime"}, sorted(external)
    code = ("import sys, slimtrain.core.export, slimtrain.core.loss, slimtrain.core.compact\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'onnx', 'onnxruntime', 'soundfile'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_import_cycle_among_the_core_modules():
    edges = _core_graph()
    assert {"slimtrain.core.attach", "slimtrain.core.trace", "slimtrain.core.export"} <= set(edges)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle among the core modules: " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_function_level_import():
    """A lazy import inside a function counts: re-adding trace's old import of export is reported as a cycle."""
    edges = _core_graph()
    assert "slimtrain.core.trace" in edges["slimtrain.core.export"]  # export reads the trace
    edges["slimtrain.core.trace"].add("slimtrain.core.export")
    cycle = find_cycle(edges)
    assert cycle and "slimtrain.core.trace" in cycle and "slimtrain.core.export" in cycle


def test_import_contracts_are_kept():
    """``lint-imports`` with the contracts of pyproject.toml (the layers of docs/architecture.md; no cycle
    between the modules of any package); fails with import-linter's report."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([str(exe), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout, r.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The layers contract is not vacuous: a copy of the package in which the core imports the studies is
    reported broken, naming the import."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "slimtrain", src / "slimtrain", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    dcl = src / "slimtrain" / "core" / "dcl.py"
    dcl.write_text(dcl.read_text() + "\n\ndef _up():\n    from ..tasks import synthetic  # noqa: F401\n")
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([str(exe), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "slimtrain.core is not allowed to import slimtrain.tasks" in r.stdout, r.stdout
