"""Drift watch on real images: how soon a lighting change raises the alarm, and whether a stable stream stays quiet.

The stream is magnetic_tile test/good (190 images; Huang et al. 2018), drawn as shuffled passes over the folder,
each pass with its own seed (pass p of run r uses seed 1000 * r + p), because the folder holds fewer images than
the stream needs. Every image goes through what the service does per inspection: the model's score (the scorer
of the model directory, torch-free), its verdict under the active calibration, and the image statistics; the
monitor is the service's (`DriftMonitor` with the reference `recipe_reference` builds from the model directory:
image statistics of the training images written at fit, pass scores of the calibration's held-out good images).

- stable: `--stable` (1,000) unshifted images per run, `--runs` runs; alarms raised are counted. With
  `--with-replacement` the images are drawn independently (seed r for run r) instead: windows then vary as much
  as on a line, where shuffled passes make every window of 50 a near-even spread of the folder.
- shifted: `--shift-at` (200) unshifted images, then every image shifted (a gain on all channels, or an offset in
  grey levels, clipped to 0..255 and rounded), for `--after` images, then `--recover` unshifted ones again; the
  delay is the number of shifted images fed until the alarm rose (none: not within `--after`), the clearing
  delay the number of unshifted images after the shift until it cleared.

Scores and statistics of every (image, shift) pair are cached in `--cache`, so a rerun only replays the streams.

    python scripts/bench_drift.py --model-dir /tmp/drift-bench/model --json /tmp/bench_drift.json

The model directory used for docs/benchmarks.md: fitted on 562 of the 762 training images (seed-0 shuffle),
calibrated (`normal`, target FPR 0.01) on the other 200; see that section for the commands.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, load_average, machine_info, markdown_table
from inspector.components.drift import DriftMonitor, image_statistics
from inspector.data.io import read_image
from inspector.data.mvtec import list_images
from inspector.models.scoring import load_scorer
from inspector.service.drift import monitored_values, recipe_reference
from inspector.service.registry import read_calibration

SHIFTS = ("none", "offset:30", "gain:1.25", "offset:20", "gain:1.15", "offset:10", "gain:1.05", "offset:5")


def shifted(rgb: np.ndarray, shift: str) -> np.ndarray:
    if shift == "none":
        return rgb
    kind, amount = shift.split(":")
    value = rgb.astype(np.float32) * float(amount) if kind == "gain" else rgb.astype(np.float32) + float(amount)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)


def measure(model_dir: Path, images: list[np.ndarray], shifts: tuple[str, ...], cache: Path) -> dict[str, np.ndarray]:
    """shift -> (N, 4) array of score, brightness, contrast, sharpness, from the cache where it has them."""
    found: dict[str, np.ndarray] = dict(np.load(cache)) if cache.is_file() else {}
    missing = [s for s in shifts if s not in found or len(found[s]) != len(images)]
    if missing:
        scorer = load_scorer(model_dir, threads=2)
        for shift in missing:
            start = time.perf_counter()
            rows = []
            for i in range(0, len(images), 8):
                batch = [shifted(rgb, shift) for rgb in images[i : i + 8]]
                scores = scorer.score(batch).scores
                for rgb, score in zip(batch, scores, strict=True):
                    s = image_statistics(rgb)
                    rows.append([float(score), s["brightness"], s["contrast"], s["sharpness"]])
            found[shift] = np.array(rows)
            print(f"scored {shift}: {len(rows)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr)
        np.savez(cache, **found)
    return found


def stream_order(n_images: int, length: int, run: int) -> list[int]:
    """Indices of `length` images: shuffled passes over the folder, pass p of run r with seed 1000 r + p."""
    order: list[int] = []
    p = 0
    while len(order) < length:
        order += list(np.random.default_rng(1000 * run + p).permutation(n_images))
        p += 1
    return order[:length]


def replay(reference, calibration, rows: list[np.ndarray]) -> tuple[DriftMonitor, list[int], list[int]]:
    """Feed the rows through a fresh monitor; returns it and the stream positions where the alarm rose, and
    where it cleared."""
    monitor = DriftMonitor(reference)
    risen: list[int] = []
    cleared: list[int] = []
    for position, (score, brightness, contrast, sharpness) in enumerate(rows):
        verdict = calibration.verdict(score) if calibration is not None else None
        values = monitored_values(
            verdict, float(score), {"brightness": brightness, "contrast": contrast, "sharpness": sharpness}
        )
        before, was_on = monitor.raised, monitor.alarm
        monitor.observe(values, float(position))
        if monitor.raised > before:
            risen.append(position)
        if was_on and not monitor.alarm:
            cleared.append(position)
    return monitor, risen, cleared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--runs", type=int, default=10, help="streams per case, each with its own seeds")
    parser.add_argument("--stable", type=int, default=1000)
    parser.add_argument("--shift-at", type=int, default=200)
    parser.add_argument("--after", type=int, default=100, help="shifted images fed")
    parser.add_argument("--recover", type=int, default=300, help="unshifted images fed after the shifted ones")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/inspector-bench-drift-cache.npz"))
    parser.add_argument("--with-replacement", action="store_true", help="stable streams drawn with replacement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    load_before = load_average()
    paths = list_images(args.data_root / args.category / "test" / "good")
    images = [read_image(p) for p in paths]
    measured = measure(args.model_dir, images, SHIFTS, args.cache)
    calibration, _ = read_calibration(args.model_dir)
    reference = recipe_reference(args.model_dir, calibration)
    assert reference is not None
    sources = reference.sources

    big = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    image_statistics(big)
    calls = []
    for _ in range(1000):
        start = time.perf_counter()
        image_statistics(big)
        calls.append((time.perf_counter() - start) * 1e3)
    stats_ms = {"median": round(statistics.median(calls), 4), "best": round(min(calls), 4)}

    stable = []
    observe_ms = []
    for run in range(args.runs):
        rows = [measured["none"][i] for i in stream_order(len(images), args.stable, run)]
        if args.with_replacement:  # independent draws: windows as varied as on a line that never repeats a part
            rows = [measured["none"][i] for i in np.random.default_rng(run).integers(0, len(images), args.stable)]
        start = time.perf_counter()
        monitor, risen, _ = replay(reference, calibration, rows)
        observe_ms.append((time.perf_counter() - start) / len(rows) * 1e3)
        snap = monitor.snapshot()["statistics"]
        stable.append(
            {"run": run, "alarms": len(risen), "at": risen, "final_psi": {k: v["psi"] for k, v in snap.items()}}
        )

    shifted_results = {}
    for shift in SHIFTS[1:]:
        delays: list[int | None] = []
        clears: list[int | None] = []
        false_before = 0
        end = args.shift_at + args.after
        for run in range(args.runs):
            order = stream_order(len(images), end + args.recover, run)
            rows = [measured[shift if args.shift_at <= k < end else "none"][i] for k, i in enumerate(order)]
            _, risen, cleared = replay(reference, calibration, rows)
            false_before += sum(1 for r in risen if r < args.shift_at)
            after = [r - args.shift_at + 1 for r in risen if args.shift_at <= r < end]
            delays.append(after[0] if after else None)
            back = [c - end + 1 for c in cleared if c >= end]
            clears.append(back[0] if back and after else None)
        found = [d for d in delays if d is not None]
        shifted_results[shift] = {
            "delays": delays,
            "detected": len(found),
            "within_50": sum(1 for d in found if d <= 50),
            "median": statistics.median(found) if found else None,
            "max": max(found) if found else None,
            "alarms_before_shift": false_before,
            "clear_delays": clears,
            "clear_median": statistics.median([c for c in clears if c is not None]) if any(clears) else None,
            "clear_max": max((c for c in clears if c is not None), default=None),
            "mean_shift": {
                name: round(float(measured[shift][:, j].mean() / measured["none"][:, j].mean()), 4)
                for j, name in enumerate(("score", "brightness", "contrast", "sharpness"))
            },
        }

    result = {
        "machine": machine_info(("onnxruntime", "faiss-cpu", "numpy")),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "model_dir": str(args.model_dir),
        "reference_sources": sources,
        "test_good_images": len(images),
        "image_statistics_ms_800x800": stats_ms,
        "monitor_observe_ms": round(statistics.median(observe_ms), 4),
        "rule": DriftMonitor(reference).snapshot()["rule"],
        "stable": stable,
        "shifted": shifted_results,
    }
    print(
        markdown_table(
            [
                "case",
                "runs",
                "alarms raised",
                "within 50",
                "median delay",
                "max delay",
                "early alarms",
                "cleared after",
            ],
            [
                [f"stable, {args.stable} images", args.runs, sum(s["alarms"] for s in stable), "", "", "", "", ""],
                *[
                    [
                        f"{shift} from image {args.shift_at}",
                        args.runs,
                        r["detected"],
                        r["within_50"],
                        r["median"],
                        r["max"],
                        r["alarms_before_shift"],
                        f"{r['clear_median']} (max {r['clear_max']})",
                    ]
                    for shift, r in shifted_results.items()
                ],
            ],
        )
    )
    print(f"image statistics on 800x800, ms: {stats_ms}; monitor observe: {result['monitor_observe_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
