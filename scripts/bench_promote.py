"""Promotion and rollback under load: the numbers behind "Shadow and promote" in docs/benchmarks.md.

A real `inspector serve` on loopback serves one recipe (version 1 active, version 2 in shadow) while an open-loop
camera posts images at a fixed rate; every `--swap-every` seconds an operator promotes or rolls back. Each answer
is then checked against what each version gives that image, scored beforehand in this process with the same
model directories: an answer must be wholly one version's (version label, calibration, score and verdict), never
a mix, and every request sent after a swap was acknowledged must be answered by the new version. The generator
shares the cores with the service: the load average is reported with the numbers.

    python scripts/bench_promote.py --v1 /tmp/promote-bench/v1 --v2 /tmp/promote-bench/v2 --rate 10 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    free_port,
    load_average,
    machine_info,
    start_service,
    stop_service,
    write_json,
)
from inspector.calibration import load_active_calibration
from inspector.calibration.store import model_fingerprint
from inspector.data.io import read_image
from inspector.models.scoring import load_scorer

DEFAULT_IMAGES = str(DEFAULT_DATA_ROOT / "magnetic_tile" / "test" / "*" / "*.jpg")
CAMERA, OPERATOR = "bench-camera", "bench-operator"
RECIPE = "tile"
SCORE_TOLERANCE = 1e-4  # relative: the service and this process run the same network and index


@dataclass
class Answer:
    image: int
    sent: float  # seconds from the start of the run
    status: str
    latency_ms: float
    version: str | None = None
    calibration: str | None = None
    score: float | None = None
    verdict: str | None = None


@dataclass
class Swap:
    action: str
    sent: float
    acked: float
    status: int
    detail: str


def reference(model_dir: Path, images: list[Path]) -> dict[str, Any]:
    """What one version answers for each image: its version label, calibration, scores and verdicts."""
    scorer = load_scorer(model_dir, threads=2)
    calibration = load_active_calibration(model_dir)
    if calibration is None:
        raise SystemExit(f"{model_dir} has no calibration: run `inspector calibrate` on it first")
    scores = [float(scorer.score([read_image(p)]).scores[0]) for p in images]
    return {
        "version": model_fingerprint(model_dir)[:12],
        "calibration": calibration.name,
        "scores": scores,
        "verdicts": [calibration.verdict(s) for s in scores],
    }


def start_server(models: Path, store: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "inspector", "serve", "--models-dir", str(models), "--store-dir", str(store)]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "INSPECTOR_OFFLINE": "1", "INSPECTOR_CAMERA_KEY": CAMERA, "INSPECTOR_OPERATOR_KEY": OPERATOR}
    return start_service(cmd, store.parent / "server.log", f"http://127.0.0.1:{port}", env)


async def run(url: str, images: list[bytes], args: argparse.Namespace) -> tuple[list[Answer], list[Swap]]:
    answers: list[Answer] = []
    swaps: list[Swap] = []
    n = int(args.rate * args.duration)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits, headers={"X-API-Key": CAMERA}) as camera,
        httpx.AsyncClient(base_url=url, timeout=120, headers={"X-API-Key": OPERATOR}) as operator,
    ):
        start = time.perf_counter()

        async def one(i: int) -> None:
            scheduled = start + i / args.rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            k = i % len(images)
            try:
                files = {"image": (f"{k}.jpg", images[k], "image/jpeg")}
                r = await camera.post("/v1/inspect", files=files, params={"model": RECIPE})
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            answer = Answer(k, scheduled - start, status, (time.perf_counter() - scheduled) * 1e3)
            if status == "200":
                body = r.json()
                answer.version, answer.calibration = body["model_version"], body["calibration"]
                answer.score, answer.verdict = body["score"], body["verdict"]
            answers.append(answer)

        async def operate() -> None:
            """Promote, roll back, load the candidate in shadow again, promote, ... every `swap_every` s."""
            t = args.swap_every
            action = "promote"
            while args.swap_every > 0 and t < args.duration - args.swap_every / 2:
                await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
                sent = time.perf_counter() - start
                r = await operator.post(f"/v1/models/{RECIPE}/{action}", json={"reason": f"bench {action}"})
                swaps.append(Swap(action, sent, time.perf_counter() - start, r.status_code, r.text[:300]))
                if action == "rollback":  # the candidate scores in shadow again, ready for the next promotion
                    shadow = await operator.put(f"/v1/models/{RECIPE}/shadow", json={"dir": f"{RECIPE}.versions/v2"})
                    shadow.raise_for_status()
                action = "rollback" if action == "promote" else "promote"
                t += args.swap_every

        await asyncio.gather(operate(), *(one(i) for i in range(n)))
    return answers, swaps


def check(answers: list[Answer], swaps: list[Swap], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mixed answers (not wholly one version's) and stale ones: answered by a version that could not be active at
    any moment between the request's sending and its answer (a swap takes effect somewhere between its request
    and its acknowledgement; so a request sent after a swap's acknowledgement must get the new version)."""
    by_version = {r["version"]: r for r in refs}
    mixed, stale, counts = [], [], dict.fromkeys(by_version, 0)
    timeline = []  # (swap sent, swap acknowledged, the version active from then on), in order
    active = refs[0]["version"]
    for s in sorted((s for s in swaps if s.status == 200), key=lambda s: s.sent):
        active = refs[1]["version"] if active == refs[0]["version"] else refs[0]["version"]
        timeline.append((s.sent, s.acked, active))
    for a in answers:
        if a.status != "200":
            continue
        ref = by_version.get(a.version or "")
        if ref is None:
            mixed.append(f"image {a.image}: unknown version {a.version}")
            continue
        counts[a.version or ""] += 1
        expected = ref["scores"][a.image]
        if (
            abs((a.score or 0.0) - expected) > SCORE_TOLERANCE * abs(expected)
            or a.calibration != ref["calibration"]
            or a.verdict != ref["verdicts"][a.image]
        ):
            mixed.append(f"image {a.image}: version {a.version} with {a.calibration}, score {a.score}, {a.verdict}")
        answered = a.sent + a.latency_ms / 1e3
        possible = {([refs[0]["version"]] + [v for _, acked, v in timeline if acked <= a.sent])[-1]}
        possible |= {v for sent, acked, v in timeline if acked > a.sent and sent < answered}
        if a.version not in possible:
            stale.append(f"image {a.image} sent at {a.sent:.2f} s answered by {a.version}")
    return {"answers_by_version": counts, "mixed": len(mixed), "stale": len(stale), "examples": (mixed + stale)[:5]}


