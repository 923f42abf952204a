"""Commands of the VAD case study: ``slimtrain data vad``, ``slimtrain vad`` and
``slimtrain vad predict [--model M] FILE_OR_DIR...``."""
from __future__ import annotations

import argparse
import json
import time
import sys
from pathlib import Path

from ..options import (_check_no_sweep_engine_args, _int_at_least, _number, _paragraphs, _positive_float,
                       _refuse_sweep_under_torchrun, comma_list, human_source_list, sweep_seeds)
from ..study.cli import add_distill_options, add_options
from .cli_corpus import add_data_arguments, add_eval_data_arguments, uses_corpus

__all__ = ["register"]

DEFAULT_DATA = Path("runs/vad/data")
DEFAULT_OUT = Path("runs/vad")


def _budget(text: str) -> float:
    return _positive_float(text, "budget")


def _minutes(text: str) -> float:
    return _positive_float(text, "minutes")


def _nonneg(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def _tts_count(text: str) -> int:
    return _int_at_least(text, "tts-utterances", 0)


def _human_files(text: str) -> int:
    return _int_at_least(text, "human-files", 1)


def _family(text: str) -> str:
    from ...apps.vad.models import FAMILIES

    if text not in FAMILIES:
        raise argparse.ArgumentTypeError(f"family must be one of {', '.join(FAMILIES)}, got {text!r}")
    return text


def _speaker_list(text: str) -> list[str]:
    from ..audio import EXTRA_ASTERISK_SPEAKERS

    names = [t for t in (p.strip() for p in text.split(",")) if t]
    bad = [n for n in names if n not in EXTRA_ASTERISK_SPEAKERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown extra speaker(s) {', '.join(bad)}; choose from "
                                         f"{', '.join(sorted(EXTRA_ASTERISK_SPEAKERS))}")
    return names


_WIDTH_KEYS = {"crnn": ("conv1", "conv2", "hidden"), "transformer": ("d_model", "ff"),
               "marblenet": ("outer", "channels")}


def _widths(text: str) -> dict:
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, val = part.partition("=")
        if not key or not val.isdigit() or int(val) < 1:
            raise argparse.ArgumentTypeError(f"expected NAME=N[,NAME=N...] with N >= 1 (e.g. conv1=32,hidden=48), "
                                             f"got {part!r}")
        out[key.strip()] = int(val)
    return out


_budget_list = comma_list(_budget, "1.5e6,3e6 (FLOP/s budgets)")


def register(commands, data_commands) -> None:
    """Add ``slimtrain data vad`` and ``slimtrain vad`` (with ``predict``) to the CLI."""
    from .data import EVAL_SETS, VadDataConfig

    D, Q = VadDataConfig(), VadDataConfig.quick()
    d = data_commands.add_parser(
        "vad", help="build the VAD mixtures (Asterisk speech + music/noise) into a cache folder",
        description=_paragraphs(
            "Build the VAD data set deterministically from --seed: Asterisk prompt speech (train: English + "
            "Spanish voices, validation: French, test: Italian, so the test speaker is never heard in "
            f"training) in {D.clip_seconds:g} s clips with random gaps, mixed with music on hold or synthetic "
            f"noise (white, pink, brown, modulated, clicks, near silence) at SNRs {D.snr_db[0]:g} to "
            f"{D.snr_db[1]:g} dB, labelled per 10 ms frame from the clean speech (threshold "
            f"{D.label_threshold_db:g} dB below the clip's loudest frame, hangover {D.hangover_frames} frames).",
            "Writes OUT/train.npz, OUT/val.npz, OUT/test.npz and OUT/manifest.json (settings, sources of every "
            "clip, skipped files, SNR range). An existing set with the same settings is reused.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(d, ["out", "quick", "data_seed"], out=dict(default=DEFAULT_DATA),
                quick=dict(help=f"tiny set for tests: {Q.train_minutes:g}/{Q.val_minutes:g}/{Q.test_minutes:g} "
                                f"minutes train/val/test from {Q.max_files_per_language} files per language"))
    d.add_argument("--train-minutes", type=_minutes, default=None, metavar="M",
                   help=f"minutes of training audio (default: {D.train_minutes:g}; quick: {Q.train_minutes:g})")
    add_options(d, ["corpus"], corpus=dict(
        help="core: the documented data set (default); extended: + the es-CO and fr (Armelle) Asterisk speakers and "
             "synthetic speech (espeak-ng, flite, Festival) in training, babble, coloured noise and sound effects, "
             "reverberation, band-limiting, telephone codecs and clipping (docs/vad.md). Training commands given "
             "--data DIR read whichever corpus DIR holds"))
    d.add_argument("--tts-utterances", type=_tts_count, default=None, metavar="N",
                   help=f"--corpus extended: synthetic training utterances (default: {D.tts_utterances}; quick: 40)")
    d.add_argument("--extra-speakers", type=_speaker_list, default=None, metavar="S[,S...]",
                   help=f"--corpus extended: the extra real training speakers (default: "
                        f"{','.join(D.extra_train_speakers)}); 'es-co' keeps fr-armelle out for the unseen-voices "
                        "set of 'slimtrain vad eval --set unseen'")
    d.add_argument("--human-voices", type=human_source_list("train"), default=None, metavar="train|ID[,ID...]",
                   help="--corpus extended: recorded human-voice sources added to the training speech, "
                        "comma-separated: 'train' (every core source registered for training: KLettres in 15 "
                        "languages, Fish Fillets cs/nl dialogue, the Russian Asterisk voice), 'expressive' (the "
                        "Hedgewars training packs: short acted lines), 'all', or source ids; see 'slimtrain data "
                        "human-voices'. Default: none")
    d.add_argument("--human-files", type=_human_files, default=None, metavar="N",
                   help=f"--human-voices: at most N files per source (default: {D.human_files_per_source})")
    d.add_argument("--noise-recipe", choices=("v1", "v2"), default=None,
                   help="--corpus extended: the training split's noise: v1 (default; every extended noise type at "
                        "-5..30 dB) or v2 (+ generated music; music, white, pink and sound effects at -5..10 dB: the "
                        "types Silero VAD beat the shipped model on below 5 dB). Validation and test stay v1")
    d.add_argument("--sample-rate", type=int, choices=(8000, 16000), default=8000, metavar="HZ",
                   help="rate of the mixtures, 8000 (default) or 16000 (10 ms hop either way): every source is read "
                        "at it; 8 kHz sources (the Asterisk prompts) are upsampled and so hold no band above 4 kHz, the "
                        "manifest records the wideband share of the speech")
    add_options(d, ["force", "no_progress"], no_progress=dict(help="no progress bar"))
    d.set_defaults(func=_cmd_data)
    hv = data_commands.add_parser(
        "human-voices", help="list the recorded human-voice sources (Debian packages) with speakers, languages, minutes",
        description=_paragraphs(
            "Measure every registered recorded human-voice source on this machine (src/slimtrain/tasks/vad/"
            "human_voices.py): Debian package, language(s), speaker count and how it was counted, licence, role "
            "(train / val / test / held-out), files and minutes; then the totals per role. A missing package or a "
            "source with no usable file is an error naming it; empty or unreadable files are skipped and counted.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    hv.add_argument("--csv", type=Path, default=None, metavar="FILE",
                    help="also write the table (e.g. docs/vad_results/human_voices.csv, shown in docs/vad.md)")
    hv.set_defaults(func=_cmd_human_voices)

    v = commands.add_parser(
        "vad", help="the VAD case study: train a CRNN/Transformer VAD with learned widths, or --sweep",
        description=_paragraphs(
            "Voice activity detection with dynamic widths on the mel bands, every conv channel dimension, the "
            "GRU hidden size (CRNN) and the transformer model / feed-forward widths. Loss = frame BCE + "
            "alpha * FLOPs(K)/FLOPs(full) (or a FLOP/s --budget hinge). Metrics on the held-out Italian "
            "speaker: frame EER (pooled and per SNR band), ROC-AUC and F1 at the validation EER threshold; "
            "cost = FLOPs per second of audio and parameters of the exported model.",
            "Without --sweep: one run; writes OUT/vad_FAMILY.pt (for 'slimtrain export' and 'slimtrain vad "
            "predict') and OUT/result.json.",
            "With --sweep: DCL runs over --kappa-min values (paper: 0.5,0.25,0.125,0.0625), fixed-width "
            "models, torch-pruning and hard-concrete gate baselines, WebRTC VAD modes 0-3 and Silero VAD; "
            "writes OUT/sweep.csv, OUT/vad_pooled.csv, OUT/vad_by_snr.csv (the paper's table columns) and "
            "OUT/pareto.png.",
            "Subcommand: 'slimtrain vad predict [--model M] FILE_OR_DIR...' prints speech segments (shipped model by "
            "default).",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(
        v, ["sweep", "quick", "family", "kappa_min", "alpha", "alphas", "budget", "epochs", "settle_epochs",
            "compact_every"],
        sweep=dict(help="run the whole comparison instead of one model"),
        quick=dict(help="CI-sized: tiny data, 3 epochs, one kappa-min, fewer baselines (well under a minute)"),
        family=dict(type=_family, help="crnn, transformer or marblenet (MarbleNet 3x2x64, Jia et al. 2021: 1-D "
                                       "time-channel separable convolutions, 91 k parameters; docs/vad.md) (single "
                                       "run default: crnn; --sweep default: crnn and transformer)"),
        kappa_min=dict(help="lower bound(s) on every relative width K/N, in (0, 1]; single run: the first "
                            "(default 0.125); --sweep default: 0.5,0.25,0.125,0.0625 (quick: 0.25)"),
        alpha=dict(help="weight of the relative FLOPs term, >= 0 (default: 1.0)"),
        alphas=dict(help="--sweep only: extra DCL runs at the smallest kappa-min with these alphas (default: "
                         "0.25,4; quick: none)"),
        budget=dict(type=_budget_list, help="FLOPs per second of audio: single run uses a hinge budget (alpha then "
                                            "defaults to 0); --sweep adds one DCL budget run per value at the "
                                            "smallest kappa-min (default: 1.5e6; quick: none)"),
        epochs=dict(help="training epochs per run (default 24; quick 3)"),
        settle_epochs=dict(default=None, help="DCL runs: the last N epochs train the weights at the fixed hard "
                                              "widths the model is exported with (slimtrain.settle_widths), as "
                                              "pruning fine-tunes (default: half of --epochs; 0: widths learn to "
                                              "the end)"))
    v.add_argument("--heads", choices=("count", "width"), default="width",
                   help="transformer DCL runs: learn the dimensions per head, the same in every head (width, "
                        "default), or the number of attention heads (count)")
    v.add_argument("--band-order", choices=("spread", "low"), default="spread",
                   help="DCL runs: which mel bands the width keeps first: bands spread over the whole range "
                        "(default; a cut lowers the resolution) or the lowest (as in the paper; a cut lowers the "
                        "bandwidth)")
    v.add_argument("--widths", type=_widths, default=None, metavar="NAME=N,...",
                   help="single run: full (pre-DCL) widths, e.g. conv1=32,conv2=32,hidden=48 (CRNN: conv1, conv2, "
                        "hidden, n_mels; transformer: d_model, ff, n_mels); default: the documented widths")
    add_distill_options(v, "a trained VAD of the same rate (checkpoint or TorchScript file, e.g. a full-width run "
                           "with --kappa-min 1 --alpha 0), per 10 ms frame, or 'silero': Silero VAD (its "
                           "MIT-licensed weights in the silero-vad wheel) labels the training clips once")
    add_options(v, ["out"], out=dict(default=DEFAULT_OUT))
    v.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="VAD data cache (built if missing; default: OUT/data, quick: OUT/data-quick)")
    add_options(v, ["seed", "workers", "sweep_engine"], seed=dict(help="training seed (default: 0)"))
    v.add_argument("--no-anchors", action="store_true", help="--sweep: skip WebRTC VAD and Silero VAD")
    add_options(v, ["resume", "no_progress", "device"],
                resume=dict(help="--sweep: reuse the runs already finished in OUT/rows (same settings and data) and "
                                 "run only the missing or failed ones"))
    add_data_arguments(v)
    v.set_defaults(func=_cmd_vad)
    vsub = v.add_subparsers(dest="vad_command", metavar="{predict,eval}")
    pr = vsub.add_parser(
        "predict", help="speech segments (or frame probabilities) of audio files, with the shipped VAD by default",
        description=_paragraphs(
            "Print the speech segments of each FILE (folders are searched recursively for audio files). "
            "--model M is a shipped model (.pt + .json), a VAD checkpoint ('slimtrain vad' writes "
            "OUT/vad_FAMILY.pt; cut to its learned widths), a folder or TorchScript model.pt written by "
            "'slimtrain export'; without it the VAD shipped inside the package is used. The old form "
            "'slimtrain vad predict MODEL.pt FILE...' still works (a first argument ending in .pt/.ckpt is "
            "taken as the model when more than one is given).",
            "Any mono/multi-channel file at any rate: channels are averaged and the audio is resampled to the rate "
            "the model runs at (the shipped VAD: files above 8 kHz run through its 16 kHz model, the others through "
            "its 8 kHz model; a model trained with --sample-rate 16000: 16 kHz) "
            "(scipy.signal.resample_poly). Segments follow Silero's get_speech_timestamps: speech starts at a "
            "frame with probability >= --threshold, ends after --min-silence seconds below "
            "max(threshold - 0.15, threshold / 2), "
            "segments shorter than --min-speech are dropped, each is padded by --pad seconds.",
            "Formats: text = 'start<TAB>end' per segment (prefixed by 'FILE<TAB>' when several files are given, "
            "like grep); json = one document with every file, its segments (and frames) and the errors; rttm = "
            "one 'SPEAKER <file> 1 <start> <duration> <NA> <NA> speech <NA> <NA>' line per segment. A file that "
            "cannot be read is named on stderr and counted; the others are still processed; exit code 1 if any "
            "file failed.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("paths", type=Path, nargs="+", metavar="FILE_OR_DIR", help="audio files or folders (recursed)")
    pr.add_argument("--model", "-m", type=Path, default=None, metavar="M",
                    help="model file or export folder (default: the shipped models, slimtrain/assets/vad_default.pt at "
                         "8 kHz and vad_16k.pt for files above 8 kHz)")
    pr.add_argument("--format", choices=("text", "json", "rttm"), default="text",
                    help="output format: text (default), json or rttm")
    pr.add_argument("--frames", action="store_true",
                    help="also print the speech probability of every 10 ms frame (text: 'frame<TAB>time<TAB>prob' "
                         "lines after the segments; json: a 'frames' list); not with rttm")
    pr.add_argument("--threshold", type=_probability, default=None, metavar="P",
                    help="speech probability threshold in [0, 1] (default: the model's validation EER threshold, "
                         "else 0.5)")
    pr.add_argument("--min-speech", type=_nonneg, default=0.25, metavar="S",
                    help="drop segments shorter than S seconds (default: 0.25)")
    pr.add_argument("--min-silence", "--min-gap", dest="min_silence", type=_nonneg, default=0.1, metavar="S",
                    help="end a segment only after S seconds of non-speech; shorter pauses stay inside it "
                         "(default: 0.1)")
    pr.add_argument("--pad", type=_nonneg, default=0.03, metavar="S",
                    help="widen each segment by S seconds on both sides, splitting short gaps (default: 0.03)")
    pr.set_defaults(func=_cmd_predict)
    ev = vsub.add_parser(
        "eval", help="score VAD models and Silero VAD side by side on the Italian test split or the unseen-voices set",
        description=_paragraphs(
            "Score each --model (default: the shipped VAD) and Silero VAD on one set, per 10 ms frame: ROC-AUC, EER, "
            "F1 at each model's validation EER threshold (the validation split of --data), EER per SNR band.",
            "--set test: the held-out Italian test split of --data. --set unseen: the unseen-voices set (built into "
            "--unseen, default DATA/../unseen, on first use, about 40 s): the held-out human speaker fr Armelle, the "
            "Festival Italian voices and espeak-ng voices of 12 languages no training recipe uses, mixed like the "
            "extended test split; also AUC/EER/F1 per voice group. The training split of --data must not hold any "
            "of its voices (checked; build it with 'slimtrain data vad --corpus extended --extra-speakers es-co').",
            "--set unseen-human: only recorded human voices: the unseen set's fr Armelle clips plus held-out human "
            "sources (a second Italian PBX voice; KLettres speakers of Italian, Lithuanian, Hebrew, Malayalam, "
            "Ukrainian), built into --unseen on first use; per-source AUC/EER/F1. --set unseen-tts: the unseen "
            "set's synthetic clips only (Festival, espeak-ng). --set unseen-expressive: short acted game lines "
            "(laughs and grunts too) of the held-out Hedgewars voice packs (Spanish, Polish, Ukrainian), mixed the "
            "same way. All three also report AUC per SNR band; the training split of --data must hold no held-out "
            "human source or language (checked).",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--set", dest="eval_set", default="unseen", choices=EVAL_SETS, help="evaluation set (default: unseen)")
    ev.add_argument("--model", "-m", type=Path, action="append", default=None, metavar="M",
                    help="model to score (repeatable; shipped .pt, checkpoint or export folder; default: the shipped "
                         "VAD); 'shipped' names the shipped VAD next to others")
    ev.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                    help=f"VAD data folder: validation split (thresholds) and, for --set test, the test split "
                         f"(default: {DEFAULT_DATA})")
    ev.add_argument("--unseen", type=Path, default=None, metavar="DIR",
                    help="folder of the unseen-voices set, built at the rate of --data (default: the folder next to "
                         "--data named 'unseen', or 'unseen-16k' for a 16 kHz corpus)")
    ev.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write the rows to this CSV")
    ev.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the rows as JSON (for 'python -m slimtrain.tasks.ship --metrics')")
    ev.add_argument("--by-noise", type=Path, default=None, metavar="FILE",
                    help="also write frame AUC and EER per noise type x SNR band of every model to FILE (.csv, "
                         "or JSON for any other suffix; rows 'all' pool a noise type or a band) and print the AUCs")
    ev.add_argument("--no-silero", action="store_true", help="leave Silero VAD out")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_eval_data_arguments(ev)
    ev.set_defaults(func=_cmd_eval)


def _cmd_human_voices(args) -> int:
    from .. import human_voices as H

    rows = H.measure()
    print("\t".join(("id", "package", "role", "languages", "speakers", "files", "minutes", "speaker count")))
    for r in rows:
        print("\t".join(str(r[k]) for k in ("id", "package", "role", "languages", "speakers", "files", "minutes",
                                            "speaker_note")))
    for role, t in H.totals(rows).items():
        print(f"# {role}: {t['sources']} sources, {t['speakers']} speakers, {t['n_languages']} languages "
              f"({' '.join(t['languages'])}), {t['files']} files, {t['minutes']:.1f} min")
    if args.csv is not None:
        print(f"wrote {H.write_csv(rows, args.csv)}")
    return 0


def _cmd_data(args) -> int:
    from .build import build_vad_data
    from .data import VadDataConfig, load_vad_data

    cfg = VadDataConfig.quick(seed=args.seed) if args.quick else VadDataConfig(seed=args.seed)
    cfg.corpus = args.corpus
    cfg.sample_rate, cfg.hop = args.sample_rate, args.sample_rate // 100
    if args.train_minutes is not None:
        cfg.train_minutes = args.train_minutes
    if args.tts_utterances is not None:
        if args.corpus != "extended":
            raise ValueError("--tts-utterances only applies with --corpus extended")
        cfg.tts_utterances = args.tts_utterances
    elif args.quick:
        cfg.tts_utterances = 40
    if args.extra_speakers is not None:
        if args.corpus != "extended":
            raise ValueError("--extra-speakers only applies with --corpus extended")
        cfg.extra_train_speakers = tuple(args.extra_speakers)
    if args.human_voices is not None or args.human_files is not None:
        if args.corpus != "extended":
            raise ValueError("--human-voices/--human-files only apply with --corpus extended")
        if args.human_voices is not None:
            cfg.human_voices = tuple(args.human_voices)
        if args.human_files is not None:
            cfg.human_files_per_source = args.human_files
    if args.noise_recipe is not None:
        if args.corpus != "extended":
            raise ValueError("--noise-recipe only applies with --corpus extended")
        cfg.noise_recipe = args.noise_recipe
    t0 = time.perf_counter()
    m = build_vad_data(cfg, args.out, force=args.force, progress=not args.no_progress)
    _, manifest = load_vad_data(args.out)
    for split, info in manifest["splits"].items():
        skipped = f", skipped {len(info['skipped_files'])} files" if info["skipped_files"] else ""
        tts = f", {len(info['tts_voices'])} TTS voices" if info.get("tts_voices") else ""
        if info.get("speech_minutes_by_kind"):
            k = info["speech_minutes_by_kind"]
            tts += f" (speech: human {k['human']:.1f} min, TTS {k['tts']:.1f} min)"
        print(f"{split:5s}: {info['clips']} clips, {info['seconds'] / 60:.1f} min, speakers {','.join(info['speakers'])}"
              f"{tts}, speech {100 * info['speech_fraction']:.0f}% of frames, SNR {info['snr_db']['min']:.1f} to "
              f"{info['snr_db']['max']:.1f} dB{skipped}")
    if manifest.get("human_voices"):
        t = manifest["human_voices"]["totals"]
        print(f"human-voice sources in training: {t['sources']} sources, {t['speakers']} speakers, {t['n_languages']} "
              f"languages, {t['files_read']} files read, {t['minutes_in_clips']:.1f} min in the clips")
    if manifest["splits"]["train"].get("speech_minutes_by_source"):
        from .bandwidth import speech_bandwidth

        b = speech_bandwidth(manifest["splits"]["train"])
        print(f"training speech by native band: wideband (>= 16 kHz sources) {b['wideband_minutes']:.1f} min, "
              f"narrowband (8 kHz sources) {b['narrowband_minutes']:.1f} min: {100 * b['wideband_share']:.0f}% "
              f"wideband" + (f", {b['unknown_minutes']:.1f} min of unknown rate" if b["unknown_minutes"] else ""))
    print(f"wrote {m} (corpus {manifest.get('corpus', 'core')}, fingerprint {manifest['fingerprint']}, "
          f"{time.perf_counter() - t0:.1f}s)")
    return 0


def _cmd_eval(args) -> int:
    if args.test_data is not None or args.val_data is not None:
        from .cli_corpus import cmd_eval_corpus

        if args.test_data is None:
            raise ValueError("slimtrain vad eval: --val-data chooses thresholds; give the corpus to score with --test-data")
        return cmd_eval_corpus(args)
    from .evaluate import evaluate_models, format_breakdown, format_rows, write_rows

    models = [None if str(m) == "shipped" else m for m in (args.model or [None])]
    t0 = time.perf_counter()
    by_noise: "list | None" = [] if args.by_noise is not None else None
    rows = evaluate_models(models, args.eval_set, args.data, unseen_dir=args.unseen, silero=not args.no_silero,
                           breakdown=by_noise)
    print(f"# set {args.eval_set} ({rows[0]['clips']} clips, fingerprint {rows[0]['set_fingerprint']}); thresholds "
          f"from the validation split of {args.data} (fingerprint {rows[0]['data_fingerprint']})")
    print(format_rows(rows))
    for path in (args.csv, args.json):
        if path is not None:
            print(f"wrote {write_rows(rows, path)}")
    if by_noise is not None:
        from .breakdown import BreakdownError, hardest

        print("# frame AUC per noise type x SNR band")
        print(format_breakdown(by_noise))
        for model in dict.fromkeys(r["model"] for r in by_noise):
            try:
                worst = hardest(by_noise, model, band="< 5 dB", n=3)
            except BreakdownError:  # no clip below 5 dB with both classes
                continue
            print(f"# hardest below 5 dB for {model}: " + ", ".join(f"{k} (AUC {v:.3f})" for k, v in worst))
        print(f"wrote {write_rows(by_noise, args.by_noise)}")
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0


def _cmd_vad(args) -> int:
    if getattr(args, "vad_command", None) == "predict":
        return _cmd_predict(args)
    if getattr(args, "vad_command", None) == "eval":
        return _cmd_eval(args)
    from ...train import distributed
    from .build import build_vad_data
    from .data import VadDataConfig, load_vad_data
    from .sweep import VadSweepConfig, format_summary_table, format_table, run_sweep
    from .train import VadRunConfig, default_settle_epochs, train_vad

    device = getattr(args, "device", "cpu")
    distributed.resolve_device(device)  # an unavailable device stops here, before any work
    out: Path = args.out
    progress = not args.no_progress
    data_dir = args.data or (out / ("data-quick" if args.quick else "data"))
    corpus = uses_corpus(args)
    if args.teacher is not None and (corpus or args.sweep):
        raise ValueError("--teacher applies to single runs on a built corpus (not --sweep or --train-data)")
    if not corpus and args.sample_rate not in (None, 8000) and (args.sweep or args.quick or args.data is None):
        raise ValueError(f"--sample-rate {args.sample_rate} with the built-in corpus needs a corpus built at that rate: "
                         f"'slimtrain data vad --sample-rate {args.sample_rate} --out DIR', then --data DIR (a single "
                         "run; --sweep and --quick are 8 kHz)")
    if args.sweep:
        if args.widths:
            raise ValueError("--widths applies to a single run, not --sweep")
        _refuse_sweep_under_torchrun()
        cfg = VadSweepConfig.quick() if args.quick else VadSweepConfig()
        if args.family:
            cfg.families = (args.family,)
        if args.kappa_min:
            cfg.kappas = tuple(args.kappa_min)
            cfg.prune_kappas = tuple(k for k in cfg.prune_kappas if k in cfg.kappas) or (cfg.kappas[0],)
            cfg.gate_intervals = tuple((k, min(1.0, 2 * k)) for k in cfg.kappas if k < 1)
        cfg.alpha = args.alpha
        if args.alphas is not None:
            cfg.alphas = tuple(args.alphas)
        if args.budget is not None:
            cfg.budgets = tuple(args.budget)
        cfg.epochs = args.epochs or cfg.epochs
        cfg.settle_epochs = args.settle_epochs
        cfg.heads = args.heads
        cfg.band_order = args.band_order
        cfg.seed, cfg.workers, cfg.anchors = args.seed, args.workers, not args.no_anchors
        cfg.seeds = tuple(sweep_seeds(args))
        cfg.engine, cfg.address = args.engine, args.address
        if corpus:
            from dataclasses import asdict

            from .cli_corpus import check_corpus_args, corpus_config

            check_corpus_args(args)
            cfg.corpus = asdict(corpus_config(args))
            cfg.batch_size = args.batch_size
        t0 = time.perf_counter()
        rows = run_sweep(cfg, out, cache=data_dir, progress=progress, resume=args.resume, device=device)
        print(format_table(rows) if len(cfg.seed_list) == 1 else format_summary_table(rows))
        print(f"sweep of {len(rows)} rows ({len(cfg.seed_list)} seed(s)) took {time.perf_counter() - t0:.0f}s; wrote "
              f"{out / 'sweep.csv'}, {out / 'sweep_summary.csv'}, {out / 'vad_pooled.csv'}, {out / 'vad_by_snr.csv'}, "
              f"{out / 'pareto.png'}")
        return 0
    if args.alphas:
        raise ValueError("--alphas only applies with --sweep")
    widths = dict(args.widths or {})
    fam = args.family or "crnn"
    unknown = sorted(set(widths) - set(_WIDTH_KEYS[fam]) - {"n_mels"})
    if unknown:
        raise ValueError(f"--widths: unknown width(s) {', '.join(unknown)} for family {fam}; choose from "
                         f"{', '.join(_WIDTH_KEYS[fam] + ('n_mels',))}")
    _check_no_sweep_engine_args(args)
    if corpus:
        from .cli_corpus import cmd_train_corpus

        budget = args.budget[0] if args.budget else None
        epochs = args.epochs or (3 if args.quick else VadSweepConfig.epochs)
        settle = default_settle_epochs(epochs) if args.settle_epochs is None else args.settle_epochs
        kw = dict(kappa_min=(args.kappa_min or [0.125])[0],
                  alpha=0.0 if budget is not None and args.alpha == 1.0 else args.alpha, budget=budget, epochs=epochs,
                  settle_epochs=settle, settle_at_budget=budget is not None and settle > 0, seed=args.seed,
                  n_mels=widths.pop("n_mels", 80), widths=widths, heads=args.heads, band_order=args.band_order)
        families = [args.family] if args.family else (["crnn", "transformer"] if args.recipe == "paper" else ["crnn"])
        return cmd_train_corpus(args, kw, families)
    dcfg = VadDataConfig.quick() if args.quick else VadDataConfig()
    if args.sample_rate is not None:  # a core corpus is built at this rate (a folder built otherwise is read as it is)
        dcfg.sample_rate, dcfg.hop = args.sample_rate, args.sample_rate // 100
    distributed.init(distributed.resolve_device(device))  # torchrun: the process group, to wait for rank 0's data
    main = distributed.is_main()
    if main:
        if args.data is not None and not (Path(data_dir) / "manifest.json").is_file():
            print(f"slimtrain: no corpus in {data_dir} (no manifest.json): building the core corpus there; for "
                  f"the extended one: slimtrain data vad --corpus extended --out {data_dir}", file=sys.stderr)
        build_vad_data(dcfg, data_dir, progress=progress)
    distributed.barrier()
    data, manifest = load_vad_data(data_dir)
    rate = int(manifest["config"].get("sample_rate", 8000))
    if args.sample_rate is not None and args.sample_rate != rate:
        raise ValueError(f"--sample-rate {args.sample_rate}: the corpus in {data_dir} is at {rate} Hz (build one with "
                         f"'slimtrain data vad --sample-rate {args.sample_rate} --out DIR' and pass --data DIR)")
    budget = args.budget[0] if args.budget else None
    family = args.family or "crnn"
    epochs = args.epochs or (3 if args.quick else VadSweepConfig.epochs)  # as the sweep
    settle = default_settle_epochs(epochs) if args.settle_epochs is None else args.settle_epochs
    run = VadRunConfig(family=family, kappa_min=(args.kappa_min or [0.125])[0],
                       alpha=0.0 if budget is not None and args.alpha == 1.0 else args.alpha, budget=budget,
                       epochs=epochs,
                       settle_epochs=settle, settle_at_budget=budget is not None and settle > 0,
                       compact_every=args.compact_every,
                       seed=args.seed, n_mels=widths.pop("n_mels", 80), widths=widths,
                       heads=args.heads if family == "transformer" else "count", band_order=args.band_order,
                       sample_rate=rate)
    teacher = None
    if args.teacher is not None and str(args.teacher) == "silero":
        from .anchors import silero_teacher

        teacher = silero_teacher(data["train"].audio, rate, int(manifest["config"].get("hop", rate // 100)))
    elif args.teacher is not None:
        from ...train.checkpoint import load_for_inference

        teacher = load_for_inference(args.teacher, "vad")[0]
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / f"vad_{family}.pt"
    _, row = train_vad(run, data, checkpoint=ckpt, progress=progress, device=device, teacher=teacher,
                       distill_weight=args.distill_weight, distill_temperature=args.distill_temperature)
    if not main:
        return 0
    (out / "result.json").write_text(json.dumps({"config": run.__dict__, "result": row}, indent=2, default=str) + "\n")
    print(f"{family} kappa_min={run.kappa_min:g} alpha={run.alpha:g}"
          + (f" budget={budget:g} FLOP/s" if budget else "") + f": mel bands 80 -> {row['mel_bands']}, widths {row['widths']}")
    print(f"  exported: {row['mflops_per_s']:.3f} MFLOP/s, {row['params']} params")
    print(f"  held-out (Italian) frame EER {100 * row['eer']:.2f}%, AUC {row['auc']:.4f}, F1 {row['f1']:.4f}; "
          + ", ".join(f"{k[4:]}: {100 * row[k]:.1f}%" for k in row if k.startswith("eer ")))
    print(f"  wrote {ckpt} and {out / 'result.json'}; next: slimtrain vad predict {ckpt} FILE.wav")
    return 0




def _probability(text: str) -> float:
    v = _number(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be a probability in [0, 1], got {text}")
    return v


def _cmd_predict(args) -> int:
    import sys

    from ...apps import vad
    from ..audio import AudioError, read_audio
    from ...audio.io import expand_audio_paths

    if args.frames and args.format == "rttm":
        raise ValueError("--frames cannot be written as rttm; use --format text or json")
    from ...audio.io import split_model_arg

    model_path, paths = split_model_arg(args.model, args.paths)
    model = vad.load(model_path)
    thr = model.threshold if args.threshold is None else args.threshold
    items = expand_audio_paths(paths)
    many = len(items) > 1
    results, errors = [], []
    n_seg = speech = total = 0.0
    for path, problem in items:
        try:
            if problem is not None:
                raise AudioError(problem)
            x, sr = read_audio(path)
            probs = model.frame_probs(x, sr)
        except (AudioError, vad.AudioInputError) as e:
            msg = " ".join(str(e).split())
            msg = msg if str(path) in msg else f"{path}: {msg}"
            print(f"slimtrain: error: {msg}", file=sys.stderr)
            errors.append({"file": str(path), "error": msg})
            continue
        duration = len(x) / sr
        served = model.for_rate(sr)  # the shipped pair: the 16 kHz model above 8 kHz, with its own threshold
        thr_f = served.threshold if args.threshold is None else args.threshold
        segs = vad.probs_to_segments(probs, thr_f, min_speech_ms=1000 * args.min_speech,
                                     min_silence_ms=1000 * args.min_silence, speech_pad_ms=1000 * args.pad,
                                     duration=duration)
        n_seg += len(segs)
        speech += sum(s["end"] - s["start"] for s in segs)
        total += duration
        res = {"file": str(path), "duration": round(duration, 3), "model_rate": served.sample_rate,
               "threshold": round(thr_f, 6), "segments": segs}
        if args.frames:
            res["frames"] = [round(float(p), 4) for p in probs]
        results.append(res)
        if args.format == "text":
            pre = f"{path}\t" if many else ""
            for s in segs:
                print(f"{pre}{s['start']:.3f}\t{s['end']:.3f}")
            if args.frames:
                for t, p in enumerate(probs):
                    print(f"{pre}frame\t{t * vad.FRAME_SECONDS:.2f}\t{p:.4f}")
        elif args.format == "rttm":
            uri = "_".join(path.stem.split()) or "audio"
            for s in segs:
                print(f"SPEAKER {uri} 1 {s['start']:.3f} {s['end'] - s['start']:.3f} <NA> <NA> speech <NA> <NA>")
        sys.stdout.flush()
    if args.format == "json":
        import json as _json

        print(_json.dumps({"model": model.source, "threshold": round(thr, 6), "frame_seconds": vad.FRAME_SECONDS,
                           "files": results, "errors": errors, "failed": len(errors)}))
    failed = f"; {len(errors)} of {len(items)} failed" if errors else ""
    print(f"{len(results)} files: {int(n_seg)} speech segments, {speech:.2f} s of {total:.2f} s "
          f"(threshold {thr:.3g}" + (f"; {model.wideband.threshold:.3g} for files above {model.sample_rate} Hz"
                                     if model.wideband is not None and args.threshold is None else "")
          + f"){failed}", file=sys.stderr)
    return 1 if errors else 0
