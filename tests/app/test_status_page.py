"""``GET /`` in-process: the template renders what ``/models`` says, escaped, with no script."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.app.conftest import image_bytes


def test_status_page_renders_the_served_variants(client: TestClient) -> None:
    for budget in ("1000ms", "1ms"):
        assert (
            client.post("/classify", params={"budget": budget}, content=image_bytes("PNG")).status_code == 200
        )
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    variants = client.get("/models").json()["variants"]
    for v in variants:
        assert f'<td class="name">{v["name"]}</td>' in text
        assert f'<td class="size">{v["size_bytes"] / 1e6:.1f} MB</td>' in text
    assert re.search(r'<td id="queued">\d+</td>', text)
    # Both tiny variants have a known accuracy: both are drawn, the frontier is a line.
    assert text.count("<circle ") == len(variants) and '<polyline class="frontier-line"' in text
    assert "budgets met" in text and '<span class="badge ready">ready</span>' in text
    assert "<script" not in text and "https://" not in text
