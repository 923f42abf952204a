"""One run of a study on top of :func:`slimtrain.train.training.fit`: build, make dynamic, train, export, score."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...train import distributed, training
from ...train.checkpoint import load_checkpoint, make_recipe, register_task, save_checkpoint
from ...core.cost import model_cost
from ...core.export import export
from ...core.graph import dynamic_widths, make_dynamic
from ...core.loss import TradeoffLoss
from ...train.record import WidthRecorder
from .config import StudyConfig
from .spec import Study, StudyData

__all__ = ["train_run", "register_builder", "dynamic_model", "fit_epochs", "exported", "output_distiller"]

#: examples in the trace batch of ``make_dynamic`` (taken from the training split)
SAMPLE_ITEMS = 2


def output_distiller(model: nn.Module, teacher, probe: torch.Tensor, *, weight: float = 1.0,
                     temperature: float = 2.0, outputs: str = "outputs", hint: str = "it must score the same task"):
    """A :class:`slimtrain.Distiller` on ``model``'s logits (``output="bce"``), with a teacher whose outputs on
    ``probe`` (a few training inputs) have ``model``'s shape; a teacher that does not is a named ``ValueError``
    (``outputs`` and ``hint`` say what the task's outputs are), a bad weight or temperature a ``DistillError``.
    The probe runs in eval mode: a training-mode call would move the model's BatchNorm statistics."""
    from ...core.distill import Distiller

    kd = Distiller(teacher, output="bce", temperature=temperature, weight=weight).to("cpu")
    was = model.training
    model.eval()
    with torch.no_grad():
        t, s = tuple(kd.teacher_output(probe).shape), tuple(model(probe).shape)
    model.train(was)
    if t != s:
        raise ValueError(f"the teacher gives {outputs} of shape {t} for {probe.shape[-1]} samples, the model {s}: "
                         f"{hint}")
    return kd


def dynamic_model(study: Study, kwargs: dict, sample_shape, kappa_min: Optional[float]) -> nn.Module:
    """The plain model of ``kwargs``, made dynamic (traced on a fixed random batch of ``sample_shape``) unless
    ``kappa_min`` is None; the same model whenever a checkpoint is rebuilt."""
    model = study.build_model(**kwargs)
    if kappa_min is not None:
        sample = torch.randn(*sample_shape, generator=torch.Generator().manual_seed(0)) * 0.1
        make_dynamic(model, sample, kappa_min=float(kappa_min))
    return model


def fit_epochs(model: nn.Module, cfg, x: torch.Tensor, y: torch.Tensor, task_loss, objective, optimizer,
               epochs: int, *, recorder: Optional[WidthRecorder] = None, progress: bool = False, desc: str = "train",
               device=None, settle_epochs: int = 0, augment=None, **fit_options) -> list:
    """The training loop of the studies: :func:`slimtrain.train.training.fit` for ``epochs`` epochs on batches of
    ``cfg.batch_size`` rows of ``(x, y)``, shuffled by ``(cfg.seed, epoch)``, every learning rate cosine-decayed
    to ``cfg.lr_final`` times its start; a dynamic model (``objective`` given) is cut every
    ``cfg.compact_every`` epochs; ``augment(inputs, generator)`` transforms every training batch (seeded per
    step). ``fit_options`` go to ``fit`` (checkpoint, recipe, resume, ...)."""
    batches = training.shuffled_cosine_batches(x, y, optimizer, batch_size=cfg.batch_size, epochs=epochs,
                                               seed=cfg.seed, lr_final=cfg.lr_final, augment=augment)
    return training.fit(model, batches, task_loss, objective, optimizer, epochs, recorder=recorder, progress=progress,
                        desc=desc, device=device, settle_epochs=settle_epochs,
                        compact_every=cfg.compact_every if objective is not None else 0, **fit_options)


@torch.no_grad()
def exported(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, dict, dict, float]:
    """``(exported model, hard widths, continuous widths, max |exported - dynamic|)`` of a trained dynamic
    ``model`` in eval mode; the difference is measured on ``probe`` (a few inputs)."""
    widths = {k: int(v) for k, v in dynamic_widths(model, hard=True).items()}
    cont = {k: round(v, 3) for k, v in dynamic_widths(model, hard=False).items()}
    small = export(model).eval()
    return small, widths, cont, float((model(probe) - small(probe)).abs().max())


def register_builder(study: Study) -> None:
    """Let :func:`slimtrain.train.checkpoint.load_dynamic_model` rebuild the checkpoints of ``study``."""

    def build(recipe: dict) -> nn.Module:
        dyn = recipe.get("dynamic") or {}
        return dynamic_model(study, dict(recipe["kwargs"]), recipe["sample_shape"], dyn.get("kappa_min"))

    register_task(study.name, build)


def train_run(study: Study, cfg: StudyConfig, data: StudyData, *, width: Optional[int] = None,
              checkpoint: Optional[str | Path] = None, record_csv: Optional[str | Path] = None,
              progress: bool = False, threads: Optional[int] = None, device: str = "cpu",
              resume: bool = False) -> tuple[nn.Module, dict]:
    """Train one model of ``study`` and return ``(exported model, row)``.

    ``cfg.kappa_min`` set: DCLs on every width :func:`slimtrain.make_dynamic` finds, trained on the task loss
    plus ``alpha * cost(K)/cost(full)`` (or a hinge at ``cfg.budget``), the last ``settle_epochs`` at fixed
    widths; ``None``: the plain model of base ``width`` (default ``cfg.width``) on the task loss alone. The row
    holds the method, settings, exported widths and cost per example, every metric of the study on the test
    split and ``export_max_abs_diff`` (the exported model against the dynamic one on test inputs).

    ``checkpoint`` is also written after every epoch; ``resume=True`` continues a killed run from it (one
    trained with other settings is refused, naming them)."""
    cfg.validate()
    if resume and checkpoint is not None and Path(checkpoint).exists():
        _check_resumable(Path(checkpoint), cfg, width)
    dev = distributed.resolve_device(device)
    main = distributed.is_main()
    t0 = time.perf_counter()
    kwargs = study.model_kwargs(cfg, width or cfg.width)
    train, test = data.train, data.test
    sample = train.x[:SAMPLE_ITEMS].clone()
    with training.torch_threads(threads):
        training.seed_everything(cfg.seed)
        model = dynamic_model(study, kwargs, sample.shape, cfg.kappa_min)
        training.seed_everything(cfg.seed)
        objective = None
        steps = max(1, len(train.y) // cfg.batch_size)
        if cfg.dynamic:
            objective = TradeoffLoss(model, alpha=0.0 if cfg.budget is not None else float(cfg.alpha),
                                     budget=cfg.budget, metric=cfg.cost_metric, warmup_steps=cfg.warmup_epochs * steps)
            optimizer = training.make_optimizer(model, cfg.lr, cfg.width_lr)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        recorder = WidthRecorder(record_csv, None) if record_csv is not None and cfg.dynamic and main else None
        recipe = make_recipe(study.name, kwargs, list(sample.shape),
                             {"kappa_min": cfg.kappa_min} if cfg.dynamic else {"plain": True})
        try:
            fit_epochs(model, cfg, train.x, train.y, study.task_loss, objective, optimizer, cfg.epochs,
                       recorder=recorder, progress=progress, desc=f"{study.name} {_label(cfg, width)}", device=dev,
                       settle_epochs=cfg.settle_epochs if cfg.dynamic else 0,
                       settle_at_budget=cfg.dynamic and cfg.budget is not None and cfg.settle_epochs > 0,
                       checkpoint=checkpoint, recipe=recipe if checkpoint is not None else None, resume=resume,
                       extra={"config": cfg.as_dict(), "width": width})
        finally:
            if recorder is not None:
                recorder.close()
        model.to("cpu").eval()
        small, widths, _, diff = exported(model, test.x[:16]) if cfg.dynamic else (model, {}, {}, 0.0)
        cost = model_cost(small, sample)
        metrics = study.evaluate(small, test)
    missing = [m.name for m in study.metrics if m.name not in metrics]
    if missing:
        raise ValueError(f"study {study.name!r}: evaluate() returned no {', '.join(missing)}")
    row = {
        "method": "dcl" if cfg.dynamic else "fixed",
        "family": cfg.family,
        "alpha": (0.0 if cfg.budget is not None else float(cfg.alpha)) if cfg.dynamic else math.nan,
        "kappa_min": float(cfg.kappa_min) if cfg.dynamic else math.nan,
        "budget": float(cfg.budget) if cfg.dynamic and cfg.budget is not None else math.nan,
        "width": int(width or cfg.width),
        "seed": cfg.seed,
        **{m.name: float(metrics[m.name]) for m in study.metrics},
        "macs": float(cost.macs),
        "flops": float(cost.flops),
        "params": int(round(float(cost.params))),
        "params_exported": sum(p.numel() for p in small.parameters()),
        "widths": json.dumps(widths, sort_keys=True),
        "export_max_abs_diff": diff,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if checkpoint is not None and main:
        head = study.headline
        state = load_checkpoint(checkpoint)["extra"].get("training")  # so --resume of a finished run just reports it
        save_checkpoint(checkpoint, model, recipe, extra={
            "config": cfg.as_dict(), "width": width, "training": state,
            "metric": {"name": head.name, "value": row[head.name], "higher_is_better": head.higher_is_better},
            "result": {k: v for k, v in row.items() if isinstance(v, (int, float, str))}})
    return small, row


def _check_resumable(path: Path, cfg: StudyConfig, width: Optional[int]) -> None:
    """Refuse to resume from a checkpoint of a run with other settings (naming them)."""
    extra = load_checkpoint(path)["extra"]
    old = dict(extra.get("config") or {})
    diff = sorted(k for k, v in cfg.as_dict().items() if old.get(k) != v)
    if extra.get("width") != width:
        diff.append("width")
    if diff:
        raise ValueError(f"cannot resume from '{path}': it was trained with other settings ({', '.join(diff)}); "
                         "use another --out or drop --resume")


def _label(cfg: StudyConfig, width: Optional[int]) -> str:
    if not cfg.dynamic:
        return f"fixed width={width or cfg.width}"
    ctl = f"budget={cfg.budget:g}" if cfg.budget is not None else f"alpha={cfg.alpha:g}"
    return f"kappa={cfg.kappa_min:g} {ctl}"
