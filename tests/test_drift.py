"""Drift watch: the statistics and tests, the alarm on a lighting change and silence on a stable stream, and the
alarm where the line sees it (/v1/drift, /metrics, /readyz, the PLC status word, OPC UA, `inspector drift`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from asyncua import Client
from fastapi.testclient import TestClient
from pymodbus.client import ModbusTcpClient
from scipy import stats

from inspector.calibration import Calibration
from inspector.calibration.calibration import GOOD_SCORES
from inspector.cli import main
from inspector.components.drift import (
    REFERENCE_FILE,
    DriftMonitor,
    DriftReference,
    DriftReferenceError,
    DriftRule,
    bin_edges,
    bin_fractions,
    image_statistics,
    ks_test,
    psi,
    rank_sum_test,
)
from inspector.data import Dataset, read_image
from inspector.link import registers as reg
from inspector.link.hub import LinkHub
from inspector.link.opcua import OpcUaSink
from inspector.link.settings import LinkSettings, ModbusSettings, OpcUaSettings
from inspector.models.persistence import MANIFEST
from inspector.service.config import ModelSpec, Settings, StoreSettings
from inspector.service.drift import recipe_reference
from tests.helpers import StubControls, free_port
from tests.test_link_opcua import Tree, eventually, url
from tests.test_service import running

# ---- the statistics and the tests -------------------------------------------------------------------------------


def parts(n: int, seed: int, offset: float = 0.0, size: int = 96) -> list[np.ndarray]:
    """Textured parts whose lighting varies a little from part to part; `offset` adds grey levels (lighting)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.normal(120, 6) + offset
        texture = cv2.GaussianBlur(rng.normal(0, 25, (size, size)).astype(np.float32), (5, 5), 1.5)
        gray = np.clip(base + texture, 0, 255).astype(np.uint8)
        out.append(np.repeat(gray[:, :, None], 3, axis=2))
    return out


def stats_of(images: list[np.ndarray]) -> list[dict[str, float]]:
    return [image_statistics(image) for image in images]


def test_image_statistics_measure_brightness_contrast_and_sharpness() -> None:
    flat = np.full((300, 400, 3), 90, np.uint8)
    assert image_statistics(flat) == {"brightness": 90.0, "contrast": 0.0, "sharpness": 0.0}
    sharp = parts(1, 0, size=400)[0]
    blurred = cv2.GaussianBlur(sharp, (9, 9), 3)
    brighter = np.clip(sharp.astype(int) + 30, 0, 255).astype(np.uint8)
    assert image_statistics(blurred)["sharpness"] < image_statistics(sharp)["sharpness"] / 4
    assert image_statistics(brighter)["brightness"] == pytest.approx(image_statistics(sharp)["brightness"] + 30, abs=1)


def test_psi_is_near_zero_for_the_same_population_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    edges = bin_edges(reference, 10)
    expected = bin_fractions(reference, edges)
    assert psi(expected, bin_fractions(rng.normal(size=5000), edges)) < 0.02
    assert psi(expected, bin_fractions(rng.normal(1.0, size=5000), edges)) > 0.5
    # every value beyond the reference's top: finite, thanks to the smoothing
    assert np.isfinite(psi(expected, bin_fractions(np.full(50, 99.0), edges)))


def test_two_sample_tests_agree_with_scipy() -> None:
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.3, 1.0):
        reference, sample = np.sort(rng.normal(size=400)), rng.normal(shift, size=50)
        statistic, p = ks_test(reference, sample)
        expected = stats.ks_2samp(reference, sample, method="asymp")
        assert statistic == pytest.approx(expected.statistic)
        assert p == pytest.approx(expected.pvalue, rel=0.1, abs=1e-6)
        mwu = stats.mannwhitneyu(sample, reference, method="asymptotic", use_continuity=False)
        assert rank_sum_test(reference, sample) == pytest.approx(mwu.pvalue, rel=1e-6)


def test_a_lighting_change_raises_the_alarm_and_a_stable_stream_stays_silent() -> None:
    reference = DriftReference.from_images(parts(300, seed=1), "fit: 300 parts")
    monitor = DriftMonitor(reference, statistics=("brightness", "contrast", "sharpness"))
    # the rule's false-alarm rate on long stable streams is measured in docs/benchmarks.md; this stream is one
    for i, values in enumerate(stats_of(parts(400, seed=2))):
        assert not monitor.observe(values, float(i)), f"false alarm at part {i}"
    brighter = stats_of(parts(60, seed=3, offset=25))
    raised_at = next((i for i, values in enumerate(brighter) if monitor.observe(values, 1000.0 + i)), None)
    assert raised_at is not None and raised_at < 50
    snapshot = monitor.snapshot()
    assert snapshot["alarm"] and "brightness" in snapshot["triggered_by"] and snapshot["since"] == 1000 + raised_at
    assert snapshot["statistics"]["brightness"]["psi"] > 0.2
    # back to the old lighting: cleared after a window of ordinary parts, not at once (hysteresis)
    cleared_at = next(
        i for i, values in enumerate(stats_of(parts(300, seed=4))) if not monitor.observe(values, 2e3 + i)
    )
    assert 20 <= cleared_at < 300
    assert monitor.raised == 1


