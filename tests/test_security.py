"""Abuse from the factory network: keys kept hashed in the config, no cross-origin access, and no way out of the
service's folders through a model name, recipe name, calibration name or inspection id."""

from __future__ import annotations

import io
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from inspector.calibration import Calibration
from inspector.cli import main
from inspector.service.config import ServiceConfigError, load_settings
from inspector.service.keys import hash_key, key_matches
from tests.helpers import certificates, free_port, wait_for
from tests.test_service import running, settings_for

CAMERA, OPERATOR = "camera-key-sec", "operator-key-sec"
HOSTILE = [
    "../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "name%00.png",
    "..\\..\\windows\\win.ini",
    "..",
]


@pytest.fixture(scope="module")
def client(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    models = tmp_path_factory.mktemp("models")
    (models / "synthetic").symlink_to(service_model_dir)
    settings = settings_for(
        service_model_dir,
        tmp_path_factory.mktemp("store"),
        camera_key=CAMERA,
        operator_key=hash_key(OPERATOR),  # the config holds the operator key's hash only
        models_dir=models,
    )
    settings.models = []  # served from models_dir, so that names are resolved inside it
    with running(settings) as c:
        c.headers["X-API-Key"] = OPERATOR
        yield c


def test_a_hashed_key_grants_its_role_and_the_hash_itself_grants_nothing(client: TestClient) -> None:
    configured = client.app.state.settings.operator_key.get_secret_value()  # type: ignore[attr-defined]
    assert configured.startswith("sha256:") and OPERATOR not in configured
    assert client.get("/v1/audit").status_code == 200
    assert client.get("/v1/audit", headers={"X-API-Key": configured}).status_code == 401
    assert client.get("/v1/audit", headers={"X-API-Key": CAMERA}).status_code == 403
    assert client.get("/v1/inspections", headers={"X-API-Key": CAMERA}).status_code == 200


def test_a_truncated_hash_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ServiceConfigError, match=r"operator_key.*inspector keys hash"):
        load_settings(env={}, overrides={"operator_key": "sha256:0123abcd"})


def test_keys_new_and_hash_give_config_values_that_match_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["keys", "new", "--role", "operator"]) == 0
    shown, config = capsys.readouterr().out.splitlines()
    key = shown.rsplit(" ", 1)[1]
    hashed = config.split("operator_key: ", 1)[1]
    assert len(key) >= 40 and key_matches(key, hashed) and not key_matches(key + "x", hashed)

    monkeypatch.setattr("sys.stdin", io.StringIO("my-camera-key\n"))
    assert main(["keys", "hash"]) == 0
    hashed = capsys.readouterr().out.split("camera_key: ", 1)[1].strip()
    assert key_matches("my-camera-key", hashed) and hash_key("my-camera-key") != hashed  # salted: differs each time


def test_cross_origin_requests_get_no_cors_grant(client: TestClient) -> None:
    """CORS is closed: a page on another origin can neither preflight nor read an answer."""
    origin = {"Origin": "http://attacker.example"}
    preflight = client.options(
        "/v1/inspect",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    answer = client.get("/v1/models", headers=origin)
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_every_answer_carries_a_strict_content_security_policy(client: TestClient) -> None:
    for path in ("/", "/js/app.js", "/v1/models", "/healthz", "/v1/inspections/nope"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in client.get("/docs").headers  # Swagger UI needs its CDN and inline script


@pytest.mark.parametrize("hostile", HOSTILE)
def test_no_route_reaches_outside_the_store_or_the_models(client: TestClient, hostile: str) -> None:
    """Every route that takes a name or id answers a 4xx to a traversal attempt and never serves a file from
    elsewhere; a valid model keeps serving."""
    answers = [
        client.get(f"/v1/inspections/{hostile}"),
        client.get(f"/v1/inspections/{hostile}/image"),
        client.get(f"/v1/inspections/{hostile}/heatmap.png"),
        client.get(f"/v1/models/{hostile}"),
        client.get(f"/v1/models/{hostile}/calibrations"),
        client.put("/v1/models/synthetic/calibration", json={"name": hostile}),
        client.post("/v1/models", json={"name": hostile}),
        client.post("/v1/models", json={"dir": hostile}),
        client.delete(f"/v1/models/{hostile}"),
    ]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.method, answer.request.url, answer.status_code)
        assert b"root:" not in answer.content and b"[fonts]" not in answer.content
    assert client.get("/v1/models/synthetic").status_code == 200


def test_a_calibration_outside_the_model_cannot_be_activated(client: TestClient, tmp_path: Path) -> None:
    """A well-formed calibration file planted beside the model folder is out of reach of `../` in its name."""
    model_dir = Path(client.get("/v1/models/synthetic").json()["dir"]).resolve()
    planted = model_dir.parent / "planted.json"
    planted.write_text(json.dumps(Calibration(image_threshold=1e9, rule="test", name="planted").to_dict()))
    try:
        for name in ("../../planted", "..%2F..%2Fplanted", str(planted.with_suffix(""))):
            answer = client.put("/v1/models/synthetic/calibration", json={"name": name})
            assert answer.status_code in (404, 422), (name, answer.status_code)
        assert client.get("/v1/models/synthetic").json()["calibration"]["name"] != "planted"
    finally:
        planted.unlink()


def test_https_with_the_configured_certificate(service_model_dir: Path, tmp_path: Path) -> None:
    """`serve --tls-cert --tls-key` answers HTTPS that a client verifying against the plant's CA accepts, and
    nothing in plain HTTP on the same port."""
    ca, cert, key = certificates(tmp_path)
    port = free_port()
    command = [sys.executable, "-m", "inspector.cli", "serve", "--model-dir", str(service_model_dir)]
    command += ["--port", str(port), "--store-dir", str(tmp_path / "store"), "--tls-cert", str(cert)]
    with subprocess.Popen([*command, "--tls-key", str(key)], stderr=subprocess.PIPE, text=True) as service:
        try:
            url = f"https://127.0.0.1:{port}/healthz"
            wait_for(lambda: _answers(url, ca), timeout=60, what="the HTTPS service")
            assert httpx.get(url, verify=ssl.create_default_context(cafile=ca)).json()["status"] == "ok"
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        finally:
            service.terminate()
            service.wait(15)


def test_a_key_that_does_not_fit_the_certificate_stops_serve_with_one_line(
    service_model_dir: Path, tmp_path: Path
) -> None:
    _, cert, _ = certificates(tmp_path)
    (tmp_path / "other").mkdir()
    _, _, other_key = certificates(tmp_path / "other")
    with pytest.raises(ServiceConfigError, match="tls_key"):
        load_settings(env={}, overrides={"tls_cert": cert})
    command = [sys.executable, "-m", "inspector.cli", "serve", "--model-dir", str(service_model_dir), "--port", "1"]
    command += ["--store-dir", str(tmp_path / "store"), "--tls-cert", str(cert), "--tls-key", str(other_key)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: tls_cert") and "Traceback" not in result.stderr


def _answers(url: str, ca: Path) -> bool:
    try:
        return httpx.get(url, verify=ssl.create_default_context(cafile=ca), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
