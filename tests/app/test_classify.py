"""``/classify`` in-process: answers, formats, and every error path a client can reach."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_store import imaging
from tests.app.conftest import assert_problem, image_bytes, serve, settings_for, tiny_model, tiny_variant
from tests.unit.test_imaging import png_header_only


def test_answers_per_contract(client: TestClient) -> None:
    response = client.post(
        "/classify",
        params={"budget": "1000ms", "top_k": "3"},
        content=image_bytes("JPEG"),
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == response.headers["x-model-variant"]
    assert len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert body["budget_met"] is True and body["budget_ms"] == 1000
    assert response.headers["x-request-id"] and "total;dur=" in response.headers["server-timing"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "MPO"])
def test_every_served_format_and_pinned_model(client: TestClient, fmt: str) -> None:
    data = image_bytes(fmt)
    for params in ({}, {"model": "tiny-16-fp32"}):
        response = client.post("/classify", params=params, content=data)
        assert response.status_code == 200, (fmt, params, response.text)


def test_multipart_upload(client: TestClient) -> None:
    response = client.post("/classify", files={"file": ("cat.png", image_bytes("PNG"), "image/png")})
    assert response.status_code == 200, response.text


def test_mpo_is_a_jpeg_with_its_draft_downscale() -> None:
    """Phone and stereo cameras write MPO: served as the JPEG it is, decoded at 1/8 where it fits."""
    data = image_bytes("MPO", size=(800, 600))
    assert Image.open(io.BytesIO(data)).format == "MPO"
    header = imaging.read_header(data, 10**8)
    assert header.format == "JPEG"
    pre = tiny_variant("t", 32, tiny_model(32), 0.5).preprocessing
    assert imaging.draft_scale(header, pre) == 8
    assert imaging.decode(data, pre, 10**8).size == (100, 75)


# EXIF blocks that make Pillow's ``exif_transpose`` raise (found by mutating a valid one): a tag
# whose type does not match its value (``struct.error``), and a bad TIFF byte-order mark
# (``SyntaxError``).
_EXIF_TAIL = (
    b"\x00\x00\x002\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x87i\x00\x04\x00\x00\x00\x01"
    b"\x00\x00\x008\x00\x00\x00\x00Canon\x00\x00\x01\x90\x03\x00\x02\x00\x00\x00\x14\x00\x00\x00J"
    b"\x00\x00\x00\x002020:01:01 00:00:00\x00"
)
CORRUPT_EXIF = {
    "struct": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x03\x01\x07\x00\x02\x00\x00\x00\x06" + _EXIF_TAIL,
    "syntax": b"Exif\x00\x00MM\x00\x0b\x00\x00\x00\x08\x00\x03\x01\x0f\x00\x02\x00\x00\x00\x06" + _EXIF_TAIL,
}


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG", "PNG"])
@pytest.mark.parametrize("exif", sorted(CORRUPT_EXIF))
def test_corrupt_exif_is_served_as_stored(client: TestClient, fmt: str, exif: str) -> None:
    """The orientation is a hint: pixels that decode are answered, upright or not."""
    data = image_bytes(fmt, exif=CORRUPT_EXIF[exif])
    response = client.post("/classify", content=data)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "headers", "params", "status", "kind"),
    [
        (b"", {}, {}, 400, "invalid-image"),
        (b"not an image at all", {}, {}, 400, "invalid-image"),
        (image_bytes("JPEG")[:200], {}, {}, 400, "invalid-image"),
        (image_bytes("GIF"), {}, {}, 400, "invalid-image"),
        (b"x", {"content-type": "text/plain"}, {}, 415, "unsupported-media-type"),
        (b"x", {"content-type": "multipart/form-data"}, {}, 400, "invalid-image"),
        (b"--b\r\nbroken", {"content-type": "multipart/form-data; boundary=b"}, {}, 400, "invalid-image"),
        (image_bytes("PNG"), {}, {"budget": "fast"}, 422, "invalid-parameter"),
        (image_bytes("PNG"), {}, {"budget": "1e400"}, 422, "invalid-parameter"),
        (image_bytes("PNG"), {}, {"top_k": "0"}, 422, "invalid-parameter"),
        (image_bytes("PNG"), {}, {"colour": "red"}, 422, "invalid-parameter"),
        (image_bytes("PNG"), {}, {"model": "nope"}, 422, "unknown-model"),
        (image_bytes("PNG"), {}, {"max_size": "1"}, 422, "no-variant-allowed"),
        (image_bytes("PNG"), {}, {"budget": "1us", "strict": "true"}, 422, "budget-unmeetable"),
        (png_header_only(9000, 9000), {}, {}, 413, "image-too-large"),
        (b"x" * 100, {"content-length": "abc"}, {}, 422, "invalid-parameter"),
    ],
)
def test_bad_requests_get_problem_documents(
    client: TestClient, body: bytes, headers: dict[str, str], params: dict[str, str], status: int, kind: str
) -> None:
    response = client.post("/classify", content=body, headers=headers, params=params)
    assert_problem(response, status, kind)


def test_answered_and_refused_requests_leave_nothing_counted_in_flight(client: TestClient) -> None:
    # The arrival mix learns how many requests of each tier are in the server at once; a
    # request that ends in an error must leave that count as surely as one answered.
    answered, refused, unmeetable = {"budget": "1s"}, {"max_size": "1"}, {"budget": "1us", "strict": "true"}
    for params in (answered, refused, unmeetable):
        client.post("/classify", params=params, content=image_bytes("PNG"))
    plane = client.app.state.plane  # type: ignore[attr-defined]
    assert sum(plane.chooser._in_flight.values()) == 0


def test_body_limit(settings_small_body: TestClient) -> None:
    response = settings_small_body.post("/classify", content=b"x" * 2048)
    assert_problem(response, 413, "body-too-large")


@pytest.fixture
def settings_small_body(store: Path, tmp_path: Path) -> Iterator[TestClient]:
    with serve(settings_for(store, tmp_path / "cache", max_body_bytes=1024, max_image_pixels=10**6)) as c:
        yield c


def test_405_carries_allow(client: TestClient) -> None:
    response = client.get("/classify")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


def test_404_is_a_problem_document(client: TestClient) -> None:
    assert_problem(client.get("/nowhere"), 404, "not-found")


def test_client_disconnect_mid_upload_is_no_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The client goes away after the first chunk: logged as a client's doing, no traceback."""
    app = client.app
    sent: list[dict[str, object]] = []
    chunks = [
        {"type": "http.request", "body": image_bytes("JPEG")[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/jpeg"), (b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "app": app,
        "state": {},
    }
    with caplog.at_level(logging.INFO):
        client.portal.call(app, scope, receive, send)  # type: ignore[union-attr,arg-type]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text
    assert "client-closed" in caplog.text
