"""The ``slimtrain`` command.

* ``slimtrain synthetic`` -- the synthetic case study (one run, or ``--sweep``),
  added by :mod:`slimtrain.tasks.synthetic_cli` like the other case studies' commands;
* ``slimtrain report`` -- regenerate the results tables and figures from the committed CSVs;
* ``slimtrain export CKPT OUT_DIR`` -- cut a checkpoint's model to its learned
  widths and write a state dict, a TorchScript file and a summary;
* ``slimtrain plan MODULE:FACTORY --input-shape B,...`` -- print the width plan
  of your own model (every width: dynamic or fixed and why, ties).

Bad values give one line ``slimtrain: error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

__all__ = ["main", "build_parser"]

# torch.backends.mkldnn.flags() (used when slimtrain traces a model) warns on every CPU build
warnings.filterwarnings("ignore", message="TF32 acceleration")

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """One-line errors: ``slimtrain: error: <message> (see '<prog> --help')``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"slimtrain: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# -- value checks (argparse types) ------------------------------------------------------------------
def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _alpha(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"alpha must be >= 0, got {text}")
    return v


def comma_list(parse: Callable[[str], T], example: str, *, none_ok: bool = False) -> Callable[[str], list[T]]:
    """An argparse type for ``a,b,c`` whose items ``parse`` checks (its error names the bad item).

    ``example`` is a valid list shown when the text holds no item; with ``none_ok``
    an empty text or ``none`` gives ``[]`` instead of an error.
    """
    def parse_list(text: str) -> list[T]:
        if none_ok and text.strip().lower() in ("", "none"):
            return []
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list such as {example}, got {text!r}")
        return [parse(p) for p in parts]

    return parse_list


def _alpha_list(text: str) -> list[float]:
    return comma_list(_alpha, "0,0.1,1")(text)


def _width_list(text: str) -> list[int]:
    return comma_list(lambda p: _positive_int(p, "baseline widths"), "4,8,16", none_ok=True)(text)


def _int_at_least(text: str, what: str = "value", minimum: int = 0) -> int:
    """``text`` as an integer ``>= minimum``; argparse's error names ``what`` otherwise."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer {what}, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {text}")
    return v


def _positive_int(text: str, what: str = "value") -> int:
    return _int_at_least(text, what, 1)


def _epochs(text: str) -> int:
    return _positive_int(text, "epochs")


def _settle_epochs(text: str) -> int:
    return _int_at_least(text, "settle-epochs", 0)


def add_compact_option(p: argparse.ArgumentParser) -> None:
    """``--compact-every N`` for a task's training runs (see :func:`slimtrain.train.training.fit`)."""
    p.add_argument("--compact-every", type=lambda t: _int_at_least(t, "compact-every", 0), default=0, metavar="N",
                   help="DCL runs: cut the model to its current widths (slimtrain.compact) after every N epochs, so "
                        "the later epochs train a smaller, cheaper network; the model is always cut when its widths "
                        "settle (default: 0, only then)")


def _hidden(text: str) -> int:
    return _positive_int(text, "hidden")


def _workers(text: str) -> int:
    return _positive_int(text, "workers")


def _kappa(text: str) -> float:
    v = _number(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"kappa-min must be in (0, 1], got {text}")
    return v


def _positive_float(text: str, what: str = "value") -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text}")
    return v


def _lr(text: str) -> float:
    return _positive_float(text, "learning rate")


def _tolerance(text: str) -> float:
    return _positive_float(text, "tolerance")


