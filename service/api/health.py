"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors
from service.api.deps import MetricsDep, PlaneDep

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process can answer")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="Readiness: every served variant is loaded, verified and profiled")
async def readyz(plane: PlaneDep) -> JSONResponse:
    if plane.draining:
        raise errors.NotReady("not ready: draining for shutdown", retry_after_seconds=1)
    if not plane.ready:
        if plane.load_problem is not None:
            raise errors.NotReady(f"not ready: {plane.load_problem}", retry_after_seconds=5)
        raise errors.NotReady("not ready: loading, verifying and profiling the store", retry_after_seconds=1)
    return JSONResponse({"status": "ready", "variants": len(plane.variant_names)})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(metrics: MetricsDep, plane: PlaneDep) -> Response:
    metrics.queue_depth.set(plane.executor.queued)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
