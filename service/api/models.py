"""``GET /models``: what is served, with the live latency table."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import PlaneDep

router = APIRouter()


@router.get("/models", summary="Served variants: manifest fields, live latency, selection counts")
async def models(plane: PlaneDep) -> JSONResponse:
    return JSONResponse({"ready": plane.ready, "variants": plane.describe()})
