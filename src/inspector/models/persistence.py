"""A fitted model on disk: one directory with a manifest, the model's state files and their checksums.

Saving builds the new directory beside the old one and swaps the two in a single atomic rename, so a crash
mid-save leaves the previous model intact. Loading checks format version and checksums, so a damaged or
incompatible directory fails with a message that says what is wrong instead of scoring garbage. This module
imports no torch: the line box reads model directories with it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspector.common.errors import InspectorError
from inspector.common.files import exchange_dirs, fsync_dir, sha256_bytes, write_synced

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NETWORK_FILE = "network.onnx"


class ModelDirError(InspectorError, RuntimeError):
    """A model directory that is missing, damaged or written by an incompatible version."""


def write_model_dir(
    path: Path, manifest: dict[str, Any], files: dict[str, bytes], finish: Callable[[Path], None] | None = None
) -> None:
    """Write `files` and the manifest (with their checksums) to `path`, replacing any model there atomically.
    `finish` adds what belongs beside the model (an export's calibrations) to the new folder before the swap, so
    a crash never leaves the model without them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            write_synced(tmp / name, data)
        manifest = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "files": {name: sha256_bytes(data) for name, data in files.items()},
        }
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        if finish is not None:
            finish(tmp)
        for folder in (tmp, *(p for p in tmp.iterdir() if p.is_dir())):
            fsync_dir(folder)
        if path.exists():
            exchange_dirs(tmp, path)  # tmp now holds the old model
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
        for name in manifest.get("files", {}):
            _check_file(path, manifest, name, _read_listed(path, name))
    return manifest


def read_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and every file it lists, each read once and checked against its checksum."""
    path = Path(path)
    manifest = read_manifest(path, verify=False)
    files = {name: _read_listed(path, name) for name in manifest.get("files", {})}
    for name, data in files.items():
        _check_file(path, manifest, name, data)
    return manifest, files


def _read_listed(path: Path, name: str) -> bytes:
    file = path / name
    if not file.is_file():
        raise ModelDirError(f"{path} is damaged: {name} is missing")
    return file.read_bytes()


def _check_file(path: Path, manifest: dict[str, Any], name: str, data: bytes) -> None:
    if sha256_bytes(data) != manifest["files"][name]:
        raise ModelDirError(f"{path} is damaged: {name} does not match its checksum")
