"""slimtrain.compact: cutting a dynamic model to its widths in the middle of training.

* every zoo model: eval output unchanged, training goes on with the same optimiser, its state shaped
  like the new parameters, fewer parameters, the cost model (full and current) unchanged;
* property: a training step of the cut model equals the step of the uncut model on the kept channels
  (weights, optimiser moments, BatchNorm statistics, widths), for Adam and SGD with momentum, any widths
  and margin; repeated cuts and growth back up to the new N;
* TradeoffLoss follows; checkpoints after a cut rebuild and resume; fit compacts every N epochs and at
  the settle point; clear errors.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain
from slimtrain import CompactError, compact
from slimtrain.train.checkpoint import CheckpointError, load_checkpoint, load_dynamic_model, make_recipe, register_task
from slimtrain.core.compact import compact_to, compacted_sizes, kept_channels
from slimtrain.core.dcl import DynamicWidth
from slimtrain.core.graph import get_graph
from slimtrain.train.training import fit, make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
import _zoo  # noqa: E402
from _helpers import first  # noqa: E402


def _dcls(model):
    return get_graph(model).dcl_modules(model)


def _set_widths(model, seed: int) -> None:
    """Every width at a random K in [K_min, N) (whole numbers included)."""
    g = torch.Generator().manual_seed(seed)
    for d in _dcls(model).values():
        u = float(torch.rand((), generator=g))
        k = d.min_width + u * (d.num_channels - d.min_width)
        d.set_width(round(k) if u < 0.2 else k)


# -- every zoo model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in _zoo.ZOO if not e.xfail])
def test_compact_zoo_model_keeps_output_and_trains_on(entry):
    torch.manual_seed(0)
    model, x = entry.build()
    model.eval()
    with torch.no_grad():
        target = first(model(x)).detach()
    slimtrain.make_dynamic(model, x, kappa_min=_zoo.KAPPA_MIN)
    _set_widths(model, 1)
    opt = make_optimizer(model, lr=1e-3, width_lr=0.05)
    obj = slimtrain.TradeoffLoss(model, alpha=1.0)

    def step() -> float:
        model.train()
        opt.zero_grad()
        loss = obj(F.mse_loss(first(model(x)), target))
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # the optimiser has state to slice
    model.eval()
    with torch.no_grad():
        before = first(model(x))
    full, hard = slimtrain.model_cost(model, full=True), slimtrain.model_cost(model, hard=True)
    widths = slimtrain.dynamic_widths(model)
    n_before = sum(p.numel() for p in model.parameters())
    sizes = compact(model, opt)
    with torch.no_grad():
        after = first(model(x))
    assert (after - before).abs().max() <= _zoo.EXPORT_ATOL * max(1.0, float(before.abs().max()))
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert slimtrain.dynamic_widths(model) == pytest.approx(widths, abs=1e-4)  # the same K
    for name, d in ((n, model.get_submodule(n)) for n in sizes):
        assert d.num_channels == sizes[name] == min(d.full_channels, kept_channels(d))
    assert float(slimtrain.model_cost(model, full=True).macs) == pytest.approx(float(full.macs))
    assert float(slimtrain.model_cost(model, hard=True).macs) == pytest.approx(float(hard.macs), rel=1e-6)
    # the optimiser holds exactly the model's parameters, with state shaped like them
    ids = {id(p) for p in model.parameters()}
    held = [p for grp in opt.param_groups for p in grp["params"]]
    assert {id(p) for p in held} == ids and len(held) == len(ids)
    for p in held:
        for k, v in opt.state[p].items():
            assert v.dim() == 0 or v.shape == p.shape, (k, v.shape, p.shape)
    w0 = [p.detach().clone() for p in held]
    assert all(math.isfinite(step()) for _ in range(2))
    assert any(not torch.equal(a, p) for a, p in zip(w0, held))  # training went on
    small = slimtrain.export(model.eval())
    with torch.no_grad():
        assert (first(small(x)) - first(model(x))).abs().max() <= _zoo.EXPORT_ATOL * max(1.0, float(before.abs().max()))


def test_compact_per_head_widths_keep_output():
    """make_dynamic(heads="width"): the query/key and value widths per head are cut (inner width updated)."""
    entry = next(e for e in _zoo.ZOO if e.name == "vad_transformer")
    torch.manual_seed(0)
    model, x = entry.build()
    slimtrain.make_dynamic(model.eval(), x, kappa_min=0.25, heads="width")
    _set_widths(model, 3)
    with torch.no_grad():
        before = first(model(x))
    sizes = compact(model)
    assert any(model.get_submodule(n).full_channels > k for n, k in sizes.items() if ".q." in n or ".v." in n)
    with torch.no_grad():
        assert (first(model(x)) - before).abs().max() <= _zoo.EXPORT_ATOL


# -- property: a training step is unchanged on the kept channels -------------------------------------
class MLP(nn.Module):
    def __init__(self, h1: int, h2: int) -> None:
        super().__init__()
        # no bias before the BatchNorm: its gradient is zero up to rounding, which Adam would magnify
        self.fc1, self.bn1 = nn.Linear(5, h1, bias=False), nn.BatchNorm1d(h1)
        self.fc2, self.fc3 = nn.Linear(h1, h2), nn.Linear(h2, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.bn1(self.fc1(x))))))


def _pair(h1, h2, k1, k2):
    torch.manual_seed(0)
    a = MLP(h1, h2)
    x = torch.randn(16, 5)
    slimtrain.make_dynamic(a, x, min_channels=1)
    b = copy.deepcopy(a)
    for m in (a, b):
        m.bn1.dcl.set_width(k1 * h1)  # bn1 (after fc1) holds the DCL of its width
        m.fc2.dcl.set_width(k2 * h2)
    return a, b, x


def _opt(model, kind):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=0.01)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h1=st.integers(2, 12), h2=st.integers(2, 12), k1=st.floats(0.05, 1.0), k2=st.floats(0.05, 1.0),
       whole=st.booleans(), margin=st.integers(0, 3), kind=st.sampled_from(["adam", "sgd"]))
def test_training_step_after_compact_equals_uncut_step(h1, h2, k1, k2, whole, margin, kind):
    if whole:  # whole-number widths (as at a lower bound) keep the channel the training noise reaches
        k1, k2 = max(1, round(k1 * h1)) / h1, max(1, round(k2 * h2)) / h2
    a, b, x = _pair(h1, h2, k1, k2)
    y = torch.randn(16, 3)
    oa, ob = _opt(a, kind), _opt(b, kind)
    objs = [slimtrain.TradeoffLoss(m, alpha=0.3) for m in (a, b)]

    def step(m, o, obj, seed):
        m.train()
        torch.manual_seed(seed)
        o.zero_grad()
        obj(F.mse_loss(m(x), y)).backward()
        o.step()

    for m, o, obj in zip((a, b), (oa, ob), objs):
        step(m, o, obj, 1)
    dcl1, dcl2 = a.bn1.dcl, a.fc2.dcl
    want = {n: min(d.num_channels, kept_channels(d) + margin) for n, d in (("bn1.dcl", dcl1), ("fc2.dcl", dcl2))}
    sizes = compact(a, oa, margin=margin)
    assert sizes == want
    for d in (dcl1, dcl2):  # ceil(K) + margin, or one more channel at a whole-number K
        k = float(d.width.detach())
        assert d.num_channels in {min(d.full_channels, math.ceil(k - 1e-4) + margin),
                                  min(d.full_channels, math.floor(k) + 1 + margin)}
    assert objs[0].current_cost() == pytest.approx(objs[1].current_cost(), rel=1e-6)
    for m, o, obj in zip((a, b), (oa, ob), objs):
        step(m, o, obj, 2)
    n1, n2 = sizes["bn1.dcl"], sizes["fc2.dcl"]
    cut = {"fc1.weight": b.fc1.weight[:n1], "bn1.weight": b.bn1.weight[:n1],
           "bn1.bias": b.bn1.bias[:n1], "bn1.running_mean": b.bn1.running_mean[:n1],
           "bn1.running_var": b.bn1.running_var[:n1], "fc2.weight": b.fc2.weight[:n2, :n1],
           "fc2.bias": b.fc2.bias[:n2], "fc3.weight": b.fc3.weight[:, :n2], "fc3.bias": b.fc3.bias,
           "bn1.dcl.theta": b.bn1.dcl.theta, "fc2.dcl.theta": b.fc2.dcl.theta}
    sa = a.state_dict()
    for k, v in cut.items():
        torch.testing.assert_close(sa[k], v.detach(), rtol=1e-5, atol=1e-6, msg=k)
    # the optimiser state is the uncut state on the kept channels
    key = "momentum_buffer" if kind == "sgd" else "exp_avg"
    torch.testing.assert_close(oa.state[a.fc2.weight][key], ob.state[b.fc2.weight][key][:n2, :n1],
                               rtol=1e-5, atol=1e-7)


def test_compact_again_and_grow_back_to_the_new_size():
    a, _, x = _pair(12, 10, 0.6, 0.5)
    first_sizes = compact(a, margin=2)
    assert first_sizes == {"bn1.dcl": 10, "fc2.dcl": 8}  # ceil(7.2) + 2; K = 5 is whole: 5 + 1 + 2
    a.bn1.dcl.set_width(12)  # above the new N: clamped to it
    assert float(a.bn1.dcl.width.detach()) == 10 and a.bn1.dcl.max_width == 10
    a.train()
    assert a(x).shape == (16, 3)
    a.bn1.dcl.set_width(3.5)
    assert compact(a) == {"bn1.dcl": 4, "fc2.dcl": 6}
    assert a.fc1.out_features == a.bn1.num_features == a.fc2.in_features == 4
    assert compact(a) == {"bn1.dcl": 4, "fc2.dcl": 6}  # nothing left to cut: unchanged
    assert compacted_sizes(a) == {"bn1.dcl": 4, "fc2.dcl": 6}


def test_compact_at_warmup_and_settled():
    a, _, _ = _pair(8, 8, 0.5, 0.5)
    slimtrain.TradeoffLoss(a, alpha=1.0, warmup_steps=3)  # holds every width at full size
    assert compact(a) == {"bn1.dcl": 8, "fc2.dcl": 8}
    b, _, _ = _pair(8, 8, 0.25, 0.5)
    slimtrain.settle_widths(b)  # no noise any more: exactly ceil(K)
    assert compact(b) == {"bn1.dcl": 2, "fc2.dcl": 4}


def test_tradeoff_loss_keeps_its_normaliser_and_budget_meaning():
    a, _, x = _pair(12, 10, 0.4, 0.3)
    obj = slimtrain.TradeoffLoss(a, alpha=1.0, budget="floor", lagrangian=True)
    full, budget, cost = obj.full, obj.budget, obj.current_cost()
    compact(a)
    assert obj.full == full == float(slimtrain.model_cost(a, full=True).flops)
    assert obj.current_cost() == pytest.approx(cost, rel=1e-6)
    fresh = slimtrain.TradeoffLoss(a, alpha=1.0, budget="floor")  # made after the cut: the same meaning
    assert fresh.full == pytest.approx(full) and fresh.budget == pytest.approx(budget)
    rows = slimtrain.layer_costs(a, full=True)
    assert float(sum(r[2] for r in rows)) == pytest.approx(float(slimtrain.model_cost(a, full=True).macs))


# -- errors --------------------------------------------------------------------------------------------
def test_clear_errors():
    a, _, _ = _pair(8, 8, 0.5, 0.5)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(CompactError, match="margin must be an integer >= 0"):
            compact(a, margin=bad)
    with pytest.raises(CompactError, match="needs a dynamic model"):
        compact(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    other = torch.optim.Adam([*a.parameters(), nn.Parameter(torch.zeros(7, 2))])
    with pytest.raises(CompactError, match=r"param_groups\[0\]\['params'\]\[\d+\] \(shape \(7, 2\)\) is not a parameter"):
        compact(a, other)
    assert a.fc1.out_features == 8  # nothing was cut
    with pytest.raises(CompactError, match="not a dynamic width of this model"):
        compact_to(a, {"fc9.dcl": 3})
    with pytest.raises(CompactError, match="cannot cut to 9 channels; it has 8"):
        compact_to(a, {"bn1.dcl": 9})
    with pytest.raises(CompactError, match="optimizer must be a torch.optim.Optimizer"):
        compact(a, object())

    class Gate(DynamicWidth):
        def forward(self, x, dim=None):
            return x

    a.fc2.dcl.__class__ = Gate
    with pytest.raises(CompactError, match="Gate with its own forward"):
        compact(a)


# -- checkpoints and fit ------------------------------------------------------------------------------
def _build_mlp(recipe):
    torch.manual_seed(0)
    m = MLP(*recipe["kwargs"]["h"])
    slimtrain.make_dynamic(m, torch.randn(*recipe["sample_shape"]), min_channels=1)
    return m


register_task("compact-test-mlp", _build_mlp)
RECIPE = make_recipe("compact-test-mlp", {"h": [12, 10]}, [16, 5], {"min_channels": 1})


def _data():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 5, generator=g), torch.randn(64, 3, generator=g)

    def batches(epoch):
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for i in range(4):
            yield x[perm[i * 16:(i + 1) * 16]], y[perm[i * 16:(i + 1) * 16]]
    return x, batches


def _run(tmp_path, epochs, **kw):
    model = _build_mlp(RECIPE)
    opt = make_optimizer(model, lr=1e-2, width_lr=0.2)
    obj = slimtrain.TradeoffLoss(model, alpha=2.0)
    x, batches = _data()
    res = fit(model, batches, F.mse_loss, obj, opt, epochs, progress=False, checkpoint=tmp_path / "m.ckpt",
              recipe=RECIPE, **kw)
    return model, opt, res, x


def test_fit_compacts_every_n_epochs_and_checkpoints_rebuild(tmp_path):
    model, opt, res, x = _run(tmp_path, 4, compact_every=1)
    assert model.fc1.out_features < 12 and model.fc2.out_features < 10
    ck = load_checkpoint(tmp_path / "m.ckpt")
    assert ck["recipe"]["compact"] == compacted_sizes(model)
    again = load_dynamic_model(ck)  # the recipe rebuilds the cut shapes
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x))
    # resume a 6-epoch run from this checkpoint (marked as of 6 epochs): the fresh model is cut first
    payload = torch.load(tmp_path / "m.ckpt", weights_only=True)
    payload["extra"]["training"]["epochs"] = 6
    torch.save(payload, tmp_path / "m.ckpt")
    m2 = _build_mlp(RECIPE)
    o2 = make_optimizer(m2, lr=1e-2, width_lr=0.2)
    res2 = fit(m2, _data()[1], F.mse_loss, slimtrain.TradeoffLoss(m2, alpha=2.0), o2, 6, progress=False,
               checkpoint=tmp_path / "m.ckpt", recipe=RECIPE, resume=True, compact_every=1)
    assert len(res2) == 6 and [r.train_loss for r in res2[:4]] == [r.train_loss for r in res]
    assert all(math.isfinite(r.train_loss) for r in res2)
    assert {id(p) for p in m2.parameters()} == {id(p) for g in o2.param_groups for p in g["params"]}


def test_fit_compaction_does_not_change_the_run(tmp_path):
    """No dropout: the cut runs compute the uncut run's steps on the kept channels (float rounding aside)."""
    plain = _run(tmp_path / "a", 4)
    cut = _run(tmp_path / "b", 4, compact_every=1)
    assert [r.train_loss for r in cut[2]] == pytest.approx([r.train_loss for r in plain[2]], rel=1e-4)
    assert slimtrain.dynamic_widths(cut[0]) == pytest.approx(slimtrain.dynamic_widths(plain[0]), abs=1e-3)


