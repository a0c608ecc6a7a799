"""The Modbus register map as one table: the server encodes from it, `inspector plc map` prints it, `inspector plc
watch` decodes with it and docs/plc.md is generated from it, so none of them can disagree with another.

Conventions, the ones PLC programmers expect:

- One register space with protocol addresses from 0; the same registers answer function 3 (read holding
  registers, 4xxxx = 40001 + address) and function 4 (read input registers, 3xxxx = 30001 + address).
- Status and result (0 .. 71) are read-only and fit one read request; a write there is refused with exception
  0x02. The commands (100 .. 107) are read/write, with functions 6 and 16.
- 32-bit values take two registers, high word first, each word big-endian (byte order ABCD, as Siemens and
  most Modbus devices; Schneider's CDAB needs its words swapped). A 32-bit command takes effect when its low word
  (the second register) is written: write both in one function 16, or the high word first.
- The result's sequence number is both the first and the last field of the result block: a PLC that reads the
  block in several requests compares the two to know it did not mix two results.

Imports only the standard library, so `plc map` needs no Modbus stack and this file can be read as the spec.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from inspector.link.result import STATE_CODES, LineResult

Type = Literal["UINT16", "BITS", "INT32", "UINT32", "FLOAT32"]
WORDS: dict[Type, int] = {"UINT16": 1, "BITS": 1, "INT32": 2, "UINT32": 2, "FLOAT32": 2}
LIMITS: dict[Type, tuple[int, int]] = {"UINT16": (0, 0xFFFF), "BITS": (0, 0xFFFF), "INT32": (-(2**31), 2**31 - 1)}
LIMITS["UINT32"] = (0, 2**32 - 1)
REGIONS = 4  # regions listed in the result block, largest area first
MAX_READ = 125  # registers one Modbus read request may return


@dataclass(frozen=True)
class Field:
    """One value in the map. `count` repeats the type (reserved space only); `_layout` sets the address."""

    name: str
    type: Type
    unit: str
    description: str
    count: int = 1
    writable: bool = False
    address: int = -1

    @property
    def words(self) -> int:
        return WORDS[self.type] * self.count

    @property
    def end(self) -> int:
        """The address after the field."""
        return self.address + self.words

    @property
    def reserved(self) -> bool:
        return self.name == "reserved"


def _layout(start: int, fields: Iterable[Field], writable: bool = False) -> tuple[Field, ...]:
    """Fields placed one after another from `start`, so that addresses can neither overlap nor leave gaps."""
    placed: list[Field] = []
    address = start
    for field in fields:
        placed.append(replace(field, address=address, writable=writable))
        address = placed[-1].end
    return tuple(placed)


def _region(n: int) -> list[Field]:
    which = "largest region" if n == 1 else f"region {n} by area"
    return [
        Field(f"region{n}_x", "UINT16", "px", f"{which}: left edge of the bounding box (0 when there is none)"),
        Field(f"region{n}_y", "UINT16", "px", f"{which}: top edge"),
        Field(f"region{n}_w", "UINT16", "px", f"{which}: width"),
        Field(f"region{n}_h", "UINT16", "px", f"{which}: height"),
        Field(f"region{n}_cx", "UINT16", "px", f"{which}: centre x (x + w / 2, rounded down)"),
        Field(f"region{n}_cy", "UINT16", "px", f"{which}: centre y"),
        Field(f"region{n}_area", "UINT32", "px", f"{which}: pixels at or above the threshold"),
    ]


STATUS = _layout(
    0,
    [
        Field("heartbeat", "UINT16", "count", "+1 every modbus.heartbeat_ms, wraps to 0; standing still: service gone"),
        Field("status", "BITS", "bits", "status word, see the status bits"),
        Field("state", "UINT16", "code", "OPC 40100 state: 0 Preoperational, 1 Halted, 2 Error, 3 Operational"),
        Field("selected_recipe", "UINT16", "recipe", "recipe the PLC selected (0: none, the camera names the model)"),
        Field("recipes", "UINT16", "count", "highest recipe number; recipe n is the n-th model loaded, see Commands"),
        Field("buffered", "UINT16", "count", "results not yet acknowledged, the shown one included (handshake)"),
        Field("dropped", "UINT32", "count", "results dropped by buffer overrun since the service started"),
        Field("newest_sequence", "UINT32", "seq", "sequence number of the newest result (0: none yet)"),
        Field("reserved", "UINT16", "", "reads 0", count=6),
    ],
)
RESULT = _layout(
    STATUS[-1].end,
    [
        Field("sequence", "UINT32", "seq", "the result's sequence number, 1 .. 2^32-1 (0: no result yet)"),
        Field("verdict", "UINT16", "code", "0 not judged (model not calibrated), 1 pass, 2 review, 3 fail"),
        Field("recipe", "UINT16", "recipe", "recipe number of the model that judged the part"),
        Field("part_id", "UINT32", "id", "the inspection's part id (0: none, or not a whole number)"),
        Field("meas_id", "UINT32", "id", "the inspection's measurement id (0: none, or not a whole number)"),
        Field("score_x1000", "INT32", "0.001", "anomaly score × 1000"),
        Field("normalized_x1000", "INT32", "0.001", "score / threshold × 1000: 1000 is at the threshold (-1: none)"),
        Field("score", "FLOAT32", "", "anomaly score"),
        Field("normalized_score", "FLOAT32", "", "score / threshold: 1.0 is at the threshold (-1.0: none)"),
        Field("inference_ms", "UINT16", "ms", "decode to regions: the time the model took (saturates at 65535)"),
        Field("total_ms", "UINT16", "ms", "arrival to committed record (saturates at 65535)"),
        Field("width", "UINT16", "px", "image width, the frame of the region boxes"),
        Field("height", "UINT16", "px", "image height"),
        Field("region_count", "UINT16", "count", f"defect regions found (the {REGIONS} largest follow)"),
        Field("reserved", "UINT16", "", "reads 0 (keeps the 32-bit values on even addresses)"),
        *[field for n in range(1, REGIONS + 1) for field in _region(n)],
        Field("sequence_end", "UINT32", "seq", "= sequence; differs only if a multi-request read mixed two results"),
    ],
)
COMMANDS = _layout(
    100,
    [
        Field("ack_sequence", "UINT32", "seq", "write the shown result's sequence to acknowledge it (handshake)"),
        Field("next_part_id", "UINT32", "id", "part id for the next inspection that arrives without one (0: none)"),
        Field("next_meas_id", "UINT32", "id", "measurement id for the next inspection that arrives without one"),
        Field("select_recipe", "UINT16", "recipe", "model to use when the camera names none (0: clear); unknown: 0x03"),
        Field("control", "BITS", "bits", "command bits, see the control bits; reads 0"),
    ],
    writable=True,
)
FIELDS = (*STATUS, *RESULT, *COMMANDS)
BY_NAME = {f.name: f for f in FIELDS if not f.reserved}
READ_END = RESULT[-1].end  # status and result: one read of READ_END registers from 0

# Bit numbers of the status word (bit 0 is the least significant), In-Sight style.
STATUS_BITS: tuple[tuple[int, str, str], ...] = (
    (0, "ready", "state Operational: the service accepts inspections"),
    (1, "models_loaded", "every served model is loaded"),
    (2, "busy", "an inspection is in progress"),
    (3, "result_valid", "the result block holds a result (handshake: one not yet acknowledged)"),
    (4, "pass", "result_valid and the shown verdict is pass"),
    (5, "fail", "result_valid and the shown verdict is fail"),
    (6, "review", "result_valid and the shown verdict is review"),
    (7, "error", "state Error: a model failed to load, or the store's disk is below its floor"),
    (8, "overrun", "the buffer was full and results were dropped; stays set until control bit 0 clears it"),
    (9, "handshake", "the server runs the acknowledge handshake (modbus.handshake)"),
    (10, "drift", "drift alarm: a recipe's images or pass scores no longer look like its reference (GET /v1/drift)"),
)
CONTROL_BITS: tuple[tuple[int, str, str], ...] = (
    (0, "clear_overrun", "clear the overrun status bit"),
    (1, "discard_buffer", "acknowledge every buffered result at once (e.g. after a PLC restart)"),
)
STATUS_BIT = {name: 1 << bit for bit, name, _ in STATUS_BITS}
CONTROL_BIT = {name: 1 << bit for bit, name, _ in CONTROL_BITS}
CONTROL_MASK = sum(CONTROL_BIT.values())
VERDICT_BITS = {1: STATUS_BIT["pass"], 2: STATUS_BIT["review"], 3: STATUS_BIT["fail"]}
VERDICT_NAMES = {0: "none", 1: "pass", 2: "review", 3: "fail"}
STATE_NAMES = {code: name for name, code in STATE_CODES.items()}

Value = int | float


# ---- encoding ---------------------------------------------------------------------------------------------------


def to_words(field: Field, value: Value) -> list[int]:
    """The field's registers for `value`, high word first; integers saturate at the type's limits."""
    if field.type == "FLOAT32":
        data = struct.pack(">f", value)
    else:
        low, high = LIMITS[field.type]
        number = min(max(round(value), low), high)
        data = number.to_bytes(2 * WORDS[field.type], "big", signed=field.type == "INT32")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def from_words(field: Field, words: Sequence[int]) -> Value:
    data = b"".join(w.to_bytes(2, "big") for w in words[: WORDS[field.type]])
    if field.type == "FLOAT32":
        return float(struct.unpack(">f", data)[0])
    return int.from_bytes(data, "big", signed=field.type == "INT32")


def encode(fields: Sequence[Field], values: Mapping[str, Value]) -> list[int]:
    """Registers for contiguous `fields` (missing values and reserved space read 0)."""
    words: list[int] = []
    for field in fields:
        words.extend(to_words(field, values.get(field.name, 0)) if not field.reserved else [0] * field.words)
    return words


def decode(registers: Sequence[int], start: int = 0) -> dict[str, Value]:
    """The named values of every field that lies wholly in `registers` (read from address `start`)."""
    return {
        name: from_words(field, registers[field.address - start : field.end - start])
        for name, field in BY_NAME.items()
        if start <= field.address and field.end <= start + len(registers)
    }


def as_id(text: str | None) -> int:
    """A part or measurement id as the PLC's UDINT: the number it spells, or 0 when it is none or no number."""
    if text is None or not text.isascii() or not text.isdigit():
        return 0
    number = int(text)
    return number if number < 2**32 else 0


