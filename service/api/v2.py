"""The Open Inference Protocol (KServe v2) REST API, as ``tritonclient`` and KServe clients use it.

Inputs are the model's own input, as the manifest describes it: cropped images, ``UINT8``
``[N, H, W, 3]`` RGB (normalisation happens inside the model); outputs are the raw logits.
Tensors travel as JSON or with the binary tensor data extension (``binary_data_size`` per input,
``binary_data`` per requested output, ``Inference-Header-Content-Length``). Errors use the
protocol's own shape, ``{"error": "..."}`` (see ``service.api.errors``).

``infer`` goes through the guards of ``/classify``: admission before the body is read, the body
limit and receive deadline, the scheduled executor with the hard inference timeout, the
in-flight and queue metrics. It is counted in the per-endpoint series
(``endpoint="v2_infer"``, by ``service.api.middleware``), not in the per-variant ones: those
describe budgeted ``/classify`` answers, and a batch of 32 is not one answer. Its JSON part is
capped at :data:`MAX_JSON_BYTES` and parsed off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from model_store.manifest import Variant
from service import errors
from service.api.body import read_body
from service.api.deps import MetricsDep, PlaneDep, SettingsDep
from service.api.v2_schema import HEADER_LENGTH, INFER_BODY, InferRequest, InputTensor
from service.served_set import ServedVariant

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
VERSION = "0.1.0"
MODEL_VERSION = "1"
# Images per request: the batch dimension of every model is dynamic.
MAX_BATCH = 32
# The JSON part of an infer request. JSON tensors cost about 4 bytes per pixel value and
# several times that in memory while parsed; bigger tensors go as binary data.
MAX_JSON_BYTES = 4 << 20
# onnxruntime's output types, as the protocol's datatype and the model configuration's data_type.
_DATATYPES = {
    "tensor(float)": ("FP32", "TYPE_FP32"),
    "tensor(float16)": ("FP16", "TYPE_FP16"),
    "tensor(double)": ("FP64", "TYPE_FP64"),
}

# -- helpers --------------------------------------------------------------------------------------


def _served(plane: PlaneDep, name: str, version: str | None = None) -> ServedVariant:
    if not plane.ready:
        raise errors.NotReady(f"not ready: {plane.readiness}", retry_after_seconds=1)
    served = plane.variant(name)
    if served is None:
        why = plane.unavailable().get(name)
        if why is not None:
            raise errors.NotFound(f"model {name!r} is unavailable: {why}")
        raise errors.NotFound(f"model {name!r} is not served; POST /v2/repository/index lists them")
    if version not in (None, MODEL_VERSION):
        raise errors.NotFound(f"model {name!r} has only version {MODEL_VERSION}")
    return served


@dataclass(frozen=True)
class _Output:
    name: str
    datatype: str
    config_type: str
    classes: int


def _output(served: ServedVariant) -> _Output:
    datatype, config_type = _DATATYPES[served.output_type]
    return _Output(served.variant.output_name, datatype, config_type, int(served.output_shape[-1]))


# -- server and model metadata --------------------------------------------------------------------


@router.get("", summary="Server metadata")
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {
            "name": "edgefit",
            "version": VERSION,
            "extensions": ["binary_tensor_data", "model_configuration"],
            "machine": platform.machine(),
        }
    )


@router.get("/health/live", summary="Server liveness")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/health/ready", summary="Server readiness (503 while loading)")
async def ready(plane: PlaneDep) -> JSONResponse:
    if not plane.ready:
        raise errors.NotReady(f"not ready: {plane.readiness}", retry_after_seconds=1)
    return JSONResponse({"ready": True})


@router.post("/repository/index", summary="The served models")
async def repository_index(plane: PlaneDep) -> JSONResponse:
    state = "READY" if plane.ready else "UNAVAILABLE"
    models = {n: {"name": n, "version": MODEL_VERSION, "state": state} for n in plane.variant_names}
    # As Triton lists a model that failed to load: UNAVAILABLE, with the reason.
    for name, why in plane.unavailable().items():
        models[name] = {"name": name, "version": MODEL_VERSION, "state": "UNAVAILABLE", "reason": why}
    return JSONResponse([models[n] for n in sorted(models)])


def _metadata(name: str, served: ServedVariant) -> JSONResponse:
    model_input, output = served.variant.input, _output(served)
    return JSONResponse(
        {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": model_input.name, "datatype": "UINT8", "shape": list(model_input.shape)}],
            "outputs": [{"name": output.name, "datatype": output.datatype, "shape": [-1, output.classes]}],
        }
    )


def _config(name: str, served: ServedVariant) -> JSONResponse:
    model_input, output = served.variant.input, _output(served)
    return JSONResponse(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": MAX_BATCH,
            "input": [
                {
                    "name": model_input.name,
                    "data_type": "TYPE_UINT8",
                    "format": "FORMAT_NHWC",
                    "dims": list(model_input.shape[1:]),
                }
            ],
            "output": [{"name": output.name, "data_type": output.config_type, "dims": [output.classes]}],
        }
    )


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, plane: PlaneDep) -> JSONResponse:
    return _metadata(name, _served(plane, name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata (version 1)")
async def model_version_metadata(name: str, version: str, plane: PlaneDep) -> JSONResponse:
    return _metadata(name, _served(plane, name, version))


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: str, plane: PlaneDep) -> JSONResponse:
    _served(plane, name)
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (version 1)")
async def model_version_ready(name: str, version: str, plane: PlaneDep) -> JSONResponse:
    _served(plane, name, version)
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/config", summary="Model configuration (Triton's form)")
async def model_config(name: str, plane: PlaneDep) -> JSONResponse:
    return _config(name, _served(plane, name))


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (version 1)")
async def model_version_config(name: str, version: str, plane: PlaneDep) -> JSONResponse:
    return _config(name, _served(plane, name, version))


# -- inference ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    tensor: np.ndarray
    binary_output: bool


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > MAX_JSON_BYTES:
        raise errors.InvalidParameter(f"{HEADER_LENGTH} must be a number of bytes up to {MAX_JSON_BYTES}")
    return int(raw)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where or 'request'}: {first['msg']}"


def _tensor(spec: InputTensor, binary: memoryview, variant: Variant) -> tuple[np.ndarray, int]:
    """The input tensor, checked against the model, and the binary bytes it took."""
    expected = variant.input
    if spec.name != expected.name:
        raise errors.InvalidParameter(
            f"unexpected input {spec.name!r}; the model's input is {expected.name!r}"
        )
    if spec.datatype != "UINT8":
        raise errors.InvalidParameter(f"input {spec.name!r} is UINT8, not {spec.datatype!r}")
    size = expected.shape[1]
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[1:] != (size, size, 3) or not 1 <= shape[0] <= MAX_BATCH:
        raise errors.InvalidParameter(
            f"input {spec.name!r} has shape [N, {size}, {size}, 3] with 1 <= N <= {MAX_BATCH}, "
            f"not {list(shape)}"
        )
    count = math.prod(shape)
    binary_size = spec.parameters.get("binary_data_size")
    if binary_size is not None:
        if spec.data is not None:
            raise errors.InvalidParameter(f"input {spec.name!r} has both data and binary_data_size")
        if binary_size != count or binary_size > len(binary):
            raise errors.InvalidParameter(
                f"input {spec.name!r} needs {count} bytes of binary data; "
                f"binary_data_size is {binary_size}, {len(binary)} bytes follow the JSON"
            )
        return np.frombuffer(binary[:count], dtype=np.uint8).reshape(shape), count
    if spec.data is None:
        raise errors.InvalidParameter(f"input {spec.name!r} has neither data nor binary_data_size")
    try:
        values = np.asarray(spec.data)
    except (ValueError, OverflowError):  # ragged nesting; integers past 64 bits
        values = np.asarray([], dtype=np.float64)
    if values.dtype.kind not in "iu" or values.size != count:
        raise errors.InvalidParameter(f"input {spec.name!r} data must be {count} integers in 0..255")
    if values.min() < 0 or values.max() > 255:
        raise errors.InvalidParameter(f"input {spec.name!r} data must be integers in 0..255")
    return values.astype(np.uint8).reshape(shape), 0


def _json_too_large(size: int) -> str:
    return f"the JSON part is {size} bytes; the limit is {MAX_JSON_BYTES}: send large tensors as binary data"


def parse_infer_request(body: bytes, header_length: int | None, variant: Variant) -> ParsedRequest:
    """The request's one input tensor and its wishes. Blocking (run off the event loop);
    raises ``ServiceError``."""
    json_length = len(body) if header_length is None else header_length
    if json_length > len(body):
        raise errors.InvalidParameter(f"{HEADER_LENGTH} is {json_length}; the body has {len(body)} bytes")
    if json_length > MAX_JSON_BYTES:
        raise errors.BodyTooLarge(_json_too_large(json_length))
    try:
        request = InferRequest.model_validate_json(body[:json_length])
    except ValidationError as exc:
        raise errors.InvalidParameter(_validation_message(exc)) from None
    if len(request.inputs) != 1:
        raise errors.InvalidParameter(f"the model takes one input, not {len(request.inputs)}")
    binary = memoryview(body)[json_length:]
    tensor, used = _tensor(request.inputs[0], binary, variant)
    if used != len(binary):
        raise errors.InvalidParameter(f"{len(binary) - used} bytes of binary data belong to no input")
    output_name = variant.output_name
    binary_output = request.parameters.get("binary_data_output") is True
    for requested in request.outputs or ():
        if requested.name != output_name:
            raise errors.InvalidParameter(
                f"unexpected output {requested.name!r}; the model's output is {output_name!r}"
            )
        if "classification" in requested.parameters:
            raise errors.InvalidParameter("the classification extension is not supported; use /classify")
        binary_output = requested.parameters.get("binary_data", binary_output) is True
    return ParsedRequest(request.id, tensor, binary_output)


def encode_response(name: str, parsed: ParsedRequest, output: _Output, value: np.ndarray) -> Response:
    """The protocol's response: JSON, or JSON then the raw output (little-endian)."""
    described: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(value.shape)}
    raw = b""
    if parsed.binary_output:
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        described["parameters"] = {"binary_data_size": len(raw)}
    else:
        described["data"] = value.ravel().tolist()
    body: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION, "outputs": [described]}
    if parsed.id is not None:
        body["id"] = parsed.id
    encoded = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if not parsed.binary_output:
        return Response(encoded, media_type="application/json")
    return Response(
        encoded + raw,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(encoded))},
    )


