"""``create_app(settings)``: the only way to get an app; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api import admin, classify, health, models, status, v2
from service.api.documents import VariantEncodings
from service.api.errors import install as install_error_handlers
from service.api.middleware import RequestContext
from service.api.v2_schema import OPENAPI_SCHEMAS
from service.dataplane import DataPlane
from service.history import History
from service.observability import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, plane: DataPlane | None = None) -> FastAPI:
    """The app. ``plane``: the data plane to serve (tests hand in their own, over tiny models);
    by default one is built for ``settings``. Either way the app's lifespan loads and stops it."""
    settings = settings or (plane.settings if plane is not None else Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("service").setLevel(settings.log_level)
        logging.getLogger("edgefit.access").setLevel(settings.log_level)
        served = plane or DataPlane(settings, Metrics())
        app.state.settings, app.state.metrics, app.state.plane = settings, served.metrics, served
        app.state.history = history = History()
        app.state.encodings = VariantEncodings()
        # Loading runs beside the server, so /healthz answers (and /readyz says 503) meanwhile.
        tasks = [
            asyncio.create_task(served.load_until_served()),
            asyncio.create_task(served.keep_table_current()),
            asyncio.create_task(history.keep(served.metrics)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            served.shutdown()

    app = FastAPI(
        title="edgefit",
        version=v2.VERSION,
        summary="The most accurate image classifier that fits each request's latency budget.",
        lifespan=lifespan,
    )
    for router in (status.router, models.router, health.router, v2.router, admin.router):
        app.include_router(router)
    install_error_handlers(app)
    # The hot path's own ASGI endpoint, past FastAPI's routing and dependency injection.
    app.add_middleware(RequestContext, direct={classify.PATH: classify.endpoint})

    def openapi() -> dict[str, Any]:
        # /v2's infer reads its body by hand (for the binary extension): add its schemas.
        # /classify is no FastAPI route (service.api.classify): add its path item.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(OPENAPI_SCHEMAS)
            schema["paths"] = {classify.PATH: classify.PATH_ITEM, **schema["paths"]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
