"""Shrink a trained model: reorder its channels by importance, attach DCLs, fine-tune, export.

The project's synthetic case study (``slimtrain.tasks.synthetic``: a teacher with 8 tanh units,
a student MLP 16 -> 64 -> 4). For each seed:

1. train the full-width student normally (MSE, no DCL);
2. for each variant (no reordering, magnitude, Taylor):
   * *cut*: cut the trained model to ``--cut`` hidden units with no fine-tuning (the first units,
     after the variant's reordering) and measure the test error -- what the reordering alone buys;
   * *fine-tune*: ``make_dynamic`` (a DCL on the hidden width, which starts at full size), then
     ``--epochs`` epochs of ``MSE + alpha * FLOPs(K) / FLOPs(64)``, export, and measure MACs and
     test error of the exported model.

Prints mean +- 95 % t-interval over the seeds (the same trained model is used by every variant
of a seed, so the variants are paired). About 1-2 minutes on 2 CPU cores with the defaults.

    PYTHONPATH=src python examples/shrink_trained.py [--seeds 5] [--alpha 1.0] [--epochs 15]
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import slimtrain  # noqa: E402
from slimtrain.tasks.synthetic import SyntheticConfig, SyntheticData, build_student, make_data  # noqa: E402
from slimtrain.train.training import make_optimizer  # noqa: E402

VARIANTS = (None, "magnitude", "taylor")


def _batches(data: SyntheticData, batch_size: int, gen: torch.Generator):
    idx = torch.randperm(len(data.x_train), generator=gen)
    for i in range(0, len(idx) - batch_size + 1, batch_size):
        j = idx[i:i + batch_size]
        yield data.x_train[j], data.y_train[j]


def test_nmse(model: nn.Module, data: SyntheticData) -> float:
    model.eval()
    with torch.no_grad():
        return data.nmse(F.mse_loss(model(data.x_test), data.y_test).item())


def train_full(cfg: SyntheticConfig, data: SyntheticData, epochs: int, seed: int, lr: float = 3e-3) -> nn.Module:
    """The plain full-width student trained on MSE (Adam, cosine learning rate)."""
    torch.manual_seed(seed)
    model = build_student(cfg.in_dim, cfg.hidden, cfg.out_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(data.x_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for x, y in _batches(data, cfg.batch_size, gen):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def reorder(model: nn.Module, data: SyntheticData, score: Optional[str]) -> None:
    """Reorder the hidden units in place (``score=None``: keep the trained order)."""
    if score is None:
        return
    sample = data.x_train[:256]
    kw = {}
    if score == "taylor":  # a few training batches and the training loss
        kw = dict(batches=[(data.x_train[i:i + 256], data.y_train[i:i + 256]) for i in range(0, 2048, 256)],
                  loss_fn=F.mse_loss)
    slimtrain.reorder_channels(model, sample, score, **kw)


def cut(model: nn.Module, data: SyntheticData, width: int) -> float:
    """Test NMSE of ``model`` cut to its first ``width`` hidden units, without any training."""
    m = copy.deepcopy(model)
    slimtrain.make_dynamic(m, data.x_train[:8], min_channels=1)
    for name in slimtrain.get_graph(m).dcls.values():
        m.get_submodule(name).set_width(width)
    return test_nmse(slimtrain.export(m), data)


def finetune(model: nn.Module, data: SyntheticData, cfg: SyntheticConfig, *, alpha: float, epochs: int, seed: int,
             lr: float = 1e-3, width_lr: float = 0.05) -> dict:
    """make_dynamic -> ``epochs`` of MSE + alpha * FLOPs/FLOPs_full -> export; returns width, MACs, NMSE."""
    m = copy.deepcopy(model)
    slimtrain.make_dynamic(m, data.x_train[:cfg.batch_size], kappa_min=cfg.kappa_min)
    objective = slimtrain.TradeoffLoss(m, alpha=alpha)
    opt = make_optimizer(m, lr=lr, width_lr=width_lr)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    m.train()
    for _ in range(epochs):
        for x, y in _batches(data, cfg.batch_size, gen):
            opt.zero_grad()
            objective(F.mse_loss(m(x), y)).backward()
            opt.step()
    m.eval()
    width = next(iter(slimtrain.dynamic_widths(m, hard=True).values()))
    macs = float(slimtrain.model_cost(m, hard=True).macs)
    small = slimtrain.export(m)
    with torch.no_grad():
        assert (m(data.x_test) - small(data.x_test)).abs().max().item() <= 1e-5
    return {"width": width, "macs": macs, "nmse": test_nmse(small, data)}


def mean_ci(values: list[float]) -> str:
    """``mean +- half-width of the 95 % t-interval`` (Student t, n - 1 degrees of freedom)."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return f"{m:.4g}"
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return f"{m:.4g} +- {half:.2g}"


