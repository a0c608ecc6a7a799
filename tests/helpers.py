"""Small pieces the test modules share: a free loopback port, and a line link's health and metrics as the running
service reports them (/readyz and /metrics)."""

from __future__ import annotations

import re
import socket
from typing import Any

from fastapi.testclient import TestClient


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
