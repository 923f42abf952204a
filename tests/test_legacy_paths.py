"""Old import paths and files written before the modules moved into core/, train/, audio/ and apps/."""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimtrain
from slimtrain._legacy import MOVED, new_path

FIX = Path(__file__).parent / "fixtures" / "legacy_c073c0d"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_path_imports_and_forwards(old):
    mod = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    assert mod is new or old == "slimtrain.export"  # the one old path with a name that moved elsewhere
    public = [n for n in dir(new) if not n.startswith("_")]
    assert public, MOVED[old]
    for name in public:
        assert getattr(mod, name) is getattr(new, name), (old, name)
    assert new.__spec__.name == MOVED[old]  # the module keeps its own spec


def test_a_submodule_of_a_moved_package_follows_it():
    from slimtrain.data.rttm import read_rttm
    import slimtrain.audio.data.rttm as rttm

    assert read_rttm is rttm.read_rttm
    assert new_path("slimtrain.data.rttm") == "slimtrain.audio.data.rttm"
    assert new_path("slimtrain.tasks.vad.train") is None  # what did not move is not aliased


def test_a_name_that_moved_between_modules_is_still_found_at_its_old_path():
    from slimtrain.export import load_exported
    from slimtrain.train.checkpoint import load_exported as new

    assert load_exported is new
    with pytest.raises(AttributeError, match="'slimtrain.export' .*no attribute 'nope'"):
        importlib.import_module("slimtrain.export").nope


def test_the_package_functions_stay_functions_after_importing_their_old_modules():
    """``import slimtrain.export`` used to bind the module on the package only until ``from .export import
    export`` rebound it; the aliases must not turn ``slimtrain.export`` / ``slimtrain.compact`` into modules."""
    code = ("import slimtrain, slimtrain.export, slimtrain.compact, types\n"
            "assert callable(slimtrain.export) and not isinstance(slimtrain.export, types.ModuleType)\n"
            "assert callable(slimtrain.compact) and not isinstance(slimtrain.compact, types.ModuleType)\n"
            "from slimtrain import vad, spoof\n"
            "assert vad.load is slimtrain.apps.vad.load and spoof.load is slimtrain.apps.spoof.load\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_monkeypatching_an_old_path_reaches_the_real_module_and_is_undone():
    import slimtrain.core.export as real_export
    import slimtrain.train.training as real

    before, before_heads = real.make_optimizer, real_export._set_head_counts
    sentinel = object()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("slimtrain.training.make_optimizer", sentinel)
        mp.setattr(sys.modules["slimtrain.export"], "_set_head_counts", sentinel)  # through the alias module
        assert real.make_optimizer is sentinel and real_export._set_head_counts is sentinel
    assert real.make_optimizer is before and real_export._set_head_counts is before_heads


def test_a_pickle_naming_an_old_class_path_unpickles():
    from slimtrain.core.modules import TransformerBlock

    assert pickle.loads(b"cslimtrain.modules\nTransformerBlock\n.") is TransformerBlock


def test_a_training_checkpoint_written_before_the_move_loads_and_exports():
    from slimtrain.train.checkpoint import load_dynamic_model

    model = load_dynamic_model(FIX / "synthetic.ckpt")
    widths = slimtrain.dynamic_widths(model)
    assert set(widths) == {"0.dcl"} and 1 < widths["0.dcl"] <= 64
    small = slimtrain.export(model)
    x = torch.randn(8, 16)
    model.eval()
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)


def test_an_export_folder_written_before_the_move_loads():
    from slimtrain.train.checkpoint import load_exported

    model = load_exported(FIX / "export")
    assert model[0].out_features == 4  # summary.json: widths 0.dcl = 4
    assert sum(p.numel() for p in model.parameters()) == 88


@pytest.mark.parametrize("name", ["old_dynamic_module.pt", "old_exported_module.pt"])
def test_a_whole_model_pickled_before_the_move_loads_and_computes_the_same(name):
    """``torch.save(model)`` of a dynamic model (its hooks are partials of functions of the old
    ``slimtrain.attach``) and of its export (a ``slimtrain.modules.TransformerBlock``)."""
    blob = torch.load(FIX / name, weights_only=False)
    model = blob["model"]
    assert type(model[1]).__module__ == "slimtrain.core.modules"
    torch.testing.assert_close(model(blob["x"]), blob["y"])