def test_without_a_reference_the_first_inspections_become_it() -> None:
    rule = DriftRule(window=20, bootstrap=40)
    monitor = DriftMonitor(None, rule)
    values = stats_of(parts(40, seed=5))
    for i, v in enumerate(values):
        monitor.observe({**v, "score": 1.0 + i % 7}, float(i))
    brightness = monitor.snapshot()["statistics"]["brightness"]
    assert brightness["reference_source"] == "first 40 inspections after load"
    assert brightness["reference_bootstrapped"] and brightness["reference_n"] == 40
    assert brightness["status"] == "filling the window: 0 of 20"


def test_a_reference_round_trips_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    reference = DriftReference.from_values({"brightness": [3.0, 1.0, 2.0]}, "fit: 3 training images")
    again = DriftReference.from_bytes(reference.to_bytes())
    assert list(again.samples["brightness"]) == [1.0, 2.0, 3.0] and again.sources == reference.sources
    (tmp_path / REFERENCE_FILE).write_text("{not json")
    with pytest.raises(DriftReferenceError, match="damaged"):
        DriftReference.read(tmp_path)
    assert DriftReference.read(tmp_path / "elsewhere") is None


def test_fit_writes_the_image_reference_and_a_calibration_supplies_the_score_reference(patchcore_dir: Path) -> None:
    manifest = json.loads((patchcore_dir / MANIFEST).read_text())
    assert REFERENCE_FILE in manifest["files"]  # checksummed like the model's other files
    calibration = Calibration(image_threshold=2.0, rule="test", name="held-out", data={GOOD_SCORES: [1.0, 1.2, 1.1]})
    reference = recipe_reference(patchcore_dir, calibration)
    assert reference is not None
    assert reference.sources["brightness"] == "fit: 24 training images"
    assert reference.sources["score"] == "calibration held-out: 3 held-out good images"
    assert list(reference.samples["score"]) == [1.0, 1.1, 1.2]


# ---- through the service ----------------------------------------------------------------------------------------


