"""The fast tier: the whole app in-process (ASGI), over tiny real ONNX models made here.

A model is a few ``onnx.helper`` nodes that take the served input format (``uint8 [N, H, W, 3]``,
see ``model_store.image_input``) and give 1000 logits: a real session for onnxruntime that loads
and runs in microseconds. The store around it is a real store (manifest schema 2, sha256), so
loading, verifying, profiling and reloading run for real; no torch, no built default store.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from model_store.image_input import image_input
from model_store.manifest import Manifest, Preprocessing, Variant
from model_store.store import Store
from service.app import create_app
from service.dataplane import DataPlane
from service.settings import Settings

CLASSES = 1000
LOOPBACK = ("127.0.0.1", 50000)
# A documentation address (RFC 5737): any client that is not on this machine.
REMOTE = ("203.0.113.7", 50000)


def tiny_model(resolution: int | None, seed: int = 0, scale: float = 1.0) -> bytes:
    """``uint8 [N, r, r, 3]`` -> mean colour -> a fixed linear layer -> ``float [N, 1000]``.

    ``resolution`` None: height and width are free, as when one file serves several variants.
    ``scale`` scales the weights: a small one makes a model unsure (no class scores near 1)."""
    weights = (scale * np.random.default_rng(seed).normal(size=(3, CLASSES))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.UINT8, ["n", *([resolution] * 2 if resolution else ["h", "w"]), 3]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", CLASSES])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_variant(name: str, resolution: int, data: bytes, top1: float, **fields: object) -> Variant:
    return Variant(
        name=name,
        family="tiny",
        resolution=resolution,
        precision="fp32",
        file=f"{name}.onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        input=image_input("input", resolution),
        output_name="logits",
        preprocessing=Preprocessing(
            resize_shorter=resolution + resolution // 7, crop=resolution, mean=(0, 0, 0), std=(1, 1, 1)
        ),
        top1=top1,
        top1_source="published",
        **fields,
    )


def write_store(root: Path, models: dict[str, tuple[int, bytes]], **fields: object) -> Store:
    """A store of tiny variants: ``name -> (resolution, model bytes)``; larger resolution, higher top1."""
    root.mkdir(parents=True, exist_ok=True)
    variants = []
    for i, (name, (resolution, data)) in enumerate(sorted(models.items(), key=lambda m: m[1][0])):
        (root / f"{name}.onnx").write_bytes(data)
        variants.append(tiny_variant(name, resolution, data, top1=0.5 + 0.1 * i, **fields))
    return Store(root, Manifest()).write(Manifest(variants=tuple(variants)))


def default_models() -> dict[str, tuple[int, bytes]]:
    return {"tiny-16-fp32": (16, tiny_model(16, 1)), "tiny-32-fp32": (32, tiny_model(32, 2))}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_store(tmp_path / "store", default_models())
    return tmp_path / "store"


def settings_for(store: Path, cache: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "store_dir": store,
        "cache_dir": cache,
        "workers": 2,
        "profile_runs": 3,
        "profile_warmup": 1,
        "body_timeout_seconds": 2.0,
        # Tiny models run in microseconds: which dominates which here would be the machine's
        # noise. tests/app/test_device_frontier.py serves frontiers of models whose times differ.
        "frontier": False,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(store: Path, tmp_path: Path) -> Settings:
    return settings_for(store, tmp_path / "cache")


def wait_ready(client: TestClient, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"not ready in {seconds} s: {client.get('/readyz').text}")


@contextmanager
def serve(
    settings: Settings,
    plane: DataPlane | None = None,
    *,
    client: tuple[str, int] = LOOPBACK,
    ready: bool = True,
) -> Iterator[TestClient]:
    """The app with its lifespan running, and a client calling from ``client``'s address.

    ``raise_server_exceptions`` stays on: an error that escaped the app's own handling would
    fail the test instead of becoming a quiet 500.
    """
    app = create_app(settings, plane)
    with TestClient(app, client=client) as test_client:
        if ready:
            wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One served app per test module, for tests that do not change its store or settings."""
    root = tmp_path_factory.mktemp("served")
    write_store(root / "store", default_models())
    with serve(settings_for(root / "store", root / "cache")) as test_client:
        yield test_client


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), **save: object) -> bytes:
    """A small photo-like image in ``fmt`` (gradients plus noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 128 / sum(size)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "MPO":
        # Two pictures, as a stereo or phone camera writes them.
        save = {"save_all": True, "append_images": [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], **save}
    image.save(out, format=fmt, **save)
    return out.getvalue()


def assert_problem(response: object, status: int, kind: str) -> dict[str, object]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["status"] == status and problem["type"] == f"/errors/{kind}"
    assert problem["title"] and problem["detail"]
    assert "Traceback" not in response.text and "Error" not in str(problem["detail"])
    assert response.headers["x-request-id"]
    return problem
