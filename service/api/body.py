"""Request bodies, shared by every door that takes one (``/classify``, ``/v2``): the whole body
read within the size limit and receive deadline, and the image inside it (raw or multipart).

Starlette's ``request.body()`` has no size limit and no deadline, hence this reader over the raw
ASGI ``receive``.
"""

from __future__ import annotations

import asyncio
import time

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive

from service import errors
from service.settings import Settings

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream"}


async def read_body(receive: Receive, declared: str | None, settings: Settings, started: float) -> bytes:
    """The whole body, refused as soon as it is known to be too large or too slow.

    ``declared``: the request's Content-Length, if it sent one.
    """
    limit = settings.max_body_bytes
    if declared is not None:
        if not declared.isdigit():
            raise errors.InvalidParameter("Content-Length is not a number")
        if int(declared) > limit:
            raise errors.BodyTooLarge(f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks = []
    size = 0
    deadline = started + settings.body_timeout_seconds
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise errors.ClientClosed("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise errors.BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise errors.BodyTimeout(
            f"the body did not arrive within {settings.body_timeout_seconds:g} s"
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The content of the form field named ``file``."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise errors.InvalidImage("multipart body without a boundary")
    parts: list[tuple[bytes, bytearray]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        parts.append((b"", bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_field).lower() == b"content-disposition":
            parts[-1] = (bytes(header_value), parts[-1][1])
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception:  # python-multipart raises its own error types for malformed forms
        raise errors.InvalidImage("the multipart body is malformed") from None
    for disposition, data in parts:
        _, fields = parse_options_header(disposition)
        if fields.get(b"name") == b"file":
            return bytes(data)
    raise errors.InvalidImage("the multipart body has no field named 'file'")


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image a request carries: the body itself, or its multipart field ``file``."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return multipart_file(body, content_type)
    if media_type and media_type not in IMAGE_TYPES:
        raise errors.UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send image/jpeg, image/png, image/webp, "
            "application/octet-stream or multipart/form-data with a 'file' field"
        )
    return body
