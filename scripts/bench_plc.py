"""The line link measured: how soon a result reaches the PLC and the plant, and what the links cost inspection.

One run, loopback only, bounded in count and time. A service is started (`inspector serve` as a subprocess),
mosquitto too, and in this process a camera posts parts at a fixed rate while three readers watch: a PLC reading
the Modbus block every 20 ms (a common PLC cycle) and acknowledging each result, an OPC UA client subscribed to
the last result's part id (20 ms publishing interval), and an MQTT subscriber. All clocks are this process's
`time.perf_counter`, so "visible after the HTTP answer" is one subtraction (negative: the reader saw it before
the camera got its answer).

    python scripts/bench_plc.py --model-dir /tmp/models/magnetic_tile --out /tmp/bench_plc.json

Phases: (1) 4 rounds alternating no links / all links, 200 parts at 4 per second each: inspection latency p50 and
p99, and each reader's delay; (2) a burst (two cameras, as fast as the service goes) with a Modbus read hammer:
every read must be one whole result; (3) 200 parts at 4 per second with the broker killed and restarted and the
PLC clients dropped mid-run: every inspection must still be answered.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    free_port,
    load_average,
    machine_info,
    markdown_table,
    stop_service,
    write_json,
)
from inspector.link.registers import BY_NAME, READ_END, VERDICT_NAMES, decode, to_words
from load_test import cpu_seconds, start_server

DEFAULT_IMAGES = str(DEFAULT_DATA_ROOT / "magnetic_tile" / "test" / "*" / "*.jpg")
ACK = BY_NAME["ack_sequence"]


@dataclass
class Sent:
    """One part the camera sent: when its answer arrived and what it said."""

    index: int
    sent: float
    answered: float | None = None
    status: int | None = None
    body: dict[str, Any] | None = None


def part_key(index: int) -> str:
    """The camera's part id for part `index`: a number, so the Modbus block carries it (UDINT) and every reader
    can say which part it saw."""
    return str(100_000 + index)


@dataclass
class Seen:
    """When each reader first saw a result, keyed by the part id it carried."""

    at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, key: str) -> None:
        now = time.perf_counter()
        with self.lock:
            self.at.setdefault(key, now)


# ---- the service and the broker ------------------------------------------------------------------------------


class Broker:
    """mosquitto on a loopback port, which a phase may kill (-9) and start again on the same port."""

    def __init__(self, port: int) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = Path(tempfile.mkdtemp(prefix="bench-mqtt-")) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.command = [exe, "-c", str(conf)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def broker(port: int) -> Iterator[Broker]:
    running = Broker(port)
    running.start()
    try:
        yield running
    finally:
        running.kill()


@contextmanager
def service(args: argparse.Namespace, work: Path, links: list[str]) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    store = work / f"store-{port}"
    server = start_server(args, store, port, links)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        stop_service(server)


# ---- the camera ---------------------------------------------------------------------------------------------------


async def camera(url: str, images: list[bytes], count: int, rate: float | None, senders: int = 1) -> list[Sent]:
    """Post `count` parts: at `rate` per second on a fixed schedule, or (rate None) as fast as `senders` go."""
    sent = [Sent(i, 0.0) for i in range(count)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(part: Sent) -> None:
            part.sent = time.perf_counter()
            try:
                r = await client.post(
                    "/v1/inspect",
                    content=images[part.index % len(images)],
                    headers={"Content-Type": "image/jpeg"},
                    params={"part_id": part_key(part.index)},
                )
                part.status, part.body = r.status_code, r.json()
            except httpx.HTTPError:
                part.status = 0
            part.answered = time.perf_counter()

        if rate is None:
            queue = iter(sent)

            async def worker() -> None:
                for part in queue:
                    await one(part)

            await asyncio.gather(*(worker() for _ in range(senders)))
        else:
            start = time.perf_counter()
            tasks = []
            for part in sent:
                await asyncio.sleep(max(0.0, start + part.index / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(part)))
            await asyncio.gather(*tasks)
    return sent


def run_camera(url: str, images: list[bytes], count: int, rate: float | None, senders: int = 1) -> list[Sent]:
    return asyncio.run(camera(url, images, count, rate, senders))


# ---- the readers --------------------------------------------------------------------------------------------------


class ModbusPlc(threading.Thread):
    """A PLC: reads the whole result block in one request every `period_s`, acknowledges each new result, and
    keeps every read so the burst phase can check that none mixed two results."""

    def __init__(self, port: int, seen: Seen, period_s: float) -> None:
        super().__init__(daemon=True, name="bench-modbus")
        self.port, self.seen, self.period_s = port, seen, period_s
        self.reads: list[dict[str, Any]] = []
        self.errors = 0
        self.stop_event = threading.Event()
        self.drop_event = threading.Event()  # set: close the connection abruptly, then reconnect

    def run(self) -> None:
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1)
        last = 0
        while not self.stop_event.is_set():
            if self.drop_event.is_set():
                with suppress(Exception):
                    client.socket.shutdown(2)  # the PLC's cable pulled: no goodbye
                client.close()
                time.sleep(1.0)
                self.drop_event.clear()
            try:
                if not client.connected:
                    client.connect()
                block = decode(client.read_holding_registers(0, count=READ_END).registers)
            except Exception:
                self.errors += 1
                time.sleep(0.05)
                continue
            self.reads.append(block)
            sequence = block["sequence"]
            if sequence and sequence != last:
                self.seen.mark(str(block["part_id"]))
                with suppress(Exception):
                    client.write_registers(ACK.address, to_words(ACK, sequence))
                last = sequence
            time.sleep(self.period_s)
        client.close()


class OpcUaClient(threading.Thread):
    """A SCADA client subscribed to the last result's part id, at `interval_ms` publishing interval."""

    def __init__(self, port: int, seen: Seen, interval_ms: float) -> None:
        super().__init__(daemon=True, name="bench-opcua")
        self.url, self.seen, self.interval_ms = f"opc.tcp://127.0.0.1:{port}", seen, interval_ms
        self.stop_event = threading.Event()
        self.drop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from asyncua import Client

        seen = self.seen

        class Handler:
            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                if value:
                    seen.mark(str(value))

        while not self.stop_event.is_set():
            client = Client(self.url, timeout=2)
            try:
                await client.connect()
                ns = await client.get_namespace_index("urn:inspector:opcua")
                node = client.get_node(f"ns={ns};s=VisionSystem.Inspector.LastResult.PartId")
                subscription = await client.create_subscription(self.interval_ms, Handler())
                await subscription.subscribe_data_change(node)
                while not (self.stop_event.is_set() or self.drop_event.is_set()):
                    await asyncio.sleep(0.05)
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.2)
                continue
            if self.drop_event.is_set():
                with suppress(Exception):
                    client.uaclient.protocol.transport.abort()  # gone without closing the session
                self.drop_event.clear()
                await asyncio.sleep(1.0)
            else:
                with suppress(Exception):
                    await client.disconnect()


