"""The operator page (service/web/) in a real headless Chromium against a live service, and the endpoints it relies on.

The browser tests need Debian's `chromium` at /usr/bin/chromium and the `playwright` Python package (never its
browser download); without them they skip. `INSPECTOR_SCREENSHOTS=docs/screenshots pytest tests/test_web_e2e.py`
also writes the screenshots of the documentation.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from inspector.calibration import Calibration, save_calibration
from inspector.data import Dataset, read_image
from inspector.link.settings import LinkSettings, WebhookSettings
from inspector.models.estimators import PatchCore
from inspector.service.app import DEFAULT_WEB_DIR, create_app
from inspector.service.config import Settings, StoreSettings
from inspector.service.server import Server
from tests.helpers import free_port, wait_for
from tests.test_service import settings_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WEB = DEFAULT_WEB_DIR  # the page as the package ships it
CAMERA, OPERATOR = "camera-key-e2e", "operator-key-e2e"
SCREEN = {"width": 1366, "height": 768}  # the line PC
BAND = (0.9, 1.2)


@dataclass
class Service:
    url: str
    model_dir: Path
    parts: dict[str, Path]  # an image that passes, one for review and one that fails

    def client(self, key: str | None = CAMERA) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key} if key else {}, timeout=10)

    def inspect(self, kind: str, **params: str) -> dict[str, Any]:
        with self.client() as c:
            r = c.post(
                "/v1/inspect", files={"image": ("part.png", self.parts[kind].read_bytes(), "image/png")}, params=params
            )
        assert r.status_code == 200, r.text
        return r.json()

    def get(self, path: str) -> Any:
        with self.client(OPERATOR) as c:
            return c.get(path).raise_for_status().json()

    def active_calibration(self) -> str:
        return self.get("/v1/models/synthetic")["calibration"]["name"]


@pytest.fixture(scope="module")
def service(
    fitted_patchcore: PatchCore, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A real server on an ephemeral loopback port, with camera and operator keys, a calibration whose review band
    holds some test images (so there are pass, review and fail parts) and a stricter one to switch to."""
    root = tmp_path_factory.mktemp("web")
    model_dir = root / "synthetic"
    fitted_patchcore.save(model_dir, data={"category": "synthetic"})
    samples = dataset.test()
    scores = fitted_patchcore.score([read_image(s.path) for s in samples]).scores
    low, high = float(min(scores)), float(max(scores))
    threshold = (low / BAND[0] + high / BAND[1]) / 2  # lowest score passes, highest fails
    line = Calibration(image_threshold=threshold, rule="test", name="line", pixel_threshold=threshold, review_band=BAND)
    strict = Calibration(image_threshold=threshold * 0.9, rule="test", name="strict", review_band=BAND)
    save_calibration(model_dir, strict, activate=False)
    save_calibration(model_dir, line)
    by_score = sorted(zip(scores, samples, strict=True), key=lambda t: t[0])
    middle = min(by_score, key=lambda t: abs(t[0] - threshold))
    parts = {"pass": by_score[0][1].path, "review": middle[1].path, "fail": by_score[-1][1].path}
    assert [line.verdict(s) for s in (by_score[0][0], middle[0], by_score[-1][0])] == ["pass", "review", "fail"]

    settings = settings_for(
        model_dir, root / "store", camera_key=CAMERA, operator_key=OPERATOR, web_dir=WEB, log_level="warning"
    )
    with serving(settings) as (url, _):
        svc = Service(url, model_dir, parts)
        for i, sample in enumerate(samples):  # a history to look at: every test image once
            with svc.client() as c:
                files = {"image": ("p.png", sample.path.read_bytes(), "image/png")}
                params = {"part_id": f"A7-{1000 + i}", "line": "L2", "camera": "top"}
                c.post("/v1/inspect", files=files, params=params).raise_for_status()
        yield svc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs the playwright package (pip install)", exc_type=ImportError
    )
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    """A fresh tab (empty sessionStorage: no key yet) that fails the test on any uncaught script error."""
    context = browser.new_context(viewport=SCREEN, device_scale_factor=1)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.set_default_timeout(10_000)
    yield tab
    context.close()
    assert not errors, errors


