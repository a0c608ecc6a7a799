"""The OPC UA server as a PLC or SCADA client sees it: a real asyncua client on loopback, against the running
service (values, events, rights) and against the sink alone (state changes, security, start-up errors)."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi.testclient import TestClient

from inspector.link.hub import LinkHub
from inspector.link.opcua import ClientTrust, OpcUaSink, OperatorUsers, trust_store
from inspector.link.opcua_model import INSPECTOR_NS, MV_NS, node_id
from inspector.link.result import LineResult, MachineState
from inspector.link.settings import LinkSettings, OpcUaSettings
from inspector.link.sink import LinkError, SinkHealth
from tests.helpers import StubControls, free_port
from tests.test_service import running, settings_for

NODESET = Path(__file__).resolve().parents[2] / "shared" / "opcua" / "Opc.Ua.MachineVision.NodeSet2.xml"
OPERATOR_KEY = "operator-key-7"
CAMERA_KEY = "camera-key-3"
WAIT_S = 5.0


def url(port: int, user: str | None = None, password: str | None = None) -> str:
    return f"opc.tcp://{user}:{password}@127.0.0.1:{port}/" if user else f"opc.tcp://127.0.0.1:{port}/"


async def eventually(check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll a check (plain or async) until it returns something truthy, or give its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


class Tree:
    """Browse paths into the server, by namespace URI as a client must resolve them."""

    def __init__(self, client: Client, ins: int, mv: int) -> None:
        self.client, self.ins, self.mv = client, ins, mv

    @classmethod
    async def of(cls, client: Client) -> Tree:
        return cls(client, await client.get_namespace_index(INSPECTOR_NS), await client.get_namespace_index(MV_NS))

    async def node(self, *path: str) -> Node:
        return await self.client.nodes.objects.get_child([f"{self.ins}:VisionSystem", *(self._name(p) for p in path)])

    async def read(self, *path: str) -> Any:
        return await (await self.node(*path)).read_value()

    async def call(self, method: str, *args: Any) -> Any:
        folder = await self.node("Inspector")
        return await folder.call_method(f"{self.ins}:{method}", *args)

    async def state(self) -> str:
        node = await self.node("MV:VisionStateMachine", "CurrentState")
        return (await node.read_value()).Text

    async def is_in(self, state: str) -> bool:
        return await self.state() == state

    def _name(self, part: str) -> str:
        if part.startswith("MV:"):
            return f"{self.mv}:{part[3:]}"
        return f"0:{part}" if part in ("CurrentState", "Id") else f"{self.ins}:{part}"


class Events:
    """A subscription handler that keeps every ResultReady event."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.received.append(event)


async def subscribe_results(client: Client, tree: Tree) -> Events:
    events = Events()
    subscription = await client.create_subscription(50, events)
    event_type = client.get_node(node_id("ResultReadyEventType", tree.ins))
    await subscription.subscribe_events(await tree.node(), event_type)
    return events


# ---- against the running service --------------------------------------------------------------------------------


@dataclass
class Service:
    http: TestClient
    port: int

    @property
    def sink(self) -> OpcUaSink:
        (sink,) = self.http.app.state.links.sinks  # type: ignore[attr-defined]
        return sink

    def inspect(self, path: Path, **params: str) -> dict[str, Any]:
        response = self.http.post(
            "/v1/inspect",
            files={"image": (path.name, path.read_bytes(), "image/png")},
            params=params,
            headers={"X-API-Key": CAMERA_KEY},
        )
        assert response.status_code == 200, response.text
        return response.json()


def serve(model_dir: Path, tmp: Path, nodeset: Path | None) -> Iterator[Service]:
    """The service with an OPC UA link and keys, on a copy of the model (SetReviewBand writes a calibration)."""
    models = tmp / "synthetic"
    shutil.copytree(model_dir, models)
    port = free_port()
    links = LinkSettings(plc=[f"opcua://127.0.0.1:{port}"], opcua=OpcUaSettings(nodeset=nodeset))
    settings = settings_for(models, tmp / "store", operator_key=OPERATOR_KEY, camera_key=CAMERA_KEY, links=links)
    with running(settings) as http:
        yield Service(http, port)


