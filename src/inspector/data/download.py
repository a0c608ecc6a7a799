"""Fetch and unpack one MVTec AD category (for users who are online).

MVTec AD is published by MVTec Software GmbH under CC BY-NC-SA 4.0 (non-commercial use only);
see ``MVTEC_PAGE``.  Nothing here is needed offline: the tool can also read a category that was
downloaded by hand, and ``inspector.data.synthetic`` generates a stand-in category.

``download_category`` streams the archive to a temporary file beside the destination (with a
progress bar), optionally checks its SHA-256, unpacks it safely (no absolute paths, no ``..``,
links and special files skipped) into a temporary folder beside the destination and renames the
category folder into place, so a half-downloaded or half-unpacked category never appears under
its final name.  An existing category folder is never overwritten.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from inspector.common.errors import InspectorError
from inspector.common.progress import progress_bar
from inspector.data.mvtec import MVTEC_CATEGORIES, MVTEC_LICENSE, MVTEC_PAGE, check_category_name

__all__ = [
    "MVTEC_CATEGORIES",
    "MVTEC_LICENSE",
    "MVTEC_PAGE",
    "MVTEC_URLS",
    "URL_ENV",
    "ChecksumError",
    "DownloadError",
    "UnknownCategoryError",
    "UnsafeArchiveError",
    "download_category",
    "resolve_url",
]

log = logging.getLogger(__name__)


URL_ENV = "INSPECTOR_MVTEC_URL"
"""Environment variable with a URL template such as ``https://mirror.example/mvtec/{category}.tar.xz``;
it takes precedence over ``MVTEC_URLS`` (but not over an explicit ``url=``)."""

# Official per-category archives, as MVTec's download page hands them out (mydrive.ch shares).
# The base URL pattern lives here, in one place.  The share id and the numeric "<file>-<stamp>"
# part differ per category (pill sits in another share); the values below are the ones MVTec's
# page has served since 2021 and that are widely republished, but they are tokenised links that
# MVTec can rotate (newer shares with other ids exist).  When they stop working, pass ``url=``
# or set INSPECTOR_MVTEC_URL (a template with ``{category}``), or fetch the archive by hand from
# MVTEC_PAGE.
_MYDRIVE_URL = "https://www.mydrive.ch/shares/{share}/download/{file_id}/{category}.tar.xz"
_MYDRIVE_SHARE = "38536/3830184030e49fe74747669442f0f282"
_MYDRIVE_FILES: dict[str, tuple[str, str]] = {
    # category: (share, file id)
    "bottle": (_MYDRIVE_SHARE, "420937370-1629951468"),
    "cable": (_MYDRIVE_SHARE, "420937413-1629951498"),
    "capsule": (_MYDRIVE_SHARE, "420937454-1629951595"),
    "carpet": (_MYDRIVE_SHARE, "420937484-1629951672"),
    "grid": (_MYDRIVE_SHARE, "420937487-1629951814"),
    "hazelnut": (_MYDRIVE_SHARE, "420937545-1629951845"),
    "leather": (_MYDRIVE_SHARE, "420937607-1629951964"),
    "metal_nut": (_MYDRIVE_SHARE, "420937637-1629952063"),
    "pill": ("43421/11a215a5749fcfb75e331ddd5f8e43ee", "420938129-1629953099"),
    "screw": (_MYDRIVE_SHARE, "420938130-1629953152"),
    "tile": (_MYDRIVE_SHARE, "420938133-1629953189"),
    "toothbrush": (_MYDRIVE_SHARE, "420938134-1629953256"),
    "transistor": (_MYDRIVE_SHARE, "420938166-1629953277"),
    "wood": (_MYDRIVE_SHARE, "420938383-1629953354"),
    "zipper": (_MYDRIVE_SHARE, "420938385-1629953449"),
}
MVTEC_URLS: dict[str, str] = {
    c: _MYDRIVE_URL.format(share=share, file_id=file_id, category=c) for c, (share, file_id) in _MYDRIVE_FILES.items()
}
"""Official archive URL of every category in ``MVTEC_CATEGORIES``."""

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_USER_AGENT = "inspector-dataset-download/0.1 (python urllib)"


class DownloadError(InspectorError, RuntimeError):
    """A category could not be downloaded or unpacked."""


class ChecksumError(DownloadError):
    """The downloaded archive does not have the expected SHA-256."""


class UnknownCategoryError(DownloadError, ValueError):
    """No URL is known for the category (not one of ``MVTEC_CATEGORIES`` and no ``url=`` given)."""


class UnsafeArchiveError(DownloadError):
    """The archive has a member that would land outside the destination (absolute path or ``..``)."""


def _manual_hint(category: str, root: Path) -> str:
    return (
        f"Download the {category!r} archive manually from {MVTEC_PAGE} (license {MVTEC_LICENSE}) "
        f"and unpack it so that {Path(root) / category}/train/good exists, or pass url=... "
        f"or set {URL_ENV} to a URL template with {{category}}."
    )


def resolve_url(category: str, url: str | None = None) -> str:
    """The URL ``download_category`` fetches: ``url``, else $INSPECTOR_MVTEC_URL, else the official one.

    ``url`` and the environment value may contain ``{category}``, which is replaced by the category.
    """
    template = url or os.environ.get(URL_ENV) or None
    if template:
        return template.replace("{category}", category)
    try:
        return MVTEC_URLS[category]
    except KeyError:
        raise UnknownCategoryError(
            f"{category!r} is not an MVTec AD category; expected one of {', '.join(MVTEC_CATEGORIES)} "
            f"(or pass url= for another archive)"
        ) from None


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def _fetch(url: str, out: BinaryIO, *, desc: str, progress: bool) -> str:
    """Stream ``url`` into ``out``; return the SHA-256 hex digest of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with progress_bar(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done != total:
        raise DownloadError(f"connection closed early: got {done} of {total} bytes")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# safe unpacking
# --------------------------------------------------------------------------------------------


def _safe_relpath(name: str) -> PurePosixPath | None:
    """Member name -> relative path inside the destination; raise on absolute paths or ``..``.

    Returns None for names that denote the archive root itself (``""``, ``"."``, ``"./"``).
    """
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) >= 2 and norm[1] == ":"):
        raise UnsafeArchiveError(f"archive member with an absolute path (outside the destination): {name!r}")
    parts = [p for p in PurePosixPath(norm).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member with '..' (outside the destination): {name!r}")
    return PurePosixPath(*parts) if parts else None


def _target(dest: Path, rel: PurePosixPath) -> Path:
    target = dest.joinpath(*rel.parts)
    # belt and braces: the resolved path must stay inside dest (no pre-existing links either)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"archive member would land outside the destination: {str(rel)!r}")
    return target


def _write_member(src: IO[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        shutil.copyfileobj(src, f, _CHUNK)


def _unpack_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:  # one sequential pass: cheap for .tar.xz
            rel = _safe_relpath(member.name)
            if rel is None:
                continue
            if member.isdir():
                _target(dest, rel).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() members always have data
                    continue
                with src:
                    _write_member(src, _target(dest, rel))
            else:
                log.warning("skipping archive member %r (links and special files are not unpacked)", member.name)


def _unpack_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check every name before writing anything
            _safe_relpath(info.filename)
        for info in infos:
            rel = _safe_relpath(info.filename)
            if rel is None:
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                _target(dest, rel).mkdir(parents=True, exist_ok=True)
            elif mode and not stat.S_ISREG(mode):
                log.warning("skipping archive member %r (links and special files are not unpacked)", info.filename)
            else:
                with zf.open(info) as src:
                    _write_member(src, _target(dest, rel))


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack a .tar(.xz/.gz/.bz2) or .zip archive into ``dest`` (format sniffed from the content)."""
    if zipfile.is_zipfile(archive):
        try:
            _unpack_zip(archive, dest)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DownloadError(f"corrupt archive: {exc}") from exc
        return
    try:
        is_tar = tarfile.is_tarfile(archive)
    except (OSError, EOFError, tarfile.TarError):
        is_tar = False
    if not is_tar:
        with open(archive, "rb") as f:
            head = f.read(512).lstrip().lower()
        hint = " (the server sent a web page; the link has probably expired)" if head[:1] == b"<" else ""
        raise DownloadError(f"the download is not a tar or zip archive{hint}")
    try:
        _unpack_tar(archive, dest)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as exc:
        raise DownloadError(f"corrupt archive: {exc}") from exc


def _find_category(unpacked: Path, category: str) -> Path | None:
    """The folder of the unpacked tree that holds the category.

    Accepts ``<category>/train/...`` (the official per-category archives), a single wrapping
    folder around that (e.g. the full ``mvtec_anomaly_detection/<category>/``, or the full
    archive's flat layout) and an archive whose top level is the category itself.
    """
    candidates = [unpacked / category]
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(tops) == 1:
        candidates.append(tops[0] / category)
    candidates.append(unpacked)
    if len(tops) == 1:
        candidates.append(tops[0])
    for cand in candidates:
        if (cand / "train").is_dir():
            return cand
    return None


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def download_category(
    category: str,
    root: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download one MVTec AD category and unpack it to ``root/category``; return that path.

    ``url`` overrides the archive URL (``{category}`` in it is replaced); without it the
    environment variable ``INSPECTOR_MVTEC_URL`` (a template) and then the official link in
    ``MVTEC_URLS`` are used.  ``sha256``, when given, must match the downloaded archive.

    An existing ``root/category`` is left untouched (reported in the log) and returned as is.

    Raises ``DownloadError`` (a ``RuntimeError``) when the archive cannot be fetched or unpacked,
    ``ChecksumError`` when its SHA-256 differs, ``UnsafeArchiveError`` when a member would land
    outside the destination; nothing is left behind under ``root`` in those cases.
    """
    check_category_name(category)
    root = Path(root)
    dest = root / category
    if dest.exists():
        log.warning("%s already exists; leaving it untouched (remove it to download again)", dest)
        return dest
    source = resolve_url(category, url)
    log.info("downloading MVTec AD %r from %s (license %s, see %s)", category, source, MVTEC_LICENSE, MVTEC_PAGE)

    root.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f".{category}.", suffix=".part", dir=root)
    part = Path(part_name)
    unpack_dir: Path | None = None
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                got = _fetch(source, out, desc=category, progress=progress)
        except urllib.error.HTTPError as exc:
            raise DownloadError(
                f"could not download {source}: HTTP {exc.code} {exc.reason}. {_manual_hint(category, root)}"
            ) from exc
        except urllib.error.URLError as exc:
            raise DownloadError(f"could not download {source}: {exc.reason}. {_manual_hint(category, root)}") from exc
        except DownloadError as exc:
            raise DownloadError(f"could not download {source}: {exc}. {_manual_hint(category, root)}") from exc
        except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
            raise DownloadError(f"could not download {source}: {exc}. {_manual_hint(category, root)}") from exc

        if sha256 is not None:
            expected = sha256.strip().lower()
            if got != expected:
                raise ChecksumError(
                    f"checksum mismatch for {source}: expected SHA-256 {expected}, got {got}. The download is "
                    f"corrupt or the file changed; it was deleted. {_manual_hint(category, root)}"
                )

        unpack_dir = Path(tempfile.mkdtemp(prefix=f".{category}.unpack-", dir=root))
        _unpack(part, unpack_dir)
        part.unlink()
        found = _find_category(unpack_dir, category)
        if found is None:
            raise DownloadError(
                f"the archive from {source} does not contain an MVTec AD category folder "
                f"({category}/train/...). {_manual_hint(category, root)}"
            )
        if found == unpack_dir:
            os.chmod(found, 0o755)  # mkdtemp makes it private; the category is an ordinary folder
        if dest.exists():  # appeared while we were downloading
            log.warning("%s appeared meanwhile; leaving it untouched", dest)
            return dest
        try:
            os.rename(found, dest)
        except OSError:
            if dest.exists():
                log.warning("%s appeared meanwhile; leaving it untouched", dest)
                return dest
            raise
        log.info("unpacked MVTec AD %r to %s", category, dest)
        return dest
    finally:
        part.unlink(missing_ok=True)
        if unpack_dir is not None:
            shutil.rmtree(unpack_dir, ignore_errors=True)
