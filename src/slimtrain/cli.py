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
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

# torch.backends.mkldnn.flags() (used when slimtrain traces a model) warns on every CPU build
warnings.filterwarnings("ignore", message="TF32 acceleration")

class _Parser(argparse.ArgumentParser):
    """One-line errors: ``slimtrain: error: <message> (see '<prog> --help')``, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"slimtrain: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    # the option types live with the studies, which the parser loads anyway (importing slimtrain.cli does not)
    from .tasks.options import _kappa, _paragraphs, _positive_int, _seed, _tolerance, comma_list

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
TASK_COMMAND_MODULES = ("slimtrain.tasks.synthetic_cli", "slimtrain.tasks.vad.cli", "slimtrain.tasks.spoof.cli",
                        "slimtrain.tasks.kws")


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


def __getattr__(name: str):
    """Old import paths ``slimtrain.cli._alpha``, ``slimtrain.cli.comma_list``, ...: the option types moved to
    :mod:`slimtrain.tasks.options` (loaded on first use, so importing the CLI loads no study)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .tasks import options

    try:
        return getattr(options, name)
    except AttributeError:
        raise AttributeError(f"module 'slimtrain.cli' has no attribute {name!r}") from None


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
