"""``slimtrain synthetic``: the synthetic case study's command (registered with the CLI like the other tasks)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .options import (_check_no_sweep_engine_args, _hidden, _kappa, _lr, _paragraphs, _refuse_sweep_under_torchrun,
                      _width_list, sweep_seeds)
from .study.cli import add_options, given

__all__ = ["register"]


def register(commands, data_commands) -> None:
    """Add ``slimtrain synthetic`` to the CLI."""
    from .synthetic import (DEFAULT_ALPHAS, DEFAULT_BASELINE_WIDTHS, QUICK_ALPHAS, QUICK_BASELINE_WIDTHS,
                            SyntheticConfig)

    D, Q = SyntheticConfig(), SyntheticConfig.quick()

    def csv_list(v) -> str:
        return ",".join(f"{x:g}" for x in v)

    s = commands.add_parser(
        "synthetic",
        help="the synthetic case study: learn the hidden width of a regression MLP whose needed width is known",
        description=_paragraphs(
            f"Synthetic case study. Targets come from a fixed random teacher MLP {D.in_dim} -> {D.h_true} tanh "
            f"units -> {D.out_dim} (plus a little noise), so {D.h_true} hidden units are needed and enough. A "
            f"student with an oversized hidden layer ({D.hidden}) gets a learnable width K and is trained on "
            "MSE + alpha * FLOPs(K) / FLOPs(full).",
            "Without --sweep: one run at --alpha; writes OUT/model.ckpt (for 'slimtrain export'), "
            "OUT/widths.csv (width, cost and validation error per epoch) and OUT/result.json.",
            "With --sweep: one run per alpha in --alphas plus plain fixed-width MLPs trained from scratch "
            "with the same budget; writes OUT/sweep.csv, OUT/sweep.png (test error vs FLOPs, learned width "
            "vs alpha), OUT/config.json and, in OUT/runs/, each run's width record and checkpoint. The test "
            "error is reported as NMSE = MSE / target variance.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(
        s, ["alpha", "sweep", "alphas"],
        alpha=dict(default=2.0, help="weight of the cost term (FLOPs relative to the full model) for a single run; "
                                     "0 = no pressure on the width; must be >= 0 (default: 2.0)"),
        sweep=dict(help="run the sweep over --alphas and the fixed-width baselines instead of a single run"),
        alphas=dict(help="comma-separated alphas for --sweep, each >= 0 "
                         f"(default: {csv_list(DEFAULT_ALPHAS)}; with --quick: {csv_list(QUICK_ALPHAS)})"))
    s.add_argument("--baselines", type=_width_list, default=None, metavar="W1,W2,...",
                   help="comma-separated hidden widths of the fixed-width baselines for --sweep, or 'none' "
                        f"(default: {csv_list(DEFAULT_BASELINE_WIDTHS)}; with --quick: {csv_list(QUICK_BASELINE_WIDTHS)})")
    add_options(s, ["out", "epochs"], out=dict(default=Path("runs/synthetic")),
                epochs=dict(help=f"training epochs per run, >= 1 (default: {D.epochs}; with --quick: {Q.epochs})"))
    s.add_argument("--hidden", type=_hidden, default=None, metavar="N",
                   help=f"hidden width of the student before training (default: {D.hidden}; with --quick: {Q.hidden})")
    add_options(s, ["kappa_min"], kappa_min=dict(
        type=_kappa, metavar="F", help="smallest relative width K/hidden a run may reach, in (0, 1]; K never goes "
                                       "below kappa-min * hidden, which must be >= 1 (default: 1/hidden, so the "
                                       "width can go down to 1)"))
    s.add_argument("--lr", type=_lr, default=None, metavar="LR",
                   help="Adam learning rate of the weights, cosine-decayed over training "
                        f"(default: {D.lr:g}; with --quick: {Q.lr:g})")
    s.add_argument("--width-lr", type=_lr, default=None, metavar="LR",
                   help=f"Adam learning rate of the widths, in units of K/hidden, cosine-decayed like --lr "
                        f"(default: {D.width_lr:g})")
    add_options(
        s, ["settle_epochs", "compact_every", "seed", "quick", "workers"],
        settle_epochs=dict(help="the last N epochs train the weights at the fixed width the model is exported with "
                                "(slimtrain.settle_widths), as a pruned model is fine-tuned (default: 0, the width "
                                "learns to the end)"),
        seed=dict(help="seed of the teacher, the data and the initialisation; the same seed gives the same results "
                       "(default: 0)"),
        quick=dict(help=f"tiny settings for smoke tests: {Q.n_train} training examples, hidden {Q.hidden}, "
                        f"{Q.epochs} epochs, batch {Q.batch_size}, {len(QUICK_ALPHAS)} alphas and "
                        f"{len(QUICK_BASELINE_WIDTHS)} baselines (seconds instead of minutes; rougher results)"),
        workers=dict(default=None, help="parallel processes for --sweep, one torch thread each; results do not "
                                        "depend on it (default: the number of CPU cores, at most 2; 1 with --quick)"))
    s.add_argument("--tensorboard", action="store_true",
                   help="also log widths, cost and validation error to TensorBoard event files in "
                        "OUT/tensorboard (needs the tensorboard package)")
    add_options(s, ["resume", "sweep_engine", "no_progress", "device"], resume=dict(
        help="single run: continue a killed run from OUT/model.ckpt (written after every epoch) with the same "
             "settings; it ends with the same result as an uninterrupted run. Without a checkpoint in OUT the run "
             "starts from scratch. --sweep: skip the (row, seed) runs already finished in OUT/rows"))
    s.set_defaults(func=_cmd_synthetic)


def _synthetic_config(args):
    from .synthetic import SyntheticConfig

    over = {"seed": args.seed, **given(args, "epochs", "hidden", "lr", "width_lr")}
    over["settle_epochs"] = getattr(args, "settle_epochs", 0)
    over["compact_every"] = getattr(args, "compact_every", 0)
    cfg = SyntheticConfig.quick(**over) if args.quick else SyntheticConfig(**over)
    cfg.kappa_min = args.kappa_min if args.kappa_min is not None else 1.0 / cfg.hidden
    if cfg.warmup_epochs >= cfg.epochs:
        cfg.warmup_epochs = cfg.epochs - 1
    return cfg.validate()


def _cmd_synthetic(args) -> int:
    from ..train import distributed
    from . import synthetic as syn

    cfg = _synthetic_config(args)
    out: Path = args.out
    progress = not args.no_progress
    device = getattr(args, "device", "cpu")
    distributed.resolve_device(device)  # an unavailable device stops here, before any work
    if not args.sweep:
        if args.alphas is not None or args.baselines is not None:
            raise ValueError("--alphas and --baselines only apply with --sweep")
        _check_no_sweep_engine_args(args)
        main = distributed.is_main()
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        resume = bool(getattr(args, "resume", False))
        if resume and (out / "model.ckpt").exists() and main:
            print(f"resuming from {out / 'model.ckpt'}")
        row = syn.train_run(cfg, args.alpha, record_csv=out / "widths.csv",
                            tensorboard_dir=(out / "tensorboard") if args.tensorboard else None,
                            checkpoint=out / "model.ckpt", progress=progress, resume=resume, device=device)
        if not main:
            return 0
        w = distributed.world()
        if w.parallel:
            print(f"data-parallel: {w.size} processes, global batch {cfg.batch_size} "
                  f"({cfg.batch_size // w.size}-{-(-cfg.batch_size // w.size)} rows per process)")
        (out / "result.json").write_text(json.dumps({"config": cfg.as_dict(), "result": row}, indent=2) + "\n")
        print(f"alpha={args.alpha:g}: hidden width {cfg.hidden} -> {row['width']} (K={row['width_continuous']:.3f}; "
              f"teacher uses {cfg.h_true})")
        print(f"  exported cost per example: {row['flops']:.0f} FLOPs ({row['macs']:.0f} MACs), {row['params']} params")
        print(f"  test NMSE {row['test_nmse']:.4f} (MSE {row['test_mse']:.5f}; noise floor {cfg.noise_floor:.4f})")
        print(f"  wrote {out / 'model.ckpt'}, {out / 'widths.csv'}, {out / 'result.json'} "
              f"in {time.perf_counter() - t0:.1f}s")
        print(f"  next: slimtrain export {out / 'model.ckpt'} {out / 'export'}")
        return 0
    _refuse_sweep_under_torchrun()
    alphas = args.alphas if args.alphas is not None else list(syn.QUICK_ALPHAS if args.quick else syn.DEFAULT_ALPHAS)
    widths = args.baselines if args.baselines is not None else list(
        syn.QUICK_BASELINE_WIDTHS if args.quick else syn.DEFAULT_BASELINE_WIDTHS)
    workers = args.workers if args.workers is not None else (1 if args.quick else max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    seeds = sweep_seeds(args)
    rows = syn.run_sweep(cfg, alphas, widths, out, workers=workers, progress=progress, tensorboard=args.tensorboard,
                         seeds=seeds, engine=args.engine, address=args.address, resume=args.resume, device=device)
    print(syn.format_table(rows))
    print(f"sweep of {len(rows)} runs ({len(seeds)} seed(s)) took {time.perf_counter() - t0:.0f}s; wrote "
          f"{out / 'sweep.csv'}, {out / 'sweep_summary.csv'} and {out / 'sweep.png'}")
    return 0
