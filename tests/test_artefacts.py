"""Deployment artefacts of `slimtrain export`: each loads in a fresh process and equals the DCL model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import slimtrain
from slimtrain.train.checkpoint import make_recipe, save_checkpoint
from slimtrain.cli import main
from slimtrain.core.export import ExportError, export_onnx

sys.path.insert(0, str(Path(__file__).parent))
import _helpers as H  # noqa: E402

SRC = str(Path(slimtrain.__file__).resolve().parents[1])

# runs in a fresh interpreter: TorchScript and ONNX without slimtrain, then the state dict with its loader
CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, onnxruntime as ort
    out = sys.argv[1]
    x = torch.load(out + "/x.pt", weights_only=True)
    ref = torch.load(out + "/ref.pt", weights_only=True)
    res = {}
    with torch.no_grad():
        res["torchscript"] = float((torch.jit.load(out + "/model.pt")(x) - ref).abs().max())
    sess = ort.InferenceSession(out + "/model.onnx", providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    res["onnx"] = float(np.abs(y - ref.numpy()).max())
    res["onnx_batch1"] = float(np.abs(sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
                                      - ref[:1].numpy()).max())
    res["slimtrain_imported"] = any(m == "slimtrain" or m.startswith("slimtrain.") for m in sys.modules)
    from slimtrain.train.checkpoint import load_exported  # the loader of the state dict
    with torch.no_grad():
        res["state_dict"] = float((load_exported(out)(x) - ref).abs().max())
    print("RES" + json.dumps(res))
""")


def _synthetic_checkpoint(path: Path, width: float) -> torch.nn.Module:
    from slimtrain.tasks.synthetic import build_dynamic_student

    recipe = make_recipe("synthetic", {"in_dim": 16, "hidden": 24, "out_dim": 4}, (8, 16), {"kappa_min": 1 / 24})
    model = build_dynamic_student(recipe)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    for d in H.dcls(model).values():
        d.set_width(width)
    save_checkpoint(path, model, recipe, extra={"metric": {"name": "test_nmse", "value": 0.5}})
    return model.eval()


def test_export_artefacts_load_in_a_fresh_process(tmp_path, capsys):
    model = _synthetic_checkpoint(tmp_path / "m.ckpt", 9.4)
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "m.ckpt"), str(out)]) == 0
    assert "ONNX" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["widths"] == {"0.dcl": 10}  # ceil(9.4)
    assert set(summary["files"]) == {"model_state.pt", "model.pt", "model.onnx", "summary.json"}
    assert summary["onnx"]["max_abs_diff"] <= 1e-5 and summary["check"]["passed"]
    assert summary["params"] == 16 * 10 + 10 + 10 * 4 + 4
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))  # another batch size than the sample
    with torch.no_grad():
        ref = model(x)
    torch.save(x, out / "x.pt")
    torch.save(ref, out / "ref.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = SRC  # only so the state-dict loader can be imported at the end
    p = subprocess.run([sys.executable, "-c", CHECK, str(out)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RES")][-1][3:])
    assert res["slimtrain_imported"] is False  # TorchScript and ONNX ran without slimtrain
    for k in ("torchscript", "onnx", "onnx_batch1", "state_dict"):
        assert res[k] <= 1e-5, (k, res)


def test_export_without_onnx_writes_three_files(tmp_path, capsys):
    _synthetic_checkpoint(tmp_path / "m.ckpt", 5.0)
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "m.ckpt"), str(out), "--no-onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "model_state.pt", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["onnx"] == {"skipped": "--no-onnx"}


@pytest.mark.parametrize("name", ["gru", "mel"])
def test_onnx_of_exported_zoo_models_matches(tmp_path, name):
    _, model, x = H.build(name)
    for d in H.dcls(model).values():
        d.set_width(max(d.min_width, 0.55 * d.num_channels))
    model.eval()
    small = slimtrain.export(model)
    info = export_onnx(small, x, tmp_path / "m.onnx")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = H.first(model(x))
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(y - ref.numpy()).max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert info["max_abs_diff"] <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_onnx_export_rejects_tuple_outputs(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ExportError, match="single tensor output"):
        export_onnx(Two(), torch.ones(2, 3), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_load_exported_names_a_missing_summary(tmp_path):
    from slimtrain.train.checkpoint import CheckpointError
    from slimtrain.train.checkpoint import load_exported

    with pytest.raises(CheckpointError, match="summary.json"):
        load_exported(tmp_path)