class MqttSubscriber:
    def __init__(self, port: int, prefix: str, seen: Seen) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/+/+/result", qos=1)
        self.client.on_message = lambda c, u, m: seen.mark(json.loads(m.payload)["part_id"])
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- phases -------------------------------------------------------------------------------------------------------


def latency_ms(sent: list[Sent]) -> dict[str, float | int]:
    ok = [(p.answered - p.sent) * 1e3 for p in sent if p.status == 200 and p.answered]
    return {
        "answered": len(ok),
        "failed": sum(1 for p in sent if p.status != 200),
        "p50_ms": round(float(np.percentile(ok, 50)), 1),
        "p99_ms": round(float(np.percentile(ok, 99)), 1),
    }


def delays_ms(sent: list[Sent], seen: Seen) -> dict[str, float | int]:
    """Each result's delay from the HTTP answer to the reader seeing it."""
    delays = [
        (seen.at[p.body["part_id"]] - p.answered) * 1e3
        for p in sent
        if p.status == 200 and p.body and p.answered and p.body["part_id"] in seen.at
    ]
    answered = sum(1 for p in sent if p.status == 200)
    if not delays:
        return {"seen": 0, "of": answered}
    return {
        "seen": len(delays),
        "of": answered,
        "p50_ms": round(float(np.percentile(delays, 50)), 1),
        "p99_ms": round(float(np.percentile(delays, 99)), 1),
        "max_ms": round(float(np.max(delays)), 1),
    }


@contextmanager
def readers(
    modbus_port: int, opcua_port: int, mqtt_port: int, prefix: str, cycle_ms: float
) -> Iterator[dict[str, Any]]:
    seen = {"modbus": Seen(), "opcua": Seen(), "mqtt": Seen()}
    plc = ModbusPlc(modbus_port, seen["modbus"], cycle_ms / 1e3)
    opc = OpcUaClient(opcua_port, seen["opcua"], cycle_ms)
    plc.start()
    opc.start()
    sub = MqttSubscriber(mqtt_port, prefix, seen["mqtt"])
    time.sleep(2.0)  # connected and subscribed before the first part
    try:
        yield {"seen": seen, "plc": plc, "opcua": opc}
    finally:
        plc.stop_event.set()
        opc.stop_event.set()
        sub.close()
        plc.join(5)
        opc.join(5)


