"""The store is a pool: a server serves this device's frontier of it, chosen once and cached.

The pools here hold tiny models and slow ones (a chain of large matrix products, tens of times
the tiny ones' time), so which dominates which is not the machine's noise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_store.evaluate import LabelledImage
from model_store.manifest import Int8Check, Manifest
from model_store.reference import answers, reference_images, write_reference
from model_store.runner import VariantRunner
from model_store.store import Store
from service.cli import main
from service.core.frontier import Point, beats
from tests.app.conftest import assert_problem, image_bytes, serve, settings_for, tiny_model, tiny_variant

SLOW_PRODUCTS = 12


def slow_model(resolution: int, seed: int, products: int = SLOW_PRODUCTS) -> bytes:
    """A tiny model that also multiplies a 1024-vector made from the input by ``products``
    1024 x 1024 matrices (adding 0 times the result to the logits): milliseconds, not microseconds."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, 1000)).astype(np.float32)
    widen = rng.normal(size=(3, 1024)).astype(np.float32)
    square = (rng.normal(size=(1024, 1024)) / 32).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["colour", "weights"], ["scores"]),
        helper.make_node("MatMul", ["colour", "widen"], ["h0"]),
    ]
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "square"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"h{products}"], ["sum"], keepdims=1),
        helper.make_node("Mul", ["sum", "zero"], ["nothing"]),
        helper.make_node("Add", ["scores", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["n", resolution, resolution, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(widen, "widen"),
            numpy_helper.from_array(square, "square"),
            numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_pool(root: Path, pool: dict[str, tuple[bytes, float]]) -> None:
    """A store of ``name -> (model, top1)``, every one at 32 px."""
    root.mkdir(parents=True, exist_ok=True)
    variants = []
    for name, (data, top1) in pool.items():
        (root / f"{name}.onnx").write_bytes(data)
        variants.append(tiny_variant(name, 32, data, top1=top1))
    Store(root, Manifest()).write(Manifest(variants=tuple(variants)))


POOL = {
    "fast-fp32": (tiny_model(32, 1), 0.50),
    "slow-worse-fp32": (slow_model(32, 2), 0.45),
    "slow-better-fp32": (slow_model(32, 3), 0.70),
}


def assert_served_is_the_measured_frontier(pool: dict[str, dict[str, object]]) -> None:
    """By ``frontier_ms``: of two candidates served (or cut by the frontier's size), neither beats
    the other (``frontier.beats``); each dominated one names one of them that beats it; and every
    one not served says why."""
    measured = {
        n: Point(float(v["top1"]), float(v["frontier_ms"]) / 1000)
        for n, v in pool.items()
        if v["frontier_ms"] is not None
    }
    kept = [n for n, v in pool.items() if v["served"] or v.get("reason") == "frontier_size"]
    for a in kept:
        for b in kept:
            assert a == b or not beats(measured[a], measured[b]), (a, b)
    for name, v in pool.items():
        if not v["served"]:
            assert (v["reason"] and v["detail"]) or v["reason"] == "excluded", name
        if v.get("reason") == "dominated":
            by = str(v["detail"]).split(" is ")[0]
            assert by in kept and beats(measured[by], measured[name]), name


def served_and_pool(client) -> tuple[list[str], dict[str, dict[str, object]]]:
    served = [v["name"] for v in client.get("/models").json()["variants"]]
    pool = {v["name"]: v for v in client.get("/models", params={"pool": "true"}).json()["variants"]}
    return served, pool


def test_a_pool_serves_this_devices_frontier_and_says_why_not_the_others(tmp_path: Path) -> None:
    write_pool(tmp_path / "store", POOL)
    with serve(settings_for(tmp_path / "store", tmp_path / "cache", frontier=True)) as client:
        served, pool = served_and_pool(client)
        assert sorted(served) == ["fast-fp32", "slow-better-fp32"]
        assert (
            client.get("/readyz")
            .json()["detail"]
            .startswith("serving 2 of the store's 3 variants (1 dominated); GET /models?pool=true")
        )
        assert_served_is_the_measured_frontier(pool)
        left = pool["slow-worse-fp32"]
        assert not left["served"] and left["reason"] == "dominated"
        assert str(left["detail"]).startswith("fast-fp32 is at least as accurate (50.0 % vs 45.0 %)")
        # A pin to a candidate this device does not serve is refused, saying why.
        problem = assert_problem(
            client.post("/classify", params={"model": "slow-worse-fp32"}, content=image_bytes("JPEG")),
            422,
            "unknown-model",
        )
        assert "in the store but not served here (dominated: fast-fp32 is" in str(problem["detail"])
        assert client.post(
            "/classify", params={"model": "slow-better-fp32"}, content=image_bytes("JPEG")
        ).is_success


def test_at_most_frontier_size_are_served_the_fastest_and_the_best_always(tmp_path: Path) -> None:
    pool = {
        "fast-fp32": (tiny_model(32, 1), 0.5),
        "mid-fp32": (slow_model(32, 2, products=SLOW_PRODUCTS), 0.6),
        "best-fp32": (slow_model(32, 4, products=4 * SLOW_PRODUCTS), 0.7),
    }
    write_pool(tmp_path / "store", pool)
    settings = settings_for(tmp_path / "store", tmp_path / "cache", frontier=True, frontier_size=2)
    with serve(settings) as client:
        served, listed = served_and_pool(client)
    assert served == ["fast-fp32", "best-fp32"]
    assert listed["mid-fp32"]["reason"] == "frontier_size"
    assert "at most 2 variants are served" in str(listed["mid-fp32"]["detail"])


def choice_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("frontier-*.json"))


def test_the_choice_is_cached_per_device_and_pool(tmp_path: Path) -> None:
    store, cache = tmp_path / "store", tmp_path / "cache"
    write_pool(store, POOL)
    with serve(settings_for(store, cache, frontier=True)) as client:
        assert sorted(served_and_pool(client)[0]) == ["fast-fp32", "slow-better-fp32"]
    [saved] = choice_files(cache)
    # Hit: a restart serves what the cache says, without choosing again. Edited here to serve
    # only the slow one, so that the test sees the cache was read.
    data = json.loads(saved.read_text())
    data["served"] = ["slow-better-fp32"]
    data["left"]["fast-fp32"] = {"reason": "frontier_size", "detail": "edited by the test"}
    saved.write_text(json.dumps(data))
    with serve(settings_for(store, cache, frontier=True)) as client:
        served, pool = served_and_pool(client)
        assert served == ["slow-better-fp32"]
        assert pool["fast-fp32"]["detail"] == "edited by the test"
    # Miss: another fingerprint (threads per inference are part of it) chooses again.
    with serve(settings_for(store, cache, frontier=True, threads=2)) as client:
        assert sorted(served_and_pool(client)[0]) == ["fast-fp32", "slow-better-fp32"]
    assert len(choice_files(cache)) == 2
    # Change: a candidate added to the store is a new pool: chosen again, the new one served.
    manifest = json.loads((store / "manifest.json").read_text())
    better = tiny_model(32, 9)
    (store / "faster-better-fp32.onnx").write_bytes(better)
    manifest["variants"].append(
        tiny_variant("faster-better-fp32", 32, better, top1=0.8).model_dump(mode="json")
    )
    (store / "manifest.json").write_text(json.dumps(manifest))
    with serve(settings_for(store, cache, frontier=True)) as client:
        served, pool = served_and_pool(client)
    assert "faster-better-fp32" in served and pool["slow-worse-fp32"]["reason"] == "dominated"
    assert len(choice_files(cache)) == 3


def test_explicit_variants_are_served_as_named(tmp_path: Path) -> None:
    write_pool(tmp_path / "store", POOL)
    settings = settings_for(
        tmp_path / "store", tmp_path / "cache", frontier=True, variants="slow-worse-fp32,fast-fp32"
    )
    with serve(settings) as client:
        served, pool = served_and_pool(client)
    assert sorted(served) == ["fast-fp32", "slow-worse-fp32"]
    assert pool["slow-better-fp32"]["reason"] == "excluded"
    assert not choice_files(tmp_path / "cache")


def write_checked_pool(root: Path, images: Path) -> None:
    """Two int8 variants of one tiny model and the reference set they are checked on: ``true-int8``
    recorded with the answers it gives, ``drifted-int8`` with answers it never gives (as an int8
    variant whose kernels saturate on this CPU would disagree with what was recorded)."""
    root.mkdir(parents=True)
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpeg").write_bytes(image_bytes("JPEG", (80 + 20 * i, 60)))
    reference = write_reference(root, [LabelledImage(p, 0) for p in sorted(images.iterdir())])
    data = tiny_model(32, 5)
    variants = []
    for name in ("true-int8", "drifted-int8"):
        (root / f"{name}.onnx").write_bytes(data)
        variants.append(tiny_variant(name, 32, data, top1=0.6).model_copy(update={"precision": "int8"}))
    store = Store(root, Manifest(variants=tuple(variants), reference=reference))
    given = answers(VariantRunner.from_store(store, variants[0]), reference_images(store))
    recorded = {"true-int8": given, "drifted-int8": tuple((a + 1) % 1000 for a in given)}
    checked = [
        v.model_copy(
            update={
                "int8_check": Int8Check(
                    twin="its-fp32", twin_answers=recorded[v.name], answers=recorded[v.name]
                )
            }
        )
        for v in variants
    ]
    store.write(Manifest(variants=tuple(checked), reference=reference))


def test_an_int8_variant_failing_its_check_here_is_not_served_and_says_why(tmp_path: Path) -> None:
    write_checked_pool(tmp_path / "store", tmp_path / "images")
    with serve(settings_for(tmp_path / "store", tmp_path / "cache", frontier=True)) as client:
        served, pool = served_and_pool(client)
    assert served == ["true-int8"]
    assert pool["drifted-int8"]["reason"] == "int8_check_failed"
    assert pool["drifted-int8"]["detail"] == (
        "agrees with its-fp32 on 0 of the store's 4 reference images here, on 4 where it was built"
    )


def test_with_a_tampered_reference_set_no_int8_variant_is_served(tmp_path: Path) -> None:
    write_checked_pool(tmp_path / "store", tmp_path / "images")
    [reference] = (tmp_path / "store").glob("reference.*.zip")
    reference.write_bytes(reference.read_bytes()[:-10] + b"0123456789")
    with serve(settings_for(tmp_path / "store", tmp_path / "cache", frontier=True), ready=False) as client:
        deadline = time.monotonic() + 10
        while (
            "loading" in (readiness := client.get("/readyz").json())["detail"] and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    assert readiness["status"] == 503
    assert "no variant can be served here" in readiness["detail"]
    assert "int8_check_failed: not checked here: the reference set:" in readiness["detail"]
    assert "refusing to use it" in readiness["detail"]


def test_store_specialize_device_chooses_offline_what_a_server_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store, cache = tmp_path / "store", tmp_path / "cache"
    write_pool(store, POOL)
    monkeypatch.setenv("EDGEFIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("EDGEFIT_PROFILE_RUNS", "3")
    main(["store", "specialize", "--device", "--store", str(store)])
    out = capsys.readouterr().out
    assert "this device's frontier (2 variants, fastest first" in out
    assert "  slow-worse-fp32          dominated: fast-fp32 is at least as accurate" in out
    assert "chose 2 of 3 candidates in" in out
    [saved] = choice_files(cache)
    data = json.loads(saved.read_text())
    data["left"]["slow-worse-fp32"]["detail"] = "chosen offline"
    saved.write_text(json.dumps(data))
    with serve(settings_for(store, cache, frontier=True, profile_runs=3)) as client:
        assert served_and_pool(client)[1]["slow-worse-fp32"]["detail"] == "chosen offline"
    # Run again, it chooses afresh whatever the cache holds.
    main(["store", "specialize", "--device", "--store", str(store)])
    assert "chosen offline" not in saved.read_text()
