"""slimtrain.integrations.lightning.DynamicWidthCallback: a LightningModule trained by the Lightning
Trainer (CPU, a few steps, loggers only under tmp_path) shrinks, logs, settles, resumes and exports."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimtrain
from slimtrain.core.dcl import DynamicWidth
from slimtrain.train.training import make_optimizer

L = pytest.importorskip("lightning.pytorch")
from slimtrain.integrations import IntegrationError  # noqa: E402
from slimtrain.integrations.lightning import DynamicWidthCallback  # noqa: E402

from _helpers import count_macs  # noqa: E402

SAMPLES = 400


class AudioNet(nn.Module):
    """A small 1-D conv audio classifier: waveform (B, T) -> logits (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 16, 9, stride=4)
        self.c2 = nn.Conv1d(16, 16, 5, stride=2)
        self.fc = nn.Linear(16, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x.unsqueeze(1)))))
        return self.out(F.relu(self.fc(h.mean(-1))))


class Classifier(L.LightningModule):
    def __init__(self, seed: int = 0, automatic: bool = True, optimizer: str = "split") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = slimtrain.make_dynamic(AudioNet(), torch.randn(2, SAMPLES), kappa_min=0.25)
        self.automatic_optimization = automatic
        self.optimizer = optimizer
        self.task_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.task_losses.append(float(loss.detach()))
        if not self.automatic_optimization:  # forgets callback.objective(loss)
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        if self.optimizer == "weights_only":
            return torch.optim.Adam([p for n, p in self.named_parameters() if not n.endswith("theta")], lr=1e-3)
        return make_optimizer(self, lr=1e-3, width_lr=0.1)


def _data(n: int = 32, batch: int = 4):
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(n, SAMPLES, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


def _trainer(tmp_path, callbacks, max_steps: int = 8, **kw):
    kw.setdefault("logger", L.loggers.CSVLogger(str(tmp_path), name="csv", version=0))
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks, log_every_n_steps=1,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def _rows(tmp_path) -> list[dict]:
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


class LossProbe(L.Callback):
    """What training_step handed Lightning (after the callback's wrapper) on every batch."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_fit_shrinks_logs_settles_and_exports(tmp_path):
    module = Classifier()
    full_params = sum(p.numel() for n, p in module.net.named_parameters() if not n.endswith("theta"))
    objective = slimtrain.TradeoffLoss(module.net, alpha=2.0)
    cb = DynamicWidthCallback(objective, settle_at=0.5, export_path=tmp_path / "small")
    probe = LossProbe()
    _trainer(tmp_path, [cb, probe]).fit(module, _data())

    # the trade-off term is in the loss Lightning backpropagated: task loss + a positive penalty
    assert len(probe.losses) == 8
    gaps = [total - task for total, task in zip(probe.losses, module.task_losses)]
    assert all(g > 0.05 for g in gaps), gaps
    # the widths moved: some layer exports narrower than it was
    dcls = [m for m in module.net.modules() if isinstance(m, DynamicWidth)]
    assert any(d.hard_width < d.num_channels for d in dcls)
    # settled after 4 of 8 steps: widths frozen, constant in the log from there on, settled flag 0 -> 1
    assert all(d.frozen and not d.theta.requires_grad for d in dcls)
    rows = _rows(tmp_path)
    width_keys = [k for k in rows[0] if k.startswith("slimtrain/width/")]
    assert len(width_keys) == len(dcls)
    for key in ("slimtrain/cost", "slimtrain/cost_rel", "slimtrain/macs_hard", "slimtrain/params_hard",
                "slimtrain/penalty", "slimtrain/settled"):
        assert key in rows[0]
    steps = [r for r in rows if r["slimtrain/settled"] != ""]
    assert [float(r["slimtrain/settled"]) for r in steps] == [0.0] * 3 + [1.0] * 5
    after = [[float(r[k]) for k in width_keys] for r in steps[3:]]
    assert all(a == after[0] for a in after)
    before = [[float(r[k]) for k in width_keys] for r in steps[:4]]
    assert before[0] != before[3]
    assert float(steps[-1]["slimtrain/cost_rel"]) < 1.0

    # exported: fewer parameters and MACs, equal to the dynamic model in eval mode, and written to disk
    small = cb.exported
    x = torch.randn(5, SAMPLES)
    module.net.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), module.net(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < full_params
    assert count_macs(small, x[:1]) < count_macs(AudioNet(), x[:1])
    loaded = torch.load(tmp_path / "small" / "model.pt", weights_only=False)
    summary = json.loads((tmp_path / "small" / "export.json").read_text())
    assert summary["widths"] == {n: m.hard_width for n, m in module.net.named_modules() if isinstance(m, DynamicWidth)}
    assert summary["exported"]["params"] == sum(p.numel() for p in small.parameters())
    assert summary["exported"]["macs"] < summary["full"]["macs"]
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    rebuilt = slimtrain.integrations.load_export(tmp_path / "small", Classifier(seed=5).net)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))
    # the user's training_step is theirs again after fit
    assert "training_step" not in module.__dict__


def _state(module: Classifier, objective) -> dict:
    return {"weights": {k: v.clone() for k, v in module.state_dict().items()}, "mu": float(objective.mu),
            "steps": objective.steps,
            "frozen": [m.frozen for m in module.net.modules() if isinstance(m, DynamicWidth)]}


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_from_a_lightning_checkpoint_continues_the_run(tmp_path, zero_noise):
    """8 steps in one go == 4 steps, a checkpoint, and 4 more in a new process-like run (noise off, data in
    order, so the runs are deterministic): weights, widths, the settle, the Lagrange multiplier and the
    objective's step counter (warm-up) all come back."""
    def run(root, max_steps, ckpt=None, save=False):
        module = Classifier()
        full = float(slimtrain.model_cost(module.net, full=True).flops)
        objective = slimtrain.TradeoffLoss(module.net, budget=0.5 * full, lagrangian=True, lr_mu=0.5, warmup_steps=1)
        cbs = [DynamicWidthCallback(objective, settle_at=3)]
        if save:
            cbs.append(L.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=4, save_top_k=-1))
        _trainer(root, cbs, max_steps=max_steps, logger=False, enable_checkpointing=save).fit(
            module, _data(n=16), ckpt_path=ckpt)
        return module, objective

    straight, obj_a = run(tmp_path / "a", 8)
    _, obj_b = run(tmp_path / "b", 4, save=True)
    (ckpt,) = (tmp_path / "b" / "ckpt").glob("*.ckpt")
    assert obj_b.steps == 4 and float(obj_b.mu) > 0  # the multiplier grew: a resume must restore it
    resumed, obj_c = run(tmp_path / "c", 8, ckpt=str(ckpt))
    a, c = _state(straight, obj_a), _state(resumed, obj_c)
    assert c["frozen"] == a["frozen"] == [True] * len(a["frozen"])
    assert c["steps"] == a["steps"] == 8
    assert c["mu"] == pytest.approx(a["mu"], rel=1e-6)
    for k, v in a["weights"].items():
        assert torch.allclose(c["weights"][k], v, atol=1e-6), k