def run(seeds: int, alpha: float, epochs: int, full_epochs: int, cut_width: int, hidden: int = 64,
        n_train: int = 4096, verbose: bool = True) -> dict:
    cfg = SyntheticConfig(hidden=hidden, n_train=n_train, n_val=256, n_test=4096, batch_size=128)
    data = make_data(cfg)
    rows: dict[str, dict[str, list[float]]] = {}
    full_nmse, full_macs = [], []
    for seed in range(seeds):
        trained = train_full(cfg, data, full_epochs, seed)
        full_nmse.append(test_nmse(trained, data))
        full_macs.append(float(cfg.in_dim * hidden + hidden * cfg.out_dim))
        for score in VARIANTS:
            name = score or "none"
            m = copy.deepcopy(trained)
            reorder(m, data, score)
            r = rows.setdefault(name, {"cut": [], "width": [], "macs": [], "nmse": []})
            r["cut"].append(cut(m, data, cut_width))
            for k, v in finetune(m, data, cfg, alpha=alpha, epochs=epochs, seed=seed).items():
                r[k].append(v)
        if verbose:
            print(f"seed {seed}: full NMSE {full_nmse[-1]:.4f}; " + "; ".join(
                f"{k}: cut {v['cut'][-1]:.3f}, K {v['width'][-1]}, NMSE {v['nmse'][-1]:.4f}" for k, v in rows.items()),
                flush=True)
    return {"cfg": cfg, "full_nmse": full_nmse, "full_macs": full_macs, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=1.0, help="cost weight of the fine-tuning")
    ap.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
    ap.add_argument("--full-epochs", type=int, default=40, help="epochs of the normal full-width training")
    ap.add_argument("--cut", type=int, default=8, help="hidden units kept by the no-fine-tuning cut")
    ap.add_argument("--csv", default=None, help="also write one line per seed and reordering to this CSV "
                                                "(docs/shrink_trained.csv is the README's table, by slimtrain report)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run(args.seeds, args.alpha, args.epochs, args.full_epochs, args.cut)
    cfg = res["cfg"]
    print(f"\nsynthetic student {cfg.in_dim}-{cfg.hidden}-{cfg.out_dim} (teacher: {cfg.h_true} units), "
          f"{args.seeds} seeds, full training {args.full_epochs} epochs, fine-tuning {args.epochs} epochs at "
          f"alpha={args.alpha}; noise floor NMSE {cfg.noise_floor:.4f}")
    print(f"trained full model: {res['full_macs'][0]:.0f} MACs, test NMSE {mean_ci(res['full_nmse'])}\n")
    print(f"| reordering | NMSE cut to {args.cut} units, no fine-tuning | learned width K | MACs after | "
          "test NMSE after fine-tuning |")
    print("|---|---:|---:|---:|---:|")
    for name, r in res["rows"].items():
        print(f"| {name} | {mean_ci(r['cut'])} | {mean_ci(r['width'])} | {mean_ci(r['macs'])} | {mean_ci(r['nmse'])} |")
    base = res["rows"]["none"]
    print("\npaired differences to no reordering (same trained model per seed):")
    for name, r in res["rows"].items():
        if name == "none":
            continue
        d = {k: [a - b for a, b in zip(r[k], base[k])] for k in ("cut", "width", "nmse")}
        print(f"- {name}: cut NMSE {mean_ci(d['cut'])}, learned K {mean_ci(d['width'])}, "
              f"fine-tuned NMSE {mean_ci(d['nmse'])}")
    print(f"\n({time.perf_counter() - t0:.0f} s; mean +- 95 % t-interval over seeds)")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["reorder", "seed", "cut_units", "cut_nmse", "width", "macs", "nmse", "full_macs", "full_nmse",
                        "alpha", "epochs", "full_epochs"])
            for name, r in res["rows"].items():
                for seed in range(args.seeds):
                    w.writerow([name, seed, args.cut, r["cut"][seed], r["width"][seed], r["macs"][seed], r["nmse"][seed],
                                res["full_macs"][seed], res["full_nmse"][seed], args.alpha, args.epochs,
                                args.full_epochs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
