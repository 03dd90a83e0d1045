"""``GET /models``: what is served, with the live latency table."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import PlaneDep
from service.api.documents import models_document

router = APIRouter()


@router.get("/models", summary="Served variants: manifest fields, live latency, selection counts")
async def models(plane: PlaneDep) -> JSONResponse:
    return JSONResponse({"ready": plane.ready, "variants": models_document(plane.describe())})
