"""Small pieces the test modules share: a free loopback port, waiting for a started server, a line link's health
and metrics as the running service reports them (/readyz and /metrics), stand-in service controls for the
link's sinks, and a throwaway CA with a server certificate for the TLS tests."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from inspector.link.result import LineStatus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_health(client: TestClient, kind: str) -> dict[str, Any]:
    """The one link of `kind` as /readyz lists it."""
    (link,) = [h for h in client.get("/readyz").json()["links"] if h["kind"] == kind]
    return dict(link)


def link_metric(client: TestClient, name: str, kind: str) -> float:
    """The value of a per-link Prometheus gauge for the one link of `kind`."""
    match = re.search(rf'^{name}\{{kind="{kind}",link="[^"]*"\}} (\S+)$', client.get("/metrics").text, re.M)
    assert match, name
    return float(match.group(1))


class StubControls:
    """The service as the line link sees it, for sinks tested without the service: a status the test may replace,
    review bands recorded, and operator rights for `key` (for everyone when None, as a service without keys)."""

    def __init__(self, recipes: tuple[str, ...] = ("synthetic",), key: str | None = None) -> None:
        self.status = LineStatus("Operational", True, False, None, recipes, 0)
        self.key = key
        self.bands: dict[str, tuple[float, float] | None] = {}

    def line_status(self) -> LineStatus:
        return self.status

    def recipes(self) -> tuple[str, ...]:
        return self.status.recipes

    def set_review_band(self, model: str, band: tuple[float, float] | None) -> None:
        self.bands[model] = band

    def is_operator(self, key: str | None) -> bool:
        return self.key is None or key == self.key


def wait_ready(server: subprocess.Popen[bytes], url: str, timeout_s: float = 90) -> None:
    """Until a started `inspector serve` answers /readyz 200; fails with its stderr if it exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        assert time.monotonic() < deadline, f"{url} not ready after {timeout_s} s"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def wait_for(condition: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """The first truthy value of `condition()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)
    return value


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: CA, certificate, key (PEM files)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test plant CA")])
    now = datetime.now(UTC)

    def certificate(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    ca = (
        certificate(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    private = serialization.PrivateFormat.TraditionalOpenSSL
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, private, serialization.NoEncryption()))
    return paths
