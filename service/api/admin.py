"""``POST /admin/reload``: re-read the store and swap it in atomically."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_store.store import StoreError
from service import errors
from service.api.deps import PlaneDep, SettingsDep

router = APIRouter()


class ReloadFailed(errors.ServiceError):
    status, type, title, outcome = 409, "/errors/reload-failed", "Reload failed", "client_error"


@router.post("/admin/reload", summary="Re-read the store and swap it in atomically")
async def reload(request: Request, plane: PlaneDep, settings: SettingsDep) -> JSONResponse:
    if settings.api_key is not None:
        expected = f"Bearer {settings.api_key.get_secret_value()}"
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise errors.Unauthorized("send Authorization: Bearer <EDGEFIT_API_KEY>")
    try:
        await plane.load()
    except StoreError as exc:
        # The store that was being served stays in service.
        raise ReloadFailed(f"the store was not reloaded: {exc}") from None
    return JSONResponse({"status": "reloaded", "variants": sorted(plane.variant_names)})
