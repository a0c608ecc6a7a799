"""Reviewed inspections -> an MVTec-style data set, to re-fit (operator-confirmed good parts) and to calibrate.

    <out>/<model>/train/good/<id>.<ext>     reviewed `good` (by default; `good_split="test"` puts them in test/good)
    <out>/<model>/test/defect/<id>.<ext>    reviewed `defect`
    <out>/<model>/reviews.csv               id, time, part, scores, machine and operator verdicts, note

Only operator verdicts are labels; machine verdicts never are, so unreviewed records are not exported. The
images are the uploaded bytes, so `inspector fit --data-root <out> --category <model>` reads them as sent.
Reads the store through its read-only `StoreReader`, so it can run while the service does and never writes
to the store.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from inspector.service.store import DB_FILE, InspectionRecord, StoreNotFound, StoreReader, unix_time

CSV_COLUMNS = (
    "id",
    "created",
    "model",
    "part_id",
    "line",
    "camera",
    "score",
    "normalized_score",
    "verdict",
    "review_verdict",
    "review_note",
    "review_operator",
    "file",
)


def export_reviewed(
    store_dir: Path,
    out: Path,
    model: str | None = None,
    since: datetime | None = None,
    good_split: Literal["train", "test"] = "train",
) -> dict[str, int]:
    """Copy reviewed images into `out`; returns counts per `<model>/<split>/<type>`. Re-running brings `out` up
    to date (new reviews added, changed ones moved)."""
    if not (Path(store_dir) / DB_FILE).is_file():
        raise StoreNotFound(f"no inspection store at {store_dir} ({DB_FILE} missing)")
    store = StoreReader(Path(store_dir))
    counts: dict[str, int] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for record in _reviewed(store, model, since):
        folder = f"{good_split}/good" if record.review_verdict == "good" else "test/defect"
        source = store.path(record.image_file)
        if not source.is_file():
            continue  # deleted by retention meanwhile
        category = Path(out) / record.model
        for other in {"train/good", "test/good", "test/defect"} - {folder}:  # the review may have changed
            (category / other / source.name).unlink(missing_ok=True)
        target = category / folder / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        key = f"{record.model}/{folder}"
        counts[key] = counts.get(key, 0) + 1
        row: dict[str, Any] = {k: getattr(record, k, None) for k in CSV_COLUMNS}
        row["created"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")
        row["file"] = f"{folder}/{source.name}"
        rows.setdefault(record.model, []).append(row)
    for name, model_rows in rows.items():
        with open(Path(out) / name / "reviews.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(model_rows)
    return counts


def _reviewed(store: StoreReader, model: str | None, since: datetime | None) -> Iterator[InspectionRecord]:
    return store.iter_all(model=model, reviewed=True, since=unix_time(since))