def link_flags(modbus_port: int, opcua_port: int, mqtt_port: int, prefix: str) -> list[str]:
    return [
        "--plc",
        f"modbus://127.0.0.1:{modbus_port}",
        "--plc",
        f"opcua://127.0.0.1:{opcua_port}",
        "--mqtt",
        f"mqtt://127.0.0.1:{mqtt_port}/{prefix}",
    ]


def phase_rate(args: argparse.Namespace, work: Path, images: list[bytes], mqtt_port: int) -> list[dict[str, Any]]:
    rows = []
    for round_ in range(args.rounds):
        for with_links in (False, True):
            modbus_port, opcua_port, prefix = free_port(), free_port(), f"bench{round_}"
            flags = link_flags(modbus_port, opcua_port, mqtt_port, prefix) if with_links else []
            with service(args, work, flags) as (url, server):
                if with_links:
                    with readers(modbus_port, opcua_port, mqtt_port, prefix, args.cycle_ms) as r:
                        cpu = cpu_seconds(server.pid)
                        sent = run_camera(url, images, args.count, args.rate)
                        cpu = cpu_seconds(server.pid) - cpu
                        time.sleep(1.0)
                    row = {"links": "all", **latency_ms(sent)}
                    row |= {f"{name}_delay": delays_ms(sent, seen) for name, seen in r["seen"].items()}
                else:
                    cpu = cpu_seconds(server.pid)
                    sent = run_camera(url, images, args.count, args.rate)
                    cpu = cpu_seconds(server.pid) - cpu
                    row = {"links": "none", **latency_ms(sent)}
                row["service_cpu_ms_per_part"] = round(cpu * 1e3 / args.count, 1)
                row["latencies_ms"] = [
                    round((p.answered - p.sent) * 1e3, 2) for p in sent if p.status == 200 and p.answered
                ]
            row["round"] = round_ + 1
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "latencies_ms"}), flush=True)
    return rows


def phase_burst(args: argparse.Namespace, work: Path, images: list[bytes], mqtt_port: int) -> dict[str, Any]:
    """Two cameras as fast as the service goes while the PLC reads every 1 ms: each read must be one result."""
    modbus_port, opcua_port = free_port(), free_port()
    with service(args, work, link_flags(modbus_port, opcua_port, mqtt_port, "burst")) as (url, _):
        seen = Seen()
        plc = ModbusPlc(modbus_port, seen, period_s=0.001)
        plc.start()
        time.sleep(0.5)
        sent = run_camera(url, images, args.burst, None, senders=2)
        time.sleep(0.5)
        plc.stop_event.set()
        plc.join(5)
    answers = {p.body["part_id"]: p.body for p in sent if p.status == 200 and p.body is not None}
    mixed = 0
    checked = 0
    for read in plc.reads:
        if not read["sequence"]:
            continue
        checked += 1
        answer = answers.get(str(read["part_id"]))
        if read["sequence"] != read["sequence_end"] or answer is None or not same_result(read, answer):
            mixed += 1
    return {
        "parts": len(sent),
        "answered": len(answers),
        "reads": len(plc.reads),
        "reads_with_a_result": checked,
        "mixed_reads": mixed,
        "results_seen": len(seen.at),
        **latency_ms(sent),
    }


def same_result(read: dict[str, Any], answer: dict[str, Any]) -> bool:
    """The Modbus block holds exactly this answer's verdict, score and largest region."""
    regions = sorted(answer["regions"], key=lambda r: (-r["area"], -r["peak"]))
    box = (regions[0]["x"], regions[0]["y"], regions[0]["width"], regions[0]["height"]) if regions else (0, 0, 0, 0)
    read_box = (read["region1_x"], read["region1_y"], read["region1_w"], read["region1_h"])
    return (
        VERDICT_NAMES[int(read["verdict"])] == (answer["verdict"] or "none")
        and abs(read["score"] - answer["score"]) <= 1e-5 * max(1.0, abs(answer["score"]))  # float32 of the score
        and read_box == box
    )


