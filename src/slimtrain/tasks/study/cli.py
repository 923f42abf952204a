"""One command for every study: the shared options, and ``slimtrain NAME [--sweep]`` built from a :class:`Study`.

:func:`add_options` adds the options every study shares (one place for their flags, types, metavars and
checks; a study passes its own help or default where it differs). :func:`study_command` turns a
:class:`Study` into a ``register(commands, data_commands)`` for :data:`slimtrain.cli.TASK_COMMAND_MODULES`:
one run (``OUT/model.ckpt``, ``OUT/widths.csv``, ``OUT/result.json``) or ``--sweep`` (:mod:`.sweep`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Iterable

from ..options import (_alpha, _alpha_list, _check_no_sweep_engine_args, _epochs, _kappa, _paragraphs,
                       _positive_float, _positive_int, _refuse_sweep_under_torchrun, _seed, _settle_epochs, _workers,
                       add_compact_option, add_device_option, add_sweep_engine_arguments, comma_list, sweep_seeds)
from .config import StudyConfig
from .spec import Study

__all__ = ["COMMON_OPTIONS", "add_options", "given", "study_command", "config_from_args", "run_command"]

_kappa_list = comma_list(_kappa, "0.5,0.25")
_budget_list = comma_list(lambda t: _positive_float(t, "budget"), "1e4,3e4")
_width_list = comma_list(lambda t: _positive_int(t, "fixed widths"), "4,8,16", none_ok=True)

#: ``name: (flags, add_argument keywords)`` of the options the studies share; a study overrides keywords
COMMON_OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "sweep": (("--sweep",), dict(action="store_true", help="run the sweep instead of one run")),
    "quick": (("--quick",), dict(action="store_true", help="tiny settings for tests (seconds)")),
    "family": (("--family",), dict(default=None, metavar="F", help="model family")),
    "alpha": (("--alpha",), dict(type=_alpha, default=1.0, metavar="A",
                                 help="weight of the cost term (cost relative to the full model), >= 0 "
                                      "(default: %(default)s)")),
    "alphas": (("--alphas",), dict(type=_alpha_list, default=None, metavar="A1,A2,...",
                                   help="--sweep: the alphas of the DCL rows, each >= 0")),
    "kappa_min": (("--kappa-min",), dict(type=_kappa_list, default=None, metavar="K[,K...]",
                                         help="smallest relative width K/N of every dynamic layer, in (0, 1]; "
                                              "a single run takes one, --sweep a list")),
    "budget": (("--budget",), dict(type=_budget_list, default=None, metavar="B[,B...]",
                                   help="cost budget per example instead of the alpha term (a hinge); --sweep: "
                                        "one DCL row per budget")),
    "epochs": (("--epochs",), dict(type=_epochs, default=None, metavar="N", help="training epochs per run")),
    "settle_epochs": (("--settle-epochs",), dict(
        type=_settle_epochs, default=0, metavar="N",
        help="DCL runs: the last N epochs train the weights at the fixed hard widths the model is exported with "
             "(slimtrain.settle_widths), as a pruned model is fine-tuned (default: 0)")),
    "width": (("--width",), dict(type=lambda t: _positive_int(t, "width"), default=None, metavar="W",
                                 help="base width of the model")),
    "fixed_widths": (("--fixed-widths",), dict(type=_width_list, default=None, metavar="W1,W2,...",
                                               help="--sweep: base widths of the fixed-width baselines, or 'none'")),
    "out": (("--out",), dict(type=Path, metavar="DIR", help="output folder, created if needed (default: %(default)s)")),
    "seed": (("--seed",), dict(type=_seed, default=0, metavar="S", help="seed of the data and the initialisation "
                                                                        "(default: 0)")),
    "data_seed": (("--seed",), dict(type=_seed, default=0, metavar="S", help="seed of every random choice "
                                                                             "(default: 0)")),
    "corpus": (("--corpus",), dict(choices=("core", "extended"), default="core", help="which data set to build")),
    "force": (("--force",), dict(action="store_true", help="rebuild even if the cache matches")),
    "workers": (("--workers",), dict(type=_workers, default=1, metavar="N",
                                     help="--sweep: processes (or local Ray CPUs), one torch thread each "
                                          "(default: %(default)s)")),
    "resume": (("--resume",), dict(action="store_true",
                                   help="single run: continue a killed run from OUT/model.ckpt; --sweep: skip the "
                                        "(row, seed) runs already finished in OUT/rows")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="hide the progress bars")),
}
def add_distill_options(p: argparse.ArgumentParser, teacher_help: str) -> argparse._ArgumentGroup:
    """The distillation flags of a study's single runs (``--teacher``, ``--distill-weight``,
    ``--distill-temperature``) in a group of their own; ``teacher_help`` says what a teacher of the task is."""
    from pathlib import Path

    kd = p.add_argument_group("distillation while shrinking (single runs; docs/method.md, section 4b)")
    kd.add_argument("--teacher", type=Path, default=None, metavar="MODEL",
                    help=teacher_help + ": the model imitates its outputs while it trains, + W * T^2 * BCE(s/T, "
                                        "sigmoid(t/T)) on the task loss")
    kd.add_argument("--distill-weight", type=float, default=1.0, metavar="W", help="--teacher: W (default: 1)")
    kd.add_argument("--distill-temperature", type=float, default=2.0, metavar="T", help="--teacher: T (default: 2)")
    return kd


#: options added by a function of their own (several flags, or shared with the core commands)
_ADDERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "compact_every": add_compact_option, "device": add_device_option, "sweep_engine": add_sweep_engine_arguments}


def add_options(p: argparse.ArgumentParser, names: Iterable[str], **overrides: dict) -> None:
    """Add the shared options ``names`` (keys of :data:`COMMON_OPTIONS`, or ``compact_every``, ``device``,
    ``sweep_engine``) to ``p`` in that order; ``overrides[name]`` replaces some of an option's keywords."""
    names = list(names)
    bad = sorted((set(names) | set(overrides)) - set(COMMON_OPTIONS) - set(_ADDERS))
    if bad:
        raise ValueError(f"unknown shared option(s) {', '.join(bad)}; known: "
                         f"{', '.join(sorted(set(COMMON_OPTIONS) | set(_ADDERS)))}")
    for name in names:
        if name in _ADDERS:
            _ADDERS[name](p)
            continue
        flags, kw = COMMON_OPTIONS[name]
        p.add_argument(*flags, **{**kw, **overrides.get(name, {})})


