"""The Modbus TCP link as a PLC sees it: a real pymodbus client against the running service on loopback."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymodbus.client import ModbusTcpClient

from inspector.cli import main
from inspector.components.regions import Region
from inspector.data import Dataset
from inspector.link import registers as reg
from inspector.link.hub import LinkHub
from inspector.link.modbus import ModbusSink
from inspector.link.result import VERDICT_CODES, LineResult
from inspector.link.settings import LinkSettings, ModbusSettings
from inspector.link.sink import LinkError
from inspector.service.config import ModelSpec, Settings, StoreSettings
from tests.helpers import StubControls, free_port
from tests.test_service import running

BUFFER = 3
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plc.md"


@dataclass
class Line:
    http: TestClient
    port: int

    @property
    def url(self) -> str:
        return f"modbus://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def line(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """The service with two recipes (models a and b) and a Modbus server with a small buffer and a fast beat."""
    port = free_port()
    settings = Settings(
        models=[ModelSpec(dir=service_model_dir, name="a"), ModelSpec(dir=service_model_dir, name="b")],
        warmup_runs=1,
        threads=2,
        store=StoreSettings(dir=tmp_path_factory.mktemp("store"), min_free_disk_mb=0),
        links=LinkSettings(plc=[f"modbus://127.0.0.1:{port}"], modbus=ModbusSettings(buffer=BUFFER, heartbeat_ms=50)),
    )
    with running(settings) as http:
        yield Line(http, port)


@pytest.fixture
def plc(line: Line) -> Iterator[ModbusTcpClient]:
    """A PLC connection, with the handshake reset: buffer discarded, overrun cleared, no recipe selected."""
    client = connect(line.port)
    ok(client.write_registers(reg.BY_NAME["select_recipe"].address, [0, 3]))
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(dataset: Dataset) -> dict[str, bytes]:
    samples = dataset.test()
    return {
        "good": next(s.path for s in samples if not s.is_defect).read_bytes(),
        "defect": next(s.path for s in samples if s.defect_type == "hole").read_bytes(),
    }


def connect(port: int) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    assert client.connect()
    return client


def ok(answer: Any) -> Any:
    assert not answer.isError(), answer
    return answer


def block(client: ModbusTcpClient, function: int = 3) -> dict[str, Any]:
    read = client.read_holding_registers if function == 3 else client.read_input_registers
    return reg.decode(ok(read(0, count=reg.READ_END)).registers)


def ack(client: ModbusTcpClient, sequence: int) -> None:
    ok(client.write_registers(reg.BY_NAME["ack_sequence"].address, reg.to_words(reg.BY_NAME["ack_sequence"], sequence)))


def inspect(line: Line, image: bytes, **params: Any) -> dict[str, Any]:
    params = {"model": "a", **params}
    answer = line.http.post("/v1/inspect", files={"image": ("part.png", image, "image/png")}, params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def result_part(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in values.items() if reg.BY_NAME[k] in reg.RESULT)


def bit(values: dict[str, Any], name: str) -> bool:
    return bool(values["status"] & reg.STATUS_BIT[name])


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def assert_shows(values: dict[str, Any], answer: dict[str, Any]) -> None:
    """The block holds exactly this inspection: verdict, scores, the largest region's box."""
    assert values["sequence"] == values["sequence_end"] > 0
    assert values["verdict"] == VERDICT_CODES[answer["verdict"]]
    assert values["score"] == f32(answer["score"])
    assert values["score_x1000"] == round(answer["score"] * 1000)
    assert values["normalized_score"] == f32(answer["normalized_score"])
    assert (values["width"], values["height"]) == (answer["width"], answer["height"])
    assert values["region_count"] == len(answer["regions"])
    if answer["regions"]:
        largest = min(answer["regions"], key=lambda r: (-r["area"], -r["peak"]))
        box = (largest["x"], largest["y"], largest["width"], largest["height"], largest["area"])
        assert box == tuple(values[f"region1_{k}"] for k in ("x", "y", "w", "h", "area"))
        assert values["region1_cx"] == largest["x"] + largest["width"] // 2
    else:
        assert values["region1_w"] == values["region1_area"] == 0
    assert values["part_id"] == int(answer["part_id"] or 0)


