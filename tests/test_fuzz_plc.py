"""The PLC inputs under random and malformed requests: random register writes and reads, raw garbage on the
Modbus port, and OPC UA method calls with wrong argument types and counts. Every request gets an answer (a result
or a protocol error), the servers keep serving, and the result block still frames each new result."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest
from asyncua import Client, ua
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from inspector.link import registers as reg
from inspector.link.hub import LinkHub
from inspector.link.modbus import ModbusSink
from inspector.link.opcua import OpcUaSink
from inspector.link.opcua_model import INSPECTOR_NS
from inspector.link.settings import ModbusSettings, OpcUaSettings
from tests.helpers import StubControls, free_port, wait_for
from tests.test_link_modbus import result

FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def modbus() -> Iterator[tuple[LinkHub, int]]:
    port = free_port()
    hub = LinkHub([ModbusSink("127.0.0.1", port, ModbusSettings(buffer=4))], StubControls(("a", "b")))
    hub.start()
    try:
        yield hub, port
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def plc(modbus: tuple[LinkHub, int]) -> Iterator[ModbusTcpClient]:
    client = ModbusTcpClient("127.0.0.1", port=modbus[1], timeout=3, retries=0)
    assert client.connect()
    yield client
    client.close()


def still_frames_results(hub: LinkHub, client: ModbusTcpClient) -> None:
    """After the abuse: reset the handshake as a PLC would, publish, and read a whole, framed result."""
    assert not client.write_registers(reg.BY_NAME["select_recipe"].address, [0, 3]).isError()
    sequence = hub.publish(result(7)).sequence

    def block() -> dict[str, int] | None:
        answer = client.read_holding_registers(0, count=reg.READ_END)
        assert not answer.isError(), answer
        values = reg.decode(answer.registers)
        return values if values["sequence"] == sequence else None

    values = wait_for(block, what="the new result in the block")
    assert values["sequence_end"] == sequence and values["part_id"] == 7


@FUZZ
@given(st.integers(0, 300), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20))
def test_random_register_writes_get_an_answer(
    modbus: tuple[LinkHub, int], plc: ModbusTcpClient, address: int, words: list[int]
) -> None:
    answer = plc.write_registers(address, words)
    assert answer is not None  # a normal answer or a Modbus exception, never silence
    if answer.isError():
        assert getattr(answer, "exception_code", 0) in (0x01, 0x02, 0x03, 0x04, 0x0B), answer
    assert plc.read_holding_registers(0, count=1) is not None


@FUZZ
@given(st.integers(0, 0xFFFF), st.integers(1, reg.MAX_READ), st.sampled_from([3, 4]))
def test_random_reads_get_data_or_an_exception(
    modbus: tuple[LinkHub, int], plc: ModbusTcpClient, address: int, count: int, function: int
) -> None:
    read = plc.read_holding_registers if function == 3 else plc.read_input_registers
    answer = read(address, count=count)
    assert answer is not None
    if not answer.isError():
        assert len(answer.registers) == count


@FUZZ
@given(st.binary(min_size=1, max_size=300))
def test_garbage_on_the_modbus_port_leaves_the_server_serving(
    modbus: tuple[LinkHub, int], plc: ModbusTcpClient, garbage: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", modbus[1]), timeout=2) as raw:
        raw.sendall(garbage)
        raw.settimeout(0.05)
        with contextlib.suppress(TimeoutError, ConnectionError):
            raw.recv(512)
    answer = plc.read_holding_registers(0, count=2)
    assert answer is not None and not answer.isError(), answer


def test_after_the_abuse_the_block_still_frames_each_result(modbus: tuple[LinkHub, int], plc: ModbusTcpClient) -> None:
    for address, words in ((100, [0xFFFF] * 8), (0, [1, 2, 3]), (107, [0xFFFF]), (60, [5])):
        plc.write_registers(address, words)
    still_frames_results(modbus[0], plc)


ARGUMENTS = st.lists(
    st.one_of(
        st.text(max_size=10),
        st.integers(-(2**31), 2**31 - 1),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.booleans(),
        st.lists(st.integers(0, 9), max_size=3),
    ),
    max_size=4,
)


def test_malformed_opcua_method_calls_get_bad_status_codes() -> None:
    """SelectRecipe and SetReviewBand called with random argument types and counts: each call returns or fails
    with an OPC UA status, the session survives, and a well-formed call still works afterwards."""
    port = free_port()
    hub = LinkHub([OpcUaSink("127.0.0.1", port, OpcUaSettings())], StubControls(("a", "b")))
    hub.start()
    calls = _argument_lists()

    async def check() -> None:
        async with Client(f"opc.tcp://127.0.0.1:{port}") as client:
            ns = await client.get_namespace_index(INSPECTOR_NS)
            folder = await client.nodes.objects.get_child([f"{ns}:VisionSystem", f"{ns}:Inspector"])
            failures = 0
            for method in ("SelectRecipe", "SetReviewBand"):
                for args in calls:
                    try:
                        await folder.call_method(f"{ns}:{method}", *(variant(a) for a in args))
                    except ua.UaStatusCodeError:
                        failures += 1
            assert failures > 0  # the wrong ones were refused, not taken
            assert await folder.call_method(f"{ns}:SelectRecipe", "b") == "b"

    try:
        asyncio.run(check())
    finally:
        hub.stop()
    assert hub.selected_model == "b"


def variant(value: object) -> ua.Variant:
    """An argument with its OPC UA type stated, as a PLC's client sends it (empty arrays included)."""
    if isinstance(value, bool):
        return ua.Variant(value, ua.VariantType.Boolean)
    if isinstance(value, int):
        return ua.Variant(value, ua.VariantType.Int32)
    if isinstance(value, float):
        return ua.Variant(value, ua.VariantType.Float)
    if isinstance(value, list):
        return ua.Variant(value, ua.VariantType.Int32, is_array=True)
    return ua.Variant(value, ua.VariantType.String)


def _argument_lists() -> list[list[object]]:
    """A fixed, reproducible spread of wrong (and a few right) argument lists."""
    found: list[list[object]] = []

    @settings(max_examples=40, derandomize=True, database=None)
    @given(ARGUMENTS)
    def collect(args: list[object]) -> None:
        found.append(args)

    collect()
    return [*found, [], ["a", "b", "c"], [float("nan")], ["a", float("inf"), float("-inf")], ["a", 2.0, 1.0]]
