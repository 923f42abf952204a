"""Benchmark 3: CPU latency of exported models at several learned widths vs their FLOPs.

Each task model is made dynamic, every DCL is set to kappa * N (kappa = 1, 0.5, 0.25,
0.125, as if training had learned that width) and exported. Batch 1, a streaming-size
input (VAD: a 0.32 s chunk, 2560 samples at 8 kHz), 1 and 2 torch threads; widths are
timed interleaved and the median is reported. The latency ratio (vs kappa = 1) is shown
next to the FLOP ratio; goal for VAD: latency ratio <= 1.3 x FLOP ratio. The ONNX
export of each VAD model is run with onnxruntime (1 thread) too, and the VAD CRNN also on its
streaming path (:class:`slimtrain.tasks.vad.models.CRNNStream`, 32 ms chunks, 1 thread): CPU time
per second of audio, whose ratio is set next to the FLOP ratio as well.

    python benchmarks/inference_speed.py [--repeats 40] [--no-onnx] [--no-profile]

FLOPs are counted on the timed call itself with ``torch.utils.flop_counter``. A
``torch.profiler`` table of the VAD CRNN at full width and at kappa 0.125 shows
where the time of one call goes (the explanation of a missed goal).
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

import _common as C
import slimtrain
from _tasks import set_relative_width, task_models

KAPPAS = (1.0, 0.5, 0.25, 0.125)
GOAL = 1.3


def _ort_session(model, x, path: Path):
    import onnxruntime as ort

    from slimtrain.core.export import export_onnx

    export_onnx(model, x, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy()}
    return lambda: sess.run(None, feed)


def _counted_flops(model, x) -> float:
    """FLOPs of ``model(x)`` by ``torch.utils.flop_counter`` (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops())


def profile(model, x, label: str, top: int = 10) -> None:
    """Print where one call's time goes (torch.profiler, self CPU time per operator, 1 thread)."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    torch.set_num_threads(1)
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(50):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 50
    print(f"\nProfile of {label}: {total / 1e3:.3f} ms self CPU per call (profiler overhead included), "
          f"top {top} operators")
    rows = [[e.key, f"{e.count // 50}", f"{e.self_cpu_time_total / 50 / 1e3:.4f}",
             f"{100 * e.self_cpu_time_total / 50 / total:.1f}%"] for e in events[:top]]
    print(C.table(["operator", "calls/call", "self ms/call", "share"], rows))


def _streaming_ms_per_second(models: dict, repeats: int) -> dict:
    """CPU ms per second of audio of each exported CRNN streamed in 32 ms chunks (1 thread)."""
    import numpy as np

    from slimtrain.apps.vad.models import CRNNStream

    rate = 8000
    audio = (np.random.default_rng(0).standard_normal(4 * rate) * 0.1).astype(np.float32)
    chunk = int(0.032 * rate)

    def run(m):
        s = CRNNStream(m)
        for i in range(0, len(audio), chunk):
            s.feed(audio[i:i + chunk])
        s.flush()

    torch.set_num_threads(1)
    times = C.interleaved({k: (lambda m=m: run(m)) for k, m in models.items()}, max(3, repeats // 8), warmup=1,
                          clock="cpu")
    return {k: C.median(v) * 1e3 / 4.0 for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=40, help="timed calls per model and thread count")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and onnxruntime timing")
    ap.add_argument("--no-profile", action="store_true", help="skip the operator profile of the VAD CRNN")
    a = ap.parse_args(argv)
    profiled = []
    rows = []
    srows: list = []
    tmp = Path(tempfile.mkdtemp(prefix="slimtrain-bench-"))
    for t in task_models():
        if t.skipped:
            rows.append([t.name, t.skipped] + [""] * 8)
            continue
        dyn = t.dynamic()
        models, flops = {}, {}
        for kappa in KAPPAS:
            set_relative_width(dyn, kappa)
            dyn.eval()
            models[kappa] = slimtrain.export(dyn).eval()
        x = t.stream
        for kappa, m in models.items():  # FLOPs of the timed call itself (the streaming chunk, not the 4 s sample)
            flops[kappa] = _counted_flops(m, x)
        lat: dict[tuple[float, int], float] = {}
        with torch.inference_mode():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
                times = C.interleaved(fns, a.repeats, warmup=5, clock="wall")
                for k, v in times.items():
                    lat[(k, threads)] = C.median(v) * 1e3
        torch.set_num_threads(1)
        onnx = {}
        if not a.no_onnx and t.name.startswith("VAD"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fns = {k: _ort_session(m, x, tmp / f"{t.name.replace(' ', '_')}_{k}.onnx") for k, m in models.items()}
                    times = C.interleaved(fns, a.repeats, warmup=5, clock="wall")
                    onnx = {k: C.median(v) * 1e3 for k, v in times.items()}
                except Exception as e:  # noqa: BLE001
                    onnx = {k: f"failed: {type(e).__name__}" for k in models}
        stream = {}
        if t.name == "VAD crnn":
            stream = _streaming_ms_per_second(models, a.repeats)
            profiled = [(models[k], x, f"{t.name} exported at kappa {k:g} (batch 1, {x.shape[-1]} samples)")
                        for k in (1.0, 0.125)]
        for k in KAPPAS:
            fr = flops[k] / flops[1.0]
            r1 = lat[(k, 1)] / lat[(1.0, 1)]
            r2 = lat[(k, 2)] / lat[(1.0, 2)]
            o = onnx.get(k)
            ok = "" if not t.name.startswith("VAD") else ("ok" if r1 <= GOAL * fr else "ABOVE GOAL")
            if k in stream:
                sr = stream[k] / stream[1.0]
                srows.append([t.name, f"{k:g}", f"{fr:.3f}", f"{stream[k]:.2f}", f"{sr:.3f}",
                              f"{sr / fr:.2f} " + ("ok" if sr <= GOAL * fr else "ABOVE GOAL")])
            rows.append([t.name, f"{k:g}", f"{flops[k] / 1e6:.3f}", f"{fr:.3f}", f"{lat[(k, 1)]:.3f}", f"{r1:.3f}",
                         f"{lat[(k, 2)]:.3f}", f"{r2:.3f}",
                         (f"{o:.3f}" if isinstance(o, float) else (o or "-")), f"{r1 / fr:.2f} {ok}".strip()])
    print(f"Inference latency (ms, median of {a.repeats} interleaved calls, wall clock), batch 1, streaming input; "
          f"FLOPs per input item of the exported model; {C.machine()}")
    print(C.table(["model", "kappa", "MFLOPs", "FLOP ratio", "1 thread ms", "ratio", "2 threads ms", "ratio",
                   "onnxruntime 1 thr ms", f"lat/FLOP ratio (VAD goal <= {GOAL})"], rows))
    print("FLOPs count matrix products and convolutions (torch.utils.flop_counter convention); the STFT, "
          "norms and activations are not counted but take time, so small widths cannot reach the FLOP ratio.")
    if srows:
        print()
        print("Streaming path of the VAD CRNN (CRNNStream: 32 ms chunks, 1 thread), process CPU ms per second "
              f"of audio, median of {max(3, a.repeats // 8)} interleaved passes over 4 s")
        print(C.table(["model", "kappa", "FLOP ratio", "CPU ms / s audio", "ratio", f"lat/FLOP (goal <= {GOAL})"],
                      srows))
    if not a.no_profile:
        for m, x, label in profiled:
            profile(m, x, label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
