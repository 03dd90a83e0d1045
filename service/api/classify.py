"""``POST /classify``: parse, read the body within its limits, delegate, answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect

from model_store import imaging
from service import errors
from service.api.deps import MetricsDep, PlaneDep, SettingsDep
from service.core import params
from service.core.selector import Constraints
from service.dataplane import Classification
from service.observability import NO_VARIANT, Metrics
from service.settings import Settings

router = APIRouter()

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "application/octet-stream"}
T = TypeVar("T")


@dataclass(frozen=True)
class ClassifyParams:
    constraints: Constraints
    top_k: int


def _param(query: QueryParams, name: str, parse: Callable[[str], T]) -> T | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise errors.InvalidParameter(str(exc)) from None


def parse_params(query: QueryParams) -> ClassifyParams:
    known = {"budget", "max_size", "min_accuracy", "top_k", "model", "strict"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise errors.InvalidParameter(
            f"unknown parameter {unknown[0]!r}; accepted: {', '.join(sorted(known))}"
        )
    model = query.get("model")
    return ClassifyParams(
        constraints=Constraints(
            budget_seconds=_param(query, "budget", params.parse_budget),
            max_size_bytes=_param(query, "max_size", params.parse_size),
            min_accuracy=_param(query, "min_accuracy", params.parse_accuracy),
            pinned=model if model else None,
            strict=_param(query, "strict", params.parse_bool) or False,
        ),
        top_k=_param(query, "top_k", params.parse_top_k) or 5,
    )


async def read_body(request: Request, settings: Settings, started: float) -> bytes:
    """The whole body, refused as soon as it is known to be too large or too slow."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise errors.InvalidParameter("Content-Length is not a number")
        if int(declared) > limit:
            raise errors.BodyTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    deadline = started + settings.body_timeout_seconds
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise errors.BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise errors.BodyTimeout(
            f"the body did not arrive within {settings.body_timeout_seconds:g} s"
        ) from None
    except ClientDisconnect:
        raise errors.ClientClosed("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


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


def _image_bytes(body: bytes, content_type: str) -> bytes:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return multipart_file(body, content_type)
    if media_type and media_type not in IMAGE_TYPES:
        raise errors.UnsupportedMediaType(
            f"content type {media_type!r} is not accepted; send image/jpeg, image/png, image/webp, "
            "application/octet-stream or multipart/form-data with a 'file' field"
        )
    return body


def _header(image: bytes, settings: Settings) -> imaging.ImageHeader:
    try:
        return imaging.read_header(image, settings.max_image_pixels)
    except imaging.ImageTooLarge as exc:
        raise errors.ImageTooLarge(str(exc)) from None
    except imaging.ImageError as exc:
        raise errors.InvalidImage(str(exc)) from None


def _response(result: Classification, budget: float | None, total: float) -> JSONResponse:
    v = result.variant
    met = None if budget is None else total <= budget
    body: dict[str, Any] = {
        "model": {
            "name": v.name,
            "family": v.family,
            "resolution": v.resolution,
            "precision": v.precision,
            "top1": v.top1,
            "top1_source": v.top1_source,
            "size_bytes": v.size_bytes,
        },
        "predictions": [
            {"class_id": p.class_id, "label": p.label, "score": round(p.score, 6)} for p in result.predictions
        ],
        "budget_ms": None if budget is None else round(1000 * budget, 3),
        "predicted_ms": None if budget is None else round(1000 * result.predicted_seconds, 3),
        "budget_met": met,
        "timing": {
            "total_ms": round(1000 * total, 3),
            "queue_ms": round(1000 * result.queue_seconds, 3),
            "decode_ms": round(1000 * result.decode_seconds, 3),
            "inference_ms": round(1000 * result.inference_seconds, 3),
        },
    }
    server_timing = (
        f"queue;dur={1000 * result.queue_seconds:.3f}, decode;dur={1000 * result.decode_seconds:.3f}, "
        f"infer;dur={1000 * result.inference_seconds:.3f}, total;dur={1000 * total:.3f}"
    )
    return JSONResponse(body, headers={"X-Model-Variant": v.name, "Server-Timing": server_timing})


def _record(metrics: Metrics, result: Classification, budget: float | None, total: float) -> None:
    name = result.variant.name
    metrics.request_duration.labels(name).observe(total)
    if budget is not None:
        metrics.budget.labels(name, "met" if total <= budget else "missed").inc()
        metrics.slack.observe(budget - total)


def _query(name: str, schema: dict[str, Any], description: str, example: object) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        "example": example,
    }


