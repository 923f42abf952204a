"""Benchmark: what running wideband input natively at 16 kHz buys, measured side by side in one run.

On 16 kHz evaluation sets (built by ``slimtrain vad eval`` at the data's rate) it scores, per 10 ms frame:
* the 16 kHz VAD (``--model16``, default the shipped ``vad_16k.pt``) on the 16 kHz audio;
* the 8 kHz VAD (``--model8``, default the shipped ``vad_default.pt``) on the same audio downsampled to
  8 kHz (``slimtrain.audio_input.resample_to``, as ``vad.load(sample_rate=8000)`` does with 16 kHz input);
* Silero VAD on the 16 kHz audio.
Each at its own validation EER threshold (the validation split of ``--data``, treated the same way).

    python benchmarks/vad_16k_vs_8k.py --data runs/ext16k48 --unseen runs/unseen-16k [--sets unseen-human,unseen-tts,test]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a VAD data folder built at 16 kHz")
    p.add_argument("--unseen", type=Path, default=None, help="folder of the 16 kHz unseen sets")
    p.add_argument("--sets", default="unseen-human,unseen-tts,test")
    p.add_argument("--model16", type=Path, default=None)
    p.add_argument("--model8", type=Path, default=None)
    a = p.parse_args(argv)

    from slimtrain import vad
    from slimtrain.audio.io import resample_to
    from slimtrain.tasks.vad.anchors import silero_scores
    from slimtrain.tasks.vad.evaluate import _load_set
    from slimtrain.tasks.vad.train import evaluate_scores, frame_scores

    v16 = vad.load(a.model16, sample_rate=16000)
    v8 = vad.load(a.model8, sample_rate=8000)

    def down(audio: np.ndarray) -> np.ndarray:
        return np.stack([resample_to(x, 16000, 8000) for x in audio]).astype(np.float32)

    scorers = {"ours 16 kHz model, 16 kHz audio": lambda x: frame_scores(v16.model, x),
               "ours 8 kHz model, audio downsampled to 8 kHz": lambda x: frame_scores(v8.model, down(x)),
               "Silero VAD, 16 kHz audio": lambda x: silero_scores(x, 16000, 160)}
    print("| set | model | AUC | EER % | F1 |\n| --- | --- | ---: | ---: | ---: |")
    for which in a.sets.split(","):
        val, test, _, manifest, info = _load_set(which, a.data, a.unseen)
        if int(manifest["config"].get("sample_rate", 8000)) != 16000:
            raise SystemExit(f"{a.data} is not a 16 kHz corpus")
        for name, score in scorers.items():
            r = evaluate_scores((val.labels, score(val.audio)), (test.labels, score(test.audio)), test.snr_db)
            print(f"| {which} ({len(test.audio)} clips) | {name} | {r['auc']:.4f} | {100 * r['eer']:.2f} | "
                  f"{r['f1']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
