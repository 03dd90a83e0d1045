"""``POST /classify``: parse, read the body within its limits, delegate, answer.

The hot path, so it is a plain ASGI endpoint that ``service.api.middleware`` calls directly: no
router, no dependency injection, no request object; the query is parsed once, the body read from
``receive``, the answer serialised with orjson. FastAPI still describes it (``OPENAPI``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from service import errors, imaging
from service.api.body import image_bytes, read_body
from service.api.documents import VariantEncodings
from service.api.errors import PROBLEM_TYPE, log_error, problem
from service.core import params
from service.core.selector import Constraints
from service.dataplane import DataPlane
from service.observability import NO_VARIANT, Metrics, access_log
from service.results import Classification
from service.settings import Settings

PATH = "/classify"
KNOWN_PARAMS = ("budget", "max_size", "min_accuracy", "top_k", "model", "strict", "cascade")
T = TypeVar("T")


@dataclass(frozen=True)
class ClassifyParams:
    constraints: Constraints
    top_k: int


def _param(query: Mapping[str, str], name: str, parse: Callable[[str], T]) -> T | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise errors.InvalidParameter(str(exc)) from None


def parse_params(query: Mapping[str, str]) -> ClassifyParams:
    unknown = sorted(set(query) - set(KNOWN_PARAMS))
    if unknown:
        raise errors.InvalidParameter(
            f"unknown parameter {unknown[0]!r}; accepted: {', '.join(sorted(KNOWN_PARAMS))}"
        )
    model = query.get("model")
    return ClassifyParams(
        constraints=Constraints(
            budget_seconds=_param(query, "budget", params.parse_budget),
            max_size_bytes=_param(query, "max_size", params.parse_size),
            min_accuracy=_param(query, "min_accuracy", params.parse_accuracy),
            pinned=model if model else None,
            strict=_param(query, "strict", params.parse_bool) or False,
            # Absent: the server's policy (``EDGEFIT_CASCADE``, which also turns plans off).
            cascade=_param(query, "cascade", lambda text: params.parse_bool(text, "cascade")) is not False,
        ),
        top_k=_param(query, "top_k", params.parse_top_k) or 5,
    )


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


def _answer(
    result: Classification, model: dict[str, Any], total: float, met: bool | None
) -> tuple[bytes, bytes]:
    """The JSON body and the ``Server-Timing`` header value."""
    budget = result.budget_seconds
    body = {
        "model": model,
        "predictions": [
            {"class_id": p.class_id, "label": p.label, "score": round(p.score, 6)} for p in result.predictions
        ],
        "budget_ms": None if budget is None else _ms(budget),
        "predicted_ms": None if budget is None else _ms(result.predicted_seconds),
        "budget_met": met,
        "timing": {
            "total_ms": _ms(total),
            "queue_ms": _ms(result.queue_seconds),
            "decode_ms": _ms(result.decode_seconds),
            "inference_ms": _ms(result.inference_seconds),
        },
    }
    if result.plan is not None:
        body["stages"] = [
            {
                "name": s.variant.name,
                "top_score": round(s.top_score, 6),
                "inference_ms": _ms(s.inference_seconds),
            }
            for s in result.stages
        ]
        # Which plan ran and how it ended: "out_of_time" when the second stage no longer fit.
        body["cascade"] = {
            "plan": result.plan.name,
            "threshold": result.plan.threshold,
            "outcome": result.escalation,
        }
    server_timing = (
        f"queue;dur={1000 * result.queue_seconds:.3f}, decode;dur={1000 * result.decode_seconds:.3f}, "
        f"infer;dur={1000 * result.inference_seconds:.3f}, total;dur={1000 * total:.3f}"
    )
    return orjson.dumps(body), server_timing.encode()


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _body_headers(scope: Scope) -> tuple[str | None, str]:
    """The declared ``Content-Length`` (None if absent) and ``Content-Type`` ("" if absent)."""
    declared = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value
        elif name == b"content-type":
            content_type = value
    return (
        None if declared is None else declared.decode("latin-1"),
        "" if content_type is None else content_type.decode("latin-1"),
    )


async def _classify(
    scope: Scope,
    receive: Receive,
    send: Send,
    plane: DataPlane,
    settings: Settings,
    encodings: VariantEncodings,
) -> str:
    """Answer one request with 200; returns the variant that answered. Raises ``ServiceError``."""
    state = scope["state"]
    started: float = state["started"]
    parsed = parse_params(dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)))
    # The access log's fields are gathered only when it is written.
    fields: dict[str, Any] | None = state["log"] if access_log.isEnabledFor(logging.INFO) else None
    if fields is not None:
        budget = parsed.constraints.budget_seconds
        fields["budget_ms"] = None if budget is None else _ms(budget)
    # Refused at the door, before a body that would only be thrown away is read.
    plane.admit()
    declared, content_type = _body_headers(scope)
    body = await read_body(receive, declared, settings, started)
    image = image_bytes(body, content_type)
    header = imaging.read_header(image, settings.max_image_pixels)
    result = await plane.classify(image, header, parsed.constraints, parsed.top_k, started)
    total = time.perf_counter() - started
    met = result.budget_met(total)
    model, variant_header = encodings.of(result.variant)
    answer, server_timing = _answer(result, model, total, met)
    try:
        await _send(
            send,
            200,
            answer,
            b"application/json",
            [(b"x-model-variant", variant_header), (b"server-timing", server_timing)],
        )
    finally:
        # After the answer is out: the bookkeeping does not delay it.
        plane.record(result, total)
        if fields is not None:
            fields.update(
                variant=result.variant.name,
                reason=result.reason,
                budget_met=met,
                predicted_ms=_ms(result.predicted_seconds),
                margin_ms=_ms(result.margin_seconds),
                total_ms=_ms(total),
                queue_ms=_ms(result.queue_seconds),
                decode_ms=_ms(result.decode_seconds),
                inference_ms=_ms(result.inference_seconds),
            )
            if result.plan is not None:
                fields.update(cascade=result.plan.name, escalation=result.escalation)
    return result.variant.name


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """``/classify``, every method: answers, or a problem document (unexpected errors: the
    middleware's)."""
    app_state = scope["app"].state
    plane: DataPlane = app_state.plane
    settings: Settings = app_state.settings
    metrics: Metrics = app_state.metrics
    encodings: VariantEncodings = app_state.encodings
    variant, outcome = NO_VARIANT, "ok"
    metrics.inflight.inc()
    try:
        if scope["method"] != "POST":
            raise errors.MethodNotAllowed("Method Not Allowed", headers={"Allow": "POST"})
        variant = await _classify(scope, receive, send, plane, settings, encodings)
    except errors.ServiceError as exc:
        outcome = exc.outcome
        state = scope["state"]
        state["log"]["error"] = exc.type
        state["outcome"] = exc.outcome  # for the per-endpoint metrics (service.api.middleware)
        log_error(PATH, exc)
        await _send_problem(send, exc, scope)
    except Exception:
        outcome = "error"
        raise  # logged once and answered by service.api.middleware
    finally:
        metrics.outcome(variant, outcome).inc()
        metrics.inflight.dec()


async def _send_problem(send: Send, error: errors.ServiceError, scope: Scope) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    body = problem(error, PATH, scope["state"].get("request_id"))
    await _send(send, error.status, body, PROBLEM_TYPE.encode(), headers)


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
# The endpoint reads its query string and body itself (limits while reading, its own messages):
# the OpenAPI document describes them here, for users and fuzzers.
OPENAPI: dict[str, Any] = {
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
        _query(
            "cascade",
            {"type": "boolean"},
            "false: one variant answers. Default (the server's policy): a fast variant may answer when "
            "it is sure, a more accurate one running only when it is not, within the budget.",
            True,
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

_RESPONSES = {
    "200": {"description": "the predictions, the variant that made them and the timing"},
    "400": {"description": "not a decodable image"},
    "405": {"description": "a method other than POST"},
    "408": {"description": "body too slow"},
    "413": {"description": "body or image too large"},
    "415": {"description": "unsupported type"},
    "422": {"description": "bad parameter, or constraints no variant meets"},
    "503": {"description": "not ready or shedding load (Retry-After)"},
    "504": {"description": "inference timed out"},
}
# The path item merged into FastAPI's document (service.app): the endpoint is not a FastAPI route.
PATH_ITEM: dict[str, Any] = {
    "post": {
        "summary": "Classify an image with the most accurate variant that fits the budget",
        "operationId": "classify",
        **OPENAPI,
        "responses": _RESPONSES,
    }
}