@pytest.fixture(scope="module")
def service(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from serve(service_model_dir, tmp_path_factory.mktemp("opcua"), None)


@pytest.fixture(scope="module")
def service_nodeset(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if not NODESET.is_file():
        pytest.skip(f"the OPC 40100 NodeSet2 is not at {NODESET}")
    yield from serve(service_model_dir, tmp_path_factory.mktemp("opcua-nodeset"), NODESET)


@pytest.mark.parametrize("shape", ["service", "service_nodeset"])
def test_nodes_and_event_hold_exactly_the_last_inspection(
    shape: str, request: pytest.FixtureRequest, images: dict[str, Path]
) -> None:
    service: Service = request.getfixturevalue(shape)

    async def check() -> None:
        async with Client(url(service.port)) as client:
            tree = await Tree.of(client)
            events = await subscribe_results(client, tree)
            assert await eventually(lambda: tree.is_in("Operational")), "never Operational"  # refreshed every 0.5 s
            assert await tree.read("Inspector", "State") == "Operational"
            assert await tree.read("Inspector", "StateCode") == 3
            state_id = await tree.read("MV:VisionStateMachine", "CurrentState", "Id")
            assert (
                state_id.NamespaceIndex == tree.mv
                if shape == "service_nodeset"
                else state_id.NamespaceIndex == tree.ins
            )

            good = await asyncio.to_thread(service.inspect, images["good"], part_id="P-1")
            bad = await asyncio.to_thread(service.inspect, images["defect"], part_id="P-2", meas_id="M-2")
            assert await eventually(lambda: len(events.received) >= 2), "no ResultReady event"

            first, second = events.received[-2:]
            assert (first.InspectionId, second.InspectionId) == (good["id"], bad["id"])
            assert second.Sequence == first.Sequence + 1
            assert (second.Verdict, second.VerdictCode, second.Score) == ("fail", 3, bad["score"])
            assert second.Model == "synthetic" and second.Recipe == 1
            if shape == "service_nodeset":  # the standard's own fields, as MV structures
                assert second.ResultId.Id == bad["id"]
                assert second.PartId.Id == "P-2" and second.MeasId.Id == "M-2"
                assert second.ResultState == 1 and second.IsPartial is False
                assert second.InternalRecipeId.Id == "synthetic"
                assert second.CreationTime == await tree.read("Inspector", "LastResult", "CreationTime")

            assert await tree.read("Inspector", "LastResult", "Sequence") == second.Sequence
            assert await tree.read("Inspector", "LastResult", "ResultId") == bad["id"]
            assert await tree.read("Inspector", "LastResult", "PartId") == "P-2"
            assert await tree.read("Inspector", "LastResult", "MeasId") == "M-2"
            assert await tree.read("Inspector", "LastResult", "Verdict") == "fail"
            assert await tree.read("Inspector", "LastResult", "VerdictCode") == 3
            assert await tree.read("Inspector", "LastResult", "Score") == bad["score"]
            assert await tree.read("Inspector", "LastResult", "NormalizedScore") == bad["normalized_score"]
            assert await tree.read("Inspector", "LastResult", "Threshold") == bad["threshold"]
            assert await tree.read("Inspector", "LastResult", "Width") == bad["width"]
            created = await tree.read("Inspector", "LastResult", "CreationTime")
            assert abs(created.timestamp() - time.time()) < 60

            regions = bad["regions"]
            assert regions and await tree.read("Inspector", "LastResult", "RegionCount") == len(regions)
            largest = min(regions, key=lambda r: (-r["area"], -r["peak"]))
            box = [
                await tree.read("Inspector", "LastResult", "Regions", axis) for axis in ("X", "Y", "Width", "Height")
            ]
            assert [values[0] for values in box] == [largest["x"], largest["y"], largest["width"], largest["height"]]
            areas = await tree.read("Inspector", "LastResult", "Regions", "Area")
            assert areas == sorted(areas, reverse=True)
            assert (
                await tree.read("Inspector", "LastResult", "ProcessingTimes", "TotalMs") == bad["timings_ms"]["total"]
            )
            assert "search" in await tree.read("Inspector", "LastResult", "ProcessingTimes", "StageNames")

    asyncio.run(check())
    assert service.sink.health().failed == 0


def test_operator_methods_need_the_operator_key(service: Service) -> None:
    async def check() -> None:
        async with Client(url(service.port)) as anonymous:
            tree = await Tree.of(anonymous)
            for method, args in (("SelectRecipe", ("synthetic",)), ("SetReviewBand", ("synthetic", 0.8, 1.2))):
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await tree.call(method, *args)
            assert await tree.read("Inspector", "Recipes") == ["synthetic"]  # reading stays open

        for user, password in (("operator", "wrong"), ("operator", CAMERA_KEY), ("admin", OPERATOR_KEY)):
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                async with Client(url(service.port, user, password)):
                    pass

        async with Client(url(service.port, "operator", OPERATOR_KEY)) as operator:
            tree = await Tree.of(operator)
            assert await tree.call("SelectRecipe", "synthetic") == "synthetic"
            assert await tree.read("Inspector", "SelectedRecipe") == 1
            assert await tree.read("Inspector", "SelectedModel") == "synthetic"
            assert await tree.call("SelectRecipe", "0") == ""
            assert await tree.read("Inspector", "SelectedRecipe") == 0
            assert await tree.call("SelectRecipe", "1") == "synthetic"

            assert await tree.call("SetReviewBand", "synthetic", 0.8, 1.25) is None
            registry = service.http.app.state.inspector.registry  # type: ignore[attr-defined]
            assert registry.get("synthetic").calibration.review_band == (0.8, 1.25)
            assert await tree.call("SetReviewBand", "", 0.0, 0.0) is None  # the selected recipe; no band
            assert registry.get("synthetic").calibration.review_band is None

    asyncio.run(check())


def test_bad_method_arguments_give_a_bad_status_and_the_server_goes_on(service: Service) -> None:
    async def check() -> None:
        async with Client(url(service.port, "operator", OPERATOR_KEY)) as operator:
            tree = await Tree.of(operator)
            for recipe in ("nope", "7", 7):
                with pytest.raises(ua.uaerrors.BadInvalidArgument):
                    await tree.call("SelectRecipe", recipe)
            with pytest.raises(ua.uaerrors.BadTypeMismatch):
                await tree.call("SelectRecipe", 1.5)
            for model, low, high in (
                ("synthetic", 1.5, 0.5),  # low above high
                ("synthetic", 0.0, 2.0),  # low must be above 0
                ("synthetic", 0.5, 0.9),  # high below the threshold
                ("synthetic", 0.5, float("inf")),
                ("other", 0.8, 1.2),
            ):
                with pytest.raises(ua.uaerrors.BadInvalidArgument):
                    await tree.call("SetReviewBand", model, low, high)
            with pytest.raises(ua.uaerrors.BadTypeMismatch):
                await tree.call("SetReviewBand", "synthetic", "low", "high")
            with pytest.raises(ua.uaerrors.BadArgumentsMissing):
                await tree.call("SetReviewBand", "synthetic")
            assert await tree.read("Inspector", "Recipes") == ["synthetic"]

    asyncio.run(check())


CLIENT_SCRIPT = """
import asyncio, sys
from asyncua import Client, ua

async def main():
    async with Client(sys.argv[1]) as client:
        ins = await client.get_namespace_index("urn:inspector:opcua")
        system = await client.nodes.objects.get_child(f"{ins}:VisionSystem")
        class Handler:
            def event_notification(self, event): pass
            def datachange_notification(self, node, value, data): pass
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_events(system, client.get_node(ua.NodeId("ResultReadyEventType", ins)))
        sequence = await system.get_child([f"{ins}:Inspector", f"{ins}:LastResult", f"{ins}:Sequence"])
        await subscription.subscribe_data_change(sequence)
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def settled_clients(service: Service, expected: int) -> SinkHealth:
    """The sink's health once `expected` clients are connected (another test's session may still be closing)."""
    deadline = time.monotonic() + WAIT_S
    while service.sink.health().clients != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return service.sink.health()


def test_a_client_killed_mid_run_does_not_disturb_inspections(service: Service, images: dict[str, Path]) -> None:
    before = settled_clients(service, 0)
    assert before.clients == 0
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, url(service.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert service.sink.health().clients == 1
        service.inspect(images["good"])
        proc.kill()  # no goodbye: the socket just dies
        proc.wait(10)
        answers = [service.inspect(images[kind]) for kind in ("defect", "good", "defect")]
    finally:
        proc.kill()
        proc.wait(10)

    async def last_id() -> str:
        async with Client(url(service.port)) as client:
            return await (await Tree.of(client)).read("Inspector", "LastResult", "ResultId")

    assert asyncio.run(last_id()) == answers[-1]["id"]
    after = settled_clients(service, 0)  # the killed client's session ends with its socket
    assert after.up and after.clients == 0
    assert after.failed == before.failed
    assert after.published == before.published + 4


# ---- the sink alone ---------------------------------------------------------------------------------------------


def line_result() -> LineResult:
    return LineResult(
        sequence=1,
        inspection_id="i-1",
        created=time.time(),
        model="a",
        recipe=1,
        model_version="v",
        verdict="pass",
        score=0.5,
        normalized_score=0.5,
        threshold=1.0,
        regions=(),
        width=8,
        height=8,
        part_id=None,
        meas_id=None,
        line=None,
        camera=None,
        inference_ms=1.0,
        total_ms=2.0,
    )


@pytest.fixture
def started() -> Iterator[tuple[LinkHub, int]]:
    port = free_port()
    hub = LinkHub([OpcUaSink("127.0.0.1", port, OpcUaSettings())], StubControls(("a", "b")))
    hub.start()
    try:
        yield hub, port
    finally:
        hub.stop()


def test_the_state_variable_follows_the_service(started: tuple[LinkHub, int]) -> None:
    hub, port = started
    controls = hub.controls
    assert isinstance(controls, StubControls)

    async def check() -> None:
        async with Client(url(port)) as client:
            tree = await Tree.of(client)
            changes: list[tuple[MachineState, str | None]] = [
                ("Error", "model failed to load"),
                ("Halted", None),
                ("Operational", None),
            ]
            for state, error in changes:
                controls.status = replace(controls.status, state=state, error=error)
                assert await eventually(partial(tree.is_in, state)), f"CurrentState never became {state}"
                assert await tree.read("Inspector", "State") == state
                assert await tree.read("Inspector", "Error") == (error or "")
                assert await tree.read("Inspector", "Ready") is (state == "Operational")
                state_id = await tree.read("MV:VisionStateMachine", "CurrentState", "Id")
                number = await client.get_node(state_id).get_child("0:StateNumber")
                assert await number.read_value() == {"Error": 3, "Halted": 2, "Operational": 4}[state]

    asyncio.run(check())


def test_without_keys_every_client_is_operator(started: tuple[LinkHub, int]) -> None:
    hub, port = started

    async def check() -> None:
        async with Client(url(port)) as client:
            tree = await Tree.of(client)
            assert await tree.call("SelectRecipe", "b") == "b"
            assert await tree.call("SetReviewBand", "", 0.9, 1.1) is None

    asyncio.run(check())
    assert hub.selected_model == "b"
    assert isinstance(hub.controls, StubControls) and hub.controls.bands == {"b": (0.9, 1.1)}
    health = hub.health()[0]
    assert health.up and health.kind == "opcua" and f":{port}" in health.detail


def test_a_taken_port_stops_the_start_with_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sink = OpcUaSink("127.0.0.1", port, OpcUaSettings())
        with pytest.raises(LinkError, match=f"cannot listen on 127.0.0.1:{port}"):
            sink.start(LinkHub([sink], StubControls(("a", "b"))))
    assert not sink.health().up
    sink.publish(line_result())  # a sink that is not running counts the result as failed, and never raises
    assert sink.health().failed == 1


def make_certificate(folder: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    certificate = generate_self_signed_app_certificate(key, name, {}, names, [usage])
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}_key.pem"  # asyncua's client wants .pem names
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


def test_a_missing_or_foreign_nodeset_stops_the_start(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<UANodeSet><NamespaceUris><Uri>urn:other</Uri></NamespaceUris></UANodeSet>")
    for nodeset, message in ((tmp_path / "missing.xml", "is not a file"), (foreign, "cannot build the address space")):
        sink = OpcUaSink("127.0.0.1", free_port(), OpcUaSettings(nodeset=nodeset))
        with pytest.raises(LinkError, match=message):
            sink.start(LinkHub([sink], StubControls(("a", "b"))))
        assert not sink.health().up


def test_certificate_problems_stop_the_start(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "server", "urn:test:server", ExtendedKeyUsageOID.SERVER_AUTH)
    _, other_key = make_certificate(tmp_path, "other", "urn:test:other", ExtendedKeyUsageOID.SERVER_AUTH)
    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"not a certificate")
    for certificate, private_key, message in (
        (None, key, "needs links.opcua.certificate"),
        (tmp_path / "missing.pem", key, "cannot read the OPC UA certificate"),
        (garbage, key, "not a PEM or DER X.509 certificate"),
        (cert, garbage, "not an unencrypted PEM or DER key"),
        (cert, other_key, "does not belong to certificate"),
    ):
        settings = OpcUaSettings(security="basic256sha256", certificate=certificate, private_key=private_key)
        sink = OpcUaSink("127.0.0.1", free_port(), settings)
        with pytest.raises(LinkError, match=message):
            sink.start(LinkHub([sink], StubControls(("a", "b"))))


def test_basic256sha256_accepts_a_client_with_the_same_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = make_certificate(tmp_path, "server", "urn:test:inspector", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = make_certificate(tmp_path, "client", "urn:test:client", ExtendedKeyUsageOID.CLIENT_AUTH)
    port = free_port()
    settings = OpcUaSettings(security="basic256sha256", certificate=cert, private_key=key)
    hub = LinkHub([OpcUaSink("127.0.0.1", port, settings)], StubControls(("a", "b"), key=OPERATOR_KEY))
    hub.start()
    assert any("any client certificate is accepted" in r.getMessage() for r in caplog.records)  # no trust list

    async def check() -> None:
        client = Client(url(port))
        client.application_uri = "urn:test:client"
        client.set_user("operator")
        client.set_password(OPERATOR_KEY)
        await client.set_security(
            SecurityPolicyBasic256Sha256, str(client_cert), str(client_key), mode=ua.MessageSecurityMode.SignAndEncrypt
        )
        async with client:
            tree = await Tree.of(client)
            assert await tree.state() == "Operational"
            assert await tree.call("SelectRecipe", "a") == "a"
            endpoints = await client.get_endpoints()
            assert {e.SecurityPolicyUri for e in endpoints} == {SecurityPolicyBasic256Sha256.URI}
            assert endpoints[0].Server.ApplicationUri == "urn:test:inspector"  # taken from the certificate
        with pytest.raises(ua.UaError, match="No matching endpoints"):
            async with Client(url(port)):  # no security: no endpoint offers it
                pass

    try:
        asyncio.run(check())
    finally:
        hub.stop()


async def secure_client(port: int, cert: Path, key: Path, uri: str) -> Client:
    client = Client(url(port))
    client.application_uri = uri
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    return client


def test_trusted_clients_admit_only_the_certificates_in_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = make_certificate(tmp_path, "server", "urn:test:inspector", ExtendedKeyUsageOID.SERVER_AUTH)
    known_cert, known_key = make_certificate(tmp_path, "known", "urn:test:known", ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger_cert, stranger_key = make_certificate(
        tmp_path, "stranger", "urn:test:stranger", ExtendedKeyUsageOID.CLIENT_AUTH
    )
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    known = x509.load_pem_x509_certificate(known_cert.read_bytes())
    (trusted / "line-plc.crt").write_bytes(known.public_bytes(serialization.Encoding.DER))  # any name, DER or PEM
    port = free_port()
    settings = OpcUaSettings(security="basic256sha256", certificate=cert, private_key=key, trusted_clients=trusted)
    hub = LinkHub([OpcUaSink("127.0.0.1", port, settings)], StubControls(("a", "b"), key=OPERATOR_KEY))
    hub.start()

    async def check() -> None:
        async with await secure_client(port, known_cert, known_key, "urn:test:known") as client:
            tree = await Tree.of(client)
            assert await tree.state() == "Operational"
            with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
                async with await secure_client(port, stranger_cert, stranger_key, "urn:test:stranger"):
                    pass
            assert await tree.read("Inspector", "Recipes") == ["a", "b"]  # the trusted client goes on
        async with await secure_client(port, known_cert, known_key, "urn:test:known") as again:
            assert await (await Tree.of(again)).state() == "Operational"

    try:
        asyncio.run(check())
    finally:
        hub.stop()
    stranger = x509.load_pem_x509_certificate(stranger_cert.read_bytes())
    thumbprint = stranger.fingerprint(hashes.SHA1()).hex()
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and thumbprint in r.getMessage()]
    assert len(refusals) == 1 and "BadCertificateUntrusted" in refusals[0] and "CN=stranger" in refusals[0]
    assert not any("any client certificate is accepted" in r.getMessage() for r in caplog.records)


def test_a_session_on_an_untrusted_channel_is_refused_at_activation(tmp_path: Path) -> None:
    """A client may leave its certificate out of CreateSession; the secure channel's one is checked at activation."""
    known_cert, _ = make_certificate(tmp_path, "known", "urn:test:known", ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger_cert, _ = make_certificate(tmp_path, "stranger", "urn:test:stranger", ExtendedKeyUsageOID.CLIENT_AUTH)
    known, stranger = (x509.load_pem_x509_certificate(p.read_bytes()) for p in (known_cert, stranger_cert))
    trust = ClientTrust(tmp_path, asyncio.run(trust_store([known])))
    users = OperatorUsers(LinkHub([], StubControls(("a",))), trust)
    der = serialization.Encoding.DER
    assert users.get_user(None, certificate=known.public_bytes(der)) is not None  # type: ignore[arg-type]
    assert users.get_user(None, certificate=stranger.public_bytes(der)) is None  # type: ignore[arg-type]
    assert users.get_user(None, certificate=None) is None  # type: ignore[arg-type]


def test_trusted_clients_problems_stop_the_start(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, "server", "urn:test:server", ExtendedKeyUsageOID.SERVER_AUTH)
    empty, bad = tmp_path / "empty", tmp_path / "bad"
    empty.mkdir()
    bad.mkdir()
    (bad / "server.pem").write_bytes(cert.read_bytes())
    (bad / "notes.txt").write_text("not a certificate")
    for folder, message in (
        (bad, f"certificate {bad / 'notes.txt'} is not a PEM or DER"),
        (empty, "holds no certificate"),
        (tmp_path / "missing", "cannot read links.opcua.trusted_clients"),
    ):
        settings = OpcUaSettings(security="basic256sha256", certificate=cert, private_key=key, trusted_clients=folder)
        sink = OpcUaSink("127.0.0.1", free_port(), settings)
        with pytest.raises(LinkError, match=message):
            sink.start(LinkHub([sink], StubControls(("a", "b"))))
        assert not sink.health().up
    with pytest.raises(ValueError, match="trusted_clients needs security basic256sha256"):
        OpcUaSettings(trusted_clients=empty)
