"""The `inspector` command line: fit, evaluate, calibrate, export, predict, demo and data download.

One convention everywhere: `--model` names a method (fit only), `--model-dir` names a fitted model (default
models/<category>/), `--data-root` + `--category` name data.

Each command's parser sits beside its handler (fit.py, evaluate.py, calibrate.py, gate.py, export.py, predict.py,
demo.py, data.py, serve.py, plc.py, keys.py, dataset.py, drift.py; shared arguments in arguments.py). Modules
import only the standard library and dependency-free names at their top and everything heavy inside the handler,
so `inspector --help` stays fast.

Errors a user can cause and fix (`InspectorError`) print as one `error: ...` line with exit status 2; every other
exception is a bug or an environment fault and keeps its traceback. `-v` shows tracebacks for both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from inspector.cli import calibrate, data, dataset, demo, drift, evaluate, export, fit, gate, keys, plc, predict, serve
from inspector.cli.arguments import EXIT_USER_ERROR, CommandParser, Handler, UsageError
from inspector.common.errors import InspectorError

DESCRIPTION = "The `inspector` command line: fit, evaluate, calibrate, export, predict, demo and data download."
# in the order of --help
COMMANDS = (fit, evaluate, calibrate, gate, export, predict, demo, data, serve, plc, keys, dataset, drift)

__all__ = ["EXIT_USER_ERROR", "UsageError", "build_parser", "main"]


def build_parser() -> CommandParser:
    parser = CommandParser(prog="inspector", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with log_to_stderr(args.verbose):
            return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except InspectorError as exc:
        if args.verbose:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


@contextmanager
def log_to_stderr(verbose: bool) -> Iterator[None]:
    """While a command runs, log records (warnings; with -v also info) go to stderr as `LEVEL message`.

    Installed for the command and removed after it, so `main` can be called again (tests, scripts) without
    piling up handlers, and it works whatever logging the caller has already configured."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    # On the handler too: a logger given its own level (the service sets "inspector"'s) must not print info.
    stream.setLevel(logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger()
    level = root.level
    root.addHandler(stream)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(stream)
        root.setLevel(level)


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a message that spans lines is joined), or its type when it has none."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
