"""``service.imaging``: the shared decoding's failures as the service's client errors."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from model_store.manifest import Preprocessing
from service import errors, imaging


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(out, format="PNG")
    return out.getvalue()


def test_header_and_tensor_of_a_good_image() -> None:
    data = png(40, 30)
    header = imaging.read_header(data, 10_000)
    assert (header.format, header.width, header.height) == ("PNG", 40, 30)
    pre = Preprocessing(resize_shorter=24, crop=16, mean=(0, 0, 0), std=(1, 1, 1))
    assert imaging.load_tensor(data, pre, 10_000).shape == (1, 16, 16, 3)


@pytest.mark.parametrize("read", ["header", "tensor"])
def test_bad_images_become_400_and_413(read: str) -> None:
    pre = Preprocessing(resize_shorter=24, crop=16, mean=(0, 0, 0), std=(1, 1, 1))

    def load(data: bytes, max_pixels: int) -> object:
        if read == "header":
            return imaging.read_header(data, max_pixels)
        return imaging.load_tensor(data, pre, max_pixels)

    for data in (b"", b"not an image", png(40, 30)[:60]):
        if read == "header" and data.startswith(b"\x89PNG"):
            continue  # a truncated PNG's header is complete: only decoding finds the damage
        with pytest.raises(errors.InvalidImage) as invalid:
            load(data, 10_000)
        assert invalid.value.status == 400
    with pytest.raises(errors.ImageTooLarge) as large:
        load(png(40, 30), 1000)
    assert large.value.status == 413
