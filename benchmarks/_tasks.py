"""The models of the three case studies for the benchmarks, each as plain and dynamic versions.

VAD and anti-spoofing models are used when their modules import; otherwise a row says
"skipped: <module> not available".
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

import _common  # noqa: F401  (sets sys.path)
import slimtrain


@dataclass
class TaskModel:
    name: str
    plain: Optional[nn.Module]  # full width, no DCL
    sample: Optional[torch.Tensor]  # the make_dynamic/cost batch
    stream: Optional[torch.Tensor]  # batch-1 streaming-size input for latency
    make_dynamic: Optional[Callable[[nn.Module, torch.Tensor], nn.Module]] = None
    skipped: Optional[str] = None

    def dynamic(self) -> nn.Module:
        m = copy.deepcopy(self.plain)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.make_dynamic is not None:
                return self.make_dynamic(m, self.sample)
            return slimtrain.make_dynamic(m, self.sample, kappa_min=0.0625)


def _synthetic() -> TaskModel:
    from slimtrain.tasks.synthetic import build_student

    torch.manual_seed(0)
    return TaskModel("synthetic MLP 16-64-4", build_student(16, 64, 4), torch.randn(8, 16), torch.randn(1, 16))


def _vad(family: str) -> TaskModel:
    name = f"VAD {family}"
    try:
        from slimtrain.apps.vad.models import build_vad_model
    except Exception as e:  # noqa: BLE001
        return TaskModel(name, None, None, None, skipped=f"skipped: slimtrain.tasks.vad.models not available yet ({type(e).__name__})")
    torch.manual_seed(0)
    # 4 s clips for the cost (as the VAD task), 0.32 s (32 frames of 10 ms) as the streaming chunk
    return TaskModel(name, build_vad_model(family), torch.randn(2, 32000) * 0.1, torch.randn(1, 2560) * 0.1)


def _spoof() -> TaskModel:
    name = "anti-spoofing ResNet"
    try:
        from slimtrain.apps.spoof.models import build_resnet, make_dynamic_stages
    except Exception as e:  # noqa: BLE001
        return TaskModel(name, None, None, None, skipped=f"skipped: slimtrain.tasks.spoof.models not available yet ({type(e).__name__})")
    torch.manual_seed(0)
    return TaskModel(name, build_resnet(), torch.randn(2, 32000) * 0.1, torch.randn(1, 32000) * 0.1,
                     make_dynamic=lambda m, x: make_dynamic_stages(m, x, stages=range(4), kappa_min=0.0625))


def task_models(names=("synthetic", "vad-crnn", "vad-transformer", "spoof")) -> list[TaskModel]:
    makers = {"synthetic": _synthetic, "vad-crnn": lambda: _vad("crnn"),
              "vad-transformer": lambda: _vad("transformer"), "spoof": _spoof}
    out = []
    for n in names:
        try:
            out.append(makers[n]())
        except Exception as e:  # noqa: BLE001 - a broken task must not stop the other rows
            out.append(TaskModel(n, None, None, None, skipped=f"skipped: {type(e).__name__}: {str(e)[:120]}"))
    return out


def set_relative_width(model: nn.Module, kappa: float) -> None:
    """Every DCL at ``K = max(K_min, kappa * N)`` (as if training had learned it)."""
    for d in model.modules():
        if isinstance(d, slimtrain.DynamicWidth):
            d.set_width(max(d.min_width, kappa * d.num_channels))
