"""Every inspection is kept: one SQLite database (WAL) for the records and a folder for images and maps.

    <store>/inspections.db                    records, reviews
    <store>/files/<YYYYMMDD>/<id>.<ext>       the uploaded image, byte for byte (16-bit stays 16-bit)
    <store>/files/<YYYYMMDD>/<id>.map.npy     the anomaly map at network input size, float16

Durability: the files are written to a temporary name, fsynced, renamed and the folder fsynced; only then is
the row inserted and committed, and only after the commit is the request answered. So a crash or kill -9 at
any point leaves either a complete record or files without a row; the latter are deleted at the next start.
SQLite runs in WAL mode; with `synchronous=full` (default) a commit is fsynced and survives power loss too,
with `normal` it survives a killed process but the last commits may roll back on power loss (fewer fsyncs).

Retention: a maintenance pass deletes records older than `retention_days` and, oldest first, whatever
exceeds `max_disk_mb`; a row is deleted before its files, so a crash in between leaves only orphan files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inspector.modeldir import fsync_dir, write_atomic
from inspector.service.config import StoreSettings
from inspector.service.errors import Unavailable

log = logging.getLogger(__name__)

DB_FILE = "inspections.db"
FILES_DIR = "files"
MAP_SUFFIX = ".map.npy"
_BATCH = 500
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WAL_LIMIT = 64 * 1024 * 1024  # the WAL is truncated back to this after checkpoints

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    verdict TEXT,
    part_id TEXT,
    line TEXT,
    camera TEXT,
    image_file TEXT NOT NULL,
    map_file TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    data TEXT NOT NULL,
    review_verdict TEXT,
    review_note TEXT,
    review_operator TEXT,
    reviewed_at REAL
);
CREATE INDEX IF NOT EXISTS inspections_created ON inspections (created);
CREATE INDEX IF NOT EXISTS inspections_model ON inspections (model, id);
CREATE INDEX IF NOT EXISTS inspections_verdict ON inspections (verdict, id);
CREATE INDEX IF NOT EXISTS inspections_reviewed ON inspections (review_verdict, id) WHERE review_verdict IS NOT NULL;
"""
_COLUMNS = ("id", "created", "model", "verdict", "part_id", "line", "camera", "image_file", "map_file", "bytes",
            "data", "review_verdict", "review_note", "review_operator", "reviewed_at")  # fmt: skip


def unix_time(value: datetime | None) -> float | None:
    """Seconds since 1970 to the microsecond, as records store them; a time without zone is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return ((value - EPOCH) // timedelta(microseconds=1)) / 1e6


def new_id(now: float | None = None) -> str:
    """24 hex digits: milliseconds since 1970, then random; sorts by time, so it doubles as a page cursor."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class StoredFiles:
    image_file: str
    map_file: str
    nbytes: int


