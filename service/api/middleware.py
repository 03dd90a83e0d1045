"""Per-request context as a plain ASGI middleware (no per-request task or body copy):
the start time every budget is measured from, the request id, and the access-log line.

It is also the one dispatch of the hot path: ``/classify`` goes straight to its ASGI endpoint
(``service.api.classify``); everything else goes through FastAPI.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import classify
from service.observability import access_log, log_access

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        path = scope["path"]
        try:
            if path == classify.PATH:
                await classify.endpoint(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if path not in ("/metrics", "/healthz", "/readyz") and access_log.isEnabledFor(logging.INFO):
                log_access(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(1000 * (time.perf_counter() - started), 3),
                        **fields,
                    }
                )