def test_fit_compacting_within_epochs_does_not_change_the_run(tmp_path):
    """``compact_steps``: cuts between optimiser steps inside an epoch, still the uncut run's steps."""
    plain = _run(tmp_path / "a", 3)
    cut = _run(tmp_path / "b", 3, compact_every=0, compact_steps=2)
    assert cut[0].fc1.out_features < 12  # cut inside the epochs (compact_every=0: never at their end)
    assert [r.train_loss for r in cut[2]] == pytest.approx([r.train_loss for r in plain[2]], rel=1e-4)
    assert slimtrain.dynamic_widths(cut[0]) == pytest.approx(slimtrain.dynamic_widths(plain[0]), abs=1e-3)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="compact_steps must be an integer >= 1"):
            _run(tmp_path / "c", 1, compact_steps=bad)


def test_fit_always_compacts_at_the_settle_point(tmp_path):
    model, opt, res, x = _run(tmp_path, 4, settle_epochs=2)
    assert compacted_sizes(model) == {"bn1.dcl": model.bn1.dcl.hard_width, "fc2.dcl": model.fc2.dcl.hard_width}
    assert model.fc1.out_features == model.bn1.dcl.hard_width
    with pytest.raises(ValueError, match="compact_every must be an integer >= 0"):
        _run(tmp_path, 2, compact_every=-1)


