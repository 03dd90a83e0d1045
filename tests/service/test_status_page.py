"""The status page at ``/`` in a real headless Chromium (Debian's, driven by Playwright) against a
real ``edgefit serve``: what an operator sees, checked against ``GET /models``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from service.api.status import REFRESH_SECONDS
from tests.conftest import REPO, Server

# Where the tests leave pictures for people to look at (ignored by git).
OUTPUT = REPO / "tests" / "output"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: run `make system-deps`")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a container's
        # small /dev/shm would crash its renderer.
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def test_status_page_shows_what_models_says_and_refreshes(
    browser: Browser, server: Server, tabby: bytes, fast_int8: str
) -> None:
    # Some budgeted traffic, so that the last minutes have a variant mix and a budget-met ratio.
    for budget in ("20ms", "50ms", "200ms", "20ms"):
        response = httpx.post(
            f"{server.url}/classify",
            params={"budget": budget},
            content=tabby,
            headers={"content-type": "image/jpeg"},
            timeout=30,
        )
        assert response.status_code == 200
    variants = {v["name"]: v for v in httpx.get(f"{server.url}/models").json()["variants"]}

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{server.url}/")
    assert page.inner_text("h1").endswith("ready")
    # The page reloads itself (meta refresh): wait for the next load.
    with page.expect_event("load", timeout=(REFRESH_SECONDS + 15) * 1000):
        pass

    store_rows = page.locator("#store tbody tr")
    assert sorted(store_rows.locator(".name").all_inner_texts()) == sorted(variants)
    for name, v in variants.items():
        row = page.locator(f'#store tr[data-variant="{name}"]')
        assert row.locator(".size").inner_text() == f"{v['size_bytes'] / 1e6:.1f} MB"
        top1 = row.locator(".top1").inner_text()
        assert top1 == ("unknown" if v["top1"] is None else f"{v['top1']:.4f}")
        if v["depth"] != "full":  # the column exists only when the store has subnets
            assert row.locator(".depth").inner_text() == v["depth"]
        # The profiled figures do not move: they must be exactly the ones /models gives.
        latency = page.locator(f'#latency tr[data-variant="{name}"]')
        assert latency.locator(".profiled-p50").inner_text() == f"{v['latency_ms']['profiled_p50']:.2f}"
        assert latency.locator(".profiled-p95").inner_text() == f"{v['latency_ms']['profiled_p95']:.2f}"
        assert float(latency.locator(".live-p95").inner_text()) > 0

    # The recent mix counts the traffic above; the sentence names a served variant.
    mixed = page.locator("#mix tbody tr[data-variant]")
    served = mixed.evaluate_all("rows => rows.map(r => r.dataset.variant)")
    assert served and set(served) <= set(variants)
    assert sum(int(n) for n in mixed.locator("td:nth-child(2)").all_inner_texts()) >= 4
    summary = page.inner_text("#summary")
    assert any(name in summary for name in served) and "budgets met" in summary
    assert "budgets met" in page.inner_text("#budget-met")
    # The frontier: one point per variant with a known accuracy, at least one on the frontier.
    points = page.locator("#frontier circle")
    assert points.count() == sum(v["top1"] is not None for v in variants.values())
    assert page.locator("#frontier circle.served").count() >= 1
    assert int(page.inner_text("#queued")) >= 0

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "status-page.png"), full_page=True)
    page.close()


def test_status_page_needs_no_javascript(browser: Browser, server: Server) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{server.url}/")
    names = {v["name"] for v in httpx.get(f"{server.url}/models").json()["variants"]}
    assert set(page.locator("#store .name").all_inner_texts()) == names
    assert page.locator("#frontier").count() == 1
    context.close()


def test_status_page_has_no_external_assets(server: Server) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text.replace("http://www.w3.org", "")
    assert "https://" not in page.text


def test_screenshot_is_in_the_docs() -> None:
    assert (REPO / "docs" / "status-page.png").is_file()
    assert "docs/status-page.png" in (REPO / "README.md").read_text()
