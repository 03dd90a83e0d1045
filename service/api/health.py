"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors
from service.api.deps import MetricsDep, PlaneDep
from service.live_table import Candidate

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process can answer")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get("/readyz", summary="Readiness: every served variant is loaded, verified and profiled")
async def readyz(plane: PlaneDep) -> JSONResponse:
    if not plane.ready:
        raise errors.NotReady(f"not ready: {plane.readiness}", retry_after_seconds=1)
    # Ready while any variant is served: the ones left out are named, for people and probes.
    return JSONResponse(
        {
            "status": "ready",
            "variants": len(plane.variant_names),
            "detail": plane.degraded() or serving(len(plane.variant_names), plane.describe_unserved()),
            "unavailable": plane.unavailable(),
        }
    )


def serving(served: int, unserved: list[Candidate]) -> str:
    """What is served of the store, in words: all of it, or how many and why not the others."""
    if not unserved:
        return f"serving every variant of the store ({served})"
    reasons = Counter(c.reason for c in unserved)
    why = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return (
        f"serving {served} of the store's {served + len(unserved)} variants ({why}); "
        "GET /models?pool=true says why for each"
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(metrics: MetricsDep, plane: PlaneDep) -> Response:
    metrics.queue_depth.set(plane.executor.queued)
    metrics.ready.set(1 if plane.ready else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
