"""Confidence cascades in-process, over real tiny ONNX models and a store with a plan.

The plan's first stage is a model whose inference is slow only on bright images (a loop whose
trip count comes from the pixels): profiled on noise it looks fast, so the plan is chosen, and on
a white image it runs far past the budget, so its escalation no longer fits when it ends. Both
stages' logits are small: no class is ever sure, and a threshold of 0.5 always wants to escalate.
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from model_store.manifest import Manifest
from tests.app.conftest import image_bytes, serve, settings_for, tiny_model, write_store
from tests.unit.test_manifest import cascade

SMALL, BIG = "tiny-16-fp32", "tiny-32-fp32"
PLAN = f"{SMALL}>{BIG}"
# Loop iterations of a 512 x 512 matrix product on a bright image: well over 100 ms.
BRIGHT_TRIPS = 60


def _loop_body(side: int) -> onnx.GraphProto:
    """One iteration: ``state = tanh(state @ loop_weights)``."""
    return helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "loop_weights"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "work",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [side, side]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [side, side]),
        ],
    )


def slow_when_bright(resolution: int, side: int = 512) -> bytes:
    """Like ``tiny_model`` with small weights, plus ``BRIGHT_TRIPS`` matrix products when the
    image's mean pixel is above 200 (none on noise, which profiling feeds it)."""
    rng = np.random.default_rng(3)
    constants = {
        "weights": (1e-3 * rng.normal(size=(3, 1000))).astype(np.float32),
        "loop_weights": (rng.normal(size=(side, side)) / side**0.5).astype(np.float32),
        "bright_above": np.array(200.0, dtype=np.float32),
        "trips": np.array(BRIGHT_TRIPS, dtype=np.int64),
        "true": np.array(True),
        "state0": np.ones((side, side), dtype=np.float32),
        "zero": np.array(0.0, dtype=np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["colour", "weights"], ["calm"]),
            helper.make_node("ReduceMean", ["pixels"], ["brightness"], keepdims=0),
            helper.make_node("Greater", ["brightness", "bright_above"], ["bright"]),
            helper.make_node("Cast", ["bright"], ["bright_count"], to=TensorProto.INT64),
            helper.make_node("Mul", ["bright_count", "trips"], ["trip_count"]),
            helper.make_node("Loop", ["trip_count", "true", "state0"], ["state_end"], body=_loop_body(side)),
            # The loop's result times zero, so that the graph keeps the loop.
            helper.make_node("ReduceSum", ["state_end"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["calm", "nothing"], ["logits"]),
        ],
        "slow_when_bright",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["n", resolution, resolution, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cascade_store(root: Path) -> Path:
    """``SMALL`` (slow on bright images) and ``BIG``, and a plan more accurate than either."""
    store = write_store(root, {SMALL: (16, slow_when_bright(16)), BIG: (32, tiny_model(32, 2, scale=1e-3))})
    plan = cascade(small=SMALL, big=BIG, threshold=0.5, top1=0.65, escalation_rate=0.3)
    store.write(Manifest(variants=store.manifest.variants, cascades=(plan,)))
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("cascade")
    with serve(settings_for(cascade_store(root / "store"), root / "cache")) as test_client:
        yield test_client


def white_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 255, 255)).save(out, format="PNG")
    return out.getvalue()


def cascade_count(client: TestClient, outcome: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "edgefit_cascade":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"variant": SMALL, "outcome": outcome}:
                    return sample.value
    raise AssertionError(f"no edgefit_cascade_total{{variant={SMALL}, outcome={outcome}}}")


def test_an_unsure_first_stage_escalates_and_the_answer_lists_both_stages(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = cascade_count(client, "escalated")
    with caplog.at_level(logging.INFO, logger="edgefit.access"):
        response = client.post("/classify", params={"budget": "1s"}, content=image_bytes("JPEG"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["name"] for s in body["stages"]] == [SMALL, BIG]
    assert body["model"]["name"] == BIG == response.headers["x-model-variant"]
    assert all(0 < s["top_score"] < 0.5 and s["inference_ms"] >= 0 for s in body["stages"])
    assert body["cascade"] == {"plan": PLAN, "threshold": 0.5, "outcome": "escalated"}
    assert body["timing"]["inference_ms"] == pytest.approx(
        sum(s["inference_ms"] for s in body["stages"]), abs=0.01
    )
    assert cascade_count(client, "escalated") == before + 1
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if '"path":"/classify"' in r.getMessage()]
    assert line["cascade"] == PLAN and line["escalation"] == "escalated" and line["variant"] == BIG


def test_an_escalation_that_no_longer_fits_answers_with_the_first_stage(client: TestClient) -> None:
    before = cascade_count(client, "answered")
    # Priced as fast (profiled on noise), the plan fits 100 ms; on a white image its first stage
    # alone runs past it, so when it ends the second no longer fits.
    response = client.post("/classify", params={"budget": "100ms"}, content=white_png())
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["name"] for s in body["stages"]] == [SMALL]
    assert body["model"]["name"] == SMALL
    assert body["stages"][0]["top_score"] < 0.5  # it was unsure: the second stage was wanted
    assert body["cascade"]["outcome"] == "out_of_time"
    assert body["budget_met"] is False
    assert cascade_count(client, "answered") == before + 1
    plan = next(p for p in client.get("/models").json()["cascades"] if p["name"] == PLAN)
    assert plan["live"]["runs"] >= 1 and plan["live"]["escalation_rate"] > 0


def test_opting_out_and_pinning_run_one_variant(client: TestClient) -> None:
    for params in ({"cascade": "false", "budget": "1s"}, {"model": SMALL}, {"model": BIG, "cascade": "true"}):
        response = client.post("/classify", params=params, content=image_bytes("JPEG"))
        assert response.status_code == 200, (params, response.text)
        assert "stages" not in response.json() and "cascade" not in response.json()
    # Without the plan, the most accurate single variant.
    response = client.post("/classify", params={"cascade": "false"}, content=image_bytes("JPEG"))
    assert response.json()["model"]["name"] == BIG
    bad = client.post("/classify", params={"cascade": "maybe"}, content=image_bytes("JPEG"))
    assert bad.status_code == 422 and "cascade must be true or false" in bad.json()["detail"]


def test_models_and_the_status_page_show_the_plan(client: TestClient) -> None:
    (plan,) = client.get("/models").json()["cascades"]
    assert plan["name"] == PLAN and plan["small"] == SMALL and plan["big"] == BIG
    assert plan["threshold"] == 0.5 and plan["escalation_rate"] == 0.3
    assert set(plan["live"]) == {"runs", "escalation_rate", "escalated"}
    page = client.get("/").text
    assert f'data-plan="{html.escape(PLAN)}"' in page and "Confidence cascades" in page


def test_the_server_setting_turns_plans_off(tmp_path: Path) -> None:
    store = cascade_store(tmp_path / "store")
    with serve(settings_for(store, tmp_path / "cache", cascade=False)) as client:
        response = client.post("/classify", params={"budget": "1s"}, content=image_bytes("JPEG"))
        assert response.status_code == 200 and "stages" not in response.json()
        assert client.get("/models").json()["cascades"] == []


def test_a_plan_whose_stage_is_not_served_is_not_offered(tmp_path: Path) -> None:
    store = cascade_store(tmp_path / "store")
    with serve(settings_for(store, tmp_path / "cache", variants=(BIG,))) as client:
        assert client.get("/models").json()["cascades"] == []
        response = client.post("/classify", params={"budget": "1s"}, content=image_bytes("JPEG"))
        assert response.status_code == 200 and "stages" not in response.json()
