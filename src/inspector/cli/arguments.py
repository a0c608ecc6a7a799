"""What several commands share: the parser class, argument groups, argument types and model-dir resolution.

Imports nothing heavy (no numpy, torch, yaml or pydantic), so that building the parser stays fast; whatever a
helper needs beyond that it imports when called.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from inspector.common.errors import InspectorError

if TYPE_CHECKING:
    from inspector.calibration import Calibration

DEFAULT_DATA_ROOT = "datasets/mvtec"
EXIT_USER_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


class UsageError(InspectorError):
    """A command line that does not say enough, or contradicts itself; printed without a traceback."""


FIT_EXTRA = 'pip install "inspector[fit]"'


def training_stack() -> ModuleType:
    """torch, for the commands that fit; where the training stack is not installed (a line box), a one-line
    error that names the extra to install."""
    try:
        import timm  # noqa: F401  (the backbones need it as much as torch)
        import torch
    except ImportError as exc:
        raise UsageError(f"fitting needs the training stack, and {exc.name} is not installed: {FIT_EXTRA}") from exc
    return torch


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed only when its help is formatted (`lazy_epilog`), so that a
    help text which needs heavy imports costs nothing unless it is printed."""

    lazy_epilog: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog, self.lazy_epilog = self.lazy_epilog(), None
        return super().format_help()


Subcommands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def add_command(sub: Subcommands, name: str, handler: Handler, help: str, **kwargs: Any) -> CommandParser:
    """A subcommand whose description is its one-line help, run by `handler`."""
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.set_defaults(handler=handler)
    return p


def help_handler(parser: argparse.ArgumentParser) -> Handler:
    """A handler for a command group given without its action: print the group's help."""

    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USER_ERROR

    return run


# ---- argument groups -------------------------------------------------------------------------------------


def add_data_args(p: argparse.ArgumentParser, category_required: bool = False) -> None:
    p.add_argument("--category", required=category_required, help="category folder name under --data-root")
    p.add_argument(
        "--data-root",
        default=os.environ.get("INSPECTOR_DATA_ROOT", DEFAULT_DATA_ROOT),
        help="folder holding <category>/train/good, test/<type>, ground_truth/<type> "
        "(default: $INSPECTOR_DATA_ROOT or %(default)s)",
    )


def add_model_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, help="fitted model directory (default: models/<category>)")


def add_threads_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, help="CPU threads (default: all available cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


# ---- argument types --------------------------------------------------------------------------------------


def int_tuple(text: str) -> tuple[int, ...]:
    """'2,3' or '2 3' -> (2, 3)."""
    return tuple(int(v) for v in text.replace(",", " ").split())


def size(text: str) -> int | tuple[int, int]:
    """'256' -> 256, '256x320' (or '256,320') -> (256, 320)."""
    values = int_tuple(text.replace("x", " "))
    return values[0] if len(values) == 1 else (values[0], values[1])


def band(text: str) -> tuple[float, float]:
    """--review-band LOW:HIGH in multiples of the threshold."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH such as 0.9:1.2, got '{text}'") from None
    if not 0 < low <= 1.0 <= high:
        raise argparse.ArgumentTypeError(f"need 0 < LOW <= 1 <= HIGH (multiples of the threshold), got '{text}'")
    return low, high


def set_pairs(pairs: list[str]) -> dict[str, Any]:
    """--set key=value with YAML-typed values, for any model parameter without its own flag."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got '{pair}'")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


# ---- resolving what the arguments name ----------------------------------------------------------------


def resolve_model_dir(args: argparse.Namespace) -> Path:
    """--model-dir, else models/<--category>."""
    if args.model_dir:
        return Path(args.model_dir)
    if args.category:
        return Path("models") / args.category
    raise UsageError("say which model: --model-dir DIR, or --category NAME for models/NAME")


def active_calibration(model_dir: Path) -> Calibration | None:
    """The model's active calibration (None, with a note, when it has none); a stale one is an error."""
    from inspector.calibration import load_active_calibration

    calibration = load_active_calibration(model_dir)
    if calibration is None:
        print(
            f"note: {model_dir} has no calibration, so no pass/fail verdicts; run `inspector calibrate`",
            file=sys.stderr,
        )
    return calibration
