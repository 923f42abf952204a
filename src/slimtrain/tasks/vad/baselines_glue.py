"""The pruning and gate baselines of the VAD sweep, on top of :mod:`slimtrain.tasks.baselines`.

* ``prune``: the full-width model trained for ``pretrain_epochs`` (default ``epochs``; a given
  ``full_checkpoint`` is used instead when it exists) is pruned to the MACs the DCL run reached, then
  fine-tuned for ``epochs``. The sweep splits a DCL run's epochs between the two, so both get the
  same total training. torch-pruning cannot prune the mel filterbank (its band count), and at
  80 bands the filterbank alone costs more than most DCL points, so the bands are first pruned by
  magnitude to the DCL run's band count (:func:`prune_mel_bands`: keep the bands whose weights into
  the first layer, scaled by the input BatchNorm, have the largest L2 norm); torch-pruning
  (structured L2 magnitude, :func:`slimtrain.tasks.baselines.prune_to_macs`) then removes channels
  of the other layers until the total MACs match. The output layer and the Transformer's
  query/key/value widths (which DCL does not change either) are left alone.
* ``gates``: hard-concrete (L0) channel gates on the DCL positions (mel bands included), trained from
  scratch in one run of ``epochs`` with a budget interval ``[low, high)`` on the expected FLOPs
  relative to the full model (the paper's SG models pair kappa_min with ``[kappa_min, 2 kappa_min)``);
  weights Adam 3e-3, gate log-alphas Adam 0.05; exported with closed channels removed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...train.checkpoint import load_dynamic_model
from ...train.training import make_optimizer, seed_everything
from .data import VadSplit
from ...apps.vad.models import build_vad_model
from .train import SAMPLE_SECONDS, SAMPLE_SHAPE, VadRunConfig, _mel_bands, _plain_widths, evaluate_model, exported_cost, train_loop

__all__ = ["prune_baseline", "gate_baseline"]


def _full_model(job: dict, data: dict[str, VadSplit]) -> nn.Module:
    fam, seed = job["run"]["family"], job["run"]["seed"]
    epochs = job["run"].get("pretrain_epochs", job["run"]["epochs"])
    ckpt = job.get("full_checkpoint")
    if ckpt and Path(ckpt).is_file():
        return load_dynamic_model(ckpt).train()
    cfg = VadRunConfig(family=fam, kappa_min=None, epochs=epochs, seed=seed)
    seed_everything(seed)
    model = build_vad_model(fam)
    train_loop(model, data["train"], epochs, make_optimizer(model, cfg.lr), batch_size=cfg.batch_size, seed=seed)
    return model


def _row(job: dict, model: nn.Module, data: dict[str, VadSplit], extra: dict) -> dict:
    model.eval()
    flops_s, params = exported_cost(model)
    return {"family": job["run"]["family"], "method": job["kind"], "mel_bands": _mel_bands(model),
            "widths": _plain_widths(model), "mflops_per_s": flops_s / 1e6, "params": int(params),
            **evaluate_model(model, data["val"], data["test"]), "epochs": job["run"]["epochs"],
            "seed": job["run"]["seed"], **extra}


def prune_mel_bands(model: nn.Module, n_keep: int) -> nn.Module:
    """Keep the ``n_keep`` mel bands of a plain VAD model with the largest weight magnitude, in place.

    A band's importance is the L2 norm of the first layer's weights reading it (``conv1`` of the
    CRNN, ``proj`` of the Transformer), scaled by the input BatchNorm's gain for that band. The
    filterbank rows, the BatchNorm and the first layer's input columns are sliced to the kept bands.
    """
    first = model.conv1 if hasattr(model, "conv1") else model.proj
    n = model.frontend.n_mels
    if not 1 <= n_keep <= n:
        raise ValueError(f"cannot keep {n_keep} of {n} mel bands")
    if n_keep == n:
        return model
    bn = model.norm
    with torch.no_grad():
        gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()
        w = first.weight
        per_band = w.transpose(0, 1).reshape(n, -1).norm(dim=1) * gain
        keep = torch.sort(torch.topk(per_band, n_keep).indices).values
        model.frontend.fbank = model.frontend.fbank[keep].clone()
        new_bn = nn.BatchNorm1d(n_keep, eps=bn.eps, momentum=bn.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[keep])
        new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        model.norm = new_bn
        first.weight = nn.Parameter(w[:, keep].clone())
        if isinstance(first, nn.Conv1d):
            first.in_channels = n_keep
        else:
            first.in_features = n_keep
    return model


def prune_baseline(job: dict, data: dict[str, VadSplit], *, model: nn.Module | None = None, lr: float = 3e-3,
                   tolerance: float = 0.05) -> dict:
    """Prune a trained full model to ``job['target_mflops']`` (per second of audio) and fine-tune
    ``job['run']['epochs']`` epochs (Adam ``lr``). ``model``: the trained full model to prune (changed
    in place; default: read or trained by ``job``); ``tolerance``: accepted relative MAC mismatch."""
    from ..baselines import prune_to_macs

    epochs, seed = job["run"]["epochs"], job["run"]["seed"]
    model = (model if model is not None else _full_model(job, data)).eval()
    if job.get("mel_bands"):
        prune_mel_bands(model, int(job["mel_bands"]))
    sample = torch.zeros(1, SAMPLE_SHAPE[1])
    target_macs = job["target_mflops"] * 1e6 / 2 * SAMPLE_SECONDS  # MACs per 4 s example

    def finetune(m: nn.Module, step: int) -> None:
        seed_everything(seed + step)
        train_loop(m, data["train"], epochs, make_optimizer(m, lr), seed=seed + step)

    # the attention query/key/value widths stay (heads and q.k products must agree; DCL keeps them too)
    attention = [lin for blk in getattr(model, "blocks", []) for lin in (blk.q, blk.k, blk.v)]
    res = prune_to_macs(model, sample, target_macs, ignored_layers=attention, tolerance=tolerance, finetune=finetune,
                        seed=seed)
    return _row(job, res.model, data, {"target_mflops": job["target_mflops"], "unpruned": str(res.unpruned),
                                       "pretrain_epochs": job["run"].get("pretrain_epochs", epochs)})


GATE_LR = 0.05  # Adam learning rate of the gates' log_alpha (the weights use 3e-3)


def gate_baseline(job: dict, data: dict[str, VadSplit]) -> dict:
    """Hard-concrete gates with a relative budget interval, one run of ``epochs``, then export."""
    from ..baselines import GateBudgetLoss, add_gates, export_gated, make_gate_optimizer

    fam, epochs, seed = job["run"]["family"], job["run"]["epochs"], job["run"]["seed"]
    lo, hi = job["interval"]
    seed_everything(seed)
    model = build_vad_model(fam)
    torch.manual_seed(0)
    add_gates(model, torch.randn(*SAMPLE_SHAPE) * 0.1)  # the mel bands get gates too, as in the paper's SG
    seed_everything(seed)
    objective = GateBudgetLoss(model, low=lo, high=hi, relative=True, metric="flops")
    optimizer = make_gate_optimizer(model, lr=3e-3, gate_lr=GATE_LR)
    train_loop(model, data["train"], epochs, optimizer, seed=seed, penalty=objective)
    model.eval()
    plain = export_gated(model).eval()
    return _row(job, plain, data, {"kappa_min": lo, "expected_cost_rel": round(objective.last.get("cost_rel", float("nan")), 4)})
