"""slimtrain.integrations.transformers.DynamicWidthCallback: a tiny random-init wav2vec2 audio classifier
fine-tuned by the transformers Trainer (CPU, a few steps, nothing downloaded, no report_to side effects)
shrinks, logs, settles, resumes from a Trainer checkpoint and exports."""
from __future__ import annotations

import json

import pytest
import torch

import slimtrain
from slimtrain.core.dcl import DynamicWidth
from slimtrain.train.training import make_optimizer

tf = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from slimtrain.integrations import IntegrationError, load_export  # noqa: E402
from slimtrain.integrations.transformers import DynamicWidthCallback  # noqa: E402

from _helpers import count_macs  # noqa: E402

SAMPLES = 400


def _classifier(seed: int = 0):
    """Wav2Vec2ForSequenceClassification from a tiny config (random weights), made dynamic."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
                         mask_time_prob=0.0, do_stable_layer_norm=False, feat_extract_norm="group",
                         attn_implementation="eager", num_labels=3, classifier_proj_size=16)
    model = Wav2Vec2ForSequenceClassification(cfg)
    return slimtrain.make_dynamic(model, torch.randn(2, SAMPLES), kappa_min=0.25)


def _data(n: int = 32):
    g = torch.Generator().manual_seed(1)
    return [{"input_values": torch.randn(SAMPLES, generator=g), "labels": i % 3} for i in range(n)]


def _args(out, max_steps: int = 8, **kw) -> TrainingArguments:
    kw.setdefault("save_strategy", "no")
    kw.setdefault("report_to", "none")
    return TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1,
                             use_cpu=True, disable_tqdm=True, seed=0, **kw)


def _trainer(model, out, callbacks=(), max_steps: int = 8, optimizer: bool = True, **kw) -> Trainer:
    opt = (make_optimizer(model, lr=1e-3, width_lr=0.1), None) if optimizer else (None, None)
    return Trainer(model=model, args=_args(out, max_steps, **kw), train_dataset=_data(), optimizers=opt,
                   callbacks=list(callbacks))


class LogRecorder(TrainerCallback):
    """Stands in for a report_to integration: records what on_log hands every callback."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _dcls(model) -> list[DynamicWidth]:
    return [m for m in model.modules() if isinstance(m, DynamicWidth)]


def test_trainer_shrinks_logs_settles_and_exports(tmp_path):
    model = _classifier()
    full_params = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("theta"))
    rec = LogRecorder()
    trainer = _trainer(model, tmp_path, [rec], report_to="tensorboard")  # writes under tmp_path/runs
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=2.0), settle_at=0.5,
                              export_path=tmp_path / "small").attach(trainer)
    with pytest.warns(UserWarning, match=r"model\.pt' not written.*load_export"):  # weight_norm: not picklable
        trainer.train()

    dcls = _dcls(model)
    assert any(d.hard_width < d.num_channels for d in dcls)  # the widths moved
    assert all(d.frozen and not d.theta.requires_grad for d in dcls)  # settled
    # every training log (and so every report_to integration) carries the widths, cost and settle flag
    steps = [r for r in rec.logs if "loss" in r]
    assert len(steps) == 8
    width_keys = sorted(k for k in steps[0] if k.startswith("slimtrain/width/"))
    assert len(width_keys) == len(dcls)
    for key in ("slimtrain/cost", "slimtrain/cost_rel", "slimtrain/macs_hard", "slimtrain/params_hard",
                "slimtrain/penalty"):
        assert key in steps[0] and key in trainer.state.log_history[0]
    assert [r["slimtrain/settled"] for r in steps] == [0.0] * 3 + [1.0] * 5  # settled after step 4 of 8
    widths = [[r[k] for k in width_keys] for r in steps]
    assert all(w == widths[3] for w in widths[3:]) and widths[0] != widths[3]
    assert steps[-1]["slimtrain/cost_rel"] < 1.0
    assert not any(k.startswith("slimtrain/") for r in rec.logs for k in r if "loss" not in r and "train_loss" not in r)
    # ... and a real report_to integration wrote them: TensorBoard scalars, one per training step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    cost = acc.Scalars("train/slimtrain/cost")[:8]  # (the final train_loss log adds a 9th at step 8)
    assert [e.step for e in cost] == list(range(1, 9))
    assert [e.value for e in cost] == pytest.approx([r["slimtrain/cost"] for r in steps], rel=1e-6)

    small = cb.exported
    x = torch.randn(3, SAMPLES)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(small(x).logits, model(x).logits, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < full_params
    assert count_macs(small, x[:1]) < count_macs(_classifier(), x[:1])
    summary = json.loads((tmp_path / "small" / "export.json").read_text())
    assert summary["widths"] == {n: m.hard_width for n, m in model.named_modules() if isinstance(m, DynamicWidth)}
    assert summary["files"] == ["model_state.pt", "export.json"]
    assert not (tmp_path / "small" / "model.pt").exists()
    rebuilt = load_export(tmp_path / "small", _classifier(seed=3))
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, small(x).logits)


