"""Data-parallel training: ``torchrun --nproc_per_node 2`` with gloo on the CPU.

* the CLI (``-m slimtrain synthetic --quick``) exits 0, prints once, writes one checkpoint that
  loads without DDP, ends with bit-identical widths on both ranks, and lands within the noise of
  single-process runs (see :func:`test_torchrun_synthetic_is_within_noise_of_single_process`);
* ``fit`` with warm-up (frozen DCLs) under DDP, and a resume after a crash, equal to an
  uninterrupted run bit for bit on every rank; the VAD task's own loop under DDP;
* the sharding and seeding helpers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import slimtrain
from slimtrain import distributed
from slimtrain.train.checkpoint import load_checkpoint, load_dynamic_model
from slimtrain.train.distributed import DeviceError, World, rank_seed, shard

SRC = str(Path(slimtrain.__file__).resolve().parents[1])
ALPHA = 2.0


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "CI": "true"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # --standalone: a free port per launch, so parallel test workers do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# -- the CLI under torchrun -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _torchrun("-m", "slimtrain", "synthetic", "--quick", "--alpha", str(ALPHA), "--out", str(out),
                     "--no-progress", cwd=out.parent)
    return proc, out


def test_torchrun_cli_exits_0_prints_once_and_writes_a_plain_checkpoint(ddp_run):
    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"alpha={ALPHA:g}: hidden width") == 1  # only rank 0 reports
    assert "data-parallel: 2 processes, global batch 32 (16-16 rows per process)" in proc.stdout
    assert "Traceback" not in proc.stderr and "destroy_process_group() was not called" not in proc.stderr
    ckpt = load_checkpoint(out / "model.ckpt")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # saved from the unwrapped model
    model = load_dynamic_model(ckpt)  # loads without DDP
    assert json.loads((out / "result.json").read_text())["result"]["width"] == model[0].dcl.hard_width
    assert not list(out.glob(".*.tmp"))  # the atomic writes left nothing behind


def test_torchrun_widths_are_bit_identical_on_both_ranks(ddp_run):
    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(out / "model.ckpt")["extra"]["training"]
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    rank0, rank1 = state["rank_widths"]
    assert set(rank0) == {"0.dcl"}
    theta = load_checkpoint(out / "model.ckpt")["state_dict"]["0.dcl.theta"]
    assert torch.equal(rank0["0.dcl"], rank1["0.dcl"]) and torch.equal(rank0["0.dcl"], theta)
    assert float(theta) < 1.0  # the width did move
    # the ranks drew different noise: their saved torch RNG states differ
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])


def test_torchrun_synthetic_is_within_noise_of_single_process(ddp_run):
    """"Within noise": the data-parallel run differs from the single-process run only in its DCL
    noise draws (rank 1 draws its own; each rank's sigma comes from its half of the batch). So
    we measure how far the noise alone moves a single-process run: the same run with
    ``noise_seed`` 1 and 2 (same data, same initial weights, other noise). The data-parallel
    result must lie within twice that spread (max - min over the three single-process runs) of
    the default single-process run, for the continuous width K and for the test NMSE.
    Measured (quick config, alpha 2): single K 4.909 / 4.807 / 4.836, NMSE 0.141 / 0.162 / 0.144;
    data-parallel K 4.880, NMSE 0.146."""
    import slimtrain.tasks.synthetic as syn

    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((out / "result.json").read_text())["result"]
    cfg = syn.SyntheticConfig.quick()
    cfg.kappa_min = 1.0 / cfg.hidden  # as the CLI sets it
    data = syn.make_data(cfg)
    single = [syn.train_run(cfg, ALPHA, data=data, progress=False, noise_seed=s) for s in (None, 1, 2)]
    for key in ("width_continuous", "test_nmse"):
        values = [r[key] for r in single]
        spread = max(values) - min(values)
        assert spread > 0, values  # the noise does move a run
        assert abs(ddp[key] - values[0]) <= 2 * spread, (key, ddp[key], values)
    assert ddp["width"] in {r["width"] for r in single} | {single[0]["width"] + d for d in (-1, 1)}


# -- fit under torchrun: warm-up (frozen widths) and resume -----------------------------------------
FIT_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.nn.functional as F
    from torch import nn
    import slimtrain
    from slimtrain import distributed
    from slimtrain.core.loss import TradeoffLoss
    from slimtrain.train.record import WidthRecorder
    from slimtrain.train.training import fit, make_optimizer, seed_everything

    out = sys.argv[1]
    EPOCHS, STEPS, WARM = 4, 4, 4  # warm-up = the whole first epoch

    def run(ckpt, crash_at=None, resume=False, settle=0):
        seed_everything(0)
        model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(96, 6, generator=g), torch.randn(96, 3, generator=g)
        slimtrain.make_dynamic(model, x[:8])
        objective = TradeoffLoss(model, alpha=1.0, warmup_steps=WARM)
        opt = make_optimizer(model, lr=1e-2, width_lr=5e-2)
        seen = []  # theta at the start of every epoch, on every rank

        def batches(epoch):
            seen.append(model[0].dcl.theta.item())
            perm = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
            for i in range(STEPS):
                if (epoch, i) == crash_at:
                    raise RuntimeError("crash")
                idx = perm[i * 24:(i + 1) * 24]
                yield x[idx], y[idx]

        try:
            fit(model, batches, F.mse_loss, objective, opt, EPOCHS, recorder=WidthRecorder(), progress=False,
                checkpoint=ckpt, recipe=None, resume=resume, settle_epochs=settle)
        except RuntimeError as e:
            assert str(e) == "crash", e
        return {"theta": model[0].dcl.theta.item(), "seen": seen,
                "state": {k: v.tolist() for k, v in model.state_dict().items()}}

    def vad():  # the VAD task's own loop (not fit) under DDP, with warm-up and a skipped 1-clip batch
        import numpy as np
        from types import SimpleNamespace
        from slimtrain.apps.vad.models import build_vad_model
        from slimtrain.tasks.vad.train import train_loop

        seed_everything(0)
        model = build_vad_model("crnn", 16, conv1=8, conv2=8, hidden=8)
        torch.manual_seed(0)
        slimtrain.make_dynamic(model, torch.randn(2, 4000) * 0.1, kappa_min=0.25)
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal((9, 4000)) * 0.1).astype(np.float32)
        with torch.no_grad():
            frames = model.eval()(torch.from_numpy(audio[:1])).shape[1]
        labels = (rng.random((9, frames)) > 0.5).astype(np.uint8)
        objective = TradeoffLoss(model, alpha=1.0, warmup_steps=3)
        losses = train_loop(model, SimpleNamespace(audio=audio, labels=labels), 3, make_optimizer(model),
                            batch_size=4, penalty=objective)
        return {"losses": losses, "steps": objective.steps,
                "theta": {n: p.item() for n, p in model.named_parameters() if n.endswith("theta")}}

    rank = distributed.world().rank
    res = {"full": run(out + "/a.ckpt"),
           "crashed": run(out + "/b.ckpt", crash_at=(2, 1)),
           "resumed": run(out + "/b.ckpt", resume=True),
           # the last epoch settled (widths fixed, DDP wrapped again without them); a crash inside it resumes
           "settled": run(out + "/c.ckpt", settle=1),
           "settled_crashed": run(out + "/d.ckpt", crash_at=(3, 2), settle=1),
           "settled_resumed": run(out + "/d.ckpt", resume=True, settle=1),
           "vad": vad()}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(res, f)
""")