@dataclass
class Line:
    http: TestClient
    port: int
    store: Path
    model_dir: Path


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def drifted(service_model_dir: Path, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """The service with a Modbus server, after 60 parts under a much brighter light than the training images."""
    port = free_port()
    store = tmp_path_factory.mktemp("drift-store")
    settings = Settings(
        models=[ModelSpec(dir=service_model_dir, name="a")],
        warmup_runs=1,
        threads=2,
        store=StoreSettings(dir=store, min_free_disk_mb=0),
        links=LinkSettings(plc=[f"modbus://127.0.0.1:{port}"], modbus=ModbusSettings(heartbeat_ms=50)),
    )
    good = read_image(next(s.path for s in dataset.test() if not s.is_defect))
    bright = png(np.clip(good.astype(int) + 90, 0, 255).astype(np.uint8))
    with running(settings) as http:
        for _ in range(60):
            answer = http.post("/v1/inspect", files={"image": ("part.png", bright, "image/png")}, params={"model": "a"})
            assert answer.status_code == 200, answer.text
        yield Line(http, port, store, service_model_dir)


def test_the_drift_report_names_the_alarm_its_statistics_and_references(drifted: Line) -> None:
    report = drifted.http.get("/v1/drift").json()
    assert report["alarm"]
    (recipe,) = report["recipes"]
    assert recipe["model"] == "a" and recipe["alarm"] and recipe["since"]
    assert "brightness" in recipe["triggered_by"]
    brightness = recipe["statistics"]["brightness"]
    assert brightness["psi"] > 0.2 and brightness["ks_p"] < 1e-5
    assert brightness["reference_source"] == "fit: 24 training images"
    assert brightness["window"] == 50 and len(brightness["values"]) == 60 and brightness["checks"]
    # the session's calibration was made without good scores: the pass scores bootstrap from the first parts
    assert recipe["statistics"]["score"]["reference_source"] == "first 200 inspections after load"
    assert recipe["rule"]["psi_alarm"] == 0.2
    light = drifted.http.get("/v1/drift", params={"series": "false"}).json()["recipes"][0]  # what the alert polls
    assert light["alarm"] and light["statistics"]["brightness"]["values"] == []


def test_metrics_and_readiness_show_the_alarm_without_making_the_service_unready(drifted: Line) -> None:
    text = drifted.http.get("/metrics").text
    assert 'inspector_drift_alarm{model="a"} 1.0' in text
    assert 'inspector_drift_psi{model="a",statistic="brightness"}' in text
    ready = drifted.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"]
    assert "drift alarm on a: brightness PSI" in ready.json()["detail"]


def test_the_plc_reads_the_drift_bit_in_the_status_word(drifted: Line) -> None:
    client = ModbusTcpClient("127.0.0.1", port=drifted.port, timeout=3)
    assert client.connect()
    try:
        answer = client.read_holding_registers(reg.BY_NAME["status"].address, count=1)
        assert not answer.isError()
        assert answer.registers[0] & reg.STATUS_BIT["drift"]
        assert answer.registers[0] & reg.STATUS_BIT["ready"]
    finally:
        client.close()


def test_the_command_shows_what_the_service_shows(drifted: Line, capsys: pytest.CaptureFixture[str]) -> None:
    served = drifted.http.get("/v1/drift").json()["recipes"][0]
    argv = ["drift", "--model-dir", str(drifted.model_dir), "--name", "a", "--store-dir", str(drifted.store)]
    assert main([*argv, "--since", "1h", "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["alarm"] and replayed["triggered_by"] == served["triggered_by"]
    for name, stat in served["statistics"].items():
        assert replayed["statistics"][name]["psi"] == stat["psi"]
        assert replayed["statistics"][name]["ks_p"] == stat["ks_p"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "DRIFT ALARM since" in text and "brightness" in text and "fit: 24 training images" in text
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--since", "tomorrow"])
    assert exited.value.code == 2 and "give an age such as 8h" in capsys.readouterr().err


def test_a_model_directory_without_a_reference_serves_and_takes_its_first_inspections(
    service_model_dir: Path, dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    shutil.copytree(service_model_dir, old)
    (old / REFERENCE_FILE).unlink()
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["files"][REFERENCE_FILE]  # as a model directory written before drift watch
    (old / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    settings = Settings(
        models=[ModelSpec(dir=old, name="old")],
        warmup_runs=1,
        threads=2,
        store=StoreSettings(dir=tmp_path / "store", min_free_disk_mb=0),
    )
    image = next(s.path for s in dataset.test() if not s.is_defect).read_bytes()
    with running(settings) as http:
        for _ in range(3):
            answer = http.post("/v1/inspect", files={"image": ("p.png", image, "image/png")}, params={"model": "old"})
            assert answer.status_code == 200
        recipe = http.get("/v1/drift").json()["recipes"][0]
    assert not recipe["alarm"]
    for stat in recipe["statistics"].values():
        assert stat["reference_source"] == "first 200 inspections after load"
        assert stat["status"] == "collecting its reference: 3 of 200"
    argv = ["drift", "--model-dir", str(old), "--store-dir", str(tmp_path / "store")]
    assert main(argv) == 0
    assert "collecting its reference: 3 of 200" in capsys.readouterr().out


def test_opc_ua_shows_the_alarm_in_drift_alarm() -> None:
    port = free_port()
    controls = StubControls()
    hub = LinkHub([OpcUaSink("127.0.0.1", port, OpcUaSettings())], controls)
    hub.start()

    async def check() -> None:
        async with Client(url(port)) as client:
            tree = await Tree.of(client)
            assert await tree.read("Inspector", "DriftAlarm") is False
            controls.status = replace(controls.status, drift=True)
            assert await eventually(lambda: tree.read("Inspector", "DriftAlarm")), "DriftAlarm never became true"

    try:
        asyncio.run(check())
    finally:
        hub.stop()


def test_a_clock_set_back_changes_nothing_but_the_alarms_time() -> None:
    """The windows count inspections, not seconds: the same stream with the clock set back a day halfway raises
    the alarm at the same part, and only the `since` it reports follows the (wrong) clock."""
    reference = DriftReference.from_images(parts(300, seed=1), "fit: 300 parts")
    stream = stats_of(parts(200, seed=2)) + stats_of(parts(60, seed=3, offset=25))
    raised = []
    for jump in (0.0, 86_400.0):
        monitor = DriftMonitor(reference, statistics=("brightness", "contrast", "sharpness"))
        clock = [1e9 + i - (jump if i >= 100 else 0.0) for i in range(len(stream))]
        raised.append(next(i for i, values in enumerate(stream) if monitor.observe(values, clock[i])))
        assert monitor.snapshot()["since"] == clock[raised[-1]]
    assert raised[0] == raised[1] and raised[0] >= 200