def result_values(result: LineResult) -> dict[str, Value]:
    """A result's fields in the map's units."""
    normalized = result.normalized_score if result.normalized_score is not None else -1.0
    values: dict[str, Value] = {
        "sequence": result.sequence,
        "sequence_end": result.sequence,
        "verdict": result.verdict_code,
        "recipe": result.recipe,
        "part_id": as_id(result.part_id),
        "meas_id": as_id(result.meas_id),
        "score_x1000": result.score * 1000,
        "normalized_x1000": normalized * 1000 if normalized >= 0 else -1,
        "score": result.score,
        "normalized_score": normalized,
        "inference_ms": result.inference_ms,
        "total_ms": result.total_ms,
        "width": result.width,
        "height": result.height,
        "region_count": len(result.regions),
    }
    for n, region in enumerate(result.regions[:REGIONS], start=1):
        values |= {
            f"region{n}_x": region.x,
            f"region{n}_y": region.y,
            f"region{n}_w": region.width,
            f"region{n}_h": region.height,
            f"region{n}_cx": region.x + region.width // 2,
            f"region{n}_cy": region.y + region.height // 2,
            f"region{n}_area": region.area,
        }
    return values


# ---- the printed map --------------------------------------------------------------------------------------------

Row = tuple[str, ...]
COLUMNS: Row = ("address", "4xxxx", "name", "type", "access", "unit", "description")
BIT_COLUMNS: Row = ("bit", "mask", "name", "meaning")


