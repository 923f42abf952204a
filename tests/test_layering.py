"""The core never imports the case studies; tasks register themselves."""
from __future__ import annotations

import subprocess
import sys


def test_core_and_cli_import_no_task_module():
    code = ("import sys, slimtrain, slimtrain.checkpoint, slimtrain.export, slimtrain.cost, slimtrain.cli\n"
            "bad = sorted(m for m in sys.modules if m.startswith('slimtrain.tasks'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_from_recipe_of_an_unregistered_task_names_the_fix():
    import pytest

    from slimtrain.checkpoint import CheckpointError, build_from_recipe

    with pytest.raises(CheckpointError, match="no builder registered for task 'nope'.*register_task"):
        build_from_recipe({"task": "nope", "kwargs": {}, "sample_shape": [1, 2], "dynamic": {}})


def test_cli_lists_the_task_commands():
    from slimtrain.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"synthetic", "export", "plan", "vad", "spoof"} <= set(sub.choices)
