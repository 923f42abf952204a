"""Commands of the anti-spoofing case study: ``slimtrain data spoof``, ``slimtrain spoof`` and
``slimtrain spoof score [--model M] FILE_OR_DIR...``."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from ..options import (_check_no_sweep_engine_args, _int_at_least, _paragraphs, _positive_float, _positive_int,
                       _refuse_sweep_under_torchrun, comma_list, human_source_list, sweep_seeds)
from ..study.cli import add_distill_options, add_options, given

__all__ = ["register"]

DEFAULT_DATA = Path("runs/spoof/data")
DEFAULT_QUICK_DATA = Path("runs/spoof/data-quick")
DEFAULT_OUT = Path("runs/spoof")


def _stage_sets(text: str) -> list[tuple[int, ...]]:
    from ...apps.spoof.models import parse_stages

    out = []
    for part in text.split("/"):
        try:
            out.append(parse_stages(part))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return out


def register(commands, data_commands) -> None:
    """Add ``slimtrain data spoof`` and ``slimtrain spoof`` (with ``score``) to the CLI."""
    from .data import SPLICE_LIKE_SOURCE, SpoofDataConfig
    from .sweep import DEFAULT_FIXED_WIDTHS, DEFAULT_KAPPAS
    from ..rawboost import RAWBOOST_ALGORITHMS
    from .train import SpoofConfig

    D, Q = SpoofDataConfig(), SpoofDataConfig.quick()
    M, MQ = SpoofConfig(), SpoofConfig.quick()
    d = data_commands.add_parser(
        "spoof", help="build the anti-spoofing data set (Asterisk prompts + offline attack families)",
        description=_paragraphs(
            "Build the anti-spoofing data set deterministically from --seed into --out: bona fide Asterisk "
            "prompts (en/es/it for training, fr_CA as held-out speaker) and spoofs from nine attack families "
            "(A1 espeak-ng, A2 flite, A3 Festival diphone, A4 Festival HTS, A5 WORLD copy-synthesis, A6 "
            "Griffin-Lim from mel, A7 LPC vocoder, A8 hard splices and A9 smoothed splices of bona fide "
            "recordings) on the same texts/recordings. Training uses A1, A2, A3, A5, A8; evaluation adds the "
            "unseen A4, A6, A7, A9. Opt-in (--train-attacks, --eval-attacks): A10 harmonic-plus-noise vocoder, "
            "A11 unit selection (Festival's Russian clunits voice reading Russian sentences). Every clip gets the "
            "same cue removal (band-pass, silence trim, random level, fixed length, light noise).",
            "--human-voices adds recorded human voices of Debian packages (KLettres in 15 languages, Fish Fillets "
            "dialogue, a Russian PBX voice) as bona fide training speakers and sources of the copy and splice "
            "attacks; --human-heldout adds evaluation-only human speakers (Italian, Lithuanian, Hebrew, "
            "Malayalam, Ukrainian) whose EERs training reports as eer_heldout*.",
            "Writes OUT/train.npz, OUT/eval.npz, OUT/items.csv and OUT/manifest.json (config, counts, "
            "SHA-256 of each file). An existing folder with the same settings is reused unless --force.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(
        d, ["out", "data_seed", "quick", "workers", "corpus", "force", "no_progress"],
        out=dict(default=None, help=f"cache folder (default: {DEFAULT_DATA}; with --quick: {DEFAULT_QUICK_DATA})"),
        quick=dict(help=f"a few dozen clips ({Q.n_bona_train} bona fide + {Q.n_spoof_train_per_attack} per attack "
                        f"for training) instead of {D.n_bona_train} + {D.n_spoof_train_per_attack} per attack"),
        workers=dict(default=2, help="parallel synthesis jobs; the output does not depend on it (default: 2)"),
        corpus=dict(help="core: the documented data set (default); extended: + bona fide es-CO and fr (Armelle) "
                         "Asterisk speakers, more espeak-ng accents and voice variants, Czech and Finnish Festival "
                         "voices (the Finnish ones evaluation-only) (docs/spoof.md). 'slimtrain spoof --data DIR' "
                         "reads whichever corpus DIR holds"),
        force=dict(help="rebuild even if the folder already holds this data set"),
        no_progress=dict(help="hide the progress bar"))
    d.add_argument("--human-voices", type=human_source_list("train"), default=None, metavar="train|ID[,ID...]",
                   help="recorded human voices as bona fide training speakers, comma-separated: 'train' (every core "
                        "source registered for training), 'expressive' (the Hedgewars training packs), 'all', or "
                        "source ids ('slimtrain data human-voices' lists them). Default: none")
    d.add_argument("--human-heldout", type=human_source_list("held-out"), default=None,
                   metavar="held-out|ID[,ID...]",
                   help="recorded human voices as evaluation-only bona fide speakers: 'held-out' (every held-out "
                        "core source), 'expressive' (the held-out Hedgewars packs), 'all', or ids. Default: 'held-out' "
                        "with --human-voices, else none")
    d.add_argument("--human-files", type=lambda t: _positive_int(t, "human files"), default=None, metavar="N",
                   help="at most N files per human-voice source (default: all)")
    d.add_argument("--train-attacks", type=comma_list(_attack, "A1,A2,A3,A5,A8"), default=None, metavar="A1,A2,...",
                   help=f"the attack families of the training split (default: {','.join(D.train_attacks)}); "
                        "evaluation keeps its own list, so a family added here is no longer unseen there")
    d.add_argument("--eval-attacks", type=comma_list(_attack, "A1,A2,A3,A4,A5,A6,A7,A8,A9"), default=None,
                   metavar="A1,A2,...",
                   help=f"the attack families of the evaluation split (default: {','.join(D.eval_attacks)}); the "
                        "ones not in --train-attacks are the unseen families. A family added here (A10, A11 unit "
                        "selection) adds its clips after the others, which stay byte-identical")
    d.add_argument("--train-codecs", type=_fraction, default=None, metavar="F",
                   help="pass this fraction of the training clips, bona fide and spoofed alike, through a random "
                        "codec (G.711 mu/A-law, GSM, Ogg Vorbis, Opus) so that a recording's codec cannot tell the "
                        "classes apart (default: 0)")
    d.add_argument("--train-scale", type=lambda t: _positive_int(t, "train scale"), default=None, metavar="K",
                   help="draw the training split K times: K times the training clips, in new crops, texts, voices "
                        "and splices of the same speakers and attack families; the evaluation split stays "
                        "byte-identical (default: 1)")
    d.add_argument("--splice-like-source", choices=SPLICE_LIKE_SOURCE, default=None,
                   help="splices (A8, A9) as long as the recording they stand in for, whose units keep the pause "
                        "after them in their source (up to 0.5 s), so that neither length nor speech density tells "
                        "a splice from a recording: train (training splices only; the evaluation split stays "
                        "byte-identical) or all (default: none: 1.6 s of speech without a pause)")
    d.set_defaults(func=_cmd_data)

    s = commands.add_parser(
        "spoof", help="anti-spoofing case study: ResNet countermeasure with dynamic residual stages",
        description=_paragraphs(
            "Anti-spoofing case study (the paper's second example). A ResNet34-style countermeasure "
            f"(blocks {list(M.blocks)}, base width {M.width}, log-mel front-end inside the model) gets DCLs on "
            "the channel widths of the chosen residual stages and is trained on BCE + alpha * FLOPs(K) / "
            "FLOPs(full). EER is measured on the evaluation split (held-out speaker, unseen attacks). The data "
            "set is built into --data first if it is not there.",
            "Without --sweep: one run with --stages and --kappa-min; writes OUT/model.ckpt (for 'slimtrain "
            "export' and 'slimtrain spoof score'), OUT/widths.csv and OUT/result.json.",
            "With --sweep: each stage set (default B0, B1, B2, B3 and all, X) at each kappa-min (default "
            f"{','.join(f'{k:g}' for k in DEFAULT_KAPPAS)}), fixed-width models from scratch (--fixed-widths) "
            "and torch-pruning structured pruning at the MACs of the all-stage runs; writes OUT/sweep.csv (the "
            "paper's columns plus per-attack EER), OUT/sweep.png (EER vs MACs per second of audio), "
            "OUT/config.json and OUT/runs/.",
            "'slimtrain spoof score [--model M] FILE_OR_DIR...' prints one bona fide score per file (shipped model by "
            "default).",
            "Your corpus: --train-data PROTOCOL --val-data PROTOCOL [--test-data PROTOCOL] trains on an ASVspoof "
            "2019 LA / 2021 LA / 5 protocol (audio in flac/ beside it, the official layout, or --audio-dir), "
            "In-the-Wild's meta.csv or a path,label[,attack] CSV, streaming the audio from disk at --sample-rate "
            "(default 16000); EER per attack ID and pooled, min t-DCF with --asv-scores. --recipe paper: the "
            "paper's ResNet34 (base width 64, 16 kHz) on --asvspoof-root's train/dev/eval protocols "
            "(docs/spoof.md, 'Train on your own corpus').",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(s, ["sweep", "quick"], sweep=dict(help="run the whole grid and the baselines instead of one run"),
                quick=dict(help=f"tiny settings: quick data set, blocks {list(MQ.blocks)}, {MQ.epochs} epochs, one "
                                "kappa-min and the all-stage set only (seconds to a minute)"))
    s.add_argument("--stages", type=_stage_sets, default=None, metavar="S",
                   help="dynamic stages: one set like '0', '3' or '0,1,2,3' ('all' = 0,1,2,3); with --sweep several "
                        "sets separated by '/', e.g. '0/1/2/3/0,1,2,3' (default: 0,1,2,3; sweep: that list)")
    add_options(s, ["kappa_min", "alpha"],
                kappa_min=dict(metavar="F[,F...]", help="smallest relative width K/N of every dynamic layer, in "
                               "(0, 1]; with --sweep a comma-separated list (default: 0.125; sweep: "
                               "0.5,0.25,0.125,0.0625; --quick: 0.25)"),
                alpha=dict(help="weight of the cost term (FLOPs relative to the full model), >= 0 (default: 1.0); "
                                "with --sweep only for --kappa-control alpha"))
    s.add_argument("--kappa-control", choices=("floor", "alpha"), default=None,
                   help="'floor' trains every DCL run toward its kappa-min floor (a budget at the floor cost with a "
                        "Lagrangian multiplier), so kappa-min sets the widths as in the paper; 'alpha' uses the "
                        "weighted cost term at --alpha, where the floor may not bind. Default: floor with --sweep, "
                        "alpha for a single run")
    add_options(s, ["epochs", "settle_epochs", "compact_every", "family"],
                epochs=dict(help=f"training epochs per run (default: {M.epochs}; with --quick: {MQ.epochs})"),
                family=dict(choices=("resnet", "aasist", "aasist-l"), default="resnet", metavar=None,
                            help="model family (default: resnet): the ResNet34-style log-mel network, or AASIST / "
                                 "AASIST-L (Jung et al. 2022; raw waveform, sinc front end, spectro-temporal graph "
                                 "attention; docs/spoof.md). With aasist/aasist-l DCLs go on every width that can "
                                 "carry one (--stages does not apply); --plain trains the network as it is"))
    s.add_argument("--settle-at-budget", action="store_true",
                   help="budget runs (the floor control, --params-budget, --macs-budget): fix the widths at the first step "
                        "that meets the budget and train the cut network from there on (cheaper; the exported network "
                        "is the one trained)")
    s.add_argument("--fill-budget", action="store_true",
                   help="with --settle-at-budget: first scale the widths by one factor to the last channel step below "
                        "the budget (the step that meets it can overshoot: 7.15 M MAC/s for a budget of 8.7)")
    s.add_argument("--plain", action="store_true",
                   help="single run: train the network without DCLs (e.g. AASIST-L from scratch)")
    s.add_argument("--params-budget", type=lambda t: _positive_int(t, "params budget"), default=None, metavar="P",
                   help="single run with DCLs: a budget on the parameter count (Lagrangian multiplier) instead of "
                        "--alpha, e.g. 85306 (AASIST-L's published size)")
    s.add_argument("--macs-budget", type=lambda t: _positive_float(t, "macs-budget"), default=None, metavar="M",
                   help="single run with DCLs (also on your corpus): a budget on the MACs per second of audio "
                        "(Lagrangian multiplier) instead of --alpha, e.g. 9.15e6; the widths spend it where the task "
                        "gains most, down to --kappa-min each (docs/spoof.md 'A MACs budget')")
    kd = add_distill_options(s, "a trained countermeasure (checkpoint or TorchScript file, e.g. a --plain "
                                "full-width run)")
    kd.add_argument("--init-from-teacher", action="store_true",
                    help="--teacher: start from the teacher's weights (same family and width), as DPHuBERT and "
                         "CoFi shrink the model they imitate")
    s.add_argument("--train-crop", type=lambda t: _positive_int(t, "train crop"), default=None, metavar="SAMPLES",
                   help="single run: train on random crops of this many samples of each clip (evaluation uses "
                        "whole clips); AASIST costs about 1.2 GMAC per second of audio")
    add_options(s, ["width", "fixed_widths"],
                width=dict(help=f"base channel width of the first stage (the paper's ResNet34: 64; default: "
                                f"{M.width})"),
                fixed_widths=dict(help="base widths of the fixed-width baselines for --sweep, or 'none' (default: "
                                       f"{','.join(map(str, DEFAULT_FIXED_WIDTHS))}; --quick: 4,8)"))
    fe = s.add_argument_group("front end (ResNet family) and augmentation")
    fe.add_argument("--n-mels", type=lambda t: _positive_int(t, "n-mels"), default=None, metavar="N",
                    help=f"log filterbank bands of the ResNet's front end (default: {M.n_mels}; the shipped "
                         "countermeasure: 64, docs/spoof.md 'Front end')")
    fe.add_argument("--n-fft", type=lambda t: _positive_int(t, "n-fft"), default=None, metavar="N",
                    help=f"FFT size (window) of the front end, >= 2 (default: {M.n_fft}; 64 bands at 8 kHz want 512, "
                         "or the lowest bands are narrower than an FFT bin)")
    fe.add_argument("--freq-scale", choices=("mel", "linear"), default=None,
                    help="band spacing: mel (default) or linear (LFCC's filterbank)")
    fe.add_argument("--head", choices=("linear", "one-class"), default=None,
                    help="output head: linear (default) or one-class (OC-softmax, Zhang et al. 2021: bona fide "
                         "embeddings gathered around one direction, spoofs pushed away; for attacks never trained on)")
    fe.add_argument("--phase", default=None, metavar="gd|if|gd+if",
                    help="phase features stacked on the log-mel, band for band: gd = group delay, if = "
                         "instantaneous frequency (the STFT's reassignment operators; docs/spoof.md 'Phase features'; "
                         "default: none)")
    fe.add_argument("--freq-mask", type=lambda t: _int_at_least(t, "freq-mask", 0), default=None, metavar="W",
                    help="training only: mask up to W consecutive filterbank bands of each clip (SpecAugment's "
                         "frequency masks, 'FreqAugment'; docs/spoof.md 'Frequency masking'; default: 0 = off)")
    fe.add_argument("--freq-masks", type=lambda t: _int_at_least(t, "freq-masks", 1), default=None, metavar="N",
                    help="--freq-mask: masks per clip (default: 1)")
    fe.add_argument("--rawboost", choices=RAWBOOST_ALGORITHMS, default=None, metavar="ALG",
                    help="RawBoost on every training batch (Tak et al. 2022): 1 = linear and non-linear "
                         "convolutive noise, 2 = impulsive signal-dependent noise, 3 = stationary coloured noise at "
                         "10-40 dB SNR, 1+2 / 1+2+3 in series (default: off)")
    fe.add_argument("--rawboost-p", type=_fraction, default=None, metavar="P",
                    help="--rawboost: the share of training clips it augments (default: 1)")
    s.add_argument("--no-pruning", action="store_true", help="skip the torch-pruning baseline in --sweep")
    s.add_argument("--pruning-only", action="store_true",
                   help="with --sweep: only (re)run the pruning baseline and add its rows to an existing "
                        "OUT/sweep.csv and OUT/sweep.png (e.g. after installing torch-pruning)")
    s.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help=f"data folder (default: {DEFAULT_DATA}; with --quick: {DEFAULT_QUICK_DATA})")
    add_options(s, ["out", "seed", "workers", "sweep_engine", "resume", "no_progress"], out=dict(default=DEFAULT_OUT),
                workers=dict(default=None, help="parallel processes for --sweep (one torch thread each) and for data "
                                                "synthesis; results do not depend on it (default: 2; 1 with --quick)"),
                resume=dict(help="--sweep: skip the (row, seed) runs already finished in OUT/rows. With --seeds/"
                                 "--seed-list the data set stays the one of --seed; the seeds vary the initialisation "
                                 "and batch order"))
    _add_corpus_arguments(s)
    add_options(s, ["device"])
    s.set_defaults(func=_cmd_spoof)
    sub = s.add_subparsers(dest="spoof_command", metavar="{score,audit}")
    sc = sub.add_parser(
        "score", help="print a bona fide score per audio file, with the shipped countermeasure by default",
        description=_paragraphs(
            "Score audio files (folders are searched recursively for audio files). --model M is a shipped "
            "model (.pt + .json), a checkpoint written by 'slimtrain spoof' (OUT/model.ckpt, OUT/runs/model_*.ckpt; "
            "cut to its learned widths) or the TorchScript model.pt of 'slimtrain export'; without it the "
            "countermeasure shipped inside the package is used. The old form 'slimtrain spoof score MODEL FILE...' "
            "still works (a first argument ending in .ckpt/.pt is taken as the model when more than one is given).",
            "Each file is averaged to mono and resampled to the model's rate (8 kHz for the shipped model and the "
            "built-in corpus' models, which also band-pass, trim and set it to -24 dBFS; a model trained on your "
            "corpus runs at its --sample-rate on the raw audio) and cut into clips of the training length (50 % "
            "overlap); the score is the mean clip logit: higher = bona fide, 0 = the training decision boundary.",
            "Formats: text = 'score<TAB>file' per file; json = one document with every score and the errors. A file "
            "that cannot be read is named on stderr and counted; the others are still scored; exit code 1 if any "
            "file failed.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("paths", type=Path, nargs="+", metavar="FILE_OR_DIR", help="audio files or folders (recursed)")
    sc.add_argument("--model", "-m", type=Path, default=None, metavar="M",
                    help="model file (default: the shipped model, slimtrain/assets/spoof_default.pt)")
    sc.add_argument("--format", choices=("text", "json"), default="text", help="output format: text (default) or json")
    sc.set_defaults(func=_cmd_score)
    au = sub.add_parser(
        "audit", help="does your corpus give its labels away? the EER of trivial cues alone, per attack",
        description=_paragraphs(
            "Measure six trivial cues of every utterance of a corpus (length, active span, level, leading and "
            "trailing silence, speech density: 10 ms frames within 30 dB of the loudest are active) and the EER of "
            "a logistic regression on them alone, pooled and per attack: trained on --train-data and scored on "
            "--test-data, or cross-validated (5 folds) on --train-data alone. An attack whose cue-only EER is "
            "below 30 % is flagged: a countermeasure can score it without listening to the speech (ASVspoof "
            "2019 LA's silences are the known case). Formats as for training: ASVspoof protocols, In-the-Wild "
            "meta.csv, path,label,attack CSV.",
        ), formatter_class=argparse.RawDescriptionHelpFormatter)
    au.add_argument("--train-data", type=Path, required=True, metavar="PROTOCOL", help="the protocol to train on")
    au.add_argument("--test-data", type=Path, default=None, metavar="PROTOCOL",
                    help="the protocol to score (default: cross-validate on --train-data)")
    au.add_argument("--audio-dir", type=Path, default=None, metavar="DIR",
                    help="folder of the audio files (default: found next to the protocol, as for training)")
    au.add_argument("--format", choices=("auto", "asvspoof", "itw", "csv"), default="auto", help="protocol format")
    au.add_argument("--skip-bad", action="store_true", help="skip missing or unreadable files instead of stopping")
    au.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    au.add_argument("--no-progress", action="store_true", help="no progress bar")
    au.set_defaults(func=_cmd_audit)


def _cmd_data(args) -> int:
    from .data import SpoofDataConfig, build_dataset

    cfg = SpoofDataConfig.quick(seed=args.seed) if args.quick else SpoofDataConfig(seed=args.seed)
    cfg.corpus = args.corpus
    if args.human_voices is not None:
        cfg.human_voices = tuple(args.human_voices)
    heldout = args.human_heldout
    if heldout is None and cfg.human_voices:
        from ..human_voices import sources

        heldout = [src.id for src in sources("held-out", addable=True, collection="core")]
    if heldout is not None:
        cfg.human_heldout = tuple(heldout)
    if args.human_files is not None:
        if not (cfg.human_voices or cfg.human_heldout):
            raise ValueError("--human-files only applies with --human-voices or --human-heldout")
        cfg.human_files_per_source = args.human_files
    if args.train_codecs is not None:
        cfg.train_codec_fraction = args.train_codecs
    if args.train_attacks is not None:
        cfg.train_attacks = tuple(args.train_attacks)
    if args.eval_attacks is not None:
        cfg.eval_attacks = tuple(args.eval_attacks)
    if args.train_scale is not None:
        cfg.train_scale = args.train_scale
    if args.splice_like_source is not None:
        cfg.splice_like_source = args.splice_like_source
    out = args.out or (DEFAULT_QUICK_DATA if args.quick else DEFAULT_DATA)
    t0 = time.perf_counter()
    # (the data command builds what it is asked: a folder of another recipe is rebuilt, not read as it is)
    man = build_dataset(out, cfg, workers=args.workers, progress=not args.no_progress, force=args.force, adopt=False)
    counts = "; ".join(f"{sp}: " + ", ".join(f"{a} {n}" for a, n in c.items()) for sp, c in man["counts"].items())
    corpus = f"corpus {man.get('corpus', 'core')}" + (f", fingerprint {man['fingerprint']}" if "fingerprint" in man else "")
    print(f"spoofing data in {out} ({corpus}; {time.perf_counter() - t0:.1f}s): {counts}")
    print(f"  unseen attacks (evaluation only): {', '.join(man['unseen_attacks'])}; manifest {out / 'manifest.json'}")
    for role, t in man.get("human_voices", {}).get("totals", {}).items():
        if t["sources"]:
            print(f"  human voices, {role}: {t['sources']} sources, {t['speakers']} speakers, "
                  f"{len(t['languages'])} languages ({' '.join(t['languages'])}); {t['bona']} bona fide and "
                  f"{t['spoof']} copy/splice clips")
    return 0


def _attack(text: str) -> str:
    from .attacks import ATTACKS

    a = text.strip().upper()
    if a not in ATTACKS:
        raise argparse.ArgumentTypeError(f"unknown attack {text!r}; choose from {', '.join(ATTACKS)}")
    return a


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return v


def _nonneg_int(text: str, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"{what} must be an integer >= 0, got {text!r}")
    return v


def _add_corpus_arguments(s) -> None:
    g = s.add_argument_group("your corpus (docs/spoof.md, 'Train on your own corpus')")
    g.add_argument("--train-data", type=Path, default=None, metavar="PROTOCOL",
                   help="training protocol: ASVspoof 2019/2021/5 protocol, In-the-Wild meta.csv or a CSV "
                        "path,label[,attack] (instead of the built-in corpus of --data)")
    g.add_argument("--val-data", type=Path, default=None, metavar="PROTOCOL",
                   help="validation protocol (EER per attack of the trained model)")
    g.add_argument("--test-data", type=Path, default=None, metavar="PROTOCOL", help="test protocol (optional)")
    g.add_argument("--audio-dir", type=Path, default=None, metavar="DIR",
                   help="folder of the audio of every protocol (default: flac/ beside the protocol, the official "
                        "ASVspoof layout, or the CSV's folder)")
    g.add_argument("--format", choices=("auto", "asvspoof", "itw", "csv"), default="auto",
                   help="protocol format (default: auto, from the first line)")
    g.add_argument("--sample-rate", type=int, choices=(8000, 16000), default=None,
                   help="rate the countermeasure is trained and runs at (default: 16000; the built-in corpus is 8000)")
    g.add_argument("--skip-bad", action="store_true",
                   help="leave out bad protocol lines and audio files (missing, unreadable, empty, other rate) "
                        "instead of stopping; they are printed, written to OUT/skipped.csv and counted in "
                        "OUT/result.json")
    g.add_argument("--asv-scores", type=Path, default=None, metavar="FILE",
                   help="ASVspoof 2019 ASV score file ('SOURCE KEY SCORE' lines) of the test set (or of the "
                        "validation set without --test-data): adds min t-DCF")
    g.add_argument("--crop-seconds", type=float, default=None, metavar="S",
                   help="training crop and scoring clip length in seconds (default: 4)")
    g.add_argument("--batch-size", type=lambda t: _positive_int(t, "batch size"), default=None, metavar="N",
                   help="training batch size (default: 32; --quick: 16)")
    g.add_argument("--loader-workers", type=lambda t: _nonneg_int(t, "loader workers"), default=None, metavar="N",
                   help="DataLoader worker processes that read (and resample) the audio (default: 0, in the main "
                        "process; use a few for a large corpus)")
    g.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="keep each file resampled to --sample-rate here (.npy), so it is resampled once")
    g.add_argument("--recipe", choices=("paper",), default=None,
                   help="paper: ResNet34 (blocks 3,4,6,3) with base width 64 at 16 kHz, all stages dynamic, on "
                        "--asvspoof-root's ASVspoof 2019 LA train/dev/eval protocols (or the --*-data protocols)")
    g.add_argument("--asvspoof-root", type=Path, default=None, metavar="DIR",
                   help="your ASVspoof 2019 LA copy (the folder holding LA/, or LA/ itself): its cm protocols, "
                        "audio and eval ASV scores")


def _corpus_mode(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("train_data", "val_data", "test_data", "recipe",
                                                           "asvspoof_root"))


def _cmd_spoof(args) -> int:
    from .data import SpoofDataConfig, build_dataset, load_split
    from .sweep import DEFAULT_FIXED_WIDTHS, DEFAULT_KAPPAS, DEFAULT_STAGE_SETS, QUICK_FIXED_WIDTHS, QUICK_KAPPAS
    from .sweep import QUICK_STAGE_SETS, format_summary_table, format_table, run_sweep
    from .train import SpoofConfig, train_run
    from ...train import distributed

    device = getattr(args, "device", "cpu")
    distributed.resolve_device(device)  # an unavailable device stops here, before any work
    if getattr(args, "rawboost_p", None) is not None and args.rawboost is None:  # (both corpus paths)
        raise ValueError("--rawboost-p needs --rawboost")
    if getattr(args, "freq_masks", None) is not None and not getattr(args, "freq_mask", None):
        raise ValueError("--freq-masks needs --freq-mask W (W >= 1)")
    if getattr(args, "macs_budget", None) is not None:
        if args.sweep or args.plain or args.params_budget is not None or args.kappa_control == "floor":
            raise ValueError("--macs-budget is a budget of its own for a single run with DCLs: drop --sweep, "
                             "--plain, --params-budget and --kappa-control floor")
    if _corpus_mode(args):
        from .corpus_cli import run_corpus

        return run_corpus(args)
    for flag in ("audio_dir", "sample_rate", "asv_scores", "crop_seconds", "batch_size", "loader_workers", "cache_dir"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} applies to your corpus (--train-data/--val-data or "
                             "--recipe paper), not to the built-in corpus")
    if getattr(args, "skip_bad", False) or getattr(args, "format", "auto") != "auto":
        raise ValueError("--skip-bad and --format apply to your corpus (--train-data/--val-data or --recipe paper)")
    if args.sweep:
        _refuse_sweep_under_torchrun()
    over: dict = {"seed": args.seed, **given(args, "epochs", "width", "n_mels", "n_fft", "freq_scale", "phase",
                                             "head", "rawboost", "rawboost_p", "freq_mask", "freq_masks")}
    over["settle_epochs"] = getattr(args, "settle_epochs", 0)
    over["compact_every"] = getattr(args, "compact_every", 0)
    over["family"] = getattr(args, "family", "resnet")
    over["settle_at_budget"] = bool(getattr(args, "settle_at_budget", False))
    over["fill_budget"] = bool(getattr(args, "fill_budget", False))
    if over["fill_budget"] and not over["settle_at_budget"]:
        raise ValueError("--fill-budget fills the budget when the widths settle at it: add --settle-at-budget")
    if args.sweep and over["family"] != "resnet":
        raise ValueError("--sweep runs the ResNet family; for AASIST use single runs (docs/spoof.md) or "
                         "benchmarks/aasist_vs_aasist_l.py")
    if over["family"] != "resnet" and (args.width is not None or args.stages is not None
                                       or args.n_mels is not None or args.n_fft is not None
                                       or args.freq_scale is not None or args.phase is not None
                                       or args.head is not None or args.freq_mask is not None):
        raise ValueError("--width, --stages, --n-mels, --n-fft, --freq-scale, --phase, --head and --freq-mask apply to "
                         "the ResNet family only")
    if args.sweep and (args.plain or args.params_budget is not None or args.train_crop is not None
                       or args.teacher is not None or args.init_from_teacher):
        raise ValueError("--plain, --params-budget, --train-crop and --teacher apply to single runs, not --sweep")
    if args.plain and args.params_budget is not None:
        raise ValueError("--params-budget needs DCLs; drop --plain")
    if args.kappa_control is None:
        args.kappa_control = "floor" if args.sweep else "alpha"
    if args.kappa_control == "floor" and not args.sweep and (args.plain or args.params_budget is not None):
        raise ValueError("--kappa-control floor needs DCLs and no --params-budget (a budget of its own)")
    if over["settle_at_budget"] and (args.plain or args.kappa_control != "floor" and args.params_budget is None
                                     and args.macs_budget is None):
        raise ValueError("--settle-at-budget needs a budget: --kappa-control floor (the default of --sweep) or a "
                         "single run with --params-budget or --macs-budget")
    cfg = SpoofConfig.quick(**over) if args.quick else SpoofConfig(**over)
    if cfg.warmup_epochs >= cfg.epochs:
        cfg.warmup_epochs = cfg.epochs - 1
    cfg.validate()
    dcfg = SpoofDataConfig.quick(seed=args.seed) if args.quick else SpoofDataConfig(seed=args.seed)
    data_dir = args.data or (DEFAULT_QUICK_DATA if args.quick else DEFAULT_DATA)
    workers = args.workers if args.workers is not None else (1 if args.quick else 2)
    progress = not args.no_progress
    distributed.init(distributed.resolve_device(device))  # torchrun: the process group, to wait for rank 0's data
    main = distributed.is_main()
    if main:
        build_dataset(data_dir, dcfg, workers=workers, progress=progress)
    distributed.barrier()
    man = build_dataset(data_dir, dcfg, workers=workers, progress=False)  # reuses the folder just checked
    unseen = tuple(man["unseen_attacks"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.sweep:
        if args.fixed_widths is not None or args.no_pruning or args.pruning_only or args.resume:
            raise ValueError("--fixed-widths, --no-pruning, --pruning-only and --resume only apply with --sweep")
        teacher = None
        if args.teacher is not None:
            from ...train.checkpoint import load_for_inference

            teacher = load_for_inference(args.teacher, "spoof")[0]
        elif args.init_from_teacher:
            raise ValueError("--init-from-teacher needs --teacher")
        _check_no_sweep_engine_args(args)
        if args.stages is not None and len(args.stages) > 1:
            raise ValueError("give one stage set for a single run (several sets separated by '/' need --sweep)")
        if args.kappa_min is not None and len(args.kappa_min) > 1:
            raise ValueError("give one --kappa-min for a single run (a list needs --sweep)")
        stages = args.stages[0] if args.stages else (0, 1, 2, 3)
        if args.plain:
            stages = ()
        kappa = args.kappa_min[0] if args.kappa_min else 0.125
        t0 = time.perf_counter()
        row = train_run(cfg, load_split(data_dir, "train"), load_split(data_dir, "eval"), unseen, stages=stages,
                        kappa_min=kappa, alpha=args.alpha, floor=args.kappa_control == "floor",
                        record_csv=out / "widths.csv",
                        checkpoint=out / "model.ckpt", progress=progress, device=device,
                        params_budget=args.params_budget, macs_budget=args.macs_budget, train_crop=args.train_crop,
                        teacher=teacher,
                        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
                        init_from_teacher=args.init_from_teacher)
        if not main:
            return 0
        (out / "result.json").write_text(json.dumps({"config": cfg.as_dict(), "data": str(data_dir), "result": row},
                                                    indent=2) + "\n")
        if not stages:
            print(f"{cfg.family}, plain (no DCLs)")
        else:
            what = cfg.family if cfg.family != "resnet" else f"stages {','.join(map(str, stages))}"
            ctl = (f"params budget {args.params_budget}" if args.params_budget else
                   f"MACs budget {args.macs_budget / 1e6:g} M/s" if args.macs_budget else "toward the kappa-min floor"
                   if args.kappa_control == "floor" else f"alpha {args.alpha:g}")
            print(f"{what}, kappa-min {kappa:g}, {ctl}: learned widths {row['widths']}")
        print(f"  exported: {row['params']} params, {row['macs_per_second'] / 1e6:.2f} MMAC/s "
              f"({row['gflops_per_second']:.4f} GFLOP/s)")
        print(f"  EER pooled {row['eer_pooled']:.2f}%, unseen attacks ({', '.join(unseen)}) {row['eer_unseen']:.2f}%, "
              + ", ".join(f"{a} {row[f'eer_{a}']:.1f}%" for a in unseen))
        if math.isfinite(row["eer_heldout"]):
            from .attacks import ATTACKS

            worst = max(ATTACKS, key=lambda a: row[f"eer_heldout_{a}"] if math.isfinite(row[f"eer_heldout_{a}"]) else -1)
            print(f"  held-out speakers' bona fide clips against every spoof: EER {row['eer_heldout']:.2f}% "
                  f"(hardest attack {worst}: {row[f'eer_heldout_{worst}']:.1f}%)")
        print(f"  wrote {out / 'model.ckpt'}, {out / 'widths.csv'}, {out / 'result.json'} in "
              f"{time.perf_counter() - t0:.1f}s")
        return 0
    if args.pruning_only:
        from .sweep import add_pruning_rows

        if args.no_pruning:
            raise ValueError("--pruning-only and --no-pruning contradict each other")
        if args.seeds is not None or args.seed_list is not None or args.engine != "local" or args.resume:
            raise ValueError("--pruning-only adds to a single-seed local sweep; --seeds, --seed-list, --engine "
                             "and --resume do not apply")
        rows = add_pruning_rows(data_dir, cfg, out, workers=workers, progress=progress)
        print(format_table(rows))
        print(f"added the pruning rows to {out / 'sweep.csv'} and {out / 'sweep.png'}")
        return 0
    stage_sets = args.stages or list(QUICK_STAGE_SETS if args.quick else DEFAULT_STAGE_SETS)
    kappas = args.kappa_min or list(QUICK_KAPPAS if args.quick else DEFAULT_KAPPAS)
    widths = args.fixed_widths if args.fixed_widths is not None else list(
        QUICK_FIXED_WIDTHS if args.quick else DEFAULT_FIXED_WIDTHS)
    t0 = time.perf_counter()
    seeds = sweep_seeds(args)
    rows = run_sweep(data_dir, cfg, out, stage_sets=stage_sets, kappas=kappas, alpha=args.alpha, fixed_widths=widths,
                     pruning=not args.no_pruning, workers=workers, progress=progress, seeds=seeds,
                     engine=args.engine, address=args.address, resume=args.resume, device=device,
                     control=args.kappa_control)
    print(format_table(rows) if len(seeds) == 1 else format_summary_table(rows))
    print(f"sweep of {len(rows)} runs ({len(seeds)} seed(s)) took {time.perf_counter() - t0:.0f}s; wrote "
          f"{out / 'sweep.csv'}, {out / 'sweep_summary.csv'} and {out / 'sweep.png'}")
    return 0


def _cmd_audit(args) -> int:
    from tqdm.auto import tqdm

    from ...audio.data import SkipReport
    from ...audio.data.spoof_corpus import read_spoof_corpus
    from .shortcuts import CUE_NAMES, SHORTCUT_WARN_EER, audit_corpus

    report = SkipReport(args.skip_bad)  # one for both protocols, as training keeps it

    def read(p: Path):
        return read_spoof_corpus(p, format=args.format, audio_dir=args.audio_dir, report=report,
                                 progress=not args.no_progress, allow_mixed_rates=True)

    train = read(args.train_data)
    test = read(args.test_data) if args.test_data is not None else None
    with tqdm(total=len(train) + (len(test) if test is not None else 0), desc="cues", unit="file",
              disable=args.no_progress) as bar:
        res = audit_corpus(train, test, progress=bar.update)
    how = (f"trained on {args.train_data}, scored on {args.test_data}" if test is not None
           else f"5-fold cross-validation on {args.train_data}")
    flagged = [a for a, v in res["eer"].items() if a != "pooled" and v < SHORTCUT_WARN_EER]
    if args.skip_bad:
        report.print_summary()
    if args.json:
        print(json.dumps({**res, "how": how, "flagged": flagged, "warn_below": SHORTCUT_WARN_EER,
                          "skipped": report.counts()}))
        return 0
    print(f"cue-only EER ({', '.join(CUE_NAMES)}; {how}):")
    cols = ("length_s", "lead_s", "trail_s", "density")
    print(f"  {'family':12s} {'items':>6s} {'EER %':>6s}  " + " ".join(f"{c:>9s}" for c in cols))
    for fam, n in res["counts"].items():
        e = res["eer"].get(fam)  # (attacks only: bona fide is what each is scored against)
        cell = "-" if e is None else f"{e:.1f}"
        m = res["means"][fam]
        print(f"  {fam:12s} {n:6d} {cell:>6s}  " + " ".join(f"{m[c]:9.3f}" for c in cols))
    if "pooled" in res["eer"]:
        print(f"  pooled EER on the cues alone: {res['eer']['pooled']:.1f} %")
    for a in flagged:
        print(f"warning: {a}: the cues alone reach {res['eer'][a]:.1f} % EER (< {SHORTCUT_WARN_EER:g} %); a model can "
              f"score it without the speech (trim or pad the silences, or check how the attack was made)",
              file=sys.stderr)
    return 0


def _cmd_score(args) -> int:
    from ...apps import spoof
    from ...audio.io import AudioInputError, expand_audio_paths
    from ..audio import AudioError, read_audio
    from ...audio.io import split_model_arg

    model_path, paths = split_model_arg(args.model, args.paths)
    cm = spoof.load(model_path)
    items = expand_audio_paths(paths)
    scores, errors = [], []
    for f, problem in items:
        try:
            if problem is not None:
                raise AudioError(problem)
            x, sr = read_audio(f)
            score = cm.score(x, sr)
        except (AudioError, AudioInputError) as e:
            msg = " ".join(str(e).split())
            msg = msg if str(f) in msg else f"{f}: {msg}"
            print(f"slimtrain: error: {msg}", file=sys.stderr)
            errors.append({"file": str(f), "error": msg})
            continue
        scores.append({"file": str(f), "score": round(score, 4)})
        if args.format == "text":
            print(f"{score:.4f}\t{f}", flush=True)
    if args.format == "json":
        print(json.dumps({"model": cm.source, "scores": scores, "errors": errors, "failed": len(errors)}))
    if errors:
        print(f"slimtrain: {len(errors)} of {len(items)} files failed", file=sys.stderr)
    return 1 if errors else 0
