"""Open-loop load test of `inspector serve` on loopback: the numbers behind docs/benchmarks.md.

Requests are sent at a constant arrival rate whatever the server does (a line camera does not wait for the
previous part), and latency is measured from each request's scheduled time, so a slow server cannot hide
its queueing by slowing the generator down. Bounded in count, time and outstanding requests; loopback only.
The generator runs on the same machine, so it shares the cores with the service: say so with the numbers.

    # start a server itself (recommended: kill mode needs it) ...
    python scripts/load_test.py rate --rate 4 --duration 60 --model-dir /tmp/models/magnetic_tile
    python scripts/load_test.py search --start 6 --step 2 --step-duration 20 --model-dir /tmp/models/magnetic_tile
    python scripts/load_test.py overload --rate 10 --factor 3 --model-dir /tmp/models/magnetic_tile
    python scripts/load_test.py kill --rate 8 --duration 20 --model-dir /tmp/models/magnetic_tile
    # ... or test one that runs already
    python scripts/load_test.py rate --rate 4 --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, free_port, start_service, stop_service
from inspector.service.store import StoreReader

DEFAULT_IMAGES = str(DEFAULT_DATA_ROOT / "magnetic_tile" / "test" / "*" / "*.jpg")
MAX_OUTSTANDING = 512


@dataclass
class Result:
    rate: float
    duration: float
    latencies_ms: list[float] = field(default_factory=list)
    server_total_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        srv = np.array(self.server_total_ms) if self.server_total_ms else np.array([np.nan])
        sent = sum(self.statuses.values())
        return {
            "target_rate": self.rate,
            "duration_s": self.duration,
            "sent": sent,
            "achieved_rate_200": round(self.statuses.get("200", 0) / self.elapsed, 2) if self.elapsed else 0.0,
            "status_counts": dict(sorted(self.statuses.items())),
            "p50_ms": _r(np.percentile(lat, 50)),
            "p95_ms": _r(np.percentile(lat, 95)),
            "p99_ms": _r(np.percentile(lat, 99)),
            "max_ms": _r(lat.max()),
            "server_total_p50_ms": _r(np.percentile(srv, 50)),
            "server_total_p99_ms": _r(np.percentile(srv, 99)),
        }


def _r(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 1)


async def run_load(
    url: str, images: list[bytes], rate: float, duration: float, key: str | None, timeout: float = 10.0
) -> Result:
    """Send `rate` x `duration` requests on a fixed schedule; collect statuses and latencies of the 200s."""
    result = Result(rate, duration)
    n = int(rate * duration)
    headers = {"X-API-Key": key} if key else {}
    limits = httpx.Limits(max_connections=MAX_OUTSTANDING, max_keepalive_connections=64)
    outstanding = asyncio.Semaphore(MAX_OUTSTANDING)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as client:
        start = time.perf_counter()

        async def one(i: int) -> None:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            async with outstanding:
                try:
                    files = {"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}
                    r = await client.post("/v1/inspect", files=files)
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == "200":
                result.latencies_ms.append((time.perf_counter() - scheduled) * 1e3)
                body = r.json()
                result.server_total_ms.append(body["timings_ms"]["total"])
                result.acked.append(body["id"])

        await asyncio.gather(*(one(i) for i in range(n)))
        result.elapsed = time.perf_counter() - start
    return result


# ---- server management --------------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, store: Path, port: int, extra: Sequence[str] = ()) -> subprocess.Popen:
    """`inspector serve` on loopback with the model, store and flags of `args` (and `extra` flags), once ready."""
    cmd = [
        sys.executable,
        "-m",
        "inspector",
        "serve",
        "--model-dir",
        str(args.model_dir),
        "--store-dir",
        str(store),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    for flag in ("workers", "threads", "queue_size"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += extra
    env = {**os.environ, "INSPECTOR_OFFLINE": "1"}
    return start_service(cmd, store.parent / f"server-{port}.log", f"http://127.0.0.1:{port}", env)


@contextmanager
def server_for(args: argparse.Namespace):
    """Yield the URL to test: --url as given (loopback only), or a server started from --model-dir."""
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("this load generator only targets loopback")
        yield args.url, None
        return
    if not args.model_dir:
        raise SystemExit("give --url of a running service or --model-dir to start one")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="inspector-load-"))
    work.mkdir(parents=True, exist_ok=True)
    store, port = work / "store", free_port()
    server = start_server(args, store, port)
    try:
        yield f"http://127.0.0.1:{port}", (server, store, port)
    finally:
        if server.poll() is None:
            stop_service(server)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), to report what the server used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- modes ----------------------------------------------------------------------------------------------------------


def measure(
    url: str, images: list[bytes], rate: float, duration: float, args: argparse.Namespace, server: Any = None
) -> dict[str, Any]:
    cpu0 = cpu_seconds(server[0].pid) if server else None
    own0 = time.process_time()
    result = asyncio.run(run_load(url, images, rate, duration, args.key))
    out = result.summary()
    out["generator_cpu_s"] = round(time.process_time() - own0, 1)
    if server:
        out["server_cpu_s"] = round(cpu_seconds(server[0].pid) - cpu0, 1)
    print(json.dumps(out), flush=True)
    return out


def mode_search(url: str, images: list[bytes], args: argparse.Namespace, server: Any) -> None:
    """Raise the rate step by step; the last rate with p99 under the bar and no errors is the sustained max."""
    best = None
    rate = args.start
    while rate <= args.max_rate:
        out = measure(url, images, rate, args.step_duration, args, server)
        ok = out["p99_ms"] is not None and out["p99_ms"] < args.p99_ms and out["status_counts"] == {"200": out["sent"]}
        if not ok:
            break
        best = rate
        rate += args.step
        time.sleep(2)  # let the queue drain between steps
    print(json.dumps({"max_sustained_rate": best, "p99_bar_ms": args.p99_ms}))


def mode_kill(images: list[bytes], args: argparse.Namespace) -> None:
    """kill -9 the server mid-load, restart it on the same store, and look up every acknowledged inspection."""
    if args.url or not args.model_dir:
        raise SystemExit("kill mode starts its own server: give --model-dir, not --url")
    with server_for(args) as (url, (server, store, port)):

        async def load_then_kill() -> Result:
            task = asyncio.create_task(run_load(url, images, args.rate, args.duration, args.key))
            await asyncio.sleep(args.duration / 2)
            server.send_signal(signal.SIGKILL)
            return await task

        result = asyncio.run(load_then_kill())
        server.wait(10)
        print(json.dumps({"before_kill": result.summary()}))
        restarted = start_server(args, store, port)
        try:
            with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": args.key} if args.key else {}) as c:
                missing = [i for i in result.acked if c.get(f"/v1/inspections/{i}").status_code != 200]
        finally:
            restarted.send_signal(signal.SIGINT)
            restarted.wait(30)
        reader = StoreReader(store)  # read-only: the check changes nothing in the store it checks
        integrity, rows = "ok" if reader.integrity_ok() else "failed", reader.count()
        print(
            json.dumps(
                {
                    "acknowledged": len(result.acked),
                    "missing_after_restart": len(missing),
                    "rows_in_store": rows,
                    "integrity_check": integrity,
                }
            )
        )
        if missing or integrity != "ok":
            raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rate", "search", "overload", "kill"])
    parser.add_argument("--url", help="a running service on loopback (default: start one from --model-dir)")
    parser.add_argument("--model-dir", type=Path, help="model to serve when the script starts the service")
    parser.add_argument("--work-dir", help="store and server log of a started service (default: a temp dir)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--queue-size", type=int)
    parser.add_argument("--key", default=os.environ.get("INSPECTOR_CAMERA_KEY"), help="camera key, if any")
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="glob of images to POST (default %(default)s)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second (overload: the base rate)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--factor", type=float, default=3.0, help="overload: multiple of --rate")
    parser.add_argument("--start", type=float, default=4.0, help="search: first rate")
    parser.add_argument("--step", type=float, default=2.0, help="search: rate increment")
    parser.add_argument("--max-rate", type=float, default=60.0, help="search: stop here")
    parser.add_argument("--step-duration", type=float, default=20.0, help="search: seconds per step")
    parser.add_argument("--p99-ms", type=float, default=250.0, help="search: latency bar")
    args = parser.parse_args()
    paths = sorted(glob.glob(args.images))
    if not paths:
        raise SystemExit(f"no images match {args.images}")
    images = [Path(p).read_bytes() for p in paths]
    print(json.dumps({"mode": args.mode, "images": len(images), "cpus": os.cpu_count()}), flush=True)
    if args.mode == "kill":
        mode_kill(images, args)
        return
    with server_for(args) as (url, server):
        if args.mode == "rate":
            measure(url, images, args.rate, args.duration, args, server)
        elif args.mode == "search":
            mode_search(url, images, args, server)
        else:
            measure(url, images, args.rate * args.factor, args.duration, args, server)
            if httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
                raise SystemExit("service did not survive the overload")
            print(json.dumps({"healthy_after_overload": True}))


if __name__ == "__main__":
    main()