def given(args, *names: str) -> dict:
    """``{name: value}`` of the options ``names`` that were given (not None), to override a config's defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def study_command(study: Study) -> Callable:
    """The ``register(commands, data_commands)`` adding ``slimtrain NAME`` for ``study``."""

    def register(commands, data_commands) -> None:  # noqa: ARG001 - a study built from the skeleton has no data command
        C = study.config
        D, Q = C(), C.quick()
        p = commands.add_parser(study.name, help=study.help, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=_paragraphs(
            study.description,
            "Without --sweep: one run; writes OUT/model.ckpt (for 'slimtrain export'), OUT/widths.csv (widths and "
            "cost per epoch) and OUT/result.json.",
            "With --sweep: a DCL run per --kappa-min x (--alphas, then --budget) and a fixed-width model per "
            "--fixed-widths, each for every seed; writes OUT/sweep.csv, OUT/sweep_summary.csv (mean and 95% "
            "interval over seeds), OUT/sweep.png and OUT/config.json."))
        fams = C.FAMILIES
        add_options(p, ["sweep", "quick"] + (["family"] if fams else []) + [
            "alpha", "alphas", "kappa_min", "budget", "epochs", "settle_epochs", "compact_every", "width",
            "fixed_widths", "out", "seed", "workers", "sweep_engine", "resume", "no_progress", "device"],
            quick=dict(help=f"tiny settings for tests (seconds): {', '.join(f'{k} {v}' for k, v in C.QUICK.items())}"),
            family=dict(choices=fams, help=f"model family (default: {fams[0] if fams else ''})"),
            alphas=dict(help=f"--sweep: the alphas of the DCL rows (default: {_csv(C.SWEEP['alphas'])}; "
                             f"--quick: {_csv(C.QUICK_SWEEP['alphas'])})"),
            alpha=dict(default=None, help=f"weight of the cost term (FLOPs relative to the full model), >= 0 "
                                          f"(default: {D.alpha:g})"),
            kappa_min=dict(help=f"smallest relative width K/N, in (0, 1]; a single run takes one (default: "
                                f"{D.kappa_min:g}), --sweep a list (default: {_csv(C.SWEEP['kappas'])}; --quick: "
                                f"{_csv(C.QUICK_SWEEP['kappas'])})"),
            epochs=dict(help=f"training epochs per run (default: {D.epochs}; --quick: {Q.epochs})"),
            width=dict(help=f"base width of the model (default: {D.width}; --quick: {Q.width})"),
            fixed_widths=dict(help=f"--sweep: base widths of the fixed-width baselines, or 'none' (default: "
                                   f"{_csv(C.SWEEP['fixed_widths'])}; --quick: {_csv(C.QUICK_SWEEP['fixed_widths'])})"),
            out=dict(default=Path("runs") / study.name))
        p.set_defaults(func=lambda args: run_command(study, args))

    return register


def config_from_args(study: Study, args) -> StudyConfig:
    """The run's settings from the parsed options (``--quick`` first, then every option given); checked."""
    over = {"seed": args.seed, "settle_epochs": args.settle_epochs, "compact_every": args.compact_every,
            **given(args, "family", "epochs", "width", "alpha")}
    if args.kappa_min:
        over["kappa_min"] = args.kappa_min[0]
    if args.budget:
        over["budget"] = args.budget[0]
    cfg = study.config.quick(**over) if args.quick else study.config(**over)
    if cfg.warmup_epochs >= cfg.epochs:
        cfg.warmup_epochs = cfg.epochs - 1
    return cfg.validate()


