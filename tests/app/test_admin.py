"""``/admin/reload``: who may call it, one reload at a time, sessions and profiles kept when unchanged."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.app import create_app
from service.dataplane import DataPlane
from service.observability import Metrics
from service.settings import Settings
from tests.app.conftest import (
    LOOPBACK,
    REMOTE,
    assert_problem,
    default_models,
    image_bytes,
    serve,
    settings_for,
    tiny_model,
    write_store,
)


def test_without_a_key_only_loopback_clients_may_reload(settings: Settings) -> None:
    with serve(settings, client=REMOTE) as remote:
        assert_problem(remote.post("/admin/reload"), 403, "forbidden")
    with serve(settings, client=("::1", 1)) as local:
        assert local.post("/admin/reload").status_code == 200


def test_with_a_key_anyone_holding_it_may_reload(store: Path, tmp_path: Path) -> None:
    keyed = settings_for(store, tmp_path / "cache", api_key=SecretStr("s3cret"))
    with serve(keyed, client=REMOTE) as remote:
        assert_problem(remote.post("/admin/reload"), 401, "unauthorized")
        wrong = remote.post("/admin/reload", headers={"authorization": "Bearer nope"})
        assert_problem(wrong, 401, "unauthorized")
        ok = remote.post("/admin/reload", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["variants"] == ["tiny-16-fp32", "tiny-32-fp32"]
    with serve(keyed, client=LOOPBACK) as local:
        assert_problem(local.post("/admin/reload"), 401, "unauthorized")


def test_concurrent_reloads_run_one_at_a_time(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Three reloads at once: each starts only after the previous one swapped its store in."""
    app = create_app(settings)

    async def main() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=LOOPBACK)
            async with httpx.AsyncClient(transport=transport, base_url="http://edgefit") as client:
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
                caplog.clear()
                responses = await asyncio.gather(*(client.post("/admin/reload") for _ in range(3)))
                return [r.status_code for r in responses]

    with caplog.at_level(logging.INFO, logger="service.served_set"):
        assert asyncio.run(main()) == [200, 200, 200]
    steps = [
        "start" if m.startswith("loading the store") else "end"
        for r in caplog.records
        if (m := r.getMessage()).startswith(("loading the store", "ready: serving"))
    ]
    assert steps == ["start", "end"] * 3


def persisted_files(cache: Path) -> set[str]:
    (table,) = cache.glob("latency-*.json")
    return set(json.loads(table.read_text())["files"])


def test_reload_profiles_only_new_files_and_persists_nothing_measured_while_serving(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    settings = settings_for(store, cache)
    with caplog.at_level(logging.INFO), serve(settings) as client:
        profiled_at_start = persisted_files(cache)
        before = {v["name"]: v for v in client.get("/models").json()["variants"]}
        models = default_models()
        models["tiny-32-fp32"] = (32, tiny_model(32, seed=7))  # new weights: a new file
        write_store(store, models)
        caplog.clear()
        assert client.post("/admin/reload").status_code == 200
        profiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("profiled ")]
        after = {v["name"]: v for v in client.get("/models").json()["variants"]}
    assert len(profiled) == 1 and profiled[0].startswith("profiled tiny-32-fp32")
    unchanged = "tiny-16-fp32"
    assert after[unchanged]["latency_ms"]["profiled_p50"] == before[unchanged]["latency_ms"]["profiled_p50"]
    # Measured while serving: used, not written for the next start.
    assert persisted_files(cache) == profiled_at_start
    assert f"{after['tiny-32-fp32']['sha256']}@32" not in profiled_at_start


def test_reload_keeps_the_sessions_of_unchanged_files(store: Path, tmp_path: Path) -> None:
    """Only a changed file gets a new session: a reload of an unchanged store costs no memory."""
    settings = settings_for(store, tmp_path / "cache")
    plane = DataPlane(settings, Metrics())
    with serve(settings, plane) as client:
        before = plane.served_set.served_models()
        assert before is not None
        models = default_models()
        models["tiny-32-fp32"] = (32, tiny_model(32, seed=7))
        write_store(store, models)
        assert client.post("/admin/reload").status_code == 200
        after = plane.served_set.served_models()
        assert after is not None and after is not before
        assert after.runners["tiny-16-fp32"].session is before.runners["tiny-16-fp32"].session
        assert after.runners["tiny-32-fp32"].session is not before.runners["tiny-32-fp32"].session
        response = client.post("/classify", params={"model": "tiny-32-fp32"}, content=image_bytes("PNG"))
        assert response.status_code == 200


def test_variants_in_one_file_share_one_session(tmp_path: Path) -> None:
    """Two resolutions of one network with free height and width: one session, each size
    profiled and served on its own."""
    shared = tiny_model(None, seed=3)
    store = tmp_path / "store"
    write_store(store, {"tiny-16-fp32": (16, shared), "tiny-32-fp32": (32, shared)})
    settings = settings_for(store, tmp_path / "cache")
    plane = DataPlane(settings, Metrics())
    with serve(settings, plane) as client:
        served = plane.served_set.served_models()
        assert served is not None
        assert served.runners["tiny-16-fp32"].session is served.runners["tiny-32-fp32"].session
        assert set(served.profiles) == {"tiny-16-fp32", "tiny-32-fp32"}
        for name in ("tiny-16-fp32", "tiny-32-fp32"):
            response = client.post("/classify", params={"model": name}, content=image_bytes("PNG"))
            assert response.status_code == 200 and response.json()["model"]["name"] == name
    assert len(persisted_files(tmp_path / "cache")) == 2


def test_failed_reload_keeps_serving_the_previous_store(settings: Settings, store: Path) -> None:
    with serve(settings) as client:
        (store / "tiny-16-fp32.onnx").write_bytes(b"tampered")
        problem = assert_problem(client.post("/admin/reload"), 409, "reload-failed")
        assert "refusing to use" in str(problem["detail"])
        assert client.get("/readyz").status_code == 200
        response = client.post("/classify", params={"model": "tiny-16-fp32"}, content=image_bytes("PNG"))
        assert response.status_code == 200


def test_a_reload_frees_the_previous_sessions(settings: Settings) -> None:
    """Nothing keeps a replaced set of sessions alive (each would hold its weights for ever)."""
    plane = DataPlane(settings, Metrics())
    with serve(settings, plane) as client:
        served = plane.served_set.served_models()
        assert served is not None
        first = weakref.ref(served)
        del served
        assert client.post("/admin/reload").status_code == 200
        assert client.post("/classify", content=image_bytes("PNG")).status_code == 200
        gc.collect()
        assert first() is None
