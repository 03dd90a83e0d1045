"""One place that turns errors into responses: RFC 9457 problem documents, or the Open
Inference Protocol's ``{"error": ...}`` under ``/v2``. Tracebacks go to the log, never out:
unexpected errors are caught, logged once and answered by ``service.api.middleware``."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors

log = logging.getLogger(__name__)


PROBLEM_TYPE = "application/problem+json"


def problem(error: errors.ServiceError, path: str, request_id: str | None) -> bytes:
    """The RFC 9457 problem document of ``error`` for a request to ``path``."""
    body: dict[str, Any] = {
        "type": error.type,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": path,
    }
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def log_error(path: str, error: errors.ServiceError) -> None:
    if error.status >= 500:
        log.warning("%s %s: %s", error.status, path, error.detail)
    else:
        log.info("%s %s: %s", error.status, path, error.detail)


def render(request: Request, error: errors.ServiceError) -> Response:
    if request.url.path.startswith("/v2"):
        return JSONResponse({"error": error.detail}, status_code=error.status, headers=error.headers)
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(
        problem(error, request.url.path, request_id),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_TYPE,
    )


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)  # noqa: S101 - registered for this type only
    # For the per-endpoint metrics (service.api.middleware): a 503 is "shed" or "error".
    request.scope.setdefault("state", {})["outcome"] = exc.outcome
    log_error(request.url.path, exc)
    return render(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    kinds: dict[int, type[errors.ServiceError]] = {404: errors.NotFound, 405: errors.MethodNotAllowed}
    kind = kinds.get(exc.status_code, errors.InvalidParameter)
    # Starlette's 405 carries the Allow header: keep it.
    return render(request, kind(str(exc.detail), headers=dict(exc.headers or {})))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    return render(request, errors.InvalidParameter(f"{where or 'request'}: {first.get('msg', 'invalid')}"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
