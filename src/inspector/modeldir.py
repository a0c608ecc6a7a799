"""A fitted model on disk: one directory with a manifest, the model's state files and their checksums.

Saving builds the new directory beside the old one and swaps the two in a single atomic rename, so a crash
mid-save leaves the previous model intact. Loading checks format version and checksums, so a damaged or
incompatible directory fails with a message that says what is wrong instead of scoring garbage.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ModelDirError(RuntimeError):
    """A model directory that is missing, damaged or written by an incompatible version."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_model_dir(path: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write `files` and the manifest (with their checksums) to `path`, replacing any model there atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        manifest = {**manifest, "format_version": FORMAT_VERSION,
                    "files": {name: sha256_bytes(data) for name, data in files.items()}}  # fmt: skip
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        fsync_dir(tmp)
        if path.exists():
            _exchange(tmp, path)  # tmp now holds the old model
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of a model directory, after checking version and (optionally) file checksums."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not path.is_dir():
        raise ModelDirError(f"no model at {path}: the directory does not exist (fit one with `inspector fit`)")
    if not manifest_file.is_file():
        raise ModelDirError(f"{path} is not a model directory: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{manifest_file} is damaged: {exc}") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(
            f"{path} has model format {version!r}; this inspector reads format {FORMAT_VERSION}. Re-fit the model."
        )
    if verify:
        for name, digest in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise ModelDirError(f"{path} is damaged: {name} is missing")
            if sha256_bytes(file.read_bytes()) != digest:
                raise ModelDirError(f"{path} is damaged: {name} does not match its checksum")
    return manifest


def write_atomic(path: Path, data: bytes) -> None:
    """Write one file so a crash leaves either the old or the new content, never a torn one."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry itself is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
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
