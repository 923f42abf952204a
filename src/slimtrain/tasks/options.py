"""The argparse value checks and shared options of the ``slimtrain`` commands.

Every case study's command (``slimtrain synthetic``, ``vad``, ``spoof``, ``kws``, ...) and the
top-level :mod:`slimtrain.cli` take their option types from here: each type turns a bad value into
argparse's one-line error naming the option's quantity (``alpha must be >= 0, got -1``). The
studies' layer owns them so that no study imports :mod:`slimtrain.cli` (the CLI sits above the
studies and loads them).
"""
from __future__ import annotations

import argparse
import math
import textwrap
from typing import Callable, TypeVar

__all__ = ["comma_list", "human_source_list", "add_compact_option", "add_device_option", "add_sweep_engine_arguments", "sweep_seeds"]

T = TypeVar("T")


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


def human_source_list(role: str) -> Callable[[str], list[str]]:
    """An argparse type for recorded human-voice sources (:func:`slimtrain.tasks.human_voices.parse_source_list`):
    ``role`` for every addable source of that role, ``none``, or comma-separated ids."""
    def parse(text: str) -> list[str]:
        from .human_voices import HumanVoiceError, parse_source_list

        try:
            return parse_source_list(text, role)
        except HumanVoiceError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


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
    from ..train.sweep_engine import seeds_from_args

    if args.address is not None and args.engine != "ray":
        raise ValueError("--address applies with --engine ray only")
    return seeds_from_args(args.seeds, args.seed_list, default=args.seed)


def _check_no_sweep_engine_args(args) -> None:
    used = [n for n, v in (("--seeds", args.seeds), ("--seed-list", args.seed_list), ("--address", args.address))
            if v is not None] + (["--engine"] if args.engine != "local" else [])
    if used:
        raise ValueError(f"{', '.join(used)} only apply with --sweep")


def _refuse_sweep_under_torchrun() -> None:
    """Sweeps run their runs in parallel processes of their own; torchrun is for one data-parallel run."""
    from ..train.distributed import launched

    if launched():
        raise ValueError("--sweep is not data-parallel: run it without torchrun (its --workers run the runs "
                         "in parallel); torchrun trains one model data-parallel")