def test_a_damaged_compaction_record_is_named(tmp_path):
    model, *_ = _run(tmp_path, 2, compact_every=1)
    payload = torch.load(tmp_path / "m.ckpt", weights_only=True)
    payload["recipe"]["compact"] = {"bn1.dcl": 40}
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="recorded compaction does not fit.*cannot cut to 40 channels"):
        load_dynamic_model(tmp_path / "bad.ckpt")
    payload["recipe"]["compact"] = {"bn1.dcl": "x"}
    torch.save(payload, tmp_path / "bad2.ckpt")
    with pytest.raises(CheckpointError, match="'compact'.*not a dict of layer names to channel counts"):
        load_checkpoint(tmp_path / "bad2.ckpt")


# -- data-parallel: every rank cuts alike, DDP is wrapped again, a crash after a cut resumes ---------
DDP_SCRIPT = """
import json, sys
import torch, torch.nn.functional as F
from torch import nn
import slimtrain
from slimtrain import distributed
from slimtrain.core.compact import compacted_sizes
from slimtrain.train.training import fit, make_optimizer, seed_everything

out = sys.argv[1]

def run(ckpt, crash_at=None, resume=False):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 6, generator=g), torch.randn(96, 3, generator=g)
    slimtrain.make_dynamic(model, x[:8], min_channels=1)
    objective = slimtrain.TradeoffLoss(model, alpha=3.0)
    opt = make_optimizer(model, lr=1e-2, width_lr=0.2)
    sizes = []

    def batches(epoch):
        sizes.append(compacted_sizes(model))
        perm = torch.randperm(96, generator=torch.Generator().manual_seed(epoch))
        for i in range(4):
            if (epoch, i) == crash_at:
                raise RuntimeError("crash")
            idx = perm[i * 24:(i + 1) * 24]
            yield x[idx], y[idx]

    try:
        fit(model, batches, F.mse_loss, objective, opt, 4, progress=False, checkpoint=ckpt, resume=resume,
            compact_every=1, settle_epochs=1)
    except RuntimeError as e:
        assert str(e) == "crash", e
    return {"sizes": sizes, "state": {k: v.tolist() for k, v in model.state_dict().items()}}

res = {"full": run(out + "/a.ckpt"), "crashed": run(out + "/b.ckpt", crash_at=(2, 1)),
       "resumed": run(out + "/b.ckpt", resume=True)}
with open(f"{out}/rank{distributed.world().rank}.json", "w") as f:
    json.dump(res, f)
"""