_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The route reads its query string and body itself (limits while reading, its own messages), so
# FastAPI cannot infer them: the OpenAPI document describes them here, for users and fuzzers.
OPENAPI = {
    "parameters": [
        _query(
            "budget",
            {"type": "string"},
            "Server-side latency budget: 20ms, 0.02s, 20000us; a bare number is ms; 0 < budget <= 60 s.",
            "20ms",
        ),
        _query(
            "max_size",
            {"type": "string"},
            "Largest model file: 6MB, 800KB, 5MiB; a bare number is bytes.",
            "6MB",
        ),
        _query("min_accuracy", {"type": "string"}, "Lowest ImageNet top-1: 0.75 or 75%.", "0.75"),
        _query(
            "top_k",
            {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
            "Number of predictions.",
            3,
        ),
        _query("model", {"type": "string"}, "Pin a variant named by GET /models.", "lite0-224-int8"),
        _query(
            "strict",
            {"type": "boolean", "default": False},
            "Refuse (422/503) rather than answer late.",
            False,
        ),
    ],
    "requestBody": {
        "required": True,
        "description": "The image (JPEG, PNG or WebP), as the body or as the form field 'file'.",
        "content": {
            **{
                media: _BINARY
                for media in ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    },
}


@router.post(
    "/classify",
    summary="Classify an image with the most accurate variant that fits the budget",
    openapi_extra=OPENAPI,
    responses={
        400: {"description": "not a decodable image"},
        408: {"description": "body too slow"},
        413: {"description": "body or image too large"},
        415: {"description": "unsupported type"},
        422: {"description": "bad parameter, or constraints no variant meets"},
        503: {"description": "not ready or shedding load (Retry-After)"},
        504: {"description": "inference timed out"},
    },
)
async def classify(
    request: Request, plane: PlaneDep, settings: SettingsDep, metrics: MetricsDep
) -> JSONResponse:
    state = request.scope["state"]
    started: float = state["started"]
    log: dict[str, Any] = state["log"]
    variant, outcome = NO_VARIANT, "ok"
    metrics.inflight.inc()
    try:
        parsed = parse_params(request.query_params)
        budget = parsed.constraints.budget_seconds
        log["budget_ms"] = None if budget is None else round(1000 * budget, 3)
        plane.admit()
        image = _image_bytes(
            await read_body(request, settings, started), request.headers.get("content-type", "")
        )
        header = _header(image, settings)
        result = await plane.classify(image, header, parsed.constraints, parsed.top_k, started)
        variant = result.variant.name
        total = time.perf_counter() - started
        response = _response(result, budget, total)
        plane.record_total(result, total)
        _record(metrics, result, budget, total)
        log.update(
            variant=variant,
            reason=result.reason,
            budget_met=None if budget is None else total <= budget,
            predicted_ms=round(1000 * result.predicted_seconds, 3),
            total_ms=round(1000 * total, 3),
            queue_ms=round(1000 * result.queue_seconds, 3),
            decode_ms=round(1000 * result.decode_seconds, 3),
            inference_ms=round(1000 * result.inference_seconds, 3),
        )
        return response
    except errors.ServiceError as exc:
        outcome = exc.outcome
        log["error"] = exc.type
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        metrics.requests.labels(variant, outcome).inc()
        metrics.inflight.dec()
