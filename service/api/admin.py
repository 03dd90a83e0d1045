"""``POST /admin/reload``: re-read the store and swap it in atomically.

Who may call it: with ``EDGEFIT_API_KEY`` set, whoever sends it as a bearer token; without one,
loopback clients only (an operator on the gateway itself), so an open port is not an open
admin API.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_store.store import StoreError
from service import errors
from service.api.deps import PlaneDep, SettingsDep

router = APIRouter()


class ReloadFailed(errors.ServiceError):
    status, type, title, outcome = 409, "/errors/reload-failed", "Reload failed", "client_error"


def authorise(request: Request, settings: SettingsDep) -> None:
    """Raises ``Unauthorized`` (wrong or missing key) or ``Forbidden`` (no key, not loopback)."""
    if settings.api_key is not None:
        expected = f"Bearer {settings.api_key.get_secret_value()}"
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise errors.Unauthorized("send Authorization: Bearer <EDGEFIT_API_KEY>")
        return
    if not _is_loopback(request.client.host if request.client else None):
        raise errors.Forbidden("admin endpoints answer only loopback clients unless EDGEFIT_API_KEY is set")


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # a Unix socket path or a name: not an address we can vouch for
        return False


@router.post("/admin/reload", summary="Re-read the store and swap it in atomically")
async def reload(request: Request, plane: PlaneDep, settings: SettingsDep) -> JSONResponse:
    authorise(request, settings)
    try:
        await plane.load()
    except StoreError as exc:
        # The store that was being served stays in service.
        raise ReloadFailed(f"the store was not reloaded: {exc}") from None
    return JSONResponse({"status": "reloaded", "variants": sorted(plane.variant_names)})
