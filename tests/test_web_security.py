"""The operator page against hostile text, in the real Chromium: part ids, line and camera names and review notes
written as HTML render as text in every view, nothing they carry runs, and no view needs anything the page's
Content-Security-Policy forbids (inline script or style, another origin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_web_e2e import OPERATOR, SCREEN, Service, browser, service, unlock

__all__ = ["browser", "service"]  # the fixtures this module shares with test_web_e2e

PART = '<img src=x onerror="window.pwned=1">'
LINE = "<script>window.pwned=2</script>"
NOTE = '"><svg onload="window.pwned=3">'


@pytest.fixture
def tab(browser: Any, service: Service) -> Iterator[tuple[Any, list[str]]]:
    """A fresh tab that records script errors, dialogs and every Content-Security-Policy violation."""
    context = browser.new_context(viewport=SCREEN, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on(
        "console",
        lambda m: problems.append(f"CSP: {m.text} at {m.location}") if "Content Security Policy" in m.text else None,
    )
    page.set_default_timeout(20_000)  # it opens every view, each loading its data
    yield page, problems
    context.close()


def test_hostile_text_renders_as_text_in_every_view(tab: tuple[Any, list[str]], service: Service) -> None:
    page, problems = tab
    record = service.inspect("review", part_id=PART, line=LINE, camera=LINE)
    with service.client(OPERATOR) as client:
        review = {"verdict": "defect", "note": NOTE, "operator": LINE}
        client.post(f"/v1/inspections/{record['id']}/review", json=review).raise_for_status()
    answer = page.request.get(service.url)
    assert "script-src 'self'" in answer.headers["content-security-policy"]

    unlock(page, service.url)
    page.wait_for_function("id => document.querySelector('#live-part').dataset.id === id", arg=record["id"])
    assert PART in page.text_content("#live-facts")
    for view in page.locator("nav.tabs a").all():  # every view the page has, whoever added it
        view.click()
        page.wait_for_timeout(300)
    page.goto(f"{service.url}/#/live/{record['id']}")
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("() => document.querySelector('#detail-review').textContent.includes('svg')")
    assert NOTE in page.text_content("#detail-review")

    assert page.evaluate("window.pwned") is None
    assert page.locator("img[src='x'], svg[onload], script:not([src])").count() == 0
    assert not problems, problems
