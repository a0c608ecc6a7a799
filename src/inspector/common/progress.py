"""Progress bars that suit where stderr goes: a live bar on a terminal, one plain line every few seconds in a
log file or pipe (a redrawn bar there is thousands of carriage-return updates: over 100 KB for one fit)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 5.0  # seconds between progress lines when stderr is not a terminal


class _Lines:
    """A stream that writes each bar refresh as one line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[T] | None = None, **options: Any) -> tqdm:
    """`tqdm(iterable, **options)` on stderr; not a terminal: plain lines, at most one every LOG_INTERVAL_S."""
    stream = sys.stderr
    if not stream.isatty():
        options = {**options, "file": _Lines(stream), "mininterval": LOG_INTERVAL_S, "ascii": True, "ncols": 100}
    else:
        options.setdefault("file", stream)
    return tqdm(iterable, **options)
