"""``GET /models``: what is served, with the live latency table."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import PlaneDep
from service.api.documents import models_document, plans_document

router = APIRouter()


@router.get(
    "/models",
    summary="Served variants (manifest fields, live latency, selection counts) and cascade plans "
    "(recorded and live escalation rates)",
)
async def models(plane: PlaneDep) -> JSONResponse:
    return JSONResponse(
        {
            "ready": plane.ready,
            "variants": models_document(plane.describe()),
            "cascades": plans_document(plane.describe_plans()),
        }
    )
