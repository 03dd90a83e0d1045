"""``GET /models``: what is served, with the live latency table."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import PlaneDep
from service.api.documents import models_document, plans_document, pool_document

router = APIRouter()


@router.get(
    "/models",
    summary="Served variants (manifest fields, live latency, selection counts) and cascade plans "
    "(recorded and live escalation rates); with pool=true every variant of the store, served or "
    "not and why",
)
async def models(plane: PlaneDep, pool: bool = False) -> JSONResponse:
    served = plane.describe()
    return JSONResponse(
        {
            "ready": plane.ready,
            "variants": pool_document(served, plane.describe_unserved()) if pool else models_document(served),
            "cascades": plans_document(plane.describe_plans()),
        }
    )
