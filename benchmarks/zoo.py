"""The model zoo as a table: each model through make_dynamic -> short DCL training -> export -> checks.

Prints a markdown table (model, #dynamic widths, #fixed widths, MACs per item before and after
the short run, export max abs error, analytic-vs-flop_counter difference in %, pass/fail with
the first error). The models and the procedure are those of ``tests/_zoo.py`` (the test suite
runs the same thing in ``tests/test_zoo.py``).

    python benchmarks/zoo.py [--only bert,vit] [--steps 10] [--seed 0] [--reorder magnitude] [--traceback]
    python benchmarks/zoo.py --csv docs/zoo.csv     # the result file behind the README's table (slimtrain report)
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "src", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

import _zoo  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated zoo names (default: all)")
    ap.add_argument("--steps", type=int, default=_zoo.STEPS, help="training steps per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reorder", choices=["magnitude", "taylor"], default=None,
                    help="reorder channels by this score first (slimtrain.reorder_channels), as for a trained model")
    ap.add_argument("--traceback", action="store_true", help="print the full traceback of each failure")
    ap.add_argument("--csv", type=Path, default=None, help="also write the results to this CSV")
    args = ap.parse_args(argv)
    wanted = [n for n in args.only.split(",") if n]
    names = [e.name for e in _zoo.ZOO]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        ap.error(f"unknown zoo model(s) {unknown}; known: {', '.join(names)}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = []
    for e in _zoo.ZOO:
        if wanted and e.name not in wanted:
            continue
        r = _zoo.run_entry(e, seed=args.seed, steps=args.steps, reorder=args.reorder)
        results.append(r)
        if args.traceback and r.trace:
            print(f"--- {e.name}\n{r.trace}", file=sys.stderr)
    print(_zoo.markdown_table(results))
    if args.csv is not None:
        import csv
        import dataclasses

        cols = [f.name for f in dataclasses.fields(_zoo.ZooResult) if f.name not in ("trace", "seconds")]
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(cols + ["steps", "reorder"])
            for r in results:
                w.writerow([getattr(r, c) for c in cols] + [args.steps, args.reorder or ""])
    print(f"\n{sum(r.passed for r in results)}/{len(results)} pass "
          f"(kappa_min={_zoo.KAPPA_MIN}, {args.steps} steps, alpha={_zoo.ALPHA}, width lr={_zoo.WIDTH_LR}, "
          f"reorder={args.reorder})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