def failures_near_swaps(answers: list[Answer], swaps: list[Swap], window_s: float = 2.0) -> int:
    """Refused or failed requests sent within `window_s` after a swap was sent (the rest are the machine's load)."""
    return sum(a.status != "200" and any(0 <= a.sent - s.sent < window_s for s in swaps) for a in answers)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--v1", type=Path, required=True, help="calibrated model directory serving first")
    p.add_argument("--v2", type=Path, required=True, help="calibrated model directory of the candidate")
    p.add_argument("--images", default=DEFAULT_IMAGES, help="glob of images to post")
    p.add_argument("--n-images", type=int, default=40, help="distinct images, spread over the glob's matches")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument(
        "--swap-every", type=float, default=6.0, help="seconds between promotions and rollbacks (0: none, a baseline)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench_promote.json"))
    args = p.parse_args()

    paths = sorted(Path(p) for p in glob.glob(args.images))
    paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(args.n_images, len(paths)))]
    print(f"scoring {len(paths)} images with both versions for the reference ...", flush=True)
    refs = [reference(args.v1, paths), reference(args.v2, paths)]
    if refs[0]["version"] == refs[1]["version"]:
        raise SystemExit("the two model directories are the same version")
    pairs = zip(refs[0]["scores"], refs[1]["scores"], strict=True)
    distinct = sum(abs(a - b) > 10 * SCORE_TOLERANCE * abs(a) for a, b in pairs)

    work = Path(tempfile.mkdtemp(prefix="inspector-promote-"))
    models = work / "models"
    shutil.copytree(args.v1, models / RECIPE)
    shutil.copytree(args.v2, models / f"{RECIPE}.versions" / "v2")
    port = free_port()
    load_before = load_average()
    server = start_server(models, work / "store", port)
    url = f"http://127.0.0.1:{port}"
    try:
        headers = {"X-API-Key": OPERATOR}
        httpx.put(
            f"{url}/v1/models/{RECIPE}/shadow", json={"dir": f"{RECIPE}.versions/v2"}, headers=headers, timeout=120
        ).raise_for_status()
        images = [p.read_bytes() for p in paths]
        print(f"{args.rate}/s for {args.duration} s, a swap every {args.swap_every} s ...", flush=True)
        answers, swaps = asyncio.run(run(url, images, args))
        load_after = load_average()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        audit = httpx.get(f"{url}/v1/audit", params={"limit": 200}, headers=headers, timeout=10).json()["items"]
    finally:
        stop_service(server)
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    latencies = np.array([a.latency_ms for a in answers if a.status == "200"])
    near = np.array(
        [a.latency_ms for a in answers if a.status == "200" and any(0 <= a.sent - s.sent < 2.0 for s in swaps)]
    )
    result = {
        "machine": machine_info(("onnxruntime", "faiss-cpu")),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": [{k: r[k] for k in ("version", "calibration")} for r in refs],
        "images_whose_scores_differ_between_versions": f"{distinct} of {len(paths)}",
        "sent": len(answers),
        "statuses": statuses,
        "failed": len(answers) - statuses.get("200", 0),
        "failed_within_2s_after_a_swap": failures_near_swaps(answers, swaps),
        **check(answers, swaps, refs),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "p99_within_2s_after_a_swap_ms": round(float(np.percentile(near, 99)), 1) if len(near) else None,
        "swaps": [
            {"action": s.action, "at_s": round(s.sent, 2), "ms": round((s.acked - s.sent) * 1e3, 1), "status": s.status}
            for s in swaps
        ],
        "swap_failures": [s.detail for s in swaps if s.status != 200],
        "audit_entries": {k: sum(e["kind"] == k for e in audit) for k in ("model_promote", "model_rollback")},
        "shadow_scored": metric(metrics, "inspector_shadow_inspections_total"),
        "shadow_skipped": metric(metrics, "inspector_shadow_skipped_total"),
    }
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k not in ("machine", "args")})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