def run_command(study: Study, args) -> int:
    """``slimtrain NAME``: one run or ``--sweep``; prints what it wrote."""
    from ...train import distributed
    from .sweep import best_row, format_table, run_sweep
    from .train import train_run

    cfg = config_from_args(study, args)
    distributed.resolve_device(args.device)  # an unavailable device stops here, before any work
    out: Path = args.out
    progress = not args.no_progress
    t0 = time.perf_counter()
    if args.sweep:
        _refuse_sweep_under_torchrun()
        grid = study.config.QUICK_SWEEP if args.quick else study.config.SWEEP
        seeds = sweep_seeds(args)
        rows = run_sweep(study, cfg, out, alphas=args.alphas if args.alphas is not None else grid["alphas"],
                         kappas=args.kappa_min or grid["kappas"], budgets=args.budget or (),
                         fixed_widths=args.fixed_widths if args.fixed_widths is not None else grid["fixed_widths"],
                         seeds=seeds, workers=args.workers, engine=args.engine, address=args.address,
                         resume=args.resume, progress=progress)
        head = study.headline
        best = best_row(study, rows)
        print(format_table(study, rows))
        print(f"best {head.name} ({'higher' if head.higher_is_better else 'lower'} is better): "
              f"{best[head.name]:{head.fmt}} ({best['row_id']}, seed {best['seed']}, {best['flops']:.0f} FLOPs)")
        print(f"sweep of {len(rows)} runs ({len(seeds)} seed(s)) took {time.perf_counter() - t0:.0f}s; wrote "
              f"{out / 'sweep.csv'}, {out / 'sweep_summary.csv'}, {out / 'sweep.png'}")
        return 0
    for flag, v in (("--alphas", args.alphas), ("--fixed-widths", args.fixed_widths)):
        if v is not None:
            raise ValueError(f"{flag} only applies with --sweep")
    for flag, v in (("--kappa-min", args.kappa_min), ("--budget", args.budget)):
        if v is not None and len(v) > 1:
            raise ValueError(f"give one {flag} for a single run (a list needs --sweep)")
    _check_no_sweep_engine_args(args)
    data = study.build_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    _, row = train_run(study, cfg, data, checkpoint=out / "model.ckpt", record_csv=out / "widths.csv",
                       progress=progress, device=args.device, resume=args.resume)
    if not distributed.is_main():
        return 0
    (out / "result.json").write_text(json.dumps({"config": cfg.as_dict(), "data": data.info, "result": row},
                                                indent=2, default=str) + "\n")
    ctl = f"budget {cfg.budget:g}" if cfg.budget is not None else f"alpha {cfg.alpha:g}"
    print(f"{study.name} {cfg.family} kappa-min {cfg.kappa_min:g}, {ctl}: widths {row['widths']}")
    print(f"  exported: {row['flops']:.0f} FLOPs ({row['macs']:.0f} MACs), {row['params']} params per example")
    print("  test " + ", ".join(f"{m.name} {row[m.name]:{m.fmt}}" for m in study.metrics))
    print(f"  wrote {out / 'model.ckpt'}, {out / 'widths.csv'}, {out / 'result.json'} in "
          f"{time.perf_counter() - t0:.1f}s; next: slimtrain export {out / 'model.ckpt'} {out / 'export'}")
    return 0