def _rows() -> list[Row]:
    rows: list[Row] = []
    for f in FIELDS:
        last = f" .. {f.end - 1}" if f.words > 1 else ""
        ref = f"{40001 + f.address}" + (f" .. {40001 + f.end - 1}" if f.words > 1 else "")
        type_ = f"{f.type} × {f.count}" if f.count > 1 else f.type
        rows.append((f"{f.address}{last}", ref, f.name, type_, "R/W" if f.writable else "R", f.unit, f.description))
    return rows


def _bit_rows(bits: tuple[tuple[int, str, str], ...]) -> list[Row]:
    return [(str(bit), f"0x{1 << bit:04X}", name, text) for bit, name, text in bits]


def _sections() -> list[tuple[str, Row, list[Row]]]:
    control = BY_NAME["control"].address
    return [
        ("Registers", COLUMNS, _rows()),
        ("Status bits (register 1)", BIT_COLUMNS, _bit_rows(STATUS_BITS)),
        (f"Control bits (register {control})", BIT_COLUMNS, _bit_rows(CONTROL_BITS)),
    ]


def map_text() -> str:
    """The map as aligned text, for a terminal."""
    out: list[str] = []
    for title, header, rows in _sections():
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        out.append(title + ":")
        for row in [header, *rows]:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
        out.append("")
    return "\n".join(out)


def map_markdown() -> str:
    """The map as Markdown tables, for docs/plc.md (register names in code style)."""
    out: list[str] = []
    for title, header, rows in _sections():
        name = header.index("name")
        out += [f"{title}:", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in rows:
            cells = [f"`{c}`" if i == name else c.replace("|", "\\|") for i, c in enumerate(row)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
