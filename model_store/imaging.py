"""Image bytes -> model input: the one preprocessing path, shared by serving and evaluation.

The host decodes, resizes and crops; the model's graph does the rest (cast, channel order,
normalisation, layout: ``model_store.image_input``), so the input is the crop's ``uint8`` pixels.

Serving (through ``service.imaging``, which gives these errors the service's status codes) and
the store's evaluation both call :func:`load_tensor`, so the accuracy the store records is the
accuracy of exactly what is served.

Untrusted bytes are handled defensively: only the formats we serve are opened, the pixel count is
checked from the header before anything is decoded, and truncated files are errors.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from model_store.manifest import Preprocessing

FORMATS = ("JPEG", "PNG", "WEBP")
# Pillow opens a multi-picture JPEG (what many phone and stereo cameras write) as "MPO": it is a
# JPEG whose first picture is the photo, decoded (and draft-scaled) by the JPEG decoder.
_SAME_FORMAT = {"MPO": "JPEG"}
# The JPEG decoder can scale by 1/2, 1/4 or 1/8 while decoding (``Image.draft``).
JPEG_DRAFT_SCALES = (8, 4, 2, 1)

ImageFile.LOAD_TRUNCATED_IMAGES = False
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(Exception):
    """The bytes cannot be turned into an input tensor; the message is safe to show a client."""


class InvalidImage(ImageError):
    """Not a decodable image of a served format (empty, truncated, corrupt, other format)."""


class ImageTooLarge(ImageError):
    """More pixels than the configured ceiling (read from the header, before decoding)."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    size_bytes: int  # of the encoded image

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("the body is empty; send the image bytes")
    try:
        with warnings.catch_warnings():
            # Our own ceiling (below) is the limit; Pillow's bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has more than {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage("the body is not a JPEG, PNG or WebP image") from exc
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(
            f"the image is {image.width}x{image.height} = {image.width * image.height} pixels; "
            f"the limit is {max_pixels}"
        )
    return image


# JPEG start-of-frame markers (baseline, progressive, lossless...; not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's frame header, skipping the segments before it; None when
    the markers do not lead there plainly (then Pillow, the stricter reader, decides)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF_MARKERS:
            if i + 9 > end:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _format(image: Image.Image) -> str:
    """The served format ``image`` is decoded as, one of ``FORMATS``."""
    name = str(image.format)
    return _SAME_FORMAT.get(name, name)


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Read format and size without decoding pixels.

    Runs on the event loop for every request, so a JPEG's size is read from its frame header
    directly (Pillow's parser walks every segment in Python); other formats, and JPEGs whose
    markers are unusual, go through Pillow. Raises ``InvalidImage`` or ``ImageTooLarge``.
    """
    size = _jpeg_size(data)
    if size is None:
        image = _open(data, max_pixels)
        return ImageHeader(
            format=_format(image), width=image.width, height=image.height, size_bytes=len(data)
        )
    header = ImageHeader(format="JPEG", width=size[0], height=size[1], size_bytes=len(data))
    if header.pixels > max_pixels:
        raise ImageTooLarge(
            f"the image is {header.width}x{header.height} = {header.pixels} pixels; the limit is {max_pixels}"
        )
    return header


def draft_scale(header: ImageHeader, preprocessing: Preprocessing) -> int:
    """The factor by which the decoder shrinks this image for this preprocessing (1 = none).

    Mirrors Pillow's ``JpegImageFile.draft``: the largest JPEG scale that keeps both sides at
    least ``resize_shorter``, so the resize that follows never upsamples.
    """
    if header.format != "JPEG":
        return 1
    target = preprocessing.resize_shorter
    fits = min(header.width // target, header.height // target)
    return next(scale for scale in JPEG_DRAFT_SCALES if fits >= scale or scale == 1)


def decode(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> Image.Image:
    """Decode to an upright RGB image, at the smallest size the preprocessing can use.

    Raises ``InvalidImage`` or ``ImageTooLarge``.
    """
    image = _open(data, max_pixels)
    try:
        if _format(image) == "JPEG":
            side = preprocessing.resize_shorter
            image.draft("RGB", (side, side))
        image.load()
        image = _upright(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # Transparent pixels have arbitrary colour underneath: show them on white.
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode != "RGB":
            image = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidImage("the image is truncated or corrupt") from exc
    return image


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says; as stored when its EXIF cannot be read.

    The orientation is a hint about pixels that decoded fine: a corrupt EXIF block (Pillow's
    parser raises struct, value, key and type errors on one) must not cost the answer.
    """
    # In place: an image without an orientation tag (most) is not copied.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def to_tensor(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize the shorter side and centre-crop: ``uint8`` RGB ``[1, crop, crop, 3]``."""
    width, height = image.size
    crop = preprocessing.crop
    # The crop window in source pixels; resizing only that window equals resize-then-crop,
    # at a fraction of the cost.
    window = min(width, height) * crop / preprocessing.resize_shorter
    left = (width - window) / 2
    top = (height - window) / 2
    image = image.resize(
        (crop, crop),
        _RESAMPLE[preprocessing.interpolation],
        box=(left, top, left + window, top + window),
    )
    return np.asarray(image, dtype=np.uint8)[np.newaxis]


def load_tensor(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> np.ndarray:
    """Image bytes -> model input. Raises ``InvalidImage`` or ``ImageTooLarge``."""
    return to_tensor(decode(data, preprocessing, max_pixels), preprocessing)
