"""Checkpoint every epoch, --resume after a kill, NaN stop, seeded reproducibility."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimtrain
from slimtrain.train.checkpoint import load_checkpoint, make_recipe
from slimtrain.train.record import WidthRecorder
from slimtrain.train.training import TrainingError, fit, make_optimizer, seed_everything

SRC = str(Path(slimtrain.__file__).resolve().parents[1])

# a quick synthetic run: 4 epochs of 8 steps; KILL_AT="epoch,step" makes the process SIGKILL
# itself inside that epoch (after the previous epoch's checkpoint was written)
RUN = textwrap.dedent("""
    import json, os, signal, sys
    import slimtrain.tasks.synthetic as syn
    cfg = syn.SyntheticConfig.quick(n_train=256, n_val=128, n_test=128, hidden=16, kappa_min=1/16,
                                    epochs=4, warmup_epochs=1, batch_size=32, seed=3)
    kill = os.environ.get("KILL_AT")
    if kill:
        ke, ks = map(int, kill.split(","))
        make = syn._batches
        def killing(cfg_, data, opt):
            inner = make(cfg_, data, opt)
            def batches(epoch):
                for step, b in enumerate(inner(epoch)):
                    if (epoch, step) == (ke, ks):
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield b
            return batches
        syn._batches = killing
    out = sys.argv[1]
    row = syn.train_run(cfg, 3.0, checkpoint=out + "/model.ckpt", record_csv=out + "/widths.csv",
                        progress=False, resume=bool(int(sys.argv[2])))
    row.pop("seconds")
    print("ROW" + json.dumps(row))
