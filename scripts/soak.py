"""Soak: the service inspecting without pause for --minutes, with what a line throws at it, and a sample of its
health every minute: resident memory, open file descriptors, threads, latency, answers by status, store size.

    python scripts/soak.py --model-dir /tmp/inspector-bench-line-box/magnetic_tile --minutes 30

`inspector serve` runs in its own process with a Modbus server, a store in a temporary folder with a disk budget
(so retention deletes while it runs, as on a line) and the model given. Beside it:
- a camera posting at --rate parts per second: good and defective test images of --category (default
  magnetic_tile under ../shared/datasets) and one in ten garbage (truncated, random bytes, text);
- an operator page polling the summary, the history, the score chart and /metrics every 2 s, and holding the
  event stream open;
- a PLC reading the Modbus result block every 20 ms and acknowledging each result.

Each minute one JSON line goes to --out (and a table row to stdout). At the end the growth between the second
minute and the last is checked against the bounds below; the exit status is 1 when one is exceeded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from _bench_common import DEFAULT_DATA_ROOT, free_port, load_average, machine_info, start_service, stop_service

REPO = Path(__file__).resolve().parents[1]
# Growth from minute 2 to the last that counts as a leak (a steady service stays within these).
BOUNDS = {"rss_mib": 64.0, "fds": 8, "threads": 4, "p99_ratio": 1.5}


def proc_status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = float(value.split()[0])
    return {
        "rss_mib": fields["VmRSS"] / 1024,
        "threads": fields["Threads"],
        "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
    }


class Stream:
    """The camera: posts a mix of good, defective and garbage parts at a fixed rate, records every answer."""

    def __init__(self, url: str, images: list[bytes], rate: float, seed: int) -> None:
        self.url, self.images, self.period = url, images, 1.0 / rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.errors = 0

    def part(self, n: int) -> tuple[bytes, str]:
        if n % 10 == 9:
            good = self.rng.choice(self.images)
            garbage = [good[: len(good) // 3], os.urandom(2048), b"not an image", good[:16]]
            return self.rng.choice(garbage), "image/png"
        return self.rng.choice(self.images), "image/png"

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            n, next_at = 0, time.monotonic()
            while not stop.is_set():
                data, media = self.part(n)
                start = time.perf_counter()
                try:
                    answer = client.post(
                        f"{self.url}/v1/inspect",
                        files={"image": ("p.png", data, media)},
                        params={"part_id": f"S{n}"},
                    )
                    status = str(answer.status_code)
                except httpx.HTTPError:
                    status = "error"
                with self.lock:
                    self.statuses[status] += 1
                    if status == "200":
                        self.latencies.append((time.perf_counter() - start) * 1e3)
                n += 1
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def take(self) -> tuple[list[float], Counter[str]]:
        with self.lock:
            latencies, statuses = self.latencies, self.statuses
            self.latencies, self.statuses = [], Counter()
        return latencies, statuses


def operator(url: str, stop: threading.Event, failures: Counter[str]) -> None:
    """The operator page: periodic reads, plus an open event stream on its own connection."""

    def events() -> None:
        while not stop.is_set():
            try:
                with httpx.stream("GET", f"{url}/v1/events", timeout=30) as stream:
                    for _ in stream.iter_lines():
                        if stop.is_set():
                            return
            except httpx.HTTPError:
                failures["events"] += 1
                time.sleep(1)

    threading.Thread(target=events, daemon=True).start()
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.wait(2.0):
            for path in ("/v1/summary", "/v1/inspections?limit=20", "/v1/scores?model=soak", "/metrics", "/readyz"):
                try:
                    if client.get(path).status_code >= 500:
                        failures[path] += 1
                except httpx.HTTPError:
                    failures[path] += 1


def plc(port: int, stop: threading.Event, failures: Counter[str]) -> None:
    from pymodbus.client import ModbusTcpClient

    sys.path.insert(0, str(REPO / "src"))
    from inspector.link import registers as reg

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    client.connect()
    acked = 0
    while not stop.wait(0.02):
        try:
            answer = client.read_holding_registers(0, count=reg.READ_END)
            if answer.isError():
                failures["plc read"] += 1
                continue
            block = reg.decode(answer.registers)
            if block["sequence"] and block["sequence"] != acked and block["sequence"] == block["sequence_end"]:
                field = reg.BY_NAME["ack_sequence"]
                client.write_registers(field.address, reg.to_words(field, block["sequence"]))
                acked = int(block["sequence"])
        except Exception:  # a dropped connection: count it and reconnect, as a PLC does
            failures["plc"] += 1
            client.close()
            client.connect()
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a fitted, calibrated model directory")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=4.0, help="parts per second (the line: 4)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/soak.jsonl"))
    args = parser.parse_args()

    test_dir = args.data_root / args.category / "test"
    images = [p.read_bytes() for p in sorted(test_dir.glob("*/*")) if p.suffix in (".png", ".jpg", ".bmp")]
    if not images:
        raise SystemExit(f"no test images under {test_dir}")
    port, plc_port = free_port(), free_port()
    store = Path(tempfile.mkdtemp(prefix="inspector-soak-"))
    env = {
        **os.environ,
        "INSPECTOR_STORE_MIN_FREE_DISK_MB": "0",
        "INSPECTOR_STORE_MAX_DISK_MB": "200",  # retention deletes while the soak runs
        "INSPECTOR_STORE_MAINTENANCE_INTERVAL_S": "30",
    }
    command = [sys.executable, "-m", "inspector", "serve", "--model-dir", f"soak={args.model_dir}", "--port"]
    command += [str(port), "--store-dir", str(store), "--plc", f"modbus://127.0.0.1:{plc_port}"]
    url = f"http://127.0.0.1:{port}"
    server = start_service(command, store.with_suffix(".log"), url, env, timeout_s=120)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        camera = Stream(url, images, args.rate, seed=0)
        failures: Counter[str] = Counter()
        workers = [
            threading.Thread(target=camera.run, args=(stop,), daemon=True),
            threading.Thread(target=operator, args=(url, stop, failures), daemon=True),
            threading.Thread(target=plc, args=(plc_port, stop, failures), daemon=True),
        ]
        for worker in workers:
            worker.start()
        rows = []
        started = time.monotonic()
        print(f"{'min':>4} {'RSS MiB':>8} {'fds':>4} {'thr':>4} {'p50 ms':>7} {'p99 ms':>7} {'200':>5} other  load")
        with args.out.open("w") as out:
            out.write(
                json.dumps(
                    {"machine": machine_info(()), "args": vars(args) | {"model_dir": str(args.model_dir)}}, default=str
                )
                + "\n"
            )
            for minute in range(1, int(args.minutes) + 1):
                if stop.wait(max(0.0, started + 60 * minute - time.monotonic())):
                    break
                latencies, statuses = camera.take()
                row = {
                    "minute": minute,
                    **proc_status(server.pid),
                    "p50_ms": statistics.median(latencies) if latencies else None,
                    "p99_ms": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 100 else None,
                    "statuses": dict(statuses),
                    "failures": dict(failures),
                    "store_mib": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20,
                    "load": load_average(),
                }
                rows.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                other = {k: v for k, v in statuses.items() if k != "200"}
                print(
                    f"{minute:>4} {row['rss_mib']:>8.1f} {row['fds']:>4.0f} {row['threads']:>4.0f} "
                    f"{row['p50_ms'] or 0:>7.1f} {row['p99_ms'] or 0:>7.1f} {statuses.get('200', 0):>5} {other} "
                    f"{row['load']}",
                    flush=True,
                )
    finally:
        stop.set()
        stop_service(server)
    if len(rows) < 3:
        print("too short to judge growth (needs 3 minutes)")
        return 0
    first, last = rows[1], rows[-1]
    growth = {
        "rss_mib": last["rss_mib"] - first["rss_mib"],
        "fds": last["fds"] - first["fds"],
        "threads": last["threads"] - first["threads"],
        "p99_ratio": (last["p99_ms"] or 0) / (first["p99_ms"] or 1),
    }
    server_errors = sum(v for r in rows for k, v in r["statuses"].items() if k.startswith("5") or k == "error")
    exceeded = [k for k, bound in BOUNDS.items() if growth[k] > bound]
    print(f"growth minute 2 -> {last['minute']}: {growth}; bounds {BOUNDS}; 5xx or failed requests: {server_errors}")
    print("exceeded: " + (", ".join(exceeded) if exceeded else "none"))
    return 1 if exceeded or server_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
