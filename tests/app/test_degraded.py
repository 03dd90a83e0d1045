"""Degraded, not down: a variant whose file fails is left out and the others are served; the
debris of killed store commands is cleared at start. In-process, over real tiny stores."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from model_store.debris import store_lock
from service.dataplane import DataPlane
from service.observability import Metrics
from tests.app.conftest import (
    assert_problem,
    default_models,
    image_bytes,
    serve,
    settings_for,
    tiny_model,
    write_store,
)


def corrupt(path: Path) -> bytes:
    """Flips one byte in the middle of ``path``, as bit rot on flash does; returns the original."""
    data = path.read_bytes()
    rotten = bytearray(data)
    rotten[len(rotten) // 2] ^= 0xFF
    path.write_bytes(bytes(rotten))
    return data


def unavailable_gauge(text: str, variant: str) -> str | None:
    prefix = f'edgefit_variant_unavailable{{variant="{variant}"}} '
    return next((line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)), None)


def test_a_corrupt_file_leaves_its_variant_out_and_a_reload_after_repair_brings_it_back(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = corrupt(store / "tiny-32-fp32.onnx")
    with caplog.at_level(logging.INFO), serve(settings_for(store, tmp_path / "cache")) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["variants"] == 1 and set(body["unavailable"]) == {"tiny-32-fp32"}
        assert "degraded" in body["detail"] and "tiny-32-fp32" in body["detail"]
        assert "refusing to use" in body["unavailable"]["tiny-32-fp32"]
        assert [r for r in caplog.records if r.levelno == logging.ERROR and "tiny-32-fp32" in r.getMessage()]

        metrics = client.get("/metrics").text
        assert unavailable_gauge(metrics, "tiny-32-fp32") == "1.0"
        assert unavailable_gauge(metrics, "tiny-16-fp32") == "0.0"
        assert "edgefit_ready 1.0" in metrics

        page = client.get("/").text
        assert 'class="badge degraded"' in page and 'id="unavailable"' in page
        assert 'data-variant="tiny-32-fp32"' in page.split('id="unavailable"')[1].split("</table>")[0]

        index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
        assert index["tiny-16-fp32"]["state"] == "READY"
        assert index["tiny-32-fp32"]["state"] == "UNAVAILABLE" and "sha256" in index["tiny-32-fp32"]["reason"]
        assert client.get("/v2/models/tiny-32-fp32/ready").status_code == 404

        # The others are served, and the missing one is not chosen.
        answer = client.post("/classify", content=image_bytes("PNG"))
        assert answer.status_code == 200 and answer.json()["model"]["name"] == "tiny-16-fp32"
        assert_problem(
            client.post("/classify", params={"model": "tiny-32-fp32"}, content=image_bytes("PNG")),
            422,
            "unknown-model",
        )

        # Repaired, then reloaded: served again, and every mark of it is gone.
        (store / "tiny-32-fp32.onnx").write_bytes(good)
        assert client.post("/admin/reload").status_code == 200
        body = client.get("/readyz").json()
        assert body["variants"] == 2 and body["unavailable"] == {}
        assert unavailable_gauge(client.get("/metrics").text, "tiny-32-fp32") == "0.0"
        assert 'class="badge degraded"' not in client.get("/").text
        pinned = client.post("/classify", params={"model": "tiny-32-fp32"}, content=image_bytes("PNG"))
        assert pinned.status_code == 200


def test_a_file_onnxruntime_refuses_is_left_out_too(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_store(root, {"tiny-16-fp32": (16, tiny_model(16)), "tiny-32-fp32": (32, b"not a model at all")})
    with serve(settings_for(root, tmp_path / "cache")) as client:
        body = client.get("/readyz").json()
        assert body["variants"] == 1
        assert "onnxruntime cannot load" in body["unavailable"]["tiny-32-fp32"]


def test_a_store_where_nothing_can_be_served_stays_not_ready(store: Path, tmp_path: Path) -> None:
    for name in default_models():
        corrupt(store / f"{name}.onnx")
    with serve(settings_for(store, tmp_path / "cache"), ready=False) as client:
        # The first attempt fails at once; the retries keep failing.
        for _ in range(50):
            problem = assert_problem(client.get("/readyz"), 503, "not-ready")
            if "no variant can be served" in str(problem["detail"]):
                break
            threading.Event().wait(0.02)
        assert "no variant can be served" in str(problem["detail"])
        assert "tiny-16-fp32" in str(problem["detail"]) and "tiny-32-fp32" in str(problem["detail"])
        assert "edgefit_ready 0.0" in client.get("/metrics").text


def test_a_reload_does_not_drop_a_served_variant_to_a_bad_file(store: Path, tmp_path: Path) -> None:
    with serve(settings_for(store, tmp_path / "cache")) as client:
        corrupt(store / "tiny-32-fp32.onnx")
        assert_problem(client.post("/admin/reload"), 409, "reload-failed")
        assert client.get("/readyz").json()["variants"] == 2


def test_start_up_clears_the_debris_of_killed_store_commands(store: Path, tmp_path: Path) -> None:
    (store / ".staging-killed").mkdir()
    (store / ".staging-killed" / "half-written.onnx").write_bytes(b"\0" * 100)
    (store / ".manifest.json.abc123.tmp").write_text("{")
    with serve(settings_for(store, tmp_path / "cache")) as client:
        assert client.get("/readyz").json()["variants"] == 2
    assert sorted(p.name for p in store.iterdir()) == [
        "manifest.json",
        "tiny-16-fp32.onnx",
        "tiny-32-fp32.onnx",
    ]


def test_start_up_leaves_a_running_store_command_alone(store: Path, tmp_path: Path) -> None:
    (store / ".staging-running").mkdir()
    # A store command holds the store's lock for as long as it runs.
    with store_lock(store, wait=False) as held:
        assert held
        plane = DataPlane(settings_for(store, tmp_path / "cache"), Metrics())
        with serve(plane.settings, plane) as client:
            assert client.get("/readyz").status_code == 200
        assert (store / ".staging-running").is_dir()


def test_the_pool_lists_every_variant_of_the_store_served_or_not_and_why(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_store(root, {f"tiny-{r}-fp32": (r, tiny_model(r, r)) for r in (16, 24, 32)})
    corrupt(root / "tiny-32-fp32.onnx")
    settings = settings_for(root, tmp_path / "cache", variants=("tiny-16-fp32", "tiny-32-fp32"))
    with serve(settings) as client:
        served = client.get("/models").json()["variants"]
        assert [v["name"] for v in served] == ["tiny-16-fp32"] and "served" not in served[0]
        pool = {v["name"]: v for v in client.get("/models", params={"pool": "true"}).json()["variants"]}
        assert set(pool) == {"tiny-16-fp32", "tiny-24-fp32", "tiny-32-fp32"}
        assert pool["tiny-16-fp32"]["served"] is True and pool["tiny-16-fp32"]["latency_ms"]["p50"] > 0
        assert (pool["tiny-24-fp32"]["served"], pool["tiny-24-fp32"]["reason"]) == (False, "excluded")
        assert (pool["tiny-32-fp32"]["served"], pool["tiny-32-fp32"]["reason"]) == (False, "unavailable")
        assert "sha256" in pool["tiny-32-fp32"]["detail"]
        assert all("file" not in v and "weights" not in v for v in pool.values())