""")


def _run(out: Path, resume: bool, kill_at: str | None = None) -> subprocess.CompletedProcess:
    # one thread: with several, how many threads OpenMP grants a parallel reduction can vary with the
    # machine's load, and so can the reduction's float rounding (we test resume, not threading)
    env = {**os.environ, "PYTHONPATH": SRC, "CI": "true", "OMP_NUM_THREADS": "1"}
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", RUN, str(out), "1" if resume else "0"],
                          capture_output=True, text=True, env=env, timeout=300)


def _row(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr[-2000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW")][-1]
    return json.loads(line[3:])


def test_killed_run_resumes_to_the_same_result(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    ref = _row(_run(full, resume=False))
    dead = _run(killed, resume=False, kill_at="2,3")
    assert dead.returncode == -signal.SIGKILL
    state = load_checkpoint(killed / "model.ckpt")["extra"]["training"]
    assert state["epoch"] == 1  # the last finished epoch before the kill
    assert not list(killed.glob(".model.ckpt.*.tmp"))  # no half-written temp file left behind
    resumed = _row(_run(killed, resume=True))
    assert resumed == ref
    a, b = load_checkpoint(full / "model.ckpt"), load_checkpoint(killed / "model.ckpt")
    assert a["widths"] == b["widths"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # the width record is continuous: one row per epoch, equal to the uninterrupted run's
    assert (full / "widths.csv").read_text() == (killed / "widths.csv").read_text()
    assert len((killed / "widths.csv").read_text().splitlines()) == 1 + 4


# -- in-process fit(): checkpoint content, resume, NaN stop, reproducibility -------------------
def _setup(seed: int = 0):
    gen = torch.Generator().manual_seed(1)  # the data do not depend on the seed of the run
    x = torch.randn(64, 6, generator=gen)
    y = torch.randn(64, 2, generator=gen)
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2))
    slimtrain.make_dynamic(model, x[:8], kappa_min=0.25)
    obj = slimtrain.TradeoffLoss(model, alpha=0.5, warmup_steps=2)
    opt = make_optimizer(model, lr=1e-2, width_lr=5e-2)

    def batches(epoch):
        g = torch.Generator().manual_seed(100 + epoch)
        perm = torch.randperm(64, generator=g)
        for i in range(0, 64, 16):
            yield x[perm[i:i + 16]], y[perm[i:i + 16]]

    return model, obj, opt, batches


def test_checkpoint_holds_optimizer_rng_widths_and_rows(tmp_path):
    model, obj, opt, batches = _setup()
    rec = WidthRecorder()
    fit(model, batches, F.mse_loss, obj, opt, 2, recorder=rec, progress=False, checkpoint=tmp_path / "c.ckpt",
        recipe=make_recipe("toy", {}, [8, 6]))
    ck = load_checkpoint(tmp_path / "c.ckpt")
    st = ck["extra"]["training"]
    assert st["epoch"] == 1 and st["epochs"] == 2
    assert set(st["rng"]) >= {"python", "numpy", "torch"}
    assert st["optimizer"]["state"]  # Adam moments were saved
    assert st["objective"]["steps"] == 8
    assert len(st["recorder_rows"]) == 2
    assert ck["widths"] == pytest.approx(slimtrain.dynamic_widths(model))


def test_resume_in_process_matches_uninterrupted(tmp_path):
    model, obj, opt, batches = _setup()
    ref = fit(model, batches, F.mse_loss, obj, opt, 4, progress=False)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    # a run that stopped after epoch 1: the checkpoint of a 2-epoch run, marked as of 4 epochs
    model2, obj2, opt2, batches2 = _setup()
    fit(model2, batches2, F.mse_loss, obj2, opt2, 2, progress=False, checkpoint=tmp_path / "half.ckpt")
    ck = torch.load(tmp_path / "half.ckpt", weights_only=True)
    ck["extra"]["training"]["epochs"] = 4
    torch.save(ck, tmp_path / "half.ckpt")
    model3, obj3, opt3, batches3 = _setup(seed=99)  # other init: everything must come from the checkpoint
    torch.manual_seed(12345)  # and other RNG state
    res = fit(model3, batches3, F.mse_loss, obj3, opt3, 4, progress=False, checkpoint=tmp_path / "half.ckpt",
              resume=True)
    assert [r.train_loss for r in res] == [r.train_loss for r in ref]
    for k, v in model3.state_dict().items():
        assert torch.equal(v, ref_state[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model, obj, opt, batches = _setup()

    def poisoned(epoch):
        for i, (x, y) in enumerate(batches(epoch)):
            if epoch == 2 and i == 1:
                y = y * float("nan")
            yield x, y

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, batch 1.*last good checkpoint"):
        fit(model, poisoned, F.mse_loss, obj, opt, 4, progress=False, checkpoint=tmp_path / "c.ckpt")
    ck = load_checkpoint(tmp_path / "c.ckpt")
    assert ck["extra"]["training"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_nan_input_stops_with_named_batch(tmp_path):
    model, obj, opt, batches = _setup()

    def poisoned(epoch):
        for i, (x, y) in enumerate(batches(epoch)):
            yield (x.clone().fill_(float("inf")) if (epoch, i) == (0, 2) else x), y

    with pytest.raises(TrainingError, match=r"inputs of batch 2 in epoch 0 hold NaN or Inf"):
        fit(model, poisoned, F.mse_loss, obj, opt, 2, progress=False)


def test_objective_none_trains_a_plain_model():
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    res = fit(model, lambda e: [(x, y)], F.mse_loss, None, opt, 5, progress=False)
    assert res[-1].train_loss < res[0].train_loss


def test_resume_needs_a_path_and_refuses_a_foreign_checkpoint(tmp_path):
    model, obj, opt, batches = _setup()
    with pytest.raises(ValueError, match="resume=True needs the checkpoint"):
        fit(model, batches, F.mse_loss, obj, opt, 1, progress=False, resume=True)
    fit(model, batches, F.mse_loss, obj, opt, 1, progress=False, checkpoint=tmp_path / "c.ckpt")
    m2, o2, opt2, b2 = _setup()
    with pytest.raises(slimtrain.checkpoint.CheckpointError, match="run of 1 epochs, not 3"):
        fit(m2, b2, F.mse_loss, o2, opt2, 3, progress=False, checkpoint=tmp_path / "c.ckpt", resume=True)


def test_seeded_runs_repeat_exactly():
    trajectories = []
    for _ in range(2):
        model, obj, opt, batches = _setup(seed=7)
        rec = WidthRecorder()
        res = fit(model, batches, F.mse_loss, obj, opt, 3, recorder=rec, progress=False,
                  evaluate=lambda m: float(m(torch.ones(2, 6)).detach().sum()))
        trajectories.append(([(r.train_loss, r.metric) for r in res], rec.rows))
    assert trajectories[0] == trajectories[1]
    ks = [r for r in trajectories[0][1]]
    assert any(k.startswith("K[") for k in ks[0])
