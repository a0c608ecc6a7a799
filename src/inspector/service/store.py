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

Only this module knows the schema. A record travels as an `InspectionRecord`; its columns are the fields the
service filters on and its `data` column holds the rest as JSON, written in the same key order as ever, so a
store written by an earlier version reads unchanged. `StoreReader` answers the operator page's counters and
score history and the export on read-only connections of its own (WAL lets them read beside the writer), so a
page load never waits behind the store's lock and the inspection path never waits behind a count.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from inspector.calibration import Verdict
from inspector.common.errors import InspectorError
from inspector.common.files import fsync_dir, write_atomic
from inspector.components.regions import Region
from inspector.features.preprocess import Preprocessing
from inspector.service.config import StoreSettings
from inspector.service.errors import Unavailable

log = logging.getLogger(__name__)

ReviewVerdict = Literal["good", "defect"]
VerdictFilter = Literal["pass", "review", "fail", "none"]

DB_FILE = "inspections.db"
FILES_DIR = "files"
MAP_SUFFIX = ".map.npy"
_BATCH = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WAL_LIMIT = 64 * 1024 * 1024  # the WAL is truncated back to this after checkpoints
VERDICTS = ("pass", "review", "fail", "none")  # "none": not judged (no valid calibration)

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
CREATE TABLE IF NOT EXISTS shadow_results (
    inspection_id TEXT NOT NULL,
    recipe TEXT NOT NULL,
    shadow_version TEXT NOT NULL,
    score REAL NOT NULL,
    normalized_score REAL,
    verdict TEXT,
    map_file TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (inspection_id, shadow_version)
);
CREATE INDEX IF NOT EXISTS shadow_results_recipe ON shadow_results (recipe, shadow_version, inspection_id);
"""


@dataclass(frozen=True, kw_only=True)
class ShadowRecord:
    """How a recipe's shadow version judged a recorded inspection (never told to the line). `map_file` is relative
    to the files folder, beside the inspection's own; `preprocessing` is the shadow's, so its map can be drawn."""

    inspection_id: str
    recipe: str
    shadow_version: str
    calibration: str | None
    score: float
    normalized_score: float | None
    verdict: Verdict | None
    pixel_threshold: float | None
    preprocessing: Preprocessing
    map_file: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ShadowRecord:
        data = json.loads(row["data"])
        return cls(
            inspection_id=row["inspection_id"],
            recipe=row["recipe"],
            shadow_version=row["shadow_version"],
            calibration=data["calibration"],
            score=row["score"],
            normalized_score=row["normalized_score"],
            verdict=row["verdict"],
            pixel_threshold=data["pixel_threshold"],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            map_file=row["map_file"],
        )


class StoreNotFound(InspectorError, FileNotFoundError):
    """No inspection store (its database file) at the given folder."""


@dataclass(frozen=True, kw_only=True)
class InspectionRecord:
    """One inspected part as stored: what was scored, how it was judged, where its files are, its review.

    `created` is seconds since 1970 to the microsecond (what the API shows and filters on); `regions` are in
    original image pixels; `preprocessing` is the resize/crop the map was made with, so the map can be drawn
    after the model changed; `image_file` and `map_file` are relative to the store's files folder.
    """

    id: str
    created: float
    model: str
    model_version: str
    calibrated: bool
    calibration: str | None
    verdict: Verdict | None
    score: float
    normalized_score: float | None
    threshold: float | None
    pixel_threshold: float | None
    regions: tuple[Region, ...]
    width: int
    height: int
    media_type: str
    preprocessing: Preprocessing
    timings_ms: dict[str, float] = field(default_factory=dict)
    part_id: str | None = None
    meas_id: str | None = None
    line: str | None = None
    camera: str | None = None
    image_file: str
    map_file: str
    bytes: int
    review_verdict: ReviewVerdict | None = None
    review_note: str | None = None
    review_operator: str | None = None
    reviewed_at: float | None = None
    image_stats: dict[str, float] | None = None  # brightness, contrast, sharpness (components.drift)
    recorded: bool = True  # False: answered while recording failed (disk full); then there is no row and no file

    def data_json(self) -> str:
        """The `data` column: every field that is not a column, in the key order earlier versions wrote (then
        the measurement id a PLC or camera gave, when there is one)."""
        return json.dumps(
            {
                "model_version": self.model_version,
                "calibrated": self.calibrated,
                "calibration": self.calibration,
                "score": self.score,
                "normalized_score": self.normalized_score,
                "threshold": self.threshold,
                "pixel_threshold": self.pixel_threshold,
                "regions": [asdict(r) for r in self.regions],
                "width": self.width,
                "height": self.height,
                "media_type": self.media_type,
                "preprocessing": self.preprocessing.to_dict(),
                "timings_ms": self.timings_ms,
                # Written only when there is one, so a record without it stores the bytes earlier versions did.
                **({"meas_id": self.meas_id} if self.meas_id is not None else {}),
                **({"image_stats": self.image_stats} if self.image_stats is not None else {}),
            }
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> InspectionRecord:
        data = json.loads(row["data"])
        return cls(
            id=row["id"],
            created=row["created"],
            model=row["model"],
            model_version=data["model_version"],
            calibrated=data["calibrated"],
            calibration=data["calibration"],
            verdict=row["verdict"],
            score=data["score"],
            normalized_score=data["normalized_score"],
            threshold=data["threshold"],
            pixel_threshold=data["pixel_threshold"],
            regions=tuple(Region(**r) for r in data["regions"]),
            width=data["width"],
            height=data["height"],
            media_type=data["media_type"],
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            timings_ms=data["timings_ms"],
            part_id=row["part_id"],
            meas_id=data.get("meas_id"),  # absent in stores written before the PLC link
            line=row["line"],
            camera=row["camera"],
            image_file=row["image_file"],
            map_file=row["map_file"],
            bytes=row["bytes"],
            review_verdict=row["review_verdict"],
            review_note=row["review_note"],
            review_operator=row["review_operator"],
            reviewed_at=row["reviewed_at"],
            image_stats=data.get("image_stats"),  # absent in stores written before drift watch
        )

    def _columns(self) -> dict[str, Any]:
        """The values of the columns an insert writes (the review columns start empty)."""
        return {
            "id": self.id,
            "created": self.created,
            "model": self.model,
            "verdict": self.verdict,
            "part_id": self.part_id,
            "line": self.line,
            "camera": self.camera,
            "image_file": self.image_file,
            "map_file": self.map_file,
            "bytes": self.bytes,
            "data": self.data_json(),
        }


@dataclass(frozen=True)
class SummaryCounts:
    """Counters for a shift or a day; see `StoreReader.summary`."""

    verdicts: dict[str, int]
    reviewed: int
    review_open: int
    recent: int


@dataclass(frozen=True)
class ScoredPart:
    """One raw image score and the operator's review of that part, if any."""

    score: float
    review: ReviewVerdict | None


