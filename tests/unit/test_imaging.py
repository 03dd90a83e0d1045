"""The shared preprocessing path, on every kind of image a client may send."""

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_store.imaging import (
    ImageTooLarge,
    InvalidImage,
    decode,
    draft_scale,
    load_tensor,
    read_header,
    to_tensor,
)
from model_store.manifest import Preprocessing

LITE = Preprocessing(resize_shorter=256, crop=224, mean=(127, 127, 127), std=(128, 128, 128))
LIMIT = 50_000_000


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def photo(size: tuple[int, int] = (500, 375)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_tensor_is_the_uint8_crop_in_rgb_order() -> None:
    # Left third red, middle green, right third blue: the centre crop keeps mostly green.
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 200
    tensor = to_tensor(Image.fromarray(pixels), LITE)
    assert tensor.shape == (1, 224, 224, 3) and tensor.dtype == np.uint8
    assert tensor.flags.c_contiguous
    assert tuple(tensor[0, 112, 112]) == (0, 200, 0)
    assert tuple(tensor[0, 112, 0]) == (200, 0, 0) and tuple(tensor[0, 112, 223]) == (0, 0, 200)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    data = encode(photo().convert(mode), fmt)
    image = decode(data, LITE, LIMIT)
    assert image.mode == "RGB"
    assert load_tensor(data, LITE, LIMIT).shape == (1, 224, 224, 3)


def test_transparent_pixels_are_shown_on_white() -> None:
    clear = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    image = decode(encode(clear, "PNG"), LITE, LIMIT)
    assert image.getpixel((150, 150)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (400, 300), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode(encode(wide, "JPEG", exif=exif.tobytes()), LITE, LIMIT)
    assert image.size[0] < image.size[1]


@pytest.mark.parametrize("size", [(500, 375), (2000, 1500), (4000, 3000), (300, 2000), (256, 256), (100, 80)])
def test_draft_scale_matches_the_decoder(size: tuple[int, int]) -> None:
    data = encode(photo(size), "JPEG")
    header = read_header(data, LIMIT)
    scale = draft_scale(header, LITE)
    decoded = decode(data, LITE, LIMIT)
    assert decoded.size == (-(-size[0] // scale), -(-size[1] // scale))
    assert min(decoded.size) >= min(LITE.resize_shorter, *size)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, world", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\0" * 100],
    ids=["empty", "text", "broken-png", "gif"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        load_tensor(data, LITE, LIMIT)


def test_truncated_jpeg_is_an_error_not_grey_pixels() -> None:
    data = encode(photo(), "JPEG")
    with pytest.raises(InvalidImage):
        load_tensor(data[: len(data) // 2], LITE, LIMIT)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be ``width`` x ``height``: the header of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("side", [8000, 30000, 100000])
def test_pixel_bomb_is_refused_from_the_header_at_once(side: int) -> None:
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        read_header(png_header_only(side, side), LIMIT)
    with pytest.raises(ImageTooLarge):
        load_tensor(png_header_only(side, side), LITE, LIMIT)
    assert time.perf_counter() - started < 1.0


def test_jpeg_header_read_directly_agrees_with_pillow(sample_dir: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    made = [
        encode(photo((500, 375)), "JPEG"),
        encode(photo((300, 2000)), "JPEG", progressive=True),
        encode(photo((640, 480)), "JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 3000),
        encode(photo((64, 48)).convert("L"), "JPEG"),
        encode(photo((64, 48)).convert("CMYK"), "JPEG"),
    ]
    for data in made + [p.read_bytes() for p in sorted(sample_dir.iterdir())[::10]]:
        header = read_header(data, LIMIT)
        image = Image.open(io.BytesIO(data))
        assert (header.format, header.width, header.height) == ("JPEG", image.width, image.height)


def test_jpeg_pixel_bomb_is_refused_from_its_frame_header() -> None:
    data = bytearray(encode(photo((64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (40000).to_bytes(2, "big") + (40000).to_bytes(2, "big")
    with pytest.raises(ImageTooLarge):
        read_header(bytes(data), LIMIT)


@pytest.mark.parametrize("cut", [2, 4, 30, 200])
def test_a_jpeg_cut_before_its_frame_header_is_not_an_image(cut: int) -> None:
    data = encode(photo((64, 48)), "JPEG", exif=Image.Exif().tobytes(), icc_profile=b"\0" * 500)
    assert data.index(b"\xff\xc0") > cut
    with pytest.raises(InvalidImage):
        read_header(data[:cut], LIMIT)
