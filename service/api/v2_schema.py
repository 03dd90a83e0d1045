"""The Open Inference Protocol's infer request body as pydantic models, and how the OpenAPI
document describes it (``service.api.v2`` reads the body by hand, for the binary tensor
extension, so FastAPI cannot describe it from a signature).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr

HEADER_LENGTH = "Inference-Header-Content-Length"

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Dimension = Annotated[StrictInt, Field(ge=0, le=1 << 31)]


class InputTensor(BaseModel):
    name: str
    shape: list[Dimension] = Field(max_length=8)
    datatype: str
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    # Row-major, flat or nested; absent when the tensor travels as binary data.
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """An inference request (the JSON part when binary tensor data follows)."""

    id: str | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1, max_length=8)
    outputs: list[RequestedOutput] | None = Field(default=None, max_length=8)


def _components() -> dict[str, Any]:
    schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs"), "InferRequest": schema}


# Added to the OpenAPI document's components by the app.
OPENAPI_SCHEMAS = _components()
# The infer routes' ``openapi_extra``.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"The JSON request, then the binary tensors; `{HEADER_LENGTH}` "
                "gives the length of the JSON part.",
            },
        },
    }
}