@overload
def unix_time(value: datetime) -> float: ...
@overload
def unix_time(value: None) -> None: ...
@overload
def unix_time(value: datetime | None) -> float | None: ...


def unix_time(value: datetime | None) -> float | None:
    """Seconds since 1970 to the microsecond, as records store them; a time without zone is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
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


class _Records:
    """Reading records, the same for the store and its read-only reader; each says how it runs a query."""

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        raise NotImplementedError

    def get(self, record_id: str) -> InspectionRecord | None:
        rows = self._rows("SELECT * FROM inspections WHERE id=?", (record_id,))
        return InspectionRecord.from_row(rows[0]) if rows else None

    def page(
        self,
        *,
        model: str | None = None,
        verdict: VerdictFilter | None = None,
        reviewed: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[InspectionRecord], str | None]:
        """Newest first, keyset-paginated on the (time-ordered) id, so pages stay stable while records arrive.
        `verdict="none"` selects uncalibrated inspections."""
        where: list[str] = []
        args: list[Any] = []
        conditions = (("model = ?", model), ("id < ?", cursor), ("created >= ?", since), ("created < ?", until))
        for condition, value in conditions:
            if value is not None:
                where.append(condition)
                args.append(value)
        if verdict is not None:
            where.append("verdict IS NULL" if verdict == "none" else "verdict = ?")
            args += [] if verdict == "none" else [verdict]
        if reviewed is not None:
            where.append(f"review_verdict IS {'NOT ' if reviewed else ''}NULL")
        sql = "SELECT * FROM inspections" + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = self._rows(f"{sql} ORDER BY id DESC LIMIT ?", (*args, limit + 1))
        items = [InspectionRecord.from_row(r) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    def iter_all(
        self,
        *,
        model: str | None = None,
        verdict: VerdictFilter | None = None,
        reviewed: bool | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[InspectionRecord]:
        """Every matching record, page by page (for export)."""
        cursor = None
        while True:
            items, cursor = self.page(
                model=model, verdict=verdict, reviewed=reviewed, since=since, until=until, cursor=cursor, limit=_BATCH
            )
            yield from items
            if cursor is None:
                return

    def shadow_results(self, inspection_id: str) -> list[ShadowRecord]:
        """How each shadow version judged one inspection."""
        rows = self._rows("SELECT * FROM shadow_results WHERE inspection_id = ? ORDER BY rowid", (inspection_id,))
        return [ShadowRecord.from_row(r) for r in rows]

    def disagreements(
        self, recipe: str, shadow_version: str, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[tuple[InspectionRecord, ShadowRecord]], str | None]:
        """Inspections whose active and shadow verdicts differ, newest first, keyset-paginated on the id."""
        sql = (
            "SELECT s.* FROM shadow_results s JOIN inspections i ON i.id = s.inspection_id WHERE s.recipe = ? "
            "AND s.shadow_version = ? AND i.verdict IS NOT s.verdict"
        )
        args: tuple[Any, ...] = (recipe, shadow_version)
        if cursor is not None:
            sql, args = f"{sql} AND s.inspection_id < ?", (*args, cursor)
        rows = self._rows(f"{sql} ORDER BY s.inspection_id DESC LIMIT ?", (*args, limit + 1))
        pairs = []
        for row in rows[:limit]:
            record = self.get(row["inspection_id"])
            if record is not None:  # deleted by retention between the two queries
                pairs.append((record, ShadowRecord.from_row(row)))
        return pairs, (rows[limit - 1]["inspection_id"] if len(rows) > limit else None)

    def shadow_counts(self, recipe: str, shadow_version: str) -> dict[tuple[str, str], int]:
        """How many inspections got each (active verdict, shadow verdict) pair; 'none' for not judged."""
        rows = self._rows(
            "SELECT COALESCE(i.verdict, 'none'), COALESCE(s.verdict, 'none'), COUNT(*) FROM shadow_results s "
            "JOIN inspections i ON i.id = s.inspection_id WHERE s.recipe = ? AND s.shadow_version = ? GROUP BY 1, 2",
            (recipe, shadow_version),
        )
        return {(active, shadow): count for active, shadow, count in rows}


class RecordingHealth:
    """Whether inspections are being recorded: since when they are not, why, and how many went unrecorded (the
    line keeps being answered meanwhile; /readyz, /metrics and the page show this)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # the first failure of the current spell
        self.reason: str | None = None
        self.unrecorded = 0  # in the current spell
        self.total_unrecorded = 0  # since start

    def failed(self, reason: str) -> None:
        with self._lock:
            if self.since is None:
                self.since = time.time()
                log.error("inspections are not being recorded: %s", reason)
            self.reason = reason
            self.unrecorded += 1
            self.total_unrecorded += 1

    def succeeded(self) -> None:
        if self.since is None:
            return
        with self._lock:
            log.warning("recording resumed; %d inspections were answered without a record", self.unrecorded)
            self.since, self.reason, self.unrecorded = None, None, 0

    @property
    def problem(self) -> str | None:
        """One line for /readyz and the page, or None while recording works."""
        with self._lock:
            if self.since is None:
                return None
            when = time.strftime("%H:%M:%S", time.gmtime(self.since))
            return f"inspections not recorded since {when} UTC ({self.unrecorded} so far): {self.reason}"


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc)  # sqlite3: "database or disk is full"