# ---- the page -----------------------------------------------------------------------------------------------


def unlock(page: Any, url: str, key: str = OPERATOR) -> None:
    page.goto(url)
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-form input[name=key]", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#connection[data-state=live]")


def test_page_loads_offline_and_asks_for_the_operator_key(page: Any, service: Service) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(service.url)
    page.wait_for_selector("#key-dialog[open]")
    assert "operator key" in page.text_content("#key-reason")
    page.fill("#key-form input[name=key]", "not-the-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#key-form .form-error').textContent.includes('refused')")
    page.fill("#key-form input[name=key]", OPERATOR)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#connection[data-state=live]")
    page.wait_for_selector("#history-strip li[data-id]")
    assert page.text_content("#model") == "synthetic"
    assert "line" in page.text_content("#calibration")
    page.wait_for_selector("#counters .tile.total")
    inspected = int(page.text_content("#counters .tile.total .number").replace(",", ""))
    assert inspected >= len(service.parts)
    assert all(u.startswith(service.url) or u.startswith(("blob:", "data:")) for u in requests), requests  # offline


def test_a_posted_part_appears_in_the_live_view_with_its_overlay(page: Any, service: Service) -> None:
    unlock(page, service.url)
    record = service.inspect("fail", part_id="LIVE-1")
    start = time.monotonic()
    page.wait_for_function(
        """id => {
            const part = document.querySelector('#live-part');
            const heat = part.querySelector('img.heat');
            return part.dataset.id === id && heat.complete && heat.naturalWidth > 0 && !heat.hidden;
        }""",
        arg=record["id"],
        timeout=2000,
    )
    assert time.monotonic() - start < 2.0
    assert "FAIL" in page.text_content("#live-banner").upper()
    assert page.get_attribute("#live-banner", "data-verdict") == "fail"
    assert page.locator("#live-part svg.regions rect.box").count() == len(record["regions"]) > 0
    assert "LIVE-1" in page.text_content("#live-facts")
    assert f"{record['normalized_score']:.2f}×" in page.text_content("#live-gauge")
    assert page.get_attribute("#history-strip li:first-child", "data-id") == record["id"]
    page.uncheck("#heat-on")
    assert page.locator("#live-part img.heat").is_hidden()


def test_review_needs_the_operator_key_and_persists_across_reload(page: Any, service: Service) -> None:
    record = service.inspect("review", part_id="REV-1")
    assert record["verdict"] == "review"
    unlock(page, f"{service.url}/#/review", key=CAMERA)  # a camera key may read, but not review
    card = page.locator(f"#queue li[data-id='{record['id']}']")
    card.locator("input[name=note]").fill("burr on the rim")
    card.locator("button.defect").click()
    page.wait_for_selector("#key-dialog[open]")
    assert "operator key" in page.text_content("#key-reason")
    page.click("#key-form button.cancel")
    page.wait_for_function(
        "id => document.querySelector(`#queue li[data-id='${id}'] .form-error`).textContent", arg=record["id"]
    )
    assert service.get(f"/v1/inspections/{record['id']}")["review"] is None

    card.locator("button.defect").click()
    page.fill("#key-form input[name=key]", OPERATOR)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"#reviewed li[data-id='{record['id']}']")
    review = service.get(f"/v1/inspections/{record['id']}")["review"]
    assert review["verdict"] == "defect"
    assert review["note"] == "burr on the rim"

    page.goto(f"{service.url}/#/live/{record['id']}")  # the detail view, after a reload
    page.reload()
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("() => document.querySelector('#detail-review').textContent.includes('defect')")
    assert "burr on the rim" in page.text_content("#detail-review")
    page.wait_for_selector(f"#history-strip li[data-id='{record['id']}'] .review-mark")
    assert page.locator(f"#queue li[data-id='{record['id']}']").count() == 0


