"""``create_app(settings)``: the only way to get an app; nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from model_store.store import StoreError
from service.api import admin, classify, health, models, v2
from service.api.errors import install as install_error_handlers
from service.api.middleware import RequestContext
from service.dataplane import DataPlane
from service.observability import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("service").setLevel(settings.log_level)
        logging.getLogger("edgefit.access").setLevel(settings.log_level)
        metrics = Metrics()
        plane = DataPlane(settings, metrics)
        app.state.settings, app.state.metrics, app.state.plane = settings, metrics, plane

        async def load() -> None:
            try:
                await plane.load()
            except StoreError as exc:
                # Stay alive and unready: the operator sees why in the log and in /readyz.
                log.error("cannot serve: %s", exc)

        # Loading runs beside the server, so /healthz answers (and /readyz says 503) meanwhile.
        tasks = [asyncio.create_task(load()), asyncio.create_task(plane.keep_table_current())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            plane.shutdown()

    app = FastAPI(
        title="edgefit",
        version=v2.VERSION,
        summary="The most accurate image classifier that fits each request's latency budget.",
        lifespan=lifespan,
    )
    for router in (models.router, health.router, v2.router, admin.router):
        app.include_router(router)
    install_error_handlers(app)
    # RequestContext also dispatches /classify to its own ASGI endpoint, past FastAPI's routing.
    app.add_middleware(RequestContext)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document["paths"] = {classify.PATH: classify.OPENAPI, **document["paths"]}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
