"""Benchmark: streaming cost of the shipped VAD next to Silero VAD, in the same run.

CPU time per second of audio when streaming 32 ms chunks on one thread:
* ours: ``slimtrain.vad.load().stream(rate)`` fed 32 ms chunks (256 samples at 8 kHz; 512 at
  16 kHz): the 8 kHz model at 8 kHz and, once ``vad_16k.pt`` is shipped, the 16 kHz model at 16 kHz
  (before it, the 8 kHz model, the stream resampling to 8 kHz with carried state);
* Silero VAD (``silero_vad.load_silero_vad()``, the JIT model shipped in its wheel) called on its
  own chunks (256 samples at 8 kHz, 512 at 16 kHz) after ``reset_states()``.
Both process the same 10 s of audio (Asterisk prompts with pauses and noise if installed, else
noise bursts), timed interleaved (ours, Silero, ours, ...), median of ``--repeats`` runs.

FLOPs per second of audio:
* ours, from slimtrain's cost model (``model_cost``: 2 x MACs of the convolutions, GRU, linear
  layers and the mel filterbank; the FFT is not counted) and from ``torch.utils.flop_counter``
  on the offline torch call of the same model on the same audio (the stream computes the same
  products frame by frame in numpy, where flop_counter cannot see them);
* Silero, from ``torch.utils.flop_counter`` on its JIT model during the streamed run (its STFT is
  a convolution and its LSTM cell matrix products, so both are in the count).

With ``--data DIR`` (a folder built by ``slimtrain data vad``) it also scores both models on the
held-out Italian test split (per-frame AUC, EER and F1 at each model's validation EER threshold,
Silero's probabilities on our frame grid as in the sweep).

    python benchmarks/vad_streaming.py [--repeats 7] [--seconds 10] [--data runs/vad/data]
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

import _common as C
from slimtrain import model_cost, vad
from slimtrain.audio.io import resample_to


def _audio(seconds: float, rate: int) -> np.ndarray:
    """Deterministic test audio at ``rate``: prompts with pauses over faint noise (or noise bursts)."""
    rng = np.random.default_rng(0)
    n = int(seconds * 8000)
    x = np.zeros(n, dtype=np.float32)
    try:
        from slimtrain.tasks.audio import asterisk_prompts, read_audio

        files = asterisk_prompts("it")
        at = 4000
        for f in files[5::50]:
            s, _ = read_audio(f, 8000)
            if at + len(s) > n:
                break
            x[at:at + len(s)] += s
            at += len(s) + int(rng.uniform(0.3, 1.0) * 8000)
    except Exception:  # noqa: BLE001 - no corpus: bursts of noise stand in for speech
        for a in range(4000, n - 8000, 16000):
            x[a:a + 8000] += 0.1 * rng.standard_normal(8000).astype(np.float32)
    x += 0.003 * rng.standard_normal(n).astype(np.float32)
    return resample_to(x, 8000, rate) if rate != 8000 else x


def _ours(model: vad.VAD, x: np.ndarray, rate: int, chunk: int):
    def run() -> np.ndarray:
        s = model.stream(rate)
        out = [s.feed(x[i:i + chunk]) for i in range(0, len(x), chunk)]
        out.append(s.flush())
        return np.concatenate(out)
    return run


def _silero(model, x: np.ndarray, rate: int, chunk: int):
    t = torch.from_numpy(x)

    def run() -> list:
        model.reset_states()
        with torch.no_grad():
            return [model(t[i:i + chunk], rate) for i in range(0, len(t) - chunk + 1, chunk)]
    return run


def _counted(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--data", default=None, help="VAD data folder: also compare accuracy on its test split")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from silero_vad import load_silero_vad

        silero = load_silero_vad()
    ours = vad.load()
    print(f"# VAD streaming cost, {a.seconds:g} s of audio, 32 ms chunks, 1 thread; {C.machine()}")
    served = {r: ours.for_rate(r) for r in (8000, 16000)}
    print("# ours: " + "; ".join(f"{r // 1000} kHz input -> {m.source} ({m.meta.get('recipe', {}).get('exported_widths')})"
                                 for r, m in served.items()) + "; "
          f"Silero: silero_vad JIT ({sum(p.numel() for p in silero.parameters())} parameters)")
    rows = []
    for rate, chunk in ((8000, 256), (16000, 512)):
        m = ours.for_rate(rate)  # the model that input at this rate runs through
        cost = model_cost(m.model, torch.zeros(1, 4 * m.sample_rate), seconds=4.0)
        model_mflops = float(cost.flops_per_second) / 1e6
        x = _audio(a.seconds, rate)
        fns = {"ours": _ours(ours, x, rate, chunk), "silero": _silero(silero, x, rate, chunk)}
        times = C.interleaved(fns, a.repeats, warmup=1, clock="cpu")
        t_ours, t_sil = (C.median(times[k]) / a.seconds for k in ("ours", "silero"))
        xm = torch.from_numpy(_audio(a.seconds, m.sample_rate))[None]
        f_ours = _counted(lambda: m.model(xm)) / a.seconds / 1e6  # the stream does the same products in numpy
        f_sil = _counted(fns["silero"]) / a.seconds / 1e6
        rows.append([f"{rate // 1000} kHz", f"{1000 * t_ours:.2f}", f"{1000 * t_sil:.2f}", f"{t_sil / t_ours:.1f}x",
                     f"{model_mflops:.2f}", f"{f_ours:.2f}", f"{f_sil:.2f}", f"{f_sil / model_mflops:.1f}x"])
    print(C.table(["rate", "ours CPU ms / s audio", "Silero CPU ms / s audio", "Silero / ours time",
                   "ours MFLOP/s (cost model)", "ours MFLOP/s (flop_counter)", "Silero MFLOP/s (flop_counter)",
                   "Silero / ours FLOPs"], rows))
    print("ours (cost model) counts the mel filterbank but not the FFT; flop_counter counts matrix products and "
          "convolutions only (not our FFT; Silero's STFT is a convolution, so it is counted). Each rate uses the model "
          "vad.load() runs input at that rate through (model.for_rate(rate)). Medians of interleaved "
          "repeats; CPU time of this process.")
    if a.data:
        accuracy(ours, a.data)


def accuracy(ours: vad.VAD, data_dir: str) -> None:
    """AUC / EER / F1 of the shipped model and Silero VAD on the held-out test split of ``data_dir``."""
    from slimtrain.tasks.vad.anchors import silero_scores
    from slimtrain.tasks.vad.data import load_vad_data
    from slimtrain.tasks.vad.train import evaluate_scores

    data, man = load_vad_data(data_dir)
    val, test = data["val"], data["test"]
    res = {"ours (shipped)": evaluate_scores((val.labels, np.stack([ours.frame_logits(x, 8000) for x in val.audio])),
                                             (test.labels, np.stack([ours.frame_logits(x, 8000) for x in test.audio])),
                                             test.snr_db),
           "Silero VAD": evaluate_scores((val.labels, silero_scores(val.audio)),
                                         (test.labels, silero_scores(test.audio)), test.snr_db)}
    print(f"\n# held-out Italian test split ({len(test.audio)} clips, data fingerprint {man['fingerprint']})")
    print(C.table(["model", "AUC", "EER %", "F1", "EER < 5 dB", "EER >= 25 dB"],
                  [[k, f"{r['auc']:.4f}", f"{100 * r['eer']:.2f}", f"{r['f1']:.4f}", f"{100 * r['eer < 5 dB']:.1f}",
                    f"{100 * r['eer >= 25 dB']:.1f}"] for k, r in res.items()]))


if __name__ == "__main__":
    main()
