"""``/v2`` infer while the store is reloaded between its model check and its run: a protocol
error (404 when the model is gone, 422 when its input changed), never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from tests.app.conftest import LOOPBACK, tiny_model, write_store

MODEL = "tiny-16-fp32"


def infer_body(resolution: int) -> bytes:
    pixels = np.zeros((1, resolution, resolution, 3), dtype=np.uint8)
    tensor = {
        "name": "input",
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "data": pixels.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    ("reloaded", "status"),
    [
        ({"tiny-32-fp32": (32, tiny_model(32, 2))}, 404),  # the model is gone
        ({MODEL: (24, tiny_model(24, 1)), "tiny-32-fp32": (32, tiny_model(32, 2))}, 422),  # new input
    ],
)
def test_reload_between_check_and_run_is_a_protocol_error(
    settings: Settings, store: Path, reloaded: dict[str, tuple[int, bytes]], status: int
) -> None:
    app = create_app(settings)
    body = infer_body(16)

    async def main() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=LOOPBACK)
            async with httpx.AsyncClient(transport=transport, base_url="http://edgefit") as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                assert (await client.post(f"/v2/models/{MODEL}/infer", content=body)).status_code == 200
                checked = asyncio.Event()
                release = asyncio.Event()

                async def slow_body() -> AsyncIterator[bytes]:
                    # The body is read after the model check: hold it until the reload is done.
                    checked.set()
                    await release.wait()
                    yield body

                pending = asyncio.create_task(client.post(f"/v2/models/{MODEL}/infer", content=slow_body()))
                await checked.wait()
                write_store(store, reloaded)
                assert (await client.post("/admin/reload")).status_code == 200
                release.set()
                return await pending

    response = asyncio.run(main())
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
