"""Atomic, durable file writes: a crash leaves the old content or the new one, never a torn file.

The model directory, the calibration store and the inspection store all write through these helpers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import uuid
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write one file so a crash leaves either the old or the new content, never a torn one."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry itself is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_dirs(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2); elsewhere fall back to two renames."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is not None:
        res = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if res == 0:
            return
    aside = b.parent / f".{b.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
