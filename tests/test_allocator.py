"""``slimtrain.train.allocator``: training keeps freed memory for the next step (glibc), opt-out by env."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, torch
import torch.nn.functional as F
from slimtrain.train.training import fit
from slimtrain.train.allocator import keep_freed_memory
torch.set_num_threads(1)


class Scale(torch.nn.Module):  # cheap to compute, with 64 MiB activations: the size glibc would mmap
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.tanh(x * self.w) * self.w


model = Scale()
x, y = torch.randn(1 << 24), torch.randn(1 << 24)
opt = torch.optim.SGD(model.parameters(), lr=1e-6)
fit(model, lambda epoch: iter([(x, y)]), F.mse_loss, None, opt, 4, progress=False)  # the heap reaches its size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fit(model, lambda epoch: iter([(x, y)]), F.mse_loss, None, opt, 12, progress=False)
print(json.dumps({"tuned": keep_freed_memory(),
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(flag: str) -> dict:
    env = {**os.environ, "SLIMTRAIN_KEEP_FREED_MEMORY": flag, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the allocator is tuned on Linux/glibc only")
def test_fit_stops_page_faulting_its_activations_in_every_step():
    kept, returned = _run("1"), _run("0")
    assert kept["tuned"] and not returned["tuned"]
    # returned to the OS: every step faults its 64 MiB buffers in again (16 k pages each); kept: they are reused
    assert returned["faults"] > 12 * 16_000
    assert kept["faults"] < returned["faults"] / 4
