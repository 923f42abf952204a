"""``DynamicWidthCallback`` for the Lightning ``Trainer`` (``pip install "slimtrain[lightning]"``).

::

    model.net = slimtrain.make_dynamic(model.net, sample, kappa_min=0.25)   # in the LightningModule
    cb = DynamicWidthCallback(slimtrain.TradeoffLoss(model.net, alpha=0.3), settle_at=0.5, export_path="out/small")
    L.Trainer(callbacks=[cb], max_epochs=10).fit(model, data)
    small = cb.exported                                                      # also written to out/small/

With automatic optimisation the callback adds the trade-off term to the loss that ``training_step``
returns (a tensor or the ``"loss"`` of a dict), before Lightning scales it for gradient accumulation
and calls backward. With manual optimisation, call ``loss = cb.objective(loss)`` before
``self.manual_backward(loss)``; the callback checks on the first batch that you did.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

from torch import Tensor, nn

from ..core.loss import TradeoffLoss
from ._common import IntegrationError, WidthControl, WidthControlled, require

_pl = require("lightning.pytorch", "lightning", "slimtrain.integrations.lightning")

__all__ = ["DynamicWidthCallback", "IntegrationError"]

_OPT_FIX = ("give the widths their own parameter group in configure_optimizers, e.g. "
            "return slimtrain.train.training.make_optimizer(self, lr=1e-3, width_lr=1e-2)")


class DynamicWidthCallback(_pl.Callback, WidthControlled):
    """Train the widths of a dynamic model inside a LightningModule with the Lightning ``Trainer``.

    Args:
        objective: :class:`slimtrain.TradeoffLoss` of the dynamic model, which must be the
            LightningModule or one of its submodules.
        settle_at: fix the widths after this many optimizer steps (int) or this share of the run's
            optimizer steps (float in (0, 1), of ``trainer.estimated_stepping_batches``).
        settle_at_budget: settle after the first optimizer step whose widths meet the budget.
        fill_budget: with ``settle_at_budget``, first scale the widths to the last channel step below the
            budget (:meth:`slimtrain.TradeoffLoss.fill_budget`).
        export_path: folder for ``slimtrain.export(model)`` at the end of ``fit`` (global rank 0):
            ``model.pt``, ``model_state.pt``, ``export.json``. The exported model is also ``.exported``.
        prefix: prefix of the logged keys.

    Logs after every optimizer step, through ``LightningModule.log`` (so to every logger of the
    Trainer: TensorBoard, W&B, CSV...): ``{prefix}width/<dcl name>``, ``{prefix}cost`` (the
    objective's metric at the current widths), ``cost_rel``, ``macs_hard`` / ``params_hard`` (at
    the widths export cuts to), ``penalty``, ``budget`` and ``mu`` (with a budget) and ``settled``.
    Its ``state_dict`` (settled or not, the objective's step counter and multiplier) goes into
    Lightning checkpoints; the widths themselves are parameters of the model.
    """

    def __init__(self, objective: TradeoffLoss, *, settle_at: Union[int, float, None] = None,
                 settle_at_budget: bool = False, fill_budget: bool = False,
                 export_path: Union[str, os.PathLike, None] = None, prefix: str = "slimtrain/") -> None:
        super().__init__()
        self.width_control = WidthControl(objective, settle_at=settle_at, settle_at_budget=settle_at_budget,
                                          fill_budget=fill_budget, export_path=export_path, prefix=prefix)
        self._wrapped: Optional[nn.Module] = None
        self._logged_step = -1
        self._steps_at_start: Optional[int] = None

    # -- the loss --------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.width_control.check_model(pl_module, "LightningModule")
        if pl_module.automatic_optimization and self._wrapped is None:
            step = pl_module.training_step  # the bound method (or someone else's wrapper)
            add = self._add_term

            @functools.wraps(step)
            def training_step(*args, **kwargs):
                return add(step(*args, **kwargs))

            pl_module.training_step = training_step  # an instance attribute: the class stays the user's
            self._wrapped = pl_module

    def _add_term(self, out: Any) -> Any:
        if isinstance(out, Tensor):
            return self.objective(out)
        if isinstance(out, Mapping) and isinstance(out.get("loss"), Tensor):
            return {**out, "loss": self.objective(out["loss"])}
        return out  # None skips the batch; anything else gets Lightning's own error

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("training_step", None)
            self._wrapped = None

    # -- schedule, checks, logging ---------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.width_control.check_optimizer([g for opt in trainer.optimizers for g in opt.param_groups], _OPT_FIX)
        self.width_control.start(trainer.estimated_stepping_batches, trainer.global_step)
        self._logged_step = trainer.global_step
        self._steps_at_start = None if pl_module.automatic_optimization else self.objective.steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._steps_at_start is not None:  # manual optimisation: the first batch must have used the objective
            if self.objective.steps == self._steps_at_start:
                raise IntegrationError("with manual optimization the callback cannot add the trade-off term: call "
                                       "loss = callback.objective(loss) before self.manual_backward(loss) in "
                                       "training_step")
            self._steps_at_start = None
        step = trainer.global_step
        if step == self._logged_step:  # gradient accumulation: no optimizer step on this batch
            return
        self._logged_step = step
        self.width_control.after_step(step)
        pl_module.log_dict(self.width_control.metrics(), on_step=True, on_epoch=False, batch_size=1)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.width_control.export(step=trainer.global_step, write=trainer.is_global_zero)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.width_control.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.width_control.load_state(state_dict)