def _device(text: str) -> str:
    """``--device``: cpu, cuda, cuda:N or mps (availability is checked when the command starts)."""
    import re

    t = text.strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", t):
        raise argparse.ArgumentTypeError(f"device must be cpu, cuda, cuda:N or mps, got {text!r}")
    return t


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option shared by every training command."""
    parser.add_argument("--device", type=_device, default="cpu", metavar="D",
                        help="where to train: cpu, cuda, cuda:N or mps; an unavailable device stops with an "
                             "error (exit code 2). Under torchrun, cuda means cuda:LOCAL_RANK (default: cpu)")


def _paragraphs(*paras: str) -> str:
    """Wrap each paragraph to 90 columns; lines starting with two spaces stay as written."""
    out = []
    for para in paras:
        lines = para.split("\n")
        if all(line.startswith("  ") for line in lines[1:]) and len(lines) > 1:
            out.append("\n".join([textwrap.fill(lines[0], 90)] + lines[1:]))
        else:
            out.append(textwrap.fill(para, 90))
    return "\n\n".join(out)


def _seed(text: str) -> int:
    return _int_at_least(text, "seed", 0)


def _seed_list(text: str) -> list[int]:
    parts = [t.strip() for t in text.split(",")]
    if not parts or any(not t for t in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, got {text!r}")
    seeds = [_seed(t) for t in parts]
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text}")
    return seeds


def _seeds(text: str) -> int:
    return _positive_int(text, "seeds")


def add_sweep_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The options every ``--sweep`` shares: seeds, engine (local or Ray), cluster address."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=_seeds, default=None, metavar="N",
                   help="--sweep: run every row for seeds 0..N-1 and report the mean and a 95%% Student-t "
                        "interval over seeds (default: one run per row at --seed)")
    g.add_argument("--seed-list", type=_seed_list, default=None, metavar="S1,S2,...",
                   help="--sweep: run every row for these seeds instead of 0..N-1")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="--sweep: run the rows as local processes (--workers of them) or as Ray tasks "
                        "(a local Ray with --workers CPUs, or the cluster at --address) (default: local)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--engine ray: address of a running Ray cluster, e.g. ray://head:10001 or auto "
                        "(default: start a local Ray)")


def sweep_seeds(args) -> list[int]:
    """The seeds a sweep runs (``--seeds``/``--seed-list``, else ``--seed``); checks --address."""
    from .train.sweep_engine import seeds_from_args

    if args.address is not None and args.engine != "ray":
        raise ValueError("--address applies with --engine ray only")
    return seeds_from_args(args.seeds, args.seed_list, default=args.seed)


def _check_no_sweep_engine_args(args) -> None:
    used = [n for n, v in (("--seeds", args.seeds), ("--seed-list", args.seed_list), ("--address", args.address))
            if v is not None] + (["--engine"] if args.engine != "local" else [])
    if used:
        raise ValueError(f"{', '.join(used)} only apply with --sweep")


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog="slimtrain",
        description="Learn layer widths and computational cost in one training run (dynamic complexity "
                    "layers), then export a smaller dense model.",
        epilog="Run 'slimtrain COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"slimtrain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    e = sub.add_parser(
        "export",
        help="cut a checkpoint's model to its learned widths; write state dict, TorchScript, ONNX and summary",
        description=_paragraphs(
            "Load a checkpoint written by slimtrain (e.g. OUT/model.ckpt of 'slimtrain synthetic'), rebuild "
            "its dynamic model, cut every layer to its learned width ceil(K) and write to OUT_DIR:\n"
            "  model_state.pt  state dict of the exported (small, dense) model\n"
            "  model.pt        TorchScript of the exported model (torch.jit.load; slimtrain not needed)\n"
            "  model.onnx      ONNX of the exported model, dynamic batch axis where the exporter allows "
            "(onnxruntime; slimtrain not needed)\n"
            "  summary.json    widths, MACs, FLOPs and parameters per example, the recorded metric, the checks, "
            "the recipe (slimtrain.train.checkpoint.load_exported(OUT_DIR) rebuilds the model from model_state.pt)",
            "The TorchScript output is checked against the dynamic model in eval mode on a random input of "
            "the recorded sample shape, and the ONNX file (run with onnxruntime) against the exported model; "
            "exit code 1 if either differs.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("checkpoint", type=Path, metavar="CKPT", help="checkpoint file written by slimtrain")
    e.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the four files (created if needed)")
    e.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the random input used to check the TorchScript model (default: 0)")
    e.add_argument("--atol", type=_tolerance, default=1e-5, metavar="TOL",
                   help="largest absolute difference allowed between TorchScript/ONNX and dynamic model, "
                        "relative to the output scale max(1, max|y|) (default: 1e-5)")
    e.add_argument("--no-onnx", action="store_true",
                   help="do not write model.onnx (the ONNX export of recurrent models over long samples takes "
                        "a while: the exporter unrolls GRU/LSTM layers over the recorded sample length)")
    e.set_defaults(func=_cmd_export)

    from .tasks import report

    r = sub.add_parser(
        "report", help="regenerate the results tables in README.md and docs/*.md and the figures from the CSVs",
        description=_paragraphs(
            "Rewrite every table between '<!-- generated:NAME -->' and '<!-- /generated:NAME -->' in "
            "README.md and docs/*.md, and the figures docs/*.png, from the committed result CSVs "
            "(docs/synthetic_sweep.csv, docs/vad_results/sweep.csv, docs/spoof_sweep*.csv). Multi-seed "
            "results show the mean and a 95% Student-t interval over seeds; single-seed ones n=1.",
        ))
    report.add_arguments(r)
    r.set_defaults(func=report.run)

    pl = sub.add_parser(
        "plan",
        help="trace your own model and print every width: dynamic or fixed (and why), and which layers are tied",
        description=_paragraphs(
            "Import FACTORY from MODULE (a Python import path, e.g. mypkg.models:build or ./file.py's "
            "module name when run from its folder), call it with no arguments to get the model, run "
            "slimtrain.make_dynamic on a copy with a random input of --input-shape and print the width "
            "report. The model is not changed and nothing is trained or written.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pl.add_argument("factory", metavar="MODULE:FACTORY", help="import path of a function returning the nn.Module")
    pl.add_argument("--input-shape", type=comma_list(lambda t: _positive_int(t, "shape entry"), "2,3,32"),
                    required=True, metavar="B,...", help="shape of the sample batch, batch first, e.g. 2,3,32")
    pl.add_argument("--int-input", type=lambda t: _positive_int(t, "--int-input"), default=None, metavar="V",
                    help="the sample holds random integers in [0, V) (token ids) instead of normal floats")
    pl.add_argument("--kappa-min", type=_kappa, default=None, metavar="F",
                    help="smallest relative width K/N, in (0, 1] (floor: one channel)")
    pl.add_argument("--exclude", type=comma_list(str, "fc1,fc2"), default=[], metavar="NAME,...",
                    help="module paths to keep at full width")
    pl.add_argument("--strict", action="store_true",
                    help="fail (exit 2, naming the op and module path) where an unsupported op or layer would "
                         "leave a width fixed")
    pl.add_argument("--heads", choices=("count", "width"), default="count",
                    help="attention split into heads: learn the number of heads (count, default) or the "
                         "dimensions per head (width)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    pl.set_defaults(func=_cmd_plan)

    # the speech case studies register their own commands ('slimtrain vad', 'slimtrain data vad', ...)
    data = sub.add_parser("data", help="build the offline data sets of the speech case studies",
                          description="Build a case study's data set deterministically from a seed into a cache "
                                      "folder with a manifest (nothing is downloaded).")
    data_sub = data.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for register in _task_command_registrars():
        register(sub, data_sub)
    return p


#: modules with a ``register(commands, data_commands)`` function adding their subcommands
TASK_COMMAND_MODULES = ("slimtrain.tasks.synthetic_cli", "slimtrain.tasks.vad.cli", "slimtrain.tasks.spoof.cli")


def _task_command_registrars():
    import importlib

    for name in TASK_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that task is not part of this installation
            raise
        yield module.register


# -- commands ---------------------------------------------------------------------------------------
def _load_factory(spec: str):
    import importlib

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"expected MODULE:FACTORY (e.g. mypkg.models:build), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"cannot import module {mod_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _cmd_plan(args) -> int:
    import torch
    from torch import nn

    from .core.graph import plan_widths

    factory = _load_factory(args.factory)
    model = factory if isinstance(factory, nn.Module) else factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{args.factory} returned {type(model).__name__}, not an nn.Module")
    torch.manual_seed(0)
    shape = tuple(args.input_shape)
    sample = torch.randint(0, args.int_input, shape) if args.int_input else torch.randn(shape)
    plan = plan_widths(model, sample, kappa_min=args.kappa_min, exclude=tuple(args.exclude), strict=args.strict,
                       heads=args.heads)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else plan)
    return 0


def load_task_registry() -> None:
    """Import the case studies so they register their model builders (the core never imports them)."""
    import importlib

    try:
        importlib.import_module("slimtrain.tasks")
    except ModuleNotFoundError as e:  # an installation without the case studies
        if not (e.name or "").startswith("slimtrain.tasks"):
            raise


def _refuse_sweep_under_torchrun() -> None:
    """Sweeps run their runs in parallel processes of their own; torchrun is for one data-parallel run."""
    from .train.distributed import launched

    if launched():
        raise ValueError("--sweep is not data-parallel: run it without torchrun (its --workers run the runs "
                         "in parallel); torchrun trains one model data-parallel")


def _cmd_export(args) -> int:
    import torch

    load_task_registry()  # the checkpoint's builder is registered by its task

    from .train.checkpoint import load_checkpoint, load_dynamic_model
    from .core.cost import model_cost
    from .core.export import export
    from .core.graph import dynamic_widths

    ckpt = load_checkpoint(args.checkpoint)
    model = load_dynamic_model(ckpt).eval()
    small = export(model).eval()
    shape = ckpt["recipe"]["sample_shape"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(args.seed))
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        y_ref = model(x)
        with warnings.catch_warnings():  # torch.jit.trace is deprecated in recent torch; TorchScript still loads
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(small, x)
            ts_path = out / "model.pt"
            tmp = out / ".model.pt.tmp"
            torch.jit.save(traced, str(tmp))
            os.replace(tmp, ts_path)
            y_ts = torch.jit.load(str(ts_path))(x)
    if not (isinstance(y_ref, torch.Tensor) and isinstance(y_ts, torch.Tensor)):
        raise ValueError("slimtrain export handles models with a single tensor output")
    diff = float((y_ref - y_ts).abs().max())
    scale = max(1.0, float(y_ref.abs().max()))
    ok = diff <= args.atol * scale
    from .core.export import ExportError, export_onnx

    tmp_state = out / ".model_state.pt.tmp"
    torch.save(small.state_dict(), tmp_state)
    os.replace(tmp_state, out / "model_state.pt")
    onnx_info: dict = {"skipped": "--no-onnx"}
    onnx_ok = True
    if not getattr(args, "no_onnx", False):
        try:
            onnx_info = export_onnx(small, x, out / "model.onnx", atol=args.atol)
        except (ExportError, ImportError) as e:
            onnx_info, onnx_ok = {"error": str(e)}, False
    cost = model_cost(model, hard=True)
    n_exported = sum(p.numel() for p in small.parameters())
    summary = {
        "checkpoint": str(args.checkpoint),
        "task": ckpt["recipe"]["task"],
        "widths": {k: int(v) for k, v in dynamic_widths(model, hard=True).items()},
        "widths_continuous": dynamic_widths(model, hard=False),
        "macs": float(cost.macs),
        "flops": float(cost.flops),
        "params": int(round(float(cost.params))),
        "params_exported_model": n_exported,
        "metric": ckpt["extra"].get("metric"),
        "sample_shape": list(shape),
        "check": {"input": f"randn{tuple(shape)} seed {args.seed}", "max_abs_diff": diff, "passed": ok},
        "onnx": onnx_info,
        "recipe": ckpt["recipe"],
        "architecture": str(small),
        "files": ["model_state.pt", "model.pt", "model.onnx", "summary.json"] if "exporter" in onnx_info
        else ["model_state.pt", "model.pt", "summary.json"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    w = ", ".join(f"{k}: {v}" for k, v in summary["widths"].items())
    print(f"exported {args.checkpoint} -> {out}: widths {w}; {summary['flops']:.0f} FLOPs "
          f"({summary['macs']:.0f} MACs), {summary['params']} params per example")
    if n_exported != summary["params"]:
        print(f"slimtrain: warning: the exported model has {n_exported} parameters, the cost model says "
              f"{summary['params']}", file=sys.stderr)
    if not onnx_ok:
        print(f"slimtrain: error: {onnx_info['error']}", file=sys.stderr)
        return 1
    if not ok:
        print(f"slimtrain: error: TorchScript output differs from the dynamic model in eval mode by {diff:.3g} "
              f"(allowed {args.atol * scale:.3g})", file=sys.stderr)
        return 1
    print(f"check passed: TorchScript output equals the dynamic model in eval mode (max |diff| {diff:.2g}) "
          f"on {summary['check']['input']}")
    if "exporter" in onnx_info:
        print(f"check passed: ONNX ({onnx_info['exporter']} exporter, onnxruntime) equals the exported model "
              f"(max |diff| {onnx_info['max_abs_diff']:.2g})")
    return 0


# -- entry point ------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``slimtrain`` command; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    from .train.checkpoint import CheckpointError
    from .core.dcl import WidthError
    from .core.graph import GraphError
    from .core.loss import LossConfigError
    from .train.sweep_engine import SweepError
    from .train.training import TrainingError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors (already printed)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    from .train.distributed import shutdown

    try:
        return int(args.func(args))
    except (WidthError, GraphError, LossConfigError, CheckpointError, ValueError) as e:
        print(f"slimtrain: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"slimtrain: error: training failed: {_one_line(e)}", file=sys.stderr)
        return 1
    except SweepError as e:
        print(f"slimtrain: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"slimtrain: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"slimtrain: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slimtrain: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()  # data-parallel runs: every rank leaves the process group cleanly


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