def phase_faults(args: argparse.Namespace, work: Path, images: list[bytes]) -> dict[str, Any]:
    """200 parts at 4/s; the broker is killed at 1/4 and restarted at 1/2, the PLC and OPC UA clients drop at 3/8
    and reconnect. Every inspection must be answered."""
    modbus_port, opcua_port, mqtt_port = free_port(), free_port(), free_port()
    duration = args.count / args.rate
    with (
        broker(mqtt_port) as mosquitto,
        service(args, work, link_flags(modbus_port, opcua_port, mqtt_port, "faults")) as (url, _),
        readers(modbus_port, opcua_port, mqtt_port, "faults", args.cycle_ms) as r,
    ):
        events: list[str] = []

        def faults() -> None:
            time.sleep(duration / 4)
            mosquitto.kill()
            events.append(f"{time.perf_counter():.3f} broker killed")
            time.sleep(duration / 8)
            r["plc"].drop_event.set()
            r["opcua"].drop_event.set()
            events.append(f"{time.perf_counter():.3f} PLC and OPC UA clients dropped")
            time.sleep(duration / 8)
            mosquitto.start()
            events.append(f"{time.perf_counter():.3f} broker restarted")

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        sent = run_camera(url, images, args.count, args.rate)
        fault_thread.join()
        time.sleep(3.0)
        with httpx.Client(base_url=url) as c:
            links_after = c.get("/v1/links").json()
    return {
        **latency_ms(sent),
        "events": events,
        "modbus_seen": len(r["seen"]["modbus"].at),
        "opcua_seen": len(r["seen"]["opcua"].at),
        "mqtt_seen": len(r["seen"]["mqtt"].at),
        "links_after": [{k: link[k] for k in ("name", "up", "published", "failed", "detail")} for link in links_after],
    }


def pooled(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Inspection latency over every round of each setting: a p99 of 200 parts moves with any other load on the
    machine, so the comparison that counts pools the rounds (which alternate, so both see the same drift)."""
    out = {}
    for links in ("none", "all"):
        ms = [v for r in rows if r["links"] == links for v in r["latencies_ms"]]
        out[links] = {
            "parts": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
        }
    out["p99_all_over_none"] = {"ratio": round(out["all"]["p99_ms"] / out["none"]["p99_ms"], 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="glob of part images the camera sends")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of no links / all links")
    parser.add_argument("--burst", type=int, default=150)
    parser.add_argument(
        "--cycle-ms", type=float, default=20.0, help="the PLC's Modbus read cycle and the OPC UA publishing interval"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench_plc.json"))
    args = parser.parse_args()
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the dropped client's reconnect tracebacks
    args.workers = None
    args.queue_size = 16  # the burst phase's two cameras must never see 503
    images = [Path(p).read_bytes() for p in sorted(glob.glob(args.images))]
    if not images:
        raise SystemExit(f"no images match {args.images}")
    work = Path(tempfile.mkdtemp(prefix="bench-plc-"))
    result: dict[str, Any] = {"machine": machine_info(), "load_before": load_average(), "args": vars(args)}
    mqtt_port = free_port()
    with broker(mqtt_port):
        result["rate"] = phase_rate(args, work, images, mqtt_port)
        result["burst"] = phase_burst(args, work, images, mqtt_port)
        print(json.dumps(result["burst"]), flush=True)
    result["faults"] = phase_faults(args, work, images)
    print(json.dumps(result["faults"]), flush=True)
    result["load_after"] = load_average()
    result["pooled"] = pooled(result["rate"])
    write_json(args.out, result)
    rows = [
        [
            r["round"],
            r["links"],
            r["answered"],
            r["failed"],
            r["p50_ms"],
            r["p99_ms"],
            r["service_cpu_ms_per_part"],
            *(
                f"{r[f'{k}_delay'].get('p50_ms', '-')} / {r[f'{k}_delay'].get('p99_ms', '-')}"
                f" ({r[f'{k}_delay']['seen']}/{r[f'{k}_delay']['of']})"
                if f"{k}_delay" in r
                else "-"
                for k in ("modbus", "opcua", "mqtt")
            ),
        ]
        for r in result["rate"]
    ]
    print(
        markdown_table(
            [
                "round",
                "links",
                "answered",
                "failed",
                "p50 ms",
                "p99 ms",
                "service CPU ms/part",
                "Modbus delay p50 / p99 ms (seen)",
                "OPC UA delay p50 / p99 ms (seen)",
                "MQTT delay p50 / p99 ms (seen)",
            ],
            rows,
        )
    )
    print(json.dumps(result["pooled"]))


if __name__ == "__main__":
    main()
