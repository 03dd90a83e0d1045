"""Confidence cascades in-process, over real tiny ONNX models and a store whose recorded answers
the server plans one cascade from.

The plan's first stage is a model whose inference is slow only on bright images (a loop whose
trip count comes from the pixels): profiled on noise it looks fast, so the plan is chosen, and on
a white image it runs far past the budget, so its escalation no longer fits when it ends. The
second stage always loops a little: profiled, it is the dearer of the two, as a plan's second
stage must be. Both stages' logits are small: no class is ever sure, and the planned threshold of
0.5 always wants to escalate.
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

from model_store import planning
from model_store.planning import write_answers
from model_store.store import Store, open_store
from tests.app.conftest import image_bytes, serve, settings_for, write_store

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


def slow_when_bright(
    resolution: int, side: int = 512, bright_above: float = 200.0, trips: int = BRIGHT_TRIPS
) -> bytes:
    """Like ``tiny_model`` with small weights, plus ``trips`` matrix products when the image's
    mean pixel is above ``bright_above`` (by default none on noise, which profiling feeds it)."""
    rng = np.random.default_rng(3)
    constants = {
        "weights": (1e-3 * rng.normal(size=(3, 1000))).astype(np.float32),
        "loop_weights": (rng.normal(size=(side, side)) / side**0.5).astype(np.float32),
        "bright_above": np.array(bright_above, dtype=np.float32),
        "trips": np.array(trips, dtype=np.int64),
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
    """``SMALL`` (slow on bright images), ``BIG`` (always a few milliseconds) and their recorded
    answers, from which (SMALL, BIG) at 0.5 is the one plan: on each half of the sample, SMALL
    is sure (0.5) and right on 7 images in 10 and unsure (0.3) and wrong on the rest, which BIG
    gets right, and BIG is wrong on 2 of the 7."""
    store = write_store(
        root,
        {
            SMALL: (16, slow_when_bright(16)),
            BIG: (32, slow_when_bright(32, 128, bright_above=-1.0, trips=20)),
        },
    )
    half_small = ([0.5] * 7 + [0.3] * 3, [True] * 7 + [False] * 3)
    half_big = ([0.01] * 10, [False] * 2 + [True] * 8)

    # Interleaved: even positions are the search half, odd the held-out half.
    def both(half: tuple[list[float], list[bool]]) -> tuple[list[float], list[bool]]:
        return [x for x in half[0] for _ in range(2)], [x for x in half[1] for _ in range(2)]

    write_answers(store, {SMALL: both(half_small), BIG: both(half_big)}, "sample")
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


def test_plans_come_only_from_answers_recorded_from_the_files_served(tmp_path: Path) -> None:
    store = open_store(cascade_store(tmp_path / "store"))
    costs = {SMALL: 0.001, BIG: 0.005}
    assert [p.name for p in planning.plans(store, costs)] == [PLAN]
    assert planning.plans(store, {BIG: 0.005}) == []
    other_file = store.manifest.variant(SMALL).model_copy(update={"sha256": "f" * 64})
    assert planning.plans(Store(store.root, store.manifest.replace(other_file)), costs) == []


def test_tampered_answers_cost_the_plans_not_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = cascade_store(tmp_path / "store")
    recorded = open_store(root).manifest.answers
    assert recorded is not None
    (root / recorded.file).write_text('{"variants": {}}')
    with caplog.at_level(logging.ERROR), serve(settings_for(root, tmp_path / "cache")) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/models").json()["cascades"] == []
        response = client.post("/classify", params={"budget": "1s"}, content=image_bytes("JPEG"))
        assert response.status_code == 200 and "stages" not in response.json()
    assert any("no cascade plans" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
