"""Per-request context as a plain ASGI middleware (no per-request task or body copy):
the start time every budget is measured from, the request id, the access-log line, and the
answer to any error nothing else handled.

It is also the one dispatch of the hot path: the paths in ``direct`` (``/classify``, wired by
``service.app``) go straight to their ASGI endpoints; everything else goes through FastAPI.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.api.errors import render
from service.observability import Metrics, access_log, log_access

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ENDPOINTS = (
    ("classify", re.compile(r"^/classify$")),
    ("v2_infer", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")),
)


def _endpoint(method: str, path: str) -> str | None:
    """The inference endpoint a request is for, if any (label of the per-endpoint metrics)."""
    if method != "POST":
        return None
    return next((name for name, pattern in _ENDPOINTS if pattern.fullmatch(path)), None)


def _outcome(state: dict[str, Any], status: int) -> str:
    """What the error handler said (``ServiceError.outcome``), else what the status says."""
    said: str | None = state.get("outcome")
    if said is not None:
        return said
    return "ok" if status < 400 else "client_error" if status < 500 else "error"


class RequestContext:
    """``direct``: ASGI endpoints by exact path, called past FastAPI's routing."""

    def __init__(self, app: ASGIApp, direct: Mapping[str, ASGIApp] | None = None) -> None:
        self.app = app
        self.direct = dict(direct or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _SAFE_ID.fullmatch(supplied) else uuid.uuid4().hex
        fields: dict[str, Any] = {}
        scope.setdefault("state", {}).update(started=started, request_id=request_id, log=fields)
        status = 500
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        path = scope["path"]
        try:
            await self.direct.get(path, self.app)(scope, receive, send_with_id)
        except Exception:
            # The one place an unexpected error is logged (once, with its traceback) and answered,
            # inside this middleware so that the 500 carries X-Request-ID like every answer. Not
            # re-raised: the server would log it a second time.
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            if not started_response:
                problem = errors.ServiceError("the server failed to handle this request; it has been logged")
                await render(Request(scope), problem)(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            endpoint = _endpoint(scope["method"], path)
            if endpoint is not None:
                metrics: Metrics = scope["app"].state.metrics
                metrics.endpoint_outcomes[(endpoint, _outcome(scope["state"], status))].inc()
                metrics.endpoint_durations[endpoint].observe(duration)
            # Not the polled endpoints (scrapes, probes, the self-refreshing status page); and the
            # fields are gathered only when the line is written.
            if path not in ("/", "/metrics", "/healthz", "/readyz") and access_log.isEnabledFor(logging.INFO):
                log_access(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(1000 * duration, 3),
                        **fields,
                    }
                )