class InspectionStore(_Records):
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
        self._bytes += self._conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM shadow_results").fetchone()[0]
        self.recording = RecordingHealth()
        newest = self._conn.execute("SELECT MAX(id) FROM inspections").fetchone()[0]
        self._last_ms = int(newest[:12], 16) if newest else 0

    def new_id(self, created: float) -> str:
        """An id for a record made at `created` that sorts after every id already issued (its time part at least
        a millisecond on), even when the clock is set back (NTP, a PLC setting the box's time): pages and the disk
        budget's oldest-first deletion follow the order of inspections, while `created` keeps the clock's word."""
        with self._lock:
            self._last_ms = max(int(created * 1000), self._last_ms + 1)
            return f"{self._last_ms:012x}{secrets.token_hex(6)}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- writing --------------------------------------------------------------------------------------------

    def check_space(self) -> None:
        """With `when_full: refuse`, refuse new work while free disk is below the floor (else it is inspected and
        not recorded, see `recording`)."""
        if self.settings.when_full == "refuse" and not self.disk_ok():
            floor = self.settings.min_free_disk_mb
            raise Unavailable(
                f"store disk has less than {floor:g} MiB free; inspections are refused", "disk_full", retry_after=60
            )

    def disk_ok(self) -> bool:
        return shutil.disk_usage(self.root).free >= self.settings.min_free_disk_mb * 1024 * 1024

    def record(
        self,
        record_id: str,
        created: float,
        image: bytes,
        image_ext: str,
        amap: np.ndarray,
        build: Callable[[StoredFiles | None], InspectionRecord],
    ) -> InspectionRecord:
        """Write the image and map (`write_files`), commit the record `build` makes of them, and return it as
        stored. When the disk is below its floor or a write finds it full (ENOSPC, EDQUOT, SQLite's "disk is
        full"), nothing of it is kept, the failure is counted in `recording`, and the record `build(None)` makes
        comes back with `recorded=False`; the next inspection tries again, so recording resumes with space."""
        if not self.disk_ok():
            self.recording.failed("free disk below store.min_free_disk_mb")
            return replace(build(None), recorded=False)
        try:
            stored = self.insert(build(self.write_files(record_id, created, image, image_ext, amap)))
        except (OSError, sqlite3.OperationalError) as exc:
            if not _disk_full(exc):
                raise
            self._discard(record_id, created)
            self.recording.failed(f"the disk is full ({exc})")
            return replace(build(None), recorded=False)
        self.recording.succeeded()
        return stored

    def _discard(self, record_id: str, created: float) -> None:
        """Remove whatever a failed write left of a record's files."""
        folder = self.files / time.strftime("%Y%m%d", time.gmtime(created))
        for path in folder.glob(f"{record_id}*"):
            path.unlink(missing_ok=True)

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

    def insert(self, record: InspectionRecord) -> InspectionRecord:
        """Commit the record (its files already written) and return it as `get` would; from here on it
        survives a crash (and power loss with `synchronous=full`)."""
        row = record._columns()
        with self._lock, self._conn:
            self._conn.execute(
                f"INSERT INTO inspections ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
            self._count += 1
            self._bytes += record.bytes
        return replace(record, review_verdict=None, review_note=None, review_operator=None, reviewed_at=None)

    def review(
        self, record_id: str, verdict: ReviewVerdict, note: str, operator: str | None
    ) -> InspectionRecord | None:
        with self._lock, self._conn:
            cur = self._conn.execute(
                "UPDATE inspections SET review_verdict=?, review_note=?, review_operator=?, reviewed_at=? WHERE id=?",
                (verdict, note, operator, time.time(), record_id),
            )
        return self.get(record_id) if cur.rowcount else None

    def shadow_map_file(self, inspection: InspectionRecord, shadow_version: str) -> str:
        """Where a shadow's map of an inspection goes: beside the inspection's files, named by its id (so
        clean-up after a crash and retention treat it with them)."""
        return f"{Path(inspection.map_file).parent}/{inspection.id}.shadow-{shadow_version}{MAP_SUFFIX}"

    def insert_shadow(self, result: ShadowRecord, amap: np.ndarray) -> bool:
        """Write the shadow's map, then its row, only while the inspection is still stored; False (and nothing
        kept) when retention deleted it meanwhile."""
        path = self.path(result.map_file)
        data = _npy_bytes(amap.astype(np.float16))
        try:
            write_atomic(path, data)
        except FileNotFoundError:  # the inspection's day folder is gone with it
            return False
        extra = {
            "calibration": result.calibration,
            "pixel_threshold": result.pixel_threshold,
            "preprocessing": result.preprocessing.to_dict(),
        }
        values = (
            result.inspection_id,
            result.recipe,
            result.shadow_version,
            result.score,
            result.normalized_score,
            result.verdict,
            result.map_file,
            len(data),
            json.dumps(extra),
        )
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR REPLACE INTO shadow_results (inspection_id, recipe, shadow_version, score, "
                "normalized_score, verdict, map_file, bytes, data) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM inspections WHERE id = ?)",
                (*values, result.inspection_id),
            )
            if cur.rowcount:
                self._bytes += len(data)
        if not cur.rowcount:
            path.unlink(missing_ok=True)
        return bool(cur.rowcount)

    # ---- reading ----------------------------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

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
        marks = ",".join("?" * len(ids))
        with self._lock, self._conn:  # a record's shadow results go with it, in the same transaction
            shadows = self._conn.execute(
                f"SELECT map_file, bytes FROM shadow_results WHERE inspection_id IN ({marks})", ids
            ).fetchall()
            self._conn.execute(f"DELETE FROM shadow_results WHERE inspection_id IN ({marks})", ids)
            self._conn.execute(f"DELETE FROM inspections WHERE id IN ({marks})", ids)
            self._count -= len(batch)
            self._bytes -= sum(b[3] for b in batch) + sum(nbytes for _, nbytes in shadows)
        for _, image_file, map_file, _ in batch:
            for name in (image_file, map_file):
                self.path(name).unlink(missing_ok=True)
        for shadow_map, _ in shadows:
            self.path(shadow_map).unlink(missing_ok=True)
        return len(batch)

    def _db_bytes(self) -> int:
        """The database file; its WAL (capped by journal_size_limit) is not counted, as deleting grows it."""
        return (self.root / DB_FILE).stat().st_size


class StoreReader(_Records):
    """Read-only queries on a store's database; every query opens a read-only connection of its own (cheap next
    to the query, safe from any thread), so it never waits behind the store's lock and can run beside a
    running service, e.g. for an export."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / FILES_DIR

    def path(self, relative: str) -> Path:
        return self.files / relative

    def summary(self, since: float, model: str | None, recent_since: float) -> SummaryCounts:
        """Inspections created at or after `since` by verdict (always all of VERDICTS) and how many of them were
        reviewed; the open review queue at any time; and how many were created at or after `recent_since`."""
        model_sql, model_args = ("AND model = ?", (model,)) if model else ("", ())
        with self._connect() as db:
            counts = dict(
                db.execute(
                    f"SELECT COALESCE(verdict, 'none'), COUNT(*) FROM inspections WHERE created >= ? "
                    f"{model_sql} GROUP BY verdict",
                    (since, *model_args),
                ).fetchall()
            )
            (reviewed,) = db.execute(
                f"SELECT COUNT(*) FROM inspections WHERE created >= ? {model_sql} AND review_verdict IS NOT NULL",
                (since, *model_args),
            ).fetchone()
            (review_open,) = db.execute(
                f"SELECT COUNT(*) FROM inspections WHERE verdict = 'review' {model_sql} AND review_verdict IS NULL",
                model_args,
            ).fetchone()
            (recent,) = db.execute(
                f"SELECT COUNT(*) FROM inspections WHERE created >= ? {model_sql}", (recent_since, *model_args)
            ).fetchone()
        return SummaryCounts({v: counts.get(v, 0) for v in VERDICTS}, reviewed, review_open, recent)

    def recent_scores(self, model: str, model_version: str, limit: int) -> list[ScoredPart]:
        """Raw scores of the newest inspections by that model version, newest first, with their reviews."""
        with self._connect() as db:
            # Only the newest `4 * limit` rows are looked at, so a fresh re-fit (no row of its version yet) cannot
            # turn this into a scan of months of records.
            rows = db.execute(
                "SELECT json_extract(data, '$.score'), review_verdict FROM (SELECT data, review_verdict FROM "
                "inspections WHERE model = ? ORDER BY id DESC LIMIT ?) WHERE json_extract(data, '$.model_version') = ? "
                "LIMIT ?",
                (model, 4 * limit, model_version, limit),
            ).fetchall()
        return [ScoredPart(score, review) for score, review in rows]

    def review_counts(self, model: str) -> dict[ReviewVerdict, int]:
        """How many of the model's inspections operators marked good and defect (what a re-fit can use)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT review_verdict, COUNT(*) FROM inspections WHERE model = ? AND review_verdict IS NOT NULL "
                "GROUP BY review_verdict",
                (model,),
            ).fetchall()
        counts = dict(rows)
        return {"good": counts.get("good", 0), "defect": counts.get("defect", 0)}

    def drift_values(
        self, model: str, model_version: str, since: float | None
    ) -> list[tuple[float, str | None, float, str | None]]:
        """(created, verdict, score, image statistics as JSON) of that model version's inspections at or after
        `since`, oldest first: what drift watch is fed, for `inspector drift`."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT created, verdict, json_extract(data, '$.score'), json_extract(data, '$.image_stats') "
                "FROM inspections WHERE model = ? AND created >= ? AND json_extract(data, '$.model_version') = ? "
                "ORDER BY id",
                (model, since if since is not None else 0.0, model_version),
            ).fetchall()
        return [(float(c), v, float(s), stats) for c, v, s, stats in rows]

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0])

    def integrity_ok(self) -> bool:
        with self._connect() as db:
            return bool(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(f"{(self.root / DB_FILE).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            yield db
        finally:
            db.close()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
