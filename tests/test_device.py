"""``--device`` and ``fit(device=...)``: named one-line errors for unavailable devices, cuda:LOCAL_RANK
under torchrun, and training on the CPU unchanged. (No GPU here: the CUDA paths are checked by
their errors and, with ``torch.cuda`` patched, by the device they pick.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimtrain
from slimtrain import distributed
from slimtrain.cli import build_parser, main
from slimtrain.train.distributed import DeviceError, resolve_device
from slimtrain.core.loss import TradeoffLoss
from slimtrain.train.training import fit, make_optimizer

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.fixture
def single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_resolves_and_unknown_devices_are_named(single_process):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match="unsupported device 'meta'"):
        resolve_device("meta")


@pytest.mark.ci_may_skip
@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_only_machine_is_a_named_error(single_process, name):
    with pytest.raises(DeviceError) as e:
        resolve_device(name)
    msg = str(e.value)
    assert f"'{name}' is not available" in msg and "--device cpu" in msg and "\n" not in msg


@pytest.mark.ci_may_skip
@pytest.mark.skipif(not NO_MPS, reason="MPS is present")
def test_mps_unavailable_is_a_named_error(single_process):
    with pytest.raises(DeviceError, match="'mps' is not available"):
        resolve_device("mps")


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_under_torchrun_cuda_means_cuda_local_rank(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert resolve_device("cuda") == torch.device("cuda", 0)  # one process: the first GPU


def test_more_ranks_than_gpus_names_the_local_rank(monkeypatch):
    _fake_gpus(monkeypatch, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DeviceError, match=r"'cuda:1' \(LOCAL_RANK 1\) is not available: this machine has 1 CUDA"):
        resolve_device("cuda")


def test_mps_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DeviceError, match="not supported on 'mps'"):
        resolve_device("mps")


@pytest.mark.parametrize("command", ["synthetic", "vad", "spoof"])
def test_every_training_command_has_device(capsys, command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    device = next(a for a in sub._actions if "--device" in a.option_strings)
    assert device.default == "cpu" and "cuda" in device.help and "LOCAL_RANK" in device.help


@pytest.mark.ci_may_skip
@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present")
@pytest.mark.parametrize("command", [["synthetic", "--quick"], ["synthetic", "--quick", "--sweep"],
                                     ["vad", "--quick"], ["vad", "--quick", "--sweep"],
                                     ["spoof", "--quick"], ["spoof", "--quick", "--sweep"]])
def test_cli_unavailable_device_exits_2_with_one_line_before_any_work(capsys, tmp_path, single_process, command):
    extra = ["--data", str(tmp_path / "data")] if command[0] != "synthetic" else []
    code = main([*command, "--device", "cuda", "--out", str(tmp_path / "o"), *extra])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("slimtrain: error: device 'cuda' is not available")
    assert not (tmp_path / "o").exists() and not (tmp_path / "data").exists()  # nothing was built or trained


def test_cli_bad_device_name_is_an_argument_error(capsys, tmp_path):
    code = main(["synthetic", "--quick", "--device", "gpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "argument --device: device must be cpu, cuda, cuda:N or mps, got 'gpu'" in err


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    slimtrain.make_dynamic(model, x[:8])
    objective = TradeoffLoss(model, alpha=0.5, warmup_steps=4)
    return model, objective, make_optimizer(model), x, y


def _batches(x, y):
    def batches(epoch):
        for i in range(0, len(x), 16):
            yield x[i:i + 16], y[i:i + 16]
    return batches


@pytest.mark.ci_may_skip
@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is present")
def test_fit_refuses_an_unavailable_device_before_training(single_process):
    model, objective, opt, x, y = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DeviceError, match="'cuda' is not available"):
        fit(model, _batches(x, y), F.mse_loss, objective, opt, 2, progress=False, device="cuda")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert objective.steps == 0


def test_fit_on_cpu_device_equals_fit_without_device(single_process):
    runs = []
    for device in (None, "cpu"):
        model, objective, opt, x, y = _tiny()
        res = fit(model, _batches(x, y), F.mse_loss, objective, opt, 3, progress=False, device=device)
        runs.append((res, model.state_dict()))
    (ra, sa), (rb, sb) = runs
    assert [r.train_loss for r in ra] == [r.train_loss for r in rb]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert float(sa["0.dcl.theta"]) < 1.0  # the width was trained after warm-up


def test_single_process_world_and_data_parallel_helper(single_process):
    w = distributed.world()
    assert (w.rank, w.size, w.local_rank, w.parallel, w.main) == (0, 1, 0, False, True)
    model, objective, *_ = _tiny()
    from slimtrain.train.training import DataParallel

    dp = DataParallel(model, objective, "cpu")
    assert dp.net is model and dp.world == w
    b = (torch.ones(3, 2), torch.zeros(3))
    got = dp.batch(b)
    assert got[0] is b[0] and got[1] is b[1]
    assert dp.mean([torch.tensor(1.5), 2.0]) == [1.5, 2.0]
    assert dp.from_main(3.25) == 3.25


def test_a_training_step_refuses_a_non_finite_loss_before_any_update(single_process):
    """DataParallel.step (the step of fit and of the VAD loops): the rank means come back; a NaN loss stops
    with the place and the hint, and no weight or optimizer state has moved."""
    from slimtrain.train.training import DataParallel, TrainingError

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = DataParallel(model)
    x = torch.randn(4, 3)
    loss = model(x).pow(2).mean()
    task = loss.detach() * 2
    before = model.weight.detach().clone()
    values = dp.step(opt, loss, task, where="at epoch 0", hint="lower the learning rate")
    assert values == pytest.approx([float(loss), float(task)])
    assert not torch.equal(model.weight, before)
    moved = model.weight.detach().clone()
    with pytest.raises(TrainingError, match=r"^loss became nan at epoch 3; lower the learning rate$"):
        dp.step(opt, model(x).sum() * float("nan"), where="at epoch 3", hint="lower the learning rate")
    assert torch.equal(model.weight, moved) and model.weight.grad is not None
    dp.close()