def test_compaction_under_torchrun_cuts_every_rank_alike_and_resumes(tmp_path):
    import json
    import os
    import subprocess

    script = tmp_path / "ddp_compact.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(slimtrain.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "CI": "true"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["full"] == ranks[1]["full"] and ranks[0]["resumed"] == ranks[1]["resumed"]
    full = ranks[0]["full"]
    assert full["sizes"][0] == {} and full["sizes"][1]  # cut after the first epoch
    assert full["state"]["0.weight"] and len(full["state"]["0.weight"]) < 24
    # the crash in epoch 2 resumes from the (compacted) epoch-1 checkpoint to the same end
    assert ranks[0]["resumed"]["sizes"] == full["sizes"][2:]
    assert ranks[0]["resumed"]["state"] == full["state"]


# -- the CLIs and the report ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["synthetic", "vad", "spoof"])
def test_task_clis_take_compact_every(task, capsys):
    from slimtrain.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([task, "--compact-every", "3"]).compact_every == 3
    assert parser.parse_args([task]).compact_every == 0
    with pytest.raises(SystemExit):
        parser.parse_args([task, "--compact-every", "-1"])
    assert "compact-every must be >= 0" in capsys.readouterr().err


def test_training_cost_table_ratios_and_interval_verdict():
    from slimtrain.tasks.report import training_cost_table

    def row(arm, seed, cpu, metric):
        return {"model": "m", "arm": arm, "seed": seed, "epochs": 8, "cpu_seconds": cpu + 2, "loop_cpu_seconds": cpu,
                "peak_rss_mib": 100,
                "metric_name": "test AUC", "metric": metric}
    rows = [row("plain", s, 10.0, 0.9) for s in (0, 1, 2)] + \
        [row("dcl", s, 11.0, m) for s, m in zip((0, 1, 2), (0.80, 0.82, 0.84))] + \
        [row("compact", s, c, 0.83) for s, c in zip((0, 1, 2), (6.0, 7.0, 8.0))]
    table = training_cost_table(rows)
    line = table.splitlines()[2]
    assert "| 12.0 / 13.0 / 9.0 | 0.75 ± 0.21 | 10.0 / 11.0 / 7.0 | 1.10 | 0.70 ± 0.25 |" in line
    assert line.endswith("| yes |")  # 0.83 lies in 0.82 ± 0.05
    rows[-1]["metric"] = rows[-2]["metric"] = rows[-3]["metric"] = 0.95
    assert training_cost_table(rows).splitlines()[2].endswith("| no |")
    assert training_cost_table([r for r in rows if r["seed"] == 0]).splitlines()[2].endswith("| n = 1: no interval |")


def test_training_after_cutting_attention_heads_equals_the_uncut_step():
    """A compacted ``nn.MultiheadAttention`` trains on: its value rows are masked per kept head (the q/k/v
    blocks are ``num_heads * head_dim`` rows after the cut, no longer ``embed_dim``)."""
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.out = nn.Linear(16, 1)

        def forward(self, x):
            return self.out(self.mha(x, x, x)[0])

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    a = slimtrain.make_dynamic(Attn(), x, kappa_min=0.1)
    a.mha.dcl.set_width(2.4)
    b = copy.deepcopy(a)
    assert compact(a) == {"mha.dcl": 3}
    losses = []
    for m in (a, b):
        m.train()
        loss = m(x).pow(2).mean()
        loss.backward()
        losses.append((loss.detach(), m.mha.dcl.theta.grad))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-7)


def test_spoof_config_takes_compact_steps():
    from slimtrain.tasks.spoof.train import SpoofConfig

    assert SpoofConfig(compact_steps=8).validate().as_dict()["compact_steps"] == 8
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="compact-steps must be an integer >= 1"):
            SpoofConfig(compact_steps=bad).validate()