def test_fit_under_torchrun_warmup_resume_and_identical_ranks(tmp_path):
    script = tmp_path / "fit_ddp.py"
    script.write_text(FIT_SCRIPT)
    proc = _torchrun(str(script), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        full, crashed, resumed = res["full"], res["crashed"], res["resumed"]
        # warm-up: the widths stay at full size through epoch 0 (no gradient reaches a frozen theta,
        # and DDP does not wait for one), then train
        assert full["seen"][0] == 1.0 and full["seen"][1] == 1.0
        assert full["seen"][2] < 1.0 and full["theta"] < full["seen"][2]
        # resume after the crash in epoch 2 continues from the epoch-1 checkpoint ...
        assert len(crashed["seen"]) == 3 and resumed["seen"] == full["seen"][2:]
        # ... and ends exactly where the uninterrupted run ends (weights, widths, on this rank)
        assert resumed["state"] == full["state"] and resumed["theta"] == full["theta"]
        # settle_epochs=1: the widths learn through epoch 2 and stay fixed in epoch 3; the same run
        # crashed inside the settled epoch resumes to the same end
        settled = res["settled"]
        assert settled["seen"][:3] == full["seen"][:3] and settled["seen"][3] == full["seen"][3]
        assert settled["theta"] == settled["seen"][3] != full["theta"]
        assert res["settled_resumed"]["state"] == settled["state"]
        assert res["settled_resumed"]["seen"] == settled["seen"][3:]
    # every rank holds the same model, bit for bit
    assert ranks[0]["full"]["state"] == ranks[1]["full"]["state"]
    assert ranks[0]["settled"]["state"] == ranks[1]["settled"]["state"]
    assert ranks[0]["full"]["seen"] == ranks[1]["full"]["seen"]
    # the VAD loop: batches of 4, 4 and 1 clips; the 1-clip batch is skipped by both ranks alike
    vad0, vad1 = ranks[0]["vad"], ranks[1]["vad"]
    assert vad0 == vad1 and vad0["steps"] == 3 * 2
    assert all(t <= 1.0 for t in vad0["theta"].values()) and min(vad0["theta"].values()) < 1.0
    ckpt_a, ckpt_b = load_checkpoint(tmp_path / "a.ckpt"), load_checkpoint(tmp_path / "b.ckpt")
    res_a, res_b = (c["extra"]["training"]["results"] for c in (ckpt_a, ckpt_b))
    assert [r[:2] for r in res_a] == [r[:2] for r in res_b]  # epochs and mean losses (metric: NaN, none given)
    assert len(res_a) == 4
    assert [r["epoch"] for r in ckpt_b["extra"]["training"]["recorder_rows"]] == [0, 1, 2, 3]


# -- helpers ----------------------------------------------------------------------------------------
@given(rows=st.integers(0, 40), size=st.integers(1, 5))
def test_shard_gives_disjoint_covering_parts_or_none(rows, size):
    x = torch.arange(rows * 2.0).reshape(rows, 2)
    y = torch.arange(float(rows))
    parts = [shard((x, {"y": y, "tag": "t"}), World(r, size, r)) for r in range(size)]
    if size > 1 and rows < size:
        assert all(p is None for p in parts)  # some rank would get nothing: every rank skips
        return
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1]["y"] for p in parts]), y)
    assert all(p[1]["tag"] == "t" for p in parts)
    sizes = [len(p[0]) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_refuses_tensors_of_different_batch_sizes():
    with pytest.raises(ValueError, match=r"different first dimensions \[3, 4\]"):
        shard((torch.zeros(4, 2), torch.zeros(3)), World(0, 2, 0))


def test_rank_seeds_differ_between_ranks_and_from_the_seed():
    seeds = [rank_seed(7, r) for r in range(8)]
    assert len(set(seeds)) == 8 and 7 not in seeds
    assert rank_seed(7, 1) != rank_seed(8, 1)


def test_world_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = distributed.world()
    assert (w.rank, w.size, w.local_rank, w.parallel, w.main) == (3, 4, 1, True, False)
    assert distributed.launched() and not distributed.is_main()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DeviceError, match="RANK=4 and WORLD_SIZE=4"):
        distributed.world()


def test_sweeps_refuse_torchrun(monkeypatch, capsys, tmp_path):
    from slimtrain.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = main(["synthetic", "--quick", "--sweep", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--sweep is not data-parallel: run it without torchrun" in err
    assert not (tmp_path / "o").exists()