def test_compute_loss_adds_the_term_in_training_only(tmp_path, zero_noise):
    model = _classifier()
    trainer = _trainer(model, tmp_path)
    objective = slimtrain.TradeoffLoss(model, alpha=2.0)
    DynamicWidthCallback(objective).attach(trainer)
    thetas = [d.theta for d in _dcls(model)]
    batch = {"input_values": torch.randn(4, SAMPLES), "labels": torch.tensor([0, 1, 2, 0])}

    model.train()
    task = model(**batch).loss
    g_task = torch.autograd.grad(task, thetas)
    total = trainer.compute_loss(model, dict(batch))
    penalty = objective.last["penalty"]
    assert penalty > 0.5 and float((total - task).detach()) == pytest.approx(penalty, rel=1e-5)
    g_total = torch.autograd.grad(total, thetas)
    # the cost's gradient reaches every width, pushing it down (cost grows with K)
    assert all(float(a - b) > 0 for a, b in zip(g_total, g_task))

    # a loss the Trainer takes as scaled for accumulation (normalised over 2 micro-batches) gets half the term
    trainer.loss_is_scaled_for_ga, trainer.current_gradient_accumulation_steps = True, 2
    total = trainer.compute_loss(model, dict(batch))
    assert float((total - task).detach()) == pytest.approx(penalty / 2, rel=1e-4)

    model.eval()  # evaluation: the task loss only
    with torch.no_grad():
        loss, _ = trainer.compute_loss(model, dict(batch), return_outputs=True)
        assert float(loss) == pytest.approx(float(model(**batch).loss), rel=1e-6)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_resume_from_a_trainer_checkpoint_continues_the_run(tmp_path, zero_noise, restore_callbacks):
    """8 steps in one go == 4 steps, a Trainer checkpoint, and 4 more resumed in a new Trainer (noise off):
    weights, widths, the settle, the Lagrange multiplier and the objective's step counter all come back,
    whether or not the Trainer rebuilds stateful callbacks from the checkpoint."""
    def run(out, stop=None, resume=None):
        model = _classifier()
        full = float(slimtrain.model_cost(model, full=True).flops)
        objective = slimtrain.TradeoffLoss(model, budget=0.5 * full, lagrangian=True, lr_mu=0.5, warmup_steps=1)
        extra = dict(save_strategy="steps", save_steps=4) if stop else {}
        trainer = _trainer(model, out, [StopAt(stop)] if stop else [],
                           restore_callback_states_from_checkpoint=restore_callbacks, **extra)
        cb = DynamicWidthCallback(objective, settle_at=3).attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return model, objective, cb

    straight, obj_a, _ = run(tmp_path / "a")
    _, obj_b, _ = run(tmp_path / "b", stop=4)
    assert obj_b.steps == 4 and float(obj_b.mu) > 0
    resumed, obj_c, cb = run(tmp_path / "c", resume=str(tmp_path / "b" / "checkpoint-4"))
    assert [d.frozen for d in _dcls(resumed)] == [d.frozen for d in _dcls(straight)] == [True] * 4
    assert obj_c.steps == obj_a.steps == 8
    assert float(obj_c.mu) == pytest.approx(float(obj_a.mu), rel=1e-6)
    a, c = straight.state_dict(), resumed.state_dict()
    for k, v in a.items():
        assert torch.allclose(c[k], v, atol=1e-6), k
    # the next checkpoint would carry the resumed run's state (the carrier is linked to this callback)
    assert cb._carrier(cb.trainer).state()["attributes"]["saved"]["steps"] == 8


def test_callback_that_was_not_attached_is_named(tmp_path):
    model = _classifier()
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=1.0))
    trainer = _trainer(model, tmp_path, [cb], max_steps=1)
    with pytest.raises(IntegrationError, match=r"not attached.*callback\.attach\(trainer\)"):
        trainer.train()


def test_optimizer_checks(tmp_path):
    model = _classifier()
    trainer = _trainer(model, tmp_path, max_steps=1, optimizer=False)  # the Trainer's AdamW at lr 5e-5
    DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=1.0)).attach(trainer)
    with pytest.warns(UserWarning, match=r"widths train at lr=5e-05.*make_optimizer"):
        trainer.train()

    model = _classifier()
    weights = [p for n, p in model.named_parameters() if not n.endswith("theta")]
    trainer = Trainer(model=model, args=_args(tmp_path, 1), train_dataset=_data(),
                      optimizers=(torch.optim.Adam(weights, lr=1e-3), None))
    DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=1.0)).attach(trainer)
    with pytest.raises(IntegrationError, match=r"does not train the width '.*\.dcl\.theta' \(4 of 4"):
        trainer.train()


def test_attach_errors(tmp_path):
    model, other = _classifier(), _classifier(seed=1)
    trainer = _trainer(model, tmp_path)
    with pytest.raises(IntegrationError, match="not part of the model being trained"):
        DynamicWidthCallback(slimtrain.TradeoffLoss(other, alpha=1.0)).attach(trainer)
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=1.0)).attach(trainer)
    assert cb.attach(trainer) is cb  # attaching twice to the same Trainer changes nothing
    assert sum(isinstance(c, DynamicWidthCallback) for c in trainer.callback_handler.callbacks) == 1
    with pytest.raises(IntegrationError, match="already has another DynamicWidthCallback"):
        DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=1.0)).attach(trainer)
    with pytest.raises(IntegrationError, match="already attached to another Trainer"):
        cb.attach(_trainer(model, tmp_path / "2"))
