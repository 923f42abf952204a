"""The user-data side of ``slimtrain vad``: ``--train-data/--val-data/--test-data/--noise-data``,
``--recipe paper --vctk DIR --esc50 DIR``, and ``slimtrain vad eval --test-data``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

__all__ = ["add_data_arguments", "add_eval_data_arguments", "uses_corpus", "corpus_config", "cmd_train_corpus",
           "cmd_eval_corpus"]

DATA_HELP = ("PATH: a folder of audio files (wav, flac, ogg; any rate; channels are averaged) with an .rttm of the "
             "same stem beside each (empty: no speech), one .rttm file for the audio under its folder, or a CSV "
             "manifest with the header path,start,end (one row per speech segment; empty start,end: a file "
             "without speech)")


def _rate(text: str) -> int:
    if text not in ("8000", "16000"):
        raise argparse.ArgumentTypeError(f"--sample-rate must be 8000 or 16000, got {text}")
    return int(text)


def _secs(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not v >= 0.5:
        raise argparse.ArgumentTypeError(f"crop length must be >= 0.5 s, got {text}")
    return v


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _common(p: argparse.ArgumentParser, *, rate_help: str) -> None:
    p.add_argument("--sample-rate", type=_rate, default=None, metavar="8000|16000", help=rate_help)
    p.add_argument("--no-resample", action="store_true",
                   help="user data: do not resample; a file at another rate than --sample-rate is an error "
                        "(mixed sample rates); default: every file is resampled once when read")
    p.add_argument("--skip-bad", action="store_true",
                   help="user data: leave out bad files and lines (unreadable or empty audio, RTTM lines that do not "
                        "parse, negative durations, segments past the end of the file, a missing RTTM) instead of "
                        "stopping at the first; prints them, writes OUT/skipped.csv and counts them in the result JSON")
    p.add_argument("--crop-seconds", type=_secs, default=4.0, metavar="S",
                   help="user data: length of the training/evaluation crops in seconds (default: 4)")
    p.add_argument("--loader-workers", type=_count, default=0, metavar="N",
                   help="user data: DataLoader worker processes that read and resample the crops (default: 0, in "
                        "the main process)")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="user data: keep each file's resampled mono audio here (.npy) so it is resampled once")


def add_data_arguments(v: argparse.ArgumentParser) -> None:
    """The data flags of ``slimtrain vad`` (single run and --sweep)."""
    g = v.add_argument_group("your data (instead of the built-in corpus; " + DATA_HELP + ")")
    g.add_argument("--train-data", type=Path, default=None, metavar="PATH", help="training corpus")
    g.add_argument("--val-data", type=Path, default=None, metavar="PATH",
                   help="validation corpus (chooses the decision threshold: the EER point)")
    g.add_argument("--test-data", type=Path, default=None, metavar="PATH",
                   help="test corpus (metrics; without it the metrics are on the validation corpus)")
    g.add_argument("--noise-data", type=Path, default=None, metavar="DIR",
                   help="a folder of non-speech audio (MUSAN, ESC-50, DEMAND, your own) mixed into 80%% of the "
                        "training crops at SNRs from -5 to 20 dB")
    _common(g, rate_help="rate the VAD trains and runs at: 8000 or 16000 (default with your data: 16000; the "
                         "built-in corpus is 8000 only)")
    g.add_argument("--batch-size", type=_positive, default=16, metavar="N", help="user data: crops per batch (default: 16)")
    g.add_argument("--recipe", choices=("paper",), default=None,
                   help="paper: the paper's VAD set-up -- its CRNN and Transformer at its sizes (80 mel bands, "
                        "about 674k and 138k parameters), trained at 16 kHz on VCTK (--vctk) mixed with ESC-50 "
                        "(--esc50); both families unless --family is given (docs/vad.md, 'Your data, 16 kHz and the "
                        "paper recipe')")
    g.add_argument("--vctk", type=Path, default=None, metavar="DIR",
                   help="--recipe paper: your VCTK copy (wav48_silence_trimmed/pXXX/*.flac or wav48/pXXX/*.wav)")
    g.add_argument("--esc50", type=Path, default=None, metavar="DIR",
                   help="--recipe paper: your ESC-50 copy (audio/*.wav and meta/esc50.csv)")


def add_eval_data_arguments(ev: argparse.ArgumentParser) -> None:
    """The data flags of ``slimtrain vad eval``."""
    g = ev.add_argument_group("your data (" + DATA_HELP + ")")
    g.add_argument("--test-data", type=Path, default=None, metavar="PATH",
                   help="score the models on this corpus instead of --set (AUC, EER, F1 per 10 ms frame)")
    g.add_argument("--val-data", type=Path, default=None, metavar="PATH",
                   help="with --test-data: choose each model's threshold here (EER point); default: the "
                        "threshold recorded with the model")
    _common(g, rate_help="with --test-data: the rate to read the corpus at; it must be the model's rate (default: "
                         "each model's own rate, model.sample_rate; the shipped VAD: its 16 kHz model, or its 8 kHz model "
                         "with --sample-rate 8000)")


def uses_corpus(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("train_data", "val_data", "test_data", "noise_data")) \
        or getattr(args, "recipe", None) is not None


def corpus_config(args, *, sample_rate: int | None = None):
    from .corpus import CorpusDataConfig

    return CorpusDataConfig(
        train=None if getattr(args, "train_data", None) is None else str(args.train_data),
        val=None if args.val_data is None else str(args.val_data),
        test=None if args.test_data is None else str(args.test_data),
        noise=None if getattr(args, "noise_data", None) is None else str(args.noise_data),
        sample_rate=sample_rate or args.sample_rate or 16000, resample=not args.no_resample, skip_bad=args.skip_bad,
        crop_seconds=args.crop_seconds, cache_dir=None if args.cache_dir is None else str(args.cache_dir),
        loader_workers=args.loader_workers).validate()


def check_corpus_args(args) -> None:
    """Refuse combinations that cannot mean anything, before any work."""
    if args.recipe == "paper":
        if args.vctk is None or args.esc50 is None:
            raise ValueError("--recipe paper needs --vctk DIR and --esc50 DIR (your copies of VCTK and ESC-50)")
        if any(getattr(args, k) is not None for k in ("train_data", "val_data", "test_data", "noise_data")):
            raise ValueError("--recipe paper builds its own data from --vctk and --esc50; leave out --train-data, "
                             "--val-data, --test-data and --noise-data")
        if args.sample_rate not in (None, 16000):
            raise ValueError("--recipe paper runs at 16 kHz (the paper's rate); leave out --sample-rate or give 16000")
        if args.sweep:
            raise ValueError("--recipe paper trains single models; run --sweep with --train-data/--val-data")
        return
    if args.vctk is not None or args.esc50 is not None:
        raise ValueError("--vctk and --esc50 only apply with --recipe paper")
    if args.train_data is None or args.val_data is None:
        raise ValueError("training on your data needs both --train-data PATH and --val-data PATH")
    if args.data is not None:
        raise ValueError("--data is the built-in corpus's cache folder; leave it out with --train-data")


def _finish_report(report, out: Path) -> dict:
    counts = report.counts()
    if report.skip_bad:
        report.print_summary()
        path = report.write(out / "skipped.csv")
        counts["report"] = str(path)
        print(f"wrote the skip report {path}")
    return counts


def _print_row(row: dict, ckpt: Path, out: Path) -> None:
    print(f"{row['family']} at {row['sample_rate']} Hz, kappa_min={row['kappa_min']} alpha={row['alpha']}"
          + (f" budget={row['budget']:g} FLOP/s" if row.get("budget") else "")
          + f": mel bands {row['mel_bands']}, widths {row['widths']}")
    print(f"  exported: {row['mflops_per_s']:.3f} MFLOP/s, {row['params']} params")
    print(f"  {row['metrics_on']} ({row['frames']} frames): EER {100 * row['eer']:.2f}%, AUC {row['auc']:.4f}, "
          f"F1 {row['f1']:.4f}")
    print(f"  wrote {ckpt} and {out / 'result.json'}; next: slimtrain vad predict --model {ckpt} FILE.wav")


def cmd_train_corpus(args, run_kwargs: dict, families: list[str]) -> int:
    """One run per family on the user's data (or the paper recipe); writes OUT/vad_FAMILY.pt and result.json."""
    from ...train import distributed
    from .corpus import load_corpus_data, train_vad_on_corpus
    from .train import VadRunConfig

    check_corpus_args(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    device = getattr(args, "device", "cpu")
    t0 = time.perf_counter()
    if args.recipe == "paper":
        from .paper import PAPER_N_MELS, PAPER_WIDTHS, paper_data

        data = paper_data(args.vctk, args.esc50, crop_seconds=args.crop_seconds, seed=args.seed, skip_bad=args.skip_bad,
                          cache_dir=None if args.cache_dir is None else str(args.cache_dir),
                          loader_workers=args.loader_workers, progress=progress)
    else:
        data = load_corpus_data(corpus_config(args), progress=progress, seed=args.seed)
    print("data: " + "; ".join(f"{k}: {v.get('files', v.get('utterances'))} files" + (f", {v['hours']:.3f} h"
                                 if "hours" in v else "") for k, v in data.summary.items() if isinstance(v, dict)
                                 and ("files" in v or "utterances" in v))
          + f" at {data.sample_rate} Hz ({time.perf_counter() - t0:.1f}s scan)")
    results = []
    for fam in families:
        kw = dict(run_kwargs, family=fam, batch_size=args.batch_size)
        if args.recipe == "paper":
            kw["widths"], kw["n_mels"] = dict(PAPER_WIDTHS[fam]), PAPER_N_MELS
        if fam != "transformer":
            kw["heads"] = "count"
        run = VadRunConfig(**kw)
        ckpt = out / f"vad_{fam}.pt"
        _, row = train_vad_on_corpus(run, data, checkpoint=ckpt, progress=progress, device=device)
        results.append((run, row, ckpt))
    if not distributed.is_main():
        return 0
    skipped = _finish_report(data.report, out)
    doc = {"data": data.summary, "skipped": skipped, "recipe": args.recipe,
           "runs": [{"config": asdict(run), "result": row, "checkpoint": str(ckpt)} for run, row, ckpt in results]}
    if len(results) == 1:
        doc["config"], doc["result"] = doc["runs"][0]["config"], doc["runs"][0]["result"]
    (out / "result.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    for _, row, ckpt in results:
        _print_row(row, ckpt, out)
    return 0


def cmd_eval_corpus(args) -> int:
    """``slimtrain vad eval --test-data PATH [--val-data PATH]``: each model on the user's corpus."""
    import math

    from ...apps import vad
    from ...audio.data import SkipReport
    from .corpus import corpus_metrics, load_corpus_data

    rows = []
    reports = SkipReport(args.skip_bad)
    for m in (args.model or [None]):
        if m is None or str(m) == "shipped":  # the shipped model of the asked rate (16 kHz by default, as the reader)
            rate = args.sample_rate or (16000 if vad.default_model_path(16000).is_file() else 8000)
            model = vad.load(sample_rate=rate)
        else:
            model = vad.load(m)
        rate = model.sample_rate
        if args.sample_rate is not None and args.sample_rate != rate:
            raise ValueError(f"--sample-rate {args.sample_rate}: model {model.source} runs at {rate} Hz; read the data "
                             f"at its rate (leave out --sample-rate)")
        data = load_corpus_data(corpus_config(args, sample_rate=rate), progress=not args.no_progress)
        reports.extend(data.report)
        thr = None
        if args.val_data is None:
            p = min(max(model.threshold, 1e-7), 1 - 1e-7)
            thr = math.log(p / (1 - p))
        res = corpus_metrics(model.model, data.val, data.test, threshold=thr, workers=args.loader_workers,
                             progress=not args.no_progress)
        rows.append({"model": model.source, "sample_rate": rate, **res,
                     "threshold_from": "val-data" if args.val_data is not None else "model"})
    print("| model | rate | frames | AUC | EER % | F1 | threshold from |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['sample_rate']} | {r['frames']} | {r['auc']:.4f} | {100 * r['eer']:.2f} | "
              f"{r['f1']:.4f} | {r['threshold_from']} |")
    counts = reports.counts()
    if reports.skip_bad:
        reports.print_summary()
        if args.json is not None:
            counts["report"] = str(reports.write(Path(args.json).with_suffix(".skipped.csv")))
    for path in (args.csv, args.json):
        if path is None:
            continue
        path = Path(path)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps({"rows": rows, "skipped": counts}, indent=2) + "\n")
        else:
            import csv

            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        print(f"wrote {path}", file=sys.stderr)
    return 0
