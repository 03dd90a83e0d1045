"""The closed error taxonomy. Each kind carries its status, a stable type and its metric outcome.

Protocol-free on purpose: the data plane raises these, the HTTP layer renders them as RFC 9457
problem documents (or the Open Inference Protocol's ``{"error": ...}``) in one handler.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Outcome = Literal["client_error", "shed", "error"]


class ServiceError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "/errors/internal"
    title: ClassVar[str] = "Internal error"
    outcome: ClassVar[Outcome] = "error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class _ClientError(ServiceError):
    outcome = "client_error"


class InvalidImage(_ClientError):
    status, type, title = 400, "/errors/invalid-image", "Not a decodable image"


class Unauthorized(_ClientError):
    status, type, title = 401, "/errors/unauthorized", "Missing or wrong API key"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(_ClientError):
    status, type, title = 403, "/errors/forbidden", "Forbidden"


class NotFound(_ClientError):
    status, type, title = 404, "/errors/not-found", "Not found"


class MethodNotAllowed(_ClientError):
    status, type, title = 405, "/errors/method-not-allowed", "Method not allowed"


class ClientClosed(_ClientError):
    """The client went away before its body arrived; the answer is for the log only."""

    status, type, title = 400, "/errors/client-closed", "Client closed the request"


class BodyTimeout(_ClientError):
    status, type, title = 408, "/errors/body-timeout", "Request body too slow"


class BodyTooLarge(_ClientError):
    status, type, title = 413, "/errors/body-too-large", "Request body too large"


class ImageTooLarge(_ClientError):
    status, type, title = 413, "/errors/image-too-large", "Image has too many pixels"


class UnsupportedMediaType(_ClientError):
    status, type, title = 415, "/errors/unsupported-media-type", "Unsupported content type"


class InvalidParameter(_ClientError):
    status, type, title = 422, "/errors/invalid-parameter", "Invalid parameter"


class UnknownModel(_ClientError):
    status, type, title = 422, "/errors/unknown-model", "Unknown model"


class NoVariantAllowed(_ClientError):
    status, type, title = 422, "/errors/no-variant-allowed", "No variant satisfies the constraints"


class BudgetUnmeetable(_ClientError):
    status, type, title = 422, "/errors/budget-unmeetable", "Budget cannot be met"


class _Unavailable(ServiceError):
    status = 503

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


class NotReady(_Unavailable):
    type, title, outcome = "/errors/not-ready", "Not ready", "error"


class Overloaded(_Unavailable):
    type, title, outcome = "/errors/overloaded", "Shedding load", "shed"


class InferenceTimeout(ServiceError):
    status, type, title = 504, "/errors/inference-timeout", "Inference timed out"
