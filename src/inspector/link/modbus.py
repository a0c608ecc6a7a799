"""`ModbusSink`: the Modbus TCP server the PLC polls, with the register map of `registers`.

Built on pymodbus's `SimDevice`/`SimData` (`pymodbus.simulator`), the device model pymodbus 3.x keeps for v4;
the datastore classes it replaces warn that they will be removed. The device's `action` callback is the one
hook: pymodbus calls it on every request before it answers, on the server's event loop, so

- a read copies the current status and result block (`_block`, replaced in one step whenever it changes) into
  the device's registers; nothing awaits in between, so one read never sees half of one result and half of the
  next;
- a write is checked and handed to the hub (ids, recipe) or the handshake (acknowledge, control) before pymodbus
  stores it, and a refused write becomes a Modbus exception (0x03 illegal value), never a crash.

Everything that changes the block runs on the sink's own loop (`LoopThread`): `publish` only schedules the
result there and returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from inspector.link import registers as reg
from inspector.link.hub import SEQUENCE_WRAP, LinkHub
from inspector.link.result import STATE_CODES, LineResult, LineStatus
from inspector.link.settings import ModbusSettings
from inspector.link.sink import LinkError, LoopThread, Sink, SinkHealth, UnknownRecipe

log = logging.getLogger(__name__)

SIM_TYPES = {
    "UINT16": DataType.UINT16,
    "BITS": DataType.REGISTERS,
    "INT32": DataType.INT32,
    "UINT32": DataType.UINT32,
    "FLOAT32": DataType.FLOAT32,
}
BIT_FUNCTIONS = {1, 2, 5, 15}  # coils and discrete inputs: the map has none
COMMAND_START, COMMAND_END = reg.COMMANDS[0].address, reg.COMMANDS[-1].end


def simdata() -> list[SimData]:
    """The map as pymodbus registers: status and result read-only, commands read/write, everything else invalid
    (pymodbus answers 0x02 illegal address there)."""
    return [
        SimData(
            field.address,
            count=field.count,
            values=0.0 if field.type == "FLOAT32" else 0,
            datatype=SIM_TYPES[field.type],
            readonly=not field.writable,
        )
        for field in reg.FIELDS
    ]


class ModbusSink(Sink):
    kind = "modbus"

    def __init__(self, host: str, port: int, settings: ModbusSettings) -> None:
        self.host, self.port, self.settings = host, port, settings
        self.name = f"modbus://{host}:{port}"
        self._hub: LinkHub | None = None
        self._thread: LoopThread | None = None
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        # State of the block; touched only on the loop thread.
        self._status: LineStatus | None = None
        self._heartbeat = 0
        self._buffer: deque[LineResult] = deque()  # handshake: unacknowledged results, oldest first
        self._shown: LineResult | None = None
        self._newest = 0  # sequence of the newest result
        self._overrun = False
        self._block: list[int] = [0] * reg.READ_END
        self._status_error = ""
        # Counters health() reads from other threads (plain ints: a torn read cannot happen).
        self.published = 0
        self.dropped = 0

    # ---- Sink ---------------------------------------------------------------------------------------------------

    def start(self, hub: LinkHub) -> None:
        self._hub = hub
        self._thread = LoopThread(f"modbus-{self.port}")
        try:
            self._thread.run(self._open())
        except Exception:
            self._thread.stop()
            self._thread = None
            raise

    def publish(self, result: LineResult) -> None:
        if self._thread is not None:
            self._thread.call(self._add, result)

    def health(self) -> SinkHealth:
        server = self._server
        listening = server is not None and server.is_active()
        clients = len(server.active_connections) if server is not None and listening else 0
        if not listening:
            detail = "not listening"
        elif clients:
            detail = f"listening, {clients} client{'s' if clients > 1 else ''}"
        else:
            detail = "listening, no PLC connected"
        if self._overrun:
            detail += f", buffer overrun ({self.dropped} dropped)"
        return SinkHealth(
            name=self.name,
            kind=self.kind,
            up=listening,
            detail=detail,
            published=self.published,
            failed=self.dropped,
            clients=clients,
        )

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            thread.run(self._close(), timeout=5)
        finally:
            thread.stop()

    # ---- on the loop --------------------------------------------------------------------------------------------

    async def _open(self) -> None:
        devices = [SimDevice(id=self.settings.device_id, simdata=simdata(), action=self._action)]
        if self.settings.device_id != 0:
            # Every other unit id gets 0x0B "gateway target failed to respond", the answer PLC programmers know
            # for a wrong unit id; without this device pymodbus answers 0x04 and logs a traceback per request.
            devices.append(SimDevice(id=0, simdata=simdata(), action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the OSError and says only that it could not listen
            raise LinkError(
                f"{self.name}: cannot listen on {self.host}:{self.port} (port in use, or not an address of this "
                "machine); choose another port in links.plc"
            ) from exc
        self._server = server
        self._tick()
        self._ticker = asyncio.create_task(self._beat())

    async def _close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_ms / 1000)
            self._heartbeat = (self._heartbeat + 1) & 0xFFFF
            self._tick()

    def _tick(self) -> None:
        """Refresh the service's status (a failing status read keeps the last one, logged once per cause)."""
        assert self._hub is not None
        try:
            self._status = self._hub.status()
            self._status_error = ""
        except Exception as exc:
            if str(exc) != self._status_error:
                log.exception("%s: cannot read the service status", self.name)
                self._status_error = str(exc)
        self._refresh()

    def _add(self, result: LineResult) -> None:
        self.published += 1
        self._newest = result.sequence
        if self.settings.handshake:
            if len(self._buffer) >= self.settings.buffer:
                self._buffer.popleft()
                self.dropped += 1
                self._overrun = True
            self._buffer.append(result)
            self._shown = self._buffer[0]
        else:
            self._shown = result
        self._tick()

    def _refresh(self) -> None:
        """Encode status and shown result into a new block, swapped in at once."""
        status, shown = self._status, self._shown
        bits = 0
        if status is not None:
            flags = {
                "ready": status.ready,
                "models_loaded": status.models_loaded,
                "busy": status.busy,
                "error": status.state == "Error",
                "drift": status.drift,
            }
            bits |= sum(reg.STATUS_BIT[name] for name, on in flags.items() if on)
        valid = shown is not None and (bool(self._buffer) or not self.settings.handshake)
        if valid and shown is not None:
            bits |= reg.STATUS_BIT["result_valid"] | reg.VERDICT_BITS.get(shown.verdict_code, 0)
        if self._overrun:
            bits |= reg.STATUS_BIT["overrun"]
        if self.settings.handshake:
            bits |= reg.STATUS_BIT["handshake"]
        values: dict[str, reg.Value] = {
            "heartbeat": self._heartbeat,
            "status": bits,
            "state": STATE_CODES[status.state] if status is not None else 0,
            "selected_recipe": status.selected_recipe if status is not None else 0,
            "recipes": len(status.recipes) if status is not None else 0,
            "buffered": len(self._buffer),
            "dropped": self.dropped,
            "newest_sequence": self._newest,
        }
        if shown is not None:
            values |= reg.result_values(shown)
        self._block = reg.encode(reg.STATUS, values) + reg.encode(reg.RESULT, values)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's hook, called before each request is answered (see the module docstring)."""
        if function_code in BIT_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is None:
            if address < reg.READ_END:  # registers[i] is address start_address + i
                registers[0 - start_address : reg.READ_END - start_address] = self._block
            return None
        return self._write(start_address, address, registers, cast(list[int], set_values))

    def _write(self, start: int, address: int, registers: list[int], values: list[int]) -> ExcCodes | None:
        """Check a write to the commands and carry it out; a refused write changes nothing. `values` are what
        pymodbus will store after this returns."""
        assert self._hub is not None
        words = registers[COMMAND_START - start : COMMAND_END - start]
        words[address - COMMAND_START : address - COMMAND_START + len(values)] = values
        written = range(address, address + len(values))
        # A command takes effect when its last (low) word is written: high word first, or both in one request.
        given = {
            f.name: reg.from_words(f, words[f.address - COMMAND_START : f.end - COMMAND_START])
            for f in reg.COMMANDS
            if f.end - 1 in written
        }
        ack, control = int(given.get("ack_sequence", 0)), int(given.get("control", 0))
        if ack and not self._known(ack):
            log.info("%s: PLC acknowledged result %d, which was never published", self.name, ack)
            return ExcCodes.ILLEGAL_VALUE
        if control & ~reg.CONTROL_MASK:
            return ExcCodes.ILLEGAL_VALUE
        if "select_recipe" in given:
            try:
                self._hub.select_recipe(int(given["select_recipe"]))
            except UnknownRecipe as exc:
                log.info("%s: %s", self.name, exc)
                return ExcCodes.ILLEGAL_VALUE
        if "next_part_id" in given or "next_meas_id" in given:
            part, meas = int(given.get("next_part_id", 0)), int(given.get("next_meas_id", 0))
            self._hub.set_next_ids(str(part) if part else None, str(meas) if meas else None)
        if ack:
            self._acknowledge(ack)
        if control & reg.CONTROL_BIT["clear_overrun"]:
            self._overrun = False
        if control & reg.CONTROL_BIT["discard_buffer"]:
            self._acknowledge(self._buffer[-1].sequence if self._buffer else 0)
        if "control" in given:  # command bits act once: the register reads back 0
            values[reg.BY_NAME["control"].address - address] = 0
        self._tick()
        return None

    def _known(self, sequence: int) -> bool:
        """Whether `sequence` was published (it may since be acknowledged or dropped): the results since it are
        fewer than all published. Wraps with the sequence numbers."""
        age = (self._newest - sequence) % (SEQUENCE_WRAP - 1)
        return 0 < sequence < SEQUENCE_WRAP and age < self.published

    def _acknowledge(self, sequence: int) -> None:
        """Drop buffered results up to and including `sequence`; an older one (acknowledged again, or dropped
        by overrun) changes nothing. The block keeps showing the last result, without result_valid."""
        if not any(r.sequence == sequence for r in self._buffer):
            return
        while self._buffer:
            done = self._buffer.popleft()
            self._shown = self._buffer[0] if self._buffer else done
            if done.sequence == sequence:
                break


async def _no_such_unit(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: Sequence[int | bool] | None,
) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE
