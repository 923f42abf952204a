"""Train widths inside the Lightning Trainer and the transformers Trainer (slimtrain.integrations).

Two tiny audio classifiers on random waveforms (random weights, nothing downloaded), a few optimizer
steps each, with ``DynamicWidthCallback``: the trade-off term joins the framework's loss, the widths
settle half-way, and the callback exports the model at the end. Prints, for each, the widths before
and after, the per-item MACs and parameters of the full and the exported model, and the largest
difference between the exported model and the dynamic one in eval mode. A few seconds on a CPU.

    pip install "slimtrain[lightning,hf]"
    PYTHONPATH=src python examples/framework_callbacks.py [--steps 16] [--alpha 2.0] [--out runs/callbacks]
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import slimtrain
from slimtrain.train.training import make_optimizer

SAMPLES = 400  # 25 ms at 16 kHz


class Net(nn.Module):
    """A small conv audio classifier: waveform (B, T) -> logits (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(1, 16, 9, stride=4), nn.Conv1d(16, 16, 5, stride=2)
        self.fc, self.out = nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x.unsqueeze(1)))))
        return self.out(F.relu(self.fc(h.mean(-1))))


def _summary(name: str, dynamic: nn.Module, small: nn.Module, out: Path, logits=lambda y: y) -> None:
    x = torch.randn(4, SAMPLES)
    dynamic.eval()
    with torch.no_grad():
        err = float((logits(small(x)) - logits(dynamic(x))).abs().max())
    s = json.loads((out / "export.json").read_text())
    print(f"{name}: widths {s['widths']}\n  MACs per item {s['full']['macs']:,.0f} -> {s['exported']['macs']:,.0f}, "
          f"params {s['full']['params']:,.0f} -> {s['exported']['params']:,.0f}; "
          f"export vs dynamic (eval) max abs diff {err:.1e}; written to {out}")


def lightning_demo(steps: int, alpha: float, out: Path) -> None:
    import lightning.pytorch as L

    from slimtrain.integrations.lightning import DynamicWidthCallback

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = slimtrain.make_dynamic(Net(), torch.randn(2, SAMPLES), kappa_min=0.25)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("task_loss", loss)
            return loss  # the callback adds the trade-off term to what training_step returns

        def configure_optimizers(self):
            return make_optimizer(self, lr=1e-3, width_lr=0.1)

    torch.manual_seed(0)
    module = Classifier()
    data = torch.utils.data.TensorDataset(torch.randn(64, SAMPLES), torch.randint(0, 3, (64,)))
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(module.net, alpha=alpha), settle_at=0.5,
                              export_path=out / "lightning")
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, callbacks=[cb], log_every_n_steps=1,
                        logger=L.loggers.CSVLogger(str(out), name="lightning_logs"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    _summary("Lightning, conv classifier", module.net, cb.exported, out / "lightning")


def transformers_demo(steps: int, alpha: float, out: Path) -> None:
    from transformers import Trainer, TrainingArguments, Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from slimtrain.integrations.transformers import DynamicWidthCallback

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, num_labels=3, classifier_proj_size=16,
                         attn_implementation="eager")
    model = slimtrain.make_dynamic(Wav2Vec2ForSequenceClassification(cfg), torch.randn(2, SAMPLES), kappa_min=0.25)
    data = [{"input_values": torch.randn(SAMPLES), "labels": i % 3} for i in range(64)]
    args = TrainingArguments(output_dir=str(out / "hf"), max_steps=steps, per_device_train_batch_size=4,
                             logging_steps=max(1, steps // 4), report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=(make_optimizer(model, lr=1e-3, width_lr=0.1), None))
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=alpha), settle_at=0.5,
                              export_path=out / "transformers").attach(trainer)
    with warnings.catch_warnings():  # wav2vec2's weight_norm: model.pt cannot be pickled; model_state.pt is written
        warnings.simplefilter("ignore", UserWarning)
        trainer.train()
    _summary("transformers Trainer, wav2vec2 classifier", model, cb.exported, out / "transformers",
             logits=lambda y: y.logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("runs/callbacks"))
    a = ap.parse_args()
    lightning_demo(a.steps, a.alpha, a.out)
    transformers_demo(a.steps, a.alpha, a.out)


if __name__ == "__main__":
    main()