def test_gradient_accumulation_adds_the_term_per_batch_and_logs_per_optimizer_step(tmp_path):
    module = Classifier()
    objective = slimtrain.TradeoffLoss(module.net, alpha=1.0)
    _trainer(tmp_path, [DynamicWidthCallback(objective, settle_at=2)], max_steps=3,
             accumulate_grad_batches=2).fit(module, _data())
    assert objective.steps == 6  # every micro-batch's loss got the term (Lightning divides each by 2)
    rows = [r for r in _rows(tmp_path) if r.get("slimtrain/settled", "") != ""]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]  # one row per optimizer step
    assert [float(r["slimtrain/settled"]) for r in rows] == [0.0, 1.0, 1.0]


def test_manual_optimization_without_the_objective_is_named(tmp_path):
    module = Classifier(automatic=False)
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(module.net, alpha=1.0))
    with pytest.raises(IntegrationError, match=r"manual optimization.*callback\.objective\(loss\)"):
        _trainer(tmp_path, [cb], max_steps=2, logger=False).fit(module, _data())


def test_optimizer_that_leaves_out_the_widths_is_named(tmp_path):
    module = Classifier(optimizer="weights_only")
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(module.net, alpha=1.0))
    with pytest.raises(IntegrationError, match=r"does not train the width 'c1\.dcl\.theta'.*make_optimizer"):
        _trainer(tmp_path, [cb], max_steps=2, logger=False).fit(module, _data())


def test_objective_of_another_model_is_named(tmp_path):
    module, other = Classifier(), Classifier(seed=1)
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(other.net, alpha=1.0))
    with pytest.raises(IntegrationError, match="not part of the LightningModule"):
        _trainer(tmp_path, [cb], max_steps=2, logger=False).fit(module, _data())
