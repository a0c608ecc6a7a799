"""schemathesis against the service's own OpenAPI schema, every check on (`--checks all`: server errors, status
codes, content types, response schemas, headers, positive and negative data, auth, Allow on 405), with its
stateful phase following the schema's links, once with API keys configured and once without (loopback).

The exceptions, each with its reason, are in tests/data/schemathesis.toml; a real inspection's id is given for
the record routes so they are reached with an id that exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_ready

CONFIG = Path(__file__).parent / "data" / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
OPERATOR = "operator-key-schema"


@pytest.mark.skipif(not SCHEMATHESIS.is_file(), reason="needs schemathesis (the dev extra)")
@pytest.mark.parametrize("keys", [False, True], ids=["without-keys", "with-keys"])
def test_the_service_keeps_its_openapi_schema(
    service_model_dir: Path, images: dict[str, Path], tmp_path: Path, keys: bool
) -> None:
    model_dir = tmp_path / "models" / "synthetic"
    shutil.copytree(service_model_dir, model_dir)  # the run may load, promote and re-fit: never the shared one
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INSPECTOR_STORE_MIN_FREE_DISK_MB": "0", "INSPECTOR_WARMUP_RUNS": "1"}
    if keys:
        env |= {"INSPECTOR_CAMERA_KEY": "camera-key-schema", "INSPECTOR_OPERATOR_KEY": OPERATOR}
    command = [sys.executable, "-m", "inspector", "serve", "--models-dir", str(model_dir.parent), "--port"]
    command += [str(port), "--store-dir", str(tmp_path / "store")]
    headers = {"X-API-Key": OPERATOR} if keys else {}
    # Run where relative defaults (golden/) land in the test's folder, never in the checkout.
    with subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as server:
        try:
            wait_ready(server, url)
            part = {"image": ("p.png", images["defect"].read_bytes(), "image/png")}
            record = httpx.post(f"{url}/v1/inspect", files=part, headers=headers, timeout=30).json()
            config = tmp_path / "schemathesis.toml"
            config.write_text(f'[parameters]\nrecord_id = "{record["id"]}"\n\n' + CONFIG.read_text())
            run = [str(SCHEMATHESIS), "--no-color", "--config-file", str(config), "run", f"{url}/openapi.json"]
            run += ["--checks", "all", "--max-examples", "10", "--workers", "1", "--seed", "7"]
            run += ["--header", f"X-API-Key: {OPERATOR}"] if keys else []
            result = subprocess.run(run, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        finally:
            server.terminate()
            server.wait(30)
    assert result.returncode == 0, result.stdout[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 500, result.stdout[-2000:]
