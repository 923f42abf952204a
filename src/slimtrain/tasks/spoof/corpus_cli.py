"""``slimtrain spoof --train-data ... --val-data ...`` and ``--recipe paper``: the countermeasure on the user's corpus."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..study.cli import given

__all__ = ["run_corpus", "PAPER", "PAPER_EPOCHS"]

#: the paper's countermeasure: ResNet34 (3, 4, 6, 3 basic blocks), base width 64, 16 kHz, every stage dynamic
PAPER = {"width": 64, "blocks": (3, 4, 6, 3), "sample_rate": 16000, "stages": (0, 1, 2, 3)}
#: training length of --recipe paper (our choice: docs/ does not record the paper's)
PAPER_EPOCHS = 20


def _refuse(flags: dict) -> None:
    for flag, bad in flags.items():
        if bad:
            raise ValueError(f"{flag} does not apply to training on your corpus (--train-data/--val-data, --recipe)")


def _corpus_summary(c) -> dict:
    return {"protocol": str(c.protocol), "format": c.format, "audio_dir": str(c.audio_dir), "items": len(c),
            "sample_rate": c.sample_rate, "counts": c.counts()}


def _eer_line(name: str, r: dict) -> str:
    e = r["eer"]
    per = ", ".join(f"{k} {v:.2f}%" for k, v in e.items() if k != "pooled")
    tdcf = f", min t-DCF {r['min_tdcf']:.4f}" if "min_tdcf" in r else ""
    return f"  {name}: EER pooled {e['pooled']:.2f}%{tdcf}; per attack: {per}"


def run_corpus(args) -> int:
    """The corpus branch of ``slimtrain spoof`` (arguments of :func:`slimtrain.tasks.spoof.cli.register`)."""
    from ...audio.data import SkipReport
    from ...audio.data.spoof_corpus import asvspoof2019_paths, read_asv_scores, read_spoof_corpus
    from .corpus_train import CorpusOptions, train_on_corpus
    from .train import SpoofConfig

    _refuse({"--sweep": args.sweep, "--data": args.data is not None, "--fixed-widths": args.fixed_widths is not None,
                   "--no-pruning": args.no_pruning, "--pruning-only": args.pruning_only, "--resume": args.resume,
                   "--workers (use --loader-workers)": args.workers is not None,
                   "--seeds/--seed-list": getattr(args, "seeds", None) is not None
                   or getattr(args, "seed_list", None) is not None})
    paper = args.recipe == "paper"
    train_p, val_p, test_p, asv_p = args.train_data, args.val_data, args.test_data, args.asv_scores
    if args.asvspoof_root is not None:
        found = asvspoof2019_paths(args.asvspoof_root)
        train_p = train_p or found["train"]
        val_p = val_p or found["dev"]
        test_p = test_p or found["eval"]
        if asv_p is None:
            asv_p = found.get("asv_eval" if test_p == found["eval"] else "asv_dev")
    if train_p is None or val_p is None:
        raise ValueError("training on your corpus needs --train-data and --val-data (or --asvspoof-root)")
    if paper:
        if args.quick or args.width is not None:
            raise ValueError("--recipe paper fixes the model (ResNet34, base width 64); drop --quick/--width")
        if args.sample_rate not in (None, PAPER["sample_rate"]):
            raise ValueError(f"--recipe paper runs at {PAPER['sample_rate']} Hz, got --sample-rate {args.sample_rate}")
    rate = args.sample_rate or 16000
    over: dict = {"seed": args.seed, "settle_epochs": getattr(args, "settle_epochs", 0)}
    if paper:
        over.update(width=PAPER["width"], blocks=PAPER["blocks"], epochs=PAPER_EPOCHS)
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.width is not None:
        over["width"] = args.width
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    # (_cmd_spoof checked --rawboost-p against --rawboost and --freq-masks against --freq-mask)
    over.update(given(args, "rawboost", "rawboost_p", "head", "freq_mask", "freq_masks"))
    cfg = SpoofConfig.quick(**over) if args.quick else SpoofConfig(**over)
    if cfg.warmup_epochs >= cfg.epochs:
        cfg.warmup_epochs = cfg.epochs - 1
    cfg.validate()
    opts = CorpusOptions(sample_rate=rate, crop_seconds=args.crop_seconds if args.crop_seconds is not None else 4.0,
                         workers=args.loader_workers or 0, cache_dir=args.cache_dir, n_mels=args.n_mels, n_fft=args.n_fft,
                         freq_scale=args.freq_scale or "mel", phase=args.phase).validate()
    if args.stages is not None and len(args.stages) > 1:
        raise ValueError("give one stage set (several sets separated by '/' need --sweep, built-in corpus only)")
    if args.kappa_min is not None and len(args.kappa_min) > 1:
        raise ValueError("give one --kappa-min (a list needs --sweep, built-in corpus only)")
    stages = args.stages[0] if args.stages else PAPER["stages"]
    kappa = args.kappa_min[0] if args.kappa_min else 0.125
    progress = not args.no_progress
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    report = SkipReport(args.skip_bad)
    read = dict(format=args.format, audio_dir=args.audio_dir, skip_bad=args.skip_bad, report=report, progress=progress)
    train = read_spoof_corpus(train_p, **read)
    val = read_spoof_corpus(val_p, **read)
    test = read_spoof_corpus(test_p, **read) if test_p is not None else None
    asv = read_asv_scores(asv_p) if asv_p is not None else None
    for c in (train, val, test):
        if c is not None and c.sample_rate != rate and args.cache_dir is None:
            print(f"note: {c.protocol.name} is at {c.sample_rate} Hz; every read is resampled to {rate} Hz "
                  "(--cache-dir DIR resamples each file once)", file=sys.stderr)
    from ...train import distributed

    main = distributed.is_main()
    if args.skip_bad and main:
        report.print_summary()
        report.write(out / "skipped.csv")
    print(f"data ({time.perf_counter() - t0:.1f}s): train {len(train)} files {train.counts()}; val {len(val)}"
          + (f"; test {len(test)}" if test is not None else ""))
    row = train_on_corpus(cfg, opts, train, val, test, asv=asv, stages=stages, kappa_min=kappa, alpha=args.alpha,
                          macs_budget=getattr(args, "macs_budget", None), checkpoint=out / "model.ckpt",
                          record_csv=out / "widths.csv", progress=progress, device=getattr(args, "device", "cpu"))
    if not main:  # torchrun: rank 0 writes and prints
        return 0
    doc = {"recipe": args.recipe, "config": cfg.as_dict(),
           "options": {"sample_rate": opts.sample_rate, "crop_seconds": opts.crop_seconds, "workers": opts.workers,
                       "cache": str(opts.cache_dir) if opts.cache_dir else None},
           "data": {"train": _corpus_summary(train), "val": _corpus_summary(val),
                    **({"test": _corpus_summary(test)} if test is not None else {}),
                    "asv_scores": str(asv_p) if asv_p is not None else None},
           "skipped": report.counts(), "result": row}
    (out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    what = f"stages {','.join(map(str, stages))}, kappa-min {kappa:g}" if stages else f"plain width {cfg.width}"
    print(f"{what} at {rate} Hz: learned widths {row['widths']}")
    print(f"  exported: {row['params']} params, {row['gflops_per_second']:.4f} GFLOP/s")
    for name in ("val", "test"):
        if name in row:
            print(_eer_line(name, row[name]))
    print(f"  wrote {out / 'model.ckpt'} (slimtrain.spoof.load), {out / 'result.json'}"
          + (f", {out / 'skipped.csv'}" if args.skip_bad else "") + f" in {time.perf_counter() - t0:.1f}s")
    return 0
