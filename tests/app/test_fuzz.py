"""Mutated image bodies (hypothesis): every answer is a 200 or a 4xx problem document, never a 500.

Seeds are every served format, the MPO flavour of JPEG and images carrying EXIF (valid and
corrupt); mutations flip, delete, insert and truncate bytes, where parsers trip.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.app.conftest import image_bytes
from tests.app.test_classify import CORRUPT_EXIF


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    return exif.tobytes()


SEEDS = [
    image_bytes("JPEG"),
    image_bytes("JPEG", exif=_exif()),
    image_bytes("MPO"),
    image_bytes("PNG"),
    image_bytes("WEBP"),
    image_bytes("WEBP", exif=_exif()),
    *(image_bytes(fmt, exif=exif) for fmt in ("WEBP", "JPEG") for exif in CORRUPT_EXIF.values()),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutated(), pinned=st.booleans())
def test_mutated_images_never_500(client: TestClient, body: bytes, pinned: bool) -> None:
    params = {"model": "tiny-16-fp32"} if pinned else {}
    response = client.post("/classify", content=body, params=params)
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
