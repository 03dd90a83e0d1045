"""The Open Inference Protocol (``/v2``) as Triton and KServe users drive it: ``tritonclient``
against a real ``edgefit serve`` (uvicorn) on loopback, JSON and binary tensors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from model_store.imaging import load_tensor
from model_store.manifest import Preprocessing
from service.api.v2 import MAX_BATCH, MAX_JSON_BYTES
from tests.conftest import Server

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
GOLDFISH = 1


@pytest.fixture(scope="module")
def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def variant(server: Server, fast_int8: str) -> dict:
    return next(v for v in httpx.get(f"{server.url}/models").json()["variants"] if v["name"] == fast_int8)


def pixels(image: bytes, variant: dict) -> np.ndarray:
    return load_tensor(image, Preprocessing.model_validate(variant["preprocessing"]), 50_000_000)


def image_input(variant: dict, tensor: np.ndarray, *, binary: bool) -> triton.InferInput:
    tensor_input = triton.InferInput(variant["input"]["name"], list(tensor.shape), "UINT8")
    tensor_input.set_data_from_numpy(tensor, binary_data=binary)
    return tensor_input


def endpoint_count(server: Server, outcome: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    family = next(f for f in families if f.name == "edgefit_endpoint_requests")
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith("_total") and s.labels == {"endpoint": "v2_infer", "outcome": outcome}
    )


def test_metadata_and_health(client: triton.InferenceServerClient, server: Server, variant: dict) -> None:
    name, size = variant["name"], variant["resolution"]
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgefit" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("no-such-model")
    model = client.get_model_metadata(name)
    assert model["name"] == name and model["versions"] == ["1"]
    assert model["inputs"] == [
        {"name": variant["input"]["name"], "datatype": "UINT8", "shape": [-1, size, size, 3]}
    ]
    assert model["outputs"] == [{"name": variant["output_name"], "datatype": "FP32", "shape": [-1, 1000]}]
    assert client.get_model_metadata(name, "1") == model
    config = client.get_model_config(name)
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["dims"] == [size, size, 3] and config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["output"][0] == {"name": variant["output_name"], "data_type": "TYPE_FP32", "dims": [1000]}
    index = client.get_model_repository_index()
    served = {v["name"] for v in httpx.get(f"{server.url}/models").json()["variants"]}
    assert {m["name"] for m in index} == served and {m["state"] for m in index} == {"READY"}


def test_infer_json_and_binary_agree(
    client: triton.InferenceServerClient, server: Server, variant: dict, tabby: bytes
) -> None:
    tensor = pixels(tabby, variant)
    output_name = variant["output_name"]
    before = endpoint_count(server, "ok")
    as_json = client.infer(
        variant["name"],
        [image_input(variant, tensor, binary=False)],
        outputs=[triton.InferRequestedOutput(output_name, binary_data=False)],
        request_id="json-1",
    )
    as_binary = client.infer(
        variant["name"],
        [image_input(variant, tensor, binary=True)],
        outputs=[triton.InferRequestedOutput(output_name, binary_data=True)],
        request_id="binary-1",
    )
    # No requested outputs: every output, binary by the client's default.
    everything = client.infer(variant["name"], [image_input(variant, tensor, binary=True)], model_version="1")
    assert as_json.get_response()["id"] == "json-1" and as_binary.get_response()["id"] == "binary-1"
    assert "data" in as_json.get_output(output_name)
    assert as_binary.get_output(output_name)["parameters"]["binary_data_size"] == 4000
    logits = as_json.as_numpy(output_name)
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    assert int(np.argmax(logits)) in CATS
    # The same tensor in, the same numbers out, however they travel.
    np.testing.assert_array_equal(as_binary.as_numpy(output_name), logits)
    np.testing.assert_array_equal(everything.as_numpy(output_name), logits)
    assert endpoint_count(server, "ok") == before + 3


def test_infer_a_batch(
    client: triton.InferenceServerClient, variant: dict, tabby: bytes, sample_dir: Path
) -> None:
    goldfish = (sample_dir / "n01443537_goldfish.JPEG").read_bytes()
    batch = np.concatenate([pixels(tabby, variant), pixels(goldfish, variant)])
    result = client.infer(variant["name"], [image_input(variant, batch, binary=True)])
    logits = result.as_numpy(variant["output_name"])
    assert logits.shape == (2, 1000)
    assert int(np.argmax(logits[0])) in CATS and int(np.argmax(logits[1])) == GOLDFISH


@pytest.mark.parametrize(
    ("mistake", "status"),
    [
        ("unknown model", "404"),
        ("unknown version", "404"),
        ("wrong input name", "422"),
        ("wrong datatype", "422"),
        ("wrong shape", "422"),
        ("batch too large", "422"),
        ("unknown output", "422"),
        ("classification", "422"),
    ],
)
def test_client_mistakes_are_protocol_errors(
    client: triton.InferenceServerClient, variant: dict, tabby: bytes, mistake: str, status: str
) -> None:
    tensor = pixels(tabby, variant)
    name, input_name, output_name = variant["name"], variant["input"]["name"], variant["output_name"]
    inputs = [image_input(variant, tensor, binary=True)]
    outputs = [triton.InferRequestedOutput(output_name)]
    version = ""
    if mistake == "unknown model":
        name = "no-such-model"
    elif mistake == "unknown version":
        version = "2"
    elif mistake == "wrong input name":
        inputs = [triton.InferInput("pixels", list(tensor.shape), "UINT8")]
        inputs[0].set_data_from_numpy(tensor)
    elif mistake == "wrong datatype":
        inputs = [triton.InferInput(input_name, list(tensor.shape), "FP32")]
        inputs[0].set_data_from_numpy(tensor.astype(np.float32))
    elif mistake == "wrong shape":
        inputs = [image_input(variant, tensor[:, 1:], binary=True)]
    elif mistake == "batch too large":
        inputs = [image_input(variant, np.repeat(tensor, MAX_BATCH + 1, axis=0), binary=True)]
    elif mistake == "unknown output":
        outputs = [triton.InferRequestedOutput("probabilities")]
    elif mistake == "classification":
        outputs = [triton.InferRequestedOutput(output_name, class_count=3)]
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, inputs, outputs=outputs, model_version=version)
    assert caught.value.status() == status
    assert caught.value.message() and "Traceback" not in caught.value.message()


# Bodies that no client sends, several of which once made the server answer 500.
MALFORMED = [
    b'{"inputs": {"a": 1}}',
    b'{"inputs": ["x"]}',
    b'{"inputs": [1]}',
    b'{"inputs": [1.8e308]}',
    b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1e400, 3, 224, 224], "data": [1]}]}',
    b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3], "data": [1]}]}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}]}",
    b'{"inputs": []}',
    b"{",
    b"",
    b"\xff\xfe",
    b'{"inputs": null}',
]


@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: repr(b[:24]))
def test_malformed_bodies_are_4xx_protocol_errors(server: Server, variant: dict, body: bytes) -> None:
    response = httpx.post(f"{server.url}/v2/models/{variant['name']}/infer", content=body, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"} and "Traceback" not in response.text


def test_malformed_tensors_are_4xx_protocol_errors(server: Server, variant: dict) -> None:
    name, size = variant["input"]["name"], variant["resolution"]
    shape = [1, size, size, 3]
    count = size * size * 3
    tensors = [
        {"data": [256] * count},
        {"data": [-1] * count},
        {"data": [0.5] * count},
        {"data": [True] * count},
        {"data": ["a"] * count},
        {"data": [10**30] + [0] * (count - 1)},
        {"data": [0] * (count - 1)},
        {"data": [[0, 0], [0]]},
        {"parameters": {"binary_data_size": count}},
        {},
    ]
    for tensor in tensors:
        body = {"inputs": [{"name": name, "datatype": "UINT8", "shape": shape, **tensor}]}
        response = httpx.post(f"{server.url}/v2/models/{variant['name']}/infer", json=body, timeout=30)
        assert response.status_code == 422, (str(tensor)[:80], response.text)
        assert set(response.json()) == {"error"}
    # The binary header claiming more than the body has.
    response = httpx.post(
        f"{server.url}/v2/models/{variant['name']}/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "10"},
    )
    assert response.status_code == 422 and set(response.json()) == {"error"}


def test_json_over_its_cap_is_refused(server: Server, variant: dict) -> None:
    body = json.dumps({"inputs": [{"data": [0] * (MAX_JSON_BYTES // 2)}]}).encode()
    assert len(body) > MAX_JSON_BYTES
    url = f"{server.url}/v2/models/{variant['name']}/infer"
    # Refused from its Content-Length, and when it arrives chunked, without one.
    for content in (body, iter([body[: len(body) // 2], body[len(body) // 2 :]])):
        response = httpx.post(url, content=content, timeout=30)
        assert response.status_code == 413 and "binary" in response.json()["error"]


def test_openapi_documents_the_infer_body(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    body = document["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
    schemas = document["components"]["schemas"]
    assert {"InferRequest", "InputTensor", "RequestedOutput"} <= set(schemas)
    assert schemas["InferRequest"]["required"] == ["inputs"]