async def _infer(
    name: str,
    version: str | None,
    request: Request,
    plane: PlaneDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    started: float = request.scope["state"]["started"]
    log: dict[str, Any] = request.scope["state"]["log"]
    metrics.inflight.inc()
    try:
        served = _served(plane, name, version)
        output = _output(served)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise errors.UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send identity")
        header_length = _header_length(request)
        declared = request.headers.get("content-length", "")
        if header_length is None and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            # All JSON: refused before reading it.
            raise errors.BodyTooLarge(_json_too_large(int(declared)))
        plane.admit()
        body = await read_body(request.receive, request.headers.get("content-length"), settings, started)
        parsed = await asyncio.to_thread(parse_infer_request, body, header_length, served.variant)
        finished = await plane.infer_tensor(name, parsed.tensor)
        response = await asyncio.to_thread(encode_response, name, parsed, output, finished.value)
        total = time.perf_counter() - started
        log.update(
            variant=name,
            batch=len(parsed.tensor),
            total_ms=round(1000 * total, 3),
            queue_ms=round(1000 * finished.queue_seconds, 3),
            inference_ms=round(1000 * finished.run_seconds, 3),
        )
        return response
    except errors.ServiceError as exc:
        log["error"] = exc.type
        raise
    finally:
        metrics.inflight.dec()


@router.post(
    "/models/{name}/infer",
    summary="Inference: UINT8 [N, H, W, 3] images in, the raw output out (JSON or binary tensors)",
    openapi_extra=INFER_BODY,
)
async def infer(
    name: str, request: Request, plane: PlaneDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    return await _infer(name, None, request, plane, settings, metrics)


@router.post(
    "/models/{name}/versions/{version}/infer", summary="Inference (version 1)", openapi_extra=INFER_BODY
)
async def infer_version(
    name: str, version: str, request: Request, plane: PlaneDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    return await _infer(name, version, request, plane, settings, metrics)