def test_switching_calibration_asks_for_the_key_and_a_confirmation(page: Any, service: Service) -> None:
    unlock(page, f"{service.url}/#/threshold")
    page.wait_for_selector("#histogram rect.bar")
    assert page.locator("#histogram line.threshold.active").count() == 1
    page.click("#calibrations [data-name=strict]")
    assert page.locator("#histogram line.threshold.preview").count() == 1
    page.click("#activate")
    page.wait_for_selector("#confirm-dialog[open]")
    assert "strict" in page.text_content("#confirm-text")
    assert page.locator("#confirm-form .key-field").is_visible()
    page.fill("#confirm-form input[name=key]", CAMERA)
    page.click("#confirm-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#confirm-form .form-error').textContent.includes('operator')")
    assert service.active_calibration() == "line"
    page.click("#confirm-form button.cancel")
    assert service.active_calibration() == "line"
    try:
        page.click("#activate")
        page.fill("#confirm-form input[name=key]", OPERATOR)
        page.click("#confirm-form button[type=submit]")
        page.wait_for_selector("#calibrations [data-name=strict].active")
        assert service.active_calibration() == "strict"
        assert "strict" in page.text_content("#calibration")
    finally:
        with service.client(OPERATOR) as c:
            c.put("/v1/models/synthetic/calibration", json={"name": "line"}).raise_for_status()


def test_a_calibration_switch_on_the_page_is_listed_in_the_audit_log(page: Any, service: Service) -> None:
    unlock(page, f"{service.url}/#/threshold")
    page.click("#calibrations [data-name=strict]")
    page.click("#activate")
    page.fill("#confirm-form input[name=key]", OPERATOR)
    page.click("#confirm-form button[type=submit]")
    try:
        page.wait_for_selector("#calibrations [data-name=strict].active")
    finally:  # back, with a reason the page must show as text, never as markup
        with service.client(OPERATOR) as c:
            back = {"name": "line", "reason": "<img src=x onerror=alert(1)> back"}
            c.put("/v1/models/synthetic/calibration", json=back, headers={"X-Operator": "Ana"}).raise_for_status()
    page.click(".tabs a[data-view=audit]")
    rows = page.locator("#audit-rows tr[data-kind=calibration]")
    rows.first.wait_for()
    restored, switched = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "strict → line" in restored and "operator (Ana)" in restored
    assert "<img src=x onerror=alert(1)> back" in restored
    assert page.locator("#audit-rows img").count() == 0
    assert "line → strict" in switched and "synthetic" in switched
    with page.expect_download() as download:
        page.click("#audit-csv")
    rows_csv = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [(r["kind"], r["old"], r["new"]) for r in rows_csv[:2]] == [
        ("calibration", "strict", "line"),
        ("calibration", "line", "strict"),
    ]


def test_without_keys_the_page_asks_for_none(browser: Any, service: Service, tmp_path: Path) -> None:
    settings = settings_for(service.model_dir, tmp_path, warmup_runs=0, threads=1, web_dir=WEB)
    with serving(settings) as (url, _), browser.new_context(viewport=SCREEN) as context:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#connection[data-state=live]")
        with httpx.Client(base_url=url) as c:
            files = {"image": ("p.png", service.parts["review"].read_bytes(), "image/png")}
            record = c.post("/v1/inspect", files=files).json()
            page.wait_for_function("id => document.querySelector('#live-part').dataset.id === id", arg=record["id"])
            page.click("#live-open")
            page.click("#review-form button.good")
            page.wait_for_function("() => document.querySelector('#detail-review').textContent.includes('good')")
            assert c.get(f"/v1/inspections/{record['id']}").json()["review"]["verdict"] == "good"
        assert page.locator("#key-dialog[open]").count() == 0