# ---- the map ----------------------------------------------------------------------------------------------------


def test_map_fits_one_read_and_brackets_the_result_with_its_sequence() -> None:
    assert reg.READ_END <= reg.MAX_READ
    for fields in (reg.STATUS, reg.RESULT, reg.COMMANDS):
        assert all(a.end == b.address for a, b in itertools.pairwise(fields))
    assert reg.RESULT[0].name == "sequence" and reg.RESULT[-1].name == "sequence_end"
    assert all(f.address % 2 == 0 for f in reg.FIELDS if f.words == 2), "32-bit values on even addresses"
    assert reg.STATUS[0].address == 0 and reg.STATUS[-1].end == reg.RESULT[0].address
    words = reg.to_words(reg.BY_NAME["dropped"], 0x12345678)
    assert words == [0x1234, 0x5678], "high word first"
    assert reg.to_words(reg.BY_NAME["score_x1000"], -1) == [0xFFFF, 0xFFFF]
    assert reg.to_words(reg.BY_NAME["inference_ms"], 70_000) == [0xFFFF], "saturates"


def test_plc_map_prints_the_table_and_the_docs_carry_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plc", "map"]) == 0
    text = capsys.readouterr().out
    for field in reg.FIELDS:
        assert field.name in text
    assert "overrun" in text and "discard_buffer" in text
    assert main(["plc", "map", "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| 16 .. 17 | 40017 .. 40018 | `sequence` | UINT32 |" in markdown
    assert markdown in DOCS.read_text(), "docs/plc.md: paste the output of `inspector plc map --markdown`"


# ---- results in the registers -----------------------------------------------------------------------------------


def test_registers_hold_exactly_the_last_inspection(line: Line, plc: ModbusTcpClient, images: dict[str, bytes]) -> None:
    for kind in ("defect", "good"):
        answer = inspect(line, images[kind], part_id="123", meas_id="7")
        values = block(plc)
        assert_shows(values, answer)
        assert result_part(block(plc, function=4)) == result_part(values), "function 4 reads the same registers"
        assert (values["meas_id"], values["recipe"], values["buffered"]) == (7, 1, 1)
        assert values["newest_sequence"] == values["sequence"]
        assert bit(values, "result_valid") and bit(values, "handshake")
        verdict_bits = {name for name in ("pass", "review", "fail") if bit(values, name)}
        assert verdict_bits == {answer["verdict"]}
        ack(plc, values["sequence"])
        after = block(plc)
        assert not any(bit(after, name) for name in ("result_valid", "pass", "review", "fail"))
        assert after["sequence"] == values["sequence"], "the last result stays readable after its acknowledge"


def test_status_word_state_and_heartbeat(line: Line, plc: ModbusTcpClient) -> None:
    first = block(plc)
    assert bit(first, "ready") and bit(first, "models_loaded") and not bit(first, "error")
    assert (first["state"], first["recipes"]) == (3, 2)
    time.sleep(0.3)
    assert (block(plc)["heartbeat"] - first["heartbeat"]) % 65536 >= 2, "the heartbeat ticks every 50 ms"


def test_reads_during_a_burst_never_see_a_mixed_record(
    line: Line, plc: ModbusTcpClient, images: dict[str, bytes]
) -> None:
    """A PLC acknowledges each result as it comes while a second client hammers the block with function 4."""
    before = block(plc)["newest_sequence"]
    seen: dict[int, set[tuple[Any, ...]]] = {}
    torn: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    reads = [0]
    done = threading.Event()

    def read(function: int, acknowledge: bool) -> None:
        client = connect(line.port)
        try:
            while not done.is_set():
                values = block(client, function)
                reads[0] += 1
                if values["sequence"] != values["sequence_end"]:
                    torn.append(values)
                if values["sequence"] > before:  # the shown result stays readable after its acknowledge
                    seen.setdefault(values["sequence"], set()).add(result_part(values))
                if acknowledge and bit(values, "result_valid"):
                    ack(client, values["sequence"])
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close()

    readers = [threading.Thread(target=read, args=(3, True)), threading.Thread(target=read, args=(4, False))]
    for reader in readers:
        reader.start()
    try:
        answers = {
            n: inspect(line, images["defect" if n % 2 else "good"], part_id=str(n), meas_id="1") for n in range(1, 9)
        }
        deadline = time.monotonic() + 10
        while block(plc)["buffered"] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        done.set()
        for reader in readers:
            reader.join(10)
    assert not failures
    assert reads[0] > 100, "a hammer, not a poll"
    assert not torn
    assert not bit(block(plc), "overrun"), "the acknowledging reader kept up"
    shown = {}
    for sequence, results in seen.items():
        assert len(results) == 1, f"result {sequence} read two ways: {results}"
        values = dict(next(iter(results)))
        shown[values["part_id"]] = values
    assert sorted(shown) == list(answers), "every result was shown"
    for part, answer in answers.items():
        assert_shows(shown[part], answer)


def test_unacknowledged_results_fill_the_buffer_and_set_overrun(
    line: Line, plc: ModbusTcpClient, images: dict[str, bytes]
) -> None:
    dropped = block(plc)["dropped"]
    answers = [inspect(line, images["good"], part_id=str(n)) for n in range(1, BUFFER + 3)]
    values = block(plc)
    assert values["buffered"] == BUFFER and bit(values, "overrun")
    assert values["dropped"] == dropped + 2
    assert values["part_id"] == 3, "the two oldest were dropped; the oldest kept is shown"
    health = next(h for h in line.http.get("/v1/links").json() if h["kind"] == "modbus")
    assert health["up"] and health["failed"] >= 2 and "overrun" in health["detail"]
    for expected in answers[2:]:
        values = block(plc)
        assert bit(values, "result_valid")
        assert_shows(values, expected)
        ack(plc, values["sequence"])
        ack(plc, values["sequence"])  # a repeated acknowledge (a PLC's retry) changes nothing
    values = block(plc)
    assert values["buffered"] == 0 and not bit(values, "result_valid") and bit(values, "overrun")
    ok(plc.write_register(reg.BY_NAME["control"].address, reg.CONTROL_BIT["clear_overrun"]))
    assert not bit(block(plc), "overrun")
    assert ok(plc.read_holding_registers(reg.BY_NAME["control"].address, count=1)).registers == [0]


def test_a_plc_that_drops_and_reconnects_does_not_disturb_inspections(
    line: Line, plc: ModbusTcpClient, images: dict[str, bytes]
) -> None:
    errors: list[str] = []

    def camera() -> None:
        for n in range(4):
            answer = line.http.post(
                "/v1/inspect", files={"image": ("p.png", images["good"], "image/png")}, params={"model": "a"}
            )
            if answer.status_code != 200:
                errors.append(f"{n}: {answer.status_code} {answer.text}")

    shooter = threading.Thread(target=camera)
    shooter.start()
    while shooter.is_alive():
        killed = socket.create_connection(("127.0.0.1", line.port))
        killed.sendall(b"\x00\x01\x00\x00\x00\x06\x01")  # half a request, then a reset
        killed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        killed.close()
        client = connect(line.port)
        block(client)
        client.close()
        time.sleep(0.01)
    shooter.join()
    assert not errors
    answer = inspect(line, images["defect"], part_id="99")
    fresh = connect(line.port)
    try:
        values = block(fresh)
        assert values["buffered"] >= 1
        while values["part_id"] != 99:  # drain what the camera thread left, in order
            ack(fresh, values["sequence"])
            values = block(fresh)
        assert_shows(values, answer)
        health = next(h for h in line.http.get("/v1/links").json() if h["kind"] == "modbus")
        assert health["up"] and health["clients"] >= 2 and "client" in health["detail"]
    finally:
        fresh.close()


# ---- what the PLC writes ----------------------------------------------------------------------------------------


def test_bad_requests_get_modbus_exceptions_and_the_server_lives_on(
    line: Line, plc: ModbusTcpClient, images: dict[str, bytes]
) -> None:
    def code(answer: Any) -> int:
        assert answer.isError(), answer
        return int(answer.exception_code)

    recipe = reg.BY_NAME["select_recipe"].address
    assert code(plc.write_register(recipe, 3)) == 0x03, "only recipes 1 and 2 are served"
    assert code(plc.write_registers(recipe, [1, 0x80])) == 0x03, "unknown control bit: nothing is applied"
    assert block(plc)["selected_recipe"] == 0
    assert code(plc.write_register(0, 1)) == 0x02, "the status block is read-only"
    assert code(plc.write_register(reg.BY_NAME["sequence"].address, 1)) == 0x02
    assert code(plc.write_register(500, 1)) == 0x02
    assert code(plc.write_registers(reg.COMMANDS[-1].address, [0, 0])) == 0x02, "runs past the commands"
    assert code(plc.read_holding_registers(reg.READ_END - 1, count=2)) == 0x02
    assert code(plc.read_input_registers(1000, count=1)) == 0x02
    assert code(plc.read_coils(0, count=1)) == 0x01
    never = block(plc)["newest_sequence"] + 1000
    field = reg.BY_NAME["ack_sequence"]
    assert code(plc.write_registers(field.address, reg.to_words(field, never))) == 0x03
    assert code(plc.read_holding_registers(0, count=2, device_id=7)) == 0x0B, "wrong unit id"
    answer = inspect(line, images["good"], part_id="5")
    assert_shows(block(plc), answer)


def test_plc_ids_land_in_the_next_inspection_only(line: Line, plc: ModbusTcpClient, images: dict[str, bytes]) -> None:
    part = reg.BY_NAME["next_part_id"]
    ok(plc.write_registers(part.address, [*reg.to_words(part, 4711), *reg.to_words(part, 42)]))
    first = inspect(line, images["good"])
    assert (first["part_id"], first["meas_id"]) == ("4711", "42")
    stored = line.http.get(f"/v1/inspections/{first['id']}").json()
    assert (stored["part_id"], stored["meas_id"]) == ("4711", "42")
    values = block(plc)
    assert (values["part_id"], values["meas_id"]) == (4711, 42)
    ack(plc, values["sequence"])
    second = inspect(line, images["good"])
    assert (second["part_id"], second["meas_id"]) == (None, None)
    ack(plc, block(plc)["sequence"])
    # A 32-bit id written with two single-register writes takes effect with its low word.
    ok(plc.write_register(part.address, 1))
    ok(plc.write_register(part.address + 1, 2))
    assert inspect(line, images["good"])["part_id"] == str(65536 + 2)
    ok(plc.write_registers(part.address, reg.to_words(part, 5)))
    camera_wins = inspect(line, images["good"], part_id="C-1")
    assert (camera_wins["part_id"], camera_wins["meas_id"]) == ("C-1", None)
    ack(plc, block(plc)["newest_sequence"])  # acknowledges every result up to the newest
    assert block(plc)["part_id"] == 0, "an id that is no number reads 0"
    assert inspect(line, images["good"])["part_id"] is None, "the PLC's id was meant for the part that took it"


def test_recipe_select_by_register_picks_the_model(line: Line, plc: ModbusTcpClient, images: dict[str, bytes]) -> None:
    recipe = reg.BY_NAME["select_recipe"].address
    assert (
        line.http.post("/v1/inspect", content=images["good"], headers={"content-type": "image/png"}).status_code == 400
    )
    ok(plc.write_register(recipe, 2))
    assert block(plc)["selected_recipe"] == 2
    answer = line.http.post("/v1/inspect", content=images["good"], headers={"content-type": "image/png"})
    assert answer.status_code == 200 and answer.json()["model"] == "b"
    assert block(plc)["recipe"] == 2
    assert inspect(line, images["good"], model="a")["model"] == "a", "the camera's choice wins"
    ok(plc.write_register(recipe, 0))
    assert block(plc)["selected_recipe"] == 0


# ---- the sink alone ---------------------------------------------------------------------------------------------


def result(n: int, regions: tuple[Region, ...] = ()) -> LineResult:
    return LineResult(
        sequence=0,
        inspection_id=f"i{n}",
        created=0.0,
        model="a",
        recipe=1,
        model_version="v",
        verdict="fail" if regions else "pass",
        score=n / 10,
        normalized_score=None,
        threshold=None,
        regions=regions,
        width=640,
        height=480,
        part_id=str(n),
        meas_id=None,
        line=None,
        camera=None,
        inference_ms=12.6,
        total_ms=99_999.0,
    )


def test_without_handshake_the_block_shows_the_newest_result() -> None:
    port = free_port()
    hub = LinkHub([ModbusSink("127.0.0.1", port, ModbusSettings(handshake=False))], StubControls(("a",)))
    hub.start()
    try:
        assert hub.health()[0].detail == "listening, no PLC connected"
        client = connect(port)
        assert block(client)["sequence"] == 0 and not bit(block(client), "result_valid")
        assert hub.health()[0].detail == "listening, 1 client"
        hub.publish(result(1))
        big = Region(x=600, y=470, width=70_000, height=30, area=70_000, peak=9.0)
        hub.publish(result(2, (big, Region(1, 2, 3, 4, 5, 1.0))))
        deadline = time.monotonic() + 5
        while (values := block(client))["sequence"] != 2:
            assert time.monotonic() < deadline
        assert bit(values, "result_valid") and bit(values, "fail") and not bit(values, "handshake")
        assert (values["buffered"], values["part_id"], values["region_count"]) == (0, 2, 2)
        assert (values["region1_x"], values["region1_w"], values["region1_area"]) == (600, 65535, 70_000)
        assert (values["region2_cx"], values["region2_cy"]) == (1 + 1, 2 + 2)
        assert (values["normalized_x1000"], values["normalized_score"]) == (-1, -1.0)
        assert (values["inference_ms"], values["total_ms"]) == (13, 65535)
        ack(client, 1)  # acknowledging is harmless without the handshake
        assert block(client)["sequence"] == 2
        client.close()
        assert hub.health()[0].published == 2
    finally:
        hub.stop()
    assert not hub.health()[0].up


def test_a_port_in_use_stops_the_start_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = ModbusSink("127.0.0.1", port, ModbusSettings())
        with pytest.raises(LinkError, match=f"cannot listen on 127.0.0.1:{port}"):
            LinkHub([sink], StubControls(("a",))).start()


# ---- inspector plc watch ----------------------------------------------------------------------------------------


def test_plc_watch_prints_and_acknowledges_each_result(
    line: Line, plc: ModbusTcpClient, images: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    answers = [inspect(line, images[kind], part_id=str(n)) for n, kind in ((11, "defect"), (12, "good"))]
    first = block(plc)["sequence"]
    assert main(["plc", "watch", line.url, "--ack", "--count", "2", "--interval", "0.01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("connected: state Operational, 2 recipes, handshake on, 2 buffered")
    assert out[1].startswith(f"#{first}  {answers[0]['verdict']}") and "part 11" in out[1]
    assert out[2].startswith(f"#{first + 1}  {answers[1]['verdict']}") and "part 12" in out[2]
    assert block(plc)["buffered"] == 0


def test_plc_watch_without_a_server_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plc", "watch", f"modbus://127.0.0.1:{free_port()}", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to modbus://127.0.0.1:") and err.count("\n") == 1
