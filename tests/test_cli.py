"""The ``slimtrain`` command: help, one-line errors, a quick run, the sweep and ``export``."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import slimtrain
from slimtrain.train.checkpoint import CheckpointError, load_dynamic_model, load_for_inference
from slimtrain.cli import build_parser, main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("slimtrain: error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- help --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["synthetic", "export"])
def test_help_explains_every_option(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help and len(action.help) > 10, action.dest
        for flag in action.option_strings:
            assert flag in out
    assert "usage: slimtrain " + command in out


def test_top_level_help_and_version(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "synthetic" in out and "export" in out
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and slimtrain.__version__ in out


# -- bad values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["synthetic", "--alpha", "-1"], ["--alpha", "-1"]),
    (["synthetic", "--alpha", "inf"], ["--alpha"]),
    (["synthetic", "--alpha", "abc"], ["--alpha", "abc"]),
    (["synthetic", "--kappa-min", "0"], ["--kappa-min", "(0, 1]"]),
    (["synthetic", "--kappa-min", "1.5"], ["--kappa-min", "(0, 1]"]),
    (["synthetic", "--kappa-min", "-0.2"], ["--kappa-min"]),
    (["synthetic", "--epochs", "0"], ["--epochs", ">= 1"]),
    (["synthetic", "--epochs", "-3"], ["--epochs"]),
    (["synthetic", "--hidden", "0"], ["--hidden"]),
    (["synthetic", "--sweep", "--alphas", "0,-0.5"], ["--alphas", "-0.5"]),
    (["synthetic", "--sweep", "--alphas", ","], ["--alphas"]),
    (["synthetic", "--sweep", "--baselines", "4,0"], ["--baselines"]),
    (["synthetic", "--lr", "0"], ["--lr"]),
    (["synthetic", "--hidden", "8", "--kappa-min", "0.01"], ["kappa-min", "1/8"]),
    (["synthetic", "--alphas", "0,1"], ["--sweep"]),
    (["synthetic", "--no-such-option"], ["--no-such-option"]),
    (["synthetic", "--seeds", "3"], ["--seeds", "--sweep"]),
    (["synthetic", "--sweep", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["synthetic", "--sweep", "--seed-list", "1,1"], ["--seed-list", "distinct"]),
    (["synthetic", "--sweep", "--seeds", "2", "--seed-list", "0,1"], ["--seed-list", "--seeds"]),
    (["synthetic", "--sweep", "--engine", "dask"], ["--engine", "dask"]),
    (["synthetic", "--sweep", "--address", "ray://head:10001"], ["--address", "--engine ray"]),
    (["export", "only-one-arg"], ["OUT_DIR"]),
    ([], ["COMMAND"]),
])
def test_bad_values_give_one_line_and_exit_2(capsys, tmp_path, argv, words):
    code, out, err = _run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[:1] == ["synthetic"] else []))
    _assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o" / "model.ckpt").exists()


def test_missing_and_corrupt_checkpoints(capsys, tmp_path):
    code, _, err = _run(capsys, "export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"))
    _assert_one_line_error(code, err, "missing.ckpt", "does not exist")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage" * 100)
    code, _, err = _run(capsys, "export", str(bad), str(tmp_path / "out"))
    _assert_one_line_error(code, err, "bad.ckpt", "cannot be read")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    code, _, err = _run(capsys, "export", str(other), str(tmp_path / "out"))
    _assert_one_line_error(code, err, "other.ckpt", "not a slimtrain checkpoint")
    assert not (tmp_path / "out").exists()


def test_console_script_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "slimtrain", "synthetic", "--kappa-min", "2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("slimtrain: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- a quick run, then export ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["synthetic", "--quick", "--alpha", "1", "--epochs", "6", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_single_run_writes_checkpoint_record_and_result(quick_run):
    assert (quick_run / "model.ckpt").is_file()
    res = json.loads((quick_run / "result.json").read_text())
    assert res["result"]["method"] == "learned" and res["result"]["alpha"] == 1.0
    assert res["config"]["hidden"] == 32 and res["config"]["epochs"] == 6
    assert 1 <= res["result"]["width"] < 32
    with open(quick_run / "widths.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {"epoch", "train_loss", "metric", "K[0.dcl]", "macs", "flops", "params"} <= set(rows[0])
    assert float(rows[-1]["K[0.dcl]"]) == pytest.approx(res["result"]["width_continuous"], abs=1e-3)


def test_export_writes_four_files_and_torchscript_runs_without_slimtrain(capsys, quick_run, tmp_path):
    out = tmp_path / "export"
    code, stdout, err = _run(capsys, "export", str(quick_run / "model.ckpt"), str(out))
    assert code == 0, err
    assert "check passed" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "model_state.pt", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    result = json.loads((quick_run / "result.json").read_text())["result"]
    assert summary["widths"] == {"0.dcl": result["width"]}
    assert summary["flops"] == result["flops"] == 2 * summary["macs"]
    assert summary["params"] == summary["params_exported_model"] == result["params"]
    assert summary["metric"]["name"] == "test_nmse"
    assert summary["metric"]["value"] == pytest.approx(result["test_nmse"])
    assert summary["check"]["passed"] is True and summary["check"]["max_abs_diff"] < 1e-5
    # the state dict is the small dense model's
    state = torch.load(out / "model_state.pt", weights_only=True)
    w = result["width"]
    assert state["0.weight"].shape == (w, 16) and state["2.weight"].shape == (4, w)

    # reference output of the dynamic model in eval mode, saved for a fresh interpreter
    model = load_dynamic_model(quick_run / "model.ckpt")
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(3))  # a batch size not traced with
    with torch.no_grad():
        ref = model(x)
    torch.save({"x": x, "y": ref}, tmp_path / "ref.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        m = torch.jit.load({str(out / 'model.pt')!r})
        ref = torch.load({str(tmp_path / 'ref.pt')!r})
        y = m(ref["x"])
        assert not any(k.startswith("slimtrain") for k in sys.modules), "slimtrain was imported"
        err = (y - ref["y"]).abs().max().item()
        assert err < 1e-5, err
        print("ok", err)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_export_exits_2_on_a_truncated_checkpoint(capsys, quick_run, tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((quick_run / "model.ckpt").read_bytes()[:-200])
    code, _, err = _run(capsys, "export", str(cut), str(tmp_path / "e"))
    _assert_one_line_error(code, err, "cut.ckpt")


def test_quick_sweep_via_cli(capsys, tmp_path):
    code, out, err = _run(capsys, "synthetic", "--sweep", "--quick", "--epochs", "2", "--alphas", "0,4",
                          "--baselines", "3", "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "| learned | 4 |" in out and "| fixed | - | 3 |" in out
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["learned", "learned", "fixed"]
    assert {"alpha", "width", "flops", "params", "test_nmse"} <= set(rows[0])
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_load_for_inference_cuts_checkpoints_loads_torchscript_and_names_bad_files(quick_run, tmp_path, capsys):
    ckpt_path = quick_run / "model.ckpt"
    small, ckpt = load_for_inference(ckpt_path, "synthetic")
    assert ckpt is not None and not any(isinstance(m, slimtrain.DynamicWidth) for m in small.modules())
    dyn = load_dynamic_model(ckpt_path)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(small(x), dyn(x), atol=1e-5)
    assert main(["export", str(ckpt_path), str(tmp_path / "exp"), "--no-onnx"]) == 0
    scripted, none = load_for_inference(tmp_path / "exp" / "model.pt", "synthetic")
    assert none is None
    with torch.no_grad():
        assert torch.allclose(scripted(x), dyn(x), atol=1e-5)
    with pytest.raises(CheckpointError, match=r"model\.ckpt is a checkpoint of task 'synthetic', not of 'vad'"):
        load_for_inference(ckpt_path, "vad")
    with pytest.raises(CheckpointError, match=r"model file not found: .*nope\.pt"):
        load_for_inference(tmp_path / "nope.pt", "vad")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"junk\.pt is neither a slimtrain checkpoint nor a TorchScript model"):
        load_for_inference(tmp_path / "junk.pt", "vad")

