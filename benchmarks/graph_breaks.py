"""Benchmark 5: graph breaks and host reads of a whole DCL training step under ``torch.compile``.

For the synthetic-style MLP, the VAD CRNN and the anti-spoofing ResNet (every stage dynamic):
``torch._dynamo.explain`` of forward + task loss + ``TradeoffLoss`` (with a warm-up, so the
warm-up flags are traced too), then the number of graphs a ``fullgraph=True`` compile needs over
several training steps (a recompilation would show as a second graph), and the host reads
(``.item()``/``float()``/``bool()``) of one eager step on the tensor path. Goal: 0 graph breaks,
0 host reads.

    python benchmarks/graph_breaks.py
"""
from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import _common as C  # noqa: E402  (sets sys.path)
import slimtrain


class _CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def models():
    from slimtrain.apps.spoof.models import build_resnet, make_dynamic_stages
    from slimtrain.apps.vad.models import build_vad_model

    torch.manual_seed(0)
    yield "MLP 64-256-256-10", slimtrain.make_dynamic(C.MLP(), torch.randn(2, 64), kappa_min=0.1), torch.randn(32, 64)
    wav = torch.randn(2, 8000) * 0.1
    yield "VAD CRNN", slimtrain.make_dynamic(build_vad_model("crnn"), wav, kappa_min=0.125), wav
    yield ("anti-spoofing ResNet (stages 0-3 dynamic)",
           make_dynamic_stages(build_resnet(), torch.randn(2, 16000) * 0.1, stages=range(4), kappa_min=0.125),
           torch.randn(2, 16000) * 0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="compiled training steps per model")
    a = ap.parse_args(argv)
    torch._dynamo.config.allow_rnn = True  # dynamo refuses GRU/LSTM without it
    rows = []
    for name, model, x in models():
        model.train()
        for d in model.modules():
            if isinstance(d, slimtrain.DynamicWidth):
                d.host_fast_path = False
                d.set_width(0.7 * d.num_channels + 0.3)
        obj = slimtrain.TradeoffLoss(model, alpha=0.5, warmup_steps=2)

        def step(x):
            return obj(model(x).float().pow(2).mean())

        torch._dynamo.reset()
        ex = torch._dynamo.explain(step)(x)
        obj.set_steps(0)
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        compiled = torch.compile(step, backend=backend, fullgraph=True)
        for _ in range(a.steps):
            compiled(x).backward()
        model.zero_grad(set_to_none=True)
        counter = _CountHostReads()
        with counter:
            step(x).backward()
        reasons = "; ".join(sorted({str(b.reason).splitlines()[0][:80] for b in ex.break_reasons})) or "-"
        rows.append([name, str(ex.graph_break_count), str(len(graphs)), str(counter.reads), reasons])
    print(f"Graph breaks of one training step (torch._dynamo.explain), graphs of a fullgraph compile over "
          f"{a.steps} steps (warm-up included), host reads of one eager step on the tensor path; {C.machine()}")
    print(C.table(["model", "graph breaks", "compiled graphs", "host reads", "break reasons"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
