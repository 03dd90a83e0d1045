"""Start-up, readiness, the live table's loop and unexpected errors, in-process."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import live_table
from service.dataplane import DataPlane
from service.observability import Metrics
from service.served_set import Served
from service.settings import Settings
from tests.app.conftest import (
    assert_problem,
    default_models,
    image_bytes,
    serve,
    settings_for,
    tiny_model,
    wait_ready,
    write_store,
)


def readyz_problem_within_a_second(client: TestClient) -> str:
    deadline = time.monotonic() + 1.0
    while True:
        response = client.get("/readyz")
        problem = assert_problem(response, 503, "not-ready")
        if "loading, verifying" not in str(problem["detail"]) or time.monotonic() > deadline:
            return str(problem["detail"])
        time.sleep(0.01)


def broken_store(kind: str, root: Path) -> None:
    if kind == "missing manifest":
        root.mkdir()
    elif kind == "unknown label set":
        write_store(root, {"tiny-16-fp32": (16, tiny_model(16))}, labels="klingon-12")
    elif kind == "onnxruntime refuses the file":
        write_store(root, {"tiny-16-fp32": (16, b"this is not an onnx model")})
    elif kind == "unreadable manifest":
        root.mkdir()
        # Reading it fails with EIO: a real OSError, even for root.
        (root / "manifest.json").symlink_to("/proc/self/mem")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("missing manifest", "manifest.json is missing"),
        ("unknown label set", "unknown label set 'klingon-12'"),
        ("onnxruntime refuses the file", "onnxruntime cannot load tiny-16-fp32.onnx"),
        ("unreadable manifest", "cannot read"),
    ],
)
def test_start_up_failure_is_in_readyz_and_the_log_within_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, said: str
) -> None:
    root = tmp_path / "store"
    broken_store(kind, root)
    with caplog.at_level(logging.INFO), serve(settings_for(root, tmp_path / "cache"), ready=False) as client:
        detail = readyz_problem_within_a_second(client)
        assert said in detail
        errors = [
            r for r in caplog.records if r.levelno == logging.ERROR and "cannot serve" in r.getMessage()
        ]
        assert errors and said in errors[0].getMessage()


def test_start_up_retries_until_the_store_is_there(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with serve(settings_for(root, tmp_path / "cache"), ready=False) as client:
        assert "manifest.json is missing" in readyz_problem_within_a_second(client)
        write_store(root, default_models())
        wait_ready(client, seconds=5)  # the second attempt is 1 s after the first


async def failing_load() -> None:
    """Loading fails with something no one planned for."""
    raise ZeroDivisionError("an internal detail that must not reach a client")


def test_unexpected_start_up_failure_is_said_without_its_text(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = DataPlane(settings, Metrics())
    monkeypatch.setattr(plane.served_set, "load", failing_load)
    with caplog.at_level(logging.INFO), serve(settings, plane, ready=False) as client:
        detail = readyz_problem_within_a_second(client)
        assert "failed unexpectedly" in detail and "internal detail" not in detail
        assert "ZeroDivisionError" in caplog.text


def test_table_loop_logs_and_survives_errors(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = DataPlane(settings, Metrics())
    refresh = plane.table.refresh
    rounds = 0

    async def flaky_refresh(served: Served) -> None:
        """The first refresh of the live table fails."""
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("probe failed")
        await refresh(served)

    monkeypatch.setattr(plane.table, "refresh", flaky_refresh)
    with caplog.at_level(logging.INFO), serve(settings, plane):
        deadline = time.monotonic() + 5
        while rounds < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert rounds >= 3
    failures = [r for r in caplog.records if "live latency table failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info


def test_the_heap_is_handed_back_once_traffic_stops(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[float] = []
    monkeypatch.setattr(live_table, "release_free_memory", lambda: trims.append(time.monotonic()))
    with serve(settings) as client:
        time.sleep(2.5)  # the start-up load's own trim is done; idle since
        before = len(trims)
        assert client.post("/classify", content=image_bytes("PNG")).status_code == 200
        deadline = time.monotonic() + 5
        while len(trims) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(trims) == before + 1
        time.sleep(2.5)  # still idle: nothing more to hand back
        assert len(trims) == before + 1


class BrokenDescribe(DataPlane):
    def describe(self) -> list[dict[str, object]]:
        raise KeyError("internal")


def test_unexpected_error_is_a_500_with_request_id_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    plane = BrokenDescribe(settings, Metrics())
    with caplog.at_level(logging.INFO), serve(settings, plane) as client:
        response = client.get("/models", headers={"x-request-id": "abc-123"})
    problem = assert_problem(response, 500, "internal")
    assert response.headers["x-request-id"] == "abc-123" and problem["request_id"] == "abc-123"
    assert "internal" not in str(problem["detail"])
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "abc-123" in logged[0].getMessage()