def test_a_dead_line_link_shows_on_the_page_and_never_fails_an_inspection(
    browser: Any, service: Service, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/results"  # a port nobody listens on: the MES endpoint is down
    links = LinkSettings(webhook=WebhookSettings(urls=[dead], retries=0, timeout_s=0.5))
    settings = settings_for(service.model_dir, tmp_path, warmup_runs=0, threads=1, web_dir=WEB, links=links)
    with serving(settings) as (url, _), browser.new_context(viewport=SCREEN) as context:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#links .link[data-up=true]")  # nothing sent yet: not known to be down
        with httpx.Client(base_url=url) as c:
            files = {"image": ("p.png", service.parts["pass"].read_bytes(), "image/png")}
            assert c.post("/v1/inspect", files=files).status_code == 200
            page.wait_for_selector("#links .link[data-up=false]", timeout=15_000)
            assert "Webhook down" in page.locator("#links").inner_text()
            assert dead in (page.locator("#links .link").get_attribute("title") or "")
            ready = c.get("/readyz").json()
            assert ready["ready"] and f"link {dead} down" in ready["detail"]


@pytest.mark.skipif(not os.environ.get("INSPECTOR_SCREENSHOTS"), reason="set INSPECTOR_SCREENSHOTS=<folder>")
def test_screenshots_for_the_documentation(page: Any, service: Service) -> None:
    out = Path(os.environ["INSPECTOR_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    unlock(page, service.url)
    with service.client(OPERATOR) as c:  # a few decisions, so the review marks show
        for kind, verdict in (("pass", "good"), ("review", "good"), ("fail", "defect")):
            rid = service.inspect(kind)["id"]
            c.post(f"/v1/inspections/{rid}/review", json={"verdict": verdict, "note": "checked", "operator": "ana"})
    record = service.inspect("fail", part_id="A7-2041")
    page.wait_for_function("id => document.querySelector('#live-part').dataset.id === id", arg=record["id"])
    page.wait_for_timeout(300)
    page.screenshot(path=out / "live.png")
    page.click(f"#history-strip li[data-id='{record['id']}'] button")
    page.wait_for_function("[...document.querySelectorAll('#detail img')].every(i => i.complete && i.naturalWidth)")
    page.screenshot(path=out / "detail.png")
    page.keyboard.press("Escape")
    page.goto(f"{service.url}/#/review")
    page.wait_for_selector("#queue li")
    page.wait_for_timeout(300)
    page.screenshot(path=out / "review.png")
    page.goto(f"{service.url}/#/threshold")
    page.click("#calibrations [data-name=strict]")
    page.screenshot(path=out / "threshold.png")


# ---- the endpoints the page uses ------------------------------------------------------------------------------


def test_events_summary_scores_and_thumbnails(service: Service) -> None:
    with service.client() as c:
        for path in ("/v1/events", "/v1/summary?since=2020-01-01T00:00:00Z", "/v1/scores"):
            assert httpx.get(service.url + path).status_code == 401
        before = c.get("/v1/summary", params={"since": "2020-01-01T00:00:00Z"}).json()
        with c.stream("GET", "/v1/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert read_event(lines) == ("connected", {"heartbeat_s": 15})
            record = service.inspect("fail")
            with service.client(OPERATOR) as op:
                op.post(f"/v1/inspections/{record['id']}/review", json={"verdict": "defect"}).raise_for_status()
            received = [read_event(lines), read_event(lines)]
        assert [(kind, data["id"]) for kind, data in received] == [
            ("inspection", record["id"]),
            ("review", record["id"]),
        ]
        assert received[0][1]["verdict"] == "fail"
        assert received[1][1]["review"]["verdict"] == "defect"

        after = c.get("/v1/summary", params={"since": "2020-01-01T00:00:00Z", "model": "synthetic"}).json()
        assert after["inspected"] == before["inspected"] + 1 == sum(after["verdicts"].values())
        assert after["verdicts"]["fail"] == before["verdicts"]["fail"] + 1
        assert after["reviewed"] == before["reviewed"] + 1
        assert after["per_minute"] > 0
        open_reviews = c.get("/v1/inspections", params={"verdict": "review", "reviewed": False, "limit": 500})
        assert after["review_open"] == len(open_reviews.json()["items"])
        future = c.get("/v1/summary", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["inspected"] == 0
        assert set(future["verdicts"]) == {"pass", "review", "fail", "none"}

        scores = c.get("/v1/scores", params={"limit": 3}).json()
        assert scores["model"] == "synthetic"
        assert len(scores["points"]) == 3
        assert scores["points"][0] == {"score": pytest.approx(record["score"]), "review": "defect"}

        thumb = c.get(f"/v1/inspections/{record['id']}/thumbnail.jpg", params={"size": 64})
        image = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
        assert thumb.headers["content-type"] == "image/jpeg"
        assert max(image.shape[:2]) == 64
        assert c.get("/v1/inspections/0123456789abcdef01234567/thumbnail.jpg").status_code == 404


def read_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    """The next event of a server-sent event stream (heartbeat comments skipped)."""
    kind, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and data:
            return kind, json.loads(data)
    raise AssertionError("event stream ended")


def test_stopping_the_server_ends_open_event_streams(service: Service, tmp_path: Path) -> None:
    settings = settings_for(service.model_dir, tmp_path, warmup_runs=0, threads=1)
    with serving(settings) as (url, server), httpx.stream("GET", f"{url}/v1/events", timeout=30) as stream:
        lines = stream.iter_lines()
        assert read_event(lines)[0] == "connected"
        start = time.monotonic()
        server.should_exit = True
        assert not "".join(lines)  # the stream ends, with no event, as the server begins to stop...
        assert time.monotonic() - start < 5  # ...instead of holding the stop for the graceful timeout


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, Server]]:
    """The app under `service.server.Server` on a free loopback port in a thread, with the connection cap `serve`
    gives it; yields its URL once ready."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = Server(create_app(settings), log_level="warning", limit_concurrency=settings.max_connections)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not ready(url):
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.05)
        yield url, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_the_recipes_view_compares_the_shadow_and_promotes_and_rolls_back(
    browser: Any, service_model_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    """A shadow version that passes every part: the Recipes view shows both versions, the gate, the part they
    disagree on with both heatmaps and the re-fit container; Promote and Roll back swap the active version."""
    from tests.test_shadow import fit_version, lax_copy

    models = tmp_path / "models"
    shutil.copytree(service_model_dir, models / "synthetic")
    candidate = lax_copy(fit_version(dataset, tmp_path / "fitted"), models / "synthetic.versions" / "v2")
    settings = Settings(
        models_dir=models,
        warmup_runs=1,
        threads=2,
        camera_key=CAMERA,
        operator_key=OPERATOR,
        web_dir=WEB,
        log_level="warning",
        golden_dir=tmp_path / "golden",
        store=StoreSettings(dir=tmp_path / "store", min_free_disk_mb=0),
    )
    defect = next(s.path for s in dataset.test() if s.defect_type == "hole")
    with serving(settings) as (url, _):
        with httpx.Client(base_url=url, headers={"X-API-Key": OPERATOR}, timeout=10) as c:
            c.put("/v1/models/synthetic/shadow", json={"dir": str(candidate)}).raise_for_status()
            inspected = c.post("/v1/inspect", files={"image": ("p.png", defect.read_bytes(), "image/png")}).json()
            assert inspected["verdict"] == "fail"
            wait_for(lambda: c.get("/v1/models/synthetic/disagreements").json()["disagree"] == 1, 30, "shadow")
        context = browser.new_context(viewport=SCREEN, device_scale_factor=1)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(10_000)
        try:
            unlock(page, url)
            page.click(".tabs a[data-view=recipes]")
            card = "article.recipe[data-recipe=synthetic]"
            page.wait_for_selector(f"{card} .pair[data-id='{inspected['id']}']")
            assert "v2" in page.text_content(f"{card} .shadow-version")
            assert "synthetic · version" in page.text_content(f"{card} .active-version")
            assert page.get_attribute(f"{card} .gate", "data-state") == "unchecked"
            page.wait_for_function(
                """card => [...document.querySelectorAll(card + ' .pair img')]
                    .every(img => img.complete && img.naturalWidth > 0)""",
                arg=card,
            )
            assert page.locator(f"{card} .pair img").count() == 2
            pair = page.text_content(f"{card} .pair")
            assert "Active: Fail" in pair and "Shadow: Pass" in pair
            assert page.locator(f"{card} div.recipe-refit[data-recipe=synthetic]").count() == 1
            if os.environ.get("INSPECTOR_SCREENSHOTS"):
                page.screenshot(path=Path(os.environ["INSPECTOR_SCREENSHOTS"]) / "recipes.png", full_page=True)

            page.fill(f"{card} input[name=reason]", "shadow agrees on good parts")
            page.click(f"{card} button.promote")
            page.wait_for_function(
                "card => document.querySelector(card + ' .active-version')?.textContent.startsWith('v2')", arg=card
            )
            assert page.text_content(f"{card} .shadow-version") == "none"
            page.click(f"{card} button.rollback")
            page.wait_for_function(
                "card => document.querySelector(card + ' .active-version')?.textContent.startsWith('synthetic')",
                arg=card,
            )
        finally:
            context.close()
        assert not errors, errors
        with httpx.Client(base_url=url, headers={"X-API-Key": OPERATOR}, timeout=10) as c:
            entries = c.get("/v1/audit").json()["items"]
        kinds = [(e["kind"], e["reason"].split(" (")[0]) for e in entries if e["kind"].startswith("model_")]
        assert kinds[:2] == [("model_rollback", kinds[0][1]), ("model_promote", "shadow agrees on good parts")]


def test_the_drift_view_plots_the_statistics_and_the_alarm_shows_on_every_view(
    browser: Any, service: Service, tmp_path: Path
) -> None:
    """60 parts under a far brighter light than the training images: the alert appears in the top bar of the
    live view, and the Drift view shows the recipe in alarm with its table and plots drawn."""
    settings = settings_for(service.model_dir, tmp_path, warmup_runs=0, threads=1, web_dir=WEB)
    bright = np.clip(read_image(service.parts["pass"]).astype(int) + 90, 0, 255).astype(np.uint8)
    data = cv2.imencode(".png", cv2.cvtColor(bright, cv2.COLOR_RGB2BGR))[1].tobytes()
    with serving(settings) as (url, _), browser.new_context(viewport=SCREEN) as context:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#connection[data-state=live]")
        assert page.locator("#drift-alert").is_hidden()
        with httpx.Client(base_url=url, timeout=10) as c:
            for _ in range(60):
                c.post("/v1/inspect", files={"image": ("p.png", data, "image/png")}).raise_for_status()
        page.wait_for_selector("#drift-alert:not([hidden])", timeout=15_000)  # polled every 5 s
        assert "synthetic" in page.text_content("#drift-alert") and "Brightness" in page.text_content("#drift-alert")
        page.click("#drift-alert")
        card = "article.drift-recipe[data-recipe=synthetic]"
        page.wait_for_selector(f"{card}[data-alarm=true] svg.drift-plot path.series", state="attached")
        assert "Drift alarm since" in page.text_content(f"{card} .drift-state")
        assert page.locator(f"{card} tr[data-statistic=brightness][data-drifting=true]").count() == 1
        assert page.locator(f"{card} svg.drift-plot").count() == 3
        assert page.locator(f"{card} svg.drift-plot path.series").count() >= 4  # a PSI line per checked statistic
        assert page.locator(f"{card} svg.drift-plot line.limit").count() >= 2  # the 0.2 line, a reference median
        assert page.locator(f"{card} svg.drift-plot rect.band").count() >= 1  # brightness's reference band
        if os.environ.get("INSPECTOR_SCREENSHOTS"):
            page.screenshot(path=Path(os.environ["INSPECTOR_SCREENSHOTS"]) / "drift.png", full_page=True)
        assert not errors, errors
