"""`inspector plc map` and `inspector plc watch`: the Modbus register map, and a stand-in PLC for commissioning.

`watch` reads the status and result block the way a PLC does (one function 3 request, sequence checked at both
ends) and prints each new result, so a line can be brought up and checked before the PLC program exists.
"""

from __future__ import annotations

import argparse
import socket
import time
from typing import TYPE_CHECKING

from inspector.cli.arguments import Subcommands, help_handler
from inspector.common.errors import InspectorError

if TYPE_CHECKING:
    from pymodbus.client import ModbusTcpClient


class PlcConnectionError(InspectorError):
    """The Modbus server cannot be reached, or answers with an exception."""


def add_parser(sub: Subcommands) -> None:
    plc = sub.add_parser("plc", help="the PLC link: register map, watch results", description="the PLC link")
    plc.set_defaults(handler=help_handler(plc))
    actions = plc.add_subparsers(title="plc commands", metavar="ACTION")

    p = actions.add_parser("map", help="print the Modbus register map")
    p.set_defaults(handler=run_map)
    p.add_argument("--markdown", action="store_true", help="as Markdown tables (docs/plc.md is made from this)")

    p = actions.add_parser("watch", help="read the Modbus block as a PLC would and print each new result")
    p.set_defaults(handler=run_watch)
    p.add_argument("url", help="the service's Modbus server, modbus://HOST[:PORT] (port 502 if omitted)")
    p.add_argument("--unit", type=int, default=1, help="Modbus unit id (links.modbus.device_id; default 1)")
    p.add_argument("--ack", action="store_true", help="acknowledge each result (handshake: the PLC's job)")
    p.add_argument("--count", type=int, help="stop after this many results")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between polls (default %(default)s)")


def run_map(args: argparse.Namespace) -> int:
    from inspector.link.registers import map_markdown, map_text

    print(map_markdown() if args.markdown else map_text(), end="")
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ModbusException

    from inspector.link.factory import host_port

    if not args.url.startswith("modbus://"):
        raise PlcConnectionError(f"{args.url!r}: give the Modbus server as modbus://HOST[:PORT]")
    host, port = host_port(args.url)
    try:  # first by hand, for the reason in one line (pymodbus only logs it)
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        raise PlcConnectionError(f"cannot connect to {args.url}: {exc.strerror or exc}") from exc
    client = ModbusTcpClient(host, port=port, timeout=2, retries=0)
    if not client.connect():
        raise PlcConnectionError(f"cannot connect to {args.url}")
    seen = 0
    try:
        watcher = Watcher(client, args.unit)
        print(watcher.describe(), flush=True)
        while args.count is None or seen < args.count:
            line = watcher.poll(args.ack)
            if line is None:
                time.sleep(args.interval)
                continue
            print(line, flush=True)
            seen += 1
    except KeyboardInterrupt:
        print(f"stopped after {seen} result{'s' if seen != 1 else ''}")
    except ModbusException as exc:
        raise PlcConnectionError(f"lost {args.url}: {exc}") from exc
    finally:
        client.close()
    return 0


class Watcher:
    """Reads the block, remembers the last result it printed, and acknowledges on request."""

    def __init__(self, client: ModbusTcpClient, unit: int) -> None:
        from inspector.link import registers

        self.client, self.unit, self.reg = client, unit, registers
        self.last = 0

    def read(self) -> dict[str, float | int]:
        """The status and result block in one request, read again when its two sequence copies differ."""
        while True:
            answer = self.client.read_holding_registers(0, count=self.reg.READ_END, device_id=self.unit)
            if answer.isError():
                raise PlcConnectionError(f"the server refused the read of the block (unit {self.unit}): {answer}")
            values = self.reg.decode(answer.registers)
            if values["sequence"] == values["sequence_end"]:
                return values

    def describe(self) -> str:
        v = self.read()
        state = self.reg.STATE_NAMES.get(int(v["state"]), str(v["state"]))
        handshake = "on" if int(v["status"]) & self.reg.STATUS_BIT["handshake"] else "off"
        recipes = f"{v['recipes']} recipe{'' if v['recipes'] == 1 else 's'}"
        return f"connected: state {state}, {recipes}, handshake {handshake}, {v['buffered']} buffered"

    def poll(self, ack: bool) -> str | None:
        """One line for a result not printed yet (acknowledged when `ack`), or None."""
        v = self.read()
        status, sequence = int(v["status"]), int(v["sequence"])
        if not status & self.reg.STATUS_BIT["result_valid"] or sequence == self.last:
            return None
        skipped = (sequence - self.last) % (2**32 - 1) - 1 if self.last else 0
        self.last = sequence
        if ack and status & self.reg.STATUS_BIT["handshake"]:
            field = self.reg.BY_NAME["ack_sequence"]
            answer = self.client.write_registers(field.address, self.reg.to_words(field, sequence), device_id=self.unit)
            if answer.isError():
                raise PlcConnectionError(f"the server refused the acknowledge of result {sequence}: {answer}")
        return format_result(v, self.reg.VERDICT_NAMES) + (f"  ({skipped} not seen)" if skipped > 0 else "")


def format_result(v: dict[str, float | int], verdicts: dict[int, str]) -> str:
    verdict = verdicts.get(int(v["verdict"]), str(v["verdict"]))
    normalized = f"{v['normalized_score']:.3f}" if v["normalized_score"] >= 0 else "-"
    box = f"{v['region1_x']},{v['region1_y']} {v['region1_w']}x{v['region1_h']}" if v["region_count"] else "-"
    return (
        f"#{v['sequence']}  {verdict:<6}  score {v['score']:.4g}  normalized {normalized}  "
        f"regions {v['region_count']}  box {box}  part {v['part_id'] or '-'}  meas {v['meas_id'] or '-'}  "
        f"recipe {v['recipe']}  {v['inference_ms']} ms"
    )
