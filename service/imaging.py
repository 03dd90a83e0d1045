"""Image bytes on the service's hot path, answered with the service's errors.

The decoding itself is ``model_store.imaging``: one implementation, shared with the store's
build and evaluation, so the top-1 a manifest records is that of exactly what is served. It lives
in the store library because the store must not import the service; this module is the service's
door onto it. Every image passes here twice: :func:`read_header` on the event loop (format and
size from the header, so a bomb is refused before any decoding), then :func:`load_tensor` in the
executor for the variant chosen. A bad image becomes the client's 400 or 413 here, once.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from model_store import imaging
from model_store.imaging import ImageHeader, draft_scale, to_tensor
from model_store.manifest import Preprocessing
from service import errors

__all__ = ["ImageHeader", "decode", "draft_scale", "load_tensor", "read_header", "to_tensor"]


def _client_error(exc: imaging.ImageError) -> errors.ServiceError:
    if isinstance(exc, imaging.ImageTooLarge):
        return errors.ImageTooLarge(str(exc))
    return errors.InvalidImage(str(exc))


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Format and size without decoding pixels. Raises ``errors.InvalidImage`` or
    ``errors.ImageTooLarge``."""
    try:
        return imaging.read_header(data, max_pixels)
    except imaging.ImageError as exc:
        raise _client_error(exc) from None


def decode(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> Image.Image:
    """The upright RGB image at the smallest size ``preprocessing`` can use (``to_tensor`` then
    makes any input at most that large). Blocking; raises ``errors.InvalidImage`` or
    ``errors.ImageTooLarge``."""
    try:
        return imaging.decode(data, preprocessing, max_pixels)
    except imaging.ImageError as exc:
        raise _client_error(exc) from None


def load_tensor(data: bytes, preprocessing: Preprocessing, max_pixels: int) -> np.ndarray:
    """The model input for ``preprocessing``: ``uint8 [1, crop, crop, 3]``. Blocking (run it in
    the executor); raises ``errors.InvalidImage`` or ``errors.ImageTooLarge``."""
    try:
        return imaging.load_tensor(data, preprocessing, max_pixels)
    except imaging.ImageError as exc:
        raise _client_error(exc) from None
