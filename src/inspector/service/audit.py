"""The audit trail: every change that alters what the line is told, appended to a database of its own.

    <store>/audit.db    one row per change: time, kind, who (the key's role, and the person when named), model,
                        subject (an inspection id, a key's role), old and new value, reason

Append-only: this module has no code path that updates or deletes a row, and triggers in the database refuse
both, so no bug elsewhere can rewrite history; retention never touches this file. WAL with `synchronous=FULL`
whatever the store's setting: an entry is committed and fsynced before the change it records is acknowledged, so
it survives kill -9 and power loss. API keys are never stored: a key is recorded as a salted PBKDF2 fingerprint
(the salt is this database's own), which is enough to tell at start-up whether a key changed since the last run.
"""

from __future__ import annotations

import csv
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import SecretStr

AUDIT_DB = "audit.db"
AuditKind = Literal[
    "model_load",
    "model_reload",
    "model_unload",
    "model_shadow",
    "model_promote",
    "model_rollback",
    "calibration",
    "review_band",
    "recipe",
    "review",
    "key",
    "refit",
]
_PBKDF2_ROUNDS = 200_000  # a start-up cost of a fraction of a second; makes guessing a key from its print slow
_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    user TEXT NOT NULL,
    operator TEXT,
    model TEXT,
    subject TEXT,
    old TEXT,
    new TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_kind ON audit (kind, id);
CREATE INDEX IF NOT EXISTS audit_model ON audit (model, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
    BEGIN SELECT RAISE(ABORT, 'the audit salt never changes'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'the audit salt never changes'); END;
"""


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One change as stored; `created` is seconds since 1970, `id` grows with every append (the page cursor)."""

    id: int
    created: float
    kind: AuditKind
    user: str
    operator: str | None
    model: str | None
    subject: str | None
    old: str | None
    new: str | None
    reason: str


CSV_COLUMNS = tuple(f.name for f in fields(AuditRecord))


class AuditLog:
    """Thread-safe: one connection behind a lock; entries are rare (operator and PLC actions), reads are pages."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(root / AUDIT_DB, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            salt = secrets.token_hex(16)
            self._conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('key_salt', ?)", (salt,))
        (self._salt,) = self._conn.execute("SELECT value FROM meta WHERE name = 'key_salt'").fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def append(
        self,
        kind: AuditKind,
        *,
        user: str,
        model: str | None = None,
        subject: str | None = None,
        old: str | None = None,
        new: str | None = None,
        reason: str = "",
        operator: str | None = None,
    ) -> AuditRecord:
        """Commit one entry (fsynced) and return it; call it before the change is acknowledged."""
        created = round(time.time(), 6)
        values: dict[str, Any] = {
            "created": created,
            "kind": kind,
            "user": user,
            "operator": operator or None,
            "model": model,
            "subject": subject,
            "old": old,
            "new": new,
            "reason": reason,
        }
        with self._lock, self._conn:
            cursor = self._conn.execute(
                f"INSERT INTO audit ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
        assert cursor.lastrowid is not None
        return AuditRecord(id=cursor.lastrowid, **values)

    # ---- reading ----------------------------------------------------------------------------------------------

    def page(
        self,
        *,
        kind: AuditKind | None = None,
        model: str | None = None,
        since: float | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> tuple[list[AuditRecord], int | None]:
        """Newest first, keyset-paginated on the id, so pages stay stable while entries arrive."""
        where: list[str] = []
        args: list[Any] = []
        conditions = (("kind = ?", kind), ("model = ?", model), ("created >= ?", since), ("id < ?", cursor))
        for condition, value in conditions:
            if value is not None:
                where.append(condition)
                args.append(value)
        sql = "SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*args, limit + 1)).fetchall()
        items = [AuditRecord(**dict(r)) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)

    def iter_all(
        self, *, kind: AuditKind | None = None, model: str | None = None, since: float | None = None
    ) -> Iterator[AuditRecord]:
        """Every matching entry, newest first, page by page (for the CSV export)."""
        cursor = None
        while True:
            items, cursor = self.page(kind=kind, model=model, since=since, cursor=cursor, limit=_BATCH)
            yield from items
            if cursor is None:
                return

    def last_value(
        self, kinds: Iterable[AuditKind], *, model: str | None = None, subject: str | None = None
    ) -> str | None:
        """The `new` value of the newest entry of these kinds (for the model or subject): what the previous run
        had, for the entries made at start-up."""
        kinds = tuple(kinds)
        sql = f"SELECT new FROM audit WHERE kind IN ({', '.join('?' * len(kinds))})"
        args: list[Any] = list(kinds)
        for column, value in (("model", model), ("subject", subject)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        with self._lock:
            row = self._conn.execute(f"{sql} ORDER BY id DESC LIMIT 1", args).fetchone()
        return None if row is None else row["new"]

    # ---- keys -------------------------------------------------------------------------------------------------

    def fingerprint(self, key: SecretStr | None) -> str | None:
        """A salted PBKDF2 print of a key (16 hex digits), never the key; None for no key."""
        if key is None:
            return None
        digest = hashlib.pbkdf2_hmac("sha256", key.get_secret_value().encode(), self._salt.encode(), _PBKDF2_ROUNDS)
        return digest.hex()[:16]

    def record_key_changes(self, keys: dict[str, SecretStr | None]) -> None:
        """At start-up: one entry per role whose key differs from the last run's (set, changed or removed)."""
        for role, key in keys.items():
            old, new = self.last_value(["key"], subject=role), self.fingerprint(key)
            if old == new:
                continue
            if old is None:
                reason = "key configured; none recorded before"
            elif new is None:
                reason = "key removed since the previous run"
            else:
                reason = "key changed since the previous run"
            self.append("key", user="service", subject=role, old=old, new=new, reason=reason)


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> None:
    """The entries as CSV with a header row; times as ISO 8601 UTC, absent values as empty cells."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for record in records:
        row = asdict(record)
        row["created"] = datetime.fromtimestamp(record.created, UTC).isoformat()
        writer.writerow(_cell(row[c]) for c in CSV_COLUMNS)


def _cell(value: object) -> str:
    """A value as a CSV cell that a spreadsheet shows as text: a note or part id starting with =, +, -, @ (or a tab
    or carriage return) would otherwise run as a formula when the file is opened (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