class InspectionStore:
    """Thread-safe: one SQLite connection behind a lock (records are small; fsyncs dominate, not queries)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.root = Path(settings.dir)
        self.files = self.root / FILES_DIR
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.root / DB_FILE, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={settings.synchronous.upper()}")
        self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        self._conn.executescript(_SCHEMA)
        self._conn.commit()
        self._count, self._bytes = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM inspections"
        ).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- writing --------------------------------------------------------------------------------------------

    def check_space(self) -> None:
        """Refuse new work while free disk is below the floor: a full disk would corrupt more than one record."""
        if not self.disk_ok():
            floor = self.settings.min_free_disk_mb
            raise Unavailable(
                f"store disk has less than {floor:g} MiB free; inspections are refused", "disk_full", retry_after=60
            )

    def disk_ok(self) -> bool:
        return shutil.disk_usage(self.root).free >= self.settings.min_free_disk_mb * 1024 * 1024

    def write_files(
        self, record_id: str, created: float, image: bytes, image_ext: str, amap: np.ndarray
    ) -> StoredFiles:
        """Write image and map durably (tmp + fsync + rename + folder fsync) before any row refers to them."""
        day = time.strftime("%Y%m%d", time.gmtime(created))
        folder = self.files / day
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.files)
        image_name = f"{record_id}{image_ext}"
        map_name = f"{record_id}{MAP_SUFFIX}"
        map_bytes = _npy_bytes(amap.astype(np.float16))
        write_atomic(folder / image_name, image)
        write_atomic(folder / map_name, map_bytes)
        fsync_dir(folder)
        return StoredFiles(f"{day}/{image_name}", f"{day}/{map_name}", len(image) + len(map_bytes))

    def insert(self, record: dict[str, Any], files: StoredFiles) -> dict[str, Any]:
        """Commit the record and return it as `get` would; from here on it survives a crash (and power loss
        with `synchronous=full`)."""
        row = {
            "id": record["id"], "created": record["created"], "model": record["model"], "verdict": record["verdict"],
            "part_id": record.get("part_id"), "line": record.get("line"), "camera": record.get("camera"),
            "image_file": files.image_file, "map_file": files.map_file, "bytes": files.nbytes,
            "data": json.dumps({k: v for k, v in record.items() if k not in _COLUMNS}),
        }  # fmt: skip
        with self._lock, self._conn:
            self._conn.execute(
                f"INSERT INTO inspections ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
            self._count += 1
            self._bytes += files.nbytes
        return _record({**dict.fromkeys(_COLUMNS), **row})

    def review(self, record_id: str, verdict: str, note: str, operator: str | None) -> dict[str, Any] | None:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "UPDATE inspections SET review_verdict=?, review_note=?, review_operator=?, reviewed_at=? WHERE id=?",
                (verdict, note, operator, time.time(), record_id),
            )
        return self.get(record_id) if cur.rowcount else None

    # ---- reading ----------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM inspections WHERE id=?", (record_id,)).fetchone()
        return _record(row) if row else None

    def list(
        self,
        *,
        model: str | None = None,
        verdict: str | None = None,
        reviewed: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, keyset-paginated on the (time-ordered) id, so pages stay stable while records arrive.
        `verdict="none"` selects uncalibrated inspections."""
        where, args = [], []
        for condition, value in (("model = ?", model), ("id < ?", cursor), ("created >= ?", since),
                                 ("created < ?", until)):  # fmt: skip
            if value is not None:
                where.append(condition)
                args.append(value)
        if verdict is not None:
            where.append("verdict IS NULL" if verdict == "none" else "verdict = ?")
            args += [] if verdict == "none" else [verdict]
        if reviewed is not None:
            where.append(f"review_verdict IS {'NOT ' if reviewed else ''}NULL")
        sql = "SELECT * FROM inspections" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        items = [_record(r) for r in rows[:limit]]
        return items, (items[-1]["id"] if len(rows) > limit else None)

    def iter_all(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching record, page by page (for export)."""
        cursor = None
        while True:
            items, cursor = self.list(**filters, cursor=cursor, limit=_BATCH)
            yield from items
            if cursor is None:
                return

    def path(self, relative: str) -> Path:
        return self.files / relative

    def stats(self) -> tuple[int, int]:
        """(records, bytes of image and map files)."""
        return self._count, self._bytes

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # ---- maintenance ------------------------------------------------------------------------------------------

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete records past `retention_days`, then oldest first while over `max_disk_mb`; returns how many."""
        now = time.time() if now is None else now
        s = self.settings
        deleted = 0
        if s.retention_days is not None:
            spare = " AND review_verdict IS NULL" if s.keep_reviewed else ""
            cutoff = now - s.retention_days * 86400
            while batch := self._select(f"created < ?{spare} ORDER BY id", (cutoff,)):
                deleted += self._delete(batch)
        if s.max_disk_mb is not None:
            budget = s.max_disk_mb * 1024 * 1024
            while (excess := self._bytes + self._db_bytes() - budget) > 0:
                batch = self._select("1 ORDER BY review_verdict IS NOT NULL, id", ())
                if not batch:
                    break
                running = np.cumsum([b for _, _, _, b in batch])
                deleted += self._delete(batch[: int(np.searchsorted(running, excess)) + 1])
        return deleted

    def cleanup_orphans(self) -> int:
        """Delete files no row refers to: left by a crash between writing the files and committing the row."""
        removed = 0
        for folder in sorted(p for p in self.files.iterdir() if p.is_dir()):
            names = os.listdir(folder)
            ids = sorted({n.split(".")[0] for n in names if not n.startswith(".")})
            known: set[str] = set()
            with self._lock:
                for i in range(0, len(ids), _BATCH):
                    chunk = ids[i : i + _BATCH]
                    sql = f"SELECT id FROM inspections WHERE id IN ({','.join('?' * len(chunk))})"
                    known.update(r[0] for r in self._conn.execute(sql, chunk))
            for name in names:
                if name.startswith(".") or name.split(".")[0] not in known:
                    (folder / name).unlink(missing_ok=True)
                    removed += 1
            if not os.listdir(folder):
                folder.rmdir()
        return removed

    def _select(self, condition: str, args: tuple[Any, ...]) -> list[tuple[str, str, str, int]]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, image_file, map_file, bytes FROM inspections WHERE {condition} LIMIT {_BATCH}", args
            ).fetchall()
        return [tuple(r) for r in rows]

    def _delete(self, batch: list[tuple[str, str, str, int]]) -> int:
        ids = [b[0] for b in batch]
        with self._lock, self._conn:
            self._conn.execute(f"DELETE FROM inspections WHERE id IN ({','.join('?' * len(ids))})", ids)
            self._count -= len(batch)
            self._bytes -= sum(b[3] for b in batch)
        for _, image_file, map_file, _ in batch:
            for name in (image_file, map_file):
                self.path(name).unlink(missing_ok=True)
        return len(batch)

    def _db_bytes(self) -> int:
        """The database file; its WAL (capped by journal_size_limit) is not counted, as deleting grows it."""
        return (self.root / DB_FILE).stat().st_size


def _record(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    record = {k: row[k] for k in _COLUMNS if k != "data"}
    record.update(json.loads(row["data"]))
    return record


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
