"""``DynamicWidthCallback`` for the transformers ``Trainer`` (``pip install "slimtrain[hf]"``).

::

    model = slimtrain.make_dynamic(model, sample, kappa_min=0.25)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=(slimtrain.train.training.make_optimizer(model, lr=1e-4, width_lr=1e-2), None))
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model, alpha=0.3), settle_at=0.5,
                              export_path="out/small").attach(trainer)
    trainer.train()
    small = cb.exported

A ``TrainerCallback`` cannot change the loss, so :meth:`DynamicWidthCallback.attach` also wraps
two methods of that one ``Trainer`` instance (its class stays yours, so any ``Trainer`` subclass works):

* ``compute_loss``: in training mode the trade-off term is added to whatever loss the Trainer
  computed (the model's own loss, a label smoother or your ``compute_loss_func``), divided by the
  gradient-accumulation steps when the Trainer treats the loss as already scaled for them, so that
  each optimizer step sees the term once. Evaluation losses stay the task loss.
* ``log``: the training logs get the width, cost and budget keys before the Trainer records them
  (``state.log_history``) and calls ``on_log`` of every callback, so every ``report_to``
  integration (TensorBoard, W&B, CSV...) receives them.

It also wraps ``_save`` (the Trainer's checkpoint writer) to leave out the second and later names of a
width shared by several layers (``q_proj.dcl.theta`` is also ``k_proj.dcl.theta``): safetensors refuses
tensors saved under two names, and the one saved name restores the shared parameter.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Union

from torch import nn

from ..core.dcl import DynamicWidth
from ..core.loss import TradeoffLoss
from ._common import IntegrationError, WidthControl, WidthControlled, require

_tf = require("transformers", "hf", "slimtrain.integrations.transformers")
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402

__all__ = ["DynamicWidthCallback", "IntegrationError"]

_OPT_FIX = ("give them their own parameter group, e.g. Trainer(..., optimizers=(slimtrain.train.training.make_optimizer("
            "model, lr=1e-4, width_lr=1e-2), None))")


def _aliases(root: nn.Module) -> list[str]:
    """State-dict keys of ``root`` that name a width parameter already named earlier (a DCL shared by
    several layers, attached as each one's ``dcl`` child)."""
    widths = {id(m.theta) for m in root.modules() if isinstance(m, DynamicWidth)}
    seen: set[int] = set()
    out = []
    for name, p in root.named_parameters(remove_duplicate=False):
        if id(p) in widths:
            if id(p) in seen:
                out.append(name)
            seen.add(id(p))
    return out


class SlimtrainWidthState(TrainerCallback, ExportableState):
    """Carries a :class:`DynamicWidthCallback`'s state through ``trainer_state.json`` of each checkpoint
    (settled or not, the objective's step counter and multiplier; the widths are model parameters).
    Pure data, so the Trainer may rebuild it (``restore_callback_states_from_checkpoint=True``)."""

    def __init__(self) -> None:
        self.owner: Optional[DynamicWidthCallback] = None
        self.saved: Optional[dict] = None

    def state(self) -> dict:
        saved = self.owner.width_control.state() if self.owner is not None else self.saved
        return {"args": {}, "attributes": {"saved": saved}}


class DynamicWidthCallback(TrainerCallback, WidthControlled):
    """Train the widths of a dynamic model with the transformers ``Trainer``.

    Args:
        objective: :class:`slimtrain.TradeoffLoss` of the dynamic model, which must be
            ``trainer.model`` or one of its submodules.
        settle_at: fix the widths after this many optimizer steps (int) or this share of the
            run's optimizer steps (float in (0, 1), of ``state.max_steps``).
        settle_at_budget: settle after the first optimizer step whose widths meet the budget.
        fill_budget: with ``settle_at_budget``, first scale the widths to the last channel step below the
            budget (:meth:`slimtrain.TradeoffLoss.fill_budget`).
        export_path: folder for ``slimtrain.export(model)`` at the end of ``train`` (written by the
            process that saves): ``model.pt``, ``model_state.pt``, ``export.json``. The exported model
            is also ``.exported``. (The transformers config still holds the old sizes, so save the
            exported model with these files, not ``save_pretrained``.)
        prefix: prefix of the logged keys.

    Call :meth:`attach` with the ``Trainer`` before ``train`` (it adds the callback if needed).
    Logged with every training log: ``{prefix}width/<dcl name>``, ``{prefix}cost`` (the
    objective's metric at the current widths), ``cost_rel``, ``macs_hard`` / ``params_hard`` (at the
    widths export cuts to), ``penalty``, ``budget`` and ``mu`` (with a budget) and ``settled``.
    """

    def __init__(self, objective: TradeoffLoss, *, settle_at: Union[int, float, None] = None,
                 settle_at_budget: bool = False, fill_budget: bool = False,
                 export_path: Union[str, os.PathLike, None] = None, prefix: str = "slimtrain/") -> None:
        self.width_control = WidthControl(objective, settle_at=settle_at, settle_at_budget=settle_at_budget,
                                          fill_budget=fill_budget, export_path=export_path, prefix=prefix)
        self.trainer: Any = None

    # -- attaching -------------------------------------------------------------------------------
    def attach(self, trainer) -> "DynamicWidthCallback":
        """Install the callback on ``trainer``: add it (and its checkpoint-state carrier) to the
        callbacks and wrap the instance's ``compute_loss`` and ``log``. Returns the callback."""
        if self.trainer is not None:
            if self.trainer is trainer:
                return self
            raise IntegrationError("this DynamicWidthCallback is already attached to another Trainer; make one "
                                   "callback per Trainer")
        self.width_control.check_model(trainer.model, "model")
        cbs = trainer.callback_handler.callbacks
        if any(isinstance(cb, DynamicWidthCallback) and cb is not self for cb in cbs):
            raise IntegrationError("the Trainer already has another DynamicWidthCallback; use one per Trainer")
        if not any(cb is self for cb in cbs):
            trainer.add_callback(self)
        if not any(isinstance(cb, SlimtrainWidthState) for cb in cbs):
            trainer.add_callback(SlimtrainWidthState())
        self._carrier(trainer).owner = self

        compute_loss, log = trainer.compute_loss, trainer.log

        @functools.wraps(compute_loss)
        def compute_loss_with_term(model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):
            out = compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch,
                               **kwargs)
            if not model.training:
                return out
            if return_outputs:
                return (self._add_term(trainer, out[0], num_items_in_batch), *out[1:])
            return self._add_term(trainer, out, num_items_in_batch)

        @functools.wraps(log)
        def log_with_widths(logs, *args, **kwargs):
            if "loss" in logs or "train_loss" in logs:  # training logs, not evaluation ones
                logs.update(self.width_control.metrics())
            return log(logs, *args, **kwargs)

        trainer.compute_loss = compute_loss_with_term
        trainer.log = log_with_widths
        save = getattr(trainer, "_save", None)
        if save is not None:
            @functools.wraps(save)
            def save_without_aliases(output_dir=None, state_dict=None, *args, **kwargs):
                if state_dict is None:
                    state_dict = trainer.model.state_dict()
                    for key in _aliases(trainer.model):
                        state_dict.pop(key, None)
                return save(output_dir, state_dict, *args, **kwargs)

            trainer._save = save_without_aliases
        self.trainer = trainer
        return self

    @staticmethod
    def _carrier(trainer) -> SlimtrainWidthState:
        return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SlimtrainWidthState))

    def _add_term(self, trainer, loss, num_items_in_batch):
        """``loss`` plus the trade-off term, divided by the accumulation steps when the Trainer takes the
        loss as already scaled for them (normalised over the whole accumulated batch; its own rule in
        ``training_step``), so each optimizer step sees the term once."""
        scaled = getattr(trainer, "loss_is_scaled_for_ga", None)  # transformers >= 5
        if scaled is None:
            scaled = (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                or trainer.compute_loss_func is not None
        ga = int(getattr(trainer, "current_gradient_accumulation_steps", trainer.args.gradient_accumulation_steps))
        if scaled and ga > 1:
            return self.objective(loss * ga) / ga
        return self.objective(loss)

    # -- events ----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.trainer is None:
            raise IntegrationError("DynamicWidthCallback was not attached: a TrainerCallback cannot change the loss, "
                                   "so call callback.attach(trainer) before trainer.train()")
        saved = state.stateful_callbacks.get(SlimtrainWidthState.__name__) if state.stateful_callbacks else None
        if isinstance(saved, list):
            saved = saved[0]
        if isinstance(saved, dict) and (saved.get("attributes") or {}).get("saved"):
            self.width_control.load_state(saved["attributes"]["saved"])  # a resumed run (or the state at this start)
        self._carrier(self.trainer).owner = self  # the Trainer may have rebuilt the carrier from a checkpoint
        if optimizer is not None:
            self.width_control.check_optimizer(optimizer.param_groups, _OPT_FIX)
        self.width_control.start(state.max_steps, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.width_control.after_step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.width_control.export(step=state.global_step, write=state.is_world_process_zero)
