"""Write the shipped models (``src/slimtrain/assets/{vad,spoof}_default.{pt,json}``) from training checkpoints.

    python -m slimtrain.tasks.ship vad runs/vad/vad_crnn.pt --data runs/vad/data --command "..."
    python -m slimtrain.tasks.ship spoof runs/spoof/model.ckpt --data runs/spoof/data --command "..."

The checkpoint is cut to its learned widths (:func:`slimtrain.export`), written in the
:mod:`slimtrain.apps.shipped` format, reloaded through the plain builder and checked against the
exported model (the largest difference is recorded). The JSON holds the recipe, the data
fingerprint, the commands that reproduce the file and the metrics recorded at training.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import __version__
from ..train.checkpoint import load_checkpoint, load_for_inference
from ..apps.shipped import load_shipped, save_shipped

__all__ = ["ship_vad", "ship_spoof", "main"]

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _versions() -> dict:
    return {"slimtrain": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _digest(hashes: dict) -> str:
    """16 hex digits identifying a data folder from the SHA-256 of its files (as its manifest lists them)."""
    import hashlib

    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def _check(model, reloaded, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - reloaded(x)).abs().max())


def _eval_sets(checkpoint: Path, files: list[Path]) -> dict:
    """The rows of ``slimtrain vad eval --json`` files for this checkpoint and for Silero VAD, per set."""
    out: dict = {}
    for f in files:
        rows = json.loads(Path(f).read_text())
        mine = [r for r in rows if Path(r["model"]).resolve() == Path(checkpoint).resolve()]
        if not mine:
            raise ValueError(f"{f}: no row for {checkpoint} (models: {', '.join(r['model'] for r in rows)})")
        keep = lambda r: {k: v for k, v in r.items() if k not in ("model", "set")}  # noqa: E731
        out[mine[0]["set"]] = {"ours": keep(mine[0]),
                               "silero": next((keep(r) for r in rows if r["model"].startswith("Silero")), None)}
    return out


def ship_vad(checkpoint: Path, data: Path, out: Path, commands: list[str], name: str = "vad_default",
             eval_files: Optional[list[Path]] = None, streaming: Optional[dict] = None) -> Path:
    """Ship a VAD checkpoint as ``out/NAME.pt`` + ``.json``; returns the ``.pt`` path.

    ``eval_files``: ``slimtrain vad eval --json`` outputs whose rows for this checkpoint (and Silero's)
    are recorded under ``metrics_by_set``; ``streaming``: measured streaming CPU time, recorded as given."""
    from ..apps.vad import _build_plain

    model, _ = load_for_inference(checkpoint, "vad")
    ckpt = load_checkpoint(checkpoint)
    kw = dict(ckpt["recipe"]["kwargs"])
    m = dict(ckpt["extra"]["metrics"])
    cfg = dict(ckpt["extra"].get("config", {}))
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    thr_logit = float(m["threshold"])
    rate = int(kw.get("sample_rate", 8000))
    meta = {
        "name": name,
        "description": "CRNN voice activity detector (log-mel -> 2 causal convs -> GRU), widths learned with DCL "
                       f"and cut to them; {rate // 1000} kHz input, one speech probability per 10 ms frame, 16 ms "
                       "look-ahead.",
        "sample_rate": rate,
        "frame_seconds": 0.01,
        "lookahead_ms": 16,
        "threshold": float(1 / (1 + np.exp(-thr_logit))),
        "threshold_logit": thr_logit,
        "threshold_source": "EER point on the validation split (French voice fr_CA_f_June)",
        "recipe": {
            "family": kw.get("family"),
            "full_widths": {"n_mels": kw.get("n_mels", 80), **{k: v for k, v in kw.items() if k not in ("family",
                                                                                                        "n_mels")}},
            "kappa_min": cfg.get("kappa_min"), "alpha": cfg.get("alpha"), "budget": cfg.get("budget"),
            "epochs": cfg.get("epochs"), "batch_size": cfg.get("batch_size"), "lr": cfg.get("lr"),
            "width_lr": cfg.get("width_lr"), "warmup_epochs": cfg.get("warmup_epochs"), "seed": cfg.get("seed"),
            "learned_widths": {k: float(v) for k, v in ckpt["widths"].items()},
            "exported_widths": {"n_mels": int(model.frontend.n_mels), "conv1": int(model.conv1.out_channels),
                                "conv2": int(model.conv2.out_channels), "hidden": int(model.gru.hidden_size)},
        },
        "data": {
            "fingerprint": manifest["fingerprint"],
            "config": manifest["config"],
            "splits": {s: {k: v for k, v in info.items() if k in ("clips", "seconds", "speakers", "speech_fraction",
                                                                   "speech_bandwidth")}
                       for s, info in manifest["splits"].items()},
        },
        "metrics": {
            "split": "test: held-out Italian voice it_IT_m_Carlo (never heard in training), per 10 ms frame"
                     + (", extended-corpus mixtures (new noise types, reverberation, codecs)"
                        if manifest.get("corpus") == "extended" else ""),
            "auc": m["auc"], "eer": m["eer"], "f1_at_threshold": m["f1"],
            "eer_by_snr": {k[4:]: m[k] for k in m if k.startswith("eer ")},
            "mflops_per_s": m["mflops_per_s"], "params": m["params"], "mel_bands": m["mel_bands"],
        },
        "commands": commands,
        "versions": _versions(),
    }
    if manifest["splits"].get("train", {}).get("speech_minutes_by_source"):
        from .vad.bandwidth import speech_bandwidth

        meta["data"]["train_speech_bandwidth"] = speech_bandwidth(manifest["splits"]["train"])
    if eval_files:
        meta["metrics_by_set"] = _eval_sets(checkpoint, eval_files)
    if streaming:
        meta["streaming"] = streaming
    pt, _ = save_shipped(Path(out) / f"{name}.pt", model, "vad",
                         {"family": kw.get("family", "crnn"), "n_mels": kw.get("n_mels", 80),
                          **{k: v for k, v in kw.items() if k not in ("family", "n_mels")}}, meta)
    reloaded, _ = load_shipped(pt, "vad", _build_plain)
    diff = _check(model, reloaded, torch.randn(2, 2 * rate, generator=torch.Generator().manual_seed(0)) * 0.1)
    if diff > 1e-6:
        raise RuntimeError(f"{pt}: the reloaded model differs from the exported one by {diff}")
    return pt


def _spoof_split_text(manifest: dict) -> str:
    """What the shipped countermeasure's EERs were measured on, from its corpus manifest."""
    conf = manifest.get("config", {})
    held = ["fr_CA_f_June" if conf.get("heldout_language", "fr") == "fr" else conf.get("heldout_language"),
            *conf.get("human_heldout", [])]
    unseen = manifest.get("unseen_attacks", [])
    known = [a for a in conf.get("eval_attacks", []) if a not in unseen]
    return (f"eval: held-out bona fide speaker(s) {' '.join(map(str, held))}, known attacks {' '.join(known)} and "
            f"unseen attacks {' '.join(unseen)} (percent EER; eer_heldout*: the held-out speakers' bona fide clips "
            "alone)")


def ship_spoof(checkpoint: Path, data: Path, out: Path, commands: list[str], name: str = "spoof_default") -> Path:
    """Ship a countermeasure checkpoint as ``out/NAME.pt`` + ``.json``; returns the ``.pt`` path."""
    from ..apps.spoof import _build_plain

    model, _ = load_for_inference(checkpoint, "spoof")
    ckpt = load_checkpoint(checkpoint)
    recipe, extra = ckpt["recipe"], ckpt["extra"]
    res = dict(extra.get("result", {}))
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    man_small = {k: v for k, v in manifest.items() if k not in ("files", "sha256")}
    meta = {
        "name": name,
        "description": f"ResNet34-style countermeasure (log-mel, {recipe['kwargs'].get('n_mels', 32)} "
                       f"{recipe['kwargs'].get('freq_scale', 'mel')} bands, n_fft {recipe['kwargs'].get('n_fft', 256)} "
                       "-> 4 residual stages) whose stage widths were learned with DCL (all stages) and cut to them"
                       + (", distilled from a full-width teacher" if res.get("distill_weight") else "")
                       + "; 8 kHz input, one bona fide logit per clip.",
        "sample_rate": 8000,
        "clip_samples": int(recipe["sample_shape"][-1]),
        "score": "mean clip logit after band-pass, silence trim and -24 dBFS; higher = bona fide, 0 = training "
                 "decision boundary",
        "recipe": {"builder_kwargs": recipe["kwargs"], "dynamic": recipe["dynamic"], "alpha": extra.get("alpha"),
                   "control": res.get("control") or "alpha", "distill_weight": res.get("distill_weight", 0.0),
                   "init_from_teacher": bool(res.get("init_from_teacher", False)), "config": extra.get("config"),
                   "learned_widths": {k: float(v) for k, v in ckpt["widths"].items()}},
        "data": {"fingerprint": _digest(manifest.get("sha256", {})), "file_sha256": manifest.get("sha256", {}),
                 "manifest": man_small},
        "metrics": {"split": _spoof_split_text(manifest),
                    **{k: v for k, v in res.items() if k.startswith(("eer", "params", "macs", "gflops"))
                       and not (isinstance(v, float) and not math.isfinite(v))}},  # (NaN: not measured; not JSON)
        "commands": commands,
        "versions": _versions(),
    }
    pt, _ = save_shipped(Path(out) / f"{name}.pt", model, "spoof", dict(recipe["kwargs"]), meta)
    reloaded, _ = load_shipped(pt, "spoof", _build_plain)
    x = torch.randn(2, meta["clip_samples"], generator=torch.Generator().manual_seed(0)) * 0.1
    diff = _check(model, reloaded, x)
    if diff > 1e-5:
        raise RuntimeError(f"{pt}: the reloaded model differs from the exported one by {diff}")
    return pt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slimtrain.tasks.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=("vad", "spoof"))
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the data folder the checkpoint was trained on")
    p.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default: {ASSETS})")
    p.add_argument("--command", action="append", default=[], help="a command that reproduced the checkpoint "
                   "(repeatable, in order); the ship command itself is appended")
    p.add_argument("--metrics", type=Path, action="append", default=[], metavar="JSON",
                   help="vad: a 'slimtrain vad eval --json' output holding a row for this checkpoint (repeatable: "
                        "one per set); its rows and Silero's are recorded under metrics_by_set")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="file name in --out (default: vad_default / spoof_default; the 16 kHz VAD: vad_16k)")
    p.add_argument("--streaming", default=None, metavar="JSON",
                   help="vad: measured streaming cost to record as given, e.g. '{\"ours_ms_per_s\": 4.2, ...}'")
    a = p.parse_args(argv)
    cmds = list(a.command) + ["python -m slimtrain.tasks.ship " + " ".join(sys.argv[1:] if argv is None else argv)
                              .split(" --command")[0]]
    if a.task == "vad":
        pt = ship_vad(a.checkpoint, a.data, a.out, cmds, name=a.name or "vad_default", eval_files=a.metrics,
                      streaming=None if a.streaming is None else json.loads(a.streaming))
    else:
        if a.metrics or a.streaming:
            p.error("--metrics and --streaming apply to vad only")
        pt = ship_spoof(a.checkpoint, a.data, a.out, cmds, name=a.name or "spoof_default")
    print(f"wrote {pt} ({pt.stat().st_size / 1024:.0f} kB) and {pt.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
