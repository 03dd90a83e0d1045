"""The Open Inference Protocol (KServe v2) REST subset, so KServe and Triton clients work.

Inputs are the model's own input, as the manifest describes it: cropped images, ``UINT8``
``[N, H, W, 3]`` RGB (normalisation happens inside the model); outputs are the raw logits.
Errors use the protocol's own shape, ``{"error": "..."}`` (see ``service.api.errors``).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import errors
from service.api.deps import PlaneDep

router = APIRouter(prefix="/v2")
VERSION = "0.1.0"


def _variant(plane: PlaneDep, name: str) -> Any:
    for entry in plane.describe():
        if entry["name"] == name:
            return entry
    raise errors.NotFound(f"model {name!r} is not served")


@router.get("", summary="Server metadata")
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {
            "name": "edgefit",
            "version": VERSION,
            "extensions": ["model_repository_reload"],
            "machine": platform.machine(),
        }
    )


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get("/health/ready")
async def ready(plane: PlaneDep) -> JSONResponse:
    if not plane.ready:
        raise errors.NotReady("not ready", retry_after_seconds=1)
    return JSONResponse({"ready": True})


@router.get("/models/{name}")
async def model_metadata(name: str, plane: PlaneDep) -> JSONResponse:
    v = _variant(plane, name)
    model_input = v["input"]
    return JSONResponse(
        {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": model_input["name"], "datatype": "UINT8", "shape": model_input["shape"]}],
            "outputs": [{"name": v["output_name"], "datatype": "FP32", "shape": [-1, v["classes"]]}],
        }
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, plane: PlaneDep) -> JSONResponse:
    _variant(plane, name)
    return JSONResponse({"name": name, "ready": plane.ready})


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request, plane: PlaneDep) -> JSONResponse:
    v = _variant(plane, name)
    try:
        payload = await request.json()
        (tensor_spec,) = payload["inputs"]
        if tensor_spec.get("datatype") != "UINT8":
            raise ValueError("datatype must be UINT8")
        shape = [int(d) for d in tensor_spec["shape"]]
        data = np.asarray(tensor_spec["data"])
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError("data must be integers in 0..255")
        tensor = data.astype(np.uint8).reshape(shape)
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.InvalidParameter(f"expected one UINT8 input tensor with shape and data: {exc}") from None
    size = v["resolution"]
    if tensor.ndim != 4 or tensor.shape[1:] != (size, size, 3) or not 1 <= tensor.shape[0] <= 32:
        raise errors.InvalidParameter(f"input shape must be [N, {size}, {size}, 3] with 1 <= N <= 32")
    logits = await plane.infer_tensor(name, tensor)
    return JSONResponse(
        {
            "model_name": name,
            "model_version": "1",
            "id": payload.get("id", ""),
            "outputs": [
                {
                    "name": v["output_name"],
                    "datatype": "FP32",
                    "shape": list(logits.shape),
                    "data": logits.ravel().tolist(),
                }
            ],
        }
    )
